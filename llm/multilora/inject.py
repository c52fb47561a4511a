"""Putting :mod:`llm.multilora`'s stacked layers into a model and taking them out; the per-example task index.

Target modules follow peft's rules (``"all-linear"``, a full-name regex, or a list of names / suffixes).
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterable, Iterator, Sequence

import torch
from torch import nn

from .layers import DEFAULT_MODE, MultiTaskHead, MultiTaskLoraLinear, check_mode, check_sizes

__all__ = ["inject_multitask_lora", "inject_multitask_head", "multitask_modules", "set_mode", "task_ids",
           "unload_multitask_lora", "trainable_lora_parameters"]

# Names of classification / output heads that "all-linear" leaves alone, as peft does (peft's SEQ_CLS_HEAD_NAMES).
_HEAD_NAMES = ("classifier", "score", "lm_head", "cls", "qa_outputs")


def _is_head(name: str, model: nn.Module) -> bool:
    first = name.split(".", 1)[0]
    if first in _HEAD_NAMES:
        return True
    get_out = getattr(model, "get_output_embeddings", None)
    if callable(get_out):
        try:
            out = get_out()
        except (NotImplementedError, AttributeError):
            out = None
        if out is not None and model.get_submodule(name) is out:
            return True
    return False


def _matches(name: str, target_modules: str | Sequence[str]) -> bool:
    """peft's rule: a string is a regex that must match the full name; a list entry matches the name or a suffix."""
    if isinstance(target_modules, str):
        return re.fullmatch(target_modules, name) is not None
    return any(name == key or name.endswith("." + key) for key in target_modules)


def _set_child(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, module)


def inject_multitask_lora(model: nn.Module, *, n_tasks: int, r: int, alpha: float, dropout: float,
                          target_modules: str | Sequence[str], mode: str = DEFAULT_MODE) -> list[str]:
    """Replace every targeted ``nn.Linear`` of ``model`` by a :class:`MultiTaskLoraLinear`, in place.

    Base weights keep their ``requires_grad``; the new ``lora_A (T, r, d_in)`` and ``lora_B (T, d_out, r)`` are
    trainable.

    Parameters
    ----------
    model : nn.Module
        Changed in place; it records the options for :func:`llm.multilora.export_task_adapter`.
    n_tasks, r, alpha, dropout
        ``T``, the rank, LoRA alpha (scaling ``alpha / r``) and the LoRA dropout probability.
    target_modules : str or sequence of str
        ``"all-linear"`` (every ``nn.Linear`` except classification / output heads, as peft), a regex matched
        against the full module name, or a list of names / name suffixes (peft's rules).
    mode : str
        ``"gather"`` or ``"grouped"`` (:data:`llm.multilora.MODES`).

    Returns
    -------
    list of str
        The replaced module names (relative to ``model``), sorted.

    Raises
    ------
    ValueError
        For ``n_tasks`` or ``r`` not an integer >= 1, alpha not finite and > 0, dropout outside ``[0, 1)``, an
        unknown mode, empty ``target_modules``, a model that already holds stacked layers, or when no
        ``nn.Linear`` matches (the message lists the model's linear layers).

    >>> model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
    >>> names = inject_multitask_lora(model, n_tasks=3, r=2, alpha=2.0, dropout=0.0, target_modules=["0"])
    >>> names, type(model[0]).__name__, type(model[2]).__name__
    (['0'], 'MultiTaskLoraLinear', 'Linear')
    """
    check_sizes(n_tasks=n_tasks, r=r, alpha=alpha, dropout=dropout)
    check_mode(mode)
    if isinstance(target_modules, str) and not target_modules:
        raise ValueError("target_modules must not be empty")
    if not isinstance(target_modules, str):
        target_modules = list(target_modules)
        if not target_modules:
            raise ValueError("target_modules must not be empty")
    if any(isinstance(m, MultiTaskLoraLinear) for m in model.modules()):
        raise ValueError("model already holds MultiTaskLoraLinear layers; inject once")
    names = []
    for name, module in model.named_modules():
        if not isinstance(module, nn.Linear) or not name:
            continue
        if isinstance(target_modules, str) and target_modules.lower() == "all-linear":
            hit = not _is_head(name, model)
        else:
            hit = _matches(name, target_modules)
        if hit:
            names.append(name)
    if not names:
        linear = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
        raise ValueError(f"target_modules={target_modules!r} matches no nn.Linear of the model "
                         f"(its linear layers: {linear[:8]}{' ...' if len(linear) > 8 else ''})")
    for name in names:
        base = model.get_submodule(name)
        _set_child(model, name, MultiTaskLoraLinear(base, n_tasks=n_tasks, r=r, alpha=alpha, dropout=dropout,
                                                    mode=mode))
    model._multitask_lora_config = {  # read by export_task_adapter
        "r": int(r), "lora_alpha": float(alpha), "lora_dropout": float(dropout), "n_tasks": int(n_tasks),
        "target_modules": sorted(names),
    }
    return sorted(names)


