"""Tokenisation (truncation, content-keyed cache) and batches of ``llm.tokens``."""

from __future__ import annotations

import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

torch = pytest.importorskip("torch")

from llm.config import preset  # noqa: E402
from llm.data import Sample, Task, read_chitchat  # noqa: E402
from llm.tasks import build_tasks  # noqa: E402
from llm.tokens import tokenise, tokenizer_fingerprint  # noqa: E402
from test_llm_support import write_chitchat  # noqa: E402

CFG = preset("smoke").replace(n_retrain_tasks=3, n_test_tasks=2, retrain_samples=6, test_train_samples=3,
                              validation_samples=2, heldout_samples=3, per_conversation=2)
LONG_CONTEXT = " ".join(f"oldword{i}" for i in range(80)) + " the newest words"
LONG_CANDIDATE = "firstword " + " ".join(f"filler{i}" for i in range(60))


@pytest.fixture(scope="module")
def tokenizer():
    from llm.models import load_tokenizer

    return load_tokenizer("minilm")


def _task(context=LONG_CONTEXT, true=LONG_CANDIDATE) -> Task:
    cands = tuple([true] + [f"negative number {i}" for i in range(19)])
    return Task("t", (Sample(context, cands, 0, "c0"),), (), ())


def _seq(split, s: int) -> list[int]:
    st_ = split.store
    return st_.ids[st_.offsets[s]:st_.offsets[s + 1]].tolist()


@pytest.mark.parametrize("max_length, cap", [(32, 8), (48, 16), (24, 12)])
def test_cross_pair_keeps_the_candidates_first_tokens_and_cuts_the_oldest_context(tokenizer, tmp_path, max_length,
                                                                                  cap):
    split = tokenise([_task()], tokenizer, scorer="cross", max_length=max_length, candidate_length=cap,
                     cache_dir=str(tmp_path))
    ids = _seq(split, int(split.candidates[0, 0]))
    assert len(ids) == max_length
    first = tokenizer("firstword", add_special_tokens=False)["input_ids"]
    cand_part = ids[ids.index(tokenizer.sep_token_id) + 1:-1]  # [CLS] context [SEP] candidate [SEP]
    assert cand_part[:len(first)] == first and len(cand_part) == cap
    newest = tokenizer("the newest words", add_special_tokens=False)["input_ids"]
    ctx_part = ids[1:ids.index(tokenizer.sep_token_id)]
    assert ctx_part[-len(newest):] == newest  # the end of the context, nearest the reply, survives
    assert tokenizer("oldword0", add_special_tokens=False)["input_ids"][0] not in ctx_part[:2]


def test_bi_sequences_keep_context_end_and_candidate_start(tokenizer, tmp_path):
    split = tokenise([_task()], tokenizer, scorer="bi", max_length=20, candidate_length=6, cache_dir=str(tmp_path))
    ctx = _seq(split, int(split.contexts[0]))
    cand = _seq(split, int(split.candidates[0, 0]))
    assert len(ctx) == 20 and len(cand) == 8  # 6 tokens + [CLS] + [SEP]
    assert ctx[-4:-1] == tokenizer("the newest words", add_special_tokens=False)["input_ids"]
    assert cand[1:7] == tokenizer(LONG_CANDIDATE, add_special_tokens=False)["input_ids"][:6]
    short = _seq(split, int(split.candidates[0, 1]))
    assert short == tokenizer("negative number 0")["input_ids"]  # short texts are untouched


def test_cache_is_keyed_on_the_tokenizers_content_not_its_path(tokenizer, tmp_path):
    """A different tokenizer saved at the same path must not reuse the first one's token ids."""
    from transformers import AutoTokenizer

    path = str(tmp_path / "tok")
    tokenizer.save_pretrained(path)
    first = AutoTokenizer.from_pretrained(path)
    cache = str(tmp_path / "cache")
    a = tokenise([_task("hello there", "general kenobi")], first, scorer="bi", max_length=16, candidate_length=8,
                 cache_dir=cache)
    again = tokenise([_task("hello there", "general kenobi")], AutoTokenizer.from_pretrained(path), scorer="bi",
                     max_length=16, candidate_length=8, cache_dir=cache)
    assert torch.equal(a.store.ids, again.store.ids)
    files = set(os.listdir(cache))
    other = AutoTokenizer.from_pretrained(path)
    other.add_tokens(["kenobi"])  # now tokenises differently; saved at the same path
    other.save_pretrained(path)
    b = tokenise([_task("hello there", "general kenobi")], AutoTokenizer.from_pretrained(path), scorer="bi",
                 max_length=16, candidate_length=8, cache_dir=cache)
    assert set(os.listdir(cache)) > files  # a new cache file, not the stale one
    assert not torch.equal(a.store.ids, b.store.ids)
    assert tokenizer_fingerprint(first) != tokenizer_fingerprint(AutoTokenizer.from_pretrained(path))


