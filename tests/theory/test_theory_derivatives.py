"""Analytic derivatives of L_SR, L and G against torch.func autograd, central differences and Taylor slopes."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings

from derivcheck import central_difference, taylor_slope
from strategies import problem_and_point
from theory.meta import meta_grad, meta_grad_flat, meta_hess, meta_hvp, meta_loss
from theory.problem import MetaPoint
from theory.reduced import reduced_grad, reduced_hess, reduced_hvp, reduced_loss
from theory.sr import sr_grad, sr_hess, sr_loss, sr_minimiser

torch = pytest.importorskip("torch")
from torch.func import grad as tgrad, hessian as thess  # noqa: E402

FAST = settings(max_examples=25, deadline=None)


def _torch_meta(p):
    """Oracle written task by task (a Python loop), independently of the closed forms."""
    W = [torch.tensor(np.array(Wt)) for Wt in p.W]

    def L(x):
        A = x[: p.d * p.d].reshape(p.d, p.d)
        total = 0.0
        for t in range(p.T):
            Ut = x[p.d * p.d + t * p.d * p.k: p.d * p.d + (t + 1) * p.d * p.k].reshape(p.d, p.k)
            total = total + torch.sum((A + Ut @ Ut.T - W[t]) ** 2)
        return total

    return L


def _torch_reduced(p):
    """Oracle: G(U) = min_A L(A, U), with the minimiser A(U) computed by least squares inside autograd."""
    L = _torch_meta(p)

    def G(u):
        U = u.reshape(p.T, p.d, p.k)
        A = torch.stack([torch.tensor(np.array(W)) - U[t] @ U[t].T for t, W in enumerate(p.W)]).mean(0)
        return L(torch.cat([A.reshape(-1), u]))

    return G


def _close(a, b, rtol=1e-10):
    a, b = np.asarray(a), np.asarray(b)
    assert a.shape == b.shape
    scale = max(1.0, float(np.max(np.abs(b))))
    assert np.max(np.abs(a - b)) <= rtol * scale, np.max(np.abs(a - b)) / scale


@FAST
@given(problem_and_point())
def test_meta_gradient_and_hessian_match_autograd(case):
    p, A, U, _ = case
    x = MetaPoint(A, U).flatten()
    L = _torch_meta(p)
    xt = torch.tensor(x)
    _close(meta_loss(A, U, p), float(L(xt)))
    _close(meta_grad_flat(x, p), tgrad(L)(xt).numpy())
    _close(meta_hess(A, U, p), thess(L)(xt).numpy())


@FAST
@given(problem_and_point())
def test_reduced_gradient_and_hessian_match_autograd(case):
    p, _, U, _ = case
    G = _torch_reduced(p)
    ut = torch.tensor(U.ravel())
    _close(reduced_loss(U, p), float(G(ut)))
    _close(reduced_grad(U, p), tgrad(G)(ut).numpy())
    _close(reduced_hess(U, p), thess(G)(ut).numpy())


@FAST
@given(problem_and_point())
def test_sr_derivatives_match_autograd(case):
    p, A, _, _ = case
    W = torch.tensor(np.array(p.W))

    def L(a):
        return torch.sum((a.reshape(p.d, p.d) - W) ** 2)

    at = torch.tensor(A.ravel())
    _close(sr_loss(A, p), float(L(at)))
    _close(sr_grad(A, p).ravel(), tgrad(L)(at).numpy())
    _close(sr_hess(p), thess(L)(at).numpy())
    _close(sr_grad(sr_minimiser(p), p), np.zeros((p.d, p.d)))


@FAST
@given(problem_and_point())
def test_hessians_symmetric_and_consistent_with_hvp(case):
    p, A, U, rng = case
    H = meta_hess(A, U, p)
    _close(H, H.T, rtol=1e-14)
    v = rng.standard_normal(p.n_full)
    dv = MetaPoint.unflatten(v, p.d, p.k, p.T)
    _close(MetaPoint(*meta_hvp(A, U, dv.A, dv.U, p)).flatten(), H @ v)
    Hr = reduced_hess(U, p)
    _close(Hr, Hr.T, rtol=1e-14)
    w = rng.standard_normal(p.n_reduced)
    _close(reduced_hvp(U, w, p), Hr @ w)
    # adjoint identity <d1, H d2> = <H d1, d2>
    w2 = rng.standard_normal(p.n_reduced)
    assert np.isclose(w @ reduced_hvp(U, w2, p), reduced_hvp(U, w, p) @ w2, rtol=1e-10, atol=1e-10)


@FAST
@given(problem_and_point())
def test_central_differences(case):
    p, A, U, rng = case
    x = MetaPoint(A, U).flatten()
    v = rng.standard_normal(x.size)
    v /= np.linalg.norm(v)
    f = lambda y: meta_loss(y[: p.d ** 2].reshape(p.d, p.d), y[p.d ** 2:], p)  # noqa: E731
    g = lambda y: meta_grad_flat(y, p)  # noqa: E731
    scale = max(1.0, abs(f(x)))
    assert abs(central_difference(f, x, v) - g(x) @ v) <= 1e-6 * scale
    Hv = meta_hess(A, U, p) @ v
    assert np.max(np.abs(central_difference(g, x, v) - Hv)) <= 1e-6 * max(1.0, np.max(np.abs(Hv)))
    u, w = U.ravel(), rng.standard_normal(p.n_reduced)
    w /= np.linalg.norm(w)
    fr = lambda y: reduced_loss(y, p)  # noqa: E731
    gr = lambda y: reduced_grad(y, p)  # noqa: E731
    assert abs(central_difference(fr, u, w) - gr(u) @ w) <= 1e-6 * max(1.0, fr(u))
    Hw = reduced_hvp(U, w, p)
    assert np.max(np.abs(central_difference(gr, u, w) - Hw)) <= 1e-6 * max(1.0, np.max(np.abs(Hw)))


def _line_case(seed):
    from theory.problem import Problem

    rng = np.random.default_rng(seed)
    T = int(rng.integers(2, 5))
    d = int(rng.integers(2, 7))
    k = int(rng.integers(1, min(3, d) + 1))
    p = Problem.random(d, k, T, seed=seed)
    return p, rng.standard_normal((d, d)), rng.standard_normal((T, d, k)), rng


def _meta_fgh(p):
    f = lambda y: meta_loss(y[: p.d ** 2].reshape(p.d, p.d), y[p.d ** 2:], p)  # noqa: E731
    g = lambda y: meta_grad_flat(y, p)  # noqa: E731

    def hvp(y, vec):
        pt, dv = MetaPoint.unflatten(y, p.d, p.k, p.T), MetaPoint.unflatten(vec, p.d, p.k, p.T)
        return MetaPoint(*meta_hvp(pt.A, pt.U, dv.A, dv.U, p)).flatten()

    return f, g, hvp


@pytest.mark.parametrize("seed", range(20))
def test_taylor_slopes_two_and_three(seed):
    """Slope >= 2 for the gradient and >= 3 for the Hessian (a quartic can show 3 or 4 where the cubic term is
    small); a wrong derivative shows 1 or 2 instead (see the next test)."""
    p, A, U, rng = _line_case(seed)
    f, g, hvp = _meta_fgh(p)
    x, v = MetaPoint(A, U).flatten(), rng.standard_normal(p.n_full)
    assert taylor_slope(f, g, x, v) >= 1.8
    assert taylor_slope(f, g, x, v, hvp=hvp) >= 2.8
    w = rng.standard_normal(p.n_reduced)
    fr, gr = (lambda y: reduced_loss(y, p)), (lambda y: reduced_grad(y, p))
    assert taylor_slope(fr, gr, U.ravel(), w) >= 1.8
    assert taylor_slope(fr, gr, U.ravel(), w, hvp=lambda y, vec: reduced_hvp(y, vec, p)) >= 2.8


@FAST
@given(problem_and_point(min_T=2))
def test_line_restriction_is_the_exact_quartic(case):
    """Along a line, L and G are quartics in h: f(x + h v) = f + h <g, v> + h^2/2 <v, H v> + c3 h^3 + c4 h^4.
    Fitting the quartic through 7 points recovers the first two coefficients exactly (up to round-off)."""
    p, A, U, rng = case
    hs = np.linspace(-1.0, 1.0, 7)
    for f, g, hvp, x in (_meta_fgh(p) + (MetaPoint(A, U).flatten(),),
                         (lambda y: reduced_loss(y, p), lambda y: reduced_grad(y, p),
                          lambda y, vec: reduced_hvp(y, vec, p), U.ravel())):
        v = rng.standard_normal(x.size)
        coeffs = np.polynomial.polynomial.polyfit(hs, [f(x + h * v) for h in hs], 4)
        scale = max(1.0, float(np.max(np.abs(coeffs))))
        assert abs(coeffs[1] - g(x) @ v) <= 1e-9 * scale
        assert abs(coeffs[2] - 0.5 * v @ hvp(x, v)) <= 1e-9 * scale


def test_taylor_slope_detects_a_wrong_gradient():
    """The slope test can fail: a gradient off by 10% gives slope 1, not 2."""
    from theory.problem import Problem

    p = Problem.random(4, 1, 3, seed=3)
    rng = np.random.default_rng(0)
    u, w = rng.standard_normal(p.n_reduced), rng.standard_normal(p.n_reduced)
    slope = taylor_slope(lambda y: reduced_loss(y, p), lambda y: 1.1 * reduced_grad(y, p), u, w)
    assert slope < 1.5
    wrong_hvp = lambda y, vec: 1.1 * reduced_hvp(y, vec, p)  # noqa: E731
    assert taylor_slope(lambda y: reduced_loss(y, p), lambda y: reduced_grad(y, p), u, w, hvp=wrong_hvp) < 2.5


def test_meta_grad_blocks_have_the_design_formula():
    from theory.problem import Problem

    p = Problem.random(5, 2, 3, seed=1)
    rng = np.random.default_rng(1)
    A, U = rng.standard_normal((5, 5)), rng.standard_normal((3, 5, 2))
    gA, gU = meta_grad(A, U, p)
    R = [A + U[t] @ U[t].T - p.W[t] for t in range(3)]
    _close(gA, 2 * sum(R))
    for t in range(3):
        _close(gU[t], 2 * (R[t] + R[t].T) @ U[t])
