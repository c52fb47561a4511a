"""Command line of ``llm``: ``python -m llm {retrain, finetune, table, bundle} ...`` (``--help`` on each).

Exit status: 0 success, 1 a run failed (e.g. a non-finite loss), 2 bad input (unknown model, bad rank, unreadable
or malformed data, too few candidates).
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from .config import PRESETS, LLMError, NonFiniteLossError, preset

EXIT_OK, EXIT_FAIL, EXIT_USAGE = 0, 1, 2


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preset", choices=sorted(PRESETS), default="mini",
                   help="hyperparameters and sizes: paper (Appendix C), mini (CPU, default), smoke (tests)")
    p.add_argument("--model", default=None,
                   help="'minilm' (packaged all-MiniLM-L6-v2, default), a HF name such as roberta-large, or a path")
    p.add_argument("--data", default=None,
                   help="'chitchat' (packaged, default) or a ConvAI2 ParlAI text file such as train_self_original.txt")
    p.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda with bf16 if present, else cpu)")
    p.add_argument("--retrain-epochs", type=int, default=None, help="override the preset's retraining epochs")
    p.add_argument("--finetune-epochs", type=int, default=None, help="override the preset's fine-tuning epochs")
    p.add_argument("--n-retrain-tasks", type=int, default=None, help="override T, the number of retraining tasks")
    p.add_argument("--n-test-tasks", type=int, default=None, help="override T', the number of test tasks")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: the preset's)")
    p.add_argument("--cache-dir", default=None, help="tokenisation cache (default ~/.cache/metalora/llm)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def _config(args):
    return preset(args.preset, model=args.model, data=args.data, retrain_epochs=args.retrain_epochs,
                  finetune_epochs=args.finetune_epochs, n_retrain_tasks=args.n_retrain_tasks,
                  n_test_tasks=args.n_test_tasks, threads=args.threads,
                  **({"seeds": tuple(args.seeds)} if getattr(args, "seeds", None) else {}))


def _run_retrain(args) -> int:
    from .data import load_tasks
    from .train import retrain

    cfg = _config(args)
    tasks = load_tasks(cfg)
    r = retrain(cfg, tasks, method=args.method, rank=args.rank, seed=args.seed, out_dir=args.out,
                resume=args.resume, schedule=args.schedule, device=args.device, cache_dir=args.cache_dir,
                progress=not args.no_progress)
    print(json.dumps({"run_dir": r.run_dir, "checkpoint": r.checkpoint, "method": r.method, "rank": r.rank,
                      "schedule": r.schedule, "seed": r.seed, "losses": list(r.losses), "seconds": r.seconds,
                      "tasks": [t.name for t in tasks.retrain]}))
    return EXIT_OK


def _run_finetune(args) -> int:
    from .checkpoint import atomic_write_text
    from .data import load_tasks
    from .train import finetune

    cfg = _config(args)
    tasks = load_tasks(cfg)
    out = []
    for task in tasks.test:
        f = finetune(cfg, args.encoder, task, rank=args.rank, seed=args.seed, device=args.device,
                     cache_dir=args.cache_dir, progress=not args.no_progress)
        out.append(f.to_dict())
    doc = {"encoder": args.encoder, "rank": args.rank, "seed": args.seed, "results": out,
           "average": sum(d["best"] for d in out) / len(out)}
    if args.out:
        atomic_write_text(args.out, json.dumps(doc, indent=1) + "\n")
    print(json.dumps(doc))
    return EXIT_OK


def _run_table(args) -> int:
    from .table import run_table

    cfg = _config(args)
    quiet = args.json
    doc = run_table(cfg, args.out, resume=args.resume, device=args.device, schedule=args.schedule,
                    cache_dir=args.cache_dir, progress=not args.no_progress,
                    log=(lambda *a: print(*a, file=sys.stderr)) if quiet else print)
    if args.json:
        print(json.dumps({k: doc[k] for k in ("rows", "tasks", "seeds")}))
    else:
        with open(os.path.join(args.out, "table.md"), encoding="utf-8") as fh:
            print(fh.read())
        print(f"wrote {args.out}/table.md, table.json, accuracy.png in {doc['elapsed_s']:.0f} s")
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="python -m llm", description="Meta-LoRA vs standard retraining of a pretrained encoder on "
                                                       "multi-speaker dialogue (the paper's Section 4.2, Table 1).")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = sub.add_parser("retrain", help="SR or Meta-LoRA retraining of the encoder on the T retraining tasks",
                       description="Retrain the encoder; a checkpoint (safetensors encoder, peft adapters) after "
                                   "every epoch in --out; --resume continues a killed run.")
    _common(p)
    p.add_argument("--method", choices=["sr", "meta-lora"], required=True, help="sr or meta-lora")
    p.add_argument("--rank", type=int, default=8, help="LoRA rank r of Meta-LoRA-r (> 0; ignored for sr)")
    p.add_argument("--schedule", choices=["sequential", "batched"], default=None,
                   help="Meta-LoRA: batched (all tasks per batch, llm.multilora; default when present) or "
                        "sequential (peft named adapters, one task per batch)")
    p.add_argument("--seed", type=int, default=0, help="seed of initialisation, batch order, dropout (default 0)")
    p.add_argument("--out", required=True, help="run folder (checkpoints)")
    p.add_argument("--resume", action="store_true", help="continue from the last finished epoch in --out")
    p.set_defaults(func=_run_retrain)

    p = sub.add_parser("finetune", help="fine-tune every test task with a fresh LoRA on a retrained encoder",
                       description="Freeze the encoder (a retraining run folder or a model), train a fresh LoRA of "
                                   "rank --rank and a fresh head per test task, report held-out accuracy per epoch.")
    _common(p)
    p.add_argument("--encoder", required=True, help="retraining run folder (its last epoch) or a model folder/name")
    p.add_argument("--rank", type=int, default=8, help="rank r' of the fine-tuning LoRA (> 0)")
    p.add_argument("--seed", type=int, default=0, help="seed (default 0)")
    p.add_argument("--out", default=None, help="write the JSON result to this file as well")
    p.set_defaults(func=_run_finetune)

    p = sub.add_parser("table", help="the whole comparison -> Table 1(a)/(b) as Markdown, JSON and PNG",
                       description="SR, Meta-LoRA-8 and Meta-LoRA-16 retraining, then LoRA-8/16 fine-tuning of every "
                                   "test task, over the preset's seeds; writes table.md, table.json, accuracy.png.")
    _common(p)
    p.add_argument("--out", required=True, help="output folder (runs/ below it holds the checkpoints)")
    p.add_argument("--seeds", type=int, nargs="+", default=None, help="override the preset's seeds")
    p.add_argument("--schedule", choices=["sequential", "batched"], default=None, help="Meta-LoRA schedule")
    p.add_argument("--resume", action="store_true", help="reuse finished runs in --out/runs")
    p.add_argument("--json", action="store_true", help="print the table as one JSON object")
    p.set_defaults(func=_run_table)
    try:  # `bundle` (issue 6's offline bundle for the GPU run) lives in llm/bundle.py
        from . import bundle
    except ImportError:
        bundle = None
    if bundle is not None and hasattr(bundle, "add_parser"):
        bundle.add_parser(sub)
    from . import planted_cli  # `planted`: llm/planted_cli.py (docs/planted.md)
    planted_cli.add_parser(sub)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    for name in ("rank", "retrain_epochs", "finetune_epochs", "n_retrain_tasks", "n_test_tasks"):
        v = getattr(args, name, None)
        if v is not None and v <= 0:
            print(f"python -m llm {args.command}: error: --{name.replace('_', '-')} must be > 0, got {v}",
                  file=sys.stderr)
            return EXIT_USAGE
    try:
        return args.func(args)
    except LLMError as exc:
        print(f"python -m llm {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except NonFiniteLossError as exc:
        print(f"python -m llm {args.command}: {exc}", file=sys.stderr)
        return EXIT_FAIL


if __name__ == "__main__":
    sys.exit(main())
