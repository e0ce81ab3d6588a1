"""The augmented Deep Markov Model: the previous observation x_{t-1} feeds both the transition
and the emission, and the emission may be autoregressive over the notes (NADE-like).

Krishnan, Shalit & Sontag 2017 (arXiv:1609.09869), Tables 3-4, "DMM-Aug" (``use_prev_input``
and a conditional emission in their code) and its NADE emission. With x_0 = 0:

    p(z_t | z_{t-1}, x_{t-1}) = N(loc, diag scale^2)      (gated transition on [z_{t-1}, x_{t-1}])
    p(x_t | z_t, x_{t-1})     = prod_k Bernoulli(x_tk; sigmoid(f_k([z_t, x_{t-1}])))  ("bernoulli")
                              = prod_k Bernoulli(x_tk; sigmoid(f_k(x_{t,<k}; [z_t, x_{t-1}])))
                                                                                    ("made")

The guide is the DMM's. In the protocol's terms the model's input a_t is its own observation
x_t (a_t is taken after x_t and drives z_{t+1}), so the DMM's fast path and the sequential
base serve it unchanged; sampling feeds each sampled x_t into the next step.

A decoder that sees x_{t-1} explains much of a chorale by itself (notes persist), so the
latents carry less (lower KL, fewer active units); an autoregressive emission also models
chords, which independent Bernoullis over notes cannot.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor
from torch.distributions import Distribution, Independent

from vaelab.data import Batch
from vaelab.distributions import BernoulliLogits, MADEBernoulli
from vaelab.dmm import DMM, DMMConfig, GatedTransition
from vaelab.protocol import register


@dataclass
class DMMAugConfig(DMMConfig):
    """A :class:`~vaelab.dmm.DMMConfig` plus the emission: ``"bernoulli"`` (independent notes
    given [z_t, x_{t-1}]) or ``"made"`` (autoregressive over the notes: ``made_layers``
    hidden layers of width ``made_dim``, at least x_dim - 1, and with ``made_direct`` a linear
    map from the earlier notes straight to each note's logit)."""

    emission: str = "bernoulli"
    made_dim: int = 200
    made_layers: int = 1
    made_direct: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.emission not in ("bernoulli", "made"):
            raise ValueError(f"emission must be 'bernoulli' or 'made', got {self.emission!r}")
        if self.made_dim < self.x_dim - 1:
            raise ValueError(
                f"made_dim must be >= x_dim - 1 = {self.x_dim - 1} (a MADE needs "
                f"every degree), got {self.made_dim}"
            )
        if self.made_layers < 1:
            raise ValueError(f"made_layers must be >= 1, got {self.made_layers}")


@register
class DMMAug(DMM):
    """DMM whose transition and emission also read the previous observation (see the module)."""

    name = "dmm_aug"
    Config = DMMAugConfig
    card = (
        "**Augmented Deep Markov Model.** The DMM whose transition and emission also read "
        "the previous step's notes x_{t-1}, optionally with an emission autoregressive "
        "over the 88 notes (MADE, as NADE in the paper): a decoder that sees the past "
        "needs its latents less. Krishnan, Shalit & Sontag 2017 (arXiv:1609.09869), "
        "DMM-Aug."
    )
    feeds_back_x = True

    def __init__(self, config: DMMAugConfig) -> None:
        super().__init__(config)
        c = config
        self.transition = GatedTransition(
            c.z_dim, c.transition_dim, c.min_scale, c.compat.softplus_variance, extra_dim=c.x_dim
        )
        if c.emission == "made":
            self.emitter = MADEBernoulli(
                c.z_dim + c.x_dim,
                c.x_dim,
                c.made_dim,
                num_hidden=c.made_layers,
                direct=c.made_direct,
            )
        else:
            self.emitter = BernoulliLogits(
                c.z_dim + c.x_dim, c.x_dim, [c.emission_dim, c.emission_dim], torch.nn.ReLU
            )

    def check(self, batch: Batch) -> tuple[Tensor, Tensor, Tensor]:
        """The DMM's checks; the input a_t is the observation x_t itself."""
        x, _, mask = super().check(batch)
        return x, x, mask

    def initial_prior(self, n: int) -> Independent:
        """Returns p(z_1) = p(z_1 | z_0, x_0 = 0), or N(0, I) with
        ``compat.standard_initial_prior``."""
        if self.config.compat.standard_initial_prior:
            return super().initial_prior(n)
        z_0 = self.z_0.expand(n, -1)
        return self.transition(torch.cat([z_0, z_0.new_zeros(n, self.config.x_dim)], -1))

    def transition_prior(self, z_prev: Tensor, a_prev: Tensor) -> Independent:
        """Returns p(z_t | z_{t-1}, x_{t-1})."""
        return self.transition(torch.cat([z_prev, a_prev], dim=-1))

    def emission(self, z: Tensor, a_prev: Tensor | None = None) -> Distribution:
        """Returns p(x_t | z_t, x_{t-1})."""
        if a_prev is None:
            a_prev = z.new_zeros(*z.shape[:-1], self.config.x_dim)
        return self.emitter(z, a_prev)


__all__ = ["DMMAug", "DMMAugConfig"]
