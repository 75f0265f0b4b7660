"""Constraints with stated bounds: parsing, the multiplier update rule, state, and the bound met on a planted
bias (validation gap near the bound; accuracy against a fixed penalty reaching the same gap)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import MLP, biased_tabular, fair_args
from test_mitigation import proxy_bias

import fairtune.mitigation as M
from fairtune import FairTrainer
from fairtune.mitigation.combined import ERR_CONSTRAINTS_UNSYNCED
from fairtune.mitigation.constraints import (
    ERR_BINARY_ONLY,
    ERR_CONSTRAINT_BOUND,
    ERR_CONSTRAINT_METRIC,
    ERR_CONSTRAINT_SYNTAX,
    ERR_CONSTRAINT_TWICE,
    ERR_GAIN,
    ERR_RESUME_CONSTRAINTS,
    STATISTICS,
)
from fairtune.trainer import MITIGATION_STATE_FILE


def _batch(logits: torch.Tensor, labels: torch.Tensor, groups: torch.Tensor) -> M.PenaltyBatch:
    losses = F.cross_entropy(logits, labels, reduction="none")
    return M.PenaltyBatch(logits, labels, groups, int(groups.max()) + 1, losses)


def test_parse_and_bad_constraints():
    c = M.Constraint.parse("  equalized_odds_difference<=0.03 ")
    assert (c.metric, c.bound) == ("equalized_odds_difference", 0.03)
    assert str(c) == "equalized_odds_difference <= 0.03"
    with pytest.raises(ValueError, match="is not of the form"):
        M.Constraint.parse("demographic_parity_difference >= 0.05")
    assert ERR_CONSTRAINT_SYNTAX.startswith("Constraint {text!r}")
    with pytest.raises(ValueError) as err:
        M.Constraint.parse("demographic_parity <= 0.05")
    assert str(err.value) == ERR_CONSTRAINT_METRIC.format(
        metric="demographic_parity", valid=", ".join(STATISTICS)
    )
    with pytest.raises(ValueError) as err:
        M.Constraint("accuracy_difference", 1.5)
    assert str(err.value) == ERR_CONSTRAINT_BOUND.format(metric="accuracy_difference", bound=1.5)
    with pytest.raises(ValueError) as err:
        M.LagrangianConstraints(["accuracy_difference <= 0.1"], proportional=-1.0)
    assert str(err.value) == ERR_GAIN.format(name="proportional", value=-1.0)
    with pytest.raises(ValueError) as err:
        M.parse_constraints(["accuracy_difference <= 0.1", "accuracy_difference <= 0.2"])
    assert str(err.value) == ERR_CONSTRAINT_TWICE.format(metric="accuracy_difference")


def test_config_checks_constraints_before_anything_loads(tmp_path):
    with pytest.raises(ValueError, match="is not of the form"):
        fair_args(tmp_path, constraints=["demographic_parity_difference = 0.05"])
    args = fair_args(tmp_path, constraints=["demographic_parity_difference <= 0.05"], penalty_sync=False)
    with pytest.raises(ValueError) as err:
        M.Mitigations.from_args(args)
    assert str(err.value) == ERR_CONSTRAINTS_UNSYNCED
    args = fair_args(
        tmp_path,
        constraints=["equal_opportunity_difference <= 0.05"],
        constraint_learning_rate=0.3,
        constraint_options={"momentum": 0.5},
    )
    built = M.Mitigations.from_args(args).constraints
    assert (built.multiplier_lr, built.momentum) == (0.3, 0.5)
    with pytest.raises(ValueError) as err:
        FairTrainer(
            MLP(num_labels=3),
            fair_args(tmp_path, constraints=["equal_opportunity_difference <= 0.1"]),
            train_dataset=biased_tabular(60, num_labels=3),
        )
    assert str(err.value) == ERR_BINARY_ONLY.format(metric="equal_opportunity_difference", num_labels=3)


def test_multipliers_follow_projected_gradient_ascent_on_the_hard_gap():
    """lambda <- max(0, lambda + lr * (hard_gap - bound)) once per optimizer step, with hard_gap from the
    running (EMA) counts of thresholded decisions; the model's term is lambda * soft gap."""
    groups = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
    labels = torch.tensor([1, 0, 1, 0, 1, 0, 1, 0])
    # Group 0 is selected 3/4 of the time, group 1 1/4: a hard DP gap of 0.5.
    logits = torch.tensor([[0, 2], [0, 1], [0, 3], [1, 0], [0, 1], [2, 0], [1, 0], [3, 0]], dtype=torch.float)
    cons = M.LagrangianConstraints(
        ["demographic_parity_difference <= 0.1"], multiplier_lr=0.5, momentum=0.0, proportional=0.0
    )
    soft = M.DemographicParity()(_batch(logits, labels, groups))
    expected_lam = 0.0
    for step in range(4):
        for _micro in range(2):  # two micro-batches per step: the multiplier moves once per step
            batch = _batch(logits.clone().requires_grad_(), labels, groups)
            term, logs = cons.loss(batch, step)
            torch.testing.assert_close(term, expected_lam * soft)
            assert logs["constraint/demographic_parity_difference/multiplier"].item() == pytest.approx(
                expected_lam
            )
            # With momentum 0 the estimate is this batch's hard gap, 0.5.
            assert logs["constraint/demographic_parity_difference/gap_estimate"].item() == pytest.approx(0.5)
        expected_lam = max(0.0, expected_lam + 0.5 * (0.5 - 0.1))
    # Once the gap holds, the multiplier decays to 0 and stays there (projection onto lambda >= 0).
    fair = torch.tensor([[0, 2], [0, 1], [1, 0], [1, 0], [0, 1], [0, 2], [1, 0], [3, 0]], dtype=torch.float)
    lams = []
    for step in range(4, 30):
        cons.loss(_batch(fair.clone().requires_grad_(), labels, groups), step)
        lams.append(float(cons.multipliers[0]))
    assert lams[0] == pytest.approx(expected_lam)  # the update from the last violated step's estimate
    assert lams[1] == pytest.approx(expected_lam + 0.5 * (0.0 - 0.1))
    assert all(b <= a for a, b in zip(lams, lams[1:], strict=False))
    assert lams[-1] == 0.0
    # The proportional term adds gain * violation on top of the ascent's integral, clipped at 0.
    pi = M.LagrangianConstraints(
        ["demographic_parity_difference <= 0.1"], multiplier_lr=0.5, momentum=0.0, proportional=2.0
    )
    pi.loss(_batch(logits.clone().requires_grad_(), labels, groups), 0)
    pi.loss(_batch(fair.clone().requires_grad_(), labels, groups), 1)
    assert float(pi.multipliers[0]) == pytest.approx(0.5 * 0.4 + 2.0 * 0.4)
    pi.loss(_batch(fair.clone().requires_grad_(), labels, groups), 2)
    assert float(pi.integral[0]) == pytest.approx(0.2 - 0.05)
    assert float(pi.multipliers[0]) == 0.0  # max(0, 0.15 - 0.2)


