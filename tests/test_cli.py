from __future__ import annotations

import json
import re

import pytest

from vaelab.__main__ import main
from vaelab.train import load_checkpoint


def _last_json(text: str) -> dict:
    return json.loads(text.strip().splitlines()[-1])


def test_train_then_evaluate(tmp_path, capsys):
    out = tmp_path / "run"
    code = main(
        [
            "train",
            "--model",
            "vae",
            "--data",
            "digits",
            "--out",
            f"{out}/",  # a trailing slash, as shell completion leaves it: printed once, not //
            "--max-steps",
            "5",
            "--batch-size",
            "64",
            "--set",
            "hidden_dims=[16]",
            "--set",
            "z_dim=3",
            "--train-set",
            "progress=False",
        ]
    )
    assert code == 0
    printed = _last_json(capsys.readouterr().out)
    assert printed["steps"] == 5 and printed["checkpoint"] == f"{out}/checkpoint.pt"
    assert printed["best"] is None  # stopped inside the first epoch: no validation yet
    ckpt = load_checkpoint(out / "checkpoint.pt")
    assert ckpt["config"]["z_dim"] == 3 and ckpt["config"]["hidden_dims"] == [16]
    assert ckpt["data"] == {"name": "digits"} and ckpt["train_config"]["batch_size"] == 64

    code = main(
        [
            "evaluate",
            "--checkpoint",
            str(out / "checkpoint.pt"),
            "--samples",
            "20",
            "--elbo-samples",
            "1",
            "--batch-size",
            "100",
        ]
    )
    assert code == 0
    result = _last_json(capsys.readouterr().out)
    assert set(result) == {
        "model",
        "data",
        "step",
        "epoch",
        "unit",
        "val_neg_elbo_bound",
        "val_kl",
        "val_nll_importance_K20",
        "test_neg_elbo_bound",
        "test_kl",
        "test_nll_importance_K20",
    }
    assert result["model"] == "vae" and result["data"] == "digits" and result["step"] == 5
    assert result["epoch"] == 0  # five steps into the first epoch
    assert result["unit"] == "nats per example"
    for split in ("val", "test"):
        # the importance-sampled NLL estimate sits below the negative ELBO bound
        assert 0 < result[f"{split}_nll_importance_K20"] < result[f"{split}_neg_elbo_bound"]

    # one split only: its keys alone
    code = main(
        [
            "evaluate",
            "--checkpoint",
            str(out / "checkpoint.pt"),
            "--samples",
            "20",
            "--elbo-samples",
            "1",
            "--batch-size",
            "100",
            "--split",
            "test",
        ]
    )
    assert code == 0
    only_test = _last_json(capsys.readouterr().out)
    assert not any(key.startswith("val_") for key in only_test)
    assert {"test_neg_elbo_bound", "test_kl", "test_nll_importance_K20"} <= set(only_test)

    # --elbo-samples 0 skips the bound, as --samples 0 skips the NLL estimate
    code = main(
        [
            "evaluate",
            "--checkpoint",
            str(out / "checkpoint.pt"),
            "--samples",
            "20",
            "--elbo-samples",
            "0",
            "--batch-size",
            "100",
            "--split",
            "test",
        ]
    )
    assert code == 0
    no_bound = _last_json(capsys.readouterr().out)
    assert set(no_bound) == {"model", "data", "step", "epoch", "unit", "test_nll_importance_K20"}
    # a negative count is refused, naming the setting
    for flag in ("--samples", "--elbo-samples"):
        assert main(["evaluate", "--checkpoint", str(out / "checkpoint.pt"), flag, "-1"]) == 2
        assert "--samples and --elbo-samples must be >= 0" in capsys.readouterr().err


def test_flow_prior_vae_from_the_command_line_with_lowercase_booleans(tmp_path, capsys):
    out = tmp_path / "run"
    code = main(
        [
            "train",
            "--model",
            "vae",
            "--data",
            "digits",
            "--out",
            str(out),
            "--max-steps",
            "3",
            "--set",
            "prior_flows=2",
            "--set",
            "analytic_kl=false",
            "--train-set",
            "progress=false",
        ]
    )
    assert code == 0
    config = load_checkpoint(out / "checkpoint.pt")["config"]
    assert config["prior_flows"] == 2 and config["analytic_kl"] is False


