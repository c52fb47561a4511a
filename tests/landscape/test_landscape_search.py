"""Search, classification and deduplication of critical points of G (landscape.search / classify / _batched)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from threadpoolctl import threadpool_limits

from landscape import _batched
from landscape.classify import annotate, classify_point, dedup, orbit_invariants, same_orbit
from landscape.result import STATUS_MESSAGES, SearchResult
from landscape.search import (SolverOptions, gradient_descent, search_instance, search_record, solve_batch,
                              solve_critical, instance_seed, start_seed)
from theory.problem import Problem, ProblemError
from theory.reduced import reduced_grad, reduced_hess, reduced_loss

from strategies import problems, seeds


@pytest.fixture(autouse=True)
def _one_thread():
    with threadpool_limits(limits=1):
        yield


def _random_orthogonal(rng, k):
    q, r = np.linalg.qr(rng.standard_normal((k, k)))
    return q * np.sign(np.diag(r))


@settings(max_examples=25, deadline=None)
@given(problems(max_d=5, max_k=3, max_T=4), seeds, st.integers(1, 4))
def test_batched_kernel_equals_theory(p, seed, B):
    """Each slice of the batched G, gradient and Hessian equals theory.reduced's value at that point."""
    U = np.random.default_rng(seed).standard_normal((B, p.T, p.d, p.k))
    f, g = _batched.loss_grad(U, p)
    H = _batched.hess(U, p)
    for b in range(B):
        f_ref = reduced_loss(U[b], p)
        assert f[b] == pytest.approx(f_ref, rel=1e-12, abs=1e-12)
        np.testing.assert_allclose(g[b], reduced_grad(U[b], p), rtol=1e-12, atol=1e-11)
        H_ref = reduced_hess(U[b], p)
        np.testing.assert_allclose(H[b], H_ref, rtol=1e-12, atol=1e-11 * max(1.0, np.abs(H_ref).max()))


@pytest.mark.parametrize("d,k,T,seed", [(4, 1, 3, 0), (5, 1, 4, 1), (6, 2, 3, 2), (4, 1, 2, 3), (6, 2, 2, 4)])
def test_search_finds_the_planted_global_minimum(d, k, T, seed):
    """From random starts the minimising solver reaches G = 0; for T >= 3 (Theorem 3.3) the minimiser has
    U_t U_t^T = U*_t U*_t^T, i.e. it is the planted ground truth up to the symmetry."""
    p = Problem.random(d, k, T, seed=seed)
    solves, _ = search_instance(p, starts=16, seed=seed, gd_runs=0)
    points, _ = dedup(p, solves)
    glob = [c for c in points if c.classification.label == "global_min"]
    assert glob, [c.classification.label for c in points]
    g0 = reduced_loss(np.zeros_like(p.U_star), p)
    for c in glob:
        assert c.classification.loss < 1e-15 * g0  # far below the classifier's own threshold (1e-12 G(0))
        if T >= 3:
            np.testing.assert_allclose(orbit_invariants(c.point), orbit_invariants(p.U_star), atol=1e-8)


def test_constructed_points_are_classified():
    """U* (and U*_t Q_t) is a global minimum; U = 0 is a critical point and, for generic W, a saddle (the Hessian
    there is 2 (E_t + E_t^T) kron I with E_t = -(P*_t - mean P*), whose traces sum to zero)."""
    rng = np.random.default_rng(5)
    p = Problem.random(5, 2, 3, seed=11)
    c = classify_point(p, p.U_star)
    assert c.label == "global_min" and c.loss < 1e-25 and c.inertia[0] == 0
    Q = np.stack([_random_orthogonal(rng, 2) for _ in range(3)])
    assert classify_point(p, p.U_star @ Q).label == "global_min"
    zero = np.zeros((3, 5, 2))
    assert np.linalg.norm(reduced_grad(zero, p)) == 0.0
    c0 = classify_point(p, zero)
    assert c0.label == "saddle" and c0.inertia[0] > 0 and c0.min_eigenvalue < 0
    assert c0.loss == pytest.approx(reduced_loss(zero, p))


