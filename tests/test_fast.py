"""The fast paths (vaelab.fast) against the readable code they replace: values and gradients,
float64. The hand-written backward passes are also checked by gradcheck."""

from __future__ import annotations

import copy
import pickle

import pytest
import torch
from torch import nn

from tests.test_dmm import KRISHNAN, LSTM_GUIDE, SMALL, ragged_batch, small_dmm, small_dmm_iaf
from tests.test_dmm_aug import small_aug
from vaelab.data import Batch
from vaelab.fast.rnn import elman_rnn, fill_padding
from vaelab.fast.scan import _GRAPHS, _Scan, bucketed_scan, captured_graphs


@pytest.mark.parametrize("nonlinearity", ["tanh", "relu"])
def test_elman_rnn_equals_nn_rnn_with_exact_gradients(nonlinearity):
    rnn = nn.RNN(4, 5, batch_first=True, nonlinearity=nonlinearity).double()
    x = torch.randn(3, 6, 4, dtype=torch.double, requires_grad=True)
    h_0 = torch.randn(3, 5, dtype=torch.double, requires_grad=True)
    torch.testing.assert_close(elman_rnn(rnn, x, h_0), rnn(x, h_0[None])[0])
    # the hand-written backward against finite differences, weights included
    assert torch.autograd.gradcheck(
        lambda x, h_0, *params: elman_rnn(rnn, x, h_0), (x, h_0, *rnn.parameters())
    )


@pytest.mark.parametrize("lengths", [[6, 4, 1], [2, 6, 5]])
@pytest.mark.parametrize("nonlinearity", ["tanh", "relu"])
def test_elman_rnn_on_observed_steps_equals_a_packed_rnn(nonlinearity, lengths):
    """With lengths, each step runs on the sequences still observed (sorted or not): the
    outputs equal a packed nn.RNN's, 0 at the padding, and the gradients are exact."""
    rnn = nn.RNN(4, 5, batch_first=True, nonlinearity=nonlinearity).double()
    x = torch.randn(3, 6, 4, dtype=torch.double, requires_grad=True)
    h_0 = torch.randn(3, 5, dtype=torch.double, requires_grad=True)
    lengths = torch.tensor(lengths)
    mask = torch.arange(6) < lengths[:, None]
    packed = nn.utils.rnn.pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
    expected, _ = nn.utils.rnn.pad_packed_sequence(
        rnn(packed, h_0[None])[0], batch_first=True, total_length=6
    )
    got = elman_rnn(rnn, x, h_0, lengths)
    torch.testing.assert_close(got, expected)  # pad_packed_sequence pads with 0 too
    assert torch.equal(got[~mask], torch.zeros_like(got[~mask]))
    assert torch.autograd.gradcheck(
        lambda x, h_0, *params: elman_rnn(rnn, x, h_0, lengths), (x, h_0, *rnn.parameters())
    )


def test_elman_rnn_refuses_what_it_does_not_implement():
    with pytest.raises(ValueError, match="one-layer, batch-first"):
        elman_rnn(
            nn.RNN(4, 5, num_layers=2, batch_first=True), torch.randn(2, 3, 4), torch.zeros(2, 5)
        )


def test_fill_padding_sets_the_staircase_after_each_steps_rows_and_nothing_else():
    rows = (4, 4, 3, 1, 1, 0)  # observed sequences per step, longest first
    y = torch.randn(6, 4, 2)
    before = y.clone()
    assert fill_padding(y, rows, 7.0) is y
    observed = torch.arange(4) < torch.tensor(rows)[:, None]  # [T, N]
    assert torch.equal(y[observed], before[observed])
    assert (y[~observed] == 7.0).all()


# ----------------------------------------------------------------------------- the DMM


def _terms_and_gradients(model, batch, noise, samples, analytic):
    terms = model.elbo(batch, analytic, noise=noise, samples=samples)
    value = terms.log_likelihood.sum() - 2 * terms.kl.sum()  # both terms reach a gradient
    grads = torch.autograd.grad(value, list(model.parameters()), allow_unused=True)
    return terms, grads


