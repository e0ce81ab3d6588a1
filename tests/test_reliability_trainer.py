"""The trainer's reliability (issue 35): a file-size limit, a diverging run, a second run into
one folder, SIGTERM, flags that act or are refused by name, impossible sizes, and random
--set / --train-set values through the CLI. Every case ends in exit 0 with the value applied,
or in a non-zero exit with one sentence and no traceback."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import resource
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import torch
from helpers import TINY_VAE, config
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import vaelab.train.run
from tests.test_reliability import run_cli
from vaelab.config import parse_sets
from vaelab.data import load_digits
from vaelab.train import (
    TrainConfig,
    TrainingDiverged,
    TrainingInterrupted,
    checksum,
    fit,
    guard,
    load_checkpoint,
    same_values,
    save_checkpoint,
)
from vaelab.vae import VAE, VAEConfig

# what the run-folder writer (vaelab.runs.RunWriter) keeps beside the checkpoints
RUN_FOLDER_FILES = {
    "settings.json",
    "metrics.jsonl",
    "status.json",
    "log.txt",
    "meta.json",
    "command.json",
    "heartbeat",
    "limits.json",
    "request.json",
}


ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def digits():
    train, val, _ = load_digits()
    return train.subset(slice(0, 160)), val.subset(slice(0, 48))


# ----------------------------------------------------------------------------- disk


def _limit_file_size(size: int):
    def preexec() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (size, size))

    return preexec


@pytest.mark.integration  # a process of its own: make test, not test-fast
def test_a_file_size_limit_names_the_path_and_space_and_leaves_no_temporary_file(tmp_path):
    """``ulimit -f``: the checkpoint's write fails with EFBIG; the message names the file, the
    space it needs and what survives, the exit code is 1, and no temporary file is left."""
    out = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "vaelab",
            "train",
            *TINY_VAE,
            "--out",
            str(out),
            "--max-steps",
            "2",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=False,
        preexec_fn=_limit_file_size(8192),
    )
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    assert re.search(
        rf"could not write checkpoint {out}/checkpoint.pt: the "
        rf"file is larger than this process may write \(ulimit -f\); it needs "
        rf"[0-9.]+ MiB .*no checkpoint.pt was there before",
        proc.stderr,
    ), proc.stderr
    # no temporary file, no lock file; the run folder's own records (runs.RunWriter) may stay
    left = {p.name for p in out.iterdir()} - RUN_FOLDER_FILES
    assert not left, left


# ----------------------------------------------------------------------------- divergence


@pytest.mark.parametrize(
    "model, data, sets",
    [
        ("vae", "digits", ["hidden_dims=[16]", "z_dim=2"]),
        ("ssm", "linear", ["hidden_dim=8", "rnn_dim=8", "z_dim=2"]),
    ],
)
def test_the_printed_command_after_divergence_trains_past_the_failing_step(
    tmp_path, capsys, model, data, sets
):
    """--lr 10 diverges within the first steps, far below max_abs_loss for the VAE; the
    printed command, followed word for word, trains the whole run."""
    argv = [
        "train",
        "--model",
        model,
        "--data",
        data,
        "--lr",
        "10",
        "--epochs",
        "1",
        "--out",
        str(tmp_path / "run"),
        "--train-set",
        "progress=False",
    ]
    for s in sets:
        argv += ["--set", s]
    code, _, err = run_cli(argv, capsys)
    assert code == 3, err
    failing = int(re.search(r"at step (\d+)", err).group(1))
    command = re.search(
        r"to start again with a lower learning rate: python -m vaelab (.*)", err
    ).group(1)
    words = shlex.split(command)
    assert words[words.index("--lr") + 1] == "0.001" and "--resume" not in words
    assert "to resume with a lower learning rate" not in err  # no checkpoint worth it
    code, _, err = run_cli(words, capsys)
    assert code == 0, err
    ckpt = load_checkpoint(Path(words[words.index("--out") + 1]) / "checkpoint.pt")
    assert ckpt["step"] > failing and ckpt["train_config"]["lr"] == 1e-3
    assert same_values(ckpt["config"]["z_dim"], 2)  # the same model as the failed run
    assert ckpt["train_config"]["progress"] is False  # re-test 5, 9.5: every setting kept


def test_a_resumed_run_that_diverges_is_told_to_resume_at_a_lower_rate_and_that_works(
    tmp_path, capsys
):
    """A run trained well for an epoch, resumed with --lr 10: its checkpoint's weights took a
    good step after it, so the advice resumes from it at a lower rate; the printed command,
    followed word for word, trains past the failing step and keeps the run's first epoch."""
    out = tmp_path / "run"
    tiny = ["--train-set", "progress=False", "--set", "hidden_dims=[16]", "--set", "z_dim=2"]
    first = ["train", "--model", "vae", "--data", "digits", "--epochs", "1", "--out", str(out)]
    code, _, err = run_cli([*first, *tiny], capsys)
    assert code == 0, err
    saved = load_checkpoint(out / "checkpoint.pt")["step"]
    ckpt = out / "checkpoint.pt"
    argv = ["train", "--resume", str(ckpt), "--epochs", "3", "--lr", "10"]
    code, _, err = run_cli([*argv, "--train-set", "progress=False"], capsys)
    assert code == 3, err
    failing = int(re.search(r"at step (\d+)", err).group(1))
    assert failing >= saved + 2
    assert f"resume from it with a lower learning rate (--resume {ckpt} --lr 0.001" in err
    command = re.search(r"to resume with a lower learning rate: python -m vaelab (.*)", err).group(
        1
    )
    words = shlex.split(command)
    assert words[words.index("--resume") + 1] == str(ckpt)
    code, _, err = run_cli(words, capsys)
    assert code == 0, err
    done = load_checkpoint(ckpt)
    assert done["step"] > failing and done["epoch"] == 3
    assert done["train_config"]["lr"] == float(words[words.index("--lr") + 1])


