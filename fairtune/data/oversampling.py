"""Oversampling of under-represented groups (or group x label cells) in a ``datasets.Dataset``.

One ``select`` call: the originals first, in order, then seeded duplicates, so every other column is kept.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable
from typing import Any

import numpy as np

from fairtune.groups import check_columns

logger = logging.getLogger(__name__)

ERR_EMPTY_DATASET = "The dataset is empty; oversampling needs rows."
ERR_TARGET_SHARE = "target_share must be in (0, 1); got {share!r}."
ERR_TARGET_IMPOSSIBLE = (
    "target_share={share!r} for each of {count} {what} asks for {total:.0%} of the dataset in all; it must "
    "be at most 1 / {count} = {limit:.4g}."
)


def oversample(
    dataset: Any,
    attribute: str,
    target_share: float | None = None,
    by_label: bool | None = None,
    label_column: str = "label",
    seed: int = 0,
) -> Any:
    """Duplicate random rows of under-represented groups until each reaches a target size.

    The cells are the values of ``attribute``, or its (value, label) combinations when ``by_label`` is true
    (``None`` means false). Only combinations that occur are cells: one with no rows cannot be filled, and
    is logged. Each cell below the target gets ``target - size`` rows drawn with replacement from its own
    rows (seeded); the originals come first, in order, and the duplicates after them (one
    ``Dataset.select``).

    The target is a row count ``t`` per cell:

    * ``target_share=None``: ``t`` is the largest cell's size, so all cells end equal.
    * ``target_share=s``: the smallest ``t`` with ``t >= s * N(t)``, where ``N(t) = sum(max(size, t))`` is
      the final size: every cell then holds at least ``s`` of the result; cells already above ``t`` are
      left as they are. It exists only when ``s * cells <= 1``.
    """
    if target_share is not None and (
        isinstance(target_share, bool)
        or not isinstance(target_share, (int, float))
        or not 0 < target_share < 1
    ):
        raise ValueError(ERR_TARGET_SHARE.format(share=target_share))
    columns = [attribute] + ([label_column] if by_label else [])
    # Absent columns are named; missing values would make a group of their own.
    check_columns(dataset, columns, split="given", what="oversample")
    if len(dataset) == 0:
        raise ValueError(ERR_EMPTY_DATASET)
    keys: Iterable[Any] = list(dataset[attribute])
    if by_label:
        keys = zip(keys, list(dataset[label_column]), strict=True)
    cells: dict[Any, list[int]] = {}
    for i, key in enumerate(keys):
        cells.setdefault(key, []).append(i)  # first-appearance order: deterministic for given data
    sizes = [len(rows) for rows in cells.values()]
    what = f"{attribute} x {label_column} cells" if by_label else f"{attribute} groups"
    if by_label:
        groups = dict.fromkeys(k[0] for k in cells)
        labels = dict.fromkeys(k[1] for k in cells)
        empty = [(g, y) for g in groups for y in labels if (g, y) not in cells]
        if empty:
            logger.warning("Oversampling: %s with no rows cannot be filled: %s", what, empty)

    if target_share is None:
        target = max(sizes)
    else:
        if target_share * len(cells) > 1 + 1e-9:
            raise ValueError(
                ERR_TARGET_IMPOSSIBLE.format(
                    share=target_share,
                    count=len(cells),
                    what=what,
                    total=target_share * len(cells),
                    limit=1 / len(cells),
                )
            )
        # Fixed point of t = ceil(s * N(t)): t only grows, and stops by max(sizes) since s * cells <= 1.
        target = math.ceil(target_share * len(dataset) - 1e-9)
        while True:
            new = math.ceil(target_share * sum(max(n, target) for n in sizes) - 1e-9)
            if new <= target:
                break
            target = new

    rng = np.random.default_rng(seed)
    extra: list[int] = []
    for rows in cells.values():
        if len(rows) < target:
            extra += rng.choice(rows, size=target - len(rows), replace=True).tolist()
    result = dataset.select(list(range(len(dataset))) + extra)
    logger.info(
        "Oversampling by %s: %d -> %d rows; %d duplicates added to %d of %d cells (target %d rows each%s).",
        what,
        len(dataset),
        len(result),
        len(extra),
        sum(n < target for n in sizes),
        len(cells),
        target,
        f", share {target_share}" if target_share is not None else "",
    )
    return result
