"""The paper's Table 1 comparison with its controls: retrain, fine-tune every test task, compare over seeds.

Rows (retraining -> fine-tuning), for every fine-tuning rank ``r'`` of ``cfg.finetune_ranks``:

* controls: ``none -> none`` (the pretrained scorer as it is; once) and ``none -> LoRA-r'`` (no retraining);
* ``SR -> LoRA-r'`` and ``Meta-LoRA-r -> LoRA-r'`` for every ``r`` of ``cfg.meta_ranks`` with ``r <= r'`` (the
  paper's Table 1(a) is ``r' = 8``, 1(b) ``r' = 16``).

Every row is run for every retraining seed of ``cfg.seeds`` (the unit of replication: a seed redraws the
retraining and the fine-tuning), on the same held-out items; epochs are chosen on validation splits, never on the
scored items unless ``cfg.select = 'heldout'`` (labelled optimistic). :mod:`llm.stats` turns the 0/1 results into
intervals and paired comparisons (:mod:`llm.report` writes them out). Runs (checkpoints, per-task results) live in
``OUT/runs``; with ``resume`` finished pieces are read back instead of recomputed; when the table is complete the
checkpoints, which only serve resuming, are removed unless ``keep_checkpoints``.
"""

from __future__ import annotations

import hashlib
import json
import os
import time

import numpy as np

from . import checkpoint as ckpt_mod
from . import stats
from .adapters import TABLE_SCHEDULE
from .atomic import atomic_write_text
from .config import Config, LLMError
from .data import TaskSet, load_tasks
from .finetune import evaluate_base, finetune_tasks
from .loop import make_accelerator
from .models import load_hf_model, load_tokenizer
from .prefix import SplitCache
from .train import retrain

__all__ = ["table_rows", "run_table", "row_label", "comparisons_of"]


def table_rows(cfg: Config) -> list[dict]:
    """The rows of the table for ``cfg`` (see the module docstring), controls first.

    Returns
    -------
    list of dict
        Each with ``method`` (``'none'``, ``'SR'``, ``'Meta-LoRA'``), ``retrain_rank``, ``finetune_rank``
        (``None``: no fine-tuning), ``table`` (``'controls'`` or ``'LoRA-r'``) and ``label`` (:func:`row_label`).

    >>> from llm.config import preset
    >>> [r["label"] for r in table_rows(preset("smoke"))]
    ['none -> none', 'none -> LoRA-8', 'SR -> LoRA-8', 'Meta-LoRA-8 -> LoRA-8']
    """
    rows = [{"method": "none", "retrain_rank": None, "finetune_rank": None, "table": "controls"}]
    for fr in cfg.finetune_ranks:
        part = f"LoRA-{fr}"
        rows.append({"method": "none", "retrain_rank": None, "finetune_rank": fr, "table": part})
        rows.append({"method": "SR", "retrain_rank": None, "finetune_rank": fr, "table": part})
        rows += [{"method": "Meta-LoRA", "retrain_rank": r, "finetune_rank": fr, "table": part}
                 for r in cfg.meta_ranks if r <= fr]
    for r in rows:
        r["label"] = row_label(r)
    return rows


def row_label(r: dict) -> str:
    """The row's name in the table: ``"<retraining> -> <fine-tuning>"``.

    Parameters
    ----------
    r : dict
        A row of :func:`table_rows`: ``method`` (``'none'``, ``'SR'`` or ``'Meta-LoRA'``), ``retrain_rank`` and
        ``finetune_rank`` (``None`` for no fine-tuning).

    Returns
    -------
    str
        ``"<retraining> -> <fine-tuning>"``.

    >>> row_label({"method": "Meta-LoRA", "retrain_rank": 8, "finetune_rank": 8})
    'Meta-LoRA-8 -> LoRA-8'
    >>> row_label({"method": "none", "retrain_rank": None, "finetune_rank": None})
    'none -> none'
    """
    left = {"none": "none", "SR": "SR"}.get(r["method"], f"Meta-LoRA-{r['retrain_rank']}")
    right = "none" if r["finetune_rank"] is None else f"LoRA-{r['finetune_rank']}"
    return f"{left} -> {right}"


