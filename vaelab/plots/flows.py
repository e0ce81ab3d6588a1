"""Densities of flows: contours per context, and a flow layer by layer."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from vaelab.data import Batch
from vaelab.flows import ConditionalRealNVP
from vaelab.plots.base import (
    Figure,
    _cpu,
)
from vaelab.protocol import Model
from vaelab.realnvp import ConditionalFlowModel

# ----------------------------------------------------------------------------- flows


@torch.no_grad()
def flow_log_density(model: Model, context: Tensor, xs: Tensor, ys: Tensor) -> Tensor:
    """Returns log p(x | a) of a conditional flow model (``model.flow(a)`` a distribution over
    ``x [2]``) on the grid ``xs [Nx] x ys [Ny]``, ``[Ny, Nx]`` (row ``i`` is ``y = ys[i]``), for
    one context ``context [A]``."""
    if model.has_latents or model.config.x_dim != 2:
        raise ValueError(
            "density contours need a conditional flow model (exact log p(x | a), no "
            "latents) over 2-D x, such as realnvp on moons"
        )
    p = next(model.parameters())
    gx, gy = torch.meshgrid(xs.to(p), ys.to(p), indexing="xy")  # [Ny, Nx] each
    points = torch.stack([gx, gy], dim=-1).reshape(-1, 2)  # [Ny * Nx, 2]
    a = context.to(p).reshape(1, -1).expand(len(points), -1)  # [Ny * Nx, A]
    # a flow's "ELBO" log-likelihood is its exact log p(x | a) (no latent, zero KL)
    return model.elbo(Batch(points, a=a)).log_likelihood.reshape(gx.shape)


@torch.no_grad()
def flow_density(
    model: Model,
    contexts: Tensor,
    extent: float = 2.5,
    resolution: int = 80,
    n_samples: int = 300,
) -> Figure:
    """Density contours of p(x | a) for each context ``contexts [K, A]`` (one axis each, on
    the square ``[-extent, extent]^2``) with ``n_samples`` samples x ~ p(x | a) on top."""
    contexts = contexts[:, None] if contexts.dim() == 1 else contexts
    k = len(contexts)
    grid = torch.linspace(-extent, extent, resolution)
    fig = Figure(figsize=(3.2 * k, 3.9), layout="constrained")  # room for titles and labels
    axes = np.atleast_1d(fig.subplots(1, k, sharex=True, sharey=True))
    model_was_training = model.training
    model.eval()
    try:
        for ax, a in zip(axes, contexts, strict=False):
            density = flow_log_density(model, a, grid, grid).exp()
            ax.contourf(_cpu(grid), _cpu(grid), _cpu(density), levels=12, cmap="Blues")
            _, x = model.sample(
                n_samples, a=a.reshape(1, -1).expand(n_samples, -1).to(next(model.parameters()))
            )
            x_np = _cpu(x)
            ax.scatter(x_np[:, 0], x_np[:, 1], s=2, color="C3", alpha=0.5)
            ax.set_xlim(-extent, extent)
            ax.set_ylim(-extent, extent)
            ax.set_aspect("equal")
            ax.set_title("a = (" + ", ".join(f"{float(v):.2f}" for v in a) + ")", fontsize=9)
            ax.set_xlabel("$x_1$ (data units)")
        axes[0].set_ylabel("$x_2$ (data units)")
    finally:
        model.train(model_was_training)
    return fig


def _density_grid(extent: float, resolution: int, like: Tensor) -> tuple[Tensor, Tensor]:
    """The points of a square grid on ``[-extent, extent]^2``: ``(grid [G], points [G*G, 2])``,
    row ``i`` of the reshaped ``[G, G]`` being ``x_2 = grid[i]``."""
    grid = torch.linspace(-extent, extent, resolution, dtype=like.dtype, device=like.device)
    gx, gy = torch.meshgrid(grid, grid, indexing="xy")  # [G, G] each
    return grid, torch.stack([gx, gy], dim=-1).reshape(-1, 2)


@torch.no_grad()
def conditional_densities(
    models: dict[str, Model],
    context: Tensor,
    extent: float = 2.5,
    resolution: int = 100,
    data: Tensor | None = None,
    samples: dict[str, Tensor] | None = None,
) -> Figure:
    """Density p(x | a) of each model at one context ``context [A]``, one panel per model on
    the square ``[-extent, extent]^2`` with a shared colour scale and colour bar.

    ``models`` maps a panel title to a module whose ``model(a)`` is a distribution over 2-D
    ``x`` (a :class:`~vaelab.flows.ConditionalRealNVP`, a
    :class:`~vaelab.distributions.DiagGaussian`); ``data [N, 2]`` (e.g. training points with a
    similar context) is drawn in white on every panel, ``samples[title] [M, 2]`` in red on
    that model's panel."""
    if not models:
        raise ValueError("conditional_densities needs at least one model, got none")
    p = next(next(iter(models.values())).parameters())
    grid, points = _density_grid(extent, resolution, p)
    a = context.to(p).reshape(1, -1).expand(len(points), -1)  # [G*G, A]
    densities = {
        name: model(a).log_prob(points).exp().reshape(resolution, resolution)
        for name, model in models.items()
    }
    top = max(float(d.max()) for d in densities.values())
    levels = np.linspace(0.0, top, 16)
    fig = Figure(figsize=(3.4 * len(models) + 1.0, 3.6), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(models), sharex=True, sharey=True))
    for ax, (name, density) in zip(axes, densities.items(), strict=False):
        filled = ax.contourf(_cpu(grid), _cpu(grid), _cpu(density), levels=levels, cmap="viridis")
        if data is not None:
            d = _cpu(data)
            ax.scatter(d[:, 0], d[:, 1], s=2, color="w", alpha=0.6, label="data")
        if samples is not None and name in samples:
            s = _cpu(samples[name])
            ax.scatter(s[:, 0], s[:, 1], s=2, color="C3", alpha=0.7, label="samples")
        ax.set(
            xlim=(-extent, extent),
            ylim=(-extent, extent),
            aspect="equal",
            title=name,
            xlabel="$x_1$ (data units)",
        )
        if data is not None or (samples is not None and name in samples):
            ax.legend(loc="lower left", fontsize=7, markerscale=3, framealpha=0.6)
    axes[0].set_ylabel("$x_2$ (data units)")
    fig.colorbar(
        filled, ax=list(axes), label="density p(x | a) (per unit area)", shrink=0.9, format="%.2f"
    )
    return fig


