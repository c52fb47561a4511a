"""Each early stop of the eps-net's bounds at x0 (:func:`landscape.certify_epsnet_bounds.net_setup`) at its exact
threshold, with its exact message, still reporting G(x0)'s enclosure and the gauge; the bounds that depend on
G(x0) > 0 or on the gauge slice, checked at points where those terms are not zero; and what the adaptive walk
reports when it stops or refines beyond level 2 (planted bounds and cell verdicts from ``test_epsnet_pieces``)."""

from __future__ import annotations

import math
import warnings
from fractions import Fraction

import numpy as np
import pytest

from landscape import _arb_reduced as ar
from landscape import certify_epsnet_bounds as bounds
from landscape.certify_common import gauge
from theory.problem import Problem
from theory.reduced import reduced_hess, reduced_loss


def _setup(p, x0, delta=None, metric="hessian", margins=None):
    with ar.working_precision(128):
        return bounds.net_setup(p, x0, delta, metric, {} if margins is None else margins)


def _assert_encloses_loss(s, p, x0):
    """``s.loss`` is a tight enclosure of G(x0) > 0 (the float value within 1e-12 relative), and the gauge is x0's."""
    G = reduced_loss(x0, p)
    assert 0 < s.loss[0] <= s.loss[1] and s.loss[0] == pytest.approx(G, rel=1e-12, abs=0)
    assert s.loss[1] == pytest.approx(G, rel=1e-12, abs=0)
    expected = gauge(x0.reshape(p.T, p.d, p.k))
    assert s.gauge.cols == expected.cols and s.gauge.text == expected.text
    assert (s.gauge.Q is None) == (expected.Q is None)


def test_a_region_too_wide_for_the_gauge_slice_stops_with_the_loss_and_the_gauge():
    """(d, k, T) = (2, 1, 2) has a one-dimensional O(1, 1) orbit: the slice is transversal over a box of half-width
    about 0.01 around x0 (delta 0.1 passes) but not over one of half-width about 1 (delta = 1)."""
    p = Problem.random(2, 1, 2, seed=0)
    x0 = p.U_star.ravel() + 1e-3
    margins = {}
    s = _setup(p, x0, 1.0, "euclidean", margins)
    assert s.failure == ("could not prove the gauge slice transversal to the orbits over the region ([Q, Z(X)] not "
                         "proven nonsingular)")
    assert margins["transversal"] is False and s.net is None and s.gauge.Q is not None
    _assert_encloses_loss(s, p, x0)
    margins = {}
    assert _setup(p, x0, 0.1, "euclidean", margins).failure is None and margins["transversal"] is True


def test_a_float_hessian_that_is_not_positive_definite_stops_with_its_eigenvalue():
    p = Problem.random(2, 1, 3, seed=1)
    x0 = np.full(p.n_reduced, 1e-3)  # near U = 0, a saddle
    lam0 = float(np.linalg.eigvalsh(reduced_hess(x0, p))[0])
    margins = {}
    s = _setup(p, x0, margins=margins)
    assert lam0 < -1 and margins == {"hessian_min_eig_mid": pytest.approx(lam0, rel=1e-12, abs=0)}
    assert s.failure == (f"the float Hessian at x0 is not positive definite (lambda_min = {lam0:.3g}): G does not "
                         "rise on every small sphere, the eps-net cannot certify a minimum") and s.net is None
    _assert_encloses_loss(s, p, x0)


@pytest.mark.parametrize("planted,passes", [
    ([1.8e-10, 1.0, 1.0, 1.0, 1.0, 1.5], True),  # 1.8e-10 > 1e-10 * 1.5 (the floor max(1, .) is not reached)
    ([1e-10 * 1.5, 1.0, 1.0, 1.0, 1.0, 1.5], False),  # exactly at the threshold: not positive definite
    ([2e-10, 1.0, 1.0, 1.0, 1.0, 4.0], False),  # 2e-10 < 1e-10 * 4
    ([0.9e-10, 0.5, 0.5, 0.5, 0.5, 0.5], False),  # below the floor 1e-10 * max(1, 0.5)
    ([1.1e-10, 0.5, 0.5, 0.5, 0.5, 0.5], True),
])
def test_the_float_hessian_test_is_relative_to_its_largest_eigenvalue_floored_at_one(monkeypatch, planted, passes):
    """lambda_min > 1e-10 max(1, max |lambda|), from a planted float spectrum (the euclidean metric does not use it
    further)."""
    p = Problem.random(2, 1, 3, seed=1)
    x0 = p.U_star.ravel()
    V = np.linalg.eigh(reduced_hess(x0, p))[1]
    monkeypatch.setattr(bounds, "eigh", lambda J: (np.array(planted), V))
    margins = {}
    s = _setup(p, x0, None, "euclidean", margins)
    assert margins["hessian_min_eig_mid"] == planted[0]
    refused = s.failure is not None and s.failure.startswith("the float Hessian at x0 is not positive definite")
    assert refused is not passes


@pytest.mark.parametrize("mu0", [-math.inf, -1e-300, 0.0])
def test_net_setup_needs_a_positive_arb_lower_bound_of_the_hessian(monkeypatch, mu0):
    p = Problem.random(2, 1, 3, seed=1)
    x0 = p.U_star.ravel() + 1e-3
    monkeypatch.setattr(ar, "lambda_min_lower", lambda A: (mu0, np.zeros(A.nrows()), np.eye(A.nrows())))
    s = _setup(p, x0)
    assert s.failure == "could not prove the Hessian at x0 positive definite in arb" and s.net is None
    _assert_encloses_loss(s, p, x0)


