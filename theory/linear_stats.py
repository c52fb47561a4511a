"""Empirical losses of the Figure 1 experiment from sufficient statistics (the paper's Section 4.1).

Data of task t are rows ``x ~ N(0, I_d)``, ``y = W_t x + eps`` (docs/convention.md). For a linear predictor M,
``(1/m) sum_i ||M x_i - y_i||^2 = <M Sxx, M> - 2 <M, Syx> + syy`` with ``Sxx = X^T X / m`` (d, d),
``Syx = Y^T X / m`` (d, d) and ``syy = tr(Y^T Y) / m``; the gradient in M is ``2 (M Sxx - Syx)``. This is an
algebraic identity of the sample sums (not an approximation), so gradient descent run on the statistics gives the
same iterates as gradient descent on the per-sample loss (up to floating-point round-off), at a cost independent of
m per step. The tests check it against the per-sample loss and torch autograd.

Every function is batched over leading axes (runs, tasks).

>>> import numpy as np
>>> X = np.eye(3); st = sufficient_stats(X, 2.0 * X)
>>> float(empirical_loss(2.0 * np.eye(3), st))
0.0
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .problem import ProblemError

__all__ = ["Stats", "sufficient_stats", "empirical_loss", "meta_empirical", "sr_empirical", "lora_empirical"]


@dataclass(frozen=True)
class Stats:
    """Sufficient statistics of samples ``X, Y`` of shape ``(..., m, d)``: ``Sxx = X^T X / m`` and
    ``Syx = Y^T X / m`` of shape ``(..., d, d)``, ``syy = tr(Y^T Y) / m`` of shape ``(...)``."""

    Sxx: np.ndarray
    Syx: np.ndarray
    syy: np.ndarray


def sufficient_stats(X: np.ndarray, Y: np.ndarray) -> Stats:
    """Statistics of samples ``X, Y`` of shape ``(..., m, d)`` (rows are samples).

    Returns
    -------
    Stats
        ``Sxx``, ``Syx`` of shape ``(..., d, d)`` and ``syy`` of shape ``(...)``.

    Raises
    ------
    ProblemError
        ``X`` and ``Y`` of different shapes or with fewer than two axes.
    """
    X = np.asarray(X, dtype=np.float64)
    Y = np.asarray(Y, dtype=np.float64)
    if X.shape != Y.shape or X.ndim < 2:
        raise ProblemError(f"X and Y must have the same shape (..., m, d), got {X.shape} and {Y.shape}")
    m = X.shape[-2]
    Xt = np.swapaxes(X, -1, -2)
    return Stats(Sxx=Xt @ X / m, Syx=np.swapaxes(Y, -1, -2) @ X / m, syy=np.sum(Y * Y, axis=(-2, -1)) / m)


def _fro_inner(P: np.ndarray, Q: np.ndarray) -> np.ndarray:
    return np.einsum("...ij,...ij->...", P, Q)


def empirical_loss(M: np.ndarray, stats: Stats) -> np.ndarray:
    """``(1/m) sum_i ||M x_i - y_i||^2 = <M Sxx, M> - 2 <M, Syx> + syy`` for M of shape ``(..., d, d)``.

    Returns
    -------
    ndarray, shape (...)
        The mean squared error over the m samples behind ``stats``.
    """
    return _fro_inner(M @ stats.Sxx, M) - 2.0 * _fro_inner(M, stats.Syx) + stats.syy


def meta_empirical(A: np.ndarray, U: np.ndarray, stats: Stats):
    """Meta-LoRA empirical loss and gradient, batched over leading run axes.

    ``A``: ``(..., d, d)``; ``U``: ``(..., T, d, k)``; stats of shape ``(..., T, d, d)``. With
    ``M_t = A + U_t U_t^T`` and ``R_t = M_t Sxx_t - Syx_t``: loss ``sum_t <M_t Sxx_t, M_t> - 2 <M_t, Syx_t> +
    syy_t``, ``dL/dA = 2 sum_t R_t``, ``dL/dU_t = 2 (R_t + R_t^T) U_t``.

    Returns
    -------
    loss : ndarray, shape (...)
    gA : ndarray, shape (..., d, d)
    gU : ndarray, shape (..., T, d, k)
    """
    M = A[..., None, :, :] + U @ np.swapaxes(U, -1, -2)
    MS = M @ stats.Sxx
    loss = np.sum(_fro_inner(MS, M) - 2.0 * _fro_inner(M, stats.Syx) + stats.syy, axis=-1)
    R = MS - stats.Syx
    gA = 2.0 * R.sum(axis=-3)
    gU = 2.0 * (R + np.swapaxes(R, -1, -2)) @ U
    return loss, gA, gU


def sr_empirical(A: np.ndarray, pooled: Stats):
    """SR empirical loss and gradient from the task-summed statistics ``P = sum_t Sxx_t``, ``Q = sum_t Syx_t``,
    ``c = sum_t syy_t`` (shapes ``(..., d, d)``, ``(...)``): loss ``<A P, A> - 2 <A, Q> + c``, gradient
    ``2 (A P - Q)``.

    Returns
    -------
    loss : ndarray, shape (...)
    gA : ndarray, shape (..., d, d)
    """
    AP = A @ pooled.Sxx
    return _fro_inner(AP, A) - 2.0 * _fro_inner(A, pooled.Syx) + pooled.syy, 2.0 * (AP - pooled.Syx)


def lora_empirical(A: np.ndarray, B: np.ndarray, C: np.ndarray, stats: Stats):
    """Fine-tuning loss and gradient with A frozen: ``M = A + B C^T``, ``R = M Sxx - Syx``; loss
    ``<M Sxx, M> - 2 <M, Syx> + syy``, ``dL/dB = 2 R C``, ``dL/dC = 2 R^T B``. ``A``: ``(..., d, d)``,
    ``B, C``: ``(..., d, r)``.

    Returns
    -------
    loss : ndarray, shape (...)
    gB, gC : ndarray, shape (..., d, r)
    M : ndarray, shape (..., d, d)
        The adapted matrix ``A + B C^T``.
    """
    M = A + B @ np.swapaxes(C, -1, -2)
    MS = M @ stats.Sxx
    loss = _fro_inner(MS, M) - 2.0 * _fro_inner(M, stats.Syx) + stats.syy
    R = MS - stats.Syx
    return loss, 2.0 * R @ C, 2.0 * np.swapaxes(R, -1, -2) @ B, M
