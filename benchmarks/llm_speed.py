"""Training-step throughput of SR, Meta-LoRA batched and Meta-LoRA sequential, and of the data pipeline.

One *round* is ``T`` tasks x ``b`` samples x ``K`` (context, candidate) pairs of ``L`` tokens (random token ids,
no padding: the worst case of a batch). The schedules process the same round:

* ``sr``: one optimiser step (AdamW) over all ``T b K`` pairs, every encoder weight and one head trained.
* ``meta-batched``: one step over all ``T b K`` pairs with ``llm.multilora`` (every pair through its own task's
  adapter and head), encoder + all adapters + all heads trained.
* ``meta-sequential``: ``T`` steps of ``b K`` pairs, one task per step, through peft named adapters (the paper's
  implementation): ``set_adapter(task t)`` then forward, backward, AdamW step.

Throughput is pairs ("examples") per second over the round, median over ``--rounds`` timed rounds after
``--warmup`` rounds; the schedules are interleaved round by round so a noisy shared machine slows them alike.
The models come from ``llm.models`` (the cross-encoder ``Scorer``) with ``llm.adapters``' ``BatchedAdapters`` /
``PeftAdapters`` and
the loss from ``Scorer.loss``: what ``python -m llm retrain --scorer cross --freeze-layers 0`` runs.

Data pipeline (``--pipeline``, ``benchmarks/llm_pipeline.py``): 10,000 samples of 20 candidates built from chitchat turns (seeded), tokenised by
``llm.tokens.tokenise`` (cross-encoder pairs; ``datasets`` map, cold cache) and collated in batches by
``Split.batch`` + ``SequenceStore.inputs`` (vectorised) and by a naive per-element Python collation written here as
the baseline.

Examples::

    python benchmarks/llm_speed.py --device cpu --json                 # MiniLM, T = 8, CPU (1 thread)
    python benchmarks/llm_speed.py --model roberta-large-random --device cuda --json   # T = 10, bf16
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), os.pardir)))

from llm.atomic import atomic_write_text  # noqa: E402
from llm_pipeline import pipeline  # noqa: E402
from llm_steps import build, encoder_parameters, make_round, model_config, run_round  # noqa: E402
from theory.cli_contract import (OneLineParser, check_output_file, nonneg_int, positive_int,  # noqa: E402
                                 run_command)
from theory.problem import ProblemError  # noqa: E402

SCHEDULES = ("sr", "meta-batched", "meta-sequential")
# Not a Meta-LoRA schedule: one peft adapter for all examples, one step per round. The cost floor of a LoRA on
# every linear layer (what any per-task-adapter scheme pays at least), to read meta-batched's overhead against.
EXTRA_SCHEDULES = ("peft-one-adapter",)
TARGETS = {"cpu": {"batched_over_sr_step_time_max": 1.3, "batched_over_sequential_throughput_min": 2.0},
           "cuda": {"batched_over_sr_step_time_max": 1.15, "batched_over_sequential_throughput_min": 3.0}}


def _versions() -> dict:
    import accelerate
    import datasets
    import peft
    import torch
    import transformers

    return {"python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__,
            "peft": peft.__version__, "accelerate": accelerate.__version__, "datasets": datasets.__version__}


def device_name(device: str) -> str:
    import torch

    if device.startswith("cuda"):
        return torch.cuda.get_device_name(torch.device(device))
    return f"cpu ({platform.processor() or platform.machine()}, {os.cpu_count()} logical cores)"


def pin_threads(n: int) -> dict:
    """torch intra-op threads and every BLAS / OpenMP pool (threadpoolctl) to ``n``; returns what is in force."""
    import torch
    from threadpoolctl import threadpool_info, threadpool_limits

    torch.set_num_threads(n)
    threadpool_limits(limits=n)
    return {"torch_threads": torch.get_num_threads(), "torch_interop_threads": torch.get_num_interop_threads(),
            "blas_pools": sorted({f"{p['internal_api']}={p['num_threads']}" for p in threadpool_info()})}



def _autocast_for(device: str, dtype: str):
    """A context-manager factory: bf16 autocast on the device when ``dtype`` is bf16, else a no-op."""
    import torch

    if dtype != "bf16":
        return contextlib.nullcontext
    kind = "cuda" if device.startswith("cuda") else "cpu"
    return lambda: torch.autocast(device_type=kind, dtype=torch.bfloat16)


def _time_rounds(names: list[str], make, batches: list[dict], args, autocast) -> tuple[dict, dict, int]:
    """Seconds of each timed round per schedule name, peak GPU memory (GiB) per name, encoder parameters."""
    import torch

    device = args.device
    times: dict[str, list[float]] = {k: [] for k in names}
    peaks: dict[str, float] = {}
    n_params = None

    def sched_of(name):
        return "meta-batched" if name.startswith("meta-batched") else name

    if device.startswith("cuda"):
        # The GPU is not shared: one model at a time (memory), warm-up then the timed rounds.
        for name in names:
            torch.cuda.reset_peak_memory_stats()
            net, opt = make(name)
            n_params = n_params or encoder_parameters(net)
            for rep in range(args.warmup + args.rounds):
                dt = run_round(sched_of(name), net, opt, batches, autocast=autocast, device=device)
                if rep >= args.warmup:
                    times[name].append(dt)
            peaks[name] = torch.cuda.max_memory_allocated() / 2**30
            del net, opt
            torch.cuda.empty_cache()
    else:
        # The CPU is shared with other work: all models built, rounds interleaved so noise hits them alike.
        nets = {name: make(name) for name in names}
        n_params = encoder_parameters(nets[names[0]][0])
        for rep in range(args.warmup + args.rounds):
            for name, (net, opt) in nets.items():
                dt = run_round(sched_of(name), net, opt, batches, autocast=autocast, device=device)
                if rep >= args.warmup:
                    times[name].append(dt)
    return times, peaks, n_params


def _ratios(by: dict, compare_modes: bool) -> dict:
    """Step-time and throughput ratios between the timed schedules (rows ``by`` schedule name)."""
    ratios = {}
    if "sr" in by and "meta-batched" in by:
        ratios["batched_over_sr_step_time"] = by["meta-batched"]["seconds_per_round"] / by["sr"]["seconds_per_round"]
    if "peft-one-adapter" in by and "sr" in by:
        ratios["peft_one_adapter_over_sr_step_time"] = (by["peft-one-adapter"]["seconds_per_round"]
                                                        / by["sr"]["seconds_per_round"])
    if "meta-sequential" in by and "meta-batched" in by:
        ratios["batched_over_sequential_throughput"] = (by["meta-batched"]["examples_per_s"]
                                                        / by["meta-sequential"]["examples_per_s"])
    if compare_modes:
        from llm.multilora import MODES

        base = by[f"meta-batched[{MODES[0]}]"]["seconds_per_round"]
        for mode in MODES[1:]:
            ratios[f"mode_{mode}_over_{MODES[0]}_step_time"] = by[f"meta-batched[{mode}]"]["seconds_per_round"] / base
    return ratios


def _verdict(ratios: dict, targets: dict) -> dict:
    """Whether each measured ratio meets its target."""
    verdict = {}
    if "batched_over_sr_step_time" in ratios:
        verdict["batched_step_time_within_target"] = (ratios["batched_over_sr_step_time"]
                                                      <= targets["batched_over_sr_step_time_max"])
    if "batched_over_sequential_throughput" in ratios:
        verdict["batched_over_sequential_meets_target"] = (ratios["batched_over_sequential_throughput"]
                                                           >= targets["batched_over_sequential_throughput_min"])
    return verdict


def throughput(args) -> dict:
    """Examples per second of each schedule over the same rounds, their ratios and the targets' verdicts."""
    device = args.device
    autocast = _autocast_for(device, args.dtype)
    kw = dict(model=args.model, n_tasks=args.tasks, rank=args.rank, alpha=args.alpha, dropout=args.dropout,
              seed=args.seed, device=device)
    names = list(args.schedules)
    if args.compare_modes:
        from llm.multilora import MODES

        names += [f"meta-batched[{mode}]" for mode in MODES]

    def make(name):
        if name.startswith("meta-batched["):
            return build("meta-batched", mode=name[len("meta-batched["):-1], **kw)
        return build(name, **kw)

    config = model_config(args.model)
    batches = make_round(n_tasks=args.tasks, samples=args.samples, pairs=args.pairs, length=args.length,
                         vocab=config.vocab_size, seed=args.seed, device=device,
                         token_types=getattr(config, "type_vocab_size", 1) > 1)
    times, peaks, n_params = _time_rounds(names, make, batches, args, autocast)
    examples = args.tasks * args.samples * args.pairs
    rows = []
    for name, ts in times.items():
        med = statistics.median(ts)
        rows.append({"schedule": name, "examples_per_s": examples / med, "seconds_per_round": med,
                     "seconds_all_rounds": ts, "optimizer_steps_per_round": args.tasks if name == "meta-sequential"
                     else 1})
    ratios = _ratios({r["schedule"]: r for r in rows}, args.compare_modes)
    targets = TARGETS["cuda" if device.startswith("cuda") else "cpu"]
    return {"rows": rows, "ratios": ratios, "targets": targets, "meets_targets": _verdict(ratios, targets),
            "sizes": {"model": args.model, "parameters": n_params, "tasks": args.tasks,
                      "samples_per_task": args.samples, "pairs_per_sample": args.pairs, "tokens_per_pair": args.length,
                      "examples_per_round": examples, "rank": args.rank, "alpha": args.alpha,
                      "dropout": args.dropout, "dtype": args.dtype, "rounds": args.rounds, "warmup": args.warmup,
                      "default_multilora_mode": _default_mode()},
            "peak_gpu_memory_gib_per_schedule": peaks or None}


