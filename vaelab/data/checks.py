"""Checks of user input shared by the loaders: each returns the value or raises a ValueError
naming the argument, what it got and what it needs."""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import torch
from torch import Tensor


def check_finite(name: str, t: Tensor | np.ndarray, where: str) -> None:
    """Raise ``ValueError`` naming ``where`` if ``t`` holds NaN or inf."""
    t = torch.as_tensor(t)
    if t.is_floating_point() and not torch.isfinite(t).all():
        bad = int((~torch.isfinite(t)).sum())
        raise ValueError(
            f"{name} from {where} holds {bad} NaN/inf values; clean or impute them first"
        )


# A wrong type is a ValueError too, like every bad input (STYLE.md), hence noqa: TRY004.


def check_int(name: str, value: object, low: int | None = None, high: int | None = None) -> int:
    """``value`` as an int, or a ``ValueError`` naming ``name``, the value and the range."""
    if isinstance(value, bool | np.bool_) or not isinstance(value, int | np.integer):
        raise ValueError(
            f"{name} must be a whole number, got {value!r} (type "
            f"{type(value).__name__}); pass e.g. {name}={low or 0}"
        )
    value = int(value)
    if (low is not None and value < low) or (high is not None and value > high):
        span = (
            f">= {low}" if high is None else f"<= {high}" if low is None else f"in {low}..{high}"
        )
        raise ValueError(f"{name} must be {span}, got {value}")
    return value


def check_number(
    name: str, value: object, low: float | None = None, positive: bool = False
) -> float:
    """``value`` as a finite float (``>= low``, or ``> 0`` when ``positive``), or a
    ``ValueError`` naming ``name``."""
    if isinstance(value, bool | np.bool_) or not isinstance(value, int | float | np.number):
        raise ValueError(f"{name} must be a number, got {value!r} (type {type(value).__name__})")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    if positive and value <= 0:
        raise ValueError(f"{name} must be > 0, got {value}")
    if low is not None and value < low:
        raise ValueError(f"{name} must be >= {low}, got {value}")
    return value


def check_bool(name: str, value: object) -> bool:
    """``value`` if it is True or False, else a ``ValueError`` naming ``name``."""
    if not isinstance(value, bool | np.bool_):
        raise ValueError(
            f"{name} must be True or False, got {value!r} (type {type(value).__name__})"
        )
    return bool(value)


def check_path(name: str, path: object) -> Path:
    if not isinstance(path, str | os.PathLike):
        raise ValueError(f"{name} must be a path (str), got {path!r} (type {type(path).__name__})")
    return Path(path)
