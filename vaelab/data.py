"""Batches, built-in data and loaders for standard files.

Every loader returns ``(train, val, test)`` :class:`Data` objects. Static data is ``x [N, X]``;
sequences are padded ``x [N, T, X]`` with ``lengths [N]`` (padding at the end) and optional
actions ``a [N, T, A]`` and true latent states ``z [N, T, Z]`` for plots.
"""

from __future__ import annotations

import gzip
import math
import os
import pickle
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, replace
from importlib import resources
from pathlib import Path

import numpy as np
import torch
from torch import Tensor


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


def check_finite(name: str, t: Tensor | np.ndarray, where: str) -> None:
    """Raise ``ValueError`` naming ``where`` if ``t`` holds NaN or inf."""
    t = torch.as_tensor(t)
    if t.is_floating_point() and not torch.isfinite(t).all():
        bad = int((~torch.isfinite(t)).sum())
        raise ValueError(
            f"{name} from {where} holds {bad} NaN/inf values; clean or impute them first"
        )


# A wrong type is a ValueError too, like every bad input (STYLE.md), hence noqa: TRY004.


def check_int(name: str, value: object, low: int | None = None, high: int | None = None) -> int:
    """``value`` as an int, or a ``ValueError`` naming ``name``, the value and the range."""
    if isinstance(value, bool | np.bool_) or not isinstance(value, int | np.integer):
        raise ValueError(
            f"{name} must be a whole number, got {value!r} (type "
            f"{type(value).__name__}); pass e.g. {name}={low or 0}"
        )
    value = int(value)
    if (low is not None and value < low) or (high is not None and value > high):
        span = (
            f">= {low}" if high is None else f"<= {high}" if low is None else f"in {low}..{high}"
        )
        raise ValueError(f"{name} must be {span}, got {value}")
    return value


def check_number(
    name: str, value: object, low: float | None = None, positive: bool = False
) -> float:
    """``value`` as a finite float (``>= low``, or ``> 0`` when ``positive``), or a
    ``ValueError`` naming ``name``."""
    if isinstance(value, bool | np.bool_) or not isinstance(value, int | float | np.number):
        raise ValueError(f"{name} must be a number, got {value!r} (type {type(value).__name__})")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    if positive and value <= 0:
        raise ValueError(f"{name} must be > 0, got {value}")
    if low is not None and value < low:
        raise ValueError(f"{name} must be >= {low}, got {value}")
    return value


def check_bool(name: str, value: object) -> bool:
    """``value`` if it is True or False, else a ``ValueError`` naming ``name``."""
    if not isinstance(value, bool | np.bool_):
        raise ValueError(
            f"{name} must be True or False, got {value!r} (type {type(value).__name__})"
        )
    return bool(value)


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


# ----------------------------------------------------------------------------- built-in data


def _split(n: int, n_val: int, n_test: int, seed: int = 0) -> tuple[Tensor, Tensor, Tensor]:
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return perm[n_val + n_test :], perm[:n_val], perm[n_val : n_val + n_test]


def load_digits(binarize: bool = True) -> tuple[Data, Data, Data]:
    """The 8x8 hand-written digits shipped with the package (1797 images, UCI; the copy in
    scikit-learn), scaled to [0, 1]: 1297 train, 200 validation, 300 test images ``[N, 64]``."""
    binarize = check_bool("binarize", binarize)
    with resources.files("vaelab.assets").joinpath("digits.npz").open("rb") as f:
        arrays = np.load(f)
        images, labels = arrays["images"], arrays["labels"]
    x = torch.from_numpy(images.reshape(len(images), 64).astype(np.float32) / 16.0)
    info = {"image_shape": (8, 8), "labels": torch.from_numpy(labels.astype(np.int64))}
    data = Data(x, binarize=binarize, name="digits", info=info)
    train, val, test = (_with_labels(data, info, idx) for idx in _split(len(x), 200, 300))
    return train, val, test


def _with_labels(data: Data, info: dict, idx: Tensor) -> Data:
    part = data.subset(idx)
    part.info = {**info, "labels": info["labels"][idx]}
    return part


# ----------------------------------------------------------------------------- MNIST

MNIST_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}


