"""fairtune.metrics against fairlearn, scikit-learn and direct numpy computations."""

import json
import math
import os
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import fairlearn.metrics as flm
import numpy as np
import pandas as pd
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from sklearn.metrics import accuracy_score, precision_score, recall_score

from fairtune import curves
from fairtune import functional as ff
from fairtune import metrics as fm
from fairtune.metrics import GroupStats

BINARY_STATS = (
    "count",
    "base_rate",
    "selection_rate",
    "accuracy",
    "tpr",
    "fpr",
    "fnr",
    "precision",
    "ece",
    "loss",
)
BINARY_GAPS = (
    "demographic_parity_difference",
    "demographic_parity_ratio",
    "equalized_odds_difference",
    "equalized_odds_difference_mean",
    "equalized_odds_ratio",
    "equalized_odds_ratio_mean",
    "equal_opportunity_difference",
    "accuracy_difference",
    "worst_group_accuracy",
    "tpr_gap_rms",
)
MULTICLASS_GAPS = (
    "demographic_parity_difference",
    "accuracy_difference",
    "worst_group_accuracy",
    "tpr_gap_rms",
)


# data ----------------------------------------------------------------------------------------------------


def binary_data(seed: int, num_samples: int, num_groups: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Labels, predictions, group ids (N,) with group-dependent base and error rates: non-zero gaps."""
    rng = np.random.default_rng(seed)
    groups = rng.integers(0, num_groups, num_samples)
    base = rng.uniform(0.3, 0.7, num_groups)[groups]
    labels = (rng.random(num_samples) < base).astype(np.int64)
    flip = rng.uniform(0.1, 0.4, num_groups)[groups]
    preds = np.where(rng.random(num_samples) < flip, 1 - labels, labels)
    return labels, preds, groups


def sensitive_features(kind: str, seed: int, num_samples: int) -> tuple[Any, np.ndarray, list[str], list]:
    """(features for both libraries, group ids (N,), our name per id, fairlearn by_group index per id)."""
    rng = np.random.default_rng(seed + 1000)
    if kind == "intersection":
        sex = rng.choice(["female", "male"], num_samples)
        race = rng.choice(["a", "b", "c"], num_samples)
        features = pd.DataFrame({"sex": sex, "race": race})
        keys = sorted(set(zip(sex, race, strict=True)))
        ids = np.array([keys.index(k) for k in zip(sex, race, strict=True)])
        return features, ids, [f"{s},{r}" for s, r in keys], keys
    num_groups = int(kind)
    names = sorted(f"group_{chr(ord('a') + g)}" for g in range(num_groups))
    ids = rng.integers(0, num_groups, num_samples)
    return np.array(names)[ids], ids, names, names


def to_kind(values: np.ndarray, kind: str) -> Any:
    """The same data as numpy, list, pandas Series or torch tensor (strings stay numpy for torch)."""
    if kind == "list":
        return values.tolist()
    if kind == "series":
        return pd.Series(values)
    if kind == "tensor" and values.dtype.kind in "iu":
        return torch.from_numpy(values)
    return values


def numpy_ece(confidence: np.ndarray, correct: np.ndarray, num_bins: int) -> float:
    ece = 0.0
    for k in range(num_bins):
        in_bin = (confidence > k / num_bins) & (confidence <= (k + 1) / num_bins)
        if in_bin.any():
            ece += in_bin.mean() * abs(confidence[in_bin].mean() - correct[in_bin].mean())
    return ece


def numpy_tpr_gap_rms(labels: np.ndarray, preds: np.ndarray, groups: np.ndarray, num_classes: int) -> float:
    recall = np.array(
        [
            recall_score(labels[groups == g], preds[groups == g], labels=range(num_classes), average=None)
            for g in np.unique(groups)
        ]
    )  # (G, C)
    return float(np.sqrt(np.mean((recall.max(0) - recall.min(0)) ** 2)))


def assert_results_close(a: fm.GroupResult, b: fm.GroupResult) -> None:
    a, b = a.to_dict(), b.to_dict()
    assert a.keys() == b.keys()
    assert a["by_group"].keys() == b["by_group"].keys()
    for section in ("overall", "gaps", *(("intervals",) if "intervals" in a else ())):
        for key in a[section]:
            np.testing.assert_allclose(
                a[section][key], b[section][key], rtol=1e-12, err_msg=f"{section}/{key}"
            )
    for group, stats in a["by_group"].items():
        for stat, value in stats.items():
            np.testing.assert_allclose(
                value, b["by_group"][group][stat], rtol=1e-12, err_msg=f"{group}/{stat}"
            )
    assert a["warnings"] == b["warnings"]


# agreement with fairlearn ---------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("kind", ["2", "3", "5", "intersection"])
def test_binary_matches_fairlearn(seed: int, kind: str) -> None:
    num_samples = 600
    features, ids, names, fl_index = sensitive_features(kind, seed, num_samples)
    # Group-dependent rates keyed on the sensitive feature, so the gaps are far from zero.
    rng = np.random.default_rng(seed)
    labels = (rng.random(num_samples) < rng.uniform(0.3, 0.7, len(names))[ids]).astype(np.int64)
    flip = rng.uniform(0.1, 0.4, len(names))[ids]
    preds = np.where(rng.random(num_samples) < flip, 1 - labels, labels)
    for g in range(len(names)):  # fairlearn reports 0 where we report NaN: compare on well-defined data only
        assert {0, 1} <= set(labels[ids == g]) and {0, 1} <= set(preds[ids == g])

    input_kind = ("numpy", "series", "tensor")[seed]
    y_true, y_pred = to_kind(labels, input_kind), to_kind(preds, input_kind)
    ours = ff.metric_frame(y_true, y_pred, sensitive_features=features)

    frame = flm.MetricFrame(
        metrics={
            "count": flm.count,
            "selection_rate": flm.selection_rate,
            "accuracy": accuracy_score,
            "tpr": flm.true_positive_rate,
            "fpr": flm.false_positive_rate,
            "fnr": flm.false_negative_rate,
            "precision": precision_score,
        },
        y_true=labels,
        y_pred=preds,
        sensitive_features=features,
    )
    assert list(ours.by_group) == names
    for name, key in zip(names, fl_index, strict=True):
        for stat in frame.by_group.columns:
            np.testing.assert_allclose(ours.by_group[name][stat], frame.by_group.loc[key, stat], rtol=1e-12)
        np.testing.assert_allclose(ours.by_group[name]["base_rate"], labels[ids == names.index(name)].mean())
    for stat in frame.overall.index:
        np.testing.assert_allclose(ours.overall[stat], frame.overall[stat], rtol=1e-12)

    kwargs = {"sensitive_features": features}
    expected = {
        "demographic_parity_difference": flm.demographic_parity_difference(labels, preds, **kwargs),
        "demographic_parity_ratio": flm.demographic_parity_ratio(labels, preds, **kwargs),
        "equalized_odds_difference": flm.equalized_odds_difference(labels, preds, **kwargs, agg="worst_case"),
        "equalized_odds_difference_mean": flm.equalized_odds_difference(labels, preds, **kwargs, agg="mean"),
        "equalized_odds_ratio": flm.equalized_odds_ratio(labels, preds, **kwargs, agg="worst_case"),
        "equalized_odds_ratio_mean": flm.equalized_odds_ratio(labels, preds, **kwargs, agg="mean"),
        "equal_opportunity_difference": flm.equal_opportunity_difference(labels, preds, **kwargs),
        "accuracy_difference": frame.difference()["accuracy"],
        "worst_group_accuracy": frame.group_min()["accuracy"],
        "tpr_gap_rms": numpy_tpr_gap_rms(labels, preds, ids, 2),
    }
    assert tuple(ours.gaps) == BINARY_GAPS
    for gap, value in expected.items():
        np.testing.assert_allclose(ours.gaps[gap], value, rtol=1e-12, err_msg=gap)

    # The array functions are the same numbers.
    functions = {
        "demographic_parity_difference": ff.demographic_parity_difference(y_true, y_pred, **kwargs),
        "demographic_parity_ratio": ff.demographic_parity_ratio(y_true, y_pred, **kwargs),
        "equalized_odds_difference": ff.equalized_odds_difference(y_true, y_pred, **kwargs),
        "equalized_odds_difference_mean": ff.equalized_odds_difference(y_true, y_pred, **kwargs, agg="mean"),
        "equalized_odds_ratio": ff.equalized_odds_ratio(y_true, y_pred, **kwargs, agg="worst_case"),
        "equalized_odds_ratio_mean": ff.equalized_odds_ratio(y_true, y_pred, **kwargs, agg="mean"),
        "equal_opportunity_difference": ff.equal_opportunity_difference(y_true, y_pred, **kwargs),
        "accuracy_difference": ff.accuracy_difference(y_true, y_pred, **kwargs),
        "worst_group_accuracy": ff.worst_group_accuracy(y_true, y_pred, **kwargs),
        "tpr_gap_rms": ff.tpr_gap_rms(y_true, y_pred, **kwargs),
    }
    for gap, value in functions.items():
        assert isinstance(value, float)
        np.testing.assert_allclose(value, expected[gap], rtol=1e-12, err_msg=gap)


def test_ratio_with_zero_maximum_is_nan_like_fairlearn() -> None:
    labels = np.array([0, 1, 0, 1, 0, 1])
    preds = np.zeros(6, dtype=np.int64)
    groups = np.array(["x", "x", "y", "y", "z", "z"])
    ours = ff.demographic_parity_ratio(labels, preds, sensitive_features=groups)
    theirs = flm.demographic_parity_ratio(labels, preds, sensitive_features=groups)
    assert math.isnan(ours) and math.isnan(theirs)
    assert ff.demographic_parity_difference(labels, preds, sensitive_features=groups) == 0.0


def test_list_inputs_and_integer_sensitive_features() -> None:
    labels, preds, groups = binary_data(7, 300, 3)
    ours = ff.equalized_odds_difference(
        labels.tolist(), preds.tolist(), sensitive_features=(groups * 10).tolist()
    )
    theirs = flm.equalized_odds_difference(labels, preds, sensitive_features=groups * 10)
    np.testing.assert_allclose(ours, theirs, rtol=1e-12)
    names = ff.metric_frame(labels, preds, sensitive_features=groups * 10).by_group
    assert list(names) == ["0", "10", "20"]


# multi-class ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1])
def test_multiclass_recall_and_tpr_gap_rms(seed: int) -> None:
    rng = np.random.default_rng(seed)
    num_samples, num_classes, num_groups = 1500, 4, 3
    groups = rng.integers(0, num_groups, num_samples)
    labels = rng.integers(0, num_classes, num_samples)
    flip = rng.uniform(0.1, 0.5, num_groups)[groups]
    preds = np.where(rng.random(num_samples) < flip, rng.integers(0, num_classes, num_samples), labels)
    names = ["north", "south", "west"]
    features = np.array(names)[groups]

    result = ff.metric_frame(labels, preds, sensitive_features=features)
    assert result.num_classes == num_classes
    assert tuple(result.gaps) == MULTICLASS_GAPS
    expected_stats = (
        "count",
        "accuracy",
        *(f"tpr_{c}" for c in range(num_classes)),
        *(f"selection_rate_{c}" for c in range(num_classes)),
        "ece",
        "loss",
    )
    for g, name in enumerate(names):
        mask = groups == g
        assert tuple(result.by_group[name]) == expected_stats
        recall = recall_score(labels[mask], preds[mask], labels=range(num_classes), average=None)
        for c in range(num_classes):
            np.testing.assert_allclose(result.by_group[name][f"tpr_{c}"], recall[c], rtol=1e-12)
        np.testing.assert_allclose(
            result.by_group[name]["accuracy"], accuracy_score(labels[mask], preds[mask])
        )

    # Multi-class demographic parity: fairlearn's binary DP of each one-vs-rest prediction, max over classes.
    per_class = [
        flm.demographic_parity_difference(labels == c, preds == c, sensitive_features=features)
        for c in range(num_classes)
    ]
    np.testing.assert_allclose(result.gaps["demographic_parity_difference"], max(per_class), rtol=1e-12)
    assert fm.gap_names(num_classes) == list(MULTICLASS_GAPS)
    assert fm.stat_names(num_classes) == list(expected_stats)

    frame = flm.MetricFrame(metrics=accuracy_score, y_true=labels, y_pred=preds, sensitive_features=features)
    rms = numpy_tpr_gap_rms(labels, preds, groups, num_classes)
    np.testing.assert_allclose(result.gaps["tpr_gap_rms"], rms, rtol=1e-12)
    np.testing.assert_allclose(ff.tpr_gap_rms(labels, preds, sensitive_features=features), rms, rtol=1e-12)
    np.testing.assert_allclose(
        ff.accuracy_difference(labels, preds, sensitive_features=features), frame.difference(), rtol=1e-12
    )
    np.testing.assert_allclose(
        ff.worst_group_accuracy(labels, preds, sensitive_features=features), frame.group_min(), rtol=1e-12
    )


# streaming and growth ------------------------------------------------------------------------------------


def test_streaming_equals_one_shot_with_late_group() -> None:
    rng = np.random.default_rng(3)
    num_samples, num_classes = 1000, 3
    labels = torch.from_numpy(rng.integers(0, num_classes, num_samples))
    groups = torch.from_numpy(rng.integers(0, 4, num_samples))
    groups[-40:] = 6  # group 6 first shows up in the last batch; group 5 never does
    logits = torch.from_numpy(rng.normal(size=(num_samples, num_classes)) * 2)
    losses = torch.from_numpy(rng.random(num_samples))

    one_shot = GroupStats(num_classes)
    one_shot.update(labels, groups, logits=logits, losses=losses)
    streamed = GroupStats(num_classes, num_groups=2)
    bounds = [0, 13, 150, 151, 400, 620, 900, num_samples]  # 7 uneven batches
    for start, end in zip(bounds[:-1], bounds[1:], strict=True):
        batch = slice(start, end)
        streamed.update(labels[batch], groups[batch], logits=logits[batch], losses=losses[batch])

    assert streamed.num_groups == one_shot.num_groups == 7
    assert torch.equal(streamed.conf, one_shot.conf)
    torch.testing.assert_close(streamed.calib, one_shot.calib, rtol=1e-12, atol=1e-9)
    torch.testing.assert_close(streamed.loss_sums, one_shot.loss_sums, rtol=1e-12, atol=1e-9)
    result = streamed.compute(min_group_size=10)
    assert_results_close(result, one_shot.compute(min_group_size=10))
    assert list(result.by_group) == ["0", "1", "2", "3", "6"]
    np.testing.assert_allclose(result.by_group["6"]["loss"], losses[-40:].mean().item())


def test_preds_input_reports_nan_ece_and_counts_match_logits() -> None:
    labels, preds, groups = (torch.from_numpy(a) for a in binary_data(4, 400, 3))
    logits = torch.nn.functional.one_hot(preds, 2).double() * 3
    from_preds, from_logits = GroupStats(2), GroupStats(2)
    from_preds.update(labels, groups, preds=preds)
    from_logits.update(labels, groups, logits=logits)
    assert torch.equal(from_preds.conf, from_logits.conf)
    result = from_preds.compute()
    assert math.isnan(result.overall["ece"]) and math.isnan(result.overall["loss"])
    assert all(math.isnan(stats["ece"]) for stats in result.by_group.values())


def test_reset_keeps_groups_and_update_after_sync_raises() -> None:
    labels, preds, groups = (torch.from_numpy(a) for a in binary_data(5, 200, 4))
    stats = GroupStats(2, bootstrap_samples=5)
    stats.update(labels, groups, preds=preds)
    stats.sync()  # single process: nothing to reduce, but the state is final
    with pytest.raises(RuntimeError) as error:
        stats.update(labels, groups, preds=preds)
    assert str(error.value) == fm.ERR_UPDATE_AFTER_SYNC
    stats.reset()
    assert stats.num_groups == 4
    assert all(not t.any() for t in (stats.conf, stats.boot_conf, stats.calib, stats.loss_sums))
    stats.update(labels[:0], groups[:0], preds=preds[:0])  # an empty batch is a no-op
    assert stats.compute().by_group == {}


# calibration ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("num_bins", [10, 15])
def test_ece_matches_numpy(num_bins: int) -> None:
    rng = np.random.default_rng(num_bins)
    num_samples, num_classes = 2000, 3
    labels = rng.integers(0, num_classes, num_samples)
    groups = rng.integers(0, 3, num_samples)
    logits = (rng.normal(size=(num_samples, num_classes)) * 2).astype(np.float32)
    stats = GroupStats(num_classes, ece_bins=num_bins)
    stats.update(torch.from_numpy(labels), torch.from_numpy(groups), logits=torch.from_numpy(logits))
    result = stats.compute()

    probs = np.exp(logits - logits.max(1, keepdims=True))
    probs /= probs.sum(1, keepdims=True)
    confidence, correct = probs.max(1), (probs.argmax(1) == labels).astype(float)
    np.testing.assert_allclose(result.overall["ece"], numpy_ece(confidence, correct, num_bins), rtol=1e-5)
    for g in range(3):
        mask = groups == g
        expected = numpy_ece(confidence[mask], correct[mask], num_bins)
        np.testing.assert_allclose(result.by_group[str(g)]["ece"], expected, rtol=1e-5)


def test_metric_frame_y_prob_enables_ece() -> None:
    labels, _, groups = binary_data(6, 800, 2)
    prob = np.clip(labels * 0.6 + np.random.default_rng(6).uniform(0, 0.4, 800), 0, 1)
    preds = (prob >= 0.5).astype(np.int64)
    confidence = np.where(preds == 1, prob, 1 - prob)
    correct = (preds == labels).astype(float)
    expected = numpy_ece(confidence, correct, 10)
    one_column = ff.metric_frame(labels, preds, sensitive_features=groups, y_prob=prob)
    two_columns = ff.metric_frame(
        labels, preds, sensitive_features=groups, y_prob=np.stack([1 - prob, prob], 1)
    )
    np.testing.assert_allclose(one_column.overall["ece"], expected, rtol=1e-12)
    np.testing.assert_allclose(two_columns.overall["ece"], expected, rtol=1e-12)


# bootstrap -----------------------------------------------------------------------------------------------


def bootstrap_result(num_samples: int, seed: int, data_seed: int = 8) -> dict:
    labels, preds, groups = (torch.from_numpy(a) for a in binary_data(data_seed, num_samples, 3))
    stats = GroupStats(2, bootstrap_samples=200, seed=seed)
    stats.update(labels, groups, preds=preds)
    return stats.compute(["a", "b", "c"], confidence=0.95)


def test_bootstrap_intervals() -> None:
    small, large = bootstrap_result(500, seed=0), bootstrap_result(8000, seed=0)
    assert tuple(large.intervals) == BINARY_GAPS
    for gap, (low, high) in large.intervals.items():
        assert low <= large.gaps[gap] <= high, gap
        small_low, small_high = small.intervals[gap]
        # Width shrinks like 1 / sqrt(N): 16x the data, about a quarter of the width.
        assert high - low < 0.6 * (small_high - small_low), gap

    assert bootstrap_result(8000, seed=0).intervals == large.intervals
    assert bootstrap_result(8000, seed=1).intervals != large.intervals
    assert ff.metric_frame([0, 1, 0, 1], [0, 1, 1, 1], sensitive_features=[0, 0, 1, 1]).intervals == {}


def test_bootstrap_replicates_are_poisson_weighted_copies() -> None:
    labels, preds, groups = (torch.from_numpy(a) for a in binary_data(9, 5000, 2))
    stats = GroupStats(2, bootstrap_samples=64)
    stats.update(labels, groups, preds=preds)
    assert stats.boot_conf.shape == (64, 2, 2, 2)
    # Every replicate is a resample: Poisson(1) totals have mean N and standard deviation sqrt(N).
    totals = stats.boot_conf.sum((1, 2, 3)).double()
    assert abs(totals.mean().item() - 5000) < 4 * math.sqrt(5000 / 64)
    assert 0.5 * math.sqrt(5000) < totals.std().item() < 1.5 * math.sqrt(5000)


# distributed ---------------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _sync_worker(
    rank: int, world_size: int, port: int, shards: list[tuple[torch.Tensor, ...]], out_dir: str
) -> None:
    # Set here rather than inherited, so the worker does not depend on the parent's environment.
    # A forked child must not reuse the parent's OpenMP pool (not fork-safe); DataLoader workers do the same.
    torch.set_num_threads(1)
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    try:
        labels, groups, logits, losses = shards[rank]
        stats = GroupStats(2, bootstrap_samples=16, sharded=True)
        stats.update(labels[:0], groups[:0], logits=logits[:0])  # an empty batch must not break the sync
        stats.update(labels, groups, logits=logits, losses=losses)
        stats.sync()
        stats.sync()  # idempotent: must not add the global counts twice
        state = {"conf": stats.conf, "calib": stats.calib, "loss_sums": stats.loss_sums}
        # Every rank holding all samples (gathered, not sharded): same seed everywhere, and sync() refused.
        full = [torch.cat([shard[k] for shard in shards]) for k in range(3)]
        gathered = GroupStats(2, bootstrap_samples=16)
        gathered.update(full[0], full[1], logits=full[2])
        with pytest.raises(RuntimeError) as refused:
            gathered.sync()
        assert str(refused.value) == fm.ERR_SYNC_NOT_SHARDED.format(world_size=world_size)
        state["gathered_intervals"] = gathered.compute().intervals
        result = stats.compute().to_dict()
        torch.save({**state, "boot_conf": stats.boot_conf, "result": result}, f"{out_dir}/{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_sync_two_process_gloo(tmp_path: Path) -> None:
    rng = np.random.default_rng(10)
    num_samples = 600
    labels = torch.from_numpy(rng.integers(0, 2, num_samples))
    groups = torch.from_numpy(rng.integers(0, 3, num_samples))
    logits = torch.from_numpy(rng.normal(size=(num_samples, 2)))
    losses = torch.from_numpy(rng.random(num_samples))
    half = num_samples // 2
    groups[half + 50 : half + 90] = 4  # only rank 1 sees group 4
    shards = [tuple(t[:half] for t in (labels, groups, logits, losses))]
    shards.append(tuple(t[half:] for t in (labels, groups, logits, losses)))

    # fork, not spawn, where the platform has it: a spawned child re-imports this module and with it the
    # whole fairtune package (transformers, peft), ~13 s for two children on two cores; fork takes 0.2 s.
    start_method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
    args = (2, _free_port(), shards, str(tmp_path))
    mp.start_processes(_sync_worker, args=args, nprocs=2, join=True, start_method=start_method)

    single = GroupStats(2)
    single.update(labels, groups, logits=logits, losses=losses)
    expected = single.compute()
    for rank in range(2):
        synced = torch.load(tmp_path / f"{rank}.pt")
        assert torch.equal(synced["conf"], single.conf)
        torch.testing.assert_close(synced["calib"], single.calib, rtol=1e-12, atol=1e-9)
        torch.testing.assert_close(synced["loss_sums"], single.loss_sums, rtol=1e-12, atol=1e-9)
        assert synced["boot_conf"].shape == (16, 5, 2, 2)
        assert synced.pop("gathered_intervals") == torch.load(tmp_path / "0.pt")["gathered_intervals"]
        result = fm.GroupResult.from_dict(synced.pop("result"))
        result.intervals = {}
        # The shards' replicates differ from the single process's, and so may the interval warnings.
        result.warnings = [w for w in result.warnings if "bootstrap interval" not in w]
        assert_results_close(result, expected)


# validation, warnings, flattening ------------------------------------------------------------------------


def _batch(n: int = 4) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return torch.tensor([0, 1] * (n // 2)), torch.zeros(n, dtype=torch.long), torch.tensor([1, 0] * (n // 2))


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: GroupStats(1), fm.ERR_NUM_CLASSES.format(num_classes=1)),
        (lambda: GroupStats(2, ece_bins=0), fm.ERR_ECE_BINS.format(ece_bins=0)),
        (lambda: GroupStats(2, bootstrap_samples=-1), fm.ERR_BOOTSTRAP_SAMPLES.format(bootstrap_samples=-1)),
        (lambda: GroupStats(2).update(*_batch()[:2]), fm.ERR_LOGITS_XOR_PREDS),
        (
            lambda: GroupStats(2).update(*_batch()[:2], preds=_batch()[2], logits=torch.zeros(4, 2)),
            fm.ERR_LOGITS_XOR_PREDS,
        ),
        (
            lambda: GroupStats(2).update(
                torch.tensor([0, 2]), torch.tensor([0, 0]), preds=torch.tensor([0, 1])
            ),
            fm.ERR_CLASS_RANGE.format(name="labels", num_classes=2, low=0, high=2),
        ),
        (
            lambda: GroupStats(3).update(
                torch.tensor([0, 1]), torch.tensor([0, 0]), preds=torch.tensor([-1, 1])
            ),
            fm.ERR_CLASS_RANGE.format(name="preds", num_classes=3, low=-1, high=1),
        ),
        (
            lambda: GroupStats(2).update(
                torch.tensor([0, 1]), torch.tensor([0, -3]), preds=torch.tensor([0, 1])
            ),
            fm.ERR_GROUP_BELOW_NO_GROUP.format(low=-3),
        ),
        (
            lambda: GroupStats(2).update(torch.tensor([0, 1]), torch.tensor([0]), preds=torch.tensor([0, 1])),
            curves.ERR_LENGTH.format(name="groups", got=1, expected=2),
        ),
        (
            lambda: GroupStats(2).update(
                torch.zeros(2, 1, dtype=torch.long), torch.tensor([0]), preds=torch.ones(2)
            ),
            curves.ERR_NOT_1D.format(name="labels", shape=(2, 1)),
        ),
        (
            lambda: GroupStats(2).update(
                torch.tensor([0.0, 1.0]), torch.tensor([0, 0]), preds=torch.tensor([0, 1])
            ),
            curves.ERR_NOT_INTEGER.format(name="labels", dtype=torch.float32),
        ),
        (
            lambda: GroupStats(3).update(
                torch.tensor([0, 1]), torch.tensor([0, 0]), logits=torch.zeros(2, 2)
            ),
            fm.ERR_LOGITS_SHAPE.format(num_classes=3, num_samples=2, shape=(2, 2)),
        ),
        (
            lambda: GroupStats(2).update(*_batch()[:2], preds=_batch()[2], losses=torch.zeros(3)),
            curves.ERR_LENGTH.format(name="losses", got=3, expected=4),
        ),
        (lambda: GroupStats(2).compute(confidence=1.0), fm.ERR_CONFIDENCE.format(confidence=1.0)),
        (
            lambda: ff.equalized_odds_ratio([0, 1], [0, 1], sensitive_features=["a", "b"], agg="max"),
            ff.ERR_AGG.format(choices="'worst_case', 'mean'", agg="max"),
        ),
        (
            lambda: ff.demographic_parity_difference([0, 2], [0, 1], sensitive_features=["a", "b"]),
            curves.ERR_NOT_BINARY.format(name="y_true", values=[0, 2]),
        ),
        (
            lambda: ff.metric_frame([0, 1], [0, 1], sensitive_features=["a", "b"], y_prob=[[0.5, 0.5]]),
            ff.ERR_PROB_SHAPE.format(num_samples=2, shape=(1, 2)),
        ),
        (
            lambda: ff.metric_frame([0, 1], [0, 1], sensitive_features=["a", "b", "c"]),
            ff.ERR_SENSITIVE_SHAPE.format(shape=(3, 1)),
        ),
    ],
)
def test_error_messages(call: Callable[[], object], message: str) -> None:
    with pytest.raises(ValueError) as error:
        call()
    assert str(error.value) == message


def test_duplicate_group_names_raise() -> None:
    stats = GroupStats(2)
    stats.update(torch.tensor([0, 1, 0]), torch.tensor([0, 1, 2]), preds=torch.tensor([0, 1, 1]))
    with pytest.raises(ValueError) as error:
        stats.compute(["2", "b"])
    assert str(error.value) == curves.ERR_DUPLICATE_NAME.format(name="2", first=0, second=2)


def test_small_and_absent_groups() -> None:
    labels, preds, groups = binary_data(11, 400, 3)
    groups = np.where(groups == 1, 3, groups)  # id 1 is absent: count 0
    labels[:6], preds[:6], groups[:6] = [0, 1, 0, 1, 1, 0], [0, 1, 1, 1, 0, 0], 4  # a tiny group 4
    stats = GroupStats(2, num_groups=2)
    stats.update(torch.from_numpy(labels), torch.from_numpy(groups), preds=torch.from_numpy(preds))
    result = stats.compute(["young", "middle", "old"], min_group_size=30)
    assert list(result.by_group) == ["young", "old", "3", "4"]
    assert result.warnings == [fm.WARN_SMALL_GROUP_EXCLUDED.format(name="4", count=6, min_group_size=30)]
    assert result.small_groups == ["4"] and result.gap_groups == ["young", "old", "3"]
    assert not any(math.isnan(value) for value in result.gaps.values())


def test_single_group_gives_nan_gaps_and_warning() -> None:
    stats = GroupStats(2)
    stats.update(torch.tensor([0, 1, 1, 0]), torch.full((4,), 2), preds=torch.tensor([0, 1, 0, 0]))
    result = stats.compute(min_group_size=1)
    assert list(result.by_group) == ["2"]
    assert all(math.isnan(value) for value in result.gaps.values())
    assert result.warnings == [fm.WARN_FEW_GROUPS.format(present=1)]


def test_undefined_rate_is_left_out_of_gaps() -> None:
    # Group 2 has no positives: its TPR is NaN (fairlearn would say 0) and the TPR gap uses groups 0 and 1.
    labels = torch.tensor([1, 1, 0, 0, 1, 1, 0, 0, 0, 0])
    preds = torch.tensor([1, 0, 0, 1, 1, 1, 0, 0, 1, 0])
    groups = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1, 2, 2])
    stats = GroupStats(2)
    stats.update(labels, groups, preds=preds)
    result = stats.compute(min_group_size=1)
    assert math.isnan(result.by_group["2"]["tpr"])
    assert result.gaps["equal_opportunity_difference"] == 0.5
    assert result.warnings == [fm.WARN_UNDEFINED_RATES.format(name="2", stats="tpr, fnr")]


def test_flat_drops_nan() -> None:
    labels, preds, groups = (torch.from_numpy(a) for a in binary_data(12, 300, 2))
    stats = GroupStats(2, bootstrap_samples=20)
    stats.update(labels, groups, preds=preds)  # no logits, no losses: ece and loss are NaN
    result = stats.compute(["a", "b"])
    flat = result.flat("eval/fairness")
    assert flat["eval/fairness/demographic_parity_difference"] == result.gaps["demographic_parity_difference"]
    assert flat["eval/fairness/tpr_gap_rms_ci_low"] == result.intervals["tpr_gap_rms"][0]
    assert flat["eval/fairness/tpr_gap_rms_ci_high"] == result.intervals["tpr_gap_rms"][1]
    assert flat["eval/fairness/overall/count"] == 300.0
    assert flat["eval/fairness/b/precision"] == result.by_group["b"]["precision"]
    assert "eval/fairness/a/ece" not in flat and "eval/fairness/overall/loss" not in flat
    assert all(isinstance(v, float) and not math.isnan(v) for v in flat.values())
    assert flat["eval/fairness/rows_without_group"] == 0.0
    expected_keys = len(BINARY_GAPS) * 3 + 3 * (len(BINARY_STATS) - 2) + 1
    assert len(flat) == expected_keys


# defects of issue 9 ---------------------------------------------------------------------------------------


def test_calibration_bins_have_one_definition_with_exact_edges() -> None:
    confidence = torch.tensor([0.0, 0.1, 0.3, 0.1 * 3, 0.7, 0.7000000000000001, 1.0], dtype=torch.float64)
    assert curves.calibration_bin(confidence, 10).tolist() == [0, 0, 2, 3, 6, 7, 9]
    # The plots' reliability bins are the metrics' bins: 0.1 * 3 = 0.30000000000000004 lies in (0.3, 0.4]
    # (the plots' former linspace edges put it into (0.2, 0.3], so their ECE disagreed with GroupStats').
    _, _, counts = curves.calibration_bins([0.1 * 3, 0.35, 0.3], [1, 0, 1], 10)
    assert counts.tolist() == [0, 0, 1, 2, 0, 0, 0, 0, 0, 0]
    prob = np.array([0.1 * 3, 0.35, 0.7, 0.6])
    labels, preds = np.array([1, 0, 1, 0]), np.array([1, 1, 1, 1])
    result = ff.metric_frame(labels, preds, sensitive_features=[0, 0, 1, 1], y_prob=prob)
    expected = numpy_ece(prob, (preds == labels).astype(float), 10)
    np.testing.assert_allclose(result.overall["ece"], expected, rtol=1e-12)


def test_constant_predictions_warn_and_name_the_class() -> None:
    labels, _, groups = (torch.from_numpy(a) for a in binary_data(13, 200, 2))
    stats = GroupStats(2)
    stats.update(labels, groups, preds=torch.ones_like(labels))
    result = stats.compute(["a", "b"], ["<=50K", ">50K"])
    assert result.gaps["demographic_parity_difference"] == 0.0  # a "perfectly fair" degenerate model
    warning = fm.WARN_CONSTANT_PREDICTIONS.format(count=200, name=">50K")
    assert warning in result.warnings and "not fairness" in warning
    mixed = GroupStats(2)
    mixed.update(labels, groups, preds=labels)
    assert not any("constant predictions" in w for w in mixed.compute().warnings)


def test_group_result_round_trips_through_json() -> None:
    labels, preds, groups = (torch.from_numpy(a) for a in binary_data(14, 300, 3))
    stats = GroupStats(2, bootstrap_samples=10)
    stats.update(labels, groups, preds=preds)
    result = stats.compute(["a", "b", "c"], grouping="sex", confidence=0.9)
    data = json.loads(json.dumps(result.to_dict(), allow_nan=True))
    assert list(data) == [
        "num_classes",
        "overall",
        "by_group",
        "gaps",
        "intervals",
        "warnings",
        "confidence",
        "small_groups",
        "excluded_groups",
        "min_group_size",
        "gaps_over",
        "rows_without_group",
        "interval_method",
    ]
    loaded = fm.GroupResult.from_dict(data, grouping="sex")
    assert loaded.flat("x").keys() == result.flat("x").keys()
    assert_results_close(loaded, result)
    assert loaded.intervals == result.intervals and loaded.confidence == 0.9
    assert math.isnan(fm.GroupResult.from_dict({**data, "gaps": {"tpr_gap_rms": None}}).gaps["tpr_gap_rms"])


def test_multiclass_class_names_label_per_class_stats() -> None:
    result = ff.metric_frame([0, 1, 2, 2], [0, 2, 2, 1], sensitive_features=["a", "a", "b", "b"])
    named = fm.GroupResult.from_dict(result.to_dict(), class_names=["cat", "dog", "eel"])
    assert (
        named.stat_label("tpr_1") == "tpr[dog]"
        and named.stat_label("selection_rate_2") == "selection_rate[eel]"
    )
    assert named.stat_label("accuracy") == "accuracy"


@pytest.mark.slow
def test_trainer_bootstrap_intervals_agree_across_ranks(tmp_path: Path) -> None:
    """FairTrainer gathers every batch on every rank, so each rank must report the same intervals."""
    repo = Path(__file__).resolve().parent.parent
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", "2"]
    cmd += ["--master_addr", "127.0.0.1", "--master_port", str(_free_port())]
    cmd += [str(repo / "tests" / "dist_eval.py"), str(tmp_path / "boot.json"), "200"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(cmd, cwd=repo, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-5000:]
    rank0, rank1 = (json.loads((tmp_path / f"boot.rank{r}.json").read_text())["metrics"] for r in (0, 1))
    assert rank0.keys() == rank1.keys()
    intervals = [k for k in rank0 if k.endswith(("_ci_low", "_ci_high"))]
    assert len(intervals) > 20
    assert {k: rank0[k] for k in intervals} == {k: rank1[k] for k in intervals}
