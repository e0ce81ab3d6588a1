"""End to end in a real browser: ``streamlit run app.py`` headless on 127.0.0.1, driven by
Debian's Chromium through Playwright (the system browser, never a download).

Set-up (done by ``.ci/run``): ``apt-get install -y chromium`` and the ``playwright`` Python
package (the ``test`` extra). Screenshots go to ``artifacts/browser/`` (git-ignored).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import types
import urllib.request
from pathlib import Path

import psutil
import pytest

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "artifacts" / "browser"
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
START_LIMIT = 90.0  # seconds for the server to answer /_stcore/health
UI_LIMIT_MS = 90_000  # for the page to show what the test waits for

pytestmark = pytest.mark.browser


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_healthy(url: str, server: subprocess.Popen, log: Path) -> None:
    end = time.monotonic() + START_LIMIT
    while time.monotonic() < end:
        if server.poll() is not None:
            raise AssertionError(
                f"streamlit exited with {server.returncode}:\n{log.read_text()[-3000:]}"
            )
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise AssertionError(
        f"streamlit did not become healthy in {START_LIMIT} s:\n{log.read_text()[-3000:]}"
    )


@contextlib.contextmanager
def _serve(tmp_path: Path, **env: str):
    """The dashboard served on a free local port (``env`` added to its environment);
    terminated afterwards whatever happens, with the training processes it started."""
    port = _free_port()
    log = tmp_path / "streamlit.log"
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "STREAMLIT_BROWSER_GATHER_USAGE_STATS": "false",
        **env,
    }
    with open(log, "w") as out:
        proc = subprocess.Popen(
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
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_healthy(url, proc, log)
        yield types.SimpleNamespace(url=url, pid=proc.pid, log=log)
    finally:
        trainers = _trainers(proc.pid)
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=20)
        for pid in trainers:
            with contextlib.suppress(psutil.NoSuchProcess):
                psutil.Process(pid).terminate()


@pytest.fixture
def server(tmp_path):
    """The dashboard on a laptop: the runs folder is typed in the sidebar."""
    with _serve(tmp_path) as served:
        yield served


@pytest.fixture
def hosted_server(tmp_path):
    """The dashboard hosted for a class, its runs under tmp_path/runs."""
    with _serve(
        tmp_path, VAELAB_HOSTED="1", VAELAB_RUNS_ROOT=str(tmp_path / "runs"), VAELAB_MAX_RUNS="2"
    ) as served:
        yield served


def _browser_tools():
    """Playwright and the system Chromium, or a failure saying how to install them."""
    if not Path(CHROMIUM).exists() and shutil.which("chromium") is None:
        pytest.fail(
            f"Chromium not found at {CHROMIUM}: install Debian's package with "
            f"'apt-get update && apt-get install -y chromium' (as .ci/run does)"
        )
    try:
        from playwright.sync_api import expect, sync_playwright
    except ImportError:
        pytest.fail(
            "the playwright Python package is missing: pip install -c constraints.txt "
            "-e '.[test]' (never 'playwright install': the system Chromium is used)"
        )
    return sync_playwright, expect


def _set_number(page, label: str, value: str) -> None:
    box = page.get_by_label(label, exact=True)
    box.fill(value)
    box.press("Enter")


def _button(page, name: str):
    """The app's button ``name`` (Streamlit's own header has a 'Stop' too)."""
    return page.get_by_test_id("stButton").get_by_role("button", name=name, exact=True)


def _trainers(server_pid: int) -> list[int]:
    """The training processes the server started (``python -m vaelab train``), zombies not
    counted."""
    out = []
    with contextlib.suppress(psutil.NoSuchProcess):
        for child in psutil.Process(server_pid).children(recursive=True):
            try:
                if (
                    "vaelab train" in " ".join(child.cmdline())
                    and child.status() != psutil.STATUS_ZOMBIE
                ):
                    out.append(child.pid)
            except psutil.NoSuchProcess:
                pass
    return out


def _wait_for(predicate, limit: float = UI_LIMIT_MS / 1000) -> None:
    end = time.monotonic() + limit
    while not predicate():
        if time.monotonic() > end:
            raise AssertionError("timed out waiting")
        time.sleep(0.2)


def _choose(page, label: str, option: str) -> None:
    """Pick ``option`` in the sidebar's select box ``label``."""
    from playwright.sync_api import expect

    box = page.get_by_test_id("stSelectbox").filter(has=page.get_by_text(label, exact=True))
    choice = page.get_by_role("option", name=option, exact=True)
    for _ in range(5):  # the page may rerun (and redraw the box) between any two actions
        try:
            expect(box).to_have_count(1)  # not the stale copy of a page that is rerunning
            box.click(timeout=5_000)  # a redraw here makes two boxes: strict mode raises
            page.keyboard.type(option)
            choice.click(timeout=5_000)
            break
        except Exception:  # noqa: BLE001 - playwright's TimeoutError or strict mode: again
            page.keyboard.press("Escape")
    for _ in range(20):  # a rerun may show the stale box beside the new one for a moment
        try:
            expect(box).to_have_count(1)
            expect(box.get_by_role("combobox")).to_have_value(option, timeout=5_000)
            return
        except Exception:  # noqa: BLE001 - strict mode during a redraw: look again
            page.wait_for_timeout(500)
    expect(box.get_by_role("combobox")).to_have_value(option)


