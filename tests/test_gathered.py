"""Penalties gathered across processes (``penalty_sync``): 2 gloo processes == 1 process on the global batch.

tests/dist_penalty.py runs under ``torchrun --nproc_per_node 2`` (slow tests) and under ``python``:

* every penalty's value on each rank equals the single-process value on the whole global batch, and the
  gradient on a rank's logits is W = 2 times the single-process gradient of its rows (the backward of the
  cross-process sum adds both ranks' upstream gradients; DDP's average over W divides it back);
* a short SGD run with a demographic-parity penalty ends with the same weights on 2 processes as on 1, with
  and without gradient accumulation, and with ``penalty_sync=False`` it does not.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import MLP, biased_tabular
from dist_penalty import CASES, penalty_and_grad
from test_distributed import _free_port, _torchrun

from fairtune import FairTrainer, FairTrainingArguments

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "tests" / "dist_penalty.py"
TIMEOUT_S = 300
WORLD = 2


def _launch(two_processes: bool, mode: str, out: Path) -> None:
    cmd = [sys.executable]
    if two_processes:
        cmd = [*_torchrun(), "--nnodes", "1", "--nproc_per_node", str(WORLD), "--master_addr", "127.0.0.1"]
        cmd += ["--master_port", str(_free_port())]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(
        [*cmd, str(SCRIPT), mode, str(out)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
    )
    assert proc.returncode == 0, (
        f"{' '.join(cmd)} {mode} failed\n{proc.stdout[-3000:]}\n{proc.stderr[-8000:]}"
    )


@pytest.fixture(scope="module")
def ranks(tmp_path_factory) -> list[dict]:
    out = tmp_path_factory.mktemp("gathered_values")
    _launch(True, "values", out)
    return [json.loads((out / f"values_rank{r}.json").read_text()) for r in range(WORLD)]


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, Path]:
    single, double = tmp_path_factory.mktemp("single"), tmp_path_factory.mktemp("double")
    _launch(False, "train", single)
    _launch(True, "train", double)
    return single, double


@pytest.mark.slow
@pytest.mark.parametrize("name", list(CASES))
def test_gathered_value_and_logit_gradient_equal_one_process(ranks, name):
    value, grad = penalty_and_grad(name, None, None)  # one process, the whole global batch
    grad = torch.tensor(grad)
    for result in ranks:
        assert result["world_size"] == WORLD
        case = result[name]
        lo, hi = case["rows"]
        assert case["value"] == pytest.approx(value, rel=1e-6, abs=1e-7)
        torch.testing.assert_close(torch.tensor(case["grad"]), WORLD * grad[lo:hi], rtol=1e-5, atol=1e-7)
    # Each rank's own micro-batch gives another value: the case is one where gathering matters.
    local = sum(r[name]["local_value"] for r in ranks) / WORLD
    assert abs(local - value) > 1e-3


def _weights(path: Path) -> torch.Tensor:
    return torch.cat([torch.tensor(w) for w in json.loads(path.read_text())["weights"]])


@pytest.mark.slow
@pytest.mark.parametrize("config", ["full", "accumulate"])
def test_training_on_two_processes_equals_one_process(trained, config):
    single, double = trained
    one, two = (json.loads((d / f"train_{config}.json").read_text()) for d in (single, double))
    assert (one["world_size"], two["world_size"]) == (1, WORLD)
    assert two["penalty"] == pytest.approx(one["penalty"], rel=1e-5, abs=1e-7)
    torch.testing.assert_close(
        _weights(double / f"train_{config}.json"), _weights(single / f"train_{config}.json")
    )


@pytest.mark.slow
def test_training_on_a_stream_equals_in_memory_on_one_and_two_processes(trained):
    single, double = trained
    reference = json.loads((single / "train_full.json").read_text())
    for folder in (single, double):
        stream = json.loads((folder / "train_stream.json").read_text())
        assert stream["penalty"] == pytest.approx(reference["penalty"], rel=1e-5, abs=1e-7)
        torch.testing.assert_close(
            _weights(folder / "train_stream.json"), _weights(single / "train_full.json")
        )


@pytest.mark.slow
def test_training_without_sync_differs(trained):
    single, double = trained
    # On one process penalty_sync changes nothing, bit for bit.
    assert torch.equal(_weights(single / "train_no_sync.json"), _weights(single / "train_full.json"))
    # On two, each process penalises its own half: the weights move elsewhere (by about 0.2 here).
    gap = (_weights(double / "train_no_sync.json") - _weights(single / "train_full.json")).abs().max()
    assert gap > 0.05


def test_one_process_builds_no_sync_and_trains_the_same_either_way(tmp_path):
    """On one process the penalty batch carries no reduction (no collective call), whatever penalty_sync."""
    seen, weights = [], []
    for sync in (True, False):
        torch.manual_seed(0)
        args = FairTrainingArguments(
            output_dir=str(tmp_path / str(sync)),
            group_by="sex",
            per_device_train_batch_size=8,
            max_steps=3,
            penalty="demographic_parity",
            penalty_sync=sync,
            report_to="none",
            save_strategy="no",
            disable_tqdm=True,
            use_cpu=True,
        )
        trainer = FairTrainer(MLP(), args, train_dataset=biased_tabular(32))
        penalty = trainer.mitigations.penalties[0]
        compute = penalty.compute

        def recording(batch, compute=compute):
            seen.append(batch.sync)
            return compute(batch)

        penalty.compute = recording
        trainer.train()
        weights.append(torch.cat([p.detach().flatten() for p in trainer.model.parameters()]))
    assert len(seen) == 6 and all(s is None for s in seen)
    assert torch.equal(weights[0], weights[1])
