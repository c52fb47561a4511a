"""Ball-arithmetic (python-flint ``arb``) versions of the reduced loss G, its gradient and its Hessian (private).

Same closed forms as :mod:`theory.reduced` (docs/convention.md), written over ``flint.arb`` / ``flint.arb_mat`` so
that every result is a ball that contains the exact real value for every point of the input balls (outward rounding
is arb's). theory's float64 versions cannot serve here: a certificate needs enclosures, not approximations, and arb
has no automatic differentiation, so the three closed forms are written out once more, kept small, and tested
against theory's floats (tests/landscape/test_certify_interval.py).

The problem is re-read from its stored float64 arrays ``A*`` (d, d) and ``U*`` (T, d, k), which are exact binary
numbers; ``W_t = A* + U*_t U*_t^T`` is formed in arb, so the exact instance (not its rounded ``problem.W``) is the one
certified. ``U`` is given as a list of T ``arb_mat`` of shape (d, k), each entry a ball.

- ``D_t = U_t U_t^T - W_t``, ``E_t = D_t - mean_s D_s``, ``G = sum_t ||E_t||_F^2``
- ``dG/dU_t = 2 (E_t + E_t^T) U_t``
- ``H[(s,i,a),(t,j,b)] = (2 delta_st - 2/T) (2 delta_ij (U_s^T U_t)[a,b] + 2 U_t[i,b] U_s[j,a])
  + delta_st delta_ab 2 (E_t + E_t^T)[i,j]``  (theory.reduced.reduced_hess with theory.meta.gram_blocks)
"""

from __future__ import annotations

from contextlib import contextmanager

import numpy as np
from flint import arb, arb_mat, ctx

from ._batched import eigh

__all__: list[str] = []


@contextmanager
def working_precision(prec: int):
    """Set ``flint.ctx.prec`` (bits) for the block and restore the caller's value afterwards."""
    old = ctx.prec
    ctx.prec = int(prec)
    try:
        yield
    finally:
        ctx.prec = old


def balls(x: np.ndarray, radius=0.0) -> list:
    """Flat list of balls ``[x_i +/- radius_i]``; ``x`` float64 (exact), ``radius`` scalar or array (rounded up)."""
    x = np.asarray(x, dtype=np.float64).ravel()
    r = np.broadcast_to(np.asarray(radius, dtype=np.float64), x.shape)
    return [arb(float(xi), float(ri)) if ri > 0 else arb(float(xi)) for xi, ri in zip(x, r)]


def U_blocks(xb: list, T: int, d: int, k: int) -> list:
    """Split a flat list of ``T d k`` balls (docs/convention.md order) into T ``arb_mat`` of shape (d, k)."""
    dk = d * k
    return [arb_mat(d, k, xb[t * dk:(t + 1) * dk]) for t in range(T)]


def task_matrices(problem) -> list:
    """``W_t = A* + U*_t U*_t^T`` in arb from the stored float64 ``A*`` and ``U*``; T ``arb_mat`` (d, d)."""
    A = arb_mat(problem.A_star.tolist())
    out = []
    for Ut in problem.U_star:
        Us = arb_mat(Ut.tolist())
        out.append(A + Us * Us.transpose())
    return out


def residuals(Us: list, Ws: list) -> list:
    """``E_t = D_t - mean_s D_s``, ``D_t = U_t U_t^T - W_t``; T ``arb_mat`` (d, d)."""
    D = [U * U.transpose() - W for U, W in zip(Us, Ws)]
    T = len(D)
    mean = D[0]
    for Dt in D[1:]:
        mean = mean + Dt
    mean = mean / T
    return [Dt - mean for Dt in D]


def loss(E: list):
    """``G = sum_t ||E_t||_F^2`` (an arb ball)."""
    total = arb(0)
    for Et in E:
        for e in Et.entries():
            total += e * e
    return total


def grad(Us: list, E: list) -> list:
    """``dG/dU_t = 2 (E_t + E_t^T) U_t``, flat list of ``T d k`` balls."""
    out = []
    for U, Et in zip(Us, E):
        out.extend((2 * ((Et + Et.transpose()) * U)).entries())
    return out


