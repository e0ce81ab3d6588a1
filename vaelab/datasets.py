"""The registry of data sets by name: ``load_dataset("jsb")``, ``DATASETS``.

It sits above :mod:`vaelab.data` (batches, files) and :mod:`vaelab.systems` (simulated
dynamical systems), so that imports flow one way: data -> kalman -> systems -> datasets.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable

from vaelab import systems
from vaelab.data import Data, load_digits, load_jsb, load_mnist, load_moons, load_polyphonic

Loader = Callable[..., tuple[Data, Data, Data]]


def _needs_path(loader: Loader, what: str) -> Loader:
    def load(path: str | None = None, **kw):
        if path is None:
            raise ValueError(f"this data set needs a path: pass {what}")
        return loader(path, **kw)
    load.__signature__ = inspect.signature(loader)  # the loader's real options, for checks
    return load


DATASETS: dict[str, Loader] = {
    "digits": load_digits,
    "mnist": _needs_path(load_mnist, "the folder of the MNIST IDX files"),
    "jsb": load_jsb,
    "polyphonic": _needs_path(load_polyphonic, "a polyphonic-music .pickle file"),
    "linear": systems.load_linear,
    "pendulum": systems.load_pendulum,
    "arrays": _needs_path(systems.load_arrays, "an .npz file with x [N, T, X] (and a)"),
    "moons": load_moons,
}


def load_dataset(name: str, **kw) -> tuple[Data, Data, Data]:
    """Load a data set by name (see ``DATASETS``); keyword arguments go to its loader."""
    if name not in DATASETS:
        raise ValueError(f"unknown data set {name!r}; choose one of {sorted(DATASETS)}")
    try:
        return DATASETS[name](**kw)
    except TypeError as e:  # an option this loader does not take, e.g. transpose for digits
        if "unexpected keyword argument" not in str(e):
            raise
        raise ValueError(f"data set {name!r} has no such option ({e}); drop it or pick a data "
                         f"set that takes it") from None
