"""The notebook 05 checkers accept the right answers and name each typical mistake."""

from __future__ import annotations

import pytest
import torch
from torch.distributions import TransformedDistribution

from vaelab.exercises import Mistake, flows
from vaelab.exercises.flows import (
    check_coupling_forward,
    check_coupling_log_det,
    check_flow_log_prob,
    coupling_case,
)


def bounded(raw, bound):
    return bound * torch.tanh(raw / bound)


def forward_right(x, mask, shift, raw, bound):
    return mask * x + (1 - mask) * (x * bounded(raw, bound).exp() + shift)


def log_det_right(mask, raw, bound):
    return ((1 - mask) * bounded(raw, bound)).sum(dim=-1)


def log_prob_right(x, transform, base):
    u = transform.inv(x)
    return base.log_prob(u) - transform.log_abs_det_jacobian(u, x)


def test_the_case_is_a_real_test() -> None:
    # the random layer is far from the identity, and tanh's bound bends its log-scales
    case = coupling_case(0)
    layer, x, raw = case["layer"], case["x"], case["raw"]
    assert (layer(x) - x).abs().max() > 0.5
    assert (bounded(raw, case["bound"]) - raw).abs().max() > 0.1
    assert 0 < case["mask"].sum() < len(case["mask"])
    assert not torch.equal(coupling_case(0)["mask"], coupling_case(1)["mask"])


def test_right_answers_pass(capsys: pytest.CaptureFixture) -> None:
    check_coupling_forward(forward_right)
    check_coupling_log_det(log_det_right)
    check_flow_log_prob(log_prob_right)
    assert capsys.readouterr().out.count("correct") == 3


def test_library_shortcuts_are_named() -> None:
    # right numbers, but the library's own answer: named, however it is reached
    from vaelab.flows import AffineCoupling

    with pytest.raises(Mistake, match="TransformedDistribution\\(...\\).log_prob is the"):
        check_flow_log_prob(lambda x, t, base: TransformedDistribution(base, [t]).log_prob(x))

    def forward_by_library(x, mask, shift, raw, bound):
        return AffineCoupling(lambda xm, c: (shift, raw), mask, None, bound)(x)

    with pytest.raises(Mistake, match="vaelab.flows is the library's answer"):
        check_coupling_forward(forward_by_library)


def test_swapped_log_det_arguments_are_named() -> None:
    # a coupling layer's log-det is the same at z and at x; the exponential's is not
    def swapped(x, t, base):
        z = t.inv(x)
        return base.log_prob(z) - t.log_abs_det_jacobian(x, z)

    with pytest.raises(Mistake, match="takes \\(z, x\\), the base point first.*exp transform"):
        check_flow_log_prob(swapped)


def test_float32_answers_pass_and_a_dtype_mismatch_is_named() -> None:
    seen = []

    def log_det_any_dtype(mask, raw, bound):
        seen.append(raw.dtype)
        return log_det_right(mask, raw, bound)

    check_coupling_log_det(log_det_any_dtype)
    assert torch.float32 in seen and torch.float64 in seen
    with pytest.raises(Mistake, match="returned torch.float32 for torch.float64 inputs"):
        check_coupling_forward(lambda x, b, t, r, k: forward_right(x, b, t, r, k).float())


