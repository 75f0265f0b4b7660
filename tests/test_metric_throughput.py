"""benchmarks/metric_throughput.py: the values it times agree with fairlearn, and its table has the columns.

Timings are not asserted: they depend on the machine and its load.
"""

import importlib.util
import re
from pathlib import Path
from types import ModuleType

import fairlearn.metrics as flm
import numpy as np
import pandas as pd
import pytest
import torch

from fairtune import functional as ff
from fairtune.curves import as_binary

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


@pytest.mark.parametrize("num_groups", [3, 16, 17])
def test_array_functions_match_metric_frame(bench: ModuleType, num_groups: int) -> None:
    labels, preds, groups = bench.make_data(5000, num_groups, seed=1)
    reference = bench.metric_frame_values(*bench.metric_frame(labels, preds, groups))
    assert bench.compare(bench.fairtune_values(bench.fairtune_arrays(labels, preds, groups)), reference) == []
    columns, group_id = bench.string_columns(groups, num_groups)
    assert columns.shape == (5000, 2) and all(columns[c].str.len().nunique() == 1 for c in columns)
    result = bench.fairtune_arrays(labels, preds, columns)
    assert all("," in name for name in result.by_group)
    assert bench.compare(bench.fairtune_values(result, group_id), reference) == []


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
    assert header[:6] == [
        "rows",
        "fairtune streaming",
        "fairtune one-shot",
        "metric_frame",
        "metric_frame 2 str cols",
        "MetricFrame",
    ]
    assert [cell for cell in header if cell.startswith("MetricFrame /")] == [
        "MetricFrame / streaming",
        "MetricFrame / one-shot",
        "MetricFrame / metric_frame",
        "MetricFrame / 2 str cols",
    ]
    assert sum(cell.startswith("rows/s") for cell in header) == 5
    assert set(table[1]) <= set("|-")
    rows = [[cell.strip() for cell in line.strip("|").split("|")] for line in table[2:]]
    assert [row[0] for row in rows] == ["2,000", "3,000"]
    assert all(len(row) == len(header) for row in rows)
    assert all(row[i].endswith("x") for row in rows for i in range(6, 10))
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


# fairtune.functional's O(N) group encoding: the ids and names of the np.unique encoding it replaced -------


def unique_encode(values: np.ndarray) -> tuple[np.ndarray, list[str]]:
    """The former `_encode_groups` (np.unique per column, then over the code rows): the reference."""
    values = values[:, None] if values.ndim == 1 else values
    columns = [np.unique(values[:, k], return_inverse=True) for k in range(values.shape[1])]
    codes = np.stack([inverse.reshape(-1) for _, inverse in columns], 1)
    keys, ids = np.unique(codes, axis=0, return_inverse=True)
    names = [",".join(str(columns[k][0][code]) for k, code in enumerate(key)) for key in keys]
    return ids.reshape(-1).astype(np.int64), names


