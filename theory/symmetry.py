"""The O(k)^T symmetry ``U_t -> U_t Q_t`` of L and G, and Hessian inertia on the quotient (DESIGN.md section 1).

The orbit's tangent space at ``U`` is spanned by ``U_t Omega_t`` with ``Omega_t`` skew-symmetric (k x k): basis
``U_t (e_a e_b^T - e_b e_a^T)``, ``a < b``, one block ``t`` at a time, ``T k (k - 1) / 2`` directions (none for
``k = 1``). Inertia "on the quotient" is that of ``Q^T H Q`` where the columns of ``Q`` are an orthonormal basis of
the orthogonal complement of that tangent space.

>>> import numpy as np
>>> orbit_tangent(np.ones((2, 3, 1))).shape
(6, 0)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.linalg

__all__ = ["orbit_tangent", "quotient_basis", "Inertia", "inertia", "restricted_inertia"]


def orbit_tangent(U: np.ndarray, *, n_A: int = 0) -> np.ndarray:
    """Unnormalised tangent directions of the orbit at ``U`` (T, d, k), as columns of a ``(n_A + T d k, m)``
    matrix, ``m = T k (k - 1) / 2``; the first ``n_A`` rows (a leading ``vec(A)`` block) are zero."""
    U = np.asarray(U, dtype=np.float64)
    T, d, k = U.shape
    cols = []
    for t in range(T):
        for a in range(k):
            for b in range(a + 1, k):
                Z = np.zeros((T, d, k))
                Z[t, :, b] = U[t, :, a]  # U_t (e_a e_b^T - e_b e_a^T)
                Z[t, :, a] = -U[t, :, b]
                cols.append(np.concatenate([np.zeros(n_A), Z.ravel()]))
    n = n_A + T * d * k
    return np.array(cols).T if cols else np.zeros((n, 0))


def quotient_basis(U: np.ndarray, *, n_A: int = 0, rtol: float = 1e-10) -> np.ndarray:
    """Orthonormal basis (columns) of the orthogonal complement of the orbit's tangent space, shape ``(n, n - m')``,
    ``m'`` the numerical rank of the tangent directions (smaller than ``m`` where some ``U_t`` is rank-deficient)."""
    Z = orbit_tangent(U, n_A=n_A)
    n = Z.shape[0]
    if Z.shape[1] == 0:
        return np.eye(n)
    return scipy.linalg.null_space(Z.T, rcond=rtol)


@dataclass(frozen=True)
class Inertia:
    """Counts of negative / zero / positive eigenvalues, with the eigenvalues (ascending) and the tolerance used:
    an eigenvalue ``lam`` counts as zero when ``|lam| <= tol``, ``tol = rtol * max(1, max |lam|)``."""

    negative: int
    zero: int
    positive: int
    eigenvalues: np.ndarray
    tol: float

    @property
    def positive_definite(self) -> bool:
        return self.negative == 0 and self.zero == 0

    @property
    def min_eigenvalue(self) -> float:
        return float(self.eigenvalues[0]) if self.eigenvalues.size else float("nan")


def inertia(H: np.ndarray, *, rtol: float = 1e-8) -> Inertia:
    """Inertia of a symmetric matrix (symmetrised first) with relative tolerance ``rtol``."""
    H = np.asarray(H, dtype=np.float64)
    lam = np.linalg.eigvalsh(0.5 * (H + H.T))
    tol = rtol * max(1.0, float(np.max(np.abs(lam))) if lam.size else 1.0)
    neg = int(np.sum(lam < -tol))
    pos = int(np.sum(lam > tol))
    return Inertia(negative=neg, zero=lam.size - neg - pos, positive=pos, eigenvalues=lam, tol=tol)


def restricted_inertia(H: np.ndarray, U: np.ndarray, *, n_A: int = 0, rtol: float = 1e-8) -> Inertia:
    """Inertia of ``Q^T H Q``, ``Q`` = :func:`quotient_basis` at ``U``; ``H`` is the reduced Hessian (``n_A = 0``)
    or the full one with its ``vec(A)`` block first (``n_A = d^2``)."""
    Q = quotient_basis(U, n_A=n_A)
    return inertia(Q.T @ np.asarray(H, dtype=np.float64) @ Q, rtol=rtol)
