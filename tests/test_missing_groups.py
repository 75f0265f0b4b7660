"""Missing group labels (issue 12, point 3): the missing_group policy error | unknown | ignore, end to end."""

import json
import re

import datasets
import numpy as np
import pytest
import torch
from conftest import MLP, biased_tabular, fair_args

from fairtune import FairTrainer, GroupVocabulary
from fairtune.audit import MISSING, audit_dataset
from fairtune.data.loading import check_splits
from fairtune.groups import ERR_MISSING_GROUP_VALUES, NO_GROUP, UNKNOWN_GROUP, group_column
from fairtune.metrics import WARN_ROWS_WITHOUT_GROUP, GroupStats
from fairtune.mitigation import Mitigations, PenaltyBatch, TermLog
from fairtune.mitigation.combined import identity_reduce
from fairtune.mitigation.penalties import DemographicParity
from fairtune.mitigation.reweighting import GroupDRO, KamiranCalders
from fairtune.report import render_markdown
from fairtune.trainer import ERR_POSTPROCESS_NO_GROUP

MISSING_ROWS = [3, 10, 11, 57, 100, 101, 250]  # planted: sex is None there


def with_missing(data: datasets.Dataset, rows=MISSING_ROWS, column: str = "sex") -> datasets.Dataset:
    values = list(data[column])
    for r in rows:
        values[r] = None
    return data.remove_columns(column).add_column(column, values)


def test_error_names_column_count_and_rows(tmp_path):
    data = with_missing(biased_tabular())
    expected = ERR_MISSING_GROUP_VALUES.format(
        column="sex",
        what="group_by / eval_group_by",
        split="training",
        count=7,
        rows="3, 10, 11, 57, 100, ...",
    )
    with pytest.raises(ValueError) as err:
        FairTrainer(MLP(), fair_args(tmp_path), train_dataset=data)
    assert str(err.value) == expected
    # The data check of config runs says the same, naming the split.
    with pytest.raises(ValueError) as err:
        check_splits(datasets.DatasetDict(train=data), ["sex"], label_column="labels")
    assert str(err.value) == expected.replace("of the training data", "of the train data")
    assert not (tmp_path / "out").exists()  # refused before anything was written


def test_unknown_is_a_group_everywhere(tmp_path):
    train = with_missing(biased_tabular())
    # sex+race: a row with any part missing is the one intersection group "unknown".
    race = list(train["race"])
    race[20] = None
    train = train.remove_columns("race").add_column("race", race)
    args = fair_args(
        tmp_path, missing_group="unknown", eval_group_by=["sex+race"], reweighting="kamiran_calders"
    )
    trainer = FairTrainer(MLP(), args, train_dataset=train, eval_dataset=train)
    assert trainer.group_vocab.names("sex") == ["F", "M", UNKNOWN_GROUP]
    assert trainer.group_vocab.names("sex+race")[-1] == UNKNOWN_GROUP
    assert not any("|unknown" in n or "unknown|" in n for n in trainer.group_vocab.names("sex+race"))
    # A normal group for training statistics: the reweighter has a row of weights for it.
    weights = trainer.mitigations.loss_reweighters[0].weights
    assert weights.shape[0] == 3 and bool((weights[2] > 0).any())
    trainer.train()
    trainer.evaluate()
    result = trainer.fairness_results["eval"]
    assert result["sex"].by_group[UNKNOWN_GROUP]["count"] == 7
    assert result["sex+race"].by_group[UNKNOWN_GROUP]["count"] == 8  # 7 without sex, 1 without race
    assert result["sex"].rows_without_group == 0
    # Saved vocabulary: "unknown" is an entry; the policy is not saved (it belongs to the run).
    path = trainer.group_vocab.save(str(tmp_path / "vocab"))
    saved = json.load(open(path))
    assert UNKNOWN_GROUP in saved["groupings"]["sex"]["values"] and "missing_group" not in json.dumps(saved)
    # A saved model evaluated later under unknown maps missing values to the training id of "unknown".
    loaded = GroupVocabulary.load(path, missing_group="unknown")
    encoded = loaded.encode(with_missing(biased_tabular(n=50, seed=3), rows=[1, 2]))
    assert encoded[group_column("sex")][1] == 2 == encoded[group_column("sex")][2]


def test_unknown_value_unseen_in_training_is_an_evaluation_only_group():
    vocab = GroupVocabulary("sex", missing_group="unknown").fit(biased_tabular())
    encoded = vocab.encode(with_missing(biased_tabular(n=40, seed=1), rows=[0]))
    assert encoded[group_column("sex")][0] == 2 and vocab.names("sex") == ["F", "M", UNKNOWN_GROUP]
    assert vocab.to_dict()["groupings"]["sex"]["values"] == ["F", "M"]  # evaluation-only: not saved


def test_groupstats_counts_rows_without_group_in_overall_only():
    rng = np.random.default_rng(0)
    labels = torch.from_numpy(rng.integers(0, 2, 300))
    preds = torch.from_numpy(rng.integers(0, 2, 300))
    groups = torch.from_numpy(rng.integers(0, 2, 300))
    groups[::7] = NO_GROUP
    stats = GroupStats(2)
    stats.update(labels, groups, preds=preds)
    result = stats.compute(["a", "b"])
    grouped = groups >= 0
    only = GroupStats(2)
    only.update(labels[grouped], groups[grouped], preds=preds[grouped])
    expected = only.compute(["a", "b"])
    assert json.dumps([result.gaps, result.by_group]) == json.dumps([expected.gaps, expected.by_group])
    assert result.rows_without_group == 43 and result.overall["count"] == 300
    assert result.overall["accuracy"] == pytest.approx(float((labels == preds).double().mean()))
    assert WARN_ROWS_WITHOUT_GROUP.format(count=43) in result.warnings
    assert result.flat("eval_sex")["eval_sex/rows_without_group"] == 43.0
    assert "Rows without a group (missing attribute): 43" in render_markdown({"test": {"sex": result}})


