"""Small-batch estimators on a many-group task: running (EMA) group statistics and group-stratified batches.

    python benchmarks/many_groups.py [--seeds 0 1 2] [--groups 16] [--batch 8] [--epochs 1] [--weight 0.5]
        [--train 2000] [--val 2000] [--momentum 0.98]
        [--spreads max_gap l2_dev] [--out FILE.md]

Synthetic data with a planted bias: G groups of unequal size (shares falling geometrically, the largest
about 10x the smallest), 8 features of which one leaks the group, and labels whose base rate rises with the
group id, so an unmitigated model has a large demographic-parity gap. A one-hidden-layer MLP (16 units)
trains through ``FairTrainer`` with a demographic-parity penalty (max gap, weight ``--weight``), per-device
batch ``--batch``, AdamW at 1e-2, in four settings side by side: the plain batch penalty, + EMA running
statistics (``penalty_options: {running: ema, momentum: ...}``), + ``batch_sampling: group_stratified``, and
both; plus ERM (no penalty) for reference.

Reported per setting (mean +- std over seeds):

* ``penalty std``: standard deviation of the logged penalty value over the second half of the training steps
  (the noise the optimiser sees);
* ``estimate RMSE``: with ERM's final model of the seed frozen (one model for every estimator), one epoch of
  the setting's own batches (its sampler, its estimator) against the full training set's soft DP gap: the
  root mean square error of the penalty value as an estimate of the quantity it stands for;
* ``val DP diff`` (hard predictions, max - min selection rate over groups) and ``val accuracy``.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
SETTINGS = {  # name -> (penalty on, running statistics, batch sampling)
    "ERM (no penalty)": (False, False, "random"),
    "DP penalty": (True, False, "random"),
    "+ EMA statistics": (True, True, "random"),
    "+ stratified batches": (True, False, "group_stratified"),
    "+ both": (True, True, "group_stratified"),
}


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--groups", type=int, default=16)
    parser.add_argument("--batch", type=int, default=8, help="per-device train batch")
    parser.add_argument("--epochs", type=float, default=1.0)
    parser.add_argument("--weight", type=float, default=0.5, help="penalty weight (lambda)")
    parser.add_argument("--momentum", type=float, default=0.98, help="EMA decay of the running statistics")
    parser.add_argument(
        "--spreads", nargs="+", default=["max_gap", "l2_dev"], help="penalty spreads, one table each"
    )
    parser.add_argument("--train", type=int, default=2000)
    parser.add_argument("--val", type=int, default=2000)
    parser.add_argument("--out", help="also write the table (Markdown) to this file")
    return parser.parse_args(argv)


def make_data(n: int, num_groups: int, seed: int) -> Any:
    """Rows with features (8,), labels and a ``group`` column; the base rate rises with the group id."""
    import datasets
    import numpy as np

    rng = np.random.default_rng(seed)
    shares = 0.86 ** np.arange(num_groups)  # unequal sizes: the largest group ~10x the smallest at G=16
    g = rng.choice(num_groups, size=n, p=shares / shares.sum())
    x = rng.normal(size=(n, 8)).astype(np.float32)
    x[:, 7] = g / num_groups + 0.05 * rng.normal(size=n)  # leaks the group
    shift = 2.0 * (g / (num_groups - 1) - 0.5)  # planted bias: from -1 to +1 over the groups
    y = (x[:, 0] + shift + 0.5 * rng.normal(size=n) > 0).astype(int)
    return datasets.Dataset.from_dict(
        {"features": x.tolist(), "labels": y.tolist(), "group": [f"g{i:02d}" for i in g]}
    )


def full_gap(trainer: Any, model: Any, spread: str) -> float:
    """What the penalty estimates: the soft DP gap (max gap) of ``model`` on the whole training set."""
    import torch

    from fairtune.mitigation import DemographicParity
    from fairtune.mitigation.penalties import PenaltyBatch

    table = trainer.train_dataset.with_format("torch")[:]  # every row, as tensors
    with torch.no_grad():
        logits = model.eval()(table["features"])
    groups = table[trainer.train_group_column]
    batch = PenaltyBatch(logits, table["labels"], groups, trainer.num_train_groups, logits[:, 0] * 0)
    return DemographicParity(spread=spread)(batch).item()


def estimate_rmse(trainer: Any, model: Any, penalty_factory: Any, spread: str) -> float:
    """RMSE of the penalty value over one epoch of the trainer's batches (its sampler) against the full-data
    gap, with ``model`` frozen."""
    import torch

    from fairtune.mitigation.penalties import PenaltyBatch

    full_value = full_gap(trainer, model, spread)
    penalty = penalty_factory()
    model = model.eval()
    errors = []
    column = trainer.train_group_column
    for batch in trainer.get_train_dataloader():
        with torch.no_grad():
            logits = model(batch["features"])
        # Gradients on, so that running statistics advance as in training; the model itself is frozen.
        logits = logits.detach().requires_grad_()
        value = penalty(
            PenaltyBatch(logits, batch["labels"], batch[column], trainer.num_train_groups, logits[:, 0] * 0)
        )
        errors.append((value.item() - full_value) ** 2)
    return math.sqrt(sum(errors) / len(errors))


def run_one(
    setting: str,
    seed: int,
    opts: argparse.Namespace,
    data: tuple[Any, Any],
    out: str,
    reference: Any,
    spread: str = "max_gap",
) -> tuple[dict, Any]:
    """Train one setting; its row and its trained model. ``reference``: the frozen model the estimators are
    compared on (ERM's of the same seed; None: this run's own)."""
    import torch

    sys.path.insert(0, str(REPO))
    from benchmarks.run import MLP, quiet
    from fairtune import FairTrainer, FairTrainingArguments
    from fairtune.mitigation import DemographicParity

    penalty_on, running, sampling = SETTINGS[setting]
    train, val = data
    options = {"running": "ema", "momentum": opts.momentum} if running else None
    args = FairTrainingArguments(
        output_dir=out,
        group_by="group",
        per_device_train_batch_size=opts.batch,
        per_device_eval_batch_size=512,
        num_train_epochs=opts.epochs,
        learning_rate=1e-2,
        seed=seed,
        report_to="none",
        save_strategy="no",
        logging_steps=1,
        bootstrap_samples=0,
        min_group_size=0,
        disable_tqdm=True,
        use_cpu=True,
        overwrite_output_dir=True,
        penalty="demographic_parity" if penalty_on else None,
        penalty_weight=opts.weight,
        penalty_spread=spread,
        penalty_options=options,
        batch_sampling=sampling,
    )
    torch.manual_seed(seed)
    trainer = FairTrainer(MLP.build(8, 16), args, train_dataset=train)
    quiet(trainer)
    trainer.train()
    logged = [
        h["penalty/demographic_parity"]
        for h in trainer.state.log_history
        if "penalty/demographic_parity" in h
    ]
    row: dict[str, Any] = {"setting": setting, "seed": seed, "spread": spread}
    if logged:
        row["penalty_std"] = statistics.pstdev(logged[len(logged) // 2 :])
    # One model for every estimator (ERM's), so the RMSE compares estimators, not trained models.
    factory = (
        (lambda: DemographicParity(spread=spread, running="ema", momentum=opts.momentum))
        if running
        else (lambda: DemographicParity(spread=spread))
    )
    reference = trainer.model if reference is None else reference
    row["estimate_rmse"] = estimate_rmse(trainer, reference, factory, spread)
    metrics = trainer.evaluate(val)
    row["val_dp"] = metrics["eval_group/demographic_parity_difference"]
    row["val_accuracy"] = metrics["eval_group/overall/accuracy"]
    return row, trainer.model


def run(opts: argparse.Namespace, settings: list[str] | None = None) -> list[dict]:
    """Every spread x seed x setting, on the same data per seed; rows of measurements."""
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for spread in opts.spreads:
            for seed in opts.seeds:
                data = (
                    make_data(opts.train, opts.groups, seed),
                    make_data(opts.val, opts.groups, 10_000 + seed),
                )
                reference = None  # ERM's model, trained first
                for setting in settings or list(SETTINGS):
                    row, model = run_one(setting, seed, opts, data, str(Path(tmp) / "run"), reference, spread)
                    reference = model if reference is None else reference
                    rows.append(row)
    return rows


def table(rows: list[dict]) -> str:
    def cell(values: list[float]) -> str:
        if not values:
            return "–"
        std = statistics.stdev(values) if len(values) > 1 else 0.0
        return f"{statistics.mean(values):.3f} ± {std:.3f}"

    lines = [
        "| setting | penalty std (2nd half of steps) | estimate RMSE vs full data | val DP diff "
        "| val accuracy |",
        "|---|---|---|---|---|",
    ]
    for setting in dict.fromkeys(r["setting"] for r in rows):
        mine = [r for r in rows if r["setting"] == setting]
        cols = [
            [r[k] for r in mine if k in r] for k in ("penalty_std", "estimate_rmse", "val_dp", "val_accuracy")
        ]
        lines.append(f"| {setting} | " + " | ".join(cell(c) for c in cols) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    opts = parse(argv)
    rows = run(opts)
    command = "python benchmarks/many_groups.py " + " ".join(sys.argv[1:] if argv is None else argv)
    text = (
        f"# Many groups, small batches\n\n`{command.strip()}`\n\n"
        f"{opts.groups} groups, per-device batch {opts.batch}, {opts.train} training and {opts.val} "
        f"validation rows, {opts.epochs:g} epochs, DP penalty weight {opts.weight}, EMA momentum "
        f"{opts.momentum}, seeds {' '.join(map(str, opts.seeds))}; mean ± std over seeds. Estimate RMSE: "
        "each setting's estimator on its own batch order, one epoch, on the frozen ERM model of the seed, "
        "against the same spread on the whole training set (the ERM row: the plain batch penalty on random "
        "batches). Val DP diff: hard predictions, max - min selection rate.\n"
    )
    for spread in opts.spreads:
        text += f"\n## Penalty spread {spread}\n\n" + table([r for r in rows if r["spread"] == spread]) + "\n"
    print(text)
    if opts.out:
        Path(opts.out).write_text(text)


if __name__ == "__main__":
    main()
