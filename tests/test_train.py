from __future__ import annotations

import json
import math
import os
import shutil
from dataclasses import asdict
from pathlib import Path

import pytest
import torch
from helpers import config, timeless

import vaelab.train
from vaelab.__main__ import main
from vaelab.data import Batch, load_digits
from vaelab.datasets import load_dataset
from vaelab.dmm import DMM, DMMConfig
from vaelab.dmm_variants import Compat
from vaelab.objectives import ELBOTerms
from vaelab.train import (
    CHECKPOINT_FORMAT,
    Adam,
    ClippedAdam,
    TrainConfig,
    TrainingDiverged,
    build_model,
    checksum,
    evaluate_elbo,
    fit,
    load_checkpoint,
    load_model,
    per_step_decay,
    save_checkpoint,
    tensor_checksum,
)
from vaelab.vae import VAE, VAEConfig


@pytest.fixture(scope="module")
def digits():
    train, val, _ = load_digits()  # dynamically binarised: the data RNG matters on resume
    return train.subset(slice(0, 160)), val.subset(slice(0, 48))


def small_vae(x_dim: int = 64) -> VAE:
    return VAE(VAEConfig(x_dim=x_dim, z_dim=2, hidden_dims=[16]))


def test_same_seed_gives_identical_history(digits):
    train, val = digits
    runs = []
    for _ in range(2):
        torch.manual_seed(123)  # fit must reseed itself: a different global state is ignored
        model = small_vae()
        torch.manual_seed(torch.randint(1000, ()).item() + len(runs))
        runs.append(timeless(fit(model, train, val, config(epochs=1, seed=7))))
    assert runs[0] == runs[1]
    kinds = [r["kind"] for r in runs[0]]
    assert kinds == ["train"] * 5 + ["val", "end"]
    assert all(math.isfinite(r["nelbo"]) for r in runs[0] if r["kind"] != "end")
    # annealing: weight rises linearly from min_kl_weight over one epoch (5 steps)
    weights = [r["kl_weight"] for r in runs[0] if r["kind"] == "train"]
    assert weights == pytest.approx([0.2 + 0.8 * s / 5 for s in range(5)])
    # a different seed gives a different run
    other = timeless(fit(small_vae(), train, val, config(epochs=1, seed=8)))
    assert other != runs[0]


def test_checkpoint_round_trip_gives_the_same_elbo(digits, tmp_path):
    train, val = digits
    model = small_vae()
    fit(model, train, val, config(tmp_path, epochs=1), data_spec={"name": "digits"})
    path = tmp_path / "checkpoint.pt"
    loaded, ckpt = load_model(path)
    assert not loaded.training
    assert ckpt["format"] == CHECKPOINT_FORMAT and ckpt["model"] == "vae"
    assert ckpt["config"]["hidden_dims"] == [16] and ckpt["data"] == {"name": "digits"}
    assert ckpt["step"] == 5 and ckpt["epoch"] == 1
    batch = Batch(torch.bernoulli(val.x[:10]))
    torch.manual_seed(5)
    expected = model.elbo(batch).elbo.detach()
    torch.manual_seed(5)
    torch.testing.assert_close(loaded.elbo(batch).elbo.detach(), expected, rtol=0, atol=0)
    # the file is plain tensors and containers: loadable without unpickling code
    raw = torch.load(path, weights_only=True)
    assert raw["step"] == 5 and raw["history"] == ckpt["history"]


def _params(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def _assert_same_params(a, b):
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6, msg=k)


def test_resume_after_an_epoch_matches_a_straight_run(digits, tmp_path):
    train, val = digits
    torch.manual_seed(0)
    straight = small_vae()
    hist_straight = fit(straight, train, val, config(tmp_path / "a", epochs=2))

    torch.manual_seed(0)
    first = small_vae()
    fit(first, train, val, config(tmp_path / "b", epochs=1))
    torch.manual_seed(99)  # resuming must restore every random state itself
    resumed = small_vae()
    hist_resumed = fit(
        resumed,
        train,
        val,
        config(tmp_path / "b", epochs=2),
        resume=tmp_path / "b" / "checkpoint.pt",
    )
    _assert_same_params(_params(straight), _params(resumed))
    assert timeless(hist_resumed) == timeless(hist_straight)


