"""The GPU validation run: one script, under 8 minutes on one H100 / H200, results under ``$OUT`` (or ``--out``).

1. Training-step throughput (``benchmarks/llm_speed.py``) at roberta-large shapes (random weights, 355M
   parameters), bf16 autocast, T = 10 tasks, 2 samples x 20 candidates x 128 tokens per task per round: SR,
   Meta-LoRA batched (``llm.multilora``), Meta-LoRA sequential (peft, one task per step). On running out of GPU
   memory the samples per task are halved and the measurement repeated (recorded).
2. The comparison of ``llm table`` (the ``cpu`` preset's protocol: bi-encoder, controls, validation-selected
   epochs, seed-level statistics) at GPU size on the bundled MiniLM and chitchat tasks (``python -m llm bundle
   --out bundle``; sizes: ``llm.bundle.GPU_OVERRIDES``: the whole encoder trained, 8 retraining speakers x 96
   samples, 32 test speakers x 16 fine-tuning + 8 validation + 24 scored items, 10 seeds).

Writes ``gpu_validation.json`` (everything: card, library versions, seeds, sizes, timings, ratios, the table),
``gpu_validation.md`` (a short report), and the table's ``table.md`` / ``table.json`` / ``accuracy.png``.
Checkpoints of the comparison go to a temporary folder (``--work``), not to ``$OUT``.

On the GPU machine (the bundle travels as an ignored folder)::

    python -m llm bundle --out bundle                                   # here, once (needs the packages)
    # device run, carry ["bundle"]:
    python3 benchmarks/gpu_validation.py --bundle bundle

Tried on the CPU first (tiny sizes: a 2-layer random RoBERTa for the throughput part, the smoke task set)::

    python benchmarks/gpu_validation.py --device cpu --smoke --out /tmp/gv
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.abspath(os.path.join(HERE, os.pardir)))
sys.path.insert(0, HERE)

import llm_speed  # noqa: E402

from llm.atomic import atomic_write_text  # noqa: E402
from theory.cli_contract import OneLineParser, check_output_dir, nonneg_int, run_command  # noqa: E402

BUDGET_S = 8 * 60


def _speed_args(smoke: bool, device: str, seed: int) -> argparse.Namespace:
    argv = ["--device", device, "--seed", str(seed), "--no-pipeline"]
    if smoke:
        argv += ["--model", "roberta-tiny-random", "--tasks", "3", "--samples", "1", "--pairs", "2", "--length", "16",
                 "--rounds", "1", "--warmup", "1", "--dtype", "fp32"]
    else:
        argv += ["--model", "roberta-large-random", "--tasks", "10", "--samples", "2", "--pairs", "20",
                 "--length", "128", "--rounds", "5", "--warmup", "2", "--dtype", "bf16"]
    args = llm_speed.parser().parse_args(argv)
    llm_speed._fill_defaults(args)
    return args


def run_throughput(smoke: bool, device: str, seed: int) -> dict:
    import torch

    args = _speed_args(smoke, device, seed)
    import gc

    retries = []
    while True:
        oom = None
        try:
            res = llm_speed.throughput(args)
            break
        except torch.cuda.OutOfMemoryError as exc:  # halve the round and measure again
            if args.samples == 1:
                raise
            oom = str(exc).splitlines()[0]
        gc.collect()  # outside the except block: the traceback no longer holds the models
        torch.cuda.empty_cache()
        retries.append({"samples_per_task": args.samples, "error": oom})
        args.samples //= 2
    res["oom_retries"] = retries
    return res


def _bundle_for(args, work: str) -> str:
    """The bundle to use: ``--bundle``; else ``bundle/`` beside the repository if it is there; else one made now."""
    from llm.bundle import make_bundle

    preset = "smoke" if args.smoke else "gpu"
    if args.bundle:
        return args.bundle
    default = os.path.join(HERE, os.pardir, "bundle")
    if os.path.isfile(os.path.join(default, "bundle.json")):
        with open(os.path.join(default, "bundle.json"), encoding="utf-8") as fh:
            if json.load(fh).get("preset") == preset:
                return default
    path = os.path.join(work, "bundle")
    make_bundle(path, preset=preset)  # needs the packaged MiniLM, chitchat-dataset and datasets
    return path


def run_comparison(args, work: str) -> dict:
    from llm.bundle import bundle_config, bundle_splits, load_bundle_tasks, verify_bundle
    from llm.table import run_table

    bundle = _bundle_for(args, work)
    manifest = verify_bundle(bundle)
    preset = manifest["preset"]
    if preset != ("smoke" if args.smoke else "gpu"):
        raise SystemExit(f"gpu_validation: the bundle at {bundle} holds the {preset!r} task set; "
                         f"{'--smoke' if args.smoke else 'the GPU run'} needs "
                         f"{'smoke' if args.smoke else 'gpu'} (python -m llm bundle --preset ...)")
    cfg = bundle_config(preset).replace(model=os.path.join(os.path.abspath(bundle), "model"),
                                        seeds=tuple(args.seeds) if args.seeds else bundle_config(preset).seeds)
    t0 = time.perf_counter()
    doc = run_table(cfg, os.path.join(work, "table"), tasks=load_bundle_tasks(bundle), device=args.device,
                    progress=False, splits=bundle_splits(bundle, cfg, device=args.device),
                    log=lambda *a: print(*a, file=sys.stderr, flush=True))
    doc["wall_s"] = time.perf_counter() - t0
    doc["bundle"] = {"path": os.path.abspath(bundle), "preset": preset, "mib": manifest["total_bytes"] / 2**20}
    return doc


def _markdown(res: dict) -> str:
    lines = [f"# GPU validation run ({'CPU smoke try-out' if res['smoke'] else 'full'})", "",
             f"- card: {res['device_name']}", f"- date: {res['date']}",
             "- versions: " + ", ".join(f"{k} {v}" for k, v in res["versions"].items()),
             f"- seed (throughput): {res['seed']}; table seeds: {res.get('table', {}).get('seeds')}",
             f"- wall time: {res['wall_s']:.0f} s (budget {BUDGET_S} s)", ""]
    th = res.get("throughput")
    if th:
        s = th["sizes"]
        lines += [f"## Training-step throughput: {s['model']} ({s['parameters'] / 1e6:.0f}M parameters), "
                  f"T = {s['tasks']}, {s['samples_per_task']} samples x {s['pairs_per_sample']} pairs x "
                  f"{s['tokens_per_pair']} tokens per task, {s['dtype']}", "",
                  "| schedule | examples/s | s per round | optimiser steps per round |", "|---|---:|---:|---:|"]
        for r in th["rows"]:
            lines.append(f"| {r['schedule']} | {r['examples_per_s']:.1f} | {r['seconds_per_round']:.3f} | "
                         f"{r['optimizer_steps_per_round']} |")
        lines += [""] + [f"- {k}: {v:.3f}" for k, v in th["ratios"].items()]
        lines += [f"- targets: {th['targets']}; met: {th['meets_targets']}", ""]
    tb = res.get("table")
    if tb:
        from llm.report import to_markdown

        c = tb["config"]
        lines += [f"## The comparison at {'smoke' if res['smoke'] else 'GPU'} size (bundled MiniLM, chitchat; "
                  f"Meta-LoRA schedule {tb['schedule']})", "",
                  f"{len(tb['retrain_tasks'])} retraining tasks x {c['retrain_samples']} samples, "
                  f"{len(tb['tasks'])} test tasks x {c['test_train_samples']} fine-tuning + {c['validation_samples']} "
                  f"validation + {c['heldout_samples']} scored items, {c['retrain_epochs']} retraining and "
                  f"{c['finetune_epochs']} fine-tuning epochs, seeds {tb['seeds']}; {tb['wall_s']:.0f} s.", "",
                  to_markdown(tb)]
    return "\n".join(lines) + "\n"


def parser() -> argparse.ArgumentParser:
    p = OneLineParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=os.environ.get("OUT"), help="result folder (default: $OUT)")
    p.add_argument("--device", default=None, help="cuda (default when present) or cpu")
    p.add_argument("--smoke", action="store_true", help="tiny sizes (for the CPU try-out and the test)")
    p.add_argument("--bundle", default=None, help="bundle folder (default: ./bundle if it holds the right preset, "
                                                  "else one is made in --work)")
    p.add_argument("--work", default=None, help="scratch folder for checkpoints (default: a temporary folder)")
    p.add_argument("--seed", type=nonneg_int, default=0, help="seed of the throughput benchmark")
    p.add_argument("--seeds", type=nonneg_int, nargs="+", default=None, help="override the table's seeds")
    p.add_argument("--skip", choices=["throughput", "table"], action="append", default=[],
                   help="leave a part out")
    return p


def main(argv=None) -> int:
    """Exit status 0, 2 on bad input (before any work), 130 on Ctrl-C (theory.cli_contract)."""
    return run_command(_main, parser().parse_args(argv))


def _main(args) -> int:
    import torch

    if not args.out:
        print("gpu_validation: no --out and $OUT is not set", file=sys.stderr)
        return 2
    check_output_dir("--out", args.out)
    if args.work is not None:
        check_output_dir("--work", args.work)
    if args.device is None:
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("gpu_validation: --device cuda but CUDA is not available", file=sys.stderr)
        return 2
    if args.device == "cpu" and not args.smoke:
        print("gpu_validation: the full run needs a GPU; use --smoke on the CPU", file=sys.stderr)
        return 2
    os.makedirs(args.out, exist_ok=True)
    t0 = time.perf_counter()
    threads = llm_speed.pin_threads(2 if args.device == "cpu" else min(8, os.cpu_count() or 1))
    res = {"smoke": args.smoke, "device": args.device, "device_name": llm_speed.device_name(args.device),
           "versions": llm_speed._versions(), "seed": args.seed, "threads": threads,
           "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "command": " ".join(["gpu_validation.py"] + sys.argv[1:]),
           "timings_s": {}}
    work = args.work or tempfile.mkdtemp(prefix="gpu-validation-")
    try:
        if "throughput" not in args.skip:
            t = time.perf_counter()
            res["throughput"] = run_throughput(args.smoke, args.device, args.seed)
            res["timings_s"]["throughput"] = time.perf_counter() - t
            print(llm_speed.format_text(dict(res, **res["throughput"])), file=sys.stderr, flush=True)
        if "table" not in args.skip:
            t = time.perf_counter()
            res["table"] = run_comparison(args, work)
            res["timings_s"]["table"] = time.perf_counter() - t
            for name in ("table.md", "table.json", "accuracy.png"):
                src = os.path.join(work, "table", name)
                if os.path.isfile(src):
                    shutil.copyfile(src, os.path.join(args.out, name))
    finally:
        res["wall_s"] = time.perf_counter() - t0
        res["within_budget"] = res["wall_s"] <= BUDGET_S
        from llm.report import json_ready

        atomic_write_text(os.path.join(args.out, "gpu_validation.json"),
                      json.dumps(json_ready(res), indent=1, default=str) + "\n")
        atomic_write_text(os.path.join(args.out, "gpu_validation.md"), _markdown(res))
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)
    print(json.dumps({"out": os.path.abspath(args.out), "wall_s": round(res["wall_s"], 1),
                      "ratios": res.get("throughput", {}).get("ratios"),
                      "table_accuracy": {r["label"]: r["accuracy"] for r in res.get("table", {}).get("rows", [])}}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
