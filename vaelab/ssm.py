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
from torch.distributions import Independent, Normal, kl_divergence
from torch.nn.functional import softplus
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from vaelab.data import Batch
from vaelab.distributions import DiagGaussian, LearnableNormal
from vaelab.kalman import LinearGaussianSSM
from vaelab.nn import activation, reverse_sequences
from vaelab.objectives import ELBOTerms, kl_term, masked_sum

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
            raise ValueError(f"min_scale must be > 0 so scales stay positive, got "
                             f"{self.min_scale}")
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


class SSM(nn.Module):
    """State-space model with actions, trained by the sequential ELBO (see the module doc)."""

    name = "ssm"
    train_defaults: ClassVar[dict] = {"epochs": 30, "batch_size": 100, "lr": 3e-3}

    def __init__(self, config: SSMConfig) -> None:
        super().__init__()
        self.config = c = config
        act = activation(c.activation)
        hidden = [] if c.linear else [c.hidden_dim]
        self.initial = LearnableNormal(c.z_dim, min_scale=c.min_scale)  # p(z_1)
        if c.linear:
            self.transition = LinearGaussian(c.z_dim + c.a_dim, c.z_dim, 1.0, c.min_scale)
            with torch.no_grad():  # identity-initialised: states persist (as in Pyro's DMM)
                self.transition.linear.weight[:, :c.z_dim].copy_(torch.eye(c.z_dim))
                self.transition.linear.bias.zero_()
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

    # ------------------------------------------------------------------------- inputs

    def _check(self, batch: Batch) -> tuple[Tensor, Tensor, Tensor]:
        """Returns ``x [B, T, X]``, ``a [B, T, A]``, ``mask [B, T]`` with padding zeroed."""
        c, x = self.config, batch.x
        if x.dim() != 3 or x.shape[-1] != c.x_dim:
            raise ValueError(f"x must be [B, T, {c.x_dim}], got {list(x.shape)}; add a time "
                             f"axis, or build the model with x_dim={x.shape[-1]}")
        size, steps = x.shape[:2]
        a = batch.a
        if a is None:
            if c.a_dim > 0:
                raise ValueError(f"this model takes actions: the batch needs a [B, T, "
                                 f"{c.a_dim}], or build it with a_dim=0")
            a = x.new_zeros(size, steps, 0)
        elif a.shape != (size, steps, c.a_dim):
            raise ValueError(f"a must be [{size}, {steps}, {c.a_dim}] like x, got "
                             f"{list(a.shape)}; build the model with a_dim={a.shape[-1]}")
        mask = batch.mask
        if mask is None:
            mask = torch.ones(size, steps, dtype=torch.bool, device=x.device)
        else:
            lengths = mask.sum(dim=1)
            prefix = torch.arange(steps, device=x.device) < lengths[:, None]
            if mask.shape != (size, steps) or not torch.equal(mask, prefix):
                raise ValueError("mask must be [B, T], True for observed steps then False for "
                                 "padding at the end; pad sequences at the end")
            if int(lengths.min()) < 1:
                raise ValueError("every sequence needs at least one observed step; drop empty "
                                 "sequences")
        # padding may hold anything (NaN too): zero it, so it reaches no network input and
        # no gradient (0 * NaN is NaN)
        x = torch.where(mask[..., None], x, torch.zeros_like(x))
        a = torch.where(mask[..., None], a, torch.zeros_like(a))
        return x, a, mask

    def _backward_states(self, x: Tensor, a: Tensor, mask: Tensor) -> Tensor:
        """Returns h ``[B, T, H]``, h_t the backward GRU state after reading
        (x_T, a_T), ..., (x_t, a_t) of its own sequence (zeros at padding)."""
        lengths = mask.sum(dim=1)
        rev = reverse_sequences(torch.cat([x, a], dim=-1), lengths)  # [B, T, X + A]
        packed = pack_padded_sequence(rev, lengths.cpu(), batch_first=True, enforce_sorted=False)
        h, _ = self.rnn(packed)
        h, _ = pad_packed_sequence(h, batch_first=True, total_length=x.shape[1])  # [B, T, H]
        return reverse_sequences(h, lengths)

    # ------------------------------------------------------------------------- model

    def _guide(self, x: Tensor, a: Tensor, mask: Tensor, sample: bool
               ) -> tuple[Tensor, Independent]:
        size, steps, _ = x.shape
        h = self._backward_states(x, a, mask) if self.config.guide == "smoothing" else None
        z_prev = self.z_q0.expand(size, -1)  # [B, Z]
        a_prev = a.new_zeros(size, self.config.a_dim)
        zs, locs, scales = [], [], []
        for t in range(steps):  # sequential: z_t depends on the sampled z_{t-1}
            context = (z_prev, a_prev, x[:, t]) if h is None else (
                z_prev, a_prev, x[:, t], h[:, t])
            q_t = self.combiner(*context)
            z_prev = q_t.rsample() if sample else q_t.mean  # reparameterised: gradients flow
            zs.append(z_prev)
            locs.append(q_t.mean)
            scales.append(q_t.stddev)
            a_prev = a[:, t]
        q_z = Independent(Normal(torch.stack(locs, 1), torch.stack(scales, 1)), 1)  # [B, T]
        return torch.stack(zs, dim=1), q_z

    def posterior(self, batch: Batch, sample: bool = True) -> tuple[Tensor, Independent]:
        """Returns a path ``z [B, T, Z]`` from the guide (reparameterised; the path of the
        means when ``sample`` is False) and the guide's conditionals
        q(z_t | z_{t-1}, a_{t-1}, x_t[, h_t]) along it, batch shape ``[B, T]``."""
        return self._guide(*self._check(batch), sample=sample)

    def prior(self, z: Tensor, a: Tensor) -> Independent:
        """Returns p(z_1) and p(z_t | z_{t-1}, a_{t-1}) for t >= 2 as one distribution with
        batch shape ``[B, T]``, for a path ``z [B, T, Z]`` and actions ``a [B, T, A]``."""
        p_1 = self.initial(z.shape[0])  # [B]
        p_t = self.transition(z[:, :-1], a[:, :-1])  # [B, T - 1], all steps in one call
        loc = torch.cat([p_1.mean[:, None], p_t.mean], dim=1)
        scale = torch.cat([p_1.stddev[:, None], p_t.stddev], dim=1)
        return Independent(Normal(loc, scale), 1)

    def forward(self, batch: Batch, **kw) -> ELBOTerms:
        """The ELBO terms, as :meth:`elbo` (``kw`` goes to it): training calls the model
        through ``forward`` so that a DistributedDataParallel wrapper synchronises gradients."""
        return self.elbo(batch, **kw)

    def elbo(self, batch: Batch, analytic_kl: bool | None = None) -> ELBOTerms:
        """Returns the sequential ELBO terms per sequence, ``[B]`` each, summed over observed
        steps, with one reparameterised path z ~ q(z | x, a)."""
        x, a, mask = self._check(batch)
        z, q_z = self._guide(x, a, mask, sample=True)  # [B, T, Z]
        p_z = self.prior(z, a)
        log_px = self.emitter(z).log_prob(x)  # [B, T], every step in one call
        analytic = self.config.analytic_kl if analytic_kl is None else analytic_kl
        kl = kl_term(q_z, p_z, z, analytic)  # [B, T]
        return ELBOTerms(masked_sum(log_px, mask), masked_sum(kl, mask),
                         mask.sum(dim=1).to(log_px.dtype))

    @torch.no_grad()
    def kl_per_dim(self, batch: Batch) -> Tensor:
        """Returns KL(q(z_t | .) || p(z_t | z_{t-1}, a_{t-1})) per latent dimension, ``[Z]``,
        averaged over observed steps along one sampled guide path (diagonal Gaussians)."""
        x, a, mask = self._check(batch)
        z, q_z = self._guide(x, a, mask, sample=True)  # [B, T, Z]
        kl = kl_divergence(q_z.base_dist, self.prior(z, a).base_dist)  # [B, T, Z]
        return kl[mask].mean(dim=0)

    @torch.no_grad()
    def sample(self, n: int, steps: int | None = None, a: Tensor | None = None):
        """Returns ``(z [n, T, Z], x [n, T, X])`` from the model driven by actions
        ``a [n, T, A]`` (zeros when None; ``steps`` defaults to ``a``'s length, else 20);
        ``x`` is the emitter mean E[x_t | z_t]."""
        c, p = self.config, next(self.parameters())
        if a is None:
            steps = 20 if steps is None else steps
            a = p.new_zeros(n, steps, c.a_dim)
        steps = a.shape[1] if steps is None else steps
        if a.shape != (n, steps, c.a_dim):
            raise ValueError(f"a must be [n, steps, {c.a_dim}] = [{n}, {steps}, {c.a_dim}], "
                             f"got {list(a.shape)}")
        zs = [self.initial(n).sample()]
        for t in range(1, steps):
            zs.append(self.transition(zs[-1], a[:, t - 1]).sample())
        z = torch.stack(zs, dim=1)  # [n, T, Z]
        return z, self.emitter(z).mean

    @torch.no_grad()
    def latents(self, batch: Batch) -> Tensor:
        """Returns the guide's means along its mean path, ``[B, T, Z]``."""
        return self.posterior(batch, sample=False)[0]

    @torch.no_grad()
    def reconstruct(self, batch: Batch) -> Tensor:
        """Returns E[x_t | z_t] at the guide's mean path, ``[B, T, X]``."""
        return self.emitter(self.latents(batch)).mean

    # ------------------------------------------------------------------------- linear-Gaussian

    def linear_system(self) -> LinearGaussianSSM:
        """Returns the model's generative part as a :class:`LinearGaussianSSM` (differentiable),
        for exact log p(x | a) with the Kalman filter. Needs ``linear=True``."""
        self._need_linear()
        z = self.config.z_dim
        w = self.transition.linear.weight  # [Z, Z + A]
        return LinearGaussianSSM(
            m0=self.initial.loc, P0=torch.diag(self.initial.scale**2),
            A=w[:, :z], B=w[:, z:], b=self.transition.linear.bias,
            Q=torch.diag(self.transition.scale**2),
            C=self.emitter.linear.weight, d=self.emitter.linear.bias,
            R=torch.diag(self.emitter.scale**2),
        )

    @torch.no_grad()
    def set_linear_system(self, system: LinearGaussianSSM) -> None:
        """Copy a linear-Gaussian system with diagonal P0, Q, R into the generative part
        (e.g. the true system, to train the guide alone). Needs ``linear=True``."""
        self._need_linear()
        c = self.config
        if (system.z_dim, system.x_dim, system.a_dim) != (c.z_dim, c.x_dim, c.a_dim):
            raise ValueError(f"system has z, x, a dims {system.z_dim, system.x_dim, system.a_dim}"
                             f", the model {c.z_dim, c.x_dim, c.a_dim}")
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
        self.transition.linear.weight.copy_(torch.cat([system.A, system.B], dim=1))
        self.transition.linear.bias.copy_(system.b)
        self.transition.raw_scale.copy_(raw(stds["Q"]))
        self.emitter.linear.weight.copy_(system.C)
        self.emitter.linear.bias.copy_(system.d)
        self.emitter.raw_scale.copy_(raw(stds["R"]))

    def generative_parameters(self) -> list[nn.Parameter]:
        """The parameters of p(x, z | a): ``initial``, ``transition``, ``emitter``."""
        return [*self.initial.parameters(), *self.transition.parameters(),
                *self.emitter.parameters()]

    def _need_linear(self) -> None:
        if not self.config.linear:
            raise ValueError("only a linear-Gaussian model has exact matrices; build it with "
                             "SSMConfig(linear=True)")


__all__ = ["SSM", "LinearGaussian", "SSMConfig", "reverse_sequences"]
