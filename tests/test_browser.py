"""End to end in a real browser: ``streamlit run app.py`` headless on 127.0.0.1, driven by
Debian's Chromium through Playwright (the system browser, never a download).

Set-up (done by ``.ci/run``): ``apt-get install -y chromium`` and the ``playwright`` Python
package (the ``test`` extra). Screenshots go to ``artifacts/browser/`` (git-ignored).
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "artifacts" / "browser"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
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
            raise AssertionError(f"streamlit exited with {server.returncode}:\n"
                                 f"{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise AssertionError(f"streamlit did not become healthy in {START_LIMIT} s:\n"
                         f"{log.read_text()[-3000:]}")


@pytest.fixture
def server(tmp_path):
    """The dashboard served on a free local port; terminated afterwards whatever happens."""
    port = _free_port()
    log = tmp_path / "streamlit.log"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "STREAMLIT_BROWSER_GATHER_USAGE_STATS": "false"}
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "streamlit", "run", "app.py", "--server.headless", "true",
             "--server.address", "127.0.0.1", "--server.port", str(port),
             "--server.fileWatcherType", "none"],
            cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_healthy(url, proc, log)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=20)


def _browser_tools():
    """Playwright and the system Chromium, or a failure saying how to install them."""
    if not Path(CHROMIUM).exists() and shutil.which("chromium") is None:
        pytest.fail(f"Chromium not found at {CHROMIUM}: install Debian's package with "
                    f"'apt-get update && apt-get install -y chromium' (as .ci/run does)")
    try:
        from playwright.sync_api import expect, sync_playwright
    except ImportError:
        pytest.fail("the playwright Python package is missing: pip install -c constraints.txt "
                    "-e '.[test]' (never 'playwright install': the system Chromium is used)")
    return sync_playwright, expect


def _set_number(page, label: str, value: str) -> None:
    box = page.get_by_label(label, exact=True)
    box.fill(value)
    box.press("Enter")


def _button(page, name: str):
    """The app's button ``name`` (Streamlit's own header has a 'Stop' too)."""
    return page.get_by_test_id("stButton").get_by_role("button", name=name, exact=True)


def test_train_in_browser_shows_live_curves(server, tmp_path):
    sync_playwright, expect = _browser_tools()
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS,
                                    headless=True)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1700})
            page.set_default_timeout(UI_LIMIT_MS)
            expect.set_options(timeout=UI_LIMIT_MS)
            page.goto(server)
            expect(page.get_by_text("press Train")).to_be_visible()
            # vae on digits (the defaults), small, long enough to be stopped by hand
            _set_number(page, "hidden size", "32")
            _set_number(page, "epochs", "500")
            runs = page.get_by_label("runs folder", exact=True)
            runs.fill(str(tmp_path / "runs"))
            runs.press("Enter")
            train = _button(page, "Train")
            expect(train).to_be_enabled()
            train.click()

            # the live chart shows points: a positive step count, and the curves image is
            # redrawn with new records
            expect(page.get_by_text(re.compile(r"status: running, step [1-9]"))).to_be_visible()
            curves = page.locator('[data-testid="stImage"] img').first
            expect(curves).to_be_visible()
            drawn = page.get_by_text(re.compile(r"curves drawn at step \d+"))
            expect(drawn).to_be_visible()
            first = curves.get_attribute("src")
            # redrawn with records in it (at most every few seconds)
            expect(page.get_by_text(re.compile(r"curves drawn at step [1-9]"))).to_be_visible()
            expect(curves).not_to_have_attribute("src", first)
            steps = int(re.search(r"step (\d+)", page.get_by_text(
                re.compile(r"status: running, step")).inner_text()).group(1))
            assert steps > 0
            expect(train).to_be_disabled()  # one training at a time
            page.screenshot(path=str(ARTIFACTS / "training.png"), full_page=True)

            # a reload re-attaches to the same run (its id is in the URL)
            assert "run=" in page.url
            page.reload()
            expect(page.get_by_text(re.compile(r"status: running, step [1-9]"))).to_be_visible()
            expect(_button(page, "Train")).to_be_disabled()

            _button(page, "Stop").click()
            expect(page.get_by_text(re.compile(r"status: stopped, step \d+"))).to_be_visible()
            expect(_button(page, "Train")).to_be_enabled()
            expect(page.get_by_role("button", name="Download checkpoint")).to_be_visible()
            page.screenshot(path=str(ARTIFACTS / "stopped.png"), full_page=True)
        finally:
            browser.close()
    assert (tmp_path / "runs").is_dir() and list((tmp_path / "runs").glob("*/checkpoint.pt"))
