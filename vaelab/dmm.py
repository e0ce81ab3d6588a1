"""Deep Markov Model: a non-linear state-space model with a structured inference network.

Krishnan, Shalit & Sontag 2017, "Structured Inference Networks for Nonlinear State Space
Models" (arXiv:1609.09869). Decomposition and names in the spirit of Pyro's DMM example.

Generative model, for t = 1..T, with a trainable z_0 (``standard_initial_prior``: p(z_1) =
N(0, I), as in Krishnan et al.'s code):

    p(z_t | z_{t-1}) = N(loc(z_{t-1}), diag scale(z_{t-1})^2)    (gated transition)
    p(x_t | z_t)     = Bernoulli(logits(z_t)) over 88 piano keys  (emitter)

Guide ("ST-R" in the paper), with a trainable z_q_0 (0 with ``standard_initial_prior``):

    q(z_t | z_{t-1}, x_{t:T}) = N(loc(h_t), diag scale(h_t)^2),
    h_t = 1/2 (tanh(W z_{t-1} + b) + h_rnn_t),  h_rnn_t a backward RNN over x_{t:T},

an Elman RNN as in Pyro's example, or (``rnn_type="lstm"``, ``input_embedding``,
``rnn_output_dropout``) Krishnan et al.'s LSTM over a ReLU embedding of x_t with dropout on its
outputs; optionally followed by inverse autoregressive flows (``num_iafs > 0``). The true posterior
p(z_t | z_{t-1}, x_{1:T}) depends only on z_{t-1} and x_{t:T}, which is why the RNN runs
backward in time.

Only the guide is sequential: once the path z_{1:T} is sampled, the transition prior and the
emitter are evaluated for every time step in one batched call each.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor, nn
from torch.distributions import Independent, Normal, kl_divergence
from torch.nn.functional import linear, pad, softplus

from vaelab.data import Batch
from vaelab.distributions import BernoulliLogits
from vaelab.flows import IAFStack
from vaelab.nn import (
    MLP,
    by_length,
    elman_rnn,
    fill_padding,
    observed_rows,
    padded_like,
    reverse_sequences,
)
from vaelab.objectives import ELBOTerms, importance_log_likelihood, masked_sum


@dataclass
class DMMConfig:
    """Defaults are those of Pyro's DMM example on JSB Chorales, for comparability, except the
    RNN's non-linearity (tanh, not relu; see below)."""

    x_dim: int = 88
    z_dim: int = 100
    emission_dim: int = 100
    transition_dim: int = 200
    rnn_dim: int = 600
    # Pyro's example uses "relu"; its unbounded state diverged here in 2 of 10 seeds within 2
    # epochs (h_rnn grew to ~400 over a 100-step chorale, the KL to 1e8). tanh keeps h_rnn in
    # (-1, 1) at the same cost; "relu" reproduces Pyro exactly.
    rnn_nonlinearity: str = "tanh"
    rnn_layers: int = 1
    rnn_dropout: float = 0.0
    # Krishnan et al.'s guide, for comparisons: "lstm" (their RNN; ~3x the Elman RNN's cost
    # per step), a ReLU embedding of x_t to rnn_dim before it, and dropout on its outputs
    # while training (their 0.1). The defaults are Pyro's: an Elman RNN on x_t, no dropout.
    rnn_type: str = "rnn"
    input_embedding: bool = False
    rnn_output_dropout: float = 0.0
    num_iafs: int = 0  # inverse autoregressive flows after the Gaussian guide
    iaf_dim: int = 100  # hidden width of each IAF's MADE
    # Floor on every scale. Pyro's example diverged when a softplus underflowed to exactly 0;
    # 1e-3 keeps log N(z; loc, scale) <= 6 nats per dimension and 1 / scale^2 <= 1e6, far
    # below what the data need: a unit-scale latent rarely needs a posterior width < 1e-3.
    min_scale: float = 1e-3
    analytic_kl: bool = True  # closed-form KL per step (the paper); False: one-sample MC
    # Two choices of Krishnan et al.'s code that Pyro's example makes differently, for
    # comparisons: softplus gives every Gaussian's variance, not its scale
    # (scale = sqrt(softplus(.) + min_scale^2)); p(z_1) = N(0, I) and the guide starts from
    # z_0 = 0, neither trained
    softplus_variance: bool = False
    standard_initial_prior: bool = False

    def __post_init__(self) -> None:
        for name in ("x_dim", "z_dim", "emission_dim", "transition_dim", "rnn_dim",
                     "rnn_layers", "iaf_dim"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.rnn_nonlinearity not in ("tanh", "relu"):
            raise ValueError(f"rnn_nonlinearity must be 'tanh' or 'relu', got "
                             f"{self.rnn_nonlinearity!r}")
        if self.num_iafs < 0:
            raise ValueError(f"num_iafs must be >= 0, got {self.num_iafs}")
        if self.rnn_type not in ("rnn", "lstm"):
            raise ValueError(f"rnn_type must be 'rnn' or 'lstm', got {self.rnn_type!r}")
        if self.rnn_type == "lstm" and self.rnn_nonlinearity != "tanh":
            raise ValueError("rnn_nonlinearity applies to rnn_type='rnn' only (an LSTM's are "
                             "fixed); leave it at 'tanh'")
        for name in ("rnn_dropout", "rnn_output_dropout"):
            if not 0 <= getattr(self, name) < 1:
                raise ValueError(f"{name} must be in [0, 1), got {getattr(self, name)}")
        if self.rnn_dropout > 0 and self.rnn_layers == 1:
            raise ValueError("rnn_dropout acts between RNN layers only; set rnn_layers >= 2, "
                             "or use rnn_output_dropout for a one-layer RNN's outputs")
        if not self.min_scale > 0:
            raise ValueError(f"min_scale must be > 0 (a scale of exactly 0 makes the ELBO "
                             f"non-finite), got {self.min_scale}")
        if self.num_iafs > 0 and self.analytic_kl:
            raise ValueError("analytic_kl=True needs num_iafs=0: the KL of an IAF posterior "
                             "has no closed form; set analytic_kl=False")


def positive_scale(s: Tensor, min_scale: float, softplus_variance: bool) -> Tensor:
    """A Gaussian's scale from an unconstrained ``s``: ``softplus(s) + min_scale`` (Pyro), or
    ``sqrt(softplus(s) + min_scale^2)`` when softplus gives the variance (Krishnan et al.)."""
    if softplus_variance:
        return torch.sqrt(softplus(s) + min_scale**2)
    return softplus(s) + min_scale


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
    + min_scale`` (or the variance through softplus, :func:`positive_scale`).
    """

    def __init__(self, z_dim: int, transition_dim: int, min_scale: float,
                 softplus_variance: bool = False) -> None:
        super().__init__()
        self.gate = MLP(z_dim, [transition_dim], z_dim)  # sigmoid applied in forward
        self.proposed_mean = MLP(z_dim, [transition_dim], z_dim)
        self.z_to_loc = nn.Linear(z_dim, z_dim)
        self.z_to_scale = nn.Linear(z_dim, z_dim)
        self.min_scale = min_scale
        self.softplus_variance = softplus_variance
        with torch.no_grad():
            self.z_to_loc.weight.copy_(torch.eye(z_dim))
            self.z_to_loc.bias.zero_()

    def forward(self, z_prev: Tensor) -> Independent:
        """z_prev ``[..., Z]`` -> distribution with batch shape ``[...]``, event ``[Z]``."""
        gate = torch.sigmoid(self.gate(z_prev))
        proposed = self.proposed_mean(z_prev)
        loc = (1 - gate) * self.z_to_loc(z_prev) + gate * proposed
        scale = positive_scale(self.z_to_scale(torch.relu(proposed)), self.min_scale,
                               self.softplus_variance)
        return Independent(Normal(loc, scale), 1)


class Combiner(nn.Module):
    """Returns q(z_t | z_{t-1}, x_{t:T}) = N(loc(h), diag scale(h)^2) with
    ``h = 1/2 (tanh(W z_{t-1} + b) + h_rnn_t)``.

    ``forward`` is the readable one-step version. The guide's plain loop (IAF guides, and
    evaluation without gradients) runs the same maths with the RNN part projected for all
    steps at once (:meth:`project_rnn`, :meth:`step`); training runs :class:`_CombinerScan`.
    """

    def __init__(self, z_dim: int, rnn_dim: int, min_scale: float,
                 softplus_variance: bool = False) -> None:
        super().__init__()
        self.z_to_hidden = nn.Linear(z_dim, rnn_dim)
        self.hidden_to_loc_scale = nn.Linear(rnn_dim, 2 * z_dim)  # [loc | pre-softplus scale]
        self.min_scale = min_scale
        self.softplus_variance = softplus_variance

    def forward(self, z_prev: Tensor, h_rnn: Tensor) -> Independent:
        h = 0.5 * (torch.tanh(self.z_to_hidden(z_prev)) + h_rnn)
        loc, s = self.hidden_to_loc_scale(h).chunk(2, dim=-1)
        return Independent(Normal(loc, positive_scale(s, self.min_scale,
                                                      self.softplus_variance)), 1)

    def project_rnn(self, h_rnn: Tensor) -> Tensor:
        """The RNN's share of ``[loc | pre-scale]``, ``1/2 A h_rnn + c``, for all steps."""
        return linear(0.5 * h_rnn, self.hidden_to_loc_scale.weight,
                      self.hidden_to_loc_scale.bias)

    def step(self, z_prev: Tensor, rnn_part: Tensor, half_weight_t: Tensor) -> tuple[Tensor,
                                                                                   Tensor]:
        """``(loc, scale)`` ``[B, Z]`` of one step; ``half_weight_t = 1/2 A^T``. Linearity
        splits ``A h + c`` into the precomputed RNN part and the z-dependent part."""
        tanh_z = torch.tanh(self.z_to_hidden(z_prev))  # [B, R]
        loc, s = torch.addmm(rnn_part, tanh_z, half_weight_t).chunk(2, dim=-1)
        return loc, positive_scale(s, self.min_scale, self.softplus_variance)


