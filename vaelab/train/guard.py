"""How a run stops when it must: divergence detected by what it means, Ctrl-C and SIGTERM
turned into a saved checkpoint, and the sentence that says what survived and what to do.

Divergence is a step whose loss is non-finite, beyond ``TrainConfig.max_abs_loss``, or far
above the run's own recent level (:class:`Level`), or whose gradient norm is non-finite. The
step is refused before the optimiser takes it, so the parameters stay the last good ones.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
import signal
import statistics
import sys
import threading
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from types import FrameType
from typing import Any


class TrainingDiverged(RuntimeError):
    """A non-finite or exploding loss or gradient: training stopped before the parameters took
    it; the message says which checkpoint on disk holds the last good state. ``lr`` is the
    learning rate of the last good step, ``step`` the failing one, ``suggested_lr`` the rate
    the message suggests, ``resume_from`` the checkpoint to resume from at that rate (a
    resumed run whose checkpoint took a good step after it) or None: start a new run."""

    lr: float | None = None
    step: int | None = None
    suggested_lr: float | None = None  # None at the first step: the rate is not the cause
    at_start: bool = False  # no good step before it: the data or the settings, not the rate
    records: Sequence[dict] = ()  # deferred reads: the good steps' records before this one
    resume_from: Path | None = None  # a resumed run's checkpoint worth resuming from


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C (or SIGTERM) during :func:`fit`; ``checkpoint`` is the file holding the last
    saved state (None when there is none) and ``step`` its step. The message says how to
    resume."""

    def __init__(
        self, message: str, checkpoint: Path | None = None, step: int | None = None
    ) -> None:
        super().__init__(message)
        self.checkpoint, self.step = checkpoint, step

    def __str__(self) -> str:
        return str(self.args[0])


class Level:
    """The run's loss level: its first step's loss and the median of its last ``window``
    good steps' losses.

    A loss more than ``factor`` times a level's magnitude (at least 1 nat) above that level
    is divergence: learning lowers the loss, and no model here has a healthy step ten times
    above where the run started or where it has recently been (the VAE's loss at ``--lr 10``
    jumps from about 60 nats to 8e4 within its first ten steps and stays there). The recent
    level counts from ``warmup`` good steps on.
    """

    def __init__(self, window: int = 50, factor: float = 10.0, warmup: int = 10) -> None:
        self.losses: deque[float] = deque(maxlen=window)
        self.first: float | None = None
        self.factor, self.warmup = factor, warmup

    def add(self, loss: float) -> None:
        if self.first is None:
            self.first = loss
        self.losses.append(loss)

    def limit(self, max_abs: float) -> float:
        """The highest loss the next steps may have (until the next reads)."""
        levels = [] if self.first is None else [self.first]
        if len(self.losses) >= self.warmup:
            levels.append(statistics.median(self.losses))
        return min([max_abs, *(x + self.factor * max(abs(x), 1.0) for x in levels)])


def suggested_lr(lr: float) -> float:
    """A learning rate to try after divergence at ``lr``: a tenth of it, or Adam's usual 1e-3
    when that tenth is still above 1e-2 (no model here trains with Adam above it)."""
    return lr / 10 if lr / 10 <= 1e-2 else 1e-3


def check_step(step: int, values: list[float], max_abs: float, limit: float = math.inf) -> None:
    """Raise TrainingDiverged (its ``step`` set) if step ``step``'s ``[elbo, log-lik, kl,
    steps, loss(, grad norm)]`` show a non-finite or exploding loss, or a non-finite gradient
    norm."""
    try:
        _check(step, values, max_abs, limit)
    except TrainingDiverged as err:
        err.step = step
        raise


def _check(step: int, values: list[float], max_abs: float, limit: float) -> None:
    value = values[4]
    if not math.isfinite(value):
        raise TrainingDiverged(f"non-finite loss at step {step}")
    if abs(value) > max_abs:
        raise TrainingDiverged(
            f"exploding loss {value:.3g} at step {step} (beyond "
            f"TrainConfig.max_abs_loss={max_abs:g})"
        )
    if value > limit:
        raise TrainingDiverged(
            f"exploding loss {value:.4g} at step {step}, far above the "
            f"run's own level at its start or its recent steps (the limit "
            f"was {limit:.4g})"
        )
    if len(values) > 5 and not math.isfinite(values[5]):
        raise TrainingDiverged(f"non-finite gradient norm at step {step}")


