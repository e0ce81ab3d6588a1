"""The DMM benchmark script runs end to end (one epoch) and reports what its help promises."""

from __future__ import annotations

import dataclasses
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from vaelab.train import load_checkpoint

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.integration  # a process of its own: make test, not test-fast
def test_dmm_jsb_reports_the_last_and_the_best_epoch(tmp_path):
    cmd = [
        sys.executable,
        str(ROOT / "benchmarks" / "dmm_jsb.py"),
        "--epochs",
        "2",
        "--eval-every",
        "1",
        "--samples",
        "3",
        "--elbo-samples",
        "1",
        "--threads",
        "1",
        "--rnn-nonlinearity",
        "relu",
        "--weight-decay-sum",
        "4.0",
        "--mc-kl",
        "--anneal-epochs",
        "417",
        "--min-kl-weight",
        "0.01",
        "--train-samples",
        "2",
        "--lr",
        "8e-4",
        "--lr-decay",
        "1",
        "--softplus-variance",
        "--standard-initial-prior",
        "--emission-dim",
        "16",
        "--transition-dim",
        "24",
        "--clip-norm",
        "0.0166",
        "--adam-eps",
        "1.66e-10",
        "--beta1",
        "0.9",
        "--decay-before-clip",
        "--out",
        str(tmp_path),
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=ROOT, check=False)
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
    ckpt = tmp_path / "jsb_chorales" / "checkpoint.pt"
    assert ckpt.exists() and (tmp_path / "jsb_chorales" / "best.pt").exists()
    state = load_checkpoint(ckpt)  # records the model's settings and the data set it saw
    assert state["config"]["analytic_kl"] is False
    assert state["config"]["rnn_nonlinearity"] == "relu"
    # Krishnan et al.'s parameterisation (in the checkpoint's config under compat)
    for record in (state["config"]["compat"], result):
        assert record["softplus_variance"] is record["standard_initial_prior"] is True
    for record in (state["config"], result):
        assert (record["emission_dim"], record["transition_dim"]) == (16, 24)
    assert state["data"] == {"name": "jsb"}
    # Krishnan et al.'s annealing reached fit: KL weight 0.01 at the first step, 1 at epoch 417
    assert (state["train_config"]["anneal_epochs"], state["train_config"]["min_kl_weight"]) == (
        417,
        0.01,
    )
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
    assert state["recipe"]["decay_before_clip"] is result["decay_before_clip"] is True
    assert group["weight_decay"] == 0.0


@pytest.mark.integration  # a process of its own: make test, not test-fast
def test_dmm_jsb_time_limit_stops_with_a_checkpoint_that_resume_continues(tmp_path):
    base = [
        sys.executable,
        str(ROOT / "benchmarks" / "dmm_jsb.py"),
        "--epochs",
        "1",
        "--eval-every",
        "1",
        "--samples",
        "0",
        "--elbo-samples",
        "1",
        "--threads",
        "1",
        "--select",
        "last",
        "--rnn-type",
        "lstm",
        "--input-embedding",
        "--rnn-output-dropout",
        "0.1",
        "--transpose",
        "2",
        "--out",
        str(tmp_path),
    ]

    def run(*extra: str) -> tuple[dict, str]:
        done = subprocess.run(
            [*base, *extra], capture_output=True, text=True, timeout=300, cwd=ROOT, check=False
        )
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
    for record in (state["config"]["compat"], result):
        assert (record["rnn_type"], record["input_embedding"], record["rnn_output_dropout"]) == (
            "lstm",
            True,
            0.1,
        )
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
        range(1, steps_per_epoch + 1)
    )


def test_dmm_jsb_rejects_a_negative_time_limit():
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "dmm_jsb.py"), "--time-limit", "-1"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        check=False,
    )
    assert done.returncode == 2 and "--time-limit must be >= 0" in done.stderr


def test_dmm_jsb_rejects_no_elbo_samples():
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "dmm_jsb.py"), "--elbo-samples", "0"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        check=False,
    )
    assert done.returncode == 2 and "--elbo-samples must be >= 1" in done.stderr


