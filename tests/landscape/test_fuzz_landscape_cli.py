"""Fuzz suite of ``python -m landscape`` (search, certify, summary) and of its readers (results JSON lines,
instance JSON), fed generated corruptions of real files (docs/robustness.md).

What every run must end in, and the slices (``FAST`` by default, ``SLOW`` with ``-m slow``): tests/fuzz_support.py.
"""

from __future__ import annotations

import json
import os
import tempfile
from unittest import mock

import pytest
from hypothesis import given
from hypothesis import strategies as st

import landscape.__main__ as lmain
import landscape.certify_epsnet
import landscape.certify_interval
import landscape.summary
from landscape import fanout, store

from fuzz_support import (FAST, SLOW, make_argv, assert_refused, call_main, listing, reached, int_value, options,
                          path_value, scales_value)


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
    with tempfile.TemporaryDirectory() as tmp, mock.patch.object(fanout, "run_all", reached):
        open(os.path.join(tmp, "a_file"), "w").close()
        os.mkdir(os.path.join(tmp, "a_dir"))
        before = listing(tmp)
        code, out, err = call_main(lmain.main, ["search", *make_argv(opts, tmp)])
        if code != "reached":
            assert listing(tmp) == before
    if valid:
        assert code == "reached", (opts, err)
    else:
        assert_refused(code, out, err)


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
            mock.patch.object(landscape.certify_interval, "certify_interval", reached), \
            mock.patch.object(landscape.certify_epsnet, "certify_epsnet", reached), \
            mock.patch.object(landscape.summary, "summarize", reached):
        open(os.path.join(tmp, "a_file"), "w").close()
        os.mkdir(os.path.join(tmp, "a_dir"))
        open(os.path.join(tmp, "empty_file"), "w").close()
        path = {"results": files["results"], "instance": files["instance"], "missing": os.path.join(tmp, "nope"),
                "a_dir": os.path.join(tmp, "a_dir"), "empty_file": os.path.join(tmp, "empty_file")}[source[0]]
        before = listing(tmp)
        code, out, err = call_main(lmain.main, [command, path, *make_argv(opts, tmp)])
        assert listing(tmp) == before
    if valid:
        assert code in ("reached", 0), (opts, err)  # 0: no candidate to certify (--sample 0, --max-candidates 0)
    else:
        assert_refused(code, out, err)


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
            mock.patch.object(landscape.certify_interval, "certify_interval", reached), \
            mock.patch.object(fanout, "run_all", lambda specs, **kw: (r for r in ())):
        path = os.path.join(tmp, "r.jsonl")
        for argv in (["summary", path, "--json"], ["certify", path, "--sample", "1"], [*argv_search, "--out", path]):
            with open(path, "wb") as fh:
                fh.write(data)
            code, out, err = call_main(lmain.main, argv)
            if code == 2:
                assert_refused(code, out, err, needle=path)
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
            mock.patch.object(landscape.certify_interval, "certify_interval", reached):
        path = os.path.join(tmp, "i.json")
        with open(path, "w", encoding="utf-8") as fh:
            fh.write(json.dumps(instance))
        code, out, err = call_main(lmain.main, ["certify", path])
    if code == 2:
        assert_refused(code, out, err, needle=path)
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
