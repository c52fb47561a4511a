"""Interval-arithmetic certificate of a critical point of the reduced loss G (issue 4, certificate 2).

Everything below is evaluated in python-flint ball arithmetic (``arb``, outward rounding) from the stored instance
(``A*``, ``U*`` as exact float64 numbers; docs/convention.md); the caller's numbers are never trusted, only its point
``x0 = vec(U0)`` (shape ``(T d k,)``, read as exact float64 numbers) is used as the centre.

**Gauge.** For k = 1 and T != 2 the O(1)^T orbit is finite (sign flips), critical points are generically isolated
and the variable is ``x`` itself (``Q = I``, ``m = n = T d k``). For k >= 2 every critical point lies on an O(k)^T
orbit of dimension ``p = T k (k-1)/2``, and at T = 2 (any k) on an orbit of the larger group O(k, k) (G depends only
on ``U_1 U_1^T - U_2 U_2^T``; the Appendix D.1 family of global minima is one such orbit), of dimension
``k (2k - 1)``; so the gradient has no isolated zero. We restrict G to the affine slice ``x = x0 + Q z``, with ``Q``
(n, m = n - p) a float64 orthonormal basis of the complement of :func:`theory.symmetry.symmetry_tangent` at U0
(taken as exact numbers: the slice is whatever these numbers span), and work with ``f(z) = Q^T grad G(x0 + Q z)``
and ``J(z) = Q^T H(x0 + Q z) Q``.
The slice is transversal to the orbit at every point of the box (proven by showing the n x n interval matrix
``[Q, Z(X)]`` nonsingular, ``Z(X)`` the orbit tangent directions ``U_t Omega_t`` over the box), so by the slice
theorem every point near x* is ``g . s`` with ``s`` on the slice: a strict local minimum of G on the slice is a local
minimum of G, strict modulo the orbit, and a zero of f is a zero of grad G (grad G is orthogonal to the orbit
tangent, and ``[Q, Z]`` is onto). Where some ``U_t`` is rank-deficient the orbit is smaller: Q is the complement of
the numerically independent tangent directions and ``Z(X)`` keeps those (pivoted QR); the same argument applies.

**Tests on the box** ``Z = [-r, r]^m`` (``X = x0 + Q Z``, enclosed in arb), with ``C`` the float inverse of
``J(0)`` (any matrix works; a good one makes the test pass):

1. Krawczyk: ``K(Z) = -C f(0) + (I - C J(Z)) Z``; ``K(Z)`` strictly inside ``Z`` proves that f has exactly one zero
   ``z*`` in Z (Krawczyk 1969; Moore's and Rump's form). The radius r is tried from a few multiples of the Newton
   step ``|C f(0)|_inf`` upwards (factor ``growth``) up to ``max_radius``: a point that is not critical within
   ``max_radius`` gives "inconclusive".
2. Hessian on the box: with ``J_mid = V diag(lam) V^T`` (float), ``B = V^T J(Z) V`` is congruent to J(Z) (Sylvester's
   law of inertia for the nonsingular V), so Gershgorin on B, ``min_i B_ii - sum_{j != i} |B_ij| > 0`` (all in
   arb), proves every symmetric matrix in J(Z) positive definite, and ``lambda_min(J) >= that / ||V^T V||_inf``
   (Ostrowski). Then z* is a strict local minimum on the slice: ``certified-minimum``. Otherwise, if the eigenvector
   v of ``lam_min < 0`` has ``v^T J(Z) v < 0`` (upper bound), the critical point fails the second-order necessary
   condition: ``certified-not-minimum`` (a saddle or maximum).
3. Loss on the box: ``G(X)`` in arb. Lower bound > 0: the minimum is ``"spurious"``. For k = 1, if ``U*`` up to the
   signs of its columns lies in X it is the unique critical point there, so ``G(x*) = 0``: ``"global"`` (proven).
   Otherwise, if the enclosure contains 0 and its upper end is at round-off level (``<= 1e-12 (1 + G(0))``), the
   minimum is marked ``"global"`` in the sense ``0 <= G(x*) <= upper`` (stated in the reason); else ``"unknown"``.

NaN anywhere, a radius that never passes, or a bound that straddles zero gives ``"inconclusive"``.

>>> from theory.problem import Problem
>>> p = Problem.random(d=4, k=1, T=3, seed=0)
>>> c = certify_interval(p, p.U_star)
>>> c.verdict, c.minimum_kind
('certified-minimum', 'global')
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np
from flint import arb, arb_mat

from theory.problem import Problem
from theory.reduced import reduced_hess

from . import _arb_reduced as ar
from .certificate import Certificate, CertificateError
from .certify_common import (Gauge, gauge, integer, minimum_kind, positive, signed_ustar, transversal,
                             validate_point, zero_loss_upper)

__all__ = ["certify_interval"]

#: condition number of the float Hessian above which it counts as (nearly) singular in the reasons given
_SINGULAR_COND = 1e8


@dataclass(frozen=True)
class _Options:
    """The checked options of :func:`certify_interval` (``max_radius`` resolved)."""

    radius: float | None
    max_radius: float
    growth: float
    max_tries: int
    prec: int


@dataclass(frozen=True)
class _Start:
    """What is known at x0 before any box: the instance in arb, the gauge and the gradient on the slice."""

    problem: Problem
    x0: np.ndarray
    gauge: Gauge
    Qa: arb_mat | None
    Ws: list
    loss: tuple
    f0: arb_mat
    f0_mid: np.ndarray


@dataclass(frozen=True)
class _Box:
    """The box that passed Krawczyk's test: half-width r, its U blocks, residuals and the Hessian J on the slice."""

    r: float
    Us: list
    E: list
    J: arb_mat


