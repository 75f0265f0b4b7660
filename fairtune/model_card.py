"""The model card a training run writes: ``README.md`` in ``output_dir``, as ``push_to_hub`` would publish it.

Besides the usual metadata it carries a fairness section: a summary of the training-data audit (with the
columns and words that stand in for each attribute), the mitigation used, the evaluation's per-group
metrics with bootstrap intervals, and, once ``fairtune explain`` has run, a summary of its attributions.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from fairtune.audit import audit_table
from fairtune.curves import fmt
from fairtune.metrics import GroupResult
from fairtune.report import result_section

logger = logging.getLogger(__name__)

CARD_FILE = "README.md"
FALLBACK_FILE = "fairtune_model_card.md"
MARKER = "<!-- written by fairtune -->"
MINILM_HUB_NAME = "sentence-transformers/all-MiniLM-L6-v2"
EXPLANATION_START = "<!-- fairtune explanation -->"
EXPLANATION_END = "<!-- /fairtune explanation -->"


def render_model_card(
    base_model: str,
    dataset: str,
    group_by: str,
    mitigation: str,
    post_processing: str,
    augmentation: str,
    data_audit: dict[str, Any] | None,
    splits: dict[str, dict[str, GroupResult]],
    eval_split: str,
    flip_rate: str | None = None,
) -> str:
    """Markdown of the card: metadata, description, fairness section.

    ``flip_rate``: the counterfactual flip rate on the evaluation split, described (``FlipRate.describe``).
    """
    hub_base = MINILM_HUB_NAME if base_model == "minilm" else base_model
    front = ["---", "library_name: transformers", "pipeline_tag: text-classification"]
    if not os.path.isdir(hub_base):
        front.append(f"base_model: {hub_base}")
    front += ["tags:", "- fairtune", "- fairness", "---", MARKER, ""]
    lines = [*front, "# Model card", ""]
    lines += [
        f"Fine-tuned from `{hub_base}` on `{dataset}` with fairtune's `FairTrainer`, which tracked every "
        f"sample's group (`{group_by}`) during training and reports metrics per group.",
        "",
        "## Fairness",
        "",
        f"- Groups trained on: `{group_by}`",
        f"- Mitigation during training: {mitigation}",
        f"- Post-processing: {post_processing}",
        f"- Training-data augmentation: {augmentation}",
    ]
    if flip_rate is not None:
        lines.append(
            f"- Counterfactual flip rate (predictions changed by swapping identity terms): {flip_rate}"
        )
    lines.append("")
    if data_audit is not None:
        lines += [f"### Training data ({data_audit['rows']} rows)", ""]
        for grouping, g in data_audit["groupings"].items():
            lines += [f"By `{grouping}`:", "", audit_table(data_audit, grouping, label_counts=False), ""]
            if g["base_rate_gap"] is not None:
                lines += [f"Base-rate gap in the data: {g['base_rate_gap']:.3f}.", ""]
        lines += proxy_lines(data_audit)
    result_splits = [s for s in splits if s.startswith(eval_split)] or list(splits)
    for split in result_splits:
        for grouping, result in splits[split].items():
            lines += result_section(f"### {split} split, by `{grouping}`", result, warning_prefix="> ")
    lines += [
        "### Limitations",
        "",
        "These numbers hold for the evaluation data above and the groups recorded in it; small groups have",
        "wide intervals, and gaps between max and min over many small groups lean high: groups marked `*`",
        "have fewer than min_group_size rows, and each gap table says which groups its gaps span. Groups the",
        "data does not record are not measured. Re-audit on data from the deployment setting",
        "(`fairtune evaluate`).",
        "",
    ]
    return "\n".join(lines)


def proxy_lines(data_audit: dict[str, Any], top: int = 3) -> list[str]:
    """Card lines naming, per attribute, the training columns and words that stand in for it most
    (``fairtune.proxies``); terms of the word lists, which name the group, are left out of the words."""
    lines = []
    for attribute, p in data_audit.get("proxies", {}).items():
        columns = ", ".join(f"`{c['column']}` {fmt(c['auc'])}" for c in p["columns"][:top])
        lines.append(
            f"- Proxies of `{attribute}` (AUC of a one-column model): {columns or 'no input columns'}"
        )
        for group, tokens in (p.get("tokens") or {}).items():
            words = [t["token"] for t in tokens if not t["identity_term"]][:top]
            if words:
                lines.append(f"  - words most associated with {group}: {', '.join(words)}")
    return [*lines, ""] if lines else []


def explanation_lines(summary: dict[str, Any], where: str) -> list[str]:
    """Card section of an explanation (``fairtune.explain``'s ``summary``), between markers so a later
    explanation replaces it."""
    unit = summary.get("unit", "word")
    lines = [
        EXPLANATION_START,
        f"### Explanation ({summary['rows']} {summary['split']} rows, `{where}`)",
        "",
        f"Integrated-gradients attributions of the {summary['score']} by `{summary['grouping']}`.",
        "",
    ]
    different = ", ".join(
        f"{t['token']} ({t['high']} +{fmt(t['spread'])} over {t['low']})" for t in summary["most_different"]
    )
    lines.append(f"- {unit.capitalize()}s whose contribution differs most between groups: {different or '–'}")
    for group, tokens in summary["top_tokens"].items():
        lines.append(
            f"- {unit.capitalize()}s pushing {group} toward the class most: {', '.join(tokens) or '–'}"
        )
    if summary.get("counterfactual") is not None:
        lines.append(f"- Counterfactual flip rate on these rows: {summary['counterfactual']}")
    lines += [
        f"- Largest convergence error (relative): {fmt(summary['max_relative_delta'], 4)}",
        "",
        EXPLANATION_END,
    ]
    return lines


def add_explanation_to_card(model_dir: str, summary: dict[str, Any], where: str) -> str | None:
    """Put an explanation's summary into the model card fairtune wrote in ``model_dir`` (replacing an earlier
    one), before its limitations; returns the card's path, or None when there is no card of fairtune's."""
    path = os.path.join(model_dir, CARD_FILE)
    if not os.path.isfile(path):
        path = os.path.join(model_dir, FALLBACK_FILE)
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        text = f.read()
    if MARKER not in text:
        return None
    if EXPLANATION_START in text and EXPLANATION_END in text:
        head, rest = text.split(EXPLANATION_START, 1)
        text = head + rest.split(EXPLANATION_END, 1)[1].lstrip("\n")
    block = "\n".join(explanation_lines(summary, where)) + "\n\n"
    anchor = "### Limitations"
    text = text.replace(anchor, block + anchor, 1) if anchor in text else text.rstrip("\n") + "\n\n" + block
    with open(path, "w") as f:
        f.write(text)
    return path


def write_model_card(output_dir: str, text: str) -> str:
    """Write the card as ``README.md``, unless a README.md not written by fairtune is there already: then
    beside it, as ``fairtune_model_card.md``, so nothing of the user's is overwritten."""
    path = os.path.join(output_dir, CARD_FILE)
    if os.path.isfile(path):
        with open(path) as f:
            ours = MARKER in f.read()
        if not ours:
            path = os.path.join(output_dir, FALLBACK_FILE)
            logger.warning(
                "%s holds a README.md not written by fairtune; the model card goes to %s", output_dir, path
            )
    with open(path, "w") as f:
        f.write(text)
    return path


