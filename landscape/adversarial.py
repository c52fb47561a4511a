"""Adversarial search over ground truths ``U*`` for instances of G with spurious local minima (Appendix D.2).

Two outer searches, both seeded from the run's seed and the chain index through ``numpy.random.SeedSequence``:

- random sampling from structured proposals: round 0 of chain ``i`` draws ``U*`` from :data:`SAMPLERS`
  ``[i % 3]``: ``"iid"`` (i.i.d. N(0, 1), the paper's Section 4.1), ``"norm_disparity"`` (each ``U*_t`` scaled by
  ``exp(Z_t)``, ``Z_t ~ N(0, 1)``) or ``"low_dim"`` (the columns of all ``U*_t`` pulled towards a random
  ``min(d, T k)``-dimensional subspace: components outside it shrunk by 0.05, so the columns are distributed
  nearly as if drawn in dimension ``T k`` and embedded). Why: G is unchanged when ``U`` and ``U*`` are rotated
  together from the left, so an instance matters only through the Gram matrix of the columns of ``U*``; i.i.d.
  columns in large d are nearly orthogonal with nearly equal norms (Gram ~ d I), while spurious minima were common
  where the Gram matrix is far from that (29 of 200 instances at (3, 1, 3)); a strict local minimum survives a small
  perturbation of ``U*`` (implicit function theorem at a non-degenerate critical point), so instances near that
  regime inherit them. Measured at (6, 1, 3), 32 starts, 60 instances each: iid 1, norm_disparity 4, low_dim 6
  instances with a spurious minimum;
- a hill-climb on a spuriousness score: each later round perturbs the best ``U*`` so far,
  ``U*' = U*_best + sigma * rms(U*_best) * Z`` with ``Z`` i.i.d. N(0, 1), searches it, and keeps it when its score is
  higher; ``sigma`` grows by 1.5 after an accepted round and shrinks by 0.7 after a rejected one (a 1/5-success-
  style step control, Rechenberg 1973). The chain stops at the first instance with a spurious minimum.

Score of a searched instance (:func:`spuriousness`): ``inf`` when it has a spurious minimum (``null`` in the results
file, which is strict JSON; :func:`hill_climb_record`); otherwise ``-log10(|lam_min| / max |lam|)`` over its index-1
saddles with ``G > 0`` (the Hessian on the orbit's quotient with exactly one negative eigenvalue ``lam_min``), and 0
when there is none. Why this measures nearness: as ``U*`` moves, a saddle becomes a local minimum exactly when its only
negative eigenvalue crosses zero (an exchange of stability; generic here because G has the sign / ``U_t = 0``
symmetries that make pitchfork and transcritical bifurcations typical), so an index-1 saddle with a relatively tiny
negative curvature is a small perturbation of ``U*`` away from a spurious minimum, and climbing the score walks
towards that crossing.

Only ``U*`` moves; ``A*`` does not enter G (``W_t - mean_s W_s`` does not depend on it).
"""

from __future__ import annotations

import math
import time

import numpy as np

from theory.cli_contract import require_int
from theory.problem import Problem, ProblemError
from theory.strict_json import json_ready

from .search import instance_seed, search_record

__all__ = ["spuriousness", "hill_climb_record", "initial_problem", "DEFAULTS", "SAMPLERS"]

#: Proposal families of round 0, chain ``i`` uses ``SAMPLERS[i % len(SAMPLERS)]``.
SAMPLERS = ("iid", "norm_disparity", "low_dim")

#: Options of one hill-climb chain (``--adversarial`` on the command line).
DEFAULTS = {"rounds": 8, "sigma": 0.3}


def spuriousness(record: dict) -> float:
    """Score of a searched instance (module docstring): ``inf`` with a spurious minimum, else >= 0."""
    best = 0.0
    for c in record["critical_points"]:
        if c["class"] == "spurious_min":
            return math.inf
        if c["class"] == "saddle" and c["inertia"][0] == 1:
            lam = np.abs(np.asarray(c["eigenvalues"], dtype=float))
            ratio = abs(c["min_eigenvalue"]) / max(float(lam.max()), 1e-300)
            best = max(best, -math.log10(max(ratio, 1e-16)))
    return best


