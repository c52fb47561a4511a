"""Lock-step solves over many instances at once: one batch holds the starts of several instances.

:func:`landscape.search.solve_batch` iterates the starts of one instance in lock-step, with one dense Hessian and
one ``numpy.linalg.eigh`` per start and iteration. Profiling it at (d, k, T) = (3, 1, 3) showed NumPy's per-call
overhead of each iteration, then ``eigh`` (10 us for a 9 x 9 matrix, against 1 us for a Cholesky factorisation or
an LU solve), and at (10, 2, 3) ``eigh`` and the Hessian's 7-index ``einsum`` assembly, to dominate. Here

- every row of the batch carries its own instance (task matrices ``W``, tolerance, divergence bound), so one
  iteration serves the starts of all instances of a chunk;
- the Hessian is assembled by :func:`landscape._batched.hess_fast`;
- a row takes the same step as ``solve_batch`` (``V diag(phi(lam)) V^T g``, same damping rules), but from one
  Cholesky factorisation per trial where that is the same step: ``(H^2 + mu I) s = H g`` for ``"newton"`` while
  ``mu`` is not tiny, ``(H + mu I) s = g`` for ``"min"`` where H is positive definite; the eigen-decomposition stays
  for the first iteration (the damping starts from ``lambda_max``), the polish (pseudo-inverse), indefinite
  ``"min"`` rows (a row found indefinite skips the Cholesky test at its next iteration) and small damping;
- eigen-decompositions and Cholesky factorisations are torch's (MKL's LAPACK; ``cholesky_ex`` reports a failure
  per matrix), ``eigh`` faster than NumPy's from n = 24 on one thread (``landscape_census_speed.py --linalg``).

The steps agree with ``solve_batch``'s up to round-off (``tests/landscape/test_census_kernel.py``). A row's
arithmetic does not depend on the other rows of its batch: results are bit for bit the same whichever share a call.

Also here: gradient descent on G (:func:`descend_rows`) and on the full loss ``L(A, U)`` from the initialisation of
the paper's Figure 1 (:func:`figure1_descent`). :mod:`landscape.multisearch` builds the starts and results.

>>> import numpy as np
>>> from theory.problem import Problem
>>> ps = [Problem.random(3, 1, 3, seed=s) for s in (0, 1)]
>>> X0 = np.stack([p.U_star.ravel() + 0.01 for p in ps for _ in range(2)])  # near each instance's U*
>>> out = solve_rows(ps, [0, 0, 1, 1], X0, method=["newton", "min", "newton", "min"])
>>> out["status"].tolist(), bool(out["f"].max() < 1e-20)
(['converged', 'converged', 'converged', 'converged'], True)
"""

from __future__ import annotations

from contextlib import contextmanager

import numpy as np

from theory.problem import Problem, ProblemError

from . import _batched
from .search import _METHODS, SolverOptions, _solver_state, _tolerance, problem_scale

__all__ = ["solve_rows", "descend_rows", "figure1_descent", "FIGURE1_INIT_SCALE"]

#: standard deviation of the entries of ``U`` at the Figure 1 initialisation (``theory.linear_experiment.Settings``)
FIGURE1_INIT_SCALE = 1e-2


class _Rows:
    """Per-row instance data: ``W`` (m, T, d, d) stacked over instances, ``inst`` (B,) the instance of each row."""

    def __init__(self, problems: list[Problem], inst, opts: SolverOptions):
        sizes = {(p.T, p.d, p.k) for p in problems}
        if len(sizes) != 1:
            raise ProblemError(f"all instances of one lock-step batch must have one (T, d, k), got {sorted(sizes)}")
        self.shape = sizes.pop()
        self.W = np.stack([p.W for p in problems])
        self.inst = np.asarray(inst, dtype=np.intp)
        if self.inst.ndim != 1 or (self.inst.size and (self.inst.min() < 0 or self.inst.max() >= len(problems))):
            raise ProblemError(f"row instances must be indices into the {len(problems)} problems, got {inst!r}")
        tol = np.array([_tolerance(p, opts) for p in problems]).reshape(-1, 2)
        self.gtol, self.bound = tol[self.inst, 0], tol[self.inst, 1]
        self.scale = np.array([problem_scale(p) for p in problems])[self.inst]

    def loss_grad(self, X: np.ndarray, rows: np.ndarray):
        return _batched.loss_grad(X.reshape(-1, *self.shape), self.W[self.inst[rows]])

    def hess(self, X: np.ndarray, rows: np.ndarray):
        return _batched.hess_fast(X.reshape(-1, *self.shape), self.W[self.inst[rows]])