def test_saddle_found_by_newton_and_escaped_by_min():
    """Started next to the saddle U = 0, the root solver converges to that saddle and the minimising solver
    does not stop at a saddle."""
    p = Problem.random(4, 1, 3, seed=3)
    x0 = 1e-6 * np.random.default_rng(0).standard_normal(p.n_reduced)
    r = solve_critical(p, x0, method="newton")
    assert r.status == "converged" and r.grad_norm < 1e-9
    assert classify_point(p, r.point).label == "saddle"
    a = annotate(p, r)
    assert a.inertia[0] > 0 and a.min_eigenvalue < 0 and a.extra["class"] == "saddle" and r.inertia is None
    m = solve_critical(p, x0, method="min")
    assert m.status == "converged"
    assert classify_point(p, m.point).label in ("global_min", "spurious_min")


def test_gradient_descent_at_T2_ends_in_a_global_minimum():
    """Theorem 3.4 in practice: plain gradient descent from a small start at T = 2 ends at G ~ 0."""
    p = Problem.random(4, 1, 2, seed=0)
    x0 = 1e-3 * np.random.default_rng(1).standard_normal(p.n_reduced)
    r = gradient_descent(p, x0, options=SolverOptions(gd_steps=20000))
    assert r.method == "gd" and r.status == "converged"
    assert r.extra["gd_iterations"] < 20000 and r.extra["moved"] < 1e-4
    assert classify_point(p, r.point).label == "global_min"


def test_dedup_merges_a_rotated_point_and_separates_others():
    """A found critical point rotated by random Q_t in O(k) merges with it; a different critical point does not."""
    rng = np.random.default_rng(2)
    p = Problem.random(5, 2, 3, seed=7)
    solves, _ = search_instance(p, starts=16, seed=1, gd_runs=0)
    points, _ = dedup(p, solves)
    assert len(points) >= 2
    a, b = points[0], points[1]
    Q = np.stack([_random_orthogonal(rng, 2) for _ in range(3)])
    rot = a.point @ Q
    assert np.abs(rot - a.point).max() > 1e-3  # the rotation really moved the point
    assert same_orbit(a.point, rot) and not same_orbit(a.point, b.point)
    fake = [SearchResult(point=x, loss=reduced_loss(x, p), grad_norm=float(np.linalg.norm(reduced_grad(x, p))),
                         inertia=None, min_eigenvalue=float("nan"), iterations=1, seed=i, seconds=0.0,
                         status="converged", method="newton", scale=1.0)
            for i, x in enumerate([a.point, rot, b.point])]
    merged, which = dedup(p, fake)
    assert which == [0, 0, 1] and len(merged) == 2
    assert merged[0].hits == {"newton": 2}


def test_k1_sign_flips_merge():
    p = Problem.random(4, 1, 3, seed=1)
    flipped = p.U_star * np.array([1.0, -1.0, -1.0])[:, None, None]
    assert same_orbit(p.U_star, flipped)
    assert not same_orbit(p.U_star, 1.01 * p.U_star)


def test_solves_are_reproducible_from_their_seed():
    p = Problem.random(3, 1, 3, seed=0)
    s1, g1 = search_instance(p, starts=8, seed=4, instance=2, gd_runs=1)
    s2, g2 = search_instance(p, starts=8, seed=4, instance=2, gd_runs=1)
    for a, b in zip(s1 + g1, s2 + g2):
        assert a.seed == b.seed and np.array_equal(a.point, b.point)
    assert len({r.seed for r in s1}) == 8
    assert start_seed(4, 2, 0) != start_seed(4, 3, 0) != start_seed(5, 2, 0)


def test_batch_equals_one_at_a_time():
    """Lock-step batching changes nothing: every start's result equals its own single solve."""
    p = Problem.random(3, 1, 3, seed=5)
    X0 = np.random.default_rng(0).standard_normal((6, p.n_reduced))
    for method in ("newton", "min"):
        batch = solve_batch(p, X0, method=method)
        for x0, rb in zip(X0, batch):
            r1 = solve_critical(p, x0, method=method)
            assert r1.status == rb.status and r1.iterations == rb.iterations
            np.testing.assert_allclose(r1.point, rb.point, rtol=0, atol=1e-12)


