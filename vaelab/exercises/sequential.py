"""Checkers for notebook 03 (sequential VAE): the masked sequential ELBO, one Kalman
update-and-predict step, and the SSM's ELBO assembled from its modules; notebook 04's (the
Deep Markov Model's) live in :mod:`vaelab.exercises.dmm` and are importable from here too.

Each checker builds random inputs (random weights, so that no module sits at its
initialisation), runs the student's function and compares it with the library
(:class:`vaelab.ssm.SSM`, :func:`vaelab.kalman.kalman_filter`); a disagreement that matches a
typical mistake is named (:class:`~vaelab.exercises.common.Mistake`).
"""

from __future__ import annotations

import sys
from collections.abc import Callable

import torch
from torch import Tensor
from torch.distributions import Independent, kl_divergence

from vaelab.data import Batch
from vaelab.exercises.common import (
    Mistake,
    call_checked,
    call_student,
    check_close,
    check_padding_kept_out,
    watch_module,
)
from vaelab.exercises.dmm import (  # notebook 04's, importable from here as before
    check_combiner,
    check_dmm_elbo,
    check_reverse_sequences,
    combiner_case,
    dmm_case,
    reversal_case,
)
from vaelab.kalman import LinearGaussianSSM, kalman_filter
from vaelab.objectives import masked_sum
from vaelab.ssm import SSM, SSMConfig

SEEDS = (0, 1)


# ----------------------------------------------------------------------------- notebook 03


def elbo_case(seed: int, batch: int = 5, steps: int = 7, padding: str = "nan") -> dict:
    """A random nonlinear :class:`~vaelab.ssm.SSM` and a padded batch (``B != T``): the
    per-step ``log_px [B, T]``, the per-step, per-dimension ``kl [B, T, Z]`` along one guide
    path, the ``mask [B, T]`` and the library's ``elbo [B]`` for the same path. Padding may
    hold anything: NaN (``padding="nan"``) or large finite values (``"garbage"``)."""
    g = torch.Generator().manual_seed(seed)
    model = SSM(SSMConfig(x_dim=2, a_dim=1, z_dim=3, hidden_dim=8, guide="smoothing", rnn_dim=8))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=g))
    lengths = torch.tensor(
        [steps] + [int(n) for n in torch.randint(1, steps, (batch - 1,), generator=g)]
    )
    mask = torch.arange(steps) < lengths[:, None]
    data = Batch(
        torch.randn(batch, steps, 2, generator=g),
        torch.randn(batch, steps, 1, generator=g),
        mask=mask,
    )
    torch.manual_seed(seed)
    with torch.no_grad():
        expected = model.elbo(data).elbo
    torch.manual_seed(seed)
    with torch.no_grad():  # the same path, unpacked into its per-step terms
        x, a, _ = model.check(data)
        z, q_z = model.posterior(data)
        assert isinstance(q_z, Independent)  # the SSM's guide: a diagonal Gaussian per step
        log_px = model.emitter(z).log_prob(x)  # [B, T]
        kl = kl_divergence(q_z.base_dist, model.prior(z, a).base_dist)  # [B, T, Z]
    if padding == "nan":
        fill_px = fill_kl = torch.tensor(float("nan"))
    else:
        fill_px = -10 * torch.rand(log_px.shape, generator=g)
        fill_kl = 10 * torch.rand(kl.shape, generator=g)
    log_px = torch.where(mask, log_px, fill_px)
    kl = torch.where(mask[..., None], kl, fill_kl)
    return {"log_px": log_px, "kl": kl, "mask": mask, "elbo": expected}


