"""Proxy detection: which input columns, and which words of a text, give away a protected attribute.

A model that never sees ``sex`` can still treat the sexes differently through a column that stands in for it
(on Adult: ``relationship`` = Husband / Wife). ``detect_proxies`` ranks every input column of a dataset by how
well it alone predicts each audited attribute, and, for a text column, lists the words most associated with
each group:

* **Columns.** One number ranks every column, whatever its kind: the AUC of a one-column model of the
  attribute (0.5 = no information, 1 = the column identifies the group). With more than two groups it is
  each group against the rest, averaged with the groups' shares as weights (scikit-learn's
  ``average="weighted"``), so that a group of a dozen rows cannot dominate the ranking with a noisy AUC.
  - Numeric columns: the value itself is the model's score (any one-feature logistic model is monotone in it,
    so it has the same AUC up to direction); the direction is taken per group, so AUC = max(A, 1 - A).
  - Categorical columns (strings, booleans, integers with at most ``max_categories`` values): the score is
    the group's share among the training rows with the same value, cross-fitted over two halves of the rows
    so that a column with many rare values cannot score well by memorising them. Categorical columns also
    report the normalised mutual information with the attribute, NMI = I(X; A) / mean(H(X), H(A)) (the
    arithmetic normalisation of scikit-learn's ``normalized_mutual_info_score``).
* **Words.** Lower-cased words of the text, scored per group against the rest by the log-odds ratio with an
  informative Dirichlet prior (Monroe, Colaresi and Quinn 2008, "Fightin' Words"), the prior being the
  word's count in the whole text; the z-score ranks the words. Words of the counterfactual word lists
  (e.g. "husband", "she") are marked ``identity_term``: they name the group rather than stand in for it.

Pure NumPy; ``fairtune.audit.audit_dataset`` embeds the result in the data audit and ``fairtune.plots`` draws
it.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from fairtune.groups import GROUP_COLUMN_PREFIX, is_missing

MAX_CATEGORIES = 50  # an integer column with more distinct values is treated as numeric
TOP_TOKENS = 10
MIN_TOKEN_COUNT = 5
WORD = re.compile(r"[a-z]+(?:['-][a-z]+)*")
# Columns that are never inputs of the model: the pair id of counterfactual copies, token ids.
NOT_INPUTS = ("pair_id", "input_ids", "attention_mask", "token_type_ids", "labels")

ERR_ATTRIBUTE_GROUPS = (
    "Proxy detection needs at least two values of attribute {attribute!r} among rows with a value; found "
    "{values}."
)


def auc_score(scores: np.ndarray, positive: np.ndarray) -> float:
    """AUC of ``scores`` (N,) for the binary ``positive`` (N,) by the rank-sum (Mann-Whitney) formula, ties
    counted half; NaN when one class is empty."""
    n_pos = int(positive.sum())
    n_neg = len(positive) - n_pos
    if n_pos == 0 or n_neg == 0:
        return math.nan
    _, inverse, counts = np.unique(scores, return_inverse=True, return_counts=True)
    # Average rank of each distinct value (1-based): the ranks its ties would share.
    ends = np.cumsum(counts)
    mean_rank = ends - (counts - 1) / 2.0
    rank_sum = mean_rank[inverse.reshape(-1)][positive].sum()
    return float((rank_sum - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def _entropy(counts: np.ndarray) -> float:
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log(p)).sum())


def normalized_mutual_information(x: np.ndarray, a: np.ndarray) -> float:
    """NMI of two integer-coded arrays (N,): I(X; A) / mean(H(X), H(A)); 0 when either is constant."""
    table = np.zeros((int(x.max()) + 1, int(a.max()) + 1))
    np.add.at(table, (x, a), 1)
    hx, ha = _entropy(table.sum(1)), _entropy(table.sum(0))
    if hx == 0 or ha == 0:
        return 0.0
    mutual = hx + ha - _entropy(table.ravel())
    return float(max(0.0, mutual) / ((hx + ha) / 2))


def _codes(values: Sequence[Any]) -> np.ndarray:
    """Integer codes (N,) of values, a missing value being a value of its own."""
    index: dict[str, int] = {}
    return np.array([index.setdefault("\0missing" if is_missing(v) else str(v), len(index)) for v in values])


def _is_categorical(values: Sequence[Any], max_categories: int) -> bool | None:
    """True for text / booleans / few-valued integers, False for numbers, None for what is neither."""
    present = [v for v in values if not is_missing(v)]
    if not present:
        return None
    if all(isinstance(v, bool | str) for v in present):
        return True
    if all(isinstance(v, int | float) and not isinstance(v, bool) for v in present):
        integral = all(float(v).is_integer() for v in present)
        return integral and len(set(present)) <= max_categories
    return None  # lists, dicts: not a column a one-feature model reads


def _weighted(aucs: list[float], groups: np.ndarray, group_ids: Iterable[int]) -> float:
    """Mean of per-group AUCs weighted by group size (groups whose AUC is undefined left out)."""
    weights = np.array([(groups == g).sum() for g in group_ids], dtype=float)
    values = np.array(aucs, dtype=float)
    defined = ~np.isnan(values)
    if not defined.any():
        return math.nan
    return float((values[defined] * weights[defined]).sum() / weights[defined].sum())


def column_proxy(
    values: Sequence[Any],
    groups: np.ndarray,
    num_groups: int,
    max_categories: int = MAX_CATEGORIES,
    seed: int = 0,
) -> dict[str, Any] | None:
    """How well one column predicts the attribute: ``{kind, auc, nmi (categorical), rows}``, or None for a
    column no one-feature model reads (lists, all missing).

    ``groups`` (N,) holds attribute ids in ``[0, num_groups)``.
    """
    categorical = _is_categorical(values, max_categories)
    if categorical is None:
        return None
    rng = np.random.default_rng(seed)
    group_ids = range(num_groups) if num_groups > 2 else [1]  # two groups: one AUC says it all
    if categorical:
        codes = _codes(values)
        # Two-fold cross-fitting: each half is scored by the group shares of the other half's values.
        fold = rng.permutation(len(codes)) % 2
        aucs = []
        for g in group_ids:
            target = groups == g
            score = np.empty(len(codes))
            for k in (0, 1):
                fit, use = fold != k, fold == k
                counts = np.bincount(codes[fit], minlength=codes.max() + 1)
                hits = np.bincount(codes[fit], weights=target[fit], minlength=codes.max() + 1)
                prior = target[fit].mean()
                # A value unseen in the other half gets the base share (add-one-row smoothing).
                score[use] = ((hits + prior) / (counts + 1))[codes[use]]
            aucs.append(auc_score(score, target))
        auc = _weighted(aucs, groups, group_ids)
        return {
            "kind": "categorical",
            "auc": auc,
            "nmi": normalized_mutual_information(codes, groups),
            "rows": len(codes),
        }
    present = np.array([not is_missing(v) for v in values])
    x = np.array([float(v) for v, p in zip(values, present, strict=True) if p])
    kept = groups[present]
    aucs = [auc_score(x, kept == g) for g in group_ids]
    auc = _weighted([max(a, 1 - a) for a in aucs], kept, group_ids)
    return {"kind": "numeric", "auc": auc, "rows": int(present.sum())}


def words(text: str) -> list[str]:
    return WORD.findall(text.lower())


def token_associations(
    texts: Sequence[str],
    groups: np.ndarray,
    names: Sequence[str],
    top_k: int = TOP_TOKENS,
    min_count: int = MIN_TOKEN_COUNT,
    identity_terms: Iterable[str] = (),
) -> dict[str, list[dict[str, Any]]]:
    """The ``top_k`` words most associated with each group against the rest: ``{group: [{token, z,
    count, rate (per 1,000 words of the group), rest_rate, identity_term}]}``, by the log-odds z-score with
    the whole text's counts as the Dirichlet prior (Monroe et al. 2008); words seen fewer than ``min_count``
    times in all are skipped."""
    identity = {t.lower() for t in identity_terms}
    per_group = [Counter() for _ in names]
    for text, g in zip(texts, groups.tolist(), strict=True):
        per_group[g].update(words(text))
    total = sum(per_group, Counter())
    vocab = [w for w, c in total.items() if c >= min_count]
    if not vocab:
        return {name: [] for name in names}
    prior = np.array([total[w] for w in vocab], dtype=float)
    prior_sum = prior.sum()
    out: dict[str, list[dict[str, Any]]] = {}
    for g, name in enumerate(names):
        y_g = np.array([per_group[g][w] for w in vocab], dtype=float)
        y_r = np.array([total[w] for w in vocab], dtype=float) - y_g
        n_g, n_r = y_g.sum(), y_r.sum()
        if n_g == 0 or n_r == 0:
            out[name] = []
            continue
        delta = np.log((y_g + prior) / (n_g + prior_sum - y_g - prior)) - np.log(
            (y_r + prior) / (n_r + prior_sum - y_r - prior)
        )
        z = delta / np.sqrt(1 / (y_g + prior) + 1 / (y_r + prior))
        order = np.argsort(-z, kind="stable")[:top_k]
        out[name] = [
            {
                "token": vocab[i],
                "z": float(z[i]),
                "count": int(y_g[i]),
                "rate": float(1000 * y_g[i] / n_g),
                "rest_rate": float(1000 * y_r[i] / n_r),
                "identity_term": vocab[i] in identity,
            }
            for i in order
            if z[i] > 0
        ]
    return out


def detect_proxies(
    columns: Mapping[str, Sequence[Any]],
    attributes: Sequence[str],
    text_column: str | None = None,
    exclude: Iterable[str] = (),
    identity_terms: Iterable[str] = (),
    max_categories: int = MAX_CATEGORIES,
    top_k: int = TOP_TOKENS,
    min_count: int = MIN_TOKEN_COUNT,
    seed: int = 0,
) -> dict[str, Any]:
    """Proxies of each attribute among ``columns`` (name -> values, N each).

    Candidate columns are all but the attributes themselves, ``exclude`` (e.g. the label), ``group:`` id
    columns and token columns; the text column is read for words. Rows without a value of the attribute are
    left out of its scores. Returns ``{attribute: {"columns": [{column, kind, auc, nmi?, rows}] (strongest
    first), "tokens": {group: [...]} (with a text column), "groups": [...], "rows": n}}``.
    """
    skip = {*attributes, *exclude, *NOT_INPUTS}
    identity = list(identity_terms)
    result: dict[str, Any] = {}
    for attribute in attributes:
        raw = list(columns[attribute])
        keep = np.array([not is_missing(v) for v in raw])
        names = sorted({str(v) for v, k in zip(raw, keep, strict=True) if k})
        if len(names) < 2:
            raise ValueError(ERR_ATTRIBUTE_GROUPS.format(attribute=attribute, values=names))
        index = {n: i for i, n in enumerate(names)}
        groups = np.array([index[str(v)] for v, k in zip(raw, keep, strict=True) if k])
        ranked = []
        for name, values in columns.items():
            if name in skip or name == text_column or name.startswith(GROUP_COLUMN_PREFIX):
                continue
            kept = [v for v, k in zip(values, keep, strict=True) if k]
            score = column_proxy(kept, groups, len(names), max_categories, seed)
            if score is not None:
                ranked.append({"column": name, **score})
        ranked.sort(key=lambda r: (-(r["auc"] if not math.isnan(r["auc"]) else 0), r["column"]))
        entry: dict[str, Any] = {"groups": names, "rows": int(keep.sum()), "columns": ranked}
        if text_column is not None:
            texts = [str(t) for t, k in zip(columns[text_column], keep, strict=True) if k]
            entry["text_column"] = text_column
            entry["tokens"] = token_associations(texts, groups, names, top_k, min_count, identity)
        result[attribute] = entry
    return result
