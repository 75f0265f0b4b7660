"""The many-group benchmark cannot rot: its core runs every setting on a tiny task and renders the table."""

from __future__ import annotations

import math

from test_benchmarks import _load


def test_many_groups_core_on_a_tiny_task():
    bench = _load("many_groups")
    opts = bench.parse(
        [
            "--seeds",
            "0",
            "--groups",
            "4",
            "--train",
            "96",
            "--val",
            "64",
            "--batch",
            "8",
            "--spreads",
            "l2_dev",
        ]
    )
    rows = bench.run(opts)
    assert [r["setting"] for r in rows] == list(bench.SETTINGS)
    for row in rows:
        assert math.isfinite(row["estimate_rmse"]) and 0 <= row["val_accuracy"] <= 1
        assert ("penalty_std" in row) == bench.SETTINGS[row["setting"]][0]  # logged only with a penalty
    text = bench.table(rows)
    assert text.count("\n") == len(bench.SETTINGS) + 1
    assert "| + both |" in text and "| ERM (no penalty) | – |" in text
