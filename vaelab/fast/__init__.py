"""Fast paths: the same numbers as the readable model files, computed faster. Engineering, not
teaching; each is on by default and tested equal to the code it replaces (values and
gradients, float64) in ``tests/test_fast.py``.

- :mod:`vaelab.fast.rnn`: the CPU's one-layer Elman RNN with a hand-written backward.
- :mod:`vaelab.fast.scan`: the DMM guide's combiner scan with a hand-written backward, and on
  a GPU that scan replayed from CUDA graphs.
- :mod:`vaelab.fast.dmm`: the DMM's ELBO through both, with shared RNN passes for several guide
  paths and, on the CPU, only the observed steps scored.

The trainer's deferred reads of the metrics on a GPU live with the trainer (``vaelab.train``).
"""

from vaelab.fast import dmm, rnn, scan

__all__ = ["dmm", "rnn", "scan"]
