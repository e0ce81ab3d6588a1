"""The dashboard through Streamlit's AppTest. Several AppTest instances are several browser
sessions of one server: each owns its runs, sees others' read-only (hosted: not at all), keeps
its errors to itself; the queue, the hosted mode's refusals, and a command-line run showing
up. Runs are tiny processes over run folders (vaelab.runs)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from vaelab import MODELS, runs
from vaelab.datasets import load_dataset
from vaelab.live import accepted_data, dataset_needs_path, read_upload
from vaelab.train import TrainConfig, fit

APP = str(Path(__file__).resolve().parents[1] / "app.py")
ROOT = Path(APP).parent
LIMIT = 120.0
SIZES = {  # every model sized to train a few steps a second
    "vae": {"hidden_dims_vae": 16, "z_dim_vae": 2},
    "ssm": {"z_dim_ssm": 2, "hidden_dim_ssm": 8, "rnn_dim_ssm": 8},
    "dmm": {"z_dim_dmm": 2, "rnn_dim_dmm": 8, "emission_dim_dmm": 8, "transition_dim_dmm": 8},
    "dmm_iaf": {
        "z_dim_dmm_iaf": 2,
        "rnn_dim_dmm_iaf": 8,
        "emission_dim_dmm_iaf": 8,
        "transition_dim_dmm_iaf": 8,
        "iaf_dim_dmm_iaf": 8,
    },
    "dmm_aug": {
        "z_dim_dmm_aug": 2,
        "rnn_dim_dmm_aug": 8,
        "emission_dim_dmm_aug": 8,
        "transition_dim_dmm_aug": 8,
    },
    "realnvp": {"hidden_dim_realnvp": 16, "num_layers_realnvp": 2},
}


@pytest.fixture(autouse=True)
def _no_process_left():
    yield
    for child in list(runs._CHILDREN.values()):
        if child.poll() is None:
            child.terminate()
            child.wait(30)
    runs._CHILDREN.clear()


@pytest.fixture
def hosted(tmp_path, monkeypatch):
    """Hosted mode over a fresh runs root, two runs at a time."""
    monkeypatch.setenv("VAELAB_HOSTED", "1")
    monkeypatch.setenv("VAELAB_RUNS_ROOT", str(tmp_path))
    monkeypatch.setenv("VAELAB_MAX_RUNS", "2")
    monkeypatch.setenv("VAELAB_MAX_STEPS", "100000")
    return tmp_path


def session(**query) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=60)
    for key, value in query.items():
        at.query_params[key] = value
    at.run()
    _ok(at)
    return at


def _ok(at: AppTest) -> None:
    assert not at.exception, at.exception


def _texts(
    at: AppTest, kinds=("markdown", "caption", "info", "warning", "error", "success")
) -> list[str]:
    return [e.value for kind in kinds for e in at.get(kind)]


def _param(at: AppTest, key: str) -> str | None:
    value = at.query_params.get(key)
    return value[0] if isinstance(value, list) else value


def _train(
    at: AppTest,
    model: str = "vae",
    data: str | None = None,
    root: Path | None = None,
    extra: str = "",
    **values,
) -> str | None:
    at.selectbox(key="model").set_value(model).run()
    if data is not None:
        at.selectbox(key=f"data_{model}").set_value(data).run()
    for key, value in {**SIZES[model], **values}.items():
        at.number_input(key=f"{key}_{model}" if key == "epochs" else key).set_value(value)
    if root is not None:
        at.text_input(key="out_root").set_value(str(root))
    at.text_input(key=f"extra_{model}").set_value(extra)
    at.button(key="train").click().run()
    _ok(at)
    return _param(at, "run")


def _state(at: AppTest, root: Path) -> str:
    return runs.read_status(root / _param(at, "run"))["state"]


def _poll(at: AppTest, done, limit: float = LIMIT) -> None:
    """Rerun the page (as its polling does) until ``done()``."""
    end = time.monotonic() + limit
    while not done():
        if time.monotonic() > end:
            raise AssertionError(f"timed out after {limit} s: {_texts(at)[:6]}")
        time.sleep(0.3)
        at.run()
        _ok(at)


def test_page_renders_with_every_model_and_refuses_wrong_pairings():
    at = session()
    for name in MODELS:
        at.selectbox(key="model").set_value(name).run()
        _ok(at)
        offered = at.selectbox(key=f"data_{name}").options
        assert offered and all(accepted_data(name)[d] is None for d in offered)
    at.selectbox(key="model").set_value("ssm").run()
    assert "jsb" not in at.selectbox(key="data_ssm").options  # a Gaussian on 0/1 notes
    at.selectbox(key="model").set_value("realnvp").run()
    assert "digits" not in at.selectbox(key="data_realnvp").options
    assert _param(at, "s")  # the session's token is in the URL


@pytest.mark.integration  # a process of its own: make test, not test-fast
@pytest.mark.parametrize("emission", ["bernoulli", "made"])
def test_the_augmented_dmm_is_offered_with_its_card_and_trains_on_chorales(tmp_path, emission):
    at = session()
    assert "dmm_aug" in at.selectbox(key="model").options
    at.selectbox(key="model").set_value("dmm_aug").run()
    assert "jsb" in at.selectbox(key="data_dmm_aug").options
    assert at.selectbox(key="data_dmm_aug").value == "jsb"  # its preferred data
    card = " ".join(_texts(at, ("markdown",)))
    assert "**Augmented Deep Markov Model.**" in card and "x_{t-1}" in card
    assert "arXiv:1609.09869" in card
    # the MADE emission through the config-field box; its hidden width is at least 88 - 1
    extra = "emission=made; made_dim=87" if emission == "made" else ""
    run_id = _train(at, "dmm_aug", "jsb", tmp_path, extra=extra, epochs=1, max_steps=2)
    assert run_id, _texts(at)
    _poll(at, lambda: _state(at, tmp_path) in ("finished", "failed", "stopped"))
    status = runs.read_status(tmp_path / run_id)
    assert status["state"] == "finished", status
    settings = runs.list_runs(tmp_path)[0]["settings"]
    assert settings["model"] == "dmm_aug" and settings["data"]["name"] == "jsb"
    assert settings["model_config"].get("emission", "bernoulli") == emission


@pytest.mark.integration
def test_five_sessions_five_runs_each_sees_and_controls_only_its_own(hosted, monkeypatch):
    monkeypatch.setenv("VAELAB_MAX_RUNS", "5")
    sessions = [session() for _ in range(5)]
    ids = [
        _train(at, extra=f"hidden_dims=[{8 + i}]", epochs=100000) for i, at in enumerate(sessions)
    ]
    assert len(set(ids)) == 5 and None not in ids
    for i, at in enumerate(sessions):
        _poll(at, lambda at=at: _state(at, hosted) == "training")
        (picker,) = [s for s in at.selectbox if s.key.startswith(f"pick_{ids[i]}_")]
        shown = picker.options
        assert len(shown) == 1 and shown[0].startswith(f"{ids[i]} (")  # hosted: no other
        assert shown[0].endswith(", yours)")  # session's run is even listed
        assert runs.read_json(hosted / ids[i] / "settings.json")["model_config"][
            "hidden_dims"
        ] == [8 + i]  # its own settings
    # a session cannot reach another's run, even by putting its id in the URL
    intruder = session(run=ids[0])
    assert _param(intruder, "run") is None
    with pytest.raises(ValueError, match="belongs to another session"):
        runs.request(hosted, ids[0], _param(intruder, "s"), "stop")
    for at in sessions:
        at.button(key="stop").click().run()
        _ok(at)
    for at in sessions:
        _poll(at, lambda at=at: _state(at, hosted) == "stopped")
    # a reload (a new session with the same URL) re-attaches with control of its run
    again = session(s=_param(sessions[0], "s"), run=ids[0])
    assert _param(again, "run") == ids[0] and not again.button(key="resume_run").disabled


@pytest.mark.integration
def test_a_bad_value_and_a_crash_stay_in_their_session(tmp_path):
    a, b = session(), session()
    run_b = _train(b, root=tmp_path, epochs=100000)
    _poll(b, lambda: _state(b, tmp_path) == "training")
    # a mistyped field: a message in a's page that names the field, no run, no traceback
    assert _train(a, root=tmp_path, extra="z_dim='many'") is None
    errors = [e.value for e in a.error]
    assert any("z_dim='many' has the wrong type" in e for e in errors), errors
    # a run that crashes in its process (its data file does not exist) fails in a's panel
    a.selectbox(key="model").set_value("vae").run()
    a.selectbox(key="data_vae").set_value("arrays").run()
    a.text_input(key="extra_vae").set_value("")  # the mistake fixed
    a.text_input(key="path_arrays").set_value(str(tmp_path / "missing.npz"))
    a.button(key="train").click().run()
    _poll(a, lambda: _state(a, tmp_path) == "failed")
    assert any("this run failed" in e.value and "missing.npz" in e.value for e in a.error)
    b.run()
    _ok(b)
    assert not b.error and _param(b, "run") == run_b and _state(b, tmp_path) == "training"
    assert "**training**" in " ".join(_texts(b, ("markdown",)))
    b.button(key="stop").click().run()
    _poll(b, lambda: _state(b, tmp_path) == "stopped")


@pytest.mark.integration
def test_with_the_limit_at_two_the_third_run_waits_and_starts_when_one_ends(hosted):
    sessions = [session() for _ in range(3)]
    for at in sessions:
        _train(at, epochs=100000)
    first, second, third = sessions
    _poll(
        third, lambda: _state(first, hosted) == "training" and _state(second, hosted) == "training"
    )
    assert _state(third, hosted) == "queued"
    assert "number 1 in the queue" in " ".join(_texts(third, ("markdown",)))
    assert third.button(key="train").disabled  # one run at a time per session
    first.button(key="stop").click().run()
    _poll(third, lambda: _state(third, hosted) == "training")
    for at in (second, third):
        at.button(key="stop").click().run()
        _poll(at, lambda at=at: _state(at, hosted) == "stopped")


def _checkpoint_with_spec(folder: Path, spec: dict) -> bytes:
    train, val, _ = load_dataset("digits")
    from vaelab.config import make_model

    model = make_model("vae", train, {"hidden_dims": [8], "z_dim": 2})
    fit(
        model,
        train,
        val,
        TrainConfig(max_steps=1, epochs=5, progress=False, out_dir=str(folder)),
        data_spec=spec,
    )
    return (folder / "checkpoint.pt").read_bytes()


def test_hosted_mode_types_lists_and_reads_no_server_path(hosted, tmp_path_factory):
    at = session()
    keys = {w.key for w in at.text_input}
    assert "out_root" not in keys and "resume" not in keys  # no path box at all
    for name in MODELS:  # no data set that needs a path is offered
        at.selectbox(key="model").set_value(name).run()
        assert not any(dataset_needs_path(d) for d in at.selectbox(key=f"data_{name}").options)
    # what the page does with an uploaded checkpoint: read it (weights_only), then check its
    # data spec before anything is loaded
    hosting = runs.Hosting.from_env()
    evil = read_upload(
        "evil.pt",
        _checkpoint_with_spec(
            tmp_path_factory.mktemp("elsewhere"), {"name": "arrays", "path": "/etc/passwd"}
        ),
    )
    with pytest.raises(ValueError, match="only built-in data sets"):
        runs.check_data_spec(evil["data"], hosting)
    fine = read_upload(
        "ok.pt", _checkpoint_with_spec(tmp_path_factory.mktemp("fine"), {"name": "digits"})
    )
    assert runs.check_data_spec(fine["data"], hosting) == {"name": "digits"}


@pytest.mark.integration
def test_a_command_line_run_shows_up_live(tmp_path):
    at = session()
    at.text_input(key="out_root").set_value(str(tmp_path)).run()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "vaelab",
            "train",
            "--model",
            "vae",
            "--data",
            "digits",
            "--set",
            "hidden_dims=[8]",
            "--epochs",
            "100000",
            "--train-set",
            "progress=False",
            "--out",
            str(tmp_path / "from-the-shell"),
        ],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    try:
        _poll(
            at,
            lambda: any(
                o.startswith("from-the-shell (")
                for s in at.selectbox
                if s.key.startswith("pick_")
                for o in s.options
            ),
        )
        at.query_params["run"] = "from-the-shell"
        _poll(at, lambda: at.get("vega_lite_chart"))
        text = " ".join(_texts(at, ("markdown",)))
        assert "from-the-shell" in text and "**training**" in text
        assert at.button(key="stop").disabled  # not this session's: read-only
    finally:
        proc.terminate()
        proc.wait(30)


def test_the_dashboard_is_served_without_magic_tracebacks_or_deploy_menu():
    """``streamlit run app.py`` from the repository root reads .streamlit/config.toml: no
    "magic" (its ast.parse is not thread-safe on Python 3.11), no garbage collection after
    every poll (~0.4 s of CPU each time with torch loaded), no tracebacks, no Deploy menu."""
    code = (
        "from streamlit import config; print([config.get_option(k) for k in "
        "('runner.magicEnabled', 'runner.postScriptGC', 'client.showErrorDetails', "
        "'client.toolbarMode')])"
    )
    read = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    assert read.strip() == "[False, False, 'none', 'minimal']"


def _finished_run(
    folder: Path, model_name: str = "vae", data: str = "digits", **overrides
) -> None:
    """A run folder written in this process as the CLI writes it (RunWriter as fit's
    callback), two epochs of a tiny model."""
    from vaelab.config import make_model

    train, val, _ = load_dataset(data)
    model = make_model(model_name, train, overrides)
    config = TrainConfig(epochs=2, batch_size=256, progress=False, out_dir=str(folder))
    with runs.RunWriter(folder) as writer:
        writer.start(
            {
                "model": model_name,
                "model_config": dict(overrides),
                "train_config": {"epochs": 2},
                "data": {"name": data},
                "unit": model.unit,
                "has_latents": model.has_latents,
            }
        )
        fit(model, train, val, config, data_spec={"name": data}, callback=writer)


def test_views_of_a_finished_run_compare_and_export(tmp_path):
    _finished_run(tmp_path / "small", hidden_dims=[8], z_dim=2)
    _finished_run(tmp_path / "wide", hidden_dims=[16], z_dim=2)
    _finished_run(tmp_path / "flow", "realnvp", "moons", hidden_dim=8, num_layers=2)
    at = session()
    at.text_input(key="out_root").set_value(str(tmp_path)).run()
    at.query_params["run"] = "small"
    at.run()
    _ok(at)
    text = " ".join(_texts(at, ("markdown",)))
    assert "**small**: vae on digits — **finished**" in text
    assert at.button(key="stop").disabled  # a command-line run: read-only here
    # the CSV is written when clicked (its name, <run>-metrics.csv: tests/test_runs.py)
    assert [b.proto.label for b in at.get("download_button")] == [
        "Download metrics (CSV)",
        "Download checkpoint",
    ]
    at.radio(key="x_axis").set_value("wall").run()
    _ok(at)
    spec = __import__("json").loads(at.get("vega_lite_chart")[0].proto.spec)
    assert spec["encoding"]["x"]["field"] == "wall"
    at.radio(key="view").set_value("latents and samples").run()
    _ok(at)
    assert at.get("imgs") or at.get("image"), "no model figure"
    assert any("from the checkpoint at step" in c.value for c in at.caption)
    assert "PNG, 200 dpi" in [b.proto.label for b in at.get("download_button")]
    at.radio(key="view").set_value("explore").run()
    _ok(at)
    at.radio(key="view").set_value("compare runs").run()
    _ok(at)
    (overlay_box,) = [m for m in at.multiselect if m.key.startswith("overlay_runs_")]
    assert sorted(overlay_box.options) == ["small", "wide"]  # the flow on moons is not comparable
    overlay_box.set_value(["small", "wide"]).run()
    _ok(at)
    overlay = json.loads(at.get("vega_lite_chart")[-1].proto.spec)
    assert overlay["encoding"]["color"]["scale"]["domain"] == ["small", "wide"]
    # a rename (here by another page, in the run's folder) shows in the box, whose key holds
    # the labels, and the runs picked stay picked
    meta = tmp_path / "wide" / "meta.json"
    info = json.loads(meta.read_text()) if meta.exists() else {}
    meta.write_text(json.dumps({**info, "name": "wider"}))
    at.run()
    _ok(at)
    (overlay_box,) = [m for m in at.multiselect if m.key.startswith("overlay_runs_")]
    assert sorted(overlay_box.options) == ["small", "wider"]
    assert len(overlay_box.value) == 2
    overlay = json.loads(at.get("vega_lite_chart")[-1].proto.spec)
    assert overlay["encoding"]["color"]["scale"]["domain"] == ["small", "wider"]


PASSWORD = "correct horse battery staple"  # the tests' own secret, never a real one


def instructor_session(password: str | None = None, **query) -> AppTest:
    """A session of a server whose secrets hold the instructor password; ``password`` is
    what this session types into the instructor box (None: nothing)."""
    at = AppTest.from_file(APP, default_timeout=60)
    at.secrets["instructor_password"] = PASSWORD
    for key, value in query.items():
        at.query_params[key] = value
    at.run()
    _ok(at)
    if password is not None:
        at.text_input(key="instructor_pw").set_value(password).run()
        _ok(at)
    return at


def _instructor_shown(at: AppTest) -> bool:
    return any(
        "every run of every session" in h.value for h in at.subheader
    ) or "instructor_stop" in {b.key for b in at.button}


def test_instructor_view_exists_only_with_the_password_and_refuses_a_wrong_one(hosted):
    plain = session()  # no password in the server's secrets: no instructor box at all
    assert "instructor_pw" not in {w.key for w in plain.text_input}
    assert not _instructor_shown(plain)
    student = instructor_session()  # configured, nothing typed: the box, nothing else
    assert "instructor_pw" in {w.key for w in student.text_input}
    assert not _instructor_shown(student) and not student.dataframe
    wrong = instructor_session("correct horse")
    assert "wrong instructor password" in [e.value for e in wrong.error]
    assert not _instructor_shown(wrong) and not wrong.dataframe
    right = instructor_session(PASSWORD)
    assert "wrong instructor password" not in [e.value for e in right.error]
    assert _instructor_shown(right)
    assert any("no run yet" in i.value for i in right.info)


@pytest.mark.integration
def test_the_instructor_sees_two_sessions_runs_and_stops_one(hosted):
    alice, bob = instructor_session(), instructor_session()
    run_a = _train(alice, epochs=100000)
    run_b = _train(bob, extra="hidden_dims=[12]", epochs=100000)
    for at in (alice, bob):
        _poll(at, lambda at=at: _state(at, hosted) == "training")
    # a student cannot stop another's run: no instructor controls, and a request is refused
    assert not _instructor_shown(alice)
    with pytest.raises(ValueError, match="belongs to another session"):
        runs.request(hosted, run_b, _param(alice, "s"), "stop")
    teacher = instructor_session(PASSWORD)
    table = teacher.dataframe[0].value
    assert set(table["run"]) == {run_a, run_b}  # both sessions' runs
    assert set(table["state"]) == {"training"} and set(table["model"]) == {"vae"}
    assert set(table["session"]) == {
        runs.owner_hash(_param(at, "s"))[:8] for at in (alice, bob)
    }  # shortened owners, never a token
    assert sorted(teacher.selectbox(key="instructor_pick").options) == sorted([run_a, run_b])
    teacher.selectbox(key="instructor_pick").set_value(run_b).run()
    teacher.button(key="instructor_stop").click().run()
    _ok(teacher)
    assert any("asked to stop" in s.value for s in teacher.success)
    # the owner's panel shows its run stopped; the other session's run trains on
    _poll(bob, lambda: _state(bob, hosted) == "stopped")
    _poll(bob, lambda: "**stopped**" in " ".join(_texts(bob, ("markdown",))))
    assert _state(alice, hosted) == "training"
    teacher.run()
    stopped = teacher.dataframe[0].value.set_index("run")["state"]
    assert stopped[run_b] == "stopped" and stopped[run_a] == "training"
    assert teacher.selectbox(key="instructor_pick").options == [run_a]
    alice.button(key="stop").click().run()
    _poll(alice, lambda: _state(alice, hosted) == "stopped")
