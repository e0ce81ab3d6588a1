"""The augmented DMM (x_{t-1} in the transition and the emission) and its autoregressive
emission over the notes, against independent computations."""

from __future__ import annotations

import itertools

import pytest
import torch
from torch.distributions import Bernoulli

from tests.helpers import assert_every_parameter_gets_gradient
from tests.test_dmm import ragged_batch
from vaelab import MODELS
from vaelab.data import Batch, load_jsb
from vaelab.distributions import MADEBernoulli
from vaelab.dmm_aug import DMMAug, DMMAugConfig
from vaelab.objectives import importance_log_likelihood

SMALL = {
    "x_dim": 6,
    "z_dim": 3,
    "emission_dim": 8,
    "transition_dim": 8,
    "rnn_dim": 10,
    "made_dim": 8,
}


# the deeper MADE emission: two hidden layers and direct connections from the earlier notes
DEEP = {"emission": "made", "made_layers": 2, "made_direct": True}


def small_aug(emission: str = "bernoulli", **kw) -> DMMAug:
    settings = DEEP if emission == "made-deep" else {"emission": emission}
    return DMMAug(DMMAugConfig(**{**SMALL, **settings, **kw}))


EMISSIONS = ["bernoulli", "made", "made-deep"]


# ----------------------------------------------------------------------------- the emission


@pytest.mark.parametrize(("num_hidden", "direct"), [(1, False), (2, True)])
@pytest.mark.parametrize("bits", [1, 6, 10])
def test_the_autoregressive_bernoulli_sums_to_one_over_all_vectors(bits, num_hidden, direct):
    """Exact normalisation: the probabilities of all 2^D vectors sum to 1 (D <= 10)."""
    module = MADEBernoulli(4, bits, max(bits, 2), num_hidden=num_hidden, direct=direct).double()
    with torch.no_grad():
        for p in module.parameters():
            p.normal_(0.0, 0.7)  # away from the zero-initialised output
    context = torch.randn(3, 4, dtype=torch.double)
    p_x = module(context)
    every = torch.tensor(list(itertools.product([0.0, 1.0], repeat=bits)), dtype=torch.double)
    log_p = p_x.log_prob(every[:, None, :].expand(-1, 3, -1))  # [2^D, 3]
    torch.testing.assert_close(torch.logsumexp(log_p, dim=0), torch.zeros(3, dtype=torch.double))


@pytest.mark.parametrize(("num_hidden", "direct"), [(1, False), (2, True)])
def test_the_autoregressive_bernoulli_is_the_chain_rule_and_samples_from_it(num_hidden, direct):
    """log p(x) equals sum_d log p(x_d | x_<d) computed bit by bit (each conditional from the
    network with the later bits scrambled: they must not matter), and note-by-note sampling
    draws every vector with its probability."""
    torch.manual_seed(0)
    module = MADEBernoulli(2, 4, 6, num_hidden=num_hidden, direct=direct).double()
    with torch.no_grad():
        for p in module.parameters():
            p.normal_(0.0, 1.0)
    context = torch.randn(1, 2, dtype=torch.double)
    p_x = module(context)
    x = torch.tensor([[1.0, 0.0, 1.0, 1.0]], dtype=torch.double)
    total = 0.0
    for d in range(4):
        scrambled = x.clone()
        scrambled[:, d:] = torch.bernoulli(torch.full((1, 4 - d), 0.5, dtype=torch.double))
        logit = p_x.logits(scrambled)[:, d]
        total = total + Bernoulli(logits=logit).log_prob(x[:, d])
    torch.testing.assert_close(p_x.log_prob(x), total)
    draws = p_x.sample((20000,))[:, 0]  # [N, 4]
    codes = (draws * torch.tensor([8.0, 4.0, 2.0, 1.0], dtype=torch.double)).sum(-1).long()
    freq = torch.bincount(codes, minlength=16).double() / len(codes)
    every = torch.tensor(list(itertools.product([0.0, 1.0], repeat=4)), dtype=torch.double)
    prob = p_x.log_prob(every[:, None, :]).exp()[:, 0]
    se = (prob * (1 - prob) / len(codes)).sqrt()
    assert ((freq - prob).abs() < 5 * se + 1e-4).all(), (freq, prob)


# ----------------------------------------------------------------------------- the model


