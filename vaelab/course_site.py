"""The course as a static site: ``build_site(src, dst, execute=...)`` renders every notebook
to HTML with nbconvert (executed first when asked, with nbclient) and writes an
``index.html`` linking them in course order. A page replaces only a page a site wrote; Ctrl-C
or SIGTERM while a notebook runs says which pages were written.

Command line: ``python -m vaelab course site DIR [--source notebooks] [--no-execute]``.
"""

from __future__ import annotations

import asyncio
import contextlib
import html
import os
import re
import signal
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import nbformat

from vaelab import writes
from vaelab.course import ANSI, _out_folder, _source_dir, _title, read_notebook


def build_site(
    src: str | Path | None,
    dst: str | Path,
    execute: bool = True,
    timeout: int = 600,
    kernel_name: str | None = None,
) -> list[Path]:
    """Render every notebook in ``src`` to ``dst/<name>.html`` and write ``dst/index.html``
    linking them; returns the pages (index first). With ``execute`` each notebook runs first
    (in its own folder, inheriting the environment, so ``VAELAB_SMALL=1`` gives the short
    run); otherwise the stored notebooks are rendered as they are. A failing or timed-out cell
    raises ValueError naming the notebook, with nbclient's report of the cell."""
    from nbconvert import HTMLExporter

    if timeout < 1:
        raise ValueError(f"--timeout must be >= 1 seconds per cell, got {timeout}")
    src, dst = _source_dir(src), _out_folder(dst, "course site", "build/site/")
    notebooks = [(path, read_notebook(path)) for path in sorted(src.glob("*.ipynb"))]
    _check_not_overwriting(dst, ["index.html", *(f"{path.stem}.html" for path, _ in notebooks)])
    with _removed_if_left_empty(dst):  # a failure before the first page leaves no folder
        try:  # after every notebook was read: a bad one leaves no empty folder behind
            dst.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise writes.write_error("course site", dst, err, "nothing was written") from err
        exporter = HTMLExporter()
        pages: list[Path] = []
        entries = []
        stems = [path.stem for path, _ in notebooks]
        with _stopped_as(SiteInterrupted) as pending, _interrupted_site(dst, pages, pending):
            for path, nb in notebooks:
                pending[:] = [path.name]
                if execute:
                    options: dict[str, object] = {"timeout": timeout}
                    if kernel_name:
                        options["kernel_name"] = kernel_name
                    env = {k: v for k, v in os.environ.items() if k != "MPLBACKEND"}  # inline
                    _execute(nb, path, options, env)
                body, _ = exporter.from_notebook_node(nb)
                body = _link_pages(body, stems)
                page = dst / f"{path.stem}.html"
                _write_page(page, body, pages)
                pages.append(page)
                entries.append(
                    f'<li><a href="{html.escape(page.name)}">'
                    f"{html.escape(_title(nb, path.stem))}</a></li>"
                )
            pending[:] = ["index.html"]
            how = "executed when the site was built" if execute else "as stored, without outputs"
            if execute and os.environ.get("VAELAB_SMALL") == "1":
                how += (
                    ", in the short setting (VAELAB_SMALL=1): figures and printed numbers come "
                    "from short runs, not from the full runs the text describes"
                )
            index = dst / "index.html"
            _write_page(
                index,
                '<!DOCTYPE html>\n<html lang="en">\n<head><meta charset="utf-8">'
                "<title>vaelab course</title></head>\n<body>\n<h1>vaelab course</h1>\n"
                "<p>Variational autoencoders, sequential VAEs, deep Markov models and normalizing "
                f"flows in PyTorch. The notebooks in course order ({how}):</p>\n<ol>\n"
                + "\n".join(entries)
                + "\n</ol>\n</body>\n</html>\n",
                pages,
            )
    return [index, *pages]


class SiteInterrupted(KeyboardInterrupt):
    """Ctrl-C (or SIGTERM, ``signum``) while ``course site`` built; once raised through
    :func:`_interrupted_site`, its text says which pages were written and what to do."""

    def __init__(self, signum: int = signal.SIGINT, message: str = "") -> None:
        super().__init__(message)
        self.signum = signum


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


@contextlib.contextmanager
def _stopped_as(error: type[SiteInterrupted]) -> Iterator[list[str]]:
    """Ctrl-C and SIGTERM raise ``error(signum)`` inside the block (the main thread's
    handlers, restored after it); yields a list for the caller's note of what it is doing."""
    if threading.current_thread() is not threading.main_thread():
        yield []
        return

    def stop(signum: int, frame: object) -> None:
        raise error(signum)

    handlers = {s: signal.signal(s, stop) for s in STOP_SIGNALS}
    try:
        yield []
    finally:
        for s, handler in handlers.items():
            signal.signal(s, handler)


@contextlib.contextmanager
def _interrupted_site(dst: Path, pages: list[Path], doing: list[str]) -> Iterator[None]:
    """A :class:`SiteInterrupted` (or Ctrl-C) inside the block, told: the pages written
    so far stay, and the site is incomplete until the command runs again."""
    try:
        yield
    except KeyboardInterrupt as err:
        signum = getattr(err, "signum", signal.SIGINT)
        index = dst / "index.html"
        written = (
            f"{len(pages)} page(s) were written to {dst} ({', '.join(p.name for p in pages)})"
            if pages
            else f"no page was written to {dst}"
        )
        kept = (
            "its previous index.html is unchanged and links the earlier build"
            if index.is_file()
            else "there is no index.html yet"
        )
        raise SiteInterrupted(
            signum,
            f"course site stopped while building {doing[0] if doing else 'the site'}; "
            f"{written}, and {kept}: the site is incomplete. Run the same command again "
            f"to build it whole",
        ) from None


