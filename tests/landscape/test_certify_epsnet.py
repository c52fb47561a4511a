"""The eps-net certificate: its covering-radius claim, its rounding-error bound, planted cases, and agreement with
the interval certificate."""

from __future__ import annotations

import json
import math
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
from hypothesis import assume, example, given, settings
from hypothesis import strategies as st
from scipy.optimize import minimize

from exact_reduced import exact_G, exact_grad
from landscape.certificate import CertificateError
from landscape import certify_epsnet as ce
from landscape.certify_epsnet import certify_epsnet, net_covering_radius
from landscape.certify_epsnet_net import NetOverflow, cube_points as _cube_points, float_dG_grad as _float_dG_grad
from landscape.certify_interval import certify_interval
from strategies import seeds
from theory.problem import Problem
from theory.reduced import reduced_grad, reduced_hess, reduced_loss

INSTANCES = Path(__file__).resolve().parents[2] / "landscape" / "instances"


@settings(max_examples=60, deadline=None)
@given(n=st.integers(2, 7), level=st.integers(0, 4), seed=seeds)
def test_every_sphere_point_is_within_the_covering_radius_of_its_cells_net_point(n, level, seed):
    """The proof's geometric claim, checked on random sphere points: v on the unit sphere lies in the radial image
    of the cube-face cell that contains y = v / |v|_inf, and within w sqrt(n - 1) of that cell's net point."""
    rng = np.random.default_rng(seed)
    v = rng.standard_normal(n)
    v /= np.linalg.norm(v)
    y = v / np.max(np.abs(v))
    face = int(np.argmax(np.abs(v)))
    w = 2.0 ** -level
    others = np.delete(y, face)
    centre = -1.0 + w * (2.0 * np.minimum(np.floor((others + 1.0) / (2.0 * w)), 2 ** level - 1) + 1.0)
    assert np.all(np.abs(others - centre) <= w * (1 + 1e-12))
    c = _cube_points(np.array([face]), np.array([np.sign(y[face])]), centre[None], n)[0]
    s = c / np.linalg.norm(c)
    assert np.linalg.norm(v - s) <= net_covering_radius(1.0, n, level) * (1 + 1e-12)


def _up(q: Fraction) -> float:
    """A float >= the rational q."""
    f = float(q)
    return f if Fraction(f) >= q else float(np.nextafter(f, np.inf))


@settings(max_examples=25, deadline=None)
@given(size=st.tuples(st.integers(1, 3), st.integers(1, 2), st.integers(2, 3)), seed=seeds,
       scale=st.sampled_from([1e-3, 1.0, 30.0]), hscale=st.sampled_from([1e-8, 1e-3, 1.0]))
def test_float_rounding_bounds_contain_the_exact_difference_and_gradient(size, seed, scale, hscale):
    """The float difference G(x0 + h) - G(x0) and gradient at x0 + h, against exact rationals; the bounds hold and
    are not vacuous."""
    d, k, T = size
    p = Problem.random(d, k, T, seed=seed)
    rng = np.random.default_rng(seed)
    x0 = scale * rng.standard_normal((T, d, k))
    h = hscale * rng.standard_normal((3, T, d, k))
    # E(x0) exactly, then rounded, with its exact entrywise error rounded up
    D = [[[sum(Fraction(x0[t, i, a]) * Fraction(x0[t, j, a]) - Fraction(p.U_star[t, i, a]) * Fraction(p.U_star[t, j, a])
               for a in range(k)) - Fraction(p.A_star[i, j]) for j in range(d)] for i in range(d)] for t in range(T)]
    E0 = [[[D[t][i][j] - sum(D[s][i][j] for s in range(T)) / T for j in range(d)] for i in range(d)] for t in range(T)]
    E0f = np.array([[[float(E0[t][i][j]) for j in range(d)] for i in range(d)] for t in range(T)])
    e0 = np.array([[[_up(abs(Fraction(E0f[t, i, j]) - E0[t][i][j])) for j in range(d)] for i in range(d)]
                   for t in range(T)])
    dG, dG_err, g, g_err = _float_dG_grad(h, x0, E0f, e0)
    G0 = exact_G(p, x0.ravel())
    for b in range(h.shape[0]):
        x = [Fraction(a) + Fraction(c) for a, c in zip(x0.ravel(), h[b].ravel())]  # the exact point x0 + h
        dGe = exact_G(p, np.array(x, dtype=object)) - G0
        assert abs(Fraction(float(dG[b])) - dGe) <= Fraction(float(dG_err[b]))
        hx = float(np.linalg.norm(h[b])) * (1.0 + float(np.max(np.abs(x0))))  # ~ |Delta|
        assert dG_err[b] <= 1e-12 * hx * (1.0 + float(np.max(np.abs(E0f))) + hx)  # proportional to |h|, not to G
        ge = exact_grad(p, x)
        err2 = sum((Fraction(float(gi)) - ei) ** 2 for gi, ei in zip(g[b], ge))
        assert err2 <= Fraction(float(g_err[b])) ** 2


