"""The committed census (``results/census/census.json``) reproduces from the code: two of its cells are re-run with the
command recorded there (one cell, the recorded number of instances) and every count and interval must be the same.

This guards the published numbers against kernel changes that look harmless but move round-off (a different
memory order of an array summed by NumPy's ``einsum`` once changed 3 of 3,703 converged solves). It is exact, so it
holds on the machine class that made ``results/census`` (x86-64, the pinned torch and NumPy wheels, one BLAS thread
per worker); a BLAS or LAPACK that takes other code paths on another CPU may change a few Newton solves, and then the
failure lists the fields that moved. Slow (about 30 s and 60 s on 2 cores): ``python -m pytest -m slow``.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CENSUS = ROOT / "results" / "census" / "census.json"


def _without_timings(x):
    """``x`` without its wall-time fields (``seconds``, ``..._seconds_per_candidate``), at every depth."""
    if isinstance(x, dict):
        return {k: _without_timings(v) for k, v in x.items()
                if k != "seconds" and not k.endswith("_seconds_per_candidate")}
    return x


@pytest.mark.slow
@pytest.mark.skipif(not CENSUS.exists(), reason="results/census/census.json not in this checkout")
@pytest.mark.parametrize("cell", [(3, 1, 3), (10, 2, 3)], ids=["d3_k1_T3", "d10_k2_T3"])
def test_a_committed_census_cell_reproduces(cell, tmp_path):
    recorded = json.loads(CENSUS.read_text())
    want = next(c for c in recorded["cells"] if (c["d"], c["k"], c["T"]) == cell)
    args = shlex.split(recorded["command"])
    assert args[:4] == ["python", "-m", "landscape", "census"], recorded["command"]
    d, k, T = cell
    args[args.index("--grid") + 1] = f"d={d};k={k};T={T}"
    args[args.index("--instances") + 1] = str(want["instances"])  # the grid's budget gave the cell this many
    args[args.index("--out") + 1] = str(tmp_path / "census")
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    run = subprocess.run([sys.executable, *args[1:], "--workers", "2"], env=env, capture_output=True, text=True,
                         timeout=900)
    assert run.returncode == 0, run.stderr
    summary = subprocess.run([sys.executable, "-m", "landscape", "census-summary", str(tmp_path / "census"), "--out",
                              str(tmp_path / "summary")], env=env, capture_output=True, text=True, timeout=300)
    assert summary.returncode == 0, summary.stderr
    got = json.loads((tmp_path / "summary" / "census.json").read_text())["cells"]
    assert len(got) == 1
    got, want = _without_timings(got[0]), _without_timings(want)
    moved = {key: (got.get(key), want[key]) for key in want if got.get(key) != want[key]}
    assert not moved, f"the re-run differs from results/census in {sorted(moved)}: {moved}"
