import logging
import re
from collections import Counter

import datasets
import pytest

from fairtune.data.oversampling import ERR_EMPTY_DATASET, ERR_TARGET_IMPOSSIBLE, ERR_TARGET_SHARE, oversample
from fairtune.groups import ERR_MISSING_COLUMN


def literal(template: str) -> str:
    """The longest literal part of an ERR_ template (between placeholders), for ``pytest.raises(match=)``."""
    return re.escape(max(re.split(r"\{[^}]*\}", template), key=len))


def skewed() -> datasets.Dataset:
    # 12 A (9 with label 1), 6 B (1 with label 1), 2 C (both label 0)
    sex = ["A"] * 12 + ["B"] * 6 + ["C"] * 2
    label = [1] * 9 + [0] * 3 + [1] + [0] * 5 + [0, 0]
    return datasets.Dataset.from_dict({"sex": sex, "label": label, "id": list(range(20))})


def test_oversample_groups_to_equal_and_target_share():
    data = skewed()
    out = oversample(data, "sex", seed=3)
    assert Counter(out["sex"]) == {"A": 12, "B": 12, "C": 12}
    assert list(out["id"])[:20] == list(range(20))  # originals kept, in order, duplicates after
    extra = out.select(range(20, len(out)))
    assert all(data[i]["sex"] == sex for i, sex in zip(extra["id"], extra["sex"], strict=True))
    assert oversample(data, "sex", seed=3).to_dict() == out.to_dict()
    assert oversample(data, "sex", seed=4).to_dict() != out.to_dict()

    shared = oversample(data, "sex", target_share=0.25)
    counts, total = Counter(shared["sex"]), len(shared)
    assert counts["A"] == 12 and min(counts.values()) / total >= 0.25  # A already above: untouched
    assert counts == {"A": 12, "B": 6, "C": 6}  # smallest t with t >= 0.25 * (12 + 6 + t): t = 6


def test_oversample_by_label(caplog):
    with caplog.at_level(logging.INFO, logger="fairtune.data.oversampling"):
        out = oversample(skewed(), "sex", by_label=True)
    cells = Counter(zip(out["sex"], out["label"], strict=True))
    assert cells == {("A", 1): 9, ("A", 0): 9, ("B", 1): 9, ("B", 0): 9, ("C", 0): 9}
    assert "('C', 1)" in caplog.text  # a cell with no rows cannot be filled: warned


@pytest.mark.parametrize(
    "kwargs, template",
    [
        ({"attribute": "gender"}, ERR_MISSING_COLUMN),
        ({"by_label": True, "label_column": "y"}, ERR_MISSING_COLUMN),
        ({"target_share": 0}, ERR_TARGET_SHARE),
        ({"target_share": 1.0}, ERR_TARGET_SHARE),
        ({"target_share": 0.4}, ERR_TARGET_IMPOSSIBLE),  # 3 groups x 0.4 > 1
    ],
)
def test_oversample_errors(kwargs, template):
    with pytest.raises(ValueError, match=literal(template)):
        oversample(skewed(), **{"attribute": "sex", **kwargs})
    with pytest.raises(ValueError, match=literal(ERR_EMPTY_DATASET)):
        oversample(skewed().select([]), "sex")
