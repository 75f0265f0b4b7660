"""The benchmark harness cannot rot: CI runs the tiny suite through the runner and the report."""

from __future__ import annotations

import importlib.util
import json
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_tiny_suite_runs_resumes_and_reports(tmp_path):
    run, report = _load("run"), _load("report")
    results = tmp_path / "ci_tiny.jsonl"
    suite = str(ROOT / "benchmarks" / "suites" / "ci_tiny.yaml")
    run.main(["--suite", suite, "--results", str(results), "--limit", "1"])
    assert len(results.read_text().splitlines()) == 1  # a run killed here resumes from this row
    run.main(["--suite", suite, "--results", str(results)])
    rows = [json.loads(line) for line in results.read_text().splitlines()]
    assert [r["method"] for r in rows] == ["erm", "demographic_parity"]
    for row in rows:
        assert 0 <= row["demographic_parity_difference"] <= 1 and 0 < row["accuracy"] <= 1
        assert row["seed"] == 0 and row["wall_time_s"] > 0 and row["machine"]["cores"] >= 1
    run.main(["--suite", suite, "--results", str(results)])
    assert len(results.read_text().splitlines()) == 2  # nothing repeated
    report.main(["--results", str(results), "--out", str(tmp_path / "report")])
    summary = (tmp_path / "report" / "summary.md").read_text()
    assert "| erm | 1 |" in summary and "FFB ERM, published" in summary
    for tag in ("dp", "eo"):
        png = tmp_path / "report" / f"pareto_compas_tabular_{tag}.png"
        assert png.read_bytes()[:4] == b"\x89PNG"


def test_pareto_front_and_suite_errors(tmp_path):
    run, report = _load("run"), _load("report")
    points = [(0.1, 0.8), (0.2, 0.85), (0.15, 0.7), (0.05, 0.6), (0.3, 0.85)]
    assert report.pareto_front(points) == [3, 0, 1]
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nresults: r.jsonl\nseeds: [0]\ndatasets: {d: {kind: video}}\nmethods: []\n")
    with pytest.raises(ValueError, match="kind must be 'tabular', 'text' or 'lm'"):
        run.load_suite(str(bad))
    bad.write_text("")
    with pytest.raises(ValueError, match="the file is empty or not a YAML mapping"):
        run.load_suite(str(bad))
    with pytest.raises(ValueError, match="does not exist"):
        run.load_suite(str(tmp_path / "none.yaml"))
    bad.write_text("name: [\n")
    with pytest.raises(ValueError, match=r"(?s)bad.yaml is not valid YAML: .*line 2"):
        run.load_suite(str(bad))
    head = "name: x\nresults: r.jsonl\n"
    for body, key in [
        ("seeds: 0\ndatasets: {}\nmethods: []\n", "'seeds' must be a non-empty list of integers"),
        ("seeds: [0]\ndatasets: [a]\nmethods: []\n", "'datasets' must be a mapping"),
        (
            "seeds: [0]\ndatasets: {}\nmethods: [{args: {}}]\n",
            "'methods' must be a list of mappings, each with",
        ),
    ]:
        bad.write_text(head + body)
        with pytest.raises(ValueError, match=key):
            run.load_suite(str(bad))
    with pytest.raises(
        SystemExit, match="run.py: Suite .* must be"
    ):  # the command line: one line, no traceback
        run.main(["--suite", str(bad)])
    with pytest.raises(SystemExit):  # flags are spelled out: no prefix matching
        run.main(["--sui", str(bad)])
    runs = run.expand(run.load_suite(str(ROOT / "benchmarks" / "suites" / "cpu_tabular.yaml")))
    assert len({run.run_key(r) for r in runs}) == len(runs) >= 90
    # Seed-major within a dataset: every method of the first seed before any run of the second.
    adult = [r["seed"] for r in runs if r["dataset"] == runs[0]["dataset"]]
    assert adult == sorted(adult)


