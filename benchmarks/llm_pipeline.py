"""The data-pipeline part of ``benchmarks/llm_speed.py`` (``--pipeline``, on by default): tokenisation and
collation of ``n`` chitchat samples of 20 candidates, the vectorised collation of ``llm.tokens`` against a naive
per-element Python collation written here as the baseline, timed in the same process.
"""

from __future__ import annotations

import tempfile
import time

__all__ = ["pipeline", "naive_collate"]


def _pipeline_samples(n: int, seed: int):
    """``n`` samples (context of 3 turns, the true next turn + 19 turns of other conversations), from chitchat."""
    import numpy as np

    from llm.data import Sample, read_chitchat

    convs = [c for c in read_chitchat() if len(c.turns) >= 4]
    rng = np.random.default_rng(seed)
    pool = [(i, t.text) for i, c in enumerate(convs) for t in c.turns]
    out = []
    for _ in range(n):
        ci = int(rng.integers(len(convs)))
        conv = convs[ci]
        ti = int(rng.integers(3, len(conv.turns)))
        negs = []
        while len(negs) < 19:
            j, text = pool[int(rng.integers(len(pool)))]
            if j != ci and text not in negs and text != conv.turns[ti].text:
                negs.append(text)
        cands = [conv.turns[ti].text] + negs
        order = rng.permutation(20)
        out.append(Sample(" ".join(t.text for t in conv.turns[ti - 3:ti]), tuple(cands[k] for k in order),
                          int(np.flatnonzero(order == 0)[0]), conv.id))
    return out


def naive_collate(rows: list[list[int]], type_rows: list[list[int]] | None, pad_id: int) -> dict:
    """The baseline: pad each pair's token list in a Python loop, element by element."""
    import torch

    width = max(len(r) for r in rows)
    ids, mask, types = [], [], []
    for p, r in enumerate(rows):
        line, m, ty = [], [], []
        for j in range(width):
            if j < len(r):
                line.append(r[j])
                m.append(1)
                ty.append(type_rows[p][j] if type_rows is not None else 0)
            else:
                line.append(pad_id)
                m.append(0)
                ty.append(0)
        ids.append(line)
        mask.append(m)
        types.append(ty)
    out = {"input_ids": torch.tensor(ids), "attention_mask": torch.tensor(mask)}
    if type_rows is not None:
        out["token_type_ids"] = torch.tensor(types)
    return out


def pipeline(args) -> dict:
    import torch

    from llm.data import Task
    from llm.models import load_tokenizer
    from llm.tokens import tokenise

    n = args.pipeline_samples
    samples = _pipeline_samples(n, args.seed)
    task = Task("bench", tuple(samples), ())
    tok = load_tokenizer("minilm")
    kw = dict(scorer="cross", max_length=args.pipeline_length, candidate_length=args.pipeline_length // 2,
              split="train")
    with tempfile.TemporaryDirectory() as cache:
        t0 = time.perf_counter()
        split = tokenise([task], tok, cache_dir=cache, **kw)
        t_tok = time.perf_counter() - t0
        t0 = time.perf_counter()
        tokenise([task], tok, cache_dir=cache, **kw)
        t_tok_warm = time.perf_counter() - t0
    pairs = n * 20
    bs = args.pipeline_batch
    order = torch.arange(n)
    store = split.store
    t0 = time.perf_counter()
    vec = None
    for i in range(0, n, bs):
        b = split.batch(order[i:i + bs])
        vec = store.inputs(b["seqs"][b["cand"].reshape(-1)])
    t_vec = time.perf_counter() - t0
    # the naive collation starts from Python lists of token ids per pair (what a per-example Dataset yields)
    ids_list = store.ids.tolist()
    types_list = store.types.tolist() if store.types is not None else None
    offs = store.offsets.tolist()
    seq_of = split.candidates.reshape(-1).tolist()
    rows = [ids_list[offs[s]:offs[s + 1]] for s in seq_of]
    type_rows = [types_list[offs[s]:offs[s + 1]] for s in seq_of] if types_list is not None else None
    t0 = time.perf_counter()
    naive = None
    for i in range(0, n, bs):
        sl = slice(i * 20, min(i + bs, n) * 20)
        naive = naive_collate(rows[sl], type_rows[sl] if type_rows else None, store.pad_id)
    t_naive = time.perf_counter() - t0
    last = order[(n - 1) // bs * bs:]
    same = bool(torch.equal(vec["input_ids"], naive["input_ids"])
                and torch.equal(vec["attention_mask"], naive["attention_mask"]))
    assert len(last) * 20 == vec["input_ids"].shape[0]
    return {"samples": n, "candidates": 20, "pairs": pairs, "tokens_per_pair_max": args.pipeline_length,
            "batch_samples": bs, "collation": "llm.tokens.Split.batch + SequenceStore.inputs",
            "tokenise_s": t_tok, "tokenise_cached_s": t_tok_warm, "tokenise_examples_per_s": pairs / t_tok,
            "collate_vectorised_examples_per_s": pairs / t_vec, "collate_naive_examples_per_s": pairs / t_naive,
            "collate_speedup": t_naive / t_vec, "collate_outputs_equal": same,
            "pipeline_examples_per_s": pairs / (t_tok + t_vec),
            "pipeline_naive_examples_per_s": pairs / (t_tok + t_naive)}
