"""The Deep Markov Model whose guide adds inverse autoregressive flows (Kingma et al. 2016,
arXiv:1606.04934) after each step's Gaussian, as in Krishnan et al.'s and Pyro's IAF variant:
:class:`vaelab.dmm.DMM` with ``num_iafs`` flows; its KL has no closed form, so the ELBO takes
the one-sample Monte Carlo term.
"""

from __future__ import annotations

from dataclasses import dataclass

from vaelab.dmm import DMM, DMMConfig
from vaelab.protocol import register


@dataclass
class DMMIAFConfig(DMMConfig):
    """DMM whose guide adds inverse autoregressive flows (Kingma et al. 2016,
    arXiv:1606.04934), as in Krishnan et al.'s and Pyro's IAF variant."""

    num_iafs: int = 1
    analytic_kl: bool = False


@register
class DMMIAF(DMM):
    """DMM with IAFs after the Gaussian guide; the KL is the one-sample Monte Carlo term."""

    name = "dmm_iaf"
    Config = DMMIAFConfig
    card = (
        "**Deep Markov Model with an IAF guide.** The DMM whose guide distribution is made "
        "more flexible by inverse autoregressive flows; its KL has no closed form and is "
        "estimated by Monte Carlo. Kingma et al. 2016 (arXiv:1606.04934) on Krishnan et al. "
        "2017. Taught in notebooks/04_deep_markov_model.ipynb and "
        "05_normalizing_flows.ipynb."
    )
