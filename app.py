"""vaelab dashboard: pick a model and a data set, train it in the background, watch it learn,
explore its latents.

Run with ``streamlit run app.py``. A thin front end: models come from ``vaelab.MODELS``,
data from ``vaelab.datasets.DATASETS`` (only those the model accepts,
:func:`vaelab.live.accepted_data`), the config is built like the CLI's, training is
``vaelab.train.fit`` in a :class:`vaelab.live.TrainingRun` process kept in the server-wide
:data:`vaelab.live.RUNS` registry. The worker owns the run's state: the buttons send it
requests, and the page always shows the run that is actually training (one at a time per
server), else the run named in the URL, so double clicks, bursts and reloads cannot race.
The page polls the run with ``st.fragment(run_every=...)``: training curves are Streamlit's
own (Vega-Lite) charts redrawn at every poll; latent diagnostics are computed in the
background and say at which step; model figures (matplotlib) are redrawn at most every few
seconds and only in their own view. The run history lists the runs folder's runs
(:func:`vaelab.live.scan_runs`), re-opens a finished one from its checkpoint
(:class:`vaelab.live.SavedRun`) and overlays several on one chart, named by the settings that
differ (:func:`vaelab.live.run_labels`).
"""

from __future__ import annotations

import dataclasses
import functools
import io
import math
import time
from pathlib import Path

import streamlit as st
import torch

from vaelab import MODELS, plots
from vaelab.audio import piano_roll_wav
from vaelab.config import data_spec, make_model, parse_sets
from vaelab.datasets import DATASETS, load_dataset
from vaelab.live import (
    PREFERRED_DATA,
    RUNS,
    SavedRun,
    accepted_data,
    builtin_dataset,
    chart_table,
    check_compatible,
    checkpoint_summary,
    curve_panels,
    dataset_needs_path,
    history_table,
    metrics_csv,
    observed_steps,
    overlay_metrics,
    overlay_panel,
    read_upload,
    resume_config,
    run_labels,
    sample_piano_roll,
    scan_runs,
    warm_up,
)
from vaelab.train import TrainConfig, load_model, seed_everything

POLL_SECONDS = 2.0  # how often the page looks at the run (and redraws the training curves)
FIGURE_SECONDS = 15.0  # model figures (latents, samples) at most this often while training
# Drawing takes a core that training may want: while a run trains, a model figure that took
# d seconds to draw waits at least d / DRAW_BUDGET seconds before it is drawn again.
DRAW_BUDGET = 0.05
DPI = 100
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
VIEWS = ("training curves", "latents and samples", "explore", "run history")
# One paragraph per model for a newcomer: what it is, its paper, the notebook that teaches it.
MODEL_CARDS = {
    "vae": "**Variational autoencoder.** An encoder q(z | x) maps an image to a Gaussian over "
           "a few latent numbers z, a decoder p(x | z) maps z back to pixel probabilities; "
           "training maximises the ELBO, log p(x) minus the gap KL(q || posterior). "
           "Kingma & Welling 2014 (arXiv:1312.6114). Taught in notebooks/01_vae_elbo.ipynb "
           "and 02_learnable_distributions.ipynb.",
    "ssm": "**Sequential VAE (deep state-space model).** A latent state z_t evolves by "
           "p(z_t | z_{t-1}, a_{t-1}) and emits x_t; an RNN guide infers the states from the "
           "whole sequence. On the linear system the exact log-likelihood is known (Kalman "
           "filter), so the gap ELBO vs log p(x) can be watched. Krishnan et al. 2015 "
           "(arXiv:1511.05121). Taught in notebooks/03_sequential_vae.ipynb.",
    "dmm": "**Deep Markov Model.** Nonlinear (gated) transitions and emissions of a latent "
           "Markov chain, a backward-RNN guide with a combiner; trained on polyphonic music "
           "(88 piano keys per step). Krishnan, Shalit & Sontag 2017 (arXiv:1609.09869). "
           "Taught in notebooks/04_deep_markov_model.ipynb.",
    "dmm_iaf": "**Deep Markov Model with an IAF guide.** The DMM whose guide distribution is "
               "made more flexible by inverse autoregressive flows; its KL has no closed form "
               "and is estimated by Monte Carlo. Kingma et al. 2016 (arXiv:1606.04934) on "
               "Krishnan et al. 2017. Taught in notebooks/04_deep_markov_model.ipynb and "
               "05_normalizing_flows.ipynb.",
    "realnvp": "**RealNVP normalizing flow.** An invertible map of a Gaussian, made of affine "
               "coupling layers, gives the exact density p(x | a) by the change of variables; "
               "no latent variables, no ELBO: training maximises log p(x | a) itself. Dinh "
               "et al. 2017 (arXiv:1605.08803). Taught in notebooks/05_normalizing_flows.ipynb.",
}

