"""The scorers of ``llm.models`` (bi and cross), the frozen prefix, evaluation and epoch selection of
``llm.loop`` on tiny random BERT / RoBERTa models."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from llm.config import ModelError, preset  # noqa: E402
from llm.finetune import build_finetune_model  # noqa: E402
from llm.loop import evaluate, make_accelerator, select_epoch  # noqa: E402
from llm.models import load_hf_model, load_tokenizer  # noqa: E402
from llm.prefix import SplitCache, split_encoder  # noqa: E402
from llm.train import build_retrain_model  # noqa: E402
from test_llm_support import (T, chitchat_file, retrain_split, small_cfg, tasks, tiny_bert,  # noqa: E402,F401
                              tiny_roberta)



@pytest.mark.parametrize("kind", ["bert", "roberta"])
def test_upper_part_on_cached_lower_outputs_equals_the_full_model(kind, request):
    """Same padding: the split encoder reproduces the full model exactly (hidden states and pooler)."""
    from llm.prefix import encode_lower
    from llm.tokens import SequenceStore

    hf = load_hf_model(request.getfixturevalue(f"tiny_{kind}")).eval()
    ids = [torch.randint(1000, 2000, (n,)) for n in (7, 12, 5, 9)]
    offsets = torch.tensor([0] + torch.cumsum(torch.tensor([len(x) for x in ids]), 0).tolist())
    store = SequenceStore(torch.cat(ids), None, offsets, 0)
    lower, upper = split_encoder(hf.base_model, 1)
    hidden = encode_lower(lower, store, batch=4)  # one batch: the padding of the full run
    with torch.no_grad():
        full = hf.base_model(**store.inputs(torch.arange(4)))
        part = upper(**hidden.inputs(torch.arange(4)))
    m = store.inputs(torch.arange(4))["attention_mask"].bool()
    assert torch.equal(full.last_hidden_state[m], part.last_hidden_state[m])
    if full.pooler_output is not None:
        assert torch.equal(full.pooler_output, part.pooler_output)
    n = sum(p.numel() for p in hf.base_model.parameters())
    assert n == sum(p.numel() for p in lower.parameters()) + sum(p.numel() for p in upper.parameters())
    with pytest.raises(ModelError, match="freeze_layers must lie in"):
        split_encoder(hf.base_model, 2)


def test_bi_scores_are_cosines_of_mean_pooled_embeddings_over_temperature(tasks):
    """The packaged MiniLM as a bi-encoder: the scorer's scores equal a direct computation with transformers."""
    from transformers import AutoModel

    from llm.models import resolve_model

    cfg = preset("smoke").replace(freeze_layers=2, max_length=32, candidate_length=16)
    model = build_finetune_model(cfg, "minilm", rank=None, seed=0)
    tok = load_tokenizer("minilm")
    split = SplitCache(cfg, tok).get(tasks.test[:1], "heldout", model.lower)
    b = split.batch(torch.arange(len(split)))
    with torch.no_grad():
        feats = model.encode(split.store.inputs(b["seqs"]), b["seq_tasks"], 0)
        scores = model.sample_scores(feats, b)
    ref_model = AutoModel.from_pretrained(resolve_model("minilm")).eval()

    def embed(texts, side, n):
        tok.truncation_side = side
        e = tok(texts, padding=True, truncation=True, max_length=n, return_tensors="pt")
        with torch.no_grad():
            h = ref_model(**e).last_hidden_state
        m = e["attention_mask"].unsqueeze(-1).float()
        return torch.nn.functional.normalize((h * m).sum(1) / m.sum(1), dim=-1)

    for i, s in enumerate(tasks.test[0].heldout):
        direct = embed(list(s.candidates), "right", 18) @ embed([s.context], "left", 32)[0] / 0.05
        assert torch.allclose(scores[i], direct, atol=2e-4), (scores[i] - direct).abs().max()
    tok.truncation_side = "right"


def test_in_batch_loss_is_softmax_over_every_same_task_candidate(tiny_bert, tasks):
    cfg = small_cfg(tiny_bert, scorer="bi", freeze_layers=1)
    model = build_retrain_model(cfg, "sr", None, T, seed=0)
    split = retrain_split(cfg, tasks, model)
    idx = torch.tensor([int(i) for t in (0, 1) for i in torch.nonzero(split.tasks == t).flatten()[:2]])
    b = split.batch(idx, negatives=2, generator=torch.Generator().manual_seed(0))
    feats = model(split.store.inputs(b["seqs"]), b["seq_tasks"], None)
    loss = model.loss(feats, b, in_batch=True)
    ref = 0.0
    for r in range(len(idx)):
        same = [j for j in range(len(b["seqs"])) if b["is_candidate"][j] and b["seq_tasks"][j] == b["tasks"][r]]
        logits = torch.stack([feats[b["ctx"][r]] @ feats[j] for j in same]) / cfg.temperature
        target = same.index(int(b["cand"][r, b["labels"][r]]))
        ref = ref + torch.logsumexp(logits, 0) - logits[target]
        assert len(same) >= 3 + 2  # its own 3 candidates and the other same-task sample's
    assert torch.allclose(loss, ref / len(idx), atol=1e-5)


@pytest.mark.parametrize("scorer", ["bi", "cross"])
def test_evaluate_equals_scoring_each_sample_alone(tiny_bert, tasks, scorer):
    cfg = small_cfg(tiny_bert, scorer=scorer, freeze_layers=1, eval_batch=3)
    model = build_retrain_model(cfg, "meta-lora", 4, T, seed=0, schedule="sequential").eval()
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.5)
    split = retrain_split(cfg, tasks, model, "validation")
    got = evaluate(model, split, accelerator=make_accelerator("cpu"), batch=cfg.eval_batch)
    for i in range(len(split)):
        b = split.batch(torch.tensor([i]))
        with torch.no_grad():
            scores = model.sample_scores(model.encode(split.store.inputs(b["seqs"]), b["seq_tasks"],
                                                      int(split.tasks[i])), b)
        assert int(got[i]) == int(scores.argmax() == split.labels[i])


def test_select_epoch():
    assert select_epoch("validation", [0.2, 0.5, 0.5], [0.9, 0.1, 0.1], 3) == 2  # ties: the earlier epoch
    assert select_epoch("heldout", [0.2, 0.5, 0.5], [0.9, 0.1, 0.1], 3) == 1
    assert select_epoch("last", [0.2, 0.5], [0.9, 0.1], 2) == 2
    assert select_epoch("last", [0.2, 0.5], [], 2) == 2
    assert select_epoch("validation", [], [0.3, 0.4], 2) == 2
    assert select_epoch("validation", [float("nan")] * 3, [], 3) == 3
