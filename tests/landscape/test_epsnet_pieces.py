"""The eps-net's pieces against their documented formulas (landscape.certify_epsnet's module docstring), recomputed
here entry by entry in plain Python floats (not vectorised like the code), and the walks of the net on planted
bounds: where each stops, and the numbers and words it reports."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from landscape.certify_epsnet_net import (UNIT_ROUNDOFF, NetBounds, NetLimits, NetOverflow, NetRun, adaptive_net,
                                          cube_points, evaluate, float_dG_grad, gamma, net_covering_radius,
                                          uniform_net)
from strategies import seeds
from theory.problem import Problem

U = 2.0 ** -53


def _gam(K: int) -> float:
    return K * U / (1 - K * U)


def test_unit_roundoff_and_gamma_are_highams():
    assert UNIT_ROUNDOFF == Fraction(1, 2 ** 53)
    for K in (1, 7, 40, 10 ** 6):
        assert Fraction(gamma(K)) == pytest.approx(Fraction(K, 2 ** 53) / (1 - Fraction(K, 2 ** 53)), rel=1e-15, abs=0)


def test_cube_points_put_the_face_coordinate_and_keep_the_others_in_order():
    y = cube_points(np.array([0, 2, 1]), np.array([1.0, -1.0, -1.0]), np.array([[0.5, -0.25], [0.1, 0.2], [3, 4]]), 3)
    assert np.array_equal(y, [[1.0, 0.5, -0.25], [0.1, 0.2, -1.0], [3.0, -1.0, 4.0]])


def _errors_by_the_book(h, U0, E0f, e0):
    """``dG_err`` and ``g_err`` of one displacement h (T, d, k), entry by entry: Delta_abs =
    centred-abs(|h_t||U_t|^T + |U_t||h_t|^T + |h_t||h_t|^T) (the mean added, not subtracted), S_abs =
    sum (2|E0| + Delta_abs) Delta_abs, dG_err = 2 gamma(2 (k + T + 3) + 1 + T d^2) S_abs + 4 sum(e0 Delta_abs)
    (1 + 4 gamma(T d^2 + 2)) + 1e-300; per gradient entry 2 gamma(k + T + d + 6) |g|_abs + 2 (2 (e0 + e0^T) |U|), and
    g_err = |that|_2 (1 + 4 gamma(n + 2)) + 1e-300."""
    T, d, k = U0.shape
    n = T * d * k
    A = [[[sum(abs(h[t, i, a]) * abs(U0[t, j, a]) + abs(U0[t, i, a]) * abs(h[t, j, a]) + abs(h[t, i, a] * h[t, j, a])
               for a in range(k)) for j in range(d)] for i in range(d)] for t in range(T)]
    Dabs = [[[A[t][i][j] + sum(A[s][i][j] for s in range(T)) / T for j in range(d)] for i in range(d)]
            for t in range(T)]
    S_abs = sum((2 * abs(E0f[t, i, j]) + Dabs[t][i][j]) * Dabs[t][i][j]
                for t in range(T) for i in range(d) for j in range(d))
    e_term = sum(e0[t, i, j] * Dabs[t][i][j] for t in range(T) for i in range(d) for j in range(d))
    dG_err = 2 * _gam(2 * (k + T + 3) + 1 + T * d * d) * S_abs + 4 * e_term * (1 + 4 * _gam(T * d * d + 2)) + 1e-300
    sq = 0.0
    for t in range(T):
        Eabs = [[abs(E0f[t, i, j]) + Dabs[t][i][j] for j in range(d)] for i in range(d)]
        for i in range(d):
            for a in range(k):
                Uabs = [abs(U0[t, j, a]) + abs(h[t, j, a]) for j in range(d)]
                gabs = 2 * sum((Eabs[i][j] + Eabs[j][i]) * Uabs[j] for j in range(d))
                ge0 = 2 * sum((e0[t, i, j] + e0[t, j, i]) * Uabs[j] for j in range(d))
                ent = 2 * _gam(k + T + d + 6) * gabs + 2 * ge0
                sq += ent * ent
    return dG_err, math.sqrt(sq) * (1 + 4 * _gam(n + 2)) + 1e-300


@settings(max_examples=20, deadline=None)
@given(st.tuples(st.integers(1, 3), st.integers(1, 2), st.integers(2, 4)), seeds,
       st.sampled_from([1e-6, 1e-2, 1.0]))
def test_rounding_bounds_follow_their_documented_formulas(size, seed, hscale):
    d, k, T = size
    rng = np.random.default_rng(seed)
    U0 = rng.standard_normal((T, d, k))
    E0f = rng.standard_normal((T, d, d))
    e0 = 1e-16 * rng.random((T, d, d))
    h = hscale * rng.standard_normal((2, T, d, k))
    _, dG_err, _, g_err = float_dG_grad(h, U0, E0f, e0)
    for b in range(2):
        want_dG, want_g = _errors_by_the_book(h[b], U0, E0f, e0)
        assert dG_err[b] == pytest.approx(want_dG, rel=1e-12, abs=0)
        assert g_err[b] == pytest.approx(want_g, rel=1e-12, abs=0)


def _bounds(m: int = 3, **kw) -> NetBounds:
    """Planted bounds for a d = 1, k = 1, T = m instance at U0 with E(x0) = 0 exactly: M = I, and the rest chosen."""
    base = dict(U0=np.ones((m, 1, 1)), E0f=np.zeros((m, 1, 1)), e0=np.zeros((m, 1, 1)), M=np.eye(m), delta=0.5,
                tau=0.0, m=m, nx=m, Mnorm=1.0, mu=0.0, a_cubic=0.0, Hb=0.0, Lip=1.0)
    base.update(kw)
    return NetBounds(**base)


def _margin_by_the_book(c: NetBounds, y: np.ndarray, level: int, local: bool) -> float:
    """The margin of one cell (module docstring): global drop Lip (|M| rho + tau); local drop |P g_z| rho + max(0,
    max(g_z.nu, 0) / (2 delta) - mu / 2) rho^2 + 4 a (|M| rho + tau)^3 + |g| tau + Hb (|M| rho tau + tau^2 / 2),
    each norm with its rounding allowance; margin = dG - dG_err - min(drops) - 8 u (|dG| + dG_err + drop)."""
    v = y / np.linalg.norm(y)
    h = (c.delta * v) @ c.M.T
    dG, dG_err, g, g_err = (a[0] for a in float_dG_grad(h.reshape((1,) + c.U0.shape), c.U0, c.E0f, c.e0))
    rho = c.delta * 2.0 ** -level * math.sqrt(c.m - 1)
    rho_x = c.Mnorm * rho + c.tau
    drop = c.Lip * rho_x
    if local:
        n, nx = c.m, c.nx
        up = 1 + 4 * _gam(n + 4)
        gn_up = (math.sqrt(sum(gi * gi for gi in g)) + g_err) * (1 + 4 * _gam(nx + 4))
        gz = [sum(c.M[i, j] * g[i] for i in range(nx)) for j in range(n)]
        absg_M = [sum(abs(g[i]) * abs(c.M[i, j]) for i in range(nx)) for j in range(n)]
        gz_err = c.Mnorm * g_err + _gam(nx) * math.sqrt(nx) * math.sqrt(sum(a * a for a in absg_M))
        gz_up = (math.sqrt(sum(a * a for a in gz)) + gz_err) * up
        gnu = sum(a * b for a, b in zip(gz, v))
        gnu_up = gnu + gz_err + 4 * (n + 4) * U * gz_up
        Pg_up = math.sqrt(sum((a - gnu * b) ** 2 for a, b in zip(gz, v))) * up + gz_err + 16 * (n + 4) * U * gz_up
        B2 = max(max(gnu_up, 0.0) / (2 * c.delta) - c.mu / 2, 0.0)
        local_drop = (Pg_up * rho + B2 * rho ** 2 + 4 * c.a_cubic * rho_x ** 3 + gn_up * c.tau
                      + c.Hb * (c.Mnorm * rho * c.tau + c.tau ** 2 / 2))
        drop = min(drop, local_drop)
    return (dG - dG_err) - drop - 8 * U * (abs(dG) + dG_err + drop)


@settings(max_examples=25, deadline=None)
@given(seeds, st.integers(0, 3), st.booleans(), st.floats(0.0, 3.0), st.floats(0.0, 1e-3), st.floats(0.0, 2.0),
       st.floats(0.0, 2.0))
def test_cell_margins_follow_their_documented_formula(seed, level, local, mu, tau, a_cubic, Hb):
    rng = np.random.default_rng(seed)
    m = 3
    M = rng.standard_normal((m, m))
    c = _bounds(m, U0=rng.standard_normal((m, 1, 1)), E0f=1e-2 * rng.standard_normal((m, 1, 1)),
                e0=1e-17 * rng.random((m, 1, 1)), M=M, Mnorm=float(np.linalg.norm(M, 2)), mu=mu, tau=tau,
                a_cubic=a_cubic, Hb=Hb, Lip=float(rng.uniform(0.1, 10.0)), delta=float(rng.uniform(0.01, 1.0)))
    face, sign = np.array([1, 2]), np.array([1.0, -1.0])
    centres = rng.uniform(-1, 1, (2, m - 1))
    ok, margin, below = evaluate(face, sign, centres, level, c, local=local)
    y = cube_points(face, sign, centres, m)
    for b in range(2):
        want = _margin_by_the_book(c, y[b], level, local)
        assert margin[b] == pytest.approx(want, rel=1e-12, abs=1e-15 * (1 + abs(want)))
        assert ok[b] == (margin[b] > 0)


def test_a_cell_whose_margin_is_not_finite_raises():
    c = _bounds(Lip=math.inf)
    with pytest.raises(NetOverflow):
        evaluate(np.array([0]), np.array([1.0]), np.zeros((1, 2)), 0, c, local=False)


def _limits(max_points=10 ** 6, time_limit=60.0, batch=4, ticks=None):
    import time

    return NetLimits(max_points, time_limit, time.perf_counter(), batch,
                     (ticks.append if ticks is not None else (lambda k: None)), "BELOW")


def _instance_bounds(E0f_value: float, **kw) -> NetBounds:
    """d = k = 1, T = 3 at U0 = (1, 1, 1) with the float E(x0) planted: a quadratic bowl when E0f = 0."""
    return _bounds(3, E0f=np.full((3, 1, 1), E0f_value), **kw)


def test_uniform_net_counts_every_cell_and_reports_the_smallest_margin():
    c = _instance_bounds(0.0, Lip=1e-9)
    ticks = []
    run = uniform_net(c, 1, _limits(ticks=ticks))
    assert run.failure is None and run.evaluated == 2 * 3 * 2 ** 2 == sum(ticks) and run.finest == 1
    assert 0 < run.min_margin < math.inf


def test_uniform_net_with_a_large_lipschitz_bound_says_a_finer_net_is_needed():
    c = _instance_bounds(0.0, Lip=1e6)
    run = uniform_net(c, 0, _limits(batch=2))  # level 0: one cell per face, so one point per batch
    assert run.evaluated == 1 and run.eps == net_covering_radius(0.5, 3, 0) and run.min_margin == math.inf
    assert run.failure == (f"uniform net (covering radius {run.eps:.3g}, Lipschitz 1e+06) fails at 1 points of a "
                           "batch: a finer net is needed")


def test_uniform_and_adaptive_nets_stop_at_a_point_below_G_x0():
    # E(x0) = (-1, 1/2, 1/2) (centred, as every E is): moving u_1 outwards by 1/2 changes G by
    # sum (2 E0 + Delta) Delta = -2 (5/4) + (6/9) (25/16) < 0 at the net point of face +e_1
    c = _bounds(3, E0f=np.array([-1.0, 0.5, 0.5]).reshape(3, 1, 1))
    for run in (uniform_net(c, 0, _limits()), adaptive_net(c, _limits())):
        assert run.failure == "BELOW" and run.evaluated in (1, 6)


def _real_bounds(scale: float) -> NetBounds:
    """The Hessian-metric bounds of d = 2, k = 1, T = 3 (seed 1) at U* with the sphere radius times ``scale``: at 16
    the 12 face cells fail and their 12 x 32 halves pass (found by running it; the walk is what is tested here)."""
    import dataclasses

    from landscape import _arb_reduced as ar
    from landscape.certify_epsnet_bounds import net_setup

    p = Problem.random(2, 1, 3, seed=1)
    with ar.working_precision(128):
        s = net_setup(p, p.U_star.ravel(), None, "hessian", {})
    return dataclasses.replace(s.net, delta=s.net.delta * scale)


def test_adaptive_net_refines_failing_cells_and_stops_at_max_points():
    c = _real_bounds(16.0)
    ticks = []
    run = adaptive_net(c, _limits(batch=64, ticks=ticks))
    assert run.failure is None and run.finest == 1 and run.evaluated == 12 + 12 * 32 == sum(ticks)
    assert ticks == [12] + [64] * 6 and 0 < run.min_margin < math.inf  # 2 parents (64 cells) per chunk
    capped = adaptive_net(c, _limits(max_points=100))
    assert capped.failure == ("the adaptive net would exceed max_points = 100 (evaluated 12, 384 cells pending at "
                              "level 1)")
    assert capped.eps == net_covering_radius(c.delta, 6, 1) and capped.evaluated == 12
    at_once = adaptive_net(_real_bounds(1.0), _limits())
    assert at_once.failure is None and at_once.finest == 0 and at_once.evaluated == 12


def test_adaptive_net_in_one_dimension_cannot_refine():
    c = _bounds(1, Lip=1e6, a_cubic=1e6)
    run = adaptive_net(c, _limits())
    assert run.failure == "a net cell fails and cannot be refined further" and run.evaluated == 2


def test_nets_stop_at_the_time_limit():
    c = _instance_bounds(0.0, Lip=1e-9)
    run = uniform_net(c, 2, _limits(time_limit=1e-12, batch=3))
    assert run.failure == "time limit 1e-12 s reached after 3 net points" and run.evaluated == 3
    run = adaptive_net(c, _limits(time_limit=1e-12, batch=100))
    assert run.failure == "time limit 1e-12 s reached after 6 net points (level 0)"


class _Recorder:
    """Stands in for ``evaluate``: records each call's cells and says whether they pass (``passes(level)``)."""

    def __init__(self, passes):
        self.calls, self.passes = [], passes

    def __call__(self, face, sign, centres, level, c, *, local):
        self.calls.append((face.copy(), sign.copy(), centres.copy(), level, local))
        ok = np.full(face.size, bool(self.passes(level)))
        return ok, np.where(ok, 1.0 + level, -1.0), False

    def cells(self, level):
        """``{(face, sign): sorted centres}`` of the cells evaluated at ``level``."""
        out = {}
        for face, sign, centres, lev, _ in self.calls:
            if lev == level:
                for f, s_, c in zip(face, sign, centres):
                    out.setdefault((int(f), float(s_)), []).append(tuple(c))
        return {k: sorted(v) for k, v in out.items()}


