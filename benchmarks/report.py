"""Tables and Pareto plots from benchmark results (the JSONL files ``benchmarks/run.py`` appends to).

    python benchmarks/report.py [--results benchmarks/results/cpu_tabular.jsonl ...] [--out DIR]

Per dataset: a Markdown table of every configuration (method + hyper-parameters) with mean +/- std over
seeds, and two PNGs, accuracy against demographic-parity difference and against equalized-odds difference,
every configuration a point (error bars over seeds), the Pareto front (no other point has both higher
accuracy and a smaller gap) drawn and its points ringed.
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


def load_rows(paths: list[str]) -> list[dict[str, Any]]:
    rows = []
    for path in paths:
        with open(path) as f:
            rows += [json.loads(line) for line in f if line.strip()]
    return rows


def label(row: dict[str, Any]) -> str:
    """Method plus its swept / non-default parameters, e.g. ``demographic_parity (penalty_weight=0.3)``."""
    shown = {k: v for k, v in row["params"].items() if k not in ("penalty", "reweighting", "adversary")}
    if not shown:
        return row["method"]
    return f"{row['method']} (" + ", ".join(f"{k}={v}" for k, v in sorted(shown.items())) + ")"


def summarise(rows: list[dict[str, Any]]) -> dict[str, dict[str, dict[str, Any]]]:
    """dataset -> configuration label -> {metric: (mean, std), seeds, wall_time_s}."""
    groups: dict[str, dict[str, list[dict[str, Any]]]] = defaultdict(lambda: defaultdict(list))
    for row in rows:
        groups[row["dataset"]][label(row)].append(row)
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for dataset, configs in groups.items():
        out[dataset] = {}
        for name, runs in configs.items():
            entry: dict[str, Any] = {"seeds": len(runs), "method": runs[0]["method"]}
            for metric in METRICS:
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
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--results", nargs="+", default=None, help="default: benchmarks/results/*.jsonl")
    parser.add_argument("--out", default=None, help="default: the folder of the first results file")
    parser.add_argument(
        "--reference",
        default=str(REPO / "benchmarks" / "published.json"),
        help="published rows to show beside ours (JSON: dataset -> {name, metric: value})",
    )
    opts = parser.parse_args(argv)
    paths = opts.results or sorted(str(p) for p in (REPO / "benchmarks" / "results").glob("*.jsonl"))
    if not paths:
        raise SystemExit("no results files; run benchmarks/run.py first")
    out = opts.out or os.path.dirname(os.path.abspath(paths[0]))
    os.makedirs(out, exist_ok=True)
    references = {}
    if opts.reference and os.path.isfile(opts.reference):
        with open(opts.reference) as f:
            references = json.load(f)
    summary = summarise(load_rows(paths))
    sections = []
    for dataset, configs in summary.items():
        sections.append(markdown(dataset, configs, references.get(dataset)))
        for gap, tag in (("demographic_parity_difference", "dp"), ("equalized_odds_difference", "eo")):
            plot(dataset, configs, gap, os.path.join(out, f"pareto_{dataset}_{tag}.png"))
    text = "\n\n".join(sections) + "\n"
    with open(os.path.join(out, "summary.md"), "w") as f:
        f.write(text)
    print(text)


if __name__ == "__main__":
    main()
