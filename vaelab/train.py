"""One trainer for every model: Adam, gradient clipping, LR decay, linear KL annealing, tqdm,
validation, a metrics stream through ``callback``, atomic checkpoints and exact resume.

Like minGPT's trainer it knows only the model protocol (``elbo``), :class:`Batch` / :class:`Data`
and ``MODELS``. :func:`fit` reads as its steps: ``_start`` (seed, optimiser, schedule),
``_restore`` (a resume: what may change and what may not), then per batch :func:`train_step`,
per epoch ``_end_of_epoch`` (validation, best.pt) and ``_save`` (an atomic, checksummed
checkpoint). Every user's mistake is a ``ValueError`` naming the problem and the fix.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import hashlib
import math
import os
import pickle
import random
import re
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from vaelab import distributed
from vaelab.config import check_types
from vaelab.data import Batch, Data
from vaelab.objectives import (
    elbo_samples,
    importance_log_likelihood,
    kl_weight,
    loss,
)

CHECKPOINT_FORMAT = "vaelab-checkpoint-1"
# what fit writes into every checkpoint, and the fields it may add (older checkpoints lack them)
CHECKPOINT_FIELDS = frozenset({
    "format", "model", "config", "state_dict", "optimizer", "scheduler", "train_config", "data",
    "step", "epoch", "batch_in_epoch", "history", "rng"})
OPTIONAL_CHECKPOINT_FIELDS = frozenset({"checksum", "resumes"})
# TrainConfig fields a resume may change: from the resume on they apply (a new lr is set in the
# optimizer, a new lr_decay in the scheduler) and the checkpoint records them. Every other
# field shapes what has been trained so far (the random streams, the annealing, the
# optimiser's statistics) and must match the checkpoint's.
RESUMABLE = frozenset({
    "epochs", "max_steps", "lr", "lr_decay", "batch_size", "clip_norm", "checkpoint_every",
    "eval_every", "max_abs_loss", "progress", "device", "out_dir", "sync_every"})
Callback = Callable[[dict], "bool | None"]
_IMPORTED_AT = time.time()  # temporary files older than this are no process's of ours


class TrainingDiverged(RuntimeError):
    """A non-finite or exploding loss or gradient: training stopped before the parameters took
    it; the message says which checkpoint on disk holds the last good state."""


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C during :func:`fit`; ``checkpoint`` is the file holding the last saved state (None
    when there is none) and ``step`` its step. The message says how to resume."""

    def __init__(self, message: str, checkpoint: Path | None = None,
                 step: int | None = None) -> None:
        super().__init__(message)
        self.checkpoint, self.step = checkpoint, step

    def __str__(self) -> str:
        return str(self.args[0])


class CheckpointWriteError(OSError):
    """A checkpoint could not be written (disk full, no permission); the previous one is
    intact."""


@dataclass
class TrainConfig:
    epochs: int = 10
    batch_size: int = 128
    # sequences: length-bucket noise in length standard deviations (Data.batches); inf: shuffle
    bucket_jitter: float = 0.1
    lr: float = 1e-3
    betas: tuple[float, float] = (0.9, 0.999)
    # Adam's epsilon. It is the one setting not invariant to the loss's scale: ours is per
    # observed step, so a per-sequence loss's 1e-8 is 1e-8 / (mean steps per sequence) here
    adam_eps: float = 1e-8
    clip_norm: float = 10.0
    # clamp every gradient element of the batch's *summed* loss to +-clip_value_sum (Pyro's
    # ClippedAdam "clip_norm", despite its name); 0 switches it off
    clip_value_sum: float = 0.0
    weight_decay: float = 0.0  # L2 penalty added to the gradient (Adam's coupled weight decay)
    # the same penalty stated for the loss *summed* over a batch (Pyro's convention); fit
    # divides it by the mean observed steps per batch of the training data, see per_step_decay
    weight_decay_sum: float = 0.0
    # False: Adam adds the decay to the clipped gradient (torch's and Pyro's order); True: the
    # L2 term is part of the loss whose gradient is clipped (Krishnan et al.'s code), so a
    # tight clip_norm scales it down with the rest
    decay_before_clip: bool = False
    lr_decay: float = 1.0  # multiplies the learning rate after every step
    beta: float = 1.0  # final KL weight (beta-VAE); 1 gives the true ELBO
    anneal_epochs: float = 0.0  # linear KL warm-up length; 0 switches annealing off
    min_kl_weight: float = 0.2  # KL weight at step 0 when annealing (Krishnan et al. 2017)
    # guide samples per example in each step; the loss averages their ELBOs, so the gradient
    # is the same in expectation with less variance (for Monte Carlo KLs, e.g. IAF guides)
    train_samples: int = 1
    seed: int = 0
    device: str = "auto"  # "auto" picks CUDA when present
    out_dir: str | None = None  # where checkpoint.pt is written; None keeps nothing on disk
    checkpoint_every: int = 1  # epochs
    eval_every: int = 1  # epochs; 0 switches validation off
    max_steps: int | None = None  # stop early (small runs in notebooks and tests)
    # a step whose |loss| (nats per observed step) exceeds this is divergence, as a NaN is:
    # no model here comes near it while learning, and such a run only overflows later
    max_abs_loss: float = 1e10
    # steps whose metrics stay on the device before fit reads them, all in one transfer: on a
    # GPU a read per step makes the host wait for the device at every step. None: 1 on the
    # CPU (there is no wait), 50 on a GPU. The numbers are the same for every value, and the
    # records still one per step; but a callback's stop and Ctrl-C act at the next read, and
    # after a diverged step the updates are skipped on the device until fit reads it (fused
    # Adam's found_inf), so the parameters are still the last good ones when it raises
    sync_every: int | None = None
    progress: bool = True  # tqdm bar
    # the named settings (vaelab.presets) this configuration started from: a label, recorded
    # in checkpoints so that a run says which preset it reproduces; it changes nothing itself
    preset: str | None = None

    def __post_init__(self) -> None:
        # plain values of the declared types (a float epochs or a string lr fails here, not
        # deep inside training); ints widen to floats and lists to tuples
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        for key, value in check_types(TrainConfig, values, flag="TrainConfig:").items():
            setattr(self, key, value)
        nan = [k for k, v in values.items() if isinstance(v, float) and math.isnan(v)]
        checks = {  # field: (holds, the rule in words)
            "epochs": (self.epochs >= 1, ">= 1"),
            "batch_size": (self.batch_size >= 1, ">= 1"),
            "bucket_jitter": (self.bucket_jitter >= 0, ">= 0 (inf: plain shuffling)"),
            "lr": (0 < self.lr < math.inf, "> 0 and finite"),
            "betas": (all(0 <= b < 1 for b in self.betas), "two values in [0, 1)"),
            "adam_eps": (self.adam_eps > 0, "> 0"),
            "clip_norm": (self.clip_norm > 0, "> 0 (inf: no clipping)"),
            "clip_value_sum": (self.clip_value_sum >= 0, ">= 0 (0: off)"),
            "weight_decay": (self.weight_decay >= 0, ">= 0"),
            "weight_decay_sum": (self.weight_decay_sum >= 0, ">= 0"),
            "lr_decay": (0 < self.lr_decay <= 1, "in (0, 1]"),
            "beta": (self.beta >= 0, ">= 0"),
            "anneal_epochs": (self.anneal_epochs >= 0, ">= 0 (0: no annealing)"),
            "min_kl_weight": (0 <= self.min_kl_weight <= 1, "in [0, 1]"),
            "train_samples": (self.train_samples >= 1, ">= 1"),
            "checkpoint_every": (self.checkpoint_every >= 1, ">= 1 epochs"),
            "eval_every": (self.eval_every >= 0, ">= 0 epochs (0: no validation)"),
            "max_steps": (self.max_steps is None or self.max_steps >= 1, ">= 1 or None"),
            "max_abs_loss": (self.max_abs_loss > 0, "> 0"),
            "sync_every": (self.sync_every is None or self.sync_every >= 1,
                           ">= 1 steps or None (1 on the CPU, 50 on a GPU)"),
            "seed": (0 <= self.seed < 2**32, "in [0, 2**32) (numpy's range)"),
        }
        bad = nan + [k for k, (ok, _) in checks.items() if not ok]
        if bad:
            k = bad[0]
            rule = checks[k][1] if k in checks else "a number, not NaN"
            raise ValueError(f"TrainConfig.{k}={getattr(self, k)!r} is out of range: it must "
                             f"be {rule}")
        select_device(self.device)  # raises on an unknown or absent device