def test_only_the_soft_gap_carries_gradient_and_multi_class_intersections_work():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(30, 3, generator=gen, requires_grad=True)
    labels = torch.randint(0, 3, (30,), generator=gen)
    groups = torch.randint(0, 4, (30,), generator=gen)  # e.g. the 4 cells of sex+race
    cons = M.LagrangianConstraints(
        ["demographic_parity_difference <= 0.0", "accuracy_difference <= 0.0"], initial_multiplier=2.0
    )
    batch = _batch(logits, labels, groups)
    term, _ = cons.loss(batch, 0)
    term.backward()
    expected = torch.autograd.grad(
        2.0
        * (
            M.DemographicParity()(_batch(logits, labels, groups)) + _soft_accuracy_gap(logits, labels, groups)
        ),
        logits,
    )[0]
    torch.testing.assert_close(logits.grad, expected)


def _soft_accuracy_gap(logits, labels, groups):
    hit = logits.softmax(-1).gather(1, labels[:, None])[:, 0]
    means = torch.stack([hit[groups == g].mean() for g in groups.unique()])
    return means.max() - means.min()


# ----- training: the bound is met, state is saved and restored --------------------------------------------
def _train(tmp_path, methods, out="out", **overrides):
    torch.manual_seed(0)
    options = dict(
        num_train_epochs=12, per_device_train_batch_size=64, logging_steps=1000, overwrite_output_dir=True
    )
    args = fair_args(tmp_path, output_dir=str(tmp_path / out), **(options | overrides))
    trainer = FairTrainer(
        MLP(), args, train_dataset=proxy_bias(2000, 0), eval_dataset=proxy_bias(4000, 1), mitigations=methods
    )
    trainer.train()
    return trainer, trainer.evaluate()


