"""Command line: ``python -m vaelab train | evaluate | sweep | course ...``."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shlex
import signal
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from types import FrameType

import torch

import vaelab
from vaelab import MODELS, cli_advice, sweep
from vaelab.cli_checks import (  # MAX_IMPORTANCE_WORK: read here by tests
    MAX_IMPORTANCE_WORK,
    MAX_PARAMETERS,
    check_evaluated_data,
    check_evaluated_support,
    check_not_another_run,
    check_size,
    check_work,
    expand_home,
)
from vaelab.config import check_types, data_spec, flat, make_model, parse_sets
from vaelab.datasets import DATASETS, load_dataset
from vaelab.kalman import exact_nll
from vaelab.presets import PRESETS, apply_preset, preset_optimizer
from vaelab.runs import RunWriter
from vaelab.train import (
    TrainConfig,
    TrainingDiverged,
    TrainingInterrupted,
    build_model,
    evaluate_elbo,
    evaluate_nll,
    fit,
    guard,
    load_checkpoint,
    load_model,
    resume,
    seed_everything,
    select_device,
)
from vaelab.writes import WriteError


def _train_config(args: argparse.Namespace, base: dict) -> TrainConfig:
    """``base`` (the model's defaults, or a resumed checkpoint's settings), then --train-set,
    then the flags given, each checked against TrainConfig's field types."""
    sets = check_types(TrainConfig, parse_sets(args.train_set, "--train-set"), "--train-set")
    if "preset" in sets:
        raise ValueError(
            f"--train-set preset={sets['preset']!r} would only label the run; use "
            f"--preset NAME, which applies the preset's settings"
        )
    if "out_dir" in sets:
        raise ValueError(
            f"--train-set out_dir={sets['out_dir']!r} is not how train picks its folder; "
            f"use --out {sets['out_dir']}"
        )
    flags = {
        "epochs": ("--epochs", args.epochs),
        "batch_size": ("--batch-size", args.batch_size),
        "lr": ("--lr", args.lr),
        "seed": ("--seed", args.seed),
        "device": ("--device", args.device),
        "max_steps": ("--max-steps", args.max_steps),
    }
    given = {k: v for k, (_, v) in flags.items() if v is not None}
    twice = next((k for k in sets if k in given), None)
    if twice is not None:
        flag = flags[twice][0]
        raise ValueError(
            f"{twice} is set twice, by --train-set {twice}={sets[twice]!r} and by {flag} "
            f"{given[twice]}; pass it once (use {flag})"
        )
    return TrainConfig(**{**base, **sets, **given, "out_dir": args.out})


def _from_checkpoint(args: argparse.Namespace) -> dict:
    """The checkpoint --resume names; what the command line leaves out comes from it: the
    model, the data (name, path and options: a given --data-path or --data-option replaces
    the checkpoint's, and the resume rules then refuse a change) and --out (its folder)."""
    ckpt = load_checkpoint(args.resume)
    args.model = args.model or ckpt["model"]
    if args.data is None and ckpt["data"]:
        data = dict(ckpt["data"])
        args.data = data.pop("name")
        path = data.pop("path", None)
        args.data_path = path if args.data_path is None else args.data_path
        given = parse_sets(args.data_option, "--data-option")
        args.data_option = [f"{k}={v!r}" for k, v in {**data, **given}.items()]
    if args.out is None:
        args.out = str(Path(args.resume).parent)
    return ckpt


def _resumed(args: argparse.Namespace, spec: dict, ckpt: dict, model_sets: dict) -> dict:
    """The TrainConfig values the checkpoint ran with, after checking with the resume rules
    (vaelab.train.resume, as fit does) that the command line asks for its model and data."""
    if args.model in MODELS:
        check_types(MODELS[args.model][0], model_sets)  # unknown --set keys named
    resume.check_model(args.resume, ckpt, args.model, {**flat(ckpt["config"]), **flat(model_sets)})
    resume.check_data(args.resume, ckpt, spec)
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    base = {k: v for k, v in ckpt["train_config"].items() if k in fields}
    if args.preset is not None and args.preset != base.get("preset"):
        raise ValueError(
            f"--preset {args.preset} disagrees with --resume {args.resume}, "
            f"which trained with preset {base.get('preset')!r}; a resumed run "
            f"keeps its settings: drop --preset"
        )
    if (
        args.device is None
        and str(base.get("device", "")).startswith("cuda")
        and not torch.cuda.is_available()
    ):
        base["device"] = "cpu"  # trained on a GPU, continued where there is none
    return base