@pytest.mark.parametrize("emission", EMISSIONS)
def test_padding_never_changes_the_elbo_and_x0_is_zero(emission):
    model = small_aug(emission).double()
    short = ragged_batch([5], pad=0.0)
    long = ragged_batch([8])
    x = torch.full((2, 8, 6), float("nan"), dtype=torch.float64)
    x[0, :5], x[1] = short.x[0], long.x[0]
    mask = torch.arange(8) < torch.tensor([5, 8])[:, None]
    noise = torch.randn(2, 8, 3, dtype=torch.float64)
    for fast in (True, False):
        model.fast = fast
        alone = model.elbo(Batch(short.x.double()), noise=noise[:1, :5])
        both = model.elbo(Batch(x, mask=mask), noise=noise)
        torch.testing.assert_close(both.elbo[0], alone.elbo[0])
        assert torch.isfinite(both.elbo).all()


@pytest.mark.parametrize("emission", EMISSIONS)
def test_the_monte_carlo_elbo_is_the_log_joint_minus_log_q_step_by_step(emission):
    """log p(x, z) - log q(z | x) along the guide's path, computed one step at a time with
    the modules and x_0 = 0, equals terms.elbo (analytic_kl=False), on both paths."""
    model = small_aug(emission).double()
    batch = Batch(ragged_batch([5]).x.double())
    noise = torch.randn(1, 5, 3, dtype=torch.float64)
    x = batch.x
    h_rnn = model.rnn_states(x, torch.tensor([5]))
    z_q, z_p, x_prev, total = model.z_q_0[None], model.z_0[None], torch.zeros(1, 6), 0.0
    x_prev = x_prev.double()
    for t in range(5):
        q = model.combiner(z_q, h_rnn[:, t])
        z = q.base_dist.loc + q.base_dist.scale * noise[:, t]
        p = model.transition(torch.cat([z_p, x_prev], dim=-1))
        total = total + p.log_prob(z) - q.log_prob(z)
        total = total + model.emitter(z, x_prev).log_prob(x[:, t])
        z_q = z_p = z
        x_prev = x[:, t]
    for fast in (True, False):
        model.fast = fast
        terms = model.elbo(batch, analytic_kl=False, noise=noise)
        torch.testing.assert_close(terms.elbo, total)


@pytest.mark.parametrize("emission", EMISSIONS)
def test_every_parameter_gets_a_gradient(emission):
    assert_every_parameter_gets_gradient(small_aug(emission), ragged_batch([6, 3, 4]))


@pytest.mark.parametrize("emission", EMISSIONS)
def test_sampling_feeds_each_sampled_x_into_the_next_step(emission, monkeypatch):
    model = small_aug(emission)
    seen = []
    real = model.emission

    def spy(z, a_prev=None):
        seen.append(a_prev.clone())
        return real(z, a_prev)

    monkeypatch.setattr(model, "emission", spy)
    monkeypatch.setattr(
        model,
        "transition_prior",
        lambda z, a, real=model.transition_prior: seen.append(a.clone()) or real(z, a),
    )
    z, x = model.sample(4, steps=6)
    assert z.shape == (4, 6, 3) and x.shape == (4, 6, 6) and set(x.unique().tolist()) <= {0, 1}
    emitted = seen[0::2][:1] + seen[2::2]  # emission at t = 1, then emission after transition
    assert torch.equal(seen[0], torch.zeros(4, 6))  # x_0 = 0
    for t in range(1, 6):  # step t's transition and emission read the sampled x_{t-1}
        assert torch.equal(seen[2 * t - 1], x[:, t - 1])
        assert torch.equal(seen[2 * t], x[:, t - 1])
    assert len(emitted) == 6


@pytest.mark.parametrize("emission", EMISSIONS)
def test_importance_sampled_nll_is_above_the_elbo(emission):
    model = small_aug(emission)
    batch = ragged_batch([5, 3, 4])
    torch.manual_seed(1)
    log_p = importance_log_likelihood(model, batch, num_samples=64, chunk_size=16)
    with torch.no_grad():
        elbo = model.elbo(batch, analytic_kl=False, samples=64).elbo.view(64, 3)
    assert torch.isfinite(log_p).all() and (log_p > elbo.mean(dim=0)).all()


def test_registered_configured_and_refused_where_it_does_not_fit():
    assert MODELS["dmm_aug"] == (DMMAugConfig, DMMAug)
    with pytest.raises(ValueError, match="emission must be"):
        DMMAugConfig(emission="nade")
    with pytest.raises(ValueError, match="made_dim must be >= x_dim - 1"):
        DMMAugConfig(made_dim=10)
    with pytest.raises(ValueError, match="made_layers must be >= 1"):
        DMMAugConfig(emission="made", made_layers=0)
    train = load_jsb()[0]
    model = DMMAug(DMMAugConfig(z_dim=4, emission_dim=8, transition_dim=8, rnn_dim=8))
    assert model.incompatibility(train) is None
    assert DMMAug.feeds_back_x and not MODELS["dmm"][1].feeds_back_x
