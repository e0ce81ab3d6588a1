"""What one call of :func:`vaelab.train.fit` holds and does around its loop: the run's state
(:class:`Run`), its start (seed, optimiser, schedule, output folder and its lock), a resume's
restore, the epoch's remaining batches, reading and emitting records, the end of an epoch
(validation, best.pt) and the checkpoint it writes."""

from __future__ import annotations

import dataclasses
import math
import os
import random
import socket
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from vaelab import distributed
from vaelab.data import Batch, Data
from vaelab.protocol import Model
from vaelab.train import checkpoint, deferred, guard, optim, resume
from vaelab.train.config import TrainConfig, select_device
from vaelab.train.evaluate import evaluate_elbo

Callback = Callable[[dict], "bool | None"]

if sys.platform != "win32":  # a lock per output folder, which the OS drops when the process
    import fcntl  # ends, however it ends; Windows has no fcntl: no lock there


def seed_everything(seed: int) -> None:
    """Seed torch (CPU and CUDA), Python's ``random`` and numpy with ``seed``: call it once
    before building a model, so that the same seed gives the same initial weights."""
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**32:
        raise ValueError(f"seed must be an integer in [0, 2**32), got {seed!r}")
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # seeds every CUDA device as well


@dataclass
class TrainState:
    """Counters restored on resume."""

    step: int = 0
    epoch: int = 0  # completed epochs
    batch_in_epoch: int = 0  # batches already taken from the current epoch
    history: list = field(default_factory=list)


@dataclass
class Run:
    """What one call of :func:`fit` trains and saves."""

    model: Model
    config: TrainConfig
    recipe: optim.Adam
    device: torch.device
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.ExponentialLR
    generator: torch.Generator  # the data order's random stream
    epoch_rng: torch.Tensor  # its state at the start of the current epoch
    weight_decay: float  # per observed step (see optim.per_step_decay)
    steps_per_epoch: int
    anneal_steps: int
    out: Path | None
    data_spec: dict
    callbacks: list[Callback]
    state: TrainState = field(default_factory=TrainState)
    best: float = math.inf  # the lowest validation -ELBO so far: its weights are in best.pt
    resumes: list = field(default_factory=list)  # what each resume changed
    saved_step: int | None = None  # the step this fit call last saved
    last_time: float = field(default_factory=time.perf_counter)
    level: guard.Level = field(default_factory=guard.Level)  # the recent loss level
    lock: int | None = None  # the output folder's lock file, held while training
    # under torchrun: this process's place, and the DistributedDataParallel wrapper training
    # calls (``model`` itself when alone); see vaelab.distributed
    ctx: distributed.Context = field(default_factory=distributed.Context)
    net: nn.Module = field(kw_only=True)

    @property
    def sync_every(self) -> int:
        """Steps between reads of the metrics (TrainConfig.sync_every; None: 1 on the CPU,
        50 on a GPU). Deferred reads need the fused optimiser, which skips an update on the
        device; fit's is fused on the CPU and CUDA."""
        if not self.optimizer.defaults.get("fused"):
            return 1
        return self.config.sync_every or (50 if self.device.type == "cuda" else 1)

    def emit(self, record: dict) -> bool:
        """Append ``record`` to the history and show it to the callbacks (rank 0's only);
        False: one of them asked to stop."""
        self.state.history.append(record)
        if not self.ctx.main:
            return True
        go_on = True
        for callback in self.callbacks:
            if hasattr(callback, "at_step"):  # the parameters' step, for snapshots: with
                callback.at_step = self.state.step  # sync_every > 1 it passes the record's
            go_on = callback(record) is not False and go_on
        return go_on

    def limit(self) -> float:
        """The highest loss the next steps may have: the run's recent level."""
        return self.level.limit(self.config.max_abs_loss)

    def saved_path(self) -> Path | None:
        """out_dir/checkpoint.pt where it exists."""
        if self.out is None or not (self.out / "checkpoint.pt").is_file():
            return None
        return self.out / "checkpoint.pt"

    def survivor(self) -> str:
        if not self.ctx.main:  # under torchrun only rank 0 writes, and says what it wrote
            return (
                f"rank {self.ctx.rank} of {self.ctx.world} stopped with the others; rank 0 "
                f"writes the checkpoint and says how to resume"
            )
        saved = self.saved_path()
        return guard.survivor(self.out, saved, _step_in(saved))


