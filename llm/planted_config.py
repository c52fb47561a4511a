"""The settings of ``python -m llm planted`` (:mod:`llm.planted`): :class:`PlantedConfig`, its checks, the presets
and the fine-tuning ranks of a setting. Kept apart from the experiment, and free of torch, so that the command
line's parser (which reads the presets) and its refusals of bad options start in a fraction of a second.
"""

from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass, field

import numpy as np

from .config import LLMError

__all__ = ["DEFAULT_LAYERS", "PlantedConfig", "PRESETS", "planted_preset", "finetune_ranks"]

DEFAULT_LAYERS = r"encoder\.layer\.5\.attention\.output\.dense"


@dataclass(frozen=True)
class PlantedConfig:
    """Every knob of ``llm planted`` (defaults: the ``default`` preset); a field's meaning is its ``metadata["help"]``.

    Sizes count chitchat turns, scales are ratios of Frobenius norms, learning rates are per optimiser step.

    Raises
    ------
    LLMError
        On construction and :meth:`replace`, for a value outside its field's rule (the message names both).
    """

    model: str = field(default="minilm", metadata={"help": "'minilm' (packaged) or a local BERT model folder"})
    layers: str = field(default=DEFAULT_LAYERS, metadata={"help": "regex (full match) of the chosen layers' names"})
    settings: tuple = field(default=((2, 1), (3, 1), (5, 1), (2, 2), (3, 2), (5, 2)),
                            metadata={"help": "(T, k) pairs: T retraining tasks, rank-k perturbations"})
    seeds: tuple = field(default=(0, 1, 2), metadata={"help": "seeds (the unit of replication)"})
    retrain_turns: int = field(default=600, metadata={"help": "N: turns per retraining task"})
    finetune_turns: int = field(default=64, metadata={"help": "n: training turns of the new task"})
    n_sweep: tuple = field(default=(16, 128), metadata={"help": "further n, run at the n_sweep_setting"})
    n_sweep_setting: tuple = field(default=(3, 1), metadata={"help": "(T, k) of the n sweep"})
    heldout_turns: int = field(default=64, metadata={"help": "m: held-out turns of the new task (test loss)"})
    min_tokens: int = field(default=8, metadata={"help": "shortest turn kept, in tokens with [CLS], [SEP]"})
    max_tokens: int = field(default=16, metadata={"help": "longest turn kept (and the padded length L)"})
    shift_scale: float = field(default=0.1, metadata={"help": "||S||_F / ||W0||_F"})
    shift_rank: int = field(default=0, metadata={"help": "rank of S (0: full rank)"})
    delta_scale: float = field(default=0.1, metadata={"help": "||Delta_t||_F / ||W0||_F"})
    retrain_steps: int = field(default=300, metadata={"help": "Adam steps of SR and of Meta-LoRA"})
    retrain_batch: int = field(default=64, metadata={"help": "rows of each task per retraining step (0: all)"})
    retrain_lr: float = field(default=1e-3, metadata={"help": "lr of the chosen weights (SR and Meta-LoRA)"})
    retrain_lr_adapter: float = field(default=1e-2, metadata={"help": "lr of Meta-LoRA's adapters"})
    finetune_steps: int = field(default=40, metadata={"help": "L-BFGS evaluations of each fine-tuning"})
    eval_every: int = field(default=5, metadata={"help": "fine-tuning evaluations between test losses"})
    eval_rows: int = field(default=1024, metadata={"help": "rows per task for the full retraining losses"})
    threshold: float = field(default=0.5, metadata={"help": "rank threshold as a fraction of the linear "
                                                             "prediction's Tk-th singular value"})
    target: str = field(default="hidden", metadata={"help": "'hidden' (final hidden states) or 'layer' (the "
                                                            "chosen layer's output: the linear limit)"})
    data_seed: int = field(default=0, metadata={"help": "seed of the turn pool's order"})
    threads: int = field(default=2, metadata={"help": "torch CPU threads (0: torch's default)"})

    def __post_init__(self):
        _validate(self)

    @property
    def n_values(self) -> list[int]:
        """Every ``n`` (new-task training turns) fine-tuned with, ascending: ``finetune_turns`` and ``n_sweep``.

        >>> PlantedConfig().n_values
        [16, 64, 128]
        """
        return sorted({self.finetune_turns, *self.n_sweep})

    def replace(self, **changes) -> "PlantedConfig":
        """A copy with the fields ``changes`` replaced (``dataclasses.replace``), validated again.

        Returns
        -------
        PlantedConfig

        Raises
        ------
        LLMError
            As :class:`PlantedConfig` (and ``TypeError`` for a keyword that is not a field).
        """
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        """The fields as a JSON-ready dict (tuples become lists), as ``summary.json`` records them.

        Returns
        -------
        dict
        """
        return json.loads(json.dumps(dataclasses.asdict(self)))  # tuples become lists


