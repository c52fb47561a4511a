"""The sphere net of the eps-net certificate and the test of its cells (:mod:`landscape.certify_epsnet`, whose module
docstring gives the maths: the net's proven covering radius, the Taylor and Lipschitz bounds of each cell, and the
rounding allowances of the float64 evaluation, after Higham, *Accuracy and Stability of Numerical Algorithms*, 2nd
ed., ch. 3).

A net is walked either uniformly (the paper's version: one level, the global Lipschitz bound only) or adaptively
(a failing cell is split into its ``2^(m-1)`` halves, level by level); both stop at the first rigorous sign that the
test cannot pass, at ``max_points`` or at the time limit, and say why.

>>> net_covering_radius(1.0, 5, 2)   # delta 2^-2 sqrt(5 - 1)
0.5
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np

__all__ = ["UNIT_ROUNDOFF", "gamma", "net_covering_radius", "float_dG_grad", "cube_points", "NetBounds", "NetRun",
           "NetOverflow", "evaluate", "uniform_net", "adaptive_net"]

#: u = 2^-53, the unit roundoff of float64
UNIT_ROUNDOFF = 2.0 ** -53


def gamma(K: int) -> float:
    """Higham's ``gamma_K = K u / (1 - K u)``: the relative error bound of K rounded operations."""
    return K * UNIT_ROUNDOFF / (1.0 - K * UNIT_ROUNDOFF)


def net_covering_radius(delta: float, n: int, level: int) -> float:
    """Covering radius ``delta 2^-level sqrt(n - 1)`` of the sphere net whose cells have half-width ``2^-level`` on
    the faces of ``[-1, 1]^n`` (exact arithmetic; :mod:`landscape.certify_epsnet`)."""
    return delta * 2.0 ** (-level) * math.sqrt(max(n - 1, 0))


