"""fairtune.mitigation.postprocess.GroupThresholds on synthetic data with a planted group bias.

Checked against its own constraints (expected rates on the fitting data), against fresh data from the same
distribution (through fairtune.metrics) and against fairlearn's ThresholdOptimizer as an independent oracle.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable

import numpy as np
import pytest
import torch
from fairlearn.postprocessing import ThresholdOptimizer
from sklearn.base import BaseEstimator, ClassifierMixin

from fairtune import curves
from fairtune import functional as ff
from fairtune.mitigation import postprocess as pp
from fairtune.mitigation.postprocess import OBJECTIVES, THRESHOLDS_FILE, GroupThresholds

# Per group: share of the samples, mean of the feature, offset of the true logit. Group 0 sits low and is
# pushed down, so the plain 0.5 threshold selects it far less often and with a lower TPR and FPR.
PROPORTIONS = (0.45, 0.35, 0.2)
MEANS = (-0.7, 0.4, 0.9)
OFFSETS = (-0.6, 0.4, 0.1)

GAPS: dict[str, Callable[..., float]] = {
    "demographic_parity": ff.demographic_parity_difference,
    "equal_opportunity": ff.equal_opportunity_difference,
    "equalized_odds": ff.equalized_odds_difference,
}
FAIRLEARN_CONSTRAINTS = {
    "demographic_parity": "demographic_parity",
    "equal_opportunity": "true_positive_rate_parity",
    "equalized_odds": "equalized_odds",
}


# data and helpers ----------------------------------------------------------------------------------------


def biased_scores(
    num_samples: int, seed: int, num_groups: int = 2, decimals: int | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Calibrated scores (N,), labels (N,) drawn from them, group ids (N,) with group-dependent base rates.

    scores = sigmoid(1.8 x + b_g), x ~ N(mu_g, 1); `decimals` rounds the scores to create ties.
    """
    rng = np.random.default_rng(seed)
    proportions = np.array(PROPORTIONS[:num_groups])
    groups = rng.choice(num_groups, num_samples, p=proportions / proportions.sum())
    x = rng.normal(np.array(MEANS)[groups], 1.0)
    scores = 1.0 / (1.0 + np.exp(-(1.8 * x + np.array(OFFSETS)[groups])))
    labels = (rng.random(num_samples) < scores).astype(np.int64)
    if decimals is not None:
        scores = np.round(scores, decimals)
    return scores, labels, groups


def expected_rates(prob: np.ndarray, labels: np.ndarray, groups: np.ndarray) -> dict[str, np.ndarray]:
    """Per-group expected selection rate, TPR, FPR (G,) of P(yhat=1) (N,)."""
    num_groups = int(groups.max()) + 1
    return {
        "selection_rate": np.array([prob[groups == g].mean() for g in range(num_groups)]),
        "tpr": np.array([prob[(groups == g) & (labels == 1)].mean() for g in range(num_groups)]),
        "fpr": np.array([prob[(groups == g) & (labels == 0)].mean() for g in range(num_groups)]),
    }


def violation(objective: str, prob: np.ndarray, labels: np.ndarray, groups: np.ndarray) -> float:
    """Spread across groups of the expected rate(s) that `objective` equalises."""
    rates = expected_rates(prob, labels, groups)
    if objective == "demographic_parity":
        return float(np.ptp(rates["selection_rate"]))
    if objective == "equal_opportunity":
        return float(np.ptp(rates["tpr"]))
    return float(max(np.ptp(rates["tpr"]), np.ptp(rates["fpr"])))


def expected_accuracy(prob: np.ndarray, labels: np.ndarray) -> float:
    return float(np.mean(np.where(labels == 1, prob, 1.0 - prob)))


class ScoreModel(ClassifierMixin, BaseEstimator):
    """A "prefit" estimator whose positive-class probability is the first feature column."""

    def __init__(self) -> None:
        self.fitted_ = True  # check_is_fitted looks for attributes ending in "_"

    def fit(self, X: np.ndarray, y: np.ndarray) -> ScoreModel:
        return self

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        scores = np.asarray(X)[:, 0]
        return np.stack([1.0 - scores, scores], 1)