def _step_in(path: Path | None) -> int | None:
    try:
        return None if path is None else checkpoint.load_checkpoint(path)["step"]
    except (ValueError, FileNotFoundError):
        return None


def check_arguments(model, train, val, config, callbacks, data_spec) -> list[Callback]:
    """fit's arguments checked; returns the callbacks as a list."""
    if not isinstance(model, nn.Module) or not callable(getattr(model, "elbo", None)):
        raise ValueError(
            f"model must be a vaelab model (an nn.Module with elbo(batch)), got "
            f"{type(model).__name__}; build one with vaelab.config.make_model"
        )
    if not dataclasses.is_dataclass(getattr(model, "config", None)):
        raise ValueError(
            f"{type(model).__name__} has no dataclass .config; checkpoints store "
            f"it, so fit needs a model built from one of vaelab.MODELS' configs"
        )
    if not isinstance(config, TrainConfig):
        raise ValueError(f"config must be a TrainConfig, got {type(config).__name__}")
    callbacks = (
        []
        if callbacks is None
        else (
            [callbacks]
            if callable(callbacks)
            else list(callbacks)
            if isinstance(callbacks, (list, tuple))
            else [callbacks]
        )
    )
    for c in callbacks:
        if not callable(c):
            raise ValueError(
                f"callback must be callable, a list of callables or None, got {type(c).__name__}"
            )
    if data_spec is not None and not isinstance(data_spec, dict):
        raise ValueError(
            f"data_spec must be a dict such as {{'name': 'digits'}} or None, got "
            f"{type(data_spec).__name__}"
        )
    _check_data(model, train, val)
    return callbacks


def _check_data(model, train, val) -> None:
    for name, data in (("train", train), ("val", val)):
        if not isinstance(data, Data) and not (name == "val" and data is None):
            raise ValueError(
                f"{name} must be a vaelab.data.Data, got {type(data).__name__}; "
                f"load one with vaelab.datasets.load_dataset"
            )
    if len(train) == 0:
        raise ValueError("the training data is empty")
    cfg_x = getattr(model.config, "x_dim", None)
    if cfg_x is not None and cfg_x != train.x_dim:
        raise ValueError(
            f"model x_dim={cfg_x} but the data has {train.x_dim} features per "
            f"observation; build the model with x_dim={train.x_dim}"
        )
    if val is not None:
        if len(val) == 0:
            raise ValueError("the validation data is empty; pass val=None to skip validation")
        for what in ("x_dim", "a_dim", "is_sequence"):
            if getattr(val, what) != getattr(train, what):
                raise ValueError(
                    f"val has {what}={getattr(val, what)} but train has "
                    f"{getattr(train, what)}: both must come from one data set"
                )


def _prepare_out_dir(out_dir: str | None) -> tuple[Path | None, int | None]:
    """The checkpoint folder, created, writable, locked for this run (a second run into it is
    refused while this one trains), cleared of stale temporary files."""
    if out_dir is None:
        return None, None
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ValueError(
            f"out_dir {out} is a file, not a folder; pass a folder (new or "
            f"existing) for checkpoint.pt"
        )
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ValueError(
            f"cannot create the checkpoint folder {out} ({err.strerror or err}); "
            f"pass another folder"
        ) from None
    if not os.access(out, os.W_OK | os.X_OK):
        raise ValueError(f"the checkpoint folder {out} is not writable; pass another folder")
    lock = _lock(out)
    checkpoint.remove_stale_temporaries(out)
    return out, lock


def _lock(out: Path) -> int | None:
    """Hold ``out/.lock`` (an advisory lock the OS drops when the process ends, however it
    ends), naming the holder in it; ValueError when another run holds it."""
    if sys.platform == "win32":  # pragma: no cover
        return None
    path = out / ".lock"
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.read(fd, 200).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise ValueError(
                f"{out} is in use by another training run ({holder}); wait for "
                f"it to end, stop it, or pass another --out folder"
            ) from None
        try:  # the file we locked may have been removed by the holder that just ended
            if os.fstat(fd).st_ino == os.stat(path).st_ino:
                break
        except FileNotFoundError:
            pass
        os.close(fd)
    os.ftruncate(fd, 0)
    os.write(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode())
    return fd


