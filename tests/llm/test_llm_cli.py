"""``python -m llm``: the smoke table end to end, error exits, and one smoke run on the real packaged MiniLM."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

pytest.importorskip("torch")

from llm.__main__ import main  # noqa: E402
from self_signal import signal_after_first_call  # noqa: E402
from test_llm_support import chitchat_file, tiny_bert, write_chitchat  # noqa: E402,F401

ROOT = os.path.join(os.path.dirname(__file__), os.pardir, os.pardir)


def _smoke(model, data, *extra):
    return ["--preset", "smoke", "--model", model, "--data", data, "--threads", "1", "--no-progress", *extra]


def test_smoke_table_schema_controls_comparisons_and_resume(tiny_bert, chitchat_file, tmp_path, capsys):
    out = tmp_path / "table"
    code = main(["table", *_smoke(tiny_bert, chitchat_file), "--out", str(out), "--json",
                 "--cache-dir", str(tmp_path / "cache")])
    assert code == 0
    doc = json.loads(capsys.readouterr().out)
    assert set(doc) == {"rows", "comparisons", "n_items", "seeds", "tasks"} and doc["seeds"] == [0, 1]
    assert len(doc["tasks"]) == 2 and doc["n_items"] == 2 * 2  # 2 test tasks x 2 held-out items
    rows = [(r["method"], r["retrain_rank"], r["finetune_rank"]) for r in doc["rows"]]
    assert rows == [("none", None, None), ("none", None, 8), ("SR", None, 8), ("Meta-LoRA", 8, 8)]
    for r in doc["rows"]:
        assert len(r["per_seed"]) == 2 and all(x * 4 == int(x * 4) for x in r["per_seed"])  # 4 items per seed
        assert r["accuracy"] == pytest.approx(sum(r["per_seed"]) / 2) == r["average"]
        assert r["ci95"][0] is None or r["ci95"][0] <= r["accuracy"] <= r["ci95"][1]
    assert doc["rows"][0]["per_seed"][0] == doc["rows"][0]["per_seed"][1]  # bi, no training: seed-independent
    labels = {r["label"] for r in doc["rows"]}
    pairs = {(c["a"], c["b"]) for c in doc["comparisons"]}
    assert ("Meta-LoRA-8 -> LoRA-8", "SR -> LoRA-8") in pairs and ("SR -> LoRA-8", "none -> none") in pairs
    for c in doc["comparisons"]:
        assert c["a"] in labels and c["b"] in labels and c["unit"] == "seed" and c["finetune_rank"] == 8
        assert set(c) >= {"delta", "ci95", "p_value", "mde80"}
        a = next(r for r in doc["rows"] if r["label"] == c["a"])
        b = next(r for r in doc["rows"] if r["label"] == c["b"])
        assert c["delta"] == pytest.approx(a["accuracy"] - b["accuracy"])
    assert sum(c["primary"] for c in doc["comparisons"]) == 1
    full = json.loads((out / "table.json").read_text())
    assert full["rows"] == doc["rows"] and full["n_items"] == 4 and not full["optimistic"]
    assert full["schedule"] == "sequential"  # the default that `llm table --help` states
    md = (out / "table.md").read_text()
    assert "## Comparisons" in md and "none -> none" in md and "(primary)" in md and "## Verdicts" in md
    assert (out / "accuracy.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the retraining checkpoints only served resuming: removed once the table is written
    assert not [p for p in out.rglob("epoch-*")] and (out / "runs" / "seed0" / "sr" / "retrain.json").is_file()
    # --resume reads every finished piece back: same table, nothing retrained or fine-tuned
    code = main(["table", *_smoke(tiny_bert, chitchat_file), "--out", str(out), "--json", "--resume",
                 "--cache-dir", str(tmp_path / "cache")])
    assert code == 0 and json.loads(capsys.readouterr().out)["rows"] == doc["rows"]
    assert json.loads((out / "table.json").read_text())["timings_s"] == {}


def test_retrain_then_finetune_commands(tiny_bert, chitchat_file, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["retrain", *_smoke(tiny_bert, chitchat_file), "--method", "meta-lora", "--rank", "4",
                 "--schedule", "sequential", "--out", str(run)]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["rank"] == 4 and len(r["losses"]) == 2 and len(r["val_accuracies"]) == 2
    assert r["checkpoint"].endswith(f"epoch-{r['best_epoch']:03d}")
    assert (run / "epoch-002" / "adapters" / "task1" / "adapter_model.safetensors").is_file()
    res = tmp_path / "ft.json"
    assert main(["finetune", *_smoke(tiny_bert, chitchat_file), "--encoder", str(run), "--rank", "2",
                 "--out", str(res)]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc == json.loads(res.read_text())
    assert len(doc["results"]) == 2 and all(len(d["val_accuracies"]) == 3 for d in doc["results"])


@pytest.mark.parametrize("args, message", [
    (["retrain", "--method", "sr", "--model", "/no/such/model"], "model path '/no/such/model' does not exist"),
    (["table", "--model", "metalora-no-such-model"], "cannot load model 'metalora-no-such-model' offline: a model is "
     "'minilm', a folder holding config.json or a name in the local Hugging Face cache (nothing is downloaded) "
     "[not in the local Hugging Face cache]"),
    (["retrain", "--method", "meta-lora", "--rank", "0"], "--rank: must be an integer >= 1, got 0"),
    (["finetune", "--encoder", "x", "--rank", "-3"], "--rank: must be an integer >= 1, got -3"),
    (["retrain", "--method", "sr", "--data", "MISSING.txt"], "--data 'MISSING.txt': no such file"),
    (["table", "--seeds", "-1"], "--seeds: must be an integer >= 0, got -1"),
    (["table", "--seeds", "1", "1"], "seeds must be distinct"),
    (["table", "--threads", "-2"], "--threads: must be an integer >= 0, got -2"),
    (["table", "--freeze-layers", "9"], "freeze_layers must lie in [0, 5]"),
    (["table", "--finetune-ranks", "0"], "--finetune-ranks: must be an integer >= 1, got 0"),
])
def test_bad_input_exits_2_with_one_clear_message(args, message, tmp_path, capsys):
    args = [a if a != "MISSING.txt" else str(tmp_path / "MISSING.txt") for a in args]
    message = message.replace("MISSING.txt", str(tmp_path / "MISSING.txt"))
    try:
        code = main([*args, "--preset", "smoke", "--out", str(tmp_path / "o")])
    except SystemExit as exc:  # argparse refusals
        code = exc.code
    assert code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) <= 2
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())


@pytest.mark.parametrize("command", [["table"], ["retrain", "--method", "sr"]])
def test_out_that_is_a_file_is_refused_before_any_work(command, tmp_path, capsys):
    f = tmp_path / "taken"
    f.write_text("keep me")
    assert main([*command, "--preset", "smoke", "--out", str(f)]) == 2
    err = capsys.readouterr().err
    assert f"--out {str(f)!r} is an existing file" in err and f.read_text() == "keep me"


def test_finetune_out_that_is_a_folder_is_refused_before_any_work(tmp_path, capsys):
    assert main(["finetune", "--encoder", "minilm", "--preset", "smoke", "--out", str(tmp_path)]) == 2
    assert f"--out {str(tmp_path)!r} is an existing folder" in capsys.readouterr().err


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
    assert "default sequential)" in " ".join(ok.stdout.split())  # table's own default, not retrain's
    retrain = subprocess.run([sys.executable, "-m", "llm", "retrain", "--help"], capture_output=True, text=True,
                             env=env, cwd=ROOT, timeout=120)
    assert "default batched)" in " ".join(retrain.stdout.split())
    bad = subprocess.run([sys.executable, "-m", "llm", "retrain", "--method", "full", "--out", "x"],
                         capture_output=True, text=True, env=env, cwd=ROOT, timeout=120)
    assert bad.returncode == 2 and "invalid choice: 'full'" in bad.stderr


def test_ctrl_c_during_a_table_exits_130_with_one_line_and_resume_finishes(tiny_bert, chitchat_file, tmp_path):
    """SIGINT once the first retraining epoch has been saved (the process signals itself there, so the point does
    not depend on the machine's load): one line, exit 130, no traceback; --resume completes."""
    env = dict(os.environ, PYTHONPATH=os.path.abspath(ROOT))
    out = tmp_path / "t"
    args = ["table", *_smoke(tiny_bert, chitchat_file), "--retrain-epochs", "8", "--cache-dir",
            str(tmp_path / "cache"), "--out", str(out)]
    interrupts = signal_after_first_call("llm", "llm.checkpoint", "save_checkpoint", "SIGINT")
    proc = subprocess.run([*interrupts, *args], env=env, capture_output=True, text=True, timeout=300)
    err = proc.stderr
    assert proc.returncode == 130, err
    assert list(out.glob("runs/seed0/*/LATEST"))
    lines = [x for x in err.strip().splitlines() if x.strip()]
    assert len(lines) == 1 and "interrupted" in lines[0] and "--resume" in lines[0] and "Traceback" not in err
    assert not (out / "table.json").exists()
    again = subprocess.run([sys.executable, "-m", "llm", *args, "--resume", "--json"], env=env, capture_output=True,
                           text=True, timeout=600)
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["n_items"] == 4


def test_smoke_on_the_real_packaged_minilm(tmp_path, capsys):
    """The real offline default (packaged MiniLM and chitchat): one retraining epoch and one fine-tuning epoch."""
    run = tmp_path / "run"
    common = ["--preset", "smoke", "--threads", "2", "--no-progress", "--cache-dir", str(tmp_path / "cache")]
    assert main(["retrain", *common, "--method", "meta-lora", "--rank", "8", "--retrain-epochs", "1",
                 "--out", str(run)]) == 0
    r = json.loads(capsys.readouterr().out)
    assert all(x == x and 0 < x < 5 for x in r["losses"])  # finite, near log(#candidates) at the start
    assert main(["finetune", *common, "--encoder", str(run), "--rank", "8", "--finetune-epochs", "1",
                 "--n-test-tasks", "1"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert all(0 <= d["accuracy"] <= 1 and 0 <= d["selected_epoch"] <= 1 for d in doc["results"])
    cfg = json.loads((run / "epoch-001" / "config.json").read_text())
    assert cfg["model_type"] == "bert" and cfg["hidden_size"] == 384 and cfg["num_hidden_layers"] == 6


@pytest.mark.slow
def test_smoke_table_on_the_real_packaged_minilm(tmp_path, capsys):
    """``python -m llm table --preset smoke`` as a user runs it."""
    code = main(["table", "--preset", "smoke", "--out", str(tmp_path / "t"), "--json", "--no-progress"])
    assert code == 0
    doc = json.loads(capsys.readouterr().out)
    assert all(0 <= r["accuracy"] <= 1 for r in doc["rows"]) and doc["n_items"] == 4


def test_data_that_is_not_utf8_and_an_out_where_nothing_can_be_made_exit_2(tmp_path, capsys):
    """Bytes that are not UTF-8 name the file and line; an --out on a pseudo file system is refused before work."""
    garbage = tmp_path / "garbage.txt"
    garbage.write_bytes(b"1 your persona: i like tea.\n2 hi\t\xff\xfe\x8c bad\n")
    assert main(["table", "--preset", "smoke", "--data", str(garbage), "--out", str(tmp_path / "o")]) == 2
    out, err = capsys.readouterr()
    assert f"{garbage}:2: not UTF-8 text" in err and len(err.strip().splitlines()) == 1 and out == ""
    if os.path.isdir("/proc") and not os.access("/proc", os.W_OK) or os.path.ismount("/proc"):
        assert main(["table", "--preset", "smoke", "--out", "/proc/metalora-x"]) == 2
        err = capsys.readouterr().err
        assert "--out '/proc/metalora-x': nothing can be created under '/proc'" in err


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="needs /proc, where nothing can be created")
def test_cache_dir_and_bundle_out_where_nothing_can_be_made_are_refused_before_work(tmp_path, capsys):
    code = main(["table", "--preset", "smoke", "--cache-dir", "/proc/x", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("python -m llm table: error: --cache-dir '/proc/x': ")
    code = main(["bundle", "--out", "/proc/x"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert err[0].startswith("python -m llm bundle: error: --out '/proc/x': nothing can be created under '/proc' (")
    assert not (tmp_path / "o").exists()
    # every output option, also an existing folder that takes no new files and a file to write in one
    for cmd, out in (("finetune", "/proc/x"), ("retrain", "/proc"), ("table", "/proc")):
        extra = ["--encoder", "minilm"] if cmd == "finetune" else ["--method", "sr"] if cmd == "retrain" else []
        code = main([cmd, "--preset", "smoke", *extra, "--out", out])
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and err == [f"python -m llm {cmd}: error: --out {out!r}: nothing can be created under "
                                     "'/proc' (No such file or directory)"]


def test_data_that_is_a_folder_is_refused_before_work(tmp_path, capsys):
    code = main(["table", "--preset", "smoke", "--data", str(tmp_path), "--out", str(tmp_path / "o")])
    assert code == 2 and capsys.readouterr().err == (f"python -m llm table: error: --data {str(tmp_path)!r}: not a "
                                                     "readable file\n")


def test_table_over_an_earlier_run_needs_resume(tmp_path, capsys):
    piece = tmp_path / "o" / "runs" / "seed0" / "none" / "none" / "task1.json"
    piece.parent.mkdir(parents=True)
    piece.write_text("{}")
    code = main(["table", "--preset", "smoke", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "rerun with --resume to continue it" in err
    assert piece.read_text() == "{}"  # nothing finished was thrown away


def test_ctrl_c_while_the_parser_imports_torch_is_one_line(monkeypatch, capsys):
    import llm.__main__ as cli

    def interrupted():
        raise KeyboardInterrupt
    monkeypatch.setattr(cli, "build_parser", interrupted)
    assert cli.main(["table", "--preset", "smoke", "--out", "x"]) == 130
    assert capsys.readouterr().err == "python -m llm: interrupted before any work; nothing written\n"


def test_building_the_parser_does_not_import_torch():
    """Bad options are refused in a fraction of a second: the parser (presets included) is free of torch."""
    code = "import sys, llm.__main__ as m; m.build_parser(); print(sorted(k for k in ('torch', 'transformers') " \
           "if k in sys.modules))"
    env = dict(os.environ, PYTHONPATH=os.path.abspath(ROOT))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=ROOT, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "[]", out.stderr
