"""Finite-sample linear experiments of the paper's Section 4.1 (Figure 1): Meta-LoRA vs standard retraining (SR),
each followed by LoRA fine-tuning of a held-out task.

Model (docs/convention.md): ``W_t = A* + U*_t U*_t^T``; data of task t are ``x ~ N(0, I_d)``,
``y = W_t x + eps``, ``eps ~ N(0, sigma^2 I_d)`` (sigma is the standard deviation); N samples for each retraining
task t = 1..T, n samples for the held-out task T+1.

Empirical losses (means over samples, sums over tasks):

* Meta-LoRA: ``L_N(A, U) = sum_t (1/N) sum_i ||(A + U_t U_t^T) x_ti - y_ti||^2``, A of shape ``(d, d)`` and U of
  shape ``(T, d, k)`` both trained (symmetric rank-k adapters);
* SR on the pooled samples: ``L_SR,N(A) = sum_t (1/N) sum_i ||A x_ti - y_ti||^2`` (T times the pooled mean);
* fine-tuning: ``L_n(B, C) = (1/n) sum_i ||(A + B C^T) x_i - y_i||^2`` with A frozen, ``B, C`` of shape ``(d, r)``,
  ``r = 3k`` when ``T = 2`` (Corollary 2) and ``r = k`` otherwise (Corollary 3).

The samples enter only through their sufficient statistics (:mod:`theory.linear_stats`: exact, not an
approximation); the settings and panels are :mod:`theory.linear_settings`, the results and their summaries
:mod:`theory.linear_results`.

Every run and task is computed at once on stacked arrays (``(runs, T, d, d)``); ``run_setting(s, steps=...)`` runs
the same algorithm with other step factories (the tests' per-run, per-task loop in ``tests/theory/linear_reference.py`` is
the oracle and the benchmark baseline).

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
from dataclasses import dataclass

import numpy as np

from .finetune import finetune_optimum
from .linear_results import SettingResult
from .linear_settings import Settings, panel_settings
from .linear_stats import Stats, lora_empirical, meta_empirical, sr_empirical, sufficient_stats
from .problem import Problem, ProblemError
from .sr import sr_minimiser

__all__ = ["Instance", "draw_instance", "step_sizes", "BATCHED_STEPS", "run_setting", "run_panels"]


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
    settings that differ only in N, n or sigma share it.

    Returns
    -------
    Instance
        Stacked over the ``R = s.runs`` runs.

    Raises
    ------
    ProblemError
        The sample statistics overflow float64 (a sigma or sizes too large).
    """
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
    """Per-run retraining step sizes (shape ``(R,)``), by the rules of the module docstring.

    Returns
    -------
    dict
        ``{"sr": (R,), "meta": (R,)}``, positive step sizes of the two retraining stages.
    """
    T = inst.settings.T
    lam = _lam_max(inst.train.Sxx).max(axis=-1)
    s = _spec(inst.train.Syx).max(axis=-1)
    return {"sr": 1.0 / (2.0 * _lam_max(inst.train.Sxx.sum(axis=-3))),
            "meta": 1.0 / (lam * (2.0 * T + 8.0 * s))}


def _finetune_step(A: np.ndarray, test: Stats) -> np.ndarray:
    lam = _lam_max(test.Sxx)
    s0 = _spec(test.Syx - A @ test.Sxx) / lam
    return 1.0 / (4.0 * lam * s0)


# ---------------------------------------------------------------------------------------------------------------
# gradient descent. A step function maps the parameters to ``(logged values (..., m), squared gradient norm (...),
# next parameters)``; the step functions here work on stacked arrays (tests/theory/linear_reference.py loops instead).


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


def _sr_step_batched(train: Stats, eta: np.ndarray):
    """SR on the task-summed statistics ``sum_t Sxx_t``, ``sum_t Syx_t``, ``sum_t syy_t`` of ``train`` (R, T, ...)."""
    pooled = Stats(train.Sxx.sum(axis=1), train.Syx.sum(axis=1), train.syy.sum(axis=1))
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


#: the step factories of :func:`run_setting`: Meta-LoRA ``(train, eta)``, SR ``(train, eta)`` and fine-tuning
#: ``(A, test, W_test, eta)``, each on stacked arrays
BATCHED_STEPS = (_meta_step_batched, _sr_step_batched, _lora_step_batched)


# ---------------------------------------------------------------------------------------------------------------


@np.errstate(over="ignore", invalid="ignore")  # overflow is checked explicitly (_require_finite_run)
def run_setting(s: Settings, *, instance: Instance | None = None, steps=BATCHED_STEPS) -> SettingResult:
    """Retrain (Meta-LoRA and SR) and fine-tune every run of setting ``s``.

    Parameters
    ----------
    s : Settings
        The setting (R = ``s.runs`` runs).
    instance : Instance, optional
        Ground truth, statistics and starts (default: :func:`draw_instance` ``(s)``).
    steps : tuple of three callables, optional
        The step factories ``(meta(train, eta), sr(train, eta), lora(A, test, W_test, eta))`` of
        :data:`BATCHED_STEPS` (the default), or others with the same signatures (the tests' per-task loop).

    Returns
    -------
    SettingResult
        Curves of shape ``(R, iterations + 1)`` and the per-run diagnostics.

    Raises
    ------
    ProblemError
        ``steps`` not three callables, or float64 overflow in the data, the retraining or the fine-tuning (the
        setting's sigma or sizes are too large).
    """
    if not (isinstance(steps, tuple) and len(steps) == 3 and all(callable(f) for f in steps)):
        raise ProblemError(f"steps must be a tuple of three step factories (meta, sr, lora), got {steps!r}")
    meta_step, sr_step, lora_step = steps
    t0 = time.perf_counter()
    inst = draw_instance(s) if instance is None else instance
    eta = step_sizes(inst)
    A0 = np.zeros((s.runs, s.d, s.d))
    (A_m, _), meta_log, g_meta, it_meta = _descend(
        meta_step(inst.train, eta["meta"]), (A0, inst.U0), s.retrain_iters, s.retrain_gtol)
    A_s, sr_log, g_sr, it_sr = _descend(
        sr_step(inst.train, eta["sr"]), A0, s.retrain_iters, s.retrain_gtol)
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


def run_panels(panels, overrides: dict | None = None, *, progress=None):
    """Run every setting of the named panels (see :func:`panel_settings` for ``overrides``). All settings are built
    (and validated) before any work starts.

    Parameters
    ----------
    panels : iterable of str
        Keys of ``PANELS``.
    overrides : dict, optional
        :class:`Settings` fields to set in every setting.
    progress : object, optional
        With ``update(1)`` (a tqdm bar), called after each setting.

    Returns
    -------
    dict
        ``{panel: [SettingResult, ...]}``, each list in the order of ``PANELS[panel]``.

    Raises
    ------
    ProblemError
        A bad panel or override (as :func:`panel_settings`, before any work), or float64 overflow in a run (as
        :func:`run_setting`).
    """
    plan = {p: panel_settings(p, overrides) for p in panels}
    out = {}
    for p, settings in plan.items():
        out[p] = []
        for s in settings:
            out[p].append(run_setting(s))
            if progress is not None:
                progress.update(1)
    return out
