"""Runs as processes over run folders (TensorBoard's logdir; the OpenMS Streamlit template).

A run is a process, ``python -m vaelab train ... --out RUN_DIR``, that writes its folder:

``settings.json``
    model, model config, train config, data spec and unit, written when training starts.
``metrics.jsonl``
    one JSON line per metrics record of :func:`vaelab.train.fit`, flushed as it is made, with
    ``wall`` (seconds since the epoch) added.
``status.json``
    ``{"state", "message", "pid", "step", "updated"}``; ``state`` is one of :data:`STATES`.
``checkpoint.pt``, ``best.pt``, ``log.txt``
    fit's checkpoints and the process's output.

The dashboard only reads folders and sends requests: ``request.json`` (pause, continue,
stop) is read by the run's :class:`RunWriter` at every record, and a stop also sends SIGINT,
which fit turns into a saved checkpoint. A page-started run also has ``meta.json`` (owner,
name, tags), ``command.json`` (its train arguments while it waits in the queue),
``limits.json`` (the caps it runs under) and ``heartbeat`` (touched by its owner's page).
A run started from the command line or under torchrun into the same root shows up too.

Everything here is plain functions on folders, without Streamlit, so the page stays thin.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import fcntl
import hashlib
import io
import json
import math
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import BinaryIO

from vaelab import writes
from vaelab.datasets import DATASETS

STATES = ("queued", "training", "paused", "stopped", "finished", "failed")
ACTIVE = ("queued", "training", "paused")  # a run that has not ended
RUNNING = ("training", "paused")  # a process holds a slot
ACTIONS = ("pause", "continue", "stop")
STATUS_EVERY = 1.0  # seconds between two status.json updates while training
PAUSE_POLL = 0.2  # seconds between two looks at request.json while paused
_CHILDREN: dict[int, subprocess.Popen] = {}  # the processes this server started, to reap


# ----------------------------------------------------------------------------- hosting


def _int_env(env: dict, key: str, default: int) -> int:
    try:
        value = int(env.get(key, default))
    except ValueError:
        raise ValueError(
            f"{key}={env[key]!r} is not a whole number; set it to e.g. {key}={default}"
        ) from None
    if value < 0:
        raise ValueError(f"{key} must be >= 0, got {value}")
    return value


@dataclasses.dataclass(frozen=True)
class Hosting:
    """How the dashboard is served. ``hosted`` (``VAELAB_HOSTED=1``) serves a class: the runs
    root is fixed, no server path is typed, listed or read (uploads only, at most
    ``max_upload_bytes``), data specs name built-in data sets or files under ``data_root``,
    runs are capped in parameters, steps and wall time, and the runs of a session that has
    gone stop after ``grace_seconds``. At most ``max_running`` runs train at once in either
    mode; the rest wait in a queue. A cap of 0 means no cap."""

    hosted: bool = False
    root: Path = Path("runs")
    data_root: Path | None = None
    max_running: int = max(1, os.cpu_count() or 1)
    max_params: int = 0
    max_steps: int = 0
    max_seconds: float = 0.0
    max_upload_bytes: int = 200 * 2**20
    grace_seconds: float = 0.0

    @classmethod
    def from_env(cls, env: dict | None = None) -> Hosting:
        """The settings from the environment: ``VAELAB_HOSTED`` (1 = hosted),
        ``VAELAB_RUNS_ROOT`` (default ``runs``), ``VAELAB_DATA_ROOT``, ``VAELAB_MAX_RUNS``
        (default: the number of cores), and in hosted mode ``VAELAB_MAX_PARAMS`` (default
        2,000,000), ``VAELAB_MAX_STEPS`` (20,000), ``VAELAB_MAX_MINUTES`` (30),
        ``VAELAB_MAX_UPLOAD_MB`` (50), ``VAELAB_GRACE_SECONDS`` (120)."""
        env = dict(os.environ if env is None else env)
        hosted = env.get("VAELAB_HOSTED", "0").strip().lower() in ("1", "true", "yes")
        cores = max(1, os.cpu_count() or 1)
        data_root = env.get("VAELAB_DATA_ROOT")
        root = Path(env.get("VAELAB_RUNS_ROOT", "runs"))
        data = Path(data_root).resolve() if data_root else None
        running = max(1, _int_env(env, "VAELAB_MAX_RUNS", cores))
        if not hosted:
            return cls(hosted=False, root=root, data_root=data, max_running=running)
        return cls(
            hosted=True,
            root=root,
            data_root=data,
            max_running=running,
            max_params=_int_env(env, "VAELAB_MAX_PARAMS", 2_000_000),
            max_steps=_int_env(env, "VAELAB_MAX_STEPS", 20_000),
            max_seconds=60.0 * _int_env(env, "VAELAB_MAX_MINUTES", 30),
            max_upload_bytes=_int_env(env, "VAELAB_MAX_UPLOAD_MB", 50) * 2**20,
            grace_seconds=float(_int_env(env, "VAELAB_GRACE_SECONDS", 120)),
        )


def inside(root: str | Path, path: str | Path) -> Path:
    """``path`` resolved (links followed); raises ``ValueError`` when it lies outside
    ``root``, so no request can read or write elsewhere on the server."""
    root_, path_ = Path(root).resolve(), Path(path).resolve()
    if path_ != root_ and root_ not in path_.parents:
        raise ValueError(
            f"{Path(path).name or path} is outside the folder this dashboard may "
            f"use; choose a run or file inside it"
        )
    return path_


def check_data_spec(spec: dict, hosting: Hosting) -> dict:
    """A data spec (``{"name", "path"?, ...}``, e.g. from an uploaded checkpoint) that this
    server may load: a known data set, and in hosted mode a path only under the configured
    data root. Raises ``ValueError`` naming the problem and what is allowed."""
    name = spec.get("name")
    if name not in DATASETS:
        raise ValueError(f"data set {name!r} is unknown; use one of {', '.join(DATASETS)}")
    if "path" in spec and hosting.hosted:
        if hosting.data_root is None:
            raise ValueError(
                f"this server loads only built-in data sets; {name} from a file "
                f"is not available here: train on a built-in data set"
            )
        try:
            inside(hosting.data_root, hosting.data_root / str(spec["path"]))
        except ValueError:
            raise ValueError(
                f"the data file of this {name} run is outside the server's data "
                f"folder; only files the instructor put there can be used"
            ) from None
    return spec


# ----------------------------------------------------------------------------- small files


def write_json(path: Path, value: dict) -> None:
    """``value`` as JSON at ``path``, through a temporary file and ``os.replace``, so a
    reader never sees half a file."""
    writes.write_atomic(path, json.dumps(value), "run file", sync=False)  # WriteError: disk


def read_json(path: Path) -> dict:
    """The JSON object at ``path``; ``{}`` when it is missing or not (yet) an object."""
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def pid_alive(pid: int | None) -> bool:
    """True while process ``pid`` runs (a child of this server that ended is reaped)."""
    if not isinstance(pid, int) or pid <= 0:
        return False
    child = _CHILDREN.get(pid)
    if child is not None:
        if child.poll() is None:
            return True
        del _CHILDREN[pid]
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    with contextlib.suppress(OSError):  # a zombie is not running
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    return True


# ----------------------------------------------------------------------------- the writer


class RunWriter:
    """``fit``'s callback that writes the run folder as training goes: metrics records as
    JSON lines, ``status.json``; it obeys ``request.json`` (pause waits in the callback,
    stop returns ``False``, so fit saves a checkpoint and ends) and the wall-time cap of
    ``limits.json``. As a context manager it records how the process ended: ``finished``,
    ``stopped`` (a request, a cap, Ctrl-C or SIGINT) or ``failed`` with the error's message.

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

    def start(self, settings: dict) -> RunWriter:
        """Open the folder for training: ``settings.json``, status ``training``; returns
        the writer, to be passed to fit as its callback."""
        self.folder.mkdir(parents=True, exist_ok=True)
        write_json(self.folder / "settings.json", settings)
        self.max_seconds = float(read_json(self.folder / "limits.json").get("max_seconds") or 0.0)
        self.started = time.monotonic()
        self._metrics = open(self.folder / "metrics.jsonl", "ab", buffering=0)  # noqa: SIM115
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
            self.status(
                "stopped",
                self.reason
                or "interrupted (Ctrl-C or SIGINT); the checkpoint holds the last finished step",
            )
        else:
            self.status("failed", f"{type(error).__name__}: {error}")