def test_planted_global_minimum_is_certified():
    p = Problem.random(2, 1, 3, seed=1)
    c = certify_epsnet(p, p.U_star, time_limit=30)
    assert c.verdict == "certified-minimum" and c.minimum_kind == "global", c.reason
    assert c.margins["net_margin"] > 0 and c.margins["net_points"] > 0
    assert c.loss[0] <= 0 <= c.loss[1]


@settings(max_examples=12, deadline=None)
@given(seed=seeds, eps=st.sampled_from([1e-9, 1e-7, 1e-5, 1e-3]), metric=st.sampled_from(["hessian", "euclidean"]))
def test_a_certified_minimum_is_really_there(seed, eps, metric):
    """Near (not at) a strict minimum: a pass must mean a local minimum inside; trust-region Newton from x0 must end
    within the certified radius. A point whose gradient pushes the minimum outside the region must not pass."""
    p = Problem.random(2, 1, 3, seed=seed)
    x0 = p.U_star.ravel() + eps * np.random.default_rng(seed).standard_normal(p.n_reduced)
    c = certify_epsnet(p, x0, metric=metric, time_limit=1)
    if c.verdict == "certified-minimum":
        r = minimize(reduced_loss, x0, args=(p,), jac=reduced_grad, hess=reduced_hess, method="trust-exact",
                     options={"gtol": 1e-13})
        assert np.linalg.norm(r.x - x0) <= c.margins["radius_x"] * (1 + 1e-6) + 1e-12
    else:
        assert c.verdict == "inconclusive"


def test_a_non_critical_point_is_not_certified():
    p = Problem.random(2, 1, 3, seed=1)
    c = certify_epsnet(p, p.U_star.ravel() + 1e-3)
    assert c.verdict == "inconclusive"


def test_saddle_and_degenerate_minimum_are_inconclusive_with_the_reason():
    p = Problem.random(2, 1, 3, seed=1)
    c = certify_epsnet(p, np.zeros_like(p.U_star))
    assert c.verdict == "inconclusive" and "not positive definite" in c.reason
    p2 = Problem.random(1, 1, 3, seed=1)  # d = 1: u_t^2 - mean_s u_s^2 fixed leaves a curve of global minima
    c2 = certify_epsnet(p2, p2.U_star)
    assert c2.verdict == "inconclusive" and "not positive definite" in c2.reason
    p3 = Problem.random(5, 3, 4, seed=1)  # (T+1) k > d: singular beyond the orbit
    c3 = certify_epsnet(p3, p3.U_star)
    assert c3.verdict == "inconclusive" and "gauge slice is not positive definite" in c3.reason


@settings(max_examples=6, deadline=None)
@given(seed=seeds, s=st.floats(-1.5, 1.5), size=st.sampled_from([(2, 1), (3, 1), (4, 2)]))
def test_T2_global_minima_along_the_hyperbola_are_certified_by_both(seed, s, size):
    """T = 2: G depends only on U1 U1^T - U2 U2^T, so the global minima form O(k, k) orbits (Appendix D.1); both
    certificates fix that larger gauge. The point is U* moved along a boost, which keeps U1 U1^T - U2 U2^T."""
    d, k = size
    p = Problem.random(d, k, 2, seed=seed)
    c, sh = np.cosh(s), np.sinh(s)
    U1, U2 = p.U_star
    U = np.stack([c * U1 + sh * U2, sh * U1 + c * U2])
    assert np.allclose(U[0] @ U[0].T - U[1] @ U[1].T, U1 @ U1.T - U2 @ U2.T, atol=1e-9 * (1 + c * c))
    lam = np.linalg.svd(np.hstack([U1, U2]), compute_uv=False)
    assume(lam[-1] > 1e-2)  # [U1, U2] of full rank 2k: an orbit of full dimension
    ci, ce = certify_interval(p, U), certify_epsnet(p, U)
    assert ci.verdict == "certified-minimum" and ci.minimum_kind == "global", ci.reason
    assert ce.verdict == "certified-minimum" and ce.minimum_kind == "global", ce.reason
    assert "O(k,k)" in ci.gauge and "O(k,k)" in ce.gauge