def _check_path(name: str, path: object) -> Path:
    if not isinstance(path, str | os.PathLike):
        raise ValueError(f"{name} must be a path (str), got {path!r} (type {type(path).__name__})")
    return Path(path)


def read_idx(path: str | Path) -> np.ndarray:
    """Read an IDX file (gzip-compressed or not): uint8 images ``[N, H, W]`` or labels
    ``[N]``."""
    path = _check_path("path", path)
    if path.is_dir():
        raise ValueError(
            f"{path} is a folder, not an IDX file; pass a file such as "
            f"{path / MNIST_FILES['train_images']}.gz"
        )
    if not path.exists():
        raise FileNotFoundError(f"IDX file {path} not found; download the MNIST files")
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
        if len(raw) < 4:
            raise ValueError(f"it holds {len(raw)} bytes, fewer than the 4-byte magic number")
        (magic,) = struct.unpack(">I", raw[:4])
        ndim = magic & 0xFF
        if magic >> 8 != 0x08 or ndim not in (1, 3):
            raise ValueError(f"bad magic number {magic:#010x}")
        header = 4 + 4 * ndim
        if len(raw) < header:
            raise ValueError(f"its header needs {header} bytes, the file holds {len(raw)}")
        shape = struct.unpack(f">{ndim}I", raw[4:header])
        if len(raw) - header != math.prod(shape):
            raise ValueError(
                f"its header promises {' x '.join(map(str, shape))} = {math.prod(shape)} "
                f"bytes of data, the file holds {len(raw) - header}: it is "
                f"{'truncated' if len(raw) - header < math.prod(shape) else 'too long'}"
            )
        return np.frombuffer(raw, np.uint8, offset=header).reshape(shape)
    except (OSError, EOFError, ValueError, struct.error, zlib.error) as e:
        raise ValueError(
            f"{path} is not a valid IDX file ({e}); re-download the MNIST files "
            f"(uint8 IDX, optionally .gz)"
        ) from None


def _find_mnist(root: Path, stem: str) -> Path:
    for candidate in (root / f"{stem}.gz", root / stem):
        if candidate.is_dir():
            raise ValueError(
                f"{candidate} is a folder; it should be the MNIST file itself "
                f"(unpack or re-download it)"
            )
        if candidate.exists():
            return candidate
    expected = ", ".join(f"{s}[.gz]" for s in MNIST_FILES.values())
    raise FileNotFoundError(
        f"MNIST file {stem}[.gz] not found in {root}; the folder must hold {expected}"
    )


