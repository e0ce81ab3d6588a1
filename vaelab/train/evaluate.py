"""Held-out figures: the ELBO (a bound) and the importance-sampled NLL (an estimate of
-log p(x)), per observed step (per example for static data)."""

from __future__ import annotations

import torch
from tqdm.auto import tqdm

from vaelab.data import Data
from vaelab.objectives import importance_log_likelihood
from vaelab.protocol import Model


@torch.no_grad()
def evaluate_elbo(
    model: Model,
    data: Data,
    batch_size: int = 256,
    samples: int = 1,
    device: torch.device | None = None,
) -> dict:
    """Returns ``{"nelbo", "log_likelihood", "kl"}`` per observed step (per example for static
    data), each ELBO averaged over ``samples`` draws from the guide."""
    if samples < 1:
        raise ValueError(f"samples must be >= 1 guide draws per example, got {samples}")
    device = device or next(model.parameters()).device
    was_training = model.training
    model.eval()
    total = {"elbo": 0.0, "log_likelihood": 0.0, "kl": 0.0}
    steps = 0.0
    generator = torch.Generator().manual_seed(0)  # fixed binarisation for comparable figures
    for batch in data.batches(batch_size, shuffle=False, generator=generator):
        batch = batch.to(device)
        for _ in range(samples):
            t = model.elbo(batch)
            total["elbo"] += float(t.elbo.sum()) / samples
            total["log_likelihood"] += float(t.log_likelihood.sum()) / samples
            total["kl"] += float(t.kl.sum()) / samples
        steps += float(t.steps.sum())
    model.train(was_training)
    return {
        "nelbo": -total["elbo"] / steps,
        "log_likelihood": total["log_likelihood"] / steps,
        "kl": total["kl"] / steps,
    }


@torch.no_grad()
def evaluate_nll(
    model: Model,
    data: Data,
    num_samples: int = 1000,
    batch_size: int = 16,
    chunk_size: int | None = None,
    device: torch.device | None = None,
    progress: bool = False,
) -> float:
    """Importance-sampled NLL per observed step (per example for static data): an estimate of
    -log p(x), not a bound. See :func:`vaelab.objectives.importance_log_likelihood`; the default
    ``chunk_size`` fits each chunk to its batch's length, so long sequences stay within memory."""
    device = device or next(model.parameters()).device
    was_training = model.training
    model.eval()
    total, steps = 0.0, 0.0
    generator = torch.Generator().manual_seed(0)
    batches = data.batches(batch_size, shuffle=False, generator=generator)
    for batch in tqdm(
        batches, total=data.num_batches(batch_size), disable=not progress, desc="IS log p(x)"
    ):
        batch = batch.to(device)
        total += float(importance_log_likelihood(model, batch, num_samples, chunk_size).sum())
        steps += float(batch.mask.sum()) if batch.mask is not None else len(batch)
    model.train(was_training)
    return -total / steps