def select_device(name: str = "auto") -> torch.device:
    """``"auto"``: CUDA when present, else CPU; otherwise the named device, checked."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"unknown device {name!r}; use 'auto', 'cpu' or 'cuda'") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' asked for but no CUDA GPU is visible; use 'auto' or 'cpu'")
    return device


# ----------------------------------------------------------------------------- checkpoints


def _remove_stale_temporaries(folder: Path) -> list[Path]:
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


def _write_error(path: Path, err: OSError) -> CheckpointWriteError:
    what = ("the disk holding it is full" if err.errno == errno.ENOSPC
            else err.strerror or str(err))
    before = (f"the previous {path.name} there is intact" if path.is_file()
              else f"no {path.name} was there before")
    return CheckpointWriteError(
        err.errno, f"could not write checkpoint {path} in folder {path.parent}: {what} "
        f"({err}); {before}. Make room there (or pass another --out folder) and resume")


def _link_or_copy(src: Path, dst: Path) -> None:
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


def save_checkpoint(path: str | Path, state: dict) -> None:
    """Write ``state`` to ``path`` atomically: a temporary file in the same folder, fsync,
    then ``os.replace``, so an interrupted save leaves the previous checkpoint intact.

    Raises :class:`CheckpointWriteError` (an ``OSError``) naming the folder when the write
    fails, e.g. on a full disk; the temporary file is removed and ``path`` is unchanged.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    except OSError as err:
        raise _write_error(path, err) from err
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(err, OSError) and not isinstance(err, CheckpointWriteError):
            raise _write_error(path, err) from err
        raise


def _torch_reason(err: Exception) -> str:
    """The first sentence of torch's message, never its advice to load untrusted files."""
    text = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    text = text.split(". ")[0].rstrip(".")
    return type(err).__name__ if "weights_only" in text else text


