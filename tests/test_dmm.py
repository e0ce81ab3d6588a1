from __future__ import annotations

import math

import pytest
import torch
from torch.distributions import Independent, Normal
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from tests.helpers import assert_every_parameter_gets_gradient
from vaelab import MODELS, fast
from vaelab.data import Batch, load_jsb
from vaelab.dmm import DMM, DMMIAF, DMMConfig, DMMIAFConfig
from vaelab.dmm_variants import Compat
from vaelab.nn import reverse_sequences
from vaelab.objectives import elbo_samples, importance_log_likelihood, loss
from vaelab.train import TrainConfig, evaluate_elbo, fit, per_step_decay

SMALL = {"x_dim": 6, "z_dim": 3, "emission_dim": 8, "transition_dim": 8, "rnn_dim": 10}
# Krishnan et al.'s choices where Pyro's example differs (DMMConfig.compat, vaelab.dmm_variants)
KRISHNAN_FIELDS = {"softplus_variance": True, "standard_initial_prior": True}
KRISHNAN = {"compat": Compat(**KRISHNAN_FIELDS)}
# and their guide: an LSTM over a ReLU embedding of x_t, dropout on its outputs in training
LSTM_FIELDS = {"rnn_type": "lstm", "input_embedding": True, "rnn_output_dropout": 0.1}
LSTM_GUIDE = {"compat": Compat(**LSTM_FIELDS)}


def small_dmm(**kw) -> DMM:
    return DMM(DMMConfig(**{**SMALL, **kw}))


def small_dmm_iaf(**kw) -> DMMIAF:
    return DMMIAF(DMMIAFConfig(**{**SMALL, "iaf_dim": 8, **kw}))


def ragged_batch(lengths: list[int], x_dim: int = 6, pad: float = float("nan")) -> Batch:
    t_max = max(lengths)
    x = torch.bernoulli(torch.full((len(lengths), t_max, x_dim), 0.3))
    mask = torch.arange(t_max) < torch.tensor(lengths)[:, None]
    x[~mask] = pad
    return Batch(x, mask=mask)


# ----------------------------------------------------------------------------- reversal


def test_reverse_sequences_matches_loop_and_round_trips():
    x = torch.randn(4, 7, 3)
    lengths = torch.tensor([7, 3, 1, 5])
    expected = x.clone()
    for b, n in enumerate(lengths.tolist()):
        expected[b, :n] = x[b, :n].flip(0)
    out = reverse_sequences(x, lengths)
    assert torch.equal(out, expected)
    assert torch.equal(reverse_sequences(out, lengths), x)
    # works for [B, T] too (no feature axis)
    assert torch.equal(reverse_sequences(x[..., 0], lengths), expected[..., 0])


# ----------------------------------------------------------------------------- masks


@pytest.mark.parametrize(
    "make", [small_dmm, small_dmm_iaf, lambda: small_dmm(**LSTM_GUIDE).eval()]
)
def test_padding_never_changes_the_elbo(make):
    model = make().double()
    long = ragged_batch([8])
    short = ragged_batch([5])
    # the short sequence padded with NaN inside a batch with a longer one
    x = torch.full((2, 8, 6), float("nan"), dtype=torch.float64)
    x[0, :5], x[1] = short.x[0], long.x[0]
    mask = torch.arange(8) < torch.tensor([5, 8])[:, None]
    padded = Batch(x, mask=mask)
    noise = torch.randn(2, 8, 3, dtype=torch.float64)
    analytic_options = [False] if model.iaf is not None else [True, False]
    for analytic in analytic_options:
        alone = model.elbo(Batch(short.x.double()), analytic, noise=noise[:1, :5])
        both = model.elbo(padded, analytic, noise=noise)
        torch.testing.assert_close(both.log_likelihood[0], alone.log_likelihood[0])
        torch.testing.assert_close(both.kl[0], alone.kl[0])
        assert both.steps.tolist() == [5.0, 8.0]
    # other padding values give the very same numbers, and NaN never reaches a gradient
    zeros = Batch(torch.where(mask[..., None], x, 0.0), mask=mask)
    a = model.elbo(padded, noise=noise)
    b = model.elbo(zeros, noise=noise)
    assert torch.equal(a.elbo, b.elbo)
    a.elbo.sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_mask_none_means_all_observed():
    model = small_dmm()
    batch = ragged_batch([6, 6], pad=0.0)
    noise = torch.randn(2, 6, 3)
    with_mask = model.elbo(batch, noise=noise)
    without = model.elbo(Batch(batch.x), noise=noise)
    torch.testing.assert_close(with_mask.elbo, without.elbo)


