"""Checkers for notebook 02 (learnable distributions): the gradient of a learnable scale.

The scale of N(x; mu, sigma) is learned through an unconstrained rho, sigma = softplus(rho),
as in :class:`vaelab.distributions.LearnableNormal`; the student differentiates the
log-density with respect to rho by hand and the checker compares with autograd.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

import torch
from torch import Tensor
from torch.distributions import Normal
from torch.nn.functional import softplus

from vaelab.exercises.common import call_student, cast, check_close, check_shape, watch_module

N = 6


def check_scale_gradient(scale_gradient: Callable[[Tensor, Tensor, Tensor], Tensor]) -> None:
    """``scale_gradient(x [N], mu [N], rho [N]) -> [N]``: d/drho log N(x; mu, softplus(rho))
    element by element, compared with autograd through ``torch.distributions.Normal``, in
    float64 and float32. Autograd inside the answer (the exercise is the gradient) is named."""
    g = torch.Generator().manual_seed(3)
    for dtype in (torch.float64, torch.float32):
        inputs, (x, mu, rho) = cast(
            dtype, 2 * torch.randn(N, generator=g, dtype=torch.float64),
            torch.randn(N, generator=g, dtype=torch.float64),
            # sigmoid(rho) far from 1/2 and 1
            torch.linspace(-1.5, 1.5, N, dtype=torch.float64))
        got = call_student("scale_gradient", scale_gradient, *(t.clone() for t in inputs),
                           forbidden=AUTOGRAD)
        _compare(got, x, mu, rho, dtype)


AUTOGRAD = {f: "autograd computes the gradient this exercise asks you to derive; write the "
               "formula by hand" for f in (
                   torch.autograd.grad, torch.autograd.backward, torch.Tensor.backward,
                   torch.autograd.functional.jacobian, torch.autograd.functional.vjp,
                   torch.func.grad, torch.func.vjp, torch.func.jacrev)}


def _compare(got: object, x: Tensor, mu: Tensor, rho: Tensor, dtype: torch.dtype) -> None:
    check_shape("scale_gradient", got, (N,))
    r = rho.clone().requires_grad_(True)
    (expected,) = torch.autograd.grad(Normal(mu, softplus(r)).log_prob(x).sum(), r)
    sigma, sq = softplus(rho), (x - mu) ** 2
    d_sigma = -1 / sigma + sq / sigma**3  # d/dsigma log N
    hints = {
        "this is d/dsigma, not d/drho: multiply by dsigma/drho = sigmoid(rho), the derivative "
        "of softplus (the chain rule)": d_sigma,
        "dsoftplus/drho is sigmoid(rho) = 1 / (1 + exp(-rho)), not 1 / (1 + exp(rho))":
            d_sigma * torch.sigmoid(-rho),
        "this is the gradient for sigma = exp(rho) (dsigma/drho = sigma), not softplus(rho)":
            d_sigma * sigma,
        "dsoftplus/drho is exp(rho) / (1 + exp(rho)) = sigmoid(rho): the denominator is missing":
            d_sigma * rho.exp(),
        "the sign is wrong: this is the gradient of -log N (the loss), not of log N": -expected,
        "the 2 of (x - mu)^2 / (2 sigma^2) was not differentiated: d/dsigma of "
        "-(x - mu)^2 / (2 sigma^2) is +(x - mu)^2 / sigma^3 (the power rule's -2 cancels the "
        "1/2 and the minus)": (-1 / sigma + sq / (2 * sigma**3)) * torch.sigmoid(rho),
        "the -log sigma term is missing: its derivative -1 / sigma belongs in the gradient":
            sq / sigma**3 * torch.sigmoid(rho),
        "you treated sigma as the variance: the density's scale is the standard deviation "
        "sigma": (-1 / (2 * sigma) + sq / (2 * sigma**2)) * torch.sigmoid(rho),
    }
    check_close("scale_gradient", got, expected, hints=hints, dtype=dtype)


__all__ = ["check_scale_gradient"]
watch_module(sys.modules[__name__])
