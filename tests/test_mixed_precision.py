"""Penalties under mixed precision, and a fuzz test for NaN / inf.

* Under ``torch.autocast("cpu", dtype=torch.bfloat16)`` every built-in penalty returns a float32 value close
  to the float32 computation; the group sums are float32 (without autocast switched off inside they ran as
  bf16 matmuls: a count of 4097 became 4096 and an l2_dev spread read 0.7071 instead of 0.7069);
* over random batches (absent groups, groups of one row, one-row batches, logits up to +-1e4, bf16 logits,
  2 and 3 classes) no penalty, with or without running statistics, gives a NaN or inf value or gradient:
  1,000 batches per penalty variant (10,000 in all) in the default run, 10,000 per variant with
  ``pytest -m extended``.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import fairtune.mitigation as M
from fairtune.mitigation.penalties import PenaltyBatch

# (name, factory): every built-in penalty, the rate penalties also with running statistics.
PENALTIES = {
    "demographic_parity": lambda: M.DemographicParity(),
    "equal_opportunity": lambda: M.EqualOpportunity(spread="mean_abs_dev"),
    "equalized_odds": lambda: M.EqualizedOdds(spread="l2_dev"),
    "loss_parity": lambda: M.LossParity(),
    "mindiff": lambda: M.MinDiff(),
    "mindiff_negatives": lambda: M.MinDiff(labels=[0]),
    "demographic_parity_ema": lambda: M.DemographicParity(running="ema", momentum=0.9),
    "equal_opportunity_window": lambda: M.EqualOpportunity(running="window", window=4, spread="l2_dev"),
    "equalized_odds_ema": lambda: M.EqualizedOdds(running="ema", spread="mean_abs_dev"),
    "loss_parity_window": lambda: M.LossParity(running="window", window=3, rescale=False),
}
FUZZ_BATCHES = 10_000


def batch_of(
    logits: torch.Tensor, labels: torch.Tensor, groups: torch.Tensor, num_groups: int
) -> PenaltyBatch:
    # The trainer's per-sample loss: cross-entropy in float32 (FairTrainer.per_sample_loss).
    losses = F.cross_entropy(logits.float(), labels, reduction="none")
    return PenaltyBatch(logits, labels, groups, num_groups, losses)


@pytest.mark.parametrize("name", list(PENALTIES))
@pytest.mark.parametrize("num_classes", [2, 3])
def test_penalty_is_float32_under_bf16_autocast(name, num_classes):
    gen = torch.Generator().manual_seed(0)
    n, num_groups = 256, 4
    x = torch.randn(n, 16, generator=gen)
    weight = torch.randn(16, num_classes, generator=gen)
    labels = torch.randint(0, num_classes, (n,), generator=gen)
    groups = torch.randint(0, num_groups, (n,), generator=gen)
    expected = PENALTIES[name]()(batch_of(x @ weight, labels, groups, num_groups))
    penalty = PENALTIES[name]()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = x @ weight  # bf16, as a model's head gives under autocast
        assert logits.dtype == torch.bfloat16
        value = penalty(batch_of(logits, labels, groups, num_groups))
    assert value.dtype == torch.float32
    # The only difference left is the bf16 rounding of the logits themselves (about 3 significant digits).
    assert value.item() == pytest.approx(expected.item(), rel=2e-2, abs=2e-3)


def test_group_sums_are_not_rounded_to_bf16_under_autocast():
    # 4097 rows of probability 1 in one group: the count 4097 is not a bf16 number (bf16 rounds it to 4096),
    # so a rate computed from bf16 sums is off; with the sums in float32 both groups' rates are exact.
    n = 4097
    logits = torch.cat([torch.full((n, 1), -30.0), torch.full((n, 1), 30.0)], 1)
    logits = torch.cat([logits, torch.tensor([[30.0, -30.0]])])
    groups = torch.cat([torch.zeros(n, dtype=torch.long), torch.ones(1, dtype=torch.long)])
    labels = torch.zeros(n + 1, dtype=torch.long)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        value = M.DemographicParity(spread="l2_dev")(batch_of(logits, labels, groups, 2))
    overall = n / (n + 1)
    expected = ((1 - overall) ** 2 / 2 + overall**2 / 2) ** 0.5
    assert value.dtype == torch.float32
    assert value.item() == pytest.approx(expected, rel=1e-6)


def random_batch(gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int, torch.dtype]:
    """One adversarial batch: (logits (n, C) leaf, labels (n,), groups (n,), G, dtype)."""
    n = int(torch.randint(1, 9, (1,), generator=gen))
    num_classes = int(torch.randint(2, 4, (1,), generator=gen))
    num_groups = 4
    # Groups drawn from a random subset: often absent groups, groups of one row, a single group.
    present = torch.randperm(num_groups, generator=gen)[
        : int(torch.randint(1, num_groups + 1, (1,), generator=gen))
    ]
    groups = present[torch.randint(0, len(present), (n,), generator=gen)]
    labels = torch.randint(0, num_classes, (n,), generator=gen)
    if torch.rand(1, generator=gen) < 0.2:
        labels = torch.full((n,), int(labels[0]))  # one class only: undefined TPR or FPR cells
    scale = float([1.0, 30.0, 1e4][int(torch.randint(0, 3, (1,), generator=gen))])
    logits = torch.randn(n, num_classes, generator=gen) * scale
    if torch.rand(1, generator=gen) < 0.2:
        logits = torch.sign(logits) * 1e4  # saturated: probabilities of exactly 0 and 1, ties
    dtype = torch.bfloat16 if torch.rand(1, generator=gen) < 0.5 else torch.float32
    return logits, labels, groups, num_groups, dtype


def fuzz(name: str, num_batches: int) -> None:
    gen = torch.Generator().manual_seed(sum(map(ord, name)))
    # One penalty object per number of classes, so running statistics keep one (G, K) shape over the stream.
    penalties = {2: PENALTIES[name](), 3: PENALTIES[name]()}
    for i in range(num_batches // 50):
        leaves, values = [], []
        for _ in range(50):  # one backward per 50 batches; each batch has its own leaf
            logits, labels, groups, num_groups, dtype = random_batch(gen)
            leaf = logits.to(dtype).requires_grad_()
            leaves.append(leaf)
            values.append(penalties[leaf.shape[1]](batch_of(leaf, labels, groups, num_groups)))
        stacked = torch.stack(values)
        assert stacked.dtype == torch.float32
        assert torch.isfinite(stacked).all(), (i, stacked)
        stacked.sum().backward()
        for leaf in leaves:
            assert leaf.grad is None or torch.isfinite(leaf.grad.float()).all(), (i, leaf, leaf.grad)
    if penalties[2].stateful:  # the running sums went through the whole stream
        assert penalties[2].running.updates + penalties[3].running.updates == num_batches


@pytest.mark.parametrize("name", list(PENALTIES))
def test_fuzz_no_nan_or_inf_in_value_or_gradient(name, one_thread):
    # 10 variants x 1,000 batches: 10,000 random batches in the fast suite (about 2 ms each on one core).
    fuzz(name, FUZZ_BATCHES // len(PENALTIES))


@pytest.mark.extended
@pytest.mark.parametrize("name", list(PENALTIES))
def test_fuzz_every_penalty_on_ten_thousand_batches(name, one_thread):
    fuzz(name, FUZZ_BATCHES)
