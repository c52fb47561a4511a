"""The eps-net certificate of a local minimum of the reduced loss G (the paper's Appendix D.2; issue 4, certificate 1).

Notation: ``x = vec(U)`` (``n = T d k``), ``x0`` the point to certify, ``M`` a fixed n x m matrix of rank m
(``m = n`` for k = 1, T != 2; the gauge slice below otherwise), ``F(z) = G(x0 + M z)``. ``metric="euclidean"`` takes
``M = I`` (the paper's sphere ``S(x0, delta)``); ``metric="hessian"`` (default) takes ``M = V diag(lambda)^(-1/2)``
from the float eigendecomposition of ``H(x0)``, so the sphere in z is an ellipsoid in x on which G rises evenly (the
float M is used as exact numbers; any M of full rank is valid).

**Claim.** If ``F(z) > F(0)`` for every z on the sphere ``|z| = delta``, the minimum of F over the closed ball is
attained inside, so G has a local minimum x* in the open region ``x0 + M B(0, delta)`` (inside the ball
``B(x0, |M| delta)``) with ``G(x*) <= G(x0)``. It is *spurious* if moreover ``G > 0`` on that ball, and *global* if
the region contains U* (up to the signs of its columns), since then ``G(x*) <= G(U*) = 0``, or, as in the interval
certificate, "global" up to round-off when ``G(x*) <= G(x0) <= 1e-12 (1 + G(0))`` (said so in the reason).

**Gauge (k >= 2, or T = 2).** The orbit ``U_t -> U_t Q_t`` through x0 (dimension ``T k (k-1)/2``, on which G is
constant; at T = 2 the larger O(k, k) orbit, dimension ``k (2k - 1)``) meets every small sphere of the full space,
where ``G = G(x0)``, so the test could never pass there. The sphere is therefore taken in the gauge slice
``x0 + range(Q)``, ``Q`` (n, m) the complement of the orbit tangent at U0 (as in
:func:`landscape.certify_interval.certify_interval`): ``M = Q V diag(lambda)^(-1/2)`` from the float
eigendecomposition of ``Q^T H(x0) Q`` (or ``M = Q`` for ``metric="euclidean"``), ``z`` in R^m. The slice is proven
transversal to the orbits over a box containing the whole region (``[Q, Z(X)]`` nonsingular in arb), so a local
minimum of G on the slice is a local minimum of G, strict modulo the orbit. For k = 1 and T != 2 (finite orbit)
``Q = I``.

**The net (proven covering radius).** Project the surface of the cube ``[-1, 1]^n`` radially onto the sphere:
``s(y) = delta y / |y|_2``. Every sphere point is ``s(y)`` for ``y`` on the cube surface (``y = v / |v|_inf``).
Each face ``{y_i = +-1}`` is cut into cubes (cells) of half-width ``w = 2^-level`` in the other ``n - 1``
coordinates; a point of a cell is within ``w sqrt(n-1)`` (2-norm) of the cell centre c. ``y -> y / |y|_2`` is the
metric projection onto the unit ball on ``{|y|_2 >= 1}`` (where the cube surface lies), hence 1-Lipschitz, so every
sphere point of the cell's image lies within ``eps = delta w sqrt(n - 1)`` of ``s(c)``. Centres are dyadic, hence
exact in float64; G is evaluated at the exact real point ``x_f = x0 + h_f``, ``h_f`` the float64 value of
``M s(c)``, which differs from it by at most ``tau = 2.02 (gamma_n |M|_F + (n + 4) u |M|) delta`` (rounding of the
norm, division, scaling and the product with M).

**Bounds** (G is a quartic polynomial). Exact Taylor expansion at ``x_f``, ``h`` a displacement:
``G(x_f + h) = G + g.h + h^T H h / 2 + 2 <L(h), Q(h)> + |Q(h)|^2`` with ``L(h) = centred(h_t U_t^T + U_t h_t^T)``,
``Q(h) = centred(h_t h_t^T)``, so the cubic term is ``>= -4 a |h|^3`` (``a >= max_t |U_t(x_f)|``) and the quartic
is ``>= 0``. The Hessian at ``x_f`` differs from ``H(x0)`` by at most ``(24 a0 r + 12 r^2) |h|^2`` in the quadratic
form, ``r = |x_f - x0|``, ``a0 = max_t |U0_t|_F`` (the same norms of the third and fourth derivative). On the sphere,
``nu . h_z = -|h_z|^2 / (2 delta)`` (``nu`` the unit normal), so with ``g_z = M^T g``, ``P = I - nu nu^T``:
``F(y) >= F(s) - |P g_z| rho - max(0, max(g_z.nu, 0) / (2 delta) - mu / 2) rho^2 - 4 a (|M| rho + tau)^3 - ...``
(``mu`` a rigorous lower bound of ``lambda_min(M^T H(x0) M)`` minus the Hessian variation; the ``...`` are the
``tau`` terms, bounded with ``Hb``). Independently, the paper's global bound: on the ball ``B(x0, R)``,
``|H|_2 <= Hb = 8 a^2 + 4 (sqrt(G(x0)) + R (2 a0 + R))`` (``a = a0 + R``) and
``|grad G| <= Lip = |grad G(x0)| + R Hb``, so ``|G(y) - G(s)| <= Lip |y - s|``. A cell passes when
``G_lo(x_f) - G_hi(x0) - min(local drop, Lip (|M| eps + tau)) > 0``.

**Rigour.** ``G(x0)``, ``E(x0)``, ``|grad G(x0)|``, ``a0``, ``Hb``, ``Lip``, ``|M|``, ``mu`` are computed in arb
(outward rounding) from the stored instance. At the (many) net points the difference ``G(x0 + h) - G(x0) =
sum (2 E0 + Delta) * Delta`` (``Delta = E(x0 + h) - E0``, exact since E is quadratic) and ``grad G(x0 + h)`` are
computed in float64, vectorised, with the a-priori rounding bound ``|fl(f) - f| <= gamma_K f_abs`` (Higham,
*Accuracy and Stability of Numerical Algorithms*, 2nd ed., ch. 3: each monomial of the computed expression carries
at most K factors ``(1 + delta_i)``, ``gamma_K = K u / (1 - K u)``, ``u = 2^-53``, ``f_abs`` the same expression on
absolute values), plus the propagated error of the float ``E0``; the constants are in :func:`_float_dG_grad`.
Evaluating the difference keeps the error proportional to |h| rather than to G. Each bound is doubled to absorb its
own rounding; the few remaining float operations per cell carry a relative ``8 u`` allowance.

**The net is adaptive** (default, ``eps=None``): a failing cell is split into its ``2^(n-1)`` halves, level by level.
``eps`` given: the paper's uniform net of covering radius ``<= eps`` with the global Lipschitz bound only, on the
Euclidean sphere. Either way the net grows like ``(C / eps)^(n-1)``: see the README for up to which n it finishes
in a minute.

>>> from theory.problem import Problem
>>> p = Problem.random(d=4, k=1, T=3, seed=0)
>>> c = certify_epsnet(p, p.U_star)
>>> c.verdict, c.minimum_kind, c.margins["net_points"]
('certified-minimum', 'global', 24)
>>> q = Problem.random(d=1, k=1, T=3, seed=0)  # d = 1: the global minima form a curve
>>> certify_epsnet(q, q.U_star).reason[:45]
'the float Hessian at x0 is not positive defin'
"""

