"""What a page asks of runs: create, requeue, pause/continue/stop, heartbeat, rename,
delete; each checked against the asking owner."""

from __future__ import annotations

import contextlib
import secrets
import shutil
import time
from collections.abc import Sequence
from pathlib import Path

from vaelab.runs.folder import (
    ACTIONS,
    ACTIVE,
    RUNNING,
    read_json,
    signal_stop,
    write_json,
)
from vaelab.runs.hosting import Hosting
from vaelab.runs.queue import queue_lock
from vaelab.runs.reading import owned_folder, owner_hash, read_status


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
    folder = owned_folder(root, run_id, token)
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
    folder = owned_folder(root, run_id, token)
    with queue_lock(root):
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
            signal_stop(status.get("pid"))


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
    folder = owned_folder(root, run_id, token)
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
    folder = owned_folder(root, run_id, token)
    if read_status(folder)["state"] in ACTIVE:
        raise ValueError("stop this run before deleting it")
    shutil.rmtree(folder)
