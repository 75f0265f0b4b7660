"""Fairness reports: ``fairness_report.json`` and a Markdown rendering of the same numbers."""

from __future__ import annotations

import json
import math
import os
from typing import Any

REPORT_JSON = "fairness_report.json"
REPORT_MD = "fairness_report.md"

# Per-group columns shown in tables, in order; a column is shown when any group has it.
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
HEADLINE_GAPS = [
    "demographic_parity_difference",
    "demographic_parity_ratio",
    "equalized_odds_difference",
    "equal_opportunity_difference",
    "accuracy_difference",
    "worst_group_accuracy",
    "tpr_gap_rms",
]


def _fmt(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, int) or (isinstance(value, float) and value.is_integer() and abs(value) >= 1):
        return str(int(value))
    return f"{value:.3f}"


def group_table(result: dict[str, Any]) -> str:
    """Markdown table of one grouping: one row per group plus ``overall``."""
    rows = {**result["by_group"], "overall": result["overall"]}
    stats = [s for s in TABLE_STATS if any(s in r for r in rows.values())]
    stats += sorted({k for r in rows.values() for k in r if k.startswith("tpr_")})  # multi-class recalls
    lines = ["| group | " + " | ".join(stats) + " |", "|---" * (len(stats) + 1) + "|"]
    for name, r in rows.items():
        lines.append(f"| {name} | " + " | ".join(_fmt(r.get(s)) for s in stats) + " |")
    return "\n".join(lines)


def gap_table(result: dict[str, Any]) -> str:
    """Markdown table of a grouping's gaps with their bootstrap intervals."""
    intervals = result.get("intervals", {})
    level = result.get("confidence")
    head = f"{int(round(level * 100))}% interval" if level else "interval"
    lines = [f"| gap | value | {head} |", "|---|---|---|"]
    for name in [g for g in HEADLINE_GAPS if g in result["gaps"]]:
        lo_hi = intervals.get(name)
        ci = f"[{_fmt(lo_hi[0])}, {_fmt(lo_hi[1])}]" if lo_hi else "–"
        lines.append(f"| {name} | {_fmt(result['gaps'][name])} | {ci} |")
    return "\n".join(lines)


def render_markdown(report: dict[str, Any]) -> str:
    """The whole report: one section per split (validation, test, ...) and grouping."""
    out = ["# Fairness report", ""]
    meta = report.get("run", {})
    if meta:
        out += [f"- {k}: `{v}`" for k, v in meta.items()] + [""]
    for split, groupings in report["splits"].items():
        for name, result in groupings.items():
            out += [f"## {split}: {name}", "", group_table(result), "", gap_table(result), ""]
            out += [f"> warning: {w}" for w in result.get("warnings", [])]
            if result.get("warnings"):
                out.append("")
    return "\n".join(out)


def write_report(
    splits: dict[str, dict[str, Any]], output_dir: str, run: dict[str, Any] | None = None
) -> dict:
    """Write ``fairness_report.json`` and ``fairness_report.md`` to ``output_dir``; return the report.

    Args:
        splits: ``{split name: {grouping: GroupStats.compute() result}}``.
        run: a few facts about the run (model, data, method) shown at the top.
    """
    report = {"run": run or {}, "splits": splits}
    os.makedirs(output_dir, exist_ok=True)
    with open(os.path.join(output_dir, REPORT_JSON), "w") as f:
        json.dump(report, f, indent=2, allow_nan=True)
    with open(os.path.join(output_dir, REPORT_MD), "w") as f:
        f.write(render_markdown(report))
    return report
