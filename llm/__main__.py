"""Command line of ``llm``: ``python -m llm {table, retrain, finetune, bundle, ...} ...`` (``--help`` on each).

Exit status: 0 success, 1 a run failed (a non-finite loss), 2 bad input (one message naming the value and the
rule: unknown model, bad option, unreadable or malformed data, too few candidates), 130 interrupted (Ctrl-C;
finished pieces are kept: rerun the same command with ``--resume``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import warnings

from .atomic import check_writable_dir
from .config import DEFAULT_PRESET, PRESETS, SCORERS, SELECTIONS, LLMError, NonFiniteLossError, preset

EXIT_OK, EXIT_FAIL, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def _int_at_least(low: int):
    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be an integer, got {text!r}") from None
        if v < low:
            raise argparse.ArgumentTypeError(f"must be an integer >= {low}, got {v}")
        return v

    parse.__name__ = f"integer >= {low}"
    return parse


_positive, _nonneg = _int_at_least(1), _int_at_least(0)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preset", choices=sorted(PRESETS), default=DEFAULT_PRESET,
                   help="hyperparameters and sizes: cpu (default: powered CPU comparison), paper (Appendix C), "
                        "smoke (tests)")
    p.add_argument("--model", default=None,
                   help="'minilm' (packaged all-MiniLM-L6-v2, default), a HF name such as roberta-large, or a path")
    p.add_argument("--data", default=None,
                   help="'chitchat' (packaged, default) or a ConvAI2 ParlAI text file such as train_self_original.txt")
    p.add_argument("--scorer", choices=SCORERS, default=None, help="bi-encoder or cross-encoder (default: preset's)")
    p.add_argument("--freeze-layers", type=_nonneg, default=None,
                   help="embeddings and this many lowest blocks frozen and computed once (default: preset's)")
    p.add_argument("--select", choices=SELECTIONS, default=None,
                   help="fine-tuning epoch chosen on: validation (default), heldout (the paper's; optimistic), last")
    p.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda with bf16 if present, else cpu)")
    p.add_argument("--retrain-epochs", type=_positive, default=None, help="override the preset's retraining epochs")
    p.add_argument("--finetune-epochs", type=_positive, default=None, help="override the preset's fine-tuning epochs")
    p.add_argument("--n-retrain-tasks", type=_positive, default=None, help="override T, the number of retraining tasks")
    p.add_argument("--n-test-tasks", type=_positive, default=None, help="override T', the number of test tasks")
    p.add_argument("--threads", type=_nonneg, default=None, help="torch CPU threads, 0 = torch's default "
                                                                  "(default: the preset's)")
    p.add_argument("--cache-dir", default=None, help="tokenisation cache (default ~/.cache/metalora/llm)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def _config(args):
    """The configuration of the command line, validated (model included) before any work."""
    from .models import check_model

    cfg = _preset_with(args)
    check_model(cfg.model, cfg.freeze_layers)
    if args.device is not None:
        from .loop import make_accelerator

        make_accelerator(args.device)
    return cfg


def _preset_with(args):
    tuples = {k: tuple(getattr(args, k)) for k in ("seeds", "meta_ranks", "finetune_ranks")
              if getattr(args, k, None)}
    return preset(args.preset, model=args.model, data=args.data, scorer=args.scorer, freeze_layers=args.freeze_layers,
                  select=args.select, retrain_epochs=args.retrain_epochs, finetune_epochs=args.finetune_epochs,
                  n_retrain_tasks=args.n_retrain_tasks, n_test_tasks=args.n_test_tasks, threads=args.threads,
                  **tuples)



def _inputs(args) -> None:
    """What a command reads and caches, checked before any work: ``--data`` (a file, unless the packaged
    ``chitchat``) and ``--cache-dir`` (a folder that can be created and written)."""
    data = getattr(args, "data", None)
    if data not in (None, "chitchat"):
        if not os.path.exists(data):
            raise LLMError(f"--data {data!r}: no such file")
        if not os.path.isfile(data) or not os.access(data, os.R_OK):
            raise LLMError(f"--data {data!r}: not a readable file")
    if getattr(args, "cache_dir", None) is not None:
        check_writable_dir(args.cache_dir, "--cache-dir")


def _out_file(path: str, option: str = "--out") -> str:
    if os.path.isdir(path):
        raise LLMError(f"{option} {path!r} is an existing folder; give a file name")
    # the file is written through a temporary file beside it: the folder it goes into must take new files
    check_writable_dir(os.path.dirname(os.path.abspath(path)) if os.path.exists(path) else path, option)
    return path


def _run_retrain(args) -> int:
    from .data import load_tasks
    from .train import retrain

    cfg = _config(args)
    check_writable_dir(args.out)
    _inputs(args)
    tasks = load_tasks(cfg)
    r = retrain(cfg, tasks, method=args.method, rank=args.rank, seed=args.seed, out_dir=args.out,
                resume=args.resume, schedule=args.schedule, device=args.device, cache_dir=args.cache_dir,
                progress=not args.no_progress)
    print(json.dumps({**r.to_dict(), "tasks": [t.name for t in tasks.retrain]}))
    return EXIT_OK


def _run_finetune(args) -> int:
    from .atomic import atomic_write_text
    from .data import load_tasks
    from .report import json_ready
    from .finetune import finetune_tasks

    cfg = _config(args)
    if args.out:
        _out_file(args.out)
    _inputs(args)
    from .checkpoint import resolve_encoder
    from .models import check_model

    check_model(resolve_encoder(args.encoder), cfg.freeze_layers)
    tasks = load_tasks(cfg)
    out = [f.to_dict() for f in finetune_tasks(cfg, args.encoder, list(tasks.test), rank=args.rank, seed=args.seed,
                                                device=args.device, cache_dir=args.cache_dir,
                                                progress=not args.no_progress)]
    doc = json_ready({"encoder": args.encoder, "rank": args.rank, "seed": args.seed, "select": cfg.select,
                      "results": out, "average": sum(d["accuracy"] for d in out) / len(out)})
    if args.out:
        atomic_write_text(args.out, json.dumps(doc, indent=1) + "\n")
    print(json.dumps(doc))
    return EXIT_OK


def _run_table(args) -> int:
    from .table import run_table

    cfg = _config(args)
    check_writable_dir(args.out)
    _inputs(args)
    runs = os.path.join(args.out, "runs")
    if not args.resume and os.path.isdir(runs) and any(files for _, _, files in os.walk(runs)):
        raise LLMError(f"--out {args.out!r} holds finished pieces of an earlier run ({runs}); rerun with --resume to "
                       "continue it (pieces made with other settings are recomputed), or choose another --out")
    log = (lambda *a: print(*a, file=sys.stderr, flush=True)) if args.json else (lambda *a: print(*a, flush=True))
    doc = run_table(cfg, args.out, resume=args.resume, device=args.device, schedule=args.schedule,
                    cache_dir=args.cache_dir, progress=not args.no_progress, keep_checkpoints=args.keep_checkpoints,
                    log=log)
    if args.json:
        from .report import json_ready

        print(json.dumps(json_ready({k: doc[k] for k in ("rows", "comparisons", "n_items", "seeds", "tasks")})))
    else:
        with open(os.path.join(args.out, "table.md"), encoding="utf-8") as fh:
            print(fh.read())
        print(f"wrote {args.out}/table.md, table.json, accuracy.png in {doc['elapsed_s']:.0f} s")
    return EXIT_OK


def _schedule_option(p: argparse.ArgumentParser, default: str | None = None) -> None:
    """``--schedule``: its choices and help read from the adapter registry (:data:`llm.adapters.ADAPTERS`);
    ``default`` the schedule used when it is not given (None: :func:`llm.adapters.default_schedule`)."""
    from .adapters import ADAPTERS, default_schedule

    kinds = "; ".join(f"{name}: {cls.help}" for name, cls in ADAPTERS.items())
    p.add_argument("--schedule", choices=list(ADAPTERS), default=None,
                   help=f"Meta-LoRA adapter type ({kinds}; default {default or default_schedule()})")


def _add_table(sub) -> None:
    p = sub.add_parser("table", help="the whole comparison with its controls -> table.md, table.json, accuracy.png",
                       description="SR and Meta-LoRA retraining, LoRA fine-tuning of every test task and the controls "
                                   "(no retraining, with and without fine-tuning), over the preset's retraining "
                                   "seeds; paired comparisons with intervals over seeds.")
    _common(p)
    p.add_argument("--out", required=True, help="output folder (runs/ below it holds resumable pieces)")
    p.add_argument("--seeds", type=_nonneg, nargs="+", default=None, help="override the preset's retraining seeds")
    p.add_argument("--meta-ranks", type=_positive, nargs="+", default=None,
                   help="ranks r of Meta-LoRA-r (default: preset's; the paper's Table 1: 8 16)")
    p.add_argument("--finetune-ranks", type=_positive, nargs="+", default=None,
                   help="fine-tuning LoRA ranks r' (default: preset's; the paper's Table 1: 8 16)")
    from .adapters import TABLE_SCHEDULE

    _schedule_option(p, TABLE_SCHEDULE)
    p.add_argument("--resume", action="store_true", help="reuse finished pieces in --out/runs")
    p.add_argument("--keep-checkpoints", action="store_true",
                   help="keep the retrained encoders (by default removed once the table is written)")
    p.add_argument("--json", action="store_true", help="print rows and comparisons as one JSON object")
    p.set_defaults(func=_run_table)


def _add_retrain_finetune(sub) -> None:
    p = sub.add_parser("retrain", help="SR or Meta-LoRA retraining of the encoder on the T retraining tasks",
                       description="Retrain the encoder; a checkpoint (safetensors encoder, peft adapters) after "
                                   "every epoch in --out, the best epoch on validation kept; --resume continues.")
    _common(p)
    p.add_argument("--method", choices=["sr", "meta-lora"], required=True, help="sr or meta-lora")
    p.add_argument("--rank", type=_positive, default=8, help="LoRA rank r of Meta-LoRA-r (ignored for sr)")
    _schedule_option(p)
    p.add_argument("--seed", type=_nonneg, default=0, help="seed of initialisation, batch order, dropout (default 0)")
    p.add_argument("--out", required=True, help="run folder (checkpoints)")
    p.add_argument("--resume", action="store_true", help="continue from the last finished epoch in --out")
    p.set_defaults(func=_run_retrain)

    p = sub.add_parser("finetune", help="fine-tune every test task with a fresh LoRA on a retrained encoder",
                       description="Freeze the encoder (a retraining run folder or a model), train a fresh LoRA of "
                                   "rank --rank (and a fresh head, cross) per test task, report held-out accuracy "
                                   "at the epoch chosen by --select.")
    _common(p)
    p.add_argument("--encoder", required=True, help="retraining run folder (its selected epoch) or a model folder/name")
    p.add_argument("--rank", type=_positive, default=8, help="rank r' of the fine-tuning LoRA")
    p.add_argument("--seed", type=_nonneg, default=0, help="seed (default 0)")
    p.add_argument("--out", default=None, help="write the JSON result to this file as well")
    p.set_defaults(func=_run_finetune)


def build_parser() -> argparse.ArgumentParser:
    """The ``python -m llm`` parser with its subcommands ``table``, ``retrain``, ``finetune``, ``bundle`` and
    ``planted``; a usage error exits with status 2 and one message.

    Returns
    -------
    argparse.ArgumentParser
        Parsing sets ``args.func``, the subcommand's runner (``args -> exit status``).

    >>> build_parser().parse_args(["retrain", "--method", "sr", "--out", "run"]).rank
    8
    """
    parser = _Parser(prog="python -m llm", description="Meta-LoRA vs standard retraining of a pretrained encoder on "
                                                       "multi-speaker dialogue (the paper's Section 4.2, Table 1).")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    _add_table(sub)
    _add_retrain_finetune(sub)
    from . import bundle

    bundle.add_parser(sub)
    from . import planted_cli  # `planted`: llm/planted_cli.py (docs/planted.md)

    planted_cli.add_parser(sub)
    return parser


def main(argv=None) -> int:
    """Run ``python -m llm`` with ``argv`` (default ``sys.argv[1:]``); nothing is raised to the caller.

    Returns
    -------
    int
        Exit status: 0 success, 1 a run failed (a non-finite loss), 2 bad input (one message naming the value and
        the rule, on stderr), 130 interrupted (Ctrl-C; finished pieces are kept for ``--resume``).
    """
    # peft calls a transformers method that transformers 5 deprecated: a notice for peft's authors, not for users
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.* is deprecated", category=FutureWarning)
    # No network at run time: models are the packaged one, a local folder or the local Hugging Face cache. A user who
    # wants downloads sets HF_HUB_OFFLINE=0 (read by huggingface_hub when it is first imported, below this line).
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:  # building the parser imports torch (a few seconds): a Ctrl-C there is one line too
        args = build_parser().parse_args(argv)
    except KeyboardInterrupt:
        print("python -m llm: interrupted before any work; nothing written", file=sys.stderr)
        return EXIT_INTERRUPTED
    try:
        return args.func(args)
    except LLMError as exc:
        print(f"python -m llm {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except NonFiniteLossError as exc:
        print(f"python -m llm {args.command}: {exc}", file=sys.stderr)
        return EXIT_FAIL
    except KeyboardInterrupt:
        where = getattr(args, "out", None)
        saved = f"; finished pieces are kept in {where}" if where and os.path.isdir(where) else ""
        print(f"python -m llm {args.command}: interrupted{saved}; rerun the same command"
              f"{' with --resume' if hasattr(args, 'resume') else ''} to continue", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
