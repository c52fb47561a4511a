"""Standard retraining (SR): ``L_SR(A) = sum_t ||A - W_t||_F^2`` (docs/convention.md).

>>> from theory.problem import Problem
>>> p = Problem.random(d=3, k=1, T=2, seed=1)
>>> bool(np.allclose(sr_grad(sr_minimiser(p), p), 0))
True
"""

from __future__ import annotations

import numpy as np

from ._shapes import as_A
from .problem import Problem

__all__ = ["sr_loss", "sr_grad", "sr_hess", "sr_minimiser"]


def sr_loss(A, problem: Problem) -> float:
    """``sum_t ||A - W_t||_F^2`` for ``A`` of shape ``(d, d)``.

    Returns
    -------
    float
        ``L_SR(A) >= 0``.

    Raises
    ------
    ProblemError
        ``A`` not of shape ``(d, d)``.
    """
    A = as_A(A, problem)
    return float(np.sum((A[None] - problem.W) ** 2))


def sr_grad(A, problem: Problem) -> np.ndarray:
    """``dL_SR/dA = 2 sum_t (A - W_t)``, shape ``(d, d)``.

    Returns
    -------
    ndarray, shape (d, d)
        ``dL_SR/dA``; zero at :func:`sr_minimiser`.

    Raises
    ------
    ProblemError
        ``A`` not of shape ``(d, d)``.
    """
    A = as_A(A, problem)
    return 2.0 * (problem.T * A - problem.W.sum(axis=0))


def sr_hess(problem: Problem) -> np.ndarray:
    """Dense Hessian ``2 T I_{d^2}`` of shape ``(d^2, d^2)`` (it does not depend on A).

    Returns
    -------
    ndarray, shape (d^2, d^2)
    """
    return 2.0 * problem.T * np.eye(problem.d * problem.d)


def sr_minimiser(problem: Problem) -> np.ndarray:
    """Closed form ``A_SR = mean_t W_t = A* + (1/T) sum_t U*_t U*_t^T``, shape ``(d, d)``.

    Returns
    -------
    ndarray, shape (d, d)
        A fresh array (``problem`` is not changed).
    """
    return problem.W.mean(axis=0)
