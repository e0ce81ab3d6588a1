from __future__ import annotations

import math

import pytest
import torch
from torch.distributions import MultivariateNormal

from tests.helpers import assert_every_parameter_gets_gradient
from vaelab import diagnostics
from vaelab.data import Batch, load_digits
from vaelab.objectives import importance_log_likelihood
from vaelab.train import TrainConfig, evaluate_elbo, fit
from vaelab.vae import VAE, VAEConfig

X, Z = 3, 2


def _inv_softplus(y: torch.Tensor) -> torch.Tensor:
    return torch.log(torch.expm1(y))


def factor_analysis(W: torch.Tensor, b: torch.Tensor, s: torch.Tensor) -> VAE:
    """A linear-Gaussian VAE whose decoder is exactly x ~ N(W z + b, diag(s^2)): factor
    analysis, so log p(x) = log N(x; b, W W^T + diag s^2) is known in closed form."""
    model = VAE(VAEConfig(x_dim=X, z_dim=Z, hidden_dims=[], likelihood="gaussian")).double()
    lin = model.decoder.net[0]  # Linear(Z -> 2X): rows :X give the mean, rows X: the scale
    with torch.no_grad():
        lin.weight[:X] = W
        lin.bias[:X] = b
        lin.weight[X:] = 0.0  # constant scale, independent of z
        lin.bias[X:] = _inv_softplus(s - model.config.min_scale)
    return model


def set_linear_encoder(model: VAE, gain, bias, scale) -> None:
    """Make q(z | x) = N(gain x + bias, diag(scale^2)) exactly."""
    enc = model.encoder.net[0]  # Linear(X -> 2Z): rows :Z the mean, rows Z: the scale
    with torch.no_grad():
        enc.weight[:Z] = gain
        enc.bias[:Z] = bias
        enc.weight[Z:] = 0.0
        enc.bias[Z:] = _inv_softplus(scale - model.config.min_scale)


def posterior(W, b, s):
    """Exact p(z | x) = N(G (x - b), C) of factor analysis: C = (I + W^T S^-2 W)^-1,
    G = C W^T S^-2. Returns (G [Z, X], C [Z, Z])."""
    cov = torch.linalg.inv(torch.eye(Z, dtype=W.dtype) + W.T @ torch.diag(s**-2) @ W)
    return cov @ W.T @ torch.diag(s**-2), cov


def exact_log_px(W, b, s, x):
    return MultivariateNormal(b, W @ W.T + torch.diag(s**2)).log_prob(x)


def _random_fa():
    W = torch.randn(X, Z, dtype=torch.float64)
    b = torch.randn(X, dtype=torch.float64)
    s = torch.tensor([0.5, 0.8, 1.2], dtype=torch.float64)
    x = torch.randn(4, X, dtype=torch.float64) * 1.5
    return W, b, s, x


def test_decoder_is_the_factor_analysis_model():
    W, b, s, _ = _random_fa()
    model = factor_analysis(W, b, s)
    z = torch.randn(5, Z, dtype=torch.float64)
    p = model.decoder(z)
    torch.testing.assert_close(p.mean, z @ W.T + b)
    torch.testing.assert_close(p.base_dist.scale, s.expand(5, X))


def test_elbo_equals_log_px_with_the_exact_posterior():
    # orthogonal columns and equal noise: the exact posterior is a diagonal Gaussian,
    # which the linear encoder can represent
    W = torch.tensor([[1.0, 0.0], [0.0, 2.0], [0.0, 0.0]], dtype=torch.float64)
    b = torch.tensor([0.3, -0.2, 0.1], dtype=torch.float64)
    s = torch.full((X,), 0.7, dtype=torch.float64)
    model = factor_analysis(W, b, s)
    gain, cov = posterior(W, b, s)
    assert torch.count_nonzero(cov - torch.diag(cov.diagonal())) == 0  # diagonal indeed
    set_linear_encoder(model, gain, -gain @ b, cov.diagonal().sqrt())
    x = torch.randn(5, X, dtype=torch.float64)
    exact = exact_log_px(W, b, s, x)
    # q = posterior: the Monte Carlo ELBO log p(x, z) - log q(z | x) = log p(x) for every z
    mc = _elbo_samples(model, x, 20, analytic_kl=False)
    torch.testing.assert_close(mc, exact.expand(20, -1))
    # with the analytic KL only the likelihood term is sampled: equal in expectation
    n = 4000
    analytic = _elbo_samples(model, x, n, analytic_kl=True)
    se = analytic.std(0) / math.sqrt(n)
    assert ((analytic.mean(0) - exact).abs() < 5 * se).all(), (analytic.mean(0), exact, se)


def _elbo_samples(model, x, n, analytic_kl=None):
    """``n`` independent one-sample ELBOs of each row of ``x``, ``[n, B]``."""
    with torch.no_grad():
        return model.elbo(Batch(x.repeat(n, 1)), analytic_kl).elbo.view(n, len(x))


