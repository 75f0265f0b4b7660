"""Plots of per-group model behaviour: rates with intervals, ROC curves, score histograms, calibration.

``plot_group_rates`` and ``plot_comparison`` draw ``GroupStats.compute`` results (one or two models);
``plot_roc``, ``plot_score_distributions`` and ``plot_calibration`` draw raw scores, one group at a time.
Every function writes one PNG and returns its path. The numbers behind the curves come from the numpy
helpers ``roc_curve``, ``auc`` and ``calibration_bins`` (no scikit-learn at run time).

Array inputs: ``scores`` (N,) the predicted probability of class 1, ``labels`` (N,) 0/1, ``groups`` (N,)
integer ids indexing ``group_names``. Groups without samples are left out and named in the figure.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from fairtune.audit import wilson_interval

__all__ = [
    "HEADLINE_GAPS",
    "auc",
    "calibration_bins",
    "plot_calibration",
    "plot_comparison",
    "plot_group_rates",
    "plot_roc",
    "plot_score_distributions",
    "roc_curve",
]

ERR_NOT_1D = "{name} must have shape (N,), got {shape}"
ERR_NOT_NUMERIC = "{name} must be numeric, got dtype {dtype}"
ERR_EMPTY = "{name} is empty: nothing to plot"
ERR_LENGTH = "{name} has {got} entries, scores has {expected} (one per sample)"
ERR_SCORE_RANGE = "scores must be probabilities in [0, 1]; got min {low}, max {high} and {nans} NaN"
ERR_NOT_BINARY = "labels must be 0/1, got values {values}"
ERR_NOT_INTEGER = "{name} must hold integer ids, got {detail}"
ERR_GROUP_RANGE = (
    "group ids must lie in [0, {num_groups}) (one per group name), got values in [{low}, {high}]"
)
ERR_NO_GROUP_NAMES = "group_names is empty: name every group id"
ERR_DUPLICATE_NAME = "group name {name!r} is given twice in group_names"
ERR_ONE_CLASS = "a ROC curve needs positive and negative labels, got {positives} positive(s) of {total}"
ERR_AUC_INPUT = "fpr and tpr must be 1-D of equal length >= 2, got shapes {fpr_shape} and {tpr_shape}"
ERR_AUC_ORDER = "fpr must be monotonic (as returned by roc_curve)"
ERR_BINS = "bins must be >= 1, got {bins}"
ERR_PROB_SHAPE = "scores must have shape (N,) or (N, C) with C >= 2, got {shape}"
ERR_CLASS_RANGE = "labels must lie in [0, {num_classes}) for (N, {num_classes}) scores, got [{low}, {high}]"
ERR_CONFIDENCE = "confidence must lie in (0, 1), got {confidence}"
ERR_RESULT = "{name} must be a GroupStats.compute() result (a dict with {keys}), got {got}"
ERR_NO_GROUPS = "{name} has no groups (by_group is empty): nothing to plot"
ERR_NAMES = "names must be two labels (model A, model B), got {names!r}"
ERR_UNKNOWN_GAP = "gap {gap!r} is in neither result; available: {available}"
ERR_NO_GAPS = "no gap to compare: pass gaps= naming keys of the results' 'gaps'"

# Headline gaps for plot_comparison, in display order; binary-only ones are absent for C > 2.
HEADLINE_GAPS = (
    "demographic_parity_difference",
    "equalized_odds_difference",
    "equal_opportunity_difference",
    "accuracy_difference",
    "worst_group_accuracy",
)
GAP_LABELS = {
    "demographic_parity_difference": "DP difference",
    "equalized_odds_difference": "EO difference",
    "equal_opportunity_difference": "equal opportunity difference",
    "accuracy_difference": "accuracy difference",
    "worst_group_accuracy": "worst-group accuracy (higher is better)",
    "tpr_gap_rms": "TPR-gap RMS",
}
RATE_LABELS = {"selection_rate": "selection rate", "tpr": "TPR", "fpr": "FPR", "accuracy": "accuracy"}
BINARY_RATES = ("selection_rate", "tpr", "fpr", "accuracy")
# GroupStats predicts by argmax, so a tie at 0.5 goes to class 0: the operating point uses score > 0.5.
THRESHOLD = 0.5
PNG_DPI = 110
COLORS = ("#4C72B0", "#DD8452")  # model A / model B, and the single colour of one-model plots


# ----- numpy helpers -----------------------------------------------------------------------------------
def roc_curve(scores: Any, labels: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ROC curve of binary ``labels`` (N,) ranked by ``scores`` (N,).

    Returns fpr, tpr, thresholds, each (K + 1,) for K distinct scores: point k counts ``score >=
    thresholds[k]`` as positive; the first point is (0, 0) at threshold +inf. Same points as scikit-learn's
    ``roc_curve(..., drop_intermediate=False)``.
    """
    s, y = _check_scores_labels(scores, labels)
    positives, total = int(y.sum()), len(y)
    if positives in (0, total):
        raise ValueError(ERR_ONE_CLASS.format(positives=positives, total=total))
    order = np.argsort(-s, kind="mergesort")
    s, y = s[order], y[order]
    # One point per distinct score: the last index of each run of tied scores.
    last = np.r_[np.flatnonzero(np.diff(s)), total - 1]
    tps = np.cumsum(y)[last]
    fps = last + 1 - tps
    fpr = np.r_[0.0, fps / (total - positives)]
    tpr = np.r_[0.0, tps / positives]
    return fpr, tpr, np.r_[np.inf, s[last]]


