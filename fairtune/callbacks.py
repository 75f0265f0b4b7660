"""Trainer callbacks: a console view that keeps per-group keys out of the terminal, and the mitigation state
(adversary head, GroupDRO weights) kept in step with the model: zeroed gradients and checkpoints."""

from __future__ import annotations

import os
from typing import Any

import torch
from transformers.trainer_callback import PrinterCallback, ProgressCallback, TrainerCallback

from fairtune.lm import HEADLINE_METRICS

MITIGATION_STATE_FILE = "mitigation_state.pt"


# Stereotype-benchmark headlines (eval_<benchmark>/<bias type>/<metric>) stay on the terminal too.
HEADLINE_LM_METRICS = tuple(f"/{m}" for m in HEADLINE_METRICS)


def compact_logs(logs: dict[str, Any] | None) -> dict[str, Any]:
    """The keys of a log worth a terminal line: gaps, losses, constraint multipliers and stereotype
    headlines, not per-group stats or intervals."""
    return {
        k: v
        for k, v in (logs or {}).items()
        if (k.count("/") < 2 or k.endswith(HEADLINE_LM_METRICS) or k.startswith("constraint/"))
        and not k.endswith(("_ci_low", "_ci_high"))
    }


class CompactProgressCallback(ProgressCallback):
    """Console progress that prints the gaps but not the hundreds of per-group keys of a log.

    Only the terminal view is trimmed: every key still reaches the ``report_to`` backends and the history.
    """

    def on_log(
        self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kwargs: Any
    ) -> None:
        super().on_log(args, state, control, logs=compact_logs(logs), **kwargs)


class CompactPrinterCallback(PrinterCallback):
    """``PrinterCallback`` (used when ``disable_tqdm``) trimmed like ``CompactProgressCallback``."""

    def on_log(
        self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kwargs: Any
    ) -> None:
        super().on_log(args, state, control, logs=compact_logs(logs), **kwargs)


class MitigationStateCallback(TrainerCallback):
    """Keeps a ``Mitigations`` object's training state in step with the model's.

    * When training begins it gives every process process 0's state (``Mitigations.broadcast_state``).
    * After every optimizer step it clears the adversary head's gradients: Trainer zeroes only the model's,
      and the head lives outside the model, so its gradients would pile up over the whole run.
    * After every checkpoint it writes the state (adversary head, GroupDRO weights) into the checkpoint
      folder, like the optimizer state: a resumed run continues exactly (``FairTrainer`` reloads it). It never
      goes into the exported model.
    """

    def __init__(self, mitigations: Any):
        self.mitigations = mitigations

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.mitigations.broadcast_state()  # every process starts from process 0's head

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.mitigations.zero_grad()

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        saved = self.mitigations.state_dict()
        folder = os.path.join(args.output_dir, f"checkpoint-{state.global_step}")
        if saved and args.should_save and os.path.isdir(folder):
            torch.save(saved, os.path.join(folder, MITIGATION_STATE_FILE))
