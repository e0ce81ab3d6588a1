"""Checkers for notebooks 03 (sequential VAE) and 04 (Deep Markov Model): the masked sequential
ELBO, one Kalman update-and-predict step, per-sequence reversal of a padded batch, and the DMM's
combiner.

Each checker builds random inputs (random weights, so that no module sits at its
initialisation), runs the student's function and compares it with the library
(:class:`vaelab.ssm.SSM`, :func:`vaelab.kalman.kalman_filter`, :func:`vaelab.nn.reverse_sequences`,
:class:`vaelab.dmm.Combiner`); a disagreement that matches a typical mistake is named
(:class:`~vaelab.exercises.common.Mistake`).
"""

from __future__ import annotations

import sys
from collections.abc import Callable

import torch
from torch import Tensor
from torch.distributions import Independent, kl_divergence
from torch.nn.functional import softplus

from vaelab.data import Batch
from vaelab.dmm import Combiner
from vaelab.exercises.common import (
    Mistake,
    call_student,
    check_close,
    check_shape,
    watch_module,
)
from vaelab.kalman import LinearGaussianSSM, kalman_filter
from vaelab.nn import reverse_sequences
from vaelab.objectives import masked_sum
from vaelab.ssm import SSM, SSMConfig

SEEDS = (0, 1)


