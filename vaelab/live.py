"""Training in a separate process, watched and steered from the dashboard.

:class:`TrainingRun` calls :func:`vaelab.train.fit` in a daemon process (forkserver, else
spawn), so the page's script reruns and figure drawing, which hold the dashboard's GIL, never
hold up training. It talks to the process only through fit's ``callback``, which runs there:
metrics records come back over a queue in batches, a CPU copy of the parameters at most once
a second (and on pause) for plots, ``pause()`` makes the callback wait on an event and
``stop()`` makes it return ``False`` (fit then saves a checkpoint and ends). A listener
thread in the dashboard keeps the history and status. No Streamlit here, so it can be tested
on its own.

Also here, for the page: a :class:`Registry` of runs shared by every browser session of the
server process (one training at a time; a reloaded page re-attaches by run id), the fixed
validation view the figures use, and latent diagnostics (per-dimension KL, active units,
exact log-likelihood of a known linear-Gaussian system).
"""

from __future__ import annotations

import atexit
import contextlib
import copy
import dataclasses
import functools
import inspect
import io
import math
import multiprocessing
import os
import pickle
import queue
import re
import signal
import sys
import tempfile
import threading
import time
import types
import uuid
import weakref
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor, nn

from vaelab import MODELS
from vaelab.config import make_model
from vaelab.data import Batch, Data
from vaelab.datasets import DATASETS, load_dataset
from vaelab.diagnostics import (  # noqa: F401  (the dashboard's names for them)
    ACTIVE_THRESHOLD,
    active_units,
    diagnose,
    has_latents,
    kl_per_dim,
    latent_activity,
    observed,
    reference_metrics,
)
from vaelab.train import TrainConfig, TrainingDiverged, fit, load_checkpoint, load_model


def dataset_needs_path(name: str) -> bool:
    """True when loader ``DATASETS[name]`` takes a ``path`` (a file or folder on disk)."""
    if name not in DATASETS:
        raise ValueError(f"unknown data set {name!r}; choose one of {sorted(DATASETS)}")
    return "path" in inspect.signature(DATASETS[name]).parameters


@torch.no_grad()
def check_compatible(model: nn.Module, data: Data, n: int = 2) -> None:
    """Raise ``ValueError`` with the model's own message if ``model.elbo`` rejects a batch of
    ``data`` (e.g. a static model on sequences), before any training process is started."""
    batch = data.batch(torch.arange(min(n, len(data))))
    device = next(model.parameters()).device
    try:
        terms = model.elbo(batch.to(device))
    except (ValueError, RuntimeError, TypeError) as e:
        raise ValueError(f"{getattr(model, 'name', type(model).__name__)} cannot train on "
                         f"{data.name}: {e}") from None
    if terms.log_likelihood.shape != (len(batch),):
        raise ValueError(f"elbo must return [B] terms, got {list(terms.log_likelihood.shape)}")


# The data set a model is shown with first: the one its notebook teaches it on.
PREFERRED_DATA = {"vae": "digits", "ssm": "linear", "dmm": "jsb", "dmm_iaf": "jsb",
                  "realnvp": "moons"}


@functools.cache
def builtin_dataset(name: str) -> tuple[Data, Data, Data]:
    """``load_dataset(name)`` of a built-in data set (no path), loaded once per process."""
    if dataset_needs_path(name):
        raise ValueError(f"data set {name!r} needs a path; load it with load_dataset")
    return load_dataset(name)


def incompatibility(model_name: str, data: Data) -> str | None:
    """Why model ``model_name`` (default config, sized for ``data``) cannot train on ``data``,
    in a newcomer's words, or None when it can. Decided by the model itself
    (:func:`check_compatible` on two examples), then explained from the data's shape."""
    try:
        check_compatible(make_model(model_name, data, {}), data)
    except ValueError as e:
        text = str(e)
    else:
        return None
    what = data.name.split("-")[0]
    if "support" in text and "Bernoulli" in text:
        return f"{model_name}'s Bernoulli likelihood needs 0/1 data; {what} is real-valued"
    if "time axis" in text and not data.is_sequence:
        return (f"{model_name} models sequences x [N, T, X]; {what} holds single vectors "
                f"x [N, X]: pick vae or realnvp")
    if data.is_sequence and "must be [B," in text:
        return (f"{model_name} models single vectors x [N, X]; {what} holds sequences "
                f"x [N, T, X]: pick a sequence model (ssm, dmm, dmm_iaf)")
    return f"{model_name} cannot train on {what}"


@functools.cache
def _accepted(model_name: str) -> tuple[tuple[str, str | None], ...]:
    return tuple((name, None if dataset_needs_path(name) else
                  incompatibility(model_name, builtin_dataset(name)[0])) for name in DATASETS)


def accepted_data(model_name: str) -> dict[str, str | None]:
    """Every data set of ``DATASETS`` -> None if model ``model_name`` accepts it, else the
    reason it does not. Built-in data sets are checked once per process; those that need a
    path are listed as accepted (their data are checked when training starts)."""
    if model_name not in MODELS:
        raise ValueError(f"unknown model {model_name!r}; choose one of {sorted(MODELS)}")
    return dict(_accepted(model_name))


# ----------------------------------------------------------------------------- checkpoints


def read_upload(name: str, content: bytes) -> dict:
    """Check the bytes of an uploaded checkpoint; returns its :func:`summary`.

    They are read like any checkpoint (``weights_only=True``, from a temporary folder that
    is removed at once). Raises ``ValueError`` with a short message for the page, without
    torch's own text or any server path.
    """
    with tempfile.TemporaryDirectory(prefix="vaelab-upload-") as folder:
        path = Path(folder) / "checkpoint.pt"
        path.write_bytes(content)
        try:
            ckpt = load_checkpoint(path)
        except (ValueError, FileNotFoundError):
            ckpt = None
    if ckpt is None or not isinstance(ckpt.get("step"), int):
        raise ValueError(f"{name} is not a vaelab checkpoint: only a checkpoint.pt written by "
                         f"vaelab training (the dashboard or 'python -m vaelab train') can be "
                         f"uploaded")
    if ckpt.get("model") not in MODELS:
        raise ValueError(f"{name} holds a model vaelab does not know ({ckpt.get('model')!r}); "
                         f"models are {', '.join(MODELS)}")
    return summary(ckpt)


def summary(ckpt: dict) -> dict:
    """``{"model", "step", "epoch", "data", "text", "remaining"}`` of a checkpoint dict:
    ``text`` is ``"<model> at step N"``, ``remaining`` is :func:`remaining`."""
    return {"model": ckpt["model"], "step": ckpt["step"], "epoch": ckpt["epoch"],
            "data": dict(ckpt.get("data") or {}), "remaining": remaining(ckpt),
            "text": f"{ckpt['model']} at step {ckpt['step']}"}


@functools.lru_cache(maxsize=64)
def _summary(path: str, mtime_ns: int) -> dict:
    return summary(load_checkpoint(path))


