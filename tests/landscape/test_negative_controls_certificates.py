"""Negative controls and reconstructions for the landscape certificates: planted saddles,
non-critical points and degenerate points must not pass, with the margins they report compared with numbers known
here (exact rational G, closed-form Hessians), and every returned enclosure must contain the exact value."""

from __future__ import annotations

import json
import math
import re
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from exact_reduced import exact_G
from landscape.certificate import CertificateError
from landscape.certify_epsnet import certify_epsnet, net_covering_radius
from landscape.certify_interval import certify_interval
from strategies import seeds
from theory.problem import Problem
from theory.reduced import reduced_grad, reduced_hess

INSTANCES = Path(__file__).resolve().parents[2] / "landscape" / "instances"


def _in(lo_hi, exact: Fraction) -> bool:
    return Fraction(lo_hi[0]) <= exact <= Fraction(lo_hi[1])


def _G0(p):
    return float(np.sum((p.W - p.W.mean(axis=0)) ** 2))


def _d1_saddle():
    """d = k = 1, T = 3, A* = 0, u* = (1, 2, 3): at u = 0 the Hessian is diag(-4 c_t), c_t = u*_t^2 - 14/3."""
    return Problem(A_star=np.zeros((1, 1)), U_star=np.array([1.0, 2.0, 3.0]).reshape(3, 1, 1))


# --- the interval certificate --------------------------------------------------------------------------------------


@settings(max_examples=6, deadline=None)
@given(seeds, st.floats(1e-10, 1e-6))
def test_interval_certified_minimum_contains_U_star_and_encloses_G(seed, eps):
    p = Problem.random(3, 1, 3, seed=seed)
    x0 = p.U_star.ravel() + eps * np.random.default_rng(seed).standard_normal(p.n_reduced)
    import time

    start = time.perf_counter()
    c = certify_interval(p, x0)
    assert 0.0 <= c.seconds <= time.perf_counter() - start
    if c.verdict != "certified-minimum":  # an ill-conditioned draw: it may say nothing, but never the opposite
        assert c.verdict == "inconclusive"
        return
    assert c.minimum_kind == "global" and c.n == 9 and c.method == "krawczyk"
    assert np.max(np.abs(p.U_star.ravel() - x0)) < c.radius  # the unique critical point U* lies in the box
    assert _in(c.loss, exact_G(p, x0))
    assert Fraction(c.margins["loss_lower_on_box"]) <= exact_G(p, x0) <= Fraction(c.margins["loss_upper_on_box"])
    assert c.margins["loss_lower_on_box"] <= 0.0  # G(U*) = 0 lies in the box too
    assert 0 <= c.margins["krawczyk_ratio"] < 1 and c.margins["radii_tried"][-1] == c.radius
    lam = np.linalg.eigvalsh(reduced_hess(x0, p))
    assert 0 < c.margins["hessian_min_eig_lower"] <= lam[0] * (1 + 1e-6)
    assert c.margins["hessian_min_eig_mid"] == pytest.approx(lam[0], rel=1e-6, abs=0)
    step = np.max(np.abs(np.linalg.solve(reduced_hess(x0, p), reduced_grad(x0, p))))
    assert c.margins["newton_step"] == pytest.approx(step, rel=1e-3, abs=1e-14)
    assert c.gauge == "none (k = 1, T != 2: the O(1)^T orbit is finite)" and c.spurious is False and c.certified
    assert c.reason.startswith(f"the unique critical point x* of G in the box |z|_inf <= r = {c.radius:.3g} around x0 "
                               "is a strict local minimum: Krawczyk ratio ")
    assert c.reason.endswith("U* (column signs matched to x0) lies in the box and G(U*) = 0, so G(x*) = 0: the "
                             "minimum is global (proven)")


def test_interval_certificate_proves_global_with_flipped_columns():
    p = Problem.random(4, 1, 3, seed=3)
    x = p.U_star * np.array([-1.0, 1.0, -1.0])[:, None, None] + 1e-9
    c = certify_interval(p, x)
    assert c.verdict == "certified-minimum" and c.minimum_kind == "global" and c.reason.endswith("(proven)")