def auc(fpr: Any, tpr: Any) -> float:
    """Area under a curve (K,) x (K,) by the trapezoidal rule; ``fpr`` must be monotonic."""
    x, y = np.asarray(fpr, dtype=float), np.asarray(tpr, dtype=float)
    if x.ndim != 1 or x.shape != y.shape or len(x) < 2:
        raise ValueError(ERR_AUC_INPUT.format(fpr_shape=x.shape, tpr_shape=y.shape))
    dx = np.diff(x)
    if not ((dx >= 0).all() or (dx <= 0).all()):
        raise ValueError(ERR_AUC_ORDER)
    return float(abs(np.sum(dx * (y[1:] + y[:-1]) / 2)))


def calibration_bins(scores: Any, labels: Any, bins: int = 10) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Reliability-diagram bins of ``scores`` (N,) in [0, 1] against binary ``labels`` (N,).

    Equal-width bins (k/B, (k+1)/B], right-closed as in ``GroupStats``' ECE; a score of 0 falls into the
    first. Returns mean_pred, frac_pos, counts, each (B,): the mean score, the share of label 1 and the
    number of samples per bin; mean_pred and frac_pos are NaN in empty bins.
    """
    if bins < 1:
        raise ValueError(ERR_BINS.format(bins=bins))
    s, y = _check_scores_labels(scores, labels)
    # searchsorted against explicit edges: ceil(s * B) would put s = 0.3 into (0.3, 0.4] by rounding.
    edges = np.linspace(0.0, 1.0, bins + 1)
    index = np.clip(np.searchsorted(edges, s, side="left") - 1, 0, bins - 1)
    counts = np.bincount(index, minlength=bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_pred = np.bincount(index, weights=s, minlength=bins) / counts
        frac_pos = np.bincount(index, weights=y, minlength=bins) / counts
    return mean_pred, frac_pos, counts


def _ece(mean_pred: np.ndarray, frac_pos: np.ndarray, counts: np.ndarray) -> float:
    """Count-weighted mean |mean_pred - frac_pos| over non-empty bins (B,)."""
    filled = counts > 0
    gaps = np.abs(mean_pred[filled] - frac_pos[filled])
    return float(np.sum(counts[filled] * gaps) / counts.sum())


# ----- input checks ------------------------------------------------------------------------------------
def _as_array(name: str, values: Any, ndim: int | None = 1) -> np.ndarray:
    if hasattr(values, "detach"):  # torch tensors, possibly on an accelerator, without importing torch
        values = values.detach().cpu().numpy()
    array = np.asarray(values)
    if ndim is not None and array.ndim != ndim:
        raise ValueError(ERR_NOT_1D.format(name=name, shape=array.shape))
    if array.dtype.kind not in "biuf":
        raise ValueError(ERR_NOT_NUMERIC.format(name=name, dtype=array.dtype))
    if array.shape[0] == 0:
        raise ValueError(ERR_EMPTY.format(name=name))
    return array


def _check_length(name: str, array: np.ndarray, expected: int) -> None:
    if array.shape[0] != expected:
        raise ValueError(ERR_LENGTH.format(name=name, got=array.shape[0], expected=expected))


def _check_probabilities(s: np.ndarray) -> np.ndarray:
    s = s.astype(float)
    if not np.all((s >= 0) & (s <= 1)):  # also false for NaN
        nans = int(np.isnan(s).sum())
        low, high = (np.nanmin(s), np.nanmax(s)) if nans < s.size else (math.nan, math.nan)
        raise ValueError(ERR_SCORE_RANGE.format(low=low, high=high, nans=nans))
    return s


def _integer_ids(name: str, array: np.ndarray) -> np.ndarray:
    # Float ids such as 1.0 (e.g. from a pandas column with NaN dropped) are accepted when integral.
    if array.dtype.kind == "f" and not np.all(np.mod(array, 1) == 0):
        raise ValueError(ERR_NOT_INTEGER.format(name=name, detail=f"non-integral {array.dtype} values"))
    return array.astype(np.int64)


def _check_scores_labels(scores: Any, labels: Any) -> tuple[np.ndarray, np.ndarray]:
    """(N,) probabilities of class 1 and (N,) 0/1 labels -> float scores, int labels."""
    s = _check_probabilities(_as_array("scores", scores))
    y = _as_array("labels", labels)
    _check_length("labels", y, len(s))
    values = np.unique(y)
    if not np.isin(values, [0, 1]).all():
        raise ValueError(ERR_NOT_BINARY.format(values=values[:10].tolist()))
    return s, y.astype(np.int64)


def _check_groups(groups: Any, group_names: Sequence[str], num_samples: int) -> tuple[np.ndarray, list[str]]:
    names = [str(n) for n in group_names]
    if not names:
        raise ValueError(ERR_NO_GROUP_NAMES)
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise ValueError(ERR_DUPLICATE_NAME.format(name=name))
        seen.add(name)
    g = _integer_ids("groups", _as_array("groups", groups))
    _check_length("groups", g, num_samples)
    low, high = int(g.min()), int(g.max())
    if low < 0 or high >= len(names):
        raise ValueError(ERR_GROUP_RANGE.format(num_groups=len(names), low=low, high=high))
    return g, names


def _check_inputs(
    scores: Any, labels: Any, groups: Any, group_names: Sequence[str]
) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str]]:
    s, y = _check_scores_labels(scores, labels)
    g, names = _check_groups(groups, group_names, len(s))
    return s, y, g, names


def _check_result(name: str, result: Any, keys: tuple[str, ...]) -> None:
    if not isinstance(result, dict) or any(k not in result for k in keys):
        got = sorted(result) if isinstance(result, dict) else type(result).__name__
        raise ValueError(ERR_RESULT.format(name=name, keys=", ".join(repr(k) for k in keys), got=got))


# ----- plotting helpers --------------------------------------------------------------------------------
def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")  # files only; no display needed
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: str) -> str:
    plt = _pyplot()
    directory = os.path.dirname(path)
    if directory:
        os.makedirs(directory, exist_ok=True)
    try:
        fig.savefig(path, dpi=PNG_DPI)
    finally:
        plt.close(fig)  # figures outlive their function otherwise and pile up over a sweep
    return path


def _value(stats: dict[str, Any], key: str) -> float:
    """A stat as float, NaN when missing or None (JSON-loaded results may hold null)."""
    value = stats.get(key)
    return math.nan if value is None else float(value)


def _interval(result: dict[str, Any], gap: str) -> tuple[float, float]:
    """A gap's bootstrap interval as floats; NaN when absent (no bootstrap) or null in loaded JSON."""
    low, high = result.get("intervals", {}).get(gap) or (None, None)
    return (math.nan if low is None else float(low), math.nan if high is None else float(high))


