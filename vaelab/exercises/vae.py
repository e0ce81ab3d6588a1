"""Checkers for notebook 01 (the VAE and its ELBO): the Gaussian KL in log-variance form, the
reparameterised sample and the importance-weighted (IWAE) bound.

Each ``check_*`` calls the student's function on random inputs, compares with the library
(``torch.distributions`` and the formula of :func:`vaelab.objectives.importance_log_likelihood`)
and raises :class:`~vaelab.exercises.Mistake` naming the typical error when it disagrees.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor
from torch.distributions import Independent, Normal, kl_divergence

from vaelab.exercises.common import Mistake, check_close, check_shape, not_written

# batch and latent sizes differ, so a sum over the wrong axis shows in the shape
B, J, K = 5, 3, 7


def _inputs(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _call(name: str, fn: Callable, *args: Tensor) -> object:
    try:
        return fn(*args)
    except NotImplementedError as err:
        raise not_written(name, err) from None
    except Exception as err:  # a crash in the student's code: say where, keep the cause
        raise Mistake(f"{name} raised {type(err).__name__}: {err}") from err


def _standard_kl(mu: Tensor, logvar: Tensor) -> Tensor:
    q = Independent(Normal(mu, (0.5 * logvar).exp()), 1)
    p = Independent(Normal(torch.zeros_like(mu), torch.ones_like(mu)), 1)
    return kl_divergence(q, p)


def check_gaussian_kl(gaussian_kl: Callable[[Tensor, Tensor], Tensor]) -> None:
    """``gaussian_kl(mu [B, J], logvar [B, J]) -> [B]``: KL(N(mu, diag exp(logvar)) || N(0, I))
    per example, compared with ``torch.distributions.kl_divergence``."""
    g = _inputs(0)
    mu = torch.randn(B, J, generator=g, dtype=torch.float64)
    logvar = torch.randn(B, J, generator=g, dtype=torch.float64)
    got = _call("gaussian_kl", gaussian_kl, mu, logvar)
    if isinstance(got, Tensor) and tuple(got.shape) == (J,):
        raise Mistake(f"gaussian_kl returned shape [{J}] for mu of shape [{B}, {J}]: you summed "
                      f"over the batch (dim 0); sum over the latent dimensions (dim=-1) and "
                      f"keep one KL per example")
    if isinstance(got, Tensor) and tuple(got.shape) == (B, J):
        raise Mistake(f"gaussian_kl returned shape [{B}, {J}]: one KL per dimension; sum over "
                      f"the latent dimensions (dim=-1) to get one KL per example")
    if isinstance(got, Tensor) and got.dim() == 0:
        raise Mistake("gaussian_kl returned a single number: keep one KL per example (sum "
                      "over dim=-1 only, not over the batch)")
    check_shape("gaussian_kl", got, (B,))
    expected = _standard_kl(mu, logvar)
    var = logvar.exp()
    hints = {
        "it is twice the KL: is the factor 1/2 missing?": 2 * expected,
        "it is half the KL: the factor 1/2 is applied twice": expected / 2,
        "it has the wrong sign: KL = -1/2 sum(1 + logvar - mu^2 - exp(logvar)) is >= 0":
            -expected,
        "you treated exp(logvar) as the standard deviation (variance passed as scale): the "
        "variance is exp(logvar), the scale exp(logvar / 2)": _standard_kl(mu, 2 * logvar),
        "you averaged over the latent dimensions: the KL of independent dimensions is their "
        "sum": expected / J,
        "the mu^2 term is missing (or has the wrong sign)":
            -0.5 * (1 + logvar + mu**2 - var).sum(-1),
        "you used logvar where exp(logvar) belongs (the variance)":
            -0.5 * (1 + logvar - mu**2 - logvar).sum(-1),
        "the constant 1 inside the sum is missing": -0.5 * (logvar - mu**2 - var).sum(-1),
        "you used exp(2 logvar): exp(logvar) already is the variance sigma^2 (logvar is the "
        "log of the variance, not of the standard deviation)":
            -0.5 * (1 + logvar - mu**2 - (2 * logvar).exp()).sum(-1),
        "mu enters squared: the term is mu^2, not mu": -0.5 * (1 + logvar - mu - var).sum(-1),
    }
    check_close("gaussian_kl", got, expected, hints=hints)


def check_reparameterize(reparameterize: Callable[[Tensor, Tensor, Tensor], Tensor]) -> None:
    """``reparameterize(mu, logvar, eps) -> z = mu + exp(logvar / 2) * eps``, all ``[B, J]``:
    the same values as ``Normal(mu, scale).rsample()`` with that noise, and gradients that
    reach ``mu`` and ``logvar``."""
    g = _inputs(1)
    mu = torch.randn(B, J, generator=g, dtype=torch.float64, requires_grad=True)
    logvar = torch.randn(B, J, generator=g, dtype=torch.float64, requires_grad=True)
    eps = torch.randn(B, J, generator=g, dtype=torch.float64)
    got = _call("reparameterize", reparameterize, mu, logvar, eps)
    check_shape("reparameterize", got, (B, J))
    m, lv = mu.detach(), logvar.detach()
    expected = m + (0.5 * lv).exp() * eps
    hints = {
        "you multiplied eps by the variance exp(logvar): the scale is exp(logvar / 2), its "
        "square root": m + lv.exp() * eps,
        "you used logvar itself as the scale: the scale is exp(logvar / 2)": m + lv * eps,
        "you subtracted the noise term: z = mu + scale * eps": m - (0.5 * lv).exp() * eps,
        "you returned the mean: z must include the noise scale * eps": m,
        "you ignored the mean: z = mu + scale * eps": (0.5 * lv).exp() * eps,
        "the scale should multiply eps, not be added to it": m + (0.5 * lv).exp() + eps,
    }
    try:
        check_close("reparameterize", got, expected, hints=hints)
    except Mistake as err:
        if "is not right" in str(err) or "NaN" in str(err):
            raise
        raise Mistake(f"{err}; use the eps passed in (do not draw your own noise) and "
                      f"exp(logvar / 2) as the scale") from None
    if not got.requires_grad:
        raise Mistake("no gradient flows from z to mu and logvar: build z from them with "
                      "torch operations (no .detach(), .item(), torch.tensor(...) or "
                      ".sample())")
    grad_mu, grad_logvar = torch.autograd.grad(got.sum(), (mu, logvar), allow_unused=True)
    if grad_mu is None or grad_logvar is None:
        missing = "mu" if grad_mu is None else "logvar"
        raise Mistake(f"z does not depend on {missing} through the graph: build z from "
                      f"{missing} with torch operations")
    check_close("the gradient dz/dlogvar", grad_logvar, 0.5 * (0.5 * lv).exp() * eps)
    check_close("the gradient dz/dmu", grad_mu, torch.ones_like(m))


def check_iwae(iwae_bound: Callable[[Tensor, Tensor, Tensor], Tensor]) -> None:
    """``iwae_bound(log_px_z [K, B], log_pz [K, B], log_qz [K, B]) -> [B]``: the importance-
    weighted bound log (1/K) sum_k p(x | z_k) p(z_k) / q(z_k | x) per example (Burda et al.
    2016), as :func:`vaelab.objectives.importance_log_likelihood` combines its log-weights."""
    g = _inputs(2)
    # log-likelihoods of hundreds of nats, as for images: exp() of them underflows to 0 even
    # in double precision
    log_px_z = -800 + 2 * torch.randn(K, B, generator=g, dtype=torch.float64)
    log_pz = -2 - torch.rand(K, B, generator=g, dtype=torch.float64)
    log_qz = -1 + torch.randn(K, B, generator=g, dtype=torch.float64)
    got = _call("iwae_bound", iwae_bound, log_px_z, log_pz, log_qz)
    if isinstance(got, Tensor) and tuple(got.shape) == (K,):
        raise Mistake(f"iwae_bound returned shape [{K}] for inputs [{K}, {B}]: you combined "
                      f"over the batch (dim 1); the K samples are dim 0")
    check_shape("iwae_bound", got, (B,))
    if not torch.isfinite(got.detach()).all():
        raise Mistake("iwae_bound returned -inf or NaN: exp() of log-weights near -800 "
                      "underflows to 0; combine them with torch.logsumexp(log_w, dim=0)")
    log_w = log_px_z + log_pz - log_qz
    expected = torch.logsumexp(log_w, dim=0) - math.log(K)
    hints = {
        "it is log sum_k w_k: subtract log K to average the weights":
            torch.logsumexp(log_w, dim=0),
        "it is the mean of the log-weights, the K-sample ELBO, not the log of the mean "
        "weight: use logsumexp": log_w.mean(dim=0),
        "the sign of log q(z | x) is wrong: log w = log p(x | z) + log p(z) - log q(z | x)":
            torch.logsumexp(log_px_z + log_pz + log_qz, dim=0) - math.log(K),
        "the sign of log p(z) is wrong: log w = log p(x | z) + log p(z) - log q(z | x)":
            torch.logsumexp(log_px_z - log_pz - log_qz, dim=0) - math.log(K),
        "log p(z) is missing from the log-weight":
            torch.logsumexp(log_px_z - log_qz, dim=0) - math.log(K),
        "you took the maximum log-weight: logsumexp averages all K weights":
            log_w.max(dim=0).values,
        "you divided the log by K: the 1/K is inside the log, log (1/K) sum_k w_k = "
        "logsumexp(log_w, dim=0) - log K": torch.logsumexp(log_w, dim=0) / K,
    }
    check_close("iwae_bound", got, expected, hints=hints)


__all__ = ["check_gaussian_kl", "check_iwae", "check_reparameterize"]