def solve_rows(problems: list[Problem], inst, X0, *, method="newton", options: SolverOptions | None = None):
    """Newton-type solves (``"newton"`` or ``"min"``, see :mod:`landscape.search`) from every row of ``X0``
    (shape ``(B, n)``), row b on instance ``problems[inst[b]]``; all rows in lock-step.

    Returns
    -------
    dict of arrays: ``X`` (B, n) end points, ``f`` (B,) G there, ``g`` (B, n) gradients, ``iterations`` (B,),
    ``status`` (B,) keys of :data:`landscape.result.STATUS_MESSAGES`; row b is the same whichever rows share the call.

    Raises
    ------
    ProblemError : instances of different sizes, a row index out of range, a method name not in ``("newton",
        "min")``, or rows of the wrong length
    """
    opts = options or SolverOptions()
    R = _Rows(problems, inst, opts)
    X = np.array(X0, dtype=np.float64, copy=True).reshape(R.inst.size, -1)
    B = X.shape[0]
    methods = [method] * B if isinstance(method, str) else list(method)
    if len(methods) != B or any(m not in _METHODS for m in methods):
        raise ProblemError(f"method must be one of {_METHODS} or one such name per row ({B})")
    if X.shape[1] != int(np.prod(R.shape)):
        raise ProblemError(f"each start must have T*d*k = {int(np.prod(R.shape))} entries, got {X.shape[1]}")
    is_newton = np.array([m == "newton" for m in methods], dtype=bool)
    f, g = R.loss_grad(X, np.arange(B))
    mu, polish, iters, status, active = _solver_state(B, opts)
    indefinite = np.zeros(B, dtype=bool)  # the row's last eigen-decomposition had a negative eigenvalue
    with _one_torch_thread():
        _iterate(R, X, f, g, mu, polish, iters, status, active, indefinite, is_newton, opts)
    return {"X": X, "f": f, "g": g, "iterations": iters, "status": status}


def _iterate(R, X, f, g, mu, polish, iters, status, active, indefinite, is_newton, opts):
    """The lock-step iterations of :func:`solve_rows` (updates the arrays in place)."""
    for _ in range(opts.max_iter):
        idx = np.flatnonzero(active)
        gn = np.linalg.norm(g[idx], axis=1)
        bad = ~(np.isfinite(f[idx]) & np.all(np.isfinite(g[idx]), axis=1))
        done = (gn <= R.gtol[idx]) & (polish[idx] == 0)
        status[idx[bad]] = "nonfinite"
        status[idx[done]] = "converged"  # after "nonfinite", as in solve_batch
        keep = ~(bad | done)
        idx, gn = idx[keep], gn[keep]
        active[:] = False
        active[idx] = True
        if idx.size == 0:
            break
        iters[idx] += 1
        _newton_step(R, X, f, g, mu, polish, status, active, indefinite, idx, gn, is_newton)
    else:
        idx = np.flatnonzero(active)
        fin = np.linalg.norm(g[idx], axis=1) <= R.gtol[idx]
        status[idx[fin]] = "converged"


