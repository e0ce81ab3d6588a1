"""Batches, built-in data and loaders for standard files.

Every loader returns ``(train, val, test)`` :class:`Data` objects. Static data is ``x [N, X]``;
sequences are padded ``x [N, T, X]`` with ``lengths [N]`` (padding at the end) and optional
actions ``a [N, T, A]`` and true latent states ``z [N, T, Z]`` for plots.

    checks.py    the loaders' input checks (check_int, check_number, check_bool, ...)
    dataset.py   Data, Batch, the piano rolls' key augmentation, the seeded split
    images.py    the built-in digits, MNIST from its IDX files
    music.py     polyphonic music as piano rolls (safe pickle reading), the built-in JSB
    moons.py     the conditional two-moons toy

Every name is importable from ``vaelab.data`` itself.
"""

from vaelab.data.checks import check_bool, check_finite, check_int, check_number, check_path
from vaelab.data.dataset import Batch, Data, split_indices, transpose_rolls
from vaelab.data.images import MNIST_FILES, load_digits, load_mnist, read_idx
from vaelab.data.moons import load_moons
from vaelab.data.music import (
    NOTE_MIN,
    NUM_NOTES,
    PICKLE_TYPES,
    NotesUnpickler,
    RefusedPickle,
    _polyphonic_splits,
    load_jsb,
    load_polyphonic,
    piano_roll,
    read_notes_pickle,
)

__all__ = [
    "MNIST_FILES",
    "NOTE_MIN",
    "NUM_NOTES",
    "PICKLE_TYPES",
    "Batch",
    "Data",
    "NotesUnpickler",
    "RefusedPickle",
    "_polyphonic_splits",
    "check_bool",
    "check_finite",
    "check_int",
    "check_number",
    "check_path",
    "load_digits",
    "load_jsb",
    "load_mnist",
    "load_moons",
    "load_polyphonic",
    "piano_roll",
    "read_idx",
    "read_notes_pickle",
    "split_indices",
    "transpose_rolls",
]
