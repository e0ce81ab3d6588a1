"""Hosting limits (how many runs, how long, where data may come from), read from the
environment, and the checks of paths and data specs against them."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

from vaelab.datasets import DATASETS


def _int_env(env: dict, key: str, default: int) -> int:
    try:
        value = int(env.get(key, default))
    except ValueError:
        raise ValueError(
            f"{key}={env[key]!r} is not a whole number; set it to e.g. {key}={default}"
        ) from None
    if value < 0:
        raise ValueError(f"{key} must be >= 0, got {value}")
    return value


@dataclasses.dataclass(frozen=True)
class Hosting:
    """How the dashboard is served. ``hosted`` (``VAELAB_HOSTED=1``) serves a class: the runs
    root is fixed, no server path is typed, listed or read (uploads only, at most
    ``max_upload_bytes``), data specs name built-in data sets or files under ``data_root``,
    runs are capped in parameters, steps and wall time, and the runs of a session that has
    gone stop after ``grace_seconds``. At most ``max_running`` runs train at once in either
    mode; the rest wait in a queue. A cap of 0 means no cap."""

    hosted: bool = False
    root: Path = Path("runs")
    data_root: Path | None = None
    max_running: int = max(1, os.cpu_count() or 1)
    max_params: int = 0
    max_steps: int = 0
    max_seconds: float = 0.0
    max_upload_bytes: int = 200 * 2**20
    grace_seconds: float = 0.0

    @classmethod
    def from_env(cls, env: dict | None = None) -> Hosting:
        """The settings from the environment: ``VAELAB_HOSTED`` (1 = hosted),
        ``VAELAB_RUNS_ROOT`` (default ``runs``), ``VAELAB_DATA_ROOT``, ``VAELAB_MAX_RUNS``
        (default: the number of cores), and in hosted mode ``VAELAB_MAX_PARAMS`` (default
        2,000,000), ``VAELAB_MAX_STEPS`` (20,000), ``VAELAB_MAX_MINUTES`` (30),
        ``VAELAB_MAX_UPLOAD_MB`` (50), ``VAELAB_GRACE_SECONDS`` (120)."""
        env = dict(os.environ if env is None else env)
        hosted = env.get("VAELAB_HOSTED", "0").strip().lower() in ("1", "true", "yes")
        cores = max(1, os.cpu_count() or 1)
        data_root = env.get("VAELAB_DATA_ROOT")
        root = Path(env.get("VAELAB_RUNS_ROOT", "runs"))
        data = Path(data_root).resolve() if data_root else None
        running = max(1, _int_env(env, "VAELAB_MAX_RUNS", cores))
        if not hosted:
            return cls(hosted=False, root=root, data_root=data, max_running=running)
        return cls(
            hosted=True,
            root=root,
            data_root=data,
            max_running=running,
            max_params=_int_env(env, "VAELAB_MAX_PARAMS", 2_000_000),
            max_steps=_int_env(env, "VAELAB_MAX_STEPS", 20_000),
            max_seconds=60.0 * _int_env(env, "VAELAB_MAX_MINUTES", 30),
            max_upload_bytes=_int_env(env, "VAELAB_MAX_UPLOAD_MB", 50) * 2**20,
            grace_seconds=float(_int_env(env, "VAELAB_GRACE_SECONDS", 120)),
        )


def inside(root: str | Path, path: str | Path) -> Path:
    """``path`` resolved (links followed); raises ``ValueError`` when it lies outside
    ``root``, so no request can read or write elsewhere on the server."""
    root_, path_ = Path(root).resolve(), Path(path).resolve()
    if path_ != root_ and root_ not in path_.parents:
        raise ValueError(
            f"{Path(path).name or path} is outside the folder this dashboard may "
            f"use; choose a run or file inside it"
        )
    return path_


def check_data_spec(spec: dict, hosting: Hosting) -> dict:
    """A data spec (``{"name", "path"?, ...}``, e.g. from an uploaded checkpoint) that this
    server may load: a known data set, and in hosted mode a path only under the configured
    data root. Raises ``ValueError`` naming the problem and what is allowed."""
    name = spec.get("name")
    if name not in DATASETS:
        raise ValueError(f"data set {name!r} is unknown; use one of {', '.join(DATASETS)}")
    if "path" in spec and hosting.hosted:
        if hosting.data_root is None:
            raise ValueError(
                f"this server loads only built-in data sets; {name} from a file "
                f"is not available here: train on a built-in data set"
            )
        try:
            inside(hosting.data_root, hosting.data_root / str(spec["path"]))
        except ValueError:
            raise ValueError(
                f"the data file of this {name} run is outside the server's data "
                f"folder; only files the instructor put there can be used"
            ) from None
    return spec
