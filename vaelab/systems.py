"""Built-in dynamical systems with actions, and the user's own arrays, as sequence data.

Every loader returns ``(train, val, test)`` :class:`~vaelab.data.Data` with observations
``x [N, T, X]``, actions ``a [N, T, A]`` (``a[:, t]`` is taken after ``x[:, t]`` and drives
z_{t+1}), true states ``z [N, T, Z]`` where known, and ``lengths [N]``.

- ``load_linear``: a 2-D point mass pushed by 2-D forces, position observed in noise. Linear
  and Gaussian, so ``data.info["system"]`` (a :class:`~vaelab.kalman.LinearGaussianSSM`,
  float64) gives the exact log-likelihood through the Kalman filter.
- ``load_pendulum``: a damped pendulum driven by a torque, observed through noisy
  (cos theta, sin theta). Nonlinear; the true (theta, omega) are kept for plots.
- ``load_arrays`` / ``from_arrays``: your own arrays, checked.
"""

from __future__ import annotations

import math
import os
import zipfile
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from vaelab.data import Data, check_int, check_number
from vaelab.kalman import LinearGaussianSSM


def _splits(n: int, n_val: int, n_test: int, seed: int) -> tuple[Tensor, Tensor, Tensor]:
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return perm[n_val + n_test :], perm[:n_val], perm[n_val : n_val + n_test]


def _check_sizes(
    n_train: int, n_val: int, n_test: int, steps: int, min_steps: int | None, seed: int
) -> None:
    for key, value in (("n_train", n_train), ("n_val", n_val), ("n_test", n_test)):
        check_int(key, value, low=1)
    check_int("seed", seed)
    if check_int("steps", steps) < 2:
        raise ValueError(f"steps must be >= 2 (a sequence needs a transition), got {steps}")
    if min_steps is not None:
        check_int("min_steps", min_steps, low=1, high=steps)
    n = n_train + n_val + n_test
    if n * steps > MAX_STEPS:
        raise ValueError(
            f"{n} sequences of {steps} steps ({n * steps:.3g} steps) exceed the "
            f"{MAX_STEPS:.0e} a simulated data set may hold in memory; lower "
            f"n_train or steps"
        )


MAX_STEPS = 20_000_000  # time steps of all sequences together (~1.3 GB at float64)


def _smooth_actions(n: int, steps: int, dim: int, scale: float, g: torch.Generator) -> Tensor:
    """Random, temporally correlated actions ``[n, steps, dim]``: an AR(1) process
    a_{t+1} = 0.8 a_t + 0.6 eps_t with stationary standard deviation ``scale``."""
    eps = torch.randn(n, steps, dim, generator=g, dtype=torch.float64)
    a = [eps[:, 0]]
    for t in range(1, steps):
        a.append(0.8 * a[-1] + 0.6 * eps[:, t])
    return scale * torch.stack(a, dim=1)


def _lengths(n: int, steps: int, min_steps: int | None, g: torch.Generator) -> Tensor:
    if min_steps is None or min_steps == steps:
        return torch.full((n,), steps, dtype=torch.long)
    return torch.randint(min_steps, steps + 1, (n,), generator=g)


def _make_splits(
    x: Tensor,
    a: Tensor | None,
    z: Tensor | None,
    lengths: Tensor,
    n_val: int,
    n_test: int,
    seed: int,
    name: str,
    info: dict,
) -> tuple[Data, Data, Data]:
    full = Data(
        x.float(),
        None if a is None else a.float(),
        None if z is None else z.float(),
        lengths=lengths,
        name=name,
        info=info,
    )
    parts = _splits(len(x), n_val, n_test, seed)
    out = []
    for suffix, index in zip(("", "-val", "-test"), parts, strict=True):
        part = full.subset(index)
        part.name = name + suffix
        out.append(part)
    train, val, test = out
    return train, val, test


# ----------------------------------------------------------------------------- linear system


