"""The figures that suit a model and its data (the dashboard's "latents and samples")."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from vaelab.data import Batch
from vaelab.plots.base import (
    Figure,
)
from vaelab.plots.flows import flow_density
from vaelab.plots.images import image_grid, latent_traversal
from vaelab.plots.sequences import (
    latent_projection,
    latent_trajectories,
    observation_paths,
    piano_roll,
)
from vaelab.protocol import Model

# ----------------------------------------------------------------------------- dashboard


# units of the built-in systems' named quantities (Data.info's state_names / obs_names)
UNITS = {"theta": "rad", "omega": "rad/s", "cos theta": "unitless", "sin theta": "unitless"}


def _with_units(names: Sequence[str] | None, count: int) -> list[str] | None:
    """Axis labels ``"name (unit)"`` for the first ``count`` of ``names`` (None without)."""
    if not names or len(names) < count:
        return None
    return [f"{n} ({UNITS.get(n, 'data units')})" for n in list(names)[:count]]


@torch.no_grad()
def model_figures(
    model: Model,
    batch: Batch,
    info: dict | None = None,
    labels: Tensor | None = None,
    n_samples: int = 16,
) -> dict[str, Figure]:
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
        latent = model.has_latents  # a flow has none
        if "image_shape" in info and not sequence:
            shape = info["image_shape"]
            k = min(len(batch), 8)
            recon = model.reconstruct(batch) if latent else None
            if recon is not None:
                figures["data (top) and reconstructions (bottom)"] = image_grid(
                    torch.cat([batch.x[:k], recon[:k]]), shape, ncols=k
                )
            else:  # a flow's "reconstruction" is x itself: only the data
                figures["data"] = image_grid(batch.x[:k], shape, ncols=k)
            _, x_sample = model.sample(n_samples)
            figures["samples"] = image_grid(x_sample, shape, ncols=8)
            if latent and model.decode(z[:1]) is not None:
                dims = range(min(model.config.z_dim, 8))
                figures["latent traversal"] = latent_traversal(
                    model, shape, dims, torch.linspace(-2.5, 2.5, 9)
                )
            if latent:
                figures["latent space"] = latent_projection(z, labels=labels)
            else:
                fig = figures["base points z = g^-1(x)"] = latent_projection(z, labels=labels)
                fig.axes[0].set_title(
                    "base points z = g^-1(x), first two principal components", fontsize=10
                )
        elif sequence and info.get("kind") == "piano_roll":
            k = min(len(batch), 2)
            recon = model.reconstruct(batch)
            mask = None if batch.mask is None else batch.mask[:k]
            figures["data"] = piano_roll(batch.x[:k], mask)
            if recon is not None:
                figures["reconstruction (note probabilities)"] = piano_roll(recon[:k], mask)
            _, x_sample = model.sample(k, steps=batch.x.shape[1])
            figures["sample (note probabilities)"] = piano_roll(x_sample)
            for title in ("reconstruction (note probabilities)", "sample (note probabilities)"):
                if title not in figures:
                    continue
                fig = figures[title]  # grey levels are probabilities: say which
                fig.colorbar(fig.axes[0].images[0], ax=fig.axes, label="P(note on)", shrink=0.9)
            figures["latent space"] = latent_projection(z, batch.mask)
        elif not latent and batch.a is not None and batch.x.shape[-1] == 2:
            # a conditional flow: densities for a few contexts of the batch, samples on top
            extent = float(batch.x.abs().max()) * 1.15
            figures["density p(x | a) per context, samples on top"] = flow_density(
                model, batch.a[:4], extent=extent
            )
            figures["base points z = g^-1(x | a)"] = latent_projection(z, labels=labels)
        elif sequence:
            shown = min(batch.x.shape[-1], 8)  # the dimensions _paths draws
            obs = _with_units(info.get("obs_names"), shown)
            states = (
                None
                if batch.z is None
                else _with_units(info.get("state_names"), min(batch.z.shape[-1], 8))
            )
            figures["latent paths"] = latent_trajectories(z, batch.z, batch.mask, names=states)
            figures["observations (solid) and reconstructions (dashed)"] = observation_paths(
                batch.x, model.reconstruct(batch), batch.mask, names=obs
            )
            k = min(len(batch), 4)
            _, x_sample = model.sample(
                k, steps=batch.x.shape[1], a=None if batch.a is None else batch.a[:k]
            )
            figures["samples (driven by the same actions when there are any)"] = observation_paths(
                x_sample,
                None,
                None if batch.mask is None else batch.mask[:k],
                names=obs,
                title="samples from the model",
            )
            figures["latent space"] = latent_projection(z, batch.mask)
        else:
            figures["latent space"] = latent_projection(z, labels=labels)
    finally:
        model.train(was_training)
    return figures