def _validate(c: PlantedConfig) -> None:
    def ints(name, lo):
        v = getattr(c, name)
        vals = v if isinstance(v, tuple) else (v,)
        if not vals or any(isinstance(x, bool) or not isinstance(x, (int, np.integer)) or x < lo for x in vals):
            raise LLMError(f"{name} must be {'integers' if isinstance(v, tuple) else 'an integer'} >= {lo}, "
                           f"got {v!r}")
    for name, lo in (("seeds", 0), ("retrain_turns", 1), ("finetune_turns", 1),
                     ("heldout_turns", 1), ("min_tokens", 3), ("max_tokens", 3), ("shift_rank", 0),
                     ("retrain_steps", 1), ("retrain_batch", 0), ("finetune_steps", 1),
                     ("eval_every", 1), ("eval_rows", 1), ("data_seed", 0), ("threads", 0)):
        ints(name, lo)
    if c.n_sweep:
        ints("n_sweep", 1)
    pairs = c.settings
    if (not isinstance(pairs, tuple) or not pairs
            or any(not isinstance(p, tuple) or len(p) != 2 for p in pairs)):
        raise LLMError(f"settings must be a non-empty tuple of (T, k) pairs, got {pairs!r}")
    for T, k in pairs:
        if isinstance(T, bool) or not isinstance(T, (int, np.integer)) or T < 2:
            raise LLMError(f"T must be an integer >= 2 (T = 2 is Theorem 3.2's case, 3.3 needs T >= 3), got {T!r}")
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise LLMError(f"k must be an integer >= 1, got {k!r}")
    if len(set(pairs)) != len(pairs):
        raise LLMError(f"settings must be distinct, got {pairs!r}")
    if len(set(c.seeds)) != len(c.seeds):
        raise LLMError(f"seeds must be distinct, got {c.seeds!r}")
    if c.min_tokens > c.max_tokens:
        raise LLMError(f"min_tokens {c.min_tokens} exceeds max_tokens {c.max_tokens}")
    for name in ("retrain_lr", "retrain_lr_adapter", "delta_scale"):
        v = getattr(c, name)
        if not (isinstance(v, (int, float)) and np.isfinite(v) and v > 0):
            raise LLMError(f"{name} must be a finite number > 0, got {v!r}")
    if not (isinstance(c.shift_scale, (int, float)) and np.isfinite(c.shift_scale) and c.shift_scale >= 0):
        raise LLMError(f"shift_scale must be a finite number >= 0, got {c.shift_scale!r}")
    if not (isinstance(c.threshold, (int, float)) and 0 < c.threshold <= 1):
        raise LLMError(f"threshold must lie in (0, 1], got {c.threshold!r}")
    try:
        re.compile(c.layers)
    except (re.error, TypeError) as exc:
        raise LLMError(f"--layers {c.layers!r} is not a valid regular expression ({exc})") from None
    if c.target not in ("hidden", "layer"):
        raise LLMError(f"target must be 'hidden' or 'layer', got {c.target!r}")
    if c.n_sweep and tuple(c.n_sweep_setting) not in c.settings:
        raise LLMError(f"n_sweep_setting {tuple(c.n_sweep_setting)} is not one of the (T, k) settings")


PRESETS = {
    "default": PlantedConfig(),
    "smoke": PlantedConfig(settings=((2, 1),), seeds=(0, 1), retrain_turns=24, finetune_turns=8, n_sweep=(),
                           heldout_turns=8, retrain_steps=12, retrain_batch=0, finetune_steps=6, eval_every=3,
                           eval_rows=256, threads=1),
}


def planted_preset(name: str, **overrides) -> PlantedConfig:
    """The preset ``name`` (a key of :data:`PRESETS`) with ``overrides``; a ``None`` override keeps the preset's value.

    Returns
    -------
    PlantedConfig

    Raises
    ------
    LLMError
        For an unknown preset name; otherwise as :meth:`PlantedConfig.replace`.
    """
    if name not in PRESETS:
        raise LLMError(f"preset must be one of {sorted(PRESETS)}, got {name!r}")
    return PRESETS[name].replace(**{k: v for k, v in overrides.items() if v is not None})


def finetune_ranks(T: int, k: int) -> list[int]:
    """The fine-tuning ranks ``k, 2k, 3k, (T+1)k`` of a setting, without repeats, ascending.

    ``k``: Corollary 3 (Meta-LoRA base); ``3k``: Corollary 2; ``(T+1)k = rank(W_{T+1} - A_SR)``: Corollary 1 (SR base).

    Returns
    -------
    list of int
    """
    return sorted({k, 2 * k, 3 * k, (T + 1) * k})
