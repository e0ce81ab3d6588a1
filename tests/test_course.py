"""The student release (nbgrader's markers) and the static site of the course."""

from __future__ import annotations

import re
from html.parser import HTMLParser
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from tests.test_notebooks import KERNEL, NOTEBOOKS, kernel_env  # noqa: F401  (fixture)
from vaelab import course, course_site
from vaelab.__main__ import main

ROOT = Path(__file__).resolve().parent.parent
new_code, new_markdown = nbformat.v4.new_code_cell, nbformat.v4.new_markdown_cell


def solution_bodies(nb: nbformat.NotebookNode) -> list[list[str]]:
    """The stripped non-blank lines between each pair of solution markers."""
    bodies = []
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        lines = cell.source.split("\n")
        for start, stop in course._between(
            lines, course.BEGIN_SOLUTION, course.END_SOLUTION, "test"
        ):
            bodies.append([s.strip() for s in lines[start + 1 : stop] if s.strip()])
    return bodies


def solution_bodies_of(source: str) -> list[set[str]]:
    lines = source.split("\n")
    return [
        {s.strip() for s in lines[a + 1 : b] if len(s.strip()) > 12}
        for a, b in course._between(lines, course.BEGIN_SOLUTION, course.END_SOLUTION, "t")
    ]


def toy_notebook() -> nbformat.NotebookNode:
    nb = nbformat.v4.new_notebook()
    code = new_code(
        "def square(x):\n    ### BEGIN SOLUTION\n    y = x * x  # secret\n"
        "    return y\n    ### END SOLUTION\n\nprint(square)"
    )
    code.outputs = [nbformat.v4.new_output("stream", text="<function square>")]
    code.execution_count = 3
    nb.cells = [
        new_markdown(
            "# Toy\n\nWhy?\n=== BEGIN MARK SCHEME ===\nBecause 42.\n=== END MARK SCHEME ===\nEnd."
        ),
        code,
        new_code("assert square(3) == 9"),
    ]
    return nb


def test_release_replaces_solutions_and_mark_schemes(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    nbformat.write(toy_notebook(), src / "toy.ipynb")
    nbformat.write(nbformat.v4.new_notebook(cells=[new_markdown("# Plain")]), src / "plain.ipynb")
    written = course.release(tmp_path / "out", src)
    assert [p.name for p in written] == ["plain.ipynb", "toy.ipynb"]
    student = nbformat.read(tmp_path / "out" / "toy.ipynb", as_version=4)
    assert student.cells[0].source == "# Toy\n\nWhy?\nEnd."
    assert student.cells[1].source == (
        "def square(x):\n    # YOUR CODE HERE\n    raise NotImplementedError()\n\nprint(square)"
    )
    assert student.cells[1].outputs == [] and student.cells[1].execution_count is None
    assert student.cells[2].source == "assert square(3) == 9"  # test cells stay
    plain = nbformat.read(tmp_path / "out" / "plain.ipynb", as_version=4)
    assert plain.cells[0].source == "# Plain"
    readme = (tmp_path / "out" / "README.md").read_text()
    assert "`toy.ipynb`: Toy (1 exercise(s))" in readme and "student" in readme
    # the source is left alone
    assert "secret" in nbformat.read(src / "toy.ipynb", as_version=4).cells[1].source


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("### BEGIN SOLUTION\nx = 1", "never closed"),
        ("x = 1\n### END SOLUTION", "without a '### BEGIN SOLUTION'"),
        ("### BEGIN SOLUTION\n### BEGIN SOLUTION\n### END SOLUTION", "before the"),
        ("x = 1  # === BEGIN MARK SCHEME ===\n=== BEGIN MARK SCHEME ===", "marker in a code cell"),
    ],
)
def test_unbalanced_markers_are_errors(tmp_path: Path, source: str, message: str) -> None:
    src = tmp_path / "src"
    src.mkdir()
    nbformat.write(nbformat.v4.new_notebook(cells=[new_code(source)]), src / "bad.ipynb")
    with pytest.raises(ValueError, match=f"bad.ipynb, cell 0: .*{re.escape(message)}"):
        course.release(tmp_path / "out", src)
    assert not (tmp_path / "out").exists()  # nothing written


