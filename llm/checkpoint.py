"""Checkpoints of retraining / fine-tuning runs, written atomically.

Layout of a run folder ``RUN``::

    RUN/LATEST                     name of the last finished epoch's folder (replaced with os.replace)
    RUN/BEST                       name of the epoch with the best validation accuracy so far (the selected one)
    RUN/epoch-003/
        model.safetensors          the encoder's weights under plain HF names (no LoRA): with config.json and the
        config.json, tokenizer*    tokenizer files this folder is itself a model folder that ``--model`` can load
        heads.safetensors          the task heads (``heads.{t}.*``)
        adapters/task{t}/          each task's LoRA adapter in peft's format (Meta-LoRA runs)
        train_state.safetensors    LoRA and head tensors under the module's names (with model.safetensors: resume)
        optimizer.pt               AdamW + scheduler state and the torch RNG state (read with weights_only=True)
        state.json                 epoch, losses and accuracies so far, configuration

An epoch folder is written under a temporary name and renamed when complete; ``LATEST`` (and ``BEST``) are then
replaced atomically and epoch folders that neither names are removed, so a kill at any moment leaves the last good
epoch readable. :func:`remove_checkpoints` deletes what only served resuming once a run is finished.
"""

from __future__ import annotations

import json
import os
import shutil

import torch

from .atomic import atomic_dir, atomic_write_text
from .config import LORA_PREFIX, LLMError

__all__ = ["latest_checkpoint", "best_checkpoint", "save_checkpoint",
           "load_train_state", "read_state", "resolve_encoder", "remove_checkpoints"]


def _named_checkpoint(run_dir: str, pointer: str) -> str | None:
    p = os.path.join(run_dir, pointer)
    if not os.path.isfile(p):
        return None
    with open(p, encoding="utf-8") as fh:
        name = fh.read().strip()
    path = os.path.join(run_dir, name)
    return path if name.startswith("epoch-") and os.path.isdir(path) else None


def latest_checkpoint(run_dir: str) -> str | None:
    """Folder of the last finished epoch of ``run_dir``, or ``None``.

    Returns
    -------
    str or None
        ``run_dir/epoch-NNN`` named by ``run_dir/LATEST``; ``None`` when the pointer is missing or names no
        existing epoch folder.

    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as run:
    ...     print(latest_checkpoint(run))
    None
    """
    return _named_checkpoint(run_dir, "LATEST")


def best_checkpoint(run_dir: str) -> str | None:
    """Folder of the epoch selected on validation accuracy (``BEST``), else the last one, or ``None``.

    Returns
    -------
    str or None
        ``run_dir/epoch-NNN`` named by ``BEST``, else by ``LATEST``; ``None`` when neither names an existing
        epoch folder.
    """
    return _named_checkpoint(run_dir, "BEST") or latest_checkpoint(run_dir)


def _contig(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu").contiguous().clone() for k, v in state.items()}


def save_checkpoint(run_dir: str, epoch: int, *, model, tokenizer, optimizer, scheduler, state: dict,
                    best: bool = False) -> str:
    """Write epoch ``epoch`` of ``model`` (a :class:`llm.models.Scorer`) atomically; return its folder.

    Parameters
    ----------
    run_dir : str
        The run folder (layout in the module docstring).
    epoch : int
        1-based epoch number; the folder is ``epoch-{epoch:03d}``.
    model : llm.models.Scorer
        Its encoder, heads, adapters (peft format) and trainable tensors are written.
    tokenizer : transformers.PreTrainedTokenizerBase
        Saved beside the encoder, so that the epoch folder is a loadable model folder.
    optimizer, scheduler
        Their ``state_dict()`` go to ``optimizer.pt`` with the torch RNG state.
    state : dict
        Written as ``state.json`` (see :func:`read_state`).
    best : bool
        This epoch becomes ``BEST`` (the selected one).

    Epoch folders named by neither ``LATEST`` nor ``BEST`` are removed afterwards.

    Returns
    -------
    str
        The epoch folder ``run_dir/epoch-NNN``.

    Raises
    ------
    OSError
        When the folder cannot be written (the previous epochs and pointers are then unchanged).
    """
    from safetensors.torch import save_file

    name = f"epoch-{epoch:03d}"
    final = os.path.join(run_dir, name)
    with atomic_dir(final) as tmp:
        save_file(_contig(model.encoder_state()), os.path.join(tmp, "model.safetensors"), metadata={"format": "pt"})
        model.hf.config.to_json_file(os.path.join(tmp, "config.json"))
        tokenizer.save_pretrained(tmp)
        if model.heads is not None:
            save_file(_contig(model.heads.heads.state_dict()), os.path.join(tmp, "heads.safetensors"))
        if model.adapters is not None:
            model.adapters.export(os.path.join(tmp, "adapters"))
        rest = {k: v for k, v in model.state_dict().items() if not k.startswith("hf.") or LORA_PREFIX in k}
        save_file(_contig(rest), os.path.join(tmp, "train_state.safetensors"))  # LoRA + heads; encoder above
        torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                    "rng": torch.get_rng_state()}, os.path.join(tmp, "optimizer.pt"))
        with open(os.path.join(tmp, "state.json"), "w", encoding="utf-8") as fh:
            json.dump(state, fh, indent=1)
    atomic_write_text(os.path.join(run_dir, "LATEST"), name + "\n")
    if best:
        atomic_write_text(os.path.join(run_dir, "BEST"), name + "\n")
    keep = {os.path.basename(p) for p in (latest_checkpoint(run_dir), best_checkpoint(run_dir)) if p}
    for other in os.listdir(run_dir):
        if other.startswith("epoch-") and other not in keep:
            shutil.rmtree(os.path.join(run_dir, other), ignore_errors=True)
    return final


