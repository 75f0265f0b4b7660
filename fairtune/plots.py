"""Plots of per-group model behaviour and of a data audit; every PNG fairtune writes comes from here.

``plot_group_rates`` and ``plot_comparison`` draw `GroupResult`s (one or two models); ``plot_roc``,
``plot_score_distributions`` and ``plot_calibration`` draw raw scores, one group at a time; ``plot_audit``
draws a data audit (``fairtune.audit``). Every function writes PNGs and returns their paths. The numbers
behind the curves come from ``fairtune.curves`` (ROC points, calibration bins, Wilson intervals, one number
format), the same code the metrics and the post-processing use.

Array inputs: ``scores`` (N,) the predicted probability of class 1, ``labels`` (N,) 0/1, ``groups`` (N,)
integer ids indexing ``group_names``. Groups without samples are left out and named in the figure.

Also: ``plot_proxies`` (a data audit's proxies), ``plot_top_attributions``, ``plot_group_differences`` and
``plot_token_heatmap`` (``fairtune.explain``), ``plot_gap_trend`` and ``plot_score_histograms``
(``fairtune.monitor``).

Length: about 900 lines, one file on purpose: it is the only module that imports matplotlib, and its
figure helpers (grid, intervals, bars, saving) serve every plot.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from fairtune.curves import (
    ERR_BINS,
    add_calibration,
    as_binary,
    as_ids,
    as_probabilities,
    auc,
    check_1d,
    check_named,
    ece_from_bins,
    fmt,
    roc_curve,
    unique_names,
    wilson_interval,
)
from fairtune.groups import INTERSECTION_SEPARATOR
from fairtune.metrics import GroupResult
from fairtune.report import HEADLINE_GAPS as REPORT_GAPS

__all__ = [
    "HEADLINE_GAPS",
    "plot_audit",
    "plot_calibration",
    "plot_comparison",
    "plot_gap_trend",
    "plot_group_differences",
    "plot_group_rates",
    "plot_proxies",
    "plot_roc",
    "plot_score_distributions",
    "plot_score_histograms",
    "plot_token_heatmap",
    "plot_top_attributions",
]

ERR_EMPTY = "{name} is empty: nothing to plot"
ERR_PROB_SHAPE = "scores must have shape (N,) or (N, C) with C >= 2, got {shape}"
ERR_CLASS_RANGE = "labels must lie in [0, {num_classes}) for (N, {num_classes}) scores, got [{low}, {high}]"
ERR_CONFIDENCE = "confidence must lie in (0, 1), got {confidence}"
ERR_RESULT = "{name} must be a GroupResult (GroupStats.compute()), got {got}"
ERR_NO_GROUPS = "{name} has no groups (by_group is empty): nothing to plot"
ERR_NAMES = "names must be two labels (model A, model B), got {names!r}"
ERR_UNKNOWN_GAP = "gap {gap!r} is in neither result; available: {available}"
ERR_NO_GAPS = "no gap to compare: pass gaps= naming keys of the results' gaps"

# Headline gaps for plot_comparison, in display order; binary-only ones are absent for C > 2.
HEADLINE_GAPS = (
    "demographic_parity_difference",
    "equalized_odds_difference",
    "equal_opportunity_difference",
    "accuracy_difference",
    "worst_group_accuracy",
    "tpr_gap_rms",
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


# ----- input checks ------------------------------------------------------------------------------------
def _scores(values: Any, ndim: int | None = 1) -> np.ndarray:
    scores = as_probabilities("scores", values)
    if ndim == 1:
        check_1d("scores", scores)
    if scores.shape[0] == 0:
        raise ValueError(ERR_EMPTY.format(name="scores"))
    return scores


def _check_groups(groups: Any, group_names: Sequence[str], num_samples: int) -> tuple[np.ndarray, list[str]]:
    names = unique_names(group_names)
    g = as_ids("groups", groups, num_samples)
    check_named(g, len(names))
    return g, names


def _check_inputs(
    scores: Any, labels: Any, groups: Any, group_names: Sequence[str]
) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str]]:
    s = _scores(scores)
    y = as_binary("labels", labels, len(s))
    g, names = _check_groups(groups, group_names, len(s))
    return s, y, g, names


def _check_result(name: str, result: Any) -> None:
    if not isinstance(result, GroupResult):
        raise ValueError(ERR_RESULT.format(name=name, got=type(result).__name__))


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
    """A stat as float, NaN when missing."""
    return float(stats.get(key, math.nan))


def _interval(result: GroupResult, gap: str) -> tuple[float, float]:
    """A gap's bootstrap interval; NaN when absent (no bootstrap)."""
    return result.intervals.get(gap, (math.nan, math.nan))


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
def plot_group_rates(result: GroupResult, path: str, title: str = "", confidence: float = 0.95) -> str:
    """Per-group rates of a `GroupResult` as dot plots with Wilson intervals.

    Binary: one panel each for selection rate, TPR, FPR and accuracy; C > 2: accuracy and the TPR of each
    class (named by ``class_names``, without interval). A dashed line marks the overall rate; a NaN or
    missing rate leaves its group listed without a dot. The title carries the headline gaps. A group below
    ``min_group_size`` (``result.small_groups``) is drawn hollow and labelled with ``*``, and the title says
    when such groups were left out of the gaps. Returns ``path``.
    """
    _check_result("result", result)
    if not 0.0 < confidence < 1.0:
        raise ValueError(ERR_CONFIDENCE.format(confidence=confidence))
    by_group, overall = result.by_group, result.overall
    if not by_group:
        raise ValueError(ERR_NO_GROUPS.format(name="result"))
    num_classes = result.num_classes
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
        small = set(result.small_groups)
        shown = [(y, r, g in small) for y, r, g in zip(ys, rates, groups, strict=True) if not math.isnan(r)]
        full = [(y, r) for y, r, is_small in shown if not is_small]
        hollow = [(y, r) for y, r, is_small in shown if is_small]
        ax.scatter([r for _, r in full], [y for y, _ in full], color=COLORS[0], zorder=4)
        if hollow:
            ax.scatter(
                [r for _, r in hollow],
                [y for y, _ in hollow],
                facecolors="white",
                edgecolors=COLORS[0],
                zorder=4,
            )
        for y, r in zip(ys, rates, strict=True):
            if math.isnan(r):
                ax.text(0.5, y, "undefined", ha="center", va="center", fontsize="small", color="gray")
        total = _value(overall, stat)
        if not math.isnan(total):
            ax.axvline(total, color="gray", linestyle="--")
        ax.set_xlim(-0.02, 1.02)
        ax.set_yticks(ys, [f"{g} *" if g in small else g for g in groups])
        # Reversed limits put the first group on top, as in the result dict; the margin keeps end dots whole.
        ax.set_ylim(len(groups) - 0.5, -0.5)
        # The overall value goes into the title: a legend would cover dots near 0 or 1.
        name = RATE_LABELS.get(stat, result.stat_label(stat))
        ax.set_title(f"{name} (overall {fmt(total)}, dashed)")
        ax.set_xlabel(f"with {level}% Wilson interval" if num_classes == 2 or stat == "accuracy" else "")
    headline = (
        ("demographic_parity_difference", "equalized_odds_difference")
        if num_classes == 2
        else ("demographic_parity_difference", "tpr_gap_rms")
    )
    note = ""
    if result.excluded_groups:
        note = f"* < {result.min_group_size} rows, hollow: left out of the gaps"
    elif result.small_groups:
        note = f"* < {result.min_group_size} rows, hollow"
    fig.suptitle(_join_title(title, _gap_summary(result, headline), note))
    fig.tight_layout()
    return _save(fig, path)