def test_elbo_is_below_exact_log_px():
    W, b, s, x = _random_fa()
    model = factor_analysis(W, b, s)
    n = 4000
    elbo = _elbo_samples(model, x, n)
    mean, se = elbo.mean(0), elbo.std(0) / math.sqrt(n)
    exact = exact_log_px(W, b, s, x)
    assert (mean <= exact + 5 * se).all(), (mean, se, exact)


def test_importance_sampling_tightens_towards_log_px():
    W, b, s, x = _random_fa()
    model = factor_analysis(W, b, s)
    # q: the exact posterior mean with a diagonal, 1.5 times too wide scale, a proposal with
    # finite-variance importance weights but a clear ELBO gap
    gain, cov = posterior(W, b, s)
    set_linear_encoder(model, gain, -gain @ b, 1.5 * cov.diagonal().sqrt())
    exact = exact_log_px(W, b, s, x)  # [B]
    elbo = _elbo_samples(model, x, 4000)
    se_elbo = elbo.std(0) / math.sqrt(len(elbo))
    assert (elbo.mean(0) < exact - 5 * se_elbo).all()  # a real gap to close
    means, ses = {}, {}
    for k, reps in ((1, 4000), (10, 1000), (1000, 40)):
        # `reps` independent estimates for each x: the batch is x repeated, sample-major
        est = importance_log_likelihood(
            model, Batch(x.repeat(reps, 1)), num_samples=k, chunk_size=min(k, 100)
        ).view(reps, len(x))
        means[k], ses[k] = est.mean(0), est.std(0) / math.sqrt(reps)
        # a lower bound in expectation (Burda et al. 2016, theorem 1)
        assert (means[k] <= exact + 5 * ses[k]).all(), (k, means[k], ses[k], exact)
    # K = 1 is the Monte Carlo ELBO; K = 1000 lies between the ELBO and log p(x)
    tol = 5 * (ses[1] ** 2 + se_elbo**2).sqrt()
    assert ((means[1] - elbo.mean(0)).abs() < tol).all()
    tol = 5 * (ses[1000] ** 2 + se_elbo**2).sqrt()
    assert (means[1000] >= elbo.mean(0) - tol).all()
    # the gap to log p(x) shrinks as K grows
    for small, large in ((1, 10), (10, 1000)):
        tol = 5 * (ses[small] ** 2 + ses[large] ** 2).sqrt()
        assert (means[large] > means[small] - tol).all(), (small, large, means)
    gap = {k: (exact - m).mean() for k, m in means.items()}
    assert gap[1] > gap[10] > gap[1000], gap
    assert gap[1000] < 0.1 * gap[1], gap


def test_monte_carlo_kl_agrees_with_analytic_kl_in_expectation():
    W, b, s, x = _random_fa()
    model = factor_analysis(W, b, s)
    n = 4000
    batch = Batch(x.repeat(n, 1))
    with torch.no_grad():
        torch.manual_seed(1)
        analytic = model.elbo(batch, analytic_kl=True)
        torch.manual_seed(1)
        mc = model.elbo(batch, analytic_kl=False)
    # same random numbers, same z: the likelihood term is unchanged
    torch.testing.assert_close(mc.log_likelihood, analytic.log_likelihood)
    kl_mc = mc.kl.view(n, len(x))
    se = kl_mc.std(0) / math.sqrt(n)
    assert ((kl_mc.mean(0) - analytic.kl.view(n, len(x))[0]).abs() < 5 * se).all()
    # config.analytic_kl is the default when analytic_kl is None
    model.config.analytic_kl = False
    with torch.no_grad():
        torch.manual_seed(1)
        default = model.elbo(batch)
    torch.testing.assert_close(default.kl, mc.kl)


@pytest.mark.parametrize("likelihood", ["bernoulli", "gaussian"])
def test_every_parameter_gets_a_gradient(likelihood):
    model = VAE(VAEConfig(x_dim=6, z_dim=2, hidden_dims=[8, 5], likelihood=likelihood))
    x = torch.bernoulli(torch.full((10, 6), 0.5))
    assert_every_parameter_gets_gradient(model, Batch(x))


def test_elbo_terms_shapes():
    model = VAE(VAEConfig(x_dim=6, z_dim=2, hidden_dims=[8]))
    terms = model.elbo(Batch(torch.bernoulli(torch.full((10, 6), 0.5))))
    for t in (terms.log_likelihood, terms.kl, terms.steps):
        assert t.shape == (10,)
    assert (terms.steps == 1).all() and (terms.kl >= 0).all() and (terms.log_likelihood <= 0).all()


@pytest.mark.parametrize("shape", [(2, 5), (2, 1, 4), (4,)])
def test_wrong_x_shape_is_rejected(shape):
    model = VAE(VAEConfig(x_dim=4, z_dim=2, hidden_dims=[8]))
    with pytest.raises(ValueError, match=r"x must be \[B, 4\], got .*flatten images"):
        model.elbo(Batch(torch.zeros(shape)))


