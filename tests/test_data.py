import datasets
import pytest

from fairtune.config import DataArguments
from fairtune.data.adult import adult_sentence, load_adult, read_adult_file
from fairtune.data.loading import ERR_EMPTY, ERR_FILE_TYPE, load_raw_datasets, tokenize


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
    raw = load_raw_datasets(DataArguments(train_file=path, label_column="sentiment", max_train_samples=20))
    assert set(raw) == {"train", "validation"} and len(raw["train"]) == 20 and len(raw["validation"]) == 4
    assert raw["train"].features["label"].names == ["neg", "pos"]
    assert set(raw["train"].column_names) == {"review", "label", "sex"}


def test_loader_errors(tmp_path):
    bad = tmp_path / "data.txt"
    bad.write_text("x")
    with pytest.raises(ValueError) as err:
        load_raw_datasets(DataArguments(train_file=str(bad)))
    assert str(err.value) == ERR_FILE_TYPE.format(
        path=str(bad), choices=[".csv", ".json", ".jsonl", ".parquet"]
    )
    with pytest.raises(FileNotFoundError):
        load_raw_datasets(DataArguments(train_file=str(tmp_path / "nope.csv")))
    empty = tmp_path / "e.csv"
    datasets.Dataset.from_dict({"text": ["a", "b"], "label": [0, 1]}).to_csv(str(empty))
    with pytest.raises(ValueError) as err:
        load_raw_datasets(
            DataArguments(train_file=str(empty), validation_file=str(empty), max_train_samples=0)
        )
    assert str(err.value) == ERR_EMPTY.format(split="train")
    with pytest.raises(ValueError, match="no column 'stars'"):
        load_raw_datasets(DataArguments(train_file=str(empty), label_column="stars"))


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
