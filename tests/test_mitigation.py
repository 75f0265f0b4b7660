"""Mitigation methods: penalty contracts and formulas, reweighting, sampling, GroupDRO, adversary, and their
effect on synthetic data with a planted group bias (each method against the unmitigated run, same seed)."""

from __future__ import annotations

import math
import re

import datasets
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import MLP, biased_tabular, fair_args, text_dataset, tiny_bert
from torch import nn

import fairtune.mitigation as M
from fairtune import FairTrainer, FairTrainingArguments
from fairtune.mitigation.combined import ERR_MITIGATION_TWICE, ERR_REGRESSION_HEAD, WARN_STATE_RESET
from fairtune.mitigation.registry import ERR_UNKNOWN_METHOD
from fairtune.trainer import MITIGATION_STATE_FILE

PENALTIES = [M.DemographicParity, M.EqualOpportunity, M.EqualizedOdds, M.LossParity, M.MinDiff]


# ----- synthetic data with planted biases --------------------------------------------------------------
def proxy_bias(n: int, seed: int) -> datasets.Dataset:
    """The label favours men and the only good feature is noisy, so a model leans on the group as a proxy:
    large demographic-parity and equalized-odds gaps."""
    rng = np.random.default_rng(seed)
    male = rng.random(n) < 0.5
    z = rng.normal(size=n)
    y = (z + 1.2 * male + 0.3 * rng.normal(size=n)) > 0.6
    x = np.stack([z + rng.normal(size=n), male + 0.1 * rng.normal(size=n), *rng.normal(size=(2, n))], 1)
    return datasets.Dataset.from_dict(
        {
            "features": x.astype(np.float32).tolist(),
            "labels": y.astype(int).tolist(),
            "sex": np.where(male, "M", "F").tolist(),
        }
    )


def minority_shift(n: int, seed: int) -> datasets.Dataset:
    """A 20% minority whose label follows another feature than the majority's: a linear model fitted by ERM
    serves the majority, and the minority's accuracy is the worst."""
    rng = np.random.default_rng(seed)
    minority = rng.random(n) < 0.2
    x = rng.normal(size=(n, 4))
    y = np.where(minority, x[:, 1] > 0, x[:, 0] > 0)
    x[:, 2] = minority
    return datasets.Dataset.from_dict(
        {
            "features": x.astype(np.float32).tolist(),
            "labels": y.astype(int).tolist(),
            "sex": np.where(minority, "minority", "majority").tolist(),
        }
    )


class Linear(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 2)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.lin(features)


def train_eval(tmp_path, data, model_cls, mitigations, **overrides) -> tuple[FairTrainer, dict[str, float]]:
    torch.manual_seed(0)
    options = dict(
        num_train_epochs=8, per_device_train_batch_size=64, logging_steps=1000, overwrite_output_dir=True
    )
    args = fair_args(tmp_path, **(options | overrides))
    trainer = FairTrainer(
        model_cls(), args, train_dataset=data(1200, 0), eval_dataset=data(1200, 1), mitigations=mitigations
    )
    trainer.train()
    return trainer, trainer.evaluate()


@pytest.fixture(scope="module")
def proxy_baseline(tmp_path_factory):
    return train_eval(tmp_path_factory.mktemp("base"), proxy_bias, MLP, [])[1]


# ----- penalties: contracts and formulas ---------------------------------------------------------------
def _batch(n: int = 24, num_classes: int = 2, num_groups: int = 3, seed: int = 0, groups=None):
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, num_classes, generator=gen, requires_grad=True)
    labels = torch.randint(0, num_classes, (n,), generator=gen)
    if groups is None:
        groups = torch.randint(0, num_groups, (n,), generator=gen)
    losses = F.cross_entropy(logits, labels, reduction="none")
    return M.PenaltyBatch(logits, labels, groups, num_groups, losses)


