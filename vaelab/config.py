"""Building models and training configs from plain values: ``key=value`` overrides as the CLI
and the dashboard take them, the data spec a checkpoint records, and a model sized for its data.
"""

from __future__ import annotations

import ast
import dataclasses
import numbers
import types
import typing

from vaelab import MODELS
from vaelab.data import Data
from vaelab.protocol import Model


def parse_sets(pairs: list[str], flag: str = "--set") -> dict:
    """``["z_dim=8", "hidden_dims=[64,64]"]`` -> dict, values parsed as Python literals."""
    out: dict[str, object] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"{flag} takes key=value, got {pair!r}")
        if key in out:
            raise ValueError(f"{flag} sets {key} twice; give each key once")
        if value.lower() in ("true", "false"):  # analytic_kl=false as well as =False
            out[key] = value.lower() == "true"
            continue
        try:
            out[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            out[key] = value  # a bare string such as likelihood=gaussian
    return out


def data_spec(name: str, path: str | None, options: dict) -> dict:
    """How to reload a data set: ``{"name": ..., "path": ..., **loader options}``."""
    spec = {"name": name, **options}
    if path is not None:
        spec["path"] = path
    return spec


def make_model(name: str, train: Data, overrides: dict) -> Model:
    """Model ``name`` sized for the data (``x_dim``, ``a_dim``), with config overrides."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose one of {sorted(MODELS)}")
    config_cls, model_cls = MODELS[name]
    fields = {f.name for f in dataclasses.fields(config_cls)}
    overrides = check_types(config_cls, overrides)
    sized = {"x_dim": train.x_dim}
    if "a_dim" in fields:
        sized["a_dim"] = train.a_dim
    return model_cls(config_cls(**{**sized, **overrides}))


_PLURAL = {int: "integers", float: "numbers", str: "strings", bool: "booleans"}


def _describe(hint) -> str:
    """A type hint in words, for error messages."""
    if hint is type(None):
        return "None"
    origin = typing.get_origin(hint)
    if origin in (types.UnionType, typing.Union):
        return " or ".join(_describe(h) for h in typing.get_args(hint))
    if origin is list:
        return f"a list of {_PLURAL.get(typing.get_args(hint)[0], 'values')}, e.g. [64,64]"
    if origin is tuple:
        args = typing.get_args(hint)
        return (
            f"a pair of {_PLURAL.get(args[0], 'values')}, e.g. (0.9,0.999)"
            if len(args) == 2
            else "a tuple"
        )
    return {int: "an integer", float: "a number", bool: "true or false", str: "a string"}.get(
        hint, getattr(hint, "__name__", str(hint))
    )


_NON_FINITE = {"nan", "inf", "+inf", "-inf", "infinity", "+infinity", "-infinity"}


def _conform_scalar(value, hint):
    """``value`` as the plain type ``hint`` (bool, int, float, str; numpy's numbers too), or
    raise ``TypeError``; an int is a float, a bool is neither, "nan" and "inf" are floats."""
    kinds = {
        bool: lambda v: isinstance(v, bool),
        int: lambda v: isinstance(v, numbers.Integral) and not isinstance(v, bool),
        float: lambda v: isinstance(v, numbers.Real) and not isinstance(v, bool),
        str: lambda v: isinstance(v, str),
    }
    if hint not in kinds:
        return value  # a type configs do not use: left to the config's own checks
    if hint is float and isinstance(value, str) and value.strip().lower() in _NON_FINITE:
        return float(value)  # clip_norm=inf is meant; min_scale=nan the config refuses by rule
    if not kinds[hint](value):
        raise TypeError
    return hint(value)


def _conform(value, hint):
    """``value`` as type ``hint`` (an int is a float; a list or tuple a tuple), or raise
    ``TypeError``. Only the plain types configs use are known."""
    if hint is type(None):
        if value is None:
            return None
        raise TypeError
    origin = typing.get_origin(hint)
    if origin in (types.UnionType, typing.Union):
        for h in typing.get_args(hint):
            try:
                return _conform(value, h)
            except TypeError:
                pass
        raise TypeError
    if origin not in (list, tuple):
        return _conform_scalar(value, hint)
    if not isinstance(value, (list, tuple)):
        raise TypeError
    args = typing.get_args(hint)
    if origin is list:
        return [_conform(v, args[0]) for v in value]
    if len(args) != len(value):
        raise TypeError
    return tuple(_conform(v, h) for v, h in zip(value, args, strict=True))


def check_types(config_cls: type, values: dict, flag: str = "--set") -> dict:
    """``values`` checked against the field types of dataclass ``config_cls``; returns them
    with ints widened to floats and lists to tuples where the field says so.

    Raises ``ValueError`` naming the first unknown field or wrongly typed value (as the CLI's
    ``flag`` would take it, e.g. ``--set z_dim=abc``) and what it should be.
    """
    hints = typing.get_type_hints(config_cls)
    fields = [f.name for f in dataclasses.fields(config_cls)]
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise ValueError(
            f"{config_cls.__name__} has no field(s) {unknown}; fields are {sorted(fields)}"
        )
    out = {}
    for key, value in values.items():
        try:
            out[key] = _conform(value, hints[key])
        except TypeError:
            raise ValueError(
                f"{flag} {key}={value!r} has the wrong type: {config_cls.__name__}.{key} "
                f"takes {_describe(hints[key])}"
            ) from None
    return out
