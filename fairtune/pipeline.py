"""The config run end to end: load data -> build model -> train -> evaluate -> report.

``scripts/train.py`` and ``fairtune train`` both call ``run``. Every check that can fail on user input runs
before training starts and before anything is written to ``output_dir``.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict
from typing import Any

from fairtune.audit import audit_dataset, proxy_options, write_audit
from fairtune.config import DataArguments, FairTrainingArguments, ModelArguments, resolve_model_path
from fairtune.data.loading import (
    augment_training_data,
    describe_source,
    load_raw_datasets,
    tokenize,
    word_pairs,
)
from fairtune.data.streaming import (
    ERR_STREAM_OPTION,
    StreamCounts,
    cell_counts,
    check_counted_groups,
    check_streaming_options,
    count_stream,
    counted_vocabulary,
    declared_vocabulary,
    encode_stream_labels,
    label_vocabulary,
    load_streaming_datasets,
    num_classes,
)
from fairtune.evaluation import counterfactual_flip_rate
from fairtune.groups import VOCAB_FILE, GroupVocabulary, groupings_of
from fairtune.metrics import GroupResult
from fairtune.mitigation import Mitigations
from fairtune.model_card import render_model_card, write_model_card
from fairtune.report import gap_table, group_table, write_report
from fairtune.trainer import FairTrainer, check_output_dir

logger = logging.getLogger(__name__)

ERR_TASK_MODEL = (
    "task is {task!r}, but model_name_or_path {model!r} is {kind}; set task: {other}, or name a model for "
    "{task} (classification: an encoder such as minilm; causal_lm: a causal LM such as smollm2)."
)
CAUSAL_LM_SUFFIXES = ("ForCausalLM", "LMHeadModel")
ERR_PAIRS_NEED_AUGMENTATION = (
    "penalty {method!r} compares each training row with its counterfactual copy: set "
    "counterfactual_augmentation: add (the copies and their pair ids are made from the training text)."
)


def build_model(model_args: ModelArguments, num_labels: int, label_names: list[str] | None = None) -> Any:
    """A pretrained sequence classifier with a fresh ``num_labels`` head, LoRA-wrapped if asked."""
    from transformers import AutoModelForSequenceClassification

    kwargs: dict[str, Any] = {"num_labels": num_labels}
    if label_names:
        kwargs["id2label"] = dict(enumerate(label_names))
        kwargs["label2id"] = {n: i for i, n in enumerate(label_names)}
    model = AutoModelForSequenceClassification.from_pretrained(
        resolve_model_path(model_args.model_name_or_path), **kwargs
    )
    return wrap_lora(model, model_args, "SEQ_CLS")


def wrap_lora(model: Any, model_args: ModelArguments, task_type: str) -> Any:
    """``model`` with LoRA adapters (peft) when ``model_args.use_lora``, else ``model`` unchanged."""
    if not model_args.use_lora:
        return model
    from peft import LoraConfig, TaskType, get_peft_model

    config = LoraConfig(
        task_type=TaskType[task_type],
        r=model_args.lora_r,
        lora_alpha=model_args.lora_alpha,
        lora_dropout=model_args.lora_dropout,
        target_modules=model_args.lora_target_modules,
    )
    return get_peft_model(model, config)


def _label_info(dataset: Any) -> tuple[int, list[str] | None]:
    import datasets

    feature = dataset.features["label"]
    if isinstance(feature, datasets.ClassLabel):
        return feature.num_classes, list(feature.names)
    return max(2, int(max(dataset["label"])) + 1), None


def check_model_for_task(name: str, task: str) -> None:
    """Refuse a causal LM for classification and the reverse, from the alias or the saved config (no weights
    load); a Hub name is checked by the trainer once the model is built."""
    from fairtune.config import DEFAULT_MODEL
    from fairtune.lm.models import ALIASES

    if name.lower() in ALIASES:
        causal = True
    elif name == DEFAULT_MODEL:
        causal = False
    elif os.path.isfile(os.path.join(name, "config.json")):
        with open(os.path.join(name, "config.json")) as f:
            architectures = json.load(f).get("architectures") or []
        if not architectures:
            return
        causal = any(a.endswith(CAUSAL_LM_SUFFIXES) for a in architectures)
    else:
        return
    if causal != (task == "causal_lm"):
        kind = "a causal language model" if causal else "not a causal language model"
        other = "causal_lm" if causal else "classification"
        raise ValueError(ERR_TASK_MODEL.format(task=task, model=name, kind=kind, other=other))


def build(
    model_args: ModelArguments, data_args: DataArguments, args: FairTrainingArguments
) -> tuple[FairTrainer, Any]:
    """Load and check data, groups, methods and model; returns the trainer and the tokenized splits.

    Every user-input error surfaces here, before training and before anything is written; the checks that
    need no model (methods and their options, data, groups, labels, post-processing on the task) run before
    the tokenizer and the model are loaded.
    """
    from transformers import set_seed

    if args.task == "causal_lm" and data_args.streaming:
        reason = "causal LM runs read their corpus in memory; streaming is for classification."
        raise ValueError(ERR_STREAM_OPTION.format(option="task='causal_lm'", reason=reason))
    check_model_for_task(model_args.model_name_or_path, args.task)
    if args.task == "causal_lm":
        from fairtune.lm_pipeline import build_causal_lm

        set_seed(args.seed)
        return build_causal_lm(model_args, data_args, args)
    if not args.overwrite_output_dir and not args.resume_from_checkpoint:
        check_output_dir(args.output_dir)
    mitigations = Mitigations.from_args(args)  # unknown names and bad options fail before any data loads
    check_streaming_options(data_args, args, [r.name for r in _reweighters(mitigations)])
    set_seed(args.seed)
    # Given the groupings, loading checks columns, missing values, labels and group counts of every split.
    groupings = groupings_of(args.group_by, args.eval_group_by)
    if data_args.streaming:
        return build_streaming(model_args, data_args, args, mitigations)
    raw = load_raw_datasets(
        data_args, data_args.data_seed_for_splits, groupings, missing_group=args.missing_group
    )
    if mitigations.needs_pairs and data_args.counterfactual_augmentation != "add":
        raise ValueError(ERR_PAIRS_NEED_AUGMENTATION.format(method=args.penalty))
    raw["train"] = augment_training_data(raw["train"], data_args, pair_ids=mitigations.needs_pairs)
    num_labels, label_names = _label_info(raw["train"])
    mitigations.check_task(num_labels, has_validation="validation" in raw)
    path = resolve_model_path(model_args.model_name_or_path)
    # A fine-tuned fairtune model carries its group vocabulary: reuse it so group ids mean what they meant.
    saved_vocab = os.path.join(path, VOCAB_FILE)
    if os.path.isfile(saved_vocab):
        vocab = GroupVocabulary.load(saved_vocab, args.missing_group)
    else:
        vocab = GroupVocabulary(args.group_by, args.eval_group_by, args.missing_group).fit(raw["train"])
    return _text_trainer(path, model_args, data_args, args, raw, vocab, mitigations, num_labels, label_names)


def _text_trainer(
    path: str,
    model_args: ModelArguments,
    data_args: DataArguments,
    args: FairTrainingArguments,
    raw: Any,
    vocab: GroupVocabulary,
    mitigations: Mitigations,
    num_labels: int,
    label_names: list[str] | None,
) -> tuple[FairTrainer, Any]:
    """Tokenize the splits (in memory or streamed), build the classifier and its ``FairTrainer``; the test
    split is checked and group-encoded now, so a bad test file fails before training."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    data = tokenize(
        raw, tokenizer, data_args.text_column, data_args.text_pair_column, data_args.max_seq_length
    )
    model = build_model(model_args, num_labels, label_names)
    trainer = FairTrainer(
        model=model,
        args=args,
        train_dataset=data["train"],
        eval_dataset=data["validation"],
        processing_class=tokenizer,
        group_vocab=vocab,
        mitigations=mitigations,
    )
    if "test" in data:
        data["test"] = trainer.prepare_dataset(data["test"], "test")
    return trainer, data


