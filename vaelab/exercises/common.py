"""What every checker shares: the exception a wrong answer raises, the call of the student's
function (errors reported as the student's, with the line; forbidden shortcuts detected), the
comparisons with their precision judged by dtype, and the check that no checker or library
function was replaced from an answer cell."""

from __future__ import annotations

import sys
import traceback
import types
import warnings
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

EXERCISES_DIR = str(Path(__file__).resolve().parent)
VAELAB_DIR = str(Path(__file__).resolve().parent.parent)
TORCH_DIR = str(Path(torch.__file__).resolve().parent)

# Precision judged by dtype: (rtol, atol relative to the answer's largest magnitude). float32
# carries about 7 digits, and a computation of tens of operations loses one or two of them.
TOLERANCES = {torch.float64: (1e-7, 1e-9), torch.float32: (1e-4, 1e-5)}


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
        f"again"
    )


def _library_file(filename: str) -> bool:
    """True for code that is not the student's: vaelab, torch and the standard library."""
    path = str(Path(filename).resolve()) if filename and not filename.startswith("<") else ""
    return bool(path) and (path.startswith((VAELAB_DIR, TORCH_DIR, sys.prefix, sys.base_prefix)))


def student_line(err: BaseException) -> str:
    """Where in the student's code ``err`` was raised: the innermost traceback frame outside
    vaelab, torch and Python's own library (a notebook cell's code), as "line N: code"."""
    frames = [f for f in traceback.extract_tb(err.__traceback__) if not _library_file(f.filename)]
    if not frames:
        return ""
    frame = frames[-1]
    code = f": {frame.line.strip()}" if frame.line else ""
    return f" (line {frame.lineno} of your function's cell{code})"


def _code(obj: object) -> types.CodeType | None:
    """The code object of a Python function or method (None for a C function)."""
    obj = getattr(obj, "__func__", obj)  # a bound method's function
    return getattr(obj, "__code__", None)


def call_student(
    name: str,
    fn: Callable,
    *args: object,
    forbidden: Mapping[Any, str] | None = None,
    forbidden_files: dict[str, str] | None = None,
    no_grad: bool = False,
    context: str = "",
) -> object:
    """Run the student's ``fn(*args)`` and return its result.

    A crash is a :class:`Mistake` naming the error and the student's line (the cause is
    kept); the released stub's NotImplementedError stays one (nbgrader's convention). While
    ``fn`` runs, every Python call is watched: calling the checkers' own code, one of the
    functions in ``forbidden`` (function -> what to write instead) or code from a file in
    ``forbidden_files`` (path relative to vaelab/ -> what to write instead) is a Mistake,
    however the function was imported or renamed. ``context`` (what the inputs are) follows
    a crash's message, for the usual shape slips."""
    check_untouched()
    codes = {_code(f): why for f, why in (forbidden or {}).items() if _code(f) is not None}
    files = {str(Path(VAELAB_DIR) / rel): why for rel, why in (forbidden_files or {}).items()}
    used: list[str] = []

    def watch(frame: types.FrameType, event: str, arg: object) -> None:
        if event != "call" or used:
            return
        code = frame.f_code
        if code in codes:
            used.append(codes[code])
        elif code.co_filename.startswith(EXERCISES_DIR):
            used.append("the checkers' own code (vaelab.exercises): write the formula yourself")
        elif code.co_filename in files:
            used.append(files[code.co_filename])

    previous = sys.getprofile()
    sys.setprofile(watch)
    try:
        # a warning from the student's code would print to stderr, which nbgrader scores as a
        # failed test cell: the checker judges the values, not the warnings
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if no_grad:
                with torch.no_grad():
                    out = fn(*args)
            else:
                out = fn(*args)
    except NotImplementedError as err:
        raise not_written(name, err) from None
    except Mistake:
        raise
    except Exception as err:  # a crash in the student's code: say where, keep the cause
        raise Mistake(
            f"{name} raised {type(err).__name__}: {err}{student_line(err)}{context}"
        ) from err
    finally:
        sys.setprofile(previous if previous is None or callable(previous) else None)
    if used:
        raise Mistake(
            f"{name} calls a function this exercise asks you to write yourself: {used[0]}"
        )
    return out


def call_checked(
    name: str,
    fn: Callable,
    *args: object,
    outputs: int = 1,
    shapes: str = "",
    forbidden: Mapping[Any, str] | None = None,
    forbidden_files: dict[str, str] | None = None,
) -> Any:  # a tensor, or a tuple of ``outputs`` of them
    """Run the student's ``fn`` without gradients (:func:`call_student`: a crash is a
    :class:`Mistake` naming the function and the student's line, followed by ``shapes``, what
    the inputs are); a wrong number of outputs is a Mistake too."""
    out = call_student(
        name,
        fn,
        *args,
        forbidden=forbidden,
        forbidden_files=forbidden_files,
        no_grad=True,
        context=shapes,
    )
    if outputs == 1:
        if isinstance(out, tuple):
            raise Mistake(f"{name} returned a tuple; return one tensor")
        return out
    if not isinstance(out, tuple) or len(out) != outputs:
        raise Mistake(f"{name} must return a tuple of {outputs} tensors")
    return out