def unlock(run: Run) -> None:
    """Remove the output folder's lock file and drop the lock (in this order: a run waiting
    on the old file sees it gone and locks a new one)."""
    if run.lock is not None and run.out is not None:
        (run.out / ".lock").unlink(missing_ok=True)
        os.close(run.lock)
        run.lock = None


def start(
    model: Model,
    train: Data,
    config: TrainConfig,
    data_spec: dict | None,
    callbacks: list[Callback],
    optimizer: optim.Adam | None = None,
    resume_from: str | Path | None = None,
) -> Run:
    """Seed, move the model, and build the optimiser and schedule of a run (under torchrun:
    join the process group; only rank 0 writes checkpoints and holds the folder's lock); with
    ``resume_from``, restore that checkpoint's state."""
    if resume_from is None:
        source, recipe = None, optimizer or optim.Adam()
    else:
        source = (resume_from, checkpoint.load_checkpoint(resume_from))
        recipe = resume.recipe(*source, optimizer)
    ctx = distributed.context(select_device(config.device))
    device = ctx.device
    out, lock = _prepare_out_dir(config.out_dir) if ctx.main else (None, None)
    seed_everything(config.seed)
    generator = torch.Generator().manual_seed(config.seed)  # the data order, on every process
    if ctx.active:
        torch.manual_seed(config.seed + ctx.rank)  # each process its own guide noise
    model.to(device).train()
    batch_size = config.batch_size * ctx.world  # the global batch
    weight_decay = config.weight_decay + optim.per_step_decay(
        config.weight_decay_sum, train, batch_size
    )
    torch_optimizer = recipe.build(model.parameters(), config, device, weight_decay)
    scheduler = torch.optim.lr_scheduler.ExponentialLR(torch_optimizer, gamma=config.lr_decay)
    steps_per_epoch = train.num_batches(batch_size)
    run = Run(
        model,
        config,
        recipe,
        device,
        torch_optimizer,
        scheduler,
        generator,
        generator.get_state(),
        weight_decay,
        steps_per_epoch,
        round(config.anneal_epochs * steps_per_epoch),
        out,
        dict(data_spec or {}),
        callbacks,
        lock=lock,
        ctx=ctx,
        net=distributed.wrap(model, ctx),
    )
    if source is not None:
        try:
            restore(run, *source)
        except BaseException:
            unlock(run)
            distributed.leave(ctx)
            raise
    return run


