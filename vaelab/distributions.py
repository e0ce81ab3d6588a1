"""Conditional distribution modules: networks whose ``forward(*context)`` returns a
``torch.distributions.Distribution``.

The module owns the parameters; the distribution it returns is built inside ``forward`` and
lives for one step, so gradients always reach the parameters (never cache a distribution
across optimiser steps: its tensors would belong to an old graph).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import torch
from torch import Tensor, nn
from torch.distributions import Bernoulli, Distribution, Independent, Normal, constraints
from torch.nn.functional import softplus

from vaelab.nn import MADE, MLP


def _cat(context: tuple[Tensor, ...]) -> Tensor:
    return context[0] if len(context) == 1 else torch.cat(context, dim=-1)


class DiagGaussian(nn.Module):
    """Returns N(loc(c), diag(scale(c)^2)) with one event dim, for a context ``c``.

    Parameters
    ----------
    in_dim : int
        Total width of the concatenated context tensors.
    out_dim : int
        Event size.
    hidden_dims : sequence of int
        Hidden widths of the MLP giving ``loc`` and the pre-softplus scale.
    min_scale : float
        Floor added after softplus: the scale never reaches 0, so log-densities stay finite.
    """

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        hidden_dims: Sequence[int] = (),
        activation: type[nn.Module] = nn.ReLU,
        min_scale: float = 1e-3,
    ) -> None:
        super().__init__()
        self.net = MLP(in_dim, hidden_dims, 2 * out_dim, activation)
        self.min_scale = min_scale

    def forward(self, *context: Tensor) -> Independent:
        loc, s = self.net(_cat(context)).chunk(2, dim=-1)
        return Independent(Normal(loc, softplus(s) + self.min_scale), 1)


class BernoulliLogits(nn.Module):
    """Returns Bernoulli(logits(c)) over ``out_dim`` independent bits, one event dim."""

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        hidden_dims: Sequence[int] = (),
        activation: type[nn.Module] = nn.ReLU,
    ) -> None:
        super().__init__()
        self.net = MLP(in_dim, hidden_dims, out_dim, activation)

    def forward(self, *context: Tensor) -> Independent:
        return Independent(Bernoulli(logits=self.net(_cat(context))), 1)


class LearnableNormal(nn.Module):
    """Returns N(loc, diag(scale^2)) with free parameters and no context: a learnable prior or
    initial-state distribution, or the "fit N(mu, sigma) by gradient" exercise.

    Parameters
    ----------
    dim : int
        Event size.
    batch_shape : tuple of int
        Leading shape to expand to when called with ``forward(*batch_shape)``.
    """

    def __init__(self, dim: int, loc: float = 0.0, scale: float = 1.0, min_scale: float = 1e-3):
        super().__init__()
        if scale <= min_scale:
            raise ValueError(f"scale must exceed min_scale={min_scale}, got {scale}")
        self.loc = nn.Parameter(torch.full((dim,), float(loc)))
        # inverse softplus, so that softplus(raw) + min_scale == scale at initialisation
        raw = torch.log(torch.expm1(torch.tensor(scale - min_scale)))
        self.raw_scale = nn.Parameter(raw.expand(dim).clone())
        self.min_scale = min_scale

    @property
    def scale(self) -> Tensor:
        return softplus(self.raw_scale) + self.min_scale

    def forward(self, *batch_shape: int) -> Independent:
        loc, scale = self.loc.expand(*batch_shape, -1), self.scale.expand(*batch_shape, -1)
        return Independent(Normal(loc, scale), 1)


def standard_normal(like: Tensor) -> Independent:
    """Returns N(0, I) with one event dim, shaped, typed and placed like ``like`` ``[..., Z]``."""
    return Independent(Normal(torch.zeros_like(like), torch.ones_like(like)), 1)


__all__ = [
    "BernoulliLogits",
    "DiagGaussian",
    "LearnableNormal",
    "standard_normal",
]


class AutoregressiveBernoulli(Distribution):
    """p(x | c) = prod_d Bernoulli(x_d; sigmoid(f_d(x_{<d}, c))) over ``D`` bits, one event dim.

    The chain rule with a MADE (Germain et al. 2015, arXiv:1502.03509) for f, as NADE's
    emission in Krishnan et al. 2017: one network pass scores a whole vector, sampling takes
    ``D`` passes, one bit each. Written by hand (torch has no autoregressive Bernoulli); its
    normalisation is checked by summing all 2^D probabilities in ``tests/test_distributions.py``.
    ``mean`` gives the conditional probabilities along one sampled vector, P(x_d = 1 | x_<d
    drawn): a picture of the notes' probabilities (the marginals have no closed form).
    """

    arg_constraints: ClassVar[dict] = {}
    support = constraints.independent(constraints.boolean, 1)

    def __init__(self, made: MADE, context: Tensor, validate_args: bool | None = None) -> None:
        self.made, self.context = made, context
        super().__init__(context.shape[:-1], torch.Size([made.in_dim]), validate_args=False)

    def logits(self, x: Tensor) -> Tensor:
        """Returns the logits of every bit given the bits before it, ``[..., D]``."""
        context = self.context.expand(*x.shape[:-1], self.context.shape[-1])
        return self.made(x, context)[..., 0, :]

    def log_prob(self, value: Tensor) -> Tensor:
        return Bernoulli(logits=self.logits(value)).log_prob(value).sum(dim=-1)

    def _draw(self, sample_shape: Sequence[int] = ()) -> tuple[Tensor, Tensor]:
        x = self.context.new_zeros(*sample_shape, *self.batch_shape, self.made.in_dim)
        probs = torch.empty_like(x)
        for d in range(self.made.in_dim):  # bit d reads the bits before it only
            probs[..., d] = torch.sigmoid(self.logits(x)[..., d])
            x[..., d] = torch.bernoulli(probs[..., d])
        return x, probs

    @torch.no_grad()
    def sample(self, sample_shape: Sequence[int] = ()) -> Tensor:
        return self._draw(torch.Size(sample_shape))[0]

    @property
    def mean(self) -> Tensor:
        with torch.no_grad():
            return self._draw()[1]


class MADEBernoulli(nn.Module):
    """Returns :class:`AutoregressiveBernoulli` over ``out_dim`` bits for a context ``c``: a
    MADE whose ``num_hidden`` hidden layers (``hidden_dim`` wide, at least ``out_dim - 1``)
    read the context, with optional direct input-to-output connections (``direct``)."""

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        hidden_dim: int,
        activation: type[nn.Module] = nn.ReLU,
        num_hidden: int = 1,
        direct: bool = False,
    ) -> None:
        super().__init__()
        self.made = MADE(
            out_dim,
            [max(hidden_dim, out_dim - 1)] * num_hidden,
            num_outputs=1,
            context_dim=in_dim,
            activation=activation,
            direct=direct,
        )

    def forward(self, *context: Tensor) -> AutoregressiveBernoulli:
        return AutoregressiveBernoulli(self.made, _cat(context))
