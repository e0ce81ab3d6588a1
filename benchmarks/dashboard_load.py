"""Load on a hosted dashboard: N browser sessions (Playwright contexts in Debian's Chromium)
on one ``streamlit run app.py`` in hosted mode on 127.0.0.1, each starting a small run of its
own (vae on digits, hidden size 16 + its session number, a fixed number of steps), with at
most ``--max-runs`` training at once (default: the number of cores).

Each page watches itself: a script in the page reads its status line every ``--every``
seconds (the text of its markdown, no layout) and notes the time each step first appears.
That time minus the ``wall`` time the training process wrote with the record in
``metrics.jsonl`` is the record-to-chart latency of the session's own run with its page
attached (taken at the end, for every step any page showed while its run trained; so 30
pages cost no round trips from this script). The server's resident memory and CPU (the
Streamlit process only, not the training processes) are sampled every second, and printed
every ``--report`` seconds with the runs training, queued and ended. At the end the benchmark
checks that every run finished with its own settings.

    python benchmarks/dashboard_load.py --sessions 4 --steps 400      # small, on 2 cores
    nice -n 5 python benchmarks/dashboard_load.py --sessions 30 --steps 300 --limit 720

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
# in the page: every EVERY ms, the first time (ms since the epoch) each "state:step" of its
# status line was shown
WATCH = """every => {
  if (window.__seen) return;
  window.__seen = {};
  const pattern = /— (queued|training|paused|stopped|finished|failed)(?:, step (\\d+))?/;
  setInterval(() => {
    for (const el of document.querySelectorAll('[data-testid="stMarkdownContainer"]')) {
      const m = pattern.exec(el.textContent);
      if (m) {
        const key = m[1] + ":" + (m[2] || "0");
        if (!(key in window.__seen)) window.__seen[key] = Date.now();
        return;
      }
    }
  }, every);
}"""


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


def start_session(browser, url: str, i: int, steps: int, watch_every: float | None = None):
    """A new browser session (its own context) that started its run of ``steps`` steps;
    with ``watch_every`` (seconds), the page notes when each step first shows (WATCH)."""
    page = browser.new_context(viewport={"width": 1300, "height": 1400}).new_page()
    page.set_default_timeout(120_000)
    page.goto(url)
    page.get_by_text("press Train").wait_for()
    fill(page, "hidden size", str(16 + i))
    fill(page, "epochs", "100000")
    fill(page, page.get_by_text(re.compile(r"^max steps")).first.inner_text(), str(steps))
    page.get_by_test_id("stButton").get_by_role("button", name="Train", exact=True).click()
    page.wait_for_url(re.compile(r"run="))
    if watch_every is not None:
        page.evaluate(WATCH, round(1000 * watch_every))
    return page


def shown_ages(page, walls: dict[int, float]) -> list[float]:
    """Seconds from each record to its first showing on ``page`` (training steps only)."""
    seen = page.evaluate("window.__seen || {}")
    ages = []
    for key, ms in seen.items():
        state, step = key.split(":")
        if state == "training" and int(step) in walls:
            ages.append(ms / 1000 - walls[int(step)])
    return ages


class Sessions(threading.Thread):
    """One Chromium, with its own Playwright in this thread (Playwright's objects belong to
    the thread that made them): starts the sessions ``numbers`` one after another, sets
    ``started``, waits for ``done``, then reads each page's record-to-chart ages."""

    def __init__(
        self,
        url: str,
        numbers: list[int],
        steps: int,
        every: float,
        root: Path,
        done: threading.Event,
    ) -> None:
        super().__init__(daemon=True)
        self.url, self.numbers, self.steps, self.every = url, numbers, steps, every
        self.root, self.done = root, done
        self.started = threading.Event()
        self.ids: dict[int, str] = {}  # session number -> run id
        self.ages: dict[int, list[float]] = {}
        self.errors: list[str] = []

    def run(self) -> None:
        from playwright.sync_api import sync_playwright

        try:
            with sync_playwright() as p:
                browser = p.chromium.launch(
                    executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True
                )
                try:
                    self._drive(browser)
                finally:
                    browser.close()
        except Exception as e:  # noqa: BLE001 - said in the report, the rest goes on
            self.errors.append(f"browser: {type(e).__name__}: {e}"[:400])
        finally:
            self.started.set()

    def _drive(self, browser) -> None:
        pages = {}
        for i in self.numbers:
            if self.done.is_set():
                break
            try:
                page = start_session(browser, self.url, i, self.steps, self.every)
            except Exception as e:  # noqa: BLE001 - one session failed to start: say so
                self.errors.append(f"session {i}: {type(e).__name__}: {e}"[:400])
                continue
            pages[i] = page
            self.ids[i] = re.search(r"run=([\w-]+)", page.url).group(1)
        self.started.set()
        self.done.wait()
        for i, page in pages.items():
            records = runs.read_metrics(self.root / self.ids[i])[0]
            walls = {r["step"]: r["wall"] for r in records if r.get("kind") == "train"}
            try:
                self.ages[i] = shown_ages(page, walls)
            except Exception as e:  # noqa: BLE001 - a page that crashed: no figures
                self.errors.append(f"session {i}: no ages: {type(e).__name__}: {e}"[:400])


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sessions", type=int, default=4)
    parser.add_argument("--steps", type=int, default=400, help="steps per run")
    parser.add_argument("--max-runs", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--every", type=float, default=0.25, help="seconds between reads")
    parser.add_argument("--report", type=float, default=30.0, help="seconds between lines")
    parser.add_argument("--limit", type=float, default=600.0, help="seconds, in all")
    parser.add_argument(
        "--browsers",
        type=int,
        default=5,
        help="Chromium instances, each in its own thread, that start their sessions side by "
        "side (default 5)",
    )
    args = parser.parse_args()
    if min(args.sessions, args.steps, args.max_runs, args.browsers) < 1:
        parser.error("--sessions, --steps, --max-runs and --browsers must be >= 1")

    work = Path(tempfile.mkdtemp(prefix="vaelab-load-"))
    root = work / "runs"
    port = free_port()
    deadline = time.monotonic() + args.limit
    server = serve(port, root, args.max_runs, work / "streamlit.log")
    sampler = Sampler(server.pid)
    sampler.start()
    start = time.monotonic()
    counts: list[tuple[float, int, int, int]] = []  # (s, training, queued, ended)
    next_report = start + args.report
    started_all = None
    done = threading.Event()
    workers = [
        Sessions(
            f"http://127.0.0.1:{port}",
            list(range(k, args.sessions, args.browsers)),
            args.steps,
            args.every,
            root,
            done,
        )
        for k in range(min(args.browsers, args.sessions))
    ]
    try:
        for worker in workers:
            worker.start()
        while time.monotonic() < deadline:
            ids = [i for _, i in sorted(x for w in workers for x in w.ids.items())]
            states = [runs.read_status(root / i)["state"] for i in ids]
            now = time.monotonic()
            counts.append(
                (
                    now - start,
                    sum(s in runs.RUNNING for s in states),
                    states.count("queued"),
                    sum(s not in runs.ACTIVE for s in states),
                )
            )
            if now >= next_report:
                report(sampler.samples, counts, args.report)
                next_report = now + args.report
            all_started = all(w.started.is_set() for w in workers)
            if all_started and started_all is None:
                started_all = now - start
            if all_started and all(s not in runs.ACTIVE for s in states):
                time.sleep(3 * args.every)  # the last pages show their last step
                break
            time.sleep(1.0)
    finally:
        done.set()
        for worker in workers:
            worker.join(300)
        sampler.done.set()
        sampler.join()
        server.terminate()
        server.wait(30)
    numbered = sorted(x for w in workers for x in w.ids.items())  # (session number, run id)
    ids = [i for _, i in numbered]
    for w in workers:
        for error in w.errors:
            print(error)
    per_session = [a for w in workers for a in w.ages.values()]
    ages = [x for a in per_session for x in a]
    finished = [runs.read_status(root / i) for i in ids]
    own = [
        runs.read_json(root / i / "settings.json").get("model_config", {}).get("hidden_dims")
        == [16 + k] * 2
        for k, i in numbered
    ]
    memory = [s[1] for s in sampler.samples]
    cpu = [s[2] for s in sampler.samples]
    session_p90 = [percentile(a, 0.9) for a in per_session if a]
    result = {
        "sessions": args.sessions,
        "sessions_started": len(ids),
        "seconds_to_start_all": round(started_all, 1) if started_all is not None else None,
        "steps": args.steps,
        "max_runs": args.max_runs,
        "cpus": os.cpu_count(),
        "load_average_1min_end": round(os.getloadavg()[0], 2),
        "finished": sum(s["state"] == "finished" for s in finished),
        "own_settings": sum(own),
        "latency_updates": len(ages),
        "latency_median_s": round(statistics.median(ages), 3) if ages else None,
        "latency_p90_s": round(percentile(ages, 0.9), 3) if ages else None,
        "latency_max_s": round(max(ages), 3) if ages else None,
        "sessions_with_updates": len(session_p90),
        "session_p90_median_s": round(statistics.median(session_p90), 3) if session_p90 else None,
        "session_p90_worst_s": round(max(session_p90), 3) if session_p90 else None,
        "server_rss_mb_first": round(memory[0], 1) if memory else None,
        "server_rss_mb_max": round(max(memory), 1) if memory else None,
        "server_rss_mb_last": round(memory[-1], 1) if memory else None,
        "server_cpu_cores_mean": round(statistics.mean(cpu), 3) if cpu else None,
        "server_cpu_cores_max": round(max(cpu), 3) if cpu else None,
        "seconds": round(sampler.samples[-1][0], 1) if sampler.samples else None,
    }
    print(
        f"{result['finished']} of {len(ids)} runs finished ({args.sessions} sessions asked), "
        f"{result['own_settings']} with their own settings; at most {args.max_runs} at once "
        f"on {os.cpu_count()} CPUs; all sessions started after {result['seconds_to_start_all']} s"
    )
    print(
        f"record -> page: median {result['latency_median_s']} s, p90 "
        f"{result['latency_p90_s']} s, max {result['latency_max_s']} s "
        f"({len(ages)} updates); per session p90: median {result['session_p90_median_s']} s, "
        f"worst {result['session_p90_worst_s']} s"
    )
    print(
        f"server: {result['server_rss_mb_first']} -> {result['server_rss_mb_last']} MB "
        f"resident (max {result['server_rss_mb_max']}), CPU {result['server_cpu_cores_mean']} "
        f"cores mean, {result['server_cpu_cores_max']} max, over {result['seconds']} s"
    )
    print(json.dumps(result))


def report(
    samples: list[tuple[float, float, float]],
    counts: list[tuple[float, int, int, int]],
    window: float,
) -> None:
    """One line: the server's memory now, its mean CPU over the last ``window`` seconds,
    and the runs training, queued and ended."""
    if not samples or not counts:
        return
    recent = [s[2] for s in samples if s[0] > samples[-1][0] - window]
    t, training, queued, ended = counts[-1]
    print(
        f"t={t:6.0f} s  server {samples[-1][1]:7.1f} MB, CPU {statistics.mean(recent):.2f} "
        f"cores  runs: {training} training, {queued} queued, {ended} ended",
        flush=True,
    )


if __name__ == "__main__":
    main()
