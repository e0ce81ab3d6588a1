"""Checkers for notebook 02 (learnable distributions): the gradient of a learnable scale.

The scale of N(x; mu, sigma) is learned through an unconstrained rho, sigma = softplus(rho),
as in :class:`vaelab.distributions.LearnableNormal`; the student differentiates the
log-density with respect to rho by hand and the checker compares with autograd.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable

import torch
from torch import Tensor
from torch.distributions import Distribution, Normal
from torch.nn.functional import softplus

from vaelab.exercises.common import (
    Mistake,
    call_student,
    cast,
    check_close,
    check_shape,
    student_line,
    watch_module,
)

N = 6


def check_scale_gradient(scale_gradient: Callable[[Tensor, Tensor, Tensor], Tensor]) -> None:
    """``scale_gradient(x [N], mu [N], rho [N]) -> [N]``: d/drho log N(x; mu, softplus(rho))
    element by element, compared with autograd through ``torch.distributions.Normal``, in
    float64 and float32. Autograd inside the answer (the exercise is the gradient) is named."""
    g = torch.Generator().manual_seed(3)
    for dtype in (torch.float64, torch.float32):
        inputs, (x, mu, rho) = cast(
            dtype,
            2 * torch.randn(N, generator=g, dtype=torch.float64),
            torch.randn(N, generator=g, dtype=torch.float64),
            # sigmoid(rho) far from 1/2 and 1
            torch.linspace(-1.5, 1.5, N, dtype=torch.float64),
        )
        got = call_student(
            "scale_gradient", scale_gradient, *(t.clone() for t in inputs), forbidden=AUTOGRAD
        )
        _compare(got, x, mu, rho, dtype)


AUTOGRAD = {
    f: "autograd computes the gradient this exercise asks you to derive; write the formula by hand"
    for f in (
        torch.autograd.grad,
        torch.autograd.backward,
        torch.Tensor.backward,
        torch.autograd.functional.jacobian,
        torch.autograd.functional.vjp,
        torch.func.grad,
        torch.func.vjp,
        torch.func.jacrev,
    )
}


def _compare(got: object, x: Tensor, mu: Tensor, rho: Tensor, dtype: torch.dtype) -> None:
    check_shape("scale_gradient", got, (N,))
    r = rho.clone().requires_grad_(True)
    (expected,) = torch.autograd.grad(Normal(mu, softplus(r)).log_prob(x).sum(), r)
    sigma, sq = softplus(rho), (x - mu) ** 2
    d_sigma = -1 / sigma + sq / sigma**3  # d/dsigma log N
    hints = {
        "this is d/dsigma, not d/drho: multiply by dsigma/drho = sigmoid(rho), the derivative "
        "of softplus (the chain rule)": d_sigma,
        ("dsoftplus/drho is sigmoid(rho) = 1 / (1 + exp(-rho)), not 1 / (1 + exp(rho))"): d_sigma
        * torch.sigmoid(-rho),
        (
            "this is the gradient for sigma = exp(rho) (dsigma/drho = sigma), not softplus(rho)"
        ): d_sigma * sigma,
        (
            "dsoftplus/drho is exp(rho) / (1 + exp(rho)) = sigmoid(rho): "
            "the denominator is missing"
        ): d_sigma * rho.exp(),
        "the sign is wrong: this is the gradient of -log N (the loss), not of log N": -expected,
        "the 2 of (x - mu)^2 / (2 sigma^2) was not differentiated: d/dsigma of "
        "-(x - mu)^2 / (2 sigma^2) is +(x - mu)^2 / sigma^3 (the power rule's -2 cancels the "
        "1/2 and the minus)": (-1 / sigma + sq / (2 * sigma**3)) * torch.sigmoid(rho),
        "the -log sigma term is missing: its derivative -1 / sigma belongs in the gradient": sq
        / sigma**3
        * torch.sigmoid(rho),
        "you treated sigma as the variance: the density's scale is the standard deviation sigma": (
            -1 / (2 * sigma) + sq / (2 * sigma**2)
        )
        * torch.sigmoid(rho),
    }
    check_close("scale_gradient", got, expected, hints=hints, dtype=dtype)


# ---------------------------------------------------------------- a learnable Laplace (builds)

FIT_LOC, FIT_SCALE = (1.0, -2.0, 0.5), (0.5, 2.0, 1.0)  # the data the module is fitted to
FIT_N, FIT_STEPS, FIT_LR = 401, 300, 0.1  # odd n: the median, the MLE of loc, is unique


def _check_gradients(module: torch.nn.Module) -> None:
    missing = [
        n
        for n, p in module.named_parameters()
        if p.grad is None or not torch.isfinite(p.grad).all() or not p.grad.abs().sum() > 0
    ]
    if missing:
        raise Mistake(
            f"no gradient reaches {', '.join(missing)}: build loc and scale from the "
            f"parameters with torch operations (no .item(), .detach() or "
            f"torch.tensor(...))"
        )


def laplace_data() -> Tensor:
    """``[FIT_N, 3]`` float64 draws from Laplace(FIT_LOC, FIT_SCALE), fixed seed."""
    g = torch.Generator().manual_seed(5)
    u = torch.rand(FIT_N, 3, generator=g, dtype=torch.float64) - 0.5
    loc, scale = (
        torch.tensor(FIT_LOC, dtype=torch.float64),
        torch.tensor(FIT_SCALE, dtype=torch.float64),
    )
    return loc - scale * u.sign() * torch.log1p(-2 * u.abs())  # the inverse CDF


def check_learnable_laplace(module_class: Callable[..., torch.nn.Module]) -> tuple[Tensor, Tensor]:
    """``module_class(dim)`` is an ``nn.Module`` whose ``forward(n)`` returns a fresh
    ``Laplace(loc, scale)`` distribution over ``[n, dim]`` with event dimension ``dim``, learned
    through ``loc`` and an unconstrained scale parameter (``scale = softplus(rho) +
    min_scale``), starting at loc 0, scale 1. Checked by behaviour: its log-density at
    initialisation, its shapes, a gradient for every parameter on two successive steps, and a
    fit by Adam (float64) that must reach the closed-form maximum-likelihood estimates, the
    per-dimension median and mean absolute deviation from it. Returns the fitted ``(loc,
    scale)``."""
    name = "LearnableLaplace"
    module = call_student(name, module_class, 3)
    if not isinstance(module, torch.nn.Module):
        raise Mistake(
            f"{name}(3) must build a torch.nn.Module, got {type(module).__name__}: "
            f"subclass nn.Module and call super().__init__() first"
        )
    params = list(module.parameters())
    if not params:
        raise Mistake(
            f"{name} has no parameters: wrap loc and the raw scale in nn.Parameter "
            f"so that the optimiser sees them"
        )
    module = module.double()
    q = call_student(f"{name}'s forward", module, 4)
    if not isinstance(q, Distribution):
        raise Mistake(
            f"{name}'s forward(4) must return a torch.distributions.Distribution, "
            f"got {type(q).__name__}"
        )
    if tuple(q.batch_shape) != (4,) or tuple(q.event_shape) != (3,):
        raise Mistake(
            f"{name}'s forward(4) returned batch shape {list(q.batch_shape)} and "
            f"event shape {list(q.event_shape)}; expected [4] and [3]: expand loc and "
            f"scale to [n, dim] and declare the event with Independent(..., 1)"
        )
    g = torch.Generator().manual_seed(6)
    x = 3 * torch.randn(4, 3, generator=g, dtype=torch.float64)
    b0 = math.log(2) + 1e-3  # softplus(0) + min_scale
    expected = (-(x.abs()) - math.log(2)).sum(-1)
    got = call_student(f"{name}'s log_prob", q.log_prob, x)
    check_close(
        f"{name}'s log_prob at initialisation",
        got,
        expected,
        hints={
            "this is a Normal's log-density: use torch.distributions.Laplace": (
                torch.distributions.Normal(0.0, 1.0)
            )
            .log_prob(x)
            .sum(-1),
            "the scale at initialisation is softplus(0) + min_scale, not 1: start the raw scale "
            "at the inverse softplus of 1 - min_scale": (-(x.abs()) / b0 - math.log(2 * b0)).sum(
                -1
            ),
            "the event dimension is not summed: wrap the distribution in Independent(..., 1)": (
                -(x.abs()) - math.log(2)
            ),
        },
    )
    data = laplace_data()
    optimizer = torch.optim.Adam(module.parameters(), lr=FIT_LR)
    for step in range(FIT_STEPS):
        optimizer.zero_grad()
        if step == 0:
            q = call_student(f"{name}'s forward", module, FIT_N)
        else:
            try:
                q = module(FIT_N)
            except Exception as err:
                raise Mistake(
                    f"{name}'s forward raised {type(err).__name__} at training step "
                    f"{step}: {err}{student_line(err)}"
                ) from err
        if not isinstance(q, Distribution):
            raise Mistake(
                f"{name}'s forward({FIT_N}) must return a torch.distributions.Distribution, "
                f"got {type(q).__name__}"
            )
        nll = -q.log_prob(data).mean()
        try:
            nll.backward()
            if step == 0:
                _check_gradients(module)
            optimizer.step()
        except RuntimeError as err:
            raise Mistake(
                f"training step {step + 1} failed ({err}): build the distribution "
                f"inside forward, from the parameters, at every call (one built in "
                f"__init__ keeps a graph that the first backward frees, and does not "
                f"follow .double() or .to())"
            ) from err
    with torch.no_grad():
        q = module(1)
        loc, scale = q.mean[0].detach(), q.stddev[0].detach() / math.sqrt(2)  # var = 2 b^2
    median = data.median(dim=0).values
    mad = (data - median).abs().mean(dim=0)
    if not (torch.allclose(loc, median, atol=0.02) and torch.allclose(scale, mad, rtol=0.02)):
        hint = ""
        if torch.allclose(loc, data.mean(0), atol=0.02):
            hint = ": the location went to the sample mean, a Normal's MLE, not the median"
        raise Mistake(
            f"fitted by Adam ({FIT_STEPS} steps) your module reached loc "
            f"{loc.numpy().round(3)} and scale {scale.numpy().round(3)}; the "
            f"maximum-likelihood estimates are the medians {median.numpy().round(3)} "
            f"and mean absolute deviations {mad.numpy().round(3)}{hint}"
        )
    return loc, scale


__all__ = ["check_learnable_laplace", "check_scale_gradient", "laplace_data"]
watch_module(sys.modules[__name__])
