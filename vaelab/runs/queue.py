"""The queue: a lock over the runs root, each queued run's place, and dispatch, which starts
queued runs as processes while slots are free and reaps the ended ones."""

from __future__ import annotations

import contextlib
import fcntl
import os
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

from vaelab.runs.folder import (
    _CHILDREN,
    ACTIVE,
    RUNNING,
    pid_alive,
    read_json,
    signal_stop,
    write_json,
)
from vaelab.runs.hosting import Hosting
from vaelab.runs.reading import list_runs, read_status


@contextlib.contextmanager
def queue_lock(root: str | Path) -> Iterator[None]:
    """An exclusive lock on the runs root (``.lock``), shared by every session's thread and
    every server process on this host."""
    Path(root).mkdir(parents=True, exist_ok=True)
    with open(Path(root) / ".lock", "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def queue_position(runs: Sequence[dict], run_id: str) -> int | None:
    """1 for the next queued run to start, 2 for the one after, ...; None if not queued."""
    queued = sorted(
        (r for r in runs if r["state"] == "queued"), key=lambda r: (r["created"], r["id"])
    )
    return next((i + 1 for i, r in enumerate(queued) if r["id"] == run_id), None)


def _launch(folder: Path) -> int:
    args = [
        a.replace("{folder}", str(folder))
        for a in read_json(folder / "command.json").get("args") or []
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    env["PYTHONPATH"] = os.pathsep.join(
        [str(Path(__file__).resolve().parents[1]), env.get("PYTHONPATH", "")]
    ).rstrip(os.pathsep)
    with open(folder / "log.txt", "ab") as log:
        child = subprocess.Popen(
            [sys.executable, "-m", "vaelab", "train", *args, "--out", str(folder)],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            start_new_session=True,
        )  # a Ctrl-C of the server is not the run's
    _CHILDREN[child.pid] = child
    return child.pid


def dispatch(root: str | Path, hosting: Hosting, now: float | None = None) -> list[str]:
    """Start queued runs, oldest first, while fewer than ``hosting.max_running`` train; in
    hosted mode first stop (or cancel) the runs whose heartbeat is older than the grace
    period. Called by every page at every poll, under the root's lock. Returns the ids
    started."""
    now = time.time() if now is None else now
    started = []
    for pid in list(_CHILDREN):  # reap the processes that ended (no zombies pile up)
        pid_alive(pid)
    with queue_lock(root):
        runs = list_runs(root)
        if hosting.hosted and hosting.grace_seconds:
            for run in runs:
                try:
                    beat = (run["folder"] / "heartbeat").stat().st_mtime
                except OSError:
                    continue  # not a page's run (e.g. the command line's)
                if run["state"] in ACTIVE and now - beat > hosting.grace_seconds:
                    if run["state"] == "queued":
                        write_json(
                            run["folder"] / "status.json",
                            {
                                "state": "stopped",
                                "pid": None,
                                "step": run["step"],
                                "updated": now,
                                "message": "cancelled: its page was closed",
                            },
                        )
                        run["state"] = "stopped"
                    else:
                        write_json(run["folder"] / "request.json", {"action": "stop"})
                        status = read_status(run["folder"])
                        if status.get("message") != "starting":
                            signal_stop(status.get("pid"))
        busy = sum(r["state"] in RUNNING for r in runs)
        queued = sorted(
            (r for r in runs if r["state"] == "queued"), key=lambda r: (r["created"], r["id"])
        )
        for run in queued[: max(0, hosting.max_running - busy)]:
            (run["folder"] / "request.json").unlink(missing_ok=True)
            pid = _launch(run["folder"])
            # the slot is taken from now on, before the process writes its own status
            write_json(
                run["folder"] / "status.json",
                {
                    "state": "training",
                    "message": "starting",
                    "pid": pid,
                    "step": run["step"],
                    "updated": now,
                },
            )
            started.append(run["id"])
    return started
