"""The paper's theorems as computations that can fail: each check returns a :class:`CheckResult` with the measured
value, the bound it is compared with and a pass flag (DESIGN.md section 1).

>>> from theory.problem import Problem
>>> theorem_3_1_rank(Problem.random(d=6, k=1, T=3, seed=0)).passed
True
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from .finetune import finetune_optimum
from .meta import meta_loss
from .problem import Problem, ProblemError, require_finite
from .reduced import reduced_grad, reduced_hess, reduced_loss
from .sr import sr_minimiser
from .symmetry import restricted_inertia

__all__ = [
    "CheckResult", "numerical_rank", "theorem_3_1_rank", "corollary_1_sr_test_loss", "meta_lora_reduced_loss",
    "theorem_3_2_rank", "corollary_2_rank_3k_fit", "theorem_3_3_recovery", "meta_lora_test_loss",
    "second_order_stationarity",
]


@dataclass(frozen=True)
class CheckResult:
    """``name``; ``passed``; ``value`` (what was measured); ``bound`` (what it is compared with); ``detail``."""

    name: str
    passed: bool
    value: float
    bound: float
    detail: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


def numerical_rank(M: np.ndarray, *, rtol: float = 1e-9, atol: float = 0.0) -> int:
    """Number of singular values of ``M`` above ``max(rtol * s_max, atol)``."""
    s = np.linalg.svd(require_finite("M", M), compute_uv=False)
    if s.size == 0 or s[0] == 0.0:
        return 0
    return int(np.sum(s > max(rtol * s[0], atol)))


def theorem_3_1_rank(problem: Problem, *, rtol: float = 1e-9) -> CheckResult:
    """Theorem 3.1: ``rank(A_SR - A*) = T k`` (needs ``T k <= d``; the ``U*_t`` columns generically independent)."""
    d, k, T = problem.d, problem.k, problem.T
    if T * k > d:
        raise ProblemError(f"Theorem 3.1 needs T*k <= d, got T*k = {T * k} > d = {d}")
    rank = numerical_rank(sr_minimiser(problem) - problem.A_star, rtol=rtol)
    return CheckResult("theorem_3_1_rank", rank == T * k, float(rank), float(T * k),
                       f"numerical rank of A_SR - A* (singular values above {rtol:g} * s_max) against T k")


def corollary_1_sr_test_loss(problem: Problem, r: int | None = None, *, rtol: float = 1e-10) -> CheckResult:
    """Corollary 1: the test loss of SR after the best rank-r LoRA on task T+1 is the tail singular-value sum of
    ``W_{T+1} - A_SR`` beyond r, and is > 0 for ``r < rank(W_{T+1} - A_SR)`` (generically ``(T+1) k``).
    The bound is ``rtol * ||W_{T+1} - A_SR||_F^2``: the value must exceed it (relative round-off level)."""
    r = problem.k if r is None else r
    res = finetune_optimum(sr_minimiser(problem), problem.W_test, r)
    bound = rtol * float(np.sum(res.singular_values ** 2))
    rank = numerical_rank(problem.W_test - sr_minimiser(problem))
    expected_positive = r < rank
    passed = (res.loss > bound) if expected_positive else (res.loss <= bound)
    return CheckResult("corollary_1_sr_test_loss", passed, res.loss, bound,
                       f"rank-{r} LoRA on W_(T+1) from A_SR; rank(W_(T+1) - A_SR) = {rank}, so the loss must be "
                       f"{'> bound' if expected_positive else '<= bound'}")


def meta_lora_reduced_loss(problem: Problem, U, *, tol: float = 1e-12) -> CheckResult:
    """The reduced loss reached: ``G(U) < tol``."""
    G = reduced_loss(U, problem)
    return CheckResult("meta_lora_reduced_loss", G < tol, G, tol, "G(U) = min_A L(A, U) at the solver's point")


def theorem_3_2_rank(problem: Problem, A, U, *, rtol: float = 1e-8) -> CheckResult:
    """Theorem 3.2: at a zero-loss point ``rank(A - A*) <= 2k``. Value: the number of singular values of ``A - A*``
    above ``rtol * max(1, ||A - A*||_2)``; bound ``2k``.

    Near zero loss the rank is seen exactly: ``A - A* = R_t + U*_t U*_t^T - U_t U_t^T`` for every t, so the
    (2k+1)-th singular value is at most ``||R_t||_2 <= sqrt(L)`` (Weyl), below the threshold once ``sqrt(L)`` is.
    (No tolerance may grow with ``sqrt(L)``: by the same bound the check could then never fail.) At a point with
    ``L > 0`` the theorem says nothing, and a rank above 2k there is reported as a failure.
    """
    A = require_finite("A", A)
    shift = A - problem.A_star
    rank = numerical_rank(shift, rtol=0.0, atol=rtol * max(1.0, float(np.linalg.norm(shift, 2))))
    return CheckResult("theorem_3_2_rank", rank <= 2 * problem.k, float(rank), float(2 * problem.k),
                       f"numerical rank of A - A* at L = {meta_loss(A, U, problem):.3g}")


def corollary_2_rank_3k_fit(problem: Problem, A, *, rtol: float = 1e-8) -> CheckResult:
    """Corollary 2: a rank-3k adapter fits the new task exactly from any zero-loss base; bound
    ``rtol * ||W_{T+1} - A||_F^2``."""
    res = finetune_optimum(A, problem.W_test, 3 * problem.k)
    bound = rtol * float(np.sum(res.singular_values ** 2))
    return CheckResult("corollary_2_rank_3k_fit", res.loss <= bound, res.loss, bound,
                       "best rank-3k LoRA loss on W_(T+1) from the retrained A")


def theorem_3_3_recovery(problem: Problem, A, U, *, tol: float = 1e-6) -> CheckResult:
    """Theorem 3.3 (T >= 3): zero loss forces ``A = A*`` and ``U_t U_t^T = U*_t U*_t^T``. Value: the largest relative
    error ``max(||A - A*|| / ||A*||, max_t ||U_t U_t^T - U*_t U*_t^T|| / ||U*_t U*_t^T||)`` (Frobenius)."""
    if problem.T < 3:
        raise ProblemError(f"Theorem 3.3 needs T >= 3, got T = {problem.T}")
    A = np.asarray(A, dtype=np.float64)
    U = np.asarray(U, dtype=np.float64).reshape(problem.T, problem.d, problem.k)
    P, Ps = U @ U.transpose(0, 2, 1), problem.U_star @ problem.U_star.transpose(0, 2, 1)
    errs = [np.linalg.norm(A - problem.A_star) / max(np.linalg.norm(problem.A_star), 1e-300)]
    errs += list(np.linalg.norm(P - Ps, axis=(1, 2)) / np.maximum(np.linalg.norm(Ps, axis=(1, 2)), 1e-300))
    value = float(max(errs))
    return CheckResult("theorem_3_3_recovery", value <= tol, value, tol,
                       f"relative recovery error of A* and of U*_t U*_t^T at L = {meta_loss(A, U, problem):.3g}")


def meta_lora_test_loss(problem: Problem, A, r: int, *, rtol: float = 1e-8) -> CheckResult:
    """Best rank-r LoRA loss on the held-out task from the retrained ``A`` (Corollary 3 for ``r = k``, ``T >= 3``;
    Corollary 2 for ``r = 3k``); bound ``rtol * ||W_{T+1}||_F^2``."""
    res = finetune_optimum(A, problem.W_test, r)
    bound = rtol * float(np.sum(problem.W_test ** 2))
    return CheckResult("meta_lora_test_loss", res.loss <= bound, res.loss, bound,
                       f"rank-{r} LoRA on W_(T+1) from the retrained A")


def second_order_stationarity(problem: Problem, U, *, gtol: float = 1e-8, rtol: float = 1e-8) -> CheckResult:
    """Second-order stationarity of G at ``U``: gradient norm <= ``gtol`` and no negative eigenvalue of the Hessian
    restricted to the orthogonal complement of the O(k)^T orbit (relative tolerance ``rtol``)."""
    g = float(np.linalg.norm(reduced_grad(U, problem)))
    ine = restricted_inertia(reduced_hess(U, problem), np.asarray(U).reshape(problem.T, problem.d, problem.k),
                             rtol=rtol)
    return CheckResult("second_order_stationarity", g <= gtol and ine.negative == 0, g, gtol,
                       f"restricted Hessian inertia (neg, zero, pos) = ({ine.negative}, {ine.zero}, {ine.positive}), "
                       f"smallest eigenvalue {ine.min_eigenvalue:.3g}")