def test_unknown_model_is_a_usage_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--model", "gan", "--data", "digits", "--out", str(tmp_path)])
    assert exit_info.value.code == 2
    assert "invalid choice: 'gan'" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv, message",
    [
        (["train", "--model", "vae", "--data", "mnist"], "needs a path"),
        (
            ["train", "--model", "vae", "--data", "digits", "--set", "z_dim=0"],
            "z_dim must be >= 1",
        ),
        (
            ["train", "--model", "vae", "--data", "digits", "--set", "depth=3"],
            r"VAEConfig has no field\(s\) \['depth'\]",
        ),
        (
            ["train", "--model", "vae", "--data", "digits", "--epochs", "0"],
            "TrainConfig.epochs=0 is out of range",
        ),
        (
            ["train", "--model", "vae", "--data", "mnist", "--data-path", "/nonexistent/mnist"],
            "/nonexistent/mnist does not exist",
        ),
    ],
)
def test_bad_train_input_exits_with_code_2(tmp_path, capsys, argv, message):
    assert main([*argv, "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ")
    assert re.search(message, err), err
    assert not (tmp_path / "run" / "checkpoint.pt").exists()


def test_set_reaches_the_dmms_comparison_settings_by_their_nested_key(tmp_path, capsys):
    """The comparison-only DMM settings live in DMMConfig.compat (vaelab.dmm_variants): --set
    takes them dotted, on top of a preset's; their old flat keys are refused naming the new
    one, and a resume compares them key by key."""
    small = ["z_dim=2", "emission_dim=4", "transition_dim=4", "rnn_dim=4"]
    argv = ["train", "--model", "dmm", "--data", "jsb", "--preset", "krishnan"]
    argv += [word for value in small for word in ("--set", value)]
    argv += ["--max-steps", "1", "--train-set", "progress=False"]
    refused = [
        (
            ["--set", "rnn_type=lstm"],
            "rnn_type is now compat.rnn_type: use --set compat.rnn_type=lstm",
        ),
        (
            ["--set", "softplus_variance=False"],
            (
                "softplus_variance is now compat.softplus_variance: use --set "
                "compat.softplus_variance=False"
            ),
        ),
        (
            ["--set", "compat.rnn_output_dropout=abc"],
            (
                "--set compat.rnn_output_dropout='abc' has the wrong type: "
                "DMMConfig.compat.rnn_output_dropout takes a number"
            ),
        ),
        (["--set", "compat.rnn_type=gru"], "compat.rnn_type must be 'rnn' or 'lstm', got 'gru'"),
    ]
    for i, (extra, message) in enumerate(refused):
        assert main([*argv, *extra, "--out", str(tmp_path / f"refused{i}")]) == 2
        assert message in capsys.readouterr().err
    out = tmp_path / "run"
    lstm = ["--set", "compat.rnn_type=lstm", "--set", "compat.input_embedding=true"]
    assert main([*argv, *lstm, "--out", str(out)]) == 0, capsys.readouterr().err
    ckpt = load_checkpoint(out / "checkpoint.pt")
    assert ckpt["config"]["compat"] == {  # the preset's parameterisation and the --set guide
        "rnn_type": "lstm",
        "input_embedding": True,
        "rnn_output_dropout": 0.0,
        "softplus_variance": True,
        "standard_initial_prior": True,
    }
    assert {"c_0", "embed.0.weight"} <= set(ckpt["state_dict"])
    resume = ["train", "--resume", str(out / "checkpoint.pt"), "--max-steps", "2"]
    resume += ["--train-set", "progress=False"]
    assert main([*resume, "--set", "compat.rnn_type=rnn"]) == 2
    err = capsys.readouterr().err
    assert "model config compat.rnn_type is 'lstm' in the checkpoint but 'rnn' here" in err
    assert "drop --set compat.rnn_type" in err
    assert main([*resume, "--set", "compat.rnn_type=lstm"]) == 0, capsys.readouterr().err
    assert load_checkpoint(out / "checkpoint.pt")["step"] == 2


def test_evaluate_missing_checkpoint_exits_with_code_2(tmp_path, capsys):
    assert main(["evaluate", "--checkpoint", str(tmp_path / "none.pt")]) == 2
    assert "not found" in capsys.readouterr().err


def test_train_keeps_the_best_validation_checkpoint(tmp_path, capsys):
    out = tmp_path / "run"
    code = main(
        [
            "train",
            "--model",
            "vae",
            "--data",
            "digits",
            "--out",
            str(out),
            "--epochs",
            "2",
            "--batch-size",
            "256",
            "--set",
            "hidden_dims=[16]",
            "--train-set",
            "progress=False",
        ]
    )
    assert code == 0
    printed = _last_json(capsys.readouterr().out)
    assert printed["best"] == str(out / "best.pt")
    best = load_checkpoint(out / "best.pt")
    vals = [r["nelbo"] for r in best["history"] if r["kind"] == "val"]
    assert vals[-1] == min(vals)  # saved at the epoch of its lowest validation -ELBO
    assert main(["evaluate", "--checkpoint", str(out / "best.pt"), "--samples", "0"]) == 0
    assert _last_json(capsys.readouterr().out)["step"] == best["step"]


def test_preset_sets_the_model_and_training_and_is_recorded(tmp_path, capsys):
    """--preset quick gives its widths and settings; --set and flags go on top of it."""
    from vaelab.presets import apply_preset

    out = tmp_path / "run"
    code = main(
        [
            "train",
            "--model",
            "dmm",
            "--data",
            "jsb",
            "--preset",
            "quick",
            "--out",
            str(out),
            "--max-steps",
            "2",
            "--set",
            "z_dim=4",
            "--lr",
            "2e-3",
            "--train-set",
            "progress=False",
        ]
    )
    assert code == 0, capsys.readouterr().err
    model_sets, train_sets = apply_preset("quick")
    ckpt = load_checkpoint(out / "checkpoint.pt")
    assert ckpt["config"]["z_dim"] == 4  # --set over the preset
    assert all(ckpt["config"][k] == v for k, v in model_sets.items() if k != "z_dim")
    tc = ckpt["train_config"]
    assert tc["preset"] == "quick" and tc["lr"] == 2e-3  # the flag over the preset
    assert tc["batch_size"] == train_sets["batch_size"]
    assert tc["anneal_epochs"] == train_sets["anneal_epochs"]
    # a resume keeps the preset; another preset is refused naming both
    code = main(
        [
            "train",
            "--model",
            "dmm",
            "--data",
            "jsb",
            "--preset",
            "pyro",
            "--out",
            str(out),
            "--resume",
            str(out / "checkpoint.pt"),
            "--max-steps",
            "3",
        ]
    )
    err = capsys.readouterr().err
    assert code == 2 and "--preset pyro disagrees" in err and "'quick'" in err
    assert "Traceback" not in err


@pytest.mark.parametrize(
    "args, match",
    [
        (["--model", "dmm", "--preset", "fast"], "unknown preset 'fast'; choose one of"),
        (["--model", "vae", "--data", "digits", "--preset", "quick"], "use it with --model dmm"),
    ],
)
def test_bad_preset(tmp_path, capsys, args, match):
    base = ["train", "--data", "jsb", "--out", str(tmp_path / "r"), "--max-steps", "1"]
    assert main(base + args) == 2
    err = capsys.readouterr().err
    assert match in err and "Traceback" not in err


@pytest.mark.integration  # a process of its own: make test, not test-fast
def test_sweep_command_prints_every_run_and_a_summary(tmp_path, capsys):
    code = main(
        [
            "sweep",
            "--seeds",
            "0",
            "1",
            "--jobs",
            "2",
            "--metric",
            "train_nelbo",
            "--out",
            str(tmp_path),
            "--",
            "--model",
            "vae",
            "--data",
            "digits",
            "--max-steps",
            "2",
            "--set",
            "hidden_dims=[8]",
            "--train-set",
            "progress=False",
        ]
    )
    lines = [json.loads(line) for line in capsys.readouterr().out.strip().splitlines()]
    assert code == 0
    assert [line["seed"] for line in lines[:2]] == [0, 1]
    assert all(line["returncode"] == 0 and line["steps"] == 2 for line in lines[:2])
    summary = lines[-1]["summary"]
    assert summary["runs"] == 2 and summary["metric"] == "train_nelbo"
    assert summary["min"] <= summary["mean"] <= summary["max"]


def test_sweep_without_training_arguments(tmp_path, capsys):
    assert main(["sweep", "--seeds", "0", "--out", str(tmp_path)]) == 2
    assert "needs the training arguments after --" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv",
    [
        ["--model", "realnvp"],
        ["--model", "vae", "--set", "likelihood=gaussian"],
    ],
)
def test_train_refuses_a_density_on_data_of_a_few_levels(tmp_path, capsys, argv):
    """The CLI asks Model.support_mismatch, the dashboard's rule: a density over real values on
    digits kept at its 17 grey levels in [0, 1] is refused before training, with the reason."""
    out = tmp_path / "run"
    data = ["--data", "digits", "--data-option", "binarize=false", "--out", str(out)]
    assert main(["train", *argv, *data]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ")
    assert "density over real numbers" in err and "17 levels" in err, err
    assert "pick a model with a Bernoulli likelihood" in err
    assert not (out / "checkpoint.pt").exists()


def test_evaluate_names_the_data_file_it_read(tmp_path, capsys):
    """The result line of an evaluation on a file says which file, not only the loader's
    name: two evaluations of one checkpoint on two files must be told apart."""
    import numpy as np

    path = tmp_path / "walks.npz"
    x = np.random.default_rng(0).standard_normal((40, 6, 2)).cumsum(axis=1)
    np.savez(path, x=x.astype(np.float32))
    data = ["--data", "arrays", "--data-path", str(path)]
    out = tmp_path / "run"
    train = ["train", "--model", "ssm", *data, "--out", str(out), "--max-steps", "2"]
    sizes = ["--set", "hidden_dim=8", "--set", "rnn_dim=8", "--set", "z_dim=2"]
    assert main([*train, *sizes, "--batch-size", "8", "--train-set", "progress=False"]) == 0
    capsys.readouterr()
    evaluate = ["evaluate", "--checkpoint", str(out / "checkpoint.pt"), "--samples", "0"]
    assert main([*evaluate, *data]) == 0
    printed = _last_json(capsys.readouterr().out)
    assert printed["data"] == "arrays" and printed["data_path"] == str(path)
