"""Interactive training charts for the dashboard: chart rows from metrics records and the
Vega-Lite specs Streamlit draws them with (``st.vega_lite_chart``: zoom, pan, tooltips).

Rows are plain dicts (``step``, ``wall``, ``value``, ``smoothed``, ``series`` or ``run``);
the specs hold no data, so a page that redraws a chart with new rows updates it in place.
Smoothing is TensorBoard's: an exponential moving average with its start-up bias removed.
The matplotlib figures are in :mod:`vaelab.plots`.
"""

from __future__ import annotations

from collections.abc import Sequence

from vaelab.diagnostics import ACTIVE_THRESHOLD

# The training-curve panels: (panel, record key, what it shows). Latent-variable models and
# flows get their own; units come with the run (nats per observed step or per example).
LATENT_PANELS = (
    (
        "-ELBO",
        "nelbo",
        (
            "the negative evidence lower bound, -(E_q[log p(x|z)] - KL): what "
            "training lowers; dots: validation at each epoch's end"
        ),
    ),
    (
        "reconstruction log-likelihood",
        "log_likelihood",
        ("E_q[log p(x|z)]: how well decoded latents explain the data (higher is better)"),
    ),
    (
        "KL(q || p)",
        "kl",
        (
            "how far the guide q(z|x) moves from the prior: the nats the latents "
            "carry; near 0 means posterior collapse"
        ),
    ),
    (
        "KL weight",
        "kl_weight",
        ("the annealing factor on the KL term (rises linearly to 1 over the warm-up); unitless"),
    ),
    (
        "gradient norm",
        "grad_norm",
        ("the L2 norm of the gradient before clipping; spikes show unstable steps; unitless"),
    ),
)
FLOW_PANELS = (
    (
        "-log-likelihood",
        "nelbo",
        (
            "the flow's exact -log p(x | a) (change of variables): what "
            "training lowers; dots: validation at each epoch's end"
        ),
    ),
    (
        "gradient norm",
        "grad_norm",
        ("the L2 norm of the gradient before clipping; spikes show unstable steps; unitless"),
    ),
)
VAL_KEYS = ("nelbo", "log_likelihood", "kl")
NATS_KEYS = ("nelbo", "log_likelihood", "kl")
X_AXES = {"step": "training step", "wall": "wall time (seconds since the run started)"}
SERIES_COLOURS = {
    "train": "#1f77b4",
    "validation": "#d62728",
    "exact -log p(x), true system (val)": "#ff7f0e",
    "exact -log p(x), true system (train)": "#2ca02c",
}
TICKS = {"labelFontSize": 12, "titleFontSize": 12}
Y_FORMAT = ",.4~r"  # 40, 1,250, 0.0012: plain decimals, never "4e+1"


def smooth(values: Sequence[float], weight: float) -> list[float]:
    """TensorBoard's smoothing: ``s_i = m_i / (1 - weight^(i+1))`` with the moving average
    ``m_i = weight m_{i-1} + (1 - weight) v_i``, ``m_{-1} = 0``; i.e. the average of
    ``v_0..v_i`` weighted by ``weight^(i-j)``. ``weight`` in [0, 1); 0 returns the values."""
    if not 0.0 <= weight < 1.0:
        raise ValueError(
            f"smoothing weight must be in [0, 1), got {weight}; 0 is no smoothing, 0.9 strong"
        )
    out, mean = [], 0.0
    for i, v in enumerate(values):
        mean = weight * mean + (1.0 - weight) * v
        out.append(mean / (1.0 - weight ** (i + 1)))
    return out


