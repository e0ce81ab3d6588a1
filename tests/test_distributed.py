"""Data-parallel training under torchrun: two gloo processes on the CPU train as one process
on the same global batches; a checkpoint written by rank 0 resumes in a single process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from vaelab import distributed
from vaelab.data import Batch
from vaelab.train import load_checkpoint

ROOT = Path(__file__).resolve().parent.parent


# The deterministic flow model (exact log-likelihood: no sampling), so that two processes and
# one must agree to float rounding; run as a script, as torchrun runs user code
FLOW_SCRIPT = """
import os, sys
import torch
from vaelab.config import make_model
from vaelab.datasets import load_dataset
from vaelab.train import TrainConfig, fit

out, batch_size, result = sys.argv[1], int(sys.argv[2]), sys.argv[3]
torch.set_num_threads(1)
torch.manual_seed(0)
train, val, _ = load_dataset("moons", n=700, n_val=100, n_test=100)
model = make_model("realnvp", train, {"hidden_dim": 16, "num_layers": 2})
config = TrainConfig(batch_size=batch_size, max_steps=12, epochs=50, progress=False,
                     out_dir=out, eval_every=1, lr=3e-3)
calls = []
history = fit(model, train, val, config, callback=calls.append)
torch.save({"calls": len(calls), "history": history}, f"{result}.{os.environ.get('RANK', 0)}")
"""


def _python(tmp_path: Path, *args: str, torchrun: bool = False) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    launcher = ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    done = subprocess.run(
        [sys.executable, *(launcher if torchrun else []), *args],
        check=False,
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr[-3000:]


@pytest.mark.integration  # a process of its own: make test, not test-fast
def test_two_gloo_processes_train_as_one_process_on_the_global_batch(tmp_path: Path):
    script = tmp_path / "flow.py"
    script.write_text(FLOW_SCRIPT)
    out, one = tmp_path / "ddp", tmp_path / "one"
    _python(tmp_path, str(script), str(out), "32", str(tmp_path / "r"), torchrun=True)
    _python(tmp_path, str(script), str(one), "64", str(tmp_path / "single"))
    ddp_state = load_checkpoint(out / "checkpoint.pt")["state_dict"]
    one_state = load_checkpoint(one / "checkpoint.pt")["state_dict"]
    assert ddp_state.keys() == one_state.keys()
    for key in one_state:  # float32 sums in another order: rounding, not a different step
        torch.testing.assert_close(ddp_state[key], one_state[key], rtol=1e-4, atol=1e-5, msg=key)
    # the logged metrics are the global batch's, on every process
    single = torch.load(tmp_path / "single.0", weights_only=False)["history"]
    rank0, rank1 = (torch.load(tmp_path / f"r.{r}", weights_only=False) for r in (0, 1))
    for hist in (rank0["history"], rank1["history"]):
        train_ddp = [r["nelbo"] for r in hist if r["kind"] == "train"]
        train_one = [r["nelbo"] for r in single if r["kind"] == "train"]
        assert len(train_ddp) == 12 and train_ddp == pytest.approx(train_one, rel=1e-5)
        assert [r["epoch"] for r in hist if r["kind"] == "val"] == [
            r["epoch"] for r in single if r["kind"] == "val"
        ]
    # callbacks and files on rank 0 only
    assert rank0["calls"] == len(rank0["history"]) and rank1["calls"] == 0
    assert sorted(p.name for p in out.iterdir()) == ["best.pt", "checkpoint.pt"]


def test_shard_takes_every_world_th_row_and_trims_padding():
    x = torch.arange(5 * 4 * 1, dtype=torch.float32).view(5, 4, 1)
    mask = torch.tensor(
        [[1, 1, 1, 1], [1, 1, 0, 0], [1, 1, 1, 0], [1, 0, 0, 0], [1, 1, 0, 0]], dtype=torch.bool
    )
    batch = Batch(x, None, mask)
    ctx = distributed.Context(rank=1, world=2)
    part = distributed.shard(batch, ctx)
    assert torch.equal(part.x, x[[1, 3], :2]) and torch.equal(part.mask, mask[[1, 3], :2])
    part0 = distributed.shard(batch, distributed.Context(rank=0, world=2))
    assert torch.equal(part0.x, x[[0, 2, 4]])  # its longest sequence keeps all 4 steps
    assert distributed.shard(Batch(x[:1], None, mask[:1]), ctx) is None  # fewer rows than
    assert distributed.shard(batch, distributed.Context()) is batch  # processes; alone: all


def test_bad_torchrun_environment(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "two")
    with pytest.raises(ValueError, match="WORLD_SIZE='two' must be an integer"):
        distributed.context(torch.device("cpu"))
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "5")
    with pytest.raises(ValueError, match=r"RANK must be in 0..1"):
        distributed.context(torch.device("cpu"))


@pytest.mark.integration  # a process of its own: make test, not test-fast
def test_torchrun_cli_run_resumes_in_a_single_process(tmp_path: Path):
    """The README's command: python -m torch.distributed.run --nproc-per-node 2 -m vaelab
    train ...; rank 0 alone prints and writes; the checkpoint then resumes without torchrun."""
    out = tmp_path / "run"
    common = [
        "--model",
        "vae",
        "--data",
        "digits",
        "--batch-size",
        "32",
        "--set",
        "hidden_dims=[8]",
        "--train-set",
        "progress=False",
        "--out",
        str(out),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    env = {k: v for k, v in env.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    ddp = subprocess.run(
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
            *common,
            "--max-steps",
            "3",
        ],
        check=False,
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        cwd=tmp_path,
    )
    assert ddp.returncode == 0, ddp.stderr[-2000:]
    printed = [json.loads(line) for line in ddp.stdout.splitlines() if line.startswith("{")]
    assert len(printed) == 1 and printed[0]["steps"] == 3  # rank 0 only
    assert load_checkpoint(out / "checkpoint.pt")["step"] == 3
    resume = [
        sys.executable,
        "-m",
        "vaelab",
        "train",
        *common,
        "--max-steps",
        "5",
        "--resume",
        str(out / "checkpoint.pt"),
    ]
    # stopped inside an epoch of global batches of 64: one process must keep them
    halved = subprocess.run(
        resume, check=False, capture_output=True, text=True, env=env, timeout=300, cwd=tmp_path
    )
    assert (
        halved.returncode == 2
        and "whose batches are global batches of 64; pass "
        "batch_size=64 (--batch-size) to keep them"
        in halved.stderr
    ), halved.stderr[-2000:]
    one = subprocess.run(
        [*resume, "--batch-size", "64"],
        check=False,
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        cwd=tmp_path,
    )
    assert one.returncode == 0, one.stderr[-2000:]
    assert json.loads(one.stdout.splitlines()[-1])["steps"] == 5
    ckpt = load_checkpoint(out / "checkpoint.pt")
    assert ckpt["step"] == 5 and ckpt["train_config"]["batch_size"] == 64
    assert ckpt["resumes"][-1]["changed"]["global_batch_size"] == [64, 64]
