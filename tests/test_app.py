from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch
from streamlit.testing.v1 import AppTest

from vaelab import MODELS
from vaelab.live import RUNS
from vaelab.train import load_checkpoint

APP = str(Path(__file__).resolve().parents[1] / "app.py")
LIMIT = 60.0  # seconds to wait for a tiny run (a few seconds on two cores)
# every model on built-in data, sized to train a few steps in about a second
CASES = {
    "vae": ("digits", {"hidden_dims_vae": 16}),
    "ssm": ("linear", {"z_dim_ssm": 4, "hidden_dim_ssm": 8, "rnn_dim_ssm": 8}),
    "dmm": ("jsb", {"z_dim_dmm": 4, "rnn_dim_dmm": 8, "emission_dim_dmm": 8,
                    "transition_dim_dmm": 8}),
    "dmm_iaf": ("jsb", {"z_dim_dmm_iaf": 4, "rnn_dim_dmm_iaf": 8, "emission_dim_dmm_iaf": 8,
                        "transition_dim_dmm_iaf": 8, "iaf_dim_dmm_iaf": 8}),
    "realnvp": ("moons", {"hidden_dim_realnvp": 16, "num_layers_realnvp": 2}),
}


@pytest.fixture
def app() -> AppTest:
    at = AppTest.from_file(APP, default_timeout=30)
    at.run()
    assert not at.exception, at.exception
    yield at
    found = RUNS.active()  # never leave a worker behind for the next test
    if found:
        found[1].stop()
        assert found[1].join(LIMIT)


def _run(at: AppTest):
    return RUNS.get(at.query_params["run"][0] if isinstance(at.query_params["run"], list)
                    else at.query_params["run"])


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


def _configure(at: AppTest, model: str, data: str, sizes: dict, tmp_path, **train) -> None:
    at.selectbox(key="model").set_value(model).run()
    at.selectbox(key="data").set_value(data).run()
    for key, value in sizes.items():
        at.number_input(key=key).set_value(value)
    for key, value in train.items():
        at.number_input(key=key).set_value(value)
    at.text_input(key="out_root").set_value(str(tmp_path))


def test_page_renders_with_every_model(app):
    assert [b.label for b in app.button] == ["Train", "Pause", "Stop", "Resume from checkpoint"]
    assert all(app.button(key=k).disabled for k in ("pause", "stop", "resume_run"))
    assert list(app.selectbox(key="model").options) == list(MODELS)
    assert app.selectbox(key="device").value == ("cuda" if torch.cuda.is_available() else "cpu")
    for name in MODELS:
        app.selectbox(key="model").set_value(name).run()
        assert not app.exception, (name, app.exception)
    assert any("press Train" in i.value for i in app.info)


def test_path_box_only_for_data_that_need_one(app):
    keys = [w.key for w in app.sidebar.text_input]
    assert "path_digits" not in keys
    for name in ("mnist", "polyphonic", "arrays"):
        app.selectbox(key="data").set_value(name).run()
        assert f"path_{name}" in [w.key for w in app.sidebar.text_input]
    app.selectbox(key="data").set_value("mnist").run()
    app.button(key="train").click().run()  # no path given: the loader's message is shown
    assert not app.exception
    assert any("needs a path" in e.value for e in app.error)
    assert "run" not in app.query_params


