"""Shared pieces of the ``llm.multilora`` tests: tiny random BERT / RoBERTa models in float64, their peft twins
(the oracle) and batches of mixed tasks. No downloads."""

from __future__ import annotations

import copy

import pytest
import torch

peft = pytest.importorskip("peft")
transformers = pytest.importorskip("transformers")

from llm.multilora import (  # noqa: E402
    MultiTaskLoraLinear,
    inject_multitask_head,
    inject_multitask_lora,
    multitask_modules,
)

TOL = dict(rtol=1e-9, atol=1e-11)


def tiny_model(arch: str, seed: int = 0):
    """A tiny random BERT / RoBERTa for sequence classification (2 blocks, hidden 16), float64, no dropout."""
    kw = dict(vocab_size=60, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=24,
              hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, num_labels=2)
    torch.manual_seed(seed)
    if arch == "bert":
        model = transformers.BertForSequenceClassification(transformers.BertConfig(max_position_embeddings=32, **kw))
    else:
        model = transformers.RobertaForSequenceClassification(
            transformers.RobertaConfig(max_position_embeddings=40, pad_token_id=1, **kw))
    return model.double()


def randomise_adapters(model, seed: int, scale: float = 0.3):
    """Give every adapter and head slice random values (B starts at zero, which would hide errors)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, m in multitask_modules(model):
            for p in m.parameters(recurse=False):
                p.copy_(scale * torch.randn(p.shape, generator=g, dtype=p.dtype))


def peft_twin(base, ours, names, *, T, r, alpha, heads: bool):
    """A peft model with adapters t0..t{T-1} holding exactly our adapters' (and heads') values; base trainable."""
    cfg = peft.LoraConfig(r=r, lora_alpha=alpha, lora_dropout=0.0, target_modules=list(names),
                          modules_to_save=["classifier"] if heads else None)
    pm = peft.get_peft_model(copy.deepcopy(base), cfg, adapter_name="t0")
    for t in range(1, T):
        pm.add_adapter(f"t{t}", cfg)
    with torch.no_grad():
        for name, m in multitask_modules(ours):
            pmod = pm.base_model.model.get_submodule(name)
            for t in range(T):
                if isinstance(m, MultiTaskLoraLinear):
                    pmod.lora_A[f"t{t}"].weight.copy_(m.lora_A[t])
                    pmod.lora_B[f"t{t}"].weight.copy_(m.lora_B[t])
                else:
                    pmod.modules_to_save[f"t{t}"].weight.copy_(m.weight[t])
                    pmod.modules_to_save[f"t{t}"].bias.copy_(m.bias[t])
    for n, p in pm.named_parameters():
        if "lora_" not in n and "modules_to_save" not in n and "original_module" not in n:
            p.requires_grad_(True)
    return pm


def build_pair(arch, *, T=3, r=4, alpha=8, heads=None, seed=0):
    """``(base, ours, names, peft twin)``: a tiny model, a copy with T random multi-task adapters (and heads) and
    the peft model holding the same values."""
    heads = (arch == "bert") if heads is None else heads
    base = tiny_model(arch, seed)
    ours = copy.deepcopy(base)
    names = inject_multitask_lora(ours, n_tasks=T, r=r, alpha=alpha, dropout=0.0, target_modules="all-linear")
    if heads:
        inject_multitask_head(ours, n_tasks=T, module_name="classifier")
    randomise_adapters(ours, seed + 1)
    return base, ours, names, peft_twin(base, ours, names, T=T, r=r, alpha=alpha, heads=heads)


def mixed_batch(seed, n=7, length=9):
    """``n`` random token sequences of ``length`` with some padding: ``(input_ids, attention_mask)``."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, 60, (n, length), generator=g)
    mask = torch.ones(n, length, dtype=torch.long)
    mask[1, 6:] = 0  # some padding, so the attention mask matters
    return ids, mask
