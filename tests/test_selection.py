"""Constrained checkpoint selection: bounds on validation gaps, fallback, no constant model."""

import logging
import math
import os
from types import SimpleNamespace

import pytest
import torch
from conftest import MLP, biased_tabular, fair_args

from fairtune import FairTrainer
from fairtune.selection import (
    ERR_BOUND_SYNTAX,
    ERR_INTERVAL_NO_BOOTSTRAP,
    ERR_INTERVAL_WITHOUT_BOUNDS,
    ERR_NEEDS_EVAL,
    ERR_NEEDS_LOAD_BEST,
    WARN_ALL_CONSTANT,
    Bound,
    ModelSelection,
    is_constant,
    parse_bound,
)

DP = "eval_sex/demographic_parity_difference"
ACC = "eval_sex/overall/accuracy"


def evaluation(acc, dp, selection_rate=0.4, ci_high=None):
    """The metrics of one fake evaluation (binary task, grouping sex)."""
    metrics = {ACC: acc, "eval_sex/overall/selection_rate": selection_rate, "eval_sex/overall/count": 200}
    if dp is not None:
        metrics[DP] = dp
    if ci_high is not None:
        metrics[DP + "_ci_high"] = ci_high
    return metrics


def run(selection, evaluations):
    """Feed evaluations (one per step) to the rule as Trainer would; returns the chosen step."""
    state = SimpleNamespace(global_step=0, best_metric=None, best_global_step=None, log_history=[])
    for step, metrics in enumerate(evaluations, start=1):
        state.global_step = step
        state.log_history.append({**metrics, "step": step})
        selection.update(metrics, state)
    return state


def test_parse_bound_forms_and_errors():
    assert parse_bound("sex/demographic_parity_difference <= 0.05") == Bound(DP, "<=", 0.05)
    assert parse_bound("eval_race/worst_group_accuracy>=0.7") == Bound(
        "eval_race/worst_group_accuracy", ">=", 0.7
    )
    for bad in [
        "sex/demographic_parity_difference < 0.05",
        "dp <= high",
        "dp <= nan",
        "dp",
        "<= 0.1",
        "a <= inf",
    ]:
        with pytest.raises(ValueError) as err:
            parse_bound(bad)
        assert str(err.value) == ERR_BOUND_SYNTAX.format(text=bad)


def test_violation_is_relative_excess_and_missing_counts_as_infinite():
    bound = Bound(DP, "<=", 0.05)
    assert bound.violation({DP: 0.04}) == 0.0
    assert bound.violation({DP: 0.10}) == pytest.approx(1.0)  # 0.05 over a 0.05 bound
    assert Bound(DP, "<=", 0.1).violation({DP: 0.2}) == pytest.approx(1.0)  # same relative excess
    assert Bound("eval_sex/worst_group_accuracy", ">=", 0.8).violation(
        {"eval_sex/worst_group_accuracy": 0.6}
    ) == pytest.approx(0.25)
    assert Bound(DP, "<=", 0.0).violation({DP: 0.03}) == pytest.approx(0.03)  # a zero bound: absolute excess
    assert bound.violation({}) == math.inf
    assert bound.violation({DP: math.nan}) == math.inf


def test_best_accuracy_that_meets_the_bound_beats_a_more_accurate_violator():
    selection = ModelSelection("sex/overall/accuracy", True, ["sex/demographic_parity_difference <= 0.05"])
    state = run(
        selection,
        [evaluation(0.90, 0.20), evaluation(0.80, 0.03), evaluation(0.85, 0.10), evaluation(0.78, 0.01)],
    )
    assert state.best_global_step == 2 and state.best_metric == 0.80
    assert selection.best.feasible


def test_all_violating_falls_back_to_least_violating_with_a_warning(caplog):
    selection = ModelSelection("sex/overall/accuracy", True, ["sex/demographic_parity_difference <= 0.05"])
    state = run(selection, [evaluation(0.90, 0.20), evaluation(0.70, 0.08), evaluation(0.95, 0.10)])
    assert state.best_global_step == 2
    with caplog.at_level(logging.WARNING, logger="fairtune.selection"):
        selection.on_train_end(None, state, None)
    assert "No evaluated checkpoint met the selection bounds" in caplog.text and "step 2" in caplog.text


def test_constant_predictions_with_gap_zero_are_never_chosen():
    # Selecting by the gap alone: the constant model (gap 0) would win under Trainer's rule.
    selection = ModelSelection(DP, False)
    constant = evaluation(0.55, 0.0, selection_rate=0.0)
    state = run(selection, [constant, evaluation(0.80, 0.12), evaluation(0.82, 0.09), constant])
    assert state.best_global_step == 3
    # With a bound the constant model meets and no other does, it is still not chosen.
    selection = ModelSelection(ACC, True, [f"{DP} <= 0.05"])
    state = run(selection, [constant, evaluation(0.80, 0.12)])
    assert state.best_global_step == 2 and not selection.best.feasible


