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
import types
import urllib.request
from pathlib import Path

import psutil
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
        yield types.SimpleNamespace(url=url, pid=proc.pid, log=log)
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


def _trainers(server_pid: int) -> list[int]:
    """The training processes of the server: the children of its multiprocessing fork
    server (zombies not counted)."""
    out = []
    for child in psutil.Process(server_pid).children(recursive=True):
        try:
            if "forkserver" in " ".join(child.cmdline()):
                out += [c.pid for c in child.children() if c.status() != psutil.STATUS_ZOMBIE]
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

    box = page.get_by_test_id("stSelectbox").filter(
        has=page.get_by_text(label, exact=True))
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
    expect(box.get_by_role("combobox")).to_have_value(option)


def _click_fast(button, timeout: float = 5_000) -> None:
    """One of a user's rapid clicks: no waiting for the page, and a button that a rerun has
    just replaced (or hidden) is a click that missed, as it is for a person. What the clicks
    did is checked afterwards, on the page and in the server's processes."""
    from playwright.sync_api import Error

    try:
        button.click(force=True, no_wait_after=True, timeout=timeout)
    except Error:  # playwright's TimeoutError is an Error too
        pass


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


def _status(page) -> str:
    return page.get_by_text(re.compile(r"status: ")).first.inner_text()


@pytest.fixture
def browser_page():
    sync_playwright, expect = _browser_tools()
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS,
                                    headless=True)
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
    "dmm": ("jsb", {"latent size z_dim": "4", "RNN size rnn_dim": "8",
                    "emission network size": "8", "transition network size": "8"}),
    "dmm_iaf": ("jsb", {"latent size z_dim": "4", "RNN size rnn_dim": "8",
                        "emission network size": "8", "transition network size": "8",
                        "IAF hidden size": "8"}),
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
        expect(page.get_by_text(re.compile(rf"^{model} on {data} \("))).to_be_visible()
        newest = page.get_by_text(re.compile(r"newest point: step [1-9]"))
        expect(newest).to_be_visible()  # points on the live chart
        expect(page.get_by_test_id("stVegaLiteChart").first).to_be_visible()
        first = newest.inner_text()
        expect(newest).not_to_have_text(first)  # and new ones keep coming
        assert not page.get_by_test_id("stException").count()
        page.screenshot(path=str(ARTIFACTS / f"training-{model}-{data}.png"), full_page=True)
        _button(page, "Stop").click()
        expect(page.get_by_text(re.compile(r"status: stopped"))).to_be_visible()
        _wait_for(lambda: not _trainers(server.pid))


def test_rapid_clicks_leave_only_the_run_the_page_shows(server, browser_page, tmp_path):
    page, expect = browser_page
    page.goto(server.url)
    expect(page.get_by_text("press Train")).to_be_visible()
    _fill(page, "hidden size", "16")
    _fill(page, "epochs", "1000")
    _fill(page, "runs folder", str(tmp_path / "runs"))
    # Train clicked repeatedly, fast: one run, the one shown
    train = _button(page, "Train")
    for _ in range(4):
        _click_fast(train)
    expect(page.get_by_text(re.compile(r"status: running, step [1-9]"))).to_be_visible()
    assert len(_trainers(server.pid)) == 1
    assert not page.get_by_text("already").count()
    # Pause clicked repeatedly: it pauses (a request, not a toggle)
    pause = _button(page, "Pause")
    for _ in range(3):
        _click_fast(pause)
    expect(page.get_by_text(re.compile(r"status: paused"))).to_be_visible()
    continue_ = _button(page, "Continue")
    for _ in range(3):
        if continue_.count():
            _click_fast(continue_)
    expect(page.get_by_text(re.compile(r"status: running"))).to_be_visible()
    # Stop clicked repeatedly: stopped, no process left
    stop = _button(page, "Stop")
    for _ in range(4):
        if stop.count() and stop.is_enabled():
            _click_fast(stop)
    expect(page.get_by_text(re.compile(r"status: stopped"))).to_be_visible()
    _wait_for(lambda: not _trainers(server.pid))
    # Start/Stop bursts: whatever the order, at most one trainer, and it is the one shown
    for _ in range(3):
        train = _button(page, "Train")
        expect(train).to_be_enabled()  # disabled while the last run is still stopping
        _click_fast(train)
        expect(page.get_by_text(re.compile(r"status: (starting|running)"))).to_be_visible()
        _click_until(page, "Stop", r"status: (stopping|stopped)")
        assert len(_trainers(server.pid)) <= 1
    expect(page.get_by_text(re.compile(r"status: stopped"))).to_be_visible()
    _wait_for(lambda: not _trainers(server.pid))
    expect(_button(page, "Train")).to_be_enabled()
    page.screenshot(path=str(ARTIFACTS / "after-bursts.png"), full_page=True)


def test_reload_reattaches_with_the_runs_settings(server, browser_page, tmp_path):
    page, expect = browser_page
    page.goto(server.url)
    expect(page.get_by_text("press Train")).to_be_visible()
    _fill(page, "hidden size", "24")
    _fill(page, "epochs", "777")
    _fill(page, "runs folder", str(tmp_path / "runs"))
    _button(page, "Train").click()
    expect(page.get_by_text(re.compile(r"status: running, step [1-9]"))).to_be_visible()
    assert "run=" in page.url
    page.goto(server.url)  # a new page without the run's id: attaches to the run that trains
    expect(page.get_by_text(re.compile(r"status: running, step [1-9]"))).to_be_visible()
    expect(_button(page, "Train")).to_be_disabled()
    expect(page.get_by_label("epochs", exact=True)).to_have_value("777")
    expect(page.get_by_label("hidden size", exact=True)).to_have_value("24")
    page.screenshot(path=str(ARTIFACTS / "reattached.png"), full_page=True)
    _button(page, "Stop").click()
    expect(page.get_by_text(re.compile(r"status: stopped, step \d+"))).to_be_visible()
    expect(page.get_by_role("button", name="Download checkpoint")).to_be_visible()
    assert list((tmp_path / "runs").glob("*/checkpoint.pt"))


