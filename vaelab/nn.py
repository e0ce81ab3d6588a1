"""Plain network pieces shared by every model: an MLP, MADE's masked linear layer and MADE."""

from __future__ import annotations

from collections.abc import Sequence
from itertools import pairwise

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
        for d_in, d_out in pairwise(dims):
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
        self.mask: Tensor
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


class MADE(nn.Module):
    """Masked autoencoder for distribution estimation (Germain et al. 2015, arXiv:1502.03509):
    an MLP of :class:`MaskedLinear` layers whose output ``k`` for input dim ``d`` depends only
    on the inputs ``x_{<d}`` (identity order), plus, unmasked, on an optional context.

    Parameters
    ----------
    in_dim : int
        Autoregressive inputs ``D``.
    hidden_dims : sequence of int
        Hidden widths (each at least ``D - 1`` so every degree is present).
    num_outputs : int
        Outputs per input dim (e.g. 2: shift and pre-gate).
    context_dim : int
        Width of a context vector (0 for none) that every hidden unit and, through a direct
        unmasked connection, every output reads; without that connection the first dim's
        outputs (degree 1, no hidden unit below them) would be constants.
    direct : bool
        Add a masked linear map straight from the inputs to the outputs (the paper's "direct
        connections"): output ``d`` then reads every ``x_{<d}`` linearly, where through the
        hidden layers it sees only the units of degree below ``d``, few for small ``d``.
    """

    def __init__(
        self,
        in_dim: int,
        hidden_dims: Sequence[int],
        num_outputs: int = 2,
        context_dim: int = 0,
        activation: type[nn.Module] = nn.ReLU,
        direct: bool = False,
    ) -> None:
        super().__init__()
        if in_dim < 1 or num_outputs < 1 or len(hidden_dims) < 1:
            raise ValueError(
                f"MADE needs in_dim >= 1, num_outputs >= 1 and one hidden layer or more, got "
                f"in_dim={in_dim}, num_outputs={num_outputs}, hidden_dims={list(hidden_dims)}"
            )
        if min(hidden_dims) < in_dim - 1:
            raise ValueError(
                f"hidden widths must be >= in_dim - 1 = {in_dim - 1} so that every degree "
                f"appears, got {list(hidden_dims)}; widen the hidden layers"
            )
        self.in_dim, self.num_outputs, self.context_dim = in_dim, num_outputs, context_dim
        degrees = made_degrees(in_dim, hidden_dims)
        layers: list[nn.Module] = []
        for d_in, d_out in pairwise(degrees):
            # a hidden unit of degree k may read units of degree <= k
            mask = (d_out[:, None] >= d_in[None, :]).float()
            layers.append(MaskedLinear(len(d_in), len(d_out), mask))
        # output for input dim d (degree d) reads hidden units of degree < d: strictly earlier
        d_out = torch.arange(1, in_dim + 1).repeat(num_outputs)
        mask = (d_out[:, None] > degrees[-1][None, :]).float()
        self.layers = nn.ModuleList(layers)
        self.output = MaskedLinear(len(degrees[-1]), num_outputs * in_dim, mask)
        self.context = nn.Linear(context_dim, hidden_dims[0]) if context_dim > 0 else None
        self.context_out = (
            nn.Linear(context_dim, num_outputs * in_dim, bias=False) if context_dim > 0 else None
        )
        self.direct = (
            MaskedLinear(
                in_dim, num_outputs * in_dim, (d_out[:, None] > degrees[0][None, :]).float()
            )
            if direct
            else None
        )
        self.activation = activation()

    def forward(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        """Returns ``[..., num_outputs, D]``: row ``k`` holds the ``k``-th output of every dim,
        the one for dim ``d`` a function of ``x[..., :d]`` (and the context) only."""
        h = self.layers[0](x)
        if self.context is not None:
            if context is None:
                raise ValueError(f"this MADE reads a context [..., {self.context_dim}]; pass it")
            h = h + self.context(context)
        h = self.activation(h)
        for layer in self.layers[1:]:
            h = self.activation(layer(h))
        out = self.output(h)  # [..., K * D]
        if self.direct is not None:
            out = out + self.direct(x)
        if self.context_out is not None:
            out = out + self.context_out(context)
        return out.unflatten(-1, (self.num_outputs, self.in_dim))  # [..., K, D]


def reverse_sequences(x: Tensor, lengths: Tensor) -> Tensor:
    """Reverse each sequence in time over its own length; padding stays at the end.

    Parameters
    ----------
    x : Tensor
        ``[B, T, ...]`` padded sequences.
    lengths : Tensor
        ``[B]`` observed steps per sequence, each in ``1..T``.

    Returns
    -------
    Tensor
        ``[B, T, ...]`` with ``out[b, t] = x[b, lengths[b] - 1 - t]`` for ``t < lengths[b]``
        and ``out[b, t] = x[b, t]`` after. Applying it twice gives ``x`` back.
    """
    t = torch.arange(x.shape[1], device=x.device)
    lengths = lengths.to(x.device)
    index = lengths[:, None] - 1 - t  # [B, T]
    index = torch.where(index >= 0, index, t)  # padding maps to itself
    index = index.view(*index.shape, *([1] * (x.dim() - 2))).expand_as(x)
    return x.gather(1, index)
