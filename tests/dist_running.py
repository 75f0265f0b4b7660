"""Running statistics on gathered sums: each rank penalises its half of every global batch with
``ProcessSync`` and writes its values, logit gradients and final running state to ``OUT.rank<r>.json``.

Run as ``torchrun --nproc_per_node 2 tests/dist_running.py OUT``; tests/test_running_stats.py compares both
ranks with each other and with one process on the whole global batches.
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
import torch.distributed as dist  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import fairtune.mitigation as M  # noqa: E402
from fairtune.mitigation.penalties import PenaltyBatch, ProcessSync  # noqa: E402

STEPS, GLOBAL_BATCH, GROUPS = 6, 16, 6


def global_batch(step: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(step)
    logits = torch.randn(GLOBAL_BATCH, 2, generator=gen)
    labels = torch.randint(0, 2, (GLOBAL_BATCH,), generator=gen)
    groups = torch.randint(0, GROUPS, (GLOBAL_BATCH,), generator=gen)
    return logits, labels, groups


def run(rows: slice, sync: ProcessSync | None) -> dict:
    """Values, logit gradients of ``rows`` and the final state of an EMA and a window DP penalty."""
    out = {}
    for name, penalty in (
        ("ema", M.DemographicParity(spread="l2_dev", running="ema", momentum=0.8)),
        ("window", M.EqualizedOdds(running="window", window=2)),
    ):
        values, grads = [], []
        for step in range(STEPS):
            logits, labels, groups = global_batch(step)
            leaf = logits[rows].clone().requires_grad_()
            losses = F.cross_entropy(leaf, labels[rows], reduction="none")
            value = penalty(PenaltyBatch(leaf, labels[rows], groups[rows], GROUPS, losses, sync=sync))
            value.backward()
            values.append(value.item())
            grads.append(leaf.grad.tolist())
        state = penalty.state_dict()["running"]
        past = state["past"] if state["past"] is not None else state["history"]
        out[name] = {"values": values, "grads": grads, "past": past.tolist()}
    return out


def main(out: str) -> None:
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    half = GLOBAL_BATCH // world
    result = run(slice(rank * half, (rank + 1) * half), ProcessSync())
    result["rows"] = [rank * half, (rank + 1) * half]
    Path(f"{out}.rank{rank}.json").write_text(json.dumps(result))
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else os.environ["OUT"])