def test_interval_certificate_says_no_to_the_planted_saddle_with_its_curvature():
    c = certify_interval(_d1_saddle(), np.zeros(3))
    assert c.verdict == "certified-not-minimum" and c.minimum_kind is None and c.certified
    # the eigenvector of -52/3 is a coordinate vector: v^T H v over the tiny box encloses -52/3 from above
    assert -52 / 3 <= c.margins["negative_curvature_upper"] < -52 / 3 + 1e-6
    assert c.margins["hessian_min_eig_lower"] is None and c.margins["newton_step"] == 0.0
    assert _in(c.loss, exact_G(_d1_saddle(), np.zeros(3)))
    assert c.radius == pytest.approx(1e-15, rel=1e-12, abs=0)  # the smallest radius tried first, at a zero Newton step
    q = c.margins["negative_curvature_upper"]
    assert "is not a local minimum: Krawczyk ratio " in c.reason
    assert c.reason.endswith(f"with v^T H(X) v <= {q:.3g} < 0 over the whole box (midpoint lambda_min "
                             f"{-52 / 3:.3g})")


def test_interval_certificate_says_no_to_a_non_critical_point():
    p = Problem.random(3, 1, 3, seed=0)
    x = p.U_star.ravel() + 0.1
    c = certify_interval(p, x)
    step = np.max(np.abs(np.linalg.solve(reduced_hess(x, p), reduced_grad(x, p))))
    assert c.verdict == "inconclusive" and c.radius is None
    assert c.margins["newton_step"] == pytest.approx(step, rel=1e-8, abs=0)
    assert f"exceeds max_radius = {1e-3 * (1 + np.max(np.abs(x))):.3g}" in c.reason
    assert _in(c.loss, exact_G(p, x))
    # told a larger max_radius, the radii grow from 4 Newton steps by the growth factor
    wide = certify_interval(p, x, max_radius=4 * step * 30 ** 2 * 1.0001, max_tries=5)
    tried = wide.margins["radii_tried"]
    assert tried == pytest.approx([4 * step, 120 * step, 3600 * step][:len(tried)], rel=1e-12, abs=0)
    assert wide.radius == tried[-1]
    if wide.verdict == "inconclusive":
        assert "Krawczyk test failed" in wide.reason and len(tried) == 3 and wide.margins["krawczyk_ratio"] >= 1
    else:  # a box that large may hold a critical point: then Newton from x finds one inside it
        from scipy.optimize import least_squares

        z = least_squares(reduced_grad, x, jac=reduced_hess, args=(p,), xtol=1e-15, ftol=1e-15, gtol=1e-15).x
        assert np.max(np.abs(z - x)) <= wide.radius


def test_interval_certificate_says_nothing_at_a_degenerate_minimum():
    q = Problem.random(1, 1, 3, seed=1)  # d = 1: the global minima form a curve, H(U*) is singular
    lam = np.linalg.eigvalsh(reduced_hess(q.U_star, q))
    assert abs(lam[0]) <= 1e-12 * lam[-1]
    c = certify_interval(q, q.U_star)
    assert c.verdict == "inconclusive" and c.minimum_kind is None and not c.certified


def test_interval_certificate_at_a_given_radius_and_the_spurious_kind():
    path = INSTANCES / "spurious_d3_k1_T3.json"
    rec = json.loads(path.read_text())
    p = Problem.from_dict(rec["problem"])
    x = np.asarray(rec["point"], dtype=float).ravel()
    c = certify_interval(p, x)
    assert c.verdict == "certified-minimum" and c.minimum_kind == "spurious" and c.spurious
    assert c.margins["loss_lower_on_box"] > 0 and _in(c.loss, exact_G(p, x))
    assert Fraction(c.margins["loss_lower_on_box"]) <= exact_G(p, x)
    assert f"G >= {c.margins['loss_lower_on_box']:.6g} > 0 on the box" in c.reason
    fixed = certify_interval(p, x, radius=c.radius)
    assert fixed.verdict == "certified-minimum" and fixed.margins["radii_tried"] == [c.radius]
    too_big = certify_interval(p, x, radius=0.5)  # a box that holds more than one critical point cannot pass
    assert too_big.verdict == "inconclusive" and too_big.radius == 0.5 and too_big.loss == c.loss
    assert "(1 radii from 0.5 to 0.5, last ratio " in too_big.reason


