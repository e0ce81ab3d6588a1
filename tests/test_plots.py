from __future__ import annotations

import numpy as np
import pytest
import torch
from matplotlib.figure import Figure

from vaelab import MODELS, plots
from vaelab.config import make_model
from vaelab.datasets import load_dataset


def _history() -> list[dict]:
    train = [
        {
            "kind": "train",
            "step": s,
            "epoch": 0,
            "nelbo": 50.0 - s,
            "log_likelihood": -40.0,
            "kl": 10.0 - s,
            "kl_weight": min(1.0, 0.2 + 0.1 * s),
            "grad_norm": 3.0,
        }
        for s in range(1, 6)
    ]
    val = [
        {"kind": "val", "step": 5, "epoch": 1, "nelbo": 46.0, "log_likelihood": -39.0, "kl": 7.0}
    ]
    return train + val + [{"kind": "end", "step": 5, "epoch": 1, "stopped": False}]


def test_training_curves_one_axis_per_metric_with_val_markers():
    fig = plots.training_curves(_history(), diagnostics=[])
    assert isinstance(fig, Figure)
    titles = [ax.get_title() for ax in fig.axes]
    assert titles[:5] == [title for _, title in plots.CURVES]
    assert titles[5].startswith("active units") and len(titles) == 6
    by_title = {ax.get_title(): ax for ax in fig.axes}
    nelbo = by_title["-ELBO (nats)"]
    assert len(nelbo.lines) == 2  # train line + validation markers
    np.testing.assert_array_equal(nelbo.lines[0].get_xdata(), [1, 2, 3, 4, 5])
    np.testing.assert_array_equal(nelbo.lines[0].get_ydata(), [49, 48, 47, 46, 45])
    assert nelbo.lines[1].get_marker() == "o"
    np.testing.assert_array_equal(nelbo.lines[1].get_ydata(), [46.0])
    assert len(by_title["KL weight"].lines) == 1  # no val markers where val has no value


def test_training_curves_empty_history_renders():
    fig = plots.training_curves([], diagnostics=[])
    assert len(fig.axes) == len(plots.CURVES) + 1
    assert all(len(ax.lines) == 0 for ax in fig.axes)
    fig.savefig(__import__("io").BytesIO())  # draws under Agg


def test_training_curves_has_no_constant_or_empty_panels():
    """Without annealing the KL weight is 1 throughout: no flat panel, the KL axis says it;
    without latents (a flow) no active-units panel; no empty axes left in the grid."""
    flat = [{**r, "kl_weight": 1.0} for r in _history()]
    fig = plots.training_curves(flat)
    titles = [ax.get_title() for ax in fig.axes]
    assert "KL weight" not in titles and len(titles) == 4
    assert not any(t.startswith("active units") for t in titles)
    assert "KL(q || p); KL weight 1 throughout" in titles
    assert all(ax.lines for ax in fig.axes)  # every panel shows data
    with_latents = plots.training_curves(
        flat, diagnostics=[{"step": 5, "active_units": 1, "activity": [0.5, 0.0]}]
    )
    assert [ax.get_title() for ax in with_latents.axes][-1].startswith("active units")
    assert len(with_latents.axes) == 5


def test_training_curves_exact_reference_and_active_units():
    diagnostics = [
        {"step": 2, "active_units": 1, "activity": [0.5, 0.0, 0.0]},
        {"step": 5, "active_units": 2, "activity": [0.5, 0.2, 0.0]},
    ]
    fig = plots.training_curves(_history(), {"exact_nll_val": 44.5}, diagnostics)
    nelbo, units = fig.axes[0], fig.axes[5]
    exact = [line for line in nelbo.lines if "exact" in str(line.get_label())]
    assert len(exact) == 1 and list(exact[0].get_ydata()) == [44.5, 44.5]  # horizontal line
    np.testing.assert_array_equal(units.lines[0].get_xdata(), [2, 5])
    np.testing.assert_array_equal(units.lines[0].get_ydata(), [1, 2])


def test_latent_usage_bars_and_threshold():
    entry = {
        "step": 7,
        "activity": [0.5, 0.001, 0.02],
        "active_units": 2,
        "kl_per_dim": [1.0, 0.0, 0.25],
    }
    fig = plots.latent_usage(entry)
    kl_ax, act_ax = fig.axes
    np.testing.assert_allclose([b.get_height() for b in kl_ax.patches], [1.0, 0.0, 0.25])
    assert "2 of 3 active" in act_ax.get_title()
    # inactive dimension drawn grey, active ones in colour
    colours = [b.get_facecolor() for b in act_ax.patches]
    assert colours[0] == colours[2] != colours[1]
    assert len(plots.latent_usage({**entry, "kl_per_dim": None}).axes) == 1


