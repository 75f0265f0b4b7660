"""benchmarks/gpu/run.py cannot rot where CI has no GPU: it refuses without CUDA, and its whole path (LoRA,
every method that applies to each task, the tables, the scaling launch) runs with ``--device cpu`` on tiny
models built from a config."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
SMOKE = ["--device", "cpu", "--steps", "1", "--warmup", "1", "--repeats", "1", "--batch-size", "4"]
SMOKE += ["--seq-len", "16"]


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_gpu_run", ROOT / "benchmarks" / "gpu" / "run.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def _rows(text: str, section: str) -> dict[str, list[str]]:
    """{method: cells} of the table under the ``### section`` heading."""
    lines = text.split(f"### {section}\n", 1)[1].strip().splitlines()
    rows = {}
    for line in lines[2:]:
        if not line.startswith("| "):
            break
        cells = [c.strip() for c in line.strip("|").split("|")]
        rows[cells[0]] = cells[1:]
    return rows


def test_refuses_without_cuda_unless_asked_for_cpu(bench, monkeypatch, capsys, tmp_path):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit) as exit_:
        bench.main(["--models", "tiny-bert", "--output", str(tmp_path / "x.md")])
    assert exit_.value.code == 2
    assert bench.ERR_NO_CUDA.format(torch=torch.__version__) in capsys.readouterr().err.replace("\n", " ")
    assert not (tmp_path / "x.md").exists()
    with pytest.raises(SystemExit):
        bench.main(["--device", "cpu", "--methods", "dp"])
    assert bench.ERR_METHOD.format(name="dp", choices=", ".join(bench.METHODS)) in capsys.readouterr().err


def test_cpu_smoke_run_times_each_applicable_method_on_both_tasks(bench, tmp_path):
    out = tmp_path / "gpu.md"
    methods = ["demographic_parity", "group_dro", "adversary (hidden)", "counterfactual_consistency"]
    text = bench.main(
        [*SMOKE, "--models", "tiny-bert", "tiny-llama", "--methods", *methods, "--output", str(out)]
    )
    assert out.read_text() == text
    assert "float32 (CPU smoke run)" in text and "1 vs" not in text  # one device: no scaling table
    encoder, lm = _rows(text, "tiny-bert (classification)"), _rows(text, "tiny-llama (causal_lm)")
    assert list(encoder) == ["plain Trainer", *methods]
    # Demographic parity needs class predictions: a causal LM gets only the methods that apply to it.
    assert list(lm) == ["plain Trainer", *methods[1:]]
    for rows in (encoder, lm):
        assert rows["plain Trainer"][1] == "1.000"
        for step, ratio, _, memory in rows.values():
            assert float(step.removesuffix(" ms")) > 0 and float(ratio) > 0 and memory == "n/a (CPU)"


@pytest.mark.slow
def test_scaling_launches_itself_on_two_processes(bench):
    """The multi-GPU path (accelerate launch, configs/accelerate_multi_gpu.yaml) on 2 CPU ranks."""
    text = bench.main(
        [*SMOKE, "--models", "tiny-bert", "--methods", "group_dro", "--scaling-methods", "group_dro",
         "--scaling-processes", "2"]
    )  # fmt: skip
    rows = _rows(text, "tiny-bert: 1 vs 2 processes (DDP, same per-device batch)")
    assert list(rows) == ["plain Trainer", "group_dro"]
    for _, two, throughput, efficiency in rows.values():
        assert float(two.removesuffix(" ms")) > 0 and throughput.endswith("x") and efficiency.endswith("%")
