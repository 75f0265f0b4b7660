"""The ``fairtune`` console command: ``fairtune train --config configs/quickstart.yaml [--key value ...]``."""

from __future__ import annotations

import sys
from collections.abc import Sequence

USER_ERRORS = (ValueError, TypeError, FileNotFoundError, FileExistsError, ImportError)
USAGE = """usage: fairtune <command> [options]

commands:
  train       fine-tune with fairness metrics from a YAML config (see `fairtune train --help`)
  audit-data  audit group representation and base rates of a config's data (`fairtune audit-data --help`)
  evaluate    audit a saved model: report, plots, comparison, fairness gate (`fairtune evaluate --help`)
"""
AUDIT_HELP = """usage: fairtune audit-data --config CONFIG.yaml [--split train] [--reference SHARES.json]
                          [--audit_dir DIR] [any config key, e.g. --group_by sex]

Audits the split's groupings (group_by and eval_group_by of the config): counts, shares, label base rates
with Wilson intervals, smallest cells, and shares against a reference ({"sex": {"Female": 0.5, ...}}).
Writes data_audit.json, data_audit.md and PNG plots to --audit_dir (default: <output_dir>/data_audit).
"""


def train_main(argv: Sequence[str] | None = None) -> None:
    """Parse the config and flags, then run training, evaluation and the report."""
    from fairtune.config import parse_config
    from fairtune.pipeline import build, shutdown_distributed, train_and_report

    # Mistakes in the config or the data surface before training: say them plainly, without a traceback.
    try:
        model_args, data_args, training_args = parse_config(argv)
        trainer, data = build(model_args, data_args, training_args)
    except USER_ERRORS as err:
        sys.exit(f"fairtune: error: {err}")
    train_and_report(trainer, data, model_args, data_args)
    shutdown_distributed()


def audit_data_main(argv: Sequence[str] | None = None) -> None:
    """Load a config's data and write its audit (JSON, Markdown, PNGs)."""
    import argparse
    import json
    import os

    from fairtune.audit import audit_dataset, render_audit_markdown, write_audit
    from fairtune.config import parse_config
    from fairtune.data.loading import load_raw_datasets

    argv = list(sys.argv[1:] if argv is None else argv)
    if "-h" in argv or "--help" in argv:
        print(AUDIT_HELP)
        return
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--split", default="train")
    pre.add_argument("--reference", default=None)
    pre.add_argument("--audit_dir", default=None)
    opts, rest = pre.parse_known_args(argv)
    try:
        _, data_args, args = parse_config(rest)
        reference = None
        if opts.reference:
            with open(opts.reference) as f:
                reference = json.load(f)
        raw = load_raw_datasets(data_args, seed=data_args.data_seed_for_splits)
        if opts.split not in raw:
            raise ValueError(f"--split {opts.split!r} is not in the data; splits: {', '.join(raw)}.")
        groupings = list(dict.fromkeys([args.group_by, *(args.eval_group_by or [])]))
        audit = audit_dataset(
            raw[opts.split],
            groupings,
            label_column="label",
            reference=reference,
            min_cell_size=args.min_group_size,
            confidence=args.confidence_level,
            split=opts.split,
        )
    except USER_ERRORS as err:
        sys.exit(f"fairtune: error: {err}")
    out = opts.audit_dir or os.path.join(args.output_dir, "data_audit")
    paths = write_audit(audit, out)
    print(render_audit_markdown(audit))
    print("\nWritten: " + ", ".join(paths))


# Config keys that change what evaluate computes: where the data is, how groups and intervals are formed, and
# how prediction runs. The YAML may hold any key (it is the training config); a flag must be one of these.
EVALUATE_TRAINING_KEYS = (
    "group_by",
    "eval_group_by",
    "min_group_size",
    "bootstrap_samples",
    "confidence_level",
    "ece_bins",
    "seed",
    "per_device_eval_batch_size",
    "dataloader_num_workers",
    "use_cpu",
    "bf16",
    "fp16",
)
EVALUATE_HELP = """usage: fairtune evaluate --model DIR --config CONFIG.yaml [--split test] [--compare DIR2]
                        [--max NAME=VALUE ...] [--min NAME=VALUE ...] [--output_dir OUT] [data/eval options]

Evaluates the saved model in DIR (with its group_vocab.json) on a split of the config's data and writes
fairness_report.json/.md, model_audit.json and plots (per-group rates with intervals, ROC, score
distributions, calibration) to --output_dir (default: DIR/model_audit). --compare DIR2 audits a second model
on the same data and writes comparison.md and comparison_<grouping>.png with the change in each gap.
--max / --min (repeatable) are gate thresholds on a gap or overall stat, e.g.
--max demographic_parity_difference=0.05 --min race/worst_group_accuracy=0.7 (a bare name means the model's
training grouping); names are checked before any model is evaluated, and the command exits with status 1
and names every failed threshold. Besides --config, the flags it takes are the data options and the
evaluation options {keys}; training options are refused, since evaluate trains nothing.
""".format(keys=", ".join(f"--{k}" for k in EVALUATE_TRAINING_KEYS))
# Data options that shape only the training split (augmentation), which evaluate does not use.
TRAINING_DATA_PREFIXES = ("counterfactual_", "oversample_")
ERR_EVALUATE_OPTIONS = (
    "fairtune evaluate does not use {options}. It takes --model, --config, --split, --compare, --max, "
    "--min, --output_dir, the data options and {keys}."
)


