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
``tests/llm/test_llm_multilora.py``.

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

from .inject import (inject_multitask_head, inject_multitask_lora, multitask_modules, set_mode, task_ids,
                     trainable_lora_parameters, unload_multitask_lora)
from .layers import DEFAULT_MODE, MODES, MultiTaskHead, MultiTaskLoraLinear
from .peft_io import export_task_adapter, import_task_adapter

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
    "DEFAULT_MODE",
]
