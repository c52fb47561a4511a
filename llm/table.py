"""The paper's Table 1 comparison: retrain (SR, Meta-LoRA-8, Meta-LoRA-16), fine-tune every test task, tabulate.

Rows (retraining -> fine-tuning rank), as the paper's Table 1:

* (a) fine-tuning with LoRA-8: SR -> LoRA-8, Meta-LoRA-8 -> LoRA-8
* (b) fine-tuning with LoRA-16: SR -> LoRA-16, Meta-LoRA-8 -> LoRA-16, Meta-LoRA-16 -> LoRA-16

A cell is a test task's held-out accuracy at the best fine-tuning epoch, median over seeds; the last column is
the average over the test tasks. Outputs in ``OUT``: ``table.md``, ``table.json`` (``{"rows": [{"method",
"retrain_rank", "finetune_rank", "accuracies", "average", ...}], "tasks", "seeds", ...}``) and ``accuracy.png``
(held-out accuracy per fine-tuning epoch, mean over test tasks and seeds). Runs (checkpoints, per-task results)
live in ``OUT/runs``; with ``resume`` finished pieces are read back instead of recomputed.
"""

from __future__ import annotations

import json
import os
import statistics
import time

from .checkpoint import atomic_path, atomic_write_text, latest_checkpoint, read_state
from .config import Config
from .data import TaskSet, load_tasks
from .train import default_schedule, finetune, retrain

__all__ = ["ROWS", "run_table", "to_markdown", "plot_curves"]

# (method, retrain rank, fine-tuning rank, table part)
ROWS = (("SR", None, 8, "a"), ("Meta-LoRA", 8, 8, "a"),
        ("SR", None, 16, "b"), ("Meta-LoRA", 8, 16, "b"), ("Meta-LoRA", 16, 16, "b"))


def _retrain_name(method: str, rank: int | None) -> str:
    return "sr" if method == "SR" else f"meta-lora-{rank}"


def _finished(run_dir: str, cfg: Config) -> bool:
    """Whether ``run_dir`` holds a finished retraining made with exactly ``cfg``."""
    last = latest_checkpoint(run_dir)
    if last is None:
        return False
    state = read_state(last)
    return state.get("epoch") == cfg.retrain_epochs and state.get("meta", {}).get("config") == cfg.to_dict()


