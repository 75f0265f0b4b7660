import re

import datasets
import numpy as np
import pytest
import torch
from torch.utils.data import BatchSampler

from fairtune.data.pairs import (
    ERR_BATCH_SIZE,
    ERR_NO_PAIR_COLUMN,
    ERR_PAIR_FLAGS,
    ERR_PAIR_MISSING,
    ERR_PAIR_TOO_MANY,
    ERR_PAIR_UNPAIRED,
    ERR_PAIR_VALUES,
    PairSampler,
    check_pairs,
    pair_index,
)


def literal(template: str) -> str:
    return re.escape(max(re.split(r"\{[^}]*\}", template), key=len))


def table(ids, flags=None):
    columns = {"text": [f"row {i}" for i in range(len(ids))], "pair_id": ids}
    if flags is not None:
        columns["counterfactual"] = flags
    return datasets.Dataset.from_dict(columns)


def test_check_pairs_counts_pairs_and_singles():
    assert check_pairs(table([0, 1, 2, 0, 2], [False, False, False, True, True])) == (2, 1)
    assert check_pairs(table([7, 7, 3, 3])) == (2, 0)  # without flags: ids only
    assert check_pairs(table([7, 7, 3, 3]), require_partner=True) == (2, 0)


@pytest.mark.parametrize(
    "ids, flags, require, template, named",
    [
        ([0, 1, 0, 0], None, False, ERR_PAIR_TOO_MANY, "pair_id 0 occurs in 3 rows ([0, 2, 3])"),
        (
            [0, 1, 2, 1],
            [False, False, True, True],
            False,
            ERR_PAIR_MISSING,
            "pair_id 2: the counterfactual copy in row 2",
        ),
        ([0, 1, 0, 1], [False, False, False, True], False, ERR_PAIR_FLAGS, "pair_id 0 holds rows [0, 2]"),
        ([0, 1, 0, 1], [True, False, True, True], False, ERR_PAIR_FLAGS, "are both True"),
        ([0, 1, 0, 5], [False, False, True, False], True, ERR_PAIR_UNPAIRED, "pair_id 1 (row 1)"),
        ([0, 1, 0, 5], None, True, ERR_PAIR_UNPAIRED, "2 row(s) are unpaired"),
    ],
)
def test_check_pairs_errors_name_the_id_and_rows(ids, flags, require, template, named):
    with pytest.raises(ValueError, match=literal(template)) as err:
        check_pairs(table(ids, flags), require_partner=require)
    assert named in str(err.value)


def test_check_pairs_bad_columns():
    with pytest.raises(ValueError, match=literal(ERR_NO_PAIR_COLUMN)):
        check_pairs(table([0, 1]).remove_columns("pair_id"))
    with pytest.raises(ValueError, match=literal(ERR_PAIR_VALUES)):
        check_pairs(table([0, None]))
    with pytest.raises(ValueError, match=literal(ERR_PAIR_VALUES)):
        check_pairs(table([0.0, 1.5]))


def paired_ids(pairs: int, singles: int) -> list[int]:
    """Pairs as augment_counterfactual writes them: originals 0..n-1, copies appended (far from them)."""
    return list(range(pairs + singles)) + list(range(pairs))


def test_sampler_every_row_once_deterministic_by_seed_and_epoch():
    ids = paired_ids(20, 7)
    sampler = PairSampler(ids, batch_size=4, seed=3)
    sampler.set_epoch(2)
    first = list(sampler)
    assert sorted(first) == list(range(len(ids))) and len(sampler) == len(ids)
    sampler.set_epoch(2)
    assert list(sampler) == first
    assert list(PairSampler(ids, batch_size=8, seed=3, shuffle=True).__iter__()) != first  # epoch 0
    again = PairSampler(ids, batch_size=8, seed=3)
    again.set_epoch(2)
    assert list(again) == first  # the batch size does not change the order; only seed + epoch do
    assert list(sampler) != first  # without set_epoch, the next iteration is the next epoch
    torch.manual_seed(0)
    a = list(PairSampler(ids, 4, seed=1))
    torch.manual_seed(1)
    assert list(PairSampler(ids, 4, seed=1)) == a  # no global RNG