@pytest.mark.parametrize("cls", PENALTIES)
@pytest.mark.parametrize("num_classes", [2, 4])
@pytest.mark.parametrize("spread", M.penalties.SPREADS)
def test_penalty_contract(cls, num_classes, spread):
    kwargs = {} if cls is M.MinDiff else {"spread": spread}
    penalty = cls(weight=0.5, **kwargs)
    batch = _batch(num_classes=num_classes)
    before = (batch.logits.detach().clone(), batch.labels.clone(), batch.groups.clone())
    value = penalty(batch)
    assert value.dim() == 0 and torch.isfinite(value) and value >= 0
    value.backward()
    assert batch.logits.grad is not None and batch.logits.grad.abs().sum() > 0  # gradients reach the logits
    for a, b in zip(before, (batch.logits.detach(), batch.labels, batch.groups), strict=True):
        assert torch.equal(a, b)  # inputs unchanged

    # A batch of one sample, and a batch missing group 2 of 3: finite, and the missing group adds nothing.
    one = _batch(n=1, num_classes=num_classes, groups=torch.tensor([1]))
    v1 = penalty(one)
    v1.backward()
    assert torch.isfinite(v1) and v1 == 0 and torch.isfinite(one.logits.grad).all()
    two = _batch(num_classes=num_classes, groups=torch.arange(24) % 2)
    missing = M.PenaltyBatch(two.logits, two.labels, two.groups, 3, two.losses)
    v2, v3 = penalty(missing), penalty(two)
    v2.backward()
    assert torch.isfinite(v2) and torch.isfinite(two.logits.grad).all()
    torch.testing.assert_close(v2, v3)


def test_penalties_match_hand_computed_gaps():
    batch = _batch(n=40, num_groups=2)
    p = batch.logits.detach().softmax(-1)[:, 1].numpy()
    y, g = batch.labels.numpy(), batch.groups.numpy()

    def rate(mask):
        return p[mask].mean()

    dp = abs(rate(g == 0) - rate(g == 1))
    tpr = abs(rate((g == 0) & (y == 1)) - rate((g == 1) & (y == 1)))
    fpr = abs(rate((g == 0) & (y == 0)) - rate((g == 1) & (y == 0)))
    assert M.DemographicParity()(batch).item() == pytest.approx(dp, abs=1e-6)
    assert M.EqualOpportunity()(batch).item() == pytest.approx(tpr, abs=1e-6)
    assert M.EqualizedOdds()(batch).item() == pytest.approx(max(tpr, fpr), abs=1e-6)
    overall = p.mean()
    mad = np.mean([abs(rate(g == k) - overall) for k in (0, 1)])
    assert M.DemographicParity(spread="mean_abs_dev")(batch).item() == pytest.approx(mad, abs=1e-6)
    rms = math.sqrt(np.mean([(rate(g == k) - overall) ** 2 for k in (0, 1)]))
    assert M.DemographicParity(spread="l2_dev")(batch).item() == pytest.approx(rms, abs=1e-5)
    losses = batch.losses.detach().numpy()
    assert M.LossParity()(batch).item() == pytest.approx(
        abs(losses[g == 0].mean() - losses[g == 1].mean()), abs=1e-6
    )

    # MinDiff: biased MMD^2 with a Gaussian kernel between the two groups, computed directly.
    def k(a, b, s=0.1):
        return np.exp(-((a[:, None] - b[None]) ** 2) / (2 * s * s)).mean()

    a, b = p[g == 0], p[g == 1]
    assert M.MinDiff()(batch).item() == pytest.approx(k(a, a) + k(b, b) - 2 * k(a, b), abs=1e-5)
    neg = y == 0
    a, b = p[(g == 0) & neg], p[(g == 1) & neg]
    assert M.MinDiff(labels=[0])(batch).item() == pytest.approx(k(a, a) + k(b, b) - 2 * k(a, b), abs=1e-5)


def test_penalty_warmup_and_bad_values():
    penalty = M.DemographicParity(weight=2.0, warmup_steps=10)
    assert [penalty.weight_at(s) for s in (0, 5, 10, 50)] == [0.0, 1.0, 2.0, 2.0]
    for bad in (-0.1, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="must be a finite number >= 0"):
            M.DemographicParity(weight=bad)
    with pytest.raises(ValueError, match="spread must be one of max_gap, mean_abs_dev, l2_dev"):
        M.EqualizedOdds(spread="range")
    with pytest.raises(ValueError, match="warmup_steps"):
        M.LossParity(warmup_steps=-1)
    with pytest.raises(ValueError, match="bandwidth"):
        M.MinDiff(bandwidth=0)