def point_mass_system(
    dt: float = 0.25,
    damping: float = 0.5,
    process_std: tuple[float, float] = (0.1, 0.2),
    obs_std: float = 0.2,
    init_std: tuple[float, float] = (1.0, 0.5),
) -> LinearGaussianSSM:
    """Returns the linear-Gaussian SSM of a unit mass in the plane pushed by a force.

    State z = (p_x, p_y, v_x, v_y), action a = force (f_x, f_y), observation x = position.
    One step of length ``dt`` (exact for a constant force without friction, then friction
    ``damping`` on the velocity): p' = p + dt v + dt^2/2 f, v' = (1 - damping dt) v + dt f.
    Noises are diagonal (``process_std`` for position and velocity, ``obs_std``), so a model
    with diagonal Gaussian transition and emitter can represent the system exactly.
    """
    check_number("dt", dt, positive=True)
    check_number("damping", damping, low=0)
    for key, pair in (("process_std", process_std), ("init_std", init_std)):
        if not isinstance(pair, tuple | list) or len(pair) != 2:
            raise ValueError(
                f"{key} must be a pair (position, velocity) of standard deviations, got {pair!r}"
            )
        for value in pair:  # > 0: the Kalman filter and smoother factor these covariances
            check_number(key, value, positive=True)
    check_number("obs_std", obs_std, positive=True)
    eye, zero = torch.eye(2, dtype=torch.float64), torch.zeros(2, 2, dtype=torch.float64)
    A = torch.cat([torch.cat([eye, dt * eye], 1), torch.cat([zero, (1 - damping * dt) * eye], 1)])
    B = torch.cat([0.5 * dt**2 * eye, dt * eye])
    q = torch.tensor([process_std[0]] * 2 + [process_std[1]] * 2, dtype=torch.float64)
    p0 = torch.tensor([init_std[0]] * 2 + [init_std[1]] * 2, dtype=torch.float64)
    return LinearGaussianSSM(
        m0=torch.zeros(4, dtype=torch.float64),
        P0=torch.diag(p0**2),
        A=A,
        B=B,
        Q=torch.diag(q**2),
        C=torch.cat([eye, zero], 1),
        R=obs_std**2 * eye,
    )


def load_linear(
    n_train: int = 1000,
    n_val: int = 100,
    n_test: int = 100,
    steps: int = 20,
    min_steps: int | None = None,
    force_std: float = 1.0,
    seed: int = 0,
    dt: float = 0.25,
    damping: float = 0.5,
    process_std: tuple[float, float] = (0.1, 0.2),
    obs_std: float = 0.2,
    init_std: tuple[float, float] = (1.0, 0.5),
) -> tuple[Data, Data, Data]:
    """A 2-D point mass pushed by smooth random forces, position observed in noise.

    ``x [N, T, 2]`` positions, ``a [N, T, 2]`` forces, ``z [N, T, 4]`` true (position,
    velocity); ``info["system"]`` holds the true :class:`LinearGaussianSSM` (float64) for
    :func:`vaelab.kalman.kalman_log_likelihood`. ``min_steps`` < ``steps`` draws lengths
    uniformly in ``min_steps..steps`` (sequences padded at the end). ``dt`` to ``init_std``
    are the parameters of :func:`point_mass_system`.
    """
    _check_sizes(n_train, n_val, n_test, steps, min_steps, seed)
    check_number("force_std", force_std, low=0)
    n = n_train + n_val + n_test
    g = torch.Generator().manual_seed(seed)
    sys = point_mass_system(dt, damping, process_std, obs_std, init_std)
    a = _smooth_actions(n, steps, 2, force_std, g)
    z, x = sys.sample(a, generator=g)
    info = {
        "system": sys,
        "state_names": ["p_x", "p_y", "v_x", "v_y"],
        "obs_names": ["p_x", "p_y"],
        "action_names": ["f_x", "f_y"],
    }
    return _make_splits(
        x, a, z, _lengths(n, steps, min_steps, g), n_val, n_test, seed, "linear", info
    )


# ----------------------------------------------------------------------------- pendulum


