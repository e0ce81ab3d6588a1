"""Checkpoints: one ``torch.save`` of plain values and tensors, written atomically (temporary
file, fsync, ``os.replace``), read with ``weights_only=True`` (no code in a file runs) and
checked field by field and against a sha256 of its tensors.

A checkpoint holds ``format``, ``model`` (the registry name), ``config`` (``asdict`` of the
model's config), the model, optimiser and schedule state dicts, ``train_config``, ``data`` (how
to reload the data), the counters ``step``, ``epoch``, ``batch_in_epoch``, the ``history`` of
metric records, the random states ``rng`` and ``checksum`` (sha256 of everything else);
optionally ``resumes`` (what each resume changed), ``world`` (the processes that trained it,
under torchrun; absent: 1) and ``recipe`` (fit's optimiser recipe, :mod:`vaelab.train.optim`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import os
import pickle
import pickletools
import re
import shutil
import tempfile
import time
import warnings
import zipfile
from collections.abc import Iterator
from pathlib import Path

import torch

from vaelab.config import build_config
from vaelab.dmm_variants import Compat
from vaelab.protocol import Model
from vaelab.train import optim
from vaelab.writes import WriteError, not_a_file, write_error

# format 2: the checksum is required and covers every value (format 1, written before
# vaelab 0.2: tensors only, optional; still read, with the comparison fields upgraded)
CHECKPOINT_FORMAT = "vaelab-checkpoint-2"
FORMATS = ("vaelab-checkpoint-1", CHECKPOINT_FORMAT)
# what fit writes into every checkpoint, and the fields it may add (older checkpoints lack them)
CHECKPOINT_FIELDS = frozenset(
    {
        "format",
        "model",
        "config",
        "state_dict",
        "optimizer",
        "scheduler",
        "train_config",
        "data",
        "step",
        "epoch",
        "batch_in_epoch",
        "history",
        "rng",
    }
)
OPTIONAL_CHECKPOINT_FIELDS = frozenset({"checksum", "resumes", "recipe", "world"})
_IMPORTED_AT = time.time()  # temporary files older than this are no process's of ours


class CheckpointWriteError(WriteError):
    """A checkpoint could not be written (disk full, a file-size limit, no permission); the
    previous one is intact and no temporary file is left."""


def remove_stale_temporaries(folder: Path) -> list[Path]:
    """Delete the temporary files an interrupted save left in ``folder`` (ours only:
    ``checkpoint.pt.*.tmp``, ``best.pt.*.tmp``, written before this process imported vaelab);
    returns what was removed."""
    removed = []
    for pattern in ("checkpoint.pt.*.tmp", "best.pt.*.tmp"):
        for path in folder.glob(pattern):
            try:
                if path.is_file() and path.stat().st_mtime < _IMPORTED_AT:
                    path.unlink()
                    removed.append(path)
            except OSError:  # gone meanwhile, or not ours to delete: leave it
                pass
    return removed


def link_or_copy(src: Path, dst: Path) -> None:
    """Make ``dst`` hold ``src``'s bytes, atomically: a hard link where the file system has
    them (no second write; ``save_checkpoint`` replaces ``src`` later rather than rewriting
    it, so ``dst`` keeps these bytes), else a copy."""
    tmp = dst.with_name(dst.name + ".link.tmp")
    tmp.unlink(missing_ok=True)
    try:
        try:
            os.link(src, tmp)
        except OSError:
            with open(src, "rb") as f_in, open(tmp, "wb") as f_out:
                shutil.copyfileobj(f_in, f_out)
                f_out.flush()
                os.fsync(f_out.fileno())  # as durable as save_checkpoint's own file
        os.replace(tmp, dst)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        raise _write_error(dst, err) from err


def _other_checkpoint(path: str | Path) -> str:
    """The advice after a damaged checkpoint: the run's other checkpoint if it has one."""
    path = Path(path)
    others = [p for p in (path.with_name("best.pt"), path.with_name("checkpoint.pt")) if p != path]
    found = next((p for p in others if p.is_file()), None)
    return f"use {found}, the run's other checkpoint, or retrain" if found else "retrain"