# ----- reweighting and sampling ------------------------------------------------------------------------
def test_kamiran_calders_weights_make_group_and_label_independent():
    rng = np.random.default_rng(0)
    g = torch.as_tensor(rng.integers(0, 3, 3000))
    y = torch.as_tensor((rng.random(3000) < np.array([0.2, 0.5, 0.8])[g.numpy()]).astype(int))
    w = M.KamiranCalders().fit(g, y, 3, 2).sample_weights(g, y)
    for gi in range(3):
        for yi in range(2):
            cell = (g == gi) & (y == yi)
            expected = (g == gi).float().mean() * (y == yi).float().mean() / cell.float().mean()
            assert w[cell][0].item() == pytest.approx(expected.item(), rel=1e-5)  # the paper's formula
            weighted_share = w[cell].sum() / w.sum()
            assert weighted_share.item() == pytest.approx(
                ((g == gi).float().mean() * (y == yi).float().mean()).item(), rel=1e-5
            )
    assert w.mean().item() == pytest.approx(1.0, rel=1e-5)


@pytest.mark.parametrize(
    ("cls", "stratum"),
    [(M.BalancedGroup, "g"), (M.BalancedLabel, "y"), (M.BalancedGroupLabel, "gy")],
)
def test_balanced_weights_give_every_stratum_equal_total(cls, stratum):
    rng = np.random.default_rng(1)
    g = torch.as_tensor(rng.choice(3, 2000, p=[0.6, 0.3, 0.1]))
    y = torch.as_tensor((rng.random(2000) < 0.3).astype(int))
    w = cls().fit(g, y, 3, 2).sample_weights(g, y)
    key = {"g": g, "y": y, "gy": g * 2 + y}[stratum]
    totals = torch.stack([w[key == k].sum() for k in key.unique()])
    torch.testing.assert_close(totals, torch.full_like(totals, totals.mean().item()))
    assert w.mean().item() == pytest.approx(1.0, rel=1e-5)


def test_weighted_sampler_is_balanced_deterministic_and_shards_across_processes():
    from accelerate.data_loader import BatchSamplerShard
    from torch.utils.data import BatchSampler

    g = torch.tensor([0] * 900 + [1] * 100)
    w = (
        M.BalancedGroup(mode="sampler")
        .fit(g, torch.zeros_like(g), 2, 2)
        .sample_weights(g, torch.zeros_like(g))
    )
    sampler = M.WeightedEpochSampler(w, seed=7)
    sampler.set_epoch(3)
    first = list(sampler)
    sampler.set_epoch(3)
    assert list(sampler) == first and len(first) == 1000
    sampler.set_epoch(4)
    assert list(sampler) != first
    share = (g[first] == 1).float().mean().item()
    assert 0.45 < share < 0.55  # the 10% group is drawn half of the time

    # Two processes: accelerate shards the batches of one shared sequence; nothing is drawn twice.
    sampler.set_epoch(3)
    single = [b for b in BatchSampler(sampler, 8, drop_last=False)]
    shards = []
    for rank in range(2):
        sampler.set_epoch(3)  # each process's own sampler object, same seed and epoch
        shard = BatchSamplerShard(
            BatchSampler(sampler, 8, drop_last=False), num_processes=2, process_index=rank
        )
        shards.append(list(shard))
    interleaved = [b for pair in zip(*shards, strict=False) for b in pair]
    assert [i for b in interleaved for i in b][: len(first)] == [i for b in single for i in b]
    with pytest.raises(ValueError, match="finite values >= 0"):
        M.WeightedEpochSampler(torch.tensor([1.0, -1.0]))


def test_group_dro_update_follows_the_paper():
    dro = M.GroupDRO(eta=0.5).setup(3)
    sums, counts = torch.tensor([2.0, 6.0, 0.0]), torch.tensor([4.0, 4.0, 0.0])
    factor = dro.update(sums, counts)
    q = torch.tensor([1 / 3 * math.exp(0.5 * 0.5), 1 / 3 * math.exp(0.5 * 1.5), 1 / 3])
    q = (q / q.sum()).double()
    torch.testing.assert_close(dro.q, q)
    # Weighted mean of the per-sample losses == sum_g q_g * mean loss of g, over the groups present.
    torch.testing.assert_close((factor * sums).sum() / counts.sum(), (q[0] * 0.5 + q[1] * 1.5).float())
    assert factor[2] == 0
    with pytest.raises(ValueError, match="at least 2 training groups"):
        M.GroupDRO().setup(1)
    with pytest.raises(ValueError, match="eta must be a finite number > 0"):
        M.GroupDRO(eta=0)
    big = M.GroupDRO(eta=10.0).setup(2)
    big.update(torch.tensor([1e4, 0.0]), torch.tensor([1.0, 1.0]))
    assert torch.isfinite(big.q).all()  # no overflow for huge losses


