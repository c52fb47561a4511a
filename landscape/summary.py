"""Summaries of a results file: counts per class, the smallest G among spurious minima, where gradient descent
ended, and a PNG of the loss values and Hessian spectra at the critical points.

``counts`` are distinct critical orbits (merged up to O(k)^T, :mod:`landscape.classify`) summed over instances;
``instances_with`` counts instances having at least one of each class. Where the critical set is not isolated (the
T = 2 family of global minima of Appendix D.1, saddles with zero eigenvalues beyond the orbit's) every distinct orbit
found counts once, so ``counts`` grows with the number of starts there; ``critical_values`` counts instead the
distinct values of G per class and instance (relative tolerance 1e-8), which a continuum of critical points shares.
"""

from __future__ import annotations

import math

import numpy as np

from .result import CLASSES
from theory.atomic import atomic_path

__all__ = ["summarize", "plot"]


def summarize(records: list[dict]) -> dict:
    """JSON-ready summary of records (:func:`landscape.store.load`).

    With adversarial chains, ``adversarial`` holds ``chains``, ``found_spurious`` (chains whose score is None, i.e.
    +inf: a spurious minimum found), ``rounds_run`` and ``best_finite_score`` (None when every chain found one)."""
    counts = {c: 0 for c in CLASSES}
    values = {c: 0 for c in CLASSES}
    with_class = {c: 0 for c in CLASSES}
    solves: dict[str, int] = {}
    gd_end = {c: 0 for c in (*CLASSES, "unconverged")}
    gd_near = {c: 0 for c in CLASSES}
    smallest = None
    settings = set()
    for rec in records:
        cfg = rec["config"]
        settings.add((cfg.get("d"), cfg.get("k"), cfg.get("T")))
        seen = set()
        for i, c in enumerate(rec["critical_points"]):
            counts[c["class"]] += 1
            seen.add(c["class"])
            if c["class"] == "spurious_min" and (smallest is None or c["loss"] < smallest["loss"]):
                smallest = {"loss": c["loss"], "index": rec["index"], "point_index": i,
                            "min_eigenvalue": c["min_eigenvalue"]}
        for c in seen:
            with_class[c] += 1
        for cls in CLASSES:
            levels = sorted(c["loss"] for c in rec["critical_points"] if c["class"] == cls)
            if cls == "global_min":  # all at G ~ 0: one value
                values[cls] += 1 if levels else 0
                continue
            last = None
            for v in levels:
                if last is None or v - last > 1e-8 * max(1.0, abs(last)):
                    values[cls] += 1
                    last = v
        for status, n in rec.get("solves", {}).items():
            solves[status] = solves.get(status, 0) + n
        for g in rec.get("gd", []):
            gd_end[g["class"]] = gd_end.get(g["class"], 0) + 1
            if g["class"] == "unconverged" and g.get("near"):
                gd_near[g["near"]] += 1
    gd_runs = sum(gd_end.values())
    out = {
        "instances": len(records),
        "settings": [{"d": d, "k": k, "T": T} for d, k, T in sorted(settings, key=str)],
        "counts": counts,
        "instances_with": with_class,
        "critical_values": values,
        "smallest_spurious_loss": smallest,
        "solves": solves,
        "gd": {"runs": gd_runs, "ended_in": gd_end, "unconverged_heading_to": gd_near,
               "fraction_spurious": (gd_end["spurious_min"] / gd_runs) if gd_runs else None},
    }
    adv = [rec["adversarial"] for rec in records if "adversarial" in rec]
    if adv:
        # a score of None (null) is +inf: the chain found a spurious minimum (landscape.adversarial.hill_climb_record)
        found = sum(1 for a in adv if a["score"] is None)
        finite = [a["score"] for a in adv if a["score"] is not None]
        out["adversarial"] = {"chains": len(adv), "found_spurious": found,
                              "rounds_run": sum(len(a["history"]) for a in adv),
                              "best_finite_score": max(finite) if finite else None}
    return out


def plot(records: list[dict], path: str) -> None:
    """Write a PNG: left, ``log10 G`` at every distinct critical point by class; right, the Hessian eigenvalues on
    the quotient at each critical point (symlog scale), one column per point, sorted by G."""
    # the object-oriented Figure API with an Agg canvas: no pyplot global state, no backend switch in the caller
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    colours = {"global_min": "tab:green", "spurious_min": "tab:red", "saddle": "tab:blue", "degenerate": "tab:gray"}
    pts = [c for rec in records for c in rec["critical_points"]]
    fig = Figure(figsize=(12, 4.5))
    FigureCanvasAgg(fig)
    ax1, ax2 = fig.subplots(1, 2)
    floor = 1e-32
    for cls in CLASSES:
        vals = [math.log10(max(c["loss"], floor)) for c in pts if c["class"] == cls]
        if vals:
            ax1.hist(vals, bins=np.linspace(-32, 4, 73), alpha=0.6, color=colours[cls], label=f"{cls} ({len(vals)})",
                     log=True)
    ax1.set_xlabel("log10 G at the critical point (floored at 1e-32)")
    ax1.set_ylabel("distinct critical points (log scale)")
    ax1.legend()
    order = sorted(range(len(pts)), key=lambda i: pts[i]["loss"])
    for x, i in enumerate(order):
        c = pts[i]
        lam = np.asarray(c["eigenvalues"], dtype=float)
        ax2.scatter(np.full(lam.size, x), lam, s=3, color=colours[c["class"]])
    ax2.set_yscale("symlog", linthresh=1e-3)
    ax2.axhline(0.0, color="black", lw=0.5)
    ax2.set_xlabel("critical point (sorted by G)")
    ax2.set_ylabel("Hessian eigenvalues on the quotient")
    fig.suptitle(f"{len(records)} instances, {len(pts)} distinct critical points")
    fig.tight_layout()
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=110, format="png")