def cmd_train(args: argparse.Namespace) -> int:
    """Train, writing the run folder (:class:`vaelab.runs.RunWriter`: metrics, status,
    requests) on rank 0 when there is an output folder."""
    ckpt = None
    if args.resume is not None and args.out is None:
        # the checkpoint's folder becomes the run's only once the checkpoint loads: a failed
        # --resume (a folder, a missing or foreign file) writes no status.json anywhere
        ckpt = _from_checkpoint(args)
    check_not_another_run(args)  # before the writer, which would mark that run failed
    folder = args.out if args.out and args.out.strip() else None  # '' is no folder: "."
    if folder is None or int(os.environ.get("RANK", "0")) != 0:
        return _train(args, None, ckpt)
    with RunWriter(folder) as writer:
        return _train(args, writer, ckpt)


def _train(args: argparse.Namespace, writer: RunWriter | None, ckpt: dict | None = None) -> int:
    if ckpt is None and args.resume is not None:
        ckpt = _from_checkpoint(args)
    missing = [
        flag
        for flag, value in (("--model", args.model), ("--data", args.data), ("--out", args.out))
        if value is None
    ]
    if missing:
        raise ValueError(
            f"train needs {', '.join(missing)} (a new run names its model, data "
            f"and output folder; --resume CHECKPOINT takes them from the "
            f"checkpoint)"
        )
    if not args.out.strip():
        raise ValueError("--out is empty; pass a folder name for checkpoint.pt")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise ValueError(
            f"--out {out} is a file; pass a folder (new or existing) for checkpoint.pt"
        )
    spec = data_spec(args.data, args.data_path, parse_sets(args.data_option, "--data-option"))
    model_sets = parse_sets(args.set, "--set")
    optimizer = None  # on resume: the checkpoint's recipe
    if ckpt is not None:
        base = _resumed(args, spec, ckpt, model_sets)
    else:
        base = dict(MODELS[args.model][1].train_defaults)
        if args.preset is not None:  # under --set / --train-set / the flags
            preset_model, preset_train = _preset(args.preset, args.model)
            model_sets = {**preset_model, **model_sets}
            base = {**base, **preset_train, "preset": args.preset}
        optimizer = preset_optimizer(base.get("preset"))
        check_types(MODELS[args.model][0], model_sets)  # before any loading
    config = _train_config(args, base)
    if ckpt is not None:  # every resume rule, before the data is loaded
        world = int(os.environ.get("WORLD_SIZE", "1") or 1)  # under torchrun: its processes
        resume.check(
            args.resume,
            ckpt,
            args.model,
            {**flat(ckpt["config"]), **flat(model_sets)},
            spec,
            dataclasses.asdict(config),
            world=world,
        )
    train, val, _ = load_dataset(**spec)
    seed_everything(config.seed)  # before the model is built: the seed fixes its weights
    if ckpt is not None:  # the checkpoint's own model config
        model = build_model(ckpt["model"], ckpt["config"])
    else:
        check_size(args, train, model_sets)
        model = make_model(args.model, train, model_sets)
        with torch.random.fork_rng(devices=[]):  # the check draws; the seeded run must not see it
            why = model.support_mismatch(train)  # the dashboard's rule; fit names the rest
        if why is not None:
            raise ValueError(why)
    args.resolved = (model, config)  # for the divergence advice's command
    earlier = None  # a resume into another folder: a new run, whose history begins as R's
    if (
        writer is not None
        and ckpt is not None
        and Path(args.resume).parent.resolve() != out.resolve()
    ):
        earlier = Path(args.resume).parent / "metrics.jsonl"
        print(
            f"continuing {args.resume} (step {ckpt['step']}) in {out}, a new run folder; "
            f"{Path(args.resume).parent} is left as it is",
            file=sys.stderr,
        )
    if writer is not None:
        writer.start(
            {
                "model": args.model,
                "model_config": dataclasses.asdict(model.config),
                "train_config": dataclasses.asdict(config),
                "data": spec,
                "unit": model.unit,
                "has_latents": model.has_latents,
            },
            resumed_at=None if ckpt is None else int(ckpt["step"]),
            history=earlier,
        )
    history = fit(
        model,
        train,
        val,
        config,
        resume=args.resume,
        data_spec=spec,
        optimizer=optimizer,
        callback=writer,
    )
    if int(os.environ.get("RANK", "0")) != 0:  # under torchrun rank 0 reports for all
        return 0
    last = {r["kind"]: r for r in history}
    best = Path(args.out) / "best.pt"  # lowest validation -ELBO so far
    print(
        json.dumps(
            {
                "checkpoint": str(Path(args.out) / "checkpoint.pt"),
                "best": str(best) if best.exists() else None,
                "steps": last["end"]["step"],
                "train_nelbo": last.get("train", {}).get("nelbo"),
                "val_nelbo": last.get("val", {}).get("nelbo"),
            }
        )
    )
    return 0


