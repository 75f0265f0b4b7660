"""Counterfactual consistency: logit pairing and LM divergences against hand computations, the alignment
rule, the trainer's pair wiring, and the effect on a classifier that leans on the group."""

from __future__ import annotations

import math
import re

import datasets
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import MLP, fair_args

import fairtune.mitigation as M
from fairtune import FairTrainer
from fairtune.data.pairs import PairSampler
from fairtune.mitigation.consistency import ERR_NO_PAIRS
from fairtune.trainer import ERR_PAIRS_MISSING


def _batch(logits, pair_ids, input_ids=None, attention_mask=None):
    n = logits.shape[0]
    labels = torch.zeros(n, dtype=torch.long)
    return M.PenaltyBatch(
        logits,
        labels,
        torch.zeros(n, dtype=torch.long),
        1,
        torch.zeros(n),
        pair_ids,
        input_ids,
        attention_mask,
    )


def test_logit_pairing_is_the_mean_absolute_logit_difference_of_complete_pairs():
    logits = torch.tensor([[0.0, 1.0], [0.5, -1.0], [2.0, 2.0], [1.0, 1.0], [3.0, 0.0]], requires_grad=True)
    pair_ids = torch.tensor([7, 3, 7, 3, 9])  # pairs (0, 2) and (1, 3); row 4 has no partner in the batch
    value = M.CounterfactualConsistency()(_batch(logits, pair_ids))
    expected = ((2.0 + 1.0) / 2 + (0.5 + 2.0) / 2) / 2
    assert value.item() == pytest.approx(expected)
    value.backward()
    assert logits.grad[4].abs().sum() == 0 and logits.grad[:4].abs().sum() > 0
    alone = M.CounterfactualConsistency()(_batch(logits, torch.tensor([1, 2, 3, 4, 5])))
    assert alone.item() == 0.0 and alone.requires_grad  # no pair: zero, graph kept
    with pytest.raises(ValueError, match=re.escape(ERR_NO_PAIRS)):
        M.CounterfactualConsistency()(_batch(logits, None))


@pytest.mark.parametrize("divergence", ["js", "symmetric_kl"])
def test_lm_divergence_compares_next_token_distributions_on_the_shared_suffix(divergence):
    gen = torch.Generator().manual_seed(0)
    vocab = 6
    # "she is a nurse here" vs "he is a nurse here" with different lengths and padding sides:
    # row 0: [5, 1, 2, 3, 4] right-aligned in 7 slots (left padding); row 1: [0, 0, 1, 2, 3, 4] right padding.
    input_ids = torch.tensor([[9, 9, 5, 1, 2, 3, 4], [0, 0, 1, 2, 3, 4, 9]])
    attention_mask = torch.tensor([[0, 0, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1, 0]])
    logits = torch.randn(2, 7, vocab, generator=gen)
    value = M.CounterfactualConsistency(divergence=divergence)(
        _batch(logits, torch.tensor([4, 4]), input_ids, attention_mask)
    )
    # Shared suffix: [1, 2, 3, 4] (length 4). The positions predicting its tokens: row 0 slots 2..5,
    # row 1 slots 1..4 (the token before each suffix token).
    p = logits[0, 2:6].log_softmax(-1)
    q = logits[1, 1:5].log_softmax(-1)

    def kl(a, b):
        return (a.exp() * (a - b)).sum(-1)

    if divergence == "js":
        m = ((p.exp() + q.exp()) / 2).log()
        expected = (0.5 * kl(p, m) + 0.5 * kl(q, m)).mean()
    else:
        expected = ((kl(p, q) + kl(q, p)) / 2).mean()
    assert value.item() == pytest.approx(expected.item(), rel=1e-5)
    # Identical distributions at the aligned positions: no divergence.
    same = logits.clone()
    same[1, 1:5] = same[0, 2:6]
    zero = M.CounterfactualConsistency(divergence=divergence)(
        _batch(same, torch.tensor([4, 4]), input_ids, attention_mask)
    )
    assert zero.item() == pytest.approx(0.0, abs=1e-6)


