"""Results as JSON lines: one line per finished instance, appended and flushed (and fsynced) as it finishes.

A run is resumable: :func:`open_run` reads the finished instances, drops a truncated last line (a crash in the middle
of a write; the file is rewritten without it through a temporary file and ``os.replace``) and refuses a file made by
a different command. Lines appear in completion order; :func:`load` returns them sorted by instance index.

Line keys: ``index``, ``config`` (the run's arguments), ``problem`` (:meth:`theory.problem.Problem.to_dict`),
``critical_points``, ``solves``, ``gd``, ``seconds`` (see :func:`landscape.search.search_record`).
"""

from __future__ import annotations

import json
import os
import tempfile
from contextlib import contextmanager

from theory.problem import ProblemError

__all__ = ["load", "open_run", "append", "canonical", "save_instance", "load_instance"]

_REQUIRED = ("index", "config", "problem", "critical_points")



@contextmanager
def atomic_path(path: str, suffix: str = ".tmp"):
    """Yield a temporary path beside ``path`` (its folder created); on success the file is fsynced and renamed to
    ``path``, on any error removed: ``path`` is the old file or the whole new one, never half written."""
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=parent, prefix=".landscape-", suffix=suffix)
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; the result gets the permissions of a plain open()
    try:
        yield tmp
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def atomic_write_text(path: str, text: str) -> None:
    """Write ``text`` to ``path`` atomically (:func:`atomic_path`)."""
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as fh:
        fh.write(text)


def _parse(path: str) -> tuple[list[dict], bool]:
    """Records of ``path`` and whether its last line was truncated (no newline and not valid JSON)."""
    with open(path, encoding="utf-8") as fh:
        text = fh.read()
    lines = text.split("\n")
    truncated = False
    if lines and lines[-1] == "":
        lines.pop()
    elif lines:  # last line without newline: a write cut short, unless it parses
        try:
            json.loads(lines[-1])
        except json.JSONDecodeError:
            lines.pop()
            truncated = True
    records = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ProblemError(f"{path}: line {n} is not valid JSON ({exc.msg}); a results file has one JSON "
                               "object per line") from None
        if not isinstance(rec, dict) or any(key not in rec for key in _REQUIRED):
            raise ProblemError(f"{path}: line {n} is not a landscape result (needs the keys {list(_REQUIRED)})")
        records.append(rec)
    return records, truncated


def load(path: str) -> list[dict]:
    """All finished records of a results file, sorted by instance index (a truncated last line is ignored)."""
    if not os.path.isfile(path):
        raise ProblemError(f"results file {path!r} does not exist")
    records, _ = _parse(path)
    if not records:
        raise ProblemError(f"results file {path!r} holds no finished instance")
    return sorted(records, key=lambda r: r["index"])


def open_run(path: str, config: dict) -> set[int]:
    """Prepare ``path`` for a run with ``config``; return the indices already finished (to skip).

    Creates the parent folder; repairs a truncated last line atomically; refuses a file whose records were made with
    another ``config`` (resuming it would mix two experiments).
    """
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    if not os.path.exists(path):
        return set()
    records, truncated = _parse(path)
    for rec in records:
        if rec["config"] != config:
            diff = sorted(key for key in set(rec["config"]) | set(config)
                          if rec["config"].get(key) != config.get(key))
            raise ProblemError(f"{path} was written by a run with other arguments (differing: {diff}); use another "
                               "--out or the same arguments to resume")
    if truncated:
        atomic_write_text(path, "".join(json.dumps(rec) + "\n" for rec in records))
    return {int(r["index"]) for r in records}


def append(path: str, record: dict) -> None:
    """Append one record as one line, flushed and fsynced before returning (a crash loses nothing finished)."""
    line = json.dumps(record, allow_nan=True) + "\n"
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(line)
        fh.flush()
        os.fsync(fh.fileno())


def canonical(records: list[dict]) -> list[dict]:
    """Records sorted by index without wall-clock fields (``seconds``), for comparing two runs."""
    def strip(obj):
        if isinstance(obj, dict):
            return {key: strip(v) for key, v in obj.items() if key != "seconds"}
        if isinstance(obj, list):
            return [strip(v) for v in obj]
        return obj

    return [strip(r) for r in sorted(records, key=lambda r: r["index"])]


def save_instance(path: str, problem, point, **meta) -> None:
    """Write an instance file: ``{"problem": Problem.to_dict(), "point": U (T, d, k) as lists, **meta}`` (JSON,
    written to a temporary file and renamed)."""
    import numpy as np

    U = np.asarray(point, dtype=np.float64).reshape(problem.T, problem.d, problem.k)
    data = {**meta, "problem": problem.to_dict(), "point": U.tolist()}
    atomic_write_text(path, json.dumps(data, indent=1) + "\n")


def load_instance(name_or_path: str):
    """Read an instance file by path, or by name from the package's ``landscape/instances/`` folder; returns
    ``(problem, U, data)`` with ``U`` of shape ``(T, d, k)`` and ``data`` the whole JSON object."""
    from importlib import resources

    import numpy as np

    from theory.problem import Problem

    path = name_or_path
    if not os.path.isfile(path):
        packaged = resources.files("landscape") / "instances" / (name_or_path if name_or_path.endswith(".json")
                                                                  else name_or_path + ".json")
        if not packaged.is_file():
            raise ProblemError(f"instance {name_or_path!r} is neither a file nor a stored instance of "
                               f"landscape/instances/")
        path = str(packaged)
    with open(path, encoding="utf-8") as fh:
        try:
            data = json.load(fh)
        except json.JSONDecodeError as exc:
            raise ProblemError(f"{path}: not valid JSON ({exc.msg})") from None
    if not isinstance(data, dict) or "problem" not in data or "point" not in data:
        raise ProblemError(f"{path}: an instance file is a JSON object with the keys 'problem' and 'point'")
    problem = Problem.from_dict(data["problem"])
    U = np.asarray(data["point"], dtype=np.float64)
    if U.shape != (problem.T, problem.d, problem.k):
        raise ProblemError(f"{path}: point must have shape (T, d, k) = {(problem.T, problem.d, problem.k)}, "
                           f"got {U.shape}")
    return problem, U, data
