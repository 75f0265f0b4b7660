"""Plots: the numpy ROC/AUC and calibration bins against references, PNG output, input errors."""

from __future__ import annotations

import dataclasses
import math
import re

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score
from sklearn.metrics import roc_curve as sk_roc_curve

from fairtune.curves import (
    ERR_BINS,
    ERR_DUPLICATE_NAME,
    ERR_GROUP_NAMES,
    ERR_LENGTH,
    ERR_NEGATIVE_GROUP,
    ERR_NOT_1D,
    ERR_NOT_BINARY,
    ERR_NOT_INTEGER,
    ERR_ONE_CLASS,
    ERR_PROB_NAN,
    ERR_PROB_RANGE,
    auc,
    calibration_bins,
    roc_curve,
)
from fairtune.metrics import GroupResult, GroupStats
from fairtune.plots import (
    ERR_CLASS_RANGE,
    ERR_CONFIDENCE,
    ERR_EMPTY,
    ERR_NAMES,
    ERR_NO_GROUPS,
    ERR_PROB_SHAPE,
    ERR_RESULT,
    ERR_UNKNOWN_GAP,
    _roc_by_group,
    plot_calibration,
    plot_comparison,
    plot_group_rates,
    plot_roc,
    plot_score_distributions,
)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _data(n: int, num_groups: int, seed: int = 0, no_positives: int | None = None):
    """scores (N,) rounded to 2 decimals (ties), labels (N,) correlated with them, groups (N,)."""
    rng = np.random.default_rng(seed)
    groups = rng.integers(0, num_groups, n)
    labels = (rng.random(n) < 0.3 + 0.15 * groups).astype(int)
    scores = np.clip(np.round(0.35 * labels + 0.65 * rng.random(n), 2), 0, 1)
    if no_positives is not None:
        labels[groups == no_positives] = 0
    return scores, labels, groups


def _result(scores, labels, groups, names, bootstrap: int = 20) -> GroupResult:
    p = torch.as_tensor(scores, dtype=torch.float64).clamp(1e-6, 1 - 1e-6)
    stats = GroupStats(2, bootstrap_samples=bootstrap)
    stats.update(
        torch.as_tensor(labels), torch.as_tensor(groups), logits=torch.stack([(1 - p).log(), p.log()], 1)
    )
    return stats.compute(names, min_group_size=1)


def _is_png(path) -> bool:
    with open(path, "rb") as f:
        return f.read(8) == PNG_SIGNATURE and f.seek(0, 2) > 1000


def _message(template: str) -> str:
    """Regex matching an ERR_ template with any values in its placeholders."""
    return ".*".join(re.escape(part) for part in re.split(r"\{[^}]*\}", template))


def test_roc_auc_equals_sklearn_per_group():
    scores, labels, groups = _data(600, 3)
    for g in range(3):
        s, y = scores[groups == g], labels[groups == g]
        fpr, tpr, thresholds = roc_curve(s, y)
        assert auc(fpr, tpr) == pytest.approx(roc_auc_score(y, s), abs=1e-12)
        ref_fpr, ref_tpr, ref_thresholds = sk_roc_curve(y, s, drop_intermediate=False)
        np.testing.assert_allclose(fpr, ref_fpr)
        np.testing.assert_allclose(tpr, ref_tpr)
        np.testing.assert_array_equal(thresholds[1:], ref_thresholds[1:])  # sklearn >= 1.3 also starts at inf


def test_auc_of_reversed_curve_and_bad_order():
    assert auc([1.0, 0.5, 0.0], [1.0, 0.5, 0.0]) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="monotonic"):
        auc([0.0, 1.0, 0.5], [0.0, 1.0, 1.0])


def test_calibration_bins_equal_direct_numpy():
    rng = np.random.default_rng(1)
    edges_hit = np.array([0.0, 0.1, 0.3, 0.7, 1.0])  # exact bin edges test the right-closed convention
    scores = np.r_[rng.random(300) ** 2, edges_hit]  # skewed: high bins are sparse or empty
    labels = (rng.random(len(scores)) < scores).astype(int)
    bins = 10
    mean_pred, frac_pos, counts = calibration_bins(scores, labels, bins)
    for k in range(bins):
        low, high = k / bins, (k + 1) / bins
        member = (scores > low) & (scores <= high) | ((k == 0) & (scores == 0))
        assert counts[k] == member.sum()
        if member.any():
            assert mean_pred[k] == pytest.approx(scores[member].mean())
            assert frac_pos[k] == pytest.approx(labels[member].mean())
        else:
            assert math.isnan(mean_pred[k]) and math.isnan(frac_pos[k])
    assert counts.sum() == len(scores)