def _grid(m: int, level: int):
    """The dyadic cell centres of one face at ``level``: every ``-1 + (2 i + 1) / 2^level`` in each of m - 1
    coordinates, written out independently of the code."""
    import itertools

    mg = 2 ** level
    axis = [-1.0 + (2 * i + 1) / mg for i in range(mg)]
    return sorted(itertools.product(axis, repeat=m - 1))


@pytest.mark.parametrize("m,level,batch", [(3, 2, 5), (4, 1, 3), (2, 3, 100)])
def test_uniform_net_evaluates_every_dyadic_cell_of_every_face_once(monkeypatch, m, level, batch):
    import landscape.certify_epsnet_net as net

    rec = _Recorder(lambda level: True)
    monkeypatch.setattr(net, "evaluate", rec)
    run = uniform_net(_bounds(m), level, _limits(batch=batch))
    cells = rec.cells(level)
    assert sorted(cells) == [(f, s_) for f in range(m) for s_ in (-1.0, 1.0)]
    assert all(v == _grid(m, level) for v in cells.values())  # each centre once: no cell missed or repeated
    assert all(not local and len(face) <= batch for face, _, _, _, local in rec.calls)
    assert run == NetRun(2 * m * 2 ** (level * (m - 1)), 1.0 + level, level)


