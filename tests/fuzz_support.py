"""The machinery of the command-line fuzz suites (tests/theory/test_fuzz_theory_cli.py,
tests/landscape/test_fuzz_landscape_cli.py; docs/robustness.md): generated option values, good or bad by the rule the
help states, an in-process ``main(argv)`` call whose work is stubbed, and the checks of a refusal (exit status 2,
one message line, nothing written).

Hypothesis drives ``main(argv)`` in-process with generated options, each value good or bad by the rule the help
states. Every run must end in exit status 2 with exactly one message line on stderr (nothing on stdout, no
traceback, no file created or changed), or in the documented result: the command reaches its work (stubbed here by
``Reached``, so the fuzz stays fast) or, for a corrupted file that is still a valid one, exits 0. An option whose
value breaks its rule must give exit 2. The default run takes a bounded slice (``FAST``); ``-m slow`` runs the long
one (``SLOW``).
"""

from __future__ import annotations

import contextlib
import io
import math
import os

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st


FAST = settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
SLOW = settings(max_examples=1500, deadline=None, suppress_health_check=list(HealthCheck))


class Reached(Exception):
    """The command got past every check to its work (the work itself is stubbed)."""


def reached(*args, **kwargs):
    raise Reached


def call_main(main, argv):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(argv)
        except SystemExit as exc:
            code = exc.code
        except Reached:
            code = "reached"
    return code, out.getvalue(), err.getvalue()


def listing(folder: str) -> dict:
    found = {}
    for root, dirs, files in os.walk(folder):
        for name in dirs + files:
            path = os.path.join(root, name)
            found[path] = None if os.path.isdir(path) else open(path, "rb").read()
    return found


def assert_refused(code, out, err, *, needle=None):
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, (code, out, err)
    assert len(lines) == 1, err
    assert "Traceback" not in err and out == ""
    if needle is not None:
        assert needle in lines[0], (needle, lines[0])


# ------------------------------------------------------------------------------------------ option values

def _int_ok(text: str, lo: int) -> bool:
    """The rule of the integer options: what Python's ``int()`` reads, at least ``lo``."""
    try:
        return int(text) >= lo
    except ValueError:
        return False


_JUNK = st.sampled_from(["", " ", "x", "1.5", "nan", "inf", "1e3", "0x10", "--", "-x", "3 4", "١٢"])


def int_value(lo: int):
    """``(text, ok)`` for an integer option whose values must be >= lo."""
    good = st.integers(max(lo, 1), 6).map(str)
    bad = st.one_of(st.integers(-10 ** 6, lo - 1).map(str), _JUNK, st.text(max_size=4))
    return st.one_of(good, bad).map(lambda t: (t, _int_ok(t, lo)))


def _float_ok(text: str) -> bool:
    try:
        v = float(text)
    except ValueError:
        return False
    return math.isfinite(v) and v >= 0


sigma_value = st.one_of(st.sampled_from(["0", "0.1", "2.5", "-1", "nan", "inf", "1e400", "x", ""]),
                        st.text(max_size=4)).map(lambda t: (t, _float_ok(t)))


def _scales_ok(text: str) -> bool:
    try:
        vals = [float(s) for s in text.split(",") if s.strip()]
    except ValueError:
        return False
    return bool(vals) and all(math.isfinite(v) and v > 0 for v in vals)


scales_value = st.one_of(st.sampled_from(["0.1,1", "2", "1,,3", "0,1", "-1", "nan", "inf", "x", ""]),
                         st.text(max_size=6)).map(lambda t: (t, _scales_ok(t)))


def path_value(kind: str):
    """``(name, ok)``: how an output path is given, resolved inside each example's temporary folder."""
    good = ["new_file"] if kind == "file" else ["new_dir"]
    bad = ["existing_dir", "under_a_file", "empty"] if kind == "file" else ["existing_file", "under_a_file", "empty"]
    return st.sampled_from(good + bad).map(lambda name: (name, name in good))


def _resolve(name: str, tmp: str) -> str:
    return {"new_file": os.path.join(tmp, "made", "out.jsonl"), "new_dir": os.path.join(tmp, "made", "fig"),
            "existing_dir": os.path.join(tmp, "a_dir"), "existing_file": os.path.join(tmp, "a_file"),
            "under_a_file": os.path.join(tmp, "a_file", "x"), "empty": ""}[name]


@st.composite
def options(draw, spec: dict, required=()):
    """A list of ``(option, value, ok)``: each option of ``spec`` (name -> value strategy, or None for a flag)
    absent, or given once with a good or a bad value; the required ones always given; an unknown option now and
    then."""
    chosen = [name for name in spec if name in required or draw(st.booleans())]
    chosen = draw(st.permutations(chosen))
    out = []
    for name in chosen:
        if spec[name] is None:
            out.append((name, None, True))
        else:
            value, ok = draw(spec[name])
            out.append((name, value, ok))
    if draw(st.integers(0, 9)) == 0:
        out.append((draw(st.sampled_from(["--dims", "--x", "-q", "extra"])), None, False))
    return out


def make_argv(opts, tmp: str, paths=("--out", "--png")) -> list[str]:
    argv = []
    for name, value, _ in opts:
        argv.append(name)
        if value is not None:
            argv.append(_resolve(value, tmp) if name in paths else value)
    return argv


