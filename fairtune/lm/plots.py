"""Per-category bar charts of the LM benchmarks, with bootstrap intervals where there are some."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fairtune.lm.report import LMBiasReport


def _bars(
    names: list[str],
    values: list[float],
    intervals: list[Any],
    reference: float,
    title: str,
    ylabel: str,
    path: str,
) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(max(4.0, 0.7 * len(names) + 2.0), 3.6))
    x = list(range(len(names)))
    err = None
    if any(i is not None for i in intervals):
        # Asymmetric error bars from the percentile interval; zero length where a group has none.
        err = [
            [v - i.low if i is not None else 0.0 for v, i in zip(values, intervals, strict=True)],
            [i.high - v if i is not None else 0.0 for v, i in zip(values, intervals, strict=True)],
        ]
    colors = ["#555555" if n == "overall" else "#4C72B0" for n in names]
    ax.bar(x, values, yerr=err, color=colors, capsize=3)
    ax.axhline(reference, color="black", linewidth=0.8, linestyle="--")
    ax.set_xticks(x)
    ax.set_xticklabels(names, rotation=35, ha="right")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_report(report: LMBiasReport, output_dir: str) -> list[str]:
    """One PNG per benchmark (BBQ: one per bias score); returns the paths."""
    paths = []
    res = report.results
    if "crows_pairs" in res:
        r = res["crows_pairs"]
        groups = [("overall", r.overall), *r.by_bias_type.items()]
        paths.append(
            _bars(
                [g for g, _ in groups],
                [s.pct_stereotype for _, s in groups],
                [s.pct_stereotype_interval for _, s in groups],
                50.0,
                "CrowS-Pairs: % pairs preferring the stereotype",
                "pct_stereotype",
                os.path.join(output_dir, "crows_pairs.png"),
            )
        )
    if "stereoset" in res:
        r = res["stereoset"]
        groups = [("overall", r.overall), *r.by_domain.items()]
        paths.append(
            _bars(
                [g for g, _ in groups],
                [s.ss for _, s in groups],
                [s.ss_interval for _, s in groups],
                50.0,
                "StereoSet: stereotype score (SS)",
                "SS",
                os.path.join(output_dir, "stereoset_ss.png"),
            )
        )
    if "bbq" in res:
        r = res["bbq"]
        groups = [("overall", r.overall), *r.by_category.items()]
        for metric in ("s_dis", "s_amb"):
            paths.append(
                _bars(
                    [g for g, _ in groups],
                    [getattr(s, metric) for _, s in groups],
                    [None] * len(groups),
                    0.0,
                    f"BBQ: {metric} (0 = unbiased)",
                    metric,
                    os.path.join(output_dir, f"bbq_{metric}.png"),
                )
            )
    return paths
