"""Outputs of ``llm table``: ``table.json`` (the document), ``table.md`` and ``accuracy.png``, written atomically.

``table.json`` fields: ``rows`` (one per table row: ``method`` ('none' for the controls, 'SR', 'Meta-LoRA'),
``retrain_rank``, ``finetune_rank`` (None: no fine-tuning), ``label``, ``accuracy`` with ``ci95`` (seeds and test
tasks), ``ci95_seed``, ``per_seed``, ``per_task``, ``val_curve`` (validation accuracy of the test tasks before
fine-tuning and after each epoch, mean over tasks and seeds), ``selected_epochs``; ``average`` and ``accuracies``
repeat ``accuracy`` and ``per_task``), ``comparisons`` (``a``, ``b``, ``finetune_rank``, ``delta`` = a - b as a
fraction, ``ci95``, ``p_value`` (paired t over seeds), ``p_signflip``, ``unit`` = 'seed', ``mde80``,
``ci95_seeds_tasks``, ``primary``), ``n_items`` (paired held-out items per seed), ``seeds``, ``tasks``,
``items_per_task``, ``retraining`` (per seed and method: losses, validation accuracies, selected epoch), the
configuration, the selection rule (``select``, ``optimistic``) and timings.
"""

from __future__ import annotations

import json
import math
import os

from .atomic import atomic_path, atomic_write_text

__all__ = ["write", "to_markdown", "verdict", "plot_curves", "json_ready"]


def _f(x, nd: int = 3) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{nd}f}"


def _ci(ci) -> str:
    return f"[{_f(ci[0])}, {_f(ci[1])}]"


def _p(p) -> str:
    if p is None or (isinstance(p, float) and math.isnan(p)):
        return "n/a"
    return "<0.001" if p < 1e-3 else f"{p:.3f}"


def verdict(c: dict) -> str:
    """One sentence on a comparison: which row is ahead, with its interval, or that no difference was detected
    and how large a difference the run could have detected.

    Parameters
    ----------
    c : dict
        A comparison of ``table.json``: ``a``, ``b``, ``delta`` (a - b, a fraction), ``ci95``, ``p_value``,
        ``mde80``.

    Returns
    -------
    str
        "**a beat b** (...)" when ``p < 0.05`` and the interval excludes 0, else "no detectable difference ...";
        a note when the interval is not finite (one seed).

    >>> verdict({"a": "Meta-LoRA-8 -> LoRA-8", "b": "SR -> LoRA-8", "delta": -0.04, "ci95": [-0.07, -0.01],
    ...          "p_value": 0.02, "mde80": 0.03})
    '**SR -> LoRA-8 beat Meta-LoRA-8 -> LoRA-8** (delta = -0.040, 95% CI [-0.070, -0.010], p = 0.020).'
    """
    lo, hi = c["ci95"]
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return f"{c['a']} vs {c['b']}: delta {_f(c['delta'])} (too few seeds for an interval)"
    text = f"delta = {c['delta']:+.3f}, 95% CI {_ci(c['ci95'])}, p = {_p(c['p_value'])}"
    if c["p_value"] < 0.05 and (lo > 0 or hi < 0):
        win, lose = (c["a"], c["b"]) if lo > 0 else (c["b"], c["a"])
        return f"**{win} beat {lose}** ({text})."
    return (f"no detectable difference between {c['a']} and {c['b']} ({text}); with 80% power the run detects "
            f"|delta| >= {_f(c['mde80'])}.")


