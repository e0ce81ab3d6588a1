"""The resume rules, one copy for :func:`vaelab.train.fit` and the command line.

A resume goes on training what a checkpoint trained: the same model (name and config), the
same data, and the same settings except those in :data:`RESUMABLE`, which apply from the resume
on and are recorded in the checkpoint's ``resumes``. Every other setting shaped what has been
trained so far (the random streams, the annealing, the optimiser's statistics).
"""

from __future__ import annotations

from pathlib import Path

from vaelab.config import flat
from vaelab.datasets import with_defaults
from vaelab.train import optim

# TrainConfig fields a resume may change: from the resume on they apply (a new lr is set in the
# optimizer, a new lr_decay in the scheduler) and the checkpoint records them.
RESUMABLE = frozenset(
    {
        "epochs",
        "max_steps",
        "lr",
        "lr_decay",
        "batch_size",
        "clip_norm",
        "checkpoint_every",
        "eval_every",
        "max_abs_loss",
        "progress",
        "device",
        "out_dir",
        "sync_every",
    }
)
# changes not worth recording in ``resumes``: where and how the run is shown, not what it trains
UNRECORDED = frozenset({"progress", "out_dir", "device", "sync_every"})


def same_values(a, b) -> bool:
    """Config values equal, lists and tuples alike (a checkpoint may hold either)."""
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(same_values(x, y) for x, y in zip(a, b, strict=True))
    return a == b


def same_data_spec(a: dict, b: dict) -> bool:
    """Two data specs name the same data (paths compared resolved)."""

    def norm(spec: dict) -> dict:
        return {
            k: (str(Path(v).resolve()) if k == "path" and v is not None else v)
            for k, v in spec.items()
        }

    return same_values(norm(a), norm(b))


def check_model(resume: str | Path, ckpt: dict, name: str, config: dict) -> None:
    """The model asked for is the checkpoint's: its registry ``name`` and every config value
    (a nested config's field by field, keyed as ``--set`` takes them: ``compat.rnn_type``)."""
    if ckpt["model"] != name:
        raise ValueError(
            f"--resume {resume} holds a {ckpt['model']!r} model, not {name!r}; "
            f"pass --model {ckpt['model']} (or drop --model)"
        )
    stored, config = flat(ckpt["config"]), flat(config)
    for key in sorted(stored):
        if key not in config or not same_values(config[key], stored[key]):
            raise ValueError(
                f"cannot resume {resume}: model config {key} is "
                f"{stored[key]!r} in the checkpoint but {config.get(key)!r} here; "
                f"a resumed run keeps its model (its config comes from the checkpoint): drop "
                f"--set {key}, or train a new model into another --out folder"
            )


def check_data(resume: str | Path, ckpt: dict, spec: dict) -> None:
    """The data asked for is the checkpoint's (name, path and loader options); an empty
    ``spec`` keeps the checkpoint's."""
    if not spec or not ckpt["data"]:
        return
    given, stored = with_defaults(spec), with_defaults(ckpt["data"])  # options left out: defaults
    if same_data_spec(given, stored):
        return
    key = next(
        k
        for k in sorted(set(given) | set(stored), key=lambda k: (k != "name", k != "path", k))
        if not same_data_spec({k: given.get(k)}, {k: stored.get(k)})
    )
    flag = {"name": "--data", "path": "--data-path"}.get(key, f"--data-option {key}")
    trained_on = "" if key == "name" else f" (trained on data set {stored.get('name')!r})"
    raise ValueError(
        f"cannot resume {resume}{trained_on}: its data {key} is {stored.get(key)!r} "
        f"but {given.get(key)!r} here ({flag}); a resumed run keeps its data: "
        f"drop {flag}, or train a new model into another --out folder"
    )


