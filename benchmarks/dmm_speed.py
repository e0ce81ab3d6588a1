"""DMM training speed on JSB Chorales: the fast path (``vaelab.fast``: ``elman_rnn``, the
guide's ``_CombinerScan``, observed steps only) against the model file's readable path
(``DMM.fast = False``: ``nn.RNN`` and the guide's loop through autograd), side by side in one
process, epochs alternating, so that both see the same machine load.

    python benchmarks/dmm_speed.py                 # 5 rounds, torch's default threads
    python benchmarks/dmm_speed.py --threads 1 --rounds 3

Each epoch is the model's work only: the ELBO, its backward, clipping and an Adam step over
the 12 mini-batches of 20 chorales with Pyro's settings (``fit`` adds little;
``benchmarks/dmm_jsb.py`` prints the full figure). Target on this 2-core CPU: <= 1.5 s per
epoch; ``--vs-pyro`` times Pyro's example beside it.

``--vs-pyro`` times vaelab against Pyro's own DMM (``benchmarks/pyro_dmm.py``, written with
Pyro's API; needs ``pip install -e .[bench]``) in the same process, epochs alternating after one
warm-up epoch of each, so that all see the same machine load:

    python benchmarks/dmm_speed.py --vs-pyro --threads 2 --epochs 3

Each vaelab epoch is one call of ``fit`` (batches, bookkeeping and a fresh Adam included), in
three settings: the defaults; the closest to Pyro (``--preset pyro``'s ReLU RNN, Monte Carlo
KL and optimiser, with our length buckets); and that one on Pyro's plain shuffle, which pads
as much as Pyro's mini-batches do. Each Pyro epoch is its example's loop of ``svi.step``. It
prints min/median/max seconds per epoch, the peak memory of one further epoch of each (on the
CPU the rise in resident memory, sampled every 2 ms; on CUDA the allocator's peak), and last
``ratio=<Pyro median / vaelab defaults median>``. Issue 26's targets: >= 7x with the
defaults, >= 5x on Pyro's padding.

On a GPU (``--device cuda``) our epochs run the fast path: the guide's scan replayed from CUDA
graphs and the metrics read every 50 steps (``TrainConfig.sync_every``); a fourth row times
the defaults eagerly with a read per step, to show what those two gain. ``--krishnan`` adds
the README's best flow-free settings and prints the projected wall time of their 1300 epochs.
One prepared GPU session runs all of it: ``bash benchmarks/gpu_session.sh speed OUT``.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import os
import statistics
import sys
import threading
import time
from collections.abc import Callable

import torch

from vaelab import fast
from vaelab.config import build_config
from vaelab.data import Data, load_jsb
from vaelab.dmm import DMM, DMMIAF, DMMConfig, DMMIAFConfig
from vaelab.objectives import loss
from vaelab.presets import apply_preset
from vaelab.train import TrainConfig, TrainingDiverged, adam, fit, per_step_decay

Epoch = Callable[[], tuple[float, float]]  # one training epoch -> (seconds, loss per step)
# nats per observed step above which a run counts as diverged: JSB starts near 64 (88 notes at
# about log 2 each) and falls; the ReLU RNN's failures pass 1e8 on their way to NaN
DIVERGED_LOSS = 1e3


def our_settings(
    device: str = "cpu", krishnan: bool = False
) -> dict[str, tuple[str, dict, dict, bool]]:
    """The vaelab settings timed against Pyro: ``label -> (description, DMMConfig overrides,
    TrainConfig overrides, CUDA graphs)``. Three always; on CUDA also the defaults without
    CUDA graphs and with a read per step (what the graphs and deferred reads gain); with
    ``krishnan`` the README's best flow-free settings, for the projected wall time."""
    pyro_model, pyro_train = apply_preset("pyro")
    buckets = {**pyro_train, "bucket_jitter": TrainConfig.bucket_jitter}
    settings = {
        "defaults": ("vaelab, defaults", {}, {}, True),
        "closest": (
            "vaelab, closest to Pyro (ReLU RNN, MC KL, its optimiser)",
            pyro_model,
            buckets,
            True,
        ),
        "pyro_padding": ("vaelab, closest, on Pyro's plain shuffle", pyro_model, pyro_train, True),
    }
    if device.startswith("cuda"):
        settings["eager"] = (
            "vaelab, defaults, eager: no graphs, a read per step",
            {},
            {"sync_every": 1},
            False,
        )
    if krishnan:
        model_kw, train_kw = apply_preset("krishnan")
        settings["krishnan"] = (
            "vaelab, --preset krishnan (best flow-free JSB)",
            model_kw,
            train_kw,
            True,
        )
    return settings


