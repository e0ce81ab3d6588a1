"""Training in a background thread, watched and steered from another (the dashboard).

:class:`TrainingRun` calls :func:`vaelab.train.fit` in a worker thread and talks to it only
through fit's ``callback``: every metrics record is appended to a locked list, a CPU copy of
the parameters is taken between steps for plots, ``pause()`` makes the callback wait on an
event and ``stop()`` makes it return ``False`` (fit then saves a checkpoint and ends). No
Streamlit here, so it can be tested on its own.
"""

from __future__ import annotations

import copy
import dataclasses
import inspect
import tempfile
import threading
import time
from pathlib import Path

import torch
from torch import nn

from vaelab.data import DATASETS, Data
from vaelab.train import TrainConfig, TrainingDiverged, fit, load_checkpoint


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


def start_run(current: TrainingRun | None, *args, **kwargs) -> TrainingRun:
    """Start a new :class:`TrainingRun` unless ``current`` is still active (one per session).

    Raises ``RuntimeError`` naming the fix when a run is still training, paused or stopping.
    """
    if current is not None and current.active:
        raise RuntimeError(f"a run is already {current.status}; stop it (or wait for it to "
                           f"finish) before starting another")
    return TrainingRun(*args, **kwargs).start()
