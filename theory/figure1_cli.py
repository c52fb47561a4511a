"""The ``figure1`` subcommand: Figure 1 of the paper (Section 4.1), Meta-LoRA vs SR + LoRA on finite samples.

``python -m theory figure1 --vary T --runs 5 --out results/figure1`` runs the three settings of the T panel and
writes into ``--out``:

* ``figure1_<panel>.png``: population test loss ``||A + B C^T - W_{T+1}||_F^2`` against the fine-tuning iteration,
  one subplot per value, mean over runs with a min-max band for each method, the Corollary 1 floor (mean over runs)
  and zero; y on a symmetric-log scale (logarithmic above a small threshold, linear below it so zero can be drawn);
* ``figure1_<panel>_test.csv``: every test-loss curve (value, method, run) at about 100 log-spaced iterations
  (always the first and the last), 10 significant digits;
* ``figure1_<panel>_retrain.csv``: every empirical retraining-loss curve, same layout;
* ``summary.json``: the settings, per panel and value the final test losses (median, min, max over runs), the floors,
  step sizes, iterations and final gradient norms, and the wall time; strict JSON (:mod:`theory.strict_json`): a
  statistic that is not finite (a run that diverged to inf or NaN) is ``null``.

``--vary all`` makes the five panels; ``--json`` prints ``{"rows": [{"panel", "value", "meta_lora", "sr_lora",
"sr_floor"}, ...]}`` (medians over runs). Bad input (unknown panel, ``(T+1) k > d``, non-positive counts, an ``--out``
that is a file or cannot be made, a malformed earlier ``summary.json`` there, a noise level that overflows float64)
gives one message and exit status 2, before any work where it can be known then. The folder is made and its files
written (each to a temporary name, then renamed) only once every result is ready, so Ctrl-C (exit status 130)
never leaves an empty or half-written folder. Panels of earlier runs into the same folder are kept in
``summary.json``, each with the ``command`` that made it.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import platform
import sys
import time

import numpy as np

from .atomic import atomic_write_bytes
from .cli_contract import EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE, check_memory, check_output_dir, deferred_sigint
from .linear_experiment import run_panels
from .linear_results import setting_summary, summary_rows
from .linear_settings import DEFAULTS, PANELS, Settings, panel_settings, settings_dict
from .problem import ProblemError
from .strict_json import dumps

__all__ = ["add_parser", "run"]

_SIZE_FIELDS = ("d", "T", "N", "n", "k")


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register the ``figure1`` subcommand on an argparse subparsers object; it sets ``func=run``."""
    p = subparsers.add_parser(
        "figure1", help="finite-sample experiments of Figure 1 (Meta-LoRA vs SR + LoRA), plots and tables",
        description="Retrain by gradient descent on finite samples (Meta-LoRA and standard retraining), fine-tune a "
                    "held-out task with LoRA, and plot its population test loss per iteration (Figure 1). The "
                    "varied parameter takes the paper's three values; the others keep the defaults d=10, T=3, "
                    "N=5000, n=100, k=1, sigma=0.1 (the k panel uses d=12 so that (T+1) k <= d at k=3) unless set "
                    "below. Exit 0 on success, 2 on bad input, 130 on Ctrl-C (nothing written).")
    p.add_argument("--vary", required=True, choices=[*PANELS, "all"],
                   help="the panel: the parameter varied (d, T, N, n or k), or all five")
    p.add_argument("--runs", type=int, default=5, help="independent runs per setting (default 5)")
    p.add_argument("--out", default="results/figure1", help="output folder (default results/figure1)")
    p.add_argument("--seed", type=int, default=0, help="base seed of ground truth, data and starts (default 0)")
    p.add_argument("--json", action="store_true", help="print the summary rows as one JSON object")
    for name in _SIZE_FIELDS:
        p.add_argument(f"--{name}", type=int, default=None, metavar=name,
                       help=f"fixed value of {name} in the panels that do not vary it (default {DEFAULTS[name]})")
    p.add_argument("--sigma", type=float, default=None, help=f"noise standard deviation (default {DEFAULTS['sigma']})")
    p.add_argument("--retrain-iters", type=int, default=None,
                   help=f"most retraining iterations (default {Settings.retrain_iters}; stops earlier on convergence)")
    p.add_argument("--finetune-iters", type=int, default=None,
                   help=f"fine-tuning iterations (default {Settings.finetune_iters})")
    p.set_defaults(func=run)
    return p


def _overrides(args) -> dict:
    """The :class:`Settings` fields given on the command line (sizes and sigma only when set)."""
    kw = {"runs": args.runs, "seed": args.seed}
    for name in (*_SIZE_FIELDS, "sigma", "retrain_iters", "finetune_iters"):
        value = getattr(args, name, None)
        if value is not None:
            kw[name] = value
    return kw


