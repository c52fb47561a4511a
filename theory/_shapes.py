"""Shape checks shared by the objectives (private)."""

from __future__ import annotations

import numpy as np

from .problem import Problem, ProblemError


def as_A(A, problem: Problem) -> np.ndarray:
    """``A`` as a float64 array of shape ``(d, d)``.

    Raises
    ------
    ProblemError
        ``A`` has another shape.
    """
    A = np.asarray(A, dtype=np.float64)
    if A.shape != (problem.d, problem.d):
        raise ProblemError(f"A must have shape (d, d) = {(problem.d, problem.d)}, got {A.shape}")
    return A


def as_U(U, problem: Problem) -> np.ndarray:
    """Accept ``U`` as ``(T, d, k)`` or flat ``(T d k,)``; return ``(T, d, k)``.

    Raises
    ------
    ProblemError
        ``U`` has neither shape.
    """
    U = np.asarray(U, dtype=np.float64)
    shape = (problem.T, problem.d, problem.k)
    if U.shape == (problem.n_reduced,):
        return U.reshape(shape)
    if U.shape != shape:
        raise ProblemError(f"U must have shape (T, d, k) = {shape} or ({problem.n_reduced},), got {U.shape}")
    return U


def sym(X: np.ndarray) -> np.ndarray:
    """``X + X^T`` over the last two axes."""
    return X + np.swapaxes(X, -1, -2)


def outer(U: np.ndarray) -> np.ndarray:
    """``U_t U_t^T`` for each t: ``(T, d, k) -> (T, d, d)``."""
    return U @ np.swapaxes(U, -1, -2)


def d_outer(U: np.ndarray, dU: np.ndarray) -> np.ndarray:
    """Differential of ``U U^T`` in direction ``dU``: ``dU U^T + U dU^T``, shape ``(T, d, d)``."""
    return sym(dU @ np.swapaxes(U, -1, -2))
