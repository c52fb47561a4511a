"""Converged critical-point solves per second of ``landscape.search`` at (d, k, T) = (3, 1, 3) and (10, 2, 3).

    python benchmarks/landscape_search_speed.py [--json] [--out FILE] [--workers 2]

Three ways, timed in the same run, BLAS pinned to one thread per process:
``one_at_a_time`` (baseline: ``solve_critical`` per start, one process), ``batched`` (``search_instance``: the
starts of an instance iterated in lock-step with stacked Hessians and ``numpy.linalg.eigh``, one process) and
``batched_procs`` (the same over ``--workers`` worker processes, started and warmed before the clock starts).
Target: at least 200 converged solves per second at (3, 1, 3) on 2 cores.
"""

from __future__ import annotations

import concurrent.futures as cf
import json
import multiprocessing
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import environment, pinned_threads, write_json  # noqa: E402

from theory.cli_contract import OneLineParser, check_output_file, positive_int, run_command  # noqa: E402

SEED = 0
CASES = [{"d": 3, "k": 1, "T": 3, "instances": 16, "starts": 64}, {"d": 10, "k": 2, "T": 3, "instances": 4,
                                                                    "starts": 32}]


def _instance(case: dict, i: int):
    from landscape.search import instance_seed
    from theory.problem import Problem

    return Problem.random(case["d"], case["k"], case["T"], seed=instance_seed(SEED, i))


def _batched(args) -> tuple[int, int]:
    """(solves, converged) of instance i with batched solves (run inside a pinned worker)."""
    from threadpoolctl import threadpool_limits

    from landscape.search import search_instance

    case, i = args
    with threadpool_limits(limits=1):
        solves, _ = search_instance(_instance(case, i), starts=case["starts"], seed=SEED, instance=i, gd_runs=0)
    return len(solves), sum(r.converged for r in solves)


def _one_at_a_time(case: dict, i: int) -> tuple[int, int]:
    from landscape.search import problem_scale, random_start, solve_critical, start_seed

    p = _instance(case, i)
    r = problem_scale(p)
    scales, methods = (0.1, 0.5, 1.0, 2.0), ("newton", "min")
    conv = 0
    for j in range(case["starts"]):
        sd = start_seed(SEED, i, j)
        sc = scales[j % 4] * r
        res = solve_critical(p, random_start(p, sd, sc), method=methods[(j // 4) % 2], seed=sd, scale=sc)
        conv += res.converged
    return case["starts"], conv


def _warm(_):
    import landscape.search  # noqa: F401  (imports numpy, scipy, theory in the worker before timing)

    return os.getpid()


def measure(case: dict, workers: int) -> list[dict]:
    rows = []
    n = case["instances"]
    base_n = max(1, n // 4)  # the baseline is slow: time a quarter of the instances
    t0 = time.perf_counter()
    out = [_one_at_a_time(case, i) for i in range(base_n)]
    rows.append(_row(case, "one_at_a_time", 1, out, time.perf_counter() - t0))
    t0 = time.perf_counter()
    out = [_batched((case, i)) for i in range(n)]
    rows.append(_row(case, "batched", 1, out, time.perf_counter() - t0))
    ctx = multiprocessing.get_context("spawn")
    with cf.ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
        list(pool.map(_warm, range(4 * workers)))
        t0 = time.perf_counter()
        out = list(pool.map(_batched, [(case, i) for i in range(n)]))
        rows.append(_row(case, "batched_procs", workers, out, time.perf_counter() - t0))
    return rows


def _row(case, mode, procs, out, seconds):
    solves, conv = sum(o[0] for o in out), sum(o[1] for o in out)
    return {"d": case["d"], "k": case["k"], "T": case["T"], "mode": mode, "processes": procs, "solves": solves,
            "converged": conv, "seconds": seconds, "converged_per_s": conv / seconds}


def main(argv=None) -> int:
    """Exit status 0, 2 on bad input (before any timing), 130 on Ctrl-C (theory.cli_contract)."""
    ap = OneLineParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", action="store_true", help="print JSON instead of a table")
    ap.add_argument("--out", help="also write the JSON to this file")
    ap.add_argument("--workers", type=positive_int, default=2, help="worker processes of batched_procs (default 2)")
    return run_command(_run, ap.parse_args(argv))


def _run(args) -> int:
    if args.out is not None:
        check_output_file("--out", args.out)
    with pinned_threads(1) as threads:
        rows = [row for case in CASES for row in measure(case, args.workers)]
    ratios = []
    for case in CASES:
        by = {r["mode"]: r for r in rows if (r["d"], r["k"], r["T"]) == (case["d"], case["k"], case["T"])}
        ratios.append({"d": case["d"], "k": case["k"], "T": case["T"],
                       "batched_over_one_at_a_time": by["batched"]["converged_per_s"]
                       / by["one_at_a_time"]["converged_per_s"],
                       "procs_over_batched": by["batched_procs"]["converged_per_s"]
                       / by["batched"]["converged_per_s"]})
    target = next(r for r in rows if (r["d"], r["k"], r["T"], r["mode"]) == (3, 1, 3, "batched_procs"))
    result = {"rows": rows, "ratios": ratios, "target": {"what": "converged solves/s at (3,1,3), batched_procs",
                                                         "value": target["converged_per_s"], "goal": 200.0,
                                                         "met": target["converged_per_s"] >= 200.0},
              "seed": SEED, "workers": args.workers, "cpu_count": os.cpu_count(), "threads": threads,
              "environment": environment()}
    if args.out:
        write_json(args.out, result)
    if args.json:
        print(json.dumps(result))
    else:
        print(f"{'d':>3} {'k':>2} {'T':>2} {'mode':<14} {'procs':>5} {'solves':>6} {'conv':>5} {'s':>7} {'conv/s':>8}")
        for r in rows:
            print(f"{r['d']:>3} {r['k']:>2} {r['T']:>2} {r['mode']:<14} {r['processes']:>5} {r['solves']:>6} "
                  f"{r['converged']:>5} {r['seconds']:>7.2f} {r['converged_per_s']:>8.1f}")
        for q in ratios:
            print(f"({q['d']},{q['k']},{q['T']}): batched / one-at-a-time = {q['batched_over_one_at_a_time']:.1f}x, "
                  f"processes / batched = {q['procs_over_batched']:.2f}x")
        print(f"target >= 200 converged solves/s at (3,1,3): {target['converged_per_s']:.0f}/s "
              f"({'met' if result['target']['met'] else 'NOT met'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
