"""Checkpoint and resume a GroupDRO + adversary run on two processes; write each rank's states.

Run as ``torchrun --nproc_per_node 2 tests/dist_resume.py OUT_DIR``. Two runs of the same 8 optimizer steps:

* ``full``: uninterrupted, saving a checkpoint at step 4;
* ``resumed``: a new trainer that resumes from that checkpoint and trains steps 5 to 8.

Each rank writes ``rank<r>.json`` with its mitigation state (GroupDRO's log q, the adversary head) at the
checkpoint and at the end of both runs, its model weights at the end of both runs, and what it reads back
from the checkpoint's ``mitigation_state.pt``. tests/test_distributed.py checks that the ranks agree at the
checkpoint, that the file holds that state, and that the resumed run ends where the uninterrupted one does.
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
from transformers import TrainerCallback  # noqa: E402

from fairtune import FairTrainer, FairTrainingArguments  # noqa: E402
from fairtune.callbacks import MITIGATION_STATE_FILE  # noqa: E402
from fairtune.pipeline import shutdown_distributed  # noqa: E402

STEPS = 8
SAVE_AT = 4


def flat_state(state: object, prefix: str = "") -> dict[str, list[float]]:
    """``Mitigations.state_dict()`` as JSON: a flat list per tensor, keyed by path (``group_dro/log_q``).

    Nested dicts and lists are walked, so parts that other methods add (penalty running statistics) are
    compared too; numbers that are not tensors become one-element lists.
    """
    if isinstance(state, torch.Tensor):
        return {prefix: state.detach().double().flatten().tolist()}
    if isinstance(state, int | float) and not isinstance(state, bool):
        return {prefix: [float(state)]}
    items = state.items() if isinstance(state, dict) else enumerate(state) if isinstance(state, list) else ()
    out: dict[str, list[float]] = {}
    for key, value in items:
        out.update(flat_state(value, f"{prefix}/{key}" if prefix else str(key)))
    return out


class StateAtSave(TrainerCallback):
    """Each rank's own mitigation state whenever a checkpoint is written (not only rank 0's file)."""

    def __init__(self, trainer: FairTrainer):
        self.trainer = trainer
        self.states: dict[int, dict[str, list[float]]] = {}

    def on_save(self, args, state, control, **kwargs) -> None:
        self.states[state.global_step] = flat_state(self.trainer.mitigations.state_dict())


def make_trainer(output_dir: Path) -> FairTrainer:
    torch.manual_seed(0)
    args = FairTrainingArguments(
        output_dir=str(output_dir),
        group_by="sex",
        per_device_train_batch_size=16,
        max_steps=STEPS,
        learning_rate=1e-2,
        reweighting="group_dro",
        group_dro_eta=0.5,
        adversary="group",
        adversary_input="logits",
        report_to="none",
        save_strategy="steps",
        save_steps=SAVE_AT,
        disable_tqdm=True,
        use_cpu=True,
        seed=0,
    )
    return FairTrainer(MLP(), args, train_dataset=biased_tabular(200))


def end_state(trainer: FairTrainer) -> dict:
    return {
        "mitigations": flat_state(trainer.mitigations.state_dict()),
        "model": [p.detach().double().flatten().tolist() for p in trainer.model.parameters()],
    }


def main(out_dir: str) -> None:
    out = Path(out_dir).resolve()
    full = make_trainer(out / "full")
    at_save = StateAtSave(full)
    full.add_callback(at_save)
    full.train()
    checkpoint = out / "full" / f"checkpoint-{SAVE_AT}"
    full.accelerator.wait_for_everyone()  # rank 0 writes the checkpoint; every rank reads it next
    saved = torch.load(checkpoint / MITIGATION_STATE_FILE, map_location="cpu")

    resumed = make_trainer(out / "resumed")
    resumed.train(resume_from_checkpoint=str(checkpoint))
    rank = full.accelerator.process_index
    result = {
        "world_size": full.accelerator.num_processes,
        "at_save": at_save.states[SAVE_AT],
        "file": flat_state(saved),
        "full": end_state(full),
        "resumed": end_state(resumed),
    }
    (out / f"rank{rank}.json").write_text(json.dumps(result))
    shutdown_distributed()


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main(sys.argv[1])