@pytest.fixture(scope="module")
def fit_data() -> dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    return {g: biased_scores(4000, seed=0, num_groups=g) for g in (2, 3)}


@pytest.fixture(scope="module")
def fresh_data() -> dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    return {g: biased_scores(20000, seed=1, num_groups=g) for g in (2, 3)}


# constraints and accuracy --------------------------------------------------------------------------------


@pytest.mark.parametrize("num_groups", [2, 3])
@pytest.mark.parametrize("objective", OBJECTIVES)
def test_equalises_target_rates_on_fitting_data(objective, num_groups, fit_data):
    scores, labels, groups = fit_data[num_groups]
    gt = GroupThresholds(objective).fit(scores, labels, groups)
    prob = gt.positive_probability(scores, groups)
    rates = expected_rates(prob, labels, groups)
    target = gt.summary()["target"]
    if objective == "demographic_parity":
        np.testing.assert_allclose(rates["selection_rate"], target["selection_rate"], atol=1e-9)
    elif objective == "equal_opportunity":
        np.testing.assert_allclose(rates["tpr"], target["tpr"], atol=1e-9)
    else:
        np.testing.assert_allclose(rates["tpr"], target["tpr"], atol=1e-9)
        np.testing.assert_allclose(rates["fpr"], target["fpr"], atol=1e-9)
    # The bias is planted: the plain threshold is far from parity, so the check above is not vacuous.
    assert violation(objective, (scores >= 0.5).astype(float), labels, groups) > 0.2
    summary = gt.summary()
    assert summary["accuracy_after"] == pytest.approx(expected_accuracy(prob, labels), abs=1e-12)
    assert summary["accuracy_before"] == pytest.approx(np.mean((scores >= 0.5) == labels), abs=1e-12)
    for g, stats in enumerate(summary["by_group"].values()):
        assert stats["selection_rate"] == pytest.approx(rates["selection_rate"][g], abs=1e-12)
        assert stats["tpr"] == pytest.approx(rates["tpr"][g], abs=1e-12)
        assert stats["fpr"] == pytest.approx(rates["fpr"][g], abs=1e-12)


@pytest.mark.parametrize("objective", OBJECTIVES)
def test_equalises_with_tied_scores(objective):
    # Scores on a 0.01 grid: many samples share a score, so a rule's step is a block of ties.
    scores, labels, groups = biased_scores(3000, seed=2, num_groups=3, decimals=2)
    gt = GroupThresholds(objective).fit(scores, labels, groups)
    prob = gt.positive_probability(scores, groups)
    assert violation(objective, prob, labels, groups) < 1e-9
    # Tied scores get one probability: the rule is a function of the score.
    for g in range(3):
        in_group = groups == g
        for value in np.unique(scores[in_group]):
            assert np.ptp(prob[in_group & (scores == value)]) == 0.0


@pytest.mark.parametrize("num_groups", [2, 3])
@pytest.mark.parametrize("objective", OBJECTIVES)
def test_reduces_gap_on_fresh_data(objective, num_groups, fit_data, fresh_data):
    gt = GroupThresholds(objective).fit(*fit_data[num_groups])
    scores, labels, groups = fresh_data[num_groups]
    gap = GAPS[objective]
    before = gap(labels, (scores >= 0.5).astype(np.int64), sensitive_features=groups)
    after = gap(labels, gt.predict(scores, groups, seed=3), sensitive_features=groups)
    assert before > 0.2
    assert after <= 0.4 * before, (before, after)


