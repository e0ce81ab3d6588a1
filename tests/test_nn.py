from __future__ import annotations

import pytest
import torch
from torch import nn

from vaelab.nn import MLP, MaskedLinear, activation, elman_rnn, fill_padding, made_degrees


@pytest.mark.parametrize("hidden", [[], [7], [5, 6]])
def test_mlp_shapes_and_layers(hidden):
    net = MLP(3, hidden, 4, nn.Tanh)
    assert net(torch.randn(2, 9, 3)).shape == (2, 9, 4)
    linears = [m for m in net if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == list(
        zip([3, *hidden], [*hidden, 4])
    )
    # one activation after every hidden layer, none after the output
    assert sum(isinstance(m, nn.Tanh) for m in net) == len(hidden)
    assert isinstance(net[-1], nn.Linear)


def test_activation_lookup():
    assert activation("elu") is nn.ELU
    with pytest.raises(ValueError, match="activation must be one of"):
        activation("sigmoidal")


def test_masked_linear_applies_mask():
    mask = torch.tensor([[1.0, 0.0, 0.0], [1.0, 1.0, 0.0]])
    layer = MaskedLinear(3, 2, mask)
    x = torch.randn(5, 3)
    expected = x @ (layer.weight * mask).T + layer.bias
    torch.testing.assert_close(layer(x), expected)
    # output 0 must not depend on inputs 1 and 2
    x2 = x.clone()
    x2[:, 1:] = torch.randn(5, 2)
    torch.testing.assert_close(layer(x2)[:, 0], layer(x)[:, 0])
    # masked weights receive no gradient
    layer(x).sum().backward()
    assert (layer.weight.grad[mask == 0] == 0).all()


def test_masked_linear_rejects_wrong_mask_shape():
    with pytest.raises(ValueError, match=r"mask must be \[2, 3\], got \[3, 2\]"):
        MaskedLinear(3, 2, torch.ones(3, 2))


def test_made_degrees():
    degrees = made_degrees(4, [6, 5])
    assert degrees[0].tolist() == [1, 2, 3, 4]
    for d, h in zip(degrees[1:], [6, 5]):
        assert len(d) == h
        assert d.min() >= 1 and d.max() <= 3  # hidden degrees in 1..in_dim-1
    assert sorted(set(degrees[1].tolist())) == [1, 2, 3]


@pytest.mark.parametrize("nonlinearity", ["tanh", "relu"])
def test_elman_rnn_equals_nn_rnn_with_exact_gradients(nonlinearity):
    rnn = nn.RNN(4, 5, batch_first=True, nonlinearity=nonlinearity).double()
    x = torch.randn(3, 6, 4, dtype=torch.double, requires_grad=True)
    h_0 = torch.randn(3, 5, dtype=torch.double, requires_grad=True)
    torch.testing.assert_close(elman_rnn(rnn, x, h_0), rnn(x, h_0[None])[0])
    # the hand-written backward against finite differences, weights included
    assert torch.autograd.gradcheck(lambda x, h_0, *params: elman_rnn(rnn, x, h_0),
                                    (x, h_0, *rnn.parameters()))


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
    packed = nn.utils.rnn.pack_padded_sequence(x, lengths, batch_first=True,
                                               enforce_sorted=False)
    expected, _ = nn.utils.rnn.pad_packed_sequence(rnn(packed, h_0[None])[0], batch_first=True,
                                                   total_length=6)
    got = elman_rnn(rnn, x, h_0, lengths)
    torch.testing.assert_close(got, expected)  # pad_packed_sequence pads with 0 too
    assert torch.equal(got[~mask], torch.zeros_like(got[~mask]))
    assert torch.autograd.gradcheck(lambda x, h_0, *params: elman_rnn(rnn, x, h_0, lengths),
                                    (x, h_0, *rnn.parameters()))


def test_elman_rnn_refuses_what_it_does_not_implement():
    with pytest.raises(ValueError, match="one-layer, batch-first"):
        elman_rnn(nn.RNN(4, 5, num_layers=2, batch_first=True), torch.randn(2, 3, 4),
                  torch.zeros(2, 5))


def test_fill_padding_sets_the_staircase_after_each_steps_rows_and_nothing_else():
    rows = (4, 4, 3, 1, 1, 0)  # observed sequences per step, longest first
    y = torch.randn(6, 4, 2)
    before = y.clone()
    assert fill_padding(y, rows, 7.0) is y
    observed = torch.arange(4) < torch.tensor(rows)[:, None]  # [T, N]
    assert torch.equal(y[observed], before[observed])
    assert (y[~observed] == 7.0).all()
