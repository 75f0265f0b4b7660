"""Fairness monitoring of a saved model on new batches of data: a history of periods, trends and alarms.

``fairtune monitor --model DIR --data NEW_FILE [--config CONFIG.yaml] [--history DIR] [--period LABEL]
[--alpha 0.05] [--max NAME=VALUE ...] [--min NAME=VALUE ...]`` evaluates a saved model (as ``fairtune
evaluate`` does, on the whole batch) and appends one JSON line per period to ``<history>/history.jsonl``
(default ``<model>/monitor/``): the period label, the data file, its rows, whether it had labels, and per
grouping the `GroupResult` (headline gaps with bootstrap intervals, overall stats, per-group selection rates
and counts). Earlier lines are never rewritten or dropped; a history written for another model (by a hash of
its weights, config and group vocabulary) or for other groupings is refused. Each run redraws the trend of
every gap with its interval (``trend_<grouping>.png``, gate thresholds as lines) and writes
``monitor_summary.md``, the latest period against the previous one. The command exits with status 1 when a
gate threshold is crossed or a gap moved significantly against fairness since the previous period.

A batch without the label column is monitored by what needs no labels: per-group selection rates, the
demographic-parity gaps (with intervals) and score distributions (``scores_<grouping>.png``); a gate on a
label-based metric is then refused before anything is evaluated.

The drift test (one per grouping and headline gap, against the previous period only):

* Each period's standard error of a gap is the standard deviation of the gap over that period's bootstrap
  replicates (the Poisson replicates the intervals come from, recomputed from the predictions with the same
  seed, so they are the trainer's), stored in the history line beside the interval.
* ``z = s * (gap_now - gap_before) / sqrt(se_before^2 + se_now^2)``, with ``s = +1`` for gaps where larger is
  less fair (differences, ``tpr_gap_rms``) and ``s = -1`` where smaller is less fair (ratios,
  ``worst_group_accuracy``); the one-sided p-value is ``1 - Phi(z)``. The two batches are independent samples,
  so the variances add.
* A move is *adverse* when ``p < alpha`` (``--alpha``, default 0.05): only moves against fairness alarm; an
  improvement never does.
* The test does not run, and says so, when either period has no replicates (``bootstrap_samples: 0``), when
  the gap is undefined or unmeasured (a label-based gap of a batch without labels) in either period, or when
  both standard errors are 0 while the gap changed.

Why not read the standard error off the interval, (high - low) / (2 z_{(1 + c) / 2})? The basic interval of a
max - min gap is clipped at 0 (and 1), and near a zero gap the clipped width understates the spread: in a
simulation like the tests' (two groups of 300 rows, equal or near-equal selection rates: gap 0 or 0.05),
that reading alarmed on 12-14% of pairs of batches with the same bias at alpha 0.05; the replicates'
standard deviation alarmed on 2% (gap 0: a folded max - min varies less than its replicates) and 5% (0.05).
``tests/test_monitor.py`` checks the false-alarm rate at a gap of 0.15 (near alpha) and the power on a batch
whose bias grew. Limits: the normal approximation is rough for very small groups; ``alpha`` holds per test,
so with k gaps and groupings tested, the chance that one of them alarms on a stable model is up to k * alpha
(correlated gaps, e.g. a difference and its ratio, make it less): pass ``--alpha 0.05/k`` for a family-wise
bound. When the groups a gap spans change between periods (a group crossing ``min_group_size``), the check
notes it.

Startup: this module imports the standard library and ``fairtune.cli`` only; numpy, torch and transformers
load once the command line has been checked, as in ``fairtune.cli``.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from statistics import NormalDist
from typing import TYPE_CHECKING, Any

from fairtune.cli import (
    EVALUATE_TRAINING_KEYS,
    EXIT_GATE_FAILED,
    USER_ERRORS,
    ConfigError,
    _own_options,
    fail,
    refuse_unused_keys,
)
from fairtune.config_files import read_config_layers

if TYPE_CHECKING:
    import numpy as np

    from fairtune.config import DataArguments, FairTrainingArguments
    from fairtune.evaluation import GateCheck
    from fairtune.groups import GroupVocabulary
    from fairtune.metrics import GroupResult, GroupStats

__all__ = [
    "DriftCheck",
    "MonitorResult",
    "PeriodRecord",
    "append_history",
    "bootstrap_standard_errors",
    "drift_checks",
    "drift_test",
    "group_stats",
    "label_free",
    "model_fingerprint",
    "monitor_batch",
    "monitor_main",
    "predict_unlabelled",
    "read_history",
    "render_summary",
]

HISTORY_FILE = "history.jsonl"
SUMMARY_MD = "monitor_summary.md"
DEFAULT_HISTORY_DIR = "monitor"  # inside the model's folder
RECORD_FORMAT = "fairtune-monitor/1"
DEFAULT_ALPHA = 0.05
# Gaps where a smaller value is less fair; for every other gap a larger value is.
SMALLER_IS_WORSE = frozenset(
    {"demographic_parity_ratio", "equalized_odds_ratio", "equalized_odds_ratio_mean", "worst_group_accuracy"}
)
# What a batch without labels still measures: predictions per group.
LABEL_FREE_GAPS = ("demographic_parity_difference", "demographic_parity_ratio")
SCORE_BINS = 20  # equal-width bins of P(class 1) kept per group in the history (binary models)
# Weights, config and vocabulary decide what a model computes; the tokenizer and training_args.bin do not
# enter its identity (training_args.bin is a pickle of the run's arguments, not of the model).
FINGERPRINT_FILES = ("config.json", "group_vocab.json")
FINGERPRINT_SUFFIXES = (".safetensors", ".bin")
FINGERPRINT_SKIP = ("training_args.bin",)

ERR_MONITOR_NEEDS = "monitor needs {flag}; see `fairtune monitor --help`."
ERR_DATA_MISSING = "--data {path!r} does not exist; give the file of the new batch (.csv, .jsonl, .parquet)."
ERR_ALPHA = "--alpha {value!r} is not valid; choose a number in (0, 1), e.g. 0.05."
ERR_PERIOD = (
    "--period {period!r} is not valid; choose a non-empty label on one line, e.g. 2026-11 or week-47."
)
ERR_PERIOD_EXISTS = (
    "--period {period!r} is already in {path} (line {line}); every period is recorded once: give another "
    "label (earlier lines are never replaced)."
)
ERR_HISTORY_NOT_DIR = "--history {path!r} is a file; give a folder (the history is {name} inside it)."
ERR_HISTORY_LINE = (
    "History {path} line {line} is not a monitor record ({problem}); earlier lines are never rewritten: fix "
    "or move the file, or give another --history folder."
)
ERR_HISTORY_MODEL = (
    "History {path} was written for another model ({theirs}, fingerprint {their_print}), not for --model "
    "{model!r} (fingerprint {our_print}); monitor each model in its own --history folder."
)
ERR_HISTORY_GROUPINGS = (
    "History {path} records the groupings {theirs}, but --model {model!r} reports {ours}; a history follows "
    "one set of groupings: give another --history folder."
)
ERR_NO_GROUPINGS = (
    "--model {path!r} has no group_vocab.json and the config names no group_by: set group_by (and "
    "eval_group_by) in the --config file to name the attribute column(s) to monitor."
)
ERR_GATE_NEEDS_LABELS = (
    "--data {path!r} has no label column {column!r}, so only predictions are measured (selection rates, "
    "score distributions); gate threshold(s) {names} need labels. Names a batch without labels can gate: "
    "{valid}."
)
ERR_BATCH_LABELS = (
    "Label column {column!r} of --data {path!r} holds {found}, but the model has {count} classes "
    "({classes}): a labelled batch must hold every class, since label ids follow the sorted label values "
    "as in training. Drop the label column to monitor the batch without labels."
)

MONITOR_OPTIONS = ("--model", "--data", "--history", "--period", "--alpha", "--max", "--min")
# Flags that change what the monitor computes: how the batch's columns are read and evaluated. The data
# source keys are not among them: --data replaces every split (the YAML may hold any key).
MONITOR_DATA_KEYS = ("text_column", "text_pair_column", "label_column", "max_seq_length")
# The groupings are the model's (group_vocab.json): a history follows one set of them, so group_by and
# eval_group_by are read from a config file only, for a model saved without a vocabulary.
MONITOR_KEYS = (
    *MONITOR_DATA_KEYS,
    *(k for k in EVALUATE_TRAINING_KEYS if k not in ("group_by", "eval_group_by")),
    "missing_group",
    "gaps_over",
    "interval_method",
)
MONITOR_HELP = """usage: fairtune monitor --model DIR --data NEW_FILE [--config CONFIG.yaml] [--history DIR]
                       [--period LABEL] [--alpha 0.05] [--max NAME=VALUE ...] [--min NAME=VALUE ...]
                       [data/eval options]

