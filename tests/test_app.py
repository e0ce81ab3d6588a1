"""The dashboard through Streamlit's AppTest: every model on every built-in data set it
accepts (train, charts, pause, stop, resume), the controls under repeated clicks, reloads,
uploads. Tiny models; the runs are stopped by the tests, so they take seconds each."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import pytest
import torch
from helpers import finished_runs
from streamlit.testing.v1 import AppTest

from vaelab import MODELS
from vaelab.live import RUNS, accepted_data, dataset_needs_path
from vaelab.train import load_checkpoint

APP = str(Path(__file__).resolve().parents[1] / "app.py")
LIMIT = 120.0  # seconds to wait for a tiny run's steps (the first takes seconds on 2 loaded cores)
# every model sized to train a few steps a second
SIZES = {
    "vae": {"hidden_dims_vae": 16},
    "ssm": {"z_dim_ssm": 4, "hidden_dim_ssm": 8, "rnn_dim_ssm": 8},
    "dmm": {"z_dim_dmm": 4, "rnn_dim_dmm": 8, "emission_dim_dmm": 8, "transition_dim_dmm": 8},
    "dmm_iaf": {"z_dim_dmm_iaf": 4, "rnn_dim_dmm_iaf": 8, "emission_dim_dmm_iaf": 8,
                "transition_dim_dmm_iaf": 8, "iaf_dim_dmm_iaf": 8},
    "realnvp": {"hidden_dim_realnvp": 16, "num_layers_realnvp": 2},
}
# every model x every built-in data set (no path needed) it accepts
CASES = [(model, data) for model in MODELS for data, why in accepted_data(model).items()
         if why is None and not dataset_needs_path(data)]


@pytest.fixture
def app() -> AppTest:
    at = AppTest.from_file(APP, default_timeout=60)
    at.run()
    assert not at.exception, at.exception
    yield at
    found = RUNS.active()  # never leave a worker behind for the next test
    if found:
        found[1].stop()
        assert found[1].join(LIMIT)


def _run(at: AppTest):
    run_id = at.query_params["run"]
    return RUNS.get(run_id[0] if isinstance(run_id, list) else run_id)


def _poll_until(at: AppTest, done) -> None:
    """Rerun the page (as its fragment's polling does) until ``done()``."""
    end = time.monotonic() + LIMIT
    while not done():
        if time.monotonic() > end:
            raise AssertionError(f"timed out after {LIMIT} s")
        time.sleep(0.2)
        at.run()  # polling the page must neither block nor restart the run
        assert not at.exception, at.exception
    at.run()


def _configure(at: AppTest, model: str, data: str, tmp_path, **values) -> None:
    at.selectbox(key="model").set_value(model).run()
    at.selectbox(key=f"data_{model}").set_value(data).run()
    for key, value in {**SIZES[model], **values}.items():
        at.number_input(key=key).set_value(value)
    at.text_input(key="out_root").set_value(str(tmp_path))


def _stale_click(at: AppTest, key: str) -> None:
    """Click button ``key`` as a browser does that still shows the previous page (the second
    click of a double click lands before the page updates): even when it is now disabled."""
    button = at.button(key=key)
    button.proto.disabled = False
    button.click().run()
    assert not at.exception, at.exception


def _charts(at: AppTest) -> list:
    return at.get("vega_lite_chart")


def _texts(at: AppTest) -> list[str]:
    return [e.value for kind in ("markdown", "caption", "info", "warning", "error", "success")
            for e in at.get(kind)]


def test_page_renders_with_every_model(app):
    assert [b.label for b in app.button] == ["Train", "Pause", "Stop", "Resume from checkpoint"]
    assert all(app.button(key=k).disabled for k in ("pause", "stop", "resume_run"))
    assert list(app.selectbox(key="model").options) == list(MODELS)
    # only the settings that mean something for the model shown
    app.selectbox(key="model").set_value("dmm").run()
    boxes = [w.label for w in app.sidebar.number_input]
    assert "IAF hidden size" not in boxes and "KL annealing epochs (0 = off)" in boxes
    app.selectbox(key="model").set_value("dmm_iaf").run()
    assert "IAF hidden size" in [w.label for w in app.sidebar.number_input]
    app.selectbox(key="model").set_value("realnvp").run()
    boxes = [w.label for w in app.sidebar.number_input]
    assert not [b for b in boxes if "KL" in b or "guide" in b], boxes
    assert app.selectbox(key="device").value == ("cuda" if torch.cuda.is_available() else "cpu")
    for name in MODELS:
        app.selectbox(key="model").set_value(name).run()
        assert not app.exception and not app.warning, (name, app.exception)
        box = app.selectbox(key=f"data_{name}")
        accepted = accepted_data(name)
        assert list(box.options) == [d for d, why in accepted.items() if why is None]
        for data, why in accepted.items():  # each refused data set is named with its reason
            assert why is None or f"{data}: {why}" in box.help
        assert any(name in m.value.lower() or "arxiv" in m.value.lower()
                   for m in app.markdown)  # the model's card
    assert any("press Train" in i.value for i in app.info)


def test_path_box_only_for_data_that_need_one(app):
    keys = [w.key for w in app.sidebar.text_input]
    assert "path_digits" not in keys
    for name in ("mnist", "polyphonic", "arrays"):
        app.selectbox(key="data_vae").set_value(name).run()
        assert f"path_{name}" in [w.key for w in app.sidebar.text_input]
    app.selectbox(key="data_vae").set_value("mnist").run()
    app.button(key="train").click().run()  # no path given: the loader's message is shown
    assert not app.exception
    assert any("needs a path" in e.value for e in app.error)
    assert "run" not in app.query_params


@pytest.mark.parametrize(("model", "data"), CASES, ids=[f"{m}-{d}" for m, d in CASES])
def test_every_model_on_every_accepted_data_set(app, tmp_path, model, data):
    # the flow guide's Monte Carlo KL: average two; a flow has no guide (and no such box)
    samples = {"dmm_iaf": {"train_samples": 2}, "realnvp": {}}.get(model, {"train_samples": 1})
    _configure(app, model, data, tmp_path, **{f"epochs_{model}": 1000}, **samples)
    app.button(key="train").click().run()
    assert not app.error, [e.value for e in app.error]
    run = _run(app)
    assert run.model_name == model and run.data_spec["name"] == data
    _poll_until(app, lambda: run.step >= 2)
    # live, interactive training curves with points in them
    assert _charts(app) and any("newest point: step" in t for t in _texts(app))
    if model == "realnvp":  # a flow's panels: its log-likelihood, no KL or KL weight
        assert not any("KL" in t for t in _texts(app) if t.startswith("**"))
    if data == "linear":  # the exact log-likelihood of the true system is shown
        assert "exact -log p(x)" in " ".join(_texts(app)) and run.reference
    # pause: the worker says when it sits paused; the page shows Continue
    app.button(key="pause").click().run()
    _poll_until(app, lambda: run.status == "paused")
    held = run.step
    assert app.button(key="continue") and not any(t.strip() == "None" for t in _texts(app))
    app.button(key="continue").click().run()
    _poll_until(app, lambda: run.step > held)
    app.button(key="stop").click().run()
    _poll_until(app, lambda: not run.active)
    assert run.status == "stopped", run.status
    stopped_at = load_checkpoint(run.checkpoint_path)["step"]
    assert stopped_at == run.step
    # the model figures of the snapshot, labelled with their step
    app.radio(key="view").set_value("latents and samples").run()
    assert not app.exception and not app.warning, [w.value for w in app.warning]
    assert len(app.image) == len(app.subheader) > 0
    assert any(f"computed at step {run.step}" in c.value for c in app.caption)
    app.radio(key="view").set_value("explore").run()
    assert not app.exception, app.exception
    if run.is_sequence:  # a time slider over a validation sequence's latent path
        app.slider(key="explore_t").set_value(2).run()
        assert not app.exception and app.image, app.exception
        assert app.slider(key="explore_t").value == 2
    assert app.get("download_button")
    app.radio(key="view").set_value("training curves").run()
    # resume continues the run's own settings, whatever the sidebar shows now
    app.number_input(key=f"epochs_{model}").set_value(1).run()
    assert not app.button(key="resume_run").disabled
    app.button(key="resume_run").click().run()
    assert not app.error, [e.value for e in app.error]
    second = _run(app)
    assert second is not run and second.config.epochs == 1000
    assert app.number_input(key=f"epochs_{model}").value == 1000  # the sidebar follows
    _poll_until(app, lambda: second.step > stopped_at)
    app.button(key="stop").click().run()
    _poll_until(app, lambda: not second.active)
    steps = [r["step"] for r in second.history if r["kind"] == "train"]
    assert steps == list(range(1, second.step + 1))  # the count continues, no restart


def test_double_click_on_train_shows_the_run_that_trains(app, tmp_path):
    _configure(app, "vae", "digits", tmp_path, epochs_vae=500)
    app.button(key="train").click().run()
    first = _run(app)
    _stale_click(app, "train")  # the second click of a double click
    assert not app.error, [e.value for e in app.error]
    assert _run(app) is first and RUNS.active()[1] is first
    assert app.button(key="train").disabled


def test_start_stop_burst_leaves_nothing_unseen(app, tmp_path):
    _configure(app, "vae", "digits", tmp_path, epochs_vae=500)
    runs = []
    for _ in range(3):
        app.button(key="train").click().run()
        runs.append(RUNS.active()[1])
        _stale_click(app, "stop")  # Stop in the run's first second is honoured
        _stale_click(app, "stop")
        assert _run(app) is runs[-1]
        _poll_until(app, lambda: not runs[-1].active)
    assert len({id(r) for r in runs}) == 3 and RUNS.active() is None
    assert all(r.status == "stopped" for r in runs), [r.status for r in runs]
    assert all(r.step < r.planned_steps() / 100 for r in runs), [r.step for r in runs]


def test_rejected_upload_gives_a_clean_message_and_disables_resume(app, tmp_path):
    _configure(app, "vae", "digits", tmp_path / "a", max_steps=0, epochs_vae=500)
    app.button(key="train").click().run()
    first = _run(app)
    _poll_until(app, lambda: first.step >= 2)
    app.button(key="stop").click().run()
    _poll_until(app, lambda: not first.active)
    assert not app.button(key="resume_run").disabled  # the run's own checkpoint
    before = set(Path(tempfile.gettempdir()).glob("vaelab-upload-*"))
    app.file_uploader(key="upload").set_value(("bad.pt", b"not a checkpoint", "x")).run()
    assert not app.exception
    (message,) = [e.value for e in app.sidebar.error]
    assert "bad.pt is not a vaelab checkpoint" in message
    assert "weights_only" not in message and tempfile.gettempdir() not in message
    assert app.button(key="resume_run").disabled  # not the previous run's checkpoint
    assert set(Path(tempfile.gettempdir()).glob("vaelab-upload-*")) == before
    # a good one: resumed with its own settings, and the sidebar shows them
    app.file_uploader(key="upload").set_value(
        ("good.pt", first.checkpoint_path.read_bytes(), "x")).run()
    assert any("vae at step" in s.value for s in app.sidebar.success)
    app.selectbox(key="model").set_value("ssm").run()  # the sidebar shows another model
    app.text_input(key="out_root").set_value(str(tmp_path / "b"))
    app.button(key="resume_run").click().run()
    second = _run(app)
    assert second.model_name == "vae" and str(second.resume_from).startswith(str(tmp_path / "b"))
    assert app.selectbox(key="model").value == "vae"
    assert app.number_input(key="hidden_dims_vae").value == 16
    _poll_until(app, lambda: second.step > first.step)
    app.button(key="stop").click().run()
    _poll_until(app, lambda: not second.active)
    assert second.status == "stopped"


def test_a_reloaded_page_reattaches_with_the_runs_settings(app, tmp_path):
    _configure(app, "ssm", "pendulum", tmp_path, epochs_ssm=777)
    app.button(key="train").click().run()
    run = _run(app)
    try:
        fresh = AppTest.from_file(APP, default_timeout=60)  # a new browser session, no URL id
        fresh.run()
        assert _run(fresh) is run
        assert fresh.button(key="train").disabled and not fresh.button(key="stop").disabled
        # the sidebar shows the attached run's settings, not the defaults
        assert fresh.selectbox(key="model").value == "ssm"
        assert fresh.selectbox(key="data_ssm").value == "pendulum"
        assert fresh.number_input(key="epochs_ssm").value == 777
        assert fresh.number_input(key="z_dim_ssm").value == 4
        assert fresh.text_input(key="out_root").value == str(tmp_path)
        assert not fresh.warning, [w.value for w in fresh.warning]
        fresh.button(key="stop").click().run()  # any session can stop it
        _poll_until(fresh, lambda: not run.active)
        assert run.status == "stopped"
    finally:
        run.stop()


def test_same_seed_same_weights(app, tmp_path):
    """The page seeds before it builds the model: two runs with one seed train the same
    weights (a third with another seed does not), as the CLI's --seed does."""
    states = []
    for seed in (3, 3, 4):
        _configure(app, "vae", "digits", tmp_path / f"s{len(states)}", max_steps=2,
                   epochs_vae=5, seed=seed)
        app.button(key="train").click().run()
        assert not app.error, [e.value for e in app.error]
        run = _run(app)
        _poll_until(app, lambda run=run: not run.active)
        states.append(load_checkpoint(run.checkpoint_path)["state_dict"])
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])
    assert not all(torch.equal(states[0][k], states[2][k]) for k in states[0])


