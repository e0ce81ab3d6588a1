"""vaelab: variational latent-variable models for teaching, from the static VAE to Deep Markov
Models with normalizing flows.

``MODELS`` maps a model name to its ``(Config, Model)`` pair; the trainer, the CLI and the
dashboard know models only through it and the protocol described in ``vaelab.objectives``.
"""

from __future__ import annotations

from vaelab.dmm import DMM, DMMIAF, DMMConfig, DMMIAFConfig
from vaelab.flows import ConditionalFlowModel, RealNVPConfig
from vaelab.ssm import SSM, SSMConfig
from vaelab.vae import VAE, VAEConfig

MODELS: dict[str, tuple[type, type]] = {
    "vae": (VAEConfig, VAE),
    "ssm": (SSMConfig, SSM),
    "realnvp": (RealNVPConfig, ConditionalFlowModel),
    "dmm": (DMMConfig, DMM),
    "dmm_iaf": (DMMIAFConfig, DMMIAF),
}

__version__ = "0.1.0"
__all__ = [
    "DMM", "DMMIAF", "MODELS", "SSM", "VAE", "ConditionalFlowModel", "DMMConfig", "DMMIAFConfig",
    "RealNVPConfig", "SSMConfig", "VAEConfig",
]
