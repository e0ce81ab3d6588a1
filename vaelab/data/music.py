"""Polyphonic music as piano rolls: the Boulanger-Lewandowski pickles, read without running
anything they ask for, and the JSB Chorales shipped with the package."""

from __future__ import annotations

import pickle
from importlib import resources
from pathlib import Path

import numpy as np
import torch

from vaelab.data.checks import check_int, check_path
from vaelab.data.dataset import Data

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


def piano_roll(sequences: list, name: str, transpose: int = 0, where: str | None = None) -> Data:
    """Sequences of time steps, each a collection of MIDI notes in 21..108, as a padded binary
    piano roll ``x [N, T, 88]`` with ``lengths`` (``transpose``: see :class:`Data`). Errors
    name the sequences ``where`` (e.g. a file and its split; default ``name``)."""
    label = where or name
    collection = list | tuple | set | frozenset | np.ndarray
    if not isinstance(sequences, list | tuple):
        raise ValueError(
            f"{label}: expected a list of sequences, got a {type(sequences).__name__}"
        )
    for i, seq in enumerate(sequences):
        if not isinstance(seq, list | tuple):
            raise ValueError(
                f"{label}: sequence {i} is {seq!r:.40} (type "
                f"{type(seq).__name__}); "
                f"each sequence is a list of time steps, each a tuple of notes"
            )
        for t, notes in enumerate(seq):
            if not isinstance(notes, collection):
                raise ValueError(
                    f"{label}: sequence {i} step {t} is {notes!r:.40} (type "
                    f"{type(notes).__name__}), not a collection of notes; write "
                    f"each step as a tuple of MIDI numbers, e.g. (60, 64, 67), "
                    f"or () for silence"
                )
    lengths = torch.tensor([len(s) for s in sequences], dtype=torch.long)
    if len(sequences) == 0 or int(lengths.min()) == 0:
        raise ValueError(f"{label}: every split needs non-empty sequences")
    at, notes = [], []  # (sequence, step) and MIDI number of every note played
    for i, seq in enumerate(sequences):
        for t, step in enumerate(seq):
            for note in step:
                at.append((i, t))
                notes.append(note)
    for k, note in enumerate(notes):  # one pass in Python; the rare odd note checked in full
        if type(note) is not int or not NOTE_MIN <= note < NOTE_MIN + NUM_NOTES:
            notes[k] = _note_number(note, label, *at[k])
    x = torch.zeros(len(sequences), int(lengths.max()), NUM_NOTES)
    if notes:
        rows, steps = torch.tensor(at, dtype=torch.long).reshape(-1, 2).unbind(1)
        x[rows, steps, torch.tensor(notes, dtype=torch.long) - NOTE_MIN] = 1.0
    return Data(x, lengths=lengths, transpose=transpose, name=name, info={"kind": "piano_roll"})


def load_polyphonic(path: str | Path, transpose: int = 0) -> tuple[Data, Data, Data]:
    """A polyphonic-music pickle of Boulanger-Lewandowski et al. (2012): a dict with 'train',
    'valid' and 'test' lists of sequences of tuples of MIDI notes (JSB Chorales, Nottingham,
    Piano-midi.de, MuseData). ``transpose`` (semitones) augments the training set only:
    see :class:`Data`."""
    transpose = check_int("transpose", transpose, low=0)
    path = check_path("path", path)
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
    return _polyphonic_splits(d, path.stem, transpose, str(path))


def _polyphonic_splits(
    d: object, name: str, transpose: int = 0, where: str | None = None
) -> tuple[Data, Data, Data]:
    """The three splits of pickle ``d``, named ``name-train`` etc.; errors name ``where``
    (the file) and the split."""
    where = where or name
    if not isinstance(d, dict) or not {"train", "valid", "test"} <= set(d):
        found = sorted(map(str, d)) if isinstance(d, dict) else f"a {type(d).__name__}"
        raise ValueError(
            f"{where}: expected a dict with keys 'train', 'valid', 'test' of "
            f"sequences of MIDI notes, found {found}"
        )
    return (
        piano_roll(d["train"], f"{name}-train", transpose, f"{where} ['train']"),  # augmented
        piano_roll(d["valid"], f"{name}-valid", where=f"{where} ['valid']"),
        piano_roll(d["test"], f"{name}-test", where=f"{where} ['test']"),
    )


def load_jsb(transpose: int = 0) -> tuple[Data, Data, Data]:
    """JSB Chorales (229/76/77 chorales, quarter notes), shipped inside the package;
    ``transpose`` as in :func:`load_polyphonic`."""
    transpose = check_int("transpose", transpose, low=0)
    with resources.files("vaelab.assets").joinpath("jsb_chorales.pickle").open("rb") as f:
        d = read_notes_pickle(f, "vaelab/assets/jsb_chorales.pickle")
    return _polyphonic_splits(d, "jsb", transpose, "vaelab/assets/jsb_chorales.pickle")
