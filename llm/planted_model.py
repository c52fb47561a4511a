"""Plumbing of ``llm planted``: the pretrained encoder, its chosen linear layers, the planted teachers, and the
forward pass that resumes from cached activations of the frozen lower layers.

All on a ``transformers`` BERT ``AutoModel`` in eval mode (no dropout), float32; all-MiniLM-L6-v2: 6 blocks, H = 384.

Chosen layers and the resume point
----------------------------------
A chosen layer is an ``nn.Linear`` of a transformer block, named as in ``model.named_modules()``
(``encoder.layer.{b}.{sub}``), at a *stage* of its block (:data:`STAGES`): 0 query/key/value (input: the block's
input), 1 ``attention.output.dense`` (the attention context), 2 ``intermediate.dense`` (the attention output),
3 ``output.dense`` (the FFN activation). All other weights are frozen and shared by teachers and students, so all
below the lowest chosen layer ``(b, s)`` is common to them: :func:`build_cache` runs the encoder once per input set
up to there; :func:`forward_top` runs the rest through the model's own submodules (``BertSelfOutput``,
``BertIntermediate``, ``BertOutput``, ``BertLayer``) in ``BertLayer.forward``'s order, so LoRA layers injected by
peft or :mod:`llm.multilora` take part without further plumbing.

Planted teachers (:func:`plant`)
--------------------------------
For a chosen layer with pretrained weight ``W0`` ``(d_out, d_in)``: a shared shift ``S`` (i.i.d. Gaussian, or a
rank-``shift_rank`` product, rescaled to ``||S||_F = shift_scale ||W0||_F``) and per task ``t = 1..T+1`` a rank-k
``Delta_t = B_t C_t^T`` with Gaussian ``B_t`` ``(d_out, k)``, ``C_t`` ``(d_in, k)``, rescaled to ``||Delta_t||_F =
delta_scale ||W0||_F`` (evenly between the two). Task t's teacher uses ``W0 + S + Delta_t``; ``A* = W0 + S`` is the
shared truth (the paper's ``A*``; ``Delta_t`` stands for ``U*_t U*_t^T``, asymmetric here). Biases are unchanged.
"""

from __future__ import annotations

import contextlib
import re
from dataclasses import dataclass

import torch
from torch import nn

from .config import LLMError

__all__ = ["STAGES", "Cache", "Planted", "load_encoder", "chosen_layers", "layer_position", "base_linear",
           "build_cache", "forward_top", "layer_output", "plant", "set_weights", "current_weights", "masked_mse"]

STAGES = {"attention.self.query": 0, "attention.self.key": 0, "attention.self.value": 0,
          "attention.output.dense": 1, "intermediate.dense": 2, "output.dense": 3}
_BLOCK = re.compile(r"encoder\.layer\.(\d+)\.(.+)")


class _Stop(Exception):
    """Raised by the caching hook once the needed activations are captured (the rest of the forward is skipped)."""


def load_encoder(name: str = "minilm") -> nn.Module:
    """The pretrained BERT-style ``AutoModel`` ``name`` (``'minilm'`` or a local folder), float32, eval mode, frozen.

    Returns
    -------
    torch.nn.Module

    Raises
    ------
    LLMError
        When the folder cannot be loaded offline or the model has no ``encoder.layer`` blocks.
    """
    from transformers import AutoModel, logging

    from .models import resolve_model

    path = resolve_model(name)
    verbosity, bars = logging.get_verbosity(), logging.is_progress_bar_enabled()
    logging.set_verbosity_error()
    logging.disable_progress_bar()  # no "Loading weights" bar on stderr
    try:
        model = AutoModel.from_pretrained(path, local_files_only=True).float()
    except (OSError, ValueError) as exc:
        raise LLMError(f"cannot load model {name!r} offline: {str(exc).splitlines()[0]}") from None
    finally:
        logging.set_verbosity(verbosity)
        if bars:
            logging.enable_progress_bar()
    if not hasattr(model, "encoder") or not hasattr(model.encoder, "layer"):
        raise LLMError(f"model {name!r} is not a BERT-style encoder (no encoder.layer blocks)")
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def layer_position(name: str) -> tuple[int, int]:
    """``(block, stage)`` of a chosen layer's name (stages: :data:`STAGES`, module docstring).

    Returns
    -------
    tuple of int

    Raises
    ------
    LLMError
        For a name that is not a linear layer of a transformer block.
    """
    m = _BLOCK.fullmatch(name)
    if m is None or m.group(2) not in STAGES:
        raise LLMError(f"layer {name!r} is not a linear layer of a transformer block "
                       f"(encoder.layer.N.{{{', '.join(STAGES)}}})")
    return int(m.group(1)), STAGES[m.group(2)]