def _pairs_data(n: int, seed: int, copies: bool = True) -> datasets.Dataset:
    """The label depends on the group feature (column 3); each row's copy flips only that feature."""
    rng = np.random.default_rng(seed)
    g = rng.integers(0, 2, n)
    x = rng.normal(size=(n, 4)).astype(np.float32)
    x[:, 3] = g
    y = (x[:, 0] + 1.5 * g + 0.3 * rng.normal(size=n) > 0.75).astype(int)
    rows = {"features": x.tolist(), "labels": y.tolist(), "sex": np.where(g, "M", "F").tolist()}
    rows["pair_id"] = list(range(n))
    rows["counterfactual"] = [False] * n
    if copies:
        flipped = x.copy()
        flipped[:, 3] = 1 - g
        rows["features"] += flipped.tolist()
        rows["labels"] += y.tolist()
        rows["sex"] += np.where(g, "F", "M").tolist()
        rows["pair_id"] += list(range(n))
        rows["counterfactual"] += [True] * n
    return datasets.Dataset.from_dict(rows)


def _mean_pair_gap(model, data) -> float:
    x = torch.tensor(data["features"])
    n = len(data) // 2
    with torch.no_grad():
        logits = model(x)
    return (logits[:n] - logits[n:]).abs().mean().item()


def test_consistency_shrinks_the_counterfactual_gap_of_a_classifier(tmp_path):
    def train(mitigations, copies=True):
        torch.manual_seed(0)
        model = MLP()
        options = dict(num_train_epochs=6, per_device_train_batch_size=32, logging_steps=20)
        args = fair_args(tmp_path, overwrite_output_dir=True, **options)
        data = _pairs_data(600, 0, copies)
        trainer = FairTrainer(model, args, train_dataset=data, mitigations=mitigations)
        trainer.train()
        return model, trainer

    plain, _ = train([], copies=False)
    augmented, _ = train([])
    fair, trainer = train([M.CounterfactualConsistency(weight=5.0)])
    assert isinstance(trainer._get_train_sampler(), PairSampler)
    test = _pairs_data(400, 1)
    gaps = [_mean_pair_gap(m, test) for m in (plain, augmented, fair)]
    assert gaps[0] > 0.5, gaps  # the planted bias: the model leans on the group feature
    assert gaps[2] <= 0.5 * gaps[1], gaps  # consistency goes beyond what the counterfactual copies do
    logs = [h for h in trainer.state.log_history if "penalty/counterfactual_consistency" in h]
    assert logs and all(math.isfinite(h["penalty/counterfactual_consistency"]) for h in logs)


def test_pairs_stay_together_in_training_batches_and_broken_pairs_are_refused(tmp_path):
    data = _pairs_data(64, 0)
    args = fair_args(tmp_path, per_device_train_batch_size=8)
    trainer = FairTrainer(MLP(), args, train_dataset=data, mitigations=[M.CounterfactualConsistency()])
    for batch in trainer.get_train_dataloader():
        ids = batch["pair_id"]
        assert all((ids == i).sum() == 2 for i in ids.unique())  # both rows of every pair in the batch
    method = M.CounterfactualConsistency()
    message = ERR_PAIRS_MISSING.format(method=method, column="pair_id")
    with pytest.raises(ValueError, match=re.escape(message)):
        FairTrainer(MLP(), args, train_dataset=data.remove_columns("pair_id"), mitigations=[method])
    broken = data.select([i for i in range(len(data)) if i != 6])  # the original of pair 6 is gone
    with pytest.raises(ValueError, match="pair_id 6: the counterfactual copy"):
        FairTrainer(MLP(), args, train_dataset=broken, mitigations=[method])
    with pytest.raises(ValueError, match="needs counterfactual pairs in one micro-batch"):
        FairTrainer(MLP(), args, train_dataset=data, mitigations=[method, M.KamiranCalders(mode="sampler")])


def test_js_matches_torch_kl_div():
    gen = torch.Generator().manual_seed(1)
    p, q = torch.randn(3, 5, generator=gen).log_softmax(-1), torch.randn(3, 5, generator=gen).log_softmax(-1)
    m = ((p.exp() + q.exp()) / 2).log()
    js = 0.5 * F.kl_div(m, p, log_target=True, reduction="none").sum(-1)
    js += 0.5 * F.kl_div(m, q, log_target=True, reduction="none").sum(-1)
    assert js.max().item() <= math.log(2) + 1e-6
