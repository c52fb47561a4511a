"""Fuzz suite of the theory and landscape command lines and readers (docs/robustness.md).

Hypothesis drives ``main(argv)`` of ``python -m theory`` (verify, figure1) and ``python -m landscape`` (search,
certify, summary) in-process with generated options, each value good or bad by the rule the help states, and feeds
the readers (results JSON lines, instance JSON) generated corruptions of real files. Every run must end in exit
status 2 with exactly one message line on stderr (nothing on stdout, no traceback, no file created or changed), or
in the documented result: the command reaches its work (stubbed here by ``_Reached``, so the fuzz stays fast) or,
for a corrupted file that is still a valid one, exits 0. An option whose value breaks its rule must give exit 2.

The default run takes a bounded slice (``FAST``); ``python -m pytest -m slow tests/test_fuzz_cli.py`` runs the long
one (``SLOW``).
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import tempfile
from unittest import mock

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import landscape.__main__ as lmain
import landscape.certify_epsnet
import landscape.certify_interval
import landscape.summary
import theory.__main__ as tmain
import theory.figure1_cli
import theory.verify
from landscape import fanout, store

FAST = settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
SLOW = settings(max_examples=1500, deadline=None, suppress_health_check=list(HealthCheck))


class _Reached(Exception):
    """The command got past every check to its work (the work itself is stubbed)."""


def _reached(*args, **kwargs):
    raise _Reached


def _call(main, argv):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(argv)
        except SystemExit as exc:
            code = exc.code
        except _Reached:
            code = "reached"
    return code, out.getvalue(), err.getvalue()


def _listing(folder: str) -> dict:
    found = {}
    for root, dirs, files in os.walk(folder):
        for name in dirs + files:
            path = os.path.join(root, name)
            found[path] = None if os.path.isdir(path) else open(path, "rb").read()
    return found


def _assert_refused(code, out, err, *, needle=None):
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


def _argv(opts, tmp: str, paths=("--out", "--png")) -> list[str]:
    argv = []
    for name, value, _ in opts:
        argv.append(name)
        if value is not None:
            argv.append(_resolve(value, tmp) if name in paths else value)
    return argv


# ------------------------------------------------------------------------------------------ theory

VERIFY = {"--d": int_value(1), "--k": int_value(1), "--T": int_value(1), "--seed": int_value(0), "--json": None}


def _check_verify(opts):
    values = {name: int(v) for name, v, ok in opts if ok and v is not None}
    all_ok = all(ok for _, _, ok in opts)
    d, k, T = values.get("--d", 10), values.get("--k", 1), values.get("--T", 3)
    with tempfile.TemporaryDirectory() as tmp, mock.patch.object(theory.verify, "run_verify", _reached):
        before = _listing(tmp)
        code, out, err = _call(tmain.main, ["verify", *_argv(opts, tmp)])
        assert _listing(tmp) == before
    if all_ok and (T + 1) * k <= d:
        assert code == "reached", (opts, err)
    else:
        _assert_refused(code, out, err)


@FAST
@given(options(VERIFY))
def test_fuzz_verify_options(opts):
    _check_verify(opts)


@pytest.mark.slow
@SLOW
@given(options(VERIFY))
def test_fuzz_verify_options_long(opts):
    _check_verify(opts)


FIGURE1 = {"--vary": st.sampled_from(["d", "T", "N", "n", "k", "all", "sigma", "", "D"]).map(
               lambda v: (v, v in ("d", "T", "N", "n", "k", "all"))),
           "--runs": int_value(1), "--seed": int_value(0), "--N": int_value(1), "--n": int_value(1),
           "--d": int_value(1), "--T": int_value(1), "--k": int_value(1), "--sigma": sigma_value,
           "--retrain-iters": int_value(1), "--finetune-iters": int_value(1), "--out": path_value("dir"),
           "--json": None}


def _check_figure1(opts):
    all_ok = all(ok for _, _, ok in opts)
    names = {name for name, _, _ in opts}
    with tempfile.TemporaryDirectory() as tmp, mock.patch.object(theory.figure1_cli, "run_panels", _reached):
        open(os.path.join(tmp, "a_file"), "w").close()
        os.mkdir(os.path.join(tmp, "a_dir"))
        before = _listing(tmp)
        code, out, err = _call(tmain.main, ["figure1", *_argv(opts, tmp)])
        assert _listing(tmp) == before  # the folder is made only once every result is ready
    if code == "reached":
        assert all_ok, opts
    elif all_ok and "--vary" in names and not names & {"--d", "--T", "--k"}:
        raise AssertionError(f"valid options refused (the default sizes satisfy Remark 3.1): {opts}: {err}")
    else:
        _assert_refused(code, out, err)


@FAST
@given(options(FIGURE1, required=("--vary",)))
def test_fuzz_figure1_options(opts):
    _check_figure1(opts)


@pytest.mark.slow
@SLOW
@given(options(FIGURE1))
def test_fuzz_figure1_options_long(opts):
    _check_figure1(opts)


# ------------------------------------------------------------------------------------------ landscape

SEARCH = {"--d": int_value(1), "--k": int_value(1), "--T": int_value(1), "--instances": int_value(1),
          "--starts": int_value(1), "--seed": int_value(0), "--out": path_value("file"), "--workers": int_value(0),
          "--scheduler": st.sampled_from(["tcp://127.0.0.1:1", "", " "]).map(lambda v: (v, bool(v.strip()))),
          "--adversarial": None, "--rounds": int_value(0), "--gd-runs": int_value(0), "--scales": scales_value}
SEARCH_REQUIRED = ("--d", "--k", "--T", "--instances", "--out")


def _check_search(opts):
    names = {name for name, _, _ in opts}
    valid = (all(ok for _, _, ok in opts) and set(SEARCH_REQUIRED) <= names
             and not {"--workers", "--scheduler"} <= names)
    with tempfile.TemporaryDirectory() as tmp, mock.patch.object(fanout, "run_all", _reached):
        open(os.path.join(tmp, "a_file"), "w").close()
        os.mkdir(os.path.join(tmp, "a_dir"))
        before = _listing(tmp)
        code, out, err = _call(lmain.main, ["search", *_argv(opts, tmp)])
        if code != "reached":
            assert _listing(tmp) == before
    if valid:
        assert code == "reached", (opts, err)
    else:
        _assert_refused(code, out, err)


@FAST
@given(options(SEARCH, required=SEARCH_REQUIRED))
def test_fuzz_search_options(opts):
    _check_search(opts)


@pytest.mark.slow
@SLOW
@given(options(SEARCH))
def test_fuzz_search_options_long(opts):
    _check_search(opts)


def _record(index: int) -> dict:
    spec = {"index": index, "d": 3, "k": 1, "T": 3, "seed": 0, "starts": 4, "scales": [0.1, 0.5, 1.0, 2.0],
            "gd_runs": 1, "adversarial": None}
    return fanout.run_spec(spec)


@pytest.fixture(scope="module")
def good_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("fuzz")
    records = [_record(0), _record(1)]
    results = folder / "results.jsonl"
    results.write_text("".join(json.dumps(r) + "\n" for r in records))
    instance = folder / "instance.json"
    rec = records[0]
    instance.write_text(json.dumps({"problem": rec["problem"], "point": rec["critical_points"][0]["point"]}))
    return {"records": records, "results": str(results), "instance": str(instance)}


READ = {"--method": st.sampled_from(["krawczyk", "epsnet", "newton", ""]).map(lambda v: (v, v in ("krawczyk",
                                                                                                "epsnet"))),
        "--sample": int_value(0), "--max-candidates": int_value(0), "--seed": int_value(0),
        "--out": path_value("file"), "--json": None}
SOURCES = st.sampled_from(["results", "instance", "missing", "a_dir", "empty_file"]).map(
    lambda s: (s, s in ("results", "instance")))


def _check_certify_or_summary(command, source, opts, files):
    ok_source = source[1]
    valid = ok_source and all(ok for _, _, ok in opts)
    with tempfile.TemporaryDirectory() as tmp, \
            mock.patch.object(landscape.certify_interval, "certify_interval", _reached), \
            mock.patch.object(landscape.certify_epsnet, "certify_epsnet", _reached), \
            mock.patch.object(landscape.summary, "summarize", _reached):
        open(os.path.join(tmp, "a_file"), "w").close()
        os.mkdir(os.path.join(tmp, "a_dir"))
        open(os.path.join(tmp, "empty_file"), "w").close()
        path = {"results": files["results"], "instance": files["instance"], "missing": os.path.join(tmp, "nope"),
                "a_dir": os.path.join(tmp, "a_dir"), "empty_file": os.path.join(tmp, "empty_file")}[source[0]]
        before = _listing(tmp)
        code, out, err = _call(lmain.main, [command, path, *_argv(opts, tmp)])
        assert _listing(tmp) == before
    if valid:
        assert code in ("reached", 0), (opts, err)  # 0: no candidate to certify (--sample 0, --max-candidates 0)
    else:
        _assert_refused(code, out, err)


@FAST
@given(SOURCES, options(READ))
def test_fuzz_certify_options(good_files, source, opts):
    _check_certify_or_summary("certify", source, opts, good_files)


@pytest.mark.slow
@SLOW
@given(SOURCES, options(READ))
def test_fuzz_certify_options_long(good_files, source, opts):
    _check_certify_or_summary("certify", source, opts, good_files)


SUMMARY = {"--png": path_value("file"), "--json": None}


@FAST
@given(SOURCES.filter(lambda s: s[0] != "instance"), options(SUMMARY))
def test_fuzz_summary_options(good_files, source, opts):
    _check_certify_or_summary("summary", source, opts, good_files)


@pytest.mark.slow
@SLOW
@given(SOURCES.filter(lambda s: s[0] != "instance"), options(SUMMARY))
def test_fuzz_summary_options_long(good_files, source, opts):
    _check_certify_or_summary("summary", source, opts, good_files)


# ------------------------------------------------------------------------------------------ readers

JSON_VALUES = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-10 ** 30, 10 ** 30), st.floats(allow_nan=True),
              st.text(max_size=5)),
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=4), inner, max_size=3)),
    max_leaves=6)


def _walk(draw, obj):
    """A random container inside ``obj`` and one of its keys (or indices)."""
    parent, key = None, None
    node = obj
    for _ in range(draw(st.integers(1, 7))):
        keys = list(node) if isinstance(node, dict) else list(range(len(node))) if isinstance(node, list) else []
        if not keys:
            break
        parent, key = node, draw(st.sampled_from(keys))
        node = node[key]
    return parent, key


@st.composite
def corruption(draw, records: list[dict]) -> bytes:
    """A results file made from real records by one corruption: a value replaced, a key dropped, the text cut,
    bytes inserted, two lines glued, or a line of arbitrary JSON."""
    recs = json.loads(json.dumps(records))
    how = draw(st.sampled_from(["replace", "drop", "cut", "bytes", "glue", "line"]))
    if how in ("replace", "drop"):
        parent, key = _walk(draw, draw(st.sampled_from(recs)))
        if parent is not None:
            if how == "replace":
                parent[key] = draw(JSON_VALUES)
            else:
                del parent[key]
    text = "".join(json.dumps(r) + "\n" for r in recs).encode()
    if how == "cut":
        text = text[:draw(st.integers(0, len(text)))]
    elif how == "bytes":
        at = draw(st.integers(0, len(text)))
        text = text[:at] + draw(st.binary(min_size=1, max_size=4)) + text[at:]
    elif how == "glue":
        text = text.replace(b"\n", b"", 1)
    elif how == "line":
        text += json.dumps(draw(JSON_VALUES)).encode() + b"\n"
    return text


def _check_results_reader(files, data: bytes):
    config = files["records"][0]["config"]
    argv_search = ["search", "--d", "3", "--k", "1", "--T", "3", "--instances", "2", "--starts", "4", "--seed", "0",
                   "--gd-runs", "1", "--workers", "0"]
    assert config["scales"] == [0.1, 0.5, 1.0, 2.0]
    with tempfile.TemporaryDirectory() as tmp, \
            mock.patch.object(landscape.certify_interval, "certify_interval", _reached), \
            mock.patch.object(fanout, "run_all", lambda specs, **kw: (r for r in ())):
        path = os.path.join(tmp, "r.jsonl")
        for argv in (["summary", path, "--json"], ["certify", path, "--sample", "1"], [*argv_search, "--out", path]):
            with open(path, "wb") as fh:
                fh.write(data)
            code, out, err = _call(lmain.main, argv)
            if code == 2:
                _assert_refused(code, out, err, needle=path)
                with open(path, "rb") as fh:
                    assert fh.read() == data  # a refused file is left as it was
            else:
                assert code in (0, "reached"), (argv, code, err)
                assert "Traceback" not in err
                if argv[0] == "search":  # a resumed file holds only whole records, each on its own line
                    with open(path, "rb") as fh:
                        text = fh.read()
                    assert not text or text.endswith(b"\n")
                    for line in text.split(b"\n"):
                        if line.strip():
                            store.check_record(json.loads(line), path)


@FAST
@given(st.data())
def test_fuzz_results_reader(good_files, data):
    _check_results_reader(good_files, data.draw(corruption(good_files["records"])))


@pytest.mark.slow
@SLOW
@given(st.data())
def test_fuzz_results_reader_long(good_files, data):
    _check_results_reader(good_files, data.draw(corruption(good_files["records"])))


def _check_instance_reader(files, instance):
    with tempfile.TemporaryDirectory() as tmp, \
            mock.patch.object(landscape.certify_interval, "certify_interval", _reached):
        path = os.path.join(tmp, "i.json")
        with open(path, "w", encoding="utf-8") as fh:
            fh.write(json.dumps(instance))
        code, out, err = _call(lmain.main, ["certify", path])
    if code == 2:
        _assert_refused(code, out, err, needle=path)
    else:
        assert code in ("reached", 0) and "Traceback" not in err, (code, err)


@st.composite
def corrupted_instance(draw, files) -> dict:
    with open(files["instance"], encoding="utf-8") as fh:
        inst = json.load(fh)
    parent, key = _walk(draw, inst)
    if parent is not None:
        if draw(st.booleans()):
            parent[key] = draw(JSON_VALUES)
        else:
            del parent[key]
    return inst


@FAST
@given(st.data())
def test_fuzz_instance_reader(good_files, data):
    _check_instance_reader(good_files, data.draw(corrupted_instance(good_files)))


@pytest.mark.slow
@SLOW
@given(st.data())
def test_fuzz_instance_reader_long(good_files, data):
    _check_instance_reader(good_files, data.draw(corrupted_instance(good_files)))