# ----------------------------------------------------------------------------- KL


@pytest.mark.parametrize("options", [{}, KRISHNAN])
def test_analytic_and_monte_carlo_kl_agree_in_expectation(options):
    model = small_dmm(**options)
    with torch.no_grad():  # move the guide away from the prior so the KL is sizeable
        model.combiner.hidden_to_loc_scale.bias.normal_()
    batch = ragged_batch([7, 4])
    n = 4000
    with torch.no_grad():
        analytic = model.elbo(batch, analytic_kl=True, samples=n).kl.view(n, 2)
        mc = model.elbo(batch, analytic_kl=False, samples=n).kl.view(n, 2)
    se = (analytic.var(dim=0) / n + mc.var(dim=0) / n).sqrt()
    diff = analytic.mean(dim=0) - mc.mean(dim=0)
    assert (analytic.mean(dim=0) > 20 * se).all()  # a non-trivial KL
    assert (diff.abs() < 5 * se).all(), (diff, se)
    # the analytic estimator has the smaller variance (why the paper uses it)
    assert (analytic.var(dim=0) < mc.var(dim=0)).all()


@pytest.mark.parametrize("options", [{}, KRISHNAN])
def test_monte_carlo_elbo_is_log_joint_minus_log_q(options):
    """terms.elbo with analytic_kl=False is log p(x, z) - log q(z | x) for the sampled path,
    checked against a step-by-step computation with the readable modules."""
    model = small_dmm(**options).double()
    standard = Independent(Normal(torch.zeros(1, 3, dtype=torch.float64), 1.0), 1)
    batch = Batch(ragged_batch([5]).x.double())
    noise = torch.randn(1, 5, 3, dtype=torch.float64)
    terms = model.elbo(batch, analytic_kl=False, noise=noise)
    h_rnn = model.rnn_states(batch.x, torch.tensor([5]))
    z_q, z_p, total = model.z_q_0[None], model.z_0[None], 0.0
    for t in range(5):
        q = model.combiner(z_q, h_rnn[:, t])
        z = q.base_dist.loc + q.base_dist.scale * noise[:, t]
        p = standard if t == 0 and options else model.transition(z_p)  # p(z_1) = N(0, I)
        total = total + p.log_prob(z) - q.log_prob(z)
        total = total + model.emitter(z).log_prob(batch.x[:, t])
        z_q = z_p = z
    torch.testing.assert_close(terms.elbo, total)


# ----------------------------------------------------------------------------- gradients


@pytest.mark.parametrize(
    "make",
    [
        small_dmm,
        small_dmm_iaf,
        lambda: small_dmm_iaf(**KRISHNAN),
        lambda: small_dmm(compat=Compat(**KRISHNAN_FIELDS, **LSTM_FIELDS)),
    ],
)
def test_every_parameter_gets_a_gradient(make):
    assert_every_parameter_gets_gradient(make(), ragged_batch([6, 3, 4]))


# ----------------------------------------------------------------------------- modules


def test_transition_starts_from_the_identity():
    model = small_dmm(z_dim=5)
    lin = model.transition.z_to_loc
    assert torch.equal(lin.weight, torch.eye(5)) and torch.equal(lin.bias, torch.zeros(5))
    z = torch.randn(7, 5)
    tr = model.transition
    gate = torch.sigmoid(tr.gate(z))
    proposed = tr.proposed_mean(z)
    p = tr(z)
    torch.testing.assert_close(p.base_dist.loc, (1 - gate) * z + gate * proposed)
    scale = torch.nn.functional.softplus(tr.z_to_scale(proposed.relu())) + 1e-3
    torch.testing.assert_close(p.base_dist.scale, scale)


