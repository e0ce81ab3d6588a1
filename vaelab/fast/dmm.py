"""The DMM's ELBO, fast: what ``vaelab.dmm.DMM.elbo`` computes, on by default (``DMM.fast``).

Engineering, not teaching; ``tests/test_fast.py`` checks it equal to the readable path (values
and every gradient, float64). What it changes:

- the backward RNN on the CPU runs :func:`vaelab.fast.rnn.elman_rnn` (one-layer Elman RNN,
  hand-written backward, padding skipped); cuDNN's ``nn.RNN`` on a GPU;
- the guide's loop runs :func:`vaelab.fast.scan.combiner_scan` (hand-written backward; CUDA
  graphs on a GPU); with IAFs, the loop scores each step's sample through the flows' cache
  instead of pushing the whole path through them a second time;
- ``samples`` guide paths share one RNN pass;
- on the CPU only the observed steps are scored (``index_select``, whose backward is
  ``index_add``): the padding's share of the emitter, transition and KL goes. A GPU keeps the
  masked form: it does the padding in parallel, and indexing by a mask would wait for the host.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn
from torch.distributions import Independent, Normal
from torch.nn.functional import linear

from vaelab.fast.rnn import elman_rnn
from vaelab.fast.scan import combiner_scan
from vaelab.nn import reverse_sequences
from vaelab.objectives import ELBOTerms, kl_term, masked_sum
from vaelab.protocol import shift

if TYPE_CHECKING:
    from vaelab.data import Batch
    from vaelab.dmm import DMM


def rnn_states(model: DMM, x: Tensor, lengths: Tensor) -> Tensor:
    """``model.rnn_states``, with the CPU's one-layer Elman RNN through :func:`elman_rnn`."""
    c, rnn = model.config, model.rnn
    if not (isinstance(rnn, nn.RNN) and c.rnn_layers == 1 and x.device.type == "cpu"):
        return model.rnn_states(x, lengths)
    x_rev = model.embed(reverse_sequences(x, lengths))
    h_0 = model.h_0[0].expand(x.shape[0], -1)  # [B, R]
    out = elman_rnn(rnn, x_rev, h_0, lengths)  # padding skipped
    return reverse_sequences(model.output_dropout(out), lengths)


def _gaussian(loc: Tensor, scale: Tensor) -> Independent:
    """A diagonal Gaussian over the last axis from parameters the model's own layers made (a
    softplus scale), without torch's argument checks: they cost an element-wise pass and a
    host sync per tensor, and the modules' own distributions (transition, emission) keep
    theirs, so a diverged run or bad data is still named by the trainer."""
    return Independent(Normal(loc, scale, validate_args=False), 1)


def guide(
    model: DMM, x: Tensor, lengths: Tensor, noise: Tensor, samples: int
) -> tuple[Tensor, Independent, Tensor | None]:
    """``S = samples`` guide paths per sequence sharing one RNN pass, sample-major
    (``[S*B, T, Z]``): the path, the Gaussian part of q(z_t | z_{t-1}, x_{t:T}) along it
    (batch ``[S*B, T]``) and, with IAFs, log q(z_t | ...) ``[S*B, T]`` (else None)."""
    h_rnn = rnn_states(model, x, lengths)  # [B, T, R]
    if model.iaf is None and torch.is_grad_enabled():
        z, loc, scale = combiner_scan(model.combiner, model.z_q_0, h_rnn, noise, lengths, samples)
        return z, _gaussian(loc, scale), None
    # the plain loop: IAF guides, and evaluation without gradients (it keeps nothing)
    combiner = model.combiner
    # linearity splits the combiner's A h + c into the RNN's share, projected for all steps
    # at once, and the z-dependent share 1/2 A tanh(W z_{t-1} + b) of each step
    out = combiner.hidden_to_loc_scale
    rnn_part = linear(0.5 * h_rnn, out.weight, out.bias)  # [B, T, 2Z]
    half_weight_t = 0.5 * out.weight.t()  # [R, 2Z]
    if samples > 1:
        rnn_part = rnn_part.repeat(samples, 1, 1)  # [S*B, T, 2Z]
    z_prev = model.z_q_0.expand(len(rnn_part), -1)
    zs, locs, scales, log_qs = [], [], [], []
    # unbind, not [:, t]: indexing would give every step's backward a full-size zero grad
    for rnn_t, noise_t in zip(rnn_part.unbind(1), noise.unbind(1), strict=True):
        tanh_z = torch.tanh(combiner.z_to_hidden(z_prev))  # [N, R]
        loc, s = torch.addmm(rnn_t, tanh_z, half_weight_t).chunk(2, dim=-1)
        scale = combiner.scale(s)
        z_prev = torch.addcmul(loc, scale, noise_t)
        if model.iaf is not None:
            q_t = model.iaf(_gaussian(loc, scale))
            for transform in q_t.transforms:  # push the base sample through the flows
                z_prev = transform(z_prev)
            log_qs.append(q_t.log_prob(z_prev))  # cached: no inversion
        zs.append(z_prev)
        locs.append(loc)
        scales.append(scale)
    q_z = _gaussian(torch.stack(locs, 1), torch.stack(scales, 1))
    return torch.stack(zs, dim=1), q_z, torch.stack(log_qs, dim=1) if log_qs else None