class _CombinerScan(torch.autograd.Function):
    """The guide's sequential loop, the combiner then ``z_t = loc + scale * noise_t`` over all
    t, with a hand-written backward (for speed, not teaching).

    Autograd records some twenty small operations per step and computes every weight's
    gradient one step at a time. Here the backward loop carries only what is sequential, the
    gradient through z_{t-1}; the weights' gradients are single large products after it. The
    step is the combiner's own form, ``[loc | s] = A h + c`` with ``h = 1/2 (tanh(W z_{t-1} +
    b) + h_rnn_t)``: h_rnn_t and the tanh term receive the same gradient, ``1/2 A^T dL/d[loc
    | s]``, so the backward needs one product per step for both. The path is the same as the
    plain loop's (``DMM.guide`` with IAFs uses that loop), and ``tests/test_dmm.py`` checks
    values and gradients against it.
    """

    @staticmethod
    def forward(ctx, h_rnn: Tensor, noise: Tensor, z_q_0: Tensor, weight: Tensor, bias: Tensor,
                weight_out: Tensor, bias_out: Tensor, min_scale: float, softplus_variance: bool,
                rows: tuple[int, ...] | None) -> tuple[Tensor, Tensor, Tensor]:
        # h_rnn [T, N, R], noise [T, N, Z], z_q_0 [Z]; weight [R, Z] and bias [R] of
        # z_to_hidden, weight_out [2Z, R] and bias_out [2Z] of hidden_to_loc_scale; rows: step
        # t runs on rows :rows[t] only (the sequences still observed, longest first), the
        # padding's z and loc are 0, its scale 1
        steps, n, z_dim = noise.shape
        rows = rows or (n,) * steps
        # the padding's z, loc and h (which the weights' gradient reads): 0, its scale 1
        tanh_z, h = torch.empty_like(h_rnn), padded_like(h_rnn, rows)  # [T, N, R]
        z, d_scale = padded_like(noise, rows), torch.empty_like(noise)  # [T, N, Z]
        loc_s = padded_like(noise, rows, (steps, n, 2 * z_dim))  # [loc | s], [loc | scale]
        weight_t = weight.t().contiguous()  # [Z, R]: a row-major operand multiplies faster
        # 1/2 A^T: h = 1/2 (tanh + h_rnn) enters only through A h, so h here is the sum and
        # the half goes into the weight (h's other reader, the weight gradient, halves too)
        half_out_t = (0.5 * weight_out).t().contiguous()  # [R, 2Z]
        z_prev = z_q_0.expand(n, -1)
        # each step's [m, .] views, taken once (indexing costs as much as a small operation)
        for m, *views in zip(rows, *(y.unbind(0) for y in (tanh_z, h_rnn, h, loc_s, d_scale,
                                                            noise, z))):
            tz, hr, hh, out, ds, nz, zz = views if m == n else (y[:m] for y in views)
            torch.addmm(bias, z_prev[:m], weight_t, out=tz).tanh_()
            torch.add(tz, hr, out=hh)
            torch.addmm(bias_out, hh, half_out_t, out=out)  # [m, 2Z]
            s = out[:, z_dim:]
            torch.sigmoid(s, out=ds)  # softplus' derivative, for the backward
            if softplus_variance:  # scale = sqrt(softplus(s) + m^2): d/ds = sigmoid / 2 scale
                torch.add(softplus(s), min_scale**2, out=s).sqrt_()
                ds.div_(s).mul_(0.5)
            else:
                torch.add(softplus(s), min_scale, out=s)
            z_prev = torch.addcmul(out[:, :z_dim], s, nz, out=zz)
        loc, scale = loc_s[..., :z_dim], loc_s[..., z_dim:]
        fill_padding(scale, rows, 1.0)
        ctx.save_for_backward(noise, z, tanh_z, h, d_scale, z_q_0, weight, weight_out)
        ctx.rows = rows
        return z, loc, scale

    @staticmethod
    def backward(ctx, grad_z: Tensor, grad_loc: Tensor, grad_scale: Tensor):
        noise, z, tanh_z, h, d_scale, z_q_0, weight, weight_out = ctx.saved_tensors
        rows = ctx.rows
        steps, n, z_dim = noise.shape
        # 0 at the padding, which no output depends on
        grad_out = padded_like(noise, rows, (steps, n, 2 * z_dim))  # dL/d[loc | s]
        grad_h_rnn = padded_like(tanh_z, rows)  # dL/dh_rnn_t = 1/2 A^T dL/d[loc | s]
        grad_pre = padded_like(tanh_z, rows)  # dL/d(W z_{t-1} + b), [T, N, R]
        half_out = 0.5 * weight_out  # [2Z, R]
        slope = 1 - tanh_z * tanh_z  # tanh' at every step in one operation
        carry = noise.new_zeros(0, z_dim)  # dL/dz_t through step t+1, rows[t + 1] rows
        per_step = zip(rows, *(y.unbind(0) for y in (grad_z, grad_loc, grad_scale, noise,
                                                      d_scale, grad_out, grad_h_rnn, slope,
                                                      grad_pre)))
        for m, *views in reversed(list(per_step)):
            gz, gl, gs, nz, ds, go, gh, sl, gp = views if m == n else (y[:m] for y in views)
            if len(carry) == m:  # dL/dz_t, its own and through step t + 1
                d_z = torch.add(gz, carry)
            else:  # the sequences observed at t + 1 are a prefix of those at t
                d_z = gz.clone()
                d_z[:len(carry)] += carry
            torch.add(gl, d_z, out=go[:, :z_dim])
            torch.mul(torch.addcmul(gs, d_z, nz), ds, out=go[:, z_dim:])
            torch.mm(go, half_out, out=gh)
            carry = torch.mul(gh, sl, out=gp) @ weight  # dL/dz_{t-1}
        if len(carry) < n:  # sequences without an observed step (none in a DMM)
            carry = torch.cat([carry, carry.new_zeros(n - len(carry), z_dim)])
        z_prev = torch.cat([z_q_0.expand(1, n, -1), z[:-1]])  # [T, N, Z]
        r = tanh_z.shape[-1]
        flat_pre = grad_pre.reshape(-1, r)  # [T*N, R]
        flat_out = grad_out.reshape(-1, 2 * z_dim)  # [T*N, 2Z]
        grad_weight = flat_pre.t() @ z_prev.reshape(-1, z_dim)
        grad_weight_out = (flat_out.t() @ h.reshape(-1, r)).mul_(0.5)  # h is 2x the combiner's
        grad_z_q_0 = carry.sum(0) if ctx.needs_input_grad[2] else None
        return (grad_h_rnn, None, grad_z_q_0, grad_weight, flat_pre.sum(0), grad_weight_out,
                flat_out.sum(0), None, None, None)


