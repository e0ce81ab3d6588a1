"""What every checker shares: the exception a wrong answer raises and the basic comparisons."""

from __future__ import annotations

import torch
from torch import Tensor


class Mistake(AssertionError):
    """A student's answer disagrees with the library; the message says where and, when the
    disagreement matches a typical error, which one."""


def not_written(name: str, err: NotImplementedError) -> NotImplementedError:
    """The error a checker raises for the student release's stub (``raise
    NotImplementedError()`` in place of the solution): still a NotImplementedError, as
    nbgrader expects of an unanswered exercise, with a message saying what to do. A
    NotImplementedError with a message of its own (raised by some library call in the
    student's code) is returned unchanged."""
    if str(err):
        return err
    return NotImplementedError(
        f"{name} is not written yet: in its cell, replace the two lines '# YOUR CODE HERE' and "
        f"'raise NotImplementedError()' with your code, run that cell, then run this check "
        f"again")


def check_shape(name: str, got: object, expected: tuple[int, ...] | torch.Size) -> Tensor:
    """Raise :class:`Mistake` unless ``got`` is a tensor of shape ``expected``."""
    if not isinstance(got, Tensor):
        raise Mistake(f"{name} must return a torch.Tensor, got {type(got).__name__}")
    if tuple(got.shape) != tuple(expected):
        raise Mistake(f"{name} returned shape {list(got.shape)}, expected {list(expected)}: "
                      f"check which dimension you reduced (or forgot to reduce)")
    return got


def check_close(name: str, got: Tensor, expected: Tensor, rtol: float = 1e-5,
                atol: float = 1e-6, hints: dict[str, Tensor] | None = None) -> None:
    """Raise :class:`Mistake` unless ``got`` is close to ``expected``. ``hints`` maps the
    description of a typical mistake to the value that mistake would give; a match is named."""
    check_shape(name, got, expected.shape)
    got = got.detach().to(expected.dtype)
    if not torch.isfinite(got).all():
        raise Mistake(f"{name} returned NaN or inf values")
    if torch.allclose(got, expected, rtol=rtol, atol=atol):
        return
    for mistake, value in (hints or {}).items():
        if torch.allclose(got, value.to(expected.dtype), rtol=rtol, atol=atol):
            raise Mistake(f"{name} is not right: {mistake}")
    error = (got - expected).abs().max().item()
    raise Mistake(f"{name} is off by up to {error:.3g} (largest absolute difference from the "
                  f"library's answer on random inputs)")
