"""Build a FairTrainer on each of the processes a launcher started, without ``use_cpu``.

Run as ``torchrun --nproc_per_node 2 tests/dist_unjoined.py`` on a machine without a GPU: transformers then
sets up no process group, so each process would train alone; tests/test_distributed.py checks that every
rank refuses with ERR_PROCESSES_NOT_CONNECTED instead.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

TESTS_DIR = Path(__file__).resolve().parent
for path in (TESTS_DIR, TESTS_DIR.parent):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

from conftest import MLP, biased_tabular  # noqa: E402

from fairtune import FairTrainer, FairTrainingArguments  # noqa: E402

if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    out = tempfile.mkdtemp()
    args = FairTrainingArguments(output_dir=out, group_by="sex", max_steps=1, report_to="none")
    FairTrainer(MLP(), args, train_dataset=biased_tabular(40))
