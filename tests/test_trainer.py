import json
import os

import datasets
import numpy as np
import pytest
import torch
from conftest import MLP, biased_tabular, fair_args, text_dataset, tiny_bert
from fairlearn.metrics import MetricFrame, demographic_parity_difference, equalized_odds_difference
from transformers import TrainerCallback

from fairtune import FairTrainer, FairTrainingArguments, GroupVocabulary
from fairtune.groups import ERR_SINGLE_GROUP
from fairtune.trainer import (
    ERR_EMPTY_DATASET,
    ERR_LABEL_RANGE,
    ERR_NO_GROUP_BY,
    ERR_NO_LABEL,
    ERR_UNKNOWN_NUM_LABELS,
)


class Recorder(TrainerCallback):
    """Captures what every report_to backend receives: they are all callbacks fed by on_log."""

    def __init__(self):
        self.logs = []

    def on_log(self, args, state, control, logs=None, **kwargs):
        self.logs.append(dict(logs))


class SpyTrainer(FairTrainer):
    seen_keys: list = []

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        SpyTrainer.seen_keys.append(sorted(inputs))
        return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)


def test_group_columns_reach_compute_loss_but_not_forward(tmp_path, tabular):
    # MLP.forward(features) has no **kwargs: a group column reaching it would raise TypeError.
    args = fair_args(tmp_path, eval_group_by=["race", "sex+race"], remove_unused_columns=True)
    trainer = SpyTrainer(MLP(), args, train_dataset=tabular, eval_dataset=biased_tabular(seed=1))
    trainer.train()
    assert ["features", "group:race", "group:sex", "group:sex+race", "labels"] in SpyTrainer.seen_keys
    metrics = trainer.evaluate()
    assert {
        "eval_sex/demographic_parity_difference",
        "eval_race/accuracy_difference",
        "eval_sex+race/worst_group_accuracy",
        "eval_loss",
    } <= set(metrics)


def _one_sgd_step(tmp_path, data, batch, accumulation):
    torch.manual_seed(0)
    model = MLP()
    args = fair_args(
        tmp_path,
        per_device_train_batch_size=batch,
        gradient_accumulation_steps=accumulation,
        max_steps=1,
        optim="sgd",
        learning_rate=0.5,
        weight_decay=0.0,
        lr_scheduler_type="constant",
        max_grad_norm=1e9,
        logging_steps=1,
    )
    FairTrainer(model, args, train_dataset=data).train()
    return torch.cat([p.detach().flatten() for p in model.parameters()])


def test_gradient_accumulation_with_uneven_micro_batches_equals_one_big_batch(tmp_path):
    data = biased_tabular(n=10)
    big = _one_sgd_step(tmp_path / "a", data, batch=10, accumulation=1)
    accumulated = _one_sgd_step(tmp_path / "b", data, batch=4, accumulation=3)  # micro-batches 4, 4, 2
    torch.testing.assert_close(accumulated, big, rtol=1e-5, atol=1e-6)


def test_evaluation_metrics_equal_fairlearn_on_the_model_predictions(tmp_path, tabular):
    args = fair_args(tmp_path, num_train_epochs=2, eval_group_by=["race"], bootstrap_samples=100)
    test = biased_tabular(n=300, seed=7)
    trainer = FairTrainer(MLP(), args, train_dataset=tabular)
    trainer.train()
    metrics = trainer.evaluate(test)
    preds = trainer.predict(test).predictions.argmax(-1)
    y, sex = np.array(test["labels"]), np.array(test["sex"])
    frame = MetricFrame(
        metrics={"acc": lambda a, b: float(np.mean(a == b))}, y_true=y, y_pred=preds, sensitive_features=sex
    )
    assert metrics["eval_sex/F/accuracy"] == pytest.approx(frame.by_group["acc"]["F"])
    assert metrics["eval_sex/demographic_parity_difference"] == pytest.approx(
        demographic_parity_difference(y, preds, sensitive_features=sex)
    )
    assert metrics["eval_sex/equalized_odds_difference"] == pytest.approx(
        equalized_odds_difference(y, preds, sensitive_features=sex)
    )
    lo, hi = (
        metrics["eval_sex/demographic_parity_difference_ci_low"],
        metrics["eval_sex/demographic_parity_difference_ci_high"],
    )
    assert lo <= metrics["eval_sex/demographic_parity_difference"] <= hi
    assert trainer.fairness_results["eval"]["race"].by_group.keys() == {"Black", "White"}


