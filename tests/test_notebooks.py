"""Every notebook runs top to bottom (small-run setting) as Jupyter runs it (ipykernel's inline
matplotlib backend, not Agg), shows the figures it declares, and is stored without outputs.

Each notebook declares in its metadata how many figures a reader sees
(``metadata["vaelab"]["figures"]``: the number of ``image/png`` outputs of a small run), so a
plot cell that prints ``<Figure size ...>`` instead of drawing fails here."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError, CellTimeoutError

pytestmark = pytest.mark.notebook  # make test runs them; make test-fast does not

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
KERNEL = "vaelab-test-python"
# The small run (VAELAB_SMALL=1) of a notebook takes well under a minute on an idle 2-core CPU;
# three minutes, for one notebook and for any one cell, leaves room for a busy machine and
# still stops a notebook that trains at full size by mistake (or hangs) in a reasonable time.
NOTEBOOK_TIMEOUT_S = 180


@pytest.fixture
def kernel_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """A kernelspec that starts ipykernel with the interpreter running the tests (not whatever
    ``python3`` a user-level kernelspec points to), and the environment the kernel gets."""
    spec = tmp_path / "kernels" / KERNEL
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(
        json.dumps(
            {
                "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
                "display_name": "vaelab tests",
                "language": "python",
            }
        )
    )
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path))  # searched before the user's folders
    python_path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    env = {k: v for k, v in os.environ.items() if k != "MPLBACKEND"}  # ipykernel picks inline
    return {**env, "VAELAB_SMALL": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": python_path}


def count_images(nb: nbformat.NotebookNode) -> int:
    """The ``image/png`` outputs of an executed notebook: the figures a reader sees."""
    return sum(
        "image/png" in out.get("data", {})
        for cell in nb.cells
        if cell.cell_type == "code"
        for out in cell.outputs
    )


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_runs(path: Path, kernel_env: dict[str, str]) -> None:
    nb = nbformat.read(path, as_version=4)
    # a last cell reporting the kernel's interpreter, checked below
    nb.cells.append(nbformat.v4.new_code_cell("import sys; print(sys.executable, end='')"))
    client = NotebookClient(
        nb,
        timeout=NOTEBOOK_TIMEOUT_S,
        kernel_name=KERNEL,
        resources={"metadata": {"path": str(path.parent)}},
    )
    start = time.perf_counter()
    try:
        client.execute(env=kernel_env)
    except CellExecutionError as e:
        pytest.fail(f"{path.name} failed:\n{e}", pytrace=False)
    except CellTimeoutError as e:  # the per-cell limit
        pytest.fail(
            f"{path.name}: a cell ran past {NOTEBOOK_TIMEOUT_S} s in the small run: {e}",
            pytrace=False,
        )
    elapsed = time.perf_counter() - start
    assert elapsed < NOTEBOOK_TIMEOUT_S, (
        f"{path.name}: the small run took {elapsed:.0f} s, over {NOTEBOOK_TIMEOUT_S} s; keep "
        f"VAELAB_SMALL=1 runs short (a few training steps)"
    )
    assert nb.cells[-1].outputs[0]["text"] == sys.executable
    expected = nb.metadata.get("vaelab", {}).get("figures")
    assert expected is not None, f"{path.name}: declare metadata.vaelab.figures"
    shown = count_images(nb)
    assert shown == expected, (
        f"{path.name} shows {shown} figures (image/png outputs), "
        f"declares {expected}; a figure that prints '<Figure ...>' is "
        f"not displayed"
    )
    printed = [
        i
        for i, cell in enumerate(nb.cells)
        if cell.cell_type == "code"
        for out in cell.outputs
        if "<Figure size" in out.get("data", {}).get("text/plain", "")
        and "image/png" not in out.get("data", {})
    ]
    assert not printed, f"{path.name}: cells {printed} print a Figure's repr instead of drawing it"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_stored_without_outputs(path: Path) -> None:
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    dirty = [
        i
        for i, cell in enumerate(nb.cells)
        if cell.cell_type == "code" and (cell.outputs or cell.execution_count is not None)
    ]
    assert not dirty, (
        f"{path.name}: code cells {dirty} hold outputs or execution counts; "
        f"clear them (e.g. jupyter nbconvert --clear-output --inplace {path.name})"
    )


def test_notebooks_found() -> None:
    assert NOTEBOOKS, f"no notebooks under {ROOT / 'notebooks'}"