def _options(x0, radius, max_radius, growth, max_tries, prec) -> _Options:
    radius = positive("radius", radius)
    max_radius = positive("max_radius", max_radius)
    growth = positive("growth", growth, allow_none=False)
    if growth <= 1:
        raise CertificateError(f"growth must be > 1, got {growth}")
    max_tries = integer("max_tries", max_tries, 1)
    prec = integer("prec (bits)", prec, 53)
    if max_radius is None:
        max_radius = 1e-3 * (1.0 + float(np.max(np.abs(x0))))
    return _Options(radius, max_radius, growth, max_tries, prec)


def _start(problem: Problem, x0: np.ndarray) -> _Start:
    """G(x0) and ``f(0) = Q^T grad G(x0)`` in arb (at the caller's working precision)."""
    g = gauge(x0.reshape(problem.T, problem.d, problem.k))
    Ws = ar.task_matrices(problem)
    U0b = ar.U_blocks(ar.balls(x0), problem.T, problem.d, problem.k)
    E0 = ar.residuals(U0b, Ws)
    G0 = ar.loss(E0)
    g0 = arb_mat(len(x0), 1, ar.grad(U0b, E0))
    Qa = None if g.Q is None else arb_mat(g.Q.tolist())
    f0 = g0 if Qa is None else Qa.transpose() * g0
    f0_mid = np.array([ar.mid(f0[i, 0]) for i in range(f0.nrows())])
    return _Start(problem, x0, g, Qa, Ws, (ar.lower(G0), ar.upper(G0)), f0, f0_mid)


def _float_newton(problem: Problem, x0: np.ndarray, Q, f0_mid: np.ndarray):
    """``(C, J, step, why)``: the float64 Hessian ``J = Q^T H(x0) Q`` on the slice (``H(x0)`` when Q is None), its
    inverse C (the Krawczyk preconditioner; any matrix is valid, a good one makes the test pass), the Newton step
    ``|C f(0)|_inf``, and why they cannot be used (None when they can): an overflowing or singular Hessian, or an
    overflowing gradient or step. Nothing non-finite goes on to the linear algebra."""
    with np.errstate(over="ignore", invalid="ignore"):
        Hf = reduced_hess(x0, problem)
        Jf = Hf if Q is None else Q.T @ Hf @ Q
    if not np.all(np.isfinite(Jf)):
        return None, None, None, (f"the float64 Hessian at x0 overflows (max |x0| entry {float(np.max(np.abs(x0))):.3g}"
                                  "): no Newton preconditioner, nothing can be proven here in float64")
    if not np.all(np.isfinite(f0_mid)):
        return None, None, None, "the gradient at x0 overflows float64: nothing can be proven here"
    try:
        Cf = np.linalg.inv(Jf)
    except np.linalg.LinAlgError:
        Cf = None
    if Cf is None or not np.all(np.isfinite(Cf)):
        return None, None, None, ("the float Hessian at x0 (on the slice) is singular (a degenerate point): no Newton "
                                  "preconditioner, the Krawczyk test cannot pass")
    with np.errstate(over="ignore", invalid="ignore"):
        step = float(np.max(np.abs(Cf @ f0_mid))) if f0_mid.size else 0.0
    if not math.isfinite(step):
        return None, None, None, ("the Newton step |C f(0)| overflows float64: the Hessian at x0 is (nearly) singular "
                                  "for the size of its gradient")
    return Cf, Jf, step, None