def hess(Us: list, E: list) -> arb_mat:
    """Dense Hessian of G, an ``arb_mat`` of shape ``(T d k, T d k)`` (formula in the module docstring)."""
    T = len(Us)
    d, k = Us[0].nrows(), Us[0].ncols()
    dk = d * k
    n = T * dk
    ent = [U.entries() for U in Us]  # ent[t][i * k + a] = U_t[i, a]
    gram = {}
    for s in range(T):
        for t in range(s, T):
            gram[s, t] = (Us[s].transpose() * Us[t]).entries()  # (U_s^T U_t)[a, b] at a * k + b
    symE = [(2 * (Et + Et.transpose())).entries() for Et in E]  # 2 (E_t + E_t^T)
    two = arb(2)
    off = -two / T
    diag = two + off
    rows = [[None] * n for _ in range(n)]
    for s in range(T):
        for t in range(s, T):
            c = diag if s == t else off
            Ust, Uss, G = ent[t], ent[s], gram[s, t]
            for i in range(d):
                for a in range(k):
                    r = s * dk + i * k + a
                    for j in range(d):
                        for b in range(k):
                            col = t * dk + j * k + b
                            if s == t and col < r:
                                continue
                            v = two * Ust[i * k + b] * Uss[j * k + a]
                            if i == j:
                                v += two * G[a * k + b]
                            v = c * v
                            if s == t and a == b:
                                v += symE[t][i * d + j]
                            rows[r][col] = v
                            rows[col][r] = v
    return arb_mat(rows)


def norm_upper(entries):
    """A ball all of whose points are >= the 2-norm of the balls ``entries`` (use it only as an upper bound).

    Why not ``sum(e * e).sqrt()``: arb squares a ball straddling zero, ``[0 +/- r]``, to ``[0 +/- r^2]``, whose square
    root is NaN (as at an exact critical point, where every gradient entry straddles zero); squaring the upper bounds
    of ``|e|`` (``abs_upper``, exact non-negative numbers) keeps the sum's lower end >= 0 and the root finite."""
    return sum((e.abs_upper() ** 2 for e in entries), arb(0)).sqrt()


def upper(x) -> float:
    """A float64 upper bound of the ball ``x`` (``+inf`` for a NaN or infinite ball)."""
    if not x.is_finite():
        return float("inf")
    u = x.upper()
    f = float(u)
    return f if f >= u else float(np.nextafter(f, np.inf))


def lower(x) -> float:
    """A float64 lower bound of the ball ``x`` (``-inf`` for a NaN or infinite ball)."""
    if not x.is_finite():
        return float("-inf")
    lo = x.lower()
    f = float(lo)
    return f if f <= lo else float(np.nextafter(f, -np.inf))


def mid(x) -> float:
    """The float64 nearest to the ball's midpoint (NaN for a NaN ball)."""
    return float(x.mid()) if x.is_finite() else float("nan")


def mid_matrix(M: arb_mat) -> np.ndarray:
    """Midpoints of an ``arb_mat`` as a float64 array."""
    return np.array([[mid(M[i, j]) for j in range(M.ncols())] for i in range(M.nrows())], dtype=np.float64)


def gershgorin_lower(A: arb_mat) -> float:
    """Rigorous lower bound (float) of ``min_i A_ii - sum_{j != i} |A_ij|``, which bounds from below every
    eigenvalue of every symmetric matrix in the ball matrix A (Gershgorin)."""
    m = A.nrows()
    lo = float("inf")
    for i in range(m):
        row = A[i, i]
        for j in range(m):
            if j != i:
                row -= abs(A[i, j])
        lo = min(lo, lower(row))
    return lo


def inf_norm_upper(A: arb_mat) -> float:
    """Upper bound of the max row sum of ``|A|`` (>= the spectral norm when A is symmetric)."""
    return max(upper(sum((abs(A[i, j]) for j in range(A.ncols())), arb(0))) for i in range(A.nrows()))


def lambda_min_lower(A: arb_mat):
    """Rigorous lower bound of ``lambda_min`` over the symmetric matrices in the ball matrix A (m x m).

    With the float eigenvectors V of ``mid(A)``, ``B = V^T A V`` is congruent to A (Sylvester), Gershgorin on B
    bounds ``lambda_min(B)`` from below, and if that bound ``b`` is positive, ``lambda_min(A) >= b / |V^T V|``
    (Ostrowski; ``|V^T V|_2 <= |V^T V|_inf``), which also proves every matrix in A positive definite.
    Returns ``(bound, lam_mid, V)``: bound is ``-inf`` when b <= 0 (nothing proven), ``lam_mid`` the float
    eigenvalues of the midpoint (ascending), V its eigenvectors (columns).
    """
    Am = mid_matrix(A)
    if not np.all(np.isfinite(Am)):
        return float("-inf"), np.full(A.nrows(), np.nan), None
    lam, V = eigh(0.5 * (Am + Am.T))
    Va = arb_mat(V.tolist())
    b = gershgorin_lower(Va.transpose() * A * Va)
    if not b > 0:
        return float("-inf"), lam, V
    bound = b / inf_norm_upper(Va.transpose() * Va)
    return float(np.nextafter(bound, -np.inf)), lam, V
