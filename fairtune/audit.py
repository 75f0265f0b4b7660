"""Dataset audit: who is in the data, how labels differ by group, which cells are too small to trust.

``audit_dataset`` counts every grouping (an attribute or an intersection such as ``sex+race``) of a
``datasets.Dataset``: group counts and shares, the label distribution per group with a Wilson interval on
the base rate, the smallest group x label cells, and, when a reference distribution is given (e.g. census
shares), how far the data's shares lie from it. ``write_audit`` saves it as JSON and Markdown, and the PNGs
that ``fairtune.plots.plot_audit`` draws; this module itself only counts.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

from fairtune.curves import fmt, wilson_interval
from fairtune.groups import (
    ERR_MISSING_COLUMN,
    INTERSECTION_SEPARATOR,
    VALUE_SEPARATOR,
    is_missing,
    parse_grouping,
)

AUDIT_JSON = "data_audit.json"
AUDIT_MD = "data_audit.md"
MISSING = "<missing>"
SMALLEST_CELLS = 5

ERR_EMPTY = "Cannot audit an empty dataset: the {split} split has no rows."
ERR_NO_GROUPINGS = "Name at least one attribute to audit (e.g. group_by='sex')."
ERR_REFERENCE_KEY = "reference names grouping {name!r}, which is not audited; audited groupings: {valid}."
ERR_REFERENCE_SHARES = (
    "reference shares of {name!r} must be non-negative and sum to 1 (within 0.01); got sum {total:.4f}."
)
ERR_CONFIDENCE = "confidence must lie in (0, 1); got {confidence}."
WARN_SMALL_CELL = "cell {group!r} x label {label!r} has {count} rows, fewer than min_cell_size={min_size}"
WARN_SMALL_GROUP = "group {group!r} has {count} rows, fewer than min_cell_size={min_size}"
WARN_MISSING = "column(s) {columns} have {count} missing value(s), audited as group {missing!r}"
WARN_ABSENT = "group {group!r} is in the reference ({share:.3f}) but absent from the data"


def _encode_labels(dataset: Any, label_column: str) -> tuple[list[str], list[int | None]]:
    """Label names and each row's label index (None when missing), for ids, ``ClassLabel`` or names."""
    import datasets

    raw = list(dataset[label_column])
    feature = dataset.features[label_column]
    if isinstance(feature, datasets.ClassLabel):
        return list(feature.names), [None if is_missing(v) else int(v) for v in raw]
    values = sorted({v for v in raw if not is_missing(v)})  # numeric order for ids, alphabetical for names
    index = {v: i for i, v in enumerate(values)}
    return [str(v) for v in values], [None if is_missing(v) else index[v] for v in raw]


