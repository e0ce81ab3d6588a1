"""The checkers of notebooks 03 and 04 accept the library's own answers and name each typical
mistake (vaelab.exercises.sequential)."""

from __future__ import annotations

import pytest
import torch
from torch.nn.functional import softplus

from vaelab.exercises import Mistake, sequential
from vaelab.exercises.sequential import (
    check_combiner,
    check_kalman_step,
    check_reverse_sequences,
    check_sequential_elbo,
)
from vaelab.nn import reverse_sequences

# ----------------------------------------------------------------------------- sequential ELBO


def elbo_right(log_px, kl, mask):
    return torch.where(mask, log_px - kl.sum(-1), 0.0).sum(1)


def test_elbo_case_matches_the_model() -> None:
    # the per-step terms the checker hands out add up to SSM.elbo's value for the same path
    case = sequential.elbo_case(0)
    torch.testing.assert_close(
        elbo_right(case["log_px"], case["kl"], case["mask"]), case["elbo"], rtol=1e-4, atol=1e-4
    )
    assert (~case["mask"]).any() and torch.isnan(case["log_px"][~case["mask"]]).all()


def test_sequential_elbo_accepts_the_right_answer() -> None:
    check_sequential_elbo(elbo_right)


@pytest.mark.parametrize(
    "wrong, match",
    [
        (lambda lp, kl, m: (lp - kl.sum(-1)).sum(1), "mask is ignored"),
        (lambda lp, kl, m: (m * (lp - kl.sum(-1))).sum(1), "0 \\* NaN"),
        (lambda lp, kl, m: torch.where(m, lp - kl.sum(-1), 0.0).sum(0), "batch axis"),
        (
            lambda lp, kl, m: torch.where(m[..., None], lp[..., None] - kl, 0.0).sum(1),
            "latent dimensions",
        ),
        (lambda lp, kl, m: torch.where(m, lp + kl.sum(-1), 0.0).sum(1), "wrong sign"),
        (lambda lp, kl, m: torch.where(m, lp, 0.0).sum(1), "KL term is missing"),
        (lambda lp, kl, m: torch.where(m, lp - kl.sum(-1), 0.0).sum(1) / m.sum(1), "averaged"),
        (
            lambda lp, kl, m: torch.where(m, lp - kl.mean(-1), 0.0).sum(1),
            "averaged over the latent",
        ),
        (lambda lp, kl, m: torch.where(m, 0.0, lp - kl.sum(-1)).sum(1), "mask is inverted"),
        # the KL summed over time (dim 1) instead of its latent dimensions: a shape clash,
        # reported with the shapes and the fix
        (
            lambda lp, kl, m: (
                torch.where(m, lp, 0.0).sum(1) - torch.where(m[..., None], kl, 0.0).sum(1)
            ),
            r"(?s)raised RuntimeError.*kl \[5, 7, 3\] = \[B, T, Z\].*sum kl over its last axis",
        ),
    ],
)
def test_sequential_elbo_names_mistakes(wrong, match) -> None:
    with pytest.raises(Mistake, match=match):
        check_sequential_elbo(wrong)


def test_elbo_mistake_without_a_hint_reports_the_difference() -> None:
    def one_step_dropped(log_px, kl, mask):
        return elbo_right(log_px, kl, mask) - torch.where(mask[:, 0], log_px[:, 0], 0.0)

    with pytest.raises(Mistake, match="off by up to"):
        check_sequential_elbo(one_step_dropped)


def test_student_release_stub_raises_not_implemented() -> None:
    def stub(log_px, kl, mask):
        raise NotImplementedError()

    with pytest.raises(NotImplementedError, match="^sequential_elbo is not written yet"):
        check_sequential_elbo(stub)


# ----------------------------------------------------------------------------- Kalman step