def _fmt(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{value:.3f}"


def _draw_intervals(ax: Any, ys: Sequence[float], lows: Sequence[float], highs: Sequence[float]) -> None:
    """Horizontal interval lines [low, high] with caps at ys; NaN intervals are skipped."""
    # Drawn from the ends, not as errors around the point: a bootstrap percentile interval need not
    # contain the point estimate.
    keep = [(y, lo, hi) for y, lo, hi in zip(ys, lows, highs, strict=True) if not math.isnan(lo + hi)]
    if keep:
        y, lo, hi = (list(v) for v in zip(*keep, strict=True))
        ax.hlines(y, lo, hi, color="black", linewidth=1.2, zorder=3)
        ax.scatter([*lo, *hi], [*y, *y], marker="|", s=60, color="black", zorder=3)


def _rate_interval(stats: dict[str, Any], stat: str, rate: float, confidence: float) -> tuple[float, float]:
    """Wilson interval of a group's rate from the counts it implies; NaN when the denominator is unknown."""
    count, base = _value(stats, "count"), _value(stats, "base_rate")
    positives = count * base
    totals = {
        "selection_rate": count,
        "accuracy": count,
        "tpr": positives,
        "fnr": positives,
        "fpr": count - positives,
        "precision": count * _value(stats, "selection_rate"),
    }
    # tpr_<c> of C > 2 needs the per-class counts, which the result does not carry.
    total = totals.get(stat, math.nan)
    if math.isnan(total) or math.isnan(rate) or round(total) == 0:
        return (math.nan, math.nan)
    n = round(total)
    return wilson_interval(round(rate * n), n, confidence)


def _grid(plt: Any, panels: int, max_cols: int, width: float, height: float) -> tuple[Any, list[Any]]:
    cols = min(max_cols, panels)
    rows = math.ceil(panels / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(width * cols, height * rows), squeeze=False)
    flat = list(axes.ravel())
    for ax in flat[panels:]:
        ax.axis("off")
    return fig, flat[:panels]


# ----- result plots ------------------------------------------------------------------------------------
def plot_group_rates(result: dict[str, Any], path: str, title: str = "", confidence: float = 0.95) -> str:
    """Per-group rates of a ``GroupStats.compute`` result as dot plots with Wilson intervals.

    Binary: one panel each for selection rate, TPR, FPR and accuracy; C > 2: accuracy and each tpr_<c>
    (the latter without interval). A dashed line marks the overall rate; a NaN or missing rate leaves its
    group listed without a dot. The title carries the headline gaps. Returns ``path``.
    """
    _check_result("result", result, ("by_group", "overall"))
    if not 0.0 < confidence < 1.0:
        raise ValueError(ERR_CONFIDENCE.format(confidence=confidence))
    by_group, overall = result["by_group"], result["overall"]
    if not by_group:
        raise ValueError(ERR_NO_GROUPS.format(name="result"))
    num_classes = result.get("num_classes", 2 if "selection_rate" in overall else 3)
    stats = BINARY_RATES if num_classes == 2 else ("accuracy", *(f"tpr_{c}" for c in range(num_classes)))
    groups = list(by_group)
    level = round(confidence * 100)

    plt = _pyplot()
    height = max(2.6, 0.35 * len(groups) + 1.6)
    fig, axes = _grid(plt, len(stats), 4, 3.6, height)
    ys = list(range(len(groups)))
    for ax, stat in zip(axes, stats, strict=True):
        rates = [_value(by_group[g], stat) for g in groups]
        intervals = [
            _rate_interval(by_group[g], stat, r, confidence) for g, r in zip(groups, rates, strict=True)
        ]
        _draw_intervals(ax, ys, [lo for lo, _ in intervals], [hi for _, hi in intervals])
        shown = [(y, r) for y, r in zip(ys, rates, strict=True) if not math.isnan(r)]
        ax.scatter([r for _, r in shown], [y for y, _ in shown], color=COLORS[0], zorder=4)
        for y, r in zip(ys, rates, strict=True):
            if math.isnan(r):
                ax.text(0.5, y, "undefined", ha="center", va="center", fontsize="small", color="gray")
        total = _value(overall, stat)
        if not math.isnan(total):
            ax.axvline(total, color="gray", linestyle="--")
        ax.set_xlim(-0.02, 1.02)
        ax.set_yticks(ys, groups)
        # Reversed limits put the first group on top, as in the result dict; the margin keeps end dots whole.
        ax.set_ylim(len(groups) - 0.5, -0.5)
        # The overall value goes into the title: a legend would cover dots near 0 or 1.
        name = RATE_LABELS.get(stat, stat.replace("tpr_", "TPR class "))
        ax.set_title(f"{name} (overall {_fmt(total)}, dashed)")
        ax.set_xlabel(f"with {level}% Wilson interval" if num_classes == 2 or stat == "accuracy" else "")
    headline = (
        ("demographic_parity_difference", "equalized_odds_difference")
        if num_classes == 2
        else ("accuracy_difference", "tpr_gap_rms")
    )
    fig.suptitle(_join_title(title, _gap_summary(result, headline)))
    fig.tight_layout()
    return _save(fig, path)


def _gap_summary(result: dict[str, Any], gaps: Sequence[str]) -> str:
    parts = []
    for gap in gaps:
        value = _value(result.get("gaps", {}), gap)
        text = f"{GAP_LABELS.get(gap, gap)} {_fmt(value)}"
        low, high = _interval(result, gap)
        if not math.isnan(value + low + high):
            text += f" [{low:.3f}, {high:.3f}]"
        parts.append(text)
    return " · ".join(parts)


def _join_title(*parts: str) -> str:
    return "\n".join(p for p in parts if p)


def plot_comparison(
    results_a: dict[str, Any],
    results_b: dict[str, Any],
    path: str,
    names: Sequence[str] = ("before", "after"),
    gaps: Sequence[str] | None = None,
) -> str:
    """Two ``GroupStats.compute`` results side by side: headline gaps and per-group rates.

    Left: grouped horizontal bars per gap (default ``HEADLINE_GAPS`` present in either result) with the
    bootstrap intervals of ``intervals`` where present. Right: per-group selection rate (accuracy when a
    result is multi-class), with each model's overall rate dashed. Returns ``path``.
    """
    _check_result("results_a", results_a, ("by_group", "gaps"))
    _check_result("results_b", results_b, ("by_group", "gaps"))
    if isinstance(names, str) or len(names) != 2:
        raise ValueError(ERR_NAMES.format(names=names))
    results = (results_a, results_b)
    available = list(dict.fromkeys([*results_a["gaps"], *results_b["gaps"]]))
    if gaps is None:
        gaps = [g for g in HEADLINE_GAPS if g in available]
    for gap in gaps:
        if gap not in available:
            raise ValueError(ERR_UNKNOWN_GAP.format(gap=gap, available=", ".join(available)))
    if not gaps:
        raise ValueError(ERR_NO_GAPS)
    both_binary = all("selection_rate" in r.get("overall", {}) for r in results)
    stat = "selection_rate" if both_binary else "accuracy"
    groups = list(dict.fromkeys([*results_a["by_group"], *results_b["by_group"]]))

    plt = _pyplot()
    height = max(3.0, 0.45 * max(len(gaps), len(groups)) + 1.6)
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, height))
    bar = 0.38
    for k, (result, name) in enumerate(zip(results, names, strict=True)):
        ys = [i + (k - 0.5) * bar for i in range(len(gaps))]
        values = [_value(result["gaps"], g) for g in gaps]
        _bars(left, ys, values, bar, COLORS[k], str(name), [_interval(result, g) for g in gaps])

        ys = [i + (k - 0.5) * bar for i in range(len(groups))]
        values = [_value(result["by_group"].get(g, {}), stat) for g in groups]
        _bars(right, ys, values, bar, COLORS[k], str(name))
        total = _value(result.get("overall", {}), stat)
        if not math.isnan(total):
            right.axvline(total, color=COLORS[k], linestyle="--", linewidth=1, label=f"{name} overall")
    left.set_yticks(range(len(gaps)), [GAP_LABELS.get(g, g) for g in gaps])
    left.set_title(
        "fairness gaps" + (" (bootstrap intervals)" if any("intervals" in r for r in results) else "")
    )
    right.set_yticks(range(len(groups)), groups)
    right.set_title(f"{RATE_LABELS[stat]} by group")
    for ax in (left, right):
        ax.invert_yaxis()  # first gap / group on top
        ax.set_xlim(0, 1.1)  # room for the value labels; all these gaps and rates lie in [0, 1]
        ax.legend(loc="best", fontsize="small")
    fig.suptitle(f"{names[0]} vs {names[1]}")
    fig.tight_layout()
    return _save(fig, path)


