"""Negative controls for every check of theory.checks: a planted violation the check exists to catch, with the
reported ``value`` and ``bound`` compared with numbers computed here independently (eigenvalues of ``M^T M``
instead of the SVD, closed forms of planted points), and the boundary of each comparison."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from strategies import problems, seeds
from theory import checks
from theory.minima import global_minimiser
from theory.problem import Problem, ProblemError, require_remark_3_1

FAST = settings(max_examples=20, deadline=None)


def _tail(M: np.ndarray, r: int) -> float:
    """Sum of the squared singular values of M beyond the r-th, from the eigenvalues of M^T M (not an SVD)."""
    lam = np.sort(np.clip(np.linalg.eigvalsh(M.T @ M), 0.0, None))[::-1]
    return float(np.sum(lam[r:]))


def _planted_rank(rng, d: int, r: int, scale: float = 1.0) -> np.ndarray:
    """A (d, d) matrix of rank r with singular values 1..r (times scale) in random orthonormal bases."""
    Q1, _ = np.linalg.qr(rng.standard_normal((d, d)))
    Q2, _ = np.linalg.qr(rng.standard_normal((d, d)))
    s = np.zeros(d)
    s[:r] = scale * np.arange(1, r + 1)
    return (Q1 * s) @ Q2.T


def _a_sr(p: Problem) -> np.ndarray:
    """A_SR = A* + (1/T) sum_t U*_t U*_t^T written from the closed form, not from theory.sr."""
    return p.A_star + np.einsum("tia,tja->ij", p.U_star, p.U_star) / p.T


# --- numerical_rank --------------------------------------------------------------------------------------------


@FAST
@given(st.integers(1, 6), st.integers(0, 6), seeds, st.floats(1e-6, 1e6))
def test_numerical_rank_of_planted_rank_is_scale_free(d, r, seed, scale):
    r = min(r, d)
    M = _planted_rank(np.random.default_rng(seed), d, r, scale)
    assert checks.numerical_rank(M) == r


def test_numerical_rank_zero_and_empty_matrices():
    assert checks.numerical_rank(np.zeros((3, 3))) == 0
    assert checks.numerical_rank(np.zeros((0, 4))) == 0
    assert checks.numerical_rank(np.zeros((4, 4)), atol=0.0) == 0


def test_numerical_rank_threshold_is_relative_strict_and_floored_by_atol():
    M = np.diag([2.0, 2e-9, 1e-12])
    assert checks.numerical_rank(M, rtol=1e-9) == 1  # 2e-9 == rtol * s_max is not above it: strict
    assert checks.numerical_rank(M, rtol=0.99e-9) == 2
    assert checks.numerical_rank(M, rtol=0.0) == 3
    assert checks.numerical_rank(M, rtol=0.0, atol=1e-12) == 2  # atol strict too
    assert checks.numerical_rank(M, rtol=1e-15, atol=1e-10) == 2  # atol dominates a tiny rtol
    assert checks.numerical_rank(3.0 * M, rtol=1e-9) == 1  # relative: scaling M changes nothing
    assert checks.numerical_rank(np.eye(3)) == 3  # s_max = 1 is not the zero matrix


# --- Theorem 3.1 -----------------------------------------------------------------------------------------------


@FAST
@given(problems(remark_3_1=True, min_T=2, max_d=8), seeds)
def test_theorem_3_1_fails_when_a_task_repeats_another(p, seed):
    """U*_T in the span of the other tasks' columns: rank(A_SR - A*) drops from T k to (T - 1) k."""
    mix = np.random.default_rng(seed).standard_normal((p.T - 1, p.k, p.k))
    U = p.U_star.copy()
    U[-1] = np.einsum("tia,tab->ib", U[:-1], mix) / np.sqrt(p.T - 1)
    q = Problem(A_star=p.A_star, U_star=U, U_test=p.U_test)
    r = checks.theorem_3_1_rank(q)
    assert (r.passed, r.value, r.bound) == (False, float((p.T - 1) * p.k), float(p.T * p.k))


