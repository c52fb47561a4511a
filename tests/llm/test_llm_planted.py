"""``llm planted``: the cached forward against the full encoder, the planted teachers, the linear limit against
Eckart-Young (theory.finetune) and seeds (the command line and the report's verdicts:
``test_llm_planted_cli.py``).

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
    layer_position,
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
    assert float(torch.linalg.norm(p.S)) == pytest.approx(shift * w0, rel=1e-5, abs=0)
    if shift_rank:
        assert int(torch.linalg.matrix_rank(p.S.double(), rtol=1e-4)) == min(shift_rank, 20)
    for t in range(T + 1):
        assert float(torch.linalg.norm(p.delta(t))) == pytest.approx(delta * w0, rel=1e-5, abs=0)
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
    # the mean runs over the features too: (1^2 + 3^2) / 2 on the one real token
    one = torch.tensor([[[1.0, 3.0], [5.0, 5.0]]])
    assert float(masked_mse(torch.zeros(1, 2, 2), one, torch.tensor([[True, False]]))) == 5.0


def test_layer_position_of_every_stage_and_refusal_of_other_modules():
    from llm.config import LLMError

    subs = ["attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense",
            "intermediate.dense", "output.dense"]
    assert [layer_position(f"encoder.layer.5.{s}") for s in subs] == [(5, 0)] * 3 + [(5, 1), (5, 2), (5, 3)]
    for bad in ("pooler.dense", "encoder.layer.0.attention.output.LayerNorm", "encoder.layer.x.output.dense"):
        with pytest.raises(LLMError, match=f"layer '{re.escape(bad)}' is not a linear layer of a transformer block"):
            layer_position(bad)


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


def test_preset_keeps_unset_overrides_and_to_dict_is_json():
    """A ``None`` override (an option not given on the command line) keeps the preset's value; tuples become lists."""
    cfg = planted_preset("smoke", seeds=None, retrain_steps=5)
    assert cfg.seeds == (0, 1) and cfg.retrain_steps == 5
    d = cfg.to_dict()
    assert d["settings"] == [[2, 1]] and d["n_sweep_setting"] == [3, 1] and d["seeds"] == [0, 1]
    assert json.loads(json.dumps(d)) == d


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