@torch.no_grad()
def flow_layers(
    flow: ConditionalRealNVP | ConditionalFlowModel,
    context: Tensor,
    layers: Sequence[int],
    extent: float = 2.5,
    resolution: int = 100,
    n_samples: int = 800,
    seed: int = 0,
) -> Figure:
    """The base density of a conditional RealNVP carried through its first ``k`` coupling
    layers, one panel per ``k`` in ``layers`` (0 = the base, ``len(flow.nets)`` = the whole
    flow), at one context ``context [A]``.

    Each panel shows the exact density of ``z`` pushed through the first ``k`` transforms
    (``TransformedDistribution(base, flow.transforms(a)[:k])``) and the same ``n_samples``
    base points ``z`` carried along, coloured by their first base coordinate ``z_1`` so that
    one can follow where each part of the base goes. ``flow`` is a
    :class:`~vaelab.flows.ConditionalRealNVP` or a model holding one as ``model.flow``."""
    flow = flow.flow if isinstance(flow, ConditionalFlowModel) else flow
    total = len(flow.nets)
    layers = list(layers)
    bad = [k for k in layers if not 0 <= k <= total]
    if not layers or bad:
        raise ValueError(
            f"layers must be counts between 0 and {total} (the flow's coupling "
            f"layers), got {layers}"
        )
    p = next(flow.parameters())
    grid, points = _density_grid(extent, resolution, p)
    a = context.to(p).reshape(1, -1)
    transforms = flow.transforms(a.expand(len(points), -1))
    base = flow.base_distribution(a.expand(len(points), -1))
    g = torch.Generator(device=p.device).manual_seed(seed)
    a_s = a.expand(n_samples, -1)
    b = flow.base_distribution(a_s)
    # base points from the base's own mean and scale, with the generator fixed
    z = b.mean + b.stddev * torch.randn(n_samples, 2, generator=g, device=p.device, dtype=p.dtype)
    colour = _cpu(z[:, 0])
    sample_transforms = flow.transforms(a_s)
    densities, carried = [], []
    for k in layers:
        p_k = torch.distributions.TransformedDistribution(base, transforms[:k])
        densities.append(p_k.log_prob(points).exp().reshape(resolution, resolution))
        x = z
        for t in sample_transforms[:k]:
            x = t(x)
        carried.append(x)
    top = max(float(d.max()) for d in densities)
    levels = np.linspace(0.0, top, 16)
    fig = Figure(figsize=(3.2 * len(layers) + 2.0, 3.6), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(layers), sharex=True, sharey=True))
    for ax, k, density, x in zip(axes, layers, densities, carried, strict=False):
        filled = ax.contourf(_cpu(grid), _cpu(grid), _cpu(density), levels=levels, cmap="Greys")
        dots = ax.scatter(*_cpu(x).T, s=2, c=colour, cmap="plasma", alpha=0.6)
        title = "base" if k == 0 else f"after {k} of {total} layers"
        ax.set(
            xlim=(-extent, extent),
            ylim=(-extent, extent),
            aspect="equal",
            title=title,
            xlabel="first coordinate (data units)",
        )
    axes[0].set_ylabel("second coordinate (data units)")
    fig.colorbar(filled, ax=list(axes), label="density (per unit area)", shrink=0.9, format="%.2f")
    fig.colorbar(dots, ax=list(axes), label="the point's base coordinate $z_1$", shrink=0.9)
    return fig