@pytest.mark.parametrize("samples", [1, 2])
@pytest.mark.parametrize("lengths", [[7, 4, 1, 6], [1, 7, 4, 7]])
@pytest.mark.parametrize(
    ("make", "options", "analytic"),
    [
        (small_dmm, {}, True),
        (small_dmm, {}, False),
        (small_dmm, KRISHNAN, True),
        (small_dmm, LSTM_GUIDE, True),
        (small_dmm_iaf, {}, False),
        (small_dmm_iaf, KRISHNAN, False),
        (lambda **kw: small_aug(**kw), {}, True),
        (lambda **kw: small_aug("made", **kw), KRISHNAN, True),
    ],
    ids=["dmm", "mc-kl", "krishnan", "lstm", "iaf", "iaf-krishnan", "aug", "aug-made"],
)
def test_the_fast_elbo_equals_the_readable_one_with_every_gradient(
    make, options, analytic, lengths, samples
):
    """vaelab.fast.dmm (elman_rnn, the combiner scan with its hand-written backward, shared RNN
    passes, observed steps only) against the model file's readable loop: the same terms and
    every gradient, float64, with the batch sorted by length and not."""
    model = make(**options).double().eval()  # eval: no dropout, the paths are comparable
    with torch.no_grad():  # scales away from softplus' linear regime, where forms differ most
        model.combiner.hidden_to_loc_scale.bias.normal_(0.0, 3.0)
    batch = ragged_batch(lengths)
    batch = Batch(batch.x.double(), mask=batch.mask)
    noise = torch.randn(samples * 4, max(lengths), SMALL["z_dim"], dtype=torch.double)
    results = []
    for use_fast in (False, True):
        model.fast = use_fast
        results.append(_terms_and_gradients(model, batch, noise, samples, analytic))
    (plain, plain_grads), (quick, quick_grads) = results
    assert torch.isfinite(plain.elbo).all()
    for field in ("log_likelihood", "kl", "steps"):
        torch.testing.assert_close(getattr(quick, field), getattr(plain, field), msg=field)
    for (name, _), a, b in zip(model.named_parameters(), plain_grads, quick_grads, strict=False):
        assert (a is None) == (b is None), name
        if a is not None:
            torch.testing.assert_close(b, a, msg=name)


@pytest.mark.parametrize("options", [{}, KRISHNAN], ids=["dmm", "krishnan"])
def test_the_fast_path_runs_the_transition_once_per_batch(options):
    """The fast ELBO's prior comes from one batched transition call: p(z_1) = p(z_1 | z_0)
    is that call's first step (z_prev = z_0 there), and ``compat.standard_initial_prior``'s
    N(0, I) needs no transition. A second call for p(z_1) cost the redesign 5 % of a CPU
    epoch before it was found (benchmarks/README.md)."""
    model = small_dmm(**options)
    seen = []
    model.transition.register_forward_hook(lambda *_: seen.append(1))
    batch = ragged_batch([5, 3, 4])
    model.elbo(batch)
    assert len(seen) == 1


def test_the_fast_path_is_on_by_default_and_a_wrong_z_index_would_fail():
    """DMM.fast defaults to True; and the comparison above is sharp: the fast path with the
    guide's noise shifted by one step gives other terms."""
    model = small_dmm().double()
    assert model.fast
    batch = ragged_batch([5, 3])
    batch = Batch(batch.x.double(), mask=batch.mask)
    noise = torch.randn(2, 5, SMALL["z_dim"], dtype=torch.double)
    fast_terms = model.elbo(batch, noise=noise)
    model.fast = False
    assert not torch.allclose(model.elbo(batch, noise=noise.roll(1, dims=1)).elbo, fast_terms.elbo)


