"""The census of spurious minima: the lock-step kernel over instances, Wilson intervals, the plan, identical records
serially / in processes / on Dask, resume after a kill or Ctrl-C, and the command line."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from threadpoolctl import threadpool_limits

from landscape import _batched, census, census_report, fanout, lockstep, multisearch, store
from landscape.__main__ import main
from landscape.classify import same_orbit
from landscape.search import SolverOptions, problem_scale, solve_batch
from theory.meta import meta_grad, meta_loss
from theory.problem import Problem, ProblemError
from theory.reduced import reduced_hess

from strategies import problems, seeds

FAST = {"gd_steps": 3000}
TINY = census.CensusOptions(instances=3, starts=8, gd_runs=1, figure1_runs=1, budget=100.0, min_instances=1,
                            chunk_seconds=1e-3, solver=FAST)


@pytest.fixture(autouse=True)
def _one_thread():
    with threadpool_limits(limits=1):
        yield


def _same(a: dict, b: dict):
    """Two solver outputs equal bit for bit, row by row."""
    for key in a:
        np.testing.assert_array_equal(np.asarray(a[key]), np.asarray(b[key]), err_msg=key)


# --- the kernel -------------------------------------------------------------------------------------------------

@settings(max_examples=20, deadline=None)
@given(problems(max_d=5, max_k=2, max_T=4), seeds, st.integers(1, 3))
def test_hess_fast_equals_theory(p, seed, B):
    U = np.random.default_rng(seed).standard_normal((B, p.T, p.d, p.k))
    H = _batched.hess_fast(U, p)
    for b in range(B):
        ref = reduced_hess(U[b], p)
        np.testing.assert_allclose(H[b], ref, rtol=1e-12, atol=1e-12 * max(1.0, np.abs(ref).max()))


@settings(max_examples=20, deadline=None)
@given(problems(max_d=4, max_k=2, max_T=4), seeds)
def test_full_loss_grad_equals_theory(p, seed):
    rng = np.random.default_rng(seed)
    A, U = rng.standard_normal((2, p.d, p.d)), rng.standard_normal((2, p.T, p.d, p.k))
    f, gA, gU = _batched.full_loss_grad(A, U, np.stack([p.W, p.W]))
    for b in range(2):
        rA, rU = meta_grad(A[b], U[b], p)
        assert f[b] == pytest.approx(meta_loss(A[b], U[b], p), rel=1e-12)
        np.testing.assert_allclose(gA[b], rA, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(gU[b], rU, rtol=1e-12, atol=1e-12)


@settings(max_examples=8, deadline=None)
@given(st.sampled_from([(3, 1, 3), (4, 1, 4), (4, 2, 3)]), seeds, st.integers(2, 4))
def test_batched_over_instances_equals_per_instance(size, seed, m):
    """One lock-step batch holding the starts of m instances gives, row by row and bit for bit, what each instance
    gives alone (so records do not depend on how instances are chunked)."""
    d, k, T = size
    rng = np.random.default_rng(seed)
    ps = [Problem.random(d, k, T, seed=int(s)) for s in rng.integers(0, 2**31, m)]
    per = 6
    inst = np.repeat(np.arange(m), per)
    X0 = rng.standard_normal((m * per, T * d * k)) * np.repeat([problem_scale(p) for p in ps], per)[:, None]
    methods = ["newton", "min"] * (m * per // 2)
    opts = SolverOptions(gd_steps=300, max_iter=40)
    together = lockstep.solve_rows(ps, inst, X0, method=methods, options=opts)
    gd_together = lockstep.descend_rows(ps, inst, 1e-3 * X0, options=opts)
    f1_together = lockstep.figure1_descent(ps, inst, 1e-2 * X0 / X0.std(), options=opts)
    for q in range(m):
        rows = slice(q * per, (q + 1) * per)
        alone = lockstep.solve_rows([ps[q]], np.zeros(per, int), X0[rows], method=methods[rows], options=opts)
        _same({key: v[rows] for key, v in together.items()}, alone)
        gd = lockstep.descend_rows([ps[q]], np.zeros(per, int), 1e-3 * X0[rows], options=opts)
        _same({key: v[rows] for key, v in gd_together.items()}, gd)
        f1 = lockstep.figure1_descent([ps[q]], np.zeros(per, int), 1e-2 * X0[rows] / X0.std(), options=opts)
        _same({key: v[rows] for key, v in f1_together.items()}, f1)


def test_search_instances_chunking_does_not_matter():
    ps = [Problem.random(3, 1, 3, seed=s) for s in (4, 5, 6)]
    kw = dict(starts=8, seed=3, gd_runs=1, figure1_runs=1, options=SolverOptions(gd_steps=500))
    together = multisearch.search_instances(ps, [10, 11, 12], **kw)
    for q in range(3):
        alone = multisearch.search_instances([ps[q]], [10 + q], **kw)[0]
        for a, b in zip(sum(together[q], []), sum(alone, [])):
            assert a.status == b.status and a.iterations == b.iterations and a.seed == b.seed
            assert np.array_equal(a.point, b.point) and a.extra == b.extra


def test_new_kernel_agrees_with_todays_per_instance_path():
    """The oracle: on the same starts, today's per-instance solver (search.solve_batch, eigen-decomposition every
    iteration) and the lock-step kernel over instances (solves where they are cheaper) end with the same status at
    the same critical orbit for (nearly) every start; round-off may send a rare start elsewhere."""
    ps = [Problem.random(3, 1, 3, seed=s) for s in range(6)] + [Problem.random(5, 2, 3, seed=s) for s in range(2)]
    agree = total = 0
    for size in ((3, 1, 3), (5, 2, 3)):
        group = [p for p in ps if (p.d, p.k, p.T) == size]
        starts = [multisearch.start_points(7, i, 16, p.n_reduced) * problem_scale(p) for i, p in enumerate(group)]
        methods = ["newton", "min"] * 8
        new = lockstep.solve_rows(group, np.repeat(np.arange(len(group)), 16), np.concatenate(starts),
                                  method=methods * len(group))
        for q, p in enumerate(group):
            for j, old in enumerate(solve_batch(p, starts[q], method=methods)):
                b = 16 * q + j
                total += 1
                agree += old.status == new["status"][b] and (
                    not old.converged or same_orbit(old.point, new["X"][b].reshape(p.T, p.d, p.k)))
    assert agree >= 0.95 * total, (agree, total)


# --- Wilson intervals --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("k,n,low,high", [(81, 263, 0.2553, 0.3662), (15, 148, 0.0624, 0.1605),
                                         (0, 20, 0.0, 0.1611), (1, 29, 0.0061, 0.1718)])
def test_wilson_matches_published_values(k, n, low, high):
    """Newcombe (1998), Statistics in Medicine 17:857-872, Table II, method 3 (Wilson score, no correction)."""
    lo, hi = census_report.wilson(k, n)
    assert lo == pytest.approx(low, abs=5e-5) and hi == pytest.approx(high, abs=5e-5)


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 2000))
def test_wilson_zero_gives_the_bound_zero_implies(n):
    z2 = 1.959963984540054 ** 2
    lo, hi = census_report.wilson(0, n)
    assert lo == 0.0 and hi == pytest.approx(z2 / (n + z2), rel=1e-9)


@settings(max_examples=10, deadline=None)
@given(st.floats(0.05, 0.95), st.integers(20, 200), seeds)
def test_wilson_covers_on_simulated_data(p, n, seed):
    """Simulated binomial counts: the 95% interval covers the true p in about 95% of 400 draws (the Wilson
    interval's coverage stays within a few points of nominal for these p and n; Brown, Cai, DasGupta 2001)."""
    ks = np.random.default_rng(seed).binomial(n, p, size=400)
    cover = np.mean([lo <= p <= hi for lo, hi in (census_report.wilson(int(k), n) for k in ks)])
    assert 0.88 <= cover <= 0.995


# --- plan and grid -----------------------------------------------------------------------------------------------

def test_parse_grid_and_refusals():
    assert census.parse_grid("d=4,3;k=1;T=3") == [(3, 1, 3), (4, 1, 3)]
    assert len(census.parse_grid("default")) == 7 * 2 * 4
    for bad, match in [("d=3;d=4", "gives d twice"), ("x=3", "keys d, k, T"), ("d=a", "must be integers"),
                       ("d=0", "distinct positive"), ("T=1", "T values must be >= 2"), ("d=1;k=2", "no cell")]:
        with pytest.raises(ProblemError, match=match):
            census.parse_grid(bad)


def test_plan_shares_the_budget_and_skips_what_does_not_fit():
    opts = census.CensusOptions(instances=500, budget=1000.0, min_instances=20)
    cells = [(3, 1, 3), (10, 2, 3), (16, 2, 8)]
    rows = census.plan(cells, opts)
    cost = {c: census.instance_cost(*c, opts) for c in cells}
    used = sum(r["instances"] * r["seconds_per_instance"] for r in rows)
    assert used <= opts.budget
    assert rows[0]["instances"] == 500  # the cheap cell gets all it asks for
    assert rows[2]["instances"] == 0 and "too slow for the budget" in rows[2]["skipped"]
    assert cost[(16, 2, 8)] * 20 > opts.budget / 2  # it really could not fit 20 instances in its share
    assert census.plan(cells, opts) == rows  # deterministic


# --- records: serial, processes, Dask -----------------------------------------------------------------------------

def _specs(opts=TINY, grid="d=3,4;k=1;T=3"):
    return census.chunk_specs(census.plan(census.parse_grid(grid), opts), {}, opts)


@pytest.fixture(scope="module")
def serial_records():
    with threadpool_limits(limits=1):
        return store.canonical([r for recs in fanout.run_all(_specs(), workers=1, fn=census.run_chunk) for r in recs
                                ])


def _by_cell(records):
    return sorted(records, key=lambda r: (r["config"]["d"], r["index"]))


def test_records_are_complete(serial_records):
    assert len(serial_records) == 6
    for r in serial_records:
        assert sum(r["solves"].values()) == 8 and len(r["gd"]) == 2
        assert {g["init"] for g in r["gd"]} == {"small", "figure1"}
        assert all(g["outcome"] in census.OUTCOMES for g in r["gd"])
        assert all(c["class"] == "spurious_min" and "krawczyk" in c for c in r["critical_points"])
        q = Problem.from_dict(r["problem"])
        assert q.seed == census.census_seed(0, q.d, q.k, q.T, r["index"])


def test_records_same_serially_with_processes_and_on_dask(serial_records):
    from dask.distributed import Client, LocalCluster

    procs = store.canonical([r for recs in fanout.run_all(_specs(), workers=2, fn=census.run_chunk) for r in recs])
    assert _by_cell(procs) == _by_cell(serial_records)
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None) as cluster, \
            Client(cluster) as client:
        on_dask = store.canonical([r for recs in fanout.run_all(_specs(), scheduler=client, fn=census.run_chunk)
                                   for r in recs])
    assert _by_cell(on_dask) == _by_cell(serial_records)
    # chunks of several instances (one lock-step batch) give the same records as chunks of one
    big = census.CensusOptions(**{**TINY.__dict__, "chunk_seconds": 1e3})
    assert len(_specs(big)) == 2
    chunked = store.canonical([r for recs in fanout.run_all(_specs(big), workers=1, fn=census.run_chunk)
                               for r in recs])
    assert _by_cell(chunked) == _by_cell(serial_records)


