"""Retraining (SR, Meta-LoRA) and LoRA fine-tuning of the chosen layers for ``llm planted``, and the spectra of the
retrained weights against the planted truth.

What is trained (everything else is frozen, including the chosen layers' biases):

* **SR** (standard retraining): the weight matrices ``W`` of the chosen layers, from the pretrained ``W0``, on the
  pooled retraining tasks: ``min_W (1/T) sum_t MSE_t(W)``, MSE_t the masked mean squared error
  (:func:`llm.planted_model.masked_mse`) between the student's and teacher t's outputs on task t's inputs.
* **Meta-LoRA**: the same ``W`` plus one rank-k LoRA ``s B_t A_t`` per task on every chosen layer, jointly:
  ``min_{W, A, B} (1/T) sum_t MSE_t(W + s B_t A_t)``; the adapters are :class:`llm.multilora.MultiTaskLoraLinear`
  (peft's LoRA layer with all T adapters in one batch; ``s = alpha / r = 1``, peft's init: ``A_t`` kaiming-uniform,
  ``B_t = 0``, no dropout).
* **Fine-tuning** the new task: a fresh peft LoRA of rank r (``lora_alpha = r``, so ``s = 1``; no dropout) on the
  chosen layers of a frozen base (SR's, Meta-LoRA's, or the pretrained ``W0``), from its n training inputs.

Both retraining methods use one Adam optimiser (torch defaults besides the learning rate, cosine decay) on the same
batches (``per_task`` rows of every task in each step, drawn from the seed; every row when ``per_task`` is 0), the
same steps, learning rate, inputs and targets; fine-tuning is full-batch L-BFGS with its own budget. A run's own
LoRA initialisation comes from ``torch.manual_seed(seed)`` inside ``torch.random.fork_rng`` (the caller's
generator state is left alone). Since the batches and initialisations are drawn from the seed, a seed reproduces
a run's numbers on the same machine.

Spectra (Theorems 3.1 and 3.3): for each chosen layer, the singular values of ``(W - A*) Sigma^{1/2}``, where
``Sigma`` is the second moment ``(1/M) sum_i x_i x_i^T`` of the layer's inputs over the M real tokens of the
pooled retraining inputs (in the ``A*`` network). This is the data's metric: ``||(W - A*) Sigma^{1/2}||_F^2 =
(1/M) sum_i ||(W - A*) x_i||^2``, the analogue of the paper's population loss with ``x ~ N(0, I)``; directions
the inputs never visit cannot be learnt by either method and get no weight. The unweighted singular values of
``W - A*`` are reported too.
"""

from __future__ import annotations

import contextlib
import warnings
from dataclasses import dataclass

import torch

from .config import LORA_PREFIX, NonFiniteLossError
from .planted_model import Cache, base_linear, current_weights, masked_mse, set_weights

__all__ = ["RetrainResult", "FinetuneCurve", "retrain", "finetune", "input_second_moment", "weighted_spectrum"]


@dataclass(frozen=True)
class RetrainResult:
    """Weights ``{name: (d_out, d_in)}`` after retraining, the per-step training loss ``(steps,)`` and, for
    Meta-LoRA, each task's learnt adapter delta ``{name: (T, d_out, d_in)}`` (empty for SR)."""

    method: str
    weights: dict
    losses: tuple
    adapter_deltas: dict


@dataclass(frozen=True)
class FinetuneCurve:
    """Test loss after ``steps[i]`` evaluations of the training loss and gradient (``steps[0] = 0``: the base
    without adapter), and the training loss at the same points (``train_loss[i]`` at ``steps[i]``)."""

    steps: tuple
    test_loss: tuple
    train_loss: tuple


@contextlib.contextmanager
def _seeded(seed: int):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        yield


def _check_finite(loss: torch.Tensor, what: str, step: int) -> None:
    if not torch.isfinite(loss):
        raise NonFiniteLossError(f"{what}: non-finite loss at step {step}; lower the learning rate")


def _batches(task_of_row: torch.Tensor, per_task: int, steps: int, seed: int):
    """Row indices of every step: ``per_task`` rows of each task drawn without replacement within the step
    (independently across steps) from ``torch.Generator().manual_seed(seed)``; all rows when ``per_task`` is 0."""
    if per_task <= 0:
        rows = torch.arange(task_of_row.shape[0])
        return [rows] * steps
    g = torch.Generator().manual_seed(int(seed))
    groups = [torch.nonzero(task_of_row == t)[:, 0] for t in range(int(task_of_row.max()) + 1)]
    out = []
    for _ in range(steps):
        out.append(torch.cat([grp[torch.randperm(grp.shape[0], generator=g)[:per_task]] for grp in groups]))
    return out


