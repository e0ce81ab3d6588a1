"""Normalizing flows as ``torch.distributions.Transform`` s, composed with
``TransformedDistribution`` so that every flow is an ordinary distribution (``sample``,
``rsample``, ``log_prob``) to the rest of the library.

- :class:`AffineAutoregressive`, stacked by :class:`IAFStack`: the inverse autoregressive flow
  of Kingma et al. 2016 (arXiv:1606.04934) on a MADE (Germain et al. 2015, arXiv:1502.03509),
  used in the DMM guide.
- :class:`AffineCoupling`, stacked by :class:`ConditionalRealNVP`: the affine coupling layers
  of RealNVP (Dinh et al. 2017, arXiv:1605.08803), with a context vector, as a learnable
  conditional distribution; :class:`vaelab.realnvp.ConditionalFlowModel` wraps it for the
  trainer ("realnvp").

Direction is torch's, base -> sample: ``y = f(x)`` maps a base point ``x`` to a sample ``y``
and ``log p(y) = log p_base(x) - log|det df/dx|``. The transforms are written by hand for
teaching (torch.distributions has no autoregressive or coupling transform).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import cast

import torch
from torch import Tensor, nn
from torch.distributions import Distribution, Transform, TransformedDistribution, constraints
from torch.nn.functional import logsigmoid

from vaelab.distributions import DiagGaussian, standard_normal
from vaelab.nn import MADE, MLP


def _event_shape_check(x: Tensor, dim: int, who: str) -> None:
    if x.dim() < 1 or x.shape[-1] != dim:
        raise ValueError(
            f"{who} acts on [..., {dim}], got {list(x.shape)}; "
            f"the last axis must be the event of size {dim}"
        )


# ----------------------------------------------------------------------------- permutation


class Permute(Transform):
    """Permutation of the last axis, ``y = x[..., perm]``; a volume-preserving bijection.

    forward ``y = x[..., perm]``, inverse ``x = y[..., argsort(perm)]``,
    ``log|det J| = 0`` both ways. torch.distributions has no public permutation transform.
    """

    domain = constraints.independent(constraints.real, 1)
    codomain = constraints.independent(constraints.real, 1)
    bijective = True

    def __init__(self, permutation: Tensor, cache_size: int = 1) -> None:
        super().__init__(cache_size=cache_size)
        self.permutation = permutation
        self.inverse_permutation = torch.argsort(permutation)

    def _call(self, x: Tensor) -> Tensor:
        return x[..., self.permutation.to(x.device)]

    def _inverse(self, y: Tensor) -> Tensor:
        return y[..., self.inverse_permutation.to(y.device)]

    def log_abs_det_jacobian(self, x: Tensor, y: Tensor) -> Tensor:
        return x.new_zeros(x.shape[:-1])

    def with_cache(self, cache_size: int = 1) -> Permute:
        return self if self._cache_size == cache_size else Permute(self.permutation, cache_size)


# ----------------------------------------------------------------------------- IAF


class AffineAutoregressive(Transform):
    """Inverse autoregressive flow step with the gated update of Kingma et al. 2016
    (arXiv:1606.04934, eqs. 11-14).

    A MADE gives, for every dim ``d``, a shift ``m_d`` and pre-gate ``s_d`` from ``x_{<d}``:

    - forward (one pass): ``y = sigma * x + (1 - sigma) * m``, ``sigma = sigmoid(s + gate_bias)``;
    - inverse (``D`` sequential passes, dim ``d`` fixed at pass ``d``):
      ``x = (y - (1 - sigma) * m) / sigma`` with ``m, sigma`` evaluated at the ``x`` so far;
    - forward ``log|det dy/dx| = sum_d log sigma_d`` (the Jacobian is lower triangular with
      diagonal ``sigma``); inverse ``log|det dx/dy| = -sum_d log sigma_d``.

    ``sigma`` lies in (0, 1), so the update is a convex mix that never divides and never
    explodes: the reason IAF guides trained this way do not produce NaNs. ``gate_bias`` (1..2)
    starts the step near the identity (``sigma ~ 0.8``).

    Parameters
    ----------
    made : MADE
        ``in_dim = D``, ``num_outputs = 2`` (shift, pre-gate); owns the parameters.
    gate_bias : float
        Added to the pre-gate.
    cache_size : int
        1 (default) caches the last ``(x, y)`` so ``log_prob`` of one's own ``rsample`` never
        inverts.
    """

    domain = constraints.independent(constraints.real, 1)
    codomain = constraints.independent(constraints.real, 1)
    bijective = True

    def __init__(self, made: MADE, gate_bias: float = 1.5, cache_size: int = 1) -> None:
        super().__init__(cache_size=cache_size)
        self.made, self.gate_bias = made, gate_bias
        self._cached_log_sigma: tuple[Tensor | None, Tensor | None] = (None, None)

    def _shift_log_sigma(self, x: Tensor) -> tuple[Tensor, Tensor]:
        _event_shape_check(x, self.made.in_dim, "AffineAutoregressive")
        m, s = self.made(x).unbind(dim=-2)  # each [..., D]
        return m, logsigmoid(s + self.gate_bias)

    def _call(self, x: Tensor) -> Tensor:
        m, log_sigma = self._shift_log_sigma(x)
        sigma = log_sigma.exp()
        self._cached_log_sigma = (x, log_sigma)
        return sigma * x + (1 - sigma) * m

    def _inverse(self, y: Tensor) -> Tensor:
        # sequential: after pass d the first d dims are exact (slow; tests and notebooks only)
        x = torch.zeros_like(y)
        for _ in range(y.shape[-1]):
            m, log_sigma = self._shift_log_sigma(x)
            sigma = log_sigma.exp()
            x = (y - (1 - sigma) * m) / sigma
        return x

    def log_abs_det_jacobian(self, x: Tensor, y: Tensor) -> Tensor:
        """Returns ``sum_d log sigma_d(x)``, ``[...]`` (event summed)."""
        x_old, log_sigma = self._cached_log_sigma
        if x is not x_old or log_sigma is None:
            log_sigma = self._shift_log_sigma(x)[1]
        return log_sigma.sum(dim=-1)

    def with_cache(self, cache_size: int = 1) -> AffineAutoregressive:
        if self._cache_size == cache_size:
            return self
        return AffineAutoregressive(self.made, self.gate_bias, cache_size)


class IAFStack(nn.Module):
    """Returns q(z) pushed through ``num_iafs`` IAF steps with reversing permutations between
    them: ``forward(base)`` is a ``TransformedDistribution`` over ``[..., dim]``.

    The module owns the MADEs; the transforms and the distribution are built afresh in every
    call. The base may have any batch shape (``[B]``, ``[B, T]``) and event ``[dim]``.

    Parameters
    ----------
    dim : int
        Event size ``Z``.
    num_iafs : int
        Number of IAF steps (0 returns the base unchanged, wrapped).
    hidden_dim : int
        Width of each MADE's hidden layers.
    num_hidden : int
        Hidden layers per MADE.
    gate_bias : float
        See :class:`AffineAutoregressive`.
    """

    def __init__(
        self, dim: int, num_iafs: int, hidden_dim: int, num_hidden: int = 1, gate_bias: float = 1.5
    ) -> None:
        super().__init__()
        if dim < 1 or num_iafs < 0 or hidden_dim < 1 or num_hidden < 1:
            raise ValueError(
                f"IAFStack needs dim >= 1, num_iafs >= 0, hidden_dim >= 1 and "
                f"num_hidden >= 1, got {dim}, {num_iafs}, {hidden_dim}, "
                f"{num_hidden}"
            )
        self.dim, self.gate_bias = dim, gate_bias
        self.mades = nn.ModuleList(
            MADE(dim, [max(hidden_dim, dim - 1)] * num_hidden, num_outputs=2)
            for _ in range(num_iafs)
        )
        self.reverse: Tensor
        self.register_buffer("reverse", torch.arange(dim - 1, -1, -1), persistent=False)

    def transforms(self) -> list[Transform]:
        """Fresh transforms: IAF, reverse, IAF, ..., IAF (the last step is not permuted)."""
        out: list[Transform] = []
        for i, made in enumerate(self.mades):
            if i > 0:
                out.append(Permute(self.reverse))
            out.append(AffineAutoregressive(cast(MADE, made), self.gate_bias))
        return out

    def forward(self, base: Distribution) -> TransformedDistribution:
        if base.event_shape != (self.dim,):
            raise ValueError(
                f"the base distribution must have event shape [{self.dim}], got "
                f"{list(base.event_shape)}; wrap Normal in Independent(..., 1)"
            )
        return TransformedDistribution(base, self.transforms())


# ----------------------------------------------------------------------------- RealNVP


class CouplingNet(nn.Module):
    """The network of one coupling layer: ``(shift, raw log-scale)`` of ``[..., D]`` each from
    the untouched half ``b * x`` and the context ``c``. Its last layer starts at zero, so a new
    coupling layer is the identity."""

    def __init__(
        self,
        dim: int,
        context_dim: int,
        hidden_dims: Sequence[int],
        activation: type[nn.Module] = nn.ReLU,
    ) -> None:
        super().__init__()
        self.net = MLP(dim + context_dim, hidden_dims, 2 * dim, activation)
        last = cast(nn.Linear, self.net[-1])
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)

    def forward(self, x_masked: Tensor, context: Tensor) -> tuple[Tensor, Tensor]:
        shape = torch.broadcast_shapes(x_masked.shape[:-1], context.shape[:-1])
        x_masked = x_masked.expand(*shape, -1)
        context = context.expand(*shape, -1)  # e.g. [S, B, C] for sample((S,))
        shift, raw = self.net(torch.cat([x_masked, context], dim=-1)).chunk(2, dim=-1)
        return shift, raw


class AffineCoupling(Transform):
    """Affine coupling layer of RealNVP (Dinh et al. 2017, arXiv:1605.08803), conditioned on a
    context ``c``. With a fixed 0/1 mask ``b`` (1 = untouched):

    - forward ``y = b * x + (1 - b) * (x * exp(l) + t)``;
    - inverse ``x = b * y + (1 - b) * (y - t) * exp(-l)``;
    - ``(t, l) = net(b * x, c)`` and ``b * x = b * y``, so both directions take one pass;
    - forward ``log|det dy/dx| = sum_d (1 - b_d) * l_d``; inverse the negative.

    ``l = bound * tanh(raw / bound)`` softly clamps the log-scale to (-bound, bound), which
    keeps early training stable.
    """

    domain = constraints.independent(constraints.real, 1)
    codomain = constraints.independent(constraints.real, 1)
    bijective = True

    def __init__(
        self,
        net: CouplingNet,
        mask: Tensor,
        context: Tensor,
        log_scale_bound: float = 3.0,
        cache_size: int = 1,
    ) -> None:
        super().__init__(cache_size=cache_size)
        self.net, self.mask, self.context = net, mask, context
        self.log_scale_bound = log_scale_bound

    def _shift_log_scale(self, x_masked: Tensor) -> tuple[Tensor, Tensor]:
        _event_shape_check(x_masked, self.mask.shape[-1], "AffineCoupling")
        shift, raw = self.net(x_masked, self.context)
        log_scale = self.log_scale_bound * torch.tanh(raw / self.log_scale_bound)
        keep = 1 - self.mask
        return shift * keep, log_scale * keep  # zero on the untouched half

    def _call(self, x: Tensor) -> Tensor:
        b = self.mask
        shift, log_scale = self._shift_log_scale(b * x)
        return b * x + (1 - b) * (x * log_scale.exp() + shift)

    def _inverse(self, y: Tensor) -> Tensor:
        b = self.mask
        shift, log_scale = self._shift_log_scale(b * y)
        return b * y + (1 - b) * (y - shift) * torch.exp(-log_scale)

    def log_abs_det_jacobian(self, x: Tensor, y: Tensor) -> Tensor:
        """Returns ``sum_d (1 - b_d) l_d(b * x, c)``, ``[...]``."""
        return self._shift_log_scale(self.mask * x)[1].sum(dim=-1)

    def with_cache(self, cache_size: int = 1) -> AffineCoupling:
        if self._cache_size == cache_size:
            return self
        return AffineCoupling(self.net, self.mask, self.context, self.log_scale_bound, cache_size)


class ConditionalRealNVP(nn.Module):
    """Returns p(y | c): a base ``N(mu(c), sigma(c)^2)`` (or ``N(0, I)``) pushed through
    ``num_layers`` affine couplings with alternating masks, every coupling network reading the
    context ``c``.

    ``flow(c)`` is a ``TransformedDistribution`` (``rsample``, ``sample``, ``log_prob``);
    ``flow.push(x, c)`` is ``y = g(x | c)`` for a given base point. All parameters are shared
    across contexts and trainable.

    Parameters
    ----------
    dim : int
        Event size ``D`` of ``y``.
    context_dim : int
        Width ``C`` of the context (0: unconditional; then pass ``c`` as ``[..., 0]``).
    hidden_dims : sequence of int
        Hidden widths of every coupling network (and of the base's network).
    num_layers : int
        Coupling layers; masks alternate so every dim is transformed (D >= 2).
    conditional_base : bool
        Base ``N(mu(c), sigma(c)^2)`` from a :class:`~vaelab.distributions.DiagGaussian`
        (``min_scale`` floor) instead of ``N(0, I)``.
    """

    def __init__(
        self,
        dim: int,
        context_dim: int,
        hidden_dims: Sequence[int] = (64, 64),
        num_layers: int = 4,
        conditional_base: bool = True,
        min_scale: float = 1e-3,
        log_scale_bound: float = 3.0,
        activation: type[nn.Module] = nn.ReLU,
    ) -> None:
        super().__init__()
        if dim < 1 or context_dim < 0 or num_layers < 1:
            raise ValueError(
                f"ConditionalRealNVP needs dim >= 1, context_dim >= 0 and "
                f"num_layers >= 1, got {dim}, {context_dim}, {num_layers}"
            )
        self.dim, self.context_dim, self.log_scale_bound = dim, context_dim, log_scale_bound
        self.nets = nn.ModuleList(
            CouplingNet(dim, context_dim, hidden_dims, activation) for _ in range(num_layers)
        )
        # layer i leaves dims j with (j + i) even untouched; in 1-D every other layer is the
        # identity and the others are context-dependent affine maps
        masks = torch.stack([(torch.arange(dim) + i) % 2 == 0 for i in range(num_layers)])
        self.masks: Tensor
        self.register_buffer("masks", masks.float(), persistent=False)  # [L, D]
        self.base = (
            DiagGaussian(context_dim, dim, hidden_dims, activation, min_scale)
            if conditional_base and context_dim > 0
            else None
        )

    def _check_context(self, context: Tensor) -> None:
        if context.dim() < 1 or context.shape[-1] != self.context_dim:
            raise ValueError(
                f"context must be [..., {self.context_dim}], got {list(context.shape)}"
            )

    def transforms(self, context: Tensor) -> list[Transform]:
        """Fresh coupling transforms for ``context`` ``[..., C]``, base -> sample order."""
        self._check_context(context)
        masks = self.masks.to(context.dtype)
        return [
            AffineCoupling(cast(CouplingNet, net), mask, context, self.log_scale_bound)
            for net, mask in zip(self.nets, masks, strict=True)
        ]

    def base_distribution(self, context: Tensor) -> Distribution:
        """Returns the base p(x | c), batch shape ``context.shape[:-1]``, event ``[D]``."""
        self._check_context(context)
        if self.base is not None:
            return self.base(context)
        return standard_normal(context.new_zeros(*context.shape[:-1], self.dim))

    def forward(self, context: Tensor) -> TransformedDistribution:
        return TransformedDistribution(self.base_distribution(context), self.transforms(context))

    def push(self, x: Tensor, context: Tensor) -> Tensor:
        """Returns ``y = g(x | c)`` ``[..., D]`` for given base points ``x [..., D]``
        (e.g. a base sample shared across contexts, or a base-space action of a policy)."""
        _event_shape_check(x, self.dim, "ConditionalRealNVP.push")
        for t in self.transforms(context):
            x = t(x)
        return x

    def pull(self, y: Tensor, context: Tensor) -> Tensor:
        """Returns the base point ``x = g^{-1}(y | c)`` ``[..., D]``."""
        _event_shape_check(y, self.dim, "ConditionalRealNVP.pull")
        for t in reversed(self.transforms(context)):
            y = t.inv(y)
        return y


# ----------------------------------------------------------------------------- model


__all__ = [
    "AffineAutoregressive",
    "AffineCoupling",
    "ConditionalRealNVP",
    "CouplingNet",
    "IAFStack",
    "Permute",
]