def chosen_layers(model: nn.Module, pattern: str) -> tuple[str, ...]:
    """Names of the block linear layers whose full name matches the regex ``pattern``, by ``(block, stage, name)``.

    Returns
    -------
    tuple of str

    Raises
    ------
    LLMError
        For an invalid regex or when nothing matches (the message names layers that exist).
    """
    try:
        rx = re.compile(pattern)
    except re.error as exc:
        raise LLMError(f"--layers {pattern!r} is not a valid regular expression ({exc})") from None
    names = [n for n, m in model.named_modules() if isinstance(m, nn.Linear) and _BLOCK.fullmatch(n)
             and _BLOCK.fullmatch(n).group(2) in STAGES]
    hits = sorted((n for n in names if rx.fullmatch(n)), key=lambda n: (*layer_position(n), n))
    if not hits:
        raise LLMError(f"--layers {pattern!r} matches no linear layer of the encoder's blocks "
                       f"(they are named like {names[-1]!r}, {names[-3]!r})")
    return tuple(hits)


def base_linear(model: nn.Module, name: str) -> nn.Linear:
    """The ``nn.Linear`` at ``name`` itself, also when peft or :mod:`llm.multilora` wrapped it (its ``base_layer``).

    Returns
    -------
    torch.nn.Linear

    Raises
    ------
    AttributeError
        When ``model`` has no submodule ``name``.
    """
    m = model.get_submodule(name)
    while not isinstance(m, nn.Linear) and hasattr(m, "base_layer"):
        m = m.base_layer
    return m


@dataclass(frozen=True)
class Cache:
    """Activations of ``B`` sequences of ``L`` tokens at the resume point ``(block, stage)`` of the lowest chosen layer.

    ``tensors``, each ``(B, L, H)`` (the FFN activation ``(B, L, 4H)``), the first the chosen layers' input: stage 0
    ``(hidden,)``, 1 ``(context, hidden)``, 2 ``(attention_output,)``, 3 ``(ffn_activation, attention_output)``.
    ``mask``: the attention mask the encoder passes to its blocks (``None`` without padding); ``token_mask``:
    ``(B, L)`` bool, True on real tokens.
    """

    tensors: tuple
    mask: torch.Tensor | None
    token_mask: torch.Tensor
    block: int
    stage: int

    def take(self, rows: torch.Tensor) -> "Cache":
        """The cache of the sequences ``rows`` (LongTensor); a mask broadcast over sequences is kept as it is.

        Returns
        -------
        Cache
        """
        def pick(x):
            return x if x is None or x.dim() == 0 or x.shape[0] == 1 else x.index_select(0, rows)
        return Cache(tuple(pick(x) for x in self.tensors), pick(self.mask), self.token_mask.index_select(0, rows),
                     self.block, self.stage)

    def position_wise(self, n_blocks: int) -> bool:
        """True when everything from the resume point up acts on each token alone: the top block from stage 1 on.

        Returns
        -------
        bool
        """
        return self.block == n_blocks - 1 and self.stage >= 1

    def flatten(self) -> "Cache":
        """The ``M`` real tokens as ``(M, 1, .)`` one-token sequences, row-major, no mask (if :meth:`position_wise`).

        Returns
        -------
        Cache
        """
        keep = self.token_mask
        return Cache(tuple(x[keep].unsqueeze(1) for x in self.tensors), None,
                     torch.ones(int(keep.sum()), 1, dtype=torch.bool), self.block, self.stage)


