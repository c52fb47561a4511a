"""One frozen result per critical-point solve.

A :class:`SearchResult` holds the point ``U`` of shape ``(T, d, k)`` the solver stopped at, the reduced loss
``G(U)``, the gradient norm ``||grad G(U)||_2``, the inertia of the Hessian on the orthogonal complement of the
O(k)^T orbit (:func:`theory.symmetry.restricted_inertia`), the iteration count, the seed of the start, the wall time
and a status whose readable text lives in the one table :data:`STATUS_MESSAGES`.

>>> r = SearchResult(point=np.zeros((3, 2, 1)), loss=1.0, grad_norm=0.0, inertia=(1, 0, 5), min_eigenvalue=-2.0,
...                  iterations=3, seed=7, seconds=0.01, status="converged", method="newton", scale=1.0)
>>> r.message
'gradient norm below tolerance'
>>> SearchResult.from_dict(r.to_dict()).inertia
(1, 0, 5)
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from theory.problem import ProblemError

__all__ = ["STATUS_MESSAGES", "CLASSES", "SearchResult"]

#: Why a solver stopped; every status any solver in :mod:`landscape.search` reports is a key here.
STATUS_MESSAGES: dict[str, str] = {
    "converged": "gradient norm below tolerance",
    "max_iter": "iteration limit reached before the gradient norm fell below tolerance",
    "diverged": "iterate norm exceeded the divergence bound (G is not coercive: all U_t U_t^T may grow together)",
    "stalled": "no step reduced the merit function even at the largest damping",
    "nonfinite": "a non-finite loss, gradient or Hessian was produced (float64 overflow)",
}

#: Classes of a converged critical point (:mod:`landscape.classify`), in the order summaries print them.
CLASSES: tuple[str, ...] = ("global_min", "spurious_min", "saddle", "degenerate")


@dataclass(frozen=True)
class SearchResult:
    """Outcome of one solve from one start.

    Attributes
    ----------
    point : (T, d, k) array, read-only, where the solver stopped
    loss : float, ``G(point)``
    grad_norm : float, ``||grad G(point)||_2``
    inertia : (negative, zero, positive) counts of the Hessian restricted to the quotient (``None`` if not computed)
    min_eigenvalue : float, smallest eigenvalue there (``nan`` if not computed)
    iterations : int
    seed : int, seed of the start (``numpy.random.default_rng(seed)`` redraws it)
    seconds : float, wall time of the solve
    status : str, a key of :data:`STATUS_MESSAGES`
    method : str, ``"newton"`` (root of grad G), ``"min"`` (regularised Newton descent) or ``"gd"``
    scale : float, standard deviation of the start's entries

    Raises
    ------
    ProblemError
        A ``status`` not in :data:`STATUS_MESSAGES`, or a ``point`` that is not three-dimensional.
    """

    point: np.ndarray
    loss: float
    grad_norm: float
    inertia: tuple[int, int, int] | None
    min_eigenvalue: float
    iterations: int
    seed: int
    seconds: float
    status: str
    method: str
    scale: float
    extra: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.status not in STATUS_MESSAGES:
            raise ProblemError(f"status must be one of {sorted(STATUS_MESSAGES)}, got {self.status!r}")
        pt = np.array(self.point, dtype=np.float64, copy=True)
        if pt.ndim != 3:
            raise ProblemError(f"point must have shape (T, d, k), got {pt.shape}")
        pt.setflags(write=False)
        object.__setattr__(self, "point", pt)
        if self.inertia is not None:
            object.__setattr__(self, "inertia", tuple(int(v) for v in self.inertia))

    @property
    def message(self) -> str:
        return STATUS_MESSAGES[self.status]

    @property
    def converged(self) -> bool:
        return self.status == "converged"

    def to_dict(self) -> dict:
        return {
            "point": self.point.tolist(), "loss": self.loss, "grad_norm": self.grad_norm,
            "inertia": None if self.inertia is None else list(self.inertia),
            "min_eigenvalue": self.min_eigenvalue, "iterations": self.iterations, "seed": self.seed,
            "seconds": self.seconds, "status": self.status, "method": self.method, "scale": self.scale,
            "extra": dict(self.extra),
        }

    @classmethod
    def from_dict(cls, data: dict) -> "SearchResult":
        return cls(**{**data, "inertia": None if data.get("inertia") is None else tuple(data["inertia"])})