@pytest.mark.slow
def test_text_dataset_runs_through_the_runner(tmp_path):
    """The MiniLM text path of the runner (a few steps), with post-processing, an adversary and fairlearn's
    peers (on the fine-tuned model's scores and on frozen embeddings)."""
    run = _load("run")
    suite = tmp_path / "text.yaml"
    suite.write_text(
        "name: text_tiny\nresults: r.jsonl\nseeds: [0]\n"
        "datasets:\n  adult_text:\n    kind: text\n    config: configs/quickstart.yaml\n"
        "    overrides: {eval_strategy: 'no', max_train_samples: 48, max_eval_samples: 64, "
        "max_test_samples: 64, max_steps: 2}\n"
        "methods:\n  - {name: thresholds_dp, args: {post_processing: demographic_parity}}\n"
        "  - {name: adversary, args: {adversary: group, adversary_input: hidden, adversary_weight: 0.1}}\n"
        "peers: [threshold_optimizer_dp, expgrad_eo]\n"
    )
    results = tmp_path / "text.jsonl"
    run.main(["--suite", str(suite), "--results", str(results)])
    rows = [json.loads(line) for line in results.read_text().splitlines()]
    assert [r["method"] for r in rows] == [
        "thresholds_dp",
        "adversary",
        "threshold_optimizer_dp",
        "expgrad_eo",
    ]
    assert all(0 < r["accuracy"] <= 1 and r["dataset"] == "adult_text" for r in rows)
    # fairlearn's ThresholdOptimizer on the unmitigated model's scores, fitted on validation as ours is.
    assert rows[2]["demographic_parity_difference"] < 0.2


def test_lm_dataset_runs_through_the_runner(tmp_path):
    """The causal-LM path of the runner on a tiny saved model and a local corpus: no method and CDA with
    the consistency penalty, a null in a method's args, stereotype scores in the rows."""
    import yaml
    from lm_helpers import tiny_model, word_tokenizer

    run = _load("run")
    sentences = ["He works as an engineer.", "She works as a nurse.", "The cat sat on the mat."] * 8
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(f"{s} Row {i}." for i, s in enumerate(sentences)))
    words = [
        *sentences,
        "she he woman man women men people poor rich",
        " ".join(f"Row {i}" for i in range(30)),
    ]
    tokenizer = word_tokenizer(words)
    model_dir = tmp_path / "tiny"
    tiny_model(len(tokenizer)).save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    overrides = {
        "model_name_or_path": str(model_dir),
        "use_lora": False,
        "train_file": str(corpus),
        "max_steps": 2,
        "lm_monitor": [],
        "eval_strategy": "no",
        "lm_report_benchmarks": ["crows_pairs"],
        "lm_report_max_examples": 6,
        "max_eval_samples": 4,
        "max_test_samples": 4,
    }
    suite = {
        "name": "lm_tiny",
        "results": str(tmp_path / "lm.jsonl"),
        "seeds": [0],
        "datasets": {"tiny": {"kind": "lm", "config": "configs/lm_quickstart.yaml", "overrides": overrides}},
        "methods": [
            {"name": "none", "args": {"counterfactual_augmentation": None, "penalty": None}},
            {"name": "cda_consistency", "args": {"counterfactual_augmentation": "add"}},
        ],
    }
    path = tmp_path / "suite.yaml"
    path.write_text(yaml.safe_dump(suite))
    run.main(["--suite", str(path)])
    rows = [json.loads(line) for line in (tmp_path / "lm.jsonl").read_text().splitlines()]
    assert [r["method"] for r in rows] == ["pretrained", "none", "cda_consistency"]
    for row in rows:
        assert 0 <= row["crows_pairs/gender/pct_stereotype"] <= 100 and row["perplexity"] > 1
        assert "test_gender/male/loss" in row
    # The untrained row is the model as saved; two steps of training move its held-out perplexity.
    assert rows[0]["perplexity"] != rows[1]["perplexity"]
    suite["methods"].append({"name": "pretrained", "args": {}})
    path.write_text(yaml.safe_dump(suite))
    with pytest.raises(ValueError, match="'pretrained' is reserved"):
        run.load_suite(str(path))


def test_suite_overrides_reach_the_config_as_typed():
    """A mapping (``*_options``) reaches the parsed config as the same mapping, a list as the list, a null
    unset: the runner passes each through the command line's own syntax."""
    run = _load("run")
    spec = {"config": "configs/quickstart.yaml", "overrides": {"eval_strategy": "no"}}
    params = {
        "constraints": ["demographic_parity_difference <= 0.05"],
        "constraint_options": {"momentum": 0.98, "multiplier_lr": 0.5},
        "counterfactual_augmentation": None,
    }
    parsed = run.parsed_config(spec, {"params": params, "seed": 3}, "unused_dir")
    values = {key: getattr(next(t for t in parsed if hasattr(t, key)), key) for key in [*params, "seed"]}
    assert values == {**params, "seed": 3}


