"""Standard retraining (SR), Meta-LoRA retraining, LoRA fine-tuning of unseen tasks, evaluation.

Notation: ``T`` retraining tasks, a batch of ``B`` samples with ``K`` (context, candidate) pairs each (``K = k + 1``
with ``k = train_negatives`` while training, ``K = C = 20`` when evaluating), ``P = B K`` pairs, ``L`` tokens.

* **SR**: every encoder weight and one head trained on the pooled samples of the ``T`` tasks.
* **Meta-LoRA-r**: every encoder weight, one rank-``r`` LoRA adapter per task on every linear layer of the
  transformer blocks, and one head per task, trained jointly: the loss of a task-``t`` sample goes through adapter t
  and head t. Schedules: ``sequential`` (peft named adapters, one task per batch: the paper's implementation and
  the reference) or ``batched`` (``llm.multilora``: all tasks in one batch, per-pair task index).
* **Fine-tuning** an unseen task: the retrained encoder frozen, a fresh rank-``r'`` peft LoRA and a fresh head
  trained on the task's few samples; held-out accuracy after every epoch, the best epoch reported (as the paper).

Loss: cross-entropy of every pair's two logits against its label (1 = true candidate), mean over the ``P`` pairs.
Accuracy: fraction of held-out samples whose true candidate has the largest class-1 logit among the 20.

All loops run through ``accelerate.Accelerator`` (one process = the plain case; ``accelerate launch -m llm ...``
is data-parallel). The device is CUDA with bf16 autocast when present, else the CPU; ``device`` forces it.
Determinism: batch order of epoch ``e`` and the negatives of step ``s`` come from generators seeded by
``(seed, e)`` and ``(seed, e, s)``; the torch RNG (dropout) is saved with each checkpoint, so a resumed run on the
CPU ends with exactly the numbers of an uninterrupted one.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from . import checkpoint as ckpt_mod
from .config import Config, LLMError, NonFiniteLossError
from .data import Task, TaskSet, TokenisedSplit, tokenise
from .models import BatchedAdapters, CrossEncoder, PeftAdapters, load_hf_model, load_tokenizer

__all__ = ["METHODS", "SCHEDULES", "default_schedule", "RetrainResult", "FinetuneResult", "retrain", "finetune",
           "evaluate", "pair_loss", "make_accelerator", "build_retrain_model",
           "build_finetune_model", "forward_batch"]

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
    checkpoint: str  # folder of the last epoch: a loadable model folder (config, tokenizer, model.safetensors)
    method: str
    rank: int | None
    schedule: str | None
    seed: int
    losses: tuple[float, ...]  # mean training loss per epoch
    seconds: float


@dataclass(frozen=True)
class FinetuneResult:
    task: str
    rank: int
    seed: int
    accuracies: tuple[float, ...]  # held-out accuracy after each epoch
    losses: tuple[float, ...]
    best: float
    best_epoch: int  # 1-based
    seconds: float

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def pair_loss(logits: torch.Tensor, pair_labels: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of pair logits (P, 2) against pair labels (P,) in {0, 1}."""
    return F.cross_entropy(logits.float(), pair_labels)


_ACCELERATOR = None


def make_accelerator(device: str | None = None):
    """One ``Accelerator`` per process (accelerate's state is a singleton): CUDA + bf16 when present, else CPU."""
    global _ACCELERATOR
    from accelerate import Accelerator, DistributedDataParallelKwargs

    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device not in ("cpu", "cuda") and not device.startswith("cuda:"):
        raise LLMError(f"device must be 'cpu', 'cuda' or 'cuda:N', got {device!r}")
    if device != "cpu" and not torch.cuda.is_available():
        raise LLMError(f"device {device!r} requested but CUDA is not available")
    key = device
    if _ACCELERATOR is not None and _ACCELERATOR[0] == key:
        return _ACCELERATOR[1]
    kwargs = [DistributedDataParallelKwargs(find_unused_parameters=True)]  # idle adapters / heads in a batch
    acc = Accelerator(cpu=device == "cpu", mixed_precision="no" if device == "cpu" else "bf16",
                      kwargs_handlers=kwargs)
    _ACCELERATOR = (key, acc)
    return acc


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


