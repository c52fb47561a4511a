"""Tokenisation of task splits for the two scorers, and the batches the training loops consume.

Truncation never cuts the start of a candidate (the thing being scored):

* ``bi``: every distinct context and every distinct candidate is one sequence ``[CLS] text [SEP]``. A context keeps
  its last ``max_length`` tokens (its oldest words are cut first); a candidate keeps its first
  ``candidate_length`` tokens.
* ``cross``: every (context, candidate) pair is one sequence ``[CLS] context [SEP] candidate [SEP]`` (RoBERTa:
  ``<s> context </s></s> candidate </s>``) of at most ``max_length`` tokens: the candidate is first cut to its
  first ``candidate_length`` tokens, then only the context loses tokens, oldest first, until the pair fits.

Tokenising goes through ``datasets.Dataset.map`` with a cache file whose name is a hash of everything that
determines the output: the tokenizer's own files (not its name or path), the truncation rule and every text.

A :class:`Split` holds the samples of one or more tasks as indices into a :class:`SequenceStore` (token ids) or,
with frozen lower layers, an :class:`llm.prefix.HiddenStore` (their outputs); :meth:`Split.batch` picks the
candidates of a batch and the distinct sequences to run.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import tempfile
from dataclasses import dataclass

import numpy as np

from .config import LLMError

__all__ = ["SequenceStore", "Split", "tokenise", "tokenizer_fingerprint", "default_cache_dir"]

# Keys of a saved tokenizer_config.json that are call-time state, not what the tokenizer computes.
_VOLATILE = ("truncation_side", "padding_side", "is_local", "local_files_only", "name_or_path", "_name_or_path",
             "max_length", "stride", "truncation_strategy", "pad_to_multiple_of")


def default_cache_dir() -> str:
    """``$METALORA_CACHE`` or ``~/.cache/metalora/llm``: where tokenised splits are cached.

    Returns
    -------
    str
        The folder (not created here).
    """
    return os.environ.get("METALORA_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "metalora", "llm"))


def tokenizer_fingerprint(tokenizer) -> str:
    """sha256 of the files ``tokenizer.save_pretrained`` writes (call-time settings removed), memoised on the
    object: two tokenizers that tokenise alike get the same fingerprint wherever they were loaded from, and a
    different tokenizer saved at the same path gets another one.

    Returns
    -------
    str
        64 hexadecimal digits.
    """
    cached = getattr(tokenizer, "_metalora_fingerprint", None)
    if cached is not None:
        return cached
    h = hashlib.sha256(type(tokenizer).__name__.encode())
    with tempfile.TemporaryDirectory() as d:
        tokenizer.save_pretrained(d)
        for name in sorted(os.listdir(d)):
            with open(os.path.join(d, name), "rb") as fh:
                data = fh.read()
            if name.endswith(".json"):
                try:
                    obj = json.loads(data)
                except ValueError:
                    obj = None
                if isinstance(obj, dict):
                    data = json.dumps({k: v for k, v in obj.items() if k not in _VOLATILE}, sort_keys=True).encode()
            h.update(name.encode() + b"\0" + hashlib.sha256(data).digest())
    fp = h.hexdigest()
    try:
        tokenizer._metalora_fingerprint = fp
    except AttributeError:  # a tokenizer that refuses new attributes: recompute next time
        pass
    return fp


@dataclass(frozen=True)
class SequenceStore:
    """``S`` token sequences, ragged: sequence ``s`` is ``ids[offsets[s]:offsets[s+1]]`` (``types`` likewise).

    Attributes
    ----------
    ids : torch.Tensor
        ``(total,)`` int64 token ids, special tokens included.
    types : torch.Tensor or None
        ``(total,)`` int64 token type ids (BERT), or ``None``.
    offsets : torch.Tensor
        ``(S + 1,)`` int64, ``offsets[0] = 0``.
    pad_id : int
        The tokenizer's padding id.

    >>> import torch
    >>> store = SequenceStore(torch.tensor([101, 7, 102, 101, 8, 9, 102]), None, torch.tensor([0, 3, 7]), 0)
    >>> store.lengths().tolist(), store.inputs([1, 0])["input_ids"].tolist()
    ([3, 4], [[101, 8, 9, 102], [101, 7, 102, 0]])
    """

    ids: "torch.Tensor"  # (total,) int64
    types: "torch.Tensor | None"  # (total,) int64 or None
    offsets: "torch.Tensor"  # (S + 1,) int64
    pad_id: int

    def __len__(self) -> int:
        return int(self.offsets.shape[0]) - 1

    def lengths(self) -> "torch.Tensor":
        """Tokens of every sequence.

        Returns
        -------
        torch.Tensor
            ``(S,)`` int64, ``offsets[1:] - offsets[:-1]``.
        """
        return self.offsets[1:] - self.offsets[:-1]

    def inputs(self, seqs) -> dict:
        """Encoder inputs of sequences ``seqs`` (P,): ``input_ids``, ``attention_mask`` (and ``token_type_ids``)
        of shape (P, L_max), padded with tensor operations only.

        Returns
        -------
        dict of str to torch.Tensor
            ``(P, L_max)`` int64 each, ``L_max`` the longest of the ``P`` sequences; padding holds ``pad_id``
            (ids), 0 (mask and types).
        """
        import torch

        seqs = torch.as_tensor(seqs, dtype=torch.long)
        start = self.offsets[seqs]
        length = self.offsets[seqs + 1] - start
        pos = torch.arange(int(length.max()))
        mask = pos[None, :] < length[:, None]
        gather = (start[:, None] + pos[None, :]).clamp(max=self.ids.shape[0] - 1)
        out = {"input_ids": torch.where(mask, self.ids[gather], self.pad_id), "attention_mask": mask.long()}
        if self.types is not None:
            out["token_type_ids"] = torch.where(mask, self.types[gather], 0)
        return out


@dataclass(frozen=True)
class Split:
    """``N`` samples of ``C`` candidates as indices into ``store``.

    ``candidates`` (N, C): the sequence of each candidate (bi: the candidate's text; cross: the pair);
    ``contexts`` (N,): the sequence of each context (bi) or ``None`` (cross); ``labels`` (N,): index of the true
    candidate; ``tasks`` (N,): task index (position in the task list given to :func:`tokenise`).
    """

    store: object  # SequenceStore or llm.prefix.HiddenStore: anything with .inputs(seqs) and len()
    candidates: "torch.Tensor"
    contexts: "torch.Tensor | None"
    labels: "torch.Tensor"
    tasks: "torch.Tensor"

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @property
    def scorer(self) -> str:
        """``'bi'`` when contexts are separate sequences, ``'cross'`` when every candidate is a pair."""
        return "cross" if self.contexts is None else "bi"

    @property
    def n_candidates(self) -> int:
        """``C``, candidates per sample (20 for the tasks of :mod:`llm.tasks`)."""
        return int(self.candidates.shape[1])

    def with_store(self, store) -> "Split":
        """The same samples as indices into another store (e.g. the :class:`llm.prefix.HiddenStore` of this
        split's sequences).

        Parameters
        ----------
        store : SequenceStore or llm.prefix.HiddenStore
            Holding the same ``S`` sequences in the same order.

        Returns
        -------
        Split
            A copy; ``self`` is unchanged.
        """
        return dataclasses.replace(self, store=store)

    def batch(self, idx, negatives: int | None = None, generator=None) -> dict:
        """The batch of samples ``idx`` (B,).

        Parameters
        ----------
        idx : array_like
            ``(B,)`` sample indices.
        negatives : int, optional
            ``k``: keep the true candidate (first) and ``k`` random other candidates of each sample (training,
            ``K = k + 1``); ``None`` keeps all ``C`` (evaluation, ``K = C``).
        generator : torch.Generator, optional
            Source of the negatives' draw.

        Returns
        -------
        dict of str to torch.Tensor
            ``seqs`` (U,) the distinct (sequence, task) pairs to encode with their ``seq_tasks`` (U,) and
            ``is_candidate`` (U,); ``cand`` (B, K) and ``ctx`` (B,) (bi; ``None`` for cross) positions into
            them; ``labels`` (B,) the index of the true candidate among the K; ``tasks`` (B,).
        """
        import torch

        idx = torch.as_tensor(idx, dtype=torch.long)
        b, c = idx.shape[0], self.n_candidates
        labels = self.labels[idx]
        if negatives is None:
            cols, new_labels = torch.arange(c).expand(b, c), labels
        else:
            score = torch.rand(b, c, generator=generator)
            score[torch.arange(b), labels] = -1.0  # the true candidate sorts first
            cols, new_labels = score.argsort(dim=1)[:, :negatives + 1], torch.zeros(b, dtype=torch.long)
        k = cols.shape[1]
        tasks = self.tasks[idx]
        cand = self.candidates[idx[:, None], cols]  # (B, K) sequence ids
        parts = [cand.reshape(-1)] + ([self.contexts[idx]] if self.contexts is not None else [])
        part_tasks = [tasks.repeat_interleave(k)] + ([tasks] if self.contexts is not None else [])
        role = [torch.ones(b * k, dtype=torch.long)] + ([torch.zeros(b, dtype=torch.long)]
                                                         if self.contexts is not None else [])
        seq, seq_task, seq_role = torch.cat(parts), torch.cat(part_tasks), torch.cat(role)
        n_t = int(self.tasks.max()) + 1
        key = (seq * n_t + seq_task) * 2 + seq_role
        uniq, inverse = torch.unique(key, return_inverse=True)
        out = {"seqs": uniq // 2 // n_t, "seq_tasks": uniq // 2 % n_t, "is_candidate": (uniq % 2).bool(),
               "cand": inverse[:b * k].reshape(b, k), "labels": new_labels, "tasks": tasks}
        out["ctx"] = inverse[b * k:] if self.contexts is not None else None
        return out


# ---------------------------------------------------------------------------------------------------- tokenising

def _encode(tokenizer, first: list[str], second: list[str] | None, *, side: str, max_length: int,
            truncation, cache_dir: str | None, what: str) -> tuple:
    """Token ids (flat, types, offsets) of ``first`` (and pairs with ``second``), cached by content."""
    import datasets
    import torch

    h = hashlib.sha256(f"{tokenizer_fingerprint(tokenizer)}|{what}|{side}|{max_length}|{truncation}".encode())
    for i, a in enumerate(first):
        h.update(a.encode("utf-8") + b"\0" + (second[i].encode("utf-8") if second is not None else b"") + b"\1")
    cache_dir = cache_dir or default_cache_dir()
    os.makedirs(cache_dir, exist_ok=True)
    cache_file = os.path.join(cache_dir, f"tok-{h.hexdigest()[:32]}.arrow")
    cols = {"a": first} if second is None else {"a": first, "b": second}

    def encode(batch):
        args = (batch["a"],) if second is None else (batch["a"], batch["b"])
        enc = tokenizer(*args, truncation=truncation, max_length=max_length)
        return {k: enc[k] for k in ("input_ids", "token_type_ids") if k in enc}

    old_side = tokenizer.truncation_side
    tokenizer.truncation_side = side
    was = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    try:
        ds = datasets.Dataset.from_dict(cols).map(
            encode, batched=True, batch_size=2000, remove_columns=list(cols), cache_file_name=cache_file,
            load_from_cache_file=True, new_fingerprint=h.hexdigest()[:32])
    finally:
        tokenizer.truncation_side = old_side
        if was:
            datasets.enable_progress_bars()
    table = ds.data.table if hasattr(ds.data, "table") else ds.data
    col = table.column("input_ids").combine_chunks()
    ids = torch.from_numpy(col.values.to_numpy(zero_copy_only=False).astype(np.int64))
    offsets = torch.from_numpy(col.offsets.to_numpy().astype(np.int64))
    types = None
    if "token_type_ids" in table.column_names:
        tcol = table.column("token_type_ids").combine_chunks()
        types = torch.from_numpy(tcol.values.to_numpy(zero_copy_only=False).astype(np.int64))
    return ids, types, offsets


def _capped(tokenizer, texts: list[str], n_tokens: int) -> list[str]:
    """Each text cut after its first ``n_tokens`` tokens (at the character where that token ends)."""
    enc = tokenizer(texts, add_special_tokens=False, return_offsets_mapping=True)
    return [t if len(off) <= n_tokens else t[:off[n_tokens - 1][1]] for t, off in zip(texts, enc["offset_mapping"])]


def _concat(parts: list[tuple], pad_id: int) -> SequenceStore:
    import torch

    ids = torch.cat([p[0] for p in parts])
    types = torch.cat([p[1] for p in parts]) if all(p[1] is not None for p in parts) else None
    offsets, shift = [parts[0][2][:1]], 0
    for p in parts:
        offsets.append(p[2][1:] + shift)
        shift += int(p[2][-1])
    return SequenceStore(ids, types, torch.cat(offsets), pad_id)


def tokenise(tasks, tokenizer, *, scorer: str, max_length: int, candidate_length: int, split: str = "train",
             cache_dir: str | None = None) -> Split:
    """Tokenise the ``split`` samples (``'train'``, ``'validation'`` or ``'heldout'``) of ``tasks`` for ``scorer``.

    The task index of a sample is the position of its task in ``tasks``; the truncation rules are those of the
    module docstring.

    Parameters
    ----------
    tasks : sequence of llm.data.Task
        The tasks whose samples are tokenised, in task-index order.
    tokenizer : transformers.PreTrainedTokenizerBase
        The model's tokenizer.
    scorer : str
        ``'bi'`` or ``'cross'``.
    max_length : int
        Tokens of a context (bi) or of a pair (cross), special tokens included.
    candidate_length : int
        Tokens kept from the start of a candidate (special tokens excluded).
    split : str
        One of :data:`llm.data.SPLITS`.
    cache_dir : str, optional
        Tokenisation cache (default :func:`default_cache_dir`; created when missing).

    Returns
    -------
    Split
        ``N`` samples of ``C`` candidates; each distinct text (bi) or pair (cross) tokenised once.

    Raises
    ------
    LLMError
        When the split holds no sample, ``split`` is not a split name, or ``scorer`` is unknown.
    """
    import torch

    samples = [(ti, s) for ti, t in enumerate(tasks) for s in t.split(split)]
    if not samples:
        raise LLMError(f"no {split} samples to tokenise")
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    labels = torch.tensor([s.label for _, s in samples], dtype=torch.long)
    task_ids = torch.tensor([ti for ti, _ in samples], dtype=torch.long)
    if scorer == "bi":
        ctx_index = {t: i for i, t in enumerate(dict.fromkeys(s.context for _, s in samples))}
        cand_index = {t: i for i, t in enumerate(dict.fromkeys(c for _, s in samples for c in s.candidates))}
        ctx = _encode(tokenizer, list(ctx_index), None, side="left", max_length=max_length, truncation=True,
                      cache_dir=cache_dir, what="bi-context")
        cand = _encode(tokenizer, list(cand_index), None, side="right", max_length=candidate_length + 2,
                       truncation=True, cache_dir=cache_dir, what="bi-candidate")
        store = _concat([ctx, cand], pad)
        n_ctx = len(ctx_index)
        contexts = torch.tensor([ctx_index[s.context] for _, s in samples], dtype=torch.long)
        cands = torch.tensor([[n_ctx + cand_index[c] for c in s.candidates] for _, s in samples], dtype=torch.long)
        return Split(store, cands, contexts, labels, task_ids)
    if scorer != "cross":
        raise LLMError(f"scorer must be 'bi' or 'cross', got {scorer!r}")
    distinct = list(dict.fromkeys(c for _, s in samples for c in s.candidates))
    short = dict(zip(distinct, _capped(tokenizer, distinct, candidate_length)))
    pair_index = {p: i for i, p in enumerate(dict.fromkeys((s.context, c) for _, s in samples
                                                               for c in s.candidates))}
    pairs = list(pair_index)
    ids, types, offsets = _encode(tokenizer, [a for a, _ in pairs], [short[b] for _, b in pairs], side="left",
                                  max_length=max_length, truncation="only_first", cache_dir=cache_dir, what="cross")
    cands = torch.tensor([[pair_index[(s.context, c)] for c in s.candidates] for _, s in samples], dtype=torch.long)
    return Split(SequenceStore(ids, types, offsets, pad), cands, None, labels, task_ids)
