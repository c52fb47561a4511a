"""The paper's theorems on random instances, and checks that can fail."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.optimize
from hypothesis import given, settings

from strategies import problems, seeds
from theory import checks
from theory.finetune import finetune_optimum
from theory.meta import meta_loss
from theory.minima import d1_family_point, global_minimiser
from theory.problem import Problem, ProblemError
from theory.sr import sr_minimiser
from theory.verify import run_verify

FAST = settings(max_examples=30, deadline=None)


@FAST
@given(problems(remark_3_1=True, max_d=10))
def test_theorem_3_1_rank_of_sr_shift(p):
    r = checks.theorem_3_1_rank(p)
    assert r.passed and r.value == p.T * p.k
    assert np.allclose(sr_minimiser(p), p.A_star + np.mean(p.U_star @ p.U_star.transpose(0, 2, 1), axis=0))


def test_theorem_3_1_check_can_fail():
    """Two tasks with the same U*: the columns are dependent, the rank drops to k and the check says so."""
    p0 = Problem.random(6, 1, 2, seed=0)
    p = Problem(A_star=p0.A_star, U_star=np.stack([p0.U_star[0], p0.U_star[0]]), U_test=p0.U_test)
    r = checks.theorem_3_1_rank(p)
    assert not r.passed and r.value == 1


def _direct_adapter_loss(A, W, r, seed, starts=3):
    """Optimise ||A + B C^T - W||_F^2 over (B, C) directly (L-BFGS from random starts), independent of the SVD."""
    d = A.shape[0]
    rng = np.random.default_rng(seed)

    def f(z):
        B, C = z[: d * r].reshape(d, r), z[d * r:].reshape(d, r)
        R = A + B @ C.T - W
        return np.sum(R ** 2), np.concatenate([(2 * R @ C).ravel(), (2 * R.T @ B).ravel()])

    best = np.inf
    for _ in range(starts):
        res = scipy.optimize.minimize(f, rng.standard_normal(2 * d * r), jac=True, method="L-BFGS-B",
                                      options={"maxiter": 5000, "gtol": 1e-12, "ftol": 1e-15})
        best = min(best, res.fun)
    return best


@settings(max_examples=15, deadline=None)
@given(problems(remark_3_1=True, max_d=8), seeds)
def test_corollary_1_equals_directly_optimised_adapter(p, seed):
    r = p.k
    c = checks.corollary_1_sr_test_loss(p, r)
    assert c.passed and c.value > 0
    direct = _direct_adapter_loss(sr_minimiser(p), p.W_test, r, seed)
    # the SVD value is the global optimum: the direct optimiser can only match it (up to its tolerance)
    assert direct >= c.value - 1e-9 * max(1.0, c.value)
    assert direct <= c.value + 1e-5 * max(1.0, c.value)


@FAST
@given(problems(remark_3_1=True, max_d=10, min_T=2, max_T=2), seeds)
def test_theorem_3_2_on_the_d1_family(p, sseed):
    s = float(np.random.default_rng(sseed).uniform(0.3, 1.5))
    pt = d1_family_point(p, s)
    assert meta_loss(pt.A, pt.U, p) <= 1e-18 * max(1.0, float(np.sum(p.W ** 2))) ** 2 + 1e-20
    assert np.linalg.norm(pt.A - p.A_star) > 1e-3  # a global minimum with A != A*
    assert checks.theorem_3_2_rank(p, pt.A, pt.U).passed
    assert checks.corollary_2_rank_3k_fit(p, pt.A).passed
    # and rank k does not suffice from such a base (contrast with T >= 3)
    assert finetune_optimum(pt.A, p.W_test, p.k).loss > 1e-6


@FAST
@given(problems(remark_3_1=True, max_d=10, min_T=3), seeds)
def test_theorem_3_3_on_constructed_minimisers(p, qseed):
    pt = global_minimiser(p, seed=qseed)
    assert checks.theorem_3_3_recovery(p, pt.A, pt.U).passed
    assert checks.meta_lora_test_loss(p, pt.A, p.k).passed
    assert checks.second_order_stationarity(p, pt.U).passed


def test_theorem_3_3_check_fails_off_the_minimiser():
    p = Problem.random(8, 1, 3, seed=2)
    pt = global_minimiser(p)
    r = checks.theorem_3_3_recovery(p, pt.A + 1e-3, pt.U)
    assert not r.passed and r.value > r.bound
    with pytest.raises(ProblemError, match="T >= 3"):
        checks.theorem_3_3_recovery(Problem.random(8, 1, 2, seed=2), pt.A, pt.U[:2])


def test_second_order_check_rejects_a_saddle():
    p = Problem.random(6, 1, 3, seed=1)
    r = checks.second_order_stationarity(p, np.zeros((3, 6, 1)))
    assert not r.passed and "neg" in r.detail


@pytest.mark.parametrize("d,k,T,seed", [(10, 1, 3, s) for s in range(4)] + [(8, 2, 3, 0), (9, 1, 2, 1), (10, 1, 2, 5)])
def test_verify_reaches_zero_and_every_check_passes(d, k, T, seed):
    report = run_verify(d, k, T, seed)
    assert report.solve.loss < 1e-12
    failed = [c.name for c in report.checks if not c.passed]
    assert not failed, failed
    names = {c.name for c in report.checks}
    assert {"gradient_vs_autograd", "hessian_vs_autograd", "schur_identity", "theorem_3_1_rank",
            "corollary_1_sr_test_loss", "meta_lora_reduced_loss", "meta_lora_test_loss"} <= names
    assert ("theorem_3_3_recovery" in names) == (T >= 3)
    assert ("theorem_3_2_rank" in names) == (T == 2)
