"""Runs as processes over run folders (TensorBoard's logdir; the OpenMS Streamlit template).

A run is a process, ``python -m vaelab train ... --out RUN_DIR``, that writes its folder:

``settings.json``
    model, model config, train config, data spec and unit, written when training starts.
``metrics.jsonl``
    one JSON line per metrics record of :func:`vaelab.train.fit`, flushed as it is made, with
    ``wall`` (seconds since the epoch) added.
``status.json``
    ``{"state", "message", "pid", "step", "updated"}``; ``state`` is one of :data:`STATES`.
``checkpoint.pt``, ``best.pt``, ``log.txt``
    fit's checkpoints and the process's output.

The dashboard only reads folders and sends requests: ``request.json`` (pause, continue,
stop) is read by the run's :class:`RunWriter` at every record, and a stop also sends SIGINT,
which fit turns into a saved checkpoint. A page-started run also has ``meta.json`` (owner,
name, tags), ``command.json`` (its train arguments while it waits in the queue),
``limits.json`` (the caps it runs under) and ``heartbeat`` (touched by its owner's page).
A run started from the command line or under torchrun into the same root shows up too.

Everything here is plain functions on folders, without Streamlit, so the page stays thin.

The package, one responsibility a module (every name importable from ``vaelab.runs``):

    folder.py    the folder's states and small JSON files, the writing process (alive, stop)
    hosting.py   hosting limits from the environment; paths and data specs checked against them
    writer.py    RunWriter, kept by the training process
    reading.py   status, metrics, the run list, ownership
    requests.py  what a page asks: create, requeue, pause/continue/stop, rename, delete
    queue.py     the queue's lock and order, dispatch (start and reap processes)
    exports.py   CSV exports, download names, comparable runs
"""

from vaelab.runs.exports import (
    comparable,
    export_name,
    metrics_csv,
)
from vaelab.runs.folder import (
    _CHILDREN,
    ACTIONS,
    ACTIVE,
    PAUSE_POLL,
    RUNNING,
    STATES,
    STATUS_EVERY,
    pid_alive,
    read_json,
    signal_stop,
    write_json,
)
from vaelab.runs.hosting import (
    Hosting,
    check_data_spec,
    inside,
)
from vaelab.runs.queue import (
    dispatch,
    queue_lock,
    queue_position,
)
from vaelab.runs.reading import (
    MetricsTail,
    list_runs,
    owned_folder,
    owner_hash,
    owns,
    read_metrics,
    read_status,
    run_info,
    visible_runs,
)
from vaelab.runs.requests import (
    create_run,
    delete,
    heartbeat,
    new_run_id,
    rename,
    request,
    requeue,
)
from vaelab.runs.writer import (
    RunWriter,
)

__all__ = [
    "ACTIONS",
    "ACTIVE",
    "PAUSE_POLL",
    "RUNNING",
    "STATES",
    "STATUS_EVERY",
    "_CHILDREN",
    "Hosting",
    "MetricsTail",
    "RunWriter",
    "check_data_spec",
    "comparable",
    "create_run",
    "delete",
    "dispatch",
    "export_name",
    "heartbeat",
    "inside",
    "list_runs",
    "metrics_csv",
    "new_run_id",
    "owned_folder",
    "owner_hash",
    "owns",
    "pid_alive",
    "queue_lock",
    "queue_position",
    "read_json",
    "read_metrics",
    "read_status",
    "rename",
    "request",
    "requeue",
    "run_info",
    "signal_stop",
    "visible_runs",
    "write_json",
]
