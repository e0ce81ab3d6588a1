"""The DMM's comparison-only settings: what it takes to reproduce Pyro's example and Krishnan,
Shalit & Sontag's code (2017, arXiv:1609.09869) where the two differ. Not part of the model
the course teaches (``vaelab.dmm``, whose defaults are Pyro's): presets set them
(:mod:`vaelab.presets`, e.g. ``krishnan``), or ``--set compat.rnn_type=lstm`` by hand.

``DMMConfig.compat`` holds a :class:`Compat`; this module also builds what only these
variants need: the LSTM guide over an input embedding, and the standard normal p(z_1).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn
from torch.distributions import Independent, Normal
from torch.nn.functional import softplus

if TYPE_CHECKING:
    from vaelab.dmm import DMMConfig


@dataclass
class Compat:
    """Krishnan et al.'s choices where Pyro's DMM example differs (the defaults are Pyro's).

    Their guide: ``rnn_type="lstm"`` over ``input_embedding`` (ReLU(W x_t + b), ``rnn_dim``
    wide, instead of x_t), with dropout on the RNN's outputs while training
    (``rnn_output_dropout``, their 0.1). Their parameterisation: ``softplus_variance``
    (softplus gives the variance, not the scale: :func:`positive_scale`) and
    ``standard_initial_prior`` (p(z_1) = N(0, I) and the guide starts from z_0 = 0, neither
    trained).
    """

    rnn_type: str = "rnn"  # "rnn" (Elman, Pyro's) or "lstm"
    input_embedding: bool = False
    rnn_output_dropout: float = 0.0
    softplus_variance: bool = False
    standard_initial_prior: bool = False

    def __post_init__(self) -> None:
        if self.rnn_type not in ("rnn", "lstm"):
            raise ValueError(f"compat.rnn_type must be 'rnn' or 'lstm', got {self.rnn_type!r}")
        if not 0 <= self.rnn_output_dropout < 1:
            raise ValueError(
                f"compat.rnn_output_dropout must be in [0, 1), got {self.rnn_output_dropout!r}"
            )


def check_compat(config: DMMConfig) -> None:
    """``DMMConfig``'s checks of its ``compat``: a :class:`Compat`, agreeing with the DMM's
    own fields."""
    if not isinstance(config.compat, Compat):
        raise ValueError(
            f"compat must be a vaelab.dmm_variants.Compat, got "
            f"{type(config.compat).__name__}; e.g. compat=Compat(rnn_type='lstm'), or "
            f"vaelab.config.build_config(DMMConfig, {{'compat.rnn_type': 'lstm'}})"
        )
    if config.compat.rnn_type == "lstm" and config.rnn_nonlinearity != "tanh":
        raise ValueError(
            "rnn_nonlinearity applies to compat.rnn_type='rnn' only; leave it at 'tanh'"
        )


def positive_scale(s: Tensor, min_scale: float, softplus_variance: bool) -> Tensor:
    """A Gaussian's scale from an unconstrained ``s``: ``softplus(s) + min_scale`` (Pyro's, the
    DMM's own), or ``sqrt(softplus(s) + min_scale^2)`` when softplus gives the variance
    (``compat.softplus_variance``, Krishnan et al.'s)."""
    if softplus_variance:
        return torch.sqrt(softplus(s) + min_scale**2)
    return softplus(s) + min_scale


def guide_rnn(c: DMMConfig) -> tuple[nn.Module, nn.RNNBase]:
    """The guide's input map and backward RNN: x_t itself into an Elman RNN (Pyro's), or
    with ``c.compat`` Krishnan et al.'s LSTM and ReLU embedding."""
    embed: nn.Module = nn.Identity()
    if c.compat.input_embedding:
        embed = nn.Sequential(nn.Linear(c.x_dim, c.rnn_dim), nn.ReLU())
    rnn_in = c.rnn_dim if c.compat.input_embedding else c.x_dim
    kw: dict[str, Any] = {
        "num_layers": c.rnn_layers,
        "batch_first": True,
        "dropout": c.rnn_dropout,
    }
    if c.compat.rnn_type == "lstm":
        return embed, nn.LSTM(rnn_in, c.rnn_dim, **kw)
    return embed, nn.RNN(rnn_in, c.rnn_dim, nonlinearity=c.rnn_nonlinearity, **kw)


def standard_normal(z_0: Tensor, n: int) -> Independent:
    """Returns p(z_1) = N(0, I) (``compat.standard_initial_prior``), batch ``[n]``, event
    ``[Z]`` and dtype as ``z_0 [Z]``."""
    zeros = torch.zeros_like(z_0).expand(n, -1)
    return Independent(Normal(zeros, torch.ones_like(zeros)), 1)
