"""Finite-sample linear experiments of the paper's Section 4.1 (Figure 1): Meta-LoRA vs standard retraining (SR),
each followed by LoRA fine-tuning of a held-out task.

Model (DESIGN.md section 1): ``W_t = A* + U*_t U*_t^T``; data of task t are ``x ~ N(0, I_d)``,
``y = W_t x + eps``, ``eps ~ N(0, sigma^2 I_d)`` (sigma is the standard deviation); N samples for each retraining
task t = 1..T, n samples for the held-out task T+1.

Empirical losses (means over samples, sums over tasks):

* Meta-LoRA: ``L_N(A, U) = sum_t (1/N) sum_i ||(A + U_t U_t^T) x_ti - y_ti||^2``, A of shape ``(d, d)`` and U of
  shape ``(T, d, k)`` both trained (symmetric rank-k adapters);
* SR on the pooled samples: ``L_SR,N(A) = sum_t (1/N) sum_i ||A x_ti - y_ti||^2`` (T times the pooled mean);
* fine-tuning: ``L_n(B, C) = (1/n) sum_i ||(A + B C^T) x_i - y_i||^2`` with A frozen, ``B, C`` of shape ``(d, r)``,
  ``r = 3k`` when ``T = 2`` (Corollary 2) and ``r = k`` otherwise (Corollary 3).

**Sufficient statistics (exact, not an approximation).** For a linear predictor M,
``(1/N) sum_i ||M x_i - y_i||^2 = <M Sxx, M> - 2 <M, Syx> + syy`` with ``Sxx = X^T X / N`` (d, d),
``Syx = Y^T X / N`` (d, d) and ``syy = tr(Y^T Y) / N``; the gradient in M is ``2 (M Sxx - Syx)``. This is an
algebraic identity of the sample sums, so gradient descent run on the statistics gives the same iterates as gradient
descent on the per-sample loss (up to floating-point round-off), at a cost independent of N per step. The tests check
it against the per-sample loss and torch autograd.

Every run and task is computed at once on stacked arrays (``(runs, T, d, d)``); ``implementation="loop"`` runs the
same algorithm with a Python loop over runs and tasks (the test oracle and the benchmark baseline).

Step sizes (plain gradient descent, one fixed step per run and stage, computed from that run's data only):

* SR: ``eta = 1 / (2 lambda_max(sum_t Sxx_t))``, one over the Lipschitz constant of its gradient (convex quadratic).
* Meta-LoRA: ``eta = 1 / (lambda (2 T + 8 s))`` with ``lambda = max_t lambda_max(Sxx_t)`` and
  ``s = max_t ||Syx_t||_2`` (about ``max_t ||W_t||_2``). ``2 T + 8 s`` bounds the Hessian's largest eigenvalue at
  the minimiser: the Gauss-Newton part is at most ``4 T + 16 max_t ||U_t||_2^2``, and on 160 random instances of the
  sweep's sizes ``lambda_max(H(A*, U*)) / (T + 4 max_t ||W_t||_2)`` lay in [1.2, 2.1], so ``eta * lambda_max(H)``
  is about 1 (< 2, stable; twice this step diverged in trials).
* Fine-tuning: ``eta = 1 / (4 lambda_n s_0)`` with ``lambda_n = lambda_max(Sxx_test)`` and
  ``s_0 = ||Syx_test - A Sxx_test||_2 / lambda_n`` (about the top singular value of ``W_{T+1} - A``); at a balanced
  optimum ``||B||^2 = ||C||^2 = s_1`` the Hessian's top eigenvalue is about ``4 lambda_n s_1``.

Retraining runs until every run's gradient norm is below ``retrain_gtol = 1e-10`` times its start value (checked
every 250 iterations; at most ``retrain_iters``); fine-tuning runs a fixed ``finetune_iters`` (the plotted curves).
Each method gets its own step from its own data and base, so neither is starved.

Starts: ``A = 0``; ``U_t``, ``B``, ``C`` with i.i.d. ``N(0, init_scale^2)`` entries; the same ``(B, C)`` start for
both retrained bases of a run.

>>> s = Settings(d=5, T=3, N=200, n=50, k=1, sigma=0.1, runs=2, retrain_iters=50, finetune_iters=20)
>>> res = run_setting(s)
>>> res.meta_test.shape, res.sr_test.shape
((2, 21), (2, 21))
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, fields, replace

import numpy as np

from .finetune import finetune_optimum
from .problem import Problem, ProblemError, require_remark_3_1
from .sr import sr_minimiser

__all__ = [
    "PANELS", "PANEL_FIXED", "DEFAULTS", "Settings", "Stats", "Instance", "SettingResult",
    "sufficient_stats", "empirical_loss", "meta_empirical", "sr_empirical", "lora_empirical",
    "draw_instance", "run_setting", "panel_settings", "step_sizes", "settings_dict", "run_panels",
    "setting_summary", "summary_rows",
]

#: the five panels of Figure 1: the parameter varied and its values (one parameter at a time)
PANELS: dict[str, tuple[int, ...]] = {
    "d": (5, 10, 20), "T": (2, 3, 5), "N": (100, 1000, 10000), "n": (100, 1000, 10000), "k": (1, 2, 3),
}
#: settings a panel fixes differently from the defaults: k = 3 at T = 3 needs d >= (T+1) k = 12 (Remark 3.1), so
#: the k panel runs at d = 12 for all three values unless the user sets d
PANEL_FIXED: dict[str, dict[str, int]] = {"k": {"d": 12}}
#: the paper's defaults (Section 4.1)
DEFAULTS = {"d": 10, "T": 3, "N": 5000, "n": 100, "k": 1, "sigma": 0.1}


def _positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
        raise ProblemError(f"{name} must be a positive integer (> 0), got {value!r}")
    return int(value)


def _positive_float(name: str, value) -> float:
    v = float(value)
    if not np.isfinite(v) or v <= 0:
        raise ProblemError(f"{name} must be a finite number > 0, got {value!r}")
    return v


def _check_field(name: str, value):
    """One :class:`Settings` field checked by its own rule (Remark 3.1, which ties d, k and T, is checked on the
    whole setting); returns the value normalised (int or float)."""
    if name in ("d", "T", "N", "n", "k", "runs", "retrain_iters", "finetune_iters"):
        return _positive_int(name, value)
    if name == "init_scale":
        return _positive_float(name, value)
    if name in ("sigma", "retrain_gtol"):
        try:
            v = float(value)
        except (TypeError, ValueError):
            v = float("nan")
        if not np.isfinite(v) or v < 0:
            raise ProblemError(f"{name} must be a finite number >= 0, got {value!r}")
        return v
    if name == "seed" and (isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0):
        raise ProblemError(f"seed must be an integer >= 0, got {value!r}")
    return value


@dataclass(frozen=True)
class Settings:
    """One experiment setting (one point of one panel).

    Attributes
    ----------
    d, T, N, n, k : sizes (dimension, retraining tasks, samples per retraining task, held-out samples, adapter rank)
    sigma : noise standard deviation (>= 0)
    runs : independent repetitions (fresh ground truth, data and starts per run)
    seed : base seed; run j uses the streams ``SeedSequence([seed, j, ...])``
    retrain_iters : most gradient-descent iterations of retraining (it stops earlier once every run's gradient
        norm is below ``retrain_gtol`` times its norm at the start; 0 turns that off)
    finetune_iters : gradient-descent iterations of fine-tuning (always all of them: the plotted curves)
    init_scale : standard deviation of the entries of the random starts of ``U``, ``B``, ``C``
    """

    d: int = DEFAULTS["d"]
    T: int = DEFAULTS["T"]
    N: int = DEFAULTS["N"]
    n: int = DEFAULTS["n"]
    k: int = DEFAULTS["k"]
    sigma: float = DEFAULTS["sigma"]
    runs: int = 5
    seed: int = 0
    retrain_iters: int = 100000
    finetune_iters: int = 5000
    retrain_gtol: float = 1e-10
    init_scale: float = 1e-2

    def __post_init__(self):
        for f in fields(self):
            object.__setattr__(self, f.name, _check_field(f.name, getattr(self, f.name)))
        require_remark_3_1(self.d, self.k, self.T)

    @property
    def rank(self) -> int:
        """Fine-tuning rank r: ``3k`` for ``T = 2`` (Corollary 2), else ``k`` (Corollary 3)."""
        return 3 * self.k if self.T == 2 else self.k


@dataclass(frozen=True)
class Stats:
    """Sufficient statistics of samples ``X, Y`` of shape ``(..., m, d)``: ``Sxx = X^T X / m`` and
    ``Syx = Y^T X / m`` of shape ``(..., d, d)``, ``syy = tr(Y^T Y) / m`` of shape ``(...)``."""

    Sxx: np.ndarray
    Syx: np.ndarray
    syy: np.ndarray


def sufficient_stats(X: np.ndarray, Y: np.ndarray) -> Stats:
    """Statistics of samples ``X, Y`` of shape ``(..., m, d)`` (rows are samples)."""
    X = np.asarray(X, dtype=np.float64)
    Y = np.asarray(Y, dtype=np.float64)
    if X.shape != Y.shape or X.ndim < 2:
        raise ProblemError(f"X and Y must have the same shape (..., m, d), got {X.shape} and {Y.shape}")
    m = X.shape[-2]
    Xt = np.swapaxes(X, -1, -2)
    return Stats(Sxx=Xt @ X / m, Syx=np.swapaxes(Y, -1, -2) @ X / m, syy=np.sum(Y * Y, axis=(-2, -1)) / m)


def _fro_inner(P: np.ndarray, Q: np.ndarray) -> np.ndarray:
    return np.einsum("...ij,...ij->...", P, Q)


def empirical_loss(M: np.ndarray, stats: Stats) -> np.ndarray:
    """``(1/m) sum_i ||M x_i - y_i||^2 = <M Sxx, M> - 2 <M, Syx> + syy`` for M of shape ``(..., d, d)``."""
    return _fro_inner(M @ stats.Sxx, M) - 2.0 * _fro_inner(M, stats.Syx) + stats.syy


def meta_empirical(A: np.ndarray, U: np.ndarray, stats: Stats):
    """Meta-LoRA empirical loss and gradient, batched over leading run axes.

    ``A``: ``(..., d, d)``; ``U``: ``(..., T, d, k)``; stats of shape ``(..., T, d, d)``. With
    ``M_t = A + U_t U_t^T`` and ``R_t = M_t Sxx_t - Syx_t``: loss ``sum_t <M_t Sxx_t, M_t> - 2 <M_t, Syx_t> +
    syy_t``, ``dL/dA = 2 sum_t R_t``, ``dL/dU_t = 2 (R_t + R_t^T) U_t``. Returns ``(loss (...), gA, gU)``.
    """
    M = A[..., None, :, :] + U @ np.swapaxes(U, -1, -2)
    MS = M @ stats.Sxx
    loss = np.sum(_fro_inner(MS, M) - 2.0 * _fro_inner(M, stats.Syx) + stats.syy, axis=-1)
    R = MS - stats.Syx
    gA = 2.0 * R.sum(axis=-3)
    gU = 2.0 * (R + np.swapaxes(R, -1, -2)) @ U
    return loss, gA, gU


def sr_empirical(A: np.ndarray, pooled: Stats):
    """SR empirical loss and gradient from the task-summed statistics ``P = sum_t Sxx_t``, ``Q = sum_t Syx_t``,
    ``c = sum_t syy_t`` (shapes ``(..., d, d)``, ``(...)``): loss ``<A P, A> - 2 <A, Q> + c``, gradient
    ``2 (A P - Q)``. Returns ``(loss (...), gA (..., d, d))``."""
    AP = A @ pooled.Sxx
    return _fro_inner(AP, A) - 2.0 * _fro_inner(A, pooled.Syx) + pooled.syy, 2.0 * (AP - pooled.Syx)


def lora_empirical(A: np.ndarray, B: np.ndarray, C: np.ndarray, stats: Stats):
    """Fine-tuning loss and gradient with A frozen: ``M = A + B C^T``, ``R = M Sxx - Syx``; loss
    ``<M Sxx, M> - 2 <M, Syx> + syy``, ``dL/dB = 2 R C``, ``dL/dC = 2 R^T B``. ``A``: ``(..., d, d)``,
    ``B, C``: ``(..., d, r)``. Returns ``(loss (...), gB, gC, M)``."""
    M = A + B @ np.swapaxes(C, -1, -2)
    MS = M @ stats.Sxx
    loss = _fro_inner(MS, M) - 2.0 * _fro_inner(M, stats.Syx) + stats.syy
    R = MS - stats.Syx
    return loss, 2.0 * R @ C, 2.0 * np.swapaxes(R, -1, -2) @ B, M


@dataclass(frozen=True)
class Instance:
    """All runs of one setting, stacked: ground truth ``W`` (R, T, d, d) and ``W_test`` (R, d, d), statistics of
    the retraining samples (R, T, ...) and of the held-out samples (R, ...), starts ``U0`` (R, T, d, k) and
    ``B0, C0`` (R, d, r), and the problems (for the record)."""

    settings: Settings
    problems: tuple
    W: np.ndarray
    W_test: np.ndarray
    train: Stats
    test: Stats
    U0: np.ndarray
    B0: np.ndarray
    C0: np.ndarray


def _run_seed(seed: int, run: int) -> int:
    return int(np.random.SeedSequence([seed, run]).generate_state(1)[0])


@np.errstate(over="ignore", invalid="ignore")  # overflow is checked explicitly (_require_finite_run)
def draw_instance(s: Settings) -> Instance:
    """Draw ground truth (``Problem.random``), samples and starts for every run of ``s``; samples are reduced to
    their statistics at once and not kept. The ground truth of run j depends only on ``(seed, j, d, k, T)``, so
    settings that differ only in N, n or sigma share it."""
    d, T, k, r = s.d, s.T, s.k, s.rank
    problems, W, W_test, Xs, Ys, Xt, Yt, U0, B0, C0 = [], [], [], [], [], [], [], [], [], []
    for j in range(s.runs):
        p = Problem.random(d=d, k=k, T=T, seed=_run_seed(s.seed, j), sigma=s.sigma)
        rng = np.random.default_rng(np.random.SeedSequence([s.seed, j, 1]))
        X = rng.standard_normal((T, s.N, d))
        Y = X @ np.swapaxes(p.W, -1, -2) + s.sigma * rng.standard_normal((T, s.N, d))
        x = rng.standard_normal((s.n, d))
        y = x @ p.W_test.T + s.sigma * rng.standard_normal((s.n, d))
        init = np.random.default_rng(np.random.SeedSequence([s.seed, j, 2]))
        problems.append(p)
        W.append(p.W)
        W_test.append(p.W_test)
        st, sv = sufficient_stats(X, Y), sufficient_stats(x, y)
        Xs.append(st.Sxx), Ys.append(st.Syx), Xt.append(st.syy)
        Yt.append((sv.Sxx, sv.Syx, sv.syy))
        U0.append(s.init_scale * init.standard_normal((T, d, k)))
        B0.append(s.init_scale * init.standard_normal((d, r)))
        C0.append(s.init_scale * init.standard_normal((d, r)))
    train = Stats(np.stack(Xs), np.stack(Ys), np.stack(Xt))
    test = Stats(*(np.stack([t[i] for t in Yt]) for i in range(3)))
    _require_finite_run(s, "the sample statistics", train.Syx, train.syy, test.Syx, test.syy)
    return Instance(s, tuple(problems), np.stack(W), np.stack(W_test), train, test,
                    np.stack(U0), np.stack(B0), np.stack(C0))


def _require_finite_run(s: Settings, what: str, *arrays) -> None:
    """Refuse a setting whose float64 arithmetic overflowed (e.g. a huge sigma): it would feed NaN or inf to the
    eigen- and singular-value routines below, or plot garbage."""
    if not all(np.all(np.isfinite(a)) for a in arrays):
        raise ProblemError(f"{what} overflow float64 at d={s.d}, T={s.T}, N={s.N}, n={s.n}, k={s.k}, "
                           f"sigma={s.sigma:g}: the noise or the sizes are too large for this experiment")


def _lam_max(S: np.ndarray) -> np.ndarray:
    return np.linalg.eigvalsh(S)[..., -1]


def _spec(M: np.ndarray) -> np.ndarray:
    return np.linalg.norm(M, ord=2, axis=(-2, -1))


def step_sizes(inst: Instance) -> dict[str, np.ndarray]:
    """Per-run retraining step sizes (shape ``(R,)``), by the rules of the module docstring."""
    T = inst.settings.T
    lam = _lam_max(inst.train.Sxx).max(axis=-1)
    s = _spec(inst.train.Syx).max(axis=-1)
    return {"sr": 1.0 / (2.0 * _lam_max(inst.train.Sxx.sum(axis=-3))),
            "meta": 1.0 / (lam * (2.0 * T + 8.0 * s))}


def _finetune_step(A: np.ndarray, test: Stats) -> np.ndarray:
    lam = _lam_max(test.Sxx)
    s0 = _spec(test.Syx - A @ test.Sxx) / lam
    return 1.0 / (4.0 * lam * s0)


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


# ---------------------------------------------------------------------------------------------------------------
# gradient descent. A step function maps the parameters to ``(logged values (..., m), squared gradient norm (...),
# next parameters)``; the batched step functions work on stacked arrays, the loop ones loop over runs and tasks.


def _descend(step, params, iters: int, gtol: float = 0.0, check_every: int = 250):
    """Run ``iters`` gradient steps; with ``gtol > 0`` stop at the first check (every ``check_every`` iterations)
    where every run's gradient norm is at most ``gtol`` times its norm at the start. Returns ``(params, logs of
    shape (..., m, iterations + 1), final gradient norms, iterations done)``."""
    logged, g2, nxt = step(params)
    g0 = np.sqrt(g2)
    logs = np.empty((iters + 1,) + logged.shape)
    for it in range(iters + 1):
        logs[it] = logged
        done = it == iters or (gtol > 0 and it % check_every == 0 and bool(np.all(np.sqrt(g2) <= gtol * g0)))
        if done:
            return params, np.moveaxis(logs[: it + 1], 0, -1), np.sqrt(g2), it
        params = nxt
        logged, g2, nxt = step(params)
    raise AssertionError("unreachable")


def _meta_step_batched(stats: Stats, eta: np.ndarray):
    e = eta[..., None, None]

    def step(p):
        A, U = p
        loss, gA, gU = meta_empirical(A, U, stats)
        g2 = np.sum(gA * gA, axis=(-2, -1)) + np.sum(gU * gU, axis=(-3, -2, -1))
        return loss[..., None], g2, (A - e * gA, U - e[..., None] * gU)
    return step


def _sr_step_batched(pooled: Stats, eta: np.ndarray):
    e = eta[..., None, None]

    def step(A):
        loss, gA = sr_empirical(A, pooled)
        return loss[..., None], np.sum(gA * gA, axis=(-2, -1)), A - e * gA
    return step


def _lora_step_batched(A: np.ndarray, stats: Stats, W_test: np.ndarray, eta: np.ndarray):
    """Leading axes of ``A``, ``eta``: (method, run); ``stats`` and ``W_test`` have the run axis only. Logs
    ``(test loss ||M - W_{T+1}||_F^2, empirical fine-tuning loss)``."""
    e = eta[..., None, None]

    def step(p):
        B, C = p
        loss, gB, gC, M = lora_empirical(A, B, C, stats)
        test = np.sum((M - W_test) ** 2, axis=(-2, -1))
        g2 = np.sum(gB * gB, axis=(-2, -1)) + np.sum(gC * gC, axis=(-2, -1))
        return np.stack([test, loss], axis=-1), g2, (B - e * gB, C - e * gC)
    return step


def _meta_step_loop(stats: Stats, eta: np.ndarray):
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


def _sr_step_loop(stats: Stats, eta: np.ndarray):
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


def _lora_step_loop(A: np.ndarray, stats: Stats, W_test: np.ndarray, eta: np.ndarray):
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


_STEPS = {"batched": (_meta_step_batched, _sr_step_batched, _lora_step_batched),
          "loop": (_meta_step_loop, _sr_step_loop, _lora_step_loop)}


# ---------------------------------------------------------------------------------------------------------------


@np.errstate(over="ignore", invalid="ignore")  # overflow is checked explicitly (_require_finite_run)
def run_setting(s: Settings, *, implementation: str = "batched", instance: Instance | None = None) -> SettingResult:
    """Retrain (Meta-LoRA and SR) and fine-tune every run of setting ``s``; ``implementation`` is ``"batched"``
    (stacked arrays) or ``"loop"`` (per-run, per-task Python loop of the same algorithm)."""
    if implementation not in _STEPS:
        raise ProblemError(f"implementation must be 'batched' or 'loop', got {implementation!r}")
    meta_step, sr_step, lora_step = _STEPS[implementation]
    t0 = time.perf_counter()
    inst = draw_instance(s) if instance is None else instance
    eta = step_sizes(inst)
    A0 = np.zeros((s.runs, s.d, s.d))
    pooled = Stats(inst.train.Sxx.sum(axis=1), inst.train.Syx.sum(axis=1), inst.train.syy.sum(axis=1))
    (A_m, _), meta_log, g_meta, it_meta = _descend(
        meta_step(inst.train, eta["meta"]), (A0, inst.U0), s.retrain_iters, s.retrain_gtol)
    A_s, sr_log, g_sr, it_sr = _descend(
        sr_step(inst.train if implementation == "loop" else pooled, eta["sr"]), A0, s.retrain_iters, s.retrain_gtol)
    _require_finite_run(s, "the retraining losses and bases", meta_log, sr_log, A_m, A_s)
    A_both = np.stack([A_m, A_s])  # (method, run, d, d)
    eta_ft = _finetune_step(A_both, inst.test)
    B0 = np.broadcast_to(inst.B0, (2,) + inst.B0.shape).copy()
    C0 = np.broadcast_to(inst.C0, (2,) + inst.C0.shape).copy()
    _, ft_log, g_ft, _ = _descend(lora_step(A_both, inst.test, inst.W_test, eta_ft), (B0, C0), s.finetune_iters)
    _require_finite_run(s, "the fine-tuning losses", ft_log)
    floors, sr_err, meta_err, eym = [], [], [], []
    for j, p in enumerate(inst.problems):
        A_SR = sr_minimiser(p)
        floors.append(finetune_optimum(A_SR, p.W_test, s.rank).loss)
        eym.append([finetune_optimum(A_both[m, j], p.W_test, s.rank).loss for m in range(2)])
        sr_err.append(float(np.linalg.norm(A_s[j] - A_SR)))
        meta_err.append(float(np.linalg.norm(A_m[j] - p.A_star)))
    eym = np.array(eym)
    return SettingResult(
        settings=s, meta_test=ft_log[0, :, 0], sr_test=ft_log[1, :, 0], meta_retrain=meta_log[:, 0],
        sr_retrain=sr_log[:, 0], meta_finetune=ft_log[0, :, 1], sr_finetune=ft_log[1, :, 1],
        sr_floor=np.array(floors), sr_base_error=np.array(sr_err), meta_base_error=np.array(meta_err),
        best_adapter={"meta": eym[:, 0], "sr": eym[:, 1]},
        steps={"meta_retrain": eta["meta"], "sr_retrain": eta["sr"], "meta_finetune": eta_ft[0],
               "sr_finetune": eta_ft[1]},
        grad_norms={"meta_retrain": g_meta, "sr_retrain": g_sr, "meta_finetune": g_ft[0], "sr_finetune": g_ft[1]},
        iterations={"meta_retrain": it_meta, "sr_retrain": it_sr, "finetune": s.finetune_iters},
        A_meta=A_m, A_sr=A_s, seconds=time.perf_counter() - t0)


def panel_settings(panel: str, overrides: dict | None = None) -> list[Settings]:
    """The three settings of a panel: the defaults, then the panel's fixed settings (``PANEL_FIXED``), then
    ``overrides`` (any :class:`Settings` fields the user set), then the panel's parameter at each of its values.
    Raises :class:`ProblemError` naming the panel and value for an unknown panel or a bad setting (non-positive
    count, ``(T+1) k > d``), and naming the field for an override that breaks its own rule, also where the panel
    replaces it (``--vary n --n 0``)."""
    if panel not in PANELS:
        raise ProblemError(f"unknown panel {panel!r}; the panels are {', '.join(PANELS)}")
    overrides = dict(overrides or {})
    unknown = set(overrides) - {f.name for f in fields(Settings)}
    if unknown:
        raise ProblemError(f"unknown settings {sorted(unknown)}; the settings are {[f.name for f in fields(Settings)]}")
    for name, value in overrides.items():  # each given value obeys its rule, also where the panel replaces it
        _check_field(name, value)
    out = []
    for v in PANELS[panel]:
        try:
            out.append(Settings(**{**PANEL_FIXED.get(panel, {}), **overrides, panel: v}))
        except ProblemError as exc:
            raise ProblemError(f"panel {panel}, {panel} = {v}: {exc}") from None
    return out


def settings_dict(s: Settings) -> dict:
    """A JSON-ready record of a setting, with the fine-tuning rank."""
    out = {f.name: getattr(s, f.name) for f in fields(s)}
    out["rank"] = s.rank
    return out


def run_panels(panels, overrides: dict | None = None, *, progress=None):
    """Run every setting of the named panels (see :func:`panel_settings` for ``overrides``). All settings are built
    (and validated) before any work starts.
    ``progress``: an object with ``update(1)`` (a tqdm bar), called after each setting. Returns
    ``{panel: [SettingResult, ...]}`` in the order of ``PANELS[panel]``."""
    plan = {p: panel_settings(p, overrides) for p in panels}
    out = {}
    for p, settings in plan.items():
        out[p] = []
        for s in settings:
            out[p].append(run_setting(s))
            if progress is not None:
                progress.update(1)
    return out


def setting_summary(panel: str, res: SettingResult) -> dict:
    """JSON-ready summary of one setting: final test losses (median, min, max over runs) of both methods, the
    Corollary 1 floor and its finite-sample lower bound, and the convergence diagnostics."""
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
    of the Corollary 1 floor, one row per panel and value."""
    rows = []
    for panel, res_list in results.items():
        for res in res_list:
            rows.append({"panel": panel, "value": getattr(res.settings, panel),
                         "meta_lora": float(np.median(res.meta_test[:, -1])),
                         "sr_lora": float(np.median(res.sr_test[:, -1])),
                         "sr_floor": float(np.median(res.sr_floor))})
    return rows
