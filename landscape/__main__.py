"""Command line of the landscape package: ``python -m landscape {search,certify,summary}``.

Examples::

    python -m landscape search --d 3 --k 1 --T 3 --instances 200 --starts 64 --seed 0 --out runs/t3.jsonl
    python -m landscape certify runs/t3.jsonl --method krawczyk --json
    python -m landscape summary runs/t3.jsonl --json --png runs/t3.png

Bad input is refused with one message naming the value and the rule, exit status 2, before any work (results and
instance files are read and checked before anything is computed); Ctrl-C gives one line and exit status 130
(``search`` says how many instances are saved; the same command resumes); a dead worker process stops ``search``
with one line and exit status 3 (finished instances kept). See :mod:`theory.cli_contract` and docs/robustness.md.

Every file written and every ``--json`` printout is strict JSON (:mod:`theory.strict_json`): a number that is not
finite is ``null``. In ``certify``'s rows ``search_loss`` is ``null`` when G at the point overflows float64 (a point
of an instance file far out, shown as ``unclassified``); ``null`` in the certificate's fields is explained by
:meth:`landscape.certificate.Certificate.to_dict`.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

# only the standard library at import time: NumPy and the rest are imported inside the handlers, where a Ctrl-C
# during start-up is caught like any other (theory.cli_contract.run_command)
from theory.cli_contract import (EXIT_INTERRUPTED, EXIT_OK, EXIT_STOPPED, OneLineParser, check_memory,
                                 check_output_file, deferred_sigint, nonneg_int, positive_int, run_command)
from theory.strict_json import dumps

from .certify_registry import CERTIFICATES, certifier

__all__ = ["main", "build_parser", "save_as_finished"]


def _scales(text: str) -> list[float]:
    try:
        vals = [float(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be comma-separated numbers, got {text!r}") from None
    if not vals or any(not (math.isfinite(v) and v > 0) for v in vals):
        raise argparse.ArgumentTypeError(f"must be comma-separated finite numbers > 0, got {text!r}")
    return vals


def build_parser() -> argparse.ArgumentParser:
    """The parser of ``python -m landscape`` (every subcommand; ``--help`` of each lists its options)."""
    ap = OneLineParser(prog="python -m landscape",
                       description="Critical points of the Meta-LoRA reduced loss G: search, certify, summarise. "
                                   "Exit status 0 done, 2 bad input, 3 search stopped by a dead worker (rerun to "
                                   "resume), 130 interrupted.")
    sub = ap.add_subparsers(dest="command", required=True, parser_class=OneLineParser)

    s = sub.add_parser("search", help="search instances for critical points of G; results as JSON lines",
                       description="Newton-type solves from many starts on random (or hill-climbed) instances; each "
                                   "finished instance is appended to --out as one JSON line (rerun to resume).")
    s.add_argument("--d", type=positive_int, required=True, help="dimension d")
    s.add_argument("--k", type=positive_int, required=True, help="adapter rank k")
    s.add_argument("--T", type=positive_int, required=True, help="number of tasks T")
    s.add_argument("--instances", type=positive_int, required=True, help="instances (adversarial: chains)")
    s.add_argument("--starts", type=positive_int, default=64, help="Newton-type solves per instance (default 64)")
    s.add_argument("--seed", type=nonneg_int, default=0, help="seed of everything random (default 0)")
    s.add_argument("--out", required=True, help="results file (JSON lines; an existing one is resumed)")
    s.add_argument("--workers", type=nonneg_int, default=None,
                   help="local worker processes (default: all cores; 0 or 1: in this process)")
    s.add_argument("--scheduler", default=None, help="address of a Dask scheduler, e.g. tcp://10.0.0.1:8786")
    s.add_argument("--adversarial", action="store_true",
                   help="hill-climb over ground truths U* towards spurious minima (each instance is one chain)")
    s.add_argument("--rounds", type=nonneg_int, default=8, help="hill-climb rounds per chain (default 8)")
    s.add_argument("--gd-runs", type=nonneg_int, default=2,
                   help="plain gradient-descent runs from small starts per instance (default 2)")
    s.add_argument("--scales", type=_scales, default=[0.1, 0.5, 1.0, 2.0],
                   help="start scales, relative to sqrt(max_t ||W_t - mean W||_2) (default 0.1,0.5,1,2)")

    c = sub.add_parser("certify", help="certify the spurious-minimum candidates (and a sample of other points)",
                       description="Re-evaluate G from each stored instance and prove (or fail to prove) that a "
                                   "critical point is a strict local minimum; prints one row per point.")
    c.add_argument("results", help="results file of `search`, or an instance file (landscape/instances/*.json)")
    c.add_argument("--method", choices=tuple(CERTIFICATES), default="krawczyk",
                   help="the certificate (default krawczyk: interval arithmetic; epsnet: the paper's eps-net)")
    c.add_argument("--sample", type=nonneg_int, default=3,
                   help="saddles and global minima certified per class, drawn at random (default 3)")
    c.add_argument("--max-candidates", type=nonneg_int, default=None,
                   help="certify at most this many spurious candidates (smallest G first; default all)")
    c.add_argument("--seed", type=nonneg_int, default=0, help="seed of the sample (default 0)")
    c.add_argument("--json", action="store_true", help="print one JSON object {\"rows\": [...]}")
    c.add_argument("--out", default=None, help="also write the JSON object to this file")

    m = sub.add_parser("summary", help="counts per class, smallest spurious G, where gradient descent ended",
                       description="Counts of distinct critical points per class over a results file, the smallest "
                                   "spurious G and where the gradient-descent runs ended.")
    m.add_argument("results", help="results file of `search`")
    m.add_argument("--json", action="store_true", help="print one JSON object")
    m.add_argument("--png", default=None, help="write a PNG of loss values and Hessian spectra here")
    from . import census_cli  # `census`, `census-summary` (docs/census.md)

    census_cli.add_parsers(sub)
    return ap


def _cmd_search(args) -> int:
    from theory.problem import ProblemError

    from . import adversarial, fanout, store

    if args.scheduler is not None and args.workers is not None:
        raise ProblemError("give either --workers (local processes) or --scheduler (a Dask cluster), not both")
    if args.scheduler is not None and not args.scheduler.strip():
        raise ProblemError("--scheduler must be an address such as tcp://host:8786, got an empty string")
    check_output_file("--out", args.out)
    size, batch = args.T * args.d * args.k, max(args.starts, args.gd_runs)
    # the largest arrays: one batch of stacked dense Hessians with their eigenvectors, and the list of work items
    check_memory(f"--starts {args.starts} / --gd-runs {args.gd_runs} at T d k = {size} ({batch} stacked {size} x "
                 f"{size} Hessians) and --instances {args.instances}",
                 3 * 8 * batch * size * size + 2048 * args.instances)
    config = {"d": args.d, "k": args.k, "T": args.T, "seed": args.seed, "starts": args.starts,
              "scales": list(args.scales), "gd_runs": args.gd_runs,
              "adversarial": ({**adversarial.DEFAULTS, "rounds": args.rounds} if args.adversarial else None)}
    done = store.open_run(args.out, config)
    todo = [{"index": i, **config} for i in range(args.instances) if i not in done]
    t0 = time.perf_counter()
    runs = fanout.run_all(todo, workers=args.workers, scheduler=args.scheduler)
    n, stopped = save_as_finished(runs, lambda rec: store.append(args.out, rec) or 1, total=len(todo),
                                  saved=len(done), out=args.out)
    if stopped is not None:
        return stopped
    print(dumps({"out": args.out, "finished": n, "skipped": len(done & set(range(args.instances))),
                      "seconds": round(time.perf_counter() - t0, 3)}))
    return EXIT_OK


def save_as_finished(runs, save, *, total: int, saved: int, out: str) -> tuple[int, int | None]:
    """Save every item of ``runs`` (the iterator of :func:`landscape.fanout.run_all`) as it finishes with
    ``save(item)``, which returns how many instances it saved; each item is saved whole or not at all (Ctrl-C is
    held off meanwhile). A progress bar counts ``total`` instances.

    Returns ``(instances saved by this run, None)`` when every item is saved, or, after one line on stderr naming
    how many instances (``saved`` before this run plus this run's) are kept in ``out``, ``(that count, 130)`` on
    Ctrl-C and ``(that count, 3)`` when a worker process died. The workers are stopped in every case."""
    from tqdm import tqdm

    from . import fanout

    n, stopped, why = 0, None, ""
    try:
        with tqdm(total=total, desc="instances", unit="inst", disable=None) as bar:
            for item in runs:
                with deferred_sigint():  # an item is saved and counted whole, or not at all
                    k = save(item)
                    n += k
                bar.update(k)
    except KeyboardInterrupt:
        stopped, why = EXIT_INTERRUPTED, "interrupted"
    except fanout.WorkerLost as exc:
        stopped, why = EXIT_STOPPED, f"error: {exc}"
    finally:
        runs.close()  # stops the workers at once if the loop ended early
    if stopped is not None:
        print(f"{why}; {saved + n} instances saved to {out}; rerun the same command to resume", file=sys.stderr)
    return n, stopped


def _candidates(records, sample: int, seed: int, max_candidates):
    """(record, point index) pairs: every spurious minimum (smallest G first), then ``sample`` random saddles and
    ``sample`` random global minima."""
    import numpy as np

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


def _previous_certify_output(path: str) -> None:
    """``--out`` of certify may replace only a file certify wrote (a JSON object with ``results``, ``method`` and
    ``rows``); any other existing file is refused before any work, not overwritten."""
    if not os.path.isfile(path):
        return
    try:
        with open(path, encoding="utf-8") as fh:
            doc = json.load(fh)
        ok = isinstance(doc, dict) and {"results", "method", "rows"} <= set(doc)
    except (OSError, UnicodeDecodeError, ValueError):
        ok = False
    if not ok:
        from theory.problem import ProblemError

        raise ProblemError(f"--out {path!r} exists and is not an output of certify (a JSON object with results, "
                           "method and rows); choose another file or remove it")


def _cmd_certify(args) -> int:
    import numpy as np
    from tqdm import tqdm

    from theory.problem import Problem

    from . import store

    if args.out is not None:
        check_output_file("--out", args.out)
        _previous_certify_output(args.out)
    try:
        certify = certifier(args.method)
    except ImportError as exc:  # the certificates are a separate part of the package
        print(f"error: the {args.method} certificate is not available: {exc}", file=sys.stderr)
        return 1
    records, candidates = _records_or_instance(args.results)
    if candidates is None:
        candidates = _candidates(records, args.sample, args.seed, args.max_candidates)
    rows = []
    for rec, i in tqdm(candidates, desc="certify", disable=None):
        c = rec["critical_points"][i]
        problem = Problem.from_dict(rec["problem"])  # re-evaluated from the stored instance, not the search
        cert = certify(problem, np.asarray(c["point"], dtype=float))
        row = {"index": rec["index"], "point_index": i, "search_class": c["class"],
               "search_loss": c["loss"], **cert.to_dict()}
        row["agrees"] = {"spurious_min": cert.spurious, "saddle": cert.verdict == "certified-not-minimum",
                         "global_min": cert.verdict == "certified-minimum" and cert.minimum_kind == "global"
                         }.get(c["class"])
        rows.append(row)
    payload = {"results": args.results, "method": args.method, "rows": rows}
    if args.out:
        store.atomic_write_text(args.out, dumps(payload, indent=1) + "\n")
    if args.json:
        print(dumps(payload))
    else:
        print(f"{'inst':>5} {'pt':>3} {'search class':>13} {'search G':>11} {'verdict':>22} {'kind':>9} {'s':>7}")
        for r in rows:
            print(f"{r['index']:>5} {r['point_index']:>3} {r['search_class']:>13} {r['search_loss']:>11.3e} "
                  f"{r['verdict']:>22} {r['minimum_kind'] or '-':>9} {r['seconds']:>7.2f}")
    return EXIT_OK


def _records_or_instance(path: str):
    """``(records, candidates)``: the records of a results file and ``None`` (the caller picks the candidates), or
    for an instance file (a JSON object with ``problem`` and ``point``, such as those in landscape/instances/) one
    pseudo-record holding its point and that point as the only candidate, whatever its class. A point whose float
    Hessian overflows cannot be classified: its class is ``"unclassified"`` (the certificate says why)."""
    import numpy as np

    from theory.problem import ProblemError
    from theory.reduced import reduced_loss

    from . import store

    kind, content = store.read_results_or_instance(path)
    if kind == "results":
        return content, None

    from .classify import classify_point

    problem, U, data = content
    try:
        c = classify_point(problem, U)
        label, loss = c.label, c.loss
    except ProblemError:
        with np.errstate(over="ignore", invalid="ignore"):
            label, loss = "unclassified", reduced_loss(U, problem)
    rec = {"index": 0, "config": {}, "problem": data["problem"],
           "critical_points": [{"class": label, "loss": loss, "point": U.tolist()}]}
    return [rec], [(rec, 0)]


def _cmd_summary(args) -> int:
    from . import store, summary

    if args.png is not None:
        check_output_file("--png", args.png)
    records = store.load(args.results)
    out = summary.summarize(records)
    if args.png:
        summary.plot(records, args.png)
        out["png"] = args.png
    if args.json:
        print(dumps(out))
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
    return EXIT_OK


def main(argv=None) -> int:
    """Run ``python -m landscape`` with ``argv``; returns the exit status (0 done, 2 bad input, 3 search stopped by
    a dead worker, 130 interrupted; :mod:`theory.cli_contract`)."""
    try:
        args = build_parser().parse_args(argv)  # argparse itself exits with status 2 on malformed arguments (one line)
    except KeyboardInterrupt:
        print("interrupted; nothing written", file=sys.stderr)
        return EXIT_INTERRUPTED
    from . import census_cli

    handlers = {"search": _cmd_search, "certify": _cmd_certify, "summary": _cmd_summary, **census_cli.HANDLERS}
    # ProblemError is the one error root: CertificateError and the store's and search's refusals derive from it
    return run_command(handlers[args.command], args, interrupted="interrupted; nothing written")


if __name__ == "__main__":
    sys.exit(main())
