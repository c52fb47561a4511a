"""Non-finite and overflowing numbers never reach linear algebra, and certificates say what really failed.

Non-finite instances are refused at construction naming the value; every theory routine that calls an SVD, an
eigendecomposition or a Cholesky factorisation refuses NaN / inf input with a ProblemError instead of a LinAlgError;
finite points whose float64 Hessian overflows give "inconclusive" certificates with that reason; the eps-net's
global Lipschitz bound stays finite where arb balls straddle zero; a degenerate critical point is reported as such.
"""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
import scipy.linalg
from hypothesis import given, settings
from hypothesis import strategies as st

from landscape import _arb_reduced as ar
from landscape.certify_epsnet import certify_epsnet
from landscape.certify_interval import certify_interval
from landscape.classify import classify_point
from landscape.search import solve_critical
from strategies import problems
from theory import checks, finetune, minima, reduced, symmetry
from theory.linear_experiment import run_setting
from theory.linear_settings import Settings
from theory.problem import Problem, ProblemError


@settings(max_examples=25, deadline=None)
@given(problems(max_d=4, max_k=2, max_T=3), st.sampled_from(["A_star", "U_star", "U_test"]),
       st.sampled_from([math.nan, math.inf, -math.inf]), st.integers(0, 10 ** 6))
def test_problem_refuses_a_non_finite_entry_naming_it(p, name, bad, where):
    data = p.to_dict()
    arr = np.array(data[name], dtype=float)
    idx = np.unravel_index(where % arr.size, arr.shape)
    arr[idx] = bad
    data[name] = arr.tolist()
    with pytest.raises(ProblemError, match=rf"{name} must have finite entries, found 1 non-finite "
                                           rf"\({re.escape(repr(bad))} at {re.escape(str(list(map(int, idx))))}\)"):
        Problem.from_dict(data)


@pytest.mark.parametrize("scale,match", [
    (1e200, r"task matrices W_t = A\* \+ U\* U\*\^T are not finite in float64 \(inf at \[0, 0, 0\]\)"),
    (1e100, r"squared Frobenius norm of the task matrices W_t overflows float64"),
])
def test_problem_refuses_task_matrices_that_overflow(scale, match):
    with pytest.raises(ProblemError, match=match):
        Problem(A_star=np.eye(3), U_star=scale * np.ones((3, 3, 1)))


def test_problem_accepts_large_but_representable_instances():
    p = Problem(A_star=np.eye(3), U_star=1e50 * np.ones((3, 3, 1)))
    assert np.isfinite(np.sum(p.W * p.W))


@pytest.mark.parametrize("call", [
    lambda: symmetry.inertia(np.array([[1.0, np.nan], [np.nan, 1.0]])),
    lambda: symmetry.quotient_basis(np.full((3, 4, 2), np.inf)),
    lambda: finetune.finetune_optimum(np.full((3, 3), np.nan), np.eye(3), 1),
    lambda: checks.numerical_rank(np.array([[np.inf]])),
    lambda: reduced.schur_complement(np.full((4, 4), np.nan), 2),
    lambda: checks.theorem_3_2_rank(Problem.random(4, 1, 2, seed=0), np.full((4, 4), np.nan), np.ones((2, 4, 1))),
    lambda: minima.d1_family_point(Problem.random(4, 1, 2, seed=0), 1000.0),
], ids=["inertia", "quotient_basis", "finetune_optimum", "numerical_rank", "schur_complement", "theorem_3_2_rank",
        "d1_family_point"])
def test_linear_algebra_entry_points_refuse_non_finite_input(call):
    with pytest.raises(ProblemError, match="finite|overflows"):
        call()


def test_figure1_setting_whose_noise_overflows_is_refused():
    s = Settings(T=2, runs=1, N=100, n=30, retrain_iters=5, finetune_iters=2, sigma=1e300)
    with pytest.raises(ProblemError, match=r"overflow float64 .*sigma=1e\+300"):
        run_setting(s)


def _overflowing_point(p: Problem) -> np.ndarray:
    return 1e160 * np.ones((p.T, p.d, p.k))  # finite, but U U^T and the Hessian overflow float64


@pytest.mark.parametrize("certify", [certify_interval, certify_epsnet], ids=["krawczyk", "epsnet"])
def test_finite_but_overflowing_point_is_inconclusive_with_the_true_reason(certify):
    p = Problem.random(4, 1, 3, seed=0)
    cert = certify(p, _overflowing_point(p))
    assert cert.verdict == "inconclusive"
    assert "overflows" in cert.reason and "float64" in cert.reason


def test_classification_and_search_refuse_to_feed_overflow_to_eigh():
    p = Problem.random(3, 1, 3, seed=0)
    with pytest.raises(ProblemError, match="overflow float64"):
        classify_point(p, _overflowing_point(p))
    # every U_t equal and huge: G and its gradient stay finite, the Hessian overflows
    U = np.stack([np.full((3, 1), 1.2e154 / np.sqrt(3))] * 3)
    with np.errstate(all="ignore"):
        res = solve_critical(p, U)
    assert res.status == "nonfinite" and "Hessian" in res.message


@settings(max_examples=30, deadline=None)
@given(st.lists(st.tuples(st.floats(-1e3, 1e3), st.floats(0, 1e3)), min_size=1, max_size=8), st.booleans())
def test_norm_upper_is_a_finite_upper_bound_also_for_balls_straddling_zero(entries, centred):
    from flint import arb

    balls = [arb(0.0 if centred else m, r) for m, r in entries]
    bound = ar.norm_upper(balls)
    assert bound.is_finite()
    exact_max = math.sqrt(sum((abs(0.0 if centred else m) + r) ** 2 for m, r in entries))
    assert ar.upper(bound) >= exact_max * (1 - 1e-12)


@settings(max_examples=6, deadline=None)
@given(problems(max_d=5, max_k=2, min_T=3, max_T=3, remark_3_1=True))
def test_epsnet_lipschitz_bound_is_finite_at_low_precision(p):
    """At 53 bits the gradient at U* is a ball straddling zero; its norm must still bound finitely (it was inf)."""
    low = certify_epsnet(p, p.U_star, prec=53)
    high = certify_epsnet(p, p.U_star, prec=128)
    assert math.isfinite(low.margins["lipschitz"])
    assert low.margins["lipschitz"] == pytest.approx(high.margins["lipschitz"], rel=1e-6, abs=0)


def _degenerate_point(seed: int):
    """A critical point with a singular Hessian: every U_t = a n, n orthogonal to the columns of U* (then
    E_t n = 0, so grad G = 0, and G is constant along a -> a + da: a zero eigenvalue)."""
    p = Problem.random(4, 1, 3, seed=seed)
    n = scipy.linalg.null_space(p.U_star[:, :, 0])[:, 0]
    return p, np.stack([2.0 * n[:, None]] * 3)


@pytest.mark.parametrize("seed", [0, 1])
def test_degenerate_critical_point_reason_names_the_singular_hessian(seed):
    p, U = _degenerate_point(seed)
    assert np.linalg.norm(reduced.reduced_grad(U, p)) < 1e-13
    for cert in (certify_interval(p, U), certify_interval(p, U, max_radius=1e-18)):
        assert cert.verdict == "inconclusive"
        assert "singular" in cert.reason and "not a critical point" not in cert.reason
    far = certify_interval(p, p.U_star + 0.1)
    assert far.verdict == "inconclusive" and "not close enough to a critical point" in far.reason
