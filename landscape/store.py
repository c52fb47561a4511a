"""Results as JSON lines: one line per finished instance, appended and flushed (and fsynced) as it finishes.

A run is resumable: :func:`open_run` reads the finished instances, drops a truncated last line (a crash in the middle
of a write; the file is rewritten without it through a temporary file and ``os.replace``), gives a whole last record
whose newline is missing its newline back, and refuses a file made by a different command. :func:`append` checks the
tail again before each write, so a record is never glued onto the previous line. Lines appear in completion order;
:func:`load` returns them sorted by instance index. Every reader refuses a bad record with one ``ProblemError``
naming the file, the line and the value (:func:`check_record`).

Line keys: ``index``, ``config`` (the run's arguments), ``problem`` (:meth:`theory.problem.Problem.to_dict`),
``critical_points``, ``solves``, ``gd``, ``seconds`` (see :func:`landscape.search.search_record`), and with
``--adversarial`` ``adversarial`` (:func:`landscape.adversarial.hill_climb_record`).

Every line, and every instance file, is strict JSON (:mod:`theory.strict_json`): a float that is not finite is written
as ``null``. Where a record can hold one: a gradient-descent run's ``loss``, ``gd_loss`` and ``moved`` (NaN or inf when
the run diverged), and the adversarial ``score``, whose ``null`` is +inf: a spurious minimum found. Files written
before this convention (``NaN`` / ``Infinity`` tokens, the score +inf as the string ``"inf"``) are still read, and
resumed, as if written now (:func:`_from_legacy`, the one place that knows the old format).
"""

from __future__ import annotations

import json
import math
import os

import numpy as np

from theory.atomic import atomic_write_text
from theory.problem import ProblemError
from theory.strict_json import dumps

__all__ = ["load", "check_run", "open_run", "append", "canonical", "save_instance", "load_instance", "check_record",
           "read_results_or_instance"]

_REQUIRED = ("index", "config", "problem", "critical_points")



def _read_text(path: str) -> str:
    """The file as text; bytes that are not UTF-8 are refused naming the line."""
    if os.path.isdir(path):
        raise ProblemError(f"{path!r} is a folder, not a results or instance file")
    with open(path, "rb") as fh:
        raw = fh.read()
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[:exc.start].count(b"\n") + 1
        raise ProblemError(f"{path}: line {line} is not UTF-8 text (byte {raw[exc.start]:#04x} at offset "
                           f"{exc.start})") from None


def _json(text: str):
    """``json.loads`` whose every failure is a ``ValueError`` (deep nesting raises ``RecursionError`` otherwise).

    It accepts the ``NaN`` / ``Infinity`` / ``-Infinity`` tokens (as floats) on purpose: files written before the
    strict-JSON convention hold them (:func:`_from_legacy`)."""
    try:
        return json.loads(text)
    except RecursionError:
        raise ValueError("nested too deeply") from None


def _from_legacy(rec):
    """A results record read from a file written before the strict-JSON convention, in today's form (changed in
    place and returned; a record of today's form is returned unchanged).

    Earlier versions wrote lines with ``NaN`` / ``Infinity`` tokens (the default of Python's ``json.dumps``) and the
    adversarial score +inf as the string ``"inf"``. The tokens are read by :func:`_json` as floats; no reader uses
    the fields that held them (gradient-descent losses), and :func:`dumps` writes them as ``null`` when a resumed
    file is rewritten. The string ``"inf"`` becomes ``None``, what ``null`` means in the score (+inf: a spurious
    minimum found), in the entry and in each of its history rows."""
    adv = rec.get("adversarial") if isinstance(rec, dict) else None
    if isinstance(adv, dict):
        history = adv.get("history")
        for entry in [adv, *(history if isinstance(history, list) else [])]:
            if isinstance(entry, dict) and entry.get("score") == "inf":
                entry["score"] = None
    return rec