_FIELD_TYPES = {"model": str, "config": dict, "state_dict": dict, "optimizer": dict,
                "scheduler": dict, "train_config": dict, "data": dict, "step": int, "epoch": int,
                "batch_in_epoch": int, "history": list, "rng": dict}


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict:
    """Read a checkpoint with ``torch.load(weights_only=True)`` (no code in the file can run)
    and check it: its format, its fields and their types, and its tensors' checksum.

    Raises ``FileNotFoundError`` for a missing file and ``ValueError`` saying what is wrong
    with any other (truncated, corrupt, foreign, newer format, Python objects inside).
    """
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{path} is a folder; pass the checkpoint.pt file inside it")
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} not found; pass the checkpoint.pt that "
                                f"'python -m vaelab train --out DIR' wrote into DIR")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        found = re.search(r"GLOBAL (\S+)", str(e))
        if found is None:  # not a pickle of ours at all (e.g. a text file)
            tail = str(e).partition("WeightsUnpickler error:")[2].strip()
            reason = tail.splitlines()[0] if tail else _torch_reason(e)
            raise ValueError(f"{path} is not a readable vaelab checkpoint: the file is "
                             f"truncated, damaged or of another kind ({reason})") from None
        what = f" ({found.group(1)})" if found else ""
        raise ValueError(
            f"{path} holds Python objects{what} that vaelab does not load: vaelab reads only "
            f"tensors and plain containers, so that no code in a file can run. It is not a "
            f"checkpoint written by vaelab; use one from 'python -m vaelab train'") from None
    except Exception as e:  # noqa: BLE001 - any other failure here means an unusable file
        raise ValueError(f"{path} is not a readable vaelab checkpoint: the file is truncated, "
                         f"damaged or of another kind ({_torch_reason(e)})") from None
    fmt = state.get("format") if isinstance(state, dict) else None
    if fmt != CHECKPOINT_FORMAT:
        newer = re.fullmatch(r"vaelab-checkpoint-(\d+)", fmt) if isinstance(fmt, str) else None
        if newer and int(newer.group(1)) > int(CHECKPOINT_FORMAT.rsplit("-", 1)[1]):
            raise ValueError(f"{path} was written by a newer vaelab (format {fmt!r}; this one "
                             f"reads {CHECKPOINT_FORMAT!r}): upgrade vaelab to load it")
        raise ValueError(f"{path} is not a vaelab checkpoint (format {CHECKPOINT_FORMAT!r}, "
                         f"found {fmt!r})")
    missing = sorted(CHECKPOINT_FIELDS - set(state))
    if missing:
        raise ValueError(f"{path} is an incomplete vaelab checkpoint: it lacks {missing}; it "
                         f"was edited or written by another program. Use a checkpoint.pt "
                         f"written by 'python -m vaelab train'")
    extra = sorted(set(state) - CHECKPOINT_FIELDS - OPTIONAL_CHECKPOINT_FIELDS, key=repr)
    if extra:
        raise ValueError(f"{path} has fields this vaelab does not know ({extra}): it was "
                         f"written by a newer vaelab (upgrade) or by another program")
    for key, kind in _FIELD_TYPES.items():
        value = state[key]
        if not isinstance(value, kind) or (kind is int and (isinstance(value, bool)
                                                             or value < 0)):
            raise ValueError(f"{path} is a damaged vaelab checkpoint: its {key!r} is "
                             f"{type(value).__name__} {value!r:.60}, not {kind.__name__}"
                             + (" >= 0" if kind is int else ""))
    if "checksum" in state and state["checksum"] != tensor_checksum(state):
        raise ValueError(f"checkpoint {path} is corrupt: its tensors do not match their "
                         f"checksum (a damaged disk or copy); use another checkpoint, e.g. "
                         f"best.pt, or retrain")
    return state


def build_model(name: str, config: dict) -> nn.Module:
    """A fresh model from ``MODELS[name]`` and a config dict (as stored in checkpoints)."""
    from vaelab import MODELS

    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose one of {sorted(MODELS)}")
    config_cls, model_cls = MODELS[name]
    return model_cls(config_cls(**check_types(config_cls, config, flag="checkpoint config:")))


def load_model(path: str | Path, device: str | torch.device = "cpu") -> tuple[nn.Module, dict]:
    """The model stored in a checkpoint, in eval mode, and the checkpoint dict."""
    state = load_checkpoint(path, map_location=device)
    model = build_model(state["model"], state["config"])
    try:
        model.load_state_dict(state["state_dict"])
    except RuntimeError as e:  # sizes or names that its own config does not give
        raise ValueError(f"{path}: its weights do not fit the model its config describes "
                         f"({_torch_reason(e)}); the file was edited or damaged") from None
    return model.to(device).eval(), state


# ----------------------------------------------------------------------------- training


def seed_everything(seed: int) -> None:
    """Seed torch (CPU and CUDA), Python's ``random`` and numpy with ``seed``: call it once
    before building a model, so that the same seed gives the same initial weights."""
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**32:
        raise ValueError(f"seed must be an integer in [0, 2**32), got {seed!r}")
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # seeds every CUDA device as well


def _seed_all(seed: int) -> torch.Generator:
    seed_everything(seed)
    return torch.Generator().manual_seed(seed)


@torch.no_grad()
def evaluate_elbo(model: nn.Module, data: Data, batch_size: int = 256, samples: int = 1,
                  device: torch.device | None = None) -> dict:
    """Returns ``{"nelbo", "log_likelihood", "kl"}`` per observed step (per example for static
    data), each ELBO averaged over ``samples`` draws from the guide."""
    if samples < 1:
        raise ValueError(f"samples must be >= 1 guide draws per example, got {samples}")
    device = device or next(model.parameters()).device
    was_training = model.training
    model.eval()
    total = {"elbo": 0.0, "log_likelihood": 0.0, "kl": 0.0}
    steps = 0.0
    generator = torch.Generator().manual_seed(0)  # fixed binarisation for comparable figures
    for batch in data.batches(batch_size, shuffle=False, generator=generator):
        batch = batch.to(device)
        for _ in range(samples):
            t = model.elbo(batch)
            total["elbo"] += float(t.elbo.sum()) / samples
            total["log_likelihood"] += float(t.log_likelihood.sum()) / samples
            total["kl"] += float(t.kl.sum()) / samples
        steps += float(t.steps.sum())
    model.train(was_training)
    return {"nelbo": -total["elbo"] / steps, "log_likelihood": total["log_likelihood"] / steps,
            "kl": total["kl"] / steps}


@torch.no_grad()
def evaluate_nll(model: nn.Module, data: Data, num_samples: int = 1000, batch_size: int = 16,
                 chunk_size: int | None = None, device: torch.device | None = None,
                 progress: bool = False) -> float:
    """Importance-sampled NLL per observed step (per example for static data): an estimate of
    -log p(x), not a bound. See :func:`vaelab.objectives.importance_log_likelihood`; the default
    ``chunk_size`` fits each chunk to its batch's length, so long sequences stay within memory."""
    device = device or next(model.parameters()).device
    was_training = model.training
    model.eval()
    total, steps = 0.0, 0.0
    generator = torch.Generator().manual_seed(0)
    batches = data.batches(batch_size, shuffle=False, generator=generator)
    for batch in tqdm(batches, total=data.num_batches(batch_size), disable=not progress,
                      desc="IS log p(x)"):
        batch = batch.to(device)
        total += float(importance_log_likelihood(model, batch, num_samples, chunk_size).sum())
        steps += float(batch.mask.sum()) if batch.mask is not None else len(batch)
    model.train(was_training)
    return -total / steps


