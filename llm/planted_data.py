"""Inputs of ``llm planted``: a pool of real chitchat turns, tokenised once, its frozen lower-layer activations
cached once, and each seed's split of the pool into tasks.

The pool: the distinct turn texts of the packaged chitchat data (:func:`llm.data.read_chitchat`), in an order drawn
from ``data_seed``, keeping those of ``min_tokens..max_tokens`` tokens (with [CLS] and [SEP]) until ``size`` are
found; padded to ``max_tokens``. Their activations at the resume point (:func:`llm.planted_model.build_cache`) are
computed once. When everything above the resume point acts token by token (the default chosen layer, the attention
output projection of the top block), the pool is flattened to its real tokens: a *row* is then a token, otherwise a
turn.

A seed's split (:func:`split_pool`): a permutation of the pool's turns drawn from the seed gives, in order, the
held-out turns of the new task (m), its training turns (the first n of ``n_max``; smaller n are prefixes), then
``N`` turns for each retraining task t = 1..T_max (a setting with T tasks takes the first T). All sets are disjoint.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .config import LLMError
from .planted_model import Cache, build_cache

__all__ = ["Pool", "Split", "read_turns", "build_pool", "split_pool"]


def read_turns() -> list[str]:
    """Distinct turn texts of the packaged chitchat data, sorted (so the pool does not depend on file order).

    Returns
    -------
    list of str
        Every distinct turn text of :func:`llm.data.read_chitchat`, sorted.

    Raises
    ------
    DataError
        When the packaged data file is unreadable or malformed.
    """
    from .data import read_chitchat

    return sorted({t.text for c in read_chitchat() for t in c.turns})


@dataclass(frozen=True)
class Pool:
    """``texts`` (P,), the cache of every turn (rows are tokens when ``flat``), and ``row_offsets`` (P + 1,): turn
    i's rows are ``row_offsets[i]:row_offsets[i+1]``.

    Attributes
    ----------
    texts : tuple of str
        ``(P,)`` the pool's turns.
    cache : Cache
        Activations at the resume point: ``P`` sequences of ``L`` tokens, or (``flat``) ``M`` one-token rows,
        one per real token.
    flat : bool
        Rows are tokens (everything above the resume point acts token by token).
    row_offsets : torch.Tensor
        ``(P + 1,)`` int64, ``row_offsets[0] = 0``.

    >>> pool = Pool(("a b", "c d e"), None, True, torch.tensor([0, 2, 5]))
    >>> pool.rows([1, 0]), pool.n_rows([1, 0])
    (tensor([2, 3, 4, 0, 1]), tensor([3, 2]))
    """

    texts: tuple
    cache: Cache
    flat: bool
    row_offsets: torch.Tensor

    def rows(self, turns) -> torch.Tensor:
        """LongTensor of the rows of the given turns, in order.

        Returns
        -------
        torch.Tensor
            ``(sum of n_rows(turns),)`` int64 row indices into ``cache`` (``turns`` itself when not ``flat``).
        """
        turns = torch.as_tensor(turns, dtype=torch.long)
        if not self.flat:
            return turns
        starts, ends = self.row_offsets[turns], self.row_offsets[turns + 1]
        return torch.cat([torch.arange(int(s), int(e)) for s, e in zip(starts, ends)]) if len(turns) else turns

    def n_rows(self, turns) -> torch.Tensor:
        """Rows per turn ``(len(turns),)``.

        Returns
        -------
        torch.Tensor
            ``(len(turns),)`` int64: the turn's real tokens when ``flat``, else ones.
        """
        turns = torch.as_tensor(turns, dtype=torch.long)
        if not self.flat:
            return torch.ones(len(turns), dtype=torch.long)
        return self.row_offsets[turns + 1] - self.row_offsets[turns]


def _select(texts: list[str], tokenizer, size: int, min_tokens: int, max_tokens: int, data_seed: int,
            why: str) -> list[str]:
    order = np.random.default_rng(data_seed).permutation(len(texts))
    out: list[str] = []
    chunk = max(4 * size, 1024)
    for i in range(0, len(order), chunk):
        batch = [texts[j] for j in order[i:i + chunk]]
        lengths = [len(ids) for ids in tokenizer(batch, add_special_tokens=True, truncation=False,
                                                 verbose=False)["input_ids"]]
        out += [b for b, n in zip(batch, lengths) if min_tokens <= n <= max_tokens]
        if len(out) >= size:
            return out[:size]
    raise LLMError(f"only {len(out)} chitchat turns have {min_tokens}..{max_tokens} tokens, {size} are needed"
                   f"{f' ({why})' if why else ''}; lower the sizes or widen the token range")


def _concat(caches: list[Cache]) -> Cache:
    masks = [c.mask for c in caches]
    if all(m is None for m in masks):
        mask = None
    else:
        ref = next(m for m in masks if m is not None)
        filled = [m if m is not None else torch.ones((c.token_mask.shape[0], *ref.shape[1:]), dtype=ref.dtype)
                  if ref.dtype == torch.bool else torch.zeros((c.token_mask.shape[0], *ref.shape[1:]),
                                                              dtype=ref.dtype) for m, c in zip(masks, caches)]
        mask = torch.cat(filled)
    tensors = tuple(torch.cat([c.tensors[i] for c in caches]) for i in range(len(caches[0].tensors)))
    return Cache(tensors, mask, torch.cat([c.token_mask for c in caches]), caches[0].block, caches[0].stage)


def build_pool(model, tokenizer, names: tuple[str, ...], *, size: int, min_tokens: int, max_tokens: int,
               data_seed: int, chunk: int = 256, why: str = "") -> Pool:
    """Tokenise ``size`` turns and cache their activations at the chosen layers' resume point (module docstring).

    Parameters
    ----------
    model : transformers.PreTrainedModel
        The frozen encoder (:func:`llm.planted_model.load_encoder`).
    tokenizer : transformers.PreTrainedTokenizerBase
        Its tokenizer.
    names : tuple of str
        The chosen layers (:func:`llm.planted_model.chosen_layers`).
    size : int
        ``P``, turns in the pool.
    min_tokens, max_tokens : int
        Token range of a kept turn, ``[CLS]`` and ``[SEP]`` included; turns are padded to ``max_tokens``.
    data_seed : int
        Seeds the order in which turns are tried.
    chunk : int
        Turns per encoder forward pass.
    why : str
        How ``size`` was counted, added to the error message.

    Returns
    -------
    Pool

    Raises
    ------
    LLMError
        When fewer than ``size`` turns fit the token range.
    DataError
        When the packaged chitchat data cannot be read.
    """
    texts = _select(read_turns(), tokenizer, size, min_tokens, max_tokens, data_seed, why)
    enc = tokenizer(texts, padding="max_length", max_length=max_tokens, truncation=True, return_tensors="pt")
    parts = [build_cache(model, enc["input_ids"][i:i + chunk], enc["attention_mask"][i:i + chunk], names)
             for i in range(0, size, chunk)]
    cache = _concat(parts)
    flat = cache.position_wise(len(model.encoder.layer))
    counts = cache.token_mask.sum(1) if flat else torch.ones(size, dtype=torch.long)
    offsets = torch.zeros(size + 1, dtype=torch.long)
    offsets[1:] = torch.cumsum(counts, 0)
    return Pool(tuple(texts), cache.flatten() if flat else cache, flat, offsets)


@dataclass(frozen=True)
class Split:
    """Turn indices into the pool: ``heldout`` (m,), ``new_train`` (n_max,), ``retrain`` (T_max, N).

    Attributes
    ----------
    heldout : numpy.ndarray
        ``(m,)`` held-out turns of the new task.
    new_train : numpy.ndarray
        ``(n_max,)`` training turns of the new task; the first ``n`` are the training set of size ``n``.
    retrain : numpy.ndarray
        ``(T_max, N)``: row ``t`` holds retraining task ``t``'s turns.
    """

    heldout: np.ndarray
    new_train: np.ndarray
    retrain: np.ndarray


def split_pool(pool_size: int, *, seed: int, m: int, n_max: int, N: int, T_max: int) -> Split:
    """The seed's disjoint split of the pool (module docstring).

    Returns
    -------
    Split
        Disjoint index sets drawn by one permutation of ``range(pool_size)`` seeded by ``(seed, 2)``.

    Raises
    ------
    LLMError
        When the pool holds fewer turns than the split needs (``m + n_max + N * T_max``).

    >>> s = split_pool(20, seed=0, m=2, n_max=3, N=4, T_max=3)
    >>> s.heldout.shape, s.new_train.shape, s.retrain.shape, len({*s.heldout, *s.new_train, *s.retrain.ravel()})
    ((2,), (3,), (3, 4), 17)
    """
    need = m + n_max + N * T_max
    if need > pool_size:
        raise LLMError(f"the split needs {need} turns but the pool holds {pool_size}")
    perm = np.random.default_rng(np.random.SeedSequence([int(seed), 2])).permutation(pool_size)
    return Split(perm[:m], perm[m:m + n_max], perm[m + n_max:need].reshape(T_max, N))