# ----------------------------------------------------------------------------- reading runs


def read_status(folder: str | Path) -> dict:
    """The run's status (``status.json``), checked against its process: a run that says it
    trains but whose process has gone is ``failed`` ("the process ended without saying
    why"). A folder with only a checkpoint (an older run) is ``stopped``."""
    folder = Path(folder)
    status = read_json(folder / "status.json")
    if not status:
        return {
            "state": "stopped" if (folder / "checkpoint.pt").is_file() else "failed",
            "message": ""
            if (folder / "checkpoint.pt").is_file()
            else "not a run folder: no status.json",
            "pid": None,
            "step": 0,
            "updated": 0.0,
        }
    if status.get("state") in RUNNING and not pid_alive(status.get("pid")):
        return {
            **status,
            "state": "failed",
            "message": "the training process ended without saying why (killed, or out "
            "of memory); its last checkpoint, if any, can be resumed",
        }
    return status


def read_metrics(folder: str | Path, offset: int = 0) -> tuple[list[dict], int]:
    """Records of ``metrics.jsonl`` from byte ``offset`` on, and the offset after the last
    whole line (a line being written is read next time): a page keeps the offset and reads
    only what is new at each poll."""
    try:
        with open(Path(folder) / "metrics.jsonl", "rb") as f:
            f.seek(offset)
            data = f.read()
    except OSError:
        return [], offset
    end = data.rfind(b"\n") + 1
    records = []
    for line in data[:end].splitlines():
        with contextlib.suppress(ValueError):
            record = json.loads(line)
            if isinstance(record, dict):
                records.append(record)
    return records, offset + end