@dataclass
class TrainState:
    """Counters restored on resume."""

    step: int = 0
    epoch: int = 0  # completed epochs
    batch_in_epoch: int = 0  # batches already taken from the current epoch
    history: list = field(default_factory=list)


def adam(params, config: TrainConfig, device: torch.device, weight_decay: float = 0.0
         ) -> torch.optim.Adam:
    """fit's optimiser: Adam with ``config``'s learning rate, betas and epsilon, fused (one
    kernel for every parameter: about 8x faster than the per-tensor loop on the CPU, where
    the DMM's step has some thirty small tensors) on the CPU and CUDA."""
    return torch.optim.Adam(params, lr=config.lr, betas=config.betas, eps=config.adam_eps,
                            weight_decay=weight_decay, fused=device.type in ("cpu", "cuda"))


def per_step_decay(summed: float, train: Data, batch_size: int) -> float:
    """Weight decay for our loss equal to ``summed`` on a batch's summed loss.

    ``loss`` divides by the batch's observed steps (examples for a static model), and Adam is
    invariant to a constant rescaling of the gradient, so an L2 term of ``summed`` on the sum is
    ``summed`` over the mean observed steps per batch (Pyro's DMM: 2.0 on the sum over 20
    chorales, about 1150 steps, gives 1.7e-3 here; several times less on longer pieces).
    """
    steps = float(train.lengths.sum()) if train.is_sequence else float(len(train))
    return summed / (steps / train.num_batches(batch_size))


def fit(
    model: nn.Module,
    train: Data,
    val: Data | None,
    config: TrainConfig,
    callback: Callback | None = None,
    resume: str | Path | None = None,
    data_spec: dict | None = None,
) -> list[dict]:
    """Train ``model`` on ``train`` by maximising the (annealed) ELBO; returns the history.

    Parameters
    ----------
    callback : callable, optional
        Called with every metrics record (``record["kind"]`` is ``"train"``, ``"val"`` or
        ``"end"``); returning ``False`` stops training after saving a checkpoint. A callback
        with an ``at_step`` attribute finds there the step of the model's parameters at the
        call (later than a train record's step when ``config.sync_every > 1``).
    resume : path, optional
        A checkpoint written by ``fit``: model, optimiser, schedule, counters and random states
        are restored, and training continues exactly where it stopped. ``model`` must have the
        checkpoint's config, and ``config`` may differ from the checkpoint's only in
        :data:`RESUMABLE` fields (e.g. ``lr``, ``epochs``), which then apply.
    data_spec : dict, optional
        How to reload the data (``{"name": ..., **loader kwargs}``), stored in the checkpoint
        for ``python -m vaelab evaluate``; on resume it must match the checkpoint's (None
        keeps the checkpoint's).

    Raises
    ------
    ValueError
        Bad arguments, or a resume that would change what the checkpoint trained.
    TrainingDiverged
        On a non-finite or exploding loss or gradient; the parameters are not updated with
        it, and the message says which checkpoint holds the last good state.
    TrainingInterrupted
        On Ctrl-C: fit finishes the step it is in, saves a checkpoint and says how to resume
        (a second Ctrl-C stops at once, keeping the last checkpoint saved).
    """
    _check_fit_arguments(model, train, val, config, callback, data_spec)
    run = _start(model, train, config, data_spec, callback)
    if resume is not None:
        _restore(run, resume)
    state = run.state
    bar = tqdm(total=config.max_steps or config.epochs * run.steps_per_epoch,
               initial=state.step, disable=not (config.progress and run.ctx.main),
               desc=f"train {model.name}")
    stopped = done = False
    try:
        with _deferred_interrupt() as interrupt:
            while state.epoch < config.epochs and not (stopped or done or interrupt.requested):
                pending = []  # steps whose metrics are still on the device
                for i, batch in _remaining_batches(run, train):
                    pending.append(train_step(run.net, batch, run.optimizer, run.scheduler,
                                              config, state.step, run.anneal_steps,
                                              run.weight_decay, run.ctx, sync=run.sync_every == 1))
                    state.step, state.batch_in_epoch = state.step + 1, i + 1
                    bar.update(1)
                    done = config.max_steps is not None and state.step >= config.max_steps
                    if len(pending) < run.sync_every and not done:
                        continue
                    # processes leave together: rank 0's callback or any Ctrl-C stops all
                    stopped = distributed.agree(not _emit_steps(run, pending, bar), run.ctx)
                    interrupt.requested = distributed.agree(interrupt.requested, run.ctx)
                    if stopped or done or interrupt.requested:
                        break
                else:  # the epoch ran to its end
                    stopped = distributed.agree(not _emit_steps(run, pending, bar), run.ctx)
                    if not stopped:
                        stopped = distributed.agree(_end_of_epoch(run, val), run.ctx)
            if run.saved_step != state.step:  # stopped, max_steps or Ctrl-C mid-epoch
                _save(run)
            if interrupt.requested and not (stopped or done) and state.epoch < config.epochs:
                raise KeyboardInterrupt  # reported below, with the checkpoint just saved
    except TrainingDiverged as err:
        raise TrainingDiverged(f"{err}; {_survivor(run)}. {_advice(run, diverged=True)}") \
            from err.__cause__
    except KeyboardInterrupt:
        path = _saved_path(run)
        run.emit({"kind": "end", "step": state.step, "epoch": state.epoch, "stopped": True,
                  "interrupted": True})
        raise TrainingInterrupted(f"interrupted at step {state.step}; {_survivor(run)}. "
                                  f"{_advice(run, diverged=False)}", path,
                                  _step_in(path)) from None
    finally:
        bar.close()
        distributed.leave(run.ctx)
    run.emit({"kind": "end", "step": state.step, "epoch": state.epoch, "stopped": stopped})
    return state.history


# ------------------------------------------------------------------- the steps of fit


