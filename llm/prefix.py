"""Frozen lower layers computed once: an encoder split at block ``f`` into a lower and an upper part.

With ``freeze_layers = f > 0`` the embeddings and the lowest ``f`` transformer blocks are frozen for every method
alike (SR, Meta-LoRA, fine-tuning, the controls), so their output for a given token sequence never changes. It is
computed once per sequence (:func:`encode_lower`) and kept in a :class:`HiddenStore`; training and evaluation then
run only the upper blocks on it. The upper part is the model's own ``base_model`` with its embedding module
replaced by a pass-through and its block list cut to blocks ``f..``: ``upper(inputs_embeds=h, attention_mask=m)``
equals the full model on the tokens whose block-``f`` input is ``h`` (tested exactly), whatever attention
implementation the model uses, since the model builds its own attention mask.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn

from .config import ModelError

__all__ = ["split_encoder", "HiddenStore", "encode_lower", "weights_checksum", "SplitCache"]


class _Passthrough(nn.Module):
    """Stands in for the embedding module of the upper part: the cached block input goes straight through."""

    def forward(self, input_ids=None, inputs_embeds=None, **kwargs):
        if inputs_embeds is None:
            raise ModelError("the upper part of a split encoder takes inputs_embeds (cached lower-layer outputs)")
        return inputs_embeds


def _view(base: nn.Module, *, embeddings: nn.Module, layers: list, pooler) -> nn.Module:
    """A shallow copy of ``base`` sharing its modules, with other embeddings, block list and pooler."""
    view = copy.copy(base)
    view._modules = dict(base._modules)
    encoder = copy.copy(base.encoder)
    encoder._modules = dict(base.encoder._modules)
    encoder._modules["layer"] = nn.ModuleList(layers)
    view._modules.update(encoder=encoder, embeddings=embeddings, pooler=pooler)
    return view


def split_encoder(base: nn.Module, freeze_layers: int, *, keep_pooler: bool = True
                  ) -> tuple[nn.Module | None, nn.Module]:
    """``(lower, upper)`` views of a BERT/RoBERTa-like ``base`` model (``embeddings``, ``encoder.layer``, ``pooler``).

    ``lower`` runs the embeddings and blocks ``0..f-1`` (no pooler); ``upper`` runs blocks ``f..`` on
    ``inputs_embeds`` (on token ids when ``f = 0``: then ``lower`` is ``None``) and the pooler if ``keep_pooler``.
    Both share ``base``'s modules, so LoRA injected into ``base`` is seen by both.

    Parameters
    ----------
    base : torch.nn.Module
        The HF base model (``hf_model.base_model``).
    freeze_layers : int
        ``f``, in ``[0, n_blocks - 1]``.
    keep_pooler : bool
        Whether ``upper`` ends with the model's pooler (BERT cross-encoder heads read its output).

    Returns
    -------
    tuple
        ``(lower, upper)``: shallow copies of ``base`` sharing its modules; ``lower`` is ``None`` when ``f = 0``.

    Raises
    ------
    ModelError
        When ``f`` is not below the number of blocks or the model lacks that layout.
    """
    layers = getattr(getattr(base, "encoder", None), "layer", None)
    if layers is None or not hasattr(base, "embeddings"):
        raise ModelError(f"{type(base).__name__} has no embeddings / encoder.layer: the scorers need a "
                         "BERT/RoBERTa-like encoder")
    if not 0 <= freeze_layers < len(layers):
        raise ModelError(f"freeze_layers must lie in [0, {len(layers) - 1}] for this model's {len(layers)} blocks, "
                         f"got {freeze_layers}")
    pooler = getattr(base, "pooler", None) if keep_pooler else None
    if freeze_layers == 0:
        return None, _view(base, embeddings=base.embeddings, layers=list(layers), pooler=pooler)
    lower = _view(base, embeddings=base.embeddings, layers=list(layers)[:freeze_layers], pooler=None)
    upper = _view(base, embeddings=_Passthrough(), layers=list(layers)[freeze_layers:], pooler=pooler)
    return lower, upper


@dataclass(frozen=True)
class HiddenStore:
    """Lower-part outputs of ``S`` sequences, ragged: sequence ``s`` is ``hidden[offsets[s]:offsets[s+1]]`` (its
    tokens x H).

    Attributes
    ----------
    hidden : torch.Tensor
        ``(total, H)`` float32, the block-``f`` inputs of every real token.
    offsets : torch.Tensor
        ``(S + 1,)`` int64, ``offsets[0] = 0``.

    >>> store = HiddenStore(torch.arange(10.0).reshape(5, 2), torch.tensor([0, 2, 5]))
    >>> x = store.inputs([1, 0])
    >>> len(store), tuple(x["inputs_embeds"].shape), x["attention_mask"].tolist()
    (2, (2, 3, 2), [[1, 1, 1], [1, 1, 0]])
    """

    hidden: torch.Tensor  # (total, H)
    offsets: torch.Tensor  # (S + 1,) int64

    def __len__(self) -> int:
        return int(self.offsets.shape[0]) - 1

    def inputs(self, seqs) -> dict:
        """``inputs_embeds`` (P, L_max, H) and ``attention_mask`` (P, L_max) of sequences ``seqs`` (P,).

        Returns
        -------
        dict of str to torch.Tensor
            ``inputs_embeds`` (zero beyond each sequence's length) and ``attention_mask`` (int64 1/0), with
            ``L_max`` the longest of the ``P`` sequences: what the upper part takes.
        """
        seqs = torch.as_tensor(seqs, dtype=torch.long)
        start = self.offsets[seqs]
        length = self.offsets[seqs + 1] - start
        pos = torch.arange(int(length.max()))
        mask = pos[None, :] < length[:, None]
        gather = (start[:, None] + pos[None, :]).clamp(max=self.hidden.shape[0] - 1)
        emb = self.hidden[gather] * mask[..., None].to(self.hidden.dtype)
        return {"inputs_embeds": emb, "attention_mask": mask.long()}


def encode_lower(lower: nn.Module, store, *, batch: int = 64, device=None) -> HiddenStore:
    """Run ``lower`` once over every sequence of ``store`` (a :class:`llm.tokens.SequenceStore`), ``batch``
    sequences at a time in order of length (little padding), and keep each sequence's unpadded outputs.

    Returns
    -------
    HiddenStore
        ``S = len(store)`` sequences with ``store``'s offsets; ``hidden`` float32 on the CPU. ``lower`` is run
        without gradients in eval mode and its training flag restored.
    """
    n = len(store)
    lengths = store.lengths()
    order = torch.argsort(lengths, stable=True)
    pieces: list = [None] * n
    was = lower.training
    lower.eval()
    with torch.no_grad():
        for i in range(0, n, batch):
            seqs = order[i:i + batch]
            inputs = {k: v.to(device) if device is not None else v for k, v in store.inputs(seqs).items()}
            h = lower(**inputs).last_hidden_state.float().cpu()
            for j, s in enumerate(seqs.tolist()):
                pieces[s] = h[j, :int(lengths[s])]
    lower.train(was)
    hidden = torch.cat(pieces) if pieces else torch.zeros(0, 0)
    return HiddenStore(hidden, store.offsets.clone())


def weights_checksum(module: nn.Module | None) -> tuple:
    """A cheap checksum of a module's parameters and buffers (per tensor: its sum, sum of squares and an
    index-weighted sum in float64). Used to make sure cached lower-part outputs are only reused with the frozen
    weights that produced them; it guards against mistakes, not against adversaries.

    Returns
    -------
    tuple
        ``(name, shape, sum, sum of squares, weighted sum)`` per tensor of ``module.state_dict()``, sorted by
        name, sums rounded to 6 decimals; ``()`` for ``None``.

    >>> lin = nn.Linear(2, 1, bias=False).requires_grad_(False)
    >>> _ = lin.weight.copy_(torch.tensor([[1.0, 2.0]]))
    >>> weights_checksum(lin), weights_checksum(None)
    ((('weight', (1, 2), 3.0, 5.0, 2.5),), ())
    """
    if module is None:
        return ()
    out = []
    for name, t in sorted(module.state_dict().items()):
        x = t.detach().to("cpu", torch.float64).reshape(-1)
        w = torch.arange(1, x.numel() + 1, dtype=torch.float64) / max(x.numel(), 1)
        out.append((name, tuple(t.shape), round(float(x.sum()), 6), round(float((x * x).sum()), 6),
                    round(float((x * w).sum()), 6)))
    return tuple(out)


class SplitCache:
    """Tokenised splits of task lists for one configuration, with the frozen lower part's outputs when
    ``cfg.freeze_layers > 0``; each built on first use and reused by every retraining, fine-tuning and evaluation
    of a run (the lower part is the same frozen pretrained one for all of them, which :meth:`get` checks).

    Parameters
    ----------
    cfg : llm.config.Config
        Scorer, token lengths, ``freeze_layers`` and ``eval_batch`` are read from it.
    tokenizer : transformers.PreTrainedTokenizerBase
        The model's tokenizer.
    cache_dir : str, optional
        Tokenisation cache (default :func:`llm.tokens.default_cache_dir`).
    device : str or torch.device, optional
        Where the lower part runs.
    tokenised : dict, optional
        Splits already tokenised (e.g. read from an offline bundle), keyed like :meth:`key`; they are used
        instead of tokenising.
    """

    def __init__(self, cfg, tokenizer, *, cache_dir: str | None = None, device=None, tokenised: dict | None = None):
        self.cfg, self.tokenizer, self.cache_dir, self.device = cfg, tokenizer, cache_dir, device
        self._tokenised: dict = dict(tokenised or {})
        self._ready: dict = {}
        self._checksum = None
        self._verified: set = set()

    @staticmethod
    def key(tasks, which: str) -> tuple:
        """``(task names, split)``: what identifies a split.

        Returns
        -------
        tuple
            ``(tuple of task names in order, which)``.
        """
        return tuple(t.name for t in tasks), which

    def tokenised(self, tasks, which: str):
        """The token-level split (no lower-part outputs), tokenised on first use.

        Returns
        -------
        llm.tokens.Split
            :func:`llm.tokens.tokenise` of ``tasks`` and ``which`` with the configuration's lengths.

        Raises
        ------
        LLMError
            When the split holds no sample.
        """
        from .tokens import tokenise

        k = self.key(tasks, which)
        if k not in self._tokenised:
            cfg = self.cfg
            self._tokenised[k] = tokenise(tasks, self.tokenizer, scorer=cfg.scorer, max_length=cfg.max_length,
                                          candidate_length=cfg.candidate_length, split=which,
                                          cache_dir=self.cache_dir)
        return self._tokenised[k]

    def _verify(self, lower: nn.Module) -> None:
        from .config import LLMError

        # Tensors already verified (the same storage: a lower part shared between copies) are not summed again.
        where = tuple((k, t.data_ptr(), tuple(t.shape)) for k, t in lower.state_dict().items())
        if where in self._verified:
            return
        checksum = weights_checksum(lower)
        if self._checksum is None:
            self._checksum = checksum
        elif checksum != self._checksum:
            raise LLMError("the frozen lower layers differ from those whose outputs are cached: a frozen "
                           "layer was changed (or another model was given)")
        self._verified.add(where)

    def get(self, tasks, which: str, lower: nn.Module | None):
        """The ``which`` split of ``tasks`` (see :func:`llm.tokens.tokenise`) as the upper part consumes it.

        Returns
        -------
        llm.tokens.Split
            Its ``store`` a :class:`llm.tokens.SequenceStore` (``freeze_layers = 0``) or a :class:`HiddenStore`
            of ``lower``'s outputs.

        Raises
        ------
        LLMError
            When ``lower`` differs from the lower part the cache was built with, or the split holds no sample.
        """
        if self.cfg.freeze_layers == 0:
            return self.tokenised(tasks, which)
        self._verify(lower)
        k = self.key(tasks, which)
        if k not in self._ready:
            split = self.tokenised(tasks, which)
            self._ready[k] = split.with_store(encode_lower(lower, split.store, batch=self.cfg.eval_batch,
                                                           device=self.device))
        return self._ready[k]
