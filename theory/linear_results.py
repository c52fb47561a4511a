"""Results of the Figure 1 experiment (:func:`theory.linear_experiment.run_setting`) and their JSON summaries.

>>> from theory.linear_experiment import run_setting
>>> from theory.linear_settings import Settings
>>> res = run_setting(Settings(d=5, T=3, N=200, n=50, runs=2, retrain_iters=50, finetune_iters=20))
>>> [row["panel"] for row in summary_rows({"d": [res]})], res.finite_sample_floor().shape
(['d'], (2,))
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .linear_settings import Settings, settings_dict

__all__ = ["SettingResult", "setting_summary", "summary_rows"]


@dataclass(frozen=True)
class SettingResult:
    """Curves and diagnostics of one setting (R runs).

    ``meta_test``, ``sr_test``: population test loss ``||A + B C^T - W_{T+1}||_F^2`` per run and fine-tuning
    iteration, shape ``(R, finetune_iters + 1)`` (column 0 is the start); ``meta_finetune``, ``sr_finetune``: the
    empirical fine-tuning loss, same shape; ``meta_retrain``, ``sr_retrain``: empirical retraining loss per run and
    iteration, ``(R, iterations + 1)``; ``sr_floor``: Corollary 1 floor per run (infinite-sample ``A_SR``, rank-r
    LoRA); ``sr_base_error``: ``||A_SR,hat - A_SR||_F``; ``meta_base_error``: ``||A_meta - A*||_F``;
    ``best_adapter``: per method, the Eckart-Young optimum ``min_{rank <= r} ||A_hat + B C^T - W_{T+1}||_F^2`` for
    the retrained base (no rank-r adapter, however trained, gets below it); ``steps``, ``grad_norms`` (final) and
    ``iterations`` of each stage."""

    settings: Settings
    meta_test: np.ndarray
    sr_test: np.ndarray
    meta_retrain: np.ndarray
    sr_retrain: np.ndarray
    meta_finetune: np.ndarray
    sr_finetune: np.ndarray
    sr_floor: np.ndarray
    sr_base_error: np.ndarray
    meta_base_error: np.ndarray
    best_adapter: dict = field(default_factory=dict)
    steps: dict = field(default_factory=dict)
    grad_norms: dict = field(default_factory=dict)
    iterations: dict = field(default_factory=dict)
    A_meta: np.ndarray | None = None
    A_sr: np.ndarray | None = None
    seconds: float = 0.0

    def finite_sample_floor(self) -> np.ndarray:
        """``(sqrt(sr_floor) - ||A_SR,hat - A_SR||_F)_+^2`` per run: a lower bound on ``||A_SR,hat + B C^T -
        W_{T+1}||_F^2`` for every rank-r ``B C^T``. Reason: ``sqrt`` of the rank-r tail energy of ``W - A`` is the
        Frobenius distance from ``W - A`` to the matrices of rank <= r (Eckart-Young-Mirsky), a 1-Lipschitz function
        of ``A``; so the floor can drop by at most the retrained base's distance from the infinite-sample ``A_SR``."""
        return np.maximum(np.sqrt(self.sr_floor) - self.sr_base_error, 0.0) ** 2


def setting_summary(panel: str, res: SettingResult) -> dict:
    """JSON-ready summary of one setting: final test losses (median, min, max over runs) of both methods, the
    Corollary 1 floor and its finite-sample lower bound, and the convergence diagnostics.

    Returns
    -------
    dict
        ``panel``, ``value``, ``settings``, ``{median, min, max}`` of each loss, floor and step size,
        ``meta_wins_runs``, ``iterations``, ``final_grad_norm_max`` and ``seconds``. A run that diverged makes its
        statistics NaN or inf; ``summary.json`` holds them as ``null`` (:mod:`theory.strict_json`).
    """
    s = res.settings

    def stats(x):
        x = np.asarray(x, dtype=np.float64)
        return {"median": float(np.median(x)), "min": float(np.min(x)), "max": float(np.max(x))}

    return {
        "panel": panel, "value": getattr(s, panel), "settings": settings_dict(s),
        "meta_lora": stats(res.meta_test[:, -1]), "sr_lora": stats(res.sr_test[:, -1]),
        "sr_floor": stats(res.sr_floor), "sr_floor_finite_sample": stats(res.finite_sample_floor()),
        "sr_base_error": stats(res.sr_base_error), "meta_base_error": stats(res.meta_base_error),
        "best_adapter": {m: stats(v) for m, v in res.best_adapter.items()},
        "meta_wins_runs": int(np.sum(res.meta_test[:, -1] < res.sr_test[:, -1])),
        "iterations": dict(res.iterations),
        "final_grad_norm_max": {k: float(np.max(v)) for k, v in res.grad_norms.items()},
        "step_size": {k: stats(v) for k, v in res.steps.items()},
        "seconds": res.seconds,
    }


def summary_rows(results: dict) -> list[dict]:
    """``[{"panel", "value", "meta_lora", "sr_lora", "sr_floor"}]``: medians over runs of the final test losses and
    of the Corollary 1 floor, one row per panel and value.

    Returns
    -------
    list of dict
        In the order of ``results`` and of each panel's values.
    """
    rows = []
    for panel, res_list in results.items():
        for res in res_list:
            rows.append({"panel": panel, "value": getattr(res.settings, panel),
                         "meta_lora": float(np.median(res.meta_test[:, -1])),
                         "sr_lora": float(np.median(res.sr_test[:, -1])),
                         "sr_floor": float(np.median(res.sr_floor))})
    return rows
