"""``TrainConfig``: the settings of one training run, plain values checked on construction,
and :func:`select_device`."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch

from vaelab.config import check_types


@dataclass
class TrainConfig:
    epochs: int = 10
    batch_size: int = 128
    # sequences: length-bucket noise in length standard deviations (Data.batches); inf: shuffle
    bucket_jitter: float = 0.1
    lr: float = 1e-3
    betas: tuple[float, float] = (0.9, 0.999)
    clip_norm: float = 10.0
    weight_decay: float = 0.0  # L2 penalty added to the gradient (Adam's coupled weight decay)
    # the same penalty stated for the loss *summed* over a batch (Pyro's convention, and the
    # DMM's default); fit divides it by the mean observed steps per batch, see per_step_decay
    weight_decay_sum: float = 0.0
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
    # a step whose |loss| (nats per observed step) exceeds this is divergence, as a NaN is;
    # a loss far above the run's own recent level is divergence as well (vaelab.train.guard)
    max_abs_loss: float = 1e10
    # steps whose metrics stay on the device before fit reads them, all in one transfer
    # (vaelab.train.deferred). None: 1 on the CPU (there is no wait), 50 on a GPU. The numbers
    # are the same for every value; a callback's stop and Ctrl-C act at the next read
    sync_every: int | None = None
    progress: bool = True  # tqdm bar
    # the named settings (vaelab.presets) this configuration started from: a label, recorded
    # in checkpoints so that a run says which preset it reproduces; it changes nothing itself
    # (a preset's optimiser recipe travels as fit's ``optimizer``)
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
            # past 2**31 torch cannot index a batch; a batch larger than the data is the data
            "batch_size": (1 <= self.batch_size < 2**31, "in [1, 2**31)"),
            "bucket_jitter": (self.bucket_jitter >= 0, ">= 0 (inf: plain shuffling)"),
            "lr": (0 < self.lr < math.inf, "> 0 and finite"),
            "betas": (all(0 <= b < 1 for b in self.betas), "two values in [0, 1)"),
            "clip_norm": (self.clip_norm > 0, "> 0 (inf: no clipping)"),
            "weight_decay": (self.weight_decay >= 0, ">= 0"),
            "weight_decay_sum": (self.weight_decay_sum >= 0, ">= 0"),
            "lr_decay": (0 < self.lr_decay <= 1, "in (0, 1]"),
            "beta": (self.beta >= 0, ">= 0"),
            # counted in steps (an int) once the data is known: a warm-up past 1e12 epochs
            # would overflow, and never ends anyway
            "anneal_epochs": (
                0 <= self.anneal_epochs <= 1e12,
                "in [0, 1e12] (0: no annealing)",
            ),
            "min_kl_weight": (0 <= self.min_kl_weight <= 1, "in [0, 1]"),
            # each step holds train_samples copies of the batch: past 1000 it only exhausts
            # memory (an IAF guide's Monte Carlo KL needs a few)
            "train_samples": (1 <= self.train_samples <= 1000, "in [1, 1000]"),
            "checkpoint_every": (self.checkpoint_every >= 1, ">= 1 epochs"),
            "eval_every": (self.eval_every >= 0, ">= 0 epochs (0: no validation)"),
            "max_steps": (self.max_steps is None or self.max_steps >= 1, ">= 1 or None"),
            "max_abs_loss": (self.max_abs_loss > 0, "> 0"),
            "sync_every": (
                self.sync_every is None or self.sync_every >= 1,
                ">= 1 steps or None (1 on the CPU, 50 on a GPU)",
            ),
            "seed": (0 <= self.seed < 2**32, "in [0, 2**32) (numpy's range)"),
        }
        bad = nan + [k for k, (ok, _) in checks.items() if not ok]
        if bad:
            k = bad[0]
            rule = checks[k][1] if k in checks else "a number, not NaN"
            raise ValueError(
                f"TrainConfig.{k}={getattr(self, k)!r} is out of range: it must be {rule}"
            )
        if self.out_dir == "":
            raise ValueError(
                "TrainConfig.out_dir is '' (an empty path); pass a folder name, or "
                "None to keep nothing on disk"
            )
        select_device(self.device)  # raises on an unknown or absent device


def select_device(name: str = "auto") -> torch.device:
    """``"auto"``: CUDA when present, else CPU; otherwise the named device, checked: it must be
    one that trains here (a CPU, or a visible CUDA GPU)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise ValueError(f"unknown device {name!r}; use 'auto', 'cpu' or 'cuda'") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(
                f"device {name!r} asked for but no CUDA GPU is visible; use 'auto' or 'cpu'"
            )
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(
                f"device {name!r} asked for but this machine has "
                f"{torch.cuda.device_count()} CUDA GPU(s); use 'cuda' or 'cpu'"
            )
        return device
    if device.type == "mps":
        if not torch.backends.mps.is_available():
            raise ValueError(
                f"device {name!r} (Apple's Metal) is not available in this torch "
                f"build or machine; use 'auto' or 'cpu'"
            )
        return device
    if device.type != "cpu":
        raise ValueError(
            f"device {name!r} cannot run vaelab models (only 'cpu', 'cuda' and "
            f"'mps' hold real tensors); use 'auto', 'cpu' or 'cuda'"
        )
    if device.index not in (None, 0):
        raise ValueError(
            f"device {name!r}: torch has one CPU device, whose threads use every core; use 'cpu'"
        )
    return device