def check_sequential_elbo(sequential_elbo: Callable) -> None:
    """Check ``sequential_elbo(log_px [B, T], kl [B, T, Z], mask [B, T]) -> [B]``: the sum over
    observed steps of log p(x_t | z_t) - KL(q(z_t | .) || p(z_t | z_{t-1}, a_{t-1})), the KL
    summed over its Z dimensions, against :meth:`vaelab.ssm.SSM.elbo` on the same path."""
    name = "sequential_elbo"
    for seed, padding in zip(SEEDS, ("garbage", "nan"), strict=False):
        case = elbo_case(seed, padding=padding)
        log_px, kl, mask, expected = (case[k] for k in ("log_px", "kl", "mask", "elbo"))
        got = call_checked(
            name,
            sequential_elbo,
            log_px.clone(),
            kl.clone(),
            mask.clone(),
            forbidden={
                masked_sum: "vaelab.objectives.masked_sum is the library's "
                "answer; select with torch.where and sum"
            },
            forbidden_files={"ssm.py": "vaelab.ssm is the library's answer"},
            shapes=f"\n(the inputs are log_px {list(log_px.shape)} = [B, T], kl "
            f"{list(kl.shape)} = [B, T, Z] and mask {list(mask.shape)} = [B, T]: "
            f"sum kl over its last axis, the Z latent dimensions, to get the "
            f"per-step KL [B, T] that matches log_px; then sum over time, dim 1)",
        )
        if isinstance(got, Tensor) and tuple(got.shape) == (log_px.shape[1],):
            raise Mistake(
                f"{name} returned one value per time step ({list(got.shape)}): you "
                f"summed over the batch axis (dim 0); sum over time (dim 1), one "
                f"ELBO per sequence"
            )
        if isinstance(got, Tensor) and got.dim() == 2 and got.shape[0] == log_px.shape[0]:
            raise Mistake(
                f"{name} returned shape {list(got.shape)}: sum the KL over its "
                f"latent dimensions (dim -1) and the terms over time (dim 1)"
            )
        got = check_padding_kept_out(
            name,
            got,
            expected.shape,
            " (padding may hold anything), and multiplying by the mask gives 0 * NaN = NaN; "
            "select the observed steps with torch.where(mask, ..., 0.0)",
        )
        clean_px = torch.where(mask, log_px, 0.0)
        clean_kl = torch.where(mask[..., None], kl, 0.0).sum(-1)
        hints = {
            "the mask is ignored: the padding steps are summed too; keep only the observed "
            "steps (torch.where(mask, ..., 0.0))": (log_px - kl.sum(-1)).sum(1),
            "the mask is inverted: mask is True on the observed steps, so keep the terms where "
            "it is True (torch.where(mask, terms, 0.0))": torch.where(
                mask, 0.0, log_px - kl.sum(-1)
            ).sum(1),
            "the KL is summed over time only for its first latent dimension: sum kl over its "
            "last axis (the Z dimensions) first": (
                clean_px - torch.where(mask, kl[..., 0], 0.0)
            ).sum(1),
            "the KL enters with the wrong sign: ELBO = log-likelihood - KL": (
                clean_px + clean_kl
            ).sum(1),
            "the KL term is missing": clean_px.sum(1),
            "the log-likelihood term is missing": -clean_kl.sum(1),
            "the terms are averaged over time instead of summed": (clean_px - clean_kl).sum(1)
            / mask.sum(1),
            "the KL is averaged over the latent dimensions instead of summed": (
                clean_px - clean_kl / kl.shape[-1]
            ).sum(1),
        }
        check_close(name, got, expected, hints=hints)  # float32, as the model


def kalman_case(
    seed: int, z_dim: int, x_dim: int, a_dim: int = 2, dtype: torch.dtype = torch.float64
) -> dict:
    """A random linear-Gaussian system (float64, dense SPD ``Q``, ``R``, ``P``) and one step's
    ``m [Z]``, ``P [Z, Z]``, ``x [X]``, ``a [A]``, with the library's answer from
    :func:`vaelab.kalman.kalman_filter` run over two steps, the second one padding (so it only
    predicts): ``m_filt, P_filt`` of p(z_t | x_{1:t}) and ``m_next, P_next`` of
    p(z_{t+1} | x_{1:t}). With ``dtype=torch.float32`` the inputs are rounded to float32
    first (the answer is still computed in float64 from those values)."""
    g = torch.Generator().manual_seed(seed)

    def randn(*shape: int) -> Tensor:
        return torch.randn(*shape, generator=g, dtype=torch.float64).to(dtype).double()

    def spd(n: int) -> Tensor:
        root = randn(n, n)
        return (root @ root.T / n + 0.5 * torch.eye(n, dtype=torch.float64)).to(dtype).double()

    m, P = randn(z_dim), spd(z_dim)
    A, B, C = 0.5 * randn(z_dim, z_dim), randn(z_dim, a_dim), randn(x_dim, z_dim)
    Q, R = spd(z_dim), spd(x_dim)
    x, a = randn(x_dim), randn(a_dim)
    system = LinearGaussianSSM(m0=m, P0=P, A=A, B=B, Q=Q, C=C, R=R)
    xs = torch.stack([x, torch.zeros_like(x)])[None]  # [1, 2, X]; step 2 is padding
    acts = torch.stack([a, torch.zeros_like(a)])[None]
    f = kalman_filter(system, xs, acts, torch.tensor([[True, False]]))
    return {
        "m": m,
        "P": P,
        "x": x,
        "a": a,
        "A": A,
        "B": B,
        "Q": Q,
        "C": C,
        "R": R,
        "m_filt": f.mean[0, 0],
        "P_filt": f.cov[0, 0],
        "m_next": f.pred_mean[0, 1],
        "P_next": f.pred_cov[0, 1],
    }


