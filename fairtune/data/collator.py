"""Collator that keeps group ids beside the model inputs."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from fairtune.groups import GROUP_COLUMN_PREFIX


class FairDataCollator:
    """Wrap any collator: ``group:*`` fields are stacked into ``(N,)`` long tensors and never padded.

    The inner collator (e.g. ``DataCollatorWithPadding``) only sees model inputs and labels, so a tokenizer's
    ``pad`` cannot trip over, or pad, group columns. ``FairTrainer`` removes them again before
    ``model.forward``.
    """

    def __init__(self, inner: Callable[[list[dict[str, Any]]], dict[str, Any]]):
        self.inner = inner

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        keys = [k for k in features[0] if k.startswith(GROUP_COLUMN_PREFIX)]
        rest = [{k: v for k, v in f.items() if not k.startswith(GROUP_COLUMN_PREFIX)} for f in features]
        batch = dict(self.inner(rest))
        for k in keys:
            batch[k] = torch.as_tensor([int(f[k]) for f in features], dtype=torch.long)
        return batch
