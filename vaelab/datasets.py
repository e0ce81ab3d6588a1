"""The registry of data sets by name: ``load_dataset("jsb")``, ``DATASETS``, and the check of
a data spec (``{"name": ..., "path": ..., **options}``, what a checkpoint records).

It sits above :mod:`vaelab.data` (batches, files) and :mod:`vaelab.systems` (simulated
dynamical systems), so that imports flow one way: data -> kalman -> systems -> datasets.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable
from pathlib import Path

from vaelab import systems
from vaelab.data import Data, load_digits, load_jsb, load_mnist, load_moons, load_polyphonic
from vaelab.writes import not_a_file

Loader = Callable[..., tuple[Data, Data, Data]]


class _PathLoader:
    """A loader that reads ``path``, a file or folder: ``path_what`` describes it for error
    messages, ``path_kind`` is ``"file"`` or ``"folder"``. Calling it without a path raises a
    ``ValueError`` saying what to pass."""

    def __init__(self, loader: Loader, what: str, kind: str) -> None:
        self.loader = loader
        self.path_what, self.path_kind = what, kind
        self.__signature__ = inspect.signature(loader)  # the loader's real options, for checks
        self.__doc__ = loader.__doc__

    def __call__(self, path: str | None = None, **kw: object) -> tuple[Data, Data, Data]:
        if path is None:
            raise ValueError(f"this data set needs a path: pass {self.path_what}")
        return self.loader(path, **kw)


def _needs_path(loader: Loader, what: str, kind: str) -> _PathLoader:
    return _PathLoader(loader, what, kind)


DATASETS: dict[str, Loader] = {
    "digits": load_digits,
    "mnist": _needs_path(load_mnist, "the folder of the MNIST IDX files", "folder"),
    "jsb": load_jsb,
    "polyphonic": _needs_path(load_polyphonic, "a polyphonic-music .pickle file", "file"),
    "linear": systems.load_linear,
    "pendulum": systems.load_pendulum,
    "arrays": _needs_path(systems.load_arrays, "an .npz file with x [N, T, X] (and a)", "file"),
    "moons": load_moons,
}


def _plain(value: object) -> bool:
    """A JSON-like value: a number, str, bool, None, or a list/tuple of such values."""
    if value is None or isinstance(value, bool | int | float | str):
        return True
    return isinstance(value, list | tuple) and all(_plain(v) for v in value)


def loader_options(name: str) -> list[str]:
    """The options (keyword arguments) that data set ``name``'s loader takes, ``path`` too."""
    params = inspect.signature(DATASETS[name]).parameters.values()
    # "name" is the data set's in a spec, so a loader's own "name" (load_arrays) is not an option
    return [
        p.name
        for p in params
        if p.name != "name" and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
    ]


def with_defaults(spec: dict) -> dict:
    """``spec`` with every loader option it leaves out at its loader's default, so that two
    specs of the same data compare equal however they were written (``binarize=True`` is
    digits' default)."""
    loader = DATASETS.get(spec.get("name"))  # type: ignore[arg-type]
    if loader is None:
        return dict(spec)
    defaults = {
        p.name: p.default
        for p in inspect.signature(loader).parameters.values()
        if p.name not in ("name", "path")
        and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
        and p.default is not p.empty
    }
    return {**defaults, **spec}


