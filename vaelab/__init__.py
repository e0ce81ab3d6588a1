"""vaelab: variational latent-variable models for teaching, from the static VAE to Deep Markov
Models with normalizing flows.

``MODELS`` maps a model name to its ``(Config, Model)`` pair. Every model subclasses the
protocol of ``vaelab.protocol`` and registers itself there with ``@register``; the trainer, the
CLI and the dashboard know models only through the protocol and this registry.
"""

from __future__ import annotations

# isort: off
# imported in the course's order, which is the order models register in (the dashboard's list)
from vaelab import vae, ssm, realnvp, dmm, dmm_iaf, dmm_aug  # noqa: F401

# isort: on
from vaelab.dmm import DMM, DMMIAF, DMMConfig, DMMIAFConfig
from vaelab.dmm_aug import DMMAug, DMMAugConfig
from vaelab.protocol import MODELS, Model, SequentialModel, register
from vaelab.realnvp import ConditionalFlowModel, RealNVPConfig
from vaelab.ssm import SSM, SSMConfig
from vaelab.vae import VAE, VAEConfig

__version__ = "0.1.0"
__all__ = [
    "DMM",
    "DMMIAF",
    "MODELS",
    "SSM",
    "VAE",
    "ConditionalFlowModel",
    "DMMAug",
    "DMMAugConfig",
    "DMMConfig",
    "DMMIAFConfig",
    "Model",
    "RealNVPConfig",
    "SSMConfig",
    "SequentialModel",
    "VAEConfig",
    "register",
]
