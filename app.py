"""vaelab dashboard: pick a model and a data set, train it, watch it learn, explore its latents.

Run with ``streamlit run app.py`` (a class: see docs/hosting.md). A thin page over run
folders: a run is a process, ``python -m vaelab train ... --out RUNS/<id>``, that writes its
folder (:mod:`vaelab.runs`); the page queues runs, reads their folders and sends requests
(pause, continue, stop). So a run started from the command line into the same runs folder
shows up here too, and a server restart loses nothing. Each browser session owns the runs it
starts (a token in the URL, ``?s=...``, so a reload re-attaches; ``&run=`` names the run
shown); other sessions' runs are read-only, and hidden in hosted mode. Checks of a request are
:func:`vaelab.live.plan_run`; the charts are :mod:`vaelab.charts`.
"""

from __future__ import annotations

import dataclasses
import functools
import io
import secrets
import zlib
from pathlib import Path

import streamlit as st
import torch

from vaelab import MODELS, charts, instructor, plots, runs
from vaelab.audio import piano_roll_wav
from vaelab.config import config_keys, parse_sets
from vaelab.datasets import load_dataset
from vaelab.live import (
    accepted_data,
    builtin_dataset,
    check_upload,
    dataset_needs_path,
    diagnose,
    make_view,
    observed_steps,
    plan_run,
    reference_metrics,
    sample_piano_roll,
)
from vaelab.protocol import model_class
from vaelab.train import TrainConfig, load_model

POLL_SECONDS = 2.0  # how often the page reads the run folder while a run of this session runs
DPI = 100  # figures on the page
EXPORT_DPI = 200  # figures downloaded
LEARNING_RATES = [1e-4, 3e-4, 1e-3, 2e-3, 3e-3, 1e-2]
# model config fields with a widget: (field, label, min, max, step)
INT_FIELDS = (
    ("z_dim", "latent size z_dim", 1, 256, 1),
    ("hidden_dim", "hidden size", 2, 2048, 8),
    ("rnn_dim", "RNN size rnn_dim", 2, 2048, 8),
    ("emission_dim", "emission network size", 2, 2048, 8),
    ("transition_dim", "transition network size", 2, 2048, 8),
    ("num_iafs", "IAF layers in the guide", 1, 8, 1),
    ("iaf_dim", "IAF hidden size", 2, 1024, 8),
    ("num_layers", "coupling layers", 1, 32, 1),
)
VIEWS = ("training curves", "latents and samples", "explore", "compare runs")

st.set_page_config(page_title="vaelab", layout="wide")
state = st.session_state
torch.set_num_threads(1)  # the page's own torch work (figures) takes one core
try:
    HOSTING = runs.Hosting.from_env()
except ValueError as e:  # a mistyped setting of the instructor's: said once, plainly
    st.error(f"server setting: {e}")
    st.stop()

try:  # the instructor's view exists only with a password in .streamlit/secrets.toml
    INSTRUCTOR_PASSWORD = instructor.configured_password(st.secrets)
except FileNotFoundError:  # no secrets file at all: no instructor view
    INSTRUCTOR_PASSWORD = None
except ValueError as e:
    st.error(f"server setting: {e}")
    st.stop()

# the session's token: kept in the URL, so a reload (same URL) owns the same runs
if "token" not in state:
    state.token = st.query_params.get("s") or secrets.token_urlsafe(16)
if st.query_params.get("s") != state.token:
    st.query_params["s"] = state.token
TOKEN = state.token


