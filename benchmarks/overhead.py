"""Training-step overhead of each mitigation method against a plain ``transformers.Trainer``, in one run.

    python benchmarks/overhead.py [--model minilm|tiny] [--steps 20] [--warmup 3] [--repeats 3]

Same model weights, same tokenized Adult sentences, same batch size and optimizer for every row. Each
configuration trains ``warmup + steps`` optimizer steps; a callback times every step (forward, backward,
optimizer) and the first ``warmup`` are dropped. Configurations run round-robin ``repeats`` times, so slow
drift of the machine hits all of them alike; the table gives the median step time and its ratio to the
plain Trainer's.
"""

from __future__ import annotations

import argparse
import copy
import os
import platform
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch
from transformers import Trainer, TrainerCallback, TrainingArguments

from fairtune import FairTrainer, FairTrainingArguments
from fairtune.config import DataArguments, resolve_model_path
from fairtune.data.loading import load_raw_datasets, tokenize

# name -> FairTrainingArguments fields; None is the plain transformers.Trainer.
METHODS: dict[str, dict[str, Any] | None] = {
    "plain Trainer": None,
    "FairTrainer, no method": {},
    "demographic_parity": {"penalty": "demographic_parity"},
    "equalized_odds": {"penalty": "equalized_odds"},
    "equal_opportunity": {"penalty": "equal_opportunity"},
    "loss_parity": {"penalty": "loss_parity"},
    "mindiff": {"penalty": "mindiff"},
    "kamiran_calders (weights)": {"reweighting": "kamiran_calders"},
    "balanced_group_label (sampler)": {"reweighting": "balanced_group_label", "reweighting_mode": "sampler"},
    "group_dro": {"reweighting": "group_dro"},
    "adversary (hidden)": {"adversary": "group", "adversary_input": "hidden"},
    "adversary (logits)": {"adversary": "group", "adversary_input": "logits"},
}


class StepTimer(TrainerCallback):
    """Wall time of every optimizer step.

    ``synchronize`` (e.g. ``torch.cuda.synchronize``) runs before each clock reading: GPU work is queued
    asynchronously, so without it the clock would measure the launches, not the step (benchmarks/gpu/run.py).
    """

    def __init__(self, synchronize: Callable[[], None] | None = None) -> None:
        self.times: list[float] = []
        self._start = 0.0
        self._sync = synchronize or (lambda: None)

    def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._sync()
        self._start = time.perf_counter()

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._sync()
        self.times.append(time.perf_counter() - self._start)


def build_trainer(
    fields: dict[str, Any] | None,
    model: torch.nn.Module,
    data: Any,
    tokenizer: Any,
    common: dict[str, Any],
    callbacks: list[TrainerCallback],
    group_by: str = "sex",
    data_collator: Any = None,
) -> Trainer:
    """A plain ``Trainer`` (``fields`` None) or a ``FairTrainer`` with ``fields`` on the same arguments.

    ``common`` holds the ``TrainingArguments`` fields both share. Both get the same ``data``: the plain
    Trainer drops the attribute columns itself (``remove_unused_columns``), as its users' runs do.
    """
    if fields is None:
        return Trainer(
            model,
            TrainingArguments(**common),
            data_collator=data_collator,
            train_dataset=data,
            processing_class=tokenizer,
            callbacks=callbacks,
        )
    args = FairTrainingArguments(**common, group_by=group_by, overwrite_output_dir=True, **fields)
    return FairTrainer(
        model,
        args,
        data_collator=data_collator,
        train_dataset=data,
        processing_class=tokenizer,
        callbacks=callbacks,
    )


def load_model(name: str) -> tuple[torch.nn.Module, Any]:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, BertConfig

    path = resolve_model_path("minilm")
    tokenizer = AutoTokenizer.from_pretrained(path)
    if name == "minilm":
        return AutoModelForSequenceClassification.from_pretrained(path, num_labels=2), tokenizer
    config = BertConfig(
        vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, num_labels=2,
    )  # fmt: skip
    torch.manual_seed(0)
    from transformers import BertForSequenceClassification

    return BertForSequenceClassification(config), tokenizer


def time_method(fields: dict[str, Any] | None, model: torch.nn.Module, tokenizer: Any, data: Any, opts: Any):
    common = dict(
        output_dir=os.path.join(opts.tmp, "run"),
        per_device_train_batch_size=opts.batch_size,
        max_steps=opts.warmup + opts.steps,
        learning_rate=5e-5,
        logging_steps=10_000,
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
        use_cpu=True,
        seed=0,
        dataloader_num_workers=0,
    )
    timer = StepTimer()
    trainer = build_trainer(fields, copy.deepcopy(model), data, tokenizer, common, [timer])
    trainer.train()
    return timer.times[opts.warmup :]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False
    )
    parser.add_argument("--model", choices=["minilm", "tiny"], default="minilm")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--methods", nargs="*", default=None, help=f"subset of: {', '.join(METHODS)}")
    parser.add_argument("--tmp", default="/tmp/fairtune-overhead")
    opts = parser.parse_args()
    names = opts.methods or list(METHODS)
    if "plain Trainer" not in names:
        names.insert(0, "plain Trainer")

    data_args = DataArguments(
        max_train_samples=opts.batch_size * (opts.warmup + opts.steps), max_seq_length=96
    )
    raw = load_raw_datasets(data_args, seed=0)
    model, tokenizer = load_model(opts.model)
    data = tokenize(raw, tokenizer, "text", None, 96)["train"]

    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(opts.repeats):
        for name in names:
            times[name] += time_method(METHODS[name], model, tokenizer, data, opts)
            print(
                f"repeat {r + 1}/{opts.repeats} {name}: {statistics.median(times[name]) * 1e3:.1f} ms",
                flush=True,
            )

    base = statistics.median(times["plain Trainer"])
    threads = torch.get_num_threads()
    print(
        f"\n{opts.model}, batch {opts.batch_size}, {opts.steps} timed steps x {opts.repeats} repeats; "
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores, {threads} torch threads, "
        f"torch {torch.__version__}\n"
    )
    print("| method | median step | ratio to plain Trainer |\n|---|---|---|")
    for name in names:
        median = statistics.median(times[name])
        print(f"| {name} | {median * 1e3:.1f} ms | {median / base:.3f} |")


if __name__ == "__main__":
    main()
