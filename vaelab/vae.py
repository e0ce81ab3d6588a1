"""Static VAE: Gaussian encoder q(z | x), Bernoulli or Gaussian decoder p(x | z), and a
N(0, I) prior or, optionally, a learnable RealNVP prior.

Kingma & Welling 2014 (arXiv:1312.6114); tutorial: Doersch 2016 (arXiv:1606.05908); flow
prior: the coupling flow of Dinh et al. 2017 (arXiv:1605.08803) over N(0, I).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor
from torch.distributions import Distribution, Normal, kl_divergence

from vaelab.data import Batch
from vaelab.distributions import BernoulliLogits, DiagGaussian, standard_normal
from vaelab.flows import ConditionalRealNVP
from vaelab.nn import activation
from vaelab.objectives import ELBOTerms, kl_term
from vaelab.protocol import Model, register


@dataclass
class VAEConfig:
    x_dim: int = 64
    z_dim: int = 2
    hidden_dims: list[int] = field(default_factory=lambda: [200, 200])
    likelihood: str = "bernoulli"  # or "gaussian"
    activation: str = "tanh"
    analytic_kl: bool = True
    min_scale: float = 1e-3
    prior_flows: int = 0  # RealNVP coupling layers in a learnable prior; 0 keeps N(0, I)
    prior_hidden: int = 64  # width of the couplings' two hidden layers

    def __post_init__(self) -> None:
        for name in ("x_dim", "z_dim", "prior_hidden"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.prior_flows < 0:
            raise ValueError(f"prior_flows must be >= 0, got {self.prior_flows}")
        if self.prior_flows > 0 and self.analytic_kl:
            raise ValueError(
                "prior_flows > 0 needs analytic_kl=False: the KL against a flow "
                "prior has no closed form (the Monte Carlo estimate is used)"
            )
        if self.likelihood not in ("bernoulli", "gaussian"):
            raise ValueError(
                f"likelihood must be 'bernoulli' or 'gaussian', got {self.likelihood!r}"
            )
        if not self.min_scale > 0:  # as the SSM: softplus(...) + 0 can reach 0 (log 0 = -inf)
            raise ValueError(
                f"min_scale must be > 0 so scales stay positive, got {self.min_scale}"
            )
        if not math.isfinite(self.min_scale):
            raise ValueError(f"min_scale must be finite (e.g. 1e-3), got {self.min_scale}")
        activation(self.activation)  # raises on an unknown name
        self.hidden_dims = list(self.hidden_dims)


@register
class VAE(Model):
    """Variational auto-encoder with one stochastic layer.

    p(z) = N(0, I),  p(x | z) = Bernoulli(logits(z)) or N(mu(z), sigma(z)^2),
    q(z | x) = N(mu(x), diag sigma(x)^2).

    With ``prior_flows > 0``, p(z) is N(0, I) pushed through RealNVP couplings and learnt with
    the rest: the aggregate posterior need not match a fixed Gaussian, and the KL term becomes
    the one-sample ``log q(z | x) - log p(z)``.
    """

    name = "vae"
    Config = VAEConfig
    card = (
        "**Variational autoencoder.** An encoder q(z | x) maps an image to a Gaussian over "
        "a few latent numbers z, a decoder p(x | z) maps z back to pixel probabilities; "
        "training maximises the ELBO, log p(x) minus the gap KL(q || posterior). "
        "Kingma & Welling 2014 (arXiv:1312.6114). Taught in notebooks/01_vae_elbo.ipynb "
        "and 02_learnable_distributions.ipynb."
    )
    preferred_data = "digits"

    def __init__(self, config: VAEConfig) -> None:
        super().__init__()
        self.config = c = config
        act = activation(c.activation)
        self.encoder = DiagGaussian(c.x_dim, c.z_dim, c.hidden_dims, act, c.min_scale)
        hidden_rev = c.hidden_dims[::-1]
        self.decoder: BernoulliLogits | DiagGaussian
        if c.likelihood == "bernoulli":
            self.decoder = BernoulliLogits(c.z_dim, c.x_dim, hidden_rev, act)
        else:
            self.decoder = DiagGaussian(c.z_dim, c.x_dim, hidden_rev, act, c.min_scale)
        self.prior = None
        if c.prior_flows > 0:  # unconditional: the couplings read a width-0 context
            self.prior = ConditionalRealNVP(
                c.z_dim, 0, [c.prior_hidden] * 2, c.prior_flows, conditional_base=False
            )

    def p_z(self, like: Tensor) -> Distribution:
        """Returns p(z), batch shape ``like.shape[:-1]``, event ``[Z]``: N(0, I) or the
        RealNVP prior."""
        if self.prior is None:
            return standard_normal(like)
        return self.prior(like.new_zeros(*like.shape[:-1], 0))

    def _check(self, batch: Batch) -> Tensor:
        x = batch.x
        if x.dim() != 2 or x.shape[1] != self.config.x_dim:
            raise ValueError(
                f"x must be [B, {self.config.x_dim}], got {list(x.shape)}; flatten images "
                f"and set x_dim to the number of pixels"
            )
        if self.config.likelihood == "bernoulli" and not bool(((x == 0) | (x == 1)).all()):
            value = float(x[(x != 0) & (x != 1)][0])
            raise ValueError(
                f"the Bernoulli decoder needs binary x (0 or 1), got values such as {value:.4g}; "
                f"load the data binarized (e.g. binarize=True) or set likelihood=gaussian"
            )
        return x

    @property
    def continuous(self) -> bool:
        return self.config.likelihood == "gaussian"

    def elbo(self, batch: Batch, analytic_kl: bool | None = None) -> ELBOTerms:
        """Returns the ELBO terms per example, ``[B]`` each, with one reparameterised sample.

        ELBO = E_q[log p(x | z)] - KL(q(z | x) || p(z)).
        """
        x = self._check(batch)
        q_z = self.encoder(x)
        z = q_z.rsample()  # [B, Z], reparameterised: z = mu + sigma * eps
        log_px = self.decoder(z).log_prob(x)
        analytic = self.config.analytic_kl if analytic_kl is None else analytic_kl
        kl = kl_term(q_z, self.p_z(z), z, analytic)
        return ELBOTerms(log_px, kl, torch.ones_like(log_px))

    @torch.no_grad()
    def sample(self, n: int, steps: int | None = None, a: Tensor | None = None):
        """Returns ``(z [n, Z], x [n, X])``, z from the prior and x the decoder mean (pixel
        probabilities). A static model: no ``steps`` and no actions."""
        if steps is not None or a is not None:
            raise ValueError("the VAE is static: sample(n) takes neither steps nor actions")
        p = next(self.parameters())
        z = self.p_z(p.new_zeros(n, self.config.z_dim)).sample()
        return z, self.decoder(z).mean

    @torch.no_grad()
    def latents(self, batch: Batch) -> Tensor:
        """Returns the posterior means E_q[z | x], ``[B, Z]``."""
        return self.encoder(self._check(batch)).mean

    @torch.no_grad()
    def reconstruct(self, batch: Batch) -> Tensor:
        """Returns the decoder mean at the posterior mean, ``[B, X]``."""
        return self.decode(self.latents(batch))

    @torch.no_grad()
    def kl_per_dim(self, batch: Batch) -> Tensor | None:
        """Returns KL(q(z_d | x) || N(0, 1)) per latent dimension, averaged over the batch,
        ``[Z]``: the diagonal Gaussians' KL splits over dimensions, so it sums to the mean
        analytic KL (the dashboard's view of posterior collapse). None with a flow prior,
        whose KL does not split over dimensions."""
        if self.prior is not None:
            return None
        q_z = self.encoder(self._check(batch)).base_dist  # Normal, batch [B, Z]
        p_z = Normal(torch.zeros_like(q_z.loc), torch.ones_like(q_z.scale))
        return kl_divergence(q_z, p_z).mean(dim=0)

    @torch.no_grad()
    def decode(self, z: Tensor) -> Tensor:
        """Returns E[x | z], ``[B, X]`` (for latent traversals)."""
        return self.decoder(z).mean