def _write_error(path: Path, err: OSError, size: int | None = None) -> WriteError:
    """:func:`vaelab.writes.write_error` for a checkpoint: what survives, and how to go on
    (resume from the run's checkpoint.pt, or start again when there is none)."""
    before = (
        f"the previous {path.name} there is intact"
        if path.is_file()
        else f"no {path.name} was there before"
    )
    latest = path.parent / "checkpoint.pt"
    then = (
        f"and resume with --resume {latest}"
        if latest.is_file()
        else f"and run the same command again after removing {path.parent} (nothing was saved "
        f"there to resume from), or pass another --out folder"
    )
    return write_error("checkpoint", path, err, before, size, then, CheckpointWriteError)


def _tensors(obj, where: str = "") -> Iterator[tuple[str, torch.Tensor]]:
    """Every tensor in nested dicts / lists / tuples with its path, in a stable order."""
    if isinstance(obj, torch.Tensor):
        yield where, obj
    elif isinstance(obj, dict):
        for key in sorted(obj, key=repr):
            yield from _tensors(obj[key], f"{where}/{key!r}")
    elif isinstance(obj, (list, tuple)):
        for i, value in enumerate(obj):
            yield from _tensors(value, f"{where}/{i}")


def tensor_checksum(state: dict) -> str:
    """sha256 over every tensor of a checkpoint dict (its path, dtype, shape and bytes), in a
    stable order; the ``checksum`` field itself is left out."""
    digest = hashlib.sha256()
    body = {k: v for k, v in state.items() if k != "checksum"}
    for where, tensor in _tensors(body):
        t = tensor.detach().to("cpu").contiguous().reshape(-1)
        digest.update(f"{where}|{t.dtype}|{list(tensor.shape)}|".encode())
        digest.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()


def _plain(obj) -> str:
    """A canonical text of the non-tensor values (tensors as a placeholder; dicts in key
    order), for :func:`checksum`."""
    if isinstance(obj, torch.Tensor):
        return "T"
    if isinstance(obj, dict):
        items = sorted(((repr(k), _plain(v)) for k, v in obj.items()))
        return "{" + ",".join(f"{k}:{v}" for k, v in items) + "}"
    if isinstance(obj, (list, tuple)):
        brackets = "[]" if isinstance(obj, list) else "()"
        return brackets[0] + ",".join(_plain(v) for v in obj) + brackets[1]
    return f"{type(obj).__name__}:{obj!r}"


def checksum(state: dict) -> str:
    """sha256 over everything a checkpoint holds but the ``checksum`` field: its tensors
    (:func:`tensor_checksum`) and every other value (settings, counters, history, data)."""
    body = {k: v for k, v in state.items() if k != "checksum"}
    return hashlib.sha256(f"{tensor_checksum(body)}|{_plain(body)}".encode()).hexdigest()


def save_checkpoint(path: str | Path, state: dict) -> None:
    """Write ``state`` to ``path`` atomically: a temporary file in the same folder, fsync,
    then ``os.replace``, so an interrupted save leaves the previous checkpoint intact.

    The state is serialised in memory first, so that a full disk or a file-size limit is an
    ``OSError`` of Python's own write (torch's writer reports it as an opaque RuntimeError).

    Raises :class:`CheckpointWriteError` (an ``OSError``) naming the folder and the space
    needed when the write fails; the temporary file is removed and ``path`` is unchanged.
    """
    path = Path(path)
    buffer = io.BytesIO()
    try:
        torch.save(state, buffer)
    except OSError as err:
        raise _write_error(path, err) from err
    data = buffer.getbuffer()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    except OSError as err:
        raise _write_error(path, err, len(data)) from err
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(err, OSError) and not isinstance(err, CheckpointWriteError):
            raise _write_error(path, err, len(data)) from err
        raise


def torch_reason(err: Exception) -> str:
    """The first sentence of torch's message, never its advice to load untrusted files."""
    text = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    text = text.split(". ")[0].rstrip(".")
    return type(err).__name__ if "weights_only" in text else text