def restore(run: Run, path: str | Path, ckpt: dict) -> None:
    """Continue checkpoint ``path`` (read into ``ckpt``): check that ``run`` trains what it trained
    (:func:`vaelab.train.resume.check`), load every state, and apply the
    :data:`~vaelab.train.resume.RESUMABLE` settings that changed."""
    config = run.config
    changed = resume.check(
        path,
        ckpt,
        run.model.name,
        asdict(run.model.config),
        run.data_spec,
        asdict(config),
        run.recipe,
        run.ctx.world,
    )
    run.data_spec = run.data_spec or dict(ckpt["data"])
    checkpoint.check_finite(path, ckpt["state_dict"])
    changed.update(_world_change(run, path, ckpt))
    try:
        run.model.load_state_dict(ckpt["state_dict"])
        run.optimizer.load_state_dict(ckpt["optimizer"])
        run.scheduler.load_state_dict(ckpt["scheduler"])
    except (RuntimeError, ValueError, KeyError) as e:
        raise ValueError(
            f"{path}: its states do not fit this model and optimiser "
            f"({checkpoint.torch_reason(e)}); the file was edited or "
            f"damaged"
        ) from None
    # the changes a resume may make, applied from here on
    if "lr" in changed:  # the optimiser's own lr came back with its state: replace it
        for group in run.optimizer.param_groups:
            group["lr"] = config.lr
        run.scheduler.base_lrs = [config.lr] * len(run.optimizer.param_groups)
        run.scheduler._last_lr = [config.lr] * len(run.optimizer.param_groups)
    if "lr_decay" in changed:
        run.scheduler.gamma = config.lr_decay
    if "batch_size" in changed:  # per_step_decay depends on it
        for group in run.optimizer.param_groups:
            group["weight_decay"] = run.recipe.optimizer_decay(run.weight_decay)
    run.state = TrainState(
        ckpt["step"], ckpt["epoch"], ckpt["batch_in_epoch"], list(ckpt["history"])
    )
    run.epoch_rng = ckpt["rng"]["data"]
    torch.set_rng_state(ckpt["rng"]["torch"])
    if run.device.type == "cuda" and "cuda" in ckpt["rng"]:
        torch.cuda.set_rng_state(ckpt["rng"]["cuda"], run.device)
    if run.ctx.active:  # rank 0's state was saved: the others go on from their own seeds
        torch.manual_seed(config.seed + run.state.step * run.ctx.world + run.ctx.rank)
    history = run.state.history
    run.best = min((r["nelbo"] for r in history if r["kind"] == "val"), default=math.inf)
    for r in history:  # the level goes on from the run's own
        if r["kind"] == "train" and isinstance(r.get("loss"), (int, float)):
            run.level.add(float(r["loss"]))
    run.resumes = list(ckpt.get("resumes", []))
    run.resumes.append(
        {
            "step": run.state.step,
            "from": str(path),
            "changed": {k: list(v) for k, v in changed.items() if k not in resume.UNRECORDED},
        }
    )


def _world_change(run: Run, path: str | Path, ckpt: dict) -> dict:
    """A resume in another number of processes: when the global batch (``batch_size`` times
    processes) changes, which only an epoch's end allows, a warning says how; ``resumes``
    records both."""
    old, new = ckpt.get("world", 1), run.ctx.world
    if old == new:
        return {}
    before = ckpt["train_config"]["batch_size"] * old
    after = run.config.batch_size * new
    if before != after:  # at an epoch's end: resume.check_progress refuses it inside one
        keep = f" (pass --batch-size {before // new} to keep it)" if before % new == 0 else ""
        warnings.warn(
            f"resuming {path} in {new} process(es) where it trained in {old}: the "
            f"global batch changes from {before} to {after} examples{keep}",
            stacklevel=2,
        )
    return {"world": (old, new), "global_batch_size": (before, after)}


def remaining_batches(run: Run, train: Data) -> Iterator[tuple[int, Batch]]:
    """``(index, batch)`` of the current epoch, on the run's device, from where it stopped:
    the epoch's order is replayed from its random state and the batches done are skipped.
    Under torchrun every process draws the same global batches and keeps its own rows."""
    run.generator.set_state(run.epoch_rng)
    batches = train.batches(
        run.config.batch_size * run.ctx.world,
        shuffle=True,
        generator=run.generator,
        jitter=run.config.bucket_jitter,
    )
    for i, batch in enumerate(batches):
        if i >= run.state.batch_in_epoch:
            part = distributed.shard(batch, run.ctx)
            if part is not None:
                yield i, part.to(run.device)


def emit_steps(run: Run, pending: list[dict], bar) -> bool:
    """Read the records of the steps in ``pending`` (one transfer from the device), emit them
    in order with their share of the time since the last read, and empty ``pending``; False
    when a callback asked to stop. Raises TrainingDiverged at the first bad step, after
    emitting the records before it. Under torchrun every process returns rank 0's answer."""
    try:
        records = deferred.read_records(pending, run.config.max_abs_loss, run.limit())
    except guard.TrainingDiverged as err:
        for record in err.records:
            run.emit({**record, "epoch": run.state.epoch, "seconds": 0.0})
        raise
    pending.clear()
    now = time.perf_counter()
    seconds, run.last_time = (now - run.last_time) / max(len(records), 1), now
    go_on = True
    for record in records:
        run.level.add(record["loss"])
        go_on = run.emit({**record, "epoch": run.state.epoch, "seconds": seconds}) and go_on
    if records:
        bar.set_postfix(
            nelbo=f"{records[-1]['nelbo']:.3f}", kl_w=f"{records[-1]['kl_weight']:.2f}"
        )
    return distributed.agree(not go_on, run.ctx)


