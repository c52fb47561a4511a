"""Run mutmut on the modules configured in pyproject.toml ([tool.mutmut]) and write results/mutation/report.json.

Usage (from the repository root; docs/mutation.md)::

    python tests/mutation_report.py run                      # every module, one mutmut call each, then the report
    python tests/mutation_report.py run theory.checks        # one module (a chunk; results add up in mutants/)
    python tests/mutation_report.py run --redo survived      # re-test only the survivors (after adding tests)
    python tests/mutation_report.py run --batch 100 --lock L  # chunks of 100 mutants, each holding the file lock L
    python tests/mutation_report.py report                   # the report from what mutants/ holds

mutmut keeps its state in ``mutants/`` (one ``.meta`` file of exit codes per module), so chunks run at different
times add up, and an interrupted module resumes with ``--redo pending`` (the default): mutants with a result are
not run again. Each mutant runs only the tests that reach the mutated function, fastest first, stopping at the
first failure. Score = (killed + timeout) / (mutants - skipped - not yet checked), as mutmut's own badge counts it.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

OUT = Path("results/mutation/report.json")
TIMES = Path("mutants/chunk_seconds.json")
#: mutmut exit code -> status (mutmut.stats.status_by_exit_code, kept here so the report needs no private import)
STATUS = {1: "killed", 3: "killed", 0: "survived", 5: "no_tests", 33: "no_tests", 34: "skipped", 36: "timeout",
          -24: "timeout", 24: "timeout", 152: "timeout", 255: "timeout", -11: "segfault", -9: "segfault",
          37: "caught_by_type_check", 2: "interrupted", None: "not_checked"}
COUNTS = ("killed", "survived", "timeout", "no_tests", "suspicious", "segfault", "skipped", "interrupted",
          "caught_by_type_check", "not_checked")


def _meta_files() -> dict[str, Path]:
    """module name -> its mutmut meta file."""
    return {str(p.relative_to("mutants"))[:-len(".py.meta")].replace(os.sep, "."): p
            for p in sorted(Path("mutants").rglob("*.py.meta"))}


def _modules_configured() -> list[str]:
    import tomllib

    from fnmatch import fnmatch

    cfg = tomllib.loads(Path("pyproject.toml").read_text())["tool"]["mutmut"]
    files = sorted(str(p) for src in cfg["source_paths"] for p in Path(src).rglob("*.py"))
    return [f[:-3].replace("/", ".") for f in files if any(fnmatch(f, pat) for pat in cfg["only_mutate"])
            and not f.endswith("__init__.py")]


def _exit_codes(module: str) -> dict:
    path = _meta_files().get(module)
    return json.loads(path.read_text())["exit_code_by_key"] if path else {}


def _mutmut(args: list[str], max_children: int) -> int:
    """One ``mutmut run`` (its progress output goes to mutants/mutmut-run.log); BLAS pinned to one thread."""
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONHASHSEED="0")
    exe = Path(sys.executable).with_name("mutmut")
    Path("mutants").mkdir(exist_ok=True)
    with open("mutants/mutmut-run.log", "a") as log:
        return subprocess.call([str(exe), "run", "--max-children", str(max_children), *args], env=env, stdout=log,
                               stderr=subprocess.STDOUT)


def _chunks(module: str, redo: str, batch: int, sample: int = 0) -> list[list[str]]:
    codes = _exit_codes(module)
    if not codes:
        return [[f"{module}.*"]]  # not generated yet: mutmut makes them (every module's) and runs this module's
    want = {"pending": (None,), "survived": (0, 5, 33, None), "all": tuple(set(codes.values()))}[redo]
    names = sorted(k for k, v in codes.items() if v in want)
    if sample and sample < len(names):  # a seeded random sample, for an estimate of a module's score
        import random

        names = sorted(random.Random(f"{module}:{sample}").sample(names, sample))
    size = batch or len(names) or 1
    return [names[i:i + size] for i in range(0, len(names), size)]


def run(modules: list[str], redo: str, max_children: int, batch: int = 0, lock: str | None = None,
        sample: int = 0) -> None:
    import fcntl

    times = json.loads(TIMES.read_text()) if TIMES.exists() else {}
    for module in modules or _modules_configured():
        chunks = _chunks(module, redo, batch, sample)
        if not chunks:
            print(f"{module}: nothing to run ({redo})")
        for names in chunks:
            with open(lock or os.devnull, "a") as held:
                if lock:
                    fcntl.flock(held, fcntl.LOCK_EX)  # released when the file closes
                start = time.perf_counter()
                rc = _mutmut(names, max_children)
                seconds = time.perf_counter() - start
            times[module] = round(times.get(module, 0.0) + seconds, 1)  # all chunks since mutants/ was made
            Path("mutants").mkdir(exist_ok=True)
            TIMES.write_text(json.dumps(times, indent=1))
            print(f"{module}: {len(names)} mutant names, mutmut exit {rc}, {seconds:.1f} s")
    report()


def _survivor(name: str, path: str) -> dict:
    from mutmut.mutation.diff_apply import get_diff_for_mutant

    diff = [ln for ln in get_diff_for_mutant(name, path=path).splitlines()
            if ln[:1] in "+-" and not ln.startswith(("+++", "---"))]
    return {"name": name, "diff": diff}


def report(out: Path = OUT) -> dict:
    import mutmut

    times = json.loads(TIMES.read_text()) if TIMES.exists() else {}
    modules = {}
    for module in _modules_configured():
        codes = _exit_codes(module)
        c = dict.fromkeys(COUNTS, 0)
        for v in codes.values():
            c[STATUS.get(v, "suspicious")] += 1
        tested = len(codes) - c["skipped"] - c["not_checked"]
        path = module.replace(".", "/") + ".py"
        modules[module] = {"mutants": len(codes), **c, "complete": bool(codes) and c["not_checked"] == 0,
                           "score": round((c["killed"] + c["timeout"]) / tested, 4) if tested else None,
                           "seconds": times.get(module),
                           "survivors": [_survivor(k, path) for k, v in sorted(codes.items())
                                         if STATUS.get(v) in ("survived", "no_tests", "suspicious")]}
    total = {key: sum(m[key] for m in modules.values()) for key in ("mutants",) + COUNTS}
    tested = total["mutants"] - total["skipped"] - total["not_checked"]
    total["score"] = round((total["killed"] + total["timeout"]) / tested, 4) if tested else None
    total["seconds"] = round(sum(t for t in times.values()), 1)
    data = {"tool": f"mutmut {mutmut.__version__}", "command": "python tests/mutation_report.py run",
            "score": "(killed + timeout) / (mutants - skipped - not_checked)", "total": total, "modules": modules}
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=1) + "\n")
    tmp.replace(out)
    for name, m in modules.items():
        print(f"{name:32s} {m['killed']:5d} killed {m['survived']:4d} survived {m['timeout']:3d} timeout "
              f"{m['no_tests']:3d} no tests {m['not_checked']:4d} unchecked  score {m['score']}")
    print(f"total: {total['killed']} killed of {total['mutants']}, score {total['score']}; wrote {out}")
    return data


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="run mutmut module by module, then write the report")
    r.add_argument("modules", nargs="*", help="dotted module names (default: every configured module)")
    r.add_argument("--redo", choices=("pending", "survived", "all"), default="pending",
                   help="which mutants of a module already generated to run: not yet run (default), every one not "
                        "killed (survived, no tests or not yet run), or all")
    r.add_argument("--sample", type=int, default=0, help="run only a seeded random sample of this many of them")
    r.add_argument("--max-children", type=int, default=2, help="mutants tested in parallel (default 2)")
    r.add_argument("--batch", type=int, default=0, help="mutants per mutmut call (default 0: a whole module)")
    r.add_argument("--lock", help="a file to hold an exclusive lock on during each mutmut call (to share a machine)")
    sub.add_parser("report", help="write results/mutation/report.json from mutants/")
    args = parser.parse_args(argv)
    if args.cmd == "run":
        if args.max_children < 1:
            parser.error(f"--max-children must be >= 1, got {args.max_children}")
        if args.batch < 0:
            parser.error(f"--batch must be >= 0, got {args.batch}")
        unknown = sorted(set(args.modules) - set(_modules_configured()))
        if unknown:
            parser.error(f"not configured in [tool.mutmut] of pyproject.toml: {', '.join(unknown)}")
        run(args.modules, args.redo, args.max_children, args.batch, args.lock, max(args.sample, 0))
    else:
        report()
    return 0


if __name__ == "__main__":
    sys.exit(main())
