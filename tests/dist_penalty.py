"""Penalties gathered across processes: values, logit gradients and a short training run, per rank.

Run as ``torchrun --nproc_per_node 2 tests/dist_penalty.py MODE OUT_DIR`` (or with ``python``: one process);
tests/test_gathered.py compares the ranks' results with one process on the same global batch.

* ``values``: every rank takes its rows (unequal halves; some groups on one rank only) of the fixed global
  batch of ``global_batch``, computes each penalty of ``CASES`` with ``sync`` (its value and the gradient on
  its logits) and without it (its own rows only), and writes ``values_rank{r}.json``.
* ``train``: a tiny MLP trained with SGD and a demographic-parity penalty on a fixed 16-row set, for the
  configurations of ``TRAIN_CONFIGS`` (global batch 16; global micro-batch 8 with 2 accumulation steps; sync
  off; the rows as a stream), in order (a sequential sampler, so a process's micro-batch m is a fixed slice
  of the global one); rank 0 writes ``train_<config>.json`` with the final weights and the logged penalty
  per step.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from pathlib import Path

TESTS_DIR = Path(__file__).resolve().parent
for path in (TESTS_DIR, TESTS_DIR.parent):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from fairtune.mitigation.consistency import CounterfactualConsistency  # noqa: E402
from fairtune.mitigation.penalties import (  # noqa: E402
    DemographicParity,
    EqualizedOdds,
    EqualOpportunity,
    LossParity,
    MinDiff,
    Penalty,
    PenaltyBatch,
    ProcessSync,
)

NUM_GROUPS = 4
# Rows of each rank in the global batch of 16: unequal shares; group 3 only on rank 0, group 2 only on rank 1.
ROWS = ((0, 7), (7, 16))
GROUPS = [0, 1, 3, 0, 3, 1, 0] + [2, 0, 1, 2, 2, 1, 0, 2, 1]
# Counterfactual pairs stay within a rank's rows (a pair sampler keeps them in one micro-batch).
PAIR_IDS = [0, 0, 1, 5, 1, 6, 7] + [2, 2, 3, 3, 4, 8, 4, 9, 10]
# Causal-LM case: 6 sequences, rows 0-1 on rank 0 without pairs, rows 2-5 two pairs on rank 1.
LM_ROWS = ((0, 2), (2, 6))
LM_PAIR_IDS = [0, 1, 2, 2, 3, 3]

CASES: dict[str, tuple[Callable[[], Penalty], str]] = {
    "demographic_parity": (DemographicParity, "binary"),
    "demographic_parity_3class_mean_abs_dev": (lambda: DemographicParity(spread="mean_abs_dev"), "3class"),
    "equal_opportunity": (EqualOpportunity, "binary"),
    "equalized_odds_l2_dev": (lambda: EqualizedOdds(spread="l2_dev"), "binary"),
    "equalized_odds_3class": (EqualizedOdds, "3class"),
    "loss_parity": (LossParity, "binary"),
    "mindiff": (lambda: MinDiff(bandwidth=0.3), "binary"),
    "mindiff_negatives": (lambda: MinDiff(bandwidth=0.3, labels=[0]), "binary"),
    "consistency": (CounterfactualConsistency, "binary"),
    "consistency_lm": (CounterfactualConsistency, "lm"),
}


def global_batch(kind: str) -> dict[str, torch.Tensor]:
    """The fixed global batch of a case kind (``binary``, ``3class`` or ``lm``), the same in every process."""
    gen = torch.Generator().manual_seed(7)
    if kind == "lm":
        n, t, v = 6, 5, 7
        ids = torch.randint(2, v, (n, t), generator=gen)
        ids[3, 1:] = ids[2, 1:]  # a pair differs in its first token only: a shared suffix of 4
        ids[5, 2:] = ids[4, 2:]
        return {
            "logits": 2 * torch.randn(n, t, v, generator=gen),
            "labels": ids.clone(),
            "groups": torch.tensor([0, 1, 0, 1, 0, 1]),
            "pair_ids": torch.tensor(LM_PAIR_IDS),
            "input_ids": ids,
            "attention_mask": torch.ones(n, t, dtype=torch.long),
        }
    classes = 2 if kind == "binary" else 3
    return {
        "logits": 2 * torch.randn(len(GROUPS), classes, generator=gen),
        "labels": torch.randint(0, classes, (len(GROUPS),), generator=gen),
        "groups": torch.tensor(GROUPS),
        "pair_ids": torch.tensor(PAIR_IDS),
    }


def penalty_and_grad(name: str, rows: tuple[int, int] | None, sync: ProcessSync | None) -> tuple[float, list]:
    """A case's penalty on the global batch's ``rows`` (None: all) -> (value, gradient on those logits)."""
    factory, kind = CASES[name]
    full = global_batch(kind)
    part = {k: v[slice(*rows)] if rows is not None else v for k, v in full.items()}
    logits = part["logits"].clone().requires_grad_(True)
    if kind == "lm":
        losses = logits.float().logsumexp(-1).mean(-1)  # unused by consistency; any (N,) loss with a graph
    else:
        losses = F.cross_entropy(logits, part["labels"], reduction="none")
    batch = PenaltyBatch(
        logits,
        part["labels"],
        part["groups"],
        NUM_GROUPS if kind != "lm" else 2,
        losses,
        pair_ids=part["pair_ids"],
        input_ids=part.get("input_ids"),
        attention_mask=part.get("attention_mask"),
        sync=sync,
    )
    value = factory()(batch)
    value.backward()
    return value.item(), logits.grad.tolist()


def run_values(out: Path) -> None:
    sync = ProcessSync()
    rank = sync.rank
    results = {}
    for name, (_, kind) in CASES.items():
        rows = (LM_ROWS if kind == "lm" else ROWS)[rank]
        value, grad = penalty_and_grad(name, rows, sync)
        local, _ = penalty_and_grad(name, rows, None)
        results[name] = {"rows": list(rows), "value": value, "grad": grad, "local_value": local}
    (out / f"values_rank{rank}.json").write_text(json.dumps({"world_size": sync.world_size, **results}))


TRAIN_ROWS = 16
# name -> (global micro-batch, gradient accumulation steps, penalty_sync)
TRAIN_CONFIGS = {
    "full": (16, 1, True),
    "accumulate": (8, 2, True),
    "no_sync": (16, 1, False),
    # The same rows as a stream (read in order; on 2 processes rank 0 reads the global batch and accelerate
    # hands each rank its half).
    "stream": (16, 1, True),
}


def run_train(out: Path) -> None:
    from conftest import MLP, biased_tabular
    from torch.utils.data import SequentialSampler

    from fairtune import FairTrainer, FairTrainingArguments
    from fairtune.data.streaming import declared_vocabulary

    class InOrder(FairTrainer):
        # Rows in order: a process's micro-batch m is then a fixed slice of the global micro-batch m.
        def _get_train_sampler(self, train_dataset=None):
            return SequentialSampler(train_dataset if train_dataset is not None else self.train_dataset)

    world = int(os.environ.get("WORLD_SIZE", "1"))
    for name, (micro, accumulate, sync) in TRAIN_CONFIGS.items():
        torch.manual_seed(0)
        args = FairTrainingArguments(
            output_dir=str(out / f"trainer_{name}"),
            group_by="sex",
            per_device_train_batch_size=micro // world,
            gradient_accumulation_steps=accumulate,
            max_steps=6,
            optim="sgd",
            learning_rate=0.5,
            lr_scheduler_type="constant",
            weight_decay=0.0,
            max_grad_norm=0.0,
            penalty="demographic_parity",
            penalty_weight=3.0,
            penalty_sync=sync,
            logging_steps=1,
            report_to="none",
            save_strategy="no",
            disable_tqdm=True,
            use_cpu=True,
            seed=0,
        )
        rows = biased_tabular(TRAIN_ROWS, seed=3)
        if name == "stream":
            vocab = declared_vocabulary("sex", None, {"sex": ["F", "M"]})
            args.num_labels = 2
            trainer = FairTrainer(MLP(), args, train_dataset=rows.to_iterable_dataset(), group_vocab=vocab)
        else:
            trainer = InOrder(MLP(), args, train_dataset=rows)
        trainer.train()
        if trainer.accelerator.process_index == 0:
            history = trainer.state.log_history
            state = {
                "world_size": trainer.accelerator.num_processes,
                "weights": [p.detach().flatten().tolist() for p in trainer.model.parameters()],
                "penalty": [h["penalty/demographic_parity"] for h in history if "loss" in h],
            }
            (out / f"train_{name}.json").write_text(json.dumps(state))


def main(mode: str, out_dir: str) -> None:
    out = Path(out_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    if mode == "values":
        dist.init_process_group("gloo")
        run_values(out)
        dist.destroy_process_group()
    elif mode == "train":
        from fairtune.pipeline import shutdown_distributed

        run_train(out)
        shutdown_distributed()
    else:
        raise SystemExit(f"mode must be values or train; got {mode!r}")


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main(sys.argv[1], sys.argv[2])