def retrain(model, names: tuple[str, ...], cache: Cache, targets: torch.Tensor, task_of_row: torch.Tensor, *,
            method: str, k: int, steps: int, lr: float, seed: int, predict, per_task: int = 0,
            lr_adapter: float | None = None) -> RetrainResult:
    """SR (``method='sr'``) or Meta-LoRA (``'meta-lora'``, rank-k adapters) of the chosen layers (module docstring).

    ``cache``: ``B`` rows of the T tasks' inputs (sequences, or tokens of a flattened cache); ``targets``: each row's
    teacher output, ``predict(model, cache)``'s shape (e.g. ``(B, L, H)``); ``task_of_row``: ``(B,)`` int64 in
    ``[0, T)``. Adam for ``steps`` steps, learning rate ``lr`` (adapters: ``lr_adapter``, default ``lr``) with cosine
    decay to 0; each step takes ``per_task`` rows of every task (0: all rows). The batches and the adapters' init
    (``alpha = k``: scaling 1) depend on ``seed`` only, so SR and Meta-LoRA of a seed see the same batches. The chosen
    weights are restored to their values on entry when this returns.

    Returns
    -------
    RetrainResult
        Retrained weights, every step's loss (masked MSE) and, for Meta-LoRA, each task's adapter delta.

    Raises
    ------
    NonFiniteLossError
        When a step's loss is not finite.
    ValueError
        Meta-LoRA with ``k`` not an integer >= 1 (:func:`llm.multilora.inject_multitask_lora`).
    """
    from .multilora import inject_multitask_lora, set_mode, task_ids, unload_multitask_lora

    n_tasks = int(task_of_row.max()) + 1
    start = current_weights(model, names)
    linears = [base_linear(model, n) for n in names]
    injected = False
    try:
        with _seeded(seed):
            if method == "meta-lora":
                inject_multitask_lora(model, n_tasks=n_tasks, r=k, alpha=float(k), dropout=0.0,
                                      target_modules=list(names))
                injected = True
                # rows of one task are contiguous blocks of a batch: one product per task ("grouped") beats a
                # per-row gather when rows are single tokens
                set_mode(model, "grouped")
        for lin in linears:
            lin.weight.requires_grad_(True)
        groups = [{"params": [lin.weight for lin in linears], "lr": lr}]
        if injected:
            groups.append({"params": [p for n, p in model.named_parameters() if f".{LORA_PREFIX}" in n],
                           "lr": lr if lr_adapter is None else lr_adapter})
        opt = torch.optim.Adam(groups)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
        losses = []
        full = per_task <= 0
        for step, rows in enumerate(_batches(task_of_row, per_task, steps, seed)):
            batch = cache if full else cache.take(rows)
            ctx = task_ids(model, task_of_row[rows]) if injected else contextlib.nullcontext()
            opt.zero_grad(set_to_none=True)
            with ctx:
                loss = masked_mse(predict(model, batch), targets[rows], batch.token_mask)
            _check_finite(loss, f"{method} retraining", step)
            loss.backward()
            opt.step()
            sched.step()
            losses.append(loss.item())
        weights = current_weights(model, names)
        deltas = {}
        if injected:
            deltas = {n: torch.stack([model.get_submodule(n).get_delta_weight(t).detach().clone()
                                      for t in range(n_tasks)]) for n in names}
        return RetrainResult(method, weights, tuple(losses), deltas)
    finally:
        if injected:
            unload_multitask_lora(model)
        for lin in linears:
            lin.weight.requires_grad_(False)
        with torch.no_grad():
            for n, W in start.items():
                base_linear(model, n).weight.copy_(W)


@torch.no_grad()
def _eval(model, predict, cache: Cache, target: torch.Tensor) -> float:
    return float(masked_mse(predict(model, cache), target, cache.token_mask))