st.set_page_config(page_title="vaelab", layout="wide")
state = st.session_state
warm_up()  # the training processes' fork server imports torch while the sidebar is filled in
torch.set_num_threads(1)  # the page's own torch work (figures, diagnostics) takes one core


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
    """The run this page shows: the one training on this server (there is at most one), else
    the one named in the URL."""
    found = RUNS.active()
    run_id, run = found if found else (st.query_params.get("run"), None)
    run = run or RUNS.get(run_id)
    return (run_id, run) if run is not None else (None, None)


def device_label(name: str) -> str:
    if name != "cuda":
        return "CPU"
    props = torch.cuda.get_device_properties(0)
    return f"GPU: {props.name}, {props.total_memory / 2**30:.0f} GiB"


def has_widget(field: str, defaults: dict) -> bool:
    """True when config field ``field`` gets a sidebar widget for a model with these field
    ``defaults``: its own fields, the IAF ones only when its guide has IAFs by default."""
    if field in ("num_iafs", "iaf_dim") and not defaults.get("num_iafs"):
        return False
    return field in defaults


def sync_sidebar(settings: dict) -> None:
    """Set the sidebar's widgets to a run's settings (before the widgets exist)."""
    name = settings["model"]
    config_cls = MODELS[name][0]
    defaults, config = field_defaults(config_cls), settings["model_config"]
    state.model = name
    spec = settings["data"]
    if spec.get("name") in DATASETS:
        state[f"data_{name}"] = spec["name"]
        if "path" in spec:
            state[f"path_{spec['name']}"] = str(spec["path"])
    shown = {"x_dim", "a_dim"}
    for field, *_ in INT_FIELDS:
        if field in config and has_widget(field, defaults):
            state[f"{field}_{name}"] = int(config[field])
            shown.add(field)
    if "hidden_dims" in config:
        state[f"hidden_dims_{name}"] = int(config["hidden_dims"][0])
        if len(set(config["hidden_dims"])) == 1 and \
                len(config["hidden_dims"]) == len(defaults["hidden_dims"]):
            shown.add("hidden_dims")
    state[f"extra_{name}"] = "; ".join(f"{k}={v!r}" for k, v in config.items()
                                       if k not in shown and v != defaults.get(k))
    train = settings["train_config"]
    state[f"epochs_{name}"] = int(train["epochs"])
    state[f"bs_{name}"] = int(train["batch_size"])
    state[f"lr_{name}"] = float(train["lr"])
    state[f"anneal_{name}"] = float(train["anneal_epochs"])
    state.train_samples = int(train["train_samples"])
    state.seed = int(train["seed"])
    state.max_steps = int(train["max_steps"] or 0)
    if train["device"] in devices:
        state.device = train["device"]
    if train.get("out_dir"):
        state.out_root = str(Path(train["out_dir"]).parent)


run_id, run = attached_run()
if run_id is not None and st.query_params.get("run") != run_id:
    st.query_params["run"] = run_id  # a reload (or another session) finds it again
