"""Model audit of a saved model, side-by-side comparison of two models, and a fairness gate.

``fairtune evaluate --model DIR --config CONFIG.yaml [--compare DIR2] [--max gap=value] [--min stat=value]
[--output_dir OUT]`` evaluates a fine-tuned model (with the group vocabulary saved beside it) on a split of
the config's data, writes the fairness report with bootstrap intervals, per-group tables and plots, and exits
non-zero when a gate threshold fails, naming it, so a deployment pipeline can block the model. Gate names
are checked against the names the model's results will have (known from its groupings and its number of
classes) before any model is evaluated.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from fairtune.config import DataArguments, FairTrainingArguments, ModelArguments
from fairtune.curves import fmt
from fairtune.groups import VOCAB_FILE, GroupVocabulary
from fairtune.metrics import GroupResult, gap_names, stat_names
from fairtune.report import HEADLINE_GAPS, write_report

AUDIT_JSON = "model_audit.json"
COMPARISON_MD = "comparison.md"
ERR_GATE_SPEC = "Gate threshold {spec!r} must look like name=value, e.g. demographic_parity_difference=0.05."
ERR_GATE_METRIC = (
    "Gate threshold names {name!r}, which the {split} results do not have. Valid names: {valid}. "
    "Prefix a grouping to gate another one ({groupings}), e.g. {example}."
)
ERR_NOT_A_MODEL = "--model {path!r} is not a folder with a saved model (config.json)."
ERR_SPLIT = "Split {split!r} is not in the data; splits: {splits}."


@dataclass
class GateCheck:
    """One gate threshold and its outcome."""

    name: str
    bound: str  # "max" or "min"
    limit: float
    value: float

    @property
    def passed(self) -> bool:
        if math.isnan(self.value):
            return False  # an undefined gap cannot certify a model
        return self.value <= self.limit if self.bound == "max" else self.value >= self.limit

    def describe(self) -> str:
        sign = "<=" if self.bound == "max" else ">="
        return f"{self.name} = {self.value:.4f} (must be {sign} {self.limit})"

    def __str__(self) -> str:
        return f"{'ok' if self.passed else 'FAILED'}: {self.describe()}"


def parse_gate(specs: list[str] | None, bound: str) -> list[tuple[str, str, float]]:
    """``["demographic_parity_difference=0.05", "race/worst_group_accuracy=0.7"]`` -> (name, bound, limit)."""
    out = []
    for spec in specs or []:
        name, sep, value = spec.partition("=")
        try:
            limit = float(value)
        except ValueError:
            limit = math.nan
        if not sep or not name.strip() or math.isnan(limit):
            raise ValueError(ERR_GATE_SPEC.format(spec=spec))
        out.append((name.strip(), bound, limit))
    return out


def gate_names(groupings: Sequence[str], default_grouping: str, num_classes: int) -> list[str]:
    """Every name a gate may use for results of these groupings and classes: ``grouping/<gap>`` and
    ``grouping/overall_<stat>``, plus the bare names for ``default_grouping``; known before evaluating."""
    metrics = [*gap_names(num_classes), *(f"overall_{stat}" for stat in stat_names(num_classes))]
    names = [f"{grouping}/{metric}" for grouping in groupings for metric in metrics]
    return [*metrics, *names] if default_grouping in groupings else names


def check_gate_names(thresholds: list[tuple[str, str, float]], valid: Sequence[str], split: str) -> None:
    """Raise for the first threshold whose name is not in ``valid``, listing the valid bare names."""
    known = set(valid)
    groupings = list(dict.fromkeys(name.split("/")[0] for name in valid if "/" in name))
    for name, _, _ in thresholds:
        if name not in known:
            raise ValueError(
                ERR_GATE_METRIC.format(
                    name=name,
                    split=split,
                    valid=", ".join(sorted(k for k in valid if "/" not in k)),
                    groupings=", ".join(groupings),
                    example=f"{groupings[-1]}/worst_group_accuracy"
                    if groupings
                    else "race/accuracy_difference",
                )
            )


def gate_values(results: dict[str, GroupResult], default_grouping: str) -> dict[str, float]:
    """Flat ``grouping/metric`` values (gaps and overall stats) a gate may name; bare names mean
    ``default_grouping``."""
    values = {}
    for grouping, result in results.items():
        flat = {**result.gaps, **{f"overall_{k}": v for k, v in result.overall.items()}}
        for name, value in flat.items():
            values[f"{grouping}/{name}"] = float(value)
            if grouping == default_grouping:
                values[name] = float(value)
    return values


def check_gate(
    results: dict[str, GroupResult],
    thresholds: list[tuple[str, str, float]],
    default_grouping: str,
    split: str,
) -> list[GateCheck]:
    """Evaluate every threshold against the results; an unknown metric name is an error listing valid ones."""
    values = gate_values(results, default_grouping)
    check_gate_names(thresholds, list(values), split)
    return [GateCheck(name, bound, limit, values[name]) for name, bound, limit in thresholds]


@dataclass
class SavedModel:
    """What a saved model's folder says before it is loaded: its classes and the groupings it reports."""

    path: str
    num_classes: int
    groupings: list[str]
    train_grouping: str