def test_a_distribution_rejecting_its_argument_mid_run_is_divergence(
    digits, tmp_path, monkeypatch
):
    """A flow or a Bernoulli whose argument check fails once the run has trained on the data
    is divergence (with the checkpoint that survives); on the first step it is the data."""
    train, val = digits

    def rejecting(at_step: int) -> VAE:
        model = VAE(VAEConfig(x_dim=64, z_dim=2, hidden_dims=[8]))
        real, calls = model.elbo, []

        def elbo(batch, *args, **kwargs):
            calls.append(model.training)  # training steps, not validation
            if model.training and sum(calls) == at_step:
                raise ValueError(
                    "Expected value argument (Tensor of shape (32, 2)) to be "
                    "within the support (Real()) of the distribution Normal(), "
                    "but found invalid values:\ntensor([[1e30, 0]])"
                )
            return real(batch, *args, **kwargs)

        monkeypatch.setattr(model, "elbo", elbo)
        return model

    with pytest.raises(TrainingDiverged) as info:
        fit(rejecting(7), train, val, config(tmp_path, epochs=3))
    text = str(info.value)
    assert "the model's distributions rejected their arguments at step 7" in text
    assert f"the last checkpoint, {tmp_path / 'checkpoint.pt'}, holds step 5" in text
    assert "found invalid values" not in text and "tensor(" not in text
    with pytest.raises(ValueError, match=r"vae cannot train on this data: Expected value"):
        fit(rejecting(1), train, val, config(tmp_path / "b", epochs=1))


def test_a_resumed_run_measures_divergence_against_its_own_history(digits, tmp_path, monkeypatch):
    """The loss level goes on from the checkpoint's records: a resumed run refuses a loss
    ten times its level at its first step, as the run would have without the stop."""
    train, val = digits
    model = VAE(VAEConfig(x_dim=64, z_dim=2, hidden_dims=[8]))
    fit(model, train, val, config(tmp_path, epochs=1))
    real = model.elbo

    def elbo(batch, *args, **kwargs):  # a likelihood 30 times worse: the loss jumps 30-fold
        terms = real(batch, *args, **kwargs)
        return dataclasses.replace(terms, log_likelihood=terms.log_likelihood * 30)

    monkeypatch.setattr(model, "elbo", elbo)
    with pytest.raises(TrainingDiverged, match=r"at step 6, far above the run's own level"):
        fit(model, train, val, config(tmp_path, epochs=2), resume=tmp_path / "checkpoint.pt")


# ----------------------------------------------------------------------------- SIGTERM, lock