def _click_fast(button, timeout: float = 5_000) -> None:
    """One of a user's rapid clicks: no waiting for the page, and a button that a rerun has
    just replaced (or hidden) is a click that missed, as it is for a person. What the clicks
    did is checked afterwards, on the page and in the server's processes."""
    from playwright.sync_api import Error

    with contextlib.suppress(Error):  # playwright's TimeoutError is an Error too
        button.click(force=True, no_wait_after=True, timeout=timeout)


def _click_until(page, name: str, shown: str, tries: int = 5) -> None:
    """Click button ``name`` fast until the page shows ``shown`` (a regex): a person clicks
    again when a rerun swallowed the first click."""
    from playwright.sync_api import expect

    for _ in range(tries):
        _click_fast(_button(page, name))
        try:
            expect(page.get_by_text(re.compile(shown))).to_be_visible(timeout=10_000)
            return
        except AssertionError:
            pass
    expect(page.get_by_text(re.compile(shown))).to_be_visible()


def _status(page):
    """The run panel's status line: "<run>: <model> on <data> — <state>, step N ..."."""
    return page.get_by_text(re.compile(r" — (queued|training|paused|stopped|finished|failed)"))


@pytest.fixture
def browser_page():
    sync_playwright, expect = _browser_tools()
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1700})
            page.set_default_timeout(UI_LIMIT_MS)
            expect.set_options(timeout=UI_LIMIT_MS)
            yield page, expect
        finally:
            browser.close()


def _fill(page, label: str, value: str) -> None:
    from playwright.sync_api import expect

    box = page.get_by_label(label, exact=True)
    for _ in range(5):  # a rerun of the page may redraw the box under the first try
        expect(box).to_have_count(1)  # not the stale copy of a page that is rerunning
        box.fill(value)
        box.press("Enter")
        time.sleep(0.5)
        if box.count() == 1 and box.input_value() == value:
            break
    expect(box).to_have_value(value)


# tiny sizes per model, by the sidebar's labels; the data set each model is tried on
BROWSER_CASES = {
    "vae": ("digits", {"hidden size": "16"}),
    "ssm": ("pendulum", {"latent size z_dim": "4", "hidden size": "8", "RNN size rnn_dim": "8"}),
    "realnvp": ("moons", {"hidden size": "16", "coupling layers": "2"}),
    "dmm": (
        "jsb",
        {
            "latent size z_dim": "4",
            "RNN size rnn_dim": "8",
            "emission network size": "8",
            "transition network size": "8",
        },
    ),
    "dmm_iaf": (
        "jsb",
        {
            "latent size z_dim": "4",
            "RNN size rnn_dim": "8",
            "emission network size": "8",
            "transition network size": "8",
            "IAF hidden size": "8",
        },
    ),
}


def test_every_model_starts_and_shows_points(server, browser_page, tmp_path):
    page, expect = browser_page
    page.goto(server.url)
    expect(page.get_by_text("press Train")).to_be_visible()
    _fill(page, "runs folder", str(tmp_path / "runs"))
    for model, (data, sizes) in BROWSER_CASES.items():
        _choose(page, "model", model)
        _choose(page, "data set", data)
        for label, value in sizes.items():
            _fill(page, label, value)
        _fill(page, "epochs", "1000")
        train = _button(page, "Train")
        expect(train).to_be_enabled()
        train.click()
        status = page.get_by_text(re.compile(rf": {model} on {data} — training, step [1-9]"))
        expect(status).to_be_visible()  # points on the live chart
        expect(page.get_by_test_id("stVegaLiteChart").first).to_be_visible()
        first = status.inner_text()
        expect(status).not_to_have_text(first)  # and new ones keep coming
        assert not page.get_by_test_id("stException").count()
        page.screenshot(path=str(ARTIFACTS / f"training-{model}-{data}.png"), full_page=True)
        _button(page, "Stop").click()
        expect(page.get_by_text(re.compile(rf": {model} on {data} — stopped"))).to_be_visible()
        _wait_for(lambda: not _trainers(server.pid))


