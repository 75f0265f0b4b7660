"""Distributed evaluation: ``FairTrainer.evaluate()`` on 2 CPU processes (gloo) == on 1 process.

tests/dist_eval.py evaluates the same fixed model on the same 101 rows (not a multiple of 2 processes x
batch 8, so the distributed sampler pads the last batch with duplicates) once with ``python`` and once with
``torchrun --nproc_per_node 2``; the metrics must agree: same per-group counts (no duplicated padding
samples), same rates and gaps.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "tests" / "dist_eval.py"
EVAL_ROWS = 101
TIMEOUT_S = 240
# Wall-clock measurements, different in every run.
TIMING_SUFFIXES = ("_runtime", "_samples_per_second", "_steps_per_second", "_model_preparation_time")

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun() -> list[str]:
    exe = shutil.which("torchrun")
    return [exe] if exe else [sys.executable, "-m", "torch.distributed.run"]


def _run(cmd: list[str], out: Path) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(
        [*cmd, str(SCRIPT), str(out)], cwd=REPO, env=env, capture_output=True, text=True, timeout=TIMEOUT_S
    )
    assert proc.returncode == 0 and out.is_file(), (
        f"{' '.join(cmd)} failed (exit {proc.returncode}, output written: {out.is_file()})\n"
        f"--- stdout ---\n{proc.stdout[-5000:]}\n--- stderr ---\n{proc.stderr[-10000:]}"
    )
    return json.loads(out.read_text())


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """(1-process result, 2-process result), each {"world_size": n, "metrics": {...}}."""
    tmp = tmp_path_factory.mktemp("dist_eval")
    single = _run([sys.executable], tmp / "single.json")
    torchrun = [*_torchrun(), "--nnodes", "1", "--nproc_per_node", "2"]
    torchrun += ["--master_addr", "127.0.0.1", "--master_port", str(_free_port())]
    double = _run(torchrun, tmp / "double.json")
    return single, double


def _is_timing(key: str) -> bool:
    return key.endswith(TIMING_SUFFIXES)


def test_runs_have_one_and_two_processes(runs):
    single, double = runs
    assert single["world_size"] == 1
    assert double["world_size"] == 2


def test_same_metric_keys(runs):
    single, double = (r["metrics"] for r in runs)
    assert set(single) == set(double), {
        "only_1_process": sorted(set(single) - set(double)),
        "only_2_processes": sorted(set(double) - set(single)),
    }


def test_group_counts_match_without_padding_duplicates(runs):
    single, double = (r["metrics"] for r in runs)
    count_keys = sorted(k for k in set(single) | set(double) if k.endswith("/count"))
    assert count_keys
    for prefix in ("eval_sex", "eval_race", "eval_sex+race"):
        assert f"{prefix}/overall/count" in count_keys
    mismatched = {k: (single.get(k), double.get(k)) for k in count_keys if single.get(k) != double.get(k)}
    assert not mismatched, f"per-group counts differ (1 process, 2 processes): {mismatched}"
    assert double["eval_sex/overall/count"] == EVAL_ROWS
    for prefix in ("eval_sex", "eval_race", "eval_sex+race"):  # groups partition the rows exactly
        groups = [k for k in count_keys if k.startswith(f"{prefix}/") and k != f"{prefix}/overall/count"]
        assert double[f"{prefix}/overall/count"] == EVAL_ROWS
        assert sum(double[k] for k in groups) == EVAL_ROWS, prefix


def _mismatches(single: dict, double: dict, keys: list[str]) -> dict:
    return {
        k: (single[k], double[k]) for k in keys if double[k] != pytest.approx(single[k], rel=1e-6, abs=1e-12)
    }


def test_fairness_metrics_match(runs):
    """Per-group rates, ECE, losses and gaps of every grouping (the ``eval_<grouping>/...`` keys)."""
    single, double = (r["metrics"] for r in runs)
    keys = sorted(k for k in set(single) & set(double) if "/" in k)
    assert len(keys) > 100
    mismatched = _mismatches(single, double, keys)
    assert not mismatched, f"fairness metrics differ (1 process, 2 processes): {mismatched}"


def test_trainer_metrics_match(runs):
    """The remaining (non-timing) keys Trainer itself reports, e.g. ``eval_loss`` and ``epoch``."""
    single, double = (r["metrics"] for r in runs)
    keys = sorted(k for k in set(single) & set(double) if "/" not in k and not _is_timing(k))
    assert "eval_loss" in keys
    mismatched = _mismatches(single, double, keys)
    assert not mismatched, f"Trainer metrics differ (1 process, 2 processes): {mismatched}"


def test_group_dro_and_adversary_state_agree_across_processes(tmp_path):
    torchrun = [*_torchrun(), "--nnodes", "1", "--nproc_per_node", "2"]
    torchrun += [
        "--master_addr",
        "127.0.0.1",
        "--master_port",
        str(_free_port()),
        str(REPO / "tests" / "dist_train.py"),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(
        [*torchrun, str(tmp_path)], cwd=REPO, env=env, capture_output=True, text=True, timeout=TIMEOUT_S
    )
    assert proc.returncode == 0, proc.stderr[-5000:]
    rank0, rank1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))
    assert rank0["world_size"] == 2
    assert rank0["q"] == pytest.approx(rank1["q"], abs=1e-7) and rank0["q"] != pytest.approx([0.5, 0.5])
    for key in ("head", "model"):
        for a, b in zip(rank0[key], rank1[key], strict=True):
            assert a == pytest.approx(b, abs=1e-6), key
    assert rank0["seen"] != rank1["seen"]  # each rank trained on its own shard


def test_benchmark_runner_on_two_processes_writes_each_row_once(tmp_path):
    results = tmp_path / "rows.jsonl"
    torchrun = [*_torchrun(), "--nnodes", "1", "--nproc_per_node", "2", "--master_addr", "127.0.0.1"]
    torchrun += ["--master_port", str(_free_port()), str(REPO / "benchmarks" / "run.py")]
    torchrun += ["--suite", str(REPO / "benchmarks" / "suites" / "ci_tiny.yaml"), "--results", str(results)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(torchrun, cwd=REPO, env=env, capture_output=True, text=True, timeout=TIMEOUT_S)
    assert proc.returncode == 0, proc.stderr[-5000:]
    rows = [json.loads(line) for line in results.read_text().splitlines()]
    assert [r["method"] for r in rows] == ["erm", "demographic_parity"]
    assert all(r["machine"]["processes"] == 2 for r in rows)
