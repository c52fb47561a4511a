"""LoRA fine-tuning of unseen (test) tasks on a frozen encoder, and the control without fine-tuning.

The encoder (a retrained run folder, a model folder or name, or an HF model) is frozen; each test task gets a fresh
rank-``r'`` LoRA on the linear layers of the trained blocks (and, cross, a fresh head) trained on its few samples.
The test tasks are fine-tuned together, each with its own adapter and loss (:func:`finetune_tasks`); the epoch of
each is chosen by ``cfg.select``: its ``validation`` split (default), its scored ``heldout`` items (the paper's
choice; optimistic) or the ``last`` epoch. The loop is :mod:`llm.loop`'s.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import time
from dataclasses import dataclass

import torch

from . import checkpoint as ckpt_mod
from .adapters import ADAPTERS, finetune_schedule
from .config import Config
from .data import Task
from .loop import (TaskRounds, accuracy, adapter_targets, evaluate, make_accelerator, make_loader, make_optimizer,
                   progress_bar, return_freed_memory, select_epoch, set_threads, train_epoch)
from .models import Scorer, load_hf_model, load_tokenizer, lora_config
from .prefix import SplitCache
from .tokens import Split

__all__ = ["TaskEvaluation", "build_finetune_model", "evaluate_base", "finetune_tasks", "finetune"]


@dataclass(frozen=True)
class TaskEvaluation:
    """One test task fine-tuned with a fresh LoRA (or, ``rank=None``, the control without fine-tuning) and scored
    on its held-out items: the entries of the table's rows (``to_dict()``).

    Attributes
    ----------
    task : str
        The task's name (a speaker or persona).
    rank : int or None
        Fine-tuning LoRA rank ``r'``; ``None``: no fine-tuning (the encoder scored as it is).
    seed : int
        Seed of the adapter and head initialisation, batch order and negatives.
    losses : tuple of float
        Mean training loss per fine-tuning epoch, ``(E,)`` (empty without fine-tuning).
    val_accuracies : tuple of float
        Validation accuracy before training (epoch 0) and after each epoch, ``(E + 1,)``, fractions in [0, 1]
        (NaN without a validation split).
    heldout_accuracies : tuple of float
        ``select='heldout'`` only: accuracy on the scored items for epochs 0..E, ``(E + 1,)``; else empty.
    selected_epoch : int
        The epoch whose adapter is scored (0 = no fine-tuning).
    select : str
        The rule that chose it (``cfg.select``).
    correct : tuple of int
        1/0 per scored item at the selected epoch, ``(n_heldout,)``, in the task's held-out order.
    accuracy : float
        Mean of ``correct``.
    seconds : float
        Wall time of the call divided by the number of tasks fine-tuned together, in seconds.
    """

    task: str
    rank: int | None  # None: no fine-tuning (the base scored as it is)
    seed: int
    losses: tuple[float, ...]  # mean training loss per epoch
    val_accuracies: tuple[float, ...]  # validation accuracy before training (epoch 0) and after each epoch
    heldout_accuracies: tuple[float, ...]  # select='heldout' only: accuracy on the scored items per epoch 0..E
    selected_epoch: int  # 0 = no fine-tuning
    select: str
    correct: tuple[int, ...]  # 1/0 per scored item at the selected epoch, in the task's heldout order
    accuracy: float  # mean of ``correct``
    seconds: float

    def to_dict(self) -> dict:
        """The fields as a plain dict (tuples kept).

        Returns
        -------
        dict
            ``{field name: value}`` (``dataclasses.asdict``); a table's per-task piece adds its configuration.
        """
        return dataclasses.asdict(self)


def _base_model(cfg: Config, encoder) -> torch.nn.Module:
    """An HF model: a copy of ``encoder`` when it is one (its frozen embeddings and lower blocks shared, not
    copied: nothing ever changes them), else loaded from a model name / folder / run folder."""
    if not isinstance(encoder, torch.nn.Module):
        return load_hf_model(ckpt_mod.resolve_encoder(encoder))
    base = encoder.base_model
    frozen = [base.embeddings, *list(base.encoder.layer)[:cfg.freeze_layers]] if cfg.freeze_layers else []
    return copy.deepcopy(encoder, memo={id(m): m for m in frozen})


def build_finetune_model(cfg: Config, encoder, *, rank: int | None, seed: int, n_tasks: int = 1) -> Scorer:
    """The encoder (a model name / folder, a retraining run folder, or an HF model, copied) frozen, with a fresh
    rank-``rank`` LoRA per task on the trained blocks' linear layers (the adapter type
    :func:`llm.adapters.finetune_schedule`, which takes every task in one batch) and a fresh head per task
    (cross) trainable; ``rank=None``: no adapter (the base as it is).

    Parameters
    ----------
    cfg : Config
        Scorer, ``freeze_layers``, ``lora_alpha``, ``lora_dropout`` and ``temperature`` are read from it.
    encoder : str or transformers.PreTrainedModel
        A model name or folder, a retraining run folder (its selected epoch), or an HF model (deep-copied; its
        frozen embeddings and lower blocks shared).
    rank : int or None
        Fine-tuning LoRA rank ``r'`` (scaling ``lora_alpha / r'``); ``None``: no adapter.
    seed : int
        Seeds the adapters' and heads' initialisation (``torch.manual_seed``).
    n_tasks : int
        ``T'``, the number of adapters and heads.

    Returns
    -------
    Scorer
        Only the LoRA tensors (``lora_A (T', r', d_in)``, ``lora_B (T', d_out, r')`` per adapted layer) and, cross,
        the heads have ``requires_grad``.

    Raises
    ------
    LLMError
        :class:`llm.config.ModelError` for a rank that is not a positive integer, an encoder that cannot be
        loaded offline, a model with too few blocks for ``cfg.freeze_layers`` or (cross) without a supported
        classification head.
    """
    if rank is not None:
        lora_config(rank, cfg.lora_alpha, cfg.lora_dropout)  # validates the rank before loading anything
    hf = _base_model(cfg, encoder)
    torch.manual_seed(seed)
    make = None
    if rank is not None:
        targets = adapter_targets(cfg, hf)
        cls = ADAPTERS[finetune_schedule()]
        make = lambda m: cls(m, n_tasks, rank, cfg.lora_alpha, cfg.lora_dropout, targets)  # noqa: E731
    model = Scorer(hf, kind=cfg.scorer, n_tasks=n_tasks, seed=seed, freeze_layers=cfg.freeze_layers,
                   temperature=cfg.temperature, make_adapters=make)
    for p in model.parameters():
        p.requires_grad_(False)
    for p in model.lora_parameters() + model.head_parameters():
        p.requires_grad_(True)
    return model


def _splits_for(cfg: Config, model: Scorer, tasks: list[Task], splits: SplitCache | None, cache_dir, device):
    if splits is None:
        path = model.hf.config._name_or_path or cfg.model
        splits = SplitCache(cfg, load_tokenizer(path), cache_dir=cache_dir, device=device)
    get = lambda which: splits.get(tasks, which, model.lower) if all(t.split(which) for t in tasks) else None  # noqa
    return get("train"), get("validation"), get("heldout")


def _by_task(correct: torch.Tensor, split: Split, n: int) -> list[torch.Tensor]:
    return [correct[split.tasks == t] for t in range(n)]


def evaluate_base(cfg: Config, encoder, tasks: list[Task], *, seed: int, device: str | None = None,
                  cache_dir: str | None = None, splits: SplitCache | None = None) -> list[TaskEvaluation]:
    """The control without fine-tuning: ``encoder`` scored as it is on each task's held-out items (cross: with a
    fresh, untrained head, so at chance by construction).

    Returns
    -------
    list of TaskEvaluation
        One per task of ``tasks``, in order, with ``rank=None`` and ``selected_epoch=0``.

    Raises
    ------
    LLMError
        For a bad device or an encoder that cannot be loaded offline.
    """
    t0 = time.perf_counter()
    set_threads(cfg)
    model = build_finetune_model(cfg, encoder, rank=None, seed=seed)
    accelerator = make_accelerator(device)
    model.to(accelerator.device)
    _, val, held = _splits_for(cfg, model, tasks, splits, cache_dir, accelerator.device)
    n = len(tasks)
    parts = _by_task(evaluate(model, held, accelerator=accelerator, batch=cfg.eval_batch), held, n)
    vals = ([accuracy(c) for c in _by_task(evaluate(model, val, accelerator=accelerator, batch=cfg.eval_batch),
                                           val, n)] if val is not None else [math.nan] * n)
    each = (time.perf_counter() - t0) / n
    return [TaskEvaluation(t.name, None, seed, (), (v,), (), 0, cfg.select, tuple(c.tolist()), accuracy(c), each)
            for t, c, v in zip(tasks, parts, vals)]


def finetune_tasks(cfg: Config, encoder, tasks: list[Task], *, rank: int, seed: int, device: str | None = None,
                   cache_dir: str | None = None, progress: bool = True, splits: SplitCache | None = None
                   ) -> list[TaskEvaluation]:
    """Fine-tune every task of ``tasks`` on a frozen ``encoder`` (see :func:`build_finetune_model`), each with its
    own fresh rank-``rank`` LoRA (and head), for ``cfg.finetune_epochs`` epochs on its training samples.

    All tasks train in one run: a step holds a batch of every task (:class:`TaskRounds`) and its loss is the sum
    of the tasks' mean losses, so each adapter follows its own task's gradient, as if fine-tuned alone (AdamW
    works per coordinate). Validation accuracy is measured before training and after every epoch; each task's
    epoch is chosen by ``cfg.select`` (:func:`select_epoch`) and its scored items are evaluated with the adapters
    of that epoch (with ``select='heldout'`` they are evaluated after every epoch, as the choice needs).

    Returns
    -------
    list of TaskEvaluation
        One per task of ``tasks``, in order.

    Raises
    ------
    LLMError
        For a bad rank or device, or an encoder that cannot be loaded offline.
    NonFiniteLossError
        When a training loss is not finite.
    """
    t0 = time.perf_counter()
    set_threads(cfg)
    n = len(tasks)
    model = build_finetune_model(cfg, encoder, rank=rank, seed=seed, n_tasks=n)
    accelerator = make_accelerator(device)
    train, val, held = _splits_for(cfg, model, tasks, splits, cache_dir, accelerator.device)
    batches = TaskRounds(train.tasks, cfg.batch_finetune, seed)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer, scheduler = make_optimizer(trainable, cfg.lr_finetune, cfg, len(batches) * cfg.finetune_epochs)
    pmodel, optimizer, loader, scheduler = accelerator.prepare(model, optimizer, make_loader(batches), scheduler)
    raw = accelerator.unwrap_model(pmodel)
    what = f"finetune r={rank} x{n} tasks"

    def scored(split):
        return _by_task(evaluate(raw, split, accelerator=accelerator, batch=cfg.eval_batch), split, n)

    def accuracies(split):
        return [accuracy(c) for c in scored(split)] if split is not None else [math.nan] * n

    val_accs = [accuracies(val)]  # epoch 0: before training
    held_each = [scored(held)] if cfg.select == "heldout" else None
    losses, snapshots = [], []
    bar = progress_bar(cfg.finetune_epochs * len(loader), what, progress)
    for epoch in range(cfg.finetune_epochs):
        losses.append(train_epoch(pmodel, raw, train, loader, batches, accelerator=accelerator,
                                  optimizer=optimizer, scheduler=scheduler, cfg=cfg, seed=seed, epoch=epoch,
                                  single_task=False, bar=bar, what=what, task_sum=True) / n)
        snapshots.append([p.detach().clone() for p in trainable])
        val_accs.append(accuracies(val))
        if held_each is not None:
            held_each.append(scored(held))
    bar.close()
    chosen = [select_epoch(cfg.select, [v[j] for v in val_accs[1:]],
                           [accuracy(h[j]) for h in held_each[1:]] if held_each else [], cfg.finetune_epochs)
              for j in range(n)]
    at = {}
    for e in sorted(set(chosen)):
        if held_each is not None:
            at[e] = held_each[e]
            continue
        with torch.no_grad():
            for p, v in zip(trainable, snapshots[e - 1]):
                p.copy_(v)
        at[e] = scored(held)
    accelerator.free_memory()  # as after retraining: a table fine-tunes many times in one process
    return_freed_memory()
    each = (time.perf_counter() - t0) / n
    out = []
    for j, task in enumerate(tasks):
        correct = at[chosen[j]][j]
        held_accs = tuple(accuracy(h[j]) for h in held_each) if held_each else ()
        out.append(TaskEvaluation(task.name, rank, seed, tuple(losses), tuple(v[j] for v in val_accs), held_accs,
                                  chosen[j], cfg.select, tuple(correct.tolist()), accuracy(correct), each))
    return out


def finetune(cfg: Config, encoder, task: Task, *, rank: int, seed: int, **kwargs) -> TaskEvaluation:
    """:func:`finetune_tasks` of one task.

    Parameters
    ----------
    cfg, encoder, rank, seed
        As for :func:`finetune_tasks`.
    task : Task
        The test task.
    **kwargs
        ``device``, ``cache_dir``, ``progress``, ``splits`` of :func:`finetune_tasks`.

    Returns
    -------
    TaskEvaluation
        The task's fine-tuned held-out result.

    Raises
    ------
    LLMError, NonFiniteLossError
        As :func:`finetune_tasks`.
    """
    return finetune_tasks(cfg, encoder, [task], rank=rank, seed=seed, **kwargs)[0]