def kalman_right(m, P, x, a, A, B, Q, C, R):
    S = C @ P @ C.T + R
    K = torch.linalg.solve(S, C @ P).T  # P C^T S^-1 (P, S symmetric)
    m_f = m + K @ (x - C @ m)
    P_f = P - K @ C @ P
    return m_f, P_f, A @ m_f + B @ a, A @ P_f @ A.T + Q


def kalman_variant(
    gain=None,
    no_q=False,
    no_b=False,
    predict_from_prior=False,
    no_cov_update=False,
    innovation_sign=1,
    cov_sign=-1,
):
    def step(m, P, x, a, A, B, Q, C, R):
        S = C @ P @ C.T + R
        K = P @ C.T @ torch.linalg.inv(S) if gain is None else gain(P, C, R, S)
        m_f = m + innovation_sign * K @ (x - C @ m)
        P_f = P if no_cov_update else P + cov_sign * K @ C @ P
        m_src, P_src = (m, P) if predict_from_prior else (m_f, P_f)
        m_n = A @ m_src + (0 if no_b else B @ a)
        P_n = A @ P_src @ A.T + (0 if no_q else Q)
        return m_f, P_f, m_n, P_n

    return step


def test_kalman_case_matches_hand_formulas() -> None:
    # the filter's one-step answer equals the textbook formulas (an independent computation)
    case = sequential.kalman_case(3, 4, 2)
    got = kalman_right(*(case[k] for k in ("m", "P", "x", "a", "A", "B", "Q", "C", "R")))
    for value, key in zip(got, ("m_filt", "P_filt", "m_next", "P_next"), strict=False):
        torch.testing.assert_close(value, case[key])


def test_kalman_step_accepts_the_right_answer() -> None:
    check_kalman_step(kalman_right)
    check_kalman_step(kalman_variant())


@pytest.mark.parametrize(
    "wrong, match",
    [
        (kalman_variant(no_q=True), "process noise Q is missing"),
        (
            kalman_variant(gain=lambda P, C, R, S: P @ C.T @ torch.linalg.inv(P)),
            "uses P instead of the innovation covariance S",
        ),
        (
            kalman_variant(gain=lambda P, C, R, S: P @ C.T @ torch.linalg.inv(C @ P @ C.T)),
            "misses the observation noise",
        ),
        (
            kalman_variant(gain=lambda P, C, R, S: torch.linalg.inv(S) @ C @ P),
            "gain is transposed",
        ),
        (
            kalman_variant(gain=lambda P, C, R, S: P @ C @ torch.linalg.inv(S)),
            "C is not transposed",
        ),
        (kalman_variant(gain=lambda P, C, R, S: P @ C.T @ S), "instead of its inverse"),
        (kalman_variant(no_b=True), "action is missing"),
        (kalman_variant(predict_from_prior=True), "starts from the predicted"),
        (kalman_variant(no_cov_update=True), "covariance is not updated"),
        (kalman_variant(innovation_sign=-1), "innovation enters with the wrong sign"),
        (kalman_variant(cov_sign=1), "covariance update has the wrong sign"),
    ],
)
def test_kalman_step_names_mistakes(wrong, match) -> None:
    with pytest.raises(Mistake, match=match):
        check_kalman_step(wrong)


def test_kalman_step_shape_error_explains_the_shapes() -> None:
    # K^T instead of K: fine when X = Z, a shape error when X != Z, reported with the shapes
    def transposed_everywhere(m, P, x, a, A, B, Q, C, R):
        S = C @ P @ C.T + R
        K = P @ C.T @ torch.linalg.inv(S)
        return (
            kalman_right(m, P, x, a, A, B, Q, C, R)
            if C.shape[0] == C.shape[1]
            else (m + K.T @ (x - C @ m), P, m, P)
        )

    with pytest.raises(Mistake, match=r"K = P C\^T S\^-1 is \[Z, X\]"):
        check_kalman_step(transposed_everywhere)


def test_kalman_step_needs_four_outputs() -> None:
    with pytest.raises(Mistake, match="tuple of 4"):
        check_kalman_step(lambda *args: kalman_right(*args)[:2])


