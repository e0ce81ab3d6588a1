"""Deep Markov Model: a non-linear state-space model with a structured inference network.

Krishnan, Shalit & Sontag 2017, "Structured Inference Networks for Nonlinear State Space
Models" (arXiv:1609.09869). Decomposition and names in the spirit of Pyro's DMM example.

Generative model, for t = 1..T, with a trainable z_0:

    p(z_t | z_{t-1}) = N(loc(z_{t-1}), diag scale(z_{t-1})^2)    (gated transition)
    p(x_t | z_t)     = Bernoulli(logits(z_t)) over 88 piano keys  (emitter)

Guide ("ST-R" in the paper), with a trainable z_q_0:

    q(z_t | z_{t-1}, x_{t:T}) = N(loc(h_t), diag scale(h_t)^2),
    h_t = 1/2 (tanh(W z_{t-1} + b) + h_rnn_t),  h_rnn_t a backward RNN over x_{t:T},

an Elman RNN as in Pyro's example; optionally followed by inverse autoregressive flows
(``num_iafs > 0``). The true posterior p(z_t | z_{t-1}, x_{1:T}) depends only on z_{t-1} and
x_{t:T}, which is why the RNN runs backward in time. Krishnan et al.'s code differs in a few
choices (an LSTM guide, N(0, I) for p(z_1), ...): ``DMMConfig.compat``, :mod:`vaelab.dmm_variants`.

Only the guide is sequential: once the path z_{1:T} is sampled, the transition prior and the
emitter are evaluated for every time step in one batched call each. This file is the readable
model; ``vaelab.fast.dmm`` computes the same ELBO faster and is on by default (``DMM.fast``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import Tensor, nn
from torch.distributions import Distribution, Independent, Normal

from vaelab import fast
from vaelab.data import Batch
from vaelab.distributions import BernoulliLogits
from vaelab.dmm_variants import Compat, check_compat, guide_rnn, positive_scale, standard_normal
from vaelab.flows import IAFStack
from vaelab.nn import MLP, reverse_sequences
from vaelab.objectives import ELBOTerms
from vaelab.protocol import SequentialModel, register

_SIZES = ("x_dim", "z_dim", "emission_dim", "transition_dim", "rnn_dim", "rnn_layers", "iaf_dim")
# field -> (its test, what it must be): DMMConfig's checks of one field each
_FIELD_RULES: dict[str, tuple[Callable[[Any], bool], str]] = {
    **{name: (lambda v: v >= 1, ">= 1") for name in _SIZES},
    "rnn_nonlinearity": (lambda v: v in ("tanh", "relu"), "'tanh' or 'relu'"),
    "num_iafs": (lambda v: v >= 0, ">= 0"),
    "rnn_dropout": (lambda v: 0 <= v < 1, "in [0, 1)"),
    "min_scale": (lambda v: v > 0, "> 0 (a scale of exactly 0 makes the ELBO non-finite)"),
}


@dataclass
class DMMConfig:
    """Defaults are those of Pyro's DMM example on JSB Chorales, for comparability, except the
    RNN's non-linearity (tanh, not relu; see below)."""

    x_dim: int = 88
    z_dim: int = 100
    emission_dim: int = 100
    transition_dim: int = 200
    rnn_dim: int = 600
    # Pyro's "relu" diverged in 2 of 10 seeds within 2 epochs (h_rnn grew to ~400, the KL to
    # 1e8); tanh keeps h_rnn in (-1, 1) at the same cost
    rnn_nonlinearity: str = "tanh"
    rnn_layers: int = 1
    rnn_dropout: float = 0.0
    num_iafs: int = 0  # inverse autoregressive flows after the Gaussian guide
    iaf_dim: int = 100  # hidden width of each IAF's MADE
    # floor on every scale (Pyro's example diverged when a softplus underflowed to 0): keeps
    # log N(z; loc, scale) <= 6 nats per dimension
    min_scale: float = 1e-3
    analytic_kl: bool = True  # closed-form KL per step (the paper); False: one-sample MC
    # the settings that reproduce Krishnan et al.'s code, set by presets (vaelab.dmm_variants)
    compat: Compat = field(default_factory=Compat)

    def __post_init__(self) -> None:
        for name, (ok, rule) in _FIELD_RULES.items():
            if not ok(getattr(self, name)):
                raise ValueError(f"{name} must be {rule}, got {getattr(self, name)!r}")
        check_compat(self)
        if self.rnn_dropout > 0 and self.rnn_layers == 1:
            raise ValueError(
                "rnn_dropout acts between RNN layers only; set rnn_layers >= 2, "
                "or use compat.rnn_output_dropout for a one-layer RNN's outputs"
            )
        if self.num_iafs > 0 and self.analytic_kl:
            raise ValueError(
                "analytic_kl=True needs num_iafs=0: the KL of an IAF posterior "
                "has no closed form; set analytic_kl=False"
            )


