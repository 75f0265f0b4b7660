"""Dataset audit: numbers against pandas on the same data, reference comparison, warnings, files, CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import datasets
import numpy as np
import pandas as pd
import pytest

from fairtune.audit import (
    ERR_EMPTY,
    ERR_REFERENCE_SHARES,
    MISSING,
    audit_dataset,
    wilson_interval,
    write_audit,
)

ROOT = Path(__file__).resolve().parent.parent


def _data(n: int = 600, seed: int = 0) -> datasets.Dataset:
    rng = np.random.default_rng(seed)
    sex = rng.choice(["F", "M"], n, p=[0.3, 0.7])
    race = rng.choice(["A", "B", "C"], n, p=[0.8, 0.15, 0.05])
    label = (rng.random(n) < np.where(sex == "M", 0.4, 0.15)).astype(int)
    return datasets.Dataset.from_dict({"sex": sex.tolist(), "race": race.tolist(), "label": label.tolist()})


def test_counts_shares_and_base_rates_equal_pandas():
    data = _data()
    audit = audit_dataset(data, ["sex", "race", "sex+race"], min_cell_size=10)
    frame = data.to_pandas()
    frame["sex+race"] = frame["sex"] + "|" + frame["race"]
    for name in ("sex", "race", "sex+race"):
        expected = frame.groupby(name)["label"].agg(["count", "mean", "sum"])
        got = audit["groupings"][name]["groups"]
        assert sorted(got) == sorted(expected.index)
        for group, row in expected.iterrows():
            assert got[group]["count"] == row["count"]
            assert got[group]["share"] == pytest.approx(row["count"] / len(frame))
            assert got[group]["base_rate"] == pytest.approx(row["mean"])
            assert got[group]["label_counts"] == [row["count"] - row["sum"], row["sum"]]
        assert audit["groupings"][name]["base_rate_gap"] == pytest.approx(
            expected["mean"].max() - expected["mean"].min()
        )
        cells = frame.groupby([name, "label"]).size()
        cells = cells.reindex(pd.MultiIndex.from_product([expected.index, [0, 1]]), fill_value=0)
        smallest = sorted(((int(c), g, str(y)) for (g, y), c in cells.items()))[:5]
        assert [
            (c["count"], c["group"], c["label"]) for c in audit["groupings"][name]["smallest_cells"]
        ] == smallest
    assert audit["rows"] == 600 and audit["label_counts"] == [
        int((frame.label == 0).sum()),
        int(frame.label.sum()),
    ]


def test_wilson_interval_known_values():
    lo, hi = wilson_interval(5, 10, 0.95)
    assert (lo, hi) == (pytest.approx(0.2366, abs=1e-4), pytest.approx(0.7634, abs=1e-4))
    lo, hi = wilson_interval(0, 20, 0.95)
    assert lo == pytest.approx(0.0, abs=1e-12) and hi == pytest.approx(0.1611, abs=1e-4)


def test_reference_comparison_warnings_and_missing_values():
    data = _data(200)
    reference = {"sex": {"F": 0.5, "M": 0.5}, "race": {"A": 0.6, "B": 0.2, "C": 0.1, "D": 0.1}}
    audit = audit_dataset(data, ["sex", "race"], reference=reference, min_cell_size=30)
    sex = audit["groupings"]["sex"]["reference"]
    observed = audit["groupings"]["sex"]["groups"]["F"]["share"]
    assert sex["by_group"]["F"]["ratio"] == pytest.approx(observed / 0.5)
    assert sex["total_variation_distance"] == pytest.approx(abs(observed - 0.5))
    race = audit["groupings"]["race"]
    assert race["reference"]["by_group"]["D"]["observed_share"] == 0.0
    assert any("'D' is in the reference" in w for w in race["warnings"])
    assert any("group 'C' has" in w for w in race["warnings"])  # a small group is named
    with_missing = datasets.Dataset.from_dict(
        {"sex": ["F", None, "M", "M"], "label": ["no", "yes", "yes", "no"]}
    )
    audit = audit_dataset(with_missing, ["sex"], min_cell_size=1)
    assert audit["labels"] == ["no", "yes"] and MISSING in audit["groupings"]["sex"]["groups"]
    assert any("missing value" in w for w in audit["groupings"]["sex"]["warnings"])


def test_multiclass_labels_get_label_shares(tmp_path):
    data = datasets.Dataset.from_dict({"g": ["a", "a", "b", "b", "b"], "label": [0, 1, 2, 2, 1]})
    audit = audit_dataset(data, ["g"], min_cell_size=1)
    assert audit["positive_label"] is None
    assert audit["groupings"]["g"]["groups"]["b"]["label_shares"] == pytest.approx([0, 1 / 3, 2 / 3])
    paths = write_audit(audit, str(tmp_path))
    assert all(Path(p).stat().st_size > 0 for p in paths)


def test_files_and_plots_are_written(tmp_path):
    audit = audit_dataset(_data(), ["sex", "sex+race"], reference={"sex": {"F": 0.5, "M": 0.5}})
    paths = write_audit(audit, str(tmp_path / "audit"))
    names = sorted(Path(p).name for p in paths)
    assert names == [
        "data_audit.json",
        "data_audit.md",
        "data_audit_proxies_race.png",
        "data_audit_proxies_sex.png",
        "data_audit_sex.png",
        "data_audit_sex_x_race.png",
    ]
    for p in paths:
        assert Path(p).stat().st_size > 500
    assert Path(paths[-1]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads(Path(paths[0]).read_text())["groupings"]["sex"]["groups"]["F"]["count"] > 0
    assert "| F |" in Path(paths[1]).read_text()


def test_bad_input_is_named():
    data = _data(50)
    with pytest.raises(ValueError, match="no column 'gender'"):
        audit_dataset(data, ["gender"])
    with pytest.raises(ValueError, match=ERR_EMPTY.format(split="training")):
        audit_dataset(data.select([]), ["sex"])
    with pytest.raises(ValueError, match="not audited"):
        audit_dataset(data, ["sex"], reference={"race": {"A": 1.0}})
    with pytest.raises(ValueError, match=ERR_REFERENCE_SHARES.split(" must")[0].format(name="sex")):
        audit_dataset(data, ["sex"], reference={"sex": {"F": 0.2, "M": 0.2}})
    with pytest.raises(ValueError, match="no column 'y'"):
        audit_dataset(data, ["sex"], label_column="y")


def test_cli_audits_a_local_file(tmp_path):
    csv = tmp_path / "d.csv"
    _data(300).to_pandas().assign(text="x").to_csv(csv, index=False)
    ref = tmp_path / "ref.json"
    ref.write_text(json.dumps({"sex": {"F": 0.5, "M": 0.5}}))
    base = [
        sys.executable,
        "-m",
        "fairtune.cli",
        "audit-data",
        "--train_file",
        str(csv),
        "--output_dir",
        str(tmp_path),
    ]
    run = subprocess.run(
        [*base, "--group_by", "sex", "--eval_group_by", "sex+race", "--reference", str(ref)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    out = tmp_path / "data_audit"
    assert (out / "data_audit_sex_x_race.png").is_file() and "## sex+race" in run.stdout
    bad = subprocess.run(
        [*base, "--group_by", "gender"], capture_output=True, text=True, timeout=300, cwd=ROOT
    )
    assert bad.returncode != 0 and "no column 'gender'" in bad.stderr and "Traceback" not in bad.stderr