def _default_mode() -> str:
    from llm import multilora

    return multilora.DEFAULT_MODE


# ---------------------------------------------------------------------------------------------------------- CLI

def parser() -> argparse.ArgumentParser:
    p = OneLineParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda if present)")
    p.add_argument("--model", default=None, help="'minilm' (packaged; CPU default) or 'roberta-large-random' "
                                                 "(roberta-large shapes, random weights; GPU default) or a path")
    p.add_argument("--tasks", type=positive_int, default=None, help="T (8 for minilm, 10 for roberta-large-random)")
    p.add_argument("--samples", type=positive_int, default=None, help="samples per task per round (default 2 / 2)")
    p.add_argument("--pairs", type=positive_int, default=None,
                   help="pairs per sample (1 true + negatives; default 5 / 20)")
    p.add_argument("--length", type=positive_int, default=None, help="tokens per pair (default 40 / 128)")
    p.add_argument("--rank", type=positive_int, default=8)
    p.add_argument("--alpha", type=float, default=16.0)
    p.add_argument("--dropout", type=float, default=0.1)
    p.add_argument("--dtype", choices=["fp32", "bf16"], default=None, help="autocast dtype (default bf16 on cuda)")
    p.add_argument("--rounds", type=positive_int, default=3, help="timed rounds per schedule (median reported)")
    p.add_argument("--warmup", type=nonneg_int, default=1)
    p.add_argument("--threads", type=positive_int, default=1,
                   help="CPU threads for torch and BLAS, pinned (default 1: the 2-core build machine is shared)")
    p.add_argument("--seed", type=nonneg_int, default=0)
    p.add_argument("--schedules", nargs="+", choices=SCHEDULES + EXTRA_SCHEDULES, default=list(SCHEDULES),
                   help="schedules to time (peft-one-adapter: one peft LoRA for all examples, the LoRA cost floor)")
    p.add_argument("--compare-modes", action="store_true", help="also time every llm.multilora mode")
    p.add_argument("--pipeline", dest="pipeline", action="store_true", default=True,
                   help="run the data-pipeline benchmark (default)")
    p.add_argument("--no-pipeline", dest="pipeline", action="store_false")
    p.add_argument("--no-throughput", dest="throughput", action="store_false", default=True)
    p.add_argument("--pipeline-samples", type=positive_int, default=10_000)
    p.add_argument("--pipeline-length", type=positive_int, default=64)
    p.add_argument("--pipeline-batch", type=positive_int, default=8, help="samples per collated batch")
    p.add_argument("--json", action="store_true", help="print the result as JSON only")
    p.add_argument("--out", default=None, help="also write the JSON result to this file (atomically)")
    return p


