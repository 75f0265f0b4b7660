"""Config runs refuse bad input before the tokenizer or model loads, and before anything is written."""

from __future__ import annotations

import csv
import re

import pytest

from fairtune import pipeline
from fairtune.config import DataArguments, FairTrainingArguments, ModelArguments
from fairtune.mitigation.combined import ERR_POSTPROCESS_BINARY


def _csv(path, rows):
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return str(path)


@pytest.fixture
def no_model(monkeypatch):
    """Fail the test if a config run gets as far as loading a tokenizer or a model."""

    def refuse(*args, **kwargs):
        raise AssertionError("a tokenizer or model was loaded before the input was checked")

    import transformers

    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", refuse)
    monkeypatch.setattr(pipeline, "build_model", refuse)


def _files(tmp_path, labels=(0, 1), sex_valid=("F", "M")):
    train = [
        {"text": f"row {i}", "label": labels[i % len(labels)], "sex": "FM"[i % 2], "country": "US"}
        for i in range(12)
    ]
    valid = [
        {"text": f"val {i}", "label": labels[i % len(labels)], "sex": sex_valid[i % 2], "country": "US"}
        for i in range(6)
    ]
    return _csv(tmp_path / "train.csv", train), _csv(tmp_path / "valid.csv", valid)


def _build(tmp_path, train, valid, **training):
    out = tmp_path / "out"
    data = DataArguments(dataset_name=None, train_file=train, validation_file=valid)
    args = FairTrainingArguments(output_dir=str(out), report_to="none", use_cpu=True, **training)
    with pytest.raises(ValueError) as err:
        pipeline.build(ModelArguments(), data, args)
    assert not out.exists()  # nothing written
    return str(err.value)


def test_bad_groups_and_methods_fail_before_the_model_loads(tmp_path, no_model):
    train, valid = _files(tmp_path)
    assert "no column 'race'" in _build(tmp_path, train, valid, group_by="race")
    assert "only 1 group(s)" in _build(tmp_path, train, valid, group_by="country")
    message = _build(tmp_path, train, valid, group_by="sex", penalty="mindiff", penalty_weight=-1.0)
    assert "must be a finite number >= 0" in message


def test_post_processing_on_a_multiclass_task_fails_before_the_model_loads(tmp_path, no_model):
    train, valid = _files(tmp_path, labels=(0, 1, 2))
    message = _build(tmp_path, train, valid, group_by="sex", post_processing="demographic_parity")
    assert message == ERR_POSTPROCESS_BINARY.format(name="demographic_parity", num_labels=3)


def test_missing_group_value_in_validation_fails_before_the_model_loads(tmp_path, no_model):
    train, valid = _files(tmp_path, sex_valid=("F", ""))
    message = _build(tmp_path, train, valid, group_by="sex")
    assert re.search(r"missing", message) and "sex" in message


def test_a_run_on_local_files_names_them_in_the_report_and_card(tmp_path, tokenizer):
    # Defect 7: runs on local files were labelled 'adult' (the old dataset_name default).
    import json

    from conftest import text_dataset, tiny_bert

    model_dir = tmp_path / "tiny"
    tiny_bert(vocab_size=len(tokenizer)).save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    train, valid = tmp_path / "train.csv", tmp_path / "valid.csv"
    text_dataset(64, seed=0).to_csv(str(train), index=False)
    text_dataset(32, seed=1).to_csv(str(valid), index=False)
    out = tmp_path / "out"
    data = DataArguments(dataset_name=None, train_file=str(train), validation_file=str(valid))
    args = FairTrainingArguments(
        output_dir=str(out), group_by="sex", max_steps=2, report_to="none", use_cpu=True, disable_tqdm=True
    )
    pipeline.run(ModelArguments(model_name_or_path=str(model_dir)), data, args)
    source = f"train={train}, validation={valid}"
    report = json.loads((out / "fairness_report.json").read_text())
    assert report["run"]["dataset"] == source
    card = (out / "README.md").read_text()
    assert source in card and "adult" not in card
