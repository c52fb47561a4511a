"""Per-task LoRA adapters of a :class:`llm.models.Scorer`: what an adapter type must provide, and the registry.

An *adapter type* holds one rank-``r`` LoRA adapter per task on the linear layers of an HF encoder and routes each
sequence of a batch through its own task's adapter. :class:`TaskAdapters` is everything the rest of ``llm`` asks
of one (``Scorer.encode`` calls :meth:`~TaskAdapters.select`, ``llm.checkpoint`` calls
:meth:`~TaskAdapters.export`, ``llm.train`` reads :attr:`~TaskAdapters.one_task_per_batch` to build its batches),
and :data:`ADAPTERS` maps a schedule name to the class that builds it. The command line's ``--schedule`` choices,
:data:`llm.train.SCHEDULES` and the default schedule are read from :data:`ADAPTERS`; as in peft's ordered
dispatchers (``peft/tuners/lora/model.py``), the order is the order of preference: the first entry is the
default, and fine-tuning (every test task in one batch) takes the first entry that accepts mixed batches.

Adding an adapter type: write a class with the constructor signature of :data:`AdapterFactory` that satisfies
:class:`TaskAdapters` and whose trainable tensors have :data:`llm.config.LORA_PREFIX` in their parameter names
(how ``Scorer.lora_parameters`` and the checkpoints find them), then add one line to :data:`ADAPTERS`.

This module does not import torch or peft until an adapter is built, so that ``python -m llm --help`` stays quick.

>>> list(ADAPTERS), default_schedule(), finetune_schedule()
(['batched', 'sequential'], 'batched', 'batched')
>>> [ADAPTERS[name].one_task_per_batch for name in ADAPTERS]
[False, True]
"""

from __future__ import annotations

import contextlib
import copy
import os
from collections.abc import Callable
from typing import TYPE_CHECKING, ContextManager, Protocol, runtime_checkable

from .config import LORA_PREFIX, LLMError

if TYPE_CHECKING:
    import torch
    from torch import nn

__all__ = ["TaskAdapters", "AdapterFactory", "PeftAdapters", "BatchedAdapters", "ADAPTERS", "default_schedule",
           "finetune_schedule", "adapter_type", "TABLE_SCHEDULE"]


@runtime_checkable
class TaskAdapters(Protocol):
    """One LoRA adapter per task on an HF model: what ``Scorer``, ``llm.train`` and ``llm.checkpoint`` call.

    Attributes
    ----------
    one_task_per_batch : bool
        True when a forward pass can use one task's adapter only: the training batches then hold one task each
        and :meth:`select` always receives ``task``.
    help : str
        One line for the command line's ``--schedule`` help.
    """

    one_task_per_batch: bool
    help: str

    def select(self, pair_tasks: torch.Tensor, task: int | None) -> ContextManager[None]:
        """A context in which the model's forward pass uses adapter ``pair_tasks[p]`` for sequence ``p``.

        Parameters
        ----------
        pair_tasks : torch.Tensor
            ``(P,)`` integer task index of each of the ``P`` sequences of the batch.
        task : int or None
            The one task of every sequence, or ``None`` for a mixed batch.

        Returns
        -------
        ContextManager[None]
            Entered around the forward pass; the routing holds only inside it.
        """

    def export(self, out_dir: str) -> None:
        """Write every task's adapter in peft's format under ``out_dir/task{t}/`` (``PeftModel.from_pretrained``
        on the base model reads it back).

        Parameters
        ----------
        out_dir : str
            Folder to write into (created when missing).
        """


# (hf_model, n_tasks T, rank r, lora_alpha, lora_dropout, target-module regex) -> the adapters, injected in place
AdapterFactory = Callable[["nn.Module", int, int, float, float, str], TaskAdapters]


class PeftAdapters:
    """One peft named adapter per task (``task0`` .. ``task{T-1}``): one task per batch (the reference schedule).

    Parameters
    ----------
    hf_model : transformers.PreTrainedModel
        The model to adapt; peft wraps it (``self.peft``) and injects ``T`` LoRA adapters in place.
    n_tasks : int
        ``T``, the number of adapters.
    r : int
        LoRA rank of each adapter (``lora_A (r, d_in)``, ``lora_B (d_out, r)`` per adapted layer).
    alpha : float
        LoRA alpha; peft's scaling ``alpha / r``.
    dropout : float
        LoRA dropout probability in ``[0, 1)``.
    targets : str, optional
        Regex (full match) of the adapted module names (default :data:`llm.models.LORA_TARGETS`).

    Raises
    ------
    ModelError
        For a rank that is not a positive integer.
    ValueError
        From peft, when ``targets`` matches no module of ``hf_model``.
    """

    one_task_per_batch = True
    help = "peft named adapters, one task per batch"

    def __init__(self, hf_model, n_tasks: int, r: int, alpha: float, dropout: float, targets: str | None = None):
        from peft import get_peft_model

        from .models import LORA_TARGETS, lora_config

        self.config = lora_config(r, alpha, dropout, targets or LORA_TARGETS)
        self.names = [f"task{t}" for t in range(n_tasks)]
        self.peft = get_peft_model(hf_model, copy.deepcopy(self.config), adapter_name=self.names[0])
        for name in self.names[1:]:
            self.peft.add_adapter(name, copy.deepcopy(self.config))
        self.peft.base_model.set_adapter(self.names[0])

    @contextlib.contextmanager
    def select(self, pair_tasks, task: int | None):
        """Activate task ``task``'s adapter (see :meth:`TaskAdapters.select`).

        Parameters
        ----------
        pair_tasks : torch.Tensor
            ``(P,)`` task index of each sequence (unused: every sequence is of task ``task``).
        task : int or None
            The task whose adapter the forward pass uses.

        Yields
        ------
        None
            The adapter stays active after the block (peft keeps one active adapter).

        Raises
        ------
        ValueError
            For a mixed batch (``task is None``).
        """
        if task is None:
            raise ValueError("the sequential schedule needs batches of one task (got a mixed batch)")
        self.peft.base_model.set_adapter(self.names[task])
        # peft's set_adapter also turns requires_grad off for the other adapters; keep it on, so that the set of
        # trainable tensors never changes (DDP registers it once). An adapter outside the forward pass gets no
        # gradient at all (None), so AdamW leaves it exactly as it is.
        for n, p in self.peft.base_model.model.named_parameters():
            if LORA_PREFIX in n:
                p.requires_grad_(True)
        yield

    def export(self, out_dir: str) -> None:
        """Every task's adapter in peft's format under ``out_dir/task{t}/`` (``PeftModel.save_pretrained``).

        Parameters
        ----------
        out_dir : str
            Folder to write into.
        """
        self.peft.save_pretrained(out_dir, selected_adapters=self.names)


