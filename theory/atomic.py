"""Atomic file writes, shared by ``theory``, ``landscape`` and the benchmarks (standard library only).

A file is written to a temporary name beside its target, flushed to disk (``os.fsync``) and renamed over the target
(``os.replace``, atomic on POSIX and Windows within one file system); on any error, Ctrl-C included, the temporary
file is removed. A reader therefore sees the old file or the whole new one, never a half-written one.

>>> import os, tempfile
>>> path = os.path.join(tempfile.mkdtemp(), "out", "a.txt")
>>> atomic_write_text(path, "done\\n")
>>> open(path).read(), sorted(os.listdir(os.path.dirname(path)))
('done\\n', ['a.txt'])
"""

from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager

__all__ = ["atomic_path", "atomic_write_text", "atomic_write_bytes"]


@contextmanager
def atomic_path(path: str, suffix: str = ".tmp"):
    """Yield a temporary path beside ``path`` (its folder created) for the caller to write; on success the file is
    fsynced and renamed to ``path``, on any error removed.

    The temporary file gets the permissions a plain ``open()`` would give (``mkstemp`` makes it 0600).

    Raises
    ------
    OSError
        The folder cannot be created or written (the caller's exception passes through unchanged).
    """
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=parent, prefix=".tmp-", suffix=suffix)
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    try:
        yield tmp
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def atomic_write_bytes(path: str, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (:func:`atomic_path`)."""
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        fh.write(data)


def atomic_write_text(path: str, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically (:func:`atomic_path`)."""
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as fh:
        fh.write(text)
