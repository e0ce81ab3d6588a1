from __future__ import annotations

import collections
import copyreg
import gzip
import math
import os
import pickle
import pickletools
import re
import struct
import warnings
from importlib import resources
from itertools import pairwise
from pathlib import Path

import numpy as np
import pytest
import torch

from vaelab.data import (
    MNIST_FILES,
    Batch,
    Data,
    _polyphonic_splits,
    load_digits,
    load_jsb,
    load_mnist,
    load_moons,
    load_polyphonic,
    transpose_rolls,
)
from vaelab.datasets import load_dataset

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def test_digits_splits():
    train, val, test = load_digits()
    assert (len(train), len(val), len(test)) == (1297, 200, 300)
    for d in (train, val, test):
        assert d.x_dim == 64 and d.x.min() >= 0 and d.x.max() <= 1 and d.binarize
        assert len(d.info["labels"]) == len(d) and d.info["image_shape"] == (8, 8)
    # every one of the 1797 shipped images is used exactly once
    with resources.files("vaelab.assets").joinpath("digits.npz").open("rb") as f:
        images = np.load(f)["images"].reshape(-1, 64) / 16.0
    rows = torch.cat([train.x, val.x, test.x]).double()
    assert sorted(map(tuple, rows.tolist())) == sorted(map(tuple, images.tolist()))
    assert not load_digits(binarize=False)[0].binarize
    # the split is fixed
    torch.testing.assert_close(load_digits()[1].x, val.x)


def test_dynamic_binarisation_draws_fresh_bits_every_epoch():
    train, _, _ = load_digits()
    g = torch.Generator().manual_seed(0)
    first = torch.cat([b.x for b in train.batches(500, shuffle=False, generator=g)])
    second = torch.cat([b.x for b in train.batches(500, shuffle=False, generator=g)])
    for x in (first, second):
        assert set(x.unique().tolist()) <= {0.0, 1.0}
    assert not torch.equal(first, second)
    # Bernoulli(x): the mean of the bits is close to the grey values (SE from p(1-p)/n)
    n, p = first.numel(), train.x.mean()
    assert abs((first.mean() - p).item()) < 5 * (p * (1 - p) / n).sqrt().item()
    grey = load_digits(binarize=False)[0]
    x = next(grey.batches(2000, shuffle=False)).x
    torch.testing.assert_close(x, grey.x)


def _idx_bytes(array: np.ndarray) -> bytes:
    magic = 0x0800 | array.ndim
    return struct.pack(f">I{array.ndim}I", magic, *array.shape) + array.astype(np.uint8).tobytes()


def _write_mnist(root, n_train=6, n_test=3, gz=True):
    rng = np.random.default_rng(0)
    arrays = {
        "train_images": rng.integers(0, 256, (n_train, 28, 28)),
        "train_labels": rng.integers(0, 10, n_train),
        "test_images": rng.integers(0, 256, (n_test, 28, 28)),
        "test_labels": rng.integers(0, 10, n_test),
    }
    root.mkdir(exist_ok=True)
    for key, stem in MNIST_FILES.items():
        data = _idx_bytes(arrays[key])
        if gz:
            (root / f"{stem}.gz").write_bytes(gzip.compress(data))
        else:
            (root / stem).write_bytes(data)
    return arrays


@pytest.mark.parametrize("gz", [True, False])
def test_mnist_loader_reads_idx_files(tmp_path, gz):
    arrays = _write_mnist(tmp_path, gz=gz)
    train, val, test = load_mnist(tmp_path, binarize="none", n_val=2)
    assert (len(train), len(val), len(test)) == (4, 2, 3)
    expected = arrays["train_images"].reshape(6, 784) / 255.0
    torch.testing.assert_close(train.x, torch.tensor(expected[:4], dtype=torch.float32))
    torch.testing.assert_close(val.x, torch.tensor(expected[4:], dtype=torch.float32))
    assert test.info["labels"].tolist() == arrays["test_labels"].tolist()
    assert train.info["image_shape"] == (28, 28) and not train.binarize


def test_mnist_binarize_modes(tmp_path):
    _write_mnist(tmp_path)
    grey = load_mnist(tmp_path, binarize="none", n_val=2)[0].x
    static = load_mnist(tmp_path, binarize="static", n_val=2)[0]
    assert set(static.x.unique().tolist()) == {0.0, 1.0} and not static.binarize
    torch.testing.assert_close(load_mnist(tmp_path, binarize="static", n_val=2)[0].x, static.x)
    assert (static.x[grey == 0] == 0).all() and (static.x[grey == 1] == 1).all()
    dynamic = load_mnist(tmp_path, binarize="dynamic", n_val=2)[0]
    torch.testing.assert_close(dynamic.x, grey)  # grey kept, bits drawn per batch
    bits = next(dynamic.batches(4, shuffle=False)).x
    assert set(bits.unique().tolist()) == {0.0, 1.0}
    with pytest.raises(ValueError, match="binarize must be 'dynamic', 'static' or 'none'"):
        load_mnist(tmp_path, binarize="yes")


