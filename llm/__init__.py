"""``llm``: Meta-LoRA vs standard retraining of a pretrained encoder on multi-speaker dialogue (paper, Section 4.2).

Modules: :mod:`llm.config` (presets, errors), :mod:`llm.data` (chitchat / ConvAI2 readers, task types),
:mod:`llm.tasks` (the task builder), :mod:`llm.tokens` (tokenisation, batches), :mod:`llm.prefix` (frozen lower
layers computed once), :mod:`llm.models` (bi- and cross-encoder scorers, heads), :mod:`llm.adapters` (the adapter
protocol and registry), :mod:`llm.multilora` (batched multi-task LoRA), :mod:`llm.loop` (epochs, evaluation, epoch
selection), :mod:`llm.train` (SR, Meta-LoRA), :mod:`llm.finetune` (fine-tuning, the no-fine-tuning control),
:mod:`llm.checkpoint`, :mod:`llm.atomic` (files written whole or not at all), :mod:`llm.stats` (seed-level
statistics), :mod:`llm.table` and :mod:`llm.report` (Table 1 with controls), :mod:`llm.bundle` (offline bundle for
a GPU), ``llm.planted*`` (the planted-truth experiment).
Command line: ``python -m llm {table, retrain, finetune, bundle, planted} --help``.
"""

from .config import PRESETS, CandidateError, Config, DataError, LLMError, ModelError, NonFiniteLossError, preset

__all__ = ["Config", "PRESETS", "preset", "LLMError", "ModelError", "DataError", "CandidateError",
           "NonFiniteLossError"]
