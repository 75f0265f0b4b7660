"""fairtune: fairness-aware fine-tuning on the Hugging Face Trainer.

Train with ``FairTrainer`` / ``FairTrainingArguments``; measure with ``GroupStats`` or the fairlearn-style
metric functions below.
"""

from fairtune.config import DataArguments, FairTrainingArguments, ModelArguments, parse_config
from fairtune.data.collator import FairDataCollator
from fairtune.groups import GroupVocabulary
from fairtune.metrics import (
    GroupStats,
    accuracy_difference,
    demographic_parity_difference,
    demographic_parity_ratio,
    equal_opportunity_difference,
    equalized_odds_difference,
    equalized_odds_ratio,
    flatten_metrics,
    metric_frame,
    tpr_gap_rms,
    worst_group_accuracy,
)
from fairtune.trainer import FairTrainer

__version__ = "0.1.0"

__all__ = [
    "DataArguments",
    "FairDataCollator",
    "FairTrainer",
    "FairTrainingArguments",
    "GroupStats",
    "GroupVocabulary",
    "ModelArguments",
    "accuracy_difference",
    "demographic_parity_difference",
    "demographic_parity_ratio",
    "equal_opportunity_difference",
    "equalized_odds_difference",
    "equalized_odds_ratio",
    "flatten_metrics",
    "metric_frame",
    "parse_config",
    "tpr_gap_rms",
    "worst_group_accuracy",
]
