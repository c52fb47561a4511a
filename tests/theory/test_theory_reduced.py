"""The reduced loss G, its Schur-complement Hessian, and the O(k)^T symmetry."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings

from strategies import problem_and_point, problems, seeds
from theory.meta import meta_grad, meta_hess, meta_loss
from theory.minima import global_minimiser, random_orthogonal
from theory.reduced import optimal_A, reduced_grad, reduced_hess, reduced_loss, schur_complement
from theory.symmetry import inertia, orbit_tangent, quotient_basis, restricted_inertia

FAST = settings(max_examples=40, deadline=None)


@FAST
@given(problem_and_point())
def test_reduced_loss_is_the_minimum_over_A(case):
    p, A, U, _ = case
    G = reduced_loss(U, p)
    A_U = optimal_A(U, p)
    assert G <= meta_loss(A, U, p) + 1e-9 * max(1.0, G)
    assert np.isclose(meta_loss(A_U, U, p), G, rtol=1e-12, atol=1e-12)
    gA, _ = meta_grad(A_U, U, p)
    assert np.max(np.abs(gA)) <= 1e-10 * max(1.0, np.max(np.abs(p.W)))
    # moving A off A(U) in any direction raises L by exactly T ||dA||^2 (H_AA = 2 T I)
    dA = A - A_U
    assert np.isclose(meta_loss(A, U, p) - G, p.T * np.sum(dA ** 2), rtol=1e-9, atol=1e-9)


@FAST
@given(problem_and_point())
def test_reduced_hessian_is_the_schur_complement(case):
    p, _, U, _ = case
    S = schur_complement(meta_hess(optimal_A(U, p), U, p), p.d * p.d)
    H = reduced_hess(U, p)
    assert np.max(np.abs(S - H)) <= 1e-10 * max(1.0, np.max(np.abs(H)))


@FAST
@given(problem_and_point(), seeds)
def test_losses_invariant_under_orthogonal_adapters(case, qseed):
    p, A, U, _ = case
    Q = random_orthogonal(p.k, p.T, qseed)
    UQ = U @ Q
    assert np.isclose(meta_loss(A, UQ, p), meta_loss(A, U, p), rtol=1e-11, atol=1e-11)
    assert np.isclose(reduced_loss(UQ, p), reduced_loss(U, p), rtol=1e-11, atol=1e-11)
    # invariance => the gradient is orthogonal to every orbit direction U_t Omega_t
    Z = orbit_tangent(U)
    g = reduced_grad(U, p)
    assert np.all(np.abs(Z.T @ g) <= 1e-9 * max(1.0, np.linalg.norm(g)) * np.maximum(1.0, np.linalg.norm(Z, axis=0)))


@FAST
@given(problems(min_T=2), seeds)
def test_orbit_directions_span_the_hessian_null_space_at_a_minimiser(p, qseed):
    U = global_minimiser(p, seed=qseed).U
    H = reduced_hess(U, p)
    Z = orbit_tangent(U)
    assert Z.shape[1] == p.T * p.k * (p.k - 1) // 2
    if Z.shape[1]:
        assert np.max(np.abs(H @ Z)) <= 1e-9 * max(1.0, np.max(np.abs(H)))
    Q = quotient_basis(U)
    assert np.allclose(Q.T @ Q, np.eye(Q.shape[1]), atol=1e-10)
    assert np.max(np.abs(Q.T @ Z)) <= 1e-9 * max(1.0, np.max(np.abs(Z))) if Z.size else True
    # at the global minimum the restricted Hessian has no negative eigenvalue
    assert restricted_inertia(H, U).negative == 0


def test_inertia_counts_with_stated_tolerance():
    ine = inertia(np.diag([-2.0, 0.0, 1e-12, 3.0]), rtol=1e-8)
    assert (ine.negative, ine.zero, ine.positive) == (1, 2, 1)
    assert ine.tol == pytest.approx(3e-8, rel=1e-12, abs=0)
    assert not ine.positive_definite


def test_zero_adapters_are_a_saddle_of_G():
    """U = 0 is critical (the gradient 2 (E + E^T) U vanishes) and generically not a minimum."""
    from theory.problem import Problem

    p = Problem.random(5, 1, 3, seed=4)
    U0 = np.zeros((3, 5, 1))
    assert np.linalg.norm(reduced_grad(U0, p)) == 0.0
    assert restricted_inertia(reduced_hess(U0, p), U0).negative > 0


@FAST
@given(problems(min_T=2, max_T=2), seeds)
def test_T2_boosts_leave_G_unchanged_and_span_extra_null_directions(p, useed):
    """At T = 2, G depends only on U_1 U_1^T - U_2 U_2^T: the boost directions are tangent to level sets, and at a
    global minimiser the O(k, k) quotient removes every zero eigenvalue (k <= d generic instances)."""
    from theory.symmetry import boost_tangent

    U = np.random.default_rng(useed).standard_normal((2, p.d, p.k))
    B = boost_tangent(U)
    assert B.shape == (2 * p.d * p.k, p.k * p.k)
    assert np.all(np.abs(B.T @ reduced_grad(U, p)) <= 1e-9 * max(1.0, np.linalg.norm(reduced_grad(U, p)))
                  * np.maximum(1.0, np.linalg.norm(B, axis=0)))
    Ustar = p.U_star
    H = reduced_hess(Ustar, p)
    assert np.max(np.abs(H @ boost_tangent(Ustar))) <= 1e-9 * max(1.0, np.max(np.abs(H)))
    if 2 * p.k <= p.d:
        ine = restricted_inertia(H, Ustar, group="O(k,k)")
        assert ine.negative == 0 and ine.zero == 0
        assert restricted_inertia(H, Ustar).zero == p.k * p.k  # O(k)^T alone leaves the k^2 boosts