def test_k2_minimum_on_the_gauge_slice_and_its_orbit_agree_with_the_interval_certificate():
    from scipy.stats import ortho_group

    p = Problem.random(8, 2, 3, seed=5)
    for U in (p.U_star, p.U_star @ ortho_group.rvs(2, size=3, random_state=2)):
        ce, ci = certify_epsnet(p, U), certify_interval(p, U)
        assert ce.verdict == ci.verdict == "certified-minimum", ce.reason
        assert ce.minimum_kind == ci.minimum_kind == "global"
        assert ce.margins["transversal"] is True and "slice" in ce.gauge


def test_k2_saddle_is_not_certified_by_the_eps_net():
    from scipy.optimize import least_squares

    p = Problem.random(6, 2, 3, seed=0)
    x0 = np.random.default_rng(7).standard_normal(p.n_reduced) * 0.5
    x = least_squares(reduced_grad, x0, jac=reduced_hess, args=(p,), xtol=1e-15, ftol=1e-15, gtol=1e-15,
                      method="lm").x
    assert certify_interval(p, x).verdict == "certified-not-minimum"
    assert certify_epsnet(p, x).verdict == "inconclusive"


def test_the_papers_uniform_net_refuses_what_it_cannot_afford():
    """With the global norm-based Lipschitz bound the uniform net needs far more points than allowed here; it must
    say so (inconclusive), never pass."""
    p = Problem.random(2, 1, 3, seed=1)
    c = certify_epsnet(p, p.U_star, eps=1e-7, max_points=10 ** 6)
    assert c.verdict == "inconclusive" and "needs" in c.reason
    c = certify_epsnet(p, p.U_star, eps=1e-3, max_points=10 ** 6)
    assert c.verdict == "inconclusive" and "finer net" in c.reason


def test_a_tiny_budget_gives_inconclusive():
    p = Problem.random(2, 1, 3, seed=1)
    c = certify_epsnet(p, p.U_star, max_points=5)  # fewer than the 2 n = 12 points of the coarsest net
    assert c.verdict == "inconclusive" and "max_points" in c.reason


def test_bad_input_is_refused():
    p = Problem.random(2, 1, 3, seed=0)
    U = p.U_star.copy()
    U[0, 0, 0] = np.inf
    with pytest.raises(CertificateError, match="finite"):
        certify_epsnet(p, U)
    for kw in ({"delta": 0.0}, {"eps": -1.0}, {"metric": "sphere"}, {"max_points": 0}, {"time_limit": math.nan}):
        with pytest.raises(CertificateError):
            certify_epsnet(p, p.U_star, **kw)


def _critical_points(p, seed, starts=4):
    """Local minima from trust-region Newton and one plain Newton root (often a saddle) from random starts."""
    rng = np.random.default_rng(seed)
    pts = [p.U_star.ravel()]
    for _ in range(starts):
        x0 = rng.standard_normal(p.n_reduced)
        r = minimize(reduced_loss, x0, args=(p,), jac=reduced_grad, hess=reduced_hess, method="trust-exact",
                     options={"gtol": 1e-12})
        pts.append(r.x)
        x = 0.3 * x0
        for _ in range(50):
            try:
                x = x - np.linalg.solve(reduced_hess(x, p), reduced_grad(x, p))
            except np.linalg.LinAlgError:
                break
        pts.append(x)
    return [x for x in pts if np.all(np.isfinite(x)) and np.linalg.norm(reduced_grad(x, p)) < 1e-9]