from __future__ import annotations

import math
import time

import numpy as np
from flint import arb, arb_mat

from theory.problem import Problem
from theory.reduced import reduced_hess

from . import _arb_reduced as ar
from .certificate import Certificate, CertificateError
from .certify_interval import _GLOBAL_RTOL, _gauge, _positive, _transversal, _validate_point

__all__ = ["certify_epsnet", "net_covering_radius", "METRICS"]

METRICS = ("hessian", "euclidean")
_U = 2.0 ** -53
# default delta = mu / (_DELTA_DIVISOR (n-1)^1.5 a0 |M|^3): at the coarsest net (covering radius delta sqrt(n-1))
# the cubic term 4 a0 |M|^3 (delta sqrt(n-1))^3, the Hessian variation 24 a0 |M|^3 delta (times rho^2) and the
# tangential gradient stay well below the quadratic margin mu delta^2 / 2, so the curvature of the sphere cancels
# the first-order term and coarse nets pass; a much smaller delta would let rounding (proportional to |h|) catch up.
_DELTA_DIVISOR = 64.0


def _gamma(K: int) -> float:
    return K * _U / (1.0 - K * _U)


def net_covering_radius(delta: float, n: int, level: int) -> float:
    """Covering radius ``delta 2^-level sqrt(n - 1)`` of the sphere net whose cells have half-width ``2^-level`` on
    the faces of ``[-1, 1]^n`` (exact arithmetic; module docstring)."""
    return delta * 2.0 ** (-level) * math.sqrt(max(n - 1, 0))


