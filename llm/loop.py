"""The training and evaluation loop shared by retraining (:mod:`llm.train`) and fine-tuning (:mod:`llm.finetune`).

Notation: a batch of ``B`` samples with ``K`` candidates each (``K = k + 1`` with ``k = train_negatives`` while
training, ``K = C = 20`` when evaluating), ``U`` distinct sequences in a batch, ``N`` samples in a split.

All loops run through ``accelerate.Accelerator`` (one process = the plain case; ``accelerate launch -m llm ...``
is data-parallel). The device is CUDA with bf16 autocast when present, else the CPU. Determinism: batch order of
epoch ``e`` and the negatives of step ``s`` come from generators seeded by ``(seed, e)`` and ``(seed, e, s)``.
Accuracy is the fraction of samples whose true candidate has the largest score among the 20.
"""

from __future__ import annotations

import functools
import math

import torch

from .config import Config, LLMError, NonFiniteLossError
from .models import Scorer, lora_targets, n_blocks
from .tokens import Split

__all__ = ["make_accelerator", "Batches", "TaskRounds", "make_loader", "set_threads", "evaluate", "select_epoch",
           "PIECE_SAMPLES", "return_freed_memory", "task_pieces", "train_epoch", "adapter_targets", "make_optimizer",
           "progress_bar", "accuracy"]


@functools.lru_cache(maxsize=None)
def make_accelerator(device: str | None = None):
    """One ``Accelerator`` per device (cached): CUDA + bf16 when present, else the CPU.

    The cache is ``llm``'s one piece of process state and mirrors accelerate's own: its ``AcceleratorState`` is a
    singleton that refuses a second, different set-up in one process, so every retraining and fine-tuning of a process
    (a table runs many) shares its device's accelerator. ``device``: ``'cpu'``, ``'cuda'``, ``'cuda:N'`` or ``None``
    (CUDA when available).

    Returns
    -------
    accelerate.Accelerator
        Mixed precision ``'bf16'`` on CUDA, ``'no'`` on the CPU; DDP with ``find_unused_parameters=True``.

    Raises
    ------
    LLMError
        For an unknown device, or CUDA asked for without one.
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


class Batches:
    """Batches of the sample indices of a split with tasks ``tasks`` ``(N,)``; ``epoch`` is set before each epoch.

    ``batch`` samples per batch (the last of an epoch, or of a task, may be smaller), in an order drawn from
    ``torch.Generator().manual_seed(seed * 1_000_003 + epoch)``; ``by_task``: every batch holds one task (the batches
    of all tasks shuffled together).

    >>> b = Batches(torch.tensor([0, 0, 0, 1, 1]), 2, seed=0, by_task=True)
    >>> len(b), sorted(len(x) for x in b), all(len(set(b.tasks[x].tolist())) == 1 for x in b)
    (3, [1, 2, 2], True)
    """

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


class TaskRounds:
    """Batches for fine-tuning several tasks at once: step ``s`` of an epoch holds the ``s``-th batch of every task.

    ``batch`` samples of each task per step, each task's samples in its own order seeded by ``(seed, epoch, task)``; a
    task with fewer batches starts its order again, so every task's adapter gets a gradient at every step.

    >>> r = TaskRounds(torch.tensor([0, 0, 0, 0, 1]), 2, seed=0)
    >>> len(r), [len(step) for step in r], all(4 in step for step in r)
    (2, [3, 3], True)
    """

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


def make_loader(batches):
    """A ``DataLoader`` over a :class:`Batches` or :class:`TaskRounds`, so that accelerate can shard the batches.

    Returns
    -------
    torch.utils.data.DataLoader
        Yields each batch's sample indices as a LongTensor ``(B,)``.
    """
    return torch.utils.data.DataLoader(range(len(batches.tasks)), batch_sampler=batches,
                                       collate_fn=lambda idx: torch.tensor(idx, dtype=torch.long))


def _step_generator(seed: int, epoch: int, step: int) -> torch.Generator:
    return torch.Generator().manual_seed((seed * 1_000_003 + epoch) * 1_000_033 + step)


def _to(d: dict, device) -> dict:
    return {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in d.items()}


def set_threads(cfg: Config) -> None:
    """``torch.set_num_threads(cfg.threads)`` unless ``cfg.threads`` is 0 (torch's default kept)."""
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)