Evaluates the saved model in DIR on the new batch NEW_FILE (.csv, .jsonl, .parquet; all its rows) and appends
one JSON line per period to --history/history.jsonl (default: DIR/monitor): the --period label (default:
the UTC time), the file, its rows, whether it had labels, and per grouping the gaps with bootstrap intervals,
overall stats and per-group selection rates and counts. A history written for another model or other
groupings is refused, and a period label is recorded once. Writes trend_<grouping>.png (each gap over the
periods with its interval and the gate thresholds), scores_<grouping>.png and monitor_summary.md (latest
period against the previous one) to the history folder.
Without the label column in NEW_FILE only predictions are measured: selection rates, demographic-parity gaps
and score distributions; gates on label-based metrics are refused.
Exit status 1 when a --max / --min threshold fails (as in `fairtune evaluate`; names are checked first) or a
gap moved against fairness since the previous period with one-sided p < --alpha (z-test on the change, each
period's standard error from its bootstrap replicates; needs bootstrap_samples > 0, else the test is reported
as not run). Status 2 for usage, config and data errors; nothing is written then.
The groupings are the model's (its group_vocab.json). The config's data source keys are ignored (the batch
stands in for every split); besides --config, the flags it takes are {keys}.
""".format(keys=", ".join(f"--{k}" for k in MONITOR_KEYS))

_NORMAL = NormalDist()


# ----- records -------------------------------------------------------------------------------------------
@dataclass
class PeriodRecord:
    """One line of the history: a batch of data evaluated as one monitoring period.

    ``results`` maps each grouping to its `GroupResult` (for a batch without labels: counts, selection rates
    and the demographic-parity gaps only); ``standard_errors`` each gap's bootstrap standard error (the drift
    test's; empty without replicates). ``score_histograms`` holds, for binary models, the counts of
    P(class 1) in `SCORE_BINS` equal-width bins per grouping and group. ``settings`` holds the evaluation
    options that shape the numbers (bootstrap_samples, confidence_level, min_group_size, gaps_over,
    interval_method, missing_group), the drift test's alpha and the run's gate thresholds.
    """

    period: str
    recorded_at: str
    model: str
    model_fingerprint: str
    data_file: str
    rows: int
    labelled: bool
    train_grouping: str
    class_names: list[str]
    results: dict[str, GroupResult]
    standard_errors: dict[str, dict[str, float]] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)
    score_histograms: dict[str, dict[str, list[int]]] = field(default_factory=dict)

    @property
    def groupings(self) -> list[str]:
        return list(self.results)

    def standard_error(self, grouping: str, gap: str) -> float:
        """The bootstrap standard error of a gap in this period; NaN when it has none."""
        return self.standard_errors.get(grouping, {}).get(gap, math.nan)

    def to_json(self) -> dict[str, Any]:
        """The history line as a JSON-ready dict (NaN values become null: the file is strict JSON)."""
        data = {
            "format": RECORD_FORMAT,
            "period": self.period,
            "recorded_at": self.recorded_at,
            "model": self.model,
            "model_fingerprint": self.model_fingerprint,
            "data_file": self.data_file,
            "rows": self.rows,
            "labelled": self.labelled,
            "train_grouping": self.train_grouping,
            "groupings": self.groupings,
            "class_names": list(self.class_names),
            "settings": dict(self.settings),
            "results": {name: result.to_dict() for name, result in self.results.items()},
            "standard_errors": self.standard_errors,
            "score_histograms": self.score_histograms,
        }
        return _strict_json(data)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> PeriodRecord:
        """Inverse of `to_json`; a missing key or a value of the wrong kind raises."""
        from fairtune.metrics import GroupResult

        if data.get("format") != RECORD_FORMAT:
            raise ValueError(f"format {data.get('format')!r}, expected {RECORD_FORMAT!r}")
        names = [str(c) for c in data["class_names"]]
        return cls(
            period=str(data["period"]),
            recorded_at=str(data["recorded_at"]),
            model=str(data["model"]),
            model_fingerprint=str(data["model_fingerprint"]),
            data_file=str(data["data_file"]),
            rows=int(data["rows"]),
            labelled=bool(data["labelled"]),
            train_grouping=str(data["train_grouping"]),
            class_names=names,
            results={
                name: GroupResult.from_dict(result, grouping=name, class_names=names)
                for name, result in data["results"].items()
            },
            standard_errors={
                grouping: {gap: math.nan if se is None else float(se) for gap, se in errors.items()}
                for grouping, errors in data["standard_errors"].items()
            },
            settings=dict(data.get("settings", {})),
            score_histograms=dict(data.get("score_histograms", {})),
        )


def _strict_json(value: Any) -> Any:
    """``value`` with every NaN float replaced by None (JSON has no NaN; `GroupResult.from_dict` reads None
    back as NaN) and tuples as lists."""
    if isinstance(value, float):
        return None if math.isnan(value) else value
    if isinstance(value, dict):
        return {k: _strict_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_strict_json(v) for v in value]
    return value


def history_path(history: str) -> str:
    """The history file of a folder (``history.jsonl``); a path ending in ``.jsonl`` is taken as the file."""
    return history if history.endswith(".jsonl") else os.path.join(history, HISTORY_FILE)


def read_history(history: str) -> list[PeriodRecord]:
    """The periods recorded in a history folder (or file), oldest first; [] when there is none yet.

    A line that is not a monitor record raises `ERR_HISTORY_LINE` naming it (nothing is ever rewritten).
    """
    path = history_path(history)
    if os.path.isfile(history) and not history.endswith(".jsonl"):
        raise ValueError(ERR_HISTORY_NOT_DIR.format(path=history, name=HISTORY_FILE))
    if not os.path.exists(path):
        return []
    records = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                records.append(PeriodRecord.from_json(json.loads(line)))
            except (json.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError) as err:
                problem = " ".join(str(err).split()) or type(err).__name__
                raise ValueError(ERR_HISTORY_LINE.format(path=path, line=number, problem=problem)) from None
    return records


def append_history(history: str, record: PeriodRecord) -> str:
    """Append ``record`` as one line to the history folder's (or file's) ``history.jsonl``; return its path.

    The file is only ever appended to, one complete line per call, flushed to disk before returning.
    """
    path = history_path(history)
    directory = os.path.dirname(path)
    if directory:
        os.makedirs(directory, exist_ok=True)
    line = json.dumps(record.to_json(), allow_nan=False, ensure_ascii=False) + "\n"
    with open(path, "ab") as f:
        if f.tell() > 0:
            with open(path, "rb") as last:
                last.seek(-1, os.SEEK_END)
                if last.read(1) != b"\n":  # a hand-edited last line without its newline: keep lines apart
                    f.write(b"\n")
        f.write(line.encode("utf-8"))
        f.flush()
        os.fsync(f.fileno())
    return path


def model_fingerprint(model_dir: str) -> str:
    """A short SHA-256 of a saved model's weights, config and group vocabulary: the identity a history keeps.

    Moving or copying the folder keeps it; retraining (new weights) or another vocabulary changes it.
    """
    digest = hashlib.sha256()
    names = sorted(
        name
        for name in os.listdir(model_dir)
        if os.path.isfile(os.path.join(model_dir, name))
        and (name in FINGERPRINT_FILES or name.endswith(FINGERPRINT_SUFFIXES))
        and name not in FINGERPRINT_SKIP
    )
    for name in names:
        digest.update(name.encode() + b"\0")
        with open(os.path.join(model_dir, name), "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()[:16]


# ----- the drift test ------------------------------------------------------------------------------------
@dataclass
class DriftCheck:
    """The change of one gap of one grouping from the previous period to the latest, and its z-test.

    ``previous_se`` / ``current_se``: each period's bootstrap standard error of the gap. ``z`` and
    ``p_value`` are NaN when the test could not run; ``reason`` then says why. ``note`` flags a change in the
    groups the gap spans.
    """

    grouping: str
    gap: str
    previous: float
    current: float
    previous_se: float
    current_se: float
    alpha: float = DEFAULT_ALPHA
    z: float = math.nan
    p_value: float = math.nan
    reason: str = ""
    note: str = ""

    @property
    def name(self) -> str:
        return f"{self.grouping}/{self.gap}"

    @property
    def worse_when(self) -> str:
        """``"up"`` or ``"down"``: the direction in which the gap is less fair."""
        return "down" if self.gap in SMALLER_IS_WORSE else "up"

    @property
    def change(self) -> float:
        return self.current - self.previous

    @property
    def tested(self) -> bool:
        return not math.isnan(self.p_value)

    @property
    def adverse(self) -> bool:
        """A significant move against fairness: p < alpha."""
        return self.tested and self.p_value < self.alpha

    def verdict(self) -> str:
        if not self.tested:
            return f"not tested: {self.reason}"
        return "ADVERSE" if self.adverse else "ok"

    def describe(self) -> str:
        text = f"{self.name} {_fmt(self.previous)} -> {_fmt(self.current)}"
        if not self.tested:
            return f"{text}: not tested ({self.reason})"
        sign = "<" if self.adverse else ">="
        return (
            f"{text} ({self.change:+.3f}, worse when {self.worse_when}; z = {self.z:.2f}, one-sided "
            f"p = {self.p_value:.4f} {sign} alpha {self.alpha:g})"
        )


def bootstrap_standard_errors(stats: GroupStats, min_group_size: int, gaps_over: str) -> dict[str, float]:
    """The standard deviation of every gap over the bootstrap replicates of ``stats`` ({} without replicates).

    The replicates span the groups the point estimate spans, as in ``GroupStats.compute`` (groups with at
    least ``min_group_size`` rows, or all with ``gaps_over="all"``); replicates where a gap is undefined are
    skipped, and a gap with fewer than two defined replicates gets NaN.
    """
    import torch

    from fairtune.metrics import gaps_from_rates, rates_from_confusion

    if not stats.bootstrap_samples:
        return {}
    keep = (stats.conf.sum((-2, -1)) >= min_group_size) | (gaps_over == "all")
    rates = {k: torch.where(keep, v, torch.nan) for k, v in rates_from_confusion(stats.boot_conf).items()}
    errors = {}
    for gap, values in gaps_from_rates(rates, stats.num_classes).items():
        defined = values[~values.isnan()]
        errors[gap] = float(defined.std()) if defined.numel() > 1 else math.nan
    return errors


def drift_test(
    previous: GroupResult,
    current: GroupResult,
    gap: str,
    standard_errors: tuple[float, float],
    alpha: float = DEFAULT_ALPHA,
) -> DriftCheck:
    """One-sided z-test of the change of ``gap`` between two independent periods' results (see the module
    docstring): adverse when the gap moved against fairness with p < ``alpha``.

    ``standard_errors``: (previous, current) bootstrap standard errors of the gap
    (`bootstrap_standard_errors`); NaN where a period had no replicates.
    """
    _check_alpha(alpha)
    before, now = previous.gaps.get(gap, math.nan), current.gaps.get(gap, math.nan)
    check = DriftCheck(
        grouping=current.grouping or previous.grouping,
        gap=gap,
        previous=before,
        current=now,
        previous_se=float(standard_errors[0]),
        current_se=float(standard_errors[1]),
        alpha=alpha,
    )
    if previous.gap_groups != current.gap_groups:
        check.note = (
            f"the gap spans other groups now ({', '.join(current.gap_groups) or 'none'}; before: "
            f"{', '.join(previous.gap_groups) or 'none'})"
        )
    periods = (("previous", previous, before, check.previous_se), ("latest", current, now, check.current_se))
    for when, result, value, se in periods:
        if gap not in result.gaps:
            check.reason = f"not measured in the {when} period (a batch without labels)"
            return check
        if math.isnan(value):
            check.reason = f"undefined in the {when} period"
            return check
        if math.isnan(se):
            check.reason = f"no bootstrap replicates in the {when} period (bootstrap_samples: 0)"
            return check
    se = math.hypot(check.previous_se, check.current_se)
    worse = before - now if gap in SMALLER_IS_WORSE else now - before  # > 0: less fair now
    if se <= 0.0:
        if worse != 0.0:
            check.reason = "both standard errors are 0 (no spread over the replicates) and the gap changed"
            return check
        check.z, check.p_value = 0.0, 0.5  # no sampling variation and no move
        return check
    check.z = worse / se
    check.p_value = 1.0 - _NORMAL.cdf(check.z)
    return check


def _monitored_gaps() -> list[str]:
    """The gaps the drift test and the trend plots follow: the report's headline gaps, in its order
    (imported on use: ``fairtune.report`` loads torch)."""
    from fairtune.report import HEADLINE_GAPS

    return list(HEADLINE_GAPS)


def drift_checks(
    previous: PeriodRecord,
    current: PeriodRecord,
    alpha: float = DEFAULT_ALPHA,
    gaps: Sequence[str] | None = None,
) -> list[DriftCheck]:
    """`drift_test` of every grouping both periods have and every gap of ``gaps`` (default: the report's
    headline gaps) either period has, with each period's recorded standard errors."""
    gaps = _monitored_gaps() if gaps is None else gaps
    checks = []
    for grouping in [g for g in current.results if g in previous.results]:
        before, now = previous.results[grouping], current.results[grouping]
        for gap in [g for g in gaps if g in now.gaps or g in before.gaps]:
            errors = (previous.standard_error(grouping, gap), current.standard_error(grouping, gap))
            checks.append(drift_test(before, now, gap, errors, alpha))
    return checks


