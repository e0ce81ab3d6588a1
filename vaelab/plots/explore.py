"""The sequence explorer: one time step of a sequence, its latents and what the model makes
of it."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from matplotlib import ticker
from torch import Tensor

from vaelab.data import Batch
from vaelab.plots.base import (
    Figure,
    _cpu,
)
from vaelab.protocol import Model

# ----------------------------------------------------------------------------- exploration

MARKER = "time-marker"  # gid of the lines that mark the explored time step t
MAX_LATENT_LINES = 8  # more latent dimensions are drawn as a heat map, one row each


def _mark_time(ax, t: int) -> None:
    """A vertical line at time step ``t`` (1..T; gid :data:`MARKER`)."""
    ax.axvline(t, color="C3", lw=1.5, alpha=0.8, gid=MARKER)


def _times(steps: int) -> np.ndarray:
    """The time axis t = 1..T, counted as the text counts steps."""
    return np.arange(1, steps + 1)


def _side_legend(ax, **kw) -> None:
    """The legend of a time axis to its right, outside the data."""
    ax.legend(fontsize=9, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0, **kw)


def _latent_path_axis(fig, ax, z: np.ndarray, t: int) -> None:
    """Posterior means ``z [T, Z]`` against time t = 1..T with step ``t`` marked: one line
    per dimension (a legend up to :data:`MAX_LATENT_LINES`), a heat map beyond."""
    steps, z_dim = z.shape
    if z_dim <= MAX_LATENT_LINES:
        for u in range(z_dim):
            ax.plot(_times(steps), z[:, u], color=f"C{u}", lw=1.2, label=f"$z_{{{u + 1}}}$")
            ax.plot([t], [z[t - 1, u]], "o", color=f"C{u}", ms=6)
        ax.set_ylabel("$E_q[z_t]$ (latent units)")
        _side_legend(ax, title="dimension", title_fontsize=9)
    else:
        bound = float(np.abs(z).max()) or 1.0
        image = ax.imshow(
            z.T,
            aspect="auto",
            origin="lower",
            cmap="RdBu_r",
            vmin=-bound,
            vmax=bound,
            interpolation="nearest",
            extent=(0.5, steps + 0.5, 0.5, z_dim + 0.5),
        )
        ax.set_ylabel("latent dimension u")
        ax.yaxis.set_major_locator(ticker.MaxNLocator(6, integer=True))
        fig.colorbar(image, ax=ax, label="$E_q[z_{t,u}]$ (latent units)", pad=0.01)
    ax.set_xlim(0.5, steps + 0.5)
    ax.set_xlabel("time step t")
    _mark_time(ax, t)
    ax.set_title(f"latent path (posterior means) of this sequence, t = {t} marked", fontsize=11)


def _check_frame(z: np.ndarray, x: np.ndarray, t: int) -> None:
    if z.ndim != 2 or x.ndim != 2 or len(z) != len(x):
        raise ValueError(
            f"z and x must be one sequence, [T, Z] and [T, X] with the same T, "
            f"got {list(z.shape)} and {list(x.shape)}"
        )
    if not 1 <= t <= len(x):
        raise ValueError(f"t must be an observed step in 1..{len(x)}, got {t}")


NOTE_NAMES = ("C", "C#", "D", "D#", "E", "F", "F#", "G", "G#", "A", "A#", "B")


def note_name(midi: int) -> str:
    """The name of MIDI note ``midi`` in scientific pitch notation (60 is "C4")."""
    return f"{NOTE_NAMES[midi % 12]}{midi // 12 - 1}"


def piano_roll_frame(
    z: Tensor, x: Tensor, t: int, x_rec: Tensor | None = None, note_min: int = 21
) -> Figure:
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
    ax.imshow(
        xs.T,
        origin="lower",
        aspect="auto",
        cmap="gray_r",
        vmin=0,
        vmax=1,
        interpolation="nearest",
        extent=(0.5, steps + 0.5, note_min - 0.5, note_min + keys - 0.5),
    )
    _mark_time(ax, t)
    ax.set(
        xlim=(0.5, steps + 0.5),
        ylim=(low - 0.5, high + 0.5),
        xlabel="time step t",
        ylabel="MIDI note",
    )
    ax.set_title(
        f"piano roll (black: note on), notes {note_name(low)} to {note_name(high)}", fontsize=11
    )
    axes[0].sharex(ax)
    ax = axes[2]
    notes = np.arange(note_min, note_min + keys)
    ax.bar(notes, xs[t - 1], width=0.9, color="0.2", label="data: note on at t")
    if x_rec is not None:
        rec = _cpu(x_rec)
        ax.step(
            notes,
            rec[t - 1],
            where="mid",
            color="C0",
            lw=1.5,
            label="reconstruction: P(note on | $z_t$)",
        )
    ax.set(
        xlim=(low - 0.5, high + 0.5),
        ylim=(0, 1.05),
        ylabel="note on / probability",
        xlabel="piano key (C and its octave named; MIDI note = position)",
    )
    ticks = [n for n in range(low, high + 1) if n % 12 in (0, 7)]  # C and G of each octave
    ax.set_xticks(ticks, [note_name(n) for n in ticks])
    ax.xaxis.set_minor_locator(ticker.MultipleLocator(1))
    on = [note_name(int(n)) for n in notes[xs[t - 1] > 0.5]]
    ax.set_title(f"notes at t = {t}: " + (", ".join(on) if on else "none"), fontsize=11)
    ax.legend(fontsize=9, loc="upper right")
    return fig


def pendulum_frame(
    z: Tensor,
    x: Tensor,
    t: int,
    z_true: Tensor | None = None,
    x_rec: Tensor | None = None,
    dt: float | None = None,
) -> Figure:
    """One pendulum sequence explored at time step ``t``: its latent path (posterior means
    ``z [T, Z]``), the observations ``x [T, 2] = (cos theta, sin theta)`` over time (with the
    reconstruction ``x_rec`` dashed), the true angle and velocity ``z_true [T, 2]`` (rad,
    rad/s) when known, and the pendulum at ``t``: the true rod and the bob positions the
    observation and reconstruction give (theta = 0 hangs straight down)."""
    zs, xs = _cpu(z), _cpu(x)
    _check_frame(zs, xs, t)
    if xs.shape[1] != 2:
        raise ValueError(
            f"pendulum observations must be [T, 2] = (cos theta, sin theta), got {list(xs.shape)}"
        )
    steps = len(xs)
    time = _times(steps)
    # at most 11.5 in wide: shown in a ~1000 px column, its 9 pt text stays >= 9 px
    fig = Figure(figsize=(11.5, 7.5), layout="constrained")
    grid = fig.add_gridspec(3, 2, width_ratios=[2.2, 1])
    ax_z = fig.add_subplot(grid[0, 0])
    _latent_path_axis(fig, ax_z, zs, t)
    ax_x = fig.add_subplot(grid[1, 0], sharex=ax_z)
    for d, name in enumerate(("cos theta", "sin theta")):
        ax_x.plot(time, xs[:, d], color=f"C{d}", lw=1.2, label=f"$x$: {name}")
        if x_rec is not None:
            ax_x.plot(
                time,
                _cpu(x_rec)[:, d],
                color=f"C{d}",
                lw=1.2,
                ls="--",
                label=f"reconstruction: {name}",
            )
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
        ax_s.text(
            0.5,
            0.5,
            "true state not known for this data",
            ha="center",
            va="center",
            transform=ax_s.transAxes,
            color="grey",
        )
    ax_s.set_title("true state (what the latents should capture)", fontsize=11)
    _mark_time(ax_s, t)
    ax_s.set_xlabel("time step t")
    ax_p = fig.add_subplot(grid[:, 1])
    circle = np.linspace(0, 2 * np.pi, 200)
    ax_p.plot(np.cos(circle), np.sin(circle), color="0.8", lw=1, ls=":")
    ax_p.plot([0], [0], "s", color="k", ms=6)
    if z_true is not None:
        theta = float(_cpu(z_true)[t - 1, 0])
        bob = (math.sin(theta), -math.cos(theta))
        ax_p.plot(
            [0, bob[0]],
            [0, bob[1]],
            color="k",
            lw=2.5,
            gid="true-rod",
            label=f"true state: theta = {theta:.2f} rad",
        )
        ax_p.plot(*bob, "o", color="k", ms=12)
    ax_p.plot(
        xs[t - 1, 1],
        -xs[t - 1, 0],
        "o",
        color="C3",
        ms=9,
        gid="observed-bob",
        label="observed bob, from $x_t$",
    )
    if x_rec is not None:
        rec = _cpu(x_rec)
        ax_p.plot(
            rec[t - 1, 1],
            -rec[t - 1, 0],
            "x",
            color="C0",
            ms=10,
            mew=2.5,
            label="reconstruction E[$x_t$ | $z_t$]",
        )
    ax_p.set(
        xlim=(-1.4, 1.4),
        ylim=(-1.4, 1.4),
        aspect="equal",
        xlabel="horizontal (pendulum lengths)",
        ylabel="vertical (pendulum lengths)",
    )
    when = f"t = {t}" + (f" ({(t - 1) * dt:.1f} s)" if dt else "")  # x_1 is at time 0
    ax_p.set_title(f"the pendulum at {when}", fontsize=11)
    ax_p.legend(fontsize=9, loc="upper center", bbox_to_anchor=(0.5, -0.17))
    return fig


def observation_frame(
    z: Tensor,
    x: Tensor,
    t: int,
    z_true: Tensor | None = None,
    x_rec: Tensor | None = None,
    obs_names: Sequence[str] | None = None,
    state_names: Sequence[str] | None = None,
) -> Figure:
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
    time = _times(steps)
    for d in range(min(x_dim, 8)):
        ax_x.plot(time, xs[:, d], color=f"C{d}", lw=1.2, label=f"$x$: {names[d]}")
        if x_rec is not None:
            ax_x.plot(
                time,
                _cpu(x_rec)[:, d],
                color=f"C{d}",
                lw=1.2,
                ls="--",
                label=f"reconstruction: {names[d]}",
            )
    _mark_time(ax_x, t)
    ax_x.set(xlabel="time step t", ylabel="observation (data units)")
    ax_x.set_title("observations x_t (dashed: reconstruction E[x_t | z_t])", fontsize=11)
    _side_legend(ax_x)
    if not plane:
        return fig
    ax_p = fig.add_subplot(grid[:, 1])
    ax_p.plot(xs[:, 0], xs[:, 1], color="0.7", lw=1, label="observed path")
    ax_p.plot(
        xs[t - 1, 0],
        xs[t - 1, 1],
        "o",
        color="C3",
        ms=9,
        gid="observed-point",
        label=f"observation $x_t$, t = {t}",
    )
    if x_rec is not None:
        rec = _cpu(x_rec)
        ax_p.plot(
            rec[t - 1, 0],
            rec[t - 1, 1],
            "x",
            color="C0",
            ms=10,
            mew=2.5,
            label="reconstruction E[$x_t$ | $z_t$]",
        )
    found = [list(state_names).index(n) for n in names if state_names and n in state_names]
    if z_true is not None and len(found) == 2:
        truth = _cpu(z_true)[:, found]
        ax_p.plot(truth[:, 0], truth[:, 1], color="k", lw=1, ls="--", label="true path")
        ax_p.plot(truth[t - 1, 0], truth[t - 1, 1], "*", color="k", ms=13, label="true state at t")
    ax_p.set(xlabel=f"{names[0]} (data units)", ylabel=f"{names[1]} (data units)", aspect="equal")
    ax_p.set_title("observation plane", fontsize=11)
    ax_p.legend(fontsize=9, loc="upper center", bbox_to_anchor=(0.5, -0.17))
    return fig


@torch.no_grad()
def sequence_explorer(
    model: Model, batch: Batch, t: int, index: int = 0, info: dict | None = None
) -> Figure:
    """Sequence ``index`` of ``batch`` explored at time step ``t``, from the model's
    posterior means (``model.latents``) and reconstruction (``model.reconstruct``): a
    piano-roll frame (``info["kind"] == "piano_roll"``), the pendulum
    (``info["system"] == "pendulum"``), else the observations (and their plane when 2-D).
    ``t`` counts the sequence's observed steps as the text does, 1..T."""
    info = info or {}
    if batch.x.dim() != 3:
        raise ValueError(
            f"sequence_explorer needs sequences x [B, T, X], got "
            f"{list(batch.x.shape)}; static latents are explored with sliders"
        )
    if not 0 <= index < len(batch):
        raise ValueError(f"index must be in 0..{len(batch) - 1}, got {index}")
    device = next(model.parameters()).device
    pick = lambda v: None if v is None else v[index : index + 1]
    one = Batch(batch.x[index : index + 1], pick(batch.a), pick(batch.mask), pick(batch.z))
    one = one.to(device)
    steps = int(one.mask.sum()) if one.mask is not None else one.x.shape[1]
    was_training = model.training
    model.eval()
    try:
        z = model.latents(one)[0, :steps]  # [T, Z], observed steps only
        recon = model.reconstruct(one)
    finally:
        model.train(was_training)
    if recon is None:
        raise ValueError(f"{model.name} has no decoder: there is no reconstruction to explore")
    x_rec = recon[0, :steps]
    x = one.x[0, :steps]
    z_true = None if one.z is None else one.z[0, :steps]
    if info.get("kind") == "piano_roll":
        return piano_roll_frame(z, x, t, x_rec)
    if info.get("system") == "pendulum":
        return pendulum_frame(z, x, t, z_true, x_rec, dt=(info.get("params") or {}).get("dt"))
    return observation_frame(
        z, x, t, z_true, x_rec, info.get("obs_names"), info.get("state_names")
    )
