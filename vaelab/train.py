"""One trainer for every model: Adam, gradient clipping, LR decay, linear KL annealing, tqdm,
validation, a metrics stream through ``callback``, atomic checkpoints and exact resume.

Like minGPT's trainer it knows only the model protocol (``elbo``), :class:`Batch` / :class:`Data`
and ``MODELS``.
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm

from vaelab.data import Data
from vaelab.objectives import (
    ELBOTerms,
    elbo_samples,
    importance_log_likelihood,
    kl_weight,
    loss,
)

CHECKPOINT_FORMAT = "vaelab-checkpoint-1"
Callback = Callable[[dict], "bool | None"]


class TrainingDiverged(RuntimeError):
    """A non-finite loss or gradient: training stopped, the last good checkpoint is intact."""


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
    progress: bool = True  # tqdm bar

    def __post_init__(self) -> None:
        self.betas = tuple(float(b) for b in self.betas)
        checks = {
            "epochs": self.epochs >= 1,
            "batch_size": self.batch_size >= 1,
            "bucket_jitter": self.bucket_jitter >= 0,
            "lr": self.lr > 0,
            "betas": len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas),
            "adam_eps": self.adam_eps > 0,
            "clip_norm": self.clip_norm > 0,
            "clip_value_sum": self.clip_value_sum >= 0,
            "weight_decay": self.weight_decay >= 0,
            "weight_decay_sum": self.weight_decay_sum >= 0,
            "lr_decay": 0 < self.lr_decay <= 1,
            "beta": self.beta >= 0,
            "anneal_epochs": self.anneal_epochs >= 0,
            "min_kl_weight": 0 <= self.min_kl_weight <= 1,
            "train_samples": self.train_samples >= 1,
            "checkpoint_every": self.checkpoint_every >= 1,
            "eval_every": self.eval_every >= 0,
            "max_steps": self.max_steps is None or self.max_steps >= 1,
        }
        bad = [k for k, ok in checks.items() if not ok]
        if bad:
            k = bad[0]
            raise ValueError(
                f"TrainConfig.{k}={getattr(self, k)!r} is out of range; see the comments in "
                f"vaelab/train.py for the allowed values"
            )
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


def _link_or_copy(src: Path, dst: Path) -> None:
    """Make ``dst`` hold ``src``'s bytes, atomically: a hard link where the file system has
    them (no second write; ``save_checkpoint`` replaces ``src`` later rather than rewriting
    it, so ``dst`` keeps these bytes), else a copy."""
    tmp = dst.with_name(dst.name + ".link.tmp")
    tmp.unlink(missing_ok=True)
    try:
        os.link(src, tmp)
    except OSError:
        with open(src, "rb") as f_in, open(tmp, "wb") as f_out:
            shutil.copyfileobj(f_in, f_out)
            f_out.flush()
            os.fsync(f_out.fileno())  # as durable as save_checkpoint's own file
    os.replace(tmp, dst)


def save_checkpoint(path: str | Path, state: dict) -> None:
    """Write ``state`` to ``path`` atomically: a temporary file in the same folder, fsync,
    then ``os.replace``, so an interrupted save leaves the previous checkpoint intact."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict:
    """Read a checkpoint with ``torch.load(weights_only=True)`` and check its format."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} not found; pass the checkpoint.pt that "
                                f"'python -m vaelab train --out DIR' wrote into DIR")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # noqa: BLE001 - any failure here means an unusable file
        raise ValueError(f"{path} is not a readable vaelab checkpoint ({e})") from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path} is not a vaelab checkpoint (format {CHECKPOINT_FORMAT!r})")
    return state


def build_model(name: str, config: dict) -> nn.Module:
    """A fresh model from ``MODELS[name]`` and a config dict (as stored in checkpoints)."""
    from vaelab import MODELS

    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose one of {sorted(MODELS)}")
    config_cls, model_cls = MODELS[name]
    return model_cls(config_cls(**config))


def load_model(path: str | Path, device: str | torch.device = "cpu") -> tuple[nn.Module, dict]:
    """The model stored in a checkpoint, in eval mode, and the checkpoint dict."""
    state = load_checkpoint(path, map_location=device)
    model = build_model(state["model"], state["config"])
    model.load_state_dict(state["state_dict"])
    return model.to(device).eval(), state


# ----------------------------------------------------------------------------- training


def _seed_all(seed: int) -> torch.Generator:
    torch.manual_seed(seed)
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
        ``"end"``); returning ``False`` stops training after saving a checkpoint.
    resume : path, optional
        A checkpoint written by ``fit``: model, optimiser, schedule, counters and random states
        are restored, and training continues exactly where it stopped.
    data_spec : dict, optional
        How to reload the data (``{"name": ..., **loader kwargs}``), stored in the checkpoint
        for ``python -m vaelab evaluate``.

    Raises
    ------
    TrainingDiverged
        On a non-finite loss or gradient; the parameters are not updated with it, and the
        last checkpoint on disk is left as it was.
    """
    if len(train) == 0:
        raise ValueError("the training data is empty")
    cfg_x = getattr(model.config, "x_dim", None)
    if cfg_x is not None and cfg_x != train.x_dim:
        raise ValueError(f"model x_dim={cfg_x} but the data has {train.x_dim} features per "
                         f"observation; build the model with x_dim={train.x_dim}")
    device = select_device(config.device)
    generator = _seed_all(config.seed)
    model.to(device).train()
    weight_decay = config.weight_decay + per_step_decay(config.weight_decay_sum, train,
                                                        config.batch_size)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr, betas=config.betas,
                                 eps=config.adam_eps,
                                 weight_decay=0.0 if config.decay_before_clip else weight_decay)
    scheduler = torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=config.lr_decay)
    state = TrainState()
    epoch_rng = generator.get_state()
    if resume is not None:
        ckpt = load_checkpoint(resume, map_location=device)
        if ckpt["model"] != model.name:
            raise ValueError(f"checkpoint holds a {ckpt['model']!r} model, not {model.name!r}")
        model.load_state_dict(ckpt["state_dict"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        state = TrainState(ckpt["step"], ckpt["epoch"], ckpt["batch_in_epoch"],
                           list(ckpt["history"]))
        epoch_rng = ckpt["rng"]["data"]
        torch.set_rng_state(ckpt["rng"]["torch"])
        if device.type == "cuda" and "cuda" in ckpt["rng"]:
            torch.cuda.set_rng_state(ckpt["rng"]["cuda"], device)

    steps_per_epoch = train.num_batches(config.batch_size)
    anneal_steps = round(config.anneal_epochs * steps_per_epoch)
    out = Path(config.out_dir) if config.out_dir else None

    # the best validation -ELBO so far (from the history on resume): its weights go to best.pt
    best = min((r["nelbo"] for r in state.history if r["kind"] == "val"), default=math.inf)

    def checkpoint(name: str = "checkpoint.pt") -> None:
        if out is None:
            return
        rng = {"data": epoch_rng, "torch": torch.get_rng_state()}
        if device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state(device)
        save_checkpoint(out / name, {
            "format": CHECKPOINT_FORMAT,
            "model": model.name,
            "config": asdict(model.config),
            "state_dict": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "train_config": asdict(config),
            "data": data_spec or {},
            "step": state.step,
            "epoch": state.epoch,
            "batch_in_epoch": state.batch_in_epoch,
            "history": state.history,
            "rng": rng,
        })

    def emit(record: dict) -> bool:
        state.history.append(record)
        return callback is None or callback(record) is not False

    done = config.max_steps is not None and state.step >= config.max_steps
    stopped = False
    bar = tqdm(total=config.max_steps or config.epochs * steps_per_epoch, initial=state.step,
               disable=not config.progress, desc=f"train {model.name}")
    t_last = time.perf_counter()
    while state.epoch < config.epochs and not done and not stopped:
        generator.set_state(epoch_rng)
        batches = train.batches(config.batch_size, shuffle=True, generator=generator,
                                jitter=config.bucket_jitter)
        for i, batch in enumerate(batches):
            if i < state.batch_in_epoch:
                continue  # resuming mid-epoch: replay the same order, skip what was done
            batch = batch.to(device)
            try:
                terms = elbo_samples(model, batch, config.train_samples)
            except ValueError as err:
                # torch.distributions' argument checks reject NaN/inf parameters (or a scale
                # of exactly 0) before the loss exists: that is divergence, not bad input
                if "satisfy the constraint" in str(err) or not _all_finite(model):
                    raise TrainingDiverged(_diverged("parameters", state.step, out)) from err
                raise
            w = config.beta * kl_weight(state.step, anneal_steps, config.min_kl_weight)
            objective = loss(terms, w)
            if not torch.isfinite(objective):
                raise TrainingDiverged(_diverged("loss", state.step, out))
            optimizer.zero_grad(set_to_none=True)
            objective.backward()
            if config.decay_before_clip and weight_decay:  # d/dp of weight_decay/2 * |p|^2
                for p in model.parameters():
                    if p.grad is not None:
                        p.grad.add_(p.detach(), alpha=weight_decay)
            if config.clip_value_sum:  # Pyro's clamp on the summed loss, per step here
                batch_steps = float(terms.steps.sum()) / config.train_samples
                nn.utils.clip_grad_value_(model.parameters(), config.clip_value_sum / batch_steps)
            grad_norm = float(nn.utils.clip_grad_norm_(model.parameters(), config.clip_norm))
            if not math.isfinite(grad_norm):
                raise TrainingDiverged(_diverged("gradient norm", state.step, out))
            optimizer.step()
            scheduler.step()
            state.step += 1
            state.batch_in_epoch = i + 1
            terms = ELBOTerms(*(t.detach() for t in (terms.log_likelihood, terms.kl,
                                                        terms.steps)))
            steps = float(terms.steps.sum())
            now = time.perf_counter()
            record = {
                "kind": "train", "step": state.step, "epoch": state.epoch,
                "loss": float(objective.detach()),
                "nelbo": -float(terms.elbo.sum()) / steps,
                "log_likelihood": float(terms.log_likelihood.sum()) / steps,
                "kl": float(terms.kl.sum()) / steps,
                "kl_weight": w, "grad_norm": grad_norm, "lr": scheduler.get_last_lr()[0],
                "seconds": now - t_last,
            }
            t_last = now
            bar.update(1)
            bar.set_postfix(nelbo=f"{record['nelbo']:.3f}", kl_w=f"{w:.2f}")
            if not emit(record):
                stopped = True
                break
            if config.max_steps is not None and state.step >= config.max_steps:
                done = True
                break
        else:  # the epoch ran to its end
            state.epoch += 1
            state.batch_in_epoch = 0
            epoch_rng = generator.get_state()
            if val is not None and config.eval_every and state.epoch % config.eval_every == 0:
                metrics = evaluate_elbo(model, val, config.batch_size, device=device)
                stopped = not emit({"kind": "val", "step": state.step, "epoch": state.epoch,
                                    **metrics})
                model.train()
                improved = metrics["nelbo"] < best  # early stopping by selection: keep the best
                best = min(best, metrics["nelbo"])
            else:
                improved = False
            due = (stopped or state.epoch % config.checkpoint_every == 0
                   or state.epoch == config.epochs)
            if due:
                checkpoint()
            if improved and due and out is not None:  # the state just saved: no second write
                _link_or_copy(out / "checkpoint.pt", out / "best.pt")
            elif improved:
                checkpoint("best.pt")
            continue
        checkpoint()  # stopped or max_steps mid-epoch
    bar.close()
    emit({"kind": "end", "step": state.step, "epoch": state.epoch, "stopped": stopped})
    return state.history


def _all_finite(model: nn.Module) -> bool:
    return all(bool(torch.isfinite(p).all()) for p in model.parameters())


def _diverged(what: str, step: int, out: Path | None) -> str:
    where = (f"the last good checkpoint {out / 'checkpoint.pt'} is intact" if out
             else "no checkpoint was being written")
    return (f"non-finite {what} at step {step + 1}; training stopped and {where}. Lower the "
            f"learning rate, raise min_scale, or check the data for extreme values")
