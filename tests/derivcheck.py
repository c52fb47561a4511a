"""Derivative checks in the style of jax's ``check_grads`` and pymanopt's diagnostics.

Central differences along a random direction (cost independent of the dimension), and the slope of the Taylor
error on a log-log grid: ``|f(x + h v) - f(x) - h <g, v>|`` is O(h^2) for a correct gradient,
``|f(x + h v) - f(x) - h <g, v> - h^2/2 <v, H v>|`` is O(h^3) for a correct Hessian.
"""

from __future__ import annotations

import numpy as np


def central_difference(f, x: np.ndarray, v: np.ndarray, h: float = 1e-5):
    """``(f(x + h v) - f(x - h v)) / (2 h)``; works for scalar and vector valued ``f``."""
    return (np.asarray(f(x + h * v)) - np.asarray(f(x - h * v))) / (2 * h)


def taylor_slope(f, g, x: np.ndarray, v: np.ndarray, hvp=None, hs=None, window: int = 5) -> float:
    """Slope of log(Taylor error) against log(h) along the unit vector of ``v``.

    The error at step h is ``max(|e(h)|, |e(-h)|)``. Over ``hs`` (default 25 steps from 1 down to 1e-6) the errors buried in round-off (below
    ``1e3 * eps * max(1, |f(x)|)``) are dropped; the slope is the least-squares fit over the ``window`` smallest
    remaining steps, where the leading error term dominates the higher-order ones.
    """
    hs = np.logspace(0, -6, 25) if hs is None else np.asarray(hs)
    v = v / np.linalg.norm(v)
    fx, gv = f(x), float(np.dot(g(x), v))
    vHv = float(np.dot(v, hvp(x, v))) if hvp is not None else 0.0
    # max over +h and -h: odd and even error terms cannot cancel in both (e(h) = c3 h^3 + c4 h^4 has a zero at
    # h = -c3/c4 that would bend the slope; max(|e(h)|, |e(-h)|) = |c3| h^3 + |c4| h^4 has none).
    errs = np.array([max(abs(f(x + s * v) - fx - s * gv - 0.5 * s * s * vHv) for s in (h, -h)) for h in hs])
    keep = errs > 1e3 * np.finfo(float).eps * max(1.0, abs(fx))
    h_kept, e_kept = hs[keep], errs[keep]
    if h_kept.size < window:
        raise ValueError(f"only {h_kept.size} steps lie above round-off; need {window}")
    order = np.argsort(h_kept)[:window]
    return float(np.polyfit(np.log(h_kept[order]), np.log(e_kept[order]), 1)[0])
