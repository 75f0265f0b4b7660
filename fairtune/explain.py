"""Explain a fairness gap with per-group attributions (captum).

``fairtune explain --model DIR --config CONFIG.yaml [--split test] [--output_dir OUT]`` (``explain_main``),
``explain_model`` for a saved model and ``explain(trainer_or_model, dataset, ...)`` for objects in memory
attribute a seeded, group-stratified sample of rows and aggregate the attributions per group:

* **Score explained**: the probability of ``target_class`` (``score="probability"``, the default), or its
  log-odds (``score="log_odds"``: ``logit_k - logsumexp(other logits)``, ``logit_1 - logit_0`` when binary).
  Probability is the default because its attributions are in the units of the gaps being explained
  (selection rates, a decision at 0.5) and sum, per row, to at most 1 in size, so rows and groups compare;
  log-odds does not saturate, so a confidently classified row keeps large attributions. Binary models
  explain class 1; a multi-class model is refused unless ``target_class`` names the class to explain
  (one-vs-rest: its probability against all others), because a "positive class" would otherwise be a guess
  and the predicted class differs from row to row, so per-group means would mix scores of different classes.
* **Attributions**: text models (any ``transformers`` model): ``LayerIntegratedGradients`` on
  ``model.get_input_embeddings()``; baseline = the pad token at every non-special position ([CLS], [SEP]
  and padding kept, the attention mask passed through unchanged), so position and segment embeddings are the
  same for input and baseline and only token identity is attributed. A token's attribution is the sum over
  the embedding dimension; word pieces are merged into words with the tokenizer's ``word_ids`` and offsets
  (fast tokenizers; words are case-folded, so "He" and "he" count together), else kept as tokens (``unit``
  says which). Plain ``nn.Module``s on a features column: ``IntegratedGradients`` on that input; baseline
  zeros (default) or the column means of the training data (``feature_baseline="mean"``). captum's
  convergence delta (sum of attributions minus ``score(x) - score(baseline)``) is reported: mean |delta| and
  the largest |delta| relative to |score(x) - score(baseline)|.
* **Per group** (every grouping of the model): tokens pushing toward the class in each group (mean attribution
  per occurrence, tokens seen at least ``min_count`` times) and the *most group-different* tokens, ranked by
  the spread (max - min over groups) of their **contribution per row** (summed attribution in a row, 0 where
  the token is absent, averaged over the group's rows). By completeness these contributions add up, per group,
  to the mean of ``score - baseline score``, so their differences decompose the gap in mean score between
  groups; a proxy that only one group's rows contain ("husband") ranks here, where a filter on tokens seen in
  every group would hide it. *Same token, different weight*: the spread of the per-occurrence mean over tokens
  seen ``min_count`` times in every group (context effects). In probability units the same push in logit
  space moves a group whose scores sit near 0 less than one near 0.5, so part of such a spread can be the
  groups' different score levels; ``score="log_odds"`` compares weights without that. Groups with fewer than
  ``min_count`` sampled rows are listed but left out of the spreads.
* **Counterfactual sensitivity** (text): the identity terms of the word lists swapped
  (``fairtune.data.counterfactual``), the row re-tokenized like the original; per group the mean |change of
  score| and mean change over rows that had a term to swap, and the share of those whose predicted class
  (argmax) flips, as ``counterfactual_flip_rate`` counts it.
* **Rows**: ``max_rows`` drawn with ``seed``, stratified over the cells of all groupings (every group of every
  grouping gets rows: half the sample is shared equally among cells, the rest proportionally).

Outputs (``write_explanation``): ``explanation.json`` (with a compact ``summary``, see
``ExplanationResult.summary``), ``explanation.md``, bar charts per grouping and a token heatmap of example
rows. A folder that holds an explanation is refused unless ``overwrite``.

torch, transformers and captum are imported inside the functions that need them, so the command's option
errors come back before they load.

Length: about 1,450 lines; the attribution passes, the aggregation, the rendering and the command belong to
one feature and share its result types.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import torch

    from fairtune.config import DataArguments, FairTrainingArguments

EXPLANATION_JSON = "explanation.json"
EXPLANATION_MD = "explanation.md"
HEATMAP_PNG = "token_heatmap.png"
SCORES = ("probability", "log_odds")
FEATURE_BASELINES = ("zeros", "mean")
# The quickstart's MiniLM-L6 (Adult sentences, ~44 tokens) takes about 0.025 s per row and step on 2 idle CPU
# cores (measured on busy ones and scaled by a training step's slowdown there): 80 rows x 32 steps is about a
# minute. Gauss-Legendre steps converge fast: on 40 rows the worst |delta| / |score - baseline score| was 0.15
# at 20 steps, 0.011 at 32 and 0.005 at 40.
DEFAULT_MAX_ROWS = 80
DEFAULT_N_STEPS = 32
DEFAULT_BATCH_SIZE = 8
DEFAULT_INTERNAL_BATCH_SIZE = 80
DEFAULT_MIN_COUNT = 5
DEFAULT_TOP_K = 10
DEFAULT_EXAMPLES = 3
# Rows whose score moves less than this from the baseline are left out of the relative convergence delta: the
# ratio of two small numbers is noise (their |delta| still counts in the absolute figures).
MIN_SCORE_CHANGE = 0.05
DELTA_WARNING = 0.05  # a relative delta above this means n_steps is too small for the attributions to add up

ERR_SCORE = "score {value!r} is not valid; choose from: {choices}."
ERR_INT = "{name} must be an integer >= {low}; got {value!r}."
ERR_MULTICLASS = (
    "The model has {num_classes} classes ({classes}): name the class whose score to explain with "
    "target_class (--target_class), one of {choices}; there is no single positive class to assume."
)
ERR_TARGET_CLASS = "target_class {value!r} is not a class of the model; choose from {choices}."
ERR_FEW_CLASSES = "The model returns logits of shape {shape}; explaining needs (N, C) logits with C >= 2."
ERR_SPLIT_NAME = "--split {split!r} is not a split of the config's data; its splits: {choices}."
ERR_SPLIT_MISSING = "Split {split!r} is not in the data; splits: {splits}."
ERR_EXISTS = (
    "{path} already holds an explanation ({found}); pass --overwrite (overwrite=True) to replace it, or "
    "choose another --output_dir."
)
ERR_NOT_A_MODEL = "--model {path!r} is not a folder with a saved model (config.json)."
ERR_NO_MODEL = "explain needs --model DIR, the folder of a saved model; see `fairtune explain --help`."
ERR_NO_TEXT = (
    "The model is a transformers model, explained on its text, but the dataset has no column "
    "{column!r} (text_column). Its columns are: {columns}."
)
ERR_NO_FEATURES = (
    "A plain nn.Module is explained on its input column {column!r} (feature_column), which the dataset "
    "lacks. Its columns are: {columns}."
)
ERR_NO_TOKENIZER = (
    "Explaining a text model needs its tokenizer: pass tokenizer=..., or a FairTrainer whose "
    "processing_class is the tokenizer."
)
ERR_NO_PAD = (
    "The tokenizer has no pad token to build the baseline from; pass baseline_token_id=... (for example "
    "the id of a neutral token)."
)
ERR_NO_GROUPS = (
    "Without a FairTrainer the groups come from group_by: name the attribute column(s), e.g. "
    "group_by='sex' or group_by=['sex', 'race', 'sex+race']."
)
ERR_FEATURE_BASELINE = (
    "feature_baseline {value!r} is not valid: choose from {choices}, or give one value per feature ({dim})."
)
ERR_FEATURE_NAMES = "feature_names has {got} names but the {column!r} column has {dim} features."
ERR_EMPTY = "The {split} split has no rows to explain."

# Config keys (besides the data options) a flag of `fairtune explain` may set: how groups are formed, the
# sample's seed, and where the model runs. Any other training key would be ignored, so it is refused.
EXPLAIN_TRAINING_KEYS = ("group_by", "eval_group_by", "missing_group", "seed", "use_cpu")
EXPLAIN_HELP = f"""usage: fairtune explain --model DIR --config CONFIG.yaml [--split test] [--output_dir OUT]
                       [--max_rows {DEFAULT_MAX_ROWS}] [--n_steps {DEFAULT_N_STEPS}] [--batch_size \
{DEFAULT_BATCH_SIZE}] [--internal_batch_size {DEFAULT_INTERNAL_BATCH_SIZE}]
                       [--score probability|log_odds] [--target_class K] [--top_k {DEFAULT_TOP_K}]
                       [--min_count {DEFAULT_MIN_COUNT}] [--examples {DEFAULT_EXAMPLES}] [--overwrite] \
