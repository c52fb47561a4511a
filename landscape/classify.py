"""Classify converged critical points of G and merge those on one O(k)^T orbit (DESIGN.md section 1).

Orbit invariants: ``U_t -> U_t Q_t`` leaves every ``P_t = U_t U_t^T`` (``(T, d, d)``) unchanged, and two points with
the same ``P_t`` for all t lie on one orbit (``U_t U_t^T = V_t V_t^T`` implies ``V_t = U_t Q_t``), so comparing the
``P_t`` merges exactly the orbit and nothing else.

Classes (:data:`landscape.result.CLASSES`), decided from the Hessian of G restricted to the orthogonal complement of
the orbit's tangent space (:func:`theory.symmetry.restricted_inertia`; at T = 2 the orbit of the larger group
O(k, k), see :func:`theory.symmetry.boost_tangent`), an eigenvalue ``lam`` counted as zero when
``|lam| <= eig_rtol * max(1, max |lam|)``:

- ``global_min``: ``G <= loss_rtol * max(1, G(0))`` (round-off level; ``G(0) = sum_t ||W_t - mean W||_F^2``);
- ``saddle``: otherwise, at least one negative eigenvalue;
- ``degenerate``: otherwise, at least one zero eigenvalue beyond the orbit's (second order cannot decide);
- ``spurious_min``: otherwise (G > 0 and the restricted Hessian positive definite: a strict local minimum).

>>> from theory.problem import Problem
>>> p = Problem.random(d=4, k=1, T=3, seed=0)
>>> classify_point(p, p.U_star).label
'global_min'
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from theory.problem import Problem, ProblemError, require_finite
from theory.reduced import reduced_grad, reduced_hess, reduced_loss
from theory.symmetry import restricted_inertia

from .result import CLASSES, SearchResult

__all__ = ["Classification", "classify_point", "annotate", "orbit_invariants", "same_orbit", "dedup", "CriticalPoint"]


@dataclass(frozen=True)
class Classification:
    """The class of one point and the numbers behind it.

    label : one of :data:`landscape.result.CLASSES`
    loss : ``G(U)``; grad_norm : ``||grad G(U)||_2``
    inertia : (negative, zero, positive) on the quotient; eigenvalues : ascending, on the quotient
    loss_threshold : the ``global_min`` threshold used; eig_tol : the zero-eigenvalue tolerance used
    symmetry : the group whose orbit was quotiented out: ``"O(k)^T"``, or ``"O(k,k)"`` at T = 2
    """

    label: str
    loss: float
    grad_norm: float
    inertia: tuple[int, int, int]
    eigenvalues: np.ndarray
    loss_threshold: float
    eig_tol: float
    symmetry: str = "O(k)^T"

    @property
    def min_eigenvalue(self) -> float:
        return float(self.eigenvalues[0]) if self.eigenvalues.size else float("nan")


def classify_point(problem: Problem, U, *, loss_rtol: float = 1e-12, eig_rtol: float = 1e-8) -> Classification:
    """Classify ``U`` (``(T, d, k)`` or flat), assumed critical (the caller checks the gradient norm).

    The Hessian is restricted to the orthogonal complement of the symmetry orbit's tangent space: O(k)^T
    (:func:`theory.symmetry.restricted_inertia`) for T != 2; for T = 2 the larger O(k, k) orbit
    (``group="O(k,k)"`` of :func:`theory.symmetry.restricted_inertia`).

    Raises ``ProblemError`` for a non-finite ``U`` or one where G, its gradient or Hessian overflow float64.
    """
    for name, v in (("loss_rtol", loss_rtol), ("eig_rtol", eig_rtol)):
        if not (np.isfinite(v) and v > 0):
            raise ProblemError(f"{name} must be a finite number > 0, got {v!r}")
    U = require_finite("U", U).reshape(problem.T, problem.d, problem.k)
    with np.errstate(over="ignore", invalid="ignore"):
        loss = reduced_loss(U, problem)
        grad_norm = float(np.linalg.norm(reduced_grad(U, problem)))
        H = reduced_hess(U, problem)
    if not (np.isfinite(loss) and np.isfinite(grad_norm) and np.all(np.isfinite(H))):
        raise ProblemError(f"G, its gradient or its Hessian overflow float64 at this point (max |U| entry "
                           f"{float(np.max(np.abs(U))):.3g}): it cannot be classified")
    g0 = reduced_loss(np.zeros_like(U), problem)
    threshold = loss_rtol * max(1.0, g0)
    # at T = 2 G has the larger O(k, k) symmetry (theory.symmetry's module docstring)
    symmetry = "O(k,k)" if problem.T == 2 else "O(k)^T"
    iner = restricted_inertia(H, U, rtol=eig_rtol, group=symmetry)
    if loss <= threshold:
        label = "global_min"
    elif iner.negative > 0:
        label = "saddle"
    elif iner.zero > 0:
        label = "degenerate"
    else:
        label = "spurious_min"
    assert label in CLASSES
    return Classification(label=label, loss=loss, grad_norm=grad_norm,
                          inertia=(iner.negative, iner.zero, iner.positive), eigenvalues=iner.eigenvalues,
                          loss_threshold=threshold, eig_tol=iner.tol, symmetry=symmetry)


def annotate(problem: Problem, result: SearchResult, **kwargs) -> SearchResult:
    """A copy of ``result`` with ``inertia`` and ``min_eigenvalue`` on the quotient filled in and the class in
    ``extra["class"]`` (:func:`classify_point`; only meaningful for a converged result)."""
    import dataclasses

    c = classify_point(problem, result.point, **kwargs)
    return dataclasses.replace(result, inertia=c.inertia, min_eigenvalue=c.min_eigenvalue,
                               extra={**result.extra, "class": c.label})


def orbit_invariants(U) -> np.ndarray:
    """``P_t = U_t U_t^T`` for each t, shape ``(T, d, d)``: constant exactly on O(k)^T orbits."""
    U = np.asarray(U, dtype=np.float64)
    return U @ np.swapaxes(U, -1, -2)


def same_orbit(U, V, *, rtol: float = 1e-6) -> bool:
    """Whether ``||P(U) - P(V)||_F <= rtol * max(1, ||P(U)||_F)`` (``P`` = :func:`orbit_invariants`)."""
    PU, PV = orbit_invariants(U), orbit_invariants(V)
    return bool(np.linalg.norm(PU - PV) <= rtol * max(1.0, float(np.linalg.norm(PU))))


@dataclass(frozen=True)
class CriticalPoint:
    """One orbit of critical points: a representative ``point`` (``(T, d, k)``, the hit with the smallest gradient
    norm), its :class:`Classification`, how many solves landed on it (``hits``, by method) and the seed of the
    first."""

    point: np.ndarray
    classification: Classification
    hits: dict
    first_seed: int

    def to_dict(self) -> dict:
        c = self.classification
        return {"class": c.label, "loss": c.loss, "grad_norm": c.grad_norm, "inertia": list(c.inertia),
                "min_eigenvalue": c.min_eigenvalue, "eigenvalues": c.eigenvalues.tolist(),
                "loss_threshold": c.loss_threshold, "eig_tol": c.eig_tol, "symmetry": c.symmetry, "hits": dict(self.hits),
                "first_seed": self.first_seed, "point": np.asarray(self.point).tolist()}


def dedup(problem: Problem, results: list[SearchResult], *, rtol: float = 1e-6, loss_rtol: float = 1e-12,
          eig_rtol: float = 1e-8) -> tuple[list[CriticalPoint], list[int]]:
    """Merge converged results lying on one orbit and classify each orbit once.

    Orbits of O(k)^T are compared through :func:`orbit_invariants`; at T = 2 through ``P_1 - P_2``, the quantity
    G depends on (so the O(k, k) orbit, the Appendix D.1 family of global minima included, counts once).

    Returns ``(points, which)``: the distinct critical points in order of first appearance, and for every result
    the index into ``points`` it merged into (``-1`` for results that did not converge).
    """
    reps: list[list] = []  # [best result, invariants, hits, first seed]
    which = []
    for res in results:
        if not res.converged:
            which.append(-1)
            continue
        P = orbit_invariants(res.point)
        if problem.T == 2:  # G depends only on P_1 - P_2 (theory.symmetry.boost_tangent): merge the whole O(k, k) orbit
            P = P[0] - P[1]
        for i, rep in enumerate(reps):
            if np.linalg.norm(P - rep[1]) <= rtol * max(1.0, float(np.linalg.norm(rep[1]))):
                rep[2][res.method] = rep[2].get(res.method, 0) + 1
                if res.grad_norm < rep[0].grad_norm:
                    rep[0] = res
                which.append(i)
                break
        else:
            reps.append([res, P, {res.method: 1}, res.seed])
            which.append(len(reps) - 1)
    points = [CriticalPoint(point=rep[0].point, hits=rep[2], first_seed=rep[3],
                            classification=classify_point(problem, rep[0].point, loss_rtol=loss_rtol,
                                                          eig_rtol=eig_rtol))
              for rep in reps]
    return points, which
