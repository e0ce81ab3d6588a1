"""The CLI's checks of what a user asked for, made before any work starts: an --out folder
that holds another run, a model too large to be meant (built on torch's meta device, so
nothing is allocated), an importance estimate of hours, and data of another shape than a
checkpoint's. Each raises ValueError with the sentence ``python -m vaelab`` prints."""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from pathlib import Path

import torch

from vaelab.config import make_model
from vaelab.datasets import with_defaults
from vaelab.runs.folder import read_json

RUN_FILES = ("checkpoint.pt", "best.pt", "metrics.jsonl")  # what a run that trained leaves


def check_not_another_run(args: argparse.Namespace) -> None:
    """Refuse an --out folder holding another run's files (a checkpoint, metrics): training
    into it would replace its checkpoint and append to its metrics. Resuming that run's own
    checkpoint into its own folder is how it goes on."""
    if not args.out or not args.out.strip():
        return  # _train names an empty or missing --out
    out = Path(args.out)
    try:
        resolved = out.resolve()
    except (RuntimeError, OSError) as err:  # Python 3.11 raises RuntimeError on a link loop
        raise ValueError(
            f"--out {args.out} cannot be followed ({err}): a symbolic link loop or a broken "
            f"path; pass a plain folder for this run's files"
        ) from None
    if resolved == Path(resolved.anchor):
        raise ValueError(
            f"--out {args.out} is the filesystem's root; pass a folder for this run's files"
        )
    if not out.is_dir():
        return
    # an empty metrics.jsonl: a run refused before its first step (e.g. the folder was in use)
    found = [n for n in RUN_FILES if (out / n).is_file() and (out / n).stat().st_size > 0]
    if not found:
        return
    if args.resume is not None and Path(args.resume).resolve().parent == resolved:
        return
    failed = read_json(out / "status.json").get("state") == "failed"
    if failed and not {"checkpoint.pt", "best.pt"} & set(found):
        raise ValueError(
            f"--out {out} holds a run that failed before it saved a checkpoint "
            f"({', '.join(found)}; {out / 'status.json'} says why); remove that folder "
            f"(rm -r {out}) and run the same command again, or pass another --out folder"
        )
    hint = (
        f", or --resume {out / 'checkpoint.pt'} to continue it"
        if (out / "checkpoint.pt").is_file()
        else ""
    )
    raise ValueError(
        f"--out {out} holds another run ({', '.join(found)}), which training would "
        f"overwrite; pass a new or empty folder for --out{hint}"
    )


MAX_PARAMETERS = 50_000_000  # 200 MB of float32 weights; the largest model here has ~2e6
MAX_SIZE = 1_000_000  # any width, length or count in a model config (MNIST's x_dim is 784)


def check_size(args: argparse.Namespace, train, model_sets: dict) -> None:
    """Refuse a model too large to be meant, before allocating it: it is built on torch's
    meta device (shapes only, no memory) and its parameters counted."""
    sizes = ", ".join(f"{k}={v!r}" for k, v in model_sets.items()) or "the defaults"
    for key, value in model_sets.items():  # before building: a count of 1e9 layers would hang
        values = value if isinstance(value, (list, tuple)) else [value]
        big = [
            v for v in values if isinstance(v, int) and not isinstance(v, bool) and v > MAX_SIZE
        ]
        if big and not args.allow_large:
            raise ValueError(
                f"--set {key}={value!r} is above {MAX_SIZE:.0e}, larger than any "
                f"size or count a model here needs; pass a smaller value, or "
                f"--allow-large if you mean it"
            )
    try:
        with torch.device("meta"), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "Initializing zero-element tensors is a no-op"
            probe = make_model(args.model, train, model_sets)
    except RuntimeError as err:  # e.g. a negative width
        reason = str(err).splitlines()[0]
        raise ValueError(
            f"--model {args.model} cannot be built with {sizes} ({reason}); "
            f"every size must be a positive integer"
        ) from None
    empty = next((name for name, p in probe.named_parameters() if 0 in p.shape), None)
    if empty is not None:
        raise ValueError(
            f"--model {args.model} with {sizes} has a layer of width 0 "
            f"({empty}); every size must be a positive integer"
        )
    count = sum(p.numel() for p in probe.parameters())
    if count > MAX_PARAMETERS and not args.allow_large:
        raise ValueError(
            f"--model {args.model} with {sizes} has {count:.3g} parameters "
            f"({count * 4 / 2**30:.3g} GiB of weights, more again for Adam), over "
            f"the limit of {MAX_PARAMETERS:.0e}; pass smaller sizes with --set, or "
            f"--allow-large if you mean it"
        )


# the largest estimate here, K=5000 on MNIST's 10000 test images or K=2000 on a polyphonic test
# set, is about 1e8; ten times that is minutes to hours on a CPU
MAX_IMPORTANCE_WORK = 1_000_000_000


def observed_steps(data) -> int:
    return int(data.lengths.sum()) if data.is_sequence else len(data)