def test_theorem_3_1_precondition_and_its_boundary():
    with pytest.raises(ProblemError, match=r"T\*k <= d, got T\*k = 4 > d = 3"):
        checks.theorem_3_1_rank(Problem.random(d=3, k=1, T=4, seed=0))
    with pytest.raises(ProblemError, match=r"T\*k <= d, got T\*k = 4 > d = 3"):
        checks.theorem_3_1_rank(Problem.random(d=3, k=2, T=2, seed=0))
    r = checks.theorem_3_1_rank(Problem.random(d=4, k=2, T=2, seed=0))  # T k = d is allowed
    assert (r.passed, r.value, r.bound) == (True, 4.0, 4.0)
    assert r.detail == "numerical rank of A_SR - A* (singular values above 1e-09 * s_max) against T k"
    # rtol = 1: no singular value lies above s_max itself, so the rank reads 0 and the check says no
    none = checks.theorem_3_1_rank(Problem.random(d=4, k=2, T=2, seed=0), rtol=1.0)
    assert (none.passed, none.value) == (False, 0.0) and "above 1 * s_max" in none.detail


# --- Corollary 1 -----------------------------------------------------------------------------------------------


@FAST
@given(problems(remark_3_1=True, max_d=8), st.data())
def test_corollary_1_value_bound_and_both_branches(p, data):
    """value = tail energy of W_(T+1) - A_SR beyond r, bound = rtol ||W_(T+1) - A_SR||_F^2; for r below the rank
    (T+1) k the loss must exceed the bound, from r = rank on it must not."""
    M = p.W_test - _a_sr(p)
    rank = (p.T + 1) * p.k
    r = data.draw(st.integers(0, p.d), label="r")
    c = checks.corollary_1_sr_test_loss(p, r, rtol=1e-10)
    assert np.isclose(c.value, _tail(M, r), rtol=1e-8, atol=1e-10 * np.sum(M ** 2))
    assert np.isclose(c.bound, 1e-10 * np.sum(M ** 2), rtol=1e-12)
    assert c.passed == (c.value > c.bound if r < rank else c.value <= c.bound)  # (fails on ill-conditioned draws)
    assert f"rank-{r} LoRA on W_(T+1) from A_SR; rank(W_(T+1) - A_SR) = {rank}, so the loss must be " in c.detail
    assert c.detail.endswith("> bound" if r < rank else "<= bound") and c.name == "corollary_1_sr_test_loss"
    if r < rank:  # the same loss against a bound it can never exceed (the whole energy): the check says no
        no = checks.corollary_1_sr_test_loss(p, r, rtol=1.0)
        assert not no.passed and np.isclose(no.bound, np.sum(M ** 2), rtol=1e-12) and no.value <= no.bound


def test_corollary_1_defaults_to_rank_k():
    p = Problem.random(d=7, k=2, T=2, seed=3)
    assert checks.corollary_1_sr_test_loss(p).value == pytest.approx(_tail(p.W_test - _a_sr(p), 2), rel=1e-9, abs=0)


def test_corollary_1_at_and_above_the_rank():
    """From r = rank on the loss must not exceed the bound (inclusive: r = d leaves an exactly zero tail, which
    passes against rtol = 0); a negative bound cannot be met."""
    p = Problem.random(d=5, k=1, T=2, seed=0)
    assert checks.corollary_1_sr_test_loss(p, 3).passed  # r = (T + 1) k = rank
    top = checks.corollary_1_sr_test_loss(p, 5, rtol=0.0)
    assert (top.passed, top.value, top.bound) == (True, 0.0, 0.0)
    c = checks.corollary_1_sr_test_loss(p, 3, rtol=-1.0)
    assert not c.passed and c.bound < 0 <= c.value
    # r = 0, rtol = 1: the loss is the whole energy, equal to the bound, and must exceed it strictly
    zero = checks.corollary_1_sr_test_loss(p, 0, rtol=1.0)
    assert zero.value == zero.bound > 0 and not zero.passed


# --- the reduced loss reached ------------------------------------------------------------------------------------


