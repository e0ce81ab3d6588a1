"""Several seeds (or settings) of one training command as independent processes.

``python -m vaelab sweep --seeds 0 1 2 3 4 --jobs 2 --out runs/sweep -- --model vae --data
digits --epochs 20`` runs ``python -m vaelab train`` once per seed, at most ``--jobs`` at a time
(one per core, or one per GPU: job ``i`` sees only GPU ``i % n_gpus``), each writing
``OUT/seed_S/`` and its own log, then prints one JSON line per run and a summary (mean and
standard deviation of the final validation -ELBO over seeds). Students learn more from five
seeds than from one big batch: the spread says which differences are noise.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path


@dataclass
class SweepRun:
    seed: int
    out: Path
    returncode: int | None = None
    result: dict | None = None
    error: str | None = None


def _command(train_args: list[str], seed: int, out: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "vaelab",
        "train",
        *train_args,
        "--seed",
        str(seed),
        "--out",
        str(out),
    ]


def _check_args(train_args: list[str], seeds: list[int], jobs: int, out: Path) -> None:
    if not seeds:
        raise ValueError("sweep needs at least one seed: pass --seeds 0 1 2")
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"sweep seeds must differ, got {seeds}")
    if jobs < 1:
        raise ValueError(f"--jobs must be >= 1 processes at a time, got {jobs}")
    for flag in ("--seed", "--out"):
        if any(a == flag or a.startswith(flag + "=") for a in train_args):
            raise ValueError(
                f"sweep sets {flag} itself for every run; drop {flag} from the "
                f"training arguments after --"
            )
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file; pass a folder for the runs")


def _gpu_count() -> int:
    try:
        import torch

        return torch.cuda.device_count()
    except Exception:  # noqa: BLE001 - no torch CUDA: no GPUs to share out
        return 0


def run_sweep(
    train_args: list[str],
    seeds: list[int],
    out: str | Path,
    jobs: int = 1,
    threads: int = 1,
    poll: float = 0.2,
) -> list[SweepRun]:
    """Run ``python -m vaelab train TRAIN_ARGS --seed S --out OUT/seed_S`` for every seed, at
    most ``jobs`` at once with ``threads`` torch threads each; returns the runs with their
    JSON results (or the error each printed)."""
    out = Path(out)
    _check_args(train_args, seeds, jobs, out)
    out.mkdir(parents=True, exist_ok=True)
    gpus = _gpu_count()
    pending = [SweepRun(seed, out / f"seed_{seed}") for seed in seeds]
    running: list[tuple[SweepRun, subprocess.Popen, object]] = []
    done: list[SweepRun] = []
    slot = 0
    while pending or running:
        while pending and len(running) < jobs:
            run = pending.pop(0)
            env = {**os.environ, "OMP_NUM_THREADS": str(threads)}  # torch's intra-op threads
            if gpus:
                env["CUDA_VISIBLE_DEVICES"] = str(slot % gpus)
            slot += 1
            log = open(out / f"seed_{run.seed}.log", "w")  # noqa: SIM115 - closed below
            proc = subprocess.Popen(
                _command(train_args, run.seed, run.out),
                env=env,
                stdout=subprocess.PIPE,
                stderr=log,
                text=True,
            )
            running.append((run, proc, log))
        for item in list(running):
            run, proc, log = item
            if proc.poll() is None:
                continue
            stdout = proc.stdout.read()
            proc.stdout.close()
            log.close()
            running.remove(item)
            run.returncode = proc.returncode
            lines = [line for line in stdout.splitlines() if line.startswith("{")]
            if proc.returncode == 0 and lines:
                run.result = json.loads(lines[-1])
            else:
                err = (out / f"seed_{run.seed}.log").read_text().strip().splitlines()
                run.error = err[-1] if err else f"exit code {proc.returncode}"
            done.append(run)
        time.sleep(poll)
    return sorted(done, key=lambda r: r.seed)


def summarise(runs: list[SweepRun], key: str = "val_nelbo") -> dict:
    """Mean, sample standard deviation and range of ``key`` over the runs that finished."""
    values = [r.result[key] for r in runs if r.result and r.result.get(key) is not None]
    n = len(values)
    mean = sum(values) / n if n else math.nan
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else math.nan
    return {
        "metric": key,
        "runs": n,
        "failed": sum(r.result is None for r in runs),
        "mean": mean,
        "sd": sd,
        "min": min(values, default=math.nan),
        "max": max(values, default=math.nan),
    }
