"""vaelab.charts: chart rows from metrics records and the Vega-Lite specs of the dashboard."""

from __future__ import annotations

import altair as alt
import numpy as np
import pytest

from vaelab import charts


def _records(n: int = 3000, start: float = 1000.0) -> list[dict]:
    out = [
        {
            "kind": "train",
            "step": s,
            "nelbo": 10.0 - s / 1000,
            "log_likelihood": -9.0,
            "kl": 1.0,
            "kl_weight": 0.5,
            "grad_norm": 3.0,
            "wall": start + 0.01 * s,
        }
        for s in range(1, n + 1)
    ]
    out.append(
        {
            "kind": "val",
            "step": n,
            "epoch": 1,
            "nelbo": 9.0,
            "log_likelihood": -8.0,
            "kl": 1.0,
            "wall": start + 0.01 * n + 0.5,
        }
    )
    return out


def test_smoothing_is_the_debiased_moving_average():
    rng = np.random.default_rng(0)
    values = rng.normal(size=50)
    for weight in (0.0, 0.6, 0.95):
        got = charts.smooth(values.tolist(), weight)
        # independent form: the average of v_0..v_i weighted by weight^(i-j)
        want = [
            np.average(values[: i + 1], weights=weight ** np.arange(i, -1, -1.0))
            if weight
            else values[i]
            for i in range(len(values))
        ]
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
    assert charts.smooth([], 0.5) == []
    with pytest.raises(ValueError, match=r"in \[0, 1\)"):
        charts.smooth([1.0], 1.0)


def test_thinned_keeps_the_newest():
    assert charts.thinned(5, 10) == [0, 1, 2, 3, 4]
    index = charts.thinned(2501, 1000)
    assert index[-1] == 2500 and len(index) <= 1001 and index == sorted(set(index))


def test_curve_panels_rows_units_and_wall_time():
    records = _records()
    panels = charts.curve_panels(
        records,
        has_latents=True,
        unit="nats per observed step",
        reference={"exact_nll_val": 0.5},
        max_points=100,
        smoothing=0.9,
    )
    assert [p["title"] for p in panels] == [
        "-ELBO",
        "reconstruction log-likelihood",
        "KL(q || p)",
        "KL weight",
        "gradient norm",
    ]
    elbo = panels[0]
    train = [r for r in elbo["rows"] if r["series"] == "train"]
    assert len(train) <= 101 and train[-1]["step"] == 3000 and train[-1]["value"] == 7.0
    assert train[0]["wall"] == 0.0 and train[-1]["wall"] == pytest.approx(29.99)
    full = charts.smooth([r["nelbo"] for r in records[:-1]], 0.9)  # smoothed before thinning
    assert train[-1]["smoothed"] == pytest.approx(full[-1])
    val = [r for r in elbo["rows"] if r["series"] == "validation"]
    assert [(r["step"], r["value"], r["smoothed"]) for r in val] == [(3000, 9.0, 9.0)]
    exact = [r for r in elbo["rows"] if r["series"].startswith("exact")]
    assert [r["step"] for r in exact] == [1, 3000] and {r["value"] for r in exact} == {0.5}
    assert elbo["unit"] == "nats per observed step" and panels[3]["unit"] == ""
    steady = charts.curve_panels(records, True, "nats per example", annealed=False)
    assert "KL weight" not in [p["title"] for p in steady]
    assert steady[2]["caption"].endswith("weighted by 0.5 in the loss throughout")
    flow = charts.curve_panels(records, has_latents=False, unit="nats per example")
    assert [p["title"] for p in flow] == ["-log-likelihood", "gradient norm"]


def test_curve_spec_axes_start_at_zero_and_read_plainly():
    panel = charts.curve_panels(_records(20), True, "nats per example", smoothing=0.5)[0]
    spec = charts.curve_spec(panel)
    assert "data" not in spec  # the rows are sent with it, so the chart updates in place
    x, y = spec["encoding"]["x"], spec["encoding"]["y"]
    assert x["field"] == "step" and x["scale"]["domainMin"] == 0 and x["title"] == "training step"
    assert y["axis"]["format"] == ",.4~r" and y["title"] == "nats per example"
    assert spec["encoding"]["color"]["legend"]["labelLimit"] == 0
    wall = charts.curve_spec(panel, x="wall", smoothed=True, log=True)
    assert wall["encoding"]["x"]["field"] == "wall" and "seconds" in wall["encoding"]["x"]["title"]
    assert wall["encoding"]["y"]["scale"] == {"type": "symlog"}
    faint, line = wall["layer"][0], wall["layer"][1]
    assert (
        faint["mark"]["opacity"] < 1
        and {"calculate": "datum.smoothed", "as": "value"} in line["transform"]
    )
    for s in (spec, wall):  # valid Vega-Lite (altair checks the schema)
        alt.LayerChart.from_dict({**s, "data": {"values": panel["rows"]}}).to_dict()
    with pytest.raises(ValueError, match="'step' or 'wall'"):
        charts.curve_spec(panel, x="epoch")


def test_overlay_only_comparable_runs():
    a = {
        "name": "a",
        "data": "digits",
        "unit": "nats per example",
        "has_latents": True,
        "records": _records(10),
    }
    b = {**a, "name": "b", "records": _records(20, start=5.0)}
    panel = charts.overlay_panel([a, b], "nelbo")
    assert {r["run"] for r in panel["rows"]} == {"a", "b"} and panel["title"] == "-ELBO"
    assert min(r["wall"] for r in panel["rows"] if r["run"] == "b") == 0.0
    spec = charts.overlay_spec(panel)
    colour = spec["encoding"]["color"]
    assert colour["scale"]["domain"] == ["a", "b"] and colour["legend"]["labelLimit"] == 0
    assert spec["encoding"]["y"]["title"] == "nats per example"
    alt.LayerChart.from_dict({**spec, "data": {"values": panel["rows"]}}).to_dict()
    marks = {layer["transform"][0]["filter"]: layer["mark"]["type"] for layer in spec["layer"]}
    assert marks == {"datum.split == 'train'": "line", "datum.split == 'validation'": "point"}
    with pytest.raises(ValueError, match="different data sets or units"):
        charts.overlay_panel([a, {**b, "data": "jsb", "unit": "nats per observed step"}], "nelbo")


def test_latent_usage_spec_is_the_validated_chart():
    entry = {"activity": [0.5, 0.001, 0.2], "kl_per_dim": [0.3, 0.0, 0.1], "step": 4}
    spec = charts.latent_usage_spec(entry)
    assert spec == charts.latent_usage_chart(entry).to_dict()  # validated against the schema
    assert [r["active"] for r in spec["hconcat"][0]["data"]["values"]] == [
        "active",
        "inactive",
        "active",
    ]


def test_chart_table_holds_the_rows_as_columns():
    table = charts.chart_table([{"step": 1, "value": 2.0}, {"step": 2, "value": 3.0}])
    assert table.column_names == ["step", "value"] and table.num_rows == 2
