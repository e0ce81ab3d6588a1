"""Soak test: train the DMM on the packaged JSB chorales for M minutes and watch memory.

Prints the process's resident memory (VmRSS) every ``--every`` seconds while ``fit`` trains
with the DMM's own defaults (checkpoints into a temporary folder, validation every 10
epochs), then one JSON line of final figures: steps, the last training and validation
-ELBO, and resident memory at the first sample after warm-up, at the end and at its peak. A
leak shows as ``growth_mb`` rising with ``--minutes``; the target is none beyond noise.

    python benchmarks/soak.py --minutes 60            # the hour the issue asks for
    python benchmarks/soak.py --minutes 0.1 --every 2  # a smoke run (tests)
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import sys
import tempfile
import time
from pathlib import Path

import torch

from vaelab.config import make_model, parse_sets
from vaelab.datasets import load_dataset
from vaelab.dmm import DMM
from vaelab.train import TrainConfig, fit, seed_everything


def resident_mb() -> float:
    """This process's resident memory in MB (VmRSS from /proc; the peak elsewhere)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # kB on Linux, bytes on macOS
    return peak / (1024 * 1024 if sys.platform == "darwin" else 1024)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--minutes", type=float, default=60.0, help="training time (default 60)")
    p.add_argument("--every", type=float, default=60.0, help="seconds between memory lines")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="DMM config field, e.g. rnn_dim=64 (default: the DMM's defaults)",
    )
    p.add_argument("--out", default=None, help="checkpoint folder (default: a temporary one)")
    args = p.parse_args(argv)
    if not args.minutes > 0 or not args.every > 0 or args.threads < 1:
        p.error("--minutes and --every must be > 0 and --threads >= 1")
    torch.set_num_threads(args.threads)

    train, val, _ = load_dataset("jsb")
    seed_everything(args.seed)
    model = make_model("dmm", train, parse_sets(args.set))
    folder = tempfile.TemporaryDirectory(prefix="vaelab-soak-") if args.out is None else None
    out = args.out or folder.name
    config = TrainConfig(
        **{
            **DMM.train_defaults,
            "epochs": 10**6,
            "seed": args.seed,
            "progress": False,
            "out_dir": out,
        }
    )

    start = time.perf_counter()
    deadline = start + 60 * args.minutes
    samples: list[tuple[float, int, float]] = []  # (seconds, step, resident MB)
    last = {"train": math.nan, "val": math.nan}
    next_print = start  # a first line after the first step

    def watch(record: dict) -> bool:
        nonlocal next_print
        if record["kind"] in last:
            last[record["kind"]] = record["nelbo"]
        now = time.perf_counter()
        if record["kind"] == "train" and now >= next_print:
            samples.append((now - start, record["step"], resident_mb()))
            print(
                f"t={now - start:8.1f} s  step {record['step']:7d}  resident "
                f"{samples[-1][2]:8.1f} MB  train -ELBO {last['train']:.3f}",
                flush=True,
            )
            next_print = now + args.every
        return now < deadline  # False: fit saves a checkpoint and stops

    history = fit(model, train, val, config, callback=watch, data_spec={"name": "jsb"})
    samples.append((time.perf_counter() - start, history[-1]["step"], resident_mb()))
    # warm-up (allocator pools, the first validation) ends by the second sample
    base = samples[1][2] if len(samples) > 2 else samples[0][2]
    result = {
        "minutes": round((time.perf_counter() - start) / 60, 3),
        "steps": history[-1]["step"],
        "epochs": history[-1]["epoch"],
        "train_nelbo": last["train"],
        "val_nelbo": None if math.isnan(last["val"]) else last["val"],
        "rss_mb_first": round(samples[0][2], 1),
        "rss_mb_after_warmup": round(base, 1),
        "rss_mb_end": round(samples[-1][2], 1),
        "rss_mb_max": round(max(s[2] for s in samples), 1),
        "growth_mb": round(samples[-1][2] - base, 1),
        "samples": len(samples),
        "threads": args.threads,
    }
    print(json.dumps(result), flush=True)
    if folder is not None:
        folder.cleanup()
    return result


if __name__ == "__main__":
    main()