def load_mnist(
    path: str | Path, binarize: str = "dynamic", n_val: int = 10000, seed: int = 0
) -> tuple[Data, Data, Data]:
    """MNIST from the standard IDX files in folder ``path``: the last ``n_val`` training images
    are the validation set (50000/10000/10000 by default), pixels scaled to [0, 1].

    binarize : ``"dynamic"`` draws x ~ Bernoulli(pixel) for every batch; ``"static"`` draws
    once with ``seed`` (a fixed sample; not Larochelle & Murray's set); ``"none"`` keeps grey.
    """
    if binarize not in ("dynamic", "static", "none"):
        raise ValueError(f"binarize must be 'dynamic', 'static' or 'none', got {binarize!r}")
    n_val = check_int("n_val", n_val, low=1)
    seed = check_int("seed", seed)
    root = _check_path("path", path)
    if root.is_file():
        raise ValueError(
            f"{root} is a file; pass the folder holding it and the other MNIST "
            f"IDX files ({', '.join(MNIST_FILES.values())}, optionally .gz)"
        )
    if not root.is_dir():
        raise FileNotFoundError(
            f"MNIST folder {root} does not exist; pass the folder holding "
            f"{MNIST_FILES['train_images']}.gz and the other IDX files"
        )
    files = {k: _find_mnist(root, stem) for k, stem in MNIST_FILES.items()}
    arrays = {k: read_idx(file) for k, file in files.items()}
    for split in ("train", "test"):
        images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        if images.ndim != 3 or labels.ndim != 1:
            raise ValueError(
                f"{files[f'{split}_images'].name} must hold images [N, H, W] and "
                f"{files[f'{split}_labels'].name} labels [N], got shapes "
                f"{list(images.shape)} and {list(labels.shape)}; are the two "
                f"files swapped?"
            )
        if len(images) != len(labels):
            raise ValueError(
                f"{files[f'{split}_images']} holds {len(images)} images but "
                f"{files[f'{split}_labels']} holds {len(labels)} labels; both must "
                f"come from the same download (re-download them)"
            )
    if arrays["train_images"].shape[1:] != arrays["test_images"].shape[1:]:
        raise ValueError(
            f"training images are {list(arrays['train_images'].shape[1:])} but "
            f"test images {list(arrays['test_images'].shape[1:])} pixels; both "
            f"files must come from the same data set"
        )
    n_images = len(arrays["train_images"])
    if n_val >= n_images:
        raise ValueError(
            f"n_val={n_val} validation images leave none to train on: "
            f"{files['train_images']} holds {n_images} images; choose "
            f"n_val < {n_images}"
        )
    g = torch.Generator().manual_seed(seed)
    image_shape = tuple(int(s) for s in arrays["train_images"].shape[1:])

    def make(images: np.ndarray, labels: np.ndarray, name: str) -> Data:
        x = torch.from_numpy(images.reshape(len(images), -1).astype(np.float32) / 255.0)
        if binarize == "static":
            x = torch.bernoulli(x, generator=g)
        info = {"image_shape": image_shape, "labels": torch.from_numpy(labels.astype(np.int64))}
        return Data(x, binarize=binarize == "dynamic", name=name, info=info)

    n_train = n_images - n_val
    train = make(arrays["train_images"][:n_train], arrays["train_labels"][:n_train], "mnist")
    val = make(arrays["train_images"][n_train:], arrays["train_labels"][n_train:], "mnist-val")
    test = make(arrays["test_images"], arrays["test_labels"], "mnist-test")
    return train, val, test


# ----------------------------------------------------------------------------- polyphonic music

NOTE_MIN, NUM_NOTES = 21, 88

# What unpickling a Boulanger-Lewandowski file may produce. Python 3 builds these from opcodes
# alone; anything else (a function, a class, numpy) needs a global, which is never imported.
PICKLE_TYPES = (dict, list, tuple, int, float, str)


class RefusedPickle(ValueError):
    """A pickle asked for something a polyphonic-music file never holds; nothing was run."""


class NotesUnpickler(pickle.Unpickler):
    """Reads a polyphonic-music pickle without running code: ``find_class``, the only way a
    pickle can reach a function or a class (and so call one), refuses every global, and
    persistent ids are refused too. ``where`` names the file in the errors."""

    def __init__(self, file, where: str) -> None:
        super().__init__(file, encoding="latin1")  # Python 2 pickles store keys as bytes
        self.where = where

    def find_class(self, module: str, name: str):
        raise RefusedPickle(
            f"{self.where}: a polyphonic pickle holds only lists/tuples of MIDI note numbers; "
            f"this file asks to import {module}.{name}, which could run code; it was not "
            f"loaded. Use the original file of Boulanger-Lewandowski et al. (2012)"
        )

    def persistent_load(self, pid):
        raise RefusedPickle(
            f"{self.where}: a polyphonic pickle holds only lists/tuples of MIDI note numbers; "
            f"this file refers to an outside object (persistent id {str(pid)[:50]!r}); it was "
            f"not loaded"
        )


def read_notes_pickle(file, where: str) -> object:
    """Unpickle a polyphonic-music file (an open binary file) with :class:`NotesUnpickler`,
    then check that it holds only dicts, lists, tuples, ints, floats and strs."""
    try:
        obj = NotesUnpickler(file, where).load()
    except RefusedPickle:
        raise
    except Exception as e:  # noqa: BLE001 - any unpickling failure means a bad file
        raise ValueError(
            f"{where} is not a readable pickle ({type(e).__name__}: {e}); use the original file"
        ) from None
    stack = [(obj, "")]  # iterative: a deeply nested file must not overflow the stack
    while stack:
        item, at = stack.pop()
        if type(item) not in PICKLE_TYPES:
            raise ValueError(
                f"{where}: the pickle holds {item!r:.40} (type "
                f"{type(item).__name__}) at "
                f"{at or 'the top'}; a polyphonic pickle holds only dicts, lists, "
                f"tuples and numbers"
            )
        if type(item) is dict:
            for key, value in item.items():
                if type(key) is not str:
                    raise ValueError(
                        f"{where}: the pickle has a key {key!r} (type "
                        f"{type(key).__name__}) at {at or 'the top'}; the keys "
                        f"are 'train', 'valid' and 'test'"
                    )
                stack.append((value, f"{at}[{key!r}]"))
        elif type(item) in (list, tuple):
            stack.extend(
                (v, f"{at}[{i}]") for i, v in enumerate(item) if type(v) is not int
            )  # notes, the bulk of the file, are fine
    return obj


