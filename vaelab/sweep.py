"""Several seeds (or settings) of one training command as independent processes.

``python -m vaelab sweep --seeds 0 1 2 3 4 --jobs 2 --out runs/sweep -- --model vae --data
digits --epochs 20`` runs ``python -m vaelab train`` once per seed, at most ``--jobs`` at a time
(one per core, or one per GPU: job ``i`` sees only GPU ``i % n_gpus``), each writing
``OUT/seed_S/`` and its own log, then prints one JSON line per run and a summary (mean and
standard deviation of the final validation -ELBO over seeds). Students learn more from five
seeds than from one big batch: the spread says which differences are noise.

Ctrl-C (or SIGTERM, to the sweep alone or its process group) stops the runs in progress as
``train`` stops (the sweep sends each SIGINT: it saves a checkpoint and its log's last line says
how to resume), starts no more, prints what finished and which checkpoints were saved, and
exits with 130 (143 for SIGTERM). The
JSON is strict: a value that is not a number (a mean over no runs, a spread of one run) is
``null``, and the summary's ``notes`` say why.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shlex
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from vaelab.cli_checks import RUN_FILES

# the numbers ``python -m vaelab train`` prints in its JSON line (vaelab.__main__._train)
METRICS = ("val_nelbo", "train_nelbo", "steps")
STOPPING = "stopping after this step"  # what train prints when Ctrl-C reaches it (train.guard)
STOP_GRACE = 60.0  # seconds a stopped run may take to save its checkpoint


@dataclass
class SweepRun:
    seed: int
    out: Path
    returncode: int | None = None
    result: dict | None = None
    error: str | None = None
    interrupted: bool = False  # stopped by the sweep's Ctrl-C (None returncode: never started)


class SweepInterrupted(KeyboardInterrupt):
    """Ctrl-C (or SIGTERM) during :func:`run_sweep`; ``runs`` are every run, finished,
    stopped (their checkpoints saved) or never started (``returncode`` None); ``signum`` the
    signal that stopped the sweep."""

    def __init__(self, runs: list[SweepRun], signum: int = signal.SIGINT) -> None:
        super().__init__("sweep interrupted")
        self.runs = runs
        self.signum = signum


class _Signals:
    """SIGINT and SIGTERM to the sweep, recorded (``got``) rather than raised, so that they
    never land inside ``Popen`` (a started run the sweep would not know of, left training
    with a closed pipe) or inside the collection of a finished run. In the main thread only;
    elsewhere Ctrl-C raises KeyboardInterrupt as usual."""

    def __init__(self) -> None:
        self.got: list[int] = []
        self._before: dict[int, object] = {}

    def __enter__(self) -> _Signals:  # noqa: PYI034  (Self needs Python 3.11)
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGINT, signal.SIGTERM):
                self._before[signum] = signal.signal(signum, self._record)
        return self

    def _record(self, signum: int, frame: object) -> None:
        self.got.append(signum)

    def __exit__(self, *exc: object) -> None:
        for signum, handler in self._before.items():
            signal.signal(signum, handler)  # type: ignore[arg-type]


MAX_THREADS = 1024


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


def check_metric(metric: str) -> None:
    """ValueError naming the metrics a sweep can summarise unless ``metric`` is one."""
    if metric not in METRICS:
        raise ValueError(
            f"--metric {metric!r} is not a number train reports; pass one of {', '.join(METRICS)}"
        )


def _check_args(
    train_args: list[str], seeds: list[int], jobs: int, out: Path, threads: int = 1
) -> None:
    if not seeds:
        raise ValueError("sweep needs at least one seed: pass --seeds 0 1 2")
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"sweep seeds must differ, got {seeds}")
    if jobs < 1:
        raise ValueError(f"--jobs must be >= 1 processes at a time, got {jobs}")
    if not 1 <= threads <= MAX_THREADS:  # OpenMP refuses a count past its own limit
        raise ValueError(
            f"--threads must be in [1, {MAX_THREADS}] torch threads per process (this machine "
            f"has {os.cpu_count()} cores), got {threads}"
        )
    bad = [s for s in seeds if not 0 <= s < 2**32]
    if bad:
        raise ValueError(f"sweep seeds must be in [0, 2**32) (numpy's range), got {bad}")
    for flag in ("--seed", "--out"):
        if _given(flag, train_args):
            raise ValueError(
                f"sweep sets {flag} itself for every run; drop {flag} from the "
                f"training arguments after --"
            )
    if _given("--resume", train_args):
        raise ValueError(
            "sweep starts new runs, one per seed; drop --resume from the training arguments "
            "after --. To continue a seed's run: python -m vaelab train --resume "
            "OUT/seed_S/checkpoint.pt"
        )
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file; pass a folder for the runs")
    used = [f"seed_{s}" for s in seeds if _trained(out / f"seed_{s}")]
    if used:
        resume = out / used[0] / "checkpoint.pt"
        raise ValueError(
            f"--out {out} already holds the runs of {', '.join(used)} from an earlier sweep, "
            f"which this one would overwrite; pass a new folder for --out, other --seeds, or "
            f"remove them (rm -r {' '.join(str(out / u) for u in used)})"
            + (
                f". To continue one: python -m vaelab train --resume {resume}"
                if resume.is_file()
                else ""
            )
        )


def _trained(folder: Path) -> bool:
    """Whether ``folder`` holds a run that trained (a run refused at its start left none)."""
    return any((folder / n).is_file() and (folder / n).stat().st_size > 0 for n in RUN_FILES)


def _given(flag: str, args: list[str]) -> bool:
    return any(a == flag or a.startswith(flag + "=") for a in args)


def _gpu_count() -> int:
    try:
        import torch

        return torch.cuda.device_count()
    except Exception:  # noqa: BLE001 - no torch CUDA: no GPUs to share out
        return 0


@dataclass
class _Job:
    run: SweepRun
    proc: subprocess.Popen[str]
    log: IO[str]
    log_path: Path


def _collect(job: _Job) -> SweepRun:
    """The finished job's result (its JSON line) or error (its log's last line)."""
    run, proc = job.run, job.proc
    stdout = proc.stdout.read() if proc.stdout is not None else ""
    if proc.stdout is not None:
        proc.stdout.close()
    job.log.close()
    run.returncode = proc.returncode
    lines = [line for line in stdout.splitlines() if line.startswith("{")]
    if proc.returncode == 0 and lines:
        run.result = json.loads(lines[-1])
    else:
        err = job.log_path.read_text(errors="replace").strip().splitlines()
        run.error = err[-1] if err else f"exit code {proc.returncode}"
    return run


def _stop(jobs: list[_Job], grace: float = STOP_GRACE, signals: _Signals | None = None) -> None:
    """Ctrl-C for the runs in progress: a terminal's Ctrl-C reached them already (they share
    its process group); the others (``kill -INT`` to the sweep alone) get SIGINT here, once,
    so that each finishes its step and saves a checkpoint. Runs still going after ``grace``
    seconds (or after a second Ctrl-C) get a second SIGINT (stop at once, keeping the last
    checkpoint), then SIGKILL."""
    time.sleep(0.5)  # the terminal's signal is handled within a step

    def told(job: _Job) -> bool:
        return STOPPING in job.log_path.read_text(errors="replace")

    for job in jobs:
        job.run.interrupted = True
        if job.proc.poll() is None and not told(job):
            job.proc.send_signal(signal.SIGINT)
    with contextlib.suppress(KeyboardInterrupt):  # a second Ctrl-C: stop them at once
        _wait(jobs, grace, signals)
    for sig in (signal.SIGINT, signal.SIGKILL):
        alive = [job for job in jobs if job.proc.poll() is None]
        for job in alive:
            job.proc.send_signal(sig)
        _wait(alive, 5.0)


def _wait(jobs: list[_Job], timeout: float, signals: _Signals | None = None) -> None:
    """Until ``jobs`` end, ``timeout`` passes or a second signal reaches the sweep."""
    deadline = time.monotonic() + timeout
    while any(job.proc.poll() is None for job in jobs) and time.monotonic() < deadline:
        if signals is not None and len(signals.got) > 1:
            return
        time.sleep(0.05)


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
    JSON results (or the error each printed).

    Raises :class:`SweepInterrupted` (a KeyboardInterrupt) on Ctrl-C or SIGTERM, after the
    runs in progress have been sent SIGINT, saved their checkpoints and ended; it holds every
    run.
    """
    out = Path(out)
    _check_args(train_args, seeds, jobs, out, threads)
    out.mkdir(parents=True, exist_ok=True)
    gpus = _gpu_count()
    pending = [SweepRun(seed, out / f"seed_{seed}") for seed in seeds]
    running: list[_Job] = []
    done: list[SweepRun] = []
    with _Signals() as signals:
        try:
            _loop(pending, running, done, train_args, out, jobs, threads, gpus, poll, signals)
        except KeyboardInterrupt:  # Ctrl-C outside the main thread
            signals.got.append(signal.SIGINT)
        if signals.got:
            running = [job for job in running if job.run not in done]
            _stop(running, signals=signals)
            done += [_collect(job) for job in running]
            raise SweepInterrupted(
                sorted([*done, *pending], key=lambda r: r.seed), signals.got[0]
            ) from None
    return sorted(done, key=lambda r: r.seed)