@pytest.mark.parametrize("options", [{}, KRISHNAN])
def test_the_scan_padded_to_a_graph_bucket_equals_the_scan_on_the_batch(options):
    """On a GPU the guide's scan runs on T padded up to a multiple of GRAPH_BUCKET (a few CUDA
    graphs serve every batch); here the same padded scan, run eagerly on the CPU, against the
    unpadded one: values and every gradient (h_rnn's included) equal."""
    model = small_dmm(**options).double()
    steps, n = 11, 5  # not a multiple of the bucket
    h_rows = torch.randn(steps, n, SMALL["rnn_dim"], dtype=torch.double, requires_grad=True)
    noise = torch.randn(steps, n, SMALL["z_dim"], dtype=torch.double)
    weights = [torch.randn(steps, n, SMALL["z_dim"], dtype=torch.double) for _ in range(3)]
    scan = _Scan(model.combiner, model.z_q_0)
    inputs = [h_rows, *model.parameters()]
    results = []
    padded_scan = bucketed_scan(
        model.combiner, model.z_q_0, h_rows, noise, capture=False, bucket=8
    )
    for outputs in (scan(h_rows, noise), padded_scan):
        assert [y.shape for y in outputs] == [(steps, n, SMALL["z_dim"])] * 3
        objective = sum((w * y).sum() for w, y in zip(weights, outputs, strict=False))
        results.append((outputs, torch.autograd.grad(objective, inputs, allow_unused=True)))
    (plain, plain_grads), (padded, padded_grads) = results
    for a, b in zip(plain, padded, strict=False):
        torch.testing.assert_close(a, b)
    names = ["h_rnn", *(name for name, _ in model.named_parameters())]
    for name, a, b in zip(names, plain_grads, padded_grads, strict=False):
        assert (a is None) == (b is None), name
        if a is not None:
            torch.testing.assert_close(a, b, msg=name)
    assert sum(g is not None for g in padded_grads) == 5 + (not options)  # h, W, b, A, c, z_q_0


def test_a_copy_or_pickle_of_a_dmm_leaves_its_cuda_graphs_behind():
    """Captured graphs (which hold device memory and cannot be pickled) are kept beside the
    model, weakly, by its combiner: copies and pickles have none, and the dashboard copies and
    pickles models."""
    model = small_dmm()
    _GRAPHS[model.combiner] = {("a shape",): None}  # stands for a captured graph
    for twin in (copy.deepcopy(model), pickle.loads(pickle.dumps(model))):
        assert captured_graphs(twin.combiner) == {} and captured_graphs(model.combiner)
        for a, b in zip(model.parameters(), twin.parameters(), strict=False):
            assert torch.equal(a, b)


@pytest.mark.parametrize("options", [{}, KRISHNAN], ids=["learned-z0", "standard-prior"])
def test_the_prior_over_a_whole_padded_path_is_the_models_prior(options):
    """The prior of the fast path's device branch (every step of [N, T, Z] at once, p(z_1)
    from the model's initial_prior at t = 1), which only a GPU runs through elbo: the same
    distribution as the readable SequentialModel.prior, value and gradient, float64."""
    from vaelab.fast.dmm import _prior_steps

    model = small_dmm(**options).double()
    z = torch.randn(4, 6, SMALL["z_dim"], dtype=torch.double, requires_grad=True)
    z_prev = torch.cat([model.z_0.expand(4, 1, -1), z[:, :-1]], dim=1)
    first = (torch.arange(6) == 0)[:, None]  # [T, 1]
    quick = _prior_steps(model, z_prev, z.new_zeros(4, 6, 0), first)
    plain = model.prior(z)
    torch.testing.assert_close(quick.mean, plain.mean)
    torch.testing.assert_close(quick.stddev, plain.stddev)
    point = torch.randn(4, 6, SMALL["z_dim"], dtype=torch.double)
    grads = [
        torch.autograd.grad(p.log_prob(point).sum(), [z, *model.parameters()], allow_unused=True)
        for p in (quick, plain)
    ]
    for a, b in zip(*grads, strict=True):
        assert (a is None) == (b is None)
        if a is not None:
            torch.testing.assert_close(a, b)
