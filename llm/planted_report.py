"""Tables, verdicts, CSVs and PNG panels of ``llm planted`` from the records of :func:`llm.planted.run_planted`.

Seeds are the unit of replication: every number is given per seed and summarised by its median and range
(min, max) over seeds; comparisons of two bases are paired within a seed (same planted truth, data, batches
and fine-tuning start). Verdicts per setting (T, k), each with its margin:

* ``thm3.1``: SR's difference ``W_SR - A*`` (data metric) has numerical rank ``Tk`` in every seed (threshold:
  ``threshold`` times the ``Tk``-th singular value of the linear prediction ``mean_t Delta_t``). Margins: the
  smallest ``sigma_Tk / tau`` and the largest ``sigma_{Tk+1} / tau`` over seeds.
* ``thm3.3`` (T >= 3): Meta-LoRA's difference has numerical rank 0 in every seed; margin: the largest
  ``sigma_1 / tau``. ``thm3.2`` (T = 2): its numerical rank is at most ``2k``.
* ``cor1-vs-cor3``: fine-tuned at rank k, the Meta-LoRA base has a lower test loss than the SR base in every seed;
  margin: the paired ratio ``loss_SR(k) / loss_Meta(k)`` (median, range).
* ``cor1-rank``: raising the fine-tuning rank from k to ``(T+1)k`` helps the SR base more than the Meta-LoRA base
  in every seed: paired ``g_SR > g_Meta`` with ``g = loss(k) / loss((T+1)k)``.

SR's absorption of task differences: its pooled retraining loss relative to that of the linear prediction
``A* + mean_t Delta_t`` (1 in the linear model; below 1 when the network lets SR fit the tasks better than any
shared linear average would), and the coefficient of ``W_SR - A*`` on ``mean_t Delta_t`` in the data metric (1 in
the linear model).
"""

from __future__ import annotations

import csv
import io
import os

import numpy as np

from .atomic import atomic_path, atomic_write_text
from .planted_config import finetune_ranks

__all__ = ["summarise", "write_outputs", "json_view"]


def _stats(values) -> dict:
    v = np.asarray(values, dtype=float)
    return {"median": float(np.median(v)), "min": float(v.min()), "max": float(v.max())}


def _by_seed(records, T, k):
    return {r["seed"]: r for r in records if (r["T"], r["k"]) == (T, k)}


def _final(rec, n, rank, method) -> float:
    for f in rec["finetune"]:
        if (f["n"], f["rank"], f["method"]) == (n, rank, method):
            return f["test_loss"][-1]
    raise KeyError((n, rank, method))


def _pretrained(rec, n) -> float:
    """Test loss of the pretrained model itself (the 'none' base before fine-tuning)."""
    return next(f["test_loss"][0] for f in rec["finetune"] if f["n"] == n and f["method"] == "none")


def finetune_table(records) -> list[dict]:
    """One row per (T, k, n, rank, method): per-seed final test losses, median and range; relative = divided by
    the pretrained model's test loss of the same seed.

    Returns
    -------
    list of dict
        Keys ``T``, ``k``, ``n``, ``finetune_rank``, ``method``, ``test_loss`` (median over seeds, MSE),
        ``range`` (``[min, max]``), ``seeds``, ``per_seed``, ``test_loss_rel`` (median) and ``per_seed_rel``;
        ordered by k, T, n, rank and method (none, SR, Meta-LoRA).
    """
    keys = sorted({(r["T"], r["k"], f["n"], f["rank"], f["method"]) for r in records for f in r["finetune"]},
                  key=lambda x: (x[1], x[0], x[2], x[3], ("none", "sr", "meta-lora").index(x[4])))
    rows = []
    for T, k, n, rank, method in keys:
        recs = sorted(_by_seed(records, T, k).items())
        vals = [_final(rec, n, rank, method) for _, rec in recs]
        rel = [v / _pretrained(rec, n) for v, (_, rec) in zip(vals, recs)]
        s = _stats(vals)
        rows.append({"T": T, "k": k, "n": n, "finetune_rank": rank, "method": method, "test_loss": s["median"],
                     "range": [s["min"], s["max"]], "seeds": [sd for sd, _ in recs], "per_seed": vals,
                     "test_loss_rel": float(np.median(rel)), "per_seed_rel": rel})
    return rows


def spectra_table(records) -> list[dict]:
    """One row per (T, k, layer, method): per-seed numerical ranks, thresholds, leading singular values.

    Returns
    -------
    list of dict
        Keys ``T``, ``k``, ``layer``, ``method``, and the per-seed lists ``seeds``, ``numerical_rank``,
        ``threshold``, ``singular_values`` (each ``(2 (T+1) k + 4,)`` at most, data metric) and
        ``bias_coefficient``.
    """
    out = {}
    for r in records:
        for s in r["spectra"]:
            key = (r["T"], r["k"], s["layer"], s["method"])
            row = out.setdefault(key, {"T": r["T"], "k": r["k"], "layer": s["layer"], "method": s["method"],
                                       "seeds": [], "numerical_rank": [], "threshold": [], "singular_values": [],
                                       "bias_coefficient": []})
            row["seeds"].append(r["seed"])
            row["numerical_rank"].append(s["numerical_rank"])
            row["threshold"].append(s["threshold"])
            row["singular_values"].append(s["singular_values"])
            row["bias_coefficient"].append(s["bias_coefficient"])
    return list(out.values())


