"""vaelab.instructor: the instructor's password check, the table of every session's runs and
stopping any run, as plain functions over run folders (the page: tests/test_app.py)."""

from __future__ import annotations

import time

import pytest
from helpers import TINY_VAE as TINY

from vaelab import instructor, runs
from vaelab.runs import Hosting


@pytest.fixture(autouse=True)
def _no_process_left():
    yield
    for child in list(runs._CHILDREN.values()):
        if child.poll() is None:
            child.terminate()
            child.wait(30)
    runs._CHILDREN.clear()


def _wait(done, limit: float = 120.0) -> None:
    end = time.monotonic() + limit
    while not done():
        if time.monotonic() > end:
            raise AssertionError(f"timed out after {limit} s")
        time.sleep(0.1)


def test_the_password_comes_from_the_secrets_and_is_checked():
    assert instructor.configured_password({}) is None  # no view at all
    assert instructor.configured_password({"instructor_password": "s3cret"}) == "s3cret"
    for bad in ("", "  ", 1234, ["a"]):
        with pytest.raises(ValueError, match="must be a non-empty string"):
            instructor.configured_password({"instructor_password": bad})
    assert instructor.password_ok("s3cret", "s3cret")
    assert not instructor.password_ok("s3cre", "s3cret")
    assert not instructor.password_ok("", "s3cret")
    assert not instructor.password_ok("anything", None)  # none configured: nothing unlocks


def test_the_table_lists_every_session_with_queue_places(tmp_path):
    hosting = Hosting(hosted=True, root=tmp_path, max_running=1)
    ids = [
        runs.create_run(
            tmp_path, token, [*TINY], {"model": "vae", "data": {"name": "digits"}}, hosting
        )
        for token in ("alice", "bob", "carol")
    ]
    runs.write_json(
        tmp_path / ids[0] / "status.json",
        {"state": "finished", "message": "", "pid": None, "step": 40, "updated": 0.0},
    )
    rows = instructor.class_table(runs.list_runs(tmp_path))
    by_run = {row["run"]: row for row in rows}
    assert set(by_run) == set(ids)  # every session's run, hosted or not
    assert by_run[ids[0]]["state"] == "finished" and by_run[ids[0]]["step"] == 40
    assert [by_run[i]["queue"] for i in ids] == [None, 1, 2]
    assert by_run[ids[1]]["session"] == runs.owner_hash("bob")[: instructor.OWNER_CHARS]
    assert "bob" not in {row["session"] for row in rows}  # never a session's token
    assert rows[-1]["run"] == ids[0]  # runs that ended come last
    assert by_run[ids[1]]["model"] == "vae" and by_run[ids[1]]["data"] == "digits"
    assert instructor.short_owner(None) == "command line"
    assert sorted(instructor.stoppable(runs.list_runs(tmp_path))) == sorted(ids[1:])


def test_stop_any_cancels_a_queued_run_and_refuses_ended_or_outside_ones(tmp_path):
    hosting = Hosting(hosted=True, root=tmp_path, max_running=1)
    run_id = runs.create_run(tmp_path, "bob", [*TINY], {"model": "vae"}, hosting)
    with pytest.raises(ValueError, match="belongs to another session"):
        runs.request(tmp_path, run_id, "alice", "stop")  # a student cannot
    assert "cancelled" in instructor.stop_any(tmp_path, run_id)  # the instructor can
    status = runs.read_status(tmp_path / run_id)
    assert status["state"] == "stopped"
    assert status["message"] == "cancelled by the instructor while queued"
    with pytest.raises(ValueError, match="already ended"):
        instructor.stop_any(tmp_path, run_id)
    with pytest.raises(ValueError, match="outside the folder"):
        instructor.stop_any(tmp_path, "../elsewhere")
    with pytest.raises(ValueError, match="no run 'nope'"):
        instructor.stop_any(tmp_path, "nope")


@pytest.mark.integration
def test_stop_any_stops_another_sessions_training_run_with_a_checkpoint(tmp_path):
    hosting = Hosting(hosted=True, root=tmp_path, max_running=1)
    run_id = runs.create_run(
        tmp_path, "bob", [*TINY, "--epochs", "100000"], {"model": "vae"}, hosting
    )
    assert runs.dispatch(tmp_path, hosting) == [run_id]
    _wait(lambda: runs.read_metrics(tmp_path / run_id)[0])  # it trains
    assert "asked to stop" in instructor.stop_any(tmp_path, run_id)
    _wait(lambda: runs.read_status(tmp_path / run_id)["state"] == "stopped")
    assert (tmp_path / run_id / "checkpoint.pt").is_file()
