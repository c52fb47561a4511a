"""``llm planted``: the cached forward against the full encoder, the planted teachers, the linear limit against
Eckart-Young (theory.finetune), seeds, the report's verdicts, and the command line (smoke preset schema, bad
input, Ctrl-C).

Most tests use a tiny random BERT (hidden 32, 2 blocks) saved to a temporary folder with the packaged MiniLM's
tokenizer, so they run in seconds; the teacher test and the smoke run use the packaged MiniLM itself.
"""

from __future__ import annotations

import copy
import json
import os
import re
import shutil

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

transformers = pytest.importorskip("transformers")
pytest.importorskip("peft")

from llm.planted import PlantedConfig, finetune_ranks, planted_preset, run_planted  # noqa: E402
from llm.planted_data import build_pool  # noqa: E402
from llm.planted_model import (  # noqa: E402
    STAGES,
    base_linear,
    build_cache,
    chosen_layers,
    forward_top,
    layer_output,
    load_encoder,
    masked_mse,
    plant,
    set_weights,
)
from llm.planted_train import finetune, retrain, weighted_spectrum  # noqa: E402

torch.set_num_threads(1)
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json")


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    """A random 2-block BERT (hidden 32) with the packaged MiniLM's tokenizer, as a local model folder."""
    from llm.models import resolve_model

    src = resolve_model("minilm")
    out = tmp_path_factory.mktemp("tiny-bert")
    torch.manual_seed(0)
    cfg = transformers.BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                  intermediate_size=64, max_position_embeddings=64)
    transformers.BertModel(cfg).save_pretrained(out)
    for name in TOKENIZER_FILES:
        if os.path.isfile(os.path.join(src, name)):
            shutil.copyfile(os.path.join(src, name), out / name)
    return str(out)


@pytest.fixture(scope="module")
def tiny(tiny_dir):
    from llm.models import load_tokenizer

    return load_encoder(tiny_dir), load_tokenizer(tiny_dir)


def _batch(tok, texts, length=16):
    return tok(texts, padding="max_length", max_length=length, truncation=True, return_tensors="pt")


TEXTS = ["hello how are you doing today", "i am fine thanks and you", "what did you do this weekend?",
         "we went hiking up the hill", "ok"]


@settings(max_examples=8, deadline=None)
@given(block=st.integers(0, 1), sub=st.sampled_from(sorted(STAGES)), flat=st.booleans())
def test_forward_top_equals_the_full_encoder(tiny, block, sub, flat):
    model, tok = tiny
    enc = _batch(tok, TEXTS)
    full = model(**enc).last_hidden_state
    names = chosen_layers(model, re.escape(f"encoder.layer.{block}.{sub}"))
    cache = build_cache(model, enc["input_ids"], enc["attention_mask"], names)
    assert (cache.block, cache.stage) == (block, STAGES[sub])
    mask = enc["attention_mask"].bool()
    if flat and cache.position_wise(len(model.encoder.layer)):
        out = forward_top(model, cache.flatten())[:, 0]
        torch.testing.assert_close(out, full[mask], rtol=0, atol=1e-5)
    else:
        torch.testing.assert_close(forward_top(model, cache)[mask], full[mask], rtol=0, atol=1e-5)


@settings(max_examples=15, deadline=None)
@given(T=st.integers(1, 5), k=st.integers(1, 3), shift=st.floats(0.01, 1.0), delta=st.floats(0.01, 1.0),
       shift_rank=st.sampled_from([0, 1, 3]), seed=st.integers(0, 2**31))