def test_release_refuses_bad_folders(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist; pass --source"):
        course.release(tmp_path / "out", tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no .ipynb notebooks"):
        course.release(tmp_path / "out", tmp_path / "empty")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x.txt").write_text("keep me")
    with pytest.raises(ValueError, match="exists and is not empty"):
        course.release(tmp_path / "full")
    assert main(["course", "release", str(tmp_path / "full")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: release folder") and "Traceback" not in err


def test_release_of_the_course_holds_no_solution_code(tmp_path: Path) -> None:
    assert main(["course", "release", str(tmp_path / "release")]) == 0
    total = 0
    for path in NOTEBOOKS:
        solution = nbformat.read(path, as_version=4)
        student_path = tmp_path / "release" / path.name
        student = nbformat.read(student_path, as_version=4)
        text = "\n".join(c.source for c in student.cells)
        markers = {
            course.BEGIN_SOLUTION,
            course.END_SOLUTION,
            course.BEGIN_SCHEME,
            course.END_SCHEME,
            course.BEGIN_HIDDEN,
            course.END_HIDDEN,
        }
        assert not markers & {line.strip() for line in text.split("\n")}, path.name
        assert "check_untouched" not in text and "_want" not in text, path.name  # hidden tests
        bodies = solution_bodies(solution)
        total += len(bodies)
        assert text.count("raise NotImplementedError()") >= len(bodies)
        student_lines = {s.strip() for s in text.split("\n")}
        for body in bodies:
            # each solution body's distinctive lines (not a bare `return`) are gone
            distinctive = [line for line in body if len(line) > 12 and line != "return z"]
            assert distinctive, f"{path.name}: a solution body too short to check"
            survived = [line for line in distinctive if line in student_lines]
            assert not survived, f"{path.name}: solution lines survive the release: {survived}"
        for cell in solution.cells:  # nor the mark schemes, nor written answers (02's derivation)
            if cell.cell_type != "markdown":
                continue
            if cell.metadata.get("nbgrader", {}).get("solution"):
                for body in solution_bodies_of(cell.source):
                    assert not set(body) & student_lines, path.name
            lines = cell.source.split("\n")
            for start, stop in course._between(
                lines, course.BEGIN_SCHEME, course.END_SCHEME, "test"
            ):
                answer = [s.strip() for s in lines[start + 1 : stop] if len(s.strip()) > 12]
                assert answer and not set(answer) & student_lines, path.name
    # notebooks 01 and 02 hold exercises at least
    assert total >= 4


EXERCISE_NOTEBOOKS = [p for p in NOTEBOOKS if solution_bodies(nbformat.read(p, as_version=4))]


def test_the_graded_notebooks_and_only_they_hold_exercises() -> None:
    # every notebook but the map and 06 (an extension without a graded exercise) is an
    # nbgrader assignment, and each assignment holds exercises
    assert [p.name for p in EXERCISE_NOTEBOOKS] == [f"{name}.ipynb" for name in course.ASSIGNMENTS]
    ungraded = {p.stem for p in NOTEBOOKS} - set(course.ASSIGNMENTS)
    assert ungraded == {"00_start_here", "06_beyond_the_dmm"}


@pytest.mark.integration  # a process of its own: make test, not test-fast
@pytest.mark.parametrize("path", EXERCISE_NOTEBOOKS, ids=lambda p: p.name)
def test_released_notebook_stops_at_its_first_exercise(
    path: Path,
    tmp_path: Path,
    kernel_env: dict[str, str],  # noqa: F811
) -> None:
    """The student release runs as a student runs it: every cell before the first exercise
    works, the exercise's own cell (the stub) defines the function, and its test cell fails
    with the checker's instruction, naming the function to write."""
    src = tmp_path / "src"
    src.mkdir()
    (src / path.name).write_bytes(path.read_bytes())
    course.release(tmp_path / "release", src)
    nb = nbformat.read(tmp_path / "release" / path.name, as_version=4)
    first = next(i for i, c in enumerate(nb.cells) if "raise NotImplementedError()" in c.source)
    function = re.search(r"def (\w+)\(", nb.cells[first].source).group(1)
    test_cell = next(i for i in range(first + 1, len(nb.cells)) if nb.cells[i].cell_type == "code")
    assert re.search(rf"check_\w+\({function}\)", nb.cells[test_cell].source), (
        f"{path.name}: the cell after {function}'s exercise does not check it"
    )
    nb.cells = nb.cells[: test_cell + 1]  # up to the first exercise's test cell
    client = NotebookClient(
        nb,
        timeout=120,
        kernel_name=KERNEL,
        allow_errors=True,
        resources={"metadata": {"path": str(path.parent)}},
    )
    client.execute(env=kernel_env)
    errors = {
        i: o
        for i, c in enumerate(nb.cells)
        if c.cell_type == "code"
        for o in c.outputs
        if o.output_type == "error"
    }
    assert list(errors) == [test_cell], f"{path.name}: errors in cells {list(errors)}"
    assert errors[test_cell]["ename"] == "NotImplementedError"
    assert errors[test_cell]["evalue"].startswith(
        f"{function} is not written yet: in its cell, replace the two lines"
    ), errors[test_cell]["evalue"]


class Links(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.links: list[str] = []

    def handle_starttag(self, tag: str, attrs: list) -> None:
        if tag == "a":
            self.links += [v for k, v in attrs if k == "href"]


@pytest.mark.integration  # a process of its own: make test, not test-fast
def test_site_builds_with_an_index_linking_every_notebook(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    # rendered as stored (no execution): test_notebooks executes them already
    assert main(["course", "site", str(tmp_path / "site"), "--no-execute"]) == 0
    index = tmp_path / "site" / "index.html"
    parser = Links()
    parser.feed(index.read_text())
    assert parser.links == [f"{p.stem}.html" for p in NOTEBOOKS]
    pages = {f"{p.stem}.html" for p in NOTEBOOKS}
    for path in NOTEBOOKS:
        page = (tmp_path / "site" / f"{path.stem}.html").read_text()
        title = course._title(nbformat.read(path, as_version=4), path.stem)
        assert "<html" in page and title.split("·")[-1].strip() in page
        # links between notebooks lead to their pages (the site holds no .ipynb)
        links = Links()
        links.feed(page)
        local = [href for href in links.links if not re.match(r"[a-z]+:|#", href)]
        assert not [h for h in local if ".ipynb" in h], (path.name, local)
        assert {h.split("#")[0] for h in local} <= pages, (path.name, local)
    assert "notebook pages" in capsys.readouterr().out
    assert (
        'href="03_sequential_vae.html"'
        in (tmp_path / "site" / "02_learnable_distributions.html").read_text()
    )
    assert (
        'href="00_start_here.html#Notation"'
        in (tmp_path / "site" / "01_vae_elbo.html").read_text()
    )


@pytest.mark.integration  # a process of its own: make test, not test-fast
def test_site_executes_notebooks_and_reports_a_failing_one(
    tmp_path: Path,
    kernel_env: dict[str, str],  # noqa: F811  (the kernelspec)
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("VAELAB_SMALL", raising=False)
    src = tmp_path / "src"
    src.mkdir()
    nbformat.write(
        nbformat.v4.new_notebook(
            cells=[new_markdown("# Sums"), new_code("print(sum(range(1234)))")]
        ),
        src / "a.ipynb",
    )
    pages = course_site.build_site(
        src, tmp_path / "site", execute=True, timeout=60, kernel_name=KERNEL
    )
    assert [p.name for p in pages] == ["index.html", "a.html"]
    assert str(sum(range(1234))) in pages[1].read_text()  # the executed output is rendered
    assert "executed when the site was built" in pages[0].read_text()
    assert "short setting" not in pages[0].read_text()
    monkeypatch.setenv("VAELAB_SMALL", "1")  # `make site VAELAB_SMALL=1`: the index says so
    small = course_site.build_site(
        src, tmp_path / "small", execute=True, timeout=60, kernel_name=KERNEL
    )
    assert "short setting (VAELAB_SMALL=1)" in small[0].read_text()
    nbformat.write(nbformat.v4.new_notebook(cells=[new_code("1 / 0")]), src / "b.ipynb")
    with pytest.raises(
        ValueError, match="(?s)b.ipynb failed while executing.*ZeroDivisionError: division by zero"
    ):
        course_site.build_site(
            src, tmp_path / "site2", execute=True, timeout=60, kernel_name=KERNEL
        )


def test_release_removes_hidden_tests_and_written_answers() -> None:
    code = (
        "check(f)\n### BEGIN HIDDEN TESTS\nassert f(2) == 4  # secret\n"
        "### END HIDDEN TESTS\nprint('ok')"
    )
    assert course.strip_solutions(code) == "check(f)\nprint('ok')"
    nb = nbformat.v4.new_notebook(
        cells=[
            new_markdown("**Derivation.**\n\n### BEGIN SOLUTION\nd/dx x^2 = 2x\n### END SOLUTION")
        ]
    )
    student, replaced = course.student_version(nb)
    assert student.cells[0].source == "**Derivation.**\n\nYOUR ANSWER HERE" and replaced == 1
    bad = nbformat.v4.new_notebook(
        cells=[new_code("x = 1\n=== BEGIN MARK SCHEME ===\n=== END MARK SCHEME ===")]
    )
    with pytest.raises(ValueError, match="mark schemes belong in markdown task cells"):
        course.student_version(bad)


def test_nbgrader_course_layout(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["course", "nbgrader", str(tmp_path / "c")]) == 0
    assert "next: cd" in capsys.readouterr().out
    root = tmp_path / "c"
    assert sorted(p.name for p in (root / "source").iterdir()) == list(course.ASSIGNMENTS)
    for name in course.ASSIGNMENTS:  # the solution notebook, unchanged, one per assignment
        copied = nbformat.read(root / "source" / name / f"{name}.ipynb", as_version=4)
        original = nbformat.read(ROOT / "notebooks" / f"{name}.ipynb", as_version=4)
        assert [c.source for c in copied.cells] == [c.source for c in original.cells]
    config = (root / "nbgrader_config.py").read_text()
    assert 'os.environ.setdefault("VAELAB_SMALL", "1")' in config
    assert "c.Execute.timeout = 120" in config
    # a second layout into the same folder would overwrite an instructor's gradebook
    assert main(["course", "nbgrader", str(root)]) == 2
    assert "exists and is not empty" in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="no .ipynb notebooks"):
        course.nbgrader_course(tmp_path / "c2", empty)
    nbformat.write(nbformat.v4.new_notebook(), empty / "01_vae_elbo.ipynb")
    with pytest.raises(ValueError, match="lacks 02_learnable_distributions.ipynb"):
        course.nbgrader_course(tmp_path / "c3", empty)


def test_every_graded_cell_carries_nbgrader_metadata() -> None:
    # nbgrader refuses solution regions outside solution cells and mark schemes outside task
    # cells; every test cell is locked, worth points and holds hidden tests
    for path in NOTEBOOKS:
        nb = nbformat.read(path, as_version=4)
        ids = []
        for cell in nb.cells:
            meta = cell.metadata.get("nbgrader", {})
            text = cell.source
            if course.BEGIN_SOLUTION in text:
                assert meta.get("solution"), f"{path.name}: solution region, no solution cell"
            if "BEGIN MARK SCHEME" in text:
                assert meta.get("task"), f"{path.name}: mark scheme outside a task cell"
            if meta.get("grade") and not meta.get("solution"):
                assert meta["locked"] and meta["points"] > 0, path.name
                assert course.BEGIN_HIDDEN in text and "check_untouched()" in text, path.name
            if meta:
                ids.append(meta["grade_id"])
        assert len(ids) == len(set(ids)), f"{path.name}: duplicate grade ids"


def test_site_failing_on_its_first_page_leaves_no_empty_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Under ``ulimit -f`` the first page cannot be written: the folder course site made for it
    is removed again (it was left empty); a folder that was there before is left alone."""
    src = tmp_path / "src"
    src.mkdir()
    nbformat.write(nbformat.v4.new_notebook(cells=[new_markdown("# A")]), src / "a.ipynb")

    def too_big(page, body, written):
        raise OSError(27, "File too large", str(page))

    monkeypatch.setattr(course_site, "_write_page", too_big)
    with pytest.raises(OSError, match="File too large"):
        course_site.build_site(src, tmp_path / "site", execute=False)
    assert not (tmp_path / "site").exists()
    (tmp_path / "mine").mkdir()
    with pytest.raises(OSError, match="File too large"):
        course_site.build_site(src, tmp_path / "mine", execute=False)
    assert (tmp_path / "mine").is_dir()
