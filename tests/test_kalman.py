"""Kalman filter and RTS smoother against brute-force Gaussian computations over the whole
stacked sequence (small T, float64)."""

from __future__ import annotations

import pytest
import torch
from torch.distributions import MultivariateNormal

from vaelab.kalman import (
    LinearGaussianSSM,
    kalman_filter,
    kalman_log_likelihood,
    rts_smoother,
)

D = torch.float64


def random_spd(n: int, g: torch.Generator, scale: float = 0.5) -> torch.Tensor:
    m = torch.randn(n, n, generator=g, dtype=D)
    return scale * (m @ m.T / n + 0.5 * torch.eye(n, dtype=D))


def random_system(z: int = 3, x: int = 2, a: int = 2, seed: int = 0) -> LinearGaussianSSM:
    """A random stable system with full (non-diagonal) covariances and non-zero offsets."""
    g = torch.Generator().manual_seed(seed)
    A = torch.randn(z, z, generator=g, dtype=D)
    A = 0.9 * A / torch.linalg.matrix_norm(A, ord=2)
    return LinearGaussianSSM(
        m0=torch.randn(z, generator=g, dtype=D),
        P0=random_spd(z, g, 1.0),
        A=A,
        B=torch.randn(z, a, generator=g, dtype=D),
        Q=random_spd(z, g, 0.3),
        C=torch.randn(x, z, generator=g, dtype=D),
        R=random_spd(x, g, 0.2),
        b=0.1 * torch.randn(z, generator=g, dtype=D),
        d=torch.randn(x, generator=g, dtype=D),
    )


def dense_gaussian(sys: LinearGaussianSSM, a: torch.Tensor):
    """Brute force: the joint Gaussian of the stacked z = (z_1..z_T) and x = (x_1..x_T).

    Returns mean_z [B, T*Z], cov_z [T*Z, T*Z], mean_x [B, T*X], cov_x, cov_zx [T*Z, T*X].
    Cov(z_s, z_t) = A^(s-t) Cov(z_t) for s >= t, built block by block (no recursion shared
    with the filter)."""
    steps, z = a.shape[1], sys.z_dim
    means = [sys.m0.expand(a.shape[0], -1)]
    marg = [sys.P0]
    for t in range(steps - 1):
        means.append(means[-1] @ sys.A.T + a[:, t] @ sys.B.T + sys.b)
        marg.append(sys.A @ marg[-1] @ sys.A.T + sys.Q)
    cov_z = torch.zeros(steps * z, steps * z, dtype=D)
    for s in range(steps):
        for t in range(s + 1):
            block = torch.linalg.matrix_power(sys.A, s - t) @ marg[t]
            cov_z[s * z : (s + 1) * z, t * z : (t + 1) * z] = block
            cov_z[t * z : (t + 1) * z, s * z : (s + 1) * z] = block.T
    big_c = torch.block_diag(*[sys.C] * steps)  # [T*X, T*Z]
    mean_z = torch.cat(means, dim=1)
    mean_x = mean_z @ big_c.T + sys.d.repeat(steps)
    cov_x = big_c @ cov_z @ big_c.T + torch.block_diag(*[sys.R] * steps)
    return mean_z, cov_z, mean_x, cov_x, cov_z @ big_c.T


def dense_posterior(sys: LinearGaussianSSM, x: torch.Tensor, a: torch.Tensor):
    """p(z_{1:T} | x_{1:T}) by Gaussian conditioning: mean [B, T*Z], cov [T*Z, T*Z]."""
    mean_z, cov_z, mean_x, cov_x, cov_zx = dense_gaussian(sys, a)
    gain = torch.linalg.solve(cov_x, cov_zx.T).T  # cov_zx cov_x^-1 (test code: clarity first)
    mean = mean_z + (x.flatten(1) - mean_x) @ gain.T
    return mean, cov_z - gain @ cov_zx.T


