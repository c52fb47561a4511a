"""Reconstruction: every function that returns a minimiser, factors, a basis or an enclosure is checked by rebuilding
the object from what it returned (the loss of ``A + B C^T``, G at the returned point, ``Q^T Q = I``, the exact G inside
the returned loss interval)."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest
import scipy.linalg
from hypothesis import given, settings
from hypothesis import strategies as st

from exact_reduced import exact_G
from strategies import problem_and_point, problems, seeds
from theory.finetune import finetune_optimum, tail_energy
from theory.meta import meta_loss
from theory.minima import d1_family_point, global_minimiser, random_orthogonal
from theory.optimize import STATUS, SolveOptions, minimise_reduced
from theory.problem import Problem, ProblemError
from theory.reduced import optimal_A, reduced_grad, reduced_loss, schur_complement

FAST = settings(max_examples=20, deadline=None)


# --- fine-tuning factors ----------------------------------------------------------------------------------------


@FAST
@given(st.integers(1, 6), st.integers(0, 8), seeds)
def test_finetune_factors_rebuild_the_reported_loss(d, r, seed):
    rng = np.random.default_rng(seed)
    A, W = rng.standard_normal((d, d)), rng.standard_normal((d, d))
    res = finetune_optimum(A, W, r)
    rr = min(r, d)
    assert res.B.shape == (d, rr) and res.C.shape == (d, rr)
    rebuilt = float(np.sum((A + res.B @ res.C.T - W) ** 2))
    assert rebuilt == pytest.approx(res.loss, rel=1e-9, abs=1e-12 * np.sum((W - A) ** 2))
    assert np.allclose(res.C.T @ res.C, np.eye(rr), atol=1e-12)  # C = V_r has orthonormal columns
    lam = np.sort(np.linalg.eigvalsh((W - A).T @ (W - A)))[::-1]  # squared singular values, not from an SVD
    assert np.allclose(res.singular_values ** 2, lam, rtol=1e-9, atol=1e-12 * lam[0])
    assert res.loss == pytest.approx(float(np.sum(np.clip(lam[rr:], 0, None))), rel=1e-8, abs=1e-12 * lam[0])


def test_finetune_optimum_closed_form_and_edge_ranks():
    W = np.diag([3.0, -2.0, 1.0])
    res = finetune_optimum(np.zeros((3, 3)), W, 1)
    assert res.loss == 5.0 and np.allclose(res.B @ res.C.T, np.diag([3.0, 0.0, 0.0]))
    assert finetune_optimum(np.zeros((3, 3)), W, 0).loss == 14.0  # r = 0: the whole energy
    full = finetune_optimum(np.zeros((3, 3)), W, np.int64(7))  # numpy integers; r beyond d is clamped to d
    assert full.loss == 0.0 and np.allclose(full.B @ full.C.T, W)
    assert tail_energy(np.array([3.0, 2.0, 1.0]), 1) == 5.0 and tail_energy(np.array([3.0, 2.0]), 2) == 0.0
    # float32 singular values are summed in float64: 1e-4^2 is not lost against 2^2 (it would be in float32)
    s32 = np.array([3.0, 2.0, 1e-4], dtype=np.float32)
    assert tail_energy(s32, 1) == 4.0 + float(s32[2]) ** 2 != 4.0


@pytest.mark.parametrize("A,W,r,match", [
    (np.zeros((2, 3)), np.zeros((2, 3)), 1, "square matrices"),
    (np.zeros(3), np.zeros(3), 1, "square matrices"),
    (np.zeros((3, 3)), np.zeros((2, 2)), 1, r"\(3, 3\) and \(2, 2\)"),
    (np.zeros((3, 3)), np.zeros((3, 3)), -1, "integer >= 0, got -1"),
    (np.zeros((3, 3)), np.zeros((3, 3)), 1.0, "integer >= 0, got 1.0"),
    (np.zeros((3, 3)), np.zeros((3, 3)), True, "integer >= 0, got True"),
])
def test_finetune_optimum_refuses(A, W, r, match):
    with pytest.raises(ProblemError, match=match):
        finetune_optimum(A, W, r)


def test_shape_errors_name_the_expected_shape():
    from theory.meta import meta_loss as L

    p = Problem.random(d=3, k=1, T=2, seed=0)
    with pytest.raises(ProblemError, match=r"^A must have shape \(d, d\) = \(3, 3\), got \(2, 3\)$"):
        L(np.zeros((2, 3)), p.U_star, p)
    with pytest.raises(ProblemError, match=r"^U must have shape \(T, d, k\) = \(2, 3, 1\) or \(6,\), got \(5,\)$"):
        L(p.A_star, np.zeros(5), p)
    assert L(p.A_star.tolist(), p.U_star.ravel().tolist(), p) == 0.0  # lists and the flat U are accepted


def test_autograd_reference_is_float64_and_skips_the_hessian_on_request():
    from theory.autograd_ref import autograd_meta, autograd_reduced

    p = Problem.random(d=3, k=1, T=2, seed=0)
    x = np.random.default_rng(0).standard_normal(p.n_full).astype(np.float32)
    g64, H64 = autograd_meta(p, x.astype(np.float64))
    g32, H32 = autograd_meta(p, x)  # float32 input is computed in float64, not in float32
    assert np.array_equal(g32, g64) and np.array_equal(H32, H64) and g32.dtype == np.float64
    g, H = autograd_reduced(p, x[p.d * p.d:], hess=False)
    assert H is None and g.shape == (p.n_reduced,)
    assert autograd_meta(p, x, hess=False)[1] is None


# --- exact minimisers --------------------------------------------------------------------------------------------


@FAST
@given(st.integers(1, 4), st.integers(1, 4), seeds)
def test_random_orthogonal_is_orthogonal_and_reproducible(k, T, seed):
    Q = random_orthogonal(k, T, seed)
    assert Q.shape == (T, k, k)
    assert np.allclose(Q @ Q.transpose(0, 2, 1), np.eye(k), atol=1e-12)
    assert np.array_equal(Q, random_orthogonal(k, T, seed))
    if k == 1:
        assert set(np.abs(Q).ravel()) == {1.0}


def test_random_orthogonal_draws_both_signs_and_proper_and_improper_rotations():
    signs = random_orthogonal(1, 200, 0).ravel()
    assert 50 < np.sum(signs > 0) < 150
    dets = np.linalg.det(random_orthogonal(3, 200, 0))
    assert 50 < np.sum(dets > 0) < 150  # Haar on O(3), not SO(3)


@FAST
@given(problems(min_T=1, max_d=6), seeds)
def test_global_minimiser_rebuilds_every_task_exactly(p, seed):
    for s in (None, seed):
        pt = global_minimiser(p, seed=s)
        assert np.array_equal(pt.A, p.A_star)
        P = pt.U @ pt.U.transpose(0, 2, 1)
        assert np.allclose(pt.A[None] + P, p.W, atol=1e-12 * max(1.0, np.max(np.abs(p.W))))
        assert meta_loss(pt.A, pt.U, p) <= 1e-24 * max(1.0, float(np.sum(p.W ** 2)))
    assert np.array_equal(global_minimiser(p).U, p.U_star)
    assert np.array_equal(global_minimiser(p, seed=seed).U, global_minimiser(p, seed=seed).U)  # seeded
    moved = global_minimiser(p, seed=seed).U
    assert moved is not p.U_star and not np.shares_memory(moved, p.U_star)


@FAST
@given(problems(min_T=2, max_T=2, max_d=6), st.floats(-2.0, 2.0))
def test_d1_family_point_rebuilds_both_tasks_and_follows_the_hyperbola(p, s):
    pt = d1_family_point(p, s)
    c, sh = np.cosh(s), np.sinh(s)
    assert np.allclose(pt.U[0], c * p.U_star[0] + sh * p.U_star[1], atol=1e-12 * max(1.0, c))
    assert np.allclose(pt.U[1], sh * p.U_star[0] + c * p.U_star[1], atol=1e-12 * max(1.0, c))
    scale = max(1.0, float(np.max(np.abs(pt.U))) ** 2, float(np.max(np.abs(p.W))))
    for t in range(2):  # A + U_t U_t^T = W_t for both tasks
        assert np.allclose(pt.A + pt.U[t] @ pt.U[t].T, p.W[t], atol=1e-11 * scale)


def test_d1_family_point_at_zero_and_refusals():
    p = Problem.random(d=4, k=1, T=2, seed=0)
    pt = d1_family_point(p, 0)
    assert np.array_equal(pt.U, p.U_star) and np.allclose(pt.A, p.A_star, atol=1e-15)
    with pytest.raises(ProblemError, match="T = 2, got T = 3"):
        d1_family_point(Problem.random(d=4, k=1, T=3, seed=0), 0.5)
    for bad in (np.nan, np.inf):
        with pytest.raises(ProblemError, match="s must be finite, got"):
            d1_family_point(p, bad)


# --- the solver: its point rebuilds its loss and gradient norm ---------------------------------------------------


@settings(max_examples=8, deadline=None)
@given(problems(remark_3_1=True, min_T=2, max_d=5), seeds)
def test_minimise_reduced_returns_what_its_point_gives(p, seed):
    U0 = 1e-2 * np.random.default_rng(seed).standard_normal((p.T, p.d, p.k))
    res = minimise_reduced(p, U0.ravel(), options=SolveOptions(max_iter=15))
    assert res.point.shape == (p.T, p.d, p.k)
    assert res.loss == reduced_loss(res.point, p)
    assert res.grad_norm == float(np.linalg.norm(reduced_grad(res.point, p)))
    assert res.converged == (res.status == "converged") == (res.grad_norm <= 1e-11)
    assert res.message == STATUS[res.status] and 1 <= res.iterations <= 15 and res.seconds >= 0
    assert (res.status == "max_iter") == (res.grad_norm > 1e-11 and res.iterations == 15)
    assert np.array_equal(U0, 1e-2 * np.random.default_rng(seed).standard_normal((p.T, p.d, p.k)))  # not modified


def test_minimise_reduced_reports_the_iteration_cap_and_failures():
    p = Problem.random(d=5, k=1, T=3, seed=0)
    U0 = 1e-3 * np.random.default_rng(1).standard_normal((3, 5, 1))
    capped = minimise_reduced(p, U0, options=SolveOptions(max_iter=1))
    assert (capped.status, capped.iterations, capped.converged) == ("max_iter", 1, False)
    assert capped.grad_norm > 1e-11 and capped.message == STATUS["max_iter"]
    done = minimise_reduced(p, U0, options=SolveOptions(gtol=1e-3))
    assert done.status == "converged" and done.grad_norm <= 1e-3
    # at U = 0 (a critical point, gradient exactly 0) every method stops at once
    for method in ("trust-exact", "trust-krylov", "trust-ncg"):
        at_zero = minimise_reduced(p, np.zeros((3, 5, 1)), options=SolveOptions(method=method))
        assert at_zero.grad_norm == 0.0 and at_zero.status == "converged"


def _status(res, gtol, max_iter):
    """The documented status table: converged iff |grad| <= gtol, else max_iter iff the cap was reached, else failed."""
    return "converged" if res.grad_norm <= gtol else "max_iter" if res.iterations >= max_iter else "failed"


@pytest.mark.parametrize("method", ["trust-exact", "trust-krylov", "trust-ncg"])
def test_minimise_reduced_status_follows_its_table_near_a_minimum(method):
    """From 1e-3 off U*, Newton-type steps converge in a few iterations (quadratically); whatever each method does,
    the status is the one the table gives (trust-krylov stops early here: "failed")."""
    for seed in range(3):
        p = Problem.random(d=5, k=1, T=3, seed=seed)
        U0 = p.U_star + 1e-3 * np.random.default_rng(seed).standard_normal(p.U_star.shape)
        res = minimise_reduced(p, U0, options=SolveOptions(method=method, max_iter=60))
        assert res.status == _status(res, 1e-11, 60) and res.message == STATUS[res.status]
        if method == "trust-exact":
            assert res.status == "converged" and res.iterations <= 6  # BFGS would need about 20


def test_minimise_reduced_names_a_stop_without_progress_failed():
    """At U* with gtol = 1e-30 (below round-off of |grad| ~ 1e-15) the trust region cannot predict an improvement
    and stops before the iteration cap: status "failed"."""
    p = Problem.random(d=5, k=1, T=3, seed=0)
    res = minimise_reduced(p, p.U_star, options=SolveOptions(gtol=1e-30, max_iter=100))
    assert res.iterations < 100 and res.grad_norm > 1e-30
    assert res.status == "failed" and not res.converged and res.message == STATUS["failed"]


def test_minimise_reduced_gtol_is_inclusive_and_seconds_are_wall_time():
    import time

    p = Problem.random(d=4, k=1, T=3, seed=1)
    U0 = p.U_star + 1e-3 * np.random.default_rng(0).standard_normal((3, 4, 1))  # one Newton step lowers |grad|
    one = minimise_reduced(p, U0, options=SolveOptions(max_iter=1))
    assert one.iterations == 1 and one.status == "max_iter"
    start = time.perf_counter()
    again = minimise_reduced(p, U0, options=SolveOptions(max_iter=1, gtol=one.grad_norm))
    elapsed = time.perf_counter() - start
    assert np.array_equal(again.point, one.point) and again.grad_norm == one.grad_norm
    assert again.status == "converged"  # |grad| <= gtol with equality
    assert 0.0 <= again.seconds <= elapsed


@pytest.mark.parametrize("kwargs,match", [
    (dict(method="bfgs"), "method must be trust-exact, trust-krylov or trust-ncg, got 'bfgs'"),
    (dict(gtol=0.0), "gtol must be a finite number > 0, got 0.0"),
    (dict(gtol=float("inf")), "gtol must be a finite number > 0, got inf"),
    (dict(max_iter=0), "max_iter must be a positive integer \\(> 0\\), got 0"),
    (dict(max_iter=True), "max_iter must be a positive integer \\(> 0\\), got True"),
    (dict(max_iter=2.0), "max_iter must be a positive integer \\(> 0\\), got 2.0"),
])
def test_solve_options_refused(kwargs, match):
    with pytest.raises(ProblemError, match=match):
        SolveOptions(**kwargs)


def test_minimise_reduced_refuses_a_non_finite_start():
    p = Problem.random(d=3, k=1, T=2, seed=0)
    U0 = np.zeros((2, 3, 1))
    U0[1, 2, 0] = np.nan
    with pytest.raises(ProblemError, match="^U0 must have finite entries$"):
        minimise_reduced(p, U0)


# --- the reduced problem: A(U) and the Schur complement rebuilt -------------------------------------------------


@FAST
@given(problem_and_point())
def test_optimal_A_rebuilds_the_mean_residual(case):
    p, _, U, _ = case
    A = optimal_A(U, p)
    assert np.allclose(A, np.mean([p.W[t] - U[t] @ U[t].T for t in range(p.T)], axis=0), atol=1e-12 * max(
        1.0, float(np.max(np.abs(U))) ** 2, float(np.max(np.abs(p.W)))))
    assert meta_loss(A, U, p) == pytest.approx(reduced_loss(U, p), rel=1e-11, abs=1e-12)


@FAST
@given(st.integers(1, 4), st.integers(1, 4), seeds)
def test_schur_complement_is_the_inverse_of_the_inverse_block(n_A, n_U, seed):
    """(H^-1)_UU = (H / H_AA)^-1 for a symmetric positive definite H (block inversion)."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n_A + n_U, n_A + n_U))
    H = X @ X.T + (n_A + n_U) * np.eye(n_A + n_U)
    S = schur_complement(H, n_A)
    assert S.shape == (n_U, n_U)
    assert np.allclose(np.linalg.inv(S), np.linalg.inv(H)[n_A:, n_A:], rtol=1e-9, atol=1e-12)


