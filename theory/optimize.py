"""Local minimisation of the reduced loss G with its analytic gradient and Hessian (SciPy trust-region).

Every solve returns one frozen :class:`SolveResult`; why it stopped is a readable message from :data:`STATUS`. The
vocabulary is that of :mod:`landscape.result`: the result's ``point`` and ``converged``, the options' ``max_iter``,
the status ``"max_iter"``.

>>> from theory.problem import Problem
>>> p = Problem.random(d=4, k=1, T=3, seed=0)
>>> res = minimise_reduced(p, p.U_star + 1e-3)
>>> res.converged, res.point.shape
(True, (3, 4, 1))
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import scipy.optimize

from ._shapes import as_U
from .cli_contract import require_int
from .problem import Problem, ProblemError
from .reduced import reduced_grad, reduced_hess, reduced_loss

__all__ = ["SolveOptions", "SolveResult", "STATUS", "minimise_reduced"]

STATUS = {
    "converged": "gradient norm below gtol",
    "max_iter": "iteration limit reached before the gradient norm fell below gtol",
    "failed": "the trust-region solver stopped without reaching gtol",
}


@dataclass(frozen=True)
class SolveOptions:
    """Options of :func:`minimise_reduced`, validated when made.

    Attributes
    ----------
    method : str
        One of SciPy's ``trust-exact`` (default; escapes saddles through negative curvature), ``trust-krylov``,
        ``trust-ncg``.
    gtol : float
        The target gradient norm ``||grad G||_2`` (> 0, finite).
    max_iter : int
        The iteration cap (> 0).

    Raises
    ------
    ProblemError
        An unknown method, ``gtol`` not a finite number > 0, or ``max_iter`` not a positive integer.
    """

    method: str = "trust-exact"
    gtol: float = 1e-11
    max_iter: int = 500

    def __post_init__(self):
        if self.method not in ("trust-exact", "trust-krylov", "trust-ncg"):
            raise ProblemError(f"method must be trust-exact, trust-krylov or trust-ncg, got {self.method!r}")
        if not (np.isfinite(self.gtol) and self.gtol > 0):
            raise ProblemError(f"gtol must be a finite number > 0, got {self.gtol!r}")
        require_int("max_iter", self.max_iter)


@dataclass(frozen=True)
class SolveResult:
    """Outcome of one solve, in the shape of :class:`landscape.result.SearchResult`.

    Attributes
    ----------
    point : (T, d, k) array, where the solver stopped
    loss : float, ``G(point)``
    grad_norm : float, ``||grad G(point)||_2``
    iterations : int
    status : str, a key of :data:`STATUS`
    seconds : float, wall time of the solve
    """

    point: np.ndarray
    loss: float
    grad_norm: float
    iterations: int
    status: str
    seconds: float

    @property
    def converged(self) -> bool:
        """Whether the gradient norm fell below ``gtol`` (status ``"converged"``)."""
        return self.status == "converged"

    @property
    def message(self) -> str:
        """The readable reason it stopped, from :data:`STATUS`."""
        return STATUS[self.status]


def minimise_reduced(problem: Problem, U0, *, options: SolveOptions | None = None) -> SolveResult:
    """Minimise ``G`` from ``U0`` (T, d, k) with a SciPy trust-region method on the analytic derivatives.

    Returns
    -------
    SolveResult
        The point, its loss and gradient norm, the iterations, the status (a key of :data:`STATUS`) and the
        seconds.

    Raises
    ------
    ProblemError
        ``U0`` of a wrong shape or not finite.
    """
    options = options or SolveOptions()
    U0 = as_U(U0, problem)
    if not np.all(np.isfinite(U0)):
        raise ProblemError("U0 must have finite entries")
    x0 = U0.ravel().copy()
    start = time.perf_counter()
    res = scipy.optimize.minimize(
        reduced_loss, x0, args=(problem,), jac=reduced_grad, hess=reduced_hess, method=options.method,
        options={"gtol": options.gtol, "maxiter": options.max_iter})
    seconds = time.perf_counter() - start
    U = res.x.reshape(problem.T, problem.d, problem.k)
    gnorm = float(np.linalg.norm(reduced_grad(U, problem)))
    if gnorm <= options.gtol:
        status = "converged"
    elif res.nit >= options.max_iter:
        status = "max_iter"
    else:
        status = "failed"
    return SolveResult(point=U, loss=reduced_loss(U, problem), grad_norm=gnorm, iterations=int(res.nit),
                       status=status, seconds=seconds)
