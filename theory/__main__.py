"""Command line of ``theory``: ``python -m theory {verify, figure1} ...`` (``--help`` on each)."""

from __future__ import annotations

import argparse
import sys

from .cli_contract import (EXIT_FAIL, EXIT_INTERRUPTED, EXIT_OK, OneLineParser, check_memory, nonneg_int,
                           run_command)
from .strict_json import dumps


def _add_verify(sub) -> None:
    p = sub.add_parser("verify", help="random instance -> minimise Meta-LoRA -> table of theorem checks",
                       description="Build a random instance (entries i.i.d. N(0,1) from --seed), minimise the reduced "
                                   "Meta-LoRA loss from a small random start with the analytic gradient and Hessian, "
                                   "and check derivatives against autograd and the paper's theorems. Exit 0 when all "
                                   "pass, 1 when a check fails, 2 on bad input, 130 on Ctrl-C.")
    p.add_argument("--d", type=int, default=10, help="dimension d (default 10)")
    p.add_argument("--k", type=int, default=1, help="rank k of each task's adapter (default 1)")
    p.add_argument("--T", type=int, default=3, help="number of retraining tasks T (default 3)")
    p.add_argument("--seed", type=nonneg_int, default=0, help="seed (an integer >= 0) of the instance and of the "
                   "start (default 0)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    p.set_defaults(func=_run_verify)


def _run_verify(args) -> int:
    from .problem import require_remark_3_1
    from .verify import run_verify

    require_remark_3_1(args.d, args.k, args.T)
    n_full = args.d * args.d + args.T * args.d * args.k
    # the dense Hessians of L (analytic and torch.func's, with its intermediates): a few n_full x n_full arrays
    check_memory(f"--d {args.d} --k {args.k} --T {args.T}: the dense Hessians of L ({n_full} x {n_full})",
                 4 * 8 * n_full * n_full)
    report = run_verify(args.d, args.k, args.T, args.seed)
    if args.json:
        print(dumps(report.to_dict()))
    else:
        s = report.solve
        print(f"instance d={args.d} k={args.k} T={args.T} seed={args.seed}; solve: G={s.loss:.3e}, "
              f"|grad|={s.grad_norm:.2e}, {s.iterations} iterations, {s.status} ({s.seconds:.3f} s)")
        print(f"{'check':<28} {'pass':<5} {'value':>12} {'bound':>12}  detail")
        for c in report.checks:
            print(f"{c.name:<28} {'yes' if c.passed else 'NO':<5} {c.value:>12.4g} {c.bound:>12.4g}  {c.detail}")
        print("all checks passed" if report.passed else "SOME CHECKS FAILED")
    return EXIT_OK if report.passed else EXIT_FAIL


def build_parser() -> argparse.ArgumentParser:
    """The parser of ``python -m theory`` (every subcommand; ``--help`` of each lists its options)."""
    parser = OneLineParser(prog="python -m theory", description="Closed-form maths of the linear Meta-LoRA model.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=OneLineParser)
    _add_verify(sub)
    from . import figure1_cli

    figure1_cli.add_parser(sub)
    return parser


def main(argv=None) -> int:
    """Run ``python -m theory`` with ``argv``; returns the exit status (:mod:`theory.cli_contract`: 0 done, 1 a check
    failed, 2 bad input, 130 interrupted)."""
    try:
        args = build_parser().parse_args(argv)  # imports figure1's modules (NumPy): under the Ctrl-C contract too
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    return run_command(args.func, args)


if __name__ == "__main__":
    sys.exit(main())