def inspect_model(model_dir: str, args: FairTrainingArguments) -> SavedModel:
    """Read ``config.json`` and ``group_vocab.json`` of a saved model (without loading it); groupings fall
    back to the config's ``group_by`` / ``eval_group_by`` when the model has no saved vocabulary."""
    config_path = os.path.join(model_dir, "config.json")
    if not os.path.isfile(config_path):
        raise ValueError(ERR_NOT_A_MODEL.format(path=model_dir))
    with open(config_path) as f:
        config = json.load(f)
    num_classes = len(config.get("id2label") or {}) or int(config.get("num_labels", 2))
    vocab_path = os.path.join(model_dir, VOCAB_FILE)
    if os.path.isfile(vocab_path):
        vocab = GroupVocabulary.load(vocab_path)
    else:
        vocab = GroupVocabulary(args.group_by, args.eval_group_by)
    return SavedModel(model_dir, num_classes, list(vocab.groupings), vocab.train_grouping)


@dataclass
class ModelEvaluation:
    """A saved model evaluated on one split: fairness results per grouping and what the plots need.

    scores (N, C) class probabilities; labels (N,); groups {grouping: (N,) ids}; names {grouping: names}.
    """

    split: str
    model: str
    results: dict[str, GroupResult]
    metrics: dict[str, float]
    scores: np.ndarray
    labels: np.ndarray
    groups: dict[str, np.ndarray]
    names: dict[str, list[str]]
    train_grouping: str


def evaluate_model(
    model_dir: str, data_args: DataArguments, args: FairTrainingArguments, split: str = "test"
) -> ModelEvaluation:
    """Evaluate a saved model on ``split``: fairness results per grouping plus scores for the plots."""
    import torch

    from fairtune.pipeline import build

    if not os.path.isfile(os.path.join(model_dir, "config.json")):
        raise ValueError(ERR_NOT_A_MODEL.format(path=model_dir))
    # Nothing is trained or saved: the model's own folder stands in as output_dir, since Trainer creates its
    # output_dir on construction and an evaluation must not leave an empty training folder behind.
    args = replace(args, output_dir=model_dir, overwrite_output_dir=True)
    trainer, data = build(ModelArguments(model_name_or_path=model_dir), data_args, args)
    if split not in data:
        raise ValueError(ERR_SPLIT.format(split=split, splits=", ".join(data)))
    dataset = trainer._ensure_prepared(data[split], split)
    output = trainer.predict(dataset, metric_key_prefix=split)
    probs = torch.as_tensor(output.predictions).float().softmax(-1).numpy()
    vocab = trainer.group_vocab
    return ModelEvaluation(
        split=split,
        model=model_dir,
        results=trainer.fairness_results[split],
        metrics=output.metrics,
        scores=probs,
        labels=np.asarray(output.label_ids),
        groups={name: np.asarray(dataset[f"group:{name}"]) for name in vocab.groupings},
        names={name: vocab.names(name) for name in vocab.groupings},
        train_grouping=vocab.train_grouping,
    )


def write_model_audit(audit: ModelEvaluation, out_dir: str) -> list[str]:
    """Fairness report (JSON + Markdown), ``model_audit.json`` and plots for every grouping."""
    from fairtune import plots

    os.makedirs(out_dir, exist_ok=True)
    split = audit.split
    write_report({split: audit.results}, out_dir, {"model": audit.model, "split": split})
    paths = [os.path.join(out_dir, "fairness_report.json"), os.path.join(out_dir, "fairness_report.md")]
    with open(os.path.join(out_dir, AUDIT_JSON), "w") as f:
        json.dump(
            {"split": split, "model": audit.model, "metrics": audit.metrics}, f, indent=2, allow_nan=True
        )
    paths.append(os.path.join(out_dir, AUDIT_JSON))
    scores, labels = audit.scores, audit.labels
    for name, result in audit.results.items():
        tag = name.replace("+", "_x_")
        # Rows without a group (id -1, missing_group: ignore) have no curve of their own.
        grouped = audit.groups[name] >= 0
        groups = audit.groups[name][grouped]
        names = audit.names[name][: int(groups.max(initial=-1)) + 1]
        paths.append(plots.plot_group_rates(result, os.path.join(out_dir, f"rates_{tag}.png"), title=name))
        if scores.shape[1] == 2 and grouped.any():
            positive, labels = scores[grouped, 1], audit.labels[grouped]
            paths.append(
                plots.plot_roc(positive, labels, groups, names, os.path.join(out_dir, f"roc_{tag}.png"), name)
            )
            paths.append(
                plots.plot_calibration(
                    positive,
                    labels,
                    groups,
                    names,
                    os.path.join(out_dir, f"calibration_{tag}.png"),
                    title=name,
                )
            )
            paths.append(
                plots.plot_score_distributions(
                    positive, labels, groups, names, os.path.join(out_dir, f"scores_{tag}.png"), title=name
                )
            )
    return paths


