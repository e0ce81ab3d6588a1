"""Exact inference for a linear-Gaussian state-space model: a batched, differentiable Kalman
filter (exact log p(x_{1:T} | a)) and the Rauch-Tung-Striebel smoother (exact p(z_t | x_{1:T})).

Used as ground truth: a sequential VAE with a linear-Gaussian generative model has
ELBO <= log p(x | a), and log p(x | a) - E_q[ELBO] = KL(q(z | x) || p(z | x)).

Kalman 1960; Rauch, Tung & Striebel 1965; notation of Saerkkae, *Bayesian Filtering and
Smoothing* (2013), ch. 4 and 8. Written by hand (torch has no Kalman filter); every step uses
Cholesky factors and triangular solves, never an explicit inverse.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING

import torch
from torch import Tensor

if TYPE_CHECKING:
    from vaelab.data import Data


@dataclass
class LinearGaussianSSM:
    """A linear-Gaussian state-space model with actions.

    z_1 ~ N(m0, P0),  z_{t+1} = A z_t + B a_t + b + w_t,  w_t ~ N(0, Q),
    x_t = C z_t + d + v_t,  v_t ~ N(0, R).

    Parameters
    ----------
    m0 : Tensor ``[Z]``;  P0 : Tensor ``[Z, Z]``
    A : Tensor ``[Z, Z]``;  B : Tensor ``[Z, A]`` (``A`` may be 0);  Q : Tensor ``[Z, Z]``
    C : Tensor ``[X, Z]``;  R : Tensor ``[X, X]``
    b : Tensor ``[Z]``, optional;  d : Tensor ``[X]``, optional (zeros when omitted)
    """

    m0: Tensor
    P0: Tensor
    A: Tensor
    B: Tensor
    Q: Tensor
    C: Tensor
    R: Tensor
    b: Tensor | None = None
    d: Tensor | None = None

    def __post_init__(self) -> None:
        if self.b is None:
            self.b = self.m0.new_zeros(self.z_dim)
        if self.d is None:
            self.d = self.m0.new_zeros(self.C.shape[0])
        z, x, a = self.z_dim, self.C.shape[0], self.B.shape[-1]
        expected = {
            "m0": (z,),
            "P0": (z, z),
            "A": (z, z),
            "B": (z, a),
            "Q": (z, z),
            "C": (x, z),
            "R": (x, x),
            "b": (z,),
            "d": (x,),
        }
        for name, shape in expected.items():
            got = tuple(getattr(self, name).shape)
            if got != shape:
                raise ValueError(
                    f"LinearGaussianSSM.{name} must be {list(shape)} for z_dim={z}, "
                    f"x_dim={x}, a_dim={a}; got {list(got)}"
                )

    @property
    def z_dim(self) -> int:
        return self.m0.shape[0]

    def offsets(self) -> tuple[Tensor, Tensor]:
        """Returns the offsets ``(b [Z], d [X])`` (zeros when they were omitted)."""
        if self.b is None or self.d is None:
            raise ValueError(
                "LinearGaussianSSM.b or .d was set to None after construction; "
                "build a new LinearGaussianSSM (an omitted offset becomes zeros)"
            )
        return self.b, self.d

    @property
    def x_dim(self) -> int:
        return self.C.shape[0]

    @property
    def a_dim(self) -> int:
        return self.B.shape[1]

    def to(self, *args, **kwargs) -> LinearGaussianSSM:
        """A copy with every matrix moved/cast by ``Tensor.to(*args, **kwargs)``."""
        return LinearGaussianSSM(
            **{f.name: getattr(self, f.name).to(*args, **kwargs) for f in fields(self)}
        )

    def detach(self) -> LinearGaussianSSM:
        return LinearGaussianSSM(**{f.name: getattr(self, f.name).detach() for f in fields(self)})

    @torch.no_grad()
    def sample(self, a: Tensor, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """Returns ``(z [N, T, Z], x [N, T, X])`` drawn from the model for actions ``a [N, T, A]``
        (``a[:, t]`` drives z_{t+1}; the last action is unused)."""
        n, steps = a.shape[:2]
        chol = [torch.linalg.cholesky(m) for m in (self.P0, self.Q, self.R)]

        def noise(k: int, scale_tril: Tensor) -> Tensor:
            eps = torch.randn(n, k, generator=generator, dtype=a.dtype).to(a.device)
            return eps @ scale_tril.T

        b, d = self.offsets()
        zs = [self.m0 + noise(self.z_dim, chol[0])]
        for t in range(steps - 1):
            zs.append(zs[-1] @ self.A.T + a[:, t] @ self.B.T + b + noise(self.z_dim, chol[1]))
        z = torch.stack(zs, dim=1)  # [N, T, Z]
        x = z @ self.C.T + d
        x = x + (
            torch.randn(n * steps, self.x_dim, generator=generator, dtype=a.dtype).to(a.device)
            @ chol[2].T
        ).view(n, steps, -1)
        return z, x


@dataclass
class FilterResult:
    """Kalman filter output. ``log_likelihood [B]`` is log p(x_{1:T} | a) over observed steps;
    ``step_log_likelihood [B, T]`` the terms log p(x_t | x_{<t}) (0 where masked);
    ``pred_mean/pred_cov`` the predictive p(z_t | x_{<t}) ``[B, T, Z]`` / ``[B, T, Z, Z]``;
    ``mean/cov`` the filtering p(z_t | x_{<=t})."""

    log_likelihood: Tensor
    step_log_likelihood: Tensor
    pred_mean: Tensor
    pred_cov: Tensor
    mean: Tensor
    cov: Tensor


def _inputs(params: LinearGaussianSSM, x: Tensor, a: Tensor | None, mask: Tensor | None):
    if x.dim() != 3 or x.shape[-1] != params.x_dim:
        raise ValueError(f"x must be [B, T, {params.x_dim}], got {list(x.shape)}")
    batch, steps = x.shape[:2]
    if a is None:
        if params.a_dim > 0:
            raise ValueError(f"the system takes actions: pass a [B, T, {params.a_dim}]")
        a = x.new_zeros(batch, steps, 0)
    if a.shape != (batch, steps, params.a_dim):
        raise ValueError(f"a must be [{batch}, {steps}, {params.a_dim}], got {list(a.shape)}")
    if mask is None:
        mask = torch.ones(batch, steps, dtype=torch.bool, device=x.device)
    if mask.shape != (batch, steps):
        raise ValueError(f"mask must be [{batch}, {steps}], got {list(mask.shape)}")
    # padding may hold anything (NaN too): zero it so it cannot leak through products
    x = torch.where(mask[..., None], x, torch.zeros_like(x))
    a = torch.where(mask[..., None], a, torch.zeros_like(a))
    return x, a, mask


def _symmetrize(P: Tensor) -> Tensor:
    return 0.5 * (P + P.transpose(-1, -2))


def kalman_filter(
    params: LinearGaussianSSM, x: Tensor, a: Tensor | None = None, mask: Tensor | None = None
) -> FilterResult:
    """Returns the Kalman filter of ``x [B, T, X]`` given actions ``a [B, T, A]``.

    Steps where ``mask [B, T]`` is False are padding: their observation and action are ignored
    (no update; the state is only predicted). Differentiable in every matrix of ``params``.
    """
    x, a, mask = _inputs(params, x, a, mask)
    batch, steps, x_dim = x.shape
    A, B, C, Q, R = params.A, params.B, params.C, params.Q, params.R
    b, d = params.offsets()
    eye = torch.eye(params.z_dim, dtype=x.dtype, device=x.device)
    m = params.m0.expand(batch, -1)  # [B, Z]
    P = params.P0.expand(batch, -1, -1)  # [B, Z, Z]
    out: dict[str, list[Tensor]] = {k: [] for k in ("ll", "pm", "pP", "m", "P")}
    for t in range(steps):
        out["pm"].append(m)
        out["pP"].append(P)
        # innovation y = x_t - E[x_t | x_{<t}], covariance S = C P C^T + R
        y = x[:, t] - (m @ C.T + d)  # [B, X]
        CP = C @ P  # [B, X, Z]
        S = _symmetrize(CP @ C.T + R)
        L = torch.linalg.cholesky(S)  # [B, X, X]
        alpha = torch.linalg.solve_triangular(L, y[..., None], upper=False)[..., 0]
        ll = (
            -0.5 * alpha.pow(2).sum(dim=-1)
            - torch.diagonal(L, dim1=-2, dim2=-1).log().sum(dim=-1)
            - 0.5 * x_dim * math.log(2 * math.pi)
        )  # log N(y; 0, S), [B]
        K = torch.cholesky_solve(CP, L).transpose(-1, -2)  # gain P C^T S^-1, [B, Z, X]
        m_f = m + (K @ y[..., None])[..., 0]
        # Joseph form (I - KC) P (I - KC)^T + K R K^T: stays symmetric positive definite
        IKC = eye - K @ C
        P_f = _symmetrize(IKC @ P @ IKC.transpose(-1, -2) + K @ R @ K.transpose(-1, -2))
        obs = mask[:, t]
        m = torch.where(obs[:, None], m_f, m)
        P = torch.where(obs[:, None, None], P_f, P)
        out["ll"].append(torch.where(obs, ll, torch.zeros_like(ll)))
        out["m"].append(m)
        out["P"].append(P)
        # predict z_{t+1} | x_{<=t}, driven by a_t
        m = m @ A.T + a[:, t] @ B.T + b
        P = _symmetrize(A @ P @ A.T + Q)
    step_ll = torch.stack(out["ll"], dim=1)  # [B, T]
    return FilterResult(
        step_ll.sum(dim=1),
        step_ll,
        torch.stack(out["pm"], 1),
        torch.stack(out["pP"], 1),
        torch.stack(out["m"], 1),
        torch.stack(out["P"], 1),
    )


def kalman_log_likelihood(
    params: LinearGaussianSSM, x: Tensor, a: Tensor | None = None, mask: Tensor | None = None
) -> Tensor:
    """Returns the exact log p(x_{1:T} | a_{1:T}) per sequence, ``[B]``, summed over the
    observed steps of ``mask``."""
    return kalman_filter(params, x, a, mask).log_likelihood


@dataclass
class SmootherResult:
    """RTS smoother output: ``mean [B, T, Z]`` and ``cov [B, T, Z, Z]`` of p(z_t | x_{1:T}),
    and ``cross_cov [B, T-1, Z, Z]`` = Cov(z_{t+1}, z_t | x_{1:T})."""

    mean: Tensor
    cov: Tensor
    cross_cov: Tensor
    log_likelihood: Tensor


def rts_smoother(
    params: LinearGaussianSSM, x: Tensor, a: Tensor | None = None, mask: Tensor | None = None
) -> SmootherResult:
    """Returns the exact posterior marginals p(z_t | x_{1:T}, a) (Rauch-Tung-Striebel).

    J_t = P_t|t A^T P_{t+1|t}^{-1};  m_t|T = m_t|t + J_t (m_{t+1|T} - m_{t+1|t});
    P_t|T = P_t|t + J_t (P_{t+1|T} - P_{t+1|t}) J_t^T;  Cov(z_{t+1}, z_t) = P_{t+1|T} J_t^T.
    Padding steps (``mask`` False) have no observations, so their smoothed values are the
    filter's predictions and do not disturb the observed steps.
    """
    f = kalman_filter(params, x, a, mask)
    steps = x.shape[1]
    m_s, P_s = f.mean[:, -1], f.cov[:, -1]
    means, covs, cross = [m_s], [P_s], []
    for t in range(steps - 2, -1, -1):
        m_f, P_f = f.mean[:, t], f.cov[:, t]
        m_p, P_p = f.pred_mean[:, t + 1], f.pred_cov[:, t + 1]
        # J^T = P_p^{-1} A P_f (P's symmetric), via a Cholesky solve
        J = torch.cholesky_solve(params.A @ P_f, torch.linalg.cholesky(P_p)).transpose(-1, -2)
        cross.append(P_s @ J.transpose(-1, -2))
        m_s = m_f + (J @ (m_s - m_p)[..., None])[..., 0]
        P_s = _symmetrize(P_f + J @ (P_s - P_p) @ J.transpose(-1, -2))
        means.append(m_s)
        covs.append(P_s)
    z = params.z_dim
    cross_cov = torch.stack(cross[::-1], dim=1) if cross else x.new_zeros(x.shape[0], 0, z, z)
    return SmootherResult(
        torch.stack(means[::-1], 1), torch.stack(covs[::-1], 1), cross_cov, f.log_likelihood
    )


@torch.no_grad()
def exact_nll(params: LinearGaussianSSM, data: Data, batch_size: int = 1000) -> float:
    """Returns the exact -log p(x | a) per observed step on ``data`` (the same normalisation
    as ``vaelab.train.evaluate_elbo``'s ``nelbo``), computed in float64."""
    params = params.to(torch.float64)
    total, steps = 0.0, 0.0
    for batch in data.batches(batch_size, shuffle=False):
        a = None if batch.a is None else batch.a.double()
        total += float(kalman_log_likelihood(params, batch.x.double(), a, batch.mask).sum())
        if batch.mask is None:  # only sequences [N, T, X] reach here
            raise ValueError(
                f"exact_nll needs sequences [N, T, X], got {data.name} of shape "
                f"{list(data.x.shape)}"
            )
        steps += float(batch.mask.sum())
    return -total / steps


__all__ = [
    "FilterResult",
    "LinearGaussianSSM",
    "SmootherResult",
    "exact_nll",
    "kalman_filter",
    "kalman_log_likelihood",
    "rts_smoother",
]