def test_the_dashboard_is_served_without_magic():
    """``streamlit run app.py`` from the repository root reads .streamlit/config.toml, which
    turns Streamlit's "magic" off: with it on, a session's first run compiles app.py through
    ``ast.parse``, which is not thread-safe on Python 3.11 (a reload raised "AST constructor
    recursion depth mismatch" in the browser test), and a bare expression is drawn on the page
    (a stray "None" above the title)."""
    import subprocess
    import sys

    shown = subprocess.run([sys.executable, "-m", "streamlit", "config", "show"],
                           cwd=Path(APP).parent, capture_output=True, text=True, timeout=120,
                           check=True).stdout
    assert "\nmagicEnabled = false\n" in shown


def _spec(chart) -> dict:
    import json

    return json.loads(chart.proto.spec)


def test_run_history_lists_reopens_and_overlays_runs(app, tmp_path):
    folder = finished_runs(tmp_path / "runs")
    app.text_input(key="out_root").set_value(str(folder)).run()
    app.radio(key="view").set_value("run history").run()
    assert not app.exception, app.exception
    table = app.dataframe[0].value
    assert set(table["run"]) == {"b1", "b4", "stopped"}
    b4 = table[table["run"] == "b4"].iloc[0]
    assert (b4["model"], b4["data"], b4["status"], b4["step"]) == ("ssm", "pendulum",
                                                                  "finished", 10)
    final = [r["nelbo"] for r in load_checkpoint(folder / "b4" / "checkpoint.pt")["history"]
             if r["kind"] == "val"][-1]
    assert b4["final"] == round(final, 4)
    (warning,) = [w.value for w in app.warning]  # each stray file, with its reason
    for name in ("damaged", "foreign.pt", "notes.txt"):
        assert f"**{name}**" in warning
    assert "holds Python objects" in warning and "weights_only" not in warning
    assert not (folder / "planted").exists()
    # overlay: one chart, a legend naming each run by what differs
    app.multiselect(key="overlay_runs").set_value(["b1", "b4"]).run()
    (chart,) = _charts(app)
    spec = _spec(chart)
    assert spec["encoding"]["color"]["scale"]["domain"] == ["beta=1", "beta=4"]
    assert any("**beta=1** = b1; **beta=4** = b4" in c.value for c in app.caption)
    app.selectbox(key="overlay_metric").set_value("kl").run()
    assert _spec(_charts(app)[0])["encoding"]["y"]["title"] == "nats per observed step"
    assert any(m.value == "**KL(q || p)**" for m in app.markdown)
    # re-open one: its curves, with its own settings in the sidebar
    app.selectbox(key="history_open").set_value("b4").run()
    app.button(key="open_run").click().run()
    assert not app.exception and not app.error, [e.value for e in app.error]
    assert app.radio(key="view").value == "training curves"
    assert any("(opened from its checkpoint) — status: **finished**, step 10 of 10" in t
               for t in _texts(app))
    assert _charts(app)
    assert app.selectbox(key="model").value == "ssm"
    assert app.number_input(key="z_dim_ssm").value == 4
    run = _run(app)
    assert run.settings()["train_config"]["beta"] == 4.0
    assert app.button(key="resume_run").disabled  # it reached its epochs
    assert "reached its 1 epochs" in app.button(key="resume_run").help
    app.radio(key="view").set_value("latents and samples").run()
    assert not app.exception and app.image and not app.warning
    # each figure the page's width, not half a column that shrinks its text to ~6 px
    assert not any(column.get("image") for column in app.columns)
    assert any("computed at step 10" in c.value for c in app.caption)
    app.radio(key="view").set_value("explore").run()
    app.slider(key="explore_t").set_value(30).run()
    assert not app.exception and app.image
    app.slider(key="explore_sequence").set_value(3).run()
    assert not app.exception and app.slider(key="explore_t").value == 30
    # a stopped run can be resumed from the page it was opened on
    app.radio(key="view").set_value("run history").run()
    app.selectbox(key="history_open").set_value("stopped").run()
    app.button(key="open_run").click().run()
    assert not app.button(key="resume_run").disabled


def test_the_page_does_not_collect_all_garbage_after_every_poll():
    """Streamlit's default runs ``gc.collect(2)`` after every run of the script, fragment
    polls included: with torch, the data and the runs' histories in the server that took
    ~0.4 s of CPU each second of training (measured), most of the page's cost to a run on
    two cores. .streamlit/config.toml turns it off, and ``streamlit run`` reads it."""
    import subprocess
    import sys

    code = "from streamlit import config; print(config.get_option('runner.postScriptGC'))"
    read = subprocess.run(
        [sys.executable, "-c", code],
        cwd=Path(APP).parent, capture_output=True, text=True, timeout=120, check=True).stdout
    assert read.strip() == "False"
