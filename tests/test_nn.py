from __future__ import annotations

import pytest
import torch
from torch import nn

from vaelab.nn import MLP, MaskedLinear, activation, made_degrees


@pytest.mark.parametrize("hidden", [[], [7], [5, 6]])
def test_mlp_shapes_and_layers(hidden):
    net = MLP(3, hidden, 4, nn.Tanh)
    assert net(torch.randn(2, 9, 3)).shape == (2, 9, 4)
    linears = [m for m in net if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == list(
        zip([3, *hidden], [*hidden, 4], strict=False)
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
    for d, h in zip(degrees[1:], [6, 5], strict=False):
        assert len(d) == h
        assert d.min() >= 1 and d.max() <= 3  # hidden degrees in 1..in_dim-1
    assert sorted(set(degrees[1].tolist())) == [1, 2, 3]