@torch.no_grad()
def build_cache(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                names: tuple[str, ...]) -> Cache:
    """Run the frozen encoder on ``input_ids``, ``attention_mask`` ``(B, L)`` up to the lowest of the layers ``names``.

    Returns
    -------
    Cache

    Raises
    ------
    LLMError
        When a name is not a linear layer of a transformer block.
    """
    block, stage = min(layer_position(n) for n in names)
    layer = model.encoder.layer[block]
    got: dict = {}

    def block_hook(_mod, args, kwargs):
        got["hidden"] = args[0]
        got["mask"] = args[1] if len(args) > 1 else kwargs.get("attention_mask")
        if stage == 0:
            raise _Stop

    stage_mod = {1: layer.attention.output, 2: layer.intermediate, 3: layer.output}.get(stage)

    def stage_hook(_mod, args):
        got["stage"] = tuple(a.detach() for a in args)
        raise _Stop

    handles = [layer.register_forward_pre_hook(block_hook, with_kwargs=True)]
    if stage_mod is not None:
        handles.append(stage_mod.register_forward_pre_hook(stage_hook))
    try:
        model(input_ids=input_ids, attention_mask=attention_mask)
    except _Stop:
        pass
    finally:
        for h in handles:
            h.remove()
    tensors = (got["hidden"],) if stage == 0 else got["stage"]
    return Cache(tensors, got["mask"], attention_mask.bool(), block, stage)


def _run_block(layer: nn.Module, hidden: torch.Tensor, mask) -> torch.Tensor:
    out = layer(hidden, mask)
    return out[0] if isinstance(out, tuple) else out


def forward_top(model: nn.Module, cache: Cache) -> torch.Tensor:
    """``model(input_ids, attention_mask).last_hidden_state`` resumed from ``cache``, with the current weights.

    Returns
    -------
    torch.Tensor, shape (B, L, H)
    """
    layers = model.encoder.layer
    layer = layers[cache.block]
    s = cache.stage
    if s == 0:
        h = _run_block(layer, cache.tensors[0], cache.mask)
    elif s == 3:
        h = layer.output(*cache.tensors)
    else:
        attn = layer.attention.output(*cache.tensors) if s == 1 else cache.tensors[0]
        h = layer.output(layer.intermediate(attn), attn)
    for above in layers[cache.block + 1:]:
        h = _run_block(above, h, cache.mask)
    return h


def layer_output(model: nn.Module, cache: Cache, name: str) -> torch.Tensor:
    """``x W^T + b`` of the chosen layer ``name`` (with any LoRA on it) on the cached input ``x`` (the linear limit).

    Returns
    -------
    torch.Tensor, shape (B, L, d_out)

    Raises
    ------
    LLMError
        When ``name`` is not at the cache's resume point.
    """
    if layer_position(name) != (cache.block, cache.stage):
        raise LLMError(f"layer {name!r} is not at the resume point (block {cache.block}, stage {cache.stage})")
    return model.get_submodule(name)(cache.tensors[0])


def masked_mse(pred: torch.Tensor, target: torch.Tensor, token_mask: torch.Tensor) -> torch.Tensor:
    """Mean squared error of ``pred``, ``target`` ``(B, L, D)`` over features and the real tokens (``token_mask``).

    Returns
    -------
    torch.Tensor
        Scalar ``sum_{real} ||pred - target||^2 / (n_real D)`` (differentiable); NaN without a real token.
    """
    m = token_mask.to(pred.dtype).unsqueeze(-1)
    return ((pred - target) ** 2 * m).sum() / (m.sum() * pred.shape[-1])