def test_resume_from_a_mid_epoch_stop_matches_a_straight_run(digits, tmp_path):
    train, val = digits
    torch.manual_seed(0)
    straight = small_vae()
    hist_straight = fit(straight, train, val, config(tmp_path / "a", epochs=2))

    torch.manual_seed(0)
    first = small_vae()
    hist_first = fit(first, train, val, config(tmp_path / "b", epochs=2, max_steps=7))
    assert hist_first[-1]["step"] == 7
    ckpt = load_checkpoint(tmp_path / "b" / "checkpoint.pt")
    assert (ckpt["step"], ckpt["epoch"], ckpt["batch_in_epoch"]) == (7, 1, 2)
    resumed = small_vae()
    hist_resumed = fit(
        resumed,
        train,
        val,
        config(tmp_path / "b", epochs=2),
        resume=tmp_path / "b" / "checkpoint.pt",
    )
    _assert_same_params(_params(straight), _params(resumed))
    assert timeless(hist_resumed) == timeless(hist_straight)


def test_interrupted_save_keeps_the_previous_checkpoint(digits, tmp_path, monkeypatch):
    train, val = digits
    fit(small_vae(), train, val, config(tmp_path, epochs=1))
    path = tmp_path / "checkpoint.pt"
    before = path.read_bytes()
    best_before = (tmp_path / "best.pt").read_bytes()

    def broken_save(obj, f, *args, **kwargs):
        f.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(vaelab.train.checkpoint.torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        fit(small_vae(), train, val, config(tmp_path, epochs=2), resume=path)
    monkeypatch.undo()
    assert path.read_bytes() == before and (tmp_path / "best.pt").read_bytes() == best_before
    # no temporary files
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.pt", "checkpoint.pt"]
    _, ckpt = load_model(path)
    assert ckpt["step"] == 5


def test_nan_loss_raises_and_keeps_the_last_checkpoint(digits, tmp_path, monkeypatch):
    train, val = digits
    model = small_vae()
    path = tmp_path / "checkpoint.pt"
    real_elbo, calls = model.elbo, []

    def elbo(batch, analytic_kl=None):
        terms = real_elbo(batch, analytic_kl)
        if model.training:
            calls.append(1)
            if len(calls) == 7:  # the 7th training step, after the epoch-1 checkpoint
                terms.log_likelihood = terms.log_likelihood * float("nan")
        return terms

    monkeypatch.setattr(model, "elbo", elbo)
    with pytest.raises(TrainingDiverged, match=r"non-finite loss at step 7.*checkpoint"):
        fit(model, train, val, config(tmp_path, epochs=3))
    loaded, ckpt = load_model(path)
    assert ckpt["step"] == 5 and ckpt["epoch"] == 1
    assert math.isfinite(evaluate_elbo(loaded, val)["nelbo"])


def test_nan_parameter_raises_and_keeps_the_last_checkpoint(digits, tmp_path):
    train, val = digits
    model = small_vae()
    path = tmp_path / "checkpoint.pt"

    def poison(record):
        # after the epoch-1 checkpoint (step 5), a weight turns NaN at step 6
        if record["kind"] == "train" and record["step"] == 6:
            assert load_checkpoint(path)["step"] == 5
            with torch.no_grad():
                model.encoder.net[0].weight[0, 0] = float("nan")

    with pytest.raises(TrainingDiverged, match=r"non-finite .* at step 7"):
        fit(model, train, val, config(tmp_path, epochs=3), callback=poison)
    loaded, ckpt = load_model(path)
    assert ckpt["step"] == 5
    assert all(torch.isfinite(p).all() for p in loaded.parameters())
    assert math.isfinite(evaluate_elbo(loaded, val)["nelbo"])


def test_a_nan_guide_parameter_on_the_dmm_fast_path_stops_and_keeps_the_last_checkpoint(
    tmp_path,
):
    """The fast path builds the guide's Gaussians without torch's argument checks
    (vaelab.fast.dmm._gaussian): a guide weight turning NaN must still stop the run as a
    divergence, with the epoch-1 checkpoint intact."""
    train, val, _ = load_dataset("jsb")
    train, val = train.subset(slice(0, 8)), val.subset(slice(0, 4))
    model = DMM(DMMConfig(z_dim=3, emission_dim=8, transition_dim=8, rnn_dim=8))
    assert model.fast
    path = tmp_path / "checkpoint.pt"

    def poison(record):
        # after the epoch-1 checkpoint (step 2), a combiner weight turns NaN at step 3
        if record["kind"] == "train" and record["step"] == 3:
            assert load_checkpoint(path)["step"] == 2
            with torch.no_grad():
                model.combiner.hidden_to_loc_scale.weight[0, 0] = float("nan")

    with pytest.raises(TrainingDiverged, match=r"non-finite .* at step 4"):
        fit(model, train, val, config(tmp_path, epochs=3, batch_size=4), callback=poison)
    loaded, ckpt = load_model(path)
    assert ckpt["step"] == 2
    assert all(torch.isfinite(p).all() for p in loaded.parameters())


def test_nan_gradient_raises(digits, monkeypatch):
    train, _ = digits
    model = small_vae()
    # a finite loss whose gradient is NaN
    real_elbo = model.elbo

    def elbo(batch, analytic_kl=None):
        terms = real_elbo(batch, analytic_kl)
        nan_grad = torch.sqrt(terms.kl * 0 - 1e-30 * 0)  # sqrt(0): finite value, inf grad
        terms.kl = terms.kl + nan_grad
        return terms

    monkeypatch.setattr(model, "elbo", elbo)
    with pytest.raises(TrainingDiverged, match="non-finite gradient norm at step 1"):
        fit(model, train, None, config(epochs=1))


def test_callback_returning_false_stops_and_checkpoints(digits, tmp_path):
    train, val = digits
    seen = []

    def stop_at_three(record):
        seen.append(record["kind"])
        return not (record["kind"] == "train" and record["step"] == 3)

    history = fit(small_vae(), train, val, config(tmp_path, epochs=2), callback=stop_at_three)
    assert history[-1] == {"kind": "end", "step": 3, "epoch": 0, "stopped": True}
    assert seen == ["train"] * 3 + ["end"]
    ckpt = load_checkpoint(tmp_path / "checkpoint.pt")
    assert (ckpt["step"], ckpt["batch_in_epoch"]) == (3, 3)


@pytest.mark.parametrize(
    "kw, field",
    [
        ({"epochs": 0}, "epochs"),
        ({"batch_size": 0}, "batch_size"),
        ({"lr": 0.0}, "lr"),
        ({"betas": (0.9, 1.0)}, "betas"),
        ({"clip_norm": -1.0}, "clip_norm"),
        ({"lr_decay": 1.5}, "lr_decay"),
        ({"min_kl_weight": 2.0}, "min_kl_weight"),
        ({"max_steps": 0}, "max_steps"),
        ({"eval_every": -1}, "eval_every"),
        ({"weight_decay": -0.1}, "weight_decay"),
        ({"weight_decay_sum": -1.0}, "weight_decay_sum"),
        ({"bucket_jitter": -0.5}, "bucket_jitter"),
        ({"train_samples": 0}, "train_samples"),
    ],
)
def test_bad_train_config_is_rejected(kw, field):
    with pytest.raises(ValueError, match=rf"TrainConfig\.{field}=.* is out of range"):
        TrainConfig(**kw)


def test_weight_decay_shrinks_the_weights(digits):
    train, _ = digits
    norms = []
    for weight_decay in (0.0, 50.0):
        torch.manual_seed(0)
        model = small_vae()
        fit(model, train, None, config(weight_decay=weight_decay))
        norms.append(float(torch.cat([p.detach().flatten() for p in model.parameters()]).norm()))
    assert norms[1] < 0.95 * norms[0]


def test_weight_decay_on_the_summed_loss_is_rescaled_per_step(digits):
    train, _ = digits  # 160 examples, batches of 32: 32 examples (steps) per batch
    assert per_step_decay(8.0, train, 32) == pytest.approx(8.0 / 32)
    assert per_step_decay(8.0, train, 50) == pytest.approx(8.0 / (160 / 4))
    params = []
    for kw in ({"weight_decay_sum": 8.0}, {"weight_decay": 8.0 / 32}, {}):
        torch.manual_seed(0)
        model = small_vae()
        fit(model, train, None, config(**kw))
        params.append(_params(model))
    _assert_same_params(params[0], params[1])
    with pytest.raises(AssertionError):
        _assert_same_params(params[0], params[2])


def test_decay_before_clip_puts_the_l2_gradient_inside_the_clipped_norm(digits, monkeypatch):
    """Krishnan et al.'s order: the clip sees grad(loss) + weight_decay * p, and Adam adds no
    decay of its own; torch's order: the clip sees grad(loss) alone."""
    train, _ = digits
    seen = []
    real = torch.nn.utils.clip_grad_norm_

    def spy(parameters, max_norm):
        parameters = list(parameters)
        seen.append(
            ([p.grad.clone() for p in parameters], [p.detach().clone() for p in parameters])
        )
        return real(parameters, max_norm)

    monkeypatch.setattr(vaelab.train.step.nn.utils, "clip_grad_norm_", spy)
    runs = {}
    for name, recipe in {
        "none": None,
        "after": None,
        "before": ClippedAdam(decay_before_clip=True),
    }.items():
        seen.clear()
        torch.manual_seed(0)  # the same initial weights in all three
        model = small_vae()
        decay = {} if name == "none" else {"weight_decay": 0.5}
        fit(
            model,
            train,
            None,
            config(max_steps=1, seed=3, clip_norm=1e-3, **decay),
            optimizer=recipe,
        )
        runs[name] = seen[0]
    grads, params = runs["none"]
    for g_none, g_after, g_before, p in zip(
        grads, runs["after"][0], runs["before"][0], params, strict=True
    ):
        torch.testing.assert_close(g_after, g_none)  # Adam adds it later, after the clip
        torch.testing.assert_close(g_before, g_none + 0.5 * p)


def test_clip_value_sum_clamps_every_gradient_element_per_step(digits, monkeypatch):
    train, _ = digits  # batches of 32 examples: the summed loss is 32 times ours
    seen = []
    real = torch.nn.utils.clip_grad_value_

    def spy(parameters, value):
        parameters = list(parameters)
        before = max(float(p.grad.abs().max()) for p in parameters)
        real(parameters, value)
        seen.append((value, before, max(float(p.grad.abs().max()) for p in parameters)))

    monkeypatch.setattr(vaelab.train.step.nn.utils, "clip_grad_value_", spy)
    fit(small_vae(), train, None, config(epochs=1), optimizer=ClippedAdam(clip_value_sum=3.2))
    assert len(seen) == 5
    for value, before, after in seen:
        assert value == pytest.approx(3.2 / 32)
        assert before > value and after == pytest.approx(value)  # it did clamp
    seen.clear()
    seen.clear()  # several guide draws per step: the same summed loss per batch, same clamp
    fit(
        small_vae(),
        train,
        None,
        config(epochs=1, train_samples=2),
        optimizer=ClippedAdam(clip_value_sum=3.2),
    )
    assert [value for value, _, _ in seen] == pytest.approx([3.2 / 32] * 5)
    seen.clear()
    fit(small_vae(), train, None, config(epochs=1))  # off by default
    assert seen == []


def test_train_samples_average_the_elbo_of_several_guide_draws(digits, monkeypatch):
    train, _ = digits
    model = small_vae()
    rows, seen = [], []
    real_elbo, real_loss = model.elbo, vaelab.train.step.loss
    # the VAE's elbo takes no samples: it sees the batch repeated, sample-major
    monkeypatch.setattr(model, "elbo", lambda b: rows.append(len(b)) or real_elbo(b))
    monkeypatch.setattr(
        vaelab.train.step, "loss", lambda terms, w: seen.append((terms, w)) or real_loss(terms, w)
    )
    history = fit(model, train, None, config(epochs=1, train_samples=3))
    assert rows == [96] * 5  # 5 batches of 32, three draws each
    for terms, w in seen:  # the loss is the mean of the three draws' losses
        fields = (terms.log_likelihood, terms.kl, terms.steps)
        draws = [ELBOTerms(*(t[i * 32 : (i + 1) * 32] for t in fields)) for i in range(3)]
        torch.testing.assert_close(
            real_loss(terms, w), torch.stack([real_loss(d, w) for d in draws]).mean()
        )
    assert history[0]["nelbo"] == pytest.approx(-float(seen[0][0].elbo.detach().mean()))


def test_unknown_device_is_rejected():
    with pytest.raises(ValueError, match="unknown device 'gpu7'"):
        TrainConfig(device="gpu7")


def test_fit_rejects_a_model_of_the_wrong_size(digits):
    train, val = digits
    with pytest.raises(ValueError, match="model x_dim=10 but the data has 64 features"):
        fit(small_vae(x_dim=10), train, val, config())


def test_resume_rejects_a_missing_or_foreign_checkpoint(digits, tmp_path):
    train, val = digits
    with pytest.raises(FileNotFoundError, match="checkpoint .* not found"):
        fit(small_vae(), train, val, config(), resume=tmp_path / "nope.pt")
    bad = tmp_path / "bad.pt"
    torch.save({"format": "something else"}, bad)
    with pytest.raises(ValueError, match="is not a vaelab checkpoint"):
        load_checkpoint(bad)
    bad.write_bytes(b"not a zip file")
    with pytest.raises(ValueError, match="is not a readable vaelab checkpoint"):
        load_checkpoint(bad)


def test_best_checkpoint_keeps_the_weights_of_the_lowest_validation_elbo(
    digits, tmp_path, monkeypatch
):
    train, val = digits
    scripted = iter([5.0, 3.0, 4.0, 3.5, 2.0])  # validation -ELBO after epochs 1..5
    monkeypatch.setattr(
        vaelab.train.run, "evaluate_elbo", lambda *a, **k: {"nelbo": next(scripted), "kl": 0.0}
    )
    model = small_vae()
    snapshots = {}

    def keep(record):
        if record["kind"] == "val":
            snapshots[record["epoch"]] = _params(model)

    saves = []
    real_save = torch.save
    monkeypatch.setattr(torch, "save", lambda *a, **k: (saves.append(1), real_save(*a, **k)))
    fit(model, train, val, config(tmp_path, epochs=3), callback=keep)
    monkeypatch.setattr(torch, "save", real_save)
    # one write per epoch: when best.pt and checkpoint.pt hold the same state, it is written once
    assert len(saves) == 3
    best = load_checkpoint(tmp_path / "best.pt")
    assert best["epoch"] == 2 and load_checkpoint(tmp_path / "checkpoint.pt")["epoch"] == 3
    _assert_same_params(best["state_dict"], snapshots[2])
    with pytest.raises(AssertionError):
        _assert_same_params(best["state_dict"], snapshots[3])
    # resuming remembers the best so far: 3.5 at epoch 4 is not better than 3.0, 2.0 is
    fit(
        model,
        train,
        val,
        config(tmp_path, epochs=4),
        callback=keep,
        resume=tmp_path / "checkpoint.pt",
    )
    assert load_checkpoint(tmp_path / "best.pt")["epoch"] == 2
    fit(
        model,
        train,
        val,
        config(tmp_path, epochs=5),
        callback=keep,
        resume=tmp_path / "checkpoint.pt",
    )
    best = load_checkpoint(tmp_path / "best.pt")
    assert best["epoch"] == 5
    _assert_same_params(best["state_dict"], snapshots[5])


def test_no_best_checkpoint_without_validation(digits, tmp_path):
    train, _ = digits
    fit(small_vae(), train, None, config(tmp_path, epochs=1))
    assert (tmp_path / "checkpoint.pt").exists() and not (tmp_path / "best.pt").exists()


@pytest.mark.parametrize("links", [True, False])
def test_best_checkpoint_shares_the_saved_state_by_link_or_copy(
    digits, tmp_path, monkeypatch, links
):
    """best.pt due with checkpoint.pt: a hard link where the file system allows, else a copy;
    either way it keeps its bytes when checkpoint.pt is replaced later."""
    train, val = digits
    if not links:

        def no_link(*_):
            raise OSError("no hard links here")

        monkeypatch.setattr(vaelab.train.checkpoint.os, "link", no_link)
    fit(small_vae(), train, val, config(tmp_path, epochs=1))
    best, last = tmp_path / "best.pt", tmp_path / "checkpoint.pt"
    assert best.read_bytes() == last.read_bytes()
    assert os.path.samefile(best, last) == links
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.pt", "checkpoint.pt"]
    before = best.read_bytes()
    save_checkpoint(last, {"format": "later"})  # how fit writes: a new file replaces the old
    assert best.read_bytes() == before


@pytest.mark.parametrize("samples", [0, -2])
def test_evaluate_elbo_refuses_no_guide_draws(digits, samples):
    _, val = digits
    with pytest.raises(ValueError, match=rf"samples must be >= 1 .*got {samples}"):
        evaluate_elbo(small_vae(), val, samples=samples)


def test_train_step_alone_is_one_optimiser_step_of_fit(digits):
    """train_step, the loop's body, gives fit's first record on fit's first batch."""
    train, _ = digits
    torch.manual_seed(0)
    model = small_vae()
    cfg = config(max_steps=1, lr_decay=1.0, anneal_epochs=0.0)
    reference = small_vae()
    reference.load_state_dict(model.state_dict())
    history = fit(reference, train, None, cfg)  # seeds itself with cfg.seed
    vaelab.train.seed_everything(cfg.seed)
    generator = torch.Generator().manual_seed(cfg.seed)
    batch = next(
        iter(
            train.batches(
                cfg.batch_size, shuffle=True, generator=generator, jitter=cfg.bucket_jitter
            )
        )
    )
    optimizer = vaelab.train.adam(model.parameters(), cfg, torch.device("cpu"))
    scheduler = torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=1.0)
    record = vaelab.train.train_step(model, batch, optimizer, scheduler, cfg, step=0)
    assert record["step"] == 1 and record["lr"] == cfg.lr
    expected = {k: v for k, v in history[0].items() if k not in ("seconds", "epoch")}
    assert {k: v for k, v in record.items() if k != "epoch"} == expected
    _assert_same_params(_params(model), _params(reference))