def compare_markdown(a: ModelEvaluation, b: ModelEvaluation, names: tuple[str, str]) -> str:
    """Accuracy and headline gaps of two audited models side by side, with the change, per grouping both
    have. A gap neither result has (e.g. binary-only gaps of a multi-class task) is left out; an undefined
    value shows as the table's missing mark, and so does its change."""
    lines = [
        f"# Comparison on the {a.split} split",
        "",
        f"- {names[0]}: `{a.model}`",
        f"- {names[1]}: `{b.model}`",
        "",
    ]
    for grouping in [g for g in a.results if g in b.results]:
        ra, rb = a.results[grouping], b.results[grouping]
        lines += [f"## {grouping}", "", f"| metric | {names[0]} | {names[1]} | change |", "|---|---|---|---|"]
        rows = [("accuracy", ra.overall["accuracy"], rb.overall["accuracy"])]
        shown = [g for g in HEADLINE_GAPS if g in ra.gaps or g in rb.gaps]
        rows += [(g, ra.gaps.get(g, math.nan), rb.gaps.get(g, math.nan)) for g in shown]
        for metric, va, vb in rows:
            change = fmt(None) if math.isnan(va) or math.isnan(vb) else f"{vb - va:+.3f}"
            lines.append(f"| {metric} | {fmt(va)} | {fmt(vb)} | {change} |")
        lines.append("")
    return "\n".join(lines)


@dataclass
class FlipRate:
    """Counterfactual flip rate: how often a prediction changes when only identity terms are swapped.

    Attributes:
        rows: rows scored; swapped: rows with at least one identity term (the others cannot flip);
        flipped: swapped rows whose predicted class changed.
    """

    rows: int
    swapped: int
    flipped: int

    @property
    def rate(self) -> float:
        """flipped / swapped (NaN when no row had a term to swap)."""
        return self.flipped / self.swapped if self.swapped else math.nan

    def describe(self) -> str:
        return (
            f"{fmt(self.rate)} ({self.flipped} of {self.swapped} rows with swapped terms, {self.rows} rows)"
        )


def counterfactual_flip_rate(
    trainer: Any,
    dataset: Any,
    pairs: Any,
    text_column: str,
    text_pair_column: str | None = None,
    max_length: int = 128,
    split: str = "test",
) -> FlipRate:
    """Predict ``dataset`` (a tokenized split that kept its text) as it is and with the identity terms of
    ``pairs`` (``WordPairs``) swapped in its text, and count the rows whose predicted class changes.

    The swapped text is tokenized with the trainer's tokenizer like the original (same ``max_length``).
    """
    from fairtune.data.counterfactual import counterfactual

    tokenizer = trainer.processing_class
    columns = [text_column] + ([text_pair_column] if text_pair_column else [])

    def swap(batch: dict[str, list[Any]]) -> dict[str, Any]:
        swapped = {c: [counterfactual(t, pairs) for t in batch[c]] for c in columns}
        texts = {c: [t for t, _ in swapped[c]] for c in columns}
        counts = [
            sum(n for n in row) for row in zip(*([n for _, n in swapped[c]] for c in columns), strict=True)
        ]
        pair = texts[text_pair_column] if text_pair_column else None
        encoded = tokenizer(texts[text_column], pair, truncation=True, max_length=max_length)
        return {**texts, **encoded, "_swaps": counts}

    swapped = dataset.map(swap, batched=True, desc="Swapping identity terms")
    original = trainer.predict(dataset, metric_key_prefix=f"{split}_original").predictions.argmax(-1)
    changed = trainer.predict(swapped.remove_columns("_swaps"), metric_key_prefix=f"{split}_swapped")
    has_terms = np.asarray(swapped["_swaps"]) > 0
    flips = (changed.predictions.argmax(-1) != original) & has_terms
    return FlipRate(rows=len(dataset), swapped=int(has_terms.sum()), flipped=int(flips.sum()))
