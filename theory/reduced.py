"""The reduced loss ``G(U) = min_A L(A, U) = sum_t ||D_t - mean_s D_s||_F^2`` with ``D_t = U_t U_t^T - W_t``.

The minimising base is ``A(U) = mean_t (W_t - U_t U_t^T)``; at it the residuals are ``E_t = D_t - mean_s D_s``.
Gradient ``dG/dU_t = 2 (E_t + E_t^T) U_t``; second derivative along ``dU``:
``dU^T H dU = 2 sum_t ||dD_t - mean_s dD_s||_F^2 + 4 sum_t <E_t, dU_t dU_t^T>``, ``dD_t = dU_t U_t^T + U_t dU_t^T``.
This Hessian is exactly the Schur complement ``H_UU - H_UA H_AA^{-1} H_AU`` of the full Hessian at ``(A(U), U)``
(DESIGN.md section 1). Flat vectors are ``x = [vec(U_1); ...; vec(U_T)]``, ``n = T d k``.

>>> from theory.problem import Problem
>>> p = Problem.random(d=3, k=1, T=3, seed=0)
>>> reduced_loss(p.U_star, p) < 1e-28
True
"""

from __future__ import annotations

import numpy as np

from ._shapes import as_U, d_outer, outer, sym
from .meta import add_curvature, gram_matrix
from .problem import Problem, ProblemError, require_finite

__all__ = [
    "optimal_A", "reduced_residuals", "reduced_loss", "reduced_grad", "reduced_hvp", "reduced_hess",
    "schur_complement",
]


def optimal_A(U, problem: Problem) -> np.ndarray:
    """``A(U) = mean_t (W_t - U_t U_t^T)``, shape ``(d, d)``."""
    return (problem.W - outer(as_U(U, problem))).mean(axis=0)


def reduced_residuals(U, problem: Problem) -> np.ndarray:
    """``E_t = D_t - mean_s D_s`` with ``D_t = U_t U_t^T - W_t``, shape ``(T, d, d)``."""
    D = outer(as_U(U, problem)) - problem.W
    return D - D.mean(axis=0, keepdims=True)


def reduced_loss(U, problem: Problem) -> float:
    """``G(U) = sum_t ||E_t||_F^2``; ``U`` of shape ``(T, d, k)`` or flat ``(T d k,)``."""
    return float(np.sum(reduced_residuals(U, problem) ** 2))


def reduced_grad(U, problem: Problem) -> np.ndarray:
    """``dG/dU_t = 2 (E_t + E_t^T) U_t``, flat, shape ``(T d k,)``."""
    U = as_U(U, problem)
    return (2.0 * sym(reduced_residuals(U, problem)) @ U).ravel()


def reduced_hvp(U, dU, problem: Problem) -> np.ndarray:
    """``H_G dU = 2 (dE_t + dE_t^T) U_t + 2 (E_t + E_t^T) dU_t`` with ``dE_t = dD_t - mean_s dD_s``; flat ``(T d k,)``."""
    U, dU = as_U(U, problem), as_U(dU, problem)
    dD = d_outer(U, dU)
    dE = dD - dD.mean(axis=0, keepdims=True)
    return (2.0 * sym(dE) @ U + 2.0 * sym(reduced_residuals(U, problem)) @ dU).ravel()


def reduced_hess(U, problem: Problem) -> np.ndarray:
    """Dense Hessian of G, shape ``(T d k, T d k)``.

    ``H[s, t] = 2 delta_st J_t^T J_t - (2 / T) J_s^T J_t + delta_st 2 (E_t + E_t^T) kron I_k``, every ``J_s^T J_t``
    in closed form (:func:`theory.meta.gram_matrix`).
    """
    U = as_U(U, problem)
    T, d, k = U.shape
    dk = d * k
    gram = gram_matrix(U)
    H = (-2.0 / T) * gram
    for t in range(T):
        sl = slice(t * dk, (t + 1) * dk)
        H[sl, sl] += 2.0 * gram[sl, sl]
    add_curvature(H, reduced_residuals(U, problem), k)
    return H


def schur_complement(H: np.ndarray, n_A: int) -> np.ndarray:
    """``H_UU - H_UA H_AA^{-1} H_AU`` from a dense Hessian whose first ``n_A`` coordinates are the eliminated block.

    Solved with a Cholesky factor of ``H_AA`` (SciPy), which must be positive definite.
    """
    from scipy.linalg import cho_factor, cho_solve

    H = require_finite("H", H)
    if H.ndim != 2 or H.shape[0] != H.shape[1]:
        raise ProblemError(f"H must be a square matrix, got shape {H.shape}")
    if not 0 < n_A < H.shape[0]:
        raise ProblemError(f"n_A must lie in 1..{H.shape[0] - 1}, got {n_A}")
    H_AA, H_AU = H[:n_A, :n_A], H[:n_A, n_A:]
    return H[n_A:, n_A:] - H_AU.T @ cho_solve(cho_factor(H_AA), H_AU)