def test_plant_scales_ranks_and_nesting(T, k, shift, delta, shift_rank, seed):
    W0 = torch.randn(24, 20, generator=torch.Generator().manual_seed(1))

    def draw(n_tasks):
        return plant(W0, n_tasks=n_tasks, k=k, shift_scale=shift, delta_scale=delta, shift_rank=shift_rank,
                     generator=torch.Generator().manual_seed(seed))
    p = draw(T + 1)
    w0 = float(torch.linalg.norm(W0))
    assert float(torch.linalg.norm(p.S)) == pytest.approx(shift * w0, rel=1e-5)
    if shift_rank:
        assert int(torch.linalg.matrix_rank(p.S.double(), rtol=1e-4)) == min(shift_rank, 20)
    for t in range(T + 1):
        assert float(torch.linalg.norm(p.delta(t))) == pytest.approx(delta * w0, rel=1e-5)
        assert int(torch.linalg.matrix_rank(p.delta(t).double(), rtol=1e-4)) == k
        torch.testing.assert_close(p.teacher(t), W0 + p.S + p.delta(t))
    if (T + 2) * k <= 20:  # one more retraining task: same S, same new task, same first tasks
        q = draw(T + 2)
        torch.testing.assert_close(q.S, p.S, rtol=0, atol=0)
        torch.testing.assert_close(q.delta(T + 1), p.delta(T), rtol=0, atol=0)
        for t in range(T):
            torch.testing.assert_close(q.delta(t), p.delta(t), rtol=0, atol=0)


def test_teacher_equals_the_pretrained_model_when_perturbations_are_zero():
    from llm.models import load_tokenizer

    model, tok = load_encoder("minilm"), load_tokenizer("minilm")
    enc = _batch(tok, TEXTS)
    pretrained = model(**enc).last_hidden_state
    names = chosen_layers(model, r"encoder\.layer\.[45]\.(attention\.output|output)\.dense")
    cache = build_cache(model, enc["input_ids"], enc["attention_mask"], names)
    mask = enc["attention_mask"].bool()
    for scale, same in ((0.0, True), (0.05, False)):
        g = torch.Generator().manual_seed(0)
        planted = {n: plant(base_linear(model, n).weight, n_tasks=3, k=1, shift_scale=scale, delta_scale=scale,
                            shift_rank=0, generator=g) for n in names}
        for t in range(3):
            with set_weights(model, {n: p.teacher(t) for n, p in planted.items()}), torch.no_grad():
                teacher = forward_top(model, cache)
            gap = float((teacher - pretrained)[mask].abs().max())
            assert (gap == 0.0) if same else (gap > 1e-3), (scale, t, gap)
    for n in names:  # set_weights restored the pretrained weights
        torch.testing.assert_close(base_linear(model, n).weight, planted[n].W0, rtol=0, atol=0)


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 2**31), m=st.integers(3, 40), rank=st.integers(0, 5))
def test_weighted_spectrum_is_the_data_metric(seed, m, rank):
    """sum_i sigma_i(D Sigma^1/2)^2 = (1/M) sum_x ||D x||^2 and rank(D Sigma^1/2) = rank(D) for full-rank data."""
    g = torch.Generator().manual_seed(seed)
    d = 6
    D = torch.randn(5, rank, generator=g, dtype=torch.float64) @ torch.randn(rank, d, generator=g,
                                                                           dtype=torch.float64)
    X = torch.randn(m, d, generator=g, dtype=torch.float64) * torch.linspace(0.1, 3, d, dtype=torch.float64)
    sigma = X.T @ X / m
    sv = weighted_spectrum(D, sigma)
    assert float(sv.pow(2).sum()) == pytest.approx(float((X @ D.T).pow(2).sum(1).mean()), rel=1e-9, abs=1e-12)
    if m >= d:
        assert int((sv > 1e-8 * max(1.0, float(sv[0]))).sum()) == rank


def test_masked_mse_counts_only_real_tokens():
    pred, target = torch.zeros(2, 3, 4), torch.ones(2, 3, 4)
    target[0, 2] = 100.0  # a padding position
    mask = torch.tensor([[True, True, False], [True, False, False]])
    assert float(masked_mse(pred, target, mask)) == 1.0


def _linear_limit_data(model, tok, names, *, T, turns):
    pool = build_pool(model, tok, names, size=(T + 2) * turns, min_tokens=6, max_tokens=16, data_seed=0)
    groups = [pool.rows(np.arange(i * turns, (i + 1) * turns)) for i in range(T + 2)]
    return pool, groups


