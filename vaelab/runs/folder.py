"""The run folder's format: the states a run passes through, the small JSON files it holds
(written atomically), and the process that writes it (alive? asked to stop)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
from pathlib import Path

from vaelab import writes

STATES = ("queued", "training", "paused", "stopped", "finished", "failed")
ACTIVE = ("queued", "training", "paused")  # a run that has not ended
RUNNING = ("training", "paused")  # a process holds a slot
ACTIONS = ("pause", "continue", "stop")
STATUS_EVERY = 1.0  # seconds between two status.json updates while training
PAUSE_POLL = 0.2  # seconds between two looks at request.json while paused
_CHILDREN: dict[int, subprocess.Popen] = {}  # the processes this server started, to reap


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


def signal_stop(pid: int | None) -> None:
    if pid is not None and pid_alive(pid):
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGINT)  # fit: finish the step, save a checkpoint