def test_uniform_net_in_one_dimension_has_the_two_end_points(monkeypatch):
    import landscape.certify_epsnet_net as net

    rec = _Recorder(lambda level: True)
    monkeypatch.setattr(net, "evaluate", rec)
    run = uniform_net(_bounds(1), 3, _limits())
    assert run.evaluated == 2 and rec.cells(3) == {(0, 1.0): [()], (0, -1.0): [()]}


@pytest.mark.parametrize("m,batch", [(3, 2), (3, 64), (4, 5)])
def test_adaptive_net_splits_a_failing_cell_into_its_halves(monkeypatch, m, batch):
    """Every cell fails at level 0 and passes at level 1: the cells of level 1 are exactly the level-1 grid of every
    face (each parent's 2^(m-1) halves, centres at +-1/2), tested with the local bound, in chunks of the batch."""
    import landscape.certify_epsnet_net as net

    rec = _Recorder(lambda level: level >= 1)
    monkeypatch.setattr(net, "evaluate", rec)
    run = adaptive_net(_bounds(m), _limits(batch=batch))
    assert rec.cells(0) == {(f, s_): [(0.0,) * (m - 1)] for f in range(m) for s_ in (-1.0, 1.0)}
    cells = rec.cells(1)
    assert sorted(cells) == [(f, s_) for f in range(m) for s_ in (-1.0, 1.0)]
    assert all(v == _grid(m, 1) for v in cells.values())
    assert all(local for *_, local in rec.calls)
    assert all(len(face) <= max(batch, 2 ** (m - 1)) for face, _, _, lev, _ in rec.calls if lev == 1)
    assert run == NetRun(2 * m + 2 * m * 2 ** (m - 1), 2.0, 1)