@dataclasses.dataclass
class MetricsTail:
    """The records of one run read so far, extended by :meth:`update` (new lines only)."""

    folder: Path
    offset: int = 0
    records: list[dict] = dataclasses.field(default_factory=list)

    def update(self) -> list[dict]:
        new, self.offset = read_metrics(self.folder, self.offset)
        self.records.extend(new)
        return self.records


def owner_hash(token: str) -> str:
    """What a run folder stores of its session's secret token."""
    return hashlib.sha256(token.encode()).hexdigest()


def run_info(root: str | Path, run_id: str) -> dict:
    """One run of ``root`` as the page lists it: ``id, folder, name, tags, owner, model,
    data, unit, state, message, step, created, settings``."""
    folder = inside(root, Path(root) / run_id)
    settings, meta = read_json(folder / "settings.json"), read_json(folder / "meta.json")
    status = read_status(folder)
    try:
        created = float(meta.get("created") or (folder / "status.json").stat().st_mtime)
    except OSError:
        created = 0.0
    return {
        "id": run_id,
        "folder": folder,
        "name": meta.get("name") or run_id,
        "tags": list(meta.get("tags") or []),
        "owner": meta.get("owner"),
        "model": settings.get("model", "?"),
        "data": (settings.get("data") or {}).get("name", "?"),
        "unit": settings.get("unit", "?"),
        "state": status.get("state", "failed"),
        "message": status.get("message", ""),
        "step": status.get("step", 0),
        "created": created,
        "settings": settings,
    }


