"""Perplexity on held-out text: the cost side of debiasing a language model."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from fairtune.lm.base import subset_indices
from fairtune.lm.scoring import score_pairs, sentence_pairs

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

NAME = "perplexity"
ERR_NO_TEXTS = "perplexity needs at least one non-empty text."


@dataclass(frozen=True)
class PerplexityResult:
    """Token-weighted perplexity: exp(total NLL / total tokens) over all texts."""

    perplexity: float
    nll_per_token: float
    n_tokens: int
    n_texts: int
    n_truncated: int  # texts cut to max_length tokens

    def to_dict(self) -> dict[str, Any]:
        return {
            k: getattr(self, k) for k in ("perplexity", "nll_per_token", "n_tokens", "n_texts", "n_truncated")
        }

    def flat(self, prefix: str = NAME) -> dict[str, float]:
        return {prefix: float(self.perplexity)}


def evaluate_perplexity(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    texts: Sequence[str],
    *,
    max_length: int = 512,
    max_examples: int | None = None,
    seed: int = 0,
    batch_size: int = 16,
    progress: bool = True,
) -> PerplexityResult:
    """Perplexity of ``model`` on ``texts``, each scored from its first token (conditioned on BOS).

    Args:
        texts: held-out documents; blank ones are skipped.
        max_length: tokens per text including the BOS context; longer texts are cut (counted in
            ``n_truncated``) rather than windowed, which keeps each text one sequence in a batch.
        max_examples: a seeded random subset of that many texts; None for all.
    """
    kept = [t for t in texts if t.strip()]
    if not kept:
        raise ValueError(ERR_NO_TEXTS)
    kept = [kept[i] for i in subset_indices(len(kept), max_examples, seed)]
    full = sentence_pairs(tokenizer, kept)
    pairs = sentence_pairs(tokenizer, kept, max_length)
    truncated = sum(len(a[1]) != len(b[1]) for a, b in zip(full, pairs, strict=True))
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else pairs[0][0][0]
    scores = score_pairs(model, pairs, int(pad), batch_size, progress, desc="perplexity")
    n_tokens = int(scores.n_tokens.sum())
    nll = float(-np.sum(scores.sum) / n_tokens)
    return PerplexityResult(
        perplexity=math.exp(nll),
        nll_per_token=nll,
        n_tokens=n_tokens,
        n_texts=len(kept),
        n_truncated=truncated,
    )
