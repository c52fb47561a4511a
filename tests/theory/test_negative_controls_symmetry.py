"""The symmetry helpers on hard inputs (eigenvalues at the tolerance, a tiny U, a leading vec(A) block, k = 1 and
T = 2), and the verify pipeline shown to fail on planted wrong derivatives."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from strategies import problem_and_point, seeds
from theory import verify
from theory.meta import meta_hess
from theory.minima import global_minimiser
from theory.problem import Problem
from theory.reduced import optimal_A, reduced_hess
from theory.symmetry import (Inertia, boost_tangent, inertia, orbit_tangent, quotient_basis, restricted_inertia,
                             symmetry_tangent)

FAST = settings(max_examples=20, deadline=None)


def _skew_directions(U):
    """U_t Omega with Omega = e_a e_b^T - e_b e_a^T (a < b), written with explicit k x k matrices."""
    T, d, k = U.shape
    cols = []
    for t in range(T):
        for a in range(k):
            for b in range(a + 1, k):
                Om = np.zeros((k, k))
                Om[a, b], Om[b, a] = 1.0, -1.0
                Z = np.zeros_like(U)
                Z[t] = U[t] @ Om
                cols.append(Z.ravel())
    return cols


@FAST
@given(st.integers(1, 3), st.integers(1, 4), st.integers(1, 3), st.integers(0, 5), seeds)
def test_orbit_tangent_is_U_t_times_skew_matrices_after_a_zero_A_block(T, d, k, n_A, seed):
    U = np.random.default_rng(seed).standard_normal((T, d, k))
    Z = orbit_tangent(U, n_A=n_A)
    m = T * k * (k - 1) // 2
    assert Z.shape == (n_A + T * d * k, m)  # also for k = 1 (no columns) with a vec(A) block
    assert np.all(Z[:n_A] == 0.0)
    want = _skew_directions(U)
    for j in range(m):
        assert np.array_equal(Z[n_A:, j], want[j])
    assert np.array_equal(symmetry_tangent(U, n_A=n_A), Z)


@FAST
@given(st.integers(1, 4), st.integers(1, 3), seeds)
def test_boost_tangent_is_U2_Bt_and_U1_B(d, k, seed):
    U = np.random.default_rng(seed).standard_normal((2, d, k))
    Z = boost_tangent(U)
    assert Z.shape == (2 * d * k, k * k)
    for a in range(k):
        for b in range(k):
            B = np.zeros((k, k))
            B[a, b] = 1.0
            want = np.stack([U[1] @ B.T, U[0] @ B]).ravel()
            assert np.array_equal(Z[:, a * k + b], want)
            # tangent to the level set of U_1 U_1^T - U_2 U_2^T: its derivative vanishes
            dU = want.reshape(2, d, k)
            dP = dU[0] @ U[0].T + U[0] @ dU[0].T - dU[1] @ U[1].T - U[1] @ dU[1].T
            assert np.max(np.abs(dP)) <= 1e-12 * max(1.0, np.max(np.abs(U)) ** 2)
    both = symmetry_tangent(U, group="O(k,k)")
    assert np.array_equal(both, np.hstack([orbit_tangent(U), Z]))


def test_symmetry_tangent_refusals():
    with pytest.raises(ValueError, match="T = 2 property, got T = 3"):
        boost_tangent(np.ones((3, 2, 1)))
    with pytest.raises(ValueError, match=r"^the O\(k, k\) quotient is defined for the reduced loss G \(n_A = 0\)$"):
        symmetry_tangent(np.ones((2, 2, 1)), n_A=4, group="O(k,k)")
    with pytest.raises(ValueError, match="group must be 'O\\(k\\)\\^T' or 'O\\(k,k\\)', got 'SO'"):
        symmetry_tangent(np.ones((2, 2, 1)), group="SO")
    with pytest.raises(ValueError, match="group must be"):
        quotient_basis(np.ones((2, 2, 1)), group="O(k)")


@FAST
@given(st.integers(1, 3), st.integers(2, 4), st.integers(1, 3), st.integers(0, 4), seeds)
def test_quotient_basis_is_an_orthonormal_complement(T, d, k, n_A, seed):
    k = min(k, d)
    U = np.random.default_rng(seed).standard_normal((T, d, k))
    Q = quotient_basis(U, n_A=n_A)
    n, m = n_A + T * d * k, T * k * (k - 1) // 2
    assert Q.shape == (n, n - m)
    assert np.allclose(Q.T @ Q, np.eye(n - m), atol=1e-10)
    Z = orbit_tangent(U, n_A=n_A)
    assert np.max(np.abs(Q.T @ Z), initial=0.0) <= 1e-9 * max(1.0, np.max(np.abs(Z), initial=0.0))


def test_quotient_basis_floor_drops_tangents_of_a_tiny_U_and_of_zero_columns():
    U = 1e-12 * np.random.default_rng(0).standard_normal((2, 3, 2))
    assert quotient_basis(U).shape == (12, 12)  # |U_t Omega| ~ 1e-12 < 1e-10 * max(1, |U|): no orbit directions
    assert np.array_equal(quotient_basis(U), np.eye(12))
    assert quotient_basis(1e6 * U).shape == (12, 10)  # the same directions at |U| ~ 1e-6 count (2 of them)
    V = np.random.default_rng(1).standard_normal((2, 3, 2))
    V[1] = 0.0  # a zero block carries no symmetry: only task 1's direction is removed
    assert quotient_basis(V).shape == (12, 11)
    big = 1e8 * np.random.default_rng(2).standard_normal((1, 3, 2))
    Z = orbit_tangent(big)
    assert quotient_basis(big).shape == (6, 5) and np.linalg.norm(Z) > 1e-10 * np.linalg.norm(big)


def test_quotient_basis_thresholds_exactly():
    """A tangent direction exactly at the threshold rtol * max(1, |U|) is dropped (strict); the threshold is floored
    at rtol for |U| < 1 and grows with |U| above 1; directions that are numerically dependent at rtol count once."""
    U = np.zeros((1, 3, 2))
    U[0, 0, 0], U[0, 1, 1] = 3e-11, 4e-11
    col = float(np.linalg.norm(orbit_tangent(U)[:, 0]))
    assert quotient_basis(U, rtol=col).shape == (6, 6)  # |direction| == threshold: dropped
    assert quotient_basis(U, rtol=col * (1 - 1e-12)).shape == (6, 5)
    V = np.zeros((2, 3, 2))
    V[0] = 0.3 * np.eye(3)[:, :2]  # |V| < 1 with the small block: the threshold is rtol itself
    V[1, 0, 0] = V[1, 1, 1] = 1.5e-10 / np.sqrt(2)  # its direction has norm 1.5e-10: above 1e-10, below 2e-10
    assert quotient_basis(V).shape == (12, 10)
    V[0] *= 1e8  # |V| ~ 4e7: the same small direction is now below 1e-10 |V| and dropped
    assert quotient_basis(V).shape == (12, 11)
    # T = 3: two blocks of norm 100 and one whose direction has norm 1.2e-8, between rcond s_max = 1e-8 (what the
    # null space alone would keep) and rtol |U| = 1.41e-8 (the length filter, which drops it)
    B = np.zeros((3, 3, 2))
    B[0, 0, 0] = B[0, 1, 1] = B[1, 0, 0] = B[1, 1, 1] = 100 / np.sqrt(2)
    B[2, 0, 0] = B[2, 1, 1] = 1.2e-8 / np.sqrt(2)
    assert quotient_basis(B).shape == (18, 16)
    rng = np.random.default_rng(0)
    W = np.outer(rng.standard_normal(3), rng.standard_normal(3))[None] + 1e-13 * rng.standard_normal((1, 3, 3))
    # rank-one U_t: its three directions u (v_a e_b - v_b e_a)^T span two dimensions (third singular value ~1e-13)
    assert quotient_basis(W).shape == (9, 7)
    assert quotient_basis(W, rtol=1e-15).shape == (9, 6)


def test_quotient_basis_at_T2_removes_the_boosts_too():
    U = np.random.default_rng(3).standard_normal((2, 4, 2))
    assert quotient_basis(U, group="O(k,k)").shape == (16, 16 - 2 - 4)  # k (2k - 1) = 6 directions
    assert quotient_basis(U).shape == (16, 14)


def test_inertia_counts_tolerance_and_flags():
    ine = inertia(np.diag([3.0, -2.0, 1.0]))
    assert (ine.negative, ine.zero, ine.positive) == (1, 0, 2)
    assert ine.min_eigenvalue == -2.0 and np.array_equal(ine.eigenvalues, [-2.0, 1.0, 3.0])
    assert not ine.positive_definite and ine.tol == 1e-8 * 3.0
    assert inertia(np.diag([1.0, 2.0])).positive_definite
    assert not inertia(np.diag([1.0, 0.0])).positive_definite
    # below max |lam| = 1 the tolerance is rtol itself, not rtol * max |lam|
    small = inertia(np.diag([0.5, 1.5e-8, -0.5e-8]), rtol=1e-8)
    assert small.tol == 1e-8 and (small.negative, small.zero, small.positive) == (0, 1, 2)
    edge = inertia(np.diag([2.0, 2e-8, -2e-8]), rtol=1e-8)  # |lam| == tol counts as zero (strict comparisons)
    assert edge.tol == 2e-8 and (edge.negative, edge.zero, edge.positive) == (0, 2, 1)
    empty = inertia(np.zeros((0, 0)))
    assert (empty.negative, empty.zero, empty.positive, empty.tol) == (0, 0, 0, 1e-8)
    assert np.isnan(empty.min_eigenvalue) and empty.positive_definite
    asym = inertia(np.array([[1.0, 4.0], [0.0, 1.0]]))  # symmetrised first: [[1, 2], [2, 1]], eigenvalues -1, 3
    assert np.allclose(asym.eigenvalues, [-1.0, 3.0]) and asym.negative == 1
    assert isinstance(ine, Inertia)


@FAST
@given(problem_and_point(max_d=4, max_k=2, max_T=3), seeds)
def test_restricted_full_hessian_adds_d_squared_positives_to_the_reduced_one(case, seed):
    """Haynsworth: In(H) = In(H_AA) + In(H / H_AA) with H_AA = 2 T I, and the quotient commutes with the Schur
    complement (the orbit directions have no vec(A) part), so the counts differ by exactly (0, 0, d^2)."""
    p, _, U, _ = case
    full = restricted_inertia(meta_hess(optimal_A(U, p), U, p), U, n_A=p.d * p.d)
    red = restricted_inertia(reduced_hess(U, p), U)
    if np.min(np.abs(red.eigenvalues), initial=np.inf) < 1e-6 * max(1.0, np.max(np.abs(red.eigenvalues))):
        return  # a near-zero eigenvalue may be counted differently under the two relative tolerances
    assert (full.negative, full.zero, full.positive) == (red.negative, red.zero, red.positive + p.d * p.d)


def test_restricted_inertia_at_a_T2_minimiser_with_both_groups():
    p = Problem.random(d=5, k=2, T=2, seed=0)
    U = global_minimiser(p, seed=1).U
    H = reduced_hess(U, p)
    small = restricted_inertia(H, U)  # O(k)^T leaves the k^2 = 4 boosts as zero eigenvalues
    assert (small.negative, small.zero, small.positive) == (0, 4, 20 - 2 - 4)
    big = restricted_inertia(H, U, group="O(k,k)")
    assert (big.negative, big.zero, big.positive) == (0, 0, 20 - 6)
    loose = restricted_inertia(H, U, rtol=10.0)  # everything within 10 max |lam| counts as zero
    assert (loose.negative, loose.positive) == (0, 0)


# --- the verify pipeline says no when a derivative is planted wrong ------------------------------------------------


def test_verify_derivative_checks_fail_on_planted_wrong_derivatives(monkeypatch):
    """The gradient scaled by 1.01 and the reduced Hessian by 1 + 1e-6: the relative errors the checks report are
    those factors (every reference has entries above 1 at the random point), and the whole report fails."""
    from theory import meta, reduced

    good = verify.run_verify(4, 1, 3, 0)
    assert good.passed and [c.bound for c in good.checks[:3]] == [1e-10] * 3
    assert all(c.value <= c.bound for c in good.checks[:3])
    monkeypatch.setattr(verify, "meta_grad_flat", lambda x, p: 1.01 * meta.meta_grad_flat(x, p))
    monkeypatch.setattr(verify, "reduced_hess", lambda U, p: (1 + 1e-6) * reduced.reduced_hess(U, p))
    bad = verify.run_verify(4, 1, 3, 0)
    by_name = {c.name: c for c in bad.checks}
    assert not bad.passed and bad.to_dict()["passed"] is False
    assert by_name["gradient_vs_autograd"].value == pytest.approx(0.01, rel=1e-6, abs=0)
    assert by_name["hessian_vs_autograd"].value == pytest.approx(1e-6, rel=1e-3, abs=0)
    assert by_name["schur_identity"].value == pytest.approx(1e-6, rel=1e-3, abs=0)
    assert not any(by_name[n].passed for n in ("gradient_vs_autograd", "hessian_vs_autograd", "schur_identity"))
    assert all(c.passed for c in bad.checks[3:])  # the theorem checks do not use the planted functions
    where = " at the solution and a random point, full L and reduced G (max abs error / max(1, max |ref|))"
    assert by_name["gradient_vs_autograd"].detail == "analytic vs torch.func.grad" + where
    assert by_name["hessian_vs_autograd"].detail == "analytic vs torch.func.hessian" + where
    assert by_name["schur_identity"].detail == ("reduced Hessian vs Schur complement H_UU - H_UA H_AA^-1 H_AU of the "
                                                "full Hessian at (A(U), U)")


def test_verify_derivative_tolerance_is_inclusive():
    """With the tolerance set to the errors a first run measured, the same (deterministic) run passes: <= tol."""
    first = {c.name: c.value for c in verify.run_verify(4, 1, 2, 1).checks[:3]}
    for name, err in first.items():
        again = {c.name: c for c in verify.run_verify(4, 1, 2, 1, derivative_tol=err).checks[:3]}[name]
        assert again.value == err and again.passed, name


def test_verify_error_is_absolute_below_one(monkeypatch):
    """An error of 1e-3 added to every gradient entry: at the solution (|grad| ~ 0) the scale is max(1, |ref|) = 1,
    so the reported error is 1e-3 itself; elsewhere it is 1e-3 / max|ref| < 1e-3."""
    from theory import meta

    monkeypatch.setattr(verify, "meta_grad_flat", lambda x, p: meta.meta_grad_flat(x, p) + 1e-3)
    c = {c.name: c for c in verify.run_verify(4, 1, 3, 0).checks}["gradient_vs_autograd"]
    assert c.value == pytest.approx(1e-3, rel=1e-6, abs=0) and not c.passed


def test_verify_starts_from_its_seeded_small_start_and_forwards_options(monkeypatch):
    from theory.optimize import SolveOptions, minimise_reduced

    seen = []

    def spy(problem, U0, *, options=None):
        seen.append((problem, np.array(U0), options))
        return minimise_reduced(problem, U0, options=options)

    monkeypatch.setattr(verify, "minimise_reduced", spy)
    opts = SolveOptions(gtol=1e-12)
    rep = verify.run_verify(4, 1, 3, 7, options=opts)
    problem, U0, options = seen[0]
    assert options is opts and problem.seed == 7 and np.array_equal(problem.A_star, Problem.random(4, 1, 3, 7).A_star)
    assert np.array_equal(U0, 1e-3 * np.random.default_rng([7, 1]).standard_normal((3, 4, 1)))
    assert rep.problem is problem
    verify.run_verify(4, 1, 3, 7, init_scale=0.5)
    assert np.array_equal(seen[1][1], 0.5 * np.random.default_rng([7, 1]).standard_normal((3, 4, 1)))


def test_verify_report_dict_and_check_order():
    rep = verify.run_verify(4, 1, 2, 3)
    d = rep.to_dict()
    assert d["instance"] == {"d": 4, "k": 1, "T": 2, "seed": 3}
    assert d["solve"] == {"loss": rep.solve.loss, "grad_norm": rep.solve.grad_norm,
                          "iterations": rep.solve.iterations, "status": rep.solve.status, "seconds": rep.solve.seconds}
    assert [c["name"] for c in d["checks"]] == [
        "gradient_vs_autograd", "hessian_vs_autograd", "schur_identity", "theorem_3_1_rank",
        "corollary_1_sr_test_loss", "meta_lora_reduced_loss", "theorem_3_2_rank", "corollary_2_rank_3k_fit",
        "meta_lora_test_loss", "second_order_stationarity"]
    assert d["checks"][8]["detail"] == "rank-3 LoRA on W_(T+1) from the retrained A"  # rank 3k at T = 2
    assert d["passed"] is rep.passed is True