def _reweighters(mitigations: Mitigations) -> list[Any]:
    """The static (count-fitted) reweighters of a run, loss and sampler mode."""
    return [r for r in (*mitigations.loss_reweighters, mitigations.sampler_reweighter) if r is not None]


def build_streaming(
    model_args: ModelArguments,
    data_args: DataArguments,
    args: FairTrainingArguments,
    mitigations: Mitigations,
) -> tuple[FairTrainer, Any]:
    """``build`` for ``streaming: true``: iterable splits, tokenized lazily; vocabulary, class names and
    reweighting counts declared, loaded or counted in one pass over the training stream (see
    ``fairtune.data.streaming``). Returns the trainer and the streamed splits; ``trainer.stream_counts``
    holds a counting pass's result (None without one), which ``train_and_report`` saves."""
    groupings = groupings_of(args.group_by, args.eval_group_by)
    raw, sources = load_streaming_datasets(data_args, groupings)
    counts = StreamCounts.load(data_args.stream_counts) if data_args.stream_counts else None
    path = resolve_model_path(model_args.model_name_or_path)
    saved_vocab = os.path.join(path, VOCAB_FILE)
    if os.path.isfile(saved_vocab):
        vocab = GroupVocabulary.load(saved_vocab)
    else:
        vocab = declared_vocabulary(args.group_by, args.eval_group_by, data_args.group_values)
    reweighters = _reweighters(mitigations)
    counted = None
    needs_counts = bool(reweighters) and not data_args.group_shares
    if counts is None and (vocab is None or not data_args.class_names or needs_counts):
        counted = counts = count_stream(raw["train"], groupings, split=f"train ({sources['train']})")
    if vocab is None:
        vocab = counted_vocabulary(args.group_by, args.eval_group_by, counts)
    if counts is not None:
        check_counted_groups(vocab, counts)
    class_names = label_vocabulary(data_args.class_names, counts)
    num_labels = num_classes(class_names, counts)
    if reweighters:
        table = cell_counts(
            vocab, class_names, num_labels, counts, data_args.group_shares, [r.name for r in reweighters]
        )
        for reweighter in reweighters:
            reweighter.fit_counts(table)
    mitigations.check_task(num_labels, has_validation=True)
    for split in raw:
        raw[split] = encode_stream_labels(raw[split], class_names, num_labels, f"{split} ({sources[split]})")
    trainer, data = _text_trainer(
        path, model_args, data_args, args, raw, vocab, mitigations, num_labels, class_names
    )
    trainer.stream_counts = counted
    return trainer, data