def data(sys: LinearGaussianSSM, batch: int = 3, steps: int = 4, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(batch, steps, sys.a_dim, generator=g, dtype=D)
    _, x = sys.sample(a, generator=g)
    return x, a


def test_log_likelihood_equals_dense_gaussian():
    sys = random_system()
    x, a = data(sys)
    _, _, mean_x, cov_x, _ = dense_gaussian(sys, a)
    expected = MultivariateNormal(mean_x, cov_x).log_prob(x.flatten(1))
    torch.testing.assert_close(kalman_log_likelihood(sys, x, a), expected)


def test_smoother_equals_dense_conditional():
    sys = random_system()
    x, a = data(sys)
    steps, z = x.shape[1], sys.z_dim
    mean, cov = dense_posterior(sys, x, a)
    s = rts_smoother(sys, x, a)
    torch.testing.assert_close(s.mean, mean.view(-1, steps, z))
    for t in range(steps):
        block = cov[t * z : (t + 1) * z, t * z : (t + 1) * z]
        torch.testing.assert_close(s.cov[:, t], block.expand_as(s.cov[:, t]))
    for t in range(steps - 1):  # Cov(z_{t+1}, z_t | x)
        block = cov[(t + 1) * z : (t + 2) * z, t * z : (t + 1) * z]
        torch.testing.assert_close(s.cross_cov[:, t], block.expand_as(s.cross_cov[:, t]))
    # filtering at the last step is smoothing there
    f = kalman_filter(sys, x, a)
    torch.testing.assert_close(f.mean[:, -1], s.mean[:, -1])


def test_masked_steps_equal_truncated_sequences():
    sys = random_system()
    x, a = data(sys, batch=3, steps=5)
    lengths = torch.tensor([5, 2, 3])
    mask = torch.arange(5) < lengths[:, None]
    x_pad = torch.where(mask[..., None], x, torch.tensor(float("nan"), dtype=D))
    a_pad = torch.where(mask[..., None], a, torch.tensor(float("inf"), dtype=D))
    ll = kalman_log_likelihood(sys, x_pad, a_pad, mask)
    s = rts_smoother(sys, x_pad, a_pad, mask)
    assert torch.isfinite(ll).all() and torch.isfinite(s.mean).all()
    for i, n in enumerate(lengths.tolist()):
        xi, ai = x[i : i + 1, :n], a[i : i + 1, :n]
        _, _, mean_x, cov_x, _ = dense_gaussian(sys, ai)
        expected = MultivariateNormal(mean_x, cov_x).log_prob(xi.flatten(1))
        torch.testing.assert_close(ll[i : i + 1], expected)
        mean, _ = dense_posterior(sys, xi, ai)
        torch.testing.assert_close(s.mean[i, :n], mean.view(n, -1))


def test_sampler_moments_match_dense_gaussian():
    sys = random_system(seed=3)
    g = torch.Generator().manual_seed(0)
    n, steps = 20000, 3
    a = torch.randn(1, steps, sys.a_dim, generator=g, dtype=D).expand(n, -1, -1)
    z, x = sys.sample(a, generator=g)
    mean_z, cov_z, mean_x, cov_x, _ = dense_gaussian(sys, a[:1])
    se = cov_x.diagonal().sqrt() / n**0.5
    assert ((x.flatten(1).mean(0) - mean_x[0]).abs() < 5 * se).all()
    se_z = cov_z.diagonal().sqrt() / n**0.5
    assert ((z.flatten(1).mean(0) - mean_z[0]).abs() < 5 * se_z).all()
    # sample variances: relative SE of a variance is sqrt(2 / n) for a Gaussian
    var = x.flatten(1).var(0)
    assert ((var / cov_x.diagonal() - 1).abs() < 5 * (2 / n) ** 0.5).all()


def test_log_likelihood_is_differentiable():
    sys = random_system(z=2, x=2, a=1)
    x, a = data(sys, batch=2, steps=3)

    def f(A, C, Q_root):
        s = LinearGaussianSSM(
            sys.m0,
            sys.P0,
            A,
            sys.B,
            Q_root @ Q_root.T + 0.1 * torch.eye(2, dtype=D),
            C,
            sys.R,
            sys.b,
            sys.d,
        )
        return kalman_log_likelihood(s, x, a)

    inputs = (
        sys.A.clone().requires_grad_(),
        sys.C.clone().requires_grad_(),
        torch.linalg.cholesky(sys.Q).requires_grad_(),
    )
    assert torch.autograd.gradcheck(f, inputs)


def test_bad_shapes_raise():
    sys = random_system()
    x, a = data(sys)
    with pytest.raises(ValueError, match=r"x must be \[B, T, 2\]"):
        kalman_log_likelihood(sys, x[..., :1], a)
    with pytest.raises(ValueError, match=r"a must be \[3, 4, 2\]"):
        kalman_log_likelihood(sys, x, a[:, :2])
    with pytest.raises(ValueError, match="pass a"):
        kalman_log_likelihood(sys, x, None)
    with pytest.raises(ValueError, match=r"LinearGaussianSSM.Q must be \[3, 3\]"):
        LinearGaussianSSM(sys.m0, sys.P0, sys.A, sys.B, sys.Q[:2, :2], sys.C, sys.R)


def test_offsets_are_zeros_when_omitted_and_none_set_later_is_named():
    sys = random_system()
    b, d = sys.offsets()
    assert b is sys.b and d is sys.d
    bare = LinearGaussianSSM(sys.m0, sys.P0, sys.A, sys.B, sys.Q, sys.C, sys.R)
    b0, d0 = bare.offsets()
    assert torch.equal(b0, torch.zeros(3, dtype=D)) and torch.equal(d0, torch.zeros(2, dtype=D))
    x, a = data(sys)
    sys.d = None
    with pytest.raises(ValueError, match=r"\.d was set to None after construction; build a new"):
        kalman_log_likelihood(sys, x, a)