def test_all_constant_warns_loudly(caplog):
    selection = ModelSelection(ACC, True, [f"{DP} <= 0.05"])
    state = run(selection, [evaluation(0.55, 0.0, 0.0), evaluation(0.45, 0.0, 1.0)])
    assert state.best_global_step == 1
    with caplog.at_level(logging.WARNING, logger="fairtune.selection"):
        selection.on_train_end(None, state, None)
    assert WARN_ALL_CONSTANT.format(step=1) in caplog.text


def test_is_constant_reads_overall_selection_rates():
    assert is_constant({"eval_sex/overall/selection_rate": 1.0, "eval_sex/overall/count": 10})
    assert not is_constant({"eval_sex/overall/selection_rate": 0.3})
    assert is_constant({"eval_race/overall/selection_rate_2": 1.0, "eval_race/overall/selection_rate_0": 0.0})
    assert not is_constant(
        {"eval_race/overall/selection_rate_2": 0.5, "eval_race/overall/selection_rate_0": 0.5}
    )


def test_interval_bound_judges_the_pessimistic_end():
    plain = ModelSelection(ACC, True, [f"{DP} <= 0.05"])
    interval = ModelSelection(ACC, True, [f"{DP} <= 0.05"], use_interval=True)
    evaluations = [evaluation(0.90, 0.04, ci_high=0.09), evaluation(0.80, 0.02, ci_high=0.045)]
    assert run(plain, evaluations).best_global_step == 1
    assert run(interval, evaluations).best_global_step == 2


def test_resumed_selection_rescores_the_recorded_best_from_log_history():
    bounds = [f"{DP} <= 0.05"]
    first = ModelSelection(ACC, True, bounds)
    state = run(first, [evaluation(0.90, 0.20), evaluation(0.80, 0.03)])
    # A fresh object (a resumed run) sees the saved state: the infeasible 0.85 must not beat step 2.
    resumed = ModelSelection(ACC, True, bounds)
    state.global_step = 3
    assert not resumed.update(evaluation(0.85, 0.10), state)
    assert state.best_global_step == 2 and resumed.best.step == 2
    state.global_step = 4
    assert resumed.update(evaluation(0.82, 0.04), state) and state.best_global_step == 4


# ----- config-time errors ---------------------------------------------------------------------------------


def _args(tmp_path, **overrides):
    kwargs = dict(
        eval_strategy="steps",
        eval_steps=5,
        save_strategy="steps",
        save_steps=5,
        load_best_model_at_end=True,
        metric_for_best_model="sex/overall/accuracy",
        selection_constraints=["sex/demographic_parity_difference <= 0.2"],
    )
    return fair_args(tmp_path, **(kwargs | overrides))


def test_config_errors(tmp_path):
    with pytest.raises(ValueError) as err:
        _args(tmp_path, load_best_model_at_end=False)
    assert str(err.value) == ERR_NEEDS_LOAD_BEST
    with pytest.raises(ValueError) as err:
        _args(tmp_path, eval_strategy="no", save_strategy="no", load_best_model_at_end=False)
    assert str(err.value) == ERR_NEEDS_EVAL
    with pytest.raises(ValueError) as err:
        _args(tmp_path, selection_constraints=["dp < 0.1"])
    assert str(err.value) == ERR_BOUND_SYNTAX.format(text="dp < 0.1")
    with pytest.raises(ValueError) as err:
        _args(tmp_path, selection_use_interval=True)  # bootstrap_samples=0 in fair_args
    assert str(err.value) == ERR_INTERVAL_NO_BOOTSTRAP
    with pytest.raises(ValueError) as err:
        fair_args(tmp_path, selection_use_interval=True)
    assert str(err.value) == ERR_INTERVAL_WITHOUT_BOUNDS