def test_sigterm_saves_a_checkpoint_like_ctrl_c(digits, tmp_path):
    train, val = digits

    def terminate(record):
        if record["kind"] == "train" and record["step"] == 3:
            os.kill(os.getpid(), signal.SIGTERM)

    model = VAE(VAEConfig(x_dim=64, z_dim=2, hidden_dims=[8]))
    with pytest.raises(TrainingInterrupted) as info:
        fit(model, train, val, config(tmp_path, epochs=3), callback=terminate)
    path = tmp_path / "checkpoint.pt"
    assert info.value.checkpoint == path and info.value.step == 3
    assert f"--resume {path}" in str(info.value)
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # restored
    assert load_checkpoint(path)["step"] == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pt"]  # lock released


def test_a_signal_during_the_agreement_stops_every_rank_at_the_next_one(
    digits, tmp_path, monkeypatch
):
    """Under torchrun the ranks leave the loop on the value they agreed on. A SIGTERM landing
    while the agreement is under way (after this rank's vote went out) must count at the next
    agreement, on every rank. It used to be either lost (the agreed False overwrote it) or, a
    moment later, acted on by this rank alone, which left the others in a collective with a
    closed peer (a traceback in CI)."""
    from vaelab.train import loop

    train, val = digits
    calls: list[bool] = []  # each step agrees twice: on the callbacks' stop, then on a signal's
    real = loop.distributed.agree

    def agree(flag, ctx):
        calls.append(flag)
        agreed = real(flag, ctx)  # the others' votes are in: nobody had asked to stop
        if len(calls) == 2:  # step 1's agreement on a signal
            os.kill(os.getpid(), signal.SIGTERM)  # this rank's signal, mid-collective
            time.sleep(0.05)  # its handler runs here
        return agreed

    monkeypatch.setattr(loop.distributed, "agree", agree)
    model = VAE(VAEConfig(x_dim=64, z_dim=2, hidden_dims=[8]))
    with pytest.raises(TrainingInterrupted) as info:
        fit(model, train, val, config(tmp_path, epochs=3))
    assert calls == [False, False, False, True]  # this rank voted to stop at step 2
    assert load_checkpoint(tmp_path / "checkpoint.pt")["step"] == info.value.step == 2


def test_a_second_signal_stops_at_once():
    with guard.deferred_stop() as stop:
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.05)  # the handler runs here, and must not raise
        assert stop.requested
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.05)
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


def _training_past_its_first_checkpoint(out: Path, env: dict) -> subprocess.Popen:
    """``python -m vaelab train`` of a long tiny run into ``out`` (``env`` over this one's),
    returned once its first checkpoint is on disk (or after two minutes)."""
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "vaelab",
            "train",
            *TINY_VAE,
            "--out",
            str(out),
            "--epochs",
            "100000",
        ],
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **env},
    )
    deadline = time.monotonic() + 120
    while not (out / "checkpoint.pt").exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    return proc


@pytest.mark.integration  # a process of its own: make test, not test-fast
def test_sigterm_to_a_training_process_exits_130_with_the_resume_command(tmp_path):
    out = tmp_path / "run"
    proc = _training_past_its_first_checkpoint(out, {"PYTHONPATH": str(ROOT)})
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "SIGTERM: stopping after this step and saving a checkpoint" in err
    assert "to resume: python -m vaelab train" in err and "Traceback" not in err
    step = load_checkpoint(out / "checkpoint.pt")["step"]
    assert f"holds step {step}" in err
    assert not list(out.glob("*.tmp")) and not (out / ".lock").exists()


