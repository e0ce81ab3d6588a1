"""Load on a hosted dashboard: N browser sessions (Playwright contexts in Debian's Chromium)
on one ``streamlit run app.py`` in hosted mode on 127.0.0.1, each starting a small run of its
own (vae on digits, hidden size 16 + its session number, a fixed number of steps), with at
most ``--max-runs`` training at once (default: the number of cores).

While the runs train, every page is read every ``--every`` seconds. When a page's status line
shows a newer step, that record's age is taken: the time now minus the ``wall`` time the
training process wrote with the record in ``metrics.jsonl``. This is the record-to-chart
latency of the session's own run with its page attached. The server's resident memory and
CPU (the Streamlit process only, not the training processes) are sampled every second. At
the end the benchmark checks that every run finished with its own settings.

    python benchmarks/dashboard_load.py --sessions 4 --steps 400      # small, on 2 cores
    python benchmarks/dashboard_load.py --sessions 30 --steps 2000    # the class-sized run

Loopback only, and bounded: everything stops after ``--limit`` seconds. Prints one line per
figure and a JSON line. Needs Chromium at /usr/bin/chromium and ``playwright`` (test extra).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from vaelab import runs  # the repository's vaelab, run from anywhere

sys.path.insert(0, str(Path(__file__).resolve().parent))
import dashboard_overhead

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
STATUS = re.compile(r"— (queued|training|paused|stopped|finished|failed)(?:, step (\d+))?")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve(port: int, root: Path, max_runs: int, log: Path) -> subprocess.Popen:
    """The dashboard in hosted mode over ``root``, at most ``max_runs`` training at once."""
    return dashboard_overhead.serve(
        port,
        log,
        {"VAELAB_HOSTED": "1", "VAELAB_RUNS_ROOT": str(root), "VAELAB_MAX_RUNS": str(max_runs)},
    )


class Sampler(threading.Thread):
    """The server process's resident memory (MB) and CPU (cores) once a second."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.process = psutil.Process(pid)
        self.samples: list[tuple[float, float, float]] = []
        self.done = threading.Event()

    def run(self) -> None:
        self.process.cpu_percent()
        start = time.monotonic()
        while not self.done.wait(1.0):
            try:
                self.samples.append(
                    (
                        time.monotonic() - start,
                        self.process.memory_info().rss / 2**20,
                        self.process.cpu_percent() / 100,
                    )
                )
            except psutil.NoSuchProcess:
                return


def fill(page, label: str, value: str) -> None:
    box = page.get_by_label(label, exact=True)
    for _ in range(5):  # a rerun may redraw the box under the first try
        box.fill(value)
        box.press("Enter")
        time.sleep(0.3)
        if box.count() == 1 and box.input_value() == value:
            return
    raise RuntimeError(f"could not set {label!r} to {value}")


def start_session(browser, url: str, i: int, steps: int):
    page = browser.new_context(viewport={"width": 1300, "height": 1400}).new_page()
    page.set_default_timeout(120_000)
    page.goto(url)
    page.get_by_text("press Train").wait_for()
    fill(page, "hidden size", str(16 + i))
    fill(page, "epochs", "100000")
    fill(page, page.get_by_text(re.compile(r"^max steps")).first.inner_text(), str(steps))
    page.get_by_test_id("stButton").get_by_role("button", name="Train", exact=True).click()
    page.wait_for_url(re.compile(r"run="))
    return page


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sessions", type=int, default=4)
    parser.add_argument("--steps", type=int, default=400, help="steps per run")
    parser.add_argument("--max-runs", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--every", type=float, default=0.25, help="seconds between reads")
    parser.add_argument("--limit", type=float, default=600.0, help="seconds, in all")
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    work = Path(tempfile.mkdtemp(prefix="vaelab-load-"))
    root = work / "runs"
    port = free_port()
    deadline = time.monotonic() + args.limit
    server = serve(port, root, args.max_runs, work / "streamlit.log")
    sampler = Sampler(server.pid)
    sampler.start()
    ages: list[float] = []
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(
                executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True
            )
            try:
                pages = [
                    start_session(browser, f"http://127.0.0.1:{port}", i, args.steps)
                    for i in range(args.sessions)
                ]
                ids = [re.search(r"run=([\w-]+)", page.url).group(1) for page in pages]
                shown = dict.fromkeys(ids, 0)
                walls: dict[str, dict[int, float]] = {i: {} for i in ids}
                offsets = dict.fromkeys(ids, 0)
                ended: set[str] = set()
                while len(ended) < len(ids) and time.monotonic() < deadline:
                    for page, run_id in zip(pages, ids, strict=True):
                        if run_id in ended:
                            continue
                        try:
                            text = page.get_by_text(STATUS).first.inner_text(timeout=2_000)
                        except Exception:  # noqa: BLE001, S112 - a page mid-rerun: next time
                            continue
                        now = time.time()
                        match = STATUS.search(text)
                        step = int(match.group(2) or 0)
                        if step > shown[run_id]:
                            new, offsets[run_id] = runs.read_metrics(
                                root / run_id, offsets[run_id]
                            )
                            walls[run_id].update(
                                {r["step"]: r["wall"] for r in new if r.get("kind") == "train"}
                            )
                            if step in walls[run_id]:
                                ages.append(now - walls[run_id][step])
                            shown[run_id] = step
                        if match.group(1) in ("stopped", "finished", "failed"):
                            ended.add(run_id)
                    time.sleep(args.every)
            finally:
                browser.close()
    finally:
        sampler.done.set()
        sampler.join()
        server.terminate()
        server.wait(30)
    finished = [runs.read_status(root / i) for i in ids]
    own = [
        runs.read_json(root / i / "settings.json").get("model_config", {}).get("hidden_dims")
        == [16 + k] * 2
        for k, i in enumerate(ids)
    ]
    memory = [s[1] for s in sampler.samples]
    cpu = [s[2] for s in sampler.samples]
    result = {
        "sessions": args.sessions,
        "steps": args.steps,
        "max_runs": args.max_runs,
        "cpus": os.cpu_count(),
        "finished": sum(s["state"] == "finished" for s in finished),
        "own_settings": sum(own),
        "latency_updates": len(ages),
        "latency_median_s": round(statistics.median(ages), 3) if ages else None,
        "latency_p90_s": round(percentile(ages, 0.9), 3) if ages else None,
        "latency_max_s": round(max(ages), 3) if ages else None,
        "server_rss_mb_first": round(memory[0], 1) if memory else None,
        "server_rss_mb_max": round(max(memory), 1) if memory else None,
        "server_rss_mb_last": round(memory[-1], 1) if memory else None,
        "server_cpu_cores_mean": round(statistics.mean(cpu), 3) if cpu else None,
        "server_cpu_cores_max": round(max(cpu), 3) if cpu else None,
        "seconds": round(sampler.samples[-1][0], 1) if sampler.samples else None,
    }
    print(
        f"{result['finished']} of {args.sessions} runs finished, {result['own_settings']} "
        f"with their own settings; at most {args.max_runs} at once on {os.cpu_count()} CPUs"
    )
    print(
        f"record -> page: median {result['latency_median_s']} s, p90 "
        f"{result['latency_p90_s']} s, max {result['latency_max_s']} s "
        f"({len(ages)} updates)"
    )
    print(
        f"server: {result['server_rss_mb_first']} -> {result['server_rss_mb_last']} MB "
        f"resident (max {result['server_rss_mb_max']}), CPU {result['server_cpu_cores_mean']} "
        f"cores mean, {result['server_cpu_cores_max']} max, over {result['seconds']} s"
    )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