def checkpoint_summary(path: str | Path) -> dict:
    """:func:`summary` of the checkpoint file at ``path``, read again only when the file
    changes. Raises ``FileNotFoundError`` / ``ValueError`` as :func:`load_checkpoint`."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} not found; give the path of a "
                                f"checkpoint.pt")
    return dict(_summary(str(path.resolve()), path.stat().st_mtime_ns))


def resume_config(ckpt: dict, out_dir: str | Path, device: str | None = None) -> TrainConfig:
    """The :class:`TrainConfig` that continues checkpoint ``ckpt`` with its own settings
    (epochs, max steps, learning rate, ...), writing to ``out_dir``; ``device`` (default:
    the checkpoint's, the CPU where CUDA is missing) and no progress bar."""
    values = dict(ckpt["train_config"])
    if device is None:
        device = values.get("device", "cpu")
        if str(device).startswith("cuda") and not torch.cuda.is_available():
            device = "cpu"
    return TrainConfig(**{**values, "device": device, "progress": False, "out_dir": str(out_dir)})


def remaining(ckpt: dict) -> str | None:
    """None when checkpoint ``ckpt`` has training left to do, else why not (it reached its
    epochs or max steps)."""
    config = ckpt["train_config"]
    if config.get("max_steps") is not None and ckpt["step"] >= config["max_steps"]:
        return f"it reached its max steps ({config['max_steps']})"
    if ckpt["epoch"] >= config["epochs"]:
        return f"it reached its {config['epochs']} epochs"
    return None


def saved_run(ckpt: dict, folder: str | Path) -> tuple[dict, str]:
    """A checkpoint's run as the page shows it: its settings (as
    :meth:`TrainingRun.settings`, ``out_dir`` the checkpoint's ``folder``) and its status,
    ``"finished"`` (it reached its epochs or max steps) or ``"stopped"`` (training is left)."""
    settings = {"model": ckpt["model"], "model_config": dict(ckpt["config"]),
                "train_config": {**ckpt["train_config"], "out_dir": str(folder)},
                "data": dict(ckpt["data"] or {})}
    return settings, "stopped" if remaining(ckpt) is None else "finished"


def planned_steps(config: TrainConfig, train: Data) -> int:
    """The step a run of ``config`` on ``train`` ends at if nothing stops it: its epochs'
    steps, or max_steps."""
    total = config.epochs * train.num_batches(config.batch_size)
    return min(total, config.max_steps) if config.max_steps else total


# ----------------------------------------------------------------------------- diagnostics


@dataclasses.dataclass
class View:
    """A fixed set of validation examples for the figures: ``batch`` (fixed binarisation),
    ``info`` (``Data.info`` without the labels) and ``labels [B]`` when the data has them."""

    batch: Batch
    info: dict
    labels: Tensor | None = None


def make_view(train: Data, val: Data | None, size: int | None = None) -> View:
    """The first ``size`` examples of ``val`` (of ``train`` when there is no validation set):
    by default 8 sequences or 256 static examples."""
    data = val if val is not None and len(val) else train
    size = size or (8 if data.is_sequence else 256)
    index = torch.arange(min(len(data), size))
    info = dict(data.info or {})
    labels = info.pop("labels", None)
    return View(data.batch(index, torch.Generator().manual_seed(0)), info,
                None if labels is None else labels[index])


# ----------------------------------------------------------------------------- training process

DIAGNOSE_BUDGET = 0.05  # background diagnostics: at most this share of the dashboard's time
DIAGNOSE_MIN_SECONDS = 2.0  # and at least this long between two passes
DIAGNOSE_FIRST_SECONDS = 0.5  # the first pass waits this long for a snapshot
FLUSH_SECONDS = 0.1  # the child sends its metrics records in batches at most this often
PARENT_CHECK_SECONDS = 0.5  # how often the child looks whether the dashboard is still alive


def _context() -> multiprocessing.context.BaseContext:
    """forkserver where the platform has it: every child is forked from one small server that
    has imported vaelab (and torch) once, so a start costs a fork, not an interpreter start;
    never plain fork, as Streamlit and torch hold threads in the parent. spawn elsewhere."""
    if "forkserver" in multiprocessing.get_all_start_methods():
        context = multiprocessing.get_context("forkserver")
        # torch._dynamo is imported by the first optimiser step (over a second): do it once
        context.set_forkserver_preload(["vaelab", "vaelab.live", "torch._dynamo"])
        return context
    return multiprocessing.get_context("spawn")


_CONTEXT = _context()


@contextlib.contextmanager
def _bare_main():
    """Hide ``__main__`` while a process starts: multiprocessing would otherwise run the
    parent's main script again in the child (under Streamlit that is app.py itself, and a
    script without an ``if __name__ == "__main__"`` guard would start training again). The
    child needs only vaelab, which the fork server has imported."""
    main = sys.modules["__main__"]
    sys.modules["__main__"] = types.ModuleType("__main__")
    try:
        yield
    finally:
        sys.modules["__main__"] = main


def warm_up() -> None:
    """Start the fork server now, in the background (it imports vaelab and torch once, a few
    seconds), so that the first training starts at once; cheap when it already runs."""
    if _CONTEXT.get_start_method() == "forkserver":
        from multiprocessing import forkserver

        forkserver.ensure_running()


def _state_bytes(model: nn.Module) -> bytes:
    """The parameters of ``model`` as ``torch.save`` bytes of a CPU state dict (readable with
    ``weights_only=True``; plain bytes cross the process boundary without shared memory)."""
    buffer = io.BytesIO()
    torch.save({k: v.detach().to("cpu") for k, v in model.state_dict().items()}, buffer)
    return buffer.getvalue()


class _Reporter:
    """fit's callback in the training process: batches records onto ``queue``, sends a
    parameter snapshot at most every ``snapshot_every`` seconds (and on val/end records and
    pauses), sits in ``go.wait`` while paused, and returns False once ``stop`` is set or the
    dashboard process has died (fit then saves a checkpoint and ends)."""

    def __init__(self, model: nn.Module, queue, go, stop, snapshot_every: float) -> None:
        self.model, self.queue, self.go, self.stop = model, queue, go, stop
        self.snapshot_every = snapshot_every
        self.pending: list[dict] = []
        self.times: list[float] = []  # wall-clock time each pending record was made
        self.last_flush = self.last_check = time.monotonic()
        self.last_snapshot = -float("inf")
        self.at_step: int | None = None  # fit sets it: the parameters' step at each call

    def flush(self) -> None:
        if self.pending:
            # never blocks: a feeder thread writes
            self.queue.put(("records", self.pending, self.times))
            self.pending, self.times = [], []
        self.last_flush = time.monotonic()

    def parent_alive(self) -> bool:
        parent = multiprocessing.parent_process()
        return parent is None or parent.is_alive()

    def __call__(self, record: dict) -> bool:
        # Runs between optimiser steps, so the parameters are consistent.
        now = time.monotonic()
        self.pending.append(dict(record))
        self.times.append(time.time())
        snapshot = record["kind"] != "train" or now - self.last_snapshot >= self.snapshot_every
        if snapshot or now - self.last_flush >= FLUSH_SECONDS:
            self.flush()
        if snapshot:
            self.queue.put(("state", _state_bytes(self.model), self.at_step or record["step"]))
            self.last_snapshot = now
        if now - self.last_check >= PARENT_CHECK_SECONDS:
            self.last_check = now
            if not self.parent_alive():
                return False  # the dashboard was killed: save a checkpoint and end
        if not self.go.is_set():
            self.flush()
            # plots of a paused run
            self.queue.put(("waiting", True, _state_bytes(self.model),
                            self.at_step or record["step"]))
            while not self.go.wait(PARENT_CHECK_SECONDS):
                if not self.parent_alive():
                    return False
            self.queue.put(("waiting", False, None, None))
        return not self.stop.is_set()


def _train_in_child(payload: bytes, queue, go, stop, received, snapshot_every: float,
                    threads: int | None) -> None:
    """Entry point of the training process: unpickle model, data and config, run ``fit``
    with a :class:`_Reporter`, and end with ``("done", status, error, final state bytes)``,
    waiting until the dashboard sets ``received`` (or has died)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the dashboard's: it stops us
    queue.put(("started", os.getpid()))  # the worker, not the page, says it runs
    if threads is not None:
        torch.set_num_threads(threads)
    model = None
    reporter = _Reporter(model, queue, go, stop, snapshot_every)
    error: BaseException | None = None
    try:
        model, train, val, config, data_spec, resume = pickle.loads(payload)
        reporter.model = model
        history = fit(model, train, val, config, callback=reporter, resume=resume,
                      data_spec=data_spec)
        end = history[-1] if history else {}
        final = "stopped" if end.get("stopped") else "finished"
    except TrainingDiverged as e:
        error, final = e, f"failed: {e}"
    except Exception as e:  # noqa: BLE001 - reported to the page instead of lost
        error, final = e, f"failed: {type(e).__name__}: {e}"
    reporter.flush()
    try:
        pickle.dumps(error)
    except Exception:  # noqa: BLE001 - an exception that cannot cross: send its text
        error = RuntimeError(str(error))
    try:
        state = None if model is None else _state_bytes(model)
    except Exception:  # noqa: BLE001 - a model broken by the failure: keep the last snapshot
        state = None
    queue.put(("done", final, error, state))
    # Wait for the dashboard to take it all; a dead one never will, and then the queue's
    # feeder thread, stuck on a full pipe, must not keep the process alive.
    while not received.wait(PARENT_CHECK_SECONDS):
        if not reporter.parent_alive():
            queue.cancel_join_thread()
            break
    queue.close()


class TrainingRun:
    """One training run of ``fit`` in a separate daemon process.

    The page's script reruns and figure drawing hold the dashboard's GIL; in a process of its
    own, training never waits for them. The two sides talk through a queue (records in
    batches, parameter snapshots as bytes, the final status) and two events (pause, stop);
    a listener thread in the dashboard keeps :attr:`history` and :attr:`status` up to date.

    Parameters
    ----------
    model, train, val, config
        As for :func:`vaelab.train.fit`; they are pickled into the training process, and
        ``model`` receives the final parameters when the run ends. ``config.out_dir`` is the
        run folder holding ``checkpoint.pt``; when it is None a fresh temporary folder is used.
    data_spec : dict, optional
        Stored in the checkpoint so the data can be reloaded.
    resume : path, optional
        A checkpoint to continue from (passed to ``fit``).
    snapshot_every : float
        Seconds between parameter copies for :attr:`model` while training.
    threads : int, optional
        ``torch.set_num_threads`` in the training process; None keeps torch's default.

    ``status`` is ``"not started"``, ``"starting"`` (the process is on its way),
    ``"running"``, ``"pausing"`` (asked to, not there yet), ``"paused"``, ``"stopping"``,
    ``"stopped"``, ``"finished"`` or ``"failed: <message>"`` (also when the training process
    dies, e.g. killed). The worker owns it: :meth:`pause`, :meth:`resume` and :meth:`stop`
    are requests (idempotent, never racing), and ``"running"`` / ``"paused"`` / the final
    status are what the training process and its listener report.

    While the run trains, a thread of this process computes the latent diagnostics
    (:meth:`diagnose`) of the latest snapshot now and then, taking at most
    ``DIAGNOSE_BUDGET`` of the time, so that the page only reads them.
    """

    def __init__(self, model: nn.Module, train: Data, val: Data | None, config: TrainConfig,
                 data_spec: dict | None = None, resume: str | Path | None = None,
                 snapshot_every: float = 1.0, threads: int | None = None) -> None:
        out_dir = config.out_dir or tempfile.mkdtemp(prefix="vaelab-run-")
        self.config = dataclasses.replace(config, out_dir=str(out_dir))
        self.model_name = getattr(model, "name", type(model).__name__)
        self.data_spec = data_spec
        self.resume_from = resume
        self.train, self.val = train, val
        self.snapshot_every = snapshot_every
        self.threads = threads
        self._model = model
        self._template = copy.deepcopy(model).to("cpu")  # CPU twin that snapshots load into
        self.has_latents = has_latents(model)  # a flow has none: other panels, no diagnostics
        self.view = make_view(train, val)  # what the page's figures show
        self.reference = reference_metrics(train, val)
        self.diagnostics: list[dict] = []  # one per diagnose() on a new step
        self.diagnostics_error: str | None = None
        self._lock = threading.Lock()
        self._diagnose_lock = threading.Lock()
        self._times: list[float] = []  # wall-clock time each record was made in the worker
        self._snapshot_step = 0  # the step of the parameters in self._state
        # a resumed run shows its whole history, as fit keeps it in the checkpoint
        self._records: list[dict] = [] if resume is None else list(
            load_checkpoint(resume)["history"])
        self._resumed = len(self._records)  # records from the checkpoint, not timed here
        self._state: bytes | None = None  # latest snapshot from the training process
        self._decoded: tuple[bytes, dict] | None = None  # (bytes, state dict) cache
        self._go = _CONTEXT.Event()  # set = run, clear = paused
        self._go.set()
        self._stop = _CONTEXT.Event()
        self._queue = _CONTEXT.Queue()
        self._received = _CONTEXT.Event()  # the listener has the child's last message
        self._waiting = threading.Event()  # set while the child sits paused in the callback
        self._process: multiprocessing.process.BaseProcess | None = None
        self._listener: threading.Thread | None = None
        self._diagnoser: threading.Thread | None = None
        self._ended = threading.Event()
        self._phase = "not started"  # "starting", then "running" once the worker says so
        self._final: str | None = None  # the worker's last word
        self.error: BaseException | None = None
        self.started_at: float | None = None
        self.ended_at: float | None = None

    # ------------------------------------------------------------------ control

    def start(self) -> TrainingRun:
        """Start the training process (and the thread listening to it); a run starts once."""
        with self._lock:
            if self._process is not None:
                raise RuntimeError("this TrainingRun was already started; make a new one")
            try:
                payload = pickle.dumps((self._model, self.train, self.val, self.config,
                                        self.data_spec, self.resume_from))
            except (pickle.PicklingError, TypeError, AttributeError) as e:
                raise ValueError(f"cannot send the model and data to the training process "
                                 f"({e}); use a model from vaelab.MODELS") from None
            self._process = _CONTEXT.Process(
                target=_train_in_child, name=f"vaelab-{self.model_name}", daemon=True,
                args=(payload, self._queue, self._go, self._stop, self._received,
                      self.snapshot_every, self.threads))
            self._phase = "starting"
            self.started_at = time.time()
            with _bare_main():
                self._process.start()
            self._listener = threading.Thread(target=self._listen, daemon=True,
                                              name=f"vaelab-{self.model_name}-listener")
            self._listener.start()
            if self.has_latents:
                self._diagnoser = threading.Thread(target=self._diagnose_loop, daemon=True,
                                                   name=f"vaelab-{self.model_name}-diagnose")
                self._diagnoser.start()
        _STARTED.add(self)
        return self

    def pause(self) -> None:
        """Ask training to hold at the next metrics record (the step in progress completes);
        the status is ``"pausing"`` until the worker sits paused. A no-op once stopping or
        ended, and when already paused."""
        with self._lock:
            if self._final is None and not self._stop.is_set():
                self._go.clear()

    def resume(self) -> None:
        """Continue a paused (or pausing) run; a no-op otherwise."""
        with self._lock:
            self._go.set()

    def stop(self) -> None:
        """Ask fit to stop at the next record; it writes a checkpoint first. Non-blocking,
        idempotent, and honoured also before the worker's first step."""
        with self._lock:
            self._stop.set()
            self._go.set()

    def join(self, timeout: float | None = None) -> bool:
        """Wait for the run to end (process gone, every record received, last diagnostics
        computed); True if it has."""
        end = None if timeout is None else time.monotonic() + timeout
        for thread in (self._listener, self._diagnoser):
            if thread is not None:
                thread.join(None if end is None else max(0.0, end - time.monotonic()))
        return not self.active

    def wait_paused(self, timeout: float | None = None) -> bool:
        """Wait until the training process actually sits paused; True if it does."""
        return self._waiting.wait(timeout)

    # ------------------------------------------------------------------ state

    @property
    def status(self) -> str:
        with self._lock:
            if self._final is not None:
                return self._final
            if self._phase == "not started":
                return self._phase
            if self._stop.is_set():
                return "stopping"
            if not self._go.is_set():
                return "paused" if self._waiting.is_set() else "pausing"
            return self._phase

    @property
    def record_times(self) -> list[float]:
        """Wall-clock time (``time.time()``) each record of :attr:`history` was made in the
        worker; NaN for the records a resumed run took over from its checkpoint."""
        with self._lock:
            return [math.nan] * self._resumed + list(self._times)

    @property
    def is_sequence(self) -> bool:
        """True when the run trains on sequences (units: nats per observed step)."""
        return self.train.is_sequence

    @property
    def snapshot_step(self) -> int:
        """The step of the parameters that :attr:`model` holds."""
        with self._lock:
            return self._snapshot_step

    def settings(self) -> dict:
        """``{"model": name, "model_config": {...}, "train_config": {...}, "data": spec}``:
        what this run was started with, for a page to show (plain values)."""
        return {"model": self.model_name,
                "model_config": dataclasses.asdict(self._template.config),
                "train_config": dataclasses.asdict(self.config),
                "data": dict(self.data_spec or {})}

    def planned_steps(self) -> int:
        """The step this run ends at if nothing stops it: its epochs' steps, or max_steps."""
        return planned_steps(self.config, self.train)

    def progress(self, window: int = 50) -> dict:
        """``{"step", "planned", "steps_per_second", "eta_seconds"}``: the speed over the
        last ``window`` train records (the trainer's own clock, validation included) and
        the time left at that speed (None while unknown or once ended)."""
        history = self.history
        seconds = [r["seconds"] for r in history[self._resumed:] if r["kind"] == "train"]
        seconds = seconds[-window:]
        rate = len(seconds) / sum(seconds) if seconds and sum(seconds) > 0 else None
        step, planned = self.step, self.planned_steps()
        eta = (planned - step) / rate if rate and self.active else None
        return {"step": step, "planned": planned, "steps_per_second": rate,
                "eta_seconds": eta}

    @property
    def active(self) -> bool:
        """True until the run has ended and its last message is in (running, paused or
        stopping)."""
        return self._listener is not None and self._listener.is_alive()

    @property
    def pid(self) -> int | None:
        """The training process's id once started."""
        return None if self._process is None else self._process.pid

    @property
    def history(self) -> list[dict]:
        """A copy of the metrics records received so far."""
        with self._lock:
            return list(self._records)

    @property
    def step(self) -> int:
        with self._lock:
            return self._records[-1]["step"] if self._records else 0

    @property
    def checkpoint_path(self) -> Path:
        """Where fit writes the checkpoint (it exists after the first epoch or a stop)."""
        return Path(self.config.out_dir) / "checkpoint.pt"

    @property
    def model(self) -> nn.Module:
        """A CPU copy of the model in eval mode, with the parameters of the latest snapshot
        (taken between steps, at most every ``snapshot_every`` s), or the final parameters
        once the run has ended."""
        return self._snapshot()[0]

    def _snapshot(self) -> tuple[nn.Module, int]:
        with self._lock:
            data, decoded, step = self._state, self._decoded, self._snapshot_step
        model = copy.deepcopy(self._template)
        if data is not None:
            if decoded is None or decoded[0] is not data:
                decoded = (data, torch.load(io.BytesIO(data), weights_only=True))
                with self._lock:
                    self._decoded = decoded
            model.load_state_dict(decoded[1])
        return model.eval(), step

    def diagnose(self) -> dict:
        """Latent diagnostics (:func:`diagnose`) of the latest snapshot on :attr:`view`,
        appended to :attr:`diagnostics` with the snapshot's step (and ``"seconds"``, the
        time it took), once per snapshot step; in the dashboard's process, so training
        never waits for it. Returns the latest entry."""
        with self._diagnose_lock:
            model, step = self._snapshot()
            if self.diagnostics and self.diagnostics[-1]["step"] == step:
                return self.diagnostics[-1]
            start = time.monotonic()
            entry = {"step": step, **diagnose(model, self.view.batch)}
            entry["seconds"] = time.monotonic() - start
            self.diagnostics.append(entry)
            return entry

    def latest_diagnostics(self) -> dict | None:
        """The newest :attr:`diagnostics` entry (with its ``"step"``), None before the first."""
        return self.diagnostics[-1] if self.diagnostics else None

    def _diagnose_loop(self) -> None:
        # A thread of the dashboard's process: diagnostics of new snapshots, at most
        # DIAGNOSE_BUDGET of the time (a pass that took d s waits d / budget - d s), and once
        # more on the final parameters.
        next_at = time.monotonic() + DIAGNOSE_FIRST_SECONDS
        while True:
            ended = self._ended.wait(0.2)
            if not ended and time.monotonic() < next_at:
                continue
            if self.snapshot_step > 0 and (
                    not self.diagnostics or self.diagnostics[-1]["step"] != self.snapshot_step):
                try:
                    cost = self.diagnose()["seconds"]
                except Exception as e:  # noqa: BLE001 - shown on the page, training goes on
                    self.diagnostics_error = f"{type(e).__name__}: {e}"
                    return
                next_at = time.monotonic() + max(DIAGNOSE_MIN_SECONDS,
                                                 cost / DIAGNOSE_BUDGET - cost)
            if ended:
                return

    # ------------------------------------------------------------------ listener

    def _listen(self) -> None:
        # A thread of the dashboard's process: receives what the child sends until "done",
        # or notices that the child has died without saying so.
        process, final, error, state = self._process, None, None, None
        while final is None:
            try:
                message = self._queue.get(timeout=0.25)
            except queue.Empty:
                if process.is_alive():
                    continue
                try:  # gone: take what it wrote before it ended
                    message = self._queue.get(timeout=1.0)
                except queue.Empty:
                    break
            kind = message[0]
            if kind == "started":
                with self._lock:
                    self._phase = "running"
            elif kind == "records":
                with self._lock:
                    self._records.extend(message[1])
                    self._times.extend(message[2])
            elif kind == "state":
                with self._lock:
                    self._state, self._snapshot_step = message[1], message[2]
            elif kind == "waiting":
                if message[1]:
                    with self._lock:
                        self._state, self._snapshot_step = message[2], message[3]
                    self._waiting.set()
                else:
                    self._waiting.clear()
            elif kind == "done":
                final, error, state = message[1:]
                self._received.set()
        process.join(None if final is not None else 5.0)
        if final is None:
            code = process.exitcode
            how = f"killed by signal {-code}" if code is not None and code < 0 else \
                f"exit code {code}"
            final = f"failed: the training process ended unexpectedly ({how})"
            error = RuntimeError(final[len("failed: "):])
        if state is not None:
            with torch.no_grad():  # the model passed in ends trained, as with fit itself
                self._model.load_state_dict(torch.load(io.BytesIO(state), weights_only=True))
        with self._lock:
            self._final = final
            self.error = error
            if state is not None:
                self._state = state
                self._snapshot_step = self._records[-1]["step"] if self._records else 0
            self.ended_at = time.time()
        self._waiting.clear()
        self._ended.set()
        self._queue.close()


_STARTED: weakref.WeakSet[TrainingRun] = weakref.WeakSet()


@atexit.register
def _stop_all(timeout: float = 10.0) -> None:
    """On the dashboard's exit, stop every run so it saves a checkpoint; the training
    processes are daemons, so multiprocessing ends any that are still there afterwards."""
    runs = [run for run in list(_STARTED) if run.active]
    for run in runs:
        run.stop()
    end = time.monotonic() + timeout
    for run in runs:
        run.join(max(0.0, end - time.monotonic()))


class Registry:
    """The runs of one server process, by id: every browser session sees the same ones, a
    page stores its run's id (in the URL) and re-attaches to it after a reload, and
    :meth:`start` refuses a second run while one is active. Keeps the ``keep`` latest."""

    def __init__(self, keep: int = 8) -> None:
        self.keep = keep
        self._runs: OrderedDict[str, TrainingRun] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, run_id: str | None) -> TrainingRun | SavedRun | None:
        with self._lock:
            return self._runs.get(run_id) if run_id else None

    def active(self) -> tuple[str, TrainingRun] | None:
        """The id and run still training, paused or stopping, if any."""
        with self._lock:
            return next(((k, r) for k, r in self._runs.items() if r.active), None)

    def start(self, *args, **kwargs) -> tuple[str, TrainingRun]:
        """Make and start a :class:`TrainingRun` (same arguments); returns its id and the run.
        Raises ``RuntimeError`` naming the fix when another run is active."""
        with self._lock:
            current = next((r for r in self._runs.values() if r.active), None)
            run = start_run(current, *args, **kwargs)
            return self._add(run), run

    def request(self, *args, **kwargs) -> tuple[str, TrainingRun, bool]:
        """A page's Train (or Resume) press: start a :class:`TrainingRun` (same arguments)
        unless one is active, else leave that one training. Returns ``(id, run, started)``.

        Two presses can reach the server together (a double click; Streamlit may run a
        session's script twice at once while the first run stops): both get the run that
        trains, one of them starts it, neither sees an error."""
        with self._lock:
            current = next(((k, r) for k, r in self._runs.items() if r.active), None)
            if current is not None:
                return (*current, False)
            run = TrainingRun(*args, **kwargs).start()
            return self._add(run), run, True

    def open(self, path: str | Path) -> tuple[str, SavedRun]:
        """The finished run of checkpoint ``path`` as a :class:`SavedRun` with an id, so a
        page can show it and find it again after a reload; the same id while the file is
        unchanged. Raises ``ValueError`` / ``FileNotFoundError`` as :class:`SavedRun`."""
        path = Path(path).resolve()
        stamp = path.stat().st_mtime_ns if path.is_file() else None
        with self._lock:
            for run_id, run in self._runs.items():
                if isinstance(run, SavedRun) and run.checkpoint_path == path and \
                        run.mtime_ns == stamp:
                    self._runs.move_to_end(run_id)
                    return run_id, run
        run = SavedRun(path)  # outside the lock: reading and diagnosing takes a moment
        with self._lock:
            return self._add(run), run

    def _add(self, run: TrainingRun | SavedRun) -> str:
        # under self._lock: a new id, and the oldest ended runs beyond ``keep`` forgotten
        run_id = uuid.uuid4().hex[:12]
        self._runs[run_id] = run
        while len(self._runs) > self.keep:
            oldest = next(iter(self._runs))
            if self._runs[oldest].active:
                break
            del self._runs[oldest]
        return run_id


