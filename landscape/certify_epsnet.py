"""The eps-net certificate of a local minimum of the reduced loss G (the paper's Appendix D.2; issue 4, certificate 1).

Notation: ``x = vec(U)`` (``n = T d k``), ``x0`` the point to certify, ``M`` a fixed nonsingular n x n matrix,
``F(z) = G(x0 + M z)``. ``metric="euclidean"`` takes ``M = I`` (the paper's sphere ``S(x0, delta)``);
``metric="hessian"`` (default) takes ``M = V diag(lambda)^(-1/2)`` from the float eigendecomposition of ``H(x0)``,
so the sphere in z is an ellipsoid in x on which G rises evenly (the float M is used as exact numbers; any
nonsingular M is valid).

**Claim.** If ``F(z) > F(0)`` for every z on the sphere ``|z| = delta``, the minimum of F over the closed ball is
attained inside, so G has a local minimum x* in the open region ``x0 + M B(0, delta)`` (inside the ball
``B(x0, |M| delta)``) with ``G(x*) <= G(x0)``. It is *spurious* if moreover ``G > 0`` on that ball, and *global* if
the region contains U* (up to the signs of its columns), since then ``G(x*) <= G(U*) = 0``.

**Only k = 1.** For k >= 2 the orbit ``U_t -> U_t Q_t`` through x0 (dimension ``T k (k-1)/2``, on which G is constant)
leaves every small neighbourhood, so it meets the sphere where ``G = G(x0)``: the test can never pass on the full
space. Such points get "inconclusive" with that reason; :func:`landscape.certify_interval.certify_interval` fixes
the gauge on a slice.

**The net (proven covering radius).** Project the surface of the cube ``[-1, 1]^n`` radially onto the sphere:
``s(y) = delta y / |y|_2``. Every sphere point is ``s(y)`` for ``y`` on the cube surface (``y = v / |v|_inf``).
Each face ``{y_i = +-1}`` is cut into cubes (cells) of half-width ``w = 2^-level`` in the other ``n - 1``
coordinates; a point of a cell is within ``w sqrt(n-1)`` (2-norm) of the cell centre c. ``y -> y / |y|_2`` is the
metric projection onto the unit ball on ``{|y|_2 >= 1}`` (where the cube surface lies), hence 1-Lipschitz, so every
sphere point of the cell's image lies within ``eps = delta w sqrt(n - 1)`` of ``s(c)``. Centres are dyadic, hence
exact in float64; the float point ``x_f`` where G is evaluated differs from ``x0 + M s(c)`` by at most ``tau``
(a stated bound on the rounding of the norm, division, product with M and addition).

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

**Rigour.** ``G(x0)``, ``|grad G(x0)|``, ``a0``, ``Hb``, ``Lip``, ``|M|``, ``mu`` are computed in arb (outward
rounding) from the stored instance. ``G`` and ``grad G`` at the (many) net points are computed in float64,
vectorised, with the a-priori rounding bound ``|fl(f) - f| <= gamma_K f_abs`` (Higham, *Accuracy and Stability of
Numerical Algorithms*, 2nd ed., ch. 3: each monomial of the computed expression carries at most K factors
``(1 + delta_i)``, ``gamma_K = K u / (1 - K u)``, ``u = 2^-53``, ``f_abs`` the same expression on absolute values):
``K = 2 (k + T + 3) + T d^2`` for G and ``K = k + T + d + 4`` for each gradient entry, doubled to absorb the rounding
of the bound itself; the remaining few float operations per cell carry a relative ``8 u`` allowance.

**The net is adaptive** (default, ``eps=None``): a failing cell is split into its ``2^(n-1)`` halves, level by level.
``eps`` given: the paper's uniform net of covering radius ``<= eps`` with the global Lipschitz bound only, on the
Euclidean sphere. Either way the net grows like ``(C / eps)^(n-1)``: see the README for up to which n it finishes
in a minute.

>>> from theory.problem import Problem
>>> p = Problem.random(d=2, k=1, T=2, seed=0)
>>> c = certify_epsnet(p, p.U_star)
>>> c.verdict, c.minimum_kind
('certified-minimum', 'global')
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
from .certify_interval import _positive, _validate_point

__all__ = ["certify_epsnet", "net_covering_radius", "METRICS"]

METRICS = ("hessian", "euclidean")
_U = 2.0 ** -53


def _gamma(K: int) -> float:
    return K * _U / (1.0 - K * _U)


def net_covering_radius(delta: float, n: int, level: int) -> float:
    """Covering radius ``delta 2^-level sqrt(n - 1)`` of the sphere net whose cells have half-width ``2^-level`` on
    the faces of ``[-1, 1]^n`` (exact arithmetic; module docstring)."""
    return delta * 2.0 ** (-level) * math.sqrt(max(n - 1, 0))


def _float_G_grad(X: np.ndarray, problem: Problem, Wf: np.ndarray, Wabs: np.ndarray):
    """G and grad G at the float points X (B, T, d, k), with rigorous bounds of their rounding errors.

    Returns ``(G, G_err, g, g_err)``: G (B,), a bound of ``|fl(G) - G|`` (B,), the float gradients (B, n) and a bound
    of the 2-norm of each gradient's error (B,). Constants in the module docstring.
    """
    T, d, k = problem.T, problem.d, problem.k
    B = X.shape[0]
    n = T * d * k
    D = X @ np.swapaxes(X, -1, -2) - Wf
    E = D - D.sum(axis=1, keepdims=True) / T
    Xa = np.abs(X)
    Dabs = Xa @ np.swapaxes(Xa, -1, -2) + Wabs
    Eabs = Dabs + Dabs.sum(axis=1, keepdims=True) / T
    G = np.sum((E * E).reshape(B, -1), axis=1)
    Gabs = np.sum((Eabs * Eabs).reshape(B, -1), axis=1)
    G_err = 2.0 * _gamma(2 * (k + T + 3) + T * d * d) * Gabs + 1e-300
    g = 2.0 * (E + np.swapaxes(E, -1, -2)) @ X
    gabs = 2.0 * (Eabs + np.swapaxes(Eabs, -1, -2)) @ Xa
    gan = np.sqrt(np.sum((gabs * gabs).reshape(B, -1), axis=1))
    g_err = 2.0 * _gamma(k + T + d + 4) * gan * (1.0 + 2.0 * _gamma(n + 2)) + 1e-300
    return G, G_err, g.reshape(B, n), g_err


def _cube_points(face: np.ndarray, sign: np.ndarray, centres: np.ndarray, n: int) -> np.ndarray:
    """Cube-surface points: coordinate ``face`` set to ``sign``, the others from ``centres`` (B, n - 1)."""
    B = face.shape[0]
    y = np.empty((B, n))
    mask = np.ones((B, n), dtype=bool)
    mask[np.arange(B), face] = False
    y[mask] = centres.ravel()
    y[np.arange(B), face] = sign
    return y


class _Context:
    """Everything a batch of cells needs (floats that are rigorous bounds, and the float data)."""

    def __init__(self, **kw):
        self.__dict__.update(kw)


def certify_epsnet(problem: Problem, U0, *, delta: float | None = None, eps: float | None = None,
                   metric: str = "hessian", max_points: int = 20_000_000, time_limit: float = 60.0,
                   batch: int = 50_000, prec: int = 128, progress: bool | None = None) -> Certificate:
    """Certify a local minimum of G near ``U0`` (shape ``(T, d, k)`` or ``(T d k,)``, k = 1) by an eps-net.

    Parameters
    ----------
    problem : the instance; G is recomputed from its stored ``A*`` and ``U*``
    U0 : the centre x0 (float64, finite)
    delta : sphere radius in z; default ``mu / (16 a0 |M|^3)`` (``mu = lambda_min(M^T H(x0) M)``), where the
        quadratic margin ``mu delta^2 / 2`` beats the cubic term by a factor 2
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
    gauge = "none (k = 1: the O(1)^T orbit is finite)" if k == 1 else "not fixed (the eps-net needs k = 1)"

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
        if k != 1:
            return done("inconclusive", f"the eps-net certifies only k = 1: for k = {k} the minimum is not isolated "
                        f"(an orbit of dimension {T * k * (k - 1) // 2} through x0, on which G is constant, meets "
                        "every small sphere), so G > G(x0) on the sphere cannot hold; use the interval certificate, "
                        "which fixes the gauge on a slice", loss)
        lam, V = np.linalg.eigh(reduced_hess(x0, problem))
        margins["hessian_min_eig_mid"] = float(lam[0])
        if not lam[0] > 1e-10 * max(1.0, float(np.max(np.abs(lam)))):
            return done("inconclusive", f"the float Hessian at x0 is not positive definite (lambda_min = "
                        f"{lam[0]:.3g}): G does not rise on every small sphere, the eps-net cannot certify a minimum",
                        loss)
        Mf = V / np.sqrt(lam)[None, :] if metric == "hessian" else np.eye(n)
        Ma = arb_mat(Mf.tolist())
        MtM = Ma.transpose() * Ma
        Mnorm = math.sqrt(ar.inf_norm_upper(MtM)) * (1 + 1e-15) if metric == "hessian" else 1.0
        MF = math.sqrt(ar.upper(sum((e * e for e in Ma.entries()), arb(0)))) * (1 + 1e-15)
        Hx0 = ar.hess(U0b, E0)
        mu0 = ar.lambda_min_lower(Ma.transpose() * Hx0 * Ma)[0]
        if not mu0 > 0:
            return done("inconclusive", "could not prove the Hessian at x0 positive definite in arb", loss)
        a0_arb = max((sum((e * e for e in Ub.entries()), arb(0)).sqrt() for Ub in U0b), key=ar.upper)
        a0 = ar.upper(a0_arb)
        if delta is None:
            delta = float(mu0 / (16.0 * a0 * Mnorm ** 3)) if a0 > 0 and mu0 > 0 else 1.0 / Mnorm
        x0n = float(np.linalg.norm(x0)) * (1 + 1e-15)
        dx = Mnorm * delta  # the region lies in B(x0, dx)
        tau = 2.0 * (_gamma(n) * MF * delta + (n + 4) * _U * delta * Mnorm + _U * (x0n + dx)) * 1.01
        R = arb(dx) + arb(tau)
        a_ball = a0_arb + R
        sG_hi = arb(ar.upper(G0)).sqrt()
        Hb = 8 * a_ball * a_ball + 4 * (sG_hi + R * (2 * a0_arb + R))
        g0n = sum((e * e for e in ar.grad(U0b, E0)), arb(0)).sqrt()
        Lip = g0n + R * Hb
        hess_var = 24 * a0_arb * R + 12 * R * R
        mu = ar.lower(arb(mu0) - hess_var * arb(Mnorm) ** 2)
        # G > 0 on the ball B(x0, dx): |E(x)| >= sqrt(G(x0)) - dx (2 a0 + dx)
        lo_E = arb(max(ar.lower(G0), 0.0)).sqrt() - arb(dx) * (2 * a0_arb + arb(dx))
        ball_lo = ar.lower(lo_E * lo_E) if ar.lower(lo_E) > 0 else 0.0
        # U* (column signs matched to x0) inside the region x0 + M B(0, delta) proves the minimum global
        Ustar = problem.U_star.reshape(T, -1)
        sg = np.where(np.sum(Ustar * x0.reshape(T, -1), axis=1) >= 0, 1.0, -1.0)
        diff = arb_mat(n, 1, [arb(float(c)) - arb(float(x)) for c, x in zip((sg[:, None] * Ustar).ravel(), x0)])
        try:
            zs = Ma.solve(diff)
            ustar_inside = bool(sum((e * e for e in zs.entries()), arb(0)) < arb(delta) ** 2)
        except ZeroDivisionError:
            ustar_inside = False
        ctx = _Context(x0=x0, M=Mf, delta=delta, tau=tau, n=n, problem=problem, Mnorm=Mnorm, mu=mu,
                       a_cubic=ar.upper(a_ball), Hb=ar.upper(Hb), Lip=ar.upper(Lip), G0_hi=ar.upper(G0),
                       G0_lo=ar.lower(G0),
                       Wf=problem.A_star[None] + problem.U_star @ np.swapaxes(problem.U_star, -1, -2),
                       Wabs=np.abs(problem.A_star)[None]
                       + np.abs(problem.U_star) @ np.swapaxes(np.abs(problem.U_star), -1, -2))
    margins.update(lipschitz=ctx.Lip, hessian_bound=ctx.Hb, metric_norm=Mnorm, radius_x=dx, tau=tau,
                   hessian_min_eig_lower=mu0 / Mnorm ** 2 if metric == "euclidean" else None,
                   loss_lower_on_ball=ball_lo)

    level = 0
    if uniform and n > 1:
        level = max(0, math.ceil(math.log2(delta * math.sqrt(n - 1) / eps)))
        total = 2 * n * 2 ** (level * (n - 1))
        if total > max_points:
            margins.update(net_points=total, eps=eps)
            return done("inconclusive", f"the uniform net of covering radius {eps:.3g} on S(x0, {delta:.3g}) needs "
                        f"{total} points > max_points = {max_points}", loss)
    from tqdm.auto import tqdm

    bar = tqdm(total=None, unit="pts", desc="eps-net", disable=(not progress) if progress is not None else None,
               leave=False)
    faces = np.repeat(np.arange(n), 2)
    face_signs = np.tile([1.0, -1.0], n)
    evaluated = 0
    min_margin = math.inf
    region = f"S(x0, {delta:.3g})" if metric == "euclidean" else f"the ellipsoid x0 + M S(0, {delta:.3g})"

    def fail(reason):
        margins.update(net_points=evaluated)
        return done("inconclusive", reason, loss)

    below_msg = (f"a net point near {region} has G < G(x0) (rigorously): the test cannot pass at this delta")
    try:
        if uniform:  # the paper's net: all cells at one level, global Lipschitz bound, no refinement
            m = 2 ** level
            grid = -1.0 + (2.0 * np.arange(m) + 1.0) / m  # dyadic centres, exact
            count = m ** (n - 1)
            for f, s_ in zip(faces, face_signs):
                for start in range(0, count, batch):
                    idx = np.arange(start, min(start + batch, count))
                    digits = np.stack([(idx // m ** j) % m for j in range(n - 1)], axis=1).astype(np.int64) \
                        if n > 1 else np.zeros((idx.size, 0), dtype=np.int64)
                    ok, margin, below = _evaluate(np.full(idx.size, f), np.full(idx.size, s_), grid[digits], level,
                                                  ctx, local=False)
                    evaluated += idx.size
                    bar.update(idx.size)
                    if below:
                        return fail(below_msg)
                    if not np.all(ok):
                        margins.update(eps=net_covering_radius(delta, n, level))
                        return fail(f"uniform net (covering radius {margins['eps']:.3g}, Lipschitz {ctx.Lip:.3g}) "
                                    f"fails at {int(np.sum(~ok))} points of a batch: a finer net is needed")
                    min_margin = min(min_margin, float(np.min(margin)))
                    if time.perf_counter() - t_start > time_limit:
                        return fail(f"time limit {time_limit:g} s reached after {evaluated} net points")
            finest = level
        else:  # adaptive: split a failing cell into its 2^(n-1) halves, level by level (children made lazily)
            children = np.array(np.meshgrid(*([[-1.0, 1.0]] * (n - 1)), indexing="ij")).reshape(n - 1, -1).T
            rep = children.shape[0]
            parents = None  # failing cells of the previous level: (faces, signs, centres)
            finest = 0
            while True:
                if parents is None:
                    chunks = [(faces, face_signs, np.zeros((2 * n, n - 1)))]
                else:
                    w_child = 2.0 ** -level
                    per = max(1, batch // rep)
                    chunks = ((np.repeat(parents[0][i:i + per], rep), np.repeat(parents[1][i:i + per], rep),
                               (parents[2][i:i + per, None, :] + w_child * children[None]).reshape(-1, n - 1))
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
                if n == 1 or level >= 40:
                    return fail("a net cell fails and cannot be refined further")
                pending = sum(f[0].size for f in failing) * rep
                if evaluated + pending > max_points:
                    margins.update(eps=net_covering_radius(delta, n, level + 1))
                    return fail(f"the adaptive net would exceed max_points = {max_points} (evaluated {evaluated}, "
                                f"{pending} cells pending at level {level + 1})")
                parents = tuple(np.concatenate([f[i] for f in failing]) for i in range(3))
                level += 1
    finally:
        bar.close()
    eps_used = net_covering_radius(delta, n, finest)
    margins.update(net_points=evaluated, eps=eps_used, net_margin=min_margin)
    if ball_lo > 0:
        kind, why = "spurious", f"G >= {ball_lo:.6g} > 0 on B(x0, {dx:.3g}), so the minimum is spurious"
    elif ustar_inside:
        kind, why = "global", "U* (column signs matched) lies inside, so G(x*) <= G(U*) = 0: global (proven)"
    else:
        kind, why = "unknown", "G on the region is not proven positive and U* is not inside"
    return done("certified-minimum",
                f"G > G(x0) on all of {region} ({evaluated} net points, finest covering radius {eps_used:.3g}, "
                f"smallest margin {min_margin:.3g}): a local minimum of G lies inside, within {dx:.3g} of x0; {why}",
                loss, minimum_kind=kind)


def _evaluate(face, sign, centres, level, c: _Context, *, local: bool):
    """Test the cells: ``(ok, margin, below)``; margin is a rigorous lower bound of ``G(y) - G(x0)`` over the cell's
    patch of the sphere (valid where ok); ``below`` is True if some net point has ``G < G(x0)`` rigorously.
    The bounds are those of the module docstring."""
    n = c.n
    y = _cube_points(face, sign, centres, n)
    v = y / np.linalg.norm(y, axis=1, keepdims=True)  # ~ the unit normal nu
    X = c.x0[None] + (c.delta * v) @ c.M.T
    G, G_err, g, g_err = _float_G_grad(X.reshape(-1, c.problem.T, c.problem.d, c.problem.k), c.problem, c.Wf, c.Wabs)
    rho = net_covering_radius(c.delta, n, level)  # in z
    rho_x = c.Mnorm * rho + c.tau
    drop = np.full(G.shape, c.Lip * rho_x)
    if local:
        up = 1.0 + 4.0 * _gamma(n + 4)
        gn_up = (np.linalg.norm(g, axis=1) + g_err) * up
        gz = g @ c.M  # M^T g
        gz_err = c.Mnorm * g_err + _gamma(n) * math.sqrt(n) * np.linalg.norm(np.abs(g) @ np.abs(c.M), axis=1)
        gz_up = (np.linalg.norm(gz, axis=1) + gz_err) * up
        gnu = np.sum(gz * v, axis=1)
        gnu_up = gnu + (gz_err + 4.0 * (n + 4) * _U * gz_up)
        Pg = gz - gnu[:, None] * v
        Pg_up = np.linalg.norm(Pg, axis=1) * up + gz_err + 16.0 * (n + 4) * _U * gz_up
        B2 = np.maximum(np.maximum(gnu_up, 0.0) / (2.0 * c.delta) - 0.5 * c.mu, 0.0)
        local_drop = (Pg_up * rho + B2 * rho * rho + 4.0 * c.a_cubic * rho_x ** 3
                      + gn_up * c.tau + c.Hb * (c.Mnorm * rho * c.tau + 0.5 * c.tau * c.tau))
        drop = np.minimum(drop, local_drop)
    margin = (G - G_err) - c.G0_hi - drop
    margin = margin - 8 * _U * (np.abs(G) + G_err + abs(c.G0_hi) + drop)  # the few float operations above
    below = bool(np.any(G + G_err < c.G0_lo))
    return margin > 0, margin, below