def to_markdown(doc: dict) -> str:
    """The table, its comparisons, per-task accuracies and the retraining record as Markdown.

    Parameters
    ----------
    doc : dict
        The ``table.json`` document (module docstring).

    Returns
    -------
    str
        The text of ``table.md``.
    """
    cfg, s = doc["config"], doc["seeds"]
    sel = {"validation": "on each task's validation split (never on the scored items)",
           "heldout": "on the scored items themselves (the paper's choice: OPTIMISTIC)",
           "last": "the last epoch"}[doc["select"]]
    lines = [f"# Held-out accuracy among 20 candidates: {doc['model']} ({doc['scorer']}-encoder) on "
             f"{doc['data']['source']}", "",
             f"- {len(doc['retrain_tasks'])} retraining tasks; {len(doc['tasks'])} test tasks x "
             f"{min(doc['items_per_task'])}-{max(doc['items_per_task'])} scored items = {doc['n_items']} paired items "
             f"per seed; retraining seeds {s} (the unit of replication).",
             f"- Trained: transformer blocks {doc['freeze_layers']}.. of the encoder (the embeddings and blocks "
             f"below are frozen for every row). Fine-tuning epoch chosen {sel}; retraining epoch chosen on the "
             f"retraining tasks' validation split.",
             "- Chance is 0.050. Intervals: 95%, over seeds and test tasks (rows) and over seeds (comparisons).",
             "", "| retraining -> fine-tuning | accuracy | 95% CI | accuracy per seed |", "|---|---:|---|---|"]
    for r in doc["rows"]:
        lines.append(f"| {r['label']} | {_f(r['accuracy'])} | {_ci(r['ci95'])} | "
                     + " ".join(_f(x, 3) for x in r["per_seed"]) + " |")
    lines += ["", "## Comparisons (paired on the same items; unit: retraining seed; delta = a - b)", "",
              "| a | b | delta | 95% CI (seeds) | p (paired t) | p (sign-flip) | MDE at 80% power | 95% CI (seeds "
              "+ tasks) |", "|---|---|---:|---|---:|---:|---:|---|"]
    for c in doc["comparisons"]:
        star = " (primary)" if c["primary"] else ""
        lines.append(f"| {c['a']}{star} | {c['b']} | {c['delta']:+.3f} | {_ci(c['ci95'])} | {_p(c['p_value'])} | "
                     f"{_p(c['p_signflip'])} | {_f(c['mde80'])} | {_ci(c['ci95_seeds_tasks'])} |")
    lines += ["", "## Verdicts", ""] + [f"- {verdict(c)}" for c in doc["comparisons"]]
    names = [t[:8] for t in doc["tasks"]]
    lines += ["", "## Per test task (mean over seeds)", "",
              "| row | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
    for r in doc["rows"]:
        lines.append(f"| {r['label']} | " + " | ".join(_f(a, 2) for a in r["per_task"]) + " |")
    lines += ["", "## Retraining (loss and validation accuracy per epoch; selected epoch)", "",
              "| seed | method | loss per epoch | validation accuracy per epoch | selected |",
              "|---:|---|---|---|---:|"]
    for e in doc["retraining"]:
        name = "SR" if e["method"] == "sr" else f"Meta-LoRA-{e['rank']}"
        lines.append(f"| {e['seed']} | {name} | " + ", ".join(_f(x) for x in e["losses"]) + " | "
                     + ", ".join(_f(x) for x in e["val_accuracies"]) + f" | {e['best_epoch']} |")
    lines += ["", f"Configuration: `{json.dumps(cfg, sort_keys=True)}`", ""]
    return "\n".join(lines)


def plot_curves(doc: dict, path: str) -> None:
    """PNG: retraining validation accuracy per epoch (left) and the test tasks' validation accuracy per
    fine-tuning epoch (right), means over seeds (and test tasks), integer epoch ticks.

    Raises
    ------
    OSError
        When ``path`` cannot be written (it is then left as it was).
    """
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    fig = Figure(figsize=(10, 4))
    left, right = fig.subplots(1, 2)
    for method in dict.fromkeys((e["method"], e["rank"]) for e in doc["retraining"]):
        runs = [e["val_accuracies"] for e in doc["retraining"] if (e["method"], e["rank"]) == method]
        ys = [sum(c) / len(c) for c in zip(*runs)]
        left.plot(range(1, len(ys) + 1), ys, marker="o",
                  label="SR" if method[0] == "sr" else f"Meta-LoRA-{method[1]}")
    left.set(xlabel="retraining epoch", ylabel="validation accuracy (retraining tasks)", title="retraining")
    for r in doc["rows"]:
        ys = r["val_curve"]
        if not ys:
            continue
        if r["finetune_rank"] is None:
            right.axhline(ys[0], color="black", linewidth=1, linestyle="--", label=r["label"])
            continue
        right.plot(range(len(ys)), ys, marker="o", label=r["label"],
                   linestyle="-" if r["method"] == "Meta-LoRA" else "--" if r["method"] == "SR" else ":")
    right.axhline(1 / 20, color="grey", linewidth=0.8, linestyle=":", label="chance (1/20)")
    right.set(xlabel="fine-tuning epoch (0 = before)", ylabel="validation accuracy (mean over test tasks)",
              title=f"fine-tuning, seeds {doc['seeds']}")
    for ax in (left, right):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.legend(fontsize=7)
    fig.tight_layout()
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=100, format="png")


def json_ready(obj):
    """``obj`` with every non-finite float replaced by ``None`` (strict JSON has no NaN).

    Returns
    -------
    object
        A copy of ``obj`` (dicts, lists; tuples become lists) with NaN and infinities as ``None``.

    >>> json_ready({"a": float("nan"), "b": (1.0, float("inf")), "c": "x"})
    {'a': None, 'b': [1.0, None], 'c': 'x'}
    """
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: json_ready(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_ready(v) for v in obj]
    return obj


def write(doc: dict, out_dir: str) -> None:
    """``table.json``, ``table.md`` and ``accuracy.png`` in ``out_dir``, each written atomically.

    Raises
    ------
    OSError
        When ``out_dir`` cannot be written (files already written stay whole).
    """
    atomic_write_text(os.path.join(out_dir, "table.json"), json.dumps(json_ready(doc), indent=1, allow_nan=False)
                      + "\n")
    atomic_write_text(os.path.join(out_dir, "table.md"), to_markdown(doc))
    plot_curves(doc, os.path.join(out_dir, "accuracy.png"))
