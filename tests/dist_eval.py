"""Evaluate a fixed model with ``FairTrainer.evaluate()`` and write the metrics as JSON (rank 0).

Run as ``python tests/dist_eval.py OUT.json`` (one process) or
``torchrun --nproc_per_node 2 tests/dist_eval.py OUT.json`` (two gloo ranks on CPU); tests/test_distributed.py
compares the two. Same model weights, same data, same group vocabulary in every run.

It also evaluates 101 other rows twice, as a stream and in memory (``stream_metrics``, ``memory_metrics``).

``tests/dist_eval.py OUT.json BOOTSTRAP`` evaluates with BOOTSTRAP replicates and has every rank write its own
metrics to ``OUT.rank<r>.json``; tests/test_metrics.py checks that every rank reports the same intervals.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

TESTS_DIR = Path(__file__).resolve().parent
for path in (TESTS_DIR, TESTS_DIR.parent):  # conftest (tests/) and fairtune (repo root)
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

import torch  # noqa: E402
from conftest import MLP, biased_tabular  # noqa: E402

from fairtune import FairTrainer, FairTrainingArguments  # noqa: E402
from fairtune.pipeline import shutdown_distributed  # noqa: E402

EVAL_ROWS = 101  # not divisible by 2 processes x batch 8: the distributed sampler pads the last batch
EVAL_BATCH_SIZE = 8


def main(out_path: str, bootstrap_samples: int = 0) -> None:
    out = Path(out_path).resolve()
    torch.manual_seed(0)
    model = MLP()
    args = FairTrainingArguments(
        output_dir=str(out.parent / f"{out.stem}_trainer"),
        group_by="sex",
        eval_group_by=["race", "sex+race"],
        per_device_eval_batch_size=EVAL_BATCH_SIZE,
        bootstrap_samples=bootstrap_samples,
        report_to="none",
        save_strategy="no",
        disable_tqdm=True,
        use_cpu=True,
        seed=0,
    )
    trainer = FairTrainer(
        model=model,
        args=args,
        train_dataset=biased_tabular(n=60),  # fixes the group vocabulary, identically in every run
    )
    metrics = trainer.evaluate(biased_tabular(n=EVAL_ROWS, seed=3, groups=("F", "M", "X")))
    result = {"world_size": trainer.accelerator.num_processes, "metrics": metrics}
    if not bootstrap_samples:
        # The same kind of rows read as a stream (groups the vocabulary knows: a stream adds none), and
        # held in memory: streamed evaluation must count every row once on any number of processes.
        rows = biased_tabular(n=EVAL_ROWS, seed=4)
        result["stream_metrics"] = trainer.evaluate(rows.to_iterable_dataset(num_shards=3))
        result["memory_metrics"] = trainer.evaluate(rows)
    if bootstrap_samples:
        rank = trainer.accelerator.process_index
        out.with_suffix(f".rank{rank}.json").write_text(json.dumps(result, indent=1, sort_keys=True))
    elif trainer.accelerator.is_main_process:
        out.write_text(json.dumps(result, indent=1, sort_keys=True))
    shutdown_distributed()


if __name__ == "__main__":
    if len(sys.argv) not in (2, 3):
        sys.exit(f"usage: {sys.argv[0]} OUT.json [BOOTSTRAP_SAMPLES]")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main(sys.argv[1], int(sys.argv[2]) if len(sys.argv) == 3 else 0)
