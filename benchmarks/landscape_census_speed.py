"""Converged Newton-type solves per second, batched over instances (``landscape.multisearch``) against today's
per-instance batching (``landscape.search.search_instance``), at (d, k, T) = (3, 1, 3) and (10, 2, 3).

    flock /work/cpu.lock python benchmarks/landscape_census_speed.py [--json] [--out FILE] [--repeats 3]
    flock /work/cpu.lock python benchmarks/landscape_census_speed.py --cost-model
    flock /work/cpu.lock python benchmarks/landscape_census_speed.py --profile
    flock /work/cpu.lock python benchmarks/landscape_census_speed.py --linalg

One process, BLAS and torch pinned to one thread (printed). Both ways solve the same instances with 64 starts each
(the same start scales and methods; the starts themselves are drawn per start by ``search_instance`` and per
instance by ``search_instances``), no gradient descent. The two are timed alternately ``--repeats`` times and the
ratio of each pair is reported with their median, so a change of machine load between pairs does not bias it.
Targets: at least 4x at (3, 1, 3) and at least 2x at (10, 2, 3). Also reported: the seconds per spurious-minimum
candidate of the interval certificate (and the eps-net at n <= 12). ``--cost-model`` instead times
``landscape.census.run_chunk`` at several sizes, the data behind the census's planning constants; ``--linalg``
times the kernel's batched linear algebra, torch's (MKL) against NumPy's (OpenBLAS).
"""

from __future__ import annotations

import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import environment, pinned_threads, write_json  # noqa: E402
from theory.cli_contract import OneLineParser, check_output_file, positive_int, run_command  # noqa: E402

SEED = 0
CASES = [{"d": 3, "k": 1, "T": 3, "instances": 64, "starts": 64},
         {"d": 10, "k": 2, "T": 3, "instances": 6, "starts": 64}]


def _problems(case):
    from landscape.search import instance_seed
    from theory.problem import Problem

    return [Problem.random(case["d"], case["k"], case["T"], seed=instance_seed(SEED, i))
            for i in range(case["instances"])]


def _per_instance(case, problems):
    from landscape.search import search_instance

    t0 = time.perf_counter()
    res = [search_instance(p, starts=case["starts"], seed=SEED, instance=i, gd_runs=0)[0]
           for i, p in enumerate(problems)]
    return time.perf_counter() - t0, [r for rs in res for r in rs]


def _over_instances(case, problems):
    from landscape.multisearch import search_instances

    t0 = time.perf_counter()
    res = search_instances(problems, range(len(problems)), starts=case["starts"], seed=SEED, gd_runs=0)
    return time.perf_counter() - t0, [r for rs, _, _ in res for r in rs]


def _certify_times(problems, results):
    """Seconds per spurious-minimum candidate of both certificates, over the candidates of these solves."""
    from landscape.certify_epsnet import certify_epsnet
    from landscape.certify_interval import certify_interval
    from landscape.classify import dedup

    k_s, e_s = [], []
    per = len(results) // len(problems)
    for q, p in enumerate(problems):
        points, _ = dedup(p, results[q * per:(q + 1) * per])
        for c in points:
            if c.classification.label == "spurious_min":
                k_s.append(certify_interval(p, c.point).seconds)
                if p.n_reduced <= 12:
                    e_s.append(certify_epsnet(p, c.point, max_points=200_000, time_limit=1e9).seconds)
    mean = (lambda v: sum(v) / len(v) if v else None)
    return {"candidates": len(k_s), "krawczyk_seconds": mean(k_s), "epsnet_seconds": mean(e_s)}


def measure(case: dict, repeats: int) -> dict:
    import statistics

    problems = _problems(case)
    _over_instances({**case, "starts": 4}, problems[:1])  # imports and first calls (torch) before timing
    pairs = []
    for _ in range(repeats):
        t_old, old = _per_instance(case, problems)
        t_new, new = _over_instances(case, problems)
        c_old, c_new = sum(r.converged for r in old), sum(r.converged for r in new)
        pairs.append({"per_instance_s": t_old, "over_instances_s": t_new, "converged_per_instance": c_old,
                      "converged_over_instances": c_new, "per_instance_per_s": c_old / t_old,
                      "over_instances_per_s": c_new / t_new, "ratio": (c_new / t_new) / (c_old / t_old)})
    return {**case, "solves": case["instances"] * case["starts"], "pairs": pairs,
            "median_ratio": statistics.median(p["ratio"] for p in pairs),
            "median_over_instances_per_s": statistics.median(p["over_instances_per_s"] for p in pairs),
            "median_per_instance_per_s": statistics.median(p["per_instance_per_s"] for p in pairs),
            "certify": _certify_times(problems, new)}