def test_latents_follow_the_readable_combiner():
    """The fast guide (RNN part projected for all steps) equals Combiner.forward step by step."""
    model = small_dmm()
    batch = ragged_batch([6, 4])
    x = torch.where(batch.mask[..., None], batch.x, 0.0)
    lengths = batch.lengths
    h_rnn = model.rnn_states(x, lengths)
    z = model.z_q_0.expand(2, -1)
    means = []
    for t in range(6):
        z = model.combiner(z, h_rnn[:, t]).mean
        means.append(z)
    expected = torch.stack(means, dim=1) * batch.mask[..., None]
    torch.testing.assert_close(model.latents(batch), expected)
    recon = model.reconstruct(batch)
    assert recon.shape == (2, 6, 6) and ((recon >= 0) & (recon <= 1)).all()


@pytest.mark.parametrize("options", [{}, LSTM_GUIDE])
def test_rnn_states_equal_a_packed_backward_rnn_at_observed_steps(options):
    """Independent reference: the RNN over reversed, packed sequences (pack_padded_sequence),
    which never sees padding at all."""
    model = small_dmm(**options).eval()  # eval: no dropout on the outputs
    batch = ragged_batch([6, 2, 4], pad=7.0)
    lengths = batch.lengths
    inputs = reverse_sequences(batch.x, lengths)
    state = model.h_0.expand(-1, 3, -1).contiguous()
    if options:  # ReLU embedding, and the LSTM's cell state
        inputs = torch.relu(inputs @ model.embed[0].weight.T + model.embed[0].bias)
        state = (state, model.c_0.expand(-1, 3, -1).contiguous())
    packed = pack_padded_sequence(inputs, lengths, batch_first=True, enforce_sorted=False)
    out, _ = model.rnn(packed, state)
    out, _ = pad_packed_sequence(out, batch_first=True, total_length=6)
    expected = reverse_sequences(out, lengths)
    got = model.rnn_states(batch.x, lengths)
    torch.testing.assert_close(got[batch.mask], expected[batch.mask])


def test_rnn_states_summarise_the_future_only():
    """h_rnn_t depends on x_{t:T}: changing x_s changes h_rnn_t for t <= s only."""
    model = small_dmm()
    x = torch.bernoulli(torch.full((1, 6, 6), 0.5))
    lengths = torch.tensor([6])
    h = model.rnn_states(x, lengths)
    x2 = x.clone()
    x2[0, 3] = 1 - x2[0, 3]
    h2 = model.rnn_states(x2, lengths)
    changed = (h - h2).abs().amax(dim=-1)[0] > 0
    assert changed.tolist() == [True, True, True, True, False, False]


@pytest.mark.parametrize("make", [small_dmm, small_dmm_iaf])
def test_samples_share_one_rnn_pass_like_repeated_batches(make):
    model = make()
    batch = ragged_batch([5, 3])
    noise = torch.randn(6, 5, 3)
    analytic = model.config.analytic_kl
    shared = model.elbo(batch, analytic, noise=noise, samples=3)
    repeated = model.elbo(batch.repeat(3), analytic, noise=noise)
    torch.testing.assert_close(shared.elbo, repeated.elbo)
    torch.testing.assert_close(shared.steps, repeated.steps)


@pytest.mark.parametrize("make", [small_dmm, small_dmm_iaf])
def test_elbo_samples_shares_the_rnn_and_equals_a_repeated_batch(make, monkeypatch):
    model = make()
    batch = ragged_batch([5, 3])
    rows = []
    real = fast.dmm.rnn_states
    monkeypatch.setattr(
        fast.dmm, "rnn_states", lambda model, x, n: rows.append(len(x)) or real(model, x, n)
    )
    torch.manual_seed(2)
    shared = elbo_samples(model, batch, 3)  # the same noise draw as the repeated batch's
    torch.manual_seed(2)
    repeated = model.elbo(batch.repeat(3))
    assert rows == [2, 6]  # one RNN pass over the 2 sequences, not over 3 copies
    torch.testing.assert_close(shared.elbo, repeated.elbo)
    assert shared.elbo.shape == (6,)


