"""What the stereotype benchmarks share: seeded subsets, bootstrap intervals and category names."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

ERR_MAX_EXAMPLES = "max_examples must be a positive integer or None, got {value!r}."
ERR_UNKNOWN_CATEGORY = "{benchmark} has no category {name!r}; valid: {valid}."
ERR_NO_EXAMPLES = "{benchmark}: no examples left to score (categories {categories})."


@dataclass(frozen=True)
class Interval:
    """A percentile bootstrap interval of a statistic."""

    low: float
    high: float
    confidence: float

    def to_list(self) -> list[float]:
        return [self.low, self.high]


def subset_indices(n: int, max_examples: int | None, seed: int) -> np.ndarray:
    """Indices of a seeded random subset of ``n`` items, in their original order (all when ``None``).

    The same ``(n, max_examples, seed)`` always picks the same items, in every process, so a score monitored
    during training compares like with like across evaluations and ranks.
    """
    if max_examples is not None and (isinstance(max_examples, bool) or max_examples < 1):
        raise ValueError(ERR_MAX_EXAMPLES.format(value=max_examples))
    if max_examples is None or max_examples >= n:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size=max_examples, replace=False))


def bootstrap_interval(
    columns: Sequence[np.ndarray],
    statistic: Callable[..., float],
    n_resamples: int,
    confidence: float,
    seed: int,
) -> Interval | None:
    """Percentile bootstrap interval of ``statistic(*columns)`` over rows resampled with replacement.

    Args:
        columns: arrays of one length N, resampled together (row i of each stays together).
        statistic: maps the resampled columns to a number.
        n_resamples: number of resamples R; 0 gives ``None``.

    Cost: R evaluations of ``statistic`` on N rows (vectorised numpy, well under a second for R=1000).
    """
    n = len(columns[0])
    if n_resamples <= 0 or n == 0:
        return None
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, size=(n_resamples, n))
    values = np.array([statistic(*(c[row] for c in columns)) for row in idx])
    alpha = (1.0 - confidence) / 2.0
    low, high = np.quantile(values, [alpha, 1.0 - alpha])
    return Interval(float(low), float(high), confidence)


def resolve_categories(
    benchmark: str, requested: Sequence[str] | None, available: Sequence[str], aliases: dict[str, str]
) -> dict[str, str]:
    """Map requested category names (the data's own, or a common alias such as ``gender``) to the data's.

    Returns ``{name as requested: name in the data}``; every category when ``requested`` is None.
    """
    if requested is None:
        return {c: c for c in available}
    out = {}
    for name in requested:
        target = name if name in available else aliases.get(name)
        if target not in available:
            valid = sorted({*available, *(a for a, t in aliases.items() if t in available)})
            raise ValueError(
                ERR_UNKNOWN_CATEGORY.format(benchmark=benchmark, name=name, valid=", ".join(valid))
            )
        out[name] = target
    return out


def pct(mask: np.ndarray) -> float:
    """100 x the share of True in ``mask`` (N,); NaN for N = 0."""
    return float(100.0 * mask.mean()) if len(mask) else float("nan")