def _fill_defaults(args) -> None:
    import torch

    if args.device is None:
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    gpu = args.device.startswith("cuda")
    if args.model is None:
        args.model = "roberta-large-random" if gpu else "minilm"
    big = args.model.startswith("roberta-") and args.model.endswith("-random")
    defaults = dict(tasks=10 if big else 8, samples=2, pairs=20 if big else 5,
                    length=128 if big else 40, dtype="bf16" if gpu else "fp32")
    for k, v in defaults.items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    for k in ("tasks", "samples", "pairs", "length", "rounds", "threads", "pipeline_samples", "pipeline_batch"):
        if getattr(args, k) <= 0:
            raise ProblemError(f"--{k.replace('_', '-')} must be a positive integer, got {getattr(args, k)}")
    if args.device != "cpu" and not args.device.startswith("cuda"):
        raise ProblemError(f"--device must be cpu or cuda[:N], got {args.device!r}")
    if gpu and not torch.cuda.is_available():
        raise ProblemError("--device cuda but CUDA is not available")


def run(args) -> dict:
    _fill_defaults(args)
    threads = pin_threads(args.threads)
    result = {"device": args.device, "device_name": device_name(args.device), "threads": threads,
              "seed": args.seed, "versions": _versions(),
              "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "command": " ".join([os.path.basename(sys.argv[0])]
                                                                                   + sys.argv[1:])}
    if args.throughput:
        result.update(throughput(args))
    if args.pipeline:
        result["pipeline"] = pipeline(args)
    return result


