"""Per-group metric throughput: fairtune's `GroupStats` and array functions against fairlearn's `MetricFrame`.

    python benchmarks/metric_throughput.py [--sizes 1000000 10000000] [--groups 16] [--repeats 3]
        [--chunk 65536] [--seed 0] [--threads N]

Both libraries get the same seeded synthetic predictions: binary labels, binary predictions and group ids
with Zipf-like group sizes and group-dependent base and error rates. Timed, per size:

* fairtune streaming: `GroupStats(2, G)` fed `--chunk` rows per `update(..., preds=...)` as an evaluation
  loop would, then `compute(group_names)`;
* fairtune one-shot: the same with one `update` over all rows;
* metric_frame: `fairtune.functional.metric_frame(labels, preds, sensitive_features=groups)`, the array
  function behind `demographic_parity_difference` and friends (group encoding, counts and every gap);
* metric_frame 2 str cols: the same with the groups given as a pandas DataFrame of two string columns
  whose intersection is the G groups (group g is ("a" + g // r, "b" + g % r), r = ceil(sqrt(G)), zero-padded
  so the sorted names keep the ids' order): the intersectional path. MetricFrame is not run on these
  columns; its ratio is to MetricFrame on the ids, the same groups and numbers;
* MetricFrame: `MetricFrame(metrics={selection_rate, accuracy, true_positive_rate, false_positive_rate},
  sensitive_features=groups)`, `.by_group` and `.difference()`; the demographic parity difference is the
  selection rate difference and the equalized odds difference the larger of the TPR and FPR differences,
  which is what `fairlearn.metrics.equalized_odds_difference` computes (worst_case, between_groups).

Data generation and the numpy -> torch conversion (zero-copy) are not timed. Each method runs once untimed
per size; those results are checked for agreement (per-group selection rate, accuracy, TPR, FPR and both
gaps within 1e-9) before anything is timed, and the script exits with status 1 if they differ. The methods
then run round-robin `--repeats` times, so slow drift of the machine hits all of them alike; the table
gives the median wall time (`time.perf_counter`). Run it on an otherwise idle machine: with other processes
busy, torch's intra-op threads wait on each other and small tensor ops slow down by orders of magnitude
(`--threads 1` shows whether that is happening).
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from importlib.metadata import version
from typing import Any

import numpy as np
import pandas as pd
import torch
from fairlearn.metrics import MetricFrame, false_positive_rate, selection_rate, true_positive_rate
from sklearn.metrics import accuracy_score

from fairtune import functional
from fairtune.metrics import GroupResult, GroupStats

TOLERANCE = 1e-9
# fairtune stat -> MetricFrame column.
RATES = {
    "selection_rate": "selection_rate",
    "accuracy": "accuracy",
    "tpr": "true_positive_rate",
    "fpr": "false_positive_rate",
}
GAPS = ("demographic_parity_difference", "equalized_odds_difference")
METRICS: dict[str, Callable[..., float]] = {
    "selection_rate": selection_rate,
    "accuracy": accuracy_score,
    "true_positive_rate": true_positive_rate,
    "false_positive_rate": false_positive_rate,
}
FAIRTUNE = ("fairtune streaming", "fairtune one-shot", "metric_frame", "metric_frame 2 str cols")
METHODS = (*FAIRTUNE, "MetricFrame")
SHORT = {
    "fairtune streaming": "streaming",
    "fairtune one-shot": "one-shot",
    "metric_frame": "metric_frame",
    "metric_frame 2 str cols": "2 str cols",
    "MetricFrame": "MetricFrame",
}
COLUMNS = (
    "rows",
    *METHODS,
    *(f"MetricFrame / {SHORT[m]}" for m in FAIRTUNE),
    *(f"rows/s {SHORT[m]}" for m in METHODS),
)

# {"groups": [id, ...], stat: (G,) array, gap: float}: one library's results in a comparable form.
Values = dict[str, Any]


def make_data(size: int, num_groups: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Labels, predictions, group ids, each (size,) int64, with non-zero gaps and unequal group sizes."""
    rng = np.random.default_rng(seed)
    # Zipf-like sizes: the largest group is `num_groups` times the smallest, as in real demographic splits,
    # so the scatter-add and the group-by both see skewed groups rather than a uniform split.
    weights = 1.0 / np.arange(1, num_groups + 1)
    groups = rng.choice(num_groups, size, p=weights / weights.sum())
    labels = (rng.random(size) < rng.uniform(0.2, 0.8, num_groups)[groups]).astype(np.int64)
    flip = rng.uniform(0.05, 0.35, num_groups)[groups]
    preds = np.where(rng.random(size) < flip, 1 - labels, labels)
    return labels, preds, groups.astype(np.int64)