def test_status_table_and_result_validation():
    p = Problem.random(3, 1, 3, seed=0)
    r = solve_critical(p, np.ones(p.n_reduced), method="newton", options=SolverOptions(max_iter=1))
    assert r.status == "max_iter" and r.message == STATUS_MESSAGES["max_iter"]
    text = json.dumps(r.to_dict())  # NaN fields: compare the text, NaN != NaN as numbers
    assert json.dumps(SearchResult.from_dict(json.loads(text)).to_dict()) == text
    with pytest.raises(ValueError, match="status must be one of"):
        SearchResult(point=np.zeros((1, 1, 1)), loss=0, grad_norm=0, inertia=None, min_eigenvalue=0, iterations=0,
                     seed=0, seconds=0, status="ok", method="newton", scale=1)


@pytest.mark.parametrize("kwargs,match", [
    ({"max_iter": 0}, "max_iter must be a positive integer"),
    ({"gtol": -1.0}, "gtol must be a finite number > 0"),
    ({"polish": -1}, "polish must be an integer >= 0"),
    ({"gd_lr": float("nan")}, "gd_lr must be a finite number > 0"),
])
def test_solver_options_refused(kwargs, match):
    with pytest.raises(ProblemError, match=match):
        SolverOptions(**kwargs)


def test_bad_inputs_refused():
    p = Problem.random(3, 1, 3, seed=0)
    with pytest.raises(ProblemError, match="method must be one of"):
        solve_critical(p, np.zeros(9), method="bfgs")
    with pytest.raises(ProblemError, match="T\\*d\\*k = 9"):
        solve_critical(p, np.zeros(8))
    with pytest.raises(ProblemError, match="scales must be"):
        search_instance(p, starts=2, seed=0, scales=(0.1, -1.0))
    with pytest.raises(ProblemError, match="eig_rtol"):
        classify_point(p, p.U_star, eig_rtol=0.0)


def test_search_record_is_json_and_restores_the_problem():
    p = Problem.random(3, 1, 3, seed=2)
    rec = search_record(p, starts=8, seed=0, instance=0, gd_runs=1)
    back = json.loads(json.dumps(rec))
    q = Problem.from_dict(back["problem"])
    assert np.array_equal(q.U_star, p.U_star) and np.array_equal(q.A_star, p.A_star)
    for c in back["critical_points"]:
        assert reduced_loss(np.asarray(c["point"]), q) == pytest.approx(c["loss"], rel=1e-9, abs=1e-25)
    assert sum(back["solves"].values()) == 8 and len(back["gd"]) == 1


def _cp(cls, loss, eigs):
    eigs = sorted(eigs)
    return {"class": cls, "loss": loss, "eigenvalues": eigs, "min_eigenvalue": eigs[0],
            "inertia": [sum(e < 0 for e in eigs), 0, sum(e > 0 for e in eigs)]}


def test_spuriousness_score():
    from landscape.adversarial import spuriousness

    assert spuriousness({"critical_points": [_cp("global_min", 0.0, [1, 2])]}) == 0.0
    near = {"critical_points": [_cp("saddle", 1.0, [-1e-3, 1.0, 10.0]), _cp("saddle", 2.0, [-5.0, -1.0, 10.0])]}
    assert spuriousness(near) == pytest.approx(4.0)  # -log10(1e-3 / 10); the index-2 saddle does not count
    far = {"critical_points": [_cp("saddle", 1.0, [-1.0, 1.0, 10.0])]}
    assert spuriousness(far) == pytest.approx(1.0)
    assert spuriousness(far) < spuriousness(near)
    assert spuriousness({"critical_points": [_cp("spurious_min", 0.1, [1, 2])]}) == float("inf")