def _check_alpha(alpha: Any) -> float:
    try:
        value = float(alpha)
    except (TypeError, ValueError):
        value = math.nan
    if not 0.0 < value < 1.0:
        raise ValueError(ERR_ALPHA.format(value=alpha))
    return value


# ----- one monitoring period -----------------------------------------------------------------------------
@dataclass
class MonitorResult:
    """What `monitor_batch` found and wrote for one period.

    ``scores`` (N, C) class probabilities of the batch's rows; ``labels`` (N,) class ids (None without
    labels); ``groups`` {grouping: (N,) ids, -1 for a row without a group}; ``names`` {grouping: group names}.
    """

    record: PeriodRecord
    previous: PeriodRecord | None
    history: str
    periods: int
    drift: list[DriftCheck]
    gate: list[GateCheck]
    scores: np.ndarray
    groups: dict[str, np.ndarray]
    names: dict[str, list[str]]
    labels: np.ndarray | None = None
    paths: list[str] = field(default_factory=list)

    @property
    def alarms(self) -> list[DriftCheck]:
        """Significant adverse moves since the previous period."""
        return [check for check in self.drift if check.adverse]

    @property
    def failed_gates(self) -> list[GateCheck]:
        return [check for check in self.gate if not check.passed]

    @property
    def untested(self) -> list[DriftCheck]:
        return [check for check in self.drift if not check.tested]

    @property
    def ok(self) -> bool:
        return not self.alarms and not self.failed_gates