def test_k2_certificates_at_U_star_nearby_and_at_zero():
    """k = 2, T = 3: near U* the interval box holds a global minimum (G = 0 on its orbit) but its G enclosure is wider
    than round-off, so the kind is "unknown", never "spurious"; the eps-net's G(x0) is at round-off level: "global"
    up to that bound. At U = 0 every U_t vanishes: no orbit direction is independent (0 < 3)."""
    p = Problem.random(6, 2, 3, seed=0)
    G0 = _G0(p)
    x = p.U_star + 1e-8 * np.random.default_rng(0).standard_normal(p.U_star.shape)
    ci = certify_interval(p, x)
    assert ci.verdict == "certified-minimum" and ci.minimum_kind == "unknown"
    lo, hi = ci.margins["loss_lower_on_box"], ci.margins["loss_upper_on_box"]
    assert lo <= 0.0 <= hi and hi > 1e-12 * (1 + G0) and f"[{lo:.3g}, {hi:.3g}]" in ci.reason
    ce = certify_epsnet(p, x)
    assert ce.verdict == "certified-minimum" and ce.minimum_kind == "global" and "round-off level" in ce.reason
    assert ce.loss[1] <= 1e-12 * (1 + G0) and _in(ce.loss, exact_G(p, x))
    # 1e-9 off U*: the box's upper bound of G is above 1e-12 but below 1e-12 (1 + G(0)): global up to round-off
    near = certify_interval(p, p.U_star + 1e-9 * np.random.default_rng(0).standard_normal(p.U_star.shape))
    assert 1e-12 < near.margins["loss_upper_on_box"] <= 1e-12 * (1 + G0) and near.minimum_kind == "global"
    at = certify_interval(p, p.U_star)
    assert at.minimum_kind == "global" and at.reason.endswith("cannot prove G(x*) = 0 exactly here")
    assert at.loss[1] <= 1e-12 * (1 + G0)
    z = certify_interval(p, np.zeros((3, 6, 2)))
    assert z.verdict == "certified-not-minimum" and "Q (36 x 36)" in z.gauge
    assert z.gauge.endswith("(the orbit has dimension 0 < 3, the group's: some tangent directions are dependent at U0, "
                           "e.g. a rank-deficient U_t)")
    far = certify_interval(p, p.U_star + 1e-5 * np.random.default_rng(0).standard_normal(p.U_star.shape))
    if far.verdict == "inconclusive":  # a box that must hold the minimum but is too wide to prove curvature
        lam0 = far.margins["hessian_min_eig_mid"]
        assert far.margins["hessian_min_eig_lower"] is None and lam0 > 0 and far.loss is not None
        assert far.radius == far.margins["radii_tried"][-1]
        assert far.reason.startswith("the unique critical point x* of G on the slice in the box |z|_inf <= r = ")
        assert far.reason.endswith(f"exists, but its interval Hessian is not proven positive definite (midpoint "
                                   f"lambda_min {lam0:.3g})")
    assert " is a strict local minimum modulo the orbit: Krawczyk ratio " in at.reason
    q = Problem.random(3, 1, 2, seed=4)  # T = 2, k = 1: the O(1, 1) slice; the U* shortcut is for k = 1, T != 2 only
    t2 = certify_interval(q, q.U_star)
    assert t2.minimum_kind == "global" and t2.reason.endswith("cannot prove G(x*) = 0 exactly here")
    assert certify_interval(p, p.U_star, growth=1.5, max_tries=1).verdict == "certified-minimum"