def _note_number(note: object, name: str, i: int, t: int) -> int:
    if isinstance(note, float) and note.is_integer():
        note = int(note)  # 60.0 is note 60
    if isinstance(note, bool | np.bool_) or not isinstance(note, int | np.integer):
        raise ValueError(
            f"{name}: sequence {i} step {t} has note {note!r} (type "
            f"{type(note).__name__}); notes are whole MIDI numbers 21..108"
        )
    if not NOTE_MIN <= note < NOTE_MIN + NUM_NOTES:
        raise ValueError(
            f"{name}: sequence {i} step {t} has note {note}, outside the "
            f"piano's MIDI range 21..108"
        )
    return int(note)


def piano_roll(sequences: list, name: str, transpose: int = 0) -> Data:
    """Sequences of time steps, each a collection of MIDI notes in 21..108, as a padded binary
    piano roll ``x [N, T, 88]`` with ``lengths`` (``transpose``: see :class:`Data`)."""
    collection = list | tuple | set | frozenset | np.ndarray
    if not isinstance(sequences, list | tuple):
        raise ValueError(f"{name}: expected a list of sequences, got a {type(sequences).__name__}")
    for i, seq in enumerate(sequences):
        if not isinstance(seq, list | tuple):
            raise ValueError(
                f"{name}: sequence {i} is {seq!r:.40} (type "
                f"{type(seq).__name__}); "
                f"each sequence is a list of time steps, each a tuple of notes"
            )
        for t, notes in enumerate(seq):
            if not isinstance(notes, collection):
                raise ValueError(
                    f"{name}: sequence {i} step {t} is {notes!r:.40} (type "
                    f"{type(notes).__name__}), not a collection of notes; write "
                    f"each step as a tuple of MIDI numbers, e.g. (60, 64, 67), "
                    f"or () for silence"
                )
    lengths = torch.tensor([len(s) for s in sequences], dtype=torch.long)
    if len(sequences) == 0 or int(lengths.min()) == 0:
        raise ValueError(f"{name}: every split needs non-empty sequences")
    where, notes = [], []  # (sequence, step) and MIDI number of every note played
    for i, seq in enumerate(sequences):
        for t, step in enumerate(seq):
            for note in step:
                where.append((i, t))
                notes.append(note)
    for k, note in enumerate(notes):  # one pass in Python; the rare odd note checked in full
        if type(note) is not int or not NOTE_MIN <= note < NOTE_MIN + NUM_NOTES:
            notes[k] = _note_number(note, name, *where[k])
    x = torch.zeros(len(sequences), int(lengths.max()), NUM_NOTES)
    if notes:
        rows, steps = torch.tensor(where, dtype=torch.long).reshape(-1, 2).unbind(1)
        x[rows, steps, torch.tensor(notes, dtype=torch.long) - NOTE_MIN] = 1.0
    return Data(x, lengths=lengths, transpose=transpose, name=name, info={"kind": "piano_roll"})


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