def test_linear_limit_sr_needs_rank_T_plus_1_times_k(tiny):
    """Target = the chosen layer's output: SR on T tasks, then LoRA of rank (T+1)k on W_SR fits the new task's
    layer exactly (Theorem 3.1 / Corollary 1), while rank k cannot beat the Eckart-Young bound, here > 0."""
    from theory.finetune import tail_energy

    model, tok = tiny
    model = copy.deepcopy(model).double()  # float64, so that "exact" can mean 1e-7 relative
    T, k = 3, 2
    names = chosen_layers(model, r"encoder\.layer\.1\.intermediate\.dense")  # input: a LayerNorm output
    pool, groups = _linear_limit_data(model, tok, names, T=T, turns=40)
    p = plant(base_linear(model, names[0]).weight, n_tasks=T + 1, k=k, shift_scale=0.3, delta_scale=0.3,
              shift_rank=0, generator=torch.Generator().manual_seed(3))

    def predict(m, c):
        return layer_output(m, c, names[0])

    def outputs(W, rows):
        c = pool.cache.take(rows)
        with set_weights(model, {names[0]: W}), torch.no_grad():
            return c, predict(model, c)
    pooled = torch.cat(groups[:T])
    cache = pool.cache.take(pooled)
    targets = torch.cat([outputs(p.teacher(t), groups[t])[1] for t in range(T)])
    task_of_row = torch.cat([torch.full((len(g),), t) for t, g in enumerate(groups[:T])])
    sr = retrain(model, names, cache, targets, task_of_row, method="sr", k=k, steps=300, lr=3e-2, seed=0,
                 predict=predict)
    train, test = outputs(p.teacher(T), groups[T]), outputs(p.teacher(T), groups[T + 1])
    x = train[0].tensors[0][train[0].token_mask].double()
    sigma = x.T @ x / x.shape[0]
    gap = weighted_spectrum(p.teacher(T).double() - sr.weights[names[0]].double(), sigma)
    d_out = p.W0.shape[0]
    assert tail_energy(gap.numpy(), (T + 1) * k) < 1e-9 * tail_energy(gap.numpy(), 0)  # rank (T+1)k, Thm 3.1
    floor_k = tail_energy(gap.numpy(), k) / d_out  # the best rank-k adapter's training loss (Eckart-Young)
    assert floor_k > 0.05 * tail_energy(gap.numpy(), 0) / d_out
    losses = {}
    for r, steps in ((k, 30), ((T + 1) * k, 1000)):
        cv = finetune(model, names, sr.weights, r=r, train=train, test=test, steps=steps, seed=1,
                      eval_every=steps, predict=predict)
        losses[r] = (cv.train_loss[-1], cv.test_loss)
    assert losses[k][0] >= floor_k * (1 - 1e-3)
    top_train, (top_start, *_, top_end) = losses[(T + 1) * k]
    assert top_train < 1e-5 * floor_k and top_end < 1e-4 * top_start  # exact fit, also on held-out inputs


def _tiny_cfg(tiny_dir, **kw):
    base = dict(model=tiny_dir, layers=r"encoder\.layer\.1\.attention\.output\.dense", settings=((2, 1), (3, 1)),
                seeds=(4,), retrain_turns=12, finetune_turns=6, n_sweep=(3,), n_sweep_setting=(2, 1),
                heldout_turns=6, min_tokens=6, retrain_steps=8, retrain_batch=16, finetune_steps=5,
                eval_every=2, eval_rows=64, threads=1)
    return PlantedConfig(**{**base, **kw})


def test_a_seed_reproduces_its_numbers_and_another_seed_differs(tiny_dir):
    a, b = (run_planted(_tiny_cfg(tiny_dir), log=lambda *x: None)["records"] for _ in range(2))
    assert json.dumps(a) == json.dumps(b)
    c = run_planted(_tiny_cfg(tiny_dir, seeds=(5,)), log=lambda *x: None)["records"]
    assert c[0]["finetune"][0]["test_loss"] != a[0]["finetune"][0]["test_loss"]
    assert c[0]["pooled_loss"] != a[0]["pooled_loss"]


