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
from types import SimpleNamespace

import pytest

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "tests" / "dist_eval.py"
EVAL_ROWS = 101
TIMEOUT_S = 240
# Wall-clock measurements, different in every run.
TIMING_SUFFIXES = ("_runtime", "_samples_per_second", "_steps_per_second", "_model_preparation_time")


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


@pytest.mark.slow
def test_runs_have_one_and_two_processes(runs):
    single, double = runs
    assert single["world_size"] == 1
    assert double["world_size"] == 2


@pytest.mark.slow
def test_same_metric_keys(runs):
    single, double = (r["metrics"] for r in runs)
    assert set(single) == set(double), {
        "only_1_process": sorted(set(single) - set(double)),
        "only_2_processes": sorted(set(double) - set(single)),
    }


@pytest.mark.slow
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


@pytest.mark.slow
def test_fairness_metrics_match(runs):
    """Per-group rates, ECE, losses and gaps of every grouping (the ``eval_<grouping>/...`` keys)."""
    single, double = (r["metrics"] for r in runs)
    keys = sorted(k for k in set(single) & set(double) if "/" in k)
    assert len(keys) > 100
    mismatched = _mismatches(single, double, keys)
    assert not mismatched, f"fairness metrics differ (1 process, 2 processes): {mismatched}"


@pytest.mark.slow
def test_trainer_metrics_match(runs):
    """The remaining (non-timing) keys Trainer itself reports, e.g. ``eval_loss`` and ``epoch``."""
    single, double = (r["metrics"] for r in runs)
    keys = sorted(k for k in set(single) & set(double) if "/" not in k and not _is_timing(k))
    assert "eval_loss" in keys
    mismatched = _mismatches(single, double, keys)
    assert not mismatched, f"Trainer metrics differ (1 process, 2 processes): {mismatched}"


@pytest.mark.slow
def test_streamed_evaluation_equals_in_memory_on_one_and_two_processes(runs):
    """A stream (3 shards, read by rank 0 and dispatched by accelerate) counts every row once."""
    reference = runs[0]["memory_metrics"]
    keys = sorted(k for k in reference if "/" in k)
    assert reference["eval_sex/overall/count"] == EVAL_ROWS
    for result in runs:
        for name in ("stream_metrics", "memory_metrics"):
            metrics = result[name]
            assert set(k for k in metrics if "/" in k) == set(keys), name
            mismatched = _mismatches(reference, metrics, keys + ["eval_loss"])
            assert not mismatched, f"{name} on {result['world_size']} process(es): {mismatched}"


@pytest.mark.slow
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


@pytest.mark.slow
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


