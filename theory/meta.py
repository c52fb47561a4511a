"""Meta-LoRA with symmetric adapters: ``L(A, U) = sum_t ||A + U_t U_t^T - W_t||_F^2`` (docs/convention.md).

Residual ``R_t = A + U_t U_t^T - W_t``; gradient ``dL/dA = 2 sum_t R_t``, ``dL/dU_t = 2 (R_t + R_t^T) U_t``; second
derivative along ``v = (dA, dU)``:
``v^T H v = 2 sum_t ||dA + dU_t U_t^T + U_t dU_t^T||_F^2 + 4 sum_t <R_t, dU_t dU_t^T>``.
Flat vectors are ``x = [vec(A); vec(U_1); ...; vec(U_T)]`` in row-major order, ``n = d^2 + T d k``.

>>> from theory.problem import Problem
>>> p = Problem.random(d=3, k=1, T=3, seed=0)
>>> meta_loss(p.A_star, p.U_star, p)
0.0
"""

from __future__ import annotations

import numpy as np

from ._shapes import as_A, as_U, d_outer, outer, sym
from .problem import MetaPoint, Problem

__all__ = ["meta_residuals", "meta_loss", "meta_grad", "meta_grad_flat", "meta_hvp", "meta_hess"]


def meta_residuals(A, U, problem: Problem) -> np.ndarray:
    """``R_t = A + U_t U_t^T - W_t``, shape ``(T, d, d)``.

    Returns
    -------
    ndarray, shape (T, d, d)

    Raises
    ------
    ProblemError
        ``A`` not of shape ``(d, d)``, or ``U`` of a shape other than ``(T, d, k)`` or ``(T d k,)``.
    """
    return as_A(A, problem)[None] + outer(as_U(U, problem)) - problem.W


def meta_loss(A, U, problem: Problem) -> float:
    """``L(A, U) = sum_t ||R_t||_F^2``.

    Returns
    -------
    float
        ``L(A, U) >= 0``.

    Raises
    ------
    ProblemError
        ``A`` not of shape ``(d, d)``, or ``U`` of a shape other than ``(T, d, k)`` or ``(T d k,)``.
    """
    return float(np.sum(meta_residuals(A, U, problem) ** 2))


def meta_grad(A, U, problem: Problem) -> tuple[np.ndarray, np.ndarray]:
    """``(dL/dA, dL/dU)`` with shapes ``(d, d)`` and ``(T, d, k)``.

    Returns
    -------
    gA : ndarray, shape (d, d)
        ``dL/dA = 2 sum_t R_t``.
    gU : ndarray, shape (T, d, k)
        ``dL/dU_t = 2 (R_t + R_t^T) U_t``.

    Raises
    ------
    ProblemError
        ``A`` not of shape ``(d, d)``, or ``U`` of a shape other than ``(T, d, k)`` or ``(T d k,)``.
    """
    U = as_U(U, problem)
    R = meta_residuals(A, U, problem)
    return 2.0 * R.sum(axis=0), 2.0 * sym(R) @ U


def meta_grad_flat(x, problem: Problem) -> np.ndarray:
    """Gradient at the flat point ``x`` of length ``d^2 + T d k``, same order.

    Returns
    -------
    ndarray, shape (d^2 + T d k,)
        ``[vec(dL/dA); vec(dL/dU)]`` in row-major order.

    Raises
    ------
    ProblemError
        ``x`` not of shape ``(d^2 + T d k,)``.
    """
    pt = MetaPoint.unflatten(x, problem.d, problem.k, problem.T)
    return MetaPoint(*meta_grad(pt.A, pt.U, problem)).flatten()


def meta_hvp(A, U, dA, dU, problem: Problem) -> tuple[np.ndarray, np.ndarray]:
    """Hessian-vector product ``H (dA, dU)``: ``(2 sum_t S_t, 2 (S_t + S_t^T) U_t + 2 (R_t + R_t^T) dU_t)`` with
    ``S_t = dA + dU_t U_t^T + U_t dU_t^T``; shapes ``(d, d)`` and ``(T, d, k)``.

    Returns
    -------
    hA : ndarray, shape (d, d)
    hU : ndarray, shape (T, d, k)

    Raises
    ------
    ProblemError
        ``A`` or ``dA`` not of shape ``(d, d)``, or ``U`` or ``dU`` of a shape other than ``(T, d, k)`` or
        ``(T d k,)``.
    """
    U, dU = as_U(U, problem), as_U(dU, problem)
    dA = as_A(dA, problem)
    R = meta_residuals(A, U, problem)
    S = dA[None] + d_outer(U, dU)
    return 2.0 * S.sum(axis=0), 2.0 * sym(S) @ U + 2.0 * sym(R) @ dU


