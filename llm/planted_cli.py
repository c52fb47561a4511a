"""Command line of ``python -m llm planted`` (registered on ``llm``'s parser by :func:`add_parser`).

Exit status (as every ``python -m llm`` subcommand): 0 success; 1 a run failed (a non-finite loss); 2 bad input
(one message naming the value and the rule, before any training); 130 interrupted (Ctrl-C, one line). Results are
written only once every run is finished, each file atomically (temporary file + rename).
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import sys

__all__ = ["add_parser", "main"]


def _float_in(low: float, high: float = float("inf"), *, open_low: bool):
    """An argparse type: a finite float in ``(low, high]`` (``open_low``) or ``[low, high]``, else one message."""
    rule = f"a finite number {'>' if open_low else '>='} {low:g}"
    rule += f" and <= {high:g}" if high < float("inf") else ""

    def parse(text: str) -> float:
        try:
            v = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {rule}, got {text!r}") from None
        if not (math.isfinite(v) and (v > low if open_low else v >= low) and v <= high):
            raise argparse.ArgumentTypeError(f"must be {rule}, got {text}")
        return v

    parse.__name__ = rule
    return parse


def add_parser(sub) -> argparse.ArgumentParser:
    """Register ``planted`` on an ``argparse`` subparsers object; its ``func`` is :func:`main`.

    Every option's type states its rule (argparse refuses a bad value with one message naming the option, the
    value and the rule, exit 2); :class:`llm.planted_config.PlantedConfig` checks the combinations.

    Returns
    -------
    argparse.ArgumentParser
        The ``planted`` subparser, added to ``sub`` (what ``ArgumentParser.add_subparsers`` returned).
    """
    from .__main__ import _int_at_least  # the integer rule of every llm subcommand
    from .planted_config import PRESETS

    positive, nonneg, at_least_2 = _int_at_least(1), _int_at_least(0), _int_at_least(2)

    p = sub.add_parser("planted", help="the theory's predictions (Thm 3.1 / Cor 1, Thm 3.3 / Cor 3) checked in the "
                                       "pretrained MiniLM with a planted ground truth",
                       description="Plant W0 + S + Delta_t in chosen linear layers of the packaged MiniLM, retrain "
                                   "them with SR and Meta-LoRA on T teacher tasks, fine-tune a new task with rank-r "
                                   "LoRA; writes summary.json, CSVs and PNG panels (docs/planted.md).")
    p.add_argument("--out", required=True, help="output folder (created; files in it are replaced)")
    p.add_argument("--preset", choices=sorted(PRESETS), default="default",
                   help="sizes: default (the committed run, ~10 min on 2 cores) or smoke (tests, < 1 min)")
    p.add_argument("--T", type=at_least_2, nargs="+", default=None,
                   help="numbers of retraining tasks (>= 2); --T and --k make the grid of every (T, k), replacing "
                        "the preset's settings (default: T in 2 3 5, k in 1 2)")
    p.add_argument("--k", type=positive, nargs="+", default=None, help="ranks of the planted perturbations (>= 1)")
    p.add_argument("--layers", default=None, help="regex (full match) of the chosen layers, e.g. "
                                                  r"'encoder\.layer\.5\.attention\.output\.dense'")
    p.add_argument("--seeds", type=nonneg, nargs="+", default=None, help="seeds, the unit of replication")
    p.add_argument("--model", default=None, help="'minilm' (packaged, default) or a local BERT folder")
    p.add_argument("--retrain-turns", type=positive, default=None, help="N: turns per retraining task")
    p.add_argument("--finetune-turns", type=positive, default=None, help="n: training turns of the new task")
    p.add_argument("--heldout-turns", type=positive, default=None, help="m: held-out turns of the new task")
    p.add_argument("--n-sweep", type=positive, nargs="*", default=None, help="further n at the n-sweep setting")
    p.add_argument("--retrain-steps", type=positive, default=None, help="Adam steps of SR and Meta-LoRA")
    p.add_argument("--finetune-steps", type=positive, default=None,
                   help="L-BFGS loss-and-gradient evaluations of each fine-tuning")
    p.add_argument("--shift-scale", type=_float_in(0.0, open_low=False), default=None, help="||S||_F / ||W0||_F")
    p.add_argument("--delta-scale", type=_float_in(0.0, open_low=True), default=None,
                   help="||Delta_t||_F / ||W0||_F")
    p.add_argument("--threshold", type=_float_in(0.0, 1.0, open_low=True), default=None,
                   help="rank threshold, a fraction of the linear prediction's Tk-th singular value (docs)")
    p.add_argument("--target", choices=["hidden", "layer"], default=None,
                   help="hidden: final hidden states (default); layer: the chosen layer's output (linear limit)")
    p.add_argument("--threads", type=nonneg, default=None, help="torch CPU threads (0: torch's default)")
    p.add_argument("--json", action="store_true",
                   help='print {"rows": [...], "spectra": [...]} as JSON (rows: the main n; the n sweep is in '
                        'summary.json and finetune_rank.csv)')
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=main)
    return p


def _config(args):
    from .planted_config import planted_preset

    seq = (lambda v: tuple(v) if v is not None else None)
    settings = sweep_at = None
    if args.T is not None or args.k is not None:  # the grid of the given T and k (the preset's where not given)
        preset = planted_preset(args.preset)
        Ts = args.T if args.T is not None else sorted({T for T, _ in preset.settings})
        ks = args.k if args.k is not None else sorted({k for _, k in preset.settings})
        settings = tuple((T, k) for k in ks for T in Ts)
        if tuple(preset.n_sweep_setting) not in settings:
            sweep_at = settings[0]
    return planted_preset(args.preset, settings=settings, n_sweep_setting=sweep_at, layers=args.layers,
                          seeds=seq(args.seeds), model=args.model, retrain_turns=args.retrain_turns,
                          finetune_turns=args.finetune_turns, heldout_turns=args.heldout_turns,
                          n_sweep=seq(args.n_sweep), retrain_steps=args.retrain_steps,
                          finetune_steps=args.finetune_steps, shift_scale=args.shift_scale,
                          delta_scale=args.delta_scale, threshold=args.threshold, target=args.target,
                          threads=args.threads)


def _command(args) -> str:
    argv = sys.argv[1:]
    if "planted" in argv:
        argv = argv[argv.index("planted") + 1:]
        return "python -m llm planted " + shlex.join(argv)
    return f"python -m llm planted --out {shlex.quote(args.out)} --preset {args.preset}"


def main(args) -> int:
    """Run ``planted`` from parsed arguments; the exit status of the module docstring.

    Bad input raises :class:`llm.config.LLMError` before any training (options, ``--out``, ``--model``; the layer
    pattern and the sizes as soon as the model and the data are read) and a non-finite loss
    :class:`llm.config.NonFiniteLossError`: ``llm``'s entry point turns them into one line and exit 2 or 1.
    Ctrl-C is answered here with one line and exit 130; results are written only once every run is finished,
    each file whole (temporary file + rename), ``summary.json`` last.

    Returns
    -------
    int
        0 on success (the verdicts, or with ``--json`` the :func:`llm.planted_report.json_view`, on stdout);
        130 after Ctrl-C.

    Raises
    ------
    LLMError
        For bad input (see above); :class:`llm.config.ModelError` for a model that cannot be loaded offline.
    NonFiniteLossError
        When a training loss is not finite.
    """
    from .atomic import check_writable_dir
    from .models import check_model

    log = (lambda *a: print(*a, file=sys.stderr, flush=True)) if args.json else (lambda *a: print(*a, flush=True))
    writing = False
    try:
        cfg = _config(args)
        check_writable_dir(args.out)
        check_model(cfg.model)
        from .planted import run_planted
        from .planted_report import json_view, summarise, write_outputs

        result = run_planted(cfg, log=log, progress=not args.no_progress and sys.stderr.isatty())
        summary = summarise(result)
        writing = True
        files = write_outputs(args.out, result, summary, _command(args))
    except KeyboardInterrupt:
        state = (f"while writing {args.out}: every file there is whole, but they may mix this run and an earlier one"
                 if writing else f"before writing; nothing was written to {args.out}")
        print(f"python -m llm planted: interrupted {state}", file=sys.stderr)
        return 130
    if args.json:
        print(json.dumps(json_view(summary, cfg.finetune_turns)))
    else:
        for v in summary["verdicts"]:
            for c in v["checks"]:
                print(f"T={v['T']} k={v['k']} {c['prediction']:>13}: {'held' if c['held'] else 'FAILED'}  "
                      f"({c['claim']})")
        print(f"wrote {', '.join(files)} to {args.out} in {result['elapsed_s']:.0f} s")
    return 0
