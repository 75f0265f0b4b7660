"""fairlearn-style fairness metrics over plain arrays, computed through `GroupStats`.

``demographic_parity_difference(y_true, y_pred, sensitive_features=...)`` and its siblings take numpy arrays,
torch tensors, pandas Series / DataFrames or lists, and return what fairlearn's function of the same name
returns on well-defined data (the tests compare with fairlearn's ``MetricFrame``); `metric_frame` returns
the whole `GroupResult`. Where the numbers deliberately differ from fairlearn (undefined rates are NaN and
left out of the gaps), see `fairtune.metrics`.

Small groups: every function takes ``min_group_size`` (default 0: every group, as fairlearn). With
``min_group_size=k``, the gap spans only the groups with at least k rows, the rule `GroupStats` applies to the
trainer's headline gaps (default 30 there); `metric_frame` still reports the smaller groups and lists them in
``GroupResult.small_groups``.
"""

from __future__ import annotations

from typing import Any, TypeAlias

import numpy as np
import torch

from fairtune.curves import as_binary, as_ids, as_probabilities, to_numpy
from fairtune.metrics import ERR_CLASS_RANGE, GroupResult, GroupStats

__all__ = [
    "accuracy_difference",
    "demographic_parity_difference",
    "demographic_parity_ratio",
    "equal_opportunity_difference",
    "equalized_odds_difference",
    "equalized_odds_ratio",
    "metric_frame",
    "tpr_gap_rms",
    "worst_group_accuracy",
]

# numpy array, torch tensor, pandas Series/DataFrame or (nested) list.
ArrayLike: TypeAlias = Any

ERR_AGG = "agg must be one of {choices}, got {agg!r}"
ERR_SENSITIVE_SHAPE = "sensitive_features must have shape (N,) or (N, K), got {shape}"
ERR_PROB_SHAPE = "y_prob must have shape (N,) or (N, C) with C >= 2 and N = {num_samples}, got {shape}"

AGG_CHOICES = ("worst_case", "mean")
# Integer group values spanning at most max(N, this) get an O(N) lookup-table encoding (see _encode_ints).
LOOKUP_MIN_SPAN = 1 << 16


def demographic_parity_difference(
    y_true: ArrayLike, y_pred: ArrayLike, *, sensitive_features: ArrayLike, min_group_size: int = 0
) -> float:
    """Max - min selection rate across groups (binary labels)."""
    return _binary_gap("demographic_parity_difference", y_true, y_pred, sensitive_features, min_group_size)


def demographic_parity_ratio(
    y_true: ArrayLike, y_pred: ArrayLike, *, sensitive_features: ArrayLike, min_group_size: int = 0
) -> float:
    """Min / max selection rate across groups (binary labels); NaN when every rate is 0."""
    return _binary_gap("demographic_parity_ratio", y_true, y_pred, sensitive_features, min_group_size)


def equalized_odds_difference(
    y_true: ArrayLike,
    y_pred: ArrayLike,
    *,
    sensitive_features: ArrayLike,
    agg: str = "worst_case",
    min_group_size: int = 0,
) -> float:
    """Larger ("worst_case") or mean ("mean") of the TPR and FPR differences across groups (binary labels)."""
    gap = "equalized_odds_difference" + _agg_suffix(agg)
    return _binary_gap(gap, y_true, y_pred, sensitive_features, min_group_size)


def equalized_odds_ratio(
    y_true: ArrayLike,
    y_pred: ArrayLike,
    *,
    sensitive_features: ArrayLike,
    agg: str = "worst_case",
    min_group_size: int = 0,
) -> float:
    """Smaller ("worst_case") or mean ("mean") of the TPR and FPR min/max ratios across groups (binary)."""
    gap = "equalized_odds_ratio" + _agg_suffix(agg)
    return _binary_gap(gap, y_true, y_pred, sensitive_features, min_group_size)


def equal_opportunity_difference(
    y_true: ArrayLike, y_pred: ArrayLike, *, sensitive_features: ArrayLike, min_group_size: int = 0
) -> float:
    """Max - min true positive rate across groups (binary labels)."""
    return _binary_gap("equal_opportunity_difference", y_true, y_pred, sensitive_features, min_group_size)


def accuracy_difference(
    y_true: ArrayLike, y_pred: ArrayLike, *, sensitive_features: ArrayLike, min_group_size: int = 0
) -> float:
    """Max - min accuracy across groups (any number of classes)."""
    return _gap("accuracy_difference", y_true, y_pred, sensitive_features, min_group_size)


def worst_group_accuracy(
    y_true: ArrayLike, y_pred: ArrayLike, *, sensitive_features: ArrayLike, min_group_size: int = 0
) -> float:
    """Lowest accuracy of any group (any number of classes)."""
    return _gap("worst_group_accuracy", y_true, y_pred, sensitive_features, min_group_size)


def tpr_gap_rms(
    y_true: ArrayLike, y_pred: ArrayLike, *, sensitive_features: ArrayLike, min_group_size: int = 0
) -> float:
    """Root mean square over classes of the across-group recall spread (any number of classes)."""
    return _gap("tpr_gap_rms", y_true, y_pred, sensitive_features, min_group_size)


