from __future__ import annotations

import time

import pytest
import torch

from vaelab.__main__ import make_model
from vaelab.data import load_dataset
from vaelab.live import TrainingRun, check_compatible, dataset_needs_path, start_run
from vaelab.train import TrainConfig, load_model

TIMEOUT = 60.0  # seconds; a tiny run takes well under one on two cores


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


def _run(digits, tmp_path, **train) -> TrainingRun:
    train_data, val, _ = digits
    model = make_model("vae", train_data, {"hidden_dims": [32]})
    config = TrainConfig(**{"batch_size": 64, "epochs": 1, "progress": False,
                            "out_dir": str(tmp_path / "run"), **train})
    return TrainingRun(model, train_data, val, config, data_spec={"name": "digits"})


def _wait(predicate, timeout: float = TIMEOUT) -> None:
    end = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > end:
            raise AssertionError("timed out waiting")
        time.sleep(0.01)


def test_run_finishes_with_records_and_checkpoint(digits, tmp_path):
    run = _run(digits, tmp_path, max_steps=5)
    assert run.status == "not started" and not run.active
    run.start()
    assert run.join(TIMEOUT)
    assert run.status == "finished"
    kinds = [r["kind"] for r in run.history]
    assert kinds == ["train"] * 5 + ["end"]
    assert [r["step"] for r in run.history[:5]] == [1, 2, 3, 4, 5]
    model, ckpt = load_model(run.checkpoint_path)
    assert ckpt["step"] == 5 and ckpt["data"] == {"name": "digits"}
    # the model handed to plots is the trained one, on the CPU, in eval mode
    snapshot = run.model
    assert not snapshot.training
    for (name, p), q in zip(snapshot.state_dict().items(), model.state_dict().values()):
        torch.testing.assert_close(p, q, msg=name)
    with pytest.raises(RuntimeError, match="already started"):
        run.start()


def test_full_epoch_has_validation_record(digits, tmp_path):
    run = _run(digits, tmp_path).start()
    assert run.join(TIMEOUT) and run.status == "finished"
    val = [r for r in run.history if r["kind"] == "val"]
    assert len(val) == 1 and val[0]["epoch"] == 1 and val[0]["step"] == 21  # ceil(1297 / 64)
    assert load_model(run.checkpoint_path)[1]["epoch"] == 1


def test_stop_ends_early_and_leaves_loadable_checkpoint(digits, tmp_path):
    run = _run(digits, tmp_path, epochs=50)
    run.start()
    _wait(lambda: run.step >= 3)
    run.stop()
    assert run.join(TIMEOUT)
    assert run.status == "stopped"
    assert run.history[-1] == {"kind": "end", "step": run.history[-2]["step"],
                               "epoch": run.history[-2]["epoch"], "stopped": True}
    steps = run.history[-1]["step"]
    assert steps < 50 * digits[0].num_batches(64)
    model, ckpt = load_model(run.checkpoint_path)
    assert ckpt["step"] == steps
    for p, q in zip(model.state_dict().values(), run.model.state_dict().values()):
        torch.testing.assert_close(p, q)


def test_pause_blocks_progress_and_resume_continues(digits, tmp_path):
    run = _run(digits, tmp_path, epochs=5, max_steps=30)
    run.start()
    _wait(lambda: run.step >= 2)
    run.pause()
    assert run.status == "paused"
    assert run.wait_paused(TIMEOUT)
    held = len(run.history)
    time.sleep(0.3)
    assert len(run.history) == held and run.active
    # the snapshot of a paused run is its current parameters
    assert run.model is not None
    run.resume()
    assert run.status == "running"
    assert run.join(TIMEOUT)
    assert run.status == "finished" and run.step == 30


def test_stop_while_paused(digits, tmp_path):
    run = _run(digits, tmp_path, epochs=50).start()
    _wait(lambda: run.step >= 1)
    run.pause()
    assert run.wait_paused(TIMEOUT)
    run.stop()
    assert run.join(TIMEOUT) and run.status == "stopped"


def test_diverging_run_reports_failure(digits, tmp_path):
    run = _run(digits, tmp_path, max_steps=20, lr=1e30, clip_norm=1e30)
    run.start()
    assert run.join(TIMEOUT)
    assert run.status.startswith("failed: non-finite")
    assert "Lower the learning rate" in run.status
    assert not run.active


def test_failure_from_fit_is_reported(digits, tmp_path):
    train_data, val, _ = digits
    model = make_model("vae", train_data, {"hidden_dims": [8]})
    model.config.x_dim = 10  # fit rejects a model sized for other data
    run = TrainingRun(model, train_data, val,
                      TrainConfig(progress=False, max_steps=2, out_dir=str(tmp_path))).start()
    assert run.join(TIMEOUT)
    assert run.status.startswith("failed: ValueError: model x_dim=10")
    assert isinstance(run.error, ValueError)


def test_no_second_concurrent_run(digits, tmp_path):
    first = _run(digits, tmp_path, epochs=50).start()
    try:
        _wait(lambda: first.step >= 1)
        train_data, val, _ = digits
        with pytest.raises(RuntimeError, match="already running"):
            start_run(first, make_model("vae", train_data, {}), train_data, val,
                      TrainConfig(progress=False, max_steps=1, out_dir=str(tmp_path / "b")))
    finally:
        first.stop()
        assert first.join(TIMEOUT)
    second = start_run(first, make_model("vae", train_data, {"hidden_dims": [8]}), train_data,
                       val, TrainConfig(progress=False, max_steps=2, out_dir=str(tmp_path / "b")))
    assert second.join(TIMEOUT) and second.status == "finished"


def test_resume_from_checkpoint_continues_the_count(digits, tmp_path):
    first = _run(digits, tmp_path, max_steps=4).start()
    assert first.join(TIMEOUT)
    train_data, val, _ = digits
    model, _ = load_model(first.checkpoint_path)
    second = TrainingRun(model, train_data, val,
                         TrainConfig(batch_size=64, progress=False, max_steps=7,
                                     out_dir=str(tmp_path / "second")),
                         resume=first.checkpoint_path).start()
    assert second.join(TIMEOUT) and second.status == "finished"
    train_steps = [r["step"] for r in second.history if r["kind"] == "train"]
    assert train_steps == [1, 2, 3, 4, 5, 6, 7]  # the first four come from the checkpoint
    assert load_model(second.checkpoint_path)[1]["step"] == 7


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
