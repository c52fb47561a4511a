"""The command-line contract of ``python -m theory`` and ``python -m landscape`` (theory.cli_contract): options
validated before any work with one message and exit 2, one error root, Ctrl-C gives one line and 130 with nothing
half-written, a dead worker gives one line and 3; a real SIGINT and a real SIGKILL against a running search."""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import landscape.__main__ as lmain
import theory.__main__ as tmain
from landscape import fanout, store
from landscape.certificate import CertificateError
from theory.cli_contract import deferred_sigint
from theory.problem import ProblemError

ROOT = os.path.join(os.path.dirname(__file__), os.pardir)
SEARCH = ["search", "--d", "3", "--k", "1", "--T", "3", "--instances", "2", "--starts", "4", "--gd-runs", "0",
          "--seed", "0", "--workers", "0"]


def _run(main, argv, capsys):
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse's own refusals
        code = exc.code
    out, err = capsys.readouterr()
    lines = [line for line in err.splitlines() if line.strip()]
    assert "Traceback" not in err
    return code, out, lines


def test_verify_negative_seed_is_one_line_exit_2(capsys):
    code, out, lines = _run(tmain.main, ["verify", "--seed", "-1"], capsys)
    assert code == 2 and out == ""
    assert lines == ["python -m theory verify: error: argument --seed: must be an integer >= 0, got -1"]


def test_landscape_argparse_refusals_are_one_line(capsys):
    code, _, lines = _run(lmain.main, ["search", "--d", "0"], capsys)
    assert code == 2 and len(lines) == 1 and "--d" in lines[0] and "usage" not in lines[0]


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    out = tmp_path_factory.mktemp("robust") / "r.jsonl"
    assert lmain.main([*SEARCH, "--out", str(out)]) == 0
    return out


@pytest.mark.parametrize("which", ["search --out", "certify --out", "summary --png", "figure1 --out"])
@pytest.mark.parametrize("place", ["folder", "under_a_file"])
def test_output_paths_are_checked_before_any_work(which, place, results, tmp_path, capsys):
    blocker = tmp_path / "plain_file"
    blocker.write_text("x")
    target = {"folder": str(tmp_path), "under_a_file": str(blocker / "sub" / "out")}[place]
    if which == "figure1 --out" and place == "folder":
        target = str(blocker)  # a folder is what figure1 wants; a file is the wrong kind there
    argv, main = {
        "search --out": ([*SEARCH, "--out", target], lmain.main),
        "certify --out": (["certify", str(results), "--sample", "0", "--out", target], lmain.main),
        "summary --png": (["summary", str(results), "--png", target], lmain.main),
        "figure1 --out": (["figure1", "--vary", "T", "--out", target], tmain.main),
    }[which]
    before = sorted(os.listdir(tmp_path))
    code, out, lines = _run(main, argv, capsys)
    assert code == 2 and out == "" and len(lines) == 1
    assert lines[0].startswith("error: ") and repr(target) in lines[0] and ".landscape-" not in lines[0]
    assert sorted(os.listdir(tmp_path)) == before and blocker.read_text() == "x"


TINY_FIGURE1 = ["--runs", "1", "--N", "100", "--n", "30", "--retrain-iters", "20", "--finetune-iters", "5"]


def test_figure1_refuses_a_malformed_earlier_summary_before_any_work(monkeypatch, tmp_path, capsys):
    import theory.figure1_cli

    monkeypatch.setattr(theory.figure1_cli, "run_panels", _interrupt)  # must not be reached
    (tmp_path / "summary.json").write_text("{not json")
    code, out, lines = _run(tmain.main, ["figure1", "--vary", "T", "--out", str(tmp_path)], capsys)
    assert code == 2 and len(lines) == 1 and "summary.json: cannot read the earlier summary" in lines[0]
    assert (tmp_path / "summary.json").read_text() == "{not json"


def test_figure1_refuses_an_override_its_panel_would_replace(tmp_path, capsys):
    out = tmp_path / "fig"
    code, _, lines = _run(tmain.main, ["figure1", "--vary", "n", "--n", "0", "--out", str(out)], capsys)
    assert code == 2 and lines == ["error: n must be a positive integer (> 0), got 0"] and not out.exists()