def metric_frame(
    y_true: ArrayLike,
    y_pred: ArrayLike,
    *,
    sensitive_features: ArrayLike,
    y_prob: ArrayLike | None = None,
    min_group_size: int = 0,
) -> GroupResult:
    """`GroupStats.compute` result for arrays.

    y_true, y_pred (N,) integer class ids; sensitive_features (N,) or (N, K) hashable values (K columns are
    intersected, names joined with ","; groups in sorted order); y_prob (N,) probability of class 1 or
    (N, C) class probabilities, enables the ECE (with the confidence of the predicted class y_pred).
    C is y_prob's width, else max(2, largest label + 1). The gaps span the groups with at least
    ``min_group_size`` rows (default 0: all).
    """
    labels = as_ids("y_true", y_true)
    num_samples = labels.shape[0]
    preds = as_ids("y_pred", y_pred, num_samples)
    groups, names = _encode_groups(sensitive_features, num_samples)
    probs = None if y_prob is None else _probabilities(y_prob, num_samples)
    if probs is not None:
        num_classes = probs.shape[1]
    else:
        num_classes = max(2, int(max(labels.max(), preds.max())) + 1) if num_samples else 2
    stats = GroupStats(num_classes, len(names))
    confidence = None
    if probs is not None and num_samples:
        # Range-check before indexing, which would fail with a less helpful error on an out-of-range pred.
        low, high = int(preds.min()), int(preds.max())
        if low < 0 or high >= num_classes:
            raise ValueError(
                ERR_CLASS_RANGE.format(name="preds", num_classes=num_classes, low=low, high=high)
            )
        confidence = torch.from_numpy(probs[np.arange(num_samples), preds])
    stats.update(
        torch.from_numpy(labels),
        torch.from_numpy(groups),
        preds=torch.from_numpy(preds),
        confidence=confidence,
    )
    return stats.compute(names, min_group_size=min_group_size)


# helpers -----------------------------------------------------------------------------------------------


def _agg_suffix(agg: str) -> str:
    if agg not in AGG_CHOICES:
        raise ValueError(ERR_AGG.format(choices=", ".join(repr(c) for c in AGG_CHOICES), agg=agg))
    return "" if agg == "worst_case" else "_mean"


def _gap(
    gap: str, y_true: ArrayLike, y_pred: ArrayLike, sensitive_features: ArrayLike, min_group_size: int = 0
) -> float:
    """One gap of ``metric_frame`` over any number of classes."""
    return metric_frame(
        y_true, y_pred, sensitive_features=sensitive_features, min_group_size=min_group_size
    ).gaps[gap]


def _binary_gap(
    gap: str, y_true: ArrayLike, y_pred: ArrayLike, sensitive_features: ArrayLike, min_group_size: int = 0
) -> float:
    labels = _as_binary("y_true", y_true)
    preds = _as_binary("y_pred", y_pred, labels.shape[0])
    # C == 2 is forced even when one array holds a single class, so the binary gaps always exist.
    return _gap(gap, labels, preds, sensitive_features, min_group_size)


def _as_binary(name: str, values: ArrayLike, num_samples: int | None = None) -> np.ndarray:
    """`as_binary` without its sort of all N values when they are plainly 0/1: (N,) -> (N,) int64."""
    array = to_numpy(values)
    if array.ndim == 1 and array.dtype.kind in "biuf" and num_samples in (None, array.shape[0]):
        # Same test as as_binary's np.unique(array) subset of {0, 1}, in O(N); NaN fails both comparisons.
        if array.dtype.kind == "b" or ((array == 0) | (array == 1)).all():
            return array.astype(np.int64)
    # Anything else (wrong shape or length, other values or dtypes): as_binary accepts it or says why not.
    return as_binary(name, array, num_samples)


