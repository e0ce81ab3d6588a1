"""Training in a background thread, watched and steered from another (the dashboard).

:class:`TrainingRun` calls :func:`vaelab.train.fit` in a worker thread and talks to it only
through fit's ``callback``: every metrics record is appended to a locked list, a CPU copy of
the parameters is taken between steps for plots, ``pause()`` makes the callback wait on an
event and ``stop()`` makes it return ``False`` (fit then saves a checkpoint and ends). No
Streamlit here, so it can be tested on its own.

Also here, for the page: a :class:`Registry` of runs shared by every browser session of the
server process (one training at a time; a reloaded page re-attaches by run id), the fixed
validation view the figures use, and latent diagnostics (per-dimension KL, active units,
exact log-likelihood of a known linear-Gaussian system).
"""

from __future__ import annotations

import copy
import dataclasses
import inspect
import tempfile
import threading
import time
import uuid
from collections import OrderedDict
from pathlib import Path

import torch
from torch import Tensor, nn

from vaelab.data import DATASETS, Batch, Data
from vaelab.train import TrainConfig, TrainingDiverged, fit, load_checkpoint

ACTIVE_THRESHOLD = 0.01  # Burda et al. 2016 (arXiv:1509.00519): active if Cov_x(E_q[z_u]) > this


def dataset_needs_path(name: str) -> bool:
    """True when loader ``DATASETS[name]`` takes a ``path`` (a file or folder on disk)."""
    if name not in DATASETS:
        raise ValueError(f"unknown data set {name!r}; choose one of {sorted(DATASETS)}")
    return "path" in inspect.signature(DATASETS[name]).parameters


@torch.no_grad()
def check_compatible(model: nn.Module, data: Data, n: int = 2) -> None:
    """Raise ``ValueError`` with the model's own message if ``model.elbo`` rejects a batch of
    ``data`` (e.g. a static model on sequences), before any thread is started."""
    batch = data.batch(torch.arange(min(n, len(data))))
    device = next(model.parameters()).device
    try:
        terms = model.elbo(batch.to(device))
    except (ValueError, RuntimeError, TypeError) as e:
        raise ValueError(f"{getattr(model, 'name', type(model).__name__)} cannot train on "
                         f"{data.name}: {e}") from None
    if terms.log_likelihood.shape != (len(batch),):
        raise ValueError(f"elbo must return [B] terms, got {list(terms.log_likelihood.shape)}")


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


def observed(z: Tensor, mask: Tensor | None) -> Tensor:
    """Latents ``z [B, Z]`` as they are, ``z [B, T, Z]`` as ``[N, Z]`` over the observed steps
    of ``mask [B, T]`` (all steps without a mask)."""
    if z.dim() == 2:
        return z
    if z.dim() != 3:
        raise ValueError(f"latents must be [B, Z] or [B, T, Z], got {list(z.shape)}")
    return z.reshape(-1, z.shape[-1]) if mask is None else z[mask.to(z.device)]


@torch.no_grad()
def latent_activity(model: nn.Module, batch: Batch) -> Tensor:
    """Returns the activity of every latent dimension, ``[Z]``: the variance across examples
    (and observed time steps) of the posterior mean, Cov_x(E_q[z_u]) of Burda et al. 2016."""
    z = observed(model.latents(batch), batch.mask)  # [N, Z]
    return z.double().var(dim=0, unbiased=False).to(torch.float32)


def active_units(activity: Tensor, threshold: float = ACTIVE_THRESHOLD) -> int:
    """Returns how many dimensions have ``activity > threshold`` (the active units)."""
    return int((activity > threshold).sum())


@torch.no_grad()
def kl_per_dim(model: nn.Module, batch: Batch) -> Tensor | None:
    """Returns ``model.kl_per_dim(batch)`` ``[Z]`` when the model offers it (an optional
    protocol method: the KL per latent dimension averaged over examples / observed steps),
    else None."""
    method = getattr(model, "kl_per_dim", None)
    return None if method is None else method(batch).detach().to("cpu", torch.float32)


def has_latents(model: nn.Module) -> bool:
    """True for latent-variable models (config has ``z_dim``); a flow has none."""
    return hasattr(getattr(model, "config", None), "z_dim")


