"""Statistics of ``llm.stats`` on synthetic data with known answers: coverage of the intervals, null p-values,
exact sign-flip values, power of the minimum detectable difference."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats as sps

from llm import stats


def _simulate(rng, *, seeds, tasks, items, delta, sd_seed, sd_task=0.0, base=0.55):
    """Two methods' 0/1 results on the same items: a seed effect shared by the whole run (the unit of
    replication), a task effect, and independent item noise; ``delta`` is the true difference of accuracy."""
    groups = np.repeat(np.arange(tasks), items)
    task_eff = rng.normal(0, sd_task, tasks)[groups]
    out = []
    for shift in (delta / 2, -delta / 2):
        seed_eff = rng.normal(0, sd_seed, (seeds, 1))
        p = np.clip(base + shift + seed_eff + task_eff, 0.01, 0.99)
        out.append((rng.random((seeds, groups.size)) < p).astype(float))
    return out[0], out[1], groups


def test_t_interval_known_values():
    m, lo, hi = stats.t_interval([1.0, 2.0, 3.0, 4.0])
    half = sps.t.ppf(0.975, 3) * np.std([1, 2, 3, 4], ddof=1) / 2
    assert m == 2.5 and lo == pytest.approx(2.5 - half, abs=1e-12) and hi == pytest.approx(2.5 + half, abs=1e-12)
    assert half == pytest.approx(2.05426, abs=1e-5)  # t_{.975,3} = 3.182446, sd = 1.290994: 3.182446 * 1.290994 / 2
    assert stats.t_interval([0.3, 0.3, 0.3]) == (0.3, 0.3, 0.3)
    m, lo, hi = stats.t_interval([0.7])
    assert m == 0.7 and math.isnan(lo) and math.isnan(hi)


def test_sign_flip_exact_values():
    # all positive, n = 6: only the two all-same-sign patterns reach |mean|: p = 2 / 64
    assert stats.sign_flip_p([1, 2, 3, 4, 5, 6]) == pytest.approx(2 / 64)
    # d = (1, -1): every pattern has |mean| 0 or 1; observed 0 -> p = 1
    assert stats.sign_flip_p([1.0, -1.0]) == 1.0
    # brute force on a small vector
    d = np.array([0.3, -0.1, 0.25, 0.05, -0.2])
    ref = np.mean([abs(np.dot(s, d)) >= abs(d.sum()) - 1e-12 for s in itertools.product((1, -1), repeat=5)])
    assert stats.sign_flip_p(d) == pytest.approx(ref)


@settings(max_examples=30, deadline=None)
@given(sd=st.floats(0.005, 0.2), n=st.integers(3, 12))
def test_mde80_is_the_difference_with_80_percent_power(sd, n):
    delta = stats.mde80(sd, n)
    nc = delta * math.sqrt(n) / sd
    crit = sps.t.ppf(0.975, n - 1)
    power = sps.nct.sf(crit, n - 1, nc) + sps.nct.cdf(-crit, n - 1, nc)
    assert power == pytest.approx(0.8, abs=1e-6)
    assert delta > 2.8 * sd / math.sqrt(n)  # above the normal-theory value (z_.975 + z_.8) sd / sqrt(n) = 2.80


def test_mde80_matches_a_simulated_t_test():
    rng = np.random.default_rng(1)
    sd, n = 0.03, 6
    delta = stats.mde80(sd, n)
    d = rng.normal(delta, sd, (20000, n))
    rejected = sps.ttest_1samp(d, 0.0, axis=1).pvalue < 0.05
    assert rejected.mean() == pytest.approx(0.8, abs=0.01)


def test_interval_coverage_of_a_planted_difference():
    """Over many simulated runs the 95% interval over seeds covers the true (conditional on items) difference
    about 95% of the time, and the seeds-and-tasks interval covers the population difference at least that."""
    rng = np.random.default_rng(0)
    cover_seed, cover_both, runs = 0, 0, 400
    for _ in range(runs):
        a, b, g = _simulate(rng, seeds=6, tasks=20, items=20, delta=0.04, sd_seed=0.03, sd_task=0.0)
        c = stats.compare(a, b, g)
        # the target of the seed-level interval: the expected difference on these items (no item noise)
        cover_seed += c["ci95"][0] <= 0.04 <= c["ci95"][1]
        cover_both += c["ci95_seeds_tasks"][0] <= 0.04 <= c["ci95_seeds_tasks"][1]
    assert 0.92 <= cover_seed / runs <= 0.98
    assert cover_both / runs >= 0.93


def test_null_p_values_are_uniform_and_rejection_rate_nominal():
    rng = np.random.default_rng(2)
    ps = []
    for _ in range(500):
        a, b, g = _simulate(rng, seeds=6, tasks=20, items=20, delta=0.0, sd_seed=0.02)
        ps.append(stats.compare(a, b, g)["p_value"])
    ps = np.array(ps)
    assert 0.03 <= np.mean(ps < 0.05) <= 0.075
    assert sps.kstest(ps, "uniform").pvalue > 0.01


def test_item_level_test_would_be_invalid_but_seed_level_is_not():
    """The reason the seed is the unit: with a seed effect and no true difference, a test over items rejects far
    too often, the test over seeds does not."""
    rng = np.random.default_rng(3)
    item_rej, seed_rej = 0, 0
    for _ in range(300):
        a, b, g = _simulate(rng, seeds=6, tasks=20, items=20, delta=0.0, sd_seed=0.04)
        d_items = (a - b).mean(axis=0)
        item_rej += sps.ttest_1samp(d_items, 0).pvalue < 0.05
        seed_rej += stats.compare(a, b, g)["p_value"] < 0.05
    assert item_rej / 300 > 0.2 and seed_rej / 300 < 0.09


@settings(max_examples=40, deadline=None)
@given(seeds=st.integers(2, 8), tasks=st.integers(2, 6), items=st.integers(1, 5), seed=st.integers(0, 2**31))
def test_compare_known_answers(seeds, tasks, items, seed):
    rng = np.random.default_rng(seed)
    a = rng.integers(0, 2, (seeds, tasks * items)).astype(float)
    b = rng.integers(0, 2, (seeds, tasks * items)).astype(float)
    g = np.repeat(np.arange(tasks), items)
    c = stats.compare(a, b, g)
    d = (a - b).mean(axis=1)
    assert c["delta"] == pytest.approx(d.mean()) and c["per_seed"] == pytest.approx(d.tolist())
    assert c["unit"] == "seed" and c["n_seeds"] == seeds
    if d.std() > 0:
        assert c["p_value"] == pytest.approx(sps.ttest_rel(a.mean(1), b.mean(1)).pvalue)
        assert c["ci95"][0] < c["delta"] < c["ci95"][1]
    swapped = stats.compare(b, a, g)
    assert swapped["delta"] == pytest.approx(-c["delta"]) and swapped["p_value"] == pytest.approx(c["p_value"],
                                                                                                    nan_ok=True)
    s = stats.summarise(a, g)
    assert s["accuracy"] == pytest.approx(a.mean()) and s["per_task"] == pytest.approx(
        [a[:, g == t].mean() for t in range(tasks)])


def test_seeds_tasks_interval_balanced_formula():
    x = np.array([[1, 0, 1, 1], [0, 0, 1, 1], [1, 1, 1, 0]], dtype=float)
    g = np.array([0, 0, 1, 1])
    m, lo, hi = stats.seeds_tasks_interval(x, g)
    v_seed = x.mean(1).var(ddof=1) / 3
    q = np.array([x[:, :2].mean(), x[:, 2:].mean()])
    v_task = q.var(ddof=1) / 2  # balanced: the cluster-robust term is var(q) / T
    v = v_seed + v_task
    df = v ** 2 / (v_seed ** 2 / 2 + v_task ** 2 / 1)
    half = sps.t.ppf(0.975, df) * math.sqrt(v)
    assert m == pytest.approx(x.mean()) and lo == pytest.approx(m - half) and hi == pytest.approx(m + half)


def test_bad_shapes_are_refused():
    with pytest.raises(ValueError, match="same"):
        stats.compare(np.zeros((2, 3)), np.zeros((3, 3)), [0, 0, 1])
    with pytest.raises(ValueError, match="one entry per item"):
        stats.summarise(np.zeros((2, 3)), [0, 1])
    with pytest.raises(ValueError, match="finite"):
        stats.summarise(np.full((2, 2), np.nan), [0, 1])
