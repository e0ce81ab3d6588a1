"""Reliability leftovers of issue 35: torchrun workers stop when their agent dies; sweep's
Ctrl-C, flags and JSON; the course commands' messages; evaluate's --data-option; the VAE's
min_scale; and a full disk (RLIMIT_FSIZE, a small tmpfs) for every write besides
checkpoints: metrics, the course site and the student release. Each ends in one sentence
naming the path and what survives, a non-zero exit, no traceback and no temporary file."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil

from tests.test_reliability_trainer import RUN_FOLDER_FILES
from vaelab import distributed
from vaelab.train import load_checkpoint

ROOT = Path(__file__).resolve().parents[1]
TINY_VAE = [
    "--model",
    "vae",
    "--data",
    "digits",
    "--set",
    "hidden_dims=[8]",
    "--set",
    "z_dim=2",
    "--train-set",
    "progress=False",
]


def _env() -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    return {**env, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}


def _temporaries(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob("*") if p.name.endswith(".tmp"))


# ----------------------------------------------------------------------------- torchrun


def test_parent_watch_sends_sigterm_when_the_parent_changes_then_exits_after_the_grace():
    parents = iter([100, 100, 100, 1])  # the agent (pid 100) dies on the fourth look
    calls: list[str] = []
    exited = threading.Event()
    watch = distributed.ParentWatch(
        rank=1,
        poll=0.01,
        grace=0.05,
        getppid=lambda: next(parents, 1),
        kill=lambda: calls.append("SIGTERM"),
        exit=lambda code: (calls.append(f"exit {code}"), exited.set()),
    ).start()
    assert exited.wait(5)
    assert watch.parent == 100 and watch.fired
    assert calls == ["SIGTERM", "exit 1"]


def test_parent_watch_ends_quietly_when_the_worker_leaves_first():
    calls: list[str] = []
    watch = distributed.ParentWatch(
        poll=0.01, getppid=lambda: 100, kill=lambda: calls.append("SIGTERM"), exit=calls.append
    ).start()
    time.sleep(0.05)
    watch.stop()
    watch.thread.join(5)
    assert not watch.thread.is_alive() and not watch.fired and calls == []


def test_parent_watch_stopped_in_time_does_not_exit():
    """SIGTERM made the worker save and leave within the grace: no forced exit."""
    parents = iter([100])
    calls: list[str] = []
    watch: distributed.ParentWatch | None = None

    def kill() -> None:
        calls.append("SIGTERM")
        assert watch is not None
        watch.stop()  # what fit's leave() does once the checkpoint is saved

    watch = distributed.ParentWatch(
        poll=0.01, grace=5, getppid=lambda: next(parents, 1), kill=kill, exit=calls.append
    )
    watch.start().thread.join(5)
    assert calls == ["SIGTERM"]


def test_killing_the_torchrun_agent_stops_its_workers_with_a_clean_folder(tmp_path):
    """SIGKILL to torchrun's agent alone (its workers are left running): each worker sees its
    parent gone, the two stop together after a step, rank 0 saves a checkpoint, and no
    process, temporary file or lock is left."""
    out = tmp_path / "run"
    log = tmp_path / "torchrun.log"
    with open(log, "w") as f:
        agent = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "torch.distributed.run",
                "--standalone",
                "--nproc-per-node",
                "2",
                "-m",
                "vaelab",
                "train",
                *TINY_VAE,
                "--batch-size",
                "8",
                "--epochs",
                "100000",
                "--out",
                str(out),
            ],
            env=_env(),
            cwd=tmp_path,
            stdout=f,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: nothing else gets our signals
        )
    workers: list[psutil.Process] = []
    try:
        deadline = time.monotonic() + 240
        metrics = out / "metrics.jsonl"
        while not (metrics.is_file() and metrics.stat().st_size > 0):  # training has begun
            assert agent.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.2)
        workers = psutil.Process(agent.pid).children()
        assert len(workers) == 2, workers
        agent.send_signal(signal.SIGKILL)
        agent.wait(10)
        killed = time.monotonic()
        _, alive = psutil.wait_procs(workers, timeout=30)
        took = time.monotonic() - killed
        assert not alive, f"workers {alive} still running 30 s after their agent died"
        print(f"workers ended {took:.1f} s after the agent's SIGKILL")
    finally:
        for p in workers:
            if p.is_running():
                p.kill()
        if agent.poll() is None:
            agent.kill()
    text = log.read_text()
    assert "Traceback" not in text, text[-3000:]
    assert "torchrun's agent) has ended; stopping after this step" in text, text[-3000:]
    assert "rank 1 of 2 stopped with the others; rank 0 writes the checkpoint" in text
    assert f"--resume {out}/checkpoint.pt" in text, text[-3000:]
    ckpt = load_checkpoint(out / "checkpoint.pt")  # loadable, and its checksum holds
    assert ckpt["step"] > 0 and ckpt.get("world") == 2
    assert not _temporaries(out)
    assert {p.name for p in out.iterdir()} - RUN_FOLDER_FILES <= {"checkpoint.pt", "best.pt"}
