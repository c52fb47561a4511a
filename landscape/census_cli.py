"""The ``census`` and ``census-summary`` subcommands of ``python -m landscape`` (:mod:`landscape.census`).

Examples::

    python -m landscape census --grid "d=3,4;k=1;T=3" --instances 50 --out runs/census-small/ --workers 2
    python -m landscape census --out runs/census/ --scheduler tcp://10.0.0.1:8786
    python -m landscape census-summary runs/census/ --out results/census

Folder of a census: ``plan.json`` (options, grid, plan per cell, the command), ``cells/d{d}_k{k}_T{T}.jsonl`` (one
record per finished instance, appended and fsynced as it finishes) and ``runs.jsonl`` (one line per invocation:
wall time, instances finished, interrupted or not), all strict JSON like ``census.json`` (:mod:`theory.strict_json`;
the cell records as :mod:`landscape.store` describes). Running the same command again resumes: finished instances are
skipped, nothing finished is lost. Options are validated before any work (exit status 2, one message naming the
value); Ctrl-C stops with one line and exit status 130, a dead local worker with one line and exit status 3,
both keeping every finished instance (:mod:`theory.cli_contract`, docs/robustness.md). Only the standard library is
imported here at import time (the parser is built before the Ctrl-C handler is in place).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from dataclasses import asdict

from theory.strict_json import dumps

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
                   help='cells, e.g. "d=3,4,5;k=1,2;T=3,4"; a key left out keeps its default values (default: '
                        'd=3,4,5,6,8,10,16;k=1,2;T=3,4,5,8)')
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

    s = sub.add_parser("census-summary", help="table (JSON, Markdown) and heat maps of a census folder",
                       description="Read a census folder and write census.json, census.md (one row per cell, every "
                                   "fraction with its 95% Wilson interval) and the heat maps.")
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


def _refuse(message: str):
    from theory.problem import ProblemError

    return ProblemError(message)


def _read_plan(folder: str) -> dict | None:
    """The content of ``folder/plan.json`` (None if there is none), refused unless it is a census plan: a JSON
    object with ``grid``, ``options``, ``command`` and a ``plan`` list of cells ``d, k, T, n, instances, skipped``."""
    path = os.path.join(folder, "plan.json")
    if not os.path.lexists(path):
        return None
    try:
        with open(path, "rb") as fh:
            header = json.loads(fh.read().decode("utf-8"))
    except (ValueError, RecursionError) as exc:  # not UTF-8, not JSON, nested too deep
        raise _refuse(f"{path} is not valid JSON ({getattr(exc, 'msg', None) or exc})") from None
    rows = header.get("plan") if isinstance(header, dict) else None
    ok = (isinstance(rows, list) and isinstance(header.get("options"), dict) and isinstance(header.get("grid"), str)
          and isinstance(header.get("command"), str)
          and all(isinstance(r, dict) and all(isinstance(r.get(key), int) and not isinstance(r.get(key), bool)
                                              and r[key] >= (0 if key == "instances" else 1)
                                              for key in ("d", "k", "T", "n", "instances"))
                  and (r.get("skipped") is None or isinstance(r["skipped"], str)) for r in rows))
    if not ok:
        raise _refuse(f"{path} is not a census plan (a JSON object with grid, options, command and a plan list of "
                      "cells d, k, T, n, instances, skipped)")
    return header


def _check_folder(folder: str, header: dict, rows: list[dict], opts) -> dict:
    """Read-only check of a census folder before a run: its plan (if any) was made with the same options, and each
    planned cell file holds valid records of this census. Returns the finished indices per cell."""
    from . import census, store

    old = _read_plan(folder)
    if old is not None:
        new = json.loads(dumps(header))  # as stored (tuples become lists)
        diff = sorted(key for key in ("grid", "options", "plan") if old.get(key) != new[key])
        if diff:
            raise _refuse(f"{folder} holds a census made with other arguments (differing: {diff}); use another --out "
                          "or the same arguments to resume")
    done = {}
    for r in rows:
        if r["instances"]:
            cell = (r["d"], r["k"], r["T"])
            records, _ = store.check_run(_cell_path(folder, *cell), census.cell_config(*cell, opts))
            done[cell] = {int(rec["index"]) for rec in records}
    return done


def _open_folder(folder: str, header: dict, rows: list[dict], opts) -> None:
    """Write ``plan.json`` if it is missing and repair the tails of the cell files (a line cut off by a kill)."""
    from . import census, store

    if not os.path.lexists(os.path.join(folder, "plan.json")):
        store.atomic_write_text(os.path.join(folder, "plan.json"), dumps(header, indent=1) + "\n")
    for r in rows:
        if r["instances"]:
            store.open_run(_cell_path(folder, r["d"], r["k"], r["T"]), census.cell_config(r["d"], r["k"], r["T"], opts))


def _check_memory(rows: list[dict], opts) -> None:
    """Refuse, before any work, a plan whose largest lock-step batch (a chunk's starts, each with a dense T d k x
    T d k Hessian and its factors) or list of work items does not fit in memory."""
    from theory.cli_contract import check_memory

    run = [r for r in rows if r["instances"]]
    if not run:
        return
    rows_per_batch = max(opts.starts, opts.gd_runs + opts.figure1_runs)
    big = max(run, key=lambda r: r["chunk"] * r["n"] ** 2)
    check_memory(f"--starts {opts.starts} at (d, k, T) = ({big['d']}, {big['k']}, {big['T']}) in chunks of "
                 f"{big['chunk']} instances ({big['chunk'] * rows_per_batch} stacked {big['n']} x {big['n']} "
                 f"Hessians) and {sum(r['instances'] for r in run)} planned instances (--instances, --budget)",
                 3 * 8 * big["chunk"] * rows_per_batch * big["n"] ** 2 + 2048 * sum(r["instances"] for r in run))


def _cmd_census(args) -> int:
    from theory.cli_contract import EXIT_INTERRUPTED, check_output_dir, deferred_sigint

    from . import census, fanout, store
    from .__main__ import save_as_finished

    if args.scheduler is not None and args.workers is not None:
        raise _refuse("give either --workers (local processes) or --scheduler (a Dask cluster), not both")
    if args.scheduler is not None and not args.scheduler.strip():
        raise _refuse("--scheduler must be an address such as tcp://host:8786, got an empty string")
    opts = _options(args)
    rows = census.plan(census.parse_grid(args.grid), opts)
    header = {"grid": args.grid, "options": asdict(opts), "plan": rows, "command": census_command(args.grid, opts)}
    _check_memory(rows, opts)
    check_output_dir("--out", args.out)  # also before --dry-run: a bad option is refused whatever the mode
    if args.dry_run:
        print(dumps({"plan": rows, "planned_core_seconds": sum(r["instances"] * r["seconds_per_instance"]
                                                                    for r in rows)}, indent=1))
        return 0
    done = _check_folder(args.out, header, rows, opts)  # everything is checked before anything is written
    _open_folder(args.out, header, rows, opts)
    specs = census.chunk_specs(rows, done, opts)
    total = sum(len(s["indices"]) for s in specs)
    t0, started = time.perf_counter(), time.strftime("%Y-%m-%dT%H:%M:%S")

    def save(recs: list[dict]) -> int:
        for rec in recs:
            cfg = rec["config"]
            store.append(_cell_path(args.out, cfg["d"], cfg["k"], cfg["T"]), rec)
        return len(recs)

    runs = fanout.run_all(specs, workers=args.workers, scheduler=args.scheduler, fn=census.run_chunk)
    n, stopped = save_as_finished(runs, save, total=total, saved=sum(len(v) for v in done.values()), out=args.out)
    try:
        with deferred_sigint():
            _log_run(args, started, t0, n, interrupted=stopped is not None)
    except KeyboardInterrupt:  # a Ctrl-C while the log line was written (it was written whole)
        if stopped is None:
            print(f"interrupted; every instance of this run is saved to {args.out}", file=sys.stderr)
            return EXIT_INTERRUPTED
    if stopped is not None:
        return stopped
    print(dumps({"out": args.out, "finished": n, "left": total - n,
                      "seconds": round(time.perf_counter() - t0, 3)}))
    return 0


def _log_run(args, started: str, t0: float, finished: int, *, interrupted: bool) -> None:
    """Append one line about this invocation to ``runs.jsonl`` (its wall time counts towards the census's)."""
    from . import store

    line = {"started": started, "seconds": round(time.perf_counter() - t0, 3), "finished": finished,
            "interrupted": interrupted, "workers": args.workers, "scheduler": args.scheduler,
            "cpu_count": os.cpu_count(), "loadavg": list(os.getloadavg())}
    store.append(os.path.join(args.out, "runs.jsonl"), line)


def _read_runs(folder: str) -> list[dict]:
    """The lines of ``runs.jsonl`` (a last line cut off by a kill is ignored; any other bad line is refused)."""
    path = os.path.join(folder, "runs.jsonl")
    if not os.path.isfile(path):
        return []
    with open(path, "rb") as fh:
        lines = fh.read().split(b"\n")
    runs = []
    for i, raw in enumerate(lines, 1):
        if not raw.strip():
            continue
        try:
            run = json.loads(raw.decode("utf-8"))
        except (ValueError, RecursionError):
            if i == len(lines):  # cut off while written
                continue
            raise _refuse(f"{path}: line {i} is not valid JSON") from None
        if not (isinstance(run, dict) and isinstance(run.get("seconds"), (int, float))
                and not isinstance(run["seconds"], bool) and math.isfinite(run["seconds"]) and run["seconds"] >= 0):
            raise _refuse(f"{path}: line {i} must be a JSON object with a number of seconds >= 0")
        runs.append(run)
    return runs


def _cmd_summary(args) -> int:
    from theory.cli_contract import check_output_dir, deferred_sigint

    from . import census, census_report, store

    folder = args.folder
    if args.out is not None:
        check_output_dir("--out", args.out)
    header = _read_plan(folder) if os.path.isdir(folder) else None
    if header is None:
        why = "is a file, not a census folder" if os.path.isfile(folder) else "is not a census folder (no plan.json)"
        raise _refuse(f"{folder!r} {why}; make one with python -m landscape census --out FOLDER")
    try:
        opts = census.CensusOptions(**{**header["options"], "scales": tuple(header["options"].get("scales", ()))})
    except (TypeError, ValueError) as exc:
        raise _refuse(f"{os.path.join(folder, 'plan.json')}: options: {exc}") from None
    cells = []
    for row in header["plan"]:
        p = _cell_path(folder, row["d"], row["k"], row["T"])
        recs = store.load(p) if os.path.isfile(p) and os.path.getsize(p) else []
        cfg = census.cell_config(row["d"], row["k"], row["T"], opts)
        for rec in recs:
            census_report.check_census_record(rec, f"{p}: instance {rec['index']}", cfg)
        cells.append(census_report.cell_summary(recs, row))
    runs = _read_runs(folder)
    out = args.out or folder
    result = {"command": header["command"].replace("--out OUT", f"--out {folder}"),
              "summary_command": f"python -m landscape census-summary {folder} --out {out}",
              "options": header["options"], "grid": header["grid"],
              "wall_seconds": round(sum(r["seconds"] for r in runs), 1), "invocations": len(runs),
              "cells": cells, "pooled": census_report.margins(cells)}
    head = (f"Census of spurious minima. Made by `{result['command']}` ({len(runs)} invocations, "
            f"{result['wall_seconds']:.0f} s of wall time in all), summarised by `{result['summary_command']}`. "
            "Fractions: k/n (percent, 95% Wilson interval); 0/n states the upper bound that zero implies.")
    with deferred_sigint():  # the five files are written together (each through a temporary file and a rename)
        os.makedirs(out, exist_ok=True)
        store.atomic_write_text(os.path.join(out, "census.json"), dumps(result, indent=1) + "\n")
        store.atomic_write_text(os.path.join(out, "census.md"), _markdown(cells, result["pooled"], head))
        for key, name, title in _HEAT_MAPS:
            census_report.heat_maps(cells, os.path.join(out, name), key, title)
    if args.json:
        print(dumps(result))
    else:
        print(_markdown(cells, result["pooled"], head))
    return 0


def _markdown(cells: list[dict], pooled: list[dict], head: str) -> str:
    from . import census_report

    return (census_report.markdown(cells, head) + "\nPooled over cells (counts and trials summed over the cells run; "
            "read with the table above, since the cells differ in size and in instances):\n\n"
            + census_report.margins_markdown(pooled))


_HEAT_MAPS = (
    ("instances_with_certified_spurious", "census_instances.png",
     "instances with a certified spurious local minimum (unit: instance)"),
    ("gd_small.spurious_certified", "census_gd_small.png",
     "gradient descent from small starts ending at a certified spurious minimum (unit: run)"),
    ("gd_figure1.spurious_certified", "census_gd_figure1.png",
     "gradient descent from Figure 1's initialisation ending at a certified spurious minimum (unit: run)"))


#: handlers of the subcommands added by :func:`add_parsers`
HANDLERS = {"census": _cmd_census, "census-summary": _cmd_summary}
