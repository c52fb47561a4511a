"""Writing files and folders so that nothing is ever left half written: a temporary name beside the target, renamed
into place (``os.replace``) once complete, removed on any error.

Every writer of ``llm`` (checkpoints, adapters, tables, bundles, plots) and of the ``llm`` benchmarks goes through
these three helpers. ``llm`` does not import ``theory`` or ``landscape``, so it keeps its own copy of this rule.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["atomic_path", "atomic_write_text", "atomic_dir", "check_writable_dir"]


def _fsync(path: str) -> None:
    """Flush ``path``'s bytes to the disk before the rename, so that a crash cannot leave an empty target."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def atomic_path(path: str, suffix: str = ".tmp") -> Iterator[str]:
    """A temporary file path beside ``path``, renamed to ``path`` when the block ends without an error.

    Parameters
    ----------
    path : str
        The file to write (its folder is created when missing).
    suffix : str
        Ending of the temporary name (a writer that picks its format from the name, e.g. ``.png``, needs it).

    Yields
    ------
    str
        The temporary path to write to; it gets the permissions of a plain ``open()`` (``0o666`` less the umask).

    Raises
    ------
    OSError
        When the folder cannot be created or written. On any error in the block the temporary file is removed and
        ``path`` is left as it was (the old file or nothing), never half written.
    """
    d = os.path.dirname(os.path.abspath(path))
    os.makedirs(d, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=d, prefix=".tmp-", suffix=suffix)
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; the result gets the permissions of a plain open()
    try:
        yield tmp
        _fsync(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def atomic_write_text(path: str, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` through :func:`atomic_path`.

    Raises
    ------
    OSError
        When the folder cannot be created or written (``path`` is then unchanged).
    """
    with atomic_path(path, suffix=os.path.basename(path)) as tmp, open(tmp, "w", encoding="utf-8") as fh:
        fh.write(text)


@contextmanager
def atomic_dir(path: str, prefix: str | None = None) -> Iterator[str]:
    """A temporary folder beside ``path``, put in its place when the block ends without an error.

    An existing ``path`` is first renamed aside and removed only after the new folder is in place, so a kill at
    any moment leaves either the old folder or the new one under ``path``.

    Parameters
    ----------
    path : str
        The folder to write (its parent is created when missing).
    prefix : str, optional
        Start of the temporary folder's name (default ``.tmp-<name of path>-``).

    Yields
    ------
    str
        The temporary folder to fill.

    Raises
    ------
    OSError
        When the parent cannot be created or written. On any error in the block the temporary folder is removed.
    """
    path = os.path.abspath(path)
    parent = os.path.dirname(path)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(dir=parent, prefix=prefix or f".tmp-{os.path.basename(path)}-")
    try:
        yield tmp
        if os.path.exists(path):
            old = tempfile.mkdtemp(dir=parent, prefix=f".tmp-old-{os.path.basename(path)}-")
            os.replace(path, os.path.join(old, "x"))
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def check_writable_dir(path: str, option: str = "--out") -> str:
    """``path`` as a folder to write into, checked before any work (the command lines' rule for ``--out``-like
    options): refused when it is an existing file, or when nothing can be created in it (where it exists) or under its
    nearest existing parent (where it does not).

    Parameters
    ----------
    path : str
        The folder (it need not exist yet; nothing is created).
    option : str
        The option's name, for the message.

    Returns
    -------
    str
        ``path`` unchanged.

    Raises
    ------
    LLMError
        ``"<option> '<path>' ..."`` naming the rule that failed.
    """
    from .config import LLMError

    if os.path.exists(path) and not os.path.isdir(path):
        raise LLMError(f"{option} {path!r} is an existing file; give a folder")
    parent = os.path.abspath(path)  # the folder itself where it exists (it is written into), else its nearest parent
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent) or not os.access(parent, os.W_OK):
        raise LLMError(f"{option} {path!r}: cannot create a folder under {parent!r}")
    try:  # os.access trusts permission bits; a pseudo or read-only file system (/proc) is found only by trying
        with tempfile.TemporaryDirectory(dir=parent):
            pass
    except OSError as exc:
        raise LLMError(f"{option} {path!r}: nothing can be created under {parent!r} ({exc.strerror})") from None
    return path
