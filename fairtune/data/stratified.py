"""A group-stratified batch order: every micro-batch holds every training group (or group x label cell) in
proportion to its share of the training set.

With many groups and a small per-device batch, a random batch misses most groups, and a fairness penalty
sees a different set of groups at every step. ``GroupStratifiedSampler`` orders the rows so that each
consecutive chunk of ``batch_size`` indices is one stratified micro-batch. It is a plain ``Sampler[int]``, so
``Trainer``'s ``DataLoader`` batches it with ``BatchSampler(sampler, batch_size)`` and accelerate's
``BatchSamplerShard`` (``split_batches=False``) gives process r the batches r, r + W, r + 2W, ...: every
process gets whole stratified micro-batches, disjoint from the other processes' (within an epoch a row is
drawn again only when its stratum is exhausted, see below). The order depends on ``seed`` and the epoch only,
never on the rank or a global RNG, so every process computes the same sequence.

Allocation (counts of each stratum s of share p_s = n_s / N in a batch of B rows):

* B >= S (as many rows as strata): the same counts in every batch, by largest remainders of B p_s, with every
  stratum at least once (a stratum smaller than 1 / B of the data is therefore over-represented, and the
  largest strata give up the rows it takes);
* B < S: not every stratum fits; a carried-over quota rotates them: batch k gives stratum s the largest
  remainders of its cumulative quota (k + 1) B p_s minus the rows it already had, so over k batches every
  stratum gets within one row of its share, and a stratum of share p_s appears about every 1 / (B p_s)
  batches.

Rows within a stratum are drawn without replacement from a shuffle of the stratum; a stratum that a batch
order asks more rows of than it has (rounding up or the one-row minimum) starts a new shuffle, so its rows
repeat only after all of them were drawn. An epoch has ``floor(N / (B W)) * W`` micro-batches (at least W),
a multiple of the number of processes, so accelerate never pads the last batches with repeated rows; the
few rows left over are others in every epoch.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
from torch import Tensor
from torch.utils.data import Sampler

BATCH_SAMPLING = ("random", "group_stratified", "group_label_stratified")
ERR_BATCH_SAMPLING = "batch_sampling must be one of {valid}; got {value!r}."
ERR_STRATA = "strata must be a 1-D sequence of non-negative integer ids, one per row; got {what}."
ERR_STRATIFIED_BATCH = (
    "GroupStratifiedSampler needs batch_size >= 1 and num_replicas >= 1; got {batch}, {replicas}."
)
ERR_STRATIFIED_CONFLICT = (
    "batch_sampling: {mode} orders the training rows itself, so it cannot be combined with {other}; {fix}."
)


def allocate(shares: np.ndarray, batch_size: int, minimum: int = 0) -> np.ndarray:
    """Integer counts (S,) summing to ``batch_size``, proportional to ``shares`` (S,) by largest remainders,
    each at least ``minimum`` (``minimum * S <= batch_size``)."""
    quota = batch_size * shares / shares.sum()
    counts = np.maximum(np.floor(quota).astype(np.int64), minimum)
    while counts.sum() > batch_size:  # minimums took rows: take them back from the least deserving strata
        over = np.where(counts > minimum, counts - quota, -np.inf)
        counts[int(np.argmax(over))] -= 1
    remainder = quota - counts
    for s in np.argsort(-remainder, kind="stable")[: batch_size - counts.sum()]:
        counts[s] += 1
    return counts


def batch_counts(shares: np.ndarray, batch_size: int, num_batches: int) -> np.ndarray:
    """(num_batches, S) rows of each stratum in each batch (see the module docstring)."""
    num_strata = len(shares)
    if batch_size >= num_strata:
        return np.tile(allocate(shares, batch_size, minimum=1), (num_batches, 1))
    quota = batch_size * shares / shares.sum()
    given = np.zeros(num_strata)
    out = np.zeros((num_batches, num_strata), dtype=np.int64)
    for k in range(num_batches):
        due = np.maximum((k + 1) * quota - given, 0.0)  # what each stratum is owed so far
        out[k] = allocate(due + 1e-9, batch_size)  # tiny epsilon: an owed-nothing stratum stays allocatable
        given += out[k]
    return out


class GroupStratifiedSampler(Sampler[int]):
    """Row indices in stratified micro-batches of ``batch_size`` (see the module docstring).

    Args:
        strata: (N,) stratum id of each row: the training group id, or group id x num_labels + label.
        batch_size: the micro-batch of one process (``per_device_train_batch_size``).
        num_replicas: the number of processes W; an epoch has a multiple of W micro-batches.
        seed: base seed, e.g. ``TrainingArguments.seed`` (the same on every process).
    """

    def __init__(
        self,
        strata: Sequence[int] | Tensor | np.ndarray,
        batch_size: int,
        num_replicas: int = 1,
        seed: int = 0,
    ):
        ids = strata.detach().cpu().numpy() if isinstance(strata, Tensor) else np.asarray(strata)
        if ids.ndim != 1 or ids.size == 0 or not np.issubdtype(ids.dtype, np.integer) or ids.min() < 0:
            what = f"shape {tuple(ids.shape)}, dtype {ids.dtype}"
            raise ValueError(ERR_STRATA.format(what=what))
        for value in (batch_size, num_replicas):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(ERR_STRATIFIED_BATCH.format(batch=batch_size, replicas=num_replicas))
        values, codes = np.unique(ids, return_inverse=True)  # strata without rows take no part
        self.strata = values
        self.rows = [np.flatnonzero(codes == s) for s in range(len(values))]
        self.shares = np.array([len(r) for r in self.rows], dtype=np.float64) / len(ids)
        self.batch_size = batch_size
        self.num_replicas = num_replicas
        self.num_batches = max(1, len(ids) // (batch_size * num_replicas)) * num_replicas
        self.counts = batch_counts(self.shares, batch_size, self.num_batches)  # (num_batches, S)
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.num_batches * self.batch_size

    def batches(self, epoch: int) -> np.ndarray:
        """(num_batches, batch_size) row indices of one epoch."""
        rng = np.random.default_rng([self.seed, epoch])  # seed and epoch only: the same on every process
        batch_of, row_of = [], []
        for s, rows in enumerate(self.rows):
            need = int(self.counts[:, s].sum())
            cycles = -(-need // len(rows))  # new shuffles only when the stratum runs out
            stream = np.concatenate([rng.permutation(rows) for _ in range(cycles)])[:need]
            batch_of.append(np.repeat(np.arange(self.num_batches), self.counts[:, s]))
            row_of.append(stream)
        batch_ids, row_ids = np.concatenate(batch_of), np.concatenate(row_of)
        order = np.lexsort((rng.random(len(row_ids)), batch_ids))  # by batch, shuffled within it
        return row_ids[order].reshape(self.num_batches, self.batch_size)

    def __iter__(self) -> Iterator[int]:
        epoch = self.epoch
        self.epoch += 1  # without set_epoch, each new iteration is a new epoch
        yield from self.batches(epoch).reshape(-1).tolist()

    def __repr__(self) -> str:
        return (
            f"GroupStratifiedSampler(strata={len(self.strata)}, batch_size={self.batch_size}, "
            f"num_replicas={self.num_replicas}, batches={self.num_batches})"
        )


def check_batch_sampling(args: Any, mitigations: Any) -> None:
    """Refuse a stratified order combined with something else that orders or splits the training rows."""
    mode = args.batch_sampling
    if mode not in BATCH_SAMPLING:
        raise ValueError(ERR_BATCH_SAMPLING.format(valid=", ".join(BATCH_SAMPLING), value=mode))
    if mode == "random":
        return
    conflicts = [
        (
            mitigations.sampler_reweighter is not None,
            f"the reweighter in sampler mode ({mitigations.sampler_reweighter!r})",
            "use reweighting_mode: weights",
        ),
        (
            mitigations.needs_pairs,
            "a method that compares counterfactual pairs (its pair sampler keeps pairs in one micro-batch)",
            "use batch_sampling: random",
        ),
        (
            getattr(args, "train_sampling_strategy", "random") != "random",
            f"train_sampling_strategy: {getattr(args, 'train_sampling_strategy', None)}",
            "use train_sampling_strategy: random",
        ),
        (
            bool(getattr(getattr(args, "accelerator_config", None), "split_batches", False)),
            "accelerator_config.split_batches (a process would get a slice of a stratified batch)",
            "leave split_batches off",
        ),
    ]
    for conflict, other, fix in conflicts:
        if conflict:
            raise ValueError(ERR_STRATIFIED_CONFLICT.format(mode=mode, other=other, fix=fix))


def stratum_ids(groups: Tensor, labels: Tensor, num_labels: int, mode: str) -> Tensor:
    """(N,) stratum ids: the group id (``group_stratified``) or group x num_labels + label."""
    return groups if mode == "group_stratified" else groups * num_labels + labels


__all__ = [
    "BATCH_SAMPLING",
    "GroupStratifiedSampler",
    "allocate",
    "batch_counts",
    "check_batch_sampling",
    "stratum_ids",
]