_FIELD_TYPES = {
    "model": str,
    "config": dict,
    "state_dict": dict,
    "optimizer": dict,
    "scheduler": dict,
    "train_config": dict,
    "data": dict,
    "step": int,
    "epoch": int,
    "batch_in_epoch": int,
    "history": list,
    "rng": dict,
}


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict:
    """Read a checkpoint with ``torch.load(weights_only=True)`` (no code in the file can run)
    and check it: its format, its fields and their types, its checksum, and the values a
    resume reads. A checkpoint of format 1 (before vaelab 0.2) is read and upgraded.

    Raises ``FileNotFoundError`` for a missing file and ``ValueError`` saying what is wrong
    with any other (truncated, corrupt, foreign, newer format, Python objects inside).
    """
    path = Path(path)
    state = _read(path, map_location)
    _check_format(path, state)
    _check_checksum(path, state)
    _check_contents(path, state)
    return upgrade(state)


def _read(path: Path, map_location: str | torch.device) -> dict:
    """``torch.load(weights_only=True)`` of ``path``, its failures as ValueErrors."""
    problem = not_a_file(path)  # the same checks as a data file's (vaelab.datasets)
    if problem is not None:
        error, what = problem
        if what == "does not exist":
            raise FileNotFoundError(
                f"checkpoint {path} not found; pass the checkpoint.pt that "
                f"'python -m vaelab train --out DIR' wrote into DIR"
            )
        if what == "is a folder":
            raise ValueError(f"{path} is a folder; pass the checkpoint.pt file inside it")
        if error is FileNotFoundError:  # a link that leads nowhere
            raise FileNotFoundError(f"checkpoint {path} {what}; pass the checkpoint.pt itself")
        raise ValueError(
            f"{path} {what}; pass a checkpoint.pt written by 'python -m vaelab train'"
        )
    try:
        with warnings.catch_warnings():  # torch warns of a plain pickle's protocol, then fails
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        named = re.search(r"GLOBAL (\S+)", str(e))
        found = named.group(1) if named else _plain_pickle_global(path)
        if found is None:  # not a pickle of ours at all (e.g. a text file)
            tail = str(e).partition("WeightsUnpickler error:")[2].strip()
            reason = tail.splitlines()[0] if tail else torch_reason(e)
            raise ValueError(_unreadable(path, reason)) from None
        raise ValueError(
            f"{path} holds Python objects ({found}) that vaelab does not load: vaelab reads only "
            f"tensors and plain containers, so that no code in a file can run. It is not a "
            f"checkpoint written by vaelab; use one from 'python -m vaelab train'"
        ) from None
    except Exception as e:  # noqa: BLE001 - any other failure here means an unusable file
        raise ValueError(_unreadable(path, torch_reason(e))) from None


def _plain_pickle_global(path: Path) -> str | None:
    """The first Python object (``module.name``) that a plain pickle (not torch's zip
    format) names, found by listing its opcodes with :mod:`pickletools`, which runs none;
    None for a file that is not such a pickle."""
    if zipfile.is_zipfile(path):
        return None
    strings: list[str] = []
    try:
        with open(path, "rb") as f:
            for op, arg, _ in pickletools.genops(f):
                if isinstance(arg, str):
                    strings.append(arg)
                if op.name == "GLOBAL":
                    return str(arg).replace(" ", ".")
                if op.name == "STACK_GLOBAL" and len(strings) >= 2:
                    return ".".join(strings[-2:])
    except Exception:  # noqa: BLE001 - not a pickle (or a damaged one): no object named
        return None
    return None


def _unreadable(path: Path, reason: str) -> str:
    """Why ``path`` could not be read, in words: a text file is named as one (its first
    line shown), and a reason that is only the unpickler's byte code (``105``, ``Unsupported
    operand 105``) is left out."""
    try:
        with open(path, "rb") as f:
            head = f.read(200)
    except OSError as err:  # e.g. /proc/self/mem, which exists but reads as an I/O error
        return (
            f"{path} is not a readable vaelab checkpoint: it cannot be read as a file "
            f"({err.strerror or err}); pass a checkpoint.pt written by 'python -m vaelab train'"
        )
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError as err:  # binary, or a character cut at the 200th byte
        text = head[: err.start].decode("utf-8") if err.start >= len(head) - 3 else ""
    first = text.strip().splitlines()[0][:60] if text.strip() else ""
    if not head:
        what = "the file is empty (a save that never happened, or a copy cut short)"
    elif first and all(c.isprintable() or c in "\t\r\n" for c in text):
        what = f"it is a text file (it begins {first!r})"
    elif re.fullmatch(r"(Unsupported operand )?\d+", reason) or not reason:
        what = "the file is truncated, damaged or of another kind"
    else:
        what = f"the file is truncated, damaged or of another kind ({reason})"
    return (
        f"{path} is not a readable vaelab checkpoint: {what}; pass a checkpoint.pt written "
        f"by 'python -m vaelab train'"
    )