def monitor_batch(
    model_dir: str,
    data_file: str,
    data_args: DataArguments,
    args: FairTrainingArguments,
    history: str | None = None,
    period: str | None = None,
    alpha: float = DEFAULT_ALPHA,
    thresholds: Sequence[tuple[str, str, float]] = (),
    write: bool = True,
) -> MonitorResult:
    """Evaluate the saved model in ``model_dir`` on the batch ``data_file`` as one period and, with
    ``write``, append it to the history and redraw the trend plots and the summary.

    ``data_args`` / ``args`` are a config's (``parse_config``): the batch replaces every data source, the
    groupings are the model's saved ones. ``thresholds`` are gate thresholds (``parse_gate``). Every check
    that needs no model runs first (model folder, history, period, batch columns and labels, gate names), and
    nothing is written unless the whole evaluation succeeded.
    """
    from fairtune.evaluation import ERR_NOT_A_MODEL, check_gate, check_gate_names, gate_names, inspect_model

    alpha = _check_alpha(alpha)
    if not os.path.isfile(os.path.join(model_dir, "config.json")):
        raise ValueError(ERR_NOT_A_MODEL.format(path=model_dir))
    if not _has_groupings(model_dir, args):
        raise ValueError(ERR_NO_GROUPINGS.format(path=model_dir))
    saved = inspect_model(model_dir, args)
    history = history or os.path.join(model_dir, DEFAULT_HISTORY_DIR)
    records = read_history(history)
    fingerprint = model_fingerprint(model_dir)
    _check_history(records, history, model_dir, fingerprint, saved.groupings)
    period = _check_period(period, records, history)
    if not os.path.isfile(data_file):
        raise FileNotFoundError(ERR_DATA_MISSING.format(path=data_file))
    # The evaluation reads the model's groupings, whatever the config's group_by says.
    others = [g for g in saved.groupings if g != saved.train_grouping]
    args = replace(args, group_by=saved.train_grouping, eval_group_by=others or None)
    batch = _load_batch(data_file, data_args, args, saved.groupings)
    labelled = data_args.label_column in batch.column_names
    class_names = _class_names(model_dir, saved.num_classes)
    if labelled:
        _check_batch_labels(batch, data_args.label_column, data_file, class_names)
    valid = gate_names(saved.groupings, saved.train_grouping, saved.num_classes)
    check_gate_names(list(thresholds), valid, "monitored")
    if not labelled:
        free = [name for name in valid if _label_free(name.rsplit("/", 1)[-1])]
        needing = [name for name, _, _ in thresholds if name not in free]
        if needing:
            raise ValueError(
                ERR_GATE_NEEDS_LABELS.format(
                    path=data_file,
                    column=data_args.label_column,
                    names=", ".join(needing),
                    valid=", ".join(name for name in free if "/" not in name),
                )
            )

    if labelled:
        from fairtune.evaluation import evaluate_model

        audit = evaluate_model(model_dir, _batch_data_args(data_args, data_file), args, "test")
        results, scores, groups, names = audit.results, audit.scores, audit.groups, audit.names
        labels = audit.labels
    else:
        scores, groups, names = predict_unlabelled(model_dir, batch, data_args, args)
        labels = None
    # The drift test's standard errors come from the replicates behind the intervals (module docstring).
    stats = group_stats(scores, labels, groups, names, args)
    if not labelled:
        results = {
            grouping: label_free(
                stats[grouping].compute(
                    names[grouping],
                    class_names,
                    min_group_size=args.min_group_size,
                    confidence=args.confidence_level,
                    grouping=grouping,
                    gaps_over=args.gaps_over,
                    interval_method=args.interval_method,
                )
            )
            for grouping in groups
        }
    errors = {
        grouping: {
            gap: se
            for gap, se in bootstrap_standard_errors(
                stats[grouping], args.min_group_size, args.gaps_over
            ).items()
            if gap in results[grouping].gaps
        }
        for grouping in groups
    }
    record = PeriodRecord(
        period=period,
        recorded_at=_utc_now(),
        model=os.path.abspath(model_dir),
        model_fingerprint=fingerprint,
        data_file=os.path.abspath(data_file),
        rows=len(batch),
        labelled=labelled,
        train_grouping=saved.train_grouping,
        class_names=class_names,
        results=results,
        standard_errors=errors,
        settings={
            "bootstrap_samples": args.bootstrap_samples,
            "confidence_level": args.confidence_level,
            "interval_method": args.interval_method,
            "min_group_size": args.min_group_size,
            "gaps_over": args.gaps_over,
            "missing_group": args.missing_group,
            "alpha": alpha,
            "gate": [list(threshold) for threshold in thresholds],
        },
        score_histograms=score_histograms(scores, groups, names),
    )
    previous = records[-1] if records else None
    result = MonitorResult(
        record=record,
        previous=previous,
        history=history,
        periods=len(records) + 1,
        drift=drift_checks(previous, record, alpha) if previous is not None else [],
        gate=check_gate(results, list(thresholds), saved.train_grouping, "monitored"),
        scores=scores,
        groups=groups,
        names=names,
        labels=labels,
    )
    if write:
        result.paths = write_period(result, [*records, record], list(thresholds))
    return result


