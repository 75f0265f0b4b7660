"""Small groups (issue 12, point 6): headline gaps over groups of at least min_group_size rows, the others
reported and flagged, a gap over all groups on request, and the bootstrap interval method."""

import importlib.util
import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import MLP, biased_tabular, fair_args
from fairlearn.metrics import MetricFrame, selection_rate, true_positive_rate

import fairtune.functional as ff
from fairtune import FairTrainer
from fairtune.evaluation import check_gate, parse_gate
from fairtune.metrics import (
    ERR_GAPS_OVER,
    ERR_INTERVAL_METHOD,
    WARN_FEW_ELIGIBLE,
    WARN_INTERVAL_EXCLUDES_ESTIMATE,
    WARN_SMALL_GROUP_EXCLUDED,
    GroupStats,
    bootstrap_interval,
)
from fairtune.report import SMALL_MARK, gap_table, group_table, render_markdown

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "interval_coverage.py"


def planted(seed: int = 0):
    """Groups a (300 rows, selection 0.3), b (200, 0.4) and a tiny c (6 rows, all selected)."""
    rng = np.random.default_rng(seed)
    sizes, rates = {"a": 300, "b": 200, "c": 6}, {"a": 0.3, "b": 0.4, "c": 1.0}
    groups = np.concatenate([[g] * n for g, n in sizes.items()])
    preds = np.concatenate([(rng.random(n) < rates[g]).astype(int) for g, n in sizes.items()])
    labels = rng.integers(0, 2, len(groups))
    return labels, preds, groups


def test_tiny_group_is_listed_but_left_out_of_the_headline_gap():
    labels, preds, groups = planted()
    eligible = ff.metric_frame(labels, preds, sensitive_features=groups, min_group_size=30)
    everything = ff.metric_frame(labels, preds, sensitive_features=groups)  # default 0: as fairlearn
    assert list(eligible.by_group) == ["a", "b", "c"] and eligible.by_group["c"]["selection_rate"] == 1.0
    assert eligible.small_groups == ["c"] and eligible.excluded_groups == ["c"]
    assert eligible.gap_groups == ["a", "b"]
    rates = {g: eligible.by_group[g]["selection_rate"] for g in "abc"}
    assert eligible.gaps["demographic_parity_difference"] == pytest.approx(rates["b"] - rates["a"])
    # The gap over all groups, on request, includes the tiny group (its rate 1.0 is the max).
    assert everything.gaps["demographic_parity_difference"] == pytest.approx(1.0 - rates["a"])
    assert ff.demographic_parity_difference(
        labels, preds, sensitive_features=groups, min_group_size=30
    ) == pytest.approx(rates["b"] - rates["a"])
    assert WARN_SMALL_GROUP_EXCLUDED.format(name="c", count=6, min_group_size=30) in eligible.warnings


def test_headline_gap_agrees_with_fairlearn_on_the_eligible_groups():
    labels, preds, groups = planted(1)
    result = ff.metric_frame(labels, preds, sensitive_features=groups, min_group_size=30)
    keep = groups != "c"
    frame = MetricFrame(
        metrics={"sel": selection_rate, "tpr": true_positive_rate},
        y_true=labels[keep],
        y_pred=preds[keep],
        sensitive_features=groups[keep],
    )
    diff = frame.difference()
    assert result.gaps["demographic_parity_difference"] == pytest.approx(diff["sel"], abs=1e-12)
    assert result.gaps["equal_opportunity_difference"] == pytest.approx(diff["tpr"], abs=1e-12)


def test_stats_compute_gaps_over_all_and_bootstrap_replicates_span_the_same_groups():
    labels, preds, groups = planted(2)
    ids = torch.from_numpy(np.unique(groups, return_inverse=True)[1])
    stats = GroupStats(2, bootstrap_samples=200, seed=0)
    stats.update(torch.from_numpy(labels), ids, preds=torch.from_numpy(preds))
    eligible = stats.compute(["a", "b", "c"])
    everything = stats.compute(["a", "b", "c"], gaps_over="all")
    assert everything.excluded_groups == [] and everything.small_groups == ["c"]
    assert (
        everything.gaps["demographic_parity_difference"]
        > 0.5
        > eligible.gaps["demographic_parity_difference"]
    )
    # The replicates span the eligible groups too: an interval built with c would sit near 0.7.
    low, high = eligible.intervals["demographic_parity_difference"]
    assert high < 0.4
    table = group_table(eligible)
    assert f"| c {SMALL_MARK} |" in table and "fewer than 30 rows: left out of the headline gaps" in table
    assert "left out: c (gaps_over: all includes them)" in gap_table(eligible)
    data = json.loads(json.dumps(eligible.to_dict()))
    assert data["excluded_groups"] == ["c"] and data["min_group_size"] == 30
    assert "left out: c" in render_markdown({"test": {"g": eligible}})
    with pytest.raises(ValueError, match=ERR_GAPS_OVER.format(choices="eligible, all", gaps_over="some")):
        stats.compute(gaps_over="some")
    with pytest.raises(
        ValueError, match=ERR_INTERVAL_METHOD.format(choices="basic, percentile, bca", method="x")
    ):
        stats.compute(interval_method="x")


