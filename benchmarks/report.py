"""Tables and Pareto plots from benchmark results (the JSONL files ``benchmarks/run.py`` appends to).

    python benchmarks/report.py [--results benchmarks/results/cpu_tabular.jsonl ...] [--out DIR]

Per dataset: a Markdown table of every configuration (method + hyper-parameters) with mean +/- std over
seeds, and two PNGs, accuracy against demographic-parity difference and against equalized-odds difference,
every configuration a point (error bars over seeds), the Pareto front (no other point has both higher
accuracy and a smaller gap) drawn and its points ringed.

A causal-LM dataset (rows with stereotype scores, from an ``lm`` suite) gets its own table: CrowS-Pairs,
StereoSet and perplexity per configuration, each one's change against the untrained ``pretrained`` row
(how much closer to 50 CrowS-Pairs and SS moved, LMS in points, perplexity in percent), and one PNG,
``lm_<dataset>.png``: CrowS-Pairs against SS per configuration (50, 50 is unbiased) beside perplexity.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
METRICS = (
    "accuracy",
    "demographic_parity_difference",
    "equalized_odds_difference",
    "equalized_odds_sum",
    "worst_group_accuracy",
)
SHORT = {
    "accuracy": "accuracy",
    "demographic_parity_difference": "DP diff",
    "equalized_odds_difference": "EO diff",
    "equalized_odds_sum": "EO sum (FFB's EOdd)",
    "worst_group_accuracy": "worst-group acc",
}


# Causal-LM columns; {b} is the suite's bias type (gender) or "overall".
LM_METRICS = (
    "crows_pairs/{b}/pct_stereotype",
    "crows_pairs/{b}/pct_stereotype_normalized",
    "stereoset/{b}/ss",
    "stereoset/{b}/lms",
    "stereoset/{b}/icat",
    "perplexity",
)
LM_SHORT = ("CrowS", "CrowS (normalised)", "SS", "LMS", "ICAT", "perplexity")
PRETRAINED = "pretrained"


ROW_KEYS = ("dataset", "method", "params", "seed", "wall_time_s")


def load_rows(paths: list[str]) -> list[dict[str, Any]]:
    """Every row of the results files; a missing or empty file, a line that is not a JSON object or a row
    without the runner's keys stops the report with a message naming the file and line."""
    rows = []
    for path in paths:
        if not os.path.isfile(path):
            raise SystemExit(f"report.py: results file {path} does not exist; run benchmarks/run.py first.")
        with open(path) as f:
            found = [(n, line) for n, line in enumerate(f, 1) if line.strip()]
        if not found:
            raise SystemExit(f"report.py: results file {path} holds no rows.")
        for n, line in found:
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise SystemExit(f"report.py: {path} line {n} is not JSON ({err.msg}).") from None
            missing = [k for k in ROW_KEYS if k not in row] if isinstance(row, dict) else list(ROW_KEYS)
            if missing:
                keys = ", ".join(missing)
                raise SystemExit(f"report.py: {path} line {n} is not a run.py row (missing {keys}).")
            rows.append(row)
    return rows


def load_references(path: str | None) -> dict[str, Any]:
    """Published rows by dataset (``--reference``); none when the path is empty."""
    if not path:
        return {}
    if not os.path.isfile(path):
        raise SystemExit(f"report.py: reference file {path} does not exist (--reference '' for none).")
    with open(path) as f:
        try:
            references = json.load(f)
        except json.JSONDecodeError as err:
            raise SystemExit(f"report.py: reference file {path} is not JSON ({err}).") from None
    if not isinstance(references, dict):
        raise SystemExit(f"report.py: reference file {path} must map dataset names to published rows.")
    return references


def label(row: dict[str, Any]) -> str:
    """Method plus its swept / non-default parameters, e.g. ``demographic_parity (penalty_weight=0.3)``."""
    # Keys that only say which method family a row is (its name says that already) are not shown.
    family = ("penalty", "reweighting", "adversary", "counterfactual_augmentation")
    shown = {k: v for k, v in row["params"].items() if k not in family}
    if not shown:
        return row["method"]
    return f"{row['method']} (" + ", ".join(f"{k}={v}" for k, v in sorted(shown.items())) + ")"


def is_lm(configs: dict[str, dict[str, Any]]) -> bool:
    """Whether `summarise` found stereotype scores in this dataset's rows (it then names the bias type)."""
    return any("bias_type" in c for c in configs.values())


def bias_type(rows: list[dict[str, Any]]) -> str:
    """The one bias type an LM suite scored (``gender``), or ``overall`` when it scored several or none."""
    types = {k.split("/")[1] for r in rows for k in r if k.startswith("crows_pairs/")} - {"overall"}
    return types.pop() if len(types) == 1 else "overall"


