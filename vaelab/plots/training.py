"""Training curves, latent usage and run comparisons."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from vaelab.plots.base import (
    ACTIVE_THRESHOLD,
    CURVES,
    VAL_KEYS,
    Figure,
)

# ----------------------------------------------------------------------------- training


def training_curves(
    history: Sequence[dict],
    reference: dict | None = None,
    diagnostics: Sequence[dict] | None = None,
    figsize: tuple[float, float] = (13, 6),
    unit: str = "nats",
) -> Figure:
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
    ylabels = {
        "nelbo": unit,
        "log_likelihood": unit,
        "kl": unit,
        "kl_weight": "weight (1 = the ELBO)",
        "grad_norm": "L2 norm",
    }
    train = [r for r in history if r.get("kind") == "train"]
    val = [r for r in history if r.get("kind") == "val"]
    weights = {r["kl_weight"] for r in train if "kl_weight" in r}
    constant_weight = weights.pop() if len(weights) == 1 else None
    curves = [
        (key, title)
        for key, title in CURVES
        if not (key == "kl_weight" and constant_weight is not None)
    ]
    panels = len(curves) + (diagnostics is not None)
    fig = Figure(figsize=figsize)
    # a fixed layout: redrawn every few seconds by the dashboard, and constrained layout
    # doubles the drawing time
    fig.subplots_adjust(left=0.06, right=0.98, bottom=0.08, top=0.95, wspace=0.25, hspace=0.4)
    axes = list(fig.subplots(2, math.ceil(panels / 2)).ravel())
    for extra in axes[panels:]:  # no empty panel
        fig.delaxes(extra)
    for ax, (key, title) in zip(axes, curves, strict=False):
        if key == "kl" and constant_weight is not None:
            title = f"{title}; KL weight {constant_weight:g} throughout"
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("step")
        ax.set_ylabel(ylabels.get(key, ""))
        points = [(r["step"], r[key]) for r in train if key in r]
        if points:
            steps, values = zip(*points, strict=False)
            ax.plot(steps, values, lw=1, color="C0", label="train")
        vpoints = [(r["step"], r[key]) for r in val if key in r]
        if key in VAL_KEYS and vpoints:
            steps, values = zip(*vpoints, strict=False)
            ax.plot(steps, values, "o", color="C3", ms=5, label="validation")
        if not points and not vpoints:
            ax.text(
                0.5,
                0.5,
                "no records yet",
                ha="center",
                va="center",
                transform=ax.transAxes,
                color="grey",
            )
    reference = reference or {}
    for split, colour in (("train", "C2"), ("val", "C1")):
        if f"exact_nll_{split}" in reference:
            axes[0].axhline(
                reference[f"exact_nll_{split}"],
                color=colour,
                ls="--",
                lw=1,
                label=f"exact -log p(x), true system ({split})",
            )
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
        steps, values = zip(*points, strict=False)
        ax.plot(steps, values, "o-", ms=3, lw=1, color="C4")
        z_dim = len(diagnostics[-1]["activity"])
        ax.set_ylim(-0.3, z_dim + 0.3)
        ax.axhline(z_dim, color="grey", lw=0.8, ls=":")
    else:
        ax.text(
            0.5,
            0.5,
            "no records yet",
            ha="center",
            va="center",
            transform=ax.transAxes,
            color="grey",
        )
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
    ax.set_title(
        f"activity: {int((activity > threshold).sum())} of {len(activity)} "
        f"active dimensions{step}",
        fontsize=10,
    )
    ax.set_ylabel("Cov_x(E_q[z_u]) (squared latent units)")
    ax.legend(fontsize=8)
    # every label readable: at most 16 tick labels, however many dimensions
    ticks = dims[:: max(1, math.ceil(len(dims) / 16))]
    if kl is not None:
        kl = np.asarray(kl, dtype=np.float64)
        axes[0].bar(dims, kl, color=colours)
        axes[0].set_title(f"KL per dimension (total {kl.sum():.3f} {unit})", fontsize=10)
        axes[0].set_ylabel(f"KL ({unit})")
    for a in axes:
        a.set_xlabel("latent dimension u")
        a.set_xticks(ticks)
    return fig


def run_comparison(
    runs: dict[str, Sequence[dict]],
    keys: Sequence[str] = ("nelbo", "kl", "kl_weight"),
    smooth: int = 1,
) -> Figure:
    """Training curves of several runs on shared axes, one axis per record key (titles from
    ``CURVES``), one colour per run: e.g. a run with KL annealing against one without.
    ``runs`` maps a label to a history of :func:`vaelab.train.fit`; ``smooth`` > 1 draws the
    running mean over that many train records."""
    if not runs:
        raise ValueError("runs is empty; pass {label: history}")
    titles = dict(CURVES)
    fig = Figure(figsize=(4.2 * len(keys), 3.4), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(keys)))
    for ax, key in zip(axes, keys, strict=False):
        for i, (label, history) in enumerate(runs.items()):
            points = [
                (r["step"], r[key]) for r in history if r.get("kind") == "train" and key in r
            ]
            if not points:
                continue
            steps, values = (np.asarray(v, dtype=np.float64) for v in zip(*points, strict=False))
            if smooth > 1 and len(values) >= smooth:
                values = np.convolve(values, np.ones(smooth) / smooth, mode="valid")
                steps = steps[smooth - 1 :]
            ax.plot(steps, values, color=f"C{i}", lw=1.2, label=label)
        ax.set_title(titles.get(key, key), fontsize=10)
        ax.set_xlabel("training step")
        ax.set_ylabel(
            "nats per time step"
            if key in ("nelbo", "log_likelihood", "kl")
            else "weight (1 = the ELBO)"
            if key == "kl_weight"
            else key
        )
        ax.legend(fontsize=8)
    return fig