def load_polyphonic(path: str | Path, transpose: int = 0) -> tuple[Data, Data, Data]:
    """A polyphonic-music pickle of Boulanger-Lewandowski et al. (2012): a dict with 'train',
    'valid' and 'test' lists of sequences of tuples of MIDI notes (JSB Chorales, Nottingham,
    Piano-midi.de, MuseData). ``transpose`` (semitones) augments the training set only:
    see :class:`Data`."""
    transpose = check_int("transpose", transpose, low=0)
    path = _check_path("path", path)
    if path.is_dir():
        raise ValueError(
            f"{path} is a folder; pass the polyphonic pickle file itself, e.g. "
            f"{path / 'jsb_chorales.pickle'}"
        )
    if not path.is_file():
        raise FileNotFoundError(
            f"polyphonic pickle {path} not found; pass the path of e.g. jsb_chorales.pickle"
        )
    with open(path, "rb") as f:
        d = read_notes_pickle(f, str(path))
    return _polyphonic_splits(d, path.stem, transpose)


def _polyphonic_splits(d: object, name: str, transpose: int = 0) -> tuple[Data, Data, Data]:
    if not isinstance(d, dict) or not {"train", "valid", "test"} <= set(d):
        raise ValueError(
            f"{name}: expected a dict with keys 'train', 'valid', 'test' of "
            f"sequences of MIDI notes"
        )
    return (
        piano_roll(d["train"], f"{name}-train", transpose),  # augment training only
        piano_roll(d["valid"], f"{name}-valid"),
        piano_roll(d["test"], f"{name}-test"),
    )


def load_jsb(transpose: int = 0) -> tuple[Data, Data, Data]:
    """JSB Chorales (229/76/77 chorales, quarter notes), shipped inside the package;
    ``transpose`` as in :func:`load_polyphonic`."""
    transpose = check_int("transpose", transpose, low=0)
    with resources.files("vaelab.assets").joinpath("jsb_chorales.pickle").open("rb") as f:
        d = read_notes_pickle(f, "vaelab/assets/jsb_chorales.pickle")
    return _polyphonic_splits(d, "jsb", transpose)


# ----------------------------------------------------------------------------- conditional toy


def load_moons(
    n: int = 4000, noise: float = 0.08, n_val: int = 500, n_test: int = 500, seed: int = 0
) -> tuple[Data, Data, Data]:
    """Conditional two-moons, a multimodal toy for conditional density models (a "policy"):
    the context ``a = (cos theta, sin theta)`` ``[N, 2]`` with ``theta ~ U(0, 2 pi)``, and the
    modelled variable ``x`` ``[N, 2]`` a point of the two interleaved half circles (centred,
    Gaussian noise of sd ``noise``) rotated by ``theta``. Every p(x | a) is bimodal and curved,
    which no conditional Gaussian can fit. ``info["theta"]`` holds the angles."""
    n, n_val, n_test = (
        check_int(k, v, low=1) for k, v in (("n", n), ("n_val", n_val), ("n_test", n_test))
    )
    noise, seed = check_number("noise", noise, low=0), check_int("seed", seed)
    if n < n_val + n_test + 1:
        raise ValueError(
            f"load_moons needs n > n_val + n_test, got n={n}, n_val={n_val}, "
            f"n_test={n_test}; raise n or lower n_val, n_test"
        )
    if n > 10_000_000:
        raise ValueError(f"n={n} points exceed the 1e7 load_moons makes in memory; lower n")
    g = torch.Generator().manual_seed(seed)
    t = torch.rand(n, generator=g) * torch.pi
    upper = torch.rand(n, generator=g) < 0.5
    moon = torch.where(
        upper[:, None],
        torch.stack([t.cos(), t.sin()], dim=1),
        torch.stack([1 - t.cos(), 0.5 - t.sin()], dim=1),
    )
    moon = moon - torch.tensor([0.5, 0.25]) + noise * torch.randn(n, 2, generator=g)
    theta = torch.rand(n, generator=g) * 2 * torch.pi
    cos, sin = theta.cos(), theta.sin()
    rotation = torch.stack([torch.stack([cos, -sin], -1), torch.stack([sin, cos], -1)], -2)
    x = (rotation @ moon[:, :, None]).squeeze(-1)  # [N, 2]
    a = torch.stack([cos, sin], dim=1)  # [N, 2]
    info = {"theta": theta, "noise": noise}
    data = Data(x, a=a, name="moons", info=info)
    splits = []
    for idx in _split(n, n_val, n_test, seed):
        part = data.subset(idx)
        part.info = {**info, "theta": theta[idx]}
        splits.append(part)
    train, val, test = splits
    return train, val, test
