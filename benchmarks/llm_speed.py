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

Data pipeline (``--pipeline``): 10,000 samples of 20 candidates built from chitchat turns (seeded), tokenised by
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
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), os.pardir)))

from llm.atomic import atomic_write_text  # noqa: E402
from theory.cli_contract import (OneLineParser, check_output_file, nonneg_int, positive_int,  # noqa: E402
                                 run_command)
from theory.problem import ProblemError  # noqa: E402

SCHEDULES = ("sr", "meta-batched", "meta-sequential")
# Not a Meta-LoRA schedule: one peft adapter for all examples, one step per round. The cost floor of a LoRA on
# every linear layer (what any per-task-adapter scheme pays at least), to read meta-batched's overhead against.
EXTRA_SCHEDULES = ("peft-one-adapter",)
# roberta-large's shapes (355M parameters with the classification head).
ROBERTA_LARGE = dict(vocab_size=50265, hidden_size=1024, num_hidden_layers=24, num_attention_heads=16,
                     intermediate_size=4096, max_position_embeddings=514, type_vocab_size=1, pad_token_id=1,
                     bos_token_id=0, eos_token_id=2, layer_norm_eps=1e-5)
ROBERTA_TINY = dict(ROBERTA_LARGE, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
                    vocab_size=2000)
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


# ------------------------------------------------------------------------------------------------ training steps

def _hf_model(model: str, seed: int):
    import torch
    from transformers import RobertaConfig

    from llm.models import load_hf_model

    torch.manual_seed(seed)
    if model == "roberta-large-random":
        return load_hf_model(None, config=RobertaConfig(**ROBERTA_LARGE))
    if model == "roberta-tiny-random":  # for CPU try-outs of the GPU script
        return load_hf_model(None, config=RobertaConfig(**ROBERTA_TINY))
    return load_hf_model(model)


def _encoder_parameters(net) -> int:
    """Parameters of the encoder (no heads, no LoRA tensors)."""
    from llm.config import LORA_PREFIX

    return sum(p.numel() for n, p in net.hf.base_model.named_parameters() if LORA_PREFIX not in n)


def _model_config(model: str):
    from transformers import AutoConfig, RobertaConfig

    from llm.models import resolve_model

    if model == "roberta-large-random":
        return RobertaConfig(**ROBERTA_LARGE)
    if model == "roberta-tiny-random":
        return RobertaConfig(**ROBERTA_TINY)
    return AutoConfig.from_pretrained(resolve_model(model))


def build(schedule: str, *, model: str, n_tasks: int, rank: int, alpha: float, dropout: float, seed: int,
          device: str, mode: str | None = None):
    """The cross-encoder ``Scorer`` of one schedule, every parameter trainable, on ``device``; and its AdamW."""
    import torch

    from llm.adapters import BatchedAdapters, PeftAdapters
    from llm.models import Scorer

    hf = _hf_model(model, seed)
    common = dict(kind="cross", seed=seed)
    if schedule == "sr":
        net = Scorer(hf, n_tasks=1, **common)
    elif schedule == "peft-one-adapter":
        net = Scorer(hf, n_tasks=1, make_adapters=lambda m: PeftAdapters(m, 1, rank, alpha, dropout), **common)
    else:
        cls = BatchedAdapters if schedule == "meta-batched" else PeftAdapters
        net = Scorer(hf, n_tasks=n_tasks, make_adapters=lambda m: cls(m, n_tasks, rank, alpha, dropout), **common)
    for p in net.parameters():
        p.requires_grad_(True)
    if isinstance(net.adapters, PeftAdapters):
        net.adapters.peft.base_model.set_adapter(net.adapters.names[0])
    if mode is not None and schedule == "meta-batched":
        from llm.multilora import set_mode

        set_mode(net, mode)
    net.to(device).train()
    opt = torch.optim.AdamW([p for p in net.parameters()], lr=1e-6, foreach=True)
    return net, opt