def _prior_steps(model: DMM, z_prev: Tensor, a_prev: Tensor, first: Tensor) -> Independent:
    """p(z_t | z_{t-1}, a_{t-1}) from ``z_prev [..., Z]``, and the model's own p(z_1)
    (:meth:`~vaelab.dmm.DMM.initial_prior`) where ``first [..., 1]``."""
    p_z = model.transition_prior(z_prev, a_prev)
    if not model.config.compat.standard_initial_prior:
        return p_z  # p(z_1) = p(z_1 | z_0, a_0 = 0), and z_prev, a_prev are z_0, 0 there
    p_1 = model.initial_prior(1)  # batch [1]
    loc = torch.where(first, p_1.mean[0], p_z.mean)
    return _gaussian(loc, torch.where(first, p_1.stddev[0], p_z.stddev))


def elbo(
    model: DMM, batch: Batch, analytic: bool, samples: int = 1, noise: Tensor | None = None
) -> ELBOTerms:
    """The terms of ``model.elbo(batch, analytic_kl=analytic, noise=noise)``, with ``samples``
    paths per sequence sharing one RNN pass (``[S*B]``, sample-major)."""
    x, a, mask = model.check(batch)
    lengths = mask.sum(dim=1)
    n = samples * len(x)
    if noise is None:
        noise = torch.randn(n, x.shape[1], model.config.z_dim, device=x.device, dtype=x.dtype)
    elif noise.shape != (n, x.shape[1], model.config.z_dim):
        raise ValueError(
            f"noise must be [{n}, {x.shape[1]}, {model.config.z_dim}], got {list(noise.shape)}"
        )
    z, q_z, log_q = guide(model, x, lengths, noise, samples)  # [S*B, T, Z]
    if samples > 1:
        x, a, mask = x.repeat(samples, 1, 1), a.repeat(samples, 1, 1), mask.repeat(samples, 1)
    a_prev = shift(a)  # a_{t-1}, 0 at t = 1
    steps = mask.sum(dim=1).to(z.dtype)
    if z.device.type == "cpu":  # score the observed steps only
        index = mask.flatten().nonzero().squeeze(1)  # the observed (row, t), row-major
        row, t = index // mask.shape[1], index % mask.shape[1]

        def take(y: Tensor, i: Tensor = index) -> Tensor:  # [N_obs, ...]
            return y.flatten(0, 1).index_select(0, i)

        first = (t == 0)[:, None]
        z_prev = torch.where(first, model.z_0, take(z, (index - 1).clamp(min=0)))
        q_obs = _gaussian(take(q_z.base_dist.loc), take(q_z.base_dist.scale))
        log_px, kl = _scores(
            model,
            take(x),
            take(z),
            take(a_prev),
            q_obs,
            None if log_q is None else take(log_q),
            _prior_steps(model, z_prev, take(a_prev), first),
            analytic,
        )  # [N_obs]

        def per_row(v: Tensor) -> Tensor:
            return v.new_zeros(len(mask)).index_add(0, row, v)

        return ELBOTerms(per_row(log_px), per_row(kl), steps)
    z_prev = torch.cat([model.z_0.expand(len(z), 1, -1), z[:, :-1]], dim=1)  # [N, T, Z]
    first = (torch.arange(z.shape[1], device=z.device) == 0)[:, None]  # [T, 1]
    log_px, kl = _scores(
        model, x, z, a_prev, q_z, log_q, _prior_steps(model, z_prev, a_prev, first), analytic
    )
    return ELBOTerms(masked_sum(log_px, mask), masked_sum(kl, mask), steps)


def _scores(
    model: DMM,
    x: Tensor,
    z: Tensor,
    a_prev: Tensor,
    q_z: Independent,
    log_q: Tensor | None,
    p_z: Independent,
    analytic: bool,
) -> tuple[Tensor, Tensor]:
    """log p(x_t | z_t, a_{t-1}) and the KL term of each step, over any leading shape."""
    log_px = model.emission(z, a_prev).log_prob(x)
    if log_q is None:
        return log_px, kl_term(q_z, p_z, z, analytic)
    return log_px, log_q - p_z.log_prob(z)  # a flow guide: the one-sample estimate
