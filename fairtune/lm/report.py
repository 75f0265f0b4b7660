"""Run the LM benchmarks and write ``lm_bias_report.json``, ``lm_bias_report.md`` and plots.

JSON layout::

    {"model": ..., "settings": {...}, "seconds": {benchmark: s},
     "crows_pairs": {"overall": {"n", "pct_stereotype", "pct_stereotype_normalized", "likelihood_diff",
                                 "pct_stereotype_interval", ...}, "by_bias_type": {...}, "confidence"},
     "stereoset": {"overall": {"n", "ss", "lms", "icat", "ss_interval"}, "by_domain": {...},
                   "by_task": {...}},
     "bbq": {"overall": {"n", "accuracy", "accuracy_ambig", "accuracy_disambig", "s_dis", "s_amb"},
             "by_category": {...}},
     "perplexity": {"perplexity", "nll_per_token", "n_tokens", "n_texts", "n_truncated"}}
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from fairtune.lm import check_benchmarks

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    from fairtune.lm.bbq import BBQResult
    from fairtune.lm.crows_pairs import CrowsPairsResult
    from fairtune.lm.perplexity import PerplexityResult
    from fairtune.lm.stereoset import StereoSetResult

    LMResult = CrowsPairsResult | StereoSetResult | BBQResult | PerplexityResult

REPORT_JSON = "lm_bias_report.json"
REPORT_MD = "lm_bias_report.md"
ERR_REPORT_EXISTS = "{path} already exists; pass --overwrite to replace it, or choose another --output_dir."


@dataclass
class LMBiasReport:
    """The results of one model on the chosen benchmarks, with the settings that produced them."""

    model: str
    results: dict[str, LMResult]
    settings: dict[str, Any] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"model": self.model, "settings": self.settings, "seconds": self.seconds}
        out.update({name: result.to_dict() for name, result in self.results.items()})
        return out

    def flat(self) -> dict[str, float]:
        """Every metric as ``benchmark/group/metric`` (the keys a gate or a monitor uses)."""
        out: dict[str, float] = {}
        for result in self.results.values():
            out.update(result.flat())
        return out


def run_benchmarks(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    benchmarks: Sequence[str],
    *,
    model_name: str = "model",
    bias_types: Sequence[str] | None = None,
    max_examples: int | None = None,
    batch_size: int = 16,
    seed: int = 0,
    n_bootstrap: int = 1000,
    confidence: float = 0.95,
    perplexity_texts: Sequence[str] | None = None,
    progress: bool = True,
) -> LMBiasReport:
    """Score ``model`` on each benchmark (model put in eval mode and restored) and collect the results."""
    from fairtune.lm.bbq import evaluate_bbq
    from fairtune.lm.crows_pairs import evaluate_crows_pairs
    from fairtune.lm.models import ensure_pad_token
    from fairtune.lm.monitor import ERR_PERPLEXITY_TEXTS
    from fairtune.lm.perplexity import evaluate_perplexity
    from fairtune.lm.stereoset import evaluate_stereoset

    names = check_benchmarks(list(benchmarks))
    if "perplexity" in names and not perplexity_texts:
        raise ValueError(ERR_PERPLEXITY_TEXTS)
    ensure_pad_token(tokenizer)
    common = {"max_examples": max_examples, "seed": seed, "batch_size": batch_size, "progress": progress}
    boot = {"n_bootstrap": n_bootstrap, "confidence": confidence}
    results: dict[str, Any] = {}
    seconds: dict[str, float] = {}
    was_training = model.training
    model.eval()
    try:
        for name in names:
            start = time.perf_counter()
            if name == "crows_pairs":
                results[name] = evaluate_crows_pairs(
                    model, tokenizer, bias_types=bias_types, **common, **boot
                )
            elif name == "stereoset":
                results[name] = evaluate_stereoset(model, tokenizer, domains=bias_types, **common, **boot)
            elif name == "bbq":
                results[name] = evaluate_bbq(model, tokenizer, categories=bias_types, **common)
            else:
                results[name] = evaluate_perplexity(model, tokenizer, list(perplexity_texts or []), **common)
            seconds[name] = round(time.perf_counter() - start, 2)
    finally:
        model.train(was_training)
    settings = {
        "benchmarks": names,
        "bias_types": list(bias_types) if bias_types else None,
        "max_examples": max_examples,
        "seed": seed,
        "batch_size": batch_size,
        "bootstrap_samples": n_bootstrap,
        "confidence": confidence,
        "scoring": {
            "crows_pairs": "pct_stereotype: summed log-likelihood, first token conditioned on BOS "
            "(lm-eval-harness); pct_stereotype_normalized: mean token log-prob (bias-bench)",
            "stereoset": "mean token log-prob of each option (bias-bench); intersentence given the context",
            "bbq": "argmax of summed log-likelihood of ' ' + answer after lm-eval-harness's prompt",
        },
    }
    return LMBiasReport(model=model_name, results=results, settings=settings, seconds=seconds)


def _f(value: float, digits: int = 2) -> str:
    return "n/a" if value != value else f"{value:.{digits}f}"


def _ci(interval: Any) -> str:
    return "" if interval is None else f" [{interval.low:.1f}, {interval.high:.1f}]"


def render_markdown(report: LMBiasReport) -> str:
    """The report as Markdown tables, one per benchmark."""
    lines = [f"# Stereotype benchmarks: {report.model}", ""]
    res = report.results
    if "crows_pairs" in res:
        r = res["crows_pairs"]
        lines += [
            "## CrowS-Pairs (50 = unbiased)",
            "",
            "| bias type | n | pct_stereotype | pct_stereotype_normalized | likelihood_diff |",
            "|---|---:|---:|---:|---:|",
        ]
        for name, s in [("overall", r.overall), *r.by_bias_type.items()]:
            lines.append(
                f"| {name} | {s.n} | {_f(s.pct_stereotype)}{_ci(s.pct_stereotype_interval)} | "
                f"{_f(s.pct_stereotype_normalized)}{_ci(s.pct_stereotype_normalized_interval)} | "
                f"{_f(s.likelihood_diff, 3)} |"
            )
        lines.append("")
    if "stereoset" in res:
        r = res["stereoset"]
        lines += [
            "## StereoSet (SS 50 = unbiased; LMS, ICAT 100 = best)",
            "",
            "| part | n | SS | LMS | ICAT |",
            "|---|---:|---:|---:|---:|",
        ]
        for name, s in [("overall", r.overall), *r.by_task.items(), *r.by_domain.items()]:
            lines.append(f"| {name} | {s.n} | {_f(s.ss)}{_ci(s.ss_interval)} | {_f(s.lms)} | {_f(s.icat)} |")
        lines.append("")
    if "bbq" in res:
        r = res["bbq"]
        lines += [
            "## BBQ (bias scores in [-1, 1], 0 = unbiased)",
            "",
            "| category | n | accuracy | acc ambiguous | acc disambiguated | s_DIS | s_AMB |",
            "|---|---:|---:|---:|---:|---:|---:|",
        ]
        for name, s in [("overall", r.overall), *r.by_category.items()]:
            lines.append(
                f"| {name} | {s.n} | {_f(s.accuracy, 3)} | {_f(s.accuracy_ambig, 3)} | "
                f"{_f(s.accuracy_disambig, 3)} | {_f(s.s_dis, 3)} | {_f(s.s_amb, 3)} |"
            )
        lines.append("")
    if "perplexity" in res:
        p = res["perplexity"]
        lines += [
            "## Perplexity",
            "",
            f"{_f(p.perplexity)} over {p.n_tokens} tokens of {p.n_texts} texts "
            f"({p.n_truncated} cut to the maximum length).",
            "",
        ]
    s = report.settings
    lines.append(
        f"Settings: max_examples={s.get('max_examples')}, seed={s.get('seed')}, "
        f"bias_types={s.get('bias_types')}, bootstrap_samples={s.get('bootstrap_samples')} "
        f"(intervals at {s.get('confidence')})."
    )
    return "\n".join(lines) + "\n"


def check_output_dir(output_dir: str, overwrite: bool) -> None:
    """Refuse to replace an existing report unless ``overwrite``: a report is never replaced silently."""
    for name in (REPORT_JSON, REPORT_MD):
        path = os.path.join(output_dir, name)
        if os.path.exists(path) and not overwrite:
            raise FileExistsError(ERR_REPORT_EXISTS.format(path=path))


def write_report(report: LMBiasReport, output_dir: str, overwrite: bool = False) -> list[str]:
    """Write the JSON, the Markdown and the plots to ``output_dir``; returns the paths written."""
    from fairtune.lm.plots import plot_report
    from fairtune.report import write_json_and_markdown

    check_output_dir(output_dir, overwrite)
    markdown = render_markdown(report)
    paths = write_json_and_markdown(output_dir, REPORT_JSON, report.to_dict(), REPORT_MD, markdown)
    return paths + plot_report(report, output_dir)