def end_of_epoch(run: Run, val: Data | None) -> bool:
    """Count the epoch, validate and checkpoint when due (the best validation -ELBO's weights
    also to best.pt); returns True when a callback asked to stop (on every process)."""
    state, config = run.state, run.config
    state.epoch += 1
    state.batch_in_epoch = 0
    run.epoch_rng = run.generator.get_state()
    stopped = improved = False
    if val is not None and config.eval_every and state.epoch % config.eval_every == 0:
        metrics = evaluate_elbo(run.model, val, config.batch_size, device=run.device)
        stopped = not run.emit(
            {"kind": "val", "step": state.step, "epoch": state.epoch, **metrics}
        )
        run.model.train()
        improved = metrics["nelbo"] < run.best  # early stopping by selection: keep the best
        run.best = min(run.best, metrics["nelbo"])
    due = stopped or state.epoch % config.checkpoint_every == 0 or state.epoch == config.epochs
    if due:
        save(run)
    if improved and due and run.out is not None:  # the state just saved: no second write
        checkpoint.link_or_copy(run.out / "checkpoint.pt", run.out / "best.pt")
    elif improved:
        save(run, "best.pt")
    return distributed.agree(stopped, run.ctx)


def save(run: Run, name: str = "checkpoint.pt") -> None:
    """Write the run's whole state to ``out_dir/name`` (nothing without an out_dir)."""
    if run.out is None:
        return
    rng = {"data": run.epoch_rng, "torch": torch.get_rng_state()}
    if run.device.type == "cuda":
        rng["cuda"] = torch.cuda.get_rng_state(run.device)
    state = {
        "format": checkpoint.CHECKPOINT_FORMAT,
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
    if run.ctx.world > 1:
        state["world"] = run.ctx.world
    if run.resumes:
        state["resumes"] = run.resumes
    if run.recipe != optim.Adam():
        state["recipe"] = optim.to_dict(run.recipe)
    state["checksum"] = checkpoint.checksum(state)
    checkpoint.remove_stale_temporaries(run.out)
    checkpoint.save_checkpoint(run.out / name, state)
    if name == "checkpoint.pt":
        run.saved_step = run.state.step


def diverged(run: Run, err: guard.TrainingDiverged) -> guard.TrainingDiverged:
    """``err`` with what survived on disk and what to do, the last good step's learning rate
    (with sync_every > 1 the schedule has run on to the read) and the failing step."""
    lr = next(
        (r["lr"] for r in reversed(run.state.history) if r["kind"] == "train"),
        run.optimizer.param_groups[0]["lr"],
    )
    at_start = run.level.first is None and not err.records  # no good step, even on resume
    saved = run.saved_path()
    # a resumed run whose checkpoint's weights took a good step after it: resuming from it
    # with a lower rate retraces that step (resume is exact) and then moves less
    resumable = bool(run.resumes) and saved is not None and not at_start
    step = _step_in(saved) if resumable else None
    good_after = step is not None and err.step is not None and err.step >= step + 2
    resume_from = saved if good_after else None
    what = guard.advice(saved, lr, diverged=True, at_start=at_start, resumable=resume_from)
    new = guard.TrainingDiverged(f"{err}; {run.survivor()}. {what}")
    new.lr, new.step, new.at_start, new.resume_from = lr, err.step, at_start, resume_from
    new.suggested_lr = None if at_start else guard.suggested_lr(lr)
    return new


def interrupted(run: Run) -> guard.TrainingInterrupted:
    """The ``end`` record emitted, and the exception saying where to resume from."""
    path = run.saved_path()
    run.emit(
        {
            "kind": "end",
            "step": run.state.step,
            "epoch": run.state.epoch,
            "stopped": True,
            "interrupted": True,
        }
    )
    what = guard.advice(path, None, diverged=False) if run.ctx.main else ""
    return guard.TrainingInterrupted(
        f"interrupted at step {run.state.step}; {run.survivor()}. {what}".rstrip(),
        path,
        _step_in(path),
    )