FORWARD_MISTAKES = {
    "mask is inverted": lambda x, b, t, r, k: (1 - b) * x + b * (x * bounded(r, k).exp() + t),
    "scale is exp\\(l\\), not l": lambda x, b, t, r, k: b * x + (1 - b) * (x * bounded(r, k) + t),
    "not bounded": lambda x, b, t, r, k: b * x + (1 - b) * (x * r.exp() + t),
    "default bound 3": lambda x, b, t, r, k: forward_right(x, b, t, r, 3.0),
    "inverse map": lambda x, b, t, r, k: b * x + (1 - b) * (x - t) * (-bounded(r, k)).exp(),
    "shift is scaled too": lambda x, b, t, r, k: b * x + (1 - b) * (x + t) * bounded(r, k).exp(),
    "untouched half is missing": lambda x, b, t, r, k: (1 - b) * (x * bounded(r, k).exp() + t),
    "every coordinate is transformed": lambda x, b, t, r, k: x * bounded(r, k).exp() + t,
    "off by up to": lambda x, b, t, r, k: forward_right(x, b, t, r, k) + 1e-3,
    "shape": lambda x, b, t, r, k: forward_right(x, b, t, r, k).sum(-1),
    "NaN": lambda x, b, t, r, k: forward_right(x, b, t, r, k) * torch.nan,
    "torch.Tensor": lambda x, b, t, r, k: forward_right(x, b, t, r, k).numpy(),
}


@pytest.mark.parametrize("match", FORWARD_MISTAKES)
def test_forward_mistakes_are_named(match: str) -> None:
    with pytest.raises(Mistake, match=match):
        check_coupling_forward(FORWARD_MISTAKES[match])


LOG_DET_MISTAKES = {
    "inverse layer's log-determinant": lambda b, r, k: -log_det_right(b, r, k),
    "over all dimensions": lambda b, r, k: bounded(r, k).sum(-1),
    "mask is inverted": lambda b, r, k: (b * bounded(r, k)).sum(-1),
    "sums exp\\(l\\)": lambda b, r, k: ((1 - b) * bounded(r, k).exp()).sum(-1),
    "not bounded": lambda b, r, k: ((1 - b) * r).sum(-1),
    "averages the log-scales": lambda b, r, k: ((1 - b) * bounded(r, k)).mean(-1),
    "summed over the batch \\(dim 0\\)": lambda b, r, k: ((1 - b) * bounded(r, k)).sum(0),
    "default bound 3": lambda b, r, k: log_det_right(b, r, 3.0),
    "sum the log-scales over the event": lambda b, r, k: (1 - b) * bounded(r, k),
    "returned shape": lambda b, r, k: log_det_right(b, r, k).sum(),  # summed over the batch too
    "returned a tuple": lambda b, r, k: (log_det_right(b, r, k), r),
    "raised RuntimeError": lambda b, r, k: b @ torch.ones(3, 3),  # shapes that do not match
    "off by up to": lambda b, r, k: log_det_right(b, r, k) * 1.01,
}


@pytest.mark.parametrize("match", LOG_DET_MISTAKES)
def test_log_det_mistakes_are_named(match: str) -> None:
    with pytest.raises(Mistake, match=match):
        check_coupling_log_det(LOG_DET_MISTAKES[match])


def _pushed(x, t, base):
    y = t(x)
    return base.log_prob(y) - t.log_abs_det_jacobian(x, y)


LOG_PROB_MISTAKES = {
    "has the wrong sign": lambda x, t, base: (
        base.log_prob(t.inv(x)) + t.log_abs_det_jacobian(t.inv(x), x)
    ),
    # the inverse direction's log-det, as a student may reach for it: the same wrong sign
    "inverse's, transform.inv.log_abs_det_jacobian": lambda x, t, base: (
        base.log_prob(t.inv(x)) - t.inv.log_abs_det_jacobian(x, t.inv(x))
    ),
    "base density is evaluated at x": lambda x, t, base: (
        base.log_prob(x) - t.log_abs_det_jacobian(t.inv(x), x)
    ),
    "Jacobian term is missing": lambda x, t, base: base.log_prob(t.inv(x)),
    "pushed forward": _pushed,
    "off by up to": lambda x, t, base: log_prob_right(x, t, base) - 0.5,
}


@pytest.mark.parametrize("match", LOG_PROB_MISTAKES)
def test_log_prob_mistakes_are_named(match: str) -> None:
    with pytest.raises(Mistake, match=match):
        check_flow_log_prob(LOG_PROB_MISTAKES[match])