def _parse(path: str) -> tuple[list[dict], str]:
    """Records of ``path`` (each checked by :func:`check_record`) and the state of its tail: ``"ok"`` (empty, or
    ends with a newline), ``"no_newline"`` (the last record is whole but its newline is missing) or
    ``"truncated"`` (the last line has no newline and is not valid JSON: a write cut short; it is ignored)."""
    lines = _read_text(path).split("\n")
    tail = "ok"
    if lines and lines[-1] == "":
        lines.pop()
    elif lines:  # last line without newline: a write cut short, unless it parses
        try:
            _json(lines[-1])
            tail = "no_newline"
        except ValueError:
            lines.pop()
            tail = "truncated"
    records, seen = [], {}
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rec = _from_legacy(_json(line))
        except ValueError as exc:
            raise ProblemError(f"{path}: line {n} is not valid JSON ({getattr(exc, 'msg', exc)}); a results file has "
                               "one JSON object per line") from None
        check_record(rec, f"{path}: line {n}")
        if rec["index"] in seen:
            raise ProblemError(f"{path}: line {n} repeats instance index {rec['index']} (first on line "
                               f"{seen[rec['index']]}); two runs may have written into one file")
        seen[rec["index"]] = n
        records.append(rec)
    return records, tail


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _is_finite(v) -> bool:
    return _is_number(v) and math.isfinite(v)


def check_record(rec, where: str) -> None:
    """Refuse (``ProblemError`` starting with ``where``, e.g. ``"FILE: line 3"``) a results record that the readers
    (``summary``, ``certify``, resuming) cannot use: missing keys, an index that is not an integer >= 0, a problem
    :meth:`Problem.from_dict` refuses, a critical point whose class is unknown, whose loss is not a finite number or
    whose point is not a finite array of shape ``(T, d, k)``, eigenvalues that are not finite numbers,
    gradient-descent rows of unknown classes, solve counts that are not integers, or an adversarial entry without
    history or without a score that is a finite number >= 0 or None (+inf: a spurious minimum found): what
    ``summary``, ``certify`` and a resumed ``search`` read. It accepts no non-finite float where it checks a
    number, so a record it accepts is accepted again once rewritten (non-finite floats as ``null``, :func:`dumps`).

    Raises
    ------
    ProblemError
        A key is missing or of the wrong type, the problem does not load, the config disagrees with it, or a critical
        point's class, loss, point or eigenvalues are invalid (the message names the record, the point and the key).
    """
    from theory.problem import Problem, first_nonfinite

    from .result import CLASSES

    if not isinstance(rec, dict) or any(key not in rec for key in _REQUIRED):
        raise ProblemError(f"{where} is not a landscape result (needs the keys {list(_REQUIRED)})")
    if not isinstance(rec["index"], int) or isinstance(rec["index"], bool) or rec["index"] < 0:
        raise ProblemError(f"{where}: index must be an integer >= 0, got {rec['index']!r}")
    if not isinstance(rec["config"], dict):
        raise ProblemError(f"{where}: config must be a JSON object, got {type(rec['config']).__name__}")
    try:
        problem = Problem.from_dict(rec["problem"])
    except ProblemError as exc:
        raise ProblemError(f"{where}: problem: {exc}") from None
    for name in ("d", "k", "T"):
        if name in rec["config"] and rec["config"][name] != getattr(problem, name):
            raise ProblemError(f"{where}: config {name}={rec['config'][name]!r} disagrees with the problem's "
                               f"{name}={getattr(problem, name)}")
    points = rec["critical_points"]
    if not isinstance(points, list):
        raise ProblemError(f"{where}: critical_points must be a list, got {type(points).__name__}")
    shape = (problem.T, problem.d, problem.k)
    for i, c in enumerate(points):
        at = f"{where}: critical point {i}"
        if not isinstance(c, dict) or c.get("class") not in CLASSES:
            raise ProblemError(f"{at}: class must be one of {list(CLASSES)}, got "
                               f"{c.get('class') if isinstance(c, dict) else c!r}")
        if not _is_number(c.get("loss")) or not math.isfinite(c["loss"]):
            raise ProblemError(f"{at}: loss must be a finite number, got {c.get('loss')!r}")
        try:
            U = np.asarray(c.get("point"), dtype=np.float64)
        except (TypeError, ValueError, OverflowError):
            U = None
        if U is None or U.shape != shape:
            raise ProblemError(f"{at}: point must be an array of numbers of shape (T, d, k) = {shape}")
        if not np.all(np.isfinite(U)):
            raise ProblemError(f"{at}: point must have finite entries, found {first_nonfinite(U)}")
        eig = c.get("eigenvalues")
        if not isinstance(eig, list) or not all(_is_finite(v) for v in [*eig, c.get("min_eigenvalue")]):
            raise ProblemError(f"{at}: eigenvalues must be a list of finite numbers and min_eigenvalue a finite number")
    gd = rec.get("gd", [])
    if not isinstance(gd, list) or not all(isinstance(g, dict) and g.get("class") in (*CLASSES, "unconverged")
                                           and g.get("near") in (*CLASSES, None) for g in gd):
        raise ProblemError(f"{where}: gd must be a list of runs whose class is one of {[*CLASSES, 'unconverged']} "
                           "and whose near is a class or null")
    solves = rec.get("solves", {})
    if not isinstance(solves, dict) or not all(isinstance(v, int) and not isinstance(v, bool) for v in solves.values()):
        raise ProblemError(f"{where}: solves must map statuses to counts")
    adv = rec.get("adversarial", {"score": 0.0, "history": []})
    if not (isinstance(adv, dict) and "score" in adv and (adv["score"] is None or _is_finite(adv["score"])
                                                          and adv["score"] >= 0)
            and isinstance(adv.get("history"), list)):
        raise ProblemError(f"{where}: adversarial must hold a score (a finite number >= 0, or null for +inf: a "
                           "spurious minimum found) and a history list")


