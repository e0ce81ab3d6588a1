"""Matplotlib figures for training runs and trained models.

Every function returns a :class:`matplotlib.figure.Figure` built without ``pyplot``, so it is
safe in threads, under the Agg backend and in Streamlit (``st.pyplot(fig)``), and nothing is
left open in a global figure manager. Tensors are batch-first (``x [B, X]``, ``x [B, T, X]``,
``mask [B, T]``) and moved to the CPU here; the functions know only the model protocol
(``latents``, ``reconstruct``, ``sample``, optional ``decode``), :class:`~vaelab.data.Batch`
and ``Data.info``.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from pathlib import Path

import matplotlib
import numpy as np
import torch
from matplotlib import figure as mpl_figure
from matplotlib import ticker
from torch import Tensor, nn

from vaelab.data import Batch


class Figure(mpl_figure.Figure):
    """A matplotlib Figure that displays itself in Jupyter as the last expression of a cell,
    whatever the backend (these figures are built without pyplot, so the inline backend never
    sees them), and saves for slides with :func:`save_figure`."""

    def _repr_png_(self) -> bytes:
        buffer = io.BytesIO()
        self.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
        return buffer.getvalue()


def save_figure(fig: mpl_figure.Figure, path: str | Path, formats: Sequence[str] = ("png", "svg"),
                dpi: int = 200) -> list[Path]:
    """Write ``fig`` as ``path.<format>`` for every format (PNG at ``dpi``, slide resolution;
    SVG and PDF are vector); returns the files written. ``path`` may carry a suffix, which is
    replaced."""
    allowed = {"png", "svg", "pdf"}
    bad = [f for f in formats if f not in allowed]
    if bad or not formats:
        raise ValueError(f"save_figure formats must be among {sorted(allowed)}, got "
                         f"{list(formats)}")
    stem = Path(path)
    stem = stem.with_suffix("") if stem.suffix.lstrip(".") in allowed else stem
    stem.parent.mkdir(parents=True, exist_ok=True)
    written = []
    for fmt in formats:
        out = stem.with_name(f"{stem.name}.{fmt}")
        fig.savefig(out, format=fmt, dpi=dpi, bbox_inches="tight")
        written.append(out)
    return written

# Training curves: (record key, axis title); -ELBO, log-likelihood and KL also show val markers.
CURVES = (
    ("nelbo", "-ELBO (nats)"),
    ("log_likelihood", "reconstruction log-likelihood"),
    ("kl", "KL(q || p)"),
    ("kl_weight", "KL weight"),
    ("grad_norm", "gradient norm (before clipping)"),
)
VAL_KEYS = ("nelbo", "log_likelihood", "kl")
ACTIVE_THRESHOLD = 0.01  # as vaelab.diagnostics.ACTIVE_THRESHOLD (Burda et al. 2016)


def _cpu(t: Tensor | np.ndarray) -> np.ndarray:
    if isinstance(t, Tensor):
        return t.detach().to("cpu", torch.float32).numpy()
    return np.asarray(t, dtype=np.float32)


def _lengths(mask: Tensor | None, b: int, t: int) -> list[int]:
    """Observed steps per sequence; all ``t`` without a mask."""
    if mask is None:
        return [t] * b
    if mask.shape[:2] != (b, t):
        raise ValueError(f"mask must be [B, T] = [{b}, {t}], got {list(mask.shape)}")
    return [int(n) for n in mask.to("cpu").sum(dim=1)]


# ----------------------------------------------------------------------------- training


def training_curves(history: Sequence[dict], reference: dict | None = None,
                    diagnostics: Sequence[dict] | None = None,
                    figsize: tuple[float, float] = (13, 6), unit: str = "nats") -> Figure:
    """Curves of a metrics history as written by :func:`vaelab.train.fit`.

    One axis per entry of ``CURVES`` and one for the active units: the train records as a
    line against the step, the validation records (``kind == "val"``) as markers on the
    -ELBO, log-likelihood and KL axes. ``reference["exact_nll_val"]`` / ``["exact_nll_train"]``
    (exact -log p(x) of the true system) are drawn as horizontal lines on the -ELBO axis;
    ``diagnostics`` (entries ``{"step", "active_units", "activity"}`` from
    :func:`vaelab.diagnostics.diagnose`) give the active-units axis, which a model without latents
    (``diagnostics=None``) does not get. A KL weight that never changes (no annealing) gets no
    axis of its own: the KL axis's title says its value. Units are those of the records (nats
    per observed step, per example for static data): ``unit`` labels the y axes of -ELBO,
    log-likelihood and KL (e.g. ``"nats per time step"``).
    """
    ylabels = {"nelbo": unit, "log_likelihood": unit, "kl": unit,
               "kl_weight": "weight (1 = the ELBO)", "grad_norm": "L2 norm"}
    train = [r for r in history if r.get("kind") == "train"]
    val = [r for r in history if r.get("kind") == "val"]
    weights = {r["kl_weight"] for r in train if "kl_weight" in r}
    constant_weight = weights.pop() if len(weights) == 1 else None
    curves = [(key, title) for key, title in CURVES
              if not (key == "kl_weight" and constant_weight is not None)]
    panels = len(curves) + (diagnostics is not None)
    fig = Figure(figsize=figsize)
    # a fixed layout: redrawn every few seconds by the dashboard, and constrained layout
    # doubles the drawing time
    fig.subplots_adjust(left=0.06, right=0.98, bottom=0.08, top=0.95, wspace=0.25, hspace=0.4)
    axes = list(fig.subplots(2, math.ceil(panels / 2)).ravel())
    for extra in axes[panels:]:  # no empty panel
        fig.delaxes(extra)
    for ax, (key, title) in zip(axes, curves):
        if key == "kl" and constant_weight is not None:
            title = f"{title}; KL weight {constant_weight:g} throughout"
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("step")
        ax.set_ylabel(ylabels.get(key, ""))
        points = [(r["step"], r[key]) for r in train if key in r]
        if points:
            steps, values = zip(*points)
            ax.plot(steps, values, lw=1, color="C0", label="train")
        vpoints = [(r["step"], r[key]) for r in val if key in r]
        if key in VAL_KEYS and vpoints:
            steps, values = zip(*vpoints)
            ax.plot(steps, values, "o", color="C3", ms=5, label="validation")
        if not points and not vpoints:
            ax.text(0.5, 0.5, "no records yet", ha="center", va="center",
                    transform=ax.transAxes, color="grey")
    reference = reference or {}
    for split, colour in (("train", "C2"), ("val", "C1")):
        if f"exact_nll_{split}" in reference:
            axes[0].axhline(reference[f"exact_nll_{split}"], color=colour, ls="--", lw=1,
                            label=f"exact -log p(x), true system ({split})")
    if val or reference:
        axes[0].legend(fontsize=7)
    if diagnostics is None:
        return fig
    ax = axes[len(curves)]
    ax.set_title(f"active units (Cov_x E_q[z_u] > {ACTIVE_THRESHOLD})", fontsize=10)
    ax.set_xlabel("step")
    ax.set_ylabel("active latent dimensions")
    points = [(d["step"], d["active_units"]) for d in diagnostics if "active_units" in d]
    if points:
        steps, values = zip(*points)
        ax.plot(steps, values, "o-", ms=3, lw=1, color="C4")
        z_dim = len(diagnostics[-1]["activity"])
        ax.set_ylim(-0.3, z_dim + 0.3)
        ax.axhline(z_dim, color="grey", lw=0.8, ls=":")
    else:
        ax.text(0.5, 0.5, "no records yet", ha="center", va="center", transform=ax.transAxes,
                color="grey")
    return fig


def latent_usage(entry: dict, threshold: float = ACTIVE_THRESHOLD, unit: str = "nats") -> Figure:
    """Per-dimension view of posterior collapse for one diagnostics entry (see
    :func:`vaelab.diagnostics.diagnose`): the KL of every latent dimension as bars when the model
    offers ``kl_per_dim`` (in ``unit``, e.g. ``"nats per time step"``), and the activity
    Cov_x(E_q[z_u]) of every dimension (log scale) with the active-unit threshold; inactive
    dimensions in grey. The entry's ``step``, when it has one, goes into the title."""
    activity = np.asarray(entry["activity"], dtype=np.float64)
    kl = entry.get("kl_per_dim")
    dims = np.arange(len(activity))
    colours = np.where(activity > threshold, "C0", "lightgrey")
    fig = Figure(figsize=(9, 3.2))
    fig.subplots_adjust(left=0.08, right=0.98, bottom=0.16, top=0.86, wspace=0.25)
    axes = fig.subplots(1, 2 if kl is not None else 1, squeeze=False)[0]
    ax = axes[-1]
    ax.bar(dims, np.maximum(activity, 1e-8), color=colours)
    ax.set_yscale("log")
    ax.axhline(threshold, color="C3", ls="--", lw=1, label=f"threshold {threshold}")
    step = f" at step {entry['step']}" if entry.get("step") is not None else ""
    ax.set_title(f"activity: {int((activity > threshold).sum())} of {len(activity)} "
                 f"active dimensions{step}", fontsize=10)
    ax.set_ylabel("Cov_x(E_q[z_u]) (squared latent units)")
    ax.legend(fontsize=8)
    # every label readable: at most 16 tick labels, however many dimensions
    ticks = dims[::max(1, math.ceil(len(dims) / 16))]
    if kl is not None:
        kl = np.asarray(kl, dtype=np.float64)
        axes[0].bar(dims, kl, color=colours)
        axes[0].set_title(f"KL per dimension (total {kl.sum():.3f} {unit})", fontsize=10)
        axes[0].set_ylabel(f"KL ({unit})")
    for a in axes:
        a.set_xlabel("latent dimension u")
        a.set_xticks(ticks)
    return fig


