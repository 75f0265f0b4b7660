import datasets
import pytest

from fairtune.groups import (
    ERR_MISSING_COLUMN,
    ERR_MISSING_GROUP_VALUES,
    ERR_MISSING_VALUE,
    ERR_SINGLE_GROUP,
    Grouping,
    GroupVocabulary,
    group_column,
    groupings_of,
    parse_grouping,
)


def _data(sex, race):
    return datasets.Dataset.from_dict({"sex": sex, "race": race, "label": [0] * len(sex)})


def test_parse_grouping():
    assert parse_grouping("sex") == ("sex",)
    assert parse_grouping(" sex + race ") == ("sex", "race")
    assert parse_grouping(["sex", "race"]) == ("sex", "race")
    with pytest.raises(ValueError, match="at least one attribute"):
        parse_grouping("+")


def test_fit_encode_intersections_and_sorted_ids():
    train = _data(["M", "F", "M", "F"], ["W", "B", "B", "W"])
    vocab = GroupVocabulary("sex", ["race", "sex+race"]).fit(train)
    assert vocab.names("sex") == ["F", "M"]
    assert vocab.names("sex+race") == ["F|B", "F|W", "M|B", "M|W"]
    enc = vocab.encode(train, split="training")
    assert enc[group_column("sex")] == [1, 0, 1, 0]
    assert enc[group_column("race")] == [1, 0, 0, 1]
    assert enc[group_column("sex+race")] == [3, 0, 2, 1]


def test_integer_attributes_and_unseen_group_at_evaluation(caplog):
    vocab = GroupVocabulary("age_bucket").fit(
        _data([0, 1, 1], ["a", "b", "c"]).rename_column("sex", "age_bucket")
    )
    ev = _data([2, 0], ["a", "a"]).rename_column("sex", "age_bucket")
    with caplog.at_level("WARNING"):
        enc = vocab.encode(ev)
    assert enc[group_column("age_bucket")] == [2, 0]
    assert vocab.names("age_bucket") == ["0", "1", "2"]
    assert "not in the training data" in caplog.text
    # Only training groups are saved with the model.
    assert vocab.to_dict()["groupings"]["age_bucket"]["values"] == ["0", "1"]


def test_save_load_roundtrip_maps_identically(tmp_path):
    train = _data(["M", "F", "X"], ["W", "B", "W"])
    vocab = GroupVocabulary("sex+race", ["sex"]).fit(train)
    vocab.save(str(tmp_path))
    loaded = GroupVocabulary.load(str(tmp_path))
    ev = _data(["X", "M", "F"], ["W", "W", "B"])
    for name in ("sex+race", "sex"):
        assert loaded.encode(ev)[group_column(name)] == vocab.encode(ev)[group_column(name)]
    assert loaded.train_grouping == "sex+race"


def test_errors_name_the_problem():
    vocab = GroupVocabulary("gender")
    with pytest.raises(ValueError) as err:
        vocab.fit(_data(["M", "F"], ["W", "B"]))
    assert str(err.value) == ERR_MISSING_COLUMN.format(
        split="training", column="gender", what="group_by / eval_group_by", columns=["sex", "race", "label"]
    )
    with pytest.raises(ValueError) as err:
        GroupVocabulary("sex").fit(_data(["M", None, "F"], ["W", "B", "W"]))
    assert str(err.value) == ERR_MISSING_GROUP_VALUES.format(
        column="sex", what="group_by / eval_group_by", split="training", count=1, rows="1"
    )
    nan = datasets.Dataset.from_dict({"score": [1.0, float("nan")], "label": [0, 1]})
    with pytest.raises(ValueError, match="NaN"):
        GroupVocabulary("score").fit(nan)
    with pytest.raises(ValueError) as err:
        GroupVocabulary("sex").fit(_data(["M", "M"], ["W", "B"]))
    assert str(err.value) == ERR_SINGLE_GROUP.format(grouping="sex", count=1, split="training", values=["M"])


@pytest.mark.parametrize("missing", [None, float("nan")])
def test_missing_value_in_a_float_group_column_is_refused(missing):
    # A CSV with an empty cell in a float column loads as a float column with a null: it must not become a
    # group named 'None' (or 'nan'), in fit or in encode.
    scores = [0.5, 1.0, missing, 0.5, missing, 1.0, missing, 0.5, missing, missing, missing]
    data = datasets.Dataset.from_dict({"score": scores, "label": [0] * len(scores)})
    with pytest.raises(ValueError) as err:
        GroupVocabulary("score").fit(data)
    assert str(err.value) == ERR_MISSING_GROUP_VALUES.format(
        column="score", what="group_by / eval_group_by", split="training", count=6, rows="2, 4, 6, 8, 9, ..."
    )
    vocab = GroupVocabulary("score").fit(data.select([0, 1]))
    with pytest.raises(
        ValueError, match=r"'score' .* of the test data has 1 missing or NaN value\(s\), at row\(s\) 0 "
    ):
        vocab.encode(data.select([2, 3]), split="test")
    with pytest.raises(ValueError) as err:  # the Python API one level down refuses it too
        Grouping(("score",)).fit([{"score": 0.5}, {"score": missing}])
    assert str(err.value) == ERR_MISSING_VALUE.format(column="score", grouping="score")


def test_groupings_of_is_the_canonical_list():
    assert groupings_of("sex", ["race", "sex + race", "sex", "race"]) == ["sex", "race", "sex+race"]
    assert groupings_of(" sex+race ", None) == ["sex+race"]
    assert groupings_of("race", ["sex"]) == ["race", "sex"]  # the training grouping first
    vocab = GroupVocabulary("sex", ["race", "sex + race", "sex"])
    assert list(vocab.groupings) == groupings_of("sex", ["race", "sex + race", "sex"])
