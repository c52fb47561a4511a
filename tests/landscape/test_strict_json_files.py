"""Every file and printout of landscape is strict JSON (non-finite floats as null, the adversarial score +inf as
null); results files of the earlier format (NaN / Infinity tokens, the score +inf as "inf") are still read and
resumed, and come out strict when rewritten."""

from __future__ import annotations

import json
import math
import os
import re
import tempfile
from pathlib import Path

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from landscape import store, summary
from landscape.__main__ import main
from theory.problem import Problem

from strategies import any_float, nonfinite_as_null, strict_loads

CONFIG = {"d": 3}


def _record(index: int, *, gd=(0.5, 0.25, 0.0), seconds=1.0, adversarial=None) -> dict:
    """A valid record of a (3, 1, 3) instance; ``gd`` the loss, gd_loss and moved of its one descent run."""
    p = Problem.random(3, 1, 3, seed=index)
    rec = {"index": index, "config": dict(CONFIG), "problem": p.to_dict(),
           "critical_points": [{"class": "global_min", "loss": 0.0, "point": p.U_star.tolist(),
                                "eigenvalues": [1.0, 2.0, 3.0], "min_eigenvalue": 1.0}],
           "gd": [{"class": "unconverged", "near": None, "loss": gd[0], "gd_loss": gd[1], "moved": gd[2]}],
           "solves": {"converged": 4}, "seconds": seconds}
    if adversarial is not None:
        rec["adversarial"] = adversarial
    return rec


def _chain(score, history) -> dict:
    return {"score": score, "round": len(history) - 1, "sampler": "iid",
            "history": [{"round": i, "score": s, "accepted": True, "sigma": 0.3} for i, s in enumerate(history)]}


def _strict_lines(path) -> list[dict]:
    return [strict_loads(line) for line in Path(path).read_text().splitlines()]


# --- the results file: written strictly, read back as written ----------------------------------------------------

scores = st.one_of(st.floats(0.0, 1e6), st.just(math.inf))  # what spuriousness() gives: >= 0, or +inf


@settings(max_examples=40, deadline=None)
@given(gd=st.tuples(any_float, any_float, any_float), seconds=any_float, score=scores,
       history=st.lists(scores, min_size=1, max_size=3))
def test_appended_records_are_strict_and_read_back_with_null_for_non_finite(gd, seconds, score, history):
    recs = [_record(0, gd=gd, seconds=seconds, adversarial=_chain(score, history)), _record(1)]
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "r.jsonl")
        for rec in recs:
            store.append(path, rec)
        text = Path(path).read_text()
        assert _strict_lines(path) == [nonfinite_as_null(r) for r in recs]  # strict, nothing else changed
        back = store.load(path)
        assert back == [nonfinite_as_null(r) for r in recs]
        assert (back[0]["adversarial"]["score"] is None) == (score == math.inf)  # null: +inf, a spurious min found
        assert [h["score"] is None for h in back[0]["adversarial"]["history"]] == [s == math.inf for s in history]
        # the repair of a cut-off line rewrites the records it read: the same bytes as they were appended
        with open(path, "a") as fh:
            fh.write('{"index": 2, "conf')
        assert store.open_run(path, CONFIG) == {0, 1}
        assert Path(path).read_text() == text


def test_instance_file_is_strict_and_round_trips(tmp_path):
    p = Problem.random(3, 1, 3, seed=7)
    U = np.random.default_rng(0).standard_normal((3, 3, 1))
    path = tmp_path / "i.json"
    store.save_instance(str(path), p, U, search_loss=math.inf, note=math.nan, index=4)
    data = strict_loads(path.read_text())
    assert data["search_loss"] is None and data["note"] is None and data["index"] == 4
    problem, point, _ = store.load_instance(str(path))
    assert problem.to_dict() == p.to_dict() and np.array_equal(point, U)  # finite floats exact


# --- files of the earlier format -------------------------------------------------------------------------------

def _legacy_line(rec: dict) -> str:
    """A line as the earlier store wrote it: ``json.dumps(record, allow_nan=True)``, +inf scores as "inf"."""
    rec = json.loads(json.dumps(rec))
    adv = rec.get("adversarial")
    if adv:
        for entry in (adv, *adv["history"]):
            if entry["score"] == math.inf:
                entry["score"] = "inf"
    return json.dumps(rec, allow_nan=True) + "\n"


LEGACY = [_record(0, gd=(math.nan, math.inf, -math.inf), adversarial=_chain(math.inf, [0.5, math.inf])),
          _record(1, adversarial=_chain(0.25, [0.0, 0.25]))]


