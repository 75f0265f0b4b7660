"""A short real run of the config runner: MiniLM-L6 from its PyPI package on embedded Adult, a few steps.
Marked slow; CI still runs it."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_quickstart_config_runs_end_to_end_on_the_real_model(tmp_path):
    out = tmp_path / "run"
    cmd = [
        sys.executable,
        str(ROOT / "scripts" / "train.py"),
        "--config",
        str(ROOT / "configs" / "quickstart.yaml"),
        "--output_dir",
        str(out),
        "--max_train_samples",
        "64",
        "--max_eval_samples",
        "64",
        "--max_test_samples",
        "96",
        "--num_train_epochs",
        "1",
        "--per_device_train_batch_size",
        "16",
        "--bootstrap_samples",
        "50",
        "--disable_tqdm",
        "true",
    ]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    for name in (
        "model.safetensors",
        "config.json",
        "tokenizer.json",
        "group_vocab.json",
        "fairness_report.json",
        "fairness_report.md",
        "run_config.json",
    ):
        assert (out / name).is_file(), name
    report = json.loads((out / "fairness_report.json").read_text())
    assert set(report["splits"]) == {"validation", "test"}
    test = report["splits"]["test"]
    assert set(test) == {"sex", "race", "sex+race"}
    assert test["sex"]["overall"]["count"] == 96
    assert set(test["sex"]["by_group"]) == {"Female", "Male"}
    assert "demographic_parity_difference" in test["sex"]["intervals"]
    assert json.loads((out / "group_vocab.json").read_text())["groupings"]["sex"]["values"] == [
        "Female",
        "Male",
    ]
    assert "== test: sex ==" in run.stdout and "| Female |" in run.stdout
    # A second run into the same folder is refused before anything is touched.
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert again.returncode != 0 and "fairtune: error: output_dir" in again.stderr
    assert "already holds a run" in again.stderr and "Traceback" not in again.stderr
    # Bad input is named before anything is written.
    bad = subprocess.run(
        [*cmd[:5], str(tmp_path / "other"), "--group_by", "gender"],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,
    )
    assert bad.returncode != 0 and "no column 'gender'" in bad.stderr
    assert not (tmp_path / "other").exists()


@pytest.mark.slow
def test_method_configs_layer_on_the_quickstart_with_the_real_model(tmp_path):
    """Adversary on MiniLM's hidden states + MinDiff penalty + thresholds, from layered configs."""
    out = tmp_path / "run"
    cmd = [sys.executable, str(ROOT / "scripts" / "train.py")]
    cmd += ["--config", str(ROOT / "configs" / "quickstart.yaml")]
    cmd += ["--config", str(ROOT / "configs" / "methods" / "adversary.yaml")]
    cmd += ["--config", str(ROOT / "configs" / "methods" / "thresholds_demographic_parity.yaml")]
    cmd += ["--penalty", "mindiff", "--output_dir", str(out), "--max_train_samples", "48"]
    cmd += ["--max_eval_samples", "64", "--max_test_samples", "64", "--max_steps", "3"]
    cmd += ["--per_device_train_batch_size", "16", "--logging_steps", "1", "--bootstrap_samples", "0"]
    cmd += ["--disable_tqdm", "true"]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "adversary/loss" in run.stdout and "penalty/mindiff" in run.stdout
    assert "eval_sex/Female/count" not in run.stdout  # per-group keys stay out of the terminal
    assert (out / "group_thresholds.json").is_file()
    report = json.loads((out / "fairness_report.json").read_text())
    assert set(report["splits"]) == {"validation", "test", "validation + thresholds", "test + thresholds"}
    assert report["splits"]["test + thresholds"]["sex"]["overall"]["count"] == 64
    assert "Adversary(input='hidden'" in report["run"]["mitigation"]
    config = json.loads((out / "run_config.json").read_text())
    assert config["training"]["adversary"] == "group" and config["training"]["penalty"] == "mindiff"
    from safetensors import safe_open

    with safe_open(str(out / "model.safetensors"), "pt") as f:
        assert not any("adversary" in k or k.startswith("head.") for k in f.keys())
