"""nbgrader's settings for grading the vaelab course (grading mode).

``python -m vaelab course nbgrader DIR`` copies this file into a new course directory next to
``source/<assignment>/<notebook>.ipynb`` (one assignment per notebook, 01 to 05); nbgrader reads
it from the folder it runs in. See docs/instructors.md for the commands.

Grading mode runs every notebook with the short-run setting (``VAELAB_SMALL=1``: a few training
steps instead of the full runs), one torch thread, and a cell timeout that fits those runs.
"""

import os

c = get_config()  # noqa: F821  (nbgrader defines get_config when it reads this file)

# The kernel inherits nbgrader's environment: the short runs, one thread per kernel.
os.environ.setdefault("VAELAB_SMALL", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

c.CourseDirectory.course_id = "vaelab"
c.CourseDirectory.root = os.path.dirname(os.path.abspath(__file__))
# The longest cell of a short run takes a few seconds on an idle 2-core CPU; 120 s leaves room
# for a busy grading machine and still stops a submission that trains at full size or hangs.
c.Execute.timeout = 120
c.Execute.interrupt_on_timeout = True
# Solutions and hidden tests use nbgrader's default markers (### BEGIN SOLUTION, ### BEGIN
# HIDDEN TESTS); mark schemes sit between "=== BEGIN MARK SCHEME ===" lines, which contain
# nbgrader's default "BEGIN MARK SCHEME".
c.ClearSolutions.text_stub = "YOUR ANSWER HERE"