def test_net_walks_report_what_was_done_when_they_stop():
    c = _instance_bounds(0.0, Lip=1e6)
    assert uniform_net(c, 0, _limits(batch=2)) == NetRun(1, math.inf, 0, uniform_net(c, 0, _limits()).failure,
                                                          net_covering_radius(0.5, 3, 0))
    below = _bounds(3, E0f=np.array([-1.0, 0.5, 0.5]).reshape(3, 1, 1))
    assert uniform_net(below, 0, _limits()) == NetRun(1, math.inf, 0, "BELOW")
    assert adaptive_net(below, _limits()) == NetRun(6, math.inf, 0, "BELOW")
    slow = _instance_bounds(0.0, Lip=1e-9)
    stopped = uniform_net(slow, 2, _limits(time_limit=1e-12, batch=3))
    assert stopped.finest == 2 and 0 < stopped.min_margin < math.inf and stopped.eps is None


def test_u_star_inside_the_region_by_its_solved_coordinates():
    from flint import arb_mat

    from landscape import _arb_reduced as ar
    from landscape.certify_epsnet_bounds import _ustar_inside

    p = Problem.random(2, 1, 3, seed=0)
    x0 = (p.U_star + 0.1 / np.sqrt(6)).ravel()  # |x0 - U*| = 0.1: with M = I, |z|^2 = 0.01
    eye = arb_mat(np.eye(6).tolist())
    with ar.working_precision(128):
        assert _ustar_inside(p, x0, eye, 0.2)  # 0.01 < 0.04
        assert not _ustar_inside(p, x0, eye, 0.05)  # 0.01 > 0.0025
        assert not _ustar_inside(p, -x0, eye, 0.05) and _ustar_inside(p, -x0, eye, 0.2)  # signs matched first
        assert not _ustar_inside(p, x0, arb_mat(6, 6), 0.2)  # a singular M proves nothing