@settings(max_examples=6, deadline=None)
@given(seed=seeds)
@example(seed=1_191_715_591)  # the eps-net's radius falls to round-off (7e-13) and a net point lies below G(x0)
def test_the_two_certificates_agree_where_both_finish(seed):
    p = Problem.random(2, 1, 3, seed=seed)
    pts = _critical_points(p, seed)
    assume(pts)
    for x in pts:
        ci = certify_interval(p, x)
        ce = certify_epsnet(p, x, time_limit=20)
        verdicts = {ci.verdict, ce.verdict} - {"inconclusive"}
        assert len(verdicts) <= 1, (ci.reason, ce.reason)
        if ci.verdict == ce.verdict == "certified-minimum":
            assert {ci.minimum_kind, ce.minimum_kind} != {"spurious", "global"}
        if ci.verdict == "certified-minimum":  # the eps-net finishes at n = 6 on a certified strict minimum,
            # unless its radius is so small that x0's own round-off error (about 1e-13) puts a net point below G(x0)
            assert ce.verdict == "certified-minimum" or (
                ce.verdict == "inconclusive" and "the test cannot pass at this delta" in ce.reason
                and ce.radius < 1e-10), ce.reason
        if ci.verdict == "certified-not-minimum":
            assert ce.verdict == "inconclusive"


@pytest.mark.parametrize("path", sorted(INSTANCES.glob("*.json")), ids=lambda q: q.stem)
def test_stored_spurious_minimum_is_certified_by_the_eps_net(path):
    rec = json.loads(path.read_text())
    p = Problem.from_dict(rec["problem"])
    c = certify_epsnet(p, np.asarray(rec["point"], dtype=float), time_limit=60)
    assert c.verdict == "certified-minimum" and c.minimum_kind == "spurious", c.reason
    assert c.margins["loss_lower_on_ball"] > 0 and c.margins["net_margin"] > 0
    ci = certify_interval(p, np.asarray(rec["point"], dtype=float))
    assert ci.verdict == "certified-minimum" and ci.minimum_kind == "spurious"


def test_uniform_level_is_the_first_with_covering_radius_at_most_eps():
    for delta, m, eps in ((1.0, 3, 0.3), (0.5, 6, 1e-3), (2.0, 2, 5.0)):
        level, why, total = ce._uniform_level(delta, m, eps, 10 ** 30)
        assert net_covering_radius(delta, m, level) <= eps
        assert level == 0 or net_covering_radius(delta, m, level - 1) > eps
        assert total == 2 * m * 2 ** (level * (m - 1)) and why is None
    level, why, total = ce._uniform_level(1.0, 3, 0.3, 10)
    assert why == f"the uniform net of covering radius 0.3 on S(x0, 1) needs {total} points > max_points = 10"
    assert ce._uniform_level(1.0, 1, 1e-9, 10)[:2] == (0, None)


def test_an_overflow_on_the_net_is_inconclusive_with_the_points_done(monkeypatch):
    import landscape.certify_epsnet_net as net

    p = Problem.random(2, 1, 3, seed=1)
    calls = []
    real = net.evaluate

    def overflow_on_second(*a, **kw):
        calls.append(1)
        if len(calls) == 3:
            raise NetOverflow
        return real(*a, **kw)

    delta = ce.certify_epsnet(p, p.U_star).radius
    monkeypatch.setattr(net, "evaluate", overflow_on_second)
    # 16 times the default radius: the 12 face cells fail, their halves go in chunks of 64; the second chunk overflows
    c = ce.certify_epsnet(p, p.U_star, delta=16 * delta, batch=64)
    assert c.verdict == "inconclusive" and c.margins["net_points"] == 12 + 64 and len(calls) == 3
    assert c.reason == "the float64 evaluation of G or its gradient on the net overflows: nothing can be proven here"


def test_uniform_level_at_the_edges_of_its_rules():
    # m = 2: delta sqrt(1) / eps = 1 / 0.6 -> level 1 (sqrt(m + 1) would give 2; m > 2 would give 0)
    assert ce._uniform_level(1.0, 2, 0.6, 10 ** 9)[:2] == (1, None)
    level, why, total = ce._uniform_level(1.0, 3, 0.3, 10 ** 9)
    assert ce._uniform_level(1.0, 3, 0.3, total) == (level, None, total)  # exactly max_points: still walked
    assert ce._uniform_level(1.0, 3, 0.3, total - 1)[1] is not None


