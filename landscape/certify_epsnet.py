"""The eps-net certificate of a local minimum of the reduced loss G (the paper's Appendix D.2).

The pieces: :mod:`landscape.certify_epsnet_bounds` (the bounds at x0, in arb), :mod:`landscape.certify_epsnet_net`
(the net and the test of its cells), :mod:`landscape.certify_common` (gauge slice, transversality, minimum kind).

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
absolute values), plus the propagated error of the float ``E0``; the constants are in
:func:`landscape.certify_epsnet_net.float_dG_grad`.
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
from dataclasses import dataclass


from theory.problem import Problem

from . import _arb_reduced as ar
from .certificate import Certificate, CertificateError
from .certify_common import integer, minimum_kind, positive, validate_point
from .certify_epsnet_bounds import net_setup
from .certify_epsnet_net import NetLimits, NetOverflow, NetRun, adaptive_net, net_covering_radius, uniform_net

__all__ = ["certify_epsnet", "net_covering_radius", "METRICS"]

METRICS = ("hessian", "euclidean")


@dataclass(frozen=True)
class _Options:
    """The checked options of :func:`certify_epsnet` (``metric`` is ``"euclidean"`` for a uniform net)."""

    delta: float | None
    eps: float | None
    metric: str
    max_points: int
    time_limit: float
    batch: int
    prec: int


def _options(delta, eps, metric, max_points, time_limit, batch, prec) -> _Options:
    delta = positive("delta", delta)
    eps = positive("eps", eps)
    time_limit = positive("time_limit", time_limit, allow_none=False)
    if metric not in METRICS:
        raise CertificateError(f"metric must be one of {METRICS}, got {metric!r}")
    max_points = integer("max_points", max_points, 1)
    batch = integer("batch", batch, 1)
    prec = integer("prec (bits)", prec, 53)
    return _Options(delta, eps, "euclidean" if eps is not None else metric, max_points, time_limit, batch, prec)


def _uniform_level(delta: float, m: int, eps: float, max_points: int) -> tuple[int, str | None, int]:
    """The level whose uniform net has covering radius ``<= eps``, why it cannot be walked (None if it can) and its
    number of points."""
    level = max(0, math.ceil(math.log2(delta * math.sqrt(m - 1) / eps))) if m > 1 else 0
    total = 2 * m * 2 ** (level * (m - 1))
    if total > max_points:
        return level, (f"the uniform net of covering radius {eps:.3g} on S(x0, {delta:.3g}) needs {total} points > "
                       f"max_points = {max_points}"), total
    return level, None, total


def _walk(net, opts: _Options, level: int, below: str, t_start: float, progress) -> NetRun:
    """Walk the uniform (``opts.eps`` given) or adaptive net with a tqdm bar; an overflow ends the walk, said so."""
    from tqdm.auto import tqdm

    bar = tqdm(total=None, unit="pts", desc="eps-net", disable=(not progress) if progress is not None else None,
               leave=False)
    counted = [0]

    def tick(count: int) -> None:
        counted[0] += count
        bar.update(count)

    lim = NetLimits(opts.max_points, opts.time_limit, t_start, opts.batch, tick, below)
    try:
        return uniform_net(net, level, lim) if opts.eps is not None else adaptive_net(net, lim)
    except NetOverflow:
        return NetRun(counted[0], math.inf, level, "the float64 evaluation of G or its gradient on the net "
                      "overflows: nothing can be proven here")
    finally:
        bar.close()


def certify_epsnet(problem: Problem, U0, *, delta: float | None = None, eps: float | None = None,
                   metric: str = "hessian", max_points: int = 20_000_000, time_limit: float = 60.0,
                   batch: int = 50_000, prec: int = 128, progress: bool | None = None) -> Certificate:
    """Certify a local minimum of G near ``U0`` (shape ``(T, d, k)`` or ``(T d k,)``) by an eps-net.

    Parameters
    ----------
    problem : the instance; G is recomputed from its stored ``A*`` and ``U*``
    U0 : the centre x0 (float64, finite)
    delta : sphere radius in z; default ``mu / (64 (m-1)^1.5 a0 |M|^3)`` (``mu = lambda_min(M^T H(x0) M)``), where
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
    Certificate
        Method ``"epsnet"``; ``radius`` is delta (in z); margins hold ``lipschitz``, ``hessian_bound``,
        ``metric_norm`` (``|M|``), ``radius_x`` (``|M| delta``), ``eps`` (finest covering radius used, in z),
        ``net_points``, ``net_margin`` (smallest passing lower bound of ``G(y) - G(x0)`` on the sphere),
        ``loss_lower_on_ball``.

    Raises
    ------
    CertificateError
        A ``problem`` that is not a :class:`theory.problem.Problem`, a ``U0`` of the wrong shape or not finite, or an
        option outside its rule (named in the message).
    """
    t_start = time.perf_counter()
    x0 = validate_point(problem, U0)
    opts = _options(delta, eps, metric, max_points, time_limit, batch, prec)
    margins: dict = {"metric": opts.metric}
    with ar.working_precision(opts.prec):
        s = net_setup(problem, x0, opts.delta, opts.metric, margins)
    net = s.net

    def done(verdict, reason, kind=None):
        return Certificate(verdict=verdict, method="epsnet", loss=s.loss, radius=net.delta if net else opts.delta,
                           seconds=time.perf_counter() - t_start, reason=reason, margins=margins, gauge=s.gauge.text,
                           n=problem.n_reduced, minimum_kind=kind)

    if s.failure is not None:
        return done("inconclusive", s.failure)
    m = net.m
    if 2 * m > opts.max_points:
        margins.update(net_points=0)
        return done("inconclusive", f"even the coarsest net (2 m = {2 * m} points) exceeds max_points = "
                    f"{opts.max_points}")
    level = 0
    if opts.eps is not None:
        level, too_many, total = _uniform_level(net.delta, m, opts.eps, opts.max_points)
        if too_many:
            margins.update(net_points=total, eps=opts.eps)
            return done("inconclusive", too_many)
    region = f"S(x0, {net.delta:.3g})" if opts.metric == "euclidean" else f"the ellipsoid x0 + M S(0, {net.delta:.3g})"
    run = _walk(net, opts, level, f"a net point near {region} has G < G(x0) (rigorously): the test cannot pass at "
                "this delta", t_start, progress)
    if run.failure is not None:
        if run.eps is not None:
            margins["eps"] = run.eps
        margins["net_points"] = run.evaluated
        return done("inconclusive", run.failure)
    eps_used = net_covering_radius(net.delta, m, run.finest)
    margins.update(net_points=run.evaluated, eps=eps_used, net_margin=run.min_margin)
    inside = f"B(x0, {net.delta:.3g})" if opts.metric == "euclidean" else f"x0 + M B(0, {net.delta:.3g})"
    kind, why = minimum_kind(lower=s.ball_lo, upper=s.loss[1], ustar_inside=s.ustar_inside, zero_upper=s.zero_upper,
                             region=inside)
    on_slice = ("on the gauge slice (transversal to the orbits: a local minimum of G modulo the orbit) "
                if s.gauge.Q is not None else "")
    return done("certified-minimum",
                f"G > G(x0) on all of {region} ({run.evaluated} net points, finest covering radius {eps_used:.3g}, "
                f"smallest margin {run.min_margin:.3g}): a local minimum of G {on_slice}lies inside, within "
                f"{s.dx:.3g} of x0; {why}", kind)