@pytest.mark.slow
def test_stereotype_monitor_splits_its_scoring_across_processes(tmp_path):
    """Each of 2 ranks scores about half of the monitor's sequences; all get one process's numbers."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "", "HF_HUB_OFFLINE": "1"}
    script = str(REPO / "tests" / "dist_monitor.py")
    torchrun = [*_torchrun(), "--nnodes", "1", "--nproc_per_node", "2", "--master_addr", "127.0.0.1"]
    torchrun += ["--master_port", str(_free_port())]
    for cmd, out in (([sys.executable], "single"), (torchrun, "double")):
        proc = subprocess.run(
            [*cmd, script, str(tmp_path / out)],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=TIMEOUT_S,
        )
        assert proc.returncode == 0, proc.stderr[-5000:]
    single, *ranks = (
        json.loads((tmp_path / name).read_text())
        for name in ("single.rank0.json", "double.rank0.json", "double.rank1.json")
    )
    assert single["metrics"] and all(
        r["metrics"] == pytest.approx(single["metrics"], rel=1e-9) for r in ranks
    )
    # Every process scores the same count (a repeat fills an odd benchmark), about half of them each.
    assert ranks[0]["sequences"] == ranks[1]["sequences"] < 0.6 * single["sequences"]


def _accelerate_launch() -> list[str]:
    exe = shutil.which("accelerate")
    return [exe, "launch"] if exe else [sys.executable, "-m", "accelerate.commands.launch"]


def _launch(cmd: list[str]) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=TIMEOUT_S)
    assert proc.returncode == 0, f"{' '.join(cmd)}\n{proc.stdout[-3000:]}\n{proc.stderr[-8000:]}"


def _max_diff(a: dict[str, list[float]], b: dict[str, list[float]]) -> float:
    assert set(a) == set(b)
    return max(max(abs(x - y) for x, y in zip(a[k], b[k], strict=True)) for k in a)


@pytest.mark.slow
def test_checkpoint_and_resume_on_two_processes_with_the_ddp_config(tmp_path):
    """tests/dist_resume.py launched by configs/accelerate_multi_gpu.yaml (gloo on the CPU): the GroupDRO and
    adversary state is identical on both ranks when checkpointed, rank 0's file holds exactly it, and a run
    resumed from the checkpoint ends with the same state and weights as the uninterrupted run."""
    cmd = [*_accelerate_launch(), "--config_file", str(REPO / "configs" / "accelerate_multi_gpu.yaml")]
    cmd += ["--num_processes", "2", "--main_process_port", str(_free_port())]
    _launch([*cmd, str(REPO / "tests" / "dist_resume.py"), str(tmp_path)])
    rank0, rank1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))
    assert rank0["world_size"] == rank1["world_size"] == 2
    saved = rank0["at_save"]
    assert {"group_dro/log_q", "adversary/0.weight"} <= set(saved)
    assert rank1["at_save"] == saved  # identical on both ranks, not merely close
    assert _max_diff(rank0["file"], saved) == 0 and rank1["file"] == rank0["file"]
    for rank in (rank0, rank1):
        # The state moved after the checkpoint: a resume that lost it could not end where the full run does.
        assert _max_diff(rank["full"]["mitigations"], saved) > 1e-3
        assert _max_diff(rank["resumed"]["mitigations"], rank["full"]["mitigations"]) < 1e-6
        for full, resumed in zip(rank["full"]["model"], rank["resumed"]["model"], strict=True):
            assert resumed == pytest.approx(full, abs=1e-6)
    assert rank1["resumed"] == rank0["resumed"]


@pytest.mark.slow
def test_torch_fsdp_on_cpu_trains_but_cannot_save_an_optimizer_group_outside_the_model(tmp_path):
    """torch itself runs FSDP2 on CPU processes (gloo); its optimizer state dict raises on the parameters of
    a head outside the sharded model: why FairTrainer refuses an adversary under FSDP with checkpoints."""
    cmd = [*_torchrun(), "--nnodes", "1", "--nproc_per_node", "2", "--master_addr", "127.0.0.1"]
    _launch([*cmd, "--master_port", str(_free_port()), str(REPO / "tests" / "dist_fsdp.py"), str(tmp_path)])
    rank0, rank1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))
    assert rank0["world_size"] == 2 and rank0["sharded"] == "DTensor"
    assert rank0["moved"] > 1e-3 and rank0["weights"] == rank1["weights"]
    assert rank0["optimizer_state_error"] == rank1["optimizer_state_error"] == "KeyError"


def _fsdp_trainer(tmp_path, **fields):
    from conftest import MLP, biased_tabular

    from fairtune import FairTrainer, FairTrainingArguments

    args = FairTrainingArguments(
        output_dir=str(tmp_path / "out"),
        group_by="sex",
        max_steps=1,
        report_to="none",
        use_cpu=True,
        **fields,
    )
    return FairTrainer(MLP(), args, train_dataset=biased_tabular(40))


def test_fsdp_on_cpu_is_refused_before_anything_is_written(tmp_path, monkeypatch):
    """accelerate drops FSDP on the CPU without a word (plain DDP, or unconnected runs under accelerate
    launch); FairTrainer says so, whether FSDP comes from the arguments or from ``accelerate launch``."""
    from fairtune.trainer import ERR_FSDP_ON_CPU

    with pytest.raises(ValueError) as error:
        _fsdp_trainer(tmp_path, fsdp="full_shard")
    assert str(error.value) == ERR_FSDP_ON_CPU.format(source="fsdp=True")
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    with pytest.raises(ValueError) as error:
        _fsdp_trainer(tmp_path)
    source = "ACCELERATE_USE_FSDP=true from accelerate launch"
    assert str(error.value) == ERR_FSDP_ON_CPU.format(source=source)
    assert not (tmp_path / "out").exists()
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "false")
    _fsdp_trainer(tmp_path)  # no FSDP asked for: accepted


def test_fsdp_with_an_adversary_is_refused_only_when_it_checkpoints():
    import torch

    from fairtune.trainer import ERR_FSDP_ADVERSARY_CHECKPOINTS, check_fsdp

    def gpu_args(save_strategy: str, fsdp: bool = True) -> SimpleNamespace:
        return SimpleNamespace(
            fsdp=fsdp, use_cpu=False, device=torch.device("cuda", 0), save_strategy=save_strategy
        )

    with pytest.raises(ValueError) as error:
        check_fsdp(gpu_args("steps"), has_adversary=True)
    assert str(error.value) == ERR_FSDP_ADVERSARY_CHECKPOINTS
    check_fsdp(gpu_args("no"), has_adversary=True)  # the final save_model writes no optimizer state
    check_fsdp(gpu_args("steps"), has_adversary=False)  # GroupDRO and penalties hold no parameters
    check_fsdp(gpu_args("steps", fsdp=False), has_adversary=True)  # DDP


@pytest.mark.slow
def test_processes_that_would_not_be_joined_are_refused():
    """torchrun on a machine without a GPU and without use_cpu: transformers joins no process group, so each
    process would train alone on all the data into the same output_dir; every rank refuses instead."""
    from fairtune.trainer import ERR_PROCESSES_NOT_CONNECTED

    cmd = [*_torchrun(), "--nnodes", "1", "--nproc_per_node", "2", "--master_addr", "127.0.0.1"]
    cmd += ["--master_port", str(_free_port()), str(REPO / "tests" / "dist_unjoined.py")]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=TIMEOUT_S)
    assert proc.returncode != 0
    message = ERR_PROCESSES_NOT_CONNECTED.format(launched=2)
    for rank in (0, 1):
        assert f"[rank{rank}]: ValueError: {message}" in proc.stderr