# ----------------------------------------------------------------------------- reversal


def reverse_right(x, lengths):
    out = x.clone()
    for b, n in enumerate(lengths.tolist()):
        out[b, :n] = x[b, :n].flip(0)
    return out


def test_reverse_accepts_the_right_answers() -> None:
    check_reverse_sequences(reverse_right)


def test_reverse_names_the_library_and_checks_every_length() -> None:
    with pytest.raises(Mistake, match="reverse_sequences is the library's answer"):
        check_reverse_sequences(reverse_sequences)
    lengths_seen = []

    def recording(x, lengths):
        lengths_seen.append(sorted(lengths.tolist()))
        return reverse_right(x, lengths)

    check_reverse_sequences(recording)
    assert [1, 2, 3, 4, 5, 6, 7] in lengths_seen  # padding at every length


def shifted(x, lengths):
    # x[b, lengths[b] - t], clamped into the sequence: the off-by-one reversal
    t = torch.arange(x.shape[1])
    index = (lengths[:, None] - t).clamp(max=x.shape[1] - 1)
    index = torch.where(t < lengths[:, None], index, t)
    return x.gather(1, index[..., None].expand_as(x))


def test_reverse_names_mistakes() -> None:
    with pytest.raises(Mistake, match="padding of a short sequence now comes first"):
        check_reverse_sequences(lambda x, lengths: x.flip(1))
    with pytest.raises(Mistake, match="batch axis"):
        check_reverse_sequences(lambda x, lengths: x.flip(0))
    with pytest.raises(Mistake, match="unchanged"):
        check_reverse_sequences(lambda x, lengths: x)

    def zeroes_padding(x, lengths):
        out = reverse_right(x, lengths)
        return torch.where((torch.arange(x.shape[1]) < lengths[:, None])[..., None], out, 0.0)

    with pytest.raises(Mistake, match="changes the padding"):
        check_reverse_sequences(zeroes_padding)
    with pytest.raises(Mistake, match="off by one"):
        check_reverse_sequences(lambda x, lengths: shifted(x, lengths))


# ----------------------------------------------------------------------------- combiner


def combiner_right(z_prev, h_rnn, W, b, W_out, b_out, min_scale):
    h = 0.5 * (torch.tanh(z_prev @ W.T + b) + h_rnn)
    loc, s = (h @ W_out.T + b_out).chunk(2, dim=-1)
    return loc, softplus(s) + min_scale


def combiner_variant(
    half=0.5, tanh=True, half_tanh_only=False, swap=False, scale=None, relu=False
):
    def combiner(z_prev, h_rnn, W, b, W_out, b_out, min_scale):
        pre = z_prev @ W.T + b
        u = torch.relu(pre) if relu else torch.tanh(pre) if tanh else pre
        h = half * u + h_rnn if half_tanh_only else half * (u + h_rnn)
        loc, s = (h @ W_out.T + b_out).chunk(2, dim=-1)
        if swap:
            loc, s = s, loc
        return loc, (softplus(s) + min_scale) if scale is None else scale(s, min_scale)

    return combiner


def test_combiner_accepts_the_right_answer() -> None:
    check_combiner(combiner_right)


@pytest.mark.parametrize(
    "wrong, match",
    [
        (combiner_variant(half=1.0), "1/2 is missing"),
        (combiner_variant(tanh=False), "tanh is missing"),
        (combiner_variant(half_tanh_only=True), "1/2 multiplies the tanh only"),
        (combiner_variant(swap=True), "swapped"),
        (combiner_variant(relu=True), "tanh, not a relu"),
        (combiner_variant(scale=lambda s, m: s + m), "softplus is missing"),
        (combiner_variant(scale=lambda s, m: s.exp() + m), "exp"),
        (combiner_variant(scale=lambda s, m: softplus(s)), "min_scale floor is missing"),
        (combiner_variant(scale=lambda s, m: (softplus(s) + m) ** 2), "variance, not the scale"),
        (
            combiner_variant(scale=lambda s, m: torch.sqrt(softplus(s) + m**2)),
            "softplus was taken as the variance",
        ),
    ],
)
def test_combiner_names_mistakes(wrong, match) -> None:
    with pytest.raises(Mistake, match=match):
        check_combiner(wrong)


