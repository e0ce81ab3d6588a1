"""The instructor's view of a hosted dashboard: every run of every session, and a stop for any.

The view exists only when the server has a shared instructor password in its Streamlit
secrets (``.streamlit/secrets.toml``, key :data:`SECRET_KEY`); a session that types it sees
every run under the runs root (model, data, state, step, its session shortened, its place in
the queue) and can stop any of them. Plain functions over run folders (:mod:`vaelab.runs`),
tested without Streamlit; the page only draws them.
"""

from __future__ import annotations

import hmac
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from vaelab import runs

SECRET_KEY = "instructor_password"  # the key in .streamlit/secrets.toml
OWNER_CHARS = 8  # how much of a session's owner hash the table shows


def configured_password(secrets: Mapping) -> str | None:
    """The instructor password of the server's ``secrets`` (``st.secrets``), or ``None``
    when none is set (then the view does not exist). A value that is not a non-empty string
    is a mistake of the instructor's: ``ValueError`` says how to write it."""
    value = secrets.get(SECRET_KEY)
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        raise ValueError(
            f"{SECRET_KEY} in .streamlit/secrets.toml must be a non-empty string, e.g. "
            f'{SECRET_KEY} = "a long random phrase"'
        )
    return value


def password_ok(given: str, expected: str | None) -> bool:
    """True when ``given`` is the configured password (compared in constant time); always
    False when no password is configured."""
    if expected is None or not given:
        return False
    return hmac.compare_digest(given.encode(), expected.encode())


def short_owner(owner: str | None) -> str:
    """A session as the table shows it: the first characters of its owner hash (never the
    token itself), or ``command line`` for a run no page started."""
    return owner[:OWNER_CHARS] if owner else "command line"


def class_table(every_run: Sequence[dict]) -> list[dict]:
    """One row per run (as :func:`vaelab.runs.list_runs` gives them): ``run, name, model,
    data, state, step, session, queue``; ``queue`` is the run's place in the queue (1 =
    next to start) or ``None``. Runs that have not ended come first, then the newest."""
    rows = [
        {
            "run": r["id"],
            "name": r["name"],
            "model": r["model"],
            "data": r["data"],
            "state": r["state"],
            "step": int(r["step"] or 0),
            "session": short_owner(r["owner"]),
            "queue": runs.queue_position(every_run, r["id"]),
        }
        for r in every_run
    ]
    order = {r["id"]: i for i, r in enumerate(every_run)}  # list_runs: newest first
    return sorted(rows, key=lambda row: (row["state"] not in runs.ACTIVE, order[row["run"]]))


def stoppable(every_run: Sequence[dict]) -> list[str]:
    """The ids of the runs the instructor can stop: those that have not ended."""
    return [r["id"] for r in every_run if r["state"] in runs.ACTIVE]


def stop_any(root: str | Path, run_id: str) -> str:
    """Stop any session's run under ``root``, as its owner's Stop does: a queued run is
    cancelled, a training or paused one is asked to stop and sent SIGINT (fit saves a
    checkpoint). Returns what was done; ``ValueError`` for a run that has already ended or
    lies outside ``root``."""
    folder = runs.inside(root, Path(root) / run_id)
    if not folder.is_dir() or folder == Path(root).resolve():
        raise ValueError(f"no run {run_id!r} in the runs folder; pick one from the table")
    with runs.queue_lock(root):
        status = runs.read_status(folder)
        if status["state"] == "queued":
            runs.write_json(
                folder / "status.json",
                {
                    **status,
                    "state": "stopped",
                    "message": "cancelled by the instructor while queued",
                    "updated": time.time(),
                },
            )
            return f"{run_id}: cancelled while queued"
        if status["state"] not in runs.RUNNING:
            raise ValueError(f"{run_id} has already ended ({status['state']}); nothing to stop")
        runs.write_json(
            folder / "request.json", {"action": "stop", "by": "instructor", "time": time.time()}
        )
        if status.get("message") != "starting":  # SIGINT only once it trains (runs.request)
            runs.signal_stop(status.get("pid"))
    return f"{run_id}: asked to stop; it saves a checkpoint and ends"
