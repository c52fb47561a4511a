"""Analytic derivatives of the reduced loss G against torch autograd, timed in the same process.

    python benchmarks/theory_speed.py [--json] [--out FILE] [--threads 1]

For each (d, k, T) in (10, 1, 3), (20, 2, 5), (50, 2, 5): the dense Hessian (``theory.reduced.reduced_hess`` vs
``torch.func.hessian``) and the gradient (``theory.reduced.reduced_grad`` vs ``torch.func.grad``), at one random
point from a fixed seed, best of 5 repeats, BLAS and torch pinned to ``--threads``. Prints a table (or, with
``--json``, ``{"rows": [{"d", "k", "T", "what", "analytic_s", "autograd_s", "speedup"}], ...}``).
"""

from __future__ import annotations

import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import best_time, environment, pinned_threads, write_json  # noqa: E402

from theory.cli_contract import OneLineParser, check_output_file, positive_int, run_command  # noqa: E402

SIZES = [(10, 1, 3), (20, 2, 5), (50, 2, 5)]
SEED = 0


def measure(d: int, k: int, T: int, seed: int = SEED) -> list[dict]:
    import torch
    from torch.func import grad, hessian

    from theory.autograd_ref import torch_reduced_loss
    from theory.problem import Problem
    from theory.reduced import reduced_grad, reduced_hess

    p = Problem.random(d, k, T, seed)
    U = np.random.default_rng([seed, d, k, T]).standard_normal((T, d, k))
    G = torch_reduced_loss(p)
    u = torch.tensor(U.ravel())
    g_fn, h_fn = grad(G), hessian(G)
    # same numbers first (a benchmark of a wrong result is worthless)
    assert np.allclose(h_fn(u).numpy(), reduced_hess(U, p), rtol=1e-10, atol=1e-10)
    assert np.allclose(g_fn(u).numpy(), reduced_grad(U, p), rtol=1e-10, atol=1e-10)
    rows = []
    for what, analytic, auto in (("hessian", lambda: reduced_hess(U, p), lambda: h_fn(u)),
                                 ("gradient", lambda: reduced_grad(U, p), lambda: g_fn(u))):
        a, b = best_time(analytic), best_time(auto)
        rows.append({"d": d, "k": k, "T": T, "what": what, "analytic_s": a, "autograd_s": b, "speedup": b / a})
    return rows


def main(argv=None) -> int:
    """Exit status 0, 2 on bad input (before any timing), 130 on Ctrl-C (theory.cli_contract)."""
    ap = OneLineParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", action="store_true", help="print JSON instead of a table")
    ap.add_argument("--out", help="also write the JSON to this file")
    ap.add_argument("--threads", type=positive_int, default=1, help="BLAS and torch threads (default 1)")
    return run_command(_run, ap.parse_args(argv))


def _run(args) -> int:
    if args.out is not None:
        check_output_file("--out", args.out)
    with pinned_threads(args.threads) as threads:
        rows = [row for size in SIZES for row in measure(*size)]
    result = {"rows": rows, "seed": SEED, "threads": threads, "environment": environment()}
    if args.out:
        write_json(args.out, result)
    if args.json:
        print(json.dumps(result))
    else:
        print(f"threads: {threads['blas_threads']} BLAS, {threads.get('torch_threads')} torch")
        print(f"{'d':>3} {'k':>2} {'T':>2} {'what':<9} {'analytic':>11} {'autograd':>11} {'speed-up':>9}")
        for r in rows:
            print(f"{r['d']:>3} {r['k']:>2} {r['T']:>2} {r['what']:<9} {r['analytic_s'] * 1e3:>9.3f}ms "
                  f"{r['autograd_s'] * 1e3:>9.3f}ms {r['speedup']:>8.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
