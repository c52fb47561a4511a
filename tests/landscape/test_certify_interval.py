"""The interval (Krawczyk) certificate and the arb closed forms of G, grad G and the Hessian behind it."""

from __future__ import annotations

import json
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from scipy.stats import ortho_group

from exact_reduced import exact_G, exact_grad, exact_hess
from landscape import _arb_reduced as ar
from landscape.certificate import CertificateError
from landscape.certify_interval import certify_interval
from strategies import seeds
from theory.problem import Problem
from theory.reduced import reduced_grad, reduced_hess, reduced_loss
from theory.symmetry import restricted_inertia

INSTANCES = Path(__file__).resolve().parents[2] / "landscape" / "instances"


def _inside(ball, exact: Fraction) -> bool:
    """``exact`` lies in the ball, compared exactly (the ball's float bounds are rounded outward)."""
    return Fraction(ar.lower(ball)) <= exact <= Fraction(ar.upper(ball))


def _arb_all(problem, x, radius=0.0):
    with ar.working_precision(128):
        Ws = ar.task_matrices(problem)
        Us = ar.U_blocks(ar.balls(x, radius), problem.T, problem.d, problem.k)
        E = ar.residuals(Us, Ws)
        return ar.loss(E), ar.grad(Us, E), ar.hess(Us, E)


small_sizes = st.tuples(st.integers(1, 3), st.integers(1, 2), st.integers(2, 3)).filter(lambda s: s[1] <= s[0])


@settings(max_examples=12, deadline=None)
@given(size=small_sizes, seed=seeds, pseed=seeds, box=st.sampled_from([0.0, 1e-6, 1e-2]))
def test_arb_G_grad_hess_enclose_the_exact_values(size, seed, pseed, box):
    """At a float point inside the box, the exact rational G, gradient and Hessian (from G's definition and exact
    stencils, no closed form) lie in the arb enclosures over the box."""
    d, k, T = size
    p = Problem.random(d, k, T, seed=seed)
    rng = np.random.default_rng(pseed)
    x = rng.standard_normal(p.n_reduced)
    y = x + box * rng.uniform(-0.5, 0.5, size=x.shape)  # a float point inside the box of half-width `box`
    assert np.all(np.abs(y - x) <= box)
    G, g, H = _arb_all(p, x, box)
    assert _inside(G, exact_G(p, y))
    for gi, ei in zip(g, exact_grad(p, y)):
        assert _inside(gi, ei)
    if p.n_reduced <= 8:
        He = exact_hess(p, y)
        for i in range(p.n_reduced):
            for j in range(p.n_reduced):
                assert _inside(H[i, j], He[i][j])


@settings(max_examples=15, deadline=None)
@given(size=st.tuples(st.integers(1, 6), st.integers(1, 3), st.integers(1, 4)), seed=seeds)
def test_arb_midpoints_match_theory_floats(size, seed):
    d, k, T = size
    p = Problem.random(d, k, T, seed=seed)
    x = np.random.default_rng(seed).standard_normal(p.n_reduced)
    G, g, H = _arb_all(p, x)
    scale = 1.0 + float(np.sum(np.abs(p.W)) + np.sum(x * x)) ** 2
    assert abs(ar.mid(G) - reduced_loss(x, p)) <= 1e-12 * scale
    assert np.allclose([ar.mid(v) for v in g], reduced_grad(x, p), rtol=0, atol=1e-12 * scale)
    assert np.allclose(ar.mid_matrix(H), reduced_hess(x, p), rtol=0, atol=1e-12 * scale)


@settings(max_examples=15, deadline=None)
@given(size=st.tuples(st.integers(1, 4), st.integers(1, 3), st.integers(1, 4)), seed=seeds)
def test_arb_symmetry_tangents_are_theorys(size, seed):
    """The tangent directions whose span the transversality check uses are exactly those of theory.symmetry (the
    O(k)^T rotations, plus the O(k, k) boosts at T = 2), column by column."""
    from landscape.certify_common import symmetry_group, tangent_arb as _tangent_arb
    from theory.symmetry import symmetry_tangent

    d, k, T = size
    U = np.random.default_rng(seed).standard_normal((T, d, k))
    Us = ar.U_blocks(ar.balls(U), T, d, k)
    got = np.array([[ar.mid(v) for v in col] for col in _tangent_arb(Us, k)]).reshape(-1, T * d * k).T
    want = symmetry_tangent(U, group=symmetry_group(T))
    assert got.shape == want.shape and np.array_equal(got, want)


