"""Soak test: train the DMM on the packaged JSB chorales for M minutes and watch memory;
with ``--dashboard``, drive the hosted dashboard for M minutes and watch the server's memory.

Trainer soak (the default): prints the process's resident memory (VmRSS) every ``--every``
seconds while ``fit`` trains with the DMM's own defaults (checkpoints into a temporary
folder, validation every 10 epochs), then one JSON line of final figures: steps, the last
training and validation -ELBO, and resident memory at the first sample after warm-up, at the
end and at its peak. A leak shows as ``growth_mb`` rising with ``--minutes``; the target is
none beyond noise.

    python benchmarks/soak.py --minutes 60            # the hour the issue asks for
    python benchmarks/soak.py --minutes 0.1 --every 2  # a smoke run (tests)

Dashboard soak (``--dashboard``): ``streamlit run app.py`` in hosted mode on 127.0.0.1 with at
most one run training at once, driven by a light, steady load: one headless Chromium session
at a time opens the page, starts a small run (vae on digits, hidden size 16, ``--run-steps``
steps), watches it to its end and closes (a new session for the next run, as a class would).
The server process's resident memory (the Streamlit process only, not the training
processes) is printed every ``--every`` seconds (30 by default here), and at the end one JSON
line: runs finished, memory at the first sample, after ``--warmup`` minutes, at the end and at
its peak, the drift over the first hour (memory at the last sample within 60 minutes minus
memory after warm-up) and the least-squares slope after warm-up in MB per hour.

    nice -n 15 python benchmarks/soak.py --dashboard --minutes 60   # the issue's hour
    python benchmarks/soak.py --dashboard --minutes 2 --warmup 0.5  # a short try
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
    p.add_argument(
        "--every",
        type=float,
        default=None,
        help="seconds between memory lines (default 60; 30 with --dashboard)",
    )
    p.add_argument(
        "--dashboard",
        action="store_true",
        help="soak the hosted dashboard server instead of the trainer",
    )
    p.add_argument(
        "--run-steps", type=int, default=600, help="--dashboard: steps of each run (600)"
    )
    p.add_argument(
        "--warmup",
        type=float,
        default=5.0,
        help="--dashboard: minutes before the baseline memory sample (5)",
    )
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
    if args.every is None:
        args.every = 30.0 if args.dashboard else 60.0
    if args.dashboard:
        if args.run_steps < 1 or args.warmup < 0:
            p.error("--run-steps must be >= 1 and --warmup >= 0")
        return dashboard_soak(args.minutes, args.every, args.run_steps, args.warmup)
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


def _slope_mb_per_hour(samples: list[tuple[float, float]]) -> float | None:
    """Least-squares slope of (seconds, MB) samples, in MB per hour; None for < 2 samples."""
    if len(samples) < 2:
        return None
    n = len(samples)
    mt = sum(t for t, _ in samples) / n
    mm = sum(m for _, m in samples) / n
    var = sum((t - mt) ** 2 for t, _ in samples)
    if var == 0:
        return None
    return 3600 * sum((t - mt) * (m - mm) for t, m in samples) / var


def dashboard_soak(minutes: float, every: float, run_steps: int, warmup: float) -> dict:
    """The hosted server under a light, steady load for ``minutes``; its memory every
    ``every`` seconds (see the module's docstring)."""
    import re
    import threading

    import psutil
    from playwright.sync_api import sync_playwright

    here = Path(__file__).resolve().parent
    sys.path.insert(0, str(here))
    import dashboard_load  # the hosted server and the session start (one copy)

    from vaelab import runs

    work = Path(tempfile.mkdtemp(prefix="vaelab-soak-dashboard-"))
    root = work / "runs"
    port = dashboard_load.free_port()
    server = dashboard_load.serve(port, root, 1, work / "streamlit.log")
    process = psutil.Process(server.pid)
    start = time.monotonic()
    deadline = start + 60 * minutes
    samples: list[tuple[float, float]] = []  # (seconds, server resident MB)
    counts = {"started": 0, "finished": 0, "other": 0, "errors": 0, "cut_off": 0}
    done = threading.Event()

    def sample() -> None:
        while True:
            try:
                rss = process.memory_info().rss / 2**20
            except psutil.NoSuchProcess:
                return
            samples.append((time.monotonic() - start, rss))
            print(
                f"t={samples[-1][0]:8.1f} s  runs finished {counts['finished']:4d}  "
                f"server resident {rss:8.1f} MB",
                flush=True,
            )
            if done.wait(every):
                return

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    ended = re.compile(r"— (stopped|finished|failed)")
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(
                executable_path=dashboard_load.CHROMIUM,
                args=dashboard_load.CHROMIUM_ARGS,
                headless=True,
            )
            try:
                while time.monotonic() < deadline:
                    page = None
                    try:
                        page = dashboard_load.start_session(
                            browser, f"http://127.0.0.1:{port}", 0, run_steps
                        )
                        counts["started"] += 1
                        left = max(1.0, deadline - time.monotonic()) * 1000
                        page.get_by_text(ended).first.wait_for(timeout=min(600_000, left))
                        text = page.get_by_text(ended).first.inner_text()
                        counts["finished" if "— finished" in text else "other"] += 1
                    except Exception as e:  # noqa: BLE001 - one failed session: say it, go on
                        if time.monotonic() >= deadline:  # the run in flight at the end
                            counts["cut_off"] += 1
                            continue
                        counts["errors"] += 1
                        print(f"session error: {type(e).__name__}: {e}"[:300], flush=True)
                    finally:
                        if page is not None:
                            page.context.close()
                    time.sleep(1.0)
            finally:
                browser.close()
    finally:
        done.set()
        sampler.join()
        server.terminate()
        server.wait(30)
    states = [r["state"] for r in runs.list_runs(root)]
    base = next((s for s in samples if s[0] >= 60 * warmup), samples[-1])
    in_hour = [s for s in samples if s[0] <= 3600]
    result = {
        "mode": "dashboard",
        "minutes": round((time.monotonic() - start) / 60, 3),
        "run_steps": run_steps,
        "sessions": counts["started"],
        "runs_finished": counts["finished"],
        "runs_other_end": counts["other"],
        "session_errors": counts["errors"],
        "cut_off_at_end": counts["cut_off"],
        "folders_finished": states.count("finished"),
        "folders": len(states),
        "rss_mb_first": round(samples[0][1], 1),
        "rss_mb_after_warmup": round(base[1], 1),
        "warmup_s": round(base[0], 1),
        "rss_mb_end": round(samples[-1][1], 1),
        "rss_mb_max": round(max(s[1] for s in samples), 1),
        "first_hour_drift_mb": round(in_hour[-1][1] - base[1], 1),
        "first_hour_drift_until_s": round(in_hour[-1][0], 1),
        "slope_mb_per_hour_after_warmup": None,
        "samples": len(samples),
    }
    slope = _slope_mb_per_hour([s for s in samples if s[0] >= base[0]])
    if slope is not None:
        result["slope_mb_per_hour_after_warmup"] = round(slope, 1)
    print(json.dumps(result), flush=True)
    return result


if __name__ == "__main__":
    main()
