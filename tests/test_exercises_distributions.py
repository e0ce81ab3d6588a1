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
    "not 1 / \\(1 \\+ exp\\(rho\\)\\)":
        lambda x, mu, rho: d_sigma(x, mu, rho) * torch.sigmoid(-rho),
    "sigma = exp\\(rho\\)": lambda x, mu, rho: d_sigma(x, mu, rho) * softplus(rho),
    "sign is wrong": lambda x, mu, rho: -by_hand(x, mu, rho),
    "2 of .* is \\+\\(x - mu\\)\\^2 / sigma\\^3":
        lambda x, mu, rho: (-1 / softplus(rho) + (x - mu) ** 2 / (2 * softplus(rho) ** 3))
        * torch.sigmoid(rho),
    "-log sigma term is missing": lambda x, mu, rho: (x - mu) ** 2 / softplus(rho) ** 3
    * torch.sigmoid(rho),
    "sigma as the variance": lambda x, mu, rho: (-1 / (2 * softplus(rho))
                                                 + (x - mu) ** 2 / (2 * softplus(rho) ** 2))
    * torch.sigmoid(rho),
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
