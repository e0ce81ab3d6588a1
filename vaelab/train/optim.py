"""fit's optimiser: Adam, and the optimiser recipes that reproduce other people's code.

:class:`Adam` is what every run uses unless told otherwise. :class:`ClippedAdam` adds the two
settings that exist only to compare with other implementations (Pyro's ``ClippedAdam``
element-wise clamp on a *summed* loss, Krishnan et al.'s L2 term inside the norm clip); the
presets (``vaelab.presets``) and ``benchmarks/`` pass one to :func:`vaelab.train.fit` as its
``optimizer``. A recipe is a frozen dataclass, stored in checkpoints by :func:`to_dict`, so a
resumed run goes on with the recipe it started with.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from vaelab.data import Data
from vaelab.train.config import TrainConfig


def adam(
    params, config: TrainConfig, device: torch.device, weight_decay: float = 0.0, eps: float = 1e-8
) -> torch.optim.Adam:
    """fit's optimiser: Adam with ``config``'s learning rate and betas, fused (one kernel for
    every parameter: about 8x faster than the per-tensor loop on the CPU, where the DMM's step
    has some thirty small tensors) on the CPU and CUDA."""
    return torch.optim.Adam(
        params,
        lr=config.lr,
        betas=config.betas,
        eps=eps,
        weight_decay=weight_decay,
        fused=device.type in ("cpu", "cuda"),
    )


def per_step_decay(summed: float, train: Data, batch_size: int) -> float:
    """Weight decay for our loss equal to ``summed`` on a batch's summed loss.

    ``loss`` divides by the batch's observed steps (examples for a static model), and Adam is
    invariant to a constant rescaling of the gradient, so an L2 term of ``summed`` on the sum is
    ``summed`` over the mean observed steps per batch (Pyro's DMM: 2.0 on the sum over 20
    chorales, about 1150 steps, gives 1.7e-3 here; several times less on longer pieces).
    """
    steps = float(train._seq_lengths().sum()) if train.is_sequence else float(len(train))
    return summed / (steps / train.num_batches(batch_size))


@dataclass(frozen=True)
class Adam:
    """The default recipe: :func:`adam` with the run's (per-step) weight decay, and nothing
    done to the gradients between the backward pass and the norm clip."""

    def build(
        self,
        params: Iterable[nn.Parameter],
        config: TrainConfig,
        device: torch.device,
        weight_decay: float,
    ) -> torch.optim.Optimizer:
        """The optimiser over ``params``; ``weight_decay`` is per observed step."""
        return adam(params, config, device, self.optimizer_decay(weight_decay), self.eps())

    def optimizer_decay(self, weight_decay: float) -> float:
        """The weight decay the optimiser itself applies (after the clip)."""
        return weight_decay

    def eps(self) -> float:
        """Adam's epsilon."""
        return 1e-8

    def before_clip(
        self,
        params: list[nn.Parameter],
        config: TrainConfig,
        steps: float | Tensor,
        weight_decay: float,
    ) -> None:
        """Change the gradients before the norm clip; ``steps`` is the batch's observed steps
        over every guide draw (a float, or a device tensor when reads are deferred)."""


@dataclass(frozen=True)
class ClippedAdam(Adam):
    """Adam as other implementations train the DMM, for side-by-side comparisons.

    Parameters
    ----------
    clip_value_sum : float
        Clamp every gradient element of the batch's *summed* loss to +-clip_value_sum (Pyro's
        ``ClippedAdam`` "clip_norm", despite its name); 0 switches it off.
    decay_before_clip : bool
        False: Adam adds the decay to the clipped gradient (torch's and Pyro's order); True: the
        L2 term is part of the loss whose gradient is clipped (Krishnan et al.'s code), so a
        tight ``clip_norm`` scales it down with the rest.
    adam_eps : float
        Adam's epsilon, the one setting not invariant to the loss's scale: ours is per
        observed step, so a per-sequence loss's 1e-8 is 1e-8 / (mean steps per sequence) here.
    """

    clip_value_sum: float = 0.0
    decay_before_clip: bool = False
    adam_eps: float = 1e-8

    def __post_init__(self) -> None:
        if not self.clip_value_sum >= 0:  # also NaN
            raise ValueError(
                f"ClippedAdam.clip_value_sum={self.clip_value_sum!r} is out of "
                f"range: it must be >= 0 (0: off)"
            )
        if not self.adam_eps > 0:
            raise ValueError(
                f"ClippedAdam.adam_eps={self.adam_eps!r} is out of range: it must be > 0"
            )

    def eps(self) -> float:
        return self.adam_eps

    def optimizer_decay(self, weight_decay: float) -> float:
        return 0.0 if self.decay_before_clip else weight_decay

    def before_clip(self, params, config, steps, weight_decay):
        if self.decay_before_clip and weight_decay:  # d/dp of weight_decay/2 * |p|^2
            for p in params:
                if p.grad is not None:
                    p.grad.add_(p.detach(), alpha=weight_decay)
        if not self.clip_value_sum:
            return
        # Pyro's clamp on the summed loss, per step here; steps counts every guide draw
        bound = self.clip_value_sum * config.train_samples / steps
        if isinstance(bound, Tensor):  # kept on the device (deferred reads)
            for p in params:
                if p.grad is not None:
                    p.grad.clamp_(-bound, bound)
        else:
            nn.utils.clip_grad_value_(params, bound)


RECIPES = {cls.__name__: cls for cls in (Adam, ClippedAdam)}


def to_dict(recipe: Adam) -> dict:
    """``{"name": ..., **fields}``: a recipe as plain values, for a checkpoint."""
    return {"name": type(recipe).__name__, **dataclasses.asdict(recipe)}


def from_dict(spec: dict) -> Adam:
    """The recipe :func:`to_dict` wrote; ``ValueError`` for an unknown one."""
    fields = dict(spec)
    name = fields.pop("name", None)
    if name not in RECIPES:
        raise ValueError(
            f"unknown optimiser recipe {name!r} (this vaelab knows "
            f"{sorted(RECIPES)}); the checkpoint was written by a newer vaelab: "
            f"upgrade to resume it"
        )
    known = {f.name for f in dataclasses.fields(RECIPES[name])}
    if set(fields) - known:
        raise ValueError(
            f"optimiser recipe {name} has unknown settings "
            f"{sorted(set(fields) - known)}; it was written by a newer vaelab"
        )
    return RECIPES[name](**fields)


def from_old_train_config(train_config: dict) -> tuple[dict, Adam]:
    """A train_config of checkpoint format 1 as written before vaelab 0.2 (with the fields
    ``clip_value_sum``, ``decay_before_clip`` and ``adam_eps``): the config without them, and
    the recipe that trains as they did."""
    train_config = dict(train_config)
    clip = float(train_config.pop("clip_value_sum", 0.0))
    before = bool(train_config.pop("decay_before_clip", False))
    eps = float(train_config.pop("adam_eps", 1e-8))
    recipe = ClippedAdam(clip, before, eps) if clip or before or eps != 1e-8 else Adam()
    return train_config, recipe
