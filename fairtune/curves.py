"""Shared numerics of the metric, plot and post-processing code: array checks, ROC points, calibration bins,
Wilson intervals and the number format of every Markdown table.

One copy of each, so that `GroupStats`, the fairlearn-style functions, the plots and `GroupThresholds` agree
on what they accept and on the numbers they derive:

* array checks: `to_numpy`, `check_1d`, `check_length`, `as_ids`, `as_binary`, `as_probabilities`,
  `unique_names`, `check_named` (group ids against group names). Integral floats (1.0, e.g. from a pandas
  column that held NaN once) count as integer ids; NaN, inf and fractions do not.
* ROC: `roc_counts` (cumulative true / false positives per distinct score), `roc_curve`, `auc`.
* calibration: `calibration_bin` holds the one definition of the bins, `add_calibration` the per-bin sums,
  `ece_from_bins` the expected calibration error; `calibration_bins` is the numpy view the plots draw.
* `wilson_interval` for a proportion; `fmt` for a number in a Markdown table.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from statistics import NormalDist
from typing import Any, TypeAlias

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "MISSING_MARK",
    "add_calibration",
    "as_binary",
    "as_ids",
    "as_probabilities",
    "auc",
    "calibration_bin",
    "calibration_bins",
    "check_1d",
    "check_length",
    "check_named",
    "ece_from_bins",
    "fmt",
    "roc_counts",
    "roc_curve",
    "to_numpy",
    "unique_names",
    "wilson_interval",
]

# numpy array, torch tensor, pandas Series or (nested) list.
ArrayLike: TypeAlias = Any

ERR_NOT_1D = "{name} must have shape (N,), got {shape}"
ERR_LENGTH = "{name} has {got} entries, expected {expected} (one per sample)"
ERR_NOT_NUMERIC = "{name} must be numeric, got dtype {dtype}"
ERR_NOT_INTEGER = "{name} must hold integer ids, got dtype {dtype}"
ERR_NEGATIVE_GROUP = "group ids must be >= 0, got {low}"
ERR_NOT_BINARY = "{name} must hold binary labels 0/1, got values {values}"
ERR_PROB_NAN = "{name} must not be NaN, got {count} NaN value(s)"
ERR_PROB_RANGE = "{name} must be probabilities in [0, 1], got values in [{low}, {high}]"
ERR_DUPLICATE_NAME = "group name {name!r} is used by group ids {first} and {second}"
ERR_GROUP_NAMES = "group_names has {got} entries but groups holds ids up to {high}: name every id"
ERR_ONE_CLASS = "a ROC curve needs positive and negative labels, got {positives} positive(s) of {total}"
ERR_AUC_INPUT = "fpr and tpr must be 1-D of equal length >= 2, got shapes {fpr_shape} and {tpr_shape}"
ERR_AUC_ORDER = "fpr must be monotonic (as returned by roc_curve)"
ERR_BINS = "bins must be >= 1, got {bins}"

# What a table shows for an undefined (NaN) or missing number.
MISSING_MARK = "–"


# ----- array checks ------------------------------------------------------------------------------------
def to_numpy(values: ArrayLike) -> np.ndarray:
    """numpy array, torch tensor (any device), pandas Series / DataFrame or list -> numpy array."""
    if isinstance(values, Tensor):
        values = values.detach().cpu()
        # bfloat16 has no numpy dtype; float64 keeps every lower precision exactly.
        return (values.double() if values.is_floating_point() else values).numpy()
    if hasattr(values, "to_numpy"):  # pandas, without importing it
        return values.to_numpy()
    return np.asarray(values)


def check_1d(name: str, values: np.ndarray | Tensor, num_samples: int | None = None) -> None:
    """Raise unless ``values`` (numpy or torch) has shape (N,), with N = ``num_samples`` when given."""
    if values.ndim != 1:
        raise ValueError(ERR_NOT_1D.format(name=name, shape=tuple(values.shape)))
    if num_samples is not None:
        check_length(name, values, num_samples)


def check_length(name: str, values: np.ndarray | Tensor, expected: int) -> None:
    if values.shape[0] != expected:
        raise ValueError(ERR_LENGTH.format(name=name, got=values.shape[0], expected=expected))


def as_ids(name: str, values: ArrayLike, num_samples: int | None = None) -> np.ndarray:
    """(N,) integer-valued array-like -> (N,) int64; integral finite floats such as 1.0 are accepted."""
    array = to_numpy(values)
    check_1d(name, array, num_samples)
    if array.dtype.kind == "f" and np.isfinite(array).all() and (np.mod(array, 1) == 0).all():
        return array.astype(np.int64)
    if array.dtype.kind not in "biu":
        raise ValueError(ERR_NOT_INTEGER.format(name=name, dtype=array.dtype))
    return array.astype(np.int64)


def as_binary(name: str, values: ArrayLike, num_samples: int | None = None) -> np.ndarray:
    """(N,) labels that are all 0 or 1 (ints, bools or integral floats) -> (N,) int64."""
    array = to_numpy(values)
    check_1d(name, array, num_samples)
    unique = np.unique(array)
    if unique.dtype.kind not in "biuf" or not np.isin(unique, [0, 1]).all():
        raise ValueError(ERR_NOT_BINARY.format(name=name, values=unique[:10].tolist()))
    return array.astype(np.int64)


def as_probabilities(name: str, values: ArrayLike) -> np.ndarray:
    """Array-like of any shape with every entry in [0, 1] -> float64 array; NaN is an error."""
    array = to_numpy(values)
    if array.dtype.kind not in "biuf":
        raise ValueError(ERR_NOT_NUMERIC.format(name=name, dtype=array.dtype))
    array = array.astype(np.float64)
    nans = int(np.isnan(array).sum())
    if nans:
        raise ValueError(ERR_PROB_NAN.format(name=name, count=nans))
    if array.size and (array.min() < 0.0 or array.max() > 1.0):
        raise ValueError(ERR_PROB_RANGE.format(name=name, low=float(array.min()), high=float(array.max())))
    return array


def unique_names(names: Sequence[Any], ids: Sequence[int] | None = None) -> list[str]:
    """Group names as strings; a name used by two ids is an error naming both ids (``ids[i]`` is the id of
    ``names[i]``, default i)."""
    out = [str(n) for n in names]
    ids = list(range(len(out))) if ids is None else list(ids)
    owner: dict[str, int] = {}
    for g, name in zip(ids, out, strict=True):
        if name in owner:
            raise ValueError(ERR_DUPLICATE_NAME.format(name=name, first=owner[name], second=g))
        owner[name] = g
    return out


def check_named(groups: np.ndarray, num_names: int) -> None:
    """Group ids (N,) int64 must be >= 0 and each have one of ``num_names`` names."""
    if groups.size == 0:
        return
    low, high = int(groups.min()), int(groups.max())
    if low < 0:
        raise ValueError(ERR_NEGATIVE_GROUP.format(low=low))
    if high >= num_names:
        raise ValueError(ERR_GROUP_NAMES.format(got=num_names, high=high))


# ----- ROC ---------------------------------------------------------------------------------------------
def roc_counts(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rules "predict 1 iff score >= t" for every distinct score t, strictest first.

    scores (n,) float, labels (n,) 0/1 -> thresholds, tp, fp, each (m + 1,) for m distinct scores:
    thresholds[0] = +inf (predict nothing), then the distinct scores in decreasing order; tp[j] / fp[j] int64
    count the true / false positives of rule j (both non-decreasing, tp + fp strictly increasing).
    """
    distinct, inverse = np.unique(scores, return_inverse=True)  # ascending
    inverse = inverse.reshape(-1)
    positives = np.bincount(inverse, weights=labels, minlength=distinct.shape[0]).astype(np.int64)[::-1]
    totals = np.bincount(inverse, minlength=distinct.shape[0]).astype(np.int64)[::-1]
    tp = np.concatenate([[0], np.cumsum(positives)])
    fp = np.concatenate([[0], np.cumsum(totals - positives)])
    return np.concatenate([[np.inf], distinct[::-1]]), tp, fp