elif run_id is None and "run" in st.query_params:
    del st.query_params["run"]  # a stale id (e.g. the server restarted)
devices = ["cuda", "cpu"] if torch.cuda.is_available() else ["cpu"]
if run is not None and state.get("synced") != run_id:
    sync_sidebar(run.settings())  # a reloaded page, or a run resumed from a checkpoint
    state.synced = run_id


def widget(key: str, default):
    """Give widget ``key`` its default once; afterwards the session state holds its value
    (so a run's settings can be put into the sidebar, see :func:`sync_sidebar`)."""
    state.setdefault(key, default)
    return key


# ----------------------------------------------------------------------------- sidebar

with st.sidebar:
    st.header("Model and data")
    model_name = st.selectbox("model", list(MODELS), key=widget("model", "vae"))
    config_cls, model_cls = MODELS[model_name]
    model_defaults = field_defaults(config_cls)
    accepted = accepted_data(model_name)
    offered = [name for name, why in accepted.items() if why is None]
    refused = "; ".join(f"{name}: {why}" for name, why in accepted.items() if why)
    data_key = widget(f"data_{model_name}", PREFERRED_DATA.get(model_name, offered[0]))
    if state[data_key] not in offered:
        state[data_key] = offered[0]
    data_name = st.selectbox(
        "data set", offered, key=data_key,
        help=f"the data sets {model_name} can train on. Not offered: {refused}" if refused
        else f"every data set suits {model_name}")
    data_path = ""
    if dataset_needs_path(data_name):
        data_path = st.text_input("path to the data (file or folder)",
                                  key=widget(f"path_{data_name}", ""),
                                  help="mnist: the folder of the IDX files; polyphonic: a "
                                       ".pickle; arrays: an .npz with x [N, T, X] (and a)")

    overrides: dict = {}
    for field, label, low, high, step in INT_FIELDS:
        if has_widget(field, model_defaults):
            default = min(max(int(model_defaults[field]), low), high)
            overrides[field] = st.number_input(
                label, low, high, step=step, key=widget(f"{field}_{model_name}", default))
    if "hidden_dims" in model_defaults:  # same depth as the default, every layer this wide
        width = st.number_input("hidden size", 2, 2048, step=8, key=widget(
            f"hidden_dims_{model_name}", int(model_defaults["hidden_dims"][0])))
        overrides["hidden_dims"] = [width] * len(model_defaults["hidden_dims"])
    extra = st.text_input("other config fields (key=value; key=value)",
                          key=widget(f"extra_{model_name}", ""),
                          help=f"fields of {config_cls.__name__}: {', '.join(model_defaults)}")

    st.header("Training")
    tdef = {**field_defaults(TrainConfig), **getattr(model_cls, "train_defaults", {})}
    epochs = st.number_input("epochs", 1, 100000,
                             key=widget(f"epochs_{model_name}", int(tdef["epochs"])))
    batch_size = st.number_input("batch size", 1, 4096,
                                 key=widget(f"bs_{model_name}", int(tdef["batch_size"])))
    lr_key = widget(f"lr_{model_name}", float(tdef["lr"]))
    lr = st.select_slider("learning rate", sorted({*LEARNING_RATES, float(tdef["lr"]),
                                                   float(state[lr_key])}),
                          format_func=lambda v: f"{v:.0e}", key=lr_key)
    anneal, train_samples = float(tdef["anneal_epochs"]), int(tdef["train_samples"])
    if "z_dim" in model_defaults:  # a flow has no KL to anneal and no guide to sample
        anneal = st.number_input(
            "KL annealing epochs (0 = off)", 0.0, 10000.0, step=1.0,
            key=widget(f"anneal_{model_name}", float(tdef["anneal_epochs"])))
        train_samples = st.number_input(
            "guide samples per example in each step", 1, 64,
            key=widget("train_samples", int(tdef["train_samples"])),
            help="their ELBOs are averaged: less gradient noise (from a Monte Carlo KL, as "
                 "with IAF guides) for proportionally more work per step")
    seed = st.number_input("seed", 0, 2**31 - 1, key=widget("seed", int(tdef["seed"])))
    max_steps = st.number_input("max steps, in total (0 = no limit)", 0, 10**9,
                                key=widget("max_steps", 0))
    device = st.selectbox("device", devices, key=widget("device", devices[0]),
                          format_func=device_label)
    out_root = st.text_input("runs folder", key=widget("out_root", "runs"),
                             help="each run writes RUNS/<model>-<data>-<time>/checkpoint.pt")

    st.header("Checkpoint")
    resume_path = st.text_input("resume from a checkpoint file (optional)",
                                key=widget("resume", ""),
                                help="a checkpoint.pt; its model, data and settings are used")
    upload = st.file_uploader("or upload a checkpoint", type=["pt"], key="upload")
    if upload is None:
        state.pop("uploaded", None)
    elif state.get("uploaded", {}).get("file_id") != upload.file_id:
        try:  # read from a temporary folder that is removed at once
            state.uploaded = {"file_id": upload.file_id, "name": upload.name,
                              **read_upload(upload.name, upload.getvalue())}
        except ValueError as e:
            state.uploaded = {"file_id": upload.file_id, "error": str(e)}
    if "uploaded" in state:  # right under the uploader
        if "error" in state.uploaded:
            st.error(state.uploaded["error"])
        elif state.uploaded["remaining"]:
            st.warning(f"uploaded checkpoint: {state.uploaded['text']}; nothing to continue: "
                       f"{state.uploaded['remaining']}")
        else:
            st.success(f"uploaded checkpoint: {state.uploaded['text']}; press "
                       f"'Resume from checkpoint'")


