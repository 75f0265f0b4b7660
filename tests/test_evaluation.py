"""Model audit of a saved model, comparison, fairness gate exit codes, and the model card of a run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import WORDS, fair_args, text_dataset, tiny_bert

from fairtune import FairTrainer, cli
from fairtune import evaluation as ev
from fairtune.evaluation import ERR_GATE_METRIC, ERR_GATE_SPEC, check_gate, gate_names, parse_gate
from fairtune.metrics import GroupResult
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


def _evaluate_args(tmp: Path, *extra: str) -> list[str]:
    args = ["--model", str(tmp / "model"), "--train_file", str(tmp / "train.csv")]
    args += ["--test_file", str(tmp / "test.csv"), "--group_by", "sex", "--bootstrap_samples", "50"]
    return [*args, *extra]


def _evaluate(tmp: Path, *extra: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "fairtune.cli", "evaluate", *_evaluate_args(tmp, *extra)]
    return subprocess.run(
        cmd, capture_output=True, text=True, timeout=300, cwd=ROOT, env={**os.environ, "HF_HUB_OFFLINE": "1"}
    )


def _result(grouping: str, gaps: dict[str, float], accuracy: float = 0.9, classes: int = 2) -> GroupResult:
    return GroupResult(grouping, classes, [str(c) for c in range(classes)], {"accuracy": accuracy}, {}, gaps)


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
        "sex": _result("sex", {"demographic_parity_difference": 0.2, "worst_group_accuracy": 0.8}),
        "race": _result("race", {"demographic_parity_difference": float("nan")}),
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
    out = saved_model / "audit_out"
    run = _evaluate(
        saved_model,
        "--max",
        "demographic_parity_difference=1.0",
        "--compare",
        str(saved_model / "model"),
        "--output_dir",
        str(out),
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert "fairness gate passed" in run.stdout and "== test: sex ==" in run.stdout
    # --output_dir is honoured: nothing goes into the model's own folder.
    assert not (saved_model / "model" / "model_audit").exists()
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
    assert typo.returncode == 2 and "Valid names:" in typo.stderr and "Traceback" not in typo.stderr
    missing = _evaluate(saved_model, "--model", str(saved_model / "nowhere"))
    assert missing.returncode == 2 and "not a folder with a saved model" in missing.stderr


def test_model_card_never_overwrites_a_users_readme(tmp_path):
    (tmp_path / "README.md").write_text("my notes")
    path = write_model_card(str(tmp_path), f"card\n{MARKER}\n")
    assert Path(path).name == FALLBACK_FILE and (tmp_path / "README.md").read_text() == "my notes"
    other = tmp_path / "ours"
    other.mkdir()
    first = write_model_card(str(other), f"v1\n{MARKER}\n")
    second = write_model_card(str(other), f"v2\n{MARKER}\n")
    assert first == second and Path(second).name == "README.md" and Path(second).read_text().startswith("v2")


def test_gate_names_are_known_before_evaluating():
    binary = gate_names(["sex", "race"], "sex", 2)
    assert {"demographic_parity_difference", "overall_accuracy", "race/equalized_odds_ratio"} <= set(binary)
    assert "race/overall_tpr" in binary and "overall_tpr_0" not in binary
    multi = gate_names(["sex"], "sex", 3)
    assert "demographic_parity_difference" in multi and "overall_selection_rate_2" in multi
    assert "equalized_odds_difference" not in multi  # binary-only gaps


def test_refused_evaluate_evaluates_and_writes_nothing(saved_model, tmp_path, monkeypatch, capsys):
    def must_not_run(*args, **kwargs):
        raise AssertionError("a refused run must not evaluate a model")

    monkeypatch.setattr(ev, "evaluate_model", must_not_run)
    out = tmp_path / "audit"
    for extra, message in [
        (("--max", "dp_difference=0.1"), "Valid names:"),
        (("--min", "race/worst_group_accuracy=0.5"), "Valid names:"),  # the model has no race grouping
        (("--max", "demographic_parity_ratio=0.1", "--compare", str(tmp_path)), "not a folder with a saved"),
        (("--learning_rate", "3e-5"), "does not use --learning_rate"),
        (("--audit_dir", str(out)), "--audit_dir is an option of `fairtune audit-data`"),
    ]:
        with pytest.raises(SystemExit) as exit_info:
            cli.evaluate_main(_evaluate_args(saved_model, "--output_dir", str(out), *extra))
        assert exit_info.value.code == cli.EXIT_USER_ERROR, extra
        assert message in capsys.readouterr().err, extra
        assert not out.exists()


def test_compare_table_skips_absent_gaps_and_marks_undefined():
    a = ev.ModelEvaluation("test", "a", {}, {}, None, None, {}, {}, "g")
    b = ev.ModelEvaluation("test", "b", {}, {}, None, None, {}, {}, "g")
    a.results["g"] = _result("g", {"demographic_parity_difference": 0.2, "tpr_gap_rms": float("nan")}, 0.8, 3)
    b.results["g"] = _result("g", {"demographic_parity_difference": 0.1, "tpr_gap_rms": 0.3}, 0.7, 3)
    text = ev.compare_markdown(a, b, ("a", "b"))
    assert "nan" not in text and "equalized_odds_difference" not in text
    assert "| demographic_parity_difference | 0.200 | 0.100 | -0.100 |" in text
    assert "| tpr_gap_rms | – | 0.300 | – |" in text


def test_multiclass_tables_show_class_names_and_dp():
    from fairtune.functional import metric_frame
    from fairtune.report import gap_table, group_table

    result = metric_frame([0, 1, 2, 2, 1, 0], [0, 2, 2, 1, 1, 0], sensitive_features=list("aabbab"))
    named = GroupResult.from_dict(result.to_dict(), grouping="g", class_names=["cat", "dog", "eel"])
    table = group_table(named)
    assert "tpr[dog]" in table and "selection_rate[eel]" in table and "tpr_1" not in table
    assert "| demographic_parity_difference |" in gap_table(named)
