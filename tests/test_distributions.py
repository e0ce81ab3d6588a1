from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.distributions import Independent, Normal

from vaelab.distributions import BernoulliLogits, DiagGaussian, LearnableNormal, standard_normal


def test_diag_gaussian_shapes_and_multiple_contexts():
    module = DiagGaussian(5, 3, [8])
    a, b = torch.randn(4, 7, 2), torch.randn(4, 7, 3)
    q = module(a, b)
    assert q.batch_shape == (4, 7) and q.event_shape == (3,)
    torch.testing.assert_close(q.mean, module(torch.cat([a, b], dim=-1)).mean)
    assert q.log_prob(q.rsample()).shape == (4, 7)


def test_diag_gaussian_scale_stays_above_min_scale():
    module = DiagGaussian(2, 3, [], min_scale=1e-2)
    with torch.no_grad():
        module.net[0].weight.zero_()
        module.net[0].bias.fill_(-1e4)  # huge negative pre-activation for loc and scale
    q = module(torch.zeros(6, 2))
    scale = q.base_dist.scale
    assert (scale > 0).all() and (scale >= 1e-2).all()
    assert torch.isfinite(q.log_prob(torch.zeros(6, 3))).all()


def test_diag_gaussian_scale_is_softplus_plus_min_scale():
    module = DiagGaussian(2, 3, [], min_scale=1e-3)
    c = torch.randn(4, 2)
    pre = module.net(c)[:, 3:]
    expected = torch.log1p(torch.exp(pre)) + 1e-3
    torch.testing.assert_close(module(c).base_dist.scale, expected)


def test_independent_normal_log_prob_equals_hand_written_density():
    loc = torch.randn(4, 3, dtype=torch.float64)
    scale = torch.rand(4, 3, dtype=torch.float64) + 0.1
    x = torch.randn(4, 3, dtype=torch.float64)
    by_hand = (
        -0.5 * ((x - loc) / scale) ** 2 - torch.log(scale) - 0.5 * math.log(2 * math.pi)
    ).sum(dim=-1)
    torch.testing.assert_close(Independent(Normal(loc, scale), 1).log_prob(x), by_hand)


def test_bernoulli_logits_log_prob_is_minus_bce():
    module = BernoulliLogits(3, 5, [4])
    c = torch.randn(6, 3)
    x = torch.bernoulli(torch.full((6, 5), 0.5))
    logits = module.net(c)
    bce = nn.functional.binary_cross_entropy_with_logits(logits, x, reduction="none").sum(-1)
    p = module(c)
    assert p.event_shape == (5,)
    torch.testing.assert_close(p.log_prob(x), -bce)
    torch.testing.assert_close(p.mean, torch.sigmoid(logits))


def test_learnable_normal_initial_values_and_expansion():
    prior = LearnableNormal(3, loc=0.5, scale=2.0)
    torch.testing.assert_close(prior.scale, torch.full((3,), 2.0))
    p = prior(4, 5)
    assert p.batch_shape == (4, 5) and p.event_shape == (3,)
    torch.testing.assert_close(p.mean, torch.full((4, 5, 3), 0.5))
    p.log_prob(torch.zeros(4, 5, 3)).sum().backward()
    assert prior.loc.grad is not None and prior.raw_scale.grad is not None


def test_learnable_normal_rejects_scale_below_floor():
    with pytest.raises(ValueError, match="scale must exceed min_scale"):
        LearnableNormal(2, scale=1e-4, min_scale=1e-3)


def test_standard_normal_like():
    z = torch.randn(3, 4, dtype=torch.float64)
    p = standard_normal(z)
    assert p.event_shape == (4,) and p.batch_shape == (3,) and p.mean.dtype == torch.float64
    torch.testing.assert_close(p.log_prob(z), -0.5 * (z**2).sum(-1) - 2 * math.log(2 * math.pi))