@pytest.mark.parametrize("size,metric", [((2, 1, 3), "hessian"), ((2, 1, 3), "euclidean"), ((1, 1, 2), "hessian")])
def test_net_bounds_follow_their_documented_formulas(size, metric):
    """At U*: mu = mu0 - (24 a0 R + 12 R^2) |M|^2 (mu0 = lambda_min(M^T H M), 1 for the Hessian metric),
    a_cubic = a0 + R with R = |M| delta + tau, a0 = max_t |U_t|_F, and the default delta = mu0 / (64 max(m - 1, 1)^1.5
    a0 |M|^3) (m = 1 on the T = 2, d = 1 slice); recomputed here in floats from the float Hessian."""
    from landscape import _arb_reduced as ar
    from landscape.certify_epsnet_bounds import net_setup

    p = Problem.random(*size, seed=1)
    x0 = p.U_star.ravel()
    with ar.working_precision(128):
        s = net_setup(p, x0, None, metric, {})
    c = s.net
    from landscape.certify_common import gauge
    from theory.reduced import reduced_hess

    Q = gauge(p.U_star).Q
    H = reduced_hess(x0, p) if Q is None else Q.T @ reduced_hess(x0, p) @ Q
    mu0 = 1.0 if metric == "hessian" else float(np.linalg.eigvalsh(H)[0])
    a0 = max(float(np.linalg.norm(Ut)) for Ut in p.U_star)
    R = c.Mnorm * c.delta + c.tau
    assert c.m == (1 if size == (1, 1, 2) else 6)
    assert c.delta == pytest.approx(mu0 / (64 * max(c.m - 1, 1) ** 1.5 * a0 * c.Mnorm ** 3), rel=1e-9, abs=0)
    assert c.mu == pytest.approx(mu0 - (24 * a0 * R + 12 * R * R) * c.Mnorm ** 2, rel=1e-9, abs=0)
    assert c.a_cubic == pytest.approx(a0 + R, rel=1e-12, abs=0) and c.a_cubic >= a0 + R
    assert s.dx == c.Mnorm * c.delta and s.ustar_inside is (Q is None)


