"""DMM training speed on JSB Chorales: the hand-written backward passes (``elman_rnn`` and the
guide's ``_CombinerScan``) against plain autograd (``nn.RNN`` and the guide's loop), side by side
in one process, epochs alternating, so that both see the same machine load.

    python benchmarks/dmm_speed.py                 # 5 rounds, torch's default threads
    python benchmarks/dmm_speed.py --threads 1 --rounds 3

Each epoch is the model's work only: the ELBO, its backward, clipping and an Adam step over
the 12 mini-batches of 20 chorales with Pyro's settings (``fit`` adds about 0.1-0.2 s of
bookkeeping; ``benchmarks/dmm_jsb.py`` prints the full figure). Target on this 2-core CPU:
<= 1.5 s per epoch; Pyro's example took ~5.3 s here.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from vaelab.data import load_jsb
from vaelab.dmm import DMM, DMMConfig
from vaelab.objectives import loss
from vaelab.train import per_step_decay


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=5, help="epochs per path, alternating")
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)

    train, _, _ = load_jsb()
    torch.manual_seed(0)
    model = DMM(DMMConfig())
    defaults = DMM.train_defaults
    optimizer = torch.optim.Adam(model.parameters(), lr=defaults["lr"],
                                 betas=defaults["betas"], weight_decay=per_step_decay(
                                     defaults["weight_decay_sum"], train, defaults["batch_size"]))
    batches = list(train.batches(defaults["batch_size"], generator=torch.Generator()
                                 .manual_seed(0)))

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
        for plain in ((True, False) if r % 2 == 0 else (False, True)):
            model.plain_loop = plain
            times[plain].append(epoch())
    fast, plain = statistics.median(times[False]), statistics.median(times[True])
    print(f"JSB epoch, {torch.get_num_threads()} threads, median of {args.rounds}:")
    print(f"  plain autograd (nn.RNN, guide loop) {plain:6.3f} s")
    print(f"  hand-written backward passes         {fast:6.3f} s   ({plain / fast:.2f}x)")
    print("  target <= 1.5 s; Pyro's example ~5.3 s on this machine")


if __name__ == "__main__":
    main()