# ----------------------------------------------------------------------------- actions


def resume_source(run) -> tuple[str | None, str]:
    """What 'Resume from checkpoint' continues, and why not when it cannot: an upload (a
    rejected one disables it), else the path box, else the checkpoint of the run on the page.
    Returns ``(source, help)``; ``source`` is ``"upload"`` or a path, None when unavailable."""
    if "uploaded" in state:
        uploaded = state.uploaded
        if "error" in uploaded:
            return None, "the uploaded file is not a vaelab checkpoint"
        if uploaded["remaining"]:
            return None, (f"the uploaded checkpoint has nothing to continue: "
                          f"{uploaded['remaining']}")
        return "upload", f"continue the uploaded {uploaded['text']} with its own settings"
    if resume_path:
        path = resume_path
    elif run is not None and run.checkpoint_path.is_file():
        path = str(run.checkpoint_path)
    else:
        return None, "no checkpoint yet: train, stop, then resume; or upload one"
    try:
        info = checkpoint_summary(path)
    except (FileNotFoundError, ValueError) as e:
        return None, str(e)
    if info["remaining"]:
        return None, f"{path}: nothing to continue, {info['remaining']}"
    return path, f"continue {info['text']} from {path} with its own settings"


def prepare(resume: str | None) -> tuple:
    """Model, data, TrainConfig, data spec and checkpoint path of a new run: from the
    widgets, or from a checkpoint (its model, data and settings)."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    if resume is None:
        spec = data_spec(data_name, data_path or None, {})
        train, val, _ = builtin_dataset(data_name) if not data_path else load_dataset(**spec)
        seed_everything(int(seed))  # before the model is built: the seed fixes its weights
        model = make_model(model_name, train, {**overrides, **parse_sets(
            [s.strip() for s in extra.split(";") if s.strip()])})
        check_compatible(model, train)
        out_dir = Path(out_root) / f"{model.name}-{spec['name']}-{stamp}"
        config = TrainConfig(**{
            **getattr(model, "train_defaults", {}), "epochs": int(epochs),
            "batch_size": int(batch_size), "lr": float(lr), "anneal_epochs": float(anneal),
            "train_samples": int(train_samples), "seed": int(seed), "device": device,
            "max_steps": int(max_steps) or None, "progress": False, "out_dir": str(out_dir)})
        return model, train, val, config, spec, None
    if resume == "upload":
        info = state.uploaded
        out_dir = Path(out_root) / f"{info['model']}-{info['data'].get('name', 'data')}-{stamp}"
        out_dir.mkdir(parents=True, exist_ok=True)
        resume = out_dir / "uploaded.pt"  # kept with the run it started
        resume.write_bytes(upload.getvalue())
    model, ckpt = load_model(resume)
    spec = dict(ckpt["data"])
    if not spec:
        raise ValueError("the checkpoint does not record its data set; resume it with "
                         "'python -m vaelab train --resume' and the data options")
    train, val, _ = load_dataset(**spec)
    check_compatible(model, train)
    out_dir = Path(resume).parent if Path(resume).name == "uploaded.pt" else \
        Path(out_root) / f"{model.name}-{spec['name']}-{stamp}"
    return model, train, val, resume_config(ckpt, out_dir), spec, resume


def start(resume: str | None) -> None:
    state.pop("error", None)
    try:
        model, train, val, config, spec, resume = prepare(resume)
        # a second press racing the first (double click) attaches to the run it started
        run_id, _, _ = RUNS.request(model, train, val, config, data_spec=spec, resume=resume)
    except (ValueError, FileNotFoundError, RuntimeError, ImportError, AttributeError,
            TypeError, KeyError) as e:
        state.error = f"{type(e).__name__}: {e}"
        return
    st.query_params["run"] = run_id
    state.pop("figures", None)


def on_pause() -> None:
    found = RUNS.active()  # the one training on this server, whatever the page last showed
    if found:
        found[1].pause()


def on_continue() -> None:
    found = RUNS.active()
    if found:
        found[1].resume()


def on_stop() -> None:
    found = RUNS.active()
    if found:
        found[1].stop()


def on_open(path: str) -> None:
    """Show the finished run of checkpoint ``path`` (read with weights_only=True)."""
    state.pop("error", None)
    if RUNS.active():
        state.error = "a run is training: the page shows it; stop it, then open another run"
        return
    try:
        run_id, _ = RUNS.open(path)
    except (ValueError, FileNotFoundError) as e:
        state.error = f"cannot open this run: {e}"
        return
    st.query_params["run"] = run_id
    state.view = VIEWS[0]
    for key in ("figures", "audio"):
        state.pop(key, None)


# ----------------------------------------------------------------------------- page

st.title("vaelab: variational latent-variable models")
st.markdown(MODEL_CARDS.get(model_name, ""))
active = run is not None and run.active
# while a run trains, Resume is disabled: no need to read its checkpoint at every rerun
source, source_help = (None, "a run is training") if active else resume_source(run)
b1, b2, b3, b4 = st.columns(4)
if b1.button("Train", disabled=active, type="primary", key="train") and not active:
    start(None)  # here, not on_click, so it reads this run's widget values
    st.rerun()
if active and run.status in ("paused", "pausing"):
    b2.button("Continue", on_click=on_continue, key="continue")
else:
    b2.button("Pause", on_click=on_pause, disabled=not active, key="pause")
b3.button("Stop", on_click=on_stop, disabled=not active, key="stop")
if b4.button("Resume from checkpoint", disabled=active or source is None, key="resume_run",
             help=source_help) and not active and source is not None:
    start(source)
    st.rerun()
if "error" in state:
    st.error(state.error)
view = st.radio("view", VIEWS, horizontal=True, key="view", label_visibility="collapsed")
state.polling = active


def png(fig) -> bytes:
    """PNG bytes of a figure."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI)
    return buffer.getvalue()


