"""Data-parallel training under ``torchrun``: PyTorch's DistributedDataParallel, no new engine.

``python -m torch.distributed.run --nproc-per-node 2 -m vaelab train ...`` starts one process
per device with ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` and the rendezvous address in the
environment; :func:`vaelab.train.fit` sees them through :func:`context` and

- joins the process group (NCCL on CUDA, gloo on the CPU) and wraps the model in
  DistributedDataParallel, which averages gradients over processes during ``backward`` (so
  training calls the model through ``forward``);
- has every process draw the same *global* batch of ``world * batch_size`` examples (the same
  length buckets, from the same per-epoch seed) and keep its own rows of it (:func:`shard`);
- scales each process's loss so that the averaged gradient is that of the global batch's loss
  (:func:`global_loss`): N processes on batches of B train as one process on batches of N * B;
- sums the logged metrics over processes, and writes checkpoints, the progress bar and
  callbacks on rank 0 only. Checkpoints hold the unwrapped model's state, so a checkpoint from
  a DDP run loads and resumes in a single process;
- watches the process that started it (torchrun's agent, :class:`ParentWatch`): when the agent
  dies (SIGKILL, out of memory) the workers stop together after a step, as after SIGTERM,
  saving a clean checkpoint, instead of training on with no one to collect them.
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
from torch import Tensor, nn

from vaelab.data import Batch
from vaelab.objectives import ELBOTerms


@dataclass
class Context:
    """Where this process stands: ``rank`` of ``world`` processes (0 of 1 when alone)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    owns_group: bool = False  # this process group was started by fit and is ended by it
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))  # one GPU each
    watch: ParentWatch | None = None  # notices when torchrun's agent dies

    @property
    def active(self) -> bool:
        return self.world > 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def _env_int(name: str) -> int | None:
    value = os.environ.get(name)
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        raise ValueError(
            f"environment variable {name}={value!r} must be an integer; launch "
            f"with torchrun, which sets it"
        ) from None


def context(device: torch.device) -> Context:
    """The torchrun environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``), with the process
    group joined when there is more than one process (NCCL on CUDA, gloo on the CPU) and one
    GPU per process (``cuda:LOCAL_RANK``)."""
    world = _env_int("WORLD_SIZE") or 1
    if world <= 1:
        return Context(device=device)
    rank, local = _env_int("RANK"), _env_int("LOCAL_RANK") or 0
    if rank is None or not 0 <= rank < world:
        raise ValueError(
            f"RANK must be in 0..{world - 1} with WORLD_SIZE={world}, got {rank}; "
            f"launch with torchrun"
        )
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    owns = not dist.is_initialized()
    if owns:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Context(rank, world, local, owns, device, ParentWatch(rank).start())


# seconds a worker whose agent died may take to finish its step and save before it exits
# anyway (a collective waits forever when another worker died with the agent)
PARENT_GRACE = 30.0


class ParentWatch:
    """Stops this worker when the process that started it ends (torchrun's agent, killed with
    SIGKILL or by the out-of-memory killer): a daemon thread polls ``os.getppid()``, which
    changes when the parent dies and the worker is handed to init (or a subreaper).

    It then sets ``fired``, and :func:`vaelab.train.fit` votes to stop at its next agreement
    with the other workers (every worker sees its agent die): they leave together after a
    step, and rank 0 saves a checkpoint. No signal is sent: one landing after fit has left its
    loop would end the process before it reports which checkpoint survives. A worker that has
    not ended ``grace`` seconds later (a collective waiting for a worker that died with the
    agent never returns) exits with status 1, keeping the checkpoint last written (saves are
    atomic). Polling, not ``prctl(PR_SET_PDEATHSIG)``: that signal fires when the parent
    *thread* that started the worker ends, which need not be the agent's end, and it is Linux
    only.

    ``getppid`` and ``exit`` are the operating system's; tests pass their own.
    """

    def __init__(
        self,
        rank: int = 0,
        poll: float = 0.5,
        grace: float = PARENT_GRACE,
        getppid: Callable[[], int] = os.getppid,
        exit: Callable[[int], object] = os._exit,
    ) -> None:
        self.rank, self.poll, self.grace = rank, poll, grace
        self.getppid, self.exit = getppid, exit
        self.parent = getppid()
        self.done = threading.Event()  # set by stop(): the worker left the process group
        self.fired = False
        self.thread = threading.Thread(target=self._run, name="vaelab-parent-watch", daemon=True)

    def start(self) -> ParentWatch:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.done.set()

    def _run(self) -> None:
        while self.getppid() == self.parent:
            if self.done.wait(self.poll):
                return
        print(
            f"\nrank {self.rank}: the process that started it (pid {self.parent}, torchrun's "
            f"agent) has ended; stopping after this step and saving a checkpoint",
            file=sys.stderr,
            flush=True,
        )
        self.fired = True
        if self.done.wait(self.grace):
            return
        print(
            f"rank {self.rank}: still running {self.grace:g} s after its agent ended (another "
            f"worker is gone too); exiting now, the last checkpoint written is kept",
            file=sys.stderr,
            flush=True,
        )
        self.exit(1)