class OurTraining:
    """vaelab's DMM trained by ``fit``, one epoch per :meth:`epoch` (each a fresh ``fit`` call
    with the next seed, so each epoch shuffles afresh)."""

    def __init__(
        self,
        train: Data,
        model_kw: dict,
        train_kw: dict,
        seed: int = 0,
        max_batches: int | None = None,
        device: str = "cpu",
        num_iafs: int = 0,
        graphs: bool = True,
    ) -> None:
        self.model_kw, self.num_iafs, self.graphs = model_kw, num_iafs, graphs
        self.train, self.device = train, torch.device(device)
        self.base = {
            **DMM.train_defaults,
            **train_kw,
            "epochs": 1,
            "eval_every": 0,
            "progress": False,
            "device": device,
            "max_steps": max_batches,
        }
        self.restart(seed)

    def restart(self, seed: int) -> None:
        """Fresh weights from ``seed`` (after a divergence, as :class:`PyroTraining`)."""
        torch.manual_seed(seed)
        if self.num_iafs:
            kw = {**self.model_kw, "analytic_kl": False, "num_iafs": self.num_iafs}
            self.model = DMMIAF(build_config(DMMIAFConfig, kw))
        else:
            self.model = DMM(build_config(DMMConfig, self.model_kw))
        self.seed = seed

    def epoch(self) -> tuple[float, float]:
        """One epoch through ``fit``; returns ``(seconds, mean training loss per step)``."""
        config = TrainConfig(**self.base, seed=self.seed)
        self.seed += 1
        graphs, fast.scan.CUDA_GRAPHS = fast.scan.CUDA_GRAPHS, self.graphs  # on CUDA only
        try:
            start = time.perf_counter()
            history = fit(self.model, self.train, None, config)
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            seconds = time.perf_counter() - start
        finally:
            fast.scan.CUDA_GRAPHS = graphs
        losses = [r["loss"] for r in history if r["kind"] == "train"]
        return seconds, sum(losses) / len(losses)