def list_runs(root: str | Path) -> list[dict]:
    """Every run folder of ``root`` (one holding ``status.json`` or ``checkpoint.pt``),
    newest first, as :func:`run_info`. Hidden names are skipped; a missing root has none."""
    root = Path(root)
    if not root.is_dir():
        return []
    runs = [
        run_info(root, child.name)
        for child in root.iterdir()
        if not child.name.startswith(".")
        and child.is_dir()
        and ((child / "status.json").is_file() or (child / "checkpoint.pt").is_file())
    ]
    return sorted(runs, key=lambda r: (-r["created"], r["id"]))


def visible_runs(runs: Sequence[dict], token: str, hosting: Hosting) -> list[dict]:
    """The runs a session sees: its own, and in a laptop's (not hosted) mode also everyone
    else's, read-only."""
    mine = owner_hash(token)
    return [r for r in runs if r["owner"] == mine or not hosting.hosted]


def owns(run: dict, token: str) -> bool:
    return run.get("owner") == owner_hash(token)


def _owned_folder(root: str | Path, run_id: str, token: str) -> Path:
    run = run_info(root, run_id)
    if not owns(run, token):
        raise ValueError(
            f"run {run['name']} belongs to another session; it can only be "
            f"watched here (start your own run to control one)"
        )
    return run["folder"]


# ----------------------------------------------------------------------------- requests


def new_run_id(model: str, data: str) -> str:
    return f"{model}-{data}-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(3)}"


def create_run(
    root: str | Path,
    token: str,
    train_args: Sequence[str],
    settings: dict,
    hosting: Hosting,
    files: dict[str, bytes] | None = None,
) -> str:
    """A queued run in a new folder of ``root``, owned by the session holding ``token``:
    ``command.json`` holds its ``python -m vaelab train`` arguments (without ``--out``;
    ``{folder}`` in them becomes the run folder), ``settings.json`` what the page knows of it
    until the process writes its own, ``files`` (name -> bytes, e.g. an uploaded checkpoint)
    are written into the folder. Returns the run id; :func:`dispatch` starts it when a slot
    is free."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    run_id = new_run_id(
        settings.get("model", "run"), (settings.get("data") or {}).get("name", "data")
    )
    folder = root / run_id
    folder.mkdir()
    for name, content in (files or {}).items():
        (folder / Path(name).name).write_bytes(content)
    write_json(
        folder / "meta.json",
        {"owner": owner_hash(token), "name": run_id, "tags": [], "created": time.time()},
    )
    write_json(folder / "settings.json", settings)
    write_json(folder / "command.json", {"args": [str(a) for a in train_args]})
    write_json(folder / "limits.json", {"max_seconds": hosting.max_seconds})
    (folder / "heartbeat").touch()
    write_json(
        folder / "status.json",
        {"state": "queued", "message": "", "pid": None, "step": 0, "updated": time.time()},
    )
    return run_id


def requeue(root: str | Path, run_id: str, token: str, train_args: Sequence[str]) -> None:
    """Queue an owned run that has ended again, to go on with ``train_args`` (e.g.
    ``--resume <folder>/checkpoint.pt``) in its own folder."""
    folder = _owned_folder(root, run_id, token)
    if read_status(folder)["state"] in ACTIVE:
        raise ValueError("this run has not ended; stop it first")
    (folder / "request.json").unlink(missing_ok=True)
    write_json(folder / "command.json", {"args": [str(a) for a in train_args]})
    (folder / "heartbeat").touch()
    write_json(
        folder / "status.json",
        {
            "state": "queued",
            "message": "",
            "pid": None,
            "step": read_status(folder).get("step", 0),
            "updated": time.time(),
        },
    )


def request(root: str | Path, run_id: str, token: str, action: str) -> None:
    """Ask the session's own run to ``pause``, ``continue`` or ``stop``. Stop also sends
    SIGINT (fit saves a checkpoint); a queued run is cancelled. Raises ``ValueError`` for
    another session's run or an unknown action."""
    if action not in ACTIONS:
        raise ValueError(f"unknown request {action!r}; use one of {ACTIONS}")
    folder = _owned_folder(root, run_id, token)
    with _lock(root):
        status = read_status(folder)
        if status["state"] == "queued":
            if action == "stop":
                write_json(
                    folder / "status.json",
                    {**status, "state": "stopped", "message": "cancelled while queued"},
                )
            return
        if status["state"] not in RUNNING:
            return
        write_json(folder / "request.json", {"action": action, "time": time.time()})
        if action == "stop" and status.get("message") != "starting":
            # SIGINT only once the process has said it trains: earlier it would end Python
            # during its imports, before fit could save; the request is read at its first step
            _signal_stop(status.get("pid"))