def test_flow_log_density_matches_the_flow_and_integrates_to_one():
    train, _, _ = load_dataset("moons")
    model = make_model("realnvp", train, {"hidden_dim": 16, "num_layers": 2}).double().eval()
    context = torch.tensor([0.6, 0.8], dtype=torch.float64)
    xs = torch.linspace(-9, 9, 301, dtype=torch.float64)
    ys = torch.linspace(-8, 8, 281, dtype=torch.float64)
    log_p = plots.flow_log_density(model, context, xs, ys)
    assert log_p.shape == (281, 301)
    # row i is y = ys[i], column j is x = xs[j]
    point = torch.tensor([[xs[40], ys[200]]])
    torch.testing.assert_close(log_p[200, 40], model.flow(context[None]).log_prob(point)[0])
    # an independent check of the grid: a density integrates to 1 (Riemann sum on a wide box;
    # the untrained flow is close to its Gaussian base, well inside the box)
    mass = float(log_p.exp().sum() * (xs[1] - xs[0]) * (ys[1] - ys[0]))
    assert abs(mass - 1) < 0.01


def test_flow_density_one_axis_per_context_with_samples():
    train, val, _ = load_dataset("moons")
    model = make_model("realnvp", train, {"hidden_dim": 16, "num_layers": 2})
    fig = plots.flow_density(model, val.a[:3], extent=2.0, resolution=20, n_samples=50)
    assert len(fig.axes) == 3
    for ax, a in zip(fig.axes, val.a[:3], strict=False):
        assert len(ax.collections[-1].get_offsets()) == 50  # samples on top of the contours
        assert f"{float(a[0]):.2f}" in ax.get_title()
    with pytest.raises(ValueError, match="conditional flow"):
        plots.flow_log_density(
            make_model("vae", load_dataset("digits")[0], {}),
            val.a[0],
            torch.zeros(2),
            torch.zeros(2),
        )


def test_image_grid_tiles_images_in_place():
    x = torch.rand(5, 12)  # five 3x4 images
    fig = plots.image_grid(x, (3, 4), ncols=3)
    (ax,) = fig.axes
    canvas = ax.images[0].get_array()
    assert canvas.shape == (2 * 4 + 1, 3 * 5 + 1)  # two rows, three columns, 1-pixel gaps
    np.testing.assert_allclose(canvas[1:4, 1:5], x[0].reshape(3, 4).numpy())
    np.testing.assert_allclose(canvas[5:8, 6:10], x[4].reshape(3, 4).numpy())  # row 1, col 1
    assert canvas.mask[5:8, 11:15].all()  # the sixth cell is empty


def test_image_grid_rejects_wrong_size():
    with pytest.raises(ValueError, match="image_shape"):
        plots.image_grid(torch.rand(2, 10), (3, 4))


def test_latent_trajectories_skip_padding():
    z = torch.randn(3, 10, 2)
    mask = torch.arange(10) < torch.tensor([10, 6, 3])[:, None]
    z[~mask] = float("nan")  # padding may hold anything
    fig = plots.latent_trajectories(z, mask=mask)
    assert len(fig.axes) == 2
    for d, ax in enumerate(fig.axes):
        assert len(ax.lines) == 3
        assert [len(line.get_xdata()) for line in ax.lines] == [10, 6, 3]
        np.testing.assert_allclose(ax.lines[1].get_ydata(), z[1, :6, d].numpy())


def test_latent_trajectories_align_to_true_states():
    # true states are an affine map of the inferred ones: the aligned paths match, R^2 = 1
    z = torch.randn(2, 8, 3, dtype=torch.float64)
    z_true = z[..., :2] @ torch.tensor([[2.0, -1.0], [0.5, 1.0]], dtype=torch.float64) + 3.0
    mask = torch.arange(8) < torch.tensor([8, 5])[:, None]
    fig = plots.latent_trajectories(z, z_true, mask)
    assert len(fig.axes) == 2  # one axis per true dimension
    for _d, ax in enumerate(fig.axes):
        assert len(ax.lines) == 4  # true and aligned for two sequences
        assert "R^2 = 1.000" in ax.get_title()
        np.testing.assert_allclose(ax.lines[3].get_ydata(), ax.lines[2].get_ydata(), atol=1e-4)
        assert len(ax.lines[2].get_xdata()) == 5