def _loader(batches: _Batches):
    return torch.utils.data.DataLoader(range(len(batches.tasks)), batch_sampler=batches,
                                       collate_fn=lambda idx: torch.tensor(idx, dtype=torch.long))


def _step_generator(seed: int, epoch: int, step: int) -> torch.Generator:
    return torch.Generator().manual_seed((seed * 1_000_003 + epoch) * 1_000_033 + step)


def _to(batch: dict, device) -> dict:
    return {k: v.to(device) for k, v in batch.items()}


def forward_batch(model, batch: dict, *, single_task: bool, raw: CrossEncoder | None = None) -> torch.Tensor:
    """Pair logits (P, 2) of a collated batch, each pair through its task's adapter and head.

    ``model`` is called (it may be the DDP-wrapped module, whose forward must run for its gradient hooks);
    adapters are selected and heads counted on ``raw`` (the unwrapped :class:`CrossEncoder`, default ``model``).
    """
    raw = model if raw is None else raw
    k = batch["input_ids"].shape[0] // batch["tasks"].shape[0]
    pair_tasks = batch["tasks"].repeat_interleave(k)
    task = None
    if len(raw.heads.heads) == 1:
        task, pair_tasks = 0, torch.zeros_like(pair_tasks)
    elif single_task:
        task = int(batch["tasks"][0])
    ctx = raw.adapters.select(pair_tasks, task) if raw.adapters is not None else contextlib.nullcontext()
    with ctx:
        return model(batch["input_ids"], batch["attention_mask"], batch.get("token_type_ids"),
                     pair_tasks=pair_tasks, task=task)


def evaluate(model: CrossEncoder, split: TokenisedSplit, *, accelerator, batch: int) -> float:
    """Held-out accuracy of ``model`` on ``split`` (all ``C`` candidates of every sample)."""
    model.eval()
    loader = accelerator.prepare_data_loader(
        torch.utils.data.DataLoader(range(len(split)), batch_size=batch, shuffle=False,
                                    collate_fn=lambda idx: torch.tensor(idx, dtype=torch.long)))
    raw = accelerator.unwrap_model(model)
    correct = []
    with torch.no_grad():
        for idx in loader:
            b = _to(split.collate(idx.cpu()), accelerator.device)
            with accelerator.autocast():
                logits = forward_batch(raw, b, single_task=True)
            scores = logits[:, 1].float().reshape(len(idx), split.n_candidates)
            correct.append(accelerator.gather_for_metrics((scores.argmax(1) == b["labels"]).float()))
    return float(torch.cat(correct).mean()) if correct else float("nan")


def _set_threads(cfg: Config) -> None:
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)


def build_retrain_model(cfg: Config, method: str, rank: int | None, n_tasks: int, *, seed: int,
                        schedule: str | None = None) -> CrossEncoder:
    """Encoder + heads (+ adapters) for ``method``, every parameter trainable."""
    if method not in METHODS:
        raise LLMError(f"method must be one of {METHODS}, got {method!r}")
    torch.manual_seed(seed)
    hf = load_hf_model(cfg.model)
    if method == "sr":
        model = CrossEncoder(hf, 1, seed=seed)
    else:
        if not isinstance(rank, int) or rank <= 0:
            raise LLMError(f"--rank must be a positive integer for meta-lora, got {rank!r}")
        schedule = schedule or default_schedule()
        if schedule not in SCHEDULES:
            raise LLMError(f"schedule must be one of {SCHEDULES}, got {schedule!r}")
        cls = PeftAdapters if schedule == "sequential" else BatchedAdapters
        model = CrossEncoder(hf, n_tasks, seed=seed,
                             make_adapters=lambda m: cls(m, n_tasks, rank, cfg.lora_alpha, cfg.lora_dropout))
    for p in model.parameters():
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


