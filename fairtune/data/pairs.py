"""Counterfactual pairs as data: checks, a sampler that keeps pairs in one micro-batch, and their positions.

The convention (written by ``augment_counterfactual(..., pair_ids=True)`` and ``cda_corpus``): an integer
``pair_id`` column in which an original row and its counterfactual copy share one id, the ``counterfactual``
flag false on the original and true on the copy; a row without identity terms has an id of its own (a pair
of one). ``check_pairs`` checks a dataset against it, ``PairSampler`` orders the rows so that no micro-batch
boundary falls inside a pair, and ``pair_index`` finds the complete pairs of a batch for a consistency
penalty.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Sampler

from fairtune.data.counterfactual import FLAG_COLUMN, PAIR_COLUMN

ERR_NO_PAIR_COLUMN = (
    "The dataset has no {column!r} column (its columns: {columns}); write pair ids with "
    "augment_counterfactual(..., pair_ids=True) or cda_corpus(...)."
)
ERR_PAIR_VALUES = "Pair ids must be integers without missing values; got {values} (dtype {dtype})."
ERR_PAIR_TOO_MANY = (
    "pair_id {pair_id} occurs in {count} rows ({rows}); a pair holds at most two rows, an original and its "
    "counterfactual copy. Were datasets with overlapping ids concatenated?"
)
ERR_PAIR_MISSING = (
    "pair_id {pair_id}: the counterfactual copy in row {row} has no original ({count} such row(s)). Were "
    "rows dropped or subsetted after augmentation? Subset the data before augmenting it."
)
ERR_PAIR_FLAGS = (
    "pair_id {pair_id} holds rows {rows} whose {column!r} flags are both {flag}; a pair is one original "
    "(false) and its counterfactual copy (true)."
)
ERR_PAIR_UNPAIRED = (
    "pair_id {pair_id} (row {row}) has no partner, and every row must have one (require_partner=True): "
    "{count} row(s) are unpaired. Rows without identity terms have no copy; drop them (cda_corpus keeps "
    "only attribute sentences by default) or allow pairs of one."
)
ERR_BATCH_SIZE = (
    "PairSampler needs an even batch_size >= 2, the micro-batch of one process, so that no batch boundary "
    "falls inside a pair; got {batch_size!r}. Set per_device_train_batch_size to an even number."
)
ERR_PAIR_SHAPE = "pair_ids must be a 1-D sequence of integers, one per row; got shape {shape}."

_SHOWN_ROWS = 10  # rows an error names at most


class PairCounts(NamedTuple):
    """What ``check_pairs`` found: complete pairs (two rows each) and rows on their own."""

    pairs: int
    singles: int


def _as_ids(pair_ids: Any) -> np.ndarray:
    """(N,) int64 array of pair ids; anything else (None, floats with NaN, strings) is an error."""
    ids = pair_ids.detach().cpu().numpy() if isinstance(pair_ids, Tensor) else np.asarray(pair_ids)
    if ids.ndim != 1:
        raise ValueError(ERR_PAIR_SHAPE.format(shape=tuple(ids.shape)))
    if ids.size and not np.issubdtype(ids.dtype, np.integer):
        raise ValueError(ERR_PAIR_VALUES.format(values=ids[:5].tolist(), dtype=ids.dtype))
    return ids.astype(np.int64, copy=False)


def _members(ids: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(order, starts, counts)``: rows sorted by pair id (stably, so a pair lists its rows in dataset
    order), where each id's rows start in ``order`` and how many there are. Ids on more than two rows are an
    error naming the first such id and its rows."""
    order = np.argsort(ids, kind="stable")
    _, starts, counts = np.unique(ids[order], return_index=True, return_counts=True)
    if (counts > 2).any():
        k = int(np.argmax(counts > 2))
        rows = order[starts[k] : starts[k] + counts[k]].tolist()
        shown = rows[:_SHOWN_ROWS] + (["..."] if len(rows) > _SHOWN_ROWS else [])
        raise ValueError(
            ERR_PAIR_TOO_MANY.format(pair_id=int(ids[rows[0]]), count=int(counts[k]), rows=shown)
        )
    return order, starts, counts


def check_pairs(
    dataset: Any,
    require_partner: bool = False,
    pair_column: str = PAIR_COLUMN,
    flag_column: str = FLAG_COLUMN,
) -> PairCounts:
    """Check a dataset's pair ids (rows are positions in ``dataset``); raise a ``ValueError`` on the first
    problem, naming the pair id and its rows.

    Every id occurs on one row or two. Where the dataset has the ``counterfactual`` flag column, a pair of
    two must be one original (false) and one copy (true), and a copy alone is an error: its original is
    missing. An original whose copy is missing cannot be told from a row without identity terms (both are
    pairs of one), so ``require_partner=True`` asks for every row to have a partner (a corpus of attribute
    sentences only, say).

    Returns:
        The number of complete pairs and of rows on their own.
    """
    if pair_column not in dataset.column_names:
        raise ValueError(ERR_NO_PAIR_COLUMN.format(column=pair_column, columns=dataset.column_names))
    ids = _as_ids(dataset[pair_column])
    order, starts, counts = _members(ids)
    singles = order[starts[counts == 1]]
    if flag_column in dataset.column_names:
        flags = np.asarray(dataset[flag_column], dtype=bool)
        lonely_copies = singles[flags[singles]]
        if lonely_copies.size:
            row = int(lonely_copies[0])
            raise ValueError(
                ERR_PAIR_MISSING.format(pair_id=int(ids[row]), row=row, count=lonely_copies.size)
            )
        first, second = order[starts[counts == 2]], order[starts[counts == 2] + 1]
        same = flags[first] == flags[second]
        if same.any():
            k = int(np.argmax(same))
            rows = [int(first[k]), int(second[k])]
            raise ValueError(
                ERR_PAIR_FLAGS.format(
                    pair_id=int(ids[rows[0]]), rows=rows, column=flag_column, flag=bool(flags[rows[0]])
                )
            )
    if require_partner and singles.size:
        row = int(singles.min())
        raise ValueError(ERR_PAIR_UNPAIRED.format(pair_id=int(ids[row]), row=row, count=singles.size))
    return PairCounts(pairs=int((counts == 2).sum()), singles=int(singles.size))