def test_combiner_shape_error_explains_the_weights() -> None:
    def untransposed(z_prev, h_rnn, W, b, W_out, b_out, min_scale):  # z_prev @ W, not W.T
        return combiner_right(z_prev, h_rnn, W.T, b, W_out, b_out, min_scale)

    with pytest.raises(
        Mistake,
        match=r"(?s)raised RuntimeError.*W is \[R, Z\] = \[5, 3\].*"
        r"z_prev @ W.T \+ b",
    ):
        check_combiner(untransposed)


def test_combiner_case_matches_the_module_formula() -> None:
    case = sequential.combiner_case(0)
    loc, scale = combiner_right(
        *(case[k] for k in ("z_prev", "h_rnn", "W", "b", "W_out", "b_out", "min_scale"))
    )
    torch.testing.assert_close(loc, case["loc"])
    torch.testing.assert_close(scale, case["scale"])


# ----------------------------------------------------------------- precision and shortcuts


def test_float32_answers_pass_and_a_dtype_mismatch_is_named() -> None:
    seen = []

    def kalman_recording(*args):
        seen.append(args[0].dtype)
        return kalman_right(*args)

    check_kalman_step(kalman_recording)
    assert torch.float32 in seen and torch.float64 in seen
    with pytest.raises(Mistake, match="returned torch.float32 for torch.float64 inputs"):
        check_kalman_step(lambda *args: tuple(t.float() for t in kalman_right(*args)))
    with pytest.raises(Mistake, match="returned torch.float32 for torch.float64 inputs"):
        check_combiner(lambda *args: tuple(t.float() for t in combiner_right(*args)))


def test_library_shortcuts_are_named() -> None:
    from vaelab.dmm import Combiner
    from vaelab.kalman import LinearGaussianSSM, kalman_filter

    def kalman_by_library(m, P, x, a, A, B, Q, C, R):
        system = LinearGaussianSSM(m0=m, P0=P, A=A, B=B, Q=Q, C=C, R=R)
        f = kalman_filter(
            system,
            torch.stack([x, 0 * x])[None],
            torch.stack([a, 0 * a])[None],
            torch.tensor([[True, False]]),
        )
        return f.mean[0, 0], f.cov[0, 0], f.pred_mean[0, 1], f.pred_cov[0, 1]

    with pytest.raises(Mistake, match="vaelab.kalman is the library's answer"):
        check_kalman_step(kalman_by_library)

    def combiner_by_library(z_prev, h_rnn, W, b, W_out, b_out, min_scale):
        module = Combiner(W.shape[1], W.shape[0], min_scale).to(W.dtype)
        module.load_state_dict(
            {
                "z_to_hidden.weight": W,
                "z_to_hidden.bias": b,
                "hidden_to_loc_scale.weight": W_out,
                "hidden_to_loc_scale.bias": b_out,
            },
            strict=False,
        )
        q = module(z_prev, h_rnn).base_dist
        return q.loc, q.scale

    with pytest.raises(Mistake, match="vaelab.dmm is the library's answer"):
        check_combiner(combiner_by_library)


# ------------------------------------------------------- the DMM's ELBO, a loop over time (builds)

from vaelab.data import Batch
from vaelab.exercises.sequential import check_dmm_elbo