def _float_dG_grad(h: np.ndarray, U0: np.ndarray, E0f: np.ndarray, e0: np.ndarray):
    """``G(x0 + h) - G(x0)`` and ``grad G(x0 + h)`` at the float displacements h (B, T, d, k), with rigorous bounds
    of their rounding errors; ``x0 + h`` is the exact real point (never rounded).

    Exact identities (E is quadratic in U): ``E(x0 + h) = E0 + Delta``, ``Delta = centred(h_t U0_t^T + U0_t h_t^T +
    h_t h_t^T)``, so ``G(x0 + h) - G(x0) = sum (2 E0 + Delta) * Delta`` and ``grad = 2 sym(E0 + Delta) (U0 + h)``.
    Evaluating the difference directly (not ``G(x0 + h)`` minus ``G(x0)``) keeps the rounding error proportional to
    |h| instead of to G. ``E0f`` (T, d, d) is E(x0) rounded to float64 and ``e0`` a bound of its entrywise error
    (both from arb). Rounding counts (module docstring): ``K_Delta = k + T + 3``, ``2 K_Delta + 1 + T d^2`` for the
    difference, ``k + T + d + 6`` for each gradient entry; every bound is doubled to absorb its own rounding.

    Returns ``(dG, dG_err, g, g_err)``: shapes (B,), (B,), (B, n), (B,) (g_err bounds the 2-norm of the error).
    """
    B, T, d, k = h.shape
    n = T * d * k
    P = h @ np.swapaxes(U0, -1, -2)[None]
    Dl = P + np.swapaxes(P, -1, -2) + h @ np.swapaxes(h, -1, -2)
    Delta = Dl - Dl.sum(axis=1, keepdims=True) / T
    ha, Ua = np.abs(h), np.abs(U0)[None]
    Pa = ha @ np.swapaxes(Ua, -1, -2)
    Da = Pa + np.swapaxes(Pa, -1, -2) + ha @ np.swapaxes(ha, -1, -2)
    Delta_abs = Da + Da.sum(axis=1, keepdims=True) / T
    K_D = k + T + 3
    dG = np.sum(((2.0 * E0f[None] + Delta) * Delta).reshape(B, -1), axis=1)
    S_abs = np.sum(((2.0 * np.abs(E0f)[None] + Delta_abs) * Delta_abs).reshape(B, -1), axis=1)
    e0_term = np.sum((e0[None] * Delta_abs).reshape(B, -1), axis=1)
    dG_err = 2.0 * _gamma(2 * K_D + 1 + T * d * d) * S_abs + 2.0 * 2.0 * e0_term * (1 + 4 * _gamma(T * d * d + 2)) \
        + 1e-300
    E = E0f[None] + Delta
    U = U0[None] + h
    g = 2.0 * (E + np.swapaxes(E, -1, -2)) @ U
    Eabs = np.abs(E0f)[None] + Delta_abs
    Uabs = Ua + ha
    gabs = 2.0 * (Eabs + np.swapaxes(Eabs, -1, -2)) @ Uabs
    gerr_e0 = 2.0 * (e0 + np.swapaxes(e0, -1, -2))[None] @ Uabs
    ent = 2.0 * _gamma(k + T + d + 6) * gabs + 2.0 * gerr_e0
    g_err = np.sqrt(np.sum((ent * ent).reshape(B, -1), axis=1)) * (1.0 + 4.0 * _gamma(n + 2)) + 1e-300
    return dG, dG_err, g.reshape(B, n), g_err