def _has_groupings(model_dir: str, args: FairTrainingArguments) -> bool:
    """Whether the model has a saved vocabulary or the config names a group_by (inspect_model needs one)."""
    from fairtune.groups import VOCAB_FILE

    return bool(args.group_by) or os.path.isfile(os.path.join(model_dir, VOCAB_FILE))


def _check_history(
    records: list[PeriodRecord], history: str, model_dir: str, fingerprint: str, groupings: list[str]
) -> None:
    path = history_path(history)
    for record in records:
        if record.model_fingerprint != fingerprint:
            raise ValueError(
                ERR_HISTORY_MODEL.format(
                    path=path,
                    theirs=record.model,
                    their_print=record.model_fingerprint,
                    model=model_dir,
                    our_print=fingerprint,
                )
            )
        if record.groupings != list(groupings):
            raise ValueError(
                ERR_HISTORY_GROUPINGS.format(
                    path=path, theirs=", ".join(record.groupings), model=model_dir, ours=", ".join(groupings)
                )
            )


def _check_period(period: str | None, records: list[PeriodRecord], history: str) -> str:
    if period is None:
        period = _utc_now()
    if not period.strip() or "\n" in period or "\r" in period:
        raise ValueError(ERR_PERIOD.format(period=period))
    for line, record in enumerate(records, 1):
        if record.period == period:
            raise ValueError(ERR_PERIOD_EXISTS.format(period=period, path=history_path(history), line=line))
    return period


def _utc_now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _batch_data_args(data_args: DataArguments, data_file: str) -> DataArguments:
    """The config's data options with the batch as the only data source.

    ``build`` (through ``load_raw_datasets``) insists on a training split: it fixes the label set, checks the
    groups, and carves a validation split when there is none; a config that reads the embedded data cannot
    take a file besides (``dataset_name`` and files together are refused). Naming the batch as every split
    makes the pipeline read the batch alone, whole (no subsets, no carving, no augmentation of "training"
    rows that are never trained on); only the test split is evaluated.
    """
    return replace(
        data_args,
        dataset_name=None,
        dataset_config_name=None,
        train_file=data_file,
        validation_file=data_file,
        test_file=data_file,
        max_train_samples=None,
        max_eval_samples=None,
        max_test_samples=None,
        counterfactual_augmentation=None,
        oversample_by=None,
        streaming=False,
    )


