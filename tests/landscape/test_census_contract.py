"""The census command line's contract (docs/robustness.md): Ctrl-C and a dead worker keep the finished
instances, bad folders, plans, cell files and runs logs are refused in one line before any work, fuzzed options,
and real signals (slow)."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from landscape import fanout, store
from landscape.__main__ import main

from census_support import ARGS, cells_of as _cells

pytestmark = pytest.mark.usefixtures("one_thread")


# --- the command-line contract (docs/robustness.md) ---------------------------------------------------------------

def _lines(capsys):
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    return out, [line for line in err.splitlines() if line.strip()]


@pytest.mark.parametrize("stop,code,head", [(KeyboardInterrupt(), 130, "interrupted; "),
                                            (fanout.WorkerLost("a worker process ended abruptly"), 3,
                                             "error: a worker process ended abruptly")])
def test_ctrl_c_and_a_dead_worker_keep_the_finished_instances(stop, code, head, full_run, tmp_path, monkeypatch,
                                                              capsys):
    first = store.load(str(full_run / "cells" / "d3_k1_T3.jsonl"))[0]

    def one_chunk_then_stop(specs, **kw):
        yield [first]
        raise stop
    monkeypatch.setattr(fanout, "run_all", one_chunk_then_stop)
    out = tmp_path / f"stop{code}"
    capsys.readouterr()
    assert main([*ARGS, "--out", str(out)]) == code
    stdout, err = _lines(capsys)
    assert stdout == "" and len(err) == 1 and err[0].startswith(head)
    assert err[0].endswith(f"1 instances saved to {out}; rerun the same command to resume")
    assert store.load(str(out / "cells" / "d3_k1_T3.jsonl")) == [first]
    runs = [json.loads(x) for x in (out / "runs.jsonl").read_text().splitlines()]
    assert [(r["finished"], r["interrupted"]) for r in runs] == [(1, True)]


def _bad_places(tmp_path):
    (tmp_path / "a_file").write_text("x")
    return {"an existing file": (str(tmp_path / "a_file"), "exists and is not a folder"),
            "a path under a file": (str(tmp_path / "a_file" / "c"), "is not a folder, so nothing can be made"),
            "an empty name": ("", "must name a path")}


@pytest.mark.parametrize("place", ["an existing file", "a path under a file", "an empty name"])
def test_output_folders_are_checked_before_any_work(place, full_run, tmp_path, monkeypatch, capsys):
    def never(*a, **kw):
        raise AssertionError("work started")
    monkeypatch.setattr(fanout, "run_all", never)
    path, match = _bad_places(tmp_path)[place]
    before = sorted(os.listdir(tmp_path))
    for argv in ([*ARGS, "--out", path], [*ARGS, "--dry-run", "--out", path],
                 ["census-summary", str(full_run), "--out", path]):
        assert main(argv) == 2
        stdout, err = _lines(capsys)
        assert stdout == "" and len(err) == 1 and match in err[0], err
        assert sorted(os.listdir(tmp_path)) == before


@pytest.mark.parametrize("content,match", [(b"{not json", "is not valid JSON"), (b"\xff\xfe", "is not valid JSON"),
                                           (b"[1, 2]", "is not a census plan"),
                                           (b'{"grid": "d=3", "options": {}, "command": "c", "plan": [{"d": 3}]}',
                                            "is not a census plan")])
def test_a_malformed_plan_is_refused_in_one_line_and_left_alone(content, match, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(fanout, "run_all", lambda *a, **kw: pytest.fail("work started"))
    out = tmp_path / "c"
    out.mkdir()
    (out / "plan.json").write_bytes(content)
    for argv in ([*ARGS, "--out", str(out)], ["census-summary", str(out), "--out", str(tmp_path / "res")]):
        assert main(argv) == 2
        stdout, err = _lines(capsys)
        assert stdout == "" and len(err) == 1 and match in err[0], err
    assert os.listdir(out) == ["plan.json"] and (out / "plan.json").read_bytes() == content
    assert not (tmp_path / "res").exists()


def test_a_bad_cell_file_is_refused_before_anything_is_written(full_run, tmp_path, capsys):
    out = tmp_path / "c"
    (out / "cells").mkdir(parents=True)
    good = (full_run / "cells" / "d3_k1_T3.jsonl").read_text()
    (out / "cells" / "d3_k1_T3.jsonl").write_text(good)
    bad = (full_run / "cells" / "d4_k1_T3.jsonl").read_text().replace('{"index": ', '{"index": "x", "i": ', 1)
    (out / "cells" / "d4_k1_T3.jsonl").write_text(bad)
    assert main([*ARGS, "--out", str(out)]) == 2
    stdout, err = _lines(capsys)
    assert stdout == "" and len(err) == 1 and "d4_k1_T3.jsonl: line 1" in err[0], err
    assert sorted(os.listdir(out)) == ["cells"]  # no plan.json, no runs.jsonl
    assert (out / "cells" / "d4_k1_T3.jsonl").read_text() == bad


def test_summary_refuses_records_of_other_options_and_a_bad_runs_log(full_run, tmp_path, capsys):
    import shutil

    other = tmp_path / "other"
    shutil.copytree(full_run, other)
    plan = json.loads((other / "plan.json").read_text())
    plan["options"]["starts"] = 9
    (other / "plan.json").write_text(json.dumps(plan))
    assert main(["census-summary", str(other), "--out", str(tmp_path / "r1")]) == 2
    stdout, err = _lines(capsys)
    assert len(err) == 1 and "other options than the census plan (differing: ['starts'])" in err[0], err
    log = tmp_path / "log"
    shutil.copytree(full_run, log)
    with open(log / "runs.jsonl", "a") as fh:
        fh.write('{"seconds": "x"}\n{"seconds": 1.0, "fin')  # a bad line, then a line cut off by a kill
    assert main(["census-summary", str(log), "--out", str(tmp_path / "r2")]) == 2
    stdout, err = _lines(capsys)
    assert len(err) == 1 and "runs.jsonl: line 2 must be a JSON object with a number of seconds" in err[0], err
    assert not (tmp_path / "r1").exists() and not (tmp_path / "r2").exists()


def test_census_cells_are_read_by_summary_and_certify(full_run, capsys):
    """A census cell file is a results file: ``summary`` and ``certify`` read it (gd rows carry class and near)."""
    path = str(full_run / "cells" / "d3_k1_T3.jsonl")
    capsys.readouterr()
    assert main(["summary", path, "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    recs = store.load(path)
    assert out["instances"] == 3 and out["gd"]["runs"] == sum(len(r["gd"]) for r in recs)
    ends = {g["class"] for r in recs for g in r["gd"]}
    assert ends <= {"global_min", "spurious_min", "saddle", "degenerate", "unconverged"}


def _tqdm_lock_kinds(_):
    from tqdm import tqdm

    tqdm(total=1, disable=True).close()  # what certify_epsnet does in a census worker
    lock = tqdm.get_lock()
    return [type(lk).__module__ for lk in getattr(lock, "locks", [lock])]


def test_workers_make_no_named_semaphore_for_tqdm():
    """A census worker's eps-net makes a silent tqdm bar; with tqdm's default lock that is a multiprocessing RLock,
    which the resource tracker reports as leaked (two extra lines after the Ctrl-C line) when the worker is
    terminated. Workers use a thread lock instead."""
    import concurrent.futures as cf
    import multiprocessing

    with cf.ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"),
                                initializer=fanout._init_worker) as pool:
        kinds = pool.submit(_tqdm_lock_kinds, 0).result()
    assert kinds and not any(k.startswith("multiprocessing") for k in kinds), kinds


# the in-process fuzz of `census` options, as test_fuzz_landscape_cli.py does for `search` (stubbed work)
GRIDS = st.sampled_from([("d=3;k=1;T=3", True), ("d=3,4;k=1,2;T=3,4", True), ("default", True), ("T=3", True),
                         ("d=3;d=4", False), ("x=1", False), ("T=1", False), ("d=1;k=2", False), ("", False),
                         ("d=;k=1", False), ("d=3,3", False), ("d=0", False)])


def _seconds_ok(text):
    try:
        v = float(text)
    except ValueError:
        return False
    return np.isfinite(v) and v > 0


SECONDS = st.one_of(st.sampled_from(["1", "0.5", "6000", "0", "-1", "nan", "inf", "x", ""]),
                    st.text(max_size=4)).map(lambda t: (t, _seconds_ok(t)))


@pytest.fixture(scope="module")
def fuzz():
    import fuzz_support

    return fuzz_support


def _census_spec(f):
    return {"--grid": GRIDS, "--instances": f.int_value(1), "--starts": f.int_value(1), "--seed": f.int_value(0),
            "--gd-runs": f.int_value(0), "--figure1-runs": f.int_value(0), "--gd-steps": f.int_value(1),
            "--scales": f.scales_value, "--budget": SECONDS, "--min-instances": f.int_value(1),
            "--chunk-seconds": SECONDS, "--epsnet-max-n": f.int_value(0), "--workers": f.int_value(0),
            "--scheduler": st.sampled_from(["tcp://127.0.0.1:1", "", " "]).map(lambda v: (v, bool(v.strip()))),
            "--out": f.path_value("dir"), "--dry-run": None}


def test_fuzz_census_options(fuzz):
    from unittest import mock

    import landscape.__main__ as lmain

    spec = _census_spec(fuzz)

    @settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
    @given(fuzz.options(spec, required=("--out",)))
    def check(opts):
        import tempfile

        names = {name for name, _, _ in opts}
        valid = all(ok for _, _, ok in opts) and not {"--workers", "--scheduler"} <= names
        with tempfile.TemporaryDirectory() as tmp, mock.patch.object(fanout, "run_all", fuzz.reached):
            open(os.path.join(tmp, "a_file"), "w").close()
            os.mkdir(os.path.join(tmp, "a_dir"))
            before = fuzz.listing(tmp)
            code, out, err = fuzz.call_main(lmain.main, ["census", *fuzz.make_argv(opts, tmp)])
            if code != "reached":
                assert fuzz.listing(tmp) == before
        if valid:
            assert code == (0 if "--dry-run" in names else "reached"), (opts, err)
        else:
            fuzz.assert_refused(code, out, err)
    check()


@pytest.mark.slow
@pytest.mark.skipif(os.name != "posix" or not os.path.isdir("/proc"), reason="signals to a process group, /proc")
@pytest.mark.parametrize("how", ["sigint", "sigkill_worker"])
def test_real_signal_stops_census_with_one_line_and_the_rerun_resumes(how, tmp_path):
    import signal
    import subprocess
    import sys

    from test_robust_cli import _wait_for_lines, _worker_pids

    root = os.path.abspath(os.path.join(os.path.dirname(__file__), os.pardir, os.pardir))
    out = tmp_path / "c"
    cmd = [sys.executable, "-m", "landscape", "census", "--grid", "d=3;k=1;T=3", "--instances", "6", "--starts",
           "1500", "--gd-runs", "0", "--figure1-runs", "0", "--min-instances", "1", "--chunk-seconds", "0.001",
           "--workers", "2", "--out", str(out)]
    env = dict(os.environ, PYTHONPATH=root)
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    cell = out / "cells" / "d3_k1_T3.jsonl"
    try:
        _wait_for_lines(cell, 1, proc)
        if how == "sigint":
            os.killpg(proc.pid, signal.SIGINT)
        else:
            os.kill(_worker_pids(proc.pid)[0], signal.SIGKILL)
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    lines = [line for line in stderr.splitlines() if line.strip()]
    saved = store.load(str(cell))
    assert proc.returncode == (130 if how == "sigint" else 3), stderr
    assert len(lines) == 1 and "Traceback" not in stderr
    assert lines[0].startswith("interrupted; " if how == "sigint" else "error: a worker process ended abruptly")
    assert lines[0].endswith(f"{len(saved)} instances saved to {out}; rerun the same command to resume")
    assert 1 <= len(saved) < 6
    rerun = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr
    assert json.loads(rerun.stdout.strip().splitlines()[-1])["finished"] == 6 - len(saved)
    assert sorted(r["index"] for r in store.load(str(cell))) == list(range(6))


@pytest.mark.slow
def test_resume_after_a_real_sigkill_equals_an_uninterrupted_run(full_run, tmp_path):
    """``python -m landscape census`` dies by SIGKILL right after its first record is appended to a cell file (it
    signals itself there, so the point does not depend on the machine's load); resumed, it equals a full run."""
    import subprocess
    import sys

    from self_signal import signal_after_first_call

    root = os.path.abspath(os.path.join(os.path.dirname(__file__), os.pardir, os.pardir))
    env = dict(os.environ, PYTHONPATH=root)
    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "landscape", *ARGS, "--out", str(out)]
    kills = signal_after_first_call("landscape", "landscape.store", "append", "SIGKILL", path_contains=os.sep + "cells")
    killed = subprocess.run([*kills, *ARGS, "--out", str(out)], env=env, capture_output=True, text=True, timeout=300)
    assert killed.returncode == -9, killed.stderr  # died by SIGKILL
    finished = sum(len(store.load(str(out / "cells" / n))) for n in os.listdir(out / "cells")
                   if (out / "cells" / n).stat().st_size)
    assert finished == 1
    resumed = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads(resumed.stdout.strip().splitlines()[-1])["finished"] == 6 - finished
    assert _cells(out) == _cells(full_run)