def _verdict(name, claim, held, margin) -> dict:
    return {"prediction": name, "claim": claim, "held": bool(held), "margin": margin}


def _spectral_verdicts(spec_rows, T, k) -> list[dict]:
    out = []
    for row in spec_rows:
        if (row["T"], row["k"]) != (T, k) or row["method"] not in ("sr", "meta-lora"):
            continue
        tau = np.asarray(row["threshold"])
        sv = [np.asarray(v) for v in row["singular_values"]]
        ranks = row["numerical_rank"]
        if row["method"] == "sr":
            lo = [float(v[T * k - 1] / t) for v, t in zip(sv, tau)]
            hi = [float(v[T * k] / t) if len(v) > T * k else 0.0 for v, t in zip(sv, tau)]
            out.append(_verdict("thm3.1", f"{row['layer']}: rank(W_SR - A*) = Tk = {T * k}",
                                all(r == T * k for r in ranks),
                                {"ranks": ranks, "sigma_Tk_over_tau": _stats(lo), "sigma_Tk+1_over_tau": _stats(hi),
                                 "bias_coefficient": _stats(row["bias_coefficient"])}))
        else:
            top = [float(v[0] / t) for v, t in zip(sv, tau)]
            if T >= 3:
                out.append(_verdict("thm3.3", f"{row['layer']}: W_Meta = A* (numerical rank 0)",
                                    all(r == 0 for r in ranks), {"ranks": ranks, "sigma_1_over_tau": _stats(top)}))
            else:
                out.append(_verdict("thm3.2", f"{row['layer']}: rank(W_Meta - A*) <= 2k = {2 * k}",
                                    all(r <= 2 * k for r in ranks), {"ranks": ranks,
                                                                     "sigma_1_over_tau": _stats(top)}))
    return out


def _loss_verdicts(records, T, k, n) -> list[dict]:
    recs = [rec for _, rec in sorted(_by_seed(records, T, k).items())]
    top = (T + 1) * k
    sr_k = np.array([_final(r, n, k, "sr") for r in recs])
    me_k = np.array([_final(r, n, k, "meta-lora") for r in recs])
    sr_top = np.array([_final(r, n, top, "sr") for r in recs])
    me_top = np.array([_final(r, n, top, "meta-lora") for r in recs])
    ratio = sr_k / me_k
    g_sr, g_me = sr_k / sr_top, me_k / me_top
    return [_verdict("cor1-vs-cor3", f"rank-{k} fine-tuning: loss(SR base) > loss(Meta-LoRA base)",
                     bool(np.all(ratio > 1)), {"ratio_sr_over_meta": _stats(ratio),
                                               "difference_sr_minus_meta": _stats(sr_k - me_k)}),
            _verdict("cor1-rank", f"rank {k} -> {top}: gain g = loss(k)/loss({top}) larger on SR than on Meta-LoRA",
                     bool(np.all(g_sr > g_me)), {"g_sr": _stats(g_sr), "g_meta": _stats(g_me),
                                                 "sr_at_top_over_meta_at_k": _stats(sr_top / me_k)})]


def _absorption(records, T, k) -> dict:
    recs = [rec for _, rec in sorted(_by_seed(records, T, k).items())]
    rho = [r["pooled_loss"]["sr"] / r["pooled_loss"]["linear-prediction"] for r in recs]
    meta = [r["pooled_loss"]["meta-lora"] / r["pooled_loss"]["linear-prediction"] for r in recs]
    return {"T": T, "k": k, "sr_loss_over_linear_prediction": _stats(rho),
            "meta_loss_over_linear_prediction": _stats(meta),
            "pooled_loss": {m: _stats([r["pooled_loss"][m] for r in recs]) for m in recs[0]["pooled_loss"]}}


def summarise(result: dict) -> dict:
    """``rows``, ``spectra``, ``verdicts`` (per setting) and ``absorption`` of a run (module docstring).

    Parameters
    ----------
    result : dict
        What :func:`llm.planted.run_planted` returned.

    Returns
    -------
    dict
        ``rows`` (:func:`finetune_table`), ``spectra`` (:func:`spectra_table`), ``verdicts`` (one
        ``{"T", "k", "checks"}`` per setting; each check has ``prediction``, ``claim``, ``held`` and ``margin``)
        and ``absorption`` (SR's and Meta-LoRA's pooled loss relative to the linear prediction's).
    """
    records, cfg = result["records"], result["config"]
    rows, spec = finetune_table(records), spectra_table(records)
    settings = sorted({(r["T"], r["k"]) for r in records}, key=lambda x: (x[1], x[0]))
    verdicts = [{"T": T, "k": k, "checks": _spectral_verdicts(spec, T, k)
                 + _loss_verdicts(records, T, k, cfg["finetune_turns"])} for T, k in settings]
    return {"rows": rows, "spectra": spec, "verdicts": verdicts,
            "absorption": [_absorption(records, T, k) for T, k in settings]}