RUNS = Registry()  # the server's runs; module state survives Streamlit's script reruns


def start_run(current: TrainingRun | None, *args, **kwargs) -> TrainingRun:
    """Start a new :class:`TrainingRun` unless ``current`` is still active (one per session).

    Raises ``RuntimeError`` naming the fix when a run is still training, paused or stopping.
    """
    if current is not None and current.active:
        raise RuntimeError(f"a run is already {current.status}; stop it (or wait for it to "
                           f"finish) before starting another")
    return TrainingRun(*args, **kwargs).start()


# ----------------------------------------------------------------------------- page data

# The training-curve panels: (panel, record key, what it shows). Latent-variable models and
# flows get their own; units are filled in per data set (nats per observed step or example).
LATENT_PANELS = (
    ("-ELBO", "nelbo", ("the negative evidence lower bound, -(E_q[log p(x|z)] - KL): what "
     "training lowers; validation points at each epoch's end")),
    ("reconstruction log-likelihood", "log_likelihood", ("E_q[log p(x|z)]: how well "
     "decoded latents explain the data (higher is better)")),
    ("KL(q || p)", "kl", ("how far the guide q(z|x) moves from the prior: the nats the latents "
     "carry; near 0 means posterior collapse")),
    ("KL weight", "kl_weight", ("the annealing factor on the KL term (rises linearly from "
     "min_kl_weight to 1 over the warm-up); unitless")),
    ("gradient norm", "grad_norm", ("the L2 norm of the gradient before clipping; spikes "
     "show unstable steps")),
)
FLOW_PANELS = (
    ("-log-likelihood", "nelbo", ("the flow's exact -log p(x | a) (change of variables): "
     "what training lowers; validation points at each epoch's end")),
    ("gradient norm", "grad_norm", ("the L2 norm of the gradient before clipping; spikes "
     "show unstable steps")),
)
VAL_PANEL_KEYS = ("nelbo", "log_likelihood", "kl")


