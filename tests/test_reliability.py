"""Reliability of training, checkpoints and the CLI (issue 23): a seed reproduces a run, a
resume applies what it may change and refuses the rest, every user's mistake gets a message
(never a traceback), and faults (disk full, Ctrl-C, SIGKILL, flipped bits) leave a checkpoint
that says what it holds."""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from helpers import config, timeless

import vaelab.train
import vaelab.writes
from vaelab.__main__ import main
from vaelab.data import Data, load_digits
from vaelab.train import (
    CHECKPOINT_FORMAT,
    CheckpointWriteError,
    TrainConfig,
    TrainingDiverged,
    TrainingInterrupted,
    checksum,
    fit,
    load_checkpoint,
    load_model,
    save_checkpoint,
    seed_everything,
    tensor_checksum,
)
from vaelab.vae import VAE, VAEConfig

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def digits():
    train, val, _ = load_digits()
    return train.subset(slice(0, 160)), val.subset(slice(0, 48))


def small_vae(z_dim: int = 2) -> VAE:
    return VAE(VAEConfig(x_dim=64, z_dim=z_dim, hidden_dims=[16]))


def assert_equal_state(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k, value in a.items():
        assert torch.equal(value, b[k]), k


def run_cli(argv: list[str], capsys) -> tuple[int, str, str]:
    """``main(argv)`` as the shell runs it: (exit code, stdout, stderr)."""
    try:
        code = main(argv)
    except SystemExit as e:  # argparse's own usage errors
        code = e.code
    out, err = capsys.readouterr()
    assert "Traceback" not in err, err
    return code, out, err


VAE_ARGS = [
    "train",
    "--model",
    "vae",
    "--data",
    "digits",
    "--batch-size",
    "64",
    "--set",
    "hidden_dims=[16]",
    "--set",
    "z_dim=3",
    "--train-set",
    "progress=False",
]


# ----------------------------------------------------------------------------- seeds

SEED_RUNS = {  # model: (data, model overrides), all tiny
    "vae": ("digits", ["hidden_dims=[8]"]),
    "ssm": ("linear", ["hidden_dim=8", "rnn_dim=8", "z_dim=2"]),
    "dmm": ("jsb", ["z_dim=2", "emission_dim=4", "transition_dim=4", "rnn_dim=4"]),
    "dmm_iaf": (
        "jsb",
        ["z_dim=2", "emission_dim=4", "transition_dim=4", "rnn_dim=4", "iaf_dim=4"],
    ),
    "realnvp": ("moons", ["hidden_dim=8", "num_layers=2"]),
}

# One fresh interpreter trains every model through the CLI's main(), once per seed in argv[4];
# before each run the global random states are scrambled by the process's own number, as a
# notebook or an earlier run would leave them. Only --seed may decide the weights.
SEED_DRIVER = textwrap.dedent("""
    import json, random, sys
    import numpy as np, torch
    torch.set_num_threads(1)
    from vaelab.__main__ import main
    scramble, out, runs = int(sys.argv[1]), sys.argv[2], json.loads(sys.argv[3])
    for seed in sys.argv[4].split(","):
        for name, (data, sets) in runs.items():
            torch.manual_seed(scramble); random.seed(scramble); np.random.seed(scramble)
            torch.rand(scramble % 7 + 1)
            argv = ["train", "--model", name, "--data", data, "--out",
                    f"{out}/seed{seed}/{name}", "--max-steps", "3", "--batch-size", "8",
                    "--seed", seed, "--train-set", "progress=False"]
            for s in sets:
                argv += ["--set", s]
            assert main(argv) == 0, name
""")


@pytest.mark.integration  # a process of its own: make test, not test-fast
def test_the_cli_seed_reproduces_every_models_weights_in_fresh_processes(tmp_path):
    procs = []
    for scramble, seeds in ((11, "0,1"), (12345, "0")):  # two fresh processes, side by side
        env = {**os.environ, "PYTHONHASHSEED": str(scramble), "OMP_NUM_THREADS": "1"}
        procs.append(
            subprocess.Popen(
                [
                    sys.executable,
                    "-c",
                    SEED_DRIVER,
                    str(scramble),
                    str(tmp_path / str(scramble)),
                    json.dumps(SEED_RUNS),
                    seeds,
                ],
                cwd=ROOT,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    for proc in procs:
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err[-3000:]
    for name in SEED_RUNS:
        ckpt_a = load_checkpoint(tmp_path / "11" / "seed0" / name / "checkpoint.pt")
        ckpt_b = load_checkpoint(tmp_path / "12345" / "seed0" / name / "checkpoint.pt")
        assert ckpt_a["step"] == 3
        assert_equal_state(ckpt_a["state_dict"], ckpt_b["state_dict"])
        # --seed decides: another seed, other weights
        ckpt_c = load_checkpoint(tmp_path / "11" / "seed1" / name / "checkpoint.pt")
        assert any(
            not torch.equal(ckpt_a["state_dict"][k], ckpt_c["state_dict"][k])
            for k in ckpt_a["state_dict"]
        ), name


def test_seed_everything_fixes_torch_random_and_numpy():
    import random

    import numpy as np

    draws = []
    for _ in range(2):
        seed_everything(5)
        draws.append((torch.rand(3).tolist(), random.random(), float(np.random.rand())))
    assert draws[0] == draws[1]
    seed_everything(6)
    assert torch.rand(3).tolist() != draws[0][0]
    for bad in (-1, 2**32, 1.5, "0", True):
        with pytest.raises(ValueError, match="seed must be an integer in"):
            seed_everything(bad)


# ----------------------------------------------------------------------------- resume


def test_resume_applies_a_new_learning_rate_and_records_it(digits, tmp_path):
    train, val = digits
    fit(small_vae(), train, val, config(tmp_path, epochs=1), data_spec={"name": "digits"})
    history = fit(
        small_vae(),
        train,
        val,
        config(tmp_path, epochs=2, lr=1e-4),
        resume=tmp_path / "checkpoint.pt",
    )
    lrs = [r["lr"] for r in history if r["kind"] == "train"]
    # the first epoch at 3e-3 decaying by 0.99 a step; then 1e-4, decaying on from there
    assert lrs[:5] == pytest.approx([3e-3 * 0.99**s for s in range(1, 6)])
    assert lrs[5:] == pytest.approx([1e-4 * 0.99**s for s in range(1, 6)])
    ckpt = load_checkpoint(tmp_path / "checkpoint.pt")
    assert ckpt["train_config"]["lr"] == 1e-4
    assert ckpt["optimizer"]["param_groups"][0]["lr"] == pytest.approx(1e-4 * 0.99**5)
    assert ckpt["resumes"] == [
        {
            "step": 5,
            "from": str(tmp_path / "checkpoint.pt"),
            "changed": {"lr": [3e-3, 1e-4], "epochs": [1, 2]},
        }
    ]
    assert ckpt["data"] == {"name": "digits"}  # kept from the checkpoint


def test_resume_at_an_epochs_end_may_change_the_batch_size(digits, tmp_path):
    train, val = digits
    fit(small_vae(), train, val, config(tmp_path, epochs=1))
    history = fit(
        small_vae(),
        train,
        val,
        config(tmp_path, epochs=2, batch_size=80),
        resume=tmp_path / "checkpoint.pt",
    )
    assert [r["step"] for r in history if r["kind"] == "train"] == [1, 2, 3, 4, 5, 6, 7]
    # mid-epoch the order of the rest depends on the batch size: refused
    fit(small_vae(), train, val, config(tmp_path / "mid", max_steps=2))
    with pytest.raises(
        ValueError,
        match=r"with batch_size=80: it stopped inside epoch 1 "
        r"\(after its batch 2, of 32 examples each\)",
    ):
        fit(
            small_vae(),
            train,
            val,
            config(tmp_path / "mid", batch_size=80),
            resume=tmp_path / "mid" / "checkpoint.pt",
        )


@pytest.mark.parametrize(
    "kw, message",
    [
        ({"beta": 0.5}, r"with beta=0\.5: the checkpoint trained with beta=1\.0"),
        ({"seed": 3}, r"with seed=3: the checkpoint trained with seed=0"),
        (
            {"anneal_epochs": 0.0},
            (
                r"with anneal_epochs=0\.0: the checkpoint trained with "
                r"anneal_epochs=1\.0"
            ),
        ),
        (
            {"epochs": 1},
            (
                r"nothing to train: .* has completed 1 epochs \(step 5\) and epochs=1; "
                r"pass epochs above 1"
            ),
        ),
        ({"max_steps": 5}, r"nothing to train: .* is at step 5 and max_steps=5"),
    ],
)
def test_resume_refuses_what_it_cannot_change(digits, tmp_path, kw, message):
    train, val = digits
    fit(small_vae(), train, val, config(tmp_path, epochs=1))
    before = (tmp_path / "checkpoint.pt").read_bytes()
    with pytest.raises(ValueError, match=message):
        fit(
            small_vae(),
            train,
            val,
            config(tmp_path, **{"epochs": 2, **kw}),
            resume=tmp_path / "checkpoint.pt",
        )
    assert (tmp_path / "checkpoint.pt").read_bytes() == before


def test_resume_refuses_another_model_config_or_data(digits, tmp_path):
    train, val = digits
    fit(small_vae(), train, val, config(tmp_path, epochs=1), data_spec={"name": "digits"})
    path = tmp_path / "checkpoint.pt"
    with pytest.raises(
        ValueError,
        match=r"model config z_dim is 2 in the checkpoint but 3 "
        r"here",
    ):
        fit(small_vae(z_dim=3), train, val, config(tmp_path), resume=path)
    with pytest.raises(ValueError, match=r"its data name is 'digits' but 'mnist' here"):
        fit(
            small_vae(),
            train,
            val,
            config(tmp_path),
            resume=path,
            data_spec={"name": "mnist", "path": "x"},
        )


def test_cli_resume_uses_the_checkpoints_model_and_applies_lr(tmp_path, capsys):
    out = tmp_path / "run"
    assert run_cli([*VAE_ARGS, "--out", str(out), "--max-steps", "3"], capsys)[0] == 0
    path = out / "checkpoint.pt"
    # no --set: the model comes from the checkpoint (z_dim=3, hidden_dims=[16])
    code, printed, _ = run_cli(
        [
            "train",
            "--model",
            "vae",
            "--data",
            "digits",
            "--out",
            str(out),
            "--resume",
            str(path),
            "--max-steps",
            "5",
            "--lr",
            "1e-4",
        ],
        capsys,
    )
    assert code == 0 and json.loads(printed)["steps"] == 5
    ckpt = load_checkpoint(path)
    assert ckpt["config"]["z_dim"] == 3 and ckpt["config"]["hidden_dims"] == [16]
    # the run's own settings carried on (batch size 64, no progress bar); the lr changed
    assert ckpt["train_config"]["batch_size"] == 64 and ckpt["train_config"]["lr"] == 1e-4
    assert ckpt["optimizer"]["param_groups"][0]["lr"] == pytest.approx(1e-4)  # no decay
    assert [r["lr"] for r in ckpt["history"]] == pytest.approx([1e-3] * 3 + [1e-4] * 2)


def test_cli_resume_alone_takes_model_data_and_folder_from_the_checkpoint(tmp_path, capsys):
    out = tmp_path / "run"
    assert (
        run_cli(
            [*VAE_ARGS, "--out", str(out), "--max-steps", "3", "--data-option", "binarize=True"],
            capsys,
        )[0]
        == 0
    )
    path = out / "checkpoint.pt"
    code, printed, err = run_cli(["train", "--resume", str(path), "--max-steps", "5"], capsys)
    assert code == 0, err
    assert json.loads(printed) == {
        **json.loads(printed),
        "steps": 5,
        "checkpoint": f"{out}/checkpoint.pt",
    }
    ckpt = load_checkpoint(path)
    assert ckpt["step"] == 5 and ckpt["model"] == "vae"
    assert ckpt["data"] == {"name": "digits", "binarize": True}  # its loader option kept


@pytest.mark.parametrize(
    "argv, missing",
    [
        (["train", "--model", "vae"], "--data, --out"),
        (["train", "--data", "digits", "--out", "x"], "--model"),
    ],
)
def test_cli_new_run_names_what_it_lacks(tmp_path, capsys, argv, missing):
    code, _, err = run_cli(argv, capsys)
    assert code == 2 and f"error: train needs {missing} (a new run names" in err, err
    assert "--resume CHECKPOINT takes them from the checkpoint" in err


@pytest.mark.parametrize(
    "extra, message",
    [
        (
            ["--set", "z_dim=8"],
            (
                r"cannot resume .*: model config z_dim is 3 in the checkpoint "
                r"but 8 here; .*drop --set z_dim"
            ),
        ),
        (["--max-steps", "2"], r"nothing to train: .* is at step 3 and max_steps=2"),
        (
            ["--max-steps", "9", "--train-set", "beta=0.5"],
            r"cannot resume .* with beta=0\.5: the checkpoint trained with beta=1\.0",
        ),
    ],
)
def test_cli_resume_refuses_with_the_field_and_both_values(tmp_path, capsys, extra, message):
    out = tmp_path / "run"
    assert run_cli([*VAE_ARGS, "--out", str(out), "--max-steps", "3"], capsys)[0] == 0
    code, _, err = run_cli(
        [
            "train",
            "--model",
            "vae",
            "--data",
            "digits",
            "--out",
            str(out),
            "--resume",
            str(out / "checkpoint.pt"),
            *extra,
        ],
        capsys,
    )
    assert code == 2 and re.search(message, err), err


def test_cli_resume_refuses_another_model_or_data(tmp_path, capsys):
    out = tmp_path / "run"
    assert run_cli([*VAE_ARGS, "--out", str(out), "--max-steps", "3"], capsys)[0] == 0
    resume = ["--out", str(out), "--resume", str(out / "checkpoint.pt")]
    code, _, err = run_cli(["train", "--model", "ssm", "--data", "digits", *resume], capsys)
    assert code == 2 and "holds a 'vae' model, not 'ssm'; pass --model vae" in err
    code, _, err = run_cli(["train", "--model", "vae", "--data", "moons", *resume], capsys)
    assert code == 2 and "its data name is 'digits' but 'moons' here (--data)" in err
    # --data-path and --data-option on a resume are checked, not dropped
    code, _, err = run_cli(["train", "--data-option", "n_val=7", *resume], capsys)
    assert code == 2 and "(--data-option n_val); a resumed run keeps its data" in err


# ----------------------------------------------------------------------------- no traceback

DIGITS = [
    "train",
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


@pytest.mark.parametrize(
    "extra, message",
    [
        (
            ["--set", "z_dim=abc"],
            (
                r"--set z_dim='abc' has the wrong type: VAEConfig\.z_dim takes "
                r"an integer"
            ),
        ),
        (["--set", "hidden_dims=16"], r"VAEConfig\.hidden_dims takes a list of integers"),
        (["--set", "analytic_kl=1"], r"VAEConfig\.analytic_kl takes true or false"),
        (["--set", "z_dim"], r"--set takes key=value, got 'z_dim'"),
        (
            ["--train-set", "epochs=1.5"],
            (
                r"--train-set epochs=1\.5 has the wrong type: "
                r"TrainConfig\.epochs takes an integer"
            ),
        ),
        (["--train-set", "lr=fast"], r"--train-set lr='fast' has the wrong type"),
        (["--train-set", "betas=(0.9,)"], r"TrainConfig\.betas takes a pair of numbers"),
        (["--train-set", "warmup=3"], r"TrainConfig has no field\(s\) \['warmup'\]"),
        (
            ["--train-set", "lr_decay=2"],
            (
                r"TrainConfig\.lr_decay=2\.0 is out of range: it must be "
                r"in \(0, 1\]"
            ),
        ),
        (["--lr", "nan"], r"TrainConfig\.lr=nan is out of range: it must be > 0 and finite"),
        (  # the property test found it: the warm-up in steps overflowed int
            ["--train-set", "anneal_epochs=1.6e307"],
            r"TrainConfig\.anneal_epochs=1\.6e\+307 is out of range: it must be in \[0, 1e12\]",
        ),
        (["--lr", "inf"], r"TrainConfig\.lr=inf is out of range"),
        (["--seed", "-1"], r"TrainConfig\.seed=-1 is out of range"),
        (["--batch-size", "0"], r"TrainConfig\.batch_size=0 is out of range: it must be in \["),
        (
            ["--batch-size", str(2**63)],  # re-test 5, 7.1: torch's "Overflow when unpacking"
            r"TrainConfig\.batch_size=9223372036854775808 is out of range: .* \[1, 2\*\*31\)",
        ),
        (["--max-steps", "-4"], r"TrainConfig\.max_steps=-4 is out of range"),
        (["--device", "tpu"], r"unknown device 'tpu'"),
        (["--data-option", "binarize"], r"--data-option takes key=value"),
        (
            ["--data-option", "binarize=False"],
            (
                r"vae cannot train on this data: the Bernoulli "
                r"decoder needs binary x \(0 or 1\), got values "
                r"such as 0\.\d+; .* or set likelihood=gaussian$"
            ),
        ),
        (["--resume", "{tmp}/nope.pt"], r"checkpoint .*nope\.pt not found"),
        (["--resume", "{tmp}"], r"is a folder; pass the checkpoint\.pt file inside it"),
    ],
)
def test_a_wrong_train_argument_is_named_without_a_traceback(tmp_path, capsys, extra, message):
    extra = [e.replace("{tmp}", str(tmp_path)) for e in extra]
    base = DIGITS
    if any(e.startswith("hidden_dims=") for e in extra):  # a key may be given once only
        base = [a for a in DIGITS if a != "hidden_dims=[8]"]
        base.remove("--set")
    code, _, err = run_cli([*base, "--out", str(tmp_path / "run"), *extra], capsys)
    assert code == 2 and err.startswith("error: ") and re.search(message, err), err
    assert not (tmp_path / "run" / "checkpoint.pt").exists()


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--lr", "fast"], "argument --lr: invalid float value: 'fast'"),
        (["--epochs", "1.5"], "argument --epochs: invalid int value: '1.5'"),
        (["--model", "gan"], "argument --model: invalid choice: 'gan'"),
    ],
)
def test_argparse_usage_errors_exit_2(tmp_path, capsys, extra, message):
    code, _, err = run_cli([*DIGITS, "--out", str(tmp_path / "run"), *extra], capsys)
    assert code == 2 and message in err


def test_out_naming_a_file_is_refused_before_training(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(
        vaelab.__main__,
        "load_dataset",
        lambda **_: pytest.fail("data loaded before --out was checked"),
    )
    (tmp_path / "file").write_text("mine")
    code, _, err = run_cli([*DIGITS, "--out", str(tmp_path / "file")], capsys)
    assert code == 2 and "--out " + str(tmp_path / "file") + " is a file; pass a folder" in err
    assert (tmp_path / "file").read_text() == "mine"
    with pytest.raises(ValueError, match="out_dir .* is a file, not a folder"):
        fit(small_vae(), *load_digits()[:2], config(tmp_path / "file"))


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ckpt")
    train, val, _ = load_digits()
    fit(
        small_vae(),
        train.subset(slice(0, 64)),
        val.subset(slice(0, 32)),
        config(out, epochs=1),
        data_spec={"name": "digits"},
    )
    return out / "checkpoint.pt"


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--batch-size", "0"], r"--batch-size must be in \[1, 2\*\*31\) .* got 0"),
        (["--batch-size", "-5"], r"--batch-size must be in \[1, 2\*\*31\) .* got -5"),
        (["--chunk-size", "0"], r"--chunk-size must be >= 1"),
        (["--samples", "-1"], r"--samples and --elbo-samples must be >= 0"),
        (["--seed", "-2"], r"--seed must be in \[0, 2\*\*32\)"),
        (["--device", "gpu7"], r"unknown device 'gpu7'"),
        (["--data", "moons"], r"model x_dim|features|x_dim"),
    ],
)
def test_a_wrong_evaluate_argument_is_named_without_a_traceback(
    checkpoint, capsys, extra, message
):
    code, _, err = run_cli(
        [
            "evaluate",
            "--checkpoint",
            str(checkpoint),
            "--samples",
            "2",
            "--elbo-samples",
            "1",
            *extra,
        ],
        capsys,
    )
    assert code == 2 and re.search(message, err), err


def _rewrite(checkpoint: Path, tmp_path: Path, change) -> Path:
    state = torch.load(checkpoint, weights_only=True)
    change(state)
    path = tmp_path / "edited.pt"
    torch.save(state, path)
    return path


def _set(key, value):
    return lambda state: state.__setitem__(key, value)


class NotAllowed:  # a class in a checkpoint: weights_only refuses it
    pass


@pytest.mark.parametrize(
    "make, message",
    [
        (
            lambda c, t: _rewrite(c, t, lambda s: s.pop("optimizer")),
            r"is an incomplete vaelab checkpoint: it lacks \['optimizer'\]",
        ),
        (
            lambda c, t: _rewrite(c, t, _set("comment", "hi")),
            r"has fields this vaelab does not know \(\['comment'\]\)",
        ),
        (
            lambda c, t: _rewrite(c, t, _set("format", "vaelab-checkpoint-3")),
            r"was written by a newer vaelab \(format 'vaelab-checkpoint-3'.*upgrade vaelab",
        ),
        (
            lambda c, t: _rewrite(c, t, _set("format", "mine")),
            (
                r"is not a vaelab checkpoint \(its format is 'mine', not "
                r"'vaelab-checkpoint-2'\); pass a checkpoint.pt written by"
            ),
        ),
        (
            lambda c, t: _rewrite(c, t, _set("step", "five")),
            r"damaged vaelab checkpoint: its 'step' is str 'five', not int >= 0",
        ),
        (lambda c, t: _rewrite(c, t, _set("step", -1)), r"its 'step' is int -1, not int >= 0"),
        (
            lambda c, t: _rewrite(c, t, lambda s: s["state_dict"].popitem()),
            r"corrupt: its contents do not match their checksum",
        ),
        # the checksum covers the settings too: an edited config is refused as corrupt ...
        (
            lambda c, t: _rewrite(c, t, lambda s: s["config"].__setitem__("z_dim", "x")),
            r"corrupt: its contents do not match their checksum",
        ),
        (
            lambda c, t: _rewrite(c, t, lambda s: s.pop("checksum")),
            r"lacks its checksum: it was edited or written by another program",
        ),
        # ... and with its checksum recomputed, by the check that reads it
        (
            lambda c, t: _rewrite(
                c,
                t,
                lambda s: (
                    s["config"].__setitem__("z_dim", "x"),
                    s.__setitem__("checksum", checksum(s)),
                ),
            ),
            r"checkpoint config: z_dim='x' has the wrong type",
        ),
        (
            lambda c, t: _rewrite(
                c,
                t,
                lambda s: (
                    s["config"].__setitem__("z_dim", 5),
                    s.__setitem__("checksum", checksum(s)),
                ),
            ),
            r"its weights do not fit the model its config describes",
        ),
        (
            lambda c, t: _truncate(c, t),
            (
                r"is not a readable vaelab checkpoint: the file is "
                r"truncated, damaged"
            ),
        ),
        (
            lambda c, t: _objects(t),
            (
                r"holds Python objects \(.*NotAllowed\) that vaelab does not "
                r"load"
            ),
        ),
        (
            lambda c, t: (t / "empty.pt").write_bytes(b"") and None or t / "empty.pt",
            r"is not a readable vaelab checkpoint",
        ),
    ],
)
def test_a_bad_checkpoint_gets_a_message_and_never_torchs_advice(
    checkpoint, tmp_path, capsys, make, message
):
    path = make(checkpoint, tmp_path)
    with pytest.raises(ValueError, match=message) as info:
        load_model(path)
    assert "weights_only" not in str(info.value)  # never advise loading untrusted code
    code, _, err = run_cli(["evaluate", "--checkpoint", str(path)], capsys)
    assert code == 2 and re.search(message, err) and "weights_only" not in err


def _truncate(checkpoint: Path, tmp_path: Path) -> Path:
    data = checkpoint.read_bytes()
    path = tmp_path / "half.pt"
    path.write_bytes(data[: len(data) // 2])
    return path


def _objects(tmp_path: Path) -> Path:
    path = tmp_path / "objects.pt"
    torch.save({"format": CHECKPOINT_FORMAT, "model": NotAllowed()}, path)
    return path


def test_a_flipped_bit_in_the_file_is_reported(checkpoint, tmp_path):
    data = bytearray(checkpoint.read_bytes())
    weight = torch.load(checkpoint, weights_only=True)["state_dict"]["encoder.net.0.weight"]
    at = bytes(data).find(weight.reshape(-1)[:4].numpy().tobytes())
    assert at > 0
    data[at + 2] ^= 0x04  # one bit of one weight: torch itself does not notice
    path = tmp_path / "flipped.pt"
    path.write_bytes(bytes(data))
    raw = torch.load(path, weights_only=True)
    assert not torch.equal(raw["state_dict"]["encoder.net.0.weight"], weight)
    with pytest.raises(
        ValueError, match=f"checkpoint {path} is corrupt: its contents do not match their checksum"
    ) as caught:
        load_checkpoint(path)
    assert str(caught.value).endswith("; retrain")  # no other checkpoint beside it
    (tmp_path / "best.pt").write_bytes(b"")
    with pytest.raises(ValueError) as caught:
        load_checkpoint(path)
    assert str(caught.value).endswith(
        f"use {tmp_path / 'best.pt'}, the run's other checkpoint, or retrain"
    )


def test_checksum_is_stable_and_older_checkpoints_without_it_still_load(checkpoint, tmp_path):
    state = torch.load(checkpoint, weights_only=True)
    assert state["checksum"] == checksum(state)  # written and recomputed alike
    assert checksum({**state, "history": []}) != state["checksum"]  # not the tensors only
    assert checksum({**state, "step": state["step"] + 1}) != state["checksum"]
    # format 1 (before vaelab 0.2) checked the tensors only and may lack a checksum
    old = tmp_path / "old.pt"
    torch.save(
        {**{k: v for k, v in state.items() if k != "checksum"}, "format": "vaelab-checkpoint-1"},
        old,
    )
    _, ckpt = load_model(old)
    assert "checksum" not in ckpt and ckpt["step"] == state["step"]
    torch.save(
        {
            **state,
            "format": "vaelab-checkpoint-1",
            "history": [],
            "checksum": tensor_checksum(state),
        },
        old,
    )
    assert load_checkpoint(old)["history"] == []


@pytest.mark.parametrize(
    "call, message",
    [
        (
            lambda d: fit(torch.nn.Linear(2, 2), d[0], d[1], config()),
            "model must be a vaelab model",
        ),
        (lambda d: fit(small_vae(), d[0].x, d[1], config()), "train must be a vaelab.data.Data"),
        (lambda d: fit(small_vae(), d[0], "val", config()), "val must be a vaelab.data.Data"),
        (
            lambda d: fit(small_vae(), d[0], Data(d[1].x[:, :10]), config()),
            "val has x_dim=10 but train has 64",
        ),
        (
            lambda d: fit(small_vae(), d[0], Data(torch.zeros(0, 64)), config()),
            "the validation data is empty",
        ),
        (lambda d: fit(small_vae(), d[0], d[1], {"epochs": 1}), "config must be a TrainConfig"),
        (
            lambda d: fit(small_vae(), d[0], d[1], config(), callback=3),
            "callback must be callable",
        ),
        (
            lambda d: fit(small_vae(), d[0], d[1], config(), data_spec="digits"),
            "data_spec must be a dict",
        ),
        (lambda d: TrainConfig(epochs=1.5), r"TrainConfig: epochs=1\.5 has the wrong type"),
        (
            lambda d: TrainConfig(max_abs_loss=0.0),
            (
                r"TrainConfig\.max_abs_loss=0\.0 is out of "
                r"range"
            ),
        ),
    ],
)
def test_fit_names_a_wrong_argument(digits, call, message):
    with pytest.raises(ValueError, match=message):
        call(digits)


# ----------------------------------------------------------------------------- divergence


def _poison_elbo(monkeypatch, model, at_step: int, factor: float) -> None:
    real, calls = model.elbo, []

    def elbo(batch, analytic_kl=None):
        terms = real(batch, analytic_kl)
        if model.training:
            calls.append(1)
            if len(calls) >= at_step:
                terms.log_likelihood = terms.log_likelihood * factor
        return terms

    monkeypatch.setattr(model, "elbo", elbo)


def test_an_exploding_loss_is_divergence_and_the_message_tells_the_truth(
    digits, tmp_path, monkeypatch
):
    train, val = digits
    model = small_vae()
    _poison_elbo(monkeypatch, model, at_step=7, factor=1e19)
    with pytest.raises(TrainingDiverged) as info:
        fit(model, train, val, config(tmp_path, epochs=3))
    text = str(info.value)
    assert re.search(
        r"exploding loss [0-9.e+]+ at step 7 \(beyond "
        r"TrainConfig\.max_abs_loss=1e\+10\)",
        text,
    ), text
    path = tmp_path / "checkpoint.pt"
    assert f"the last checkpoint, {path}, holds step 5" in text
    # a new run at the lr of the last good step (six steps of decay) divided by ten: resuming
    # would recompute the failing loss from the weights saved
    assert (
        f"Start a new run into another folder and lower the learning rate (e.g. --lr "
        f"{3e-3 * 0.99**6 / 10:.3g}"
        in text
        and "--resume" not in text
    )
    assert info.value.step == 7 and info.value.lr == pytest.approx(3e-3 * 0.99**6)
    assert load_checkpoint(path)["step"] == 5


def test_divergence_before_any_checkpoint_says_there_is_none(digits, tmp_path, monkeypatch):
    train, val = digits
    model = small_vae()
    _poison_elbo(monkeypatch, model, at_step=2, factor=float("nan"))
    with pytest.raises(TrainingDiverged) as info:
        fit(model, train, val, config(tmp_path, epochs=3))
    text = str(info.value)
    assert "non-finite loss at step 2" in text
    assert f"no checkpoint had been written to {tmp_path} yet" in text
    assert "Start a new run into another folder and lower the learning rate" in text
    assert "--resume" not in text
    assert "intact" not in text and not (tmp_path / "checkpoint.pt").exists()


def test_cli_divergence_exits_3_with_the_resume_advice(tmp_path, capsys, monkeypatch):
    real = vaelab.train.step.loss
    monkeypatch.setattr(vaelab.train.step, "loss", lambda terms, w: real(terms, w) * 1e12)
    code, _, err = run_cli([*DIGITS, "--out", str(tmp_path / "run")], capsys)
    assert code == 3 and "exploding loss" in err and "no checkpoint had been written" in err


# ----------------------------------------------------------------------------- faults


@pytest.mark.parametrize("where", ["save", "fsync"])
def test_disk_full_names_the_folder_and_keeps_the_previous_checkpoint(
    digits, tmp_path, monkeypatch, where
):
    train, val = digits
    fit(small_vae(), train, val, config(tmp_path, epochs=1))
    path = tmp_path / "checkpoint.pt"
    before = path.read_bytes()

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    if where == "save":
        monkeypatch.setattr(vaelab.train.checkpoint.torch, "save", full)
    else:
        monkeypatch.setattr(vaelab.train.checkpoint.os, "fsync", full)
    with pytest.raises(CheckpointWriteError) as info:
        fit(small_vae(), train, val, config(tmp_path, epochs=2), resume=path)
    monkeypatch.undo()
    assert info.value.errno == errno.ENOSPC
    assert (f"could not write checkpoint {path}: the disk holding it is full") in str(info.value)
    assert "the previous checkpoint.pt there is intact" in str(info.value)
    assert path.read_bytes() == before and load_checkpoint(path)["step"] == 5
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.pt", "checkpoint.pt"]


def test_cli_disk_full_exits_1_without_a_traceback(tmp_path, capsys, monkeypatch):
    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(vaelab.train.checkpoint.torch, "save", full)
    code, _, err = run_cli([*DIGITS, "--out", str(tmp_path / "run")], capsys)
    assert code == 1 and "the disk holding it is full" in err and str(tmp_path / "run") in err


def test_a_full_disk_before_any_checkpoint_gives_advice_that_works(tmp_path, capsys, monkeypatch):
    """metrics.jsonl cannot be written and no checkpoint exists yet: the advice is to remove the
    folder and run the same command again (it used to say "start again", and the same command
    was then refused because the folder held a failed run). The test follows it."""
    out = tmp_path / "run"
    real = vaelab.writes.append

    class Full:  # the metrics file, on a disk that is full
        def __init__(self, f):
            self.f = f

        def fileno(self):
            return self.f.fileno()

        def write(self, data):
            raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(vaelab.writes, "append", lambda f, *rest: real(Full(f), *rest))
    argv = [*DIGITS, "--out", str(out)]
    code, _, err = run_cli(argv, capsys)
    assert code == 1 and "Traceback" not in err, err
    assert f"run the same command again after removing {out}" in err, err
    monkeypatch.undo()
    shutil.rmtree(out)
    code, _, err = run_cli(argv, capsys)
    assert code == 0, err


def _interrupt_at(steps: set[int]):
    """A callback sending this process SIGINT (Ctrl-C) after the given training steps."""

    def callback(record):
        if record["kind"] == "train" and record["step"] in steps:
            os.kill(os.getpid(), signal.SIGINT)

    return callback


def test_ctrl_c_saves_a_clean_checkpoint_that_resumes_bit_for_bit(digits, tmp_path):
    train, val = digits
    torch.manual_seed(0)
    straight = small_vae()
    hist_straight = fit(straight, train, val, config(tmp_path / "a", epochs=2))

    torch.manual_seed(0)
    first = small_vae()
    with pytest.raises(TrainingInterrupted) as info:
        fit(first, train, val, config(tmp_path / "b", epochs=2), callback=_interrupt_at({7}))
    path = tmp_path / "b" / "checkpoint.pt"
    assert info.value.checkpoint == path and info.value.step == 7
    assert f"interrupted at step 7; the last checkpoint, {path}, holds step 7" in str(info.value)
    assert f"--resume {path}" in str(info.value)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # restored
    resumed = small_vae()
    hist_resumed = fit(resumed, train, val, config(tmp_path / "b", epochs=2), resume=path)
    assert_equal_state(straight.state_dict(), resumed.state_dict())
    assert timeless(hist_resumed) == timeless(hist_straight)


def test_a_second_ctrl_c_stops_at_once_and_names_the_checkpoint_that_survives(digits, tmp_path):
    train, val = digits
    with pytest.raises(TrainingInterrupted) as info:  # two Ctrl-C in step 7: no clean point
        fit(
            small_vae(),
            train,
            val,
            config(tmp_path, epochs=3),
            callback=lambda r: _interrupt_at({7})(r) or _interrupt_at({7})(r),
        )
    path = tmp_path / "checkpoint.pt"
    assert info.value.step == 5 and f"the last checkpoint, {path}, holds step 5" in str(info.value)
    assert load_checkpoint(path)["step"] == 5


def test_cli_ctrl_c_exits_130_with_the_exact_resume_command(tmp_path, capsys, monkeypatch):
    real = vaelab.train.loop.train_step

    def step(*args, **kwargs):
        record = real(*args, **kwargs)
        if record["step"] == 2:
            os.kill(os.getpid(), signal.SIGINT)
        return record

    monkeypatch.setattr(vaelab.train.loop, "train_step", step)
    out = tmp_path / "run"
    argv = [*DIGITS[:5], "--set", "hidden_dims=[8]", "--out", str(out)]
    code, _, err = run_cli(argv, capsys)
    assert code == 130
    assert f"the last checkpoint, {out}/checkpoint.pt, holds step 2" in err
    assert (
        f"to resume: python -m vaelab train --model vae --data digits --set "
        f"'hidden_dims=[8]' --out {out} --resume {out}/checkpoint.pt"
    ) in err
    assert load_checkpoint(out / "checkpoint.pt")["step"] == 2


def test_stale_temporary_files_are_removed_but_nothing_else(digits, tmp_path):
    train, val = digits
    old = time.time() - 3600
    stale = [tmp_path / "checkpoint.pt.abc123.tmp", tmp_path / "best.pt.link.tmp"]
    kept = [tmp_path / "notes.tmp", tmp_path / "checkpoint.pt.mine"]
    for path in stale + kept:
        path.write_bytes(b"x")
        os.utime(path, (old, old))
    fresh = tmp_path / "checkpoint.pt.fresh.tmp"  # another process's save in progress
    fresh.write_bytes(b"x")
    fit(small_vae(), train, val, config(tmp_path, max_steps=1))
    assert not any(p.exists() for p in stale)
    assert all(p.exists() for p in kept) and fresh.exists()


KILL_DRIVER = textwrap.dedent("""
    import sys, torch
    torch.set_num_threads(1)
    from vaelab.data import load_digits
    from vaelab.train import TrainConfig, fit
    from vaelab.vae import VAE, VAEConfig
    train, _, _ = load_digits()
    model = VAE(VAEConfig(x_dim=64, z_dim=2, hidden_dims=[8]))
    resume = sys.argv[2] if len(sys.argv) > 2 else None
    # one batch an epoch and a checkpoint every epoch: the process is nearly always saving
    fit(model, train.subset(slice(0, 16)), None, TrainConfig(
        epochs=10**6, batch_size=16, progress=False, device="cpu", out_dir=sys.argv[1]),
        resume=resume)
""")


@pytest.mark.integration  # a process of its own: make test, not test-fast
def test_sigkill_at_any_moment_leaves_a_loadable_checkpoint(tmp_path):
    path = tmp_path / "checkpoint.pt"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    last_step = 0
    for round_, delay in enumerate((0.05, 0.43)):
        args = [sys.executable, "-c", KILL_DRIVER, str(tmp_path)]
        if round_:
            args.append(str(path))  # the resumed run saves over the same file
        proc = subprocess.Popen(args, cwd=ROOT, env=env, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 120
        while not (path.exists() and load_checkpoint(path)["step"] > last_step):
            assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
            assert time.monotonic() < deadline
            time.sleep(0.05)
        time.sleep(delay)
        proc.kill()  # SIGKILL: no handler, no cleanup
        proc.wait()
        proc.stderr.close()
        ckpt = load_checkpoint(path)  # the last complete save, whatever the moment
        assert ckpt["step"] > last_step and ckpt["epoch"] == ckpt["step"]
        last_step = ckpt["step"]


# ----------------------------------------------------------------------------- long runs


@pytest.mark.integration  # a process of its own: make test, not test-fast
def test_soak_benchmark_smoke_run_prints_memory_and_final_figures(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "soak.py"),
            "--minutes",
            "0.1",
            "--every",
            "1",
            "--set",
            "rnn_dim=16",
            "--set",
            "z_dim=4",
            "--set",
            "emission_dim=8",
            "--set",
            "transition_dim=8",
            "--out",
            str(tmp_path),
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.strip().splitlines()
    assert re.match(r"t=\s*[0-9.]+ s\s+step\s+1\s+resident\s+[0-9.]+ MB", lines[0]), lines[0]
    result = json.loads(lines[-1])
    assert result["steps"] >= 1 and result["train_nelbo"] > 0
    assert 0.09 < result["minutes"] < 1.5
    assert 50 < result["rss_mb_first"] <= result["rss_mb_max"]
    assert result["growth_mb"] == pytest.approx(
        result["rss_mb_end"] - result["rss_mb_after_warmup"], abs=0.11
    )
    assert load_checkpoint(tmp_path / "checkpoint.pt")["step"] == result["steps"]


def test_save_checkpoint_reports_an_unwritable_folder(tmp_path):
    target = tmp_path / "file"
    target.write_text("x")
    with pytest.raises(
        CheckpointWriteError, match=f"could not write checkpoint {target}/checkpoint.pt"
    ):
        save_checkpoint(target / "checkpoint.pt", {"format": CHECKPOINT_FORMAT})


def test_a_model_that_rejects_the_data_says_so_without_a_traceback(tmp_path, capsys):
    code, _, err = run_cli(
        [
            "train",
            "--model",
            "dmm",
            "--data",
            "digits",
            "--out",
            str(tmp_path / "run"),
            "--max-steps",
            "1",
            "--set",
            "rnn_dim=4",
            "--train-set",
            "progress=False",
        ],
        capsys,
    )
    assert code == 2 and "error: dmm cannot train on this data: x must be [B, T, 64]" in err