def test_more_training_samples_lower_the_gradient_variance_of_an_iaf_guide():
    torch.manual_seed(0)
    model = small_dmm_iaf()
    batch = ragged_batch([6, 4, 5])

    def gradients(samples: int) -> torch.Tensor:
        draws = []
        for _ in range(40):
            model.zero_grad()
            loss(elbo_samples(model, batch, samples)).backward()
            draws.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
        return torch.stack(draws)  # [draws, parameters]

    one, eight = gradients(1), gradients(8)
    # the same gradient in expectation, about 8 times less variance
    ratio = float(eight.var(dim=0).sum() / one.var(dim=0).sum())
    assert 0.06 < ratio < 0.25
    se = (one.var(dim=0) / 40 + eight.var(dim=0) / 40).sqrt()
    noisy = se > 0  # some gradients do not depend on the draw
    z = (one.mean(dim=0) - eight.mean(dim=0))[noisy] / se[noisy]
    assert float(z.abs().mean()) < 1.2  # |N(0, 1)| has mean 0.8
    torch.testing.assert_close(one.mean(dim=0)[~noisy], eight.mean(dim=0)[~noisy])


def test_importance_log_likelihood_equals_the_generic_estimator():
    model = small_dmm()
    batch = ragged_batch([5, 3, 4])
    torch.manual_seed(1)
    fast = model.importance_log_likelihood(batch, num_samples=50, chunk_size=20)
    torch.manual_seed(1)
    generic = importance_log_likelihood(model, batch, num_samples=50, chunk_size=20)
    torch.testing.assert_close(fast, generic)
    with torch.no_grad():
        elbo = model.elbo(batch, analytic_kl=False, samples=50).elbo.view(50, 3)
    assert (fast > elbo.mean(dim=0)).all()  # log-mean-exp above the mean bound (Jensen)


@pytest.mark.parametrize("make", [small_dmm, small_dmm_iaf])
def test_sample_shapes_and_ranges(make):
    z, x = make().sample(4, steps=9)
    assert z.shape == (4, 9, 3) and x.shape == (4, 9, 6)
    assert torch.isfinite(z).all() and ((x >= 0) & (x <= 1)).all()


# ----------------------------------------------------------------------------- training


def test_short_training_on_jsb_lowers_the_negative_elbo():
    train, _, _ = load_jsb()
    subset = train.subset(slice(0, 30))
    model = DMM(DMMConfig(z_dim=8, emission_dim=32, transition_dim=32, rnn_dim=48))
    before = evaluate_elbo(model, subset, samples=3)["nelbo"]
    config = TrainConfig(
        **{
            **DMM.train_defaults,
            "epochs": 15,
            "lr": 3e-3,
            "batch_size": 10,
            "anneal_epochs": 0,
            "progress": False,
            "eval_every": 0,
        }
    )
    fit(model, subset, None, config)
    after = evaluate_elbo(model, subset, samples=3)["nelbo"]
    # from ~88 log 2 = 61 nats per step (coin flips) to well below it
    assert before > 55 and after < before - 20, (before, after)


def test_models_are_registered_with_valid_train_defaults():
    assert MODELS["dmm"] == (DMMConfig, DMM)
    assert MODELS["dmm_iaf"] == (DMMIAFConfig, DMMIAF)
    config = TrainConfig(**DMM.train_defaults)
    assert (config.batch_size, config.lr, config.betas) == (20, 3e-4, (0.96, 0.999))
    assert math.isclose(config.lr_decay, 0.99996) and config.anneal_epochs == 1000
    # Pyro's weight decay 2.0 on a summed loss, rescaled to our per-step loss on JSB
    assert config.weight_decay_sum == 2.0 and config.weight_decay == 0
    # on JSB that is 2.0 over ~1150 observed steps per batch of 20 chorales
    per_step = per_step_decay(2.0, load_jsb()[0], 20)
    assert math.isclose(per_step, 2.0 / 1150, rel_tol=1e-2)
    defaults = DMMConfig()
    assert (
        defaults.z_dim,
        defaults.emission_dim,
        defaults.transition_dim,
        defaults.rnn_dim,
        defaults.x_dim,
    ) == (100, 100, 200, 600, 88)
    assert DMMIAFConfig().num_iafs == 1 and not DMMIAFConfig().analytic_kl


