"""Local minimisation of the reduced loss G with its analytic gradient and Hessian (SciPy trust-region).

Every solve returns one frozen :class:`SolveResult`; why it stopped is a readable message from :data:`STATUS`.
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
    "maxiter": "iteration limit reached before the gradient norm fell below gtol",
    "failed": "the trust-region solver stopped without reaching gtol",
}


@dataclass(frozen=True)
class SolveOptions:
    """``method`` one of SciPy's ``trust-exact`` (default; escapes saddles through negative curvature),
    ``trust-krylov``, ``trust-ncg``; ``gtol`` the target gradient norm; ``maxiter`` the iteration cap."""

    method: str = "trust-exact"
    gtol: float = 1e-11
    maxiter: int = 500

    def __post_init__(self):
        if self.method not in ("trust-exact", "trust-krylov", "trust-ncg"):
            raise ProblemError(f"method must be trust-exact, trust-krylov or trust-ncg, got {self.method!r}")
        if not (np.isfinite(self.gtol) and self.gtol > 0):
            raise ProblemError(f"gtol must be a finite number > 0, got {self.gtol!r}")
        require_int("maxiter", self.maxiter)


@dataclass(frozen=True)
class SolveResult:
    """Point ``U`` (T, d, k), loss ``G(U)``, gradient norm, iterations, status key of :data:`STATUS`, seconds."""

    U: np.ndarray
    loss: float
    grad_norm: float
    iterations: int
    status: str
    seconds: float

    @property
    def success(self) -> bool:
        return self.status == "converged"

    @property
    def message(self) -> str:
        return STATUS[self.status]


def minimise_reduced(problem: Problem, U0, *, options: SolveOptions | None = None) -> SolveResult:
    """Minimise ``G`` from ``U0`` (T, d, k) with a SciPy trust-region method on the analytic derivatives."""
    options = options or SolveOptions()
    U0 = as_U(U0, problem)
    if not np.all(np.isfinite(U0)):
        raise ProblemError("U0 must have finite entries")
    x0 = U0.ravel().copy()
    start = time.perf_counter()
    res = scipy.optimize.minimize(
        reduced_loss, x0, args=(problem,), jac=reduced_grad, hess=reduced_hess, method=options.method,
        options={"gtol": options.gtol, "maxiter": options.maxiter})
    seconds = time.perf_counter() - start
    U = res.x.reshape(problem.T, problem.d, problem.k)
    gnorm = float(np.linalg.norm(reduced_grad(U, problem)))
    if gnorm <= options.gtol:
        status = "converged"
    elif res.nit >= options.maxiter:
        status = "maxiter"
    else:
        status = "failed"
    return SolveResult(U=U, loss=reduced_loss(U, problem), grad_norm=gnorm, iterations=int(res.nit),
                       status=status, seconds=seconds)
