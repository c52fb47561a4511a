"""The JSON-lines store is append-only and checks its tail; readers refuse bad records naming file, line and value."""

from __future__ import annotations

import json

import pytest

from landscape import store
from theory.problem import Problem, ProblemError


def _record(index: int) -> dict:
    p = Problem.random(3, 1, 3, seed=index)
    return {"index": index, "config": {"d": 3}, "problem": p.to_dict(),
            "critical_points": [{"class": "global_min", "loss": 0.0, "point": p.U_star.tolist(),
                                 "eigenvalues": [1.0, 2.0, 3.0], "min_eigenvalue": 1.0}],
            "gd": [{"class": "unconverged", "near": "global_min"}], "solves": {"converged": 4}}


def test_append_restores_a_missing_final_newline(tmp_path):
    path = tmp_path / "r.jsonl"
    path.write_text(json.dumps(_record(0)))  # the last record lacks its newline
    store.append(str(path), _record(1))
    lines = path.read_text().splitlines()
    assert [json.loads(x)["index"] for x in lines] == [0, 1]
    assert path.read_text().endswith("\n")


def test_open_run_gives_the_newline_back_without_rewriting(tmp_path):
    path = tmp_path / "r.jsonl"
    text = json.dumps(_record(0)) + "\n" + json.dumps(_record(1))
    path.write_text(text)
    assert store.open_run(str(path), {"d": 3}) == {0, 1}
    assert path.read_text() == text + "\n"


def test_append_refuses_a_cut_off_tail_and_leaves_the_file_alone(tmp_path):
    path = tmp_path / "r.jsonl"
    good = json.dumps(_record(0)) + "\n"
    path.write_text(good + json.dumps(_record(1))[:50])
    before = path.read_bytes()
    with pytest.raises(ProblemError, match="last line is cut off"):
        store.append(str(path), _record(2))
    assert path.read_bytes() == before
    assert store.open_run(str(path), {"d": 3}) == {0}  # the repair drops the cut-off line
    store.append(str(path), _record(2))
    assert [r["index"] for r in store.load(str(path))] == [0, 2]


def _mutate(rec: dict, how: str) -> dict:
    rec = json.loads(json.dumps(rec))
    c = rec["critical_points"][0]
    if how == "nan_point":
        c["point"][1][2][0] = float("nan")
    elif how == "short_point":
        c["point"] = c["point"][:2]
    elif how == "ragged_point":
        c["point"][0] = [[1.0, 2.0]]
    elif how == "bad_class":
        c["class"] = "minimum"
    elif how == "inf_loss":
        c["loss"] = float("inf")
    elif how == "bool_index":
        rec["index"] = True
    elif how == "negative_index":
        rec["index"] = -1
    elif how == "nan_problem":
        rec["problem"]["A_star"][0][0] = float("nan")
    elif how == "string_eigenvalues":
        c["eigenvalues"] = ["x"]
    elif how == "bad_gd":
        rec["gd"] = [{"class": "minimum"}]
    elif how == "bad_solves":
        rec["solves"] = {"converged": "many"}
    return rec


@pytest.mark.parametrize("how,needle", [
    ("nan_point", "critical point 0: point must have finite entries, found nan at [1, 2, 0]"),
    ("short_point", "critical point 0: point must be an array of numbers of shape (T, d, k) = (3, 3, 1)"),
    ("ragged_point", "critical point 0: point must be an array of numbers"),
    ("bad_class", "critical point 0: class must be one of"),
    ("inf_loss", "critical point 0: loss must be a finite number, got inf"),
    ("bool_index", "index must be an integer >= 0, got True"),
    ("negative_index", "index must be an integer >= 0, got -1"),
    ("nan_problem", "problem: A_star must have finite entries, found 1 non-finite (nan at [0, 0])"),
    ("string_eigenvalues", "eigenvalues must be a list of finite numbers and min_eigenvalue a finite number"),
    ("bad_gd", "gd must be a list of runs"),
    ("bad_solves", "solves must map statuses to counts"),
])
def test_results_reader_refuses_a_bad_record_naming_file_and_line(tmp_path, how, needle):
    path = tmp_path / "r.jsonl"
    path.write_text(json.dumps(_record(0)) + "\n" + json.dumps(_mutate(_record(1), how)) + "\n")
    for read in (store.load, lambda p: store.open_run(p, {"d": 3})):
        with pytest.raises(ProblemError) as exc:
            read(str(path))
        assert str(exc.value).startswith(f"{path}: line 2") and needle in str(exc.value)


@pytest.mark.parametrize("content,needle", [
    (b'{"index": 0}\n\xff\xfe\n', "line 2 is not UTF-8 text (byte 0xff"),
    (b"[" * 100_000 + b"\n", "line 1 is not valid JSON (nested too deeply)"),
    (b'{"index": ' + b"9" * 5000 + b"}\n", "line 1 is not valid JSON"),
])
def test_results_reader_refuses_undecodable_lines(tmp_path, content, needle):
    path = tmp_path / "r.jsonl"
    path.write_bytes(content)
    with pytest.raises(ProblemError) as exc:
        store.load(str(path))
    assert needle in str(exc.value)


def test_repeated_index_is_refused(tmp_path):
    path = tmp_path / "r.jsonl"
    path.write_text(json.dumps(_record(0)) + "\n" + json.dumps(_record(0)) + "\n")
    with pytest.raises(ProblemError, match="line 2 repeats instance index 0 .first on line 1."):
        store.load(str(path))


@pytest.mark.parametrize("data,needle", [
    ({"problem": Problem.random(3, 1, 3, seed=0).to_dict(), "point": [[[1.0], [2.0]], [[1.0]]]},
     "point must be an array of numbers of shape (T, d, k) = (3, 3, 1)"),
    ({"problem": Problem.random(3, 1, 3, seed=0).to_dict(), "point": [[[float("inf")]] * 3] * 3},
     "point must have finite entries, found inf at [0, 0, 0]"),
    ({"problem": {**Problem.random(3, 1, 3, seed=0).to_dict(), "sigma": "x"}, "point": [[[0.0]] * 3] * 3},
     "problem: sigma must be a finite number >= 0, got 'x'"),
    ({"problem": {**Problem.random(3, 1, 3, seed=0).to_dict(), "seed": -4}, "point": [[[0.0]] * 3] * 3},
     "problem: seed must be an integer >= 0 (or None), got -4"),
])
def test_instance_reader_refuses_bad_values_naming_the_file(tmp_path, data, needle):
    path = tmp_path / "i.json"
    path.write_text(json.dumps(data))
    with pytest.raises(ProblemError) as exc:
        store.load_instance(str(path))
    assert str(exc.value).startswith(f"{path}: ") and needle in str(exc.value)
