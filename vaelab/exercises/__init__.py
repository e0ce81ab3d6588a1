"""Checkers for the course's exercises: each compares a student's function with the library on
random inputs and, when it disagrees, raises :class:`Mistake` with a message that names the
likely error ("your KL is off by a factor 2: is the 1/2 missing?").

The notebooks follow nbgrader's conventions: the student writes the body between
``### BEGIN SOLUTION`` and ``### END SOLUTION``, and the next cell calls a checker from here.
One module per notebook topic; every checker is importable from ``vaelab.exercises``.
"""

from __future__ import annotations

from vaelab.exercises import (  # noqa: F401  (notebooks 01, 02, 05; 03 and 04)
    distributions,
    flows,
    sequential,
    vae,
)
from vaelab.exercises.common import Mistake, check_close, check_shape

__all__ = ["Mistake", "check_close", "check_shape"]
