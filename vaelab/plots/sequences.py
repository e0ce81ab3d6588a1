"""Latent paths, observations, projections, posterior bands and piano rolls."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from torch import Tensor

from vaelab.plots.base import (
    Figure,
    _cpu,
    _lengths,
)

# ----------------------------------------------------------------------------- latents


def _affine_fit(z: np.ndarray, target: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Least-squares ``target ~ [z, 1] @ W``; returns the fitted values and R^2 per target
    dimension. Latents are identified only up to an invertible map, so inferred and true
    states are compared after the best affine alignment."""
    design = np.concatenate([z, np.ones((len(z), 1), dtype=z.dtype)], axis=1)
    w, *_ = np.linalg.lstsq(design, target, rcond=None)
    fitted = design @ w
    ss_res = ((target - fitted) ** 2).sum(axis=0)
    ss_tot = ((target - target.mean(axis=0)) ** 2).sum(axis=0)
    r2 = 1 - ss_res / np.where(ss_tot > 0, ss_tot, 1.0)
    return fitted, r2


def _paths(
    solid: np.ndarray | None,
    dashed: np.ndarray | None,
    lengths: list[int],
    ylabel: str,
    titles: Sequence[str] | None,
    max_sequences: int,
    max_dims: int,
    names: Sequence[str] | None = None,
    styles: tuple[str, str] = ("", ""),
    title: str | None = None,
) -> Figure:
    """Paths ``[B, T, D]`` against time, one axis per dimension (labelled ``names[d]``, else
    ``ylabel`` and ``d``), one colour per sequence, observed steps only; ``solid`` and
    ``dashed`` share colours. A legend names the sequences and, when both are drawn, what
    the line ``styles`` (solid, dashed) show."""
    from matplotlib.lines import Line2D

    first = solid if solid is not None else dashed
    if first is None:
        raise ValueError("_paths needs solid or dashed paths [B, T, D] to draw")
    panels = min(first.shape[-1], max_dims)
    if names is not None and len(names) < panels:
        raise ValueError(
            f"names must give one label per drawn dimension ({panels}), got {len(names)}"
        )
    sequences = min(len(first), max_sequences)
    fig = Figure(figsize=(9, 1.6 * panels + 0.9), layout="constrained")
    axes = np.atleast_1d(fig.subplots(panels, 1, sharex=True))
    for d, ax in enumerate(axes):
        for i in range(sequences):
            n, colour = lengths[i], f"C{i % 10}"
            for series, style in ((solid, "-"), (dashed, "--")):
                if series is not None:
                    ax.plot(np.arange(1, n + 1), series[i, :n, d], color=colour, lw=1.2, ls=style)
        ax.set_ylabel(names[d] if names is not None else f"{ylabel}{d}")
        if titles is not None:
            ax.set_title(titles[d], fontsize=9)
    axes[-1].set_xlabel("time step t")
    handles = [
        Line2D([], [], color=f"C{i % 10}", lw=1.2, label=f"sequence {i}") for i in range(sequences)
    ]
    if solid is not None and dashed is not None:
        handles += [
            Line2D([], [], color="k", lw=1.2, ls=ls, label=label)
            for ls, label in zip(("-", "--"), styles, strict=False)
        ]
    # above the axes, or below them under a title (matplotlib's constrained layout draws an
    # "outside upper" legend over the suptitle)
    fig.legend(
        handles=handles,
        loc="outside lower center" if title else "outside upper center",
        ncols=len(handles),
        fontsize=8,
        frameon=False,
    )
    if title:
        fig.suptitle(title, fontsize=10)
    return fig


def latent_trajectories(
    z: Tensor,
    z_true: Tensor | None = None,
    mask: Tensor | None = None,
    max_sequences: int = 4,
    max_dims: int = 8,
    names: Sequence[str] | None = None,
    title: str | None = None,
) -> Figure:
    """Latent paths over time, one axis per dimension, one colour per sequence.

    Parameters
    ----------
    z : Tensor
        Inferred latents (e.g. posterior means), ``[B, T, Z]``.
    z_true : Tensor, optional
        True states ``[B, T, Z']``. Then each axis is one true dimension: the true path (solid)
        and the inferred latents mapped onto it by the least-squares affine fit over all
        observed steps (dashed), with R^2 in the title.
    mask : Tensor, optional
        ``[B, T]`` bool, True where observed; padding is not drawn.
    names : sequence of str, optional
        Axis labels, one per drawn dimension (of ``z_true`` when given, else of ``z``), with
        units, e.g. ``["angle (rad)", ...]``; default ``true z0``, ... or ``z0``, ...
    title : str, optional
        The figure's title.
    """
    if z.dim() != 3:
        raise ValueError(
            f"z must be [B, T, Z], got {list(z.shape)}; for static latents "
            f"[B, Z] use latent_projection"
        )
    b, t, _ = z.shape
    lengths = _lengths(mask, b, t)
    zs = _cpu(z)
    if z_true is None:
        return _paths(
            zs,
            None,
            lengths,
            "z",
            None,
            max_sequences,
            max_dims,
            names,
            title=title or "posterior means E_q[z_t] of each latent dimension",
        )
    if z_true.dim() != 3 or z_true.shape[:2] != z.shape[:2]:
        raise ValueError(
            f"z_true must be [B, T, Z'] with B, T = {b}, {t}, got {list(z_true.shape)}"
        )
    truth = _cpu(z_true)
    observed = np.concatenate([zs[i, :n] for i, n in enumerate(lengths)])
    target = np.concatenate([truth[i, :n] for i, n in enumerate(lengths)])
    fitted, r2 = _affine_fit(observed, target)
    aligned = np.zeros_like(truth)  # back to [B, T, Z'], padding left at 0 and not drawn
    start = 0
    for i, n in enumerate(lengths):
        aligned[i, :n] = fitted[start : start + n]
        start += n
    titles = [f"true (solid) vs inferred, affinely aligned (dashed); R^2 = {v:.3f}" for v in r2]
    return _paths(
        truth,
        aligned,
        lengths,
        "true z",
        titles,
        max_sequences,
        max_dims,
        names,
        ("true state", "inferred, affinely aligned"),
        title,
    )