def inject_multitask_head(model: nn.Module, *, n_tasks: int, module_name: str) -> MultiTaskHead:
    """Replace the ``nn.Linear`` at ``module_name`` by a :class:`MultiTaskHead` whose T heads start as its copies.

    Returns
    -------
    MultiTaskHead
        The new module (now a child of ``model``), ``weight (T, n_labels, hidden)``.

    Raises
    ------
    ValueError
        When ``module_name`` is not a submodule of ``model`` or not an ``nn.Linear``, or ``n_tasks <= 0``.
    """
    try:
        linear = model.get_submodule(module_name)
    except AttributeError as exc:
        raise ValueError(f"module_name={module_name!r} is not a submodule of the model") from exc
    if not isinstance(linear, nn.Linear):
        raise ValueError(f"module_name={module_name!r} is a {type(linear).__name__}, not an nn.Linear")
    head = MultiTaskHead.from_linear(linear, n_tasks)
    _set_child(model, module_name, head)
    return head


def multitask_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """(name, module) of every MultiTaskLoraLinear and MultiTaskHead in ``model``.

    Returns
    -------
    list of (str, nn.Module)
        In ``model.named_modules()`` order; empty when nothing was injected.
    """
    return [(n, m) for n, m in model.named_modules() if isinstance(m, (MultiTaskLoraLinear, MultiTaskHead))]


def set_mode(model: nn.Module, mode: str) -> None:
    """Switch every MultiTaskLoraLinear of ``model`` to ``mode`` ("gather" or "grouped").

    Raises
    ------
    ValueError
        When ``mode`` is not one of :data:`llm.multilora.MODES`.
    """
    check_mode(mode)
    for _, m in multitask_modules(model):
        if isinstance(m, MultiTaskLoraLinear):
            m.mode = mode


@contextlib.contextmanager
def task_ids(model: nn.Module, ids: torch.Tensor) -> Iterator[None]:
    """Within the block, example b of every batch through ``model`` uses task ``ids[b]`` (ids: LongTensor (B,)).

    Works through wrappers (DDP, accelerate) since it walks ``model.modules()``. Nested use is refused.

    Yields
    ------
    None
        The index is cleared from every layer when the block ends, also on an error.

    Raises
    ------
    ValueError
        When the model holds no multi-task layer, ``ids`` is not a 1-D integer tensor, or an id lies outside
        ``[0, T)``.
    RuntimeError
        When a ``task_ids`` block is already active on the model.
    """
    mods = multitask_modules(model)
    if not mods:
        raise ValueError("the model holds no MultiTaskLoraLinear / MultiTaskHead; call inject_multitask_lora first")
    if not isinstance(ids, torch.Tensor) or ids.dim() != 1 or ids.dtype not in (torch.int64, torch.int32):
        raise ValueError(f"ids must be a 1-D integer tensor (one task per example), got {_describe(ids)}")
    n_tasks = mods[0][1].n_tasks
    if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= n_tasks):
        raise ValueError(f"task ids must lie in [0, {n_tasks}), got min {int(ids.min())} max {int(ids.max())}")
    if any(m._task_ids is not None for _, m in mods):
        raise RuntimeError("task_ids is already active on this model; nested task_ids blocks are not supported")
    ids = ids.long()
    for _, m in mods:
        m._task_ids = ids
    try:
        yield
    finally:
        for _, m in mods:
            m._task_ids = None


def _describe(x) -> str:
    if isinstance(x, torch.Tensor):
        return f"tensor of shape {tuple(x.shape)} and dtype {x.dtype}"
    return type(x).__name__


def unload_multitask_lora(model: nn.Module) -> nn.Module:
    """Put the base ``nn.Linear`` layers back (adapters dropped, merged deltas removed); heads become task 0's
    ``nn.Linear`` copy, e.g. to ``save_pretrained`` the retrained encoder.

    Returns
    -------
    nn.Module
        ``model`` itself, changed in place (unchanged when it holds no stacked layer).
    """
    for name, m in multitask_modules(model):
        if isinstance(m, MultiTaskLoraLinear):
            m.unmerge()
            _set_child(model, name, m.base_layer)
        else:
            _set_child(model, name, m.task_linear(0))
    if hasattr(model, "_multitask_lora_config"):
        del model._multitask_lora_config
    return model


def trainable_lora_parameters(model: nn.Module) -> Iterable[nn.Parameter]:
    """The LoRA A and B parameters of every MultiTaskLoraLinear (e.g. for a separate optimiser group).

    Yields
    ------
    torch.nn.Parameter
        ``lora_A (T, r, d_in)`` then ``lora_B (T, d_out, r)`` of each layer, in module order.
    """
    for _, m in multitask_modules(model):
        if isinstance(m, MultiTaskLoraLinear):
            yield m.lora_A
            yield m.lora_B
