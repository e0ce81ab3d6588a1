"""Diagnostics of a trained model that the notebooks, the plots and the dashboard share: how
much each latent dimension is used (Burda et al. 2016, arXiv:1509.00519, active units), the KL
per latent dimension, and the exact log-likelihood of a linear-Gaussian data set.
"""

from __future__ import annotations

import torch
from torch import Tensor

from vaelab.data import Batch, Data
from vaelab.protocol import Model

ACTIVE_THRESHOLD = 0.01  # Burda et al. 2016 (arXiv:1509.00519): active if Cov_x(E_q[z_u]) > this


def observed(z: Tensor, mask: Tensor | None) -> Tensor:
    """Latents ``z [B, Z]`` as they are, ``z [B, T, Z]`` as ``[N, Z]`` over the observed steps
    of ``mask [B, T]`` (all steps without a mask)."""
    if z.dim() == 2:
        return z
    if z.dim() != 3:
        raise ValueError(f"latents must be [B, Z] or [B, T, Z], got {list(z.shape)}")
    return z.reshape(-1, z.shape[-1]) if mask is None else z[mask.to(z.device)]


@torch.no_grad()
def latent_activity(model: Model, batch: Batch) -> Tensor:
    """Returns the activity of every latent dimension, ``[Z]``: the variance across examples
    (and observed time steps) of the posterior mean, Cov_x(E_q[z_u]) of Burda et al. 2016."""
    z = observed(model.latents(batch), batch.mask)  # [N, Z]
    return z.double().var(dim=0, unbiased=False).to(torch.float32)


def active_units(activity: Tensor, threshold: float = ACTIVE_THRESHOLD) -> int:
    """Returns how many dimensions have ``activity > threshold`` (the active units)."""
    return int((activity > threshold).sum())


@torch.no_grad()
def kl_per_dim(model: Model, batch: Batch) -> Tensor | None:
    """Returns ``model.kl_per_dim(batch)`` ``[Z]`` on the CPU as float32 (the KL per latent
    dimension averaged over examples / observed steps), or None when the model's KL does not
    split over dimensions."""
    kl = model.kl_per_dim(batch)
    return None if kl is None else kl.detach().to("cpu", torch.float32)


def has_latents(model: Model) -> bool:
    """True for latent-variable models; a flow has none (:attr:`Model.has_latents`)."""
    return model.has_latents


def diagnose(model: Model, batch: Batch) -> dict:
    """Returns ``{"activity": [Z], "active_units": int, "kl_per_dim": [Z] or None}`` as
    lists of floats for ``model`` (eval mode) on ``batch``; ``{}`` for a model without latents."""
    if not has_latents(model):
        return {}
    device = next(model.parameters()).device
    batch = batch.to(device)
    activity = latent_activity(model, batch).cpu()
    kl = kl_per_dim(model, batch)
    return {
        "activity": activity.tolist(),
        "active_units": active_units(activity),
        "kl_per_dim": None if kl is None else kl.tolist(),
    }


def exact_nll(system, data: Data) -> float:
    """Returns the exact -log p(x | a) per observed step of ``data`` under the linear-Gaussian
    ``system`` (Kalman filter): the one place the dashboard calls vaelab.kalman."""
    from vaelab import kalman

    return float(kalman.exact_nll(system, data))


def reference_metrics(train: Data, val: Data | None) -> dict:
    """Figures known from the data alone: ``{"exact_nll_val": ...}`` (and ``_train`` on at
    most 500 sequences) when ``Data.info["system"]`` is the true
    :class:`~vaelab.kalman.LinearGaussianSSM`. Other systems (the pendulum's is only its
    name, ``"pendulum"``) have no exact likelihood: ``{}``."""
    from vaelab.kalman import LinearGaussianSSM

    out = {}
    for split, data in (("val", val), ("train", train)):
        if data is None:
            continue
        system = (data.info or {}).get("system")
        if isinstance(system, LinearGaussianSSM) and len(data):
            out[f"exact_nll_{split}"] = exact_nll(system, data.subset(slice(0, 500)))
    return out