def changed_settings(resume: str | Path, ckpt: dict, config: dict) -> dict:
    """``{field: (checkpoint's, given)}`` for the TrainConfig fields ``config`` changes;
    ``ValueError`` naming the first that a resume may not change."""
    stored = ckpt["train_config"]
    changed = {
        k: (stored[k], config[k])
        for k in stored
        if k in config and not same_values(stored[k], config[k])
    }
    refused = sorted(set(changed) - RESUMABLE)
    if refused:
        key = refused[0]
        raise ValueError(
            f"cannot resume {resume} with {key}={config[key]!r}: the checkpoint trained with "
            f"{key}={stored[key]!r}, and a resume may change only {sorted(RESUMABLE)}; keep "
            f"{key}={stored[key]!r} (or start a new run)"
        )
    return changed


def check_progress(
    resume: str | Path, ckpt: dict, config: dict, changed: dict, world: int = 1
) -> None:
    """There is something left to train, and a changed global batch (``batch_size`` times
    the ``world`` of processes) starts at an epoch's end."""
    before = ckpt["train_config"]["batch_size"] * ckpt.get("world", 1)
    if before != config["batch_size"] * world and ckpt["batch_in_epoch"]:
        if "batch_size" not in changed:
            raise ValueError(
                f"cannot resume {resume} in {world} process(es) with batch_size="
                f"{config['batch_size']}: it trained in {ckpt.get('world', 1)} and stopped "
                f"inside epoch {ckpt['epoch'] + 1}, whose batches are global batches of "
                f"{before}; pass batch_size={before // world} (--batch-size) to keep them, or "
                f"resume from a checkpoint written at an epoch's end"
            )
        raise ValueError(
            f"cannot resume {resume} with batch_size={config['batch_size']}: it stopped inside "
            f"epoch {ckpt['epoch'] + 1} (after its batch {ckpt['batch_in_epoch']}, of "
            f"{ckpt['train_config']['batch_size']} examples each); resume with batch_size="
            f"{ckpt['train_config']['batch_size']}, or from a checkpoint written at an "
            f"epoch's end"
        )
    if ckpt["epoch"] >= config["epochs"]:
        raise ValueError(
            f"nothing to train: {resume} has completed {ckpt['epoch']} epochs (step "
            f"{ckpt['step']}) and epochs={config['epochs']}; pass epochs above {ckpt['epoch']} "
            f"(--epochs {ckpt['epoch'] + 1} or more) to train on"
        )
    if config["max_steps"] is not None and ckpt["step"] >= config["max_steps"]:
        raise ValueError(
            f"nothing to train: {resume} is at step {ckpt['step']} and max_steps="
            f"{config['max_steps']}; pass max_steps above {ckpt['step']} (--max-steps "
            f"{ckpt['step'] + 1} or more) to train on"
        )


def recipe(resume: str | Path, ckpt: dict, given: optim.Adam | None) -> optim.Adam:
    """The optimiser recipe a resume trains with: the checkpoint's (``Adam()`` when it
    records none); a different one ``given`` is refused."""
    stored = optim.from_dict(ckpt.get("recipe", optim.to_dict(optim.Adam())))
    if given is not None and given != stored:
        raise ValueError(
            f"cannot resume {resume} with optimizer={given!r}: it trained with "
            f"{stored!r}; pass optimizer=None to keep it (or start a new run)"
        )
    return stored


def check(
    resume: str | Path,
    ckpt: dict,
    name: str,
    model_config: dict,
    data_spec: dict,
    train_config: dict,
    optimizer: optim.Adam | None = None,
    world: int = 1,
) -> dict:
    """Every rule above, in the order a user fixes them, for a resume in ``world``
    processes; returns the changed settings (:func:`changed_settings`)."""
    check_model(resume, ckpt, name, model_config)
    check_data(resume, ckpt, data_spec)
    changed = changed_settings(resume, ckpt, train_config)
    check_progress(resume, ckpt, train_config, changed, world)
    recipe(resume, ckpt, optimizer)
    return changed