def _check_format(path: Path, state) -> None:
    """A dict of our format with exactly our fields, of our types."""
    fmt = state.get("format") if isinstance(state, dict) else None
    if fmt not in FORMATS:
        newer = re.fullmatch(r"vaelab-checkpoint-(\d+)", fmt) if isinstance(fmt, str) else None
        if newer and int(newer.group(1)) > int(CHECKPOINT_FORMAT.rsplit("-", 1)[1]):
            raise ValueError(
                f"{path} was written by a newer vaelab (format {fmt!r}; this one "
                f"reads {CHECKPOINT_FORMAT!r}): upgrade vaelab to load it"
            )
        found = (
            f"its format is {fmt!r}, not {CHECKPOINT_FORMAT!r}"
            if isinstance(state, dict)
            else f"it holds a {type(state).__name__}, not a checkpoint's dict"
        )
        raise ValueError(
            f"{path} is not a vaelab checkpoint ({found}); pass a checkpoint.pt written by "
            f"'python -m vaelab train'"
        )
    missing = sorted(CHECKPOINT_FIELDS - set(state))
    if missing:
        raise ValueError(
            f"{path} is an incomplete vaelab checkpoint: it lacks {missing}; it "
            f"was edited or written by another program. Use a checkpoint.pt "
            f"written by 'python -m vaelab train'"
        )
    extra = sorted(set(state) - CHECKPOINT_FIELDS - OPTIONAL_CHECKPOINT_FIELDS, key=repr)
    if extra:
        raise ValueError(
            f"{path} has fields this vaelab does not know ({extra}): it was "
            f"written by a newer vaelab (upgrade) or by another program"
        )
    for key, kind in _FIELD_TYPES.items():
        value = state[key]
        negative = isinstance(value, int) and (isinstance(value, bool) or value < 0)
        if not isinstance(value, kind) or (kind is int and negative):
            raise ValueError(
                f"{path} is a damaged vaelab checkpoint: its {key!r} is "
                f"{type(value).__name__} {value!r:.60}, not {kind.__name__}"
                + (" >= 0" if kind is int else "")
            )


def _check_checksum(path: Path, state: dict) -> None:
    """Format 2: the checksum is there and matches every value; format 1: the tensors'."""
    old = state["format"] == FORMATS[0]
    if "checksum" not in state:
        if old:
            return  # written before checksums
        raise ValueError(
            f"{path} lacks its checksum: it was edited or written by another "
            f"program; use a checkpoint.pt written by 'python -m vaelab train'"
        )
    try:
        expected = tensor_checksum(state) if old else checksum(state)
    except RecursionError:
        raise ValueError(
            f"{path} is a damaged vaelab checkpoint: its values are nested too "
            f"deeply to be a checkpoint vaelab wrote"
        ) from None
    if state["checksum"] != expected:
        what = "tensors" if old else "contents"
        raise ValueError(
            f"checkpoint {path} is corrupt: its {what} do not match their "
            f"checksum (a damaged disk or copy, or an edit); {_other_checkpoint(path)}"
        )


