"""``fairtune monitor``: a history of periods, trend plots, the drift test and the gate, on a saved tiny model
and a synthetic sequence of batches whose bias grows."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import WORDS

from fairtune import cli
from fairtune import evaluation as ev
from fairtune import monitor as mon
from fairtune.metrics import GroupResult, GroupStats
from fairtune.monitor import (
    ERR_ALPHA,
    ERR_DATA_MISSING,
    ERR_GATE_NEEDS_LABELS,
    ERR_HISTORY_LINE,
    ERR_HISTORY_MODEL,
    ERR_PERIOD_EXISTS,
    MONITOR_OPTIONS,
    append_history,
    bootstrap_standard_errors,
    drift_test,
    monitor_main,
    read_history,
)

ROOT = Path(__file__).resolve().parent.parent
HIGH, LOW = "high income", "low income"


def _decisive_model(folder: Path) -> Path:
    """An untrained tiny BERT whose head is set so that HIGH rows are predicted class 1 (P = 0.88) and LOW
    rows class 0: predictions follow the text exactly, so a batch's selection rates are the shares of HIGH
    rows planted in it. Saved with tokenizer and group vocabulary, as evaluate_model expects."""
    import datasets
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizer

    from fairtune.groups import GroupVocabulary

    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]
    tokenizer = BertTokenizer(vocab={w: i for i, w in enumerate(words)})
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=64,
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=64,
        num_labels=2,
        initializer_range=1.0,  # at the default 0.02 every text gets nearly the same logits
    )
    model = BertForSequenceClassification(config).eval()
    with torch.no_grad():
        pooled = model.bert(**tokenizer([HIGH, LOW], padding=True, return_tensors="pt")).pooler_output
        weight, bias = model.classifier.weight, model.classifier.bias
        u, c = weight[1] - weight[0], bias[1] - bias[0]
        margin = pooled @ u + c  # (2,) logit of class 1 minus class 0
        scale, middle = 4.0 / (margin[0] - margin[1]), margin.mean()
        weight.copy_(torch.stack([torch.zeros_like(u), scale * u]))  # HIGH: +2, LOW: -2
        bias.copy_(torch.stack([torch.zeros_like(c), scale * (c - middle)]))
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    GroupVocabulary("sex").fit(datasets.Dataset.from_dict({"sex": ["Female", "Male"]})).save(str(folder))
    return folder


def _batch(path: Path, male: float, female: float, n: int = 200, labelled: bool = True) -> str:
    """n rows per group with exactly round(n * share) HIGH rows; labels follow the text except every tenth row
    (accuracy 0.9 in each group)."""
    rows = []
    for sex, share in (("Male", male), ("Female", female)):
        for i in range(n):
            high = i < round(n * share)
            row = {"text": HIGH if high else LOW, "sex": sex}
            if labelled:
                row["label"] = int(high) ^ int(i % 10 == 9)
            rows.append(row)
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return str(path)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """The saved model, a config, and four batches: the Female selection rate 0.45, 0.45, 0.40, 0.10
    against 0.50 for men (DP difference 0.05, 0.05, 0.10, 0.40), plus the last one without labels."""
    tmp = tmp_path_factory.mktemp("monitor")
    model = _decisive_model(tmp / "model")
    config = tmp / "config.yaml"
    # A training config: its data files need not exist where the model is monitored, and any key may be in it.
    config.write_text(
        "group_by: sex\ntrain_file: /nowhere/train.csv\nlearning_rate: 1.0e-4\nbootstrap_samples: 200\n"
        "per_device_eval_batch_size: 128\nuse_cpu: true\nreport_to: none\n"
    )
    batches = [
        _batch(tmp / f"batch{k}.csv", 0.5, female) for k, female in enumerate((0.45, 0.45, 0.40, 0.10), 1)
    ]
    unlabelled = _batch(tmp / "unlabelled.csv", 0.5, 0.10, labelled=False)
    return {
        "tmp": tmp,
        "model": str(model),
        "config": str(config),
        "batches": batches,
        "unlabelled": unlabelled,
    }


def _monitor(setup: dict, data: str, history: Path, *extra: str) -> tuple[int, str, str]:
    """Run ``monitor_main`` in this process; (exit status, stdout, stderr)."""
    argv = ["--model", setup["model"], "--config", setup["config"], "--data", data, "--history", str(history)]
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            monitor_main([*argv, *extra])
            code = 0
        except SystemExit as exit_info:
            code = exit_info.code
    return code, out.getvalue(), err.getvalue()


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in folder.iterdir()} if folder.exists() else {}


@pytest.fixture(scope="module")
def sequence(setup):
    """The four batches monitored in turn as periods 2026-w1 .. 2026-w4 into one history; the history file's
    text after each run."""
    history = setup["tmp"] / "history"
    runs, texts = [], []
    for k, batch in enumerate(setup["batches"], 1):
        runs.append(_monitor(setup, batch, history, "--period", f"2026-w{k}"))
        texts.append((history / "history.jsonl").read_text())
    return {"history": history, "runs": runs, "texts": texts}


def test_growing_bias_is_recorded_drawn_and_alarmed(setup, sequence):
    history, runs, texts = sequence["history"], sequence["runs"], sequence["texts"]
    assert [code for code, _, _ in runs] == [0, 0, 0, 1], [err[-2000:] for _, _, err in runs]
    for k, text in enumerate(texts, 1):
        # One line per period; earlier lines are kept byte for byte.
        assert text.count("\n") == k and text.startswith(texts[k - 2] if k > 1 else ""), k
    err = runs[-1][2]
    assert "Traceback" not in err and "fairtune: monitor alarm:" in err
    assert "adverse move: sex/demographic_parity_difference 0.100 -> 0.400" in err
    assert "no significant adverse move" in runs[2][1]

    records = read_history(str(history))
    assert [r.period for r in records] == ["2026-w1", "2026-w2", "2026-w3", "2026-w4"]
    gaps = [r.results["sex"].gaps["demographic_parity_difference"] for r in records]
    assert gaps == pytest.approx([0.05, 0.05, 0.10, 0.40])
    last = records[-1]
    assert last.labelled and last.rows == 400 and last.data_file == setup["batches"][-1]
    assert last.results["sex"].by_group["Female"]["selection_rate"] == pytest.approx(0.10)
    assert last.results["sex"].by_group["Female"]["count"] == 200
    low, high = last.results["sex"].intervals["demographic_parity_difference"]
    assert low < 0.40 < high and last.settings["bootstrap_samples"] == 200
    assert sum(last.score_histograms["sex"]["Male"]) == 200
    # The drift test's standard errors: one per gap, from the replicates behind the intervals.
    assert set(last.standard_errors["sex"]) == set(last.results["sex"].gaps)
    assert 0.0 < last.standard_error("sex", "demographic_parity_difference") < high - low
    line = json.loads(texts[-1].splitlines()[-1])  # strict JSON: no NaN in the file
    assert line["format"] == mon.RECORD_FORMAT and line["model_fingerprint"] == last.model_fingerprint

    for name in ("trend_sex.png", "scores_sex.png"):
        png = history / name
        assert png.read_bytes()[:4] == b"\x89PNG" and png.stat().st_size > 5000, name
    summary = (history / "monitor_summary.md").read_text()
    assert "previous period: `2026-w3`" in summary and "| ADVERSE |" in summary
    assert "| Female | 200 | 0.100 | 200 | 0.400 |" in summary


def test_drift_checks_between_periods(sequence):
    """The stable step (same batch composition) is tested and passes; the step 0.05 -> 0.10 is too small to
    alarm; the jump to 0.40 alarms in the gaps it moves and not in those it leaves alone."""
    records = read_history(str(sequence["history"]))
    stable, small, jump = (mon.drift_checks(a, b) for a, b in zip(records, records[1:], strict=False))
    assert all(c.tested and not c.adverse for c in stable + small)
    dp = {c.gap: c for c in jump}
    assert dp["demographic_parity_difference"].adverse and dp["demographic_parity_ratio"].adverse
    assert dp["demographic_parity_ratio"].worse_when == "down" and dp["demographic_parity_ratio"].change < 0
    assert not dp["accuracy_difference"].adverse  # 0.9 accuracy in both groups, both periods


def test_gate_breach_gives_status_1_and_is_drawn(setup):
    history = setup["tmp"] / "gated"
    # Explicit periods: the default label is the time to the second, and two calls can share a second.
    code, out, err = _monitor(
        setup, setup["batches"][0], history, "--period", "p1", "--max", "demographic_parity_difference=0.01"
    )
    assert code == cli.EXIT_GATE_FAILED == 1
    assert "gate failed: demographic_parity_difference = 0.0500 (must be <= 0.01)" in err
    assert "FAILED: demographic_parity_difference" in out
    assert len(read_history(str(history))) == 1  # the period is recorded all the same
    code, out, err = _monitor(
        setup,
        setup["batches"][1],
        history,
        "--period",
        "p2",
        "--max",
        "sex/demographic_parity_difference=0.2",
    )
    assert code == 0 and "ok: sex/demographic_parity_difference" in out, err


def test_default_history_is_in_the_model_folder_and_follows_the_model_when_moved(setup, sequence, tmp_path):
    moved = tmp_path / "moved_model"
    shutil.copytree(setup["model"], moved)
    argv = ["--model", str(moved), "--config", setup["config"], "--data", setup["batches"][0]]
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        monitor_main(argv)
    (record,) = read_history(str(moved / "monitor"))
    assert record.period.endswith("Z") and record.model == str(moved)  # default period: the UTC time
    assert record.model_fingerprint == read_history(str(sequence["history"]))[0].model_fingerprint
    assert (moved / "monitor" / "trend_sex.png").is_file()


def test_batch_without_labels_measures_selection_rates_only(setup):
    history = setup["tmp"] / "unlabelled"
    code, _, err = _monitor(setup, setup["batches"][3], history, "--period", "labelled")
    assert code == 0, err
    code, out, err = _monitor(
        setup,
        setup["unlabelled"],
        history,
        "--period",
        "no labels",
        "--max",
        "demographic_parity_difference=0.5",
    )
    assert code == 0, err
    labelled, free = (r.results["sex"] for r in read_history(str(history)))
    assert not read_history(str(history))[1].labelled
    assert set(free.gaps) == set(mon.LABEL_FREE_GAPS) and set(free.intervals) == set(mon.LABEL_FREE_GAPS)
    assert set(free.by_group["Male"]) == {"count", "selection_rate"}
    # The same rows with and without labels: the same selection rates, gaps and intervals.
    for gap in mon.LABEL_FREE_GAPS:
        assert free.gaps[gap] == pytest.approx(labelled.gaps[gap])
        assert free.intervals[gap] == pytest.approx(labelled.intervals[gap])
    assert not any("undefined" in w for w in free.warnings)
    assert "Drift test not run for 5 gap(s): not measured in the latest period" in out
    assert (history / "scores_sex.png").stat().st_size > 5000

    # A gate on a label-based metric is refused before anything is evaluated.
    before = _files(history)
    code, _, err = _monitor(
        setup, setup["unlabelled"], history, "--min", "worst_group_accuracy=0.5", "--period", "x"
    )
    message = ERR_GATE_NEEDS_LABELS.format(
        path=setup["unlabelled"],
        column="label",
        names="worst_group_accuracy",
        valid="demographic_parity_difference, demographic_parity_ratio, overall_count, "
        "overall_selection_rate",
    )
    assert code == 2 and err.splitlines()[-1] == f"fairtune: error: {message}"
    assert _files(history) == before


def test_without_intervals_the_drift_test_says_it_did_not_run(setup):
    history = setup["tmp"] / "no_bootstrap"
    for k, batch in enumerate(setup["batches"][2:]):
        code, out, err = _monitor(setup, batch, history, "--bootstrap_samples", "0", "--period", f"b{k}")
    assert code == 0, err  # DP 0.10 -> 0.40, but no interval: no alarm, and said so
    assert "Drift test not run for 7 gap(s): no bootstrap replicates in the previous period" in out
    assert "not tested: no bootstrap replicates" in (history / "monitor_summary.md").read_text()


def test_refused_runs_evaluate_and_write_nothing(setup, sequence, monkeypatch, tmp_path):
    def must_not_run(*args, **kwargs):
        raise AssertionError("a refused run must not evaluate a model")

    monkeypatch.setattr(ev, "evaluate_model", must_not_run)
    monkeypatch.setattr(mon, "predict_unlabelled", must_not_run)
    history = tmp_path / "history"
    history.mkdir()
    # A history with one period of this model, recorded by the monitor itself, under label "w1".
    line = json.loads(sequence["texts"][0])
    (history / "history.jsonl").write_text(json.dumps(line | {"period": "w1"}) + "\n")
    other = tmp_path / "other"
    other.mkdir()
    foreign = line | {"model": "/models/another", "model_fingerprint": "0123456789abcdef"}
    (other / "history.jsonl").write_text(json.dumps(foreign) + "\n")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "history.jsonl").write_text(json.dumps(line) + "\n{not json\n")
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    missing = str(tmp_path / "gone.csv")
    batch = setup["batches"][0]
    model = setup["model"]
    cases = [
        ((missing, history), "", ERR_DATA_MISSING.format(path=missing)),
        ((str(empty), history), "", f"Data file {str(empty)!r} is empty"),
        ((batch, other), "", ERR_HISTORY_MODEL.split("{")[0]),
        ((batch, broken), "", ERR_HISTORY_LINE.split("(")[0].format(path=broken / "history.jsonl", line=2)),
        ((batch, history, "--max", "dp_difference=0.1"), "", "Valid names:"),
        ((batch, history, "--min", "race/worst_group_accuracy=0.5"), "", "Valid names:"),
        ((batch, history, "--period", "w1"), "", ERR_PERIOD_EXISTS.split("{")[0]),
        ((batch, history, "--alpha", "2"), "", ERR_ALPHA.format(value="2")),
        ((batch, history, "--learning_rate", "3e-5"), "", "does not use --learning_rate"),
        ((batch, history, "--train_file", batch), "", "does not use --train_file"),
        ((batch, history, "--group_by", "race"), "", "does not use --group_by"),
        ((batch, history, "--audit_dir", "x"), "", "--audit_dir is an option of `fairtune audit-data`"),
        ((batch, history), str(tmp_path), "not a folder with a saved model"),
    ]
    before = {folder: _files(folder) for folder in (history, other, broken)}
    for (data, folder, *extra), model_dir, message in cases:
        used = dict(setup, model=model_dir or model)
        code, _, err = _monitor(used, data, folder, *extra)
        assert code == cli.EXIT_USER_ERROR == 2, (extra, err)
        errors = [line for line in err.splitlines() if line.startswith("fairtune: ")]
        assert len(errors) == 1 and errors[0].startswith("fairtune: error: "), (extra, err)
        assert message in errors[0] and "Traceback" not in err, (extra, err)
        assert {f: _files(f) for f in before} == before, extra
    assert not (Path(model) / "monitor").exists()


def test_labels_must_map_to_the_models_classes(setup, tmp_path):
    one_class = tmp_path / "one_class.csv"
    one_class.write_text(f"text,sex,label\n{HIGH},Male,1\n{LOW},Female,1\n")
    code, _, err = _monitor(setup, str(one_class), tmp_path / "h")
    assert code == 2 and "holds 1, but the model has 2 classes (0, 1)" in err
    assert not (tmp_path / "h").exists()


def test_drift_test_arithmetic():
    def result(gap: str, value: float) -> GroupResult:
        return GroupResult("g", 2, ["0", "1"], {}, {}, {gap: value})

    gap, se = "demographic_parity_difference", 0.025
    check = drift_test(result(gap, 0.10), result(gap, 0.20), gap, (se, se))
    assert check.z == pytest.approx(0.1 / (math.sqrt(2) * se)) and check.p_value == pytest.approx(
        0.00234, abs=1e-5
    )
    assert check.adverse and check.verdict() == "ADVERSE" and check.worse_when == "up"
    assert not drift_test(result(gap, 0.10), result(gap, 0.14), gap, (se, se)).adverse  # z = 1.13
    # An improvement never alarms; ratios and worst-group accuracy are less fair when they fall.
    assert not drift_test(result(gap, 0.20), result(gap, 0.10), gap, (se, se)).adverse
    ratio = "demographic_parity_ratio"
    assert drift_test(result(ratio, 0.9), result(ratio, 0.7), ratio, (se, se)).adverse
    assert not drift_test(result(ratio, 0.7), result(ratio, 0.9), ratio, (se, se)).adverse
    missing = drift_test(result(gap, 0.1), result(gap, 0.4), gap, (math.nan, se))
    assert not missing.tested and not missing.adverse
    assert (
        missing.verdict()
        == "not tested: no bootstrap replicates in the previous period (bootstrap_samples: 0)"
    )
    flat = drift_test(result(gap, 0.1), result(gap, 0.1), gap, (0.0, 0.0))
    assert flat.tested and not flat.adverse
    with pytest.raises(ValueError, match="--alpha"):
        drift_test(result(gap, 0.1), result(gap, 0.4), gap, (se, se), alpha=0.0)


def _period(rng: np.random.Generator, rates: tuple[float, float], n: int) -> tuple[GroupResult, dict]:
    """A period's result and bootstrap standard errors on n rows per group, predicted positive at ``rates``.

    The Poisson bootstrap is drawn per confusion cell: a cell's replicate count is a sum of Poisson(1) row
    weights, i.e. Poisson(cell count), the distribution ``GroupStats.update`` draws row by row (100 times
    slower). The label is constant, as for a batch without labels.
    """
    positives = rng.binomial(n, rates)
    conf = np.zeros((2, 2, 2), dtype=np.int64)
    conf[:, 0, 1], conf[:, 0, 0] = positives, n - positives
    stats = GroupStats(2, 2, bootstrap_samples=200)
    stats.conf.copy_(torch.as_tensor(conf))
    stats.boot_conf.copy_(torch.as_tensor(rng.poisson(conf, size=(200, 2, 2, 2))))
    return stats.compute(["a", "b"], grouping="g"), bootstrap_standard_errors(stats, 30, "eligible")


def _alarm_rate(rng: np.random.Generator, before: tuple, after: tuple, trials: int, n: int = 300) -> dict:
    """Share of pairs of independent periods (``before`` rates, then ``after``) whose drift test alarms, per
    demographic-parity gap, at alpha 0.05."""
    alarms = dict.fromkeys(mon.LABEL_FREE_GAPS, 0)
    for _ in range(trials):
        (r0, e0), (r1, e1) = _period(rng, before, n), _period(rng, after, n)
        for gap in alarms:
            alarms[gap] += drift_test(r0, r1, gap, (e0[gap], e1[gap]), 0.05).adverse
    return {gap: count / trials for gap, count in alarms.items()}


def test_false_alarm_rate_is_near_alpha_and_a_grown_bias_is_found():
    """Pairs of independent batches of 600 rows with the same bias: the drift test alarms at about alpha
    (DP 0.15) or below it (DP 0: a max - min gap near 0 varies less than its replicates); a batch whose DP
    difference grew from 0.15 to 0.30 is found most of the time."""
    rng = np.random.default_rng(0)
    same = _alarm_rate(rng, (0.5, 0.35), (0.5, 0.35), 400)
    equal = _alarm_rate(rng, (0.4, 0.4), (0.4, 0.4), 150)
    grown = _alarm_rate(rng, (0.5, 0.35), (0.5, 0.2), 80)
    print(f"false alarms at DP 0.15: {same}; at DP 0: {equal}; power at +0.15: {grown}")
    for gap in mon.LABEL_FREE_GAPS:
        assert 0.02 <= same[gap] <= 0.085, gap  # binomial sd at 400 trials: 0.011
        assert equal[gap] <= 0.06, gap
        assert grown[gap] >= 0.7, gap


def test_history_lines_are_strict_json_and_appended(sequence, tmp_path):
    record = read_history(str(sequence["history"]))[0]
    record.results["sex"].gaps["demographic_parity_ratio"] = math.nan
    path = tmp_path / "h.jsonl"
    path.write_text(json.dumps(record.to_json()))  # a hand-edited file without its final newline
    append_history(str(path), record)
    text = path.read_text()
    assert text.count("\n") == 2 and "NaN" not in text
    again = read_history(str(path))
    assert len(again) == 2 and math.isnan(again[1].results["sex"].gaps["demographic_parity_ratio"])
    path.write_text(text + "[1, 2]\n")
    with pytest.raises(ValueError, match="line 3 is not a monitor record"):
        read_history(str(path))


# Runs `fairtune monitor` (cli.main) in a fresh process: --help and a missing --data file answer before torch
# and transformers load.
RUNNER = """
import json, sys
from fairtune import cli
codes = []
for argv in json.loads(sys.argv[1]):
    try:
        cli.main(["monitor", *argv])
        codes.append(0)
    except SystemExit as exit:
        codes.append(exit.code or 0)