class PairSampler(Sampler[int]):
    """Every row once per epoch, shuffled by pair, so that both members of a pair land in one micro-batch.

    A plain ``Sampler[int]`` (not a batch sampler), so ``Trainer``'s own ``DataLoader`` batches it with
    ``BatchSampler(sampler, batch_size)`` and accelerate shards those batches across processes as it shards a
    ``RandomSampler``'s: the trainer only overrides ``_get_train_sampler``, and ``drop_last``, gradient
    accumulation and ``skip_first_batches`` on resume work unchanged.

    The stream: the units (pairs and rows on their own) in a random order, a pair's two rows side by side.
    Rows on their own are emitted two at a time (the first waits for the next one), so every pair starts at
    an even position; with an even ``batch_size`` no boundary of a ``batch_size`` chunk falls inside a pair,
    and each batch holds only whole pairs (a last odd row on its own ends the epoch). An odd batch size could
    not keep pairs whole when every row is paired, so it is refused. With ``drop_last`` the rows dropped are
    whole units too. accelerate's sharding (``BatchSamplerShard``, ``split_batches=False``) gives each process
    whole batches, so whole pairs and no overlap; only at the end of an epoch, without ``drop_last``, it fills
    the last batches with rows from the start of the epoch, and a filled-in row may miss its partner
    (``pair_index`` then counts it as a row on its own). With ``split_batches=True`` a global batch is cut
    into ``num_processes`` pieces: pass the piece's size, which must be even as well.

    The order depends only on ``seed`` and the epoch, never on a global RNG, so every process draws the same
    sequence (as ``WeightedEpochSampler``). ``set_epoch`` (called by Trainer every epoch) picks the epoch;
    without it each new iteration advances one epoch.

    Args:
        pair_ids: (N,) integer pair id of each row (the dataset's ``pair_id`` column); an id on more than two
            rows is an error.
        batch_size: the micro-batch one process sees (``per_device_train_batch_size``); even.
        seed: base seed, e.g. ``TrainingArguments.seed``.
        shuffle: ``False`` keeps the units in the order of their first row (for evaluation, where pairs must
            also stay together but order should not change).
    """

    def __init__(
        self,
        pair_ids: Sequence[int] | Tensor | np.ndarray,
        batch_size: int,
        seed: int = 0,
        shuffle: bool = True,
    ):
        if (
            isinstance(batch_size, bool)
            or not isinstance(batch_size, int)
            or batch_size < 2
            or batch_size % 2
        ):
            raise ValueError(ERR_BATCH_SIZE.format(batch_size=batch_size))
        ids = _as_ids(pair_ids)
        order, starts, counts = _members(ids)
        # Units in the order of their first row, each a tuple of its rows (in dataset order).
        units = [tuple(order[s : s + c].tolist()) for s, c in zip(starts, counts, strict=True)]
        units.sort(key=lambda unit: unit[0])
        self.units = units
        self.num_rows = len(ids)
        self.batch_size = batch_size
        self.seed = seed
        self.shuffle = shuffle
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.num_rows

    def __iter__(self) -> Iterator[int]:
        if self.shuffle:
            generator = torch.Generator().manual_seed(self.seed + self.epoch)
            self.epoch += 1
            ranks = torch.randperm(len(self.units), generator=generator).tolist()
        else:
            ranks = range(len(self.units))
        waiting: int | None = None  # a row on its own, held until a second one keeps the stream even
        for rank in ranks:
            unit = self.units[rank]
            if len(unit) == 2:
                yield from unit
            elif waiting is None:
                waiting = unit[0]
            else:
                yield from (waiting, unit[0])
                waiting = None
        if waiting is not None:
            yield waiting


def pair_index(pair_ids: Tensor) -> tuple[Tensor, Tensor]:
    """Positions of the complete pairs inside a batch, for a consistency penalty.

    Args:
        pair_ids: (N,) integer pair ids of the batch's rows.

    Returns:
        ``(first, second)``, each (P,) long on ``pair_ids``' device: the positions of the first and second
        row of every id that occurs at least twice, in order of pair id. A row whose partner is not in the
        batch is left out. An id on more than two rows (only accelerate's end-of-epoch fill repeats rows)
        pairs its first two rows.
    """
    if pair_ids.dim() != 1:
        raise ValueError(ERR_PAIR_SHAPE.format(shape=tuple(pair_ids.shape)))
    order = torch.argsort(pair_ids, stable=True)
    ids = pair_ids[order]
    # A pair starts where an id equals the next one and differs from the previous one.
    same_as_next = ids[1:] == ids[:-1]
    starts_run = torch.ones_like(same_as_next)
    starts_run[1:] = ids[1:-1] != ids[:-2]
    start = torch.nonzero(same_as_next & starts_run).flatten()
    return order[start], order[start + 1]