def test_the_progress_bar_shows_the_net_and_clears_itself(capsys):
    p = Problem.random(2, 1, 3, seed=1)
    delta = ce.certify_epsnet(p, p.U_star).radius
    capsys.readouterr()
    ce.certify_epsnet(p, p.U_star, delta=16 * delta, progress=True)
    err = capsys.readouterr().err
    assert err.startswith("\reps-net: 0pts [") and "\n" not in err  # leave=False: no line left behind
    assert err.endswith("\r") and err.rstrip("\r").split("\r")[-1].strip() == ""
    for quiet in (False, None):  # None: only on a terminal, and the test's stderr is not one
        ce.certify_epsnet(p, p.U_star, delta=16 * delta, progress=quiet)
        assert capsys.readouterr().err == ""


def test_certificate_fields_and_reasons_say_which_region_and_slice(monkeypatch):
    import re

    # the Euclidean sphere on the T = 2 slice (m = 3): region S(x0, delta), kind decided on B(x0, delta)
    p = Problem.random(2, 1, 2, seed=1)
    c = ce.certify_epsnet(p, p.U_star, metric="euclidean")
    assert c.verdict == "certified-minimum" and c.n == 4 and c.method == "epsnet" and 0 < c.seconds < 60
    assert c.reason.startswith(f"G > G(x0) on all of S(x0, {c.radius:.3g}) ({c.margins['net_points']} net points, ")
    assert ("a local minimum of G on the gauge slice (transversal to the orbits: a local minimum of G modulo the "
            "orbit) lies inside, within ") in c.reason
    assert re.search(r"0 <= G\(x\*\) <= \S+ \(round-off level", c.reason) and c.gauge.startswith("slice x = x0 + Q z")
    regions = []  # the region the minimum kind is decided on: the Euclidean ball B(x0, delta)
    monkeypatch.setattr(ce, "minimum_kind", lambda **kw: regions.append(kw["region"]) or ("unknown", "-"))
    again = ce.certify_epsnet(p, p.U_star, metric="euclidean")
    assert again.radius == c.radius and regions == [f"B(x0, {c.radius:.3g})"]
    monkeypatch.undo()
    # the Hessian metric at k = 1, T = 3 (no slice): the ellipsoid, and U* proven inside x0 + M B(0, delta)
    q = Problem.random(4, 1, 3, seed=0)
    h = ce.certify_epsnet(q, q.U_star)
    assert h.reason.startswith(f"G > G(x0) on all of the ellipsoid x0 + M S(0, {h.radius:.3g}) (24 net points, ")
    assert f"a local minimum of G lies inside, within {h.margins['radius_x']:.3g} of x0; U* (column signs matched to " \
           f"x0) lies in x0 + M B(0, {h.radius:.3g}) and G(U*) = 0" in h.reason
    assert h.n == 12 and h.gauge == "none (k = 1, T != 2: the O(1)^T orbit is finite)"
    # a far point with the Euclidean metric: the sphere named in the reason
    far = ce.certify_epsnet(q, q.U_star.ravel() + 1e-3, delta=1e-6, metric="euclidean")
    assert far.reason == ("a net point near S(x0, 1e-06) has G < G(x0) (rigorously): the test cannot pass at this "
                          "delta") and far.margins["net_points"] > 0


def test_eps_net_limits_at_their_edges():
    p = Problem.random(2, 1, 3, seed=1)
    one = ce.certify_epsnet(p, p.U_star, max_points=1)  # allowed, but even 2 m = 12 points are too many
    assert one.reason == "even the coarsest net (2 m = 12 points) exceeds max_points = 1"
    assert one.margins["net_points"] == 0 and one.verdict == "inconclusive"
    many = ce.certify_epsnet(p, p.U_star, eps=1e-7, max_points=10 ** 6)  # the uniform net: the Euclidean sphere
    level, _, total = ce._uniform_level(many.radius, 6, 1e-7, 10 ** 30)
    assert many.margins["eps"] == 1e-7 and many.margins["net_points"] == total
    assert ce.certify_epsnet(p, p.U_star, prec=53).verdict == "certified-minimum"
    for kw, name in (({"delta": -1.0}, "delta"), ({"eps": 0.0}, "eps")):
        with pytest.raises(Exception, match=rf"^{name} must be a positive finite number, got "):
            ce.certify_epsnet(p, p.U_star, **kw)