def field_defaults(config_cls: type) -> dict:
    """Default value of every field of a config dataclass (factories called)."""
    out = {}
    for f in dataclasses.fields(config_cls):
        if f.default is not dataclasses.MISSING:
            out[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            out[f.name] = f.default_factory()
    return out


def has_widget(field: str, defaults: dict) -> bool:
    """True when config field ``field`` gets a sidebar widget for a model with these
    ``defaults``: its own fields, the IAF ones only when its guide has IAFs by default."""
    if field in ("num_iafs", "iaf_dim") and not defaults.get("num_iafs"):
        return False
    return field in defaults


def widget(key: str, default):
    """Give widget ``key`` its default once; afterwards the session state holds its value."""
    state.setdefault(key, default)
    return key


# ----------------------------------------------------------------------------- sidebar

devices = ["cuda", "cpu"] if torch.cuda.is_available() else ["cpu"]
with st.sidebar:
    st.header("Model and data")
    model_name = st.selectbox("model", list(MODELS), key=widget("model", "vae"))
    config_cls, model_cls = MODELS[model_name]
    model_defaults = field_defaults(config_cls)
    accepted = accepted_data(model_name)
    offered = [
        name
        for name, why in accepted.items()
        if why is None and (not HOSTING.hosted or not dataset_needs_path(name))
    ]  # hosted: built-in data only
    refused = "; ".join(f"{name}: {why}" for name, why in accepted.items() if why)
    preferred = model_cls.preferred_data
    data_key = widget(f"data_{model_name}", preferred if preferred in offered else offered[0])
    if state[data_key] not in offered:
        state[data_key] = offered[0]
    data_name = st.selectbox(
        "data set",
        offered,
        key=data_key,
        help=f"the data sets {model_name} can train on. Not offered: {refused}"
        if refused
        else f"every data set suits {model_name}",
    )
    data_path = ""
    if dataset_needs_path(data_name):
        data_path = st.text_input(
            "path to the data (file or folder)",
            key=widget(f"path_{data_name}", ""),
            help="mnist: the folder of the IDX files; polyphonic: a "
            ".pickle; arrays: an .npz with x [N, T, X] (and a)",
        )
    overrides: dict = {}
    for field, label, low, high, step in INT_FIELDS:
        if has_widget(field, model_defaults):
            default = min(max(int(model_defaults[field]), low), high)
            overrides[field] = int(
                st.number_input(
                    label, low, high, step=step, key=widget(f"{field}_{model_name}", default)
                )
            )
    if "hidden_dims" in model_defaults:  # same depth as the default, every layer this wide
        width = st.number_input(
            "hidden size",
            2,
            2048,
            step=8,
            key=widget(f"hidden_dims_{model_name}", int(model_defaults["hidden_dims"][0])),
        )
        overrides["hidden_dims"] = [int(width)] * len(model_defaults["hidden_dims"])
    extra = st.text_input(
        "other config fields (key=value; key=value)",
        key=widget(f"extra_{model_name}", ""),
        help=f"fields of {config_cls.__name__}: {', '.join(config_keys(config_cls))}",
    )

    st.header("Training")
    tdef = {**field_defaults(TrainConfig), **model_cls.train_defaults}
    epochs = st.number_input(
        "epochs", 1, 100000, key=widget(f"epochs_{model_name}", int(tdef["epochs"]))
    )
    batch_size = st.number_input(
        "batch size", 1, 4096, key=widget(f"bs_{model_name}", int(tdef["batch_size"]))
    )
    lr_key = widget(f"lr_{model_name}", float(tdef["lr"]))
    lr = st.select_slider(
        "learning rate",
        sorted({*LEARNING_RATES, float(tdef["lr"]), float(state[lr_key])}),
        format_func=lambda v: f"{v:.0e}",
        key=lr_key,
    )
    anneal, train_samples = float(tdef["anneal_epochs"]), int(tdef["train_samples"])
    if model_cls.has_latents:  # a flow has no KL to anneal and no guide to sample
        anneal = st.number_input(
            "KL annealing epochs (0 = off)",
            0.0,
            10000.0,
            step=1.0,
            key=widget(f"anneal_{model_name}", float(tdef["anneal_epochs"])),
        )
        train_samples = st.number_input(
            "guide samples per example in each step",
            1,
            64,
            key=widget("train_samples", int(tdef["train_samples"])),
        )
    seed = st.number_input("seed", 0, 2**31 - 1, key=widget("seed", int(tdef["seed"])))
    cap = HOSTING.max_steps
    max_steps = st.number_input(
        f"max steps (0 = {'the cap, ' + format(cap, ',') if cap else 'no limit'})",
        0,
        cap or 10**9,
        key=widget("max_steps", 0),
    )
    device = st.selectbox("device", devices, key=widget("device", devices[0]))

    st.header("Runs")
    if HOSTING.hosted:
        root = HOSTING.root
        st.caption(
            f"runs are kept on the server; at most {HOSTING.max_running} train at once "
            f"(the others wait in a queue), each for at most "
            f"{HOSTING.max_seconds / 60:g} min and {HOSTING.max_steps:,} steps"
        )
        resume_path = ""
    else:
        root = Path(
            st.text_input(
                "runs folder",
                key=widget("out_root", str(HOSTING.root)),
                help="each run writes RUNS/<run id>/; runs started with "
                "'python -m vaelab train --out RUNS/<name>' show up",
            )
        )
        resume_path = st.text_input(
            "resume from a checkpoint file (optional)", key=widget("resume", "")
        )
    upload = st.file_uploader("upload a checkpoint to continue", type=["pt"], key="upload")
    if upload is None:
        state.pop("uploaded", None)
    elif state.get("uploaded", {}).get("file_id") != upload.file_id:
        try:
            info = check_upload(upload.name, upload.getvalue(), HOSTING)
            state.uploaded = {"file_id": upload.file_id, **info}
        except ValueError as e:
            state.uploaded = {"file_id": upload.file_id, "error": str(e)}
    if "uploaded" in state:
        if "error" in state.uploaded:
            st.error(state.uploaded["error"])
        elif state.uploaded["remaining"]:
            st.warning(
                f"uploaded {state.uploaded['text']}; nothing to continue: "
                f"{state.uploaded['remaining']}"
            )
        else:
            st.success(f"uploaded {state.uploaded['text']}; press 'Resume'")
    if INSTRUCTOR_PASSWORD is not None:
        with st.expander("instructor"):
            given = st.text_input(
                "instructor password",
                type="password",
                key="instructor_pw",
                help="the password in the server's .streamlit/secrets.toml; shows every "
                "session's runs, each of which can be stopped",
            )
            if given and not instructor.password_ok(given, INSTRUCTOR_PASSWORD):
                st.error("wrong instructor password")
INSTRUCTOR = INSTRUCTOR_PASSWORD is not None and instructor.password_ok(
    state.get("instructor_pw", ""), INSTRUCTOR_PASSWORD
)


# ----------------------------------------------------------------------------- runs and actions


def all_runs() -> list[dict]:
    try:
        return runs.visible_runs(runs.list_runs(root), TOKEN, HOSTING)
    except (OSError, ValueError):
        return []


def say(text: str, kind: str = "error") -> None:
    state.message = (kind, text)


def on_train() -> None:
    state.pop("message", None)
    try:
        sets = parse_sets([s.strip() for s in extra.split(";") if s.strip()], "config field")
        train = {
            "epochs": int(epochs),
            "batch_size": int(batch_size),
            "lr": float(lr),
            "seed": int(seed),
            "device": device,
            "max_steps": int(max_steps),
            "anneal_epochs": float(anneal),
            "train_samples": int(train_samples),
        }
        args, settings = plan_run(
            model_name, data_name, data_path or None, {**overrides, **sets}, train, HOSTING
        )
        run_id = runs.create_run(root, TOKEN, args, settings, HOSTING)
    except (ValueError, OSError) as e:
        say(str(e))
        return
    st.query_params["run"] = run_id


def on_resume(run: dict | None) -> None:
    """Continue the upload, the checkpoint path, or the session's own stopped run."""
    state.pop("message", None)
    try:
        if "uploaded" in state and "error" not in state.uploaded:
            info = state.uploaded
            run_id = runs.create_run(
                root,
                TOKEN,
                ["--resume", "{folder}/uploaded.pt", "--train-set", "progress=False"],
                {"model": info["model"], "data": info["data"]},
                HOSTING,
                files={"uploaded.pt": upload.getvalue()},
            )
        elif resume_path and not HOSTING.hosted:
            path = Path(resume_path)
            if not path.is_file():
                raise ValueError(f"no checkpoint at {path}; give the path of a checkpoint.pt")
            run_id = runs.create_run(
                root,
                TOKEN,
                ["--resume", str(path.resolve()), "--train-set", "progress=False"],
                {"model": "?", "data": {}},
                HOSTING,
            )
        elif run is not None and runs.owns(run, TOKEN):
            runs.requeue(
                root,
                run["id"],
                TOKEN,
                ["--resume", "{folder}/checkpoint.pt", "--train-set", "progress=False"],
            )
            run_id = run["id"]
        else:
            raise ValueError(
                "nothing to resume: upload a checkpoint, or open a stopped run of yours"
            )
    except (ValueError, OSError) as e:
        say(str(e))
        return
    st.query_params["run"] = run_id


def on_request(run_id: str, action: str) -> None:
    state.pop("message", None)
    try:
        runs.request(root, run_id, TOKEN, action)
    except (ValueError, OSError) as e:
        say(str(e))


def on_rename(run_id: str) -> None:
    try:
        runs.rename(
            root,
            run_id,
            TOKEN,
            name=state.get("rename", ""),
            tags=state.get("tags", "").split(","),
        )
        say("saved", "success")
    except (ValueError, OSError) as e:
        say(str(e))


def on_delete(run_id: str) -> None:
    try:
        runs.delete(root, run_id, TOKEN)
    except (ValueError, OSError) as e:
        say(str(e))
        return
    if st.query_params.get("run") == run_id:
        del st.query_params["run"]


def labelled_key(prefix: str, labels: dict[str, str]) -> str:
    """A widget key that changes with its option labels. Streamlit keeps a keyed widget's
    labels when only ``format_func``'s output changes, so a run going from queued to training,
    or renamed, must make a new widget, not relabel the old one."""
    return f"{prefix}_{zlib.crc32(repr(labels).encode()):08x}"


def current(visible: list[dict]) -> dict | None:
    """The run this page shows: the one named in the URL, if this session may see it."""
    run_id = st.query_params.get("run")
    found = next((r for r in visible if r["id"] == run_id), None)
    if found is None and "run" in st.query_params:
        del st.query_params["run"]
    return found


# ----------------------------------------------------------------------------- page

st.title("vaelab: variational latent-variable models")
st.markdown(model_class(model_name).card)
visible = all_runs()
mine_active = [r for r in visible if runs.owns(r, TOKEN) and r["state"] in runs.ACTIVE]
if mine_active:  # keep this session's runs alive
    runs.heartbeat(root, visible, TOKEN)
if runs.dispatch(root, HOSTING):  # start queued runs where slots are free (any session's)
    visible = all_runs()
run = current(visible)
own = run is not None and runs.owns(run, TOKEN)
b1, b2, b3, b4 = st.columns(4)
# Train and Resume act here, not in on_click: a callback runs before the script and would read
# the widget values of the previous run, not the ones just set
if b1.button(
    "Train",
    type="primary",
    key="train",
    disabled=bool(mine_active) and HOSTING.hosted,
    help="one run at a time per session on this server"
    if mine_active and HOSTING.hosted
    else "queue a new run with the sidebar's settings",
):
    on_train()
    st.rerun()
live_state = run["state"] if own else None
if live_state == "paused":
    b2.button("Continue", key="continue", on_click=on_request, args=(run["id"], "continue"))
else:
    b2.button(
        "Pause",
        key="pause",
        on_click=on_request,
        disabled=live_state != "training",
        args=(run["id"] if run else "", "pause"),
    )
b3.button(
    "Stop",
    key="stop",
    on_click=on_request,
    disabled=live_state not in runs.ACTIVE,
    args=(run["id"] if run else "", "stop"),
)
can_resume = (
    ("uploaded" in state and "error" not in state.uploaded and not state.uploaded["remaining"])
    or bool(resume_path)
    or (own and run["state"] == "stopped" and (run["folder"] / "checkpoint.pt").is_file())
)
if b4.button(
    "Resume",
    key="resume_run",
    disabled=not can_resume or (bool(mine_active) and HOSTING.hosted),
    help="continue an uploaded checkpoint, or this stopped run of yours",
):
    on_resume(run)
    st.rerun()
if "message" in state:
    kind, text = state.message
    (st.success if kind == "success" else st.error)(text)

if visible:
    ids = [r["id"] for r in visible]
    names = {
        r["id"]: f"{r['name']} ({r['state']}"
        + (", yours)" if runs.owns(r, TOKEN) else ", read-only)")
        for r in visible
    }
    picked = st.selectbox(
        "run",
        ids,
        index=ids.index(run["id"]) if run else None,
        format_func=names.get,
        placeholder="choose a run to show",
        key=labelled_key(f"pick_{run['id'] if run else ''}", names),
    )
    if picked is not None and (run is None or picked != run["id"]):
        st.query_params["run"] = picked
        st.rerun()
view = st.radio("view", VIEWS, horizontal=True, key="view", label_visibility="collapsed")


def status_line(run: dict, records: list[dict], position: int | None) -> str:
    last = {r.get("kind"): r for r in records}
    text = f"**{run['name']}**: {run['model']} on {run['data']} — **{run['state']}**"
    if position is not None:
        text += f", number {position} in the queue"
    if "train" in last:
        epochs = (run["settings"].get("train_config") or {}).get("epochs")
        text += f", step {last['train']['step']} (epoch {last['train']['epoch'] + 1}" + (
            f" of {epochs})" if epochs else ")"
        )
        text += f", train {last['train']['nelbo']:.3f} {run['unit']}"
    if "val" in last:
        text += f", validation {last['val']['nelbo']:.3f}"
    return text


def tail(run: dict) -> list[dict]:
    """The run's records, reading only what is new (kept per session for the shown run)."""
    held = state.get("tail")
    if held is None or held.folder != run["folder"]:
        held = state.tail = runs.MetricsTail(run["folder"])
    return held.update()


@functools.lru_cache(maxsize=8)
def reference(data: str) -> dict:
    """The exact -log p(x) of a built-in linear-Gaussian data set's true system, if any."""
    try:
        train, val, _ = builtin_dataset(data)
    except ValueError:
        return {}
    return reference_metrics(train, val)


def show_curves(run: dict, records: list[dict]) -> None:
    c1, c2, c3 = st.columns(3)
    smoothing = c1.slider(
        "smoothing",
        0.0,
        0.99,
        0.6,
        0.01,
        key="smoothing",
        help="TensorBoard's: a moving average with its start-up bias removed; "
        "the raw curve stays faint behind it",
    )
    x = c2.radio(
        "x axis",
        ("step", "wall"),
        horizontal=True,
        key="x_axis",
        format_func={"step": "step", "wall": "wall time"}.get,
    )
    log = c3.toggle("symmetric log scale", key="log_scale")
    latents = run["settings"].get("has_latents", True)
    annealed = float((run["settings"].get("train_config") or {}).get("anneal_epochs") or 0) > 0
    panels = charts.curve_panels(
        records,
        latents,
        run["unit"],
        reference=reference(run["data"]) if run["data"] != "?" else None,
        smoothing=smoothing,
        annealed=annealed,
    )
    columns = st.columns(2)
    for i, panel in enumerate(panels):
        with columns[i % 2]:
            st.markdown(f"**{panel['title']}**" + (f" ({panel['unit']})" if panel["unit"] else ""))
            if panel["rows"]:
                st.vega_lite_chart(
                    charts.chart_table(panel["rows"]),
                    charts.curve_spec(panel, log=log, x=x, smoothed=smoothing > 0),
                    width="stretch",
                    key=f"curve_{i}",
                )
            else:
                st.caption("no points yet")
            st.caption(panel["caption"])


@st.fragment(run_every=POLL_SECONDS if mine_active else None)
def run_panel() -> None:
    """The shown run, re-read from its folder at every poll while this session has a run
    that has not ended; the poll also keeps this session's runs alive and starts queued ones."""
    listed = runs.list_runs(root) if mine_active else []
    if mine_active:
        runs.heartbeat(root, listed, TOKEN)
        runs.dispatch(root, HOSTING)
    shown = current(all_runs())
    if shown is None:
        st.info(
            "Choose a model and a data set in the sidebar, then press Train."
            if view != VIEWS[3]
            else "no run to compare yet"
        )
        return
    try:
        records = tail(shown)
    except OSError as e:
        st.error(f"this run cannot be read: {e.strerror}")
        return
    st.markdown(
        status_line(
            shown,
            records,
            runs.queue_position(listed, shown["id"]) if shown["state"] == "queued" else None,
        )
    )
    if shown["state"] == "failed":
        st.error(f"this run failed: {shown['message']}")
    elif shown["message"] and shown["state"] == "stopped":
        st.caption(shown["message"])
    if view == VIEWS[0]:
        show_curves(shown, records)
    if run is not None and shown["id"] == run["id"] and shown["state"] != run["state"]:
        st.rerun()  # the run started, paused or ended: refresh the buttons and the run list
    if mine_active and not any(r["state"] in runs.ACTIVE for r in listed if runs.owns(r, TOKEN)):
        st.rerun()  # the session's runs ended: stop polling


def png(fig, dpi: int = DPI) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    return buffer.getvalue()


def export_png(fig, title: str) -> bytes:
    """The figure for a slide or a report: EXPORT_DPI, the run and the step in its title."""
    fig.suptitle(title, fontsize=10)
    try:
        return png(fig, EXPORT_DPI)
    finally:
        fig.suptitle("")


def snapshot(run: dict):
    """The run's model from its latest checkpoint (weights_only) with the validation view
    and diagnostics, or a message saying why there is none; kept per session until the
    checkpoint changes."""
    path = run["folder"] / "checkpoint.pt"
    try:
        key = (str(path), path.stat().st_mtime_ns)
    except OSError:
        return (
            "no checkpoint yet: the figures come from the run's checkpoint, written at "
            "each epoch's end"
        )
    held = state.get("snapshot")
    if held is not None and held["key"] == key:
        return held
    try:
        model, ckpt = load_model(path)
        spec = runs.check_data_spec(dict(ckpt["data"] or {}), HOSTING)
        train, val, _ = (
            builtin_dataset(spec["name"])
            if set(spec) == {"name"} and not dataset_needs_path(spec["name"])
            else load_dataset(**spec)
        )
    except (ValueError, FileNotFoundError, OSError, KeyError) as e:
        return f"figures unavailable: {e}"
    view_ = make_view(train, val)
    entry = diagnose(model.eval(), view_.batch) if model.has_latents else None
    state.snapshot = {
        "key": key,
        "model": model.eval(),
        "view": view_,
        "step": ckpt["step"],
        "diagnostics": entry,
    }
    state.pop("figures", None)
    return state.snapshot


def show_figures(run: dict) -> None:
    snap = snapshot(run)
    if isinstance(snap, str):
        st.info(snap)
        return
    if snap["diagnostics"] is not None:
        st.vega_lite_chart(
            spec=charts.latent_usage_spec(snap["diagnostics"]), width="stretch", key="latent_usage"
        )
    held = state.get("figures")
    if held is None or held["key"] != snap["key"]:
        try:
            figures = plots.model_figures(
                snap["model"], snap["view"].batch, snap["view"].info, labels=snap["view"].labels
            )
            held = {
                "key": snap["key"],
                "images": [(t, png(f), f) for t, f in figures.items()],
                "warning": None,
            }
        except (ValueError, RuntimeError, TypeError, NotImplementedError) as e:
            held = {"key": snap["key"], "images": [], "warning": f"{type(e).__name__}: {e}"}
        state.figures = held
    if held["warning"]:
        st.warning(f"model figures unavailable: {held['warning']}")
    st.caption(f"from the checkpoint at step {snap['step']}")
    for i, (title, image, fig) in enumerate(held["images"]):
        st.subheader(title)
        st.image(image)
        name = title.split(" (")[0].replace(" ", "_")
        st.download_button(  # drawn at EXPORT_DPI only when clicked
            f"PNG, {EXPORT_DPI} dpi",
            functools.partial(export_png, fig, f"{run['name']}, step {snap['step']}: {title}"),
            file_name=runs.export_name(run, f"{name}-step{snap['step']}", "png"),
            mime="image/png",
            key=f"png_{i}",
        )


def explore(run: dict) -> None:
    snap = snapshot(run)
    if isinstance(snap, str):
        st.info(snap)
        return
    model, batch, info = snap["model"], snap["view"].batch, snap["view"].info
    if batch.x.dim() == 3:
        st.subheader("a validation sequence at time t: latent path and observation")
        c1, c2 = st.columns(2)
        index = (
            c1.slider("sequence", 0, len(batch) - 1, 0, key="explore_sequence")
            if len(batch) > 1
            else 0
        )
        steps = observed_steps(batch, index)
        t = c2.slider("time step t", 1, steps, 1, key="explore_t") if steps > 1 else 1
        st.image(png(plots.sequence_explorer(model, batch, t, index=index, info=info)))
    if "image_shape" in info and run["settings"].get("has_latents", True):
        st.subheader("latent sliders: E[x | z], other dimensions at the prior mean 0")
        z_dim = model.config.z_dim
        dims = st.multiselect(
            "latent dimensions",
            list(range(z_dim)),
            default=list(range(min(z_dim, 2))),
            key="slider_dims",
        )
        values = {d: st.slider(f"z{d}", -3.0, 3.0, 0.0, 0.1, key=f"z_slider_{d}") for d in dims}
        st.image(png(plots.decoded_image(model, values, info["image_shape"])))
    elif info.get("kind") == "piano_roll":
        st.subheader("listen: a sampled sequence, synthesised from its piano roll")
        steps = st.slider("time steps", 8, 128, 48, key="audio_steps")
        if st.button("new sample", key="audio_sample") or "audio" not in state:
            state.audio = sample_piano_roll(model, steps)
        st.image(png(plots.piano_roll(state.audio, titles=["sample"])))
        st.audio(piano_roll_wav(state.audio), format="audio/wav")


def compare(run: dict | None, visible: list[dict]) -> None:
    """Runs on the same data set and unit as the shown one, overlaid on one chart."""
    if run is None:
        st.info("open a run first: runs of its data set and unit can be compared with it")
        return
    same = runs.comparable(visible, run)
    names = {r["id"]: r["name"] for r in same}
    # the key changes with the labels (labelled_key), so the choice itself lives in
    # overlay_picked
    kept = [i for i in state.get("overlay_picked", []) if i in names] or [run["id"]]
    picked = st.multiselect(
        f"runs on {run['data']} ({run['unit']}) to overlay",
        list(names),
        default=kept,
        format_func=names.get,
        key=labelled_key("overlay_runs", names),
    )
    state.overlay_picked = picked
    if not picked:
        return
    chosen = [
        {
            "name": names[i],
            "data": run["data"],
            "unit": run["unit"],
            "has_latents": r["settings"].get("has_latents", True),
            "records": runs.read_metrics(r["folder"])[0],
        }
        for i in picked
        for r in same
        if r["id"] == i
    ]
    panels = (
        charts.LATENT_PANELS if run["settings"].get("has_latents", True) else charts.FLOW_PANELS
    )
    keys = {k: t for t, k, _ in panels}
    key = st.selectbox("curve", list(keys), format_func=keys.get, key="overlay_metric")
    c1, c2 = st.columns(2)
    smoothing = c1.slider("smoothing", 0.0, 0.99, 0.6, 0.01, key="overlay_smoothing")
    x = c2.radio("x axis", ("step", "wall"), horizontal=True, key="overlay_x")
    panel = charts.overlay_panel(chosen, key, smoothing=smoothing)
    if not panel["rows"]:
        st.caption("no run here records this curve")
        return
    st.markdown(f"**{panel['title']}**" + (f" ({panel['unit']})" if panel["unit"] else ""))
    st.vega_lite_chart(
        charts.chart_table(panel["rows"]),
        charts.overlay_spec(panel, x=x, smoothed=smoothing > 0),
        width="stretch",
        key="overlay_chart",
    )
    st.caption(panel["caption"])


def on_instructor_stop(run_id: str | None) -> None:
    state.pop("message", None)
    if not INSTRUCTOR:  # the password was changed or cleared since the page was drawn
        say("the instructor password is needed to stop another session's run")
        return
    if run_id is None:
        say("choose a run to stop")
        return
    try:
        say(instructor.stop_any(root, run_id), "success")
    except (ValueError, OSError) as e:
        say(str(e))


@st.fragment(run_every=POLL_SECONDS * 2.5)
def instructor_view() -> None:
    """Every run of every session under the runs root, re-read every 5 s; any can be
    stopped. Drawn only for a session that typed the instructor password."""
    every_run = runs.list_runs(root)
    st.subheader("instructor: every run of every session")
    if not every_run:
        st.info("no run yet")
        return
    st.dataframe(instructor.class_table(every_run), hide_index=True, key="instructor_table")
    active = instructor.stoppable(every_run)
    c1, c2 = st.columns([3, 1])
    picked = c1.selectbox(
        "run to stop",
        active,
        index=None,
        placeholder="a run that has not ended" if active else "no run is training or queued",
        key="instructor_pick",
    )
    c2.button(
        "Stop this run",
        key="instructor_stop",
        disabled=picked is None,
        on_click=on_instructor_stop,
        args=(picked,),
    )


run_panel()
if INSTRUCTOR:
    instructor_view()
if run is not None:
    records = runs.read_metrics(run["folder"])[0] if run["state"] not in runs.ACTIVE else []
    d1, d2 = st.columns(2)
    if records:
        d1.download_button(
            "Download metrics (CSV)",
            functools.partial(runs.metrics_csv, run["id"], records, run["unit"]),
            file_name=runs.export_name(run),
            mime="text/csv",
            key="download_csv",
        )
    checkpoint = run["folder"] / "checkpoint.pt"
    if run["state"] not in runs.ACTIVE and (own or not HOSTING.hosted) and checkpoint.is_file():
        d2.download_button(
            "Download checkpoint",
            checkpoint.read_bytes,
            file_name=runs.export_name(run, f"step{run['step']}", "pt"),
            mime="application/octet-stream",
            key="download",
        )
    if own:
        with st.expander("name, tags, delete"):
            st.text_input("name", value=run["name"], key="rename")
            st.text_input("tags (comma separated)", value=", ".join(run["tags"]), key="tags")
            c1, c2 = st.columns(2)
            c1.button("Save", key="save_meta", on_click=on_rename, args=(run["id"],))
            c2.button(
                "Delete this run",
                key="delete",
                on_click=on_delete,
                args=(run["id"],),
                disabled=run["state"] in runs.ACTIVE,
                help="stop it first" if run["state"] in runs.ACTIVE else "remove its folder",
            )
    if view == VIEWS[1]:
        show_figures(run)
    elif view == VIEWS[2]:
        explore(run)
if view == VIEWS[3]:
    compare(run, visible)