# ---------------------------------------------------------------- planted minima

@settings(max_examples=8, deadline=None)
@given(seed=seeds, d=st.integers(4, 6), flips=st.lists(st.booleans(), min_size=3, max_size=3))
def test_planted_global_minimum_k1_is_certified_and_proven_global(seed, d, flips):
    """U* (any column signs) is a strict global minimum of G for T = 3 and (T+1) k <= d (Theorem 3.3)."""
    p = Problem.random(d, 1, 3, seed=seed)
    U = p.U_star * np.where(flips, -1.0, 1.0)[:, None, None]
    lam = np.linalg.eigvalsh(reduced_hess(U, p))
    assume(lam[0] > 1e-6 * lam[-1])
    c = certify_interval(p, U)
    assert c.verdict == "certified-minimum" and c.minimum_kind == "global"
    assert c.loss[0] <= 0.0 <= c.loss[1] and c.loss[1] < 1e-20
    lo = c.margins["hessian_min_eig_lower"]
    assert 0 < lo <= lam[0] * (1 + 1e-9)  # a lower bound, and not a vacuous one
    assert lo > 0.5 * lam[0]
    assert c.margins["krawczyk_ratio"] < 1


def test_planted_global_minimum_k2_on_the_gauge_slice_and_its_orbit():
    p = Problem.random(8, 2, 3, seed=11)
    for U in (p.U_star, p.U_star @ ortho_group.rvs(2, size=3, random_state=3)):
        c = certify_interval(p, U)
        assert c.verdict == "certified-minimum", c.reason
        assert c.minimum_kind == "global" and "slice" in c.gauge
        assert c.margins["transversal"] is True


def test_perturbed_minimum_is_still_certified_within_the_box():
    p = Problem.random(5, 1, 3, seed=4)
    c = certify_interval(p, p.U_star + 1e-9)
    assert c.verdict == "certified-minimum" and c.minimum_kind == "global"
    assert 1e-9 < c.radius < 1e-6


# ---------------------------------------------------------------- planted saddles

@settings(max_examples=10, deadline=None)
@given(seed=seeds, d=st.integers(1, 3))
def test_zero_is_a_certified_saddle_when_d_le_T(seed, d):
    """U = 0 is a critical point; its Hessian is blockdiag(2 (E_t + E_t^T)) with sum_t E_t = 0, so some block has
    a negative eigenvalue, and it is nonsingular when every W_t - mean W has full rank (generic for d <= T k)."""
    p = Problem.random(d, 1, 3, seed=seed)
    U = np.zeros_like(p.U_star)
    lam = np.linalg.eigvalsh(reduced_hess(U, p))
    c = certify_interval(p, U)
    assert c.verdict != "certified-minimum"
    assume(np.min(np.abs(lam)) > 1e-3 * max(1.0, np.max(np.abs(lam))))
    assert lam[0] < 0
    assert c.verdict == "certified-not-minimum", c.reason
    assert c.margins["negative_curvature_upper"] < 0


def test_hand_built_saddle_d1():
    """d = k = 1, T = 3: G(u) = sum_t (u_t^2 - mean_s u_s^2 - c_t)^2 with c_t = w_t - mean w; at u = 0 the Hessian is
    diag(-4 c_t), indefinite since sum_t c_t = 0."""
    p = Problem(A_star=np.zeros((1, 1)), U_star=np.array([1.0, 2.0, 3.0]).reshape(3, 1, 1))
    c = certify_interval(p, np.zeros(3))
    assert c.verdict == "certified-not-minimum"
    # c_t = u*_t^2 - 14/3 = (-11/3, -2/3, 13/3): the most negative Hessian eigenvalue is -4 * 13/3
    assert c.margins["hessian_min_eig_mid"] == pytest.approx(-52 / 3, rel=1e-12, abs=0)


def test_zero_is_a_certified_saddle_at_T2():
    """T = 2, d = 2, k = 1: the Hessian at 0 is blockdiag(2 (E_t + E_t^T)) with E_2 = -E_1 = (W_1 - W_2) / 2 =
    (u1 u1^T - u2 u2^T) / 2, indefinite and generically nonsingular."""
    p = Problem.random(2, 1, 2, seed=3)
    c = certify_interval(p, np.zeros_like(p.U_star))
    assert c.verdict == "certified-not-minimum", c.reason


