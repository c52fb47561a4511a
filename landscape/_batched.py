"""The reduced loss G, its gradient and dense Hessian on a stack of points (private).

Why this exists next to :mod:`theory.reduced`: the functions there take one point, and at the sizes the search runs
(n = T d k = 9) NumPy's per-call overhead, not arithmetic, sets the speed. The search iterates many starts in
lock-step, so it needs the same formulas over a leading batch axis ``B``. The formulas are those of
:mod:`theory.reduced` (docs/convention.md), and ``tests/landscape/test_landscape_search.py`` checks every function here against theory's on each slice.

Shapes: ``U`` is ``(B, T, d, k)``; flat points are ``(B, n)`` with ``n = T d k`` in theory's order. ``problem`` is a
:class:`theory.problem.Problem` (one instance for every row) or an array of task matrices ``W`` of shape
``(B, T, d, d)`` (one instance per row: the lock-step batch over instances of :mod:`landscape.lockstep`); every row's
arithmetic is the same either way, so a row's result does not depend on the other rows of its batch.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from theory.problem import Problem


def eigh(H: np.ndarray):
    """``numpy.linalg.eigh`` of a symmetric matrix ``(n, n)`` or a stack ``(B, n, n)``: ``(lam, V)``, eigenvalues
    ascending, eigenvectors as columns.

    NumPy's bundled LAPACK (``dsyevd`` with eigenvectors) fails to converge on rare finite symmetric matrices (one
    60 x 60 Hessian met by the search at (d, k, T) = (10, 2, 3) is kept in ``tests/landscape/data``), and then
    raises for the whole stack. Here the stack is retried one matrix at a time, and a matrix NumPy still refuses is
    decomposed by SciPy's ``eigh`` with the MRRR driver (``driver="evr"``), so one hard matrix neither stops a
    batch nor changes the other rows' results. A non-finite matrix gives NaN eigenvalues and eigenvectors. ``V`` is
    C-ordered on every path, as NumPy's.
    """
    try:
        return np.linalg.eigh(H)
    except np.linalg.LinAlgError:
        if H.ndim == 2:
            if not np.all(np.isfinite(H)):  # NumPy 2 raises here instead of returning NaN
                return np.full(H.shape[:1], np.nan), np.full(H.shape, np.nan)
            import scipy.linalg

            lam, V = scipy.linalg.eigh(H, driver="evr")
            return lam, np.ascontiguousarray(V)  # SciPy's is Fortran-ordered; sums over V depend on the order
    lam = np.empty(H.shape[:-1])
    V = np.empty(H.shape)
    for i, a in enumerate(H):
        lam[i], V[i] = eigh(a)
    return lam, V


def residuals(U: np.ndarray, problem: Problem | np.ndarray) -> np.ndarray:
    """``E_t = D_t - mean_s D_s``, ``D_t = U_t U_t^T - W_t``; ``(B, T, d, k) -> (B, T, d, d)``."""
    D = U @ np.swapaxes(U, -1, -2) - (problem.W if isinstance(problem, Problem) else problem)
    return D - D.mean(axis=1, keepdims=True)


def loss_grad(U: np.ndarray, problem: Problem | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``G`` of shape ``(B,)`` and ``grad G = 2 (E_t + E_t^T) U_t`` flat, shape ``(B, n)``."""
    E = residuals(U, problem)
    f = np.einsum("btij,btij->b", E, E)
    g = 2.0 * (E + np.swapaxes(E, -1, -2)) @ U
    return f, g.reshape(U.shape[0], -1)


def hess(U: np.ndarray, problem: Problem | np.ndarray) -> np.ndarray:
    """Dense Hessians, shape ``(B, n, n)``: ``H[s, t] = 2 delta_st J_t^T J_t - (2/T) J_s^T J_t + delta_st 2 (E_t +
    E_t^T) kron I_k`` with ``J_s^T J_t = 2 I_d kron (U_s^T U_t) + 2 N_st``, ``N_st[(i,a),(j,b)] = U_t[i,b] U_s[j,a]``
    (theory.reduced.reduced_hess, here with a batch axis)."""
    B, T, d, k = U.shape
    dk = d * k
    UtU = np.einsum("zsia,ztib->zstab", U, U)
    gram = 2.0 * np.einsum("ij,zstab->zstiajb", np.eye(d), UtU)
    gram += 2.0 * np.einsum("ztib,zsja->zstiajb", U, U)
    gram = gram.reshape(B, T, T, dk, dk)
    H = (-2.0 / T) * gram
    idx = np.arange(T)
    E = residuals(U, problem)
    curv = 2.0 * np.einsum("ztij,ab->ztiajb", E + np.swapaxes(E, -1, -2), np.eye(k)).reshape(B, T, dk, dk)
    H[:, idx, idx] += 2.0 * gram[:, idx, idx] + curv
    return H.transpose(0, 1, 3, 2, 4).reshape(B, T * dk, T * dk)