def _memory_bytes(s: Settings) -> int:
    """Bytes of the largest arrays of one setting: its samples ``(T, N, d)`` with their targets, the stacked task
    statistics ``(runs, T, d, d)`` and the curves ``(runs, iterations + 1)`` of every stage."""
    return 8 * (2 * s.T * s.N * s.d + 2 * s.n * s.d + 6 * s.runs * s.T * s.d * s.d
                + 2 * (s.retrain_iters + 1) * s.runs + 4 * (s.finetune_iters + 1) * s.runs)


def _log_grid(length: int, points: int = 100) -> np.ndarray:
    """About ``points`` log-spaced indices in ``[0, length)``, always with the first and the last."""
    idx = np.unique(np.round(np.geomspace(1, length, points)).astype(int) - 1)
    return np.unique(np.concatenate([[0], idx, [length - 1]]))


def _curves_csv(panel: str, results, kind: str) -> bytes:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["panel", "value", "method", "run", "iteration", "test_loss" if kind == "test" else "retrain_loss"])
    for res in results:
        value = getattr(res.settings, panel)
        curves = ({"meta_lora": res.meta_test, "sr_lora": res.sr_test} if kind == "test"
                  else {"meta_lora": res.meta_retrain, "sr_lora": res.sr_retrain})
        for method, arr in curves.items():
            grid = _log_grid(arr.shape[1])
            for j in range(arr.shape[0]):
                for i in grid:
                    w.writerow([panel, value, method, j, int(i), f"{float(arr[j, i]):.10g}"])
    return buf.getvalue().encode()


def _plot_panel(panel: str, results) -> bytes:
    # the object-oriented Figure API with an Agg canvas: no pyplot global state, no display needed
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(4.0 * len(results), 3.4), dpi=90, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(results), sharey=True, squeeze=False)[0]
    positive = [a[a > 0].min() for r in results for a in (r.meta_test, r.sr_test) if np.any(a > 0)]
    linthresh = 10.0 ** (np.floor(np.log10(min(positive))) - 1) if positive else 1e-8
    colours = {"meta_lora": "tab:blue", "sr_lora": "tab:orange"}
    labels = {"meta_lora": "Meta-LoRA + LoRA", "sr_lora": "SR + LoRA"}
    for ax, res in zip(axes, results):
        s = res.settings
        its = np.arange(res.meta_test.shape[1])
        for method, arr in (("meta_lora", res.meta_test), ("sr_lora", res.sr_test)):
            ax.fill_between(its, arr.min(axis=0), arr.max(axis=0), color=colours[method], alpha=0.25, lw=0)
            ax.plot(its, arr.mean(axis=0), color=colours[method], lw=1.6, label=labels[method])
        ax.axhline(float(np.mean(res.sr_floor)), color="k", ls="--", lw=1.0, label="SR floor (Cor. 1)")
        ax.axhline(0.0, color="0.5", ls=":", lw=1.0, label="zero")
        ax.set_xscale("symlog", linthresh=1.0)
        ax.set_yscale("symlog", linthresh=linthresh)
        ax.set_xlim(0, its[-1])
        ax.set_title(f"{panel} = {getattr(s, panel)}  (d={s.d}, T={s.T}, N={s.N}, n={s.n}, k={s.k}, r={s.rank})",
                     fontsize=8)
        ax.set_xlabel("fine-tuning iteration")
        ax.grid(True, which="major", alpha=0.3)
    axes[0].set_ylabel(r"test loss $\|A + BC^\top - W_{T+1}\|_F^2$" + f"\n(symlog, linear below {linthresh:.0e})",
                       fontsize=8)
    axes[0].legend(fontsize=7, loc="lower left")
    fig.suptitle(f"Figure 1, panel {panel}: mean over {results[0].settings.runs} runs, band = min-max, "
                 f"sigma = {results[0].settings.sigma}", fontsize=9)
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def _versions() -> dict:
    import matplotlib
    import scipy

    return {"python": platform.python_version(), "numpy": np.__version__, "scipy": scipy.__version__,
            "matplotlib": matplotlib.__version__}


def _print_table(rows) -> None:
    print(f"{'panel':<6} {'value':>6} {'Meta-LoRA':>12} {'SR+LoRA':>12} {'SR floor':>12}   (final test loss, "
          "medians over runs)")
    for r in rows:
        print(f"{r['panel']:<6} {r['value']:>6} {r['meta_lora']:>12.4g} {r['sr_lora']:>12.4g} {r['sr_floor']:>12.4g}")


def _is_panel(name, entry) -> bool:
    """Whether ``entry`` looks like a panel of :func:`run`'s ``summary.json`` (what the merged ``rows`` read)."""
    values = entry.get("values") if isinstance(entry, dict) else None
    return name in PANELS and isinstance(values, list) and all(
        isinstance(v, dict) and all(isinstance(v.get(m), dict) and "median" in v[m]
                                    for m in ("meta_lora", "sr_lora", "sr_floor")) and "value" in v
        for v in values)