def _loop(
    pending: list[SweepRun],
    running: list[_Job],
    done: list[SweepRun],
    train_args: list[str],
    out: Path,
    jobs: int,
    threads: int,
    gpus: int,
    poll: float,
    signals: _Signals,
) -> None:
    """Start and collect runs until all are done or a signal reached the sweep."""
    slot = 0
    while (pending or running) and not signals.got:
        while pending and len(running) < jobs and not signals.got:
            run = pending.pop(0)
            env = {**os.environ, "OMP_NUM_THREADS": str(threads)}  # torch's threads
            if gpus:
                env["CUDA_VISIBLE_DEVICES"] = str(slot % gpus)
            slot += 1
            log_path = out / f"seed_{run.seed}.log"
            log = open(log_path, "w")  # noqa: SIM115 - closed in _collect
            proc = subprocess.Popen(
                _command(train_args, run.seed, run.out),
                env=env,
                stdout=subprocess.PIPE,
                stderr=log,
                text=True,
            )
            running.append(_Job(run, proc, log, log_path))
        for job in [job for job in running if job.proc.poll() is not None]:
            done.append(_collect(job))
            running.remove(job)
        time.sleep(poll)


def summarise(runs: list[SweepRun], key: str = "val_nelbo") -> dict:
    """Mean, sample standard deviation and range of ``key`` over the runs that finished.
    A value that is undefined (no run reported ``key``; one run has no spread) is None, and
    ``notes`` says why; ``failed`` counts runs that ended with an error, ``interrupted`` those
    a Ctrl-C stopped and ``not_started`` those it kept from starting."""
    check_metric(key)
    results = [r.result for r in runs if r.result is not None]
    failed = [r for r in runs if r.result is None and r.returncode is not None]
    values = [float(result[key]) for result in results if _number(result.get(key))]
    n = len(values)
    notes = []
    missing = len(results) - n
    if missing:
        notes.append(
            f"{missing} finished run(s) reported no {key}"
            + (
                " (validation runs at the end of an epoch: with --max-steps short of one "
                "there is none; pass --metric train_nelbo)"
                if key == "val_nelbo"
                else ""
            )
        )
    if n == 0:
        notes.append(f"no run finished with a {key}, so there is no mean")
    elif n == 1:
        notes.append("one run has no spread: sd is null (pass two or more seeds)")
    mean = sum(values) / n if n else None
    sd = (
        math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
        if n > 1 and mean is not None
        else None
    )
    return {
        "metric": key,
        "runs": n,
        "failed": sum(not r.interrupted for r in failed),
        "interrupted": sum(r.interrupted for r in failed),
        "not_started": sum(r.returncode is None for r in runs),
        "mean": mean,
        "sd": sd,
        "min": min(values, default=None),
        "max": max(values, default=None),
        "notes": notes,
    }


