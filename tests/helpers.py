"""Shared test helpers."""

from __future__ import annotations

import torch
from torch import nn

from vaelab.objectives import loss
from vaelab.train import TrainConfig


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
        for label, names in (("no grad", missing), ("non-finite grad", non_finite),
                             ("all-zero grad", zero))
        if names
    ]
    assert not problems, "parameters without a useful gradient -- " + "; ".join(problems)


def config(tmp_path=None, **kw) -> TrainConfig:
    """A small TrainConfig for trainer tests; ``tmp_path`` becomes its out_dir."""
    base = {"epochs": 2, "batch_size": 32, "lr": 3e-3, "anneal_epochs": 1.0, "lr_decay": 0.99,
            "progress": False, "device": "cpu",
            "out_dir": None if tmp_path is None else str(tmp_path)}
    return TrainConfig(**{**base, **kw})


def timeless(history: list[dict]) -> list[dict]:
    """History without the wall-clock field, which differs between runs."""
    return [{k: v for k, v in r.items() if k != "seconds"} for r in history]