def test_bernoulli_decoder_refuses_grey_pixels_and_names_the_fix():
    model = VAE(VAEConfig(x_dim=4, z_dim=2, hidden_dims=[8]))
    x = torch.tensor([[0.0, 1.0, 1.0, 0.0], [0.0, 0.25, 1.0, 1.0]])
    with pytest.raises(
        ValueError,
        match=r"needs binary x \(0 or 1\), got values such as "
        r"0\.25; .*binarize=True\) or set likelihood=gauss",
    ):
        model.elbo(Batch(x))
    gaussian = VAE(VAEConfig(x_dim=4, z_dim=2, hidden_dims=[8], likelihood="gaussian"))
    assert torch.isfinite(gaussian.elbo(Batch(x)).elbo).all()  # grey pixels suit a Gaussian
    assert torch.isfinite(model.elbo(Batch(x.round())).elbo).all()


@pytest.mark.parametrize(
    "kw, match",
    [
        ({"x_dim": 0}, "x_dim must be >= 1"),
        ({"z_dim": -1}, "z_dim must be >= 1"),
        ({"likelihood": "poisson"}, "likelihood must be 'bernoulli' or 'gaussian'"),
        ({"activation": "swish"}, "activation must be one of"),
        ({"prior_flows": -1, "analytic_kl": False}, "prior_flows must be >= 0"),
        ({"prior_flows": 2}, "prior_flows > 0 needs analytic_kl=False"),
    ],
)
def test_bad_config_is_rejected(kw, match):
    with pytest.raises(ValueError, match=match):
        VAEConfig(**kw)


def test_sample_latents_reconstruct_shapes():
    model = VAE(VAEConfig(x_dim=6, z_dim=3, hidden_dims=[8]))
    z, x = model.sample(7)
    assert z.shape == (7, 3) and x.shape == (7, 6)
    assert ((x >= 0) & (x <= 1)).all()  # Bernoulli means
    batch = Batch(torch.bernoulli(torch.full((5, 6), 0.5)))
    mu = model.latents(batch)
    assert mu.shape == (5, 3)
    torch.testing.assert_close(mu, model.latents(batch))  # posterior means: deterministic
    rec = model.reconstruct(batch)
    assert rec.shape == (5, 6)
    torch.testing.assert_close(rec, model.decode(mu))


def test_short_training_on_digits_lowers_negative_elbo():
    train, val, _ = load_digits()
    model = VAE(VAEConfig(x_dim=64, z_dim=2, hidden_dims=[32]))
    before = evaluate_elbo(model, val, samples=2)["nelbo"]
    fit(
        model,
        train,
        None,
        TrainConfig(epochs=1, batch_size=32, lr=3e-3, progress=False, device="cpu"),
    )
    after = evaluate_elbo(model, val, samples=2)["nelbo"]
    assert after < before - 5.0, (before, after)


# ----------------------------------------------------------------------------- flow prior


def flow_prior_vae(**kw) -> VAE:
    model = VAE(
        VAEConfig(
            **{
                "x_dim": 64,
                "z_dim": 2,
                "hidden_dims": [32],
                "prior_flows": 4,
                "analytic_kl": False,
                **kw,
            }
        )
    )
    with torch.no_grad():  # couplings start as the identity; move them off it
        for net in model.prior.nets:
            net.net[-1].weight.normal_(0, 0.3)
    return model


def test_flow_prior_is_a_density_and_every_parameter_gets_a_gradient():
    model = flow_prior_vae()
    train, _, _ = load_digits()
    assert_every_parameter_gets_gradient(model, train.batch(torch.arange(16)))
    grid = torch.linspace(-9, 9, 361)
    z = torch.stack(torch.meshgrid(grid, grid, indexing="ij"), dim=-1).reshape(-1, 2)
    with torch.no_grad():
        density = model.p_z(z).log_prob(z).exp()
    assert abs(float(density.sum()) * float(grid[1] - grid[0]) ** 2 - 1) < 0.02
    z, x = model.sample(5)
    assert z.shape == (5, 2) and x.shape == (5, 64)
    # the KL against a flow does not split over dimensions: the dashboard shows none
    assert model.kl_per_dim(train.batch(torch.arange(16))) is None
    assert diagnostics.kl_per_dim(model, train.batch(torch.arange(16))) is None


def test_a_learnt_flow_prior_lowers_the_kl_below_the_standard_normal():
    """Fitting only the prior to a fixed encoder's aggregate posterior: E[log q - log p] must
    fall below its value against N(0, I), which the flow starts as."""
    train, _, _ = load_digits()
    x = train.batch(torch.arange(256)).x
    model = VAE(VAEConfig(x_dim=64, z_dim=2, hidden_dims=[32], prior_flows=4, analytic_kl=False))
    with torch.no_grad():  # spread the posteriors out so N(0, I) is a poor fit
        model.encoder.net[-1].weight.mul_(20)
    with torch.no_grad():
        q_z = model.encoder(x)
        z = q_z.sample()  # [256, 2], fixed
        log_q = q_z.log_prob(z)

    def mean_kl() -> torch.Tensor:
        return (log_q - model.p_z(z).log_prob(z)).mean()

    standard = float(mean_kl().detach())
    optimizer = torch.optim.Adam(model.prior.parameters(), lr=1e-2)
    for _ in range(50):
        optimizer.zero_grad()
        mean_kl().backward()
        optimizer.step()
    after = float(mean_kl().detach())
    assert after < 0.5 * standard, (standard, after)