def run(model_args: ModelArguments, data_args: DataArguments, args: FairTrainingArguments) -> dict[str, Any]:
    """Fine-tune, evaluate on validation and test, write model, vocabulary and fairness report.

    Returns ``{"validation": metrics, "test": metrics}`` as ``Trainer.evaluate`` gives them, plus
    ``validation_thresholds`` / ``test_thresholds`` with post-processing.
    """
    return train_and_report(*build(model_args, data_args, args), model_args, data_args)


def train_and_report(
    trainer: FairTrainer, data: Any, model_args: ModelArguments, data_args: DataArguments
) -> dict[str, Any]:
    """Train a built trainer, evaluate, and write the report (main process only)."""
    if not trainer.is_classifier:
        from fairtune.lm_pipeline import train_and_report_lm

        return train_and_report_lm(trainer, data, model_args, data_args)
    args = trainer.args
    if args.reweighting == "jtt":  # Just Train Twice: an ERM identification run, then a second trainer
        from fairtune.mitigation.jtt import train_twice

        trainer = train_twice(trainer)
    else:
        trainer.train(resume_from_checkpoint=args.resume_from_checkpoint)
    trainer.save_model()

    metrics = {"validation": _final_validation(trainer)}
    splits = {"validation": trainer.fairness_results["eval"]}
    scored = {}
    if "test" in data:
        if trainer.post_processing is not None:
            # One pass gives the test metrics and the scores the thresholds are applied to.
            scored["test"] = trainer.positive_scores(data["test"], "test")
            metrics["test"] = scored["test"].metrics
        else:
            metrics["test"] = trainer.evaluate(data["test"], metric_key_prefix="test")
        splits["test"] = trainer.fairness_results["test"]
    if trainer.post_processing is not None:
        # Thresholds are fitted on validation; the report shows each split before and after them.
        scored["validation"] = trainer.positive_scores(data["validation"], "validation_scores")
        thresholds = trainer.fit_thresholds(scored=scored["validation"])
        if trainer.is_world_process_zero():
            thresholds.save(args.output_dir)
        for split in [s for s in ("validation", "test") if s in scored]:
            _, results = trainer.predict_with_thresholds(scored=scored[split])
            splits[f"{split} + thresholds"] = results
            metrics[f"{split}_thresholds"] = {
                k: v for name, r in results.items() for k, v in r.flat(f"{split}_{name}").items()
            }
    flips = None
    streamed = data_args.streaming
    # Flip rates and the data audit read a split whole: for streamed data they are left out.
    if not streamed and "test" in data and data_args.text_column in data["test"].column_names:
        # How often a prediction changes when only the identity terms of the text are swapped.
        flips = counterfactual_flip_rate(
            trainer,
            data["test"],
            word_pairs(data_args.counterfactual_word_lists),
            data_args.text_column,
            data_args.text_pair_column,
            data_args.max_seq_length,
        )
        metrics["test"]["test_counterfactual_flip_rate"] = flips.rate
    if trainer.is_world_process_zero():
        run_info = {
            "model": model_args.model_name_or_path,
            "dataset": describe_source(data_args),
            "group_by": args.group_by,
            "mitigation": trainer.mitigations.describe(),
            "post_processing": args.post_processing or "none",
            "data_augmentation": _augmentation_summary(data_args),
        }
        if streamed:
            counts = getattr(trainer, "stream_counts", None)
            run_info["train_rows"] = f"streamed ({counts.rows} rows counted)" if counts else "streamed"
            if counts is not None:
                counts.save(args.output_dir)  # a later run can pass it as stream_counts
        else:
            run_info["train_rows"] = len(data["train"])
            run_info.update({f"{s}_rows": len(data[s]) for s in ("validation", "test") if s in data})
        if flips is not None:
            lists = ", ".join(data_args.counterfactual_word_lists)
            run_info[f"counterfactual_flip_rate (test; word lists: {lists})"] = flips.describe()
        write_report(splits, args.output_dir, run_info)
        audit = None
        if not streamed:
            audit = audit_dataset(
                data["train"],
                groupings_of(args.group_by, args.eval_group_by),
                min_cell_size=args.min_group_size,
                confidence=args.confidence_level,
                **proxy_options(data["train"], data_args),
            )
            write_audit(audit, os.path.join(args.output_dir, "data_audit"))
        card = render_model_card(
            model_args.model_name_or_path,
            str(run_info["dataset"]),
            args.group_by,
            run_info["mitigation"],
            run_info["post_processing"],
            run_info["data_augmentation"],
            audit,
            splits,
            "test" if "test" in data else "validation",
            flip_rate=None if flips is None else flips.describe(),
        )
        write_model_card(args.output_dir, card)
        with open(os.path.join(args.output_dir, "run_config.json"), "w") as f:
            config = {"model": asdict(model_args), "data": asdict(data_args)}
            json.dump(config | {"training": json.loads(args.to_json_string())}, f, indent=2)
        print_summary(splits)
        print(f"\nModel, tokenizer, group vocabulary and fairness report written to {args.output_dir}/")
    return metrics