def test_fewer_than_two_eligible_groups_give_nan_and_say_so():
    labels, preds, groups = planted(3)
    result = ff.metric_frame(labels, preds, sensitive_features=groups, min_group_size=250)
    assert math.isnan(result.gaps["demographic_parity_difference"])
    assert WARN_FEW_ELIGIBLE.format(eligible=1, min_group_size=250) in result.warnings


def test_trainer_and_gate_use_the_headline_gap(tmp_path):
    # Eval data with a tiny third group "X" whose rows are all of one kind.
    evaluation = biased_tabular(n=300, seed=1, groups=("F", "M", "X"))
    keep = [i for i, g in enumerate(evaluation["sex"]) if g != "X"][:280] + [
        i for i, g in enumerate(evaluation["sex"]) if g == "X"
    ][:8]
    evaluation = evaluation.select(keep)
    train = biased_tabular()
    args = fair_args(tmp_path, eval_group_by=["sex"])
    trainer = FairTrainer(MLP(), args, train_dataset=train, eval_dataset=evaluation)
    trainer.train()
    metrics = trainer.evaluate()
    result = trainer.fairness_results["eval"]["sex"]
    assert result.excluded_groups == ["X"] and "X" in result.by_group
    sel = {g: result.by_group[g]["selection_rate"] for g in ("F", "M")}
    assert metrics["eval_sex/demographic_parity_difference"] == pytest.approx(abs(sel["M"] - sel["F"]))
    (check,) = check_gate(
        {"sex": result}, parse_gate(["demographic_parity_difference=1"], "max"), "sex", "eval"
    )
    assert check.value == result.gaps["demographic_parity_difference"]
    # On request the gap spans every group.
    args_all = fair_args(tmp_path / "all", eval_group_by=["sex"], gaps_over="all")
    trainer_all = FairTrainer(MLP(), args_all, train_dataset=train, eval_dataset=evaluation)
    trainer_all.train()
    trainer_all.evaluate()
    everything = trainer_all.fairness_results["eval"]["sex"]
    rates = [stats["selection_rate"] for stats in everything.by_group.values()]
    assert everything.gaps["demographic_parity_difference"] == pytest.approx(max(rates) - min(rates))


def test_basic_interval_reflects_the_replicates_about_the_estimate():
    values = torch.tensor(
        [0.10, 0.12, 0.14, 0.16, 0.18, 0.20, 0.22, 0.24, 0.26, 0.28, 0.30], dtype=torch.float64
    )
    low_p, high_p = bootstrap_interval(values, 0.15, 0.8, "percentile")
    low_b, high_b = bootstrap_interval(values, 0.15, 0.8, "basic")
    assert (low_b, high_b) == pytest.approx((2 * 0.15 - high_p, 2 * 0.15 - low_p))
    # Clipped at 0: a gap cannot be negative.
    assert bootstrap_interval(values, 0.05, 0.8, "basic")[0] == 0.0
    # BCa without acceleration is the bias-corrected percentile interval: shifted down when most
    # replicates lie above the estimate.
    low_bc, high_bc = bootstrap_interval(values, 0.15, 0.8, "bca")
    assert low_bc < low_p and high_bc < high_p


def test_an_interval_missing_its_estimate_is_flagged():
    # Two groups of 40 with equal selection rates: the DP estimate is 0, every replicate's spread is > 0,
    # so the percentile interval lies above its estimate.
    labels = torch.zeros(80, dtype=torch.long)
    preds = torch.tensor([1, 0] * 40)
    groups = torch.tensor([0] * 40 + [1] * 40)
    stats = GroupStats(2, bootstrap_samples=100, seed=0)
    stats.update(labels, groups, preds=preds)
    result = stats.compute(interval_method="percentile")
    low, high = result.intervals["demographic_parity_difference"]
    assert low > 0.0
    warning = WARN_INTERVAL_EXCLUDES_ESTIMATE.format(
        gap="demographic_parity_difference", method="percentile", low=low, high=high, value=0.0
    )
    assert warning in result.warnings
    basic = stats.compute()  # the default reflects the interval down to 0: it contains its estimate
    assert basic.interval_method == "basic" and basic.intervals["demographic_parity_difference"][0] == 0.0


def _load_script():
    spec = importlib.util.spec_from_file_location("interval_coverage", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_default_interval_method_has_the_coverage_nearest_nominal():
    # A small simulation with known rates (the script's quickstart cells, women at 0.18 and men at 0.20): the
    # default method must cover the true headline gap nearest 95%, and not far off it. Seeded.
    script = _load_script()
    results = script.simulate(
        script.SCENARIOS["parity_big_groups"], datasets=120, replicates=100, seed=5, gaps_over=("eligible",)
    )
    coverage = {method: r["coverage"] for (_, method), r in results.items()}
    default = GroupStats(2).compute.__kwdefaults__["interval_method"]
    assert default == "basic"
    assert abs(coverage[default] - 0.95) < abs(coverage["percentile"] - 0.95)
    assert abs(coverage[default] - 0.95) <= min(abs(c - 0.95) for c in coverage.values())
    assert coverage[default] >= 0.85