def test_latent_trajectories_rejects_static():
    with pytest.raises(ValueError, match="latent_projection"):
        plots.latent_trajectories(torch.randn(4, 2))


def test_latent_projection_matches_svd_and_skips_padding():
    z = torch.randn(2, 6, 3)
    mask = torch.tensor([[True] * 6, [True] * 4 + [False] * 2])
    z[1, 4:] = 1e6  # padding would dominate the components if it were used
    fig = plots.latent_projection(z, mask)
    ax = fig.axes[0]
    offsets = ax.collections[0].get_offsets()
    assert len(offsets) == 10
    points = torch.cat([z[0], z[1, :4]]).double()
    centred = points - points.mean(0)
    proj = centred @ torch.linalg.svd(centred, full_matrices=False).Vh[:2].T
    # principal axes are defined up to sign
    for k in range(2):
        np.testing.assert_allclose(
            np.abs(offsets[:, k]), proj[:, k].abs().numpy(), rtol=1e-4, atol=1e-5
        )
    times = [1, 2, 3, 4, 5, 6, 1, 2, 3, 4]  # t = 1..T
    np.testing.assert_array_equal(ax.collections[0].get_array(), times)
    assert len(ax.lines) == 2  # one path per sequence


def test_latent_projection_static_with_labels_and_one_dim():
    fig = plots.latent_projection(torch.randn(20, 4), labels=torch.arange(20) % 3)
    assert len(fig.axes) == 2  # scatter + colour bar
    fig = plots.latent_projection(torch.randn(20, 1))
    assert np.all(fig.axes[0].collections[0].get_offsets()[:, 1] == 0)


def test_piano_roll_one_axis_per_sequence_trimmed():
    x = torch.bernoulli(torch.full((2, 7, 88), 0.1))
    mask = torch.arange(7) < torch.tensor([7, 4])[:, None]
    fig = plots.piano_roll(x, mask, titles=["data", "recon"])
    assert len(fig.axes) == 2
    assert fig.axes[0].images[0].get_array().shape == (88, 7)
    assert fig.axes[1].images[0].get_array().shape == (88, 4)
    np.testing.assert_array_equal(fig.axes[1].images[0].get_array(), x[1, :4].T.numpy())
    assert len(plots.piano_roll(x[0]).axes) == 1


def test_latent_traversal_decodes_along_each_dimension():
    train, _, _ = load_dataset("digits")
    model = make_model("vae", train, {"z_dim": 3, "hidden_dims": [16]}).eval()
    values = torch.linspace(-2, 2, 5)
    fig = plots.latent_traversal(model, (8, 8), [0, 2], values)
    canvas = fig.axes[0].images[0].get_array()
    assert canvas.shape == (2 * 9 + 1, 5 * 9 + 1)
    z = torch.zeros(3)
    z[2] = values[4]
    expected = model.decode(z[None])[0].reshape(8, 8).numpy()
    np.testing.assert_allclose(canvas[10:18, 37:45], expected, atol=1e-6)  # row 1, column 4
    with pytest.raises(ValueError, match="dims"):
        plots.latent_traversal(model, (8, 8), [3], values)


def test_model_figures_for_images():
    train, val, _ = load_dataset("digits")
    model = make_model("vae", train, {"hidden_dims": [16]})
    batch = val.batch(torch.arange(32))
    figs = plots.model_figures(model, batch, val.info, labels=val.info["labels"][:32])
    assert set(figs) == {
        "data (top) and reconstructions (bottom)",
        "samples",
        "latent traversal",
        "latent space",
    }
    assert all(isinstance(f, Figure) for f in figs.values())
    assert model.training  # the mode is restored


@pytest.mark.parametrize("data", ["linear", "jsb"])
def test_model_figures_for_sequences(data):
    name = "ssm" if data == "linear" else "dmm"
    if name not in MODELS:
        pytest.fail(f"model {name!r} is not registered in vaelab.MODELS")
    train, val, _ = load_dataset(data)
    small = {"z_dim": 3, "rnn_dim": 8} | (
        {"hidden_dim": 8} if name == "ssm" else {"emission_dim": 8, "transition_dim": 8}
    )
    model = make_model(name, train, small)
    batch = val.batch(torch.arange(4))
    figs = plots.model_figures(model, batch, val.info)
    assert "latent space" in figs
    if data == "jsb":
        assert len(figs["data"].axes) == 2
    else:
        assert len(figs["latent paths"].axes) == batch.z.shape[-1]  # one per true state


