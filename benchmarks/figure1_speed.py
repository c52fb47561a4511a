"""Speed of the Figure 1 experiments (theory.linear_experiment), each number against a baseline timed in this run.

1. Time per gradient step, batched over runs and tasks vs the per-run, per-task Python loop of the same algorithm
   (Meta-LoRA retraining, SR retraining, LoRA fine-tuning), at the default setting and at the largest panel sizes.
2. Time per Meta-LoRA step on the sufficient statistics vs on the samples themselves (batched per-sample gradient).
3. One whole setting (defaults, 5 runs) with the batched and with the loop implementation.
4. The whole Figure 1 (5 panels x 3 values x R runs, batched), wall time.

BLAS is pinned with threadpoolctl (``--threads``, default 1), and the pools are printed.

    python benchmarks/figure1_speed.py            # table
    python benchmarks/figure1_speed.py --json     # one JSON object
"""

from __future__ import annotations

import json
import os
import platform
import sys
import time

import numpy as np
from threadpoolctl import threadpool_info, threadpool_limits

_ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir)
sys.path.insert(0, _ROOT)
sys.path.insert(0, os.path.join(_ROOT, "tests", "theory"))  # the per-task loop, the tests' oracle, is the baseline here

from linear_reference import LOOP_STEPS  # noqa: E402
from theory import linear_experiment as le  # noqa: E402
from theory.linear_settings import PANELS, Settings  # noqa: E402
from theory.cli_contract import OneLineParser, check_output_file, positive_int, run_command  # noqa: E402


def _per_step(step, params, repeats: int, min_time: float = 0.2) -> float:
    """Best-of-``repeats`` seconds per call of ``step(params)``."""
    step(params)
    n = 1
    while True:  # calibrate the inner count to about min_time
        t = time.perf_counter()
        for _ in range(n):
            step(params)
        if time.perf_counter() - t >= min_time / 4 or n >= 1 << 16:
            break
        n *= 2
    best = np.inf
    for _ in range(repeats):
        t = time.perf_counter()
        for _ in range(n):
            step(params)
        best = min(best, (time.perf_counter() - t) / n)
    return best


def _sample_step(X, Y, eta):
    """Meta-LoRA step on the samples: M_t x_i - y_i for every sample, gradient 2 mean_i r_i x_i^T (batched)."""
    def step(p):
        A, U = p
        M = A[:, None] + U @ np.swapaxes(U, -1, -2)
        Rs = X @ np.swapaxes(M, -1, -2) - Y  # (R, T, N, d)
        G = 2.0 * np.swapaxes(Rs, -1, -2) @ X / X.shape[-2]
        e = eta[:, None, None]
        return None, None, (A - e * G.sum(1), U - e[..., None] * (G + np.swapaxes(G, -1, -2)) @ U)
    return step


def step_rows(s: Settings, repeats: int) -> list[dict]:
    inst = le.draw_instance(s)
    eta = le.step_sizes(inst)
    A0 = np.zeros((s.runs, s.d, s.d))
    A2 = np.stack([A0, A0 + 0.1])
    eta2 = np.stack([eta["sr"], eta["sr"]])
    B0 = np.stack([inst.B0, inst.B0])
    C0 = np.stack([inst.C0, inst.C0])
    rows = []
    (meta_b, sr_b, lora_b), (meta_l, sr_l, lora_l) = le.BATCHED_STEPS, LOOP_STEPS
    cases = {
        "meta_retrain": ((meta_b(inst.train, eta["meta"]), meta_l(inst.train, eta["meta"])), (A0, inst.U0)),
        "sr_retrain": ((sr_b(inst.train, eta["sr"]), sr_l(inst.train, eta["sr"])), A0),
        "lora_finetune": ((lora_b(A2, inst.test, inst.W_test, eta2), lora_l(A2, inst.test, inst.W_test, eta2)),
                          (B0, C0)),
    }
    for what, ((batched, loop), params) in cases.items():
        tb, tl = _per_step(batched, params, repeats), _per_step(loop, params, repeats)
        rows.append({"what": what, "d": s.d, "T": s.T, "k": s.k, "runs": s.runs, "batched_s": tb, "loop_s": tl,
                     "speedup": tl / tb})
    return rows