def thinned(n: int, max_points: int) -> list[int]:
    """Indices ``0 .. n-1`` thinned to at most about ``max_points``: every k-th, and always
    the last (the newest point is never dropped)."""
    if n <= max_points:
        return list(range(n))
    k = -(-n // max_points)  # ceil
    index = list(range(0, n, k))
    return index if index[-1] == n - 1 else [*index, n - 1]


def curve_panels(history: list[dict], flow: bool, sequence: bool,
                 reference: dict | None = None, diagnostics: list[dict] | None = None,
                 max_points: int = 300, annealed: bool = True) -> list[dict]:
    """The training curves as plain rows for interactive charts, one dict per panel:
    ``{"title", "unit", "caption", "rows": [{"step", "value", "series"}, ...]}``.

    Train records form the series ``"train"`` (thinned to ``max_points``, newest kept),
    validation records ``"validation"``; ``reference["exact_nll_val"]`` / ``_train`` become
    the series ``"exact -log p(x), true system (val)"`` on the -ELBO panel (a constant, one
    row at the first and last step); ``diagnostics`` entries give an ``"active units"``
    panel. Units: nats per observed time step for sequences, per example otherwise. A run
    without KL annealing (``annealed=False``) gets no KL-weight panel, a constant: the KL
    panel's caption gives its value.
    """
    unit = "nats per observed step" if sequence else "nats per example"
    train = [r for r in history if r.get("kind") == "train"]
    val = [r for r in history if r.get("kind") == "val"]
    keep = [train[i] for i in thinned(len(train), max_points)]
    panels = []
    weights = {r["kl_weight"] for r in train if "kl_weight" in r}
    for title, key, caption in FLOW_PANELS if flow else LATENT_PANELS:
        if key == "kl_weight" and not annealed:
            continue
        if key == "kl" and not annealed and len(weights) == 1:
            caption += f"; weighted by {weights.pop():g} in the loss throughout (no annealing)"
        rows = [{"step": r["step"], "value": float(r[key]), "series": "train"}
                for r in keep if key in r]
        if key in VAL_PANEL_KEYS:
            rows += [{"step": r["step"], "value": float(r[key]), "series": "validation"}
                     for r in val if key in r]
        if key == "nelbo" and rows:
            steps = [row["step"] for row in rows]
            for split in ("val", "train"):
                if f"exact_nll_{split}" in (reference or {}):
                    rows += [{"step": s, "value": float(reference[f"exact_nll_{split}"]),
                              "series": f"exact -log p(x), true system ({split})"}
                             for s in (min(steps), max(steps))]
        panels.append({"title": title, "key": key, "caption": caption, "rows": rows,
                       "unit": unit if key in ("nelbo", "log_likelihood", "kl") else ""})
    if diagnostics is not None:
        rows = [{"step": d["step"], "value": float(d["active_units"]), "series": "active"}
                for d in diagnostics if "active_units" in d]
        panels.append({
            "title": "active units", "key": "active_units", "unit": "latent dimensions",
            "caption": f"dimensions u whose posterior mean varies across the data, "
                       f"Cov_x(E_q[z_u]) > {ACTIVE_THRESHOLD} (Burda et al. 2016); "
                       f"computed in the background, every few seconds",
            "rows": rows})
    return panels


@torch.no_grad()
def sample_piano_roll(model: nn.Module, steps: int) -> Tensor:
    """Returns a sampled piano roll ``[steps, X]`` of 0/1 notes: each note drawn with the
    emitter mean E[x_t | z_t] of ``model.sample`` as its probability. A Gaussian emitter
    (the SSM on piano rolls) has means outside [0, 1]: they are clipped to [0, 1] first."""
    _, mean = model.sample(1, steps=steps)
    return torch.bernoulli(mean[0].clamp(0.0, 1.0)).cpu()


def chart_table(rows: list[dict]):
    """Chart rows (``[{"step", "value", ...}]``) as a ``pyarrow.Table`` for
    ``st.vega_lite_chart``: Streamlit sends a Table as it is, while a list of dicts goes
    through pandas first, about ten times the work at every poll of the page."""
    import pyarrow as pa

    return pa.Table.from_pylist(rows)


def metrics_csv(history: list[dict]) -> str:
    """The metrics records as CSV text, one row per record, every key a column."""
    import csv

    columns: dict[str, None] = {}
    for record in history:
        columns.update(dict.fromkeys(record))
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(columns), lineterminator="\n")
    writer.writeheader()
    writer.writerows(history)
    return out.getvalue()


