"""Deep Markov Model on polyphonic music: train with Pyro's example settings, then report on
the test set, per observed time step, the -ELBO (a bound, averaged over several guide samples)
and the importance-sampled NLL (an estimate of -log p(x), K whole latent paths from the guide).

    python benchmarks/dmm_jsb.py --data ../shared/data/polyphonic/jsb_chorales.pickle
    python benchmarks/dmm_jsb.py --epochs 5 --samples 100          # short run, shipped JSB
    python benchmarks/dmm_jsb.py --dataset all --epochs 5            # the four pickles
    python benchmarks/dmm_jsb.py --preset krishnan --samples 2000   # the best JSB settings

``--preset NAME`` (``vaelab.presets``: pyro, krishnan, quick) sets the defaults of the model and
training flags; flags given explicitly override it. The checkpoints record the resolved
settings (``config``, ``train_config``); the result line also names the preset.

References (JSB Chorales test set, nats per time step): Pyro's DMM tutorial -ELBO 6.87;
Krishnan, Shalit & Sontag 2017 (arXiv:1609.09869) Table 3: bound 6.926, importance-sampled
6.388 with 2000 samples (their Nottingham 2.77, Piano-midi 7.83, MuseData 6.83). Long runs
on a CPU can go in slices: --time-limit stops with a checkpoint, --resume continues it.
Pyro's example took ~5.3 s per JSB epoch on this 2-core CPU.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from vaelab.config import build_config
from vaelab.datasets import load_dataset
from vaelab.dmm import DMM, DMMIAF, DMMConfig, DMMIAFConfig
from vaelab.presets import PRESETS, apply_preset, preset_optimizer
from vaelab.train import (
    Adam,
    ClippedAdam,
    TrainConfig,
    evaluate_elbo,
    evaluate_nll,
    fit,
    load_checkpoint,
    per_step_decay,
    select_device,
)

REFERENCES = {
    "jsb_chorales": {
        "neg_elbo": "Pyro 6.87 (6.82 with 1 IAF, 6.80 with 2), Krishnan et al. 6.926",
        "nll": "Krishnan 6.388",
    },
    # Krishnan et al. 2017, Table 3 (their DMM, importance-sampled with 2000 samples)
    "nottingham": {"neg_elbo": "-", "nll": "Krishnan 2.77"},
    "piano_midi": {"neg_elbo": "-", "nll": "Krishnan 7.83"},
    "musedata": {"neg_elbo": "-", "nll": "Krishnan 6.83"},
}
PICKLES = ("jsb_chorales", "nottingham", "piano_midi", "musedata")


# preset fields that flags set (flag dest -> field, keyed as --set takes it); the preset's other
# fields pass through
MODEL_FLAGS = {
    "rnn_nonlinearity": "rnn_nonlinearity",
    "rnn_type": "compat.rnn_type",
    "input_embedding": "compat.input_embedding",
    "rnn_output_dropout": "compat.rnn_output_dropout",
    "emission_dim": "emission_dim",
    "transition_dim": "transition_dim",
    "softplus_variance": "compat.softplus_variance",
    "standard_initial_prior": "compat.standard_initial_prior",
    "num_iafs": "num_iafs",
}
TRAIN_FLAGS = {
    "epochs": "epochs",
    "seed": "seed",
    "weight_decay_sum": "weight_decay_sum",
    "bucket_jitter": "bucket_jitter",
    "clip_norm": "clip_norm",
    "anneal_epochs": "anneal_epochs",
    "min_kl_weight": "min_kl_weight",
    "train_samples": "train_samples",
    "lr": "lr",
    "lr_decay": "lr_decay",
    "eval_every": "eval_every",
}


def preset_defaults(name: str) -> dict:
    """The flag defaults that ``--preset name`` sets (argparse dest -> value)."""
    model, train = apply_preset(name)
    defaults = {dest: model[f] for dest, f in MODEL_FLAGS.items() if f in model}
    defaults.update({dest: train[f] for dest, f in TRAIN_FLAGS.items() if f in train})
    optimizer = preset_optimizer(name)  # the optimiser recipe's comparison settings
    if isinstance(optimizer, ClippedAdam):
        defaults.update(
            clip_value_sum=optimizer.clip_value_sum,
            decay_before_clip=optimizer.decay_before_clip,
            adam_eps=optimizer.adam_eps,
        )
    if "analytic_kl" in model:
        defaults["mc_kl"] = not model["analytic_kl"]
    if "betas" in train:
        beta2 = DMM.train_defaults["betas"][1]
        if train["betas"][1] != beta2:
            raise ValueError(
                f"preset {name!r} sets Adam's beta2={train['betas'][1]}, which "
                f"dmm_jsb.py cannot set (its --beta1 pairs with {beta2}); use "
                f"python -m vaelab train --preset {name}"
            )
        defaults["beta1"] = train["betas"][0]
    return defaults


def configs(
    args: argparse.Namespace, x_dim: int, out_dir: str | None = None
) -> tuple[DMMConfig, TrainConfig]:
    """The model config and TrainConfig of a run: ``DMM.train_defaults``, under the preset's
    settings, under the flags (whose defaults the preset already moved)."""
    model_preset, train_preset = apply_preset(args.preset) if args.preset else ({}, {})
    model_preset.pop("analytic_kl", None)  # --mc-kl's default already holds it
    shared = {
        **model_preset,
        "x_dim": x_dim,
        **{
            field: getattr(args, dest) for dest, field in MODEL_FLAGS.items() if dest != "num_iafs"
        },
    }
    if args.num_iafs > 0:  # the IAF guide's KL is a Monte Carlo estimate (no closed form)
        model_config = build_config(
            DMMIAFConfig, {**shared, "analytic_kl": False, "num_iafs": args.num_iafs}
        )
    else:
        model_config = build_config(DMMConfig, {**shared, "analytic_kl": not args.mc_kl})
    config = TrainConfig(
        **{
            **DMM.train_defaults,
            **train_preset,
            "epochs": args.epochs,
            "seed": args.seed,
            "device": args.device,
            "eval_every": args.eval_every,
            "checkpoint_every": max(1, args.eval_every),
            "out_dir": out_dir,
            "progress": args.progress,
            "weight_decay_sum": args.weight_decay_sum,
            "bucket_jitter": args.bucket_jitter,
            "clip_norm": args.clip_norm,
            "betas": (args.beta1, DMM.train_defaults["betas"][1]),
            "anneal_epochs": args.anneal_epochs,
            "min_kl_weight": args.min_kl_weight,
            "train_samples": args.train_samples,
            "lr": args.lr,
            "lr_decay": args.lr_decay,
            "preset": args.preset,
        }
    )
    return model_config, config


def recipe(args: argparse.Namespace) -> Adam:
    """fit's optimiser recipe: Pyro's element clamp and Krishnan et al.'s decay inside the
    clip when the flags (or the preset's defaults) ask for them, else plain Adam."""
    if args.clip_value_sum or args.decay_before_clip or args.adam_eps != ClippedAdam.adam_eps:
        return ClippedAdam(args.clip_value_sum, args.decay_before_clip, args.adam_eps)
    return Adam()


def run(name: str, spec: dict, args: argparse.Namespace) -> dict:
    """Train on the data set ``load_dataset(**spec)`` (recorded in the checkpoints, so that
    ``python -m vaelab evaluate --checkpoint`` needs no --data) and evaluate."""
    train, val, test = load_dataset(**spec)
    torch.manual_seed(args.seed)
    model_config, config = configs(args, train.x_dim, args.out and str(Path(args.out) / name))
    model = DMMIAF(model_config) if model_config.num_iafs > 0 else DMM(model_config)
    device = select_device(args.device)
    resume = None
    if args.resume:
        if not config.out_dir or not (Path(config.out_dir) / "checkpoint.pt").exists():
            raise SystemExit(
                f"--resume needs a checkpoint in --out: "
                f"{config.out_dir}/checkpoint.pt does not exist"
            )
        resume = Path(config.out_dir) / "checkpoint.pt"
    epoch_times: list[float] = []
    mark = [time.perf_counter()]
    deadline = None if args.time_limit is None else mark[0] + 60 * args.time_limit

    first_step: list[int] = []  # the first step of this run (--resume starts later)

    def callback(record: dict) -> bool:
        if record["kind"] == "train" and not first_step:
            first_step.append(record["step"])
        # per-epoch training time, validation excluded: the last train step of each epoch
        if (
            record["kind"] == "train"
            and record["step"] % train.num_batches(config.batch_size) == 0
        ):
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            now = time.perf_counter()
            epoch_times.append(now - mark[0])
            mark[0] = now
        elif record["kind"] == "val":
            mark[0] = time.perf_counter()
            print(f"  epoch {record['epoch']}: val -ELBO {record['nelbo']:.3f}", flush=True)
        # past the deadline: False stops fit, which saves a checkpoint (mid-epoch too) that
        # --resume continues
        return not (
            record["kind"] == "train" and deadline is not None and time.perf_counter() > deadline
        )

    t0 = time.perf_counter()
    history = fit(
        model,
        train,
        val,
        config,
        callback=callback,
        resume=resume,
        data_spec=spec,
        optimizer=recipe(args),
    )
    wall = time.perf_counter() - t0
    epochs = history[-1]["epoch"]  # completed epochs
    # the first epoch includes warm-up (allocations, thread pools); report the rest
    steady = epoch_times[1:] or epoch_times
    result = {
        "data": name,
        "model": model.name,
        "device": str(device),
        "preset": args.preset,
        "threads": torch.get_num_threads(),
        "bucket_jitter": config.bucket_jitter,
        "rnn_nonlinearity": model.config.rnn_nonlinearity,
        "analytic_kl": model.config.analytic_kl,
        "z_dim": model.config.z_dim,
        "rnn_dim": model.config.rnn_dim,
        "batch_size": config.batch_size,
        "softplus_variance": model.config.compat.softplus_variance,
        "standard_initial_prior": model.config.compat.standard_initial_prior,
        "emission_dim": model.config.emission_dim,
        "transition_dim": model.config.transition_dim,
        "rnn_type": model.config.compat.rnn_type,
        "input_embedding": model.config.compat.input_embedding,
        "rnn_output_dropout": model.config.compat.rnn_output_dropout,
        "clip_norm": config.clip_norm,
        "adam_eps": args.adam_eps,
        "betas": config.betas,
        "decay_before_clip": args.decay_before_clip,
        "clip_value_sum": args.clip_value_sum,
        "train_samples": config.train_samples,
        "anneal_epochs": config.anneal_epochs,
        "min_kl_weight": config.min_kl_weight,
        "lr": config.lr,
        "lr_decay": config.lr_decay,
        "transpose": train.transpose,
        "weight_decay_sum": config.weight_decay_sum,  # fit divides it by steps per batch:
        "weight_decay": round(
            per_step_decay(config.weight_decay_sum, train, config.batch_size), 7
        ),
        "epochs": epochs,
        "steps": history[-1]["step"],
        # this run's share, which training_s timed (all of it unless --resume)
        "epochs_this_run": round(
            (history[-1]["step"] - first_step[0] + 1) / train.num_batches(config.batch_size), 2
        )
        if first_step
        else 0,
        "stopped_at_time_limit": history[-1]["stopped"],  # the callback's only stop
        "training_s": round(wall, 1),
        "s_per_epoch": round(sorted(steady)[len(steady) // 2], 3) if steady else None,
        "s_per_epoch_first": round(epoch_times[0], 3) if epoch_times else None,
    }
    t1 = time.perf_counter()
    best = Path(config.out_dir) / "best.pt" if config.out_dir else None
    has_best = best is not None and best.exists()  # the lowest validation -ELBO's weights
    selections = {}
    if args.select != "best" or not has_best:
        selections["last"] = None
    if args.select != "last" and has_best:
        selections["best"] = best
    for label, path in selections.items():
        if path is not None:
            ckpt = load_checkpoint(path, map_location=device)
            model.load_state_dict(ckpt["state_dict"])
            result["best_epoch"] = ckpt["epoch"]
        for split, data in (("val", val), ("test", test)):
            if split == "val" and not args.eval_val:
                continue
            key = f"{label}_{split}"
            elbo = evaluate_elbo(model, data, samples=args.elbo_samples, device=device)
            result[f"{key}_neg_elbo_bound"] = round(elbo["nelbo"], 4)
            result[f"{key}_kl"] = round(elbo["kl"], 4)
            if args.samples > 0:
                result[f"{key}_nll_importance_K{args.samples}"] = round(
                    evaluate_nll(
                        model, data, args.samples, args.eval_batch_size, args.chunk_size, device
                    ),
                    4,
                )
    result["evaluation_s"] = round(time.perf_counter() - t1, 1)
    return result


def report(result: dict, args: argparse.Namespace) -> None:
    ref = REFERENCES.get(result["data"], {"neg_elbo": "-", "nll": "-"})
    print(
        f"\n{result['data']} on {result['device']} ({result['threads']} threads): "
        f"{result['epochs']} epochs ({result['epochs_this_run']} in this run) in "
        f"{result['training_s']} s, "
        f"{result['s_per_epoch']} s/epoch (median after the first; first "
        f"{result['s_per_epoch_first']} s)"
    )
    if result["stopped_at_time_limit"]:
        print(
            f"  stopped at --time-limit after {result['steps']} steps, not converged; the "
            f"checkpoint in --out continues with --resume"
        )
    for label in ("last", "best"):
        if f"{label}_test_neg_elbo_bound" not in result:
            continue
        which = (
            f"final epoch {result['epochs']}"
            if label == "last"
            else f"epoch {result['best_epoch']}, best validation -ELBO"
        )
        print(f"  per observed time step, test set, {which}")
        print(
            f"    -ELBO (a bound; {args.elbo_samples} samples)        "
            f"{result[f'{label}_test_neg_elbo_bound']:8.3f}   {ref['neg_elbo']}"
        )
        key = f"{label}_test_nll_importance_K{args.samples}"
        if key in result:
            print(
                f"    NLL, importance-sampled (K={args.samples:<5})   {result[key]:8.3f}   "
                f"{ref['nll']} (K=2000)"
            )
    print(json.dumps(result))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line, with ``--preset``'s settings as the defaults of the flags."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--preset",
        default=None,
        metavar="NAME",
        help=f"named settings from vaelab.presets ({', '.join(sorted(PRESETS))}) as "
        f"the defaults of the flags below; explicit flags override them",
    )
    p.add_argument(
        "--data",
        default=None,
        help="polyphonic pickle (default: the JSB Chorales shipped in vaelab)",
    )
    p.add_argument(
        "--dataset",
        nargs="+",
        default=None,
        choices=[*PICKLES, "all"],
        help="pickles to loop over, from --data-dir",
    )
    p.add_argument("--data-dir", default="../shared/data/polyphonic")
    p.add_argument("--epochs", type=int, default=DMM.train_defaults["epochs"])
    p.add_argument(
        "--num-iafs",
        type=int,
        default=0,
        help="IAFs in the guide (dmm_iaf; Pyro's tutorial: 6.82 with 1, 6.80 with 2)",
    )
    p.add_argument("--device", default="auto")
    p.add_argument("--samples", type=int, default=2000, help="importance samples K (0 skips)")
    p.add_argument("--elbo-samples", type=int, default=10)
    p.add_argument(
        "--chunk-size",
        type=int,
        default=None,
        help="importance paths per chunk (default: fitted to each batch's length)",
    )
    p.add_argument("--eval-batch-size", type=int, default=16)
    p.add_argument("--eval-every", type=int, default=50, help="validation every N epochs")
    p.add_argument("--eval-val", action="store_true", help="also report the validation set")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="folder for checkpoints (one per data set)")
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue from the checkpoint in --out (up to --epochs in all)",
    )
    p.add_argument(
        "--weight-decay-sum",
        type=float,
        default=DMM.train_defaults["weight_decay_sum"],
        help="L2 weight decay on the batch's summed loss, as Pyro states it "
        "(default: Pyro's); the printed weight_decay is it per step",
    )
    p.add_argument(
        "--rnn-nonlinearity",
        choices=("tanh", "relu"),
        default="tanh",
        help="the guide's backward RNN (Pyro's example: relu)",
    )
    p.add_argument(
        "--rnn-type",
        choices=("rnn", "lstm"),
        default="rnn",
        help="the guide's backward RNN: Elman (Pyro) or LSTM (Krishnan et al.)",
    )
    p.add_argument(
        "--input-embedding",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="a ReLU layer embeds x_t to the RNN's width before the guide's RNN (Krishnan et al.)",
    )
    p.add_argument(
        "--rnn-output-dropout",
        type=float,
        default=0.0,
        help="dropout on the guide RNN's outputs while training (Krishnan et al.: 0.1)",
    )
    p.add_argument(
        "--mc-kl",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="train the flow-free DMM with the one-sample Monte Carlo KL (Pyro's "
        "default) instead of the closed form",
    )
    p.add_argument(
        "--emission-dim",
        type=int,
        default=DMMConfig.emission_dim,
        help="the emitter's hidden width (Pyro: 100; Krishnan et al.: 200)",
    )
    p.add_argument(
        "--transition-dim",
        type=int,
        default=DMMConfig.transition_dim,
        help="the gated transition's hidden width (Pyro: 200; Krishnan et al.: 400)",
    )
    p.add_argument(
        "--softplus-variance",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="softplus gives each Gaussian's variance, not its scale (Krishnan et al.'s code)",
    )
    p.add_argument(
        "--standard-initial-prior",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="p(z_1) = N(0, I) and the guide starts from z_0 = 0 (Krishnan et al.'s "
        "code), instead of a trained z_0 and z_q_0 (Pyro)",
    )
    p.add_argument(
        "--anneal-epochs",
        type=float,
        default=DMM.train_defaults["anneal_epochs"],
        help="KL weight rises linearly to 1 over these epochs (Pyro: 1000; "
        "Krishnan et al.'s JSB runs: 5000 updates, about 417 epochs)",
    )
    p.add_argument(
        "--min-kl-weight",
        type=float,
        default=DMM.train_defaults["min_kl_weight"],
        help="KL weight at the first step (Pyro: 0.2; Krishnan et al.: 0.01)",
    )
    p.add_argument(
        "--lr",
        type=float,
        default=DMM.train_defaults["lr"],
        help="Adam's learning rate (Pyro: 3e-4; Krishnan et al.: 8e-4)",
    )
    p.add_argument(
        "--lr-decay",
        type=float,
        default=DMM.train_defaults["lr_decay"],
        help="learning-rate factor per step (Pyro: 0.99996; Krishnan et al.: 1, none)",
    )
    p.add_argument(
        "--transpose",
        type=int,
        default=0,
        metavar="SEMITONES",
        help="key augmentation: shift each training chorale by a random number of "
        "semitones up to this, afresh every batch (0: off, as the papers)",
    )
    p.add_argument(
        "--train-samples",
        type=int,
        default=1,
        help="guide samples per sequence in each training step, their ELBOs "
        "averaged (less gradient noise from a Monte Carlo KL; Pyro: 1)",
    )
    p.add_argument(
        "--select",
        choices=("last", "best", "both"),
        default="both",
        help="evaluate the final weights, those of the best validation -ELBO "
        "(best.pt, needs --out), or both",
    )
    p.add_argument(
        "--bucket-jitter",
        type=float,
        default=TrainConfig.bucket_jitter,
        help="length-bucket noise in length standard deviations (inf: a plain "
        "shuffle, as Pyro's example)",
    )
    p.add_argument(
        "--clip-value-sum",
        type=float,
        default=ClippedAdam.clip_value_sum,
        help="clamp each gradient element of the summed loss (Pyro's ClippedAdam: "
        "10); 0: off, only the global norm clip",
    )
    p.add_argument(
        "--clip-norm",
        type=float,
        default=DMM.train_defaults["clip_norm"],
        help="clip the gradient's global norm, on our loss per observed step "
        "(Pyro: 10, rarely reached). Krishnan et al. clip at 1 the loss per "
        "sequence, which on JSB (60 steps per chorale) is about 0.0166 here: "
        "every step's gradient is then scaled to that norm",
    )
    p.add_argument(
        "--adam-eps",
        type=float,
        default=ClippedAdam.adam_eps,
        help="Adam's epsilon, on our loss per observed step. Krishnan et al.'s 1e-8 "
        "on their loss per sequence is about 1.66e-10 here on JSB; it matters "
        "with --clip-norm 0.0166, which makes every gradient small",
    )
    p.add_argument(
        "--decay-before-clip",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="the weight decay's gradient is clipped with the loss's (Krishnan et "
        "al.: L2 in the cost), not added after the clip (torch, Pyro)",
    )
    p.add_argument(
        "--beta1",
        type=float,
        default=DMM.train_defaults["betas"][0],
        help="Adam's first-moment decay (Pyro: 0.96; Krishnan et al.: 0.9)",
    )
    p.add_argument(
        "--time-limit",
        type=float,
        default=None,
        metavar="MINUTES",
        help="stop each data set's training after this many minutes (checkpoint "
        "saved, so --resume continues it), then evaluate what was learnt",
    )
    p.add_argument("--progress", action="store_true", help="tqdm bar")
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch CPU threads (default: torch's, one per core)",
    )
    preset = p.parse_known_args(argv)[0].preset
    if preset is not None:
        if preset not in PRESETS:
            p.error(f"unknown preset {preset!r}; choose one of {sorted(PRESETS)}")
        p.set_defaults(**preset_defaults(preset))
    args = p.parse_args(argv)
    if args.time_limit is not None and args.time_limit < 0:
        p.error(f"--time-limit must be >= 0 minutes, got {args.time_limit}")
    if args.elbo_samples < 1 or args.samples < 0:
        p.error(
            f"--elbo-samples must be >= 1 and --samples >= 0 (0 skips the importance-"
            f"sampled NLL), got {args.elbo_samples} and {args.samples}"
        )
    return args


def main() -> None:
    args = parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)

    if args.dataset:
        names = PICKLES if "all" in args.dataset else args.dataset
        jobs = [
            (n, {"name": "polyphonic", "path": str(Path(args.data_dir) / f"{n}.pickle")})
            for n in names
        ]
    elif args.data:
        jobs = [(Path(args.data).stem, {"name": "polyphonic", "path": args.data})]
    else:
        jobs = [("jsb_chorales", {"name": "jsb"})]  # shipped in vaelab
    for name, spec in jobs:
        if args.transpose:  # part of the data spec, which the checkpoints record
            spec["transpose"] = args.transpose
        report(run(name, spec, args), args)


if __name__ == "__main__":
    main()