# ----------------------------------------------------------------------------- bad input


def test_bad_shapes_raise_and_name_the_fix():
    model = small_dmm()
    with pytest.raises(ValueError, match="add a time axis"):
        model.elbo(Batch(torch.zeros(3, 6)))
    with pytest.raises(ValueError, match="x_dim=4"):
        model.elbo(Batch(torch.zeros(3, 5, 4)))
    with pytest.raises(ValueError, match=r"mask must be bool \[B, T\]"):
        model.elbo(Batch(torch.zeros(3, 5, 6), mask=torch.ones(3, 4, dtype=torch.bool)))
    gap = torch.tensor([[True, False, True]])
    with pytest.raises(ValueError, match="padding at the end"):
        model.elbo(Batch(torch.zeros(1, 3, 6), mask=gap))
    with pytest.raises(ValueError, match="at least one observed step"):
        model.elbo(Batch(torch.zeros(1, 3, 6), mask=torch.zeros(1, 3, dtype=torch.bool)))
    with pytest.raises(ValueError, match=r"noise must be \[2, 5, 3\]"):
        model.elbo(ragged_batch([5, 2]), noise=torch.zeros(2, 5, 4))
    with pytest.raises(ValueError, match="samples must be >= 1"):
        model.elbo(ragged_batch([5, 2]), samples=0)
    with pytest.raises(ValueError, match="n and steps must be >= 1"):
        model.sample(0)


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"z_dim": 0}, "z_dim must be >= 1"),
        ({"rnn_dim": -1}, "rnn_dim must be >= 1"),
        ({"num_iafs": -1}, "num_iafs must be >= 0"),
        ({"num_iafs": 1}, "set analytic_kl=False"),
        ({"rnn_dropout": 0.2}, "set rnn_layers >= 2"),
        ({"rnn_dropout": 1.0}, r"rnn_dropout must be in \[0, 1\)"),
        ({"min_scale": 0.0}, "min_scale must be > 0"),
        ({"rnn_nonlinearity": "sigmoid"}, "rnn_nonlinearity must be 'tanh' or 'relu'"),
        (
            {"compat": Compat(rnn_type="lstm"), "rnn_nonlinearity": "relu"},
            "applies to compat.rnn_type='rnn' only",
        ),
        ({"rnn_dropout": 0.1}, "use compat.rnn_output_dropout"),
        (
            {"compat": {"rnn_type": "lstm"}},
            r"compat must be a vaelab.dmm_variants.Compat, got dict",
        ),
    ],
)
def test_config_checks(kw, match):
    with pytest.raises(ValueError, match=match):
        DMMConfig(**kw)


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"rnn_type": "gru"}, "compat.rnn_type must be 'rnn' or 'lstm'"),
        ({"rnn_output_dropout": 1.0}, r"compat.rnn_output_dropout must be in \[0, 1\)"),
    ],
)
def test_compat_checks(kw, match):
    with pytest.raises(ValueError, match=match):
        Compat(**kw)


def test_iaf_guide_refuses_the_analytic_kl():
    model = small_dmm_iaf()
    with pytest.raises(ValueError, match="pass analytic_kl=False"):
        model.elbo(ragged_batch([3]), analytic_kl=True)


def test_two_layer_relu_rnn_with_dropout_runs():
    model = small_dmm(rnn_layers=2, rnn_dropout=0.1, rnn_nonlinearity="relu")
    assert model.rnn.nonlinearity == "relu"
    terms = model.elbo(ragged_batch([4, 2]))
    assert terms.elbo.shape == (2,) and torch.isfinite(terms.elbo).all()
    assert model.h_0.shape == (2, 1, 10)


