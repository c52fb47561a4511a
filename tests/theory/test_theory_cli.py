"""``python -m theory verify``: output shapes, exit statuses, bad input."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from theory.__main__ import main

from strategies import strict_loads


def _run(*args):
    return subprocess.run([sys.executable, "-m", "theory", *args], capture_output=True, text=True, timeout=300)


def test_verify_json_contract():
    out = _run("verify", "--d", "10", "--k", "1", "--T", "3", "--seed", "0", "--json")
    assert out.returncode == 0, out.stderr
    data = strict_loads(out.stdout)  # strict JSON: no NaN / Infinity tokens
    assert data["instance"] == {"d": 10, "k": 1, "T": 3, "seed": 0}
    names = [c["name"] for c in data["checks"]]
    for name in ("gradient_vs_autograd", "hessian_vs_autograd", "schur_identity", "theorem_3_1_rank",
                 "corollary_1_sr_test_loss", "meta_lora_reduced_loss", "theorem_3_3_recovery", "meta_lora_test_loss"):
        assert name in names
    assert all(set(c) >= {"name", "passed", "value", "bound"} for c in data["checks"])
    assert all(c["passed"] for c in data["checks"])


def test_verify_table_for_T_2_runs_theorem_3_2(capsys):
    assert main(["verify", "--d", "6", "--k", "1", "--T", "2", "--seed", "3"]) == 0
    out = capsys.readouterr().out
    assert "theorem_3_2_rank" in out and "corollary_2_rank_3k_fit" in out and "theorem_3_3" not in out
    assert "all checks passed" in out


@pytest.mark.parametrize("args,message", [
    (["--k", "0"], "k must be a positive integer (> 0), got 0"),
    (["--d", "3", "--k", "1", "--T", "3"], "(T+1)*k = (3+1)*1 = 4 exceeds d = 3: Remark 3.1"),
    (["--T", "-2"], "T must be a positive integer (> 0), got -2"),
])
def test_verify_bad_input_exit_2(args, message):
    out = _run("verify", *args)
    assert out.returncode == 2
    assert message in out.stderr
    assert out.stdout == ""


def test_unknown_option_exit_2():
    out = _run("verify", "--dims", "3")
    assert out.returncode == 2 and "unrecognized arguments" in out.stderr


def test_a_failing_check_gives_exit_1(monkeypatch, capsys):
    from theory import checks
    from theory.checks import CheckResult

    monkeypatch.setattr(checks, "theorem_3_1_rank", lambda p: CheckResult("theorem_3_1_rank", False, 1.0, 3.0))
    assert main(["verify", "--d", "6", "--k", "1", "--T", "3", "--json"]) == 1
    data = json.loads(capsys.readouterr().out)
    assert data["passed"] is False
