"""Sequential VAE with actions: a nonlinear state-space model and a filtering or smoothing guide.

Generative model, for observations x_t, actions a_t (``a[:, t]`` is taken after ``x[:, t]``)
and latent states z_t (the course's s_t, o_t are ``z``, ``x`` here):

    p(x, z | a) = p(z_1) prod_{t>=2} p(z_t | z_{t-1}, a_{t-1}) prod_t p(x_t | z_t),

all diagonal Gaussians whose mean and scale come from MLPs (``transition``, ``emitter``) and a
learnable ``initial`` N(m, diag s^2). The guide factorises the same way,

    q(z | x, a) = prod_t q(z_t | z_{t-1}, a_{t-1}, x_t)                   ("filtering"),
    q(z | x, a) = prod_t q(z_t | z_{t-1}, a_{t-1}, x_t, h_t)              ("smoothing"),

with h_t a backward GRU state summarising (x_{t:T}, a_{t:T}). The guide takes a_{t-1}, the
action that led to z_t, not a_t: under the model a_t only drives z_{t+1}, so given z_{t-1} the
exact posterior of z_t depends on a_{t-1}, x_t and, through the future, on (x_{t+1:T}, a_{t:T})
-- which the smoothing guide sees. ``z_{0}`` for the first step is a learned vector ``z_q0``
and a_0 = 0. Then

    ELBO = sum_t E_q[log p(x_t | z_t)] - E_q[KL(q(z_t | .) || p(z_t | z_{t-1}, a_{t-1}))],

one reparameterised path z ~ q, each KL in closed form given the sampled z_{t-1}.

With ``linear=True`` the transition and emitter are affine with constant diagonal noise: the
model is a linear-Gaussian SSM, :meth:`SSM.linear_system` returns its matrices and
:func:`vaelab.kalman.kalman_log_likelihood` its exact log p(x | a), so ELBO <= log p(x | a)
can be checked exactly.

Krishnan, Shalit & Sontag 2015, Deep Kalman Filters (arXiv:1511.05121), for the model with
actions; Krishnan, Shalit & Sontag 2017, Structured Inference Networks for Nonlinear State
Space Models (arXiv:1609.09869), for the structured guides.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor, nn
from torch.distributions import Independent, Normal
from torch.nn.functional import softplus
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from vaelab.distributions import DiagGaussian, LearnableNormal
from vaelab.kalman import LinearGaussianSSM
from vaelab.nn import activation, reverse_sequences
from vaelab.protocol import SequentialModel, register

GUIDES = ("filtering", "smoothing")


@dataclass
class SSMConfig:
    x_dim: int = 2
    a_dim: int = 2
    z_dim: int = 4
    hidden_dim: int = 64  # width of the one hidden layer of every MLP
    activation: str = "tanh"
    guide: str = "filtering"  # or "smoothing" (adds a backward GRU over x_{t:T}, a_{t:T})
    rnn_dim: int = 64  # backward GRU width (smoothing guide only)
    analytic_kl: bool = True
    linear: bool = False  # affine transition, emitter and guide: a linear-Gaussian SSM
    min_scale: float = 1e-3

    def __post_init__(self) -> None:
        for name in ("x_dim", "z_dim", "hidden_dim", "rnn_dim"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.a_dim < 0:
            raise ValueError(f"a_dim must be >= 0 (0 for no actions), got {self.a_dim}")
        if self.guide not in GUIDES:
            raise ValueError(f"guide must be one of {GUIDES}, got {self.guide!r}")
        if not self.min_scale > 0:
            raise ValueError(
                f"min_scale must be > 0 so scales stay positive, got {self.min_scale}"
            )
        activation(self.activation)  # raises on an unknown name


class LinearGaussian(nn.Module):
    """Returns N(W c + b, diag(s^2)) for a context ``c``: an affine mean and a constant,
    learnable scale s = softplus(raw) + min_scale -- one linear-Gaussian block of an SSM."""

    def __init__(self, in_dim: int, out_dim: int, scale: float = 1.0, min_scale: float = 1e-3):
        super().__init__()
        self.linear = nn.Linear(in_dim, out_dim)
        raw = math.log(math.expm1(scale - min_scale))  # inverse softplus
        self.raw_scale = nn.Parameter(torch.full((out_dim,), raw))
        self.min_scale = min_scale

    @property
    def scale(self) -> Tensor:
        return softplus(self.raw_scale) + self.min_scale

    def forward(self, *context: Tensor) -> Independent:
        loc = self.linear(context[0] if len(context) == 1 else torch.cat(context, dim=-1))
        return Independent(Normal(loc, self.scale.expand_as(loc)), 1)


@register
class SSM(SequentialModel):
    """State-space model with actions, trained by the sequential ELBO (see the module doc)."""

    name = "ssm"
    Config = SSMConfig
    card = (
        "**Sequential VAE (deep state-space model).** A latent state z_t evolves by "
        "p(z_t | z_{t-1}, a_{t-1}) and emits x_t; an RNN guide infers the states from the "
        "whole sequence. On the linear system the exact log-likelihood is known (Kalman "
        "filter), so the gap ELBO vs log p(x) can be watched. Its Gaussian emission is a "
        "density over real values, so it is offered only for real-valued sequences. "
        "Krishnan et al. 2015 (arXiv:1511.05121). Taught in "
        "notebooks/03_sequential_vae.ipynb."
    )
    preferred_data = "linear"
    train_defaults: ClassVar[dict] = {"epochs": 30, "batch_size": 100, "lr": 3e-3}

    def __init__(self, config: SSMConfig) -> None:
        super().__init__()
        self.config = c = config
        act = activation(c.activation)
        hidden = [] if c.linear else [c.hidden_dim]
        self.initial = LearnableNormal(c.z_dim, min_scale=c.min_scale)  # p(z_1)
        self.transition: LinearGaussian | DiagGaussian
        self.emitter: LinearGaussian | DiagGaussian
        if c.linear:
            self.transition = transition = LinearGaussian(
                c.z_dim + c.a_dim, c.z_dim, 1.0, c.min_scale
            )
            with torch.no_grad():  # identity-initialised: states persist (as in Pyro's DMM)
                transition.linear.weight[:, : c.z_dim].copy_(torch.eye(c.z_dim))
                transition.linear.bias.zero_()
            self.emitter = LinearGaussian(c.z_dim, c.x_dim, 1.0, c.min_scale)
        else:
            self.transition = DiagGaussian(c.z_dim + c.a_dim, c.z_dim, hidden, act, c.min_scale)
            self.emitter = DiagGaussian(c.z_dim, c.x_dim, hidden, act, c.min_scale)
        guide_in = c.z_dim + c.a_dim + c.x_dim
        if c.guide == "smoothing":
            self.rnn = nn.GRU(c.x_dim + c.a_dim, c.rnn_dim, batch_first=True)
            guide_in += c.rnn_dim
        self.combiner = DiagGaussian(guide_in, c.z_dim, hidden, act, c.min_scale)
        self.z_q0 = nn.Parameter(torch.zeros(c.z_dim))  # stands in for z_0 in q(z_1 | .)

    @property
    def a_dim(self) -> int:
        return self.config.a_dim

    @property
    def continuous(self) -> bool:
        return True  # Gaussian emissions

    # ------------------------------------------------------------------------- the factors

    def initial_prior(self, n: int) -> Independent:
        """Returns p(z_1) = N(m, diag s^2), batch ``[n]``."""
        return self.initial(n)

    def transition_prior(self, z_prev: Tensor, a_prev: Tensor) -> Independent:
        """Returns p(z_t | z_{t-1}, a_{t-1})."""
        return self.transition(z_prev, a_prev)

    def emission(self, z: Tensor, a_prev: Tensor | None = None) -> Independent:
        """Returns p(x_t | z_t) (actions drive the states only)."""
        return self.emitter(z)

    def _backward_states(self, x: Tensor, a: Tensor, mask: Tensor) -> Tensor:
        """Returns h ``[B, T, H]``, h_t the backward GRU state after reading
        (x_T, a_T), ..., (x_t, a_t) of its own sequence (zeros at padding)."""
        lengths = mask.sum(dim=1)
        rev = reverse_sequences(torch.cat([x, a], dim=-1), lengths)  # [B, T, X + A]
        packed = pack_padded_sequence(rev, lengths.cpu(), batch_first=True, enforce_sorted=False)
        h, _ = self.rnn(packed)
        h, _ = pad_packed_sequence(h, batch_first=True, total_length=x.shape[1])  # [B, T, H]
        return reverse_sequences(h, lengths)

    def guide(
        self, x: Tensor, a: Tensor, mask: Tensor, noise: Tensor | None = None
    ) -> tuple[Tensor, Independent]:
        """Samples z ~ q(z | x, a) = prod_t q(z_t | z_{t-1}, a_{t-1}, x_t[, h_t]), one step at
        a time; returns the path ``[B, T, Z]`` and the conditionals along it, batch
        ``[B, T]``."""
        size, steps, _ = x.shape
        h = self._backward_states(x, a, mask) if self.config.guide == "smoothing" else None
        z_prev = self.z_q0.expand(size, -1)  # [B, Z]
        a_prev = a.new_zeros(size, self.config.a_dim)
        zs, locs, scales = [], [], []
        for t in range(steps):  # sequential: z_t depends on the sampled z_{t-1}
            context = (
                (z_prev, a_prev, x[:, t]) if h is None else (z_prev, a_prev, x[:, t], h[:, t])
            )
            q_t = self.combiner(*context)
            # reparameterised (z = mean + stddev * eps): gradients flow through the draw
            z_prev = q_t.rsample() if noise is None else q_t.mean + q_t.stddev * noise[:, t]
            zs.append(z_prev)
            locs.append(q_t.mean)
            scales.append(q_t.stddev)
            a_prev = a[:, t]
        q_z = Independent(Normal(torch.stack(locs, 1), torch.stack(scales, 1)), 1)  # [B, T]
        return torch.stack(zs, dim=1), q_z

    # ------------------------------------------------------------------------- linear-Gaussian

    def linear_system(self) -> LinearGaussianSSM:
        """Returns the model's generative part as a :class:`LinearGaussianSSM` (differentiable),
        for exact log p(x | a) with the Kalman filter. Needs ``linear=True``."""
        transition, emitter = self._need_linear()
        z = self.config.z_dim
        w = transition.linear.weight  # [Z, Z + A]
        return LinearGaussianSSM(
            m0=self.initial.loc,
            P0=torch.diag(self.initial.scale**2),
            A=w[:, :z],
            B=w[:, z:],
            b=transition.linear.bias,
            Q=torch.diag(transition.scale**2),
            C=emitter.linear.weight,
            d=emitter.linear.bias,
            R=torch.diag(emitter.scale**2),
        )

    @torch.no_grad()
    def set_linear_system(self, system: LinearGaussianSSM) -> None:
        """Copy a linear-Gaussian system with diagonal P0, Q, R into the generative part
        (e.g. the true system, to train the guide alone). Needs ``linear=True``."""
        transition, emitter = self._need_linear()
        c = self.config
        if (system.z_dim, system.x_dim, system.a_dim) != (c.z_dim, c.x_dim, c.a_dim):
            raise ValueError(
                f"system has z, x, a dims {system.z_dim, system.x_dim, system.a_dim}"
                f", the model {c.z_dim, c.x_dim, c.a_dim}"
            )
        stds = {}
        for name in ("P0", "Q", "R"):
            cov = getattr(system, name)
            if not torch.equal(cov, torch.diag(torch.diagonal(cov))):
                raise ValueError(f"{name} must be diagonal: the model's noises are diagonal")
            stds[name] = torch.diagonal(cov).sqrt()

        def raw(std: Tensor) -> Tensor:
            return torch.log(torch.expm1(std - c.min_scale))  # inverse of softplus + min_scale

        self.initial.loc.copy_(system.m0)
        self.initial.raw_scale.copy_(raw(stds["P0"]))
        b, d = system.offsets()
        transition.linear.weight.copy_(torch.cat([system.A, system.B], dim=1))
        transition.linear.bias.copy_(b)
        transition.raw_scale.copy_(raw(stds["Q"]))
        emitter.linear.weight.copy_(system.C)
        emitter.linear.bias.copy_(d)
        emitter.raw_scale.copy_(raw(stds["R"]))

    def generative_parameters(self) -> list[nn.Parameter]:
        """The parameters of p(x, z | a): ``initial``, ``transition``, ``emitter``."""
        return [
            *self.initial.parameters(),
            *self.transition.parameters(),
            *self.emitter.parameters(),
        ]

    def _need_linear(self) -> tuple[LinearGaussian, LinearGaussian]:
        """Returns ``(transition, emitter)``, the affine factors of a ``linear=True`` model."""
        transition, emitter = self.transition, self.emitter
        if not (
            self.config.linear
            and isinstance(transition, LinearGaussian)
            and isinstance(emitter, LinearGaussian)
        ):
            raise ValueError(
                "only a linear-Gaussian model has exact matrices; build it with "
                "SSMConfig(linear=True)"
            )
        return transition, emitter


__all__ = ["SSM", "LinearGaussian", "SSMConfig", "reverse_sequences"]