class Emitter(nn.Module):
    """Returns p(x_t | z_t) = Bernoulli(logits(z_t)), one event dim over the notes."""

    def __init__(self, x_dim: int, z_dim: int, emission_dim: int) -> None:
        super().__init__()
        self.net = BernoulliLogits(z_dim, x_dim, [emission_dim, emission_dim], nn.ReLU)

    def forward(self, z: Tensor) -> Independent:
        return self.net(z)


class GatedTransition(nn.Module):
    """Returns p(z_t | z_{t-1}) = N(loc, diag scale^2), one event dim.

    A gate g in (0, 1) mixes a linear path (initialised to the identity, so an untrained
    model starts near a random walk) with a non-linear proposal:
    ``loc = (1 - g) * linear(z) + g * proposed``, ``scale = softplus(linear(relu(proposed)))
    + min_scale`` (or ``compat``'s variance through softplus, :func:`positive_scale`).
    """

    def __init__(
        self,
        z_dim: int,
        transition_dim: int,
        min_scale: float,
        softplus_variance: bool = False,
        extra_dim: int = 0,
    ) -> None:
        super().__init__()
        in_dim = z_dim + extra_dim  # z_{t-1}, then any input the transition also reads
        self.gate = MLP(in_dim, [transition_dim], z_dim)  # sigmoid applied in forward
        self.proposed_mean = MLP(in_dim, [transition_dim], z_dim)
        self.z_to_loc = nn.Linear(in_dim, z_dim)
        self.z_to_scale = nn.Linear(z_dim, z_dim)
        self.min_scale = min_scale
        self.softplus_variance = softplus_variance
        with torch.no_grad():
            self.z_to_loc.weight.zero_()[:, :z_dim].copy_(torch.eye(z_dim))
            self.z_to_loc.bias.zero_()

    def forward(self, z_prev: Tensor) -> Independent:
        """z_prev ``[..., Z]`` (or ``[..., Z + extra]``) -> distribution with batch shape
        ``[...]``, event ``[Z]``."""
        gate = torch.sigmoid(self.gate(z_prev))
        proposed = self.proposed_mean(z_prev)
        loc = (1 - gate) * self.z_to_loc(z_prev) + gate * proposed
        s = self.z_to_scale(torch.relu(proposed))
        scale = positive_scale(s, self.min_scale, self.softplus_variance)
        return Independent(Normal(loc, scale), 1)


class Combiner(nn.Module):
    """Returns q(z_t | z_{t-1}, x_{t:T}) = N(loc(h), diag scale(h)^2) with
    ``h = 1/2 (tanh(W z_{t-1} + b) + h_rnn_t)``.

    ``vaelab.fast.scan`` runs the same step over all t with a hand-written backward.
    """

    def __init__(
        self, z_dim: int, rnn_dim: int, min_scale: float, softplus_variance: bool = False
    ) -> None:
        super().__init__()
        self.z_to_hidden = nn.Linear(z_dim, rnn_dim)
        self.hidden_to_loc_scale = nn.Linear(rnn_dim, 2 * z_dim)  # [loc | pre-softplus scale]
        self.min_scale = min_scale
        self.softplus_variance = softplus_variance

    def forward(self, z_prev: Tensor, h_rnn: Tensor) -> Independent:
        h = 0.5 * (torch.tanh(self.z_to_hidden(z_prev)) + h_rnn)
        loc, s = self.hidden_to_loc_scale(h).chunk(2, dim=-1)
        return Independent(Normal(loc, self.scale(s)), 1)

    def scale(self, s: Tensor) -> Tensor:
        """The scale from the pre-activation ``s`` (:func:`positive_scale`)."""
        return positive_scale(s, self.min_scale, self.softplus_variance)