def fairtune_streaming(
    labels: torch.Tensor, preds: torch.Tensor, groups: torch.Tensor, group_names: list[str], chunk: int
) -> dict:
    """`GroupStats` fed `chunk` rows per update, then computed: the evaluation-loop path."""
    stats = GroupStats(2, len(group_names), bootstrap_samples=0)
    for start in range(0, labels.shape[0], chunk):
        end = start + chunk
        stats.update(labels[start:end], groups[start:end], preds=preds[start:end])
    return stats.compute(group_names)


def fairtune_one_shot(
    labels: torch.Tensor, preds: torch.Tensor, groups: torch.Tensor, group_names: list[str]
) -> dict:
    """`GroupStats` fed every row in one update, then computed."""
    stats = GroupStats(2, len(group_names), bootstrap_samples=0)
    stats.update(labels, groups, preds=preds)
    return stats.compute(group_names)


def fairtune_arrays(labels: np.ndarray, preds: np.ndarray, sensitive_features: Any) -> GroupResult:
    """`fairtune.functional.metric_frame` on numpy arrays: group encoding, counts and gaps in one call."""
    return functional.metric_frame(labels, preds, sensitive_features=sensitive_features)


def string_columns(groups: np.ndarray, num_groups: int) -> tuple[pd.DataFrame, Callable[[str], int]]:
    """The ids as two string columns whose intersection is the groups, and a map from the intersection's
    name ("a01,b02") back to the id. Zero padding keeps the names' sorted order that of the ids."""
    radix = math.isqrt(num_groups - 1) + 1  # ceil(sqrt(G)): r * r >= G
    width = len(str(radix - 1))
    first, second = ([f"{p}{i:0{width}d}" for i in range(radix)] for p in "ab")
    frame = pd.DataFrame({"a": np.array(first)[groups // radix], "b": np.array(second)[groups % radix]})

    def group_id(name: str) -> int:
        a, b = name.split(",")
        return int(a[1:]) * radix + int(b[1:])

    return frame, group_id


def metric_frame(
    labels: np.ndarray, preds: np.ndarray, groups: np.ndarray
) -> tuple[pd.DataFrame, float, float]:
    """(by_group table, demographic parity difference, equalized odds difference) through `MetricFrame`."""
    frame = MetricFrame(metrics=METRICS, y_true=labels, y_pred=preds, sensitive_features=groups)
    by_group = frame.by_group
    diff = frame.difference()  # between_groups: max - min of each metric
    # fairlearn's equalized_odds_difference (worst_case) is max() over its TPR and FPR differences.
    eo = max(diff["true_positive_rate"], diff["false_positive_rate"])
    return by_group, float(diff["selection_rate"]), float(eo)


def fairtune_values(result: GroupResult, group_id: Callable[[str], int] = int) -> Values:
    """Comparable values from a `GroupStats.compute` result; `group_id` maps a group's name to its id."""
    by_group = result.by_group
    values: Values = {"groups": [group_id(name) for name in by_group]}
    for stat in RATES:
        values[stat] = np.array([group[stat] for group in by_group.values()], dtype=np.float64)
    values.update({gap: float(result.gaps[gap]) for gap in GAPS})
    return values


def metric_frame_values(by_group: pd.DataFrame, dp: float, eo: float) -> Values:
    """Comparable values from `metric_frame` output (by_group is indexed by group id)."""
    values: Values = {"groups": [int(g) for g in by_group.index]}
    for stat, column in RATES.items():
        values[stat] = by_group[column].to_numpy(dtype=np.float64)
    values.update({GAPS[0]: dp, GAPS[1]: eo})
    return values


def compare(ours: Values, theirs: Values, tolerance: float = TOLERANCE) -> list[str]:
    """Human-readable disagreements between two `Values` (empty when they agree within `tolerance`)."""
    if ours["groups"] != theirs["groups"]:
        return [f"groups differ: {ours['groups']} vs {theirs['groups']}"]
    problems = []
    for stat in RATES:
        # NaN (fairtune: undefined rate) never compares equal, so a zero-denominator group is reported.
        bad = ~(np.abs(ours[stat] - theirs[stat]) <= tolerance)
        for i in np.flatnonzero(bad):
            problems.append(f"{stat} of group {ours['groups'][i]}: {ours[stat][i]!r} vs {theirs[stat][i]!r}")
    for gap in GAPS:
        if not abs(ours[gap] - theirs[gap]) <= tolerance:
            problems.append(f"{gap}: {ours[gap]!r} vs {theirs[gap]!r}")
    return problems


def time_call(fn: Callable[[], Any]) -> float:
    """Wall time of one call, in seconds (garbage collection left on: it is part of a library's cost)."""
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_line() -> str:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    packages = ("torch", "numpy", "pandas", "scikit-learn", "fairlearn", "fairtune")
    versions = ", ".join(f"{name} {version(name)}" for name in packages)
    return (
        f"{cpu_name()}, {cores} CPU cores available ({os.cpu_count()} total), "
        f"{torch.get_num_threads()} torch threads; Python {platform.python_version()}, {versions}"
    )


def format_table(rows: list[dict[str, float]]) -> str:
    """Markdown table, one line per size, from {"rows": n, method: median seconds} dicts."""
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for row in rows:
        n, frame = row["rows"], row["MetricFrame"]
        cells = [
            f"{n:,}",
            *(f"{row[m] * 1e3:.1f} ms" for m in METHODS),
            *(f"{frame / row[m]:.1f}x" for m in FAIRTUNE),
            *(f"{n / row[m]:,.0f}" for m in METHODS),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def benchmark_size(size: int, opts: argparse.Namespace) -> dict[str, float]:
    """Check agreement on `size` rows, then time every method; {"rows": size, method: median seconds}."""
    labels, preds, groups = make_data(size, opts.groups, opts.seed)
    # from_numpy shares memory: an evaluation loop already holds tensors, so conversion is not timed.
    labels_t, preds_t, groups_t = (torch.from_numpy(a) for a in (labels, preds, groups))
    names = [str(g) for g in range(opts.groups)]
    columns, column_group_id = string_columns(groups, opts.groups)
    calls: dict[str, Callable[[], Any]] = {
        "fairtune streaming": lambda: fairtune_streaming(labels_t, preds_t, groups_t, names, opts.chunk),
        "fairtune one-shot": lambda: fairtune_one_shot(labels_t, preds_t, groups_t, names),
        "metric_frame": lambda: fairtune_arrays(labels, preds, groups),
        "metric_frame 2 str cols": lambda: fairtune_arrays(labels, preds, columns),
        "MetricFrame": lambda: metric_frame(labels, preds, groups),
    }
    group_ids = {name: int for name in FAIRTUNE} | {"metric_frame 2 str cols": column_group_id}

    # The warm-up call of each method doubles as the correctness check, before any timing.
    warm = {name: call() for name, call in calls.items()}
    reference = metric_frame_values(*warm["MetricFrame"])
    problems = [
        f"{name}: {problem}"
        for name in FAIRTUNE
        for problem in compare(fairtune_values(warm[name], group_ids[name]), reference)
    ]
    if problems:
        raise SystemExit(f"{size:,} rows: fairtune and MetricFrame disagree:\n" + "\n".join(problems))

    times: dict[str, list[float]] = {name: [] for name in calls}
    for r in range(opts.repeats):
        for name, call in calls.items():
            times[name].append(time_call(call))
        summary = ", ".join(f"{name} {t[-1] * 1e3:.1f} ms" for name, t in times.items())
        print(f"{size:,} rows, repeat {r + 1}/{opts.repeats}: {summary}", file=sys.stderr, flush=True)
    return {"rows": size, **{name: statistics.median(t) for name, t in times.items()}}


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False
    )
    parser.add_argument("--sizes", type=int, nargs="+", default=[1_000_000, 10_000_000])
    parser.add_argument("--groups", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--chunk", type=int, default=65536, help="rows per GroupStats.update when streaming")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    opts = parser.parse_args(argv)
    for name in ("groups", "repeats", "chunk", "threads"):
        value = getattr(opts, name)
        if value is not None and value < 1:
            parser.error(f"--{name} must be >= 1")
    if min(opts.sizes) < 1:
        parser.error("--sizes must be >= 1")
    return opts


def main(argv: Sequence[str] | None = None) -> int:
    opts = parse_args(argv)
    if opts.threads is not None:
        torch.set_num_threads(opts.threads)
    rows = [benchmark_size(size, opts) for size in opts.sizes]
    print(
        f"{opts.groups} groups, streaming chunk {opts.chunk:,} rows, median of {opts.repeats} repeats after "
        "a warm-up; values checked equal (1e-9) first. MetricFrame time: MetricFrame(...) + .by_group + "
        ".difference() (DP = selection-rate difference, EO = max of TPR and FPR differences), on the group "
        "ids. metric_frame: fairtune.functional.metric_frame on the ids; 2 str cols: on a DataFrame of two "
        "string columns intersecting to the same groups.\n"
    )
    print(format_table(rows))
    print(f"\n{machine_line()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