def _evaluate_config_keys() -> list[str]:
    from dataclasses import fields

    from fairtune.config import DataArguments

    data = [f.name for f in fields(DataArguments) if not f.name.startswith(TRAINING_DATA_PREFIXES)]
    return [*data, *EVALUATE_TRAINING_KEYS]


def _refuse_unused_options(rest: Sequence[str]) -> None:
    """Raise for every ``--flag`` in ``rest`` that evaluate would accept and ignore."""
    allowed = {"config", *_evaluate_config_keys()}
    given = [token[2:].split("=")[0] for token in rest if token.startswith("--")]
    unused = [f"--{name}" for name in dict.fromkeys(given) if name not in allowed]
    if unused:
        keys = ", ".join(f"--{k}" for k in EVALUATE_TRAINING_KEYS)
        raise ValueError(ERR_EVALUATE_OPTIONS.format(options=", ".join(unused), keys=keys))


def evaluate_main(argv: Sequence[str] | None = None) -> None:
    """Audit a saved model (and optionally compare it with another), then apply the fairness gate.

    Every check that needs no model runs first (options, config, gate names against the saved models'
    groupings and classes), so a refused run evaluates nothing and writes nothing.
    """
    import argparse
    import os

    from fairtune.config import parse_config
    from fairtune.evaluation import (
        COMPARISON_MD,
        check_gate,
        check_gate_names,
        compare_markdown,
        evaluate_model,
        gate_names,
        inspect_model,
        parse_gate,
        write_model_audit,
    )
    from fairtune.report import gap_table, group_table

    argv = list(sys.argv[1:] if argv is None else argv)
    if "-h" in argv or "--help" in argv:
        print(EVALUATE_HELP)
        return
    pre = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    pre.add_argument("--model", required=True)
    pre.add_argument("--split", default="test")
    pre.add_argument("--compare", default=None)
    pre.add_argument("--max", action="append", default=[])
    pre.add_argument("--min", action="append", default=[])
    pre.add_argument("--output_dir", default=None)
    try:
        opts, rest = pre.parse_known_args(argv)
    except SystemExit:
        sys.exit(f"fairtune: error: evaluate needs --model DIR\n\n{EVALUATE_HELP}")
    try:
        _refuse_unused_options(rest)
        _, data_args, args = parse_config(rest)
        thresholds = parse_gate(opts.max, "max") + parse_gate(opts.min, "min")
        # Both folders and the gate names are checked before the (long) evaluation of either model.
        saved = inspect_model(opts.model, args)
        if opts.compare:
            inspect_model(opts.compare, args)
        valid = gate_names(saved.groupings, saved.train_grouping, saved.num_classes)
        check_gate_names(thresholds, valid, opts.split)
        audit = evaluate_model(opts.model, data_args, args, opts.split)
        other = evaluate_model(opts.compare, data_args, args, opts.split) if opts.compare else None
        checks = check_gate(audit.results, thresholds, audit.train_grouping, opts.split)
    except USER_ERRORS as err:
        sys.exit(f"fairtune: error: {err}")
    out = opts.output_dir or os.path.join(opts.model, "model_audit")
    paths = write_model_audit(audit, out)
    for name, result in audit.results.items():
        print(f"\n== {opts.split}: {name} ==\n{group_table(result)}\n\n{gap_table(result)}")
    if other is not None:
        from fairtune import plots

        names = tuple(os.path.basename(os.path.normpath(d)) for d in (opts.model, opts.compare))
        names = names if names[0] != names[1] else ("model", "compare")
        text = compare_markdown(audit, other, names)
        with open(os.path.join(out, COMPARISON_MD), "w") as f:
            f.write(text)
        paths.append(os.path.join(out, COMPARISON_MD))
        for name in [g for g in audit.results if g in other.results]:
            path = os.path.join(out, f"comparison_{name.replace('+', '_x_')}.png")
            paths.append(plots.plot_comparison(audit.results[name], other.results[name], path, names))
        print("\n" + text)
    print("\nWritten: " + ", ".join(paths))
    if checks:
        print("\nFairness gate:\n" + "\n".join(f"  {c}" for c in checks))
        failed = [c for c in checks if not c.passed]
        if failed:
            sys.exit(f"fairtune: fairness gate failed: {'; '.join(c.describe() for c in failed)}")
        print("fairness gate passed")


def main(argv: Sequence[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return
    command, rest = argv[0], argv[1:]
    commands = {"train": train_main, "audit-data": audit_data_main, "evaluate": evaluate_main}
    if command not in commands:
        valid = ", ".join(commands)
        sys.exit(f"fairtune: error: unknown command {command!r}; valid commands: {valid}\n\n{USAGE}")
    commands[command](rest)


if __name__ == "__main__":
    main()