@register
class DMM(SequentialModel):
    """Deep Markov Model with a backward-RNN guide (Krishnan et al. 2017, arXiv:1609.09869)."""

    name = "dmm"
    Config = DMMConfig
    card = (
        "**Deep Markov Model.** Nonlinear (gated) transitions and emissions of a latent "
        "Markov chain, a backward-RNN guide with a combiner; trained on polyphonic music "
        "(88 piano keys per step). Krishnan, Shalit & Sontag 2017 (arXiv:1609.09869). "
        "Taught in notebooks/04_deep_markov_model.ipynb."
    )
    preferred_data = "jsb"
    default_steps = 64
    shares_samples = True  # S guide paths share one backward-RNN pass (vaelab.fast.dmm)
    # Pyro's example's settings (weight_decay_sum: its ClippedAdam's, on a summed loss)
    train_defaults: ClassVar[dict] = {
        "batch_size": 20,
        "lr": 3e-4,
        "betas": (0.96, 0.999),
        "clip_norm": 10.0,
        "lr_decay": 0.99996,
        "anneal_epochs": 1000,
        "min_kl_weight": 0.2,
        "epochs": 5000,
        "eval_every": 10,
        "checkpoint_every": 10,
        "weight_decay_sum": 2.0,
    }

    def __init__(self, config: DMMConfig) -> None:
        super().__init__()
        self.config = c = config
        self.emitter: nn.Module = Emitter(c.x_dim, c.z_dim, c.emission_dim)  # DMMAug's differs
        variance = c.compat.softplus_variance
        self.transition = GatedTransition(c.z_dim, c.transition_dim, c.min_scale, variance)
        self.combiner = Combiner(c.z_dim, c.rnn_dim, c.min_scale, variance)
        self.embed, self.rnn = guide_rnn(c)  # x_t into an Elman RNN, or compat's LSTM
        cell = torch.zeros(c.rnn_layers, 1, c.rnn_dim)  # an LSTM's initial cell state, trained
        self.c_0 = nn.Parameter(cell) if c.compat.rnn_type == "lstm" else None
        self.output_dropout = nn.Dropout(c.compat.rnn_output_dropout)
        self.iaf = IAFStack(c.z_dim, c.num_iafs, c.iaf_dim) if c.num_iafs > 0 else None
        if c.compat.standard_initial_prior:  # p(z_1) = N(0, I); the guide starts from 0
            self.register_buffer("z_0", torch.zeros(c.z_dim))
            self.register_buffer("z_q_0", torch.zeros(c.z_dim))
        else:
            self.z_0 = nn.Parameter(torch.zeros(c.z_dim))  # p(z_1) = transition(z_0)
            self.z_q_0 = nn.Parameter(torch.zeros(c.z_dim))  # guide's z_0
        self.h_0 = nn.Parameter(torch.zeros(c.rnn_layers, 1, c.rnn_dim))  # RNN initial state
        self.fast = True  # vaelab.fast.dmm: the same ELBO, faster; False runs this file's

    # ------------------------------------------------------------------------- the factors

    def initial_prior(self, n: int) -> Independent:
        """Returns p(z_1) = p(z_1 | z_0), or N(0, I) with ``compat.standard_initial_prior``."""
        if self.config.compat.standard_initial_prior:
            return standard_normal(self.z_0, n)
        return self.transition(self.z_0.expand(n, -1))

    def transition_prior(self, z_prev: Tensor, a_prev: Tensor) -> Independent:
        """Returns p(z_t | z_{t-1}) (the DMM takes no actions)."""
        return self.transition(z_prev)

    def emission(self, z: Tensor, a_prev: Tensor | None = None) -> Distribution:
        """Returns p(x_t | z_t) (the DMM takes no actions)."""
        return self.emitter(z)

    def rnn_states(self, x: Tensor, lengths: Tensor) -> Tensor:
        """Returns h_rnn ``[B, T, R]``, the backward RNN's summary of x_{t:T} at each step
        (meaningless at padding, which the caller masks).

        Each sequence is reversed over its own length, so its padding stays at the end, and a
        forward RNN over the reversed batch is a backward RNN over every sequence. The RNN is
        causal, so its outputs at observed steps never see the padding that follows them: the
        same numbers as with ``pack_padded_sequence`` (a test checks), without its cost.
        """
        observed = torch.arange(x.shape[1], device=x.device) < lengths.to(x.device)[:, None]
        x = torch.where(observed[..., None], x, 0.0)  # the padding may hold NaN
        x_rev = self.embed(reverse_sequences(x, lengths))
        h_0 = self.h_0.expand(-1, x.shape[0], -1).contiguous()  # [layers, B, R]
        state: Tensor | tuple[Tensor, Tensor] = h_0
        if self.c_0 is not None:  # an LSTM
            state = (h_0, self.c_0.expand(-1, x.shape[0], -1).contiguous())
        out, _ = self.rnn(x_rev, state)  # [B, T, R], reversed time
        return reverse_sequences(self.output_dropout(out), lengths)

    def guide(
        self, x: Tensor, a: Tensor, mask: Tensor, noise: Tensor | None = None
    ) -> tuple[Tensor, Distribution]:
        """Samples z ~ q(z | x) = prod_t q(z_t | z_{t-1}, x_{t:T}), one step at a time; returns
        the path ``[B, T, Z]`` and the conditionals along it, batch ``[B, T]``."""
        h_rnn = self.rnn_states(x, mask.sum(dim=1))  # [B, T, R]
        if noise is None:
            noise = torch.randn(*x.shape[:2], self.config.z_dim, dtype=x.dtype, device=x.device)
        z_prev = self.z_q_0.expand(len(x), -1)
        zs, us, locs, scales = [], [], [], []
        for t in range(x.shape[1]):  # sequential: z_t depends on the sampled z_{t-1}
            q_t = self.combiner(z_prev, h_rnn[:, t])  # the Gaussian before any flow
            z_prev = q_t.mean + q_t.stddev * noise[:, t]  # reparameterised
            us.append(z_prev)
            for transform in self.iaf.transforms() if self.iaf is not None else ():
                z_prev = transform(z_prev)  # through the IAFs
            zs.append(z_prev)
            locs.append(q_t.mean)
            scales.append(q_t.stddev)
        q_z = Independent(Normal(torch.stack(locs, 1), torch.stack(scales, 1)), 1)  # [B, T]
        if self.iaf is None:
            return torch.stack(zs, dim=1), q_z
        q_z = self.iaf(q_z)  # the flows on every step's Gaussian, batch [B, T]
        z = torch.stack(us, dim=1)
        for transform in q_z.transforms:  # the same path, pushed once more so that q_z's
            z = transform(z)  # cache scores it without inverting the flows
        return z, q_z

    def elbo(
        self,
        batch: Batch,
        analytic_kl: bool | None = None,
        noise: Tensor | None = None,
        samples: int = 1,
    ) -> ELBOTerms:
        """Returns the ELBO terms per sequence (:meth:`SequentialModel.elbo`); ``samples``
        paths per sequence are ``[S*B]`` terms, sample-major like ``batch.repeat(S)``."""
        analytic = self.config.analytic_kl if analytic_kl is None else analytic_kl
        if analytic and self.iaf is not None:
            raise ValueError(
                "analytic_kl=True needs num_iafs=0: the KL of an IAF posterior "
                "has no closed form; pass analytic_kl=False"
            )
        if samples < 1:
            raise ValueError(f"samples must be >= 1, got {samples}")
        if self.fast:
            return fast.dmm.elbo(self, batch, analytic, samples, noise)
        return super().elbo(batch if samples == 1 else batch.repeat(samples), analytic, noise)


# the IAF variant has its own file; registered right after DMM (vaelab/__init__.py imports
# dmm_iaf next) and importable from here as before
from vaelab.dmm_iaf import DMMIAF, DMMIAFConfig  # noqa: F401
