"""Built-in systems follow their stated equations; user arrays are checked."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vaelab.datasets import load_dataset
from vaelab.kalman import LinearGaussianSSM
from vaelab.ssm import SSM, SSMConfig
from vaelab.systems import from_arrays, load_arrays, load_linear, load_pendulum


def test_linear_shapes_splits_and_seed():
    train, val, test = load_linear(n_train=50, n_val=5, n_test=7, steps=9)
    assert train.x.shape == (50, 9, 2) and train.a.shape == (50, 9, 2)
    assert train.z.shape == (50, 9, 4) and (len(val), len(test)) == (5, 7)
    assert (train.x_dim, train.a_dim) == (2, 2)
    assert isinstance(train.info["system"], LinearGaussianSSM)
    again, _, _ = load_linear(n_train=50, n_val=5, n_test=7, steps=9)
    torch.testing.assert_close(train.x, again.x)
    other, _, _ = load_linear(n_train=50, n_val=5, n_test=7, steps=9, seed=1)
    assert not torch.allclose(train.x, other.x)


def test_linear_data_follow_the_stated_matrices():
    """Residuals of the simulated states and observations have the covariances Q and R."""
    train, _, _ = load_linear(n_train=4000, n_val=1, n_test=1, steps=6)
    sys = train.info["system"]
    z, a, x = train.z.double(), train.a.double(), train.x.double()
    w = (z[:, 1:] - z[:, :-1] @ sys.A.T - a[:, :-1] @ sys.B.T - sys.b).reshape(-1, sys.z_dim)
    v = (x - z @ sys.C.T - sys.d).reshape(-1, sys.x_dim)
    for resid, cov in ((w, sys.Q), (v, sys.R), (z[:, 0], sys.P0)):
        n = len(resid)
        se_mean = cov.diagonal().sqrt() / n**0.5
        assert (resid.mean(0).abs() < 5 * se_mean).all()
        # relative SE of a Gaussian variance estimate is sqrt(2 / n)
        assert ((resid.var(0) / cov.diagonal() - 1).abs() < 5 * (2 / n) ** 0.5).all()


def test_variable_lengths():
    train, _, _ = load_linear(n_train=200, n_val=2, n_test=2, steps=10, min_steps=4)
    assert train.lengths.min() >= 4 and train.lengths.max() <= 10
    assert len(set(train.lengths.tolist())) > 1
    batch = next(train.batches(50))
    assert torch.equal(batch.mask.sum(1), batch.lengths)


def test_pendulum_follows_its_equations():
    dt, g, damping, q, r = 0.1, 9.81, 0.25, 0.05, 0.05
    train, _, _ = load_pendulum(n_train=500, n_val=1, n_test=1, steps=12)
    assert train.x.shape == (500, 12, 2) and train.a.shape == (500, 12, 1)
    assert train.z.shape == (500, 12, 2)
    theta, omega = train.z[..., 0].double(), train.z[..., 1].double()
    u = train.a[..., 0].double()
    # semi-implicit Euler: theta' = theta + dt omega' exactly
    torch.testing.assert_close(theta[:, 1:], theta[:, :-1] + dt * omega[:, 1:], atol=1e-5, rtol=0)
    w = omega[:, 1:] - omega[:, :-1] - dt * (-g * torch.sin(theta[:, :-1])
                                             - damping * omega[:, :-1] + u[:, :-1])
    v = train.x.double() - torch.stack([torch.cos(theta), torch.sin(theta)], -1)
    for resid, std in ((w.flatten(), q), (v.flatten(), r)):
        n = len(resid)
        assert abs(float(resid.mean())) < 5 * std / n**0.5
        assert abs(float(resid.var()) / std**2 - 1) < 5 * (2 / n) ** 0.5


def test_registry_loads_systems():
    train, _, _ = load_dataset("linear", n_train=10, n_val=2, n_test=2, steps=5)
    assert train.x.shape == (10, 5, 2)
    train, _, _ = load_dataset("pendulum", n_train=10, n_val=2, n_test=2, steps=5)
    assert train.x.shape == (10, 5, 2)
    with pytest.raises(ValueError, match="needs a path"):
        load_dataset("arrays")
    with pytest.raises(ValueError, match="steps must be >= 2"):
        load_linear(steps=1)


# ----------------------------------------------------------------------------- user arrays


def arrays(n: int = 20, steps: int = 6):
    rng = np.random.default_rng(0)
    return rng.normal(size=(n, steps, 3)), rng.normal(size=(n, steps, 2))


def test_from_arrays_splits_and_padding():
    x, a = arrays()
    lengths = np.array([6, 3] * 10)
    x[1, 3:] = np.nan  # padding may hold NaN
    a[1, 3:] = np.inf
    train, val, test = from_arrays(x, a, lengths, val_fraction=0.2, test_fraction=0.1)
    assert (len(train), len(val), len(test)) == (14, 4, 2)
    assert train.x.dtype == torch.float32 and train.x.shape[1:] == (6, 3)
    rows = torch.cat([train.x, val.x, test.x])
    assert torch.isfinite(rows).all()
    # every input sequence appears once, its observed part unchanged
    observed = np.arange(6)[None, :, None] < lengths[:, None, None]
    all_x = torch.from_numpy(np.where(observed, x, 0.0)).float()
    assert sorted(rows.sum((1, 2)).tolist()) == pytest.approx(sorted(all_x.sum((1, 2)).tolist()))
    model = SSM(SSMConfig(x_dim=3, a_dim=2, z_dim=2, hidden_dim=8))
    assert torch.isfinite(model.elbo(next(train.batches(8))).elbo).all()
    # torch input works too, and no actions
    t, _, _ = from_arrays(torch.randn(10, 4, 1))
    assert t.a is None and t.x.shape[1:] == (4, 1)


@pytest.mark.parametrize(
    "change, match",
    [(lambda x, a, n: (x[:, :, 0], a, n), r"x must be \[N, T, obs\].*add a feature axis"),
     (lambda x, a, n: (x, a[:, :4], n), r"a must be \[N, T, act\] = \[20, 6, act\]"),
     (lambda x, a, n: (x, a, n[:5]), r"lengths must be \[N\] = \[20\]"),
     (lambda x, a, n: (x, a, n * 0), r"lengths must be in 1..T=6"),
     (lambda x, a, n: (x, a, n + 0.5), "whole numbers"),
     (lambda x, a, n: (x[:2], a[:2], n[:2]), "at least 3 sequences"),
     (lambda x, a, n: (np.where(np.arange(6)[None, :, None] == 2, np.nan, x), a, n),
      r"x holds NaN/inf at 20 observed steps \(first: sequence 0, step 2\)"),
     (lambda x, a, n: (x.astype(str), a, n), "must hold numbers")],
)
def test_from_arrays_rejects_bad_input(change, match):
    x, a = arrays()
    with pytest.raises(ValueError, match=match):
        from_arrays(*change(x, a, np.full(20, 6.0)))


def test_load_arrays_file(tmp_path):
    x, a = arrays()
    path = tmp_path / "mine.npz"
    np.savez(path, x=x, a=a, lengths=np.full(20, 5))
    train, val, test = load_arrays(path)
    assert train.name == "mine" and int(train.lengths.max()) == 5
    assert len(train) + len(val) + len(test) == 20
    train2, _, _ = load_dataset("arrays", path=str(path))
    torch.testing.assert_close(train.x, train2.x)
    with pytest.raises(FileNotFoundError, match="np.savez"):
        load_arrays(tmp_path / "missing.npz")
    np.savez(tmp_path / "nox.npz", obs=x)
    with pytest.raises(ValueError, match="no 'x'"):
        load_arrays(tmp_path / "nox.npz")
    np.savez(tmp_path / "extra.npz", x=x, y=x)
    with pytest.raises(ValueError, match=r"unexpected arrays \['y'\]"):
        load_arrays(tmp_path / "extra.npz")
