"""Train with GroupDRO and an adversary head on two processes; write each rank's state.

Run as ``torchrun --nproc_per_node 2 tests/dist_train.py OUT_DIR``; tests/test_distributed.py checks that
the ranks agree: the same GroupDRO weights (group losses are summed over processes before each update), the
same adversary head (rank 0's initial weights broadcast, then its gradients averaged, as DDP does for the
model) and the same model, and that the ranks trained on different samples.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

TESTS_DIR = Path(__file__).resolve().parent
for path in (TESTS_DIR, TESTS_DIR.parent):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

import torch  # noqa: E402
from conftest import MLP, biased_tabular  # noqa: E402

from fairtune import FairTrainer, FairTrainingArguments  # noqa: E402
from fairtune.pipeline import shutdown_distributed  # noqa: E402


def main(out_dir: str) -> None:
    out = Path(out_dir).resolve()
    # A different random state on each rank (as a script seeding per process has): the model and the adversary
    # head are still initialised differently, and must nonetheless train identically on every rank.
    torch.manual_seed(int(os.environ.get("RANK", "0")))
    args = FairTrainingArguments(
        output_dir=str(out / "trainer"),
        group_by="sex",
        per_device_train_batch_size=16,
        max_steps=12,
        learning_rate=1e-2,
        reweighting="group_dro",
        group_dro_eta=0.5,
        adversary="group",
        adversary_input="logits",
        report_to="none",
        save_strategy="no",
        disable_tqdm=True,
        use_cpu=True,
        seed=0,
    )
    trainer = FairTrainer(MLP(), args, train_dataset=biased_tabular(200))
    seen: list[list[float]] = []
    compute_loss = trainer.compute_loss

    def recording(model, inputs, *a, **k):
        if model.training:
            seen.append(inputs["features"].sum(1).tolist())
        return compute_loss(model, inputs, *a, **k)

    trainer.compute_loss = recording
    trainer.train()
    rank = trainer.accelerator.process_index
    state = {
        "world_size": trainer.accelerator.num_processes,
        "q": trainer.mitigations.group_dro.q.tolist(),
        "head": [p.detach().flatten().tolist() for p in trainer.mitigations.adversary.head.parameters()],
        "model": [p.detach().flatten().tolist() for p in trainer.model.parameters()],
        "seen": seen,
    }
    (out / f"rank{rank}.json").write_text(json.dumps(state))
    shutdown_distributed()


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main(sys.argv[1])
