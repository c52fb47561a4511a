"""PNG panels of ``llm planted`` (matplotlib's object API: ``matplotlib.figure.Figure``, no pyplot, no backend
switch in the caller's process): one panel per setting (T, k); lines are medians over seeds,
bands the range (min to max) over seeds; the three bases are the SR base, the Meta-LoRA base and the pretrained
``W0`` without retraining ("none").

* ``rank.png``: held-out test loss after fine-tuning against the fine-tuning rank r (n = ``finetune_turns``).
* ``steps.png``: test loss against the fine-tuning step, r = k (solid) and r = (T+1)k (dashed).
* ``spectra.png``: singular values of ``W - A*`` in the data metric (SR, Meta-LoRA, none, the linear prediction
  ``mean_t Delta_t``) with the rank threshold (median over seeds), first chosen layer.
* ``n.png``: test loss against n at the n-sweep setting, r = k and (T+1)k.
"""

from __future__ import annotations

import numpy as np

__all__ = ["write_plots"]

COLORS = {"none": "tab:gray", "sr": "tab:red", "meta-lora": "tab:blue", "linear-prediction": "black"}
LABELS = {"none": "no retraining (W0)", "sr": "SR", "meta-lora": "Meta-LoRA",
          "linear-prediction": "linear theory (mean Delta)"}


def _grid(settings):
    from matplotlib.figure import Figure

    ks = sorted({k for _, k in settings})
    Ts = sorted({T for T, _ in settings})
    fig = Figure(figsize=(3.6 * len(Ts), 3.0 * len(ks)))
    axes = fig.subplots(len(ks), len(Ts), squeeze=False)
    where = {(T, k): axes[ks.index(k)][Ts.index(T)] for T, k in settings}
    for (T, k), ax in where.items():
        ax.set_title(f"T = {T}, k = {k}", fontsize=9)
    for ax in axes.flat:
        if ax not in where.values():
            ax.set_visible(False)
    return fig, where


def _band(ax, x, per_seed, method, style="-", label=True):
    v = np.asarray(per_seed, dtype=float)  # (x, seeds)
    ax.plot(x, np.median(v, axis=1), style, color=COLORS[method], marker="o", ms=3,
            label=LABELS[method] if label else None)
    ax.fill_between(x, v.min(axis=1), v.max(axis=1), color=COLORS[method], alpha=0.15, lw=0)


def _finish(fig, where, xlabel: str, ylabel: str, title: str):
    """Log y axis and labels on every panel, the legend on the first, the title; returns ``fig``."""
    for ax in where.values():
        ax.set_yscale("log")
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
    next(iter(where.values())).legend(fontsize=7)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig


def _rank_plot(summary, n, settings):
    fig, where = _grid(settings)
    for (T, k), ax in where.items():
        for method in ("none", "sr", "meta-lora"):
            rows = sorted((r for r in summary["rows"] if (r["T"], r["k"], r["n"], r["method"]) == (T, k, n, method)),
                          key=lambda r: r["finetune_rank"])
            _band(ax, [r["finetune_rank"] for r in rows], [r["per_seed"] for r in rows], method)
        ax.axvline((T + 1) * k, color="0.7", ls=":", lw=1)
    return _finish(fig, where, "fine-tuning rank r", "test loss (MSE)",
                   f"new-task test loss after rank-r LoRA fine-tuning (n = {n} turns; dotted: r = (T+1)k)")


def _step_plot(records, n, settings):
    fig, where = _grid(settings)
    for (T, k), ax in where.items():
        recs = [r for r in records if (r["T"], r["k"]) == (T, k)]
        for r_, style in ((k, "-"), ((T + 1) * k, "--")):
            for method in ("none", "sr", "meta-lora"):
                fits = [f for rec in recs for f in rec["finetune"]
                        if (f["n"], f["rank"], f["method"]) == (n, r_, method)]
                steps = fits[0]["steps"]
                _band(ax, steps, np.array([f["test_loss"] for f in fits]).T, method, style, label=r_ == k)
    return _finish(fig, where, "fine-tuning step", "test loss (MSE)",
                   f"test loss during fine-tuning (solid r = k, dashed r = (T+1)k; n = {n})")


def _spectra_plot(summary, settings):
    fig, where = _grid(settings)
    layer = summary["spectra"][0]["layer"]
    for (T, k), ax in where.items():
        for row in summary["spectra"]:
            if (row["T"], row["k"], row["layer"]) != (T, k, layer):
                continue
            sv = np.array(row["singular_values"]).T
            _band(ax, np.arange(1, sv.shape[0] + 1), sv, row["method"])
            tau = float(np.median(row["threshold"]))
        ax.axhline(tau, color="0.4", ls=":", lw=1)
        ax.axvline(T * k + 0.5, color="0.8", lw=1)
    return _finish(fig, where, "index i", "sigma_i((W - A*) Sigma^1/2)",
                   f"{layer}: spectra of the retrained weights minus A* (dotted: rank threshold; line at Tk)")


def _n_plot(summary, setting):
    from matplotlib.figure import Figure

    T, k = setting
    fig = Figure(figsize=(4.5, 3.3))
    ax = fig.subplots()
    for r_, style in ((k, "-"), ((T + 1) * k, "--")):
        for method in ("none", "sr", "meta-lora"):
            rows = sorted((r for r in summary["rows"]
                           if (r["T"], r["k"], r["finetune_rank"], r["method"]) == (T, k, r_, method)),
                          key=lambda r: r["n"])
            _band(ax, [r["n"] for r in rows], [r["per_seed"] for r in rows], method, style, label=r_ == k)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("n (training turns of the new task)")
    ax.set_ylabel("test loss (MSE)")
    ax.set_title(f"T = {T}, k = {k}: solid r = k, dashed r = (T+1)k", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def write_plots(result: dict, summary: dict):
    """``[(file name, matplotlib Figure)]`` of the panels in the module docstring.

    Parameters
    ----------
    result : dict
        What :func:`llm.planted.run_planted` returned.
    summary : dict
        :func:`llm.planted_report.summarise` of ``result``.

    Returns
    -------
    list of (str, matplotlib.figure.Figure)
        ``rank.png``, ``steps.png``, ``spectra.png`` and, with an n sweep, ``n.png``; nothing is written.
    """
    cfg = result["config"]
    settings = sorted({(r["T"], r["k"]) for r in result["records"]}, key=lambda x: (x[1], x[0]))
    n = cfg["finetune_turns"]
    out = [("rank.png", _rank_plot(summary, n, settings)), ("steps.png", _step_plot(result["records"], n, settings)),
           ("spectra.png", _spectra_plot(summary, settings))]
    if cfg["n_sweep"]:
        out.append(("n.png", _n_plot(summary, tuple(cfg["n_sweep_setting"]))))
    return out