@pytest.mark.parametrize("every", [2, 3])
def test_reading_the_metrics_every_few_steps_changes_no_number(
    digits, tmp_path, monkeypatch, every
):
    """sync_every keeps a step's metrics on the device and reads an interval's in one
    transfer (for a GPU, where every read waits for the device); the run is the same."""
    train, val = digits
    real, reads = vaelab.train.deferred.read_records, []

    def spy(pending, *args):
        if any("device" in r for r in pending):  # a transfer, not records read already
            reads.append(len(pending))
        return real(pending, *args)

    monkeypatch.setattr(vaelab.train.deferred, "read_records", spy)
    runs = {}
    for k in (1, every):
        reads.clear()
        torch.manual_seed(0)
        model = small_vae()
        history = fit(
            model,
            train,
            val,
            config(tmp_path / str(k), epochs=2, sync_every=k, weight_decay=1e-3),
            optimizer=ClippedAdam(clip_value_sum=3.2, decay_before_clip=True),
        )
        runs[k] = (
            timeless(history),
            model.state_dict(),
            list(reads),
            load_checkpoint(tmp_path / str(k) / "checkpoint.pt")["state_dict"],
        )
    assert runs[1][0] == runs[every][0]
    for state in (1, 3):
        for name, value in runs[1][state].items():
            assert torch.equal(value, runs[every][state][name]), name
    assert runs[1][2] == []  # sync_every=1: each step reads its own, before its update
    # an interval of `every` steps per read, and an epoch's end (5 steps) reads the rest
    assert runs[every][2] == {2: [2, 2, 1] * 2, 3: [3, 2] * 2}[every]


