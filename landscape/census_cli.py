"""The ``census`` and ``census-summary`` subcommands of ``python -m landscape`` (:mod:`landscape.census`).

Examples::

    python -m landscape census --grid "d=3,4;k=1;T=3" --instances 50 --out runs/census-small/ --workers 2
    python -m landscape census --out runs/census/ --scheduler tcp://10.0.0.1:8786
    python -m landscape census-summary runs/census/ --out results/census

Folder of a census: ``plan.json`` (options, grid, plan per cell, the command), ``cells/d{d}_k{k}_T{T}.jsonl`` (one
record per finished instance, appended and fsynced as it finishes) and ``runs.jsonl`` (one line per invocation:
wall time, instances finished, interrupted or not). Running the same command again resumes: finished instances are
skipped, nothing finished is lost. Options are validated before any work (exit status 2, one message naming the
value); Ctrl-C stops with one line and exit status 130.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from dataclasses import asdict

from theory.problem import ProblemError

__all__ = ["add_parsers", "HANDLERS", "census_command"]


def _seconds(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number of seconds > 0, got {text!r}") from None
    if not (math.isfinite(v) and v > 0):
        raise argparse.ArgumentTypeError(f"must be a finite number of seconds > 0, got {text!r}")
    return v


def add_parsers(sub) -> None:
    """Add ``census`` and ``census-summary`` to the subparsers ``sub`` of ``python -m landscape``."""
    from theory.cli_contract import nonneg_int as _nonneg_int, positive_int as _positive_int

    from .__main__ import _scales  # the package's own option types

    c = sub.add_parser("census", help="how common are certified spurious minima, and does gradient descent find "
                                      "them: a grid of (d, k, T) cells, many instances each",
                       description="Search many i.i.d. N(0, 1) instances per (d, k, T) cell, certify every "
                                   "spurious-minimum candidate, and record where gradient descent ends.")
    c.add_argument("--grid", default="default",
                   help='cells, e.g. "d=3,4,5;k=1,2;T=3,4" (default: d=3,4,5,6,8,10,16;k=1,2;T=3,4,5,8)')
    c.add_argument("--out", required=True, help="census folder (an existing one is resumed)")
    c.add_argument("--instances", type=_positive_int, default=500, help="instances per cell where the budget allows "
                                                                   "(default 500)")
    c.add_argument("--starts", type=_positive_int, default=64, help="Newton-type solves per instance (default 64)")
    c.add_argument("--seed", type=_nonneg_int, default=0, help="seed of everything random (default 0)")
    c.add_argument("--gd-runs", type=_nonneg_int, default=2,
                   help="gradient descent on G from small starts, runs per instance (default 2)")
    c.add_argument("--figure1-runs", type=_nonneg_int, default=2,
                   help="gradient descent on L(A, U) from Figure 1's initialisation, runs per instance (default 2)")
    c.add_argument("--gd-steps", type=_positive_int, default=20000, help="steps of each descent (default 20000)")
    c.add_argument("--scales", type=_scales, default=[0.1, 0.5, 1.0, 2.0],
                   help="start scales relative to sqrt(max_t ||W_t - mean W||_2) (default 0.1,0.5,1,2)")
    c.add_argument("--budget", type=_seconds, default=6000.0,
                   help="planned core-seconds for the whole grid; cells too slow for it are skipped "
                        "(default 6000)")
    c.add_argument("--min-instances", type=_positive_int, default=20,
                   help="skip a cell the budget gives fewer instances (default 20)")
    c.add_argument("--chunk-seconds", type=_seconds, default=20.0,
                   help="planned core-seconds of one work item, a chunk of instances in lock-step (default 20)")
    c.add_argument("--epsnet-max-n", type=_nonneg_int, default=12,
                   help="also run the eps-net certificate where T d k <= this (default 12)")
    c.add_argument("--workers", type=_nonneg_int, default=None,
                   help="local worker processes (default: all cores; 0 or 1: in this process)")
    c.add_argument("--scheduler", default=None, help="address of a Dask scheduler, e.g. tcp://10.0.0.1:8786")
    c.add_argument("--dry-run", action="store_true", help="print the plan (cells, instances, skips) and stop")

    s = sub.add_parser("census-summary", help="table (JSON, Markdown) and heat maps of a census folder")
    s.add_argument("folder", help="census folder (the --out of census)")
    s.add_argument("--out", default=None, help="write census.json, census.md and the PNGs here (default: folder)")
    s.add_argument("--json", action="store_true", help="print census.json's content")


def _options(args):
    from .census import CensusOptions

    return CensusOptions(instances=args.instances, starts=args.starts, seed=args.seed, scales=args.scales,
                         gd_runs=args.gd_runs, figure1_runs=args.figure1_runs, budget=args.budget,
                         min_instances=args.min_instances, chunk_seconds=args.chunk_seconds,
                         epsnet_max_n=args.epsnet_max_n, solver={"gd_steps": args.gd_steps})


def census_command(grid: str, opts) -> str:
    """The command that makes a census with these options, every option written out."""
    sc = ",".join(f"{v:g}" for v in opts.scales)
    return (f'python -m landscape census --grid "{grid}" --instances {opts.instances} --starts {opts.starts} '
            f"--seed {opts.seed} --gd-runs {opts.gd_runs} --figure1-runs {opts.figure1_runs} "
            f"--gd-steps {opts.solver.get('gd_steps', 20000)} --scales {sc} --budget {opts.budget:g} "
            f"--min-instances {opts.min_instances} --chunk-seconds {opts.chunk_seconds:g} "
            f"--epsnet-max-n {opts.epsnet_max_n} --out OUT")


def _cell_path(folder: str, d: int, k: int, T: int) -> str:
    return os.path.join(folder, "cells", f"d{d}_k{k}_T{T}.jsonl")


def _open_folder(folder: str, header: dict) -> None:
    """Write ``plan.json`` (atomically), or check that an existing one was made with the same options and plan."""
    from . import store

    if os.path.exists(folder) and not os.path.isdir(folder):
        raise ProblemError(f"--out {folder!r} exists and is not a folder")
    path = os.path.join(folder, "plan.json")
    if os.path.exists(path):
        try:
            with open(path, encoding="utf-8") as fh:
                old = json.load(fh)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ProblemError(f"{path} is not valid JSON ({exc}); use another --out") from None
        new = json.loads(json.dumps(header))  # as stored (tuples become lists)
        diff = sorted(key for key in ("grid", "options", "plan") if old.get(key) != new[key])
        if diff:
            raise ProblemError(f"{folder} holds a census made with other arguments (differing: {diff}); use "
                               "another --out or the same arguments to resume")
        return
    store.atomic_write_text(path, json.dumps(header, indent=1) + "\n")


def _cmd_census(args) -> int:
    from tqdm import tqdm

    from . import census, fanout, store

    if args.scheduler is not None and args.workers is not None:
        raise ProblemError("give either --workers (local processes) or --scheduler (a Dask cluster), not both")
    if args.scheduler is not None and not args.scheduler.strip():
        raise ProblemError("--scheduler must be an address such as tcp://host:8786, got an empty string")
    opts = _options(args)
    cells = census.parse_grid(args.grid)
    rows = census.plan(cells, opts)
    header = {"grid": args.grid, "options": asdict(opts), "plan": rows, "command": census_command(args.grid, opts)}
    if args.dry_run:
        print(json.dumps({"plan": rows, "planned_core_seconds": sum(r["instances"] * r["seconds_per_instance"]
                                                                    for r in rows)}, indent=1))
        return 0
    _open_folder(args.out, header)
    done = {}
    for r in rows:
        if r["instances"]:
            cfg = census.cell_config(r["d"], r["k"], r["T"], opts)
            done[(r["d"], r["k"], r["T"])] = store.open_run(_cell_path(args.out, r["d"], r["k"], r["T"]), cfg)
    specs = census.chunk_specs(rows, done, opts)
    total = sum(len(s["indices"]) for s in specs)
    t0, n = time.perf_counter(), 0
    started = time.strftime("%Y-%m-%dT%H:%M:%S")
    try:
        with tqdm(total=total, desc="instances", unit="inst", disable=None) as bar:
            for recs in fanout.run_all(specs, workers=args.workers, scheduler=args.scheduler, fn=census.run_chunk):
                for rec in recs:
                    cfg = rec["config"]
                    store.append(_cell_path(args.out, cfg["d"], cfg["k"], cfg["T"]), rec)
                n += len(recs)
                bar.update(len(recs))
    except KeyboardInterrupt:
        _log_run(args, started, t0, n, interrupted=True)
        print(f"interrupted: {n} instances finished in this run are saved in {args.out}; run the same command to "
              "resume", file=sys.stderr)
        return 130
    _log_run(args, started, t0, n, interrupted=False)
    print(json.dumps({"out": args.out, "finished": n, "left": total - n,
                      "seconds": round(time.perf_counter() - t0, 3)}))
    return 0


def _log_run(args, started: str, t0: float, finished: int, *, interrupted: bool) -> None:
    """Append one line about this invocation to ``runs.jsonl`` (its wall time counts towards the census's)."""
    from . import store

    line = {"started": started, "seconds": round(time.perf_counter() - t0, 3), "finished": finished,
            "interrupted": interrupted, "workers": args.workers, "scheduler": args.scheduler,
            "cpu_count": os.cpu_count(), "loadavg": list(os.getloadavg())}
    os.makedirs(args.out, exist_ok=True)
    store.append(os.path.join(args.out, "runs.jsonl"), line)


def _cmd_summary(args) -> int:
    from . import census_report, store

    folder = args.folder
    path = os.path.join(folder, "plan.json")
    if not os.path.isfile(path):
        raise ProblemError(f"{folder!r} is not a census folder (no plan.json; make one with python -m landscape "
                           "census --out FOLDER)")
    with open(path, encoding="utf-8") as fh:
        try:
            header = json.load(fh)
        except json.JSONDecodeError as exc:
            raise ProblemError(f"{path} is not valid JSON ({exc.msg})") from None
    cells = []
    for row in header["plan"]:
        p = _cell_path(folder, row["d"], row["k"], row["T"])
        recs = store.load(p) if os.path.isfile(p) and os.path.getsize(p) else []
        cells.append(census_report.cell_summary(recs, row))
    runs = []
    if os.path.isfile(os.path.join(folder, "runs.jsonl")):
        with open(os.path.join(folder, "runs.jsonl"), encoding="utf-8") as fh:
            runs = [json.loads(line) for line in fh if line.strip()]
    out = args.out or folder
    result = {"command": header["command"].replace("--out OUT", f"--out {folder}"),
              "summary_command": f"python -m landscape census-summary {folder} --out {out}",
              "options": header["options"], "grid": header["grid"],
              "wall_seconds": round(sum(r["seconds"] for r in runs), 1), "invocations": len(runs),
              "cells": cells}
    os.makedirs(out, exist_ok=True)
    store.atomic_write_text(os.path.join(out, "census.json"), json.dumps(result, indent=1) + "\n")
    head = (f"Census of spurious minima. Made by `{result['command']}` ({len(runs)} invocations, "
            f"{result['wall_seconds']:.0f} s of wall time in all), summarised by `{result['summary_command']}`. "
            "Fractions: k/n (percent, 95% Wilson interval); 0/n states the upper bound that zero implies.")
    store.atomic_write_text(os.path.join(out, "census.md"), census_report.markdown(cells, head))
    for key, name, title in (
            ("instances_with_certified_spurious", "census_instances.png",
             "instances with a certified spurious local minimum (unit: instance)"),
            ("gd_small.spurious_certified", "census_gd_small.png",
             "gradient descent from small starts ending at a certified spurious minimum (unit: run)"),
            ("gd_figure1.spurious_certified", "census_gd_figure1.png",
             "gradient descent from Figure 1's initialisation ending at a certified spurious minimum (unit: run)")):
        census_report.heat_maps(cells, os.path.join(out, name), key, title)
    if args.json:
        print(json.dumps(result))
    else:
        print(census_report.markdown(cells, head))
    return 0


#: handlers of the subcommands added by :func:`add_parsers`
HANDLERS = {"census": _cmd_census, "census-summary": _cmd_summary}