# ----------------------------------------------------------------------------- images


def image_grid(x: Tensor, image_shape: Sequence[int], ncols: int = 8,
               title: str | None = None, figsize: tuple[float, float] | None = None) -> Figure:
    """Images ``x [N, H*W]`` (or ``[N, H, W]``), values in [0, 1], tiled ``ncols`` wide in a
    single axis with one-pixel gaps."""
    h, w = (int(s) for s in image_shape)
    images = _cpu(x)
    if images.ndim < 2 or images[0].size != h * w:
        raise ValueError(f"x must be [N, {h * w}] or [N, {h}, {w}] for image_shape {(h, w)}, "
                         f"got {list(images.shape)}")
    images = images.reshape(-1, h, w)
    n = len(images)
    ncols = max(1, min(ncols, n))
    nrows = max(1, math.ceil(n / ncols))
    # NaN gaps drawn in a light colour, distinct from any pixel value
    canvas = np.full((nrows * (h + 1) + 1, ncols * (w + 1) + 1), np.nan, dtype=np.float32)
    for i, image in enumerate(images):
        r, c = divmod(i, ncols)
        canvas[1 + r * (h + 1):1 + r * (h + 1) + h, 1 + c * (w + 1):1 + c * (w + 1) + w] = image
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


@torch.no_grad()
def latent_traversal(model: nn.Module, image_shape: Sequence[int], dims: Sequence[int],
                     values: Sequence[float] | Tensor) -> Figure:
    """Decoder means E[x | z] along each latent dimension in ``dims``: row ``i`` sets
    ``z[dims[i]]`` to each of ``values`` (columns) with the other dimensions at 0, the prior
    mean. Needs ``model.decode(z [B, Z]) -> x [B, X]``."""
    decode = getattr(model, "decode", None)
    if decode is None:
        raise ValueError(f"{type(model).__name__} has no decode(z); a latent traversal needs "
                         f"a model that maps z [B, Z] to x [B, X]")
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
    x = decode(z.reshape(-1, z_dim))  # [len(dims) * len(values), X]
    fig = image_grid(x, image_shape, ncols=len(values),
                     title=f"latent traversal: z_d from {float(values[0]):.2g} to "
                           f"{float(values[-1]):.2g}, other dims 0")
    ax = fig.axes[0]
    h = int(image_shape[0])
    ax.set_axis_on()
    ax.set_xticks([])
    ax.set_yticks([1 + r * (h + 1) + h / 2 for r in range(len(dims))],
                  [f"z{d}" for d in dims])
    for spine in ax.spines.values():
        spine.set_visible(False)
    return fig