def test_lm_report_table_changes_and_plot(tmp_path):
    """The LM table's numbers from hand-made rows: means over seeds, moves toward 50 against the untrained
    row (a score crossing 50 counts by its distance), LMS in points, perplexity in percent."""
    report = _load("report")

    def row(method: str, seed: int, crows: float, ss: float, lms: float, ppl: float) -> dict:
        scores = {
            "crows_pairs/overall/pct_stereotype": 60.0,
            "crows_pairs/gender/pct_stereotype": crows,
            "crows_pairs/gender/pct_stereotype_normalized": crows - 1,
            "stereoset/gender/ss": ss,
            "stereoset/gender/lms": lms,
            "stereoset/gender/icat": lms * min(ss, 100 - ss) / 50,
            "perplexity": ppl,
        }
        return {
            "dataset": "corpus",
            "method": method,
            "params": {},
            "seed": seed,
            "wall_time_s": 1.0,
            **scores,
        }

    rows = [
        row("pretrained", 0, 58.0, 60.0, 80.0, 50.0),
        row("cda", 0, 53.0, 57.0, 79.0, 51.0),
        row("cda", 1, 55.0, 55.0, 79.5, 53.0),
        row("over", 0, 44.0, 61.0, 81.0, 40.0),
    ]
    results = tmp_path / "lm.jsonl"
    results.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    published = tmp_path / "published.json"
    ref = {"name": "paper base", "crows_pairs/gender/pct_stereotype": 59.0, "stereoset/gender/ss": 60.0}
    cda = {"name": "paper cda", "crows_pairs/gender/pct_stereotype": 58.0, "stereoset/gender/ss": 59.5}
    published.write_text(
        json.dumps(
            {
                "corpus": [
                    {**ref, "stereoset/gender/lms": 90},
                    {**cda, "stereoset/gender/lms": 89},
                    cda | {"name": "x"},
                ]
            }
        )
    )
    out = tmp_path / "out"
    report.main(["--results", str(results), "--out", str(out), "--reference", str(published)])
    lines = (out / "summary.md").read_text().splitlines()
    cells = {line.split(" | ")[0].strip("| "): line.split(" | ") for line in lines if line.startswith("| ")}
    # cda: CrowS mean 54 (4 closer to 50 than 58), SS mean 56 (4 closer than 60), LMS -0.75, ppl +4%.
    assert cells["cda"][2] == "54.00 ± 1.41" and cells["cda"][8:12] == ["+4.00", "+4.00", "-0.75", "+4.0%"]
    # over: CrowS 44 is 6 from 50, pretrained was 8 away: +2; SS 61 is one point further: -1; ppl -20%.
    assert cells["over"][8:12] == ["+2.00", "-1.00", "+1.00", "-20.0%"]
    assert cells["pretrained"][8] == "–" and lines.index(next(x for x in lines if "| pretrained" in x)) == 4
    assert cells["paper cda"][8:12] == ["+1.00", "+0.50", "-1.00", "–"]
    assert cells["x"][8:12] == ["+1.00", "+0.50", "–", "–"]  # a published row without LMS: no change shown
    assert (out / "lm_corpus.png").read_bytes()[:4] == b"\x89PNG"


def test_report_refuses_bad_results_and_references_before_writing(tmp_path):
    report = _load("report")
    out = tmp_path / "out"
    row = {"dataset": "d", "method": "erm", "params": {}, "seed": 0, "wall_time_s": 1.0, "accuracy": 0.9}
    good = tmp_path / "good.jsonl"
    good.write_text(json.dumps(row) + "\n")
    empty, broken, foreign, bad_ref = (tmp_path / n for n in ("e.jsonl", "b.jsonl", "f.jsonl", "r.json"))
    empty.write_text("\n")
    broken.write_text(json.dumps(row) + "\n{oops\n")
    foreign.write_text(json.dumps({"dataset": "d", "accuracy": 0.9}) + "\n")
    bad_ref.write_text("[1, 2]")
    cases = [
        (["--results", str(tmp_path / "none.jsonl")], "does not exist; run benchmarks/run.py first"),
        (["--results", str(empty)], "holds no rows"),
        (["--results", str(broken)], "b.jsonl line 2 is not JSON"),
        (
            ["--results", str(foreign)],
            "line 1 is not a run.py row (missing method, params, seed, wall_time_s)",
        ),
        (["--results", str(good), "--reference", str(bad_ref)], "must map dataset names to published rows"),
        (["--results", str(good), "--reference", str(tmp_path / "no.json")], "reference file"),
    ]
    for argv, message in cases:
        with pytest.raises(SystemExit, match=re.escape(message)):
            report.main([*argv, "--out", str(out)])
        assert not out.exists()
    with pytest.raises(SystemExit):  # flags are spelled out: no prefix matching
        report.main(["--result", str(good), "--out", str(out)])
    report.main(["--results", str(good), "--out", str(out), "--reference", ""])
    assert "| erm | 1 |" in (out / "summary.md").read_text()