@pytest.mark.parametrize("num_groups", [2, 3])
@pytest.mark.parametrize("objective", OBJECTIVES)
def test_matches_fairlearn_threshold_optimizer(objective, num_groups, fit_data):
    scores, labels, groups = fit_data[num_groups]
    oracle = ThresholdOptimizer(
        estimator=ScoreModel(),
        constraints=FAIRLEARN_CONSTRAINTS[objective],
        objective="accuracy_score",
        grid_size=1000,  # fairlearn's grid has grid_size + 1 points, like ours with 1001
        prefit=True,
        predict_method="predict_proba",
    ).fit(scores[:, None], labels, sensitive_features=groups)
    oracle_prob = oracle._pmf_predict(scores[:, None], sensitive_features=groups)[:, 1]
    prob = (
        GroupThresholds(objective, grid_size=1001)
        .fit(scores, labels, groups)
        .positive_probability(scores, groups)
    )
    ours_acc, oracle_acc = expected_accuracy(prob, labels), expected_accuracy(oracle_prob, labels)
    assert abs(ours_acc - oracle_acc) <= 0.01, (ours_acc, oracle_acc)
    if objective != "demographic_parity":
        # Both optimise over the groups' ROC hulls on the same grid: the optimum must not be worse.
        # (For demographic parity fairlearn mixes along the hull of (selection rate, accuracy), we along
        # the adjacent rules of the selection-rate path, which can cost a little accuracy.)
        assert ours_acc >= oracle_acc - 1e-9, (ours_acc, oracle_acc)
    ours_gap = violation(objective, prob, labels, groups)
    oracle_gap = violation(objective, oracle_prob, labels, groups)
    assert ours_gap <= oracle_gap + 1e-6, (ours_gap, oracle_gap)


def test_equalized_odds_randomizes_a_group(fit_data):
    # Different ROC hulls: at the common (FPR, TPR) point at least one group sits strictly above the
    # envelope and must mix in the score-independent coin (p_lo > 0 or p_hi < 1).
    scores, labels, groups = fit_data[2]
    gt = GroupThresholds("equalized_odds").fit(scores, labels, groups)
    rules = gt.rules_
    assert np.any((rules[:, 4] > 0) | (rules[:, 2] < 1))


@pytest.mark.parametrize("objective", OBJECTIVES)
def test_rules_are_monotone_step_functions(objective, fit_data):
    gt = GroupThresholds(objective).fit(*fit_data[3])
    t_hi, t_lo, p_hi, p_mid, p_lo = gt.rules_.T
    assert np.all(np.isfinite(gt.rules_))
    assert np.all(t_hi >= t_lo)
    assert np.all((p_hi >= p_mid) & (p_mid >= p_lo))
    assert np.all((p_lo >= 0) & (p_hi <= 1))


def test_demographic_parity_allows_group_without_positives():
    scores, labels, groups = biased_scores(2000, seed=4)
    labels[groups == 1] = 0
    gt = GroupThresholds("demographic_parity").fit(scores, labels, groups, group_names=["F", "M"])
    summary = gt.summary()
    assert summary["by_group"]["M"]["tpr"] is None
    json.dumps(summary, allow_nan=False)


# predict, inputs, persistence ----------------------------------------------------------------------------


def test_predict_is_reproducible_and_matches_probability(fit_data):
    scores, labels, groups = fit_data[3]
    gt = GroupThresholds("equalized_odds").fit(scores, labels, groups)
    first = gt.predict(scores, groups, seed=7)
    assert first.dtype == np.int64 and set(np.unique(first)) <= {0, 1}
    np.testing.assert_array_equal(first, gt.predict(scores, groups, seed=7))
    assert not np.array_equal(first, gt.predict(scores, groups, seed=8))
    # Mean over 400 seeds vs the probability: the standard error of a mean is <= 0.5 / sqrt(400) = 0.025.
    repeats = np.stack([gt.predict(scores, groups, seed=s) for s in range(400)])
    prob = gt.positive_probability(scores, groups)
    assert np.abs(repeats.mean(0) - prob).max() < 0.11
    for g in range(3):
        assert repeats[:, groups == g].mean() == pytest.approx(prob[groups == g].mean(), abs=3e-3)


def test_accepts_tensors_and_lists(fit_data):
    scores, labels, groups = fit_data[2]
    reference = GroupThresholds("equal_opportunity").fit(scores, labels, groups)
    as_tensors = GroupThresholds("equal_opportunity").fit(
        torch.from_numpy(scores), torch.from_numpy(labels), torch.from_numpy(groups)
    )
    as_lists = GroupThresholds("equal_opportunity").fit(scores.tolist(), labels.tolist(), groups.tolist())
    np.testing.assert_array_equal(as_tensors.rules_, reference.rules_)
    np.testing.assert_array_equal(as_lists.rules_, reference.rules_)
    expected = reference.positive_probability(scores, groups)
    np.testing.assert_array_equal(
        reference.positive_probability(torch.from_numpy(scores), torch.from_numpy(groups)), expected
    )