def _resident_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_memory(epoch: Epoch, device: torch.device) -> int | None:
    """Bytes of memory one call of ``epoch`` needs at its peak: on CUDA the allocator's peak
    above what was allocated before; on the CPU (Linux) the peak resident memory, sampled every
    2 ms, above the resident memory at the start (after returning freed memory to the system
    with ``malloc_trim``). None where neither can be read."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        epoch()
        return torch.cuda.max_memory_allocated(device) - before
    if not os.path.exists("/proc/self/statm"):
        return None
    # not glibc: the baseline may include freed memory, and the rise read low
    with contextlib.suppress(OSError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    before = peak = _resident_bytes()
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.wait(0.002):
            peak = max(peak, _resident_bytes())

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        epoch()
    finally:
        done.set()
        sampler.join()
    return max(peak, _resident_bytes()) - before


def vs_pyro(args: argparse.Namespace) -> None:
    """Pyro's DMM and vaelab's in three settings, epochs alternating; see the module doc."""
    try:  # benchmarks/ is on sys.path when run as a script
        from pyro_dmm import PyroTraining, diverged
    except ModuleNotFoundError as e:
        raise SystemExit(f"--vs-pyro needs Pyro ({e}); pip install -e .[bench]") from None
    train, _, _ = load_jsb()
    device = torch.device(args.device)
    runs: dict[str, tuple[str, PyroTraining | OurTraining]] = {
        "pyro": (
            "Pyro examples/dmm.py (Trace_ELBO)",
            PyroTraining(train, args.seed, args.max_batches, device, num_iafs=args.num_iafs),
        )
    }
    for label, (what, model_kw, train_kw, graphs) in our_settings(
        args.device, args.krishnan
    ).items():
        runs[label] = (
            what,
            OurTraining(
                train,
                model_kw,
                train_kw,
                args.seed,
                args.max_batches,
                args.device,
                args.num_iafs,
                graphs,
            ),
        )
    order = list(runs)
    restarts = dict.fromkeys(order, 0)

    def epoch(label: str) -> tuple[float, float]:
        """One epoch of ``label``. A diverged run (the ReLU RNN's failure: NaN, or a loss
        above DIVERGED_LOSS on the way there; in one run a diverging Pyro epoch took 184 s,
        not ~10) restarts from fresh weights and times the epoch again, the diverged one
        discarded."""
        for _ in range(5):
            try:
                seconds, loss_per_step = runs[label][1].epoch()
                print(
                    f"  {label}: {seconds:.3f} s, loss {loss_per_step:.4g} per step",
                    file=sys.stderr,
                    flush=True,
                )  # progress; the table goes to stdout
                if loss_per_step < DIVERGED_LOSS:
                    return seconds, loss_per_step
            except (TrainingDiverged, ValueError) as e:
                if not (isinstance(e, TrainingDiverged) or diverged(e)):
                    raise
            restarts[label] += 1
            runs[label][1].restart(args.seed + 1000 * restarts[label])
        raise SystemExit(f"{label} diverged five times in a row; try another --seed")

    for label in order:  # warm-up: allocations, thread pools, Pyro's first traces
        epoch(label)
    times: dict[str, list[float]] = {label: [] for label in order}
    losses: dict[str, float] = {}
    for r in range(args.epochs):
        for label in order[r % len(order) :] + order[: r % len(order)]:  # rotate the order
            seconds, losses[label] = epoch(label)
            times[label].append(seconds)
    peaks = {label: peak_memory(lambda label=label: epoch(label), device) for label in order}
    batches = "all" if args.max_batches is None else f"at most {args.max_batches}"
    print(
        f"JSB training epoch, mini-batches of 20: {batches}; {torch.get_num_threads()} "
        f"threads, {device}; {args.epochs} epochs each after a warm-up, alternating"
    )
    print(
        f"  {'':58s} {'min':>7s} {'median':>7s} {'max':>7s}  {'peak MB':>8s}  loss/step  restarts"
    )
    medians = {}
    for label in order:
        t = times[label]
        medians[label] = statistics.median(t)
        peak = "n/a" if peaks[label] is None else f"{peaks[label] / 2**20:.0f}"
        print(
            f"  {runs[label][0]:58s} {min(t):7.3f} {medians[label]:7.3f} {max(t):7.3f}  "
            f"{peak:>8s}  {losses[label]:9.3g}  {restarts[label]}"
        )
    print(
        f"  (seconds per epoch; loss: the last timed epoch's annealed -ELBO per observed "
        f"step; restarts: fresh weights after a divergence, NaN or a loss above "
        f"{DIVERGED_LOSS:g}, the ReLU RNN's failure)"
    )
    if "krishnan" in medians:
        epochs = apply_preset("krishnan")[1]["epochs"]
        print(
            f"  projected: --preset krishnan, {epochs} epochs at its median "
            f"{medians['krishnan']:.3f} s = {epochs * medians['krishnan'] / 60:.1f} min of "
            f"training (validation and checkpoints not counted)"
        )
    for label in (*(k for k in order if k not in ("pyro", "defaults")), "defaults"):
        name = "ratio" if label == "defaults" else f"ratio_{label}"
        print(f"{name}={medians['pyro'] / medians[label]:.2f}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=5, help="epochs per path, alternating")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument(
        "--vs-pyro",
        action="store_true",
        help="time Pyro's DMM example against vaelab's (see the module doc)",
    )
    p.add_argument(
        "--epochs",
        type=int,
        default=3,
        help="--vs-pyro: timed epochs of each, after one warm-up epoch",
    )
    p.add_argument(
        "--max-batches",
        type=int,
        default=None,
        help="--vs-pyro: mini-batches per epoch (default: all 12; tests use 1)",
    )
    p.add_argument("--num-iafs", type=int, default=0, help="--vs-pyro: IAFs in both guides")
    p.add_argument("--device", default="cpu", help="--vs-pyro: cpu or cuda")
    p.add_argument(
        "--krishnan",
        action="store_true",
        help="--vs-pyro: also time --preset krishnan and project its wall time",
    )
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    if args.epochs < 1 or (args.max_batches is not None and args.max_batches < 1):
        p.error(
            f"--epochs and --max-batches must be >= 1, got {args.epochs} and {args.max_batches}"
        )
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    if args.vs_pyro:
        vs_pyro(args)
        return

    train, _, _ = load_jsb()
    torch.manual_seed(0)
    model = DMM(DMMConfig())
    defaults = DMM.train_defaults
    optimizer = adam(
        model.parameters(),
        TrainConfig(**defaults),
        torch.device("cpu"),
        weight_decay=per_step_decay(defaults["weight_decay_sum"], train, defaults["batch_size"]),
    )
    batches = list(
        train.batches(defaults["batch_size"], generator=torch.Generator().manual_seed(0))
    )

    def epoch() -> float:
        start = time.perf_counter()
        for batch in batches:
            objective = loss(model.elbo(batch))
            optimizer.zero_grad(set_to_none=True)
            objective.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), defaults["clip_norm"])
            optimizer.step()
        return time.perf_counter() - start

    times: dict[bool, list[float]] = {True: [], False: []}
    epoch()  # warm-up: allocations, thread pools
    for r in range(args.rounds):
        for plain in (True, False) if r % 2 == 0 else (False, True):
            model.fast = not plain  # the readable model file's path, or vaelab.fast
            times[plain].append(epoch())
    fast, plain = statistics.median(times[False]), statistics.median(times[True])
    print(f"JSB epoch, {torch.get_num_threads()} threads, median of {args.rounds}:")
    print(f"  readable (DMM.fast = False)         {plain:6.3f} s")
    print(f"  hand-written backward passes         {fast:6.3f} s   ({plain / fast:.2f}x)")
    print("  target <= 1.5 s; Pyro's example beside it: --vs-pyro")


if __name__ == "__main__":
    main()