def test_unknown_metric_names_are_refused_before_training_with_the_valid_ones(tmp_path, tabular):
    for field, value in [
        ("selection_constraints", ["sex/demographic_parity_diference <= 0.1"]),
        ("selection_constraints", ["eval_age/demographic_parity_difference <= 0.1"]),
        ("metric_for_best_model", "sex/acuracy"),
    ]:
        args = _args(tmp_path, **{field: value})
        with pytest.raises(ValueError, match="which evaluation never produces") as err:
            FairTrainer(MLP(), args, train_dataset=tabular, eval_dataset=biased_tabular(seed=1))
        assert "eval_sex/demographic_parity_difference" in str(err.value)
        assert not os.path.exists(args.output_dir)
    # Per-group stats and interval ends are valid names.
    args = _args(
        tmp_path,
        bootstrap_samples=20,
        selection_use_interval=True,
        selection_constraints=["sex/equal_opportunity_difference <= 0.1", "sex/F/accuracy >= 0.5"],
    )
    with pytest.raises(ValueError, match="has no bootstrap interval"):
        FairTrainer(MLP(), args, train_dataset=tabular, eval_dataset=biased_tabular(seed=1))
    args.selection_constraints = [
        "sex/equal_opportunity_difference <= 0.1",
        "sex/worst_group_accuracy >= 0.5",
    ]
    FairTrainer(MLP(), args, train_dataset=tabular, eval_dataset=biased_tabular(seed=1))


# ----- real training ----------------------------------------------------------------------------------------


def _train(tmp_path, name, bias=0.0, **overrides):
    torch.manual_seed(0)
    model = MLP()
    with torch.no_grad():
        model.net[2].bias.copy_(torch.tensor([bias, -bias]))
    args = _args(tmp_path / name, **({"learning_rate": 3e-3, "num_train_epochs": 2} | overrides))
    trainer = FairTrainer(model, args, train_dataset=biased_tabular(), eval_dataset=biased_tabular(seed=1))
    trainer.train()
    history = {h["step"]: h for h in trainer.state.log_history if ACC in h}
    return trainer, history


def test_trainer_loads_the_most_accurate_checkpoint_that_meets_the_bound(tmp_path):
    # A first run shows accuracy and gap growing together; the bound is then set between the gap of the most
    # accurate checkpoint and that of a less accurate one, and a second, identical run must load the latter.
    _, history = _train(tmp_path, "probe", selection_constraints=None)
    top = max(history, key=lambda s: history[s][ACC])
    below = [h[DP] for h in history.values() if h[DP] < history[top][DP] and not is_constant(h)]
    assert below, "the probe run has no checkpoint with a smaller gap than the most accurate one"
    bound = (max(below) + history[top][DP]) / 2
    feasible = [s for s, h in history.items() if h[DP] <= bound and not is_constant(h)]
    expected = max(feasible, key=lambda s: (history[s][ACC], -s))
    assert history[expected][ACC] < history[top][ACC]

    trainer, again = _train(tmp_path, "bounded", selection_constraints=[f"{DP} <= {bound}"])
    assert {s: h[ACC] for s, h in again.items()} == {s: h[ACC] for s, h in history.items()}  # same run
    assert trainer.state.best_model_checkpoint.endswith(f"checkpoint-{expected}")
    final = trainer.evaluate()  # the loaded model is the selected checkpoint's
    assert final[ACC] == pytest.approx(history[expected][ACC])
    assert final[DP] <= bound


def test_trainer_never_loads_a_constant_checkpoint_selected_by_gap(tmp_path):
    # A head biased towards class 0 predicts 'negative' for everyone for the first steps: gap 0.
    trainer, history = _train(
        tmp_path,
        "gap",
        bias=1.5,
        learning_rate=1e-2,
        num_train_epochs=1,
        metric_for_best_model="sex/demographic_parity_difference",
        selection_constraints=None,
    )
    constant = [s for s, h in history.items() if is_constant(h)]
    assert constant and history[constant[0]][DP] == 0.0
    step = int(trainer.state.best_model_checkpoint.rsplit("-", 1)[1])
    assert step not in constant
    assert step == min((s for s in history if s not in constant), key=lambda s: (history[s][DP], s))


def test_resumed_run_keeps_the_same_selection(tmp_path):
    bound = [f"{DP} <= 0.2"]
    trainer, history = _train(tmp_path, "full", selection_constraints=bound)
    chosen = trainer.state.best_model_checkpoint.rsplit("-", 1)[1]
    # Resume from a checkpoint after the chosen one: the run continues with the same standing.
    later = max(s for s in history if s > int(chosen) and s % 5 == 0 and s < max(history))
    torch.manual_seed(0)
    args = _args(tmp_path / "full", learning_rate=3e-3, num_train_epochs=2, selection_constraints=bound)
    resumed = FairTrainer(MLP(), args, train_dataset=biased_tabular(), eval_dataset=biased_tabular(seed=1))
    resumed.train(resume_from_checkpoint=os.path.join(args.output_dir, f"checkpoint-{later}"))
    assert resumed.state.best_model_checkpoint.endswith(f"checkpoint-{chosen}")
