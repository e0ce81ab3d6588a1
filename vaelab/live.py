"""The dashboard's helpers, without Streamlit: which data sets a model may train on, the
checks of a run request (sizes, caps) and of an uploaded checkpoint, and the fixed validation
view the figures draw. Training itself runs in processes over run folders
(:mod:`vaelab.runs`); the charts are :mod:`vaelab.charts`.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import tempfile
from pathlib import Path

import torch
from torch import Tensor

from vaelab import MODELS
from vaelab.config import check_types, make_model
from vaelab.data import Batch, Data
from vaelab.datasets import DATASETS, load_dataset
from vaelab.diagnostics import (  # noqa: F401  (the dashboard's names for them)
    ACTIVE_THRESHOLD,
    active_units,
    diagnose,
    has_latents,
    kl_per_dim,
    latent_activity,
    observed,
    reference_metrics,
)
from vaelab.protocol import Model, discrete_levels, model_class  # noqa: F401  (a live name)
from vaelab.train import TrainConfig, load_checkpoint


def dataset_needs_path(name: str) -> bool:
    """True when loader ``DATASETS[name]`` takes a ``path`` (a file or folder on disk)."""
    if name not in DATASETS:
        raise ValueError(f"unknown data set {name!r}; choose one of {sorted(DATASETS)}")
    return "path" in inspect.signature(DATASETS[name]).parameters


@torch.no_grad()
def check_compatible(model: Model, data: Data, n: int = 2) -> None:
    """Raise ``ValueError`` with the model's own message if ``model.elbo`` rejects a batch of
    ``data`` (e.g. a static model on sequences), before any training process is started."""
    batch = data.batch(torch.arange(min(n, len(data))))
    device = next(model.parameters()).device
    try:
        terms = model.elbo(batch.to(device))
    except (ValueError, RuntimeError, TypeError) as e:
        raise ValueError(f"{model.name} cannot train on {data.name}: {e}") from None
    if terms.log_likelihood.shape != (len(batch),):
        raise ValueError(f"elbo must return [B] terms, got {list(terms.log_likelihood.shape)}")


@functools.cache
def builtin_dataset(name: str) -> tuple[Data, Data, Data]:
    """``load_dataset(name)`` of a built-in data set (no path), loaded once per process."""
    if dataset_needs_path(name):
        raise ValueError(f"data set {name!r} needs a path; load it with load_dataset")
    return load_dataset(name)


def incompatibility(model_name: str, data: Data) -> str | None:
    """Why model ``model_name`` (default config, sized for ``data``) cannot train on ``data``,
    in a newcomer's words, or None when it can: the model's own
    :meth:`~vaelab.protocol.Model.incompatibility`, the rule the CLI applies too."""
    model = model_class(model_name)(make_model(model_name, data, {}).config)
    return model.incompatibility(data)


@functools.cache
def _accepted(model_name: str) -> tuple[tuple[str, str | None], ...]:
    return tuple(
        (
            name,
            None
            if dataset_needs_path(name)
            else incompatibility(model_name, builtin_dataset(name)[0]),
        )
        for name in DATASETS
    )


def accepted_data(model_name: str) -> dict[str, str | None]:
    """Every data set of ``DATASETS`` -> None if model ``model_name`` accepts it, else the
    reason it does not. Built-in data sets are checked once per process; those that need a
    path are listed as accepted (their data are checked when training starts)."""
    if model_name not in MODELS:
        raise ValueError(f"unknown model {model_name!r}; choose one of {sorted(MODELS)}")
    return dict(_accepted(model_name))


# ----------------------------------------------------------------------------- checkpoints


def read_upload(name: str, content: bytes) -> dict:
    """Check the bytes of an uploaded checkpoint; returns its :func:`summary`.

    They are read like any checkpoint (``weights_only=True``, from a temporary folder that
    is removed at once). Raises ``ValueError`` with a short message for the page, without
    torch's own text or any server path.
    """
    with tempfile.TemporaryDirectory(prefix="vaelab-upload-") as folder:
        path = Path(folder) / "checkpoint.pt"
        path.write_bytes(content)
        try:
            ckpt = load_checkpoint(path)
        except (ValueError, FileNotFoundError):
            ckpt = None
    if ckpt is None or not isinstance(ckpt.get("step"), int):
        raise ValueError(
            f"{name} is not a vaelab checkpoint: only a checkpoint.pt written by "
            f"vaelab training (the dashboard or 'python -m vaelab train') can be "
            f"uploaded"
        )
    if ckpt.get("model") not in MODELS:
        raise ValueError(
            f"{name} holds a model vaelab does not know ({ckpt.get('model')!r}); "
            f"models are {', '.join(MODELS)}"
        )
    return summary(ckpt)


def _size(n: int) -> str:
    return f"{n / 2**20:.1f} MB" if n >= 2**20 else f"{n / 2**10:.1f} KB"


def check_upload(name: str, content: bytes, hosting) -> dict:
    """An uploaded checkpoint this server may continue: at most ``hosting.max_upload_bytes``,
    a vaelab checkpoint (:func:`read_upload`), a data spec it may load
    (:func:`vaelab.runs.check_data_spec`) and a model within the parameter cap. Returns its
    :func:`summary`; raises ``ValueError`` saying which check failed."""
    from vaelab.runs import check_data_spec

    if len(content) > hosting.max_upload_bytes:
        raise ValueError(
            f"{name} is {_size(len(content))}, over this server's "
            f"{_size(hosting.max_upload_bytes)} cap"
        )
    info = read_upload(name, content)
    check_data_spec(info["data"], hosting)
    if hosting.max_params and info["params"] > hosting.max_params:
        raise ValueError(
            f"{name} holds {info['params']:,} parameters, over this server's cap "
            f"of {hosting.max_params:,}"
        )
    return info


def summary(ckpt: dict) -> dict:
    """``{"model", "step", "epoch", "data", "text", "remaining"}`` of a checkpoint dict:
    ``text`` is ``"<model> at step N"``, ``remaining`` is :func:`remaining`."""
    params = sum(
        t.numel() for t in (ckpt.get("state_dict") or {}).values() if isinstance(t, torch.Tensor)
    )
    return {
        "model": ckpt["model"],
        "step": ckpt["step"],
        "epoch": ckpt["epoch"],
        "data": dict(ckpt.get("data") or {}),
        "remaining": remaining(ckpt),
        "params": params,
        "text": f"{ckpt['model']} at step {ckpt['step']}",
    }


def remaining(ckpt: dict) -> str | None:
    """None when checkpoint ``ckpt`` has training left to do, else why not (it reached its
    epochs or max steps)."""
    config = ckpt["train_config"]
    if config.get("max_steps") is not None and ckpt["step"] >= config["max_steps"]:
        return f"it reached its max steps ({config['max_steps']})"
    if ckpt["epoch"] >= config["epochs"]:
        return f"it reached its {config['epochs']} epochs"
    return None


@functools.lru_cache(maxsize=64)
def _summary(path: str, mtime_ns: int) -> dict:
    return summary(load_checkpoint(path))


def checkpoint_summary(path: str | Path) -> dict:
    """:func:`summary` of the checkpoint file at ``path``, read again only when the file
    changes. Raises ``FileNotFoundError`` / ``ValueError`` as :func:`load_checkpoint`."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} not found; give the path of a checkpoint.pt")
    return dict(_summary(str(path.resolve()), path.stat().st_mtime_ns))