def _load_batch(
    data_file: str, data_args: DataArguments, args: FairTrainingArguments, groupings: Sequence[str]
) -> Any:
    """The batch as a ``datasets.Dataset``, its text and attribute columns checked (an empty or unreadable
    file is refused by ``load_file``, naming it)."""
    from fairtune.data.loading import load_file
    from fairtune.groups import check_columns, check_group_columns, parse_grouping

    batch = load_file(data_file)
    where = f"--data ({data_file})"
    text = [data_args.text_column] + ([data_args.text_pair_column] if data_args.text_pair_column else [])
    check_columns(batch, text, split=where, what="text_column")
    attributes = list(dict.fromkeys(a for g in groupings for a in parse_grouping(g)))
    check_group_columns(batch, attributes, split=where, missing_group=args.missing_group)
    if data_args.label_column in batch.column_names:
        check_columns(batch, [data_args.label_column], split=where, what="label_column")
    return batch


def _class_names(model_dir: str, num_classes: int) -> list[str]:
    """Class names from the saved config's ``id2label``; ``str(c)`` when it has none for every class."""
    with open(os.path.join(model_dir, "config.json")) as f:
        id2label = {int(k): str(v) for k, v in (json.load(f).get("id2label") or {}).items()}
    if sorted(id2label) != list(range(num_classes)):
        return [str(c) for c in range(num_classes)]
    return [id2label[c] for c in range(num_classes)]


def _default_class_names(names: Sequence[str]) -> bool:
    return all(name in (str(c), f"LABEL_{c}") for c, name in enumerate(names))


def _check_batch_labels(batch: Any, column: str, data_file: str, class_names: list[str]) -> None:
    """Refuse labels that would not map to the model's class ids: the pipeline numbers the sorted label
    values of its training split, which here is the batch, so every class must occur (and, where the model
    names its classes, under those names)."""
    values = batch.unique(column)
    count = len(class_names)
    if all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        values = sorted(values)
        fits = values == list(range(count))
    elif _default_class_names(class_names):
        fits = len(values) == count
    else:
        values = sorted(values, key=str)
        fits = [str(v) for v in values] == sorted(class_names)
    if not fits:
        shown = ", ".join(repr(v) for v in values[:10]) + (", ..." if len(values) > 10 else "")
        raise ValueError(
            ERR_BATCH_LABELS.format(
                column=column, path=data_file, found=shown, count=count, classes=", ".join(class_names)
            )
        )


# ----- a batch without labels --------------------------------------------------------------------------
def predict_unlabelled(
    model_dir: str, batch: Any, data_args: DataArguments, args: FairTrainingArguments
) -> tuple[np.ndarray, dict[str, np.ndarray], dict[str, list[str]]]:
    """Class probabilities (N, C), group ids {grouping: (N,)} and group names of a batch without labels.

    The model, tokenizer and group vocabulary load as ``evaluate_model`` loads them; the rows are tokenized
    like the config's data and predicted by a ``FairTrainer`` (no labels: no metrics, just logits).
    """
    import datasets
    import numpy as np
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from fairtune.data.loading import tokenize
    from fairtune.mitigation import Mitigations
    from fairtune.trainer import FairTrainer

    vocab = _vocabulary(model_dir, args, batch)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    data = tokenize(
        datasets.DatasetDict({"test": batch}),
        tokenizer,
        data_args.text_column,
        data_args.text_pair_column,
        data_args.max_seq_length,
    )["test"]
    data = vocab.encode(data, split="test")
    model = AutoModelForSequenceClassification.from_pretrained(model_dir)
    # As in evaluate_model: the model's folder stands in as output_dir (Trainer creates it), and no
    # mitigation is built (nothing is trained).
    trainer = FairTrainer(
        model=model,
        args=replace(args, output_dir=model_dir, overwrite_output_dir=True),
        processing_class=tokenizer,
        group_vocab=vocab,
        mitigations=Mitigations(),
    )
    output = trainer.predict(data, metric_key_prefix="monitor")
    probs = torch.as_tensor(output.predictions).float().softmax(-1).numpy()
    groups = {name: np.asarray(data[f"group:{name}"]) for name in vocab.groupings}
    return probs, groups, {name: vocab.names(name) for name in vocab.groupings}


def _vocabulary(model_dir: str, args: FairTrainingArguments, batch: Any) -> GroupVocabulary:
    from fairtune.groups import VOCAB_FILE, GroupVocabulary

    path = os.path.join(model_dir, VOCAB_FILE)
    if os.path.isfile(path):
        return GroupVocabulary.load(path, args.missing_group)
    # As build() does for a model without a saved vocabulary: fitted on the data at hand.
    return GroupVocabulary(args.group_by, args.eval_group_by, args.missing_group).fit(batch)


def _label_free(metric: str) -> bool:
    """Whether a gap or (``overall_``) stat name needs no labels: counts, selection rates, DP gaps."""
    stat = metric.removeprefix("overall_")
    return metric in LABEL_FREE_GAPS or stat == "count" or stat.startswith("selection_rate")


def group_stats(
    scores: np.ndarray,
    labels: np.ndarray | None,
    groups: dict[str, np.ndarray],
    names: dict[str, list[str]],
    args: FairTrainingArguments,
) -> dict[str, GroupStats]:
    """Per grouping, the `GroupStats` of the predictions (argmax of ``scores``), bootstrapped with the
    trainer's settings and seed: the rows' Poisson weights are drawn in row order whatever the batching, so
    the replicates are those of the evaluation (labelled batches) or of the same rows with labels.

    scores (N, C); labels (N,) class ids, or None: then a constant label (0) fills the true-class axis of the
    counts, and only the numbers that never read it (`label_free`) mean anything; groups {grouping: (N,) ids,
    -1 for a row without a group}; names {grouping: group names}.
    """
    import torch

    from fairtune.metrics import GroupStats

    preds = torch.as_tensor(scores.argmax(1), dtype=torch.long)
    truth = torch.zeros_like(preds) if labels is None else torch.as_tensor(labels, dtype=torch.long)
    stats = {}
    for grouping, ids in groups.items():
        stats[grouping] = GroupStats(
            scores.shape[1],
            len(names[grouping]),
            ece_bins=args.ece_bins,
            bootstrap_samples=args.bootstrap_samples,
            seed=args.seed,
        )
        stats[grouping].update(truth, torch.as_tensor(ids, dtype=torch.long), preds=preds)
    return stats