@dataclass(frozen=True)
class Planted:
    """The planted truth of a layer (module docstring): ``W0``, ``S`` ``(d_out, d_in)``, ``B``, ``C`` ``(T+1, d_., k)``.

    Task t (0-based; the last is the new task) uses ``W0 + S + B[t] C[t]^T``.
    """

    W0: torch.Tensor
    S: torch.Tensor
    B: torch.Tensor
    C: torch.Tensor

    @property
    def A_star(self) -> torch.Tensor:
        """``A* = W0 + S`` ``(d_out, d_in)``: the truth shared by every task (the paper's ``A*``)."""
        return self.W0 + self.S

    def delta(self, t: int) -> torch.Tensor:
        """Task t's planted rank-k perturbation ``Delta_t = B[t] C[t]^T``; ``t`` in ``[0, T]`` (``T``: the new task).

        Returns
        -------
        torch.Tensor, shape (d_out, d_in)
        """
        return self.B[t] @ self.C[t].T

    def teacher(self, t: int) -> torch.Tensor:
        """Task t's teacher weight ``W_t = A* + Delta_t`` (``t`` as in :meth:`delta`).

        Returns
        -------
        torch.Tensor, shape (d_out, d_in)
        """
        return self.A_star + self.delta(t)


def plant(W0: torch.Tensor, *, n_tasks: int, k: int, shift_scale: float, delta_scale: float, shift_rank: int,
          generator: torch.Generator) -> Planted:
    """Draw ``S`` and ``Delta_t`` (module docstring) for a layer of weight ``W0`` ``(d_out, d_in)``, ``n_tasks = T+1``.

    ``shift_rank = 0``: ``S`` of full rank. ``generator`` draws ``S``, the new task, then retraining tasks 1, 2, ..., so
    a setting with more retraining tasks extends one with fewer (same ``S``, new task and first tasks).

    Returns
    -------
    Planted
        With a copy of ``W0``.

    Raises
    ------
    LLMError
        When ``n_tasks * k > min(d_out, d_in)``: the planted directions could not be independent (Remark 3.1).
    """
    d_out, d_in = W0.shape
    if n_tasks * k > min(d_out, d_in):
        raise LLMError(f"(T+1) k = {n_tasks * k} exceeds min(d_out, d_in) = {min(d_out, d_in)} of a chosen layer "
                       "(the paper's Remark 3.1 needs (T+1) k <= d)")
    w0 = float(torch.linalg.norm(W0))
    if shift_rank > 0:
        S = torch.randn(d_out, shift_rank, generator=generator) @ torch.randn(shift_rank, d_in, generator=generator)
    else:
        S = torch.randn(d_out, d_in, generator=generator)
    S = S * (shift_scale * w0 / float(torch.linalg.norm(S))) if shift_scale > 0 else torch.zeros_like(W0)
    B = torch.empty(n_tasks, d_out, k)
    C = torch.empty(n_tasks, d_in, k)
    for t in [n_tasks - 1, *range(n_tasks - 1)]:
        b, c = torch.randn(d_out, k, generator=generator), torch.randn(d_in, k, generator=generator)
        f = (delta_scale * w0 / float(torch.linalg.norm(b @ c.T))) ** 0.5  # the scale split evenly between B, C
        B[t], C[t] = b * f, c * f
    return Planted(W0.detach().clone(), S, B, C)


def current_weights(model: nn.Module, names: tuple[str, ...]) -> dict[str, torch.Tensor]:
    """Detached copies ``{name: (d_out, d_in)}`` of the chosen layers' weights.

    Returns
    -------
    dict of str to torch.Tensor
    """
    return {n: base_linear(model, n).weight.detach().clone() for n in names}


@contextlib.contextmanager
def set_weights(model: nn.Module, weights: dict[str, torch.Tensor]):
    """Within the block the chosen layers hold ``weights`` ``{name: (d_out, d_in)}`` (copied into ``model``, in place).

    Yields
    ------
    None
        The previous weights are restored when the block ends, also on an error.
    """
    old = {}
    with torch.no_grad():
        for n, W in weights.items():
            lin = base_linear(model, n)
            old[n] = lin.weight.detach().clone()
            lin.weight.copy_(W)
    try:
        yield
    finally:
        with torch.no_grad():
            for n, W in old.items():
                base_linear(model, n).weight.copy_(W)
