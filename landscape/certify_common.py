"""What both certificates share: the checked point and options, the gauge slice, its transversality proof over a box,
and the decision of what kind a certified minimum is.

Used by :mod:`landscape.certify_interval` (Krawczyk) and :mod:`landscape.certify_epsnet` (eps-net); a new certificate
of a critical point of G uses the same pieces (see docs/landscape.md, "Adding a certificate").

**Gauge.** For k = 1 and T != 2 the O(1)^T orbit of a point is finite (sign flips) and the certificates work in
``x`` itself. For k >= 2 every critical point lies on an O(k)^T orbit of dimension ``p = T k (k-1)/2`` (at T = 2 on an
orbit of the larger group O(k, k), dimension ``k (2k - 1)``), on which G is constant. The certificates then restrict
G to the affine slice ``x0 + range(Q)``, ``Q`` (n, n - p) an orthonormal basis of the complement of the orbit tangent
at U0 (:func:`theory.symmetry.symmetry_tangent`), and prove the slice transversal to the orbits over a box by showing
the n x n ball matrix ``[Q, Z(X)]`` nonsingular (:func:`transversal`); by the slice theorem a local minimum on the
slice is then a local minimum of G, strict modulo the orbit.

>>> import numpy as np
>>> gauge(np.ones((3, 2, 1))).Q is None   # k = 1, T != 2: a finite orbit, no slice
True
>>> gauge(np.eye(3)[None, :, :2].repeat(3, axis=0)).Q.shape   # T = 3, k = 2: a 3-dimensional O(2)^3 orbit
(18, 15)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import scipy.linalg
from flint import arb, arb_mat

from theory.cli_contract import require_int
from theory.problem import Problem, ProblemError
from theory.symmetry import symmetry_tangent

from . import _arb_reduced as ar
from .certificate import CertificateError

__all__ = ["GLOBAL_RTOL", "Gauge", "validate_point", "positive", "integer", "symmetry_group", "gauge",
           "tangent_arb", "transversal", "signed_ustar", "minimum_kind"]

#: a certified minimum whose G is enclosed in ``[0, upper]`` with ``upper <= GLOBAL_RTOL (1 + G(0))`` is reported as
#: "global" up to that bound (round-off level); the reason says so
GLOBAL_RTOL = 1e-12


def validate_point(problem, U0) -> np.ndarray:
    """``U0`` (shape ``(T, d, k)`` or ``(T d k,)``) as a flat float64 copy ``x0`` of shape ``(T d k,)``.

    Raises
    ------
    CertificateError
        ``problem`` is not a :class:`theory.problem.Problem`, ``U0`` has another shape, or a non-finite entry.
    """
    if not isinstance(problem, Problem):
        raise CertificateError(f"problem must be a theory.problem.Problem, got {type(problem).__name__}")
    x0 = np.array(U0, dtype=np.float64, copy=True)
    shape = (problem.T, problem.d, problem.k)
    if x0.shape not in (shape, (problem.n_reduced,)):
        raise CertificateError(f"U0 must have shape (T, d, k) = {shape} or ({problem.n_reduced},), got {x0.shape}")
    if not np.all(np.isfinite(x0)):
        raise CertificateError(f"U0 must have finite entries, found {int(np.count_nonzero(~np.isfinite(x0)))} "
                               "non-finite (NaN or inf)")
    return x0.ravel()


def positive(name: str, value, *, allow_none: bool = True) -> float | None:
    """``value`` as a positive finite float (``None`` passes when ``allow_none``).

    Raises
    ------
    CertificateError
        ``"<name> must be a positive finite number, got <value>"``.
    """
    if value is None and allow_none:
        return None
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise CertificateError(f"{name} must be a positive finite number, got {value!r}") from None
    if not math.isfinite(v) or v <= 0:
        raise CertificateError(f"{name} must be a positive finite number, got {value!r}")
    return v


def integer(name: str, value, minimum: int) -> int:
    """``value`` as an ``int`` (NumPy integers too, never ``bool``) that is at least ``minimum``
    (:func:`theory.cli_contract.require_int`, raising the certificates' error).

    Raises
    ------
    CertificateError
        ``"<name> must be a positive integer (> 0), got <value>"`` (or ``an integer >= <minimum>``).
    """
    try:
        return require_int(name, value, minimum=minimum)
    except ProblemError as exc:
        raise CertificateError(str(exc)) from None


def symmetry_group(T: int) -> str:
    """The symmetry group of G whose orbits are quotiented out: ``"O(k,k)"`` at T = 2 (G depends only on
    ``U_1 U_1^T - U_2 U_2^T``; :func:`theory.symmetry.boost_tangent`), else ``"O(k)^T"``."""
    return "O(k,k)" if T == 2 else "O(k)^T"


@dataclass(frozen=True)
class Gauge:
    """The gauge slice at a point.

    Attributes
    ----------
    Q : ndarray (n, m) or None
        Orthonormal basis of the slice directions; None when the orbit is finite (k = 1, T != 2: ``m = n``).
    cols : tuple of int
        Indices of a maximal independent set of :func:`theory.symmetry.symmetry_tangent`'s columns at U0 (chosen by
        pivoted QR; fewer than the group's dimension where some ``U_t`` is rank-deficient, or at T = 2 where the
        O(k, k) action is not free, e.g. d = k).
    text : str
        A description for the certificate's ``gauge`` field.
    """

    Q: np.ndarray | None
    cols: tuple
    text: str


def gauge(U0: np.ndarray) -> Gauge:
    """The gauge slice at ``U0`` (shape ``(T, d, k)``), see :class:`Gauge`."""
    T, d, k = U0.shape
    group = symmetry_group(T)
    Z = symmetry_tangent(U0, group=group)
    if Z.shape[1] == 0:
        return Gauge(None, (), "none (k = 1, T != 2: the O(1)^T orbit is finite)")
    R, piv = scipy.linalg.qr(Z, mode="r", pivoting=True)
    diag = np.abs(np.diag(R))
    # numerical rank with a tolerance on the scale of U0 (not only relative to the largest tangent vector, which
    # would count a denormal block as independent)
    tol = 1e-10 * max(1.0, float(np.max(np.abs(U0))))
    p = int(np.sum(diag > tol))
    cols = tuple(sorted(int(c) for c in piv[:p]))
    # the orthogonal complement of the selected tangent directions (= theory.symmetry.quotient_basis(U0, group=...)
    # when U0 is generic)
    Q = scipy.linalg.null_space(Z[:, list(cols)].T) if p else np.eye(Z.shape[0])
    full = Z.shape[1]
    note = "" if p == full else (f" (the orbit has dimension {p} < {full}, the group's: some tangent directions are "
                                 "dependent at U0, e.g. a rank-deficient U_t)")
    return Gauge(Q, cols, f"slice x = x0 + Q z, Q ({Q.shape[0]} x {Q.shape[1]}) the orthogonal complement of the "
                          f"{p}-dimensional {group} orbit tangent (theory.symmetry.symmetry_tangent){note}")


def tangent_arb(Us: list, k: int) -> list:
    """Symmetry tangent directions over the box ``Us`` (T ball matrices (d, k)), as columns (lists of n balls), in the
    order of :func:`theory.symmetry.symmetry_tangent`: ``U_t (e_a e_b^T - e_b e_a^T)`` (t, a < b), then at T = 2 the
    boosts ``(U_2 B^T, U_1 B)``, ``B = e_a e_b^T`` (a, b)."""
    T = len(Us)
    d = Us[0].nrows()
    n = T * d * k
    dk = d * k
    cols = []
    for t in range(T):
        for a in range(k):
            for b in range(a + 1, k):
                col = [arb(0)] * n
                base = t * dk
                for i in range(d):
                    col[base + i * k + b] = Us[t][i, a]
                    col[base + i * k + a] = -Us[t][i, b]
                cols.append(col)
    if symmetry_group(T) == "O(k,k)":
        for a in range(k):
            for b in range(k):
                col = [arb(0)] * n
                for i in range(d):
                    col[i * k + a] = Us[1][i, b]  # column a of dU_1 is column b of U_2
                    col[dk + i * k + b] = Us[0][i, a]  # column b of dU_2 is column a of U_1
                cols.append(col)
    return cols


def transversal(Qa: arb_mat, tangent_cols, Us: list, k: int) -> bool:
    """True if the n x n ball matrix ``[Q, Z(X)]`` (``Qa``: n x m, then the ``tangent_cols`` of :func:`tangent_arb`
    over the box ``Us``) is proven nonsingular for every point of the box (arb's solve succeeds only then)."""
    n, m = Qa.nrows(), Qa.ncols()
    tangent = tangent_arb(Us, k)
    cols = [[Qa[i, j] for i in range(n)] for j in range(m)] + [tangent[c] for c in tangent_cols]
    if len(cols) != n:  # only if null_space and the pivoted QR of gauge() disagree on a nearly dependent column
        return False
    M = arb_mat(n, n)
    for j, col in enumerate(cols):
        for i in range(n):
            M[i, j] = col[i]
    try:
        M.solve(arb_mat(n, 1, [1] * n))
    except ZeroDivisionError:
        return False
    return True


def signed_ustar(problem: Problem, x0: np.ndarray) -> np.ndarray:
    """``U*`` with the sign of each task's column flipped to point like ``x0`` (k = 1), flat ``(T d,)``; exact."""
    Ustar = problem.U_star.reshape(problem.T, -1)
    signs = np.where(np.sum(Ustar * x0.reshape(problem.T, -1), axis=1) >= 0, 1.0, -1.0)
    return (signs[:, None] * Ustar).ravel()


def zero_loss_upper(problem: Problem, Ws) -> float:
    """Upper end of ``G(0)`` in arb (the scale of the round-off test), at the caller's working precision."""
    zero = ar.U_blocks(ar.balls(np.zeros(problem.n_reduced)), problem.T, problem.d, problem.k)
    return ar.upper(ar.loss(ar.residuals(zero, Ws)))


def minimum_kind(*, lower: float, upper: float, ustar_inside: bool, zero_upper: float,
                 region: str) -> tuple[str, str]:
    """``(kind, why)`` for a certified minimum x* in ``region``: ``"spurious"`` when ``G >= lower > 0`` on the region;
    ``"global"`` when U* (signs matched) is proven inside it (then ``G(x*) <= G(U*) = 0``), or, up to round-off,
    when ``G(x*) <= upper <= GLOBAL_RTOL (1 + G(0))`` (``zero_upper`` the upper end of G(0)); ``"unknown"`` else.
    """
    if lower > 0:
        return "spurious", f"G >= {lower:.6g} > 0 on {region}, so the minimum is spurious (not global)"
    if ustar_inside:
        return "global", (f"U* (column signs matched to x0) lies in {region} and G(U*) = 0, so G(x*) = 0: the "
                          "minimum is global (proven)")
    if upper <= GLOBAL_RTOL * (1.0 + zero_upper):
        return "global", (f"0 <= G(x*) <= {upper:.3g} (round-off level, <= {GLOBAL_RTOL:g} (1 + G(0))): a global "
                          "minimum up to that bound; interval arithmetic cannot prove G(x*) = 0 exactly here")
    return "unknown", (f"G(x*) lies in [{lower:.3g}, {upper:.3g}], which neither excludes 0 nor is at round-off "
                       "level, and U* is not proven inside")
