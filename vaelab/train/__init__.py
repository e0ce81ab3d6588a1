"""The trainer: :func:`fit` (``loop.py``, the loop a student reads) and the modules around it.

- ``config.py``      :class:`TrainConfig`, :func:`select_device`
- ``loop.py``        :func:`fit`
- ``step.py``        :func:`train_step`, one optimiser step
- ``optim.py``       Adam, and the recipes that reproduce other code (:class:`ClippedAdam`)
- ``run.py``         a run's state, start, resume, epochs' ends, checkpoints written
- ``checkpoint.py``  save / load, checksum, ``weights_only``, atomic writes
- ``resume.py``      the resume rules (one copy: fit and the command line)
- ``evaluate.py``    :func:`evaluate_elbo`, :func:`evaluate_nll`
- ``deferred.py``    reading a GPU's metrics every ``sync_every`` steps (engineering)
- ``guard.py``       divergence, Ctrl-C / SIGTERM, the messages after a stop
"""

from __future__ import annotations

from vaelab.train.checkpoint import (
    CHECKPOINT_FIELDS,
    CHECKPOINT_FORMAT,
    OPTIONAL_CHECKPOINT_FIELDS,
    CheckpointWriteError,
    build_model,
    checksum,
    load_checkpoint,
    load_model,
    save_checkpoint,
    tensor_checksum,
)
from vaelab.train.config import TrainConfig, select_device
from vaelab.train.deferred import read_records
from vaelab.train.evaluate import evaluate_elbo, evaluate_nll
from vaelab.train.guard import TrainingDiverged, TrainingInterrupted
from vaelab.train.loop import fit
from vaelab.train.optim import Adam, ClippedAdam, adam, per_step_decay
from vaelab.train.resume import RESUMABLE, same_data_spec, same_values
from vaelab.train.run import Callback, TrainState, seed_everything
from vaelab.train.step import train_step

__all__ = [
    "CHECKPOINT_FIELDS",
    "CHECKPOINT_FORMAT",
    "OPTIONAL_CHECKPOINT_FIELDS",
    "RESUMABLE",
    "Adam",
    "Callback",
    "CheckpointWriteError",
    "ClippedAdam",
    "TrainConfig",
    "TrainState",
    "TrainingDiverged",
    "TrainingInterrupted",
    "adam",
    "build_model",
    "checksum",
    "evaluate_elbo",
    "evaluate_nll",
    "fit",
    "load_checkpoint",
    "load_model",
    "per_step_decay",
    "read_records",
    "same_data_spec",
    "same_values",
    "save_checkpoint",
    "seed_everything",
    "select_device",
    "tensor_checksum",
    "train_step",
]