def diagnose(model: nn.Module, batch: Batch) -> dict:
    """Returns ``{"activity": [Z], "active_units": int, "kl_per_dim": [Z] or None}`` as
    lists of floats for ``model`` (eval mode) on ``batch``; ``{}`` for a model without latents."""
    if not has_latents(model):
        return {}
    device = next(model.parameters()).device
    batch = batch.to(device)
    activity = latent_activity(model, batch).cpu()
    kl = kl_per_dim(model, batch)
    return {"activity": activity.tolist(), "active_units": active_units(activity),
            "kl_per_dim": None if kl is None else kl.tolist()}


def exact_nll(system, data: Data) -> float:
    """Returns the exact -log p(x | a) per observed step of ``data`` under the linear-Gaussian
    ``system`` (Kalman filter): the one place the dashboard calls vaelab.kalman."""
    from vaelab import kalman

    return float(kalman.exact_nll(system, data))


def reference_metrics(train: Data, val: Data | None) -> dict:
    """Figures known from the data alone: ``{"exact_nll_val": ...}`` (and ``_train`` on at
    most 500 sequences) when ``Data.info`` carries the true linear-Gaussian ``system``."""
    out = {}
    for split, data in (("val", val), ("train", train)):
        system = (data.info or {}).get("system") if data is not None else None
        if system is not None and len(data):
            out[f"exact_nll_{split}"] = exact_nll(system, data.subset(slice(0, 500)))
    return out