def _newton_step(R, X, f, g, mu, polish, status, active, indefinite, idx, gn, is_newton):
    """One lock-step iteration of :func:`solve_rows` on the active rows ``idx`` (updates the arrays in place).

    Rows at their first iteration (the damping is initialised from ``lambda_max``), rows polishing, ``"min"`` rows
    whose Hessian is not positive definite and ``"newton"`` rows with little damping take their step from the
    eigen-decomposition of the Hessian; the others take the same step from one linear solve per trial
    (:func:`_solve_step`), several times cheaper. All rows then share one damping loop (:func:`_damped_steps`)."""
    H = R.hess(X[idx], idx)
    pol = gn <= R.gtol[idx]
    nw = is_newton[idx]
    # Gershgorin: ub >= max |lambda|; (H^2 + mu I) is then solved accurately (condition <= 1 + 1 / _KAPPA)
    ub = np.abs(H).sum(axis=2).max(axis=1)
    fast = ~pol & ~np.isnan(mu[idx]) & nw & (mu[idx] >= _KAPPA * ub * ub)
    cand = ~pol & ~np.isnan(mu[idx]) & ~nw & ~indefinite[idx]
    if cand.any():
        fast[cand] = _positive_definite(H[cand])
    eig = ~fast
    lmax = ub.copy()
    if eig.any():
        lam, V = _eigh(H[eig])
        indefinite[idx[eig]] = lam[:, 0] < 0.0
        c = np.einsum("bji,bj->bi", V, g[idx[eig]])
        lmax[eig] = np.maximum(np.abs(lam).max(axis=1), 1e-300)
        pe = pol[eig]
        if pe.any():
            _polish(R, X, f, g, polish, idx[pol], lam[pe], V[pe], c[pe], lmax[pol])
            lam, V, c = lam[~pe], V[~pe], c[~pe]
    move = ~pol
    if move.any():
        s_idx, nw_s, lm = idx[move], nw[move], lmax[move]
        fresh = np.isnan(mu[s_idx])
        mu[s_idx[fresh]] = 1e-3 * np.where(nw_s, lm * lm, lm)[fresh]
        by_eig = eig[move]
        where = np.cumsum(by_eig) - 1, np.cumsum(~by_eig) - 1  # position in the eigen / solve data
        eig_step = _eigen_step(lam, V, c, nw_s[by_eig]) if by_eig.any() else None
        solve_step = _solve_step(H[fast], g[idx[fast]], nw[fast]) if fast.any() else None

        def step(pending, m):
            out = np.empty((pending.size, X.shape[1]))
            e = by_eig[pending]
            if e.any():
                out[e] = eig_step(where[0][pending[e]], m[e])
            if not e.all():
                out[~e] = solve_step(where[1][pending[~e]], m[~e])
            return out
        _damped_steps(R, X, f, g, mu, status, active, s_idx, lm, nw_s, step)
    far = active[idx] & (np.linalg.norm(X[idx], axis=1) > R.bound[idx])
    status[idx[far]], active[idx[far]] = "diverged", False


#: ``"newton"`` rows solve ``(H^2 + mu I) s = H g`` directly only while ``mu >= _KAPPA ub^2``; below that the
#: eigen-decomposition keeps orbit directions (``lambda = 0``) out of the step
_KAPPA = 1e-11


@contextmanager
def _one_torch_thread():
    """Torch on one thread while the solver runs, like BLAS in the workers: its default pool of spinning threads
    made these small factorisations 30x slower. (Imported here: the command line's parser imports no torch.)"""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _positive_definite(H: np.ndarray) -> np.ndarray:
    """Per matrix of the stack ``H`` (P, n, n): whether its Cholesky factorisation exists (``torch.linalg.cholesky_ex``
    reports it per matrix; NumPy's raises for the whole stack)."""
    import torch

    return torch.linalg.cholesky_ex(torch.from_numpy(np.ascontiguousarray(H))).info.numpy() == 0