def test_meta_lora_reduced_loss_says_no_at_zero_adapters_and_is_strict():
    p = Problem.random(d=4, k=1, T=3, seed=5)
    G0 = float(np.sum((p.W - p.W.mean(axis=0)) ** 2))  # G(0) = sum_t ||W_t - mean W||_F^2
    c = checks.meta_lora_reduced_loss(p, np.zeros((3, 4, 1)))
    assert (c.passed, c.bound) == (False, 1e-12) and c.value == pytest.approx(G0, rel=1e-12, abs=0)
    assert not checks.meta_lora_reduced_loss(p, np.zeros((3, 4, 1)), tol=c.value).passed  # G < tol, strictly
    assert checks.meta_lora_reduced_loss(p, np.zeros((3, 4, 1)), tol=np.nextafter(c.value, np.inf)).passed
    ok = checks.meta_lora_reduced_loss(p, p.U_star)
    assert ok.passed and 0.0 <= ok.value < 1e-24
    assert (ok.name, ok.detail) == ("meta_lora_reduced_loss", "G(U) = min_A L(A, U) at the solver's point")


# --- Theorem 3.2 ---------------------------------------------------------------------------------------------------


@FAST
@given(problems(remark_3_1=True, min_T=2, max_T=3, max_d=8), seeds)
def test_theorem_3_2_says_no_to_a_high_rank_shift_with_positive_loss(p, seed):
    """A = A* + Delta with rank(Delta) = 2k + 1, U = U*: L = T ||Delta||_F^2 > 0 and rank(A - A*) = 2k + 1."""
    if 2 * p.k + 1 > p.d:
        return
    Delta = _planted_rank(np.random.default_rng(seed), p.d, 2 * p.k + 1)
    c = checks.theorem_3_2_rank(p, p.A_star + Delta, p.U_star)
    assert (c.passed, c.value, c.bound) == (False, float(2 * p.k + 1), float(2 * p.k))
    assert f"L = {p.T * np.sum(Delta ** 2):.3g}" in c.detail


@FAST
@given(problems(remark_3_1=True, min_T=2, max_T=2, max_d=8), seeds)
def test_theorem_3_2_passes_at_rank_2k_shifts_of_zero_loss(p, seed):
    """The Appendix D.1 minimisers have A - A* = U*_1 U*_1^T - U_1 U_1^T, of rank at most 2k, and L = 0."""
    from theory.minima import d1_family_point

    pt = d1_family_point(p, float(np.random.default_rng(seed).uniform(0.3, 1.5)))
    c = checks.theorem_3_2_rank(p, pt.A, pt.U)
    assert c.passed and c.bound == 2 * p.k and c.value == np.linalg.matrix_rank(pt.A - p.A_star, tol=1e-6)


@pytest.mark.parametrize("spectrum,rank", [
    ((10.0, 5.0, 1.1e-7), 3),  # threshold 1e-8 |Delta|_2 = 1e-7 (spectral, not Frobenius 1.118e-7): counted
    ((10.0, 5.0, 5e-8), 2),  # below the relative threshold
    ((1.5, 1.0, 1.8e-8), 3),  # |Delta|_2 < 2: the threshold is 1e-8 * 1.5, not 1e-8 * 2
    ((0.5, 0.25, 7e-9), 2),  # |Delta|_2 < 1: the floor max(1, .) makes the threshold 1e-8, not 5e-9
])
def test_theorem_3_2_counts_singular_values_above_1e_8_times_the_largest(spectrum, rank):
    p = Problem.random(d=4, k=1, T=2, seed=0)
    Q, _ = np.linalg.qr(np.random.default_rng(1).standard_normal((4, 4)))
    Delta = (Q[:, :3] * np.array(spectrum)) @ Q[:, :3].T
    c = checks.theorem_3_2_rank(p, p.A_star + Delta, p.U_star)
    assert (c.value, c.bound, c.passed) == (float(rank), 2.0, rank <= 2)


# --- Corollary 2 and the test loss -------------------------------------------------------------------------------


@FAST
@given(problems(remark_3_1=True, min_T=3, max_T=4, max_d=10))
def test_corollary_2_says_no_from_the_sr_base(p):
    """From A_SR, W_(T+1) - A has rank (T+1) k > 3k for T >= 3: a rank-3k adapter leaves the tail."""
    M = p.W_test - _a_sr(p)
    c = checks.corollary_2_rank_3k_fit(p, _a_sr(p))
    assert not c.passed
    assert c.value == pytest.approx(_tail(M, 3 * p.k), rel=1e-8, abs=0)
    assert c.bound == pytest.approx(1e-8 * np.sum(M ** 2), rel=1e-12, abs=0)