@pytest.mark.parametrize(
    "batch_size, drop_last", [(2, False), (4, False), (6, True), (10, False), (10, True)]
)
def test_sampler_keeps_pairs_in_one_batch(batch_size, drop_last):
    ids = np.array(paired_ids(25, 9))
    for epoch in range(3):
        sampler = PairSampler(ids, batch_size, seed=11)
        sampler.set_epoch(epoch)
        batches = list(BatchSampler(sampler, batch_size, drop_last=drop_last))
        seen = [i for b in batches for i in b]
        assert len(seen) == len(set(seen))
        if drop_last:
            assert all(len(b) == batch_size for b in batches)
            assert len(seen) == len(ids) // batch_size * batch_size
        else:
            assert sorted(seen) == list(range(len(ids)))
        for batch in batches:
            present = ids[batch]
            for row in batch:  # a paired row's partner is in the same batch
                partners = np.flatnonzero(ids == ids[row])
                assert set(partners) <= set(batch), (batch, row)
            assert len(present) == len(batch)
        # with drop_last, the rows dropped are whole pairs too
        dropped = set(range(len(ids))) - set(seen)
        assert all(set(np.flatnonzero(ids == ids[r])) <= dropped for r in dropped)


def test_sampler_without_shuffle_keeps_units_in_order():
    ids = [0, 1, 2, 0, 2, 3]  # rows 1 and 5 are on their own: row 1 waits for row 5, so pairs stay even
    assert list(PairSampler(ids, 2, shuffle=False)) == [0, 3, 2, 4, 1, 5]
    assert list(PairSampler([4, 4, 9], 2, shuffle=False)) == [0, 1, 2]


@pytest.mark.parametrize("batch_size", [0, 1, 3, 7, 2.0, True])
def test_sampler_refuses_a_batch_size_that_splits_pairs(batch_size):
    with pytest.raises(ValueError, match=literal(ERR_BATCH_SIZE)) as err:
        PairSampler([0, 0, 1, 1], batch_size)
    assert repr(batch_size) in str(err.value)


def test_sampler_refuses_ids_on_more_than_two_rows():
    with pytest.raises(ValueError, match=literal(ERR_PAIR_TOO_MANY)):
        PairSampler([0, 1, 1, 1], 2)


@pytest.mark.parametrize("drop_last", [False, True])
def test_sampler_shards_whole_pairs_across_processes_without_overlap(drop_last):
    from accelerate.data_loader import BatchSamplerShard

    ids = np.array(paired_ids(30, 11))  # 71 rows: the last batch is short and the shards need filling
    batch_size = 6
    sampler = PairSampler(ids, batch_size, seed=5)
    sampler.set_epoch(1)
    single = list(BatchSampler(sampler, batch_size, drop_last=drop_last))
    shards = []
    for rank in range(2):
        own = PairSampler(ids, batch_size, seed=5)  # each process's own sampler, same seed and epoch
        own.set_epoch(1)
        batches = BatchSampler(own, batch_size, drop_last=drop_last)
        shards.append(list(BatchSamplerShard(batches, num_processes=2, process_index=rank)))
    assert len(shards[0]) == len(shards[1])
    interleaved = [b for pair in zip(*shards, strict=True) for b in pair]
    flat = [i for b in interleaved for i in b]
    expected = [i for b in single for i in b]
    # One shared sequence, split batch by batch (with drop_last, accelerate also drops the batches that not
    # every process would get: here 11 full batches -> 5 each).
    real = len(flat) if drop_last else len(ids)
    assert flat[:real] == expected[:real] and (len(flat) == 60 if drop_last else len(flat) > len(ids))
    assert len(set(flat[:real])) == real  # no row on two processes (before accelerate's end-of-epoch fill)
    for rank, shard in enumerate(shards):
        for number, batch in enumerate(shard):
            start = (number * 2 + rank) * batch_size
            if start + batch_size > real:
                continue  # the batch accelerate fills with rows from the start of the epoch
            for row in batch:
                assert set(np.flatnonzero(ids == ids[row])) <= set(batch)


def test_pair_index_finds_complete_pairs():
    first, second = pair_index(torch.tensor([5, 3, 5, 7, 3, 9]))
    assert first.tolist() == [1, 0] and second.tolist() == [4, 2]  # ids 3 and 5, in id order
    first, second = pair_index(torch.tensor([2, 8, 2, 2]))  # a repeated row (accelerate's fill)
    assert first.tolist() == [0] and second.tolist() == [2]
    for empty in (torch.tensor([1, 2, 3]), torch.tensor([4]), torch.tensor([], dtype=torch.long)):
        first, second = pair_index(empty)
        assert first.numel() == second.numel() == 0 and first.dtype == torch.long
    # the positions select the two halves of each pair from a batch's outputs
    ids = torch.tensor([0, 1, 0, 1])
    logits = torch.tensor([[1.0], [2.0], [1.5], [4.0]])
    first, second = pair_index(ids)
    assert (logits[first] - logits[second]).abs().mean().item() == pytest.approx((0.5 + 2.0) / 2)
