"""vaelab dashboard: pick a model and a data set, train it in the background, watch it learn,
explore its latents.

Run with ``streamlit run app.py``. A thin front end: models come from ``vaelab.MODELS``, data
from ``vaelab.datasets.DATASETS``, the config is built like the CLI's, training is
``vaelab.train.fit`` in a :class:`vaelab.live.TrainingRun` process kept in the server-wide
:data:`vaelab.live.RUNS` registry (its id is in the URL, so a reloaded page re-attaches and a
second training is refused), figures from ``vaelab.plots``. The page polls the run with
``st.fragment(run_every=...)``; figures are PNGs redrawn only on new records, at most every
few seconds, and only those of the selected view.
"""

from __future__ import annotations

import dataclasses
import io
import tempfile
import time
from pathlib import Path

import streamlit as st
import torch

from vaelab import MODELS, plots
from vaelab.audio import piano_roll_wav
from vaelab.config import data_spec, make_model, parse_sets
from vaelab.datasets import DATASETS, load_dataset
from vaelab.live import RUNS, check_compatible, dataset_needs_path, warm_up
from vaelab.train import TrainConfig, load_checkpoint, load_model

POLL_SECONDS = 2.0  # how often the page looks at the run
CURVE_SECONDS = 3.0  # training curves redrawn at most this often while training
FIGURE_SECONDS = 15.0  # model figures (latents, samples) at most this often while training
# Training runs in its own process, so drawing never holds its GIL, but drawing still takes a
# core it may want: while a run trains, a figure that took d seconds to draw waits at least
# d / DRAW_BUDGET seconds before it is drawn again.
DRAW_BUDGET = 0.05
DPI = 90
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
VIEWS = ("training curves", "latents and samples", "explore")

st.set_page_config(page_title="vaelab", layout="wide")
state = st.session_state
warm_up()  # the training processes' fork server imports torch while the sidebar is filled in


