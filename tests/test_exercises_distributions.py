"""The notebook-02 checker accepts the hand-derived and autograd gradients and names each
typical mistake."""

from __future__ import annotations

import pytest
import torch
from torch.distributions import Normal
from torch.nn.functional import softplus

from vaelab.exercises import Mistake, distributions


def by_hand(x, mu, rho):
    sigma = softplus(rho)
    return (-1 / sigma + (x - mu) ** 2 / sigma**3) * torch.sigmoid(rho)


def by_autograd(x, mu, rho):
    rho = rho.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(Normal(mu, softplus(rho)).log_prob(x).sum(), rho)
    return grad


def test_accepts_correct() -> None:
    distributions.check_scale_gradient(by_hand)


def by_backward(x, mu, rho):
    rho = rho.clone().requires_grad_(True)
    Normal(mu, softplus(rho)).log_prob(x).sum().backward()
    return rho.grad


@pytest.mark.parametrize("fn", [by_autograd, by_backward])
def test_autograd_is_named(fn) -> None:
    # right numbers, but the exercise is the derivation
    with pytest.raises(Mistake, match="autograd computes the gradient this exercise asks"):
        distributions.check_scale_gradient(fn)


def d_sigma(x, mu, rho):
    sigma = softplus(rho)
    return -1 / sigma + (x - mu) ** 2 / sigma**3


MISTAKES = {
    "d/dsigma, not d/drho": d_sigma,
    "not 1 / \\(1 \\+ exp\\(rho\\)\\)": lambda x, mu, rho: (
        d_sigma(x, mu, rho) * torch.sigmoid(-rho)
    ),
    "sigma = exp\\(rho\\)": lambda x, mu, rho: d_sigma(x, mu, rho) * softplus(rho),
    "sign is wrong": lambda x, mu, rho: -by_hand(x, mu, rho),
    "2 of .* is \\+\\(x - mu\\)\\^2 / sigma\\^3": lambda x, mu, rho: (
        (-1 / softplus(rho) + (x - mu) ** 2 / (2 * softplus(rho) ** 3)) * torch.sigmoid(rho)
    ),
    "-log sigma term is missing": lambda x, mu, rho: (
        (x - mu) ** 2 / softplus(rho) ** 3 * torch.sigmoid(rho)
    ),
    "sigma as the variance": lambda x, mu, rho: (
        (-1 / (2 * softplus(rho)) + (x - mu) ** 2 / (2 * softplus(rho) ** 2)) * torch.sigmoid(rho)
    ),
    "the denominator is missing": lambda x, mu, rho: d_sigma(x, mu, rho) * rho.exp(),
    "returned shape": lambda x, mu, rho: by_hand(x, mu, rho).sum(),
    "off by up to": lambda x, mu, rho: by_hand(x, mu, rho) + 0.01,
    "raised ZeroDivisionError": lambda x, mu, rho: 1 / 0,
}


@pytest.mark.parametrize("message", MISTAKES)
def test_names_mistake(message: str) -> None:
    with pytest.raises(Mistake, match=message):
        distributions.check_scale_gradient(MISTAKES[message])


def test_not_implemented_passes_through() -> None:
    def todo(x, mu, rho):
        raise NotImplementedError()

    with pytest.raises(NotImplementedError, match="^scale_gradient is not written yet"):
        distributions.check_scale_gradient(todo)


# ---------------------------------------------------------------- a learnable Laplace (builds)

import math

from torch import nn
from torch.distributions import Independent, Laplace


class LaplaceRight(nn.Module):
    def __init__(self, dim, min_scale=1e-3):
        super().__init__()
        self.loc = nn.Parameter(torch.zeros(dim))
        self.raw_scale = nn.Parameter(torch.full((dim,), math.log(math.expm1(1 - min_scale))))
        self.min_scale = min_scale

    def forward(self, n):
        scale = softplus(self.raw_scale) + self.min_scale
        return Independent(Laplace(self.loc.expand(n, -1), scale.expand(n, -1)), 1)


def test_learnable_laplace_accepts_correct_and_reaches_the_mle() -> None:
    loc, scale = distributions.check_learnable_laplace(LaplaceRight)
    data = distributions.laplace_data()
    median = data.median(0).values
    torch.testing.assert_close(loc, median, atol=0.02, rtol=0)
    torch.testing.assert_close(scale, (data - median).abs().mean(0), rtol=0.02, atol=0)


class LaplaceNormal(LaplaceRight):
    def forward(self, n):
        scale = softplus(self.raw_scale) + self.min_scale
        return Independent(Normal(self.loc.expand(n, -1), scale.expand(n, -1)), 1)


class LaplaceRawZero(LaplaceRight):
    def __init__(self, dim):
        super().__init__(dim)
        self.raw_scale = nn.Parameter(torch.zeros(dim))


class LaplaceNoEvent(LaplaceRight):
    def forward(self, n):
        scale = softplus(self.raw_scale) + self.min_scale
        return Laplace(self.loc.expand(n, -1), scale.expand(n, -1))


class LaplaceBuiltOnce(LaplaceRight):
    def __init__(self, dim):
        super().__init__(dim)
        self.q = Laplace(self.loc, softplus(self.raw_scale) + self.min_scale)

    def forward(self, n):
        return Independent(self.q.expand((n, self.loc.shape[0])), 1)


class LaplaceDetached(LaplaceRight):
    def forward(self, n):
        scale = (softplus(self.raw_scale) + self.min_scale).detach()
        return Independent(Laplace(self.loc.expand(n, -1), scale.expand(n, -1)), 1)


class LaplaceNoParameters(nn.Module):
    def __init__(self, dim):
        super().__init__()

    def forward(self, n):
        return Independent(Laplace(torch.zeros(n, 3), torch.ones(n, 3)), 1)


class LaplaceFixedScale(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.loc = nn.Parameter(torch.zeros(dim))

    def forward(self, n):  # scale pinned at 1: the fit cannot reach the MLE
        return Independent(
            Laplace(self.loc.expand(n, -1), torch.ones_like(self.loc).expand(n, -1)), 1
        )


LAPLACE_MISTAKES = {
    "Normal's log-density": LaplaceNormal,
    "softplus\\(0\\) \\+ min_scale, not 1": LaplaceRawZero,
    "batch shape \\[4, 3\\] and event shape \\[\\]": LaplaceNoEvent,
    "build the distribution inside forward": LaplaceBuiltOnce,
    "no gradient reaches raw_scale": LaplaceDetached,
    "has no parameters": LaplaceNoParameters,
    "maximum-likelihood estimates are the medians": LaplaceFixedScale,
}


@pytest.mark.parametrize("match", LAPLACE_MISTAKES)
def test_learnable_laplace_names_mistakes(match: str) -> None:
    with pytest.raises(Mistake, match=match):
        distributions.check_learnable_laplace(LAPLACE_MISTAKES[match])
