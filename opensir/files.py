"""Writing local files and directories so that a reader sees the whole old content or the whole new
one, never a torn file, even when the writer is killed mid-write.

A file (:func:`atomic_writer`, :func:`write_atomic`, :func:`copy_atomic`) is written to a
temporary name in its own directory, flushed, fsynced and renamed over the target. A directory
(:func:`atomic_directory`) is filled under a staging name and renamed into place when complete.
On failure the temporary is removed and the target is left as it was.

This is a bottom layer: it imports only the standard library.
"""

from __future__ import annotations

import logging
import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

log = logging.getLogger(__name__)

TEMPORARY_SUFFIX = ".tmp"
"""Ends the name of every temporary file written here, so that listings can leave them out."""

_COPY_CHUNK = 8 << 20


@contextmanager
def atomic_writer(path: Path, *, mode: int = 0o666) -> Iterator[BinaryIO]:
    """A binary handle for the new content of ``path``; when the block ends without an error the
    content is flushed, fsynced and renamed over ``path``.

    The temporary is ``.<name>.<random>.tmp`` next to ``path`` (the same filesystem, so the rename
    is atomic). ``mode`` is the new file's permission bits before the umask: 0o666 makes it as
    ``open(path, "wb")`` would, 0o600 keeps it private to the user. The parent directory must exist.
    """
    temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex[:12]}{TEMPORARY_SUFFIX}")
    # O_EXCL: two writers of the same target never share a temporary.
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), mode)
    try:
        with os.fdopen(fd, "wb") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        _discard(temporary)
        raise


def write_atomic(path: Path, data: bytes, *, mode: int = 0o666) -> None:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_writer`)."""
    with atomic_writer(path, mode=mode) as handle:
        handle.write(data)


def copy_atomic(source: Path, path: Path, *, mode: int = 0o666) -> None:
    """Copy the file ``source`` to ``path`` atomically (see :func:`atomic_writer`), in chunks."""
    with atomic_writer(path, mode=mode) as handle, open(source, "rb") as reader:
        shutil.copyfileobj(reader, handle, length=_COPY_CHUNK)


@contextmanager
def atomic_directory(path: Path) -> Iterator[Path]:
    """An empty staging directory to fill with the new content of the directory ``path``; when the
    block ends without an error, an existing ``path`` is removed and the staging directory renamed
    to it.

    The staging directory is ``.<name>.partial`` next to ``path``; a leftover of an interrupted
    earlier attempt is cleared first, and parent directories are created. The files are not
    fsynced: the directories written this way (downloaded weights, adapters for an in-process
    engine) live in temporary directories that a machine's crash does not leave behind for a reader.
    """
    staging = path.with_name(f".{path.name}.partial")
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir(parents=True)
    try:
        yield staging
        if path.exists():
            shutil.rmtree(path)
        staging.rename(path)
    except BaseException:
        _discard(staging)
        raise


def _discard(temporary: Path) -> None:
    """Remove a temporary after a failed write. A failure to remove it is logged, not raised, so that
    the caller sees the error that interrupted the write; the temporary's name marks it as such."""
    try:
        if temporary.is_dir():
            shutil.rmtree(temporary)
        else:
            temporary.unlink(missing_ok=True)
    except OSError as error:
        log.warning("could not remove the temporary %s after a failed write: %s", temporary, error)
