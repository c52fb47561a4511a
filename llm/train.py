"""Standard retraining (SR) and Meta-LoRA retraining; the fine-tuning of unseen tasks is :mod:`llm.finetune`, the
loop both share (batches, epochs, evaluation, epoch selection) :mod:`llm.loop`.

Notation: ``T`` retraining tasks, a batch of ``B`` samples with ``K`` candidates each (``K = k + 1`` with
``k = train_negatives`` while training, ``K = C = 20`` when evaluating), ``L`` tokens.

What is trained: the *upper part* of the encoder (blocks ``freeze_layers..`` and, for the cross scorer of a BERT,
the pooler; the whole encoder when ``freeze_layers = 0``). The embeddings and lower blocks are frozen for every
method alike and their outputs computed once (:mod:`llm.prefix`).

* **SR**: the upper part (and one head, cross) trained on the pooled samples of the ``T`` tasks.
* **Meta-LoRA-r**: the upper part, one rank-``r`` LoRA adapter per task on every linear layer of the trained blocks
  and (cross) one head per task, trained jointly: a task-``t`` sample goes through adapter ``t`` (and head ``t``).
  Schedules: the adapter types of :data:`llm.adapters.ADAPTERS`: ``batched`` (``llm.multilora``: all tasks in
  one batch; the default) or ``sequential`` (peft named adapters, one task per batch: the paper's implementation
  and the reference).
* **Fine-tuning** an unseen task: the retrained encoder frozen, a fresh rank-``r'`` LoRA on the same linear
  layers (and a fresh head, cross) trained on the task's few samples. The test tasks are fine-tuned together, each
  with its own adapter and loss (:func:`llm.finetune.finetune_tasks`).
* **Epoch selection**: the retraining epoch with the best validation accuracy on the retraining tasks (their
  ``validation`` split); the fine-tuning epoch by ``cfg.select``: the test task's ``validation`` split (default),
  its scored ``heldout`` items (the paper's choice; optimistic) or the ``last`` epoch. Ties go to the earlier epoch.

Loss and accuracy: :meth:`llm.models.Scorer.loss`; accuracy is the fraction of samples whose true candidate has the
largest score among the 20. All loops run through ``accelerate.Accelerator`` (one process = the plain case;
``accelerate launch -m llm ...`` is data-parallel). The device is CUDA with bf16 autocast when present, else the CPU.
Determinism: batch order of epoch ``e`` and the negatives of step ``s`` come from generators seeded by
``(seed, e)`` and ``(seed, e, s)``; the torch RNG (dropout) is saved with each checkpoint, so a resumed run on the
CPU ends with exactly the numbers of an uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass

import torch

from . import checkpoint as ckpt_mod
from .adapters import ADAPTERS, adapter_type, default_schedule
from .config import Config, LLMError
from .data import TaskSet
from .loop import (Batches, accuracy, adapter_targets, evaluate, make_accelerator, make_loader, make_optimizer,
                   progress_bar, return_freed_memory, select_epoch, set_threads, train_epoch)
from .models import Scorer, load_hf_model, load_tokenizer
from .prefix import SplitCache

__all__ = ["METHODS", "SCHEDULES", "RetrainResult", "build_retrain_model", "retrain"]

METHODS = ("sr", "meta-lora")
SCHEDULES = tuple(ADAPTERS)  # Meta-LoRA schedules: the registered adapter types


@dataclass(frozen=True)
class RetrainResult:
    """What one SR or Meta-LoRA retraining run produced (the table's ``retraining`` entries, ``to_dict()``).

    Attributes
    ----------
    run_dir : str
        The run folder (checkpoints, resumable).
    checkpoint : str
        Folder of the selected epoch, a loadable model folder (``""`` when none was written).
    method : str
        ``'sr'`` or ``'meta-lora'``.
    rank : int or None
        LoRA rank ``r`` of Meta-LoRA-r; ``None`` for SR.
    schedule : str or None
        The adapter type of :data:`llm.adapters.ADAPTERS` (Meta-LoRA); ``None`` for SR.
    seed : int
        Retraining seed (initialisation, batch order, negatives, dropout).
    losses : tuple of float
        Mean training loss per epoch, ``(E,)`` for ``E`` finished epochs.
    val_accuracies : tuple of float
        Validation accuracy on the retraining tasks after each epoch, ``(E,)``, fractions in [0, 1] (NaN without
        a validation split).
    best_epoch : int
        The selected epoch, 1-based.
    seconds : float
        Wall time of the call, in seconds.
    """

    run_dir: str
    checkpoint: str  # folder of the selected epoch: a loadable model folder (config, tokenizer, model.safetensors)
    method: str
    rank: int | None
    schedule: str | None
    seed: int
    losses: tuple[float, ...]  # mean training loss per epoch
    val_accuracies: tuple[float, ...]  # validation accuracy on the retraining tasks per epoch (NaN without one)
    best_epoch: int  # 1-based, the selected epoch
    seconds: float

    def to_dict(self) -> dict:
        """The fields as a plain dict (tuples kept).

        Returns
        -------
        dict
            ``{field name: value}`` (``dataclasses.asdict``), what ``retrain.json`` of a table run records.
        """
        return dataclasses.asdict(self)


def build_retrain_model(cfg: Config, method: str, rank: int | None, n_tasks: int, *, seed: int,
                        schedule: str | None = None, hf=None) -> Scorer:
    """Scorer (+ adapters) for ``method`` with the upper part, adapters and heads trainable, the rest frozen.

    Parameters
    ----------
    cfg : Config
        Model, scorer, ``freeze_layers``, ``temperature``, ``lora_alpha`` and ``lora_dropout`` are read.
    method : str
        ``'sr'`` or ``'meta-lora'``.
    rank : int or None
        ``r`` of Meta-LoRA-r (ignored for SR).
    n_tasks : int
        ``T``: adapters and heads of Meta-LoRA (SR has one head).
    seed : int
        ``torch.manual_seed(seed)`` before the model is built (adapters), and the heads' seed.
    schedule : str, optional
        A name of :data:`llm.adapters.ADAPTERS` (default: the first), Meta-LoRA only.
    hf : transformers.PreTrainedModel, optional
        An HF model to use instead of loading ``cfg.model``.

    Returns
    -------
    Scorer
        Trainable: the upper part's encoder weights, the LoRA tensors and the heads; the rest frozen.

    Raises
    ------
    LLMError
        For a bad method, rank or schedule; :class:`llm.config.ModelError` for a model that cannot be loaded
        offline or does not fit the scorer or ``freeze_layers``.
    """
    if method not in METHODS:
        raise LLMError(f"method must be one of {METHODS}, got {method!r}")
    torch.manual_seed(seed)
    hf = hf if hf is not None else load_hf_model(cfg.model)
    common = dict(kind=cfg.scorer, seed=seed, freeze_layers=cfg.freeze_layers, temperature=cfg.temperature)
    if method == "sr":
        model = Scorer(hf, n_tasks=1, **common)
    else:
        if isinstance(rank, bool) or not isinstance(rank, int) or rank <= 0:
            raise LLMError(f"--rank must be a positive integer for meta-lora, got {rank!r}")
        cls = adapter_type(schedule)
        targets = adapter_targets(cfg, hf)
        model = Scorer(hf, n_tasks=n_tasks, make_adapters=lambda m: cls(m, n_tasks, rank, cfg.lora_alpha,
                                                                        cfg.lora_dropout, targets), **common)
    for p in model.parameters():
        p.requires_grad_(False)
    for p in model.encoder_parameters() + model.lora_parameters() + model.head_parameters():
        p.requires_grad_(True)
    return model


def retrain(cfg: Config, tasks: TaskSet, *, method: str, rank: int | None, seed: int, out_dir: str,
            resume: bool = False, schedule: str | None = None, device: str | None = None,
            cache_dir: str | None = None, progress: bool = True, stop_after: int | None = None,
            splits: SplitCache | None = None) -> RetrainResult:
    """SR or Meta-LoRA retraining on ``tasks.retrain``; a checkpoint after every epoch in ``out_dir``, the epoch
    with the best validation accuracy kept as ``BEST``.

    ``resume``: continue from the last finished epoch in ``out_dir`` (its options must match). ``stop_after``:
    return after that many epochs of this call (tests use it to simulate a kill). ``splits``: tokenised splits
    shared with other calls.

    Returns
    -------
    RetrainResult
        Losses and validation accuracies per epoch, the selected epoch and its checkpoint folder.

    Raises
    ------
    LLMError
        Bad method, rank, schedule or device; ``resume`` on a run made with other options.
    ModelError
        ``cfg.model`` cannot be loaded offline.
    NonFiniteLossError
        A training loss is not finite (the last finished epoch's checkpoint is kept).
    """
    t0 = time.perf_counter()
    set_threads(cfg)
    if method == "sr":
        rank, schedule = None, None
    elif method == "meta-lora":
        schedule = schedule or default_schedule()
    model = build_retrain_model(cfg, method, rank, len(tasks.retrain), seed=seed, schedule=schedule)
    tokenizer = load_tokenizer(cfg.model)
    accelerator = make_accelerator(device)
    splits = splits or SplitCache(cfg, tokenizer, cache_dir=cache_dir, device=accelerator.device)
    train = splits.get(tasks.retrain, "train", model.lower)
    val = splits.get(tasks.retrain, "validation", model.lower) if cfg.validation_samples else None
    single_task = method == "meta-lora" and adapter_type(schedule).one_task_per_batch
    by_task = single_task or (cfg.scorer == "bi" and cfg.in_batch_negatives)
    batches = Batches(train.tasks, cfg.batch_for(method), seed, by_task=by_task)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer, scheduler = make_optimizer(trainable, cfg.lr_for(method, rank), cfg,
                                          len(batches) * cfg.retrain_epochs)
    meta = {"method": method, "rank": rank, "schedule": schedule, "seed": seed, "config": cfg.to_dict(),
            "tasks": [t.name for t in tasks.retrain], "model": cfg.model}
    start, losses, accs = 0, [], []
    last = ckpt_mod.latest_checkpoint(out_dir) if resume else None
    if last is not None:
        state = ckpt_mod.read_state(last)
        if state.get("meta") != meta:
            raise LLMError(f"--resume: {out_dir} was made with other options ({state.get('meta', {}).get('method')}, "
                           f"rank {state.get('meta', {}).get('rank')}); use another --out or drop --resume")
        ckpt_mod.load_train_state(last, model=model, optimizer=optimizer, scheduler=scheduler)
        start, losses, accs = state["epoch"], list(state["losses"]), list(state["val_accuracies"])
    pmodel, optimizer, loader, scheduler = accelerator.prepare(model, optimizer, make_loader(batches), scheduler)
    raw = accelerator.unwrap_model(pmodel)
    what = f"retrain {method}" + (f"-{rank} ({schedule})" if rank else "")
    bar = progress_bar((cfg.retrain_epochs - start) * len(loader), what, progress)
    for epoch in range(start, min(cfg.retrain_epochs, start + (stop_after or cfg.retrain_epochs))):
        losses.append(train_epoch(pmodel, raw, train, loader, batches, accelerator=accelerator, optimizer=optimizer,
                                  scheduler=scheduler, cfg=cfg, seed=seed, epoch=epoch, single_task=single_task,
                                  bar=bar, what=what))
        accs.append(accuracy(evaluate(raw, val, accelerator=accelerator, batch=cfg.eval_batch)) if val else math.nan)
        best = select_epoch("validation", accs, [], epoch + 1)
        if accelerator.is_main_process:
            ckpt_mod.save_checkpoint(out_dir, epoch + 1, model=raw, tokenizer=tokenizer, optimizer=optimizer,
                                     scheduler=scheduler, best=best == epoch + 1,
                                     state={"epoch": epoch + 1, "losses": losses, "val_accuracies": accs,
                                            "best_epoch": best, "meta": meta})
        accelerator.wait_for_everyone()
    bar.close()
    accelerator.free_memory()  # accelerate's advice between two trainings: drop its references to model, optimizer
    return_freed_memory()
    best = select_epoch("validation", accs, [], len(accs))
    return RetrainResult(out_dir, ckpt_mod.best_checkpoint(out_dir) or "", method, rank, schedule, seed,
                         tuple(losses), tuple(accs), best, time.perf_counter() - t0)
