"""vaelab.live: the dashboard's pure helpers (pairings, run requests and their caps, uploads,
the validation view) and the diagnostics it shows."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from vaelab.config import make_model
from vaelab.data import Batch
from vaelab.datasets import load_dataset
from vaelab.live import (
    accepted_data,
    active_units,
    check_compatible,
    check_upload,
    checkpoint_summary,
    count_parameters,
    dataset_needs_path,
    diagnose,
    discrete_levels,
    kl_per_dim,
    latent_activity,
    make_view,
    plan_run,
    read_upload,
    reference_metrics,
)
from vaelab.runs import Hosting
from vaelab.train import TrainConfig, fit

TRAIN = {
    "epochs": 2,
    "batch_size": 32,
    "lr": 1e-3,
    "seed": 0,
    "device": "cpu",
    "max_steps": 0,
    "anneal_epochs": 0.0,
    "train_samples": 1,
}


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


def test_check_compatible_names_the_problem():
    train, _, _ = load_dataset("jsb")
    digits_train, _, _ = load_dataset("digits")
    model = make_model("vae", digits_train, {"hidden_dims": [8]})
    model.config.x_dim = 88
    with pytest.raises(ValueError, match="vae cannot train on jsb"):
        check_compatible(model, train)
    check_compatible(make_model("vae", digits_train, {"hidden_dims": [8]}), digits_train)


def test_dataset_needs_path():
    assert not dataset_needs_path("digits")
    assert dataset_needs_path("mnist")
    with pytest.raises(ValueError, match="unknown data set"):
        dataset_needs_path("nope")


# ----------------------------------------------------------------------------- diagnostics


def test_latent_activity_is_the_variance_of_posterior_means(digits):
    train_data, val, _ = digits
    model = make_model("vae", train_data, {"z_dim": 3, "hidden_dims": [16]}).eval()
    batch = val.batch(torch.arange(50))
    z = model.latents(batch)
    activity = latent_activity(model, batch)
    torch.testing.assert_close(activity, z.var(dim=0, unbiased=False), rtol=1e-4, atol=1e-7)
    assert active_units(torch.tensor([0.5, 0.011, 0.009, 0.0])) == 2


def test_a_constant_latent_dimension_is_inactive(digits):
    train_data, val, _ = digits
    model = make_model("vae", train_data, {"z_dim": 3, "hidden_dims": [16]}).eval()
    with torch.no_grad():  # q(z_1 | x) ignores x: its mean is the same for every example
        layer = model.encoder.net[-1]  # the MLP's output layer: [loc (Z), pre-scale (Z)]
        layer.weight[1].zero_()  # output 1 is the loc of z_1 (loc and scale are chunked)
        layer.bias[1] = 0.7
    entry = diagnose(model, val.batch(torch.arange(100)))
    assert entry["activity"][1] == pytest.approx(0.0, abs=1e-12)
    assert entry["activity"][0] > 0.01 and entry["activity"][2] > 0.01
    assert entry["active_units"] == 2


def test_activity_of_sequences_uses_observed_steps_only():
    class Echo(torch.nn.Module):  # posterior means = the observations themselves
        config = type("C", (), {"z_dim": 1})()

        def latents(self, batch):
            return batch.x

        def parameters(self):
            yield torch.zeros(1)

    x = torch.tensor([[[1.0], [3.0], [1e6]], [[2.0], [4.0], [5.0]]])  # [2, 3, 1]
    mask = torch.tensor([[True, True, False], [True, True, True]])
    activity = latent_activity(Echo(), Batch(x, mask=mask))
    expected = torch.tensor([1.0, 3.0, 2.0, 4.0, 5.0]).var(unbiased=False)
    torch.testing.assert_close(activity, expected[None])


def test_vae_kl_per_dim_sums_to_the_analytic_kl(digits):
    train_data, val, _ = digits
    model = make_model("vae", train_data, {"z_dim": 4, "hidden_dims": [16]}).eval()
    batch = val.batch(torch.arange(40))
    per_dim = model.kl_per_dim(batch)
    assert per_dim.shape == (4,) and bool((per_dim >= 0).all())
    total = model.elbo(batch, analytic_kl=True).kl.mean()  # deterministic: analytic KL
    torch.testing.assert_close(per_dim.sum(), total, rtol=1e-5, atol=1e-6)
    # and each dimension by the closed form 0.5 * (mu^2 + s^2 - 1 - log s^2), written out
    q = model.encoder(batch.x).base_dist
    closed = 0.5 * (q.loc**2 + q.scale**2 - 1 - 2 * q.scale.log())
    torch.testing.assert_close(per_dim, closed.mean(dim=0), rtol=1e-5, atol=1e-6)
    assert kl_per_dim(model, batch).shape == (4,)


def test_diagnose_without_kl_per_dim_or_latents():
    train, _, _ = load_dataset("moons")
    flow = make_model("realnvp", train, {"hidden_dim": 8})
    assert diagnose(flow, train.batch(torch.arange(8))) == {}
    train, val, _ = load_dataset("linear")
    ssm = make_model("ssm", train, {"hidden_dim": 8, "rnn_dim": 8}).eval()
    entry = diagnose(ssm, val.batch(torch.arange(4)))
    assert len(entry["activity"]) == ssm.config.z_dim
    if not hasattr(ssm, "kl_per_dim"):
        assert entry["kl_per_dim"] is None


def test_reference_metrics_give_the_exact_nll_of_the_true_system():
    from vaelab.kalman import exact_nll as kalman_exact_nll

    train, val, _ = load_dataset("linear")
    ref = reference_metrics(train, val)
    assert ref["exact_nll_val"] == pytest.approx(kalman_exact_nll(val.info["system"], val))
    assert reference_metrics(*load_dataset("digits")[:2]) == {}
    # the pendulum's info["system"] is only a name: no exact likelihood, and no crash
    pendulum = load_dataset("pendulum")
    assert pendulum[0].info["system"] == "pendulum"
    assert reference_metrics(*pendulum[:2]) == {}


def test_accepted_data_per_model():
    table = {
        model: {d for d, why in accepted_data(model).items() if why is None}
        for model in ("vae", "ssm", "dmm", "dmm_iaf", "realnvp")
    }
    paths = {"mnist", "polyphonic", "arrays"}  # checked only once a path is given
    assert table["vae"] == {"digits"} | paths
    assert table["realnvp"] == {"moons"} | paths  # a density on 17 grey levels: unbounded
    assert table["ssm"] == {"linear", "pendulum"} | paths  # a Gaussian on 0/1 notes: too
    assert "density over real values" in accepted_data("ssm")["jsb"]
    assert "density over real values" in accepted_data("realnvp")["digits"]
    # grey levels in [0, 1] count as pixels for a density too, binarised or not
    assert discrete_levels(load_dataset("digits")[0]) == 17
    assert discrete_levels(load_dataset("jsb")[0]) == 2
    assert discrete_levels(load_dataset("moons")[0]) is None
    assert table["dmm"] == table["dmm_iaf"] == {"jsb"} | paths
    assert "sequences" in accepted_data("vae")["jsb"]
    assert "single vectors" in accepted_data("dmm")["digits"]
    assert "takes no actions" in accepted_data("dmm")["pendulum"]
    with pytest.raises(ValueError, match="unknown model"):
        accepted_data("gpt")


def test_read_upload_gives_a_clean_message(digits, tmp_path):
    import tempfile

    before = set(Path(tempfile.gettempdir()).glob("vaelab-upload-*"))
    for content in (b"not a checkpoint", b"PK\x03\x04" + b"\0" * 64):
        with pytest.raises(ValueError, match="bad.pt is not a vaelab checkpoint") as info:
            read_upload("bad.pt", content)
        text = str(info.value)
        assert "weights_only" not in text and tempfile.gettempdir() not in text
    train_data, val, _ = digits
    model = make_model("vae", train_data, {"hidden_dims": [8], "z_dim": 2})
    fit(
        model,
        train_data,
        val,
        TrainConfig(max_steps=2, progress=False, out_dir=str(tmp_path / "run")),
        data_spec={"name": "digits"},
    )
    path = tmp_path / "run" / "checkpoint.pt"
    good = read_upload("good.pt", path.read_bytes())
    assert good["text"] == "vae at step 2" and good["remaining"] == "it reached its max steps (2)"
    assert good["params"] == sum(p.numel() for p in model.parameters())
    assert checkpoint_summary(path) == good
    assert set(Path(tempfile.gettempdir()).glob("vaelab-upload-*")) == before  # removed


def test_view_is_fixed_validation_examples(digits):
    train_data, val, _ = digits
    a, b = make_view(train_data, val), make_view(train_data, val)
    torch.testing.assert_close(a.batch.x, b.batch.x)  # the same binarisation every time
    assert len(a.batch) == 200 and "labels" not in a.info
    torch.testing.assert_close(a.labels, val.info["labels"][:200])
    seq = make_view(*load_dataset("jsb")[:2])
    assert len(seq.batch) == 8 and seq.batch.mask is not None


def test_plan_run_builds_the_command_and_applies_the_caps(digits):
    hosted = Hosting(hosted=True, max_params=100_000, max_steps=50)
    args, settings = plan_run(
        "vae", "digits", None, {"z_dim": 4, "hidden_dims": [16]}, TRAIN, hosted
    )
    assert args[:4] == ["--model", "vae", "--data", "digits"]
    assert "z_dim=4" in args and "hidden_dims=[16]" in args
    assert args[args.index("--max-steps") + 1] == "50"  # no limit asked: the cap
    assert "progress=False" in args
    assert settings["unit"] == "nats per example" and settings["train_config"]["max_steps"] == 50
    capped = plan_run(
        "vae", "digits", None, {"hidden_dims": [16]}, {**TRAIN, "max_steps": 10**6}, hosted
    )[0]
    assert capped[capped.index("--max-steps") + 1] == "50"
    free = plan_run("vae", "digits", None, {}, TRAIN, Hosting())[0]
    assert "--max-steps" not in free  # on a laptop: no cap
    # a nested config's field (DMMConfig.compat) goes to the command by its dotted key
    dmm = plan_run("dmm", "jsb", None, {"compat.rnn_type": "lstm"}, TRAIN, Hosting())[0]
    assert dmm[dmm.index("compat.rnn_type='lstm'") - 1] == "--set"
    params = count_parameters("vae", digits[0], {"z_dim": 4, "hidden_dims": [16]})
    assert params == sum(
        p.numel()
        for p in make_model("vae", digits[0], {"z_dim": 4, "hidden_dims": [16]}).parameters()
    )


@pytest.mark.parametrize(
    "model, data, overrides, train, match",
    [
        ("vae", "digits", {"z_dim": 100000}, {}, "parameters, over this server's cap"),
        ("vae", "digits", {"z_dim": "x"}, {}, "z_dim='x' has the wrong type"),
        ("vae", "digits", {"nope": 1}, {}, "has no field"),
        ("dmm", "jsb", {"rnn_type": "lstm"}, {}, "rnn_type is now compat.rnn_type"),
        ("vae", "digits", {"z_dim": 0}, {}, "z_dim"),
        ("ssm", "jsb", {}, {}, "density over real values"),
        ("realnvp", "digits", {}, {}, "density over real values"),
        ("vae", "jsb", {}, {}, "sequences"),
        ("vae", "digits", {}, {"lr": -1.0}, "training settings"),
        ("vae", "arrays", {}, {}, "needs the path"),
        ("gpt", "digits", {}, {}, "unknown model"),
    ],
)
def test_plan_run_refuses_bad_requests_with_the_fix(model, data, overrides, train, match):
    hosted = Hosting(hosted=True, max_params=2_000_000, max_steps=100)
    with pytest.raises(ValueError, match=match):
        plan_run(model, data, None, overrides, {**TRAIN, **train}, hosted)


def test_plan_run_refuses_server_paths_when_hosted(tmp_path):
    hosted = Hosting(hosted=True, root=tmp_path)
    with pytest.raises(ValueError, match="only built-in data sets"):
        plan_run("vae", "arrays", "/etc/passwd", {}, TRAIN, hosted)
    with pytest.raises(ValueError, match="outside the server's data folder"):
        plan_run(
            "vae",
            "arrays",
            "/etc/passwd",
            {},
            TRAIN,
            Hosting(hosted=True, root=tmp_path, data_root=tmp_path),
        )


def test_check_upload_applies_the_size_data_and_parameter_caps(digits, tmp_path):
    train_data, val, _ = digits
    model = make_model("vae", train_data, {"hidden_dims": [8], "z_dim": 2})
    params = sum(p.numel() for p in model.parameters())
    for name, spec in (
        ("ok", {"name": "digits"}),
        ("evil", {"name": "arrays", "path": "/etc/passwd"}),
    ):
        fit(
            model,
            train_data,
            val,
            TrainConfig(max_steps=1, epochs=3, progress=False, out_dir=str(tmp_path / name)),
            data_spec=spec,
        )
    ok = (tmp_path / "ok" / "checkpoint.pt").read_bytes()
    evil = (tmp_path / "evil" / "checkpoint.pt").read_bytes()
    hosted = Hosting(hosted=True, root=tmp_path, max_params=params)
    assert check_upload("ok.pt", ok, hosted)["params"] == params
    with pytest.raises(ValueError, match="only built-in data sets"):
        check_upload("evil.pt", evil, hosted)
    check_upload("evil.pt", evil, Hosting(root=tmp_path))  # a laptop's own paths are its own
    with pytest.raises(ValueError, match=f"over this server's cap of {params - 1:,}"):
        check_upload("ok.pt", ok, Hosting(hosted=True, root=tmp_path, max_params=params - 1))
    with pytest.raises(
        ValueError,
        match=rf"ok.pt is {len(ok) / 1024:.1f} KB, over this "
        rf"server's 1\.0 KB cap",
    ):
        check_upload("ok.pt", ok, Hosting(hosted=True, root=tmp_path, max_upload_bytes=1024))
    with pytest.raises(ValueError, match="not a vaelab checkpoint"):
        check_upload("junk.pt", b"junk", hosted)
