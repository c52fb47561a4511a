"""pytest-benchmark suite of the theory inner loops (not in the default test run):

    python -m pytest benchmarks/test_theory_bench.py -o addopts="" --benchmark-group-by=param:size
"""

from __future__ import annotations

import numpy as np
import pytest

SIZES = [(10, 1, 3), (20, 2, 5), (50, 2, 5)]


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    import torch
    from threadpoolctl import threadpool_limits

    torch.set_num_threads(1)
    with threadpool_limits(1):
        yield


def _case(size):
    from theory.problem import Problem

    d, k, T = size
    p = Problem.random(d, k, T, seed=0)
    return p, np.random.default_rng(1).standard_normal((T, d, k))


@pytest.mark.parametrize("size", SIZES, ids=str)
@pytest.mark.parametrize("impl", ["analytic", "autograd"])
def test_reduced_hessian(benchmark, size, impl):
    p, U = _case(size)
    if impl == "analytic":
        from theory.reduced import reduced_hess

        H = benchmark(reduced_hess, U, p)
    else:
        import torch
        from torch.func import hessian

        from theory.autograd_ref import torch_reduced_loss

        H = benchmark(hessian(torch_reduced_loss(p)), torch.tensor(U.ravel())).numpy()
    assert H.shape == (p.n_reduced, p.n_reduced)


@pytest.mark.parametrize("size", SIZES, ids=str)
@pytest.mark.parametrize("impl", ["analytic", "autograd"])
def test_reduced_gradient(benchmark, size, impl):
    p, U = _case(size)
    if impl == "analytic":
        from theory.reduced import reduced_grad

        g = benchmark(reduced_grad, U, p)
    else:
        import torch
        from torch.func import grad

        from theory.autograd_ref import torch_reduced_loss

        g = benchmark(grad(torch_reduced_loss(p)), torch.tensor(U.ravel())).numpy()
    assert g.shape == (p.n_reduced,)