def _preset(name: str, model: str) -> tuple[dict, dict]:
    """The model and TrainConfig settings of preset ``name``, checked against ``--model``."""
    model_sets, train_sets = apply_preset(name)
    if not model.startswith(PRESETS[name].model_name):
        raise ValueError(
            f"preset {name!r} sets a {PRESETS[name].model_name} model's config, "
            f"not {model!r}'s; use it with --model {PRESETS[name].model_name} (or "
            f"{PRESETS[name].model_name}_iaf), or drop --preset"
        )
    return model_sets, train_sets


def cmd_sweep(args: argparse.Namespace) -> int:
    train_args = args.train_args[1:] if args.train_args[:1] == ["--"] else args.train_args
    if not train_args:
        raise ValueError(
            "sweep needs the training arguments after --, e.g. python -m vaelab "
            "sweep --seeds 0 1 2 --out runs/sweep -- --model vae --data digits"
        )
    return sweep.main(train_args, args.seeds, args.out, args.jobs, args.threads, args.metric)


def cmd_evaluate(args: argparse.Namespace) -> int:
    if args.samples < 0 or args.elbo_samples < 0:
        raise ValueError(
            f"--samples and --elbo-samples must be >= 0 (0 skips that figure), "
            f"got {args.samples} and {args.elbo_samples}"
        )
    if args.samples == 0 and args.elbo_samples == 0:
        raise ValueError(
            "--samples 0 and --elbo-samples 0 leave nothing to evaluate; keep one of them "
            "above 0 (e.g. --elbo-samples 1)"
        )
    if not 1 <= args.batch_size < 2**31:
        raise ValueError(
            f"--batch-size must be in [1, 2**31) sequences (or examples) per batch, got "
            f"{args.batch_size}"
        )
    if args.chunk_size is not None and args.chunk_size < 1:
        raise ValueError(
            f"--chunk-size must be >= 1 importance paths per chunk (or left out "
            f"to fit each batch), got {args.chunk_size}"
        )
    if not 0 <= args.seed < 2**32:
        raise ValueError(f"--seed must be in [0, 2**32), got {args.seed}")
    device = select_device(args.device)
    model, ckpt = load_model(args.checkpoint, device)
    options = parse_sets(args.data_option, "--data-option")
    spec = dict(ckpt["data"])
    if args.data is not None:
        spec = data_spec(args.data, args.data_path, options)
    elif spec and (args.data_path is not None or options):  # the checkpoint's data set, there
        spec = {**spec, **options, **({"path": args.data_path} if args.data_path else {})}
    elif args.data_path is not None or options:
        raise ValueError(
            "the checkpoint records no data set, so --data-path and --data-option "
            "need --data NAME as well"
        )
    if not spec:
        raise ValueError("the checkpoint records no data set; pass --data (and --data-path)")
    _, val, test = load_dataset(**spec)
    check_evaluated_data(args.checkpoint, ckpt, model, spec, test)
    check_evaluated_support(args.checkpoint, ckpt, model, spec, test)
    splits = [d for name, d in (("val", val), ("test", test)) if args.split in (name, "both")]
    check_work(args, splits)
    torch.manual_seed(args.seed)
    result = {
        "model": ckpt["model"],
        "data": spec.get("name"),
        **({"data_path": str(spec["path"])} if spec.get("path") else {}),  # which file
        "step": ckpt["step"],
        "epoch": ckpt["epoch"],
        "unit": "nats per observed time step" if test.is_sequence else "nats per example",
    }
    for split, data in (("val", val), ("test", test)):
        if args.split not in (split, "both"):
            continue
        if args.elbo_samples != 0:
            elbo = evaluate_elbo(model, data, samples=args.elbo_samples, device=device)
            result[f"{split}_neg_elbo_bound"] = elbo["nelbo"]
            result[f"{split}_kl"] = elbo["kl"]
        system = data.info.get("system") if data.info else None
        if system is not None:  # linear-Gaussian data: the true system's exact likelihood
            result[f"{split}_nll_exact_true_system"] = exact_nll(system, data)
        if args.samples > 0:
            result[f"{split}_nll_importance_K{args.samples}"] = evaluate_nll(
                model,
                data,
                args.samples,
                batch_size=args.batch_size,
                chunk_size=args.chunk_size,
                device=device,
            )
    print(json.dumps(result))
    return 0


