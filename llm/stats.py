"""Statistics of a comparison whose unit of replication is the retraining seed.

Layout: a method's results are a 0/1 matrix ``correct`` of shape ``(S, N)``: ``S`` retraining seeds (each seed
retrains and fine-tunes everything again, so it moves every item of a run together) by ``N`` held-out items, the
same items for every seed and method; ``groups`` (N,) names the test task (speaker) of each item.

* :func:`compare` (methods ``a`` and ``b`` on the same items): per seed the paired difference of accuracy
  ``d_s = mean_i (a_si - b_si)``; across seeds the mean ``delta``, its 95% t interval with ``S - 1`` degrees of
  freedom, the paired t-test p-value and the exact sign-flip p-value (all ``2^S`` sign patterns of the ``d_s``),
  and ``mde80``: the smallest true difference that a two-sided paired t-test at level 0.05 detects with power 0.8
  given the run's own between-seed standard deviation of ``d_s`` (noncentral t; Cohen 1988, ch. 2). These treat
  the items as fixed. ``ci95_seeds_tasks`` widens the interval by the between-task spread as well (a
  crossed-design variance: between-seed variance of the seed means / S plus the cluster-robust variance of the
  task means, degrees of freedom by Welch-Satterthwaite), for readers who want to generalise to other speakers.
* :func:`summarise` (one method): mean accuracy with the same seeds-and-tasks interval, per-seed and per-task
  means.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
from scipy import optimize, stats

__all__ = ["t_interval", "sign_flip_p", "mde80", "seeds_tasks_interval", "compare", "summarise"]


def _as_matrix(x, name: str) -> np.ndarray:
    a = np.asarray(x, dtype=float)
    if a.ndim != 2 or a.shape[0] < 1 or a.shape[1] < 1 or not np.all(np.isfinite(a)):
        raise ValueError(f"{name} must be a finite (seeds, items) matrix, got shape {a.shape}")
    return a


def t_interval(values, level: float = 0.95) -> tuple[float, float, float]:
    """``(mean, lo, hi)``: the Student-t interval of the mean of ``values`` (n,). ``n = 1``: ``(x, nan, nan)``;
    zero spread: ``(x, x, x)``.

    ``mean +- t_{(1 + level) / 2, n - 1} s / sqrt(n)`` with ``s`` the sample standard deviation (``ddof = 1``).

    Returns
    -------
    tuple of float
        ``(mean, lo, hi)`` in the unit of ``values``.

    >>> t_interval([2.0, 2.0, 2.0]), t_interval([0.5])
    ((2.0, 2.0, 2.0), (0.5, nan, nan))
    >>> [round(x, 4) for x in t_interval([0.0, 1.0])]  # t_{0.975, 1} = 12.7062, s / sqrt(2) = 0.5
    [0.5, -5.8531, 6.8531]
    """
    v = np.asarray(values, dtype=float)
    m = float(v.mean())
    if v.size < 2:
        return m, math.nan, math.nan
    se = float(v.std(ddof=1)) / math.sqrt(v.size)
    h = float(stats.t.ppf(0.5 + level / 2, v.size - 1)) * se
    return m, m - h, m + h


def sign_flip_p(d) -> float:
    """Exact two-sided sign-flip (randomisation) p-value of ``mean(d) = 0`` over all ``2^n`` sign patterns of
    ``d`` (n,): the fraction of patterns whose ``|mean|`` is at least the observed one (ties counted).

    Returns
    -------
    float
        In ``[2 / 2^n, 1]`` (the observed signs and their mirror image always count).

    >>> sign_flip_p([0.1, 0.2, 0.3])  # only +++ and --- reach |mean| = 0.2 among 8 patterns
    0.25

    Raises
    ------
    ValueError
        When ``n > 20`` (the enumeration of ``2^n`` patterns would be too long).
    """
    d = np.asarray(d, dtype=float)
    if d.size > 20:
        raise ValueError(f"exact sign-flip enumerates 2^n patterns; n = {d.size} is too many (at most 20)")
    obs = abs(d.mean())
    signs = np.array(list(itertools.product((1.0, -1.0), repeat=d.size)))
    means = np.abs(signs @ d) / d.size
    return float(np.mean(means >= obs - 1e-12 * max(1.0, obs)))


def mde80(sd: float, n: int, *, alpha: float = 0.05, power: float = 0.8) -> float:
    """Smallest ``|delta|`` a two-sided one-sample t-test of ``n`` paired differences with standard deviation
    ``sd`` detects with probability ``power`` at level ``alpha``: solves
    ``P(|T| > t_{1-alpha/2, n-1}) = power`` for ``T ~ nct(n - 1, delta sqrt(n) / sd)`` (Cohen 1988, ch. 2).

    Returns
    -------
    float
        The difference, in the unit of ``sd``; NaN for ``n < 2`` or a non-finite ``sd``, 0 for ``sd = 0``.

    >>> mde80(0.0, 5), mde80(0.1, 1)
    (0.0, nan)
    """
    if n < 2 or not math.isfinite(sd):
        return math.nan
    if sd == 0:
        return 0.0
    df = n - 1
    crit = stats.t.ppf(1 - alpha / 2, df)

    def shortfall(delta):
        nc = delta * math.sqrt(n) / sd
        lower = stats.nct.cdf(-crit, df, nc)  # the far tail: tiny, and NaN in scipy for some (df, nc) at df = 1
        return stats.nct.sf(crit, df, nc) + (lower if math.isfinite(lower) else 0.0) - power

    hi = sd
    while shortfall(hi) < 0:
        hi *= 2
    return float(optimize.brentq(shortfall, 0.0, hi, xtol=1e-10 * sd))


def seeds_tasks_interval(x, groups, level: float = 0.95) -> tuple[float, float, float]:
    """``(mean, lo, hi)`` of the grand mean of ``x`` (S, N) counting seed and task (cluster) variation.

    ``var = var(seed means) / S + T / (T - 1) * sum_t (n_t (q_t - mean))^2 / N^2`` with ``q_t`` the mean of task
    ``t``'s ``n_t`` items over seeds; degrees of freedom by Welch-Satterthwaite. Slightly conservative (the
    seed-by-item residual enters both terms).

    Returns
    -------
    tuple of float
        ``(mean, lo, hi)`` in the unit of ``x``; ``lo = hi = nan`` with one seed and one task.

    Raises
    ------
    ValueError
        When ``x`` is not a finite 2-D matrix with at least one seed and one item, or ``groups`` does not have
        one entry per item (column of ``x``).
    """
    x = _as_matrix(x, "x")
    g = np.asarray(groups)
    if g.shape != (x.shape[1],):
        raise ValueError(f"groups must have one entry per item ({x.shape[1]}), got shape {g.shape}")
    m = float(x.mean())
    s, n = x.shape
    labels = np.unique(g)
    parts, dfs = [], []
    if s > 1:
        parts.append(float(x.mean(axis=1).var(ddof=1)) / s)
        dfs.append(s - 1)
    if labels.size > 1:
        k = labels.size
        q = np.array([x[:, g == t].mean() for t in labels])
        nt = np.array([(g == t).sum() for t in labels])
        parts.append(k / (k - 1) * float(np.sum((nt * (q - m)) ** 2)) / n ** 2)
        dfs.append(k - 1)
    var = sum(parts)
    if not parts:
        return m, math.nan, math.nan
    if var == 0:
        return m, m, m
    df = var ** 2 / sum(p ** 2 / d for p, d in zip(parts, dfs) if p > 0)
    h = float(stats.t.ppf(0.5 + level / 2, df)) * math.sqrt(var)
    return m, m - h, m + h


def compare(a, b, groups) -> dict:
    """Paired comparison of methods ``a`` and ``b`` (each (S, N) correctness on the same items and seeds):
    ``delta`` (a - b, accuracy as a fraction), ``ci95``, ``p_value`` (paired t over seeds), ``p_signflip``,
    ``mde80``, ``sd_seed``, ``per_seed`` and ``ci95_seeds_tasks`` (module docstring).

    Parameters
    ----------
    a, b : array_like
        ``(S, N)`` 0/1 correctness of the two methods, same seeds and items in the same order.
    groups : array_like
        ``(N,)`` test task of each item.

    Returns
    -------
    dict
        The keys above plus ``unit`` (``'seed'``) and ``n_seeds``; ``p_signflip`` is ``None`` for more than 20
        seeds, intervals and p-values NaN for one seed.

    Raises
    ------
    ValueError
        When ``a`` or ``b`` is not a finite 2-D matrix, their shapes differ, or ``groups`` has not one entry per
        item.
    """
    a, b = _as_matrix(a, "a"), _as_matrix(b, "b")
    if a.shape != b.shape:
        raise ValueError(f"a and b must have the same (seeds, items) shape, got {a.shape} and {b.shape}")
    d = (a - b).mean(axis=1)
    delta, lo, hi = t_interval(d)
    sd = float(d.std(ddof=1)) if d.size > 1 else math.nan
    if d.size < 2:
        p = math.nan
    elif sd == 0:
        p = 1.0 if delta == 0 else 0.0
    else:
        p = float(stats.ttest_1samp(d, 0.0).pvalue)
    _, lo2, hi2 = seeds_tasks_interval(a - b, groups)
    return {"delta": delta, "ci95": [lo, hi], "p_value": p, "p_signflip": sign_flip_p(d) if d.size <= 20 else None,
            "unit": "seed", "n_seeds": int(d.size), "sd_seed": sd, "mde80": mde80(sd, d.size),
            "per_seed": d.tolist(), "ci95_seeds_tasks": [lo2, hi2]}


def summarise(correct, groups) -> dict:
    """One method's accuracy: ``accuracy`` (mean over seeds and items), ``ci95`` (seeds and tasks, see
    :func:`seeds_tasks_interval`), ``per_seed`` (S,), ``per_task`` (mean over seeds, tasks in order of first
    appearance) and ``ci95_seed`` (t over the seed means: items fixed).

    Parameters
    ----------
    correct : array_like
        ``(S, N)`` 0/1 correctness.
    groups : array_like
        ``(N,)`` test task of each item.

    Returns
    -------
    dict
        ``accuracy`` (a fraction), ``ci95`` and ``ci95_seed`` (``[lo, hi]``), ``per_seed`` ``(S,)``, ``per_task``
        ``(n_tasks,)``.

    Raises
    ------
    ValueError
        When ``correct`` is not a finite 2-D matrix or ``groups`` has not one entry per item.
    """
    x = _as_matrix(correct, "correct")
    g = np.asarray(groups)
    m, lo, hi = seeds_tasks_interval(x, g)
    _, slo, shi = t_interval(x.mean(axis=1))
    order = list(dict.fromkeys(g.tolist()))
    return {"accuracy": m, "ci95": [lo, hi], "per_seed": x.mean(axis=1).tolist(),
            "per_task": [float(x[:, g == t].mean()) for t in order], "ci95_seed": [slo, shi]}
