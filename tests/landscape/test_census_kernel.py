"""The census's lock-step kernel over instances (equal to the per-instance path), Wilson intervals against known
values and on simulated data, and the plan of a grid under a budget."""

from __future__ import annotations


import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from landscape import _batched, census, census_report, lockstep, multisearch
from landscape.classify import same_orbit
from landscape.search import SolverOptions, problem_scale, solve_batch
from theory.meta import meta_grad, meta_loss
from theory.problem import Problem, ProblemError
from theory.reduced import reduced_hess

from strategies import problems, seeds

pytestmark = pytest.mark.usefixtures("one_thread")


def _same(a: dict, b: dict):
    """Two solver outputs equal bit for bit, row by row."""
    for key in a:
        np.testing.assert_array_equal(np.asarray(a[key]), np.asarray(b[key]), err_msg=key)


# --- the kernel -------------------------------------------------------------------------------------------------

@settings(max_examples=20, deadline=None)
@given(problems(max_d=5, max_k=2, max_T=4), seeds, st.integers(1, 3))
def test_hess_fast_equals_theory(p, seed, B):
    U = np.random.default_rng(seed).standard_normal((B, p.T, p.d, p.k))
    H = _batched.hess_fast(U, p)
    for b in range(B):
        ref = reduced_hess(U[b], p)
        np.testing.assert_allclose(H[b], ref, rtol=1e-12, atol=1e-12 * max(1.0, np.abs(ref).max()))


@settings(max_examples=20, deadline=None)
@given(problems(max_d=4, max_k=2, max_T=4), seeds)
def test_full_loss_grad_equals_theory(p, seed):
    rng = np.random.default_rng(seed)
    A, U = rng.standard_normal((2, p.d, p.d)), rng.standard_normal((2, p.T, p.d, p.k))
    f, gA, gU = _batched.full_loss_grad(A, U, np.stack([p.W, p.W]))
    for b in range(2):
        rA, rU = meta_grad(A[b], U[b], p)
        assert f[b] == pytest.approx(meta_loss(A[b], U[b], p), rel=1e-12, abs=0)
        np.testing.assert_allclose(gA[b], rA, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(gU[b], rU, rtol=1e-12, atol=1e-12)


@settings(max_examples=8, deadline=None)
@given(st.sampled_from([(3, 1, 3), (4, 1, 4), (4, 2, 3)]), seeds, st.integers(2, 4))
def test_batched_over_instances_equals_per_instance(size, seed, m):
    """One lock-step batch holding the starts of m instances gives, row by row and bit for bit, what each instance
    gives alone (so records do not depend on how instances are chunked)."""
    d, k, T = size
    rng = np.random.default_rng(seed)
    ps = [Problem.random(d, k, T, seed=int(s)) for s in rng.integers(0, 2**31, m)]
    per = 6
    inst = np.repeat(np.arange(m), per)
    X0 = rng.standard_normal((m * per, T * d * k)) * np.repeat([problem_scale(p) for p in ps], per)[:, None]
    methods = ["newton", "min"] * (m * per // 2)
    opts = SolverOptions(gd_steps=300, max_iter=40)
    together = lockstep.solve_rows(ps, inst, X0, method=methods, options=opts)
    gd_together = lockstep.descend_rows(ps, inst, 1e-3 * X0, options=opts)
    f1_together = lockstep.figure1_descent(ps, inst, 1e-2 * X0 / X0.std(), options=opts)
    for q in range(m):
        rows = slice(q * per, (q + 1) * per)
        alone = lockstep.solve_rows([ps[q]], np.zeros(per, int), X0[rows], method=methods[rows], options=opts)
        _same({key: v[rows] for key, v in together.items()}, alone)
        gd = lockstep.descend_rows([ps[q]], np.zeros(per, int), 1e-3 * X0[rows], options=opts)
        _same({key: v[rows] for key, v in gd_together.items()}, gd)
        f1 = lockstep.figure1_descent([ps[q]], np.zeros(per, int), 1e-2 * X0[rows] / X0.std(), options=opts)
        _same({key: v[rows] for key, v in f1_together.items()}, f1)


def test_search_instances_chunking_does_not_matter():
    ps = [Problem.random(3, 1, 3, seed=s) for s in (4, 5, 6)]
    kw = dict(starts=8, seed=3, gd_runs=1, figure1_runs=1, options=SolverOptions(gd_steps=500))
    together = multisearch.search_instances(ps, [10, 11, 12], **kw)
    for q in range(3):
        alone = multisearch.search_instances([ps[q]], [10 + q], **kw)[0]
        for a, b in zip(sum(together[q], []), sum(alone, [])):
            assert a.status == b.status and a.iterations == b.iterations and a.seed == b.seed
            assert np.array_equal(a.point, b.point) and a.extra == b.extra


def test_new_kernel_agrees_with_todays_per_instance_path():
    """The oracle: on the same starts, today's per-instance solver (search.solve_batch, eigen-decomposition every
    iteration) and the lock-step kernel over instances (solves where they are cheaper) end with the same status at
    the same critical orbit for (nearly) every start; round-off may send a rare start elsewhere."""
    ps = [Problem.random(3, 1, 3, seed=s) for s in range(6)] + [Problem.random(5, 2, 3, seed=s) for s in range(2)]
    agree = total = 0
    for size in ((3, 1, 3), (5, 2, 3)):
        group = [p for p in ps if (p.d, p.k, p.T) == size]
        starts = [multisearch.start_points(7, i, 16, p.n_reduced) * problem_scale(p) for i, p in enumerate(group)]
        methods = ["newton", "min"] * 8
        new = lockstep.solve_rows(group, np.repeat(np.arange(len(group)), 16), np.concatenate(starts),
                                  method=methods * len(group))
        for q, p in enumerate(group):
            for j, old in enumerate(solve_batch(p, starts[q], method=methods)):
                b = 16 * q + j
                total += 1
                agree += old.status == new["status"][b] and (
                    not old.converged or same_orbit(old.point, new["X"][b].reshape(p.T, p.d, p.k)))
    assert agree >= 0.95 * total, (agree, total)


def test_solve_step_is_the_linear_solve_and_falls_back_to_lu():
    """``_solve_step``: ``(H^2 + m I) s = H g`` ("newton") and ``(H + m I) s = g`` ("min") by Cholesky; a matrix that
    is not positive definite (here an indefinite "min" row, which the kernel never sends) is solved by LU."""
    rng = np.random.default_rng(5)
    A = rng.standard_normal((3, 8, 8))
    H = np.stack([A[0] @ A[0].T + np.eye(8), A[1] + A[1].T, A[2] + A[2].T])  # PD "min", "newton", indefinite "min"
    g = rng.standard_normal((3, 8))
    nw = np.array([False, True, False])
    assert np.linalg.eigvalsh(H[2])[0] < -1.0
    m = np.array([1e-3, 2.0, 1e-3])
    s = lockstep._solve_step(H.copy(), g, nw)(np.arange(3), m)  # _solve_step overwrites its H
    for b in range(3):
        M = (H[b] @ H[b] if nw[b] else H[b]) + m[b] * np.eye(8)
        rhs = H[b] @ g[b] if nw[b] else g[b]
        np.testing.assert_allclose(s[b], np.linalg.solve(M, rhs), rtol=1e-9, atol=0)


# --- Wilson intervals --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("k,n,low,high", [(81, 263, 0.2553, 0.3662), (15, 148, 0.0624, 0.1605),
                                         (0, 20, 0.0, 0.1611), (1, 29, 0.0061, 0.1718)])