def _update(m: Tensor, P: Tensor, x: Tensor, C: Tensor, K: Tensor) -> tuple[Tensor, Tensor]:
    return m + K @ (x - C @ m), P - K @ C @ P


def check_kalman_step(kalman_step: Callable) -> None:
    """Check ``kalman_step(m, P, x, a, A, B, Q, C, R) -> (m_filt, P_filt, m_next, P_next)``:
    the update of p(z_t | x_{<t}) = N(m, P) by x_t, then the prediction of z_{t+1} driven by
    a_t, against :func:`vaelab.kalman.kalman_filter` (float64; a square case X = Z, where a
    transposed matrix still has the right shape, then X != Z)."""
    name = "kalman_step"
    for seed, (z_dim, x_dim), dtype in (
        (0, (3, 3), torch.float64),
        (1, (4, 2), torch.float64),
        (2, (3, 2), torch.float32),
    ):
        case = kalman_case(seed, z_dim, x_dim, dtype=dtype)
        m, P, x, a, A, B, Q, C, R = (
            case[k] for k in ("m", "P", "x", "a", "A", "B", "Q", "C", "R")
        )
        try:
            got = call_checked(
                name,
                kalman_step,
                *(t.to(dtype) for t in (m, P, x, a, A, B, Q, C, R)),
                outputs=4,
                forbidden_files={
                    "kalman.py": "vaelab.kalman is the library's answer; write the "
                    "update and the prediction with torch operations"
                },
            )
        except Mistake as e:
            if x_dim != z_dim and "raised" in str(e):
                raise Mistake(
                    f"{e}\n(with X = {x_dim} observations and Z = {z_dim} states: "
                    f"check the shapes, S = C P C^T + R is [X, X] and the gain "
                    f"K = P C^T S^-1 is [Z, X])"
                ) from e
            raise
        m_f, P_f, m_n, P_n = got
        S = C @ P @ C.T + R
        K = P @ C.T @ torch.linalg.inv(S)
        update_hints = {
            "the gain uses P instead of the innovation covariance S = C P C^T + R: "
            "K = P C^T S^-1": _update(m, P, x, C, P @ C.T @ torch.linalg.inv(P))
            if x_dim == z_dim
            else None,
            "the innovation covariance misses the observation noise: S = C P C^T + R": _update(
                m, P, x, C, P @ C.T @ torch.linalg.inv(C @ P @ C.T)
            ),
            "the gain is transposed: K = P C^T S^-1, not S^-1 C P": _update(
                m, P, x, C, torch.linalg.inv(S) @ C @ P
            )
            if x_dim == z_dim
            else None,
            "C is not transposed in the gain: K = P C^T S^-1": _update(
                m, P, x, C, P @ C @ torch.linalg.inv(S)
            )
            if x_dim == z_dim
            else None,
            "the gain multiplies S instead of its inverse: K = P C^T S^-1": _update(
                m, P, x, C, P @ C.T @ S
            ),
            "the covariance is not updated: P_filt = (I - K C) P": (m + K @ (x - C @ m), P),
            "the innovation enters with the wrong sign: m_filt = m + K (x - C m)": (
                m - K @ (x - C @ m),
                P - K @ C @ P,
            ),
            "the covariance update has the wrong sign: P_filt = P - K C P = (I - K C) P, an "
            "observation never adds uncertainty": (m + K @ (x - C @ m), P + K @ C @ P),
        }
        hints = {k: v for k, v in update_hints.items() if v is not None}
        check_close(
            f"{name}'s m_filt",
            m_f,
            case["m_filt"],
            dtype=dtype,
            hints={k: v[0] for k, v in hints.items()},
        )
        check_close(
            f"{name}'s P_filt",
            P_f,
            case["P_filt"],
            dtype=dtype,
            hints={k: v[1] for k, v in hints.items()},
        )
        m_ok, P_ok = case["m_filt"], case["P_filt"]
        check_close(
            f"{name}'s m_next",
            m_n,
            case["m_next"],
            dtype=dtype,
            hints={
                "the action is missing: m_next = A m_filt + B a": A @ m_ok,
                "the prediction starts from the predicted m, not the filtered m_filt": A @ m
                + B @ a,
            },
        )
        check_close(
            f"{name}'s P_next",
            P_n,
            case["P_next"],
            dtype=dtype,
            hints={
                "the process noise Q is missing: P_next = A P_filt A^T + Q": A @ P_ok @ A.T,
                "A is on the wrong sides: P_next = A P_filt A^T + Q, not A^T P_filt A + Q": A.T
                @ P_ok
                @ A
                + Q,
                "the prediction starts from the predicted P, not the filtered P_filt": A @ P @ A.T
                + Q,
                "P_next = A P_filt A^T + Q, not A P_filt + Q": A @ P_ok + Q,
            },
        )