class BatchedAdapters:
    """All tasks' adapters stacked in ``llm.multilora`` layers: a mixed batch with per-example task ids.

    Parameters
    ----------
    hf_model, n_tasks, r, alpha, dropout, targets
        As for :class:`PeftAdapters` (the :data:`AdapterFactory` signature); here every targeted ``nn.Linear``
        of ``hf_model`` is replaced in place by a :class:`llm.multilora.MultiTaskLoraLinear` holding
        ``lora_A (T, r, d_in)`` and ``lora_B (T, d_out, r)``.

    Raises
    ------
    ModelError
        For a rank that is not a positive integer.
    ValueError
        When ``alpha`` or ``dropout`` is out of range, or ``targets`` matches no ``nn.Linear`` of ``hf_model``
        (:func:`llm.multilora.inject_multitask_lora`).
    """

    one_task_per_batch = False
    help = "llm.multilora stacked adapters, every task in one batch"

    def __init__(self, hf_model, n_tasks: int, r: int, alpha: float, dropout: float, targets: str | None = None):
        from . import multilora
        from .models import LORA_TARGETS, lora_config

        self.multilora = multilora
        lora_config(r, alpha, dropout)  # validates r
        self.n_tasks = n_tasks
        self.model = hf_model
        self.replaced = multilora.inject_multitask_lora(hf_model, n_tasks=n_tasks, r=r, alpha=alpha,
                                                        dropout=dropout, target_modules=targets or LORA_TARGETS)

    def select(self, pair_tasks, task: int | None):
        """Per-pair task index ``(P,)`` for every stacked layer during the forward pass.

        Parameters
        ----------
        pair_tasks : torch.Tensor
            ``(P,)`` integer task index of each sequence of the batch.
        task : int or None
            Unused: mixed batches are routed by ``pair_tasks`` alone.

        Returns
        -------
        ContextManager[None]
            :func:`llm.multilora.task_ids` of the model and ``pair_tasks``.

        Raises
        ------
        ValueError
            When ``pair_tasks`` is not a 1-D integer tensor or holds an index outside ``[0, T)``.
        RuntimeError
            When a task index is already set on the model (nested use).
        """
        return self.multilora.task_ids(self.model, pair_tasks)

    def export(self, out_dir: str) -> None:
        """Every task's adapter in peft's format under ``out_dir/task{t}/``
        (:func:`llm.multilora.export_task_adapter`).

        Parameters
        ----------
        out_dir : str
            Folder to write into.
        """
        name = getattr(self.model.config, "_name_or_path", None) or None
        for t in range(self.n_tasks):
            self.multilora.export_task_adapter(self.model, t, os.path.join(out_dir, f"task{t}"),
                                               base_model_name_or_path=name)


# The registry: schedule name -> adapter type, in order of preference (the first is the default).
ADAPTERS: dict[str, type] = {
    "batched": BatchedAdapters,
    "sequential": PeftAdapters,
}


#: the Meta-LoRA schedule of ``llm table`` when none is given: the reference, peft named adapters with one task per
#: batch (as the paper's code), with which ``results/llm`` was made; ``retrain`` defaults to :func:`default_schedule`
TABLE_SCHEDULE = "sequential"


def default_schedule() -> str:
    """The Meta-LoRA schedule used when none is given: the first entry of :data:`ADAPTERS`.

    Returns
    -------
    str
        A key of :data:`ADAPTERS`.
    """
    return next(iter(ADAPTERS))


def finetune_schedule() -> str:
    """The adapter type of fine-tuning, which trains every test task in one batch: the first entry of
    :data:`ADAPTERS` that accepts mixed batches.

    Returns
    -------
    str
        A key of :data:`ADAPTERS` whose class has ``one_task_per_batch = False``.
    """
    return next(name for name, cls in ADAPTERS.items() if not cls.one_task_per_batch)


def adapter_type(schedule: str | None) -> type:
    """The class registered as ``schedule`` (``None``: :func:`default_schedule`).

    Returns
    -------
    type
        A class with the constructor of :data:`AdapterFactory` that satisfies :class:`TaskAdapters`.

    Raises
    ------
    LLMError
        For a name that is not in :data:`ADAPTERS`.

    >>> adapter_type(None) is BatchedAdapters, adapter_type("sequential") is PeftAdapters
    (True, True)
    """
    schedule = schedule or default_schedule()
    if schedule not in ADAPTERS:
        raise LLMError(f"schedule must be one of {tuple(ADAPTERS)}, got {schedule!r}")
    return ADAPTERS[schedule]
