"""Post-processing with group-specific (randomized) decision thresholds (Hardt, Price & Srebro 2016).

`GroupThresholds` is fitted on a validation set of positive-class scores, binary labels and group ids and
replaces the plain `score >= 0.5` decision by one rule per group, chosen so that a fairness constraint holds
exactly in expectation on the fitting data while the expected accuracy is as high as the constraint allows:

* "demographic_parity": equal selection rates P(yhat=1 | group).
* "equal_opportunity": equal true positive rates P(yhat=1 | y=1, group).
* "equalized_odds": equal true and false positive rates.

Every group's rule has one form, a non-increasing step function of the score with two thresholds::

    P(yhat=1 | s) = p_hi if s >= t_hi;  p_mid if t_lo <= s < t_hi;  p_lo if s < t_lo      (t_hi >= t_lo)

A deterministic threshold t is (t, t, 1, 1, 0); a mixture of two thresholds t_hi > t_lo that picks the lower
one with probability q is (t_hi, t_lo, 1, q, 0); equalized odds may add a score-independent coin.
`predict` draws yhat ~ Bernoulli(P(yhat=1 | s)) with a seeded generator.

Limitations: the constraints hold in expectation on the fitting data; on fresh data they hold up to sampling
error. The rates are chosen on a grid of `grid_size` points, so the expected accuracy is optimal up to the
grid resolution.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Sequence
from typing import Any, TypeAlias

import numpy as np

from fairtune.curves import (
    as_binary,
    as_ids,
    as_probabilities,
    check_1d,
    check_named,
    roc_counts,
    unique_names,
)
from fairtune.mitigation.registry import register

__all__ = ["OBJECTIVES", "THRESHOLDS_FILE", "GroupThresholds"]

# numpy array, torch tensor, pandas Series or list.
ArrayLike: TypeAlias = Any

OBJECTIVES = ("demographic_parity", "equal_opportunity", "equalized_odds")
THRESHOLDS_FILE = "group_thresholds.json"
FORMAT_VERSION = 1

ERR_OBJECTIVE = "objective must be one of {choices}, got {objective!r}"
ERR_GRID_SIZE = "grid_size must be an integer >= 2, got {grid_size!r}"
ERR_EMPTY = "cannot fit GroupThresholds on empty input (scores has 0 entries)"
ERR_FEW_GROUPS = "need at least 2 groups to equalise rates across, got {num_groups}"
ERR_EMPTY_GROUP = "group {name!r} (id {group}) has no samples; group ids must cover 0..{last}"
ERR_NO_POSITIVES = (
    "group {name!r} (id {group}) has no positive labels: its true positive rate, which {objective!r} "
    "equalises, is undefined"
)
ERR_NO_NEGATIVES = (
    "group {name!r} (id {group}) has no negative labels: its false positive rate, which {objective!r} "
    "equalises, is undefined"
)
ERR_NOT_FITTED = "GroupThresholds is not fitted: call fit() before {method}()"
ERR_BAD_FILE = "{path} is not a valid {file} file: {problem}"

WARN_UNSEEN_GROUPS = (
    "group id(s) {ids} were not seen at fit time (fitted ids 0..{last}): using the plain score >= 0.5 rule "
    "for them"
)

# Column order of a rule; also the key order of its dict form in summary() and the saved file.
RULE_KEYS = ("t_hi", "t_lo", "p_hi", "p_mid", "p_lo")
_PLAIN_THRESHOLD = 0.5


@register("post_processing", "equalized_odds")
@register("post_processing", "equal_opportunity")
@register("post_processing", "demographic_parity")
class GroupThresholds:
    """Group-specific (randomized) decision rules for a binary classifier's positive-class score.

    Fit on validation scores (N,) in [0, 1], labels (N,) 0/1 and group ids (N,) in 0..G-1. Per group, the
    deterministic rules are "predict 1 iff score >= u_j" for the group's distinct scores u_1 > ... > u_m,
    plus "predict nothing"; each has a selection rate, TPR and FPR on the group. Then:

    * demographic_parity: on a grid of common selection rates r, each group mixes the two adjacent rules of
      its selection-rate path that hit r exactly in expectation; r maximises the overall expected accuracy.
      (fairlearn's ThresholdOptimizer mixes along the concave hull of (selection rate, accuracy) instead,
      which can be slightly more accurate on the fitting data; adjacent rules randomize over fewer scores.)
    * equal_opportunity: on a grid of common TPRs t, each group takes the minimum-FPR point at TPR t of the
      upper convex hull of its ROC points (a mixture of two hull vertices); t maximises the expected accuracy
      sum_g n_g [pi_g TPR + (1 - pi_g)(1 - FPR_g)] / N, pi_g the group's base rate.
    * equalized_odds: every group must reach one common (FPR, TPR) point, so it must lie under every
      group's ROC hull: on a grid of FPRs x the best common TPR is y(x) = min_g hull_g(x), and x maximises
      the expected accuracy. A group whose hull lies above y(x) cannot reach (x, y) with thresholds alone:
      it mixes its hull point at x (probability lam) with a classifier that ignores the score and predicts
      1 with probability x (probability 1 - lam), lam = (y - x) / (hull_g(x) - x). That coin lowers the
      group's TPR to y without changing its FPR, so equalized odds in general requires randomization.

    All mixtures are stored as one rule per group, (t_hi, t_lo, p_hi, p_mid, p_lo) in `rules_` (G, 5):
    P(yhat=1 | s) = p_hi for s >= t_hi, p_mid for t_lo <= s < t_hi, p_lo for s < t_lo. Group ids >= G at
    predict time get the plain rule score >= 0.5, with a warning.
    """

    def __init__(self, objective: str, grid_size: int = 1001) -> None:
        if objective not in OBJECTIVES:
            choices = ", ".join(repr(o) for o in OBJECTIVES)
            raise ValueError(ERR_OBJECTIVE.format(choices=choices, objective=objective))
        if isinstance(grid_size, bool) or not isinstance(grid_size, int | np.integer) or grid_size < 2:
            raise ValueError(ERR_GRID_SIZE.format(grid_size=grid_size))
        self.objective = objective
        self.grid_size = int(grid_size)
        self.rules_: np.ndarray | None = None
        self.group_names_: list[str] = []
        self.target_: dict[str, float] = {}
        self.group_stats_: list[dict[str, float | int | None]] = []
        self.accuracy_before_: float | None = None
        self.accuracy_after_: float | None = None

    @classmethod
    def from_args(cls, args: Any) -> GroupThresholds:
        """Unfitted thresholds for the objective ``FairTrainingArguments.post_processing`` names."""
        return cls(args.post_processing)

    @property
    def num_groups(self) -> int:
        """Number of fitted groups G (0 before fit)."""
        return 0 if self.rules_ is None else self.rules_.shape[0]

    def fit(
        self,
        scores: ArrayLike,
        labels: ArrayLike,
        groups: ArrayLike,
        group_names: Sequence[str] | None = None,
    ) -> GroupThresholds:
        """Choose the per-group rules on validation data.

        scores (N,) float in [0, 1] = P(y=1); labels (N,) 0/1; groups (N,) int ids 0..G-1, every id with
        samples; group_names[g] names id g in messages and in summary() (default str(g)).
        """
        scores, labels, groups = self._check_fit_inputs(scores, labels, groups)
        if group_names is None:
            group_names = range(int(groups.max()) + 1)
        names = unique_names(group_names)
        check_named(groups, len(names))
        num_groups = len(names)
        if num_groups < 2:
            raise ValueError(ERR_FEW_GROUPS.format(num_groups=num_groups))
        counts = np.bincount(groups, minlength=num_groups)
        positives = np.bincount(groups, weights=labels, minlength=num_groups).astype(np.int64)
        for g in range(num_groups):
            if counts[g] == 0:
                raise ValueError(ERR_EMPTY_GROUP.format(name=names[g], group=g, last=num_groups - 1))
        for g in range(num_groups):
            if self.objective != "demographic_parity" and positives[g] == 0:
                raise ValueError(ERR_NO_POSITIVES.format(name=names[g], group=g, objective=self.objective))
            if self.objective == "equalized_odds" and positives[g] == counts[g]:
                raise ValueError(ERR_NO_NEGATIVES.format(name=names[g], group=g, objective=self.objective))

        paths = [_rule_path(scores[groups == g], labels[groups == g]) for g in range(num_groups)]
        grid = np.linspace(0.0, 1.0, self.grid_size)
        if self.objective == "demographic_parity":
            rules, target = _fit_demographic_parity(paths, grid)
        elif self.objective == "equal_opportunity":
            rules, target = _fit_equal_opportunity(paths, grid)
        else:
            rules, target = _fit_equalized_odds(paths, grid)

        self.rules_ = rules
        self.group_names_ = names
        self.target_ = target
        self._record_stats(scores, labels, groups)
        return self

    def positive_probability(self, scores: ArrayLike, groups: ArrayLike) -> np.ndarray:
        """P(yhat=1 | score, group) (N,) float64 for scores (N,) in [0, 1] and group ids (N,) >= 0."""
        rules = self._fitted_rules("positive_probability")
        scores, groups = self._check_predict_inputs(scores, groups)
        unseen = groups >= rules.shape[0]
        if unseen.any():
            ids = np.unique(groups[unseen]).tolist()
            warnings.warn(
                WARN_UNSEEN_GROUPS.format(ids=ids, last=rules.shape[0] - 1), UserWarning, stacklevel=2
            )
        rule = rules[np.where(unseen, 0, groups)]  # (N, 5); rows of unseen ids are overwritten below
        t_hi, t_lo, p_hi, p_mid, p_lo = rule.T
        prob = np.where(scores >= t_hi, p_hi, np.where(scores >= t_lo, p_mid, p_lo))
        return np.where(unseen, (scores >= _PLAIN_THRESHOLD).astype(np.float64), prob)

    def predict(self, scores: ArrayLike, groups: ArrayLike, seed: int = 0) -> np.ndarray:
        """Randomized decisions (N,) int64 0/1, yhat ~ Bernoulli(positive_probability); fixed by `seed`."""
        self._fitted_rules("predict")
        prob = self.positive_probability(scores, groups)
        # One uniform per sample in input order, so a fixed seed gives fixed decisions for a fixed input.
        uniform = np.random.default_rng(seed).random(prob.shape[0])
        return (uniform < prob).astype(np.int64)

    def save(self, directory: str | os.PathLike[str]) -> str:
        """Write the fitted rules and fit statistics to directory/THRESHOLDS_FILE; returns the path."""
        rules = self._fitted_rules("save")
        state = {
            "format_version": FORMAT_VERSION,
            "objective": self.objective,
            "grid_size": self.grid_size,
            "group_names": self.group_names_,
            "target": self.target_,
            # repr-exact floats: a loaded object reproduces positive_probability bit for bit.
            "rules": [dict(zip(RULE_KEYS, map(float, row), strict=True)) for row in rules],
            "group_stats": self.group_stats_,
            "accuracy_before": self.accuracy_before_,
            "accuracy_after": self.accuracy_after_,
        }
        os.makedirs(directory, exist_ok=True)
        path = os.path.join(os.fspath(directory), THRESHOLDS_FILE)
        with open(path, "w", encoding="utf-8") as f:
            json.dump(state, f, indent=2, allow_nan=False)  # strict JSON: NaN stats are stored as null
        return path

    @classmethod
    def load(cls, directory: str | os.PathLike[str]) -> GroupThresholds:
        """Read a GroupThresholds written by `save` from directory/THRESHOLDS_FILE."""
        path = os.path.join(os.fspath(directory), THRESHOLDS_FILE)
        with open(path, encoding="utf-8") as f:
            state = json.load(f)
        try:
            if state["format_version"] != FORMAT_VERSION:
                raise ValueError(f"format_version {state['format_version']!r}, expected {FORMAT_VERSION}")
            obj = cls(state["objective"], state["grid_size"])
            rules = np.array([[float(r[k]) for k in RULE_KEYS] for r in state["rules"]], dtype=np.float64)
            names = [str(n) for n in state["group_names"]]
            if rules.ndim != 2 or rules.shape[0] != len(names) or rules.shape[0] < 2:
                raise ValueError(f"{rules.shape[0]} rules for {len(names)} group names")
            obj.rules_ = rules
            obj.group_names_ = names
            obj.target_ = {k: float(v) for k, v in state["target"].items()}
            obj.group_stats_ = list(state["group_stats"])
            obj.accuracy_before_ = state["accuracy_before"]
            obj.accuracy_after_ = state["accuracy_after"]
        except (AttributeError, KeyError, TypeError, ValueError) as e:
            raise ValueError(ERR_BAD_FILE.format(path=path, file=THRESHOLDS_FILE, problem=e)) from e
        return obj

    def summary(self) -> dict:
        """JSON-able description of the fit, rates in expectation on the fitting (validation) data.

        {"objective", "target": {common rate(s)}, "by_group": {name: {"rule": {t_hi, t_lo, p_hi, p_mid,
        p_lo}, "count", "base_rate", "selection_rate", "tpr", "fpr"}}, "accuracy_before" (plain score >= 0.5),
        "accuracy_after"}. A rate with a zero denominator (e.g. TPR without positives) is None.
        """
        rules = self._fitted_rules("summary")
        by_group = {
            name: {"rule": dict(zip(RULE_KEYS, map(float, row), strict=True)), **stats}
            for name, row, stats in zip(self.group_names_, rules, self.group_stats_, strict=True)
        }
        return {
            "objective": self.objective,
            "target": dict(self.target_),
            "by_group": by_group,
            "accuracy_before": self.accuracy_before_,
            "accuracy_after": self.accuracy_after_,
        }

    # internals -------------------------------------------------------------------------------------------

    def _fitted_rules(self, method: str) -> np.ndarray:
        if self.rules_ is None:
            raise RuntimeError(ERR_NOT_FITTED.format(method=method))
        return self.rules_

    def _check_fit_inputs(
        self, scores: ArrayLike, labels: ArrayLike, groups: ArrayLike
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Validated scores (N,) float64, labels (N,) int64, groups (N,) int64, N >= 1."""
        scores = _scores(scores)
        if scores.shape[0] == 0:
            raise ValueError(ERR_EMPTY)
        labels = as_binary("labels", labels, scores.shape[0])
        groups = as_ids("groups", groups, scores.shape[0])
        check_named(groups, int(groups.max()) + 1)  # ids >= 0; their names are checked by fit()
        return scores, labels, groups

    def _check_predict_inputs(self, scores: ArrayLike, groups: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
        scores = _scores(scores)
        groups = as_ids("groups", groups, scores.shape[0])
        if groups.size:
            check_named(groups, int(groups.max()) + 1)  # ids >= 0; unseen ids get the plain rule
        return scores, groups

    def _record_stats(self, scores: np.ndarray, labels: np.ndarray, groups: np.ndarray) -> None:
        """Per-group expected rates and overall accuracies on the fitting data, for summary()."""
        prob = self.positive_probability(scores, groups)
        self.group_stats_ = []
        for g in range(self.num_groups):
            p, y = prob[groups == g], labels[groups == g]
            self.group_stats_.append(
                {
                    "count": int(y.shape[0]),
                    "base_rate": float(y.mean()),
                    "selection_rate": float(p.mean()),
                    "tpr": _mean_or_none(p[y == 1]),
                    "fpr": _mean_or_none(p[y == 0]),
                }
            )
        self.accuracy_before_ = float(np.mean((scores >= _PLAIN_THRESHOLD) == labels))
        self.accuracy_after_ = float(np.mean(np.where(labels == 1, prob, 1.0 - prob)))


# fitting -----------------------------------------------------------------------------------------------


class _Path:
    """A group's deterministic rules j = 0..m, ordered by decreasing threshold.

    thresholds (m+1,): +inf (predict nothing), u_1 > ... > u_{m-1}, and 0 for the last rule (every score
    is >= 0, so it predicts all: on the fitting data the same as u_m, on fresh data it keeps its meaning).
    tp, fp (m+1,) int64: true / false positives of rule j, both non-decreasing, tp + fp strictly increasing.
    """

    def __init__(self, thresholds: np.ndarray, tp: np.ndarray, fp: np.ndarray) -> None:
        self.thresholds, self.tp, self.fp = thresholds, tp, fp
        self.pos, self.neg = int(tp[-1]), int(fp[-1])
        self.count = self.pos + self.neg


def _rule_path(scores: np.ndarray, labels: np.ndarray) -> _Path:
    """Rules of one group from its scores (n,) and labels (n,): the group's ROC points."""
    thresholds, tp, fp = roc_counts(scores, labels)
    thresholds[-1] = 0.0
    return _Path(thresholds, tp, fp)


def _upper_hull(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Indices of the upper convex hull of points sorted by (x, y) ascending, both int64 counts.

    Integer counts make the orientation test exact. Collinear points are kept, so a point on the hull is
    reached by mixing its nearest neighbours (closer thresholds, less randomness) rather than far vertices.
    """
    hull: list[int] = []
    for k in range(x.shape[0]):
        while len(hull) >= 2:
            o, a = hull[-2], hull[-1]
            cross = int(x[a] - x[o]) * int(y[k] - y[o]) - int(y[a] - y[o]) * int(x[k] - x[o])
            if cross <= 0:  # right turn or straight: a stays on the upper hull
                break
            hull.pop()
        hull.append(k)
    return np.array(hull, dtype=np.int64)


def _locate(path: np.ndarray, value: float) -> tuple[int, float]:
    """(k, q) with value = (1 - q) path[k] + q path[k + 1] for path (L,) strictly increasing, L >= 2."""
    k = int(np.clip(np.searchsorted(path, value, side="right") - 1, 0, path.shape[0] - 2))
    q = float(np.clip((value - path[k]) / (path[k + 1] - path[k]), 0.0, 1.0))
    return k, q


def _mixture_rule(
    path: _Path, j_a: int, j_b: int, q: float, lam: float = 1.0, rate: float = 0.0
) -> np.ndarray:
    """(5,) rule: with probability lam, rule j_a mixed with rule j_b >= j_a (weight q on j_b); with
    probability 1 - lam, predict 1 at `rate` regardless of the score."""
    t_hi, t_lo = float(path.thresholds[j_a]), float(path.thresholds[j_b])
    coin = (1.0 - lam) * rate
    p_hi, p_mid, p_lo = lam + coin, lam * q + coin, coin
    if np.isinf(t_hi):  # "predict nothing" as the upper rule: the s >= t_hi region is empty
        t_hi, p_hi = t_lo, p_mid
    if p_mid == p_lo:  # no mixing (q = 0 without a coin): a plain threshold, shown as (t, t, ...)
        t_lo, p_mid = t_hi, p_hi
    return np.array([t_hi, t_lo, p_hi, p_mid, p_lo], dtype=np.float64)


def _fit_demographic_parity(paths: list[_Path], grid: np.ndarray) -> tuple[np.ndarray, dict[str, float]]:
    """Common selection rate r on the grid; per group the adjacent rules of its selection-rate path."""
    selection = [(p.tp + p.fp) / p.count for p in paths]
    correct = sum(
        np.interp(grid, sel, p.tp) + p.neg - np.interp(grid, sel, p.fp)
        for p, sel in zip(paths, selection, strict=True)
    )
    rate = float(grid[int(np.argmax(correct))])
    rules = []
    for p, sel in zip(paths, selection, strict=True):
        k, q = _locate(sel, rate)
        rules.append(_mixture_rule(p, k, k + 1, q))
    return np.stack(rules), {"selection_rate": rate}


def _fit_equal_opportunity(paths: list[_Path], grid: np.ndarray) -> tuple[np.ndarray, dict[str, float]]:
    """Common TPR t on the grid; per group the min-FPR point at TPR t of its ROC hull."""
    vertices = []
    for p in paths:
        hull = _upper_hull(p.fp, p.tp)
        # The hull is concave and non-decreasing, so equal TPRs only occur on its top (TPR = 1) edge; the
        # first vertex of that edge has the least FPR.
        keep = np.concatenate([[True], np.diff(p.tp[hull]) > 0])
        vertices.append(hull[keep])
    tprs = [p.tp[v] / p.pos for p, v in zip(paths, vertices, strict=True)]
    correct = sum(
        grid * p.pos + p.neg - np.interp(grid, tpr, p.fp[v])
        for p, v, tpr in zip(paths, vertices, tprs, strict=True)
    )
    tpr_target = float(grid[int(np.argmax(correct))])
    rules = []
    for p, v, tpr in zip(paths, vertices, tprs, strict=True):
        k, q = _locate(tpr, tpr_target)
        rules.append(_mixture_rule(p, int(v[k]), int(v[k + 1]), q))
    return np.stack(rules), {"tpr": tpr_target}


def _fit_equalized_odds(paths: list[_Path], grid: np.ndarray) -> tuple[np.ndarray, dict[str, float]]:
    """Common (FPR x, TPR y) on the grid under every group's ROC hull; per group hull point + coin."""
    vertices = []
    for p in paths:
        hull = _upper_hull(p.fp, p.tp)
        # Equal FPRs only occur on the hull's left (FPR = 0) edge; as a function of FPR take its top vertex.
        keep = np.concatenate([np.diff(p.fp[hull]) > 0, [True]])
        vertices.append(hull[keep])
    fprs = [p.fp[v] / p.neg for p, v in zip(paths, vertices, strict=True)]
    hull_tprs = np.stack(
        [np.interp(grid, fpr, p.tp[v] / p.pos) for p, v, fpr in zip(paths, vertices, fprs, strict=True)]
    )  # (G, grid)
    envelope = hull_tprs.min(0)
    pos, neg = sum(p.pos for p in paths), sum(p.neg for p in paths)
    best = int(np.argmax(envelope * pos + (1.0 - grid) * neg))
    x, y = float(grid[best]), float(envelope[best])
    rules = []
    for p, v, fpr, hull_tpr in zip(paths, vertices, fprs, hull_tprs[:, best], strict=True):
        k, q = _locate(fpr, x)
        lift = float(hull_tpr) - x  # >= 0: a ROC hull never lies below the diagonal
        lam = 1.0 if lift <= 0.0 else min(1.0, max(0.0, (y - x) / lift))
        rules.append(_mixture_rule(p, int(v[k]), int(v[k + 1]), q, lam=lam, rate=x))
    return np.stack(rules), {"fpr": x, "tpr": y}


# helpers -----------------------------------------------------------------------------------------------


def _scores(values: ArrayLike) -> np.ndarray:
    """(N,) positive-class probabilities -> float64."""
    scores = as_probabilities("scores", values)
    check_1d("scores", scores)
    return scores


def _mean_or_none(values: np.ndarray) -> float | None:
    # None rather than NaN keeps summary() and the saved file strict JSON.
    return float(values.mean()) if values.size else None