@dataclasses.dataclass
class View:
    """A fixed set of validation examples for the figures: ``batch`` (fixed binarisation),
    ``info`` (``Data.info`` without the labels) and ``labels [B]`` when the data has them."""

    batch: Batch
    info: dict
    labels: Tensor | None = None


def make_view(train: Data, val: Data | None, size: int | None = None) -> View:
    """The first ``size`` examples of ``val`` (of ``train`` when there is no validation set):
    by default 8 sequences or 256 static examples."""
    data = val if val is not None and len(val) else train
    size = size or (8 if data.is_sequence else 256)
    index = torch.arange(min(len(data), size))
    info = dict(data.info or {})
    labels = info.pop("labels", None)
    return View(
        data.batch(index, torch.Generator().manual_seed(0)),
        info,
        None if labels is None else labels[index],
    )


@torch.no_grad()
def sample_piano_roll(model: Model, steps: int) -> Tensor:
    """Returns a sampled piano roll ``[steps, X]`` of 0/1 notes: each note drawn with the
    emitter mean E[x_t | z_t] of ``model.sample`` as its probability. A Gaussian emitter
    (the SSM on piano rolls) has means outside [0, 1]: they are clipped to [0, 1] first."""
    _, mean = model.sample(1, steps=steps)
    return torch.bernoulli(mean[0].clamp(0.0, 1.0)).cpu()