def remove_checkpoints(run_dir: str) -> None:
    """Delete the epoch folders and pointers of a finished run (they only serve resuming); other files stay."""
    for name in os.listdir(run_dir) if os.path.isdir(run_dir) else ():
        path = os.path.join(run_dir, name)
        if name.startswith(("epoch-", ".tmp-epoch-", ".tmp-old-epoch-")) and os.path.isdir(path):
            shutil.rmtree(path, ignore_errors=True)
        elif name in ("LATEST", "BEST"):
            os.unlink(path)


def read_state(ckpt: str) -> dict:
    """The ``state.json`` of checkpoint folder ``ckpt``.

    Returns
    -------
    dict
        ``epoch`` (1-based), ``losses`` and ``val_accuracies`` (one per finished epoch), ``best_epoch`` and
        ``meta`` (method, rank, schedule, seed, configuration and task names of the run).

    Raises
    ------
    OSError
        When ``ckpt/state.json`` is missing or unreadable.
    json.JSONDecodeError
        When it is not JSON.
    """
    with open(os.path.join(ckpt, "state.json"), encoding="utf-8") as fh:
        return json.load(fh)


def load_train_state(ckpt: str, *, model, optimizer, scheduler) -> dict:
    """Restore parameters, optimizer, scheduler and the torch RNG from ``ckpt``; return its ``state.json``.

    Parameters
    ----------
    ckpt : str
        An epoch folder written by :func:`save_checkpoint`.
    model : llm.models.Scorer
        Built with the options of the run that wrote ``ckpt``; loaded in place.
    optimizer, scheduler
        Loaded in place (``optimizer.pt``, read with ``weights_only=True``).

    Returns
    -------
    dict
        The checkpoint's ``state.json`` (see :func:`read_state`).

    Raises
    ------
    LLMError
        When the checkpoint's tensors do not match ``model`` (made with other options).
    OSError
        When a file of the checkpoint is missing or unreadable.
    """
    from safetensors.torch import load_file

    params = load_file(os.path.join(ckpt, "train_state.safetensors"))
    plain = load_file(os.path.join(ckpt, "model.safetensors"))
    for k in model.state_dict():  # encoder tensors under the module's own names (peft's base_layer included)
        if k.startswith("hf.") and LORA_PREFIX not in k:
            name = k[3:].replace(".base_layer.", ".")
            if name in plain:
                params[k] = plain[name]
    missing, unexpected = model.load_state_dict(params, strict=False)
    if missing or unexpected:
        raise LLMError(f"checkpoint {ckpt} does not match the model: missing {missing[:3]}, "
                       f"unexpected {unexpected[:3]} (was it made with other options?)")
    extra = torch.load(os.path.join(ckpt, "optimizer.pt"), weights_only=True, map_location="cpu")
    optimizer.load_state_dict(extra["optimizer"])
    scheduler.load_state_dict(extra["scheduler"])
    torch.set_rng_state(extra["rng"])
    return read_state(ckpt)


def resolve_encoder(path: str) -> str:
    """A retraining run folder -> its selected epoch (``BEST``, else ``LATEST``); a model folder or name -> itself.

    Returns
    -------
    str
        The epoch folder of a run folder (one holding ``LATEST`` or ``BEST``), else ``path`` unchanged.

    Raises
    ------
    LLMError
        When the run folder's pointers name no existing checkpoint.

    >>> resolve_encoder("minilm")
    'minilm'
    """
    if os.path.isfile(os.path.join(path, "LATEST")) or os.path.isfile(os.path.join(path, "BEST")):
        ckpt = best_checkpoint(path)
        if ckpt is None:
            raise LLMError(f"run folder {path} names a checkpoint that does not exist")
        return ckpt
    return path
