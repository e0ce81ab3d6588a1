"""Property-based tests (hypothesis) of the loaders and the mask/length logic: for any lengths,
padding, batch size and file content the format allows, the invariants hold."""

from __future__ import annotations

import ast
import io
import math
import pickle
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vaelab.data import Batch, Data, NotesUnpickler, read_notes_pickle, transpose_rolls
from vaelab.dmm import DMM, DMMConfig
from vaelab.objectives import masked_sum
from vaelab.ssm import SSM, SSMConfig
from vaelab.systems import from_arrays, load_arrays

ROOT = Path(__file__).resolve().parents[1]
FAST = settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
lengths_lists = st.lists(st.integers(1, 12), min_size=1, max_size=8)
garbage = st.sampled_from([math.nan, math.inf, -math.inf, 1e30, -7.0])


def ids_data(lengths: list[int], extra: int = 0) -> Data:
    """Sequences whose feature 0 holds the sequence's index at every step."""
    n, t_max = len(lengths), max(lengths) + extra
    x = torch.zeros(n, t_max, 2)
    x[:, :, 0] = torch.arange(n, dtype=torch.float32)[:, None]
    return Data(x, lengths=torch.tensor(lengths))


# ----------------------------------------------------------------------------- masks


@FAST
@given(lengths=lengths_lists, extra=st.integers(0, 4), data=st.data())
def test_batch_mask_matches_lengths(lengths, extra, data):
    d = ids_data(lengths, extra)
    index = data.draw(
        st.lists(st.integers(0, len(lengths) - 1), min_size=1, max_size=len(lengths), unique=True)
    )
    batch = d.batch(torch.tensor(index))
    want = [lengths[i] for i in index]
    assert batch.x[:, 0, 0].long().tolist() == index
    assert batch.mask.dtype == torch.bool and batch.mask.shape == (len(index), max(want))
    assert batch.x.shape[1] == max(want)  # trimmed to the batch's longest sequence
    for row, n in zip(batch.mask.tolist(), want, strict=False):
        assert row == [True] * n + [False] * (max(want) - n)  # padding only at the end
    assert batch.lengths.tolist() == want


@FAST
@given(lengths=lengths_lists, pad=garbage, seed=st.integers(0, 2**16))
def test_padding_never_changes_masked_sum(lengths, pad, seed):
    g = torch.Generator().manual_seed(seed)
    t_max = max(lengths)
    x = torch.randn(len(lengths), t_max, generator=g, dtype=torch.float64)
    mask = torch.arange(t_max) < torch.tensor(lengths)[:, None]
    padded = torch.where(mask, x, torch.tensor(pad, dtype=torch.float64))
    expected = torch.tensor(
        [sum(x[b, :n].tolist()) for b, n in enumerate(lengths)], dtype=torch.float64
    )  # a plain loop over the observed steps
    torch.testing.assert_close(masked_sum(padded, mask), expected)
    torch.testing.assert_close(masked_sum(x, mask), expected)


torch.manual_seed(0)
DMM_MODEL = DMM(DMMConfig(x_dim=5, z_dim=3, emission_dim=6, transition_dim=6, rnn_dim=7)).eval()
SSM_MODEL = SSM(SSMConfig(x_dim=5, a_dim=2, z_dim=3, hidden_dim=6, rnn_dim=6, guide="smoothing"))


@FAST
@given(lengths=lengths_lists, pad=garbage, seed=st.integers(0, 2**16))
def test_padding_never_changes_a_model_elbo(lengths, pad, seed):
    g = torch.Generator().manual_seed(seed)
    b, t_max = len(lengths), max(lengths)
    mask = torch.arange(t_max) < torch.tensor(lengths)[:, None]  # [B, T]
    x = torch.bernoulli(torch.full((b, t_max, 5), 0.4), generator=g)
    a = torch.randn(b, t_max, 2, generator=g)
    fill = torch.tensor(pad)
    clean = Batch(torch.where(mask[..., None], x, 0.0), mask=mask)
    dirty = Batch(torch.where(mask[..., None], x, fill), mask=mask)
    noise = torch.randn(b, t_max, 3, generator=g)
    with torch.no_grad():
        want, got = DMM_MODEL.elbo(clean, noise=noise), DMM_MODEL.elbo(dirty, noise=noise)
    torch.testing.assert_close(got.elbo, want.elbo, rtol=0, atol=0)
    assert torch.isfinite(got.elbo).all()
    torch.testing.assert_close(got.steps, torch.tensor(lengths, dtype=torch.float32))
    # the SSM draws its own noise: the same seed gives the same draws
    clean = Batch(clean.x, torch.where(mask[..., None], a, 0.0), mask)
    dirty = Batch(dirty.x, torch.where(mask[..., None], a, fill), mask)
    results = []
    for batch in (clean, dirty):
        with torch.random.fork_rng(), torch.no_grad():
            torch.manual_seed(seed)
            results.append(SSM_MODEL.elbo(batch).elbo)
    torch.testing.assert_close(results[1], results[0], rtol=0, atol=0)
    assert torch.isfinite(results[1]).all()