# ------------------------------------------------------------ the SSM's ELBO from its modules


def check_ssm_elbo(ssm_elbo: Callable) -> None:
    """Check ``ssm_elbo(model, batch) -> [B]``: the sequential ELBO of an
    :class:`vaelab.ssm.SSM` assembled from its modules (``model.posterior`` for the guide's
    path, ``model.prior``, ``model.emitter``, the closed-form KL per step), summed over the
    observed steps, against :meth:`vaelab.ssm.SSM.elbo` with the same random path, on random
    models (filtering and smoothing guides) and batches whose padding holds NaN; the result
    must carry gradients, since the notebook trains with it."""
    name = "ssm_elbo"
    library: dict[object, str] = {
        SSM.elbo: "SSM.elbo is the library's answer; assemble the terms yourself",
        SSM.forward: "SSM.forward is SSM.elbo, the library's answer",
    }
    for seed, guide in ((0, "smoothing"), (1, "filtering")):
        g = torch.Generator().manual_seed(seed)
        model = SSM(SSMConfig(x_dim=2, a_dim=1, z_dim=3, hidden_dim=8, guide=guide, rnn_dim=8))
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.3 * torch.randn(p.shape, generator=g))
        lengths = torch.tensor([6, 1, 4, 5])
        mask = torch.arange(6) < lengths[:, None]
        x, a = torch.randn(4, 6, 2, generator=g), torch.randn(4, 6, 1, generator=g)
        x[~mask], a[~mask] = float("nan"), float("nan")
        batch = Batch(x, a, mask=mask)
        torch.manual_seed(100 + seed)
        with torch.no_grad():
            expected = model.elbo(batch, analytic_kl=True).elbo
        torch.manual_seed(100 + seed)
        got = call_student(
            name,
            ssm_elbo,
            model,
            batch,
            forbidden=library,
            context=(
                "\n(batch.x [B, T, X], batch.a [B, T, A] and batch.mask [B, T]; the padding holds "
                "NaN here, which Normal.log_prob refuses: zero it with torch.where(batch.mask"
                "[..., None], batch.x, 0.0) before scoring, and the same for batch.a)"
            ),
        )
        got = check_padding_kept_out(
            name,
            got,
            expected.shape,
            "; keep only the observed steps with torch.where (0 * NaN = NaN)",
        )
        check_close(name, got.detach(), expected)  # float32, as the model
        if not got.requires_grad:
            raise Mistake(
                f"{name}'s result has no gradient: do not compute it under "
                f"torch.no_grad() or detach it; the notebook trains with it"
            )


__all__ = [
    "check_combiner",
    "check_dmm_elbo",
    "check_kalman_step",
    "check_reverse_sequences",
    "check_sequential_elbo",
    "check_ssm_elbo",
    "combiner_case",
    "dmm_case",
    "elbo_case",
    "kalman_case",
    "reversal_case",
]

watch_module(sys.modules[__name__])