def test_bad_upload_gives_a_clean_message(server, browser_page, tmp_path):
    page, expect = browser_page
    page.goto(server.url)
    expect(page.get_by_text("press Train")).to_be_visible()
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    page.get_by_test_id("stFileUploaderDropzoneInput").set_input_files(str(bad))
    message = page.get_by_text(re.compile("bad.pt is not a vaelab checkpoint"))
    expect(message).to_be_visible()
    text = page.get_by_test_id("stSidebar").inner_text()
    assert "weights_only" not in text and "/tmp" not in text and "Traceback" not in text
    expect(_button(page, "Resume from checkpoint")).to_be_disabled()
    page.screenshot(path=str(ARTIFACTS / "bad-upload.png"), full_page=True)


def _view(page, name: str) -> None:
    """Pick the page's view ``name`` (the radio above the charts)."""
    from playwright.sync_api import expect

    option = page.get_by_test_id("stRadio").get_by_text(name, exact=True)
    for _ in range(5):  # a rerun may redraw the radio between the check and the click
        try:
            expect(option).to_have_count(1)
            option.click(timeout=5_000)
            break
        except Exception:  # noqa: BLE001, S112 - playwright's TimeoutError, strict mode: again
            continue
    expect(page.get_by_test_id("stRadio").get_by_role("radio", name=name)).to_be_checked()


def test_run_history_reopen_overlay_and_explore(server, browser_page, tmp_path):
    sys.path.insert(0, str(ROOT / "tests"))
    from helpers import finished_runs

    folder = finished_runs(tmp_path / "runs")
    page, expect = browser_page
    page.goto(server.url)
    expect(page.get_by_text("press Train")).to_be_visible()
    _fill(page, "runs folder", str(folder))
    _view(page, "run history")
    # the runs, and each stray file with its reason
    expect(page.get_by_text(f"runs in {folder}")).to_be_visible()
    expect(page.get_by_test_id("stDataFrame")).to_be_visible()
    warning = page.get_by_test_id("stAlert").filter(has_text="not readable as runs")
    expect(warning).to_contain_text("foreign.pt")
    expect(warning).to_contain_text("holds Python objects")
    expect(warning).to_contain_text("notes.txt: not a run")
    assert not (folder / "planted").exists()
    # overlay: the two newest by default, then a third added
    caption = page.get_by_text(re.compile(r"Runs: .*beta=4 = b4"))
    expect(caption).to_be_visible()
    expect(page.get_by_test_id("stVegaLiteChart")).to_have_count(1)
    box = page.get_by_test_id("stMultiSelect")
    for _ in range(5):
        try:
            box.click(timeout=5_000)
            page.keyboard.type("b1")
            page.get_by_role("option", name="b1", exact=True).click(timeout=5_000)
            break
        except Exception:  # noqa: BLE001 - a rerun redrew the box: again
            page.keyboard.press("Escape")
    expect(page.get_by_text(re.compile(r"beta=1 \(b1\) = b1"))).to_be_visible()
    page.keyboard.press("Escape")
    _choose(page, "curve", "KL(q || p)")  # where beta = 4 visibly differs
    expect(page.get_by_text(re.compile(r"^KL\(q \|\| p\) of each run"))).to_be_visible()
    page.screenshot(path=str(ARTIFACTS / "history-overlay.png"), full_page=True)
    assert not page.get_by_test_id("stException").count()
    # re-open one: its curves, its settings in the sidebar
    _choose(page, "open a run: its curves, model figures and exploration", "b4")
    _button(page, "Open").click()
    expect(page.get_by_text(re.compile(
        r"ssm on pendulum \(opened from its checkpoint\) — status: finished"))).to_be_visible()
    expect(page.get_by_test_id("stVegaLiteChart").first).to_be_visible()
    z_dim = page.get_by_label("latent size z_dim", exact=True)
    expect(z_dim).to_have_count(1)  # the rerun's stale copy (another model's) has gone
    expect(z_dim).to_have_value("4")
    page.screenshot(path=str(ARTIFACTS / "reopened.png"), full_page=True)
    _view(page, "latents and samples")
    expect(page.get_by_text("computed at step 10")).to_be_visible()
    expect(page.get_by_test_id("stImage").first).to_be_visible()
    page.screenshot(path=str(ARTIFACTS / "reopened-figures.png"), full_page=True)
    # explore: the time slider moves the marked step and redraws the frame
    _view(page, "explore")
    slider = page.get_by_test_id("stSlider").filter(has_text="time step t").get_by_role("slider")
    expect(slider).to_be_visible()
    image = page.get_by_test_id("stImage").locator("img").first
    before = image.get_attribute("src")
    slider.focus()
    page.keyboard.press("End")
    expect(slider).to_have_value("49")
    expect(image).not_to_have_attribute("src", before)
    assert not page.get_by_test_id("stException").count()
    page.screenshot(path=str(ARTIFACTS / "explore-ssm-pendulum.png"), full_page=True)