def test_training_curves_label_every_axis_with_its_unit():
    diagnostics = [{"step": 5, "active_units": 1, "activity": [0.5, 0.0]}]
    fig = plots.training_curves(_history(), diagnostics=diagnostics, unit="nats per time step")
    labels = {ax.get_title(): ax.get_ylabel() for ax in fig.axes}
    for title in ("-ELBO (nats)", "reconstruction log-likelihood", "KL(q || p)"):
        assert labels[title] == "nats per time step"
    assert all(labels.values()), labels  # no axis without a y label
    assert plots.training_curves(_history()).axes[0].get_ylabel() == "nats"


def test_latent_usage_labels_units_and_keeps_many_dimensions_readable():
    entry = {"activity": [0.5] * 32, "kl_per_dim": [0.1] * 32}
    fig = plots.latent_usage(entry, unit="nats per time step")
    kl_ax, act_ax = fig.axes
    assert "?" not in act_ax.get_title() and "step" not in act_ax.get_title()  # no step given
    assert "at step 7" in plots.latent_usage({**entry, "step": 7}).axes[1].get_title()
    assert kl_ax.get_ylabel() == "KL (nats per time step)" and act_ax.get_ylabel()
    for ax in fig.axes:  # at most 16 tick labels for 32 dimensions, the first at 0
        ticks = list(ax.get_xticks())
        assert len(ticks) <= 16 and ticks[0] == 0 and ticks[1] - ticks[0] == 2


def test_paths_name_their_axes_and_explain_colours_and_line_styles():
    z = torch.randn(3, 6, 2)
    fig = plots.latent_trajectories(z, z[..., :1] * 2.0, names=["angle (rad)"], title="pendulum")
    assert [ax.get_ylabel() for ax in fig.axes] == ["angle (rad)"]
    (legend,) = fig.legends
    assert [t.get_text() for t in legend.get_texts()] == [
        "sequence 0",
        "sequence 1",
        "sequence 2",
        "true state",
        "inferred, affinely aligned",
    ]
    assert fig.get_suptitle() == "pendulum"
    obs = plots.observation_paths(z, z + 0.1, names=["cos", "sin"])
    assert [ax.get_ylabel() for ax in obs.axes] == ["cos", "sin"]
    assert [t.get_text() for t in obs.legends[0].get_texts()][-2:] == ["data", "reconstruction"]
    samples = plots.observation_paths(z, title="samples", max_sequences=2)
    assert [t.get_text() for t in samples.legends[0].get_texts()] == ["sequence 0", "sequence 1"]
    assert samples.get_suptitle() == "samples"
    assert plots.latent_trajectories(z).get_suptitle().startswith("posterior means")
    with pytest.raises(ValueError, match="one label per drawn dimension"):
        plots.observation_paths(z, names=["cos"])


def test_decoded_image_says_what_its_grey_levels_are():
    train, _, _ = load_dataset("digits")
    model = make_model("vae", train, {"z_dim": 2, "hidden_dims": [16]}).eval()
    fig = plots.decoded_image(model, {0: 1.0}, (8, 8), title="z")
    assert len(fig.axes) == 2 and fig.axes[1].get_ylabel() == "pixel mean E[x_i | z]"


# ----------------------------------------------------------------------------- dashboard


def _marked_times(fig) -> dict[str, list[float]]:
    """Axis title -> the x positions of its time markers."""
    return {
        ax.get_title(): [
            line.get_xdata()[0] for line in ax.lines if line.get_gid() == plots.MARKER
        ]
        for ax in fig.axes
    }


def _tiny(name: str, data: str, **sizes):
    train, val, _ = load_dataset(data)
    small = {
        "ssm": {"z_dim": 3, "hidden_dim": 8, "rnn_dim": 8},
        "dmm": {"z_dim": 3, "rnn_dim": 8, "emission_dim": 8, "transition_dim": 8},
    }[name]
    return make_model(name, train, {**small, **sizes}).eval(), val