def test_corollary_2_passes_from_the_ground_truth():
    p = Problem.random(d=6, k=1, T=3, seed=1)
    c = checks.corollary_2_rank_3k_fit(p, p.A_star)  # W_(T+1) - A* has rank k <= 3k
    assert c.passed and 0.0 <= c.value <= c.bound
    assert c.bound == pytest.approx(1e-8 * np.sum((p.W_test - p.A_star) ** 2), rel=1e-12, abs=0)
    assert (c.name, c.detail) == ("corollary_2_rank_3k_fit", "best rank-3k LoRA loss on W_(T+1) from the retrained A")


def test_fit_checks_are_inclusive_at_a_zero_tail():
    """d <= 3k (or r = d): the adapter has full rank, the tail is exactly 0, and 0 <= 0 passes with rtol = 0."""
    p = Problem.random(d=3, k=1, T=2, seed=0)
    for c in (checks.corollary_2_rank_3k_fit(p, np.zeros((3, 3)), rtol=0.0),
              checks.meta_lora_test_loss(p, np.zeros((3, 3)), 3, rtol=0.0)):
        assert (c.passed, c.value, c.bound) == (True, 0.0, 0.0)


@FAST
@given(problems(remark_3_1=True, min_T=3, max_T=4, max_d=8))
def test_meta_lora_test_loss_says_no_from_the_sr_base_at_rank_k(p):
    c = checks.meta_lora_test_loss(p, _a_sr(p), p.k)
    assert not c.passed
    assert c.value == pytest.approx(_tail(p.W_test - _a_sr(p), p.k), rel=1e-8, abs=0)
    assert c.bound == pytest.approx(1e-8 * np.sum(p.W_test ** 2), rel=1e-12, abs=0)
    ok = checks.meta_lora_test_loss(p, p.A_star, p.k)
    assert ok.passed and ok.value <= ok.bound and ok.detail == f"rank-{p.k} LoRA on W_(T+1) from the retrained A"


# --- Theorem 3.3 ---------------------------------------------------------------------------------------------------


@FAST
@given(problems(remark_3_1=True, min_T=3, max_d=8), st.data())
def test_theorem_3_3_says_no_to_a_wrong_U_with_the_right_A(p, data):
    """U_t = c U*_t for one t: the relative error of U_t U_t^T is |c^2 - 1| exactly (A = A* exactly)."""
    t = data.draw(st.integers(0, p.T - 1), label="t")
    c = data.draw(st.floats(1.1, 3.0), label="c")
    U = p.U_star.copy()
    U[t] *= c
    res = checks.theorem_3_3_recovery(p, p.A_star, U)
    assert not res.passed and res.bound == 1e-6
    assert res.value == pytest.approx(c * c - 1.0, rel=1e-12, abs=0)


@FAST
@given(problems(remark_3_1=True, min_T=3, max_d=8), st.floats(1e-5, 1.0), seeds)
def test_theorem_3_3_says_no_to_a_wrong_A_with_the_right_U(p, rel, qseed):
    """A = A* + E with ||E|| / ||A*|| = rel, U on the orbit of U*: the value is rel, whatever the rotation."""
    E = np.random.default_rng(qseed).standard_normal((p.d, p.d))
    E *= rel * np.linalg.norm(p.A_star) / np.linalg.norm(E)
    res = checks.theorem_3_3_recovery(p, p.A_star + E, global_minimiser(p, seed=qseed).U)
    assert not res.passed and res.value == pytest.approx(rel, rel=1e-9, abs=0)
    assert checks.theorem_3_3_recovery(p, p.A_star + E, p.U_star, tol=2 * rel).passed


def test_theorem_3_3_value_is_the_largest_error_and_the_bound_is_inclusive():
    p = Problem.random(d=6, k=1, T=3, seed=4)
    U = p.U_star.copy()
    U[1] *= 2.0  # relative error 3 in task 2
    A = 2.0 * p.A_star  # A - A* = A* exactly: relative error exactly 1
    assert checks.theorem_3_3_recovery(p, A, U).value == pytest.approx(3.0, rel=1e-12, abs=0)
    exact = checks.theorem_3_3_recovery(p, A, p.U_star, tol=1.0)
    assert exact.value == 1.0 and exact.passed  # value <= tol, inclusive