def test_logs_carry_group_metrics_and_running_group_loss(tmp_path, tabular):
    recorder = Recorder()
    args = fair_args(tmp_path, eval_strategy="steps", eval_steps=10, logging_steps=5)
    FairTrainer(
        MLP(), args, train_dataset=tabular, eval_dataset=biased_tabular(seed=1), callbacks=[recorder]
    ).train()
    train_logs = [log for log in recorder.logs if "loss" in log]
    eval_logs = [log for log in recorder.logs if "eval_loss" in log]
    assert train_logs and all({"sex/F/loss", "sex/M/loss"} <= set(log) for log in train_logs)
    assert eval_logs and all("eval_sex/equal_opportunity_difference" in log for log in eval_logs)


def test_metric_for_best_model_can_be_a_fairness_gap(tmp_path, tabular):
    args = fair_args(
        tmp_path,
        num_train_epochs=3,
        eval_strategy="steps",
        eval_steps=5,
        save_strategy="steps",
        save_steps=5,
        load_best_model_at_end=True,
        metric_for_best_model="sex/equalized_odds_difference",
    )
    assert args.greater_is_better is False
    trainer = FairTrainer(MLP(), args, train_dataset=tabular, eval_dataset=biased_tabular(seed=1))
    trainer.train()
    values = [
        h["eval_sex/equalized_odds_difference"]
        for h in trainer.state.log_history
        if "eval_sex/equalized_odds_difference" in h
    ]
    assert len(values) >= 3
    assert trainer.state.best_metric == pytest.approx(min(values[:-1] if len(values) > 1 else values))
    # Checkpoints carry the group vocabulary.
    checkpoint = trainer.state.best_model_checkpoint
    assert os.path.isfile(os.path.join(checkpoint, "group_vocab.json"))


def test_tiny_bert_with_tokenizer_and_dynamic_padding_learns(tmp_path, tokenizer):
    data = text_dataset(n=160).map(lambda b: tokenizer(b["text"]), batched=True)
    lengths = {len(ids) for ids in data["input_ids"]}
    assert len(lengths) > 1  # rows differ in length, so the collator must pad per batch
    args = fair_args(tmp_path, num_train_epochs=25, learning_rate=1e-3, logging_steps=10)
    trainer = FairTrainer(
        tiny_bert(vocab_size=tokenizer.vocab_size),
        args,
        train_dataset=data,
        eval_dataset=text_dataset(n=80, seed=1).map(lambda b: tokenizer(b["text"]), batched=True),
        processing_class=tokenizer,
    )
    trainer.train()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert np.mean(losses[-3:]) < np.mean(losses[:3])
    assert trainer.evaluate()["eval_sex/Male/accuracy"] > 0.8  # "high"/"low" gives the label away


def test_lora_wrapped_model_trains_only_adapters(tmp_path, tokenizer):
    from peft import LoraConfig, TaskType, get_peft_model

    model = get_peft_model(
        tiny_bert(vocab_size=tokenizer.vocab_size),
        LoraConfig(task_type=TaskType.SEQ_CLS, r=4, target_modules=["query", "value"]),
    )
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    data = text_dataset(n=64).map(lambda b: tokenizer(b["text"]), batched=True)
    # 64 rows: a group may have fewer than the default min_group_size (30), which would leave the gap NaN.
    args = fair_args(tmp_path, learning_rate=1e-2, min_group_size=0)
    trainer = FairTrainer(model, args, train_dataset=data, processing_class=tokenizer)
    trainer.train()
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert any("lora_" in n for n in changed)
    assert all("lora_" in n or "classifier" in n for n in changed)
    assert "eval_sex/accuracy_difference" in trainer.evaluate(data)


def test_multiclass_labels(tmp_path):
    data = biased_tabular(n=450, num_labels=3, groups=("a", "b", "c"))
    trainer = FairTrainer(MLP(num_labels=3), fair_args(tmp_path, num_train_epochs=3), train_dataset=data)
    trainer.train()
    metrics = trainer.evaluate(data)
    assert 0 <= metrics["eval_sex/tpr_gap_rms"] <= 1
    assert {"eval_sex/a/tpr_2", "eval_sex/c/accuracy"} <= set(metrics)
    assert "eval_sex/equalized_odds_difference" not in metrics  # binary-only gap
    # Multi-class demographic parity: the largest per-class selection-rate gap, so a DP gate works.
    assert 0 <= metrics["eval_sex/demographic_parity_difference"] <= 1