def _bars(
    ax: Any,
    ys: list[float],
    values: list[float],
    height: float,
    color: str,
    label: str,
    intervals: list[tuple[float, float]] | None = None,
) -> None:
    """Horizontal bars, optionally with intervals, labelled with their value ('n/a' and no bar for NaN)."""
    ax.barh(ys, [0.0 if math.isnan(v) else v for v in values], height=height, color=color, label=label)
    intervals = intervals or [(math.nan, math.nan)] * len(values)
    _draw_intervals(ax, ys, [lo for lo, _ in intervals], [hi for _, hi in intervals])
    for y, v, (_, high) in zip(ys, values, intervals, strict=True):
        # Right of the interval's end too, so the label does not sit on the interval line.
        x = 0.0 if math.isnan(v) else max(v, 0.0 if math.isnan(high) else high)
        ax.text(x + 0.01, y, _fmt(v), va="center", fontsize="x-small")


# ----- score plots -------------------------------------------------------------------------------------
def _group_note(names: list[str], g: np.ndarray) -> tuple[list[int], str]:
    """Ids of groups with samples, and a note naming the others."""
    present = np.bincount(g, minlength=len(names)) > 0
    absent = [names[i] for i in range(len(names)) if not present[i]]
    return [i for i in range(len(names)) if present[i]], (
        "no samples: " + ", ".join(absent)
    ) if absent else ""


