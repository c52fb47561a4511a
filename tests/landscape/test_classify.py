"""The classifier and the orbit merging (landscape.classify) on points whose class and numbers are known here: U*,
U = 0 (a saddle), the stored spurious minimum, a hand-built d = 1 saddle with known eigenvalues, and exact orbit
copies; every tolerance at both sides of its threshold."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from exact_reduced import exact_G
from landscape.classify import CriticalPoint, annotate, classify_point, dedup, orbit_invariants, same_orbit
from landscape.result import SearchResult
from theory.minima import d1_family_point
from theory.problem import Problem, ProblemError
from theory.reduced import reduced_grad, reduced_hess, reduced_loss

INSTANCES = Path(__file__).resolve().parents[2] / "landscape" / "instances"


def _d1_saddle():
    """d = k = 1, T = 3, A* = 0, u* = (1, 2, 3): at u = 0 the Hessian is diag(-4 c_t), c_t = u*_t^2 - 14/3."""
    return Problem(A_star=np.zeros((1, 1)), U_star=np.array([1.0, 2.0, 3.0]).reshape(3, 1, 1))


def _G0(p):
    return float(np.sum((p.W - p.W.mean(axis=0)) ** 2))


def test_classify_global_saddle_degenerate_and_spurious_with_their_numbers():
    p = Problem.random(4, 1, 3, seed=0)
    g = classify_point(p, p.U_star)
    assert g.label == "global_min" and g.loss_threshold == pytest.approx(1e-12 * max(1.0, _G0(p)), rel=1e-12, abs=0)
    assert g.symmetry == "O(k)^T" and g.inertia == (0, 0, 12) and g.grad_norm < 1e-12
    lam = np.linalg.eigvalsh(reduced_hess(p.U_star, p))
    assert np.allclose(g.eigenvalues, lam, rtol=1e-9) and g.min_eigenvalue == pytest.approx(lam[0], rel=1e-9, abs=0)
    assert g.eig_tol == pytest.approx(1e-8 * lam[-1], rel=1e-9, abs=0)
    s = classify_point(p, np.zeros((3, 4, 1)))
    assert s.label == "saddle" and s.loss == pytest.approx(_G0(p), rel=1e-12, abs=0) and s.inertia[0] > 0
    # the same saddle with every eigenvalue inside the zero band: second order cannot decide
    dg = classify_point(p, np.zeros((3, 4, 1)), eig_rtol=10.0)
    assert dg.label == "degenerate" and dg.inertia == (0, 12, 0)
    # the loss threshold decides before the Hessian: G(0) <= loss_rtol * G(0) makes U = 0 "global"
    assert classify_point(p, np.zeros(12), loss_rtol=1.0).label == "global_min"
    rec = json.loads((INSTANCES / "spurious_d3_k1_T3.json").read_text())
    q = Problem.from_dict(rec["problem"])
    sp = classify_point(q, rec["point"])
    assert sp.label == "spurious_min" and sp.loss == pytest.approx(float(exact_G(q, rec["point"])), rel=1e-12, abs=0)


def test_classify_at_T2_quotients_the_boosts_and_small_G0_keeps_the_floor():
    p = Problem.random(5, 2, 2, seed=0)
    c = classify_point(p, d1_family_point(p, 0.8).U)
    assert c.label == "global_min" and c.symmetry == "O(k,k)" and c.inertia == (0, 0, 20 - 6)
    tiny = Problem(A_star=np.zeros((2, 2)), U_star=1e-4 * np.ones((3, 2, 1)) * np.array([1.0, 2.0, 3.0])[:, None, None])
    assert _G0(tiny) < 1 and classify_point(tiny, np.zeros((3, 2, 1))).loss_threshold == 1e-12


@pytest.mark.parametrize("kw,match", [({"loss_rtol": 0.0}, "loss_rtol must be a finite number > 0, got 0.0"),
                                      ({"eig_rtol": float("nan")}, "eig_rtol must be a finite number > 0, got nan"),
                                      ({"loss_rtol": -1.0}, "loss_rtol must be a finite number > 0, got -1.0")])
def test_classify_refuses_bad_tolerances(kw, match):
    p = Problem.random(3, 1, 3, seed=0)
    with pytest.raises(ProblemError, match=match):
        classify_point(p, p.U_star, **kw)


def _result(p, x, seed, method="newton", status="converged"):
    x = np.asarray(x, dtype=float).reshape(p.T, p.d, p.k)
    return SearchResult(point=x, loss=reduced_loss(x, p), grad_norm=float(np.linalg.norm(reduced_grad(x, p))),
                        inertia=None, min_eigenvalue=float("nan"), iterations=1, seed=seed, seconds=0.0,
                        status=status, method=method, scale=1.0)


def test_dedup_counts_hits_keeps_the_best_and_skips_failures():
    p = Problem.random(4, 1, 3, seed=2)
    flip = p.U_star * np.array([-1.0, 1.0, -1.0])[:, None, None]
    near = p.U_star + 1e-9  # same orbit within rtol, larger gradient than U* itself
    res = [_result(p, near, 5, "min"), _result(p, np.zeros(12), 6), _result(p, flip, 7, "newton"),
           _result(p, p.U_star, 8, "min"), _result(p, p.U_star, 9, status="max_iter")]
    points, which = dedup(p, res)
    assert which == [0, 1, 0, 0, -1] and len(points) == 2
    best = points[0]
    assert best.hits == {"min": 2, "newton": 1} and best.first_seed == 5
    assert np.array_equal(best.point, flip)  # the smallest gradient norm, the first of equal ones (U* ties flip)
    assert best.classification.label == "global_min" and points[1].classification.label == "saddle"
    d = points[1].to_dict()
    assert d["class"] == "saddle" and d["hits"] == {"newton": 1} and d["first_seed"] == 6
    assert d["point"] == np.zeros((3, 4, 1)).tolist() and d["inertia"] == list(points[1].classification.inertia)
    assert isinstance(best, CriticalPoint)


def test_dedup_at_T2_merges_the_hyperbola_and_same_orbit_tolerance():
    p = Problem.random(4, 1, 2, seed=1)
    a, b = d1_family_point(p, 0.0).U, d1_family_point(p, 0.9).U
    assert not same_orbit(a, b)  # different P_t ...
    points, which = dedup(p, [_result(p, a, 1), _result(p, b, 2)])
    assert which == [0, 0] and len(points) == 1  # ... same P_1 - P_2: one O(k, k) orbit
    P = orbit_invariants(a)
    assert np.allclose(P, a @ a.transpose(0, 2, 1)) and P.shape == (2, 4, 4)


def test_same_orbit_tolerance_is_relative_with_a_floor_of_one():
    """V = sqrt(1 + e) U scales every P_t by 1 + e: |P(U) - P(V)| = e |P(U)|, compared with rtol max(1, |P(U)|)."""
    U = np.random.default_rng(0).standard_normal((3, 4, 2))
    assert np.linalg.norm(orbit_invariants(U)) > 1
    assert same_orbit(U, np.sqrt(1 + 0.5e-6) * U) and not same_orbit(U, np.sqrt(1 + 2e-6) * U)
    assert same_orbit(U, np.sqrt(1 + 0.5e-3) * U, rtol=1e-3)
    tiny = 1e-4 * U  # |P| ~ 1e-7: the floor max(1, |P|) = 1 lets e = 0.5 pass
    assert same_orbit(tiny, np.sqrt(1.5) * tiny) and not same_orbit(tiny, np.sqrt(1.5) * tiny, rtol=1e-8)


def test_annotate_fills_the_quotient_inertia():
    p = Problem.random(4, 1, 3, seed=0)
    r = annotate(p, _result(p, np.zeros(12), 0))
    c = classify_point(p, np.zeros(12))
    assert r.inertia == c.inertia and r.min_eigenvalue == c.min_eigenvalue and r.extra["class"] == "saddle"


def test_classify_counts_single_negative_and_single_zero_eigenvalues():
    """The hand-built saddle has exactly one negative eigenvalue (-52/3, 8/3, 44/3); on the stored spurious minimum
    an eig_rtol between lambda_1 / lambda_max and lambda_2 / lambda_max puts exactly one eigenvalue in the zero band."""
    s = classify_point(_d1_saddle(), np.zeros(3))
    assert s.label == "saddle" and s.inertia == (1, 0, 2)
    assert np.allclose(s.eigenvalues, [-52 / 3, 8 / 3, 44 / 3], rtol=1e-12)
    rec = json.loads((INSTANCES / "spurious_d3_k1_T3.json").read_text())
    q = Problem.from_dict(rec["problem"])
    lam = np.linalg.eigvalsh(reduced_hess(np.asarray(rec["point"]), q))
    rtol = np.sqrt(lam[0] * lam[1]) / lam[-1]
    one = classify_point(q, rec["point"], eig_rtol=rtol)
    assert one.label == "degenerate" and one.inertia == (0, 1, lam.size - 1)
    U32 = np.asarray(rec["point"], dtype=np.float32)
    assert np.array_equal(orbit_invariants(U32), orbit_invariants(U32.astype(np.float64)))


def test_dedup_order_tolerances_and_passed_thresholds():
    p = Problem.random(4, 1, 3, seed=2)
    U = p.U_star
    P = np.linalg.norm(orbit_invariants(U))
    assert P > 1
    res = [_result(p, U, 1, status="max_iter"), _result(p, U, 2), _result(p, np.sqrt(1 + 0.5e-6) * U, 3),
           _result(p, np.sqrt(1 + 2e-6) * U, 4)]
    points, which = dedup(p, res)
    assert which == [-1, 0, 0, 1]  # a failed solve first does not stop the merging; rtol relative to |P|
    tiny = 1e-4 * U
    e = 1.5e-6 / np.linalg.norm(orbit_invariants(tiny))  # |P(V) - P(U)| = 1.5e-6: above rtol * max(1, |P|) = 1e-6
    assert not same_orbit(tiny, np.sqrt(1 + e) * tiny)
    assert dedup(p, [_result(p, tiny, 1), _result(p, np.sqrt(1 + e) * tiny, 2)])[1] == [0, 1]
    loose = dedup(p, [_result(p, np.zeros(12), 0)], eig_rtol=10.0, loss_rtol=1e-12)[0][0]
    assert loose.classification.label == "degenerate"
    assert dedup(p, [_result(p, np.zeros(12), 0)], loss_rtol=1.0)[0][0].classification.label == "global_min"
    assert annotate(p, _result(p, np.zeros(12), 0), eig_rtol=10.0).extra["class"] == "degenerate"
    q = Problem.random(4, 1, 2, seed=1)  # T = 2: different P_1 - P_2 stay apart
    assert dedup(q, [_result(q, q.U_star, 1), _result(q, 2.0 * q.U_star, 2)])[1] == [0, 1]


def test_critical_point_dict_carries_its_classification():
    p = Problem.random(4, 1, 3, seed=0)
    points, _ = dedup(p, [_result(p, np.zeros(12), 3, method="min")])
    c = points[0].classification
    assert points[0].to_dict() == {
        "class": "saddle", "loss": c.loss, "grad_norm": c.grad_norm, "inertia": list(c.inertia),
        "min_eigenvalue": c.min_eigenvalue, "eigenvalues": c.eigenvalues.tolist(), "loss_threshold": c.loss_threshold,
        "eig_tol": c.eig_tol, "symmetry": "O(k)^T", "hits": {"min": 1}, "first_seed": 3,
        "point": np.zeros((3, 4, 1)).tolist()}
    assert c.loss == pytest.approx(_G0(p), rel=1e-12, abs=0) and c.loss_threshold == pytest.approx(1e-12 * _G0(p))



def test_a_classification_without_eigenvalues_has_a_nan_minimum():
    cl = classify_point(Problem.random(3, 1, 3, seed=0), np.zeros(9))
    assert math.isnan(type(cl)(label="saddle", loss=1.0, grad_norm=0.0, inertia=(0, 0, 0),
                               eigenvalues=np.zeros(0), loss_threshold=1.0, eig_tol=1.0).min_eigenvalue)


def test_a_point_that_is_not_finite_or_overflows_is_refused_naming_it():
    import warnings

    p = Problem.random(2, 1, 3, seed=0)
    bad = p.U_star.copy()
    bad[0, 0, 0] = np.nan
    with pytest.raises(ProblemError, match=r"^U must have finite entries, found 1 "):
        classify_point(p, bad)
    # |U| ~ 1e80: G (~|U|^4) overflows while the gradient (~|U|^3) and Hessian (~|U|^2) do not; ~1e160: all do
    for scale in (1e80, 1e160):
        U = scale * np.random.default_rng(0).standard_normal((3, 2, 1))
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # the overflow is reported, not warned about
            with pytest.raises(ProblemError) as err:
                classify_point(p, U)
        assert str(err.value) == ("G, its gradient or its Hessian overflow float64 at this point (max |U| entry "
                                  f"{np.max(np.abs(U)):.3g}): it cannot be classified")


def test_orbits_at_exactly_the_tolerance_are_merged():
    """|P(U) - P(V)| equal to rtol max(1, |P(U)|), exactly in binary (U = 0, V one entry 2^-10, rtol 2^-20)."""
    p = Problem.random(3, 1, 3, seed=0)
    U, V = np.zeros((3, 3, 1)), np.zeros((3, 3, 1))
    V[0, 0, 0] = 2.0 ** -10
    assert np.linalg.norm(orbit_invariants(V) - orbit_invariants(U)) == 2.0 ** -20
    assert same_orbit(U, V, rtol=2.0 ** -20) and not same_orbit(U, V, rtol=2.0 ** -21)
    assert dedup(p, [_result(p, U, 1), _result(p, V, 2)], rtol=2.0 ** -20)[1] == [0, 0]
    assert dedup(p, [_result(p, U, 1), _result(p, V, 2)], rtol=2.0 ** -21)[1] == [0, 1]