# ----------------------------------------------------------------------------- batches


@FAST
@given(
    lengths=st.lists(st.integers(1, 30), min_size=1, max_size=40),
    batch_size=st.integers(1, 50),
    jitter=st.one_of(st.floats(0, 10), st.just(math.inf)),
    shuffle=st.booleans(),
    bucket=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_batches_cover_every_example_once_per_epoch(
    lengths, batch_size, jitter, shuffle, bucket, seed
):
    d = ids_data(lengths)
    g = torch.Generator().manual_seed(seed)
    for _ in range(2):  # two epochs
        seen = []
        for batch in d.batches(
            batch_size, shuffle=shuffle, generator=g, bucket=bucket, jitter=jitter
        ):
            assert 1 <= len(batch) <= batch_size
            idx = batch.x[:, 0, 0].long().tolist()
            assert batch.lengths.tolist() == [lengths[i] for i in idx]
            if shuffle:  # training batches hold their sequences longest first
                assert batch.lengths.tolist() == sorted(batch.lengths.tolist(), reverse=True)
            seen += idx
        assert sorted(seen) == list(range(len(lengths)))
        assert len(seen) == len(lengths)
    assert d.num_batches(batch_size) == -(-len(lengths) // batch_size)


# ----------------------------------------------------------------------------- transposition


@FAST
@given(data=st.data(), max_shift=st.integers(0, 12), seed=st.integers(0, 2**16))
def test_transpose_keeps_notes_on_the_keyboard(data, max_shift, seed):
    b, t, keys = data.draw(st.integers(1, 4)), data.draw(st.integers(1, 5)), 88
    notes = data.draw(
        st.lists(
            st.tuples(st.integers(0, b - 1), st.integers(0, t - 1), st.integers(0, keys - 1)),
            max_size=20,
        )
    )
    x = torch.zeros(b, t, keys)
    for i, s, n in notes:
        x[i, s, n] = 1.0
    y = transpose_rolls(x, max_shift, torch.Generator().manual_seed(seed))
    assert y.shape == x.shape and set(y.unique().tolist()) <= {0.0, 1.0}
    # the same number of notes per sequence: none fell off the keyboard
    assert torch.equal(y.sum(dim=(1, 2)), x.sum(dim=(1, 2)))
    for i in range(b):  # each sequence is one whole shift of its own, within max_shift
        played = x[i].nonzero()[:, 1]
        if len(played) == 0:
            assert torch.equal(y[i], x[i])
            continue
        shift = int(y[i].nonzero()[:, 1].min() - played.min())
        assert abs(shift) <= max_shift
        assert played.min() + shift >= 0 and played.max() + shift < keys
        assert torch.equal(torch.roll(x[i], shift, dims=-1), y[i])


# ----------------------------------------------------------------------------- your arrays


@FAST
@given(data=st.data(), with_a=st.booleans(), seed=st.integers(0, 100))
def test_from_arrays_round_trips(data, with_a, seed):
    n, t, xd = (
        data.draw(st.integers(3, 12)),
        data.draw(st.integers(1, 6)),
        data.draw(st.integers(1, 3)),
    )
    lengths = np.array(data.draw(st.lists(st.integers(1, t), min_size=n, max_size=n)))
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, t, xd + 1))
    x[:, :, 0] = np.arange(n)[:, None] + 1  # which sequence a row came from
    a = rng.normal(size=(n, t, 2)) if with_a else None
    observed = np.arange(t)[None, :] < lengths[:, None]
    x[~observed] = np.nan  # padding may hold anything
    splits = from_arrays(x, a, lengths, seed=seed)
    n_val, n_test = max(1, round(0.1 * n)), max(1, round(0.1 * n))
    assert [len(s) for s in splits] == [n - n_val - n_test, n_val, n_test]
    seen = []
    for part in splits:
        for j in range(len(part)):
            i = int(part.x[j, 0, 0]) - 1
            seen.append(i)
            assert int(part.lengths[j]) == lengths[i]
            keep = observed[i][:, None]
            torch.testing.assert_close(
                part.x[j], torch.tensor(np.where(keep, x[i], 0.0), dtype=torch.float32)
            )
            if with_a:
                torch.testing.assert_close(
                    part.a[j], torch.tensor(np.where(keep, a[i], 0.0), dtype=torch.float32)
                )
            else:
                assert part.a is None
    assert sorted(seen) == list(range(n))
    # through an .npz file: the same splits
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "mine.npz"
        np.savez(path, x=x, lengths=lengths, **({"a": a} if with_a else {}))
        for ours, direct in zip(load_arrays(path, seed=seed), splits, strict=False):
            assert torch.equal(ours.x, direct.x) and torch.equal(ours.lengths, direct.lengths)