def test_save_load_round_trip(tmp_path, fit_data):
    scores, labels, groups = fit_data[3]
    gt = GroupThresholds("equalized_odds", grid_size=501).fit(scores, labels, groups, ["a", "b", "c"])
    path = gt.save(tmp_path / "post")
    assert path == str(tmp_path / "post" / THRESHOLDS_FILE)
    with open(path, encoding="utf-8") as f:
        json.load(f)  # strict JSON
    loaded = GroupThresholds.load(tmp_path / "post")
    assert loaded.objective == "equalized_odds" and loaded.grid_size == 501
    np.testing.assert_array_equal(
        loaded.positive_probability(scores, groups), gt.positive_probability(scores, groups)
    )
    np.testing.assert_array_equal(loaded.predict(scores, groups, seed=1), gt.predict(scores, groups, seed=1))
    assert loaded.summary() == gt.summary()
    assert list(loaded.summary()["by_group"]) == ["a", "b", "c"]


def test_load_rejects_malformed_file(tmp_path):
    (tmp_path / THRESHOLDS_FILE).write_text(json.dumps({"format_version": 1, "objective": "equalized_odds"}))
    path = str(tmp_path / THRESHOLDS_FILE)
    with pytest.raises(ValueError, match=re.escape(f"{path} is not a valid {THRESHOLDS_FILE} file")):
        GroupThresholds.load(tmp_path)


def test_unseen_group_falls_back_to_plain_threshold(fit_data):
    scores, labels, groups = fit_data[2]
    gt = GroupThresholds("demographic_parity").fit(scores, labels, groups)
    new_scores = np.array([0.2, 0.5, 0.7, 0.3, 0.9])
    new_groups = np.array([5, 5, 2, 0, 1])
    message = pp.WARN_UNSEEN_GROUPS.format(ids=[2, 5], last=1)
    with pytest.warns(UserWarning, match=re.escape(message)) as record:
        prob = gt.positive_probability(new_scores, new_groups)
    assert len(record) == 1  # once per call, not once per sample or id
    np.testing.assert_array_equal(prob[:3], [0.0, 1.0, 1.0])
    np.testing.assert_array_equal(prob[3:], gt.positive_probability(new_scores[3:], new_groups[3:]))
    with pytest.warns(UserWarning, match=re.escape(message)):
        preds = gt.predict(new_scores, new_groups)
    np.testing.assert_array_equal(preds[:3], [0, 1, 1])


# errors --------------------------------------------------------------------------------------------------


def test_constructor_errors():
    choices = ", ".join(repr(o) for o in OBJECTIVES)
    with pytest.raises(ValueError, match=re.escape(pp.ERR_OBJECTIVE.format(choices=choices, objective="dp"))):
        GroupThresholds("dp")
    with pytest.raises(ValueError, match=re.escape(pp.ERR_GRID_SIZE.format(grid_size=1))):
        GroupThresholds("equalized_odds", grid_size=1)


