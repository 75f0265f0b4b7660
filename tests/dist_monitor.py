"""Score stereotype benchmarks with ``StereotypeMonitor`` on a tiny causal LM and write, per process, the
metrics and how many sequences this process put through the model, to ``OUT.rank<r>.json``.

Run as ``python tests/dist_monitor.py OUT`` or ``torchrun --nproc_per_node 2 tests/dist_monitor.py OUT``
(gloo on CPU); tests/test_lm_benchmarks.py compares the runs: the same metrics on every rank and as on one
process, and each rank scoring about half of the sequences.
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
from lm_helpers import tiny_model, word_tokenizer  # noqa: E402

from fairtune.lm import crows_pairs  # noqa: E402
from fairtune.lm.monitor import StereotypeMonitor  # noqa: E402


def main(out: str) -> None:
    if "WORLD_SIZE" in os.environ:
        dist.init_process_group("gloo")
    rank = dist.get_rank() if dist.is_initialized() else 0
    texts = [t for p in crows_pairs.load_crows_pairs()[:60] for t in (p.sent_more, p.sent_less)]
    tok = word_tokenizer(texts)
    model = tiny_model(len(tok))
    seen = [0]
    model.register_forward_hook(
        lambda module, args, kwargs, output: seen.__setitem__(0, seen[0] + len(kwargs["input_ids"])),
        with_kwargs=True,
    )
    monitor = StereotypeMonitor(
        ["crows_pairs", "stereoset", "bbq", "perplexity"],
        bias_types=["gender"],
        max_examples=7,  # odd: one process fills its share with a repeat
        batch_size=3,
        perplexity_texts=texts[:9],
    )
    metrics = monitor.evaluate(model, tok)
    Path(f"{out}.rank{rank}.json").write_text(json.dumps({"metrics": metrics, "sequences": seen[0]}))
    if dist.is_initialized():
        dist.destroy_process_group()


if __name__ == "__main__":
    torch.set_num_threads(1)
    main(sys.argv[1])
