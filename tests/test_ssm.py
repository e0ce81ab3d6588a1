"""Sequential VAE with actions: protocol, the seed's gradient bug, padding, and exact checks
against the Kalman filter on linear-Gaussian models."""

from __future__ import annotations

import math

import pytest
import torch
from helpers import assert_every_parameter_gets_gradient
from test_kalman import dense_posterior
from torch.distributions import MultivariateNormal

from vaelab import MODELS
from vaelab.data import Batch
from vaelab.distributions import LearnableNormal
from vaelab.kalman import LinearGaussianSSM, kalman_log_likelihood
from vaelab.objectives import importance_log_likelihood, loss, masked_sum
from vaelab.ssm import SSM, SSMConfig, reverse_sequences
from vaelab.systems import load_linear

GUIDES = ["filtering", "smoothing"]


def seed_batch(n: int = 1000, steps: int = 20) -> Batch:
    """The seed's configuration: T=20, batch 1000, observation 2, action 2 (latent 4)."""
    train, _, _ = load_linear(n_train=n, n_val=1, n_test=1, steps=steps)
    return next(train.batches(n, shuffle=False))


def small_system(seed: int = 0) -> LinearGaussianSSM:
    """A random linear-Gaussian system with diagonal noises (so the model can hold it)."""
    g = torch.Generator().manual_seed(seed)
    d = torch.float64
    A = torch.randn(2, 2, generator=g, dtype=d)
    return LinearGaussianSSM(
        m0=torch.randn(2, generator=g, dtype=d),
        P0=torch.diag(torch.tensor([1.0, 0.5], dtype=d)),
        A=0.8 * A / torch.linalg.matrix_norm(A, ord=2),
        B=torch.randn(2, 1, generator=g, dtype=d),
        Q=torch.diag(torch.tensor([0.3, 0.2], dtype=d)),
        C=torch.randn(2, 2, generator=g, dtype=d),
        R=torch.diag(torch.tensor([0.4, 0.3], dtype=d)),
        b=0.1 * torch.ones(2, dtype=d),
        d=torch.tensor([0.5, -0.5], dtype=d),
    )


def linear_model(sys: LinearGaussianSSM, guide: str) -> SSM:
    model = SSM(
        SSMConfig(
            x_dim=sys.x_dim, a_dim=sys.a_dim, z_dim=sys.z_dim, linear=True, guide=guide, rnn_dim=8
        )
    ).double()
    model.set_linear_system(sys)
    return model


def batch_from(sys: LinearGaussianSSM, n: int, steps: int, seed: int = 1) -> Batch:
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(n, steps, sys.a_dim, generator=g, dtype=torch.float64)
    _, x = sys.sample(a, generator=g)
    return Batch(x, a)