def full_loss_grad(A: np.ndarray, U: np.ndarray, W: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The full Meta-LoRA loss ``L(A, U) = sum_t ||R_t||_F^2``, ``R_t = A + U_t U_t^T - W_t`` (theory.meta), on a
    stack: ``A`` (B, d, d), ``U`` (B, T, d, k), ``W`` (B, T, d, d) -> ``L`` (B,), ``dL/dA = 2 sum_t R_t``
    (B, d, d) and ``dL/dU_t = 2 (R_t + R_t^T) U_t`` (B, T, d, k)."""
    R = A[:, None] + U @ np.swapaxes(U, -1, -2) - W
    return np.einsum("btij,btij->b", R, R), 2.0 * R.sum(axis=1), 2.0 * (R + np.swapaxes(R, -1, -2)) @ U




@lru_cache(maxsize=64)
def _hess_layout(T: int, d: int, k: int) -> dict:
    """Flat positions in the ``(n, n)`` Hessian (row ``(s, i, a)``, column ``(t, j, b)``, row-major) used by
    :func:`hess_fast`: where each entry of ``N_st`` comes from in the outer product ``vec(U) vec(U)^T``; where
    ``I_d kron (U_s^T U_t)`` goes (``i = j``) and which ``(s, a, t, b)`` feeds it;
    and where ``(E_t + E_t^T) kron I_k`` goes (``s = t``, ``a = b``) with its ``(t, i, j)`` source."""
    s, i, a, t, j, b = np.indices((T, d, k, T, d, k)).reshape(6, -1)
    n = T * d * k
    ij = np.flatnonzero(i == j)
    stab = np.flatnonzero((s == t) & (a == b))
    return {"N": ((t * d + i) * k + b) * n + (s * d + j) * k + a,
            "ij": ij, "P": ((s * k + a) * T + t)[ij] * k + b[ij],
            "stab": stab, "S": (t[stab] * d + i[stab]) * d + j[stab]}


def hess_fast(U: np.ndarray, problem: Problem | np.ndarray) -> np.ndarray:
    """The Hessians of :func:`hess` (same formula, same shape ``(B, n, n)``), assembled from the outer product
    ``vec(U_b) vec(U_b)^T`` by one gather and two scatters of precomputed flat positions (:func:`_hess_layout`) and
    additions into views of the diagonal blocks, instead of 7-index ``einsum`` loops whose innermost axis has length
    k (several times faster at n = 60). Equal to :func:`hess` up to round-off; the lock-step solver over instances
    (:mod:`landscape.lockstep`) uses it."""
    B, T, d, k = U.shape
    n = T * d * k
    lay = _hess_layout(T, d, k)
    u = U.reshape(B, n)
    gram = (u[:, :, None] * u[:, None, :]).reshape(B, n * n)[:, lay["N"]]  # N_st
    gram[:, lay["ij"]] += np.einsum("zsia,ztib->zsatb", U, U).reshape(B, -1)[:, lay["P"]]  # I_d kron U_s^T U_t
    # J_s^T J_t = 2 gram; H = (-2/T) J_s^T J_t + 2 delta_st J_t^T J_t. Scaling by 2 is exact in binary floating
    # point, so (-4/T) gram and 4 gram are bit for bit (-2/T) (2 gram) and 2 (2 gram), one pass fewer.
    H = (-4.0 / T) * gram
    H5, gram5 = H.reshape(B, T, d * k, T, d * k), gram.reshape(B, T, d * k, T, d * k)
    for s in range(T):  # the diagonal blocks: strided views, 3x faster than a scatter of their flat positions
        H5[:, s, :, s, :] += 4.0 * gram5[:, s, :, s, :]
    E = residuals(U, problem)
    H[:, lay["stab"]] += (2.0 * (E + np.swapaxes(E, -1, -2))).reshape(B, -1)[:, lay["S"]]
    return H.reshape(B, n, n)
