"""Command line of the landscape package: ``python -m landscape {search,certify,summary}``.

Examples::

    python -m landscape search --d 3 --k 1 --T 3 --instances 200 --starts 64 --seed 0 --out runs/t3.jsonl
    python -m landscape certify runs/t3.jsonl --method krawczyk --json
    python -m landscape summary runs/t3.jsonl --json --png runs/t3.png

Bad input is refused with one message naming the value and the rule, exit status 2.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

import numpy as np

from theory.problem import Problem, ProblemError

from . import census_cli

__all__ = ["main", "build_parser"]


class _Refused(Exception):
    """Bad input from the command line (exit status 2)."""


def _positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}") from None
    if v <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer (> 0), got {v}")
    return v


def _nonneg_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer >= 0, got {text!r}") from None
    if v < 0:
        raise argparse.ArgumentTypeError(f"must be an integer >= 0, got {v}")
    return v


def _scales(text: str) -> list[float]:
    try:
        vals = [float(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be comma-separated numbers, got {text!r}") from None
    if not vals or any(not (math.isfinite(v) and v > 0) for v in vals):
        raise argparse.ArgumentTypeError(f"must be comma-separated finite numbers > 0, got {text!r}")
    return vals


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m landscape",
                                 description="Critical points of the Meta-LoRA reduced loss G: search, certify, "
                                             "summarise.")
    sub = ap.add_subparsers(dest="command", required=True)

    s = sub.add_parser("search", help="search instances for critical points of G; results as JSON lines")
    s.add_argument("--d", type=_positive_int, required=True, help="dimension d")
    s.add_argument("--k", type=_positive_int, required=True, help="adapter rank k")
    s.add_argument("--T", type=_positive_int, required=True, help="number of tasks T")
    s.add_argument("--instances", type=_positive_int, required=True, help="instances (adversarial: chains)")
    s.add_argument("--starts", type=_positive_int, default=64, help="Newton-type solves per instance (default 64)")
    s.add_argument("--seed", type=_nonneg_int, default=0, help="seed of everything random (default 0)")
    s.add_argument("--out", required=True, help="results file (JSON lines; an existing one is resumed)")
    s.add_argument("--workers", type=_nonneg_int, default=None,
                   help="local worker processes (default: all cores; 0 or 1: in this process)")
    s.add_argument("--scheduler", default=None, help="address of a Dask scheduler, e.g. tcp://10.0.0.1:8786")
    s.add_argument("--adversarial", action="store_true",
                   help="hill-climb over ground truths U* towards spurious minima (each instance is one chain)")
    s.add_argument("--rounds", type=_nonneg_int, default=8, help="hill-climb rounds per chain (default 8)")
    s.add_argument("--gd-runs", type=_nonneg_int, default=2,
                   help="plain gradient-descent runs from small starts per instance (default 2)")
    s.add_argument("--scales", type=_scales, default=[0.1, 0.5, 1.0, 2.0],
                   help="start scales, relative to sqrt(max_t ||W_t - mean W||_2) (default 0.1,0.5,1,2)")

    c = sub.add_parser("certify", help="certify the spurious-minimum candidates (and a sample of other points)")
    c.add_argument("results", help="results file of `search`, or an instance file (landscape/instances/*.json)")
    c.add_argument("--method", choices=("krawczyk", "epsnet"), default="krawczyk")
    c.add_argument("--sample", type=_nonneg_int, default=3,
                   help="saddles and global minima certified per class, drawn at random (default 3)")
    c.add_argument("--max-candidates", type=_nonneg_int, default=None,
                   help="certify at most this many spurious candidates (smallest G first; default all)")
    c.add_argument("--seed", type=_nonneg_int, default=0, help="seed of the sample (default 0)")
    c.add_argument("--json", action="store_true", help="print one JSON object {\"rows\": [...]}")
    c.add_argument("--out", default=None, help="also write the JSON object to this file")

    m = sub.add_parser("summary", help="counts per class, smallest spurious G, where gradient descent ended")
    m.add_argument("results", help="results file of `search`")
    m.add_argument("--json", action="store_true", help="print one JSON object")
    m.add_argument("--png", default=None, help="write a PNG of loss values and Hessian spectra here")
    census_cli.add_parsers(sub)
    return ap


def _cmd_search(args) -> int:
    from tqdm import tqdm

    from . import adversarial, fanout, store

    if args.scheduler is not None and args.workers is not None:
        raise _Refused("give either --workers (local processes) or --scheduler (a Dask cluster), not both")
    if args.scheduler is not None and not args.scheduler.strip():
        raise _Refused("--scheduler must be an address such as tcp://host:8786, got an empty string")
    config = {"d": args.d, "k": args.k, "T": args.T, "seed": args.seed, "starts": args.starts,
              "scales": list(args.scales), "gd_runs": args.gd_runs,
              "adversarial": ({**adversarial.DEFAULTS, "rounds": args.rounds} if args.adversarial else None)}
    done = store.open_run(args.out, config)
    todo = [{"index": i, **config} for i in range(args.instances) if i not in done]
    t0 = time.perf_counter()
    n = 0
    with tqdm(total=len(todo), desc="instances", unit="inst", disable=None) as bar:
        for rec in fanout.run_all(todo, workers=args.workers, scheduler=args.scheduler):
            store.append(args.out, rec)
            n += 1
            bar.update(1)
    print(json.dumps({"out": args.out, "finished": n, "skipped": len(done & set(range(args.instances))),
                      "seconds": round(time.perf_counter() - t0, 3)}))
    return 0


def _candidates(records, sample: int, seed: int, max_candidates):
    """(record, point index) pairs: every spurious minimum (smallest G first), then ``sample`` random saddles and
    ``sample`` random global minima."""
    spurious, others = [], {"saddle": [], "global_min": []}
    for rec in records:
        for i, c in enumerate(rec["critical_points"]):
            if c["class"] == "spurious_min":
                spurious.append((c["loss"], rec["index"], i, rec))
            elif c["class"] in others:
                others[c["class"]].append((rec, i))
    spurious.sort(key=lambda t: (t[0], t[1], t[2]))
    if max_candidates is not None:
        spurious = spurious[:max_candidates]
    out = [(rec, i) for _, _, i, rec in spurious]
    rng = np.random.default_rng(seed)
    for cls in ("saddle", "global_min"):
        pool = others[cls]
        if pool:
            for j in sorted(rng.choice(len(pool), size=min(sample, len(pool)), replace=False)):
                out.append(pool[j])
    return out


def _cmd_certify(args) -> int:
    from tqdm import tqdm

    from . import store

    try:
        if args.method == "krawczyk":
            from .certify_interval import certify_interval as certify
        else:
            from .certify_epsnet import certify_epsnet as certify
    except ImportError as exc:  # the certificates are a separate part of the package
        print(f"error: the {args.method} certificate is not available: {exc}", file=sys.stderr)
        return 1
    records = _records_or_instance(args.results)
    rows = []
    for rec, i in tqdm(_candidates(records, args.sample, args.seed, args.max_candidates), desc="certify",
                       disable=None):
        c = rec["critical_points"][i]
        problem = Problem.from_dict(rec["problem"])  # re-evaluated from the stored instance, not the search
        cert = certify(problem, np.asarray(c["point"], dtype=float))
        row = {"index": rec["index"], "point_index": i, "search_class": c["class"], "search_loss": c["loss"],
               **cert.to_dict()}
        row["agrees"] = {"spurious_min": cert.spurious, "saddle": cert.verdict == "certified-not-minimum",
                         "global_min": cert.verdict == "certified-minimum" and cert.minimum_kind == "global"
                         }.get(c["class"])
        rows.append(row)
    payload = {"results": args.results, "method": args.method, "rows": rows}
    if args.out:
        store.atomic_write_text(args.out, json.dumps(payload, indent=1) + "\n")
    if args.json:
        print(json.dumps(payload))
    else:
        print(f"{'inst':>5} {'pt':>3} {'search class':>13} {'search G':>11} {'verdict':>22} {'kind':>9} {'s':>7}")
        for r in rows:
            print(f"{r['index']:>5} {r['point_index']:>3} {r['search_class']:>13} {r['search_loss']:>11.3e} "
                  f"{r['verdict']:>22} {str(r['minimum_kind']):>9} {r['seconds']:>7.2f}")
    return 0


def _records_or_instance(path: str) -> list[dict]:
    """Records of a results file, or one pseudo-record holding the point of an instance file (a JSON object with
    ``problem`` and ``point``, such as those in landscape/instances/)."""
    from . import store

    if os.path.isfile(path):
        with open(path, encoding="utf-8") as fh:
            try:
                data = json.load(fh)
            except json.JSONDecodeError:  # JSON lines (more than one object) or malformed: a results file
                data = None
        if isinstance(data, dict) and "point" in data and "problem" in data:
            from .classify import classify_point

            problem, U, data = store.load_instance(path)
            c = classify_point(problem, U)
            return [{"index": 0, "config": {}, "problem": data["problem"],
                     "critical_points": [{"class": c.label, "loss": c.loss, "point": U.tolist()}]}]
    return store.load(path)


def _cmd_summary(args) -> int:
    from . import store, summary

    records = store.load(args.results)
    out = summary.summarize(records)
    if args.png:
        summary.plot(records, args.png)
        out["png"] = args.png
    if args.json:
        print(json.dumps(out))
    else:
        print(f"{out['instances']} instances, settings {out['settings']}")
        print(f"{'class':>13} {'critical points':>16} {'distinct G values':>18} {'instances with':>15}")
        for cls, n in out["counts"].items():
            print(f"{cls:>13} {n:>16} {out['critical_values'][cls]:>18} {out['instances_with'][cls]:>15}")
        s = out["smallest_spurious_loss"]
        print("smallest G among spurious minima:", "none" if s is None else f"{s['loss']:.6g} (instance {s['index']})")
        gd = out["gd"]
        print(f"gradient descent: {gd['runs']} runs, ended in {gd['ended_in']}; the unconverged ones were heading to "
              f"{gd['unconverged_heading_to']} (the critical point their end point polishes to)")
        if "adversarial" in out:
            print("adversarial:", out["adversarial"])
    return 0


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)  # argparse itself exits with status 2 on malformed arguments
    handlers = {"search": _cmd_search, "certify": _cmd_certify, "summary": _cmd_summary, **census_cli.HANDLERS}
    try:
        return handlers[args.command](args)
    except (_Refused, ProblemError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"error: {exc.filename or ''}: {exc.strerror or exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