def load_pendulum(
    n_train: int = 1000,
    n_val: int = 100,
    n_test: int = 100,
    steps: int = 50,
    min_steps: int | None = None,
    dt: float = 0.1,
    gravity: float = 9.81,
    damping: float = 0.25,
    torque_std: float = 2.0,
    process_std: float = 0.05,
    obs_std: float = 0.05,
    seed: int = 0,
) -> tuple[Data, Data, Data]:
    """A damped pendulum (unit length and mass) driven by a torque, observed as noisy
    (cos theta, sin theta).

    theta'' = -gravity sin(theta) - damping theta' + u, integrated by semi-implicit Euler:
    omega' = omega + dt (-gravity sin theta - damping omega + u) + w,  theta' = theta + dt omega'.
    ``x [N, T, 2]``, ``a [N, T, 1]`` torques, ``z [N, T, 2]`` true (theta, omega), theta not
    wrapped so trajectories stay continuous in plots.
    """
    _check_sizes(n_train, n_val, n_test, steps, min_steps, seed)
    check_number("dt", dt, positive=True)
    check_number("gravity", gravity)
    check_number("damping", damping, low=0)
    for key, value in (
        ("torque_std", torque_std),
        ("process_std", process_std),
        ("obs_std", obs_std),
    ):
        check_number(key, value, low=0)
    n = n_train + n_val + n_test
    g = torch.Generator().manual_seed(seed)
    a = _smooth_actions(n, steps, 1, torque_std, g)
    theta = (torch.rand(n, generator=g, dtype=torch.float64) * 2 - 1) * math.pi
    omega = torch.randn(n, generator=g, dtype=torch.float64)
    states = []
    for t in range(steps):
        states.append(torch.stack([theta, omega], dim=-1))
        noise = process_std * torch.randn(n, generator=g, dtype=torch.float64)
        omega = omega + dt * (-gravity * torch.sin(theta) - damping * omega + a[:, t, 0]) + noise
        theta = theta + dt * omega
    z = torch.stack(states, dim=1)  # [N, T, 2]
    x = torch.stack([torch.cos(z[..., 0]), torch.sin(z[..., 0])], dim=-1)
    x = x + obs_std * torch.randn(x.shape, generator=g, dtype=torch.float64)
    info = {
        "system": "pendulum",
        "state_names": ["theta", "omega"],
        "obs_names": ["cos theta", "sin theta"],
        "action_names": ["torque"],
        "params": {
            "dt": dt,
            "gravity": gravity,
            "damping": damping,
            "process_std": process_std,
            "obs_std": obs_std,
        },
    }
    return _make_splits(
        x, a, z, _lengths(n, steps, min_steps, g), n_val, n_test, seed, "pendulum", info
    )


# ----------------------------------------------------------------------------- your arrays


def _as_tensor(name: str, value) -> Tensor:
    if not isinstance(value, Tensor):
        try:
            value = np.asarray(value)
        except (TypeError, ValueError) as e:
            raise ValueError(f"{name} could not be read as a numeric array ({e})") from None
        if value.dtype.kind not in "iuf":
            raise ValueError(f"{name} must hold numbers, got dtype {value.dtype}")
        value = torch.from_numpy(value)
    if value.dtype == torch.bool or value.is_complex():
        raise ValueError(f"{name} must hold real numbers, got dtype {value.dtype}")
    return value


def _check_lengths(lengths, n: int, steps: int) -> Tensor:
    """``lengths [N]`` as whole numbers of steps in 1..T (all T when None)."""
    if lengths is None:
        return torch.full((n,), steps, dtype=torch.long)
    lengths = _as_tensor("lengths", lengths)
    if lengths.shape != (n,):
        raise ValueError(f"lengths must be [N] = [{n}], got shape {list(lengths.shape)}")
    if lengths.is_floating_point() and not torch.equal(lengths, lengths.round()):
        raise ValueError("lengths must be whole numbers of steps")
    lengths = lengths.long()
    if int(lengths.min()) < 1 or int(lengths.max()) > steps:
        raise ValueError(
            f"lengths must be in 1..T={steps}, got values from "
            f"{int(lengths.min())} to {int(lengths.max())}"
        )
    return lengths


def _check_finite(key: str, t: Tensor, observed: Tensor) -> None:
    """Raise naming the first observed step of ``t [N, T, .]`` that holds NaN or inf."""
    bad = ~torch.isfinite(t).all(dim=-1) & observed  # [N, T]
    if bad.any():
        i, step = (int(v) for v in bad.nonzero()[0])
        raise ValueError(
            f"{key} holds NaN/inf at {int(bad.sum())} observed steps (first: "
            f"sequence {i}, step {step}); clean or impute them, or shorten "
            f"lengths if they are padding"
        )