def audit_dataset(
    dataset: Any,
    groupings: Sequence[str],
    label_column: str = "label",
    reference: dict[str, dict[str, float]] | None = None,
    min_cell_size: int = 30,
    confidence: float = 0.95,
    split: str = "training",
    proxies: bool = True,
    text_column: str | None = None,
    identity_terms: Sequence[str] = (),
) -> dict[str, Any]:
    """Audit group representation and label base rates of ``dataset``, and the columns (and words of
    ``text_column``) that stand in for each audited attribute.

    Args:
        groupings: attributes or intersections, e.g. ``["sex", "race", "sex+race"]``.
        label_column: class ids (a ``ClassLabel`` gives names) or class names.
        reference: ``{grouping: {group: expected share}}``, e.g. population shares to compare with.
        min_cell_size: warn about groups and group x label cells with fewer rows.
        confidence: coverage of the Wilson intervals on the base rates.
        proxies: rank the other columns by how well each predicts each attribute (``fairtune.proxies``).
        text_column: a text column whose words are scored per group (with ``proxies``).
        identity_terms: words that name a group (e.g. the counterfactual word lists), marked in the word
            ranking.

    Returns a JSON-able dict: ``rows``, ``labels``, ``label_counts``, ``positive_label`` (binary: the
    second label, whose share is the base rate), per grouping ``groups`` (count, share, label_counts,
    base_rate with interval), ``smallest_cells``, ``base_rate_gap``, ``reference`` and ``warnings``, and
    ``proxies`` (``fairtune.proxies.detect_proxies``) per attribute.
    """
    if not 0 < confidence < 1:
        raise ValueError(ERR_CONFIDENCE.format(confidence=confidence))
    if not groupings:
        raise ValueError(ERR_NO_GROUPINGS)
    if len(dataset) == 0:
        raise ValueError(ERR_EMPTY.format(split=split))
    specs = {INTERSECTION_SEPARATOR.join(parse_grouping(g)): parse_grouping(g) for g in groupings}
    needed = [label_column, *dict.fromkeys(a for attrs in specs.values() for a in attrs)]
    if text_column is not None:
        needed.append(text_column)
    for column in needed:
        if column not in dataset.column_names:
            what = {label_column: "label_column", text_column: "text_column"}.get(
                column, "the audited groupings"
            )
            raise ValueError(
                ERR_MISSING_COLUMN.format(split=split, column=column, what=what, columns=dataset.column_names)
            )
    for name in reference or {}:
        if name not in specs:
            raise ValueError(ERR_REFERENCE_KEY.format(name=name, valid=", ".join(specs)))

    labels, ys = _encode_labels(dataset, label_column)
    attributes = list(dict.fromkeys(a for attrs in specs.values() for a in attrs))
    columns = {a: list(dataset[a]) for a in attributes}
    binary = len(labels) == 2
    audit: dict[str, Any] = {
        "split": split,
        "rows": len(dataset),
        "labels": labels,
        "label_counts": [ys.count(i) for i in range(len(labels))],
        "positive_label": labels[1] if binary else None,
        "confidence": confidence,
        "min_cell_size": min_cell_size,
        "groupings": {},
    }
    for name, attrs in specs.items():
        audit["groupings"][name] = _audit_grouping(
            [columns[a] for a in attrs],
            attrs,
            ys,
            labels,
            (reference or {}).get(name),
            min_cell_size,
            confidence,
        )
    if proxies:
        from fairtune.proxies import NOT_INPUTS, detect_proxies

        inputs = {
            c: columns[c] if c in columns else list(dataset[c])
            for c in dataset.column_names
            if c not in NOT_INPUTS
        }
        # An attribute with one value has nothing to stand in for; its audit says so elsewhere.
        present = [a for a in attributes if len({str(v) for v in columns[a] if not is_missing(v)}) > 1]
        audit["proxies"] = detect_proxies(
            inputs, present, text_column, exclude=[label_column], identity_terms=identity_terms
        )
    return audit