class _Scan(nn.Module):
    """:class:`_CombinerScan` over the combiner's parameters and z_q_0, as the module that
    ``torch.cuda.make_graphed_callables`` captures (its forward and backward in one CUDA graph
    each). It is not registered in the DMM: the state dict does not see it."""

    def __init__(self, combiner: Combiner, z_q_0: Tensor) -> None:
        super().__init__()
        self.combiner = combiner
        if isinstance(z_q_0, nn.Parameter):
            self.z_q_0 = z_q_0
        else:  # standard_initial_prior: a buffer
            self.register_buffer("z_q_0", z_q_0)

    def forward(self, h_rows: Tensor, noise_rows: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        lin, out = self.combiner.z_to_hidden, self.combiner.hidden_to_loc_scale
        return _CombinerScan.apply(h_rows, noise_rows, self.z_q_0, lin.weight, lin.bias,
                                   out.weight, out.bias, self.combiner.min_scale,
                                   self.combiner.softplus_variance, None)


class DMM(nn.Module):
    """Deep Markov Model with a backward-RNN guide (Krishnan et al. 2017, arXiv:1609.09869)."""

    # On a GPU the guide's scan (forward and backward) replays CUDA graphs, one per padded
    # length and batch width: T is padded up to a multiple of graph_bucket, so that a few
    # graphs serve every batch. cuda_graphs=False runs it eagerly (the same numbers).
    graph_bucket: ClassVar[int] = 32

    name = "dmm"
    # Pyro's example's settings; validation and checkpoints every 10 epochs, not every epoch
    train_defaults: ClassVar[dict] = {
        "batch_size": 20, "lr": 3e-4, "betas": (0.96, 0.999), "clip_norm": 10.0,
        "lr_decay": 0.99996, "anneal_epochs": 1000, "min_kl_weight": 0.2, "epochs": 5000,
        "eval_every": 10, "checkpoint_every": 10,
        # Pyro's ClippedAdam weight decay, on its summed loss: fit rescales it to our loss
        "weight_decay_sum": 2.0,
    }

    def __init__(self, config: DMMConfig) -> None:
        super().__init__()
        self.config = c = config
        self.emitter = Emitter(c.x_dim, c.z_dim, c.emission_dim)
        self.transition = GatedTransition(c.z_dim, c.transition_dim, c.min_scale,
                                          c.softplus_variance)
        self.combiner = Combiner(c.z_dim, c.rnn_dim, c.min_scale, c.softplus_variance)
        rnn_in = c.x_dim
        self.embed = None
        if c.input_embedding:
            self.embed = nn.Sequential(nn.Linear(c.x_dim, c.rnn_dim), nn.ReLU())
            rnn_in = c.rnn_dim
        if c.rnn_type == "lstm":
            self.rnn = nn.LSTM(rnn_in, c.rnn_dim, num_layers=c.rnn_layers, batch_first=True,
                               dropout=c.rnn_dropout)
            self.c_0 = nn.Parameter(torch.zeros(c.rnn_layers, 1, c.rnn_dim))  # cell state
        else:
            self.rnn = nn.RNN(rnn_in, c.rnn_dim, num_layers=c.rnn_layers,
                              nonlinearity=c.rnn_nonlinearity, batch_first=True,
                              dropout=c.rnn_dropout)
        self.output_dropout = nn.Dropout(c.rnn_output_dropout)
        self.iaf = None
        if c.num_iafs > 0:
            self.iaf = IAFStack(c.z_dim, c.num_iafs, c.iaf_dim)
        if c.standard_initial_prior:  # p(z_1) = N(0, I); the guide starts from 0
            self.register_buffer("z_0", torch.zeros(c.z_dim))
            self.register_buffer("z_q_0", torch.zeros(c.z_dim))
        else:
            self.z_0 = nn.Parameter(torch.zeros(c.z_dim))  # p(z_1) = transition(z_0)
            self.z_q_0 = nn.Parameter(torch.zeros(c.z_dim))  # guide's z_0
        self.h_0 = nn.Parameter(torch.zeros(c.rnn_layers, 1, c.rnn_dim))  # RNN initial state
        # True: nn.RNN and the guide's loop through autograd, without the hand-written
        # backward passes (same numbers, slower; for tests and benchmarks/dmm_speed.py)
        self.plain_loop = False
        self.cuda_graphs = True
        self._graphs: dict = {}  # (T padded, rows, dtype, device) -> graphed _Scan, or None

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()  # copies and pickles leave the CUDA graphs behind
        state["_graphs"] = {}
        return state

    # ------------------------------------------------------------------------- input checks

    def _check(self, batch: Batch) -> tuple[Tensor, Tensor, Tensor]:
        x, mask = batch.x, batch.mask
        c = self.config
        if x.dim() != 3 or x.shape[-1] != c.x_dim:
            fix = ("add a time axis" if x.dim() == 2 else
                   f"build the model with x_dim={x.shape[-1]}" if x.dim() == 3 else
                   "pass padded sequences")
            raise ValueError(f"x must be [B, T, {c.x_dim}], got {list(x.shape)}; {fix}")
        if mask is None:
            mask = torch.ones(x.shape[:2], dtype=torch.bool, device=x.device)
        if mask.shape != x.shape[:2] or mask.dtype != torch.bool:
            raise ValueError(f"mask must be bool [B, T] = {list(x.shape[:2])}, got "
                             f"{mask.dtype} {list(mask.shape)}; build it as t < lengths[:, None]")
        lengths = mask.sum(dim=1)
        if int(lengths.min()) < 1:
            raise ValueError("every sequence needs at least one observed step; drop empty ones")
        prefix = torch.arange(x.shape[1], device=x.device) < lengths[:, None]
        if not torch.equal(mask, prefix):
            raise ValueError("mask must be True on a prefix of each sequence (padding at the "
                             "end); shift the observed steps to the start")
        # padding may hold anything (even NaN); zero it so no NaN reaches a gradient
        x = torch.where(mask[..., None], x, torch.zeros((), dtype=x.dtype, device=x.device))
        return x, mask, lengths

    # ------------------------------------------------------------------------- guide

    def rnn_states(self, x: Tensor, lengths: Tensor) -> Tensor:
        """Returns h_rnn ``[B, T, R]``, the backward RNN's summary of x_{t:T} at each step
        (meaningless at padding, which the caller masks). Runs once over the batch.

        Each sequence is reversed over its own length, so its padding stays at the end, and a
        forward RNN over the reversed batch is a backward RNN over every sequence. The RNN is
        causal, so its outputs at observed steps never see the padding that follows them: the
        same numbers as with ``pack_padded_sequence`` (a test checks), without the packed
        path's cost (on CPU its backward allocates a full-size gradient at every step,
        quadratic in T; twice as slow on JSB).
        """
        c = self.config
        x_rev = reverse_sequences(x, lengths)
        if self.embed is not None:
            x_rev = self.embed(x_rev)
        h_0 = self.h_0.expand(-1, x.shape[0], -1)  # [layers, B, R]
        if c.rnn_type == "lstm":
            state = (h_0.contiguous(), self.c_0.expand(-1, x.shape[0], -1).contiguous())
            out, _ = self.rnn(x_rev, state)  # [B, T, R], reversed time
        elif c.rnn_layers == 1 and x.device.type == "cpu" and not self.plain_loop:
            # same numbers as self.rnn, faster backward on CPU (cuDNN is faster on a GPU)
            out = elman_rnn(self.rnn, x_rev, h_0[0], lengths)  # padding skipped
        else:
            out, _ = self.rnn(x_rev, h_0.contiguous())
        return reverse_sequences(self.output_dropout(out), lengths)

    def guide(self, x: Tensor, lengths: Tensor, noise: Tensor | None = None,
              samples: int = 1) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
        """Samples z_{1:T} ~ q(z | x), reparameterised, one step at a time.

        Parameters
        ----------
        x : Tensor
            ``[B, T, X]``, padding already zeroed.
        lengths : Tensor
            ``[B]``.
        noise : Tensor, optional
            Standard-normal draws ``[S*B, T, Z]``; zeros give the guide means' path.
        samples : int
            ``S`` paths per sequence sharing one RNN pass, sample-major (row ``s*B + b``).

        Returns
        -------
        z, loc, scale : Tensor
            ``[S*B, T, Z]``: the path and the Gaussian part of each q(z_t | z_{t-1}, x_{t:T}).
        log_q : Tensor or None
            ``[S*B, T]`` log q(z_t | ...) when the guide has IAFs, else None (the caller
            scores the Gaussian in one batched call).
        """
        batch, steps = x.shape[:2]
        n = samples * batch
        h_rnn = self.rnn_states(x, lengths)  # [B, T, R]
        if noise is None:
            noise = torch.randn(n, steps, self.config.z_dim, device=x.device, dtype=x.dtype)
        elif noise.shape != (n, steps, self.config.z_dim):
            raise ValueError(f"noise must be [{n}, {steps}, {self.config.z_dim}], got "
                             f"{list(noise.shape)}")
        # the fast path keeps tanh(W z_{t-1} + b) of every step for its backward; without
        # gradients (evaluation with many samples) the plain loop keeps nothing
        if self.iaf is None and not self.plain_loop and torch.is_grad_enabled():
            return (*self._scan(h_rnn, noise, lengths, samples), None)
        rnn_part = self.combiner.project_rnn(h_rnn)  # [B, T, 2Z], computed once for all t
        half_weight_t = 0.5 * self.combiner.hidden_to_loc_scale.weight.t()  # [R, 2Z]
        if samples > 1:
            rnn_part = rnn_part.repeat(samples, 1, 1)  # [S*B, T, 2Z]
        z_prev = self.z_q_0.expand(n, -1)
        zs, locs, scales, log_qs = [], [], [], []
        # unbind, not [:, t]: indexing would give every step's backward a full-size zero grad
        for rnn_t, noise_t in zip(rnn_part.unbind(1), noise.unbind(1)):  # the sequential part
            loc, scale = self.combiner.step(z_prev, rnn_t, half_weight_t)
            z_prev = torch.addcmul(loc, scale, noise_t)  # [S*B, Z], reparameterised
            if self.iaf is not None:
                q_t = self.iaf(Independent(Normal(loc, scale), 1))
                for transform in q_t.transforms:  # push the base sample through the flows
                    z_prev = transform(z_prev)
                log_qs.append(q_t.log_prob(z_prev))  # cached: no inversion
            zs.append(z_prev)
            locs.append(loc)
            scales.append(scale)
        log_q = torch.stack(log_qs, dim=1) if log_qs else None
        return (torch.stack(zs, dim=1), torch.stack(locs, dim=1), torch.stack(scales, dim=1),
                log_q)

    def _scan(self, h_rnn: Tensor, noise: Tensor, lengths: Tensor, samples: int
              ) -> tuple[Tensor, Tensor, Tensor]:
        """The guide's loop through :class:`_CombinerScan`: ``(z, loc, scale)``, each
        ``[S*B, T, Z]`` sample-major, from ``h_rnn [B, T, R]`` and ``noise [S*B, T, Z]``.

        The scan runs over rows ``b*S + s`` with the longest sequences first, so that on the
        CPU each step takes only the paths still observed (a prefix of the rows), as a packed
        sequence would; training batches come sorted (:meth:`Data.batches`), other batches
        are sorted here and put back in their order.
        """
        batch, steps = h_rnn.shape[:2]
        order, rows = None, None
        if h_rnn.device.type == "cpu":
            order = by_length(lengths)
            observed = observed_rows(lengths if order is None else lengths[order], steps)
            rows = tuple(samples * m for m in observed)
        noise = noise.view(samples, batch, steps, -1)  # [S, B, T, Z]
        if order is not None:
            h_rnn, noise = h_rnn[order], noise[:, order]
        # time-major rows b*S + s: [T, B*S, .]
        h_rows = h_rnn.transpose(0, 1).repeat_interleave(samples, dim=1)
        noise_rows = noise.permute(2, 1, 0, 3).reshape(steps, batch * samples, -1)
        if h_rows.is_cuda and self.cuda_graphs and rows is None:
            outputs = self._bucketed_scan(h_rows, noise_rows)
        else:
            lin, out = self.combiner.z_to_hidden, self.combiner.hidden_to_loc_scale
            outputs = _CombinerScan.apply(h_rows, noise_rows, self.z_q_0, lin.weight,
                                          lin.bias, out.weight, out.bias,
                                          self.combiner.min_scale,
                                          self.combiner.softplus_variance, rows)
        inverse = None if order is None else torch.argsort(order)

        def sample_major(y: Tensor) -> Tensor:  # [T, B*S, Z] -> [S*B, T, Z], caller's order
            y = y.view(steps, batch, samples, -1).permute(2, 1, 0, 3)  # [S, B, T, Z]
            if inverse is not None:
                y = y[:, inverse]
            return y.reshape(samples * batch, steps, -1)  # a view when S = 1

        return tuple(sample_major(y) for y in outputs)

    def _bucketed_scan(self, h_rows: Tensor, noise_rows: Tensor, capture: bool = True
                       ) -> tuple[Tensor, Tensor, Tensor]:
        """The scan on ``[T, N, .]`` rows with T padded to a multiple of ``graph_bucket``
        (zeros: the padded steps come after every observed one and are cut off), replayed from
        a CUDA graph captured on first use for that shape. ``capture=False``, or a capture
        that fails (with a warning), runs the same padded scan eagerly."""
        steps, n = noise_rows.shape[:2]
        extra = -steps % self.graph_bucket
        if extra:
            h_rows = pad(h_rows, (0, 0, 0, 0, 0, extra))
            noise_rows = pad(noise_rows, (0, 0, 0, 0, 0, extra))
        scan = None
        if capture:
            # the parameters' addresses too: a graph reads the tensors it was captured with,
            # which .to() or .double() replace
            key = (steps + extra, n, h_rows.dtype, h_rows.device, h_rows.requires_grad,
                   *(p.data_ptr() for p in self.combiner.parameters()),
                   self.z_q_0.data_ptr())
            if key not in self._graphs:
                self._graphs[key] = self._capture(_Scan(self.combiner, self.z_q_0), h_rows,
                                                  noise_rows)
            scan = self._graphs[key]
        scan = scan or _Scan(self.combiner, self.z_q_0)  # eager: no graph, or none captured
        return tuple(y[:steps] for y in scan(h_rows, noise_rows))

    @staticmethod
    def _capture(scan: _Scan, h_rows: Tensor, noise_rows: Tensor) -> nn.Module | None:
        """``scan`` captured for inputs shaped as these (static copies), or None with a
        warning when CUDA cannot capture it."""
        sample = (h_rows.detach().clone().requires_grad_(h_rows.requires_grad),
                  noise_rows.detach().clone())
        try:
            with warnings.catch_warnings():
                # torch >= 2.11 warns while capturing that the parameters' AccumulateGrad
                # nodes were made on another stream (harmless: measured equal in
                # tests/test_gpu.py); a caller's "error" filter must not abort a capture
                # half-way, which leaves CUDA's generator unusable for every later draw
                warnings.filterwarnings("ignore", message="The AccumulateGrad node's stream")
                return torch.cuda.make_graphed_callables(scan, sample)
        except RuntimeError as err:
            warnings.warn(f"the DMM guide's scan could not be captured in a CUDA graph ({err});"
                          f" it runs eagerly (the same numbers, slower)", stacklevel=3)
            return None

    def prior(self, z: Tensor) -> Independent:
        """p(z_t | z_{t-1}) for every step of the paths ``z [N, T, Z]`` in one call, batch
        ``[N, T]``: the transition on ``[z_0, z_1 .. z_{T-1}]``, or N(0, I) at t = 1 with
        ``standard_initial_prior``."""
        z_prev = torch.cat([self.z_0.expand(len(z), 1, -1), z[:, :-1]], dim=1)  # [N, T, Z]
        first = (torch.arange(z.shape[1], device=z.device) == 0)[:, None]  # [T, 1]
        return self._transition(z_prev, first)

    def _transition(self, z_prev: Tensor, first: Tensor) -> Independent:
        """p(z_t | z_{t-1}) from ``z_prev [..., Z]``; N(0, I) where ``first`` (``[..., 1]``)
        with ``standard_initial_prior``."""
        p_z = self.transition(z_prev)
        if not self.config.standard_initial_prior:
            return p_z
        loc = torch.where(first, 0.0, p_z.base_dist.loc)
        return Independent(Normal(loc, torch.where(first, 1.0, p_z.base_dist.scale)), 1)

    # ------------------------------------------------------------------------- ELBO

    def forward(self, batch: Batch, **kw) -> ELBOTerms:
        """The ELBO terms, as :meth:`elbo` (``kw`` goes to it): training calls the model
        through ``forward`` so that a DistributedDataParallel wrapper synchronises gradients."""
        return self.elbo(batch, **kw)

    def elbo(self, batch: Batch, analytic_kl: bool | None = None, noise: Tensor | None = None,
             samples: int = 1) -> ELBOTerms:
        """Returns the ELBO terms per sequence, ``[B]`` each, summed over observed steps.

        ELBO = sum_t E_q[log p(x_t | z_t)] - E_q[KL(q(z_t | z_{t-1}, x_{t:T}) || p(z_t |
        z_{t-1}))], one reparameterised path; the KL per step in closed form when
        ``analytic_kl`` (the paper), else ``log q(z_t | ...) - log p(z_t | z_{t-1})``.

        Parameters
        ----------
        noise : Tensor, optional
            Fixed standard-normal draws ``[S*B, T, Z]`` (tests compare batches with it).
        samples : int
            ``S`` guide paths per sequence sharing one RNN pass; the terms are ``[S*B]``,
            sample-major like ``batch.repeat(S)``.
        """
        analytic = self.config.analytic_kl if analytic_kl is None else analytic_kl
        if analytic and self.iaf is not None:
            raise ValueError("analytic_kl=True needs num_iafs=0: the KL of an IAF posterior "
                             "has no closed form; pass analytic_kl=False")
        if samples < 1:
            raise ValueError(f"samples must be >= 1, got {samples}")
        x, mask, lengths = self._check(batch)
        z, loc, scale, log_q = self.guide(x, lengths, noise, samples)  # [S*B, T, Z]
        if samples > 1:
            x, mask = x.repeat(samples, 1, 1), mask.repeat(samples, 1)
        steps = mask.sum(dim=1).to(z.dtype)
        if z.device.type == "cpu" and not self.plain_loop:
            # on the CPU only the observed steps are scored: the padding's share of the
            # batched work goes (a GPU does it in parallel, and indexing by a mask would make
            # it wait for the host)
            # (index_select, whose backward is index_add, not a boolean mask's index_put)
            index = mask.flatten().nonzero().squeeze(1)  # the observed (row, t), row-major
            row, t = index // mask.shape[1], index % mask.shape[1]
            take = lambda y, i=index: y.flatten(0, 1).index_select(0, i)  # [N_obs, ...]
            first = (t == 0)[:, None]
            z_prev = torch.where(first, self.z_0, take(z, (index - 1).clamp(min=0)))
            log_q = None if log_q is None else take(log_q)
            log_px, kl = self._scores(take(x), take(z), take(loc), take(scale), log_q,
                                      self._transition(z_prev, first), analytic)  # [N_obs]
            per_row = lambda v: v.new_zeros(len(mask)).index_add(0, row, v)
            return ELBOTerms(per_row(log_px), per_row(kl), steps)
        # every step in one call: batch [S*B, T], event [Z]
        log_px, kl = self._scores(x, z, loc, scale, log_q, self.prior(z), analytic)
        return ELBOTerms(masked_sum(log_px, mask), masked_sum(kl, mask), steps)

    def _scores(self, x: Tensor, z: Tensor, loc: Tensor, scale: Tensor, log_q: Tensor | None,
                p_z: Independent, analytic: bool) -> tuple[Tensor, Tensor]:
        """log p(x_t | z_t) and the KL term of each step, batched over any leading shape."""
        log_px = self.emitter(z).log_prob(x)
        if analytic:
            kl = kl_divergence(Independent(Normal(loc, scale), 1), p_z)
        else:
            if log_q is None:
                log_q = Independent(Normal(loc, scale), 1).log_prob(z)
            kl = log_q - p_z.log_prob(z)
        return log_px, kl

    @torch.no_grad()
    def importance_log_likelihood(self, batch: Batch, num_samples: int = 1000,
                                  chunk_size: int | None = None) -> Tensor:
        """Returns the importance-sampled estimate of log p(x) per sequence, ``[B]``.

        log p(x) ~= log (1/K) sum_k p(x, z^k) / q(z^k | x) over K whole latent paths from the
        guide: :func:`vaelab.objectives.importance_log_likelihood`, whose chunks share one
        backward-RNN pass (``elbo(samples=k)``).
        """
        return importance_log_likelihood(self, batch, num_samples, chunk_size)

    @torch.no_grad()
    def kl_per_dim(self, batch: Batch) -> Tensor:
        """Returns KL(q(z_t | z_{t-1}, x_{t:T}) || p(z_t | z_{t-1})) per latent dimension,
        ``[Z]``, averaged over observed steps along one sampled guide path."""
        x, mask, lengths = self._check(batch)
        z, loc, scale, _ = self.guide(x, lengths)  # [B, T, Z]
        kl = kl_divergence(Normal(loc, scale), self.prior(z).base_dist)  # [B, T, Z]
        return kl[mask].mean(dim=0)

    # ------------------------------------------------------------------------- sampling, plots

    @torch.no_grad()
    def sample(self, n: int, steps: int | None = None, a: Tensor | None = None
               ) -> tuple[Tensor, Tensor]:
        """Ancestral samples from z_0: returns ``(z [n, T, Z], x [n, T, X])`` with x the
        emitter mean (note probabilities; ``torch.bernoulli(x)`` gives a piano roll).
        ``steps`` defaults to 64."""
        steps = 64 if steps is None else steps
        if n < 1 or steps < 1:
            raise ValueError(f"n and steps must be >= 1, got {n} and {steps}")
        z_prev = self.z_0.expand(n, -1)
        zs = []
        for t in range(steps):
            if t == 0 and self.config.standard_initial_prior:
                z_prev = torch.randn_like(z_prev)  # p(z_1) = N(0, I)
            else:
                z_prev = self.transition(z_prev).sample()
            zs.append(z_prev)
        z = torch.stack(zs, dim=1)  # [n, T, Z]
        return z, self.emitter(z).mean

    @torch.no_grad()
    def latents(self, batch: Batch) -> Tensor:
        """Returns the guide's mean path ``[B, T, Z]`` (each z_t the mean given the previous
        mean; through the flows at zero noise when there are IAFs), 0 at padding."""
        x, mask, lengths = self._check(batch)
        noise = x.new_zeros(*x.shape[:2], self.config.z_dim)
        z = self.guide(x, lengths, noise)[0]
        return torch.where(mask[..., None], z, torch.zeros_like(z))

    @torch.no_grad()
    def reconstruct(self, batch: Batch) -> Tensor:
        """Returns the emitter mean at the guide's mean path, ``[B, T, X]``."""
        return self.emitter(self.latents(batch)).mean


@dataclass
class DMMIAFConfig(DMMConfig):
    """DMM whose guide adds inverse autoregressive flows (Kingma et al. 2016,
    arXiv:1606.04934), as in Krishnan et al.'s and Pyro's IAF variant."""

    num_iafs: int = 1
    analytic_kl: bool = False


class DMMIAF(DMM):
    """DMM with IAFs after the Gaussian guide; the KL is the one-sample Monte Carlo term."""

    name = "dmm_iaf"
    kl_per_dim = None  # an IAF posterior's KL does not split over dimensions