def test_schur_complement_refuses_bad_input():
    H = np.eye(4)
    for bad_n in (0, 4, -1):
        with pytest.raises(ProblemError, match=f"n_A must lie in 1..3, got {bad_n}"):
            schur_complement(H, bad_n)
    with pytest.raises(ProblemError, match=r"square matrix, got shape \(3, 4\)"):
        schur_complement(np.zeros((3, 4)), 1)
    with pytest.raises(ProblemError, match=r"square matrix, got shape \(4,\)"):
        schur_complement(np.zeros(4), 1)
    with pytest.raises(np.linalg.LinAlgError):  # H_AA must be positive definite (Cholesky)
        schur_complement(np.diag([-1.0, 1.0, 1.0]), 1)
    assert np.array_equal(schur_complement(np.diag([2.0, 3.0, 5.0]), 2), np.array([[5.0]]))


def test_exact_G_agrees_with_reduced_loss_on_float_points():
    p = Problem.random(d=3, k=1, T=3, seed=7)
    U = np.random.default_rng(0).standard_normal((3, 3, 1))
    assert float(exact_G(p, U)) == pytest.approx(reduced_loss(U, p), rel=1e-12, abs=0)
    assert exact_G(p, p.U_star) == Fraction(0)
    assert scipy.linalg.norm(reduced_grad(p.U_star, p)) < 1e-12


def test_float32_inputs_are_computed_in_float64():
    """float32 arrays are widened exactly to float64 before any arithmetic: each result equals the one from the
    widened input bit for bit (float32 arithmetic would round U U^T, T A, the eigenvalues and the Cholesky factor)."""
    from theory.meta import meta_loss as L
    from theory.sr import sr_grad
    from theory.symmetry import inertia

    p = Problem.random(d=4, k=2, T=3, seed=0)
    rng = np.random.default_rng(1)
    A32 = rng.standard_normal((4, 4)).astype(np.float32)
    U32 = rng.standard_normal((3, 4, 2)).astype(np.float32)
    wide = lambda a: np.asarray(a, dtype=np.float64)  # noqa: E731
    assert L(A32, U32, p) == L(wide(A32), wide(U32), p)
    assert np.array_equal(sr_grad(A32, p), sr_grad(wide(A32), p))
    X = rng.standard_normal((5, 5))
    H32 = (X @ X.T + 5 * np.eye(5)).astype(np.float32)
    assert np.array_equal(inertia(H32).eigenvalues, inertia(wide(H32)).eigenvalues)
    assert np.array_equal(schur_complement(H32, 2), schur_complement(wide(H32), 2))
