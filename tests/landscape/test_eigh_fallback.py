"""The search's eigen-decompositions survive a matrix NumPy's LAPACK cannot decompose.

``tests/landscape/data/eigh_nonconvergence_d10_k2_T3.npy`` is a finite symmetric 60 x 60 Hessian of G met by the
lock-step search (``search_instances`` on ``Problem.random(10, 2, 3, seed=s)``, s = 0..5, seed 0): NumPy 2.4's
bundled ``dsyevd`` with eigenvectors raised "Eigenvalues did not converge" on it, and so for the whole batch.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import scipy.linalg

from landscape import _batched

HARD = Path(__file__).parent / "data" / "eigh_nonconvergence_d10_k2_T3.npy"


def _check_decomposition(H, lam, V, orthogonality=1e-12):
    n = H.shape[0]
    assert np.all(np.diff(lam) >= 0)
    assert np.abs(V.T @ V - np.eye(n)).max() <= orthogonality
    assert np.linalg.norm(V @ np.diag(lam) @ V.T - H) <= 1e-12 * np.linalg.norm(H)
    assert np.allclose(lam, scipy.linalg.eigh(H, eigvals_only=True, driver="ev"), rtol=1e-10,
                       atol=1e-12 * np.abs(lam).max())


def test_the_hard_hessian_is_decomposed():
    H = np.load(HARD)
    assert H.shape == (60, 60) and np.all(np.isfinite(H)) and np.array_equal(H, H.T)
    lam, V = _batched.eigh(H)
    _check_decomposition(H, lam, V)
    stack = np.stack([np.eye(60), H, np.diag(np.arange(60.0))])
    lam_s, V_s = _batched.eigh(stack)
    _check_decomposition(H, lam_s[1], V_s[1])
    for i in (0, 2):  # the other rows are NumPy's own result, bit for bit
        want = np.linalg.eigh(stack[i])
        assert np.array_equal(lam_s[i], want[0]) and np.array_equal(V_s[i], want[1])


def test_a_refused_matrix_falls_back_to_scipy_and_the_others_keep_numpys_result(monkeypatch):
    rng = np.random.default_rng(0)
    A = rng.standard_normal((3, 5, 5))
    stack = A + np.swapaxes(A, 1, 2)
    real = np.linalg.eigh

    def refuses_row_1(H):  # as NumPy does on the hard matrix: raise for it, and for any stack holding it
        if (H.ndim == 3 and any(np.array_equal(h, stack[1]) for h in H)) or np.array_equal(H, stack[1]):
            raise np.linalg.LinAlgError("Eigenvalues did not converge")
        return real(H)

    monkeypatch.setattr(np.linalg, "eigh", refuses_row_1)
    lam, V = _batched.eigh(stack)
    want = scipy.linalg.eigh(stack[1], driver="evr")
    assert np.array_equal(lam[1], want[0]) and np.array_equal(V[1], want[1])
    for i in (0, 2):
        assert np.array_equal(lam[i], real(stack[i])[0]) and np.array_equal(V[i], real(stack[i])[1])
    single = _batched.eigh(stack[1])
    assert np.array_equal(single[0], want[0]) and np.array_equal(single[1], want[1])
    assert single[1].flags.c_contiguous and V.flags.c_contiguous  # as NumPy's; SciPy's own V is Fortran-ordered
    nan = _batched.eigh(np.array([[np.inf, 0.0], [0.0, 1.0]]))  # non-finite input: NaN, as NumPy gives
    assert np.isnan(nan[0]).all()


@pytest.mark.slow
def test_search_where_the_hard_hessian_was_met_finishes():
    from threadpoolctl import threadpool_limits

    from landscape.multisearch import search_instances
    from theory.problem import Problem

    problems = [Problem.random(10, 2, 3, seed=s) for s in range(6)]
    with threadpool_limits(1):
        out = search_instances(problems, range(6), starts=64, seed=0, gd_runs=0)
    assert len(out) == 6 and all(len(solves) == 64 for solves, *_ in out)


def test_a_non_finite_stack_gives_nan_instead_of_raising():
    """NumPy 2 raises "Eigenvalues did not converge" on a NaN matrix; the fallback gives NaN for that row only."""
    rng = np.random.default_rng(1)
    A = rng.standard_normal((5, 5))
    stack = np.stack([A + A.T, np.full((5, 5), np.nan)])
    lam, V = _batched.eigh(stack)
    assert np.isnan(lam[1]).all() and np.isnan(V[1]).all()
    assert np.array_equal(lam[0], np.linalg.eigh(stack[0])[0])


def test_the_lock_step_eigh_keeps_each_row_its_own():
    """The census kernel's eigen-decompositions (torch's ``eigh``): every row of a stack holding the hard Hessian
    and a NaN matrix is, bit for bit, what that row gives alone; the hard one is a valid decomposition."""
    from landscape.lockstep import _eigh

    rng = np.random.default_rng(2)
    A = rng.standard_normal((2, 60, 60))
    H = np.load(HARD)
    stack = np.stack([A[0] + A[0].T, H, np.full((60, 60), np.nan), A[1] + A[1].T])
    lam, V = _eigh(stack)
    _check_decomposition(H, lam[1], V[1], orthogonality=1e-9)  # MKL: 8e-11 on this matrix (cluster near 3.8e6)
    assert np.isnan(lam[2]).all() and np.isnan(V[2]).all()
    for i in (0, 1, 3):
        alone = _eigh(stack[i:i + 1])
        assert np.array_equal(lam[i], alone[0][0]) and np.array_equal(V[i], alone[1][0])
        _check_decomposition(stack[i], lam[i], V[i], orthogonality=1e-9 if i == 1 else 1e-12)


def test_a_matrix_torch_refuses_goes_to_numpy_and_the_others_keep_torchs_result(monkeypatch):
    import torch

    from landscape.lockstep import _eigh

    rng = np.random.default_rng(3)
    A = rng.standard_normal((3, 6, 6))
    stack = A + np.swapaxes(A, 1, 2)
    real = torch.linalg.eigh
    want = [real(torch.from_numpy(h)) for h in stack]

    def refuses_row_1(H):  # as LAPACK does on a hard matrix: raise for it, and for any stack holding it
        rows = H.numpy().reshape(-1, 6, 6)
        if any(np.array_equal(h, stack[1]) for h in rows):
            raise torch.linalg.LinAlgError("linalg.eigh: The algorithm failed to converge")
        return real(H)

    monkeypatch.setattr(torch.linalg, "eigh", refuses_row_1)
    lam, V = _eigh(stack)
    assert np.array_equal(lam[1], np.linalg.eigh(stack[1])[0]) and np.array_equal(V[1], np.linalg.eigh(stack[1])[1])
    for i in (0, 2):
        assert np.array_equal(lam[i], want[i][0].numpy()) and np.array_equal(V[i], want[i][1].numpy())


def test_the_lock_step_eigh_gives_c_ordered_vectors_on_every_path():
    """torch returns eigenvectors column-major per matrix; the kernel's ``V^T g`` (NumPy's ``einsum``) sums such an
    array in another order than a C-ordered one, so a row's step would depend on whether its stack took the batched
    or the matrix-by-matrix path (and the census in results/census would not reproduce). Both paths give the same,
    C-ordered arrays and the same ``V^T g`` bit for bit."""
    from landscape.lockstep import _eigh

    rng = np.random.default_rng(4)
    A = rng.standard_normal((3, 60, 60))
    stack = A + np.swapaxes(A, 1, 2)
    g = rng.standard_normal((3, 60))
    lam, V = _eigh(stack)  # all finite: one batched call
    lam_m, V_m = _eigh(np.concatenate([stack, np.full((1, 60, 60), np.nan)]))  # matrix by matrix
    assert V.flags.c_contiguous and V_m.flags.c_contiguous
    assert np.array_equal(lam, lam_m[:3]) and np.array_equal(V, V_m[:3])
    assert np.array_equal(np.einsum("bji,bj->bi", V, g), np.einsum("bji,bj->bi", V_m[:3], g))
