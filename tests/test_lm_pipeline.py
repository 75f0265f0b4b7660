"""The causal-LM config run end to end on a tiny saved model and a local corpus: CDA with pair ids, the
consistency penalty, per-group evaluation, the monitor's keys, and the before/after report."""

from __future__ import annotations

import json
import re

import pytest
from lm_helpers import tiny_model, word_tokenizer

from fairtune import pipeline
from fairtune.config import DataArguments, FairTrainingArguments, ModelArguments
from fairtune.lm_pipeline import ERR_PAIRS_NEED_CDA

SENTENCES = [
    "He works as an engineer in the city.",
    "She works as a nurse in the city.",
    "The man said his brother was a doctor.",
    "The woman said her sister was a teacher.",
    "My father and my uncle went fishing.",
    "Her mother was a famous singer.",
    "The weather was cold in the north.",
    "A river runs through the old town.",
] * 6


@pytest.fixture
def lm_setup(tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(f"{s} Paragraph {i}." for i, s in enumerate(SENTENCES)))
    from fairtune.data.counterfactual import WordPairs, counterfactual

    swapped = [counterfactual(s, WordPairs.builtin("gender"))[0] for s in SENTENCES]
    crows = ["man", "woman", "men", "women", "people", "poor", "rich", "Black", "White"]
    tokenizer = word_tokenizer(
        [*SENTENCES, *swapped, " ".join(crows), "Paragraph " + " ".join(map(str, range(99)))]
    )
    model_dir = tmp_path / "tiny_lm"
    tiny_model(len(tokenizer)).save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    return corpus, model_dir


def _args(tmp_path, **overrides):
    options = dict(
        output_dir=str(tmp_path / "out"),
        task="causal_lm",
        group_by="gender",
        max_steps=3,
        per_device_train_batch_size=4,
        per_device_eval_batch_size=8,
        learning_rate=1e-3,
        report_to="none",
        use_cpu=True,
        disable_tqdm=True,
        lm_report_benchmarks=["crows_pairs"],
        lm_report_max_examples=8,
        logging_steps=1,
    )
    return FairTrainingArguments(**(options | overrides))


def test_lm_run_trains_with_cda_and_consistency_and_reports_before_and_after(tmp_path, lm_setup):
    corpus, model_dir = lm_setup
    data = DataArguments(train_file=str(corpus), counterfactual_augmentation="add", max_seq_length=32)
    args = _args(
        tmp_path,
        penalty="counterfactual_consistency",
        lm_monitor=["crows_pairs"],
        lm_monitor_max_examples=6,
        eval_strategy="steps",
        eval_steps=3,
    )
    trainer, splits = pipeline.build(ModelArguments(model_name_or_path=str(model_dir)), data, args)
    train = splits["train"]
    assert (
        len(train) % 2 == 0 and sum(train["counterfactual"]) == len(train) // 2
    )  # each copy beside its original
    assert set(train["gender"]) <= {"male", "female", "both"}
    out = pipeline.train_and_report(trainer, splits, ModelArguments(model_name_or_path=str(model_dir)), data)
    logs = [h for h in trainer.state.log_history if "penalty/counterfactual_consistency" in h]
    assert logs, "the consistency penalty ran on whole pairs"
    evals = [h for h in trainer.state.log_history if "eval_loss" in h]
    assert "eval_crows_pairs/gender/pct_stereotype" in evals[0]
    assert any(re.fullmatch(r"eval_gender/\w+/loss", k) for k in evals[0])
    report = json.loads((tmp_path / "out" / "lm_report.json").read_text())
    assert "crows_pairs" in report["before"] and "perplexity" in report["after"]
    assert out["before"]["perplexity"] > 0
    text = (tmp_path / "out" / "lm_report.md").read_text()
    assert "| perplexity |" in text
    card = (tmp_path / "out" / "README.md").read_text()
    assert "pipeline_tag: text-generation" in card and "| crows_pairs/gender/pct_stereotype |" in card


def test_lm_run_refuses_bad_input_before_the_model_loads(tmp_path, lm_setup, monkeypatch):
    corpus, model_dir = lm_setup
    import fairtune.lm.models as models

    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded before the input was checked")

    import fairtune.lm

    monkeypatch.setattr(models, "load_causal_lm", refuse)
    monkeypatch.setattr(
        fairtune.lm, "load_causal_lm", refuse, raising=False
    )  # the package caches its exports
    model_args = ModelArguments(model_name_or_path=str(model_dir))
    data = DataArguments(train_file=str(corpus))
    with pytest.raises(
        ValueError, match=re.escape(ERR_PAIRS_NEED_CDA.format(method="counterfactual_consistency"))
    ):
        pipeline.build(model_args, data, _args(tmp_path, penalty="counterfactual_consistency"))
    with pytest.raises(ValueError, match="does not work for task 'causal_lm'"):
        pipeline.build(model_args, data, _args(tmp_path, penalty="demographic_parity"))
    with pytest.raises(ValueError, match="unknown benchmark 'crows'"):
        pipeline.build(model_args, data, _args(tmp_path, lm_monitor=["crows"]))
    with pytest.raises(ValueError, match="no column 'race'"):
        pipeline.build(model_args, data, _args(tmp_path, group_by="race"))
    assert not (tmp_path / "out").exists()


def test_a_causal_lm_for_classification_and_the_reverse_are_refused_before_loading(tmp_path, lm_setup):
    from conftest import tiny_bert

    from fairtune.pipeline import check_model_for_task

    _, lm_dir = lm_setup
    classifier_dir = tmp_path / "classifier"
    tiny_bert().save_pretrained(classifier_dir)
    with pytest.raises(ValueError, match="task is 'classification', but model_name_or_path .* is a causal"):
        check_model_for_task(str(lm_dir), "classification")
    with pytest.raises(ValueError, match="task is 'causal_lm', but .* is not a causal language model"):
        check_model_for_task(str(classifier_dir), "causal_lm")
    with pytest.raises(ValueError, match="set task: causal_lm"):
        check_model_for_task("smollm2", "classification")
    with pytest.raises(ValueError, match="set task: classification"):
        check_model_for_task("minilm", "causal_lm")
    check_model_for_task(str(lm_dir), "causal_lm")
    check_model_for_task("someone/some-hub-model", "classification")  # checked once built
