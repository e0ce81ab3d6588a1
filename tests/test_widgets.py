"""vaelab.widgets.live_figure: the figure follows its controls, without a frontend."""

from __future__ import annotations

import ipywidgets as widgets
import pytest

from vaelab.plots import Figure
from vaelab.widgets import live_figure


def test_live_figure_draws_at_start_and_redraws_when_a_control_moves():
    calls = []

    def draw(m: float = 0.0, k: int = 1) -> Figure:
        calls.append((m, k))
        fig = Figure()
        fig.subplots().set_title(f"m={m} k={k}")
        return fig

    m, k = widgets.FloatSlider(value=0.5), widgets.IntSlider(value=2)
    box = live_figure(draw, m=m, k=k)
    controls, view = box.children
    assert list(controls.children) == [m, k] and calls == [(0.5, 2)]
    assert len(view.outputs) == 1 and "image/png" in view.outputs[0]["data"]
    first = view.outputs[0]["data"]["image/png"]
    k.value = 7
    assert calls[-1] == (0.5, 7)
    assert len(view.outputs) == 1  # replaced, not appended
    assert view.outputs[0]["data"]["image/png"] != first


@pytest.mark.parametrize(
    "kw, match",
    [
        ({}, "at least one control"),
        ({"m": 3.0}, "not ipywidgets value widgets"),
        ({"m": widgets.FloatSlider(), "layout": "grid"}, "layout must be"),
    ],
)
def test_live_figure_bad_arguments(kw, match):
    with pytest.raises(ValueError, match=match):
        live_figure(lambda **_: Figure(), **kw)
