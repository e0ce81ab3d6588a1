"""The DMM guide's scan, fast: the combiner loop with a hand-written backward
(:class:`_CombinerScan`), and on a GPU that scan replayed from CUDA graphs.

Engineering, not teaching: the readable guide is the loop in ``vaelab.dmm.DMM.guide``;
``tests/test_fast.py`` checks this scan's values and gradients against it in float64, and
``tests/test_gpu.py`` the graphs against the eager scan.
"""

from __future__ import annotations

import warnings
import weakref
from typing import TYPE_CHECKING, cast

import torch
from torch import Tensor, nn
from torch.nn.functional import pad, softplus

from vaelab.fast.rnn import by_length, fill_padding, observed_rows, padded_like

if TYPE_CHECKING:
    from vaelab.dmm import Combiner

# On a GPU the scan (forward and backward) replays CUDA graphs, one per padded length and
# batch width: T is padded up to a multiple of GRAPH_BUCKET, so that a few graphs serve every
# batch. CUDA_GRAPHS = False runs it eagerly (the same numbers; the benchmark's eager row).
CUDA_GRAPHS = True
GRAPH_BUCKET = 32
# model -> {shape key: graphed scan or None}; weak, so copies and pickles carry no graphs and
# a deleted model frees its graphs
_GRAPHS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


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
    def forward(
        ctx,
        h_rnn: Tensor,
        noise: Tensor,
        z_q_0: Tensor,
        weight: Tensor,
        bias: Tensor,
        weight_out: Tensor,
        bias_out: Tensor,
        min_scale: float,
        softplus_variance: bool,
        rows: tuple[int, ...] | None,
    ) -> tuple[Tensor, Tensor, Tensor]:
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
        for m, *views in zip(
            rows, *(y.unbind(0) for y in (tanh_z, h_rnn, h, loc_s, d_scale, noise, z)), strict=True
        ):
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
        per_step = zip(
            rows,
            *(
                y.unbind(0)
                for y in (
                    grad_z,
                    grad_loc,
                    grad_scale,
                    noise,
                    d_scale,
                    grad_out,
                    grad_h_rnn,
                    slope,
                    grad_pre,
                )
            ),
            strict=True,
        )
        for m, *views in reversed(list(per_step)):
            gz, gl, gs, nz, ds, go, gh, sl, gp = views if m == n else (y[:m] for y in views)
            if len(carry) == m:  # dL/dz_t, its own and through step t + 1
                d_z = torch.add(gz, carry)
            else:  # the sequences observed at t + 1 are a prefix of those at t
                d_z = gz.clone()
                d_z[: len(carry)] += carry
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
        return (
            grad_h_rnn,
            None,
            grad_z_q_0,
            grad_weight,
            flat_pre.sum(0),
            grad_weight_out,
            flat_out.sum(0),
            None,
            None,
            None,
        )