def check_shape(name: str, got: object, expected: tuple[int, ...] | torch.Size) -> Tensor:
    """Raise :class:`Mistake` unless ``got`` is a tensor of shape ``expected``."""
    if not isinstance(got, Tensor):
        raise Mistake(f"{name} must return a torch.Tensor, got {type(got).__name__}")
    if tuple(got.shape) != tuple(expected):
        raise Mistake(
            f"{name} returned shape {list(got.shape)}, expected {list(expected)}: "
            f"check which dimension you reduced (or forgot to reduce)"
        )
    return got


def check_padding_kept_out(
    name: str, got: object, shape: tuple[int, ...] | torch.Size, fix: str
) -> Tensor:
    """``got`` as a tensor of ``shape`` (:func:`check_shape`) without NaN, for sums over padded
    sequences whose padding holds NaN: a NaN result means the padding leaked in, and ``fix``
    (what follows "the padding holds NaN here") says how to keep it out."""
    got = check_shape(name, got, shape)
    if not torch.isfinite(got.detach()).all():
        raise Mistake(f"{name} returned NaN: the padding holds NaN here{fix}")
    return got


def check_dtype(name: str, got: Tensor, dtype: torch.dtype) -> None:
    """Raise :class:`Mistake` unless ``got`` has the inputs' floating ``dtype``."""
    if got.dtype != dtype:
        raise Mistake(
            f"{name} returned {got.dtype} for {dtype} inputs: precision is lost or invented on "
            f"the way. A tensor made without dtype= (torch.tensor(...), torch.zeros(...), "
            f"torch.ones(...)) is float32; make new tensors from the inputs (x.new_zeros, "
            f"torch.zeros_like, dtype=x.dtype) and do not call .float() or .double()"
        )


def close(got: Tensor, expected: Tensor, dtype: torch.dtype) -> bool:
    """``got`` equals ``expected`` within the precision of ``dtype`` (compared in float64)."""
    rtol, atol = TOLERANCES.get(dtype, TOLERANCES[torch.float32])
    if tuple(got.shape) != tuple(expected.shape):
        return False
    got, expected = got.detach().double(), expected.detach().double()
    scale = max(1.0, expected.abs().max().item()) if expected.numel() else 1.0
    return bool(torch.allclose(got, expected, rtol=rtol, atol=atol * scale))


def check_close(
    name: str,
    got: object,
    expected: Tensor,
    hints: dict[str, Tensor] | None = None,
    dtype: torch.dtype | None = None,
) -> None:
    """Raise :class:`Mistake` unless ``got`` is a tensor of ``expected``'s shape, of the
    inputs' ``dtype`` (default ``expected.dtype``), equal to ``expected`` within that dtype's
    precision. ``hints`` maps the description of a typical mistake to the value that mistake
    would give; a match is named."""
    dtype = expected.dtype if dtype is None else dtype
    got = check_shape(name, got, expected.shape)
    check_dtype(name, got, dtype)
    if not torch.isfinite(got.detach()).all():
        raise Mistake(f"{name} returned NaN or inf values")
    if close(got, expected, dtype):
        return
    for mistake, value in (hints or {}).items():
        if close(got, value, dtype):
            raise Mistake(f"{name} is not right: {mistake}")
    error = (got.detach().double() - expected.double()).abs().max().item()
    raise Mistake(
        f"{name} is off by up to {error:.3g} (largest absolute difference from the "
        f"library's answer on random {dtype} inputs; that precision allows "
        f"{TOLERANCES.get(dtype, TOLERANCES[torch.float32])[0]:g} relative)"
    )


def cast(dtype: torch.dtype, *tensors: Tensor) -> tuple[tuple[Tensor, ...], tuple[Tensor, ...]]:
    """``(inputs in dtype, the same values in float64)``: a float32 case is rounded first, so
    the float64 reference sees exactly the student's inputs."""
    low = tuple(t.to(dtype) for t in tensors)
    return low, tuple(t.double() for t in low)


# ---------------------------------------------------------------- replaced checkers / library

_WATCHED: list[tuple[object, str, object]] = []


def _snapshot(owner: object, names: Iterable[str]) -> None:
    for attr in names:
        _WATCHED.append((owner, attr, getattr(owner, attr)))


def watch_module(module: types.ModuleType) -> None:
    """Remember ``module``'s checkers (``check_*``) so that :func:`check_untouched` notices a
    replacement made from an answer cell."""
    _snapshot(module, [n for n in vars(module) if n.startswith("check_")])


def check_untouched() -> None:
    """Raise :class:`Mistake` if a checker, a function they rely on or a library function the
    exercises compare with was replaced since vaelab.exercises was imported."""
    for owner, attr, original in _WATCHED:
        if getattr(owner, attr, None) is not original:
            where = getattr(owner, "__name__", type(owner).__name__)
            raise Mistake(
                f"{where}.{attr} was replaced after vaelab.exercises was imported; "
                f"grading uses the original. Remove the assignment to {attr} from "
                f"your cell and restart the kernel"
            )


_snapshot(torch, ["allclose", "isfinite", "equal", "logsumexp", "randn", "tanh", "exp"])
_snapshot(torch.autograd, ["grad"])
_snapshot(torch.distributions, ["kl_divergence"])
_snapshot(
    sys.modules[__name__],
    ["check_close", "check_shape", "check_dtype", "close", "call_student", "Mistake"],
)
