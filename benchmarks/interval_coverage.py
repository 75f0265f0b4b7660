"""Coverage of fairtune's bootstrap intervals for max - min gaps, on simulated data with known true rates.

    nice -n 10 python benchmarks/interval_coverage.py [--datasets 1000] [--replicates 200] [--seed 0]
        [--out benchmarks/results/interval_coverage.md]

Each simulated dataset has the ten sex x race cells of the quickstart's 2,000-row Adult test split (sizes
`CELL_SIZES`, from 1,224 rows down to 3) and predictions drawn per row as Bernoulli(true selection rate of
its cell), so the true demographic parity difference of a set of groups is the max - min of their true
rates. The data go through the real code path: `GroupStats(2, bootstrap_samples=R)` (Poisson bootstrap),
then `compute(interval_method=...)` for each method, with ``gaps_over="eligible"`` (min_group_size 30:
the five cells of at least 30 rows, the trainer's headline) and ``gaps_over="all"`` (all ten cells).
Coverage is the share of datasets whose 95% interval contains the true gap; with D datasets its Monte Carlo
standard error is about sqrt(0.95 * 0.05 / D) (0.007 at D = 1,000). "misses estimate" is the share of
intervals that do not contain their own point estimate.

Scenarios (true selection rates per cell, `SCENARIOS`): ``quickstart`` (the quickstart model's observed
rates per cell, 0 to 0.27), ``near_parity`` (every rate within 0.03 of 0.20, where the upward bias of a
max - min is largest relative to the gap) and ``parity_big_groups`` (women 0.18, men 0.20).
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import sys
import time

import torch

from fairtune.metrics import INTERVAL_METHODS, GroupStats

# The quickstart's sex+race cells on its 2,000-row Adult test split (outputs/quickstart/fairness_report.json),
# in the report's order: Female|Amer-Indian-Eskimo, Female|Asian-Pac-Islander, Female|Black, Female|Other,
# Female|White, Male|Amer-Indian-Eskimo, Male|Asian-Pac-Islander, Male|Black, Male|Other, Male|White.
CELL_SIZES = (3, 20, 101, 9, 488, 11, 41, 94, 9, 1224)
SCENARIOS = {
    # The quickstart model's selection rates per cell, taken as the truth.
    "quickstart": (0.0, 0.05, 0.0099, 0.0, 0.0389, 0.2727, 0.2195, 0.0957, 0.0, 0.2688),
    "near_parity": (0.20, 0.19, 0.21, 0.18, 0.22, 0.20, 0.17, 0.23, 0.20, 0.19),
    "parity_big_groups": (0.18, 0.18, 0.18, 0.18, 0.18, 0.20, 0.20, 0.20, 0.20, 0.20),
}
GAP = "demographic_parity_difference"
MIN_GROUP_SIZE = 30


def true_gap(rates: tuple[float, ...], sizes: tuple[int, ...], gaps_over: str, min_group_size: int) -> float:
    """Max - min of the true rates over the groups the gap spans."""
    kept = [r for r, n in zip(rates, sizes, strict=True) if gaps_over == "all" or n >= min_group_size]
    return max(kept) - min(kept)


def simulate(
    rates: tuple[float, ...],
    sizes: tuple[int, ...] = CELL_SIZES,
    *,
    datasets: int,
    replicates: int,
    seed: int,
    methods: tuple[str, ...] = INTERVAL_METHODS,
    gaps_over: tuple[str, ...] = ("eligible", "all"),
    confidence: float = 0.95,
    min_group_size: int = MIN_GROUP_SIZE,
) -> dict[tuple[str, str], dict[str, float]]:
    """Coverage of the true DP difference by each (gaps_over, method) over ``datasets`` simulated datasets.

    Returns {(gaps_over, method): {"coverage", "misses_estimate", "width", "bias"}} (bias: mean point
    estimate minus the true gap).
    """
    generator = torch.Generator().manual_seed(seed)
    groups = torch.repeat_interleave(torch.arange(len(sizes)), torch.tensor(sizes))
    p = torch.tensor(rates, dtype=torch.float64)[groups]
    labels = torch.zeros_like(groups)  # DP looks at predictions only
    truth = {over: true_gap(rates, sizes, over, min_group_size) for over in gaps_over}
    tallies = {(over, m): [0, 0, 0.0, 0.0] for over in gaps_over for m in methods}
    for d in range(datasets):
        preds = torch.bernoulli(p, generator=generator).long()
        stats = GroupStats(2, len(sizes), bootstrap_samples=replicates, seed=seed * 100_003 + d)
        stats.update(labels, groups, preds=preds)
        for over in gaps_over:
            for method in methods:
                result = stats.compute(
                    min_group_size=min_group_size,
                    confidence=confidence,
                    gaps_over=over,
                    interval_method=method,
                )
                low, high = result.intervals[GAP]
                point = result.gaps[GAP]
                tally = tallies[(over, method)]
                tally[0] += low <= truth[over] <= high
                tally[1] += not low <= point <= high
                tally[2] += high - low
                tally[3] += point - truth[over]
    return {
        key: {
            "coverage": covered / datasets,
            "misses_estimate": missed / datasets,
            "width": width / datasets,
            "bias": bias / datasets,
        }
        for key, (covered, missed, width, bias) in tallies.items()
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0], allow_abbrev=False)
    parser.add_argument("--datasets", type=int, default=1000)
    parser.add_argument("--replicates", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None, help="Markdown file for the results (default: print only)")
    opts = parser.parse_args(argv)
    torch.set_num_threads(1)  # tiny tensors: threads only wait on each other on a shared machine

    started = time.perf_counter()
    lines = [
        "# Coverage of bootstrap intervals for the demographic parity difference",
        "",
        f"`nice -n 10 python benchmarks/interval_coverage.py --datasets {opts.datasets} --replicates "
        f"{opts.replicates} --seed {opts.seed}` (torch {torch.__version__}, {platform.machine()}, "
        "1 thread). Nominal coverage 0.95; Monte Carlo standard error of a coverage about "
        f"{math.sqrt(0.95 * 0.05 / opts.datasets):.3f}.",
        "",
        f"Cells (rows): {', '.join(str(n) for n in CELL_SIZES)}; headline (`eligible`): the cells of at "
        f"least {MIN_GROUP_SIZE} rows; `all`: every cell.",
        "",
        "| scenario | gaps over | true gap | method | coverage | misses estimate | mean width | "
        "bias of estimate |",
        "|---|---|---|---|---|---|---|---|",
    ]
    deviations: dict[str, list[float]] = {m: [] for m in INTERVAL_METHODS}
    for index, (name, rates) in enumerate(SCENARIOS.items()):
        results = simulate(rates, datasets=opts.datasets, replicates=opts.replicates, seed=opts.seed + index)
        for (over, method), r in results.items():
            truth = true_gap(rates, CELL_SIZES, over, MIN_GROUP_SIZE)
            deviations[method].append(abs(r["coverage"] - 0.95))
            lines.append(
                f"| {name} | {over} | {truth:.3f} | {method} | {r['coverage']:.3f} | "
                f"{r['misses_estimate']:.3f} | {r['width']:.3f} | {r['bias']:+.3f} |"
            )
            print(lines[-1], flush=True)
    lines += ["", "Mean |coverage - 0.95| over the scenarios and gap sets:", ""]
    for method, devs in sorted(deviations.items(), key=lambda item: sum(item[1])):
        lines.append(f"- {method}: {sum(devs) / len(devs):.3f}")
    lines += ["", f"Run time: {time.perf_counter() - started:.0f} s."]
    text = "\n".join(lines) + "\n"
    print(text)
    if opts.out:
        os.makedirs(os.path.dirname(opts.out) or ".", exist_ok=True)
        with open(opts.out, "w") as f:
            f.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