# ----------------------------------------------------------------------------- pickles

notes_like = st.recursive(
    st.one_of(st.integers(-(2**70), 2**70), st.floats(allow_nan=False), st.text(max_size=5)),
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.tuples(inner, inner),
        st.dictionaries(st.text(max_size=4), inner, max_size=3),
    ),
    max_leaves=30,
)


@FAST
@given(obj=notes_like, protocol=st.integers(0, pickle.HIGHEST_PROTOCOL))
def test_restricted_unpickler_reads_what_the_format_allows(obj, protocol):
    raw = pickle.dumps(obj, protocol=protocol)
    assert read_notes_pickle(io.BytesIO(raw), "f.pickle") == pickle.loads(raw)


class Touch:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


needs_a_global = st.sampled_from(
    [
        lambda m: Touch(m),
        lambda m: complex(1, 2),
        lambda m: range(3),
        lambda m: np.int64(60),
        lambda m: Path(m),
        lambda m: slice(1, 2),
        lambda m: print,
        lambda m: torch.zeros(1),
    ]
)


@FAST
@given(
    obj=notes_like,
    make=needs_a_global,
    where=st.integers(0, 10),
    protocol=st.integers(0, pickle.HIGHEST_PROTOCOL),
)
def test_restricted_unpickler_refuses_any_global(obj, make, where, protocol):
    with tempfile.TemporaryDirectory() as tmp:
        marker = str(Path(tmp) / "marker")
        bad = make(marker)
        payload = [[obj, bad], [bad, obj], {"train": [[bad]], "valid": obj}, (obj, [(60, bad)])][
            where % 4
        ]
        raw = pickle.dumps(payload, protocol=protocol)
        with pytest.raises(
            ValueError,
            match=r"f.pickle: .*this file asks to import \S+\.\S+, "
            r"which could run code; it was not loaded",
        ):
            read_notes_pickle(io.BytesIO(raw), "f.pickle")
        assert not Path(marker).exists()


@FAST
@given(
    module=st.from_regex(r"[a-z_][a-z0-9_.]{0,12}", fullmatch=True),
    name=st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,12}", fullmatch=True),
    opcode=st.sampled_from(["GLOBAL", "STACK_GLOBAL"]),
)
def test_restricted_unpickler_names_the_refused_global(module, name, opcode):
    if opcode == "GLOBAL":
        raw = b"c" + module.encode() + b"\n" + name.encode() + b"\n."
    else:
        raw = (
            b"\x80\x04"
            + pickle.SHORT_BINUNICODE
            + bytes([len(module)])
            + module.encode()
            + pickle.SHORT_BINUNICODE
            + bytes([len(name)])
            + name.encode()
            + b"\x93."
        )
    before = set(sys.modules)
    with pytest.raises(ValueError, match=f"asks to import {module}.{name}, which could run"):
        NotesUnpickler(io.BytesIO(raw), "f.pickle").load()
    assert set(sys.modules) == before  # nothing was imported


# ----------------------------------------------------------------------------- imports


@pytest.mark.integration  # a process of its own: make test, not test-fast
@pytest.mark.parametrize(
    "module, never",
    [
        ("vaelab.data", ["vaelab.systems", "vaelab.datasets"]),
        ("vaelab.kalman", ["vaelab.systems", "vaelab.datasets"]),
        ("vaelab.systems", ["vaelab.datasets"]),
    ],
)
def test_imports_flow_one_way(module, never):
    """data -> kalman -> systems -> datasets: importing a module, in a fresh process, never
    loads one above it."""
    code = (
        f"import sys; import {module}; print(','.join(m for m in {never!r} if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
        cwd=ROOT,
    )
    assert out.stdout.strip() == "", f"{module} imports {out.stdout.strip()}"


CHAIN = ["data", "kalman", "systems", "datasets"]


@pytest.mark.parametrize("module", CHAIN)
def test_each_module_imports_only_those_below_it(module):
    """The package's __init__ loads the models (and so kalman) whatever is imported, so the
    subprocess check above cannot see data -> kalman; the import statements can (of every
    file, for a package such as vaelab/data/)."""
    package = ROOT / "vaelab" / module
    files = sorted(package.glob("*.py")) if package.is_dir() else [package.with_suffix(".py")]
    nodes = [node for f in files for node in ast.walk(ast.parse(f.read_text()))]
    imported = set()
    for node in nodes:
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("vaelab"):
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            imported |= {n.split(".")[1] for n in names if n.count(".") >= 1}
        elif isinstance(node, ast.Import):
            imported |= {a.name.split(".")[1] for a in node.names if a.name.startswith("vaelab.")}
    above = set(CHAIN[CHAIN.index(module) + 1 :])
    assert not imported & above, f"vaelab.{module} imports {sorted(imported & above)}"
