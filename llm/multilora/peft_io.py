"""Export and import of one task's adapter of :mod:`llm.multilora` in peft's format (``adapter_config.json`` +
``adapter_model.safetensors``), so that ``peft.PeftModel.from_pretrained`` reads what the stacked layers trained.
"""

from __future__ import annotations

import json
import os
import re

import torch
from torch import nn

from ..atomic import atomic_path, atomic_write_text
from ..config import LORA_PREFIX
from .inject import multitask_modules
from .layers import MultiTaskHead, MultiTaskLoraLinear, check_task

__all__ = ["export_task_adapter", "import_task_adapter"]


def _peft_prefix(name: str) -> str:
    return f"base_model.model.{name}"


# peft's sequence-classification models save these whole modules with every adapter (PeftModelForSequenceClassification)
_PEFT_SEQ_CLS_MODULES = ("classifier", "score")


def _saved_modules(model: nn.Module, heads: list[str], task_type: str | None) -> list[str]:
    """The modules peft will treat as ``modules_to_save`` for this export: our per-task heads, plus (SEQ_CLS) the
    whole classification module that holds them; names nested in another listed module are dropped."""
    names = set(heads)
    if str(getattr(task_type, "value", task_type)) == "SEQ_CLS":
        names |= {n for n in _PEFT_SEQ_CLS_MODULES if _has_submodule(model, n)}
    return sorted(n for n in names if not any(n.startswith(o + ".") for o in names))


def _has_submodule(model: nn.Module, name: str) -> bool:
    try:
        model.get_submodule(name)
    except AttributeError:
        return False
    return True


def _module_tensors(module: nn.Module, prefix: str, t: int) -> dict[str, torch.Tensor]:
    """Every parameter of ``module`` under ``prefix``, task t's slice for a MultiTaskHead inside it."""
    out = {}
    for sub_name, sub in module.named_modules():
        for pname, p in sub.named_parameters(recurse=False):
            key = ".".join(x for x in (prefix, sub_name, pname) if x)
            value = p[t] if isinstance(sub, MultiTaskHead) else p
            out[key] = value.detach().cpu().contiguous().clone()
    return out


def export_task_adapter(model: nn.Module, t: int, out_dir: str | os.PathLike, *,
                        base_model_name_or_path: str | None = None, task_type: str | None = None) -> str:
    """Write task t's adapter (and its head slices, if any) in peft's format; returns ``out_dir``.

    ``out_dir/adapter_config.json`` (a ``peft.LoraConfig`` with the replaced module names as ``target_modules``)
    and ``out_dir/adapter_model.safetensors`` with keys ``base_model.model.<name>.lora_A.weight`` (r, d_in) and
    ``...lora_B.weight`` (d_out, r); MultiTaskHead slices go under ``modules_to_save`` as
    ``base_model.model.<name>.weight`` / ``.bias``. With ``task_type='SEQ_CLS'`` peft saves and expects the whole
    classification module (``classifier`` / ``score``: for RoBERTa its ``dense`` layer as well), so that module
    is written whole. ``peft.PeftModel.from_pretrained(base, out_dir)`` on a model of the same class and base
    weights as ``model`` (before injection) then computes what ``model`` computes for task t. Both files are
    written atomically (temporary file + rename).

    Returns
    -------
    str
        ``out_dir`` (as a string).

    Raises
    ------
    ValueError
        When ``model`` holds no multi-task LoRA or ``t`` is not a task index in ``[0, T)``.
    """
    import peft
    from safetensors.torch import save_file

    cfg = getattr(model, "_multitask_lora_config", None)
    if cfg is None:
        raise ValueError("the model holds no multi-task LoRA (inject_multitask_lora was not called on it)")
    check_task(t, cfg["n_tasks"])
    tensors: dict[str, torch.Tensor] = {}
    heads = []
    for name, m in multitask_modules(model):
        if isinstance(m, MultiTaskLoraLinear):
            tensors[_peft_prefix(name) + ".lora_A.weight"] = m.lora_A[t].detach().cpu().contiguous().clone()
            tensors[_peft_prefix(name) + ".lora_B.weight"] = m.lora_B[t].detach().cpu().contiguous().clone()
        else:
            heads.append(name)
    saved = _saved_modules(model, heads, task_type)
    for name in saved:
        tensors.update(_module_tensors(model.get_submodule(name), _peft_prefix(name), t))
    lora_cfg = peft.LoraConfig(
        r=cfg["r"], lora_alpha=cfg["lora_alpha"], lora_dropout=cfg["lora_dropout"],
        target_modules=list(cfg["target_modules"]), modules_to_save=saved or None,
        base_model_name_or_path=base_model_name_or_path, task_type=task_type,
    )
    out_dir = os.fspath(out_dir)
    os.makedirs(out_dir, exist_ok=True)
    config_dict = lora_cfg.to_dict()
    config_dict = json.loads(json.dumps(config_dict, default=_json_default))
    atomic_write_text(os.path.join(out_dir, "adapter_config.json"), json.dumps(config_dict, indent=2, sort_keys=True))
    with atomic_path(os.path.join(out_dir, "adapter_model.safetensors"), suffix=".safetensors") as tmp:
        save_file(tensors, tmp, metadata={"format": "pt"})
    return out_dir