def _signal_stop(pid: int | None) -> None:
    if pid is not None and pid_alive(pid):
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGINT)  # fit: finish the step, save a checkpoint


def heartbeat(root: str | Path, runs: Sequence[dict], token: str) -> None:
    """Touch the heartbeat of the session's runs that have not ended (the page calls this at
    every poll); :func:`dispatch` stops, in hosted mode, the runs whose heartbeat is older
    than the grace period."""
    mine = owner_hash(token)
    for run in runs:
        if run["owner"] == mine and run["state"] in ACTIVE:
            with contextlib.suppress(OSError):
                (Path(root) / run["id"] / "heartbeat").touch()


def rename(
    root: str | Path,
    run_id: str,
    token: str,
    name: str | None = None,
    tags: Sequence[str] | None = None,
) -> None:
    """Give the session's own run a display ``name`` and/or ``tags`` (its id stays)."""
    folder = _owned_folder(root, run_id, token)
    meta = read_json(folder / "meta.json")
    if name is not None:
        name = name.strip()
        if not name or len(name) > 80:
            raise ValueError("a run's name must be 1 to 80 characters")
        meta["name"] = name
    if tags is not None:
        meta["tags"] = sorted({t.strip() for t in tags if t.strip()})
    write_json(folder / "meta.json", meta)


def delete(root: str | Path, run_id: str, token: str) -> None:
    """Remove the session's own run folder; a run that has not ended is refused."""
    folder = _owned_folder(root, run_id, token)
    if read_status(folder)["state"] in ACTIVE:
        raise ValueError("stop this run before deleting it")
    shutil.rmtree(folder)


# ----------------------------------------------------------------------------- the queue


@contextlib.contextmanager
def _lock(root: str | Path) -> Iterator[None]:
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
    with _lock(root):
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
                            _signal_stop(status.get("pid"))
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


# ----------------------------------------------------------------------------- exports


def metrics_csv(run_id: str, records: Sequence[dict], unit: str) -> str:
    """A run's metrics as CSV: columns ``run, wall_time, step, kind, unit`` and then every
    other key of the records; ``wall_time`` is seconds since the run's first record."""
    fixed = ["run", "wall_time", "step", "kind", "unit"]
    columns = dict.fromkeys(fixed)
    for record in records:
        columns.update(dict.fromkeys(k for k in record if k != "wall"))
    start = next((r["wall"] for r in records if "wall" in r), None)
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(columns), lineterminator="\n")
    writer.writeheader()
    for record in records:
        wall = record.get("wall")
        writer.writerow(
            {
                **{k: v for k, v in record.items() if k != "wall"},
                "run": run_id,
                "unit": unit,
                "wall_time": None if wall is None or start is None else round(wall - start, 3),
            }
        )
    return out.getvalue()


def export_name(run: dict, what: str = "metrics", ext: str = "csv") -> str:
    """``<run>-metrics.csv``: the file name of an export, from the run's display name."""
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in run["name"])
    return f"{safe}-{what}.{ext}"


def comparable(runs: Sequence[dict], like: dict) -> list[dict]:
    """The runs that can share a chart with ``like``: the same data set and unit."""
    return [r for r in runs if r["data"] == like["data"] and r["unit"] == like["unit"]]
