"""Worst-group accuracy of ERM, JTT and GroupDRO on a planted spurious correlation (CPU, minutes).

    nice -n 10 python benchmarks/jtt_spurious.py [--seeds 0 1 2] [--train 2000] [--epochs 10]
        [--upweight 20] [--first_stage_epochs 2] [--eta 0.1] [--out benchmarks/results/jtt_spurious_cpu.md]

Data (``spurious_dataset``): label y in {0, 1}; a *core* feature ``(2y - 1) * 1.0 + N(0, 1)`` (it predicts y
with at most ~84% accuracy) and a *spurious* feature ``(2s - 1) + N(0, 0.1)`` with s = y in 95% of training
and validation rows (a nearly noise-free shortcut), plus 4 pure-noise features. The group of a row is its
(spurious, label) cell, 4 groups; the minority cells (s != y) hold 5% of the training rows. The test set has
the four cells in equal shares, so a model that follows the shortcut fails half of it.

Methods, all on the same MLP (one hidden layer of 32), AdamW at 1e-3, batch 64, ``--epochs`` epochs,
validation every epoch and the checkpoint with the best validation worst-group accuracy loaded at the end
(``metric_for_best_model: eval_cell/worst_group_accuracy``, SubpopBench's and the JTT paper's selection):

* ERM: the plain loss.
* JTT (``reweighting: jtt``): an ERM identification run of ``--first_stage_epochs`` epochs, then a fresh
  model on the training set with its errors repeated ``--upweight`` times. No group label of a training row
  is read (the training set has no ``cell`` column at all); groups are used on validation only.
* GroupDRO (``reweighting: group_dro``): online group weights with step ``--eta``, with the full group labels
  of the training rows.

Reports the test worst-group and average accuracy per method (mean and spread over seeds), and how many of
the training errors found by JTT's first stage lie in the minority cells.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
METHODS = ("erm", "jtt", "group_dro")
GROUPING = "cell"


def spurious_dataset(n: int, seed: int, majority: float = 0.95, balanced: bool = False, noise_dims: int = 4):
    """Rows with a core and a spurious feature (see the module docstring); ``balanced``: equal cells.

    Columns: ``features`` (D = 2 + noise_dims floats), ``labels``, ``cell`` ("s=<s>,y=<y>"), ``minority``.
    """
    import datasets
    import numpy as np

    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    if balanced:
        s = np.where(np.arange(n) % 2 == 0, y, 1 - y)
    else:
        s = np.where(rng.random(n) < majority, y, 1 - y)
    core = (2 * y - 1) * 1.0 + rng.normal(size=n)
    spurious = (2 * s - 1) + 0.1 * rng.normal(size=n)
    x = np.column_stack([core, spurious, rng.normal(size=(n, noise_dims))]).astype(np.float32)
    return datasets.Dataset.from_dict(
        {
            "features": x.tolist(),
            "labels": y.tolist(),
            GROUPING: [f"s={a},y={b}" for a, b in zip(s, y, strict=True)],
            "minority": (s != y).astype(int).tolist(),
        }
    )


def mlp(d_in: int = 6, hidden: int = 32):
    """A plain nn.Module classifier: features (N, D) -> logits (N, 2)."""
    import torch
    from torch import nn

    class MLP(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = nn.Sequential(nn.Linear(d_in, hidden), nn.ReLU(), nn.Linear(hidden, 2))

        def forward(self, features: torch.Tensor) -> torch.Tensor:
            return self.net(features)

    return MLP()


def run_method(
    method: str,
    seed: int,
    train_rows: int = 2000,
    epochs: int = 10,
    upweight: int = 20,
    first_stage_epochs: float = 2,
    eta: float = 0.1,
    learning_rate: float = 1e-3,
    output_dir: str | None = None,
) -> dict[str, Any]:
    """Train one method with one seed; returns test worst-group / average accuracy (and JTT's error set)."""
    import torch
    from transformers import set_seed

    from fairtune import FairTrainer, FairTrainingArguments, GroupVocabulary
    from fairtune.mitigation.jtt import just_train_twice

    train = spurious_dataset(train_rows, seed)
    validation = spurious_dataset(max(train_rows // 4, 200), seed + 1000)
    test = spurious_dataset(2000, seed + 2000, balanced=True)
    vocab = GroupVocabulary(GROUPING).fit(validation)  # groups known from validation alone
    if method == "jtt":
        train = train.remove_columns([GROUPING])  # JTT never sees a training row's group
    out = output_dir or tempfile.mkdtemp(prefix=f"jtt_{method}_{seed}_")
    options: dict[str, Any] = {}
    if method == "jtt":
        options = {"reweighting": "jtt", "reweighting_options": {"upweight": upweight}}
        options["reweighting_options"]["first_stage_epochs"] = first_stage_epochs
    elif method == "group_dro":
        options = {"reweighting": "group_dro", "group_dro_eta": eta}
    args = FairTrainingArguments(
        output_dir=os.path.join(out, "run"),
        group_by=GROUPING,
        per_device_train_batch_size=64,
        per_device_eval_batch_size=512,
        num_train_epochs=epochs,
        learning_rate=learning_rate,
        eval_strategy="epoch",
        save_strategy="epoch",
        save_total_limit=1,
        load_best_model_at_end=True,
        metric_for_best_model=f"eval_{GROUPING}/worst_group_accuracy",
        # The minority cells are small by design (5% of rows, about 6 per cell in validation); selection and
        # the test score must still see them, so no cell is left out of the headline gaps.
        min_group_size=0,
        logging_strategy="epoch",
        bootstrap_samples=0,
        report_to="none",
        disable_tqdm=True,
        use_cpu=True,
        seed=seed,
        **options,
    )

    def make_trainer(train_dataset: Any, stage_args: Any) -> Any:
        set_seed(stage_args.seed)  # the same initial weights in both stages and for every method
        return FairTrainer(
            mlp(),
            stage_args,
            train_dataset=train_dataset,
            eval_dataset=validation,
            group_vocab=vocab,
        )

    started = time.perf_counter()
    result: dict[str, Any] = {"method": method, "seed": seed}
    if method == "jtt":
        jtt = just_train_twice(make_trainer, train, args)
        trainer = jtt.trainer
        minority = torch.tensor(train["minority"]).bool().numpy()
        result["error_rows"] = int(jtt.errors.sum())
        result["errors_in_minority"] = int((jtt.errors & minority).sum())
        result["minority_rows"] = int(minority.sum())
    else:
        trainer = make_trainer(train, args)
        trainer.train()
    metrics = trainer.evaluate(test, metric_key_prefix="test")
    result["worst_group_accuracy"] = metrics[f"test_{GROUPING}/worst_group_accuracy"]
    result["accuracy"] = metrics[f"test_{GROUPING}/overall/accuracy"]
    result["seconds"] = time.perf_counter() - started
    return result


def _mean_sd(values: list[float]) -> str:
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.3f} ± {sd:.3f}"


def report(rows: list[dict[str, Any]], opts: argparse.Namespace, command: str) -> str:
    """Markdown: the settings, a per-method table (mean ± sd over seeds), per-seed rows."""
    lines = [
        "# JTT vs ERM vs GroupDRO on a planted spurious correlation (CPU)",
        "",
        f"Command: `{command}`",
        "",
        f"{opts.train} training rows (5% minority cells), validation {max(opts.train // 4, 200)} rows from "
        f"the training distribution, test 2000 rows in balanced cells; MLP (32 hidden), AdamW {opts.lr:g}, "
        f"batch 64, {opts.epochs} epochs, best validation worst-group accuracy loaded. JTT: upweight "
        f"{opts.upweight}, first stage {opts.first_stage_epochs:g} epochs, no training group labels. "
        f"GroupDRO: eta {opts.eta:g}, full training group labels. Seeds {', '.join(map(str, opts.seeds))}.",
        "",
        "| method | test worst-group accuracy | test average accuracy | seconds per run |",
        "|---|---|---|---|",
    ]
    for method in METHODS:
        mine = [r for r in rows if r["method"] == method]
        if not mine:
            continue
        lines.append(
            f"| {method} | {_mean_sd([r['worst_group_accuracy'] for r in mine])} | "
            f"{_mean_sd([r['accuracy'] for r in mine])} | {statistics.mean(r['seconds'] for r in mine):.0f} |"
        )
    lines += [
        "",
        "Per seed:",
        "",
        "| method | seed | worst-group | average | JTT error set |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        errors = ""
        if "error_rows" in r:
            errors = (
                f"{r['error_rows']} rows, {r['errors_in_minority']} of the {r['minority_rows']} minority rows"
            )
        lines.append(
            f"| {r['method']} | {r['seed']} | {r['worst_group_accuracy']:.3f} | {r['accuracy']:.3f} "
            f"| {errors} |"
        )
    return "\n".join(lines) + "\n"


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--train", type=int, default=2000)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--upweight", type=int, default=20)
    parser.add_argument("--first_stage_epochs", type=float, default=2)
    parser.add_argument("--eta", type=float, default=0.1)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "jtt_spurious_cpu.md"))
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    opts = parse(argv)
    import transformers

    transformers.logging.set_verbosity_error()
    rows = []
    for seed in opts.seeds:
        for method in opts.methods:
            row = run_method(
                method,
                seed,
                train_rows=opts.train,
                epochs=opts.epochs,
                upweight=opts.upweight,
                first_stage_epochs=opts.first_stage_epochs,
                eta=opts.eta,
                learning_rate=opts.lr,
            )
            print(json.dumps(row), flush=True)
            rows.append(row)
    command = "python benchmarks/jtt_spurious.py " + " ".join(sys.argv[1:] if argv is None else argv)
    text = report(rows, opts, command.strip())
    Path(opts.out).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