def run_table(cfg: Config, out_dir: str, *, tasks: TaskSet | None = None, resume: bool = False,
              device: str | None = None, schedule: str | None = None, cache_dir: str | None = None,
              progress: bool = True, log=print) -> dict:
    """Run the whole comparison over ``cfg.seeds`` and write the outputs; return the JSON document."""
    t0 = time.perf_counter()
    tasks = tasks if tasks is not None else load_tasks(cfg)
    schedule = schedule or default_schedule()
    runs = os.path.join(out_dir, "runs")
    results: dict[tuple, list] = {}  # (row index, seed) -> [FinetuneResult dict per test task]
    timings: dict[str, float] = {}
    for seed in cfg.seeds:
        encoders, fresh = {}, set()  # fresh: retrained in this call, so its old fine-tuning results are stale
        for method, rank in (("SR", None), ("Meta-LoRA", 8), ("Meta-LoRA", 16)):
            name = _retrain_name(method, rank)
            run_dir = os.path.join(runs, f"seed{seed}", name)
            if not (resume and _finished(run_dir, cfg)):
                r = retrain(cfg, tasks, method="sr" if method == "SR" else "meta-lora", rank=rank, seed=seed,
                            out_dir=run_dir, resume=resume, schedule=schedule, device=device, cache_dir=cache_dir,
                            progress=progress)
                timings[f"seed{seed}/{name}"] = r.seconds
                fresh.add((method, rank))
                log(f"seed {seed}: retrained {name} in {r.seconds:.0f} s, loss per epoch "
                    + ", ".join(f"{x:.4f}" for x in r.losses))
            encoders[(method, rank)] = run_dir
        for i, (method, rr, fr, _) in enumerate(ROWS):
            per_task = []
            for j, task in enumerate(tasks.test):
                path = os.path.join(runs, f"seed{seed}", _retrain_name(method, rr), f"finetune-r{fr}", f"task{j}.json")
                if resume and os.path.isfile(path) and (method, rr) not in fresh:
                    with open(path, encoding="utf-8") as fh:
                        old = json.load(fh)
                    if old.get("config") == cfg.to_dict() and old.get("task") == task.name:
                        per_task.append(old)
                        continue
                f = finetune(cfg, encoders[(method, rr)], task, rank=fr, seed=seed, device=device,
                             cache_dir=cache_dir, progress=progress)
                atomic_write_text(path, json.dumps({**f.to_dict(), "config": cfg.to_dict()}, indent=1))
                timings[f"seed{seed}/{_retrain_name(method, rr)}/finetune-r{fr}/task{j}"] = f.seconds
                per_task.append(f.to_dict())
            results[(i, seed)] = per_task
            log(f"seed {seed}: {method}{'-' + str(rr) if rr else ''} -> LoRA-{fr}: "
                + " ".join(f"{d['best']:.3f}" for d in per_task))
    rows = []
    for i, (method, rr, fr, part) in enumerate(ROWS):
        accs = [statistics.median(results[(i, s)][j]["best"] for s in cfg.seeds) for j in range(len(tasks.test))]
        curves = [[d["accuracies"][e] for s in cfg.seeds for d in results[(i, s)]] for e in range(cfg.finetune_epochs)]
        rows.append({"method": method, "retrain_rank": rr, "finetune_rank": fr, "accuracies": accs,
                     "average": sum(accs) / len(accs), "table": f"1({part})",
                     "epoch_curve": [sum(c) / len(c) for c in curves]})
    doc = {"rows": rows, "tasks": [t.name for t in tasks.test], "seeds": list(cfg.seeds),
           "retrain_tasks": [t.name for t in tasks.retrain], "data": tasks.summary(), "model": cfg.model,
           "schedule": schedule, "config": cfg.to_dict(), "elapsed_s": time.perf_counter() - t0,
           "timings_s": timings}
    os.makedirs(out_dir, exist_ok=True)
    atomic_write_text(os.path.join(out_dir, "table.json"), json.dumps(doc, indent=1) + "\n")
    atomic_write_text(os.path.join(out_dir, "table.md"), to_markdown(doc))
    plot_curves(doc, os.path.join(out_dir, "accuracy.png"))
    return doc


def _row_label(r: dict) -> str:
    left = "SR" if r["method"] == "SR" else f"Meta-LoRA-{r['retrain_rank']}"
    return f"{left} -> LoRA-{r['finetune_rank']}"


def to_markdown(doc: dict) -> str:
    """Table 1(a) and 1(b) in Markdown: per-task accuracy (median over seeds) and the average."""
    names = [t[:8] for t in doc["tasks"]]
    lines = []
    for part, title in (("a", "fine-tuning with LoRA-8"), ("b", "fine-tuning with LoRA-16")):
        lines += [f"**Table 1({part})**: {title}; held-out accuracy among 20 candidates at the best epoch, median "
                  f"over seeds {doc['seeds']}", "",
                  "| retraining -> fine-tuning | " + " | ".join(f"task {n}" for n in names) + " | average |",
                  "|---|" + "---:|" * (len(names) + 1)]
        for r in doc["rows"]:
            if r["table"] == f"1({part})":
                lines.append(f"| {_row_label(r)} | " + " | ".join(f"{a:.3f}" for a in r["accuracies"])
                             + f" | {r['average']:.3f} |")
        lines.append("")
    return "\n".join(lines)


def plot_curves(doc: dict, path: str) -> None:
    """PNG of held-out accuracy per fine-tuning epoch, one line per row (mean over test tasks and seeds)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for r in doc["rows"]:
        ys = r["epoch_curve"]
        ax.plot(range(1, len(ys) + 1), ys, marker="o", label=_row_label(r),
                linestyle="-" if r["method"] == "Meta-LoRA" else "--")
    ax.axhline(1 / 20, color="grey", linewidth=0.8, linestyle=":", label="chance (1/20)")
    ax.set_xlabel("fine-tuning epoch")
    ax.set_ylabel("held-out accuracy (mean over test tasks)")
    ax.set_title(f"{doc['model']} on {doc['data']['source']}, seeds {doc['seeds']}")
    ax.legend(fontsize=8)
    fig.tight_layout()
    try:
        with atomic_path(path, suffix=".png") as tmp:
            fig.savefig(tmp, dpi=100)
    finally:
        plt.close(fig)