def test_mnist_missing_folder_or_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist.*train-images-idx3-ubyte"):
        load_mnist(tmp_path / "nowhere")
    _write_mnist(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(FileNotFoundError, match=r"t10k-labels-idx1-ubyte\[\.gz\] not found"):
        load_mnist(tmp_path, n_val=2)


@pytest.mark.parametrize("content", [b"garbage", gzip.compress(b"\x00\x00\x09\x03abc")])
def test_mnist_corrupt_file(tmp_path, content):
    _write_mnist(tmp_path)
    (tmp_path / "train-images-idx3-ubyte.gz").write_bytes(content)
    with pytest.raises(ValueError, match="train-images-idx3-ubyte.gz is not a valid IDX file"):
        load_mnist(tmp_path, n_val=2)


def test_truncated_idx_file(tmp_path):
    _write_mnist(tmp_path, gz=False)
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(ValueError, match="not a valid IDX file"):
        load_mnist(tmp_path, n_val=2)


def test_nan_data_is_rejected():
    x = torch.rand(5, 3)
    x[2, 1] = float("nan")
    with pytest.raises(ValueError, match="x from my-data holds 1 NaN/inf values"):
        Data(x, name="my-data")
    a = torch.zeros(2, 4, 1)
    a[0, 0, 0] = float("inf")
    with pytest.raises(ValueError, match="a from seqs holds 1 NaN/inf"):
        Data(torch.zeros(2, 4, 3), a=a, name="seqs")
    with pytest.raises(ValueError, match="binarize needs x in"):
        Data(torch.full((2, 3), 2.0), binarize=True)


SONGS = {
    "train": [[(60, 64), (62,), ()], [(21, 108)]],
    "valid": [[(70,)] * 4],
    "test": [[(55, 59, 62), (55,)]],
}


def _pickle(tmp_path, obj, name="songs.pickle"):
    path = tmp_path / name
    path.write_bytes(pickle.dumps(obj))
    return path


def test_polyphonic_piano_roll(tmp_path):
    train, valid, test = load_polyphonic(_pickle(tmp_path, SONGS))
    assert train.x.shape == (2, 3, 88) and valid.x.shape == (1, 4, 88)
    assert train.lengths.tolist() == [3, 1] and test.lengths.tolist() == [2]
    expected = torch.zeros(2, 3, 88)
    for i, song in enumerate(SONGS["train"]):
        for t, notes in enumerate(song):
            for n in notes:
                expected[i, t, n - 21] = 1
    torch.testing.assert_close(train.x, expected)
    batch = train.batch(torch.tensor([1, 0]))
    assert batch.mask.tolist() == [[True, False, False], [True, True, True]]
    assert batch.x.shape == (2, 3, 88)
    # trimmed to the longest sequence in the batch
    assert train.batch(torch.tensor([1])).x.shape == (1, 1, 88)
    assert train.x_dim == 88 and train.a_dim == 0 and train.is_sequence


@pytest.mark.parametrize(
    "obj, match",
    [
        (
            {"train": [], "valid": []},
            r"\.pickle: expected a dict with keys 'train', .*, found \['train', 'valid'\]",
        ),
        ([1, 2, 3], r"\.pickle: expected a dict with keys .*, found a list"),
        ({**SONGS, "train": [[(20,)]]}, r"\.pickle \['train'\]: sequence 0 step 0 has note 20, "),
        ({**SONGS, "test": [[(109,)]]}, "note 109, outside"),
        ({**SONGS, "valid": [[]]}, "non-empty sequences"),
    ],
)
def test_polyphonic_bad_content(tmp_path, obj, match):
    with pytest.raises(ValueError, match=match):
        load_polyphonic(_pickle(tmp_path, obj))


def test_polyphonic_bad_file(tmp_path):
    bad = tmp_path / "bad.pickle"
    bad.write_bytes(b"this is not a pickle")
    with pytest.raises(ValueError, match="bad.pickle is not a readable pickle"):
        load_polyphonic(bad)
    with pytest.raises(FileNotFoundError, match="missing.pickle not found"):
        load_polyphonic(tmp_path / "missing.pickle")


def test_load_jsb():
    train, valid, test = load_jsb()
    assert (len(train), len(valid), len(test)) == (229, 76, 77)
    for d in (train, valid, test):
        assert d.x_dim == 88 and d.lengths.min() >= 1
        assert set(d.x.unique().tolist()) == {0.0, 1.0}
        # padding after each sequence's end is zero
        t = torch.arange(d.x.shape[1])
        assert (d.x[t[None, :] >= d.lengths[:, None]] == 0).all()


def _shift_of(original, shifted, max_shift):
    """The semitone shift that turns ``original [T, N]`` into ``shifted``, or None."""
    for s in range(-max_shift, max_shift + 1):
        # a roll wraps around the keyboard, a true shift may not: check the range too
        if torch.equal(torch.roll(original, s, dims=-1), shifted):
            notes = original.nonzero()[:, 1]
            if len(notes) == 0 or notes.min() + s >= 0 and notes.max() + s < original.shape[-1]:
                return s
    return None


def test_transpose_shifts_each_sequence_within_the_keyboard():
    x = torch.zeros(4, 5, 88)
    x[0, :3, [40, 44, 47]] = 1  # a chord in the middle: any shift up to 6
    x[1, :5, 2] = 1  # two semitones above the lowest key: at most 2 down
    x[2, :2, 87] = 1  # the highest key: never up
    x[3, :4, [0, 87]] = 1  # both ends: no room at all
    g = torch.Generator().manual_seed(0)
    seen = [set() for _ in x]
    for _ in range(300):
        y = transpose_rolls(x, 6, g)
        for i in range(len(x)):
            s = _shift_of(x[i], y[i], 6)
            assert s is not None, f"sequence {i} is not a shift of the original"
            seen[i].add(s)
    assert seen[0] == set(range(-6, 7))
    assert seen[1] == set(range(-2, 7))
    assert seen[2] == set(range(-6, 1))
    assert seen[3] == {0}


def test_transpose_is_reproducible_and_spares_silence_and_padding():
    x = torch.zeros(3, 4, 88)
    x[0, :2, 30] = 1
    x[1, :4, [10, 50]] = 1  # x[2] is silent
    a = transpose_rolls(x, 5, torch.Generator().manual_seed(3))
    b = transpose_rolls(x, 5, torch.Generator().manual_seed(3))
    assert torch.equal(a, b)
    assert torch.equal(a[2], x[2]) and (a[0, 2:] == 0).all()  # padding stays zero
    assert torch.equal(a.sum(dim=(1, 2)), x.sum(dim=(1, 2)))  # no note lost


def test_polyphonic_transpose_augments_the_training_set_only(tmp_path):
    train, valid, test = load_polyphonic(_pickle(tmp_path, SONGS), transpose=4)
    assert (train.transpose, valid.transpose, test.transpose) == (4, 0, 0)
    g = torch.Generator().manual_seed(0)
    shifts = set()
    for _ in range(50):
        batch = train.batch(torch.tensor([0, 1]), g)
        full = train.x[[0, 1]]
        for i in range(2):
            s = _shift_of(full[i], batch.x[i], 4)
            assert s is not None
            shifts.add(s)
        assert torch.equal(valid.batch(torch.tensor([0])).x, valid.x[[0]])
    assert len(shifts) > 1  # the shift is drawn afresh for every batch
    assert load_jsb(transpose=2)[0].transpose == 2


def test_transpose_rejects_bad_settings():
    with pytest.raises(
        ValueError,
        match=r"transpose must be >= 0 semitones \(a whole number\), "
        r"got -1",
    ):
        Data(torch.zeros(2, 3, 88), transpose=-1)
    with pytest.raises(ValueError, match="whole number.*got 1.5"):
        Data(torch.zeros(2, 3, 88), transpose=1.5)
    with pytest.raises(ValueError, match="transpose shifts piano rolls"):
        Data(torch.zeros(2, 88), transpose=2)


def test_load_dataset_registry():
    assert len(load_dataset("digits")[0]) == 1297
    with pytest.raises(ValueError, match="unknown data set 'cifar'"):
        load_dataset("cifar")
    with pytest.raises(ValueError, match="'digits' has no such option.*'transpose'"):
        load_dataset("digits", transpose=3)
    with pytest.raises(ValueError, match="needs a path"):
        load_dataset("mnist")
    with pytest.raises(ValueError, match=r"the data spec \{'path': 'x.npz'\} has no 'name'"):
        load_dataset(path="x.npz")  # a checkpoint's spec without its name


def test_batch_repeat_is_sample_major():
    x = torch.arange(6.0).view(3, 2)
    mask = torch.tensor([[True], [False], [True]])
    rep = Batch(x, mask=mask).repeat(4)
    assert len(rep) == 12
    for i in range(4):
        for b in range(3):
            assert torch.equal(rep.x[i * 3 + b], x[b])
            assert torch.equal(rep.mask[i * 3 + b], mask[b])
    assert rep.a is None and rep.z is None


def _sequences(lengths):
    n, t_max = len(lengths), max(lengths)
    x = torch.zeros(n, t_max, 2)
    x[:, :, 0] = torch.arange(n, dtype=torch.float32)[:, None]  # the index, at every step
    return Data(x, lengths=torch.tensor(lengths))


@pytest.mark.parametrize("bucket,jitter", [(True, 0.1), (True, 2.0), (False, 0.1)])
def test_batches_cover_every_index_once_per_epoch(bucket, jitter):
    g = torch.Generator().manual_seed(0)
    lengths = torch.randint(1, 40, (103,), generator=g).tolist()
    data = _sequences(lengths)
    for _ in range(2):  # two epochs
        seen = []
        for batch in data.batches(10, shuffle=True, generator=g, bucket=bucket, jitter=jitter):
            idx = batch.x[:, 0, 0].long()
            seen += idx.tolist()
            assert batch.mask.sum(1).tolist() == [lengths[i] for i in idx]
            assert batch.x.shape[1] == max(lengths[i] for i in idx)
        assert sorted(seen) == list(range(103))


def test_bucketing_reduces_padding():
    g = torch.Generator().manual_seed(0)
    lengths = torch.randint(1, 100, (200,), generator=g).tolist()
    data = _sequences(lengths)

    def padded_steps(bucket):
        gen = torch.Generator().manual_seed(1)
        return sum(b.mask.numel() for b in data.batches(20, generator=gen, bucket=bucket))

    assert padded_steps(True) < 0.7 * padded_steps(False)


def test_bucket_jitter_trades_padding_for_mixing():
    g = torch.Generator().manual_seed(0)
    data = _sequences(torch.randint(1, 100, (200,), generator=g).tolist())

    def epochs(jitter, n=6):
        gen = torch.Generator().manual_seed(1)
        return [
            [
                sorted(b.x[:, 0, 0].long().tolist())
                for b in data.batches(20, generator=gen, jitter=jitter)
            ]
            for _ in range(n)
        ]

    def padded(runs):
        return sum(len(b) * max(data.lengths[b]) for run in runs for b in run)

    def repeats(runs):  # pairs batched together in one epoch that are together again next
        def pairs(run):
            return {(i, j) for b in run for i in b for j in b if i < j}

        return sum(len(pairs(a) & pairs(b)) / len(pairs(a)) for a, b in pairwise(runs))

    tight, loose, shuffled = epochs(0.1), epochs(2.0), epochs(math.inf)
    assert padded(tight) < padded(loose) < padded(shuffled)
    assert repeats(tight) > 2 * repeats(loose) > 2 * repeats(shuffled)
    # an infinite jitter is the plain shuffle
    gen = torch.Generator().manual_seed(1)
    plain = [
        sorted(b.x[:, 0, 0].long().tolist()) for b in data.batches(20, generator=gen, bucket=False)
    ]
    assert plain == shuffled[0]


# ----------------------------------------------------------------------------- no code from data


class _Touch:
    """Unpickling this would create ``marker`` (a stand-in for any command)."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


class _System:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


@pytest.mark.parametrize("protocol", [0, 2, 4, 5])
def test_polyphonic_pickle_cannot_run_code(tmp_path, protocol):
    marker = tmp_path / "marker"
    payload = {**SONGS, "train": [[(60,)], _Touch(marker)]}
    path = tmp_path / "evil.pickle"
    path.write_bytes(pickle.dumps(payload, protocol=protocol))
    # protocols 0-2 name getattr(Path, "touch"), 4-5 the method itself
    with pickle_error(path, r"((builtins|__builtin__)\.getattr|pathlib\.Path\.touch)"):
        load_polyphonic(path)
    assert not marker.exists()
    # the real thing works, so the test above is not vacuous
    pickle.loads(path.read_bytes())
    assert marker.exists()


def pickle_error(path, refused):
    return pytest.raises(
        ValueError,
        match=rf"{re.escape(str(path))}: a polyphonic pickle holds "
        rf"only lists/tuples of MIDI note numbers; this file asks to import "
        rf"{refused}, which could run code; it was not loaded",
    )


def test_polyphonic_pickle_refuses_os_system_and_any_global(tmp_path):
    path = _pickle(tmp_path, _System(), "system.pickle")
    with pickle_error(path, "(posix|nt|os).system"):
        load_polyphonic(path)
    # numpy arrays, sets built through globals (protocol 2) and classes are refused alike
    for i, obj in enumerate([np.array([60]), {60, 64}, collections.OrderedDict(SONGS)]):
        path = tmp_path / f"global{i}.pickle"
        path.write_bytes(pickle.dumps(obj, protocol=2))
        with pytest.raises(ValueError, match="asks to import .*it was not loaded"):
            load_polyphonic(path)
    # an extension code and a persistent id are refused without reaching any object
    copyreg.add_extension("posix", "system", 0xBEEF)
    try:
        (tmp_path / "ext.pickle").write_bytes(b"\x80\x02\x83\xef\xbe.")  # EXT2 0xBEEF
        with pytest.raises(ValueError, match="asks to import posix.system"):
            load_polyphonic(tmp_path / "ext.pickle")
    finally:
        copyreg.remove_extension("posix", "system", 0xBEEF)
    (tmp_path / "pid.pickle").write_bytes(b"\x80\x02X\x01\x00\x00\x00aQ.")
    with pytest.raises(ValueError, match="refers to an outside object"):
        load_polyphonic(tmp_path / "pid.pickle")


@pytest.mark.parametrize("name", ["jsb_chorales", "nottingham", "piano_midi", "musedata"])
def test_real_polyphonic_pickles_load_without_globals(name):
    path = SHARED / "polyphonic" / f"{name}.pickle"
    if not path.exists():
        pytest.skip(f"{path} is not on this machine")
    raw = path.read_bytes()
    # the files hold no global at all: nothing the restricted unpickler refuses
    assert not {op.name for op, _, _ in pickletools.genops(raw)} & {
        "GLOBAL",
        "STACK_GLOBAL",
        "INST",
        "OBJ",
        "REDUCE",
        "EXT1",
        "EXT2",
        "EXT4",
    }
    if name == "jsb_chorales":  # the packaged copy is the same file
        with resources.files("vaelab.assets").joinpath("jsb_chorales.pickle").open("rb") as f:
            assert f.read() == raw
        splits = load_polyphonic(path)
        for ours, plain in zip(splits, _polyphonic_splits(pickle.loads(raw), "x"), strict=False):
            assert torch.equal(ours.x, plain.x) and torch.equal(ours.lengths, plain.lengths)


@pytest.mark.parametrize(
    "obj, match",
    [
        ({**SONGS, "train": [[("60",)]]}, r"note '60' \(type str\); notes are whole MIDI numbers"),
        ({**SONGS, "train": [[(60.5,)]]}, r"note 60.5 \(type float\)"),
        (
            {**SONGS, "valid": [[(True,)]]},
            r"songs.pickle: the pickle holds True \(type bool\) at \['valid'\]\[0\]\[0\]\[0\]",
        ),
        (
            {**SONGS, "test": [[60, 64]]},
            r"songs.pickle \['test'\]: sequence 0 step 0 is 60 \(type int\), not a collection",
        ),
        ({**SONGS, "test": [[(60,), "64"]]}, r"step 1 is '64' \(type str\), not a collection"),
        ({**SONGS, "train": [5]}, r"sequence 0 is 5 \(type int\).*each sequence is a list"),
        ({**SONGS, "train": "abc"}, "expected a list of sequences, got a str"),
        ({**SONGS, "test": [[(None,)]]}, r"holds None \(type NoneType\) at \['test'\]"),
        ({**SONGS, "test": [[{60, 64}]]}, r"\(type set\) at \['test'\]\[0\]\[0\]"),
        ({**SONGS, 5: []}, r"has a key 5 \(type int\)"),
    ],
)
def test_polyphonic_wrong_notes_and_nesting(tmp_path, obj, match):
    path = tmp_path / "songs.pickle"
    path.write_bytes(pickle.dumps(obj, protocol=4))  # protocol 4 builds sets without globals
    with pytest.raises(ValueError, match=match):
        load_polyphonic(path)


def test_polyphonic_whole_float_notes_are_notes(tmp_path):
    floats = {
        k: [[tuple(float(n) for n in step) for step in s] for s in v] for k, v in SONGS.items()
    }
    for ours, ints in zip(
        load_polyphonic(_pickle(tmp_path, floats)),
        load_polyphonic(_pickle(tmp_path, SONGS, "ints.pickle")),
        strict=False,
    ):
        assert torch.equal(ours.x, ints.x)


def test_polyphonic_wrong_path_kind(tmp_path):
    with pytest.raises(ValueError, match="is a folder; pass the polyphonic pickle file itself"):
        load_polyphonic(tmp_path)
    with pytest.raises(ValueError, match="path must be a path"):
        load_polyphonic(3)
    with pytest.raises(ValueError, match=r"transpose must be a whole number, got 1.5"):
        load_polyphonic(_pickle(tmp_path, SONGS), transpose=1.5)
    with pytest.raises(ValueError, match="transpose must be >= 0, got -1"):
        load_jsb(transpose=-1)


# ----------------------------------------------------------------------------- IDX and arguments


@pytest.mark.parametrize("split", ["train", "t10k"])
def test_mnist_label_and_image_counts_must_agree(tmp_path, split):
    _write_mnist(tmp_path, gz=False)
    labels = tmp_path / f"{split}-labels-idx1-ubyte"
    labels.write_bytes(_idx_bytes(np.zeros(2, np.uint8)))
    n = 6 if split == "train" else 3
    with pytest.raises(
        ValueError,
        match=rf"{split}-images-idx3-ubyte holds {n} images but "
        rf".*{split}-labels-idx1-ubyte holds 2 labels; both must come from the "
        rf"same download",
    ):
        load_mnist(tmp_path, n_val=2)


def test_mnist_swapped_files(tmp_path):
    _write_mnist(tmp_path, gz=False)
    images, labels = (tmp_path / f"t10k-{k}" for k in ("images-idx3-ubyte", "labels-idx1-ubyte"))
    a, b = images.read_bytes(), labels.read_bytes()
    images.write_bytes(b), labels.write_bytes(a)
    with pytest.raises(
        ValueError,
        match=r"must hold images \[N, H, W\].*got shapes \[3\] and "
        r"\[3, 28, 28\]; are the two files swapped",
    ):
        load_mnist(tmp_path, n_val=2)


@pytest.mark.parametrize(
    "n_val, match",
    [
        (
            6,
            (
                "n_val=6 validation images leave none to train on: .* holds 6 images; "
                "choose n_val < 6"
            ),
        ),
        (60000, "n_val=60000 validation images leave none"),
        (0, "n_val must be >= 1, got 0"),
        (-3, "n_val must be >= 1, got -3"),
        (2.5, r"n_val must be a whole number, got 2.5 \(type float\)"),
        ("2", r"n_val must be a whole number, got '2' \(type str\)"),
        (True, "n_val must be a whole number, got True"),
    ],
)
def test_mnist_n_val_out_of_range(tmp_path, n_val, match):
    _write_mnist(tmp_path)
    with pytest.raises(ValueError, match=match):
        load_mnist(tmp_path, n_val=n_val)
    assert len(load_mnist(tmp_path, n_val=5)[0]) == 1  # the largest n_val that leaves one


def test_idx_truncated_or_padded_names_the_byte_counts(tmp_path):
    _write_mnist(tmp_path, gz=False)
    path = tmp_path / "train-images-idx3-ubyte"
    raw = path.read_bytes()
    path.write_bytes(raw[:-10])
    with pytest.raises(
        ValueError,
        match=r"header promises 6 x 28 x 28 = 4704 bytes of data, "
        r"the file holds 4694: it is truncated",
    ):
        load_mnist(tmp_path, n_val=2)
    path.write_bytes(raw + b"\0")
    with pytest.raises(ValueError, match="the file holds 4705: it is too long"):
        load_mnist(tmp_path, n_val=2)
    path.write_bytes(raw[:10])  # inside the header
    with pytest.raises(ValueError, match="its header needs 16 bytes, the file holds 10"):
        load_mnist(tmp_path, n_val=2)
    path.write_bytes(b"")
    with pytest.raises(ValueError, match="holds 0 bytes, fewer than the 4-byte magic"):
        load_mnist(tmp_path, n_val=2)
    gz = tmp_path / "t10k-images-idx3-ubyte.gz"  # a truncated download of the .gz
    gz.write_bytes(gzip.compress(_idx_bytes(np.zeros((3, 28, 28))))[:-30])
    (tmp_path / "t10k-images-idx3-ubyte").unlink()
    path.write_bytes(raw)
    with pytest.raises(ValueError, match=r"t10k-images-idx3-ubyte.gz is not a valid IDX file"):
        load_mnist(tmp_path, n_val=2)


def test_mnist_folder_and_file_mixed_up(tmp_path):
    _write_mnist(tmp_path)
    with pytest.raises(
        ValueError, match="train-images-idx3-ubyte.gz is a file; pass the folder holding it"
    ):
        load_mnist(tmp_path / "train-images-idx3-ubyte.gz")
    (tmp_path / "t10k-images-idx3-ubyte.gz").unlink()
    (tmp_path / "t10k-images-idx3-ubyte.gz").mkdir()
    with pytest.raises(
        ValueError,
        match="t10k-images-idx3-ubyte.gz is a folder; it should be the MNIST file itself",
    ):
        load_mnist(tmp_path, n_val=2)
    from vaelab.data import read_idx

    with pytest.raises(ValueError, match="is a folder, not an IDX file"):
        read_idx(tmp_path)
    with pytest.raises(FileNotFoundError, match="IDX file .*nothing not found"):
        read_idx(tmp_path / "nothing")
    with pytest.raises(ValueError, match=r"path must be a path \(str\), got 7"):
        load_mnist(7)


@pytest.mark.parametrize(
    "loader, kw, match",
    [
        (
            load_digits,
            {"binarize": "yes"},
            r"binarize must be True or False, got 'yes' \(type str",
        ),
        (load_digits, {"binarize": 1}, "binarize must be True or False, got 1"),
        (load_mnist, {"path": ".", "seed": 0.5}, "seed must be a whole number, got 0.5"),
        (load_jsb, {"transpose": "3"}, "transpose must be a whole number, got '3'"),
        (load_jsb, {"transpose": True}, "transpose must be a whole number, got True"),
    ],
)
def test_loader_arguments_of_the_wrong_type(loader, kw, match):
    with pytest.raises(ValueError, match=match):
        loader(**kw)


# ----------------------------------------------------------------------------- data specs


def test_validate_data_spec_accepts_what_the_loaders_take(tmp_path):
    from vaelab.datasets import validate_data_spec

    path = _pickle(tmp_path, SONGS)
    spec = {"name": "polyphonic", "path": path, "transpose": 2}
    assert validate_data_spec(spec) == {"name": "polyphonic", "path": str(path), "transpose": 2}
    assert validate_data_spec({"name": "digits", "path": None}) == {"name": "digits"}
    assert validate_data_spec(
        {"name": "linear", "process_std": [0.1, 0.2], "min_steps": None, "steps": 5}
    ) == {"name": "linear", "process_std": [0.1, 0.2], "min_steps": None, "steps": 5}
    _write_mnist(tmp_path / "mnist")
    assert validate_data_spec({"name": "mnist", "path": str(tmp_path / "mnist"), "n_val": 2})


@pytest.mark.parametrize(
    "spec, error, match",
    [
        (["digits"], ValueError, r"a data spec must be a dict .*got list"),
        ({"path": "x"}, ValueError, r"has no 'name'; add one of \['arrays', 'digits'"),
        ({"name": "cifar"}, ValueError, "unknown data set 'cifar'; choose one of"),
        ({"name": ["digits"]}, ValueError, r"unknown data set \['digits'\]"),
        (
            {"name": "digits", "transpose": 3},
            ValueError,
            r"'digits' has no such option\(s\) \['transpose'\]; its options are \['binarize'\]",
        ),
        (
            {"name": "jsb", "path": "x.pickle"},
            ValueError,
            r"'jsb' is built in and reads no file, so it takes no path \(--data-path x.pickle\)",
        ),
        (
            {"name": "digits", "__class__": "os.system"},
            ValueError,
            r"no such option\(s\) \['__class",
        ),
        ({"name": "arrays", "path": "a.npz", "name_": 1}, ValueError, r"option\(s\) \['name_'\]"),
        (
            {"name": "moons", "noise": {"a": 1}},
            ValueError,
            r"data option noise=\{'a': 1\} \(type dict\) is not a plain value",
        ),
        (
            {"name": "moons", "noise": np.float32(0.1)},
            ValueError,
            "type float32.* not a plain value",
        ),
        ({"name": "polyphonic"}, ValueError, "'polyphonic' needs a path: pass a polyphonic-music"),
        ({"name": "polyphonic", "path": 3}, ValueError, r"path must be a non-empty str.*type int"),
        ({"name": "polyphonic", "path": ""}, ValueError, "path must be a non-empty str"),
        (
            {"name": "polyphonic", "path": "/nowhere/x.pickle"},
            FileNotFoundError,
            r"path /nowhere/x.pickle does not exist; pass a polyphonic-music .pickle file",
        ),
    ],
)
def test_validate_data_spec_names_the_field(spec, error, match):
    from vaelab.datasets import validate_data_spec

    with pytest.raises(error, match=match):
        validate_data_spec(spec)


def test_data_spec_path_kind_and_load_dataset_validates_first(tmp_path, monkeypatch):
    from vaelab import datasets

    path = _pickle(tmp_path, SONGS)
    with pytest.raises(ValueError, match=r"path .* is a folder, but this data set reads a file"):
        datasets.validate_data_spec({"name": "polyphonic", "path": str(tmp_path)})
    with pytest.raises(ValueError, match=r"path .* is a file, but this data set reads a folder"):
        datasets.validate_data_spec({"name": "mnist", "path": str(path)})
    # load_dataset checks the whole spec before the loader runs: nothing is read
    calls = []

    def fake(path, transpose=0):
        calls.append(path)

    monkeypatch.setattr(
        datasets,
        "DATASETS",
        {**datasets.DATASETS, "polyphonic": datasets._needs_path(fake, "a file", "file")},
    )
    with pytest.raises(ValueError, match="no such option"):
        datasets.load_dataset("polyphonic", path=str(path), transpose=1, extra=2)
    with pytest.raises(FileNotFoundError):
        datasets.load_dataset("polyphonic", path=str(tmp_path / "gone.pickle"))
    assert calls == []
    datasets.load_dataset("polyphonic", path=str(path))
    assert calls == [str(path)]


def test_batches_reject_bad_settings():
    data = _sequences([3, 1, 2])
    with pytest.raises(ValueError, match="batch_size must be >= 1, got 0"):
        next(data.batches(0))
    with pytest.raises(ValueError, match="batch_size must be a whole number, got 2.5"):
        next(data.batches(2.5))
    for jitter in (-1.0, math.nan):
        with pytest.raises(ValueError, match="jitter must be >= 0 length standard deviations"):
            next(data.batches(2, jitter=jitter))
    # one sequence: no spread to jitter by, and no warning about it
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert len(list(_sequences([4]).batches(2))) == 1


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: Data(np.zeros((3, 2))), r"x must be a torch tensor \[N, X\] .*got ndarray"),
        (lambda: Data(torch.zeros(3)), r"x must be a torch tensor .*of shape \[3\]"),
        (
            lambda: Data(torch.zeros(3, 2, dtype=torch.long)),
            r"x must hold floats, got torch.int64",
        ),
        (
            lambda: Data(torch.zeros(3, 4, 2), a=torch.zeros(2, 4, 1)),
            r"a must be \[3, 4, A\] like x",
        ),
        (
            lambda: Data(torch.zeros(3, 4, 2), z=torch.zeros(3, 5, 1)),
            r"z must be \[3, 4, Z\] like x",
        ),
        (lambda: Data(torch.zeros(3, 2), a=torch.zeros(3, 2, 1)), r"a must be \[3, A\] like x"),
        (
            lambda: Data(torch.zeros(3, 4, 2), lengths=torch.tensor([1, 2])),
            r"lengths must be an integer tensor \[N\] = \[3\], got torch.int64 of shape \[2\]",
        ),
        (
            lambda: Data(torch.zeros(3, 4, 2), lengths=torch.tensor([1.0, 2.0, 3.0])),
            "lengths must be an integer tensor",
        ),
        (
            lambda: Data(torch.zeros(3, 4, 2), lengths=torch.tensor([1, 2, 9])),
            r"lengths must be in 1..T=4, got values from 1 to 9",
        ),
        (
            lambda: Data(torch.zeros(3, 4, 2), lengths=torch.tensor([0, 2, 3])),
            r"lengths must be in 1..T=4, got values from 0 to 3",
        ),
        (
            lambda: Data(torch.zeros(3, 2), lengths=torch.tensor([1, 1, 1])),
            r"lengths are for sequences \[N, T, X\]; drop them",
        ),
    ],
)
def test_data_checks_its_arrays(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_moons_arguments():
    with pytest.raises(ValueError, match="noise must be >= 0, got -1.0"):
        load_moons(noise=-1)
    with pytest.raises(ValueError, match="n must be a whole number, got '50'"):
        load_moons(n="50")
    with pytest.raises(ValueError, match="load_moons needs n > n_val \\+ n_test, got n=10"):
        load_moons(n=10, n_val=5, n_test=5)
    with pytest.raises(ValueError, match="exceed the 1e7 load_moons makes in memory"):
        load_moons(n=10**9)
    assert len(load_moons(n=11, n_val=5, n_test=5)[0]) == 1


def test_load_dataset_never_runs_a_pickle(tmp_path):
    """The path a checkpoint's data spec names goes through the same restricted unpickler."""
    marker = tmp_path / "marker"
    path = tmp_path / "evil.pickle"
    path.write_bytes(pickle.dumps({**SONGS, "test": _Touch(marker)}, protocol=2))
    with pickle_error(path, r"(builtins|__builtin__)\.getattr"):
        spec = {"name": "polyphonic", "path": str(path), "transpose": 1}  # as a checkpoint has
        load_dataset(**spec)
    assert not marker.exists()


def test_piano_roll_of_silence_and_of_the_keyboard_edges():
    from vaelab.data import piano_roll

    silent = piano_roll([[(), ()], [()]], "silent")
    assert silent.x.shape == (2, 2, 88) and silent.x.sum() == 0
    assert silent.lengths.tolist() == [2, 1]
    edges = piano_roll([[(21, 108), [60]], [{64, 67}]], "edges")  # tuples, lists and sets
    assert edges.x.nonzero().tolist() == [
        [0, 0, 0],
        [0, 0, 87],
        [0, 1, 39],
        [1, 0, 43],
        [1, 0, 46],
    ]


def test_sequence_lengths_set_to_none_later_are_named():
    data = _sequences([3, 1, 2])
    data.lengths = None
    with pytest.raises(ValueError, match=r"lengths is None for sequences of shape \[3, 3, 2\]"):
        data.batch(torch.arange(3))
    with pytest.raises(ValueError, match="lengths is None for sequences"):
        next(data.batches(2))


def test_a_path_loader_registered_without_its_description_is_named(monkeypatch):
    from vaelab import datasets

    def bare(path, transpose=0):
        raise AssertionError("the spec check runs before any loader")

    monkeypatch.setattr(datasets, "DATASETS", {**datasets.DATASETS, "bare": bare})
    with pytest.raises(
        ValueError,
        match=r"'bare' takes a path but its loader does not say what "
        r"it reads; register it as .*_needs_path",
    ):
        datasets.validate_data_spec({"name": "bare", "path": "somewhere"})