@torch.no_grad()
def decoded_image(model: nn.Module, z_values: dict[int, float], image_shape: Sequence[int],
                  title: str | None = None) -> Figure:
    """The decoder mean E[x | z] as one image, ``z`` at the prior mean 0 except the dims in
    ``z_values`` (dim -> value): the dashboard's latent sliders."""
    p = next(model.parameters())
    z = torch.zeros(1, model.config.z_dim, dtype=p.dtype, device=p.device)
    for d, v in z_values.items():
        z[0, int(d)] = float(v)
    fig = image_grid(model.decode(z), image_shape, ncols=1, title=title, figsize=(3.9, 3.2))
    ax = fig.axes[0]
    fig.colorbar(ax.images[0], ax=ax, shrink=0.8, label="pixel mean E[x_i | z]")
    return fig


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


def _paths(solid: np.ndarray | None, dashed: np.ndarray | None, lengths: list[int],
           ylabel: str, titles: Sequence[str] | None, max_sequences: int,
           max_dims: int, names: Sequence[str] | None = None,
           styles: tuple[str, str] = ("", ""), title: str | None = None) -> Figure:
    """Paths ``[B, T, D]`` against time, one axis per dimension (labelled ``names[d]``, else
    ``ylabel`` and ``d``), one colour per sequence, observed steps only; ``solid`` and
    ``dashed`` share colours. A legend names the sequences and, when both are drawn, what
    the line ``styles`` (solid, dashed) show."""
    from matplotlib.lines import Line2D

    first = solid if solid is not None else dashed
    panels = min(first.shape[-1], max_dims)
    if names is not None and len(names) < panels:
        raise ValueError(f"names must give one label per drawn dimension ({panels}), got "
                         f"{len(names)}")
    sequences = min(len(first), max_sequences)
    fig = Figure(figsize=(9, 1.6 * panels + 0.9), layout="constrained")
    axes = np.atleast_1d(fig.subplots(panels, 1, sharex=True))
    for d, ax in enumerate(axes):
        for i in range(sequences):
            n, colour = lengths[i], f"C{i % 10}"
            for series, style in ((solid, "-"), (dashed, "--")):
                if series is not None:
                    ax.plot(np.arange(n), series[i, :n, d], color=colour, lw=1.2, ls=style)
        ax.set_ylabel(names[d] if names is not None else f"{ylabel}{d}")
        if titles is not None:
            ax.set_title(titles[d], fontsize=9)
    axes[-1].set_xlabel("time step t")
    handles = [Line2D([], [], color=f"C{i % 10}", lw=1.2, label=f"sequence {i}")
               for i in range(sequences)]
    if solid is not None and dashed is not None:
        handles += [Line2D([], [], color="k", lw=1.2, ls=ls, label=label)
                    for ls, label in zip(("-", "--"), styles)]
    # above the axes, or below them under a title (matplotlib's constrained layout draws an
    # "outside upper" legend over the suptitle)
    fig.legend(handles=handles, loc=f"outside {'lower' if title else 'upper'} center",
               ncols=len(handles), fontsize=8, frameon=False)
    if title:
        fig.suptitle(title, fontsize=10)
    return fig


def latent_trajectories(z: Tensor, z_true: Tensor | None = None, mask: Tensor | None = None,
                        max_sequences: int = 4, max_dims: int = 8,
                        names: Sequence[str] | None = None, title: str | None = None) -> Figure:
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
        raise ValueError(f"z must be [B, T, Z], got {list(z.shape)}; for static latents "
                         f"[B, Z] use latent_projection")
    b, t, _ = z.shape
    lengths = _lengths(mask, b, t)
    zs = _cpu(z)
    if z_true is None:
        return _paths(zs, None, lengths, "z", None, max_sequences, max_dims, names,
                      title=title or "posterior means E_q[z_t] of each latent dimension")
    if z_true.dim() != 3 or z_true.shape[:2] != z.shape[:2]:
        raise ValueError(f"z_true must be [B, T, Z'] with B, T = {b}, {t}, got "
                         f"{list(z_true.shape)}")
    truth = _cpu(z_true)
    observed = np.concatenate([zs[i, :n] for i, n in enumerate(lengths)])
    target = np.concatenate([truth[i, :n] for i, n in enumerate(lengths)])
    fitted, r2 = _affine_fit(observed, target)
    aligned = np.zeros_like(truth)  # back to [B, T, Z'], padding left at 0 and not drawn
    start = 0
    for i, n in enumerate(lengths):
        aligned[i, :n] = fitted[start:start + n]
        start += n
    titles = [f"true (solid) vs inferred, affinely aligned (dashed); R^2 = {v:.3f}"
              for v in r2]
    return _paths(truth, aligned, lengths, "true z", titles, max_sequences, max_dims, names,
                  ("true state", "inferred, affinely aligned"), title)


def observation_paths(x: Tensor, x_rec: Tensor | None = None, mask: Tensor | None = None,
                      max_sequences: int = 4, max_dims: int = 8,
                      names: Sequence[str] | None = None, title: str | None = None) -> Figure:
    """Observed sequences ``x [B, T, X]`` (solid) and reconstructions ``x_rec [B, T, X]``
    (dashed) over time, one axis per feature (labelled ``names[d]`` when given);
    ``mask [B, T]`` hides the padding; ``title`` says what is shown (e.g. samples)."""
    if x.dim() != 3 or (x_rec is not None and x_rec.shape != x.shape):
        raise ValueError(f"x and x_rec must both be [B, T, X], got {list(x.shape)} and "
                         f"{None if x_rec is None else list(x_rec.shape)}")
    lengths = _lengths(mask, x.shape[0], x.shape[1])
    return _paths(_cpu(x), None if x_rec is None else _cpu(x_rec), lengths, "x", None,
                  max_sequences, max_dims, names, ("data", "reconstruction"), title)