def shutdown_distributed() -> None:
    """Tear down the process group of a several-process run once every rank is done.

    Left to interpreter exit, gloo's threads can still be running and abort the process ("terminate called
    without an active exception") after all the work is written.
    """
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def _augmentation_summary(data_args: DataArguments) -> str:
    parts = []
    if data_args.counterfactual_augmentation:
        lists = ", ".join(data_args.counterfactual_word_lists)
        parts.append(f"counterfactual ({data_args.counterfactual_augmentation}; word lists: {lists})")
    if data_args.oversample_by:
        cells = " x label" if data_args.oversample_by_label else ""
        parts.append(f"oversampling by {data_args.oversample_by}{cells}")
    return "; ".join(parts) or "none"


def _final_validation(trainer: FairTrainer) -> dict[str, float]:
    """Validation metrics of the final model, reusing the evaluation that training ended with, if any."""
    last = next((h for h in reversed(trainer.state.log_history) if "eval_loss" in h), None)
    ended_with_eval = last is not None and last.get("step") == trainer.state.global_step
    if ended_with_eval and not trainer.args.load_best_model_at_end and "eval" in trainer.fairness_results:
        return last
    return trainer.evaluate(metric_key_prefix="eval")


def print_summary(splits: dict[str, dict[str, GroupResult]]) -> None:
    """Print each split's per-group table and gaps to the terminal (the Markdown renders readably as text)."""
    for split, groupings in splits.items():
        for name, result in groupings.items():
            print(f"\n== {split}: {name} ==\n{group_table(result)}\n\n{gap_table(result)}")