def finetune(model, names: tuple[str, ...], base: dict, *, r: int, train: tuple, test: tuple, steps: int,
             seed: int, eval_every: int, predict) -> FinetuneCurve:
    """Fit a fresh peft LoRA of rank ``r`` on the chosen layers of the frozen ``base`` weights to the new task.

    ``train`` and ``test``: ``(cache, target)`` pairs (the n training and m held-out turns). Full-batch L-BFGS
    (``torch.optim.LBFGS``: strong-Wolfe line search, history 10, no stopping tolerance) until ``steps``
    evaluations of the training loss and its gradient (one *step* = one forward and backward pass over the n
    turns; the line search's evaluations count), in calls of about ``eval_every`` evaluations; the test loss is
    recorded before training and after every call, the training loss at the start of every call and at the end.
    The objective is the training MSE divided by its starting value (L-BFGS's first step and line search depend on
    the scale of the loss, O(1e-4) here). ``seed`` seeds the LoRA
    initialisation (peft's: ``A`` kaiming-uniform, ``B = 0``), so the three bases of one run start alike. The model
    is left as it was on entry.

    Parameters
    ----------
    model : torch.nn.Module
        The encoder.
    names : tuple of str
        The chosen layers, adapted by the LoRA.
    base : dict of str to torch.Tensor
        The frozen base weights ``{name: (d_out, d_in)}``.
    r : int
        LoRA rank (``lora_alpha = r``).
    train, test : tuple
        ``(cache, target)`` of the n training and the m held-out turns.
    steps : int
        Budget of loss-and-gradient evaluations.
    seed : int
        Seeds the LoRA initialisation.
    eval_every : int
        Evaluations per L-BFGS call (between test losses).
    predict : callable
        ``(model, cache) -> output``.

    Returns
    -------
    FinetuneCurve
        Test and training loss (masked MSE, unnormalised) against the evaluations used.

    Raises
    ------
    NonFiniteLossError
        When the training objective is not finite.
    """
    from peft import LoraConfig, get_peft_model

    cfg = LoraConfig(r=r, lora_alpha=r, target_modules=list(names), lora_dropout=0.0, bias="none")
    (tr_cache, tr_target), (te_cache, te_target) = train, test
    with set_weights(model, base):
        with _seeded(seed), warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            peft_model = get_peft_model(model, cfg)
        try:
            opt = torch.optim.LBFGS([p for p in peft_model.parameters() if p.requires_grad], lr=1.0,
                                    max_iter=eval_every, max_eval=eval_every, history_size=10,
                                    line_search_fn="strong_wolfe", tolerance_grad=0.0, tolerance_change=0.0)
            unit = 1.0 / max(_eval(model, predict, tr_cache, tr_target), 1e-30)

            def closure():
                opt.zero_grad(set_to_none=True)
                loss = unit * masked_mse(predict(model, tr_cache), tr_target, tr_cache.token_mask)
                loss.backward()
                return loss
            eval_steps, test_losses, train_losses = [0], [_eval(model, predict, te_cache, te_target)], []
            state = opt.state[opt.param_groups[0]["params"][0]]
            while state.get("func_evals", 0) < steps:
                loss = opt.step(closure)  # the objective at the start of the call
                _check_finite(loss, f"rank-{r} fine-tuning", state["func_evals"])
                train_losses.append(loss.item() / unit)
                eval_steps.append(int(state["func_evals"]))
                test_losses.append(_eval(model, predict, te_cache, te_target))
            train_losses.append(_eval(model, predict, tr_cache, tr_target))
        finally:
            peft_model.unload()
    return FinetuneCurve(tuple(eval_steps), tuple(test_losses), tuple(train_losses))


@torch.no_grad()
def input_second_moment(model, names: tuple[str, ...], cache: Cache, forward) -> dict[str, torch.Tensor]:
    """``Sigma = (1/M) sum_i x_i x_i^T`` ``(d_in, d_in)`` of each chosen layer's inputs over the M real tokens of
    ``cache``, captured by forward pre-hooks while ``forward(model, cache)`` runs (the caller sets the weights).

    Returns
    -------
    dict of str to torch.Tensor
        ``{name: (d_in, d_in)}`` float64, symmetric positive semi-definite.
    """
    sums: dict[str, torch.Tensor] = {}
    mask = cache.token_mask.reshape(-1)

    def hook_for(name):
        def hook(_mod, args):
            x = args[0].reshape(-1, args[0].shape[-1])[mask].double()
            sums[name] = sums.get(name, 0) + x.T @ x
        return hook

    handles = [base_linear(model, n).register_forward_pre_hook(hook_for(n)) for n in names]
    try:
        forward(model, cache)
    finally:
        for h in handles:
            h.remove()
    m = int(mask.sum())
    return {n: (sums[n] / m) for n in names}


def weighted_spectrum(D: torch.Tensor, sigma: torch.Tensor | None) -> torch.Tensor:
    """Singular values (descending, float64) of ``D Sigma^{1/2}`` for ``D (d_out, d_in)`` and ``Sigma (d_in, d_in)``
    positive semi-definite (``Sigma^{1/2}`` from its eigendecomposition, negative round-off clipped to 0); of ``D``
    itself when ``sigma`` is None.

    ``||D Sigma^{1/2}||_F^2 = (1/M) sum_i ||D x_i||^2`` (module docstring): the data's metric.

    Returns
    -------
    torch.Tensor
        ``(min(d_out, d_in),)`` float64, descending.

    >>> D, sigma = torch.diag(torch.tensor([3.0, 4.0])), torch.diag(torch.tensor([4.0, 1.0]))
    >>> weighted_spectrum(D, None).tolist(), [round(s, 9) for s in weighted_spectrum(D, sigma).tolist()]
    ([4.0, 3.0], [6.0, 4.0])
    """
    D = D.double()
    if sigma is not None:
        evals, evecs = torch.linalg.eigh(sigma.double())
        root = (evecs * evals.clamp_min(0).sqrt()) @ evecs.T
        D = D @ root
    return torch.linalg.svdvals(D)
