"""vaelab dashboard: pick a model and a data set, train it in the background, watch it learn.

Run with ``streamlit run app.py``. A thin front end: models come from ``vaelab.MODELS``, data
from ``vaelab.data.DATASETS``, the config is built like the CLI's, training is
``vaelab.train.fit`` in a :class:`vaelab.live.TrainingRun` thread, figures from
``vaelab.plots`` (shown as PNGs rendered here at a modest dpi, redrawn only on new records). The page polls the run with ``st.fragment(run_every=...)``, so reruns never
restart or block training.
"""

from __future__ import annotations

import dataclasses
import io
import time
from pathlib import Path

import streamlit as st
import torch

from vaelab import MODELS, plots
from vaelab.__main__ import _parse_sets, data_spec, make_model
from vaelab.data import DATASETS, load_dataset
from vaelab.live import check_compatible, dataset_needs_path, start_run
from vaelab.train import TrainConfig, load_model

POLL_SECONDS = 2.0
DPI = 100
LEARNING_RATES = [1e-4, 3e-4, 1e-3, 3e-3, 1e-2]

st.set_page_config(page_title="vaelab", layout="wide")
state = st.session_state


def field_defaults(config_cls: type) -> dict:
    """Default value of every field of a config dataclass (factories called)."""
    out = {}
    for f in dataclasses.fields(config_cls):
        if f.default is not dataclasses.MISSING:
            out[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            out[f.name] = f.default_factory()
    return out


# ----------------------------------------------------------------------------- sidebar

with st.sidebar:
    st.header("Model")
    model_name = st.selectbox("model", list(MODELS), key="model")
    config_cls, model_cls = MODELS[model_name]
    model_defaults = field_defaults(config_cls)
    data_name = st.selectbox("data set", list(DATASETS),
                             index=list(DATASETS).index("digits") if "digits" in DATASETS else 0,
                             key="data")
    data_path = ""
    if dataset_needs_path(data_name):
        data_path = st.text_input("path to the data (file or folder)", key=f"path_{data_name}")

    overrides: dict = {}
    if "z_dim" in model_defaults:
        overrides["z_dim"] = st.number_input("latent size z_dim", 1, 128,
                                             int(model_defaults["z_dim"]), key=f"z_{model_name}")
    hidden_default = model_defaults.get("hidden_dim", (model_defaults.get("hidden_dims") or [0])[0])
    if hidden_default:
        hidden = st.number_input("hidden size", 4, 2048, int(hidden_default), step=8,
                                 key=f"hidden_{model_name}")
        if "hidden_dim" in model_defaults:
            overrides["hidden_dim"] = hidden
        if "hidden_dims" in model_defaults:  # same depth as the default, every layer this wide
            overrides["hidden_dims"] = [hidden] * len(model_defaults["hidden_dims"])
    if "rnn_dim" in model_defaults:
        overrides["rnn_dim"] = st.number_input("RNN size rnn_dim", 4, 2048,
                                               int(model_defaults["rnn_dim"]), step=8,
                                               key=f"rnn_{model_name}")
    extra = st.text_input("other config fields (key=value; key=value)", key=f"extra_{model_name}",
                          help=f"fields of {config_cls.__name__}: {', '.join(model_defaults)}")

    st.header("Training")
    tdef = {**field_defaults(TrainConfig), **getattr(model_cls, "train_defaults", {})}
    epochs = st.number_input("epochs", 1, 10000, int(tdef["epochs"]), key=f"epochs_{model_name}")
    batch_size = st.number_input("batch size", 1, 4096, int(tdef["batch_size"]),
                                 key=f"bs_{model_name}")
    lr_options = sorted({*LEARNING_RATES, float(tdef["lr"])})
    lr = st.select_slider("learning rate", lr_options, value=float(tdef["lr"]),
                          format_func=lambda v: f"{v:.0e}", key=f"lr_{model_name}")
    anneal = st.number_input("KL annealing epochs (0 = off)", 0.0, 1000.0,
                             float(tdef["anneal_epochs"]), step=1.0, key=f"anneal_{model_name}")
    seed = st.number_input("seed", 0, 2**31 - 1, int(tdef["seed"]), key="seed")
    max_steps = st.number_input("max steps (0 = no limit)", 0, 10**9, 0, key="max_steps")
    devices = ["cuda", "cpu"] if torch.cuda.is_available() else ["cpu"]
    device = st.selectbox(
        "device", devices, key="device",
        format_func=lambda d: f"GPU: {torch.cuda.get_device_name(0)}" if d == "cuda" else "CPU")
    out_root = st.text_input("runs folder", "runs", key="out_root",
                             help="each run writes RUNS/<model>-<data>-<time>/checkpoint.pt")
    resume_path = st.text_input("resume from checkpoint (optional)", key="resume",
                                help="a checkpoint.pt; the model and data stored in it are used")


# ----------------------------------------------------------------------------- actions


def prepare() -> tuple:
    """Data, model, TrainConfig and data spec from the widgets (or the resume checkpoint)."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    train_values = {"epochs": int(epochs), "batch_size": int(batch_size), "lr": float(lr),
                    "anneal_epochs": float(anneal), "seed": int(seed), "device": device,
                    "max_steps": int(max_steps) or None, "progress": False}
    if resume_path:
        model, ckpt = load_model(resume_path)
        spec = dict(ckpt["data"]) or data_spec(data_name, data_path or None, {})
        train_config = {**ckpt["train_config"], "epochs": int(epochs),
                        "max_steps": int(max_steps) or None, "device": device, "progress": False}
        train, val, _ = load_dataset(**spec)
    else:
        spec = data_spec(data_name, data_path or None, {})
        train, val, _ = load_dataset(**spec)
        model = make_model(model_name, train, {**overrides, **_parse_sets(
            [s.strip() for s in extra.split(";") if s.strip()])})
        train_config = {**getattr(model, "train_defaults", {}), **train_values}
    check_compatible(model, train)
    name = f"{model.name}-{spec['name']}-{stamp}"
    config = TrainConfig(**{**train_config, "out_dir": str(Path(out_root) / name)})
    return model, train, val, config, spec


def on_train() -> None:
    state.pop("error", None)
    try:
        model, train, val, config, spec = prepare()
        run = start_run(state.get("run"), model, train, val, config, data_spec=spec,
                        resume=resume_path or None)
    except (ValueError, FileNotFoundError, RuntimeError, ImportError, AttributeError,
            TypeError) as e:
        state.error = f"{type(e).__name__}: {e}"
        return
    # A fixed set of validation examples for the figures (fixed binarisation).
    view = val if val is not None and len(val) else train
    k = min(len(view), 8 if view.is_sequence else 256)
    index = torch.arange(k)
    state.view_batch = view.batch(index, torch.Generator().manual_seed(0))
    state.view_info = dict(view.info or {})
    labels = state.view_info.pop("labels", None)
    state.view_labels = None if labels is None else labels[index]
    state.run = run


def on_pause() -> None:
    run = state.get("run")
    if run is not None:
        run.resume() if run.status == "paused" else run.pause()


def on_stop() -> None:
    run = state.get("run")
    if run is not None:
        run.stop()


# ----------------------------------------------------------------------------- page

st.title("vaelab: variational latent-variable models")
run = state.get("run")
active = run is not None and run.active
left, middle, right = st.columns(3)
if left.button("Train", disabled=active, type="primary", key="train"):
    on_train()  # here, not on_click, so it reads this run's widget values
    st.rerun()
middle.button("Resume" if active and run.status == "paused" else "Pause", on_click=on_pause,
              disabled=not active, key="pause")
right.button("Stop", on_click=on_stop, disabled=not active, key="stop")
if "error" in state:
    st.error(state.error)
state.polling = active


def png(fig) -> bytes:
    """PNG bytes of a figure (its own constrained layout, so no tight bounding box)."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI)
    return buffer.getvalue()


def rendered(run, history: list[dict]) -> tuple[list[tuple[str, bytes]], str | None]:
    """Training curves, then the model's figures, as PNGs, and a warning if the model's
    figures failed; drawn again only when the run has new records (a paused or finished run
    is not redrawn on every poll)."""
    key = (run.started_at, len(history))
    cached = state.get("rendered")
    if cached is not None and cached[0] == key:
        return cached[1]
    images = [("training curves", png(plots.training_curves(history)))]
    warning = None
    if history:
        try:
            figures = plots.model_figures(run.model, state.view_batch, state.view_info,
                                          labels=state.view_labels)
        except (ValueError, RuntimeError, TypeError, NotImplementedError) as e:
            warning, figures = f"model figures unavailable: {type(e).__name__}: {e}", {}
        images += [(title, png(fig)) for title, fig in figures.items()]
    state.rendered = (key, (images, warning))
    return images, warning


@st.fragment(run_every=POLL_SECONDS if active else None)
def live_view() -> None:
    run = state.get("run")
    if run is None:
        st.info("Choose a model and a data set in the sidebar, then press Train.")
        return
    history = run.history
    last = {r["kind"]: r for r in history}
    elapsed = (run.ended_at or time.time()) - (run.started_at or time.time())
    summary = f"**{run.model_name}** on **{(run.data_spec or {}).get('name', '?')}** — " \
              f"status: **{run.status}**, step {run.step}, {elapsed:.0f} s"
    if "train" in last:
        summary += f", train -ELBO {last['train']['nelbo']:.3f}"
    if "val" in last:
        summary += f", validation -ELBO {last['val']['nelbo']:.3f} (epoch {last['val']['epoch']})"
    st.markdown(summary)
    if run.status.startswith("failed"):
        st.error(run.status)
    st.caption(f"checkpoint: {run.checkpoint_path}")
    images, warning = rendered(run, history)
    st.image(images[0][1])  # training curves, full width
    if warning:
        st.warning(warning)
    columns = st.columns(2)
    for i, (title, image) in enumerate(images[1:]):
        with columns[i % 2]:
            st.subheader(title)
            st.image(image)
    if state.get("polling") and not run.active:
        st.rerun()  # the run ended: refresh the buttons and stop polling


live_view()