def test_saved_vocabulary_reloads_for_later_evaluation(tmp_path, tabular):
    trainer = FairTrainer(MLP(), fair_args(tmp_path), train_dataset=tabular)
    trainer.train()
    trainer.save_model()
    saved = json.load(open(tmp_path / "out" / "group_vocab.json"))
    assert saved["groupings"]["sex"]["values"] == ["F", "M"]
    # A later evaluation with the loaded vocabulary and no training data; a new group is reported.
    test = biased_tabular(n=90, seed=3, groups=("F", "M", "X"))
    vocab = GroupVocabulary.load(str(tmp_path / "out"))
    with pytest.raises(ValueError) as err:
        FairTrainer(trainer.model, fair_args(tmp_path / "eval"), group_vocab=vocab)
    assert str(err.value) == ERR_UNKNOWN_NUM_LABELS
    again = FairTrainer(trainer.model, fair_args(tmp_path / "eval", num_labels=2), group_vocab=vocab)
    metrics = again.evaluate(test)
    assert {"eval_sex/F/count", "eval_sex/X/count"} <= set(metrics)
    assert sum(metrics[f"eval_sex/{g}/count"] for g in "FMX") == 90


# ----- bad input: clear errors before anything runs or is written --------------------------------------
def test_bad_input_errors(tmp_path, tabular):
    out = tmp_path / "out"
    with pytest.raises(ValueError) as err:
        FairTrainer(MLP(), fair_args(tmp_path, group_by=None), train_dataset=tabular)
    assert str(err.value) == ERR_NO_GROUP_BY
    with pytest.raises(ValueError, match="no column 'gender'"):
        FairTrainer(MLP(), fair_args(tmp_path, group_by="gender"), train_dataset=tabular)
    with pytest.raises(ValueError) as err:
        FairTrainer(MLP(), fair_args(tmp_path), train_dataset=tabular.remove_columns("labels"))
    assert str(err.value) == ERR_NO_LABEL.format(split="training", columns=["features", "sex", "race"])
    bad = tabular.map(lambda r, i: {"labels": 2 if i == 5 else r["labels"]}, with_indices=True)
    with pytest.raises(ValueError) as err:
        FairTrainer(MLP(), fair_args(tmp_path, num_labels=2), train_dataset=bad)
    assert str(err.value) == ERR_LABEL_RANGE.format(split="training", num_labels=2, low=0, high=2)
    missing = datasets.Dataset.from_dict(
        {"features": [[0.0] * 4] * 3, "labels": [0, None, 1], "sex": ["F", "M", "F"]}
    )
    with pytest.raises(ValueError, match="Column 'labels' .* of the training data has 1 missing"):
        FairTrainer(MLP(), fair_args(tmp_path), train_dataset=missing)
    with pytest.raises(ValueError) as err:
        FairTrainer(MLP(), fair_args(tmp_path), train_dataset=tabular.filter(lambda r: r["sex"] == "F"))
    assert str(err.value) == ERR_SINGLE_GROUP.format(grouping="sex", count=1, split="training", values=["F"])
    with pytest.raises(ValueError) as err:
        FairTrainer(MLP(), fair_args(tmp_path), train_dataset=tabular, eval_dataset=tabular.select([]))
    assert str(err.value) == ERR_EMPTY_DATASET.format(split="evaluation")
    with pytest.raises(TypeError, match="FairTrainingArguments"):
        from transformers import TrainingArguments

        FairTrainer(MLP(), TrainingArguments(output_dir=str(out)), train_dataset=tabular)
    assert not out.exists()  # nothing was written by any failed construction


def test_refuses_to_overwrite_an_earlier_run(tmp_path, tabular):
    out = tmp_path / "out"
    out.mkdir()
    (out / "model.safetensors").write_bytes(b"precious")
    with pytest.raises(FileExistsError, match="already holds a run"):
        FairTrainer(MLP(), fair_args(tmp_path), train_dataset=tabular).train()
    assert (out / "model.safetensors").read_bytes() == b"precious"
    FairTrainer(MLP(), fair_args(tmp_path, overwrite_output_dir=True), train_dataset=tabular).train()


def test_arguments_default_greater_is_better_by_metric_kind(tmp_path):
    def gib(metric):
        return FairTrainingArguments(
            output_dir=str(tmp_path), group_by="sex", metric_for_best_model=metric
        ).greater_is_better

    assert gib("sex/demographic_parity_difference") is False
    assert gib("sex/worst_group_accuracy") is True
    assert gib("loss") is False