def observed_steps(batch: Batch, index: int) -> int:
    """The number of observed time steps of sequence ``index`` of ``batch`` (``x [B, T, X]``,
    padding at the end)."""
    if batch.x.dim() != 3:
        raise ValueError(f"observed_steps needs sequences x [B, T, X], got {list(batch.x.shape)}")
    return int(batch.mask[index].sum()) if batch.mask is not None else batch.x.shape[1]


# ----------------------------------------------------------------------------- run requests


def count_parameters(model_name: str, data: Data, overrides: dict) -> int:
    """The number of parameters of model ``model_name`` sized for ``data`` with config
    ``overrides``, built on the meta device (no memory is allocated, so a huge request costs
    nothing). Raises ``ValueError`` naming the values when the model cannot be built."""
    try:
        with torch.device("meta"):
            model = make_model(model_name, data, overrides)
    except ValueError:
        raise
    except Exception as e:  # noqa: BLE001  (any failure of a model built from typed values)
        fields = ", ".join(f"{k}={v!r}" for k, v in overrides.items()) or "its defaults"
        raise ValueError(
            f"{model_name} cannot be built with {fields} ({type(e).__name__}: "
            f"{e}); change or remove these values"
        ) from None
    return sum(p.numel() for p in model.parameters())


def plan_run(
    model_name: str, data_name: str, data_path: str | None, overrides: dict, train: dict, hosting
) -> tuple[list[str], dict]:
    """Check a run request from the page and turn it into ``python -m vaelab train``
    arguments (without ``--out``) and the settings shown until the process writes its own.

    ``train`` holds TrainConfig values (``epochs``, ``batch_size``, ``lr``, ``seed``,
    ``device``, ``max_steps`` (0 = none), ``anneal_epochs``, ``train_samples``); ``hosting``
    is a :class:`vaelab.runs.Hosting` whose caps apply (steps are capped, a model over the
    parameter cap is refused). Raises ``ValueError`` naming the field and the fix.
    """
    from vaelab.runs import check_data_spec

    if model_name not in MODELS:
        raise ValueError(f"unknown model {model_name!r}; choose one of {', '.join(MODELS)}")
    if data_name not in DATASETS:
        raise ValueError(f"unknown data set {data_name!r}; choose one of {', '.join(DATASETS)}")
    spec = {"name": data_name}
    if dataset_needs_path(data_name):
        if not data_path:
            raise ValueError(f"{data_name} needs the path of its file or folder")
        spec["path"] = data_path
    check_data_spec(spec, hosting)
    overrides = check_types(MODELS[model_name][0], overrides, "config field")
    train = dict(train)
    max_steps = int(train.pop("max_steps", 0) or 0)
    if hosting.max_steps:
        max_steps = min(max_steps or hosting.max_steps, hosting.max_steps)
    try:
        TrainConfig(**train, max_steps=max_steps or None)
    except (TypeError, ValueError) as e:
        raise ValueError(f"training settings: {e}") from None
    unit = None
    if "path" not in spec:
        data = builtin_dataset(data_name)[0]
        why = incompatibility(model_name, data)
        if why is not None:
            raise ValueError(why)
        params = count_parameters(model_name, data, overrides)
        if hosting.max_params and params > hosting.max_params:
            raise ValueError(
                f"this {model_name} has {params:,} parameters, over this server's "
                f"cap of {hosting.max_params:,}: make z_dim or the hidden sizes "
                f"smaller"
            )
        unit = "nats per observed step" if data.is_sequence else "nats per example"
    args = ["--model", model_name, "--data", data_name]
    if "path" in spec:
        args += ["--data-path", str(spec["path"])]
    for key, value in overrides.items():
        args += ["--set", f"{key}={value!r}"]
    args += [
        "--epochs",
        str(int(train["epochs"])),
        "--batch-size",
        str(int(train["batch_size"])),
        "--lr",
        repr(float(train["lr"])),
        "--seed",
        str(int(train["seed"])),
        "--device",
        str(train["device"]),
    ]
    if max_steps:
        args += ["--max-steps", str(max_steps)]
    for key in ("anneal_epochs", "train_samples"):
        if key in train:
            args += ["--train-set", f"{key}={train[key]!r}"]
    args += ["--train-set", "progress=False"]
    settings = {
        "model": model_name,
        "model_config": overrides,
        "data": spec,
        "unit": unit,
        "train_config": {**train, "max_steps": max_steps or None},
    }
    return args, settings