def mean_and_se(samples: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and standard error over dim 0."""
    return samples.mean(0), samples.std(0) / samples.shape[0] ** 0.5


# ----------------------------------------------------------------------------- config, protocol


def test_registered():
    assert MODELS["ssm"] == (SSMConfig, SSM)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"z_dim": 0}, "z_dim must be >= 1"),
        ({"a_dim": -1}, "a_dim must be >= 0"),
        ({"guide": "future"}, "guide must be one of"),
        ({"activation": "sin"}, "activation must"),
        ({"min_scale": 0.0}, "min_scale must be > 0"),
    ],
)
def test_config_rejects_bad_values(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SSMConfig(**kwargs)


@pytest.mark.parametrize("guide", GUIDES)
def test_shapes(guide):
    model = SSM(SSMConfig(x_dim=3, a_dim=2, z_dim=4, hidden_dim=8, rnn_dim=5, guide=guide))
    batch = Batch(torch.randn(6, 7, 3), torch.randn(6, 7, 2))
    terms = model.elbo(batch)
    assert terms.log_likelihood.shape == terms.kl.shape == terms.steps.shape == (6,)
    torch.testing.assert_close(terms.steps, torch.full((6,), 7.0))
    assert model.latents(batch).shape == (6, 7, 4)
    assert model.reconstruct(batch).shape == (6, 7, 3)
    z, x = model.sample(5, a=torch.randn(5, 9, 2))
    assert z.shape == (5, 9, 4) and x.shape == (5, 9, 3)
    z, x = model.sample(2, steps=3)  # actions default to zeros
    assert z.shape == (2, 3, 4) and x.shape == (2, 3, 3)


def test_bad_input_raises():
    model = SSM(SSMConfig(x_dim=2, a_dim=2, z_dim=3, hidden_dim=8))
    with pytest.raises(ValueError, match=r"x must be \[B, T, 2\]"):
        model.elbo(Batch(torch.randn(4, 2), torch.randn(4, 5, 2)))
    with pytest.raises(ValueError, match="this model takes actions"):
        model.elbo(Batch(torch.randn(4, 5, 2)))
    with pytest.raises(ValueError, match=r"a must be \[4, 5, 2\]"):
        model.elbo(Batch(torch.randn(4, 5, 2), torch.randn(4, 5, 1)))
    holes = torch.tensor([[True, False, True, False, False]]).expand(4, -1)
    with pytest.raises(ValueError, match="padding at the end"):
        model.elbo(Batch(torch.randn(4, 5, 2), torch.randn(4, 5, 2), holes))
    with pytest.raises(ValueError, match=r"a must be \[n, steps, 2\]"):
        model.sample(3, steps=4, a=torch.zeros(3, 5, 2))
    with pytest.raises(ValueError, match="linear=True"):
        model.linear_system()


def test_no_actions():
    model = SSM(SSMConfig(x_dim=2, a_dim=0, z_dim=3, hidden_dim=8, guide="smoothing"))
    terms = model.elbo(Batch(torch.randn(4, 5, 2)))
    assert torch.isfinite(terms.elbo).all()


# ----------------------------------------------------------------------------- the seed's bug


@pytest.mark.parametrize("guide", GUIDES)
def test_seed_configuration_trains_every_network(guide):
    """The seed's SSM gave zero gradients to its transition and generative networks. At its
    configuration (T=20, batch 1000, z 4, x 2, a 2, tanh MLPs) every parameter of the
    transition, emitter and guide must get a non-zero gradient, and training lowers -ELBO."""
    batch = seed_batch()
    model = SSM(
        SSMConfig(
            x_dim=2, a_dim=2, z_dim=4, hidden_dim=32, activation="tanh", guide=guide, rnn_dim=16
        )
    )
    assert_every_parameter_gets_gradient(model, batch)
    for net in (model.transition, model.emitter, model.combiner):
        assert all(p.grad.abs().sum() > 0 for p in net.parameters())

    def nelbo(samples: int = 4) -> tuple[float, float]:
        with torch.no_grad():
            v = torch.stack([-model.elbo(batch).elbo / 20 for _ in range(samples)])  # [S, B]
        per_seq = v.mean(0)
        return float(per_seq.mean()), float(per_seq.std() / len(per_seq) ** 0.5)

    before, se_before = nelbo()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(15):
        opt.zero_grad()
        loss(model.elbo(batch)).backward()
        opt.step()
    after, se_after = nelbo()
    assert after < before - 5 * math.hypot(se_before, se_after), (before, after)


# ----------------------------------------------------------------------------- padding, KL


@pytest.mark.parametrize("guide", GUIDES)
def test_padding_values_do_not_matter(guide):
    model = SSM(SSMConfig(x_dim=2, a_dim=2, z_dim=3, hidden_dim=8, rnn_dim=6, guide=guide))
    lengths = torch.tensor([5, 3, 4, 1])
    x, a = torch.randn(4, 8, 2), torch.randn(4, 8, 2)
    mask = torch.arange(8) < lengths[:, None]
    nan = torch.tensor(float("nan"))
    padded = Batch(
        torch.where(mask[..., None], x, nan), torch.where(mask[..., None], a, nan), mask
    )
    torch.manual_seed(1)
    terms = model.elbo(padded)
    loss(terms).backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())
    # the same batch cut to its longest sequence, padded with other values: noise for the first
    # 5 steps is drawn in the same order, so the ELBO must be identical
    trimmed = Batch(torch.where(mask[..., None], x, 7.0)[:, :5], a[:, :5], mask[:, :5])
    torch.manual_seed(1)
    again = model.elbo(trimmed)
    torch.testing.assert_close(terms.log_likelihood, again.log_likelihood)
    torch.testing.assert_close(terms.kl, again.kl)
    torch.testing.assert_close(terms.steps, lengths.float())


def test_reverse_sequences_reverses_within_lengths():
    x = torch.arange(10.0).view(2, 5, 1)
    out = reverse_sequences(x, torch.tensor([5, 3]))
    assert out[:, :, 0].tolist() == [[4, 3, 2, 1, 0], [7, 6, 5, 8, 9]]
    torch.testing.assert_close(reverse_sequences(out, torch.tensor([5, 3])), x)


def test_smoothing_guide_sees_the_future_and_filtering_does_not():
    batch = Batch(torch.randn(3, 6, 2), torch.randn(3, 6, 2))
    changed = Batch(batch.x.clone(), batch.a)
    changed.x[:, 4] += 1.0
    for guide, sees in (("filtering", False), ("smoothing", True)):
        model = SSM(SSMConfig(x_dim=2, a_dim=2, z_dim=3, hidden_dim=8, rnn_dim=6, guide=guide))
        early = model.latents(batch)[:, :4], model.latents(changed)[:, :4]
        assert (not torch.allclose(*early)) == sees


def test_monte_carlo_kl_matches_analytic_in_expectation():
    model = SSM(SSMConfig(x_dim=2, a_dim=2, z_dim=3, hidden_dim=8))
    batch = Batch(torch.randn(2, 5, 2), torch.randn(2, 5, 2)).repeat(4000)
    with torch.no_grad():
        analytic = model.elbo(batch, analytic_kl=True).kl.view(4000, 2)
        mc = model.elbo(batch, analytic_kl=False).kl.view(4000, 2)
    (m_a, se_a), (m_mc, se_mc) = mean_and_se(analytic), mean_and_se(mc)
    assert ((m_a - m_mc).abs() < 5 * (se_a**2 + se_mc**2).sqrt()).all()


# ----------------------------------------------------------------------------- exact checks


def test_linear_system_round_trip():
    sys = small_system()
    model = linear_model(sys, "filtering")
    back = model.linear_system()
    for name in ("m0", "P0", "A", "B", "Q", "C", "R", "b", "d"):
        torch.testing.assert_close(getattr(back, name), getattr(sys, name))
    full = LinearGaussianSSM(sys.m0, sys.P0 + 0.1, sys.A, sys.B, sys.Q, sys.C, sys.R)
    with pytest.raises(ValueError, match="P0 must be diagonal"):
        model.set_linear_system(full)


@pytest.mark.parametrize("guide", GUIDES)
def test_elbo_below_exact_log_likelihood(guide):
    """E_q[ELBO] <= log p(x | a) for any guide; here an untrained one."""
    sys = small_system()
    model = linear_model(sys, guide)
    batch = batch_from(sys, 5, 6)
    log_p = kalman_log_likelihood(sys, batch.x, batch.a)
    with torch.no_grad():
        elbos = model.elbo(batch.repeat(500)).elbo.view(500, 5)
    mean, se = mean_and_se(elbos)
    assert (mean <= log_p + 3 * se).all()
    # and the model's own matrices give the same exact value
    torch.testing.assert_close(
        kalman_log_likelihood(model.linear_system(), batch.x, batch.a), log_p
    )


@pytest.mark.parametrize("guide", GUIDES)
def test_gap_equals_kl_to_exact_posterior(guide):
    """log p(x) - E_q[ELBO] = KL(q(z | x) || p(z | x)); the right side estimated with other
    samples, log p(z | x) from the dense Gaussian conditional (T=4)."""
    sys = small_system()
    model = linear_model(sys, guide)
    n, steps, k = 3, 4, 4000
    batch = batch_from(sys, n, steps)
    log_p = kalman_log_likelihood(sys, batch.x, batch.a)
    with torch.no_grad():
        elbo = model.elbo(batch.repeat(k)).elbo.view(k, n)
        z, q_z = model.posterior(batch.repeat(k))
        log_q = masked_sum(q_z.log_prob(z), None).view(k, n)
    mean, cov = dense_posterior(sys, batch.x, batch.a)
    log_post = MultivariateNormal(mean, cov).log_prob(z.flatten(1).view(k, n, -1))  # [k, n]
    (m_elbo, se_elbo), (kl, se_kl) = mean_and_se(elbo), mean_and_se(log_q - log_post)
    assert (kl > 1.0).all()  # an untrained guide is far from the posterior: a real test
    assert ((log_p - m_elbo - kl).abs() < 5 * (se_elbo**2 + se_kl**2).sqrt()).all()


@pytest.mark.integration  # a process of its own: make test, not test-fast
def test_trained_guide_closes_the_gap():
    """With the true point-mass system frozen in the model, training only the smoothing guide
    (< 20 s) shrinks log p - ELBO from 170 nats per step to below 2 nats per step (1.56
    measured)."""
    train, _, test = load_linear(n_train=500, n_val=1, n_test=100, steps=10)
    sys = train.info["system"]
    model = SSM(SSMConfig(linear=True, guide="smoothing", rnn_dim=32))
    model.set_linear_system(sys)
    for p in model.generative_parameters():
        p.requires_grad_(False)
    batch = next(test.batches(100, shuffle=False))
    log_p = kalman_log_likelihood(sys.to(torch.float32), batch.x, batch.a)

    def gap() -> float:
        with torch.no_grad():
            elbo = torch.stack([model.elbo(batch).elbo for _ in range(10)]).mean(0)
        return float((log_p - elbo).sum() / batch.mask.sum())

    before = gap()
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    generator = torch.Generator().manual_seed(0)
    for _ in range(60):
        for b in train.batches(100, generator=generator):
            opt.zero_grad()
            loss(model.elbo(b)).backward()
            opt.step()
    after = gap()
    assert before > 100 and 0 < after < 2.0, (before, after)


def test_importance_sampling_between_elbo_and_exact():
    sys = small_system()
    model = linear_model(sys, "filtering")
    n, steps = 20, 5
    batch = batch_from(sys, n, steps)
    log_p = kalman_log_likelihood(sys, batch.x, batch.a)
    is_estimate = importance_log_likelihood(model, batch, num_samples=1000, chunk_size=500)
    with torch.no_grad():
        elbo = model.elbo(batch.repeat(200)).elbo.view(200, n).mean(0)
    # each difference has expectation <= 0 (Jensen), so their mean must not exceed 3 SE
    diff = is_estimate - log_p
    assert diff.mean() <= 3 * diff.std() / n**0.5
    above = is_estimate - elbo
    assert above.mean() > 3 * above.std() / n**0.5


# ----------------------------------------------------------------------------- learnable N(mu, s)


def test_learnable_normal_reaches_closed_form_mle():
    """Fitting N(mu, sigma) by gradient ascent on the log-likelihood reaches the closed form:
    the sample mean and the biased sample standard deviation."""
    data = 3.0 + 2.0 * torch.randn(500, 2, dtype=torch.float64)
    dist = LearnableNormal(2).double()
    opt = torch.optim.Adam(dist.parameters(), lr=0.05)
    for _ in range(600):
        opt.zero_grad()
        (-dist(len(data)).log_prob(data).mean()).backward()
        opt.step()
    torch.testing.assert_close(dist.loc.detach(), data.mean(0), atol=1e-3, rtol=0)
    torch.testing.assert_close(dist.scale.detach(), data.std(0, correction=0), atol=1e-3, rtol=0)


@pytest.mark.parametrize("guide", GUIDES)
def test_kl_per_dim_sums_to_the_elbo_kl(guide):
    model = SSM(SSMConfig(guide=guide, rnn_dim=8, hidden_dim=16))
    train, _, _ = load_linear(n_train=8, n_val=1, n_test=1, steps=6, min_steps=3)
    batch = next(train.batches(8, shuffle=False))
    torch.manual_seed(3)
    per_dim = model.kl_per_dim(batch)
    torch.manual_seed(3)  # the same guide path
    terms = model.elbo(batch, analytic_kl=True)
    assert per_dim.shape == (model.config.z_dim,)
    torch.testing.assert_close(per_dim.sum(), terms.kl.sum() / terms.steps.sum())
