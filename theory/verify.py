"""The ``verify`` pipeline: build a random instance, minimise Meta-LoRA from a small random start, run every check.

Checks (names are part of the JSON contract): ``gradient_vs_autograd``, ``hessian_vs_autograd``, ``schur_identity``,
``theorem_3_1_rank``, ``corollary_1_sr_test_loss``, ``meta_lora_reduced_loss``, then ``theorem_3_3_recovery``
(T >= 3) or ``theorem_3_2_rank`` and ``corollary_2_rank_3k_fit`` (T = 2), ``meta_lora_test_loss`` (rank k for
T >= 3, rank 3k for T = 2) and ``second_order_stationarity``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import checks
from .autograd_ref import autograd_meta, autograd_reduced
from .checks import CheckResult
from .meta import meta_grad_flat, meta_hess
from .optimize import SolveOptions, SolveResult, minimise_reduced
from .problem import MetaPoint, Problem, require_remark_3_1
from .reduced import optimal_A, reduced_grad, reduced_hess, schur_complement

__all__ = ["VerifyReport", "run_verify"]


@dataclass(frozen=True)
class VerifyReport:
    """What :func:`run_verify` found: the ``problem``, the ``solve`` (:class:`theory.optimize.SolveResult`) and the
    ``checks`` (:class:`theory.checks.CheckResult`, one per theorem check), and whether all passed."""

    problem: Problem
    solve: SolveResult
    checks: tuple[CheckResult, ...]

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.checks)

    def to_dict(self) -> dict:
        p = self.problem
        return {
            "instance": {"d": p.d, "k": p.k, "T": p.T, "seed": p.seed},
            "solve": {"loss": self.solve.loss, "grad_norm": self.solve.grad_norm, "iterations": self.solve.iterations,
                      "status": self.solve.status, "seconds": self.solve.seconds},
            "checks": [c.to_dict() for c in self.checks],
            "passed": self.passed,
        }


def _rel_err(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.max(np.abs(a - b)) / max(1.0, float(np.max(np.abs(b)))))


def _derivative_checks(problem: Problem, U: np.ndarray, rng: np.random.Generator, tol: float) -> list[CheckResult]:
    """Analytic vs torch.func at the solution and at a random point, for L (full) and G (reduced)."""
    d, k, T = problem.d, problem.k, problem.T
    pts = [U, rng.standard_normal((T, d, k))]
    g_err = h_err = s_err = 0.0
    for Ui in pts:
        for A in (optimal_A(Ui, problem), rng.standard_normal((d, d))):
            x = MetaPoint(A, Ui).flatten()
            g_ref, H_ref = autograd_meta(problem, x)
            g_err = max(g_err, _rel_err(meta_grad_flat(x, problem), g_ref))
            h_err = max(h_err, _rel_err(meta_hess(A, Ui, problem), H_ref))
        g_ref, H_ref = autograd_reduced(problem, Ui.ravel())
        H_red = reduced_hess(Ui, problem)
        g_err = max(g_err, _rel_err(reduced_grad(Ui, problem), g_ref))
        h_err = max(h_err, _rel_err(H_red, H_ref))
        H_full = meta_hess(optimal_A(Ui, problem), Ui, problem)
        s_err = max(s_err, _rel_err(H_red, schur_complement(H_full, d * d)))
    where = "at the solution and a random point, full L and reduced G (max abs error / max(1, max |ref|))"
    return [
        CheckResult("gradient_vs_autograd", g_err <= tol, g_err, tol, "analytic vs torch.func.grad " + where),
        CheckResult("hessian_vs_autograd", h_err <= tol, h_err, tol, "analytic vs torch.func.hessian " + where),
        CheckResult("schur_identity", s_err <= tol, s_err, tol,
                    "reduced Hessian vs Schur complement H_UU - H_UA H_AA^-1 H_AU of the full Hessian at (A(U), U)"),
    ]


def run_verify(d: int, k: int, T: int, seed: int, *, init_scale: float = 1e-3,
               options: SolveOptions | None = None, derivative_tol: float = 1e-10) -> VerifyReport:
    """Run the whole pipeline on ``Problem.random(d, k, T, seed)``; refuses ``(T+1) k > d`` (Remark 3.1).

    Returns
    -------
    VerifyReport
        The problem, the solve (:class:`theory.optimize.SolveResult`) and the checks, in the order of the module
        docstring; ``report.passed`` is whether all passed.

    Raises
    ------
    ProblemError
        Sizes that are not positive integers, ``(T + 1) k > d``, or a seed that is not an integer >= 0.
    """
    require_remark_3_1(d, k, T)
    problem = Problem.random(d, k, T, seed)
    rng = np.random.default_rng([seed, 1])
    solve = minimise_reduced(problem, init_scale * rng.standard_normal((T, d, k)), options=options)
    U, A = solve.point, optimal_A(solve.point, problem)
    out = _derivative_checks(problem, U, rng, derivative_tol)
    out += [checks.theorem_3_1_rank(problem), checks.corollary_1_sr_test_loss(problem, k),
            checks.meta_lora_reduced_loss(problem, U)]
    if T >= 3:
        out += [checks.theorem_3_3_recovery(problem, A, U), checks.meta_lora_test_loss(problem, A, k)]
    else:
        out += [checks.theorem_3_2_rank(problem, A, U), checks.corollary_2_rank_3k_fit(problem, A),
                checks.meta_lora_test_loss(problem, A, 3 * k)]
    out.append(checks.second_order_stationarity(problem, U))
    return VerifyReport(problem, solve, tuple(out))