def validate_data_spec(spec: object) -> dict:
    """Check a data spec before anything is read from it, and return it as a new dict.

    A data spec is data, not a command: a dict whose ``name`` is a key of ``DATASETS``, whose
    other keys are the parameters of that data set's loader, whose ``path`` (for the loaders
    that read a file or folder) is a str naming a file or folder that exists, as the loader
    needs, and whose options are plain values (numbers, strs, bools, None, lists of them).
    Raises ``ValueError`` (``FileNotFoundError`` for a missing path) naming the field and the
    fix.
    """
    if not isinstance(spec, dict):
        raise ValueError(
            f"a data spec must be a dict {{'name': ..., 'path': ..., **options}}, "
            f"got {type(spec).__name__}"
        )
    if "name" not in spec:
        raise ValueError(
            f"the data spec {spec!r:.80} has no 'name'; add one of {sorted(DATASETS)}"
        )
    name = spec["name"]
    if not isinstance(name, str) or name not in DATASETS:
        raise ValueError(f"unknown data set {name!r}; choose one of {sorted(DATASETS)}")
    options = loader_options(name)
    unknown = sorted(str(k) for k in spec if k != "name" and k not in options)
    if "path" in unknown and spec["path"] is not None:
        raise ValueError(
            f"data set {name!r} is built in and reads no file, so it takes no path "
            f"(--data-path {spec['path']}); drop --data-path, or pick a data set that reads one "
            f"({', '.join(sorted(n for n in DATASETS if 'path' in loader_options(n)))})"
        )
    if unknown and not (unknown == ["path"] and spec["path"] is None):
        takes = [o for o in options if o != "path"]
        raise ValueError(
            f"data set {name!r} has no such option(s) {unknown}; its options are "
            f"{takes or 'none'}: drop the others or pick a data set that takes them"
        )
    out = {"name": name}
    for key, value in spec.items():
        if key in ("name", "path"):
            continue
        if not _plain(value):
            raise ValueError(
                f"data option {key}={value!r:.60} (type {type(value).__name__}) is "
                f"not a plain value; options are numbers, strs, bools, None or "
                f"lists of them"
            )
        out[key] = value
    if "path" in options:
        out["path"] = _check_spec_path(name, spec.get("path"))
    return out


def _check_spec_path(name: str, path: object) -> str:
    loader = DATASETS[name]
    if not isinstance(loader, _PathLoader):
        raise ValueError(
            f"data set {name!r} takes a path but its loader does not say what it reads; "
            f"register it as vaelab.datasets._needs_path(loader, what, 'file' or 'folder')"
        )
    what_to_pass, kind = loader.path_what, loader.path_kind
    if path is None:
        raise ValueError(f"data set {name!r} needs a path: pass {what_to_pass}")
    if isinstance(path, os.PathLike):
        path = os.fspath(path)
    if not isinstance(path, str) or not path:
        raise ValueError(
            f"data set {name!r}: path must be a non-empty str, {what_to_pass}; got "
            f"{path!r:.60} (type {type(path).__name__})"
        )
    problem = not_a_file(Path(path))  # the same checks as a checkpoint's
    if problem is not None and not (kind == "folder" and problem[1] == "is a folder"):
        error, what = problem
        if what == "does not exist":
            raise FileNotFoundError(
                f"data set {name!r}: path {path} does not exist; pass {what_to_pass} "
                f"(a checkpoint records the path it was trained from: put the "
                f"data back there or name it again)"
            )
        if what == "is a folder":
            raise ValueError(
                f"data set {name!r}: path {path} is a folder, but this data set reads "
                f"a file; pass {what_to_pass}"
            )
        raise error(f"data set {name!r}: path {path} {what}; pass {what_to_pass}")
    if kind == "folder" and not Path(path).is_dir():
        raise ValueError(
            f"data set {name!r}: path {path} is a file, but this data set reads a "
            f"folder; pass {what_to_pass}"
        )
    return path


def load_dataset(name: str | None = None, **kw) -> tuple[Data, Data, Data]:
    """Load a data set by name (see ``DATASETS``); keyword arguments go to its loader. The spec
    ``{"name": name, **kw}`` is checked by :func:`validate_data_spec` before anything is read
    (``load_dataset(**spec)`` of a spec without a name says so)."""
    spec = validate_data_spec(kw if name is None else {"name": name, **kw})
    return DATASETS[spec["name"]](**{k: v for k, v in spec.items() if k != "name"})