def _audit_grouping(
    values: list[list[Any]],
    attrs: tuple[str, ...],
    ys: list[int | None],
    labels: list[str],
    reference: dict[str, float] | None,
    min_size: int,
    confidence: float,
) -> dict[str, Any]:
    missing = 0
    keys = []
    for row in zip(*values, strict=True):
        if any(is_missing(v) for v in row):
            missing += 1
            keys.append(MISSING)
        else:
            keys.append(VALUE_SEPARATOR.join(str(v) for v in row))
    n = len(keys)
    cells = Counter(zip(keys, ys, strict=True))
    sizes = Counter(keys)
    warnings = []
    if missing:
        warnings.append(WARN_MISSING.format(columns=", ".join(attrs), count=missing, missing=MISSING))
    groups: dict[str, Any] = {}
    for group in sorted(sizes):
        count = sizes[group]
        label_counts = [cells[(group, i)] for i in range(len(labels))]
        entry: dict[str, Any] = {"count": count, "share": count / n, "label_counts": label_counts}
        if len(labels) == 2:
            entry["base_rate"] = label_counts[1] / count
            entry["base_rate_interval"] = list(wilson_interval(label_counts[1], count, confidence))
        else:
            entry["label_shares"] = [c / count for c in label_counts]
        groups[group] = entry
        if count < min_size:
            warnings.append(WARN_SMALL_GROUP.format(group=group, count=count, min_size=min_size))
        else:
            for i, c in enumerate(label_counts):
                if c < min_size:
                    warnings.append(
                        WARN_SMALL_CELL.format(group=group, label=labels[i], count=c, min_size=min_size)
                    )
    cells_list = [
        {"group": g, "label": labels[i], "count": groups[g]["label_counts"][i]}
        for g in groups
        for i in range(len(labels))
    ]
    smallest = sorted(cells_list, key=lambda c: (c["count"], c["group"], c["label"]))[:SMALLEST_CELLS]
    rates = [g["base_rate"] for g in groups.values() if "base_rate" in g]
    result = {
        "groups": groups,
        "smallest_cells": smallest,
        "base_rate_gap": (max(rates) - min(rates)) if len(rates) >= 2 else None,
        "warnings": warnings,
    }
    if reference is not None:
        result["reference"] = _compare_reference(groups, reference, warnings, attrs)
    return result


def _compare_reference(
    groups: dict[str, Any], reference: dict[str, float], warnings: list[str], attrs: tuple[str, ...]
) -> dict[str, Any]:
    total = sum(reference.values())
    if any(v < 0 for v in reference.values()) or abs(total - 1) > 0.01:
        raise ValueError(ERR_REFERENCE_SHARES.format(name=INTERSECTION_SEPARATOR.join(attrs), total=total))
    by_group = {}
    for group in sorted(set(groups) | set(reference)):
        observed = groups[group]["share"] if group in groups else 0.0
        expected = reference.get(group)
        if expected is not None and group not in groups:
            warnings.append(WARN_ABSENT.format(group=group, share=expected))
        by_group[group] = {
            "observed_share": observed,
            "expected_share": expected,
            "ratio": observed / expected if expected else None,
        }
    compared = [v for v in by_group.values() if v["expected_share"] is not None]
    distance = 0.5 * sum(abs(v["observed_share"] - v["expected_share"]) for v in compared)
    return {"by_group": by_group, "total_variation_distance": distance}


def proxy_options(dataset: Any, data_args: Any) -> dict[str, Any]:
    """``audit_dataset``'s text options for a config's data: its text column when the dataset has one, and
    the terms of its counterfactual word lists as identity terms."""
    from fairtune.data.loading import word_pairs

    column = data_args.text_column
    default = type(data_args).__dataclass_fields__["text_column"].default
    if column not in dataset.column_names and column != default:
        # A text column named on purpose must exist; the default ("text") is simply absent from tabular data.
        raise ValueError(
            ERR_MISSING_COLUMN.format(
                split="audited", column=column, what="text_column", columns=dataset.column_names
            )
        )
    text = column if column in dataset.column_names else None
    pairs = word_pairs(list(data_args.counterfactual_word_lists)) if text else None
    return {"text_column": text, "identity_terms": list(pairs.mapping) if pairs is not None else []}


# ----- output ------------------------------------------------------------------------------------------
def audit_table(audit: dict[str, Any], grouping: str, label_counts: bool = True) -> str:
    """Markdown table of one grouping: rows and share per group, optionally the count of each label, and
    (binary labels) the base rate with its Wilson interval."""
    binary = audit["positive_label"] is not None
    level = int(round(audit["confidence"] * 100))
    head = "| group | count | share |"
    if label_counts:
        head += "".join(f" n({lab}) |" for lab in audit["labels"])
    if binary:
        head += f" base rate P({audit['positive_label']}) | {level}% interval |"
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for group, e in audit["groupings"][grouping]["groups"].items():
        row = f"| {group} | {e['count']} | {e['share']:.3f} |"
        if label_counts:
            row += "".join(f" {c} |" for c in e["label_counts"])
        if binary:
            lo, hi = e["base_rate_interval"]
            row += f" {e['base_rate']:.3f} | [{lo:.3f}, {hi:.3f}] |"
        lines.append(row)
    return "\n".join(lines)