# importance paths x observed time steps (examples for a static model) evaluate may compute:
def cmd_models(args: argparse.Namespace) -> int:
    """One line per registered model (vaelab.MODELS): name, kind, unit, preferred data set."""
    for name, (_, cls) in MODELS.items():
        kind = "sequences" if cls.sequential else "vectors"
        print(
            f"{name:10s} {kind:9s} {cls.unit:24s} data: {cls.preferred_data or '-':8s} "
            f"{cls.__name__}"
        )
    return 0


class Terminated(Exception):
    """SIGTERM while a command that writes nothing (evaluate) runs."""


def _terminate(signum: int, frame: object) -> None:
    raise Terminated


def _restore_signals() -> None:
    """The default Ctrl-C and SIGTERM behaviour again, in place of vaelab/__init__.py's
    start-up handler, so that fit's own handling (vaelab.train.guard) applies."""
    for s, default in guard.DEFAULT_HANDLERS.items():
        if signal.getsignal(s) is vaelab._stopped_while_starting:
            signal.signal(s, default)


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m vaelab", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    def data_args(p: argparse.ArgumentParser, required: bool) -> None:
        p.add_argument(
            "--data",
            required=required,
            default=None,
            choices=sorted(DATASETS),
            help="data set name",
        )
        p.add_argument(
            "--data-path", default=None, help="file or folder for mnist, polyphonic and arrays"
        )
        p.add_argument(
            "--data-option",
            action="append",
            default=[],
            metavar="KEY=VALUE",
            help="loader keyword, e.g. binarize=false (digits)",
        )

    t = sub.add_parser("train", help="train a model and write DIR/checkpoint.pt")
    t.add_argument(
        "--model", choices=sorted(MODELS), help="the model (with --resume: the checkpoint's)"
    )
    data_args(t, required=False)
    t.add_argument(
        "--out",
        help="output folder (with --resume: the checkpoint's folder, or a new one that "
        "continues the run there and leaves the original as it is)",
    )
    t.add_argument("--epochs", type=int)
    t.add_argument("--batch-size", type=int)
    t.add_argument("--lr", type=float)
    t.add_argument("--seed", type=int)
    t.add_argument("--device", default=None)
    t.add_argument("--max-steps", type=int)
    t.add_argument(
        "--resume",
        default=None,
        help="checkpoint to continue from: its model config, data and settings are "
        "kept; --epochs, --max-steps, --lr, --batch-size (and a few "
        "--train-set fields, see vaelab.train.RESUMABLE) may change and apply",
    )
    t.add_argument(
        "--allow-large",
        action="store_true",
        help=f"train a model of more than {MAX_PARAMETERS:.0e} parameters",
    )
    t.add_argument(
        "--preset",
        default=None,
        metavar="NAME",
        help=f"named settings ({', '.join(sorted(PRESETS))}; see vaelab.presets) "
        f"under --set, --train-set and the flags; recorded in the checkpoint",
    )
    t.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="model config field, e.g. z_dim=8",
    )
    t.add_argument(
        "--train-set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="TrainConfig field, e.g. anneal_epochs=5",
    )
    t.set_defaults(func=cmd_train)

    e = sub.add_parser("evaluate", help="print a JSON line of validation and test metrics")
    e.add_argument("--checkpoint", required=True)
    data_args(e, required=False)
    e.add_argument(
        "--samples",
        type=int,
        default=1000,
        help="importance samples K for the NLL estimate (0 skips it)",
    )
    e.add_argument(
        "--elbo-samples",
        type=int,
        default=10,
        help="guide samples averaged in the ELBO bound (0 skips it)",
    )
    e.add_argument(
        "--split",
        choices=("val", "test", "both"),
        default="both",
        help="which held-out set(s) to evaluate (one halves a long K=2000 run)",
    )
    e.add_argument("--batch-size", type=int, default=16)
    e.add_argument(
        "--chunk-size",
        type=int,
        default=None,
        help="importance paths per chunk (default: as many as keep a chunk within "
        "2^18 path x sequence x step rows)",
    )
    e.add_argument("--device", default="auto")
    e.add_argument("--seed", type=int, default=0)
    e.add_argument(
        "--allow-large",
        action="store_true",
        help=f"run an estimate of more than {MAX_IMPORTANCE_WORK:.0e} importance paths (or "
        f"guide draws) x observed steps",
    )
    e.set_defaults(func=cmd_evaluate)

    w = sub.add_parser(
        "sweep",
        help="train one command for several seeds, as independent processes, and summarise them",
        description="python -m vaelab sweep --seeds 0 1 2 3 4 --jobs 2 --out "
        "runs/sweep -- --model vae --data digits --epochs 20",
    )
    w.add_argument("--seeds", type=int, nargs="+", required=True)
    w.add_argument("--out", required=True, help="folder; run S writes OUT/seed_S/")
    w.add_argument("--jobs", type=int, default=1, help="processes at a time (one per core or GPU)")
    w.add_argument("--threads", type=int, default=1, help="torch threads per process")
    w.add_argument(
        "--metric",
        default="val_nelbo",
        help=f"result field summarised: {', '.join(sweep.METRICS)}",
    )
    w.add_argument(
        "train_args",
        nargs=argparse.REMAINDER,
        help="-- then the arguments of python -m vaelab train (no --seed, --out)",
    )
    w.set_defaults(func=cmd_sweep)

    m = sub.add_parser(
        "models",
        help="list the registered models: name, what it models, its unit and preferred data set",
    )
    m.set_defaults(func=cmd_models)

    from vaelab.course import add_course_parser  # course release / course site

    add_course_parser(sub)

    args, extra = parser.parse_known_args(argv)
    if extra:  # argparse's own message shows an empty argument as nothing at all
        empty = " (one is empty: an unset variable or stray quotes)" if "" in extra else ""
        parser.error(f"unrecognized arguments: {shlex.join(extra)}{empty}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    # the start-up handler stays until here: building the parser imports the course module
    _restore_signals()
    hold = guard.HOLD_AFTER_STOP.set(True)  # a stopped fit leaves signals off while we report
    term: Callable[[int, FrameType | None], object] | int | None = None
    if args.command == "evaluate" and threading.current_thread() is threading.main_thread():
        term = signal.signal(signal.SIGTERM, _terminate)  # train's fit has its own handling
    try:
        expand_home(args)
        return args.func(args)
    except Terminated:
        print(f"\nstopped (SIGTERM): {args.command} ended; nothing was written", file=sys.stderr)
        return 143
    except TrainingInterrupted as err:  # Ctrl-C: fit saved what it could and says so
        print(f"\ninterrupted: {err}", file=sys.stderr)
        if err.checkpoint is not None and args.command == "train":
            print(
                f"to resume: python -m vaelab {cli_advice.resume_command(argv, err.checkpoint)}",
                file=sys.stderr,
            )
        return 130
    except TrainingDiverged as err:
        print(f"error: {err}", file=sys.stderr)
        cli_advice.print_commands_after_divergence(args, argv, err)
        return 3
    except KeyboardInterrupt as err:  # Ctrl-C outside training (start-up, evaluate)
        signum = getattr(err, "signum", None)  # course site: its text says what was written
        if signum is not None and str(err):
            why = "interrupted" if signum == signal.SIGINT else "stopped (SIGTERM)"
            print(f"\n{why}: {err}", file=sys.stderr)
            return 128 + signum
        print(f"\ninterrupted: {cli_advice.stopped_early(args)}", file=sys.stderr)
        return 130
    except WriteError as err:  # disk full, no permission: not the user's input
        print(f"error: {err.strerror}", file=sys.stderr)
        saved = Path(args.out) / "checkpoint.pt" if getattr(args, "out", None) else None
        if args.command == "train" and saved is not None and saved.is_file():
            again = cli_advice.resume_command(argv, saved)
            print(f"to resume once there is room: python -m vaelab {again}", file=sys.stderr)
        return 1
    except (ValueError, FileNotFoundError) as err:
        raw = isinstance(err, OSError) and err.errno is not None  # the OS's, not our sentence
        text = cli_advice.os_error(err, args) if raw and isinstance(err, OSError) else err
        print(f"error: {text}", file=sys.stderr)
        return 2
    except OSError as err:  # a path that cannot be used (permissions, a folder for a file)
        print(f"error: {cli_advice.os_error(err, args)}", file=sys.stderr)
        return 1
    except (MemoryError, RuntimeError) as err:  # e.g. a size let through by --allow-large
        if (said := cli_advice.out_of_memory(err)) is None:
            raise
        print(f"error: {said}", file=sys.stderr)
        return 1
    finally:
        if term is not None:
            signal.signal(signal.SIGTERM, term)
        guard.HOLD_AFTER_STOP.reset(hold)
        guard.release_held()


if __name__ == "__main__":
    code = main()
    # the work is done and said: a Ctrl-C during the interpreter's exit (which puts back the
    # default handlers) would end it as killed, 130 and no word, over a finished command
    for _signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(_signum, signal.SIG_IGN)
    sys.exit(code)