def svg(fig) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="svg")
    return buffer.getvalue()


def status_line(run) -> str:
    history = run.history
    last = {r["kind"]: r for r in history}
    progress = run.progress()
    where = "opened from its checkpoint" if isinstance(run, SavedRun) else \
        device_label(torch.device(run.config.device).type)
    text = (f"**{run.model_name}** on **{(run.data_spec or {}).get('name', '?')}** "
            f"({where}) — status: **{run.status}**, step {run.step} of {progress['planned']}")
    if progress["steps_per_second"]:
        text += f", {progress['steps_per_second']:.1f} steps/s"
    if progress["eta_seconds"] is not None:
        text += f", about {progress['eta_seconds'] / 60:.1f} min left"
    bound = "-ELBO" if run.has_latents else "-log p(x)"  # a flow's is exact
    if "train" in last:
        text += f", train {bound} {last['train']['nelbo']:.3f}"
    if "val" in last:
        text += f", validation {bound} {last['val']['nelbo']:.3f} (epoch {last['val']['epoch']})"
    if "exact_nll_val" in run.reference:
        text += f", exact -log p(x) of the true system {run.reference['exact_nll_val']:.3f}"
    return text


def show_curves(run) -> None:
    history, times = run.history, run.record_times
    latents = run.has_latents
    panels = curve_panels(history, flow=not latents, sequence=run.is_sequence,
                          reference=run.reference,
                          diagnostics=run.diagnostics if latents else None,
                          annealed=run.config.anneal_epochs > 0)
    log = st.toggle("log scale (symmetric log, for values of both signs)", key="log_scale")
    columns = st.columns(3)
    for i, panel in enumerate(panels):
        with columns[i % 3]:
            st.markdown(f"**{panel['title']}**")
            if panel["rows"]:
                st.vega_lite_chart(chart_table(panel["rows"]), plots.curve_spec(panel, log=log),
                                   width="stretch", key=f"curve_{i}")
            else:
                st.caption("no points yet")
            st.caption(panel["caption"] + (f" ({panel['unit']})" if panel["unit"] else ""))
    trained = [i for i, r in enumerate(history) if r["kind"] == "train"]
    if trained:
        newest = trained[-1]
        stamp = times[newest]
        when = "before this session" if math.isnan(stamp) else "at " + (  # NaN: saved
            time.strftime("%H:%M:%S", time.localtime(stamp)) + f".{int(stamp % 1 * 1000):03d}")
        st.caption(f"newest point: step {history[newest]['step']}, recorded {when}" + (
            f"; curves redrawn every {POLL_SECONDS:g} s while training" if run.active else ""))
    if "exact_nll_val" in run.reference:
        st.caption("dashed: the exact -log p(x) of the true linear-Gaussian system (Kalman "
                   "filter), the best any model can reach; the -ELBO is an upper bound on "
                   "the model's own -log p(x), so the gap shows both model and guide error")
    entry = run.latest_diagnostics() if latents else None
    if run.diagnostics_error:
        st.warning(f"latent diagnostics stopped: {run.diagnostics_error}")
    elif entry is not None:
        cached = state.get("usage_spec")
        if cached is None or cached[0] != (run.checkpoint_path, entry["step"]):
            cached = state.usage_spec = ((run.checkpoint_path, entry["step"]),
                                         plots.latent_usage_spec(entry))  # once per entry
        st.vega_lite_chart(spec=cached[1], width="stretch", key="latent_usage")
        st.caption(f"computed at step {entry['step']} (a pass took {entry['seconds']:.1f} s, "
                   f"done in the background at most every few seconds). Activity: how much "
                   f"a latent's posterior mean varies across the data; KL per dimension: "
                   f"nats that dimension carries")
    elif latents:
        st.caption("latent diagnostics: computed in the background after the first steps")