@contextlib.contextmanager
def _removed_if_left_empty(folder: Path):
    """Remove ``folder`` on an error if this block created it and it is still empty."""
    created = not folder.exists()
    try:
        yield
    except BaseException:
        if created:
            with contextlib.suppress(OSError):
                folder.rmdir()  # only when empty: the pages already written stay
        raise


SITE_MARK = "<!-- a page of the vaelab course site (python -m vaelab course site) -->\n"


def _check_not_overwriting(dst: Path, names: list[str]) -> None:
    """A page the build would replace must be one a course site wrote (it begins with
    :data:`SITE_MARK`): a file of the same name that is anything else is refused, untouched."""
    foreign = []
    for name in names:
        path = dst / name
        if path.is_file():
            with open(path, "rb") as f:
                if not f.read(len(SITE_MARK) + 16).startswith(SITE_MARK.encode()):
                    foreign.append(name)
    if foreign:
        raise ValueError(
            f"{dst} holds {', '.join(foreign)}, which a vaelab course site did not write and "
            f"this build would replace; move {'them' if len(foreign) > 1 else 'it'} away, or "
            f"pass another DIR (a new folder, or one a course site was built in)"
        )


def _write_page(page: Path, body: str, written: list[Path]) -> None:
    """One page of the site, atomically, marked as the site's (:data:`SITE_MARK`); a
    WriteError says which pages are complete."""
    done = f"{len(written)} page(s) before it were written" if written else "no page was written"
    index = page.parent / "index.html"
    kept = "the previous index.html is unchanged" if index.is_file() else "no index.html yet"
    writes.write_atomic(
        page,
        SITE_MARK + body,
        "course page",
        survives=f"{writes.previous(page)}; {done}; {kept}",
        then="(or pass another DIR) and run course site again",
    )


def _link_pages(body: str, stems: list[str]) -> str:
    """``body`` with every link to a course notebook (``01_vae_elbo.ipynb``, with or without
    ``#anchor``) pointing to its page (``01_vae_elbo.html``), as the site has no .ipynb."""
    names = "|".join(re.escape(stem) for stem in stems)
    return re.sub(
        rf'href="(?:\./)?({names})\.ipynb(#[^"]*)?"',
        lambda m: f'href="{m.group(1)}.html{m.group(2) or ""}"',
        body,
    )


def _execute(nb: nbformat.NotebookNode, path: Path, options: dict, env: dict) -> None:
    """Run ``nb`` in place. Ctrl-C or SIGTERM meanwhile raises :class:`SiteInterrupted`
    (nbclient stops the kernel on either; our handler, set once the kernel is up, records
    which came), never a failing cell's report."""
    from jupyter_client.kernelspec import NoSuchKernel
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError, CellTimeoutError, DeadKernelError

    got: list[int] = []

    def record(signum: int, frame: object) -> None:
        got.append(signum)  # nbclient's own handler (the loop's) stops the kernel

    def on_start(**_: object) -> None:
        if threading.current_thread() is threading.main_thread():
            for s in STOP_SIGNALS:
                signal.signal(s, record)

    client = NotebookClient(
        nb,
        resources={"metadata": {"path": str(path.parent)}},
        on_notebook_start=on_start,
        **options,
    )
    # nbclient's kernel start can leave its own SIGTERM/SIGINT handlers behind when it fails;
    # the caller's (e.g. fit's Ctrl-C handling later in the same process) come back after it
    handlers = {s: signal.getsignal(s) for s in STOP_SIGNALS}
    # the kernel's own stderr goes to a file: a terminal's Ctrl-C reaches the kernel too, and
    # its traceback is not ours to print; a kernel that dies says its last line from there
    kernel_log = tempfile.TemporaryFile("w+", errors="replace")  # noqa: SIM115 - closed below
    try:
        try:
            client.execute(env=env, stderr=kernel_log)
        except BaseException as err:
            # a signal: ours recorded it, or nbclient's handler began stopping the kernel
            signalled = got or getattr(client, "_async_cleanup_kernel_future", None)
            if signalled or isinstance(err, KeyboardInterrupt):
                raise SiteInterrupted(got[0] if got else signal.SIGINT) from None
            if isinstance(err, asyncio.CancelledError):  # a kernel that died, seen mid-reply
                raise DeadKernelError("the kernel stopped") from None
            raise
        if got:  # the signal came as the last cell ended
            raise SiteInterrupted(got[0])
    except DeadKernelError:
        kernel_log.seek(0)
        last = (kernel_log.read().strip().splitlines() or ["(it printed nothing)"])[-1]
        raise ValueError(
            f"{path.name}: its kernel died while executing for the site (its last line: "
            f"{last}); fix the notebook (memory? a crashing library?), or build with "
            f"--no-execute to render it as stored"
        ) from None
    except NoSuchKernel as err:
        raise ValueError(
            f"{path.name} asks for the Jupyter kernel {err.name!r}, which is not installed; "
            f"install ipykernel in this environment (python -m ipykernel install --user) "
            f"or build with --no-execute"
        ) from None
    except (CellExecutionError, CellTimeoutError) as err:
        raise ValueError(
            f"{path.name} failed while executing for the site; fix the notebook, "
            f"or build with --no-execute to render it as stored:\n"
            f"{re.sub(ANSI, '', str(err))}"
        ) from None
    finally:
        kernel_log.close()
        for s, handler in handlers.items():
            if handler is not None and signal.getsignal(s) is not handler:
                signal.signal(s, handler)


__all__ = ["SITE_MARK", "SiteInterrupted", "build_site"]