def _check_contents(path: Path, state: dict) -> None:
    """The values a resume reads: history records, random states, the optimiser recipe."""
    bad = next(
        (
            r
            for r in state["history"]
            if not isinstance(r, dict) or r.get("kind") not in ("train", "val", "end")
        ),
        None,
    )
    if bad is not None:
        raise ValueError(
            f"{path} is a damaged vaelab checkpoint: a history record is "
            f"{bad!r:.60}, not a dict with kind 'train', 'val' or 'end'"
        )
    rng = state["rng"]
    if not all(
        isinstance(rng.get(k), torch.Tensor) and rng[k].dtype == torch.uint8
        for k in ("data", "torch")
    ):
        raise ValueError(
            f"{path} is a damaged vaelab checkpoint: its 'rng' lacks the random "
            f"states 'data' and 'torch' (uint8 tensors) that a resume restores"
        )
    world = state.get("world", 1)
    if isinstance(world, bool) or not isinstance(world, int) or world < 1:
        raise ValueError(
            f"{path} is a damaged vaelab checkpoint: its 'world' is {world!r}, "
            f"not a number of processes >= 1"
        )
    if "recipe" in state:
        if not isinstance(state["recipe"], dict):
            raise ValueError(
                f"{path} is a damaged vaelab checkpoint: its 'recipe' is "
                f"{type(state['recipe']).__name__}, not dict"
            )
        optim.from_dict(state["recipe"])  # a known recipe, or a ValueError naming it


def check_finite(path: str | Path, state_dict: dict) -> None:
    """ValueError when a checkpoint's weights hold NaN or inf (a run that diverged before
    vaelab refused such steps, or an edited file): nothing can be computed from them."""
    bad = next(
        (
            k
            for k, v in state_dict.items()
            if v.is_floating_point() and not bool(torch.isfinite(v).all())
        ),
        None,
    )
    if bad is not None:
        raise ValueError(
            f"{path} holds non-finite weights ({bad} has NaN or inf values): "
            f"nothing can be evaluated or trained from them; use another "
            f"checkpoint (best.pt, or an earlier one) or retrain"
        )


def upgrade(state: dict) -> dict:
    """An older checkpoint in today's form (after its checksum was checked, over the state as
    written):

    - written before the optimiser recipes (its train_config has ``clip_value_sum``,
      ``decay_before_clip`` and ``adam_eps``): those fields become the ``recipe`` that trains
      as they did (:func:`vaelab.train.optim.from_old_train_config`);
    - a DMM's config from before ``compat`` (:mod:`vaelab.dmm_variants`): its flat
      ``rnn_type``, ``softplus_variance``, ... move into ``config["compat"]``.
    """
    fields = {"clip_value_sum", "decay_before_clip", "adam_eps"}
    if fields & set(state["train_config"]):
        train_config, recipe = optim.from_old_train_config(state["train_config"])
        state = {**state, "train_config": train_config, "recipe": optim.to_dict(recipe)}
    moved = _COMPAT_FIELDS & set(state["config"]) if _has_compat(state["model"]) else set()
    if moved:
        config = {k: v for k, v in state["config"].items() if k not in moved}
        compat = {k: v for k, v in state["config"].items() if k in moved}
        compat = {**config.get("compat", {}), **compat}
        state = {**state, "config": {**config, "compat": compat}}
    return state


_COMPAT_FIELDS = frozenset(f.name for f in dataclasses.fields(Compat))


def _has_compat(name: object) -> bool:
    """Whether registered model ``name``'s config has a ``compat`` (the DMM family's)."""
    from vaelab import MODELS

    entry = MODELS.get(name) if isinstance(name, str) else None
    return entry is not None and "compat" in {f.name for f in dataclasses.fields(entry[0])}


def build_model(name: str, config: dict) -> Model:
    """A fresh model from ``MODELS[name]`` and a config dict (as stored in checkpoints)."""
    from vaelab import MODELS

    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose one of {sorted(MODELS)}")
    config_cls, model_cls = MODELS[name]
    return model_cls(build_config(config_cls, config, flag="checkpoint config:"))


def load_model(path: str | Path, device: str | torch.device = "cpu") -> tuple[Model, dict]:
    """The model stored in a checkpoint, in eval mode, and the checkpoint dict."""
    state = load_checkpoint(path, map_location=device)
    model = build_model(state["model"], state["config"])
    check_finite(path, state["state_dict"])
    try:
        model.load_state_dict(state["state_dict"])
    except RuntimeError as e:  # sizes or names that its own config does not give
        raise ValueError(
            f"{path}: its weights do not fit the model its config describes "
            f"({torch_reason(e)}); the file was edited or damaged"
        ) from None
    return model.to(device).eval(), state