[data options]

Explains the saved model in DIR on a seeded sample of --max_rows rows of a split (stratified so every group
of every grouping is represented; the config's seed): Layer Integrated Gradients on the input embeddings
(--n_steps steps; baseline: the pad token at every non-special position) of the probability of class 1
(--score log_odds for the log-odds; a multi-class model needs --target_class). Per group: the words that push
toward the class, the words whose contribution differs most between groups, and the counterfactual
sensitivity (score change and flipped decisions when only the identity terms of counterfactual_word_lists
are swapped). Writes explanation.json, explanation.md, bar charts per grouping and a token heatmap to
--output_dir (default: DIR/explanation); an existing explanation is replaced only with --overwrite. The
default sample takes about a minute for MiniLM-L6 on 2 CPU cores. Besides --config, the flags it takes are
the data options and {", ".join(f"--{k}" for k in EXPLAIN_TRAINING_KEYS)}.
"""


# ----- results -------------------------------------------------------------------------------------------
@dataclass
class TokenStat:
    """One token (word or feature) in one group: ``count`` occurrences in ``rows`` of the group's rows, mean
    attribution per occurrence, and ``contribution``: summed attribution per row of the group (0 where
    absent)."""

    token: str
    count: int
    rows: int
    mean: float
    contribution: float


@dataclass
class TokenGap:
    """A token whose attribution differs between groups: ``by_group`` holds the ``measure`` per compared
    group ("contribution" per row, or "mean" per occurrence), ``spread`` = max - min, ``high`` / ``low`` the
    groups at the ends; ``counts`` the token's occurrences per group."""

    token: str
    measure: str
    spread: float
    high: str
    low: str
    by_group: dict[str, float]
    counts: dict[str, int]


@dataclass
class CounterfactualSensitivity:
    """Scores with the identity terms swapped, over rows that had a term to swap (``swapped`` of ``rows``):
    mean |change| and mean change of the score, and rows whose predicted class flipped."""

    rows: int
    swapped: int
    flipped: int
    mean_abs_change: float
    mean_change: float

    @property
    def rate(self) -> float:
        """flipped / swapped (NaN when no row had a term to swap)."""
        return self.flipped / self.swapped if self.swapped else math.nan

    def describe(self) -> str:
        """Worded like ``fairtune.evaluation.FlipRate.describe``."""
        return (
            f"{_fmt(self.rate)} ({self.flipped} of {self.swapped} rows with swapped terms, {self.rows} rows)"
        )


@dataclass
class GroupExplanation:
    """One group's attributions: its sampled rows, mean score and mean baseline score, the tokens pushing
    toward (``positive``) and away from (``negative``) the class, and its counterfactual sensitivity."""

    group: str
    rows: int
    mean_score: float
    mean_baseline_score: float
    positive: list[TokenStat]
    negative: list[TokenStat]
    counterfactual: CounterfactualSensitivity | None
    compared: bool  # at least min_count rows: part of the spreads


@dataclass
class GroupingExplanation:
    """Per-group attributions of one grouping and the tokens that differ most between its groups."""

    grouping: str
    groups: list[GroupExplanation]
    most_different: list[TokenGap]
    context_effects: list[TokenGap]

    def group(self, name: str) -> GroupExplanation:
        return next(g for g in self.groups if g.group == name)


@dataclass
class Convergence:
    """captum's convergence delta over the explained rows: mean and max |delta|, and the max of
    |delta| / |score - baseline score| over the ``relative_rows`` rows whose score moved by at least
    ``MIN_SCORE_CHANGE``, ``rows_over`` of which exceed ``DELTA_WARNING``."""

    n_steps: int
    mean_abs_delta: float
    max_abs_delta: float
    max_relative_delta: float
    relative_rows: int
    rows_over: int = 0


@dataclass
class ExampleRow:
    """One explained row for the heatmap: group (training grouping), label, score, unit attributions."""

    group: str
    label: int | None
    score: float
    tokens: list[str]
    attributions: list[float]


@dataclass
class ExplanationResult:
    """What ``explain`` found; ``summary()`` is the compact part a model card shows."""

    model: str
    split: str
    kind: str  # "text" or "tabular"
    unit: str  # "word", "token" or "feature"
    score: str  # the explained score, in words
    target_class: int
    method: str
    baseline: str
    rows: int
    available_rows: int
    seed: int
    train_grouping: str
    groupings: dict[str, GroupingExplanation]
    convergence: Convergence
    counterfactual: CounterfactualSensitivity | None
    examples: list[ExampleRow]
    settings: dict[str, Any] = field(default_factory=dict)
    seconds: float = math.nan

    def summary(self, k: int = 5) -> dict[str, Any]:
        """Top ``k`` tokens toward the class per group and the ``k`` most group-different tokens (of the
        training grouping), the counterfactual flip rate and the worst relative convergence delta."""
        main = self.groupings[self.train_grouping]
        flips = self.counterfactual
        return {
            "model": self.model,
            "split": self.split,
            "rows": self.rows,
            "score": self.score,
            "unit": self.unit,
            "grouping": self.train_grouping,
            "top_tokens": {g.group: [t.token for t in g.positive[:k]] for g in main.groups},
            "most_different": [
                {"token": t.token, "spread": t.spread, "high": t.high, "low": t.low}
                for t in main.most_different[:k]
            ],
            "counterfactual_flip_rate": None if flips is None else flips.rate,
            "counterfactual": None if flips is None else flips.describe(),
            "max_relative_delta": self.convergence.max_relative_delta,
        }

    def to_dict(self) -> dict[str, Any]:
        return {"summary": self.summary(), **asdict(self)}


@dataclass
class RowAttributions:
    """Attributions of N rows, one array per row over its units (words, tokens or features).

    Attributes:
        units: per row, the unit names; attributions: per row, an array (U_i,) summing to about
        ``scores - baseline_scores``; scores, baseline_scores, deltas (captum's convergence delta): (N,);
        predictions: (N,) predicted class ids; counterfactual_scores / counterfactual_predictions: (N,) with
        the identity terms swapped (the row's own values where nothing was swapped) and swaps (N,) the number
        of swapped terms, all None without word lists.
    """

    unit: str
    units: list[list[str]]
    attributions: list[np.ndarray]
    scores: np.ndarray
    baseline_scores: np.ndarray
    predictions: np.ndarray
    deltas: np.ndarray
    counterfactual_scores: np.ndarray | None = None
    counterfactual_predictions: np.ndarray | None = None
    swaps: np.ndarray | None = None


# ----- checks --------------------------------------------------------------------------------------------
def _fmt(value: Any, digits: int = 3) -> str:
    """``fairtune.curves.fmt``, restated: curves imports torch, which this module loads only when it works."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"  # the tables' missing mark (fairtune.curves.MISSING_MARK)
    if isinstance(value, int | np.integer):
        return str(int(value))
    return f"{float(value):.{digits}f}"


def _check_int(name: str, value: Any, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < low:
        raise ValueError(ERR_INT.format(name=name, low=low, value=value))
    return int(value)


def check_options(
    score: str = "probability",
    max_rows: int | None = DEFAULT_MAX_ROWS,
    n_steps: int = DEFAULT_N_STEPS,
    batch_size: int = DEFAULT_BATCH_SIZE,
    internal_batch_size: int | None = DEFAULT_INTERNAL_BATCH_SIZE,
    min_count: int = DEFAULT_MIN_COUNT,
    top_k: int = DEFAULT_TOP_K,
    examples: int = DEFAULT_EXAMPLES,
) -> None:
    """Raise for an option outside its range, naming it, the value and the valid choices."""
    if score not in SCORES:
        raise ValueError(ERR_SCORE.format(value=score, choices=", ".join(SCORES)))
    for name, value, low in (
        ("n_steps", n_steps, 2),
        ("batch_size", batch_size, 1),
        ("min_count", min_count, 1),
        ("top_k", top_k, 1),
        ("examples", examples, 0),
    ):
        _check_int(name, value, low)
    if max_rows is not None:
        _check_int("max_rows", max_rows, 1)
    if internal_batch_size is not None:
        _check_int("internal_batch_size", internal_batch_size, 1)


def check_target_class(num_classes: int, target_class: int | None, class_names: Sequence[str]) -> int:
    """The class to explain: 1 for a binary model; for C > 2 ``target_class`` must name one."""
    choices = ", ".join(f"{i} ({n})" for i, n in enumerate(class_names))
    if num_classes < 2:
        raise ValueError(ERR_FEW_CLASSES.format(shape=f"(N, {num_classes})"))
    if target_class is None:
        if num_classes > 2:
            raise ValueError(
                ERR_MULTICLASS.format(
                    num_classes=num_classes, classes=", ".join(class_names), choices=choices
                )
            )
        return 1
    if isinstance(target_class, bool) or not isinstance(target_class, int | np.integer):
        raise ValueError(ERR_TARGET_CLASS.format(value=target_class, choices=choices))
    if not 0 <= target_class < num_classes:
        raise ValueError(ERR_TARGET_CLASS.format(value=target_class, choices=choices))
    return int(target_class)


def check_output_dir(output_dir: str, overwrite: bool = False) -> None:
    """Refuse a folder that already holds an explanation unless ``overwrite``."""
    found = [n for n in (EXPLANATION_JSON, EXPLANATION_MD) if os.path.exists(os.path.join(output_dir, n))]
    if found and not overwrite:
        raise FileExistsError(ERR_EXISTS.format(path=output_dir, found=", ".join(found)))


# ----- scores and attributions ---------------------------------------------------------------------------
def score_from_logits(logits: torch.Tensor, target_class: int, score: str = "probability") -> torch.Tensor:
    """(N, C) logits -> (N,) the explained score: P(target_class), or its log-odds against all other classes
    (``logit_k - logsumexp(logits of the others)``, which is ``logit_1 - logit_0`` for a binary model)."""
    import torch

    if score == "probability":
        return logits.softmax(-1)[:, target_class]
    others = torch.cat([logits[:, :target_class], logits[:, target_class + 1 :]], dim=1)
    return logits[:, target_class] - others.logsumexp(-1)


def _logits(outputs: Any) -> torch.Tensor:
    from fairtune.trainer import logits_of

    logits = logits_of(outputs)
    if logits.ndim != 2 or logits.shape[1] < 2:
        raise ValueError(ERR_FEW_CLASSES.format(shape=tuple(logits.shape)))
    return logits


def text_baseline(input_ids: torch.Tensor, keep: torch.Tensor, baseline_token_id: int) -> torch.Tensor:
    """(N, L) baseline ids: ``baseline_token_id`` wherever ``keep`` (N, L) is false, the input elsewhere.

    ``keep`` marks special tokens ([CLS], [SEP]) and padding, which stay as they are so the baseline differs
    from the input only in the tokens of the text.
    """
    import torch

    return torch.where(keep.bool(), input_ids, torch.full_like(input_ids, baseline_token_id))


class _Frozen:
    """Parameters without gradients and the model in eval mode inside the block, restored after it: captum
    needs gradients with respect to the inputs only, and the weights' gradients would cost about a third of
    each backward pass; eval mode turns dropout off, so attributions add up to the difference of two
    deterministic scores."""

    def __init__(self, model: Any):
        self.model = model

    def __enter__(self) -> None:
        self.training = self.model.training
        self.trainable = [p for p in self.model.parameters() if p.requires_grad]
        for p in self.trainable:
            p.requires_grad_(False)
        self.model.eval()

    def __exit__(self, *exc: object) -> None:
        for p in self.trainable:
            p.requires_grad_(True)
        self.model.train(self.training)


def _forward_names(model: Any, encoded: Mapping[str, Any]) -> list[str]:
    """The encoder outputs besides input_ids that the model's forward accepts (attention mask, segments)."""
    import inspect

    params = inspect.signature(model.forward).parameters
    takes_all = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    return [k for k in ("attention_mask", "token_type_ids") if k in encoded and (takes_all or k in params)]


def _merge_words(
    encoded: Any, row: int, values: np.ndarray, sources: Sequence[str | None], keep: np.ndarray
) -> tuple[list[str], list[float]]:
    """Word-piece attributions (L,) of one row -> (words, summed attributions), words case-folded and read
    from the text through the offsets; ``sources`` = (text, text pair)."""
    words: dict[tuple[int, int], list[Any]] = {}  # (sequence, word) -> [start, end, sum]
    sequence_ids = encoded.sequence_ids(row)
    offsets = encoded["offset_mapping"][row]
    for pos, word in enumerate(encoded.word_ids(row)):
        if word is None or keep[pos]:
            continue
        key = (sequence_ids[pos] or 0, word)
        start, end = (int(v) for v in offsets[pos])
        if key in words:
            words[key][1] = max(words[key][1], end)
            words[key][2] += float(values[pos])
        else:
            words[key] = [start, end, float(values[pos])]
    names = [(sources[s] or "")[a:b].lower() for (s, _), (a, b, _) in words.items()]
    return names, [v for _, _, v in words.values()]


def attribute_text(
    model: Any,
    tokenizer: Any,
    texts: Sequence[str],
    text_pairs: Sequence[str] | None = None,
    *,
    target_class: int = 1,
    score: str = "probability",
    n_steps: int = DEFAULT_N_STEPS,
    batch_size: int = DEFAULT_BATCH_SIZE,
    internal_batch_size: int | None = DEFAULT_INTERNAL_BATCH_SIZE,
    max_length: int = 128,
    baseline_token_id: int | None = None,
    word_pairs: Any = None,
    progress: bool = True,
) -> RowAttributions:
    """Layer Integrated Gradients of the score on the input embeddings of a transformers classifier.

    Rows are tokenized in batches of ``batch_size`` (padded to the batch's longest, truncated at
    ``max_length``); the baseline puts ``baseline_token_id`` (default: the pad token) at every non-special
    position. ``word_pairs`` (``WordPairs``) adds counterfactual scores: the texts with identity terms
    swapped, tokenized the same way.
    """
    import torch
    from captum.attr import LayerIntegratedGradients
    from tqdm.auto import tqdm

    from fairtune.data.counterfactual import counterfactual

    baseline_token_id = tokenizer.pad_token_id if baseline_token_id is None else baseline_token_id
    if baseline_token_id is None:
        raise ValueError(ERR_NO_PAD)
    texts = list(texts)  # a datasets Column slices into Columns, which tokenizers refuse
    text_pairs = list(text_pairs) if text_pairs is not None else None
    fast = bool(getattr(tokenizer, "is_fast", False))
    device = next(model.parameters()).device

    def encode(first: Sequence[str], second: Sequence[str] | None) -> Any:
        return tokenizer(
            list(first),
            list(second) if second is not None else None,
            truncation=True,
            max_length=max_length,
            padding=True,
            return_tensors="pt",
            return_special_tokens_mask=True,
            return_offsets_mapping=fast,
        )

    units: list[list[str]] = []
    values: list[np.ndarray] = []
    out: dict[str, list[np.ndarray]] = {k: [] for k in ("score", "base", "pred", "delta", "cf", "cfp", "n")}
    n = len(texts)
    with _Frozen(model):
        for start in tqdm(range(0, n, batch_size), desc="Attributions", disable=not progress, unit="batch"):
            first = list(texts[start : start + batch_size])
            second = list(text_pairs[start : start + batch_size]) if text_pairs is not None else None
            encoded = encode(first, second)
            names = _forward_names(model, encoded)
            ids = encoded["input_ids"].to(device)
            extra = tuple(encoded[k].to(device) for k in names)
            keep = encoded["special_tokens_mask"].bool() | (encoded["attention_mask"] == 0)
            base = text_baseline(ids, keep.to(device), baseline_token_id)

            def forward(
                input_ids: torch.Tensor, *rest: torch.Tensor, _names: list[str] = names
            ) -> torch.Tensor:
                outputs = model(input_ids=input_ids, **dict(zip(_names, rest, strict=True)))
                return score_from_logits(_logits(outputs), target_class, score)

            with torch.no_grad():
                logits = _logits(model(input_ids=ids, **dict(zip(names, extra, strict=True))))
                scores = score_from_logits(logits, target_class, score)
                base_scores = forward(base, *extra)
            lig = LayerIntegratedGradients(forward, model.get_input_embeddings())
            attributions, delta = lig.attribute(
                ids,
                baselines=base,
                additional_forward_args=extra,
                n_steps=n_steps,
                internal_batch_size=internal_batch_size,
                return_convergence_delta=True,
            )
            per_token = attributions.sum(-1).detach().cpu().numpy()  # (B, L): sum over the embedding
            keep_np = keep.numpy()
            for row in range(len(first)):
                if fast:
                    sources = (first[row], second[row] if second is not None else None)
                    row_units, row_values = _merge_words(encoded, row, per_token[row], sources, keep_np[row])
                else:
                    tokens = tokenizer.convert_ids_to_tokens(encoded["input_ids"][row].tolist())
                    kept = [i for i in range(len(tokens)) if not keep_np[row, i]]
                    row_units, row_values = (
                        [tokens[i] for i in kept],
                        [float(per_token[row, i]) for i in kept],
                    )
                units.append(row_units)
                values.append(np.asarray(row_values, dtype=np.float64))
            out["score"].append(scores.cpu().numpy())
            out["base"].append(base_scores.cpu().numpy())
            out["pred"].append(logits.argmax(-1).cpu().numpy())
            out["delta"].append(delta.detach().cpu().numpy())
            if word_pairs is not None:
                cf_scores, cf_preds = scores.cpu().numpy().copy(), out["pred"][-1].copy()
                swapped = [counterfactual(t, word_pairs) for t in first]
                swapped_pairs = (
                    [counterfactual(t, word_pairs) for t in second] if second is not None else None
                )
                counts = np.array(
                    [c + (swapped_pairs[i][1] if swapped_pairs else 0) for i, (_, c) in enumerate(swapped)]
                )
                rows = np.flatnonzero(counts > 0)
                if len(rows):
                    cf_encoded = encode(
                        [swapped[i][0] for i in rows],
                        [swapped_pairs[i][0] for i in rows] if swapped_pairs else None,
                    )
                    cf_extra = {k: cf_encoded[k].to(device) for k in names}
                    with torch.no_grad():
                        cf_logits = _logits(model(input_ids=cf_encoded["input_ids"].to(device), **cf_extra))
                    cf_scores[rows] = score_from_logits(cf_logits, target_class, score).cpu().numpy()
                    cf_preds[rows] = cf_logits.argmax(-1).cpu().numpy()
                out["cf"].append(cf_scores)
                out["cfp"].append(cf_preds)
                out["n"].append(counts)
    cat = {k: np.concatenate(v) if v else None for k, v in out.items()}
    return RowAttributions(
        unit="word" if fast else "token",
        units=units,
        attributions=values,
        scores=cat["score"],
        baseline_scores=cat["base"],
        predictions=cat["pred"],
        deltas=cat["delta"],
        counterfactual_scores=cat["cf"],
        counterfactual_predictions=cat["cfp"],
        swaps=cat["n"],
    )


def attribute_features(
    model: Any,
    features: np.ndarray,
    baseline: np.ndarray,
    *,
    feature_column: str = "features",
    feature_names: Sequence[str] | None = None,
    target_class: int = 1,
    score: str = "probability",
    n_steps: int = DEFAULT_N_STEPS,
    batch_size: int = DEFAULT_BATCH_SIZE,
    internal_batch_size: int | None = DEFAULT_INTERNAL_BATCH_SIZE,
    progress: bool = True,
) -> RowAttributions:
    """Integrated Gradients of the score on the features (N, D) of a plain module called as
    ``model(**{feature_column: x})``, from ``baseline`` (D,); units are ``feature_names`` (default
    ``feature_0`` ...)."""
    import torch
    from captum.attr import IntegratedGradients
    from tqdm.auto import tqdm

    x_all = np.asarray(features, dtype=np.float32)
    dim = x_all.shape[1]
    names = list(feature_names) if feature_names is not None else [f"feature_{i}" for i in range(dim)]
    if len(names) != dim:
        raise ValueError(ERR_FEATURE_NAMES.format(got=len(names), column=feature_column, dim=dim))
    device = next(model.parameters()).device
    base_row = torch.as_tensor(np.asarray(baseline, dtype=np.float32), device=device).reshape(1, dim)

    def forward(x: torch.Tensor) -> torch.Tensor:
        return score_from_logits(_logits(model(**{feature_column: x})), target_class, score)

    ig = IntegratedGradients(forward)
    parts: dict[str, list[np.ndarray]] = {k: [] for k in ("attr", "score", "base", "pred", "delta")}
    with _Frozen(model):
        for start in tqdm(range(0, len(x_all), batch_size), desc="Attributions", disable=not progress):
            x = torch.as_tensor(x_all[start : start + batch_size], device=device)
            base = base_row.expand_as(x)
            with torch.no_grad():
                logits = _logits(model(**{feature_column: x}))
                parts["score"].append(score_from_logits(logits, target_class, score).cpu().numpy())
                parts["base"].append(forward(base).cpu().numpy())
                parts["pred"].append(logits.argmax(-1).cpu().numpy())
            attributions, delta = ig.attribute(
                x,
                baselines=base,
                n_steps=n_steps,
                internal_batch_size=internal_batch_size,
                return_convergence_delta=True,
            )
            parts["attr"].append(attributions.detach().cpu().numpy().astype(np.float64))
            parts["delta"].append(delta.detach().cpu().numpy())
    attr = np.concatenate(parts["attr"]) if parts["attr"] else np.zeros((0, dim))
    return RowAttributions(
        unit="feature",
        units=[names] * len(attr),
        attributions=list(attr),
        scores=np.concatenate(parts["score"]) if parts["score"] else np.zeros(0),
        baseline_scores=np.concatenate(parts["base"]) if parts["base"] else np.zeros(0),
        predictions=np.concatenate(parts["pred"]) if parts["pred"] else np.zeros(0, dtype=np.int64),
        deltas=np.concatenate(parts["delta"]) if parts["delta"] else np.zeros(0),
    )


# ----- sample --------------------------------------------------------------------------------------------
def sample_rows(cells: np.ndarray, max_rows: int | None, seed: int = 0) -> np.ndarray:
    """Sorted indices of a seeded sample of at most ``max_rows`` rows, stratified by ``cells`` (N, K): the
    group ids of each row in K groupings. Half the sample is shared equally among the cells (at least one row
    each when ``max_rows`` reaches the number of cells, so a small group is represented), the rest
    proportionally to what is left of each cell."""
    n = len(cells)
    if max_rows is None or max_rows >= n:
        return np.arange(n)
    _, cell = np.unique(cells.reshape(n, -1), axis=0, return_inverse=True)
    cell = cell.reshape(-1)
    sizes = np.bincount(cell)
    equal = max(1, max_rows // (2 * len(sizes))) if max_rows >= len(sizes) else 0
    take = np.minimum(sizes, equal)
    left = max_rows - int(take.sum())
    room = sizes - take
    if left > 0 and room.sum() > 0:
        share = left * room / room.sum()
        extra = np.minimum(np.floor(share).astype(int), room)
        # largest remainders get the rows rounding left over
        for i in np.argsort(-(share - extra), kind="stable")[: left - int(extra.sum())]:
            if extra[i] < room[i]:
                extra[i] += 1
        take = take + extra
    rng = np.random.default_rng(seed)
    chosen = [rng.choice(np.flatnonzero(cell == c), size=int(k), replace=False) for c, k in enumerate(take)]
    return np.sort(np.concatenate(chosen)) if chosen else np.zeros(0, dtype=np.int64)


# ----- aggregation ---------------------------------------------------------------------------------------
def _row_totals(units: Sequence[str], values: np.ndarray) -> tuple[dict[str, float], dict[str, int]]:
    sums: dict[str, float] = {}
    counts: dict[str, int] = {}
    for unit, value in zip(units, values, strict=True):
        sums[unit] = sums.get(unit, 0.0) + float(value)
        counts[unit] = counts.get(unit, 0) + 1
    return sums, counts


def _spreads(
    per_group: dict[str, dict[str, float]],
    counts: dict[str, dict[str, int]],
    tokens: Sequence[str],
    measure: str,
) -> list[TokenGap]:
    gaps = []
    for token in tokens:
        values = {g: per_group[g].get(token, 0.0) for g in per_group}
        high, low = max(values, key=values.__getitem__), min(values, key=values.__getitem__)
        gaps.append(
            TokenGap(
                token=token,
                measure=measure,
                spread=values[high] - values[low],
                high=high,
                low=low,
                by_group=values,
                counts={g: counts[g].get(token, 0) for g in per_group},
            )
        )
    return sorted(gaps, key=lambda t: (-t.spread, t.token))


def aggregate(
    rows: RowAttributions,
    group_ids: np.ndarray,
    group_names: Sequence[str],
    grouping: str,
    min_count: int = DEFAULT_MIN_COUNT,
    top_k: int = DEFAULT_TOP_K,
) -> GroupingExplanation:
    """Per-group token statistics of one grouping; ``group_ids`` (N,) index ``group_names`` (-1: no group).

    See the module docstring for the measures; groups without sampled rows are left out, groups with fewer
    than ``min_count`` rows are listed but not compared.
    """
    totals = [_row_totals(u, v) for u, v in zip(rows.units, rows.attributions, strict=True)]
    groups: list[GroupExplanation] = []
    contribution: dict[str, dict[str, float]] = {}
    mean: dict[str, dict[str, float]] = {}
    counts: dict[str, dict[str, int]] = {}
    for gid, name in enumerate(group_names):
        members = np.flatnonzero(group_ids == gid)
        if len(members) == 0:
            continue
        sums: dict[str, float] = {}
        count: dict[str, int] = {}
        present: dict[str, int] = {}
        for i in members:
            row_sums, row_counts = totals[i]
            for token, value in row_sums.items():
                sums[token] = sums.get(token, 0.0) + value
                count[token] = count.get(token, 0) + row_counts[token]
                present[token] = present.get(token, 0) + 1
        stats = [
            TokenStat(t, count[t], present[t], sums[t] / count[t], sums[t] / len(members))
            for t in sorted(sums)
        ]
        frequent = [s for s in stats if s.count >= min_count]
        positive = sorted((s for s in frequent if s.mean > 0), key=lambda s: (-s.mean, s.token))[:top_k]
        negative = sorted((s for s in frequent if s.mean < 0), key=lambda s: (s.mean, s.token))[:top_k]
        compared = len(members) >= min_count
        if compared:
            contribution[name] = {s.token: s.contribution for s in stats}
            mean[name] = {s.token: s.mean for s in stats}
            counts[name] = dict(count)
        groups.append(
            GroupExplanation(
                group=name,
                rows=len(members),
                mean_score=float(rows.scores[members].mean()),
                mean_baseline_score=float(rows.baseline_scores[members].mean()),
                positive=positive,
                negative=negative,
                counterfactual=_sensitivity(rows, members),
                compared=compared,
            )
        )
    most_different: list[TokenGap] = []
    context: list[TokenGap] = []
    if len(contribution) >= 2:
        every = set.union(*(set(c) for c in counts.values()))
        frequent = sorted(t for t in every if sum(c.get(t, 0) for c in counts.values()) >= min_count)
        most_different = _spreads(contribution, counts, frequent, "contribution")[:top_k]
        shared = sorted(t for t in every if all(c.get(t, 0) >= min_count for c in counts.values()))
        context = _spreads(mean, counts, shared, "mean")[:top_k]
    return GroupingExplanation(grouping, groups, most_different, context)


def _sensitivity(rows: RowAttributions, members: np.ndarray) -> CounterfactualSensitivity | None:
    if rows.swaps is None or rows.counterfactual_scores is None or rows.counterfactual_predictions is None:
        return None
    swapped = members[rows.swaps[members] > 0]
    change = rows.counterfactual_scores[swapped] - rows.scores[swapped]
    flipped = rows.counterfactual_predictions[swapped] != rows.predictions[swapped]
    return CounterfactualSensitivity(
        rows=len(members),
        swapped=len(swapped),
        flipped=int(flipped.sum()),
        mean_abs_change=float(np.abs(change).mean()) if len(swapped) else math.nan,
        mean_change=float(change.mean()) if len(swapped) else math.nan,
    )


def convergence(rows: RowAttributions, n_steps: int) -> Convergence:
    """Summarise captum's deltas (see ``Convergence``)."""
    delta = np.abs(rows.deltas)
    moved = np.abs(rows.scores - rows.baseline_scores)
    use = moved >= MIN_SCORE_CHANGE
    relative = delta[use] / moved[use]
    return Convergence(
        n_steps=n_steps,
        mean_abs_delta=float(delta.mean()) if len(delta) else math.nan,
        max_abs_delta=float(delta.max()) if len(delta) else math.nan,
        max_relative_delta=float(relative.max()) if use.any() else math.nan,
        relative_rows=int(use.sum()),
        rows_over=int((relative > DELTA_WARNING).sum()),
    )


# ----- the Python API ------------------------------------------------------------------------------------
def _class_names(model: Any, num_classes: int) -> list[str]:
    id2label = getattr(getattr(model, "config", None), "id2label", None) or {}
    return [str(id2label.get(i, id2label.get(str(i), i))) for i in range(num_classes)]


def explain(
    model: Any,
    dataset: Any,
    *,
    tokenizer: Any = None,
    group_by: str | Sequence[str] | None = None,
    split: str = "test",
    score: str = "probability",
    target_class: int | None = None,
    max_rows: int | None = DEFAULT_MAX_ROWS,
    seed: int = 0,
    n_steps: int = DEFAULT_N_STEPS,
    batch_size: int = DEFAULT_BATCH_SIZE,
    internal_batch_size: int | None = DEFAULT_INTERNAL_BATCH_SIZE,
    text_column: str = "text",
    text_pair_column: str | None = None,
    max_length: int = 128,
    baseline_token_id: int | None = None,
    word_pairs: Any = ("gender",),
    feature_column: str = "features",
    feature_names: Sequence[str] | None = None,
    feature_baseline: str | Sequence[float] = "zeros",
    min_count: int = DEFAULT_MIN_COUNT,
    top_k: int = DEFAULT_TOP_K,
    examples: int = DEFAULT_EXAMPLES,
    progress: bool = True,
    model_name: str = "",
) -> ExplanationResult:
    """Attribute a sample of ``dataset`` and aggregate per group (see the module docstring).

    Args:
        model: a ``FairTrainer`` (its model, tokenizer and group vocabulary are used) or a model: a
            ``transformers`` classifier (explained on ``text_column``, needs ``tokenizer``) or a plain
            ``nn.Module`` returning logits (N, C) from ``feature_column`` (N, D).
        dataset: a ``datasets.Dataset`` with the text or features and the attribute columns (labels optional).
        group_by: without a FairTrainer, the groupings (``"sex"`` or ``["sex", "sex+race"]``), fitted on
            ``dataset``.
        word_pairs: for text, the identity terms to swap: a ``WordPairs``, built-in list names or files
            (default ``("gender",)``), or None to skip the counterfactual sensitivity.
        feature_baseline: tabular baseline: ``"zeros"``, ``"mean"`` (column means of the trainer's training
            data, else of ``dataset``) or D values.
        Other arguments: see ``fairtune explain --help``.
    """
    from transformers import Trainer

    from fairtune.groups import GroupVocabulary, group_column

    check_options(score, max_rows, n_steps, batch_size, internal_batch_size, min_count, top_k, examples)
    trainer = model if isinstance(model, Trainer) else None
    net = trainer.model if trainer is not None else model
    if trainer is not None and tokenizer is None:
        tokenizer = trainer.processing_class
    vocab = getattr(trainer, "group_vocab", None)
    if vocab is not None:  # a FairTrainer: its groups, fixed when it was trained
        dataset = trainer._ensure_prepared(dataset, split)
    else:
        if not group_by:
            raise ValueError(ERR_NO_GROUPS)
        groupings = [group_by] if isinstance(group_by, str) else list(group_by)
        vocab = GroupVocabulary(groupings[0], groupings[1:]).fit(dataset)
        dataset = vocab.encode(dataset, split=split)
    columns = list(dataset.column_names)
    if len(dataset) == 0:
        raise ValueError(ERR_EMPTY.format(split=split))
    is_text = callable(getattr(net, "get_input_embeddings", None))
    if is_text:
        if text_column not in columns:
            raise ValueError(ERR_NO_TEXT.format(column=text_column, columns=", ".join(columns)))
        if tokenizer is None:
            raise ValueError(ERR_NO_TOKENIZER)
        if tokenizer.pad_token_id is None and baseline_token_id is None:
            raise ValueError(ERR_NO_PAD)
        num_classes = int(getattr(net.config, "num_labels", 2))
        class_names = _class_names(net, num_classes)
    else:
        if feature_column not in columns:
            raise ValueError(ERR_NO_FEATURES.format(column=feature_column, columns=", ".join(columns)))
        num_classes = _probe_classes(net, np.asarray(dataset[:1][feature_column], np.float32), feature_column)
        class_names = [str(i) for i in range(num_classes)]
    target = check_target_class(num_classes, target_class, class_names)

    groupings = list(vocab.groupings)
    ids = np.stack([np.asarray(dataset[group_column(g)]) for g in groupings], axis=1)  # (N, K)
    chosen = sample_rows(ids, max_rows, seed)
    sample = dataset.select(chosen.tolist())
    label_column = next((c for c in ("labels", "label") if c in columns), None)
    labels = np.asarray(sample[label_column]) if label_column else None
    started = time.perf_counter()
    if is_text:
        pairs = _word_pairs(word_pairs)
        rows = attribute_text(
            net,
            tokenizer,
            sample[text_column],
            sample[text_pair_column] if text_pair_column else None,
            target_class=target,
            score=score,
            n_steps=n_steps,
            batch_size=batch_size,
            internal_batch_size=internal_batch_size,
            max_length=max_length,
            baseline_token_id=baseline_token_id,
            word_pairs=pairs,
            progress=progress,
        )
        method = "Layer Integrated Gradients on the input embeddings (captum)"
        token = tokenizer.convert_ids_to_tokens(
            tokenizer.pad_token_id if baseline_token_id is None else baseline_token_id
        )
        baseline = (
            f"{token} at every non-special position (special tokens, padding and the attention mask kept)"
        )
        lists = _describe_pairs(word_pairs) if pairs is not None else None
    else:
        x = np.asarray(sample[feature_column], dtype=np.float32)
        base, baseline = _feature_baseline(feature_baseline, trainer, dataset, feature_column, x.shape[1])
        rows = attribute_features(
            net,
            x,
            base,
            feature_column=feature_column,
            feature_names=feature_names,
            target_class=target,
            score=score,
            n_steps=n_steps,
            batch_size=batch_size,
            internal_batch_size=internal_batch_size,
            progress=progress,
        )
        method = f"Integrated Gradients on {feature_column!r} (captum)"
        lists = None
    seconds = time.perf_counter() - started
    names = {g: vocab.names(g) for g in groupings}
    results = {
        g: aggregate(rows, ids[chosen, k], names[g], g, min_count, top_k) for k, g in enumerate(groupings)
    }
    all_rows = np.arange(len(chosen))
    overall = _sensitivity(rows, all_rows)
    train_k = groupings.index(vocab.train_grouping)
    shown = _examples(rows, ids[chosen, train_k], names[vocab.train_grouping], labels, examples)
    what = "probability" if score == "probability" else "log-odds"
    result = ExplanationResult(
        model=model_name or type(net).__name__,
        split=split,
        kind="text" if is_text else "tabular",
        unit=rows.unit,
        score=f"{what} of class {target} ({class_names[target]})",
        target_class=target,
        method=method,
        baseline=baseline,
        rows=len(chosen),
        available_rows=len(dataset),
        seed=seed,
        train_grouping=vocab.train_grouping,
        groupings=results,
        convergence=convergence(rows, n_steps),
        counterfactual=overall,
        examples=shown,
        settings={
            "max_rows": max_rows,
            "n_steps": n_steps,
            "batch_size": batch_size,
            "internal_batch_size": internal_batch_size,
            "min_count": min_count,
            "top_k": top_k,
            "max_length": max_length if is_text else None,
            "word_lists": lists,
        },
        seconds=seconds,
    )
    conv = result.convergence
    if conv.rows_over:
        import logging

        logging.getLogger(__name__).warning(
            "For %d of %d rows the attributions miss score - baseline score by more than %d%% (at most "
            "%.0f%%); raise n_steps (now %d) for tighter ones.",
            conv.rows_over,
            conv.relative_rows,
            round(100 * DELTA_WARNING),
            100 * conv.max_relative_delta,
            n_steps,
        )
    return result


def _word_pairs(word_pairs: Any) -> Any:
    if word_pairs is None:
        return None
    from fairtune.data.counterfactual import WordPairs

    if isinstance(word_pairs, WordPairs):
        return word_pairs
    from fairtune.data.loading import word_pairs as load_pairs

    return load_pairs([word_pairs] if isinstance(word_pairs, str) else list(word_pairs))


def _describe_pairs(word_pairs: Any) -> str:
    if isinstance(word_pairs, str):
        return word_pairs
    if isinstance(word_pairs, list | tuple):
        return ", ".join(map(str, word_pairs))
    return repr(word_pairs)


def _probe_classes(model: Any, x: np.ndarray, feature_column: str) -> int:
    import torch

    device = next(model.parameters()).device
    with torch.no_grad():
        return int(_logits(model(**{feature_column: torch.as_tensor(x, device=device)})).shape[1])


def _feature_baseline(
    choice: str | Sequence[float], trainer: Any, dataset: Any, column: str, dim: int
) -> tuple[np.ndarray, str]:
    if isinstance(choice, str):
        if choice == "zeros":
            return np.zeros(dim, dtype=np.float32), "zeros"
        if choice == "mean":
            train = getattr(trainer, "train_dataset", None) if trainer is not None else None
            source = train if train is not None and column in (train.column_names or []) else dataset
            where = "the training data" if source is not dataset else "the explained split"
            return np.asarray(source[column], dtype=np.float32).mean(0), f"column means of {where}"
        raise ValueError(ERR_FEATURE_BASELINE.format(value=choice, choices=FEATURE_BASELINES, dim=dim))
    values = np.asarray(choice, dtype=np.float32).reshape(-1)
    if values.shape != (dim,):
        raise ValueError(ERR_FEATURE_BASELINE.format(value=list(choice), choices=FEATURE_BASELINES, dim=dim))
    return values, "given values"


def _examples(
    rows: RowAttributions, ids: np.ndarray, names: Sequence[str], labels: np.ndarray | None, per_group: int
) -> list[ExampleRow]:
    shown = []
    for gid, name in enumerate(names):
        for i in np.flatnonzero(ids == gid)[:per_group]:
            shown.append(
                ExampleRow(
                    group=name,
                    label=None if labels is None else int(labels[i]),
                    score=float(rows.scores[i]),
                    tokens=list(rows.units[i]),
                    attributions=[float(v) for v in rows.attributions[i]],
                )
            )
    return shown


def explain_model(
    model_dir: str,
    data_args: DataArguments,
    args: FairTrainingArguments,
    split: str = "test",
    **options: Any,
) -> ExplanationResult:
    """Explain a saved model on ``split`` of the config's data (``options``: those of ``explain``); the
    sample's seed is ``args.seed`` and the word lists are ``data_args.counterfactual_word_lists``."""
    from fairtune.config import ModelArguments
    from fairtune.data.loading import word_pairs
    from fairtune.pipeline import build

    if not os.path.isfile(os.path.join(model_dir, "config.json")):
        raise ValueError(ERR_NOT_A_MODEL.format(path=model_dir))
    pairs = word_pairs(data_args.counterfactual_word_lists)  # a bad list file fails before the model loads
    # As in evaluate_model: nothing is trained or saved, and the model's folder stands in as output_dir.
    args = replace(args, output_dir=model_dir, overwrite_output_dir=True)
    trainer, data = build(ModelArguments(model_name_or_path=model_dir), data_args, args)
    if split not in data:
        raise ValueError(ERR_SPLIT_MISSING.format(split=split, splits=", ".join(data)))
    options.setdefault("seed", args.seed)
    result = explain(
        trainer,
        data[split],
        split=split,
        text_column=data_args.text_column,
        text_pair_column=data_args.text_pair_column,
        max_length=data_args.max_seq_length,
        word_pairs=pairs,
        model_name=model_dir,
        **options,
    )
    result.settings["word_lists"] = ", ".join(data_args.counterfactual_word_lists)
    return result


# ----- rendering -----------------------------------------------------------------------------------------
def _tag(grouping: str) -> str:
    return grouping.replace("+", "_x_")


def _counterfactual_rows(result: ExplanationResult) -> list[str]:
    lines = []
    for grouping, g in result.groupings.items():
        for group in g.groups:
            c = group.counterfactual
            if c is not None:
                lines.append(
                    f"| {grouping} | {group.group} | {c.rows} | {c.swapped} | {_fmt(c.mean_abs_change)} | "
                    f"{_fmt(c.mean_change)} | {c.flipped} | {_fmt(c.rate)} |"
                )
    return lines


def render_markdown(result: ExplanationResult) -> str:
    """The explanation as Markdown: settings, convergence, counterfactual sensitivity, per-grouping tables."""
    conv = result.convergence
    unit = {"word": "words (word pieces merged, case-folded)", "token": "tokens", "feature": "features"}
    lines = [
        f"# Explanation of `{result.model}` on the {result.split} split",
        "",
        f"- Score explained: {result.score}.",
        f"- Attributions: {result.method}, {conv.n_steps} steps; baseline: {result.baseline}.",
        f"- Unit: {unit.get(result.unit, result.unit)}.",
        f"- Rows: {result.rows} of {result.available_rows}, a sample stratified over the groups of every "
        f"grouping (seed {result.seed}); {_fmt(result.seconds, 1)} s.",
        f"- Convergence: mean |delta| {_fmt(conv.mean_abs_delta, 5)}, "
        f"max |delta| {_fmt(conv.max_abs_delta, 5)}; "
        f"max |delta| / |score - baseline score| {_fmt(conv.max_relative_delta, 4)} over the "
        f"{conv.relative_rows} rows whose score moved at least {MIN_SCORE_CHANGE} from the baseline "
        f"({conv.rows_over} of them above {DELTA_WARNING}).",
        "",
    ]
    if result.counterfactual is not None:
        lines += [
            f"## Counterfactual sensitivity (word lists: {result.settings.get('word_lists')})",
            "",
            f"Overall flip rate {result.counterfactual.describe()}; mean |change of score| "
            f"{_fmt(result.counterfactual.mean_abs_change)} over rows with a term to swap.",
            "",
            "| grouping | group | rows | with terms | mean abs change | mean change | flipped | flip rate |",
            "|---|---|---|---|---|---|---|---|",
            *_counterfactual_rows(result),
            "",
        ]
    k = result.settings.get("min_count", DEFAULT_MIN_COUNT)
    for grouping, g in result.groupings.items():
        tag = _tag(grouping)
        compared = [x.group for x in g.groups if x.compared]
        lines += [
            f"## {grouping}",
            "",
            f"![top {result.unit}s](top_{result.unit}s_{tag}.png)",
            "",
            "| group | rows | mean score | mean baseline score |",
            "|---|---|---|---|",
            *(
                f"| {x.group}{'' if x.compared else ' *'} | {x.rows} | {_fmt(x.mean_score)} | "
                f"{_fmt(x.mean_baseline_score)} |"
                for x in g.groups
            ),
            "",
        ]
        if len(compared) < len(g.groups):
            lines += [f"\\* fewer than {k} sampled rows: left out of the comparisons below.", ""]
        lines += [
            f"### Toward and away from class {result.target_class}, per group (mean attribution per "
            f"occurrence, {result.unit}s seen at least {k} times)",
            "",
            f"| group | direction | {result.unit} | mean | count | contribution per row |",
            "|---|---|---|---|---|---|",
        ]
        for x in g.groups:
            for direction, stats in (("toward", x.positive), ("away", x.negative)):
                lines += [
                    f"| {x.group} | {direction} | {t.token} | {_fmt(t.mean, 4)} | {t.count} | "
                    f"{_fmt(t.contribution, 4)} |"
                    for t in stats
                ]
        lines.append("")
        if g.most_different:
            lines += [
                f"### Most group-different {result.unit}s (contribution per row)",
                "",
                f"![most different](most_different_{tag}.png)",
                "",
                "Contribution = summed attribution in a row (0 where absent), averaged over the group's "
                "rows; per group these add up to mean score - mean baseline score, so their differences "
                "decompose the gap in mean score. In brackets: occurrences in the group's sampled rows.",
                "",
                f"| {result.unit} | spread | high | low | " + " | ".join(compared) + " |",
                "|---|---|---|---|" + "---|" * len(compared),
                *(
                    f"| {t.token} | {_fmt(t.spread, 4)} | {t.high} | {t.low} | "
                    + " | ".join(f"{_fmt(t.by_group[c], 4)} ({t.counts[c]})" for c in compared)
                    + " |"
                    for t in g.most_different
                ),
                "",
            ]
        if g.context_effects:
            lines += [
                f"### Same {result.unit}, different weight (mean per occurrence; seen {k}+ times in every "
                "group)",
                "",
                f"| {result.unit} | spread | high | low | " + " | ".join(compared) + " |",
                "|---|---|---|---|" + "---|" * len(compared),
                *(
                    f"| {t.token} | {_fmt(t.spread, 4)} | {t.high} | {t.low} | "
                    + " | ".join(_fmt(t.by_group[c], 4) for c in compared)
                    + " |"
                    for t in g.context_effects
                ),
                "",
            ]
    if result.examples and result.kind == "text":
        lines += [f"## Example rows ({result.train_grouping})", "", f"![token heatmap]({HEATMAP_PNG})", ""]
    return "\n".join(lines)


def write_explanation(result: ExplanationResult, output_dir: str, overwrite: bool = False) -> list[str]:
    """Write explanation.json, explanation.md and the PNGs to ``output_dir``; returns the paths written."""
    from fairtune import plots
    from fairtune.report import write_json_and_markdown

    check_output_dir(output_dir, overwrite)
    markdown = render_markdown(result)
    paths = write_json_and_markdown(output_dir, EXPLANATION_JSON, result.to_dict(), EXPLANATION_MD, markdown)
    unit = result.unit
    for grouping, g in result.groupings.items():
        tag = _tag(grouping)
        bars = {
            x.group: [(t.token, t.mean) for t in (*x.positive, *x.negative)] for x in g.groups if x.compared
        }
        if any(bars.values()):
            paths.append(
                plots.plot_top_attributions(
                    bars,
                    os.path.join(output_dir, f"top_{unit}s_{tag}.png"),
                    title=f"{grouping}: mean attribution per occurrence ({result.score})",
                )
            )
        if g.most_different:
            compared = [x.group for x in g.groups if x.compared]
            paths.append(
                plots.plot_group_differences(
                    [t.token for t in g.most_different],
                    {c: [t.by_group[c] for t in g.most_different] for c in compared},
                    os.path.join(output_dir, f"most_different_{tag}.png"),
                    title=f"{grouping}: most group-different {unit}s",
                    xlabel="contribution per row (summed attribution, 0 where absent)",
                )
            )
    if result.examples and result.kind == "text":
        shown = [
            (f"{e.group} | label {_fmt(e.label)} | score {_fmt(e.score)}", e.tokens, e.attributions)
            for e in result.examples
        ]
        paths.append(
            plots.plot_token_heatmap(
                shown, os.path.join(output_dir, HEATMAP_PNG), title=f"Attributions to the {result.score}"
            )
        )
    return paths


def read_summary(output_dir: str) -> dict[str, Any] | None:
    """The ``summary`` of ``output_dir``/explanation.json (e.g. a model's ``explanation/``), or None."""
    path = os.path.join(output_dir, EXPLANATION_JSON)
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        return json.load(f).get("summary")


def render_summary(result: ExplanationResult, k: int = 5) -> str:
    """A few lines for the terminal: per grouping the most group-different units, and the flip rate."""
    lines = [f"Explained {result.rows} rows ({result.score}) in {_fmt(result.seconds, 1)} s."]
    for grouping, g in result.groupings.items():
        top = ", ".join(f"{t.token} ({t.high} +{_fmt(t.spread, 3)})" for t in g.most_different[:k]) or "–"
        lines.append(f"  {grouping}: most group-different {result.unit}s: {top}")
    if result.counterfactual is not None:
        lines.append(f"  counterfactual flip rate: {result.counterfactual.describe()}")
    conv = result.convergence
    lines.append(f"  convergence: max |delta| / |score - baseline| = {_fmt(conv.max_relative_delta, 4)}")
    return "\n".join(lines)


# ----- the command ---------------------------------------------------------------------------------------
def _explain_config_keys() -> list[str]:
    """Config keys a flag of ``fairtune explain`` may set: data options (augmentation options aside, except
    the word lists it swaps) and EXPLAIN_TRAINING_KEYS."""
    from dataclasses import fields

    from fairtune.config import DataArguments

    data = [
        f.name
        for f in fields(DataArguments)
        if not f.name.startswith(("counterfactual_", "oversample_")) or f.name == "counterfactual_word_lists"
    ]
    return [*data, *EXPLAIN_TRAINING_KEYS]


def known_splits(data_args: DataArguments) -> list[str] | None:
    """The splits the config's data will have, known without loading it for local files and the embedded
    data (train, validation given or carved from train, test when given); None for Hub data."""
    from fairtune.data.loading import DEFAULT_DATASET, EMBEDDED

    if data_args.train_file:
        return ["train", "validation", *(["test"] if data_args.test_file else [])]
    name = data_args.dataset_name or DEFAULT_DATASET
    if name in EMBEDDED:
        return ["train", "validation", "test"]
    if os.path.isfile(name):
        return ["train", "validation"]
    return None


def explain_main(argv: Sequence[str] | None = None) -> None:
    """``fairtune explain``: explain a saved model and write the explanation (exit 2 on a user error).

    Every check that needs no model runs first (options, config, split name, the model's folder and classes,
    word lists, the output folder), so a refused run loads no model and writes nothing.
    """
    from fairtune.cli import USER_ERRORS, fail, refuse_other_commands_options, refuse_unused_keys
    from fairtune.config_files import ConfigError, StrictArgumentParser, read_config_layers

    argv = list(sys.argv[1:] if argv is None else argv)
    if "-h" in argv or "--help" in argv:
        print(EXPLAIN_HELP)
        return
    try:
        refuse_other_commands_options("explain", argv)
        parser = StrictArgumentParser(add_help=False, prog="fairtune explain")
        parser.add_argument("--model")
        parser.add_argument("--split", default="test")
        parser.add_argument("--output_dir")
        parser.add_argument("--score", default="probability")
        parser.add_argument("--overwrite", action="store_true")
        ints = {
            "--max_rows": DEFAULT_MAX_ROWS,
            "--n_steps": DEFAULT_N_STEPS,
            "--batch_size": DEFAULT_BATCH_SIZE,
            "--internal_batch_size": DEFAULT_INTERNAL_BATCH_SIZE,
            "--target_class": None,
            "--top_k": DEFAULT_TOP_K,
            "--min_count": DEFAULT_MIN_COUNT,
            "--examples": DEFAULT_EXAMPLES,
        }
        for flag, default in ints.items():
            parser.add_argument(flag, default=default, type=int)
        opts, rest = parser.parse_known_args(argv)
        if not opts.model:
            raise ConfigError(ERR_NO_MODEL)
        options = {
            "score": opts.score,
            "max_rows": opts.max_rows,
            "n_steps": opts.n_steps,
            "batch_size": opts.batch_size,
            "internal_batch_size": opts.internal_batch_size,
            "min_count": opts.min_count,
            "top_k": opts.top_k,
            "examples": opts.examples,
        }
        check_options(**options)
        read_config_layers(rest)  # before torch and transformers load
        refuse_unused_keys("explain", rest, _explain_config_keys())
        if not os.path.isfile(os.path.join(opts.model, "config.json")):
            raise ConfigError(ERR_NOT_A_MODEL.format(path=opts.model))
        out = opts.output_dir or os.path.join(opts.model, "explanation")
        check_output_dir(out, opts.overwrite)

        from fairtune.config import parse_config
        from fairtune.data.loading import word_pairs
        from fairtune.evaluation import inspect_model

        _, data_args, args = parse_config(rest, prog="fairtune explain")
        splits = known_splits(data_args)
        if splits is not None and opts.split not in splits:
            raise ConfigError(ERR_SPLIT_NAME.format(split=opts.split, choices=", ".join(splits)))
        saved = inspect_model(opts.model, args)
        with open(os.path.join(opts.model, "config.json")) as f:
            id2label = json.load(f).get("id2label") or {}
        names = [str(id2label.get(str(i), i)) for i in range(saved.num_classes)]
        check_target_class(saved.num_classes, opts.target_class, names)
        word_pairs(data_args.counterfactual_word_lists)
        result = explain_model(
            opts.model, data_args, args, opts.split, target_class=opts.target_class, **options
        )
    except USER_ERRORS as err:
        fail(str(err))
    paths = write_explanation(result, out, overwrite=opts.overwrite)
    from fairtune.model_card import add_explanation_to_card

    card = add_explanation_to_card(opts.model, result.summary(), out)
    print(render_summary(result))
    print("\nWritten: " + ", ".join(paths) + (f"; model card updated: {card}" if card else ""))