def show_figures(run, run_id: str) -> None:
    if run.view is None:  # a re-opened run whose data cannot be loaded
        st.warning(run.data_error)
        return
    old, now = state.get("figures"), time.monotonic()
    step = run.snapshot_step
    if old is None or old["run"] != run_id or (old["step"] != step and (
            not run.active or now - old["time"] >= max(FIGURE_SECONDS,
                                                       old["cost"] / DRAW_BUDGET))):
        try:
            figures = plots.model_figures(run.model, run.view.batch, run.view.info,
                                          labels=run.view.labels)
            images = [(title, png(fig), fig) for title, fig in figures.items()]
            warning = None
        except (ValueError, RuntimeError, TypeError, NotImplementedError) as e:
            images, warning = [], f"model figures unavailable: {type(e).__name__}: {e}"
        old = state.figures = {"run": run_id, "step": step, "time": now, "value": images,
                               "warning": warning, "cost": time.monotonic() - now}
    if old["warning"]:
        st.warning(old["warning"])
    st.caption(f"computed at step {old['step']}" + (
        f"; redrawn at most every {FIGURE_SECONDS:.0f} s while training" if run.active else ""))
    # one column: a figure is shown at about its own size, so its text stays readable
    for i, (title, image, fig) in enumerate(old["value"]):
        st.subheader(title)
        st.image(image)
        if not run.active:
            name = title.split(" (")[0].replace(" ", "_")
            c1, c2, _ = st.columns([1, 1, 6])
            c1.download_button("PNG", image, file_name=f"{name}.png", mime="image/png",
                               key=f"png_{i}")
            c2.download_button("SVG", functools.partial(svg, fig), file_name=f"{name}.svg",
                               mime="image/svg+xml", key=f"svg_{i}")