# ----------------------------------------------------------------------------- run history

MAX_CHECKPOINT_BYTES = 2**30  # a larger file in the runs folder is not read: no vaelab run is
# Settings that differ between any two runs and say nothing about them: where they were
# written and whether a progress bar was shown.
IGNORED_SETTINGS = ("out_dir", "progress")


@functools.cache
def sequence_model(model_name: str) -> bool:
    """True when model ``model_name`` trains on sequences ``x [N, T, X]`` (it accepts a
    built-in sequence data set, see :func:`accepted_data`), False for single vectors."""
    return any(builtin_dataset(name)[0].is_sequence
               for name, why in accepted_data(model_name).items()
               if why is None and not dataset_needs_path(name))


def _unit(model_name: str) -> str:
    return "nats per observed step" if sequence_model(model_name) else "nats per example"


def _plain_reason(error: Exception, path: Path, name: str) -> str:
    """``error``'s message with the file's full path replaced by its name in the folder, and
    without the loader's own words in brackets after "of another kind"."""
    text = str(error).replace(str(path), name).strip()
    return re.sub(r"(of another kind) \(.*\)$", r"\1", text)


@functools.lru_cache(maxsize=256)
def _entry(path: str, name: str, mtime_ns: int, size: int) -> dict:
    # one run folder's (or loose file's) summary, read again only when the file changes
    path_ = Path(path)
    entry = {"name": name, "path": path, "ok": False, "reason": None,
             "modified": mtime_ns / 1e9}
    if path_.suffix != ".pt":
        return {**entry, "reason": "not a run: a run is a folder holding a checkpoint.pt "
                                   "written by vaelab training"}
    if size > MAX_CHECKPOINT_BYTES:
        return {**entry, "reason": f"not read: {size / 2**30:.1f} GiB is far larger than any "
                                   f"vaelab checkpoint"}
    try:
        ckpt = load_checkpoint(path_)  # weights_only=True: no code in the file can run
    except (ValueError, FileNotFoundError) as e:
        shown = name if path_.name == name else f"{name}/{path_.name}"
        return {**entry, "reason": _plain_reason(e, path_, shown)}
    model = ckpt["model"]
    if model not in MODELS:
        return {**entry, "reason": f"holds a model vaelab does not know ({model!r}); models "
                                   f"are {', '.join(MODELS)}"}
    try:
        settings, status = saved_run(ckpt, path_.parent)
        history = [r for r in ckpt["history"] if isinstance(r, dict)]
        val = [r for r in history if r.get("kind") == "val" and "nelbo" in r]
        train = [r for r in history if r.get("kind") == "train" and "nelbo" in r]
        final = float(val[-1]["nelbo"]) if val else None
        last_train = float(train[-1]["nelbo"]) if train else None
    except (KeyError, TypeError, ValueError) as e:
        return {**entry, "reason": f"a damaged vaelab checkpoint ({type(e).__name__}: {e}); "
                                   f"it was edited or written by another program"}
    return {**entry, "ok": True, "model": model, "data": settings["data"].get("name", "?"),
            "step": ckpt["step"], "epoch": ckpt["epoch"],
            "epochs": ckpt["train_config"].get("epochs"), "status": status,
            "metric": "-ELBO" if "z_dim" in ckpt["config"] else "-log p(x)",
            "unit": _unit(model), "final": final, "last_train": last_train,
            "settings": settings, "history": history}


