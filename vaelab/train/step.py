"""One optimiser step: the annealed ELBO loss, its gradient, the clip, the update."""

from __future__ import annotations

import math

import torch
from torch import nn

from vaelab import distributed
from vaelab.data import Batch
from vaelab.objectives import elbo_samples, kl_weight, loss
from vaelab.train import deferred, optim
from vaelab.train.config import TrainConfig
from vaelab.train.guard import TrainingDiverged, check_step


def train_step(
    model: nn.Module,
    batch: Batch,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    config: TrainConfig,
    step: int,
    anneal_steps: int = 0,
    weight_decay: float = 0.0,
    ctx: distributed.Context | None = None,
    sync: bool = True,
    recipe: optim.Adam | None = None,
    limit: float = math.inf,
) -> dict:
    """One optimiser step on ``batch``, which is step ``step + 1`` of the run; returns its
    metrics record (``kind="train"``). Under torchrun (``ctx``, ``model`` wrapped in
    DistributedDataParallel) ``batch`` is this process's share of the global batch, and loss
    and metrics are the global batch's.

    The loss is the annealed ELBO per observed step (KL weight ``config.beta`` times the
    linear warm-up over ``anneal_steps``); ``recipe.before_clip`` may change its gradient
    (:mod:`vaelab.train.optim`), which is then clipped to ``config.clip_norm``.

    Raises :class:`TrainingDiverged` on a non-finite loss, one beyond ``config.max_abs_loss``
    or ``limit`` (the run's recent level, :class:`vaelab.train.guard.Level`), or a non-finite
    gradient, before the parameters are updated. ``sync=False`` (fit's ``sync_every``) reads
    nothing from the device: see :mod:`vaelab.train.deferred`.
    """
    terms = _elbo(model, batch, config, step)
    w = config.beta * kl_weight(step, anneal_steps, config.min_kl_weight)
    ctx = ctx or distributed.Context()
    if ctx.active:  # the metrics' sums over processes: [elbo, log-lik, kl, steps, loss]
        objective, sums = distributed.global_loss(terms, w, ctx)
    else:
        objective = loss(terms, w)
        sums = torch.stack(
            [
                terms.elbo.sum(),
                terms.log_likelihood.sum(),
                terms.kl.sum(),
                terms.steps.sum(),
                objective,
            ]
        ).detach()
    record = {"kind": "train", "step": step + 1, "epoch": None, "kl_weight": w}
    if sync:  # a bad loss stops here, before the backward pass
        values = sums.tolist()
        check_step(step + 1, values, config.max_abs_loss, limit)
    optimizer.zero_grad(set_to_none=True)
    objective.backward()
    params = list(model.parameters())
    (recipe or optim.Adam()).before_clip(
        params, config, values[3] if sync else sums[3], weight_decay
    )
    grad_norm = nn.utils.clip_grad_norm_(params, config.clip_norm).detach()
    if sync:
        values.append(float(grad_norm))
        check_step(step + 1, values, config.max_abs_loss, limit)
    else:
        deferred.flag_divergence(optimizer, sums, grad_norm, config.max_abs_loss, limit)
    optimizer.step()
    scheduler.step()
    record["lr"] = scheduler.get_last_lr()[0]
    if sync:
        return deferred.values(record, values)
    record["device"] = torch.cat([sums, grad_norm.to(sums.dtype)[None]])
    return record


def _elbo(model: nn.Module, batch: Batch, config: TrainConfig, step: int):
    """The ELBO terms of ``config.train_samples`` guide draws; a distribution's argument check
    failing is divergence once the run has trained (the data passed it before), and the
    data's fault on a run's first step."""
    try:
        return elbo_samples(model, batch, config.train_samples)
    except ValueError as err:
        # torch.distributions' argument checks reject NaN/inf parameters (or a scale of
        # exactly 0) before the loss exists: that is divergence, not bad input
        reason = str(err).split(", but found invalid values")[0]  # no tensor dump
        if "satisfy the constraint" in str(err) or not _all_finite(model):
            raise TrainingDiverged(f"non-finite parameters at step {step + 1}") from err
        if step > 0:
            raise TrainingDiverged(
                f"the model's distributions rejected their arguments at step {step + 1} "
                f"({reason}), on data that earlier steps trained on: the parameters left the "
                f"region where the model is defined"
            ) from err
        name = (
            model.module.name
            if isinstance(model, nn.parallel.DistributedDataParallel)
            else model.name
        )
        raise ValueError(f"{name} cannot train on this data: {reason}") from err


def _all_finite(model: nn.Module) -> bool:
    return all(bool(torch.isfinite(p).all()) for p in model.parameters())