def thinned(n: int, max_points: int) -> list[int]:
    """Indices ``0 .. n-1`` thinned to at most about ``max_points``: every k-th, and always
    the last (the newest point is never dropped)."""
    if n <= max_points:
        return list(range(n))
    k = -(-n // max_points)  # ceil
    index = list(range(0, n, k))
    return index if index[-1] == n - 1 else [*index, n - 1]


def _series_rows(
    records: Sequence[dict], key: str, start: float, smoothing: float, max_points: int, **labels
) -> list[dict]:
    """Rows of one record key: smoothed over every record, then thinned (newest kept)."""
    kept = [r for r in records if key in r]
    smoothed = smooth([float(r[key]) for r in kept], smoothing)
    return [
        {
            "step": int(kept[i]["step"]),
            "wall": round(kept[i].get("wall", start) - start, 3),
            "value": float(kept[i][key]),
            "smoothed": smoothed[i],
            **labels,
        }
        for i in thinned(len(kept), max_points)
    ]


def curve_panels(
    records: Sequence[dict],
    has_latents: bool,
    unit: str,
    reference: dict | None = None,
    smoothing: float = 0.0,
    max_points: int = 400,
    annealed: bool = True,
) -> list[dict]:
    """One run's training curves, one dict per panel: ``{"title", "key", "unit", "caption",
    "rows"}``, rows ``{"step", "wall", "value", "smoothed", "series"}``.

    Train records form the series ``"train"`` (smoothed with ``smoothing``, then thinned to
    ``max_points``, newest kept), validation records ``"validation"`` (not smoothed);
    ``reference["exact_nll_val"]`` / ``_train`` a constant series on the -ELBO panel. ``wall``
    is seconds since the run's first record. Without KL annealing there is no KL-weight panel
    (a constant): the KL panel's caption gives its value.
    """
    train = [r for r in records if r.get("kind") == "train"]
    val = [r for r in records if r.get("kind") == "val"]
    start = next((r["wall"] for r in records if "wall" in r), 0.0)
    weights = {r["kl_weight"] for r in train if "kl_weight" in r}
    panels = []
    for title, key, caption in LATENT_PANELS if has_latents else FLOW_PANELS:
        if key == "kl_weight" and not annealed:
            continue
        if key == "kl" and not annealed and len(weights) == 1:
            caption += f"; weighted by {next(iter(weights)):g} in the loss throughout"
        rows = _series_rows(train, key, start, smoothing, max_points, series="train")
        if key in VAL_KEYS:
            rows += _series_rows(val, key, start, 0.0, max_points, series="validation")
        if key == "nelbo" and rows:
            ends = (min(rows, key=lambda r: r["step"]), max(rows, key=lambda r: r["step"]))
            for split in ("val", "train"):
                value = (reference or {}).get(f"exact_nll_{split}")
                if value is not None:
                    rows += [
                        {
                            **end,
                            "value": float(value),
                            "smoothed": float(value),
                            "series": f"exact -log p(x), true system ({split})",
                        }
                        for end in ends
                    ]
        panels.append(
            {
                "title": title,
                "key": key,
                "caption": caption,
                "rows": rows,
                "unit": unit if key in NATS_KEYS else "",
            }
        )
    return panels


def _x(x: str) -> dict:
    if x not in X_AXES:
        raise ValueError(f"x axis {x!r} is unknown; use 'step' or 'wall'")
    # steps and seconds start at 0: the axis never shows negative values
    return {
        "field": x,
        "type": "quantitative",
        "title": X_AXES[x],
        "scale": {"domainMin": 0, "nice": False},
        "axis": {"format": ",~r", "tickMinStep": 1, "labelOverlap": True},
    }


def curve_spec(
    panel: dict, log: bool = False, x: str = "step", smoothed: bool = False, height: int = 300
) -> dict:
    """The Vega-Lite spec of one panel of :func:`curve_panels`, drawn with its ``rows``.

    Train lines (the smoothed value when ``smoothed``, the raw one faint behind it), the
    newest train point marked, validation as dots, a known system's exact -log p(x) dashed;
    ``x`` is ``"step"`` or ``"wall"``; ``log`` a symmetric-log y scale (values of both signs).
    """
    series = list(dict.fromkeys(r["series"] for r in panel["rows"]))
    colour = {
        "field": "series",
        "type": "nominal",
        "legend": {"orient": "bottom", "title": None, "labelLimit": 0, "columns": 2},
    }
    if all(s in SERIES_COLOURS for s in series):
        colour["scale"] = {"domain": series, "range": [SERIES_COLOURS[s] for s in series]}
    line = "datum.series == 'train'"
    # the train line shows the smoothed value in the value field (one y scale and title)
    train = [
        {"filter": line},
        *([{"calculate": "datum.smoothed", "as": "value"}] if smoothed else []),
    ]
    layers = [
        {
            "transform": train,
            "mark": {"type": "line", "strokeWidth": 1.5},
            "params": [{"name": "zoom", "select": "interval", "bind": "scales"}],
        },
        {
            "transform": [{"filter": "datum.series == 'validation'"}],
            "mark": {"type": "point", "filled": True, "size": 40, "opacity": 0.8},
        },
        {
            "transform": [{"filter": "indexof(datum.series, 'exact') >= 0"}],
            "mark": {"type": "line", "strokeDash": [6, 4], "strokeWidth": 1.5},
        },
        {
            "transform": [
                *train,
                {
                    "window": [{"op": "rank", "as": "rank"}],
                    "sort": [{"field": "step", "order": "descending"}],
                },
                {"filter": "datum.rank == 1"},
            ],
            "mark": {"type": "point", "filled": True, "size": 50},
        },
    ]
    if smoothed:  # the raw values, faint, behind the smoothed line
        layers.insert(
            0,
            {
                "transform": [{"filter": line}],
                "mark": {"type": "line", "strokeWidth": 1, "opacity": 0.25},
            },
        )
    return {
        "height": height,
        "encoding": {
            "x": _x(x),
            "y": {
                "field": "value",
                "type": "quantitative",
                "scale": {"type": "symlog"} if log else {"zero": False},
                "title": panel.get("unit") or panel["title"],
                "axis": {"format": Y_FORMAT},
            },
            "color": colour,
            "tooltip": [
                {"field": "series", "type": "nominal"},
                {"field": "step", "type": "quantitative"},
                {"field": "wall", "type": "quantitative", "title": "seconds"},
                {"field": "value", "type": "quantitative", "format": ".4f"},
            ],
        },
        "layer": layers,
        "config": {"axis": TICKS, "legend": {"labelFontSize": 12}},
    }


def overlay_panel(
    runs: Sequence[dict], key: str, smoothing: float = 0.0, max_points: int = 400
) -> dict:
    """Several comparable runs (same data set and unit; see :func:`vaelab.runs.comparable`)
    on one panel: rows ``{"step", "wall", "value", "smoothed", "run", "split"}``, ``run``
    the run's name. Each run is ``{"name", "unit", "data", "records", "has_latents"}``.
    Raises ``ValueError`` for runs on different data or units."""
    if not runs:
        raise ValueError("overlay_panel needs at least one run; pick runs to compare")
    kinds = {(r["data"], r["unit"]) for r in runs}
    if len(kinds) > 1:
        raise ValueError(
            f"runs on different data sets or units cannot share a chart: "
            f"{sorted(kinds)}; pick runs of one data set"
        )
    titles = {k: t for t, k, _ in (*FLOW_PANELS, *LATENT_PANELS)}
    if key not in titles:
        raise ValueError(f"unknown curve {key!r}; choose one of {list(titles)}")
    rows = []
    for run in runs:
        records = run["records"]
        start = next((r["wall"] for r in records if "wall" in r), 0.0)
        train = [r for r in records if r.get("kind") == "train"]
        val = [r for r in records if r.get("kind") == "val"]
        rows += _series_rows(
            train, key, start, smoothing, max_points, run=run["name"], split="train"
        )
        if key in VAL_KEYS:
            rows += _series_rows(
                val, key, start, 0.0, max_points, run=run["name"], split="validation"
            )
    flows = {not r["has_latents"] for r in runs}
    title = (
        titles[key]
        if key != "nelbo"
        else "-log p(x)"
        if flows == {True}
        else "-ELBO"
        if flows == {False}
        else "-ELBO (a flow's: its exact -log p(x))"
    )
    unit = next(iter(kinds))[1] if key in NATS_KEYS else ""
    return {
        "title": title,
        "key": key,
        "unit": unit,
        "rows": rows,
        "caption": f"{title} of each run, one colour per run; lines: training steps, dots: "
        f"validation at each epoch's end",
    }


def overlay_spec(
    panel: dict, log: bool = False, x: str = "step", smoothed: bool = False, height: int = 340
) -> dict:
    """The Vega-Lite spec of an :func:`overlay_panel`: one colour per run (the legend below,
    labels never cut), training as lines, validation as dots; as :func:`curve_spec`."""
    runs = list(dict.fromkeys(r["run"] for r in panel["rows"]))
    value = "smoothed" if smoothed else "value"
    return {
        "height": height,
        "encoding": {
            "x": _x(x),
            "y": {
                "field": value,
                "type": "quantitative",
                "scale": {"type": "symlog"} if log else {"zero": False},
                "title": panel.get("unit") or panel["title"],
                "axis": {"format": Y_FORMAT},
            },
            "color": {
                "field": "run",
                "type": "nominal",
                "scale": {"domain": runs, "scheme": "tableau10"},
                "legend": {"orient": "bottom", "title": "run", "columns": 1, "labelLimit": 0},
            },
            "tooltip": [
                {"field": "run", "type": "nominal"},
                {"field": "split", "type": "nominal"},
                {"field": "step", "type": "quantitative"},
                {"field": "value", "type": "quantitative", "format": ".4f"},
            ],
        },
        "layer": [
            {
                "transform": [{"filter": "datum.split == 'train'"}],
                "mark": {"type": "line", "strokeWidth": 1.5},
                "params": [{"name": "zoom", "select": "interval", "bind": "scales"}],
            },
            {
                "transform": [{"filter": "datum.split == 'validation'"}],
                "mark": {"type": "point", "filled": True, "size": 45, "opacity": 0.85},
            },
        ],
        "config": {"axis": TICKS, "legend": {"labelFontSize": 12, "titleFontSize": 12}},
    }


def latent_usage_chart(entry: dict, threshold: float = ACTIVE_THRESHOLD, height: int = 220):
    """Interactive bars of one diagnostics entry (:func:`vaelab.diagnostics.diagnose`): the
    activity Cov_x(E_q[z_u]) of every latent dimension u on a log scale with the active-unit
    threshold, and the KL per dimension (nats) when the entry has it; inactive dimensions in
    grey. Axis labels thin themselves out, so 100 or more dimensions stay readable."""
    import altair as alt

    activity = [float(a) for a in entry["activity"]]
    kl = entry.get("kl_per_dim")
    rows = [
        {
            "u": u,
            "activity": max(a, 1e-8),
            "active": "active" if a > threshold else "inactive",
            "kl": None if kl is None else float(kl[u]),
        }
        for u, a in enumerate(activity)
    ]
    x = alt.X(
        "u:Q",
        title="latent dimension u",
        scale=alt.Scale(domain=[-0.5, len(rows) - 0.5]),
        axis=alt.Axis(tickMinStep=1, labelOverlap=True, format="d"),
    )
    colour = alt.Color(
        "active:N",
        title=None,
        legend=alt.Legend(orient="bottom"),
        scale=alt.Scale(domain=["active", "inactive"], range=["#1f77b4", "#c7c7c7"]),
    )
    width = max(1.0, min(30.0, 600 / max(len(rows), 1)))
    base = alt.Chart(alt.Data(values=rows))
    low = min(*(max(a, 1e-8) for a in activity), threshold) / 10  # bars rise from here
    bars = base.mark_bar(size=width).encode(
        x=x,
        y=alt.Y(
            "activity:Q",
            title="activity Cov_x(E_q[z_u])",
            scale=alt.Scale(type="log", domainMin=low),
        ),
        y2=alt.datum(low),
        color=colour,  # bars rise from the axis floor, not from 0
        tooltip=["u:Q", alt.Tooltip("activity:Q", format=".3g"), "active:N"],
    )
    rule = (
        alt.Chart(alt.Data(values=[{"threshold": threshold}]))
        .mark_rule(color="#d62728", strokeDash=[6, 4])
        .encode(y="threshold:Q")
    )
    n_active = sum(r["active"] == "active" for r in rows)
    charts = [
        alt.layer(bars, rule).properties(
            height=height,
            title=f"activity: {n_active} of {len(rows)} active (threshold {threshold}, dashed)",
        )
    ]
    if kl is not None:
        charts.insert(
            0,
            base.mark_bar(size=width)
            .encode(
                x=x,
                y=alt.Y("kl:Q", title="KL per dimension (nats)"),
                color=colour,
                tooltip=["u:Q", alt.Tooltip("kl:Q", format=".4f")],
            )
            .properties(height=height, title=f"KL per dimension (total {sum(kl):.3f} nats)"),
        )
    return (
        alt.hconcat(*charts)
        .resolve_scale(color="shared")
        .configure_axis(labelFontSize=12, titleFontSize=12)
        .configure_title(fontSize=14)
    )


def latent_usage_spec(entry: dict, threshold: float = ACTIVE_THRESHOLD) -> dict:
    """:func:`latent_usage_chart` as a plain Vega-Lite spec with its data inline, for
    ``st.vega_lite_chart(spec=...)``, built once per diagnostics entry."""
    return latent_usage_chart(entry, threshold).to_dict(validate=False)


def chart_table(rows: list[dict]):
    """Chart rows as a ``pyarrow.Table`` for ``st.vega_lite_chart``: Streamlit sends a Table
    as it is, while a list of dicts goes through pandas first (about ten times the work)."""
    import pyarrow as pa

    return pa.Table.from_pylist(rows)