def _eigh(H: np.ndarray):
    """``(lam, V)`` of the stack ``H`` (P, n, n) by ``torch.linalg.eigh`` (MKL's LAPACK, faster than NumPy's from
    n = 24 on one thread: ``benchmarks/landscape_census_speed.py --linalg``), eigenvalues ascending, ``V`` C-ordered;
    NaN for a matrix with a non-finite entry. A stack holding one, or one torch refuses (a decomposition that does
    not converge), is done matrix by matrix, and a matrix torch still refuses goes to :func:`_batched.eigh`. A row's
    result depends only on its own matrix (torch's batched call is a loop of the same LAPACK call;
    ``tests/landscape/test_eigh_fallback.py``)."""
    import torch

    ok = np.isfinite(H).all(axis=(1, 2))
    if ok.all():
        try:
            out = torch.linalg.eigh(torch.from_numpy(np.ascontiguousarray(H)))
            # torch's V is column-major per matrix, and NumPy's einsum would sum it in another order than C's
            return out[0].numpy(), np.ascontiguousarray(out[1].numpy())
        except RuntimeError:  # torch.linalg.LinAlgError: matrix by matrix below
            pass
    lam, V = np.full(H.shape[:-1], np.nan), np.full(H.shape, np.nan)
    for i in np.flatnonzero(ok):
        try:
            out = torch.linalg.eigh(torch.from_numpy(np.ascontiguousarray(H[i])))
            lam[i], V[i] = out[0].numpy(), out[1].numpy()
        except RuntimeError:
            lam[i], V[i] = _batched.eigh(H[i])
    return lam, V


def _polish(R, X, f, g, polish, p_idx, lam, V, c, lmax):
    """Undamped pseudo-inverse Newton steps of the rows ``p_idx`` already below tolerance (eigenvalues with
    ``|lam| <= 1e-12 lambda_max`` get no step): quadratic convergence takes the gradient to round-off."""
    keep = np.abs(lam) > 1e-12 * lmax[:, None]
    X[p_idx] -= np.einsum("bij,bj->bi", V, np.where(keep, c / np.where(keep, lam, 1.0), 0.0))
    polish[p_idx] -= 1
    f[p_idx], g[p_idx] = R.loss_grad(X[p_idx], p_idx)


def _eigen_step(lam, V, c, nw):
    """Step from ``H = V diag(lam) V^T`` and ``c = V^T g`` for trial damping ``m``: ``V diag(lam / (lam^2 + m)) c``
    (``"newton"``, Levenberg-Marquardt on grad G) or ``V diag(1 / (|lam| + m)) c`` (``"min"``, saddle-free)."""
    def step(rows, m):
        lp, nwp, m = lam[rows], nw[rows][:, None], m[:, None]
        return np.einsum("bij,bj->bi", V[rows], c[rows] * np.where(nwp, lp / (lp * lp + m), 1.0 / (np.abs(lp) + m)))
    return step


def _solve_step(H, g, nw):
    """The step of :func:`_eigen_step` without the eigen-decomposition: ``(H^2 + m I)^{-1} H g`` (``"newton"``) or
    ``(H + m I)^{-1} g`` (``"min"``, only for H positive definite, where ``|lam| = lam``), one Cholesky
    factorisation per trial (both matrices are positive definite; LU for a row whose factorisation fails in floating
    point), by torch's ``cholesky_ex`` and ``cholesky_solve`` (MKL's LAPACK, one call per matrix of the stack).
    ``H`` (P, n, n) is overwritten (the caller passes a copy)."""
    import torch

    # H^2 and H g of the "newton" rows by NumPy: torch's bmm of one matrix by a vector takes another path (gemv)
    # than a stack of them, so a row's result would depend on its batch
    M, rhs, Hn = H, g.copy(), H[nw]
    M[nw], rhs[nw] = Hn @ Hn, np.einsum("bij,bj->bi", Hn, g[nw])
    M, rhs = torch.from_numpy(M), torch.from_numpy(rhs)

    def step(rows, m):
        rows = torch.from_numpy(rows)
        A = M[rows]
        A.diagonal(dim1=-2, dim2=-1).add_(torch.from_numpy(m)[:, None])
        b = rhs[rows][..., None]
        L, info = torch.linalg.cholesky_ex(A)
        x = torch.cholesky_solve(b, L)[..., 0].numpy()
        bad = info.numpy() != 0
        if bad.any():
            x[bad] = np.linalg.solve(A.numpy()[bad], b.numpy()[bad])[..., 0]
        return x
    return step


