"""The census of spurious minima: over a grid of sizes (d, k, T), how often an instance with i.i.d. N(0, 1) ground
truth has a certified spurious local minimum of the reduced loss G, and how often gradient descent ends in one.

The paper (Section 3.2.2, Appendix D.2) shows that for T >= 3 adversarial ground truths give spurious local minima
and says they are "almost never found in practice"; the census measures both halves of that sentence.

Per cell ``(d, k, T)`` of the grid and per instance ``i`` (``Problem.random(d, k, T, seed=census_seed(seed, d, k,
T, i))``):

1. ``starts`` Newton-type solves and ``gd_runs`` + ``figure1_runs`` gradient-descent runs
   (:func:`landscape.multisearch.search_instances`, many instances in one lock-step batch);
2. the converged end points merged into orbits and classified (:func:`landscape.classify.dedup`);
3. every spurious-minimum candidate certified by interval arithmetic
   (:func:`landscape.certify_interval.certify_interval`) and, for ``T d k <= epsnet_max_n``, by the eps-net of the
   paper's Appendix D.2 (:func:`landscape.certify_epsnet.certify_epsnet`, capped by a number of net points so that
   the verdict does not depend on the machine's speed); a candidate is *certified* when either proves a strict
   local minimum with G > 0;
4. each gradient-descent run labelled by where it ended: a certified spurious minimum, an uncertified spurious
   candidate, a global minimum, a saddle, a degenerate point, or ``unconverged`` (nowhere within its steps).

The result is one JSON record per instance (:func:`instance_record`), a pure function of the cell, the instance
index and the options, so serial, process and Dask runs give the same records and a run resumes per instance.
Which cells run with how many instances is decided up front by :func:`plan` from a cost model and a budget.

>>> cells = parse_grid("d=3,4;k=1;T=3")
>>> cells
[(3, 1, 3), (4, 1, 3)]
>>> [row["instances"] for row in plan(cells, CensusOptions(instances=10, budget=100.0))]
[10, 10]
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field

import numpy as np
from threadpoolctl import threadpool_limits

from theory.cli_contract import require_int
from theory.problem import Problem, ProblemError

__all__ = ["DEFAULT_GRID", "CensusOptions", "parse_grid", "census_seed", "instance_cost", "plan", "cell_config",
           "chunk_specs", "run_chunk", "instance_record", "OUTCOMES"]

#: the default grid: d in {3, 4, 5, 6, 8, 10, 16}, k in {1, 2}, T in {3, 4, 5, 8}
DEFAULT_GRID = {"d": (3, 4, 5, 6, 8, 10, 16), "k": (1, 2), "T": (3, 4, 5, 8)}

#: where a gradient-descent run ended (the label of its end point)
OUTCOMES = ("spurious_certified", "spurious_uncertified", "global_min", "saddle", "degenerate", "unconverged")

# Cost model of one instance in core-seconds (one process, BLAS on one thread, chunks of the planned size):
# per Newton-type solve (_A[k] + _B[k] n^2 + _C n^3) / 64 with n = T d k (k >= 2 costs more: the orbit keeps the
# Hessian singular, so more iterations take the eigen-decomposition path), per gradient-descent run
# _G0 + _G2 n^2. Fitted to `python benchmarks/landscape_census_speed.py --cost-model` on a 2-core machine at load
# ~2.5; it only plans (which cells run, with how many instances), never enters a record, so a faster or slower
# machine gives the same records.
_A, _B, _C = {1: 0.05, 2: 0.2}, {1: 1.8e-4, 2: 3.4e-4}, 3e-7
_G0, _G2 = 0.0125, 2.5e-6


@dataclass(frozen=True)
class CensusOptions:
    """Options of a census (validated up front).

    instances : instances per cell where the budget allows (the plan may give a cell fewer, or skip it)
    starts : Newton-type solves per instance (half ``"newton"``, half ``"min"``, as in ``search``)
    seed : seed of everything random
    scales : start scales, relative to ``r = sqrt(max_t ||W_t - mean W||_2)``
    gd_runs : plain gradient-descent runs on G per instance from small starts (``gd_scale * r``)
    figure1_runs : gradient-descent runs on the full loss L per instance from Figure 1's initialisation
    budget : planned core-seconds for the whole grid (cost model above)
    min_instances : a cell that the budget gives fewer instances than this is skipped (and reported)
    chunk_seconds : planned core-seconds of one work item (a chunk of instances of one cell solved in lock-step)
    epsnet_max_n : the eps-net certificate is run only where ``T d k <= epsnet_max_n`` (its net grows like
        ``(C / eps)^(n - 1)``)
    epsnet_max_points : net points after which the eps-net gives up (inconclusive)
    """

    instances: int = 500
    starts: int = 64
    seed: int = 0
    scales: tuple = (0.1, 0.5, 1.0, 2.0)
    gd_runs: int = 2
    figure1_runs: int = 2
    gd_scale: float = 1e-3
    budget: float = 6000.0
    min_instances: int = 20
    chunk_seconds: float = 20.0
    epsnet_max_n: int = 12
    epsnet_max_points: int = 200_000
    solver: dict = field(default_factory=dict)

    def __post_init__(self):
        for name in ("instances", "starts", "min_instances", "epsnet_max_points"):
            require_int(name, getattr(self, name))
        for name in ("seed", "gd_runs", "figure1_runs", "epsnet_max_n"):
            require_int(name, getattr(self, name), minimum=0)
        for name in ("budget", "chunk_seconds", "gd_scale"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
                raise ProblemError(f"{name} must be a finite number > 0, got {v!r}")
        sc = tuple(float(s) for s in self.scales)
        if not sc or any(not (math.isfinite(s) and s > 0) for s in sc):
            raise ProblemError(f"scales must be a non-empty list of finite numbers > 0, got {list(self.scales)}")
        object.__setattr__(self, "scales", sc)
        from .search import SolverOptions

        SolverOptions(**self.solver)  # refuses unknown or invalid solver options


def parse_grid(text: str) -> list[tuple[int, int, int]]:
    """Cells ``(d, k, T)`` of a grid written ``"d=3,4,5;k=1,2;T=3,4"`` (``"default"``: :data:`DEFAULT_GRID`; a
    missing key takes its default values), in the order d, then k, then T.

    Raises
    ------
    ProblemError : malformed text, a key other than d, k, T or given twice, a value that is not a positive integer,
        k > d, or T < 2 (the census is about T >= 2; Theorem 3.4 already settles T = 2)
    """
    values = {key: list(v) for key, v in DEFAULT_GRID.items()}
    text = text.strip()
    if text != "default":
        seen = set()
        for part in filter(None, (p.strip() for p in text.split(";"))):
            key, eq, rhs = part.partition("=")
            key = key.strip()
            if not eq or key not in values:
                raise ProblemError(f"grid part {part!r} must look like d=3,4 (keys d, k, T), in {text!r}")
            if key in seen:
                raise ProblemError(f"grid gives {key} twice in {text!r}")
            seen.add(key)
            try:
                vals = [int(v) for v in rhs.split(",") if v.strip()]
            except ValueError:
                raise ProblemError(f"grid values of {key} must be integers, got {rhs!r}") from None
            if not vals or any(v <= 0 for v in vals) or len(set(vals)) != len(vals):
                raise ProblemError(f"grid values of {key} must be distinct positive integers, got {rhs!r}")
            values[key] = sorted(vals)
        if not seen:
            raise ProblemError(f"grid {text!r} is empty; write e.g. d=3,4;k=1;T=3 or default")
    if min(values["T"]) < 2:
        raise ProblemError(f"grid T values must be >= 2, got {values['T']}")
    cells = [(d, k, T) for d in values["d"] for k in values["k"] for T in values["T"] if k <= d]
    if not cells:
        raise ProblemError(f"grid {text!r} has no cell with k <= d")
    return cells


def census_seed(seed: int, d: int, k: int, T: int, instance: int) -> int:
    """Seed of the ground truth of instance ``instance`` of cell ``(d, k, T)``: ``SeedSequence(seed, spawn_key=(2,
    d, k, T, instance))`` as one 63-bit integer (cells draw independent instances)."""
    ss = np.random.SeedSequence(int(seed), spawn_key=(2, int(d), int(k), int(T), int(instance)))
    return int(ss.generate_state(1, dtype=np.uint64)[0] >> np.uint64(1))


def _start_seed(seed: int, d: int, k: int, T: int) -> int:
    """Seed of the starts of a cell (``SeedSequence(seed, spawn_key=(3, d, k, T))``; instance i takes its starts
    from :func:`landscape.multisearch.start_points` ``(this, i, ...)``)."""
    ss = np.random.SeedSequence(int(seed), spawn_key=(3, int(d), int(k), int(T)))
    return int(ss.generate_state(1, dtype=np.uint64)[0] >> np.uint64(1))


def instance_cost(d: int, k: int, T: int, opts: CensusOptions) -> float:
    """Planned core-seconds of one instance (the cost model in this module's source)."""
    n = T * d * k
    per_solve = (_A[min(k, 2)] + _B[min(k, 2)] * n ** 2 + _C * n ** 3) / 64.0
    return opts.starts * per_solve + (opts.gd_runs + opts.figure1_runs) * (_G0 + _G2 * n ** 2)


def _level(costs: list[float], opts: CensusOptions) -> float:
    """The largest per-cell allowance L (core-seconds) with ``sum_c min(N, floor(L / cost_c)) cost_c <= budget``
    (bisection; the total is non-decreasing in L)."""
    def total(L):
        return sum(min(opts.instances, math.floor(L / c)) * c for c in costs)
    lo, hi = 0.0, opts.instances * max(costs)
    if total(hi) <= opts.budget:
        return hi
    for _ in range(100):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if total(mid) <= opts.budget else (lo, mid)
    return lo


def plan(cells, opts: CensusOptions) -> list[dict]:
    """How many instances each cell gets (water-filling): every cell may spend up to the same allowance L of
    core-seconds, ``instances = min(opts.instances, floor(L / cost))``, with L the largest level the budget pays
    for. While the most expensive cell would get fewer than ``opts.min_instances`` it is skipped and L recomputed
    without it, so a cell is never skipped while a more expensive one runs. Returns one dict per cell (input
    order): ``d, k, T, n, instances, seconds_per_instance, chunk`` (instances per work item), ``skipped`` (None,
    or the reason)."""
    costs = {c: instance_cost(*c, opts) for c in cells}
    least = min(opts.min_instances, opts.instances)
    active, skipped = sorted(cells, key=lambda c: (costs[c], c)), {}
    while active:
        L = _level([costs[c] for c in active], opts)
        worst = active[-1]
        if math.floor(L / costs[worst]) >= least:
            break
        skipped[worst] = (f"too slow for the budget: about {costs[worst]:.3g} core-s per instance; the budget's "
                          f"allowance of {L:.0f} core-s per cell holds {math.floor(L / costs[worst])} < {least} "
                          "instances")
        active.pop()
    L = _level([costs[c] for c in active], opts) if active else 0.0
    rows = []
    for c in cells:
        d, k, T = c
        n_inst = 0 if c in skipped else min(opts.instances, math.floor(L / costs[c]))
        rows.append({"d": d, "k": k, "T": T, "n": T * d * k, "instances": n_inst,
                     "seconds_per_instance": costs[c], "chunk": max(1, min(64, int(opts.chunk_seconds // costs[c]))),
                     "skipped": skipped.get(c)})
    return rows


def cell_config(d: int, k: int, T: int, opts: CensusOptions) -> dict:
    """The options that make the records of a cell (stored in every record, compared on resume)."""
    o = asdict(opts)
    keep = ("seed", "starts", "scales", "gd_runs", "figure1_runs", "gd_scale", "epsnet_max_n", "epsnet_max_points",
            "solver")
    return {"census": 1, "d": d, "k": k, "T": T, **{key: (list(o[key]) if key == "scales" else o[key])
                                                  for key in keep}}


def chunk_specs(rows: list[dict], done: dict, opts: CensusOptions) -> list[dict]:
    """Work items: for each planned cell, its unfinished instance indices (``done[(d, k, T)]`` holds the finished
    ones) cut into chunks of the planned size. Every cell advances at the same pace: chunks are ordered by how far
    into their cell's planned instances they start (the most expensive first among equals), so a census stopped
    early holds in each cell about the same share of its planned instances, always the lowest indices."""
    specs = []
    for row in rows:
        cell = (row["d"], row["k"], row["T"])
        todo = [i for i in range(row["instances"]) if i not in done.get(cell, set())]
        for a in range(0, len(todo), row["chunk"]):
            part = todo[a:a + row["chunk"]]
            specs.append({"config": cell_config(*cell, opts), "indices": part,
                          "cost": len(part) * row["seconds_per_instance"], "_at": part[0] / row["instances"]})
    specs.sort(key=lambda s: (s["_at"], -s["cost"]))
    for s in specs:
        del s["_at"]
    return specs


def run_chunk(spec: dict) -> list[dict]:
    """The records of one work item (:func:`chunk_specs`), its instances solved in one lock-step batch; BLAS and
    torch on one thread while it runs. A pure function of the spec."""
    from .multisearch import search_instances
    from .search import SolverOptions

    cfg = spec["config"]
    d, k, T, seed = cfg["d"], cfg["k"], cfg["T"], cfg["seed"]
    with threadpool_limits(limits=1):
        t0 = time.perf_counter()
        problems = [Problem.random(d, k, T, seed=census_seed(seed, d, k, T, i)) for i in spec["indices"]]
        opts = SolverOptions(**cfg["solver"])
        found = search_instances(problems, spec["indices"], starts=cfg["starts"], seed=_start_seed(seed, d, k, T),
                                 scales=tuple(cfg["scales"]), gd_runs=cfg["gd_runs"], gd_scale=cfg["gd_scale"],
                                 figure1_runs=cfg["figure1_runs"], options=opts)
        per = (time.perf_counter() - t0) / max(1, len(problems))
        return [instance_record(p, i, *res, config=cfg, search_seconds=per)
                for p, i, res in zip(problems, spec["indices"], found)]


def _certify(problem: Problem, point: np.ndarray, cfg: dict) -> dict:
    """Interval certificate of one spurious-minimum candidate, and the eps-net where ``T d k <= epsnet_max_n``."""
    from .certify_epsnet import certify_epsnet
    from .certify_interval import certify_interval

    out = {"krawczyk": certify_interval(problem, point).to_dict(), "epsnet": None}
    if problem.n_reduced <= cfg["epsnet_max_n"]:
        # capped by net points, not time, so that the verdict is the same on any machine
        out["epsnet"] = certify_epsnet(problem, point, max_points=cfg["epsnet_max_points"],
                                       time_limit=1e9).to_dict()
    out["certified"] = any(c is not None and c["verdict"] == "certified-minimum" and c["minimum_kind"] == "spurious"
                           for c in (out["krawczyk"], out["epsnet"]))
    return out


def instance_record(problem: Problem, index: int, solves, gd, figure1, *, config: dict,
                    search_seconds: float = float("nan")) -> dict:
    """The JSON-ready record of one instance from its solves (:func:`landscape.multisearch.search_instances`).

    Keys: ``index``, ``config`` (:func:`cell_config`), ``problem`` (:meth:`theory.problem.Problem.to_dict`, so a
    certificate can be re-checked from the record), ``solves`` (count per status of the Newton-type solves),
    ``classes`` (distinct critical orbits per class, :mod:`landscape.classify`), ``critical_points`` (the
    spurious-minimum candidates only, as :meth:`landscape.classify.CriticalPoint.to_dict` plus ``krawczyk``,
    ``epsnet`` (certificate dicts, :meth:`landscape.certificate.Certificate.to_dict`) and ``certified``; so
    ``python -m landscape certify`` reads a census file too), ``gd`` (per descent run: ``init`` ``"small"`` or
    ``"figure1"``, ``outcome`` (one of :data:`OUTCOMES`), ``class`` and ``near`` (as in
    :func:`landscape.search.search_record`: the class of the end point, or ``"unconverged"``; the class of the
    critical point its end point polishes to, or ``None``), ``status``, ``loss``, ``point_index`` (into all distinct
    points, -1 if none), ``start``, ``gd_iterations``, ``gd_loss``, ``moved``), ``seconds`` (search and certify,
    wall clock; the only keys that differ between two runs).
    """
    from .classify import dedup
    from .result import CLASSES
    from .search import descent_arrived

    points, which = dedup(problem, list(solves) + list(gd) + list(figure1))
    t0 = time.perf_counter()
    candidates, certified = [], {}
    for i, p in enumerate(points):
        if p.classification.label == "spurious_min":
            cert = _certify(problem, np.asarray(p.point), config)
            certified[i] = cert["certified"]
            candidates.append({**p.to_dict(), "point_index": i, **cert})
    cert_seconds = time.perf_counter() - t0
    steps = config["solver"].get("gd_steps", 20000)
    rows = []
    for r, w, init in zip(list(gd) + list(figure1), which[len(solves):],
                          ["small"] * len(gd) + ["figure1"] * len(figure1)):
        label = points[w].classification.label if w >= 0 else None
        if label is None or not descent_arrived(r, steps):
            outcome = "unconverged"
        elif label == "spurious_min":
            outcome = "spurious_certified" if certified[w] else "spurious_uncertified"
        else:
            outcome = label
        # "class" and "near" as in search records (landscape.search.search_record), so that the readers of results
        # files (store.check_record, `python -m landscape summary`, `certify`) read a census cell file too
        rows.append({"init": init, "outcome": outcome, "class": "unconverged" if outcome == "unconverged" else label,
                     "near": label, "status": r.status, "loss": r.loss, "point_index": int(w), "start": r.seed,
                     **r.extra})
    status_counts: dict[str, int] = {}
    for r in solves:
        status_counts[r.status] = status_counts.get(r.status, 0) + 1
    return {"index": int(index), "config": config, "problem": problem.to_dict(), "solves": status_counts,
            "classes": {c: sum(p.classification.label == c for p in points) for c in CLASSES},
            "critical_points": candidates, "gd": rows,
            "seconds": {"search": search_seconds, "certify": cert_seconds}}