def _negatives(cfg: Config, split: Split) -> int | None:
    return None if cfg.train_negatives >= split.n_candidates - 1 else cfg.train_negatives


def evaluate(model: Scorer, split: Split, *, accelerator, batch: int) -> torch.Tensor:
    """Correctness ``(N,)`` of ``model`` on every sample of ``split``, all ``C`` candidates (eval mode, no gradients).

    Each distinct (sequence, task) is encoded once under ``accelerator.autocast()``, ``batch`` sequences per forward
    pass, grouped by task (one adapter per chunk) and by length.

    Returns
    -------
    torch.Tensor
        ``(N,)`` int64: 1 where the ``argmax`` of the sample's ``C`` scores is its label (ties: the first candidate).
    """
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
    """1-based epoch of ``n_epochs`` chosen by ``select`` (:data:`llm.config.SELECTIONS`); ties go to the earlier epoch.

    ``val``, ``held``: accuracies ``(n_epochs,)`` after epochs 1..n on the validation split and on the scored items
    (NaN: not measured). ``'validation'`` takes the best ``val`` (the last epoch when none was measured),
    ``'heldout'`` the best ``held``, ``'last'`` the last epoch.

    Returns
    -------
    int

    Raises
    ------
    ValueError
        For ``'heldout'`` with ``held`` empty.

    >>> select_epoch("validation", [0.5, 0.7, 0.7], [], 3), select_epoch("last", [0.9, 0.1], [], 2)
    (2, 2)
    >>> select_epoch("validation", [float("nan")] * 3, [], 3)
    3
    """
    if select == "last" or (select == "validation" and not [v for v in val if not math.isnan(v)]):
        return n_epochs
    scores = val if select == "validation" else held
    return max(range(len(scores)), key=lambda i: (scores[i], -i)) + 1


# Samples per forward pass when the tasks of a step are summed (task_sum): a step of many tasks runs in pieces of
# whole tasks, each piece's loss backpropagated at once, so the activations of only one piece are alive at a time.
# The loss is a sum over tasks and a sample's negatives come from its own task, so the gradient is the same.
PIECE_SAMPLES = 64


def return_freed_memory() -> None:
    """Hand the heap memory freed by a finished training back to the OS (glibc's ``malloc_trim``; elsewhere a no-op).

    glibc keeps freed blocks of the many differently sized activation tensors in its arenas, so a table's resident
    memory grew by about 0.5 GB per seed with nothing referenced (measured: a Meta-LoRA retraining left 1.28 GB
    resident, 0.80 GB after ``malloc_trim``). Neither torch nor the standard library exposes it, hence ctypes.
    """
    import ctypes
    import ctypes.util
    import gc

    gc.collect()
    try:
        ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc (macOS, Windows, musl): nothing to trim
        pass


def task_pieces(idx: torch.Tensor, tasks: torch.Tensor, limit: int | None = None) -> list[torch.Tensor]:
    """``idx`` ``(B,)`` cut into runs of whole tasks of at most ``limit`` samples (default :data:`PIECE_SAMPLES`).

    ``tasks`` ``(N,)``: the task of every sample of the split that ``idx`` indexes. A task's samples, contiguous in
    ``idx`` (as :class:`TaskRounds` makes them), are never split; a task larger than ``limit`` is a piece alone.

    Returns
    -------
    list of torch.Tensor
        Consecutive slices of ``idx`` whose concatenation is ``idx``.

    >>> task_pieces(torch.arange(5), torch.tensor([0, 0, 1, 1, 2]), limit=2)
    [tensor([0, 1]), tensor([2, 3]), tensor([4])]
    """
    limit = PIECE_SAMPLES if limit is None else limit
    t = tasks[idx]
    starts = [0] + [i for i in range(1, len(idx)) if t[i] != t[i - 1]] + [len(idx)]
    pieces, begin = [], 0
    for a, b in zip(starts[:-1], starts[1:]):
        if b - begin > limit and a > begin:
            pieces.append(idx[begin:a])
            begin = a
    pieces.append(idx[begin:])
    return pieces


