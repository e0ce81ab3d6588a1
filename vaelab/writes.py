"""Writes that fail in one sentence: a full disk, a file-size limit (``ulimit -f``) or a
missing permission becomes a :class:`WriteError` naming the file, the reason, the space it
needed and what survives, and no temporary file or half-written line is left behind.

Every file vaelab writes goes through here: checkpoints (:mod:`vaelab.train.checkpoint`), the
run folder's metrics and status (:mod:`vaelab.runs`), the course site and the student release
(:mod:`vaelab.course`). The CLI prints a WriteError's message and exits with 1.

Reads get the other half: :func:`not_a_file` says why a path a user names (a checkpoint, a
data file) cannot be read as a file, before anything opens it.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO


class WriteError(OSError):
    """A file could not be written; ``strerror`` is the whole sentence (what, where, why,
    the space needed, what survives and what to do)."""


def not_a_file(path: Path) -> tuple[type[Exception], str] | None:
    """Why ``path`` cannot be read as a regular file, as ``(exception type, what it is)``, the
    phrase to follow the path in a message; None for a regular file. A device, a pipe or a
    socket is caught here because reading it may never end (``/dev/zero``, a FIFO)."""
    if path.is_symlink() and not path.exists():
        return FileNotFoundError, (
            "is a symbolic link that leads nowhere (its target is missing, or the links form a "
            "loop)"
        )
    if not path.exists():
        return FileNotFoundError, "does not exist"
    if path.is_dir():
        return ValueError, "is a folder"
    if not path.is_file():
        return ValueError, (
            "is not a regular file (a device, a pipe or a socket, which may never end)"
        )
    return None


def reason(err: OSError) -> str:
    """Why ``err`` stopped a write, in words."""
    if err.errno == errno.ENOSPC:
        return "the disk holding it is full"
    if err.errno == errno.EFBIG:
        return "the file is larger than this process may write (ulimit -f)"
    if err.errno == errno.EDQUOT:
        return "the disk quota there is used up"
    return err.strerror or str(err)


def make_room(err: OSError) -> str:
    """The first words of the fix for ``err``: room on the disk, a higher file-size limit,
    or (no permission, no such folder, a read-only disk) a folder this user can write."""
    if err.errno == errno.EFBIG:
        return "Raise the file-size limit (ulimit -f)"
    if err.errno in (errno.ENOSPC, errno.EDQUOT):
        return "Make room there"
    return "Make sure that folder exists and this user may write there"


def write_error(
    what: str,
    path: Path,
    err: OSError,
    survives: str,
    size: int | None = None,
    then: str = "(or choose another folder) and try again",
    cls: type[WriteError] = WriteError,
) -> WriteError:
    """The ``cls`` error for ``err`` while writing ``what`` at ``path``: why, the space it
    needed, what ``survives``, and the fix (:func:`make_room`, then ``then``)."""
    if isinstance(err, WriteError):
        return err
    space = err.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)  # the size matters
    need = f"; it needs {size / 2**20:.2f} MiB" if size is not None and space else ""
    return cls(
        err.errno,
        f"could not write {what} {path}: {reason(err)}{need} ({err}); {survives}. "
        f"{make_room(err)} {then}",
    )


def previous(path: Path) -> str:
    """What survives of ``path`` when a new version of it could not be written."""
    return f"the previous {path.name} is intact" if path.is_file() else f"no {path.name} was there"


def write_atomic(
    path: str | Path,
    data: bytes | str,
    what: str = "file",
    survives: str | None = None,
    then: str = "(or choose another folder) and try again",
    sync: bool = True,
) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder (fsync'd unless
    ``sync`` is False, then ``os.replace``), so a reader sees the old file or the new one, never
    half of one.

    Raises :class:`WriteError` when the write fails; the temporary file is removed and
    ``path`` is unchanged. ``survives`` (default: whether a previous file is intact) and
    ``then`` (after the fix's first words, :func:`make_room`) complete the message.
    """
    path = Path(path)
    raw = data.encode() if isinstance(data, str) else data
    survives = survives or previous(path)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as err:
        raise write_error(what, path, err, survives, len(raw), then) from err
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(raw)
            f.flush()
            if sync:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(err, OSError):
            raise write_error(what, path, err, survives, len(raw), then) from err
        raise


def append(f: BinaryIO, data: bytes, path: Path, what: str, survives: str, then: str) -> None:
    """Append ``data`` (whole lines) to the unbuffered file ``f`` (opened ``"ab"``,
    ``buffering=0``) at ``path``: all of it, or, when the disk is full, nothing (the file is cut
    back to its previous end, so it holds no half line) and a :class:`WriteError`."""
    start = os.fstat(f.fileno()).st_size
    view = memoryview(data)
    try:
        while view:
            written = f.write(view)
            view = view[written or 0 :]
    except OSError as err:
        with contextlib.suppress(OSError):
            os.ftruncate(f.fileno(), start)
        raise write_error(what, path, err, survives, None, then) from err


def append_record(f: BinaryIO, line: str, path: Path) -> None:
    """Append the JSON ``line`` to a run folder's ``metrics.jsonl`` (``f``, at ``path``); a
    full disk raises WriteError saying the file keeps its complete records and which
    checkpoint survives."""
    checkpoint = path.parent / "checkpoint.pt"
    saved = (
        f"the last checkpoint, {checkpoint}, is intact"
        if checkpoint.is_file()
        else "no checkpoint had been written there yet"
    )
    then = (
        f"and resume with --resume {checkpoint}"
        if checkpoint.is_file()
        # records already written make the folder a failed run, which the same command
        # refuses until it is gone
        else f"and run the same command again after removing {path.parent}, or pass another "
        "--out folder"
    )
    survives = f"{path.name} keeps every complete record before this one; {saved}"
    append(f, (line + "\n").encode(), path, "metrics", survives, then)


@contextlib.contextmanager
def new_folder(dst: str | Path, what: str) -> Iterator[Path]:
    """Build the new (or empty) folder ``dst`` in a temporary sibling folder, yielded, that
    becomes ``dst`` when the block ends; when a write fails (or Ctrl-C) the temporary folder is
    removed and ``dst`` is as it was. An ``OSError`` inside the block becomes a
    :class:`WriteError` naming ``what`` and the file (``err.filename``, when it is set), as it
    would have been named in ``dst``."""
    dst = Path(dst)
    parent = dst.parent
    survives = f"nothing was written to {dst} (the partial {what} was removed)"
    try:
        parent.mkdir(parents=True, exist_ok=True)
        tmp = parent / f".{dst.name}.{secrets.token_hex(6)}.tmp"
        tmp.mkdir()  # the umask's permissions, as the folder made in place would have
    except OSError as err:
        raise write_error(what, dst, err, survives) from err
    try:
        yield tmp
        os.replace(tmp, dst)  # onto an empty folder too
    except BaseException as err:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(err, OSError):
            where = dst  # the file that failed, named as it would have been in dst
            if err.filename and Path(err.filename).is_relative_to(tmp):
                where = dst / Path(err.filename).relative_to(tmp)
            named = OSError(err.errno, err.strerror, str(where)) if where != dst else err
            raise write_error(what, where, named, survives) from err
        raise