def _roc_by_group(
    s: np.ndarray, y: np.ndarray, g: np.ndarray, names: list[str]
) -> dict[str, tuple[np.ndarray, np.ndarray, float] | str]:
    """Per group name: (fpr, tpr, auc), or why the group has no ROC curve."""
    curves: dict[str, tuple[np.ndarray, np.ndarray, float] | str] = {}
    for i, name in enumerate(names):
        member = g == i
        positives, total = int(y[member].sum()), int(member.sum())
        if total == 0:
            curves[name] = "no samples"
        elif positives == 0:
            curves[name] = "no positives"
        elif positives == total:
            curves[name] = "no negatives"
        else:
            fpr, tpr, _ = roc_curve(s[member], y[member])
            curves[name] = (fpr, tpr, auc(fpr, tpr))
    return curves


def plot_roc(
    scores: Any, labels: Any, groups: Any, group_names: Sequence[str], path: str, title: str = ""
) -> str:
    """One ROC curve per group (AUC in the legend) with its operating point at score > 0.5 marked.

    scores (N,) P(y=1); labels (N,) 0/1; groups (N,) ids into group_names. Groups without positives or
    negatives have no curve and are named in the legend. Returns ``path``.
    """
    s, y, g, names = _check_inputs(scores, labels, groups, group_names)
    plt = _pyplot()
    cmap = plt.get_cmap("tab10")
    fig, ax = plt.subplots(figsize=(6.2, 5.6))
    ax.plot([0, 1], [0, 1], color="lightgray", linestyle=":", label="chance")
    for i, (name, curve) in enumerate(_roc_by_group(s, y, g, names).items()):
        if isinstance(curve, str):
            ax.plot([], [], " ", label=f"{name}: left out ({curve})")
            continue
        fpr, tpr, area = curve
        member = g == i
        ax.plot(fpr, tpr, color=cmap(i % 10), label=f"{name} (n={int(member.sum())}, AUC {area:.3f})")
        chosen = s[member] > THRESHOLD
        point = (chosen[y[member] == 0].mean(), chosen[y[member] == 1].mean())
        ax.scatter(*point, color=cmap(i % 10), edgecolor="black", s=50, zorder=3)
    ax.scatter([], [], color="white", edgecolor="black", s=50, label=f"operating point (score > {THRESHOLD})")
    ax.set_xlim(-0.01, 1.01)
    ax.set_ylim(-0.01, 1.01)
    ax.set_aspect("equal")
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.legend(loc="lower right", fontsize="small")
    ax.set_title(_join_title(title, "ROC by group"))
    fig.tight_layout()
    return _save(fig, path)