def _damped_steps(R, X, f, g, mu, status, active, s_idx, lmax, nw, step):
    """Damped steps ``X - step(pending, mu)`` of the rows ``s_idx``, each retried with 4x the damping until its merit
    (``||grad G||^2`` for ``"newton"``, G for ``"min"``) decreases, at most 60 trials; ``mu / 5`` (floored at
    ``1e-14 lmax``, squared for ``"newton"``) after an accepted step (:func:`landscape.search.solve_batch`'s rule).

    At n <= 12, after two rounds the few rows still rejected try their next 4 dampings ``mu 4^j`` at once and keep
    the first that decreases the merit: the same step as trying them one by one (``mu 4^j`` is exact), in one pass
    of NumPy's per-call overhead instead of up to four; at larger n the extra solves would cost more than that."""
    merit = np.where(nw, np.einsum("bi,bi->b", g[s_idx], g[s_idx]), f[s_idx])
    pending = np.arange(s_idx.size)
    block = 4 if X.shape[1] <= 12 else 1
    tried = 0
    while tried < 60 and pending.size:
        K = 1 if tried < 2 else min(block, 60 - tried)
        rep = np.repeat(pending, K)
        m = np.repeat(mu[s_idx[pending]], K) * np.tile(4.0 ** np.arange(K), pending.size)
        Xn = X[s_idx[rep]] - step(rep, m)
        fn, gnew = R.loss_grad(Xn, s_idx[rep])
        new_merit = np.where(nw[rep], np.einsum("bi,bi->b", gnew, gnew), fn)
        ok = (np.isfinite(new_merit) & (new_merit < merit[rep])).reshape(-1, K)
        hit = ok.any(axis=1)
        first = (np.arange(pending.size) * K + ok.argmax(axis=1))[hit]  # the first damping that passed
        acc_p = pending[hit]
        acc = s_idx[acc_p]
        X[acc], f[acc], g[acc] = Xn[first], fn[first], gnew[first]
        lm_ok = 1e-14 * lmax[acc_p]
        mu[acc] = np.maximum(m[first] / 5.0, np.where(nw[acc_p], lm_ok * lm_ok, lm_ok))
        pending = pending[~hit]
        mu[s_idx[pending]] *= 4.0 ** K
        tried += K
    # no damping decreases the merit: round-off level is convergence, otherwise a stall
    rows = s_idx[pending]
    near = np.linalg.norm(g[rows], axis=1) <= 10.0 * R.gtol[rows]
    status[rows] = np.where(near, "converged", "stalled")
    active[rows] = False


def descend_rows(problems: list[Problem], inst, X0, *, options: SolverOptions | None = None):
    """Plain gradient descent on G from every row of ``X0`` (``(B, n)``), row b on ``problems[inst[b]]``, by the rule
    of :func:`landscape.search.gradient_descent_batch` (fixed step ``gd_lr / max(1, r^2)``, halved for a row only if
    its G would increase), then the ``"newton"`` polish of :func:`solve_rows`.

    Returns the dict of :func:`solve_rows` (after the polish) plus ``gd_iterations`` (B,), ``gd_loss`` (B,) and
    ``moved`` (B,) (how far the polish moved the end point of descent).
    """
    opts = options or SolverOptions()
    R = _Rows(problems, inst, opts)
    X = np.array(X0, dtype=np.float64, copy=True).reshape(R.inst.size, -1)
    B = X.shape[0]
    eta = opts.gd_lr / np.maximum(1.0, R.scale * R.scale)
    f, g = R.loss_grad(X, np.arange(B))
    iters = np.zeros(B, dtype=int)
    active = np.ones(B, dtype=bool)
    for _ in range(opts.gd_steps):
        idx = np.flatnonzero(active)
        go = (np.linalg.norm(g[idx], axis=1) > 1e3 * R.gtol[idx]) & np.isfinite(f[idx])
        active[idx[~go]] = False
        idx = idx[go]
        if idx.size == 0:
            break
        iters[idx] += 1
        X[idx], f[idx], g[idx] = _descent_step(R, X, f, g, eta, idx)
    out = solve_rows(problems, inst, X, method="newton", options=opts)
    out.update(gd_iterations=iters, gd_loss=f, moved=_moved(out["X"], X))
    return out


