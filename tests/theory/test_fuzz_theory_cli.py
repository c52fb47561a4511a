"""Fuzz suite of ``python -m theory`` (verify, figure1; docs/robustness.md).

What every run must end in, and the slices (``FAST`` by default, ``SLOW`` with ``-m slow``): tests/fuzz_support.py.
"""

from __future__ import annotations

import os
import tempfile
from unittest import mock

import pytest
from hypothesis import given
from hypothesis import strategies as st

import theory.__main__ as tmain
import theory.figure1_cli
import theory.verify

from fuzz_support import (FAST, SLOW, make_argv, assert_refused, call_main, listing, reached, int_value, options,
                          path_value, sigma_value)


# ------------------------------------------------------------------------------------------ theory

VERIFY = {"--d": int_value(1), "--k": int_value(1), "--T": int_value(1), "--seed": int_value(0), "--json": None}


def _check_verify(opts):
    values = {name: int(v) for name, v, ok in opts if ok and v is not None}
    all_ok = all(ok for _, _, ok in opts)
    d, k, T = values.get("--d", 10), values.get("--k", 1), values.get("--T", 3)
    with tempfile.TemporaryDirectory() as tmp, mock.patch.object(theory.verify, "run_verify", reached):
        before = listing(tmp)
        code, out, err = call_main(tmain.main, ["verify", *make_argv(opts, tmp)])
        assert listing(tmp) == before
    if all_ok and (T + 1) * k <= d:
        assert code == "reached", (opts, err)
    else:
        assert_refused(code, out, err)


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
    with tempfile.TemporaryDirectory() as tmp, mock.patch.object(theory.figure1_cli, "run_panels", reached):
        open(os.path.join(tmp, "a_file"), "w").close()
        os.mkdir(os.path.join(tmp, "a_dir"))
        before = listing(tmp)
        code, out, err = call_main(tmain.main, ["figure1", *make_argv(opts, tmp)])
        assert listing(tmp) == before  # the folder is made only once every result is ready
    if code == "reached":
        assert all_ok, opts
    elif all_ok and "--vary" in names and not names & {"--d", "--T", "--k"}:
        raise AssertionError(f"valid options refused (the default sizes satisfy Remark 3.1): {opts}: {err}")
    else:
        assert_refused(code, out, err)


@FAST
@given(options(FIGURE1, required=("--vary",)))
def test_fuzz_figure1_options(opts):
    _check_figure1(opts)


@pytest.mark.slow
@SLOW
@given(options(FIGURE1))
def test_fuzz_figure1_options_long(opts):
    _check_figure1(opts)