class _Scan(nn.Module):
    """:class:`_CombinerScan` over the combiner's parameters and z_q_0, as the module that
    ``torch.cuda.make_graphed_callables`` captures (its forward and backward in one CUDA graph
    each). It is not registered in the DMM: the state dict does not see it."""

    def __init__(self, combiner: Combiner, z_q_0: Tensor) -> None:
        super().__init__()
        self.combiner = combiner
        if isinstance(z_q_0, nn.Parameter):
            self.z_q_0 = z_q_0
        else:  # compat.standard_initial_prior: a buffer
            self.register_buffer("z_q_0", z_q_0)

    def forward(self, h_rows: Tensor, noise_rows: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        lin, out = self.combiner.z_to_hidden, self.combiner.hidden_to_loc_scale
        return _CombinerScan.apply(
            h_rows,
            noise_rows,
            self.z_q_0,
            lin.weight,
            lin.bias,
            out.weight,
            out.bias,
            self.combiner.min_scale,
            self.combiner.softplus_variance,
            None,
        )


def combiner_scan(
    combiner: Combiner,
    z_q_0: Tensor,
    h_rnn: Tensor,
    noise: Tensor,
    lengths: Tensor,
    samples: int = 1,
) -> tuple[Tensor, Tensor, Tensor]:
    """The guide's loop through :class:`_CombinerScan`: ``(z, loc, scale)``, each
    ``[S*B, T, Z]`` sample-major, from ``h_rnn [B, T, R]`` and ``noise [S*B, T, Z]``.

    The scan runs over rows ``b*S + s`` with the longest sequences first, so that on the CPU
    each step takes only the paths still observed (a prefix of the rows), as a packed
    sequence would; training batches come sorted (:meth:`vaelab.data.Data.batches`), other
    batches are sorted here and put back in their order. On a GPU it replays CUDA graphs
    (:func:`bucketed_scan`).
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
    if h_rows.is_cuda and CUDA_GRAPHS and rows is None:
        outputs = bucketed_scan(combiner, z_q_0, h_rows, noise_rows)
    else:
        lin, out = combiner.z_to_hidden, combiner.hidden_to_loc_scale
        outputs = _CombinerScan.apply(
            h_rows,
            noise_rows,
            z_q_0,
            lin.weight,
            lin.bias,
            out.weight,
            out.bias,
            combiner.min_scale,
            combiner.softplus_variance,
            rows,
        )
    inverse = None if order is None else torch.argsort(order)

    def sample_major(y: Tensor) -> Tensor:  # [T, B*S, Z] -> [S*B, T, Z], caller's order
        y = y.view(steps, batch, samples, -1).permute(2, 1, 0, 3)  # [S, B, T, Z]
        if inverse is not None:
            y = y[:, inverse]
        return y.reshape(samples * batch, steps, -1)  # a view when S = 1

    z, loc, scale = outputs
    return sample_major(z), sample_major(loc), sample_major(scale)


def bucketed_scan(
    combiner: Combiner,
    z_q_0: Tensor,
    h_rows: Tensor,
    noise_rows: Tensor,
    capture: bool = True,
    bucket: int | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """The scan on ``[T, N, .]`` rows with T padded to a multiple of ``bucket``
    (:data:`GRAPH_BUCKET`; zeros: the padded steps come after every observed one and are cut
    off), replayed from a CUDA graph captured on first use for that shape. ``capture=False``,
    or a capture that fails (with a warning), runs the same padded scan eagerly."""
    steps, n = noise_rows.shape[:2]
    extra = -steps % (bucket or GRAPH_BUCKET)
    if extra:
        h_rows = pad(h_rows, (0, 0, 0, 0, 0, extra))
        noise_rows = pad(noise_rows, (0, 0, 0, 0, 0, extra))
    scan = None
    if capture:
        graphs = _GRAPHS.setdefault(combiner, {})
        # the parameters' addresses too: a graph reads the tensors it was captured with,
        # which .to() or .double() replace
        key = (
            steps + extra,
            n,
            h_rows.dtype,
            h_rows.device,
            h_rows.requires_grad,
            *(p.data_ptr() for p in combiner.parameters()),
            z_q_0.data_ptr(),
        )
        if key not in graphs:
            graphs[key] = _capture(_Scan(combiner, z_q_0), h_rows, noise_rows)
        scan = graphs[key]
    scan = scan or _Scan(combiner, z_q_0)  # eager: no graph, or none captured
    z, loc, scale = scan(h_rows, noise_rows)
    return z[:steps], loc[:steps], scale[:steps]


def captured_graphs(combiner: nn.Module) -> dict:
    """The graphs captured for ``combiner``'s scan: shape key -> graphed scan (None where a
    capture failed)."""
    return dict(_GRAPHS.get(combiner, {}))


def _capture(scan: _Scan, h_rows: Tensor, noise_rows: Tensor) -> nn.Module | None:
    """``scan`` captured for inputs shaped as these (static copies), or None with a warning
    when CUDA cannot capture it."""
    sample = (
        h_rows.detach().clone().requires_grad_(h_rows.requires_grad),
        noise_rows.detach().clone(),
    )
    try:
        with warnings.catch_warnings():
            # torch >= 2.11 warns while capturing that the parameters' AccumulateGrad nodes
            # were made on another stream (harmless: measured equal in tests/test_gpu.py); a
            # caller's "error" filter must not abort a capture half-way, which leaves CUDA's
            # generator unusable for every later draw
            warnings.filterwarnings("ignore", message="The AccumulateGrad node's stream")
            # given a module, make_graphed_callables returns that module (its stubs say
            # Module | Callable)
            return cast(nn.Module, torch.cuda.make_graphed_callables(scan, sample))
    except RuntimeError as err:
        warnings.warn(
            f"the DMM guide's scan could not be captured in a CUDA graph ({err}); it "
            f"runs eagerly (the same numbers, slower)",
            stacklevel=4,
        )
        return None
