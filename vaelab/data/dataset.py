"""The in-memory data: :class:`Data` (a data set) served as :class:`Batch` es, the key
augmentation its piano-roll batches apply, and the seeded train/validation/test split."""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, replace

import torch
from torch import Tensor

from vaelab.data.checks import check_finite, check_int


@dataclass
class Batch:
    """One mini-batch. ``x [B, X]`` (static) or ``x [B, T, X]``; ``a [B, T, A]``;
    ``mask [B, T]`` bool, True where observed; ``z`` true latents when known (plots only)."""

    x: Tensor
    a: Tensor | None = None
    mask: Tensor | None = None
    z: Tensor | None = None

    def __len__(self) -> int:
        return self.x.shape[0]

    @property
    def lengths(self) -> Tensor | None:
        return None if self.mask is None else self.mask.sum(dim=1)

    def to(self, device: torch.device | str) -> Batch:
        move = lambda t: None if t is None else t.to(device, non_blocking=True)
        return Batch(
            self.x.to(device, non_blocking=True), move(self.a), move(self.mask), move(self.z)
        )

    def repeat(self, k: int) -> Batch:
        """``k`` copies stacked sample-major: row ``i * B + b`` is copy ``i`` of example ``b``."""
        rep = lambda t: None if t is None else t.repeat(k, *([1] * (t.dim() - 1)))
        return Batch(
            self.x.repeat(k, *([1] * (self.x.dim() - 1))), rep(self.a), rep(self.mask), rep(self.z)
        )