def test_figure1_panels_kept_from_earlier_runs_say_which_command_made_them(tmp_path, capsys):
    out = str(tmp_path / "fig")
    assert tmain.main(["figure1", "--vary", "T", "--seed", "1", "--out", out, *TINY_FIGURE1]) == 0
    assert tmain.main(["figure1", "--vary", "N", "--seed", "2", "--out", out, *TINY_FIGURE1]) == 0
    capsys.readouterr()
    with open(os.path.join(out, "summary.json")) as fh:
        panels = json.load(fh)["panels"]
    assert "--seed 1" in panels["T"]["command"] and "--seed 2" in panels["N"]["command"]
    assert {s["seed"] for s in panels["T"]["settings"]} == {1}


def test_certificate_errors_are_under_the_error_root(results, monkeypatch, capsys):
    import landscape.certify_interval as ci

    assert issubclass(CertificateError, ProblemError)

    def refuse(problem, U0, **kw):
        raise CertificateError("prec must be an integer number of bits >= 53, got 7")

    monkeypatch.setattr(ci, "certify_interval", refuse)
    code, _, lines = _run(lmain.main, ["certify", str(results), "--sample", "1"], capsys)
    assert code == 2 and lines == ["error: prec must be an integer number of bits >= 53, got 7"]


def test_certify_cli_on_an_overflowing_point_gives_an_inconclusive_row(tmp_path, capsys):
    from theory.problem import Problem

    p = Problem.random(4, 1, 3, seed=0)
    path = tmp_path / "big.json"
    point = 1e160 * np.ones((p.T, p.d, p.k))  # finite, but U U^T and the Hessian overflow float64
    path.write_text(json.dumps({"problem": p.to_dict(), "point": point.tolist()}))
    assert lmain.main(["certify", str(path), "--json"]) == 0
    (row,) = json.loads(capsys.readouterr().out)["rows"]  # strict JSON: no NaN / Infinity in the output
    assert row["search_class"] == "unclassified" and row["verdict"] == "inconclusive"
    assert "overflows" in row["reason"] and row["agrees"] is None
    assert lmain.main(["certify", str(path)]) == 0
    table = capsys.readouterr().out
    assert "None" not in table and "unclassified" in table


def _interrupt(*args, **kwargs):
    raise KeyboardInterrupt


def test_ctrl_c_in_verify_and_figure1_is_one_line_130_and_no_folder(monkeypatch, tmp_path, capsys):
    import theory.figure1_cli
    import theory.verify

    monkeypatch.setattr(theory.verify, "run_verify", _interrupt)
    assert _run(tmain.main, ["verify", "--d", "6"], capsys)[::2] == (130, ["interrupted"])
    monkeypatch.setattr(theory.figure1_cli, "run_panels", _interrupt)
    out = tmp_path / "fig"
    code, _, lines = _run(tmain.main, ["figure1", "--vary", "T", "--out", str(out)], capsys)
    assert code == 130 and lines == [f"interrupted; nothing written to {out}"]
    assert not out.exists()


def test_ctrl_c_in_certify_and_summary_is_one_line_130(results, monkeypatch, tmp_path, capsys):
    import landscape.certify_interval as ci
    import landscape.summary

    monkeypatch.setattr(ci, "certify_interval", _interrupt)
    out = tmp_path / "c.json"
    code, _, lines = _run(lmain.main, ["certify", str(results), "--sample", "1", "--out", str(out)], capsys)
    assert code == 130 and lines == ["interrupted; nothing written"] and not out.exists()
    monkeypatch.setattr(landscape.summary, "summarize", _interrupt)
    assert _run(lmain.main, ["summary", str(results)], capsys)[::2] == (130, ["interrupted; nothing written"])


def test_ctrl_c_and_a_dead_worker_in_search_keep_the_finished_instances(monkeypatch, tmp_path, capsys):
    spec = {"index": 0, "d": 3, "k": 1, "T": 3, "seed": 0, "starts": 4, "scales": [0.1, 0.5, 1.0, 2.0],
            "gd_runs": 0, "adversarial": None}
    first = fanout.run_spec(spec)
    for stop, code, head in ((KeyboardInterrupt(), 130, "interrupted; "),
                             (fanout.WorkerLost("a worker process ended abruptly"), 3, "error: a worker process")):
        def one_then_stop(specs, **kw):
            yield first
            raise stop

        monkeypatch.setattr(fanout, "run_all", one_then_stop)
        out = tmp_path / f"s{code}.jsonl"
        got, _, lines = _run(lmain.main, [*SEARCH, "--out", str(out)], capsys)
        assert got == code and len(lines) == 1
        assert lines[0].startswith(head)
        assert lines[0].endswith(f"1 instances saved to {out}; rerun the same command to resume")
        assert [r["index"] for r in store.load(str(out))] == [0]