def test_group_dro_follows_the_paper_when_log_weights_drift_far_apart():
    # eta 0.01; 10,000 steps of group losses (1, 0), then 9,000 of (0, 1): log q_0 - log q_1 goes to 100, then
    # back to 10, so q = softmax([10, 0]) = [0.99995, 4.54e-5]. A float32 q floored at 1e-38 forgot the lead
    # beyond ~87 and ended at [0.076, 0.924].
    dro = M.GroupDRO(eta=0.01).setup(2)
    counts = torch.tensor([1.0, 1.0])
    for _ in range(10_000):
        dro.update(torch.tensor([1.0, 0.0]), counts)
    for _ in range(9_000):
        dro.update(torch.tensor([0.0, 1.0]), counts)
    expected = torch.softmax(torch.tensor([10.0, 0.0], dtype=torch.float64), 0)
    torch.testing.assert_close(dro.q, expected, rtol=1e-9, atol=1e-12)
    # A checkpoint from before the state moved to log space (it held q) still loads.
    old = M.GroupDRO().setup(2)
    old.load_state_dict({"q": torch.tensor([0.25, 0.75])})
    torch.testing.assert_close(old.q, torch.tensor([0.25, 0.75], dtype=torch.float64))


# ----- effect on planted biases (each method vs the unmitigated run, same seed) ------------------------
EFFECTS = [
    ("demographic_parity", [M.DemographicParity(2.0)], "demographic_parity_difference"),
    ("mindiff", [M.MinDiff(2.0)], "demographic_parity_difference"),
    ("equalized_odds", [M.EqualizedOdds(2.0)], "equalized_odds_difference"),
    ("equal_opportunity", [M.EqualOpportunity(2.0)], "equal_opportunity_difference"),
    ("kamiran_calders", [M.KamiranCalders()], "demographic_parity_difference"),
    ("kamiran_calders sampler", [M.KamiranCalders(mode="sampler")], "demographic_parity_difference"),
    ("balanced_group_label", [M.BalancedGroupLabel()], "equalized_odds_difference"),
    ("balanced_group_label sampler", [M.BalancedGroupLabel(mode="sampler")], "equalized_odds_difference"),
    ("adversary", [M.Adversary("logits")], "demographic_parity_difference"),
    ("equalized_odds adversary", [M.EqualizedOddsAdversary("logits")], "equal_opportunity_difference"),
]


@pytest.mark.parametrize(("name", "methods", "gap"), EFFECTS, ids=[e[0] for e in EFFECTS])
def test_method_cuts_the_gap_it_targets(tmp_path, proxy_baseline, name, methods, gap):
    _, metrics = train_eval(tmp_path, proxy_bias, MLP, methods)
    base, mitigated = proxy_baseline[f"eval_sex/{gap}"], metrics[f"eval_sex/{gap}"]
    assert base > 0.3, f"the planted bias should show in {gap}: {base}"
    assert mitigated <= 0.7 * base, f"{name}: {gap} {base:.3f} -> {mitigated:.3f}"


def test_group_dro_and_loss_parity_raise_the_worst_group(tmp_path):
    _, base = train_eval(tmp_path, minority_shift, Linear, [])
    _, dro = train_eval(tmp_path, minority_shift, Linear, [M.GroupDRO(eta=0.1)])
    _, parity = train_eval(tmp_path, minority_shift, Linear, [M.LossParity(2.0)])
    key, gap = "eval_sex/worst_group_accuracy", "eval_sex/accuracy_difference"
    assert dro[key] >= base[key] + 0.05, (base[key], dro[key])
    assert parity[gap] <= 0.5 * base[gap], (base[gap], parity[gap])


def test_methods_combine_and_log_each_term(tmp_path):
    trainer, metrics = train_eval(
        tmp_path,
        proxy_bias,
        MLP,
        [M.DemographicParity(1.0), M.EqualizedOdds(0.5)],
        reweighting="kamiran_calders",
        logging_steps=5,
    )
    assert [type(m).__name__ for m in trainer.mitigations] == [
        "KamiranCalders",
        "DemographicParity",
        "EqualizedOdds",
    ]
    logs = [h for h in trainer.state.log_history if "loss" in h]
    for key in ("task_loss", "penalty/demographic_parity", "penalty/equalized_odds", "sex/F/loss"):
        assert all(math.isfinite(h[key]) for h in logs), key
    # The logged total is the weighted task loss plus the weighted penalties, not the task loss alone.
    assert any(h["loss"] != pytest.approx(h["task_loss"], rel=1e-3) for h in logs)


