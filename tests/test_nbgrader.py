"""The course with the real nbgrader: ``course nbgrader`` lays out a course directory,
``nbgrader generate_assignment`` releases every notebook, and ``nbgrader autograde`` and
``generate_feedback`` grade a correct, a wrong and a blank submission of each, in grading mode
(nbgrader_config.py: the short runs). Slow (every submission is executed): the integration
tier, ``pytest -m integration``."""

from __future__ import annotations

import concurrent.futures
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import pytest

from vaelab import course

pytest.importorskip("nbgrader", reason="nbgrader is in the test extra: pip install -e .[test]")

ROOT = Path(__file__).resolve().parent.parent
STUDENTS = ("correct", "wrong", "blank")
# Errors that never come from a student's answer: a cell past grading mode's timeout, a
# missing module. (A wrong answer may break later cells that use it, with any error, as it
# would in the student's own run; those cells carry no points.)
SETUP_ERRORS = {"CellTimeoutError", "ImportError", "ModuleNotFoundError", "DeadKernelError"}

# A typical wrong answer for every autograded exercise, keyed by grade id: each must score 0.
WRONG = {
    "nb01_reparameterize": "return mu + torch.exp(logvar) * eps  # the variance as the scale",
    "nb01_gaussian_kl": "return -0.5 * (1 + logvar - mu**2 - logvar.exp()).sum(dim=1)",
    "nb01_iwae": "return (log_px_z + log_pz - log_qz).mean(dim=0)  # the K-sample ELBO",
    "nb01_annealed_loss": "return -(log_px_z - kl).mean()  # no warm-up",
    # right numbers, by the means the exercise forbids
    "nb02_scale_gradient": (
        "rho = rho.clone().requires_grad_(True)\n"
        "return torch.autograd.grad(Normal(mu, softplus(rho)).log_prob(x)"
        ".sum(), rho)[0]"
    ),
    "nb02_laplace": (  # a Normal where the Laplace belongs
        (
            "self.loc = nn.Parameter(torch.zeros(dim))\n"
            "self.raw_scale = nn.Parameter("
            "torch.full((dim,), math.log(math.expm1(1 - min_scale))))"
            "\nself.min_scale = min_scale"
        ),
        (
            "scale = softplus(self.raw_scale) + self.min_scale\n"
            "return Independent(Normal(self.loc.expand(n, -1), scale.expand(n, -1)), 1)"
        ),
    ),
    "ssm_sequential_elbo": "return ((log_px - kl.sum(-1)) * mask).sum(1)  # 0 * NaN",
    "ssm_elbo": (
        "z, q_z = model.posterior(batch)  # the padding's NaN reaches the emitter\n"
        "log_px = model.emitter(z).log_prob(batch.x)\n"
        "kl = kl_divergence(q_z.base_dist, model.prior(z, batch.a).base_dist)\n"
        "return sequential_elbo(log_px, kl, batch.mask)"
    ),
    "ssm_kalman_step": (
        "S = C @ P @ C.T\nK = P @ C.T @ torch.linalg.inv(S)\n"
        "m_filt = m + K @ (x - C @ m)\nP_filt = P - K @ C @ P\n"
        "return m_filt, P_filt, A @ m_filt + B @ a, A @ P_filt @ A.T + Q"
    ),
    "dmm_reverse": "return x.flip(1)",
    "dmm_elbo": (
        "h_rnn = model.rnn_states(x, mask.sum(dim=1))\n"
        "z_q, z_p = model.z_q_0.expand(len(x), -1), model.z_0.expand(len(x), -1)\n"
        "total = x.new_zeros(len(x))\n"
        "for t in range(x.shape[1]):  # the prior never moves: p(z_t | z_0)\n"
        "    q = model.combiner(z_q, h_rnn[:, t]).base_dist\n"
        "    p = model.transition(z_p).base_dist\n"
        "    z = q.loc + q.scale * noise[:, t]\n"
        "    kl = (torch.log(p.scale / q.scale) + (q.scale**2 + (q.loc - p.loc) ** 2)"
        " / (2 * p.scale**2) - 0.5).sum(-1)\n"
        "    x_t = torch.where(mask[:, t, None], x[:, t], 0.0)\n"
        "    total = total + torch.where(mask[:, t], model.emitter(z).log_prob(x_t)"
        " - kl, 0.0)\n"
        "    z_q = z\n"
        "return total"
    ),
    "dmm_combiner": (
        "h = torch.tanh(z_prev @ W.T + b) + h_rnn  # the 1/2 is missing\n"
        "loc, s = (h @ W_out.T + b_out).chunk(2, dim=-1)\n"
        "return loc, torch.nn.functional.softplus(s) + min_scale"
    ),
    "nb05_coupling_forward": (
        "l = bound * torch.tanh(raw / bound)\nreturn (1 - mask) * z + mask * (z * l.exp() + shift)"
    ),
    "nb05_coupling_log_det": "return ((1 - mask) * bound * torch.tanh(raw / bound)).mean(-1)",
    "nb05_coupling_transform": (  # the inverse removes the shift after the scale
        (
            "shift, raw = self.net(self.mask * z, self.context)\n"
            "return coupling_forward(z, self.mask, shift, raw, self.bound)"
        ),
        (
            "shift, raw = self.net(self.mask * x, self.context)\n"
            "log_scale = self.bound * torch.tanh(raw / self.bound)\n"
            "return self.mask * x + (1 - self.mask) * (x * torch.exp(-log_scale) - shift)"
        ),
        (
            "_, raw = self.net(self.mask * z, self.context)\n"
            "return coupling_log_det(self.mask, raw, self.bound)"
        ),
    ),
    "nb05_flow_log_prob": (
        "z = transform.inv(x)\nreturn base.log_prob(z) - transform.log_abs_det_jacobian(x, z)"
    ),
}