def json_view(summary: dict, n: int) -> dict:
    """What ``--json`` prints: ``{"rows": [...], "spectra": [...]}``.

    ``rows``: one per (T, k, finetune_rank, method) at the main number ``n`` of training turns of the new task,
    with exactly the keys ``T, k, finetune_rank, method, test_loss, seeds``: ``test_loss`` the median over seeds
    of the final held-out loss, ``seeds`` a list of ``{"seed": s, "test_loss": loss of seed s}`` (the range is
    their min and max). The n sweep's rows are in ``summary.json`` and ``finetune_rank.csv``. ``spectra``: the
    rows of :func:`spectra_table`.

    Returns
    -------
    dict
        ``{"rows": [...], "spectra": [...]}``.
    """
    keys = ("T", "k", "finetune_rank", "method", "test_loss")
    rows = [{**{key: r[key] for key in keys},
             "seeds": [{"seed": s, "test_loss": v} for s, v in zip(r["seeds"], r["per_seed"])]}
            for r in summary["rows"] if r["n"] == n]
    return {"rows": rows, "spectra": summary["spectra"]}


# ----------------------------------------------------------------------------------------------------- files

def _csv_text(header, rows) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    w.writerows(rows)
    return buf.getvalue()


def _csvs(result) -> dict[str, str]:
    recs = result["records"]
    fr, fc, rc, sp, pl = [], [], [], [], []
    for r in recs:
        base = (r["T"], r["k"])
        for f in r["finetune"]:
            pre = _pretrained(r, f["n"])
            fr.append((*base, f["n"], f["rank"], f["method"], r["seed"], f["test_loss"][-1],
                       f["test_loss"][-1] / pre, f["train_loss"][-1]))
            fc += [(*base, f["n"], f["rank"], f["method"], r["seed"], s, v, w)
                   for s, v, w in zip(f["steps"], f["test_loss"], f["train_loss"])]
        for c in r["retrain"]:
            rc += [(*base, c["method"], r["seed"], i + 1, v) for i, v in enumerate(c["losses"])]
        for s in r["spectra"]:
            sp += [(*base, s["layer"], s["method"], r["seed"], i + 1, v, w, s["threshold"])
                   for i, (v, w) in enumerate(zip(s["singular_values"], s["raw_singular_values"]))]
        pl += [(*base, r["seed"], m, v) for m, v in r["pooled_loss"].items()]
    return {
        "finetune_rank.csv": _csv_text(["T", "k", "n", "rank", "method", "seed", "test_loss", "test_loss_rel",
                                        "train_loss"], fr),
        "finetune_curve.csv": _csv_text(["T", "k", "n", "rank", "method", "seed", "step", "test_loss",
                                         "train_loss"], fc),
        "retrain_curve.csv": _csv_text(["T", "k", "method", "seed", "step", "loss"], rc),
        "spectra.csv": _csv_text(["T", "k", "layer", "method", "seed", "index", "singular_value",
                                  "raw_singular_value", "threshold"], sp),
        "pooled_loss.csv": _csv_text(["T", "k", "seed", "weights", "loss"], pl),
    }


def write_outputs(out: str, result: dict, summary: dict, command: str) -> list[str]:
    """Write ``summary.json``, the CSVs, ``command.txt`` and the PNG panels into ``out`` (each file atomically:
    temporary file + rename).

    Returns
    -------
    list of str
        The file names written, ``summary.json`` last.

    Raises
    ------
    OSError
        When ``out`` cannot be created or written (files already written stay whole).
    """
    import json

    from .planted_plots import write_plots

    os.makedirs(out, exist_ok=True)
    names = []
    for name, text in _csvs(result).items():
        atomic_write_text(os.path.join(out, name), text)
        names.append(name)
    for name, fig in write_plots(result, summary):
        with atomic_path(os.path.join(out, name), suffix=".png") as tmp:
            fig.savefig(tmp, dpi=110, format="png")
        names.append(name)
    atomic_write_text(os.path.join(out, "command.txt"), command + "\n")
    doc = {"command": command, **{k: result[k] for k in ("config", "layers", "pool", "elapsed_s", "threads",
                                                         "load_average")},
           **summary, "ranks": {f"{T}x{k}": finetune_ranks(T, k) for T, k in
                                sorted({(r["T"], r["k"]) for r in result["records"]})}}
    atomic_write_text(os.path.join(out, "summary.json"), json.dumps(doc, indent=1) + "\n")
    return names + ["command.txt", "summary.json"]
