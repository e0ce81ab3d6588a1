"""The notebook-01 checkers accept the library's answers and name each typical mistake."""

from __future__ import annotations

import math

import pytest
import torch
from torch.distributions import Independent, Normal, kl_divergence

from vaelab.exercises import Mistake, vae

# ------------------------------------------------------------------ the Gaussian KL


def kl_library(mu, logvar):
    q = Independent(Normal(mu, (0.5 * logvar).exp()), 1)
    return kl_divergence(q, Independent(Normal(torch.zeros_like(mu), torch.ones_like(mu)), 1))


def kl_formula(mu, logvar):
    return -0.5 * (1 + logvar - mu**2 - logvar.exp()).sum(dim=-1)


def kl_by_terms(mu, logvar):
    # the same closed form, one dimension at a time (float32 inputs stay float32)
    terms = 0.5 * (mu**2 + logvar.exp() - 1 - logvar)
    return terms.sum(dim=-1)


@pytest.mark.parametrize("fn", [kl_formula, kl_by_terms])
def test_gaussian_kl_accepts_correct(fn) -> None:
    vae.check_gaussian_kl(fn)


def test_gaussian_kl_names_the_library_shortcut() -> None:
    # kl_divergence gives the right numbers: the checker names it however it was imported
    import torch.distributions as D

    def renamed(mu, logvar):
        q = D.Normal(mu, (0.5 * logvar).exp())
        return D.kl.kl_divergence(q, D.Normal(torch.zeros_like(mu), 1.0)).sum(-1)

    for fn in (kl_library, renamed):
        with pytest.raises(Mistake, match="kl_divergence is the library's answer"):
            vae.check_gaussian_kl(fn)
    with pytest.raises(Mistake, match="the checkers' own code"):
        vae.check_gaussian_kl(vae._standard_kl)


def test_gaussian_kl_summed_over_dim_1() -> None:
    # right on [B, J] (dim 1 is the last axis there): the 1-D and 3-D cases expose it
    with pytest.raises(Mistake, match="(Dimension out of range|dim 1)"):
        vae.check_gaussian_kl(lambda m, lv: -0.5 * (1 + lv - m**2 - lv.exp()).sum(dim=1))
    three_d_only = lambda m, lv: -0.5 * (1 + lv - m**2 - lv.exp()).sum(dim=min(1, m.dim() - 1))
    with pytest.raises(Mistake, match="you summed over dim 1, a batch axis"):
        vae.check_gaussian_kl(three_d_only)


def test_gaussian_kl_precision_by_dtype() -> None:
    # a float32 answer to float32 inputs passes (float32 tolerances); a float32 answer to
    # float64 inputs is named as a dtype mismatch, not as "off by 1e-7"
    seen = []
    vae.check_gaussian_kl(lambda m, lv: seen.append(m.dtype) or kl_formula(m, lv))
    assert seen.count(torch.float32) == 1 and torch.float64 in seen
    with pytest.raises(Mistake, match="returned torch.float32 for torch.float64 inputs"):
        vae.check_gaussian_kl(lambda m, lv: kl_formula(m.float(), lv.float()))


def test_error_is_reported_with_the_students_line() -> None:
    def kl_with_slip(mu, logvar):
        var = logvar.exp()
        return -0.5 * (1 + logvar - mu**2 - var).sum(dim=-1) + mu @ mu  # matmul of [B, J]

    with pytest.raises(
        Mistake,
        match=r"gaussian_kl raised RuntimeError: .*\(line \d+ of "
        r"your function's cell: return -0\.5 \* \(1",
    ):
        vae.check_gaussian_kl(kl_with_slip)


