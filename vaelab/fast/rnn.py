"""Scans over padded, length-sorted batches with hand-written backward passes: the backward RNN
of the DMM's guide on the CPU (:func:`elman_rnn`) and the helpers both scans share.

Engineering, not teaching: ``nn.RNN`` over per-sequence reversed input computes the same
numbers (``vaelab.dmm.DMM.rnn_states`` with ``fast = False``), and ``tests/test_fast.py`` checks
values and gradients against it in float64.
"""

from __future__ import annotations

from itertools import groupby
from typing import cast

import torch
from torch import Tensor, nn


def observed_rows(lengths: Tensor, steps: int) -> tuple[int, ...]:
    """How many sequences are still observed at each step, ``(n_0, ..., n_{T-1})``, for a
    batch whose ``lengths [B]`` are sorted in descending order: step t's observed sequences
    are then rows ``:n_t``, a prefix, so a scan can skip the padding without copying."""
    t = torch.arange(steps, device=lengths.device)
    return tuple((lengths[:, None] > t).sum(dim=0).tolist())


def fill_padding(y: Tensor, rows: tuple[int, ...], value: float = 0.0) -> Tensor:
    """Set the padding of ``y [T, N, ...]``, ``y[t, rows[t]:]`` (see :func:`observed_rows`),
    to ``value``, in place: one fill per distinct row count, on the padding alone (a
    whole-buffer fill costs more on a batch of ragged rows). Returns ``y``."""
    t = 0
    for m, run in groupby(rows):
        k = len(list(run))
        if m < y.shape[1]:
            y[t : t + k, m:].fill_(value)
        t += k
    return y


def padded_like(y: Tensor, rows: tuple[int, ...], shape: tuple[int, ...] | None = None) -> Tensor:
    """An uninitialised tensor like ``y`` (or of ``shape``), ``[T, N, ...]``, whose padding
    holds 0 (:func:`fill_padding`)."""
    return fill_padding(y.new_empty(shape if shape is not None else y.shape), rows)


def by_length(lengths: Tensor) -> Tensor | None:
    """The order that sorts a batch by ``lengths [B]``, longest first (stable), or None when
    it is already sorted (training batches are, see :meth:`vaelab.data.Data.batches`)."""
    if bool((lengths[:-1] >= lengths[1:]).all()):
        return None
    return torch.argsort(lengths, descending=True, stable=True)


class _ElmanScan(torch.autograd.Function):
    """h_t = f(u_t + W h_{t-1}) over t, with a hand-written backward (for speed, not teaching).

    torch's CPU RNN records one small matrix product per step for the recurrent weight's
    gradient; here the backward loop carries only the per-step pre-activation gradients, and
    the weight's gradient is one large product after the loop (as cuDNN does on a GPU): about
    20% faster on JSB's 600-unit RNN. With ``rows`` (:func:`observed_rows`, rows sorted by
    length) step t runs on its ``rows[t]`` observed sequences only, as a packed sequence does,
    and the padding's outputs are 0. ``tests/test_nn.py`` checks it against ``nn.RNN``.
    """

    @staticmethod
    def forward(
        ctx, u: Tensor, h_0: Tensor, weight_hh: Tensor, relu: bool, rows: tuple[int, ...] | None
    ) -> Tensor:
        # u [T, B, R] input projections with both biases; h_0 [B, R]; weight_hh [R, R]
        steps, batch = u.shape[:2]
        rows = rows or (batch,) * steps
        out = padded_like(u, rows)  # the padding's outputs: 0
        h = h_0
        w_t = weight_hh.t()
        for u_t, out_t, n in zip(u.unbind(0), out.unbind(0), rows, strict=True):
            if n < batch:
                u_t, out_t = u_t[:n], out_t[:n]
            h = torch.addmm(u_t, h[:n], w_t, out=out_t)
            h.clamp_(min=0) if relu else h.tanh_()
        ctx.save_for_backward(out, h_0, weight_hh)
        ctx.relu, ctx.rows = relu, rows
        return out

    @staticmethod
    def backward(ctx, grad_out: Tensor) -> tuple[Tensor, Tensor, Tensor, None, None]:
        out, h_0, weight_hh = ctx.saved_tensors
        rows = ctx.rows
        # dL/d(u_t + W h_{t-1}), [T, B, R]; 0 at the padding, which no output depends on
        grad_pre = padded_like(out, rows)
        # f' at every step in one operation: (out > 0) for ReLU, 1 - out^2 for tanh
        slope = (out > 0).to(out.dtype) if ctx.relu else 1 - out * out
        carry = h_0.new_zeros(0, h_0.shape[1])  # dL/dh_t through h_{t+1}, rows[t + 1] rows
        batch = len(h_0)
        per_step = zip(rows, grad_pre.unbind(0), grad_out.unbind(0), slope.unbind(0), strict=True)
        for n, *views in reversed(list(per_step)):
            d, g, sl = views if n == batch else (y[:n] for y in views)
            if len(carry) == n:  # dL/dh_t, its own and through h_{t+1}
                torch.add(g, carry, out=d)
            else:  # the sequences observed at t + 1 are a prefix of those at t
                d.copy_(g)
                d[: len(carry)] += carry
            carry = d.mul_(sl) @ weight_hh
        if len(carry) < len(h_0):  # sequences without an observed step (none in a DMM)
            carry = torch.cat([carry, carry.new_zeros(len(h_0) - len(carry), carry.shape[1])])
        h_prev = torch.cat([h_0[None], out[:-1]])  # [T, B, R]
        r = out.shape[-1]
        grad_w = grad_pre.reshape(-1, r).t() @ h_prev.reshape(-1, r)  # one [R, T*B] @ [T*B, R]
        return grad_pre, carry, grad_w, None, None


def elman_rnn(rnn: nn.RNN, x: Tensor, h_0: Tensor, lengths: Tensor | None = None) -> Tensor:
    """Runs a one-layer ``nn.RNN`` (batch-first) over ``x`` with its own parameters; returns
    the outputs ``[B, T, R]``, the same numbers as ``rnn(x, h_0[None])[0]``.

    Parameters
    ----------
    x : Tensor
        ``[B, T, X]``.
    h_0 : Tensor
        ``[B, R]`` initial state.
    lengths : Tensor, optional
        ``[B]`` observed steps, padding at the end: each step then runs on the sequences still
        observed only (the outputs at padding are 0, as with a packed sequence).
    """
    if rnn.num_layers != 1 or not rnn.batch_first or rnn.bidirectional or not rnn.bias:
        raise ValueError(
            "elman_rnn needs a one-layer, batch-first, unidirectional nn.RNN with "
            "biases; call the module itself otherwise"
        )
    rows = order = None
    if lengths is not None:
        order = by_length(lengths)
        if order is not None:  # longest first, so that each step's sequences are a prefix
            x, h_0, lengths = x[order], h_0[order], lengths[order]
        rows = observed_rows(lengths, x.shape[1])
    # nn.RNN registers its weights by name at run time, typed Tensor | Module by the stubs
    w_ih, w_hh = cast(Tensor, rnn.weight_ih_l0), cast(Tensor, rnn.weight_hh_l0)
    bias = cast(Tensor, rnn.bias_ih_l0) + cast(Tensor, rnn.bias_hh_l0)
    # the input's share of every step in one product, [T, B, R]
    u = nn.functional.linear(x.transpose(0, 1), w_ih, bias)
    out = _ElmanScan.apply(u.contiguous(), h_0, w_hh, rnn.nonlinearity == "relu", rows).transpose(
        0, 1
    )  # [B, T, R]
    return out if order is None else out[torch.argsort(order)]