def roc_curve(scores: ArrayLike, labels: ArrayLike) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ROC curve of binary ``labels`` (N,) ranked by ``scores`` (N,) in [0, 1].

    Returns fpr, tpr, thresholds, each (K + 1,) for K distinct scores: point k counts ``score >=
    thresholds[k]`` as positive; the first point is (0, 0) at threshold +inf. Same points as scikit-learn's
    ``roc_curve(..., drop_intermediate=False)``.
    """
    s = as_probabilities("scores", scores)
    check_1d("scores", s)
    y = as_binary("labels", labels, s.shape[0])
    positives, total = int(y.sum()), len(y)
    if positives in (0, total):
        raise ValueError(ERR_ONE_CLASS.format(positives=positives, total=total))
    thresholds, tp, fp = roc_counts(s, y)
    return fp / (total - positives), tp / positives, thresholds


def auc(fpr: ArrayLike, tpr: ArrayLike) -> float:
    """Area under a curve (K,) x (K,) by the trapezoidal rule; ``fpr`` must be monotonic."""
    x, y = np.asarray(fpr, dtype=float), np.asarray(tpr, dtype=float)
    if x.ndim != 1 or x.shape != y.shape or len(x) < 2:
        raise ValueError(ERR_AUC_INPUT.format(fpr_shape=x.shape, tpr_shape=y.shape))
    dx = np.diff(x)
    if not ((dx >= 0).all() or (dx <= 0).all()):
        raise ValueError(ERR_AUC_ORDER)
    return float(abs(np.sum(dx * (y[1:] + y[:-1]) / 2)))


# ----- calibration -------------------------------------------------------------------------------------
def calibration_bin(confidence: Tensor, bins: int) -> Tensor:
    """Bin index (N,) int64 of each confidence (N,) in [0, 1] among ``bins`` equal-width bins.

    The one definition of the bins: right-closed (k/B, (k+1)/B] as in Guo et al. 2017, confidence 0 in the
    first bin, each edge the float k/B compared exactly. That is what ``GroupStats`` always computed (as
    ceil(c * B), equal to this on every float32 confidence); the plots' former ``linspace`` edges were not
    k/B (edge 3 of 10 was 0.30000000000000004) and put a score of 0.1 * 3 into (0.2, 0.3] instead.
    """
    edges = torch.arange(1, bins, dtype=torch.float64, device=confidence.device) / bins  # (B - 1,)
    return torch.searchsorted(edges, confidence.to(torch.float64).contiguous(), right=False)


def add_calibration(calib: Tensor, confidence: Tensor, target: Tensor, groups: Tensor | None = None) -> None:
    """Add samples to per-bin sums in place.

    calib (G, B, 3) float64 [count, sum of confidence, sum of target] per group and bin; confidence (N,) in
    [0, 1]; target (N,) the outcome the confidence predicts (correct for top-label, y for class 1); groups
    (N,) ids < G, or None for G = 1.
    """
    bins = calib.shape[1]
    confidence = confidence.to(dtype=torch.float64)
    index = calibration_bin(confidence, bins)
    if groups is not None:
        index = groups * bins + index
    rows = torch.stack([torch.ones_like(confidence), confidence, target.to(torch.float64)], 1)
    calib.view(-1, 3).index_add_(0, index, rows)


def ece_from_bins(calib: Tensor) -> Tensor:
    """calib (..., B, 3) from `add_calibration` -> ECE (...); NaN without samples.

    sum_b (n_b / n) |mean confidence_b - mean target_b| = sum_b |sum confidence_b - sum target_b| / n.
    """
    total = calib[..., 0].sum(-1)
    gap = (calib[..., 1] - calib[..., 2]).abs().sum(-1)
    return torch.where(total > 0, gap / total, torch.nan)


def calibration_bins(scores: ArrayLike, labels: ArrayLike, bins: int = 10) -> tuple[np.ndarray, ...]:
    """Reliability-diagram bins of ``scores`` (N,) in [0, 1] against binary ``labels`` (N,).

    Bins as in `calibration_bin` (the ones `GroupStats`' ECE uses). Returns mean_pred, frac_pos, counts, each
    (B,): the mean score, the share of label 1 and the number of samples per bin; mean_pred and frac_pos are
    NaN in empty bins.
    """
    if bins < 1:
        raise ValueError(ERR_BINS.format(bins=bins))
    s = as_probabilities("scores", scores)
    check_1d("scores", s)
    y = as_binary("labels", labels, s.shape[0])
    calib = torch.zeros(1, bins, 3, dtype=torch.float64)
    add_calibration(calib, torch.from_numpy(s), torch.from_numpy(y))
    counts, sum_pred, sum_pos = calib[0].numpy().T
    with np.errstate(invalid="ignore", divide="ignore"):
        return sum_pred / counts, sum_pos / counts, counts.astype(np.int64)


# ----- intervals and formatting ------------------------------------------------------------------------
def wilson_interval(successes: int, total: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of a proportion: well-behaved for small counts and rates near 0 or 1."""
    if total == 0:
        return (math.nan, math.nan)
    z = NormalDist().inv_cdf(0.5 + confidence / 2)
    p = successes / total
    centre = (p + z * z / (2 * total)) / (1 + z * z / total)
    half = z * math.sqrt(p * (1 - p) / total + z * z / (4 * total * total)) / (1 + z * z / total)
    return (max(0.0, centre - half), min(1.0, centre + half))


def fmt(value: Any, digits: int = 3) -> str:
    """A number for a Markdown table or a plot label: ints as they are, floats with ``digits`` decimals,
    None and NaN as ``MISSING_MARK``."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return MISSING_MARK
    if isinstance(value, int | np.integer):
        return str(int(value))
    return f"{float(value):.{digits}f}"
