"""Exact global minimisers of the Meta-LoRA loss (the paper's Theorems 3.2-3.3 and Appendix D.1).

- For any T: ``A = A*``, ``U_t = U*_t Q_t`` with ``Q_t`` in O(k) gives ``L = 0``.
- For T = 2 (Appendix D.1): with ``V = [U*_1, U*_2]`` (d x 2k) and the hyperbolic rotation
  ``Lambda(s) = [[cosh s I_k, sinh s I_k], [sinh s I_k, cosh s I_k]]`` (which preserves ``J = diag(I_k, -I_k)``),
  ``[U_1, U_2] = V Lambda(s)`` keeps ``U_1 U_1^T - U_2 U_2^T = U*_1 U*_1^T - U*_2 U*_2^T``, so
  ``A(s) = A* + U*_1 U*_1^T - U_1 U_1^T`` fits both tasks exactly: a one-parameter family (a hyperbola) of global
  minima with ``A(s) != A*`` for ``s != 0`` and ``rank(A(s) - A*) <= 2k``.

>>> from theory.problem import Problem
>>> from theory.meta import meta_loss
>>> p = Problem.random(d=5, k=1, T=2, seed=0)
>>> pt = d1_family_point(p, 0.7)
>>> meta_loss(pt.A, pt.U, p) < 1e-20
True
"""

from __future__ import annotations

import numpy as np
from scipy.stats import ortho_group

from .problem import MetaPoint, Problem, ProblemError

__all__ = ["random_orthogonal", "global_minimiser", "d1_family_point"]


def random_orthogonal(k: int, T: int, seed) -> np.ndarray:
    """``T`` Haar-random matrices of O(k), shape ``(T, k, k)`` (SciPy's ``ortho_group``)."""
    if k == 1:
        rng = np.random.default_rng(seed)
        return rng.choice([-1.0, 1.0], size=(T, 1, 1))
    return np.asarray(ortho_group.rvs(dim=k, size=T, random_state=np.random.default_rng(seed))).reshape(T, k, k)


def global_minimiser(problem: Problem, *, seed=None) -> MetaPoint:
    """``A = A*``, ``U_t = U*_t Q_t`` (``Q_t = I`` when ``seed`` is None, else Haar-random from the seed)."""
    U = problem.U_star.copy()
    if seed is not None:
        U = U @ random_orthogonal(problem.k, problem.T, seed)
    return MetaPoint(problem.A_star.copy(), U)


def d1_family_point(problem: Problem, s: float) -> MetaPoint:
    """The Appendix D.1 global minimum at hyperbolic parameter ``s`` (T = 2 only); ``s = 0`` gives ``(A*, U*)``."""
    if problem.T != 2:
        raise ProblemError(f"the Appendix D.1 family exists for T = 2, got T = {problem.T}")
    s = float(s)
    if not np.isfinite(s):
        raise ProblemError(f"s must be finite, got {s}")
    U1s, U2s = problem.U_star
    with np.errstate(over="ignore", invalid="ignore"):
        c, sh = np.cosh(s), np.sinh(s)
        U1, U2 = c * U1s + sh * U2s, sh * U1s + c * U2s
        A = problem.A_star + U1s @ U1s.T - U1 @ U1.T
    U = np.stack([U1, U2])
    if not (np.all(np.isfinite(A)) and np.all(np.isfinite(U))):
        raise ProblemError(f"s = {s:g} overflows float64 (cosh(s) = {c:.3g}): the family point is not representable")
    return MetaPoint(A, U)