def test_finetune_ranks():
    assert finetune_ranks(2, 1) == [1, 2, 3]
    assert finetune_ranks(5, 2) == [2, 4, 6, 12]


@pytest.mark.parametrize("change, word", [(dict(settings=((1, 1),)), "T must"), (dict(settings=((2, 0),)), "k must"),
                                          (dict(settings=((2, 1), (2, 1))), "distinct"),
                                          (dict(settings=(2, 1)), "pairs"), (dict(seeds=(1, 1)), "seeds"),
                                          (dict(threshold=2.0), "threshold"), (dict(target="x"), "target"),
                                          (dict(retrain_lr=float("nan")), "retrain_lr"),
                                          (dict(n_sweep_setting=(9, 9)), "n_sweep_setting")])
def test_config_refuses_bad_values(change, word):
    from llm.config import LLMError

    with pytest.raises(LLMError, match=word):
        planted_preset("default", **change)


# ------------------------------------------------------------------------------------------------ command line

def _cli(argv, capsys):
    from llm.__main__ import main

    try:
        rc = main(["planted", *argv])
    except SystemExit as exc:  # argparse refuses a malformed option by exiting
        rc = exc.code
    out = capsys.readouterr()
    return rc, out.out, out.err


@pytest.mark.parametrize("argv, word", [
    (["--T", "1"], "argument --T: must be an integer >= 2, got 1"),
    (["--k", "0", "2"], "argument --k: must be an integer >= 1, got 0"),
    (["--T", "x"], "argument --T: must be an integer, got 'x'"),
    (["--seeds", "-1"], "argument --seeds: must be an integer >= 0, got -1"),
    (["--seeds", "3", "3"], "seeds must be distinct"),
    (["--retrain-turns", "0"], "argument --retrain-turns: must be an integer >= 1, got 0"),
    (["--threads", "-2"], "argument --threads: must be an integer >= 0, got -2"),
    (["--n-sweep", "0"], "argument --n-sweep: must be an integer >= 1, got 0"),
    (["--threshold", "0"], "argument --threshold: must be a finite number > 0 and <= 1, got 0"),
    (["--threshold", "1.5"], "argument --threshold: must be a finite number > 0 and <= 1, got 1.5"),
    (["--shift-scale", "nan"], "argument --shift-scale: must be a finite number >= 0, got nan"),
    (["--delta-scale", "0"], "argument --delta-scale: must be a finite number > 0, got 0"),
    (["--delta-scale", "inf"], "argument --delta-scale: must be a finite number > 0, got inf"),
    (["--target", "x"], "argument --target: invalid choice: 'x'"),
    (["--preset", "big"], "argument --preset: invalid choice: 'big'"),
    (["--model", "./no/such/model"], "model path './no/such/model' does not exist"),
    (["--layers", "("], "not a valid regular expression"),
    (["--layers", r"pooler\.dense"], "matches no linear layer"),
    (["--T", "200", "--k", "2"], "(T+1) k = 402 exceeds min(d_out, d_in) = 384"),
    pytest.param(["--heldout-turns", "100000"], "100056 are needed (--heldout-turns 100000 + largest n 8 + "
                 "largest T 2 x --retrain-turns 24)", marks=pytest.mark.slow),  # tokenises every chitchat turn
])
def test_cli_bad_input_is_one_message_and_exit_2(argv, word, tmp_path, capsys):
    out = tmp_path / "out"
    rc, stdout, err = _cli(["--preset", "smoke", "--out", str(out), *argv], capsys)
    assert rc == 2 and word in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert err.startswith("python -m llm planted: error: ") and stdout == ""
    assert not out.exists()


def test_cli_refuses_an_out_that_is_a_file_before_any_work(tmp_path, capsys, monkeypatch):
    import llm.planted

    monkeypatch.setattr(llm.planted, "run_planted", lambda *a, **kw: pytest.fail("work started"))
    out = tmp_path / "results"
    out.write_text("keep me")
    rc, _, err = _cli(["--preset", "smoke", "--out", str(out)], capsys)
    assert rc == 2 and f"--out {str(out)!r} is an existing file" in err and len(err.strip().splitlines()) == 1
    assert out.read_text() == "keep me"