def label_free(result: GroupResult) -> GroupResult:
    """``result`` cut to what needs no labels: counts, selection rates and the demographic-parity gaps (with
    their intervals), for a result computed with a constant label (`group_stats` without labels)."""
    from fairtune.metrics import WARN_UNDEFINED_RATES

    dropped = [gap for gap in result.gaps if gap not in LABEL_FREE_GAPS]
    undefined = WARN_UNDEFINED_RATES.split("{stats}")[-1]
    return replace(
        result,
        overall={k: v for k, v in result.overall.items() if _label_free(k)},
        by_group={g: {k: v for k, v in s.items() if _label_free(k)} for g, s in result.by_group.items()},
        gaps={k: v for k, v in result.gaps.items() if k in LABEL_FREE_GAPS},
        intervals={k: v for k, v in result.intervals.items() if k in LABEL_FREE_GAPS},
        # The constant label leaves label-based rates undefined; those warnings are about nothing real.
        warnings=[w for w in result.warnings if undefined not in w and w.split(":", 1)[0] not in dropped],
    )


def score_histograms(
    scores: np.ndarray, groups: dict[str, np.ndarray], names: dict[str, list[str]]
) -> dict[str, dict[str, list[int]]]:
    """Counts of P(class 1) in `SCORE_BINS` equal-width bins per grouping and group (binary models only;
    {} otherwise). Rows without a group are left out."""
    import numpy as np

    if scores.ndim != 2 or scores.shape[1] != 2:
        return {}
    edges = np.linspace(0.0, 1.0, SCORE_BINS + 1)
    out: dict[str, dict[str, list[int]]] = {}
    for grouping, ids in groups.items():
        out[grouping] = {
            name: np.histogram(scores[ids == i, 1], bins=edges)[0].astype(int).tolist()
            for i, name in enumerate(names[grouping])
            if (ids == i).any()
        }
    return out


# ----- outputs -------------------------------------------------------------------------------------------
def _tag(grouping: str) -> str:
    return grouping.replace("+", "_x_")


def _gate_lines(
    thresholds: Sequence[tuple[str, str, float]], grouping: str, train_grouping: str
) -> dict[str, list[tuple[str, float]]]:
    """The thresholds that bound a gap of ``grouping``: {gap: [(bound, limit)]} (bare names: the training
    grouping's)."""
    lines: dict[str, list[tuple[str, float]]] = {}
    for name, bound, limit in thresholds:
        head, _, metric = name.rpartition("/")
        if (head or train_grouping) == grouping:
            lines.setdefault(metric, []).append((bound, limit))
    return lines


def write_period(
    result: MonitorResult, records: list[PeriodRecord], thresholds: Sequence[tuple[str, str, float]]
) -> list[str]:
    """Append the period to the history, then redraw ``trend_<grouping>.png`` over ``records`` (the whole
    history, this period last), ``scores_<grouping>.png`` of this period (binary models) and
    ``monitor_summary.md``. Returns the paths written."""
    from fairtune import plots

    record = result.record
    paths = [append_history(result.history, record)]
    folder = os.path.dirname(paths[0])
    flagged = {check.name for check in result.alarms}
    periods = [r.period for r in records]
    for grouping in record.groupings:
        gaps = [g for g in _monitored_gaps() if any(g in r.results[grouping].gaps for r in records)]
        if gaps:
            paths.append(
                plots.plot_gap_trend(
                    periods,
                    [r.results.get(grouping) for r in records],
                    os.path.join(folder, f"trend_{_tag(grouping)}.png"),
                    gaps=gaps,
                    thresholds=_gate_lines(thresholds, grouping, record.train_grouping),
                    flagged=[name.rsplit("/", 1)[1] for name in flagged if name.startswith(f"{grouping}/")],
                    title=grouping,
                )
            )
        ids = result.groups[grouping]
        grouped = ids >= 0  # rows without a group (missing_group: ignore) have no panel
        if result.scores.shape[1] == 2 and grouped.any():
            names = result.names[grouping][: int(ids.max()) + 1]
            path = os.path.join(folder, f"scores_{_tag(grouping)}.png")
            title = f"{grouping}, period {record.period}"
            positive = result.scores[grouped, 1]
            if result.labels is not None:
                labels = result.labels[grouped]
                paths.append(
                    plots.plot_score_distributions(positive, labels, ids[grouped], names, path, title=title)
                )
            else:
                paths.append(plots.plot_score_histograms(positive, ids[grouped], names, path, title=title))
    summary = os.path.join(folder, SUMMARY_MD)
    with open(summary, "w", encoding="utf-8") as f:
        f.write(render_summary(result))
    paths.append(summary)
    return paths