def test_interval_certificate_at_a_singular_float_hessian():
    """Three equal tasks (d = k = 1): at u = 0 the Hessian diag(-4 c_t) is exactly zero, so there is no Newton
    preconditioner; the verdict says so and keeps the loss enclosure and the radius it was given."""
    p = Problem(A_star=np.zeros((1, 1)), U_star=np.ones((3, 1, 1)))
    c = certify_interval(p, [0.0, 0.0, 0.0], radius=1e-3)  # a list is accepted (copied into float64)
    assert c.verdict == "inconclusive" and c.loss == (0.0, 0.0) and c.radius == 1e-3
    assert c.reason == ("the float Hessian at x0 (on the slice) is singular (a degenerate point): no Newton "
                        "preconditioner, the Krawczyk test cannot pass")


def test_interval_gauge_counts_orbit_directions_above_1e_10_max_abs_U():
    p = Problem.random(6, 2, 3, seed=0)
    generic = certify_interval(p, p.U_star).gauge
    assert generic.startswith("slice x = x0 + Q z, Q (36 x 33) the orthogonal complement of the 3-dimensional O(k)^T")
    assert generic.endswith("(theory.symmetry.symmetry_tangent)")
    U = p.U_star / np.max(np.abs(p.U_star[:2]))  # max |U0| = 1: the threshold is 1e-10
    U[2] = 0.0
    U[2, 0, 0] = U[2, 1, 1] = 1.5e-10 / np.sqrt(2)  # the third block's direction has norm 1.5e-10: counted
    assert "rank-deficient" not in certify_interval(p, U).gauge
    U[:2] *= 1e8  # max |U0| = 1e8: the threshold is 1e-2 and the third direction is dropped
    assert certify_interval(p, U).gauge.endswith("(the orbit has dimension 2 < 3, the group's: some tangent "
                                                  "directions are dependent at U0, e.g. a rank-deficient U_t)")


def test_interval_certificate_refuses_bad_points_with_the_count():
    p = Problem.random(2, 1, 3, seed=0)
    U = p.U_star.copy()
    U[0, 0, 0], U[2, 1, 0] = np.nan, -np.inf
    with pytest.raises(CertificateError, match=r"found 2 non-finite \(NaN or inf\)"):
        certify_interval(p, U)
    with pytest.raises(CertificateError, match="got dict"):
        certify_interval({"d": 2}, p.U_star)


def test_interval_certificate_refuses_bad_options_with_the_value():
    p = Problem.random(2, 1, 3, seed=0)
    for kw, match in (({"max_radius": 0.0}, "max_radius must be a positive finite number, got 0.0"),
                      ({"radius": "x"}, "radius must be a positive finite number, got 'x'"),
                      ({"growth": 0.5}, "growth must be > 1, got 0.5"),
                      ({"max_tries": True}, "max_tries must be a positive integer (> 0), got True"),
                      ({"prec": 52}, "prec (bits) must be an integer >= 53, got 52"),
                      ({"prec": 64.0}, "prec (bits) must be an integer >= 53, got 64.0"),
                      ({"growth": None}, "growth must be a positive finite number, got None")):
        with pytest.raises(Exception, match=re.escape(match)):
            certify_interval(p, p.U_star, **kw)
    assert certify_interval(p, p.U_star, prec=53, max_tries=np.int64(2)).verdict == "certified-minimum"


# --- the eps-net certificate ---------------------------------------------------------------------------------------


def test_net_covering_radius_closed_form():
    assert net_covering_radius(2.0, 5, 0) == 4.0
    assert net_covering_radius(2.0, 5, 3) == 0.5
    assert net_covering_radius(1.0, 1, 2) == 0.0 and net_covering_radius(1.0, 0, 0) == 0.0