def from_arrays(
    x,
    a=None,
    lengths=None,
    val_fraction: float = 0.1,
    test_fraction: float = 0.1,
    seed: int = 0,
    name: str = "arrays",
) -> tuple[Data, Data, Data]:
    """Your own sequences as ``(train, val, test)``, split at random by ``seed``.

    Parameters
    ----------
    x : array ``[N, T, X]``
        Observations (numpy or torch), padded at the end when ``lengths`` is given.
    a : array ``[N, T, A]``, optional
        Actions; ``a[:, t]`` is taken after observing ``x[:, t]``.
    lengths : array ``[N]`` of int, optional
        Observed steps per sequence (1..T); all T when omitted. Padding may hold NaN.
    """
    for key, value in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not 0 <= check_number(key, value) < 1:
            raise ValueError(
                f"val_fraction and test_fraction must be in [0, 1), got "
                f"{val_fraction} and {test_fraction}"
            )
    check_int("seed", seed)
    if not isinstance(name, str):
        raise ValueError(f"name must be a str, got {name!r}")
    x = _as_tensor("x", x).double()
    if x.dim() != 3:
        fix = "; add a feature axis: x[..., None]" if x.dim() == 2 else ""
        raise ValueError(f"x must be [N, T, obs], got shape {list(x.shape)}{fix}")
    n, steps = x.shape[:2]
    if n < 3 or steps < 1 or x.shape[2] < 1:
        raise ValueError(
            f"x must hold at least 3 sequences (train, val, test), 1 step and 1 "
            f"feature, got shape {list(x.shape)}"
        )
    if a is not None:
        a = _as_tensor("a", a).double()
        if a.dim() != 3 or a.shape[:2] != (n, steps):
            raise ValueError(
                f"a must be [N, T, act] = [{n}, {steps}, act] like x, got shape {list(a.shape)}"
            )
    lengths = _check_lengths(lengths, n, steps)
    observed = torch.arange(steps) < lengths[:, None]  # [N, T]
    for key, t in (("x", x), ("a", a)):
        if t is not None:
            _check_finite(key, t, observed)
    # padding may hold anything: store zeros so Data's finiteness check passes
    x = torch.where(observed[..., None], x, torch.zeros_like(x))
    if a is not None:
        a = torch.where(observed[..., None], a, torch.zeros_like(a))
    n_val, n_test = max(1, round(val_fraction * n)), max(1, round(test_fraction * n))
    if n_val + n_test >= n:
        raise ValueError(
            f"{n} sequences leave nothing to train on after {n_val} validation "
            f"and {n_test} test sequences; lower the fractions or add data"
        )
    return _make_splits(x, a, None, lengths, n_val, n_test, seed, name, {"system": None})


def load_arrays(
    path: str | Path,
    val_fraction: float = 0.1,
    test_fraction: float = 0.1,
    seed: int = 0,
    name: str | None = None,
) -> tuple[Data, Data, Data]:
    """Sequences from an ``.npz`` file holding ``x [N, T, obs]``, optionally ``a [N, T, act]``
    and ``lengths [N]``; the other arguments as in :func:`from_arrays` (``name``: the file's
    stem by default)."""
    how = "write it with np.savez(path, x=x, a=a, lengths=lengths)"
    if not isinstance(path, str | os.PathLike):
        raise ValueError(f"path must be a path (str), got {path!r}")
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{path} is a folder; pass the .npz file itself ({how})")
    if not path.is_file():
        raise FileNotFoundError(
            f"array file {path} not found; pass an .npz written by "
            f"np.savez(path, x=x, a=a, lengths=lengths)"
        )
    with open(path, "rb") as f:
        start = f.read(6)
    if start == b"\x93NUMPY":
        raise ValueError(
            f"{path} is a single .npy array, not an .npz archive of named arrays; {how}"
        )
    if not start.startswith(b"PK"):
        raise ValueError(f"{path} is not an .npz file (it is not a zip archive); {how}")
    try:
        with np.load(path, allow_pickle=False) as f:
            arrays = {k: f[k] for k in f.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        raise ValueError(
            f"{path} is not a readable .npz file ({e}); {how} from numeric arrays"
        ) from None
    if not arrays:
        raise ValueError(f"{path} holds no arrays; {how}")
    if "x" not in arrays:
        raise ValueError(
            f"{path} has arrays {sorted(arrays)} but no 'x'; save the "
            f"observations as np.savez(path, x=x, a=a)"
        )
    unknown = set(arrays) - {"x", "a", "lengths"}
    if unknown:
        raise ValueError(
            f"{path} holds unexpected arrays {sorted(unknown)}; only x, a and lengths are read"
        )
    return from_arrays(
        arrays["x"],
        arrays.get("a"),
        arrays.get("lengths"),
        val_fraction,
        test_fraction,
        seed,
        path.stem if name is None else name,
    )


__all__ = ["from_arrays", "load_arrays", "load_linear", "load_pendulum", "point_mass_system"]