def test_a_second_run_into_a_folder_in_use_is_refused_by_name(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    held = vaelab.train.run._lock(out)  # another run training there
    try:
        code, _, err = run_cli(["train", *TINY_VAE, "--out", str(out), "--max-steps", "1"], capsys)
        assert code == 2
        assert f"{out} is in use by another training run (pid {os.getpid()} on " in err
        assert "pass another --out folder" in err
        assert not (out / "checkpoint.pt").exists()
    finally:
        (out / ".lock").unlink()
        os.close(held)
    code, _, err = run_cli(["train", *TINY_VAE, "--out", str(out), "--max-steps", "1"], capsys)
    assert code == 0, err
    assert {p.name for p in out.iterdir()} - RUN_FOLDER_FILES == {"checkpoint.pt"}


# ----------------------------------------------------------------------------- flags


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ckpt")
    train, val, _ = load_digits()
    fit(
        VAE(VAEConfig(x_dim=64, z_dim=2, hidden_dims=[8])),
        train.subset(slice(0, 64)),
        val.subset(slice(0, 32)),
        config(out, epochs=1),
        data_spec={"name": "digits"},
    )
    return out / "checkpoint.pt"


def test_evaluate_data_flags_act_on_the_checkpoints_data_set(checkpoint, capsys):
    base = [
        "evaluate",
        "--checkpoint",
        str(checkpoint),
        "--samples",
        "0",
        "--elbo-samples",
        "1",
        "--split",
        "val",
    ]
    code, _, err = run_cli(base, capsys)
    assert code == 0, err
    # the option reaches the loader: grey levels, which the Bernoulli decoder refuses
    code, _, err = run_cli([*base, "--data-option", "binarize=False"], capsys)
    assert code == 2 and "Bernoulli likelihood needs 0/1 data; digits is real-valued" in err
    code, _, err = run_cli([*base, "--data-path", "other.npz"], capsys)
    assert code == 2 and "data set 'digits' is built in and reads no file" in err


def test_resume_with_another_data_path_is_refused_by_name(checkpoint, tmp_path, capsys):
    code, _, err = run_cli(
        [
            "train",
            "--resume",
            str(checkpoint),
            "--out",
            str(tmp_path),
            "--epochs",
            "2",
            "--data-path",
            "x.npz",
        ],
        capsys,
    )
    assert code == 2
    assert (
        "its data path is None but 'x.npz' here (--data-path); a resumed run keeps its "
        "data: drop --data-path" in err
    )


@pytest.mark.parametrize(
    "device, message",
    [
        ("meta", r"device 'meta' cannot run vaelab models"),
        ("mps", r"device 'mps' \(Apple's Metal\) is not available"),
        ("cuda:7", r"device 'cuda:7' asked for but"),
        ("cpu:1", r"device 'cpu:1': torch has one CPU device"),
        ("gpu", r"unknown device 'gpu'"),
    ],
)
def test_a_device_that_cannot_train_is_refused_by_name(tmp_path, capsys, device, message):
    if device == "mps" and torch.backends.mps.is_available():
        device, message = "meta", r"device 'meta' cannot run vaelab models"
    code, _, err = run_cli(
        ["train", *TINY_VAE, "--out", str(tmp_path), "--device", device], capsys
    )
    assert code == 2 and re.search(message, err), err
    code, _, err = run_cli(
        ["evaluate", "--checkpoint", str(tmp_path / "none.pt"), "--device", device], capsys
    )
    assert code == 2 and re.search(message, err), err


@pytest.mark.parametrize(
    "model, data, sets, message",
    [
        (
            "dmm",
            "jsb",
            ["z_dim=100000000"],
            (
                r"--set z_dim=100000000 is above 1e\+06, larger "
                r"than any size .* or --allow-large if you mean it"
            ),
        ),
        (
            "dmm",
            "jsb",
            ["z_dim=20000", "rnn_dim=5000"],
            (
                r"has [0-9.]+e\+09 parameters .* over the limit of 5e\+07; "
                r"pass smaller sizes with "
                r"--set, or --allow-large"
            ),
        ),
        ("vae", "digits", ["hidden_dims=[-5]"], r"cannot be built with hidden_dims=\[-5\]"),
        ("vae", "digits", ["hidden_dims=[0]"], r"has a layer of width 0 \(encoder"),
    ],
)
def test_an_impossible_size_is_refused_before_allocating(
    tmp_path, capsys, model, data, sets, message
):
    argv = ["train", "--model", model, "--data", data, "--out", str(tmp_path)]
    for s in sets:
        argv += ["--set", s]
    start = time.perf_counter()
    code, _, err = run_cli(argv, capsys)
    assert code == 2 and re.search(message, err), err
    assert time.perf_counter() - start < 60  # refused, not allocated (19 GB took minutes)
    assert not (tmp_path / "checkpoint.pt").exists()


def test_an_empty_out_is_refused(capsys):
    code, _, err = run_cli(["train", *TINY_VAE, "--out", ""], capsys)
    assert code == 2 and "--out is empty; pass a folder name" in err


# ----------------------------------------------------------------------------- property

NUMBERS = st.one_of(
    st.integers(-3, 40),
    st.just(10**9),
    st.floats(allow_nan=True),
    st.sampled_from([0.0, 1e-3, 0.5, 2.0, -1.0, math.inf]),
)
VALUES = st.one_of(
    NUMBERS,
    st.booleans(),
    st.none(),
    st.text(max_size=6),
    st.lists(st.integers(-2, 12), max_size=3),
    st.tuples(NUMBERS, NUMBERS),
)
MODEL_KEYS = [*VAEConfig.__dataclass_fields__, "nosuch"]
TRAIN_KEYS = [
    k
    for k in TrainConfig.__dataclass_fields__
    if k not in ("out_dir", "max_steps", "progress", "epochs")
] + ["nosuch"]


@settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(flag=st.sampled_from(["--set", "--train-set"]), data=st.data(), value=VALUES)
def test_random_set_values_are_applied_or_refused_with_a_sentence(capsys, flag, data, value):
    key = data.draw(st.sampled_from(MODEL_KEYS if flag == "--set" else TRAIN_KEYS))
    text = f"{key}={value!r}"
    with tempfile.TemporaryDirectory() as tmp:
        argv = [
            "train",
            "--model",
            "vae",
            "--data",
            "digits",
            "--out",
            tmp,
            "--max-steps",
            "1",
            "--epochs",
            "1",
            "--train-set",
            "progress=False",
            "--set",
            "hidden_dims=[8]",
        ]
        code, _, err = run_cli([*argv, flag, text], capsys)
        if code != 0:
            assert err.startswith("error:") or "\nerror:" in err or "usage:" in err, err
            assert len(err.strip().splitlines()) <= 3, err  # a sentence, not a dump
            return
        ckpt = load_checkpoint(Path(tmp) / "checkpoint.pt")
        stored = ckpt["config" if flag == "--set" else "train_config"]
        (parsed,) = parse_sets([text], flag).values()
        if isinstance(parsed, str) and isinstance(stored.get(key), float):
            parsed = float(parsed)  # "inf" and "nan" are numbers where a float is expected
        assert key in stored and same_values(stored[key], parsed), (text, stored.get(key))


# ----------------------------------------------------------------------------- crafted files


def _crafted(checkpoint: Path, tmp_path: Path, change) -> Path:
    """A copy of ``checkpoint`` changed by ``change(state)``, with a valid checksum (the
    damage is in what the file says, not in its bytes)."""
    state = load_checkpoint(checkpoint)
    change(state)
    state["checksum"] = checksum(state)
    path = tmp_path / "crafted.pt"
    save_checkpoint(path, state)
    return path


def _nan_weights(state: dict) -> None:
    for key, value in state["state_dict"].items():
        state["state_dict"][key] = value * math.nan


@pytest.mark.parametrize(
    "change, message",
    [
        (
            lambda s: s["history"].append({"step": 1}),
            r"a history record is \{'step': 1\}, not a dict with kind 'train', 'val' or 'end'",
        ),
        (lambda s: s.update(rng={}), r"its 'rng' lacks the random states 'data' and 'torch'"),
        (_nan_weights, r"holds non-finite weights \(encoder\.net\.0\.weight has NaN or inf"),
    ],
)
def test_a_crafted_checkpoint_is_refused_in_one_line_by_evaluate_and_resume(
    checkpoint, tmp_path, capsys, change, message
):
    path = _crafted(checkpoint, tmp_path, change)
    for argv in (
        ["evaluate", "--checkpoint", str(path), "--samples", "2"],
        ["train", "--resume", str(path), "--epochs", "3"],
    ):
        code, _, err = run_cli(argv, capsys)
        assert code == 2 and re.search(message, err), err
        assert len(err.strip().splitlines()) == 1 and "tensor(" not in err


def test_a_deeply_nested_checkpoint_is_refused_by_name(checkpoint, tmp_path, capsys):
    state = load_checkpoint(checkpoint)
    nested: list = []
    for _ in range(5000):  # deeper than Python's recursion limit
        nested = [nested]
    state["history"].append({"kind": "train", "x": nested})
    path = tmp_path / "deep.pt"
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(50_000)  # for torch.save's pickler, which recurses
    try:
        torch.save(state, path)
    finally:
        sys.setrecursionlimit(limit)
    code, _, err = run_cli(["evaluate", "--checkpoint", str(path)], capsys)
    assert code == 2 and f"{path} is " in err and len(err.strip().splitlines()) == 1, err


def test_a_two_process_checkpoint_resumed_alone_says_how_the_global_batch_changes(
    digits, tmp_path
):
    """A torchrun checkpoint (world 2) resumed in one process: at an epoch's end it goes on
    with a warning naming both global batches (and the --batch-size that keeps it), recorded
    in ``resumes``; inside an epoch it is refused."""
    train, val = digits
    fit(VAE(VAEConfig(x_dim=64, z_dim=2, hidden_dims=[8])), train, val, config(tmp_path, epochs=1))
    path = _crafted(tmp_path / "checkpoint.pt", tmp_path, lambda s: s.update(world=2))
    model = VAE(VAEConfig(x_dim=64, z_dim=2, hidden_dims=[8]))
    with pytest.warns(
        UserWarning,
        match=r"in 1 process\(es\) where it trained in 2: the global "
        r"batch changes from 64 to 32 examples \(pass "
        r"--batch-size 64 to keep it\)",
    ):
        fit(model, train, val, config(tmp_path / "b", epochs=2), resume=path)
    resumes = load_checkpoint(tmp_path / "b" / "checkpoint.pt")["resumes"]
    assert resumes[-1]["changed"]["global_batch_size"] == [64, 32]
    assert resumes[-1]["changed"]["world"] == [2, 1]
    inside = _crafted(
        tmp_path / "checkpoint.pt", tmp_path, lambda s: s.update(world=2, batch_in_epoch=1)
    )
    with pytest.raises(
        ValueError,
        match=r"in 1 process\(es\) with batch_size=32: it trained "
        r"in 2 and stopped inside epoch 2, whose batches are "
        r"global batches of 64; pass batch_size=64",
    ):
        fit(model, train, val, config(tmp_path / "c", epochs=2), resume=inside)


def test_a_signal_while_fit_reports_its_stop_leaves_the_report_whole(
    digits, tmp_path, monkeypatch
):
    """Re-test 6, N6: a second Ctrl-C 0.02 s after the first could land while fit built its
    report of the stop, and a bare KeyboardInterrupt left fit: the command line then said
    "stopped before its first step" over a checkpoint of step 704. Once fit reports, a
    further signal changes nothing."""
    from vaelab.train import loop

    train, val = digits
    real = loop.runs.interrupted

    def interrupted(run):
        os.kill(os.getpid(), signal.SIGINT)  # the second Ctrl-C, while the report is built
        time.sleep(0.05)
        return real(run)

    def first(record):
        if record.get("step") == 2:
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.05)
        return True

    monkeypatch.setattr(loop.runs, "interrupted", interrupted)
    model = VAE(VAEConfig(x_dim=64, z_dim=2, hidden_dims=[8]))
    with pytest.raises(TrainingInterrupted) as info:
        fit(model, train, val, config(tmp_path, epochs=3), callback=first)
    assert info.value.step == load_checkpoint(tmp_path / "checkpoint.pt")["step"] == 2
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # a library's fit


