from __future__ import annotations

import pytest
import torch

# The tests use small tensors, for which thread start-up costs more than it saves: one
# intra-op thread makes the suite about 3x faster on a 2-core machine (and keeps parallel jobs
# from oversubscribing the CPU).
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed():
    """Every test starts from the same random state (CPU runs are reproducible)."""
    torch.manual_seed(0)
    yield