def test_deferred_sigint_raises_after_the_block():
    done = []
    with pytest.raises(KeyboardInterrupt):
        with deferred_sigint():
            os.kill(os.getpid(), signal.SIGINT)
            done.append("the block ran to its end")
    assert done == ["the block ran to its end"]


@pytest.mark.parametrize("script,argv", [
    ("theory_speed.py", ["--threads", "0"]),
    ("figure1_speed.py", ["--runs", "-1"]),
    ("landscape_certify_speed.py", ["--repeat", "0"]),
    ("landscape_search_speed.py", ["--workers", "x"]),
    ("landscape_search_speed.py", ["--out", "."]),
])
def test_benchmark_scripts_refuse_bad_options_before_timing(script, argv, capsys):
    path = os.path.join(ROOT, "benchmarks", script)
    spec = importlib.util.spec_from_file_location(f"_bench_{script[:-3]}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    code, out, lines = _run(module.main, argv, capsys)
    assert code == 2 and out == "" and len(lines) == 1


# ------------------------------------------------------------------------------------------ real signals

def _slow_search(out) -> list[str]:
    # instances of ~2-3 s each (3000 Newton-type starts), so that several are still running when the signal comes
    # even when the machine's load delays the test's polling (with 1500 starts a loaded run once finished first)
    return [sys.executable, "-m", "landscape", "search", "--d", "3", "--k", "1", "--T", "3", "--instances", "4",
            "--starts", "3000", "--gd-runs", "0", "--seed", "0", "--out", str(out), "--workers", "2"]


def _wait_for_lines(path, n: int, proc, deadline_s: float = 240.0) -> None:
    """Block until ``path`` holds ``n`` complete lines (observable progress), or fail after the deadline."""
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        if path.exists() and path.read_bytes().count(b"\n") >= n:
            return
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.01)  # polling interval of the progress check, not a wait for the code under test
    proc.kill()
    pytest.fail(f"no progress in {deadline_s} s")


def _worker_pids(pid: int) -> list[int]:
    with open(f"/proc/{pid}/task/{pid}/children") as fh:
        kids = [int(k) for k in fh.read().split()]
    out = []
    for k in kids:
        with open(f"/proc/{k}/cmdline", "rb") as fh:
            if b"spawn_main" in fh.read():
                out.append(k)
    return out


@pytest.mark.skipif(sys.platform != "linux", reason="signals to a process group, /proc")
@pytest.mark.parametrize("how", ["sigint", "sigkill_worker"])
def test_real_signal_stops_search_with_one_line_and_the_rerun_resumes(how, tmp_path):
    out = tmp_path / "run.jsonl"
    proc = subprocess.Popen(_slow_search(out), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        _wait_for_lines(out, 1, proc)
        t0 = time.monotonic()
        if how == "sigint":  # as Ctrl-C in a terminal: to the whole process group, workers included
            os.killpg(proc.pid, signal.SIGINT)
        else:
            os.kill(_worker_pids(proc.pid)[0], signal.SIGKILL)
        stdout, stderr = proc.communicate(timeout=60)
        seconds = time.monotonic() - t0
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    lines = [line for line in stderr.splitlines() if line.strip()]
    saved = store.load(str(out))
    assert proc.returncode == (130 if how == "sigint" else 3), stderr
    assert len(lines) == 1 and "Traceback" not in stderr
    assert lines[0].endswith(f"{len(saved)} instances saved to {out}; rerun the same command to resume")
    assert lines[0].startswith("interrupted; " if how == "sigint" else "error: a worker process ended abruptly")
    assert 1 <= len(saved) < 4 and seconds < 30
    assert out.read_bytes().endswith(b"\n")
    if how != "sigint":
        return  # the resume below is the same whichever way the run stopped
    rerun = subprocess.run(_slow_search(out), capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr
    report = json.loads(rerun.stdout.strip().splitlines()[-1])
    assert report["skipped"] == len(saved) and report["finished"] == 4 - len(saved)
    assert sorted(r["index"] for r in store.load(str(out))) == [0, 1, 2, 3]