def make_round(*, n_tasks: int, samples: int, pairs: int, length: int, vocab: int, seed: int, device: str,
               token_types: bool) -> list[dict]:
    """T task batches, each ``samples`` samples x ``pairs`` pairs of ``length`` random tokens."""
    import torch

    g = torch.Generator().manual_seed(seed)
    out = []
    for t in range(n_tasks):
        p = samples * pairs
        ids = torch.randint(1000, vocab, (p, length), generator=g)
        ids[:, 0] = 101 if token_types else 0  # a [CLS] / <s> first token
        b = {"input_ids": ids, "attention_mask": torch.ones(p, length, dtype=torch.long),
             "pair_labels": (torch.arange(p) % pairs == 0).long(),
             "tasks": torch.full((samples,), t, dtype=torch.long)}
        if token_types:
            b["token_type_ids"] = torch.zeros(p, length, dtype=torch.long)
        out.append({k: v.to(device) for k, v in b.items()})
    return out


def _concat(batches: list[dict]) -> dict:
    import torch

    return {k: torch.cat([b[k] for b in batches]) for k in batches[0]}


def _step(net, opt, batch: dict, *, single_task: bool, autocast):
    """One optimiser step of the per-pair loss over a batch of ``B`` samples x ``K`` pairs (true pair first)."""
    import torch

    b, k = batch["tasks"].shape[0], batch["input_ids"].shape[0] // batch["tasks"].shape[0]
    inputs = {key: batch[key] for key in ("input_ids", "attention_mask", "token_type_ids") if key in batch}
    with autocast():
        feats = net(inputs, batch["tasks"].repeat_interleave(k), int(batch["tasks"][0]) if single_task else None)
    cand = torch.arange(b * k, device=feats.device).reshape(b, k)
    loss = net.loss(feats.float(), {"cand": cand, "labels": torch.zeros(b, dtype=torch.long, device=feats.device)})
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    return float(loss.detach())


