"""Shared pieces of the census tests: a tiny census (options, chunk specs, command-line arguments) and readers."""

from __future__ import annotations

import os

from landscape import census, store

FAST = {"gd_steps": 3000}
TINY = census.CensusOptions(instances=3, starts=8, gd_runs=1, figure1_runs=1, budget=100.0, min_instances=1,
                            chunk_seconds=1e-3, solver=FAST)
ARGS = ["census", "--grid", "d=3,4;k=1;T=3", "--instances", "3", "--starts", "8", "--gd-runs", "1",
        "--figure1-runs", "1", "--gd-steps", "3000", "--min-instances", "1", "--chunk-seconds", "0.001",
        "--workers", "1"]


def specs(opts=TINY, grid="d=3,4;k=1;T=3"):
    return census.chunk_specs(census.plan(census.parse_grid(grid), opts), {}, opts)


def by_cell(records):
    return sorted(records, key=lambda r: (r["config"]["d"], r["index"]))


def cells_of(folder):
    return {name: store.canonical(store.load(str(folder / "cells" / name)))
            for name in sorted(os.listdir(folder / "cells"))}