def _descent_step(R, X, f, g, eta, idx):
    """``X - eta g`` on rows ``idx``, ``eta`` halved for a row while its G would increase (a safeguard against a
    too-large fixed step, not a line search; at most 40 halvings, as in gradient_descent_batch)."""
    for _halve in range(40):
        Xn = X[idx] - eta[idx, None] * g[idx]
        fn, gn = R.loss_grad(Xn, idx)
        up = ~(fn <= f[idx])
        if not up.any():
            break
        eta[idx[up]] *= 0.5
    return Xn, fn, gn


def figure1_descent(problems: list[Problem], inst, U0, *, options: SolverOptions | None = None):
    """Plain gradient descent on the full loss ``L(A, U)`` from ``A = 0`` and ``U = U0`` (``(B, T, d, k)``), as in
    the paper's Figure 1 (``theory.linear_experiment``) at infinite samples: fixed step
    ``eta = 1 / (2 T + 8 max_t ||W_t||_2)`` (its Meta-LoRA rule with ``Sxx = I``, ``Syx = W_t``), until
    ``||grad L|| <= 1e3 gtol`` or ``gd_steps`` steps; the end point's ``U`` is then polished on G by ``"newton"``
    (:func:`solve_rows`) so it can be classified ((A(U), U) is critical for L iff U is for G; DESIGN.md section 1).

    Returns the dict of :func:`descend_rows` (``gd_loss`` is L at the end of descent).
    """
    opts = options or SolverOptions()
    R = _Rows(problems, inst, opts)
    T, d, k = R.shape
    U = np.array(U0, dtype=np.float64, copy=True).reshape(R.inst.size, T, d, k)
    B = U.shape[0]
    A = np.zeros((B, d, d))
    spec = np.array([np.linalg.norm(p.W, ord=2, axis=(1, 2)).max() for p in problems])
    eta = (1.0 / (2.0 * T + 8.0 * spec))[R.inst]
    W = R.W[R.inst]
    f, gA, gU = _batched.full_loss_grad(A, U, W)
    iters = np.zeros(B, dtype=int)
    active = np.ones(B, dtype=bool)
    for _ in range(opts.gd_steps):
        idx = np.flatnonzero(active)
        gnorm = np.sqrt(np.einsum("bij,bij->b", gA[idx], gA[idx]) + np.einsum("btia,btia->b", gU[idx], gU[idx]))
        go = (gnorm > 1e3 * R.gtol[idx]) & np.isfinite(f[idx])
        active[idx[~go]] = False
        idx = idx[go]
        if idx.size == 0:
            break
        iters[idx] += 1
        A[idx] -= eta[idx, None, None] * gA[idx]
        U[idx] -= eta[idx, None, None, None] * gU[idx]
        f[idx], gA[idx], gU[idx] = _batched.full_loss_grad(A[idx], U[idx], W[idx])
    X = U.reshape(B, -1)
    out = solve_rows(problems, inst, X, method="newton", options=opts)
    out.update(gd_iterations=iters, gd_loss=f, moved=_moved(out["X"], X))
    return out


def _moved(X_end: np.ndarray, X: np.ndarray) -> np.ndarray:
    """``||X_end[b] - X[b]||`` per row, each by ``numpy.linalg.norm`` of one vector (as the per-instance path)."""
    return np.array([np.linalg.norm(a - b) for a, b in zip(X_end, X)])
