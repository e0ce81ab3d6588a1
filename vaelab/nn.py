"""Plain network pieces shared by every model: an MLP and MADE's masked linear layer."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn


class MLP(nn.Sequential):
    """Fully connected network ``in_dim -> hidden_dims... -> out_dim``.

    Parameters
    ----------
    in_dim, out_dim : int
        Input and output features.
    hidden_dims : sequence of int
        Widths of the hidden layers; empty gives a single linear layer.
    activation : type of nn.Module
        Non-linearity after every hidden layer (not after the output).
    """

    def __init__(
        self,
        in_dim: int,
        hidden_dims: Sequence[int],
        out_dim: int,
        activation: type[nn.Module] = nn.ReLU,
    ) -> None:
        layers: list[nn.Module] = []
        dims = [in_dim, *hidden_dims]
        for d_in, d_out in zip(dims[:-1], dims[1:]):
            layers += [nn.Linear(d_in, d_out), activation()]
        layers.append(nn.Linear(dims[-1], out_dim))
        super().__init__(*layers)


ACTIVATIONS: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "tanh": nn.Tanh, "elu": nn.ELU}


def activation(name: str) -> type[nn.Module]:
    """Return the activation class called ``name`` (relu, tanh, elu)."""
    if name not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}, got {name!r}")
    return ACTIVATIONS[name]


class MaskedLinear(nn.Linear):
    """Linear layer whose weight is multiplied by a fixed 0/1 mask (MADE, Germain et al. 2015,
    arXiv:1502.03509). Written by hand: the notebook on flows teaches how the masks make the
    network autoregressive.

    Parameters
    ----------
    mask : Tensor
        ``[out_features, in_features]`` of 0/1.
    """

    def __init__(self, in_features: int, out_features: int, mask: Tensor) -> None:
        super().__init__(in_features, out_features)
        if mask.shape != (out_features, in_features):
            raise ValueError(
                f"mask must be [{out_features}, {in_features}], got {list(mask.shape)}"
            )
        self.register_buffer("mask", mask.to(self.weight.dtype))

    def forward(self, x: Tensor) -> Tensor:
        return nn.functional.linear(x, self.weight * self.mask, self.bias)


def made_degrees(in_dim: int, hidden_dims: Sequence[int]) -> list[Tensor]:
    """Degrees of the input and hidden units of a MADE with the identity input order."""
    degrees = [torch.arange(1, in_dim + 1)]
    for h in hidden_dims:
        # cycle through 1..in_dim-1 so every hidden degree is used (deterministic masks)
        degrees.append(torch.arange(h) % max(in_dim - 1, 1) + 1)
    return degrees