def test_epsnet_certified_global_minimum_reconstructs_its_region():
    p = Problem.random(2, 1, 3, seed=1)
    c = certify_epsnet(p, p.U_star, time_limit=30)
    m = c.margins
    assert c.verdict == "certified-minimum" and c.minimum_kind == "global" and c.method == "epsnet"
    assert "U* (column signs matched to x0) lies in " in c.reason
    assert _in(c.loss, exact_G(p, p.U_star)) and c.loss[0] <= 0.0
    assert m["radius_x"] == pytest.approx(m["metric_norm"] * c.radius, rel=1e-12, abs=0)
    assert m["net_points"] == 12 and m["eps"] == net_covering_radius(c.radius, 6, 0)  # passed on the 2 n face centres
    assert certify_epsnet(p, p.U_star, max_points=12, batch=1).verdict == "certified-minimum"  # 2 n points suffice
    assert m["net_points"] >= 12 and m["net_margin"] > 0 and m["metric"] == "hessian"
    lam = np.linalg.eigvalsh(reduced_hess(p.U_star, p))
    assert m["hessian_min_eig_mid"] == pytest.approx(lam[0], rel=1e-9, abs=0)
    assert m["hessian_min_eig_lower"] is None  # only reported for the Euclidean metric
    assert m["lipschitz"] >= np.linalg.norm(reduced_grad(p.U_star, p))
    assert m["hessian_bound"] >= lam[-1]  # a bound of |H|_2 on the ball, so at its centre too
    # the Euclidean sphere needs about 10^6 points here; its bounds are reported before the net gives up
    eu = certify_epsnet(p, p.U_star, metric="euclidean", max_points=1000)
    assert eu.verdict == "inconclusive" and "would exceed max_points = 1000" in eu.reason
    assert eu.margins["metric_norm"] == 1.0 and 0 < eu.margins["hessian_min_eig_lower"] <= lam[0] * (1 + 1e-9)
    assert eu.margins["net_points"] <= 1000 and eu.margins["eps"] < net_covering_radius(eu.radius, 6, 0)


def _gamma(K):
    u = 2.0 ** -53
    return K * u / (1 - K * u)


@pytest.mark.parametrize("metric", ["hessian", "euclidean"])
def test_epsnet_margins_follow_their_documented_closed_forms(metric):
    """k = 1, T = 3 at U*: M = V diag(lambda)^(-1/2) (|M| = lambda_min^(-1/2), |M|_F^2 = sum 1/lambda) or M = I;
    tau = 2.02 (gamma_n |M|_F + (n + 4) u |M|) delta; on B(x0, R), R = |M| delta + tau, a = a0 + R:
    Hb = 8 a^2 + 4 (sqrt(G(x0)) + R (2 a0 + R)), Lip = |grad G(x0)| + R Hb; default delta = mu / (64 (n-1)^1.5 a0 |M|^3)
    with mu the smallest eigenvalue of M^T H M (the module docstring), all recomputed here in floats."""
    p = Problem.random(2, 1, 3, seed=1)
    c = certify_epsnet(p, p.U_star, metric=metric, max_points=1000)
    m, n, delta = c.margins, 6, c.radius
    lam = np.linalg.eigvalsh(reduced_hess(p.U_star, p))
    if metric == "hessian":
        Mn, MF, mu = lam[0] ** -0.5, math.sqrt(np.sum(1 / lam)), 1.0
    else:
        Mn, MF, mu = 1.0, math.sqrt(n), lam[0]
    assert m["metric_norm"] == pytest.approx(Mn, rel=1e-9, abs=0) and m["radius_x"] == m["metric_norm"] * delta
    # tau is about 1e-20: approx's default absolute tolerance (1e-12) would accept anything, so abs=0
    assert m["tau"] == pytest.approx(2.02 * (_gamma(n) * MF + (n + 4) * 2.0 ** -53 * Mn) * delta, rel=1e-9, abs=0)
    a0 = max(np.linalg.norm(Ut) for Ut in p.U_star)
    R = m["radius_x"] + m["tau"]
    Hb = 8 * (a0 + R) ** 2 + 4 * (math.sqrt(max(c.loss[1], 0.0)) + R * (2 * a0 + R))
    assert m["hessian_bound"] == pytest.approx(Hb, rel=1e-9, abs=0)
    assert m["lipschitz"] == pytest.approx(np.linalg.norm(reduced_grad(p.U_star, p)) + R * Hb, rel=1e-9, abs=0)
    assert delta == pytest.approx(mu / (64 * (n - 1) ** 1.5 * a0 * Mn ** 3), rel=1e-6, abs=0)
    if metric == "euclidean":
        assert m["hessian_min_eig_lower"] == pytest.approx(lam[0], rel=1e-6, abs=0)
        assert m["hessian_min_eig_lower"] <= lam[0]


