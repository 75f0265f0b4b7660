"""Config runs refuse bad input before the tokenizer or model loads, and before anything is written."""

from __future__ import annotations

import csv
import re

import numpy as np
import pytest
import torch

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
    # The audit's proxies reach the card; "he" / "she" name the group (built-in word list), so the words
    # listed as standing in for it are others.
    proxies = json.loads((out / "data_audit" / "data_audit.json").read_text())["proxies"]["sex"]
    tokens = {g: [t["token"] for t in ts if not t["identity_term"]] for g, ts in proxies["tokens"].items()}
    assert proxies["tokens"]["Male"][0] == {
        **proxies["tokens"]["Male"][0],
        "token": "he",
        "identity_term": True,
    }
    assert "- Proxies of `sex` (AUC of a one-column model): no input columns" in card
    assert f"  - words most associated with Male: {', '.join(tokens['Male'][:3])}" in card


def test_flip_rate_counts_predictions_that_change_when_identity_terms_are_swapped(tmp_path, tokenizer):
    import datasets
    from conftest import tiny_bert

    from fairtune import FairTrainer
    from fairtune.data.counterfactual import WordPairs, counterfactual
    from fairtune.evaluation import counterfactual_flip_rate

    def gendered(n, seed):  # the label is the pronoun, with 10% noise: a model learns to read the pronoun
        rng = np.random.default_rng(seed)
        male = rng.random(n) < 0.5
        job = rng.choice(["nurse", "engineer"], n)
        rows = {
            "text": [f"{'he' if m else 'she'} works as {j}" for m, j in zip(male, job, strict=True)],
            "label": (male ^ (rng.random(n) < 0.1)).astype(int).tolist(),
            "sex": np.where(male, "Male", "Female").tolist(),
        }
        return datasets.Dataset.from_dict(rows).map(lambda b: tokenizer(b["text"]), batched=True)

    data, train = gendered(40, 2), gendered(200, 3)
    options = dict(num_train_epochs=3, learning_rate=1e-2, per_device_train_batch_size=16, save_strategy="no")
    args = FairTrainingArguments(output_dir=str(tmp_path / "o"), group_by="sex", report_to="none", **options)
    trainer = FairTrainer(tiny_bert(), args, train_dataset=train, processing_class=tokenizer)
    trainer.train()
    pairs = WordPairs.builtin("gender")
    flips = counterfactual_flip_rate(trainer, trainer.prepare_dataset(data, "test"), pairs, "text")

    # Independent count: predict each text and its swapped text one at a time.
    model = trainer.model.eval()

    def predict(text):
        encoded = tokenizer(text, return_tensors="pt")
        with torch.no_grad():
            return int(model(**encoded).logits.argmax(-1))

    swapped = [counterfactual(t, pairs) for t in data["text"]]
    changed = [predict(t) != predict(s) for t, (s, _) in zip(data["text"], swapped, strict=True)]
    assert flips.rows == 40 and flips.swapped == 40  # every text says "he" or "she"
    assert flips.flipped == sum(changed) and flips.rate == flips.flipped / 40
    assert (
        flips.flipped > 20
    )  # the model reads the pronoun: most predictions flip, so the count is not vacuous