def test_hill_climb_is_reproducible_and_keeps_the_best():
    from landscape.adversarial import hill_climb_record, initial_problem
    from landscape.store import canonical

    spec = {"index": 1, "d": 4, "k": 1, "T": 3, "seed": 3, "starts": 8, "scales": [0.5, 1.0], "gd_runs": 0,
            "adversarial": {"rounds": 3, "sigma": 0.5}}
    a, b = hill_climb_record(spec), hill_climb_record(spec)
    assert canonical([a]) == canonical([b])
    hist = a["adversarial"]["history"]
    assert hist[0]["round"] == 0 and len(hist) <= 4
    accepted = [h for h in hist if h["accepted"]]
    best = accepted[-1]
    assert a["adversarial"]["round"] == best["round"] and a["adversarial"]["score"] == best["score"]
    scores = [math.inf if h["score"] is None else h["score"] for h in accepted]  # None: +inf, a spurious min found
    assert all(x < y for x, y in zip(scores, scores[1:]))  # strictly improving chain
    start, sampler = initial_problem(4, 1, 3, 3, 1)
    assert a["adversarial"]["sampler"] == sampler == "norm_disparity"
    moved = not np.array_equal(np.asarray(a["problem"]["U_star"]), start.U_star)
    assert moved == (best["round"] > 0)


@pytest.mark.parametrize("chain,sampler", [(0, "iid"), (1, "norm_disparity"), (2, "low_dim")])
def test_adversarial_samplers(chain, sampler):
    from landscape.adversarial import initial_problem

    p, name = initial_problem(6, 1, 3, 0, chain)
    assert name == sampler
    plain = Problem.random(6, 1, 3, seed=instance_seed(0, chain))
    if sampler == "iid":
        assert np.array_equal(p.U_star, plain.U_star)
    elif sampler == "norm_disparity":
        ratios = np.linalg.norm(p.U_star, axis=(1, 2)) / np.linalg.norm(plain.U_star, axis=(1, 2))
        assert np.ptp(np.log(ratios)) > 0.0
        # directions kept, only norms changed
        cos = np.sum(p.U_star * plain.U_star, axis=(1, 2)) / (np.linalg.norm(p.U_star, axis=(1, 2))
                                                            * np.linalg.norm(plain.U_star, axis=(1, 2)))
        np.testing.assert_allclose(cos, 1.0, atol=1e-12)
    else:  # an orthogonal split into kept (factor 1) and shrunk (factor 0.05) parts: norms shrink, never below 5%
        n_new, n_old = np.linalg.norm(p.U_star, axis=(1, 2)), np.linalg.norm(plain.U_star, axis=(1, 2))
        assert np.all(n_new <= n_old * (1 + 1e-12)) and np.all(n_new >= 0.05 * n_old * (1 - 1e-12))
        assert not np.allclose(p.U_star, plain.U_star)


STORED = "search_d3_k1_T3_seed0_i139"


@pytest.mark.parametrize("name,size", [(STORED, (3, 1, 3)), ("search_d4_k1_T3_seed0_i11", (4, 1, 3))])
def test_stored_spurious_minimum_is_recertified_by_interval_arithmetic(name, size):
    """Appendix D.2: each stored point is a strict local minimum with G > 0, proven by the interval certificate
    from the stored instance (it recomputes G itself)."""
    from landscape.certify_interval import certify_interval
    from landscape.store import load_instance

    problem, U, data = load_instance(name)
    assert (problem.d, problem.k, problem.T) == size
    cert = certify_interval(problem, U)
    assert cert.verdict == "certified-minimum" and cert.minimum_kind == "spurious", cert.reason
    assert cert.loss[0] > 0.0
    lower = cert.margins.get("loss_lower_on_box")
    assert lower is not None and lower > 0.0
    # and the search's own classification of the point agrees
    c = classify_point(problem, U)
    assert c.label == "spurious_min" and c.inertia == (0, 0, problem.n_reduced)


@pytest.mark.slow
def test_stored_spurious_minimum_is_recertified_by_the_eps_net():
    from landscape.certify_epsnet import certify_epsnet
    from landscape.store import load_instance

    problem, U, _ = load_instance(STORED)
    cert = certify_epsnet(problem, U)
    assert cert.verdict == "certified-minimum" and cert.minimum_kind == "spurious", cert.reason


def test_search_rediscovers_the_stored_spurious_minimum():
    """Random starts on the stored instance reach a spurious minimum on the orbit of the stored point."""
    from landscape.store import load_instance

    problem, U, data = load_instance(STORED)
    solves, _ = search_instance(problem, starts=64, seed=0, instance=data["found_by"]["instance"], gd_runs=0)
    points, _ = dedup(problem, solves)
    spurious = [c for c in points if c.classification.label == "spurious_min"]
    assert any(same_orbit(c.point, U) for c in spurious)


