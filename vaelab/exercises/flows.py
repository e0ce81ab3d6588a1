"""Checkers for notebook 05 (normalizing flows): an affine coupling layer's forward map and
its log-determinant, and the change-of-variables log-density of a one-layer flow.

The messages use the notebook's notation: a flow maps a base point ``z`` to ``x = f(z)``
(``vaelab.flows``' docstrings write a generic bijection as ``y = f(x)``).

Every checker builds a random :class:`~vaelab.flows.AffineCoupling` (random weights, so that no
layer sits at its identity initialisation), runs the student's function on random inputs in
float64 and compares it with the library; a disagreement that matches a typical mistake is
named (:class:`~vaelab.exercises.common.Mistake`).
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable

import torch
from torch import Tensor
from torch.distributions import (
    Distribution,
    ExpTransform,
    Independent,
    IndependentTransform,
    Normal,
    Transform,
    TransformedDistribution,
)

from vaelab.exercises.common import (
    Mistake,
    call_student,
    check_close,
    check_shape,
    close,
    student_line,
    watch_module,
)
from vaelab.flows import AffineCoupling, CouplingNet

SEEDS = (0, 1)  # two random layers per check, with the two alternating masks
# (seed, dtype, batch, dim): float64 layers with both masks, then a float32 one with odd sizes
CASES = ((0, torch.float64, 32, 5), (1, torch.float64, 32, 5), (2, torch.float32, 7, 3))
LIBRARY = {
    "flows.py": "vaelab.flows is the library's answer; write the formula with torch operations"
}


def coupling_case(
    seed: int,
    batch: int = 32,
    dim: int = 5,
    context_dim: int = 3,
    bound: float = 2.0,
    dtype: torch.dtype = torch.float64,
) -> dict:
    """A random coupling layer and inputs: base points ``x [B, D]`` (the notebook's ``z``),
    the 0/1 ``mask [D]`` (1 = untouched), the context ``c [B, C]``, the network's ``shift`` and
    ``raw`` log-scale ``[B, D]`` at ``mask * x``, and the library's ``layer`` (``cache_size=0``),
    all in ``dtype``; ``reference`` holds the same layer and inputs in float64 (the float32
    values, widened), from which the expected answers are computed."""
    g = torch.Generator().manual_seed(seed)
    net = CouplingNet(dim, context_dim, [16]).double()
    with torch.no_grad():
        for p in net.parameters():
            # raw log-scales of order 1-3, where tanh's bound visibly bends them
            p.copy_(0.7 * torch.randn(p.shape, generator=g, dtype=p.dtype).to(dtype))
    mask = ((torch.arange(dim) + seed) % 2 == 0).double()
    x = torch.randn(batch, dim, generator=g, dtype=torch.float64).to(dtype).double()
    c = torch.randn(batch, context_dim, generator=g, dtype=torch.float64).to(dtype).double()
    layer = AffineCoupling(net, mask, c, log_scale_bound=bound, cache_size=0)
    with torch.no_grad():
        shift, raw = net(mask * x, c)
    reference = {
        "x": x,
        "mask": mask,
        "c": c,
        "shift": shift,
        "raw": raw,
        "bound": bound,
        "layer": layer,
    }
    if dtype == torch.float64:
        return {**reference, "reference": reference}
    low_net = CouplingNet(dim, context_dim, [16]).to(dtype)
    low_net.load_state_dict(net.state_dict())
    x_, c_, mask_ = x.to(dtype), c.to(dtype), mask.to(dtype)
    with torch.no_grad():
        shift_, raw_ = low_net(mask_ * x_, c_)
    return {
        "x": x_,
        "mask": mask_,
        "c": c_,
        "shift": shift_,
        "raw": raw_,
        "bound": bound,
        "layer": AffineCoupling(low_net, mask_, c_, log_scale_bound=bound, cache_size=0),
        "reference": {**reference, "shift": shift_.double(), "raw": raw_.double()},
    }


def _call(
    name: str,
    fn: Callable,
    *args,
    forbidden_files: dict | None = None,
    forbidden: dict | None = None,
) -> Tensor:
    out = call_student(
        name, fn, *args, forbidden=forbidden, forbidden_files=forbidden_files, no_grad=True
    )
    if isinstance(out, tuple):
        raise Mistake(f"{name} returned a tuple; return one tensor")
    if not isinstance(out, Tensor):
        raise Mistake(f"{name} must return a torch.Tensor, got {type(out).__name__}")
    return out


def check_coupling_forward(coupling_forward: Callable) -> None:
    """Check ``coupling_forward(z, mask, shift, raw, bound) -> x [B, D]``: the forward map
    ``x = b z + (1 - b)(z exp(l) + t)`` with ``l = bound * tanh(raw / bound)``, against
    :class:`vaelab.flows.AffineCoupling` (float64, then float32 with odd sizes)."""
    name = "coupling_forward"
    for seed, dtype, batch, dim in CASES:
        case = coupling_case(seed, batch, dim, dtype=dtype)
        args = [
            case[k].clone() if isinstance(case[k], Tensor) else case[k]
            for k in ("x", "mask", "shift", "raw", "bound")
        ]
        got = _call(name, coupling_forward, *args, forbidden_files=LIBRARY)
        ref = case["reference"]
        x, b, t, raw, bound = (ref[k] for k in ("x", "mask", "shift", "raw", "bound"))
        with torch.no_grad():
            expected = (
                ref["layer"](x)
                if dtype == torch.float64
                else (b * x + (1 - b) * (x * (bound * torch.tanh(raw / bound)).exp() + t))
            )
        check_shape(name, got, x.shape)
        l_ = bound * torch.tanh(raw / bound)
        hints = {
            "the mask is inverted: b = 1 marks the untouched half, so x = b * z + (1 - b) * "
            "(...)": (1 - b) * x + b * (x * l_.exp() + t),
            "every coordinate is transformed: the untouched half (mask 1) must pass through "
            "unchanged, x = b * z + (1 - b) * (z * exp(l) + t)": x * l_.exp() + t,
            "the scale is exp(l), not l: the network outputs a log-scale": b * x
            + (1 - b) * (x * l_ + t),
            "the log-scale is not bounded: use l = bound * tanh(raw / bound)": b * x
            + (1 - b) * (x * raw.exp() + t),
            "the log-scale uses the default bound 3 instead of the argument bound": b * x
            + (1 - b) * (x * (3 * torch.tanh(raw / 3)).exp() + t),
            "this is the inverse map (z - t) * exp(-l); the forward map scales, then shifts": b * x
            + (1 - b) * (x - t) * (-l_).exp(),
            "the shift is scaled too: x = z * exp(l) + t, not (z + t) * exp(l)": b * x
            + (1 - b) * (x + t) * l_.exp(),
            "the untouched half is missing: add b * z": (1 - b) * (x * l_.exp() + t),
        }
        check_close(name, got, expected, hints=hints, dtype=dtype)
    print(f"{name}: correct on {len(CASES)} random coupling layers (float64 and float32)")


def check_coupling_log_det(coupling_log_det: Callable) -> None:
    """Check ``coupling_log_det(mask, raw, bound) -> [B]``: the forward
    ``log|det dx/dz| = sum_d (1 - b_d) l_d`` with ``l = bound * tanh(raw / bound)``, against
    :meth:`vaelab.flows.AffineCoupling.log_abs_det_jacobian`."""
    name = "coupling_log_det"
    for seed, dtype, batch, dim in CASES:
        case = coupling_case(seed, batch, dim, dtype=dtype)
        got = _call(
            name,
            coupling_log_det,
            case["mask"].clone(),
            case["raw"].clone(),
            case["bound"],
            forbidden_files=LIBRARY,
        )
        ref = case["reference"]
        x, b, raw, bound, layer = (ref[k] for k in ("x", "mask", "raw", "bound", "layer"))
        l_ = bound * torch.tanh(raw / bound)
        expected = ((1 - b) * l_).sum(-1)
        if dtype == torch.float64:
            with torch.no_grad():
                expected = layer.log_abs_det_jacobian(x, layer(x))
        if isinstance(got, Tensor) and tuple(got.shape) == tuple(x.shape):
            raise Mistake(
                f"{name} returned shape {list(got.shape)}, expected "
                f"{list(expected.shape)}: sum the log-scales over the event "
                f"dimension (dim=-1), one log-determinant per example"
            )
        if isinstance(got, Tensor) and tuple(got.shape) == (x.shape[-1],):
            raise Mistake(
                f"{name} returned shape {list(got.shape)}, one value per dimension: "
                f"you summed over the batch (dim 0); sum over the event dimension "
                f"(dim=-1), one log-determinant per example"
            )
        check_shape(name, got, expected.shape)
        l_ = bound * torch.tanh(raw / bound)
        keep = 1 - b
        hints = {
            "that is the inverse layer's log-determinant (-sum l); the forward map scales "
            "by exp(+l)": -(keep * l_).sum(-1),
            "it sums the log-scales over all dimensions; the untouched half (mask 1) has "
            "derivative 1 and adds nothing": l_.sum(-1),
            "the mask is inverted: sum over the dimensions with mask 0 (the transformed half)": (
                b * l_
            ).sum(-1),
            "it sums exp(l); the diagonal of the Jacobian is exp(l), its log is l": (
                keep * l_.exp()
            ).sum(-1),
            "the log-scale is not bounded: use l = bound * tanh(raw / bound)": (keep * raw).sum(
                -1
            ),
            "the log-scale uses the default bound 3 instead of the argument bound": (
                keep * 3 * torch.tanh(raw / 3)
            ).sum(-1),
            "it averages the log-scales: the log-determinant is their sum over the event "
            "dimension": (keep * l_).mean(-1),
        }
        check_close(name, got, expected, hints=hints, dtype=dtype)
    print(f"{name}: correct on {len(CASES)} random coupling layers (float64 and float32)")


def flow_cases() -> list[tuple[str, Tensor, Transform, Distribution, torch.dtype]]:
    """``(what, x [B, D], transform, base, dtype)`` for the change-of-variables check: two
    coupling layers (float64), an element-wise exponential whose log-determinant differs at z
    and at x (a coupling layer's is the same at both, which hides swapped arguments), and a
    float32 coupling layer."""
    cases = []
    for seed, dtype, batch, dim in CASES:
        case = coupling_case(seed, batch, dim, dtype=dtype)
        cases.append((f"coupling layer {seed}", case["x"], case["layer"], dtype))
    g = torch.Generator().manual_seed(7)
    x_exp = 0.3 + 2 * torch.rand(9, 4, generator=g, dtype=torch.float64)  # positive: in range
    cases.insert(2, ("exp", x_exp, IndependentTransform(ExpTransform(), 1), torch.float64))
    out: list[tuple[str, Tensor, Transform, Distribution, torch.dtype]] = []
    for i, (what, x, transform, dtype) in enumerate(cases):
        d = x.shape[-1]
        g = torch.Generator().manual_seed(100 + i)
        base = Independent(
            Normal(
                torch.randn(d, generator=g, dtype=torch.float64).to(dtype),
                (0.5 + torch.rand(d, generator=g, dtype=torch.float64)).to(dtype),
            ),
            1,
        )
        out.append((what, x, transform, base, dtype))
    return out


def check_flow_log_prob(flow_log_prob: Callable) -> None:
    """Check ``flow_log_prob(x, transform, base) -> [B]``: the change of variables
    ``log p(x) = log p_base(z) - log|det df/dz|`` at ``z = f^{-1}(x)`` for one transform
    ``f`` (``z -> x``), against ``TransformedDistribution(base, [transform]).log_prob``, for
    coupling layers and an exponential (whose log-determinant is not the same at z and x).
    Calling TransformedDistribution (the library's answer) is named."""
    name = "flow_log_prob"
    for what, x, layer, base, dtype in flow_cases():
        with torch.no_grad():
            expected = TransformedDistribution(base, [layer]).log_prob(x)
            u = layer.inv(x)
            log_det = layer.log_abs_det_jacobian(u, x)
            pushed = layer(x)
            hints = {
                "transform.log_abs_det_jacobian takes (z, x), the base point first: "
                "log|det df/dz| is evaluated at z = transform.inv(x), so pass "
                "log_abs_det_jacobian(z, x), not (x, z)": base.log_prob(u)
                - layer.log_abs_det_jacobian(x, u),
                "the log-determinant has the wrong sign: log p(x) = log p_base(z) - "
                "log|det df/dz|, with the forward direction's transform.log_abs_det_jacobian"
                "(z, x) (the inverse's, transform.inv.log_abs_det_jacobian(x, z), is its "
                "negative)": base.log_prob(u) + log_det,
                "the base density is evaluated at x; evaluate it at the base point "
                "z = transform.inv(x)": base.log_prob(x) - log_det,
                (
                    "the Jacobian term is missing: subtract transform.log_abs_det_jacobian(z, x)"
                ): base.log_prob(u),
                "x was pushed forward (transform(x)); the base point is the inverse, "
                "z = transform.inv(x)": base.log_prob(pushed)
                - layer.log_abs_det_jacobian(x, pushed),
            }
        got = _call(
            name,
            flow_log_prob,
            x.clone(),
            layer,
            base,
            forbidden={
                TransformedDistribution.log_prob: "TransformedDistribution(...).log_prob is the "
                "library's answer; write the change of variables with transform.inv, "
                "transform.log_abs_det_jacobian and base.log_prob"
            },
        )
        try:
            check_shape(name, got, expected.shape)
            check_close(name, got, expected, hints=hints, dtype=dtype)
        except Mistake as err:
            raise Mistake(f"{err} (on the {what} transform)") from None
    print(f"{name}: correct on {len(CASES) + 1} random one-layer flows")


__all__ = [
    "check_coupling_forward",
    "check_coupling_log_det",
    "check_flow_log_prob",
    "coupling_case",
    "flow_cases",
]


# ------------------------------------------------------- a coupling layer as a Transform (builds)

MOONS_STEPS, MOONS_LAYERS, MOONS_HIDDEN = 150, 4, (32, 32)


class _Flow(torch.nn.Module):
    """A conditional flow on two-moons: ``MOONS_LAYERS`` coupling layers of ``layer_class``
    (alternating masks) over a standard normal base; ``forward(a)`` returns p(x | a)."""

    def __init__(self, layer_class: Callable, bound: float = 2.0) -> None:
        super().__init__()
        self.layer_class, self.bound = layer_class, bound
        self.nets = torch.nn.ModuleList(
            CouplingNet(2, 2, MOONS_HIDDEN) for _ in range(MOONS_LAYERS)
        )
        self.masks = [
            torch.tensor([1.0, 0.0]) if k % 2 == 0 else torch.tensor([0.0, 1.0])
            for k in range(MOONS_LAYERS)
        ]

    def forward(self, a: Tensor) -> Distribution:
        base = Independent(Normal(a.new_zeros(a.shape[0], 2), a.new_ones(a.shape[0], 2)), 1)
        layers = [
            self.layer_class(net, mask, a, self.bound)
            for net, mask in zip(self.nets, self.masks, strict=False)
        ]
        return TransformedDistribution(base, layers)


def train_moons_flow(layer_class: Callable, steps: int = MOONS_STEPS) -> float:
    """Train :class:`_Flow` of ``layer_class`` layers on two-moons (Adam, fixed seed) and
    return the held-out mean log p(x | a), nats per point."""
    from vaelab.data import load_moons

    train, _, test = load_moons(n=3000, n_val=500, n_test=500)
    torch.manual_seed(0)
    flow = _Flow(layer_class)
    optimizer = torch.optim.Adam(flow.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(0)
    a = train.a
    assert a is not None  # moons carry their context a
    for _ in range(steps):
        i = torch.randint(len(train), (256,), generator=g)
        loss = -flow(a[i]).log_prob(train.x[i]).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        return flow(test.a).log_prob(test.x).mean().item()


def check_coupling_transform(coupling_class: Callable) -> float:
    """Check ``coupling_class(net, mask, context, bound)``, a ``torch.distributions.Transform``
    for the affine coupling layer (forward ``_call``, ``_inverse`` and
    ``log_abs_det_jacobian``), against :class:`vaelab.flows.AffineCoupling` on random layers
    (float64): the forward map, the inverse, ``inv(f(z)) == z``, and the log-determinant, which
    must also equal ``log|det|`` of the autograd Jacobian. Then, by behaviour, a four-layer
    conditional flow of these layers trained on two-moons must reach the held-out
    log-likelihood of the same flow built from the library's layer. Returns that
    log-likelihood (nats per point)."""
    name = "the coupling Transform"
    library = {
        AffineCoupling._call: "AffineCoupling is the library's answer",
        AffineCoupling._inverse: "AffineCoupling is the library's answer",
        AffineCoupling.log_abs_det_jacobian: "AffineCoupling is the library's answer",
    }
    for seed in (0, 1):
        case = coupling_case(seed)
        z, b, c, bound, lib = (case[k] for k in ("x", "mask", "c", "bound", "layer"))
        net = lib.net
        layer = call_student(name, coupling_class, net, b, c, bound, forbidden=library)
        if not isinstance(layer, Transform):
            raise Mistake(f"{type(layer).__name__} must subclass torch.distributions.Transform")
        x = _call(f"{name}'s forward (_call)", layer._call, z.clone(), forbidden=library)
        check_close(
            f"{name}'s forward (_call)",
            x,
            lib(z),
            hints={
                "the forward map is the inverse: x = b z + (1 - b)(z exp(l) + t)": lib._inverse(z)
            },
        )
        back = _call(f"{name}'s _inverse", layer._inverse, x.clone(), forbidden=library)
        l_ = bound * torch.tanh(case["raw"] / bound)
        t = case["shift"]
        check_close(
            f"{name}'s _inverse",
            back,
            z,
            hints={
                "the inverse divides by exp(l) before removing the shift: z = (x - t) exp(-l), "
                "not x exp(-l) - t": b * x + (1 - b) * (x * (-l_).exp() - t),
                "the inverse computes t and l from the wrong half: the network sees b * x, which "
                "equals b * z, so both directions take one pass": torch.full_like(z, float("nan")),
            },
        )
        log_det = _call(
            f"{name}'s log_abs_det_jacobian",
            layer.log_abs_det_jacobian,
            z.clone(),
            x.detach().clone(),
            forbidden=library,
        )
        expected = lib.log_abs_det_jacobian(z, x.detach())
        check_close(
            f"{name}'s log_abs_det_jacobian",
            log_det,
            expected,
            hints={
                (
                    "that is the inverse's log-determinant: the forward map scales by exp(+l)"
                ): -expected
            },
        )
        # independent of the library: log|det| of the autograd Jacobian of one example
        jac = torch.autograd.functional.jacobian(lambda v, f=layer._call: f(v[None])[0], z[0])
        slog = torch.linalg.slogdet(jac).logabsdet
        if not close(log_det[0].detach(), slog, torch.float64):
            raise Mistake(
                f"{name}'s log_abs_det_jacobian ({log_det[0].item():.6f}) differs "
                f"from log|det| of the Jacobian of your _call ({slog.item():.6f})"
            )
    try:
        yours = train_moons_flow(coupling_class)
    except Exception as err:
        raise Mistake(
            f"training a flow of your layers on two-moons raised "
            f"{type(err).__name__}: {err}{student_line(err)}"
        ) from err
    theirs = train_moons_flow(AffineCoupling)
    if not math.isfinite(yours) or yours < theirs - 0.05:
        raise Mistake(
            f"a four-layer flow of your coupling layers trained on two-moons reached "
            f"a held-out log-likelihood of {yours:.3f} nats per point; the same flow "
            f"of the library's layers {theirs:.3f}"
        )
    return yours


__all__ += ["check_coupling_transform", "train_moons_flow"]
watch_module(sys.modules[__name__])
