"""The O(k)^T symmetry ``U_t -> U_t Q_t`` of L and G, and Hessian inertia on the quotient (DESIGN.md section 1).

The orbit's tangent space at ``U`` is spanned by ``U_t Omega_t`` with ``Omega_t`` skew-symmetric (k x k): basis
``U_t (e_a e_b^T - e_b e_a^T)``, ``a < b``, one block ``t`` at a time, ``T k (k - 1) / 2`` directions (none for
``k = 1``). Inertia "on the quotient" is that of ``Q^T H Q`` where the columns of ``Q`` are an orthonormal basis of
the orthogonal complement of that tangent space.

For T = 2 the reduced loss has a larger symmetry: ``G = ||D_1 - D_2||_F^2 / 2`` depends on U only through
``U_1 U_1^T - U_2 U_2^T = V J V^T`` (``V = [U_1, U_2]``, ``J = diag(I_k, -I_k)``), which the indefinite orthogonal
group O(k, k) acting as ``V -> V Lambda`` preserves. Its Lie algebra adds ``k^2`` "boosts" ``(dU_1, dU_2) =
(U_2 B^T, U_1 B)`` to the O(k)^2 directions, so every critical point of G at T = 2 lies on a continuum (the
Appendix D.1 hyperbola is one); ``group="O(k,k)"`` quotients it out.

>>> import numpy as np
>>> orbit_tangent(np.ones((2, 3, 1))).shape
(6, 0)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.linalg

from .problem import require_finite

__all__ = ["orbit_tangent", "boost_tangent", "symmetry_tangent", "quotient_basis", "Inertia", "inertia", "restricted_inertia"]


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


def boost_tangent(U: np.ndarray) -> np.ndarray:
    """T = 2 only: the ``k^2`` boost directions ``(dU_1, dU_2) = (U_2 B^T, U_1 B)``, ``B = e_a e_b^T``, of the
    O(k, k) symmetry of G, as columns of a ``(2 d k, k^2)`` matrix; ``d(U_1 U_1^T - U_2 U_2^T) = 0`` along each."""
    U = np.asarray(U, dtype=np.float64)
    T, d, k = U.shape
    if T != 2:
        raise ValueError(f"the O(k, k) symmetry of G is a T = 2 property, got T = {T}")
    cols = []
    for a in range(k):
        for b in range(k):
            Z = np.zeros((2, d, k))
            Z[0, :, a] = U[1, :, b]  # U_2 B^T: column a of dU_1 is column b of U_2
            Z[1, :, b] = U[0, :, a]  # U_1 B: column b of dU_2 is column a of U_1
            cols.append(Z.ravel())
    return np.array(cols).T


def symmetry_tangent(U: np.ndarray, *, n_A: int = 0, group: str = "O(k)^T") -> np.ndarray:
    """Tangent directions of the chosen symmetry orbit at ``U``: ``"O(k)^T"`` (:func:`orbit_tangent`, any T) or
    ``"O(k,k)"`` (T = 2, reduced loss only: adds :func:`boost_tangent`)."""
    if group == "O(k)^T":
        return orbit_tangent(U, n_A=n_A)
    if group == "O(k,k)":
        if n_A:
            raise ValueError("the O(k, k) quotient is defined for the reduced loss G (n_A = 0)")
        return np.hstack([orbit_tangent(U), boost_tangent(U)])
    raise ValueError(f"group must be 'O(k)^T' or 'O(k,k)', got {group!r}")


def quotient_basis(U: np.ndarray, *, n_A: int = 0, rtol: float = 1e-10, group: str = "O(k)^T") -> np.ndarray:
    """Orthonormal basis (columns) of the orthogonal complement of the orbit's tangent space, shape ``(n, n - m')``,
    ``m'`` the numerical rank of the tangent directions (smaller than ``m`` where some ``U_t`` is rank-deficient).

    Directions shorter than ``rtol * max(1, ||U||)`` are dropped first: they carry no symmetry (at ``U = 0`` the
    orbit is a point), and a purely relative cutoff would count them at a tiny ``U``.
    """
    U = require_finite("U", U)
    Z = symmetry_tangent(U, n_A=n_A, group=group)
    Z = Z[:, np.linalg.norm(Z, axis=0) > rtol * max(1.0, float(np.linalg.norm(U)))]
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
    H = require_finite("the Hessian H", H)
    lam = np.linalg.eigvalsh(0.5 * (H + H.T))
    tol = rtol * max(1.0, float(np.max(np.abs(lam))) if lam.size else 1.0)
    neg = int(np.sum(lam < -tol))
    pos = int(np.sum(lam > tol))
    return Inertia(negative=neg, zero=lam.size - neg - pos, positive=pos, eigenvalues=lam, tol=tol)


def restricted_inertia(H: np.ndarray, U: np.ndarray, *, n_A: int = 0, rtol: float = 1e-8,
                       group: str = "O(k)^T") -> Inertia:
    """Inertia of ``Q^T H Q``, ``Q`` = :func:`quotient_basis` at ``U``; ``H`` is the reduced Hessian (``n_A = 0``)
    or the full one with its ``vec(A)`` block first (``n_A = d^2``); ``group`` as in :func:`symmetry_tangent`."""
    Q = quotient_basis(U, n_A=n_A, group=group)
    return inertia(Q.T @ np.asarray(H, dtype=np.float64) @ Q, rtol=rtol)