def test_sequence_explorer_shows_the_pendulum_at_t():
    model, val = _tiny("ssm", "pendulum")
    batch = val.batch(torch.arange(3))
    t, i = 8, 1  # the 8th step, index 7
    fig = plots.sequence_explorer(model, batch, t, index=i, info=val.info)
    marks = _marked_times(fig)
    timed = [title for title, xs in marks.items() if xs]
    assert len(timed) == 3 and all(marks[title] == [t] for title in timed)  # every time axis
    axes = {ax.get_title(): ax for ax in fig.axes}
    (pendulum,) = [ax for title, ax in axes.items() if title.startswith("the pendulum at t = 8")]
    theta = float(batch.z[i, t - 1, 0])
    (rod,) = [line for line in pendulum.lines if line.get_gid() == "true-rod"]
    np.testing.assert_allclose(
        [rod.get_xdata()[1], rod.get_ydata()[1]], [np.sin(theta), -np.cos(theta)], atol=1e-6
    )
    (bob,) = [line for line in pendulum.lines if line.get_gid() == "observed-bob"]
    x = batch.x[i, t - 1].numpy()
    np.testing.assert_allclose([bob.get_xdata()[0], bob.get_ydata()[0]], [x[1], -x[0]], atol=1e-6)
    assert "(0.7 s)" in pendulum.get_title()  # dt = 0.1, x_1 at 0 s
    labels = " ".join(ax.get_ylabel() + ax.get_xlabel() for ax in fig.axes)
    for unit in ("(rad, rad/s)", "(pendulum lengths)", "(latent units)", "time step t"):
        assert unit in labels
    assert all(
        ax.get_legend()
        for title, ax in axes.items()
        if "latent path" in title or "pendulum" in title or "true state" in title
    )
    with pytest.raises(ValueError, match=r"t must be an observed step in 1\.\.50, got 0"):
        plots.sequence_explorer(model, batch, 0, info=val.info)
    with pytest.raises(ValueError, match=r"1\.\.50, got 51"):
        plots.sequence_explorer(model, batch, 51, info=val.info)
    (path,) = [ax for title, ax in axes.items() if title.startswith("latent path")]
    assert path.lines[0].get_xdata()[0] == 1 and path.get_xlim()[0] > 0  # t counts from 1


def test_sequence_explorer_linear_system_marks_observation_and_true_position():
    model, val = _tiny("ssm", "linear")
    batch = val.batch(torch.arange(2))
    fig = plots.sequence_explorer(model, batch, 5, index=0, info=val.info)  # index 4
    (plane,) = [ax for ax in fig.axes if ax.get_title() == "observation plane"]
    (point,) = [line for line in plane.lines if line.get_gid() == "observed-point"]
    np.testing.assert_allclose(
        [point.get_xdata()[0], point.get_ydata()[0]], batch.x[0, 4].numpy(), atol=1e-6
    )
    (star,) = [line for line in plane.lines if line.get_label() == "true state at t"]
    np.testing.assert_allclose(
        [star.get_xdata()[0], star.get_ydata()[0]], batch.z[0, 4, :2].numpy(), atol=1e-6
    )  # p_x, p_y of the state
    assert plane.get_xlabel() == "p_x (data units)"
    assert all(xs == [5] for xs in _marked_times(fig).values() if xs)


def test_piano_roll_frame_shows_the_notes_at_t_and_many_latents_as_a_heat_map():
    steps, z_dim = 12, 100  # the DMM's default latent size
    x = torch.zeros(steps, 88)
    x[5, [39, 43, 46]] = 1.0  # C4, E4, G4 (MIDI 60, 64, 67) at t = 6 (index 5)
    x[2, 30] = 1.0
    z = torch.randn(steps, z_dim)
    rec = torch.full((steps, 88), 0.25)
    fig = plots.piano_roll_frame(z, x, 6, rec)
    latent, roll, keys = fig.axes[:3]
    assert latent.images and latent.get_ylabel() == "latent dimension u"
    assert len([t for t in latent.get_yticks() if 0 <= t < z_dim]) <= 7  # readable ticks
    assert _marked_times(fig)[latent.get_title()] == [6]
    assert _marked_times(fig)[roll.get_title()] == [6]
    assert keys.get_title() == "notes at t = 6: C4, E4, G4"
    assert roll.get_xlim() == (0.5, steps + 0.5)  # t = 1..T
    heights = {round(p.get_x() + p.get_width() / 2): p.get_height() for p in keys.patches}
    assert {n for n, h in heights.items() if h > 0} == {60, 64, 67}
    assert keys.get_legend() is not None
    assert plots.note_name(60) == "C4" and plots.note_name(21) == "A0"


def _overlaps(a, b) -> bool:
    return a.x0 < b.x1 - 1 and b.x0 < a.x1 - 1 and a.y0 < b.y1 - 1 and b.y0 < a.y1 - 1


COLUMN_PX = 940  # the page's main column at a 1400 px wide window (the browser test's)
DPI = 100  # app.py's


