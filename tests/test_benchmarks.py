"""The DMM benchmark script runs end to end (one epoch) and reports what its help promises."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from vaelab.train import load_checkpoint

ROOT = Path(__file__).resolve().parents[1]


def test_dmm_jsb_reports_the_last_and_the_best_epoch(tmp_path):
    cmd = [sys.executable, str(ROOT / "benchmarks" / "dmm_jsb.py"), "--epochs", "2",
           "--eval-every", "1", "--samples", "3", "--elbo-samples", "1", "--threads", "1",
           "--rnn-nonlinearity", "relu", "--weight-decay-sum", "4.0", "--mc-kl",
           "--anneal-epochs", "417", "--min-kl-weight", "0.01", "--train-samples", "2",
           "--lr", "8e-4", "--lr-decay", "1", "--softplus-variance",
           "--standard-initial-prior", "--emission-dim", "16", "--transition-dim", "24",
           "--clip-norm", "0.0166", "--adam-eps", "1.66e-10", "--beta1", "0.9",
           "--decay-before-clip",
           "--out", str(tmp_path)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=ROOT,
                          check=False)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["epochs"] == result["epochs_this_run"] == 2
    assert result["weight_decay_sum"] == 4.0
    assert result["analytic_kl"] is False and result["rnn_nonlinearity"] == "relu"
    assert 0 < result["weight_decay"] < 4.0 / 500  # per step: JSB batches hold ~1150 steps
    assert result["best_epoch"] in (1, 2)
    for label in ("last", "best"):
        bound = result[f"{label}_test_neg_elbo_bound"]
        assert bound > result[f"{label}_test_nll_importance_K3"] > 0
    assert "best validation -ELBO" in done.stdout
    ckpt = (tmp_path / "jsb_chorales" / "checkpoint.pt")
    assert ckpt.exists() and (tmp_path / "jsb_chorales" / "best.pt").exists()
    state = load_checkpoint(ckpt)  # records the model's settings and the data set it saw
    assert state["config"]["analytic_kl"] is False
    assert state["config"]["rnn_nonlinearity"] == "relu"
    for record in (state["config"], result):  # Krishnan et al.'s parameterisation
        assert record["softplus_variance"] is record["standard_initial_prior"] is True
        assert (record["emission_dim"], record["transition_dim"]) == (16, 24)
    assert state["data"] == {"name": "jsb"}
    # Krishnan et al.'s annealing reached fit: KL weight 0.01 at the first step, 1 at epoch 417
    assert (state["train_config"]["anneal_epochs"], state["train_config"]["min_kl_weight"]) == (
        417, 0.01)
    assert result["anneal_epochs"] == 417 and result["min_kl_weight"] == 0.01
    assert result["train_samples"] == state["train_config"]["train_samples"] == 2
    first = next(r for r in state["history"] if r["kind"] == "train")
    assert abs(first["kl_weight"] - 0.01) < 1e-3
    # Krishnan et al.'s learning rate, constant
    assert (state["train_config"]["lr"], state["train_config"]["lr_decay"]) == (8e-4, 1.0)
    assert (result["lr"], result["lr_decay"]) == (8e-4, 1.0)
    last = [r for r in state["history"] if r["kind"] == "train"][-1]
    assert first["lr"] == last["lr"] == 8e-4 and last["step"] > 1
    # Krishnan et al.'s clip, which scales every step's gradient: fit records the norm before
    assert state["train_config"]["clip_norm"] == result["clip_norm"] == 0.0166
    assert all(r["grad_norm"] > 0.0166 for r in state["history"] if r["kind"] == "train")
    # and their Adam: epsilon rescaled to our per-step loss, first-moment decay 0.9
    assert tuple(result["betas"]) == tuple(state["train_config"]["betas"]) == (0.9, 0.999)
    group = state["optimizer"]["param_groups"][0]
    assert (group["eps"], tuple(group["betas"])) == (1.66e-10, (0.9, 0.999))
    # the L2 term goes into the clipped gradient (fit), so Adam adds none of its own
    assert state["train_config"]["decay_before_clip"] is result["decay_before_clip"] is True
    assert group["weight_decay"] == 0.0


def test_dmm_jsb_time_limit_stops_with_a_checkpoint_that_resume_continues(tmp_path):
    base = [sys.executable, str(ROOT / "benchmarks" / "dmm_jsb.py"), "--epochs", "1",
            "--eval-every", "1", "--samples", "0", "--elbo-samples", "1", "--threads", "1",
            "--select", "last", "--rnn-type", "lstm", "--input-embedding",
            "--rnn-output-dropout", "0.1", "--transpose", "2", "--out", str(tmp_path)]

    def run(*extra: str) -> tuple[dict, str]:
        done = subprocess.run([*base, *extra], capture_output=True, text=True, timeout=300,
                              cwd=ROOT, check=False)
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout.strip().splitlines()[-1]), done.stdout

    ckpt = tmp_path / "jsb_chorales" / "checkpoint.pt"
    # a limit of 0 minutes: stops after the first step, mid-epoch, and still evaluates
    result, out = run("--time-limit", "0")
    first_slice = result["epochs_this_run"]
    assert result["stopped_at_time_limit"] is True
    assert (result["steps"], result["epochs"]) == (1, 0)
    assert result["last_test_neg_elbo_bound"] > 0
    assert "--resume" in out
    state = load_checkpoint(ckpt)
    assert (state["step"], state["epoch"], state["batch_in_epoch"]) == (1, 0, 1)
    # Krishnan et al.'s guide (LSTM, input embedding, output dropout) reached the model, and
    # its own parameters (the embedding, the cell state) are in the checkpoint to resume from
    for record in (state["config"], result):
        assert (record["rnn_type"], record["input_embedding"], record["rnn_output_dropout"]) == (
            "lstm", True, 0.1)
    assert {"embed.0.weight", "c_0", "rnn.weight_hh_l0"} <= set(state["state_dict"])
    # key augmentation is part of the data spec that the checkpoint records
    assert state["data"] == {"name": "jsb", "transpose": 2} and result["transpose"] == 2
    # --resume finishes the epoch from that step
    result, _ = run("--resume")
    assert result["stopped_at_time_limit"] is False and result["epochs"] == 1
    assert result["transpose"] == 2
    state = load_checkpoint(ckpt)
    steps_per_epoch = result["steps"]
    assert state["epoch"] == 1 and state["step"] == steps_per_epoch > 1
    # each slice's timing covers its own share: one step, then all the others
    assert first_slice == round(1 / steps_per_epoch, 2)
    assert result["epochs_this_run"] == round((steps_per_epoch - 1) / steps_per_epoch, 2)
    # the first slice's step is counted once: 1 step before, the rest of the epoch after
    assert [r["step"] for r in state["history"] if r["kind"] == "train"] == list(
        range(1, steps_per_epoch + 1))


def test_dmm_jsb_rejects_a_negative_time_limit():
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "dmm_jsb.py"),
                           "--time-limit", "-1"], capture_output=True, text=True, timeout=60,
                          cwd=ROOT, check=False)
    assert done.returncode == 2 and "--time-limit must be >= 0" in done.stderr


def test_dmm_jsb_rejects_no_elbo_samples():
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "dmm_jsb.py"),
                           "--elbo-samples", "0"], capture_output=True, text=True, timeout=60,
                          cwd=ROOT, check=False)
    assert done.returncode == 2 and "--elbo-samples must be >= 1" in done.stderr
