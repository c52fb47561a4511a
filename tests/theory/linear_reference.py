"""Per-run, per-task Python loops of the Figure 1 gradient steps: the test oracle of the batched steps in
:mod:`theory.linear_experiment` and the baseline of ``benchmarks/figure1_speed.py``.

Each factory has the signature of its batched counterpart (:data:`theory.linear_experiment.BATCHED_STEPS`), so
``run_setting(s, steps=LOOP_STEPS)`` runs the same algorithm one run and one task at a time. The SR loop forms the
task sums inside each step.
"""

from __future__ import annotations

import numpy as np

from theory.linear_stats import Stats

__all__ = ["LOOP_STEPS", "meta_step_loop", "sr_step_loop", "lora_step_loop"]


def meta_step_loop(stats: Stats, eta: np.ndarray):
    """The Meta-LoRA step with a Python loop over runs j and tasks t (oracle and benchmark baseline)."""

    def step(p):
        A, U = p
        n_runs, T = U.shape[:2]
        A_new, U_new = np.empty_like(A), np.empty_like(U)
        loss, g2 = np.zeros((n_runs, 1)), np.zeros(n_runs)
        for j in range(n_runs):
            gA = np.zeros_like(A[j])
            for t in range(T):
                M = A[j] + U[j, t] @ U[j, t].T
                MS = M @ stats.Sxx[j, t]
                loss[j, 0] += np.sum(MS * M) - 2.0 * np.sum(M * stats.Syx[j, t]) + stats.syy[j, t]
                Rt = MS - stats.Syx[j, t]
                gA += 2.0 * Rt
                gU = 2.0 * (Rt + Rt.T) @ U[j, t]
                g2[j] += np.sum(gU * gU)
                U_new[j, t] = U[j, t] - eta[j] * gU
            g2[j] += np.sum(gA * gA)
            A_new[j] = A[j] - eta[j] * gA
        return loss, g2, (A_new, U_new)
    return step


def sr_step_loop(stats: Stats, eta: np.ndarray):
    """The SR step looping over runs and tasks (task sums formed inside the step)."""

    def step(A):
        n_runs, T = stats.Sxx.shape[:2]
        A_new, loss, g2 = np.empty_like(A), np.zeros((n_runs, 1)), np.zeros(n_runs)
        for j in range(n_runs):
            g = np.zeros_like(A[j])
            for t in range(T):
                AS = A[j] @ stats.Sxx[j, t]
                loss[j, 0] += np.sum(AS * A[j]) - 2.0 * np.sum(A[j] * stats.Syx[j, t]) + stats.syy[j, t]
                g += 2.0 * (AS - stats.Syx[j, t])
            g2[j] = np.sum(g * g)
            A_new[j] = A[j] - eta[j] * g
        return loss, g2, A_new
    return step


def lora_step_loop(A: np.ndarray, stats: Stats, W_test: np.ndarray, eta: np.ndarray):
    """The fine-tuning step looping over methods m and runs j."""

    def step(p):
        B, C = p
        B_new, C_new = np.empty_like(B), np.empty_like(C)
        logs, g2 = np.empty(A.shape[:2] + (2,)), np.empty(A.shape[:2])
        for m in range(A.shape[0]):
            for j in range(A.shape[1]):
                M = A[m, j] + B[m, j] @ C[m, j].T
                MS = M @ stats.Sxx[j]
                logs[m, j, 0] = np.sum((M - W_test[j]) ** 2)
                logs[m, j, 1] = np.sum(MS * M) - 2.0 * np.sum(M * stats.Syx[j]) + stats.syy[j]
                Rm = MS - stats.Syx[j]
                gB, gC = 2.0 * Rm @ C[m, j], 2.0 * Rm.T @ B[m, j]
                g2[m, j] = np.sum(gB * gB) + np.sum(gC * gC)
                B_new[m, j], C_new[m, j] = B[m, j] - eta[m, j] * gB, C[m, j] - eta[m, j] * gC
        return logs, g2, (B_new, C_new)
    return step


#: the factories in the order of ``theory.linear_experiment.BATCHED_STEPS`` (Meta-LoRA, SR, fine-tuning)
LOOP_STEPS = (meta_step_loop, sr_step_loop, lora_step_loop)