def test_replaced_checker_or_library_function_is_detected(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(vae, "check_iwae", lambda fn: None)
    with pytest.raises(Mistake, match="check_iwae was replaced"):
        vae.check_gaussian_kl(kl_formula)
    monkeypatch.undo()
    monkeypatch.setattr(torch, "allclose", lambda *a, **k: True)
    with pytest.raises(Mistake, match="torch.allclose was replaced"):
        vae.check_gaussian_kl(kl_formula)


KL_MISTAKES = {
    "factor 1/2 missing": (lambda m, lv: -(1 + lv - m**2 - lv.exp()).sum(-1)),
    "applied twice": (lambda m, lv: -0.25 * (1 + lv - m**2 - lv.exp()).sum(-1)),
    "wrong sign": (lambda m, lv: 0.5 * (1 + lv - m**2 - lv.exp()).sum(-1)),
    "variance passed as scale": (lambda m, lv: kl_formula(m, 2 * lv)),
    "averaged over the latent": (lambda m, lv: -0.5 * (1 + lv - m**2 - lv.exp()).mean(-1)),
    "mu\\^2 term": (lambda m, lv: -0.5 * (1 + lv + m**2 - lv.exp()).sum(-1)),
    "logvar where exp\\(logvar\\)": (lambda m, lv: -0.5 * (1 - m**2).sum(-1)),
    "constant 1": (lambda m, lv: -0.5 * (lv - m**2 - lv.exp()).sum(-1)),
    "summed over dim 0": (lambda m, lv: -0.5 * (1 + lv - m**2 - lv.exp()).sum(0)),
    "one KL per dimension": (lambda m, lv: -0.5 * (1 + lv - m**2 - lv.exp())),
    "single number": (lambda m, lv: -0.5 * (1 + lv - m**2 - lv.exp()).sum()),
    "exp\\(2 logvar\\)": (lambda m, lv: -0.5 * (1 + lv - m**2 - (2 * lv).exp()).sum(-1)),
    "mu enters squared": (lambda m, lv: -0.5 * (1 + lv - m - lv.exp()).sum(-1)),
    "off by up to": (lambda m, lv: kl_formula(m, lv) + 0.1),
    "dtype mismatch": None,
}
KL_MISTAKES.pop("dtype mismatch")


@pytest.mark.parametrize("message", KL_MISTAKES)
def test_gaussian_kl_names_mistake(message: str) -> None:
    with pytest.raises(Mistake, match=message):
        vae.check_gaussian_kl(KL_MISTAKES[message])


def test_not_implemented_passes_through() -> None:
    def todo(*args):
        raise NotImplementedError()

    for check, name in (
        (vae.check_gaussian_kl, "gaussian_kl"),
        (vae.check_reparameterize, "reparameterize"),
        (vae.check_iwae, "iwae_bound"),
    ):
        # the release's stub: still NotImplementedError, now saying what to do
        with pytest.raises(
            NotImplementedError,
            match=f"^{name} is not written yet: in its cell, replace the two lines",
        ):
            check(todo)

    def library_gap(*args):
        raise NotImplementedError("torch has no kernel for this")

    with pytest.raises(NotImplementedError, match="^torch has no kernel for this$"):
        vae.check_gaussian_kl(library_gap)  # a message of its own is kept


def test_crash_is_reported_as_mistake() -> None:
    with pytest.raises(Mistake, match="gaussian_kl raised TypeError"):
        vae.check_gaussian_kl(lambda mu, logvar: mu + "a")


# ------------------------------------------------------------------ reparameterisation


def reparam_formula(mu, logvar, eps):
    return mu + (0.5 * logvar).exp() * eps


def reparam_torch(mu, logvar, eps):
    # Normal.rsample is loc + scale * eps; the same, through torch.distributions' parameters
    q = Normal(mu, (0.5 * logvar).exp())
    return q.loc + q.scale * eps


@pytest.mark.parametrize("fn", [reparam_formula, reparam_torch])
def test_reparameterize_accepts_correct(fn) -> None:
    vae.check_reparameterize(fn)


def test_rsample_is_what_the_checker_expects() -> None:
    # the checker's formula is torch's own rsample with the same standard-normal draws
    mu, logvar = torch.randn(4, 3), torch.randn(4, 3)
    torch.manual_seed(5)
    z = Normal(mu, (0.5 * logvar).exp()).rsample()
    torch.manual_seed(5)
    torch.testing.assert_close(z, reparam_formula(mu, logvar, torch.randn(4, 3)))


REPARAM_MISTAKES = {
    "variance exp\\(logvar\\)": (lambda m, lv, e: m + lv.exp() * e),
    "logvar itself as the scale": (lambda m, lv, e: m + lv * e),
    "subtracted the noise": (lambda m, lv, e: m - (0.5 * lv).exp() * e),
    "returned the mean": (lambda m, lv, e: m * 1.0),
    "ignored the mean": (lambda m, lv, e: (0.5 * lv).exp() * e),
    "multiply eps, not be added": (lambda m, lv, e: m + (0.5 * lv).exp() + e),
    "do not draw your own noise": (lambda m, lv, e: m + (0.5 * lv).exp() * torch.randn_like(e)),
    "no gradient flows": (lambda m, lv, e: (m + (0.5 * lv).exp() * e).detach()),
    "does not depend on logvar": (lambda m, lv, e: m + (0.5 * lv.detach()).exp() * e),
    "returned shape": (lambda m, lv, e: (m + (0.5 * lv).exp() * e)[0]),
    "modified a tensor in place": (lambda m, lv, e: m + lv.exp().sqrt_() * e),
    "own noise": (lambda m, lv, e: Normal(m, (0.5 * lv).exp()).rsample()),
}


@pytest.mark.parametrize("message", REPARAM_MISTAKES)
def test_reparameterize_names_mistake(message: str) -> None:
    with pytest.raises(Mistake, match=message):
        vae.check_reparameterize(REPARAM_MISTAKES[message])


# ------------------------------------------------------------------ the IWAE bound


def iwae_formula(log_px_z, log_pz, log_qz):
    return torch.logsumexp(log_px_z + log_pz - log_qz, dim=0) - math.log(len(log_px_z))


def test_iwae_accepts_correct() -> None:
    vae.check_iwae(iwae_formula)


IWAE_MISTAKES = {
    "subtract log K": (lambda lx, lp, lq: torch.logsumexp(lx + lp - lq, dim=0)),
    "mean of the log-weights": (lambda lx, lp, lq: (lx + lp - lq).mean(0)),
    "sign of log q": (lambda lx, lp, lq: iwae_formula(lx, lp, -lq)),
    "sign of log p\\(z\\)": (lambda lx, lp, lq: iwae_formula(lx, -lp, lq)),
    "log p\\(z\\) is missing": (lambda lx, lp, lq: iwae_formula(lx, 0 * lp, lq)),
    "maximum log-weight": (lambda lx, lp, lq: (lx + lp - lq).max(0).values),
    "underflows": (lambda lx, lp, lq: (lx + lp - lq).exp().mean(0).log()),
    "over the batch": (
        lambda lx, lp, lq: torch.logsumexp(lx + lp - lq, dim=1) - math.log(lx.shape[1])
    ),
    "divided the log by K": (
        lambda lx, lp, lq: torch.logsumexp(lx + lp - lq, dim=0) / lx.shape[0]
    ),
}


@pytest.mark.parametrize("message", IWAE_MISTAKES)
def test_iwae_names_mistake(message: str) -> None:
    with pytest.raises(Mistake, match=message):
        vae.check_iwae(IWAE_MISTAKES[message])


# ------------------------------------------------------------------ the loss with KL warm-up


def annealed_right(log_px_z, kl, step, warmup_steps):
    beta = min(1.0, step / warmup_steps) if warmup_steps > 0 else 1.0
    return -(log_px_z - beta * kl).mean()


def test_annealed_loss_accepts_correct_and_trains() -> None:
    reached = vae.check_annealed_loss(annealed_right)
    assert 20 < reached < 40  # nats per image after 150 steps on the 8x8 digits


def _beta(step, warmup):
    return min(1.0, step / warmup) if warmup > 0 else 1.0


ANNEALED_MISTAKES = {
    "KL weight is not applied": lambda lx, kl, t, w: -(lx - kl).mean(),
    "multiplies the log-likelihood": lambda lx, kl, t, w: -(_beta(t, w) * lx - kl).mean(),
    "not capped at 1": lambda lx, kl, t, w: -(lx - (t / w if w else 1.0) * kl).mean(),
    "summed over the batch": lambda lx, kl, t, w: -(lx - _beta(t, w) * kl).sum(),
    "the sign is wrong": lambda lx, kl, t, w: (lx - _beta(t, w) * kl).mean(),
    "KL enters with the wrong sign": lambda lx, kl, t, w: -(lx + _beta(t, w) * kl).mean(),
    "rises from 0 to 1": lambda lx, kl, t, w: (
        -(lx - max(0.0, 1 - t / w) * kl).mean() if w else -(lx - kl).mean()
    ),
    "warmup_steps = 0": lambda lx, kl, t, w: (
        -(lx - min(1.0, t / w if w else math.inf) * kl * (1 if w else math.nan)).mean()
    ),
    "library's answer": lambda lx, kl, t, w: __import__("vaelab.objectives").objectives.loss(
        __import__("vaelab.objectives").objectives.ELBOTerms(lx, kl, torch.ones_like(lx)),
        _beta(t, w),
    ),
}


@pytest.mark.parametrize("message", ANNEALED_MISTAKES)
def test_annealed_loss_names_mistake(message: str) -> None:
    with pytest.raises(Mistake, match=message):
        vae.check_annealed_loss(ANNEALED_MISTAKES[message])


def test_annealed_loss_is_graded_by_training_too() -> None:
    # right on every formula case (evaluated without gradients), but it trains nothing: the
    # behaviour check catches it
    def no_gradient(log_px_z, kl, step, warmup_steps):
        return annealed_right(log_px_z, kl, step, warmup_steps).detach()

    with pytest.raises(Mistake, match="has no gradient"):
        vae.check_annealed_loss(no_gradient)

    def stalls(log_px_z, kl, step, warmup_steps):
        # in training, only the KL: the encoder matches the prior, the decoder learns nothing
        value = annealed_right(log_px_z, kl, step, warmup_steps)
        return kl.mean() + 0 * value if log_px_z.requires_grad else value

    with pytest.raises(Mistake, match="it should train as well"):
        vae.check_annealed_loss(stalls)
