"""The offline bundle (``python -m llm bundle``) and the GPU validation script tried on the CPU (``--smoke``)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("peft")

from llm import bundle as bundle_mod  # noqa: E402

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), os.pardir, os.pardir))
SCRIPT = os.path.join(ROOT, "benchmarks", "gpu_validation.py")
ENV = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1",
           HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_DATASETS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")


@pytest.fixture(scope="module")
def smoke_bundle(tmp_path_factory):
    out = tmp_path_factory.mktemp("b") / "bundle"
    manifest = bundle_mod.make_bundle(str(out), preset="smoke",
                                      cache_dir=str(tmp_path_factory.mktemp("cache")))
    return str(out), manifest


def _check_bundle(path: str, manifest: dict, preset: str) -> None:
    from safetensors.torch import load_file
    from transformers import AutoModelForSequenceClassification

    from llm.data import load_tasks
    from llm.models import load_tokenizer, resolve_model
    from llm.tokens import tokenise

    assert manifest["preset"] == preset
    assert manifest["total_bytes"] <= 60 * 2**20
    sizes = sum(os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(path) for f in fs)
    assert sizes <= 60 * 2**20
    half = load_file(os.path.join(path, "model", "model.safetensors"))
    orig = load_file(os.path.join(resolve_model("minilm"), "model.safetensors"))
    assert set(half) == set(orig)
    for k, v in orig.items():
        if v.is_floating_point():
            assert half[k].dtype == torch.float16
            assert torch.equal(half[k], v.to(torch.float16)), k
    model = AutoModelForSequenceClassification.from_pretrained(os.path.join(path, "model"), num_labels=2)
    w = model.bert.embeddings.word_embeddings.weight
    assert w.dtype == torch.float32  # loaded back as float32 (config "dtype"), not left in float16
    assert torch.equal(w, orig["embeddings.word_embeddings.weight"].half().float())
    # the bundled task set and splits are those llm builds from the packages
    cfg = bundle_mod.bundle_config(preset)
    tasks = bundle_mod.load_bundle_tasks(path)
    fresh = load_tasks(cfg)
    assert tasks == fresh
    tok = load_tokenizer("minilm")
    want = tokenise([fresh.test[0]], tok, scorer=cfg.scorer, max_length=cfg.max_length,
                    candidate_length=cfg.candidate_length, split="heldout")
    got = bundle_mod.bundle_splits(path, cfg).tokenised([tasks.test[0]], "heldout")
    for field in ("ids", "types", "offsets"):
        a, b = getattr(got.store, field), getattr(want.store, field)
        assert (a is None and b is None) or torch.equal(a, b), field
    for field in ("candidates", "contexts", "labels", "tasks"):
        a, b = getattr(got, field), getattr(want, field)
        assert (a is None and b is None) or torch.equal(a, b), field
    with pytest.raises(ValueError, match="made for scorer"):
        bundle_mod.bundle_splits(path, cfg.replace(max_length=cfg.max_length + 1))


def test_smoke_bundle_matches_the_packages(smoke_bundle):
    path, manifest = smoke_bundle
    _check_bundle(path, manifest, "smoke")


def test_bundle_refuses_bad_input_and_detects_damage(smoke_bundle, tmp_path, capsys):
    import argparse

    path, _ = smoke_bundle
    f = tmp_path / "a_file"
    f.write_text("x")
    assert bundle_mod.main(argparse.Namespace(out=str(f), preset="smoke", cache_dir=None)) == 2
    err = capsys.readouterr().err
    assert err == f"python -m llm bundle: error: --out {str(f)!r} is an existing file; give a folder\n"
    with pytest.raises(ValueError, match="bundle preset must be one of"):
        bundle_mod.bundle_config("huge")
    import shutil

    damaged = tmp_path / "damaged"
    shutil.copytree(path, damaged)
    with open(damaged / "data" / "tasks.json", "a", encoding="utf-8") as fh:
        fh.write(" ")
    with pytest.raises(ValueError, match="differs from the manifest"):
        bundle_mod.verify_bundle(str(damaged))
    with pytest.raises(ValueError, match="not a bundle"):
        bundle_mod.verify_bundle(str(tmp_path))


@pytest.mark.slow
def test_gpu_bundle_fits_in_60_mib(tmp_path):
    out = tmp_path / "bundle"
    manifest = bundle_mod.make_bundle(str(out), preset="gpu", cache_dir=str(tmp_path / "cache"))
    _check_bundle(str(out), manifest, "gpu")
    assert len(manifest["tasks"]["retrain"]) == 8 and len(manifest["tasks"]["test"]) == 32


def _run(args, timeout):
    return subprocess.run([sys.executable, SCRIPT, *args], cwd=ROOT, env=ENV, capture_output=True, text=True,
                          timeout=timeout)


def test_gpu_validation_smoke_throughput_part(tmp_path):
    out = tmp_path / "out"
    p = _run(["--device", "cpu", "--smoke", "--out", str(out), "--skip", "table"], timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    res = json.loads((out / "gpu_validation.json").read_text())
    assert res["smoke"] is True and res["device"] == "cpu"
    assert {"torch", "transformers", "peft"} <= set(res["versions"])
    th = res["throughput"]
    assert [r["schedule"] for r in th["rows"]] == ["sr", "meta-batched", "meta-sequential"]
    assert all(r["examples_per_s"] > 0 for r in th["rows"])
    seq = next(r for r in th["rows"] if r["schedule"] == "meta-sequential")
    assert seq["optimizer_steps_per_round"] == th["sizes"]["tasks"] == 3
    assert th["ratios"]["batched_over_sequential_throughput"] > 0
    md = (out / "gpu_validation.md").read_text()
    assert "| meta-batched |" in md and "CPU smoke" in md
    assert sorted(os.listdir(out)) == ["gpu_validation.json", "gpu_validation.md"]


def test_gpu_validation_refuses_a_full_run_without_gpu(tmp_path):
    p = _run(["--device", "cpu", "--out", str(tmp_path)], timeout=120)
    assert p.returncode == 2 and "needs a GPU" in p.stderr


@pytest.mark.slow
def test_gpu_validation_smoke_end_to_end(tmp_path, smoke_bundle):
    path, _ = smoke_bundle
    out = tmp_path / "out"
    p = _run(["--device", "cpu", "--smoke", "--out", str(out), "--bundle", path], timeout=1200)
    assert p.returncode == 0, p.stderr[-3000:]
    assert sorted(os.listdir(out)) == ["accuracy.png", "gpu_validation.json", "gpu_validation.md", "table.json",
                                       "table.md"]
    res = json.loads((out / "gpu_validation.json").read_text())
    rows = res["table"]["rows"]
    assert [r["method"] for r in rows] == ["none", "none", "SR", "Meta-LoRA"]
    assert all(0.0 <= r["accuracy"] <= 1.0 for r in rows)
    assert res["table"]["bundle"]["preset"] == "smoke"
    assert "## Comparisons" in (out / "gpu_validation.md").read_text()