def _train_epoch(model, raw, split, loader, batches, *, accelerator, optimizer, scheduler, cfg, seed, epoch,
                 single_task, bar, what) -> float:
    model.train()
    batches.epoch = epoch
    negatives = None if cfg.train_negatives >= split.n_candidates - 1 else cfg.train_negatives
    total, count = 0.0, 0
    for step, idx in enumerate(loader):
        b = _to(split.collate(idx.cpu(), negatives=negatives, generator=_step_generator(seed, epoch, step)),
                accelerator.device)
        with accelerator.autocast():
            logits = forward_batch(model, b, single_task=single_task, raw=raw)
        loss = pair_loss(logits, b["pair_labels"])
        if not torch.isfinite(loss):
            raise NonFiniteLossError(f"{what}: non-finite loss ({float(loss.detach())}) at epoch {epoch + 1}, "
                                     f"step {step + 1}; stopped, the last finished epoch's checkpoint is kept "
                                     "(try a smaller lr)")
        accelerator.backward(loss)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        total += float(loss.detach())
        count += 1
        bar.update(1)
    return total / max(count, 1)


def retrain(cfg: Config, tasks: TaskSet, *, method: str, rank: int | None, seed: int, out_dir: str,
            resume: bool = False, schedule: str | None = None, device: str | None = None,
            cache_dir: str | None = None, progress: bool = True, stop_after: int | None = None) -> RetrainResult:
    """SR or Meta-LoRA retraining on ``tasks.retrain``; a checkpoint after every epoch in ``out_dir``.

    ``resume``: continue from the last finished epoch in ``out_dir`` (its options must match). ``stop_after``:
    return after that many epochs of this call (tests use it to simulate a kill).
    """
    t0 = time.perf_counter()
    _set_threads(cfg)
    if method == "sr":
        rank, schedule = None, None
    elif method == "meta-lora":
        schedule = schedule or default_schedule()
    model = build_retrain_model(cfg, method, rank, len(tasks.retrain), seed=seed, schedule=schedule)
    tokenizer = load_tokenizer(cfg.model)
    split = tokenise(tasks.retrain, tokenizer, cfg.max_length, split="train", cache_dir=cache_dir)
    accelerator = make_accelerator(device)
    single_task = method == "meta-lora" and schedule == "sequential"
    batches = _Batches(split.tasks, cfg.batch_for(method), seed, by_task=single_task)
    steps = len(batches) * cfg.retrain_epochs
    optimizer, scheduler = _optimizer(list(model.parameters()), cfg.lr_for(method, rank), cfg, steps)
    meta = {"method": method, "rank": rank, "schedule": schedule, "seed": seed, "config": cfg.to_dict(),
            "tasks": [t.name for t in tasks.retrain], "model": cfg.model}
    start, losses = 0, []
    last = ckpt_mod.latest_checkpoint(out_dir) if resume else None
    if last is not None:
        state = ckpt_mod.read_state(last)
        if state.get("meta") != meta:
            raise LLMError(f"--resume: {out_dir} was made with other options ({state.get('meta', {}).get('method')}, "
                           f"rank {state.get('meta', {}).get('rank')}); use another --out or drop --resume")
        ckpt_mod.load_train_state(last, model=model, optimizer=optimizer, scheduler=scheduler)
        start, losses = state["epoch"], list(state["losses"])
    loader = _loader(batches)
    pmodel, optimizer, loader, scheduler = accelerator.prepare(model, optimizer, loader, scheduler)
    raw = accelerator.unwrap_model(pmodel)
    what = f"retrain {method}" + (f"-{rank} ({schedule})" if rank else "")
    bar = _progress((cfg.retrain_epochs - start) * len(loader), what, progress)
    done = 0
    for epoch in range(start, cfg.retrain_epochs):
        loss = _train_epoch(pmodel, raw, split, loader, batches, accelerator=accelerator, optimizer=optimizer,
                            scheduler=scheduler, cfg=cfg, seed=seed, epoch=epoch, single_task=single_task, bar=bar,
                            what=what)
        losses.append(loss)
        if accelerator.is_main_process:
            ckpt_mod.save_checkpoint(out_dir, epoch + 1, model=raw, tokenizer=tokenizer, optimizer=optimizer,
                                     scheduler=scheduler, state={"epoch": epoch + 1, "losses": losses, "meta": meta})
        accelerator.wait_for_everyone()
        done += 1
        if stop_after is not None and done >= stop_after:
            break
    bar.close()
    last = ckpt_mod.latest_checkpoint(out_dir)
    return RetrainResult(out_dir, last or "", method, rank, schedule, seed, tuple(losses), time.perf_counter() - t0)