def test_newton_saddle_with_k2_is_certified_not_minimum():
    from scipy.optimize import least_squares

    p = Problem.random(6, 2, 3, seed=0)
    x0 = np.random.default_rng(7).standard_normal(p.n_reduced) * 0.5
    x = least_squares(reduced_grad, x0, jac=reduced_hess, args=(p,), xtol=1e-15, ftol=1e-15, gtol=1e-15,
                      method="lm").x
    assert np.linalg.norm(reduced_grad(x, p)) < 1e-10
    inr = restricted_inertia(reduced_hess(x, p), x.reshape(p.T, p.d, p.k))
    assert inr.negative > 0 and inr.zero == 0  # a nondegenerate saddle by the float classification
    c = certify_interval(p, x)
    assert c.verdict == "certified-not-minimum", c.reason


# ---------------------------------------------------------------- no false passes

@settings(max_examples=15, deadline=None)
@given(seed=seeds, size=st.tuples(st.integers(2, 5), st.integers(1, 2), st.integers(2, 4)),
       scale=st.sampled_from([0.3, 1.0, 3.0]))
def test_random_points_are_never_certified(seed, size, scale):
    d, k, T = size
    p = Problem.random(d, k, T, seed=seed)
    x = scale * np.random.default_rng(seed + 1).standard_normal(p.n_reduced)
    assume(np.linalg.norm(reduced_grad(x, p)) > 1e-3)
    assert certify_interval(p, x).verdict == "inconclusive"


def test_a_box_that_misses_the_critical_point_fails_krawczyk():
    p = Problem.random(5, 1, 3, seed=2)
    x = p.U_star.ravel() + 1e-4
    c = certify_interval(p, x, radius=1e-6)  # the minimum U* is 1e-4 away: outside the box
    assert c.verdict == "inconclusive" and "Krawczyk test failed" in c.reason
    assert c.margins["krawczyk_ratio"] > 1
    c = certify_interval(p, x, radius=1e-3)  # this box contains it
    assert c.verdict == "certified-minimum"


def test_degenerate_point_is_inconclusive():
    """(T+1) k > d: the Hessian at U* is singular beyond the orbit (float check), so nothing is proven."""
    p = Problem.random(5, 3, 4, seed=1)
    inr = restricted_inertia(reduced_hess(p.U_star, p), p.U_star)
    assert inr.zero > 0
    assert certify_interval(p, p.U_star).verdict == "inconclusive"


def test_bad_input_is_refused():
    p = Problem.random(4, 1, 3, seed=0)
    U = p.U_star.copy()
    U[1, 2, 0] = np.nan
    with pytest.raises(CertificateError, match="finite"):
        certify_interval(p, U)
    with pytest.raises(CertificateError, match=r"shape \(T, d, k\) = \(3, 4, 1\)"):
        certify_interval(p, np.zeros((3, 4, 2)))
    for kw in ({"radius": -1.0}, {"radius": float("nan")}, {"prec": 20}, {"growth": 1.0}, {"max_tries": 0}):
        with pytest.raises(CertificateError):
            certify_interval(p, p.U_star, **kw)
    with pytest.raises(CertificateError, match="Problem"):
        certify_interval({"d": 4}, p.U_star)


# ---------------------------------------------------------------- the stored spurious minima (Appendix D.2)

@pytest.mark.parametrize("path", sorted(INSTANCES.glob("*.json")), ids=lambda q: q.stem)
def test_stored_spurious_minimum_is_certified(path):
    rec = json.loads(path.read_text())
    p = Problem.from_dict(rec["problem"])
    U = np.asarray(rec["point"], dtype=float)
    assert p.T >= 3
    # independent float evidence: critical, G > 0, Hessian positive definite on the quotient
    assert np.linalg.norm(reduced_grad(U, p)) < 1e-8 and reduced_loss(U, p) > 1e-6
    assert restricted_inertia(reduced_hess(U, p), U.reshape(p.T, p.d, p.k)).positive_definite
    c = certify_interval(p, U)
    assert c.verdict == "certified-minimum" and c.minimum_kind == "spurious", c.reason
    assert c.margins["loss_lower_on_box"] > 0
    assert c.loss[0] <= c.loss[1] and abs(reduced_loss(U, p) - c.loss[0]) <= 1e-10 * reduced_loss(U, p)