def _poisoned(kind: str, model, monkeypatch, at_step: int = 7):
    """Make training step ``at_step`` of ``model`` diverge: a NaN loss, an exploding loss, or
    a finite loss whose gradient is NaN."""
    real, calls = model.elbo, []

    def elbo(batch, analytic_kl=None):
        terms = real(batch, analytic_kl)
        if model.training:
            calls.append(1)
            if len(calls) == at_step:
                if kind == "nan":
                    terms.log_likelihood = terms.log_likelihood * float("nan")
                elif kind == "exploding":
                    terms.log_likelihood = terms.log_likelihood * 1e19
                else:  # sqrt at 0: a finite value, an infinite gradient
                    terms.kl = terms.kl + torch.sqrt(terms.kl * 0)
        return terms

    monkeypatch.setattr(model, "elbo", elbo)


@pytest.mark.parametrize(
    "kind, reason",
    [
        ("nan", "non-finite loss at step 7"),
        ("exploding", "exploding loss"),
        ("gradient", "non-finite gradient norm at step 7"),
    ],
)
def test_a_deferred_read_stops_at_the_diverged_step_with_its_parameters_untouched(
    digits, tmp_path, monkeypatch, kind, reason
):
    """With sync_every=4 step 7 diverges inside the interval 5-8: the fused optimiser skips
    its update and step 8's on the device, and the read raises what a read per step raises,
    with the same parameters (those after step 6), records and message."""
    train, val = digits
    runs = {}
    for k in (1, 4):
        torch.manual_seed(0)
        model, seen = small_vae(), []
        _poisoned(kind, model, monkeypatch)
        with pytest.raises(TrainingDiverged, match=reason) as info:
            fit(
                model,
                train,
                val,
                config(tmp_path / str(k), epochs=3, sync_every=k),
                callback=seen.append,
            )
        runs[k] = (
            str(info.value).replace(str(tmp_path / str(k)), "OUT"),
            timeless(seen),
            model.state_dict(),
        )
    assert runs[1][0] == runs[4][0]
    assert runs[1][1] == runs[4][1]
    assert [r["step"] for r in runs[4][1] if r["kind"] == "train"] == [1, 2, 3, 4, 5, 6]
    for name, value in runs[1][2].items():
        assert torch.equal(value, runs[4][2][name]), name
        assert torch.isfinite(value).all()