def encoding_cases() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(3)
    n = 2000
    small = rng.integers(-3, 4, n)
    words = np.array(["b", "a", "ä", "B", "", "a b", "10", "9"])[rng.integers(0, 8, n)]
    floats = rng.choice([0.5, -0.0, 0.0, 2.0, np.nan, -np.inf], n)
    mixed_frame = pd.DataFrame({"age": rng.integers(20, 23, n), "sex": words}).to_numpy()
    return {
        "int64 small range": small,
        "int8 crossing zero": rng.integers(-120, 121, n).astype(np.int8),
        "uint8": rng.integers(0, 256, n).astype(np.uint8),
        "uint64 near the top": (np.uint64(2**64 - 10) + rng.integers(0, 5, n).astype(np.uint64)),
        "int64 extremes": rng.choice(np.array([np.iinfo(np.int64).min, 0, np.iinfo(np.int64).max]), n),
        "sparse ids (sorted path)": rng.integers(0, 10**12, n),
        "bool": rng.random(n) < 0.3,
        "str": words,
        "object str": words.astype(object),
        "object int": small.astype(object),
        "object bool": (small > 0).astype(object),
        "object int beyond int64": rng.choice(np.array([2**70, 5, -(2**70)], dtype=object), n),
        "float with nan and -0.0": floats,
        "one value": np.full(n, 7),
        "two int columns": np.stack([small, rng.integers(0, 2, n)], 1),
        "int and str columns (object)": mixed_frame,
        "three columns of many values": rng.integers(0, n // 2, (n, 3)),
        "float columns": np.stack([floats, small.astype(np.float64)], 1),
        "empty int": np.zeros(0, dtype=np.int64),
        "empty two columns": np.zeros((0, 2), dtype=np.int64),
        "empty str": np.zeros(0, dtype=str),
    }


CASES = encoding_cases()


@pytest.mark.parametrize("case", list(CASES))
def test_group_encoding_matches_unique_encoding(case: str) -> None:
    values = CASES[case]
    ids, names = ff._encode_groups(values, values.shape[0])
    expected_ids, expected_names = unique_encode(values)
    assert names == expected_names
    np.testing.assert_array_equal(ids, expected_ids)
    assert ids.dtype == np.int64


@pytest.mark.parametrize("kind", ["series", "category", "tensor", "list"])
def test_group_encoding_of_other_containers(kind: str) -> None:
    values = CASES["str"] if kind in ("series", "category", "list") else CASES["int64 small range"]
    container = {
        "series": lambda: pd.Series(values),
        "category": lambda: pd.Series(values, dtype="category"),
        "tensor": lambda: torch.from_numpy(values),
        "list": lambda: values.tolist(),
    }[kind]()
    ids, names = ff._encode_groups(container, len(values))
    expected_ids, expected_names = unique_encode(values)
    assert names == expected_names
    np.testing.assert_array_equal(ids, expected_ids)


def pandas_cases() -> dict[str, object]:
    words = CASES["str"]
    small = CASES["int64 small range"]
    return {
        "str series": pd.Series(words, dtype="str"),
        "python-storage string series": pd.Series(words, dtype=pd.StringDtype("python")),
        "object str frame": pd.DataFrame({"x": words.astype(object), "y": words[::-1].astype(object)}),
        "string frame": pd.DataFrame({"x": words, "y": np.roll(words, 7)}, dtype="str"),
        "string and object str columns": pd.DataFrame(
            {"x": pd.Series(words, dtype="str"), "y": words[::-1].astype(object)}
        ),
        # The to_numpy path: these columns change there (ints become floats: "3.0").
        "int and float columns": pd.DataFrame({"x": small, "y": small * 0.5}),
        "int and str columns": pd.DataFrame({"x": small, "y": pd.Series(words, dtype="str")}),
        "category": pd.Series(words, dtype="category"),
        "empty string frame": pd.DataFrame({"x": words[:0], "y": words[:0]}, dtype="str"),
    }


@pytest.mark.parametrize("case", list(pandas_cases()))
def test_group_encoding_of_pandas_matches_unique_encoding_of_to_numpy(case: str) -> None:
    features = pandas_cases()[case]
    ids, names = ff._encode_groups(features, len(features))
    expected_ids, expected_names = unique_encode(features.to_numpy())
    assert names == expected_names
    np.testing.assert_array_equal(ids, expected_ids)
    assert ids.dtype == np.int64
    # String columns skip DataFrame.to_numpy (its row copy is most of the cost); the others must not.
    in_place = ("int" not in case) and case != "category"
    assert (ff._encode_string_frame(features, len(features)) is not None) == in_place


def test_missing_string_in_a_frame_refused_as_before() -> None:
    # to_numpy turns the missing string into NaN, which np.unique cannot order among strings.
    frame = pd.DataFrame({"x": ["a", None, "b"], "y": ["c", "d", "e"]}, dtype="str")
    with pytest.raises(TypeError):
        unique_encode(frame.to_numpy())
    with pytest.raises(TypeError):
        ff._encode_groups(frame, 3)


def test_frame_of_wrong_length_refused() -> None:
    frame = pd.DataFrame({"x": ["a", "b"]}, dtype="str")
    with pytest.raises(ValueError, match=re.escape(ff.ERR_SENSITIVE_SHAPE.format(shape=(2, 1)))):
        ff._encode_groups(frame, 3)


def test_unsortable_groups_still_refused_by_numpy() -> None:
    # Mixed str and int cannot be ordered; the encoding must not invent an order for them.
    with pytest.raises(TypeError):
        ff._encode_groups(np.array(["a", 1, "b"], dtype=object), 3)


@pytest.mark.parametrize(
    "values",
    [
        np.array([0, 1, 1, 0]),
        np.array([True, False, True, True]),
        np.array([0.0, 1.0, -0.0, 1.0]),
        np.array([1, 1, 1, 1], dtype=np.uint8),
        torch.tensor([0.0, 1.0, 1.0, 0.0], dtype=torch.bfloat16),
        [0, 1, 0, 1],
        np.zeros(0, dtype=np.float32),
    ],
)
def test_binary_fast_path_equals_as_binary(values: object) -> None:
    ours = ff._as_binary("y", values)
    np.testing.assert_array_equal(ours, as_binary("y", values))
    assert ours.dtype == np.int64


@pytest.mark.parametrize(
    ("values", "num_samples"),
    [
        (np.array([0, 2, 1]), None),
        (np.array([0.0, np.nan, 1.0]), None),
        (np.array([0.0, 0.5, 1.0]), None),
        (np.array(["0", "1"]), None),
        (np.array([[0, 1], [1, 0]]), None),
        (np.array([0, 1, 1]), 4),
    ],
)
def test_binary_fast_path_refuses_like_as_binary(values: np.ndarray, num_samples: int | None) -> None:
    with pytest.raises(ValueError) as expected:
        as_binary("y", values, num_samples)
    with pytest.raises(ValueError, match=re.escape(str(expected.value))):
        ff._as_binary("y", values, num_samples)