@dataclass
class _Run:
    """What one call of :func:`fit` trains and saves."""

    model: nn.Module
    config: TrainConfig
    device: torch.device
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    generator: torch.Generator  # the data order's random stream
    epoch_rng: torch.Tensor  # its state at the start of the current epoch
    weight_decay: float  # per observed step (see per_step_decay)
    steps_per_epoch: int
    anneal_steps: int
    out: Path | None
    data_spec: dict
    callback: Callback | None
    state: TrainState = field(default_factory=TrainState)
    best: float = math.inf  # the lowest validation -ELBO so far: its weights are in best.pt
    resumes: list = field(default_factory=list)  # what each resume changed
    saved_step: int | None = None  # the step this fit call last saved
    last_time: float = field(default_factory=time.perf_counter)
    # under torchrun: this process's place, and the DistributedDataParallel wrapper training
    # calls (``model`` itself when alone); see vaelab.distributed
    ctx: distributed.Context = field(default_factory=distributed.Context)
    net: nn.Module | None = None

    @property
    def sync_every(self) -> int:
        """Steps between reads of the metrics (TrainConfig.sync_every; None: 1 on the CPU,
        50 on a GPU). Deferred reads need the fused optimiser, which skips an update on the
        device; fit's is fused on the CPU and CUDA."""
        if not self.optimizer.defaults.get("fused"):
            return 1
        return self.config.sync_every or (50 if self.device.type == "cuda" else 1)

    def emit(self, record: dict) -> bool:
        """Append ``record`` to the history and show it to the callback (rank 0's only);
        False: stop."""
        self.state.history.append(record)
        if not self.ctx.main:
            return True
        if hasattr(self.callback, "at_step"):  # the parameters' step, for snapshots: with
            self.callback.at_step = self.state.step  # sync_every > 1 it passes the record's
        return self.callback is None or self.callback(record) is not False


def _check_fit_arguments(model, train, val, config, callback, data_spec) -> None:
    if not isinstance(model, nn.Module) or not callable(getattr(model, "elbo", None)):
        raise ValueError(  # noqa: TRY004 - the house style: ValueError at every boundary
            f"model must be a vaelab model (an nn.Module with elbo(batch)), got "
                         f"{type(model).__name__}; build one with vaelab.config.make_model")
    if not dataclasses.is_dataclass(getattr(model, "config", None)):
        raise ValueError(f"{type(model).__name__} has no dataclass .config; checkpoints store "
                         f"it, so fit needs a model built from one of vaelab.MODELS' configs")
    if not isinstance(config, TrainConfig):
        raise ValueError(  # noqa: TRY004
            f"config must be a TrainConfig, got {type(config).__name__}")
    if callback is not None and not callable(callback):
        raise ValueError(f"callback must be callable or None, got {type(callback).__name__}")
    if data_spec is not None and not isinstance(data_spec, dict):
        raise ValueError(f"data_spec must be a dict such as {{'name': 'digits'}} or None, got "
                         f"{type(data_spec).__name__}")
    for name, data in (("train", train), ("val", val)):
        if not isinstance(data, Data) and not (name == "val" and data is None):
            raise ValueError(f"{name} must be a vaelab.data.Data, got {type(data).__name__}; "
                             f"load one with vaelab.datasets.load_dataset")
    if len(train) == 0:
        raise ValueError("the training data is empty")
    cfg_x = getattr(model.config, "x_dim", None)
    if cfg_x is not None and cfg_x != train.x_dim:
        raise ValueError(f"model x_dim={cfg_x} but the data has {train.x_dim} features per "
                         f"observation; build the model with x_dim={train.x_dim}")
    if val is not None:
        if len(val) == 0:
            raise ValueError("the validation data is empty; pass val=None to skip validation")
        for what in ("x_dim", "a_dim", "is_sequence"):
            if getattr(val, what) != getattr(train, what):
                raise ValueError(f"val has {what}={getattr(val, what)} but train has "
                                 f"{getattr(train, what)}: both must come from one data set")


def _prepare_out_dir(out_dir: str | None) -> Path | None:
    """The checkpoint folder, created, writable, cleared of stale temporary files."""
    if out_dir is None:
        return None
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ValueError(f"out_dir {out} is a file, not a folder; pass a folder (new or "
                         f"existing) for checkpoint.pt")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ValueError(f"cannot create the checkpoint folder {out} ({err.strerror or err}); "
                         f"pass another folder") from None
    if not os.access(out, os.W_OK | os.X_OK):
        raise ValueError(f"the checkpoint folder {out} is not writable; pass another folder")
    _remove_stale_temporaries(out)
    return out


def _start(model: nn.Module, train: Data, config: TrainConfig, data_spec: dict | None,
           callback: Callback | None) -> _Run:
    """Seed, move the model, and build the optimiser and schedule of a fresh run (under
    torchrun: join the process group; only rank 0 writes checkpoints)."""
    ctx = distributed.context(select_device(config.device))
    device = ctx.device
    out = _prepare_out_dir(config.out_dir) if ctx.main else None
    generator = _seed_all(config.seed)  # the data order: the same on every process
    if ctx.active:
        torch.manual_seed(config.seed + ctx.rank)  # each process its own guide noise
    model.to(device).train()
    batch_size = config.batch_size * ctx.world  # the global batch
    weight_decay = config.weight_decay + per_step_decay(config.weight_decay_sum, train,
                                                        batch_size)
    optimizer = adam(model.parameters(), config, device,
                     weight_decay=0.0 if config.decay_before_clip else weight_decay)
    scheduler = torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=config.lr_decay)
    steps_per_epoch = train.num_batches(batch_size)
    return _Run(model, config, device, optimizer, scheduler, generator, generator.get_state(),
                weight_decay, steps_per_epoch, round(config.anneal_epochs * steps_per_epoch),
                out, dict(data_spec or {}), callback, ctx=ctx,
                net=distributed.wrap(model, ctx))


def same_values(a, b) -> bool:
    """Config values equal, lists and tuples alike (a checkpoint may hold either)."""
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(same_values(x, y) for x, y in zip(a, b, strict=True))
    return a == b