def test_a_callback_stop_acts_at_the_next_read(digits, tmp_path):
    """sync_every=4: the callback sees step 2's record only when steps 1-4 are read; training
    stops there, saves step 4, and every step run has its record."""
    train, val = digits
    history = fit(
        small_vae(),
        train,
        val,
        config(tmp_path, epochs=2, sync_every=4),
        callback=lambda r: r.get("step") != 2,
    )
    assert [r["step"] for r in history if r["kind"] == "train"] == [1, 2, 3, 4]
    assert history[-1]["stopped"] is True
    assert load_checkpoint(tmp_path / "checkpoint.pt")["step"] == 4


def test_a_callback_learns_the_step_its_parameters_are_at(digits):
    """The dashboard labels parameter snapshots taken in the callback: with sync_every=3 the
    records of steps 1-3 arrive after step 3, and at_step says so."""
    train, _ = digits

    class Callback:
        at_step = None

        def __init__(self):
            self.seen = []

        def __call__(self, record):
            self.seen.append((record["kind"], record["step"], self.at_step))

    for every, expected in ((1, [1, 2, 3, 4, 5]), (3, [3, 3, 3, 5, 5])):
        callback = Callback()
        fit(small_vae(), train, None, config(epochs=1, sync_every=every), callback=callback)
        assert [at for kind, _, at in callback.seen if kind == "train"] == expected
        assert [step for kind, step, _ in callback.seen if kind == "train"] == [1, 2, 3, 4, 5]
        assert callback.seen[-1] == ("end", 5, 5)