def _json_default(obj):
    if isinstance(obj, (set, frozenset)):
        return sorted(obj)
    if hasattr(obj, "value"):  # enums (TaskType, PeftType)
        return obj.value
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def _strip_adapter_name(key: str) -> str:
    # peft saves without the adapter name; accept "lora_A.<adapter>.weight" too (a state dict taken from a model)
    return re.sub(r"\.(lora_[AB])\.[^.]+\.weight$", r".\1.weight", key)


def import_task_adapter(model: nn.Module, t: int, adapter_dir: str | os.PathLike) -> None:
    """Load a peft-format LoRA adapter (as written by :func:`export_task_adapter` or peft) into task t's slices.

    Checks rank, alpha and that every wrapped module receives exactly its A ``(r, d_in)`` and B ``(d_out, r)``;
    head slices are loaded for MultiTaskHead modules when the file holds them. Other tasks' slices are untouched.

    Raises
    ------
    ValueError
        Naming the mismatch: the model holds no multi-task LoRA; ``t`` is not in ``[0, T)``; a file is missing,
        not JSON or not safetensors; another rank or alpha; an option the stacked layers do not implement (rsLoRA,
        DoRA, ``fan_in_fan_out``, LoRA bias, per-module rank or alpha patterns); a missing, extra or misshapen
        tensor; or a shared weight that differs from the model's.
    """
    from safetensors.torch import load_file

    cfg = getattr(model, "_multitask_lora_config", None)
    if cfg is None:
        raise ValueError("the model holds no multi-task LoRA (inject_multitask_lora was not called on it)")
    check_task(t, cfg["n_tasks"])
    adapter_dir = os.fspath(adapter_dir)
    cfg_path = os.path.join(adapter_dir, "adapter_config.json")
    weights_path = os.path.join(adapter_dir, "adapter_model.safetensors")
    for p in (cfg_path, weights_path):
        if not os.path.isfile(p):
            raise ValueError(f"{p}: not found (a peft adapter folder holds adapter_config.json and "
                             "adapter_model.safetensors)")
    with open(cfg_path, encoding="utf-8") as fh:
        try:
            saved = json.load(fh)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ValueError(f"{cfg_path}: not valid JSON ({exc})") from None
    if not isinstance(saved, dict):
        raise ValueError(f"{cfg_path}: a peft adapter config is a JSON object, got {type(saved).__name__}")
    if saved.get("r") != cfg["r"] or saved.get("lora_alpha") != cfg["lora_alpha"]:
        raise ValueError(f"{cfg_path}: r={saved.get('r')}, lora_alpha={saved.get('lora_alpha')} but the model's "
                         f"adapters have r={cfg['r']}, lora_alpha={cfg['lora_alpha']}")
    _refuse_unsupported(saved, cfg, cfg_path)
    try:
        state = {_strip_adapter_name(k): v for k, v in load_file(weights_path).items()}
    except Exception as exc:  # safetensors raises its own error type for a damaged file
        raise ValueError(f"{weights_path}: not a readable safetensors file ({exc})") from None
    expected = set()
    with torch.no_grad():
        for name, m in multitask_modules(model):
            pre = _peft_prefix(name)
            if isinstance(m, MultiTaskLoraLinear):
                for key, param in ((pre + ".lora_A.weight", m.lora_A), (pre + ".lora_B.weight", m.lora_B)):
                    expected.add(key)
                    if key not in state:
                        raise ValueError(f"{weights_path}: missing {key}")
                    _check_shape(weights_path, key, state[key], param.shape[1:])
                    param[t].copy_(state[key].to(param.dtype))
            else:
                for suffix, param in ((".weight", m.weight), (".bias", m.bias)):
                    key = pre + suffix
                    if param is None or key not in state:
                        continue
                    expected.add(key)
                    _check_shape(weights_path, key, state[key], param.shape[1:])
                    param[t].copy_(state[key].to(param.dtype))
    extra = sorted(k for k in state if f".{LORA_PREFIX}" in k and k not in expected)
    if extra:
        raise ValueError(f"{weights_path}: adapter weights for modules the model does not wrap: {extra[:4]}")
    _check_shared_weights(model, state, expected, weights_path)


