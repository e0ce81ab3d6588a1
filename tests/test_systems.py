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
    w = (
        omega[:, 1:]
        - omega[:, :-1]
        - dt * (-g * torch.sin(theta[:, :-1]) - damping * omega[:, :-1] + u[:, :-1])
    )
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
    [
        (lambda x, a, n: (x[:, :, 0], a, n), r"x must be \[N, T, obs\].*add a feature axis"),
        (lambda x, a, n: (x, a[:, :4], n), r"a must be \[N, T, act\] = \[20, 6, act\]"),
        (lambda x, a, n: (x, a, n[:5]), r"lengths must be \[N\] = \[20\]"),
        (lambda x, a, n: (x, a, n * 0), r"lengths must be in 1..T=6"),
        (lambda x, a, n: (x, a, n + 0.5), "whole numbers"),
        (lambda x, a, n: (x[:2], a[:2], n[:2]), "at least 3 sequences"),
        (
            lambda x, a, n: (np.where(np.arange(6)[None, :, None] == 2, np.nan, x), a, n),
            r"x holds NaN/inf at 20 observed steps \(first: sequence 0, step 2\)",
        ),
        (lambda x, a, n: (x.astype(str), a, n), "must hold numbers"),
    ],
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


# ----------------------------------------------------------------------------- bad arguments


@pytest.mark.parametrize("loader", [load_linear, load_pendulum])
@pytest.mark.parametrize(
    "kw, match",
    [
        ({"n_train": "5"}, r"n_train must be a whole number, got '5' \(type str\)"),
        ({"n_val": 0}, "n_val must be >= 1, got 0"),
        ({"n_test": 2.0}, "n_test must be a whole number, got 2.0"),
        ({"steps": 1.5}, "steps must be a whole number, got 1.5"),
        ({"steps": 1}, "steps must be >= 2"),
        ({"min_steps": 0}, r"min_steps must be in 1..\d+, got 0"),
        ({"steps": 5, "min_steps": 6}, "min_steps must be in 1..5, got 6"),
        ({"min_steps": 2.5}, "min_steps must be a whole number"),
        ({"seed": "0"}, "seed must be a whole number, got '0'"),
        ({"dt": 0}, "dt must be > 0, got 0.0"),
        ({"dt": "fast"}, r"dt must be a number, got 'fast' \(type str\)"),
        ({"damping": -1}, "damping must be >= 0, got -1.0"),
        ({"obs_std": float("nan")}, "obs_std must be finite, got nan"),
        ({"obs_std": -0.1}, r"obs_std must be (> 0|>= 0), got -0.1"),
        ({"n_train": True}, "n_train must be a whole number, got True"),
    ],
)
def test_system_loaders_name_bad_arguments(loader, kw, match):
    with pytest.raises(ValueError, match=match):
        loader(**{"n_train": 5, "n_val": 1, "n_test": 1, "steps": 4, **kw})


@pytest.mark.parametrize(
    "kw, match",
    [
        ({"force_std": -1}, "force_std must be >= 0, got -1.0"),
        ({"process_std": 0.1}, r"process_std must be a pair \(position, velocity\)"),
        ({"init_std": (1.0, 0.0)}, "init_std must be > 0, got 0.0"),
        ({"process_std": (0.1, "a")}, "process_std must be a number, got 'a'"),
    ],
)
def test_linear_system_parameters(kw, match):
    with pytest.raises(ValueError, match=match):
        load_linear(n_train=5, n_val=1, n_test=1, steps=4, **kw)
    # the named parameters reach the system
    sys = load_linear(n_train=5, n_val=1, n_test=1, steps=4, dt=0.5, obs_std=0.3)[0].info["system"]
    assert float(sys.A[0, 2]) == 0.5 and float(sys.R[0, 0]) == pytest.approx(0.09)


def test_pendulum_parameters():
    with pytest.raises(ValueError, match="torque_std must be >= 0, got -2.0"):
        load_pendulum(torque_std=-2)
    with pytest.raises(ValueError, match="gravity must be finite"):
        load_pendulum(gravity=float("inf"))


