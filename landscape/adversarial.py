"""Adversarial search over ground truths ``U*`` for instances of G with spurious local minima (Appendix D.2).

Two outer searches, both seeded from the run's seed and the chain index through ``numpy.random.SeedSequence``:

- random sampling: round 0 of every chain is an instance with i.i.d. N(0, 1) entries (the paper's Section 4.1);
- a hill-climb on a spuriousness score: each later round perturbs the best ``U*`` so far,
  ``U*' = U*_best + sigma * rms(U*_best) * Z`` with ``Z`` i.i.d. N(0, 1), searches it, and keeps it when its score is
  higher; ``sigma`` grows by 1.5 after an accepted round and shrinks by 0.7 after a rejected one (a 1/5-success-
  style step control, Rechenberg 1973). The chain stops at the first instance with a spurious minimum.

Score of a searched instance (:func:`spuriousness`): ``inf`` when it has a spurious minimum; otherwise
``-log10(|lam_min| / max |lam|)`` over its index-1 saddles with ``G > 0`` (the Hessian on the orbit's quotient with
exactly one negative eigenvalue ``lam_min``), and 0 when there is none. Why this measures nearness: as ``U*`` moves,
a saddle becomes a local minimum exactly when its only negative eigenvalue crosses zero (an exchange of stability;
generic here because G has the sign / ``U_t = 0`` symmetries that make pitchfork and transcritical bifurcations
typical), so an index-1 saddle with a relatively tiny negative curvature is a small perturbation of ``U*`` away
from a spurious minimum, and climbing the score walks towards that crossing.

Only ``U*`` moves; ``A*`` does not enter G (``W_t - mean_s W_s`` does not depend on it).
"""

from __future__ import annotations

import math
import time

import numpy as np

from theory.problem import Problem, ProblemError

from .search import instance_seed, search_record

__all__ = ["spuriousness", "hill_climb_record", "DEFAULTS"]

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


def hill_climb_record(spec: dict) -> dict:
    """Run one chain (spec of :func:`landscape.fanout.run_spec` with ``spec["adversarial"]`` holding ``rounds`` and
    ``sigma``) and return the record of its best instance with an ``adversarial`` entry: the score, the round it
    came from and the history (round, score, accepted, sigma)."""
    opts = {**DEFAULTS, **(spec.get("adversarial") or {})}
    rounds, sigma = opts["rounds"], float(opts["sigma"])
    if isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 0:
        raise ProblemError(f"adversarial rounds must be an integer >= 0, got {rounds!r}")
    if not (np.isfinite(sigma) and sigma > 0):
        raise ProblemError(f"adversarial sigma must be a finite number > 0, got {sigma!r}")
    i, seed = int(spec["index"]), int(spec["seed"])
    t0 = time.perf_counter()

    def evaluate(problem):
        return search_record(problem, starts=spec["starts"], seed=seed, instance=i, scales=spec["scales"],
                             gd_runs=spec["gd_runs"])

    best_p = Problem.random(spec["d"], spec["k"], spec["T"], seed=instance_seed(seed, i))
    best = evaluate(best_p)
    best_score, best_round = spuriousness(best), 0
    history = [{"round": 0, "score": _json_score(best_score), "accepted": True, "sigma": sigma}]
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
        history.append({"round": rnd, "score": _json_score(score), "accepted": accepted, "sigma": sigma})
        if accepted:
            best_p, best, best_score, best_round = cand_p, cand, score, rnd
            sigma *= 1.5
        else:
            sigma *= 0.7
    best["adversarial"] = {"score": _json_score(best_score), "round": best_round, "history": history}
    best["seconds"] = time.perf_counter() - t0
    return best


def _json_score(score: float):
    """``inf`` as the string ``"inf"`` (strict JSON has no infinity)."""
    return "inf" if math.isinf(score) else float(score)