DATA = Path(__file__).parent / "data"


def test_a_checkpoint_from_before_the_train_package_resumes_as_the_old_code_did(tmp_path, capsys):
    """tests/data/dmm_pyro_checkpoint_v1.pt was written by train.py (3 steps of --preset pyro,
    its train_config holding clip_value_sum=10 and decay_before_clip); resuming it to step 6
    gives what the old code gave (the json and the weights beside it, written by train.py at
    a37cb24): the same losses and the same weights. Bit for bit on one machine (the old and the
    new code gave the same weight checksum on the AMD EPYC that rewrote the file), but the
    kernels' summation order differs between CPUs, so the weights are compared within float32
    rounding rather than by a checksum of their bits."""
    expected = json.loads((DATA / "dmm_pyro_checkpoint_v1_resumed.json").read_text())
    old_weights = torch.load(DATA / "dmm_pyro_checkpoint_v1_resumed_state.pt", weights_only=True)
    path = tmp_path / "checkpoint.pt"
    shutil.copy(DATA / "dmm_pyro_checkpoint_v1.pt", path)
    ckpt = load_checkpoint(path)  # the old fields became the recipe that trains as they did
    assert "clip_value_sum" not in ckpt["train_config"]
    assert ckpt["recipe"] == {
        "name": "ClippedAdam",
        "clip_value_sum": 10.0,
        "decay_before_clip": False,
        "adam_eps": 1e-8,
    }
    code = main(
        ["train", "--resume", str(path), "--max-steps", "6", "--train-set", "progress=False"]
    )
    assert code == 0, capsys.readouterr().err
    ckpt = load_checkpoint(path)
    records = [r for r in ckpt["history"] if r["kind"] == "train"]
    assert ckpt["step"] == expected["step"] == 6
    assert [r["loss"] for r in records] == pytest.approx(expected["loss"], rel=1e-6)
    assert [r["nelbo"] for r in records] == pytest.approx(expected["nelbo"], rel=1e-6)
    assert ckpt["state_dict"].keys() == old_weights.keys()
    for name, weight in ckpt["state_dict"].items():
        torch.testing.assert_close(weight, old_weights[name], rtol=1e-5, atol=1e-7, msg=name)
    with pytest.raises(ValueError, match=r"it trained with ClippedAdam\(clip_value_sum=10.0"):
        model = build_model(ckpt["model"], ckpt["config"])
        train, val, _ = load_dataset(**ckpt["data"])
        fit(
            model,
            train,
            val,
            TrainConfig(**{**ckpt["train_config"], "max_steps": 9}),
            resume=path,
            optimizer=Adam(),
        )


