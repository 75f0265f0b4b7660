"""Shared fixtures: tiny models built from config and synthetic data with a planted group bias."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from torch import nn

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

DEFAULT_THREADS = torch.get_num_threads()
# One intra-op thread for tests on tiny models, where OpenMP hand-offs between tiny ops cost more than they
# save (measured: a 2-layer BERT test took 257 s with two threads on a busy 2-core machine and 14 s with one).
# Set at import, so module-scoped fixtures (built before any function-scoped one) train with one thread too.
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def torch_threads(request):
    """Tests marked slow run real models and keep every thread; the others run with one."""
    slow = request.node.get_closest_marker("slow") is not None
    torch.set_num_threads(DEFAULT_THREADS if slow else 1)
    yield
    torch.set_num_threads(1)


@pytest.fixture
def one_thread():
    """One thread also for a slow test, when its models are tiny."""
    torch.set_num_threads(1)


WORDS = ["the", "a", "man", "woman", "he", "she", "works", "as", "nurse", "engineer", "high", "low", "income"]


class MLP(nn.Module):
    """A plain nn.Module classifier on tabular features: (N, D) -> logits (N, C)."""

    def __init__(self, d_in: int = 4, num_labels: int = 2, hidden: int = 16):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(d_in, hidden), nn.ReLU(), nn.Linear(hidden, num_labels))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.net(features)


def biased_tabular(n: int = 400, seed: int = 0, num_labels: int = 2, groups: tuple[str, ...] = ("F", "M")):
    """Features whose last column leaks the group, labels that favour the last group: a planted bias."""
    import datasets

    rng = np.random.default_rng(seed)
    g = rng.integers(0, len(groups), n)
    x = rng.normal(size=(n, 4)).astype(np.float32)
    x[:, 3] = g + 0.1 * rng.normal(size=n)
    score = x[:, 0] + 1.5 * (g == len(groups) - 1) + 0.3 * rng.normal(size=n)
    if num_labels == 2:
        y = (score > 0.75).astype(int)
    else:
        y = np.digitize(score, np.quantile(score, np.linspace(0, 1, num_labels + 1)[1:-1]))
    return datasets.Dataset.from_dict(
        {
            "features": x.tolist(),
            "labels": y.tolist(),
            "sex": [groups[i] for i in g],
            "race": rng.choice(["Black", "White"], n).tolist(),
        }
    )


@pytest.fixture
def tabular():
    return biased_tabular()


def tiny_bert(num_labels: int = 2, vocab_size: int = 64):
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=vocab_size,
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=64,
        num_labels=num_labels,
    )
    return BertForSequenceClassification(config)


@pytest.fixture
def tokenizer():
    """A real BERT tokenizer over a small word vocabulary, built offline."""
    from transformers import BertTokenizer

    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]
    return BertTokenizer(vocab={w: i for i, w in enumerate(words)})


def text_dataset(n: int = 120, seed: int = 0):
    """Sentences of varying length; 'high' appears mostly for men: a label correlated with the group."""
    import datasets

    rng = np.random.default_rng(seed)
    rows = {"text": [], "label": [], "sex": []}
    for _ in range(n):
        male = rng.random() < 0.5
        y = int(rng.random() < (0.7 if male else 0.2))
        words = ["he" if male else "she", "works", "as", rng.choice(["nurse", "engineer"])]
        words += ["high" if y else "low", "income"] + ["the"] * int(rng.integers(0, 6))
        rows["text"].append(" ".join(words))
        rows["label"].append(y)
        rows["sex"].append("Male" if male else "Female")
    return datasets.Dataset.from_dict(rows)


def fair_args(tmp_path, **overrides):
    from fairtune import FairTrainingArguments

    kwargs = dict(
        output_dir=str(tmp_path / "out"),
        group_by="sex",
        per_device_train_batch_size=16,
        per_device_eval_batch_size=32,
        num_train_epochs=1,
        learning_rate=1e-2,
        report_to="none",
        save_strategy="no",
        logging_steps=1,
        bootstrap_samples=0,
        disable_tqdm=True,
        use_cpu=True,
        seed=0,
    )
    kwargs.update(overrides)
    return FairTrainingArguments(**kwargs)