def test_two_penalties_of_one_class_log_under_their_own_keys():
    mitigations = M.Mitigations([M.DemographicParity(1.0), M.DemographicParity(0.5, spread="l2_dev")])
    batch, log = _batch(n=40, num_groups=2), M.TermLog()
    total = mitigations.extra_loss(None, batch, step=0, log=log)
    first, second = M.DemographicParity()(batch), M.DemographicParity(spread="l2_dev")(batch)
    logs = log.pop(M.combined.identity_reduce, ["F", "M"], "sex")
    assert set(logs) == {"penalty/demographic_parity_1", "penalty/demographic_parity_2"}
    assert logs["penalty/demographic_parity_1"] == pytest.approx(first.item())
    assert logs["penalty/demographic_parity_2"] == pytest.approx(second.item())
    torch.testing.assert_close(total, first + 0.5 * second)


# ----- GroupDRO and adversary state: checkpoints, resume, export ---------------------------------------
def test_adversary_and_group_dro_state_resume_exactly(tmp_path, caplog):
    def make(out):
        torch.manual_seed(0)
        args = fair_args(
            tmp_path,
            output_dir=str(tmp_path / out),
            num_train_epochs=2,
            save_strategy="steps",
            save_steps=13,
            per_device_train_batch_size=32,
            adversary="group",
            adversary_input="logits",
            adversary_learning_rate=5e-3,
            reweighting="group_dro",
            group_dro_eta=0.2,
        )
        return FairTrainer(MLP(), args, train_dataset=biased_tabular(400))

    full = make("full")
    full.train()
    checkpoint = tmp_path / "full" / "checkpoint-13"
    saved = torch.load(checkpoint / MITIGATION_STATE_FILE)
    assert set(saved) == {"adversary", "group_dro"}
    lrs = [g["lr"] for g in full.optimizer.param_groups]
    assert len(lrs) == 3  # decay, no decay, adversary head
    resumed = make("resumed")
    resumed.train(resume_from_checkpoint=str(checkpoint))
    torch.testing.assert_close(resumed.mitigations.group_dro.q, full.mitigations.group_dro.q)
    for a, b in zip(
        resumed.mitigations.adversary.head.parameters(),
        full.mitigations.adversary.head.parameters(),
        strict=True,
    ):
        torch.testing.assert_close(a, b)
    for a, b in zip(resumed.model.parameters(), full.model.parameters(), strict=True):
        torch.testing.assert_close(a, b)
    # A checkpoint without the mitigation state (e.g. written by a plain Trainer) resumes with a warning
    # that names what starts fresh.
    (checkpoint / MITIGATION_STATE_FILE).unlink()
    with caplog.at_level("WARNING", logger="fairtune.trainer"):
        make("fresh").train(resume_from_checkpoint=str(checkpoint))
    message = WARN_STATE_RESET.format(checkpoint=checkpoint, parts="adversary, group_dro")
    assert message in caplog.text
    # The exported model is the model alone.
    full.save_model(str(tmp_path / "export"))
    from safetensors.torch import load_file

    assert all(k.startswith("net.") for k in load_file(str(tmp_path / "export" / "model.safetensors")))


def test_adversary_on_hidden_states_of_a_lora_wrapped_model(tmp_path, tokenizer):
    from peft import LoraConfig, TaskType, get_peft_model

    model = get_peft_model(tiny_bert(), LoraConfig(task_type=TaskType.SEQ_CLS, r=4, target_modules=["query"]))
    data = text_dataset(64).map(lambda b: tokenizer(b["text"]), batched=True)
    args = fair_args(tmp_path, max_steps=3, adversary="equalized_odds", adversary_hidden_size=8)
    trainer = FairTrainer(model, args, train_dataset=data, processing_class=tokenizer)
    head_before = [p.detach().clone() for p in trainer.mitigations.adversary.head.parameters()]
    lora_before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    trainer.train()
    assert trainer.mitigations.adversary.head[0].in_features == 16 + 2  # hidden size + one-hot label
    assert any(
        not torch.equal(a, b)
        for a, b in zip(head_before, trainer.mitigations.adversary.head.parameters(), strict=True)
    )
    assert any(not torch.equal(lora_before[n], p) for n, p in model.named_parameters() if n in lora_before)
    assert math.isfinite(trainer.state.log_history[-2]["adversary/loss"])


