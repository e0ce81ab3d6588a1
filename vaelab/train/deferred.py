"""Deferred reads: engineering for speed on a GPU, tested equal to a read per step.

Reading a step's metrics (``float(loss)``) makes the host wait for the device at every step.
With ``TrainConfig.sync_every = k`` a step leaves its metrics on the device as one tensor
(``record["device"]``), and fit reads ``k`` steps' worth in one transfer (:func:`read_records`).
The divergence rule still holds at every step: the step's flag (the same rule as
:func:`vaelab.train.guard.check_step`, computed on the device) joins the fused optimiser's
``found_inf``, which skips this update and, the flag kept, every later one, so that when the
read finds the bad step the parameters are still the last good ones. The numbers, the records
and the messages are those of a read per step (tests/test_train.py checks 1, 2 and 3).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from vaelab.train.guard import TrainingDiverged, check_step


def flag_divergence(
    optimizer: torch.optim.Optimizer, sums: Tensor, grad_norm: Tensor, max_abs: float, limit: float
) -> None:
    """Set the fused optimiser's ``found_inf`` when this step diverged (by check_step's rule,
    on the device), keeping an earlier flag: the update is skipped until fit reads it."""
    loss = sums[4]
    bad = ~(
        torch.isfinite(loss)
        & (loss.abs() <= max_abs)
        & (loss <= limit)
        & torch.isfinite(grad_norm)
    )
    found = getattr(optimizer, "found_inf", None)
    # torch's fused Adam reads found_inf with getattr (as GradScaler sets it); its stubs do
    # not declare the attribute
    optimizer.found_inf = (  # type: ignore[attr-defined]
        bad.float() if found is None else torch.maximum(found, bad)
    )


def values(record: dict, values: list[float]) -> dict:
    """A step's record from its ``[elbo, log-lik, kl, steps, loss, grad norm]`` sums."""
    elbo_sum, ll_sum, kl_sum, steps, value, grad_norm = values
    return {
        **{k: v for k, v in record.items() if k != "device"},
        "loss": value,
        "nelbo": -elbo_sum / steps,
        "log_likelihood": ll_sum / steps,
        "kl": kl_sum / steps,
        "grad_norm": grad_norm,
    }


def read_records(
    pending: list[dict], max_abs_loss: float = math.inf, limit: float = math.inf
) -> list[dict]:
    """The records of steps that train_step left on the device, read in one transfer
    (one host-device synchronisation); raises :class:`TrainingDiverged` at the first bad step,
    with the records before it returned on the exception's ``records``."""
    if not any("device" in r for r in pending):  # read already (train_step's sync=True)
        return list(pending)
    rows = torch.stack([r["device"] for r in pending]).tolist()
    done: list[dict] = []
    for record, row in zip(pending, rows, strict=True):
        try:
            check_step(record["step"], row, max_abs_loss, limit)
        except TrainingDiverged as err:
            err.records = done
            raise
        done.append(values(record, row))
    return done