@pytest.mark.parametrize(
    "kw, match",
    [
        ({"val_fraction": "0.1"}, "val_fraction must be a number, got '0.1'"),
        ({"test_fraction": 1.0}, r"must be in \[0, 1\), got 0.1 and 1.0"),
        ({"val_fraction": -0.1}, r"must be in \[0, 1\), got -0.1"),
        ({"seed": 1.5}, "seed must be a whole number, got 1.5"),
        ({"name": 3}, "name must be a str, got 3"),
    ],
)
def test_from_arrays_rejects_bad_options(kw, match):
    x, a = arrays()
    with pytest.raises(ValueError, match=match):
        from_arrays(x, a, **kw)


def test_load_arrays_wrong_files(tmp_path):
    x, a = arrays()
    np.savez(tmp_path / "empty.npz")
    with pytest.raises(ValueError, match=r"empty.npz holds no arrays; write it with np.savez"):
        load_arrays(tmp_path / "empty.npz")
    np.save(tmp_path / "x.npy", x)
    with pytest.raises(ValueError, match=r"x.npy is a single .npy array, not an .npz archive"):
        load_arrays(tmp_path / "x.npy")
    (tmp_path / "notes.txt").write_text("1,2,3\n")
    with pytest.raises(ValueError, match=r"notes.txt is not an .npz file \(it is not a zip"):
        load_arrays(tmp_path / "notes.txt")
    good = tmp_path / "good.npz"
    np.savez(good, x=x)
    (tmp_path / "cut.npz").write_bytes(good.read_bytes()[:100])  # a broken download
    with pytest.raises(ValueError, match="cut.npz is not a readable .npz file"):
        load_arrays(tmp_path / "cut.npz")
    np.savez(tmp_path / "objects.npz", x=np.array([[1], [1, 2]], dtype=object))
    with pytest.raises(ValueError, match="objects.npz is not a readable .npz file"):
        load_arrays(tmp_path / "objects.npz")
    with pytest.raises(ValueError, match="is a folder; pass the .npz file itself"):
        load_arrays(tmp_path)
    with pytest.raises(ValueError, match="path must be a path"):
        load_arrays(None)
    # lengths beyond T or 0, and a and x of different N or T
    np.savez(tmp_path / "long.npz", x=x, lengths=np.full(20, 7))
    with pytest.raises(ValueError, match="lengths must be in 1..T=6, got values from 7 to 7"):
        load_arrays(tmp_path / "long.npz")
    np.savez(tmp_path / "zero.npz", x=x, lengths=np.r_[0, np.full(19, 6)])
    with pytest.raises(ValueError, match="lengths must be in 1..T=6, got values from 0 to 6"):
        load_arrays(tmp_path / "zero.npz")
    for bad in (a[:10], a[:, :5]):
        np.savez(tmp_path / "mixed.npz", x=x, a=bad)
        with pytest.raises(ValueError, match=r"a must be \[N, T, act\] = \[20, 6, act\] like x"):
            load_arrays(tmp_path / "mixed.npz")
    np.savez(tmp_path / "nan.npz", x=np.full((4, 3, 1), np.nan))
    with pytest.raises(ValueError, match="x holds NaN/inf at 12 observed steps"):
        load_arrays(tmp_path / "nan.npz")
    # the options reach from_arrays
    train, val, _ = load_arrays(good, val_fraction=0.25, name="mine")
    assert len(val) == 5 and train.name == "mine"


def test_simulated_sizes_are_bounded_and_obs_std_is_one_number():
    with pytest.raises(
        ValueError,
        match=r"1e\+09 steps\) exceed the 2e\+07 a simulated data set "
        r"may hold in memory; lower n_train or steps",
    ):
        load_linear(n_train=10**8, steps=10)
    with pytest.raises(ValueError, match="exceed the"):
        load_pendulum(steps=10**6)
    with pytest.raises(ValueError, match=r"obs_std must be a number, got \[1\]"):
        load_linear(obs_std=[1])