def _gap_summary(result: GroupResult, gaps: Sequence[str]) -> str:
    parts = []
    for gap in gaps:
        value = _value(result.gaps, gap)
        text = f"{GAP_LABELS.get(gap, gap)} {fmt(value)}"
        low, high = _interval(result, gap)
        if not math.isnan(value + low + high):
            text += f" [{low:.3f}, {high:.3f}]"
        parts.append(text)
    return " · ".join(parts)


def _join_title(*parts: str) -> str:
    return "\n".join(p for p in parts if p)


def plot_comparison(
    results_a: GroupResult,
    results_b: GroupResult,
    path: str,
    names: Sequence[str] = ("before", "after"),
    gaps: Sequence[str] | None = None,
) -> str:
    """Two `GroupResult`s side by side: headline gaps and per-group rates.

    Left: grouped horizontal bars per gap (default ``HEADLINE_GAPS`` present in either result) with the
    bootstrap intervals of ``intervals`` where present. Right: per-group selection rate (accuracy when a
    result is multi-class), with each model's overall rate dashed. Returns ``path``.
    """
    _check_result("results_a", results_a)
    _check_result("results_b", results_b)
    if isinstance(names, str) or len(names) != 2:
        raise ValueError(ERR_NAMES.format(names=names))
    results = (results_a, results_b)
    available = list(dict.fromkeys([*results_a.gaps, *results_b.gaps]))
    if gaps is None:
        gaps = [g for g in HEADLINE_GAPS if g in available]
    for gap in gaps:
        if gap not in available:
            raise ValueError(ERR_UNKNOWN_GAP.format(gap=gap, available=", ".join(available)))
    if not gaps:
        raise ValueError(ERR_NO_GAPS)
    both_binary = all(r.num_classes == 2 for r in results)
    stat = "selection_rate" if both_binary else "accuracy"
    groups = list(dict.fromkeys([*results_a.by_group, *results_b.by_group]))

    plt = _pyplot()
    height = max(3.0, 0.45 * max(len(gaps), len(groups)) + 1.6)
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, height))
    bar = 0.38
    for k, (result, name) in enumerate(zip(results, names, strict=True)):
        ys = [i + (k - 0.5) * bar for i in range(len(gaps))]
        values = [_value(result.gaps, g) for g in gaps]
        _bars(left, ys, values, bar, COLORS[k], str(name), [_interval(result, g) for g in gaps])

        ys = [i + (k - 0.5) * bar for i in range(len(groups))]
        values = [_value(result.by_group.get(g, {}), stat) for g in groups]
        _bars(right, ys, values, bar, COLORS[k], str(name))
        total = _value(result.overall, stat)
        if not math.isnan(total):
            right.axvline(total, color=COLORS[k], linestyle="--", linewidth=1, label=f"{name} overall")
    left.set_yticks(range(len(gaps)), [GAP_LABELS.get(g, g) for g in gaps])
    left.set_title("fairness gaps" + (" (bootstrap intervals)" if any(r.intervals for r in results) else ""))
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
    """Horizontal bars, optionally with intervals, labelled with their value (no bar for NaN)."""
    ax.barh(ys, [0.0 if math.isnan(v) else v for v in values], height=height, color=color, label=label)
    intervals = intervals or [(math.nan, math.nan)] * len(values)
    _draw_intervals(ax, ys, [lo for lo, _ in intervals], [hi for _, hi in intervals])
    for y, v, (_, high) in zip(ys, values, intervals, strict=True):
        # Right of the interval's end too, so the label does not sit on the interval line.
        x = 0.0 if math.isnan(v) else max(v, 0.0 if math.isnan(high) else high)
        ax.text(x + 0.01, y, fmt(v), va="center", fontsize="x-small")


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

    scores (N,) P(y=1) with labels (N,) 0/1, or (N, C) class probabilities with labels (N,) in [0, C);
    groups (N,) ids into group_names. Marker area grows with the bin's count. The legend gives each group's
    ECE on the drawn bins (``fairtune.curves.calibration_bin``, the bins of ``GroupStats``), labelled with
    what it measures: with (N,) scores the class-1 ECE (P(y=1) against the frequency of y = 1); with (N, C)
    probabilities the top-label ECE (confidence of the argmax class against its accuracy), which is the
    ``ece`` that ``GroupStats`` reports. Returns ``path``.
    """
    if bins < 1:
        raise ValueError(ERR_BINS.format(bins=bins))
    s, y, binary = _reliability_inputs(scores, labels)
    g, names = _check_groups(groups, group_names, len(s))
    calib = torch.zeros(len(names), bins, 3, dtype=torch.float64)  # [count, sum score, sum outcome]
    add_calibration(calib, torch.from_numpy(s), torch.from_numpy(y), torch.from_numpy(g))
    eces = ece_from_bins(calib).tolist()
    counts, sum_pred, sum_pos = (calib[..., k].numpy() for k in range(3))
    kind = "class-1 ECE" if binary else "top-label ECE"
    plt = _pyplot()
    cmap = plt.get_cmap("tab10")
    largest = counts.max()
    fig, ax = plt.subplots(figsize=(6.2, 5.6))
    ax.plot([0, 1], [0, 1], color="lightgray", linestyle=":", label="perfect calibration")
    for i, name in enumerate(names):
        filled = counts[i] > 0
        if not filled.any():
            ax.plot([], [], " ", label=f"{name}: no samples")
            continue
        mean_pred, frac_pos = sum_pred[i][filled] / counts[i][filled], sum_pos[i][filled] / counts[i][filled]
        color = cmap(i % 10)
        label = f"{name} (n={int(counts[i].sum())}, {kind} {fmt(eces[i])})"
        ax.plot(mean_pred, frac_pos, color=color, label=label)
        ax.scatter(mean_pred, frac_pos, s=10 + 190 * counts[i][filled] / largest, color=color, alpha=0.7)
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
    probs = _scores(scores, ndim=None)
    if probs.ndim == 1:
        return probs, as_binary("labels", labels, len(probs)), True
    if probs.ndim != 2 or probs.shape[1] < 2:
        raise ValueError(ERR_PROB_SHAPE.format(shape=probs.shape))
    y = as_ids("labels", labels, probs.shape[0])
    num_classes = probs.shape[1]
    if y.min() < 0 or y.max() >= num_classes:
        raise ValueError(ERR_CLASS_RANGE.format(num_classes=num_classes, low=y.min(), high=y.max()))
    return probs.max(1), (probs.argmax(1) == y).astype(np.int64), False


# ----- data audit --------------------------------------------------------------------------------------
def plot_audit(audit: dict[str, Any], output_dir: str) -> list[str]:
    """One PNG per grouping of a data audit (``fairtune.audit.audit_dataset``): group shares (with reference
    marks) and label base rates with their Wilson intervals (binary) or label shares (multi-class)."""
    plt = _pyplot()
    paths = []
    binary = audit["positive_label"] is not None
    for name, g in audit["groupings"].items():
        groups = list(g["groups"])
        entries = [g["groups"][k] for k in groups]
        height = max(2.5, 0.35 * len(groups) + 1.2)
        fig, axes = plt.subplots(1, 2, figsize=(11, height), sharey=True)
        ys = list(range(len(groups)))
        axes[0].barh(ys, [e["share"] for e in entries], color=COLORS[0])
        if "reference" in g:
            ref = [g["reference"]["by_group"].get(k, {}).get("expected_share") for k in groups]
            marks = [(y, r) for y, r in zip(ys, ref, strict=True) if r is not None]
            if marks:
                xs, y_marks = [r for _, r in marks], [y for y, _ in marks]
                axes[0].scatter(xs, y_marks, marker="|", s=300, color="black", label="reference", zorder=3)
                axes[0].legend(loc="lower right")
        axes[0].set_yticks(ys, groups)
        axes[0].invert_yaxis()  # first group on top, like the tables
        axes[0].set_xlabel("share of rows")
        axes[0].set_title(f"{name}: representation")
        if binary:
            rates = [e["base_rate"] for e in entries]
            # max(0, .): an interval end can sit a rounding error beyond the rate at 0 or 1.
            lo = [max(0.0, r - e["base_rate_interval"][0]) for e, r in zip(entries, rates, strict=True)]
            hi = [max(0.0, e["base_rate_interval"][1] - r) for e, r in zip(entries, rates, strict=True)]
            axes[1].errorbar(rates, ys, xerr=[lo, hi], fmt="o", color=COLORS[1], capsize=4)
            overall = audit["label_counts"][1] / audit["rows"]
            axes[1].axvline(overall, color="gray", linestyle="--", label=f"overall {fmt(overall)}")
            axes[1].legend(loc="lower right")
            level = int(round(audit["confidence"] * 100))
            axes[1].set_xlabel(
                f"base rate P(label = {audit['positive_label']}) with {level}% Wilson interval"
            )
        else:
            left = [0.0] * len(groups)
            for i, lab in enumerate(audit["labels"]):
                part = [e["label_shares"][i] for e in entries]
                axes[1].barh(ys, part, left=left, label=str(lab))
                left = [a + b for a, b in zip(left, part, strict=True)]
            axes[1].legend(loc="lower right", fontsize="small")
            axes[1].set_xlabel("label shares")
        axes[1].set_title(f"{name}: labels by group")
        fig.tight_layout()
        tag = name.replace(INTERSECTION_SEPARATOR, "_x_")
        paths.append(_save(fig, os.path.join(output_dir, f"data_audit_{tag}.png")))
    for attribute, proxies in audit.get("proxies", {}).items():
        paths.append(
            plot_proxies(attribute, proxies, os.path.join(output_dir, f"data_audit_proxies_{attribute}.png"))
        )
    return paths


def plot_proxies(
    attribute: str, proxies: dict[str, Any], path: str, top: int = 12, max_groups: int = 6
) -> str:
    """Proxies of one attribute (``fairtune.proxies.detect_proxies``): the columns' one-column AUC, strongest
    first, and with a text column each group's most associated words by z-score (words that name the group,
    from the word lists, hatched). Groups beyond the first ``max_groups`` (in name order) are left out and
    named in the title."""
    plt = _pyplot()
    columns = proxies["columns"][:top]
    tokens = proxies.get("tokens") or {}
    shown = list(tokens)[:max_groups]
    fig, axes = _grid(plt, 1 + len(shown), max_cols=4, width=4.2, height=max(2.8, 0.3 * top + 1.2))
    ax = axes[0]
    ys = list(range(len(columns)))
    ax.barh(ys, [c["auc"] - 0.5 for c in columns], left=0.5, color=COLORS[0])
    ax.set_yticks(ys, [c["column"] for c in columns])
    ax.invert_yaxis()
    ax.set_xlim(0.45, 1.0)
    ax.axvline(0.5, color="gray", linestyle="--", linewidth=1)
    ax.set_xlabel("AUC of a one-column model")
    ax.set_title(f"columns that predict {attribute}")
    for ax, group in zip(axes[1:], shown, strict=False):
        words = tokens[group]
        ys = list(range(len(words)))
        bars = ax.barh(ys, [w["z"] for w in words], color=COLORS[1])
        for bar, w in zip(bars, words, strict=True):
            if w["identity_term"]:
                bar.set_hatch("//")
                bar.set_facecolor("white")
                bar.set_edgecolor(COLORS[1])
        ax.set_yticks(ys, [w["token"] for w in words])
        ax.invert_yaxis()
        ax.set_xlabel("log-odds z vs other groups")
        ax.set_title(f"words of {group}")
    left_out = [g for g in tokens if g not in shown]
    note = " (hatched words: terms of the word lists, which name the group)" if shown else ""
    fig.suptitle(
        f"Proxies of {attribute}{note}" + (f"; not shown: {', '.join(left_out)}" if left_out else "")
    )
    fig.tight_layout()
    return _save(fig, path)


# ----- attributions (fairtune.explain) -------------------------------------------------------------------
# Red pushes away from the explained class, green toward it (bars and heatmap alike).
ATTRIBUTION_COLORS = ("#C44E52", "#55A868")
ATTRIBUTION_CMAP = "PiYG"  # diverging, white at 0
ERR_LENGTHS = "row {row!r} has {tokens} tokens but {values} attributions"


def _group_colors(count: int) -> list[Any]:
    if count <= len(COLORS):
        return list(COLORS[:count])
    cmap = _pyplot().get_cmap("tab10")
    return [cmap(i % 10) for i in range(count)]


def plot_top_attributions(
    per_group: dict[str, Sequence[tuple[str, float]]],
    path: str,
    title: str = "",
    xlabel: str = "mean attribution per occurrence",
) -> str:
    """One panel per group: horizontal bars of its ``(token, attribution)`` pairs (e.g. the tokens pushing
    most toward and away from the explained class), largest on top; green toward the class, red away."""
    if not per_group:
        raise ValueError(ERR_EMPTY.format(name="per_group"))
    plt = _pyplot()
    longest = max(1, *(len(items) for items in per_group.values()))
    fig, axes = _grid(plt, len(per_group), 3, 4.2, max(2.2, 0.26 * longest + 1.2))
    for ax, (group, items) in zip(axes, per_group.items(), strict=True):
        ordered = sorted(items, key=lambda item: item[1])
        ys = list(range(len(ordered)))
        values = [float(v) for _, v in ordered]
        ax.barh(ys, values, color=[ATTRIBUTION_COLORS[v > 0] for v in values])
        ax.set_yticks(ys, [str(t) for t, _ in ordered], fontsize="small")
        ax.axvline(0, color="gray", linewidth=0.8)
        ax.set_title(group)
        ax.set_xlabel(xlabel, fontsize="small")
        if not ordered:
            ax.text(0.5, 0.5, "no token seen often enough", ha="center", va="center", transform=ax.transAxes)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return _save(fig, path)


def plot_group_differences(
    tokens: Sequence[str],
    by_group: dict[str, Sequence[float]],
    path: str,
    title: str = "",
    xlabel: str = "attribution",
) -> str:
    """Each token's value per group (``by_group[group]``: one value per token, first token on top), e.g. the
    most group-different tokens' contribution per row: grouped bars for up to 4 groups, else a token x group
    grid of coloured, labelled cells (one diverging scale, white at 0)."""
    if not tokens or not by_group:
        raise ValueError(ERR_EMPTY.format(name="tokens" if not tokens else "by_group"))
    for group, values in by_group.items():
        if len(values) != len(tokens):
            raise ValueError(ERR_LENGTHS.format(row=group, tokens=len(tokens), values=len(values)))
    plt = _pyplot()
    groups = list(by_group)
    labels = [str(t) for t in tokens]
    if len(groups) > 4:
        from matplotlib.colors import Normalize

        grid = np.array([[float(v) for v in by_group[g]] for g in groups]).T  # (tokens, groups)
        limit = float(np.abs(grid).max()) or 1.0
        fig, ax = plt.subplots(figsize=(1.0 + 0.9 * len(groups), 1.8 + 0.4 * len(tokens)))
        image = ax.imshow(grid, cmap=ATTRIBUTION_CMAP, norm=Normalize(-limit, limit), aspect="auto")
        for (i, j), value in np.ndenumerate(grid):
            ax.text(j, i, f"{value:.3f}", ha="center", va="center", fontsize=7)
        ax.set_xticks(range(len(groups)), groups, rotation=45, ha="right", fontsize="small")
        ax.set_yticks(range(len(tokens)), labels)
        fig.colorbar(image, ax=ax, label=xlabel)
    else:
        height = 0.8 / len(groups)
        fig, ax = plt.subplots(figsize=(7.5, max(2.5, (0.25 + 0.15 * len(groups)) * len(tokens) + 1.4)))
        for j, (group, color) in enumerate(zip(groups, _group_colors(len(groups)), strict=True)):
            ys = [i + (j - (len(groups) - 1) / 2) * height for i in range(len(tokens))]
            ax.barh(ys, [float(v) for v in by_group[group]], height=height, color=color, label=group)
        ax.set_yticks(list(range(len(tokens))), labels)
        ax.invert_yaxis()  # the largest difference on top, like the tables
        ax.axvline(0, color="gray", linewidth=0.8)
        ax.set_xlabel(xlabel)
        ax.legend(loc="best", fontsize="small")
    if title:
        ax.set_title(title)
    fig.tight_layout()
    return _save(fig, path)


def plot_token_heatmap(
    rows: Sequence[tuple[str, Sequence[str], Sequence[float]]],
    path: str,
    title: str = "",
    width_chars: int = 110,
) -> str:
    """Example rows as text, each token on a cell coloured by its attribution (one diverging scale, white
    at 0, shared by all rows). ``rows``: ``(label, tokens, attributions)``; tokens wrap at ``width_chars``."""
    if not rows:
        raise ValueError(ERR_EMPTY.format(name="rows"))
    from matplotlib.colors import Normalize
    from matplotlib.patches import Rectangle

    for label, tokens, values in rows:
        if len(tokens) != len(values):
            raise ValueError(ERR_LENGTHS.format(row=label, tokens=len(tokens), values=len(values)))
    plt = _pyplot()
    cmap = plt.get_cmap(ATTRIBUTION_CMAP)
    limit = max((abs(float(v)) for _, _, values in rows for v in values), default=0.0) or 1.0
    norm = Normalize(-limit, limit)
    cells: list[tuple[float, int, str, float]] = []  # (x, line, token, value)
    labels: list[tuple[int, str]] = []
    line = 0
    for label, tokens, values in rows:
        labels.append((line, label))
        line, x = line + 1, 0.0
        for token, value in zip(tokens, values, strict=True):
            width = len(str(token)) + 1
            if x and x + width > width_chars:
                line, x = line + 1, 0.0
            cells.append((x, line, str(token), float(value)))
            x += width
        line += 2  # a blank line between rows
    char_inches = 0.075  # a monospace character at font size 8, with room
    fig = plt.figure(figsize=(width_chars * char_inches + 0.4, 0.24 * line + 1.3))
    ax = fig.add_axes((0.02, 0.9 / (0.24 * line + 1.3), 0.96, 0.24 * line / (0.24 * line + 1.3)))
    ax.set_xlim(0, width_chars)
    ax.set_ylim(line, -0.2)
    ax.axis("off")
    for y, label in labels:
        ax.text(0, y + 0.5, label, va="center", fontsize=8, fontweight="bold")
    for x, y, token, value in cells:
        ax.add_patch(Rectangle((x, y + 0.1), len(token) + 0.8, 0.8, facecolor=cmap(norm(value)), linewidth=0))
        ax.text(x + 0.4, y + 0.5, token, va="center", family="monospace", fontsize=8)
    bar = fig.add_axes((0.3, 0.35 / (0.24 * line + 1.3), 0.4, 0.15 / (0.24 * line + 1.3)))
    fig.colorbar(plt.cm.ScalarMappable(norm=norm, cmap=cmap), cax=bar, orientation="horizontal")
    bar.tick_params(labelsize=7)
    if title:
        fig.suptitle(title, fontsize=10)
    return _save(fig, path)


# ----- monitoring over periods (fairtune.monitor) ------------------------------------------------------
ERR_TREND_LENGTHS = "periods and results must have one entry each per period, got {periods} and {results}"
ALARM_COLOR = "#C44E52"
TREND_LABELS = {**GAP_LABELS, "demographic_parity_ratio": "DP ratio (higher is better)"}


def plot_gap_trend(
    periods: Sequence[str],
    results: Sequence[GroupResult | None],
    path: str,
    gaps: Sequence[str] | None = None,
    thresholds: dict[str, Sequence[tuple[str, float]]] | None = None,
    flagged: Sequence[str] = (),
    title: str = "",
) -> str:
    """Gaps of one grouping over monitoring periods, one panel per gap: each period's value on a line, its
    bootstrap interval as a shaded band with a bar from end to end, gate thresholds as dashed lines.

    ``results[i]`` is period ``periods[i]``'s `GroupResult` (None: not measured); a gap a period lacks (the
    label-based gaps of a batch without labels) or leaves undefined is a hole in the line. ``gaps`` default:
    the report's headline gaps (``fairtune.report.HEADLINE_GAPS``) any period has. ``thresholds`` maps a gap
    to (bound, limit) pairs, bound ``"max"`` or ``"min"``; a gap in ``flagged`` (an adverse move since the
    previous period) gets a ring on its last point.
    Returns ``path``.
    """
    if len(periods) != len(results):
        raise ValueError(ERR_TREND_LENGTHS.format(periods=len(periods), results=len(results)))
    if not periods:
        raise ValueError(ERR_EMPTY.format(name="periods"))
    for i, result in enumerate(results):
        if result is not None:
            _check_result(f"results[{i}]", result)
    available = list(dict.fromkeys(g for r in results if r is not None for g in r.gaps))
    if gaps is None:
        gaps = [g for g in REPORT_GAPS if g in available]
    for gap in gaps:
        if gap not in available:
            raise ValueError(ERR_UNKNOWN_GAP.format(gap=gap, available=", ".join(available)))
    if not gaps:
        raise ValueError(ERR_NO_GAPS)
    thresholds = thresholds or {}
    confidence = next((r.confidence for r in reversed(results) if r is not None and r.intervals), None)
    latest = results[-1]

    plt = _pyplot()
    xs = list(range(len(periods)))
    fig, axes = _grid(plt, len(gaps), 3, max(4.2, 0.5 * len(periods) + 2.2), 3.4)
    for ax, gap in zip(axes, gaps, strict=True):
        values = [math.nan if r is None else _value(r.gaps, gap) for r in results]
        ends = [(math.nan, math.nan) if r is None else _interval(r, gap) for r in results]
        lows, highs = [lo for lo, _ in ends], [hi for _, hi in ends]
        if any(not math.isnan(lo + hi) for lo, hi in ends):
            # NaN ends break the band; the bars show a lone period's interval (and need not hold the point).
            ax.fill_between(xs, lows, highs, color=COLORS[0], alpha=0.18, linewidth=0)
            kept = [(x, lo, hi) for x, lo, hi in zip(xs, lows, highs, strict=True) if not math.isnan(lo + hi)]
            ax.vlines(
                [x for x, _, _ in kept], [lo for _, lo, _ in kept], [hi for _, _, hi in kept], color="gray"
            )
        ax.plot(xs, values, marker="o", color=COLORS[0], zorder=3)
        for bound, limit in thresholds.get(gap, ()):
            ax.axhline(limit, color=ALARM_COLOR, linestyle="--", linewidth=1, label=f"gate {bound} {limit:g}")
        if gap in flagged and not math.isnan(values[-1]):
            ax.scatter(
                [xs[-1]],
                [values[-1]],
                s=180,
                facecolors="none",
                edgecolors=ALARM_COLOR,
                linewidths=2,
                zorder=4,
                label="adverse move",
            )
        ax.set_xticks(xs, list(periods), rotation=30, ha="right", fontsize="small")
        ax.set_xlim(-0.5, len(periods) - 0.5)
        measured = latest is not None and gap in latest.gaps
        ax.set_title(
            f"{TREND_LABELS.get(gap, gap)} (latest {fmt(values[-1]) if measured else 'not measured'})",
            fontsize="medium",
        )
        if ax.get_legend_handles_labels()[0]:
            ax.legend(loc="best", fontsize="x-small")
    bands = f"bands: {round(confidence * 100)}% bootstrap intervals" if confidence else "no intervals"
    fig.suptitle(_join_title(title, f"fairness gaps over periods ({bands})"))
    fig.tight_layout()
    return _save(fig, path)


def plot_score_histograms(
    scores: Any, groups: Any, group_names: Sequence[str], path: str, title: str = ""
) -> str:
    """Per group, a density histogram of the class-1 score, for data without labels (one panel per group);
    the title of each panel gives its selection rate (score > 0.5).

    scores (N,) P(y=1); groups (N,) ids into group_names. Returns ``path``.
    """
    s = _scores(scores)
    g, names = _check_groups(groups, group_names, len(s))
    present, note = _group_note(names, g)
    plt = _pyplot()
    fig, axes = _grid(plt, len(present), 3, 4.0, 3.0)
    edges = np.linspace(0.0, 1.0, 21)  # shared bins so panels compare at a glance
    for ax, i in zip(axes, present, strict=True):
        values = s[g == i]
        ax.hist(values, bins=edges, density=True, color=COLORS[0], alpha=0.7)
        ax.axvline(THRESHOLD, color="gray", linestyle=":")
        ax.set_xlim(0, 1)
        ax.set_title(f"{names[i]} (n={len(values)}, selected {fmt(float((values > THRESHOLD).mean()))})")
        ax.set_xlabel("score P(y=1)")
    axes[0].set_ylabel("density")
    fig.suptitle(_join_title(title, "score distributions by group (no labels)", note))
    fig.tight_layout()
    return _save(fig, path)
