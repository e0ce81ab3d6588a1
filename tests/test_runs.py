"""vaelab.runs: run folders, requests, ownership, the queue and the hosted mode's checks, as
plain functions (no Streamlit); the integration tests start real training processes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import TINY_VAE as TINY

from vaelab import runs
from vaelab.runs import Hosting, RunWriter

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _no_process_left():
    """Every training process a test started ends with it, whatever the test's outcome."""
    yield
    for child in [*runs._CHILDREN.values(), *_STARTED]:
        if child.poll() is None:
            child.terminate()
            child.wait(30)
    runs._CHILDREN.clear()
    _STARTED.clear()


_STARTED: list[subprocess.Popen] = []


def _steps(folder: Path) -> int:
    return max(
        (r["step"] for r in runs.read_metrics(folder)[0] if r["kind"] == "train"), default=0
    )


def _wait(done, limit: float = 120.0) -> None:
    end = time.monotonic() + limit
    while not done():
        if time.monotonic() > end:
            raise AssertionError(f"timed out after {limit} s")
        time.sleep(0.1)


def test_writer_records_metrics_status_and_how_it_ended(tmp_path):
    folder = tmp_path / "run"
    with RunWriter(folder) as writer:
        writer.start({"model": "vae", "unit": "nats per example"})
        assert runs.read_status(folder)["state"] == "training"
        assert writer({"kind": "train", "step": 1, "nelbo": 3.0}) is True
        assert writer({"kind": "train", "step": 2, "nelbo": 2.5}) is True
        records, offset = runs.read_metrics(folder)
        assert [r["step"] for r in records] == [1, 2] and all("wall" in r for r in records)
        writer({"kind": "end", "step": 2})
    assert runs.read_status(folder) | {"updated": 0} == {
        "state": "finished",
        "message": "",
        "pid": os.getpid(),
        "step": 2,
        "updated": 0,
    }
    more, offset2 = runs.read_metrics(folder, offset)  # only what is new
    assert [r["kind"] for r in more] == ["end"] and offset2 > offset
    with open(folder / "metrics.jsonl", "a") as f:
        f.write('{"kind": "train", "st')  # a line being written is read next time
    assert runs.read_metrics(folder, offset2) == ([], offset2)
    with pytest.raises(ZeroDivisionError), RunWriter(tmp_path / "bad") as writer:
        writer.start({})
        raise ZeroDivisionError("boom")
    assert runs.read_status(tmp_path / "bad")["message"] == "ZeroDivisionError: boom"
    assert runs.read_status(tmp_path / "bad")["state"] == "failed"


def test_writer_obeys_requests_and_the_wall_time_cap(tmp_path):
    folder = tmp_path / "run"
    folder.mkdir()
    runs.write_json(folder / "limits.json", {"max_seconds": 0.2})
    writer = RunWriter(folder).start({})
    runs.write_json(folder / "request.json", {"action": "stop"})
    assert writer({"kind": "train", "step": 1}) is False and writer.reason == "stopped on request"
    (folder / "request.json").unlink()
    writer.reason = None
    time.sleep(0.3)
    assert writer({"kind": "train", "step": 2}) is False and "wall-time cap" in writer.reason
    writer.__exit__(None, None, None)
    assert runs.read_status(folder)["state"] == "stopped"


def test_a_run_whose_process_died_is_failed_not_training(tmp_path):
    folder = tmp_path / "run"
    folder.mkdir()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    runs.write_json(folder / "status.json", {"state": "training", "pid": dead.pid, "step": 3})
    status = runs.read_status(folder)
    assert status["state"] == "failed" and "ended without saying why" in status["message"]


def test_ownership_requests_rename_tag_and_delete(tmp_path):
    hosting = Hosting(root=tmp_path, max_running=0)
    mine = runs.create_run(
        tmp_path,
        "me",
        TINY,
        {"model": "vae", "data": {"name": "digits"}, "unit": "nats per example"},
        hosting,
    )
    info = runs.run_info(tmp_path, mine)
    assert info["state"] == "queued" and runs.owns(info, "me") and not runs.owns(info, "you")
    for call in (
        lambda: runs.request(tmp_path, mine, "you", "stop"),
        lambda: runs.rename(tmp_path, mine, "you", name="x"),
        lambda: runs.delete(tmp_path, mine, "you"),
    ):
        with pytest.raises(ValueError, match="belongs to another session"):
            call()
    with pytest.raises(ValueError, match="stop this run before deleting"):
        runs.delete(tmp_path, mine, "me")
    runs.rename(tmp_path, mine, "me", name="first try", tags=["beta", " ", "beta", "a"])
    info = runs.run_info(tmp_path, mine)
    assert (info["name"], info["tags"]) == ("first try", ["a", "beta"])
    assert runs.export_name(info) == "first_try-metrics.csv"
    with pytest.raises(ValueError, match="1 to 80 characters"):
        runs.rename(tmp_path, mine, "me", name="  ")
    runs.request(tmp_path, mine, "me", "stop")  # a queued run is cancelled
    assert runs.run_info(tmp_path, mine)["state"] == "stopped"
    runs.delete(tmp_path, mine, "me")
    assert not (tmp_path / mine).exists()
    with pytest.raises(ValueError, match="unknown request"):
        runs.request(tmp_path, mine, "me", "explode")