def _restore(run: _Run, resume: str | Path) -> None:
    """Continue checkpoint ``resume``: check that ``run`` trains what it trained, load every
    state, and apply the :data:`RESUMABLE` settings that changed."""
    ckpt = load_checkpoint(resume, map_location=run.device)
    model, config = run.model, run.config
    if ckpt["model"] != model.name:
        raise ValueError(f"checkpoint {resume} holds a {ckpt['model']!r} model, not "
                         f"{model.name!r}")
    mine = asdict(model.config)
    for key, value in ckpt["config"].items():
        if key not in mine or not same_values(mine[key], value):
            raise ValueError(
                f"cannot resume {resume}: model config {key} is {value!r} in the checkpoint but "
                f"{mine.get(key)!r} here; a resumed run keeps its model (drop --set {key}, or "
                f"train a new model into another --out folder)")
    if run.data_spec and ckpt["data"] and not same_data_spec(run.data_spec, ckpt["data"]):
        key = next(k for k in sorted(set(run.data_spec) | set(ckpt["data"]))
                   if not same_data_spec({k: run.data_spec.get(k)}, {k: ckpt["data"].get(k)}))
        raise ValueError(
            f"cannot resume {resume}: its data {key} is {ckpt['data'].get(key)!r} but "
            f"{run.data_spec.get(key)!r} here; a resumed run keeps its data")
    run.data_spec = run.data_spec or dict(ckpt["data"])
    stored = ckpt["train_config"]
    mine = asdict(config)
    changed = {k: (stored[k], mine[k]) for k in stored
               if k in mine and not same_values(stored[k], mine[k])}
    refused = sorted(set(changed) - RESUMABLE)
    if refused:
        key = refused[0]
        raise ValueError(
            f"cannot resume {resume} with {key}={mine[key]!r}: the checkpoint trained with "
            f"{key}={stored[key]!r}, and a resume may change only {sorted(RESUMABLE)}; keep "
            f"{key}={stored[key]!r} (or start a new run)")
    state = TrainState(ckpt["step"], ckpt["epoch"], ckpt["batch_in_epoch"],
                       list(ckpt["history"]))
    if "batch_size" in changed and state.batch_in_epoch:
        raise ValueError(
            f"cannot resume {resume} with batch_size={config.batch_size}: it stopped inside "
            f"epoch {state.epoch + 1} (after batch {state.batch_in_epoch} of "
            f"{stored['batch_size']}); resume with batch_size={stored['batch_size']}, or from a "
            f"checkpoint written at an epoch's end")
    if state.epoch >= config.epochs:
        raise ValueError(
            f"nothing to train: {resume} has completed {state.epoch} epochs (step "
            f"{state.step}) and epochs={config.epochs}; pass epochs above {state.epoch} "
            f"(--epochs) to train on")
    if config.max_steps is not None and state.step >= config.max_steps:
        raise ValueError(
            f"nothing to train: {resume} is at step {state.step} and max_steps="
            f"{config.max_steps}; pass max_steps above {state.step} (--max-steps) to train on")
    try:
        model.load_state_dict(ckpt["state_dict"])
        run.optimizer.load_state_dict(ckpt["optimizer"])
        run.scheduler.load_state_dict(ckpt["scheduler"])
    except (RuntimeError, ValueError, KeyError) as e:
        raise ValueError(f"{resume}: its states do not fit this model and optimiser "
                         f"({_torch_reason(e)}); the file was edited or damaged") from None
    # the changes a resume may make, applied from here on
    if "lr" in changed:  # the optimiser's own lr came back with its state: replace it
        for group in run.optimizer.param_groups:
            group["lr"] = config.lr
        run.scheduler.base_lrs = [config.lr] * len(run.optimizer.param_groups)
        run.scheduler._last_lr = [config.lr] * len(run.optimizer.param_groups)
    if "lr_decay" in changed:
        run.scheduler.gamma = config.lr_decay
    if "batch_size" in changed and not config.decay_before_clip:  # per_step_decay depends on it
        for group in run.optimizer.param_groups:
            group["weight_decay"] = run.weight_decay
    run.state = state
    run.epoch_rng = ckpt["rng"]["data"]
    torch.set_rng_state(ckpt["rng"]["torch"])
    if run.device.type == "cuda" and "cuda" in ckpt["rng"]:
        torch.cuda.set_rng_state(ckpt["rng"]["cuda"], run.device)
    if run.ctx.active:  # rank 0's state was saved: the others go on from their own seeds
        torch.manual_seed(config.seed + state.step * run.ctx.world + run.ctx.rank)
    run.best = min((r["nelbo"] for r in state.history if r["kind"] == "val"), default=math.inf)
    run.resumes = list(ckpt.get("resumes", []))
    run.resumes.append({"step": state.step, "from": str(resume),
                        "changed": {k: list(v) for k, v in changed.items()
                                    if k not in ("progress", "out_dir", "device",
                                                 "sync_every")}})


def same_data_spec(a: dict, b: dict) -> bool:
    """Two data specs name the same data (paths compared resolved)."""
    norm = lambda spec: {k: (str(Path(v).resolve()) if k == "path" and v is not None else v)
                         for k, v in spec.items()}
    return same_values(norm(a), norm(b))


def _remaining_batches(run: _Run, train: Data) -> Iterator[tuple[int, Batch]]:
    """``(index, batch)`` of the current epoch, on the run's device, from where it stopped:
    the epoch's order is replayed from its random state and the batches done are skipped.
    Under torchrun every process draws the same global batches and keeps its own rows."""
    run.generator.set_state(run.epoch_rng)
    batches = train.batches(run.config.batch_size * run.ctx.world, shuffle=True,
                            generator=run.generator, jitter=run.config.bucket_jitter)
    for i, batch in enumerate(batches):
        if i >= run.state.batch_in_epoch:
            part = distributed.shard(batch, run.ctx)
            if part is not None:
                yield i, part.to(run.device)


