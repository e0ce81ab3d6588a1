"""Shared test helpers."""

from __future__ import annotations

import torch
from torch import nn

from vaelab.objectives import loss
from vaelab.train import TrainConfig

# the CLI arguments of the smallest real training run: a VAE on the built-in digits
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


def assert_every_parameter_gets_gradient(model: nn.Module, batch) -> None:
    """Backpropagate ``loss(model.elbo(batch))`` and assert every named parameter receives a
    finite gradient that is not all zero; the failure message names every offender."""
    model.zero_grad(set_to_none=True)
    value = loss(model.elbo(batch))
    if not torch.isfinite(value):
        raise AssertionError(f"loss is not finite: {value.item()}")
    value.backward()
    missing, non_finite, zero = [], [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if p.grad is None:
            missing.append(name)
        elif not torch.isfinite(p.grad).all():
            non_finite.append(name)
        elif not (p.grad != 0).any():
            zero.append(name)
    problems = [
        f"{label}: {names}"
        for label, names in (
            ("no grad", missing),
            ("non-finite grad", non_finite),
            ("all-zero grad", zero),
        )
        if names
    ]
    assert not problems, "parameters without a useful gradient -- " + "; ".join(problems)


def config(tmp_path=None, **kw) -> TrainConfig:
    """A small TrainConfig for trainer tests; ``tmp_path`` becomes its out_dir."""
    base = {
        "epochs": 2,
        "batch_size": 32,
        "lr": 3e-3,
        "anneal_epochs": 1.0,
        "lr_decay": 0.99,
        "progress": False,
        "device": "cpu",
        "out_dir": None if tmp_path is None else str(tmp_path),
    }
    return TrainConfig(**{**base, **kw})


def timeless(history: list[dict]) -> list[dict]:
    """History without the wall-clock field, which differs between runs."""
    return [{k: v for k, v in r.items() if k != "seconds"} for r in history]


def finished_runs(folder):
    """Fill ``folder`` as a dashboard's runs folder: two finished one-epoch SSM runs on the
    pendulum, ``b1`` and ``b4`` (beta 1 and 4), ``stopped`` (stopped after 3 steps), and what
    else a folder gathers: a damaged checkpoint (``damaged/checkpoint.pt``), a foreign pickle
    (``foreign.pt``, which would create ``planted`` if it were ever unpickled), a text file, a
    run folder without a checkpoint yet and a hidden file. Returns ``folder``."""
    from pathlib import Path

    from vaelab.config import make_model
    from vaelab.live import builtin_dataset
    from vaelab.train import fit

    folder = Path(folder)
    train, val, _ = builtin_dataset("pendulum")
    for name, beta, callback in (
        ("b1", 1.0, None),
        ("b4", 4.0, None),
        ("stopped", 1.0, lambda r: r["step"] < 3),
    ):
        torch.manual_seed(0)
        model = make_model("ssm", train, {"z_dim": 4, "hidden_dim": 8, "rnn_dim": 8})
        fit(
            model,
            train,
            val,
            TrainConfig(
                epochs=1,
                batch_size=100,
                beta=beta,
                progress=False,
                device="cpu",
                out_dir=str(folder / name),
            ),
            callback=callback,
            data_spec={"name": "pendulum"},
        )
    (folder / "damaged").mkdir()
    good = (folder / "b1" / "checkpoint.pt").read_bytes()
    (folder / "damaged" / "checkpoint.pt").write_bytes(good[: len(good) // 2])
    torch.save({"weights": _Planted(folder / "planted")}, folder / "foreign.pt")
    (folder / "notes.txt").write_text("beta = 4 looked better")
    (folder / "empty-run").mkdir()
    (folder / ".hidden.pt").write_bytes(b"x")
    return folder


class _Planted:
    """A pickled object whose loading would create a file: vaelab must never run it."""

    def __init__(self, marker) -> None:
        self.marker = marker

    def __reduce__(self):
        from pathlib import Path

        return (Path.touch, (Path(self.marker),))
