"""The conditional two-moons toy, for conditional density models."""

from __future__ import annotations

import torch

from vaelab.data.checks import check_int, check_number
from vaelab.data.dataset import Data, split_indices


def load_moons(
    n: int = 4000, noise: float = 0.08, n_val: int = 500, n_test: int = 500, seed: int = 0
) -> tuple[Data, Data, Data]:
    """Conditional two-moons, a multimodal toy for conditional density models (a "policy"):
    the context ``a = (cos theta, sin theta)`` ``[N, 2]`` with ``theta ~ U(0, 2 pi)``, and the
    modelled variable ``x`` ``[N, 2]`` a point of the two interleaved half circles (centred,
    Gaussian noise of sd ``noise``) rotated by ``theta``. Every p(x | a) is bimodal and curved,
    which no conditional Gaussian can fit. ``info["theta"]`` holds the angles."""
    n, n_val, n_test = (
        check_int(k, v, low=1) for k, v in (("n", n), ("n_val", n_val), ("n_test", n_test))
    )
    noise, seed = check_number("noise", noise, low=0), check_int("seed", seed)
    if n < n_val + n_test + 1:
        raise ValueError(
            f"load_moons needs n > n_val + n_test, got n={n}, n_val={n_val}, "
            f"n_test={n_test}; raise n or lower n_val, n_test"
        )
    if n > 10_000_000:
        raise ValueError(f"n={n} points exceed the 1e7 load_moons makes in memory; lower n")
    g = torch.Generator().manual_seed(seed)
    t = torch.rand(n, generator=g) * torch.pi
    upper = torch.rand(n, generator=g) < 0.5
    moon = torch.where(
        upper[:, None],
        torch.stack([t.cos(), t.sin()], dim=1),
        torch.stack([1 - t.cos(), 0.5 - t.sin()], dim=1),
    )
    moon = moon - torch.tensor([0.5, 0.25]) + noise * torch.randn(n, 2, generator=g)
    theta = torch.rand(n, generator=g) * 2 * torch.pi
    cos, sin = theta.cos(), theta.sin()
    rotation = torch.stack([torch.stack([cos, -sin], -1), torch.stack([sin, cos], -1)], -2)
    x = (rotation @ moon[:, :, None]).squeeze(-1)  # [N, 2]
    a = torch.stack([cos, sin], dim=1)  # [N, 2]
    info = {"theta": theta, "noise": noise}
    data = Data(x, a=a, name="moons", info=info)
    splits = []
    for idx in split_indices(n, n_val, n_test, seed):
        part = data.subset(idx)
        part.info = {**info, "theta": theta[idx]}
        splits.append(part)
    train, val, test = splits
    return train, val, test