# --- command line ------------------------------------------------------------------------------------------------

ARGS = ["census", "--grid", "d=3,4;k=1;T=3", "--instances", "3", "--starts", "8", "--gd-runs", "1",
        "--figure1-runs", "1", "--gd-steps", "3000", "--min-instances", "1", "--chunk-seconds", "0.001",
        "--workers", "1"]


def _cells(folder):
    return {name: store.canonical(store.load(str(folder / "cells" / name)))
            for name in sorted(os.listdir(folder / "cells"))}


@pytest.fixture(scope="module")
def full_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("census") / "full"
    assert main([*ARGS, "--out", str(out)]) == 0
    return out


def test_cli_writes_plan_cells_and_runs(full_run, serial_records):
    plan = json.loads((full_run / "plan.json").read_text())
    assert [r["instances"] for r in plan["plan"]] == [3, 3]
    cells = _cells(full_run)
    assert sorted(cells) == ["d3_k1_T3.jsonl", "d4_k1_T3.jsonl"]
    assert _by_cell(cells["d3_k1_T3.jsonl"] + cells["d4_k1_T3.jsonl"]) == _by_cell(serial_records)
    runs = [json.loads(x) for x in (full_run / "runs.jsonl").read_text().splitlines()]
    assert runs[0]["finished"] == 6 and not runs[0]["interrupted"]