def test_legacy_file_is_read_resumed_and_rewritten_strictly(tmp_path, capsys):
    path = tmp_path / "old.jsonl"
    text = "".join(_legacy_line(r) for r in LEGACY)
    assert "NaN" in text and "-Infinity" in text and '"score": "inf"' in text  # it is the earlier format
    path.write_text(text)
    old = store.load(str(path))
    assert old[0]["adversarial"]["score"] is None  # "inf" reads as null does: +inf
    assert [h["score"] for h in old[0]["adversarial"]["history"]] == [0.5, None]
    assert math.isnan(old[0]["gd"][0]["loss"]) and old[0]["gd"][0]["gd_loss"] == math.inf  # tokens accepted as floats
    assert main(["summary", str(path), "--json"]) == 0
    assert strict_loads(capsys.readouterr().out)["adversarial"]["found_spurious"] == 1
    # resuming: nothing is rewritten while the file is whole; a new record is appended strictly
    assert store.open_run(str(path), CONFIG) == {0, 1}
    assert path.read_text() == text
    store.append(str(path), _record(2, gd=(math.nan, 1.0, 0.0)))
    assert strict_loads(path.read_text().splitlines()[-1])["gd"][0]["loss"] is None
    assert [r["index"] for r in store.load(str(path))] == [0, 1, 2]
    # a cut-off last line makes open_run rewrite the file: every line is then strict, the values those of today
    path.write_text(text + '{"index": 2, "con')
    assert store.open_run(str(path), CONFIG) == {0, 1}
    assert _strict_lines(path) == [nonfinite_as_null(r) for r in LEGACY] == store.load(str(path))


def test_summary_counts_found_chains_in_a_file_of_both_formats(tmp_path, capsys):
    # four chains: +inf written today (null), +inf written earlier ("inf"), 0.0 and 2.5; histories of 1 to 4 rounds.
    # By hand: chains 4; found_spurious 2 (the two +inf); rounds_run 1 + 2 + 3 + 4 = 10; best_finite_score 2.5.
    recs = [_record(0, adversarial=_chain(math.inf, [math.inf])),
            _record(1, adversarial=_chain(math.inf, [0.1, math.inf])),
            _record(2, adversarial=_chain(0.0, [0.0, 0.0, 0.0])),
            _record(3, adversarial=_chain(2.5, [0.0, 1.0, 1.0, 2.5]))]
    path = tmp_path / "mixed.jsonl"
    store.append(str(path), recs[0])
    with open(path, "a") as fh:
        fh.write(_legacy_line(recs[1]))
    for rec in recs[2:]:
        store.append(str(path), rec)
    want = {"chains": 4, "found_spurious": 2, "rounds_run": 10, "best_finite_score": 2.5}
    assert summary.summarize(store.load(str(path)))["adversarial"] == want
    assert main(["summary", str(path), "--json"]) == 0
    assert strict_loads(capsys.readouterr().out)["adversarial"] == want


def test_score_must_be_null_or_a_finite_number(tmp_path, capsys):
    path = tmp_path / "bad.jsonl"
    for bad in ("infinite", -1.0, math.nan):
        path.write_text(json.dumps(_record(0, adversarial=_chain(bad, [0.0]))) + "\n")
        assert main(["summary", str(path)]) == 2
        err = capsys.readouterr().err
        assert f"{path}: line 1: adversarial must hold a score (a finite number >= 0, or null for +inf" in err


# --- the command line, end to end --------------------------------------------------------------------------------

def test_adversarial_search_summary_and_certify_print_and_write_strict_json(tmp_path, capsys):
    # (3, 1, 3), seed 0, 16 starts: chain 2 has a spurious minimum in round 0, chains 0 and 1 do not
    out, cert = tmp_path / "a.jsonl", tmp_path / "cert.json"
    assert main(["search", "--d", "3", "--k", "1", "--T", "3", "--instances", "3", "--starts", "16", "--seed", "0",
                 "--gd-runs", "0", "--workers", "1", "--adversarial", "--rounds", "0", "--out", str(out)]) == 0
    assert strict_loads(capsys.readouterr().out)["finished"] == 3
    recs = sorted(_strict_lines(out), key=lambda r: r["index"])
    assert [r["adversarial"]["score"] is None for r in recs] == [False, False, True]
    assert main(["summary", str(out), "--json"]) == 0
    assert strict_loads(capsys.readouterr().out)["adversarial"]["found_spurious"] == 1
    assert main(["certify", str(out), "--sample", "0", "--json", "--out", str(cert)]) == 0
    rows = strict_loads(capsys.readouterr().out)["rows"]
    assert strict_loads(cert.read_text())["rows"] == rows and {r["index"] for r in rows} == {2}


def test_every_json_writer_of_theory_and_landscape_goes_through_strict_json():
    root = Path(__file__).resolve().parents[2]
    found = [f"{path.relative_to(root)}:{n}" for pkg in ("theory", "landscape") for path in (root / pkg).glob("*.py")
             if path.name != "strict_json.py"
             for n, line in enumerate(path.read_text().splitlines(), 1)
             if re.search(r"\bjson\.dumps?\(|allow_nan", line)]
    assert found == [], f"JSON written without theory.strict_json at {found}"
