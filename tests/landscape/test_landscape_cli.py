"""Example tests of `python -m landscape {search,certify,summary}` (files, JSON output, exit status 2 cases)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from landscape.__main__ import main

from strategies import strict_loads  # refuses NaN / Infinity: every output is strict JSON

SEARCH = ["search", "--d", "3", "--k", "1", "--T", "3", "--instances", "3", "--starts", "16", "--seed", "0",
          "--gd-runs", "1", "--workers", "1"]


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "t3.jsonl"
    assert main([*SEARCH, "--out", str(out)]) == 0
    return out


def test_search_writes_one_line_per_instance(results):
    lines = results.read_text().splitlines()
    assert len(lines) == 3
    recs = [strict_loads(x) for x in lines]
    assert sorted(r["index"] for r in recs) == [0, 1, 2]
    for r in recs:
        assert sum(r["solves"].values()) == 16 and len(r["gd"]) == 1
        assert {"d", "k", "T", "U_star", "A_star"} <= set(r["problem"])
        assert any(c["class"] == "global_min" for c in r["critical_points"])


def test_summary_json_counts_agree_with_the_file(results, tmp_path, capsys):
    png = tmp_path / "s.png"
    assert main(["summary", str(results), "--json", "--png", str(png)]) == 0
    out = strict_loads(capsys.readouterr().out)
    recs = [strict_loads(x) for x in results.read_text().splitlines()]
    expected = {c: 0 for c in ("global_min", "spurious_min", "saddle", "degenerate")}
    for r in recs:
        for c in r["critical_points"]:
            expected[c["class"]] += 1
    assert out["counts"] == expected
    assert out["instances"] == 3 and out["instances_with"]["global_min"] == 3
    assert out["gd"]["runs"] == 3 and sum(out["gd"]["ended_in"].values()) == 3
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_summary_table(results, capsys):
    assert main(["summary", str(results)]) == 0
    text = capsys.readouterr().out
    assert "global_min" in text and "spurious_min" in text and "gradient descent" in text


def test_certify_json_rows(results, capsys):
    assert main(["certify", str(results), "--method", "krawczyk", "--sample", "1", "--json"]) == 0
    rows = strict_loads(capsys.readouterr().out)["rows"]
    assert rows
    classes = {r["search_class"] for r in rows}
    assert "global_min" in classes and "saddle" in classes
    for r in rows:
        assert r["verdict"] in ("certified-minimum", "certified-not-minimum", "inconclusive")
        assert r["method"] == "krawczyk" and len(r["loss"]) == 2
        if r["verdict"] != "inconclusive":  # a certificate never contradicts the search's class
            assert r["agrees"] is True


def test_certify_a_stored_instance_file(capsys):
    from importlib import resources

    path = resources.files("landscape") / "instances" / "search_d3_k1_T3_seed0_i139.json"
    assert main(["certify", str(path), "--method", "krawczyk", "--json"]) == 0
    (row,) = strict_loads(capsys.readouterr().out)["rows"]
    assert row["search_class"] == "spurious_min"
    assert row["verdict"] == "certified-minimum" and row["minimum_kind"] == "spurious" and row["agrees"] is True
    assert row["loss"][0] > 0


def test_module_entry_point_runs(results):
    proc = subprocess.run([sys.executable, "-m", "landscape", "summary", str(results), "--json"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert set(strict_loads(proc.stdout)["counts"]) == {"global_min", "spurious_min", "saddle", "degenerate"}


@pytest.mark.parametrize("argv,needle", [
    (["search", "--d", "3", "--k", "0", "--T", "3", "--instances", "1", "--out", "x.jsonl"], "--k"),
    (["search", "--d", "three", "--k", "1", "--T", "3", "--instances", "1", "--out", "x.jsonl"], "--d"),
    (["search", "--d", "3", "--k", "1", "--T", "3", "--instances", "1", "--out", "x.jsonl", "--scales", "0,1"],
     "--scales"),
    (["search", "--d", "3", "--k", "1", "--T", "3", "--instances", "1", "--out", "x.jsonl", "--workers", "2",
      "--scheduler", "tcp://127.0.0.1:1"], "not both"),
    (["certify", "nothing-here.jsonl"], "does not exist"),
    (["summary", "nothing-here.jsonl"], "does not exist"),
    (["certify", "x.jsonl", "--method", "newton"], "--method"),
])
def test_bad_input_exit_2(argv, needle, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse refuses malformed arguments itself
        code = exc.code
    assert code == 2
    assert needle in capsys.readouterr().err
    assert not (tmp_path / "x.jsonl").exists()


def test_malformed_results_file_exit_2(tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text("[1, 2, 3]\n")
    assert main(["summary", str(bad)]) == 2
    assert "not a landscape result" in capsys.readouterr().err


def test_argparse_errors_exit_2(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "landscape", "search", "--d", "3", "--k", "0", "--T", "3",
                           "--instances", "1", "--out", str(tmp_path / "x.jsonl")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "must be a positive integer" in proc.stderr


def test_certify_out_replaces_only_its_own_output(tmp_path, capsys):
    from pathlib import Path

    inst = str(Path(__file__).resolve().parents[2] / "landscape" / "instances" / "spurious_d3_k1_T3.json")
    other = tmp_path / "notes.md"
    other.write_text("# my notes\n")
    assert main(["certify", inst, "--out", str(other)]) == 2
    assert other.read_text() == "# my notes\n"
    assert capsys.readouterr().err.strip() == (f"error: --out {str(other)!r} exists and is not an output of certify (a "
                                               "JSON object with results, method and rows); choose another file or "
                                               "remove it")
    out = tmp_path / "cert.json"
    assert main(["certify", inst, "--out", str(out)]) == 0 and main(["certify", inst, "--out", str(out)]) == 0
    assert strict_loads(out.read_text())["method"] == "krawczyk"