def render_summary(result: MonitorResult) -> str:
    """Markdown: the latest period against the previous one, per grouping the monitored gaps with their
    intervals, change and drift test, and the per-group counts and selection rates; then the gate."""
    record, previous = result.record, result.previous
    kind = "labelled" if record.labelled else "no labels: selection rates and score distributions only"
    lines = [
        f"# Fairness monitor: period `{record.period}`",
        "",
        f"- model: `{record.model}` (fingerprint {record.model_fingerprint})",
        f"- data: `{record.data_file}`, {record.rows} rows, {kind}",
    ]
    if previous is None:
        lines.append("- previous period: none (the first one recorded; no drift test)")
    else:
        lines.append(
            f"- previous period: `{previous.period}` (`{previous.data_file}`, {previous.rows} rows, "
            f"{'labelled' if previous.labelled else 'no labels'})"
        )
    alpha = result.drift[0].alpha if result.drift else record.settings.get("alpha", DEFAULT_ALPHA)
    lines += [
        f"- history: `{history_path(result.history)}`, {result.periods} period(s)",
        f"- drift test: one-sided z-test of each gap's change against the previous period, alpha {alpha:g}; "
        "standard errors (se) from the bootstrap replicates (see `fairtune.monitor`)",
        "",
    ]
    checks = {check.name: check for check in result.drift}
    for grouping, now in record.results.items():
        before = previous.results.get(grouping) if previous is not None else None
        level = f"{round(now.confidence * 100)}% interval"
        lines += [
            f"## {grouping}",
            "",
            f"| gap | previous [{level}] | latest [{level}] | change | se (previous, latest) | z "
            "| p (one-sided) | verdict |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for gap in [
            g for g in _monitored_gaps() if g in now.gaps or (before is not None and g in before.gaps)
        ]:
            check = checks.get(f"{grouping}/{gap}")
            old = _with_interval(before, gap) if before is not None else "–"
            change = f"{check.change:+.3f}" if check and not math.isnan(check.change) else "–"
            z = f"{check.z:.2f}" if check and check.tested else "–"
            p = _p_text(check.p_value) if check and check.tested else "–"
            verdict = check.verdict() if check else "first period"
            if check and check.note:
                verdict += f" ({check.note})"
            errors = f"{_fmt(check.previous_se)}, {_fmt(check.current_se)}" if check else "–"
            cells = [gap, old, _with_interval(now, gap), change, errors, z, p, verdict]
            lines.append("| " + " | ".join(cells) + " |")
        lines += ["", _rate_table(now, before), ""]
        lines += [f"> warning: {w}" for w in now.warnings]
        lines += [""] if now.warnings else []
    if result.gate:
        lines += ["## Gate", "", *(f"- {check}" for check in result.gate), ""]
    if result.alarms or result.failed_gates:
        lines += ["## Alarms", ""]
        lines += [f"- adverse move: {check.describe()}" for check in result.alarms]
        lines += [f"- gate failed: {check.describe()}" for check in result.failed_gates]
        lines.append("")
    return "\n".join(lines)


def _fmt(value: float) -> str:
    return "–" if value is None or math.isnan(value) else f"{value:.3f}"


def _p_text(p: float) -> str:
    return "<0.0001" if p < 1e-4 else f"{p:.4f}"


def _with_interval(result: GroupResult, gap: str) -> str:
    if gap not in result.gaps:
        return "not measured"
    low, high = result.intervals.get(gap, (math.nan, math.nan))
    text = _fmt(result.gaps[gap])
    return text if math.isnan(low + high) else f"{text} [{low:.3f}, {high:.3f}]"


def _rate_table(now: GroupResult, before: GroupResult | None) -> str:
    """Per group: count and selection rate (per class for C > 2) now and in the previous period."""
    stats = (
        ["selection_rate"]
        if now.num_classes == 2
        else [f"selection_rate_{c}" for c in range(now.num_classes)]
    )
    labels = [now.stat_label(s) for s in stats]
    head = ["group", "count", *labels]
    if before is not None:
        head += ["previous count", *(f"previous {label}" for label in labels)]
    rows = ["| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
    groups = list(dict.fromkeys([*now.by_group, *(before.by_group if before is not None else {})]))
    for group in [*groups, "overall"]:
        cells = [f"{group} *" if group in now.small_groups else group]
        sources = [now] + ([before] if before is not None else [])
        for result in sources:
            row = result.overall if group == "overall" else result.by_group.get(group, {})
            count = row.get("count")
            cells.append("–" if count is None else str(int(count)))
            cells += [_fmt(row.get(s, math.nan)) for s in stats]
        rows.append("| " + " | ".join(cells) + " |")
    if now.small_groups:
        rows += ["", f"* fewer than {now.min_group_size} rows in this period."]
    return "\n".join(rows)


# ----- the command ---------------------------------------------------------------------------------------
def monitor_main(argv: Sequence[str] | None = None) -> None:
    """``fairtune monitor``: evaluate a saved model on a new batch, append the period to the history, draw
    the trends, and exit 1 on a failed gate threshold or a significant adverse move.

    Every check that needs no model runs first (options, config, files, history, period, gate names), so a
    refused run evaluates nothing and writes nothing.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    if "-h" in argv or "--help" in argv:
        print(MONITOR_HELP)
        return
    try:
        own = {"--model": None, "--data": None, "--history": None, "--period": None, "--alpha": None}
        opts, rest = _own_options("monitor", argv, own | {"--max": [], "--min": []})
        for flag, value, what in (
            ("--model", opts.model, "DIR, the folder of a saved model"),
            ("--data", opts.data, "NEW_FILE, the batch to monitor"),
        ):
            if not value:
                raise ConfigError(ERR_MONITOR_NEEDS.format(flag=f"{flag} {what}"))
        alpha = DEFAULT_ALPHA if opts.alpha is None else _check_alpha(opts.alpha)
        refuse_unused_keys("monitor", rest, MONITOR_KEYS)
        if not os.path.isfile(opts.data):
            raise ConfigError(ERR_DATA_MISSING.format(path=opts.data))
        if opts.history and os.path.isfile(opts.history) and not opts.history.endswith(".jsonl"):
            raise ConfigError(ERR_HISTORY_NOT_DIR.format(path=opts.history, name=HISTORY_FILE))
        # The batch is every split: the config's own data files need not exist where the model is monitored.
        batch_flags = [f"--{key}={opts.data}" for key in ("train_file", "validation_file", "test_file")]
        read_config_layers([*rest, *batch_flags])  # before torch and transformers load

        from fairtune.config import parse_config
        from fairtune.evaluation import parse_gate

        _, data_args, args = parse_config([*rest, *batch_flags], prog="fairtune monitor")
        thresholds = parse_gate(opts.max, "max") + parse_gate(opts.min, "min")
        result = monitor_batch(
            opts.model,
            opts.data,
            data_args,
            args,
            history=opts.history,
            period=opts.period,
            alpha=alpha,
            thresholds=thresholds,
        )
    except USER_ERRORS as err:
        fail(str(err))
    print(render_summary(result))
    print("Written: " + ", ".join(result.paths))
    if result.untested:
        reasons = sorted({check.reason for check in result.untested})
        print(f"\nDrift test not run for {len(result.untested)} gap(s): " + "; ".join(reasons))
    if result.gate:
        print("\nFairness gate:\n" + "\n".join(f"  {check}" for check in result.gate))
    problems = [f"gate failed: {check.describe()}" for check in result.failed_gates]
    problems += [f"adverse move: {check.describe()}" for check in result.alarms]
    if problems:
        print("fairtune: monitor alarm: " + "; ".join(problems), file=sys.stderr)
        sys.exit(EXIT_GATE_FAILED)
    print("monitor: no gate failed and no significant adverse move")