@st.fragment(run_every=POLL_SECONDS if active else None)
def live_view() -> None:
    run_id, run = attached_run()
    if run is None:
        if view != VIEWS[3]:
            st.info("Choose a model and a data set in the sidebar, then press Train.")
        return
    st.markdown(status_line(run))
    if run.status.startswith("failed"):
        st.error(run.status)
    st.caption(f"checkpoint: {run.checkpoint_path}")
    running = run.active
    if view == VIEWS[0]:
        show_curves(run)
    elif view == VIEWS[1] and run.history:
        show_figures(run, run_id)
    if state.get("polling") and not running:
        st.rerun()  # the run ended: refresh the buttons and stop polling


def explore_sequence(model, batch, info: dict) -> None:
    """A time slider over one validation sequence: its latent path with t marked, and the
    observation at t (the pendulum, the piano-roll frame, the observation plane)."""
    st.subheader("a validation sequence at time t: latent path and observation")
    c1, c2 = st.columns(2)
    key = widget("explore_sequence", 0)
    state[key] = min(state[key], len(batch) - 1)  # another run's view may hold fewer
    index = c1.slider("sequence (of the validation examples shown)", 0, len(batch) - 1,
                      key=key) if len(batch) > 1 else 0
    steps = observed_steps(batch, index)
    key = widget("explore_t", 0)
    state[key] = min(state[key], steps - 1)  # a shorter sequence than the last one
    t = c2.slider("time step t", 0, steps - 1, key=key) if steps > 1 else 0
    st.image(png(plots.sequence_explorer(model, batch, t, index=index, info=info)))
    st.caption("top: the posterior means E_q[z_t] of this sequence (one line per latent "
               "dimension, or one row each of a heat map when there are many), the red line "
               "at the chosen t; below: what was observed there, and the model's "
               "reconstruction E[x_t | z_t] from the latents")