def solution_bodies(source: str) -> list[list[str]]:
    """The lines between each pair of solution markers of a source cell."""
    lines = source.split("\n")
    return [
        lines[start + 1 : stop]
        for start, stop in course._between(
            lines, course.BEGIN_SOLUTION, course.END_SOLUTION, "cell"
        )
    ]


def fill(
    release: nbformat.NotebookNode, source: nbformat.NotebookNode, kind: str
) -> nbformat.NotebookNode:
    """A submission: the released notebook with every stub replaced by the solution
    (``correct``), by the typical mistake in ``WRONG`` (``wrong``), or left as released
    (``blank``)."""
    nb = nbformat.from_dict(release)
    if kind == "blank":
        return nb
    solutions = {
        c.metadata["nbgrader"]["grade_id"]: c.source
        for c in source.cells
        if c.metadata.get("nbgrader", {}).get("solution")
    }
    for cell in nb.cells:
        meta = cell.metadata.get("nbgrader", {})
        if not meta.get("solution"):
            continue
        bodies = solution_bodies(solutions[meta["grade_id"]])
        if kind == "wrong" and cell.cell_type == "code":
            wrong = WRONG[meta["grade_id"]]
            wrong = (wrong,) if isinstance(wrong, str) else wrong
            bodies = [
                [re.match(r"\s*", body[0]).group(0) + line for line in text.split("\n")]
                for body, text in zip(bodies, wrong, strict=True)
            ]
        lines = cell.source.split("\n")
        stubs = [
            i
            for i, line in enumerate(lines)
            if line.strip() in ("# YOUR CODE HERE", "YOUR ANSWER HERE")
        ]
        assert len(stubs) == len(bodies), meta["grade_id"]
        for i, body in reversed(list(zip(stubs, bodies, strict=False))):
            end = i + (2 if cell.cell_type == "code" else 1)
            lines[i:end] = body
        cell.source = "\n".join(lines)
    return nb


@pytest.fixture
def grading_env(tmp_path: Path) -> dict[str, str]:
    """nbgrader's environment: the test's interpreter on PATH (nbgrader runs ``alembic``), a
    ``python3`` kernelspec starting that interpreter, vaelab importable from this checkout."""
    spec = tmp_path / "jupyter" / "kernels" / "python3"
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(
        json.dumps(
            {
                "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
                "display_name": "Python 3",
                "language": "python",
            }
        )
    )
    env = {k: v for k, v in os.environ.items() if k not in ("MPLBACKEND", "VAELAB_SMALL")}
    python_path = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    return {
        **env,
        "JUPYTER_PATH": str(tmp_path / "jupyter"),
        "PYTHONPATH": python_path,
        "PATH": os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")]),
    }


def nbgrader(args: list[str], cwd: Path, env: dict[str, str]) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "nbgrader", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    log = done.stdout + done.stderr
    assert done.returncode == 0 and "ERROR" not in log, f"nbgrader {' '.join(args)}:\n{log}"
    return log


def errors(nb: nbformat.NotebookNode) -> list[tuple[int, str, bool]]:
    """``(cell index, error name, graded test cell?)`` for every error output."""
    return [
        (i, out.get("ename", "?"), bool(c.metadata.get("nbgrader", {}).get("grade")))
        for i, c in enumerate(nb.cells)
        if c.cell_type == "code"
        for out in c.get("outputs", [])
        if out.get("output_type") == "error"
    ]