class TrainingRun:
    """One training run of ``fit`` in a daemon thread.

    Parameters
    ----------
    model, train, val, config
        As for :func:`vaelab.train.fit`. ``config.out_dir`` is the run folder holding
        ``checkpoint.pt``; when it is None a fresh temporary folder is used.
    data_spec : dict, optional
        Stored in the checkpoint so the data can be reloaded.
    resume : path, optional
        A checkpoint to continue from (passed to ``fit``).
    snapshot_every : float
        Seconds between parameter copies for :attr:`model` while training.

    ``status`` is ``"not started"``, ``"running"``, ``"paused"``, ``"stopping"``,
    ``"stopped"``, ``"finished"`` or ``"failed: <message>"``.
    """

    def __init__(self, model: nn.Module, train: Data, val: Data | None, config: TrainConfig,
                 data_spec: dict | None = None, resume: str | Path | None = None,
                 snapshot_every: float = 1.0) -> None:
        out_dir = config.out_dir or tempfile.mkdtemp(prefix="vaelab-run-")
        self.config = dataclasses.replace(config, out_dir=str(out_dir))
        self.model_name = getattr(model, "name", type(model).__name__)
        self.data_spec = data_spec
        self.resume_from = resume
        self.train, self.val = train, val
        self.snapshot_every = snapshot_every
        self._model = model
        self._template = copy.deepcopy(model).to("cpu")  # CPU twin that snapshots load into
        self.view = make_view(train, val)  # what the page's figures show
        self.reference = reference_metrics(train, val)
        self.diagnostics: list[dict] = []  # one per diagnose() on a new step
        self._lock = threading.Lock()
        # a resumed run shows its whole history, as fit keeps it in the checkpoint
        self._records: list[dict] = [] if resume is None else list(
            load_checkpoint(resume)["history"])
        self._state: dict | None = None  # latest CPU state dict taken between steps
        self._snapshot_time = -float("inf")
        self._go = threading.Event()  # set = run, clear = paused
        self._go.set()
        self._waiting = threading.Event()  # set while the worker sits paused in the callback
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._status = "not started"
        self.error: BaseException | None = None
        self.started_at: float | None = None
        self.ended_at: float | None = None

    # ------------------------------------------------------------------ control

    def start(self) -> TrainingRun:
        """Start the worker thread; a run starts once."""
        with self._lock:
            if self._thread is not None:
                raise RuntimeError("this TrainingRun was already started; make a new one")
            self._status = "running"
            self.started_at = time.time()
            self._thread = threading.Thread(target=self._work, name=f"vaelab-{self.model_name}",
                                            daemon=True)
        self._thread.start()
        return self

    def pause(self) -> None:
        """Hold training at the next metrics record (the step in progress completes)."""
        with self._lock:
            if self._status == "running":
                self._go.clear()
                self._status = "paused"

    def resume(self) -> None:
        """Continue a paused run."""
        with self._lock:
            if self._status == "paused":
                self._status = "running"
                self._go.set()

    def stop(self) -> None:
        """Ask fit to stop at the next record; it writes a checkpoint first. Non-blocking."""
        with self._lock:
            if self._status in ("running", "paused"):
                self._status = "stopping"
            self._stop.set()
            self._go.set()

    def join(self, timeout: float | None = None) -> bool:
        """Wait for the worker to end; True if it has."""
        if self._thread is not None:
            self._thread.join(timeout)
        return not self.active

    def wait_paused(self, timeout: float | None = None) -> bool:
        """Wait until the worker actually sits paused; True if it does."""
        return self._waiting.wait(timeout)

    # ------------------------------------------------------------------ state

    @property
    def status(self) -> str:
        with self._lock:
            return self._status

    @property
    def active(self) -> bool:
        """True while the worker thread is alive (running, paused or stopping)."""
        return self._thread is not None and self._thread.is_alive()

    @property
    def history(self) -> list[dict]:
        """A copy of the metrics records so far."""
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
        (taken between steps), or the trained model's parameters once the worker has ended."""
        with self._lock:
            state = self._state
        if not self.active and self._thread is not None:
            state = self._copy_state()
        model = copy.deepcopy(self._template)
        if state is not None:
            model.load_state_dict(state)
        return model.eval()

    def diagnose(self) -> dict:
        """Latent diagnostics (:func:`diagnose`) of the latest snapshot on :attr:`view`,
        appended to :attr:`diagnostics` with its step, once per new step (called by the page
        on its own thread, so training never waits for it). Returns the latest entry."""
        step = self.step
        if self.diagnostics and self.diagnostics[-1]["step"] == step:
            return self.diagnostics[-1]
        entry = {"step": step, **diagnose(self.model, self.view.batch)}
        self.diagnostics.append(entry)
        return entry

    # ------------------------------------------------------------------ worker

    def _copy_state(self) -> dict:
        return {k: v.detach().to("cpu", copy=True) for k, v in self._model.state_dict().items()}

    def _callback(self, record: dict) -> bool:
        # Runs on the worker thread between optimiser steps, so the parameters are consistent.
        now = time.monotonic()
        if record["kind"] != "train" or now - self._snapshot_time >= self.snapshot_every:
            state = self._copy_state()
            self._snapshot_time = now
        else:
            state = None
        with self._lock:
            self._records.append(dict(record))
            if state is not None:
                self._state = state
        if not self._go.is_set():
            self._waiting.set()
            with self._lock:
                self._state = self._copy_state()  # plots of a paused run show its last step
            self._go.wait()
            self._waiting.clear()
        return not self._stop.is_set()

    def _work(self) -> None:
        try:
            history = fit(self._model, self.train, self.val, self.config,
                          callback=self._callback, resume=self.resume_from,
                          data_spec=self.data_spec)
            end = history[-1] if history else {}
            final = "stopped" if end.get("stopped") else "finished"
        except TrainingDiverged as e:
            self.error = e
            final = f"failed: {e}"
        except Exception as e:  # noqa: BLE001 - reported to the page instead of lost
            self.error = e
            final = f"failed: {type(e).__name__}: {e}"
        with self._lock:
            self._status = final
            self.ended_at = time.time()
        self._waiting.clear()


class Registry:
    """The runs of one server process, by id: every browser session sees the same ones, a
    page stores its run's id (in the URL) and re-attaches to it after a reload, and
    :meth:`start` refuses a second run while one is active. Keeps the ``keep`` latest."""

    def __init__(self, keep: int = 8) -> None:
        self.keep = keep
        self._runs: OrderedDict[str, TrainingRun] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, run_id: str | None) -> TrainingRun | None:
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
            run_id = uuid.uuid4().hex[:12]
            self._runs[run_id] = run
            while len(self._runs) > self.keep:
                oldest = next(iter(self._runs))
                if self._runs[oldest].active:
                    break
                del self._runs[oldest]
        return run_id, run


RUNS = Registry()  # the server's runs; module state survives Streamlit's script reruns


def start_run(current: TrainingRun | None, *args, **kwargs) -> TrainingRun:
    """Start a new :class:`TrainingRun` unless ``current`` is still active (one per session).

    Raises ``RuntimeError`` naming the fix when a run is still training, paused or stopping.
    """
    if current is not None and current.active:
        raise RuntimeError(f"a run is already {current.status}; stop it (or wait for it to "
                           f"finish) before starting another")
    return TrainingRun(*args, **kwargs).start()