# ----- configs, registry, custom methods, bad input ----------------------------------------------------
def test_methods_by_name_from_arguments(tmp_path):
    args = fair_args(
        tmp_path,
        penalty="equalized_odds",
        penalty_weight=0.3,
        penalty_spread="l2_dev",
        penalty_warmup_steps=5,
        reweighting="balanced_group",
        reweighting_mode="sampler",
        adversary="group",
        adversary_input="logits",
        adversary_weight=0.2,
    )
    penalty, reweighter, adversary = M.Mitigations.from_args(args)
    assert (penalty.weight, penalty.spread, penalty.warmup_steps) == (0.3, "l2_dev", 5)
    assert isinstance(reweighter, M.BalancedGroup) and reweighter.mode == "sampler"
    assert adversary.weight == 0.2 and adversary.input == "logits"
    trainer = FairTrainer(MLP(), args, train_dataset=biased_tabular(100))
    assert isinstance(trainer._get_train_sampler(), M.WeightedEpochSampler)

    message = ERR_UNKNOWN_METHOD.format(
        kind="penalty",
        name="demographic_parity_typo",
        valid="counterfactual_consistency, demographic_parity, equal_opportunity, equalized_odds, "
        "loss_parity, mindiff",
    )
    with pytest.raises(ValueError, match=re.escape(message)):
        M.Mitigations.from_args(fair_args(tmp_path, penalty="demographic_parity_typo"))
    for field, value, fragment in [
        ("penalty_weight", -1.0, "must be a finite number >= 0"),
        ("reweighting", "oversample", "Unknown reweighting 'oversample'"),
        ("reweighting_mode", "both", "reweighting_mode='both' is not one of: weights, sampler"),
        ("adversary", "grl", "Unknown adversary 'grl'. Valid choices: equalized_odds, group"),
        ("adversary_weight", -2.0, "Adversary weight must be a finite number >= 0"),
        ("post_processing", "calibrate", "post_processing='calibrate' is not one of: demographic_parity"),
    ]:
        extra = {"penalty": "mindiff"} if field == "penalty_weight" else {}
        extra |= {"reweighting": "kamiran_calders"} if field == "reweighting_mode" else {}
        extra |= {"adversary": "group"} if field == "adversary_weight" else {}
        with pytest.raises(ValueError, match=re.escape(fragment)):
            M.Mitigations.from_args(fair_args(tmp_path, **{field: value}, **extra))
    with pytest.raises(ValueError, match="no sampler mode"):
        M.Mitigations.from_args(fair_args(tmp_path, reweighting="group_dro", reweighting_mode="sampler"))


def test_custom_penalty_plugs_in_as_object_and_by_registered_name(tmp_path):
    class WorstGroupLoss(M.Penalty):
        name = "worst_group_loss"

        def compute(self, batch):
            rates, present, _ = M.group_rates(
                batch.losses.unsqueeze(1), torch.ones_like(batch.losses).unsqueeze(1), batch.membership
            )
            return rates[present].max()

    _, metrics = train_eval(tmp_path, minority_shift, Linear, [WorstGroupLoss(1.0)], logging_steps=5)
    assert math.isfinite(metrics["eval_loss"])
    M.register("penalty", "worst_group_loss_test")(WorstGroupLoss)
    args = fair_args(tmp_path, penalty="worst_group_loss_test", penalty_weight=0.7)
    (penalty,) = M.Mitigations.from_args(args)
    assert isinstance(penalty, WorstGroupLoss) and penalty.weight == 0.7
    with pytest.raises(ValueError, match="already registered"):
        M.register("penalty", "demographic_parity")(WorstGroupLoss)


