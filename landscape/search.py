"""Critical points of the reduced loss ``G(U) = sum_t ||D_t - mean_s D_s||_F^2`` from many random starts.

G, its gradient and dense Hessian are :mod:`theory.reduced`'s formulas evaluated on a stack of points
(:mod:`landscape._batched`, tested against theory's functions slice by slice); this module only iterates.
Points are ``U`` of shape ``(T, d, k)``, flat ``x = [vec(U_1); ...; vec(U_T)]`` of length ``n = T d k``.

Two Newton-type solvers share one eigen-decomposition ``H = V diag(lam) V^T`` of the dense Hessian per iteration
(the damping can then be retried without refactorising):

- ``"newton"`` solves ``grad G(U) = 0`` (any critical point: minima and saddles) by Levenberg-Marquardt on the map
  ``g(x) = grad G(x)`` whose Jacobian is the symmetric Hessian: ``s(mu) = -V diag(lam / (lam^2 + mu)) V^T g``,
  accepted when ``||g||^2`` decreases (Nocedal & Wright, Numerical Optimization, 2nd ed., section 11.2). Orbit
  directions (``lam = 0``) get no step, so the singular Hessian at ``k >= 2`` does no harm.
- ``"min"`` descends G with a saddle-free regularised Newton step ``s(mu) = -V diag(1 / (|lam| + mu)) V^T g``
  (Dauphin et al. 2014, "Identifying and attacking the saddle point problem"), accepted when G decreases; near a
  non-degenerate minimum ``mu -> 0`` and it is Newton's method. It finds local minima, spurious ones included.
- ``"gd"`` is plain gradient descent ``U <- U - eta grad G(U)`` with a fixed step (halved only if G increases),
  what practitioners run, from small random starts; its end point is polished by ``"newton"`` and classified.

We write these loops instead of calling ``scipy.optimize.root`` / ``minimize``: measured here at (d, k, T) =
(3, 1, 3) MINPACK's ``lm`` needed ~125 evaluations per solve (180 solves/s), and ``trust-exact`` ran at 1.5 solves/s
at (10, 2, 3) because the orbit makes the Hessian singular; the loops below need ~10-30 Hessians per solve.

>>> from theory.problem import Problem
>>> p = Problem.random(d=3, k=1, T=3, seed=0)
>>> r = solve_critical(p, p.U_star + 0.01, method="newton")
>>> r.status, r.loss < 1e-20
('converged', True)
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from theory.cli_contract import require_int
from theory.problem import Problem, ProblemError

from . import _batched
from .result import SearchResult

__all__ = ["SolverOptions", "problem_scale", "solve_critical", "solve_batch", "gradient_descent", "descent_arrived",
           "gradient_descent_batch", "random_start", "start_seed", "instance_seed", "search_instance", "search_record"]

_METHODS = ("newton", "min")


@dataclass(frozen=True)
class SolverOptions:
    """Options of the Newton-type solvers (validated up front).

    max_iter : int > 0, Hessian evaluations allowed
    gtol : float > 0, converged when ``||grad G|| <= gtol * max(1, r^3)``, ``r`` = :func:`problem_scale`
    polish : int >= 0, extra undamped Newton steps after convergence (quadratic convergence: ~round-off)
    diverge : float > 0, ``diverged`` when ``||U||_F > diverge * max(1, r) * sqrt(n)``
    gd_steps : int > 0, iterations of plain gradient descent
    gd_lr : float > 0, gradient-descent step ``eta = gd_lr / max(1, r^2)``
    """

    max_iter: int = 100
    gtol: float = 1e-10
    polish: int = 2
    diverge: float = 1e3
    gd_steps: int = 20000
    gd_lr: float = 0.05

    def __post_init__(self):
        for name in ("max_iter", "gd_steps"):
            require_int(name, getattr(self, name))
        require_int("polish", self.polish, minimum=0)
        for name in ("gtol", "diverge", "gd_lr"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and np.isfinite(v) and v > 0):
                raise ProblemError(f"{name} must be a finite number > 0, got {v!r}")


def problem_scale(problem: Problem) -> float:
    """``r = sqrt(max_t ||W_t - mean_s W_s||_2)``: the size of a ``U_t`` that fits the task-specific part of ``W_t``.

    Only the task matrices enter (not ``U*``), so a user without the ground truth gets the same scale.
    """
    dev = problem.W - problem.W.mean(axis=0, keepdims=True)
    return float(np.sqrt(max(np.linalg.norm(dev, ord=2, axis=(1, 2)).max(), 1e-300)))


def start_seed(seed: int, instance: int, start: int) -> int:
    """Seed of start ``start`` of instance ``instance`` in a run seeded ``seed``: ``SeedSequence(seed,
    spawn_key=(instance, 1, start))`` reduced to one 63-bit integer (JSON-safe, the same in every process)."""
    ss = np.random.SeedSequence(int(seed), spawn_key=(int(instance), 1, int(start)))
    return int(ss.generate_state(1, dtype=np.uint64)[0] >> np.uint64(1))


def random_start(problem: Problem, seed: int, scale: float) -> np.ndarray:
    """Start ``U0`` of shape ``(T, d, k)`` with i.i.d. ``N(0, scale^2)`` entries from ``default_rng(seed)``."""
    rng = np.random.default_rng(seed)
    return scale * rng.standard_normal((problem.T, problem.d, problem.k))


def _tolerance(problem: Problem, opts: SolverOptions) -> tuple[float, float]:
    r = problem_scale(problem)
    return opts.gtol * max(1.0, r ** 3), opts.diverge * max(1.0, r) * np.sqrt(problem.n_reduced)


def solve_critical(problem: Problem, U0, *, method: str = "newton", options: SolverOptions | None = None,
                   seed: int = -1, scale: float = float("nan")) -> SearchResult:
    """Run one Newton-type solve from ``U0`` (``(T, d, k)`` or flat ``(T d k,)``); see the module docstring.

    The returned :class:`SearchResult` has ``inertia=None``: classification is :mod:`landscape.classify`'s job.

    Raises
    ------
    ProblemError
        ``U0`` without ``T d k`` entries (or a bad ``options`` value, from :class:`SolverOptions`).
    """
    x = np.asarray(U0, dtype=np.float64)
    if x.size != problem.n_reduced:
        raise ProblemError(f"U0 must have T*d*k = {problem.n_reduced} entries, got {x.size}")
    return solve_batch(problem, x.reshape(1, -1), method=method, options=options, seeds=[seed], scales=[scale])[0]


def _solver_state(B: int, opts: SolverOptions):
    """Per-start state of a lock-step Newton-type solve: damping ``mu`` (NaN: not set yet), polish steps left,
    iterations, status (``"max_iter"`` until decided) and whether the start is still active."""
    return (np.full(B, np.nan), np.full(B, opts.polish), np.zeros(B, dtype=int),
            np.array(["max_iter"] * B, dtype=object), np.ones(B, dtype=bool))


def solve_batch(problem: Problem, X0, *, method="newton", options: SolverOptions | None = None,
                seeds=None, scales=None) -> list[SearchResult]:
    """Solve from every row of ``X0`` (shape ``(B, T d k)`` or ``(B, T, d, k)``) in lock-step, one batched dense
    Hessian and one stacked ``numpy.linalg.eigh`` per iteration (:mod:`landscape._batched`).

    Each start keeps its own damping ``mu``: divided by 5 after an accepted step, multiplied by 4 and retried on the
    same eigen-decomposition after a rejected one. ``method`` is one name for all rows or one per row. ``seconds``
    of each result is the batch's wall time over ``B``.

    Raises
    ------
    ProblemError
        A start without ``T d k`` entries, a method name not in ``("newton", "min")`` or a list of methods of
        another length than the starts.
    """
    opts = options or SolverOptions()
    X, methods = _checked_starts(problem, X0, method)
    B = X.shape[0]
    is_newton = np.array([m == "newton" for m in methods], dtype=bool)
    seeds = [-1] * B if seeds is None else [int(s) for s in seeds]
    scales = [float("nan")] * B if scales is None else [float(s) for s in scales]
    shape = (problem.T, problem.d, problem.k)
    gtol, bound = _tolerance(problem, opts)
    t0 = time.perf_counter()
    f, g = _batched.loss_grad(X.reshape(B, *shape), problem)
    mu, polish, iters, status, active = _solver_state(B, opts)
    for _ in range(opts.max_iter):
        gn = np.linalg.norm(g, axis=1)
        bad = active & ~(np.isfinite(f) & np.all(np.isfinite(g), axis=1))
        status[bad], active[bad] = "nonfinite", False
        done = active & (gn <= gtol) & (polish == 0)
        status[done], active[done] = "converged", False
        idx = np.flatnonzero(active)
        if idx.size == 0:
            break
        iters[idx] += 1
        Hs = _batched.hess(X[idx].reshape(-1, *shape), problem)
        fin = np.all(np.isfinite(Hs), axis=(1, 2))  # an overflowing Hessian never reaches eigh
        status[idx[~fin]], active[idx[~fin]] = "nonfinite", False
        idx, Hs = idx[fin], Hs[fin]
        if idx.size == 0:
            continue
        lam, V = _batched.eigh(Hs)
        c = np.einsum("bji,bj->bi", V, g[idx])
        lmax = np.maximum(np.abs(lam).max(axis=1), 1e-300)
        # starts already below tolerance take plain Newton steps (pseudo-inverse: the orbit's zero eigenvalues get
        # no step), quadratic convergence takes the gradient to round-off
        pol = gn[idx] <= gtol
        if pol.any():
            p_idx = idx[pol]
            X[p_idx] -= _pseudo_inverse_step(lam[pol], V[pol], c[pol], lmax[pol])
            polish[p_idx] -= 1
            f[p_idx], g[p_idx] = _batched.loss_grad(X[p_idx].reshape(-1, *shape), problem)
        st = ~pol
        s_idx, lam, V, c, lmax = idx[st], lam[st], V[st], c[st], lmax[st]
        if s_idx.size == 0:
            continue
        nw = is_newton[s_idx]
        fresh = np.isnan(mu[s_idx])
        mu[s_idx[fresh]] = 1e-3 * np.where(nw, lmax * lmax, lmax)[fresh]
        pending = _damped_trials(problem, X, f, g, mu, s_idx, (lam, V, c, lmax), nw)
        if pending.size:
            # no damping decreases the merit: at round-off level that is convergence, otherwise the solve stalled
            rows = s_idx[pending]
            near = np.linalg.norm(g[rows], axis=1) <= 10.0 * gtol
            status[rows] = np.where(near, "converged", "stalled")
            active[rows] = False
        far = active & (np.linalg.norm(X, axis=1) > bound)
        status[far], active[far] = "diverged", False
    else:
        gn = np.linalg.norm(g, axis=1)
        fin = active & (gn <= gtol)
        status[fin] = "converged"
    seconds = (time.perf_counter() - t0) / max(B, 1)
    return [SearchResult(point=X[b].reshape(shape), loss=float(f[b]), grad_norm=float(np.linalg.norm(g[b])),
                         inertia=None, min_eigenvalue=float("nan"), iterations=int(iters[b]), seed=seeds[b],
                         seconds=seconds, status=str(status[b]), method=methods[b], scale=scales[b])
            for b in range(B)]


def _checked_starts(problem: Problem, X0, method) -> tuple[np.ndarray, list]:
    """The starts as a float64 copy ``(B, n)`` and one method name per start; refuses what solve_batch refuses."""
    X = np.array(X0, dtype=np.float64, copy=True)
    B = X.shape[0] if X.ndim >= 1 else 0
    X = X.reshape(B, -1)
    methods = [method] * B if isinstance(method, str) else list(method)
    if len(methods) != B:
        raise ProblemError(f"method must be one name or one per start ({B}), got {len(methods)} names")
    for m in set(methods):
        if m not in _METHODS:
            raise ProblemError(f"method must be one of {_METHODS}, got {m!r}")
    if X.shape[1] != problem.n_reduced:
        raise ProblemError(f"each start must have T*d*k = {problem.n_reduced} entries, got {X.shape[1]}")
    return X, methods


def _pseudo_inverse_step(lam, V, c, lmax) -> np.ndarray:
    """``V diag(1 / lam) c`` over the eigenvalues with ``|lam| > 1e-12 lambda_max`` (the others, the orbit's zero
    eigenvalues among them, get no step): the undamped Newton step of a start already below tolerance."""
    keep = np.abs(lam) > 1e-12 * lmax[:, None]
    coef = np.where(keep, c / np.where(keep, lam, 1.0), 0.0)
    return np.einsum("bij,bj->bi", V, coef)


def _damped_trials(problem: Problem, X, f, g, mu, s_idx, eig, nw) -> np.ndarray:
    """Damped steps of the rows ``s_idx`` from ``eig = (lam, V, c = V^T g, lmax)``: ``V diag(lam / (lam^2 + mu)) c``
    (``"newton"``) or ``V diag(1 / (|lam| + mu)) c`` (``"min"``), each retried with 4x the damping until its merit
    decreases (at most 60 trials), ``mu / 5`` (floored) after an accepted step. Updates ``X``, ``f``, ``g``, ``mu``
    in place; returns the positions (into ``s_idx``) of the rows no damping helped."""
    lam, V, c, lmax = eig
    shape = (problem.T, problem.d, problem.k)
    merit = np.where(nw, np.einsum("bi,bi->b", g[s_idx], g[s_idx]), f[s_idx])
    pending = np.arange(s_idx.size)
    for _trial in range(60):
        rows = s_idx[pending]
        m = mu[rows][:, None]
        lp = lam[pending]
        nwp = nw[pending][:, None]
        coef = c[pending] * np.where(nwp, lp / (lp * lp + m), 1.0 / (np.abs(lp) + m))
        Xn = X[rows] - np.einsum("bij,bj->bi", V[pending], coef)
        fn, gnew = _batched.loss_grad(Xn.reshape(-1, *shape), problem)
        new_merit = np.where(nwp[:, 0], np.einsum("bi,bi->b", gnew, gnew), fn)
        ok = np.isfinite(new_merit) & (new_merit < merit[pending])
        acc = rows[ok]
        X[acc], f[acc], g[acc] = Xn[ok], fn[ok], gnew[ok]
        lm_ok = 1e-14 * lmax[pending[ok]]
        floor = np.where(nw[pending[ok]], lm_ok * lm_ok, lm_ok)
        mu[acc] = np.maximum(mu[acc] / 5.0, floor)
        mu[rows[~ok]] *= 4.0
        pending = pending[~ok]
        if pending.size == 0:
            break
    return pending


def gradient_descent(problem: Problem, U0, *, options: SolverOptions | None = None, seed: int = -1,
                     scale: float = float("nan")) -> SearchResult:
    """Plain gradient descent from one start; see :func:`gradient_descent_batch`.

    Raises
    ------
    ProblemError
        ``U0`` without ``T d k`` entries.
    """
    x = np.asarray(U0, dtype=np.float64)
    if x.size != problem.n_reduced:
        raise ProblemError(f"U0 must have T*d*k = {problem.n_reduced} entries, got {x.size}")
    return gradient_descent_batch(problem, x.reshape(1, -1), options=options, seeds=[seed], scales=[scale])[0]


def gradient_descent_batch(problem: Problem, X0, *, options: SolverOptions | None = None, seeds=None,
                           scales=None) -> list[SearchResult]:
    """Plain gradient descent ``U <- U - eta grad G(U)``, ``eta = gd_lr / max(1, r^2)`` (halved for a start only if
    its G would increase), for ``gd_steps`` steps or until ``||grad G|| <= 1e3 * gtol``; then ``"newton"``
    (:func:`solve_batch`) polishes each end point so it can be classified. ``extra`` records the descent's
    iterations, the loss where it stopped and how far the polish moved the point (small: descent had arrived)."""
    opts = options or SolverOptions()
    X = np.array(X0, dtype=np.float64, copy=True)
    B = X.shape[0]
    X = X.reshape(B, -1)
    shape = (problem.T, problem.d, problem.k)
    gtol, _ = _tolerance(problem, opts)
    r = problem_scale(problem)
    eta = np.full(B, opts.gd_lr / max(1.0, r * r))
    t0 = time.perf_counter()
    f, g = _batched.loss_grad(X.reshape(B, *shape), problem)
    iters = np.zeros(B, dtype=int)
    active = np.ones(B, dtype=bool)
    for _ in range(opts.gd_steps):
        active &= (np.linalg.norm(g, axis=1) > 1e3 * gtol) & np.isfinite(f)
        idx = np.flatnonzero(active)
        if idx.size == 0:
            break
        iters[idx] += 1
        for _halve in range(40):  # a safeguard against a too-large fixed step, not a line search
            Xn = X[idx] - eta[idx, None] * g[idx]
            fn, gn = _batched.loss_grad(Xn.reshape(-1, *shape), problem)
            up = ~(fn <= f[idx])
            if not up.any():
                break
            eta[idx[up]] *= 0.5
        X[idx], f[idx], g[idx] = Xn, fn, gn
    polished = solve_batch(problem, X, method="newton", options=opts, seeds=seeds, scales=scales)
    seconds = (time.perf_counter() - t0) / max(B, 1)
    return [SearchResult(point=p.point, loss=p.loss, grad_norm=p.grad_norm, inertia=None,
                         min_eigenvalue=float("nan"), iterations=int(iters[b]) + p.iterations, seed=p.seed,
                         seconds=seconds, status=p.status, method="gd", scale=p.scale,
                         extra={"gd_iterations": int(iters[b]), "gd_loss": float(f[b]),
                                "moved": float(np.linalg.norm(p.point.ravel() - X[b]))})
            for b, p in enumerate(polished)]


def search_instance(problem: Problem, *, starts: int, seed: int, instance: int = 0,
                    scales: tuple[float, ...] = (0.1, 0.5, 1.0, 2.0), gd_runs: int = 2, gd_scale: float = 1e-3,
                    options: SolverOptions | None = None) -> tuple[list[SearchResult], list[SearchResult]]:
    """All solves of one instance: ``starts`` Newton-type solves and ``gd_runs`` gradient-descent runs.

    Start ``j`` has seed :func:`start_seed` ``(seed, instance, j)``, entries of standard deviation
    ``scales[j % len(scales)] * r`` (``r`` = :func:`problem_scale`) and method ``"newton"`` for even
    ``j // len(scales)``, ``"min"`` for odd; gradient-descent run ``m`` uses start index ``starts + m`` and scale
    ``gd_scale * r``. Returns ``(solves, gd_results)``, solves in start order.

    Raises
    ------
    ProblemError
        ``starts`` or ``gd_runs`` not an integer >= 0, or ``scales`` empty or not finite and > 0.
    """
    for name, v in (("starts", starts), ("gd_runs", gd_runs)):
        require_int(name, v, minimum=0)
    if not scales or any(not (np.isfinite(s) and s > 0) for s in scales):
        raise ProblemError(f"scales must be a non-empty list of finite numbers > 0, got {list(scales)}")
    opts = options or SolverOptions()
    r = problem_scale(problem)
    solves: list[SearchResult] = []
    if starts:
        sds = [start_seed(seed, instance, j) for j in range(starts)]
        scs = [scales[j % len(scales)] * r for j in range(starts)]
        methods = [_METHODS[(j // len(scales)) % 2] for j in range(starts)]
        X0 = np.stack([random_start(problem, sd, sc).ravel() for sd, sc in zip(sds, scs)])
        solves = solve_batch(problem, X0, method=methods, options=opts, seeds=sds, scales=scs)
    gd = []
    if gd_runs:
        sds = [start_seed(seed, instance, starts + m) for m in range(gd_runs)]
        scs = [gd_scale * r] * gd_runs
        X0 = np.stack([random_start(problem, sd, sc).ravel() for sd, sc in zip(sds, scs)])
        gd = gradient_descent_batch(problem, X0, options=opts, seeds=sds, scales=scs)
    return solves, gd


def instance_seed(seed: int, instance: int) -> int:
    """Seed of the ground truth of instance ``instance``: ``SeedSequence(seed, spawn_key=(instance, 0))`` as one
    63-bit integer, so instance i is the same whichever process, order or resumed run computes it."""
    ss = np.random.SeedSequence(int(seed), spawn_key=(int(instance), 0))
    return int(ss.generate_state(1, dtype=np.uint64)[0] >> np.uint64(1))


def descent_arrived(result: SearchResult, steps: int) -> bool:
    """Whether a gradient-descent run (:func:`gradient_descent_batch`) ended at a critical point: it stopped before
    using its ``steps`` (gradient below tolerance), or the Newton polish moved its end point by at most
    ``1e-6 max(1, scale)``. Otherwise it did not "end" anywhere: the polish jumped to the nearest critical point."""
    return result.extra["gd_iterations"] < steps or result.extra["moved"] <= 1e-6 * max(1.0, result.scale)


def search_record(problem: Problem, *, starts: int, seed: int, instance: int, scales=(0.1, 0.5, 1.0, 2.0),
                  gd_runs: int = 2, options: SolverOptions | None = None) -> dict:
    """Search one instance and summarise it as a JSON-ready record (one line of the results file).

    Keys: ``critical_points`` (distinct orbits, :meth:`landscape.classify.CriticalPoint.to_dict`), ``solves``
    (count per status over the Newton-type solves), ``gd`` (per gradient-descent run: status, class, loss, index into
    ``critical_points``), ``problem`` (:meth:`theory.problem.Problem.to_dict`, so certificates re-evaluate G from
    the instance itself), ``seconds``.
    """
    from .classify import dedup

    t0 = time.perf_counter()
    solves, gd = search_instance(problem, starts=starts, seed=seed, instance=instance, scales=tuple(scales),
                                 gd_runs=gd_runs, options=options)
    points, which = dedup(problem, solves + gd)
    status_counts: dict[str, int] = {}
    for r in solves:
        status_counts[r.status] = status_counts.get(r.status, 0) + 1
    gd_rows = []
    steps = (options or SolverOptions()).gd_steps
    for r, w in zip(gd, which[len(solves):]):
        near = points[w].classification.label if w >= 0 else None
        arrived = descent_arrived(r, steps)
        gd_rows.append({"status": r.status, "class": near if (near and arrived) else "unconverged", "near": near,
                        "loss": r.loss, "point_index": w, "seed": r.seed, **r.extra})
    return {"index": int(instance), "problem": problem.to_dict(),
            "critical_points": [p.to_dict() for p in points], "solves": status_counts, "gd": gd_rows,
            "seconds": time.perf_counter() - t0}
