"""Autograd references through ``torch.func`` for the ``verify`` command and the benchmarks.

Torch is imported inside the functions only (``theory`` never imports torch at module import time). The losses are
written directly from their definitions in docs/convention.md, in float64, independent of the closed-form
derivatives they check.
"""

from __future__ import annotations

import numpy as np

from .problem import Problem

__all__ = ["torch_meta_loss", "torch_reduced_loss", "autograd_meta", "autograd_reduced"]


def torch_meta_loss(problem: Problem):
    """``x -> sum_t ||A + U_t U_t^T - W_t||_F^2`` on flat torch vectors ``x = [vec(A); vec(U)]``.

    Returns
    -------
    callable
        ``loss(x)`` of a float64 torch vector of length ``d^2 + T d k``, returning a 0-d tensor.
    """
    import torch

    d, k, T = problem.d, problem.k, problem.T
    W = torch.tensor(np.array(problem.W))

    def loss(x):
        A, U = x[: d * d].reshape(d, d), x[d * d:].reshape(T, d, k)
        return ((A + U @ U.transpose(1, 2) - W) ** 2).sum()

    return loss


def torch_reduced_loss(problem: Problem):
    """``u -> sum_t ||D_t - mean_s D_s||_F^2``, ``D_t = U_t U_t^T - W_t``, on flat torch vectors ``u = vec(U)``.

    Returns
    -------
    callable
        ``loss(u)`` of a float64 torch vector of length ``T d k``, returning a 0-d tensor.
    """
    import torch

    d, k, T = problem.d, problem.k, problem.T
    W = torch.tensor(np.array(problem.W))

    def loss(u):
        U = u.reshape(T, d, k)
        D = U @ U.transpose(1, 2) - W
        return ((D - D.mean(dim=0, keepdim=True)) ** 2).sum()

    return loss


def _grad_and_hess(fn, x: np.ndarray, want_hess: bool):
    import torch
    from torch.func import grad, hessian

    xt = torch.as_tensor(np.asarray(x, dtype=np.float64))
    g = grad(fn)(xt).numpy()
    return (g, hessian(fn)(xt).numpy()) if want_hess else (g, None)


def autograd_meta(problem: Problem, x, *, hess: bool = True):
    """Gradient (n,) and dense Hessian (n, n) of L at flat ``x`` by ``torch.func``.

    Returns
    -------
    g : ndarray, shape (d^2 + T d k,)
    H : ndarray, shape (d^2 + T d k, d^2 + T d k), or None when ``hess=False``

    Raises
    ------
    ImportError
        torch is not installed.
    RuntimeError
        ``x`` of a size other than ``d^2 + T d k`` (from torch's reshape).
    """
    return _grad_and_hess(torch_meta_loss(problem), x, hess)


def autograd_reduced(problem: Problem, u, *, hess: bool = True):
    """Gradient (T d k,) and dense Hessian of G at flat ``u`` by ``torch.func``.

    Returns
    -------
    g : ndarray, shape (T d k,)
    H : ndarray, shape (T d k, T d k), or None when ``hess=False``

    Raises
    ------
    ImportError
        torch is not installed.
    RuntimeError
        ``u`` of a size other than ``T d k`` (from torch's reshape).
    """
    return _grad_and_hess(torch_reduced_loss(problem), u, hess)
