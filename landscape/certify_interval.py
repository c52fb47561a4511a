"""Interval-arithmetic certificate of a critical point of the reduced loss G (issue 4, certificate 2).

Everything below is evaluated in python-flint ball arithmetic (``arb``, outward rounding) from the stored instance
(``A*``, ``U*`` as exact float64 numbers; DESIGN.md section 1); the caller's numbers are never trusted, only its point
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

import numpy as np
import scipy.linalg
from flint import arb, arb_mat

from theory.problem import Problem
from theory.reduced import reduced_hess
from theory.symmetry import symmetry_tangent

from . import _arb_reduced as ar
from .certificate import Certificate, CertificateError

__all__ = ["certify_interval"]

_GLOBAL_RTOL = 1e-12


def _validate_point(problem, U0) -> np.ndarray:
    if not isinstance(problem, Problem):
        raise CertificateError(f"problem must be a theory.problem.Problem, got {type(problem).__name__}")
    x0 = np.array(U0, dtype=np.float64, copy=True)
    shape = (problem.T, problem.d, problem.k)
    if x0.shape not in (shape, (problem.n_reduced,)):
        raise CertificateError(f"U0 must have shape (T, d, k) = {shape} or ({problem.n_reduced},), got {x0.shape}")
    if not np.all(np.isfinite(x0)):
        raise CertificateError(f"U0 must have finite entries, found {int(np.count_nonzero(~np.isfinite(x0)))} "
                               "non-finite (NaN or inf)")
    return x0.ravel()


def _positive(name, value, *, allow_none=True):
    if value is None and allow_none:
        return None
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise CertificateError(f"{name} must be a positive finite number, got {value!r}") from None
    if not math.isfinite(v) or v <= 0:
        raise CertificateError(f"{name} must be a positive finite number, got {value!r}")
    return v


def _col(values) -> arb_mat:
    return arb_mat(len(values), 1, list(values))


def _group(T: int, k: int) -> str:
    """The symmetry group of G whose orbits are quotiented out: ``"O(k,k)"`` at T = 2 (G depends only on
    ``U_1 U_1^T - U_2 U_2^T``; :func:`theory.symmetry.boost_tangent`), else ``"O(k)^T"``."""
    return "O(k,k)" if T == 2 else "O(k)^T"


def _gauge(U0: np.ndarray):
    """``(Q, cols, text)``: the slice basis (None when the orbit is finite: k = 1 and T != 2), the indices of a
    maximal independent set of the symmetry tangent directions at U0 (``theory.symmetry.symmetry_tangent`` columns,
    chosen by pivoted QR; fewer than the group's dimension where some ``U_t`` is rank-deficient), and a description.
    """
    T, d, k = U0.shape
    group = _group(T, k)
    Z = symmetry_tangent(U0, group=group)
    if Z.shape[1] == 0:
        return None, [], "none (k = 1, T != 2: the O(1)^T orbit is finite)"
    R, piv = scipy.linalg.qr(Z, mode="r", pivoting=True)
    diag = np.abs(np.diag(R))
    # numerical rank with a tolerance on the scale of U0 (not only relative to the largest tangent vector, which
    # would count a denormal block as independent)
    tol = 1e-10 * max(1.0, float(np.max(np.abs(U0))))
    p = int(np.sum(diag > tol))
    cols = sorted(int(c) for c in piv[:p])
    # the orthogonal complement of the selected tangent directions (= theory.symmetry.quotient_basis(U0, group=...)
    # when U0 is generic)
    Q = scipy.linalg.null_space(Z[:, cols].T) if p else np.eye(Z.shape[0])
    full = Z.shape[1]
    note = "" if p == full else f" (rank-deficient U_t: the orbit has dimension {p} < {full})"
    return Q, cols, (f"slice x = x0 + Q z, Q ({Q.shape[0]} x {Q.shape[1]}) the orthogonal complement of the "
                     f"{p}-dimensional {group} orbit tangent (theory.symmetry.symmetry_tangent){note}")


def _tangent_arb(Us: list, k: int) -> list:
    """Symmetry tangent directions over the box, as columns (lists of balls), in the order of
    :func:`theory.symmetry.symmetry_tangent`: ``U_t (e_a e_b^T - e_b e_a^T)`` (t, a < b), then at T = 2 the
    boosts ``(U_2 B^T, U_1 B)``, ``B = e_a e_b^T`` (a, b)."""
    T = len(Us)
    d = Us[0].nrows()
    n = T * d * k
    dk = d * k
    cols = []
    for t in range(T):
        for a in range(k):
            for b in range(a + 1, k):
                col = [arb(0)] * n
                base = t * dk
                for i in range(d):
                    col[base + i * k + b] = Us[t][i, a]
                    col[base + i * k + a] = -Us[t][i, b]
                cols.append(col)
    if _group(T, k) == "O(k,k)":
        for a in range(k):
            for b in range(k):
                col = [arb(0)] * n
                for i in range(d):
                    col[i * k + a] = Us[1][i, b]  # column a of dU_1 is column b of U_2
                    col[dk + i * k + b] = Us[0][i, a]  # column b of dU_2 is column a of U_1
                cols.append(col)
    return cols


def _transversal(Qa: arb_mat, tangent_cols: list, Us: list, k: int) -> bool:
    """True if the n x n ball matrix ``[Q, Z(X)]`` (Q: n x m, the selected orbit tangent directions over the box
    ``Us``) is proven nonsingular for every point of the box (arb's solve succeeds only then)."""
    n, m = Qa.nrows(), Qa.ncols()
    M = arb_mat(n, n)
    tangent = _tangent_arb(Us, k)
    cols = [[Qa[i, j] for i in range(n)] for j in range(m)] + [tangent[c] for c in tangent_cols]
    if len(cols) != n:
        return False
    for j, col in enumerate(cols):
        for i in range(n):
            M[i, j] = col[i]
    try:
        M.solve(arb_mat(n, 1, [1] * n))
    except ZeroDivisionError:
        return False
    return True


#: condition number of the float Hessian above which it counts as (nearly) singular in the reasons given
_SINGULAR_COND = 1e8


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
    return (f"x0 is not close enough to a critical point (gradient norm {g:.3g}, with a well-conditioned Hessian: "
            f"condition number {cond:.3g})")


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
    Certificate with method ``"krawczyk"`` (see the module docstring for what each verdict proves).
    """
    t_start = time.perf_counter()
    x0 = _validate_point(problem, U0)
    radius = _positive("radius", radius)
    max_radius = _positive("max_radius", max_radius)
    growth = _positive("growth", growth, allow_none=False)
    if growth <= 1:
        raise CertificateError(f"growth must be > 1, got {growth}")
    if isinstance(max_tries, bool) or not isinstance(max_tries, (int, np.integer)) or max_tries < 1:
        raise CertificateError(f"max_tries must be a positive integer, got {max_tries!r}")
    if isinstance(prec, bool) or not isinstance(prec, (int, np.integer)) or prec < 53:
        raise CertificateError(f"prec must be an integer number of bits >= 53, got {prec!r}")
    T, d, k = problem.T, problem.d, problem.k
    n = problem.n_reduced
    if max_radius is None:
        max_radius = 1e-3 * (1.0 + float(np.max(np.abs(x0))))
    U0a = x0.reshape(T, d, k)
    Q, tangent_cols, gauge = _gauge(U0a)
    margins: dict = {}
    common = dict(method="krawczyk", gauge=gauge, n=n, margins=margins)

    def done(verdict, reason, **kw):
        return Certificate(verdict=verdict, reason=reason, seconds=time.perf_counter() - t_start, **common, **kw)

    with ar.working_precision(prec):
        Ws = ar.task_matrices(problem)
        E0 = ar.residuals(ar.U_blocks(ar.balls(x0), T, d, k), Ws)
        G0 = ar.loss(E0)
        loss = (ar.lower(G0), ar.upper(G0))
        g0 = ar.grad(ar.U_blocks(ar.balls(x0), T, d, k), E0)
        Qa = None if Q is None else arb_mat(Q.tolist())
        f0 = _col(g0) if Qa is None else Qa.transpose() * _col(g0)
        m = f0.nrows()
        f0_mid = np.array([ar.mid(f0[i, 0]) for i in range(m)])
        Cf, Jf, step, why = _float_newton(problem, x0, Q, f0_mid)
        if why is not None:
            return done("inconclusive", why, loss=loss, radius=radius)
        margins["newton_step"] = step
        if radius is not None:
            radii = [radius]
        else:
            r = max(4.0 * step, 1e-15 * (1.0 + float(np.max(np.abs(x0)))))
            radii = []
            while r <= max_radius and len(radii) < max_tries:
                radii.append(r)
                r *= growth
            if not radii:
                return done("inconclusive", f"the Newton step |C f(0)|_inf = {step:.3g} exceeds max_radius = "
                            f"{max_radius:.3g}: {_cause(Jf, f0_mid)}", loss=loss, radius=None)
        C = arb_mat(Cf.tolist())
        Cf0 = C * f0
        I_m = arb_mat(np.eye(m).tolist())
        passed = None
        ratios = []
        for r in radii:
            Zbox = _col([arb(0, r)] * m)
            Xb = [arb(float(x0[i])) for i in range(n)]
            if Qa is None:
                Xb = [xi + z for xi, z in zip(Xb, Zbox.entries())]
            else:
                QZ = (Qa * Zbox).entries()
                Xb = [xi + z for xi, z in zip(Xb, QZ)]
            Us = ar.U_blocks(Xb, T, d, k)
            E = ar.residuals(Us, Ws)
            H = ar.hess(Us, E)
            J = H if Qa is None else Qa.transpose() * H * Qa
            K = (I_m - C * J) * Zbox - Cf0
            inside = all(K[i, 0].abs_upper() < arb(r) for i in range(m))
            worst = max((ar.upper(K[i, 0].abs_upper()) for i in range(m)), default=0.0)
            ratios.append(worst / r if math.isfinite(worst) else float("nan"))
            if inside:
                passed = (r, Us, E, J)
                break
        margins["krawczyk_ratio"] = ratios[-1]
        margins["radii_tried"] = radii[:len(ratios)]
        if passed is None:
            return done("inconclusive", f"Krawczyk test failed: K(X) not strictly inside X at every radius tried "
                        f"({len(ratios)} radii from {radii[0]:.3g} to {radii[len(ratios) - 1]:.3g}, last ratio "
                        f"{ratios[-1]:.3g}); {_cause(Jf, f0_mid)}", loss=loss, radius=radii[len(ratios) - 1])
        r, Us, E, J = passed
        if Qa is not None:  # transversality of the slice over the whole box
            margins["transversal"] = _transversal(Qa, tangent_cols, Us, k)
            if not margins["transversal"]:
                return done("inconclusive", "could not prove the slice transversal to the orbit over the box "
                            "([Q, Z(X)] not proven nonsingular)", loss=loss, radius=r)
        where = f"the unique critical point x* of G {'on the slice ' if Qa is not None else ''}in the box " \
                f"|z|_inf <= r = {r:.3g} around x0"
        # Hessian on the box, by congruence with the float eigenvectors of its midpoint (ar.lambda_min_lower)
        GX = ar.loss(E)
        gX_lo, gX_hi = ar.lower(GX), ar.upper(GX)
        margins["loss_lower_on_box"] = gX_lo
        margins["loss_upper_on_box"] = gX_hi
        lam_lo, lam, V = ar.lambda_min_lower(J)
        margins["hessian_min_eig_mid"] = float(lam[0])
        if V is None:
            return done("inconclusive", "the interval Hessian over the box is not finite (overflow)", loss=loss,
                        radius=r)
        if lam_lo > 0:
            margins["hessian_min_eig_lower"] = lam_lo
            kind, why = _minimum_kind(problem, x0, r, Qa, k, gX_lo, gX_hi, Ws, prec)
            return done("certified-minimum",
                        f"{where} is a strict local minimum{' modulo the orbit' if Qa is not None else ''}: "
                        f"Krawczyk ratio {ratios[-1]:.3g} < 1, Hessian on the box >= {lam_lo:.3g} > 0; {why}",
                        loss=loss, radius=r, minimum_kind=kind)
        margins["hessian_min_eig_lower"] = None
        if lam[0] > 0:
            return done("inconclusive", f"{where} exists, but its interval Hessian is not proven positive definite "
                        f"(midpoint lambda_min {lam[0]:.3g})", loss=loss, radius=r)
        Va = arb_mat(V.tolist())
        v = _col([Va[i, 0] for i in range(m)])  # float eigenvector of the smallest midpoint eigenvalue, exact
        q_hi = ar.upper((v.transpose() * J * v)[0, 0])
        margins["negative_curvature_upper"] = q_hi
        if q_hi < 0:
            return done("certified-not-minimum",
                        f"{where} is not a local minimum: Krawczyk ratio {ratios[-1]:.3g} < 1 and a direction v "
                        f"with v^T H(X) v <= {q_hi:.3g} < 0 over the whole box (midpoint lambda_min {lam[0]:.3g})",
                        loss=loss, radius=r)
        return done("inconclusive", f"{where} exists, but its Hessian is neither proven positive definite nor "
                    f"proven to have a negative direction (midpoint lambda_min {lam[0]:.3g}, v^T H v <= {q_hi:.3g})",
                    loss=loss, radius=r)


def _minimum_kind(problem, x0, r, Qa, k, lo, hi, Ws, prec):
    """``(kind, text)`` for a certified minimum: spurious / global / unknown (module docstring, item 3)."""
    if lo > 0:
        return "spurious", f"G > {lo:.6g} > 0 on the box, so the minimum is spurious (not global)"
    if Qa is None and k == 1:
        Ustar = problem.U_star.reshape(problem.T, -1)
        U0 = x0.reshape(problem.T, -1)
        signs = np.where(np.sum(Ustar * U0, axis=1) >= 0, 1.0, -1.0)
        cand = (signs[:, None] * Ustar).ravel()  # exact: a sign flip
        if np.all(np.abs(cand - x0) < r):  # float subtraction: check it rigorously below
            inside = all((arb(float(c)) - arb(float(x))).abs_upper() < arb(r) for c, x in zip(cand, x0))
            if inside:
                return "global", ("U* (column signs flipped to match x0) lies in the box, is a critical point with "
                                  "G = 0, so x* = U* and the minimum is global (proven)")
    with ar.working_precision(prec):
        G_zero = ar.loss(ar.residuals(ar.U_blocks(ar.balls(np.zeros_like(x0)), problem.T, problem.d, problem.k), Ws))
    scale = 1.0 + ar.upper(G_zero)
    if lo <= 0 <= hi and hi <= _GLOBAL_RTOL * scale:
        return "global", (f"0 <= G(x*) <= {hi:.3g} (round-off level, <= {_GLOBAL_RTOL:g} (1 + G(0))): a global "
                          "minimum up to that bound; interval arithmetic cannot prove G(x*) = 0 exactly here")
    return "unknown", f"G on the box lies in [{lo:.3g}, {hi:.3g}], which neither excludes 0 nor is at round-off level"