# ----------------------------------------------------------------------------- Pyro's DMM


def _pyro_and_ours(min_scale: float = 1e-12):
    """vaelab's DMM (ReLU RNN, Monte Carlo KL) and the Pyro reference with the same weights,
    in float64, small widths; every weight random (z_0, z_q_0, h_0 and the identity too)."""
    from benchmarks.pyro_dmm import PyroDMM
    from vaelab.dmm import DMM, DMMConfig

    dims = {"x_dim": 6, "z_dim": 3, "emission_dim": 5, "transition_dim": 7, "rnn_dim": 8}
    ours = DMM(
        DMMConfig(**dims, rnn_nonlinearity="relu", analytic_kl=False, min_scale=min_scale)
    ).double()
    theirs = PyroDMM(**dims).double()
    with torch.no_grad():
        for p in ours.parameters():
            p.normal_(0, 0.5)
        pairs = [
            (theirs.emitter.z_to_hidden, ours.emitter.net.net[0]),
            (theirs.emitter.hidden_to_hidden, ours.emitter.net.net[2]),
            (theirs.emitter.hidden_to_x, ours.emitter.net.net[4]),
            (theirs.transition.gate_in, ours.transition.gate[0]),
            (theirs.transition.gate_out, ours.transition.gate[2]),
            (theirs.transition.proposal_in, ours.transition.proposed_mean[0]),
            (theirs.transition.proposal_out, ours.transition.proposed_mean[2]),
            (theirs.transition.z_to_loc, ours.transition.z_to_loc),
            (theirs.transition.z_to_scale, ours.transition.z_to_scale),
            (theirs.combiner.z_to_hidden, ours.combiner.z_to_hidden),
        ]
        for dst, src in pairs:
            dst.weight.copy_(src.weight)
            dst.bias.copy_(src.bias)
        w, b = ours.combiner.hidden_to_loc_scale.weight, ours.combiner.hidden_to_loc_scale.bias
        z = dims["z_dim"]
        theirs.combiner.hidden_to_loc.weight.copy_(w[:z])
        theirs.combiner.hidden_to_loc.bias.copy_(b[:z])
        theirs.combiner.hidden_to_scale.weight.copy_(w[z:])
        theirs.combiner.hidden_to_scale.bias.copy_(b[z:])
        theirs.rnn.load_state_dict(ours.rnn.state_dict())
        for name in ("z_0", "z_q_0", "h_0"):
            getattr(theirs, name).copy_(getattr(ours, name))
    return ours, theirs


def test_pyro_dmm_has_our_architecture_and_elbo():
    """The Pyro programs (model, guide, masks, annealing through poutine.scale, the packed
    reversed RNN) score a guide path exactly as vaelab's DMM does with the same weights."""
    import pyro
    from pyro import poutine

    from benchmarks.pyro_dmm import prepare_batch
    from vaelab.data import Batch, Data

    pyro.clear_param_store()  # pyro.module would otherwise load stale weights by name
    ours, theirs = _pyro_and_ours()
    x = torch.bernoulli(torch.full((4, 5, 6), 0.4, dtype=torch.float64))
    data = Data(x, lengths=torch.tensor([3, 5, 2, 4]))
    x, x_rev, mask, lengths = prepare_batch(data, torch.arange(4))
    assert lengths.tolist() == [5, 4, 3, 2] and x.shape == (4, 5, 6)  # sorted, trimmed
    assert torch.equal(mask, torch.arange(5) < lengths[:, None])
    noise = torch.randn(4, 5, 3, dtype=torch.float64)
    terms = ours.elbo(Batch(x, mask=mask), noise=noise)
    z = ours.guide(*ours.check(Batch(x, mask=mask)), noise)[0]  # the path the ELBO scored
    for annealing in (1.0, 0.3):
        path = {f"z_{t + 1}": z[:, t] for t in range(5)}
        guide = poutine.trace(poutine.condition(theirs.guide, data=path)).get_trace(
            x, x_rev, mask, lengths, annealing
        )
        model = poutine.trace(poutine.condition(theirs.model, data=path)).get_trace(
            x, x_rev, mask, lengths, annealing
        )
        elbo = model.log_prob_sum() - guide.log_prob_sum()
        expected = terms.log_likelihood.sum() - annealing * terms.kl.sum()
        torch.testing.assert_close(elbo, expected, rtol=1e-9, atol=1e-9)
    # and padding matters to neither: a masked step's z (and x) change nothing
    assert set(model.nodes) >= {"z_5", "x_5"}


