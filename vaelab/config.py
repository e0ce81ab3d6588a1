"""Building models and training configs from plain values: ``key=value`` overrides as the CLI
and the dashboard take them, the data spec a checkpoint records, and a model sized for its data.
"""

from __future__ import annotations

import ast
import dataclasses

from torch import nn

from vaelab import MODELS
from vaelab.data import Data


def parse_sets(pairs: list[str], flag: str = "--set") -> dict:
    """``["z_dim=8", "hidden_dims=[64,64]"]`` -> dict, values parsed as Python literals."""
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"{flag} takes key=value, got {pair!r}")
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


def make_model(name: str, train: Data, overrides: dict) -> nn.Module:
    """Model ``name`` sized for the data (``x_dim``, ``a_dim``), with config overrides."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose one of {sorted(MODELS)}")
    config_cls, model_cls = MODELS[name]
    fields = {f.name for f in dataclasses.fields(config_cls)}
    unknown = set(overrides) - fields
    if unknown:
        raise ValueError(f"{config_cls.__name__} has no field(s) {sorted(unknown)}; "
                         f"fields are {sorted(fields)}")
    sized = {"x_dim": train.x_dim}
    if "a_dim" in fields:
        sized["a_dim"] = train.a_dim
    return model_cls(config_cls(**{**sized, **overrides}))