def test_two_sessions_own_their_runs_and_a_reload_reattaches(hosted_server, tmp_path):
    """Two browser contexts (two students): each trains its own run and sees only it; a bad
    value stays in its own page; a reload re-attaches to the run with its controls."""
    sync_playwright, expect = _browser_tools()
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    expect.set_options(timeout=UI_LIMIT_MS)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            pages = []
            for _ in range(2):
                page = browser.new_context(viewport={"width": 1400, "height": 1700}).new_page()
                page.set_default_timeout(UI_LIMIT_MS)
                page.goto(hosted_server.url)
                expect(page.get_by_text("press Train")).to_be_visible()
                expect(page.get_by_label("runs folder", exact=True)).to_have_count(0)
                pages.append(page)
            a, b = pages
            _fill(a, "other config fields (key=value; key=value)", "z_dim='many'")
            _button(a, "Train").click()
            expect(a.get_by_text(re.compile("z_dim='many' has the wrong type"))).to_be_visible()
            _fill(a, "other config fields (key=value; key=value)", "")
            for page, width in ((a, "16"), (b, "24")):
                _fill(page, "hidden size", width)
                _fill(page, "epochs", "1000")
                _button(page, "Train").click()
                # a run's process imports torch before its first step: minutes on a
                # loaded 2-core machine, so this one wait is longer than the page's
                expect(
                    page.get_by_text(re.compile(r": vae on digits — training, step [1-9]"))
                ).to_be_visible(timeout=3 * UI_LIMIT_MS)
            assert not b.get_by_text(re.compile("wrong type")).count()  # a's error is a's
            runs_root = tmp_path / "runs"
            ids = {page: re.search(r"run=([\w-]+)", page.url).group(1) for page in pages}
            assert ids[a] != ids[b]
            for page in pages:  # each lists only its own run
                picker = page.get_by_test_id("stSelectbox").filter(
                    has=page.get_by_text("run", exact=True)
                )
                expect(picker.get_by_role("combobox")).to_have_value(
                    f"{ids[page]} (training, yours)"
                )
                picker.click()
                options = page.get_by_role("option").all_inner_texts()
                page.keyboard.press("Escape")
                assert options == [f"{ids[page]} (training, yours)"], options
            a.screenshot(path=str(ARTIFACTS / "hosted-session-a.png"), full_page=True)
            b.screenshot(path=str(ARTIFACTS / "hosted-session-b.png"), full_page=True)
            a.reload()
            expect(a.get_by_text(re.compile(r": vae on digits — training"))).to_be_visible()
            expect(_button(a, "Stop")).to_be_enabled()
            _button(a, "Stop").click()
            expect(a.get_by_text(re.compile(r": vae on digits — stopped"))).to_be_visible()
            expect(b.get_by_text(re.compile(r": vae on digits — training"))).to_be_visible()
            assert (runs_root / ids[a] / "checkpoint.pt").is_file()
            # the picker's label follows the run through every change of state, not only the
            # first (the browser keeps the label a picker was last sent)
            b_picker = b.get_by_test_id("stSelectbox").filter(has=b.get_by_text("run", exact=True))
            for button, state in (("Pause", "paused"), ("Continue", "training")):
                _button(b, button).click()
                expect(b.get_by_text(re.compile(f": vae on digits — {state}"))).to_be_visible()
                expect(b_picker.get_by_role("combobox")).to_have_value(
                    f"{ids[b]} ({state}, yours)"
                )
            a_picker = a.get_by_test_id("stSelectbox").filter(has=a.get_by_text("run", exact=True))
            expect(a_picker.get_by_role("combobox")).to_have_value(f"{ids[a]} (stopped, yours)")
            _button(b, "Stop").click()
            expect(b.get_by_text(re.compile(r": vae on digits — stopped"))).to_be_visible()
            # a rename reaches the compare view's overlay box too (the same kept-label trap)
            a.get_by_text("compare runs", exact=True).click()
            overlay = a.get_by_test_id("stMultiSelect")
            expect(overlay.filter(has_text=ids[a])).to_have_count(1)
            a.get_by_text("name, tags, delete").click()
            _fill(a, "name", "renamed")
            _button(a, "Save").click()
            expect(a.get_by_text(re.compile(r"renamed: vae on digits — stopped"))).to_be_visible()
            # (while the page reruns the old box may show beside the new one for a moment)
            expect(overlay.filter(has_text="renamed")).to_have_count(1)
            expect(overlay.filter(has_text=ids[a])).to_have_count(0)
            a.screenshot(path=str(ARTIFACTS / "hosted-overlay-renamed.png"), full_page=True)
            assert not a.get_by_test_id("stException").count()
        finally:
            browser.close()