def _cause(Jf: np.ndarray, f0_mid: np.ndarray) -> str:
    """Why no box around x0 passed, from the float data at x0: a (nearly) singular Hessian (condition number above
    :data:`_SINGULAR_COND`: a degenerate critical point, whose zero of the gradient Krawczyk's test cannot isolate) or
    a gradient too large for x0 to be a critical point (both numbers are stated)."""
    lam = np.abs(np.linalg.eigvalsh(0.5 * (Jf + Jf.T))) if Jf.size else np.ones(1)
    cond = float(lam.max() / lam.min()) if lam.min() > 0 else math.inf
    top = float(np.max(np.abs(f0_mid))) if f0_mid.size else 0.0
    g = top * float(np.linalg.norm(f0_mid / top)) if top > 0 else 0.0  # scaled: no overflow for huge gradients
    if cond > _SINGULAR_COND:
        return (f"the Hessian at x0 is (nearly) singular (condition number {cond:.3g}, smallest |eigenvalue| "
                f"{lam.min():.3g}; gradient norm {g:.3g}): x0 may be a degenerate critical point, which the Krawczyk "
                "test cannot isolate (a singular Jacobian of the gradient)")
    return (f"x0 is not close enough to a critical point for the boxes tried (gradient norm {g:.3g}; Hessian "
            f"condition number {cond:.3g}, not above the {_SINGULAR_COND:g} taken as singular)")


def _radii(step: float, x0: np.ndarray, opts: _Options) -> list:
    """The box half-widths to try: ``opts.radius``, or from ``4 |C f(0)|_inf`` up by ``growth`` to ``max_radius``."""
    if opts.radius is not None:
        return [opts.radius]
    r = max(4.0 * step, 1e-15 * (1.0 + float(np.max(np.abs(x0)))))
    radii = []
    while r <= opts.max_radius and len(radii) < opts.max_tries:
        radii.append(r)
        r *= opts.growth
    return radii


def _krawczyk(s: _Start, Cf: np.ndarray, radii: list) -> tuple[_Box | None, list]:
    """Krawczyk's test on the boxes ``|z|_inf <= r`` for r in ``radii`` until one passes: ``(box or None, ratios)``,
    a ratio ``max_i |K_i|_upper / r`` per radius tried (below 1 is a pass)."""
    T, d, k = s.problem.T, s.problem.d, s.problem.k
    m = s.f0.nrows()
    C = arb_mat(Cf.tolist())
    Cf0 = C * s.f0
    I_m = arb_mat(np.eye(m).tolist())
    ratios = []
    for r in radii:
        Zbox = arb_mat(m, 1, [arb(0, r)] * m)
        step = Zbox.entries() if s.Qa is None else (s.Qa * Zbox).entries()
        Us = ar.U_blocks([arb(float(xi)) + z for xi, z in zip(s.x0, step)], T, d, k)
        E = ar.residuals(Us, s.Ws)
        H = ar.hess(Us, E)
        J = H if s.Qa is None else s.Qa.transpose() * H * s.Qa
        K = (I_m - C * J) * Zbox - Cf0
        worst = max((ar.upper(K[i, 0].abs_upper()) for i in range(m)), default=0.0)
        ratios.append(worst / r if math.isfinite(worst) else float("nan"))
        if all(K[i, 0].abs_upper() < arb(r) for i in range(m)):
            return _Box(r, Us, E, J), ratios
    return None, ratios


def _ustar_in_box(s: _Start, r: float) -> bool:
    """k = 1 without a slice: U* (column signs matched to x0) proven inside the box ``|x - x0|_inf < r``, where the
    unique critical point then is U* itself."""
    if s.Qa is not None or s.problem.k != 1:
        return False
    cand = signed_ustar(s.problem, s.x0)
    if not np.all(np.abs(cand - s.x0) < r):  # float subtraction: a quick rejection, checked rigorously below
        return False
    return all((arb(float(c)) - arb(float(x))).abs_upper() < arb(r) for c, x in zip(cand, s.x0))