def sample_row(s: Settings, repeats: int) -> dict:
    """Statistics vs samples, both batched, for one Meta-LoRA step."""
    rng = np.random.default_rng(0)
    inst = le.draw_instance(s)
    eta = le.step_sizes(inst)
    X = rng.standard_normal((s.runs, s.T, s.N, s.d))
    Y = X @ np.swapaxes(inst.W, -1, -2)
    A0 = np.zeros((s.runs, s.d, s.d))
    ts = _per_step(le.BATCHED_STEPS[0](inst.train, eta["meta"]), (A0, inst.U0), repeats)
    tx = _per_step(_sample_step(X, Y, eta["meta"]), (A0, inst.U0), repeats)
    return {"what": "meta_step_statistics_vs_samples", "d": s.d, "T": s.T, "N": s.N, "runs": s.runs,
            "statistics_s": ts, "samples_s": tx, "speedup": tx / ts}


def main(argv=None) -> int:
    """Exit status 0, 2 on bad input (before any timing), 130 on Ctrl-C (theory.cli_contract)."""
    ap = OneLineParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    ap.add_argument("--runs", type=positive_int, default=5, help="runs per setting (default 5)")
    ap.add_argument("--threads", type=positive_int, default=1, help="BLAS threads (default 1)")
    ap.add_argument("--repeats", type=positive_int, default=5, help="repeats of each per-step timing (best kept)")
    ap.add_argument("--skip-figure", action="store_true", help="skip the whole-figure timing")
    ap.add_argument("--out", default=None, help="also write the JSON object to this file")
    return run_command(_run, ap.parse_args(argv))


def _run(args) -> int:
    if args.out is not None:
        check_output_file("--out", args.out)
    with threadpool_limits(limits=args.threads):
        pools = [{k: p.get(k) for k in ("user_api", "internal_api", "num_threads")} for p in threadpool_info()]
        log = (lambda *a: print(*a, file=sys.stderr)) if args.json else print
        log(f"BLAS pools: {pools}")
        rows = []
        for s in (Settings(runs=args.runs), Settings(d=20, T=5, k=3, runs=args.runs)):
            rows += step_rows(s, args.repeats)
        for r in rows:
            log(f"per step {r['what']:<14} d={r['d']:<3} T={r['T']} k={r['k']} runs={r['runs']}: batched "
                f"{r['batched_s'] * 1e6:8.1f} us, loop {r['loop_s'] * 1e6:8.1f} us, ratio {r['speedup']:.1f}x")
        srow = sample_row(Settings(runs=args.runs), args.repeats)
        log(f"Meta-LoRA step at N={srow['N']}: statistics {srow['statistics_s'] * 1e6:.1f} us, samples "
            f"{srow['samples_s'] * 1e6:.1f} us, ratio {srow['speedup']:.0f}x")
        s = Settings(runs=args.runs)
        inst = le.draw_instance(s)
        t = time.perf_counter()
        a = le.run_setting(s, instance=inst)
        tb = time.perf_counter() - t
        t = time.perf_counter()
        b = le.run_setting(s, instance=inst, steps=LOOP_STEPS)
        tl = time.perf_counter() - t
        same = bool(np.allclose(a.meta_test, b.meta_test, rtol=1e-9, atol=1e-12))
        setting = {"what": "one_setting_defaults", "runs": args.runs, "batched_s": tb, "loop_s": tl,
                   "speedup": tl / tb, "same_curves": same, "meta_retrain_iterations": a.iterations["meta_retrain"]}
        log(f"one setting (defaults, {args.runs} runs): batched {tb:.2f} s, loop {tl:.2f} s, ratio "
            f"{tl / tb:.1f}x, same curves: {same}")
        figure = None
        if not args.skip_figure:
            t = time.perf_counter()
            res = le.run_panels(list(PANELS), {"runs": args.runs})
            total = time.perf_counter() - t
            figure = {"panels": len(res), "settings": sum(len(v) for v in res.values()), "runs": args.runs,
                      "seconds": total,
                      "per_setting_s": {f"{p}={getattr(r.settings, p)}": r.seconds
                                        for p, v in res.items() for r in v}}
            log(f"whole Figure 1 ({figure['settings']} settings x {args.runs} runs, batched): {total:.1f} s")
    report = {"seed": 0, "threads": args.threads, "blas_pools": pools, "python": platform.python_version(),
              "numpy": np.__version__, "machine": platform.machine(), "cpu_count": os.cpu_count(),
              "per_step": rows, "statistics_vs_samples": srow, "one_setting": setting, "figure": figure}
    text = json.dumps(report, indent=1)
    if args.out:
        from theory.atomic import atomic_write_text

        atomic_write_text(args.out, text + "\n")
    if args.json:
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