def render_audit_markdown(audit: dict[str, Any]) -> str:
    """The audit as Markdown: one section per grouping."""
    lines = [
        f"# Data audit ({audit['split']} split, {audit['rows']} rows)",
        "",
        "Labels: "
        + ", ".join(f"`{a}` {c}" for a, c in zip(audit["labels"], audit["label_counts"], strict=True)),
        "",
    ]
    for name, g in audit["groupings"].items():
        lines += [f"## {name}", "", audit_table(audit, name), ""]
        if g["base_rate_gap"] is not None:
            lines += [f"Base-rate gap (max − min): {g['base_rate_gap']:.3f}", ""]
        cells = ", ".join(f"{c['group']} × {c['label']}: {c['count']}" for c in g["smallest_cells"])
        lines += [f"Smallest cells: {cells}", ""]
        if "reference" in g:
            ref = g["reference"]
            lines += ["| group | observed share | reference share | ratio |", "|---|---|---|---|"]
            for group, r in ref["by_group"].items():
                expected, ratio = fmt(r["expected_share"]), fmt(r["ratio"])
                lines.append(f"| {group} | {r['observed_share']:.3f} | {expected} | {ratio} |")
            lines += [
                "",
                f"Total variation distance from the reference: {ref['total_variation_distance']:.3f}",
                "",
            ]
        lines += [f"> warning: {w}" for w in g["warnings"]]
        if g["warnings"]:
            lines.append("")
    for attribute, p in audit.get("proxies", {}).items():
        lines += proxy_markdown(attribute, p)
    return "\n".join(lines)


def proxy_markdown(attribute: str, proxies: dict[str, Any], top: int = 8) -> list[str]:
    """Markdown lines for the proxies of one attribute: the strongest columns and each group's words."""
    lines = [
        f"## Proxies of `{attribute}`",
        "",
        f"How well each column alone predicts `{attribute}` ({proxies['rows']} rows with a value): AUC of a "
        "one-column model (0.5 = no information, 1 = identifies the group); NMI = normalised mutual "
        "information (categorical columns).",
        "",
        "| column | kind | AUC | NMI |",
        "|---|---|---|---|",
    ]
    for c in proxies["columns"][:top]:
        lines.append(f"| {c['column']} | {c['kind']} | {fmt(c['auc'])} | {fmt(c.get('nmi'))} |")
    if len(proxies["columns"]) > top:
        rest = ", ".join(f"{c['column']} {fmt(c['auc'])}" for c in proxies["columns"][top:])
        lines += ["", f"Other columns: {rest}."]
    lines.append("")
    if proxies.get("tokens"):
        lines += [
            f"Words of `{proxies['text_column']}` most associated with each group (log-odds z-score against "
            "the other groups; * a term of the counterfactual word lists, which names the group):",
            "",
        ]
        for group, tokens in proxies["tokens"].items():
            shown = ", ".join(
                f"{t['token']}{'*' if t['identity_term'] else ''} ({t['z']:.1f})" for t in tokens
            )
            lines.append(f"- {group}: {shown or '(none)'}")
        lines.append("")
    return lines


def write_audit(audit: dict[str, Any], output_dir: str) -> list[str]:
    """Write ``data_audit.json``, ``data_audit.md`` and one PNG per grouping (drawn by
    ``fairtune.plots.plot_audit``); returns the paths."""
    from fairtune.plots import plot_audit  # matplotlib only when files are written
    from fairtune.report import write_json_and_markdown

    paths = write_json_and_markdown(output_dir, AUDIT_JSON, audit, AUDIT_MD, render_audit_markdown(audit))
    return paths + plot_audit(audit, output_dir)
