"""``python -m llm``: the smoke table end to end, error exits, and one smoke run on the real packaged MiniLM."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

pytest.importorskip("torch")

from llm.__main__ import main  # noqa: E402
from test_llm_support import chitchat_file, tiny_bert, write_chitchat  # noqa: E402,F401

ROOT = os.path.join(os.path.dirname(__file__), os.pardir)


def _smoke(model, data, *extra):
    return ["--preset", "smoke", "--model", model, "--data", data, "--threads", "1", "--no-progress", *extra]


def test_smoke_table_json_cells_in_unit_interval(tiny_bert, chitchat_file, tmp_path, capsys):
    out = tmp_path / "table"
    code = main(["table", *_smoke(tiny_bert, chitchat_file), "--out", str(out), "--json",
                 "--cache-dir", str(tmp_path / "cache")])
    assert code == 0
    doc = json.loads(capsys.readouterr().out)
    assert set(doc) == {"rows", "tasks", "seeds"} and doc["seeds"] == [0] and len(doc["tasks"]) == 2
    pairs = [(r["method"], r["retrain_rank"], r["finetune_rank"]) for r in doc["rows"]]
    assert pairs == [("SR", None, 8), ("Meta-LoRA", 8, 8), ("SR", None, 16), ("Meta-LoRA", 8, 16),
                     ("Meta-LoRA", 16, 16)]
    for r in doc["rows"]:
        assert len(r["accuracies"]) == 2 and all(0.0 <= a <= 1.0 for a in r["accuracies"])
        assert r["average"] == pytest.approx(sum(r["accuracies"]) / 2)
        # 2 held-out samples per task: every accuracy is a multiple of 1/2
        assert all(a * 2 == int(a * 2) for a in r["accuracies"])
    full = json.loads((out / "table.json").read_text())
    assert full["rows"] == doc["rows"]
    md = (out / "table.md").read_text()
    assert "Table 1(a)" in md and "Table 1(b)" in md and md.count("Meta-LoRA-8 -> LoRA-") == 2
    assert (out / "accuracy.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # --resume reads every finished piece back: same table, nothing retrained
    code = main(["table", *_smoke(tiny_bert, chitchat_file), "--out", str(out), "--json", "--resume",
                 "--cache-dir", str(tmp_path / "cache")])
    assert code == 0 and json.loads(capsys.readouterr().out)["rows"] == doc["rows"]
    assert json.loads((out / "table.json").read_text())["timings_s"] == {}


def test_retrain_then_finetune_commands(tiny_bert, chitchat_file, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["retrain", *_smoke(tiny_bert, chitchat_file), "--method", "meta-lora", "--rank", "4",
                 "--schedule", "sequential", "--out", str(run)]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["rank"] == 4 and len(r["losses"]) == 2 and r["checkpoint"].endswith("epoch-002")
    assert (run / "epoch-002" / "adapters" / "task1" / "adapter_model.safetensors").is_file()
    res = tmp_path / "ft.json"
    assert main(["finetune", *_smoke(tiny_bert, chitchat_file), "--encoder", str(run), "--rank", "2",
                 "--out", str(res)]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc == json.loads(res.read_text())
    assert len(doc["results"]) == 2 and all(len(d["accuracies"]) == 2 for d in doc["results"])


@pytest.mark.parametrize("args, message", [
    (["retrain", "--method", "sr", "--model", "/no/such/model"], "model path '/no/such/model' does not exist"),
    (["retrain", "--method", "meta-lora", "--rank", "0"], "--rank must be > 0, got 0"),
    (["finetune", "--encoder", "x", "--rank", "-3"], "--rank must be > 0, got -3"),
    (["retrain", "--method", "sr", "--data", "MISSING.txt"], "cannot read ConvAI2 file MISSING.txt"),
])
def test_bad_input_exits_2_with_one_clear_message(args, message, tmp_path, capsys):
    args = [a if a != "MISSING.txt" else str(tmp_path / "MISSING.txt") for a in args]
    message = message.replace("MISSING.txt", str(tmp_path / "MISSING.txt"))
    assert main([*args, "--preset", "smoke", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_malformed_data_and_too_few_candidates_exit_2(tmp_path, capsys):
    bad = tmp_path / "bad.txt"
    bad.write_text("1 your persona: x.\n2 hello\n")
    assert main(["retrain", "--method", "sr", "--preset", "smoke", "--data", str(bad), "--out", str(tmp_path)]) == 2
    assert f"{bad}:2:" in capsys.readouterr().err
    few = write_chitchat(str(tmp_path / "few.json"), n_speakers=4, n_convs=3)
    assert main(["retrain", "--method", "sr", "--preset", "smoke", "--data", few, "--n-retrain-tasks", "1",
                 "--n-test-tasks", "1", "--out", str(tmp_path)]) == 2
    assert "distinct candidates available, 20 are needed" in capsys.readouterr().err


def test_entry_point_help_and_usage_errors():
    env = dict(os.environ, PYTHONPATH=os.path.abspath(ROOT))
    ok = subprocess.run([sys.executable, "-m", "llm", "table", "--help"], capture_output=True, text=True, env=env,
                        cwd=ROOT, timeout=120)
    assert ok.returncode == 0 and "--preset" in ok.stdout and "paper" in ok.stdout
    bad = subprocess.run([sys.executable, "-m", "llm", "retrain", "--method", "full", "--out", "x"],
                         capture_output=True, text=True, env=env, cwd=ROOT, timeout=120)
    assert bad.returncode == 2 and "invalid choice: 'full'" in bad.stderr


def _minilm_smoke(tmp_path, capsys, epochs: str):
    run = tmp_path / "run"
    common = ["--preset", "smoke", "--threads", "2", "--no-progress", "--cache-dir", str(tmp_path / "cache")]
    assert main(["retrain", *common, "--method", "meta-lora", "--rank", "8", "--retrain-epochs", epochs,
                 "--out", str(run)]) == 0
    r = json.loads(capsys.readouterr().out)
    assert all(x == x and 0 < x < 5 for x in r["losses"])  # finite, and near log 2 for a fresh head
    assert main(["finetune", *common, "--encoder", str(run), "--rank", "8", "--finetune-epochs", epochs,
                 "--n-test-tasks", "1"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert all(0 <= a <= 1 for d in doc["results"] for a in d["accuracies"])
    return run


def test_smoke_on_the_real_packaged_minilm(tmp_path, capsys):
    """The real offline default: packaged MiniLM and chitchat (1 epoch each, to keep the default suite short)."""
    run = _minilm_smoke(tmp_path, capsys, "1")
    cfg = json.loads((run / "epoch-001" / "config.json").read_text())
    assert cfg["model_type"] == "bert" and cfg["hidden_size"] == 384 and cfg["num_hidden_layers"] == 6


@pytest.mark.slow
def test_smoke_table_on_the_real_packaged_minilm(tmp_path, capsys):
    """``python -m llm table --preset smoke`` as a user runs it (slow: about 2 minutes on 2 free cores)."""
    code = main(["table", "--preset", "smoke", "--out", str(tmp_path / "t"), "--json", "--no-progress"])
    assert code == 0
    doc = json.loads(capsys.readouterr().out)
    assert all(0 <= a <= 1 for r in doc["rows"] for a in r["accuracies"])