def test_pyro_annealing_factor_rises_linearly_to_one():
    from benchmarks.pyro_dmm import annealing_factor

    n, epochs = 12, 3
    factors = [annealing_factor(e, i, n, epochs, 0.2) for e in range(epochs + 1) for i in range(n)]
    assert factors[0] == pytest.approx(0.2 + 0.8 / (n * epochs))  # Pyro counts from 1
    assert factors[n * epochs - 1] == pytest.approx(1.0)
    assert all(f == 1.0 for f in factors[n * epochs :])
    steps = torch.diff(torch.tensor(factors[: n * epochs]))
    torch.testing.assert_close(steps, torch.full_like(steps, 0.8 / (n * epochs)))
    assert annealing_factor(0, 0, n, 0, 0.2) == 1.0  # 0 epochs: no annealing


def test_pyro_training_rejects_unknown_settings_and_static_data():
    from benchmarks.pyro_dmm import PyroTraining
    from vaelab.data import Data, load_jsb

    train = load_jsb()[0]
    with pytest.raises(ValueError, match=r"unknown Pyro settings \['lrate'\].*'lr'"):
        PyroTraining(train, lrate=1e-3)
    with pytest.raises(ValueError, match="sequences"):
        PyroTraining(Data(torch.rand(5, 88)))


@pytest.mark.integration  # a process of its own: make test, not test-fast
def test_dmm_speed_vs_pyro_times_one_tiny_epoch_of_each():
    done = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "dmm_speed.py"),
            "--vs-pyro",
            "--epochs",
            "1",
            "--max-batches",
            "1",
            "--threads",
            "1",
            "--krishnan",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.strip().splitlines()
    assert "mini-batches of 20: at most 1;" in lines[0]
    rows = {}
    for line in lines:
        for what in (
            "Pyro examples/dmm.py",
            "vaelab, defaults",
            "vaelab, closest to Pyro",
            "vaelab, closest, on Pyro's plain shuffle",
            "vaelab, --preset krishnan",
        ):
            if line.strip().startswith(what):
                rows[what] = [float(v) for v in line[60:].split()[:4]]
    assert len(rows) == 5, done.stdout  # no eager-GPU row on the CPU
    for low, median, high, peak_mb in rows.values():
        assert 0 < low <= median <= high and peak_mb >= 0
    ratios = dict(line.split("=") for line in lines[-4:])
    assert list(ratios) == [
        "ratio_closest",
        "ratio_pyro_padding",
        "ratio_krishnan",
        "ratio",
    ]  # the defaults' last
    # the wall time of the README's best flow-free run, from the preset's epoch time
    projected = next(line for line in lines if "projected: --preset krishnan" in line)
    minutes = float(projected.split(" s = ")[1].split(" min")[0])
    krishnan = rows["vaelab, --preset krishnan"][1]
    assert minutes == pytest.approx(1300 * krishnan / 60, rel=0.02, abs=0.06)
    pyro_median = rows["Pyro examples/dmm.py"][1]
    assert float(ratios["ratio"]) == pytest.approx(
        pyro_median / rows["vaelab, defaults"][1], rel=0.01, abs=0.01
    )


# ----------------------------------------------------------------------------- presets