@pytest.fixture(scope="module")
def tasks(tmp_path_factory):
    path = write_chitchat(str(tmp_path_factory.mktemp("cc") / "c.json"), n_speakers=8, n_convs=80)
    return build_tasks(read_chitchat(path), CFG)


@pytest.mark.parametrize("scorer", ["bi", "cross"])
def test_every_candidate_is_the_tokenised_text(tokenizer, tasks, tmp_path, scorer):
    split = tokenise(tasks.retrain, tokenizer, scorer=scorer, max_length=64, candidate_length=24,
                     cache_dir=str(tmp_path))
    samples = [s for t in tasks.retrain for s in t.train]
    assert len(split) == len(samples) and split.tasks.tolist() == [i for i, t in enumerate(tasks.retrain)
                                                                    for _ in t.train]
    for i, s in enumerate(samples[:5]):
        assert int(split.labels[i]) == s.label
        for c in (0, 7, 19):
            got = _seq(split, int(split.candidates[i, c]))
            ref = (tokenizer(s.candidates[c])["input_ids"] if scorer == "bi"
                   else tokenizer(s.context, s.candidates[c])["input_ids"])
            assert got == ref  # short enough: nothing is cut


@settings(max_examples=25, deadline=None)
@given(data=st.data())
def test_batch_runs_each_distinct_sequence_once_and_points_back_exactly(tokenizer, tasks, tmp_path_factory, data):
    scorer = data.draw(st.sampled_from(["bi", "cross"]))
    split = tokenise(tasks.retrain, tokenizer, scorer=scorer, max_length=32, candidate_length=12,
                     cache_dir=str(tmp_path_factory.getbasetemp() / "cache"))
    idx = data.draw(st.lists(st.integers(0, len(split) - 1), min_size=1, max_size=6))
    neg = data.draw(st.one_of(st.none(), st.integers(0, 19)))
    b = split.batch(idx, negatives=neg, generator=torch.Generator().manual_seed(data.draw(st.integers(0, 99))))
    k = 20 if neg is None else neg + 1
    assert b["cand"].shape == (len(idx), k)
    pairs = list(zip(b["seqs"].tolist(), b["seq_tasks"].tolist()))
    assert len(set(pairs)) == len(pairs)  # each (sequence, task) once
    for r, i in enumerate(idx):
        own = split.candidates[i].tolist()
        got = [pairs[j] for j in b["cand"][r].tolist()]
        assert all(t == int(split.tasks[i]) for _, t in got)
        assert all(s in own for s, _ in got) and len({s for s, _ in got}) == k
        assert got[int(b["labels"][r])][0] == own[int(split.labels[i])]
        if scorer == "bi":
            assert pairs[int(b["ctx"][r])] == (int(split.contexts[i]), int(split.tasks[i]))
            assert not b["is_candidate"][b["ctx"][r]]
    inputs = split.store.inputs(b["seqs"])
    for j, s in enumerate(b["seqs"].tolist()):
        n = int(inputs["attention_mask"][j].sum())
        assert inputs["input_ids"][j, :n].tolist() == _seq(split, s)
        assert inputs["input_ids"][j, n:].eq(split.store.pad_id).all()


def test_a_hand_built_bi_split_batches_each_sequence_once_with_exact_pointers():
    from llm.tokens import SequenceStore, Split

    # sequences: 0 = context of sample 0, 1 and 2 = candidates shared by both samples, 3 = context of sample 1
    store = SequenceStore(torch.tensor([5, 6, 7, 8]), None, torch.tensor([0, 1, 2, 3, 4]), 0)
    split = Split(store, torch.tensor([[1, 2], [2, 1]]), torch.tensor([0, 3]), torch.tensor([1, 0]),
                  torch.tensor([0, 0]))
    assert (split.scorer, split.n_candidates, len(split)) == ("bi", 2, 2)
    b = split.batch([0, 1])
    seqs = b["seqs"]
    assert sorted(seqs.tolist()) == [0, 1, 2, 3]  # the shared candidates are encoded once
    assert seqs[b["cand"]].tolist() == [[1, 2], [2, 1]] and seqs[b["ctx"]].tolist() == [0, 3]
    assert b["is_candidate"].tolist() == [s in (1, 2) for s in seqs.tolist()]
    assert b["labels"].tolist() == [1, 0] and b["tasks"].tolist() == [0, 0]