def test_net_setup_says_so_when_arb_cannot_prove_the_hessian_definite(monkeypatch):
    from landscape import _arb_reduced as ar
    from landscape.certify_common import Gauge
    from landscape.certify_epsnet_bounds import net_setup

    p = Problem.random(2, 1, 3, seed=1)
    monkeypatch.setattr(ar, "lambda_min_lower", lambda A: (-math.inf, np.zeros(A.nrows()), np.eye(A.nrows())))
    with ar.working_precision(128):
        s = net_setup(p, p.U_star.ravel(), None, "hessian", {})
    assert s.failure == "could not prove the Hessian at x0 positive definite in arb" and s.net is None
    assert isinstance(s.gauge, Gauge) and s.loss[0] <= 0.0 <= s.loss[1]


def test_net_setup_failures_keep_the_loss_and_the_gauge(monkeypatch):
    """Every early stop of net_setup still reports G(x0)'s enclosure and the gauge: an overflowing float Hessian
    (|x0| ~ 1e160), and bounds that overflow (a rounding constant made infinite)."""
    import landscape.certify_epsnet_bounds as bounds
    from landscape import _arb_reduced as ar
    from landscape.certify_common import Gauge

    p = Problem.random(2, 1, 3, seed=1)
    far = 1e160 * np.random.default_rng(0).standard_normal(p.n_reduced)
    with ar.working_precision(128):
        s = bounds.net_setup(p, far, None, "hessian", {})
    assert s.failure.startswith("the float64 Hessian at x0 overflows (max |x0| entry ") and s.net is None
    assert isinstance(s.gauge, Gauge) and s.loss[0] > 1e300 and s.loss[1] >= s.loss[0]
    monkeypatch.setattr(bounds, "gamma", lambda K: math.inf)
    margins = {}
    with ar.working_precision(128):
        s = bounds.net_setup(p, p.U_star.ravel(), None, "hessian", margins)
    assert s.failure.startswith("the bounds of the net overflow float64 or vanish (delta ") and s.net is not None
    assert s.failure.endswith("nothing can be proven here in float64") and math.isinf(s.net.tau)
    assert isinstance(s.gauge, Gauge) and s.loss[0] <= 0.0 <= s.loss[1] and margins["tau"] == math.inf