def cost_model() -> list[dict]:
    """Core-seconds per instance of ``run_chunk`` (search + certify) at several sizes, 64 starts, 2 + 2 descents."""
    from landscape import census

    rows = []
    for d, k, T, m in [(3, 1, 3, 32), (5, 1, 4, 16), (6, 2, 3, 8), (10, 1, 4, 8), (10, 2, 3, 4), (8, 1, 8, 4),
                       (16, 1, 5, 2)]:
        opts = census.CensusOptions(instances=m)
        spec = {"config": census.cell_config(d, k, T, opts), "indices": list(range(m))}
        t0 = time.perf_counter()
        census.run_chunk(spec)
        sec = (time.perf_counter() - t0) / m
        rows.append({"d": d, "k": k, "T": T, "n": T * d * k, "instances": m, "seconds_per_instance": sec,
                     "model": census.instance_cost(d, k, T, opts)})
        _progress(rows[-1])
    return rows


def profile() -> list[dict]:
    """cProfile of both ways at (10, 2, 3) (6 instances x 64 starts): wall seconds and the functions with the most
    own time, to see where the time goes once NumPy's per-call overhead is no longer the bottleneck (``--profile``
    also reports :func:`row_work`)."""
    import cProfile
    import pstats

    case = CASES[1]
    problems = _problems(case)
    _over_instances({**case, "starts": 4}, problems[:1])
    rows = []
    for name, run in (("over_instances", _over_instances), ("per_instance", _per_instance)):
        prof = cProfile.Profile()
        t0 = time.perf_counter()
        prof.enable()
        run(case, problems)
        prof.disable()
        wall = time.perf_counter() - t0
        stats = pstats.Stats(prof).stats  # {(file, line, function): (calls, ncalls, tottime, cumtime, callers)}
        top = sorted(stats.items(), key=lambda kv: -kv[1][2])[:8]
        rows.append({"way": name, "seconds": wall, "top": [
            {"function": f"{os.path.basename(f)}:{fn}", "calls": v[1], "own_seconds": v[2], "cumulative_seconds": v[3]}
            for (f, _, fn), v in top]})
        _progress(rows[-1])
    return rows


def linalg() -> list[dict]:
    """Seconds of torch's (MKL) against NumPy's batched ``eigh`` and Cholesky solve against LU ``solve``, on 256
    random symmetric matrices (shifted positive definite for the solves) at n = 9, 24, 60: best of 15 alternating
    timings, ratio torch / NumPy (below 1: torch faster)."""
    import numpy as np
    import torch

    def best_of_both(fns):
        """Best of 15 timings of each function, the two timed alternately (a load change hits both; not
        ``_common.best_time``, which times one function alone)."""
        times = [[], []]
        for _ in range(16):
            for t, fn in zip(times, fns):
                t0 = time.perf_counter()
                fn()
                t.append(time.perf_counter() - t0)
        return [min(t[1:]) for t in times]  # the first call of each is a warm-up

    rows = []
    for n in (9, 24, 60):
        A = np.random.default_rng(n).standard_normal((256, n, n))
        H = A + np.swapaxes(A, 1, 2)
        P = H @ H + np.eye(n)
        b = np.ones((256, n, 1))
        Ht, Pt, bt = torch.from_numpy(H), torch.from_numpy(P), torch.from_numpy(b)
        pairs = {"eigh": (lambda: np.linalg.eigh(H), lambda: torch.linalg.eigh(Ht)),
                 "solve": (lambda: np.linalg.solve(P, b),
                           lambda: torch.cholesky_solve(bt, torch.linalg.cholesky_ex(Pt)[0]))}
        for name, (np_fn, torch_fn) in pairs.items():
            t_np, t_torch = best_of_both((np_fn, torch_fn))
            rows.append({"n": n, "op": name, "numpy_us_per_matrix": t_np / 256 * 1e6,
                         "torch_us_per_matrix": t_torch / 256 * 1e6, "ratio": t_torch / t_np})
            _progress(rows[-1])
    return rows


