"""Causal LMs through FairTrainer: per-sequence loss, sample weights and penalties per group, evaluation per
group, and the task setting checked against the model (tiny models built from config)."""

from __future__ import annotations

import math
import re

import datasets
import pytest
import torch
import torch.nn.functional as F
from conftest import fair_args, tiny_bert

import fairtune.mitigation as M
from fairtune import FairTrainer
from fairtune.mitigation.combined import ERR_TASK
from fairtune.trainer import sequence_nll


def tiny_lm(vocab_size: int):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    config = GPT2Config(vocab_size=vocab_size, n_positions=32, n_embd=16, n_layer=2, n_head=2)
    config.resid_pdrop = config.embd_pdrop = config.attn_pdrop = 0.0  # deterministic steps
    return GPT2LMHeadModel(config)


def corpus(n: int = 48) -> datasets.Dataset:
    """Sentences about men or women; the women's sentences are longer and rarer words: a loss gap."""
    rows = {"text": [], "gender": []}
    for i in range(n):
        male = i % 3 != 0
        words = ["he" if male else "she", "works", "as", "engineer" if male else "nurse"]
        words += ["the", "high"] * (1 if male else 3)
        rows["text"].append(" ".join(words))
        rows["gender"].append("male" if male else "female")
    return datasets.Dataset.from_dict(rows)


@pytest.fixture
def lm_data(tokenizer):
    # A BERT tokenizer also returns token_type_ids, which GPT-2 would embed: keep what a causal LM gets.
    encode = lambda b: tokenizer(b["text"], return_token_type_ids=False)  # noqa: E731
    return corpus().map(encode, batched=True, remove_columns=["text"])


def lm_args(tmp_path, **overrides):
    options = dict(task="causal_lm", group_by="gender", learning_rate=5e-3, per_device_train_batch_size=8)
    return fair_args(tmp_path, **(options | overrides))


def test_sequence_nll_is_the_mean_token_nll_of_each_sequence():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 5, 7, generator=gen)
    labels = torch.randint(0, 7, (3, 5), generator=gen)
    labels[1, 3:] = -100  # padding
    labels[2, :] = -100  # nothing to predict
    expected = []
    for i in range(3):
        nll = [
            -F.log_softmax(logits[i, t], -1)[labels[i, t + 1]] for t in range(4) if labels[i, t + 1] != -100
        ]
        expected.append(torch.stack(nll).mean() if nll else torch.tensor(0.0))
    torch.testing.assert_close(sequence_nll(logits, labels), torch.stack(expected))


def test_causal_lm_trains_with_group_methods_and_reports_per_group_loss(tmp_path, tokenizer, lm_data):
    model = tiny_lm(len(tokenizer))
    args = lm_args(tmp_path, num_train_epochs=2, logging_steps=2, reweighting="group_dro")
    trainer = FairTrainer(
        model,
        args,
        train_dataset=lm_data,
        eval_dataset=lm_data,
        processing_class=tokenizer,
        mitigations=[M.LossParity(0.5)],
    )
    trainer.train()
    metrics = trainer.evaluate()
    logs = [h for h in trainer.state.log_history if "loss" in h]
    assert all(math.isfinite(h["penalty/loss_parity"]) and "group_dro/female/weight" in h for h in logs)
    assert "gender/female/loss" in logs[0] and "gender/male/loss" in logs[0]
    female, male = metrics["eval_gender/female/loss"], metrics["eval_gender/male/loss"]
    assert metrics["eval_gender/loss_difference"] == pytest.approx(abs(female - male))
    assert metrics["eval_gender/female/count"] == 16 and metrics["eval_gender/male/count"] == 32
    # eval_loss is the exact mean over sequences of each sequence's mean token NLL.
    collate = trainer.data_collator
    batch = collate(
        [{k: lm_data[i][k] for k in ("input_ids", "attention_mask")} for i in range(len(lm_data))]
    )
    model.eval()  # no dropout, as in evaluation
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    expected = sequence_nll(logits, batch["labels"]).mean().item()
    assert metrics["eval_loss"] == pytest.approx(expected, rel=1e-4)
    assert metrics["eval_perplexity"] == pytest.approx(math.exp(expected), rel=1e-4)


def test_gradient_accumulation_averages_sequences_not_tokens(tmp_path, tokenizer, lm_data):
    # One SGD step over 10 sequences in micro-batches of 4 + 4 + 2 equals a step on the mean over the 10
    # sequences of each one's mean token NLL (Trainer alone would divide by the number of tokens).
    data = lm_data.select(range(10))
    reference = tiny_lm(len(tokenizer))
    collate = FairTrainer(
        tiny_lm(len(tokenizer)), lm_args(tmp_path), train_dataset=data, processing_class=tokenizer
    ).data_collator
    batch = collate([{k: data[i][k] for k in ("input_ids", "attention_mask")} for i in range(10)])
    logits = reference(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    sequence_nll(logits, batch["labels"]).mean().backward()
    expected = torch.cat([(p - 0.1 * p.grad).detach().flatten() for p in reference.parameters()])

    model = tiny_lm(len(tokenizer))
    options = dict(
        max_steps=1, learning_rate=0.1, optim="sgd", max_grad_norm=0.0, lr_scheduler_type="constant"
    )
    args = lm_args(tmp_path, per_device_train_batch_size=4, gradient_accumulation_steps=3, **options)
    FairTrainer(model, args, train_dataset=data, processing_class=tokenizer).train()
    torch.testing.assert_close(torch.cat([p.detach().flatten() for p in model.parameters()]), expected)


def test_task_and_model_must_agree_and_methods_must_fit_the_task(tmp_path, tokenizer, lm_data):
    with pytest.raises(ValueError, match="task is 'classification', but the model GPT2LMHeadModel predicts"):
        FairTrainer(tiny_lm(len(tokenizer)), fair_args(tmp_path, group_by="gender"), train_dataset=lm_data)
    with pytest.raises(ValueError, match="task is 'causal_lm', but the model BertForSequenceClassification"):
        FairTrainer(tiny_bert(), lm_args(tmp_path), train_dataset=lm_data)
    penalty = M.DemographicParity()
    message = ERR_TASK.format(method=penalty, task="causal_lm", tasks="classification")
    with pytest.raises(ValueError, match=re.escape(message)):
        FairTrainer(tiny_lm(len(tokenizer)), lm_args(tmp_path), train_dataset=lm_data, mitigations=[penalty])
    assert not (tmp_path / "out").exists()


def test_console_keeps_gaps_and_stereotype_headlines_but_not_per_group_keys():
    from fairtune.callbacks import compact_logs

    logs = {
        "eval_crows_pairs/gender/pct_stereotype": 55.0,
        "eval_crows_pairs/gender/likelihood_diff": 1.0,
        "eval_gender/male/loss": 3.0,
        "eval_gender/loss_difference": 0.2,
        "eval_sex/demographic_parity_difference_ci_low": 0.1,
    }
    assert compact_logs(logs) == {
        "eval_crows_pairs/gender/pct_stereotype": 55.0,
        "eval_gender/loss_difference": 0.2,
    }
