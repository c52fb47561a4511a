"""The stacked layers of :mod:`llm.multilora`: T LoRA adapters (or T linear heads) in one module, example b using
task ``t_b``'s (the formulas, and why this is not peft, are in the package docstring).
"""

from __future__ import annotations

import math

import torch
from torch import nn

__all__ = ["MultiTaskLoraLinear", "MultiTaskHead", "MODES", "DEFAULT_MODE", "check_sizes", "check_mode",
           "check_task"]

MODES = ("gather", "grouped")
DEFAULT_MODE = "gather"


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
    """A base ``nn.Linear`` plus T LoRA adapters, example b using adapter ``t_b`` (peft's ``lora.Linear`` per example).

    ``forward(x)``: ``(B, ..., d_in) -> (B, ..., d_out)``, ``W x_b + bias + scaling * B[t_b] (A[t_b] dropout(x_b))``
    with ``scaling = alpha / r`` (peft's default, no rsLoRA). ``base_layer`` (``W``: ``(d_out, d_in)``) is kept and
    trainable unless frozen; ``dropout`` acts on the LoRA branch's input; ``mode`` ``'gather'`` or ``'grouped'``: the
    same numbers by other kernels. ``lora_A`` ``(T, r, d_in)`` starts kaiming-uniform per task and ``lora_B``
    ``(T, d_out, r)`` at zero (a no-op at init, as peft); ``merged_task`` is the task merged by :meth:`merge`, if any.

    Raises
    ------
    ValueError
        ``n_tasks`` or ``r`` not an integer >= 1, ``alpha`` not finite > 0, ``dropout`` not in ``[0, 1)``, bad ``mode``.
    TypeError
        When ``base_layer`` is not an ``nn.Linear``.

    >>> layer = MultiTaskLoraLinear(nn.Linear(4, 3), n_tasks=2, r=2, alpha=4.0)
    >>> tuple(layer.lora_A.shape), tuple(layer.lora_B.shape), layer.scaling
    ((2, 2, 4), (2, 3, 2), 2.0)
    """

    def __init__(self, base_layer: nn.Linear, *, n_tasks: int, r: int, alpha: float, dropout: float = 0.0,
                 mode: str = DEFAULT_MODE):
        super().__init__()
        check_sizes(n_tasks=n_tasks, r=r, alpha=alpha, dropout=dropout)
        if not isinstance(base_layer, nn.Linear):
            raise TypeError(f"MultiTaskLoraLinear wraps nn.Linear, got {type(base_layer).__name__}")
        check_mode(mode)
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
        """peft's default init, task by task: ``A[t]`` kaiming-uniform (``a = sqrt(5)``, fan_in ``d_in``), ``B[t] = 0``.

        One call per ``(r, d_in)`` slice, in task order, as peft initialises an ``nn.Linear(d_in, r)`` per adapter (one
        call on the 3-D tensor would use fan_in ``r * d_in``).
        """
        with torch.no_grad():
            for t in range(self.n_tasks):
                nn.init.kaiming_uniform_(self.lora_A[t], a=math.sqrt(5))
            self.lora_B.zero_()

    def get_delta_weight(self, t: int) -> torch.Tensor:
        """Task t's delta weight ``scaling * B[t] @ A[t]`` (peft's ``get_delta_weight``), with its autograd graph.

        Returns
        -------
        torch.Tensor
            ``(d_out, d_in)``, of rank at most ``r``.

        Raises
        ------
        ValueError
            When ``t`` is not an integer in ``[0, T)``.
        """
        check_task(t, self.n_tasks)
        return self.scaling * (self.lora_B[t] @ self.lora_A[t])

    def merge(self, t: int) -> None:
        """Add task t's delta weight into the base weight; then only batches of task t are accepted.

        As peft's ``safe_merge``, the sum is computed on a copy and refused, nothing changed, when it is not finite.

        Raises
        ------
        RuntimeError
            When a task is already merged.
        ValueError
            When ``t`` is not an integer in ``[0, T)``, or the merged weight would not be finite.
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
        """Subtract the merged task's delta weight from the base weight again (a no-op when none is merged).

        The base weight then equals its value before :meth:`merge` up to float rounding (peft's ``unmerge``).
        """
        if self.merged_task is None:
            return
        with torch.no_grad():
            delta = self.get_delta_weight(self.merged_task).to(self.base_layer.weight.dtype)
            self.base_layer.weight.data.sub_(delta)
        self.merged_task = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``W x_b + bias + scaling * B[t_b] A[t_b] dropout(x_b)`` for every example b (``t_b`` set by ``task_ids``).

        Returns
        -------
        torch.Tensor
            ``(B, ..., d_out)`` for ``x`` ``(B, ..., d_in)``, in the base layer's dtype (LoRA branch: the adapters').

        Raises
        ------
        RuntimeError
            When no task index is set, or a task is merged and the batch holds another.
        ValueError
            When the task index does not have one entry per example (``B``).
        """
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
        """The sizes shown in ``repr(module)``.

        Returns
        -------
        str
            ``"n_tasks=T, r=r, alpha=alpha, mode='gather'"``.
        """
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
    """T stacked linear heads, example b using head ``t_b``: ``y_b = weight[t_b] x_b + bias[t_b]``.

    ``weight`` ``(T, n_labels, hidden)`` and (with ``bias``) ``bias`` ``(T, n_labels)`` start at zero in ``dtype`` on
    ``device``; :meth:`from_linear` starts every task's head as a copy of an ``nn.Linear`` (what peft's
    ``modules_to_save`` does per adapter).

    Raises
    ------
    ValueError
        For ``n_tasks <= 0``.
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
        """``T = n_tasks`` copies of ``linear`` (weight ``(n_labels, hidden)``; dtype, device kept) as one stacked head.

        Returns
        -------
        MultiTaskHead
            ``weight[t]`` equal to ``linear.weight`` and ``bias[t]`` to ``linear.bias`` for every t.

        Raises
        ------
        ValueError
            For ``n_tasks <= 0``.

        >>> lin = nn.Linear(4, 2)
        >>> head = MultiTaskHead.from_linear(lin, 3)
        >>> tuple(head.weight.shape), torch.equal(head.weight[2], lin.weight)
        ((3, 2, 4), True)
        """
        head = cls(n_tasks, linear.in_features, linear.out_features, bias=linear.bias is not None,
                   dtype=linear.weight.dtype, device=linear.weight.device)
        with torch.no_grad():
            head.weight.copy_(linear.weight.detach().expand(n_tasks, -1, -1))
            if linear.bias is not None:
                head.bias.copy_(linear.bias.detach().expand(n_tasks, -1))
        return head

    def task_linear(self, t: int) -> nn.Linear:
        """Task t's head as a fresh ``nn.Linear`` (a detached copy of ``weight[t]``, ``bias[t]``).

        Returns
        -------
        nn.Linear
            ``hidden -> n_labels``.

        Raises
        ------
        ValueError
            When ``t`` is not an integer in ``[0, T)``.
        """
        check_task(t, self.n_tasks)
        lin = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None,
                        dtype=self.weight.dtype, device=self.weight.device)
        with torch.no_grad():
            lin.weight.copy_(self.weight[t])
            if self.bias is not None:
                lin.bias.copy_(self.bias[t])
        return lin

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``y_b = weight[t_b] x_b + bias[t_b]`` for every example b (``t_b`` set by ``task_ids``).

        Returns
        -------
        torch.Tensor
            ``(B, ..., n_labels)`` for ``x`` ``(B, ..., hidden)``.

        Raises
        ------
        RuntimeError
            When no task index is set.
        ValueError
            When the task index does not have one entry per example (``B``).
        """
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
        """The sizes shown in ``repr(module)``.

        Returns
        -------
        str
            ``"n_tasks=T, in_features=hidden, out_features=n_labels"``.
        """
        return f"n_tasks={self.n_tasks}, in_features={self.in_features}, out_features={self.out_features}"


def check_sizes(*, n_tasks, r, alpha, dropout) -> None:
    """Refuse sizes a stacked layer cannot have.

    Raises
    ------
    ValueError
        ``n_tasks`` or ``r`` not an integer >= 1, ``alpha`` not a finite number > 0, or ``dropout`` not in ``[0, 1)``.
    """
    if not isinstance(n_tasks, int) or isinstance(n_tasks, bool) or n_tasks <= 0:
        raise ValueError(f"n_tasks must be an integer >= 1, got {n_tasks!r}")
    if not isinstance(r, int) or isinstance(r, bool) or r <= 0:
        raise ValueError(f"LoRA rank r must be an integer >= 1, got {r!r}")
    if not (isinstance(alpha, (int, float)) and math.isfinite(alpha) and alpha > 0):
        raise ValueError(f"LoRA alpha must be a finite number > 0, got {alpha!r}")
    if not (isinstance(dropout, (int, float)) and 0.0 <= dropout < 1.0):
        raise ValueError(f"LoRA dropout must be in [0, 1), got {dropout!r}")


def check_mode(mode: str) -> None:
    """Refuse a forward implementation that is not one of :data:`MODES`.

    Raises
    ------
    ValueError
        When ``mode`` is not one of :data:`MODES`.

    >>> check_mode("gather")
    >>> check_mode("loop")
    Traceback (most recent call last):
    ValueError: mode must be one of ('gather', 'grouped'), got 'loop'
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")


def check_task(t, n_tasks: int) -> None:
    """Refuse a task index outside ``[0, n_tasks)``.

    Raises
    ------
    ValueError
        When ``t`` is not an integer (``bool`` excluded) in ``[0, n_tasks)``.

    >>> check_task(1, 2)
    >>> check_task(2, 2)
    Traceback (most recent call last):
    ValueError: task index must be an integer in [0, 2), got 2
    """
    if not isinstance(t, int) or isinstance(t, bool) or not 0 <= t < n_tasks:
        raise ValueError(f"task index must be an integer in [0, {n_tasks}), got {t!r}")