def test_hosted_sessions_see_only_their_runs(tmp_path):
    local, hosted = Hosting(root=tmp_path), Hosting(hosted=True, root=tmp_path)
    a = runs.create_run(tmp_path, "a", TINY, {"model": "vae"}, local)
    b = runs.create_run(tmp_path, "b", TINY, {"model": "vae"}, local)
    listed = runs.list_runs(tmp_path)
    assert {r["id"] for r in runs.visible_runs(listed, "a", hosted)} == {a}
    assert {r["id"] for r in runs.visible_runs(listed, "a", local)} == {a, b}


def test_paths_outside_the_roots_are_refused(tmp_path):
    assert runs.inside(tmp_path, tmp_path / "x" / "..") == tmp_path.resolve()
    for path in ("/etc/passwd", tmp_path / ".." / "elsewhere"):
        with pytest.raises(ValueError, match="outside the folder"):
            runs.inside(tmp_path, path)
    (tmp_path / "link").symlink_to("/etc")
    with pytest.raises(ValueError, match="outside the folder"):
        runs.inside(tmp_path, tmp_path / "link" / "passwd")
    with pytest.raises(ValueError, match="outside the folder"):
        runs.run_info(tmp_path, "../../etc")
    data_root = tmp_path / "data"
    data_root.mkdir()
    hosted = Hosting(hosted=True, root=tmp_path, data_root=data_root)
    assert runs.check_data_spec({"name": "digits"}, hosted) == {"name": "digits"}
    runs.check_data_spec({"name": "arrays", "path": "mine.npz"}, hosted)
    with pytest.raises(ValueError, match="outside the server's data folder"):
        runs.check_data_spec({"name": "arrays", "path": "/etc/passwd"}, hosted)
    with pytest.raises(ValueError, match="outside the server's data folder"):
        runs.check_data_spec({"name": "arrays", "path": "../../etc/passwd"}, hosted)
    with pytest.raises(ValueError, match="only built-in data sets"):
        runs.check_data_spec(
            {"name": "arrays", "path": "x.npz"}, Hosting(hosted=True, root=tmp_path)
        )
    with pytest.raises(ValueError, match="unknown"):
        runs.check_data_spec({"name": "/etc/passwd"}, hosted)
    # on a laptop (not hosted) the user's own paths are theirs to use
    runs.check_data_spec({"name": "arrays", "path": "/etc/passwd"}, Hosting(root=tmp_path))


def test_hosting_from_the_environment():
    assert Hosting.from_env({}).hosted is False and Hosting.from_env({}).max_steps == 0
    h = Hosting.from_env(
        {
            "VAELAB_HOSTED": "1",
            "VAELAB_RUNS_ROOT": "/srv/runs",
            "VAELAB_MAX_RUNS": "2",
            "VAELAB_MAX_MINUTES": "5",
        }
    )
    assert (h.hosted, h.root, h.max_running, h.max_seconds) == (True, Path("/srv/runs"), 2, 300.0)
    assert h.max_params == 2_000_000 and h.grace_seconds == 120.0
    with pytest.raises(ValueError, match="VAELAB_MAX_RUNS='two' is not a whole number"):
        Hosting.from_env({"VAELAB_MAX_RUNS": "two"})


def test_queue_positions_follow_creation_order(tmp_path):
    hosting = Hosting(root=tmp_path, max_running=0)
    ids = []
    for token in "abc":
        ids.append(runs.create_run(tmp_path, token, TINY, {"model": "vae"}, hosting))
        time.sleep(0.01)
    listed = runs.list_runs(tmp_path)
    assert [runs.queue_position(listed, i) for i in ids] == [1, 2, 3]
    runs.request(tmp_path, ids[0], "a", "stop")
    listed = runs.list_runs(tmp_path)
    assert [runs.queue_position(listed, i) for i in ids] == [None, 1, 2]
    assert runs.dispatch(tmp_path, hosting) == []  # no slot: nothing starts


def test_metrics_csv_names_the_run_and_its_units():
    records = [
        {"kind": "train", "step": 1, "nelbo": 3.0, "wall": 100.0},
        {"kind": "val", "step": 1, "nelbo": 2.0, "epoch": 1, "wall": 101.5},
    ]
    lines = runs.metrics_csv("vae-digits-1", records, "nats per example").splitlines()
    assert lines[0] == "run,wall_time,step,kind,unit,nelbo,epoch"
    assert lines[1] == "vae-digits-1,0.0,1,train,nats per example,3.0,"
    assert lines[2] == "vae-digits-1,1.5,1,val,nats per example,2.0,1"