def run_entry(path: str | Path, name: str | None = None) -> dict:
    """The summary of one checkpoint file, for the run history.

    Returns ``{"name", "path", "ok", "reason", "modified"}`` and, when ``ok``, ``"model",
    "data", "step", "epoch", "epochs", "status"`` (``"finished"``: it reached its epochs or
    max steps; ``"stopped"``: training is left), ``"metric"`` (``"-ELBO"``, ``"-log p(x)"``
    for a flow, whose value is exact), ``"unit"``, ``"final"`` (the last validation value,
    None without one), ``"last_train"``, ``"settings"`` (as :meth:`TrainingRun.settings`)
    and ``"history"``. A file that is not a vaelab checkpoint gives ``ok=False`` and the
    ``reason`` in words; it is read only by :func:`vaelab.train.load_checkpoint`
    (``weights_only=True``) and only when its name ends in ``.pt``.
    """
    path = Path(path)
    name = name or path.name
    try:
        stat = path.stat()
    except OSError as e:
        return {"name": name, "path": str(path), "ok": False, "modified": 0.0,
                "reason": f"cannot be read ({e.strerror or type(e).__name__})"}
    return dict(_entry(str(path), name, stat.st_mtime_ns, stat.st_size))


def scan_runs(folder: str | Path, exclude: Sequence[str | Path] = ()) -> list[dict]:
    """The runs of a runs folder, newest first: one :func:`run_entry` per sub-folder holding
    a ``checkpoint.pt`` (named by the folder) and per file lying in the folder itself (a
    stray or foreign file is listed with its reason). Sub-folders without a checkpoint (a
    run before its first save) and hidden names are skipped, and so are the checkpoints in
    ``exclude`` (e.g. the run that is training). A missing folder has no runs."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    skip = {Path(p).resolve() for p in exclude}
    entries = []
    for child in folder.iterdir():
        if child.name.startswith("."):
            continue
        path = child / "checkpoint.pt" if child.is_dir() else child
        if not path.is_file() or path.resolve() in skip:
            continue
        entries.append(run_entry(path, child.name))
    return sorted(entries, key=lambda e: (-e["modified"], e["name"]))


def history_table(entries: Sequence[dict]) -> list[dict]:
    """Rows for a table of the readable runs among ``entries`` (:func:`scan_runs`): run,
    model, data, status, epoch, step, final validation value (and what it is)."""
    rows = []
    for e in entries:
        if not e["ok"]:
            continue
        final = e["final"] if e["final"] is not None else e["last_train"]
        which = "validation" if e["final"] is not None else "last train step"
        rows.append({
            "run": e["name"], "model": e["model"], "data": e["data"], "status": e["status"],
            "epoch": f"{e['epoch']} of {e['epochs']}", "step": e["step"],
            "final": None if final is None else round(final, 4),
            "final is": f"{which} {e['metric']}, {e['unit']}"})
    return rows


def flat_settings(settings: dict) -> dict[str, object]:
    """One run's settings (:meth:`TrainingRun.settings`) as one flat dict: ``model``,
    ``data`` and the data options (``data.<option>``), then the model config's fields, then
    the train config's (``train.<field>`` where a name is taken), without
    ``IGNORED_SETTINGS``."""
    data = dict(settings.get("data") or {})
    out: dict[str, object] = {"model": settings["model"], "data": data.pop("name", None)}
    out.update({f"data.{k}": v for k, v in data.items()})
    out.update(settings.get("model_config") or {})
    for key, value in (settings.get("train_config") or {}).items():
        if key not in IGNORED_SETTINGS:
            out[f"train.{key}" if key in out else key] = value
    return out


def differing_settings(settings: Sequence[dict]) -> list[dict[str, object]]:
    """For each run's settings, the fields (of :func:`flat_settings`) whose values are not the
    same in every run, in :func:`flat_settings`'s order; a field a run lacks (another
    model's) is left out of that run's dict."""
    flats = [flat_settings(s) for s in settings]
    keys = list(dict.fromkeys(k for flat in flats for k in flat))
    missing = object()
    differ = [k for k in keys if len({repr(f.get(k, missing)) for f in flats}) > 1]
    return [{k: flat[k] for k in differ if k in flat} for flat in flats]


def _setting_text(value: object) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_setting_text(v) for v in value) + "]"
    return str(value)


def run_labels(entries: Sequence[dict]) -> dict[str, str]:
    """Run name -> a legend label made of the settings that differ between ``entries``
    (:func:`differing_settings`): ``"beta=4"``, ``"dmm_iaf, num_iafs=2"`` (model and data
    by their names alone). Runs whose settings are all the same are named by their folder;
    labels that would repeat get the folder's name added."""
    differ = differing_settings([e["settings"] for e in entries])
    labels = {}
    for entry, fields in zip(entries, differ):
        parts = [_setting_text(v) if k in ("model", "data") else f"{k}={_setting_text(v)}"
                 for k, v in fields.items()]
        labels[entry["name"]] = ", ".join(parts) or entry["name"]
    counts: dict[str, int] = {}
    for label in labels.values():
        counts[label] = counts.get(label, 0) + 1
    return {name: label if counts[label] == 1 or label == name else f"{label} ({name})"
            for name, label in labels.items()}


