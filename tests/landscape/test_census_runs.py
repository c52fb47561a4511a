"""Census records: the same serially, in processes and on a local Dask cluster; the command line writes the plan,
the cells and the runs log, resumes after Ctrl-C or a kill losing nothing finished, and its summary agrees."""

from __future__ import annotations

import json
import os

import pytest

from landscape import census, fanout, store
from landscape.__main__ import main
from theory.problem import Problem

from strategies import strict_loads

from census_support import ARGS, TINY, by_cell as _by_cell, cells_of as _cells, specs as _specs

pytestmark = pytest.mark.usefixtures("one_thread")


# --- records: serial, processes, Dask -----------------------------------------------------------------------------

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

def test_cli_writes_plan_cells_and_runs(full_run, serial_records):
    plan = strict_loads((full_run / "plan.json").read_text())  # every file of the folder is strict JSON
    assert [r["instances"] for r in plan["plan"]] == [3, 3]
    cells = _cells(full_run)
    assert sorted(cells) == ["d3_k1_T3.jsonl", "d4_k1_T3.jsonl"]
    assert _by_cell(cells["d3_k1_T3.jsonl"] + cells["d4_k1_T3.jsonl"]) == _by_cell(serial_records)
    runs = [strict_loads(x) for x in (full_run / "runs.jsonl").read_text().splitlines()]
    for name in cells:
        assert [strict_loads(x) for x in (full_run / "cells" / name).read_text().splitlines()]
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
    out = strict_loads(capsys.readouterr().out)
    assert strict_loads((res / "census.json").read_text()) == out
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
    assert f"{str(tmp_path)!r} is not a census folder (no plan.json); make one with" in capsys.readouterr().err
    (tmp_path / "f.jsonl").write_text("{}\n")
    assert main(["census-summary", str(tmp_path / "f.jsonl")]) == 2
    assert f"{str(tmp_path / 'f.jsonl')!r} is a file, not a census folder; make one with" in capsys.readouterr().err


def test_heat_map_titles_fit_a_one_cell_grid(full_run, tmp_path, capsys):
    """Each heat map's title lies inside its figure, also for a grid of one cell (2.75 inches wide), where the
    titles on one line are wider than the figure."""
    from landscape.census_cli import _HEAT_MAPS
    from landscape.census_report import heat_map_figure

    assert main(["census-summary", str(full_run), "--out", str(tmp_path / "res"), "--json"]) == 0
    one = strict_loads(capsys.readouterr().out)["cells"][:1]
    for key, _, title in _HEAT_MAPS:
        fig = heat_map_figure(one, key, title)
        renderer = fig.canvas.get_renderer()
        fig.draw(renderer)
        box, page = fig._suptitle.get_window_extent(renderer), fig.bbox
        assert page.x0 <= box.x0 and box.x1 <= page.x1 and box.y1 <= page.y1, (title, box, page)
        one_line = fig.text(0, 0, title, fontsize=9).get_window_extent(renderer)
        assert one_line.width > page.width  # the unwrapped title would not fit
