"""Tests of theory.linear_experiment (Figure 1, the paper's Section 4.1).

Oracles: the per-sample losses written out here, torch autograd on them, the per-task Python loop of the same
algorithm, and the paper's results (Corollary 1 floor, Theorem 3.3 recovery).
"""

from __future__ import annotations

import sys
from dataclasses import replace

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from threadpoolctl import threadpool_limits

from linear_reference import LOOP_STEPS
from theory import linear_experiment as le
from theory import linear_settings as lset
from theory import linear_stats as ls
from theory.finetune import finetune_optimum
from theory.problem import ProblemError


@pytest.fixture(autouse=True)
def _one_blas_thread():
    with threadpool_limits(limits=1):
        yield


def _samples(rng, T, m, d, scale=1.0):
    X = rng.standard_normal((T, m, d))
    Y = scale * rng.standard_normal((T, m, d))
    return X, Y


# per-sample losses, written from their definitions (the oracles)
def _naive_meta(A, U, X, Y):
    return sum(np.mean(np.sum((X[t] @ (A + U[t] @ U[t].T).T - Y[t]) ** 2, axis=1)) for t in range(len(X)))


def _naive_sr(A, X, Y):
    return sum(np.mean(np.sum((X[t] @ A.T - Y[t]) ** 2, axis=1)) for t in range(len(X)))


def _naive_lora(A, B, C, x, y):
    return np.mean(np.sum((x @ (A + B @ C.T).T - y) ** 2, axis=1))


sizes = st.tuples(st.integers(1, 6), st.integers(1, 4), st.integers(1, 3), st.integers(1, 40))


@settings(max_examples=30, deadline=None)
@given(sizes=sizes, seed=st.integers(0, 2**32 - 1))
def test_sufficient_statistics_give_the_per_sample_losses_exactly(sizes, seed):
    d, T, k, m = sizes
    rng = np.random.default_rng(seed)
    X, Y = _samples(rng, T, m, d, scale=3.0)
    stats = ls.sufficient_stats(X, Y)
    A, U = rng.standard_normal((d, d)), rng.standard_normal((T, d, k))
    B, C = rng.standard_normal((d, k)), rng.standard_normal((d, k))
    meta, _, _ = ls.meta_empirical(A, U, stats)
    pooled = ls.Stats(stats.Sxx.sum(0), stats.Syx.sum(0), stats.syy.sum(0))
    sr, _ = ls.sr_empirical(A, pooled)
    lora = ls.lora_empirical(A, B, C, ls.Stats(stats.Sxx[0], stats.Syx[0], stats.syy[0]))[0]
    np.testing.assert_allclose(meta, _naive_meta(A, U, X, Y), rtol=1e-10)
    np.testing.assert_allclose(sr, _naive_sr(A, X, Y), rtol=1e-10)
    np.testing.assert_allclose(lora, _naive_lora(A, B, C, X[0], Y[0]), rtol=1e-10)
    # and for a single predictor on each task
    M = rng.standard_normal((T, d, d))
    per_task = [np.mean(np.sum((X[t] @ M[t].T - Y[t]) ** 2, axis=1)) for t in range(T)]
    np.testing.assert_allclose(ls.empirical_loss(M, stats), per_task, rtol=1e-10)