# Fields of a saved peft LoraConfig that change what an adapter computes and that MultiTaskLoraLinear does not
# implement: an adapter using any of them is refused rather than imported with different outputs.
_UNSUPPORTED = {"use_rslora": False, "use_dora": False, "fan_in_fan_out": False, "lora_bias": False, "bias": "none",
                "layer_replication": None, "use_qalora": False, "trainable_token_indices": None}


def _refuse_unsupported(saved: dict, cfg: dict, cfg_path: str) -> None:
    for key, default in _UNSUPPORTED.items():
        value = saved.get(key, default)
        if value not in (default, None, False, {}, []) and value != default:
            raise ValueError(f"{cfg_path}: {key}={value!r} changes the adapter's outputs and is not supported by "
                             f"MultiTaskLoraLinear (only {key}={default!r})")
    for key, glob in (("rank_pattern", cfg["r"]), ("alpha_pattern", cfg["lora_alpha"])):
        odd = {k: v for k, v in (saved.get(key) or {}).items() if float(v) != float(glob)}
        if odd:
            raise ValueError(f"{cfg_path}: {key} {odd} gives some modules another "
                             f"{'rank' if key == 'rank_pattern' else 'alpha'} than {glob}; MultiTaskLoraLinear "
                             "has one rank and one alpha for all modules")


def _check_shape(path: str, key: str, value: torch.Tensor, shape) -> None:
    if tuple(value.shape) != tuple(shape):
        raise ValueError(f"{path}: {key} has shape {tuple(value.shape)}, expected {tuple(shape)}")


def _check_shared_weights(model: nn.Module, state: dict, used: set, path: str) -> None:
    """Weights in the file that are neither LoRA nor a per-task head slice (e.g. RoBERTa's ``classifier.dense``
    saved whole by peft for SEQ_CLS) belong to modules every task shares: accepted only when they equal the
    model's own, since importing them would change every task."""
    params = {_peft_prefix(n.replace(".base_layer.", ".")): p for n, p in model.named_parameters()}
    for key in sorted(set(state) - used):
        if f".{LORA_PREFIX}" in key:
            continue
        mine = params.get(key)
        if mine is None:
            raise ValueError(f"{path}: holds {key}, a module the model does not have")
        if tuple(mine.shape) != tuple(state[key].shape) or not torch.equal(mine.detach().cpu(),
                                                                            state[key].to(mine.dtype)):
            raise ValueError(f"{path}: {key} differs from the model's own weights; it is shared by every task, "
                             "so importing it would change the other tasks too")
