"""Model audit of a saved model, comparison, fairness gate exit codes, and the model card of a run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import WORDS, fair_args, text_dataset, tiny_bert

from fairtune import FairTrainer
from fairtune.evaluation import ERR_GATE_METRIC, ERR_GATE_SPEC, check_gate, parse_gate
from fairtune.model_card import FALLBACK_FILE, MARKER, write_model_card

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory):
    """A tiny BERT fine-tuned briefly, saved with tokenizer and group vocabulary; plus data files."""
    from transformers import BertTokenizer

    tmp = tmp_path_factory.mktemp("model")
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]
    tokenizer = BertTokenizer(vocab={w: i for i, w in enumerate(words)})
    data = text_dataset(160)
    tokenized = data.map(lambda b: tokenizer(b["text"]), batched=True)
    args = fair_args(tmp, output_dir=str(tmp / "model"), num_train_epochs=3, learning_rate=1e-3)
    trainer = FairTrainer(tiny_bert(), args, train_dataset=tokenized, processing_class=tokenizer)
    trainer.train()
    trainer.save_model()
    data.to_csv(str(tmp / "train.csv"))
    text_dataset(120, seed=5).to_csv(str(tmp / "test.csv"))
    return tmp


def _evaluate(tmp: Path, *extra: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "fairtune.cli", "evaluate", "--model", str(tmp / "model")]
    cmd += ["--train_file", str(tmp / "train.csv"), "--test_file", str(tmp / "test.csv")]
    cmd += ["--group_by", "sex", "--output_dir", str(tmp / "unused"), "--bootstrap_samples", "50", *extra]
    return subprocess.run(
        cmd, capture_output=True, text=True, timeout=300, cwd=ROOT, env={**os.environ, "HF_HUB_OFFLINE": "1"}
    )


def test_gate_parsing_and_checks():
    thresholds = parse_gate(["demographic_parity_difference=0.05", "race/worst_group_accuracy = 0.7"], "max")
    assert thresholds == [
        ("demographic_parity_difference", "max", 0.05),
        ("race/worst_group_accuracy", "max", 0.7),
    ]
    for bad in ("demographic_parity_difference", "=0.1", "dp=abc"):
        with pytest.raises(ValueError, match=ERR_GATE_SPEC.split("{")[0]):
            parse_gate([bad], "max")
    results = {
        "sex": {
            "gaps": {"demographic_parity_difference": 0.2, "worst_group_accuracy": 0.8},
            "overall": {"accuracy": 0.9},
        },
        "race": {"gaps": {"demographic_parity_difference": float("nan")}, "overall": {"accuracy": 0.9}},
    }
    checks = check_gate(
        results,
        [
            ("demographic_parity_difference", "max", 0.25),
            ("sex/demographic_parity_difference", "max", 0.1),
            ("worst_group_accuracy", "min", 0.85),
            ("overall_accuracy", "min", 0.85),
            ("race/demographic_parity_difference", "max", 1.0),
        ],
        "sex",
        "test",
    )
    assert [c.passed for c in checks] == [True, False, False, True, False]  # an undefined gap fails
    assert "FAILED: sex/demographic_parity_difference = 0.2000 (must be <= 0.1)" == str(checks[1])
    with pytest.raises(ValueError, match=ERR_GATE_METRIC.split("{")[0]):
        check_gate(results, [("dp_diff", "max", 0.1)], "sex", "test")


def test_evaluate_writes_report_and_plots_and_gate_exit_codes(saved_model):
    run = _evaluate(
        saved_model, "--max", "demographic_parity_difference=1.0", "--compare", str(saved_model / "model")
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert "fairness gate passed" in run.stdout and "== test: sex ==" in run.stdout
    out = saved_model / "model" / "model_audit"
    for name in ("fairness_report.json", "fairness_report.md", "model_audit.json", "comparison.md"):
        assert (out / name).stat().st_size > 0, name
    for kind in ("rates", "roc", "calibration", "scores", "comparison"):
        png = out / f"{kind}_sex.png"
        assert png.read_bytes()[:4] == b"\x89PNG" and png.stat().st_size > 2000, kind
    report = json.loads((out / "fairness_report.json").read_text())
    assert report["splits"]["test"]["sex"]["overall"]["count"] == 120
    assert "| demographic_parity_difference |" in (out / "comparison.md").read_text()
    assert "+0.000" in (out / "comparison.md").read_text()  # a model compared with itself changes nothing

    failed = _evaluate(
        saved_model, "--max", "demographic_parity_difference=-1", "--min", "overall_accuracy=1.01"
    )
    assert failed.returncode == 1
    assert "fairness gate failed" in failed.stderr and "demographic_parity_difference" in failed.stderr
    assert "overall_accuracy" in failed.stderr and "Traceback" not in failed.stderr
    typo = _evaluate(saved_model, "--max", "dp_difference=0.1")
    assert typo.returncode == 1 and "Valid names:" in typo.stderr and "Traceback" not in typo.stderr
    missing = _evaluate(saved_model, "--model", str(saved_model / "nowhere"))
    assert missing.returncode == 1 and "not a folder with a saved model" in missing.stderr


def test_model_card_never_overwrites_a_users_readme(tmp_path):
    (tmp_path / "README.md").write_text("my notes")
    path = write_model_card(str(tmp_path), f"card\n{MARKER}\n")
    assert Path(path).name == FALLBACK_FILE and (tmp_path / "README.md").read_text() == "my notes"
    other = tmp_path / "ours"
    other.mkdir()
    first = write_model_card(str(other), f"v1\n{MARKER}\n")
    second = write_model_card(str(other), f"v2\n{MARKER}\n")
    assert first == second and Path(second).name == "README.md" and Path(second).read_text().startswith("v2")
