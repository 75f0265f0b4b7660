"""Fairness reports: ``fairness_report.json`` and a Markdown rendering of the same numbers.

Both render `GroupResult`s: the JSON holds each one's ``to_dict()`` (the layout the report has always had,
plus ``small_groups``, ``excluded_groups``, ``rows_without_group`` and the interval method), the Markdown its
per-group and gap tables. Groups below ``min_group_size`` are marked `SMALL_MARK` in the group table, and
the gap table says which groups its gaps span and which were left out.
"""

from __future__ import annotations

import json
import os
from typing import Any

from fairtune.curves import fmt
from fairtune.metrics import GroupResult

REPORT_JSON = "fairness_report.json"
REPORT_MD = "fairness_report.md"

# Per-group columns shown in tables, in order; a column is shown when any group has it. Multi-class
# results add their per-class columns (tpr_<c>, selection_rate_<c>) after these, headed by class name.
TABLE_STATS = [
    "count",
    "base_rate",
    "selection_rate",
    "accuracy",
    "tpr",
    "fpr",
    "fnr",
    "precision",
    "ece",
    "loss",
]
SMALL_MARK = "*"  # after a group's name: fewer than min_group_size rows
HEADLINE_GAPS = [
    "demographic_parity_difference",
    "demographic_parity_ratio",
    "equalized_odds_difference",
    "equal_opportunity_difference",
    "accuracy_difference",
    "worst_group_accuracy",
    "tpr_gap_rms",
]


def group_table(result: GroupResult) -> str:
    """Markdown table of one grouping: one row per group plus ``overall``; per-class columns by class name."""
    rows = {**result.by_group, "overall": result.overall}
    stats = [s for s in TABLE_STATS if any(s in r for r in rows.values())]
    per_class = [f"{stat}_{c}" for stat in ("tpr", "selection_rate") for c in range(result.num_classes)]
    stats += [s for s in per_class if any(s in r for r in rows.values())]
    head = [result.stat_label(s) for s in stats]
    lines = ["| group | " + " | ".join(head) + " |", "|---" * (len(stats) + 1) + "|"]
    small = set(result.small_groups)
    for name, r in rows.items():
        shown = f"{name} {SMALL_MARK}" if name in small and name != "overall" else name
        lines.append(f"| {shown} | " + " | ".join(fmt(r.get(s)) for s in stats) + " |")
    notes = []
    if small:
        left_out = "left out of the headline gaps" if result.excluded_groups else "included in the gaps"
        notes.append(f"{SMALL_MARK} fewer than {result.min_group_size} rows: {left_out}.")
    if result.rows_without_group:
        notes.append(
            f"Rows without a group (missing attribute): {result.rows_without_group}, counted in overall only."
        )
    return "\n".join(lines + ([""] + notes if notes else []))


def gap_table(result: GroupResult) -> str:
    """Markdown table of a grouping's gaps with their bootstrap intervals, then the groups they span."""
    head = f"{int(round(result.confidence * 100))}% interval"
    if result.intervals:
        head += f" ({result.interval_method})"
    lines = [f"| gap | value | {head} |", "|---|---|---|"]
    for name in [g for g in HEADLINE_GAPS if g in result.gaps]:
        lo_hi = result.intervals.get(name)
        ci = f"[{fmt(lo_hi[0])}, {fmt(lo_hi[1])}]" if lo_hi else fmt(None)
        lines.append(f"| {name} | {fmt(result.gaps[name])} | {ci} |")
    return "\n".join([*lines, "", gap_scope(result)])


def gap_scope(result: GroupResult) -> str:
    """One sentence: which groups the gaps span, and which (small) groups were left out of them."""
    spanned = result.gap_groups
    if result.excluded_groups:
        return (
            f"Gaps over the {len(spanned)} group(s) with at least {result.min_group_size} rows; left out: "
            f"{', '.join(result.excluded_groups)} (gaps_over: all includes them)."
        )
    if result.small_groups:
        return f"Gaps over all {len(spanned)} groups (gaps_over: all), small ones included."
    return f"Gaps over all {len(spanned)} groups."


def result_section(title: str, result: GroupResult, warning_prefix: str = "> warning: ") -> list[str]:
    """Markdown lines of one result: a heading, the group and gap tables, then its warnings."""
    lines = [title, "", group_table(result), "", gap_table(result), ""]
    lines += [f"{warning_prefix}{w}" for w in result.warnings]
    return lines + ([""] if result.warnings else [])


def render_markdown(splits: dict[str, dict[str, GroupResult]], run: dict[str, Any] | None = None) -> str:
    """The whole report: the run facts, then one section per split (validation, test, ...) and grouping."""
    out = ["# Fairness report", ""]
    if run:
        out += [f"- {k}: `{v}`" for k, v in run.items()] + [""]
    for split, groupings in splits.items():
        for name, result in groupings.items():
            out += result_section(f"## {split}: {name}", result)
    return "\n".join(out)


def write_report(
    splits: dict[str, dict[str, GroupResult]], output_dir: str, run: dict[str, Any] | None = None
) -> dict:
    """Write ``fairness_report.json`` and ``fairness_report.md`` to ``output_dir``; return the JSON report.

    Args:
        splits: ``{split name: {grouping: GroupResult}}``.
        run: a few facts about the run (model, data, method) shown at the top.
    """
    report = {
        "run": run or {},
        "splits": {
            split: {name: result.to_dict() for name, result in groupings.items()}
            for split, groupings in splits.items()
        },
    }
    write_json_and_markdown(output_dir, REPORT_JSON, report, REPORT_MD, render_markdown(splits, run))
    return report


def write_json_and_markdown(
    output_dir: str, json_name: str, payload: Any, markdown_name: str, markdown: str
) -> list[str]:
    """Write ``payload`` as JSON (NaN kept as NaN) and ``markdown`` beside it in ``output_dir`` (made when
    missing); returns the two paths. The fairness, data-audit, explanation and LM reports share it."""
    os.makedirs(output_dir, exist_ok=True)
    paths = [os.path.join(output_dir, json_name), os.path.join(output_dir, markdown_name)]
    with open(paths[0], "w") as f:
        json.dump(payload, f, indent=2, allow_nan=True)
        f.write("\n")
    with open(paths[1], "w") as f:
        f.write(markdown)
    return paths