def train_step(model: nn.Module, batch: Batch, optimizer: torch.optim.Optimizer,
               scheduler: torch.optim.lr_scheduler.LRScheduler, config: TrainConfig,
               step: int, anneal_steps: int = 0, weight_decay: float = 0.0,
               ctx: distributed.Context | None = None, sync: bool = True) -> dict:
    """One optimiser step on ``batch``, which is step ``step + 1`` of the run; returns its
    metrics record (``kind="train"``). Under torchrun (``ctx``, ``model`` wrapped in
    DistributedDataParallel) ``batch`` is this process's share of the global batch, and loss
    and metrics are the global batch's.

    The loss is the annealed ELBO per observed step (KL weight ``config.beta`` times the
    linear warm-up over ``anneal_steps``); its gradient is clipped, and with
    ``config.decay_before_clip`` the L2 term ``weight_decay`` joins it before the clip.

    Raises :class:`TrainingDiverged` on a non-finite or exploding loss, or a non-finite
    gradient, before the parameters are updated. ``sync=False`` (fit's ``sync_every``) reads
    nothing from the device: the record's metrics stay a device tensor until
    :func:`read_records`, which raises instead, and the step's divergence flag joins the fused
    optimiser's ``found_inf``, which skips this update and, the flag kept, every later one.
    """
    try:
        terms = elbo_samples(model, batch, config.train_samples)
    except ValueError as err:
        # torch.distributions' argument checks reject NaN/inf parameters (or a scale of
        # exactly 0) before the loss exists: that is divergence, not bad input
        if "satisfy the constraint" in str(err) or not _all_finite(model):
            raise TrainingDiverged(f"non-finite parameters at step {step + 1}") from err
        name = getattr(model, "name", type(model).__name__)
        # torch.distributions' support check appends the whole offending tensor: drop it
        reason = str(err).split(", but found invalid values")[0]
        raise ValueError(f"{name} cannot train on this data: {reason}") from err
    w = config.beta * kl_weight(step, anneal_steps, config.min_kl_weight)
    ctx = ctx or distributed.Context()
    if ctx.active:  # the metrics' sums over processes: [elbo, log-lik, kl, steps, loss]
        objective, sums = distributed.global_loss(terms, w, ctx)
    else:
        objective = loss(terms, w)
        sums = torch.stack([terms.elbo.sum(), terms.log_likelihood.sum(), terms.kl.sum(),
                            terms.steps.sum(), objective]).detach()
    record = {"kind": "train", "step": step + 1, "epoch": None, "kl_weight": w}
    if sync:  # a bad loss stops here, before the backward pass
        values = sums.tolist()
        _check_step(step + 1, values, config.max_abs_loss)
    optimizer.zero_grad(set_to_none=True)
    objective.backward()
    if config.decay_before_clip and weight_decay:  # d/dp of weight_decay/2 * |p|^2
        for p in model.parameters():
            if p.grad is not None:
                p.grad.add_(p.detach(), alpha=weight_decay)
    if config.clip_value_sum:  # Pyro's clamp on the summed loss, per step here
        # sums[3] counts the observed steps of every guide draw
        if sync:
            nn.utils.clip_grad_value_(model.parameters(),
                                      config.clip_value_sum * config.train_samples / values[3])
        else:  # the same bound, kept on the device
            bound = config.clip_value_sum * config.train_samples / sums[3]
            for p in model.parameters():
                if p.grad is not None:
                    p.grad.clamp_(-bound, bound)
    grad_norm = nn.utils.clip_grad_norm_(model.parameters(), config.clip_norm).detach()
    if sync:
        values.append(float(grad_norm))
        _check_step(step + 1, values, config.max_abs_loss)
    else:  # one flag from here on: the update is skipped on the device, and the later ones
        # (_check_step's rule, on the device; read_records then raises with its message)
        bad = ~(torch.isfinite(sums[4]) & (sums[4].abs() <= config.max_abs_loss)
                & torch.isfinite(grad_norm))
        found = getattr(optimizer, "found_inf", None)
        optimizer.found_inf = bad.float() if found is None else torch.maximum(found, bad)
    optimizer.step()
    scheduler.step()
    record["lr"] = scheduler.get_last_lr()[0]
    if sync:
        return _read(record, values)
    record["device"] = torch.cat([sums, grad_norm.to(sums.dtype)[None]])
    return record


def _read(record: dict, values: list[float]) -> dict:
    """A step's record from its ``[elbo, log-lik, kl, steps, loss, grad norm]`` sums."""
    elbo_sum, ll_sum, kl_sum, steps, value, grad_norm = values
    return {**{k: v for k, v in record.items() if k != "device"}, "loss": value,
            "nelbo": -elbo_sum / steps, "log_likelihood": ll_sum / steps, "kl": kl_sum / steps,
            "grad_norm": grad_norm}


def _check_step(step: int, values: list[float], max_abs: float) -> None:
    """Raise TrainingDiverged if step ``step``'s ``[elbo, log-lik, kl, steps, loss(, grad
    norm)]`` show a non-finite or exploding loss, or a non-finite gradient norm."""
    value = values[4]
    if not math.isfinite(value):
        raise TrainingDiverged(f"non-finite loss at step {step}")
    if abs(value) > max_abs:
        raise TrainingDiverged(f"exploding loss {value:.3g} at step {step} (beyond "
                               f"TrainConfig.max_abs_loss={max_abs:g})")
    if len(values) > 5 and not math.isfinite(values[5]):
        raise TrainingDiverged(f"non-finite gradient norm at step {step}")


def read_records(pending: list[dict], max_abs_loss: float = math.inf) -> list[dict]:
    """The records of steps that :func:`train_step` left on the device, read in one transfer
    (one host-device synchronisation); raises :class:`TrainingDiverged` at the first bad step,
    with the records before it returned on the exception's ``records``."""
    if not any("device" in r for r in pending):  # read already (train_step's sync=True)
        return list(pending)
    rows = torch.stack([r["device"] for r in pending]).tolist()
    done = []
    for record, values in zip(pending, rows, strict=True):
        try:
            _check_step(record["step"], values, max_abs_loss)
        except TrainingDiverged as err:
            err.records = done
            raise
        done.append(_read(record, values))
    return done