def _interrupt(*a, **kw):
    raise KeyboardInterrupt


def test_cli_ctrl_c_is_one_line_and_exit_130(tmp_path, capsys, monkeypatch):
    import llm.planted

    monkeypatch.setattr(llm.planted, "run_planted", _interrupt)
    rc, _, err = _cli(["--preset", "smoke", "--out", str(tmp_path / "o")], capsys)
    assert rc == 130 and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert "interrupted before writing; nothing was written" in err and not (tmp_path / "o").exists()


def test_cli_ctrl_c_while_writing_leaves_no_half_written_file(tmp_path, capsys, monkeypatch):
    """Ctrl-C while the second file is being renamed into place: one line, exit 130, the first file whole, no
    temporary file left."""
    import llm.atomic
    import llm.planted

    result = _synthetic_result(sr_k=[4, 5], meta_k=[1, 2], sr_top=[1, 1], meta_top=[1, 2],
                               sr_sv=[[3, 3, 2, 0.5]] * 2, meta_sv=[[0.5, 0.2, 0.1, 0.1]] * 2)
    monkeypatch.setattr(llm.planted, "run_planted", lambda *a, **kw: result)
    real_replace, done = os.replace, []

    def replace_then_interrupt(src, dst):
        if done:
            raise KeyboardInterrupt
        real_replace(src, dst)
        done.append(dst)
    monkeypatch.setattr(llm.atomic.os, "replace", replace_then_interrupt)
    out = tmp_path / "o"
    rc, _, err = _cli(["--preset", "smoke", "--out", str(out)], capsys)
    monkeypatch.undo()
    assert rc == 130 and len(err.strip().splitlines()) == 1 and "interrupted while writing" in err
    assert sorted(os.listdir(out)) == [os.path.basename(done[0])]
    header = (out / os.path.basename(done[0])).read_text().splitlines()[0]
    assert header.startswith("T,k,")


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    """``python -m llm planted --preset smoke --json`` on the packaged MiniLM, run once for the module."""
    import contextlib
    import io

    from llm.__main__ import main

    out = tmp_path_factory.mktemp("planted") / "smoke"
    buf, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(err):
        rc = main(["planted", "--preset", "smoke", "--out", str(out), "--json", "--no-progress"])
    return rc, buf.getvalue(), out


def test_smoke_run_prints_the_schema_and_writes_every_file(smoke_run):
    rc, stdout, out = smoke_run
    assert rc == 0
    doc = json.loads(stdout)
    assert set(doc) == {"rows", "spectra"}
    cfg = planted_preset("smoke")
    want = {(T, k, r, m) for T, k in cfg.settings for r in finetune_ranks(T, k)
            for m in ("sr", "meta-lora", "none")}
    assert {(r["T"], r["k"], r["finetune_rank"], r["method"]) for r in doc["rows"]} == want
    for r in doc["rows"]:
        assert set(r) == {"T", "k", "finetune_rank", "method", "test_loss", "seeds"}
        assert [s["seed"] for s in r["seeds"]] == list(cfg.seeds)
        per_seed = [s["test_loss"] for s in r["seeds"]]
        assert all(np.isfinite(v) and v > 0 for v in per_seed) and r["test_loss"] == np.median(per_seed)
    csv_rows = (out / "finetune_rank.csv").read_text().splitlines()
    for r in doc["rows"]:  # the printed numbers are the files' numbers
        for s in r["seeds"]:
            line = f"{r['T']},{r['k']},{cfg.finetune_turns},{r['finetune_rank']},{r['method']},{s['seed']},"
            assert sum(x.startswith(line) for x in csv_rows) == 1
            assert float(next(x for x in csv_rows if x.startswith(line)).split(",")[6]) == s["test_loss"]
    assert {s["method"] for s in doc["spectra"]} == {"sr", "meta-lora", "none", "linear-prediction"}
    for name in ("summary.json", "command.txt", "finetune_rank.csv", "finetune_curve.csv", "retrain_curve.csv",
                 "spectra.csv", "pooled_loss.csv", "rank.png", "steps.png", "spectra.png"):
        assert os.path.getsize(out / name) > 0, name
    summary = json.loads((out / "summary.json").read_text())
    assert {c["prediction"] for v in summary["verdicts"] for c in v["checks"]} == {
        "thm3.1", "thm3.2", "cor1-vs-cor3", "cor1-rank"}
    assert (out / "command.txt").read_text().startswith("python -m llm planted")
    assert not [f for f in os.listdir(out) if f.startswith(".tmp")]