def _encode_groups(sensitive_features: ArrayLike, num_samples: int) -> tuple[np.ndarray, list[str]]:
    """(N,) or (N, K) hashable values -> group ids (N,) int64 and names, in sorted order like fairlearn.

    Same ids and names as ``np.unique`` of each column followed by ``np.unique(codes, axis=0)`` (rows in
    lexicographic order), without the row sort that dominated: each column is encoded in O(N) where its
    values allow (`_encode_column`), and the K codes are folded into one dense id column by column.
    """
    columns = _encode_string_frame(sensitive_features, num_samples)
    if columns is None:
        values = to_numpy(sensitive_features)
        if values.ndim == 1:
            values = values[:, None]
        if values.ndim != 2 or values.shape[0] != num_samples:
            raise ValueError(ERR_SENSITIVE_SHAPE.format(shape=values.shape))
        columns = [_encode_column(values[:, k]) for k in range(values.shape[1])]
    uniques, ids = columns[0]
    # keys (G, k): for each dense id, the code of each column folded so far, in increasing (lexicographic)
    # order of those code tuples, which is np.unique(axis=0)'s row order.
    keys = np.arange(len(uniques), dtype=np.int64)[:, None]
    for column_uniques, codes in columns[1:]:
        radix = len(column_uniques)
        # Mixed radix keeps the lexicographic order; after each fold the ids are dense (< N), so the
        # product stays below N * N and cannot overflow int64 for N < 3e9.
        combined, ids = _encode_ints(ids * radix + codes)
        keys = np.column_stack([keys[combined // radix], combined % radix])
    names = [",".join(str(columns[k][0][code]) for k, code in enumerate(key)) for key in keys.tolist()]
    return ids, names


def _encode_string_frame(features: ArrayLike, num_samples: int) -> list[tuple[np.ndarray, np.ndarray]] | None:
    """`_encode_column` of each column of a pandas Series / DataFrame of strings, without ``to_numpy``;
    None for anything else.

    ``DataFrame.to_numpy`` copies every row into one object array (most of the time for string columns);
    columns that hold only strings come out of it unchanged, so encoding each column in place gives the
    same classes and names. Other columns can change there (int and float columns become floats, missing
    strings NaN), so they take the ``to_numpy`` path.
    """
    if not (hasattr(features, "to_numpy") and hasattr(features, "iloc") and hasattr(features, "dtypes")):
        return None  # not pandas (checked without importing it)
    import pandas as pd  # installed with `datasets`

    if isinstance(features, pd.Series):
        columns = [features]
    elif isinstance(features, pd.DataFrame) and features.shape[1] > 0:
        columns = [features.iloc[:, k] for k in range(features.shape[1])]
    else:
        return None
    for column in columns:
        strings = isinstance(column.dtype, pd.StringDtype) or (
            column.dtype == object and pd.api.types.infer_dtype(column, skipna=False) == "string"
        )
        if len(column) != num_samples or not strings or column.isna().any():
            return None
    return [_factorize_strings(column) for column in columns]


def _factorize_strings(column: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """(N,) strings (numpy or pandas) -> (sorted unique values (U,) object, ids (N,) int64).

    Hashes the N values once, then sorts only the U distinct strings, where np.unique would sort all N
    objects. Strings compare exactly, so the classes and their order are np.unique's.
    """
    import pandas as pd

    codes, distinct = pd.factorize(column, use_na_sentinel=False)
    uniques, rank = np.unique(np.asarray(distinct, dtype=object), return_inverse=True)
    return uniques, rank.reshape(-1).astype(np.int64)[codes]


def _encode_column(column: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(N,) hashable values -> (sorted unique values (U,), ids (N,) int64), as ``np.unique(column,
    return_inverse=True)`` returns them."""
    if column.dtype.kind in "biu":
        return _encode_ints(column)
    if column.dtype.kind in "OU" and column.size:
        import pandas as pd  # installed with `datasets`; imported here to keep `import fairtune` light

        inferred = pd.api.types.infer_dtype(column, skipna=False)
        if inferred == "string":
            return _factorize_strings(column)
        if inferred in ("integer", "boolean") and column.dtype.kind == "O":
            # e.g. the int column of a DataFrame that also holds strings: str() of the values is unchanged.
            try:
                native = column.astype(np.int64 if inferred == "integer" else bool)
            except OverflowError:  # Python ints beyond int64: np.unique below handles them
                pass
            else:
                return _encode_ints(native)
    # Floats (NaN, -0.0), mixed objects: np.unique's own equality and order, at its cost.
    uniques, inverse = np.unique(column, return_inverse=True)
    return uniques, inverse.reshape(-1).astype(np.int64)


def _encode_ints(column: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(N,) bool or integer values -> (sorted unique values (U,), ids (N,) int64) like ``np.unique``.

    A lookup table over [min, max] when that range is at most max(N, 2**16) long: O(N), no sort.
    """
    if column.size == 0:
        return column[:0], np.zeros(0, dtype=np.int64)
    low, high = int(column.min()), int(column.max())
    span = high - low + 1
    if span > max(column.size, LOOKUP_MIN_SPAN):
        uniques, inverse = np.unique(column, return_inverse=True)
        return uniques, inverse.reshape(-1).astype(np.int64)
    # uint64 values may exceed int64; any other integer type fits in int64. Within [low, high] the
    # subtraction cannot overflow either way.
    wide = np.uint64 if column.dtype.kind == "u" else np.int64
    offset = (column.astype(wide) - wide(low)).astype(np.intp, copy=False)
    present = np.zeros(span, dtype=bool)
    present[offset] = True
    rank = np.cumsum(present, dtype=np.int64) - 1
    uniques = (np.flatnonzero(present).astype(wide) + wide(low)).astype(column.dtype)
    return uniques, rank[offset]


def _probabilities(y_prob: ArrayLike, num_samples: int) -> np.ndarray:
    """(N,) probability of class 1 or (N, C) probabilities -> (N, C) float64."""
    probs = to_numpy(y_prob)
    if probs.ndim == 1:
        probs = np.stack([1.0 - probs, probs], 1)
    if probs.ndim != 2 or probs.shape[0] != num_samples or probs.shape[1] < 2:
        raise ValueError(ERR_PROB_SHAPE.format(num_samples=num_samples, shape=tuple(probs.shape)))
    return as_probabilities("y_prob", probs)