def _previous_panels(summary_path: str) -> dict:
    """The panels of an earlier ``summary.json`` in the output folder (kept beside the new ones), read and checked
    before any work: a malformed file is refused rather than silently overwritten."""
    if not os.path.lexists(summary_path):
        return {}
    try:
        with open(summary_path, encoding="utf-8") as fh:
            data = json.load(fh)
    except (OSError, ValueError, RecursionError) as exc:
        raise ProblemError(f"{summary_path}: cannot read the earlier summary ({exc}); move it away or choose another "
                           "--out") from None
    panels = data.get("panels") if isinstance(data, dict) else None
    if not isinstance(panels, dict) or not all(_is_panel(p, v) for p, v in panels.items()):
        raise ProblemError(f"{summary_path}: not a figure1 summary (needs \"panels\": {{panel: {{\"values\": [...]}}}} "
                           "with panels among d, T, N, n, k); move it away or choose another --out")
    return panels


def run(args) -> int:
    """Run the ``figure1`` subcommand for parsed ``args``; returns the exit status (0; 2 on bad input; 130 on
    Ctrl-C, with nothing written: the folder and its files appear only once every result is ready)."""
    from threadpoolctl import threadpool_limits
    from tqdm import tqdm

    panels = list(PANELS) if args.vary == "all" else [args.vary]
    if any(p not in PANELS for p in panels):
        print(f"error: unknown panel {args.vary!r}; choose one of {', '.join(PANELS)} or all", file=sys.stderr)
        return EXIT_USAGE
    out = args.out
    try:
        overrides = _overrides(args)
        plan = [s for p in panels for s in panel_settings(p, overrides)]  # validates every setting first
        n_settings = len(plan)
        big = max(plan, key=_memory_bytes)
        check_memory(f"the samples and curves of the setting d={big.d}, T={big.T}, N={big.N}, n={big.n}, k={big.k}, "
                     f"runs={big.runs}, retrain_iters={big.retrain_iters}, finetune_iters={big.finetune_iters}",
                     _memory_bytes(big))
        check_output_dir("--out", out)
        previous = _previous_panels(os.path.join(out, "summary.json"))
    except ProblemError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    t0 = time.perf_counter()
    try:
        # small dense products: one BLAS thread is fastest and does not fight other processes for the cores
        with threadpool_limits(limits=1), tqdm(total=n_settings, desc="figure1", unit="setting", disable=None) as bar:
            results = run_panels(panels, overrides, progress=bar)
        seconds = time.perf_counter() - t0
        files = {}
        for panel, res in results.items():
            files[f"figure1_{panel}.png"] = _plot_panel(panel, res)
            files[f"figure1_{panel}_test.csv"] = _curves_csv(panel, res, "test")
            files[f"figure1_{panel}_retrain.csv"] = _curves_csv(panel, res, "retrain")
    except KeyboardInterrupt:
        print(f"interrupted; nothing written to {out}", file=sys.stderr)
        return EXIT_INTERRUPTED
    rows = summary_rows(results)
    command = "python -m theory figure1 " + " ".join(_argv_echo(args))
    panels_out = {p: v for p, v in previous.items() if p not in results}
    for panel, res in results.items():
        panels_out[panel] = {"command": command,  # each panel says which command made it (earlier ones are kept)
                             "settings": [settings_dict(r.settings) for r in res],
                             "values": [setting_summary(panel, r) for r in res],
                             "seconds": float(sum(r.seconds for r in res))}
    summary = {
        "command": command,
        "seed": args.seed, "runs": args.runs, "seconds_this_command": seconds,
        "metric": "population test loss ||A + B C^T - W_{T+1}||_F^2 after the last fine-tuning iteration",
        "versions": _versions(),
        "rows": [r for p in PANELS if p in panels_out
                 for r in ([{"panel": p, "value": v["value"], "meta_lora": v["meta_lora"]["median"],
                             "sr_lora": v["sr_lora"]["median"], "sr_floor": v["sr_floor"]["median"]}
                            for v in panels_out[p]["values"]])],
        "panels": {p: panels_out[p] for p in PANELS if p in panels_out},
    }
    files["summary.json"] = (dumps(summary, indent=1) + "\n").encode()
    try:
        with deferred_sigint():  # the folder is made and filled in one go: a Ctrl-C now waits until it is complete
            os.makedirs(out, exist_ok=True)
            for name, data in files.items():
                atomic_write_bytes(os.path.join(out, name), data)
    except KeyboardInterrupt:
        print(f"interrupted after writing {out} (complete)", file=sys.stderr)
        return EXIT_INTERRUPTED
    if args.json:
        print(dumps({"rows": rows}))
    else:
        _print_table(rows)
        print(f"{n_settings} settings in {seconds:.1f} s; files in {out}")
    return EXIT_OK


def _argv_echo(args) -> list[str]:
    parts = [f"--vary {args.vary}", f"--runs {args.runs}", f"--out {args.out}", f"--seed {args.seed}"]
    for name in (*_SIZE_FIELDS, "sigma"):
        if getattr(args, name, None) is not None:
            parts.append(f"--{name} {getattr(args, name)}")
    for name in ("retrain_iters", "finetune_iters"):
        if getattr(args, name, None) is not None:
            parts.append(f"--{name.replace('_', '-')} {getattr(args, name)}")
    return parts
