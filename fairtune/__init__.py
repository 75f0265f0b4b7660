"""fairtune: fairness-aware fine-tuning on the Hugging Face Trainer.

Train with ``FairTrainer`` / ``FairTrainingArguments``; measure with ``GroupStats`` (a ``GroupResult`` per
grouping) or the fairlearn-style array functions of ``fairtune.functional``; mitigate with the methods of
``fairtune.mitigation``.

Names are imported on first use (PEP 562), so ``fairtune --help`` and config errors answer without loading
torch or transformers.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# public name -> module that defines it
_EXPORTS = {
    "DataArguments": "fairtune.config",
    "FairTrainingArguments": "fairtune.config",
    "ModelArguments": "fairtune.config",
    "default_model_path": "fairtune.config",
    "parse_config": "fairtune.config",
    "resolve_model_path": "fairtune.config",
    "FairDataCollator": "fairtune.data.collator",
    "load_adult": "fairtune.data.adult",
    "GroupVocabulary": "fairtune.groups",
    "GroupResult": "fairtune.metrics",
    "GroupStats": "fairtune.metrics",
    "Mitigations": "fairtune.mitigation.combined",
    "FairTrainer": "fairtune.trainer",
    "accuracy_difference": "fairtune.functional",
    "demographic_parity_difference": "fairtune.functional",
    "demographic_parity_ratio": "fairtune.functional",
    "equal_opportunity_difference": "fairtune.functional",
    "equalized_odds_difference": "fairtune.functional",
    "equalized_odds_ratio": "fairtune.functional",
    "metric_frame": "fairtune.functional",
    "tpr_gap_rms": "fairtune.functional",
    "worst_group_accuracy": "fairtune.functional",
    "detect_proxies": "fairtune.proxies",
    "ExplanationResult": "fairtune.explain",
    "monitor_batch": "fairtune.monitor",
    "read_history": "fairtune.monitor",
}

__all__ = [
    "DataArguments",
    "ExplanationResult",
    "FairDataCollator",
    "FairTrainer",
    "FairTrainingArguments",
    "GroupResult",
    "GroupStats",
    "GroupVocabulary",
    "Mitigations",
    "ModelArguments",
    "accuracy_difference",
    "default_model_path",
    "demographic_parity_difference",
    "demographic_parity_ratio",
    "detect_proxies",
    "equal_opportunity_difference",
    "equalized_odds_difference",
    "equalized_odds_ratio",
    "load_adult",
    "metric_frame",
    "monitor_batch",
    "parse_config",
    "read_history",
    "resolve_model_path",
    "tpr_gap_rms",
    "worst_group_accuracy",
]

if TYPE_CHECKING:  # for type checkers and IDEs; at run time __getattr__ imports on demand
    from fairtune.config import (
        DataArguments,
        FairTrainingArguments,
        ModelArguments,
        default_model_path,
        parse_config,
        resolve_model_path,
    )
    from fairtune.data.adult import load_adult
    from fairtune.data.collator import FairDataCollator
    from fairtune.explain import ExplanationResult
    from fairtune.functional import (
        accuracy_difference,
        demographic_parity_difference,
        demographic_parity_ratio,
        equal_opportunity_difference,
        equalized_odds_difference,
        equalized_odds_ratio,
        metric_frame,
        tpr_gap_rms,
        worst_group_accuracy,
    )
    from fairtune.groups import GroupVocabulary
    from fairtune.metrics import GroupResult, GroupStats
    from fairtune.mitigation.combined import Mitigations
    from fairtune.monitor import monitor_batch, read_history
    from fairtune.proxies import detect_proxies
    from fairtune.trainer import FairTrainer


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'fairtune' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