def summarise(rows: list[dict[str, Any]]) -> dict[str, dict[str, dict[str, Any]]]:
    """dataset -> configuration label -> {metric: (mean, std), seeds, wall_time_s}; an LM dataset's
    entries hold `LM_METRICS` (bias type filled in, also under ``bias_type``) instead of `METRICS`."""
    groups: dict[str, dict[str, list[dict[str, Any]]]] = defaultdict(lambda: defaultdict(list))
    for row in rows:
        groups[row["dataset"]][label(row)].append(row)
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for dataset, configs in groups.items():
        out[dataset] = {}
        every = [r for runs in configs.values() for r in runs]
        lm = any(k.startswith("crows_pairs/") or k == "perplexity" for r in every for k in r)
        bias = bias_type(every)
        metrics = [m.format(b=bias) for m in LM_METRICS] if lm else list(METRICS)
        for name, runs in configs.items():
            entry: dict[str, Any] = {"seeds": len(runs), "method": runs[0]["method"]}
            if lm:
                entry["bias_type"] = bias
            for metric in metrics:
                values = [r[metric] for r in runs if metric in r and not math.isnan(r[metric])]
                mean = statistics.fmean(values) if values else math.nan
                std = statistics.stdev(values) if len(values) > 1 else 0.0
                entry[metric] = (mean, std)
            entry["wall_time_s"] = statistics.fmean(r["wall_time_s"] for r in runs)
            out[dataset][name] = entry
    return out


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of points (gap, accuracy) not dominated by another (smaller-or-equal gap and
    larger-or-equal accuracy, one strictly)."""
    front = []
    for i, (gap, acc) in enumerate(points):
        dominated = any(
            (g <= gap and a >= acc) and (g < gap or a > acc) for j, (g, a) in enumerate(points) if j != i
        )
        if not dominated and not (math.isnan(gap) or math.isnan(acc)):
            front.append(i)
    return sorted(front, key=lambda i: points[i][0])


def markdown(dataset: str, configs: dict[str, dict[str, Any]], reference: dict[str, Any] | None) -> str:
    head = "| configuration | seeds | " + " | ".join(SHORT[m] for m in METRICS) + " | wall time |"
    lines = [f"### {dataset}", "", head, "|" + "---|" * (len(METRICS) + 3)]
    order = sorted(configs, key=lambda n: (configs[n]["method"] != "erm", n))
    for name in order:
        c = configs[name]
        cells = [f"{c[m][0]:.3f} ± {c[m][1]:.3f}" for m in METRICS]
        lines.append(f"| {name} | {c['seeds']} | " + " | ".join(cells) + f" | {c['wall_time_s']:.1f} s |")
    if reference:
        cells = [f"{reference[m]:.3f}" if m in reference else "–" for m in METRICS]
        lines.append(f"| {reference['name']} | – | " + " | ".join(cells) + " | – |")
    return "\n".join(lines)


def lm_changes(scores: dict[str, Any], base: dict[str, Any], bias: str) -> list[str]:
    """Table cells of the change of ``scores`` against ``base`` (flat metric -> value): points CrowS-Pairs
    and SS moved toward 50 (positive = less stereotyped), LMS in points, perplexity in percent; "–" where
    either lacks the score."""

    def get(values: dict[str, Any], key: str) -> float:
        return float(values.get(key.format(b=bias), math.nan))

    def toward_50(key: str) -> float:
        return abs(get(base, key) - 50) - abs(get(scores, key) - 50)

    changes = (
        (toward_50("crows_pairs/{b}/pct_stereotype"), "{:+.2f}"),
        (toward_50("stereoset/{b}/ss"), "{:+.2f}"),
        (get(scores, "stereoset/{b}/lms") - get(base, "stereoset/{b}/lms"), "{:+.2f}"),
        (100 * (get(scores, "perplexity") / get(base, "perplexity") - 1), "{:+.1f}%"),
    )
    return ["–" if math.isnan(value) else form.format(value) for value, form in changes]


def lm_markdown(dataset: str, configs: dict[str, dict[str, Any]], references: list[dict[str, Any]]) -> str:
    """The LM table: scores (mean ± std over seeds) and each configuration's change against ``pretrained``;
    published rows (other models) below, their changes against the first of them."""
    bias = next(iter(configs.values()))["bias_type"]
    metrics = [m.format(b=bias) for m in LM_METRICS]
    changes = ("CrowS → 50", "SS → 50", "Δ LMS", "Δ perplexity")
    head = f"| configuration ({bias}) | seeds | " + " | ".join((*LM_SHORT, *changes)) + " | wall time |"
    lines = [f"### {dataset}", "", head, "|" + "---|" * (len(metrics) + len(changes) + 3)]
    means = {name: {m: c[m][0] for m in metrics} for name, c in configs.items()}
    base = means.get(PRETRAINED)
    order = sorted(configs, key=lambda n: (n != PRETRAINED, configs[n]["method"] != "none", n))
    for name in order:
        c = configs[name]
        cells = [f"{c[m][0]:.2f} ± {c[m][1]:.2f}" if c["seeds"] > 1 else f"{c[m][0]:.2f}" for m in metrics]
        unchanged = base is None or name == PRETRAINED
        cells += ["–"] * len(changes) if unchanged else lm_changes(means[name], base, bias)
        lines.append(f"| {name} | {c['seeds']} | " + " | ".join(cells) + f" | {c['wall_time_s']:.0f} s |")
    for i, ref in enumerate(references):
        cells = [f"{ref[m]:.2f}" if m in ref else "–" for m in metrics]
        cells += lm_changes(ref, references[0], bias) if i else ["–"] * len(changes)
        lines.append(f"| {ref['name']} | – | " + " | ".join(cells) + " | – |")
    return "\n".join(lines)


def lm_plot(dataset: str, configs: dict[str, dict[str, Any]], path: str) -> str:
    """CrowS-Pairs against SS per configuration (error bars over seeds; 50, 50 unbiased) beside perplexity."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    bias = next(iter(configs.values()))["bias_type"]
    crows, ss = f"crows_pairs/{bias}/pct_stereotype", f"stereoset/{bias}/ss"
    names = sorted(configs, key=lambda n: (n != PRETRAINED, n))
    colours = {n: plt.get_cmap("tab10")(i % 10) for i, n in enumerate(names)}
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.8), gridspec_kw={"width_ratios": [3, 2]})
    for n in names:
        c = configs[n]
        marker = "s" if n == PRETRAINED else "o"
        left.errorbar(
            c[crows][0], c[ss][0], xerr=c[crows][1], yerr=c[ss][1], fmt=marker, color=colours[n], label=n
        )
    left.scatter([50], [50], marker="*", s=200, color="black", label="unbiased (50, 50)")
    left.set_xlabel(f"CrowS-Pairs {bias} pct_stereotype")
    left.set_ylabel(f"StereoSet {bias} SS")
    left.set_title(f"{dataset}: stereotype scores (mean ± std over seeds)")
    left.legend(fontsize="small", loc="best")
    means = [configs[n]["perplexity"][0] for n in names]
    stds = [configs[n]["perplexity"][1] for n in names]
    right.bar(range(len(names)), means, yerr=stds, color=[colours[n] for n in names])
    right.set_xticks(range(len(names)), names, rotation=30, ha="right")
    right.set_ylabel("held-out perplexity")
    right.set_title("language-model cost")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot(dataset: str, configs: dict[str, dict[str, Any]], gap: str, path: str) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(configs)
    points = [(configs[n][gap][0], configs[n]["accuracy"][0]) for n in names]
    methods = sorted({configs[n]["method"] for n in names})
    colours = {m: plt.get_cmap("tab20")(i % 20) for i, m in enumerate(methods)}
    fig, ax = plt.subplots(figsize=(8, 5.5))
    for n, (x, y) in zip(names, points, strict=True):
        c = configs[n]
        ax.errorbar(
            x, y, xerr=c[gap][1], yerr=c["accuracy"][1], fmt="o", color=colours[c["method"]], alpha=0.85
        )
    for m in methods:
        ax.scatter([], [], color=colours[m], label=m)
    front = pareto_front(points)
    xs, ys = [points[i][0] for i in front], [points[i][1] for i in front]
    ax.plot(xs, ys, "--", color="black", lw=1, label="Pareto front")
    ax.scatter(xs, ys, s=160, facecolors="none", edgecolors="black")
    ax.set_xlabel(f"{SHORT[gap]} (lower is fairer)")
    ax.set_ylabel("accuracy")
    ax.set_title(f"{dataset}: accuracy vs {SHORT[gap]} (mean ± std over seeds)")
    ax.legend(fontsize="small", loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False
    )
    parser.add_argument("--results", nargs="+", default=None, help="default: benchmarks/results/*.jsonl")
    parser.add_argument("--out", default=None, help="default: the folder of the first results file")
    parser.add_argument(
        "--reference",
        default=str(REPO / "benchmarks" / "published.json"),
        help="published rows to show beside ours (JSON: dataset -> {name, metric: value}); '' for none",
    )
    opts = parser.parse_args(argv)
    paths = opts.results or sorted(str(p) for p in (REPO / "benchmarks" / "results").glob("*.jsonl"))
    if not paths:
        raise SystemExit("no results files; run benchmarks/run.py first")
    out = opts.out or os.path.dirname(os.path.abspath(paths[0]))
    references = load_references(opts.reference)
    summary = summarise(load_rows(paths))  # both checked before anything is written
    os.makedirs(out, exist_ok=True)
    sections = []
    for dataset, configs in summary.items():
        if is_lm(configs):
            refs = references.get(dataset, [])
            sections.append(lm_markdown(dataset, configs, refs if isinstance(refs, list) else [refs]))
            lm_plot(dataset, configs, os.path.join(out, f"lm_{dataset}.png"))
            continue
        sections.append(markdown(dataset, configs, references.get(dataset)))
        for gap, tag in (("demographic_parity_difference", "dp"), ("equalized_odds_difference", "eo")):
            plot(dataset, configs, gap, os.path.join(out, f"pareto_{dataset}_{tag}.png"))
    text = "\n\n".join(sections) + "\n"
    with open(os.path.join(out, "summary.md"), "w") as f:
        f.write(text)
    print(text)


if __name__ == "__main__":
    main()