def orphaned(ctx: Context) -> bool:
    """True once this worker's torchrun agent has died (see :class:`ParentWatch`)."""
    return ctx.watch is not None and ctx.watch.fired


def agree_to_stop(requested: bool, ctx: Context) -> bool:
    """True on every process when any was asked to stop (``requested``: a signal) or lost its
    torchrun agent. fit leaves its loop on this value only, never on its own flag: a signal
    landing after the agreement counts at the next one, so no process leaves alone."""
    return agree(requested or orphaned(ctx), ctx)


def wrap(model: nn.Module, ctx: Context) -> nn.Module:
    """The module training calls: DistributedDataParallel over ``model`` when distributed."""
    if not ctx.active:
        return model
    ids = [ctx.device.index] if ctx.device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=ids)


def shard(batch: Batch, ctx: Context) -> Batch | None:
    """This process's rows of a global batch (rows ``rank, rank + world, ...``: neighbours in a
    length bucket go to different processes), padding trimmed to its own longest sequence.
    ``None`` when the global batch has fewer rows than processes (an epoch's last, short batch:
    every process must take part in every step, so that batch is skipped)."""
    if not ctx.active:
        return batch
    if len(batch) < ctx.world:
        return None
    rows = slice(ctx.rank, None, ctx.world)
    part = Batch(batch.x[rows], *(None if t is None else t[rows] for t in _extras(batch)))
    if part.mask is not None:
        steps = slice(0, int(part.mask.sum(dim=1).max()))
        part = Batch(
            part.x[:, steps], *(None if t is None else t[:, steps] for t in _extras(part))
        )
    return part


def _extras(batch: Batch) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
    """``(a, mask, z)``, the optional fields of a batch, in Batch's order."""
    return batch.a, batch.mask, batch.z


def all_sum(values: Tensor, ctx: Context) -> Tensor:
    """``values`` summed over processes (a copy; unchanged when alone)."""
    if not ctx.active:
        return values
    total = values.detach().clone()
    dist.all_reduce(total, op=dist.ReduceOp.SUM)
    return total


def global_loss(terms: ELBOTerms, kl_weight: float, ctx: Context) -> tuple[Tensor, Tensor]:
    """This process's share of the global batch's loss, and the global sums
    ``[sum ELBO, sum log-likelihood, sum KL, observed steps, loss]`` for the metrics.

    The loss of the global batch is ``-sum_all(ll - w kl) / steps_all``; DistributedDataParallel
    averages gradients over the ``world`` processes, so each process back-propagates
    ``world * (-sum_own(ll - w kl)) / steps_all``. Alone, this is :func:`objectives.loss`.
    """
    weighted = (terms.log_likelihood - kl_weight * terms.kl).sum(dim=0)
    local = torch.stack(
        [
            terms.elbo.sum(dim=0),
            terms.log_likelihood.sum(dim=0),
            terms.kl.sum(dim=0),
            terms.steps.sum(dim=0),
            weighted,
        ]
    ).detach()
    sums = all_sum(local, ctx)
    steps = sums[3].clone()  # kept for backward: sums is changed below
    loss = -weighted * ctx.world / steps
    sums[4] = -sums[4] / steps  # the global batch's loss, for the record
    return loss, sums


def agree(flag: bool, ctx: Context) -> bool:
    """True on every process when ``flag`` is True on any (e.g. rank 0's callback asked to
    stop): processes must leave the training loop together."""
    if not ctx.active:
        return flag
    return bool(all_sum(torch.tensor([float(flag)], device=ctx.device), ctx)[0] > 0)


def leave(ctx: Context) -> None:
    """Stop watching the agent, and leave the process group if fit joined it (after a barrier
    when every process is still there; on an error the others are ended by torchrun)."""
    if ctx.watch is not None:
        ctx.watch.stop()
    if ctx.owns_group and dist.is_initialized():
        if sys.exc_info()[0] is None:
            dist.barrier()
        dist.destroy_process_group()