def _call(
    name: str,
    fn: Callable,
    *args,
    outputs: int = 1,
    shapes: str = "",
    forbidden: dict | None = None,
    forbidden_files: dict | None = None,
):
    """Run the student's ``fn`` without gradients (:func:`call_student`: a crash is a
    :class:`Mistake` naming the function and the student's line, followed by ``shapes``, what
    the inputs are); a wrong number of outputs is a Mistake too."""
    out = call_student(
        name,
        fn,
        *args,
        forbidden=forbidden,
        forbidden_files=forbidden_files,
        no_grad=True,
        context=shapes,
    )
    if outputs == 1:
        if isinstance(out, tuple):
            raise Mistake(f"{name} returned a tuple; return one tensor")
        return out
    if not isinstance(out, tuple) or len(out) != outputs:
        raise Mistake(f"{name} must return a tuple of {outputs} tensors")
    return out


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
        got = _call(
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
        check_shape(name, got, expected.shape)
        if not torch.isfinite(got).all():
            raise Mistake(
                f"{name} returned NaN: the padding holds NaN here (padding may "
                f"hold anything), and multiplying by the mask gives 0 * NaN = NaN; "
                f"select the observed steps with torch.where(mask, ..., 0.0)"
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
            got = _call(
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


# ----------------------------------------------------------------------------- notebook 04


def reversal_case(seed: int, batch: int = 4, steps: int = 6, features: int = 3) -> dict:
    """A padded batch ``x [B, T, F]`` (finite padding values) with ``lengths [B]`` (one full
    sequence, the others shorter) and the library's per-sequence reversal."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, steps, features, generator=g)
    lengths = torch.tensor(
        [steps] + [int(n) for n in torch.randint(1, steps, (batch - 1,), generator=g)]
    )
    if batch == steps:  # padding at every length: one sequence of each length 1..T, shuffled
        lengths = 1 + torch.randperm(steps, generator=g)
    return {"x": x, "lengths": lengths, "expected": reverse_sequences(x, lengths)}


def check_reverse_sequences(reverse: Callable) -> None:
    """Check ``reverse(x [B, T, F], lengths [B]) -> [B, T, F]``: every sequence reversed over
    its own length, padding left where it is, against :func:`vaelab.nn.reverse_sequences`."""
    name = "reverse"
    for seed, batch, steps in ((0, 4, 6), (1, 4, 6), (2, 7, 7)):  # the last: every length
        case = reversal_case(seed, batch, steps)
        x, lengths, expected = case["x"], case["lengths"], case["expected"]
        got = check_shape(
            name,
            _call(
                name,
                reverse,
                x.clone(),
                lengths.clone(),
                forbidden={
                    reverse_sequences: (
                        "vaelab.nn.reverse_sequences is the library's answer; build "
                        "the index and gather"
                    )
                },
            ),
            x.shape,
        )
        if got.dtype != x.dtype:
            raise Mistake(
                f"{name} returned {got.dtype} for {x.dtype} inputs: reversing moves "
                f"values, it does not change their dtype"
            )
        mask = torch.arange(x.shape[1]) < lengths[:, None]
        if torch.allclose(got, x.flip(1)):
            raise Mistake(
                f"{name} flipped the whole padded tensor (x.flip(1)): the padding "
                f"of a short sequence now comes first, so a forward RNN would read "
                f"it before the observed steps. Reverse each sequence over its own "
                f"length: out[b, t] = x[b, lengths[b] - 1 - t]"
            )
        if torch.allclose(got, x.flip(0)):
            raise Mistake(f"{name} reversed the batch axis (dim 0); reverse time (dim 1)")
        if torch.allclose(got, x):
            raise Mistake(f"{name} returned x unchanged")
        if torch.allclose(got[mask], expected[mask]) and not torch.allclose(
            got[~mask], expected[~mask]
        ):
            raise Mistake(
                f"{name} reverses the observed steps correctly but changes the "
                f"padding: leave out[b, t] = x[b, t] for t >= lengths[b], so that "
                f"reversing twice gives x back"
            )
        check_close(
            name,
            got,
            expected,
            hints={
                (
                    "the indices are off by one: out[b, t] = x[b, lengths[b] - 1 - t]"
                ): _shifted_reversal(x, lengths),
            },
        )


def _shifted_reversal(x: Tensor, lengths: Tensor) -> Tensor:
    """x[b, lengths[b] - t] (clamped into the sequence): the off-by-one reversal."""
    t = torch.arange(x.shape[1])
    index = (lengths[:, None] - t).clamp(max=x.shape[1] - 1)
    index = torch.where(t < lengths[:, None], index, t)
    return x.gather(1, index[..., None].expand_as(x))


def combiner_case(
    seed: int,
    batch: int = 6,
    z_dim: int = 3,
    rnn_dim: int = 5,
    min_scale: float = 1e-3,
    dtype: torch.dtype = torch.float64,
) -> dict:
    """A random :class:`vaelab.dmm.Combiner` and its inputs ``z_prev [B, Z]``,
    ``h_rnn [B, R]`` (in (-1, 1), like a tanh RNN's state), its weights ``W [R, Z]``,
    ``b [R]``, ``W_out [2Z, R]``, ``b_out [2Z]`` and the library's ``loc``, ``scale``, in
    float64 (a float32 case's values are rounded to float32 first)."""
    g = torch.Generator().manual_seed(seed)
    combiner = Combiner(z_dim, rnn_dim, min_scale).double()

    def randn(*shape: int) -> Tensor:
        return torch.randn(*shape, generator=g, dtype=torch.float64).to(dtype).double()

    with torch.no_grad():
        for p in combiner.parameters():
            p.copy_(randn(*p.shape))
        z_prev = randn(batch, z_dim)
        h_rnn = torch.tanh(2 * randn(batch, rnn_dim)).to(dtype).double()
        q = combiner(z_prev, h_rnn).base_dist
    return {
        "z_prev": z_prev,
        "h_rnn": h_rnn,
        "W": combiner.z_to_hidden.weight.detach(),
        "b": combiner.z_to_hidden.bias.detach(),
        "W_out": combiner.hidden_to_loc_scale.weight.detach(),
        "b_out": combiner.hidden_to_loc_scale.bias.detach(),
        "min_scale": min_scale,
        "loc": q.loc,
        "scale": q.scale,
    }


def check_combiner(combiner: Callable) -> None:
    """Check ``combiner(z_prev, h_rnn, W, b, W_out, b_out, min_scale) -> (loc, scale)``:
    ``h = 1/2 (tanh(W z_prev + b) + h_rnn)``, ``[loc | s] = W_out h + b_out``,
    ``scale = softplus(s) + min_scale``, against :class:`vaelab.dmm.Combiner`."""
    name = "combiner"
    for seed, batch, dtype in (
        (0, 6, torch.float64),
        (1, 6, torch.float64),
        (2, 5, torch.float32),
    ):
        case = combiner_case(seed, batch, dtype=dtype)
        z_prev, h_rnn, W, b, W_out, b_out, min_scale = (
            case[k] for k in ("z_prev", "h_rnn", "W", "b", "W_out", "b_out", "min_scale")
        )
        inputs = (t.to(dtype) for t in (z_prev, h_rnn, W, b, W_out, b_out))
        loc, scale = _call(
            name,
            combiner,
            *inputs,
            min_scale,
            outputs=2,
            forbidden_files={
                "dmm.py": "vaelab.dmm is the library's answer; "
                "write the combiner with torch "
                "operations"
            },
            shapes=f"\n(W is [R, Z] = {list(W.shape)} and W_out [2Z, R] = "
            f"{list(W_out.shape)}, as torch.nn.Linear stores them: for a "
            f"batch z_prev [B, Z], W z_prev + b is z_prev @ W.T + b)",
        )
        z_dim = case["loc"].shape[-1]

        def split(h: Tensor, W_out=W_out, b_out=b_out, z_dim=z_dim) -> tuple[Tensor, Tensor]:
            out = h @ W_out.T + b_out  # [B, 2Z] = [loc | pre-softplus scale]
            return out[:, :z_dim], out[:, z_dim:]

        tanh_z = torch.tanh(z_prev @ W.T + b)
        hidden = {
            "the 1/2 is missing: h = 1/2 (tanh(W z_prev + b) + h_rnn)": tanh_z + h_rnn,
            "the tanh is missing: h = 1/2 (tanh(W z_prev + b) + h_rnn)": 0.5
            * (z_prev @ W.T + b + h_rnn),
            "the 1/2 multiplies the tanh only: h = 1/2 (tanh(W z_prev + b) + h_rnn)": 0.5 * tanh_z
            + h_rnn,
            "the non-linearity is a tanh, not a relu: h = 1/2 (tanh(W z_prev + b) + h_rnn)": 0.5
            * (torch.relu(z_prev @ W.T + b) + h_rnn),
        }
        loc_hints = {k: split(h)[0] for k, h in hidden.items()}
        _, s = split(0.5 * (tanh_z + h_rnn))
        loc_hints["loc and the scale are swapped: the first Z outputs are the loc"] = s
        check_close(f"{name}'s loc", loc, case["loc"], dtype=dtype, hints=loc_hints)
        scale_hints = {k: softplus(split(h)[1]) + min_scale for k, h in hidden.items()}
        scale_hints.update(
            {
                "the softplus is missing: scale = softplus(s) + min_scale keeps it positive": s
                + min_scale,
                "the scale uses exp(s); vaelab uses softplus(s) + min_scale": s.exp() + min_scale,
                "the min_scale floor is missing: scale = softplus(s) + min_scale": softplus(s),
                "this is the variance, not the scale: Normal takes the standard deviation "
                "softplus(s) + min_scale, do not square it": (softplus(s) + min_scale) ** 2,
                "softplus was taken as the variance (Krishnan et al.'s choice, scale = "
                "sqrt(softplus(s) + min_scale^2)); here softplus gives the scale "
                "itself": torch.sqrt(softplus(s) + min_scale**2),
            }
        )
        check_close(f"{name}'s scale", scale, case["scale"], dtype=dtype, hints=scale_hints)


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
        got = check_shape(name, got, expected.shape)
        if not torch.isfinite(got.detach()).all():
            raise Mistake(
                f"{name} returned NaN: the padding holds NaN here; keep only the "
                f"observed steps with torch.where (0 * NaN = NaN)"
            )
        check_close(name, got.detach(), expected)  # float32, as the model
        if not got.requires_grad:
            raise Mistake(
                f"{name}'s result has no gradient: do not compute it under "
                f"torch.no_grad() or detach it; the notebook trains with it"
            )


# ------------------------------------------------------- the DMM's ELBO, a loop over time (builds)


def dmm_case(seed: int, padding: str) -> dict:
    """A small random :class:`vaelab.dmm.DMM` (random weights), a padded batch of binary
    sequences ``x [B, T, X]`` with one sequence of length 1 and one of length T, its ``mask``,
    standard-normal ``noise [B, T, Z]`` and the library's ``elbo [B]`` along that path
    (closed-form KL). The padding holds NaN (``"nan"``) or finite values (``"finite"``)."""
    from vaelab.dmm import DMM, DMMConfig

    g = torch.Generator().manual_seed(seed)
    model = DMM(DMMConfig(x_dim=6, z_dim=3, emission_dim=8, transition_dim=8, rnn_dim=8))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=g))
    batch, steps = 4, 7
    lengths = torch.tensor([steps, 1, 4, 6])
    mask = torch.arange(steps) < lengths[:, None]
    x = torch.bernoulli(torch.full((batch, steps, 6), 0.4), generator=g)
    x[~mask] = float("nan") if padding == "nan" else 1.0
    noise = torch.randn(batch, steps, 3, generator=g)
    with torch.no_grad():
        expected = model.elbo(Batch(x, mask=mask), analytic_kl=True, noise=noise).elbo
    return {"model": model, "x": x, "mask": mask, "noise": noise, "elbo": expected}


def check_dmm_elbo(dmm_elbo: Callable) -> None:
    """Check ``dmm_elbo(model, x [B, T, X], mask [B, T], noise [B, T, Z]) -> [B]``: the guide's
    loop over time (combiner of the previous sample and the backward RNN's state, one
    reparameterised sample per step from ``noise``), the emitter's log-likelihood and the
    closed-form KL against the gated transition of the previous sample, summed over the
    observed steps; against :meth:`vaelab.dmm.DMM.elbo` on random models and padded batches
    (NaN and finite padding, lengths 1 to T)."""
    from vaelab.dmm import DMM

    name = "dmm_elbo"
    library = {
        DMM.elbo: "DMM.elbo is the library's answer; write the loop over time",
        DMM.forward: "DMM.forward is DMM.elbo, the library's answer",
        DMM.guide: "DMM.guide is the library's loop over time; write yours with model.combiner",
    }
    for seed, padding in ((0, "finite"), (1, "nan")):
        case = dmm_case(seed, padding)
        x, mask, noise, expected = (case[k] for k in ("x", "mask", "noise", "elbo"))
        got = _call(
            name,
            dmm_elbo,
            case["model"],
            x.clone(),
            mask.clone(),
            noise.clone(),
            forbidden=library,
            shapes=f"\n(x is [B, T, X] = {list(x.shape)}, mask [B, T], noise [B, T, Z] "
            f"= {list(noise.shape)}: step t uses x[:, t], mask[:, t] and "
            f"noise[:, t]; the padding may hold NaN, which a Bernoulli refuses: "
            f"score torch.where(mask[:, t, None], x[:, t], 0.0))",
        )
        check_shape(name, got, expected.shape)
        if not torch.isfinite(got).all():
            raise Mistake(
                f"{name} returned NaN: the padding holds NaN here, and multiplying "
                f"a step's terms by the mask gives 0 * NaN = NaN; keep the observed "
                f"steps with torch.where(mask[:, t], ..., 0.0)"
            )
        check_close(name, got, expected)  # float32, as the model


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
