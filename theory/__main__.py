"""Command line of ``theory``: ``python -m theory {verify, figure1} ...`` (``--help`` on each)."""

from __future__ import annotations

import argparse
import json
import sys

from .problem import ProblemError

EXIT_OK, EXIT_FAIL, EXIT_USAGE = 0, 1, 2


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # argparse's own usage errors: one line, exit 2
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def _add_verify(sub) -> None:
    p = sub.add_parser("verify", help="random instance -> minimise Meta-LoRA -> table of theorem checks",
                       description="Build a random instance (entries i.i.d. N(0,1) from --seed), minimise the reduced "
                                   "Meta-LoRA loss from a small random start with the analytic gradient and Hessian, "
                                   "and check derivatives against autograd and the paper's theorems. Exit 0 when all "
                                   "pass, 1 when a check fails, 2 on bad input.")
    p.add_argument("--d", type=int, default=10, help="dimension d (default 10)")
    p.add_argument("--k", type=int, default=1, help="rank k of each task's adapter (default 1)")
    p.add_argument("--T", type=int, default=3, help="number of retraining tasks T (default 3)")
    p.add_argument("--seed", type=int, default=0, help="seed of the instance and of the start (default 0)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    p.set_defaults(func=_run_verify)


def _run_verify(args) -> int:
    from .verify import run_verify

    report = run_verify(args.d, args.k, args.T, args.seed)
    if args.json:
        print(json.dumps(report.to_dict()))
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
    parser = _Parser(prog="python -m theory", description="Closed-form maths of the linear Meta-LoRA model.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    _add_verify(sub)
    from . import figure1_cli

    figure1_cli.add_parser(sub)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except ProblemError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
