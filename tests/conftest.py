from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def _seed():
    """Every test starts from the same random state (CPU runs are reproducible)."""
    torch.manual_seed(0)
    yield
