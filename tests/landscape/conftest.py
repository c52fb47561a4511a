"""Fixtures of the census tests (tests/landscape/test_census_*.py): one tiny census run serially in this process,
and the same census through the command line, each made once per test module."""

from __future__ import annotations

import pytest
from threadpoolctl import threadpool_limits

from census_support import ARGS, specs
from landscape import census, fanout, store
from landscape.__main__ import main


@pytest.fixture
def one_thread():
    """BLAS pinned to one thread, as in the census's workers."""
    with threadpool_limits(limits=1):
        yield


@pytest.fixture(scope="module")
def serial_records():
    with threadpool_limits(limits=1):
        return store.canonical([r for recs in fanout.run_all(specs(), workers=1, fn=census.run_chunk) for r in recs])


@pytest.fixture(scope="module")
def full_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("census") / "full"
    assert main([*ARGS, "--out", str(out)]) == 0
    return out
