"""Checkers for notebook 01 (the VAE and its ELBO): the Gaussian KL in log-variance form, the
reparameterised sample and the importance-weighted (IWAE) bound.

Each ``check_*`` calls the student's function on random inputs, compares with the library
(``torch.distributions`` and the formula of :func:`vaelab.objectives.importance_log_likelihood`)
and raises :class:`~vaelab.exercises.Mistake` naming the typical error when it disagrees.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable

import torch
from torch import Tensor
from torch.distributions import Independent, Normal, kl_divergence

from vaelab.exercises.common import (
    Mistake,
    call_student,
    cast,
    check_close,
    check_shape,
    watch_module,
)
from vaelab.objectives import ELBOTerms, importance_log_likelihood, kl_weight, loss

# batch and latent sizes differ, so a sum over the wrong axis shows in the shape
B, J, K = 5, 3, 7
# mu and logvar shapes the KL is tried on: a batch, one example (1-D) and two batch axes with
# odd sizes, so that .sum(dim=1) or .sum(dim=0) cannot pass by coincidence
KL_SHAPES = ((B, J), (J + 4,), (2, 3, 5))


def _inputs(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _standard_kl(mu: Tensor, logvar: Tensor) -> Tensor:
    q = Independent(Normal(mu, (0.5 * logvar).exp()), 1)
    p = Independent(Normal(torch.zeros_like(mu), torch.ones_like(mu)), 1)
    return kl_divergence(q, p)


def check_gaussian_kl(gaussian_kl: Callable[[Tensor, Tensor], Tensor]) -> None:
    """``gaussian_kl(mu [..., J], logvar [..., J]) -> [...]``: KL(N(mu, diag exp(logvar)) ||
    N(0, I)) per example, compared with ``torch.distributions.kl_divergence`` on a batch
    ``[B, J]``, one example ``[J]`` and two batch axes, in float64 and float32. Calling
    ``kl_divergence`` (the library's answer) is named as such."""
    g = _inputs(0)
    cases = [(shape, torch.float64) for shape in KL_SHAPES] + [((B, J), torch.float32)]
    for shape, dtype in cases:
        (mu, logvar), (mu64, logvar64) = cast(
            dtype,
            torch.randn(shape, generator=g, dtype=torch.float64),
            torch.randn(shape, generator=g, dtype=torch.float64),
        )
        got = call_student(
            "gaussian_kl",
            gaussian_kl,
            mu.clone(),
            logvar.clone(),
            forbidden={
                kl_divergence: "torch.distributions.kl_divergence is the library's "
                "answer; write the closed form"
            },
            context=f"\n(here mu and logvar are {list(shape)}: the latent dimensions are the "
            f"last axis, and there may be any number of batch axes before it, or none; "
            f"sum over dim=-1)",
        )
        _check_kl(got, mu64, logvar64, dtype)


def _check_kl(got: object, mu: Tensor, logvar: Tensor, dtype: torch.dtype) -> None:
    shape, batch = tuple(mu.shape), tuple(mu.shape[:-1])
    j = shape[-1]
    if isinstance(got, Tensor) and tuple(got.shape) != batch:
        have = tuple(got.shape)
        if have == shape:
            raise Mistake(
                f"gaussian_kl returned shape {list(have)}: one KL per dimension; sum "
                f"over the latent dimensions (dim=-1) to get one KL per example"
            )
        if got.dim() == 0 and batch:
            raise Mistake(
                "gaussian_kl returned a single number: keep one KL per example (sum "
                "over dim=-1 only, not over the batch)"
            )
        for d in range(len(shape) - 1):
            if have == shape[:d] + shape[d + 1 :]:
                raise Mistake(
                    f"gaussian_kl returned shape {list(have)} for mu of shape "
                    f"{list(shape)}: you summed over dim {d}, a batch axis; sum over "
                    f"the latent dimensions, the last axis (dim=-1), and keep one KL "
                    f"per example"
                )
    check_shape("gaussian_kl", got, batch)
    expected = _standard_kl(mu, logvar)
    var = logvar.exp()
    hints = {
        "it is twice the KL: is the factor 1/2 missing?": 2 * expected,
        "it is half the KL: the factor 1/2 is applied twice": expected / 2,
        "it has the wrong sign: KL = -1/2 sum(1 + logvar - mu^2 - exp(logvar)) is >= 0": -expected,
        "you treated exp(logvar) as the standard deviation (variance passed as scale): the "
        "variance is exp(logvar), the scale exp(logvar / 2)": _standard_kl(mu, 2 * logvar),
        "you averaged over the latent dimensions: the KL of independent dimensions is their "
        "sum": expected / j,
        "the mu^2 term is missing (or has the wrong sign)": -0.5
        * (1 + logvar + mu**2 - var).sum(-1),
        "you used logvar where exp(logvar) belongs (the variance)": -0.5
        * (1 + logvar - mu**2 - logvar).sum(-1),
        "the constant 1 inside the sum is missing": -0.5 * (logvar - mu**2 - var).sum(-1),
        "you used exp(2 logvar): exp(logvar) already is the variance sigma^2 (logvar is the "
        "log of the variance, not of the standard deviation)": -0.5
        * (1 + logvar - mu**2 - (2 * logvar).exp()).sum(-1),
        "mu enters squared: the term is mu^2, not mu": -0.5 * (1 + logvar - mu - var).sum(-1),
    }
    check_close("gaussian_kl", got, expected, hints=hints, dtype=dtype)


def check_reparameterize(reparameterize: Callable[[Tensor, Tensor, Tensor], Tensor]) -> None:
    """``reparameterize(mu, logvar, eps) -> z = mu + exp(logvar / 2) * eps``, all ``[B, J]``:
    the same values as ``Normal(mu, scale).rsample()`` with that noise, and gradients that
    reach ``mu`` and ``logvar``; in float64 and float32."""
    g = _inputs(1)
    for dtype in (torch.float64, torch.float32):
        (mu0, lv0, eps), (m, lv, eps64) = cast(
            dtype, *(torch.randn(B, J, generator=g, dtype=torch.float64) for _ in range(3))
        )
        mu, logvar = mu0.clone().requires_grad_(True), lv0.clone().requires_grad_(True)
        got = call_student(
            "reparameterize",
            reparameterize,
            mu,
            logvar,
            eps.clone(),
            forbidden={
                Normal.rsample: "Normal(...).rsample() draws its own "
                "noise; write z from mu, logvar and the eps passed in"
            },
        )
        got = check_shape("reparameterize", got, (B, J))
        expected = m + (0.5 * lv).exp() * eps64
        hints = {
            "you multiplied eps by the variance exp(logvar): the scale is exp(logvar / 2), "
            "its square root": m + lv.exp() * eps64,
            "you used logvar itself as the scale: the scale is exp(logvar / 2)": m + lv * eps64,
            "you subtracted the noise term: z = mu + scale * eps": m - (0.5 * lv).exp() * eps64,
            "you returned the mean: z must include the noise scale * eps": m,
            "you ignored the mean: z = mu + scale * eps": (0.5 * lv).exp() * eps64,
            "the scale should multiply eps, not be added to it": m + (0.5 * lv).exp() + eps64,
        }
        try:
            check_close("reparameterize", got, expected, hints=hints, dtype=dtype)
        except Mistake as err:
            if "is not right" in str(err) or "NaN" in str(err) or "returned" in str(err):
                raise
            raise Mistake(
                f"{err}; use the eps passed in (do not draw your own noise) and "
                f"exp(logvar / 2) as the scale"
            ) from None
        if not got.requires_grad:
            raise Mistake(
                "no gradient flows from z to mu and logvar: build z from them with "
                "torch operations (no .detach(), .item(), torch.tensor(...) or "
                ".sample())"
            )
        try:
            grad_mu, grad_logvar = torch.autograd.grad(got.sum(), (mu, logvar), allow_unused=True)
        except RuntimeError as err:  # e.g. an input or an intermediate modified in place
            raise Mistake(
                f"the gradient of your z cannot be computed: {err}. Your function "
                f"modified a tensor in place (x += ..., x.exp_(), x[...] = ...) "
                f"that the gradient needs; use out-of-place operations "
                f"(x = x + ...)"
            ) from err
        if grad_mu is None or grad_logvar is None:
            missing = "mu" if grad_mu is None else "logvar"
            raise Mistake(
                f"z does not depend on {missing} through the graph: build z from "
                f"{missing} with torch operations"
            )
        check_close(
            "the gradient dz/dlogvar", grad_logvar, 0.5 * (0.5 * lv).exp() * eps64, dtype=dtype
        )
        check_close("the gradient dz/dmu", grad_mu, torch.ones_like(m), dtype=dtype)


def check_iwae(iwae_bound: Callable[[Tensor, Tensor, Tensor], Tensor]) -> None:
    """``iwae_bound(log_px_z [K, B], log_pz [K, B], log_qz [K, B]) -> [B]``: the importance-
    weighted bound log (1/K) sum_k p(x | z_k) p(z_k) / q(z_k | x) per example (Burda et al.
    2016), as :func:`vaelab.objectives.importance_log_likelihood` combines its log-weights;
    in float64 and float32, and with K = 1 (the ELBO)."""
    g = _inputs(2)
    for k, dtype in ((K, torch.float64), (1, torch.float64), (K, torch.float32)):
        # log-likelihoods of hundreds of nats, as for images: exp() of them underflows to 0
        # even in double precision
        inputs, (log_px_z, log_pz, log_qz) = cast(
            dtype,
            -800 + 2 * torch.randn(k, B, generator=g, dtype=torch.float64),
            -2 - torch.rand(k, B, generator=g, dtype=torch.float64),
            -1 + torch.randn(k, B, generator=g, dtype=torch.float64),
        )
        got = call_student(
            "iwae_bound",
            iwae_bound,
            *(t.clone() for t in inputs),
            forbidden={
                importance_log_likelihood: "vaelab.objectives."
                "importance_log_likelihood is the library's answer; "
                "combine the log-weights yourself"
            },
        )
        if isinstance(got, Tensor) and tuple(got.shape) == (k,) and k != B:
            raise Mistake(
                f"iwae_bound returned shape [{k}] for inputs [{k}, {B}]: you "
                f"combined over the batch (dim 1); the K samples are dim 0"
            )
        got = check_shape("iwae_bound", got, (B,))
        if not torch.isfinite(got.detach()).all():
            raise Mistake(
                "iwae_bound returned -inf or NaN: exp() of log-weights near -800 "
                "underflows to 0; combine them with torch.logsumexp(log_w, dim=0)"
            )
        log_w = log_px_z + log_pz - log_qz
        expected = torch.logsumexp(log_w, dim=0) - math.log(k)
        hints = {
            "it is log sum_k w_k: subtract log K to average the weights": torch.logsumexp(
                log_w, dim=0
            ),
            "it is the mean of the log-weights, the K-sample ELBO, not the log of the mean "
            "weight: use logsumexp": log_w.mean(dim=0),
            "the sign of log q(z | x) is wrong: log w = log p(x | z) + log p(z) - "
            "log q(z | x)": torch.logsumexp(log_px_z + log_pz + log_qz, dim=0) - math.log(k),
            (
                "the sign of log p(z) is wrong: log w = log p(x | z) + log p(z) - log q(z | x)"
            ): torch.logsumexp(log_px_z - log_pz - log_qz, dim=0) - math.log(k),
            "log p(z) is missing from the log-weight": torch.logsumexp(log_px_z - log_qz, dim=0)
            - math.log(k),
            "you took the maximum log-weight: logsumexp averages all K weights": log_w.max(
                dim=0
            ).values,
            "you divided the log by K: the 1/K is inside the log, log (1/K) sum_k w_k = "
            "logsumexp(log_w, dim=0) - log K": torch.logsumexp(log_w, dim=0) / k,
        }
        if k == 1:  # at K = 1 several of these coincide with the answer
            hints = {}
        check_close("iwae_bound", got, expected, hints=hints, dtype=dtype)


# ---------------------------------------------------------------- the loss with KL warm-up

# the behaviour check: a 2-D VAE on 8x8 digits trained with the student's loss
TRAIN_STEPS, WARMUP_STEPS, BATCH = 150, 50, 64


def annealed_loss_cases() -> list[tuple[Tensor, Tensor, int, int, torch.dtype]]:
    """``(log_px_z [B], kl [B], step, warmup_steps, dtype)``: before, during and after the
    warm-up, no warm-up at all, and a float32 case."""
    g = _inputs(3)
    cases = []
    for step, warmup, dtype in (
        (3, 10, torch.float64),
        (0, 10, torch.float64),
        (25, 10, torch.float64),
        (4, 0, torch.float64),
        (7, 20, torch.float32),
    ):
        log_px = -50 + 10 * torch.randn(B + 2, generator=g, dtype=torch.float64)
        kl = 5 * torch.rand(B + 2, generator=g, dtype=torch.float64)
        cases.append((log_px.to(dtype), kl.to(dtype), step, warmup, dtype))
    return cases


def check_annealed_loss(annealed_loss: Callable[[Tensor, Tensor, int, int], Tensor]) -> float:
    """``annealed_loss(log_px_z [B], kl [B], step, warmup_steps) -> []``: the training loss
    ``-(1/B) sum_b (log p(x_b | z_b) - beta KL_b)`` with ``beta = min(1, step /
    warmup_steps)`` (1 without warm-up), against :func:`vaelab.objectives.loss` and
    :func:`vaelab.objectives.kl_weight`; then, by behaviour, a 2-D ``vaelab.VAE`` trained on
    8x8 digits with it for ``TRAIN_STEPS`` steps must reach the validation bound the library's
    loss reaches (within 1 nat per image). Returns that validation -ELBO (nats per image)."""
    name = "annealed_loss"
    library = {
        loss: "vaelab.objectives.loss is the library's answer",
        kl_weight: "vaelab.objectives.kl_weight is the library's answer",
    }
    for log_px, kl, step, warmup, dtype in annealed_loss_cases():
        got = call_student(
            name,
            annealed_loss,
            log_px.clone(),
            kl.clone(),
            step,
            warmup,
            forbidden=library,
            no_grad=True,
        )
        lp, k = log_px.double(), kl.double()
        beta = kl_weight(step, warmup, 0.0)
        expected = loss(ELBOTerms(lp, k, torch.ones_like(lp)), beta)
        raw = step / warmup if warmup else 1.0
        hints = {
            "the KL weight is not applied: during the warm-up the KL counts beta = min(1, "
            "step / warmup_steps) times": -(lp - k).mean(),
            "the weight multiplies the log-likelihood instead of the KL": -(beta * lp - k).mean(),
            "beta is not capped at 1 after the warm-up: beta = min(1, step / warmup_steps)": -(
                lp - raw * k
            ).mean(),
            "the loss is summed over the batch; average it (nats per image)": -(
                lp - beta * k
            ).sum(),
            "the sign is wrong: the loss is the negative (weighted) ELBO, minimised": (
                lp - beta * k
            ).mean(),
            "the KL enters with the wrong sign: ELBO = log-likelihood - KL": -(
                lp + beta * k
            ).mean(),
            "the weight is 1 - step / warmup_steps; it rises from 0 to 1": -(
                lp - max(0.0, 1 - raw) * k
            ).mean(),
        }
        if warmup == 0 and isinstance(got, Tensor) and not torch.isfinite(got).all():
            raise Mistake(
                f"{name} returned NaN or inf with warmup_steps = 0: no warm-up "
                f"means beta = 1 (guard the division step / warmup_steps)"
            )
        check_close(name, got, expected, hints=hints, dtype=dtype)
    return _train_with(annealed_loss)


def _train_with(annealed_loss: Callable) -> float:
    """Train a 2-D VAE on the digits with ``annealed_loss`` and with the library's loss from
    the same seed; the student's must reach the library's validation bound."""
    from vaelab.data import load_digits
    from vaelab.train import evaluate_elbo
    from vaelab.vae import VAE, VAEConfig

    train, val, _ = load_digits()
    reached = {}
    for who, fn in (("yours", annealed_loss), ("library", None)):
        torch.manual_seed(0)
        model = VAE(VAEConfig(x_dim=train.x_dim, z_dim=2))
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
        batches = train.batches(BATCH, shuffle=True, generator=_inputs(0))
        step = 0
        while step < TRAIN_STEPS:
            for batch in batches:
                terms = model.elbo(batch)
                if fn is None:
                    value = loss(terms, kl_weight(step, WARMUP_STEPS, 0.0))
                else:
                    out = call_student(
                        "annealed_loss", fn, terms.log_likelihood, terms.kl, step, WARMUP_STEPS
                    )
                    if not isinstance(out, Tensor) or out.dim() != 0:
                        raise Mistake("annealed_loss must return one number, a 0-d tensor")
                    value = out
                    if not value.requires_grad:
                        raise Mistake(
                            "annealed_loss's value has no gradient: build it from "
                            "log_px_z and kl with torch operations (no .item(), "
                            ".detach() or torch.tensor(...))"
                        )
                optimizer.zero_grad()
                value.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
                optimizer.step()
                step += 1
                if step == TRAIN_STEPS:
                    break
            batches = train.batches(BATCH, shuffle=True, generator=_inputs(step))
        reached[who] = evaluate_elbo(model, val)["nelbo"]
    if not math.isfinite(reached["yours"]) or reached["yours"] > reached["library"] + 1.0:
        raise Mistake(
            f"a VAE trained {TRAIN_STEPS} steps with your annealed_loss reached a "
            f"validation -ELBO of {reached['yours']:.2f} nats per image, the "
            f"library's loss {reached['library']:.2f}: it should train as well"
        )
    return reached["yours"]


__all__ = ["check_annealed_loss", "check_gaussian_kl", "check_iwae", "check_reparameterize"]
watch_module(sys.modules[__name__])