def train_epoch(pmodel, raw: Scorer, split: Split, loader, batches, *, accelerator, optimizer, scheduler,
                 cfg: Config, seed: int, epoch: int, single_task: bool, bar, what: str,
                 task_sum: bool = False) -> float:
    """One training epoch on ``split``: one optimiser and scheduler step per batch of ``loader``.

    ``pmodel``: the model as ``accelerator.prepare`` returned it (called for the forward pass); ``raw``: the unwrapped
    :class:`~llm.models.Scorer` (its ``loss``); ``loader``: :func:`make_loader` of ``batches`` (prepared), whose
    ``epoch`` is set here. The negatives of step ``s`` are seeded by ``(seed, epoch, s)``; ``cfg``'s
    ``train_negatives``, ``scorer`` and ``in_batch_negatives`` are read. ``single_task``: every batch is of one task
    (passed to the adapters' ``select``); ``bar`` advances once per step; ``what`` names the run in errors.
    ``task_sum``: a batch's loss is the sum over its tasks of each task's mean loss, so every task's adapter gets
    exactly the gradient of its own fine-tuning (computed in pieces of whole tasks, :func:`task_pieces`).

    Returns
    -------
    float
        The mean over the epoch's steps of each step's loss (cross-entropy, nats).

    Raises
    ------
    NonFiniteLossError
        When a loss is not finite (names the epoch and step; the caller keeps its last checkpoint).
    """
    pmodel.train()
    batches.epoch = epoch
    negatives = _negatives(cfg, split)
    in_batch = cfg.scorer == "bi" and cfg.in_batch_negatives
    total, count = 0.0, 0
    for step, idx in enumerate(loader):
        generator = _step_generator(seed, epoch, step)
        loss = 0.0
        for part in (task_pieces(idx.cpu(), split.tasks) if task_sum else [idx.cpu()]):
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


def adapter_targets(cfg: Config, hf) -> str:
    """Regex of the linear layers adapted by LoRA: those of the trained blocks ``cfg.freeze_layers ..`` of ``hf``.

    Returns
    -------
    str
        :func:`llm.models.lora_targets` of ``cfg.freeze_layers`` and ``hf``'s number of blocks.
    """
    return lora_targets(cfg.freeze_layers, n_blocks(hf))


def make_optimizer(params, lr: float, cfg: Config, total_steps: int):
    """AdamW (``cfg.weight_decay``) with a linear schedule and ``cfg.warmup_fraction`` warm-up (the paper's Appendix C).

    The learning rate rises from 0 to ``lr`` over ``int(warmup_fraction * total_steps)`` steps, then falls linearly to 0
    at ``total_steps`` (``transformers.get_linear_schedule_with_warmup``); AdamW is fused where the build has it.

    Returns
    -------
    tuple
        ``(torch.optim.AdamW, torch.optim.lr_scheduler.LambdaLR)``.
    """
    from transformers import get_linear_schedule_with_warmup

    # fused=True: one kernel over all tensors; the per-tensor loop spent seconds per step on the 12M-entry
    # embedding matrix on the CPU. Falls back where the build has no fused AdamW for the device.
    try:
        opt = torch.optim.AdamW(params, lr=lr, weight_decay=cfg.weight_decay, fused=True)
    except (RuntimeError, TypeError):
        opt = torch.optim.AdamW(params, lr=lr, weight_decay=cfg.weight_decay, foreach=True)
    sched = get_linear_schedule_with_warmup(opt, int(cfg.warmup_fraction * total_steps), max(total_steps, 1))
    return opt, sched


def progress_bar(total: int, desc: str, enabled: bool):
    """A tqdm bar of ``total`` steps, silent when not ``enabled`` or when stderr is not a terminal.

    Returns
    -------
    tqdm.tqdm
        Call ``update(1)`` per step and ``close()`` at the end.
    """
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, disable=None if enabled else True, leave=False)


def accuracy(correct: torch.Tensor) -> float:
    """Mean of the 1/0 tensor ``correct``; NaN when it is empty.

    Returns
    -------
    float
        A fraction in ``[0, 1]``, or NaN.

    >>> accuracy(torch.tensor([1, 0, 1, 1])), accuracy(torch.tensor([]))
    (0.75, nan)
    """
    return float(correct.float().mean()) if correct.numel() else float("nan")