S = [0.1, 0.6, 0.8, 0.3, 0.7, 0.2]
Y = [0, 1, 1, 0, 1, 0]
G = [0, 0, 0, 1, 1, 1]
DP, EOP, EOD = OBJECTIVES
FIT_ERRORS = [
    # (objective, scores, labels, groups, group_names, message)
    (DP, [], [], [], None, pp.ERR_EMPTY),
    (DP, S, Y[:5], G, None, curves.ERR_LENGTH.format(name="labels", got=5, expected=6)),
    (DP, S, Y, G + [1], None, curves.ERR_LENGTH.format(name="groups", got=7, expected=6)),
    (DP, [S], [Y], [G], None, curves.ERR_NOT_1D.format(name="scores", shape=(1, 6))),
    (DP, S, [0, 1, 2, 0, 1, 0], G, None, curves.ERR_NOT_BINARY.format(name="labels", values=[0, 1, 2])),
    (DP, S, [0, 1, -1, 0, 1, 0], G, None, curves.ERR_NOT_BINARY.format(name="labels", values=[-1, 0, 1])),
    (
        DP,
        [0.1, 1.2, 0.8, 0.3, 0.7, -0.1],
        Y,
        G,
        None,
        curves.ERR_PROB_RANGE.format(name="scores", low=-0.1, high=1.2),
    ),
    (DP, [0.1, np.nan, 0.8, 0.3, 0.7, 0.2], Y, G, None, curves.ERR_PROB_NAN.format(name="scores", count=1)),
    (DP, S, Y, [0, 0, 0, 0.5, 1, 1], None, curves.ERR_NOT_INTEGER.format(name="groups", dtype="float64")),
    (DP, S, Y, [0, 0, 0, -1, 1, 1], None, curves.ERR_NEGATIVE_GROUP.format(low=-1)),
    (DP, S, Y, [0] * 6, None, pp.ERR_FEW_GROUPS.format(num_groups=1)),
    (DP, S, Y, [0, 0, 0, 2, 2, 2], None, pp.ERR_EMPTY_GROUP.format(name="1", group=1, last=2)),
    (DP, S, Y, [0, 0, 0, 2, 2, 2], ["a", "b", "c"], pp.ERR_EMPTY_GROUP.format(name="b", group=1, last=2)),
    (DP, S, Y, G, ["a", "b", "c"], pp.ERR_EMPTY_GROUP.format(name="c", group=2, last=2)),
    (DP, S, Y, [0, 0, 0, 1, 1, 2], ["a", "b"], curves.ERR_GROUP_NAMES.format(got=2, high=2)),
    (DP, S, Y, G, ["a", "a"], curves.ERR_DUPLICATE_NAME.format(name="a", first=0, second=1)),
    (EOP, S, [0, 0, 0, 0, 1, 0], G, ["F", "M"], pp.ERR_NO_POSITIVES.format(name="F", group=0, objective=EOP)),
    (EOD, S, [0, 0, 0, 0, 1, 0], G, None, pp.ERR_NO_POSITIVES.format(name="0", group=0, objective=EOD)),
    (EOD, S, [0, 1, 1, 1, 1, 1], G, ["F", "M"], pp.ERR_NO_NEGATIVES.format(name="M", group=1, objective=EOD)),
]


@pytest.mark.parametrize(("objective", "scores", "labels", "groups", "names", "message"), FIT_ERRORS)
def test_fit_errors(objective, scores, labels, groups, names, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        GroupThresholds(objective).fit(scores, labels, groups, group_names=names)


def test_equal_opportunity_allows_group_without_negatives():
    # Only equalized odds needs an FPR; equal opportunity fits a group whose labels are all positive.
    gt = GroupThresholds("equal_opportunity").fit(S, [0, 1, 1, 1, 1, 1], G)
    prob = gt.positive_probability(S, G)
    assert prob[1:3].mean() == pytest.approx(prob[3:].mean(), abs=1e-9)


def test_not_fitted_errors(tmp_path):
    gt = GroupThresholds("equal_opportunity")
    for method, call in [
        ("predict", lambda: gt.predict(S, G)),
        ("positive_probability", lambda: gt.positive_probability(S, G)),
        ("save", lambda: gt.save(tmp_path)),
        ("summary", gt.summary),
    ]:
        with pytest.raises(RuntimeError, match=re.escape(pp.ERR_NOT_FITTED.format(method=method))):
            call()
    assert not (tmp_path / THRESHOLDS_FILE).exists()


def test_predict_input_errors():
    gt = GroupThresholds("demographic_parity").fit(S, Y, G)
    with pytest.raises(
        ValueError, match=re.escape(curves.ERR_LENGTH.format(name="groups", got=5, expected=6))
    ):
        gt.predict(S, G[:5])
    with pytest.raises(
        ValueError, match=re.escape(curves.ERR_PROB_RANGE.format(name="scores", low=0.1, high=1.5))
    ):
        gt.predict([0.1, 1.5], [0, 1])
    with pytest.raises(ValueError, match=re.escape(curves.ERR_NEGATIVE_GROUP.format(low=-2))):
        gt.positive_probability([0.1, 0.5], [0, -2])