def comparisons_of(rows: list[dict]) -> list[tuple[str, str, int | None, bool]]:
    """(a, b, fine-tuning rank, primary) pairs: every pair of rows at one fine-tuning rank, and every retrained
    row against ``none -> none``. The primary comparisons are Meta-LoRA against SR at the same ranks.

    Parameters
    ----------
    rows : list of dict
        :func:`table_rows`, the control ``none -> none`` first.

    Returns
    -------
    list of tuple
        ``(label a, label b, finetune_rank, primary)``; the later row of a pair is ``a`` (Meta-LoRA rows come
        after SR, so ``delta = a - b`` is Meta-LoRA minus SR).

    >>> from llm.config import preset
    >>> pairs = comparisons_of(table_rows(preset("smoke")))
    >>> len(pairs), [(a, b) for a, b, _, primary in pairs if primary]
    (6, [('Meta-LoRA-8 -> LoRA-8', 'SR -> LoRA-8')])
    """
    out = []
    ctrl = rows[0]["label"]
    for fr in dict.fromkeys(r["finetune_rank"] for r in rows[1:]):
        same = [r for r in rows if r["finetune_rank"] == fr]
        for i, a in enumerate(same):
            for b in same[:i][::-1]:
                out.append((a["label"], b["label"], fr, a["method"] == "Meta-LoRA" and b["method"] == "SR"))
        out += [(r["label"], ctrl, fr, False) for r in same]
    return out


def _base_name(method: str, rank: int | None) -> str:
    return {"none": "none", "SR": "sr"}.get(method, f"meta-lora-{rank}")


def _digest(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:16]


class _Run:
    """State of one table run: where pieces live, what was reused, timings."""

    def __init__(self, cfg: Config, out_dir: str, tasks: TaskSet, *, resume, device, schedule, cache_dir,
                 progress, log, splits: SplitCache | None = None):
        self.cfg, self.tasks, self.resume, self.device = cfg, tasks, resume, device
        self.schedule, self.cache_dir, self.progress, self.log = schedule, cache_dir, progress, log
        self.runs = os.path.join(out_dir, "runs")
        self.timings: dict[str, float] = {}
        self.retraining: list[dict] = []
        acc = make_accelerator(device)
        self.splits = splits or SplitCache(cfg, load_tokenizer(cfg.model), cache_dir=cache_dir, device=acc.device)
        self._pretrained = None

    def pretrained(self):
        if self._pretrained is None:
            self._pretrained = load_hf_model(self.cfg.model)
        return self._pretrained

    def _summary(self, seed: int, method: str, rank: int | None):
        """``(run folder, summary)`` of a retraining; the summary is ``None`` unless finished with this config."""
        run_dir = os.path.join(self.runs, f"seed{seed}", _base_name(method, rank))
        summary = _read_json(os.path.join(run_dir, "retrain.json")) if self.resume else None
        if summary and summary.get("config") != self.cfg.to_dict():
            summary = None
        return run_dir, summary

    def _retrain(self, seed: int, method: str, rank: int | None) -> dict:
        run_dir, summary = self._summary(seed, method, rank)
        name = _base_name(method, rank)
        last = ckpt_mod.latest_checkpoint(run_dir)
        if summary and last and ckpt_mod.read_state(last).get("epoch") == self.cfg.retrain_epochs:
            return summary
        r = retrain(self.cfg, self.tasks, method="sr" if method == "SR" else "meta-lora", rank=rank, seed=seed,
                    out_dir=run_dir, resume=self.resume, schedule=self.schedule, device=self.device,
                    cache_dir=self.cache_dir, progress=self.progress, splits=self.splits)
        self.timings[f"seed{seed}/{name}"] = r.seconds
        summary = {**r.to_dict(), "config": self.cfg.to_dict()}
        atomic_write_text(os.path.join(run_dir, "retrain.json"), json.dumps(summary, indent=1) + "\n")
        self.log(f"seed {seed}: retrained {name} in {r.seconds:.0f} s; loss per epoch "
                 + ", ".join(f"{x:.3f}" for x in r.losses) + "; validation accuracy "
                 + ", ".join(f"{x:.3f}" for x in r.val_accuracies) + f"; epoch {r.best_epoch} selected")
        return summary

    def rows_of_base(self, seed: int, method: str, rank: int | None, rows: list[tuple[int, dict]]) -> dict:
        """Results of ``rows`` (index, row) fine-tuned from one base: every piece read back when all are finished
        with this base, else the base is (re)trained or loaded and the missing pieces computed."""
        if method == "none":
            identity, summary = "pretrained", None
        else:
            _, summary = self._summary(seed, method, rank)
            identity = _identity(summary) if summary else None
        out = {i: [self._read_piece(seed, row, j, identity) for j in range(len(self.tasks.test))] for i, row in rows}
        if all(d is not None for v in out.values() for d in v):
            model = None
        elif method == "none":
            model = self.pretrained()
        else:
            summary = self._retrain(seed, method, rank)
            identity = _identity(summary)
            model = load_hf_model(ckpt_mod.best_checkpoint(os.path.join(self.runs, f"seed{seed}",
                                                                        _base_name(method, rank))))
        if summary:
            self.retraining.append({k: summary[k] for k in ("method", "rank", "seed", "losses", "val_accuracies",
                                                             "best_epoch", "seconds")})
        for i, row in rows:
            if any(d is None for d in out[i]) or any(d.get("base") != identity for d in out[i]):
                out[i] = self._compute_row(seed, row, model, identity)
        return out

    def _piece_path(self, seed: int, row: dict, j: int) -> str:
        fr = row["finetune_rank"]
        return os.path.join(self.runs, f"seed{seed}", _base_name(row["method"], row["retrain_rank"]),
                            "none" if fr is None else f"finetune-r{fr}", f"task{j}.json")

    def _read_piece(self, seed: int, row: dict, j: int, identity: str | None) -> dict | None:
        old = _read_json(self._piece_path(seed, row, j)) if self.resume and identity else None
        ok = old and old.get("config") == self.cfg.to_dict() and old.get("task") == self.tasks.test[j].name \
            and old.get("base") == identity
        return old if ok else None

    def _compute_row(self, seed: int, row: dict, base, identity: str) -> list[dict]:
        """Every test task of one row (fine-tuned together, each with its own adapter), each saved as a piece."""
        fr, tasks = row["finetune_rank"], list(self.tasks.test)
        if fr is None:
            res = evaluate_base(self.cfg, base, tasks, seed=seed, device=self.device, cache_dir=self.cache_dir,
                                splits=self.splits)
        else:
            res = finetune_tasks(self.cfg, base, tasks, rank=fr, seed=seed, device=self.device,
                                 cache_dir=self.cache_dir, progress=self.progress, splits=self.splits)
        docs = []
        for j, f in enumerate(res):
            where = self._piece_path(seed, row, j)
            self.timings[where[len(self.runs) + 1:-5]] = f.seconds
            doc = {**f.to_dict(), "config": self.cfg.to_dict(), "base": identity}
            atomic_write_text(where, json.dumps(doc) + "\n")
            docs.append(doc)
        return docs


