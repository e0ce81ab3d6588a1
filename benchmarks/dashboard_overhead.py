"""How much the dashboard slows training: steps per second of the same run (vae on digits,
the dashboard's default sizes, torch 1 thread in the trainer) alone, as ``python -m vaelab
train --out DIR`` with no page, and started from ``streamlit run app.py`` with a headless
Chromium page attached showing the training curves. Both are the same kind of process over a
run folder; the difference is the page's polling. The two conditions alternate (A/B/A/B...)
in one run so that background load affects both alike; each pair gives a slowdown, and the
mean and spread of those are printed.

Speeds come from the trainer's own clock: the ``seconds`` of every train record (time since
the previous one, validation and checkpoints included) over steps ``warmup+1 ...
warmup+steps``, read from the run folder's ``metrics.jsonl``.

    python benchmarks/dashboard_overhead.py --steps 1500 --warmup 100 --rounds 3

It first measures how soon a record reaches the page (``--latency-seconds`` of watching per
model, ``--latency-models``): each time the status line shows a newer step, that record's age
is taken (now minus the ``wall`` time the trainer wrote with it).

Needs Debian's Chromium at /usr/bin/chromium and the ``playwright`` package (test extra).
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the repository's vaelab, run from anywhere
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


def speed(history: list[dict], warmup: int, steps: int) -> float:
    """Steps per second over train steps ``warmup+1 ... warmup+steps`` of ``history``."""
    seconds = [
        r["seconds"]
        for r in history
        if r["kind"] == "train" and warmup < r["step"] <= warmup + steps
    ]
    if len(seconds) != steps:
        raise RuntimeError(f"expected {steps} timed steps, got {len(seconds)}")
    return steps / sum(seconds)


def _records(folder: Path) -> list[dict]:
    from vaelab.runs import read_metrics

    return read_metrics(folder)[0]


def alone(warmup: int, steps: int, out: Path) -> float:
    """Steps/s of the run as a command-line process, no page."""
    subprocess.run(
        [
            sys.executable,
            "-m",
            "vaelab",
            "train",
            "--model",
            "vae",
            "--data",
            "digits",
            "--epochs",
            "100000",
            "--device",
            "cpu",
            "--max-steps",
            str(warmup + steps),
            "--train-set",
            "progress=False",
            "--out",
            str(out),
        ],
        cwd=ROOT,
        check=True,
        stdout=subprocess.DEVNULL,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    return speed(_records(out), warmup, steps)


def _start(browser, url: str, out: Path, settings: dict, model: str = "vae", data: str = "digits"):
    """A page that started a run with ``settings`` (label -> value); returns (page, folder)."""
    from playwright.sync_api import expect

    page = browser.new_page(viewport={"width": 1400, "height": 1700})
    page.set_default_timeout(3_600_000)
    expect.set_options(timeout=3_600_000)
    page.goto(url)
    expect(page.get_by_text("press Train")).to_be_visible()
    _select(page, "model", model)
    _select(page, "data set", data)
    for label, value in {"runs folder": str(out), **settings}.items():
        box = page.get_by_label(label, exact=True)
        box.fill(value)
        box.press("Enter")
        time.sleep(1.0)
        expect(box).to_have_value(value)
    page.get_by_test_id("stButton").get_by_role("button", name="Train", exact=True).click()
    page.wait_for_url(re.compile(r"run="))
    return page, out / re.search(r"run=([\w-]+)", page.url).group(1)


def in_page(browser, url: str, warmup: int, steps: int, out: Path) -> float:
    """Steps/s of the run started from the page, the training curves on screen throughout."""
    from playwright.sync_api import expect

    page, folder = _start(
        browser, url, out, {"epochs": "100000", "max steps (0 = no limit)": str(warmup + steps)}
    )
    try:
        expect(page.get_by_text(re.compile(r"— finished"))).to_be_visible()
    except BaseException:
        page.screenshot(path=str(out.parent / "failed.png"), full_page=True)
        print(f"the page, when it failed: {out.parent / 'failed.png'}", file=sys.stderr)
        raise
    finally:
        page.close()
    return speed(_records(folder), warmup, steps)


def _select(page, label: str, option: str) -> None:
    """Pick ``option`` in the sidebar's select box ``label`` (retried: a rerun of the page may
    redraw the box under the first click)."""
    from playwright.sync_api import expect

    box = page.get_by_test_id("stSelectbox").filter(has=page.get_by_text(label, exact=True))
    for _ in range(5):
        expect(box).to_have_count(1)  # not the stale copy of a page that is rerunning
        box.click()
        page.keyboard.type(option)
        try:
            page.get_by_role("option", name=option, exact=True).click(timeout=5_000)
            break
        except Exception:  # noqa: BLE001 - playwright's TimeoutError: try again
            page.keyboard.press("Escape")
    expect(box.get_by_role("combobox")).to_have_value(option)


STEP = re.compile(r"— training, step (\d+)")


def latency(browser, url: str, model: str, data: str, seconds: float, out: Path) -> dict:
    """Seconds from a record to the page, for ``model`` on ``data`` with the dashboard's
    default sizes: the page is read every 0.1 s for ``seconds`` while training; each time its
    status line shows a newer step, that record's age (now - the ``wall`` time written with
    it) is taken."""
    from playwright.sync_api import expect

    from vaelab.runs import read_metrics

    page, folder = _start(browser, url, out, {"epochs": "100000"}, model, data)
    ages, shown, walls, offset = [], 0, {}, 0
    try:
        line = page.get_by_text(STEP)
        expect(line).to_be_visible()
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            try:
                match = STEP.search(line.first.inner_text(timeout=2_000))
            except Exception:  # noqa: BLE001 - the page mid-rerun: read it next time
                match = None
            now = time.time()
            if match and int(match.group(1)) > shown:
                shown = int(match.group(1))
                new, offset = read_metrics(folder, offset)
                walls.update({r["step"]: r["wall"] for r in new if r.get("kind") == "train"})
                if shown in walls:
                    ages.append(now - walls[shown])
            time.sleep(0.1)
        page.get_by_test_id("stButton").get_by_role("button", name="Stop", exact=True).click()
        expect(page.get_by_text(re.compile(r"— (stopped|finished|failed)"))).to_be_visible()
    finally:
        page.close()
    if not ages:
        raise RuntimeError(f"{model} on {data}: no new point in {seconds} s")
    ages.sort()
    return {
        "model": model,
        "data": data,
        "updates": len(ages),
        "age_median": statistics.median(ages),
        "age_p90": ages[int(0.9 * (len(ages) - 1))],
        "age_max": ages[-1],
    }


def serve(port: int, log: Path, extra_env: dict[str, str] | None = None) -> subprocess.Popen:
    """The dashboard served on ``127.0.0.1:port`` (its output to ``log``), once it answers
    its health check; ``extra_env`` adds settings (e.g. the hosted mode's)."""
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",  # the trainer's torch: 1 thread
        "STREAMLIT_BROWSER_GATHER_USAGE_STATS": "false",
        **(extra_env or {}),
    }
    with open(log, "w") as f:
        server = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "streamlit",
                "run",
                "app.py",
                "--server.headless",
                "true",
                "--server.address",
                "127.0.0.1",
                "--server.port",
                str(port),
                "--server.fileWatcherType",
                "none",
            ],
            cwd=ROOT,
            stdout=f,
            stderr=subprocess.STDOUT,
            env=env,
        )
    end = time.monotonic() + 120
    while time.monotonic() < end:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=2):
                return server
        except OSError:
            if server.poll() is not None:
                break
            time.sleep(0.5)
    server.terminate()
    raise RuntimeError(f"streamlit did not start:\n{log.read_text()[-2000:]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=1500, help="timed steps per measurement")
    parser.add_argument("--warmup", type=int, default=100, help="untimed steps first")
    parser.add_argument("--rounds", type=int, default=3, help="A/B pairs")
    parser.add_argument("--port", type=int, default=8597)
    parser.add_argument(
        "--latency-seconds",
        type=float,
        default=30.0,
        help="seconds of chart watching per model for the record-to-chart latency (0 skips it)",
    )
    parser.add_argument(
        "--latency-models",
        default="vae:digits,ssm:linear,dmm:jsb,dmm_iaf:jsb",
        help="model:data pairs whose latency is measured",
    )
    args = parser.parse_args()
    os.environ["OMP_NUM_THREADS"] = "1"
    from playwright.sync_api import sync_playwright

    work = Path(tempfile.mkdtemp(prefix="vaelab-overhead-"))
    server = serve(args.port, work / "streamlit.log")
    results = []
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(
                executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True
            )
            try:
                for pair in args.latency_models.split(",") if args.latency_seconds else ():
                    model, data = pair.split(":")
                    r = latency(
                        browser,
                        f"http://127.0.0.1:{args.port}",
                        model,
                        data,
                        args.latency_seconds,
                        work / f"latency-{model}",
                    )
                    print(
                        f"record -> page, {model} on {data} (default sizes): median "
                        f"{r['age_median']:.2f} s, p90 {r['age_p90']:.2f} s, max "
                        f"{r['age_max']:.2f} s ({r['updates']} updates)",
                        flush=True,
                    )
                for i in range(args.rounds):
                    a = alone(args.warmup, args.steps, work / f"alone{i}")
                    b = in_page(
                        browser,
                        f"http://127.0.0.1:{args.port}",
                        args.warmup,
                        args.steps,
                        work / f"page{i}",
                    )
                    results.append((a, b, 100 * (1 - b / a)))
                    print(
                        f"round {i + 1}: alone {a:7.1f} steps/s   with page {b:7.1f} steps/s"
                        f"   slowdown {results[-1][2]:5.1f} %",
                        flush=True,
                    )
            finally:
                browser.close()
    finally:
        server.terminate()
        server.wait(30)
    if not results:
        return
    slow = [r[2] for r in results]
    spread = statistics.stdev(slow) if len(slow) > 1 else float("nan")
    print(
        f"vae on digits, {args.steps} steps after {args.warmup}, torch 1 thread, "
        f"{os.cpu_count()} CPUs"
    )
    print(f"alone     {statistics.mean(r[0] for r in results):7.1f} steps/s (mean)")
    print(f"with page {statistics.mean(r[1] for r in results):7.1f} steps/s (mean)")
    print(
        f"slowdown  {statistics.mean(slow):5.1f} % +- {spread:.1f} (sd over {len(slow)} "
        f"pairs; min {min(slow):.1f}, max {max(slow):.1f})"
    )


if __name__ == "__main__":
    main()
