"""All tasks' LoRA adapters in one layer: Meta-LoRA retraining with examples of every task in one batch.

Why this is custom code and not peft
------------------------------------
Meta-LoRA retraining (the paper's Section 4.2) trains the base weights together with one LoRA adapter per task.
peft holds one named adapter per task, but only one adapter set is active for a whole batch while training:
``PeftModel.forward(..., adapter_names=[...])`` (peft's "mixed adapter batches") is refused in training mode
(peft/tuners/lora/model.py: "Cannot pass `adapter_names` when the model is in training mode."). With peft the
paper's schedule is therefore one task batch at a time. :class:`MultiTaskLoraLinear` holds the T adapters as
stacked tensors and applies each example's own adapter in one batched product, so examples of all tasks share one
forward and one backward pass. It follows peft's LoRA layer exactly (``peft.tuners.lora.layer.Linear``):

    y_b = W x_b + bias + s * B_{t_b} A_{t_b} dropout(x_b),        s = alpha / r,

with ``A`` of shape ``(T, r, d_in)`` initialised per task with ``kaiming_uniform_(a=sqrt(5))``, ``B`` of shape
``(T, d_out, r)`` initialised to zero (so the adapters are a no-op at init), dropout on the input of the LoRA branch
only, and the delta weight of task t ``scaling * B[t] @ A[t]`` (shape ``(d_out, d_in)``). Equivalence with peft
(delta weights, outputs merged and unmerged, gradients, export / import in peft's format) is tested in
``tests/test_llm_multilora.py``.

Per-task heads: :class:`MultiTaskHead` replaces one ``nn.Linear`` (e.g. BERT's ``classifier`` or RoBERTa's
``classifier.out_proj``) by T stacked copies ``W_head: (T, n_labels, hidden)``, ``b_head: (T, n_labels)``, each
example using its own task's copy (as peft's ``modules_to_save`` keeps one copy of the head per adapter).

Usage (the API the training loop calls)::

    names = inject_multitask_lora(model, n_tasks=T, r=8, alpha=16, dropout=0.1, target_modules="all-linear")
    inject_multitask_head(model, n_tasks=T, module_name="classifier")       # optional
    with task_ids(model, ids):            # ids: LongTensor (B,), the task of each example of the batch
        loss = loss_fn(model(**batch).logits, labels)
        loss.backward()
    export_task_adapter(model, t, "ckpt/adapter_t")       # peft format: PeftModel.from_pretrained(base, dir)
    import_task_adapter(model, t, "ckpt/adapter_t")
    unload_multitask_lora(model)          # plain model again (adapters and heads dropped), e.g. to save the encoder

Batch layout: the task index applies to the leading dimension of every input of a wrapped layer, i.e. example b of
``input_ids`` (B, L) uses task ``ids[b]``. Two forward implementations (``mode``): ``"gather"`` gathers each
example's adapters and uses two ``torch.bmm`` (cost independent of T); ``"grouped"`` loops over the tasks present in
the batch, one pair of matmuls per task on that task's rows. ``benchmarks/llm_speed.py --compare-modes`` times
both in a whole MiniLM training step; "gather" is the default (grouped took 1.21x its step time on the CPU here).

Optimiser caveat: a task absent from a batch gets a zero (not ``None``) gradient for its slices of ``A`` and ``B``,
so AdamW's momentum and weight decay still move them; with batches that contain every task (the batched schedule)
this does not arise.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
from collections.abc import Iterable, Iterator, Sequence

import torch
from torch import nn

from .atomic import atomic_path, atomic_write_text

__all__ = [
    "MultiTaskLoraLinear",
    "MultiTaskHead",
    "inject_multitask_lora",
    "inject_multitask_head",
    "task_ids",
    "export_task_adapter",
    "import_task_adapter",
    "unload_multitask_lora",
    "multitask_modules",
    "trainable_lora_parameters",
    "set_mode",
    "MODES",
]

MODES = ("gather", "grouped")
DEFAULT_MODE = "gather"

# Names of classification / output heads that "all-linear" leaves alone, as peft does (peft's SEQ_CLS_HEAD_NAMES).
_HEAD_NAMES = ("classifier", "score", "lm_head", "cls", "qa_outputs")


class _TaskIndexMixin:
    """The per-example task index, set by :func:`task_ids` and read by ``forward``."""

    n_tasks: int
    _task_ids: torch.Tensor | None

    def _ids_for(self, x: torch.Tensor) -> torch.Tensor:
        ids = self._task_ids
        if ids is None:
            raise RuntimeError(
                f"{type(self).__name__}: no task index set; run the forward pass inside "
                "`with llm.multilora.task_ids(model, ids):` (ids: LongTensor of shape (batch,))"
            )
        if ids.shape[0] != x.shape[0]:
            raise ValueError(
                f"{type(self).__name__}: task index has {ids.shape[0]} entries but the input's leading "
                f"(batch) dimension is {x.shape[0]}; they must be equal"
            )
        if ids.device != x.device:
            ids = ids.to(x.device)
        return ids


class MultiTaskLoraLinear(_TaskIndexMixin, nn.Module):
    """A base ``nn.Linear`` plus T LoRA adapters, example b using adapter ``t_b``.

    Parameters
    ----------
    base_layer : nn.Linear with weight ``W: (d_out, d_in)``; kept as ``self.base_layer`` (trainable unless frozen).
    n_tasks : T >= 1.
    r : rank >= 1.
    alpha : LoRA alpha; ``scaling = alpha / r`` (peft's default, no rsLoRA).
    dropout : probability in [0, 1) of the dropout applied to the LoRA branch's input.
    mode : "gather" or "grouped" (same numbers, different kernels).

    Attributes
    ----------
    lora_A : Parameter ``(T, r, d_in)``; lora_B : Parameter ``(T, d_out, r)``.

    ``forward(x)`` with ``x: (B, ..., d_in)`` returns ``(B, ..., d_out)``:
    ``W x + bias + scaling * B[t_b] (A[t_b] dropout(x_b))``.
    """

    def __init__(self, base_layer: nn.Linear, *, n_tasks: int, r: int, alpha: float, dropout: float = 0.0,
                 mode: str = DEFAULT_MODE):
        super().__init__()
        _check_sizes(n_tasks=n_tasks, r=r, alpha=alpha, dropout=dropout)
        if not isinstance(base_layer, nn.Linear):
            raise TypeError(f"MultiTaskLoraLinear wraps nn.Linear, got {type(base_layer).__name__}")
        _check_mode(mode)
        self.base_layer = base_layer
        self.n_tasks, self.r, self.alpha = int(n_tasks), int(r), float(alpha)
        self.scaling = self.alpha / self.r
        self.in_features, self.out_features = base_layer.in_features, base_layer.out_features
        self.mode = mode
        self.merged_task: int | None = None
        w = base_layer.weight
        self.lora_A = nn.Parameter(torch.empty(n_tasks, r, self.in_features, dtype=w.dtype, device=w.device))
        self.lora_B = nn.Parameter(torch.zeros(n_tasks, self.out_features, r, dtype=w.dtype, device=w.device))
        self.lora_dropout = nn.Dropout(p=dropout) if dropout > 0 else nn.Identity()
        self._task_ids = None
        self.reset_lora_parameters()

    def reset_lora_parameters(self) -> None:
        """peft's default init, task by task: ``A[t]`` kaiming-uniform (a = sqrt(5), fan_in = d_in), ``B[t] = 0``.

        Each ``(r, d_in)`` slice is initialised by its own call, in task order, exactly as peft initialises an
        ``nn.Linear(d_in, r)`` per adapter (a single call on the 3-D tensor would use fan_in = r * d_in).
        """
        with torch.no_grad():
            for t in range(self.n_tasks):
                nn.init.kaiming_uniform_(self.lora_A[t], a=math.sqrt(5))
            self.lora_B.zero_()

    def get_delta_weight(self, t: int) -> torch.Tensor:
        """``scaling * B[t] @ A[t]``, shape ``(d_out, d_in)`` (peft's ``get_delta_weight``)."""
        _check_task(t, self.n_tasks)
        return self.scaling * (self.lora_B[t] @ self.lora_A[t])

    def merge(self, t: int) -> None:
        """Add task t's delta weight into the base weight (then only batches of task t are accepted).

        As peft's ``safe_merge``: the merged weight is computed on a copy and refused if not finite.
        """
        if self.merged_task is not None:
            raise RuntimeError(f"task {self.merged_task} is already merged; unmerge first")
        with torch.no_grad():
            merged = self.base_layer.weight.data + self.get_delta_weight(t).to(self.base_layer.weight.dtype)
            if not torch.isfinite(merged).all():
                raise ValueError(f"merging task {t}'s adapter gives non-finite weights; not merged")
            self.base_layer.weight.data.copy_(merged)
        self.merged_task = int(t)

    def unmerge(self) -> None:
        if self.merged_task is None:
            return
        with torch.no_grad():
            delta = self.get_delta_weight(self.merged_task).to(self.base_layer.weight.dtype)
            self.base_layer.weight.data.sub_(delta)
        self.merged_task = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ids = self._ids_for(x)
        result = self.base_layer(x)
        if self.merged_task is not None:
            if bool((ids != self.merged_task).any()):
                raise RuntimeError(f"task {self.merged_task} is merged but the batch holds other tasks; unmerge first")
            return result
        lead = x.shape
        # dropout's 1 / (1 - p) is folded into the scaling, applied to the small (B, N, r) tensor
        x3, drop_scale = _lora_dropout(x, self.lora_dropout, self.training)
        x3 = x3.reshape(lead[0], -1, lead[-1])  # (B, N, d_in)
        x3 = x3.to(self.lora_A.dtype) if not torch.is_autocast_enabled() else x3
        scaling = self.scaling * drop_scale
        if self.mode == "gather":
            a = self.lora_A.index_select(0, ids)  # (B, r, d_in)
            b = self.lora_B.index_select(0, ids)  # (B, d_out, r)
            h = torch.bmm(x3, a.transpose(1, 2)) * scaling  # (B, N, r)
            res3 = result.reshape(lead[0], -1, self.out_features)
            if torch.is_autocast_enabled():
                out = torch.baddbmm(res3, h, b.transpose(1, 2))
            else:  # as peft: the LoRA branch in the adapters' dtype, the sum in the base's
                out = torch.baddbmm(res3, h.to(res3.dtype), b.transpose(1, 2).to(res3.dtype))
            return out.reshape(*lead[:-1], self.out_features)
        delta = _grouped_delta(x3, ids, self.lora_A, self.lora_B, scaling)
        return result + delta.reshape(*lead[:-1], self.out_features).to(result.dtype)

    def extra_repr(self) -> str:
        return f"n_tasks={self.n_tasks}, r={self.r}, alpha={self.alpha}, mode={self.mode!r}"


def _lora_dropout(x: torch.Tensor, module: nn.Module, training: bool) -> tuple[torch.Tensor, float]:
    """peft's LoRA dropout, as ``(masked x, factor)``: dropout(x) = factor * masked x.

    Each element is kept with probability 1 - p and scaled by 1 / (1 - p) (``nn.Dropout``'s law, what peft
    uses); identity in eval mode (factor 1). On the CPU the keep-mask comes from ``rand(x.shape) >= p`` (about 3x
    faster here than ``nn.Dropout``'s ``bernoulli_``, which was ~10% of a MiniLM training step with 36 adapted
    layers) and the 1 / (1 - p) is returned as ``factor`` so the caller applies it to the small rank-r tensor.
    On other devices the fused ``nn.functional.dropout`` is used (factor 1).
    """
    p = getattr(module, "p", 0.0)
    if not training or p == 0.0:
        return x, 1.0
    if x.device.type != "cpu":
        return nn.functional.dropout(x, p, True), 1.0
    keep = torch.rand(x.shape, dtype=torch.float32 if x.dtype != torch.float64 else x.dtype, device=x.device) >= p
    return torch.where(keep, x, 0.0), 1.0 / (1.0 - p)


def _grouped_delta(x3: torch.Tensor, ids: torch.Tensor, A: torch.Tensor, B: torch.Tensor,
                   scaling: float) -> torch.Tensor:
    """``delta[b] = scaling * x3[b] A[t_b]^T B[t_b]^T`` by one pair of matmuls per task present in the batch."""
    n, length, _ = x3.shape
    delta = x3.new_zeros(n, length, B.shape[1])
    for t in torch.unique(ids).tolist():
        rows = (ids == t).nonzero(as_tuple=True)[0]
        xt = x3.index_select(0, rows)
        dt = (xt @ A[t].transpose(0, 1)) @ (B[t].transpose(0, 1) * scaling)
        delta = delta.index_copy(0, rows, dt.to(delta.dtype))
    return delta


class MultiTaskHead(_TaskIndexMixin, nn.Module):
    """T stacked linear heads, example b using head ``t_b``.

    ``weight: (T, n_labels, hidden)``, ``bias: (T, n_labels)``; ``forward(x)`` with ``x: (B, ..., hidden)`` returns
    ``(B, ..., n_labels)`` with ``y_b = weight[t_b] x_b + bias[t_b]``. Built from an ``nn.Linear`` by
    :meth:`from_linear`, every task's head starting as a copy of it (what peft's ``modules_to_save`` does per adapter).
    """

    def __init__(self, n_tasks: int, hidden: int, n_labels: int, *, bias: bool = True, dtype=None, device=None):
        super().__init__()
        if n_tasks <= 0:
            raise ValueError(f"n_tasks must be >= 1, got {n_tasks}")
        self.n_tasks, self.in_features, self.out_features = int(n_tasks), int(hidden), int(n_labels)
        self.weight = nn.Parameter(torch.zeros(n_tasks, n_labels, hidden, dtype=dtype, device=device))
        self.bias = nn.Parameter(torch.zeros(n_tasks, n_labels, dtype=dtype, device=device)) if bias else None
        self._task_ids = None

    @classmethod
    def from_linear(cls, linear: nn.Linear, n_tasks: int) -> MultiTaskHead:
        head = cls(n_tasks, linear.in_features, linear.out_features, bias=linear.bias is not None,
                   dtype=linear.weight.dtype, device=linear.weight.device)
        with torch.no_grad():
            head.weight.copy_(linear.weight.detach().expand(n_tasks, -1, -1))
            if linear.bias is not None:
                head.bias.copy_(linear.bias.detach().expand(n_tasks, -1))
        return head

    def task_linear(self, t: int) -> nn.Linear:
        """Task t's head as a fresh ``nn.Linear`` (a copy)."""
        _check_task(t, self.n_tasks)
        lin = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None,
                        dtype=self.weight.dtype, device=self.weight.device)
        with torch.no_grad():
            lin.weight.copy_(self.weight[t])
            if self.bias is not None:
                lin.bias.copy_(self.bias[t])
        return lin

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ids = self._ids_for(x)
        lead = x.shape
        x3 = x.reshape(lead[0], -1, lead[-1])
        w = self.weight.index_select(0, ids)  # (B, n_labels, hidden)
        if torch.is_autocast_enabled():
            y = torch.bmm(x3, w.transpose(1, 2))
        else:
            y = torch.bmm(x3.to(w.dtype), w.transpose(1, 2))
        if self.bias is not None:
            y = y + self.bias.index_select(0, ids).unsqueeze(1).to(y.dtype)
        return y.reshape(*lead[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"n_tasks={self.n_tasks}, in_features={self.in_features}, out_features={self.out_features}"


# ----------------------------------------------------------------------------------------------------------------
# injection, task index, export / import


def _check_sizes(*, n_tasks, r, alpha, dropout) -> None:
    if not isinstance(n_tasks, int) or isinstance(n_tasks, bool) or n_tasks <= 0:
        raise ValueError(f"n_tasks must be an integer >= 1, got {n_tasks!r}")
    if not isinstance(r, int) or isinstance(r, bool) or r <= 0:
        raise ValueError(f"LoRA rank r must be an integer >= 1, got {r!r}")
    if not (isinstance(alpha, (int, float)) and math.isfinite(alpha) and alpha > 0):
        raise ValueError(f"LoRA alpha must be a finite number > 0, got {alpha!r}")
    if not (isinstance(dropout, (int, float)) and 0.0 <= dropout < 1.0):
        raise ValueError(f"LoRA dropout must be in [0, 1), got {dropout!r}")


def _check_mode(mode: str) -> None:
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")


def _check_task(t, n_tasks: int) -> None:
    if not isinstance(t, int) or isinstance(t, bool) or not 0 <= t < n_tasks:
        raise ValueError(f"task index must be an integer in [0, {n_tasks}), got {t!r}")


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

    ``target_modules``: ``"all-linear"`` (every ``nn.Linear`` except classification / output heads, as peft),
    a regex matched against the full module name, or a list of names / name suffixes (peft's rules).
    Returns the replaced module names (relative to ``model``), sorted. Base weights keep their ``requires_grad``.
    Raises ValueError for ``n_tasks <= 0``, ``r <= 0``, bad alpha / dropout, or when no module matches.
    """
    _check_sizes(n_tasks=n_tasks, r=r, alpha=alpha, dropout=dropout)
    _check_mode(mode)
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
    """Replace the ``nn.Linear`` at ``module_name`` by a :class:`MultiTaskHead` whose T heads start as its copies."""
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
    """(name, module) of every MultiTaskLoraLinear and MultiTaskHead in ``model``."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, (MultiTaskLoraLinear, MultiTaskHead))]


def set_mode(model: nn.Module, mode: str) -> None:
    """Switch every MultiTaskLoraLinear of ``model`` to ``mode`` ("gather" or "grouped")."""
    _check_mode(mode)
    for _, m in multitask_modules(model):
        if isinstance(m, MultiTaskLoraLinear):
            m.mode = mode


@contextlib.contextmanager
def task_ids(model: nn.Module, ids: torch.Tensor) -> Iterator[None]:
    """Within the block, example b of every batch through ``model`` uses task ``ids[b]`` (ids: LongTensor (B,)).

    Works through wrappers (DDP, accelerate) since it walks ``model.modules()``. Nested use is refused.
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


def _peft_prefix(name: str) -> str:
    return f"base_model.model.{name}"


# peft's sequence-classification models save these whole modules with every adapter (PeftModelForSequenceClassification)
_PEFT_SEQ_CLS_MODULES = ("classifier", "score")


def _saved_modules(model: nn.Module, heads: list[str], task_type: str | None) -> list[str]:
    """The modules peft will treat as ``modules_to_save`` for this export: our per-task heads, plus (SEQ_CLS) the
    whole classification module that holds them; names nested in another listed module are dropped."""
    names = set(heads)
    if str(getattr(task_type, "value", task_type)) == "SEQ_CLS":
        names |= {n for n in _PEFT_SEQ_CLS_MODULES if _has_submodule(model, n)}
    return sorted(n for n in names if not any(n.startswith(o + ".") for o in names))


def _has_submodule(model: nn.Module, name: str) -> bool:
    try:
        model.get_submodule(name)
    except AttributeError:
        return False
    return True


def _module_tensors(module: nn.Module, prefix: str, t: int) -> dict[str, torch.Tensor]:
    """Every parameter of ``module`` under ``prefix``, task t's slice for a MultiTaskHead inside it."""
    out = {}
    for sub_name, sub in module.named_modules():
        for pname, p in sub.named_parameters(recurse=False):
            key = ".".join(x for x in (prefix, sub_name, pname) if x)
            value = p[t] if isinstance(sub, MultiTaskHead) else p
            out[key] = value.detach().cpu().contiguous().clone()
    return out


def export_task_adapter(model: nn.Module, t: int, out_dir: str | os.PathLike, *,
                        base_model_name_or_path: str | None = None, task_type: str | None = None) -> str:
    """Write task t's adapter (and its head slices, if any) in peft's format; returns ``out_dir``.

    ``out_dir/adapter_config.json`` (a ``peft.LoraConfig`` with the replaced module names as ``target_modules``)
    and ``out_dir/adapter_model.safetensors`` with keys ``base_model.model.<name>.lora_A.weight`` (r, d_in) and
    ``...lora_B.weight`` (d_out, r); MultiTaskHead slices go under ``modules_to_save`` as
    ``base_model.model.<name>.weight`` / ``.bias``. With ``task_type='SEQ_CLS'`` peft saves and expects the whole
    classification module (``classifier`` / ``score``: for RoBERTa its ``dense`` layer as well), so that module
    is written whole. ``peft.PeftModel.from_pretrained(base, out_dir)`` on a model of the same class and base
    weights as ``model`` (before injection) then computes what ``model`` computes for task t. Both files are
    written atomically (temporary file + rename).
    """
    import peft
    from safetensors.torch import save_file

    cfg = getattr(model, "_multitask_lora_config", None)
    if cfg is None:
        raise ValueError("the model holds no multi-task LoRA (inject_multitask_lora was not called on it)")
    _check_task(t, cfg["n_tasks"])
    tensors: dict[str, torch.Tensor] = {}
    heads = []
    for name, m in multitask_modules(model):
        if isinstance(m, MultiTaskLoraLinear):
            tensors[_peft_prefix(name) + ".lora_A.weight"] = m.lora_A[t].detach().cpu().contiguous().clone()
            tensors[_peft_prefix(name) + ".lora_B.weight"] = m.lora_B[t].detach().cpu().contiguous().clone()
        else:
            heads.append(name)
    saved = _saved_modules(model, heads, task_type)
    for name in saved:
        tensors.update(_module_tensors(model.get_submodule(name), _peft_prefix(name), t))
    lora_cfg = peft.LoraConfig(
        r=cfg["r"], lora_alpha=cfg["lora_alpha"], lora_dropout=cfg["lora_dropout"],
        target_modules=list(cfg["target_modules"]), modules_to_save=saved or None,
        base_model_name_or_path=base_model_name_or_path, task_type=task_type,
    )
    out_dir = os.fspath(out_dir)
    os.makedirs(out_dir, exist_ok=True)
    config_dict = lora_cfg.to_dict()
    config_dict = json.loads(json.dumps(config_dict, default=_json_default))
    atomic_write_text(os.path.join(out_dir, "adapter_config.json"), json.dumps(config_dict, indent=2, sort_keys=True))
    with atomic_path(os.path.join(out_dir, "adapter_model.safetensors"), suffix=".safetensors") as tmp:
        save_file(tensors, tmp, metadata={"format": "pt"})
    return out_dir


def _json_default(obj):
    if isinstance(obj, (set, frozenset)):
        return sorted(obj)
    if hasattr(obj, "value"):  # enums (TaskType, PeftType)
        return obj.value
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def _strip_adapter_name(key: str) -> str:
    # peft saves without the adapter name; accept "lora_A.<adapter>.weight" too (a state dict taken from a model)
    return re.sub(r"\.(lora_[AB])\.[^.]+\.weight$", r".\1.weight", key)


def import_task_adapter(model: nn.Module, t: int, adapter_dir: str | os.PathLike) -> None:
    """Load a peft-format LoRA adapter (as written by :func:`export_task_adapter` or peft) into task t's slices.

    Checks rank, alpha and that every wrapped module receives exactly its A and B (shapes included); head slices
    are loaded for MultiTaskHead modules when the file holds them. Raises ValueError naming the mismatch.
    """
    from safetensors.torch import load_file

    cfg = getattr(model, "_multitask_lora_config", None)
    if cfg is None:
        raise ValueError("the model holds no multi-task LoRA (inject_multitask_lora was not called on it)")
    _check_task(t, cfg["n_tasks"])
    adapter_dir = os.fspath(adapter_dir)
    cfg_path = os.path.join(adapter_dir, "adapter_config.json")
    weights_path = os.path.join(adapter_dir, "adapter_model.safetensors")
    for p in (cfg_path, weights_path):
        if not os.path.isfile(p):
            raise ValueError(f"{p}: not found (a peft adapter folder holds adapter_config.json and "
                             "adapter_model.safetensors)")
    with open(cfg_path, encoding="utf-8") as fh:
        try:
            saved = json.load(fh)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ValueError(f"{cfg_path}: not valid JSON ({exc})") from None
    if not isinstance(saved, dict):
        raise ValueError(f"{cfg_path}: a peft adapter config is a JSON object, got {type(saved).__name__}")
    if saved.get("r") != cfg["r"] or saved.get("lora_alpha") != cfg["lora_alpha"]:
        raise ValueError(f"{cfg_path}: r={saved.get('r')}, lora_alpha={saved.get('lora_alpha')} but the model's "
                         f"adapters have r={cfg['r']}, lora_alpha={cfg['lora_alpha']}")
    _refuse_unsupported(saved, cfg, cfg_path)
    try:
        state = {_strip_adapter_name(k): v for k, v in load_file(weights_path).items()}
    except Exception as exc:  # safetensors raises its own error type for a damaged file
        raise ValueError(f"{weights_path}: not a readable safetensors file ({exc})") from None
    expected = set()
    with torch.no_grad():
        for name, m in multitask_modules(model):
            pre = _peft_prefix(name)
            if isinstance(m, MultiTaskLoraLinear):
                for key, param in ((pre + ".lora_A.weight", m.lora_A), (pre + ".lora_B.weight", m.lora_B)):
                    expected.add(key)
                    if key not in state:
                        raise ValueError(f"{weights_path}: missing {key}")
                    _check_shape(weights_path, key, state[key], param.shape[1:])
                    param[t].copy_(state[key].to(param.dtype))
            else:
                for suffix, param in ((".weight", m.weight), (".bias", m.bias)):
                    key = pre + suffix
                    if param is None or key not in state:
                        continue
                    expected.add(key)
                    _check_shape(weights_path, key, state[key], param.shape[1:])
                    param[t].copy_(state[key].to(param.dtype))
    extra = sorted(k for k in state if ".lora_" in k and k not in expected)
    if extra:
        raise ValueError(f"{weights_path}: adapter weights for modules the model does not wrap: {extra[:4]}")
    _check_shared_weights(model, state, expected, weights_path)


# Fields of a saved peft LoraConfig that change what an adapter computes and that MultiTaskLoraLinear does not
# implement: an adapter using any of them is refused rather than imported with different outputs.
_UNSUPPORTED = {"use_rslora": False, "use_dora": False, "fan_in_fan_out": False, "lora_bias": False, "bias": "none",
                "layer_replication": None, "use_qalora": False, "trainable_token_indices": None}


def _refuse_unsupported(saved: dict, cfg: dict, cfg_path: str) -> None:
    for key, default in _UNSUPPORTED.items():
        value = saved.get(key, default)
        if value not in (default, None, False, {}, []) and value != default:
            raise ValueError(f"{cfg_path}: {key}={value!r} changes the adapter's outputs and is not supported by "
                             f"MultiTaskLoraLinear (only {key}={default!r})")
    for key, glob in (("rank_pattern", cfg["r"]), ("alpha_pattern", cfg["lora_alpha"])):
        odd = {k: v for k, v in (saved.get(key) or {}).items() if float(v) != float(glob)}
        if odd:
            raise ValueError(f"{cfg_path}: {key} {odd} gives some modules another "
                             f"{'rank' if key == 'rank_pattern' else 'alpha'} than {glob}; MultiTaskLoraLinear "
                             "has one rank and one alpha for all modules")


def _check_shape(path: str, key: str, value: torch.Tensor, shape) -> None:
    if tuple(value.shape) != tuple(shape):
        raise ValueError(f"{path}: {key} has shape {tuple(value.shape)}, expected {tuple(shape)}")


def _check_shared_weights(model: nn.Module, state: dict, used: set, path: str) -> None:
    """Weights in the file that are neither LoRA nor a per-task head slice (e.g. RoBERTa's ``classifier.dense``
    saved whole by peft for SEQ_CLS) belong to modules every task shares: accepted only when they equal the
    model's own, since importing them would change every task."""
    params = {_peft_prefix(n.replace(".base_layer.", ".")): p for n, p in model.named_parameters()}
    for key in sorted(set(state) - used):
        if ".lora_" in key:
            continue
        mine = params.get(key)
        if mine is None:
            raise ValueError(f"{path}: holds {key}, a module the model does not have")
        if tuple(mine.shape) != tuple(state[key].shape) or not torch.equal(mine.detach().cpu(),
                                                                            state[key].to(mine.dtype)):
            raise ValueError(f"{path}: {key} differs from the model's own weights; it is shared by every task, "
                             "so importing it would change the other tasks too")


def unload_multitask_lora(model: nn.Module) -> nn.Module:
    """Put the base ``nn.Linear`` layers back (adapters dropped, merged deltas removed); heads become task 0's
    ``nn.Linear`` copy. Returns ``model`` (changed in place), e.g. to ``save_pretrained`` the retrained encoder."""
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
    """The LoRA A and B parameters of every MultiTaskLoraLinear (e.g. for a separate optimiser group)."""
    for _, m in multitask_modules(model):
        if isinstance(m, MultiTaskLoraLinear):
            yield m.lora_A
            yield m.lora_B
