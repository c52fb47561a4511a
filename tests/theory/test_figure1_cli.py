"""Example tests of the ``figure1`` command line (theory.figure1_cli)."""

from __future__ import annotations

import argparse
import csv
import json
import os

import numpy as np
import pytest

from theory import figure1_cli
from theory import linear_experiment as le
from theory import linear_settings as lset

from strategies import strict_loads

FAST = ["--runs", "2", "--N", "200", "--n", "50", "--retrain-iters", "300", "--finetune-iters", "40"]


def _parser():
    parser = argparse.ArgumentParser(prog="theory")
    figure1_cli.add_parser(parser.add_subparsers(dest="command", required=True))
    return parser


def _run(argv, capsys):
    args = _parser().parse_args(["figure1", *argv])
    code = args.func(args)
    out, err = capsys.readouterr()
    return code, out, err


def test_json_rows_files_and_curves(tmp_path, capsys):
    out = tmp_path / "fig"
    code, stdout, _ = _run(["--vary", "T", "--out", str(out), "--json", "--seed", "3", *FAST], capsys)
    assert code == 0
    rows = strict_loads(stdout)["rows"]  # strict JSON, as summary.json
    assert [(r["panel"], r["value"]) for r in rows] == [("T", 2), ("T", 3), ("T", 5)]
    assert all(set(r) == {"panel", "value", "meta_lora", "sr_lora", "sr_floor"} for r in rows)
    assert sorted(os.listdir(out)) == ["figure1_T.png", "figure1_T_retrain.csv", "figure1_T_test.csv",
                                       "summary.json"]
    png = (out / "figure1_T.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and 10_000 < len(png) < 200_000
    # the rows are the medians of the curves' last points, recomputed here from the library
    res = le.run_setting(lset.Settings(T=3, runs=2, N=200, n=50, retrain_iters=300, finetune_iters=40, seed=3))
    row = rows[1]
    assert row["meta_lora"] == pytest.approx(float(np.median(res.meta_test[:, -1])), rel=1e-12, abs=0)
    assert row["sr_lora"] == pytest.approx(float(np.median(res.sr_test[:, -1])), rel=1e-12, abs=0)
    assert row["sr_floor"] == pytest.approx(float(np.median(res.sr_floor)), rel=1e-12, abs=0)
    with open(out / "figure1_T_test.csv", newline="") as fh:
        table = list(csv.DictReader(fh))
    assert set(table[0]) == {"panel", "value", "method", "run", "iteration", "test_loss"}
    last = [float(r["test_loss"]) for r in table
            if r["value"] == "3" and r["method"] == "meta_lora" and r["iteration"] == "40"]
    np.testing.assert_allclose(sorted(last), sorted(res.meta_test[:, -1]), rtol=1e-9)
    assert {r["iteration"] for r in table} >= {"0", "40"}
    summary = strict_loads((out / "summary.json").read_text())
    assert summary["rows"] == rows
    v = summary["panels"]["T"]["values"][1]
    assert v["settings"]["T"] == 3 and v["settings"]["rank"] == 1
    assert summary["panels"]["T"]["values"][0]["settings"]["rank"] == 3  # T = 2 fine-tunes with rank 3k
    assert v["iterations"]["finetune"] == 40 and "meta_retrain" in v["step_size"]


def test_table_output_and_summary_keeps_earlier_panels(tmp_path, capsys):
    out = tmp_path / "fig"
    code, stdout, _ = _run(["--vary", "N", "--out", str(out), *FAST], capsys)
    assert code == 0
    assert "Meta-LoRA" in stdout and "SR floor" in stdout and len(stdout.splitlines()) == 5
    code, _, _ = _run(["--vary", "d", "--out", str(out), *FAST], capsys)
    assert code == 0
    summary = json.loads((out / "summary.json").read_text())
    assert list(summary["panels"]) == ["d", "N"]
    assert [(r["panel"], r["value"]) for r in summary["rows"]] == [
        ("d", 5), ("d", 10), ("d", 20), ("N", 100), ("N", 1000), ("N", 10000)]
    assert not [f for f in os.listdir(out) if f.startswith(".tmp-")]


def test_vary_all_writes_five_panels(tmp_path, capsys):
    out = tmp_path / "all"
    code, stdout, _ = _run(["--vary", "all", "--out", str(out), "--json",
                            "--runs", "1", "--N", "100", "--n", "30", "--retrain-iters", "20",
                            "--finetune-iters", "5"], capsys)
    assert code == 0
    assert len(json.loads(stdout)["rows"]) == 15
    assert sorted(f for f in os.listdir(out) if f.endswith(".png")) == [
        f"figure1_{p}.png" for p in sorted(lset.PANELS)]


@pytest.mark.parametrize("argv,message", [
    (["--vary", "T", "--d", "5"], r"panel T, T = 5: (T+1)*k = (5+1)*1 = 6 exceeds d = 5"),
    (["--vary", "k", "--d", "10"], "panel k, k = 3: (T+1)*k = (3+1)*3 = 12 exceeds d = 10"),
    (["--vary", "d", "--runs", "0"], "runs must be a positive integer (> 0), got 0"),
    (["--vary", "d", "--N", "0"], "N must be a positive integer (> 0), got 0"),
    (["--vary", "N", "--n", "-5"], "n must be a positive integer (> 0), got -5"),
    (["--vary", "T", "--k", "0"], "k must be a positive integer (> 0), got 0"),
    (["--vary", "n", "--sigma", "-1"], "sigma must be a finite number >= 0, got -1.0"),
    (["--vary", "n", "--finetune-iters", "0"], "finetune_iters must be a positive integer (> 0), got 0"),
])
def test_bad_input_exit_2_and_writes_nothing(tmp_path, capsys, argv, message):
    out = tmp_path / "never"
    code, stdout, err = _run([*argv, "--out", str(out)], capsys)
    assert code == 2
    assert message in err and err.startswith("error: ")
    assert stdout == ""
    assert not out.exists()


def test_out_is_a_file_exit_2(tmp_path, capsys):
    f = tmp_path / "file"
    f.write_text("x")
    code, _, err = _run(["--vary", "T", "--out", str(f), *FAST], capsys)
    assert code == 2 and "is not a folder" in err
    assert f.read_text() == "x"


def test_unknown_panel_is_refused_by_the_parser_and_by_run(capsys):
    with pytest.raises(SystemExit) as exc:
        _parser().parse_args(["figure1", "--vary", "sigma"])
    assert exc.value.code == 2
    assert "invalid choice: 'sigma'" in capsys.readouterr().err
    args = _parser().parse_args(["figure1", "--vary", "T"])
    args.vary = "q"  # a caller that builds its own namespace
    assert figure1_cli.run(args) == 2
    assert "unknown panel 'q'" in capsys.readouterr().err


def test_through_python_m_theory(tmp_path, capsys):
    main = pytest.importorskip("theory.__main__").main
    code = main(["figure1", "--vary", "n", "--out", str(tmp_path / "m"), "--json", *FAST])
    assert code == 0
    rows = json.loads(capsys.readouterr().out)["rows"]
    assert [r["value"] for r in rows] == [100, 1000, 10000]
    assert main(["figure1", "--vary", "T", "--d", "4", "--out", str(tmp_path / "x")]) == 2
