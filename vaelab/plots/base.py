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
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from matplotlib import figure as mpl_figure
from torch import Tensor


class Figure(mpl_figure.Figure):
    """A matplotlib Figure that displays itself in Jupyter as the last expression of a cell,
    whatever the backend (these figures are built without pyplot, so the inline backend never
    sees them), and saves for slides with :func:`save_figure`."""

    def _repr_png_(self) -> bytes:
        buffer = io.BytesIO()
        self.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
        return buffer.getvalue()


def save_figure(
    fig: mpl_figure.Figure,
    path: str | Path,
    formats: Sequence[str] = ("png", "svg"),
    dpi: int = 200,
) -> list[Path]:
    """Write ``fig`` as ``path.<format>`` for every format (PNG at ``dpi``, slide resolution;
    SVG and PDF are vector); returns the files written. ``path`` may carry a suffix, which is
    replaced."""
    allowed = {"png", "svg", "pdf"}
    bad = [f for f in formats if f not in allowed]
    if bad or not formats:
        raise ValueError(
            f"save_figure formats must be among {sorted(allowed)}, got {list(formats)}"
        )
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
