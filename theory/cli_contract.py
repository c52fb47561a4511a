"""The command-line contract of ``python -m theory`` and ``python -m landscape`` (also used by the benchmark scripts).

Exit statuses:

- 0: done;
- 1: a check failed (``theory verify``: some theorem check did not pass);
- 2: bad input: one line ``error: ...`` naming the value and the rule, nothing written; argparse's own refusals
  (unknown option, malformed number) are one line too (:class:`OneLineParser`);
- 3: a run stopped early because a worker process died (``landscape search``): finished work is kept, and running
  the same command again resumes;
- 130: interrupted (Ctrl-C / SIGINT): one line, no traceback, nothing half-written;
- 141: the reader of the output went away (``... | head``): no message, as if killed by SIGPIPE.

This module imports only the standard library (``ProblemError``, which needs NumPy, is imported when first used), so
that a command's heavy imports happen inside :func:`run_command`, where a Ctrl-C is caught too.

Every option is validated before any work: numbers by the argparse types below, output paths by
:func:`check_output_file` / :func:`check_output_dir` (which refuse a folder given for a file, a file given for a
folder, and a place where nothing can be created, naming the value given on the command line). The error root of
``theory`` is :class:`theory.problem.ProblemError`; ``landscape`` raises the same root (its
``CertificateError`` derives from it), and :func:`run_command` turns it into exit status 2.

The integer rules are written once, in :func:`require_int` (values given in Python: an integer, ``numbers.Integral``
such as ``numpy.int64``, but not ``bool``) and in :func:`positive_int` / :func:`nonneg_int` (the same rules for text
given on the command line), with the same wording.

>>> positive_int("3"), nonneg_int("0"), require_int("runs", 5)
(3, 0, 5)
"""

from __future__ import annotations

import argparse
import numbers
import os
import signal
import sys
import tempfile
import threading
from contextlib import contextmanager

__all__ = ["EXIT_OK", "EXIT_FAIL", "EXIT_USAGE", "EXIT_STOPPED", "EXIT_INTERRUPTED", "EXIT_PIPE", "OneLineParser",
           "positive_int", "nonneg_int", "require_int", "check_output_file", "check_output_dir", "check_memory",
           "physical_memory", "deferred_sigint", "run_command"]

EXIT_OK, EXIT_FAIL, EXIT_USAGE, EXIT_STOPPED, EXIT_INTERRUPTED, EXIT_PIPE = 0, 1, 2, 3, 130, 141