def test_lstm_guide_output_dropout_acts_in_training_only():
    model = small_dmm(**LSTM_GUIDE, rnn_dim=400)
    assert isinstance(model.rnn, torch.nn.LSTM) and model.rnn.input_size == 400
    batch = ragged_batch([6, 4], pad=0.0)
    x, lengths = batch.x, batch.lengths
    torch.manual_seed(0)
    train_a, train_b = model.rnn_states(x, lengths), model.rnn_states(x, lengths)
    model.eval()
    plain = model.rnn_states(x, lengths)
    assert torch.equal(plain, model.rnn_states(x, lengths))
    # in training each output is dropped (0) with probability 0.1, or kept and scaled by 1/0.9
    observed = batch.mask[..., None].expand_as(plain)
    for out in (train_a, train_b):
        dropped = (out == 0) & (plain != 0) & observed
        kept = observed & ~dropped
        torch.testing.assert_close(out[kept], plain[kept] / 0.9)
        assert 0.05 < dropped.sum() / observed.sum() < 0.15
    assert not torch.equal(train_a, train_b)  # a fresh mask each call
    # no dropout configured: training and evaluation give the same states
    model = small_dmm(compat=Compat(rnn_type="lstm"))
    torch.testing.assert_close(model.rnn_states(x, lengths), model.eval().rnn_states(x, lengths))


def test_guide_is_a_normal_per_step_without_flows():
    """Without IAFs the per-step guide is the Gaussian whose KL the analytic term uses."""
    model = small_dmm()
    q = model.combiner(torch.zeros(2, 3), torch.zeros(2, 10))
    assert isinstance(q, Independent) and isinstance(q.base_dist, Normal)
    assert q.event_shape == (3,) and (q.base_dist.scale >= 1e-3).all()


def test_krishnan_options_variance_through_softplus_and_a_standard_initial_prior():
    model = small_dmm(**KRISHNAN)
    # softplus gives the variance: scale^2 = softplus(.) + min_scale^2, in both networks
    z = torch.randn(5, 3)
    tr = model.transition
    pre = tr.z_to_scale(tr.proposed_mean(z).relu())
    torch.testing.assert_close(
        tr(z).base_dist.scale ** 2, torch.nn.functional.softplus(pre) + 1e-6
    )
    h_rnn = torch.randn(5, 10)
    h = 0.5 * (torch.tanh(model.combiner.z_to_hidden(z)) + h_rnn)
    pre = model.combiner.hidden_to_loc_scale(h)[:, 3:]
    torch.testing.assert_close(
        model.combiner(z, h_rnn).base_dist.scale ** 2, torch.nn.functional.softplus(pre) + 1e-6
    )
    # z_0 and z_q_0 are fixed zeros, not parameters, and p(z_1) = N(0, I) whatever z_0 holds
    names = {n for n, _ in model.named_parameters()}
    assert not names & {"z_0", "z_q_0"} and torch.equal(model.z_0, torch.zeros(3))
    path = torch.randn(2, 4, 3)
    p = model.prior(path)
    assert torch.equal(p.base_dist.loc[:, 0], torch.zeros(2, 3))
    assert torch.equal(p.base_dist.scale[:, 0], torch.ones(2, 3))
    torch.testing.assert_close(p.base_dist.loc[:, 1:], tr(path[:, :-1]).base_dist.loc)
    # ancestral samples start from N(0, I)
    torch.manual_seed(0)
    first = model.sample(4000, steps=2)[0][:, 0]  # [4000, 3]
    assert first.mean(0).abs().max() < 0.1 and (first.std(0) - 1).abs().max() < 0.05
    # the default model's p(z_1) is the transition from its trained z_0
    default = small_dmm()
    torch.testing.assert_close(
        default.prior(path).base_dist.loc[:, 0],
        default.transition(default.z_0.expand(2, -1)).base_dist.loc,
    )


def test_kl_per_dim_sums_to_the_elbo_kl():
    model = DMM(DMMConfig(z_dim=4, emission_dim=8, transition_dim=8, rnn_dim=8))
    train, _, _ = load_jsb()
    batch = train.batch(torch.arange(5))
    torch.manual_seed(3)
    per_dim = model.kl_per_dim(batch)
    torch.manual_seed(3)  # the same guide path
    terms = model.elbo(batch, analytic_kl=True)
    assert per_dim.shape == (4,)
    torch.testing.assert_close(per_dim.sum(), terms.kl.sum() / terms.steps.sum())
