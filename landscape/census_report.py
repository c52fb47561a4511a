"""Summaries of a census (:mod:`landscape.census`): one row per cell with 95% Wilson intervals, a Markdown table and
heat maps.

Every fraction is ``k / n`` with its 95% Wilson score interval (``scipy.stats.binomtest(k, n).proportion_ci(
method="wilson")``; Wilson 1927, Newcombe 1998 method 3). The unit of replication is named with each fraction: an
instance (a fresh ground truth) for "instances with a certified spurious minimum", a gradient-descent run for "runs
that ended in one" (runs of one instance share its ground truth, so their interval is a little too narrow when
instances differ; the instance-level fraction is given beside it). When ``k = 0`` the interval's upper end is the
bound that zero implies (``z^2 / (n + z^2)``, about ``3.84 / n``).

>>> lo, hi = wilson(0, 500)
>>> lo, round(hi, 5)
(0.0, 0.00762)
"""

from __future__ import annotations

import math

import numpy as np

from .census import OUTCOMES
from theory.atomic import atomic_path

__all__ = ["wilson", "fraction", "check_census_record", "cell_summary", "markdown", "margins",
           "margins_markdown", "heat_maps", "heat_map_figure", "POOLED"]


def wilson(k: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """The Wilson score interval of ``k`` successes in ``n`` trials (``(nan, nan)`` when ``n = 0``)."""
    from scipy.stats import binomtest

    if n == 0:
        return float("nan"), float("nan")
    ci = binomtest(int(k), int(n)).proportion_ci(confidence_level=confidence, method="wilson")
    return float(ci.low), float(ci.high)


def fraction(k: int, n: int, unit: str) -> dict:
    """``{"k", "n", "unit", "fraction", "low", "high"}``: ``k / n`` and its 95% Wilson interval."""
    lo, hi = wilson(k, n)
    return {"k": int(k), "n": int(n), "unit": unit, "fraction": (k / n) if n else None,
            "low": lo if n else None, "high": hi if n else None}


def _verdict(c: dict) -> str:
    """certified / refuted / inconclusive for one candidate (either certificate may decide)."""
    if c["certified"]:
        return "certified"
    for cert in (c["krawczyk"], c.get("epsnet")):
        if cert and (cert["verdict"] == "certified-not-minimum" or cert.get("minimum_kind") == "global"):
            return "refuted"
    return "inconclusive"


def _number(v) -> bool:
    """A finite number (a NaN would be rewritten as null, :mod:`theory.strict_json`, and refused then)."""
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _certificate_ok(c) -> bool:
    return isinstance(c, dict) and isinstance(c.get("verdict"), str) and _number(c.get("seconds"))


def check_census_record(rec: dict, where: str, config: dict) -> None:
    """Refuse (``ProblemError`` starting with ``where``) a record, already accepted by
    :func:`landscape.store.check_record`, that is not a census record of the cell whose options are ``config``
    (:func:`landscape.census.cell_config`): other options, or the census keys :func:`cell_summary` reads missing
    or of the wrong type.

    Raises
    ------
    ProblemError
        The record was made with other options than the plan, or a key is missing or of the wrong type (the message
        names the record and the key).
    """
    from theory.problem import ProblemError

    if rec["config"] != config:
        diff = sorted(key for key in set(rec["config"]) | set(config) if rec["config"].get(key) != config.get(key))
        raise ProblemError(f"{where} was made with other options than the census plan (differing: {diff})")
    seconds = rec.get("seconds")
    if not (isinstance(seconds, dict) and _number(seconds.get("search")) and _number(seconds.get("certify"))):
        raise ProblemError(f"{where}: seconds must hold the finite numbers search and certify")
    for i, c in enumerate(rec["critical_points"]):
        if not (isinstance(c.get("certified"), bool) and isinstance(c.get("point_index"), int)
                and _certificate_ok(c.get("krawczyk")) and (c.get("epsnet") is None or _certificate_ok(c["epsnet"]))):
            raise ProblemError(f"{where}: critical point {i} must hold certified (true or false), point_index and "
                               "the krawczyk (and epsnet or null) certificates with verdict and finite seconds")
    for i, g in enumerate(rec.get("gd", [])):
        if g.get("init") not in ("small", "figure1") or g.get("outcome") not in OUTCOMES or not isinstance(
                g.get("point_index"), int):
            raise ProblemError(f"{where}: gradient-descent run {i} must hold init (small or figure1), outcome (one "
                               f"of {list(OUTCOMES)}) and point_index")


def cell_summary(records: list[dict], row: dict) -> dict:
    """The census row of one cell from its records (:func:`landscape.census.instance_record`) and its plan row."""
    out = {key: row[key] for key in ("d", "k", "T", "n")}
    out["planned_instances"] = row["instances"]
    out["skipped"] = row["skipped"]
    out["instances"] = len(records)
    if not records:
        return out
    cfg = records[0]["config"]
    out["starts"] = cfg["starts"]
    solves = [sum(r["solves"].values()) for r in records]
    out["solves"] = int(sum(solves))
    out["converged"] = int(sum(r["solves"].get("converged", 0) for r in records))
    verdicts = [[_verdict(c) for c in r["critical_points"]] for r in records]
    with_cert = sum("certified" in v for v in verdicts)
    out["instances_with_certified_spurious"] = fraction(with_cert, len(records), "instance")
    out["instances_with_candidate"] = fraction(sum(bool(v) for v in verdicts), len(records), "instance")
    flat = [x for v in verdicts for x in v]
    out["candidates"] = {"total": len(flat), **{key: flat.count(key) for key in ("certified", "refuted",
                                                                                 "inconclusive")}}
    out["distinct_certified_spurious"] = flat.count("certified")
    cert_s = [c["krawczyk"]["seconds"] for r in records for c in r["critical_points"]]
    net_s = [c["epsnet"]["seconds"] for r in records for c in r["critical_points"] if c.get("epsnet")]
    agree = [c["epsnet"]["verdict"] == c["krawczyk"]["verdict"] for r in records for c in r["critical_points"]
             if c.get("epsnet")]
    out["certify"] = {"krawczyk_seconds_per_candidate": float(np.mean(cert_s)) if cert_s else None,
                      "epsnet_candidates": len(net_s),
                      "epsnet_seconds_per_candidate": float(np.mean(net_s)) if net_s else None,
                      "epsnet_agrees_with_krawczyk": int(sum(agree))}
    for init in ("small", "figure1"):
        runs = [g for r in records for g in r["gd"] if g["init"] == init]
        counts = {o: sum(g["outcome"] == o for g in runs) for o in OUTCOMES}
        # an unconverged run's end point polishes to a critical point; is that a certified spurious minimum?
        heading = sum(g["outcome"] == "unconverged" and g["point_index"] in _certified_points(r)
                      for r in records for g in r["gd"] if g["init"] == init)
        inst_hit = sum(any(g["outcome"] == "spurious_certified" for g in r["gd"] if g["init"] == init)
                       for r in records)
        out[f"gd_{init}"] = {"runs": len(runs), "outcomes": counts, "unconverged_heading_to_certified": heading,
                             "spurious_certified": fraction(counts["spurious_certified"], len(runs), "run"),
                             "global_min": fraction(counts["global_min"], len(runs), "run"),
                             "instances_captured": fraction(inst_hit, len(records), "instance")}
    out["seconds"] = {"search": float(sum(r["seconds"]["search"] for r in records)),
                      "certify": float(sum(r["seconds"]["certify"] for r in records))}
    return out


def _certified_points(record: dict) -> set:
    """Indices (into all distinct critical points of the instance) of its certified spurious minima."""
    return {c["point_index"] for c in record["critical_points"] if c["certified"]}


def _pct(fr: dict | None) -> str:
    """``k/n (p%, [lo, hi]%)``; for ``k = 0``: ``0/n (<= hi%)``, the upper bound that zero implies."""
    if not fr or not fr["n"]:
        return "-"
    if fr["k"] == 0:
        return f"0/{fr['n']} (≤ {100 * fr['high']:.2g}%)"
    return f"{fr['k']}/{fr['n']} ({100 * fr['fraction']:.3g}%, [{100 * fr['low']:.2g}, {100 * fr['high']:.2g}]%)"


def markdown(cells: list[dict], header: str = "") -> str:
    """The census table: one row per cell (skipped cells listed below it with the reason)."""
    cols = ["d", "k", "T", "n = Tdk", "instances", "solves (converged)", "instances with a certified spurious min",
            "distinct certified", "candidates inconclusive", "GD small start -> certified spurious",
            "GD small start: global / saddle / nowhere (heading to a certified spurious)",
            "GD Figure 1 init -> certified spurious", "GD Figure 1 init: global / saddle / nowhere (heading to ...)"]
    lines = [header, "", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    skipped = []
    for c in cells:
        if not c["instances"]:
            skipped.append(c)
            continue
        g, f = c["gd_small"], c["gd_figure1"]

        def tail(x):
            o = x["outcomes"]
            return f"{o['global_min']} / {o['saddle']} / {o['unconverged']} ({x['unconverged_heading_to_certified']})"
        lines.append("| " + " | ".join(str(v) for v in (
            c["d"], c["k"], c["T"], c["n"], c["instances"], f"{c['solves']} ({c['converged']})",
            _pct(c["instances_with_certified_spurious"]), c["distinct_certified_spurious"],
            c["candidates"]["inconclusive"], _pct(g["spurious_certified"]), tail(g), _pct(f["spurious_certified"]),
            tail(f))) + " |")
    if skipped:
        lines += ["", "Cells not run:", ""]
        lines += [f"- (d, k, T) = ({c['d']}, {c['k']}, {c['T']}): {c['skipped'] or 'no instance finished yet'}"
                  for c in skipped]
    return "\n".join(lines) + "\n"


#: the fractions that :func:`margins` pools: (name, key in a cell summary, what it counts)
POOLED = (("instances", "instances_with_certified_spurious", "instances with a certified spurious minimum"),
          ("gd_small", "gd_small.spurious_certified", "GD runs from a small start ending at one"),
          ("gd_figure1", "gd_figure1.spurious_certified", "GD runs from Figure 1's initialisation ending at one"))


def margins(cells: list[dict]) -> list[dict]:
    """The fractions of :data:`POOLED` pooled over the cells that share a value of d, of k or of T, and over all
    cells run: counts and trials summed over those cells, with the 95% Wilson interval of the pooled ``k / n``
    (same unit as in the cells). A pooled fraction mixes cells in proportion to their instances, and cells the plan
    skipped or gave few instances (large n) weigh little or nothing: read it with the per-cell table.

    Returns one dict per group: ``by`` (``"d"``, ``"k"``, ``"T"`` or ``"all"``), ``value``, ``cells`` (how many
    cells with records), and one :func:`fraction` per name of :data:`POOLED`."""
    run = [c for c in cells if c["instances"]]
    groups = [(axis, v, [c for c in run if c[axis] == v]) for axis in ("d", "k", "T")
              for v in sorted({c[axis] for c in run})] + [("all", None, run)]
    out = []
    for axis, v, group in groups:
        row = {"by": axis, "value": v, "cells": len(group)}
        for name, key, _ in POOLED:
            frs = [_get(c, key) for c in group if _get(c, key)]
            row[name] = fraction(sum(f["k"] for f in frs), sum(f["n"] for f in frs), "instance" if name ==
                                 "instances" else "run")
        out.append(row)
    return out


def margins_markdown(rows: list[dict]) -> str:
    """The pooled fractions of :func:`margins` as a Markdown table."""
    lines = ["| pooled over | cells | " + " | ".join(label for _, _, label in POOLED) + " |",
             "|" + "---|" * (2 + len(POOLED))]
    for r in rows:
        where = "all cells run" if r["by"] == "all" else f"{r['by']} = {r['value']}"
        lines.append(f"| {where} | {r['cells']} | " + " | ".join(_pct(r[name]) for name, _, _ in POOLED) + " |")
    return "\n".join(lines) + "\n"


def heat_maps(cells: list[dict], path: str, key: str, title: str) -> None:
    """A PNG of one fraction over the grid (:func:`heat_map_figure`), written atomically to ``path``."""
    fig = heat_map_figure(cells, key, title)
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=110, format="png")


def heat_map_figure(cells: list[dict], key: str, title: str):
    """A matplotlib ``Figure`` of one fraction over the grid: one panel per k, d across, T down; each cell shows
    ``k/n`` and is coloured by the fraction (grey: not run). The title is wrapped to the figure's width (a grid of
    one cell is narrow)."""
    # the object-oriented Figure API with an Agg canvas: no pyplot global state, no backend switch in the caller
    import textwrap

    import matplotlib
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    ks = sorted({c["k"] for c in cells})
    ds = sorted({c["d"] for c in cells})
    Ts = sorted({c["T"] for c in cells})
    width = 0.75 * len(ds) * len(ks) + 2.0
    lines = textwrap.wrap(title, max(16, int(12 * width)))  # 9-point text: at most ~12 characters per inch
    fig = Figure(figsize=(width, 0.75 * len(Ts) + 1.45 + 0.15 * len(lines)), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(ks), squeeze=False)
    vmax = max([_get(c, key)["fraction"] or 0.0 for c in cells if _get(c, key)] + [1e-3])
    for ax, k in zip(axes[0], ks):
        grid = np.full((len(Ts), len(ds)), np.nan)
        for c in cells:
            fr = _get(c, key)
            if c["k"] == k and fr and fr["n"]:
                i, j = Ts.index(c["T"]), ds.index(c["d"])
                grid[i, j] = fr["fraction"]
                ax.text(j, i, f"{fr['k']}/{fr['n']}", ha="center", va="center", fontsize=7,
                        color="white" if fr["fraction"] < 0.5 * vmax else "black")
            elif c["k"] == k:
                ax.text(ds.index(c["d"]), Ts.index(c["T"]), "not run", ha="center", va="center", fontsize=6)
        cmap = matplotlib.colormaps["viridis"].with_extremes(bad="0.85")
        im = ax.imshow(np.ma.masked_invalid(grid), cmap=cmap, vmin=0.0, vmax=vmax, aspect="auto")
        ax.set_xticks(range(len(ds)), [str(d) for d in ds])
        ax.set_yticks(range(len(Ts)), [str(T) for T in Ts])
        ax.set_xlabel("d")
        ax.set_ylabel("T")
        ax.set_title(f"k = {k}")
    fig.colorbar(im, ax=list(axes[0]), label="fraction")
    fig.suptitle("\n".join(lines), fontsize=9)
    return fig


def _get(cell: dict, key: str):
    """``cell[a][b]`` for ``key = "a.b"`` (None where the cell has no records)."""
    obj = cell
    for part in key.split("."):
        if not isinstance(obj, dict) or part not in obj:
            return None
        obj = obj[part]
    return obj