def float_dG_grad(h: np.ndarray, U0: np.ndarray, E0f: np.ndarray, e0: np.ndarray):
    """``G(x0 + h) - G(x0)`` and ``grad G(x0 + h)`` at the float displacements h (B, T, d, k), with rigorous bounds
    of their rounding errors; ``x0 + h`` is the exact real point (never rounded).

    Exact identities (E is quadratic in U): ``E(x0 + h) = E0 + Delta``, ``Delta = centred(h_t U0_t^T + U0_t h_t^T +
    h_t h_t^T)``, so ``G(x0 + h) - G(x0) = sum (2 E0 + Delta) * Delta`` and ``grad = 2 sym(E0 + Delta) (U0 + h)``.
    Evaluating the difference directly (not ``G(x0 + h)`` minus ``G(x0)``) keeps the rounding error proportional to
    |h| instead of to G. ``E0f`` (T, d, d) is E(x0) rounded to float64 and ``e0`` a bound of its entrywise error
    (both from arb). Rounding counts: ``K_Delta = k + T + 3``, ``2 K_Delta + 1 + T d^2`` for the difference,
    ``k + T + d + 6`` for each gradient entry; every bound is doubled to absorb its own rounding.

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
    dG_err = 2.0 * gamma(2 * K_D + 1 + T * d * d) * S_abs + 2.0 * 2.0 * e0_term * (1 + 4 * gamma(T * d * d + 2)) \
        + 1e-300
    E = E0f[None] + Delta
    U = U0[None] + h
    g = 2.0 * (E + np.swapaxes(E, -1, -2)) @ U
    Eabs = np.abs(E0f)[None] + Delta_abs
    Uabs = Ua + ha
    gabs = 2.0 * (Eabs + np.swapaxes(Eabs, -1, -2)) @ Uabs
    gerr_e0 = 2.0 * (e0 + np.swapaxes(e0, -1, -2))[None] @ Uabs
    ent = 2.0 * gamma(k + T + d + 6) * gabs + 2.0 * gerr_e0
    g_err = np.sqrt(np.sum((ent * ent).reshape(B, -1), axis=1)) * (1.0 + 4.0 * gamma(n + 2)) + 1e-300
    return dG, dG_err, g.reshape(B, n), g_err


def cube_points(face: np.ndarray, sign: np.ndarray, centres: np.ndarray, n: int) -> np.ndarray:
    """Cube-surface points (B, n): coordinate ``face`` set to ``sign``, the others from ``centres`` (B, n - 1)."""
    B = face.shape[0]
    y = np.empty((B, n))
    mask = np.ones((B, n), dtype=bool)
    mask[np.arange(B), face] = False
    y[mask] = centres.ravel()
    y[np.arange(B), face] = sign
    return y


class NetOverflow(ArithmeticError):
    """The float evaluation on the net gave NaN or inf (a point too far out for float64)."""


@dataclass(frozen=True)
class NetBounds:
    """Everything a batch of cells needs: the float data at x0 and rigorous bounds (floats rounded outward).

    ``U0`` (T, d, k), ``E0f`` (T, d, d) E(x0) in float64 with entrywise error bound ``e0``; ``M`` (n, m) the metric;
    ``delta`` the sphere radius in z; ``tau`` the bound of ``|h_f - M s|``; ``m`` net dimension, ``nx = n``;
    ``Mnorm`` ``|M|_2``; ``mu`` lower bound of ``lambda_min(M^T H M)`` minus the Hessian variation; ``a_cubic``,
    ``Hb``, ``Lip`` the bounds of :mod:`landscape.certify_epsnet`'s module docstring.
    """

    U0: np.ndarray
    E0f: np.ndarray
    e0: np.ndarray
    M: np.ndarray
    delta: float
    tau: float
    m: int
    nx: int
    Mnorm: float
    mu: float
    a_cubic: float
    Hb: float
    Lip: float


def evaluate(face, sign, centres, level: int, c: NetBounds, *, local: bool):
    """Test the cells: ``(ok, margin, below)``; margin is a rigorous lower bound of ``G(y) - G(x0)`` over the cell's
    patch of the sphere (valid where ok); ``below`` is True if some net point has ``G < G(x0)`` rigorously.
    ``local``: use the Taylor bound at the cell as well as the global Lipschitz bound.

    Raises
    ------
    NetOverflow
        A margin is not finite.
    """
    n = c.m
    y = cube_points(face, sign, centres, n)
    v = y / np.linalg.norm(y, axis=1, keepdims=True)  # ~ the unit normal nu
    h = (c.delta * v) @ c.M.T  # the net point is the exact real point x0 + h
    dG, dG_err, g, g_err = float_dG_grad(h.reshape((-1,) + c.U0.shape), c.U0, c.E0f, c.e0)
    rho = net_covering_radius(c.delta, n, level)  # in z
    rho_x = c.Mnorm * rho + c.tau
    drop = np.full(dG.shape, c.Lip * rho_x)
    if local:
        drop = np.minimum(drop, _local_drop(c, v, g, g_err, rho, rho_x))
    margin = (dG - dG_err) - drop
    margin = margin - 8 * UNIT_ROUNDOFF * (np.abs(dG) + dG_err + drop)  # the few float operations above
    if not np.all(np.isfinite(margin)):
        raise NetOverflow
    below = bool(np.any(dG + dG_err < 0))
    return margin > 0, margin, below


def _local_drop(c: NetBounds, v, g, g_err, rho: float, rho_x: float):
    """The Taylor bound of ``G(s) - G(y)`` over each cell (module docstring of :mod:`landscape.certify_epsnet`)."""
    n, u = c.m, UNIT_ROUNDOFF
    up = 1.0 + 4.0 * gamma(n + 4)
    gn_up = (np.linalg.norm(g, axis=1) + g_err) * (1.0 + 4.0 * gamma(c.nx + 4))
    gz = g @ c.M  # M^T g
    gz_err = c.Mnorm * g_err + gamma(c.nx) * math.sqrt(c.nx) * np.linalg.norm(np.abs(g) @ np.abs(c.M), axis=1)
    gz_up = (np.linalg.norm(gz, axis=1) + gz_err) * up
    gnu = np.sum(gz * v, axis=1)
    gnu_up = gnu + (gz_err + 4.0 * (n + 4) * u * gz_up)
    Pg = gz - gnu[:, None] * v
    Pg_up = np.linalg.norm(Pg, axis=1) * up + gz_err + 16.0 * (n + 4) * u * gz_up
    B2 = np.maximum(np.maximum(gnu_up, 0.0) / (2.0 * c.delta) - 0.5 * c.mu, 0.0)
    return (Pg_up * rho + B2 * rho * rho + 4.0 * c.a_cubic * rho_x ** 3
            + gn_up * c.tau + c.Hb * (c.Mnorm * rho * c.tau + 0.5 * c.tau * c.tau))


@dataclass(frozen=True)
class NetRun:
    """How a net walk ended: ``evaluated`` net points, ``min_margin`` (smallest passing margin), ``finest`` (level of
    the finest net, valid when ``failure`` is None), ``failure`` (why the test did not pass, or None) and ``eps`` (a
    covering radius to report with the failure, or None)."""

    evaluated: int
    min_margin: float
    finest: int
    failure: str | None = None
    eps: float | None = None


@dataclass(frozen=True)
class NetLimits:
    """Where a walk gives up: ``max_points`` net points, ``time_limit`` seconds after ``t_start``
    (``time.perf_counter``), with ``batch`` points per vectorised evaluation, ``tick(count)`` after each and the
    ``below`` message when a net point has G < G(x0)."""

    max_points: int
    time_limit: float
    t_start: float
    batch: int
    tick: object
    below: str

    def out_of_time(self) -> bool:
        return time.perf_counter() - self.t_start > self.time_limit


def _first_faces(m: int):
    """The 2 m face centres of the coarsest net: (faces, signs, centres (2m, m - 1))."""
    return np.repeat(np.arange(m), 2), np.tile([1.0, -1.0], m), np.zeros((2 * m, m - 1))


def uniform_net(c: NetBounds, level: int, lim: NetLimits) -> NetRun:
    """The paper's net: every cell at ``level``, the global Lipschitz bound only, no refinement."""
    m = c.m
    faces, signs, _ = _first_faces(m)
    mg = 2 ** level
    grid = -1.0 + (2.0 * np.arange(mg) + 1.0) / mg  # dyadic centres, exact
    count = mg ** (m - 1)
    evaluated, min_margin = 0, math.inf
    for f, s_ in zip(faces, signs):
        for start in range(0, count, lim.batch):
            idx = np.arange(start, min(start + lim.batch, count))
            digits = np.stack([(idx // mg ** j) % mg for j in range(m - 1)], axis=1).astype(np.int64) \
                if m > 1 else np.zeros((idx.size, 0), dtype=np.int64)
            ok, margin, below = evaluate(np.full(idx.size, f), np.full(idx.size, s_), grid[digits], level, c,
                                         local=False)
            evaluated += idx.size
            lim.tick(idx.size)
            if below:
                return NetRun(evaluated, min_margin, level, lim.below)
            if not np.all(ok):
                eps = net_covering_radius(c.delta, m, level)
                return NetRun(evaluated, min_margin, level, f"uniform net (covering radius {eps:.3g}, Lipschitz "
                              f"{c.Lip:.3g}) fails at {int(np.sum(~ok))} points of a batch: a finer net is needed", eps)
            min_margin = min(min_margin, float(np.min(margin)))
            if lim.out_of_time():
                return NetRun(evaluated, min_margin, level,
                              f"time limit {lim.time_limit:g} s reached after {evaluated} net points")
    return NetRun(evaluated, min_margin, level)


def _children_chunks(parents, children, level: int, batch: int):
    """The cells of ``level`` that split the failing ``parents`` (faces, signs, centres), in chunks of about
    ``batch`` points."""
    rep = children.shape[0]
    per = max(1, batch // rep)
    w_child = 2.0 ** -level
    m1 = children.shape[1]
    return ((np.repeat(parents[0][i:i + per], rep), np.repeat(parents[1][i:i + per], rep),
             (parents[2][i:i + per, None, :] + w_child * children[None]).reshape(-1, m1))
            for i in range(0, parents[0].size, per))


def adaptive_net(c: NetBounds, lim: NetLimits) -> NetRun:
    """Split each failing cell into its ``2^(m-1)`` halves, level by level, until every cell passes (children made
    lazily: their sign patterns are built only once a cell fails)."""
    m = c.m
    rep = 2 ** (m - 1)  # children per cell
    chunks, children, level = [_first_faces(m)], None, 0
    evaluated, min_margin = 0, math.inf
    while True:
        failing = []
        for cf, cs, cc in chunks:
            ok, margin, below = evaluate(cf, cs, cc, level, c, local=True)
            evaluated += cf.size
            lim.tick(cf.size)
            if below:
                return NetRun(evaluated, min_margin, level, lim.below)
            if np.any(ok):
                min_margin = min(min_margin, float(np.min(margin[ok])))
            if not np.all(ok):
                failing.append((cf[~ok], cs[~ok], cc[~ok]))
            if lim.out_of_time():
                return NetRun(evaluated, min_margin, level, f"time limit {lim.time_limit:g} s reached after "
                              f"{evaluated} net points (level {level})")
        if not failing:
            return NetRun(evaluated, min_margin, level)
        if m == 1 or level >= 40:
            return NetRun(evaluated, min_margin, level, "a net cell fails and cannot be refined further")
        pending = sum(f[0].size for f in failing) * rep  # Python int: no overflow for large m
        if evaluated + pending > lim.max_points:
            return NetRun(evaluated, min_margin, level, f"the adaptive net would exceed max_points = "
                          f"{lim.max_points} (evaluated {evaluated}, {pending} cells pending at level {level + 1})",
                          net_covering_radius(c.delta, m, level + 1))
        if children is None:
            bits = (np.arange(rep)[:, None] >> np.arange(m - 1)[None, :]) & 1
            children = 2.0 * bits - 1.0  # (2^(m-1), m-1) sign patterns
        level += 1
        parents = tuple(np.concatenate([f[i] for f in failing]) for i in range(3))
        chunks = _children_chunks(parents, children, level, lim.batch)