@settings(max_examples=15, deadline=None)
@given(sizes=sizes, seed=st.integers(0, 2**32 - 1))
def test_gradients_match_torch_autograd_of_the_per_sample_losses(sizes, seed):
    torch = pytest.importorskip("torch")
    d, T, k, m = sizes
    rng = np.random.default_rng(seed)
    X, Y = _samples(rng, T, m, d, scale=2.0)
    stats = ls.sufficient_stats(X, Y)
    A, U = rng.standard_normal((d, d)), rng.standard_normal((T, d, k))
    B, C = rng.standard_normal((d, k)), rng.standard_normal((d, k))
    tX, tY = torch.tensor(X), torch.tensor(Y)

    def naive_meta(tA, tU):
        M = tA + tU @ tU.transpose(-1, -2)
        return ((tX @ M.transpose(-1, -2) - tY) ** 2).sum(-1).mean(-1).sum()

    def naive_sr(tA):
        return ((tX @ tA.T - tY) ** 2).sum(-1).mean(-1).sum()

    def naive_lora(tA, tB, tC):
        return ((tX[0] @ (tA + tB @ tC.T).T - tY[0]) ** 2).sum(-1).mean()

    tA, tU, tB, tC = (torch.tensor(v, requires_grad=True) for v in (A, U, B, C))
    gA_ref, gU_ref = torch.autograd.grad(naive_meta(tA, tU), (tA, tU))
    _, gA, gU = ls.meta_empirical(A, U, stats)
    np.testing.assert_allclose(gA, gA_ref.numpy(), rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(gU, gU_ref.numpy(), rtol=1e-9, atol=1e-9)
    (gS_ref,) = torch.autograd.grad(naive_sr(tA), (tA,))
    pooled = ls.Stats(stats.Sxx.sum(0), stats.Syx.sum(0), stats.syy.sum(0))
    np.testing.assert_allclose(ls.sr_empirical(A, pooled)[1], gS_ref.numpy(), rtol=1e-9, atol=1e-9)
    gB_ref, gC_ref = torch.autograd.grad(naive_lora(tA, tB, tC), (tB, tC))
    _, gB, gC, _ = ls.lora_empirical(A, B, C, ls.Stats(stats.Sxx[0], stats.Syx[0], stats.syy[0]))
    np.testing.assert_allclose(gB, gB_ref.numpy(), rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(gC, gC_ref.numpy(), rtol=1e-9, atol=1e-9)


def test_theory_does_not_import_torch():
    import subprocess

    code = "import sys, theory.linear_experiment, theory.figure1_cli; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_gradient_descent_on_statistics_equals_descent_on_samples():
    """Ten Meta-LoRA steps with the per-sample gradient (written out per sample) give the same iterates."""
    rng = np.random.default_rng(3)
    d, T, k, m, eta = 4, 3, 1, 25, 0.01
    X, Y = _samples(rng, T, m, d)
    A, U = rng.standard_normal((d, d)), 0.3 * rng.standard_normal((T, d, k))
    A1, U1 = A.copy(), U.copy()
    stats = ls.sufficient_stats(X, Y)
    for _ in range(10):
        gA, gU = np.zeros_like(A), np.zeros_like(U)
        for t in range(T):
            M = A + U[t] @ U[t].T
            G = sum(2.0 * np.outer(M @ x - y, x) for x, y in zip(X[t], Y[t])) / m  # d/dM of the per-sample mean
            gA += G
            gU[t] = (G + G.T) @ U[t]
        A, U = A - eta * gA, U - eta * gU
        _, gA1, gU1 = ls.meta_empirical(A1, U1, stats)
        A1, U1 = A1 - eta * gA1, U1 - eta * gU1
    np.testing.assert_allclose(A1, A, rtol=1e-11, atol=1e-12)
    np.testing.assert_allclose(U1, U, rtol=1e-11, atol=1e-12)


@pytest.mark.parametrize("T,k,d", [(3, 1, 5), (2, 1, 6), (3, 2, 9)])
def test_batched_equals_the_per_task_loop(T, k, d):
    s = lset.Settings(d=d, T=T, k=k, N=60, n=30, runs=3, seed=11, retrain_iters=40, finetune_iters=30,
                    retrain_gtol=0.0)
    inst = le.draw_instance(s)
    a = le.run_setting(s, instance=inst)
    b = le.run_setting(s, instance=inst, steps=LOOP_STEPS)
    for name in ("meta_test", "sr_test", "meta_retrain", "sr_retrain", "meta_finetune", "sr_finetune", "A_meta",
                 "A_sr"):
        np.testing.assert_allclose(getattr(a, name), getattr(b, name), rtol=1e-11, atol=1e-12, err_msg=name)
    for key in a.grad_norms:
        np.testing.assert_allclose(a.grad_norms[key], b.grad_norms[key], rtol=1e-9, atol=1e-12, err_msg=key)
    assert a.meta_test.shape == (3, 31) and a.meta_retrain.shape == (3, 41)


def test_same_seed_same_numbers_other_seed_other_numbers():
    s = lset.Settings(d=5, N=100, n=40, runs=2, retrain_iters=30, finetune_iters=10)
    a, b = le.run_setting(s), le.run_setting(s)
    c = le.run_setting(replace(s, seed=1))
    np.testing.assert_array_equal(a.meta_test, b.meta_test)
    assert not np.allclose(a.meta_test, c.meta_test)
    # runs are independent draws, and settings differing only in N share the ground truth of each run
    assert not np.allclose(a.sr_floor[0], a.sr_floor[1])
    np.testing.assert_array_equal(le.draw_instance(replace(s, N=300)).W, le.draw_instance(s).W)


def test_sigma_zero_meta_lora_recovers_and_fits_the_new_task():
    """sigma = 0 at the defaults (d=10, T=3, N=5000, n=100, k=1): Theorem 3.3 gives A = A*, so rank-k fine-tuning
    fits W_{T+1}: test loss < 1e-6; SR + LoRA stays at its Corollary 1 floor."""
    s = lset.Settings(sigma=0.0)
    res = le.run_setting(s)
    assert np.all(res.meta_test[:, -1] < 1e-6), res.meta_test[:, -1]
    assert np.all(res.meta_base_error < 1e-3), res.meta_base_error
    # SR + LoRA cannot fit it: Eckart-Young on its retrained base, and that base is near A_SR (floor > 1 here)
    assert np.all(res.sr_test[:, -1] >= res.best_adapter["sr"] * (1 - 1e-10))
    assert np.all(res.sr_test[:, -1] >= res.finite_sample_floor())
    assert np.all(res.finite_sample_floor() > 1.0), res.finite_sample_floor()


def _check_convergence(res):
    """Never starved: retraining and fine-tuning of both methods end at (near) stationary points."""
    assert np.all(res.grad_norms["sr_retrain"] < 1e-8), res.grad_norms
    assert np.all(res.grad_norms["meta_retrain"] < 1e-6), res.grad_norms
    for m in ("meta_finetune", "sr_finetune"):
        assert np.all(res.grad_norms[m] < 1e-5), (m, res.grad_norms[m])


def _check_floor(res):
    """SR + LoRA against Corollary 1, two exact inequalities per run:
    (1) Eckart-Young: no rank-r adapter on the retrained base beats ``best_adapter`` (the trained one is one such);
    (2) the 1-Lipschitz bound: ``best_adapter >= (sqrt(floor) - ||A_SR,hat - A_SR||_F)^2`` (finite_sample_floor).
    The margin below the floor is thus the measured distance of the retrained base from the infinite-sample A_SR."""
    final = res.sr_test[:, -1]
    assert np.all(final >= res.best_adapter["sr"] * (1 - 1e-10) - 1e-12), (final, res.best_adapter["sr"])
    assert np.all(res.best_adapter["sr"] >= res.finite_sample_floor() * (1 - 1e-10) - 1e-12)


# reduced Figure 1: every panel and value with 3 runs, N capped at 1000 where N is not the varied parameter
_REDUCED = [(p, s) for p in lset.PANELS
            for s in lset.panel_settings(p, {"runs": 3, "seed": 5} | ({} if p == "N" else {"N": 1000}))]


@pytest.mark.parametrize("panel,s", [(p, s) for p, s in _REDUCED if s.T >= 3],
                         ids=[f"{p}={getattr(s, p)}" for p, s in _REDUCED if s.T >= 3])
def test_meta_lora_beats_sr_lora_and_sr_respects_its_floor(panel, s):
    res = le.run_setting(s)
    _check_convergence(res)
    meta, sr = np.median(res.meta_test[:, -1]), np.median(res.sr_test[:, -1])
    assert meta < sr, (panel, getattr(s, panel), meta, sr)
    # for T >= 3 the gap is structural: SR + LoRA sits near a positive floor, Meta-LoRA near the noise level
    assert meta < 0.01 * np.median(res.sr_floor)
    _check_floor(res)
    # the bound has teeth: the retrained base is far closer to A_SR than the floor's scale
    assert np.all(res.sr_base_error < 0.5 * np.sqrt(res.sr_floor)), (res.sr_base_error, res.sr_floor)


def test_T2_both_methods_reach_the_noise_level():
    """T = 2 with rank 3k = (T+1)k: Corollary 2 (Meta-LoRA) and Corollary 1 (SR, whose floor is 0 at this rank)
    both predict an exact fit, so both end at the fine-tuning noise level, about sigma^2 r (2d - r) / n (the
    degrees of freedom of a rank-r d x d matrix over n samples). Neither is starved."""
    s = [x for p, x in _REDUCED if p == "T" and x.T == 2][0]
    res = le.run_setting(s)
    _check_convergence(res)
    _check_floor(res)
    assert np.all(res.sr_floor < 1e-20)
    noise = s.sigma ** 2 * s.rank * (2 * s.d - s.rank) / s.n
    assert np.all(res.meta_test[:, -1] < 4 * noise) and np.all(res.sr_test[:, -1] < 4 * noise), (
        res.meta_test[:, -1], res.sr_test[:, -1], noise)
    assert np.all(res.meta_test[:, 0] > 100 * noise)  # it started far away


@pytest.mark.slow
@pytest.mark.parametrize("panel", list(lset.PANELS))
def test_full_size_panels(panel):
    for s in lset.panel_settings(panel):
        res = le.run_setting(s)
        _check_convergence(res)
        _check_floor(res)
        if s.T >= 3:
            assert np.median(res.meta_test[:, -1]) < np.median(res.sr_test[:, -1])


def test_panels_and_settings_refuse_bad_input():
    with pytest.raises(ProblemError, match="unknown panel 'q'"):
        lset.panel_settings("q")
    with pytest.raises(ProblemError, match=r"panel T, T = 5: .*\(T\+1\)\*k = \(5\+1\)\*1 = 6 exceeds d = 5"):
        lset.panel_settings("T", {"d": 5})
    with pytest.raises(ProblemError, match=r"panel k, k = 3: .*exceeds d = 10"):
        lset.panel_settings("k", {"d": 10})
    for name in ("N", "n", "runs", "retrain_iters", "finetune_iters", "d"):
        with pytest.raises(ProblemError, match=f"{name} must be a positive integer"):
            lset.Settings(**{name: 0})
    with pytest.raises(ProblemError, match="sigma must be a finite number >= 0, got -0.1"):
        lset.Settings(sigma=-0.1)
    with pytest.raises(ProblemError, match="unknown settings"):
        lset.panel_settings("d", {"dimension": 3})
    with pytest.raises(ProblemError, match="steps must be a tuple of three step factories"):
        le.run_setting(lset.Settings(d=5, runs=1, retrain_iters=1, finetune_iters=1), steps="loop")


def test_panel_definitions():
    assert {p: [getattr(s, p) for s in lset.panel_settings(p)] for p in lset.PANELS} == {
        "d": [5, 10, 20], "T": [2, 3, 5], "N": [100, 1000, 10000], "n": [100, 1000, 10000], "k": [1, 2, 3]}
    assert [s.rank for s in lset.panel_settings("T")] == [3, 1, 1]
    assert [s.d for s in lset.panel_settings("k")] == [12, 12, 12]
    assert lset.panel_settings("k", {"d": 16})[0].d == 16  # a user's d wins over the panel's


def test_finite_sample_floor_is_a_true_lower_bound():
    """The 1-Lipschitz bound behind finite_sample_floor, on random perturbations of A_SR (hypothesis-free check of
    the inequality itself)."""
    rng = np.random.default_rng(0)
    for _ in range(200):
        d, r = 6, int(rng.integers(1, 4))
        W, A = rng.standard_normal((d, d)), rng.standard_normal((d, d))
        E = rng.standard_normal((d, d)) * rng.uniform(0, 2)
        lo = max(np.sqrt(finetune_optimum(A, W, r).loss) - np.linalg.norm(E), 0.0) ** 2
        assert finetune_optimum(A + E, W, r).loss >= lo - 1e-12