def test_dmm_jsb_preset_sets_defaults_that_explicit_flags_override():
    from benchmarks.dmm_jsb import configs, parse_args, recipe

    args = parse_args(["--preset", "pyro"])
    model, train = configs(args, 88)
    assert (model.rnn_nonlinearity, model.analytic_kl) == ("relu", False)
    assert (recipe(args).clip_value_sum, train.clip_norm, train.bucket_jitter) == (
        10.0,
        math.inf,
        math.inf,
    )
    args = parse_args(
        [
            "--preset",
            "pyro",
            "--rnn-nonlinearity",
            "tanh",
            "--no-mc-kl",
            "--lr",
            "1e-3",
            "--clip-norm",
            "5",
        ]
    )
    model, train = configs(args, 88)
    assert (model.rnn_nonlinearity, model.analytic_kl) == ("tanh", True)
    assert (train.lr, train.clip_norm, recipe(args).clip_value_sum) == (1e-3, 5.0, 10.0)
    # --preset krishnan is the README's best JSB command, flag for flag
    readme = [
        "--anneal-epochs",
        "417",
        "--min-kl-weight",
        "0.01",
        "--lr",
        "8e-4",
        "--lr-decay",
        "1",
        "--softplus-variance",
        "--standard-initial-prior",
        "--emission-dim",
        "200",
        "--transition-dim",
        "400",
        "--epochs",
        "1300",
    ]
    named_model, named_train = configs(parse_args(["--preset", "krishnan"]), 88)
    flags_model, flags_train = configs(parse_args(readme), 88)
    assert named_train.preset == "krishnan" and flags_train.preset is None  # recorded
    assert (named_model, dataclasses.replace(named_train, preset=None)) == (
        flags_model,
        flags_train,
    )
    assert named_model.compat.softplus_variance and named_model.compat.standard_initial_prior
    # Krishnan et al.'s guide flags reach DMMConfig.compat
    model, _ = configs(parse_args(["--rnn-type", "lstm", "--input-embedding"]), 88)
    assert (model.compat.rnn_type, model.compat.input_embedding) == ("lstm", True)
    # a field without a flag (quick's widths) reaches the model; no preset: the old defaults
    model, train = configs(parse_args(["--preset", "quick", "--emission-dim", "40"]), 88)
    assert (model.z_dim, model.rnn_dim, model.emission_dim, train.batch_size) == (16, 64, 40, 20)
    model, train = configs(parse_args([]), 88)
    assert (model.z_dim, model.rnn_nonlinearity, train.lr, train.epochs) == (
        100,
        "tanh",
        3e-4,
        5000,
    )


def test_dmm_jsb_rejects_an_unknown_preset_naming_the_known_ones(capsys):
    from benchmarks.dmm_jsb import parse_args

    with pytest.raises(SystemExit) as exit_info:
        parse_args(["--preset", "fast"])
    assert exit_info.value.code == 2
    assert (
        "unknown preset 'fast'; choose one of "
        "['krishnan', 'krishnan-aug', 'krishnan-aug-made', 'krishnan-aug-made-deep', 'pyro', "
        "'quick']" in (capsys.readouterr().err)
    )


@pytest.mark.integration  # a process of its own: make test, not test-fast
def test_dmm_jsb_preset_reaches_the_checkpoints_and_the_result(tmp_path):
    cmd = [
        sys.executable,
        str(ROOT / "benchmarks" / "dmm_jsb.py"),
        "--preset",
        "quick",
        "--epochs",
        "1",
        "--eval-every",
        "1",
        "--samples",
        "0",
        "--elbo-samples",
        "1",
        "--threads",
        "1",
        "--lr",
        "2e-3",
        "--out",
        str(tmp_path),
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=ROOT, check=False)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["preset"] == "quick" and (result["z_dim"], result["rnn_dim"]) == (16, 64)
    assert result["lr"] == 2e-3  # the explicit flag, over the preset's 1e-3
    for name in ("checkpoint.pt", "best.pt"):  # the resolved settings
        state = load_checkpoint(tmp_path / "jsb_chorales" / name)
        assert (state["config"]["z_dim"], state["config"]["transition_dim"]) == (16, 32)
        assert (state["train_config"]["lr"], state["train_config"]["anneal_epochs"]) == (2e-3, 5)
        assert state["data"] == {"name": "jsb"}  # evaluate reloads the data from this


