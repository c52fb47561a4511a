"""Fan-out (serial, local processes, Dask) and the resumable JSON-lines store give identical results."""

from __future__ import annotations

import json

import pytest

from landscape import fanout, store
from landscape.__main__ import main
from theory.problem import Problem, ProblemError

CONFIG = {"d": 3, "k": 1, "T": 3, "seed": 5, "starts": 8, "scales": [0.1, 1.0], "gd_runs": 1, "adversarial": None}
SPECS = [{"index": i, **CONFIG} for i in range(3)]


@pytest.fixture(scope="module")
def serial():
    return store.canonical(list(fanout.run_all(SPECS, workers=1)))


def test_records_carry_index_config_and_problem(serial):
    assert [r["index"] for r in serial] == [0, 1, 2]
    assert all(r["config"] == CONFIG for r in serial)
    # different instances are different problems (seed derived from (seed, i) with SeedSequence)
    assert serial[0]["problem"]["U_star"] != serial[1]["problem"]["U_star"]


def test_processes_equal_serial(serial):
    got = store.canonical(list(fanout.run_all(SPECS, workers=2)))
    assert got == serial


def test_dask_local_cluster_equals_serial(serial):
    from dask.distributed import Client, LocalCluster

    with LocalCluster(n_workers=1, threads_per_worker=2, processes=False, dashboard_address=None) as cluster, \
            Client(cluster) as client:
        got = store.canonical(list(fanout.run_all(SPECS, scheduler=client)))
    assert got == serial


def test_dask_bad_address_refused():
    with pytest.raises(ProblemError, match="cannot connect to the Dask scheduler"):
        list(fanout.run_all(SPECS[:1], scheduler="tcp://127.0.0.1:1", connect_timeout=1.0))


def _search(out, *extra):
    return main(["search", "--d", "3", "--k", "1", "--T", "3", "--instances", "4", "--starts", "8", "--seed", "1",
                 "--gd-runs", "1", "--scales", "0.1,1", "--out", str(out), "--workers", "1", *extra])


def test_resume_after_a_crash_gives_the_uninterrupted_file(tmp_path, capsys):
    full = tmp_path / "full.jsonl"
    assert _search(full) == 0
    lines = full.read_text().splitlines(keepends=True)
    assert len(lines) == 4
    # a crash: two instances finished, the third cut off in the middle of its line
    part = tmp_path / "part.jsonl"
    part.write_text(lines[0] + lines[2] + lines[1][: len(lines[1]) // 2])
    capsys.readouterr()
    assert _search(part) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report["finished"] == 2 and report["skipped"] == 2
    assert store.canonical(store.load(str(part))) == store.canonical(store.load(str(full)))
    assert len(part.read_text().splitlines()) == 4
    # a finished file: nothing left to do
    assert _search(part) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["finished"] == 0


def test_resume_with_other_arguments_refused(tmp_path, capsys):
    out = tmp_path / "r.jsonl"
    assert _search(out) == 0
    capsys.readouterr()
    code = main(["search", "--d", "3", "--k", "1", "--T", "3", "--instances", "4", "--starts", "9", "--seed", "1",
                 "--out", str(out), "--workers", "1"])
    assert code == 2
    err = capsys.readouterr().err
    assert "other arguments" in err and "starts" in err


def test_store_refuses_a_corrupt_middle_line(tmp_path):
    p = tmp_path / "bad.jsonl"
    p.write_text('{"index": 0}\nnot json\n')
    with pytest.raises(ProblemError, match="line 1 is not a landscape result"):
        store.load(str(p))
    good = {"index": 0, "config": {}, "problem": Problem.random(3, 1, 3, seed=0).to_dict(), "critical_points": []}
    p.write_text(json.dumps(good) + "\nnot json\n")
    with pytest.raises(ProblemError, match="line 2 is not valid JSON"):
        store.load(str(p))
    p.write_text(json.dumps({**good, "problem": {}}) + "\n")  # every record is checked, its instance included
    with pytest.raises(ProblemError, match="line 1: problem: a problem needs the key 'A_star'"):
        store.load(str(p))


def test_cli_scheduler_address_equals_serial(tmp_path):
    """`search --scheduler ADDRESS` (a local Dask cluster's address) writes the same records as a serial run."""
    from dask.distributed import LocalCluster

    serial_out, dask_out = tmp_path / "serial.jsonl", tmp_path / "dask.jsonl"
    assert _search(serial_out) == 0
    argv = ["search", "--d", "3", "--k", "1", "--T", "3", "--instances", "4", "--starts", "8", "--seed", "1",
            "--gd-runs", "1", "--scales", "0.1,1", "--out", str(dask_out)]
    with LocalCluster(n_workers=1, threads_per_worker=2, processes=False, dashboard_address=None) as cluster:
        assert main([*argv, "--scheduler", cluster.scheduler_address]) == 0
    assert store.canonical(store.load(str(dask_out))) == store.canonical(store.load(str(serial_out)))