def overlay_metrics(entries: Sequence[dict]) -> dict[str, str]:
    """Record key -> panel title of the training curves that ``entries`` can be overlaid on
    (those recorded by at least one run), in the order of the training-curve panels."""
    flows = {e["metric"] == "-log p(x)" for e in entries}
    out = {}
    for title, key, _ in (*LATENT_PANELS, *FLOW_PANELS):
        if key in out or not any(key in r for e in entries for r in e["history"]):
            continue
        if key == "nelbo":
            title = "-log p(x)" if flows == {True} else "-ELBO" if flows == {False} else \
                "-ELBO (-log p(x) for flows)"
        out[key] = title
    return out


def overlay_panel(entries: Sequence[dict], key: str = "nelbo",
                  labels: dict[str, str] | None = None, max_points: int = 300) -> dict:
    """One training-curve panel with several runs on it, for an interactive chart:
    ``{"title", "key", "unit", "caption", "rows": [{"step", "value", "run", "split"}]}``,
    ``run`` the label of :func:`run_labels`, ``split`` ``"train"`` (thinned to
    ``max_points`` per run, newest kept) or ``"validation"``."""
    if len(entries) < 1:
        raise ValueError("overlay_panel needs at least one run; pick runs in the history")
    labels = labels or run_labels(entries)
    titles = overlay_metrics(entries)
    if key not in titles:
        raise ValueError(f"no run here records {key!r}; choose one of {list(titles)}")
    rows = []
    for e in entries:
        train = [r for r in e["history"] if r.get("kind") == "train" and key in r]
        rows += [{"step": r["step"], "value": float(r[key]), "run": labels[e["name"]],
                  "split": "train"} for r in (train[i] for i in thinned(len(train), max_points))]
        if key in VAL_PANEL_KEYS:
            rows += [{"step": r["step"], "value": float(r[key]), "run": labels[e["name"]],
                      "split": "validation"}
                     for r in e["history"] if r.get("kind") == "val" and key in r]
    units = {e["unit"] for e in entries}
    unit = "" if key not in ("nelbo", "log_likelihood", "kl") else \
        units.pop() if len(units) == 1 else "nats (per observed step for sequences, per " \
                                             "example otherwise)"
    return {"title": titles[key], "key": key, "unit": unit, "rows": rows,
            "caption": f"{titles[key]} of each run, one colour per run, named by the "
                       f"settings that differ between the runs; lines: training steps, dots: "
                       f"validation at each epoch's end"}


