"""Matplotlib figures for training runs and trained models, one module per kind:

- :mod:`~vaelab.plots.base`: :class:`Figure` (no ``pyplot``: safe in threads, under Agg and in
  Streamlit) and :func:`save_figure` (PNG and SVG for slides);
- :mod:`~vaelab.plots.training`: training curves, latent usage, run comparisons;
- :mod:`~vaelab.plots.images`: image grids and latent traversals;
- :mod:`~vaelab.plots.sequences`: latent paths, projections, posterior bands, piano rolls;
- :mod:`~vaelab.plots.flows`: flow densities, per context and layer by layer;
- :mod:`~vaelab.plots.figures`: the figures that suit a model and its data;
- :mod:`~vaelab.plots.explore`: one time step of a sequence (the explorer).

Every function returns a figure built without ``pyplot``; tensors are batch-first and moved
to the CPU here; the functions know only the model protocol (:mod:`vaelab.protocol`),
:class:`~vaelab.data.Batch` and ``Data.info``. The dashboard's interactive charts are
Vega-Lite specs in :mod:`vaelab.charts`.
"""

from __future__ import annotations

from vaelab.plots.base import (
    ACTIVE_THRESHOLD,
    CURVES,
    VAL_KEYS,
    Figure,
    save_figure,
)
from vaelab.plots.explore import (
    MARKER,
    MAX_LATENT_LINES,
    NOTE_NAMES,
    note_name,
    observation_frame,
    pendulum_frame,
    piano_roll_frame,
    sequence_explorer,
)
from vaelab.plots.figures import (
    UNITS,
    model_figures,
)
from vaelab.plots.flows import (
    conditional_densities,
    flow_density,
    flow_layers,
    flow_log_density,
)
from vaelab.plots.images import (
    decoded_image,
    image_grid,
    latent_traversal,
)
from vaelab.plots.sequences import (
    latent_projection,
    latent_trajectories,
    observation_paths,
    piano_roll,
    posterior_bands,
)
from vaelab.plots.training import (
    latent_usage,
    run_comparison,
    training_curves,
)

__all__ = [
    "ACTIVE_THRESHOLD",
    "CURVES",
    "MARKER",
    "MAX_LATENT_LINES",
    "NOTE_NAMES",
    "UNITS",
    "VAL_KEYS",
    "Figure",
    "conditional_densities",
    "decoded_image",
    "flow_density",
    "flow_layers",
    "flow_log_density",
    "image_grid",
    "latent_projection",
    "latent_trajectories",
    "latent_traversal",
    "latent_usage",
    "model_figures",
    "note_name",
    "observation_frame",
    "observation_paths",
    "pendulum_frame",
    "piano_roll",
    "piano_roll_frame",
    "posterior_bands",
    "run_comparison",
    "save_figure",
    "sequence_explorer",
    "training_curves",
]