@dataclass
class Data:
    """A data set held in memory, served as :class:`Batch` es.

    Parameters
    ----------
    x : Tensor
        ``[N, X]`` or padded ``[N, T, X]``.
    a, z : Tensor, optional
        Actions ``[N, T, A]`` and true latent states ``[N, T, Z]``.
    lengths : Tensor, optional
        ``[N]`` observed steps per sequence; all ``T`` when omitted.
    binarize : bool
        Draw ``x ~ Bernoulli(x)`` afresh for every batch (dynamic binarisation).
    transpose : int
        Piano rolls only: shift each sequence by a whole number of semitones drawn afresh for
        every batch from ``[-transpose, transpose]``, within what keeps its notes on the
        keyboard (key augmentation, a regulariser for training sets; 0 = off).
    info : dict
        Anything the plots want (e.g. image shape, the true system).
    """

    x: Tensor
    a: Tensor | None = None
    z: Tensor | None = None
    lengths: Tensor | None = None
    binarize: bool = False
    transpose: int = 0
    name: str = "data"
    info: dict | None = None

    def __post_init__(self) -> None:
        self._check_shapes()
        check_finite("x", self.x, self.name)
        if self.a is not None:
            check_finite("a", self.a, self.name)
        if self.is_sequence and self.lengths is None:
            self.lengths = torch.full((len(self.x),), self.x.shape[1], dtype=torch.long)
        if self.binarize and (self.x.min() < 0 or self.x.max() > 1):
            raise ValueError(f"{self.name}: binarize needs x in [0, 1]; rescale it first")
        if (
            isinstance(self.transpose, bool)
            or not isinstance(self.transpose, int)
            or self.transpose < 0
        ):
            raise ValueError(
                f"{self.name}: transpose must be >= 0 semitones (a whole "
                f"number), got {self.transpose!r}"
            )
        if self.transpose and not self.is_sequence:
            raise ValueError(
                f"{self.name}: transpose shifts piano rolls [N, T, notes]; "
                f"set it to 0 for data of shape {list(self.x.shape)}"
            )

    def _check_shapes(self) -> None:
        """x a float tensor [N, X] or [N, T, X]; a, z with the same N (and T); lengths [N]
        whole numbers in 1..T, sequences only."""
        if not isinstance(self.x, Tensor) or self.x.dim() not in (2, 3):
            shape = list(getattr(self.x, "shape", []))
            raise ValueError(
                f"{self.name}: x must be a torch tensor [N, X] or [N, T, X], got "
                f"{type(self.x).__name__} of shape {shape}; use torch.as_tensor "
                f"and add the missing axes"
            )
        if not self.x.is_floating_point():
            raise ValueError(
                f"{self.name}: x must hold floats, got {self.x.dtype}; pass x.float()"
            )
        lead = tuple(self.x.shape[: self.x.dim() - 1])  # (N,) or (N, T)
        for key in ("a", "z"):
            t = getattr(self, key)
            if t is not None and (
                not isinstance(t, Tensor) or t.dim() != self.x.dim() or tuple(t.shape[:-1]) != lead
            ):
                raise ValueError(
                    f"{self.name}: {key} must be [{', '.join(map(str, lead))}, "
                    f"{key.upper()}] like x, got shape "
                    f"{list(getattr(t, 'shape', []))}"
                )
        if self.lengths is None:
            return
        if not self.is_sequence:
            raise ValueError(
                f"{self.name}: lengths are for sequences [N, T, X]; drop them for "
                f"data of shape {list(self.x.shape)}"
            )
        n, steps = lead
        if (
            not isinstance(self.lengths, Tensor)
            or self.lengths.shape != (n,)
            or self.lengths.is_floating_point()
            or self.lengths.dtype == torch.bool
        ):
            raise ValueError(
                f"{self.name}: lengths must be an integer tensor [N] = [{n}], got "
                f"{getattr(self.lengths, 'dtype', type(self.lengths).__name__)} "
                f"of shape {list(getattr(self.lengths, 'shape', []))}"
            )
        if n and not (int(self.lengths.min()) >= 1 and int(self.lengths.max()) <= steps):
            raise ValueError(
                f"{self.name}: lengths must be in 1..T={steps}, got values from "
                f"{int(self.lengths.min())} to {int(self.lengths.max())}"
            )

    def __len__(self) -> int:
        return self.x.shape[0]

    @property
    def is_sequence(self) -> bool:
        return self.x.dim() == 3

    @property
    def x_dim(self) -> int:
        return self.x.shape[-1]

    @property
    def a_dim(self) -> int:
        return 0 if self.a is None else self.a.shape[-1]

    def _seq_lengths(self) -> Tensor:
        """``lengths [N]`` of a sequence data set (set in ``__post_init__``)."""
        if self.lengths is None:
            raise ValueError(
                f"{self.name}: lengths is None for sequences of shape "
                f"{list(self.x.shape)}; pass lengths [N] or leave it unset when "
                f"building the Data, not None afterwards"
            )
        return self.lengths

    def subset(self, index: Tensor | slice) -> Data:
        take = lambda t: None if t is None else t[index]
        return replace(
            self, x=self.x[index], a=take(self.a), z=take(self.z), lengths=take(self.lengths)
        )

    def batch(self, index: Tensor, generator: torch.Generator | None = None) -> Batch:
        """The examples at ``index`` as a Batch, sequences trimmed to their longest length."""
        x = self.x[index]
        a = mask = z = None
        if self.is_sequence:
            lengths = self._seq_lengths()[index]
            t_max = int(lengths.max())
            x = x[:, :t_max]
            mask = torch.arange(t_max) < lengths[:, None]  # [B, T]
            a = None if self.a is None else self.a[index, :t_max]
            z = None if self.z is None else self.z[index, :t_max]
        else:
            a = None if self.a is None else self.a[index]
            z = None if self.z is None else self.z[index]
        if self.binarize:
            x = torch.bernoulli(x, generator=generator)
        if self.transpose:
            x = transpose_rolls(x, self.transpose, generator)
        return Batch(x, a, mask, z)

    def batches(
        self,
        batch_size: int,
        shuffle: bool = True,
        generator: torch.Generator | None = None,
        bucket: bool = True,
        jitter: float = 0.1,
    ) -> Iterator[Batch]:
        """Mini-batches covering the data once. Sequences are drawn from length buckets
        (sorted by length plus uniform noise of up to ``jitter`` length standard deviations,
        then batches shuffled) so padding stays small. A small jitter keeps nearly the same
        sequences together every epoch; a large one mixes them more at the cost of padding;
        ``math.inf`` (or ``bucket=False``) is a plain shuffle. A shuffled batch of sequences
        holds them longest first, so that a model's scans can skip the padding
        (:func:`vaelab.nn.observed_rows`)."""
        check_int("batch_size", batch_size, low=1)
        if not jitter >= 0:  # NaN too
            raise ValueError(
                f"jitter must be >= 0 length standard deviations (math.inf for a "
                f"plain shuffle), got {jitter}"
            )
        n = len(self)
        order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
        if self.is_sequence and bucket and shuffle and math.isfinite(jitter):
            lengths = self._seq_lengths().float()
            spread = jitter * lengths.std() if n > 1 else 0.0  # std of 1 is NaN
            noise = torch.rand(n, generator=generator) * spread
            order = torch.argsort(lengths + noise)
        chunks = list(order.split(batch_size))
        if shuffle:
            chunks = [chunks[i] for i in torch.randperm(len(chunks), generator=generator)]
            if self.is_sequence:  # longest first: each step's observed rows are a prefix
                seq_lengths = self._seq_lengths()
                chunks = [
                    c[torch.argsort(seq_lengths[c], descending=True, stable=True)] for c in chunks
                ]
        for index in chunks:
            yield self.batch(index, generator)

    def num_batches(self, batch_size: int) -> int:
        return -(-len(self) // batch_size)


def transpose_rolls(x: Tensor, max_shift: int, generator: torch.Generator | None = None) -> Tensor:
    """Returns the piano rolls ``x [B, T, N]``, each shifted up or down by its own whole number
    of semitones, uniform over the shifts in ``[-max_shift, max_shift]`` that keep all of its
    notes in range (a sequence near the keyboard's edge is shifted less)."""
    notes = torch.arange(x.shape[-1], device=x.device)
    played = x.amax(dim=1) > 0  # [B, N]
    lowest = torch.where(played, notes, x.shape[-1]).amin(dim=1)  # [B]; N when silent
    highest = torch.where(played, notes, -1).amax(dim=1)
    down = torch.clamp(lowest, max=max_shift)  # largest shifts that keep every note on
    up = torch.clamp(x.shape[-1] - 1 - highest, max=max_shift)
    u = torch.rand(len(x), generator=generator).to(x.device)
    shift = (u * (down + up + 1)).long().clamp(max=down + up) - down  # [B], in [-down, up]
    source = notes - shift[:, None]  # [B, N]: note n of the result is note n - shift of x
    valid = (source >= 0) & (source < x.shape[-1])
    index = source.clamp(0, x.shape[-1] - 1)[:, None, :].expand(-1, x.shape[1], -1)
    shifted = torch.gather(x, 2, index)  # [B, T, N]
    return torch.where(valid[:, None, :], shifted, torch.zeros((), dtype=x.dtype, device=x.device))


def split_indices(n: int, n_val: int, n_test: int, seed: int = 0) -> tuple[Tensor, Tensor, Tensor]:
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return perm[n_val + n_test :], perm[:n_val], perm[n_val : n_val + n_test]