def _identity(summary: dict) -> str:
    """Names one retraining by what it produced, so pieces fine-tuned from another one are never mixed in."""
    return _digest({k: summary[k] for k in ("losses", "val_accuracies", "best_epoch")})


def _read_json(path: str):
    if not os.path.isfile(path):
        return None
    try:
        with open(path, encoding="utf-8") as fh:
            return json.load(fh)
    except (OSError, ValueError):
        return None  # a damaged piece is recomputed


def _bases(rows: list[dict]) -> list[tuple[str, int | None]]:
    return list(dict.fromkeys((r["method"], r["retrain_rank"]) for r in rows))


def run_table(cfg: Config, out_dir: str, *, tasks: TaskSet | None = None, resume: bool = False,
              device: str | None = None, schedule: str | None = None, cache_dir: str | None = None,
              progress: bool = True, keep_checkpoints: bool = False, log=print,
              splits: SplitCache | None = None) -> dict:
    """Run every row over ``cfg.seeds``, write ``table.md``, ``table.json`` and ``accuracy.png`` into ``out_dir``,
    and return the JSON document (see :mod:`llm.report` for its fields).

    ``tasks`` / ``splits``: the task set and (pre-)tokenised splits to use instead of building them from
    ``cfg.data`` (an offline bundle provides both).

    Returns
    -------
    dict
        The ``table.json`` document (``rows``, ``comparisons``, ``n_items``, ``seeds``, ``tasks``, the
        retraining record, configuration and timings in seconds); non-finite floats are still NaN here
        (:func:`llm.report.json_ready` turns them into ``null`` in the file).

    Raises
    ------
    LLMError
        For bad input: data that cannot be read or built into tasks (:class:`llm.config.DataError`,
        :class:`llm.config.CandidateError`), a model that cannot be loaded (:class:`llm.config.ModelError`), a
        bad device or schedule.
    NonFiniteLossError
        When a training loss is not finite (passed through, like ``KeyboardInterrupt``: finished pieces stay in
        ``out_dir/runs`` for ``resume``).
    OSError
        When ``out_dir`` cannot be written.
    """
    from . import report

    t0 = time.perf_counter()
    if tasks is None:
        tasks = load_tasks(cfg)  # bad data is refused here, before anything is printed
        log(f"read {cfg.data}: {len(tasks.retrain)} retraining + {len(tasks.test)} test tasks")
    n_rows = len(table_rows(cfg))
    log(f"{n_rows} rows x {len(cfg.seeds)} seeds; each row prints one line when it ends (the first also tokenises "
        f"and, with frozen blocks, caches their outputs: a few minutes on 2 cores)")
    schedule = schedule or TABLE_SCHEDULE
    run = _Run(cfg, out_dir, tasks, resume=resume, device=device, schedule=schedule, cache_dir=cache_dir,
               progress=progress, log=log, splits=splits)
    rows = table_rows(cfg)
    results: dict[tuple[int, int], list[dict]] = {}
    for seed in cfg.seeds:
        for method, rank in _bases(rows):
            mine = [(i, r) for i, r in enumerate(rows) if (r["method"], r["retrain_rank"]) == (method, rank)]
            for i, got in run.rows_of_base(seed, method, rank, mine).items():
                results[(i, seed)] = got
                accs = " ".join(f"{d['accuracy']:.2f}" for d in got)
                log(f"seed {seed}: {rows[i]['label']}: mean {np.mean([d['accuracy'] for d in got]):.3f} "
                    f"(per task {accs})")
    doc = _document(cfg, rows, results, tasks, run, schedule, time.perf_counter() - t0)
    os.makedirs(out_dir, exist_ok=True)
    report.write(doc, out_dir)
    if not keep_checkpoints:
        for seed in cfg.seeds:
            for method, rank in _bases(rows):
                ckpt_mod.remove_checkpoints(os.path.join(run.runs, f"seed{seed}", _base_name(method, rank)))
    return doc