def _cube_points(face: np.ndarray, sign: np.ndarray, centres: np.ndarray, n: int) -> np.ndarray:
    """Cube-surface points: coordinate ``face`` set to ``sign``, the others from ``centres`` (B, n - 1)."""
    B = face.shape[0]
    y = np.empty((B, n))
    mask = np.ones((B, n), dtype=bool)
    mask[np.arange(B), face] = False
    y[mask] = centres.ravel()
    y[np.arange(B), face] = sign
    return y


class _Overflow(ArithmeticError):
    """The float evaluation on the net gave NaN or inf (a point too far out for float64); private."""


class _Context:
    """Everything a batch of cells needs (floats that are rigorous bounds, and the float data)."""

    def __init__(self, **kw):
        self.__dict__.update(kw)


def certify_epsnet(problem: Problem, U0, *, delta: float | None = None, eps: float | None = None,
                   metric: str = "hessian", max_points: int = 20_000_000, time_limit: float = 60.0,
                   batch: int = 50_000, prec: int = 128, progress: bool | None = None) -> Certificate:
    """Certify a local minimum of G near ``U0`` (shape ``(T, d, k)`` or ``(T d k,)``) by an eps-net.

    Parameters
    ----------
    problem : the instance; G is recomputed from its stored ``A*`` and ``U*``
    U0 : the centre x0 (float64, finite)
    delta : sphere radius in z; default ``mu / (64 (n-1)^1.5 a0 |M|^3)`` (``mu = lambda_min(M^T H(x0) M)``), where
        the quadratic margin ``mu delta^2 / 2`` beats the cubic term and the Hessian variation on the coarsest net
    eps : covering radius of a uniform net (the paper's version: Euclidean sphere, global Lipschitz bound only);
        None: adaptive net
    metric : ``"hessian"`` (ellipsoid from H(x0), default) or ``"euclidean"`` (sphere); ignored when eps is given
    max_points, time_limit : give up ("inconclusive") beyond this many net points or seconds
    batch : net points evaluated per vectorised batch
    prec : arb precision (bits)
    progress : tqdm bar; None shows it only on a terminal

    Returns
    -------
    Certificate with method ``"epsnet"``; ``radius`` is delta (in z); margins hold ``lipschitz``,
    ``hessian_bound``, ``metric_norm`` (``|M|``), ``radius_x`` (``|M| delta``), ``eps`` (finest covering radius
    used, in z), ``net_points``, ``net_margin`` (smallest passing lower bound of ``G(y) - G(x0)`` on the sphere),
    ``loss_lower_on_ball``.
    """
    t_start = time.perf_counter()
    x0 = _validate_point(problem, U0)
    delta = _positive("delta", delta)
    eps = _positive("eps", eps)
    time_limit = _positive("time_limit", time_limit, allow_none=False)
    if metric not in METRICS:
        raise CertificateError(f"metric must be one of {METRICS}, got {metric!r}")
    for name, v in (("max_points", max_points), ("batch", batch)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
            raise CertificateError(f"{name} must be a positive integer, got {v!r}")
    if isinstance(prec, bool) or not isinstance(prec, (int, np.integer)) or prec < 53:
        raise CertificateError(f"prec must be an integer number of bits >= 53, got {prec!r}")
    uniform = eps is not None
    if uniform:
        metric = "euclidean"
    T, d, k = problem.T, problem.d, problem.k
    n = problem.n_reduced
    margins: dict = {"metric": metric}
    gauge = ""

    def done(verdict, reason, loss, **kw):
        return Certificate(verdict=verdict, method="epsnet", loss=loss, radius=delta,
                           seconds=time.perf_counter() - t_start, reason=reason, margins=margins, gauge=gauge, n=n,
                           **kw)

    with ar.working_precision(prec):
        Ws = ar.task_matrices(problem)
        U0b = ar.U_blocks(ar.balls(x0), T, d, k)
        E0 = ar.residuals(U0b, Ws)
        G0 = ar.loss(E0)
        loss = (ar.lower(G0), ar.upper(G0))
        Q, tangent_cols, gauge = _gauge(x0.reshape(T, d, k))  # Q None for k = 1 (no gauge), else (n, m)
        with np.errstate(over="ignore", invalid="ignore"):
            Hf = reduced_hess(x0, problem)
            Jf = Hf if Q is None else Q.T @ Hf @ Q
        if not np.all(np.isfinite(Jf)):
            return done("inconclusive", f"the float64 Hessian at x0 overflows (max |x0| entry "
                        f"{float(np.max(np.abs(x0))):.3g}): no metric for the net, nothing can be proven here in "
                        "float64", loss)
        lam, V = np.linalg.eigh(Jf)
        margins["hessian_min_eig_mid"] = float(lam[0])
        if not lam[0] > 1e-10 * max(1.0, float(np.max(np.abs(lam)))):
            return done("inconclusive", f"the float Hessian at x0{' on the gauge slice' if Q is not None else ''} is "
                        f"not positive definite (lambda_min = {lam[0]:.3g}): G does not rise on every small sphere, "
                        "the eps-net cannot certify a minimum", loss)
        B0 = np.eye(n) if Q is None else Q  # the net lives in the m coordinates of B0 (m = n for k = 1)
        m = B0.shape[1]
        Mf = B0 @ (V / np.sqrt(lam)[None, :]) if metric == "hessian" else B0
        Ma = arb_mat(Mf.tolist())
        MtM = Ma.transpose() * Ma
        Mnorm = math.sqrt(ar.inf_norm_upper(MtM)) * (1 + 1e-15) if (metric == "hessian" or Q is not None) else 1.0
        MF = math.sqrt(ar.upper(sum((e * e for e in Ma.entries()), arb(0)))) * (1 + 1e-15)
        Hx0 = ar.hess(U0b, E0)
        mu0 = ar.lambda_min_lower(Ma.transpose() * Hx0 * Ma)[0]
        if not mu0 > 0:
            return done("inconclusive", "could not prove the Hessian at x0 positive definite in arb", loss)
        a0_arb = max((ar.norm_upper(Ub.entries()) for Ub in U0b), key=ar.upper)
        a0 = ar.upper(a0_arb)
        if delta is None:
            delta = float(mu0 / (_DELTA_DIVISOR * max(m - 1, 1) ** 1.5 * a0 * Mnorm ** 3)) if a0 > 0 else 1.0 / Mnorm
        dx = Mnorm * delta  # the region lies in B(x0, dx)
        # |h_f - M s_e|: rounding of the norm, division, scaling and the product with M (x0 + h_f is exact)
        tau = 2.0 * (_gamma(m) * MF * delta + (m + 4) * _U * delta * Mnorm) * 1.01
        R = arb(dx) + arb(tau)
        a_ball = a0_arb + R
        sG_hi = arb(ar.upper(G0)).sqrt()
        Hb = 8 * a_ball * a_ball + 4 * (sG_hi + R * (2 * a0_arb + R))
        g0n = ar.norm_upper(ar.grad(U0b, E0))  # finite also where the gradient entries straddle zero
        Lip = g0n + R * Hb
        hess_var = 24 * a0_arb * R + 12 * R * R
        mu = ar.lower(arb(mu0) - hess_var * arb(Mnorm) ** 2)
        # G > 0 on the ball B(x0, dx): |E(x)| >= sqrt(G(x0)) - dx (2 a0 + dx)
        lo_E = arb(max(ar.lower(G0), 0.0)).sqrt() - arb(dx) * (2 * a0_arb + arb(dx))
        ball_lo = ar.lower(lo_E * lo_E) if ar.lower(lo_E) > 0 else 0.0
        # U* (column signs matched to x0) inside the region x0 + M B(0, delta) proves the minimum global (k = 1)
        ustar_inside = False
        if Q is None:
            Ustar = problem.U_star.reshape(T, -1)
            sg = np.where(np.sum(Ustar * x0.reshape(T, -1), axis=1) >= 0, 1.0, -1.0)
            diff = arb_mat(n, 1, [arb(float(c)) - arb(float(x)) for c, x in zip((sg[:, None] * Ustar).ravel(), x0)])
            try:
                zs = Ma.solve(diff)
                ustar_inside = bool(sum((e * e for e in zs.entries()), arb(0)) < arb(delta) ** 2)
            except ZeroDivisionError:
                pass
        else:  # the slice must be transversal to the orbits over the whole region (box of half-width R)
            Us_box = ar.U_blocks(ar.balls(x0, ar.upper(R)), T, d, k)
            margins["transversal"] = _transversal(arb_mat(Q.tolist()), tangent_cols, Us_box, k)
            if not margins["transversal"]:
                return done("inconclusive", "could not prove the gauge slice transversal to the orbits over the "
                            "region ([Q, Z(X)] not proven nonsingular)", loss)
        G_zero_hi = ar.upper(ar.loss(ar.residuals(ar.U_blocks(ar.balls(np.zeros(n)), T, d, k), Ws)))
        E0f = np.array([ar.mid_matrix(Et) for Et in E0])  # E(x0) in float64, with its entrywise error e0
        e0 = np.array([[[ar.upper(abs(Et[i, j] - arb(float(E0f[t, i, j])))) for j in range(d)] for i in range(d)]
                       for t, Et in enumerate(E0)])
        ctx = _Context(U0=x0.reshape(T, d, k), E0f=E0f, e0=e0, M=Mf, delta=delta, tau=tau, n=m, nx=n, problem=problem,
                       Mnorm=Mnorm, mu=mu, a_cubic=ar.upper(a_ball), Hb=ar.upper(Hb), Lip=ar.upper(Lip))
    margins.update(lipschitz=ctx.Lip, hessian_bound=ctx.Hb, metric_norm=Mnorm, radius_x=dx, tau=tau,
                   hessian_min_eig_lower=mu0 / Mnorm ** 2 if metric == "euclidean" else None,
                   loss_lower_on_ball=ball_lo)
    bounds = (delta, dx, tau, Mnorm, mu, ctx.a_cubic, ctx.Hb, ctx.Lip)
    if not (all(math.isfinite(b) for b in bounds) and delta > 0 and np.all(np.isfinite(E0f))
            and np.all(np.isfinite(e0))):
        return done("inconclusive", f"the bounds of the net overflow float64 or vanish (delta {delta:.3g}, Lipschitz "
                    f"{ctx.Lip:.3g}, Hessian bound {ctx.Hb:.3g}, |M| {Mnorm:.3g}): nothing can be proven here in "
                    "float64", loss)

    level = 0
    if 2 * m > max_points:
        margins.update(net_points=0)
        return done("inconclusive", f"even the coarsest net (2 m = {2 * m} points) exceeds max_points = {max_points}",
                    loss)
    if uniform and m > 1:
        level = max(0, math.ceil(math.log2(delta * math.sqrt(m - 1) / eps)))
        total = 2 * m * 2 ** (level * (m - 1))
        if total > max_points:
            margins.update(net_points=total, eps=eps)
            return done("inconclusive", f"the uniform net of covering radius {eps:.3g} on S(x0, {delta:.3g}) needs "
                        f"{total} points > max_points = {max_points}", loss)
    from tqdm.auto import tqdm

    bar = tqdm(total=None, unit="pts", desc="eps-net", disable=(not progress) if progress is not None else None,
               leave=False)
    faces = np.repeat(np.arange(m), 2)
    face_signs = np.tile([1.0, -1.0], m)
    evaluated = 0
    min_margin = math.inf
    region = f"S(x0, {delta:.3g})" if metric == "euclidean" else f"the ellipsoid x0 + M S(0, {delta:.3g})"

    def fail(reason):
        margins.update(net_points=evaluated)
        return done("inconclusive", reason, loss)

    below_msg = (f"a net point near {region} has G < G(x0) (rigorously): the test cannot pass at this delta")
    try:
        if uniform:  # the paper's net: all cells at one level, global Lipschitz bound, no refinement
            mg = 2 ** level
            grid = -1.0 + (2.0 * np.arange(mg) + 1.0) / mg  # dyadic centres, exact
            count = mg ** (m - 1)
            for f, s_ in zip(faces, face_signs):
                for start in range(0, count, batch):
                    idx = np.arange(start, min(start + batch, count))
                    digits = np.stack([(idx // mg ** j) % mg for j in range(m - 1)], axis=1).astype(np.int64) \
                        if m > 1 else np.zeros((idx.size, 0), dtype=np.int64)
                    ok, margin, below = _evaluate(np.full(idx.size, f), np.full(idx.size, s_), grid[digits], level,
                                                  ctx, local=False)
                    evaluated += idx.size
                    bar.update(idx.size)
                    if below:
                        return fail(below_msg)
                    if not np.all(ok):
                        margins.update(eps=net_covering_radius(delta, m, level))
                        return fail(f"uniform net (covering radius {margins['eps']:.3g}, Lipschitz {ctx.Lip:.3g}) "
                                    f"fails at {int(np.sum(~ok))} points of a batch: a finer net is needed")
                    min_margin = min(min_margin, float(np.min(margin)))
                    if time.perf_counter() - t_start > time_limit:
                        return fail(f"time limit {time_limit:g} s reached after {evaluated} net points")
            finest = level
        else:  # adaptive: split a failing cell into its 2^(m-1) halves, level by level (children made lazily)
            rep = 2 ** (m - 1)  # children per cell; their sign patterns are built only if a cell fails
            children = None
            parents = None  # failing cells of the previous level: (faces, signs, centres)
            finest = 0
            while True:
                if parents is None:
                    chunks = [(faces, face_signs, np.zeros((2 * m, m - 1)))]
                else:
                    w_child = 2.0 ** -level
                    per = max(1, batch // rep)
                    chunks = ((np.repeat(parents[0][i:i + per], rep), np.repeat(parents[1][i:i + per], rep),
                               (parents[2][i:i + per, None, :] + w_child * children[None]).reshape(-1, m - 1))
                              for i in range(0, parents[0].size, per))
                failing = []
                for cf, cs, cc in chunks:
                    ok, margin, below = _evaluate(cf, cs, cc, level, ctx, local=True)
                    evaluated += cf.size
                    bar.update(cf.size)
                    if below:
                        return fail(below_msg)
                    if np.any(ok):
                        min_margin = min(min_margin, float(np.min(margin[ok])))
                    if not np.all(ok):
                        failing.append((cf[~ok], cs[~ok], cc[~ok]))
                    if time.perf_counter() - t_start > time_limit:
                        return fail(f"time limit {time_limit:g} s reached after {evaluated} net points "
                                    f"(level {level})")
                finest = level
                if not failing:
                    break
                if m == 1 or level >= 40:
                    return fail("a net cell fails and cannot be refined further")
                pending = sum(f[0].size for f in failing) * rep  # Python int: no overflow for large m
                if evaluated + pending > max_points:
                    margins.update(eps=net_covering_radius(delta, m, level + 1))
                    return fail(f"the adaptive net would exceed max_points = {max_points} (evaluated {evaluated}, "
                                f"{pending} cells pending at level {level + 1})")
                parents = tuple(np.concatenate([f[i] for f in failing]) for i in range(3))
                if children is None:
                    bits = (np.arange(rep)[:, None] >> np.arange(m - 1)[None, :]) & 1
                    children = 2.0 * bits - 1.0  # (2^(m-1), m-1) sign patterns
                level += 1
    except _Overflow:
        return fail("the float64 evaluation of G or its gradient on the net overflows: nothing can be proven here")
    finally:
        bar.close()
    eps_used = net_covering_radius(delta, m, finest)
    margins.update(net_points=evaluated, eps=eps_used, net_margin=min_margin)
    if ball_lo > 0:
        kind, why = "spurious", f"G >= {ball_lo:.6g} > 0 on B(x0, {dx:.3g}), so the minimum is spurious"
    elif ustar_inside:
        kind, why = "global", "U* (column signs matched) lies inside, so G(x*) <= G(U*) = 0: global (proven)"
    elif loss[1] <= _GLOBAL_RTOL * (1.0 + G_zero_hi):
        kind, why = "global", (f"0 <= G(x*) <= G(x0) <= {loss[1]:.3g} (round-off level, <= {_GLOBAL_RTOL:g} "
                               "(1 + G(0))): a global minimum up to that bound")
    else:
        kind, why = "unknown", "G on the region is not proven positive and U* is not inside"
    on_slice = ("on the gauge slice (transversal to the orbits: a local minimum of G modulo the orbit) "
                if Q is not None else "")
    return done("certified-minimum",
                f"G > G(x0) on all of {region} ({evaluated} net points, finest covering radius {eps_used:.3g}, "
                f"smallest margin {min_margin:.3g}): a local minimum of G {on_slice}lies inside, within {dx:.3g} of "
                f"x0; {why}",
                loss, minimum_kind=kind)


def _evaluate(face, sign, centres, level, c: _Context, *, local: bool):
    """Test the cells: ``(ok, margin, below)``; margin is a rigorous lower bound of ``G(y) - G(x0)`` over the cell's
    patch of the sphere (valid where ok); ``below`` is True if some net point has ``G < G(x0)`` rigorously.
    The bounds are those of the module docstring; G is compared through the difference ``G(x0 + h) - G(x0)``."""
    n = c.n
    y = _cube_points(face, sign, centres, n)
    v = y / np.linalg.norm(y, axis=1, keepdims=True)  # ~ the unit normal nu
    h = (c.delta * v) @ c.M.T  # the net point is the exact real point x0 + h
    dG, dG_err, g, g_err = _float_dG_grad(h.reshape(-1, c.problem.T, c.problem.d, c.problem.k), c.U0, c.E0f, c.e0)
    rho = net_covering_radius(c.delta, n, level)  # in z
    rho_x = c.Mnorm * rho + c.tau
    drop = np.full(dG.shape, c.Lip * rho_x)
    if local:
        up = 1.0 + 4.0 * _gamma(n + 4)
        gn_up = (np.linalg.norm(g, axis=1) + g_err) * (1.0 + 4.0 * _gamma(c.nx + 4))
        gz = g @ c.M  # M^T g
        gz_err = c.Mnorm * g_err + _gamma(c.nx) * math.sqrt(c.nx) * np.linalg.norm(np.abs(g) @ np.abs(c.M), axis=1)
        gz_up = (np.linalg.norm(gz, axis=1) + gz_err) * up
        gnu = np.sum(gz * v, axis=1)
        gnu_up = gnu + (gz_err + 4.0 * (n + 4) * _U * gz_up)
        Pg = gz - gnu[:, None] * v
        Pg_up = np.linalg.norm(Pg, axis=1) * up + gz_err + 16.0 * (n + 4) * _U * gz_up
        B2 = np.maximum(np.maximum(gnu_up, 0.0) / (2.0 * c.delta) - 0.5 * c.mu, 0.0)
        local_drop = (Pg_up * rho + B2 * rho * rho + 4.0 * c.a_cubic * rho_x ** 3
                      + gn_up * c.tau + c.Hb * (c.Mnorm * rho * c.tau + 0.5 * c.tau * c.tau))
        drop = np.minimum(drop, local_drop)
    margin = (dG - dG_err) - drop
    margin = margin - 8 * _U * (np.abs(dG) + dG_err + drop)  # the few float operations above
    if not np.all(np.isfinite(margin)):
        raise _Overflow
    below = bool(np.any(dG + dG_err < 0))
    return margin > 0, margin, below