def _synthetic_result(sr_k, meta_k, sr_top, meta_top, sr_sv, meta_sv, T=3, k=1):
    """Records of one setting over len(sr_k) seeds with the given final losses and singular values (tau = 1)."""
    recs = []
    for s in range(len(sr_k)):
        fits = []
        for r in finetune_ranks(T, k):
            for m in ("none", "sr", "meta-lora"):
                last = {("sr", k): sr_k[s], ("meta-lora", k): meta_k[s], ("sr", (T + 1) * k): sr_top[s],
                        ("meta-lora", (T + 1) * k): meta_top[s]}.get((m, r), 1.0)
                fits.append({"n": 8, "rank": r, "method": m, "steps": [0, 5], "test_loss": [2.0, last],
                             "train_loss": [1.0, 0.1]})
        spectra = [{"layer": "L", "method": m, "threshold": 1.0, "numerical_rank": int(np.sum(np.array(v[s]) > 1)),
                    "singular_values": v[s], "raw_singular_values": v[s], "bias_coefficient": 1.0}
                   for m, v in (("sr", sr_sv), ("meta-lora", meta_sv))]
        recs.append({"T": T, "k": k, "seed": s, "retrain": [], "finetune": fits, "spectra": spectra,
                     "pooled_loss": {"linear-prediction": 2.0, "sr": 1.0, "meta-lora": 0.5}})
    return {"config": {"finetune_turns": 8}, "records": recs}


def test_verdicts_follow_the_per_seed_numbers():
    from llm.planted_report import summarise

    good = _synthetic_result(sr_k=[4, 5, 6], meta_k=[1, 2, 2], sr_top=[1, 1, 2], meta_top=[1, 2, 2],
                             sr_sv=[[3, 3, 2, 0.5]] * 3, meta_sv=[[0.5, 0.2, 0.1, 0.1]] * 3)
    checks = {c["prediction"]: c for c in summarise(good)["verdicts"][0]["checks"]}
    assert all(c["held"] for c in checks.values())
    assert checks["cor1-vs-cor3"]["margin"]["ratio_sr_over_meta"] == {"median": 3.0, "min": 2.5, "max": 4.0}
    assert checks["thm3.1"]["margin"]["sigma_Tk_over_tau"]["median"] == 2.0
    assert checks["thm3.3"]["margin"]["sigma_1_over_tau"]["max"] == 0.5
    a = summarise(good)["absorption"][0]
    assert a["sr_loss_over_linear_prediction"]["median"] == 0.5
    # one seed against each prediction is enough to fail it
    bad = _synthetic_result(sr_k=[4, 5, 1], meta_k=[1, 2, 2], sr_top=[1, 1, 2], meta_top=[1, 2, 0.5],
                            sr_sv=[[3, 3, 2, 0.5], [3, 3, 2, 0.5], [3, 3, 0.9, 0.5]],
                            meta_sv=[[0.5, 0.2, 0.1, 0.1], [1.5, 0.2, 0.1, 0.1], [0.5, 0.2, 0.1, 0.1]])
    checks = {c["prediction"]: c for c in summarise(bad)["verdicts"][0]["checks"]}
    assert not any(c["held"] for c in checks.values())
    assert checks["thm3.1"]["margin"]["ranks"] == [3, 3, 2]
