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
  step sizes, iterations and final gradient norms, and the wall time.

``--vary all`` makes the five panels; ``--json`` prints ``{"rows": [{"panel", "value", "meta_lora", "sr_lora",
"sr_floor"}, ...]}`` (medians over runs). Bad input (unknown panel, ``(T+1) k > d``, non-positive counts) gives one
message and exit status 2. Every file is written to a temporary name and renamed.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import platform
import sys
import tempfile
import time

import numpy as np

from .linear_experiment import (DEFAULTS, PANELS, Settings, panel_settings, run_panels, setting_summary,
                                settings_dict, summary_rows)
from .problem import ProblemError

__all__ = ["add_parser", "run"]

EXIT_OK, EXIT_USAGE = 0, 2
_SIZE_FIELDS = ("d", "T", "N", "n", "k")


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register the ``figure1`` subcommand on an argparse subparsers object; it sets ``func=run``."""
    p = subparsers.add_parser(
        "figure1", help="finite-sample experiments of Figure 1 (Meta-LoRA vs SR + LoRA), plots and tables",
        description="Retrain by gradient descent on finite samples (Meta-LoRA and standard retraining), fine-tune a "
                    "held-out task with LoRA, and plot its population test loss per iteration (Figure 1). The "
                    "varied parameter takes the paper's three values; the others keep the defaults d=10, T=3, "
                    "N=5000, n=100, k=1, sigma=0.1 (the k panel uses d=12 so that (T+1) k <= d at k=3) unless set "
                    "below. Exit 0 on success, 2 on bad input.")
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


def _atomic_write(path: str, data: bytes) -> None:
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=folder)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give the file the usual permissions
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


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


def run(args) -> int:
    """Run the ``figure1`` subcommand for parsed ``args``; returns the exit status (0, or 2 on bad input)."""
    from threadpoolctl import threadpool_limits
    from tqdm import tqdm

    panels = list(PANELS) if args.vary == "all" else [args.vary]
    if any(p not in PANELS for p in panels):
        print(f"error: unknown panel {args.vary!r}; choose one of {', '.join(PANELS)} or all", file=sys.stderr)
        return EXIT_USAGE
    try:
        overrides = _overrides(args)
        n_settings = sum(len(panel_settings(p, overrides)) for p in panels)  # validates every setting first
    except ProblemError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    out = args.out
    if os.path.exists(out) and not os.path.isdir(out):
        print(f"error: --out {out!r} exists and is not a folder", file=sys.stderr)
        return EXIT_USAGE
    os.makedirs(out, exist_ok=True)
    t0 = time.perf_counter()
    # small dense products: one BLAS thread is fastest and does not fight other processes for the cores
    with threadpool_limits(limits=1), tqdm(total=n_settings, desc="figure1", unit="setting", disable=None) as bar:
        results = run_panels(panels, overrides, progress=bar)
    seconds = time.perf_counter() - t0
    for panel, res in results.items():
        _atomic_write(os.path.join(out, f"figure1_{panel}.png"), _plot_panel(panel, res))
        _atomic_write(os.path.join(out, f"figure1_{panel}_test.csv"), _curves_csv(panel, res, "test"))
        _atomic_write(os.path.join(out, f"figure1_{panel}_retrain.csv"), _curves_csv(panel, res, "retrain"))
    rows = summary_rows(results)
    summary_path = os.path.join(out, "summary.json")
    previous = {}
    if os.path.exists(summary_path):  # keep the panels of earlier runs into the same folder
        try:
            with open(summary_path, encoding="utf-8") as fh:
                previous = json.load(fh).get("panels", {})
        except (OSError, ValueError, AttributeError):
            previous = {}
    panels_out = {p: v for p, v in previous.items() if p in PANELS and p not in results} if isinstance(previous, dict) else {}
    for panel, res in results.items():
        panels_out[panel] = {"settings": [settings_dict(r.settings) for r in res],
                             "values": [setting_summary(panel, r) for r in res],
                             "seconds": float(sum(r.seconds for r in res))}
    summary = {
        "command": "python -m theory figure1 " + " ".join(_argv_echo(args)),
        "seed": args.seed, "runs": args.runs, "seconds_this_command": seconds,
        "metric": "population test loss ||A + B C^T - W_{T+1}||_F^2 after the last fine-tuning iteration",
        "versions": _versions(),
        "rows": [r for p in PANELS if p in panels_out
                 for r in ([{"panel": p, "value": v["value"], "meta_lora": v["meta_lora"]["median"],
                             "sr_lora": v["sr_lora"]["median"], "sr_floor": v["sr_floor"]["median"]}
                            for v in panels_out[p]["values"]])],
        "panels": {p: panels_out[p] for p in PANELS if p in panels_out},
    }
    _atomic_write(summary_path, (json.dumps(summary, indent=1) + "\n").encode())
    if args.json:
        print(json.dumps({"rows": rows}))
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