def plot_score_distributions(
    scores: Any, labels: Any, groups: Any, group_names: Sequence[str], path: str, title: str = ""
) -> str:
    """Per group, density histograms of the class-1 score split by true label (one panel per group).

    scores (N,) P(y=1); labels (N,) 0/1; groups (N,) ids into group_names. Returns ``path``.
    """
    s, y, g, names = _check_inputs(scores, labels, groups, group_names)
    present, note = _group_note(names, g)
    plt = _pyplot()
    fig, axes = _grid(plt, len(present), 3, 4.0, 3.0)
    edges = np.linspace(0.0, 1.0, 21)  # shared bins so panels compare at a glance
    for ax, i in zip(axes, present, strict=True):
        member = g == i
        for label, color in zip((0, 1), COLORS, strict=True):
            values = s[member & (y == label)]
            if len(values):
                ax.hist(
                    values,
                    bins=edges,
                    density=True,
                    alpha=0.55,
                    color=color,
                    label=f"y={label} (n={len(values)})",
                )
            else:
                ax.plot([], [], " ", label=f"y={label}: none")
        ax.axvline(THRESHOLD, color="gray", linestyle=":")
        ax.set_xlim(0, 1)
        ax.set_title(f"{names[i]} (n={int(member.sum())})")
        ax.set_xlabel("score P(y=1)")
        ax.legend(loc="best", fontsize="x-small")
    axes[0].set_ylabel("density")
    fig.suptitle(_join_title(title, "score distributions by group and true label", note))
    fig.tight_layout()
    return _save(fig, path)


