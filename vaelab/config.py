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
    """``["z_dim=8", "hidden_dims=[64,64]"]`` -> dict, values parsed as Python literals; a
    nested config's field keeps its dotted key (``compat.rnn_type``)."""
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
    sized = {"x_dim": train.x_dim}
    if "a_dim" in fields:
        sized["a_dim"] = train.a_dim
    return model_cls(build_config(config_cls, {**sized, **overrides}))


def flat(values: dict) -> dict:
    """Config values keyed as ``--set`` takes them: a nested config (a dataclass, or the dict
    ``asdict`` makes of it) becomes dotted keys, ``{"compat": {"rnn_type": "lstm"}}`` ->
    ``{"compat.rnn_type": "lstm"}``. Later keys win, so ``{**stored, **given}`` layers."""
    out: dict = {}
    for key, value in values.items():
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            value = dataclasses.asdict(value)
        if isinstance(value, dict):
            out.update({f"{key}.{k}": v for k, v in flat(value).items()})
        else:
            out[key] = value
    return out


def build_config(config_cls: type, values: dict, flag: str = "--set") -> typing.Any:
    """``config_cls`` from ``values`` (plain, dotted or nested keys, as :func:`flat` takes),
    checked by :func:`check_types`; a nested config's fields left out keep its defaults."""
    hints = typing.get_type_hints(config_cls)
    kwargs: dict = {}
    for key, value in check_types(config_cls, values, flag).items():
        outer, dot, inner = key.partition(".")
        if dot:
            kwargs.setdefault(outer, {})[inner] = value
        else:
            kwargs[key] = value
    for key, value in kwargs.items():
        if isinstance(value, dict):
            kwargs[key] = build_config(hints[key], value, flag)
    return config_cls(**kwargs)


def config_keys(config_cls: type) -> list[str]:
    """The keys ``--set`` takes for ``config_cls``: its fields, a nested config's dotted."""
    hints = typing.get_type_hints(config_cls)
    keys = []
    for f in dataclasses.fields(config_cls):
        if dataclasses.is_dataclass(hints[f.name]):
            keys += [f"{f.name}.{k}" for k in config_keys(hints[f.name])]
        else:
            keys.append(f.name)
    return keys


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
    keyed as :func:`flat` keys them (a nested config's fields dotted), with ints widened to
    floats and lists to tuples where the field says so.

    Raises ``ValueError`` naming the first unknown field or wrongly typed value (as the CLI's
    ``flag`` would take it, e.g. ``--set z_dim=abc``) and what it should be; a field that
    moved into a nested config is named with its new key.
    """
    hints = typing.get_type_hints(config_cls)
    flattened: dict = {}
    for key, value in values.items():
        nested = key in hints and dataclasses.is_dataclass(hints[key])
        if nested and not isinstance(value, (dict, hints[key])):
            first = config_keys(hints[key])[0]
            raise ValueError(
                f"{flag} {key}={value!r} has the wrong type: {config_cls.__name__}.{key} "
                f"holds settings of its own; set each, e.g. {flag} {key}.{first}=..."
            )
        flattened.update(flat({key: value}) if nested else {key: value})
    values = flattened
    keys = config_keys(config_cls)
    unknown = sorted(set(values) - set(keys))
    if unknown:
        moved = {k.rpartition(".")[2]: k for k in keys if "." in k}
        old = next((k for k in unknown if k in moved), None)
        if old is not None:
            value = values[old]
            shown = value if isinstance(value, str) else repr(value)
            raise ValueError(f"{old} is now {moved[old]}: use {flag} {moved[old]}={shown}")
        raise ValueError(
            f"{config_cls.__name__} has no field(s) {unknown}; fields are {sorted(keys)}"
        )
    out = {}
    for key, value in values.items():
        owner, name = config_cls, key
        while "." in name:  # a nested config's field
            outer, _, name = name.partition(".")
            owner = typing.get_type_hints(owner)[outer]
        hint = typing.get_type_hints(owner)[name]
        try:
            out[key] = _conform(value, hint)
        except TypeError:
            raise ValueError(
                f"{flag} {key}={value!r} has the wrong type: {config_cls.__name__}.{key} "
                f"takes {_describe(hint)}"
            ) from None
    return out