print(json.dumps({"codes": codes, "heavy": sorted(m for m in ("torch", "transformers") if m in sys.modules)}))
"""


def test_fast_paths_import_neither_torch_nor_transformers(tmp_path):
    argvs = [["--help"], ["--model", "m", "--data", str(tmp_path / "gone.csv")], ["--data", "x.csv"]]
    run = subprocess.run(
        [sys.executable, "-c", RUNNER, json.dumps(argvs)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    result = json.loads(run.stdout.strip().splitlines()[-1])
    assert result == {"codes": [0, 2, 2], "heavy": []}, run.stderr
    assert "usage: fairtune monitor" in run.stdout and "does not exist" in run.stderr
    assert "monitor needs --model DIR" in run.stderr


def test_cli_lists_the_options_monitor_parses():
    assert set(cli.COMMAND_OPTIONS["monitor"]) == set(MONITOR_OPTIONS)
    from dataclasses import fields

    from fairtune.config import CONFIG_CLASSES

    names = {f.name for cls in CONFIG_CLASSES for f in fields(cls)}
    assert set(mon.MONITOR_KEYS) <= names


def test_trend_plot_takes_holes_gates_and_flags(tmp_path):
    from fairtune import plots

    def result(dp: float, interval: bool = True) -> GroupResult:
        gaps = {"demographic_parity_difference": dp, "worst_group_accuracy": 0.8}
        intervals = {"demographic_parity_difference": (dp - 0.05, dp + 0.05)} if interval else {}
        return GroupResult("sex", 2, ["0", "1"], {}, {"F": {}, "M": {}}, gaps, intervals)

    path = plots.plot_gap_trend(
        ["w1", "w2", "w3"],
        [result(0.1), None, result(0.3, interval=False)],  # a period not measured, one without intervals
        str(tmp_path / "trend.png"),
        thresholds={"demographic_parity_difference": [("max", 0.25)]},
        flagged=["demographic_parity_difference"],
        title="sex",
    )
    assert Path(path).read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(ValueError, match="one entry each per period"):
        plots.plot_gap_trend(["w1"], [], str(tmp_path / "x.png"))
    with pytest.raises(ValueError, match="in neither result"):
        plots.plot_gap_trend(["w1"], [result(0.1)], str(tmp_path / "x.png"), gaps=["dp"])
    scores = plots.plot_score_histograms([0.2, 0.9, 0.6], [0, 0, 2], ["F", "M", "X"], str(tmp_path / "s.png"))
    assert Path(scores).stat().st_size > 2000 and not (tmp_path / "x.png").exists()
