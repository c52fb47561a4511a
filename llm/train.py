"""Standard retraining (SR), Meta-LoRA retraining, LoRA fine-tuning of unseen tasks, evaluation.

Notation: ``T`` retraining tasks, a batch of ``B`` samples with ``K`` candidates each (``K = k + 1`` with
``k = train_negatives`` while training, ``K = C = 20`` when evaluating), ``L`` tokens.

What is trained: the *upper part* of the encoder (blocks ``freeze_layers..`` and, for the cross scorer of a BERT,
the pooler; the whole encoder when ``freeze_layers = 0``). The embeddings and lower blocks are frozen for every
method alike and their outputs computed once (:mod:`llm.prefix`).

* **SR**: the upper part (and one head, cross) trained on the pooled samples of the ``T`` tasks.
* **Meta-LoRA-r**: the upper part, one rank-``r`` LoRA adapter per task on every linear layer of the trained blocks
  and (cross) one head per task, trained jointly: a task-``t`` sample goes through adapter ``t`` (and head ``t``).
  Schedules: ``sequential`` (peft named adapters, one task per batch: the paper's implementation and the
  reference) or ``batched`` (``llm.multilora``: all tasks in one batch).
* **Fine-tuning** an unseen task: the retrained encoder frozen, a fresh rank-``r'`` LoRA on the same linear
  layers (and a fresh head, cross) trained on the task's few samples. The test tasks are fine-tuned together, each
  with its own adapter and loss (:func:`finetune_tasks`).
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

import copy
import dataclasses
import functools
import math
import time
from dataclasses import dataclass

import torch

from . import checkpoint as ckpt_mod
from .config import Config, LLMError, NonFiniteLossError
from .data import Task, TaskSet
from .models import BatchedAdapters, PeftAdapters, Scorer, load_hf_model, load_tokenizer, lora_config, lora_targets
from .models import n_blocks
from .prefix import SplitCache
from .tokens import Split

__all__ = ["METHODS", "SCHEDULES", "default_schedule", "RetrainResult", "FinetuneResult", "retrain", "finetune",
           "evaluate", "evaluate_base", "make_accelerator", "build_retrain_model", "build_finetune_model",
           "select_epoch", "finetune_tasks"]

METHODS = ("sr", "meta-lora")
SCHEDULES = ("sequential", "batched")


def default_schedule() -> str:
    """``'batched'`` when ``llm.multilora`` is importable, else ``'sequential'``."""
    try:
        from . import multilora  # noqa: F401
    except ImportError:
        return "sequential"
    return "batched"


@dataclass(frozen=True)
class RetrainResult:
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
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class FinetuneResult:
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
        return dataclasses.asdict(self)


@functools.lru_cache(maxsize=None)
def make_accelerator(device: str | None = None):
    """One ``Accelerator`` per device (accelerate's state is a singleton): CUDA + bf16 when present, else the CPU.

    Raises :class:`LLMError` for an unknown device or CUDA asked for without one.
    """
    from accelerate import Accelerator, DistributedDataParallelKwargs

    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device not in ("cpu", "cuda") and not device.startswith("cuda:"):
        raise LLMError(f"device must be 'cpu', 'cuda' or 'cuda:N', got {device!r}")
    if device != "cpu" and not torch.cuda.is_available():
        raise LLMError(f"device {device!r} requested but CUDA is not available")
    kwargs = [DistributedDataParallelKwargs(find_unused_parameters=True)]  # idle adapters / heads in a batch
    return Accelerator(cpu=device == "cpu", mixed_precision="no" if device == "cpu" else "bf16",
                       kwargs_handlers=kwargs)


class _Batches:
    """Batches of sample indices; ``epoch`` set before each epoch. ``by_task``: every batch holds one task."""

    def __init__(self, tasks: torch.Tensor, batch: int, seed: int, by_task: bool):
        self.tasks, self.batch, self.seed, self.by_task = tasks, batch, seed, by_task
        self.epoch = 0

    def _all(self) -> list[list[int]]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        if not self.by_task:
            perm = torch.randperm(len(self.tasks), generator=g)
            return [perm[i:i + self.batch].tolist() for i in range(0, len(perm), self.batch)]
        out = []
        for t in torch.unique(self.tasks).tolist():
            idx = torch.nonzero(self.tasks == t).flatten()
            idx = idx[torch.randperm(len(idx), generator=g)]
            out += [idx[i:i + self.batch].tolist() for i in range(0, len(idx), self.batch)]
        order = torch.randperm(len(out), generator=g).tolist()
        return [out[i] for i in order]

    def __iter__(self):
        return iter(self._all())

    def __len__(self) -> int:
        return len(self._all())


class _TaskRounds:
    """Batches for fine-tuning several tasks at once: step ``s`` of an epoch holds the ``s``-th batch of every task
    (each task's samples in its own order, seeded by ``(seed, epoch, task)``; a task with fewer batches starts its
    order again), so every task's adapter gets a gradient at every step."""

    def __init__(self, tasks: torch.Tensor, batch: int, seed: int):
        self.tasks, self.batch, self.seed = tasks, batch, seed
        self.epoch = 0
        self._members = [torch.nonzero(tasks == t).flatten() for t in torch.unique(tasks).tolist()]

    def _all(self) -> list[list[int]]:
        per_task = []
        for t, idx in enumerate(self._members):
            g = torch.Generator().manual_seed((self.seed * 1_000_003 + self.epoch) * 1_009 + t)
            idx = idx[torch.randperm(len(idx), generator=g)]
            per_task.append([idx[i:i + self.batch].tolist() for i in range(0, len(idx), self.batch)])
        steps = max(len(b) for b in per_task)
        return [[i for b in per_task for i in b[s % len(b)]] for s in range(steps)]

    def __iter__(self):
        return iter(self._all())

    def __len__(self) -> int:
        return max(-(-len(idx) // self.batch) for idx in self._members)


def _loader(batches):
    return torch.utils.data.DataLoader(range(len(batches.tasks)), batch_sampler=batches,
                                       collate_fn=lambda idx: torch.tensor(idx, dtype=torch.long))


def _step_generator(seed: int, epoch: int, step: int) -> torch.Generator:
    return torch.Generator().manual_seed((seed * 1_000_003 + epoch) * 1_000_033 + step)


def _to(d: dict, device) -> dict:
    return {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in d.items()}


def _set_threads(cfg: Config) -> None:
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)


def _negatives(cfg: Config, split: Split) -> int | None:
    return None if cfg.train_negatives >= split.n_candidates - 1 else cfg.train_negatives


def evaluate(model: Scorer, split: Split, *, accelerator, batch: int) -> torch.Tensor:
    """Correctness (N,) of ``model`` on every sample of ``split`` (all ``C`` candidates): 1 where the true
    candidate scores highest. Each distinct (sequence, task) is encoded once, ``batch`` sequences at a time,
    grouped by task (every chunk goes through one task's adapter) and by length."""
    model.eval()
    b = split.batch(torch.arange(len(split)))
    seqs, seq_tasks = b["seqs"], b["seq_tasks"]
    lengths = split.store.offsets[seqs + 1] - split.store.offsets[seqs]
    order = sorted(range(len(seqs)), key=lambda i: (int(seq_tasks[i]), int(lengths[i])))
    feats = [None] * len(seqs)
    with torch.no_grad():
        i = 0
        while i < len(order):
            t = int(seq_tasks[order[i]])
            chunk = [j for j in order[i:i + batch] if int(seq_tasks[j]) == t]
            i += len(chunk)
            idx = torch.tensor(chunk)
            inputs = _to(split.store.inputs(seqs[idx]), accelerator.device)
            with accelerator.autocast():
                out = model.encode(inputs, seq_tasks[idx].to(accelerator.device), t)
            for j, row in zip(chunk, out.float().cpu()):
                feats[j] = row
    scores = model.sample_scores(torch.stack(feats), b)
    return (scores.argmax(1) == b["labels"]).long()


def select_epoch(select: str, val: list[float], held: list[float], n_epochs: int) -> int:
    """1-based epoch of ``n_epochs`` chosen by ``select`` from per-epoch accuracies after epochs 1..n (``val``:
    validation, ``held``: the scored items, used only by ``'heldout'``); ties go to the earlier epoch, and
    ``'validation'`` without a validation split takes the last epoch."""
    if select == "last" or (select == "validation" and not [v for v in val if not math.isnan(v)]):
        return n_epochs
    scores = val if select == "validation" else held
    return max(range(len(scores)), key=lambda i: (scores[i], -i)) + 1


# Samples per forward pass when the tasks of a step are summed (task_sum): a step of many tasks runs in pieces of
# whole tasks, each piece's loss backpropagated at once, so the activations of only one piece are alive at a time.
# The loss is a sum over tasks and a sample's negatives come from its own task, so the gradient is the same.
_PIECE_SAMPLES = 64


def _return_freed_memory() -> None:
    """Hand the heap memory freed by a finished training back to the operating system. glibc keeps freed blocks of
    the many differently sized activation tensors in its arenas, so a table's resident memory grew by about 0.5 GB
    per seed although nothing stayed referenced (measured: a Meta-LoRA retraining left 1.28 GB resident, 0.80 GB
    after ``malloc_trim``). Neither torch nor the standard library exposes ``malloc_trim``, hence ctypes; a no-op
    on other C libraries."""
    import ctypes
    import ctypes.util
    import gc

    gc.collect()
    try:
        ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc (macOS, Windows, musl): nothing to trim
        pass


def _task_pieces(idx: torch.Tensor, tasks: torch.Tensor) -> list[torch.Tensor]:
    """``idx`` (B,) cut into runs of whole tasks of at most ``_PIECE_SAMPLES`` samples (a larger task alone)."""
    t = tasks[idx]
    starts = [0] + [i for i in range(1, len(idx)) if t[i] != t[i - 1]] + [len(idx)]
    pieces, begin = [], 0
    for a, b in zip(starts[:-1], starts[1:]):
        if b - begin > _PIECE_SAMPLES and a > begin:
            pieces.append(idx[begin:a])
            begin = a
    pieces.append(idx[begin:])
    return pieces


def _train_epoch(pmodel, raw: Scorer, split: Split, loader, batches, *, accelerator, optimizer, scheduler,
                 cfg: Config, seed: int, epoch: int, single_task: bool, bar, what: str,
                 task_sum: bool = False) -> float:
    """One epoch; returns the mean training loss. ``task_sum``: the loss of a batch is the sum over its tasks of
    each task's mean loss, so that every task's adapter gets exactly the gradient of its own fine-tuning (computed
    in pieces of whole tasks, :func:`_task_pieces`)."""
    pmodel.train()
    batches.epoch = epoch
    negatives = _negatives(cfg, split)
    in_batch = cfg.scorer == "bi" and cfg.in_batch_negatives
    total, count = 0.0, 0
    for step, idx in enumerate(loader):
        generator = _step_generator(seed, epoch, step)
        loss = 0.0
        for part in (_task_pieces(idx.cpu(), split.tasks) if task_sum else [idx.cpu()]):
            b = split.batch(part, negatives=negatives, generator=generator)
            inputs = _to(split.store.inputs(b["seqs"]), accelerator.device)
            b = _to(b, accelerator.device)
            task = int(b["tasks"][0]) if single_task else None
            with accelerator.autocast():
                feats = pmodel(inputs, b["seq_tasks"], task)
            if task_sum:
                per = raw.loss(feats.float(), b, in_batch=in_batch, reduction="none")
                n = raw.n_tasks
                sums = torch.zeros(n, device=per.device).index_add(0, b["tasks"], per)
                counts = torch.zeros(n, device=per.device).index_add(0, b["tasks"], torch.ones_like(per))
                part_loss = (sums / counts.clamp(min=1)).sum()
            else:
                part_loss = raw.loss(feats.float(), b, in_batch=in_batch)
            if not torch.isfinite(part_loss):
                raise NonFiniteLossError(f"{what}: non-finite loss ({float(part_loss.detach())}) at epoch "
                                         f"{epoch + 1}, step {step + 1}; stopped, the last finished epoch's "
                                         "checkpoint is kept (try a smaller lr)")
            accelerator.backward(part_loss)
            loss += float(part_loss.detach())
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        total += loss
        count += 1
        bar.update(1)
    return total / max(count, 1)


def _adapter_targets(cfg: Config, hf) -> str:
    return lora_targets(cfg.freeze_layers, n_blocks(hf))


def build_retrain_model(cfg: Config, method: str, rank: int | None, n_tasks: int, *, seed: int,
                        schedule: str | None = None, hf=None) -> Scorer:
    """Scorer (+ adapters) for ``method`` with the upper part, adapters and heads trainable, the rest frozen.

    ``hf``: an HF model to use instead of loading ``cfg.model``. Raises :class:`LLMError` for a bad method,
    rank or schedule.
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
        schedule = schedule or default_schedule()
        if schedule not in SCHEDULES:
            raise LLMError(f"schedule must be one of {SCHEDULES}, got {schedule!r}")
        cls = PeftAdapters if schedule == "sequential" else BatchedAdapters
        targets = _adapter_targets(cfg, hf)
        model = Scorer(hf, n_tasks=n_tasks, make_adapters=lambda m: cls(m, n_tasks, rank, cfg.lora_alpha,
                                                                        cfg.lora_dropout, targets), **common)
    for p in model.parameters():
        p.requires_grad_(False)
    for p in model.encoder_parameters() + model.lora_parameters() + model.head_parameters():
        p.requires_grad_(True)
    return model


def _optimizer(params, lr: float, cfg: Config, total_steps: int):
    from transformers import get_linear_schedule_with_warmup

    # fused=True: one kernel over all tensors; the per-tensor loop spent seconds per step on the 12M-entry
    # embedding matrix on the CPU. Falls back where the build has no fused AdamW for the device.
    try:
        opt = torch.optim.AdamW(params, lr=lr, weight_decay=cfg.weight_decay, fused=True)
    except (RuntimeError, TypeError):
        opt = torch.optim.AdamW(params, lr=lr, weight_decay=cfg.weight_decay, foreach=True)
    sched = get_linear_schedule_with_warmup(opt, int(cfg.warmup_fraction * total_steps), max(total_steps, 1))
    return opt, sched


def _progress(total: int, desc: str, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, disable=None if enabled else True, leave=False)


def _accuracy(correct: torch.Tensor) -> float:
    return float(correct.float().mean()) if correct.numel() else float("nan")


def retrain(cfg: Config, tasks: TaskSet, *, method: str, rank: int | None, seed: int, out_dir: str,
            resume: bool = False, schedule: str | None = None, device: str | None = None,
            cache_dir: str | None = None, progress: bool = True, stop_after: int | None = None,
            splits: SplitCache | None = None) -> RetrainResult:
    """SR or Meta-LoRA retraining on ``tasks.retrain``; a checkpoint after every epoch in ``out_dir``, the epoch
    with the best validation accuracy kept as ``BEST``.

    ``resume``: continue from the last finished epoch in ``out_dir`` (its options must match). ``stop_after``:
    return after that many epochs of this call (tests use it to simulate a kill). ``splits``: tokenised splits
    shared with other calls. Raises :class:`LLMError` (bad options, resume mismatch) and
    :class:`NonFiniteLossError`.
    """
    t0 = time.perf_counter()
    _set_threads(cfg)
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
    single_task = method == "meta-lora" and schedule == "sequential"
    by_task = single_task or (cfg.scorer == "bi" and cfg.in_batch_negatives)
    batches = _Batches(train.tasks, cfg.batch_for(method), seed, by_task=by_task)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer, scheduler = _optimizer(trainable, cfg.lr_for(method, rank), cfg, len(batches) * cfg.retrain_epochs)
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
    pmodel, optimizer, loader, scheduler = accelerator.prepare(model, optimizer, _loader(batches), scheduler)
    raw = accelerator.unwrap_model(pmodel)
    what = f"retrain {method}" + (f"-{rank} ({schedule})" if rank else "")
    bar = _progress((cfg.retrain_epochs - start) * len(loader), what, progress)
    for epoch in range(start, min(cfg.retrain_epochs, start + (stop_after or cfg.retrain_epochs))):
        losses.append(_train_epoch(pmodel, raw, train, loader, batches, accelerator=accelerator, optimizer=optimizer,
                                   scheduler=scheduler, cfg=cfg, seed=seed, epoch=epoch, single_task=single_task,
                                   bar=bar, what=what))
        accs.append(_accuracy(evaluate(raw, val, accelerator=accelerator, batch=cfg.eval_batch)) if val else math.nan)
        best = select_epoch("validation", accs, [], epoch + 1)
        if accelerator.is_main_process:
            ckpt_mod.save_checkpoint(out_dir, epoch + 1, model=raw, tokenizer=tokenizer, optimizer=optimizer,
                                     scheduler=scheduler, best=best == epoch + 1,
                                     state={"epoch": epoch + 1, "losses": losses, "val_accuracies": accs,
                                            "best_epoch": best, "meta": meta})
        accelerator.wait_for_everyone()
    bar.close()
    accelerator.free_memory()  # accelerate's advice between two trainings: drop its references to model, optimizer
    _return_freed_memory()
    best = select_epoch("validation", accs, [], len(accs))
    return RetrainResult(out_dir, ckpt_mod.best_checkpoint(out_dir) or "", method, rank, schedule, seed,
                         tuple(losses), tuple(accs), best, time.perf_counter() - t0)


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
    rank-``rank`` LoRA per task on the trained blocks' linear layers (``llm.multilora``, peft's layer for each
    task) and a fresh head per task (cross) trainable; ``rank=None``: no adapter (the base as it is). Raises
    :class:`LLMError` for a bad rank or an unloadable encoder."""
    if rank is not None:
        lora_config(rank, cfg.lora_alpha, cfg.lora_dropout)  # validates the rank before loading anything
    hf = _base_model(cfg, encoder)
    torch.manual_seed(seed)
    make = None
    if rank is not None:
        targets = _adapter_targets(cfg, hf)
        make = lambda m: BatchedAdapters(m, n_tasks, rank, cfg.lora_alpha, cfg.lora_dropout, targets)  # noqa: E731
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
                  cache_dir: str | None = None, splits: SplitCache | None = None) -> list[FinetuneResult]:
    """The control without fine-tuning: ``encoder`` scored as it is on each task's held-out items (cross: with a
    fresh, untrained head, so at chance by construction)."""
    t0 = time.perf_counter()
    _set_threads(cfg)
    model = build_finetune_model(cfg, encoder, rank=None, seed=seed)
    accelerator = make_accelerator(device)
    model.to(accelerator.device)
    _, val, held = _splits_for(cfg, model, tasks, splits, cache_dir, accelerator.device)
    n = len(tasks)
    parts = _by_task(evaluate(model, held, accelerator=accelerator, batch=cfg.eval_batch), held, n)
    vals = ([_accuracy(c) for c in _by_task(evaluate(model, val, accelerator=accelerator, batch=cfg.eval_batch),
                                            val, n)] if val is not None else [math.nan] * n)
    each = (time.perf_counter() - t0) / n
    return [FinetuneResult(t.name, None, seed, (), (v,), (), 0, cfg.select, tuple(c.tolist()), _accuracy(c), each)
            for t, c, v in zip(tasks, parts, vals)]


def finetune_tasks(cfg: Config, encoder, tasks: list[Task], *, rank: int, seed: int, device: str | None = None,
                   cache_dir: str | None = None, progress: bool = True, splits: SplitCache | None = None
                   ) -> list[FinetuneResult]:
    """Fine-tune every task of ``tasks`` on a frozen ``encoder`` (see :func:`build_finetune_model`), each with its
    own fresh rank-``rank`` LoRA (and head), for ``cfg.finetune_epochs`` epochs on its training samples.

    All tasks train in one run: a step holds a batch of every task (:class:`_TaskRounds`) and its loss is the sum
    of the tasks' mean losses, so each adapter follows its own task's gradient, as if fine-tuned alone (AdamW
    works per coordinate). Validation accuracy is measured before training and after every epoch; each task's
    epoch is chosen by ``cfg.select`` (:func:`select_epoch`) and its scored items are evaluated with the adapters
    of that epoch (with ``select='heldout'`` they are evaluated after every epoch, as the choice needs).
    """
    t0 = time.perf_counter()
    _set_threads(cfg)
    n = len(tasks)
    model = build_finetune_model(cfg, encoder, rank=rank, seed=seed, n_tasks=n)
    accelerator = make_accelerator(device)
    train, val, held = _splits_for(cfg, model, tasks, splits, cache_dir, accelerator.device)
    batches = _TaskRounds(train.tasks, cfg.batch_finetune, seed)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer, scheduler = _optimizer(trainable, cfg.lr_finetune, cfg, len(batches) * cfg.finetune_epochs)
    pmodel, optimizer, loader, scheduler = accelerator.prepare(model, optimizer, _loader(batches), scheduler)
    raw = accelerator.unwrap_model(pmodel)
    what = f"finetune r={rank} x{n} tasks"

    def scored(split):
        return _by_task(evaluate(raw, split, accelerator=accelerator, batch=cfg.eval_batch), split, n)

    def accuracies(split):
        return [_accuracy(c) for c in scored(split)] if split is not None else [math.nan] * n

    val_accs = [accuracies(val)]  # epoch 0: before training
    held_each = [scored(held)] if cfg.select == "heldout" else None
    losses, snapshots = [], []
    bar = _progress(cfg.finetune_epochs * len(loader), what, progress)
    for epoch in range(cfg.finetune_epochs):
        losses.append(_train_epoch(pmodel, raw, train, loader, batches, accelerator=accelerator,
                                   optimizer=optimizer, scheduler=scheduler, cfg=cfg, seed=seed, epoch=epoch,
                                   single_task=False, bar=bar, what=what, task_sum=True) / n)
        snapshots.append([p.detach().clone() for p in trainable])
        val_accs.append(accuracies(val))
        if held_each is not None:
            held_each.append(scored(held))
    bar.close()
    chosen = [select_epoch(cfg.select, [v[j] for v in val_accs[1:]],
                           [_accuracy(h[j]) for h in held_each[1:]] if held_each else [], cfg.finetune_epochs)
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
    _return_freed_memory()
    each = (time.perf_counter() - t0) / n
    out = []
    for j, task in enumerate(tasks):
        correct = at[chosen[j]][j]
        held_accs = tuple(_accuracy(h[j]) for h in held_each) if held_each else ()
        out.append(FinetuneResult(task.name, rank, seed, tuple(losses), tuple(v[j] for v in val_accs), held_accs,
                                  chosen[j], cfg.select, tuple(correct.tolist()), _accuracy(correct), each))
    return out


def finetune(cfg: Config, encoder, task: Task, *, rank: int, seed: int, **kwargs) -> FinetuneResult:
    """:func:`finetune_tasks` of one task."""
    return finetune_tasks(cfg, encoder, [task], rank=rank, seed=seed, **kwargs)[0]