def test_the_command_line_keeps_signals_away_until_a_stop_is_reported():
    """Re-test 6, N7: a SIGTERM 0.02 s after a Ctrl-C, once fit had stopped, met Python's
    default and killed the process before it said anything, leaving status "training" and
    its lock. Under the command line (HOLD_AFTER_STOP) a stopped fit leaves both signals
    ignored until main() has reported; a library's fit puts the defaults back."""
    token = guard.HOLD_AFTER_STOP.set(True)
    try:
        with guard.deferred_stop():
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.05)
        assert signal.getsignal(signal.SIGTERM) is signal.SIG_IGN
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        guard.HOLD_AFTER_STOP.reset(token)
        guard.release_held()
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    with guard.deferred_stop():  # not held: a stop without the command line
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.05)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


@pytest.mark.integration  # a process of its own: make test, not test-fast
@pytest.mark.parametrize("second", [signal.SIGINT, signal.SIGTERM])
def test_two_signals_close_together_end_in_the_stop_report(tmp_path, second):
    """Re-test 6, N6 and N7 as the tester sent them: Ctrl-C, then a second signal 0.02 s
    later. The process ends with the report of its stop and a resume command, and its
    folder says "stopped"."""
    out = tmp_path / "run"
    proc = _training_past_its_first_checkpoint(
        out, {"PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    )
    proc.send_signal(signal.SIGINT)
    time.sleep(0.02)
    proc.send_signal(second)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130 and "Traceback" not in err, err
    step = load_checkpoint(out / "checkpoint.pt")["step"]
    assert f"holds step {step}" in err and "to resume: python -m vaelab train" in err
    assert json.loads((out / "status.json").read_text())["state"] == "stopped"
    assert not (out / ".lock").exists()