def initial_problem(d: int, k: int, T: int, seed: int, chain: int) -> tuple[Problem, str]:
    """Round-0 instance of chain ``chain`` and the name of its sampler (module docstring); ``A*`` i.i.d. N(0, 1)."""
    sampler = SAMPLERS[chain % len(SAMPLERS)]
    base = Problem.random(d, k, T, seed=instance_seed(seed, chain))
    if sampler == "iid":
        return base, sampler
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(chain, 3)))
    U = base.U_star.copy()
    if sampler == "norm_disparity":
        U *= np.exp(rng.standard_normal((T, 1, 1)))
    else:
        m = min(d, T * k)
        basis, _ = np.linalg.qr(rng.standard_normal((d, d)))
        inside, outside = basis[:, :m], basis[:, m:]
        U = inside @ (inside.T @ U) + 0.05 * (outside @ (outside.T @ U))
    return Problem(A_star=base.A_star, U_star=U, U_test=base.U_test, seed=base.seed), sampler


def hill_climb_record(spec: dict) -> dict:
    """Run one chain (spec of :func:`landscape.fanout.run_spec` with ``spec["adversarial"]`` holding ``rounds`` and
    ``sigma``) and return the record of its best instance with an ``adversarial`` entry: the score, the round it
    came from, the sampler of round 0 and the history (round, score, accepted, sigma).

    Every ``score`` is held as the results file holds it (strict JSON, :mod:`theory.strict_json`): a number >= 0,
    or ``None`` (``null``) for the score +inf, i.e. the instance has a spurious minimum (:func:`spuriousness`); the
    score is never NaN, so ``null`` has no other meaning here.

    Raises
    ------
    ProblemError
        ``adversarial`` rounds not an integer >= 0, or sigma not a finite number > 0; or a bad instance (from
        :class:`theory.problem.Problem`).
    """
    opts = {**DEFAULTS, **(spec.get("adversarial") or {})}
    rounds, sigma = opts["rounds"], float(opts["sigma"])
    require_int("adversarial rounds", rounds, minimum=0)
    if not (np.isfinite(sigma) and sigma > 0):
        raise ProblemError(f"adversarial sigma must be a finite number > 0, got {sigma!r}")
    i, seed = int(spec["index"]), int(spec["seed"])
    t0 = time.perf_counter()

    def evaluate(problem):
        return search_record(problem, starts=spec["starts"], seed=seed, instance=i, scales=spec["scales"],
                             gd_runs=spec["gd_runs"])

    best_p, sampler = initial_problem(spec["d"], spec["k"], spec["T"], seed, i)
    best = evaluate(best_p)
    best_score, best_round = spuriousness(best), 0
    history = [{"round": 0, "score": json_ready(best_score), "accepted": True, "sigma": sigma}]
    for rnd in range(1, rounds + 1):
        if math.isinf(best_score):
            break
        rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(i, 2, rnd)))
        U = best_p.U_star
        rms = float(np.sqrt(np.mean(U * U)))
        cand_p = Problem(A_star=best_p.A_star, U_star=U + sigma * rms * rng.standard_normal(U.shape),
                         U_test=best_p.U_test, seed=best_p.seed)
        cand = evaluate(cand_p)
        score = spuriousness(cand)
        accepted = score > best_score
        history.append({"round": rnd, "score": json_ready(score), "accepted": accepted, "sigma": sigma})
        if accepted:
            best_p, best, best_score, best_round = cand_p, cand, score, rnd
            sigma *= 1.5
        else:
            sigma *= 0.7
    best["adversarial"] = {"score": json_ready(best_score), "round": best_round, "sampler": sampler,
                           "history": history}
    best["seconds"] = time.perf_counter() - t0
    return best

