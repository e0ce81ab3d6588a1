"""A conditional density model by a RealNVP flow: p(x | a) exactly, by the change of variables
(Dinh et al. 2017, arXiv:1605.08803), trained on its log-likelihood through the same protocol
as the latent-variable models (a zero KL).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from vaelab.data import Batch
from vaelab.flows import ConditionalRealNVP
from vaelab.nn import activation
from vaelab.objectives import ELBOTerms
from vaelab.protocol import Model, register


@dataclass
class RealNVPConfig:
    x_dim: int = 2  # the modelled variable (e.g. an action)
    a_dim: int = 2  # the context (e.g. a state); 0 gives an unconditional flow
    hidden_dim: int = 64
    num_hidden: int = 2  # hidden layers per coupling network
    num_layers: int = 6
    conditional_base: bool = True
    min_scale: float = 1e-3
    log_scale_bound: float = 3.0
    activation: str = "relu"

    def __post_init__(self) -> None:
        for name, low in (
            ("x_dim", 1),
            ("a_dim", 0),
            ("hidden_dim", 1),
            ("num_hidden", 1),
            ("num_layers", 1),
        ):
            if getattr(self, name) < low:
                raise ValueError(
                    f"RealNVPConfig.{name} must be >= {low}, got {getattr(self, name)}"
                )
        if self.x_dim == 1 and self.a_dim == 0:
            raise ValueError(
                "an unconditional 1-D RealNVP is a single affine map; use "
                "x_dim >= 2 or give a context (a_dim >= 1)"
            )
        if self.min_scale <= 0 or self.log_scale_bound <= 0:
            raise ValueError(
                f"min_scale and log_scale_bound must be > 0, got "
                f"{self.min_scale} and {self.log_scale_bound}"
            )
        activation(self.activation)  # raises on an unknown name


@register
class ConditionalFlowModel(Model):
    """Conditional density model p(x | a) by a conditional RealNVP (Dinh et al. 2017,
    arXiv:1605.08803), e.g. a policy: actions ``x`` given states ``a``.

    There is no latent variable: ``elbo`` returns the exact ``log p(x | a)`` as the
    log-likelihood and a zero KL, so the "ELBO" the trainer maximises is the exact
    log-likelihood and the importance-sampled figure equals it. The base point
    ``z = g^{-1}(x | a)`` plays the role of the latent in ``sample`` and ``latents``.
    Static data: ``x [B, X]``, ``a [B, A]``.
    """

    name = "realnvp"
    Config = RealNVPConfig
    card = (
        "**RealNVP normalizing flow.** An invertible map of a Gaussian, made of affine "
        "coupling layers, gives the exact density p(x | a) by the change of variables; no "
        "latent variables, no ELBO: training maximises log p(x | a) itself. A density over "
        "real values, so it is offered only for real-valued data. Dinh et al. 2017 "
        "(arXiv:1605.08803). Taught in notebooks/05_normalizing_flows.ipynb."
    )
    preferred_data = "moons"
    has_latents = False
    train_defaults: ClassVar[dict] = {"epochs": 30, "batch_size": 256, "lr": 2e-3}

    def __init__(self, config: RealNVPConfig) -> None:
        super().__init__()
        self.config = c = config
        self.flow = ConditionalRealNVP(
            c.x_dim,
            c.a_dim,
            [c.hidden_dim] * c.num_hidden,
            c.num_layers,
            c.conditional_base,
            c.min_scale,
            c.log_scale_bound,
            activation(c.activation),
        )

    def _context(self, a: Tensor | None, like: Tensor) -> Tensor:
        c = self.config
        if a is None:
            if c.a_dim > 0:
                raise ValueError(
                    f"this realnvp model is conditional (a_dim={c.a_dim}); the "
                    f"batch needs a context a [B, {c.a_dim}]"
                )
            return like.new_zeros(like.shape[0], 0)
        if a.dim() != 2 or a.shape[1] != c.a_dim or a.shape[0] != like.shape[0]:
            raise ValueError(
                f"a must be [{like.shape[0]}, {c.a_dim}], got {list(a.shape)}; "
                f"set a_dim to the context width"
            )
        return a

    def _check(self, batch: Batch) -> tuple[Tensor, Tensor]:
        x = batch.x
        if x.dim() != 2 or x.shape[1] != self.config.x_dim:
            raise ValueError(
                f"x must be [B, {self.config.x_dim}], got {list(x.shape)}; "
                f"realnvp models static data"
            )
        return x, self._context(batch.a, x)

    @property
    def continuous(self) -> bool:
        return True  # a density over real values

    def elbo(self, batch: Batch, analytic_kl: bool | None = None) -> ELBOTerms:
        """Returns the exact ``log p(x | a)`` ``[B]`` as ``log_likelihood``, zero KL and one
        step per example. ``analytic_kl`` is ignored (there is no latent)."""
        x, a = self._check(batch)
        log_px = self.flow(a).log_prob(x)
        return ELBOTerms(log_px, torch.zeros_like(log_px), torch.ones_like(log_px))

    @torch.no_grad()
    def sample(self, n: int, steps: int | None = None, a: Tensor | None = None):
        """Returns ``(z [n, X], x [n, X])``: base points and their images ``x = g(z | a)``.
        ``a [n, A]`` is the context; omitted, a zero context is used. A static model: no
        ``steps``."""
        if steps is not None:
            raise ValueError("realnvp models static data: sample(n, a=context) takes no steps")
        p = next(self.parameters())
        if a is None:
            a = p.new_zeros(n, self.config.a_dim)
        a = self._context(a, p.new_zeros(n, 1))
        z = self.flow.base_distribution(a).sample()
        return z, self.flow.push(z, a)

    @torch.no_grad()
    def latents(self, batch: Batch) -> Tensor:
        """Returns the base points ``z = g^{-1}(x | a)``, ``[B, X]``."""
        x, a = self._check(batch)
        return self.flow.pull(x, a)

    @torch.no_grad()
    def reconstruct(self, batch: Batch) -> Tensor:
        """Returns ``g(g^{-1}(x | a) | a)``, ``[B, X]``: ``x`` itself up to rounding."""
        x, a = self._check(batch)
        return self.flow.push(self.flow.pull(x, a), a)
