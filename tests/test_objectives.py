from __future__ import annotations

import itertools
import math

import pytest
import torch
from torch.distributions import Independent, Normal

from vaelab import objectives
from vaelab.data import Batch
from vaelab.dmm import DMM, DMMConfig
from vaelab.objectives import (
    ELBOTerms,
    importance_log_likelihood,
    kl_term,
    kl_weight,
    loss,
    masked_sum,
)
from vaelab.vae import VAE, VAEConfig


def _gaussians(b=6, z=3):
    mu = torch.randn(b, z, dtype=torch.float64)
    log_var = torch.randn(b, z, dtype=torch.float64)
    q = Independent(Normal(mu, torch.exp(0.5 * log_var)), 1)
    p = Independent(Normal(torch.zeros_like(mu), torch.ones_like(mu)), 1)
    return mu, log_var, q, p


def test_analytic_kl_equals_closed_form_with_log_variance():
    mu, log_var, q, p = _gaussians()
    # Kingma & Welling 2014, appendix B, written with the log-variance
    by_hand = 0.5 * (mu**2 + log_var.exp() - log_var - 1).sum(dim=-1)
    z = q.rsample()
    torch.testing.assert_close(kl_term(q, p, z, analytic=True), by_hand)


def test_analytic_kl_matches_monte_carlo_within_standard_error():
    _, _, q, p = _gaussians(b=4)
    n = 20000
    z = q.sample((n,))  # [n, B, Z]
    mc = kl_term(q, p, z, analytic=False)  # [n, B]
    assert mc.shape == (n, 4)
    se = mc.std(dim=0) / math.sqrt(n)
    exact = kl_term(q, p, z[0], analytic=True)
    assert ((mc.mean(dim=0) - exact).abs() < 5 * se).all(), (mc.mean(0), exact, se)


def test_monte_carlo_kl_is_log_q_minus_log_p_at_the_sample():
    _, _, q, p = _gaussians()
    z = q.sample()
    torch.testing.assert_close(kl_term(q, p, z, analytic=False), q.log_prob(z) - p.log_prob(z))


def test_masked_sum_ignores_nan_and_inf_padding():
    x = torch.tensor([[1.0, 2.0, float("nan")], [3.0, float("inf"), -float("inf")]])
    mask = torch.tensor([[True, True, False], [True, False, False]])
    torch.testing.assert_close(masked_sum(x, mask), torch.tensor([3.0, 3.0]))
    x.requires_grad_(True)
    masked_sum(x, mask).sum().backward()
    assert torch.isfinite(x.grad).all()
    torch.testing.assert_close(masked_sum(torch.ones(2, 3), None), torch.tensor([3.0, 3.0]))


def test_loss_normalises_by_observed_steps_and_weights_kl():
    terms = ELBOTerms(
        torch.tensor([-10.0, -20.0]), torch.tensor([2.0, 4.0]), torch.tensor([3.0, 2.0])
    )
    torch.testing.assert_close(terms.elbo, torch.tensor([-12.0, -24.0]))
    # -(ll - w kl).sum() / steps.sum()
    torch.testing.assert_close(loss(terms), torch.tensor(36.0 / 5.0))
    torch.testing.assert_close(loss(terms, 0.5), torch.tensor((30.0 + 3.0) / 5.0))
    torch.testing.assert_close(loss(terms, 0.0), torch.tensor(30.0 / 5.0))


def test_kl_weight_schedule_is_linear_then_flat():
    assert kl_weight(0, 10, 0.2) == pytest.approx(0.2)
    assert kl_weight(5, 10, 0.2) == pytest.approx(0.6)
    assert kl_weight(10, 10, 0.2) == pytest.approx(1.0)
    assert kl_weight(1000, 10, 0.2) == pytest.approx(1.0)
    steps = [kl_weight(s, 10, 0.0) for s in range(11)]
    assert all(b > a for a, b in itertools.pairwise(steps))
    assert kl_weight(0, 0, 0.2) == 1.0  # annealing off


@pytest.mark.parametrize("kw", [{"num_samples": 0}, {"chunk_size": 0}, {"num_samples": -3}])
def test_importance_log_likelihood_rejects_bad_arguments(kw):
    model = VAE(VAEConfig(x_dim=4, z_dim=2, hidden_dims=[8]))
    batch = Batch(torch.bernoulli(torch.full((3, 4), 0.5)))
    with pytest.raises(ValueError, match="num_samples and chunk_size must be >= 1"):
        importance_log_likelihood(model, batch, **kw)


def test_importance_log_likelihood_with_one_sample_is_the_monte_carlo_elbo():
    model = VAE(VAEConfig(x_dim=4, z_dim=2, hidden_dims=[8]))
    batch = Batch(torch.bernoulli(torch.full((3, 4), 0.5)))
    torch.manual_seed(3)
    estimate = importance_log_likelihood(model, batch, num_samples=1)
    torch.manual_seed(3)
    with torch.no_grad():
        elbo = model.elbo(batch, analytic_kl=False).elbo
    torch.testing.assert_close(estimate, elbo)


