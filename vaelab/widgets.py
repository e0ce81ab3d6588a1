"""Sliders over a figure, for the notebooks: ``live_figure(draw, m=FloatSlider(...), ...)``.

ipywidgets' ``interactive_output`` would do, but its output capture can stall a notebook run
without a frontend (nbclient, as in the tests and the site build; jupyter/nbclient#312), so
the figure is put into an ``Output`` with ``append_display_data`` whenever a control moves.
``draw`` is an ordinary function of the controls' values returning a figure, so a notebook can
also call it directly (the static figure for readers of the rendered page).
"""

from __future__ import annotations

from collections.abc import Callable

import ipywidgets as widgets


def live_figure(
    draw: Callable[..., object], layout: str = "vertical", **controls: widgets.ValueWidget
) -> widgets.Box:
    """The ``controls`` (keyword = ``draw``'s parameter) above an output area showing
    ``draw(**values)``, redrawn whenever one of them changes. ``layout="horizontal"`` puts the
    controls side by side."""
    if not controls:
        raise ValueError(
            "live_figure needs at least one control, e.g. "
            "live_figure(draw, k=widgets.IntSlider(...))"
        )
    bad = [name for name, c in controls.items() if not isinstance(c, widgets.ValueWidget)]
    if bad:
        raise ValueError(
            f"controls {bad} are not ipywidgets value widgets (a slider, a dropdown, a toggle ...)"
        )
    if layout not in ("vertical", "horizontal"):
        raise ValueError(f"layout must be 'vertical' or 'horizontal', got {layout!r}")
    view = widgets.Output()

    def show(change: dict | None = None) -> None:
        figure = draw(**{name: c.value for name, c in controls.items()})
        view.outputs = ()
        view.append_display_data(figure)

    for control in controls.values():
        control.observe(show, names="value")
    show()
    box = widgets.HBox if layout == "horizontal" else widgets.VBox
    return widgets.VBox([box(list(controls.values())), view])