def test_wilson_matches_published_values(k, n, low, high):
    """Newcombe (1998), Statistics in Medicine 17:857-872, Table II, method 3 (Wilson score, no correction)."""
    lo, hi = census_report.wilson(k, n)
    assert lo == pytest.approx(low, abs=5e-5) and hi == pytest.approx(high, abs=5e-5)


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 2000))
def test_wilson_zero_gives_the_bound_zero_implies(n):
    z2 = 1.959963984540054 ** 2
    lo, hi = census_report.wilson(0, n)
    assert lo == 0.0 and hi == pytest.approx(z2 / (n + z2), rel=1e-9, abs=0)


@settings(max_examples=10, deadline=None)
@given(st.floats(0.05, 0.95), st.integers(20, 200), seeds)
def test_wilson_covers_on_simulated_data(p, n, seed):
    """Simulated binomial counts: the 95% interval covers the true p in about 95% of 400 draws (the Wilson
    interval's coverage stays within a few points of nominal for these p and n; Brown, Cai, DasGupta 2001)."""
    ks = np.random.default_rng(seed).binomial(n, p, size=400)
    cover = np.mean([lo <= p <= hi for lo, hi in (census_report.wilson(int(k), n) for k in ks)])
    assert 0.88 <= cover <= 0.995


# --- plan and grid -----------------------------------------------------------------------------------------------

def test_parse_grid_and_refusals():
    assert census.parse_grid("d=4,3;k=1;T=3") == [(3, 1, 3), (4, 1, 3)]
    assert len(census.parse_grid("default")) == 7 * 2 * 4
    for bad, match in [("d=3;d=4", "gives d twice"), ("x=3", "keys d, k, T"), ("d=a", "must be integers"),
                       ("d=0", "distinct positive"), ("T=1", "T values must be >= 2"), ("d=1;k=2", "no cell")]:
        with pytest.raises(ProblemError, match=match):
            census.parse_grid(bad)


def test_plan_shares_the_budget_and_skips_what_does_not_fit():
    opts = census.CensusOptions(instances=500, budget=1000.0, min_instances=20)
    cells = [(3, 1, 3), (10, 2, 3), (16, 2, 8)]
    rows = census.plan(cells, opts)
    cost = {c: census.instance_cost(*c, opts) for c in cells}
    used = sum(r["instances"] * r["seconds_per_instance"] for r in rows)
    assert used <= opts.budget
    assert rows[0]["instances"] == 500  # the cheap cell gets all it asks for
    assert rows[2]["instances"] == 0 and "too slow for the budget" in rows[2]["skipped"]
    assert cost[(16, 2, 8)] * 20 > opts.budget / 2  # it really could not fit 20 instances in its share
    assert census.plan(cells, opts) == rows  # deterministic
