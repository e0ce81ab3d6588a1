"""Flows: every transform against autograd Jacobians, inverses, normalisation on a grid,
gradients, and a conditional RealNVP against a conditional Gaussian on two-moons."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.autograd.functional import jacobian
from torch.distributions import Independent, Normal

from tests.helpers import assert_every_parameter_gets_gradient
from vaelab import MODELS
from vaelab.data import Batch, load_moons
from vaelab.distributions import DiagGaussian
from vaelab.flows import (
    AffineAutoregressive,
    AffineCoupling,
    ConditionalRealNVP,
    IAFStack,
    Permute,
)
from vaelab.nn import MADE
from vaelab.objectives import importance_log_likelihood
from vaelab.realnvp import ConditionalFlowModel, RealNVPConfig


def perturb(module: nn.Module, std: float = 0.3) -> nn.Module:
    """Random parameters, so no transform sits at its (zero-initialised) identity."""
    with torch.no_grad():
        for p in module.parameters():
            p.normal_(0.0, std)
    return module


def make_transforms(dim: int = 3, context_dim: int = 2, batch: tuple[int, ...] = ()):
    """One transform of each kind, float64, random parameters, no cache (pure functions)."""
    made = perturb(MADE(dim, [8, 8], num_outputs=2)).double()
    flow = perturb(ConditionalRealNVP(dim, context_dim, (8,), num_layers=2)).double()
    context = torch.randn(*batch, context_dim, dtype=torch.float64)
    return {
        "iaf": AffineAutoregressive(made, cache_size=0),
        "permute": Permute(
            torch.tensor([2, 0, 1][:dim] if dim == 3 else list(range(dim))[::-1]), cache_size=0
        ),
        "coupling0": AffineCoupling(flow.nets[0], flow.masks[0].double(), context, cache_size=0),
        "coupling1": AffineCoupling(flow.nets[1], flow.masks[1].double(), context, cache_size=0),
    }


@pytest.mark.parametrize("kind", ["iaf", "permute", "coupling0", "coupling1"])
def test_log_det_equals_slogdet_of_autograd_jacobian(kind):
    t = make_transforms()[kind]
    for _ in range(5):
        x = torch.randn(3, dtype=torch.float64)
        jac = jacobian(t, x)  # [3, 3], d y_i / d x_j
        sign, logabsdet = torch.linalg.slogdet(jac)
        assert sign != 0
        torch.testing.assert_close(t.log_abs_det_jacobian(x, t(x)), logabsdet)
        # and the inverse direction: log|det dx/dy| = -log|det dy/dx|
        y = t(x)
        inv_jac = jacobian(t.inv, y)
        torch.testing.assert_close(
            t.inv.log_abs_det_jacobian(y, x), torch.linalg.slogdet(inv_jac)[1]
        )


@pytest.mark.parametrize("kind", ["iaf", "permute", "coupling0", "coupling1"])
def test_inverse_of_forward_is_identity(kind):
    t = make_transforms(batch=(4, 5))[kind]
    x = torch.randn(4, 5, 3, dtype=torch.float64)
    y = t(x)
    assert y.shape == x.shape
    if kind != "permute":
        assert not torch.allclose(y, x)  # not trivially the identity
    torch.testing.assert_close(t.inv(y), x)
    torch.testing.assert_close(t(t.inv(x)), x)


def test_iaf_jacobian_is_lower_triangular_with_gate_diagonal():
    dim = 5
    made = perturb(MADE(dim, [16, 16])).double()
    t = AffineAutoregressive(made, cache_size=0)
    x = torch.randn(dim, dtype=torch.float64)
    jac = jacobian(t, x)
    # y_i depends on x_j only for j <= i (identity order)
    assert torch.all(jac.triu(diagonal=1) == 0)
    assert (jac.tril(diagonal=-1).abs() > 1e-6).sum() >= dim  # the masks let x_{<i} through
    sigma = torch.sigmoid(made(x)[1] + t.gate_bias)
    torch.testing.assert_close(torch.diagonal(jac), sigma)


@pytest.mark.parametrize(("hidden", "direct"), [([6], False), ([6, 5], True)])
def test_made_output_depends_only_on_earlier_inputs(hidden, direct):
    dim = 4
    made = perturb(MADE(dim, hidden, num_outputs=3, context_dim=2, direct=direct)).double()
    x, c = torch.randn(dim, dtype=torch.float64), torch.randn(2, dtype=torch.float64)
    jac = jacobian(lambda v: made(v, c), x)  # [3, D, D]
    assert torch.all(jac.triu(diagonal=0) == 0)  # output for dim d ignores x_d, x_{>d}
    if direct:  # every earlier input reaches every later output linearly, whatever the ReLUs do
        assert (jac.tril(diagonal=-1).abs() > 0).sum() == 3 * dim * (dim - 1) // 2
    # the context is read by every output, the first dim's included (with hidden units of
    # degree 1..D-1 only, its outputs would otherwise be constants)
    by_context = jacobian(lambda u: made(x, u), c)  # [3, D, 2]
    assert (by_context.abs().sum(dim=-1) > 0).all()


def test_made_rejects_narrow_hidden_layers():
    with pytest.raises(ValueError, match="hidden widths must be >= in_dim - 1"):
        MADE(5, [3])


@torch.no_grad()
def trapezoid_mass(log_prob, lim: float, n: int, dim: int) -> float:
    grid = torch.linspace(-lim, lim, n, dtype=torch.float64)
    if dim == 1:
        density = log_prob(grid[:, None]).exp()
        return float(torch.trapezoid(density, grid))
    xx, yy = torch.meshgrid(grid, grid, indexing="ij")
    density = log_prob(torch.stack([xx, yy], dim=-1)).exp()  # [n, n]
    return float(torch.trapezoid(torch.trapezoid(density, grid, dim=1), grid))


@pytest.mark.parametrize("dim", [1, 2])
@pytest.mark.parametrize("flow", ["iaf", "realnvp"])
def test_density_integrates_to_one_on_a_grid(dim, flow):
    if flow == "iaf":
        stack = perturb(IAFStack(dim, num_iafs=2, hidden_dim=8), std=0.5).double()
        base = Independent(
            Normal(torch.zeros(dim, dtype=torch.float64), torch.ones(dim, dtype=torch.float64)), 1
        )
        q = stack(base)
    else:
        model = perturb(ConditionalRealNVP(dim, 1, (8,), num_layers=4), std=0.2).double()
        q = model(torch.tensor([0.7], dtype=torch.float64))
    samples = q.sample((20000,))
    lim = 12.0
    # the box holds (almost) all the mass: every one of 20000 samples lies well inside it
    assert samples.abs().max() < lim / 1.5
    mass = trapezoid_mass(q.log_prob, lim, 801 if dim == 1 else 401, dim)
    # trapezoid error at spacing 0.06 on these smooth densities is far below 1e-2; a wrong
    # log-det sign or a missing term is off by O(1)
    assert abs(mass - 1.0) < 1e-2


def test_iaf_stack_on_batch_and_time_log_prob_matches_independent_computation():
    B, T, Z = 4, 5, 3
    stack = perturb(IAFStack(Z, num_iafs=2, hidden_dim=8)).double()
    base = Independent(
        Normal(
            torch.randn(B, T, Z, dtype=torch.float64),
            torch.rand(B, T, Z, dtype=torch.float64) + 0.5,
        ),
        1,
    )
    q = stack(base)
    assert q.batch_shape == (B, T) and q.event_shape == (Z,)
    torch.manual_seed(1)
    z = q.rsample()
    torch.manual_seed(1)
    z0 = base.rsample()  # the same base draw
    assert z.shape == (B, T, Z)
    # independent: push z0 by hand, log-det from slogdet of the Jacobian of the whole stack
    fresh = [t.with_cache(0) for t in stack.transforms()]

    def push(v):
        for t in fresh:
            v = t(v)
        return v

    torch.testing.assert_close(push(z0), z)
    flat = z0.reshape(-1, Z)
    log_det = torch.stack([torch.linalg.slogdet(jacobian(push, v))[1] for v in flat])
    expected = base.log_prob(z0) - log_det.view(B, T)
    torch.testing.assert_close(q.log_prob(z), expected)  # through the cache: no inversion
    torch.testing.assert_close(q.log_prob(z.clone()), expected)  # through the inverse
    assert q.rsample((7,)).shape == (7, B, T, Z)


def test_realnvp_log_prob_of_rsample_and_push():
    B, D, C = 6, 2, 3
    flow = perturb(ConditionalRealNVP(D, C, (8,), num_layers=4)).double()
    c = torch.randn(B, C, dtype=torch.float64)
    p = flow(c)
    torch.manual_seed(2)
    y = p.rsample()
    torch.manual_seed(2)
    base = flow.base_distribution(c)
    x0 = base.rsample()
    torch.testing.assert_close(flow.push(x0, c), y)
    torch.testing.assert_close(flow.pull(y, c), x0)
    log_det = torch.stack(
        [
            torch.linalg.slogdet(jacobian(lambda v, ci=ci: flow.push(v, ci), v))[1]
            for v, ci in zip(x0, c, strict=False)
        ]
    )
    torch.testing.assert_close(p.log_prob(y), base.log_prob(x0) - log_det)
    torch.testing.assert_close(p.log_prob(y.clone()), base.log_prob(x0) - log_det)
    assert p.sample((5,)).shape == (5, B, D)
    assert p.log_prob(p.sample((5,))).shape == (5, B)


def test_every_iaf_parameter_gets_a_gradient():
    # local check: the IAF stack is not a protocol model, so the shared helper does not apply
    stack = IAFStack(3, num_iafs=2, hidden_dim=8)
    base = Independent(Normal(torch.zeros(4, 5, 3, requires_grad=True), torch.ones(4, 5, 3)), 1)
    q = stack(base)
    z = q.rsample()
    value = (q.log_prob(z) - Independent(Normal(0.0, 1.0).expand([3]), 1).log_prob(z)).sum()
    value.backward()
    for name, p in stack.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert (p.grad != 0).any(), name


def moons_batch(n: int = 32) -> Batch:
    train, _, _ = load_moons(n=200, n_val=50, n_test=50)
    return Batch(train.x[:n], a=train.a[:n])


@pytest.mark.parametrize("conditional_base", [True, False])
def test_every_model_parameter_gets_a_gradient(conditional_base):
    model = ConditionalFlowModel(
        RealNVPConfig(
            x_dim=2, a_dim=2, hidden_dim=8, num_layers=3, conditional_base=conditional_base
        )
    )
    perturb(model, std=0.2)  # the coupling nets start at zero, which blocks inner gradients
    assert_every_parameter_gets_gradient(model, moons_batch())


def test_model_protocol_and_exact_likelihood():
    model = MODELS["realnvp"][1](RealNVPConfig(x_dim=2, a_dim=2, hidden_dim=8, num_layers=3))
    perturb(model, std=0.2)
    batch = moons_batch(16)
    terms = model.elbo(batch)
    assert terms.log_likelihood.shape == terms.kl.shape == terms.steps.shape == (16,)
    assert torch.all(terms.kl == 0) and torch.all(terms.steps == 1)
    # no latent: the importance-sampled estimate equals the exact log-likelihood
    torch.testing.assert_close(
        importance_log_likelihood(model, batch, num_samples=5), terms.log_likelihood.detach()
    )
    z = model.latents(batch)
    torch.testing.assert_close(model.flow.push(z, batch.a), batch.x, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(model.reconstruct(batch), batch.x, atol=1e-5, rtol=1e-5)
    z, x = model.sample(10, a=batch.a[:10])
    assert z.shape == x.shape == (10, 2)
    torch.testing.assert_close(model.flow.push(z, batch.a[:10]), x)


def test_model_rejects_bad_input():
    model = ConditionalFlowModel(RealNVPConfig(x_dim=2, a_dim=2, hidden_dim=8, num_layers=2))
    x = torch.randn(4, 2)
    with pytest.raises(ValueError, match="needs a context a"):
        model.elbo(Batch(x))
    with pytest.raises(ValueError, match=r"a must be \[4, 2\]"):
        model.elbo(Batch(x, a=torch.randn(4, 3)))
    with pytest.raises(ValueError, match=r"x must be \[B, 2\]"):
        model.elbo(Batch(torch.randn(4, 3, 2), a=torch.randn(4, 2)))
    with pytest.raises(ValueError, match="num_layers must be >= 1"):
        RealNVPConfig(num_layers=0)
    with pytest.raises(ValueError, match="unconditional 1-D RealNVP"):
        RealNVPConfig(x_dim=1, a_dim=0)
    with pytest.raises(ValueError, match="event shape"):
        IAFStack(3, 1, 8)(Normal(torch.zeros(3), torch.ones(3)))


def test_unconditional_model_takes_no_context():
    model = ConditionalFlowModel(RealNVPConfig(x_dim=2, a_dim=0, hidden_dim=8, num_layers=2))
    x = torch.randn(5, 2)
    # identity initialisation over a N(0, I) base: exactly the standard normal density
    torch.testing.assert_close(
        model.elbo(Batch(x)).log_likelihood, Normal(0.0, 1.0).log_prob(x).sum(-1)
    )
    assert model.sample(3)[1].shape == (3, 2)


def test_load_moons_is_a_rotated_two_moons():
    train, val, test = load_moons(n=400, n_val=50, n_test=50)
    assert (len(train), len(val), len(test)) == (300, 50, 50)
    assert train.x.shape == train.a.shape == (300, 2)
    torch.testing.assert_close(train.a.norm(dim=1), torch.ones(300))
    # undo the rotation: the moons are centred and bounded
    cos, sin = train.a[:, 0], train.a[:, 1]
    rot_t = torch.stack([torch.stack([cos, sin], -1), torch.stack([-sin, cos], -1)], -2)
    moon = (rot_t @ train.x[:, :, None]).squeeze(-1)
    assert moon.abs().max() < 2.0 and moon.mean(0).abs().max() < 0.2
    torch.testing.assert_close(load_moons(n=400, n_val=50, n_test=50)[0].x, train.x)
    with pytest.raises(ValueError, match="n > n_val \\+ n_test"):
        load_moons(n=10)


@pytest.mark.integration  # a process of its own: make test, not test-fast
def test_conditional_flow_beats_conditional_gaussian_on_two_moons():
    train, _, test = load_moons(n=3001, n_val=1, n_test=1000)  # no validation needed

    def fit(dist: nn.Module, steps: int, lr: float) -> torch.Tensor:
        opt = torch.optim.Adam(dist.parameters(), lr=lr)
        for _ in range(steps):
            i = torch.randint(len(train), (256,))
            value = -dist(train.a[i]).log_prob(train.x[i]).mean()
            opt.zero_grad()
            value.backward()
            opt.step()
        with torch.no_grad():
            return dist(test.a).log_prob(test.x)  # [N_test] held-out log p(x | a)

    log_flow = fit(ConditionalRealNVP(2, 2, (32, 32), num_layers=4), 300, 1e-2)
    log_gauss = fit(DiagGaussian(2, 2, (32, 32)), 300, 1e-2)
    diff = log_flow - log_gauss  # paired on the same test points
    se = diff.std() / math.sqrt(len(diff))
    assert diff.mean() > 5 * se, (float(log_flow.mean()), float(log_gauss.mean()), float(se))
    assert diff.mean() > 0.2  # nats per point; measured ~0.58 with these settings
