"""Collator that keeps group ids and pair ids beside the model inputs."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from fairtune.groups import GROUP_COLUMN_PREFIX, PAIR_COLUMN


def is_side_column(name: str) -> bool:
    """Whether a batch key rides beside the model inputs (group ids, pair ids) and never reaches forward."""
    return name.startswith(GROUP_COLUMN_PREFIX) or name == PAIR_COLUMN


class FairDataCollator:
    """Wrap any collator: ``group:*`` and ``pair_id`` fields are stacked into ``(N,)`` long tensors, unpadded.

    The inner collator (e.g. ``DataCollatorWithPadding`` or ``DataCollatorForLanguageModeling``) only sees
    model inputs and labels, so a tokenizer's ``pad`` cannot trip over, or pad, these columns. ``FairTrainer``
    removes them again before ``model.forward``.
    """

    def __init__(self, inner: Callable[[list[dict[str, Any]]], dict[str, Any]]):
        self.inner = inner

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        keys = [k for k in features[0] if is_side_column(k)]
        rest = [{k: v for k, v in f.items() if not is_side_column(k)} for f in features]
        batch = dict(self.inner(rest))
        for k in keys:
            batch[k] = torch.as_tensor([int(f[k]) for f in features], dtype=torch.long)
        return batch