def test_importance_log_likelihood_chunking_does_not_change_the_estimate():
    model = VAE(VAEConfig(x_dim=4, z_dim=2, hidden_dims=[8]))
    batch = Batch(torch.bernoulli(torch.full((3, 4), 0.5)))
    torch.manual_seed(3)
    a = importance_log_likelihood(model, batch, num_samples=12, chunk_size=12)
    torch.manual_seed(3)
    with torch.no_grad():
        log_w = model.elbo(batch.repeat(12), analytic_kl=False).elbo.view(12, 3)
    torch.testing.assert_close(a, torch.logsumexp(log_w, 0) - math.log(12))
    b = importance_log_likelihood(model, batch, num_samples=12, chunk_size=5)
    assert b.shape == (3,) and torch.isfinite(b).all()


def _spy_chunks(monkeypatch):
    """Records the number of paths of each chunk importance_log_likelihood draws."""
    sizes = []
    real = objectives.elbo_samples

    def spy(model, batch, samples=1, **kw):
        sizes.append(samples)
        return real(model, batch, samples, **kw)

    monkeypatch.setattr(objectives, "elbo_samples", spy)
    return objectives, sizes


def test_importance_log_likelihood_default_chunk_fits_long_sequences_in_the_row_budget(
    monkeypatch,
):
    objectives, sizes = _spy_chunks(monkeypatch)
    model = DMM(DMMConfig(x_dim=5, z_dim=2, emission_dim=4, transition_dim=4, rnn_dim=6))
    lengths = torch.tensor([300, 120, 40])
    mask = torch.arange(300)[None, :] < lengths[:, None]
    batch = Batch(torch.bernoulli(torch.full((3, 300, 5), 0.5)), mask=mask)
    monkeypatch.setattr(objectives, "IS_CHUNK_ROWS", 3 * 300 * 7)  # 7 paths of 3 x 300 rows
    estimate = importance_log_likelihood(model, batch, num_samples=20)
    assert sizes == [7, 7, 6]
    assert estimate.shape == (3,) and torch.isfinite(estimate).all()
    sizes.clear()  # a budget below one path still draws one path at a time
    monkeypatch.setattr(objectives, "IS_CHUNK_ROWS", 100)
    importance_log_likelihood(model, batch, num_samples=3)
    assert sizes == [1, 1, 1]
    sizes.clear()  # an explicit chunk_size overrides the budget
    importance_log_likelihood(model, batch, num_samples=5, chunk_size=5)
    assert sizes == [5]


def test_importance_log_likelihood_default_chunk_takes_short_batches_whole(monkeypatch):
    _, sizes = _spy_chunks(monkeypatch)
    model = VAE(VAEConfig(x_dim=4, z_dim=2, hidden_dims=[8]))
    importance_log_likelihood(
        model, Batch(torch.bernoulli(torch.full((3, 4), 0.5))), num_samples=500
    )
    assert sizes == [500]  # 500 paths x 3 examples is far below the budget: one chunk


@pytest.mark.parametrize(
    "name, data",
    [
        ("vae", "digits"),
        ("ssm", "linear"),
        ("dmm", "jsb"),
        ("dmm_iaf", "jsb"),
        ("dmm_aug", "jsb"),
        ("realnvp", "moons"),
    ],
)
def test_forward_is_the_elbo_for_every_model(name, data):
    """Training calls models through forward (so DDP can synchronise gradients): it must give
    exactly the terms elbo gives for the same random state, with and without samples."""
    from vaelab import MODELS
    from vaelab.config import make_model
    from vaelab.datasets import load_dataset

    assert set(MODELS) == {"vae", "ssm", "dmm", "dmm_iaf", "dmm_aug", "realnvp"}  # all listed
    train, _, _ = load_dataset(data)
    small = {"vae": {"hidden_dims": [8]}, "realnvp": {"hidden_dim": 8, "num_layers": 2}}
    model = make_model(name, train, small.get(name, {}))
    batch = train.batch(torch.arange(3))
    for samples in (1, 2):
        torch.manual_seed(5)
        via_forward = objectives.elbo_samples(model, batch, samples)
        torch.manual_seed(5)
        direct = (
            model.elbo(batch, samples=samples)
            if name.startswith("dmm")
            else model.elbo(batch.repeat(samples))
        )
        for got, want in zip(
            (via_forward.log_likelihood, via_forward.kl, via_forward.steps),
            (direct.log_likelihood, direct.kl, direct.steps),
            strict=False,
        ):
            assert got.shape == (samples * 3,)
            assert torch.equal(got, want)
