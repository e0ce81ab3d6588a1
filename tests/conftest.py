from __future__ import annotations

import signal

import pytest
import torch

# The tests use small tensors, for which thread start-up costs more than it saves: one
# intra-op thread makes the suite about 3x faster on a 2-core machine (and keeps parallel jobs
# from oversubscribing the CPU).
torch.set_num_threads(1)


# A suite started in the background by a non-interactive shell (`make test &`, a CI runner's
# job) inherits SIGINT ignored, and Python then installs no KeyboardInterrupt handler, in this
# process or in the processes the tests start. The Ctrl-C tests test what a user's terminal
# gives: Python's default handler here, and (a handled signal is reset to the default on
# exec) the default disposition in every child.
signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture(autouse=True)
def _seed():
    """Every test starts from the same random state (CPU runs are reproducible)."""
    torch.manual_seed(0)
    yield


@pytest.fixture(autouse=True)
def _signal_handlers():
    """Every test leaves SIGINT and SIGTERM as it found them: a notebook kernel's asyncio
    loop (the course tests) installs no-op handlers, and fit's Ctrl-C handling (which takes
    only signals left at their defaults) would then be missing from every later test."""
    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    yield
    for signum, handler in before.items():
        if handler is not None and signal.getsignal(signum) is not handler:  # None: set in C
            signal.signal(signum, handler)