def test_comparable_runs_share_data_and_unit():
    a = {"data": "digits", "unit": "nats per example"}
    b = {"data": "jsb", "unit": "nats per observed step"}
    assert runs.comparable([a, b, dict(a)], a) == [a, a]


# ----------------------------------------------------------------------------- processes


def _train(folder: Path, *args: str) -> subprocess.Popen:
    proc = subprocess.Popen(
        [sys.executable, "-m", "vaelab", "train", *TINY, "--out", str(folder), *args],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    _STARTED.append(proc)
    return proc


@pytest.mark.integration
def test_a_cli_run_writes_its_folder_and_stops_on_sigint(tmp_path):
    folder = tmp_path / "cli-run"
    proc = _train(folder, "--epochs", "100000")
    _wait(lambda: len(runs.read_metrics(folder)[0]) >= 3)
    info = runs.list_runs(tmp_path)[0]
    assert (info["id"], info["model"], info["data"], info["unit"], info["state"]) == (
        "cli-run",
        "vae",
        "digits",
        "nats per example",
        "training",
    )
    assert info["owner"] is None  # read-only for every session
    proc.send_signal(signal.SIGINT)
    assert proc.wait(60) == 130
    status = runs.read_status(folder)
    assert status["state"] == "stopped" and "interrupted" in status["message"]
    assert (folder / "checkpoint.pt").is_file()


@pytest.mark.integration
def test_a_bad_value_fails_its_run_with_the_message(tmp_path):
    folder = tmp_path / "bad"
    folder.mkdir()  # as the dashboard makes it (a command line's new folder is not made)
    proc = _train(folder, "--set", "z_dim=0", "--epochs", "1")
    assert proc.wait(60) != 0
    status = runs.read_status(folder)
    assert status["state"] == "failed" and "z_dim" in status["message"]
    assert "z_dim" in proc.stderr.read()  # the command line says it too


@pytest.mark.integration
def test_queue_with_limit_two_pause_continue_stop(tmp_path):
    hosting = Hosting(root=tmp_path, max_running=2)
    ids = [
        runs.create_run(
            tmp_path, f"s{i}", [*TINY, "--epochs", "100000"], {"model": "vae"}, hosting
        )
        for i in range(3)
    ]
    assert runs.dispatch(tmp_path, hosting) == ids[:2]
    listed = runs.list_runs(tmp_path)
    assert runs.queue_position(listed, ids[2]) == 1
    assert runs.dispatch(tmp_path, hosting) == []  # both slots taken
    _wait(lambda: runs.read_metrics(tmp_path / ids[0])[0])
    runs.request(tmp_path, ids[0], "s0", "pause")
    _wait(lambda: runs.read_status(tmp_path / ids[0])["state"] == "paused")
    step = _steps(tmp_path / ids[0])
    time.sleep(0.5)
    assert _steps(tmp_path / ids[0]) == step  # no progress while paused
    runs.request(tmp_path, ids[0], "s0", "continue")
    _wait(lambda: _steps(tmp_path / ids[0]) > step)
    runs.request(tmp_path, ids[0], "s0", "pause")
    _wait(lambda: runs.read_status(tmp_path / ids[0])["state"] == "paused")
    runs.request(tmp_path, ids[0], "s0", "stop")  # a paused run stops too
    _wait(lambda: runs.read_status(tmp_path / ids[0])["state"] == "stopped")
    assert runs.dispatch(tmp_path, hosting) == [ids[2]]  # the third starts when one ends
    for i, run_id in enumerate(ids[1:], start=1):
        runs.request(tmp_path, run_id, f"s{i}", "stop")
    _wait(lambda: all(runs.read_status(tmp_path / i)["state"] not in runs.ACTIVE for i in ids))
    assert all((tmp_path / i / "checkpoint.pt").is_file() for i in ids)
    _wait(lambda: runs.dispatch(tmp_path, hosting) == [] and not runs._CHILDREN)  # reaped


@pytest.mark.integration
def test_runs_of_a_gone_session_stop_after_the_grace_period(tmp_path):
    hosting = Hosting(hosted=True, root=tmp_path, max_running=1, grace_seconds=60)
    a = runs.create_run(tmp_path, "a", [*TINY, "--epochs", "100000"], {"model": "vae"}, hosting)
    b = runs.create_run(tmp_path, "b", [*TINY, "--epochs", "100000"], {"model": "vae"}, hosting)
    assert runs.dispatch(tmp_path, hosting) == [a]
    _wait(lambda: runs.read_metrics(tmp_path / a)[0])
    runs.dispatch(tmp_path, hosting, now=time.time() + 120)  # both pages gone
    _wait(lambda: runs.read_status(tmp_path / a)["state"] == "stopped")
    assert runs.read_status(tmp_path / b)["message"] == "cancelled: its page was closed"
    assert json.loads((tmp_path / a / "request.json").read_text())["action"] == "stop"