def _second_order(s: _Start, box: _Box, where: str, ratio: float, margins: dict) -> tuple:
    """The verdict from the Hessian on the passed box: ``(verdict, reason, minimum_kind)``."""
    GX = ar.loss(box.E)
    lo, hi = ar.lower(GX), ar.upper(GX)
    margins.update(loss_lower_on_box=lo, loss_upper_on_box=hi)
    lam_lo, lam, V = ar.lambda_min_lower(box.J)
    margins["hessian_min_eig_mid"] = float(lam[0])
    if V is None:
        return "inconclusive", "the interval Hessian over the box is not finite (overflow)", None
    if lam_lo > 0:
        margins["hessian_min_eig_lower"] = lam_lo
        kind, why = minimum_kind(lower=lo, upper=hi, ustar_inside=_ustar_in_box(s, box.r),
                                 zero_upper=zero_loss_upper(s.problem, s.Ws), region="the box")
        modulo = " modulo the orbit" if s.Qa is not None else ""
        return ("certified-minimum", f"{where} is a strict local minimum{modulo}: "
                f"Krawczyk ratio {ratio:.3g} < 1, Hessian on the box >= {lam_lo:.3g} > 0; {why}", kind)
    margins["hessian_min_eig_lower"] = None
    if lam[0] > 0:
        return ("inconclusive", f"{where} exists, but its interval Hessian is not proven positive definite "
                f"(midpoint lambda_min {lam[0]:.3g})", None)
    Va = arb_mat(V.tolist())
    v = arb_mat(V.shape[0], 1, [Va[i, 0] for i in range(V.shape[0])])  # float eigenvector of lam[0], exact
    q_hi = ar.upper((v.transpose() * box.J * v)[0, 0])
    margins["negative_curvature_upper"] = q_hi
    if q_hi < 0:
        return ("certified-not-minimum", f"{where} is not a local minimum: Krawczyk ratio {ratio:.3g} < 1 and a "
                f"direction v with v^T H(X) v <= {q_hi:.3g} < 0 over the whole box (midpoint lambda_min "
                f"{lam[0]:.3g})", None)
    return ("inconclusive", f"{where} exists, but its Hessian is neither proven positive definite nor proven to have "
            f"a negative direction (midpoint lambda_min {lam[0]:.3g}, v^T H v <= {q_hi:.3g})", None)


def certify_interval(problem: Problem, U0, *, radius: float | None = None, max_radius: float | None = None,
                     growth: float = 30.0, max_tries: int = 8, prec: int = 128) -> Certificate:
    """Certify the critical point of G near ``U0`` (shape ``(T, d, k)`` or ``(T d k,)``) by interval arithmetic.

    Parameters
    ----------
    problem : the instance; G is recomputed from its stored ``A*`` and ``U*``
    U0 : the centre of the box (float64, finite)
    radius : the box half-width r (infinity norm, in the slice coordinates z; ``|x - x0|_2 <= sqrt(m) r`` since Q
        has orthonormal columns up to rounding); None: tried automatically from ``4 |C f(0)|_inf`` upwards
    max_radius : largest r tried automatically (default ``1e-3 (1 + |x0|_inf)``); a point whose Newton step is
        larger is not treated as critical
    growth, max_tries : the automatic radius grows by ``growth`` at most ``max_tries`` times
    prec : arb working precision in bits (>= 53)

    Returns
    -------
    Certificate
        Method ``"krawczyk"`` (see the module docstring for what each verdict proves).

    Raises
    ------
    CertificateError
        A ``problem`` that is not a :class:`theory.problem.Problem`, a ``U0`` of the wrong shape or not finite, or an
        option outside its rule (named in the message).
    """
    t_start = time.perf_counter()
    x0 = validate_point(problem, U0)
    opts = _options(x0, radius, max_radius, growth, max_tries, prec)
    margins: dict = {}
    with ar.working_precision(opts.prec):
        s = _start(problem, x0)

        def done(verdict, reason, radius, kind=None):
            return Certificate(verdict=verdict, reason=reason, seconds=time.perf_counter() - t_start,
                               method="krawczyk", gauge=s.gauge.text, n=problem.n_reduced, margins=margins,
                               loss=s.loss, radius=radius, minimum_kind=kind)

        Cf, Jf, step, why = _float_newton(problem, x0, s.gauge.Q, s.f0_mid)
        if why is not None:
            return done("inconclusive", why, opts.radius)
        margins["newton_step"] = step
        radii = _radii(step, x0, opts)
        if not radii:
            return done("inconclusive", f"the Newton step |C f(0)|_inf = {step:.3g} exceeds max_radius = "
                        f"{opts.max_radius:.3g}: {_cause(Jf, s.f0_mid)}", None)
        box, ratios = _krawczyk(s, Cf, radii)
        margins.update(krawczyk_ratio=ratios[-1], radii_tried=radii[:len(ratios)])
        if box is None:
            return done("inconclusive", f"Krawczyk test failed: K(X) not strictly inside X at every radius tried "
                        f"({len(ratios)} radii from {radii[0]:.3g} to {radii[len(ratios) - 1]:.3g}, last ratio "
                        f"{ratios[-1]:.3g}); {_cause(Jf, s.f0_mid)}", radii[len(ratios) - 1])
        if s.Qa is not None:  # transversality of the slice over the whole box
            margins["transversal"] = transversal(s.Qa, s.gauge.cols, box.Us, problem.k)
            if not margins["transversal"]:
                return done("inconclusive", "could not prove the slice transversal to the orbit over the box "
                            "([Q, Z(X)] not proven nonsingular)", box.r)
        where = (f"the unique critical point x* of G {'on the slice ' if s.Qa is not None else ''}in the box "
                 f"|z|_inf <= r = {box.r:.3g} around x0")
        verdict, reason, kind = _second_order(s, box, where, ratios[-1], margins)
        return done(verdict, reason, box.r, kind)