HOLD_AFTER_STOP: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "HOLD_AFTER_STOP", default=False
)  # set by ``python -m vaelab``, whose process ends after reporting a stop


_HELD: list[int] = []  # the signals deferred_stop left ignored (HOLD_AFTER_STOP)

# Python's own handlers for the two stop signals, which deferred_stop replaces and restores
DEFAULT_HANDLERS: dict[int, Callable[[int, FrameType | None], Any] | int] = {
    signal.SIGINT: signal.default_int_handler,
    signal.SIGTERM: signal.SIG_DFL,
}


def release_held() -> None:
    """Python's defaults again for the signals a stopped fit left ignored."""
    while _HELD:
        s = _HELD.pop()
        if signal.getsignal(s) is signal.SIG_IGN:
            signal.signal(s, DEFAULT_HANDLERS[s])


@contextlib.contextmanager
def deferred_stop() -> Iterator:
    """While training, the first Ctrl-C (or SIGTERM, as a job scheduler or the dashboard sends)
    asks fit to stop after the current step, so the checkpoint it saves is a clean one; a
    second one interrupts at once. Only in the main thread, and only for the signals still at
    Python's defaults (a program that handles them itself keeps its handlers).

    ``requested`` is this process's own: under torchrun, fit agrees on it with the other
    processes and decides on the agreed value, never writing that back here, so another rank's
    stop does not turn this rank's first signal, arriving while it saves, into "a second one"."""

    class Stop:
        requested = False  # a signal reached this process
        closing = False  # fit is reporting the stop: a further signal changes nothing

    stop = Stop()
    defaults = DEFAULT_HANDLERS
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return
    ours = [s for s, d in defaults.items() if signal.getsignal(s) is d]

    def handler(signum, frame):
        if stop.closing:
            return
        if stop.requested:
            raise KeyboardInterrupt
        stop.requested = True
        name = "Ctrl-C" if signum == signal.SIGINT else signal.Signals(signum).name
        print(
            f"\n{name}: stopping after this step and saving a checkpoint ({name} again to "
            f"stop at once)",
            file=sys.stderr,
            flush=True,
        )

    for s in ours:
        signal.signal(s, handler)
    try:
        yield stop
    finally:
        # the command line, stopping on a signal, keeps further ones away while it reports
        hold = stop.requested and HOLD_AFTER_STOP.get()
        for s in ours:
            signal.signal(s, signal.SIG_IGN if hold else defaults[s])
        if hold:
            _HELD.extend(ours)


def survivor(out: Path | None, saved: Path | None, step: int | None) -> str:
    """What is true about the checkpoint on disk, for a message after training stopped."""
    if out is None:
        return "no checkpoint was being written (out_dir is None)"
    if saved is None:
        return f"no checkpoint had been written to {out} yet"
    if step is None:
        return f"{saved} exists but cannot be read"
    return f"the last checkpoint, {saved}, holds step {step}"


AT_START = (
    "It failed at the run's very first step, before any update, so the learning rate is "
    "not the cause: the data or the settings are (check the data for extreme or non-finite "
    "values, e.g. rescale it to about [-10, 10], and the model settings given with --set)"
)


def advice(
    saved: Path | None,
    lr: float | None,
    diverged: bool,
    at_start: bool = False,
    resumable: Path | None = None,
) -> str:
    """What to do next. After divergence: start again with a lower rate, applied from the
    first step (resuming would recompute the failing loss from the same saved weights); or,
    for a resumed run whose checkpoint ``resumable`` took a good step after it was saved,
    resume from it with a lower rate; after divergence at the first step (``at_start``):
    look at the data and settings."""
    if diverged and at_start:
        return AT_START
    if diverged and resumable is not None:
        lower = f"{suggested_lr(lr):.3g}" if lr is not None else "a tenth of it"
        return (
            f"Its weights trained well on the step after it: resume from it with a lower "
            f"learning rate (--resume {resumable} --lr {lower}; in Python fit(..., "
            f"resume=path) with TrainConfig(lr={lower})), or start a new run into another "
            f"folder at that rate"
        )
    if diverged:
        lower = f"{suggested_lr(lr):.3g}" if lr is not None else "a tenth of it"
        return (
            f"Start a new run into another folder and lower the learning rate (e.g. "
            f"--lr {lower}; in Python TrainConfig(lr={lower})), raise min_scale, or check "
            f"the data for extreme values"
        )
    if saved is None:
        return "There is nothing to resume from"
    return f"Resume with the same command and --resume {saved} (in Python: fit(..., resume=path))"
