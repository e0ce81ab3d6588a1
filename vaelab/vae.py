"""Static VAE: Gaussian encoder q(z | x), Bernoulli or Gaussian decoder p(x | z), N(0, I) prior.

Kingma & Welling 2014 (arXiv:1312.6114); tutorial: Doersch 2016 (arXiv:1606.05908).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor, nn
from torch.distributions import Normal, kl_divergence

from vaelab.data import Batch
from vaelab.distributions import BernoulliLogits, DiagGaussian, standard_normal
from vaelab.nn import activation
from vaelab.objectives import ELBOTerms, kl_term


@dataclass
class VAEConfig:
    x_dim: int = 64
    z_dim: int = 2
    hidden_dims: list[int] = field(default_factory=lambda: [200, 200])
    likelihood: str = "bernoulli"  # or "gaussian"
    activation: str = "tanh"
    analytic_kl: bool = True
    min_scale: float = 1e-3

    def __post_init__(self) -> None:
        for name in ("x_dim", "z_dim"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.likelihood not in ("bernoulli", "gaussian"):
            raise ValueError(
                f"likelihood must be 'bernoulli' or 'gaussian', got {self.likelihood!r}"
            )
        activation(self.activation)  # raises on an unknown name
        self.hidden_dims = list(self.hidden_dims)


class VAE(nn.Module):
    """Variational auto-encoder with one stochastic layer.

    p(z) = N(0, I),  p(x | z) = Bernoulli(logits(z)) or N(mu(z), sigma(z)^2),
    q(z | x) = N(mu(x), diag sigma(x)^2).
    """

    name = "vae"

    def __init__(self, config: VAEConfig) -> None:
        super().__init__()
        self.config = c = config
        act = activation(c.activation)
        self.encoder = DiagGaussian(c.x_dim, c.z_dim, c.hidden_dims, act, c.min_scale)
        hidden_rev = c.hidden_dims[::-1]
        if c.likelihood == "bernoulli":
            self.decoder = BernoulliLogits(c.z_dim, c.x_dim, hidden_rev, act)
        else:
            self.decoder = DiagGaussian(c.z_dim, c.x_dim, hidden_rev, act, c.min_scale)

    def _check(self, batch: Batch) -> Tensor:
        x = batch.x
        if x.dim() != 2 or x.shape[1] != self.config.x_dim:
            raise ValueError(
                f"x must be [B, {self.config.x_dim}], got {list(x.shape)}; flatten images "
                f"and set x_dim to the number of pixels"
            )
        return x

    def elbo(self, batch: Batch, analytic_kl: bool | None = None) -> ELBOTerms:
        """Returns the ELBO terms per example, ``[B]`` each, with one reparameterised sample.

        ELBO = E_q[log p(x | z)] - KL(q(z | x) || p(z)).
        """
        x = self._check(batch)
        q_z = self.encoder(x)
        z = q_z.rsample()  # [B, Z], reparameterised: z = mu + sigma * eps
        log_px = self.decoder(z).log_prob(x)
        analytic = self.config.analytic_kl if analytic_kl is None else analytic_kl
        kl = kl_term(q_z, standard_normal(z), z, analytic)
        return ELBOTerms(log_px, kl, torch.ones_like(log_px))

    @torch.no_grad()
    def sample(self, n: int, steps: int | None = None, a: Tensor | None = None):
        """Returns ``(z [n, Z], x [n, X])`` with x the decoder mean (pixel probabilities)."""
        p = next(self.parameters())
        z = torch.randn(n, self.config.z_dim, device=p.device, dtype=p.dtype)
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
    def kl_per_dim(self, batch: Batch) -> Tensor:
        """Returns KL(q(z_d | x) || N(0, 1)) per latent dimension, averaged over the batch,
        ``[Z]``: the diagonal Gaussians' KL splits over dimensions, so it sums to the mean
        analytic KL (the dashboard's view of posterior collapse)."""
        q_z = self.encoder(self._check(batch)).base_dist  # Normal, batch [B, Z]
        p_z = Normal(torch.zeros_like(q_z.loc), torch.ones_like(q_z.scale))
        return kl_divergence(q_z, p_z).mean(dim=0)

    @torch.no_grad()
    def decode(self, z: Tensor) -> Tensor:
        """Returns E[x | z], ``[B, X]`` (for latent traversals)."""
        return self.decoder(z).mean