def test_load_instance_refuses_bad_files(tmp_path):
    from landscape.store import load_instance

    with pytest.raises(ProblemError, match="neither a file nor a stored instance"):
        load_instance("no_such_instance")
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"point": [[[1.0]]]}))
    with pytest.raises(ProblemError, match="keys 'problem' and 'point'"):
        load_instance(str(bad))
    p = Problem.random(3, 1, 3, seed=0)
    bad.write_text(json.dumps({"problem": p.to_dict(), "point": [[1.0, 2.0]]}))
    with pytest.raises(ProblemError, match="point must have shape"):
        load_instance(str(bad))


@settings(max_examples=15, deadline=None)
@given(problems(max_d=5, max_k=2, min_T=2, max_T=2), seeds)
def test_T2_boost_directions_leave_G_unchanged(p, seed):
    """At T = 2, G depends only on U_1 U_1^T - U_2 U_2^T: moving along exp(t M), M = [[0, B], [B^T, 0]] in the Lie
    algebra of O(k, k), leaves G unchanged to second order in t, at any point (not only critical ones)."""
    from scipy.linalg import expm

    from theory.symmetry import boost_tangent as hyperbolic_tangent

    rng = np.random.default_rng(seed)
    U = rng.standard_normal((2, p.d, p.k))
    B = rng.standard_normal((p.k, p.k))
    k = p.k
    M = np.block([[np.zeros((k, k)), B], [B.T, np.zeros((k, k))]])
    for t in (1e-2, 0.3):
        V = np.concatenate([U[0], U[1]], axis=1) @ expm(t * M)
        moved = np.stack([V[:, :k], V[:, k:]])
        assert reduced_loss(moved, p) == pytest.approx(reduced_loss(U, p), rel=1e-9, abs=1e-9)
    # the tangent of that curve is the span of hyperbolic_tangent, and the gradient is orthogonal to it
    Z = hyperbolic_tangent(U)
    tangent = np.stack([U[1] @ B.T, U[0] @ B]).ravel()
    coef, *_ = np.linalg.lstsq(Z, tangent, rcond=None)
    np.testing.assert_allclose(Z @ coef, tangent, atol=1e-10 * max(1.0, np.abs(tangent).max()))
    g = reduced_grad(U, p)
    assert np.abs(Z.T @ g).max() <= 1e-9 * max(1.0, np.abs(g).max() * np.abs(Z).max())


def test_T2_global_minimum_is_nondegenerate_on_the_O_kk_quotient():
    """With Remark 3.1 ((T + 1) k <= d) the T = 2 global minimum U* has no zero eigenvalue left once the O(k, k)
    orbit is quotiented out, while theory's O(k)^T quotient leaves k^2 of them (the D.1 family)."""
    from theory.symmetry import restricted_inertia

    p = Problem.random(6, 2, 2, seed=3)
    c = classify_point(p, p.U_star)
    assert c.label == "global_min" and c.symmetry == "O(k,k)" and c.inertia[:2] == (0, 0)
    plain = restricted_inertia(reduced_hess(p.U_star, p), p.U_star)
    assert plain.zero == 4 and plain.negative == 0


def test_T2_global_minima_merge_into_one():
    """At T = 2 the global minima form a continuum (Appendix D.1); dedup merges them by U_1 U_1^T - U_2 U_2^T."""
    p = Problem.random(3, 1, 2, seed=0)
    solves, _ = search_instance(p, starts=32, seed=0, gd_runs=0)
    glob = [r for r in solves if r.converged and reduced_loss(r.point, p) < 1e-20]
    P = [orbit_invariants(r.point) for r in glob]
    assert max(np.abs(a - P[0]).max() for a in P) > 1e-3  # genuinely different points on the family
    points, _ = dedup(p, solves)
    labels = [c.classification.label for c in points]
    assert labels.count("global_min") == 1
    hits = points[labels.index("global_min")].hits
    assert hits.get("min", 0) + hits.get("newton", 0) >= len(glob)