def run_round(schedule: str, net, opt, round_batches: list[dict], *, autocast, device: str) -> float:
    """Seconds for one round of ``schedule``."""
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    if schedule == "meta-sequential":
        for b in round_batches:
            _step(net, opt, b, single_task=True, autocast=autocast)
    else:
        b = _concat(round_batches) if len(round_batches) > 1 else round_batches[0]
        if schedule in ("sr", "peft-one-adapter"):
            b = dict(b, tasks=b["tasks"].new_zeros(b["tasks"].shape))
        _step(net, opt, b, single_task=False, autocast=autocast)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def throughput(args) -> dict:
    import torch

    device = args.device
    if device.startswith("cuda") and args.dtype == "bf16":
        def autocast():
            return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    elif device == "cpu" and args.dtype == "bf16":
        def autocast():
            return torch.autocast(device_type="cpu", dtype=torch.bfloat16)
    else:
        autocast = contextlib.nullcontext
    schedules = list(args.schedules)
    kw = dict(model=args.model, n_tasks=args.tasks, rank=args.rank, alpha=args.alpha, dropout=args.dropout,
              seed=args.seed, device=device)
    names = list(schedules)
    if args.compare_modes:
        from llm.multilora import MODES

        names += [f"meta-batched[{mode}]" for mode in MODES]

    def make(name):
        if name.startswith("meta-batched["):
            return build("meta-batched", mode=name[len("meta-batched["):-1], **kw)
        return build(name, **kw)

    config = _model_config(args.model)
    vocab = config.vocab_size
    token_types = getattr(config, "type_vocab_size", 1) > 1
    n_params = None
    batches = make_round(n_tasks=args.tasks, samples=args.samples, pairs=args.pairs, length=args.length,
                         vocab=vocab, seed=args.seed, device=device, token_types=token_types)
    times: dict[str, list[float]] = {k: [] for k in names}
    peaks: dict[str, float] = {}

    def sched_of(name):
        return "meta-batched" if name.startswith("meta-batched") else name

    if device.startswith("cuda"):
        # The GPU is not shared: one model at a time (memory), warm-up then the timed rounds.
        for name in names:
            torch.cuda.reset_peak_memory_stats()
            net, opt = make(name)
            n_params = n_params or _encoder_parameters(net)
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
        n_params = _encoder_parameters(nets[names[0]][0])
        for rep in range(args.warmup + args.rounds):
            for name, (net, opt) in nets.items():
                dt = run_round(sched_of(name), net, opt, batches, autocast=autocast, device=device)
                if rep >= args.warmup:
                    times[name].append(dt)
    examples = args.tasks * args.samples * args.pairs
    rows = []
    for name, ts in times.items():
        med = statistics.median(ts)
        rows.append({"schedule": name, "examples_per_s": examples / med, "seconds_per_round": med,
                     "seconds_all_rounds": ts, "optimizer_steps_per_round": args.tasks if name == "meta-sequential"
                     else 1})
    by = {r["schedule"]: r for r in rows}
    ratios = {}
    if "sr" in by and "meta-batched" in by:
        ratios["batched_over_sr_step_time"] = by["meta-batched"]["seconds_per_round"] / by["sr"]["seconds_per_round"]
    if "peft-one-adapter" in by and "sr" in by:
        ratios["peft_one_adapter_over_sr_step_time"] = (by["peft-one-adapter"]["seconds_per_round"]
                                                        / by["sr"]["seconds_per_round"])
    if "meta-sequential" in by and "meta-batched" in by:
        ratios["batched_over_sequential_throughput"] = (by["meta-batched"]["examples_per_s"]
                                                        / by["meta-sequential"]["examples_per_s"])
    if args.compare_modes:
        from llm.multilora import MODES

        base = by[f"meta-batched[{MODES[0]}]"]["seconds_per_round"]
        for mode in MODES[1:]:
            ratios[f"mode_{mode}_over_{MODES[0]}_step_time"] = by[f"meta-batched[{mode}]"]["seconds_per_round"] / base
    kind = "cuda" if device.startswith("cuda") else "cpu"
    targets = TARGETS[kind]
    verdict = {}
    if "batched_over_sr_step_time" in ratios:
        verdict["batched_step_time_within_target"] = (ratios["batched_over_sr_step_time"]
                                                      <= targets["batched_over_sr_step_time_max"])
    if "batched_over_sequential_throughput" in ratios:
        verdict["batched_over_sequential_meets_target"] = (ratios["batched_over_sequential_throughput"]
                                                           >= targets["batched_over_sequential_throughput_min"])
    peak = peaks or None
    return {"rows": rows, "ratios": ratios, "targets": targets, "meets_targets": verdict,
            "sizes": {"model": args.model, "parameters": n_params, "tasks": args.tasks,
                      "samples_per_task": args.samples, "pairs_per_sample": args.pairs, "tokens_per_pair": args.length,
                      "examples_per_round": examples, "rank": args.rank, "alpha": args.alpha,
                      "dropout": args.dropout, "dtype": args.dtype, "rounds": args.rounds, "warmup": args.warmup,
                      "default_multilora_mode": _default_mode()},
            "peak_gpu_memory_gib_per_schedule": peak}


def _default_mode() -> str:
    from llm import multilora

    return multilora.DEFAULT_MODE


# ------------------------------------------------------------------------------------------------- data pipeline

def _pipeline_samples(n: int, seed: int):
    """``n`` samples (context of 3 turns, the true next turn + 19 turns of other conversations), from chitchat."""
    import numpy as np

    from llm.data import Sample, read_chitchat

    convs = [c for c in read_chitchat() if len(c.turns) >= 4]
    rng = np.random.default_rng(seed)
    pool = [(i, t.text) for i, c in enumerate(convs) for t in c.turns]
    out = []
    for _ in range(n):
        ci = int(rng.integers(len(convs)))
        conv = convs[ci]
        ti = int(rng.integers(3, len(conv.turns)))
        negs = []
        while len(negs) < 19:
            j, text = pool[int(rng.integers(len(pool)))]
            if j != ci and text not in negs and text != conv.turns[ti].text:
                negs.append(text)
        cands = [conv.turns[ti].text] + negs
        order = rng.permutation(20)
        out.append(Sample(" ".join(t.text for t in conv.turns[ti - 3:ti]), tuple(cands[k] for k in order),
                          int(np.flatnonzero(order == 0)[0]), conv.id))
    return out


