"""What the command line prints after a run fails: the command lines that go on from it
(resume at a lower rate, start again at a lower rate, resume once there is room) and an
``OSError`` in one sentence. Pure functions of the parsed arguments and the error, used by
:func:`vaelab.__main__.main`."""

from __future__ import annotations

import argparse
import dataclasses
import errno
import re
import shlex
import sys
from pathlib import Path

import torch

from vaelab.config import flat
from vaelab.train import TrainConfig, TrainingDiverged, resume


def print_commands_after_divergence(
    args: argparse.Namespace, argv: list[str] | None, err: TrainingDiverged
) -> None:
    """The command lines the divergence message advises: resume at a lower rate (a resumed
    run whose checkpoint trained well after it) and start again at that rate."""
    if args.command != "train" or getattr(args, "resolved", None) is None or err.at_start:
        return  # at the first step a lower rate would fail again: the message says why
    if err.resume_from is not None:
        print(
            f"to resume with a lower learning rate: python -m vaelab "
            f"{resume_command(argv, err.resume_from, err.suggested_lr)}",
            file=sys.stderr,
        )
    print(
        f"to start again with a lower learning rate: python -m vaelab "
        f"{restart_command(args, err)}",
        file=sys.stderr,
    )


def os_error(err: OSError, args: argparse.Namespace | None = None) -> str:
    """``err`` in one sentence naming the path, the argument it came from and the fix; a
    name too long for the filesystem says which part."""
    if not err.filename:
        return str(err)
    name = str(err.filename)
    if err.errno != errno.ENAMETOOLONG:
        given = _argument_holding(name, args)
        return (
            f"cannot use {name}{f' (from {given})' if given else ''}: "
            f"{err.strerror or err}; pass a path that exists (or can be made) and that this "
            f"user may read and write"
        )
    longest = max(Path(name).parts, key=len)
    return (
        f"the path {name[:60]}... is too long for this filesystem ({len(name)} characters, "
        f"{len(longest)} in its longest part; most filesystems allow 255 per part and 4096 in "
        f"all); pass a shorter one"
    )


def stopped_early(args: argparse.Namespace) -> str:
    """What a Ctrl-C outside training left: nothing, or (train, once its run folder was
    opened) a folder with the run's settings and no checkpoint, which the same command
    starts again."""
    out = getattr(args, "out", None) if args.command == "train" else None
    folder = Path(out) if out and out.strip() else None
    if folder is None or not (folder / "settings.json").is_file():
        return f"{args.command} stopped before it finished; nothing was written"
    if (folder / "checkpoint.pt").is_file():  # a resumed run, stopped before its first step
        return f"train stopped before its first step; {folder / 'checkpoint.pt'} is as it was"
    return (
        f"train stopped before its first step; {folder} holds the run's settings and no "
        f"checkpoint: run the same command again to start it"
    )


def out_of_memory(err: BaseException) -> str | None:
    """The sentence for an allocation that failed (``MemoryError``, torch's CPU "can't allocate
    memory" or CUDA out-of-memory), naming the bytes asked for when torch says; None for any
    other error."""
    text = str(err)
    cuda = isinstance(err, torch.OutOfMemoryError)
    if not (isinstance(err, MemoryError) or cuda or "can't allocate memory" in text):
        return None
    asked = re.search(r"tried to allocate (\d+) bytes", text)
    size = f" ({int(asked.group(1)) / 2**30:.3g} GiB in one piece)" if asked else ""
    where = "the GPU" if cuda else "this machine"
    return (
        f"out of memory: {where} could not give the memory this run asked for{size}; "
        f"use smaller sizes (--set), a smaller --batch-size, or a machine with more memory "
        f"(--allow-large lets a size past vaelab's estimate through, not past the memory)"
    )


def _argument_holding(name: str, args: argparse.Namespace | None) -> str | None:
    """The argument (``--out runs/x``, ``DIR site``) whose path is ``name`` or holds it."""
    for key, value in vars(args or argparse.Namespace()).items():
        if not isinstance(value, str) or not value.strip() or key in ("command", "func"):
            continue
        top = value.rstrip("/") or "/"
        if name in (value, top) or name.startswith(top.rstrip("/") + "/"):
            flag = key.upper() if key == "dir" else "--" + key.replace("_", "-")
            return f"{flag} {value}"
    return None


def resume_command(argv: list[str] | None, checkpoint: Path, lr: float | None = None) -> str:
    """The train command line again, with ``--resume checkpoint`` instead of any other (and
    ``--lr lr`` instead of any other, when given)."""
    words = list(sys.argv[1:] if argv is None else argv)
    replaced = {"--resume", *(["--lr"] if lr is not None else [])}
    kept = []
    skip = False
    for word in words:
        if skip:
            skip = False
        elif word in replaced:
            skip = True
        elif not any(word.startswith(flag + "=") for flag in replaced):
            kept.append(word)
    if lr is not None:
        kept += ["--lr", f"{lr:.3g}"]
    return shlex.join([*kept, "--resume", str(checkpoint)])


def restart_command(args: argparse.Namespace, err: TrainingDiverged) -> str:
    """A new run of the same model, data and settings, with a lower learning rate applied
    from the first step, into a new folder: resuming would recompute the failing loss from
    the same saved weights. The rate is the one the message suggests."""
    model, config = args.resolved
    config_cls = type(model.config)
    lower = err.suggested_lr if err.suggested_lr is not None else config.lr / 10
    words = ["train", "--model", model.name, "--data", args.data]
    if args.data_path is not None:
        words += ["--data-path", args.data_path]
    for option in args.data_option:
        words += ["--data-option", option]
    sized = ("x_dim", "a_dim")
    defaults = flat(
        {
            f.name: f.default_factory()
            if f.default_factory is not dataclasses.MISSING
            else f.default
            for f in dataclasses.fields(config_cls)
        }
    )
    for key, value in flat(dataclasses.asdict(model.config)).items():
        if key not in sized and not resume.same_values(value, defaults[key]):
            words += ["--set", f"{key}={value!r}"]
    flags = {
        "lr": "--lr",
        "epochs": "--epochs",
        "batch_size": "--batch-size",
        "seed": "--seed",
        "max_steps": "--max-steps",
        "device": "--device",
    }
    skip = {"out_dir", "preset", *flags}
    for key, value in dataclasses.asdict(config).items():
        if key not in skip and value != TrainConfig.__dataclass_fields__[key].default:
            words += ["--train-set", f"{key}={value!r}"]
    if config.preset is not None:
        words += ["--preset", config.preset]
    values = {**dataclasses.asdict(config), "lr": float(f"{lower:.3g}")}
    for key, flag in flags.items():
        if values[key] is not None and (key != "device" or values[key] != "auto"):
            words += [flag, str(values[key])]
    words += ["--out", f"{str(args.out).rstrip('/')}-lr{values['lr']:g}"]
    return shlex.join(words)