def format_text(res: dict) -> str:
    lines = [f"device: {res['device_name']}  threads: {res['threads']['torch_threads']}  seed: {res['seed']}"]
    if "rows" in res:
        s = res["sizes"]
        lines.append(f"model {s['model']} ({s['parameters'] / 1e6:.1f}M params), T={s['tasks']}, "
                     f"{s['samples_per_task']} samples x {s['pairs_per_sample']} pairs x {s['tokens_per_pair']} "
                     f"tokens per task, rank {s['rank']}, {s['dtype']}")
        for r in res["rows"]:
            lines.append(f"  {r['schedule']:<24} {r['examples_per_s']:10.1f} examples/s  "
                         f"({r['seconds_per_round']:.3f} s per round of {s['examples_per_round']})")
        for k, v in res["ratios"].items():
            lines.append(f"  {k}: {v:.3f}")
        lines.append(f"  targets {res['targets']} -> {res['meets_targets']}")
    if "pipeline" in res:
        p = res["pipeline"]
        lines.append(f"pipeline: {p['samples']} samples x 20 candidates: tokenise {p['tokenise_examples_per_s']:.0f} "
                     f"examples/s; collate vectorised {p['collate_vectorised_examples_per_s']:.0f} vs naive "
                     f"{p['collate_naive_examples_per_s']:.0f} examples/s (x{p['collate_speedup']:.1f})")
    return "\n".join(lines)


def main(argv=None) -> int:
    """Exit status 0, 2 on bad input (before any timing), 130 on Ctrl-C (theory.cli_contract)."""
    return run_command(_main, parser().parse_args(argv))


def _main(args) -> int:
    if args.out is not None:
        check_output_file("--out", args.out)
    if not (0.0 <= args.dropout < 1.0) or not (args.alpha > 0 and args.alpha < float("inf")):
        raise ProblemError(f"--dropout must lie in [0, 1) and --alpha be a finite number > 0, got {args.dropout} "
                         f"and {args.alpha}")
    res = run(args)
    text = json.dumps(res, indent=2)
    if args.out:
        atomic_write_text(args.out, text + "\n")
    print(text if args.json else format_text(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