def _grade(root: Path, names: tuple[str, ...], env: dict[str, str]) -> tuple[set, dict]:
    """One instructor's course directory: release ``names``, hand in the three submissions
    of each, autograde them and write the feedback. Returns the graded ids of the sources and
    the seconds of each autograde."""
    course.nbgrader_course(root)
    assert (root / "nbgrader_config.py").read_text() == (ROOT / "nbgrader_config.py").read_text()
    graded_ids = set()
    for name in names:
        nbgrader(["generate_assignment", name], root, env)
        release = nbformat.read(root / "release" / name / f"{name}.ipynb", as_version=4)
        source = nbformat.read(root / "source" / name / f"{name}.ipynb", as_version=4)
        text = "\n".join(c.source for c in release.cells)
        for marker in ("BEGIN SOLUTION", "BEGIN HIDDEN TESTS", "BEGIN MARK SCHEME", "_want"):
            assert marker not in text, f"{name}: the release holds {marker!r}"
        graded_ids |= {
            c.metadata["nbgrader"]["grade_id"]
            for c in source.cells
            if c.metadata.get("nbgrader", {}).get("solution") and c.cell_type == "code"
        }
        for student in STUDENTS:
            folder = root / "submitted" / student / name
            folder.mkdir(parents=True)
            nbformat.write(fill(release, source, student), folder / f"{name}.ipynb")
    seconds = {}
    for name in names:
        for student in STUDENTS:
            start = time.perf_counter()
            nbgrader(["autograde", name, "--student", student], root, env)
            seconds[name, student] = time.perf_counter() - start
        nbgrader(["generate_feedback", name], root, env)
    return graded_ids, seconds


@pytest.mark.integration
def test_nbgrader_grades_correct_wrong_and_blank(
    tmp_path: Path, grading_env: dict[str, str]
) -> None:
    # two course directories graded side by side, as two instructors on one server would: a
    # grading kernel uses one thread (nbgrader_config.py), so two cores halve the wait. The
    # split balances the measured autograde times (01+05 against 02+03+04)
    first, *middle, last = course.ASSIGNMENTS
    shares = {tmp_path / "course_a": (first, last), tmp_path / "course_b": tuple(middle)}
    with concurrent.futures.ThreadPoolExecutor(len(shares)) as pool:
        done = list(pool.map(lambda share: _grade(*share, grading_env), shares.items()))
    graded_ids = set().union(*(ids for ids, _ in done))
    assert graded_ids == set(WRONG), "every autograded exercise has a typical wrong answer"
    print(
        "autograde seconds per submission:",
        {f"{n[:2]} {s}": round(t, 1) for _, sec in done for (n, s), t in sec.items()},
    )

    for root, names in shares.items():
        _check_grades(root, names)


def _check_grades(root: Path, names: tuple[str, ...]) -> None:
    """The gradebook's scores (all or nothing by submission) and the feedback of ``names``."""
    from nbgrader.api import Gradebook

    with Gradebook(f"sqlite:///{root / 'gradebook.db'}") as gb:
        for name in names:
            for student in STUDENTS:
                sub = gb.find_submission_notebook(name, name, student)
                auto = [g for g in sub.grades if g.auto_score is not None]
                points = sum(g.max_score for g in auto)
                score = sum(g.auto_score for g in auto)
                assert points > 0, f"{name}: no autograded points"
                expected = points if student == "correct" else 0
                assert score == expected, (
                    f"{name}, {student} submission: {score} of {points} "
                    f"autograded points, expected {expected}"
                )

    for name in names:
        for student in STUDENTS:
            graded = nbformat.read(
                root / "autograded" / student / name / f"{name}.ipynb", as_version=4
            )
            found = errors(graded)
            if student == "correct":
                assert not found, f"{name}: the correct submission's feedback has errors {found}"
            else:
                first_graded = min(
                    i
                    for i, c in enumerate(graded.cells)
                    if c.metadata.get("nbgrader", {}).get("grade")
                )
                assert any(in_test for _, _, in_test in found), name
                setup = [e for e in found if e[1] in SETUP_ERRORS or e[0] < first_graded]
                assert not setup, (
                    f"{name}, {student}: errors that are not the student's answer failing: {setup}"
                )
            html = root / "feedback" / student / name / f"{name}.html"
            assert html.is_file(), f"no feedback for {student} on {name}"
            if student == "correct":
                # the page's CSS names pygments' "Generic.Traceback" style; look past it
                page = re.sub(r"<style.*?</style>", "", html.read_text(), flags=re.DOTALL)
                assert "Traceback" not in page, f"{name}: error in feedback"