class OneLineParser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose refusals are one line (``prog: error: message``, no usage block), exit status 2."""

    def error(self, message):
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def _refuse(message: str):
    from .problem import ProblemError

    return ProblemError(message)


def _int_rule(minimum: int) -> str:
    return "a positive integer (> 0)" if minimum == 1 else f"an integer >= {minimum}"


def _shown(value) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def require_int(name: str, value, *, minimum: int = 1, allow_none: bool = False) -> int | None:
    """``value`` as a Python ``int`` after checking that it is an integer (``numbers.Integral``, so NumPy integers
    too, but not ``bool``) and at least ``minimum``; ``None`` passes through when ``allow_none``.

    Parameters
    ----------
    name : str
        What the value is, for the message (``"d"``, ``"the adapter rank r"``).
    value : object
        The value to check.
    minimum : int, optional
        The smallest allowed value (default 1: a positive integer).
    allow_none : bool, optional
        Whether ``None`` is allowed (and returned as is).

    Returns
    -------
    int or None
        ``int(value)``, or ``None`` when ``value is None`` and ``allow_none``.

    Raises
    ------
    ProblemError
        ``"<name> must be a positive integer (> 0), got <value>"`` (or ``an integer >= <minimum>``, with ``(or
        None)`` when ``allow_none``) for a non-integer, a ``bool`` or a value below ``minimum``.

    >>> require_int("seed", None, minimum=0, allow_none=True) is None
    True
    """
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        rule = _int_rule(minimum) + (" (or None)" if allow_none else "")
        shown = int(value) if isinstance(value, numbers.Integral) and not isinstance(value, bool) else _shown(value)
        raise _refuse(f"{name} must be {rule}, got {shown}")
    return int(value)


def _int(text: str, minimum: int) -> int:
    rule = _int_rule(minimum)
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be {rule}, got {text!r}") from None
    if v < minimum:
        raise argparse.ArgumentTypeError(f"must be {rule}, got {v}")
    return v


def positive_int(text: str) -> int:
    """argparse type: an integer > 0 (the rule of :func:`require_int` for command-line text)."""
    return _int(text, 1)


def nonneg_int(text: str) -> int:
    """argparse type: an integer >= 0 (the rule of :func:`require_int` with ``minimum=0``)."""
    return _int(text, 0)


def _probe(option: str, value: str, folder: str) -> None:
    """Create and delete a temporary file in the existing ``folder``: the only test of writability that also holds
    for root, read-only mounts and pseudo file systems."""
    try:
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=".probe-")
    except OSError as exc:
        raise _refuse(f"{option} {value!r}: cannot create files in {folder!r} ({exc.strerror or exc})") from None
    os.close(fd)
    os.unlink(tmp)


def _nearest_existing(path: str) -> str:
    here = os.path.abspath(path)
    while not os.path.lexists(here):
        parent = os.path.dirname(here)
        if parent == here:
            break
        here = parent
    return here


def _check_name(option: str, path) -> str:
    if not isinstance(path, str) or not path.strip():
        raise _refuse(f"{option} must name a path, got {path!r}")
    if "\x00" in path:
        raise _refuse(f"{option} {path!r} contains a NUL character, which no path may hold")
    name = os.path.basename(os.path.abspath(path))
    if len(os.fsencode(name)) > 255:
        raise _refuse(f"{option}: the name {name[:40]!r}... is longer than 255 bytes, the file-name limit")
    return path


def _check_creatable(option: str, path: str) -> None:
    """The folders missing on the way to ``path`` can be made, and files can be written where it will live."""
    anchor = _nearest_existing(os.path.dirname(os.path.abspath(path)))
    if not os.path.isdir(anchor):
        raise _refuse(f"{option} {path!r}: {anchor!r} exists and is not a folder, so nothing can be made inside it")
    _probe(option, path, anchor)


def check_output_file(option: str, path) -> None:
    """Refuse an output file path before any work (:class:`ProblemError` naming ``option`` and the value): an
    existing folder, an empty name, or a place where the file (and its missing parent folders) cannot be made.

    Raises
    ------
    ProblemError
        For each case above, naming ``option`` and ``path``.
    """
    _check_name(option, path)
    if os.path.isdir(path):
        raise _refuse(f"{option} {path!r} is a folder; give the name of a file to write")
    _check_creatable(option, path)


def check_output_dir(option: str, path) -> None:
    """Refuse an output folder path before any work, without creating it: an existing file, an empty name, or a
    place where the folder cannot be made or written.

    Raises
    ------
    ProblemError
        For each case above, naming ``option`` and ``path``.
    """
    _check_name(option, path)
    if os.path.lexists(path) and not os.path.isdir(path):
        raise _refuse(f"{option} {path!r} exists and is not a folder")
    if os.path.isdir(path):
        _probe(option, path, path)
    else:
        _check_creatable(option, path)


def physical_memory() -> int | None:
    """Bytes of physical memory of this machine (None where the platform does not say)."""
    try:
        return int(os.sysconf("SC_PHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (AttributeError, OSError, ValueError):
        return None


def check_memory(what: str, nbytes: int) -> None:
    """Refuse sizes whose arrays (``nbytes``, an estimate of the largest ones a command allocates) exceed this
    machine's physical memory, before any work; ``what`` names the options and the arrays.

    Raises
    ------
    ProblemError
        The estimate exceeds the physical memory.
    """
    total = physical_memory()
    if total is not None and nbytes > total:
        need = f"{nbytes / 2 ** 30:.3g} GiB" if nbytes < 10 ** 300 else f"about 2^{nbytes.bit_length()} bytes"
        raise _refuse(f"{what} need {need}, more than this machine's {total / 2 ** 30:.3g} GiB of memory; choose "
                      "smaller sizes")


def _silence_stdout() -> None:
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # so that the flush at exit does not fail again
    except (OSError, ValueError, AttributeError):
        pass


@contextmanager
def deferred_sigint():
    """Hold Ctrl-C off while a few files are committed (so a folder is never left half-written); a SIGINT that came
    meanwhile is raised as ``KeyboardInterrupt`` when the block ends. Outside the main thread it does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    got: list[int] = []
    old = signal.signal(signal.SIGINT, lambda signum, frame: got.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, old if old is not None else signal.SIG_DFL)
    if got:
        raise KeyboardInterrupt


def run_command(handler, args, *, errors=None, interrupted: str = "interrupted") -> int:
    """Run ``handler(args)`` under the contract of the module docstring and return the exit status: ``errors`` and
    ``OSError`` give ``error: ...`` and 2, ``MemoryError`` gives 2 (the sizes asked for do not fit), Ctrl-C gives the
    one line ``interrupted`` and 130 (handlers that know more, such as how much was saved, catch it themselves).
    ``errors`` defaults to ``(ProblemError,)``, the error root of theory and landscape."""
    try:
        from .problem import ProblemError  # NumPy's import, under the Ctrl-C contract
    except KeyboardInterrupt:
        print(interrupted, file=sys.stderr)
        return EXIT_INTERRUPTED
    errors = (ProblemError,) if errors is None else errors
    try:
        return handler(args)
    except KeyboardInterrupt:
        print(interrupted, file=sys.stderr)
        return EXIT_INTERRUPTED
    except errors as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except BrokenPipeError:  # the reader of our output went away (``| head``): stop quietly, as SIGPIPE would
        _silence_stdout()
        return EXIT_PIPE
    except MemoryError:
        print("error: out of memory: the sizes asked for do not fit in this machine's memory", file=sys.stderr)
        return EXIT_USAGE
    except OSError as exc:
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"error: {where}{exc.strerror or exc}", file=sys.stderr)
        return EXIT_USAGE
