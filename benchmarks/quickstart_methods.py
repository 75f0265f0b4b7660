"""Run the quickstart once per mitigation method and tabulate the test-set effect against the baseline.

    python benchmarks/quickstart_methods.py [--methods none demographic_parity ...] [--out benchmarks/results]

Each training method runs
``scripts/train.py --config configs/quickstart.yaml --config configs/methods/<m>.yaml``; a run whose
``fairness_report.json`` already exists is not repeated, so the script resumes after a kill.
Threshold methods do not change training: they are fitted on the validation predictions of the baseline
run's saved model, exactly as a run with ``post_processing`` set would after training.

Writes ``quickstart_methods.json`` and ``quickstart_methods.md`` (the README table) to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
METHODS_DIR = REPO / "configs" / "methods"
BASE_CONFIG = REPO / "configs" / "quickstart.yaml"
COLUMNS = [
    ("accuracy", "accuracy"),
    ("demographic_parity_difference", "DP diff"),
    ("equalized_odds_difference", "EO diff"),
    ("worst_group_accuracy", "worst-group acc"),
]


def method_config(name: str) -> Path:
    path = METHODS_DIR / f"{name}.yaml"
    if not path.is_file():
        valid = sorted(p.stem for p in METHODS_DIR.glob("*.yaml"))
        sys.exit(f"no method config {path}; valid methods: {', '.join(valid)}")
    return path


def output_dir(name: str) -> Path:
    import yaml

    return REPO / yaml.safe_load(method_config(name).read_text())["output_dir"]


def train(name: str) -> float:
    """Run one quickstart variant unless its report exists; returns its wall time in seconds (or the
    recorded one)."""
    out = output_dir(name)
    timing = out / "wall_time.json"
    if (out / "fairness_report.json").is_file() and timing.is_file():
        return json.loads(timing.read_text())["seconds"]
    cmd = [
        sys.executable,
        "scripts/train.py",
        "--config",
        str(BASE_CONFIG),
        "--config",
        str(method_config(name)),
    ]
    cmd += ["--overwrite_output_dir", "true", "--disable_tqdm", "true"]
    start = time.perf_counter()
    subprocess.run(cmd, cwd=REPO, check=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    seconds = time.perf_counter() - start
    timing.write_text(json.dumps({"seconds": seconds}))
    return seconds


def thresholds(name: str, baseline: Path) -> None:
    """Fit the method's group thresholds on the baseline model's validation predictions; write its report."""
    out = output_dir(name)
    if (out / "fairness_report.json").is_file():
        return None
    from fairtune.config import parse_config
    from fairtune.pipeline import build
    from fairtune.report import write_report

    start = time.perf_counter()
    argv = ["--config", str(BASE_CONFIG), "--config", str(method_config(name))]
    argv += ["--model_name_or_path", str(baseline), "--output_dir", str(out), "--disable_tqdm", "true"]
    model_args, data_args, args = parse_config(argv)
    trainer, data = build(model_args, data_args, args)
    test = trainer.positive_scores(data["test"], "test")  # one pass: plain metrics and scores
    fitted = trainer.fit_thresholds()
    fitted.save(str(out))
    splits = {"test": trainer.fairness_results["test"]}
    splits["test + thresholds"] = trainer.predict_with_thresholds(scored=test)[1]
    write_report(splits, str(out), {"model": str(baseline), "post_processing": args.post_processing})
    print(f"fitted and applied in {time.perf_counter() - start:.0f} s")


def row(name: str, seconds: float | None) -> dict:
    report = json.loads((output_dir(name) / "fairness_report.json").read_text())
    split = "test + thresholds" if "test + thresholds" in report["splits"] else "test"
    result = report["splits"][split]["sex"]
    values = {"accuracy": result["overall"]["accuracy"], **result["gaps"]}
    return {"method": name, "seconds": seconds and round(seconds, 1), **{k: values[k] for k, _ in COLUMNS}}


SETTINGS = (
    "penalty_weight",
    "adversary_weight",
    "group_dro_eta",
    "reweighting_mode",
    "counterfactual_augmentation",
)


def settings(name: str) -> str:
    """The method's key settings from its config, e.g. ``penalty_weight=0.3``."""
    import yaml

    config = yaml.safe_load(method_config(name).read_text())
    return ", ".join(f"{k}={config[k]}" for k in SETTINGS if k in config)


def markdown(rows: list[dict]) -> str:
    base = next(r for r in rows if r["method"] == "none")
    head = "| method | settings | accuracy | DP diff | EO diff | worst-group acc |"
    lines = [head, "|---|---|---|---|---|---|"]
    for r in rows:
        acc = f"{r['accuracy']:.3f}"
        dp, eo = r["demographic_parity_difference"], r["equalized_odds_difference"]
        if r["method"] != "none":
            acc += f" ({(r['accuracy'] - base['accuracy']) * 100:+.1f} pt)"
            dp_change = (dp / base["demographic_parity_difference"] - 1) * 100
            eo_change = (eo / base["equalized_odds_difference"] - 1) * 100
            cells = [acc, f"{dp:.3f} ({dp_change:+.0f}%)", f"{eo:.3f} ({eo_change:+.0f}%)"]
        else:
            cells = [acc, f"{dp:.3f}", f"{eo:.3f}"]
        wga = f"{r['worst_group_accuracy']:.3f}"
        lines.append(f"| {r['method']} | {settings(r['method'])} | " + " | ".join(cells) + f" | {wga} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False
    )
    parser.add_argument("--methods", nargs="*", default=None, help="default: every configs/methods/*.yaml")
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results"))
    opts = parser.parse_args()
    names = opts.methods or sorted(p.stem for p in METHODS_DIR.glob("*.yaml"))
    names = ["none"] + [n for n in names if n != "none"]  # every row is compared with the baseline
    rows = []
    for name in names:
        print(f"== {name}", flush=True)
        if name.startswith("thresholds_"):
            seconds = thresholds(name, output_dir("none"))
        else:
            seconds = train(name)
        rows.append(row(name, seconds))
    os.makedirs(opts.out, exist_ok=True)
    machine = (
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores, {platform.platform()}"
    )
    Path(opts.out, "quickstart_methods.json").write_text(
        json.dumps({"machine": machine, "rows": rows}, indent=1)
    )
    table = markdown(rows)
    Path(opts.out, "quickstart_methods.md").write_text(f"Machine: {machine}\n\n{table}\n")
    print(table)


if __name__ == "__main__":
    main()