def test_a_dmm_checkpoint_with_flat_comparison_fields_loads_and_resumes_nested(tmp_path):
    """Before DMMConfig.compat (vaelab.dmm_variants) a DMM checkpoint's config held
    softplus_variance, standard_initial_prior, ... flat. load_checkpoint checks the file as
    written (its checksum covers the flat config), then moves them into config["compat"]:
    the model built from it has the same config and the same ELBO, and a resume agrees."""
    train, val, _ = load_dataset("jsb")
    train, val = train.subset(slice(0, 8)), val.subset(slice(0, 4))
    compat = Compat(softplus_variance=True, standard_initial_prior=True)
    model = DMM(DMMConfig(z_dim=3, emission_dim=8, transition_dim=8, rnn_dim=8, compat=compat))
    fit(model, train, val, config(tmp_path, epochs=1, batch_size=4), data_spec={"name": "jsb"})
    path = tmp_path / "checkpoint.pt"
    state = torch.load(path, weights_only=True)
    nested = state["config"]
    assert nested["compat"] == asdict(compat)  # what this vaelab writes
    # the old form: the five fields flat beside the others, under a checksum of its own
    state["config"] = {**{k: v for k, v in nested.items() if k != "compat"}, **nested["compat"]}
    assert state["config"]["softplus_variance"] is True and "compat" not in state["config"]
    state["checksum"] = checksum(state)
    save_checkpoint(path, state)
    loaded, ckpt = load_model(path)
    assert ckpt["config"] == nested and loaded.config == model.config
    batch = val.batch(torch.arange(4))
    noise = torch.randn(4, batch.x.shape[1], 3)
    torch.testing.assert_close(
        loaded.elbo(batch, noise=noise).elbo, model.eval().elbo(batch, noise=noise).elbo
    )
    # resuming the old file: the model's nested config and the upgraded one agree
    history = fit(
        DMM(model.config), train, val, config(tmp_path, epochs=2, batch_size=4), resume=path
    )
    assert history[-1]["kind"] == "end" and load_checkpoint(path)["epoch"] == 2
    assert load_checkpoint(path)["config"] == nested


