"""The models and one training round of each schedule timed by ``benchmarks/llm_speed.py`` (its docstring
describes the schedules and the round: ``T`` tasks x ``b`` samples x ``K`` pairs of ``L`` random tokens).
"""

from __future__ import annotations

import time

__all__ = ["ROBERTA_LARGE", "ROBERTA_TINY", "build", "make_round", "run_round", "encoder_parameters",
           "model_config"]

# roberta-large's shapes (355M parameters with the classification head).
ROBERTA_LARGE = dict(vocab_size=50265, hidden_size=1024, num_hidden_layers=24, num_attention_heads=16,
                     intermediate_size=4096, max_position_embeddings=514, type_vocab_size=1, pad_token_id=1,
                     bos_token_id=0, eos_token_id=2, layer_norm_eps=1e-5)
ROBERTA_TINY = dict(ROBERTA_LARGE, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
                    vocab_size=2000)


def _hf_model(model: str, seed: int):
    import torch
    from transformers import RobertaConfig

    from llm.models import load_hf_model

    torch.manual_seed(seed)
    if model == "roberta-large-random":
        return load_hf_model(None, config=RobertaConfig(**ROBERTA_LARGE))
    if model == "roberta-tiny-random":  # for CPU try-outs of the GPU script
        return load_hf_model(None, config=RobertaConfig(**ROBERTA_TINY))
    return load_hf_model(model)


def encoder_parameters(net) -> int:
    """Parameters of the encoder (no heads, no LoRA tensors)."""
    from llm.config import LORA_PREFIX

    return sum(p.numel() for n, p in net.hf.base_model.named_parameters() if LORA_PREFIX not in n)


def model_config(model: str):
    from transformers import AutoConfig, RobertaConfig

    from llm.models import resolve_model

    if model == "roberta-large-random":
        return RobertaConfig(**ROBERTA_LARGE)
    if model == "roberta-tiny-random":
        return RobertaConfig(**ROBERTA_TINY)
    return AutoConfig.from_pretrained(resolve_model(model))


def build(schedule: str, *, model: str, n_tasks: int, rank: int, alpha: float, dropout: float, seed: int,
          device: str, mode: str | None = None):
    """The cross-encoder ``Scorer`` of one schedule, every parameter trainable, on ``device``; and its AdamW."""
    import torch

    from llm.adapters import BatchedAdapters, PeftAdapters
    from llm.models import Scorer

    hf = _hf_model(model, seed)
    common = dict(kind="cross", seed=seed)
    if schedule == "sr":
        net = Scorer(hf, n_tasks=1, **common)
    elif schedule == "peft-one-adapter":
        net = Scorer(hf, n_tasks=1, make_adapters=lambda m: PeftAdapters(m, 1, rank, alpha, dropout), **common)
    else:
        cls = BatchedAdapters if schedule == "meta-batched" else PeftAdapters
        net = Scorer(hf, n_tasks=n_tasks, make_adapters=lambda m: cls(m, n_tasks, rank, alpha, dropout), **common)
    for p in net.parameters():
        p.requires_grad_(True)
    if isinstance(net.adapters, PeftAdapters):
        net.adapters.peft.base_model.set_adapter(net.adapters.names[0])
    if mode is not None and schedule == "meta-batched":
        from llm.multilora import set_mode

        set_mode(net, mode)
    net.to(device).train()
    opt = torch.optim.AdamW([p for p in net.parameters()], lr=1e-6, foreach=True)
    return net, opt


def make_round(*, n_tasks: int, samples: int, pairs: int, length: int, vocab: int, seed: int, device: str,
               token_types: bool) -> list[dict]:
    """T task batches, each ``samples`` samples x ``pairs`` pairs of ``length`` random tokens."""
    import torch

    g = torch.Generator().manual_seed(seed)
    out = []
    for t in range(n_tasks):
        p = samples * pairs
        ids = torch.randint(1000, vocab, (p, length), generator=g)
        ids[:, 0] = 101 if token_types else 0  # a [CLS] / <s> first token
        b = {"input_ids": ids, "attention_mask": torch.ones(p, length, dtype=torch.long),
             "pair_labels": (torch.arange(p) % pairs == 0).long(),
             "tasks": torch.full((samples,), t, dtype=torch.long)}
        if token_types:
            b["token_type_ids"] = torch.zeros(p, length, dtype=torch.long)
        out.append({k: v.to(device) for k, v in b.items()})
    return out


def _concat(batches: list[dict]) -> dict:
    import torch

    return {k: torch.cat([b[k] for b in batches]) for k in batches[0]}


def _step(net, opt, batch: dict, *, single_task: bool, autocast):
    """One optimiser step of the per-pair loss over a batch of ``B`` samples x ``K`` pairs (true pair first)."""
    import torch

    b, k = batch["tasks"].shape[0], batch["input_ids"].shape[0] // batch["tasks"].shape[0]
    inputs = {key: batch[key] for key in ("input_ids", "attention_mask", "token_type_ids") if key in batch}
    with autocast():
        feats = net(inputs, batch["tasks"].repeat_interleave(k), int(batch["tasks"][0]) if single_task else None)
    cand = torch.arange(b * k, device=feats.device).reshape(b, k)
    loss = net.loss(feats.float(), {"cand": cand, "labels": torch.zeros(b, dtype=torch.long, device=feats.device)})
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    return float(loss.detach())


def run_round(schedule: str, net, opt, round_batches: list[dict], *, autocast, device: str) -> float:
    """Seconds for one round of ``schedule``."""
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    if schedule == "meta-sequential":
        for b in round_batches:
            _step(net, opt, b, single_task=True, autocast=autocast)
    else:
        b = _concat(round_batches) if len(round_batches) > 1 else round_batches[0]
        if schedule in ("sr", "peft-one-adapter"):
            b = dict(b, tasks=b["tasks"].new_zeros(b["tasks"].shape))
        _step(net, opt, b, single_task=False, autocast=autocast)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return time.perf_counter() - t0
