"""Each failing input of ../shared/cases/ that concerns theory or landscape behaves as its README says is right
(skipped when the folder is absent)."""

from __future__ import annotations

import json
import os
import shutil

import pytest

from landscape import store
from landscape.__main__ import main
from theory.problem import Problem, ProblemError

CASES = os.path.join(os.path.dirname(__file__), os.pardir, os.pardir, "shared", "cases")

pytestmark = pytest.mark.skipif(not os.path.isdir(CASES), reason="../shared/cases is absent")


def _case(name: str) -> str:
    path = os.path.join(CASES, name)
    if not os.path.isfile(path):
        pytest.skip(f"{name} is absent from ../shared/cases")
    return path


def _one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


@pytest.mark.parametrize("method", ["krawczyk", "epsnet"])
def test_nan_point_instance_is_refused_naming_file_and_value(method, capsys):
    path = _case("nan_point_instance.json")
    assert main(["certify", path, "--method", method]) == 2
    out, err = capsys.readouterr()
    line = _one_error_line(err)
    assert line.startswith("error: ") and path in line and "nan" in line and "point" in line
    assert out == ""


@pytest.mark.parametrize("method", ["krawczyk", "epsnet"])
def test_inf_point_results_is_refused_naming_file_line_and_value(method, capsys):
    path = _case("inf_point_results.jsonl")
    assert main(["certify", path, "--method", method]) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert f"{path}: line 1: critical point 0: point must have finite entries, found inf" in line


def test_huge_Ustar_instance_is_refused_as_a_problem_and_by_certify(capsys):
    path = _case("huge_Ustar_instance.json")
    with open(path, encoding="utf-8") as fh:
        data = json.load(fh)
    with pytest.raises(ProblemError, match="task matrices W_t .* are not finite"):
        Problem.from_dict(data["problem"])
    for method in ("krawczyk", "epsnet"):
        assert main(["certify", path, "--method", method]) == 2
        line = _one_error_line(capsys.readouterr().err)
        assert path in line and "not finite" in line


def test_results_without_final_newline_resume_keeps_all_three_instances(tmp_path, capsys):
    copy = tmp_path / "copy.jsonl"
    shutil.copyfile(_case("results_no_final_newline.jsonl"), copy)
    before = copy.read_bytes()
    assert not before.endswith(b"\n")
    argv = ["search", "--d", "3", "--k", "1", "--T", "3", "--instances", "3", "--starts", "4", "--gd-runs", "0",
            "--seed", "0", "--out", str(copy), "--workers", "0"]
    assert main(argv) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    after = copy.read_bytes()
    assert after.startswith(before + b"\n")  # append-only: the old bytes untouched, the missing newline restored
    lines = after.decode().splitlines()
    assert len(lines) == 3 and all(isinstance(json.loads(line), dict) for line in lines)
    assert sorted(r["index"] for r in store.load(str(copy))) == [0, 1, 2]
    assert report["finished"] + report["skipped"] == 3
    assert main(["summary", str(copy), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["instances"] == 3