class SavedRun:
    """A finished run re-opened from its checkpoint, read only through
    :func:`vaelab.train.load_model` (``weights_only=True``): the read-only face of
    :class:`TrainingRun` that the dashboard shows (history, settings, status, the model, the
    validation view for figures, diagnostics), never active.

    The data set is loaded again from the checkpoint's data spec for the figures; when it
    cannot be (a file moved away), ``view`` is None and ``data_error`` says why, and the
    curves are still there. Raises ``ValueError`` (``FileNotFoundError``) naming the
    problem when the file is not a checkpoint vaelab can load.
    """

    active = False
    pid = None
    diagnostics_error = None

    def __init__(self, path: str | Path) -> None:
        path = Path(path)
        try:
            model, ckpt = load_model(path)
            self.config = resume_config(ckpt, path.parent, device="cpu")
        except (TypeError, KeyError) as e:
            raise ValueError(f"{path} is a damaged vaelab checkpoint ({type(e).__name__}: "
                             f"{e}); use another one") from None
        self.checkpoint_path = path.resolve()
        self.mtime_ns = path.stat().st_mtime_ns
        self.model_name = ckpt["model"]
        self.data_spec = dict(ckpt["data"] or {})
        self._model = model
        self._settings, self.status = saved_run(ckpt, path.parent)
        self._history = list(ckpt["history"])
        self.step = ckpt["step"]
        self.snapshot_step = ckpt["step"]
        self.has_latents = has_latents(model)
        self.train = self.val = self.view = None
        self.data_error: str | None = None
        self.reference: dict = {}
        self.diagnostics: list[dict] = []
        try:
            spec = self.data_spec
            if not spec:
                raise ValueError("the checkpoint does not record its data set")
            self.train, self.val, _ = builtin_dataset(spec["name"]) if set(spec) == {"name"} \
                and not dataset_needs_path(spec["name"]) else load_dataset(**spec)
        except (ValueError, FileNotFoundError) as e:
            self.data_error = f"its data cannot be loaded ({e}); figures need the data"
        else:
            self.view = make_view(self.train, self.val)
            self.reference = reference_metrics(self.train, self.val)
            if self.has_latents:
                start = time.monotonic()
                entry = {"step": self.step, **diagnose(model, self.view.batch)}
                self.diagnostics.append({**entry, "seconds": time.monotonic() - start})

    @property
    def model(self) -> nn.Module:
        """The trained model (CPU, eval mode)."""
        return self._model.eval()

    @property
    def history(self) -> list[dict]:
        return list(self._history)

    @property
    def record_times(self) -> list[float]:
        """NaN for every record: they were made before this session."""
        return [math.nan] * len(self._history)

    @property
    def is_sequence(self) -> bool:
        return sequence_model(self.model_name)

    def settings(self) -> dict:
        """As :meth:`TrainingRun.settings`; ``out_dir`` is the folder the checkpoint is in."""
        return copy.deepcopy(self._settings)

    def latest_diagnostics(self) -> dict | None:
        return self.diagnostics[-1] if self.diagnostics else None

    def planned_steps(self) -> int:
        if self.train is None:
            return self.config.max_steps or self.step
        return planned_steps(self.config, self.train)

    def progress(self) -> dict:
        """As :meth:`TrainingRun.progress`, without a speed (nothing trains)."""
        return {"step": self.step, "planned": self.planned_steps(), "steps_per_second": None,
                "eta_seconds": None}


def observed_steps(batch: Batch, index: int) -> int:
    """The number of observed time steps of sequence ``index`` of ``batch`` (``x [B, T, X]``,
    padding at the end)."""
    if batch.x.dim() != 3:
        raise ValueError(f"observed_steps needs sequences x [B, T, X], got "
                         f"{list(batch.x.shape)}")
    return int(batch.mask[index].sum()) if batch.mask is not None else batch.x.shape[1]