def build_finetune_model(cfg: Config, encoder: str, *, rank: int, seed: int) -> tuple[CrossEncoder, object]:
    """(model, tokenizer): the encoder at ``encoder`` frozen, a fresh rank-``rank`` peft LoRA and a fresh head."""
    from .models import lora_config

    lora_config(rank, cfg.lora_alpha, cfg.lora_dropout)  # validates the rank before loading anything
    path = ckpt_mod.resolve_encoder(encoder)
    torch.manual_seed(seed)
    hf = load_hf_model(path)
    model = CrossEncoder(hf, 1, seed=seed,
                         make_adapters=lambda m: PeftAdapters(m, 1, rank, cfg.lora_alpha, cfg.lora_dropout))
    for p in model.encoder_parameters():
        p.requires_grad_(False)
    for p in list(model.lora_parameters()) + list(model.heads.parameters()):
        p.requires_grad_(True)
    return model, load_tokenizer(path)


def finetune(cfg: Config, encoder: str, task: Task, *, rank: int, seed: int, device: str | None = None,
             cache_dir: str | None = None, progress: bool = True, model=None, tokenizer=None) -> FinetuneResult:
    """Fine-tune ``task`` on a frozen encoder (a model folder / name, or a retraining run folder).

    A fresh peft LoRA of rank ``rank`` (alpha and dropout of ``cfg``) and a fresh head are trained for
    ``cfg.finetune_epochs`` epochs on ``task.train``; the held-out accuracy is measured after every epoch.
    ``model``/``tokenizer``: a model from :func:`build_finetune_model` to train instead of building one.
    """
    t0 = time.perf_counter()
    _set_threads(cfg)
    if model is None:
        model, tokenizer = build_finetune_model(cfg, encoder, rank=rank, seed=seed)
    train = tokenise([task], tokenizer, cfg.max_length, split="train", cache_dir=cache_dir)
    held = tokenise([task], tokenizer, cfg.max_length, split="heldout", cache_dir=cache_dir)
    accelerator = make_accelerator(device)
    batches = _Batches(train.tasks, cfg.batch_finetune, seed, by_task=False)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer, scheduler = _optimizer(trainable, cfg.lr_finetune, cfg, len(batches) * cfg.finetune_epochs)
    loader = _loader(batches)
    pmodel, optimizer, loader, scheduler = accelerator.prepare(model, optimizer, loader, scheduler)
    raw = accelerator.unwrap_model(pmodel)
    what = f"finetune r={rank} {task.name[:8]}"
    accs, losses = [], []
    bar = _progress(cfg.finetune_epochs * len(loader), what, progress)
    for epoch in range(cfg.finetune_epochs):
        losses.append(_train_epoch(pmodel, raw, train, loader, batches, accelerator=accelerator,
                                   optimizer=optimizer, scheduler=scheduler, cfg=cfg, seed=seed, epoch=epoch,
                                   single_task=True, bar=bar, what=what))
        accs.append(evaluate(raw, held, accelerator=accelerator, batch=cfg.eval_batch))
    bar.close()
    best = max(range(len(accs)), key=lambda i: (accs[i], -i))
    return FinetuneResult(task.name, rank, seed, tuple(accs), tuple(losses), accs[best], best + 1,
                          time.perf_counter() - t0)
