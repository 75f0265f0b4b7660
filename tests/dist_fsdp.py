"""What torch's own FSDP does on two CPU processes (gloo), beneath accelerate.

Run as ``torchrun --nproc_per_node 2 tests/dist_fsdp.py OUT_DIR``. Shards a small model with FSDP2
(``fully_shard``), trains one step with an extra parameter group outside the model (as fairtune's adversary
head is), then asks for the optimizer's state dict as accelerate's FSDP checkpointing does. Each rank writes
``rank<r>.json``: the gathered weights after the step, how far they moved, and the error the state dict
raised. tests/test_distributed.py checks these: they are why fairtune refuses FSDP on the CPU (accelerate
drops it there; torch runs it) and an adversary under FSDP with checkpoints.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
)
from torch.distributed.fsdp import fully_shard


def main(out_dir: str) -> None:
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 2))
    head = nn.Linear(2, 2)  # like the adversary head: trained by the same optimizer, not in the model
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    fully_shard(model[0])
    fully_shard(model)
    optimizer = torch.optim.AdamW([{"params": model.parameters()}, {"params": head.parameters()}], lr=0.1)
    torch.manual_seed(rank)  # each rank its own batch, as a distributed sampler gives
    head(model(torch.randn(8, 4))).pow(2).mean().backward()
    optimizer.step()
    # Full (unsharded) weights on every rank, as a checkpoint writes them: a collective over both ranks.
    options = StateDictOptions(full_state_dict=True)
    weights = get_model_state_dict(model, options=options)
    result = {
        "world_size": dist.get_world_size(),
        "sharded": type(model[0].weight).__name__,  # DTensor: each rank holds a shard
        "weights": {
            k: v.full_tensor().flatten().tolist() if hasattr(v, "full_tensor") else v.flatten().tolist()
            for k, v in weights.items()
        },
        "optimizer_state_error": None,
    }
    result["moved"] = max(
        (torch.tensor(result["weights"][k]) - v.flatten()).abs().max().item() for k, v in initial.items()
    )
    try:
        get_optimizer_state_dict(model, optimizer, options=options)
    except Exception as error:  # noqa: BLE001 - the error itself is the result
        result["optimizer_state_error"] = type(error).__name__
    (Path(out_dir) / f"rank{rank}.json").write_text(json.dumps(result))
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