def observation_paths(
    x: Tensor,
    x_rec: Tensor | None = None,
    mask: Tensor | None = None,
    max_sequences: int = 4,
    max_dims: int = 8,
    names: Sequence[str] | None = None,
    title: str | None = None,
) -> Figure:
    """Observed sequences ``x [B, T, X]`` (solid) and reconstructions ``x_rec [B, T, X]``
    (dashed) over time, one axis per feature (labelled ``names[d]`` when given);
    ``mask [B, T]`` hides the padding; ``title`` says what is shown (e.g. samples)."""
    if x.dim() != 3 or (x_rec is not None and x_rec.shape != x.shape):
        raise ValueError(
            f"x and x_rec must both be [B, T, X], got {list(x.shape)} and "
            f"{None if x_rec is None else list(x_rec.shape)}"
        )
    lengths = _lengths(mask, x.shape[0], x.shape[1])
    return _paths(
        _cpu(x),
        None if x_rec is None else _cpu(x_rec),
        lengths,
        "x",
        None,
        max_sequences,
        max_dims,
        names,
        ("data", "reconstruction"),
        title,
    )


def _principal_components(points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Projection of ``points [N, Z]`` onto its first two principal components (SVD of the
    centred data) and the fraction of variance each explains. Z = 1 gives a zero second axis."""
    centred = points - points.mean(axis=0, keepdims=True)
    _, s, vh = np.linalg.svd(centred, full_matrices=False)
    proj = centred @ vh[:2].T  # [N, min(2, Z)]
    var = s**2 / max(float((s**2).sum()), 1e-12)
    if proj.shape[1] == 1:
        proj = np.concatenate([proj, np.zeros_like(proj)], axis=1)
        var = np.concatenate([var, [0.0]])
    return proj, var[:2]


def latent_projection(
    z: Tensor, mask: Tensor | None = None, labels: Tensor | None = None, max_sequences: int = 16
) -> Figure:
    """Latents on their first two principal components.

    Sequences ``z [B, T, Z]``: each path (observed steps only) as a thin line with points
    coloured by time step. Static ``z [B, Z]``: a scatter, coloured by ``labels [B]`` if given.
    With ``Z == 2`` the components are a rotation of the latent plane.
    """
    zs = _cpu(z)
    fig = Figure(figsize=(5.5, 4.5), layout="constrained")
    ax = fig.subplots()
    if zs.ndim == 3:
        b, t, _ = zs.shape
        lengths = _lengths(mask, b, t)[:max_sequences]
        points = np.concatenate([zs[i, :n] for i, n in enumerate(lengths)])
        times = np.concatenate([np.arange(1, n + 1) for n in lengths])  # t = 1..T
        proj, var = _principal_components(points)
        start = 0
        for n in lengths:
            ax.plot(
                proj[start : start + n, 0],
                proj[start : start + n, 1],
                color="grey",
                lw=0.6,
                alpha=0.6,
            )
            start += n
        art = ax.scatter(proj[:, 0], proj[:, 1], c=times, cmap="viridis", s=8)
        fig.colorbar(art, ax=ax, label="time step t")
    elif zs.ndim == 2:
        proj, var = _principal_components(zs)
        if labels is None:
            ax.scatter(proj[:, 0], proj[:, 1], s=8)
        else:
            art = ax.scatter(proj[:, 0], proj[:, 1], c=_cpu(labels), cmap="tab10", s=8)
            fig.colorbar(art, ax=ax, label="label")
    else:
        raise ValueError(f"z must be [B, Z] or [B, T, Z], got {list(zs.shape)}")
    ax.set_xlabel(f"PC1 ({100 * var[0]:.0f}% of variance)")
    ax.set_ylabel(f"PC2 ({100 * var[1]:.0f}% of variance)")
    ax.set_title("posterior means, first two principal components", fontsize=10)
    return fig


def posterior_bands(
    truth: Tensor,
    bands: dict[str, tuple[Tensor, Tensor]],
    t: int | None = None,
    names: Sequence[str] | None = None,
    density_dim: int = 0,
    unit: str = "state units",
) -> Figure:
    """Marginals of one sequence's latent states against its true state: one axis per state
    dimension, each band its mean (line) and mean +- 2 standard deviations (shaded), the true
    state in black; with ``t`` a vertical line at step t and a last axis with each band's
    Gaussian density of dimension ``density_dim`` at step t and the true value there.

    Parameters
    ----------
    truth : Tensor
        ``[T, D]`` true states.
    bands : dict
        label -> ``(mean [T, D], std [T, D])``, e.g. a Kalman smoother's and a guide's.
    t : int, optional
        The time step (0-based) to mark and to show the densities of.
    names : sequence of str, optional
        ``D`` state names for the axis labels (``z_1 .. z_D`` by default).
    """
    truth_np = _cpu(truth)
    if truth_np.ndim != 2:
        raise ValueError(f"truth must be [T, D] (one sequence), got {list(truth_np.shape)}")
    steps, dims = truth_np.shape
    for label, (mean, std) in bands.items():
        if tuple(mean.shape) != (steps, dims) or tuple(std.shape) != (steps, dims):
            raise ValueError(
                f"band {label!r}: mean and std must be [{steps}, {dims}] like "
                f"truth, got {list(mean.shape)} and {list(std.shape)}"
            )
    if t is not None and not 0 <= t < steps:
        raise ValueError(f"t must be in 0..{steps - 1}, got {t}")
    names = list(names) if names is not None else [f"z_{i + 1}" for i in range(dims)]
    panels = dims + (t is not None)
    fig = Figure(figsize=(3.6 * panels, 3.4), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, panels))
    time = np.arange(1, steps + 1)
    for d in range(dims):
        ax = axes[d]
        ax.plot(time, truth_np[:, d], color="k", lw=1.5, label="true state")
        for i, (label, (mean, std)) in enumerate(bands.items()):
            m, s = _cpu(mean)[:, d], _cpu(std)[:, d]
            ax.plot(time, m, color=f"C{i}", lw=1.2, label=f"{label}: mean")
            ax.fill_between(
                time, m - 2 * s, m + 2 * s, color=f"C{i}", alpha=0.25, label=f"{label}: +-2 sd"
            )
        if t is not None:
            ax.axvline(t + 1, color="grey", ls=":", lw=1)
        ax.set_xlabel("time step t")
        ax.set_ylabel(f"{names[d]} ({unit})")
    axes[0].legend(fontsize=7)
    if t is not None:
        ax = axes[-1]
        true_value = truth_np[t, density_dim]
        centres = [float(_cpu(m)[t, density_dim]) for m, _ in bands.values()] + [true_value]
        widths = [float(_cpu(s)[t, density_dim]) for _, s in bands.values()]
        lo = min(centres) - 4 * max(widths)
        hi = max(centres) + 4 * max(widths)
        grid = np.linspace(lo, hi, 400)
        for i, (label, (mean, std)) in enumerate(bands.items()):
            m_t, s_t = float(_cpu(mean)[t, density_dim]), float(_cpu(std)[t, density_dim])
            density = np.exp(-0.5 * ((grid - m_t) / s_t) ** 2) / (s_t * math.sqrt(2 * math.pi))
            ax.plot(grid, density, color=f"C{i}", label=label)
        ax.axvline(true_value, color="k", lw=1.5, label="true state")
        ax.set_xlabel(f"{names[density_dim]} at t = {t + 1} ({unit})")
        ax.set_ylabel(f"density (1 / {unit})")
        ax.legend(fontsize=7)
    return fig


# ----------------------------------------------------------------------------- piano rolls


def piano_roll(
    x: Tensor, mask: Tensor | None = None, titles: Sequence[str] | None = None, note_min: int = 21
) -> Figure:
    """Piano rolls, notes (MIDI, from ``note_min``) against time, one axis per sequence.

    ``x [T, P]`` or ``[B, T, P]`` binary notes or note probabilities; ``mask [B, T]`` trims
    the padding."""
    rolls = _cpu(x)
    if rolls.ndim == 2:
        rolls = rolls[None]
        mask = None if mask is None else mask.reshape(1, -1)
    if rolls.ndim != 3:
        raise ValueError(f"x must be [T, P] or [B, T, P], got {list(rolls.shape)}")
    b, t, p = rolls.shape
    lengths = _lengths(mask, b, t)
    fig = Figure(figsize=(9, 2.2 * b + 0.4), layout="constrained")
    axes = fig.subplots(b, 1, squeeze=False)[:, 0]
    for i, ax in enumerate(axes):
        ax.imshow(
            rolls[i, : lengths[i]].T,
            origin="lower",
            aspect="auto",
            cmap="gray_r",
            vmin=0,
            vmax=1,
            interpolation="nearest",
            extent=(0.5, lengths[i] + 0.5, note_min - 0.5, note_min + p - 0.5),
        )
        ax.set_ylabel("MIDI note")
        if titles is not None and i < len(titles):
            ax.set_title(titles[i], fontsize=10)
    axes[-1].set_xlabel("time step t")
    return fig
