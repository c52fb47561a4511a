"""The rigorous bounds of the eps-net certificate at x0, computed in arb from the stored instance
(:mod:`landscape.certify_epsnet`, whose module docstring gives each formula): the metric M of the sphere, the
default radius delta, the rounding bound tau of a net point, the Hessian bound Hb and Lipschitz constant Lip on the
ball around the region, the lower bound mu of the curvature, a lower bound of G on the ball, and whether U* lies in
the region (k = 1) or the gauge slice is transversal over it (k >= 2 or T = 2).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from flint import arb, arb_mat

from theory.problem import Problem
from theory.reduced import reduced_hess

from . import _arb_reduced as ar
from ._batched import eigh
from .certify_common import Gauge, gauge, signed_ustar, transversal, zero_loss_upper
from .certify_epsnet_net import UNIT_ROUNDOFF, NetBounds, gamma

__all__ = ["DELTA_DIVISOR", "Setup", "net_setup"]

#: default delta = mu / (DELTA_DIVISOR (m-1)^1.5 a0 |M|^3): at the coarsest net (covering radius delta sqrt(m-1))
#: the cubic term 4 a0 |M|^3 (delta sqrt(m-1))^3, the Hessian variation 24 a0 |M|^3 delta (times rho^2) and the
#: tangential gradient stay well below the quadratic margin mu delta^2 / 2, so the curvature of the sphere cancels
#: the first-order term and coarse nets pass; a much smaller delta would let rounding (proportional to |h|) catch up.
DELTA_DIVISOR = 64.0


@dataclass(frozen=True)
class Setup:
    """The outcome of :func:`net_setup`: ``net`` (None when ``failure`` says why no net can be tried), ``loss``
    (enclosure of G(x0)), ``gauge``, ``dx`` (the region lies in ``B(x0, dx)``), ``ball_lo`` (``G >= ball_lo`` on that
    ball), ``ustar_inside`` (U*, signs matched, proven in the region), ``zero_upper`` (upper end of G(0))."""

    loss: tuple
    gauge: Gauge
    net: NetBounds | None = None
    failure: str | None = None
    dx: float = math.nan
    ball_lo: float = 0.0
    ustar_inside: bool = False
    zero_upper: float = math.nan


def _metric(lam: np.ndarray, V: np.ndarray, Q, metric: str) -> np.ndarray:
    """The float metric M (n, m) from the eigendecomposition ``V diag(lam) V^T`` (lam > 0) of the float Hessian on
    the slice: ``B0 V diag(lam)^(-1/2)`` (``"hessian"``) or ``B0`` (``"euclidean"``), ``B0 = Q`` or ``I``."""
    B0 = np.eye(V.shape[0]) if Q is None else Q  # the net lives in the m coordinates of B0 (m = n for k = 1)
    return B0 @ (V / np.sqrt(lam)[None, :]) if metric == "hessian" else B0


def _ustar_inside(problem: Problem, x0: np.ndarray, Ma: arb_mat, delta: float) -> bool:
    """k = 1: U* (column signs matched to x0) proven inside the region ``x0 + M B(0, delta)``."""
    diff = arb_mat(len(x0), 1, [arb(float(c)) - arb(float(x)) for c, x in zip(signed_ustar(problem, x0), x0)])
    try:
        zs = Ma.solve(diff)
    except ZeroDivisionError:
        return False
    return bool(sum((e * e for e in zs.entries()), arb(0)) < arb(delta) ** 2)


def net_setup(problem: Problem, x0: np.ndarray, delta: float | None, metric: str, margins: dict) -> Setup:
    """Every bound the net needs at x0 (flat, shape ``(T d k,)``), in arb at the caller's working precision;
    ``margins`` gets the numbers the verdict rests on. ``delta`` None: the default radius (:data:`DELTA_DIVISOR`)."""
    T, d, k = problem.T, problem.d, problem.k
    Ws = ar.task_matrices(problem)
    U0b = ar.U_blocks(ar.balls(x0), T, d, k)
    E0 = ar.residuals(U0b, Ws)
    G0 = ar.loss(E0)
    loss = (ar.lower(G0), ar.upper(G0))
    g = gauge(x0.reshape(T, d, k))  # Q None for k = 1 (no gauge), else (n, m)
    with np.errstate(over="ignore", invalid="ignore"):
        Hf = reduced_hess(x0, problem)
        Jf = Hf if g.Q is None else g.Q.T @ Hf @ g.Q
    if not np.all(np.isfinite(Jf)):
        return Setup(loss, g, failure=f"the float64 Hessian at x0 overflows (max |x0| entry "
                     f"{float(np.max(np.abs(x0))):.3g}): no metric for the net, nothing can be proven here in float64")
    lam, V = eigh(Jf)
    margins["hessian_min_eig_mid"] = float(lam[0])
    if not lam[0] > 1e-10 * max(1.0, float(np.max(np.abs(lam)))):
        return Setup(loss, g, failure=f"the float Hessian at x0{' on the gauge slice' if g.Q is not None else ''} "
                     f"is not positive definite (lambda_min = {lam[0]:.3g}): G does not rise on every small sphere, "
                     "the eps-net cannot certify a minimum")
    Mf = _metric(lam, V, g.Q, metric)
    m = Mf.shape[1]
    Ma = arb_mat(Mf.tolist())
    Mnorm = math.sqrt(ar.inf_norm_upper(Ma.transpose() * Ma)) * (1 + 1e-15) \
        if (metric == "hessian" or g.Q is not None) else 1.0
    MF = math.sqrt(ar.upper(sum((e * e for e in Ma.entries()), arb(0)))) * (1 + 1e-15)
    mu0 = ar.lambda_min_lower(Ma.transpose() * ar.hess(U0b, E0) * Ma)[0]
    if not mu0 > 0:
        return Setup(loss, g, failure="could not prove the Hessian at x0 positive definite in arb")
    a0_arb = max((ar.norm_upper(Ub.entries()) for Ub in U0b), key=ar.upper)
    a0 = ar.upper(a0_arb)
    if delta is None:
        delta = float(mu0 / (DELTA_DIVISOR * max(m - 1, 1) ** 1.5 * a0 * Mnorm ** 3)) if a0 > 0 else 1.0 / Mnorm
    dx = Mnorm * delta  # the region lies in B(x0, dx)
    # |h_f - M s_e|: rounding of the norm, division, scaling and the product with M (x0 + h_f is exact)
    tau = 2.0 * (gamma(m) * MF * delta + (m + 4) * UNIT_ROUNDOFF * delta * Mnorm) * 1.01
    R = arb(dx) + arb(tau)
    a_ball = a0_arb + R
    Hb = 8 * a_ball * a_ball + 4 * (arb(ar.upper(G0)).sqrt() + R * (2 * a0_arb + R))
    Lip = ar.norm_upper(ar.grad(U0b, E0)) + R * Hb  # the norm is finite also where gradient entries straddle zero
    mu = ar.lower(arb(mu0) - (24 * a0_arb * R + 12 * R * R) * arb(Mnorm) ** 2)
    # G > 0 on the ball B(x0, dx): |E(x)| >= sqrt(G(x0)) - dx (2 a0 + dx)
    lo_E = arb(max(ar.lower(G0), 0.0)).sqrt() - arb(dx) * (2 * a0_arb + arb(dx))
    ball_lo = ar.lower(lo_E * lo_E) if ar.lower(lo_E) > 0 else 0.0
    ustar_inside = False
    if g.Q is None:
        ustar_inside = _ustar_inside(problem, x0, Ma, delta)
    else:  # the slice must be transversal to the orbits over the whole region (box of half-width R)
        margins["transversal"] = transversal(arb_mat(g.Q.tolist()), g.cols,
                                             ar.U_blocks(ar.balls(x0, ar.upper(R)), T, d, k), k)
        if not margins["transversal"]:
            return Setup(loss, g, failure="could not prove the gauge slice transversal to the orbits over the "
                         "region ([Q, Z(X)] not proven nonsingular)")
    E0f = np.array([ar.mid_matrix(Et) for Et in E0])  # E(x0) in float64, with its entrywise error e0
    e0 = np.array([[[ar.upper(abs(Et[i, j] - arb(float(E0f[t, i, j])))) for j in range(d)] for i in range(d)]
                   for t, Et in enumerate(E0)])
    net = NetBounds(U0=x0.reshape(T, d, k), E0f=E0f, e0=e0, M=Mf, delta=delta, tau=tau, m=m, nx=len(x0),
                    Mnorm=Mnorm, mu=mu, a_cubic=ar.upper(a_ball), Hb=ar.upper(Hb), Lip=ar.upper(Lip))
    margins.update(lipschitz=net.Lip, hessian_bound=net.Hb, metric_norm=Mnorm, radius_x=dx, tau=tau,
                   hessian_min_eig_lower=mu0 / Mnorm ** 2 if metric == "euclidean" else None,
                   loss_lower_on_ball=ball_lo)
    bounds = (delta, dx, tau, Mnorm, mu, net.a_cubic, net.Hb, net.Lip)
    if not (all(math.isfinite(b) for b in bounds) and delta > 0 and np.all(np.isfinite(E0f))
            and np.all(np.isfinite(e0))):
        return Setup(loss, g, net=net, failure=f"the bounds of the net overflow float64 or vanish (delta {delta:.3g}, "
                     f"Lipschitz {net.Lip:.3g}, Hessian bound {net.Hb:.3g}, |M| {Mnorm:.3g}): nothing can be proven "
                     "here in float64")
    return Setup(loss, g, net=net, dx=dx, ball_lo=ball_lo, ustar_inside=ustar_inside,
                 zero_upper=zero_loss_upper(problem, Ws))
