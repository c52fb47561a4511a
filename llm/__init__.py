"""``llm``: Meta-LoRA vs standard retraining of a pretrained encoder on multi-speaker dialogue (paper, Section 4.2).

Modules: :mod:`llm.config` (presets, errors), :mod:`llm.data` (chitchat / ConvAI2 tasks, tokenisation),
:mod:`llm.models` (cross-encoder, heads, adapters), :mod:`llm.train` (SR, Meta-LoRA, fine-tuning, evaluation),
:mod:`llm.checkpoint`, :mod:`llm.table` (Table 1), :mod:`llm.multilora` (batched multi-task LoRA).
Command line: ``python -m llm {retrain, finetune, table} --help``.
"""

from .config import PRESETS, CandidateError, Config, DataError, LLMError, ModelError, NonFiniteLossError, preset

__all__ = ["Config", "PRESETS", "preset", "LLMError", "ModelError", "DataError", "CandidateError",
           "NonFiniteLossError"]