def render_lm_model_card(base_model: str, run: dict[str, Any], table: str) -> str:
    """Model card of a causal-LM run: metadata, what was done, and the stereotype scores before and after.

    ``table`` is the Markdown table of ``fairtune.lm_pipeline.before_after_table``.
    """
    front = ["---", "library_name: transformers", "pipeline_tag: text-generation"]
    if not os.path.isdir(base_model) and base_model != "smollm2":
        front.append(f"base_model: {base_model}")
    front += ["tags:", "- fairtune", "- fairness", "- debiasing", "---", MARKER, ""]
    lines = [*front, "# Model card", ""]
    lines += [
        f"Fine-tuned from `{base_model}` with fairtune's `FairTrainer` (causal LM), tracking which side of "
        f"the word lists {run.get('word_lists')} each training sentence mentions (`{run.get('group_by')}`).",
        "",
        "## Fairness",
        "",
        f"- Mitigation during training: {run.get('mitigation')}",
        f"- Counterfactual data augmentation: {run.get('counterfactual_augmentation')}",
        f"- Training rows: {run.get('train_rows')}",
        "",
        "### Stereotype benchmarks, before and after fine-tuning",
        "",
        table,
        "",
        "### Limitations",
        "",
        "Stereotype benchmarks measure preferences between sentence pairs or answers in English and in the",
        "categories they cover; a score near 50 (CrowS-Pairs, StereoSet SS) or 0 (BBQ) on them does not show",
        "that the model is free of bias elsewhere. Scores on subsets have wide intervals.",
        "",
    ]
    return "\n".join(lines)
