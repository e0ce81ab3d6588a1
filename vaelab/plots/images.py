"""Image grids and latent traversals of static models."""

from __future__ import annotations

import math
from collections.abc import Sequence

import matplotlib
import numpy as np
import torch
from torch import Tensor

from vaelab.plots.base import (
    Figure,
    _cpu,
)
from vaelab.protocol import Model

# ----------------------------------------------------------------------------- images


def image_grid(
    x: Tensor,
    image_shape: Sequence[int],
    ncols: int = 8,
    title: str | None = None,
    figsize: tuple[float, float] | None = None,
) -> Figure:
    """Images ``x [N, H*W]`` (or ``[N, H, W]``), values in [0, 1], tiled ``ncols`` wide in a
    single axis with one-pixel gaps."""
    h, w = (int(s) for s in image_shape)
    images = _cpu(x)
    if images.ndim < 2 or images[0].size != h * w:
        raise ValueError(
            f"x must be [N, {h * w}] or [N, {h}, {w}] for image_shape {(h, w)}, "
            f"got {list(images.shape)}"
        )
    images = images.reshape(-1, h, w)
    n = len(images)
    ncols = max(1, min(ncols, n))
    nrows = max(1, math.ceil(n / ncols))
    # NaN gaps drawn in a light colour, distinct from any pixel value
    canvas = np.full((nrows * (h + 1) + 1, ncols * (w + 1) + 1), np.nan, dtype=np.float32)
    for i, image in enumerate(images):
        r, c = divmod(i, ncols)
        canvas[1 + r * (h + 1) : 1 + r * (h + 1) + h, 1 + c * (w + 1) : 1 + c * (w + 1) + w] = (
            image
        )
    if figsize is None:
        figsize = (min(1.0 * ncols + 0.5, 10), min(1.0 * nrows + 0.6, 10))
    fig = Figure(figsize=figsize, layout="constrained")
    ax = fig.subplots()
    cmap = matplotlib.colormaps["gray_r"].with_extremes(bad="#cfe0f5")
    ax.imshow(canvas, cmap=cmap, vmin=0, vmax=1, interpolation="nearest")
    ax.set_axis_off()
    if title:
        ax.set_title(title, fontsize=10)
    return fig


def _decode(model: Model, z: Tensor) -> Tensor:
    """``model.decode(z)``, E[x | z] for ``z [N, Z]``; ValueError for a model without one."""
    x = model.decode(z)
    if x is None:
        raise ValueError(
            f"{type(model).__name__} has no decode(z); a latent traversal needs "
            f"a model that maps z [B, Z] to x [B, X]"
        )
    return x


@torch.no_grad()
def latent_traversal(
    model: Model,
    image_shape: Sequence[int],
    dims: Sequence[int],
    values: Sequence[float] | Tensor,
) -> Figure:
    """Decoder means E[x | z] along each latent dimension in ``dims``: row ``i`` sets
    ``z[dims[i]]`` to each of ``values`` (columns) with the other dimensions at 0, the prior
    mean. Needs ``model.decode(z [B, Z]) -> x [B, X]``."""
    _decode(model, torch.zeros(1, model.config.z_dim, device=next(model.parameters()).device))
    z_dim = model.config.z_dim
    dims = [int(d) for d in dims]
    bad = [d for d in dims if not 0 <= d < z_dim]
    if bad or not dims:
        raise ValueError(f"dims must be non-empty and in 0..{z_dim - 1}, got {dims}")
    p = next(model.parameters())
    values = torch.as_tensor(values, dtype=p.dtype).to(p.device)
    z = torch.zeros(len(dims), len(values), z_dim, dtype=p.dtype, device=p.device)
    for row, d in enumerate(dims):
        z[row, :, d] = values
    x = _decode(model, z.reshape(-1, z_dim))  # [len(dims) * len(values), X]
    fig = image_grid(
        x,
        image_shape,
        ncols=len(values),
        title=f"latent traversal: z_d from {float(values[0]):.2g} to "
        f"{float(values[-1]):.2g}, other dims 0",
    )
    ax = fig.axes[0]
    h = int(image_shape[0])
    ax.set_axis_on()
    ax.set_xticks([])
    ax.set_yticks([1 + r * (h + 1) + h / 2 for r in range(len(dims))], [f"z{d}" for d in dims])
    for spine in ax.spines.values():
        spine.set_visible(False)
    return fig


@torch.no_grad()
def decoded_image(
    model: Model,
    z_values: dict[int, float],
    image_shape: Sequence[int],
    title: str | None = None,
) -> Figure:
    """The decoder mean E[x | z] as one image, ``z`` at the prior mean 0 except the dims in
    ``z_values`` (dim -> value): the dashboard's latent sliders."""
    p = next(model.parameters())
    z = torch.zeros(1, model.config.z_dim, dtype=p.dtype, device=p.device)
    for d, v in z_values.items():
        z[0, int(d)] = float(v)
    fig = image_grid(_decode(model, z), image_shape, ncols=1, title=title, figsize=(3.9, 3.2))
    ax = fig.axes[0]
    fig.colorbar(ax.images[0], ax=ax, shrink=0.8, label="pixel mean E[x_i | z]")
    return fig
