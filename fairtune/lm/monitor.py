"""Stereotype metrics at every evaluation of a causal-LM fine-tuning run.

The trainer calls :meth:`StereotypeMonitor.evaluate` with the model being trained and adds the flat dict it
returns to its eval metrics (``eval_crows_pairs/gender/pct_stereotype``), so every ``report_to`` backend
charts them and ``metric_for_best_model`` can select on them. Data is read once, when the monitor is built
(before training, so a missing data package or a bad category name stops the run at once); the subset is
seeded, so every evaluation and every process scores the same examples. On several processes each process
scores its share of them and the scores are gathered (:func:`fairtune.lm.scoring.sharded_scoring`), so the
work is not repeated on every rank and every rank logs the same numbers.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from fairtune.lm import check_request
from fairtune.lm.base import resolve_categories

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

ERR_PERPLEXITY_TEXTS = "benchmark 'perplexity' needs perplexity_texts (held-out documents)."
# Per-category metrics a monitor reports (reports keep every metric; a chart per metric is enough here).
MONITORED = {
    "crows_pairs": ("pct_stereotype", "pct_stereotype_normalized", "likelihood_diff"),
    "stereoset": ("ss", "lms", "icat"),
    "bbq": ("accuracy_ambig", "accuracy_disambig", "s_dis", "s_amb"),
}


class StereotypeMonitor:
    """Scores chosen stereotype benchmarks on a model and returns flat ``benchmark/category/metric`` keys.

    Args:
        benchmarks: names from ``fairtune.lm.BENCHMARKS`` (crows_pairs, stereoset, bbq, perplexity).
        bias_types: categories to score and report, by the data's names or common ones (``gender``,
            ``race``, ``religion`` ...); each must exist in every chosen benchmark (else ValueError). Keys use
            the name as given (``bbq/gender/s_dis`` for BBQ's Gender_identity). None: every category, plus
            ``{benchmark}/overall/...`` over all of them (only then, since a pooled score of a chosen few
            categories would read as the benchmark's overall score).
        max_examples: per benchmark, a seeded random subset of that many examples from the chosen
            categories; None for all.
        perplexity_texts: held-out documents for ``perplexity`` (key ``perplexity``).
        stereoset_tasks: StereoSet parts to score (intrasentence, intersentence).
    """

    def __init__(
        self,
        benchmarks: Sequence[str] = ("crows_pairs",),
        bias_types: Sequence[str] | None = None,
        max_examples: int | None = None,
        batch_size: int = 16,
        seed: int = 0,
        perplexity_texts: Sequence[str] | None = None,
        perplexity_max_length: int = 512,
        stereoset_tasks: Sequence[str] = ("intrasentence", "intersentence"),
        progress: bool = False,
    ) -> None:
        from fairtune.lm import bbq, crows_pairs, stereoset
        from fairtune.lm.base import subset_indices

        if isinstance(benchmarks, str):
            benchmarks = [b.strip() for b in benchmarks.split(",") if b.strip()]
        self.bias_types = list(bias_types) if bias_types is not None else None
        # Names, data packages and categories are checked here, before training starts.
        self.benchmarks = check_request(list(benchmarks), self.bias_types)
        self.max_examples = max_examples
        self.batch_size = batch_size
        self.seed = seed
        self.perplexity_max_length = perplexity_max_length
        self.stereoset_tasks = tuple(stereoset_tasks)
        self.progress = progress
        subset_indices(1, max_examples, seed)  # validates max_examples now, not at the first evaluation
        self._data: dict[str, Any] = {}
        # name as requested -> the data's name, per benchmark
        self._names: dict[str, dict[str, str]] = {}
        for name in self.benchmarks:
            if name == "perplexity":
                if not perplexity_texts:
                    raise ValueError(ERR_PERPLEXITY_TEXTS)
                self._data[name] = list(perplexity_texts)
                continue
            module = {"crows_pairs": crows_pairs, "stereoset": stereoset, "bbq": bbq}[name]
            self._names[name] = resolve_categories(
                name, self.bias_types, module.CATEGORY_NAMES, module.ALIASES
            )
            if name == "crows_pairs":
                self._data[name] = crows_pairs.select_pairs(
                    crows_pairs.load_crows_pairs(), self.bias_types, max_examples, seed
                )
            elif name == "stereoset":
                self._data[name] = stereoset.select_rows(
                    stereoset.load_stereoset(), self.bias_types, self.stereoset_tasks, max_examples, seed
                )
            else:
                rows = bbq.load_bbq(self.bias_types)
                self._data[name] = [rows[i] for i in subset_indices(len(rows), max_examples, seed)]

    def evaluate(self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> dict[str, float]:
        """Score the model in eval mode (its mode restored after): ``{benchmark/category/metric: value}``."""
        from fairtune.lm.models import ensure_pad_token
        from fairtune.lm.scoring import sharded_scoring

        ensure_pad_token(tokenizer)
        was_training = model.training
        model.eval()
        try:
            with sharded_scoring():
                return self._score(model, tokenizer)
        finally:
            model.train(was_training)

    def _score(self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> dict[str, float]:
        from fairtune.lm.bbq import evaluate_bbq
        from fairtune.lm.crows_pairs import evaluate_crows_pairs
        from fairtune.lm.perplexity import evaluate_perplexity
        from fairtune.lm.stereoset import evaluate_stereoset

        common = {"seed": self.seed, "batch_size": self.batch_size, "progress": self.progress}
        out: dict[str, float] = {}
        for name in self.benchmarks:
            data = self._data[name]
            if name == "perplexity":
                result = evaluate_perplexity(
                    model, tokenizer, data, max_length=self.perplexity_max_length, **common
                )
                out.update(result.flat())
                continue
            # The data was filtered and subset when the monitor was built; score all of it.
            if name == "crows_pairs":
                res = evaluate_crows_pairs(model, tokenizer, pairs=data, n_bootstrap=0, **common)
                groups = res.by_bias_type
            elif name == "stereoset":
                res = evaluate_stereoset(
                    model, tokenizer, rows=data, tasks=self.stereoset_tasks, n_bootstrap=0, **common
                )
                groups = res.by_domain
            else:
                res = evaluate_bbq(model, tokenizer, rows=data, **common)
                groups = res.by_category
            for requested, actual in self._names[name].items():
                if actual in groups:  # a small subset can miss a category
                    out.update(_metrics(name, requested, groups[actual]))
            if self.bias_types is None:
                out.update(_metrics(name, "overall", res.overall))
        return out


def _metrics(benchmark: str, group: str, scores: Any) -> dict[str, float]:
    return {f"{benchmark}/{group}/{m}": float(getattr(scores, m)) for m in MONITORED[benchmark]}