def test_bad_mitigation_input_fails_before_training(tmp_path, tabular):
    regression = tiny_bert(num_labels=1)
    message = ERR_REGRESSION_HEAD.format(method=M.EqualizedOdds())
    with pytest.raises(ValueError, match=re.escape(message.split(" needs")[1])):
        FairTrainer(regression, fair_args(tmp_path), train_dataset=tabular, mitigations=[M.EqualizedOdds()])
    with pytest.raises(TypeError, match="mitigations must be Penalty, Reweighter"):
        FairTrainer(MLP(), fair_args(tmp_path), train_dataset=tabular, mitigations=["demographic_parity"])
    with pytest.raises(
        ValueError, match=re.escape(ERR_MITIGATION_TWICE.split("{count}")[0].format(what="adversary"))
    ):
        FairTrainer(
            MLP(), fair_args(tmp_path), train_dataset=tabular, mitigations=[M.Adversary("logits")] * 2
        )
    with pytest.raises(ValueError, match="needs a transformers model"):
        FairTrainer(MLP(), fair_args(tmp_path), train_dataset=tabular, mitigations=[M.Adversary("hidden")])
    assert not (tmp_path / "out").exists()


def test_method_names_are_checked_where_the_methods_are_built(tmp_path):
    # Arguments may name a method registered later; building (before any data or model loads) checks it.
    args = FairTrainingArguments(output_dir=str(tmp_path), group_by="sex", penalty="dp")
    with pytest.raises(ValueError, match="Unknown penalty 'dp'"):
        M.Mitigations.from_args(args)


# ----- post-processing through the trainer -------------------------------------------------------------
def test_thresholds_fitted_on_validation_cut_the_test_gap(tmp_path):
    from fairtune.mitigation.postprocess import THRESHOLDS_FILE, GroupThresholds

    trainer, plain = train_eval(tmp_path, proxy_bias, MLP, [], post_processing="demographic_parity")
    fitted = trainer.fit_thresholds()  # on eval_dataset
    assert fitted.objective == "demographic_parity" and fitted.num_groups == 2
    preds, results = trainer.predict_with_thresholds(proxy_bias(1200, 2))
    assert preds.shape == (1200,) and set(np.unique(preds)) <= {0, 1}
    gap = "demographic_parity_difference"
    assert results["sex"].gaps[gap] <= 0.3 * plain[f"eval_sex/{gap}"]
    fitted.save(str(tmp_path))
    assert (tmp_path / THRESHOLDS_FILE).is_file()
    again, _ = trainer.predict_with_thresholds(proxy_bias(1200, 2), GroupThresholds.load(str(tmp_path)))
    assert np.array_equal(again, preds)  # same seed, same decisions
    unlabeled, results = trainer.predict_with_thresholds(proxy_bias(1200, 2).remove_columns("labels"))
    assert np.array_equal(unlabeled, preds) and results == {}


def test_threshold_method_needs_validation_data_and_a_binary_model(tmp_path, tabular):
    from fairtune.mitigation.combined import ERR_POSTPROCESS_BINARY, ERR_POSTPROCESS_NO_VALIDATION

    args = fair_args(tmp_path, post_processing="equalized_odds")
    with pytest.raises(
        ValueError, match=re.escape(ERR_POSTPROCESS_NO_VALIDATION.format(name="equalized_odds"))
    ):
        FairTrainer(MLP(), args, train_dataset=tabular)
    message = ERR_POSTPROCESS_BINARY.format(name="equalized_odds", num_labels=3)
    with pytest.raises(ValueError, match=re.escape(message)):
        FairTrainer(MLP(num_labels=3), args, train_dataset=biased_tabular(num_labels=3), eval_dataset=tabular)
    assert not (tmp_path / "out").exists()


def test_registry_imports_no_method_module_and_methods_build_themselves(tmp_path):
    import ast
    import inspect as ins

    tree = ast.parse(ins.getsource(M.registry))
    imported = [n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
    imported += [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
    assert not [m for m in imported if m.startswith("fairtune")], imported
    for kind in M.registry.KINDS:
        for name in M.names(kind):
            assert callable(M.lookup(kind, name).from_args), (kind, name)
    with pytest.raises(TypeError, match="has no from_args"):
        M.register("penalty", "no_builder")(type("NoBuilder", (), {}))


def test_custom_options_reach_a_method_and_unknown_ones_are_refused(tmp_path):
    args = fair_args(tmp_path, penalty="mindiff", penalty_weight=0.2)
    args.penalty_options = {"labels": [0], "bandwidth": 0.3}
    (penalty,) = M.Mitigations.from_args(args)
    assert penalty.labels == [0] and penalty.bandwidth == 0.3 and penalty.weight == 0.2
    args.penalty_options = {"bandwith": 0.3}
    with pytest.raises(ValueError, match=r"penalty_options \['bandwith'\] are not options of MinDiff"):
        M.Mitigations.from_args(args)