def test_theorem_3_3_is_relative_below_unit_norms_and_widens_float32():
    """A* and U* far below norm 1: the errors stay relative (no floor at 1); U in float32 is widened first."""
    base = Problem.random(d=5, k=1, T=3, seed=6)
    p = Problem(A_star=1e-2 * base.A_star, U_star=1e-1 * base.U_star, U_test=base.U_test)
    U = p.U_star.copy()
    U[2] *= 2.0
    assert checks.theorem_3_3_recovery(p, 2.0 * p.A_star, p.U_star).value == 1.0
    assert checks.theorem_3_3_recovery(p, p.A_star, U).value == pytest.approx(3.0, rel=1e-12, abs=0)
    U32 = base.U_star.astype(np.float32)
    c32 = checks.theorem_3_3_recovery(base, base.A_star, U32)
    assert c32.value == checks.theorem_3_3_recovery(base, base.A_star, U32.astype(np.float64)).value
    assert c32.detail.startswith("relative recovery error of A* and of U*_t U*_t^T at L = ")


def test_theorem_3_3_refuses_T_below_3():
    p = Problem.random(d=6, k=1, T=2, seed=0)
    with pytest.raises(ProblemError, match="Theorem 3.3 needs T >= 3, got T = 2"):
        checks.theorem_3_3_recovery(p, p.A_star, p.U_star)


# --- second-order stationarity -------------------------------------------------------------------------------------


def _grad_G(p, U):
    """grad G from the definition: E_t = D_t - mean_s D_s, dG/dU_t = 2 (E_t + E_t^T) U_t (written out here)."""
    D = np.einsum("tia,tja->tij", U, U) - p.W
    E = D - D.mean(axis=0)
    return 2.0 * (E + E.transpose(0, 2, 1)) @ U


@FAST
@given(problems(min_T=2, max_d=5), seeds)
def test_second_order_stationarity_says_no_away_from_critical_points(p, seed):
    U = np.random.default_rng(seed).standard_normal((p.T, p.d, p.k))
    c = checks.second_order_stationarity(p, U)
    g = float(np.linalg.norm(_grad_G(p, U)))
    assert not c.passed and c.bound == 1e-8 and c.value == pytest.approx(g, rel=1e-10, abs=0)
    assert not checks.second_order_stationarity(p, U, gtol=g * (1 - 1e-9)).passed


def test_second_order_stationarity_says_no_at_the_zero_saddle_with_gradient_zero():
    p = Problem.random(d=5, k=1, T=3, seed=2)
    c = checks.second_order_stationarity(p, np.zeros((3, 5, 1)))
    assert (c.passed, c.value, c.bound) == (False, 0.0, 1e-8)
    neg = int(c.detail.split("= (")[1].split(",")[0])
    assert neg > 0  # the Hessian 2 (E + E^T) kron I at U = 0 has negative eigenvalues
    assert "smallest eigenvalue -" in c.detail


def test_second_order_stationarity_uses_its_eigenvalue_tolerance():
    """rtol = 10: every eigenvalue lies within 10 max |lambda| of zero, so the saddle's negative curvature is not
    seen and the (critical) point passes; the default tolerance sees it."""
    p = Problem.random(d=5, k=1, T=3, seed=2)
    loose = checks.second_order_stationarity(p, np.zeros((3, 5, 1)), rtol=10.0)
    assert loose.passed and "(0, 15, 0)" in loose.detail


def test_second_order_stationarity_passes_at_the_minimiser_with_gradient_at_the_bound():
    p = Problem.random(d=6, k=2, T=3, seed=0)
    U = global_minimiser(p, seed=1).U
    c = checks.second_order_stationarity(p, U)
    assert c.passed and c.value <= c.bound
    assert checks.second_order_stationarity(p, U, gtol=c.value).passed  # g <= gtol, inclusive
    # the T k (k-1)/2 = 3 orbit directions are removed: the quotient has T d k - 3 = 33 eigenvalues, none negative
    assert "(0, 0, 33)" in c.detail


