"""Search many instances of one size in one lock-step batch: starts, solves, descents, results.

:func:`search_instances` is the counterpart over instances of :func:`landscape.search.search_instance`: the same
start scales and methods, with all rows of all instances iterated together by :mod:`landscape.lockstep`, and the
starts of an instance drawn from one generator (:func:`start_points`).

>>> from theory.problem import Problem
>>> ps = [Problem.random(3, 1, 3, seed=s) for s in (0, 1)]
>>> out = search_instances(ps, [0, 1], starts=4, seed=0, gd_runs=0)
>>> [len(solves) for solves, _, _ in out]
[4, 4]
"""

from __future__ import annotations

import time

import numpy as np

from theory.cli_contract import require_int
from theory.problem import Problem, ProblemError

from .lockstep import FIGURE1_INIT_SCALE, descend_rows, figure1_descent, solve_rows
from .result import SearchResult
from .search import _METHODS, SolverOptions, problem_scale

__all__ = ["search_instances", "start_points"]


def _results(out: dict, rows, shape, *, methods, seeds, scales, seconds: float) -> list[SearchResult]:
    """The rows ``rows`` of a solver's output as :class:`SearchResult` objects (``extra`` for descent runs)."""
    rows = np.asarray(rows)
    loss, status, its = out["f"][rows].tolist(), out["status"][rows].tolist(), out["iterations"][rows].tolist()
    gnorm = np.linalg.norm(out["g"][rows], axis=1).tolist()
    extra = [{}] * rows.size
    if "gd_iterations" in out:
        extra = [{"gd_iterations": a, "gd_loss": b, "moved": c} for a, b, c in
                 zip(out["gd_iterations"][rows].tolist(), out["gd_loss"][rows].tolist(), out["moved"][rows].tolist())]
    return [SearchResult(point=out["X"][b].reshape(shape), loss=loss[q], grad_norm=gnorm[q], inertia=None,
                         min_eigenvalue=float("nan"), iterations=its[q] + extra[q].get("gd_iterations", 0),
                         seed=seeds[b], seconds=seconds, status=status[q], method=methods[b], scale=scales[b],
                         extra=extra[q])
            for q, b in enumerate(rows.tolist())]


def start_points(seed: int, instance: int, count: int, n: int) -> np.ndarray:
    """Unscaled starts of one instance, shape ``(count, n)``: i.i.d. N(0, 1) rows from
    ``default_rng(SeedSequence(seed, spawn_key=(instance, 1)))`` (one generator per instance: seeding a generator
    per start cost more than a Newton-type solve at n = 9). Row j is start j, the same whoever computes it."""
    return np.random.default_rng(np.random.SeedSequence(int(seed), spawn_key=(int(instance), 1))).standard_normal(
        (count, n))


def search_instances(problems: list[Problem], indices, *, starts: int, seed: int,
                     scales=(0.1, 0.5, 1.0, 2.0), gd_runs: int = 2, gd_scale: float = 1e-3, figure1_runs: int = 0,
                     options: SolverOptions | None = None) -> list[tuple[list, list, list]]:
    """All solves of several instances of one size in lock-step: per instance ``(solves, gd, figure1)`` lists of
    :class:`landscape.result.SearchResult`.

    ``problems[q]`` is instance ``indices[q]`` of a run seeded ``seed``; its rows of :func:`start_points` are, in
    order: ``starts`` Newton-type starts (start j scaled by ``scales[j % len(scales)] * r``, ``r`` =
    :func:`landscape.search.problem_scale`, method ``"newton"`` for even ``j // len(scales)``, ``"min"`` for odd, as
    in :func:`landscape.search.search_instance`), ``gd_runs`` starts of gradient descent on G scaled by
    ``gd_scale * r`` (:func:`descend_rows`), and ``figure1_runs`` starts of :func:`figure1_descent` scaled by
    :data:`FIGURE1_INIT_SCALE` (absolute, as in Figure 1). A result's ``seed`` is its row number j. Every row is
    iterated with all rows of all instances in one lock-step batch per kind; the results do not depend on which
    instances share the call.

    Raises
    ------
    ProblemError
        ``starts``, ``gd_runs`` or ``figure1_runs`` not an integer >= 0, ``scales`` empty or not finite and > 0, or
        instances of different sizes.
    """
    for name, v in (("starts", starts), ("gd_runs", gd_runs), ("figure1_runs", figure1_runs)):
        require_int(name, v, minimum=0)
    if not scales or any(not (np.isfinite(s) and s > 0) for s in scales):
        raise ProblemError(f"scales must be a non-empty list of finite numbers > 0, got {list(scales)}")
    opts = options or SolverOptions()
    indices = [int(i) for i in indices]
    m = len(problems)
    if m == 0:
        return []
    shape = (problems[0].T, problems[0].d, problems[0].k)
    n = int(np.prod(shape))
    r = np.array([problem_scale(p) for p in problems])
    total = starts + gd_runs + figure1_runs
    Z = np.stack([start_points(seed, i, total, n) for i in indices])  # (m, total, n)
    js = np.arange(starts)
    kinds = [("solves", js, np.array([scales[j % len(scales)] for j in js]), None),
             ("gd", starts + np.arange(gd_runs), np.full(gd_runs, gd_scale), None),
             ("figure1", starts + gd_runs + np.arange(figure1_runs), np.ones(figure1_runs), FIGURE1_INIT_SCALE)]
    out = [([], [], []) for _ in range(m)]
    for slot, (kind, rows, rel, absolute) in enumerate(kinds):
        if rows.size == 0:
            continue
        inst = np.repeat(np.arange(m), rows.size)
        scs = (np.tile(rel, m) * (absolute if absolute is not None else r[inst]))
        X0 = Z[:, rows].reshape(-1, n) * scs[:, None]
        t0 = time.perf_counter()
        if kind == "solves":
            methods = [_METHODS[(j // len(scales)) % 2] for j in js] * m
            res = solve_rows(problems, inst, X0, method=methods, options=opts)
        elif kind == "gd":
            methods = ["gd"] * inst.size
            res = descend_rows(problems, inst, X0, options=opts)
        else:
            methods = ["gd-figure1"] * inst.size
            res = figure1_descent(problems, inst, X0, options=opts)
        seconds = (time.perf_counter() - t0) / inst.size
        seeds = np.tile(rows, m).tolist()
        for q in range(m):
            out[q][slot].extend(_results(res, np.flatnonzero(inst == q), shape, methods=methods, seeds=seeds,
                                         scales=scs.tolist(), seconds=seconds))
    return out
