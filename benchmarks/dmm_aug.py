"""The DMM, the augmented DMM and the augmented DMM with an autoregressive (MADE) emission on the
four polyphonic data sets, beside Krishnan et al. 2017 (arXiv:1609.09869), Tables 3-4: test
-ELBO and importance-sampled NLL in nats per observed step, and seconds per training epoch
measured in the same run.

    python benchmarks/dmm_aug.py --data-dir ../shared/data/polyphonic --datasets jsb \\
        --epochs 40 --samples 500 --threads 1

With --alternate ROUNDS it only times: one model per label, built once with its preset, trains
one epoch each in turn, ROUNDS times (dmm, dmm_aug, dmm_aug_made, dmm, ...), so every model
meets the same machine load; the first round is a warm-up and is not counted. It prints each
epoch's seconds and the ratio to the plain DMM's epoch of the same round:

    nice -n 5 python benchmarks/dmm_aug.py --alternate 6 --threads 1

Each model trains with its preset (krishnan, krishnan-aug, krishnan-aug-made) for --epochs
(the presets' 1300 epochs are the full schedule; the KL weight's warm-up is scaled to the
epochs run, so a short run ends annealed), then is evaluated on the test set. One JSON line
per run, then the table.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from vaelab.config import make_model
from vaelab.data import load_polyphonic
from vaelab.presets import apply_preset, preset_optimizer
from vaelab.train import TrainConfig, evaluate_elbo, evaluate_nll, fit

# Krishnan et al. 2017, Tables 3-4: test IS-NLL (-ELBO), nats per observed step
KRISHNAN = {
    "dmm": {
        "jsb": (6.388, 6.926),
        "nottingham": (2.770, 2.964),
        "piano_midi": (7.835, 7.980),
        "musedata": (6.831, 6.989),
    },
    "dmm_aug": {
        "jsb": (6.288, 6.773),
        "nottingham": (2.679, 2.856),
        "piano_midi": (7.591, 7.721),
        "musedata": (6.356, 6.476),
    },
    "dmm_aug_made": {
        "jsb": (5.118, 5.335),
        "nottingham": (2.305, 2.347),
        "piano_midi": (7.048, 7.099),
        "musedata": (6.049, 6.115),
    },
}
KRISHNAN["dmm_aug_made_deep"] = KRISHNAN["dmm_aug_made"]  # answers the same row (NADE)
RUNS = {
    "dmm": ("dmm", "krishnan"),
    "dmm_aug": ("dmm_aug", "krishnan-aug"),
    "dmm_aug_made": ("dmm_aug", "krishnan-aug-made"),
    "dmm_aug_made_deep": ("dmm_aug", "krishnan-aug-made-deep"),
}
DEFAULT_RUNS = ["dmm", "dmm_aug", "dmm_aug_made"]  # the deep MADE on request (--models)
FILES = {
    "jsb": "jsb_chorales.pickle",
    "nottingham": "nottingham.pickle",
    "piano_midi": "piano_midi.pickle",
    "musedata": "musedata.pickle",
}


def run(label: str, dataset: str, args: argparse.Namespace, seed: int) -> dict:
    """Train and evaluate one model on one data set; returns the JSON record."""
    model_name, preset = RUNS[label]
    train, _, test = load_polyphonic(Path(args.data_dir) / FILES[dataset])
    model_sets, train_sets = apply_preset(preset)
    torch.manual_seed(seed)
    model = make_model(model_name, train, model_sets)
    # the preset's schedule, its warm-up scaled to the epochs run
    anneal = train_sets["anneal_epochs"] * args.epochs / train_sets["epochs"]
    config = TrainConfig(
        **{
            **train_sets,
            "epochs": args.epochs,
            "anneal_epochs": anneal,
            "seed": seed,
            "progress": False,
            "eval_every": 0,
            "device": args.device,
            "preset": preset,
        }
    )
    epoch_seconds: list[float] = []
    last = [time.perf_counter()]

    def clock(record: dict) -> None:  # the wall time of every epoch
        if record["kind"] == "train" and record["step"] % steps_per_epoch == 0:
            now = time.perf_counter()
            epoch_seconds.append(now - last[0])
            last[0] = now

    steps_per_epoch = -(-len(train) // config.batch_size)
    start = time.perf_counter()
    fit(model, train, None, config, callback=clock, optimizer=preset_optimizer(preset))
    seconds = time.perf_counter() - start
    torch.manual_seed(seed)
    elbo = evaluate_elbo(model, test, samples=args.elbo_samples, batch_size=16)["nelbo"]
    nll = evaluate_nll(model, test, args.samples, batch_size=16) if args.samples else None
    return {
        "model": label,
        "dataset": dataset,
        "seed": seed,
        "epochs": args.epochs,
        "train_seconds": round(seconds, 1),
        "median_epoch_s": round(statistics.median(epoch_seconds[1:] or epoch_seconds), 3),
        "test_nelbo": round(elbo, 3),
        "test_nll_is": None if nll is None else round(nll, 3),
        "K": args.samples,
        "threads": torch.get_num_threads(),
    }


def alternate(args: argparse.Namespace, dataset: str) -> None:
    """Time epochs of the models in turn (see the module); prints JSON lines and a summary."""
    train, _, _ = load_polyphonic(Path(args.data_dir) / FILES[dataset])
    models, configs, optimizers = {}, {}, {}
    for label in args.models:
        model_name, preset = RUNS[label]
        model_sets, train_sets = apply_preset(preset)
        torch.manual_seed(args.seeds[0])
        models[label] = make_model(model_name, train, model_sets)
        configs[label] = TrainConfig(
            **{
                **train_sets,
                "epochs": 1,
                "seed": args.seeds[0],
                "progress": False,
                "eval_every": 0,
                "device": args.device,
                "preset": preset,
            }
        )
        optimizers[label] = preset_optimizer(preset)
    seconds: dict[str, list[float]] = {label: [] for label in args.models}
    for round_ in range(args.alternate):
        for label, model in models.items():
            start = time.perf_counter()
            fit(model, train, None, configs[label], optimizer=optimizers[label])
            epoch = time.perf_counter() - start
            print(json.dumps({"round": round_, "model": label, "epoch_s": round(epoch, 4)}))
            if round_ > 0:  # the first round warms up
                seconds[label].append(epoch)
    print(
        f"\n{dataset}: seconds per training epoch, {args.alternate - 1} rounds after a warm-up, "
        f"{torch.get_num_threads()} thread(s), models taking turns"
    )
    for label, times in seconds.items():
        line = f"  {label:17s} median {statistics.median(times):6.3f}  range {min(times):.3f}-"
        line += f"{max(times):.3f}"
        if label != "dmm" and "dmm" in seconds:
            ratios = [t / d for t, d in zip(times, seconds["dmm"], strict=True)]
            line += (
                f"  / dmm: median {statistics.median(ratios):.2f} "
                f"(rounds {min(ratios):.2f}-{max(ratios):.2f})"
            )
        print(line)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-dir", default="../shared/data/polyphonic")
    p.add_argument("--datasets", nargs="+", default=["jsb"], choices=sorted(FILES))
    p.add_argument("--models", nargs="+", default=DEFAULT_RUNS, choices=list(RUNS))
    p.add_argument("--epochs", type=int, default=40)
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--samples", type=int, default=500, help="importance samples K (0 skips)")
    p.add_argument("--elbo-samples", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default="cpu")
    p.add_argument(
        "--alternate",
        type=int,
        default=0,
        metavar="ROUNDS",
        help="only time epochs, the models taking turns ROUNDS times (at least 2)",
    )
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    if args.alternate:
        if args.alternate < 2:
            p.error(
                f"--alternate needs at least 2 rounds (the first warms up), got {args.alternate}"
            )
        for dataset in args.datasets:
            alternate(args, dataset)
        return
    results = []
    for dataset in args.datasets:
        for seed in args.seeds:
            for label in args.models:
                record = run(label, dataset, args, seed)
                results.append(record)
                print(json.dumps(record), flush=True)
    print(
        f"\ntest, nats per observed step; {args.epochs} epochs, K={args.samples}, "
        f"{args.threads} thread(s)"
    )
    print(
        f"  {'data':11s} {'model':13s} {'-ELBO':>7s} {'IS-NLL':>7s}   {'Krishnan':>15s}"
        f"  {'s/epoch':>7s}"
    )
    for r in results:
        ref_nll, ref_elbo = KRISHNAN[r["model"]][r["dataset"]]
        nll = "-" if r["test_nll_is"] is None else f"{r['test_nll_is']:.3f}"
        print(
            f"  {r['dataset']:11s} {r['model']:13s} {r['test_nelbo']:7.3f} {nll:>7s}   "
            f"{ref_nll:.3f} ({ref_elbo:.3f})  {r['median_epoch_s']:7.3f}"
        )
    for dataset in args.datasets:
        by = {r["model"]: r["median_epoch_s"] for r in results if r["dataset"] == dataset}
        if "dmm" in by:
            for label in ("dmm_aug", "dmm_aug_made"):
                if label in by:
                    print(f"  {dataset}: {label} epoch / dmm epoch = {by[label] / by['dmm']:.2f}")


if __name__ == "__main__":
    main()
