"""``python -m llm planted``: the smoke preset's schema and files, bad input (exit 2), Ctrl-C (exit 130, nothing half
written), and the report's verdicts from per-seed numbers.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("peft")

from llm.planted import finetune_ranks, planted_preset  # noqa: E402

torch.set_num_threads(1)


# ------------------------------------------------------------------------------------------------ command line

def _cli(argv, capsys):
    from llm.__main__ import main

    try:
        rc = main(["planted", *argv])
    except SystemExit as exc:  # argparse refuses a malformed option by exiting
        rc = exc.code
    out = capsys.readouterr()
    return rc, out.out, out.err


@pytest.mark.parametrize("argv, word", [
    (["--T", "1"], "argument --T: must be an integer >= 2, got 1"),
    (["--k", "0", "2"], "argument --k: must be an integer >= 1, got 0"),
    (["--T", "x"], "argument --T: must be an integer, got 'x'"),
    (["--seeds", "-1"], "argument --seeds: must be an integer >= 0, got -1"),
    (["--seeds", "3", "3"], "seeds must be distinct"),
    (["--retrain-turns", "0"], "argument --retrain-turns: must be an integer >= 1, got 0"),
    (["--threads", "-2"], "argument --threads: must be an integer >= 0, got -2"),
    (["--n-sweep", "0"], "argument --n-sweep: must be an integer >= 1, got 0"),
    (["--threshold", "0"], "argument --threshold: must be a finite number > 0 and <= 1, got 0"),
    (["--threshold", "1.5"], "argument --threshold: must be a finite number > 0 and <= 1, got 1.5"),
    (["--shift-scale", "nan"], "argument --shift-scale: must be a finite number >= 0, got nan"),
    (["--delta-scale", "0"], "argument --delta-scale: must be a finite number > 0, got 0"),
    (["--delta-scale", "inf"], "argument --delta-scale: must be a finite number > 0, got inf"),
    (["--target", "x"], "argument --target: invalid choice: 'x'"),
    (["--preset", "big"], "argument --preset: invalid choice: 'big'"),
    (["--model", "./no/such/model"], "model path './no/such/model' does not exist"),
    (["--layers", "("], "not a valid regular expression"),
    (["--layers", r"pooler\.dense"], "matches no linear layer"),
    (["--T", "200", "--k", "2"], "(T+1) k = 402 exceeds min(d_out, d_in) = 384"),
    pytest.param(["--heldout-turns", "100000"], "100056 are needed (--heldout-turns 100000 + largest n 8 + "
                 "largest T 2 x --retrain-turns 24)", marks=pytest.mark.slow),  # tokenises every chitchat turn
])
def test_cli_bad_input_is_one_message_and_exit_2(argv, word, tmp_path, capsys):
    out = tmp_path / "out"
    rc, stdout, err = _cli(["--preset", "smoke", "--out", str(out), *argv], capsys)
    assert rc == 2 and word in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert err.startswith("python -m llm planted: error: ") and stdout == ""
    assert not out.exists()


def test_cli_refuses_an_out_that_is_a_file_before_any_work(tmp_path, capsys, monkeypatch):
    import llm.planted

    monkeypatch.setattr(llm.planted, "run_planted", lambda *a, **kw: pytest.fail("work started"))
    out = tmp_path / "results"
    out.write_text("keep me")
    rc, _, err = _cli(["--preset", "smoke", "--out", str(out)], capsys)
    assert rc == 2 and f"--out {str(out)!r} is an existing file" in err and len(err.strip().splitlines()) == 1
    assert out.read_text() == "keep me"


def _interrupt(*a, **kw):
    raise KeyboardInterrupt


def test_cli_ctrl_c_is_one_line_and_exit_130(tmp_path, capsys, monkeypatch):
    import llm.planted

    monkeypatch.setattr(llm.planted, "run_planted", _interrupt)
    rc, _, err = _cli(["--preset", "smoke", "--out", str(tmp_path / "o")], capsys)
    assert rc == 130 and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert "interrupted before writing; nothing was written" in err and not (tmp_path / "o").exists()


def test_cli_ctrl_c_while_writing_leaves_no_half_written_file(tmp_path, capsys, monkeypatch):
    """Ctrl-C while the second file is being renamed into place: one line, exit 130, the first file whole, no
    temporary file left."""
    import llm.atomic
    import llm.planted

    result = _synthetic_result(sr_k=[4, 5], meta_k=[1, 2], sr_top=[1, 1], meta_top=[1, 2],
                               sr_sv=[[3, 3, 2, 0.5]] * 2, meta_sv=[[0.5, 0.2, 0.1, 0.1]] * 2)
    monkeypatch.setattr(llm.planted, "run_planted", lambda *a, **kw: result)
    real_replace, done = os.replace, []

    def replace_then_interrupt(src, dst):
        if done:
            raise KeyboardInterrupt
        real_replace(src, dst)
        done.append(dst)
    monkeypatch.setattr(llm.atomic.os, "replace", replace_then_interrupt)
    out = tmp_path / "o"
    rc, _, err = _cli(["--preset", "smoke", "--out", str(out)], capsys)
    monkeypatch.undo()
    assert rc == 130 and len(err.strip().splitlines()) == 1 and "interrupted while writing" in err
    assert sorted(os.listdir(out)) == [os.path.basename(done[0])]
    header = (out / os.path.basename(done[0])).read_text().splitlines()[0]
    assert header.startswith("T,k,")


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    """``python -m llm planted --preset smoke --json`` on the packaged MiniLM, run once for the module."""
    import contextlib
    import io

    from llm.__main__ import main

    out = tmp_path_factory.mktemp("planted") / "smoke"
    buf, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(err):
        rc = main(["planted", "--preset", "smoke", "--out", str(out), "--json", "--no-progress"])
    return rc, buf.getvalue(), out


def test_smoke_run_prints_the_schema_and_writes_every_file(smoke_run):
    rc, stdout, out = smoke_run
    assert rc == 0
    doc = json.loads(stdout)
    assert set(doc) == {"rows", "spectra"}
    cfg = planted_preset("smoke")
    want = {(T, k, r, m) for T, k in cfg.settings for r in finetune_ranks(T, k)
            for m in ("sr", "meta-lora", "none")}
    assert {(r["T"], r["k"], r["finetune_rank"], r["method"]) for r in doc["rows"]} == want
    for r in doc["rows"]:
        assert set(r) == {"T", "k", "finetune_rank", "method", "test_loss", "seeds"}
        assert [s["seed"] for s in r["seeds"]] == list(cfg.seeds)
        per_seed = [s["test_loss"] for s in r["seeds"]]
        assert all(np.isfinite(v) and v > 0 for v in per_seed) and r["test_loss"] == np.median(per_seed)
    csv_rows = (out / "finetune_rank.csv").read_text().splitlines()
    for r in doc["rows"]:  # the printed numbers are the files' numbers
        for s in r["seeds"]:
            line = f"{r['T']},{r['k']},{cfg.finetune_turns},{r['finetune_rank']},{r['method']},{s['seed']},"
            assert sum(x.startswith(line) for x in csv_rows) == 1
            assert float(next(x for x in csv_rows if x.startswith(line)).split(",")[6]) == s["test_loss"]
    assert {s["method"] for s in doc["spectra"]} == {"sr", "meta-lora", "none", "linear-prediction"}
    for name in ("summary.json", "command.txt", "finetune_rank.csv", "finetune_curve.csv", "retrain_curve.csv",
                 "spectra.csv", "pooled_loss.csv", "rank.png", "steps.png", "spectra.png"):
        assert os.path.getsize(out / name) > 0, name
    summary = json.loads((out / "summary.json").read_text())
    assert {c["prediction"] for v in summary["verdicts"] for c in v["checks"]} == {
        "thm3.1", "thm3.2", "cor1-vs-cor3", "cor1-rank"}
    assert (out / "command.txt").read_text().startswith("python -m llm planted")
    assert not [f for f in os.listdir(out) if f.startswith(".tmp")]


def _synthetic_result(sr_k, meta_k, sr_top, meta_top, sr_sv, meta_sv, T=3, k=1):
    """Records of one setting over len(sr_k) seeds with the given final losses and singular values (tau = 1)."""
    recs = []
    for s in range(len(sr_k)):
        fits = []
        for r in finetune_ranks(T, k):
            for m in ("none", "sr", "meta-lora"):
                last = {("sr", k): sr_k[s], ("meta-lora", k): meta_k[s], ("sr", (T + 1) * k): sr_top[s],
                        ("meta-lora", (T + 1) * k): meta_top[s]}.get((m, r), 1.0)
                fits.append({"n": 8, "rank": r, "method": m, "steps": [0, 5], "test_loss": [2.0, last],
                             "train_loss": [1.0, 0.1]})
        spectra = [{"layer": "L", "method": m, "threshold": 1.0, "numerical_rank": int(np.sum(np.array(v[s]) > 1)),
                    "singular_values": v[s], "raw_singular_values": v[s], "bias_coefficient": 1.0}
                   for m, v in (("sr", sr_sv), ("meta-lora", meta_sv))]
        recs.append({"T": T, "k": k, "seed": s, "retrain": [], "finetune": fits, "spectra": spectra,
                     "pooled_loss": {"linear-prediction": 2.0, "sr": 1.0, "meta-lora": 0.5}})
    return {"config": {"finetune_turns": 8}, "records": recs}


def test_verdicts_follow_the_per_seed_numbers():
    from llm.planted_report import summarise

    good = _synthetic_result(sr_k=[4, 5, 6], meta_k=[1, 2, 2], sr_top=[1, 1, 2], meta_top=[1, 2, 2],
                             sr_sv=[[3, 3, 2, 0.5]] * 3, meta_sv=[[0.5, 0.2, 0.1, 0.1]] * 3)
    checks = {c["prediction"]: c for c in summarise(good)["verdicts"][0]["checks"]}
    assert all(c["held"] for c in checks.values())
    assert checks["cor1-vs-cor3"]["margin"]["ratio_sr_over_meta"] == {"median": 3.0, "min": 2.5, "max": 4.0}
    assert checks["thm3.1"]["margin"]["sigma_Tk_over_tau"]["median"] == 2.0
    assert checks["thm3.3"]["margin"]["sigma_1_over_tau"]["max"] == 0.5
    a = summarise(good)["absorption"][0]
    assert a["sr_loss_over_linear_prediction"]["median"] == 0.5
    # one seed against each prediction is enough to fail it
    bad = _synthetic_result(sr_k=[4, 5, 1], meta_k=[1, 2, 2], sr_top=[1, 1, 2], meta_top=[1, 2, 0.5],
                            sr_sv=[[3, 3, 2, 0.5], [3, 3, 2, 0.5], [3, 3, 0.9, 0.5]],
                            meta_sv=[[0.5, 0.2, 0.1, 0.1], [1.5, 0.2, 0.1, 0.1], [0.5, 0.2, 0.1, 0.1]])
    checks = {c["prediction"]: c for c in summarise(bad)["verdicts"][0]["checks"]}
    assert not any(c["held"] for c in checks.values())
    assert checks["thm3.1"]["margin"]["ranks"] == [3, 3, 2]
