"""``fit``: the training loop, on one screen.

Like minGPT's trainer it knows only the model protocol (``elbo``, ``config``, ``parameters``)
and :class:`~vaelab.data.Batch`. Per batch it takes one optimiser step
(:func:`~vaelab.train.step.train_step`), per epoch it validates and saves a checkpoint; the
machinery around it lives in its own modules: :mod:`~vaelab.train.run` (state, start, resume,
saving), :mod:`~vaelab.train.checkpoint`, :mod:`~vaelab.train.resume` (the rules),
:mod:`~vaelab.train.deferred` (reading metrics from a GPU in batches),
:mod:`~vaelab.train.guard` (divergence, Ctrl-C, messages) and :mod:`vaelab.distributed`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from tqdm.auto import tqdm

from vaelab import distributed
from vaelab.data import Data
from vaelab.protocol import Model
from vaelab.train import guard, optim
from vaelab.train import run as runs
from vaelab.train.config import TrainConfig
from vaelab.train.step import train_step


def fit(
    model: Model,
    train: Data,
    val: Data | None,
    config: TrainConfig,
    callback: runs.Callback | Sequence[runs.Callback] | None = None,
    resume: str | Path | None = None,
    data_spec: dict | None = None,
    optimizer: optim.Adam | None = None,
) -> list[dict]:
    """Train ``model`` on ``train`` by maximising the (annealed) ELBO; returns the history.

    Parameters
    ----------
    callback : callable or list of callables, optional
        Each is called with every metrics record (``record["kind"]`` is ``"train"``, ``"val"``
        or ``"end"``); one returning ``False`` stops training after saving a checkpoint. A
        callback with an ``at_step`` attribute finds there the step of the parameters at the
        call (later than a train record's step when ``config.sync_every > 1``).
    resume : path, optional
        A checkpoint written by ``fit``: training continues exactly where it stopped, under
        the rules of :mod:`vaelab.train.resume` (same model, data and settings, except the
        :data:`~vaelab.train.resume.RESUMABLE` ones, which then apply).
    data_spec : dict, optional
        How to reload the data (``{"name": ..., **loader kwargs}``), stored in the checkpoint
        for ``python -m vaelab evaluate``; on resume it must match the checkpoint's.
    optimizer : vaelab.train.optim.Adam, optional
        The optimiser recipe; None: plain Adam, or on resume the checkpoint's. Presets that
        reproduce other code pass a :class:`~vaelab.train.optim.ClippedAdam`.

    Raises
    ------
    ValueError
        Bad arguments, or a resume that would change what the checkpoint trained.
    TrainingDiverged
        A non-finite or exploding loss or gradient; the parameters are not updated with it,
        and the message says which checkpoint holds the last good state and what to change.
    TrainingInterrupted
        Ctrl-C or SIGTERM: fit finishes the step it is in, saves a checkpoint and says how to
        resume (a second one stops at once, keeping the last checkpoint saved).
    """
    callbacks = runs.check_arguments(model, train, val, config, callback, data_spec)
    run = runs.start(model, train, config, data_spec, callbacks, optimizer, resume)
    state = run.state
    bar = tqdm(
        total=config.max_steps or config.epochs * run.steps_per_epoch,
        initial=state.step,
        disable=not (config.progress and run.ctx.main),
        desc=f"train {model.name}",
    )
    stopped = done = halt = False  # halt: a stop the processes agreed on (agree_to_stop)
    with guard.deferred_stop() as stop:
        try:
            while state.epoch < config.epochs and not (stopped or done or halt):
                pending = []  # steps whose metrics are still on the device
                for i, batch in runs.remaining_batches(run, train):
                    pending.append(
                        train_step(
                            run.net,
                            batch,
                            run.optimizer,
                            run.scheduler,
                            config,
                            state.step,
                            run.anneal_steps,
                            run.weight_decay,
                            run.ctx,
                            run.sync_every == 1,
                            run.recipe,
                            run.limit(),
                        )
                    )
                    state.step, state.batch_in_epoch = state.step + 1, i + 1
                    bar.update(1)
                    done = config.max_steps is not None and state.step >= config.max_steps
                    if len(pending) < run.sync_every and not done:
                        continue
                    stopped = runs.emit_steps(run, pending, bar)  # processes leave together
                    halt = distributed.agree_to_stop(stop.requested, run.ctx)
                    if stopped or done or halt:
                        break
                else:  # the epoch ran to its end
                    stopped = runs.emit_steps(run, pending, bar) or runs.end_of_epoch(run, val)
                    halt = distributed.agree_to_stop(stop.requested, run.ctx)
            if run.saved_step != state.step:  # stopped, max_steps or Ctrl-C mid-epoch
                runs.save(run)
            if halt and not (stopped or done) and state.epoch < config.epochs:
                raise KeyboardInterrupt  # reported below, with the checkpoint just saved
        except guard.TrainingDiverged as err:
            stop.closing = True
            raise runs.diverged(run, err) from err.__cause__
        except KeyboardInterrupt:  # its report is made whole: a further signal waits
            stop.closing = True
            raise runs.interrupted(run) from None
        finally:
            stop.closing = True
            bar.close()
            runs.unlock(run)
            distributed.leave(run.ctx)
    run.emit({"kind": "end", "step": state.step, "epoch": state.epoch, "stopped": stopped})
    return state.history