def _emit_steps(run: _Run, pending: list[dict], bar: tqdm) -> bool:
    """Read the records of the steps in ``pending`` (one transfer from the device), emit them
    in order with their share of the time since the last read, and empty ``pending``; False
    when the callback asked to stop. Raises TrainingDiverged at the first bad step, after
    emitting the records before it."""
    try:
        records = read_records(pending, run.config.max_abs_loss)
    except TrainingDiverged as err:
        for record in err.records:
            run.emit({**record, "epoch": run.state.epoch, "seconds": 0.0})
        raise
    pending.clear()
    now = time.perf_counter()
    seconds, run.last_time = (now - run.last_time) / max(len(records), 1), now
    go_on = True
    for record in records:
        go_on = run.emit({**record, "epoch": run.state.epoch, "seconds": seconds}) and go_on
    if records:
        bar.set_postfix(nelbo=f"{records[-1]['nelbo']:.3f}",
                        kl_w=f"{records[-1]['kl_weight']:.2f}")
    return go_on


def _end_of_epoch(run: _Run, val: Data | None) -> bool:
    """Count the epoch, validate and checkpoint when due (the best validation -ELBO's weights
    also to best.pt); returns True when the callback asked to stop."""
    state, config = run.state, run.config
    state.epoch += 1
    state.batch_in_epoch = 0
    run.epoch_rng = run.generator.get_state()
    stopped = improved = False
    if val is not None and config.eval_every and state.epoch % config.eval_every == 0:
        metrics = evaluate_elbo(run.model, val, config.batch_size, device=run.device)
        stopped = not run.emit({"kind": "val", "step": state.step, "epoch": state.epoch,
                                **metrics})
        run.model.train()
        improved = metrics["nelbo"] < run.best  # early stopping by selection: keep the best
        run.best = min(run.best, metrics["nelbo"])
    due = stopped or state.epoch % config.checkpoint_every == 0 or state.epoch == config.epochs
    if due:
        _save(run)
    if improved and due and run.out is not None:  # the state just saved: no second write
        _link_or_copy(run.out / "checkpoint.pt", run.out / "best.pt")
    elif improved:
        _save(run, "best.pt")
    return stopped


def _save(run: _Run, name: str = "checkpoint.pt") -> None:
    """Write the run's whole state to ``out_dir/name`` (nothing without an out_dir)."""
    if run.out is None:
        return
    rng = {"data": run.epoch_rng, "torch": torch.get_rng_state()}
    if run.device.type == "cuda":
        rng["cuda"] = torch.cuda.get_rng_state(run.device)
    state = {
        "format": CHECKPOINT_FORMAT,
        "model": run.model.name,
        "config": asdict(run.model.config),
        "state_dict": run.model.state_dict(),
        "optimizer": run.optimizer.state_dict(),
        "scheduler": run.scheduler.state_dict(),
        "train_config": asdict(run.config),
        "data": run.data_spec,
        "step": run.state.step,
        "epoch": run.state.epoch,
        "batch_in_epoch": run.state.batch_in_epoch,
        "history": run.state.history,
        "rng": rng,
    }
    if run.resumes:
        state["resumes"] = run.resumes
    state["checksum"] = tensor_checksum(state)
    _remove_stale_temporaries(run.out)
    save_checkpoint(run.out / name, state)
    if name == "checkpoint.pt":
        run.saved_step = run.state.step


@contextlib.contextmanager
def _deferred_interrupt() -> Iterator:
    """While training, the first Ctrl-C asks fit to stop after the current step (so the
    checkpoint it saves is a clean one); a second one interrupts at once. Only in the main
    thread, and only where Ctrl-C raises KeyboardInterrupt (not where it is ignored)."""

    class Interrupt:
        requested = False

    interrupt = Interrupt()
    if (threading.current_thread() is not threading.main_thread()
            or signal.getsignal(signal.SIGINT) is not signal.default_int_handler):
        yield interrupt
        return

    def handler(signum, frame):
        if interrupt.requested:
            raise KeyboardInterrupt
        interrupt.requested = True
        print("\nCtrl-C: stopping after this step and saving a checkpoint (Ctrl-C again to "
              "stop at once)", file=sys.stderr, flush=True)

    signal.signal(signal.SIGINT, handler)
    try:
        yield interrupt
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)


def _all_finite(model: nn.Module) -> bool:
    return all(bool(torch.isfinite(p).all()) for p in model.parameters())


def _saved_path(run: _Run) -> Path | None:
    """out_dir/checkpoint.pt where it exists."""
    if run.out is None or not (run.out / "checkpoint.pt").is_file():
        return None
    return run.out / "checkpoint.pt"


def _step_in(path: Path | None) -> int | None:
    try:
        return None if path is None else load_checkpoint(path)["step"]
    except (ValueError, FileNotFoundError):
        return None


def _survivor(run: _Run) -> str:
    """What is true about the checkpoint on disk, for a message after training stopped."""
    if run.out is None:
        return "no checkpoint was being written (out_dir is None)"
    path = _saved_path(run)
    if path is None:
        return f"no checkpoint had been written to {run.out} yet"
    step = _step_in(path)
    if step is None:
        return f"{path} exists but cannot be read"
    return f"the last checkpoint, {path}, holds step {step}"


def _advice(run: _Run, diverged: bool) -> str:
    # the lr of the last good step (with sync_every > 1 the schedule has run on to the read)
    lr = next((r["lr"] for r in reversed(run.state.history) if r["kind"] == "train"),
              run.optimizer.param_groups[0]["lr"])
    path = _saved_path(run)
    if diverged:
        fixes = (f"lower the learning rate (e.g. to {lr / 10:.3g}), raise min_scale, or check "
                 f"the data for extreme values")
        if path is None:
            return f"Start again and {fixes}"
        return (f"To go on from there, {fixes}: python -m vaelab train ... --resume {path} "
                f"--lr {lr / 10:.3g} (in Python: fit(..., resume=path) with a smaller "
                f"TrainConfig.lr)")
    if path is None:
        return "There is nothing to resume from"
    return (f"Resume with the same command and --resume {path} (in Python: fit(..., "
            f"resume=path))")