def test_ctrl_c_saves_what_finished_and_resume_completes(full_run, tmp_path, monkeypatch, capsys):
    out = tmp_path / "c"
    real = census.run_chunk
    calls = []

    def interrupted_after_two(spec):
        if len(calls) == 2:
            raise KeyboardInterrupt
        calls.append(spec)
        return real(spec)
    monkeypatch.setattr(census, "run_chunk", interrupted_after_two)
    capsys.readouterr()
    assert main([*ARGS, "--out", str(out)]) == 130
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"interrupted; 2 instances saved to {out}")
    assert sum(len(store.load(str(out / "cells" / n))) for n in os.listdir(out / "cells")) == 2
    monkeypatch.setattr(census, "run_chunk", real)
    assert main([*ARGS, "--out", str(out)]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["finished"] == 4
    assert _cells(out) == _cells(full_run)


def test_resume_after_a_kill_mid_write_loses_nothing_finished(full_run, tmp_path, capsys):
    import shutil

    out = tmp_path / "k"
    shutil.copytree(full_run, out)
    f = out / "cells" / "d4_k1_T3.jsonl"
    lines = f.read_text().splitlines(keepends=True)
    f.write_text(lines[0] + lines[1][: len(lines[1]) // 2])  # killed while writing the second record
    capsys.readouterr()
    assert main([*ARGS, "--out", str(out)]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["finished"] == 2
    assert _cells(out) == _cells(full_run)


@pytest.mark.parametrize("extra,match", [
    (["--grid", "d=3;k=x"], "grid values of k must be integers"),
    (["--instances", "0"], "--instances: must be a positive integer (> 0), got 0"),
    (["--budget", "nan"], "--budget: must be a finite number of seconds > 0"),
    (["--scheduler", "tcp://h:1"], "either --workers"),
])
def test_cli_refuses_bad_options_before_any_work(extra, match, tmp_path, capsys):
    out = tmp_path / "bad"
    try:
        code = main([*ARGS, *extra, "--out", str(out)])
    except SystemExit as exc:  # argparse's own refusals
        code = exc.code
    assert code == 2
    assert match in capsys.readouterr().err
    assert not out.exists()


def test_cli_refuses_resuming_with_other_arguments(full_run, capsys):
    capsys.readouterr()
    assert main([*ARGS[:-2], "--starts", "9", "--workers", "1", "--out", str(full_run)]) == 2
    err = capsys.readouterr().err
    assert "other arguments" in err and "options" in err


def test_summary_counts_agree_with_the_records(full_run, tmp_path, capsys):
    res = tmp_path / "res"
    assert main(["census-summary", str(full_run), "--out", str(res), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    recs = {(r["config"]["d"], r["index"]): r for recs in _cells(full_run).values() for r in recs}
    for cell in out["cells"]:
        mine = [r for (d, _), r in recs.items() if d == cell["d"]]
        hit = sum(any(c["certified"] for c in r["critical_points"]) for r in mine)
        fr = cell["instances_with_certified_spurious"]
        assert (fr["k"], fr["n"]) == (hit, 3) and fr["low"] <= fr["fraction"] <= fr["high"]
        small = [g for r in mine for g in r["gd"] if g["init"] == "small"]
        assert cell["gd_small"]["runs"] == len(small) == 3
        heading = sum(g["outcome"] == "unconverged" and any(c["certified"] and c["point_index"] == g["point_index"]
                                                            for c in r["critical_points"])
                      for r in mine for g in r["gd"] if g["init"] == "small")
        assert cell["gd_small"]["unconverged_heading_to_certified"] == heading
        assert sum(cell["gd_small"]["outcomes"].values()) == 3
        assert cell["converged"] == sum(r["solves"].get("converged", 0) for r in mine)
    pooled = {(r["by"], r["value"]): r for r in out["pooled"]}
    assert set(pooled) == {("d", 3), ("d", 4), ("k", 1), ("T", 3), ("all", None)}
    for (by, value), r in pooled.items():
        group = [c for c in out["cells"] if by == "all" or c[by] == value]
        assert r["cells"] == len(group)
        for name, key in (("instances", "instances_with_certified_spurious"), ("gd_small", "gd_small"),
                          ("gd_figure1", "gd_figure1")):
            frs = [c[key] if name == "instances" else c[key]["spurious_certified"] for c in group]
            assert (r[name]["k"], r[name]["n"]) == (sum(f["k"] for f in frs), sum(f["n"] for f in frs))
            assert r[name]["low"] <= r[name]["fraction"] <= r[name]["high"]
    assert out["command"].startswith('python -m landscape census --grid "d=3,4;k=1;T=3" --instances 3')
    md = (res / "census.md").read_text()
    assert md.count("\n| 3 | 1 | 3 |") == 1 and md.count("\n| 4 | 1 | 3 |") == 1
    assert md.count("\n| T = 3 | 2 | ") == 1 and md.count("\n| all cells run | 2 | ") == 1
    for name in ("census_instances.png", "census_gd_small.png", "census_gd_figure1.png"):
        assert (res / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_summary_refuses_a_folder_that_is_not_a_census(tmp_path, capsys):
    assert main(["census-summary", str(tmp_path)]) == 2
    assert "not a census folder" in capsys.readouterr().err


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
    for argv in ([*ARGS, "--out", path], ["census-summary", str(full_run), "--out", path]):
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


# the in-process fuzz of `census` options, as tests/test_fuzz_cli.py does for `search` (stubbed work)
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
    import test_fuzz_cli

    return test_fuzz_cli


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
        with tempfile.TemporaryDirectory() as tmp, mock.patch.object(fanout, "run_all", fuzz._reached):
            open(os.path.join(tmp, "a_file"), "w").close()
            os.mkdir(os.path.join(tmp, "a_dir"))
            before = fuzz._listing(tmp)
            code, out, err = fuzz._call(lmain.main, ["census", *fuzz._argv(opts, tmp)])
            if code != "reached":
                assert fuzz._listing(tmp) == before
        if valid:
            assert code == (0 if "--dry-run" in names else "reached"), (opts, err)
        else:
            fuzz._assert_refused(code, out, err)
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
    """Kill ``python -m landscape census`` with SIGKILL once a record is written, resume it, compare."""
    import signal
    import subprocess
    import sys
    import time

    root = os.path.abspath(os.path.join(os.path.dirname(__file__), os.pardir, os.pardir))
    env = dict(os.environ, PYTHONPATH=root)
    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "landscape", *ARGS, "--out", str(out)]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def written():
        cells = out / "cells"
        return cells.is_dir() and any((cells / n).stat().st_size for n in os.listdir(cells))
    deadline = time.time() + 300
    while not written() and proc.poll() is None and time.time() < deadline:
        try:  # block on the child (not a blind sleep) until it writes its first record or exits
            proc.wait(timeout=0.02)
        except subprocess.TimeoutExpired:
            pass
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    finished = sum(len(store.load(str(out / "cells" / n))) for n in os.listdir(out / "cells")
                   if (out / "cells" / n).stat().st_size)
    if finished == 6:
        pytest.skip("the run finished before it could be killed (machine too fast for this test)")
    resumed = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads(resumed.stdout.strip().splitlines()[-1])["finished"] == 6 - finished
    assert _cells(out) == _cells(full_run)
