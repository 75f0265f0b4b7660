"""Constrained checkpoint selection: the best objective among checkpoints whose validation gaps meet bounds.

``Trainer`` keeps the checkpoint with the best ``metric_for_best_model``. Selecting by a gap alone picks a
model that predicts one class for everyone (every gap is then 0), and selecting by accuracy ignores the gaps.
``ModelSelection`` replaces ``Trainer._determine_best_metric`` (``FairTrainer`` calls it) with this rule:

1. A checkpoint whose validation predictions are all one class (*constant*) is never chosen while any
   non-constant one exists; if every checkpoint is constant, the run warns loudly (``WARN_ALL_CONSTANT``).
2. Among the rest, a checkpoint that meets every bound (*feasible*) beats one that does not; feasible ones
   are ranked by the objective (``metric_for_best_model``, in its ``greater_is_better`` direction).
3. If none is feasible, the least violating one is chosen (the objective breaks ties), with a warning
   (``WARN_INFEASIBLE``) at the end of training.

A bound reads ``"eval_sex/demographic_parity_difference <= 0.05"`` or ``"sex/worst_group_accuracy >= 0.7"``
(the ``eval_`` prefix is added when missing, as ``metric_for_best_model`` does). With ``use_interval`` a bound
is judged on the pessimistic end of the metric's bootstrap interval: ``<metric>_ci_high`` for ``<=``,
``<metric>_ci_low`` for ``>=``. The violation of a checkpoint is the sum over bounds of
``max(0, value - limit) / |limit|`` for ``<=`` (``max(0, limit - value) / |limit|`` for ``>=``): the excess
relative to the bound, so that bounds of different scales add up comparably (0.02 over a 0.05 bound counts
like 0.04 over a 0.1 bound); a bound of 0 counts the absolute excess. A bound whose metric is missing or
NaN at an evaluation (e.g. a gap undefined because a group had no positives) counts as violated by +inf: it
cannot be shown to hold.

The choice depends only on the evaluation metrics, which every process computes from the same gathered
counts, so every process makes the same choice. It is kept in ``TrainerState`` (``best_global_step``,
``best_metric`` = the chosen checkpoint's objective); on resume the chosen checkpoint's standing is recomputed
from its evaluation in ``state.log_history``, so a resumed run continues the same selection.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from transformers.trainer_callback import TrainerCallback

logger = logging.getLogger(__name__)

__all__ = [
    "Bound",
    "Candidate",
    "ModelSelection",
    "check_selection_args",
    "is_constant",
    "parse_bound",
]

ERR_BOUND_SYNTAX = (
    "selection_constraints: {text!r} is not a bound; write '<metric> <= <number>' or '<metric> >= <number>', "
    "e.g. 'eval_sex/demographic_parity_difference <= 0.05' or 'sex/worst_group_accuracy >= 0.7'."
)
ERR_BOUND_TYPE = "selection_constraints must be a list of bound strings; got {kind}."
ERR_NEEDS_LOAD_BEST = (
    "selection_constraints choose the checkpoint loaded at the end of training: set "
    "load_best_model_at_end: true (with eval_strategy and save_strategy both 'steps' or both 'epoch')."
)
ERR_NEEDS_EVAL = (
    "selection_constraints are judged on validation metrics, but eval_strategy is 'no': set eval_strategy to "
    "'steps' or 'epoch' (and give a validation set)."
)
ERR_INTERVAL_WITHOUT_BOUNDS = (
    "selection_use_interval is set, but there are no selection_constraints to apply it to."
)
ERR_INTERVAL_NO_BOOTSTRAP = (
    "selection_use_interval judges bounds on bootstrap intervals, but bootstrap_samples is 0; set "
    "bootstrap_samples (e.g. 200)."
)
ERR_UNKNOWN_METRIC = (
    "{what} names {metric!r}, which evaluation never produces. Valid names (with the eval_ prefix) are: "
    "{valid}; per-group stats read <prefix>_<grouping>/<group>/<stat>."
)
ERR_NO_INTERVAL = (
    "selection_use_interval: {metric!r} has no bootstrap interval ({interval!r} is never produced); bounds "
    "with intervals are the gaps, e.g. {example}."
)
WARN_INFEASIBLE = (
    "No evaluated checkpoint met the selection bounds {bounds}; loading the least violating one instead: "
    "step {step} (violation {violation:.4g}; {values})."
)
WARN_ALL_CONSTANT = (
    "Every evaluated checkpoint predicts one class for all validation rows (constant predictions); the "
    "selected step {step} is such a model. Its gaps of 0 are not fairness: train longer, lower the penalty, "
    "or check the labels."
)
WARN_CONSTANT_SKIPPED = (
    "Checkpoint selection skipped {count} evaluation(s) with constant predictions (steps {steps}), although "
    "they scored better on {objective}."
)

_BOUND = re.compile(r"^\s*(?P<metric>[^\s<>=]+)\s*(?P<op><=|>=)\s*(?P<limit>\S+)\s*$")
# Trainer's own per-evaluation keys: not statistics anything could be selected on.
_TIMING_KEYS = ("_runtime", "_samples_per_second", "_steps_per_second")


def _eval_key(metric: str) -> str:
    """``sex/worst_group_accuracy`` -> ``eval_sex/worst_group_accuracy`` (Trainer's rule for metric names)."""
    return metric if metric.startswith("eval_") else f"eval_{metric}"


@dataclass(frozen=True)
class Bound:
    """One bound on a validation metric: ``metric op limit`` with op ``<=`` or ``>=``."""

    metric: str
    op: str
    limit: float

    def __str__(self) -> str:
        return f"{self.metric} {self.op} {self.limit:g}"

    def key(self, use_interval: bool = False) -> str:
        """The metrics key the bound is judged on: the metric, or its pessimistic interval end."""
        if not use_interval:
            return self.metric
        return self.metric + ("_ci_high" if self.op == "<=" else "_ci_low")

    def violation(self, metrics: Mapping[str, float], use_interval: bool = False) -> float:
        """Relative excess over the limit, >= 0 (0: the bound holds); +inf if the value is missing or NaN."""
        value = metrics.get(self.key(use_interval))
        if value is None or math.isnan(value):
            return math.inf
        excess = value - self.limit if self.op == "<=" else self.limit - value
        return max(0.0, excess) / (abs(self.limit) or 1.0)


def parse_bound(text: str | Bound) -> Bound:
    """``"eval_sex/demographic_parity_difference <= 0.05"`` -> ``Bound``; a malformed text raises."""
    if isinstance(text, Bound):
        return Bound(_eval_key(text.metric), text.op, float(text.limit))
    match = _BOUND.match(text) if isinstance(text, str) else None
    if match is None:
        raise ValueError(ERR_BOUND_SYNTAX.format(text=text))
    try:
        limit = float(match["limit"])
    except ValueError:
        raise ValueError(ERR_BOUND_SYNTAX.format(text=text)) from None
    if not math.isfinite(limit):
        raise ValueError(ERR_BOUND_SYNTAX.format(text=text))
    return Bound(_eval_key(match["metric"]), match["op"], limit)


def parse_bounds(texts: str | Bound | Iterable[str | Bound] | None) -> list[Bound]:
    """A list of bounds from strings (or ``Bound`` objects); one string is one bound."""
    if texts is None:
        return []
    if isinstance(texts, str | Bound):
        texts = [texts]
    if not isinstance(texts, Iterable):
        raise ValueError(ERR_BOUND_TYPE.format(kind=type(texts).__name__))
    return [parse_bound(t) for t in texts]


def is_constant(metrics: Mapping[str, float]) -> bool:
    """Whether an evaluation's predictions were all one class, read from its overall selection rates.

    Binary: ``<prefix>/overall/selection_rate`` is 0 or 1; C > 2: some ``<prefix>/overall/selection_rate_<c>``
    is 1. Only evaluations of more than one row count (one row is trivially "constant").
    """
    for key, value in metrics.items():
        head, sep, stat = key.rpartition("/overall/")
        if not sep or not stat.startswith("selection_rate"):
            continue
        if metrics.get(f"{head}/overall/count", 2) <= 1:
            continue
        if stat == "selection_rate" and value in (0.0, 1.0):
            return True
        if stat != "selection_rate" and value == 1.0:
            return True
    return False


@dataclass(frozen=True)
class Candidate:
    """One evaluation's standing: objective, total violation, constant predictions, and the values seen."""

    step: int
    objective: float
    violation: float
    constant: bool
    values: tuple[tuple[str, float], ...] = ()

    @property
    def feasible(self) -> bool:
        return self.violation == 0.0

    def rank(self, greater_is_better: bool) -> tuple[bool, bool, float, float]:
        """A sort key, larger is better: non-constant, then feasible, then objective (feasible) or the
        negated violation with the objective as tie-break (infeasible)."""
        objective = self.objective if greater_is_better else -self.objective
        if math.isnan(objective):
            objective = -math.inf
        primary = objective if self.feasible else -self.violation
        return (not self.constant, self.feasible, primary, objective)


class ModelSelection(TrainerCallback):
    """Chooses the best checkpoint under bounds; ``FairTrainer`` calls ``update`` after every evaluation.

    Args:
        objective: the metric to optimise (``metric_for_best_model``; ``eval_`` added when missing).
        greater_is_better: its direction.
        bounds: ``Bound`` objects or their text (see the module docstring); none: only the constant guard.
        use_interval: judge each bound on the pessimistic end of its bootstrap interval.
    """

    def __init__(
        self,
        objective: str,
        greater_is_better: bool,
        bounds: Sequence[str | Bound] = (),
        use_interval: bool = False,
    ):
        self.objective = _eval_key(objective)
        self.greater_is_better = bool(greater_is_better)
        self.bounds = parse_bounds(bounds)
        self.use_interval = use_interval
        self.best: Candidate | None = None
        self.skipped_constant: list[Candidate] = []
        self._state_id: int | None = None

    @classmethod
    def for_run(
        cls,
        args: Any,
        vocab: Any,
        num_labels: int,
        is_classifier: bool,
        eval_dataset: Any,
        open_ended: bool = False,
    ) -> ModelSelection | None:
        """The selection a run's arguments ask for, its metric names checked against what evaluation of
        ``eval_dataset`` produces; None when the run selects no checkpoint (no ``metric_for_best_model``),
        or for a causal LM without bounds. ``open_ended``: ``compute_metrics`` or a monitor adds metrics."""
        bounds = parse_bounds(getattr(args, "selection_constraints", None))
        if args.metric_for_best_model is None or not (bounds or is_classifier):
            return None
        use_interval = bool(getattr(args, "selection_use_interval", False))
        selection = cls(args.metric_for_best_model, args.greater_is_better, bounds, use_interval)
        produced = expected_metrics(args, vocab, num_labels, is_classifier, eval_dataset)
        selection.check_names(produced, _prefixes(eval_dataset), list(vocab.groupings), open_ended)
        return selection

    # ----- config-time checks ---------------------------------------------------------------------------
    def check_names(
        self, produced: set[str], prefixes: Sequence[str], groupings: Sequence[str], open_ended: bool = False
    ) -> None:
        """Refuse an objective or a bound that names a metric evaluation never produces, before training.

        Names under a grouping (``<prefix>_<grouping>/...``) are checked exactly; other names are checked
        unless ``open_ended`` (``compute_metrics`` or a monitor may produce them).
        """

        def known(name: str) -> bool:
            if name in produced:
                return True
            ours = any(name.startswith(f"{p}_{g}/") for p in prefixes for g in groupings)
            return open_ended and not ours

        valid = sorted(k for k in produced if k.count("/") <= 1 and not k.endswith(_TIMING_KEYS))
        for what, name in [
            ("metric_for_best_model", self.objective),
            *(("selection_constraints", b.metric) for b in self.bounds),
        ]:
            if not known(name):
                raise ValueError(ERR_UNKNOWN_METRIC.format(what=what, metric=name, valid=", ".join(valid)))
        if self.use_interval:
            for bound in self.bounds:
                if bound.key(True) not in produced and bound.metric in produced:
                    example = next((k for k in valid if k.endswith("_difference")), "")
                    raise ValueError(
                        ERR_NO_INTERVAL.format(metric=bound.metric, interval=bound.key(True), example=example)
                    )

    # ----- the rule -------------------------------------------------------------------------------------
    def score(self, metrics: Mapping[str, float], step: int) -> Candidate:
        """The standing of one evaluation's metrics."""
        objective = metrics.get(self.objective)
        objective = math.nan if objective is None else float(objective)
        values = tuple(
            (b.key(self.use_interval), metrics.get(b.key(self.use_interval), math.nan)) for b in self.bounds
        )
        violation = sum(b.violation(metrics, self.use_interval) for b in self.bounds)
        return Candidate(int(step), objective, float(violation), is_constant(metrics), values)

    def better(self, candidate: Candidate, incumbent: Candidate | None) -> bool:
        """Whether ``candidate`` beats ``incumbent`` (strictly: on a tie the earlier checkpoint stays)."""
        if incumbent is None:
            return True
        return candidate.rank(self.greater_is_better) > incumbent.rank(self.greater_is_better)

    def update(self, metrics: Mapping[str, float], state: Any, save_checkpoints: bool = True) -> bool:
        """Score an evaluation; if it is the new best, record it in ``state`` (``best_metric``, and
        ``best_global_step`` when checkpoints are saved). Returns whether it is the new best."""
        self._sync(state)
        candidate = self.score(metrics, state.global_step)
        if not self.better(candidate, self.best):
            if (
                candidate.constant
                and self.best is not None
                and not self.best.constant
                and self._objective_beats(candidate, self.best)
            ):
                self.skipped_constant.append(candidate)
            return False
        self.best = candidate
        state.best_metric = candidate.objective
        if save_checkpoints:
            state.best_global_step = candidate.step
        return True

    def _objective_beats(self, a: Candidate, b: Candidate) -> bool:
        return a.rank(self.greater_is_better)[3] > b.rank(self.greater_is_better)[3]

    def _sync(self, state: Any) -> None:
        """Start afresh for a new ``TrainerState``; a resumed one re-scores its recorded best checkpoint
        from ``log_history`` (the evaluation logged at ``best_global_step``)."""
        if self._state_id == id(state):
            return
        self._state_id = id(state)
        self.best, self.skipped_constant = None, []
        step = getattr(state, "best_global_step", None)
        if step is None:
            return
        merged: dict[str, float] = {}
        for entry in state.log_history:
            if entry.get("step") == step and any(k.startswith("eval_") for k in entry):
                for key, value in entry.items():
                    merged.setdefault(key, value)  # the first evaluation at that step: the one selected on
        if merged:
            self.best = self.score(merged, step)

    # ----- reporting ------------------------------------------------------------------------------------
    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        best = self.best
        if best is None:
            return
        if best.constant:
            logger.warning(WARN_ALL_CONSTANT.format(step=best.step))
        elif not best.feasible and self.bounds:
            values = ", ".join(f"{k}={v:.4g}" for k, v in best.values)
            logger.warning(
                WARN_INFEASIBLE.format(
                    bounds=[str(b) for b in self.bounds],
                    step=best.step,
                    violation=best.violation,
                    values=values,
                )
            )
        if self.skipped_constant:
            logger.warning(
                WARN_CONSTANT_SKIPPED.format(
                    count=len(self.skipped_constant),
                    steps=", ".join(str(c.step) for c in self.skipped_constant),
                    objective=self.objective,
                )
            )

    def __repr__(self) -> str:
        bounds = ", ".join(str(b) for b in self.bounds)
        direction = "max" if self.greater_is_better else "min"
        return (
            f"ModelSelection({direction} {self.objective}; bounds: [{bounds}]; interval={self.use_interval})"
        )


def _prefixes(eval_dataset: Any) -> list[str]:
    """Metric prefixes of evaluation during training: ``eval``, or ``eval_<name>`` per dataset of a dict."""
    if isinstance(eval_dataset, dict):
        return [f"eval_{name}" for name in eval_dataset]
    return ["eval"]


def expected_metrics(
    args: Any, vocab: Any, num_labels: int, is_classifier: bool, eval_dataset: Any
) -> set[str]:
    """Every metric key ``FairTrainer``'s evaluation during training can produce, known before training.

    Classification: the group metrics come from ``GroupStats.compute`` run on fake counts in which every
    (group, true, predicted) cell has a row, so no rate is undefined and every key appears. Causal LM: the
    per-group loss keys of ``FairTrainer._lm_group_metrics``.
    """
    import torch

    from fairtune.metrics import GroupStats

    keys: set[str] = set()
    for prefix in _prefixes(eval_dataset):
        keys.update(f"{prefix}{suffix}" for suffix in ("_loss", *_TIMING_KEYS))
        for name, grouping in vocab.groupings.items():
            if not is_classifier:
                keys.add(f"{prefix}_perplexity")
                keys.update(f"{prefix}_{name}/{k}" for k in ("loss_difference", "worst_group_loss"))
                for group in grouping.values:
                    keys.update(f"{prefix}_{name}/{group}/{k}" for k in ("loss", "perplexity", "count"))
                continue
            c, size = num_labels, len(grouping.values)
            stats = GroupStats(c, size, ece_bins=args.ece_bins, bootstrap_samples=args.bootstrap_samples)
            cells = torch.arange(size * c * c)
            groups, labels, preds = cells // (c * c), (cells // c) % c, cells % c
            logits = torch.nn.functional.one_hot(preds, c).float() * 2.0
            stats.update(labels, groups, logits=logits, losses=torch.ones(len(cells)))
            result = stats.compute(vocab.names(name), min_group_size=0, grouping=name)
            keys.update(result.flat(f"{prefix}_{name}"))
    return keys


def check_selection_args(args: Any) -> None:
    """Config-time checks of the selection arguments (``FairTrainingArguments.__post_init__`` calls it):
    the bound texts parse, and the run evaluates and loads the selected checkpoint at the end."""
    bounds = parse_bounds(args.selection_constraints)
    if getattr(args, "selection_use_interval", False):
        if not bounds:
            raise ValueError(ERR_INTERVAL_WITHOUT_BOUNDS)
        if args.bootstrap_samples == 0:
            raise ValueError(ERR_INTERVAL_NO_BOOTSTRAP)
    if not bounds:
        return
    if str(getattr(args.eval_strategy, "value", args.eval_strategy)) == "no":
        raise ValueError(ERR_NEEDS_EVAL)
    if not args.load_best_model_at_end:
        raise ValueError(ERR_NEEDS_LOAD_BEST)