def test_a_stub_is_not_a_mistake() -> None:
    # the released notebook's stub raises NotImplementedError, which the checker lets through
    def stub(*args):
        raise NotImplementedError()

    for check in (check_coupling_forward, check_coupling_log_det, check_flow_log_prob):
        name = check.__name__.removeprefix("check_")
        with pytest.raises(NotImplementedError, match=f"^{name} is not written yet"):
            check(stub)


def test_hints_are_distinct() -> None:
    # no two typical mistakes give the same numbers, so each message is the one that applies
    case = coupling_case(1)
    x, b, t, r, k = (case[n] for n in ("x", "mask", "shift", "raw", "bound"))
    values = [
        f(x, b, t, r, k)
        for n, f in FORWARD_MISTAKES.items()
        if n not in ("shape", "NaN", "torch.Tensor")
    ]
    values += [forward_right(x, b, t, r, k)]
    for i, u in enumerate(values):
        for v in values[i + 1 :]:
            assert not torch.allclose(u, v, rtol=1e-5, atol=1e-6)
    assert [c[:2] for c in flows.CASES] == [
        (0, torch.float64),
        (1, torch.float64),
        (2, torch.float32),
    ]


# ------------------------------------------------------- a coupling layer as a Transform (builds)

from torch.distributions import Transform, constraints

from vaelab.exercises.flows import check_coupling_transform
from vaelab.flows import AffineCoupling


class CouplingRight(Transform):
    domain = constraints.independent(constraints.real, 1)
    codomain = constraints.independent(constraints.real, 1)
    bijective = True

    def __init__(self, net, mask, context, bound=2.0):
        super().__init__(cache_size=1)
        self.net, self.mask, self.context, self.bound = net, mask, context, bound

    def _shift_log_scale(self, v):
        shift, raw = self.net(self.mask * v, self.context)
        return shift, bounded(raw, self.bound)

    def _call(self, z):
        t, l_ = self._shift_log_scale(z)
        return self.mask * z + (1 - self.mask) * (z * l_.exp() + t)

    def _inverse(self, x):
        t, l_ = self._shift_log_scale(x)
        return self.mask * x + (1 - self.mask) * (x - t) * torch.exp(-l_)

    def log_abs_det_jacobian(self, z, x):
        return ((1 - self.mask) * self._shift_log_scale(z)[1]).sum(-1)


def test_coupling_transform_accepts_correct_and_trains() -> None:
    log_lik = check_coupling_transform(CouplingRight)
    assert -2.5 < log_lik < 0  # nats per point on two-moons after 150 steps


class InverseShiftFirst(CouplingRight):
    def _inverse(self, x):
        t, l_ = self._shift_log_scale(x)
        return self.mask * x + (1 - self.mask) * (x * torch.exp(-l_) - t)


class LogDetSign(CouplingRight):
    def log_abs_det_jacobian(self, z, x):
        return -super().log_abs_det_jacobian(z, x)


class ByLibrary(CouplingRight):
    def _call(self, z):
        return AffineCoupling(self.net, self.mask, self.context, self.bound)(z)


class NotATransform:
    def __init__(self, net, mask, context, bound=2.0):
        pass


class LogDetOfAnotherMap(CouplingRight):
    def _call(self, z):  # the forward map scales by exp(2 l): its Jacobian is not the log-det's
        t, l_ = self._shift_log_scale(z)
        return self.mask * z + (1 - self.mask) * (z * (2 * l_).exp() + t)


COUPLING_MISTAKES = {
    "removing the shift": InverseShiftFirst,
    "inverse's log-determinant": LogDetSign,
    "AffineCoupling is the library's answer": ByLibrary,
    "must subclass torch.distributions.Transform": NotATransform,
    "forward \\(_call\\)": LogDetOfAnotherMap,
}


@pytest.mark.parametrize("match", COUPLING_MISTAKES)
def test_coupling_transform_names_mistakes(match: str) -> None:
    with pytest.raises(Mistake, match=match):
        check_coupling_transform(COUPLING_MISTAKES[match])