def _document(cfg: Config, rows: list[dict], results: dict, tasks: TaskSet, run: _Run, schedule: str,
              elapsed: float) -> dict:
    groups = np.concatenate([np.full(len(t.heldout), j) for j, t in enumerate(tasks.test)])
    matrices, out_rows = {}, []
    for i, row in enumerate(rows):
        x = np.array([[c for d in results[(i, s)] for c in d["correct"]] for s in cfg.seeds], dtype=float)
        if x.shape[1] != groups.size:
            raise LLMError(f"row {row['label']}: {x.shape[1]} scored items where {groups.size} were expected")
        matrices[row["label"]] = x
        summary = stats.summarise(x, groups)
        val = np.array([d["val_accuracies"] for s in cfg.seeds for d in results[(i, s)]], dtype=float)
        out_rows.append({**row, **summary, "average": summary["accuracy"], "accuracies": summary["per_task"],
                         "val_curve": np.nanmean(val, axis=0).tolist() if val.size and not np.isnan(val).all()
                         else [],
                         "selected_epochs": [d["selected_epoch"] for s in cfg.seeds for d in results[(i, s)]]})
    comps = []
    for a, b, fr, primary in comparisons_of(rows):
        comps.append({"a": a, "b": b, "finetune_rank": fr, "primary": primary,
                      **stats.compare(matrices[a], matrices[b], groups)})
    return {"rows": out_rows, "comparisons": comps, "n_items": int(groups.size), "seeds": list(cfg.seeds),
            "tasks": [t.name for t in tasks.test], "items_per_task": [len(t.heldout) for t in tasks.test],
            "retrain_tasks": [t.name for t in tasks.retrain], "data": tasks.summary(), "model": cfg.model,
            "scorer": cfg.scorer, "freeze_layers": cfg.freeze_layers, "select": cfg.select,
            "optimistic": cfg.select == "heldout", "schedule": schedule, "config": cfg.to_dict(),
            "retraining": run.retraining, "elapsed_s": elapsed, "timings_s": run.timings}
