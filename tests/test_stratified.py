"""Group-stratified micro-batches (``batch_sampling``): proportions, disjoint shards, seeding, wiring.

* a planted distribution (shares 1/2, 1/4, 1/8, 1/8) gives exactly 4, 2, 1, 1 rows in every batch of 8;
* with more groups than rows (16 groups, batches of 8) the groups take turns and every group stays within
  one row of its share; with room for all, a tiny group still gets one row per batch;
* sharded by accelerate's ``BatchSamplerShard`` over W processes, every process gets whole stratified
  batches and one epoch over all processes has no row twice;
* same seed and epoch -> same order; other epoch or seed -> another order;
* through ``FairTrainer``: the training dataloader's batches are stratified; conflicts are refused; on 2 gloo
  processes (torchrun) each rank's batches are stratified and the ranks' rows do not overlap.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from accelerate.data_loader import BatchSamplerShard
from conftest import MLP, biased_tabular, fair_args
from test_distributed import _free_port, _torchrun
from torch.utils.data import BatchSampler

from fairtune import FairTrainer, FairTrainingArguments
from fairtune.config import _choice_fields
from fairtune.data.stratified import (
    BATCH_SAMPLING,
    ERR_STRATA,
    ERR_STRATIFIED_BATCH,
    ERR_STRATIFIED_CONFLICT,
    GroupStratifiedSampler,
    allocate,
    stratum_ids,
)

ROOT = Path(__file__).resolve().parent.parent


def counts_per_batch(batches: np.ndarray, strata: np.ndarray, num_strata: int) -> np.ndarray:
    """(num_batches, S) rows of each stratum in each batch."""
    return np.stack([np.bincount(strata[b], minlength=num_strata) for b in batches])


def test_planted_shares_give_exact_counts_in_every_batch():
    strata = np.repeat(np.arange(4), [400, 200, 100, 100])
    sampler = GroupStratifiedSampler(strata, batch_size=8, seed=3)
    batches = sampler.batches(0)
    assert batches.shape == (100, 8)
    assert (counts_per_batch(batches, strata, 4) == [4, 2, 1, 1]).all()
    assert len(np.unique(batches)) == 800  # exact shares: every row once, none twice
    assert list(sampler) == batches.reshape(-1).tolist()


def test_more_groups_than_rows_rotate_within_one_row_of_their_share():
    rng = np.random.default_rng(0)
    shares = rng.dirichlet(np.ones(16) * 2)
    strata = rng.choice(16, size=4000, p=shares)
    sampler = GroupStratifiedSampler(strata, batch_size=8, seed=0)
    counts = counts_per_batch(sampler.batches(0), strata, 16)
    assert (counts.sum(1) == 8).all()
    share = np.bincount(strata, minlength=16) / len(strata)
    given = counts.cumsum(0)
    owed = np.arange(1, len(counts) + 1)[:, None] * 8 * share
    assert np.abs(given - owed).max() < 1.0 + 1e-9  # never more than a row ahead or behind
    # Equal shares: every group appears in every two consecutive batches.
    equal = np.repeat(np.arange(16), 50)
    counts = counts_per_batch(GroupStratifiedSampler(equal, 8).batches(0), equal, 16)
    assert ((counts[0::2] + counts[1::2]) == 1).all()


def test_every_group_at_least_once_when_there_is_room():
    strata = np.repeat(np.arange(3), [985, 10, 5])  # shares 0.985, 0.01, 0.005
    counts = counts_per_batch(GroupStratifiedSampler(strata, 8, seed=1).batches(0), strata, 3)
    assert (counts == [6, 1, 1]).all()
    assert allocate(np.array([0.5, 0.3, 0.2]), 10).tolist() == [5, 3, 2]
    assert allocate(np.array([0.45, 0.35, 0.2]), 4).tolist() == [2, 1, 1]  # largest remainders


@pytest.mark.parametrize("world", [2, 3])
def test_shards_are_stratified_and_disjoint(world):
    strata = np.repeat(np.arange(4), [480, 240, 120, 120])
    sampler = GroupStratifiedSampler(strata, batch_size=8, num_replicas=world, seed=5)
    assert sampler.num_batches % world == 0
    seen = []
    for rank in range(world):
        # What accelerate gives process `rank` of Trainer's DataLoader (split_batches=False).
        shard = BatchSamplerShard(BatchSampler(sampler, 8, drop_last=False), world, rank, split_batches=False)
        sampler.set_epoch(0)
        batches = np.array(list(shard))
        assert len(batches) == sampler.num_batches // world
        assert (counts_per_batch(batches, strata, 4) == [4, 2, 1, 1]).all()
        seen.append(batches.reshape(-1))
    union = np.concatenate(seen)
    assert len(np.unique(union)) == len(union) == len(strata)  # a permutation of the epoch, no overlap


def test_same_seed_same_order_and_epochs_differ():
    strata = np.random.default_rng(0).integers(0, 5, 300)
    a, b = GroupStratifiedSampler(strata, 6, seed=7), GroupStratifiedSampler(strata, 6, seed=7)
    assert list(a) == list(b)
    assert list(a) == list(b)  # the second iteration: epoch 1 on both
    a.set_epoch(0)
    b.set_epoch(1)
    assert list(a) != list(b)
    assert not np.array_equal(GroupStratifiedSampler(strata, 6, seed=8).batches(0), a.batches(0))


def test_bad_input_is_refused():
    with pytest.raises(ValueError) as err:
        GroupStratifiedSampler(np.array([0.5, 1.0]), 4)
    assert str(err.value) == ERR_STRATA.format(what="shape (2,), dtype float64")
    with pytest.raises(ValueError) as err:
        GroupStratifiedSampler(np.array([0, 1]), 0)
    assert str(err.value) == ERR_STRATIFIED_BATCH.format(batch=0, replicas=1)


def test_stratum_ids_of_group_label_cells():
    groups, labels = torch.tensor([0, 0, 1, 1]), torch.tensor([0, 1, 0, 1])
    assert stratum_ids(groups, labels, 2, "group_stratified").tolist() == [0, 0, 1, 1]
    assert stratum_ids(groups, labels, 2, "group_label_stratified").tolist() == [0, 1, 2, 3]


def test_choices_match_the_config_field():
    assert tuple(_choice_fields(FairTrainingArguments)["batch_sampling"]) == BATCH_SAMPLING


@pytest.mark.parametrize("mode", ["group_stratified", "group_label_stratified"])
def test_trainer_dataloader_batches_are_stratified(tmp_path, mode):
    data = biased_tabular(400, groups=("A", "B", "C", "D"))
    trainer = FairTrainer(
        MLP(), fair_args(tmp_path, per_device_train_batch_size=8, batch_sampling=mode), train_dataset=data
    )
    assert isinstance(trainer._get_train_sampler(), GroupStratifiedSampler)
    train = trainer.train_dataset
    strata = stratum_ids(torch.tensor(train["group:sex"]), torch.tensor(train["labels"]), 2, mode).numpy()
    num_strata = int(strata.max()) + 1
    share = np.bincount(strata, minlength=num_strata) / len(strata)
    expected = allocate(share[share > 0], 8, minimum=1)
    for batch in trainer.get_train_dataloader():
        cells = stratum_ids(batch["group:sex"], batch["labels"], 2, mode).numpy()
        assert np.bincount(cells, minlength=num_strata)[share > 0].tolist() == expected.tolist()
    trainer.train()  # trains through it


def test_conflicts_are_refused_before_training(tmp_path):
    args = fair_args(
        tmp_path, batch_sampling="group_stratified", reweighting="balanced_group", reweighting_mode="sampler"
    )
    with pytest.raises(ValueError, match="reweighting_mode: weights") as err:
        FairTrainer(MLP(), args, train_dataset=biased_tabular(100))
    assert str(err.value).startswith(
        ERR_STRATIFIED_CONFLICT.split("{other}")[0].format(mode="group_stratified")
    )
    with pytest.raises(ValueError, match="batch_sampling"):
        fair_args(tmp_path, batch_sampling="stratified")


@pytest.mark.slow  # two torchrun processes: about 25 s, like tests/test_distributed.py
def test_two_gloo_processes_get_stratified_disjoint_batches(tmp_path):
    # The dataloader Trainer trains on, sharded by accelerate over 2 gloo ranks (tests/dist_stratified.py).
    cmd = [*_torchrun(), "--nnodes", "1", "--nproc_per_node", "2", "--master_addr", "127.0.0.1"]
    cmd += [
        "--master_port",
        str(_free_port()),
        str(ROOT / "tests" / "dist_stratified.py"),
        str(tmp_path / "out"),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    keys = []
    for rank in range(2):
        result = json.loads((tmp_path / f"out.rank{rank}.json").read_text())
        assert result["world"] == 2
        assert len(result["batches"]) == 384 // 8 // 2
        for batch in result["batches"]:
            assert sorted(Counter(batch["groups"]).values()) == [1, 1, 2, 4]  # shares 1/2, 1/4, 1/8, 1/8
            keys += batch["keys"]
    assert len(keys) == len(set(keys)) == 384  # one epoch over both ranks: every row once, no overlap