def test_an_unknown_optimiser_recipe_is_refused_by_name(tmp_path):
    path = tmp_path / "checkpoint.pt"
    state = load_checkpoint(DATA / "dmm_pyro_checkpoint_v1.pt")
    state["recipe"] = {"name": "Lion", "lr": 1.0}
    state["checksum"] = tensor_checksum(state)
    save_checkpoint(path, state)
    with pytest.raises(ValueError, match=r"unknown optimiser recipe 'Lion'.*newer vaelab"):
        load_checkpoint(path)


@pytest.mark.parametrize(
    "kw, field",
    [
        ({"clip_value_sum": -1.0}, "clip_value_sum"),
        ({"clip_value_sum": math.nan}, "clip_value_sum"),
        ({"adam_eps": 0.0}, "adam_eps"),
    ],
)
def test_a_bad_comparison_recipe_is_rejected(kw, field):
    with pytest.raises(ValueError, match=rf"ClippedAdam\.{field}=.* is out of range"):
        ClippedAdam(**kw)


def test_the_recipes_epsilon_reaches_fits_adam(digits, tmp_path):
    """adam_eps left TrainConfig for the comparison recipe; fit's optimiser takes it."""
    train, _ = digits
    fit(
        small_vae(),
        train,
        None,
        config(tmp_path / "a", max_steps=1),
        optimizer=ClippedAdam(adam_eps=1.66e-10),
    )
    fit(small_vae(), train, None, config(tmp_path / "b", max_steps=1))
    eps = {
        k: load_checkpoint(tmp_path / k / "checkpoint.pt")["optimizer"]["param_groups"][0]["eps"]
        for k in "ab"
    }
    assert eps == {"a": 1.66e-10, "b": 1e-8}