def load(path: str) -> list[dict]:
    """All finished records of a results file, sorted by instance index (a truncated last line is ignored).

    Raises ``ProblemError`` naming the file and line of the first record :func:`check_record` refuses."""
    if not os.path.lexists(path):
        raise ProblemError(f"results file {path!r} does not exist")
    records, _ = _parse(path)
    if not records:
        raise ProblemError(f"results file {path!r} holds no finished instance")
    return sorted(records, key=lambda r: r["index"])


def check_run(path: str, config: dict) -> tuple[list[dict], str]:
    """Read-only part of :func:`open_run`: the finished records of ``path`` (none if it does not exist) and the
    state of its tail (as :func:`_parse` reports it), after refusing a bad record (naming file and line) or a record
    made with another ``config``. Lets a command check every file it will resume before it writes anything.

    Raises
    ------
    ProblemError
        A record of ``path`` is invalid (:func:`check_record`) or was written with another ``config``.
    """
    if not os.path.lexists(path):
        return [], "ok"
    records, tail = _parse(path)
    for rec in records:
        if rec["config"] != config:
            diff = sorted(key for key in set(rec["config"]) | set(config)
                          if rec["config"].get(key) != config.get(key))
            raise ProblemError(f"{path} was written by a run with other arguments (differing: {diff}); use another "
                               "--out or the same arguments to resume")
    return records, tail


def open_run(path: str, config: dict) -> set[int]:
    """Prepare ``path`` for a run with ``config``; return the indices already finished (to skip).

    Creates the parent folder; repairs the tail (a truncated last line is dropped, atomically; a whole last record
    whose newline is missing gets it back); refuses a bad record (naming file and line) and a file whose records were
    made with another ``config`` (resuming it would mix two experiments; :func:`check_run`).
    """
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    if not os.path.lexists(path):
        return set()
    records, tail = check_run(path, config)
    if tail == "truncated":
        atomic_write_text(path, "".join(dumps(rec) + "\n" for rec in records))
    elif tail == "no_newline":
        with open(path, "ab") as fh:  # append-only: the records already there are not rewritten
            fh.write(b"\n")
            fh.flush()
            os.fsync(fh.fileno())
    return {int(r["index"]) for r in records}


def _last_line(fh) -> bytes:
    """The bytes after the last newline of the binary file ``fh`` (empty when it ends with one)."""
    end = fh.seek(0, os.SEEK_END)
    pos, tail = end, b""
    while pos > 0:
        step = min(1 << 16, pos)
        pos -= step
        fh.seek(pos)
        tail = fh.read(step) + tail
        if b"\n" in tail:
            return tail[tail.rindex(b"\n") + 1:]
    return tail