def naive_collate(rows: list[list[int]], type_rows: list[list[int]] | None, pad_id: int) -> dict:
    """The baseline: pad each pair's token list in a Python loop, element by element."""
    import torch

    width = max(len(r) for r in rows)
    ids, mask, types = [], [], []
    for p, r in enumerate(rows):
        line, m, ty = [], [], []
        for j in range(width):
            if j < len(r):
                line.append(r[j])
                m.append(1)
                ty.append(type_rows[p][j] if type_rows is not None else 0)
            else:
                line.append(pad_id)
                m.append(0)
                ty.append(0)
        ids.append(line)
        mask.append(m)
        types.append(ty)
    out = {"input_ids": torch.tensor(ids), "attention_mask": torch.tensor(mask)}
    if type_rows is not None:
        out["token_type_ids"] = torch.tensor(types)
    return out


def pipeline(args) -> dict:
    import torch

    from llm.data import Task
    from llm.models import load_tokenizer
    from llm.tokens import tokenise

    n = args.pipeline_samples
    samples = _pipeline_samples(n, args.seed)
    task = Task("bench", tuple(samples), ())
    tok = load_tokenizer("minilm")
    kw = dict(scorer="cross", max_length=args.pipeline_length, candidate_length=args.pipeline_length // 2,
              split="train")
    with tempfile.TemporaryDirectory() as cache:
        t0 = time.perf_counter()
        split = tokenise([task], tok, cache_dir=cache, **kw)
        t_tok = time.perf_counter() - t0
        t0 = time.perf_counter()
        tokenise([task], tok, cache_dir=cache, **kw)
        t_tok_warm = time.perf_counter() - t0
    pairs = n * 20
    bs = args.pipeline_batch
    order = torch.arange(n)
    store = split.store
    t0 = time.perf_counter()
    vec = None
    for i in range(0, n, bs):
        b = split.batch(order[i:i + bs])
        vec = store.inputs(b["seqs"][b["cand"].reshape(-1)])
    t_vec = time.perf_counter() - t0
    # the naive collation starts from Python lists of token ids per pair (what a per-example Dataset yields)
    ids_list = store.ids.tolist()
    types_list = store.types.tolist() if store.types is not None else None
    offs = store.offsets.tolist()
    seq_of = split.candidates.reshape(-1).tolist()
    rows = [ids_list[offs[s]:offs[s + 1]] for s in seq_of]
    type_rows = [types_list[offs[s]:offs[s + 1]] for s in seq_of] if types_list is not None else None
    t0 = time.perf_counter()
    naive = None
    for i in range(0, n, bs):
        sl = slice(i * 20, min(i + bs, n) * 20)
        naive = naive_collate(rows[sl], type_rows[sl] if type_rows else None, store.pad_id)
    t_naive = time.perf_counter() - t0
    last = order[(n - 1) // bs * bs:]
    same = bool(torch.equal(vec["input_ids"], naive["input_ids"])
                and torch.equal(vec["attention_mask"], naive["attention_mask"]))
    assert len(last) * 20 == vec["input_ids"].shape[0]
    return {"samples": n, "candidates": 20, "pairs": pairs, "tokens_per_pair_max": args.pipeline_length,
            "batch_samples": bs, "collation": "llm.tokens.Split.batch + SequenceStore.inputs",
            "tokenise_s": t_tok, "tokenise_cached_s": t_tok_warm, "tokenise_examples_per_s": pairs / t_tok,
            "collate_vectorised_examples_per_s": pairs / t_vec, "collate_naive_examples_per_s": pairs / t_naive,
            "collate_speedup": t_naive / t_vec, "collate_outputs_equal": same,
            "pipeline_examples_per_s": pairs / (t_tok + t_vec),
            "pipeline_naive_examples_per_s": pairs / (t_tok + t_naive)}


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
