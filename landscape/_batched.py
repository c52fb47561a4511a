"""The reduced loss G, its gradient and dense Hessian on a stack of points (private).

Why this exists next to :mod:`theory.reduced`: the functions there take one point, and at the sizes the search runs
(n = T d k = 9) NumPy's per-call overhead, not arithmetic, sets the speed. The search iterates many starts in
lock-step, so it needs the same formulas over a leading batch axis ``B``. The formulas are those of
:mod:`theory.reduced` (docs/convention.md), and ``tests/test_landscape_search.py`` checks every function here against theory's on each slice.

Shapes: ``U`` is ``(B, T, d, k)``; flat points are ``(B, n)`` with ``n = T d k`` in theory's order.
"""

from __future__ import annotations

import numpy as np

from theory.problem import Problem


def residuals(U: np.ndarray, problem: Problem) -> np.ndarray:
    """``E_t = D_t - mean_s D_s``, ``D_t = U_t U_t^T - W_t``; ``(B, T, d, k) -> (B, T, d, d)``."""
    D = U @ np.swapaxes(U, -1, -2) - problem.W
    return D - D.mean(axis=1, keepdims=True)


def loss_grad(U: np.ndarray, problem: Problem) -> tuple[np.ndarray, np.ndarray]:
    """``G`` of shape ``(B,)`` and ``grad G = 2 (E_t + E_t^T) U_t`` flat, shape ``(B, n)``."""
    E = residuals(U, problem)
    f = np.einsum("btij,btij->b", E, E)
    g = 2.0 * (E + np.swapaxes(E, -1, -2)) @ U
    return f, g.reshape(U.shape[0], -1)


def hess(U: np.ndarray, problem: Problem) -> np.ndarray:
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