def append(path: str, record: dict) -> None:
    """Append one record as one line of strict JSON (:func:`theory.strict_json.dumps`: a non-finite float is written
    as ``null``), flushed and fsynced before returning (a crash loses nothing finished).

    The tail is checked first: a last record whose newline is missing gets it back (instead of the new record being
    glued onto it); a last line that is cut off (not valid JSON) is refused, since appending would bury it in the
    middle of the file (:func:`open_run` repairs it).

    Raises
    ------
    ProblemError
        The last line of ``path`` is cut off (:func:`open_run` repairs it first).
    """
    line = (dumps(record) + "\n").encode("utf-8")
    with open(path, "a+b") as fh:
        last = _last_line(fh)
        if last.strip():
            try:
                _json(last.decode("utf-8"))
            except ValueError:
                raise ProblemError(f"{path}: its last line is cut off (not valid JSON); open the file with open_run "
                                   "(rerun the search command), which repairs it, before appending") from None
            line = b"\n" + line
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
    """Write an instance file: ``{"problem": Problem.to_dict(), "point": U (T, d, k) as lists, **meta}`` (strict JSON,
    :func:`theory.strict_json.dumps`; written to a temporary file and renamed)."""
    U = np.asarray(point, dtype=np.float64).reshape(problem.T, problem.d, problem.k)
    data = {**meta, "problem": problem.to_dict(), "point": U.tolist()}
    atomic_write_text(path, dumps(data, indent=1) + "\n")


def load_instance(name_or_path: str):
    """Read an instance file by path, or by name from the package's ``landscape/instances/`` folder; returns
    ``(problem, U, data)`` with ``U`` of shape ``(T, d, k)`` and ``data`` the whole JSON object.

    Raises ``ProblemError`` naming the file (and the value) for anything unusable: not UTF-8, not JSON, missing keys,
    a problem :meth:`Problem.from_dict` refuses (non-finite or overflowing ``W_t`` included), a point that is not a
    finite array of shape ``(T, d, k)``."""
    from importlib import resources

    path = name_or_path
    if not os.path.lexists(path):
        packaged = resources.files("landscape") / "instances" / (name_or_path if name_or_path.endswith(".json")
                                                                  else name_or_path + ".json")
        if not packaged.is_file():
            raise ProblemError(f"instance {name_or_path!r} is neither a file nor a stored instance of "
                               f"landscape/instances/")
        path = str(packaged)
    try:
        data = _json(_read_text(path))
    except ValueError as exc:
        if isinstance(exc, ProblemError):
            raise
        raise ProblemError(f"{path}: not valid JSON ({getattr(exc, 'msg', exc)})") from None
    return _instance(path, data)


def _instance(path: str, data):
    from theory.problem import Problem, first_nonfinite

    if not isinstance(data, dict) or "problem" not in data or "point" not in data:
        raise ProblemError(f"{path}: an instance file is a JSON object with the keys 'problem' and 'point'")
    try:
        problem = Problem.from_dict(data["problem"])
    except ProblemError as exc:
        raise ProblemError(f"{path}: problem: {exc}") from None
    shape = (problem.T, problem.d, problem.k)
    try:
        U = np.asarray(data["point"], dtype=np.float64)
    except (TypeError, ValueError, OverflowError):
        raise ProblemError(f"{path}: point must be an array of numbers of shape (T, d, k) = {shape}") from None
    if U.shape != shape:
        raise ProblemError(f"{path}: point must have shape (T, d, k) = {shape}, got {U.shape}")
    if not np.all(np.isfinite(U)):
        raise ProblemError(f"{path}: point must have finite entries, found {first_nonfinite(U)}")
    return problem, U, data


def read_results_or_instance(path: str):
    """``("instance", (problem, U, data))`` for an instance file (one JSON object with ``problem`` and ``point``),
    else ``("results", records)`` (:func:`load`); every refusal is a ``ProblemError`` naming the file.

    Raises
    ------
    ProblemError
        ``path`` does not exist, is a folder, is not UTF-8, or holds an invalid record or instance.
    """
    if not os.path.lexists(path):
        raise ProblemError(f"results file {path!r} does not exist")
    text = _read_text(path)
    try:
        data = _json(text)
    except ValueError:  # JSON lines (more than one object) or malformed: a results file
        data = None
    if isinstance(data, dict) and "point" in data and "problem" in data:
        return "instance", _instance(path, data)
    return "results", load(path)