def _principal_components(points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Projection of ``points [N, Z]`` onto its first two principal components (SVD of the
    centred data) and the fraction of variance each explains. Z = 1 gives a zero second axis."""
    centred = points - points.mean(axis=0, keepdims=True)
    _, s, vh = np.linalg.svd(centred, full_matrices=False)
    proj = centred @ vh[:2].T  # [N, min(2, Z)]
    var = s ** 2 / max(float((s ** 2).sum()), 1e-12)
    if proj.shape[1] == 1:
        proj = np.concatenate([proj, np.zeros_like(proj)], axis=1)
        var = np.concatenate([var, [0.0]])
    return proj, var[:2]


def latent_projection(z: Tensor, mask: Tensor | None = None, labels: Tensor | None = None,
                      max_sequences: int = 16) -> Figure:
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
        times = np.concatenate([np.arange(n) for n in lengths])
        proj, var = _principal_components(points)
        start = 0
        for n in lengths:
            ax.plot(proj[start:start + n, 0], proj[start:start + n, 1], color="grey",
                    lw=0.6, alpha=0.6)
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


def posterior_bands(truth: Tensor, bands: dict[str, tuple[Tensor, Tensor]], t: int | None = None,
                    names: Sequence[str] | None = None, density_dim: int = 0,
                    unit: str = "state units") -> Figure:
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
            raise ValueError(f"band {label!r}: mean and std must be [{steps}, {dims}] like "
                             f"truth, got {list(mean.shape)} and {list(std.shape)}")
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
            ax.fill_between(time, m - 2 * s, m + 2 * s, color=f"C{i}", alpha=0.25,
                            label=f"{label}: +-2 sd")
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
            m, s = float(_cpu(mean)[t, density_dim]), float(_cpu(std)[t, density_dim])
            density = np.exp(-0.5 * ((grid - m) / s) ** 2) / (s * math.sqrt(2 * math.pi))
            ax.plot(grid, density, color=f"C{i}", label=label)
        ax.axvline(true_value, color="k", lw=1.5, label="true state")
        ax.set_xlabel(f"{names[density_dim]} at t = {t + 1} ({unit})")
        ax.set_ylabel(f"density (1 / {unit})")
        ax.legend(fontsize=7)
    return fig


def run_comparison(runs: dict[str, Sequence[dict]],
                   keys: Sequence[str] = ("nelbo", "kl", "kl_weight"),
                   smooth: int = 1) -> Figure:
    """Training curves of several runs on shared axes, one axis per record key (titles from
    ``CURVES``), one colour per run: e.g. a run with KL annealing against one without.
    ``runs`` maps a label to a history of :func:`vaelab.train.fit`; ``smooth`` > 1 draws the
    running mean over that many train records."""
    if not runs:
        raise ValueError("runs is empty; pass {label: history}")
    titles = dict(CURVES)
    fig = Figure(figsize=(4.2 * len(keys), 3.4), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(keys)))
    for ax, key in zip(axes, keys):
        for i, (label, history) in enumerate(runs.items()):
            points = [(r["step"], r[key]) for r in history
                      if r.get("kind") == "train" and key in r]
            if not points:
                continue
            steps, values = (np.asarray(v, dtype=np.float64) for v in zip(*points))
            if smooth > 1 and len(values) >= smooth:
                values = np.convolve(values, np.ones(smooth) / smooth, mode="valid")
                steps = steps[smooth - 1:]
            ax.plot(steps, values, color=f"C{i}", lw=1.2, label=label)
        ax.set_title(titles.get(key, key), fontsize=10)
        ax.set_xlabel("training step")
        ax.set_ylabel("nats per time step" if key in ("nelbo", "log_likelihood", "kl")
                      else "weight (1 = the ELBO)" if key == "kl_weight" else key)
        ax.legend(fontsize=8)
    return fig


# ----------------------------------------------------------------------------- piano rolls


def piano_roll(x: Tensor, mask: Tensor | None = None, titles: Sequence[str] | None = None,
               note_min: int = 21) -> Figure:
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
    axes = np.atleast_1d(fig.subplots(b, 1))
    for i, ax in enumerate(axes):
        ax.imshow(rolls[i, :lengths[i]].T, origin="lower", aspect="auto", cmap="gray_r",
                  vmin=0, vmax=1, interpolation="nearest",
                  extent=(-0.5, lengths[i] - 0.5, note_min - 0.5, note_min + p - 0.5))
        ax.set_ylabel("MIDI note")
        if titles is not None and i < len(titles):
            ax.set_title(titles[i], fontsize=10)
    axes[-1].set_xlabel("time step t")
    return fig


# ----------------------------------------------------------------------------- flows


@torch.no_grad()
def flow_log_density(model: nn.Module, context: Tensor, xs: Tensor, ys: Tensor) -> Tensor:
    """Returns log p(x | a) of a conditional flow model (``model.flow(a)`` a distribution over
    ``x [2]``) on the grid ``xs [Nx] x ys [Ny]``, ``[Ny, Nx]`` (row ``i`` is ``y = ys[i]``), for
    one context ``context [A]``."""
    flow = getattr(model, "flow", None)
    if flow is None or model.config.x_dim != 2:
        raise ValueError("density contours need a conditional flow model (model.flow(a)) over "
                         "2-D x, such as realnvp on moons")
    p = next(model.parameters())
    gx, gy = torch.meshgrid(xs.to(p), ys.to(p), indexing="xy")  # [Ny, Nx] each
    points = torch.stack([gx, gy], dim=-1).reshape(-1, 2)  # [Ny * Nx, 2]
    a = context.to(p).reshape(1, -1).expand(len(points), -1)  # [Ny * Nx, A]
    return flow(a).log_prob(points).reshape(gx.shape)


@torch.no_grad()
def flow_density(model: nn.Module, contexts: Tensor, extent: float = 2.5,
                 resolution: int = 80, n_samples: int = 300) -> Figure:
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
        for ax, a in zip(axes, contexts):
            density = flow_log_density(model, a, grid, grid).exp()
            ax.contourf(_cpu(grid), _cpu(grid), _cpu(density), levels=12, cmap="Blues")
            _, x = model.sample(n_samples, a=a.reshape(1, -1).expand(n_samples, -1).to(
                next(model.parameters())))
            x = _cpu(x)
            ax.scatter(x[:, 0], x[:, 1], s=2, color="C3", alpha=0.5)
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
def conditional_densities(models: dict[str, nn.Module], context: Tensor, extent: float = 2.5,
                          resolution: int = 100, data: Tensor | None = None,
                          samples: dict[str, Tensor] | None = None) -> Figure:
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
    densities = {name: model(a).log_prob(points).exp().reshape(resolution, resolution)
                 for name, model in models.items()}
    top = max(float(d.max()) for d in densities.values())
    levels = np.linspace(0.0, top, 16)
    fig = Figure(figsize=(3.4 * len(models) + 1.0, 3.6), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(models), sharex=True, sharey=True))
    for ax, (name, density) in zip(axes, densities.items()):
        filled = ax.contourf(_cpu(grid), _cpu(grid), _cpu(density), levels=levels,
                             cmap="viridis")
        if data is not None:
            d = _cpu(data)
            ax.scatter(d[:, 0], d[:, 1], s=2, color="w", alpha=0.6, label="data")
        if samples is not None and name in samples:
            s = _cpu(samples[name])
            ax.scatter(s[:, 0], s[:, 1], s=2, color="C3", alpha=0.7, label="samples")
        ax.set(xlim=(-extent, extent), ylim=(-extent, extent), aspect="equal", title=name,
               xlabel="$x_1$ (data units)")
        if data is not None or (samples is not None and name in samples):
            ax.legend(loc="lower left", fontsize=7, markerscale=3, framealpha=0.6)
    axes[0].set_ylabel("$x_2$ (data units)")
    fig.colorbar(filled, ax=list(axes), label="density p(x | a) (per unit area)", shrink=0.9,
                 format="%.2f")
    return fig


@torch.no_grad()
def flow_layers(flow: nn.Module, context: Tensor, layers: Sequence[int], extent: float = 2.5,
                resolution: int = 100, n_samples: int = 800, seed: int = 0) -> Figure:
    """The base density of a conditional RealNVP carried through its first ``k`` coupling
    layers, one panel per ``k`` in ``layers`` (0 = the base, ``len(flow.nets)`` = the whole
    flow), at one context ``context [A]``.

    Each panel shows the exact density of ``z`` pushed through the first ``k`` transforms
    (``TransformedDistribution(base, flow.transforms(a)[:k])``) and the same ``n_samples``
    base points ``z`` carried along, coloured by their first base coordinate ``z_1`` so that
    one can follow where each part of the base goes. ``flow`` is a
    :class:`~vaelab.flows.ConditionalRealNVP` or a model holding one as ``model.flow``."""
    flow = getattr(flow, "flow", flow)
    total = len(flow.nets)
    layers = list(layers)
    bad = [k for k in layers if not 0 <= k <= total]
    if not layers or bad:
        raise ValueError(f"layers must be counts between 0 and {total} (the flow's coupling "
                         f"layers), got {layers}")
    p = next(flow.parameters())
    grid, points = _density_grid(extent, resolution, p)
    a = context.to(p).reshape(1, -1)
    transforms = flow.transforms(a.expand(len(points), -1))
    base = flow.base_distribution(a.expand(len(points), -1))
    g = torch.Generator(device=p.device).manual_seed(seed)
    a_s = a.expand(n_samples, -1)
    b = flow.base_distribution(a_s)
    # base points from the base's own mean and scale, with the generator fixed
    z = b.mean + b.stddev * torch.randn(n_samples, 2, generator=g, device=p.device,
                                        dtype=p.dtype)
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
    for ax, k, density, x in zip(axes, layers, densities, carried):
        filled = ax.contourf(_cpu(grid), _cpu(grid), _cpu(density), levels=levels,
                             cmap="Greys")
        dots = ax.scatter(*_cpu(x).T, s=2, c=colour, cmap="plasma", alpha=0.6)
        title = "base" if k == 0 else f"after {k} of {total} layers"
        ax.set(xlim=(-extent, extent), ylim=(-extent, extent), aspect="equal", title=title,
               xlabel="first coordinate (data units)")
    axes[0].set_ylabel("second coordinate (data units)")
    fig.colorbar(filled, ax=list(axes), label="density (per unit area)", shrink=0.9,
                 format="%.2f")
    fig.colorbar(dots, ax=list(axes), label="the point's base coordinate $z_1$", shrink=0.9)
    return fig


# ----------------------------------------------------------------------------- dashboard


# units of the built-in systems' named quantities (Data.info's state_names / obs_names)
UNITS = {"theta": "rad", "omega": "rad/s", "cos theta": "unitless", "sin theta": "unitless"}


def _with_units(names: Sequence[str] | None, count: int) -> list[str] | None:
    """Axis labels ``"name (unit)"`` for the first ``count`` of ``names`` (None without)."""
    if not names or len(names) < count:
        return None
    return [f"{n} ({UNITS.get(n, 'data units')})" for n in list(names)[:count]]


@torch.no_grad()
def model_figures(model: nn.Module, batch: Batch, info: dict | None = None,
                  labels: Tensor | None = None, n_samples: int = 16) -> dict[str, Figure]:
    """The figures that suit a model and its data, by title, for the dashboard.

    Images (``info["image_shape"]``): data above reconstructions, samples, a latent traversal
    (when the model has ``decode``) and the latent projection. Piano rolls
    (``info["kind"] == "piano_roll"``): data, reconstruction and sample rolls. Other sequences:
    latent paths (against ``batch.z`` when known), observations with their reconstructions,
    and the latent projection. A conditional flow over 2-D x (``model.flow``, contexts
    ``batch.a``): density contours per context. ``batch`` is a fixed set of
    validation examples, ``labels [B]`` optional classes that colour static latents; the model
    is used as it is (pass a copy while it trains).
    """
    info = info or {}
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    batch = batch.to(device)
    figures: dict[str, Figure] = {}
    try:
        z = model.latents(batch)
        sequence = batch.x.dim() == 3
        latent = hasattr(getattr(model, "config", None), "z_dim")  # a flow has no latents
        if "image_shape" in info and not sequence:
            shape = info["image_shape"]
            k = min(len(batch), 8)
            if latent:
                recon = model.reconstruct(batch)
                figures["data (top) and reconstructions (bottom)"] = image_grid(
                    torch.cat([batch.x[:k], recon[:k]]), shape, ncols=k)
            else:  # a flow's "reconstruction" is x itself: only the data
                figures["data"] = image_grid(batch.x[:k], shape, ncols=k)
            _, x_sample = model.sample(n_samples)
            figures["samples"] = image_grid(x_sample, shape, ncols=8)
            if hasattr(model, "decode"):
                dims = range(min(model.config.z_dim, 8))
                figures["latent traversal"] = latent_traversal(
                    model, shape, dims, torch.linspace(-2.5, 2.5, 9))
            if latent:
                figures["latent space"] = latent_projection(z, labels=labels)
            else:
                fig = figures["base points z = g^-1(x)"] = latent_projection(z, labels=labels)
                fig.axes[0].set_title("base points z = g^-1(x), first two principal components",
                                      fontsize=10)
        elif sequence and info.get("kind") == "piano_roll":
            k = min(len(batch), 2)
            recon = model.reconstruct(batch)
            mask = None if batch.mask is None else batch.mask[:k]
            figures["data"] = piano_roll(batch.x[:k], mask)
            figures["reconstruction (note probabilities)"] = piano_roll(recon[:k], mask)
            _, x_sample = model.sample(k, steps=batch.x.shape[1])
            figures["sample (note probabilities)"] = piano_roll(x_sample)
            for title in ("reconstruction (note probabilities)", "sample (note probabilities)"):
                fig = figures[title]  # grey levels are probabilities: say which
                fig.colorbar(fig.axes[0].images[0], ax=fig.axes, label="P(note on)",
                             shrink=0.9)
            figures["latent space"] = latent_projection(z, batch.mask)
        elif getattr(model, "flow", None) is not None and batch.a is not None \
                and batch.x.shape[-1] == 2:
            # a conditional flow: densities for a few contexts of the batch, samples on top
            extent = float(batch.x.abs().max()) * 1.15
            figures["density p(x | a) per context, samples on top"] = flow_density(
                model, batch.a[:4], extent=extent)
            figures["base points z = g^-1(x | a)"] = latent_projection(z, labels=labels)
        elif sequence:
            shown = min(batch.x.shape[-1], 8)  # the dimensions _paths draws
            obs = _with_units(info.get("obs_names"), shown)
            states = None if batch.z is None else _with_units(
                info.get("state_names"), min(batch.z.shape[-1], 8))
            figures["latent paths"] = latent_trajectories(z, batch.z, batch.mask, names=states)
            figures["observations (solid) and reconstructions (dashed)"] = observation_paths(
                batch.x, model.reconstruct(batch), batch.mask, names=obs)
            k = min(len(batch), 4)
            _, x_sample = model.sample(k, steps=batch.x.shape[1],
                                       a=None if batch.a is None else batch.a[:k])
            figures["samples (driven by the same actions when there are any)"] = \
                observation_paths(x_sample, None, None if batch.mask is None else batch.mask[:k],
                                  names=obs, title="samples from the model")
            figures["latent space"] = latent_projection(z, batch.mask)
        else:
            figures["latent space"] = latent_projection(z, labels=labels)
    finally:
        model.train(was_training)
    return figures


# ----------------------------------------------------------------------------- exploration

MARKER = "time-marker"  # gid of the lines that mark the explored time step t
MAX_LATENT_LINES = 8  # more latent dimensions are drawn as a heat map, one row each


def _mark_time(ax, t: int) -> None:
    """A vertical line at time step ``t`` (gid :data:`MARKER`)."""
    ax.axvline(t, color="C3", lw=1.5, alpha=0.8, gid=MARKER)


def _side_legend(ax, **kw) -> None:
    """The legend of a time axis to its right, outside the data."""
    ax.legend(fontsize=9, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0,
              **kw)


def _latent_path_axis(fig, ax, z: np.ndarray, t: int) -> None:
    """Posterior means ``z [T, Z]`` against time with step ``t`` marked: one line per
    dimension (a legend up to :data:`MAX_LATENT_LINES`), a heat map beyond."""
    steps, z_dim = z.shape
    if z_dim <= MAX_LATENT_LINES:
        for u in range(z_dim):
            ax.plot(np.arange(steps), z[:, u], color=f"C{u}", lw=1.2, label=f"$z_{{{u}}}$")
            ax.plot([t], [z[t, u]], "o", color=f"C{u}", ms=6)
        ax.set_ylabel("$E_q[z_t]$ (latent units)")
        _side_legend(ax, title="dimension", title_fontsize=9)
    else:
        bound = float(np.abs(z).max()) or 1.0
        image = ax.imshow(z.T, aspect="auto", origin="lower", cmap="RdBu_r", vmin=-bound,
                          vmax=bound, interpolation="nearest",
                          extent=(-0.5, steps - 0.5, -0.5, z_dim - 0.5))
        ax.set_ylabel("latent dimension u")
        ax.yaxis.set_major_locator(ticker.MaxNLocator(6, integer=True))
        fig.colorbar(image, ax=ax, label="$E_q[z_{t,u}]$ (latent units)", pad=0.01)
    ax.set_xlim(-0.5, steps - 0.5)
    ax.set_xlabel("time step t")
    _mark_time(ax, t)
    ax.set_title(f"latent path (posterior means) of this sequence, t = {t} marked",
                 fontsize=11)


def _check_frame(z: np.ndarray, x: np.ndarray, t: int) -> None:
    if z.ndim != 2 or x.ndim != 2 or len(z) != len(x):
        raise ValueError(f"z and x must be one sequence, [T, Z] and [T, X] with the same T, "
                         f"got {list(z.shape)} and {list(x.shape)}")
    if not 0 <= t < len(x):
        raise ValueError(f"t must be an observed step in 0..{len(x) - 1}, got {t}")


NOTE_NAMES = ("C", "C#", "D", "D#", "E", "F", "F#", "G", "G#", "A", "A#", "B")


def note_name(midi: int) -> str:
    """The name of MIDI note ``midi`` in scientific pitch notation (60 is "C4")."""
    return f"{NOTE_NAMES[midi % 12]}{midi // 12 - 1}"


def piano_roll_frame(z: Tensor, x: Tensor, t: int, x_rec: Tensor | None = None,
                     note_min: int = 21) -> Figure:
    """One piano-roll sequence explored at time step ``t``: its latent path (posterior means
    ``z [T, Z]``), the roll ``x [T, P]`` with ``t`` marked, and the notes at ``t`` (the
    data's notes on, and the reconstruction's note probabilities ``x_rec [T, P]`` when
    given) along the keyboard, C keys named."""
    zs, xs = _cpu(z), _cpu(x)
    _check_frame(zs, xs, t)
    steps, keys = xs.shape
    # the keyboard from the C below the sequence's lowest note to the C above its highest
    played = np.flatnonzero((xs > 0.5).any(axis=0)) + note_min
    low, high = (played.min(), played.max()) if len(played) else (60, 71)
    low, high = max(note_min, low // 12 * 12), min(note_min + keys - 1, high // 12 * 12 + 12)
    fig = Figure(figsize=(10, 8.2), layout="constrained")
    axes = fig.subplots(3, 1, height_ratios=[1.1, 1.4, 1.0])
    _latent_path_axis(fig, axes[0], zs, t)
    ax = axes[1]
    ax.imshow(xs.T, origin="lower", aspect="auto", cmap="gray_r", vmin=0, vmax=1,
              interpolation="nearest",
              extent=(-0.5, steps - 0.5, note_min - 0.5, note_min + keys - 0.5))
    _mark_time(ax, t)
    ax.set(xlim=(-0.5, steps - 0.5), ylim=(low - 0.5, high + 0.5), xlabel="time step t",
           ylabel="MIDI note")
    ax.set_title(f"piano roll (black: note on), notes {note_name(low)} to {note_name(high)}",
                 fontsize=11)
    axes[0].sharex(ax)
    ax = axes[2]
    notes = np.arange(note_min, note_min + keys)
    ax.bar(notes, xs[t], width=0.9, color="0.2", label="data: note on at t")
    if x_rec is not None:
        rec = _cpu(x_rec)
        ax.step(notes, rec[t], where="mid", color="C0", lw=1.5,
                label="reconstruction: P(note on | $z_t$)")
    ax.set(xlim=(low - 0.5, high + 0.5), ylim=(0, 1.05), ylabel="note on / probability",
           xlabel="piano key (C and its octave named; MIDI note = position)")
    ticks = [n for n in range(low, high + 1) if n % 12 in (0, 7)]  # C and G of each octave
    ax.set_xticks(ticks, [note_name(n) for n in ticks])
    ax.xaxis.set_minor_locator(ticker.MultipleLocator(1))
    on = [note_name(int(n)) for n in notes[xs[t] > 0.5]]
    ax.set_title(f"notes at t = {t}: " + (", ".join(on) if on else "none"), fontsize=11)
    ax.legend(fontsize=9, loc="upper right")
    return fig


def pendulum_frame(z: Tensor, x: Tensor, t: int, z_true: Tensor | None = None,
                   x_rec: Tensor | None = None, dt: float | None = None) -> Figure:
    """One pendulum sequence explored at time step ``t``: its latent path (posterior means
    ``z [T, Z]``), the observations ``x [T, 2] = (cos theta, sin theta)`` over time (with the
    reconstruction ``x_rec`` dashed), the true angle and velocity ``z_true [T, 2]`` (rad,
    rad/s) when known, and the pendulum at ``t``: the true rod and the bob positions the
    observation and reconstruction give (theta = 0 hangs straight down)."""
    zs, xs = _cpu(z), _cpu(x)
    _check_frame(zs, xs, t)
    if xs.shape[1] != 2:
        raise ValueError(f"pendulum observations must be [T, 2] = (cos theta, sin theta), got "
                         f"{list(xs.shape)}")
    steps = len(xs)
    time = np.arange(steps)
    # at most 11.5 in wide: shown in a ~1000 px column, its 9 pt text stays >= 9 px
    fig = Figure(figsize=(11.5, 7.5), layout="constrained")
    grid = fig.add_gridspec(3, 2, width_ratios=[2.2, 1])
    ax_z = fig.add_subplot(grid[0, 0])
    _latent_path_axis(fig, ax_z, zs, t)
    ax_x = fig.add_subplot(grid[1, 0], sharex=ax_z)
    for d, name in enumerate(("cos theta", "sin theta")):
        ax_x.plot(time, xs[:, d], color=f"C{d}", lw=1.2, label=f"$x$: {name}")
        if x_rec is not None:
            ax_x.plot(time, _cpu(x_rec)[:, d], color=f"C{d}", lw=1.2, ls="--",
                      label=f"reconstruction: {name}")
    _mark_time(ax_x, t)
    ax_x.set(xlabel="time step t", ylabel="observation (unitless)", ylim=(-1.35, 1.35))
    ax_x.set_title("observations $x_t$ = (cos theta, sin theta) + noise", fontsize=11)
    _side_legend(ax_x)
    ax_s = fig.add_subplot(grid[2, 0], sharex=ax_z)
    if z_true is not None:
        truth = _cpu(z_true)
        ax_s.plot(time, truth[:, 0], color="k", lw=1.2, label="angle theta (rad)")
        ax_s.plot(time, truth[:, 1], color="C2", lw=1.2, label="velocity omega (rad/s)")
        ax_s.set_ylabel("true state (rad, rad/s)")
        _side_legend(ax_s)
    else:
        ax_s.text(0.5, 0.5, "true state not known for this data", ha="center", va="center",
                  transform=ax_s.transAxes, color="grey")
    ax_s.set_title("true state (what the latents should capture)", fontsize=11)
    _mark_time(ax_s, t)
    ax_s.set_xlabel("time step t")
    ax_p = fig.add_subplot(grid[:, 1])
    circle = np.linspace(0, 2 * np.pi, 200)
    ax_p.plot(np.cos(circle), np.sin(circle), color="0.8", lw=1, ls=":")
    ax_p.plot([0], [0], "s", color="k", ms=6)
    if z_true is not None:
        theta = float(_cpu(z_true)[t, 0])
        bob = (math.sin(theta), -math.cos(theta))
        ax_p.plot([0, bob[0]], [0, bob[1]], color="k", lw=2.5, gid="true-rod",
                  label=f"true state: theta = {theta:.2f} rad")
        ax_p.plot(*bob, "o", color="k", ms=12)
    ax_p.plot(xs[t, 1], -xs[t, 0], "o", color="C3", ms=9, gid="observed-bob",
              label="observed bob, from $x_t$")
    if x_rec is not None:
        rec = _cpu(x_rec)
        ax_p.plot(rec[t, 1], -rec[t, 0], "x", color="C0", ms=10, mew=2.5,
                  label="reconstruction E[$x_t$ | $z_t$]")
    ax_p.set(xlim=(-1.4, 1.4), ylim=(-1.4, 1.4), aspect="equal",
             xlabel="horizontal (pendulum lengths)", ylabel="vertical (pendulum lengths)")
    when = f"t = {t}" + (f" ({t * dt:.1f} s)" if dt else "")
    ax_p.set_title(f"the pendulum at {when}", fontsize=11)
    ax_p.legend(fontsize=9, loc="upper center", bbox_to_anchor=(0.5, -0.17))
    return fig


def observation_frame(z: Tensor, x: Tensor, t: int, z_true: Tensor | None = None,
                      x_rec: Tensor | None = None, obs_names: Sequence[str] | None = None,
                      state_names: Sequence[str] | None = None) -> Figure:
    """One sequence of a state-space data set explored at time step ``t``: its latent path
    (posterior means ``z [T, Z]``), the observations ``x [T, X]`` over time (reconstruction
    ``x_rec`` dashed) and, for 2-D observations, their plane with the path, the observation
    at ``t`` and, when ``z_true`` holds the observed quantities (``obs_names`` found among
    ``state_names``, as the linear system's positions), the true value at ``t``."""
    zs, xs = _cpu(z), _cpu(x)
    _check_frame(zs, xs, t)
    steps, x_dim = xs.shape
    names = list(obs_names) if obs_names else [f"x_{d}" for d in range(x_dim)]
    plane = x_dim == 2
    fig = Figure(figsize=(11.5, 6.4) if plane else (10, 6.4), layout="constrained")
    grid = fig.add_gridspec(2, 2 if plane else 1, width_ratios=[2, 1.2] if plane else None)
    ax_z = fig.add_subplot(grid[0, 0])
    _latent_path_axis(fig, ax_z, zs, t)
    ax_x = fig.add_subplot(grid[1, 0], sharex=ax_z)
    time = np.arange(steps)
    for d in range(min(x_dim, 8)):
        ax_x.plot(time, xs[:, d], color=f"C{d}", lw=1.2, label=f"$x$: {names[d]}")
        if x_rec is not None:
            ax_x.plot(time, _cpu(x_rec)[:, d], color=f"C{d}", lw=1.2, ls="--",
                      label=f"reconstruction: {names[d]}")
    _mark_time(ax_x, t)
    ax_x.set(xlabel="time step t", ylabel="observation (data units)")
    ax_x.set_title("observations x_t (dashed: reconstruction E[x_t | z_t])", fontsize=11)
    _side_legend(ax_x)
    if not plane:
        return fig
    ax_p = fig.add_subplot(grid[:, 1])
    ax_p.plot(xs[:, 0], xs[:, 1], color="0.7", lw=1, label="observed path")
    ax_p.plot(xs[t, 0], xs[t, 1], "o", color="C3", ms=9, gid="observed-point",
              label=f"observation $x_t$, t = {t}")
    if x_rec is not None:
        rec = _cpu(x_rec)
        ax_p.plot(rec[t, 0], rec[t, 1], "x", color="C0", ms=10, mew=2.5,
                  label="reconstruction E[$x_t$ | $z_t$]")
    found = [list(state_names).index(n) for n in names if state_names and n in state_names]
    if z_true is not None and len(found) == 2:
        truth = _cpu(z_true)[:, found]
        ax_p.plot(truth[:, 0], truth[:, 1], color="k", lw=1, ls="--", label="true path")
        ax_p.plot(truth[t, 0], truth[t, 1], "*", color="k", ms=13, label="true state at t")
    ax_p.set(xlabel=f"{names[0]} (data units)", ylabel=f"{names[1]} (data units)",
             aspect="equal")
    ax_p.set_title("observation plane", fontsize=11)
    ax_p.legend(fontsize=9, loc="upper center", bbox_to_anchor=(0.5, -0.17))
    return fig


@torch.no_grad()
def sequence_explorer(model: nn.Module, batch: Batch, t: int, index: int = 0,
                      info: dict | None = None) -> Figure:
    """Sequence ``index`` of ``batch`` explored at time step ``t``, from the model's
    posterior means (``model.latents``) and reconstruction (``model.reconstruct``): a
    piano-roll frame (``info["kind"] == "piano_roll"``), the pendulum
    (``info["system"] == "pendulum"``), else the observations (and their plane when 2-D).
    ``t`` counts the sequence's observed steps (0-based)."""
    info = info or {}
    if batch.x.dim() != 3:
        raise ValueError(f"sequence_explorer needs sequences x [B, T, X], got "
                         f"{list(batch.x.shape)}; static latents are explored with sliders")
    if not 0 <= index < len(batch):
        raise ValueError(f"index must be in 0..{len(batch) - 1}, got {index}")
    device = next(model.parameters()).device
    one = Batch(*(None if v is None else v[index:index + 1].to(device)
                  for v in (batch.x, batch.a, batch.mask, batch.z)))
    steps = int(one.mask.sum()) if one.mask is not None else one.x.shape[1]
    was_training = model.training
    model.eval()
    try:
        z = model.latents(one)[0, :steps]  # [T, Z], observed steps only
        x_rec = model.reconstruct(one)[0, :steps]
    finally:
        model.train(was_training)
    x = one.x[0, :steps]
    z_true = None if one.z is None else one.z[0, :steps]
    if info.get("kind") == "piano_roll":
        return piano_roll_frame(z, x, t, x_rec)
    if info.get("system") == "pendulum":
        return pendulum_frame(z, x, t, z_true, x_rec, dt=(info.get("params") or {}).get("dt"))
    return observation_frame(z, x, t, z_true, x_rec, info.get("obs_names"),
                             info.get("state_names"))
