"""``llm``: Meta-LoRA vs standard retraining of a pretrained encoder on multi-speaker dialogue (paper, Section 4.2).

Modules: :mod:`llm.config` (presets, errors), :mod:`llm.data` (chitchat / ConvAI2 tasks), :mod:`llm.tokens`
(tokenisation, batches), :mod:`llm.prefix` (frozen lower layers computed once), :mod:`llm.models` (bi- and
cross-encoder scorers, heads, adapters), :mod:`llm.train` (SR, Meta-LoRA, fine-tuning, evaluation),
:mod:`llm.checkpoint`, :mod:`llm.stats` (seed-level statistics), :mod:`llm.table` and :mod:`llm.report` (Table 1
with controls), :mod:`llm.multilora` (batched multi-task LoRA), :mod:`llm.bundle` (offline bundle for a GPU).
Command line: ``python -m llm {table, retrain, finetune, bundle} --help``.
"""

from .config import PRESETS, CandidateError, Config, DataError, LLMError, ModelError, NonFiniteLossError, preset

__all__ = ["Config", "PRESETS", "preset", "LLMError", "ModelError", "DataError", "CandidateError",
           "NonFiniteLossError"]