def plot_calibration(
    scores: Any,
    labels: Any,
    groups: Any,
    group_names: Sequence[str],
    path: str,
    bins: int = 10,
    title: str = "",
) -> str:
    """Reliability diagram per group: mean predicted vs observed frequency per non-empty bin.

    scores (N,) P(y=1) with labels (N,) 0/1, or (N, C) class probabilities with labels (N,) in [0, C)
    (then top-label: confidence of the argmax class vs its accuracy); groups (N,) ids into group_names.
    Marker area grows with the bin's count; the legend gives each group's ECE on these ``bins`` equal-width
    bins (binary: of the class-1 score, unlike ``GroupStats``' top-label ECE). Returns ``path``.
    """
    if bins < 1:
        raise ValueError(ERR_BINS.format(bins=bins))
    s, y, binary = _reliability_inputs(scores, labels)
    g, names = _check_groups(groups, group_names, len(s))
    plt = _pyplot()
    cmap = plt.get_cmap("tab10")
    per_group = {i: calibration_bins(s[g == i], y[g == i], bins) for i in range(len(names)) if (g == i).any()}
    largest = max(int(counts.max()) for _, _, counts in per_group.values())
    fig, ax = plt.subplots(figsize=(6.2, 5.6))
    ax.plot([0, 1], [0, 1], color="lightgray", linestyle=":", label="perfect calibration")
    for i, name in enumerate(names):
        if i not in per_group:
            ax.plot([], [], " ", label=f"{name}: no samples")
            continue
        mean_pred, frac_pos, counts = per_group[i]
        filled = counts > 0
        color = cmap(i % 10)
        ece = _ece(mean_pred, frac_pos, counts)
        ax.plot(
            mean_pred[filled],
            frac_pos[filled],
            color=color,
            label=f"{name} (n={counts.sum()}, ECE {ece:.3f})",
        )
        ax.scatter(
            mean_pred[filled], frac_pos[filled], s=10 + 190 * counts[filled] / largest, color=color, alpha=0.7
        )
    ax.set_xlim(-0.01, 1.01)
    ax.set_ylim(-0.01, 1.01)
    ax.set_aspect("equal")
    ax.set_xlabel("mean predicted P(y=1)" if binary else "mean confidence (top label)")
    ax.set_ylabel("observed frequency of y=1" if binary else "accuracy")
    ax.legend(loc="upper left", fontsize="small")
    ax.set_title(_join_title(title, f"calibration by group ({bins} bins, marker area ~ count)"))
    fig.tight_layout()
    return _save(fig, path)


def _reliability_inputs(scores: Any, labels: Any) -> tuple[np.ndarray, np.ndarray, bool]:
    """(N,) class-1 scores pass through; (N, C) probabilities become top-label confidence and correctness."""
    probs = _as_array("scores", scores, ndim=None)
    if probs.ndim == 1:
        s, y = _check_scores_labels(probs, labels)
        return s, y, True
    if probs.ndim != 2 or probs.shape[1] < 2:
        raise ValueError(ERR_PROB_SHAPE.format(shape=probs.shape))
    probs = _check_probabilities(probs)
    y = _integer_ids("labels", _as_array("labels", labels))
    _check_length("labels", y, probs.shape[0])
    num_classes = probs.shape[1]
    if y.min() < 0 or y.max() >= num_classes:
        raise ValueError(ERR_CLASS_RANGE.format(num_classes=num_classes, low=y.min(), high=y.max()))
    return probs.max(1), (probs.argmax(1) == y).astype(np.int64), False
