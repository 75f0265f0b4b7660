"""benchmarks/metric_throughput.py: the values it times agree with fairlearn, and its table has the columns.

Timings are not asserted: they depend on the machine and its load.
"""

import importlib.util
from pathlib import Path
from types import ModuleType

import fairlearn.metrics as flm
import numpy as np
import pytest
import torch

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "metric_throughput.py"
NUM_GROUPS = 16


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    # benchmarks/ is not a package: load the script by path, as `python benchmarks/...` would.
    spec = importlib.util.spec_from_file_location("metric_throughput", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def data(bench: ModuleType) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return bench.make_data(20_000, NUM_GROUPS, seed=0)


@pytest.fixture(scope="module")
def reference(bench: ModuleType, data: tuple) -> dict:
    """MetricFrame's values on `data`; computed once, as MetricFrame is the slow side."""
    return bench.metric_frame_values(*bench.metric_frame(*data))


def test_data_has_unequal_groups_and_both_classes(bench: ModuleType, data: tuple) -> None:
    labels, preds, groups = data
    sizes = np.bincount(groups, minlength=NUM_GROUPS)
    assert sizes.min() > 0 and sizes.max() > 4 * sizes.min()
    for values in (labels, preds):
        assert set(np.unique(values)) == {0, 1}
    np.testing.assert_array_equal(bench.make_data(20_000, NUM_GROUPS, seed=0)[2], groups)  # seeded


@pytest.mark.parametrize("chunk", [1000, 4096, 65536])
def test_fairtune_paths_match_metric_frame(
    bench: ModuleType, data: tuple, reference: dict, chunk: int
) -> None:
    tensors = [torch.from_numpy(a) for a in data]
    names = [str(g) for g in range(NUM_GROUPS)]
    assert reference["groups"] == list(range(NUM_GROUPS))
    for result in (
        bench.fairtune_streaming(*tensors, names, chunk),
        bench.fairtune_one_shot(*tensors, names),
    ):
        ours = bench.fairtune_values(result)
        assert bench.compare(ours, reference) == []
        for stat in bench.RATES:
            np.testing.assert_allclose(ours[stat], reference[stat], rtol=0, atol=1e-12)
    assert reference["demographic_parity_difference"] > 0 and reference["equalized_odds_difference"] > 0


def test_metric_frame_gaps_equal_fairlearn_functions(bench: ModuleType, data: tuple) -> None:
    labels, preds, groups = data
    _, dp, eo = bench.metric_frame(labels, preds, groups)
    assert dp == pytest.approx(flm.demographic_parity_difference(labels, preds, sensitive_features=groups))
    assert eo == pytest.approx(flm.equalized_odds_difference(labels, preds, sensitive_features=groups))


def test_compare_reports_disagreements(bench: ModuleType, reference: dict) -> None:
    shifted = {**reference, "tpr": reference["tpr"].copy(), "equalized_odds_difference": 1.0}
    shifted["tpr"][3] += 1e-6
    shifted["fpr"] = np.where(np.arange(NUM_GROUPS) == 5, np.nan, reference["fpr"])  # undefined in fairtune
    problems = bench.compare(shifted, reference)
    assert len(problems) == 3
    assert any(p.startswith("tpr of group 3") for p in problems)
    assert any(p.startswith("fpr of group 5") for p in problems)
    assert any(p.startswith("equalized_odds_difference") for p in problems)
    assert bench.compare({**reference, "groups": list(range(1, NUM_GROUPS + 1))}, reference)


def test_main_prints_table(bench: ModuleType, capsys: pytest.CaptureFixture[str]) -> None:
    # 3 groups: MetricFrame's cost is mostly per group, and the table is what is under test here.
    status = bench.main(["--sizes", "2000", "3000", "--groups", "3", "--repeats", "1", "--chunk", "1024"])
    out = capsys.readouterr().out
    assert status == 0
    table = [line for line in out.splitlines() if line.startswith("|")]
    header = [cell.strip() for cell in table[0].strip("|").split("|")]
    assert header == list(bench.COLUMNS)
    assert header[:4] == ["rows", "fairtune streaming", "fairtune one-shot", "MetricFrame"]
    assert any("MetricFrame /" in cell for cell in header) and any("rows/s" in cell for cell in header)
    assert set(table[1]) <= set("|-")
    rows = [[cell.strip() for cell in line.strip("|").split("|")] for line in table[2:]]
    assert [row[0] for row in rows] == ["2,000", "3,000"]
    assert all(len(row) == len(header) for row in rows)
    assert "3 groups" in out and "torch threads" in out and "fairlearn" in out


def test_main_rejects_bad_arguments(bench: ModuleType) -> None:
    with pytest.raises(SystemExit) as excinfo:
        bench.main(["--sizes", "1000", "--chunk", "0"])
    assert excinfo.value.code == 2


def test_main_exits_nonzero_on_disagreement(bench: ModuleType, monkeypatch: pytest.MonkeyPatch) -> None:
    real = bench.metric_frame

    def skewed(labels: np.ndarray, preds: np.ndarray, groups: np.ndarray) -> tuple:
        by_group, dp, eo = real(labels, preds, groups)
        return by_group, dp + 1e-6, eo

    monkeypatch.setattr(bench, "metric_frame", skewed)
    with pytest.raises(SystemExit) as excinfo:
        bench.main(["--sizes", "5000", "--groups", "3", "--repeats", "1"])
    assert excinfo.value.code not in (0, None)
    assert "demographic_parity_difference" in str(excinfo.value.code)
