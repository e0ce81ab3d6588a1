"""The ELBO's pieces: per-example terms, KL (analytic or Monte Carlo), the training loss with
KL annealing, and the importance-sampled log-likelihood shared by every model."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor
from torch.distributions import Distribution, kl_divergence

if TYPE_CHECKING:
    from vaelab.data import Batch


@dataclass
class ELBOTerms:
    """Per-example ELBO terms, each ``[B]``, summed over time, unweighted.

    ``log_likelihood`` is E_q[log p(x | z)] (one reparameterised sample), ``kl`` is
    KL(q(z | x) || p(z)) (analytic or a one-sample estimate), ``steps`` the number of observed
    time steps (1 for a static model).
    """

    log_likelihood: Tensor
    kl: Tensor
    steps: Tensor

    @property
    def elbo(self) -> Tensor:
        return self.log_likelihood - self.kl


def kl_term(q: Distribution, p: Distribution, z: Tensor, analytic: bool) -> Tensor:
    """Returns KL(q || p) per example: ``kl_divergence`` when ``analytic``, else the one-sample
    estimate ``log q(z) - log p(z)`` at the reparameterised sample ``z`` drawn from q."""
    if analytic:
        return kl_divergence(q, p)
    return q.log_prob(z) - p.log_prob(z)


def masked_sum(x: Tensor, mask: Tensor | None) -> Tensor:
    """Sum ``x [B, T]`` over time where ``mask [B, T]`` is True. ``torch.where`` rather than a
    product, because padding may hold inf or NaN and ``0 * inf`` is NaN."""
    if mask is None:
        return x.sum(dim=1)
    return torch.where(mask, x, torch.zeros_like(x)).sum(dim=1)


def elbo_samples(model: torch.nn.Module, batch: Batch, samples: int = 1, **kw) -> ELBOTerms:
    """Returns the ELBO terms of ``samples`` guide draws per example, ``[S*B]`` each,
    sample-major like ``batch.repeat(S)``; :func:`loss` on them averages the S ELBOs.

    The model is called through ``forward`` (:meth:`vaelab.protocol.Model.forward`), so
    ``model`` may be wrapped in DistributedDataParallel; a model that shares the work not
    depending on the draw (the DMM's backward RNN) does, any other sees the batch repeated.
    ``kw`` goes to ``model.elbo`` (e.g. ``analytic_kl=False``).
    """
    if samples < 1:
        raise ValueError(f"samples must be >= 1, got {samples}")
    return model(batch, samples=samples, **kw)


def loss(terms: ELBOTerms, kl_weight: float = 1.0) -> Tensor:
    """Training loss: ``-(log_likelihood - kl_weight * kl)`` summed over the batch and divided
    by the number of observed steps (per sample for a static model)."""
    return -(terms.log_likelihood - kl_weight * terms.kl).sum(dim=0) / terms.steps.sum(dim=0)


def kl_weight(step: int, anneal_steps: int, min_weight: float) -> float:
    """Linear KL annealing (Krishnan et al. 2017): ``min_weight`` at step 0 rising to 1 at
    ``anneal_steps``, then 1."""
    if anneal_steps <= 0:
        return 1.0
    return min(1.0, min_weight + (1.0 - min_weight) * step / anneal_steps)


# Rows (path x sequence x time step) one chunk of importance samples may hold, so that long
# sequences (Piano-midi, thousands of steps) cannot exhaust memory: evaluating Piano-midi's and
# MuseData's test sets in batches of 16 peaked at 2.2 and 3.5 GB resident (README).
IS_CHUNK_ROWS = 2**18


def auto_chunk_size(batch: Batch, num_samples: int) -> int:
    """The largest number of paths per chunk, at most ``num_samples``, whose rows
    (paths x examples x padded steps) stay within ``IS_CHUNK_ROWS``; at least 1."""
    rows_per_path = batch.x.shape[0] * (batch.x.shape[1] if batch.mask is not None else 1)
    return max(1, min(num_samples, IS_CHUNK_ROWS // max(rows_per_path, 1)))


@torch.no_grad()
def importance_log_likelihood(
    model: torch.nn.Module, batch: Batch, num_samples: int = 1000, chunk_size: int | None = None
) -> Tensor:
    """Returns the importance-sampled estimate of log p(x) per example, ``[B]``.

    log p(x) ~= log (1/K) sum_k p(x, z_k) / q(z_k | x), z_k ~ q(z | x)   (Burda et al. 2016,
    arXiv:1509.00519). A one-sample Monte Carlo ELBO is exactly ``log p(x, z) - log q(z | x)``,
    so any model following the protocol works: the batch is repeated ``chunk_size`` times, the
    Monte Carlo ELBO taken (see :func:`elbo_samples`), and the K log-weights combined with
    ``logsumexp``. It is a stochastic lower bound on log p(x) that tightens as K grows.
    ``chunk_size=None`` picks it from the batch's size (:func:`auto_chunk_size`).
    """
    if num_samples < 1 or (chunk_size is not None and chunk_size < 1):
        raise ValueError(
            f"num_samples and chunk_size must be >= 1, got {num_samples} and {chunk_size}"
        )
    if chunk_size is None:
        chunk_size = auto_chunk_size(batch, num_samples)
    chunks = []
    remaining = num_samples
    while remaining > 0:
        k = min(chunk_size, remaining)
        terms = elbo_samples(model, batch, k, analytic_kl=False)  # one RNN pass in the DMM
        chunks.append(terms.elbo.view(k, len(batch)))  # [k, B], sample-major
        remaining -= k
    log_w = torch.cat(chunks, dim=0)  # [K, B]
    return torch.logsumexp(log_w, dim=0) - math.log(num_samples)