@pytest.mark.parametrize("model", list(CASES))
def test_each_model_trains_and_shows_its_figures(app, tmp_path, model):
    data, sizes = CASES[model]
    samples = 2 if model == "dmm_iaf" else 1  # the flow guide's Monte Carlo KL: average two
    _configure(app, model, data, sizes, tmp_path, max_steps=3, train_samples=samples)
    app.button(key="train").click().run()
    assert not app.error, [e.value for e in app.error]
    run = _run(app)
    assert run.model_name == model and run.config.train_samples == samples
    _poll_until(app, lambda: not run.active)
    assert run.status == "finished" and run.step == 3, run.status
    # training curves, with the latent diagnostics for latent-variable models
    assert any("curves drawn at step 3" in c.value for c in app.caption)
    assert len(app.image) == (1 if model == "realnvp" else 2)
    if model == "ssm":  # the exact log-likelihood of the true system is shown
        assert "exact -log p(x)" in app.markdown[0].value and run.reference
    app.radio(key="view").set_value("latents and samples").run()
    assert not app.exception and not app.warning, [w.value for w in app.warning]
    titles = [s.value for s in app.subheader]
    expected = {"vae": "latent traversal", "ssm": "latent paths", "dmm": "data",
                "dmm_iaf": "sample (note probabilities)",
                "realnvp": "density p(x | a) per context, samples on top"}[model]
    assert expected in titles and len(app.image) == len(titles)
    app.radio(key="view").set_value("explore").run()
    assert not app.exception, app.exception
    if data == "jsb":
        assert len(app.get("audio")) == 2  # a sample and a data sequence
    if model == "vae":
        app.slider(key="z_slider_0").set_value(2.0).run()
        assert not app.exception and len(app.image) == 1
    assert app.get("download_button")


def test_stop_then_resume_from_checkpoint_continues_the_count(app, tmp_path):
    data, sizes = CASES["vae"]
    _configure(app, "vae", data, sizes, tmp_path, epochs_vae=500)
    app.button(key="train").click().run()
    first = _run(app)
    _poll_until(app, lambda: first.step >= 3)
    assert app.button(key="train").disabled  # never two trainings at once
    app.button(key="stop").click().run()
    _poll_until(app, lambda: not first.active)
    assert first.status == "stopped"
    stopped_at = load_checkpoint(first.checkpoint_path)["step"]
    assert stopped_at == first.step >= 3
    app.number_input(key="max_steps").set_value(stopped_at + 4).run()
    assert not app.button(key="resume_run").disabled
    app.button(key="resume_run").click().run()
    assert not app.error, [e.value for e in app.error]
    second = _run(app)
    assert second is not first
    _poll_until(app, lambda: not second.active)
    assert second.status == "finished", second.status
    steps = [r["step"] for r in second.history if r["kind"] == "train"]
    assert steps[-5:] == list(range(stopped_at, stopped_at + 5))  # continues, no restart
    assert steps[0] == 1 and load_checkpoint(second.checkpoint_path)["step"] == stopped_at + 4


def test_uploaded_checkpoint_is_validated(app, tmp_path):
    app.file_uploader(key="upload").set_value(("bad.pt", b"not a checkpoint", "x")).run()
    assert not app.exception
    assert any("Not a usable vaelab checkpoint" in e.value for e in app.sidebar.error)
    assert app.button(key="resume_run").disabled
    # a real one: train two steps, then upload its checkpoint and resume from it
    _configure(app, "vae", "digits", CASES["vae"][1], tmp_path / "a", max_steps=2)
    app.file_uploader(key="upload").set_value(None)
    app.button(key="train").click().run()
    first = _run(app)
    _poll_until(app, lambda: not first.active)
    content = first.checkpoint_path.read_bytes()
    app.file_uploader(key="upload").set_value(("good.pt", content, "x")).run()
    assert any("vae at step 2" in s.value for s in app.sidebar.success)
    app.number_input(key="max_steps").set_value(3)
    app.text_input(key="out_root").set_value(str(tmp_path / "b"))
    app.button(key="resume_run").click().run()
    second = _run(app)
    _poll_until(app, lambda: not second.active)
    assert second.status == "finished" and second.step == 3
    assert str(second.resume_from) != str(first.checkpoint_path)  # the uploaded copy


def test_a_reloaded_page_reattaches_to_the_running_training(app, tmp_path):
    _configure(app, "vae", "digits", CASES["vae"][1], tmp_path, epochs_vae=500)
    app.button(key="train").click().run()
    run = _run(app)
    try:
        fresh = AppTest.from_file(APP, default_timeout=30)  # a new browser session, no URL id
        fresh.run()
        assert _run(fresh) is run
        assert fresh.button(key="train").disabled and not fresh.button(key="stop").disabled
        fresh.button(key="stop").click().run()  # any session can stop it
        _poll_until(fresh, lambda: not run.active)
        assert run.status == "stopped"
    finally:
        run.stop()