def field_defaults(config_cls: type) -> dict:
    """Default value of every field of a config dataclass (factories called)."""
    out = {}
    for f in dataclasses.fields(config_cls):
        if f.default is not dataclasses.MISSING:
            out[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            out[f.name] = f.default_factory()
    return out


def attached_run():
    """The run this page shows: the one named in the URL, else the server's active one."""
    run_id = st.query_params.get("run")
    run = RUNS.get(run_id)
    if run is None:
        found = RUNS.active()
        run_id, run = found if found else (None, None)
        if run_id:
            st.query_params["run"] = run_id
        elif "run" in st.query_params:
            del st.query_params["run"]  # a stale id (e.g. the server restarted)
    return run_id, run


def device_label(name: str) -> str:
    return f"GPU: {torch.cuda.get_device_name(0)}" if name == "cuda" else "CPU"


# ----------------------------------------------------------------------------- sidebar

with st.sidebar:
    st.header("Model and data")
    model_name = st.selectbox("model", list(MODELS), key="model")
    config_cls, model_cls = MODELS[model_name]
    model_defaults = field_defaults(config_cls)
    datasets = list(DATASETS)
    data_name = st.selectbox("data set", datasets, index=datasets.index("digits"), key="data")
    data_path = ""
    if dataset_needs_path(data_name):
        data_path = st.text_input("path to the data (file or folder)", key=f"path_{data_name}",
                                  help="mnist: the folder of the IDX files; polyphonic: a "
                                       ".pickle; arrays: an .npz with x [N, T, X] (and a)")

    overrides: dict = {}
    for field, label, low, high, step in INT_FIELDS:
        if field in model_defaults and (field != "num_iafs" or model_defaults[field] > 0):
            default = min(max(int(model_defaults[field]), low), high)
            overrides[field] = st.number_input(label, low, high, default, step=step,
                                               key=f"{field}_{model_name}")
    if "hidden_dims" in model_defaults:  # same depth as the default, every layer this wide
        width = st.number_input("hidden size", 2, 2048, int(model_defaults["hidden_dims"][0]),
                                step=8, key=f"hidden_dims_{model_name}")
        overrides["hidden_dims"] = [width] * len(model_defaults["hidden_dims"])
    extra = st.text_input("other config fields (key=value; key=value)", key=f"extra_{model_name}",
                          help=f"fields of {config_cls.__name__}: {', '.join(model_defaults)}")

    st.header("Training")
    tdef = {**field_defaults(TrainConfig), **getattr(model_cls, "train_defaults", {})}
    epochs = st.number_input("epochs", 1, 100000, int(tdef["epochs"]), key=f"epochs_{model_name}")
    batch_size = st.number_input("batch size", 1, 4096, int(tdef["batch_size"]),
                                 key=f"bs_{model_name}")
    lr_options = sorted({*LEARNING_RATES, float(tdef["lr"])})
    lr = st.select_slider("learning rate", lr_options, value=float(tdef["lr"]),
                          format_func=lambda v: f"{v:.0e}", key=f"lr_{model_name}")
    anneal = st.number_input("KL annealing epochs (0 = off)", 0.0, 10000.0,
                             float(tdef["anneal_epochs"]), step=1.0, key=f"anneal_{model_name}")
    train_samples = st.number_input(
        "guide samples per example in each step", 1, 64, int(tdef["train_samples"]),
        key="train_samples", help="their ELBOs are averaged: less gradient noise (from a "
        "Monte Carlo KL, as with IAF guides) for proportionally more work per step")
    seed = st.number_input("seed", 0, 2**31 - 1, int(tdef["seed"]), key="seed")
    max_steps = st.number_input("max steps, in total (0 = no limit)", 0, 10**9, 0,
                                key="max_steps")
    devices = ["cuda", "cpu"] if torch.cuda.is_available() else ["cpu"]
    device = st.selectbox("device", devices, key="device", format_func=device_label)
    out_root = st.text_input("runs folder", "runs", key="out_root",
                             help="each run writes RUNS/<model>-<data>-<time>/checkpoint.pt")

    st.header("Checkpoint")
    resume_path = st.text_input("resume from a checkpoint file (optional)", key="resume",
                                help="a checkpoint.pt; its model and data are used")
    upload = st.file_uploader("or upload a checkpoint", type=["pt"], key="upload")
    if upload is None:
        state.pop("uploaded", None)
    elif state.get("uploaded", {}).get("file_id") != upload.file_id:
        # saved to a file, then read back like any checkpoint: weights_only=True, validated
        path = Path(tempfile.mkdtemp(prefix="vaelab-upload-")) / "checkpoint.pt"
        path.write_bytes(upload.getvalue())
        try:
            ckpt = load_checkpoint(path)
            if ckpt.get("model") not in MODELS:
                raise ValueError(f"it holds an unknown model {ckpt.get('model')!r}")
            state.uploaded = {"file_id": upload.file_id, "path": str(path),
                              "text": f"{ckpt['model']} at step {ckpt['step']}"}
        except (ValueError, FileNotFoundError, KeyError) as e:
            state.uploaded = {"file_id": upload.file_id, "error": f"{upload.name}: {e}"}
    if "uploaded" in state:
        if "error" in state.uploaded:
            st.error(f"Not a usable vaelab checkpoint. {state.uploaded['error']}")
        else:
            st.success(f"uploaded checkpoint: {state.uploaded['text']}; press "
                       f"'Resume from checkpoint'")


# ----------------------------------------------------------------------------- actions


def resume_source(run) -> str | None:
    """The checkpoint that 'Resume from checkpoint' continues: an upload, else the path box,
    else the checkpoint of the run on the page."""
    uploaded = state.get("uploaded") or {}
    if "path" in uploaded:
        return uploaded["path"]
    if resume_path:
        return resume_path
    if run is not None and run.checkpoint_path.is_file():
        return str(run.checkpoint_path)
    return None


def prepare(resume: str | None) -> tuple:
    """Data, model, TrainConfig and data spec from the widgets (or the resume checkpoint)."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    train_values = {"epochs": int(epochs), "batch_size": int(batch_size), "lr": float(lr),
                    "anneal_epochs": float(anneal), "train_samples": int(train_samples),
                    "seed": int(seed), "device": device,
                    "max_steps": int(max_steps) or None, "progress": False}
    if resume:
        model, ckpt = load_model(resume)
        spec = dict(ckpt["data"]) or data_spec(data_name, data_path or None, {})
        train_config = {**ckpt["train_config"], "epochs": max(int(epochs), ckpt["epoch"] + 1),
                        "max_steps": int(max_steps) or None, "device": device, "progress": False}
        train, val, _ = load_dataset(**spec)
    else:
        spec = data_spec(data_name, data_path or None, {})
        train, val, _ = load_dataset(**spec)
        model = make_model(model_name, train, {**overrides, **parse_sets(
            [s.strip() for s in extra.split(";") if s.strip()])})
        train_config = {**getattr(model, "train_defaults", {}), **train_values}
    check_compatible(model, train)
    name = f"{model.name}-{spec['name']}-{stamp}"
    config = TrainConfig(**{**train_config, "out_dir": str(Path(out_root) / name)})
    return model, train, val, config, spec


def start(resume: str | None) -> None:
    state.pop("error", None)
    try:
        model, train, val, config, spec = prepare(resume)
        run_id, _ = RUNS.start(model, train, val, config, data_spec=spec, resume=resume)
    except (ValueError, FileNotFoundError, RuntimeError, ImportError, AttributeError,
            TypeError, KeyError) as e:
        state.error = f"{type(e).__name__}: {e}"
        return
    st.query_params["run"] = run_id
    for key in ("curves", "figures"):
        state.pop(key, None)


def on_pause() -> None:
    run = attached_run()[1]
    if run is not None:
        run.resume() if run.status == "paused" else run.pause()


def on_stop() -> None:
    run = attached_run()[1]
    if run is not None:
        run.stop()


# ----------------------------------------------------------------------------- page

st.title("vaelab: variational latent-variable models")
run_id, run = attached_run()
active = run is not None and run.active
source = resume_source(run)
b1, b2, b3, b4 = st.columns(4)
if b1.button("Train", disabled=active, type="primary", key="train"):
    start(None)  # here, not on_click, so it reads this run's widget values
    st.rerun()
b2.button("Continue" if active and run.status == "paused" else "Pause", on_click=on_pause,
          disabled=not active, key="pause")
b3.button("Stop", on_click=on_stop, disabled=not active, key="stop")
if b4.button("Resume from checkpoint", disabled=active or source is None, key="resume_run",
             help=f"continue training from {source}" if source else "no checkpoint yet"):
    start(source)
    st.rerun()
if "error" in state:
    st.error(state.error)
if run is not None and not active and run.checkpoint_path.is_file():
    st.download_button("Download checkpoint", run.checkpoint_path.read_bytes(),
                       file_name=f"{run.model_name}-step{run.step}.pt",
                       mime="application/octet-stream", key="download")
view = st.radio("view", VIEWS, horizontal=True, key="view", label_visibility="collapsed")
state.polling = active


def png(fig) -> bytes:
    """PNG bytes of a figure."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI)
    return buffer.getvalue()


def cached(name: str, run_id: str, records: int, every: float, active: bool, draw):
    """``draw()``'s result, kept in the session and drawn again only when the run has new
    records, and then, while it trains, at most every ``every`` seconds and at most
    ``DRAW_BUDGET`` of the time."""
    old = state.get(name)
    now = time.monotonic()
    if old is not None and old["run"] == run_id and old["records"] > 0 and (
            old["records"] == records or (active and now - old["time"] < max(
                every, old["cost"] / DRAW_BUDGET))):
        return old["value"]
    value = draw()
    state[name] = {"run": run_id, "records": records, "time": now, "value": value,
                   "cost": time.monotonic() - now}
    return value


def draw_curves(run) -> tuple[list[bytes], int]:
    entry = run.diagnose()  # {"step"} only for a model without latents
    latents = "activity" in entry
    images = [png(plots.training_curves(run.history, run.reference,
                                        run.diagnostics if latents else None))]
    if latents:
        images.append(png(plots.latent_usage(entry)))
    return images, entry["step"]


def draw_figures(run) -> tuple[list[tuple[str, bytes]], str | None]:
    try:
        figures = plots.model_figures(run.model, run.view.batch, run.view.info,
                                      labels=run.view.labels)
    except (ValueError, RuntimeError, TypeError, NotImplementedError) as e:
        return [], f"model figures unavailable: {type(e).__name__}: {e}"
    return [(title, png(fig)) for title, fig in figures.items()], None


@st.fragment(run_every=POLL_SECONDS if active else None)
def live_view() -> None:
    run_id, run = attached_run()
    if run is None:
        st.info("Choose a model and a data set in the sidebar, then press Train.")
        return
    history = run.history
    last = {r["kind"]: r for r in history}
    elapsed = (run.ended_at or time.time()) - (run.started_at or time.time())
    summary = (f"**{run.model_name}** on **{(run.data_spec or {}).get('name', '?')}** "
               f"({device_label(torch.device(run.config.device).type)}) — status: "
               f"**{run.status}**, step {run.step}, {elapsed:.0f} s")
    if "train" in last:
        summary += f", train -ELBO {last['train']['nelbo']:.3f}"
    if "val" in last:
        summary += f", validation -ELBO {last['val']['nelbo']:.3f} (epoch {last['val']['epoch']})"
    if "exact_nll_val" in run.reference:
        summary += f", exact -log p(x) of the true system {run.reference['exact_nll_val']:.3f}"
    st.markdown(summary)
    if run.status.startswith("failed"):
        st.error(run.status)
    st.caption(f"checkpoint: {run.checkpoint_path}")
    running = run.active
    if view == VIEWS[0]:
        images, step = cached("curves", run_id, len(history), CURVE_SECONDS, running,
                              lambda: draw_curves(run))
        st.caption(f"curves drawn at step {step}" + (f", redrawn at most every "
                                                     f"{CURVE_SECONDS:.0f} s" if running else ""))
        for image in images:
            st.image(image)
    elif view == VIEWS[1] and history:
        images, warning = cached("figures", run_id, len(history), FIGURE_SECONDS, running,
                                 lambda: draw_figures(run))
        if warning:
            st.warning(warning)
        columns = st.columns(2)
        for i, (title, image) in enumerate(images):
            with columns[i % 2]:
                st.subheader(title)
                st.image(image)
    if state.get("polling") and not running:
        st.rerun()  # the run ended: refresh the buttons and stop polling


def explore(run) -> None:
    """Interactive views of the run's latest snapshot (not polled: they change on input)."""
    model, batch, info = run.model, run.view.batch, run.view.info
    if "image_shape" in info and hasattr(model, "decode"):
        st.subheader("latent sliders: E[x | z], other dimensions at the prior mean 0")
        z_dim = model.config.z_dim
        dims = st.multiselect("latent dimensions", list(range(z_dim)),
                              default=list(range(min(z_dim, 2))), key="slider_dims")
        values = {d: st.slider(f"z{d}", -3.0, 3.0, 0.0, 0.1, key=f"z_slider_{d}")
                  for d in dims}
        st.image(png(plots.decoded_image(model, values, info["image_shape"])))
    elif info.get("kind") == "piano_roll":
        st.subheader("listen: a sampled sequence, synthesised from its piano roll")
        steps = st.slider("time steps", 8, 128, 48, key="audio_steps")
        if st.button("new sample", key="audio_sample") or "audio" not in state:
            _, p_notes = model.sample(1, steps=steps)
            state.audio = torch.bernoulli(p_notes[0]).cpu()  # [T, 88] notes on or off
        st.image(png(plots.piano_roll(state.audio, titles=["sample"])))
        st.audio(piano_roll_wav(state.audio), format="audio/wav")
        st.caption("a data sequence, for comparison")
        n = int(batch.mask[0].sum()) if batch.mask is not None else batch.x.shape[1]
        st.audio(piano_roll_wav(batch.x[0, :n]), format="audio/wav")
    elif getattr(model, "flow", None) is not None and batch.a is not None:
        st.subheader("density p(x | a) for one context, samples on top")
        i = st.slider("context (example of the validation set)", 0, len(batch) - 1, 0,
                      key="flow_context")
        extent = float(batch.x.abs().max()) * 1.15
        st.image(png(plots.flow_density(model, batch.a[i:i + 1], extent=extent)))
    else:
        st.info("latent paths and projections are in 'latents and samples'; nothing "
                "interactive for this model and data yet")


live_view()
if view == VIEWS[2] and run is not None and run.history:
    explore(run)