def check_work(args: argparse.Namespace, splits: list) -> None:
    """Refuse an estimate too large to be meant (e.g. --samples 1e9, --elbo-samples 1e8)
    before it runs silently for hours: draws x the observed steps of the splits evaluated."""
    steps = sum(observed_steps(d) for d in splits)
    for flag, draws, what, usual in (
        ("--samples", args.samples, "importance paths", "1000"),
        ("--elbo-samples", args.elbo_samples, "guide draws", "1 to 100"),
    ):
        work = draws * steps
        if work >= 2**63:  # no machine finishes it, --allow-large or not
            raise ValueError(
                f"{flag} {draws} on {steps} observed steps ({args.split}) is {work:.3g} "
                f"{what} x steps, more than any run can finish; pass fewer {flag} ({usual} "
                f"is the usual)"
            )
        if work > MAX_IMPORTANCE_WORK and not args.allow_large:
            split = ", --split val or test" if args.split == "both" else ""
            raise ValueError(
                f"{flag} {draws} on {steps} observed steps ({args.split}) is {work:,} "
                f"{what} x steps, over the limit of {MAX_IMPORTANCE_WORK:,} (hours of "
                f"work); pass fewer {flag} ({usual} is the usual){split}, or "
                f"--allow-large if you mean it"
            )
        if work > MAX_IMPORTANCE_WORK:  # let through: say so before the long silence
            print(
                f"note: {flag} {draws} on {steps} observed steps is {work:,} {what} x "
                f"steps, past the limit of {MAX_IMPORTANCE_WORK:,} (--allow-large): this "
                f"may take hours; Ctrl-C stops it",
                file=sys.stderr,
            )


def check_evaluated_data(path: str, ckpt: dict, model, spec: dict, data) -> None:
    """The data evaluate loaded has the shape the checkpoint's model was trained on (kind,
    features, actions); otherwise a sentence naming the data it needs, not a model setting
    that evaluate cannot change."""

    def shape(sequential: bool, x_dim: int, a_dim: int) -> str:
        kind = "sequences" if sequential else "vectors"
        return f"{kind} of x_dim={x_dim}" + (f", a_dim={a_dim}" if sequential else "")

    a_dim = model.a_dim if model.sequential else 0
    needs = shape(model.sequential, model.config.x_dim, a_dim)
    has = shape(data.is_sequence, data.x_dim, data.a_dim if data.is_sequence else 0)
    if needs == has:
        return
    trained = (ckpt.get("data") or {}).get("name")
    fix = (
        f"evaluate it on {trained!r} (drop --data), or pass a checkpoint trained on "
        f"{spec.get('name')!r}"
        if trained
        else f"pass data of that shape, or a checkpoint trained on {spec.get('name')!r}"
    )
    raise ValueError(
        f"--checkpoint {path} holds a {ckpt['model']} model trained on other data "
        f"({repr(trained) if trained else 'not recorded'}: {needs}), but --data "
        f"{spec.get('name')} gives {has}; {fix}"
    )


def check_evaluated_support(path: str, ckpt: dict, model, spec: dict, data) -> None:
    """The checkpoint's likelihood can score the data evaluate loaded (e.g. a Bernoulli decoder
    and digits loaded with ``binarize=False`` cannot); otherwise a sentence naming the data
    options that differ from the checkpoint's, which are what to drop."""
    problem = model.incompatibility(data)
    if problem is None:
        return
    trained, spec = with_defaults(ckpt.get("data") or {}), with_defaults(spec)
    changed = [k for k, v in spec.items() if k != "path" and k in trained and trained[k] != v]
    if spec.get("name") != trained.get("name"):
        fix = f"evaluate it on {trained.get('name')!r} (drop --data)"
    elif changed:
        was = ", ".join(f"{k}={trained[k]!r}" for k in changed)
        now = " ".join(f"{k}={spec[k]!r}" for k in changed)
        fix = f"it was trained with {was}; drop --data-option {now}"
    else:
        fix = "evaluate it on the data it was trained on"
    raise ValueError(
        f"--checkpoint {path} holds a model that cannot score this data: {problem}; {fix}"
    )


PATH_ARGUMENTS = ("out", "resume", "checkpoint", "data_path", "dir", "source")


def expand_home(args: argparse.Namespace) -> None:
    """``~/runs`` or ``~user/runs``, quoted (or from a script), means the home folder, as the
    shell would have read it unquoted; a ``~name`` naming no user is refused."""
    for key in PATH_ARGUMENTS:
        value = getattr(args, key, None)
        if not (isinstance(value, str) and value.startswith("~")):
            continue
        home = os.path.expanduser(value)
        if home == value:
            name = value[1:].split("/", 1)[0]
            raise ValueError(
                f"{value}: there is no user {name!r} whose home folder ~{name} could mean; "
                f"write ./{value} for a folder of that name"
            )
        setattr(args, key, home)