class SpyPenalty(DemographicParity):
    """Records the smallest group id it was given."""

    seen: list[int] = []

    def compute(self, batch):
        SpyPenalty.seen.append(int(batch.groups.min()) if batch.groups.numel() else 0)
        return super().compute(batch)


def test_ignore_penalty_weights_and_dro_see_only_rows_with_a_group():
    torch.manual_seed(0)
    n = 64
    logits = torch.randn(n, 2, requires_grad=True)
    labels = torch.randint(0, 2, (n,))
    groups = torch.randint(0, 3, (n,))
    groups[::5] = NO_GROUP
    keep = groups >= 0
    losses = torch.nn.functional.cross_entropy(logits, labels, reduction="none")
    SpyPenalty.seen.clear()
    penalty, reweighter = SpyPenalty(weight=1.0), KamiranCalders()
    mitigations = Mitigations([penalty, reweighter])
    mitigations.setup(MLP(), 3, 2, groups, labels)
    # The reweighter is fitted on the rows with a group only.
    alone = KamiranCalders().fit(groups[keep], labels[keep], 3, 2)
    torch.testing.assert_close(reweighter.weights, alone.weights)

    # The penalty's value is the one on the labelled rows, and it never sees id -1.
    batch = PenaltyBatch(logits, labels, groups, 3, losses)
    value = mitigations.extra_loss(None, batch, 0, TermLog(), without_group=True)
    expected = penalty(PenaltyBatch(logits[keep], labels[keep], groups[keep], 3, losses[keep]))
    assert value.item() == pytest.approx(expected.item(), abs=1e-7)
    assert value.item() > 0 and min(SpyPenalty.seen) >= 0
    value.backward()
    assert bool((logits.grad[~keep] == 0).all()) and bool((logits.grad[keep] != 0).any())

    weights = mitigations.sample_weights(losses.detach(), groups, labels, identity_reduce, TermLog())
    assert bool((weights[~keep] == 1).all())
    torch.testing.assert_close(weights[keep], alone.sample_weights(groups[keep], labels[keep]))

    # GroupDRO's update counts the labelled rows only: same q as an update without the other rows.
    dro_all, dro_kept = Mitigations([GroupDRO()]), Mitigations([GroupDRO()])
    for m in (dro_all, dro_kept):
        m.setup(MLP(), 3, 2)
    w_all = dro_all.sample_weights(losses.detach(), groups, labels, identity_reduce, TermLog())
    w_kept = dro_kept.sample_weights(
        losses.detach()[keep], groups[keep], labels[keep], identity_reduce, TermLog()
    )
    torch.testing.assert_close(dro_all.group_dro.q, dro_kept.group_dro.q)
    torch.testing.assert_close(w_all[keep], w_kept)
    assert bool((w_all[~keep] == 1).all()) and not bool((w_kept == 1).all())


def test_ignore_trains_and_reports_rows_without_group(tmp_path):
    SpyPenalty.seen.clear()
    train = with_missing(biased_tabular())
    evaluation = with_missing(biased_tabular(n=200, seed=1), rows=[0, 1, 2, 3, 4])
    args = fair_args(
        tmp_path, missing_group="ignore", reweighting="kamiran_calders", eval_group_by=["sex+race"]
    )
    trainer = FairTrainer(
        MLP(), args, train_dataset=train, eval_dataset=evaluation, mitigations=[SpyPenalty(1.0)]
    )
    column = trainer.train_dataset[group_column("sex")]
    assert [column[r] for r in MISSING_ROWS] == [NO_GROUP] * 7 and trainer.group_vocab.names("sex") == [
        "F",
        "M",
    ]
    trainer.train()
    assert SpyPenalty.seen and min(SpyPenalty.seen) >= 0  # a penalty never sees id -1
    metrics = trainer.evaluate()
    assert metrics["eval_sex/rows_without_group"] == 5 and metrics["eval_sex+race/rows_without_group"] == 5
    result = trainer.fairness_results["eval"]["sex"]
    assert sum(stats["count"] for stats in result.by_group.values()) == 195 and result.overall["count"] == 200
    assert all(np.isfinite(v) for k, v in metrics.items() if k.startswith("eval_sex/"))


def test_ignore_refuses_per_group_thresholds(tmp_path):
    args = fair_args(tmp_path, missing_group="ignore", post_processing="demographic_parity")
    with pytest.raises(
        ValueError, match=re.escape(ERR_POSTPROCESS_NO_GROUP.format(name="demographic_parity"))
    ):
        FairTrainer(MLP(), args, train_dataset=biased_tabular(), eval_dataset=biased_tabular(seed=1))


def test_missing_group_value_is_checked(tmp_path):
    with pytest.raises(ValueError, match="missing_group must be one of error, unknown, ignore; got 'drop'"):
        fair_args(tmp_path, missing_group="drop")


def test_data_audit_counts_missing_group_values():
    audit = audit_dataset(with_missing(biased_tabular()), ["sex", "sex+race"], label_column="labels")
    assert audit["groupings"]["sex"]["groups"][MISSING]["count"] == 7
    assert audit["groupings"]["sex+race"]["groups"][MISSING]["count"] == 7