def explore(run) -> None:
    """Interactive views of the run's latest snapshot (not polled: they change on input)."""
    if run.view is None:  # a re-opened run whose data cannot be loaded
        st.warning(run.data_error)
        return
    model, batch, info = run.model, run.view.batch, run.view.info
    if batch.x.dim() == 3:
        explore_sequence(model, batch, info)
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
            state.audio = sample_piano_roll(model, steps)  # [T, 88] notes on or off
        st.image(png(plots.piano_roll(state.audio, titles=["sample"])))
        st.audio(piano_roll_wav(state.audio), format="audio/wav")
        st.caption("a data sequence, for comparison")
        st.audio(piano_roll_wav(batch.x[0, :observed_steps(batch, 0)]), format="audio/wav")
    elif getattr(model, "flow", None) is not None and batch.a is not None:
        st.subheader("density p(x | a) for one context, samples on top")
        i = st.slider("context (example of the validation set)", 0, len(batch) - 1, 0,
                      key="flow_context")
        extent = float(batch.x.abs().max()) * 1.15
        st.image(png(plots.flow_density(model, batch.a[i:i + 1], extent=extent)))
    elif batch.x.dim() != 3:
        st.info("latent projections are in 'latents and samples'; nothing interactive for "
                "this model and data yet")


def show_history(run) -> None:
    """The runs of the runs folder: a summary of each, one to re-open, several to overlay."""
    training = [run.checkpoint_path] if run is not None and run.active else []
    entries = scan_runs(out_root, exclude=training)
    good = {e["name"]: e for e in entries if e["ok"]}
    st.subheader(f"runs in {out_root}")
    if not entries:
        st.info(f"no runs in {out_root} yet: each run you train is saved there (the sidebar's "
                f"'runs folder')")
        return
    if good:
        st.dataframe(history_table(list(good.values())), hide_index=True, width="stretch")
        st.caption("newest first; final: the last validation -ELBO (a flow's exact -log p(x)) "
                   "in the unit shown, else the last training step's; lower is better. "
                   "finished: reached its epochs; stopped: can be resumed")
    bad = [e for e in entries if not e["ok"]]
    if bad:
        st.warning("not readable as runs, skipped:\n" + "\n".join(
            f"- **{e['name']}**: {e['reason']}" for e in bad))
    if not good:
        return
    c1, c2 = st.columns([3, 1], vertical_alignment="bottom")
    chosen = c1.selectbox("open a run: its curves, model figures and exploration",
                          list(good), key="history_open")
    c2.button("Open", key="open_run", on_click=on_open, args=(good[chosen]["path"],),
              disabled=run is not None and run.active,
              help="stop the run that trains first" if run is not None and run.active
              else f"show {chosen} as it was saved (read-only; Resume continues it)")
    picked = st.multiselect("overlay runs on one chart (two or more)", list(good),
                            default=list(good)[:2], key="overlay_runs")
    if len(picked) < 2:
        st.caption("pick two or more runs to compare their curves")
        return
    runs = [good[name] for name in picked]
    labels = run_labels(runs)
    metrics = overlay_metrics(runs)
    key = st.selectbox("curve", list(metrics), format_func=metrics.get, key="overlay_metric")
    log = st.toggle("log scale (symmetric log)", key="overlay_log")
    panel = overlay_panel(runs, key, labels)
    st.markdown(f"**{panel['title']}**")
    st.vega_lite_chart(chart_table(panel["rows"]), plots.overlay_spec(panel, log=log),
                       width="stretch",
                       key="overlay_chart")
    st.caption(panel["caption"] + ". Runs: " + "; ".join(
        f"**{labels[name]}** = {name}" for name in picked))


live_view()
if run is not None and not active:
    d1, d2 = st.columns(2)
    if run.checkpoint_path.is_file():
        # read, and written as CSV, only when clicked
        d1.download_button("Download checkpoint", run.checkpoint_path.read_bytes,
                           file_name=f"{run.model_name}-step{run.step}.pt",
                           mime="application/octet-stream", key="download")
    if run.history:
        d2.download_button("Download metrics (CSV)", functools.partial(metrics_csv, run.history),
                           file_name=f"{run.model_name}-metrics.csv", mime="text/csv",
                           key="download_csv")
if view == VIEWS[2] and run is not None and run.history:
    explore(run)
elif view == VIEWS[3]:
    show_history(run)