@pytest.mark.parametrize("num_groups", [2, 3])
def test_every_plot_writes_a_png(tmp_path, num_groups):
    # With 3 groups the last one has no positives: no ROC curve, NaN TPR, a one-label histogram.
    names = ["F", "M", "X"][:num_groups]
    no_positives = 2 if num_groups == 3 else None
    scores, labels, groups = _data(400, num_groups, no_positives=no_positives)
    result = _result(scores, labels, groups, names)
    other = _result(np.clip(scores + 0.05, 0, 1), labels, groups, names)
    if no_positives is not None:
        assert math.isnan(result.by_group["X"]["tpr"])
        del result.by_group["X"]["fpr"]  # a missing stat is skipped like a NaN one
        assert _roc_by_group(scores, labels, groups, names)["X"] == "no positives"
    paths = [
        plot_group_rates(result, str(tmp_path / "rates.png"), title="test"),
        plot_roc(scores, labels, groups, names, str(tmp_path / "roc.png")),
        plot_score_distributions(scores, labels, groups, names, str(tmp_path / "scores.png")),
        plot_calibration(scores, labels, groups, names, str(tmp_path / "calib.png")),
        plot_comparison(result, other, str(tmp_path / "sub" / "compare.png")),
    ]
    assert all(_is_png(p) for p in paths)


def test_multiclass_plots(tmp_path):
    rng = np.random.default_rng(2)
    n, c = 300, 3
    labels, groups = rng.integers(0, c, n), rng.integers(0, 2, n)
    logits = torch.randn(n, c) + 2 * torch.nn.functional.one_hot(torch.as_tensor(labels), c)
    stats = GroupStats(c, bootstrap_samples=10)
    stats.update(torch.as_tensor(labels), torch.as_tensor(groups), logits=logits)
    result = stats.compute(["F", "M"])
    probs = logits.softmax(-1).numpy()
    # group name "Y" has no samples: listed in the legend, not plotted
    paths = [
        plot_group_rates(result, str(tmp_path / "rates.png")),
        plot_comparison(result, result, str(tmp_path / "compare.png"), names=("a", "b")),
        plot_calibration(probs, labels, groups, ["F", "M", "Y"], str(tmp_path / "calib.png"), bins=5),
    ]
    assert all(_is_png(p) for p in paths)


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        pytest.param({"scores": np.ones((4, 2))}, ERR_NOT_1D, id="scores_2d"),
        pytest.param({"scores": np.array([])}, ERR_EMPTY, id="empty"),
        pytest.param({"scores": np.array([0.1, 0.2, 1.5, 0.3])}, ERR_PROB_RANGE, id="score_above_1"),
        pytest.param({"scores": np.array([0.1, 0.2, math.nan, 0.3])}, ERR_PROB_NAN, id="score_nan"),
        pytest.param({"labels": np.array([0, 1, 1])}, ERR_LENGTH, id="length"),
        pytest.param({"labels": np.array([0, 1, 2, 1])}, ERR_NOT_BINARY, id="label_2"),
        pytest.param({"groups": np.array([0, 1, 2, 1])}, ERR_GROUP_NAMES, id="group_too_large"),
        pytest.param({"groups": np.array([0, -1, 1, 1])}, ERR_NEGATIVE_GROUP, id="group_negative"),
        pytest.param({"groups": np.array([0, 0.5, 1, 1])}, ERR_NOT_INTEGER, id="group_fractional"),
        pytest.param({"group_names": ["A", "A"]}, ERR_DUPLICATE_NAME, id="duplicate_name"),
    ],
)
def test_bad_arrays_are_rejected(tmp_path, kwargs, error):
    args = {
        "scores": np.array([0.1, 0.6, 0.8, 0.3]),
        "labels": np.array([0, 1, 1, 0]),
        "groups": np.array([0, 1, 0, 1]),
        "group_names": ["A", "B"],
        **kwargs,
    }
    plots = [plot_roc, plot_score_distributions]
    if error != ERR_NOT_1D:  # plot_calibration also takes (N, C) class probabilities
        plots.append(plot_calibration)
    for plot in plots:
        with pytest.raises(ValueError, match=_message(error)):
            plot(**args, path=str(tmp_path / "x.png"))
    assert not (tmp_path / "x.png").exists()


def test_bad_options_and_results_are_rejected(tmp_path):
    path = str(tmp_path / "x.png")
    scores, labels, groups = _data(100, 2)
    result = _result(scores, labels, groups, ["F", "M"], bootstrap=0)
    with pytest.raises(ValueError, match=_message(ERR_ONE_CLASS)):
        roc_curve([0.2, 0.4], [1, 1])
    with pytest.raises(ValueError, match=_message(ERR_BINS)):
        calibration_bins(scores, labels, bins=0)
    with pytest.raises(ValueError, match=_message(ERR_PROB_SHAPE)):
        plot_calibration(np.ones((2, 1)), [0, 0], [0, 1], ["F", "M"], path)
    with pytest.raises(ValueError, match=_message(ERR_CLASS_RANGE)):
        plot_calibration(np.full((2, 3), 1 / 3), [0, 3], [0, 1], ["F", "M"], path)
    with pytest.raises(ValueError, match=_message(ERR_CONFIDENCE)):
        plot_group_rates(result, path, confidence=1.0)
    with pytest.raises(ValueError, match=_message(ERR_RESULT)):
        plot_group_rates({"gaps": {}}, path)
    with pytest.raises(ValueError, match=_message(ERR_NO_GROUPS)):
        plot_group_rates(dataclasses.replace(result, by_group={}), path)
    with pytest.raises(ValueError, match=_message(ERR_NAMES)):
        plot_comparison(result, result, path, names=("only one",))
    with pytest.raises(ValueError, match=_message(ERR_UNKNOWN_GAP)):
        plot_comparison(result, result, path, gaps=["no_such_gap"])