def _undrawn_tick_labels(fig) -> set[int]:
    """ids of the tick labels of ticks outside the view (matplotlib does not draw them)."""
    undrawn = set()
    for ax in fig.axes:
        for axis in (ax.xaxis, ax.yaxis):
            low, high = sorted(axis.get_view_interval())
            span = (high - low) * 1e-6
            for tick in axis.get_major_ticks() + axis.get_minor_ticks():
                if not low - span <= tick.get_loc() <= high + span:
                    undrawn.update({id(tick.label1), id(tick.label2)})
    return undrawn


def _text_problems(fig, text, box) -> list[str]:
    """A drawn text too small in the file or on the page, or cut off at the figure's edge."""
    problems, page = [], fig.bbox
    if text.get_fontsize() < 8:
        problems.append(f"{text.get_text()!r} at {text.get_fontsize():.1f} pt")
    shown = text.get_fontsize() / 72 * min(DPI, COLUMN_PX / fig.get_figwidth())
    if shown < 9:
        problems.append(f"{text.get_text()!r} shown at {shown:.1f} px on the page")
    if (
        box.x0 < page.x0 - 1
        or box.x1 > page.x1 + 1
        or box.y0 < page.y0 - 1
        or box.y1 > page.y1 + 1
    ):
        problems.append(f"{text.get_text()!r} cut off at the figure's edge")
    return problems


def readability_problems(fig) -> list[str]:
    """What makes a drawn figure hard to read: text under 8 pt in the file, or under 9 px
    on the page (where a figure wider than the column is shrunk to it), text outside the
    figure, tick labels or other texts that overlap, an axis with nothing drawn in it."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    renderer = canvas.get_renderer()
    undrawn = _undrawn_tick_labels(fig)
    problems, texts = [], []
    for text in fig.findobj(lambda a: hasattr(a, "get_text") and hasattr(a, "get_fontsize")):
        if not text.get_visible() or not text.get_text().strip() or id(text) in undrawn:
            continue
        box = text.get_window_extent(renderer)
        if box.width <= 0:
            continue
        problems += _text_problems(fig, text, box)
        texts.append((text.get_text(), box))
    for i, (a, box_a) in enumerate(texts):
        for b, box_b in texts[i + 1 :]:
            if _overlaps(box_a, box_b):
                problems.append(f"{a!r} overlaps {b!r}")
    for ax in fig.axes:
        if ax.get_label() == "<colorbar>":
            continue
        if not (ax.lines or ax.images or ax.collections or ax.patches or ax.texts):
            problems.append(f"axis {ax.get_title()!r} is empty")
    return problems


DEFAULT_SIZED = [
    ("vae", "digits", {}),
    ("ssm", "pendulum", {}),
    ("ssm", "linear", {}),
    ("dmm", "jsb", {"rnn_dim": 16, "emission_dim": 16, "transition_dim": 16}),
    ("realnvp", "moons", {}),
    ("realnvp", "digits", {"hidden_dim": 16}),
]


@pytest.mark.parametrize(
    ("name", "data", "sizes"), DEFAULT_SIZED, ids=[f"{n}-{d}" for n, d, _ in DEFAULT_SIZED]
)
def test_dashboard_figures_are_readable_at_default_latent_sizes(name, data, sizes):
    """Every matplotlib figure the dashboard draws for a model (its latent size the default:
    100 dimensions for the DMM; networks shrunk only where that costs time), rendered: no
    text under 8 pt, none cut off, no overlapping labels, no empty axis."""
    train, val, _ = load_dataset(data)
    model = make_model(name, train, sizes).eval()
    info = {k: v for k, v in (val.info or {}).items() if k != "labels"}
    batch = val.batch(torch.arange(8), torch.Generator().manual_seed(0))
    figures = plots.model_figures(model, batch, info)
    if batch.x.dim() == 3:
        figures["explore"] = plots.sequence_explorer(model, batch, 3, index=1, info=info)
    if not model.has_latents and batch.a is not None:
        figures["explore"] = plots.flow_density(model, batch.a[:1], resolution=20, n_samples=50)
    if (
        "image_shape" in info
        and model.has_latents
        and model.decode(torch.zeros(1, model.config.z_dim)) is not None
    ):
        figures["explore"] = plots.decoded_image(model, {0: 1.0}, info["image_shape"])
    problems = {title: readability_problems(fig) for title, fig in figures.items()}
    assert not {t: p for t, p in problems.items() if p}, problems
