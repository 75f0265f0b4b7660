"""Iterate the training dataloader of a ``FairTrainer`` with ``batch_sampling: group_stratified`` on every
rank and write each rank's batches (row keys and group ids) as JSON to ``OUT.rank<r>.json``.

Run as ``torchrun --nproc_per_node 2 tests/dist_stratified.py OUT`` (two gloo ranks on CPU);
tests/test_stratified.py checks that each rank's batches are stratified and that the ranks' rows do not
overlap. The dataloader is the one ``Trainer`` trains on: accelerate shards it across the ranks.
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

from conftest import MLP, biased_tabular  # noqa: E402

from fairtune import FairTrainer, FairTrainingArguments  # noqa: E402
from fairtune.pipeline import shutdown_distributed  # noqa: E402

ROWS, BATCH = 384, 8  # 4 groups of shares 1/2, 1/4, 1/8, 1/8 after the relabelling below


def main(out: str) -> None:
    data = biased_tabular(ROWS, groups=("A", "B", "C", "D"))
    # Planted shares: exact counts 4, 2, 1, 1 per batch of 8.
    data = data.map(lambda row, i: {"sex": "AAAABBCD"[i % 8]}, with_indices=True)
    args = FairTrainingArguments(
        output_dir=str(Path(out).parent / "stratified_trainer"),
        group_by="sex",
        per_device_train_batch_size=BATCH,
        batch_sampling="group_stratified",
        report_to="none",
        use_cpu=True,
        seed=0,
    )
    trainer = FairTrainer(MLP(), args, train_dataset=data)
    rank = int(os.environ.get("RANK", "0"))
    batches = [
        {"keys": batch["features"][:, 0].tolist(), "groups": batch["group:sex"].tolist()}
        for batch in trainer.get_train_dataloader()
    ]
    Path(f"{out}.rank{rank}.json").write_text(json.dumps({"world": args.world_size, "batches": batches}))
    shutdown_distributed()


if __name__ == "__main__":
    main(sys.argv[1])