def test_epsnet_says_no_to_the_planted_saddle_and_a_non_critical_point():
    c = certify_epsnet(_d1_saddle(), np.zeros(3))
    assert c.verdict == "inconclusive" and c.margins["hessian_min_eig_mid"] == pytest.approx(-52 / 3, rel=1e-12, abs=0)
    assert "lambda_min = -17.3" in c.reason
    p = Problem.random(2, 1, 3, seed=1)
    x = p.U_star.ravel() + 1e-3
    far = certify_epsnet(p, x, delta=1e-6)  # G falls by about |grad| delta across the small sphere
    assert far.verdict == "inconclusive" and "G < G(x0)" in far.reason
    assert _in(far.loss, exact_G(p, x))


def test_epsnet_spurious_minimum_and_its_ball_bound():
    rec = json.loads((INSTANCES / "spurious_d3_k1_T3.json").read_text())
    p = Problem.from_dict(rec["problem"])
    x = np.asarray(rec["point"], dtype=float).ravel()
    c = certify_epsnet(p, x, time_limit=60)
    assert c.verdict == "certified-minimum" and c.minimum_kind == "spurious"
    G = exact_G(p, x)
    assert 0 < Fraction(c.margins["loss_lower_on_ball"]) <= G and _in(c.loss, G)
    # |E(x)| >= sqrt(G(x0)) - dx (2 a0 + dx) on B(x0, dx), squared (module docstring)
    a0, dx = max(np.linalg.norm(Ut) for Ut in x.reshape(p.T, p.d, p.k)), c.margins["radius_x"]
    want = (math.sqrt(float(G)) - dx * (2 * a0 + dx)) ** 2
    assert c.margins["loss_lower_on_ball"] == pytest.approx(want, rel=1e-9, abs=0)
    assert f"G >= {c.margins['loss_lower_on_ball']:.6g} > 0 on x0 + M B(0, {c.radius:.3g})" in c.reason


def test_epsnet_uniform_net_counts_its_points():
    p = Problem.random(2, 1, 3, seed=1)
    c = certify_epsnet(p, p.U_star, eps=1e-7, max_points=10 ** 6)
    delta = c.radius
    level = max(0, math.ceil(math.log2(delta * math.sqrt(5) / 1e-7)))
    assert c.verdict == "inconclusive" and c.margins["net_points"] == 12 * 2 ** (level * 5)
    assert f"needs {12 * 2 ** (level * 5)} points" in c.reason and c.margins["metric"] == "euclidean"


def test_epsnet_time_limit_is_reported_with_the_points_done():
    p = Problem.random(2, 1, 3, seed=1)
    c = certify_epsnet(p, p.U_star, time_limit=1e-9)
    assert c.verdict == "inconclusive" and c.reason.startswith("time limit 1e-09 s reached after ")
    assert f"after {c.margins['net_points']} net points" in c.reason


def test_epsnet_refuses_bad_options_with_the_value():
    p = Problem.random(2, 1, 3, seed=0)
    for kw, match in (({"metric": "l1"}, "metric must be one of"), ({"batch": 0}, "batch must be a positive"),
                      ({"max_points": 1.5}, "max_points must be a positive integer (> 0), got 1.5"),
                      ({"prec": 40}, "prec (bits) must be an integer >= 53, got 40"),
                      ({"time_limit": 0}, "time_limit must be a positive finite number, got 0"),
                      ({"time_limit": None}, "time_limit must be a positive finite number, got None")):
        with pytest.raises(Exception, match=re.escape(match)):
            certify_epsnet(p, p.U_star, **kw)
