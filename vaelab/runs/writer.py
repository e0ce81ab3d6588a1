"""The writer a training process keeps in its run folder: settings, metrics, status, and the
requests (pause, continue, stop) it obeys."""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
from pathlib import Path
from typing import BinaryIO

from vaelab import writes
from vaelab.runs.folder import ACTIONS, PAUSE_POLL, STATUS_EVERY, read_json, write_json


class RunWriter:
    """``fit``'s callback that writes the run folder as training goes: metrics records as
    JSON lines, ``status.json``; it obeys ``request.json`` (pause waits in the callback,
    stop returns ``False``, so fit saves a checkpoint and ends) and the wall-time cap of
    ``limits.json``. As a context manager it records how the process ended: ``finished``,
    ``stopped`` (a request, a cap, Ctrl-C or SIGTERM) or ``failed`` with the error's message.

    Parameters
    ----------
    folder : path
        The run folder (fit's ``out_dir``). :meth:`start` writes ``settings.json`` (``model``,
        ``model_config``, ``train_config``, ``data``, ``unit``, ``has_latents``).
    """

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self.max_seconds = 0.0
        self.started = time.monotonic()
        self.step = 0
        self.reason: str | None = None  # why the writer asked fit to stop
        self._metrics: BinaryIO | None = None
        self._written = -math.inf

    def start(
        self, settings: dict, resumed_at: int | None = None, history: Path | None = None
    ) -> RunWriter:
        """Open the folder for training: ``settings.json``, status ``training``; returns
        the writer, to be passed to fit as its callback. ``resumed_at``: the step of the
        checkpoint a resumed run starts from; records after it (written by a run that ended
        before it could save them) are dropped, so the history is the checkpoint's.
        ``history``: the metrics file of the run whose checkpoint is resumed into this new
        folder; its records up to ``resumed_at`` begin this folder's, so the run is whole."""
        self.folder.mkdir(parents=True, exist_ok=True)
        metrics = self.folder / "metrics.jsonl"
        if resumed_at is not None:
            if history is not None and not metrics.is_file():
                writes.write_atomic(metrics, "".join(records_upto(history, resumed_at)), "metrics")
            elif metrics.is_file():
                kept = records_upto(metrics, resumed_at)
                if len(kept) != len(metrics.read_text().splitlines()):
                    writes.write_atomic(metrics, "".join(kept), "metrics")
        write_json(self.folder / "settings.json", settings)
        self.max_seconds = float(read_json(self.folder / "limits.json").get("max_seconds") or 0.0)
        self.started = time.monotonic()
        self._metrics = open(metrics, "ab", buffering=0)  # noqa: SIM115
        self.status("training")
        return self

    def status(self, state: str, message: str = "") -> None:
        write_json(
            self.folder / "status.json",
            {
                "state": state,
                "message": message,
                "pid": os.getpid(),
                "step": self.step,
                "updated": time.time(),
            },
        )
        self._written = time.monotonic()

    def _request(self) -> str | None:
        action = read_json(self.folder / "request.json").get("action")
        return action if action in ACTIONS else None

    def __call__(self, record: dict) -> bool:
        if self._metrics is None:
            raise ValueError("RunWriter.start(settings) opens the run folder; call it before fit")
        line = json.dumps({**record, "wall": time.time()})
        writes.append_record(self._metrics, line, self.folder / "metrics.jsonl")
        self.step = int(record.get("step", self.step))
        if record.get("kind") == "end":
            return True
        action = self._request()
        if action == "pause":
            self.status("paused")
            while (action := self._request()) == "pause":
                time.sleep(PAUSE_POLL)
            self.status("training")
        if action == "stop":
            self.reason = "stopped on request"
            return False
        if self.max_seconds and time.monotonic() - self.started > self.max_seconds:
            self.reason = (
                f"stopped at the server's wall-time cap of {self.max_seconds / 60:g} min per run"
            )
            return False
        if time.monotonic() - self._written >= STATUS_EVERY:
            self.status("training")
        return True

    def __enter__(self) -> RunWriter:  # noqa: PYI034  (Self needs Python 3.11)
        return self

    def __exit__(self, kind, error, tb) -> None:
        if self._metrics is not None:
            self._metrics.close()
        if not self.folder.is_dir():
            return  # nothing was written: e.g. --out named a file
        if kind is None:
            self._end(kind, error)
            return
        with contextlib.suppress(OSError):  # e.g. a full disk, which the error reports
            self._end(kind, error)

    def _end(self, kind, error) -> None:
        if kind is None:
            self.status("stopped" if self.reason else "finished", self.reason or "")
        elif issubclass(kind, KeyboardInterrupt):
            saved = (self.folder / "checkpoint.pt").is_file()
            self.status(
                "stopped",
                self.reason
                or (
                    "interrupted (Ctrl-C or SIGTERM); the checkpoint holds the last finished step"
                    if saved
                    else "interrupted (Ctrl-C or SIGTERM) before its first checkpoint"
                ),
            )
        else:
            self.status("failed", f"{type(error).__name__}: {error}")


def records_upto(path: Path, step: int) -> list[str]:
    """The lines of a metrics file whose records are at ``step`` or before (a half line from
    a killed process is dropped), each ending in a newline; none if the file is missing."""
    if not path.is_file():
        return []
    kept = []
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and record.get("step", 0) <= step:
            kept.append(line + "\n")
    return kept