def test_check_result_round_trips_to_a_dict():
    c = checks.CheckResult("x", False, 1.5, 2.0, "why")
    assert c.to_dict() == {"name": "x", "passed": False, "value": 1.5, "bound": 2.0, "detail": "why"}


# --- problem instances: what is stored, and every refusal names its field -----------------------------------------


def test_problem_stores_float64_read_only_copies_and_round_trips_every_field():
    from theory.problem import MetaPoint

    A, U, Ut = np.eye(3), np.ones((2, 3, 1)), [[1.0], [2.0], [3.0]]
    p = Problem(A_star=A, U_star=U, U_test=Ut, sigma=1, seed=5)
    assert type(p.sigma) is float and p.sigma == 1.0
    assert A.flags.writeable and not np.shares_memory(p.A_star, A)  # the caller's array is copied, not frozen
    for arr in (p.A_star, p.U_star, p.U_test, p.W):
        assert isinstance(arr, np.ndarray) and arr.dtype == np.float64 and not arr.flags.writeable
    assert Problem(A_star=np.eye(3, dtype=int), U_star=np.ones((2, 3, 1), dtype=int)).A_star.dtype == np.float64
    d = p.to_dict()
    assert d == {"d": 3, "k": 1, "T": 2, "sigma": 1.0, "seed": 5, "A_star": A.tolist(), "U_star": U.tolist(),
                 "U_test": Ut}
    assert Problem(A_star=A, U_star=U).to_dict()["U_test"] is None
    q = Problem.from_dict({"A_star": A.tolist(), "U_star": U.tolist(), "sigma": 0.25})
    assert (q.sigma, q.seed, q.U_test) == (0.25, None, None)
    assert Problem.from_dict({"A_star": A.tolist(), "U_star": U.tolist()}).sigma == 0.0
    r = Problem.random(3, 1, 2, seed=0)
    assert r.sigma == 0.0 and Problem.random(3, 1, 2, seed=0, sigma=0.5).sigma == 0.5
    assert Problem.random(3, 1, 2, seed=0, with_test=False).U_test is None
    assert MetaPoint.unflatten(np.arange(10), 2, 1, 3).A.dtype == np.float64


@pytest.mark.parametrize("shape,name", [((0, 3, 1), "T"), ((2, 0, 1), "d"), ((2, 3, 0), "k")])
def test_problem_refuses_empty_sizes_naming_them(shape, name):
    d = shape[1]
    with pytest.raises(ProblemError, match=rf"^{name} must be a positive integer \(> 0\), got 0 from U_star.shape="):
        Problem(A_star=np.zeros((d, d)), U_star=np.zeros(shape))


def test_problem_refusals_name_the_field():
    A, U = np.eye(3), np.ones((2, 3, 1))
    bad = U.copy()
    bad[0, 0, 0] = np.inf
    with pytest.raises(ProblemError, match="^U_star "):
        Problem(A_star=A, U_star=bad)
    with pytest.raises(ProblemError, match="^a problem must be a JSON object, got list$"):
        Problem.from_dict([1, 2])
    data = Problem(A_star=A, U_star=U).to_dict()
    for key, wrong in (("k", 2), ("T", 3)):
        with pytest.raises(ProblemError, match=rf"^{key}={wrong} disagrees with the arrays, which give {key}="):
            Problem.from_dict({**data, key: wrong})


@pytest.mark.parametrize("d,k,T,name", [(0, 1, 1, "d"), (4, 0, 1, "k"), (4, 1, 0, "T")])
def test_remark_3_1_refuses_non_positive_sizes_first(d, k, T, name):
    with pytest.raises(ProblemError, match=rf"^{name} must be a positive integer \(> 0\), got 0$"):
        require_remark_3_1(d, k, T)


def test_remark_3_1_boundary_and_full_message():
    require_remark_3_1(4, 1, 3)  # (T + 1) k = d is allowed
    with pytest.raises(ProblemError, match=r"Remark 3.1 needs \(T\+1\) k <= d so that the columns of "
                                           r"U\*_1..U\*_\{T\+1\} can be linearly independent$"):
        require_remark_3_1(3, 1, 3)