def test_dmm_speed_on_cuda_adds_the_eager_row_that_the_gpu_figures_compare_with():
    """The GPU call (gpu_session.sh speed) times the defaults twice on CUDA: through the CUDA
    graphs with deferred reads, and eagerly with a read per step."""
    from benchmarks.dmm_speed import OurTraining, our_settings
    from vaelab.data import load_jsb

    assert list(our_settings("cpu")) == ["defaults", "closest", "pyro_padding"]
    settings = our_settings("cuda", krishnan=True)
    assert list(settings) == ["defaults", "closest", "pyro_padding", "eager", "krishnan"]
    _, model_kw, train_kw, graphs = settings["eager"]
    assert (model_kw, train_kw, graphs) == ({}, {"sync_every": 1}, False)
    assert all(settings[k][3] for k in settings if k != "eager")
    train = load_jsb()[0]
    run = OurTraining(train, model_kw, train_kw, max_batches=1, graphs=graphs)
    assert run.graphs is False and run.base["sync_every"] == 1
    seconds, loss_per_step = run.epoch()  # runs on the CPU too
    assert seconds > 0 and 0 < loss_per_step < 100


@pytest.mark.integration  # a process of its own: make test, not test-fast
def test_dmm_aug_alternate_times_the_models_in_turns_and_divides_by_the_dmm(tmp_path):
    import pickle

    g = torch.Generator().manual_seed(0)
    songs = [
        [tuple(int(n) for n in 21 + torch.randperm(88, generator=g)[:4]) for _ in range(6)]
        for _ in range(4)
    ]
    with open(tmp_path / "jsb_chorales.pickle", "wb") as f:
        pickle.dump({"train": songs, "valid": songs[:1], "test": songs[:1]}, f)
    done = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "dmm_aug.py"),
            "--data-dir",
            str(tmp_path),
            "--alternate",
            "3",
            "--threads",
            "1",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    records = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    labels = ["dmm", "dmm_aug", "dmm_aug_made"]
    # taking turns: round by round, every model once, in order
    assert [(r["round"], r["model"]) for r in records] == [
        (i, m) for i in range(3) for m in labels
    ]
    summary = {line.split()[0]: line for line in done.stdout.splitlines() if line.startswith("  ")}
    assert set(summary) == set(labels)
    assert "2 rounds after a warm-up" in done.stdout
    epochs = {
        m: [r["epoch_s"] for r in records if r["model"] == m and r["round"] > 0] for m in labels
    }
    for label in labels[1:]:  # the median of the two counted rounds' ratios to the dmm
        ratios = [a / d for a, d in zip(epochs[label], epochs["dmm"], strict=True)]
        shown = float(summary[label].split("/ dmm: median ")[1].split()[0])
        assert shown == pytest.approx(sum(ratios) / 2, abs=0.02)
    bad = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "dmm_aug.py"), "--alternate", "1"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
        check=False,
    )
    assert bad.returncode == 2 and "--alternate needs at least 2 rounds" in bad.stderr


@pytest.mark.browser
def test_dashboard_soak_drives_the_hosted_server_and_reports_its_memory(tmp_path):
    """``soak.py --dashboard`` for half a minute: sessions start runs that finish, the
    server's memory is sampled, and the drift is the last sample minus the baseline."""
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "soak.py"),
            "--dashboard",
            "--minutes",
            "0.75",
            "--warmup",
            "0.2",
            "--every",
            "5",
            "--run-steps",
            "30",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.strip().splitlines()
    assert lines[0].startswith("t=") and "server resident" in lines[0]
    result = json.loads(lines[-1])
    assert result["mode"] == "dashboard" and result["runs_finished"] >= 1
    assert result["session_errors"] == 0
    # Every run a session saw finish has a finished folder; a run cut off by the deadline
    # may still finish on the server before it stops, so it may add one finished folder.
    extra = result["folders_finished"] - result["runs_finished"]
    assert 0 <= extra <= result["cut_off_at_end"], result
    assert 50 < result["rss_mb_first"] <= result["rss_mb_max"]
    assert result["samples"] >= 5 and result["warmup_s"] >= 12
    end = result["rss_mb_end"] - result["rss_mb_after_warmup"]
    assert result["first_hour_drift_mb"] == pytest.approx(end, abs=0.11)