def _number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def strict_json(record: dict) -> str:
    """``record`` as strict JSON: every NaN or infinity becomes null, named in ``notes``."""
    bad = sorted(k for k, v in record.items() if isinstance(v, float) and not math.isfinite(v))
    if not bad:
        return json.dumps(record, allow_nan=False)
    notes = [*record.get("notes", []), *(f"{k} was {record[k]}, printed as null" for k in bad)]
    return json.dumps({**record, **dict.fromkeys(bad), "notes": notes}, allow_nan=False)


def main(
    train_args: list[str],
    seeds: list[int],
    out: str | Path,
    jobs: int = 1,
    threads: int = 1,
    metric: str = "val_nelbo",
) -> int:
    """``python -m vaelab sweep``: run, print one JSON line per run and the summary; returns
    the exit code (0 all finished with the metric, 1 a run failed or none reported the
    metric, 130 Ctrl-C or 143 SIGTERM: the runs finished so far are summarised, and the
    message names the checkpoints the stopped runs saved)."""
    check_metric(metric)
    if not str(out).strip():
        raise ValueError("--out is empty; pass a folder name for the seeds' run folders")
    signum = 0
    try:
        runs = run_sweep(train_args, seeds, out, jobs, threads)
    except SweepInterrupted as stop:
        runs, signum = stop.runs, stop.signum
    for run in runs:
        if run.returncode is None:
            continue  # never started
        record = {
            "seed": run.seed,
            "out": str(run.out),
            "returncode": run.returncode,
            "error": run.error,
            **(run.result or {}),
        }
        print(strict_json(record))
    summary = summarise(runs, metric)
    print(strict_json({"summary": summary}))
    if signum:
        stopped = [r for r in runs if r.interrupted and r.result is None and r.returncode]
        saved = [r for r in stopped if (r.out / "checkpoint.pt").is_file()]
        kept = (
            f"{len(saved)} stopped with a checkpoint ({', '.join(str(r.out) for r in saved)}; "
            f"the last line of OUT/seed_S.log says how to resume)"
            if saved
            else "0 stopped with a checkpoint"
        )
        unsaved = len(stopped) - len(saved)
        waiting = [str(r.seed) for r in runs if r.returncode is None]
        options = [
            *(["--jobs", str(jobs)] if jobs != 1 else []),
            *(["--threads", str(threads)] if threads != 1 else []),
            *(["--metric", metric] if metric != "val_nelbo" else []),
        ]
        rest = shlex.join(
            ["python", "-m", "vaelab", "sweep", "--seeds", *waiting, "--out", str(out)]
            + [*options, "--", *train_args]
        )
        print(
            f"\ninterrupted: {len([r for r in runs if r.result is not None])} of {len(runs)} "
            f"runs finished and are summarised above; {kept}; "
            + (f"{unsaved} stopped before their first checkpoint; " if unsaved else "")
            + f"{summary['not_started']} not started"
            + (f" (to run them: {rest})" if waiting else ""),
            file=sys.stderr,
        )
        return 128 + signum  # 130 for Ctrl-C, 143 for SIGTERM
    if summary["failed"]:
        out = Path(out)
        for run in runs:
            if run.result is None and run.returncode is not None and not run.interrupted:
                # The seed's reason is train's own sentence, so any advice in it ("the same
                # command", "--out") is about the seed's train command: print that command.
                own = shlex.join(["python", *_command(train_args, run.seed, run.out)[1:]])
                print(
                    f"error: seed {run.seed} failed (exit code {run.returncode}): {run.error} "
                    f"(the whole output is in {out / f'seed_{run.seed}.log'}; the seed's own "
                    f"command, which that advice is about: {own})",
                    file=sys.stderr,
                )
        return 1
    if summary["runs"] == 0:
        print(f"error: {'; '.join(summary['notes'])}", file=sys.stderr)
        return 1
    return 0