def test_a_zero_radius_is_refused_as_vanishing_bounds():
    p = Problem.random(2, 1, 3, seed=1)
    s = _setup(p, p.U_star.ravel() + 1e-3, 0.0)
    assert s.failure.startswith("the bounds of the net overflow float64 or vanish (delta 0, ") and s.net is not None


def test_an_overflowing_float_hessian_stops_without_a_warning():
    p = Problem.random(2, 1, 3, seed=1)
    far = 1e160 * np.random.default_rng(0).standard_normal(p.n_reduced)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        s = _setup(p, far)
    assert s.failure.startswith("the float64 Hessian at x0 overflows")


def test_the_hessian_bound_includes_sqrt_G_x0_away_from_a_global_minimum():
    """Hb = 8 (a0 + R)^2 + 4 (sqrt(G(x0)) + R (2 a0 + R)) with R = |M| delta + tau, a0 = max_t |U_t|_F, at a point
    with G(x0) ~ 6e-8 (the sqrt term is ~ 1e-4 of Hb, far above the 1e-9 tolerance)."""
    p = Problem.random(2, 1, 3, seed=1)
    x0 = p.U_star.ravel() + 1e-4
    s = _setup(p, x0)
    c = s.net
    R = c.Mnorm * c.delta + c.tau
    a0 = max(float(np.linalg.norm(Ut)) for Ut in x0.reshape(p.T, p.d, p.k))
    G = reduced_loss(x0, p)
    assert 4 * math.sqrt(G) > 1e-5 * 8 * (a0 + R) ** 2
    assert c.Hb == pytest.approx(8 * (a0 + R) ** 2 + 4 * (math.sqrt(G) + R * (2 * a0 + R)), rel=1e-9, abs=0)


def test_the_euclidean_curvature_margin_is_divided_by_the_squared_metric_norm():
    """On the gauge slice (k = 2) the euclidean metric is Q (orthonormal columns, |M| = 1 up to rounding);
    hessian_min_eig_lower is mu0 / |M|^2 with mu0 the arb lower bound of lambda_min(Q^T H Q), recomputed here."""
    from flint import arb_mat

    p = Problem.random(5, 2, 3, seed=0)
    x0 = p.U_star.ravel()
    margins = {}
    s = _setup(p, x0, None, "euclidean", margins)
    assert s.failure is None and margins["metric_norm"] == s.net.Mnorm
    with ar.working_precision(128):
        U0b = ar.U_blocks(ar.balls(x0), p.T, p.d, p.k)
        Qa = arb_mat(s.gauge.Q.tolist())
        mu0 = ar.lambda_min_lower(Qa.transpose() * ar.hess(U0b, ar.residuals(U0b, ar.task_matrices(p))) * Qa)[0]
    assert s.net.Mnorm != 1.0 and margins["hessian_min_eig_lower"] == mu0 / s.net.Mnorm ** 2


def test_u_star_exactly_on_the_region_boundary_is_not_inside():
    """``_ustar_inside`` proves |z| < delta strictly: U* at distance exactly delta (one coordinate, M = I, every
    number exact in arb) is not proven inside."""
    from flint import arb_mat

    from landscape.certify_epsnet_bounds import _ustar_inside

    p = Problem.random(2, 1, 3, seed=0)
    x0 = p.U_star.ravel().copy()
    x0[0] += 0.0625
    gap = Fraction(float(x0[0])) - Fraction(float(p.U_star.ravel()[0]))
    delta = float(abs(gap))
    assert Fraction(delta) == abs(gap)  # the distance is a float, so |z|^2 = delta^2 exactly
    eye = arb_mat(np.eye(p.n_reduced).tolist())
    with ar.working_precision(128):
        assert not _ustar_inside(p, x0, eye, delta)
        assert _ustar_inside(p, x0, eye, math.nextafter(delta, math.inf))


def test_the_adaptive_net_refines_level_by_level_to_level_three(monkeypatch):
    """Cells fail below level 3 and pass at it (m = 2: each failing cell has 2 halves): 4 + 8 + 16 + 32 cells, the
    cells of level 3 exactly the level-3 grid of every face, and the reported finest level 3."""
    import landscape.certify_epsnet_net as net
    from test_epsnet_pieces import _bounds, _grid, _limits, _Recorder

    rec = _Recorder(lambda level: level >= 3)
    monkeypatch.setattr(net, "evaluate", rec)
    assert net.adaptive_net(_bounds(2), _limits()) == net.NetRun(4 + 8 + 16 + 32, 4.0, 3)
    assert rec.cells(3) == {(f, s_): _grid(2, 3) for f in range(2) for s_ in (-1.0, 1.0)}


def test_the_adaptive_net_reports_its_points_margin_and_level_when_it_stops():
    from landscape.certify_epsnet_net import NetRun, adaptive_net, net_covering_radius
    from test_epsnet_pieces import _bounds, _instance_bounds, _limits, _real_bounds

    flat = _bounds(1, Lip=1e6, a_cubic=1e6)
    assert adaptive_net(flat, _limits()) == NetRun(2, math.inf, 0, "a net cell fails and cannot be refined further")
    c = _real_bounds(16.0)
    assert adaptive_net(c, _limits(max_points=100)) == NetRun(
        12, math.inf, 0, "the adaptive net would exceed max_points = 100 (evaluated 12, 384 cells pending at level 1)",
        net_covering_radius(c.delta, 6, 1))
    slow = adaptive_net(_instance_bounds(0.0, Lip=1e-9), _limits(time_limit=1e-12, batch=3))
    assert slow.failure == f"time limit 1e-12 s reached after {slow.evaluated} net points (level 0)"
    assert slow.finest == 0 and 0 < slow.min_margin < math.inf and slow.evaluated == 6