def test_state_is_saved_in_checkpoints_and_a_resumed_run_continues_exactly(tmp_path):
    def make(out):
        cons = M.LagrangianConstraints(["demographic_parity_difference <= 0.05"], multiplier_lr=0.5)
        torch.manual_seed(0)
        args = fair_args(
            tmp_path,
            output_dir=str(tmp_path / out),
            num_train_epochs=2,
            save_strategy="steps",
            save_steps=20,
            per_device_train_batch_size=64,
            overwrite_output_dir=True,
        )
        return FairTrainer(MLP(), args, train_dataset=proxy_bias(1200, 0), mitigations=[cons])

    full = make("full")
    full.train()
    checkpoint = tmp_path / "full" / "checkpoint-20"
    saved = torch.load(checkpoint / MITIGATION_STATE_FILE)
    assert set(saved) == {"constraints"} and float(saved["constraints"]["multipliers"][0]) > 0
    resumed = make("resumed")
    resumed.train(resume_from_checkpoint=str(checkpoint))
    torch.testing.assert_close(
        resumed.mitigations.constraints.multipliers, full.mitigations.constraints.multipliers
    )
    for a, b in zip(resumed.model.parameters(), full.model.parameters(), strict=True):
        torch.testing.assert_close(a, b)
    logged = [h for h in full.state.log_history if "constraint/demographic_parity_difference/multiplier" in h]
    assert logged
    other = M.LagrangianConstraints(["demographic_parity_difference <= 0.1"])
    with pytest.raises(ValueError) as err:
        other.load_state_dict(saved["constraints"])
    assert str(err.value) == ERR_RESUME_CONSTRAINTS.format(
        saved=["demographic_parity_difference <= 0.05"], ours=["demographic_parity_difference <= 0.1"]
    )


def test_trained_gap_ends_near_the_bound_at_the_accuracy_of_a_fixed_penalty(tmp_path):
    """Planted bias (ERM's validation DP difference ~0.6): each bound is met within 0.03 on a validation set
    of 4000 rows, and the bound 0.05 costs no more accuracy than the fixed penalty weight that reaches it."""
    dp, acc = "eval_sex/demographic_parity_difference", "eval_sex/overall/accuracy"
    _, erm = _train(tmp_path, [], out="erm")
    assert erm[dp] > 0.5
    results = {}
    for bound in (0.05, 0.2):
        cons = M.LagrangianConstraints([f"demographic_parity_difference <= {bound}"])
        _, results[bound] = _train(tmp_path, [cons], out=f"bound{bound}")
        assert abs(results[bound][dp] - bound) <= 0.03, (bound, results[bound][dp])
    assert results[0.2][acc] > results[0.05][acc]  # a looser bound buys accuracy
    _, fixed = _train(tmp_path, [M.DemographicParity(1.0)], out="penalty")  # the weight that reaches ~0.05
    assert abs(fixed[dp] - 0.05) <= 0.01, fixed[dp]
    assert results[0.05][acc] >= fixed[acc] - 0.005, (results[0.05][acc], fixed[acc])