def _outer_jacobian_blocks(U: np.ndarray) -> np.ndarray:
    """Jacobians ``J_t`` of ``U_t -> U_t U_t^T`` in row-major order, shape ``(T, d^2, d k)``.

    ``J_t[(i, j), (p, a)] = delta_ip U_t[j, a] + U_t[i, a] delta_jp``.
    """
    T, d, k = U.shape
    eye = np.eye(d)
    J = np.einsum("ip,tja->tijpa", eye, U) + np.einsum("tia,jp->tijpa", U, eye)
    return J.reshape(T, d * d, d * k)


def _gram_matrix(U: np.ndarray) -> np.ndarray:
    """All products ``J_s^T J_t`` in closed form, as one ``(T d k, T d k)`` matrix (row-major ``(t, i, a)``).

    ``J_s^T J_t = 2 I_d kron (U_s^T U_t) + 2 N_st`` with ``N_st[(i, a), (j, b)] = U_t[i, b] U_s[j, a]``; cost
    ``O(T^2 d^2 k^2)``: one outer product, one transposed copy and ``d`` block-diagonal updates, no ``d^2 x dk``
    Jacobian formed.
    """
    T, d, k = U.shape
    n = T * d * k
    flat = U.ravel()
    # N part: outer[(s, j, a), (t, i, b)] = U[s, j, a] U[t, i, b], reordered to [(s, i, a), (t, j, b)]
    out = (2.0 * np.multiply.outer(flat, flat)).reshape(T, d, k, T, d, k).transpose(0, 4, 2, 3, 1, 5).copy()
    G = 2.0 * np.einsum("sia,tib->satb", U, U)  # 2 U_s^T U_t, as [s, a, t, b]
    for i in range(d):
        out[:, i, :, :, i, :] += G
    return out.reshape(n, n)


def _add_curvature(H: np.ndarray, R: np.ndarray, k: int, offset: int = 0) -> None:
    """Add, in place, the blocks ``2 (R_t + R_t^T) kron I_k`` of the term ``4 sum_t <R_t, dU_t dU_t^T>`` to the
    ``U`` part of ``H`` (which starts at row/column ``offset``)."""
    T, d, _ = R.shape
    S = 2.0 * sym(R)
    view = H[offset:, offset:].reshape(T, d, k, T, d, k)
    for t in range(T):
        for a in range(k):
            view[t, :, a, t, :, a] += S[t]


def meta_hess(A, U, problem: Problem) -> np.ndarray:
    """Dense Hessian of L at ``(A, U)``, shape ``(n, n)`` with ``n = d^2 + T d k``.

    Blocks: ``H_AA = 2 T I``, ``H_{A U_t} = 2 J_t``, ``H_{U_t U_t} = 2 J_t^T J_t + 2 (R_t + R_t^T) kron I_k``,
    ``H_{U_s U_t} = 0`` for ``s != t``.

    Returns
    -------
    ndarray, shape (d^2 + T d k, d^2 + T d k)
        Symmetric, in the order ``[vec(A); vec(U_1); ...; vec(U_T)]``.

    Raises
    ------
    ProblemError
        ``A`` not of shape ``(d, d)``, or ``U`` of a shape other than ``(T, d, k)`` or ``(T d k,)``.
    """
    U = as_U(U, problem)
    d, k, T = problem.d, problem.k, problem.T
    dd, dk = d * d, d * k
    R = meta_residuals(A, U, problem)
    H = np.zeros((problem.n_full, problem.n_full))
    H[:dd, :dd] = 2.0 * T * np.eye(dd)
    J = _outer_jacobian_blocks(U)
    gram = _gram_matrix(U)
    for t in range(T):
        sl = slice(dd + t * dk, dd + (t + 1) * dk)
        H[:dd, sl] = 2.0 * J[t]
        H[sl, :dd] = 2.0 * J[t].T
        H[sl, sl] = 2.0 * gram[sl.start - dd: sl.stop - dd, sl.start - dd: sl.stop - dd]
    _add_curvature(H, R, k, offset=dd)
    return H
