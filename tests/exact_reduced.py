"""Exact rational oracles of the reduced loss G for the certificate tests (no closed-form derivatives).

``G`` is computed straight from its definition (docs/convention.md) in ``fractions.Fraction`` from the float64
inputs, which are exact binary rationals. Derivatives come from G alone: along a direction v, ``phi(t) = G(x + t v)``
is a polynomial of degree 4, so the five-point stencils are exact:
``phi'(0) = (phi(-2h) - 8 phi(-h) + 8 phi(h) - phi(2h)) / (12 h)`` (exact up to degree 4) and
``phi''(0) = (-phi(-2h) + 16 phi(-h) - 30 phi(0) + 16 phi(h) - phi(2h)) / (12 h^2)`` (exact up to degree 5).
"""

from __future__ import annotations

from fractions import Fraction

import numpy as np


def exact_G(problem, x) -> Fraction:
    """``G(x) = sum_t ||D_t - mean_s D_s||_F^2``, ``D_t = U_t U_t^T - A* - U*_t U*_t^T``, exactly."""
    T, d, k = problem.T, problem.d, problem.k
    U = [[[Fraction(v) for v in row] for row in Ut] for Ut in np.asarray(x, dtype=object).reshape(T, d, k)]
    A = [[Fraction(float(v)) for v in row] for row in problem.A_star]
    Us = [[[Fraction(float(v)) for v in row] for row in Ut] for Ut in problem.U_star]
    D = [[[sum(U[t][i][a] * U[t][j][a] - Us[t][i][a] * Us[t][j][a] for a in range(k)) - A[i][j]
           for j in range(d)] for i in range(d)] for t in range(T)]
    mean = [[sum(D[t][i][j] for t in range(T)) / T for j in range(d)] for i in range(d)]
    return sum((D[t][i][j] - mean[i][j]) ** 2 for t in range(T) for i in range(d) for j in range(d))


def _frac_vec(x):
    return [Fraction(float(v)) if not isinstance(v, Fraction) else v for v in np.ravel(np.asarray(x, dtype=object))]


def _phi(problem, x, v, t):
    return exact_G(problem, np.array([xi + t * vi for xi, vi in zip(x, v)], dtype=object))


def exact_grad(problem, x) -> list:
    """Exact gradient, one coordinate at a time (five-point stencil, exact for the quartic G)."""
    x = _frac_vec(x)
    n = len(x)
    h = Fraction(1)
    out = []
    for i in range(n):
        e = [Fraction(int(j == i)) for j in range(n)]
        f = {s: _phi(problem, x, e, s * h) for s in (-2, -1, 1, 2)}
        out.append((f[-2] - 8 * f[-1] + 8 * f[1] - f[2]) / (12 * h))
    return out


def exact_hess(problem, x) -> list:
    """Exact Hessian from second directional derivatives: ``H_ij = (q(e_i + e_j) - q(e_i) - q(e_j)) / 2``."""
    x = _frac_vec(x)
    n = len(x)
    g0 = exact_G(problem, np.array(x, dtype=object))

    def q(v):
        f = {s: _phi(problem, x, v, Fraction(s)) for s in (-2, -1, 1, 2)}
        return (-f[-2] + 16 * f[-1] - 30 * g0 + 16 * f[1] - f[2]) / 12

    e = [[Fraction(int(j == i)) for j in range(n)] for i in range(n)]
    diag = [q(e[i]) for i in range(n)]
    H = [[None] * n for _ in range(n)]
    for i in range(n):
        H[i][i] = diag[i]
        for j in range(i + 1, n):
            H[i][j] = H[j][i] = (q([a + b for a, b in zip(e[i], e[j])]) - diag[i] - diag[j]) / 2
    return H