def row_work() -> dict:
    """Where the lock-step solver's row-iterations go at (10, 2, 3) (6 instances x 64 starts): how many matrices it
    eigen-decomposes (and how many of them have a negative eigenvalue) and how many Cholesky trials it runs
    (counted by wrapping ``lockstep._eigh`` and ``lockstep._solve_step``), and the row-iterations of the solves by
    method and end status."""
    from landscape import lockstep

    counts = {"eigh_matrices": 0, "eigh_indefinite": 0, "cholesky_trials": 0}
    eigh, solve_step = lockstep._eigh, lockstep._solve_step

    def counted_eigh(H):
        lam, V = eigh(H)
        counts["eigh_matrices"] += H.shape[0]
        counts["eigh_indefinite"] += int((lam[:, 0] < 0).sum())
        return lam, V

    def counted_solve_step(H, g, nw):
        step = solve_step(H, g, nw)

        def counted(rows, m):
            counts["cholesky_trials"] += len(rows)
            return step(rows, m)
        return counted

    case = CASES[1]
    problems = _problems(case)
    lockstep._eigh, lockstep._solve_step = counted_eigh, counted_solve_step
    try:
        _, results = _over_instances(case, problems)
    finally:
        lockstep._eigh, lockstep._solve_step = eigh, solve_step
    by = {}
    for r in results:
        key = f"{r.method} {r.status}"
        solves, its = by.get(key, (0, 0))
        by[key] = (solves + 1, its + r.iterations)
    out = {**counts, "row_iterations": sum(r.iterations for r in results),
           "solves_and_row_iterations_by_method_and_status": {k: list(v) for k, v in sorted(by.items())}}
    _progress(out)
    return out


def _progress(row: dict) -> None:
    """One measured row as a JSON line on standard error while a mode runs (standard output gets the result)."""
    print(json.dumps(row), file=sys.stderr, flush=True)


def main(argv=None) -> int:
    """Exit status 0, 2 on bad input (before any timing), 130 on Ctrl-C (theory.cli_contract)."""
    ap = OneLineParser(description=" ".join(__doc__.split("\n\n")[0].split()))  # the first sentence, whole
    ap.add_argument("--json", action="store_true",
                    help="print JSON instead of a table (--cost-model, --profile and --linalg always print one "
                         "JSON object, their rows also to standard error as they are measured)")
    ap.add_argument("--out", help="also write the JSON to this file")
    ap.add_argument("--repeats", type=positive_int, default=3, help="alternating timings per case (default 3)")
    mode = ap.add_mutually_exclusive_group()  # one mode per run
    mode.add_argument("--cost-model", action="store_true", help="time run_chunk at several sizes instead")
    mode.add_argument("--profile", action="store_true", help="cProfile both ways at (10, 2, 3) instead")
    mode.add_argument("--linalg", action="store_true", help="time torch's against NumPy's batched eigh and solves")
    return run_command(_run, ap.parse_args(argv))


def _run(args) -> int:
    if args.out is not None:
        check_output_file("--out", args.out)
    load0 = os.getloadavg()
    with pinned_threads(1) as threads:
        if args.cost_model:
            result = {"cost_model": cost_model()}
        elif args.profile:
            result = {"profile": profile(), "row_work": row_work()}
        elif args.linalg:
            result = {"linalg": linalg()}
        else:
            result = {"cases": [measure(c, args.repeats) for c in CASES]}
    result.update(seed=SEED, threads=threads, cpu_count=os.cpu_count(), loadavg_start=list(load0),
                  loadavg_end=list(os.getloadavg()), environment=environment())
    extra = args.cost_model or args.profile or args.linalg
    if not extra:
        goals = {(3, 1, 3): 4.0, (10, 2, 3): 2.0}
        result["targets"] = [{"d": c["d"], "k": c["k"], "T": c["T"], "goal": goals[(c["d"], c["k"], c["T"])],
                              "median_ratio": c["median_ratio"],
                              "met": c["median_ratio"] >= goals[(c["d"], c["k"], c["T"])]}
                             for c in result["cases"]]
    if args.out:
        write_json(args.out, result)
    if args.json or extra:
        print(json.dumps(result))
        return 0
    print(f"threads: {threads}; load average at start {load0[0]:.2f}, at end {result['loadavg_end'][0]:.2f}")
    for c in result["cases"]:
        print(f"({c['d']},{c['k']},{c['T']}), {c['instances']} instances x {c['starts']} starts:")
        for p in c["pairs"]:
            print(f"  per instance {p['per_instance_per_s']:7.0f} conv/s ({p['converged_per_instance']} conv)   "
                  f"over instances {p['over_instances_per_s']:7.0f} conv/s ({p['converged_over_instances']} conv)"
                  f"   ratio {p['ratio']:.2f}")
        cert = c["certify"]
        print(f"  median ratio {c['median_ratio']:.2f}; certify per candidate ({cert['candidates']}): interval "
              f"{cert['krawczyk_seconds']} s, eps-net {cert['epsnet_seconds']} s")
    for t in result["targets"]:
        print(f"target >= {t['goal']:g}x at ({t['d']},{t['k']},{t['T']}): {t['median_ratio']:.2f}x "
              f"({'met' if t['met'] else 'NOT met'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
