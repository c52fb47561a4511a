"""Fine-tuning a new task with an asymmetric rank-r adapter (Eckart-Young-Mirsky).

``min_{B, C} ||A + B C^T - W||_F^2`` over ``B, C`` of shape ``(d, r)`` equals the sum of the squared singular values
of ``W - A`` beyond the r-th; an optimum is ``B = U_r S_r``, ``C = V_r`` from the SVD ``W - A = U S V^T``.
Corollary 1 of the paper is this number for ``A = A_SR`` and ``W = W_{T+1}``.

>>> import numpy as np
>>> res = finetune_optimum(np.zeros((3, 3)), np.diag([3.0, 2.0, 1.0]), r=1)
>>> round(res.loss, 12)
5.0
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .problem import ProblemError, require_finite

__all__ = ["FinetuneResult", "finetune_optimum", "tail_energy"]


@dataclass(frozen=True)
class FinetuneResult:
    """Optimal rank-r adapter: ``loss = ||A + B C^T - W||_F^2``, ``B``, ``C`` of shape ``(d, r)``, and the singular
    values of ``W - A`` (descending) that the loss is the tail of."""

    loss: float
    B: np.ndarray
    C: np.ndarray
    singular_values: np.ndarray


def tail_energy(singular_values: np.ndarray, r: int) -> float:
    """``sum_{i > r} s_i^2`` for descending singular values ``s``."""
    s = np.asarray(singular_values, dtype=np.float64)
    return float(np.sum(s[r:] ** 2))


def finetune_optimum(A, W, r: int) -> FinetuneResult:
    """Best rank-``r`` asymmetric adapter ``B C^T`` for base ``A`` (d, d) on task matrix ``W`` (d, d)."""
    A = require_finite("the base A", A)
    W = require_finite("the task matrix W", W)
    if A.ndim != 2 or A.shape[0] != A.shape[1] or W.shape != A.shape:
        raise ProblemError(f"A and W must be square matrices of the same shape, got {A.shape} and {W.shape}")
    if isinstance(r, bool) or not isinstance(r, (int, np.integer)) or r < 0:
        raise ProblemError(f"the adapter rank r must be an integer >= 0, got {r!r}")
    r = min(int(r), A.shape[0])
    Us, s, Vt = np.linalg.svd(W - A)
    B = Us[:, :r] * s[:r]
    C = Vt[:r].T
    return FinetuneResult(loss=tail_energy(s, r), B=B, C=C, singular_values=s)
