"""Reading runs: status, metrics (whole or tailed), the run list and who owns which run."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
from collections.abc import Sequence
from pathlib import Path

from vaelab.runs.folder import RUNNING, pid_alive, read_json
from vaelab.runs.hosting import Hosting, inside


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


def owned_folder(root: str | Path, run_id: str, token: str) -> Path:
    run = run_info(root, run_id)
    if not owns(run, token):
        raise ValueError(
            f"run {run['name']} belongs to another session; it can only be "
            f"watched here (start your own run to control one)"
        )
    return run["folder"]
