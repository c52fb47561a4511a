"""Certificate time against n = T d k for the interval (Krawczyk) and eps-net certificates of ``landscape``.

    python benchmarks/landscape_certify_speed.py [--json] [--out FILE] [--repeat 3] [--euclidean-max-n 9]

Certified points: the global minimum ``U*`` of ``Problem.random(d, k, T, seed=0)`` (a strict minimum when
``(T+1) k <= d``, Theorem 3.3) for n from 6 to 240, and the stored spurious minima ``landscape/instances/*.json``.
Methods, timed in the same run, BLAS pinned to one thread: ``float`` (baseline: the float classification, i.e.
``theory.reduced_hess`` + ``numpy.linalg.eigvalsh``, what the search does), ``krawczyk``
(:func:`landscape.certify_interval.certify_interval`), ``epsnet`` (:func:`landscape.certify_epsnet.certify_epsnet`,
Hessian metric, adaptive net, on the gauge slice for k >= 2), ``epsnet-euclid`` (the paper's sphere
``S(x0, delta)``, adaptive net, k = 1, n <= ``--euclidean-max-n``, 60 s limit) and ``epsnet-uniform`` (the
paper's exact recipe: uniform net of the covering radius the global Lipschitz bound needs, refused above 10^7
points; the row gives the net size it needs).
``ratio`` is the certificate time over the float baseline's.
Targets (issue 4): the interval certificate of a point with n = 60 in under 10 s; the eps-net up to the n where it
finishes in a minute.
"""

from __future__ import annotations

import glob
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import environment, pinned_threads, write_json  # noqa: E402

from theory.cli_contract import OneLineParser, check_output_file, nonneg_int, positive_int, run_command  # noqa: E402

SEED = 0
SIZES = [(2, 1, 3), (3, 1, 3), (4, 1, 3), (6, 1, 3), (8, 1, 3), (12, 1, 3), (16, 1, 3), (20, 1, 3), (8, 2, 3),
         (10, 2, 3), (15, 2, 3), (12, 1, 5), (20, 2, 3), (40, 1, 3), (80, 1, 3)]
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _best(fn, repeat: int):
    best, out = float("inf"), None
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return best, out


def _points():
    import numpy as np

    from theory.problem import Problem

    for d, k, T in SIZES:
        p = Problem.random(d, k, T, seed=SEED)
        yield f"U* of random({d},{k},{T}, seed={SEED})", p, p.U_star
    for path in sorted(glob.glob(os.path.join(ROOT, "landscape", "instances", "*.json"))):
        with open(path) as fh:
            rec = json.load(fh)
        yield os.path.basename(path), Problem.from_dict(rec["problem"]), np.asarray(rec["point"], dtype=float)


def run(repeat: int, euclid_max_n: int) -> dict:
    import numpy as np

    from landscape.certify_epsnet import certify_epsnet
    from landscape.certify_interval import certify_interval
    from theory.reduced import reduced_hess

    rows = []
    for name, p, U in _points():
        n = p.n_reduced
        t_float, _ = _best(lambda: np.linalg.eigvalsh(reduced_hess(U, p)), max(repeat, 5))
        methods = [("krawczyk", lambda: certify_interval(p, U)),
                   ("epsnet", lambda: certify_epsnet(p, U, time_limit=60))]
        if p.k == 1 and n <= euclid_max_n:
            methods.append(("epsnet-euclid", lambda: certify_epsnet(p, U, metric="euclidean", time_limit=60)))
        if p.k == 1 and n <= euclid_max_n:
            # the paper's exact recipe: uniform net, global Lipschitz bound; the covering radius it needs is about
            # (min over the sphere of G - G(x0)) / Lip ~ (lambda_min delta^2 / 2) / Lip; report the net size
            probe = certify_epsnet(p, U, metric="euclidean", max_points=1)
            lam = float(np.linalg.eigvalsh(reduced_hess(U, p))[0])
            eps_need = 0.5 * lam * probe.radius ** 2 / probe.margins["lipschitz"]
            methods.append(("epsnet-uniform", lambda: certify_epsnet(p, U, eps=eps_need, max_points=10 ** 7)))
        for method, fn in methods:
            reps = 1 if method == "epsnet-euclid" else repeat
            sec, cert = _best(fn, reps)
            rows.append({"point": name, "n": n, "d": p.d, "k": p.k, "T": p.T, "method": method,
                         "verdict": cert.verdict, "kind": cert.minimum_kind, "seconds": sec,
                         "float_seconds": t_float, "ratio": sec / t_float,
                         "net_points": cert.margins.get("net_points"),
                         "reason": cert.reason if cert.verdict == "inconclusive" else None})
    return {"benchmark": "landscape_certify_speed", "seed": SEED, "repeat": repeat, "rows": rows}


def _table(result: dict) -> str:
    lines = [f"{'point':<34} {'n':>4} {'method':<14} {'verdict':<22} {'kind':<9} {'seconds':>9} {'x float':>9} "
             f"{'net pts':>11}"]
    for r in result["rows"]:
        lines.append(f"{r['point'][:34]:<34} {r['n']:>4} {r['method']:<14} {r['verdict']:<22} {str(r['kind']):<9} "
                     f"{r['seconds']:>9.4f} {r['ratio']:>9.1f} {str(r['net_points'] or ''):>11}")
    n60 = [r["seconds"] for r in result["rows"] if r["method"] == "krawczyk" and r["n"] == 60]
    if n60:
        lines.append(f"krawczyk at n = 60: max {max(n60):.3f} s (target < 10 s)")
    return "\n".join(lines)


def main(argv=None) -> int:
    """Exit status 0, 2 on bad input (before any timing), 130 on Ctrl-C (theory.cli_contract)."""
    ap = OneLineParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", action="store_true", help="print JSON instead of a table")
    ap.add_argument("--out", help="also write the JSON to this file (atomically)")
    ap.add_argument("--repeat", type=positive_int, default=3, help="best of this many runs per certificate (default 3)")
    ap.add_argument("--euclidean-max-n", type=nonneg_int, default=9,
                    help="run the paper's Euclidean sphere up to this n (default 9; 60 s limit each)")
    return run_command(_run, ap.parse_args(argv))


def _run(args) -> int:
    if args.out is not None:
        check_output_file("--out", args.out)
    with pinned_threads(1) as pin:
        import flint

        result = run(args.repeat, args.euclidean_max_n)
    result["environment"] = {**environment(), "python_flint": flint.__version__, "pinning": pin,
                             "flint_threads": flint.ctx.threads}
    if args.out:
        write_json(args.out, result)
    print(json.dumps(result) if args.json else _table(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