def dmm_elbo_right(model, x, mask, noise, *, use_mask=True, kl_sign=1.0, prior_from_q0=False):
    h_rnn = model.rnn_states(x, mask.sum(1))
    z_q = model.z_q_0.expand(len(x), -1)
    z_p = z_q if prior_from_q0 else model.z_0.expand(len(x), -1)
    total = x.new_zeros(len(x))
    for t in range(x.shape[1]):
        q = model.combiner(z_q, h_rnn[:, t]).base_dist
        p = model.transition(z_p).base_dist
        z = q.loc + q.scale * noise[:, t]
        kl = (
            torch.log(p.scale / q.scale)
            + (q.scale**2 + (q.loc - p.loc) ** 2) / (2 * p.scale**2)
            - 0.5
        ).sum(-1)
        x_t = torch.where(mask[:, t, None], x[:, t], 0.0)
        step = model.emitter(z).log_prob(x_t) - kl_sign * kl
        total = total + (torch.where(mask[:, t], step, 0.0) if use_mask else step)
        z_q = z_p = z
    return total


def test_dmm_elbo_accepts_the_loop_over_time() -> None:
    check_dmm_elbo(dmm_elbo_right)


def test_dmm_elbo_names_mistakes() -> None:
    with pytest.raises(Mistake, match="off by up to"):  # the padding steps summed too
        check_dmm_elbo(lambda m, x, mask, e: dmm_elbo_right(m, x, mask, e, use_mask=False))
    with pytest.raises(Mistake, match="off by up to"):
        check_dmm_elbo(lambda m, x, mask, e: dmm_elbo_right(m, x, mask, e, kl_sign=-1.0))
    with pytest.raises(Mistake, match="DMM.elbo is the library's answer"):
        check_dmm_elbo(
            lambda m, x, mask, e: m.elbo(Batch(x, mask=mask), analytic_kl=True, noise=e).elbo
        )
    with pytest.raises(Mistake, match="DMM.guide is the library's loop"):
        check_dmm_elbo(
            lambda m, x, mask, e: m.guide(x, x.new_zeros(*x.shape[:2], 0), mask, e)[0].sum((1, 2))
        )

    def nan_times_mask(model, x, mask, noise):  # 0 * NaN
        return dmm_elbo_right(model, torch.where(mask[..., None], x, x), mask, noise) + (
            x.nan_to_num(0.0).sum((1, 2)) * 0 + (x * 0).sum((1, 2))
        )

    with pytest.raises(Mistake, match="0 \\* NaN = NaN"):
        check_dmm_elbo(nan_times_mask)


# ------------------------------------------------------------ the SSM's ELBO from its modules

from torch.distributions import kl_divergence

from vaelab.exercises.sequential import check_ssm_elbo


def ssm_elbo_right(model, batch, *, zero_padding=True, kl_sign=1.0):
    x, a = batch.x, batch.a
    if zero_padding:
        x = torch.where(batch.mask[..., None], x, 0.0)
        a = torch.where(batch.mask[..., None], a, 0.0)
    z, q_z = model.posterior(batch)
    log_px = model.emitter(z).log_prob(x)
    kl = kl_divergence(q_z.base_dist, model.prior(z, a).base_dist)
    return elbo_right(log_px, kl_sign * kl, batch.mask)


def test_ssm_elbo_accepts_the_modules_assembled() -> None:
    check_ssm_elbo(ssm_elbo_right)


def test_ssm_elbo_names_mistakes() -> None:
    with pytest.raises(Mistake, match="padding holds NaN here, which Normal.log_prob refuses"):
        check_ssm_elbo(lambda m, b: ssm_elbo_right(m, b, zero_padding=False))
    with pytest.raises(Mistake, match="off by up to"):
        check_ssm_elbo(lambda m, b: ssm_elbo_right(m, b, kl_sign=-1.0))
    with pytest.raises(Mistake, match="SSM.elbo is the library's answer"):
        check_ssm_elbo(lambda m, b: m.elbo(b, analytic_kl=True).elbo)
    with pytest.raises(Mistake, match="has no gradient"):
        check_ssm_elbo(lambda m, b: ssm_elbo_right(m, b).detach())
