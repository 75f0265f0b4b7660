"""``FairTrainer``: the Hugging Face ``Trainer`` with group-aware data, per-sample loss, group metrics."""

from __future__ import annotations

import logging
import os
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import torch
import torch.nn.functional as F
from torch import nn
from transformers import DataCollatorWithPadding, PreTrainedTokenizerBase, Trainer, default_data_collator
from transformers.trainer_callback import ProgressCallback

from fairtune.config import FairTrainingArguments
from fairtune.data.collator import FairDataCollator
from fairtune.groups import GROUP_COLUMN_PREFIX, GroupVocabulary, check_columns, group_column
from fairtune.metrics import GroupStats, flatten_metrics

logger = logging.getLogger(__name__)

ERR_ARGS_TYPE = "FairTrainer needs FairTrainingArguments (with group_by set); got {kind}."
ERR_NO_GROUP_BY = (
    "FairTrainingArguments.group_by is not set: name the attribute column(s) to group by, e.g. "
    "group_by='sex' or group_by='sex+race'."
)
ERR_NO_TRAIN_DATA = "FairTrainer needs a train_dataset to fix the group vocabulary, or a loaded group_vocab."
ERR_DATASET_TYPE = "The {split} dataset must be a datasets.Dataset (with attribute columns); got {kind}."
ERR_EMPTY_DATASET = "The {split} dataset is empty; it needs at least one row."
ERR_NO_LABEL = "The {split} dataset has no 'labels' or 'label' column. Its columns are: {columns}."
ERR_LABEL_TYPE = (
    "Labels of the {split} dataset must be integer class ids; column {column!r} has type {dtype}. "
    "FairTrainer trains classifiers."
)
ERR_LABEL_RANGE = (
    "Labels of the {split} dataset must lie in [0, {num_labels}) for a model with num_labels={num_labels}; "
    "found values from {low} to {high}."
)
ERR_NUM_LABELS = (
    "The model's classification head must output at least 2 logits; it has num_labels={num_labels}."
)
ERR_UNKNOWN_NUM_LABELS = (
    "Cannot tell the number of classes: the model has no config.num_labels and no training data was given; "
    "set FairTrainingArguments.num_labels."
)
ERR_OUTPUT_DIR = (
    "output_dir {path!r} already holds a run ({found}). Pass overwrite_output_dir=True to train into it, "
    "resume_from_checkpoint to continue it, or choose another output_dir."
)


def logits_of(outputs: Any) -> torch.Tensor:
    """Logits (N, C) from a ``ModelOutput``, a dict, a tuple, or a bare tensor (plain ``nn.Module``)."""
    if isinstance(outputs, torch.Tensor):
        return outputs
    if isinstance(outputs, dict) or hasattr(outputs, "keys"):
        return outputs["logits"]
    return outputs[0]


class CompactProgressCallback(ProgressCallback):
    """Console progress that prints the gaps but not the hundreds of per-group keys of a log.

    Only the terminal view is trimmed: every key still reaches the ``report_to`` backends and the history.
    """

    def on_log(
        self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kwargs: Any
    ) -> None:
        logs = {
            k: v
            for k, v in (logs or {}).items()
            if k.count("/") < 2 and not k.endswith(("_ci_low", "_ci_high"))
        }
        super().on_log(args, state, control, logs=logs, **kwargs)


class FairTrainer(Trainer):
    """A ``transformers.Trainer`` that knows which demographic group every sample belongs to.

    * Attribute columns of the datasets are encoded to ids (``group:<grouping>`` columns) with a vocabulary
      fixed from the training data; they pass the collator beside the model inputs and are popped before
      ``model.forward``.
    * The task loss is computed per sample (``per_sample_loss``), so weights and penalties can act on it,
      and normalised over the whole gradient-accumulation window.
    * ``evaluate()`` adds per-group rates and fairness gaps (with bootstrap intervals) for every grouping in
      ``args.eval_group_by`` to its metrics, so they reach every ``report_to`` backend and can drive
      ``metric_for_best_model``; training logs carry the running loss of each group.

    Args:
        group_vocab: a saved ``GroupVocabulary`` (e.g. of a fine-tuned model being re-evaluated); default:
            fitted on ``train_dataset``.
        Other arguments are those of ``transformers.Trainer``.
    """

    args: FairTrainingArguments

    def __init__(
        self,
        model: nn.Module | None = None,
        args: FairTrainingArguments | None = None,
        data_collator: Any = None,
        train_dataset: Any = None,
        eval_dataset: Any = None,
        processing_class: Any = None,
        group_vocab: GroupVocabulary | None = None,
        **kwargs: Any,
    ):
        # Everything that can be wrong with the inputs is checked here, before Trainer starts anything.
        if not isinstance(args, FairTrainingArguments):
            raise TypeError(ERR_ARGS_TYPE.format(kind=type(args).__name__))
        if not args.group_by:
            raise ValueError(ERR_NO_GROUP_BY)
        if model is None:
            raise ValueError("FairTrainer needs a model (model_init is not supported).")
        self.group_vocab = group_vocab or GroupVocabulary(args.group_by, args.eval_group_by)
        for spec in args.eval_group_by or []:
            if spec not in self.group_vocab.groupings:  # a loaded vocabulary may lack a newly asked grouping
                raise ValueError(
                    f"eval_group_by names {spec!r}, which the loaded group vocabulary does not have "
                    f"(it has {list(self.group_vocab.groupings)})."
                )
        if not self.group_vocab.fitted:
            if train_dataset is None:
                raise ValueError(ERR_NO_TRAIN_DATA)
            self._check_dataset(train_dataset, "training")
            self.group_vocab.fit(train_dataset)
        self.num_labels = self._resolve_num_labels(model, args, train_dataset)
        if train_dataset is not None:
            train_dataset = self.prepare_dataset(train_dataset, "training")
        if isinstance(eval_dataset, dict):
            eval_dataset = {k: self.prepare_dataset(v, f"evaluation ({k})") for k, v in eval_dataset.items()}
        elif eval_dataset is not None:
            eval_dataset = self.prepare_dataset(eval_dataset, "evaluation")

        if data_collator is None:
            data_collator = (
                DataCollatorWithPadding(processing_class)
                if isinstance(processing_class, PreTrainedTokenizerBase)
                else default_data_collator
            )
        if not isinstance(data_collator, FairDataCollator):
            data_collator = FairDataCollator(data_collator)

        super().__init__(
            model=model,
            args=args,
            data_collator=data_collator,
            train_dataset=train_dataset,
            eval_dataset=eval_dataset,
            processing_class=processing_class,
            **kwargs,
        )
        # compute_loss below divides the summed per-sample loss by the number of samples in the whole
        # accumulation window (num_items_in_batch); this flag makes Trainer count them and not divide again.
        self.model_accepts_loss_kwargs = True
        if self.pop_callback(ProgressCallback) is not None:
            self.add_callback(CompactProgressCallback)
        if not self.label_names:  # a plain nn.Module's forward has no `labels` argument to infer it from
            self.label_names = ["labels"]
        self.group_columns = [group_column(name) for name in self.group_vocab.groupings]
        self.train_group_column = group_column(self.group_vocab.train_grouping)
        # Running per-group loss between two training logs: sums and counts, shape (G,), on the device.
        self._group_loss_sum: torch.Tensor | None = None
        self._group_loss_count: torch.Tensor | None = None
        self._eval_stats: dict[str, GroupStats] | None = None
        self._eval_batches_seen = 0
        # Last fairness results: metric prefix ("eval", "test", ...) -> grouping -> GroupStats.compute().
        self.fairness_results: dict[str, dict[str, dict[str, Any]]] = {}
        self._output_dir_checked = False

    # ----- data -------------------------------------------------------------------------------------
    @staticmethod
    def _check_dataset(dataset: Any, split: str) -> None:
        import datasets

        if not isinstance(dataset, datasets.Dataset):
            raise TypeError(ERR_DATASET_TYPE.format(split=split, kind=type(dataset).__name__))
        if len(dataset) == 0:
            raise ValueError(ERR_EMPTY_DATASET.format(split=split))

    def _resolve_num_labels(self, model: nn.Module, args: FairTrainingArguments, train_dataset: Any) -> int:
        config = getattr(model, "config", None)
        num_labels = getattr(config, "num_labels", None) or args.num_labels
        if num_labels is None and train_dataset is not None:
            label = self._label_column(train_dataset, "training")
            check_columns(train_dataset, [label], split="training", what="the labels")
            num_labels = max(2, int(max(train_dataset[label])) + 1)
        if num_labels is None:
            raise ValueError(ERR_UNKNOWN_NUM_LABELS)
        if num_labels < 2:
            raise ValueError(ERR_NUM_LABELS.format(num_labels=num_labels))
        return int(num_labels)

    @staticmethod
    def _label_column(dataset: Any, split: str) -> str:
        label = next((c for c in ("labels", "label") if c in dataset.column_names), None)
        if label is None:
            raise ValueError(ERR_NO_LABEL.format(split=split, columns=dataset.column_names))
        return label

    def prepare_dataset(self, dataset: Any, split: str = "evaluation") -> Any:
        """Check labels and attribute columns, then add the ``group:<grouping>`` id columns.

        Raises before anything runs if a column is missing, holds missing/NaN values, or a label lies
        outside ``[0, num_labels)``.
        """
        self._check_dataset(dataset, split)
        label = self._label_column(dataset, split)
        check_columns(dataset, [label], split=split, what="the labels")
        column = dataset.with_format("arrow")[label]
        if not pa.types.is_integer(column.type):
            raise ValueError(ERR_LABEL_TYPE.format(split=split, column=label, dtype=column.type))
        low, high = pc.min(column).as_py(), pc.max(column).as_py()
        if low < 0 or high >= self.num_labels:
            raise ValueError(
                ERR_LABEL_RANGE.format(split=split, num_labels=self.num_labels, low=low, high=high)
            )
        return self.group_vocab.encode(dataset, split=split)

    def _set_signature_columns_if_needed(self) -> None:
        # Group id columns are not arguments of model.forward; without this, remove_unused_columns drops them.
        super()._set_signature_columns_if_needed()
        for col in self.group_columns:
            if col not in self._signature_columns:
                self._signature_columns.append(col)

    # ----- loss -------------------------------------------------------------------------------------
    def per_sample_loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Task loss per sample: cross-entropy of logits (N, C) against class ids (N,) -> (N,).

        Computed in float32 so that bf16/fp16 logits do not lose the small per-sample differences that
        weights and penalties act on.
        """
        return F.cross_entropy(logits.float(), labels, reduction="none")

    def compute_loss(
        self,
        model: nn.Module,
        inputs: dict[str, Any],
        return_outputs: bool = False,
        num_items_in_batch: torch.Tensor | int | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, Any]:
        """Forward without group columns or labels, then the per-sample task loss, normalised.

        ``num_items_in_batch`` counts the samples of the whole accumulation window (over all processes
        when ``average_tokens_across_devices``), so the loss of unequal micro-batches averages correctly.
        """
        groups = {k: inputs.pop(k) for k in list(inputs) if k.startswith(GROUP_COLUMN_PREFIX)}
        labels = inputs.pop("labels")
        outputs = model(**inputs)
        logits = logits_of(outputs)
        if logits.dim() != 2 or logits.shape[-1] < 2:
            raise ValueError(ERR_NUM_LABELS.format(num_labels=logits.shape[-1] if logits.dim() else 1))
        losses = self.per_sample_loss(logits, labels)
        if model.training and self.train_group_column in groups:
            self._track_group_loss(losses.detach(), groups[self.train_group_column])
        loss = self.reduce_loss(losses, num_items_in_batch)
        return (loss, outputs) if return_outputs else loss

    def reduce_loss(
        self, losses: torch.Tensor, num_items_in_batch: torch.Tensor | int | None
    ) -> torch.Tensor:
        """(N,) per-sample losses -> scalar: a mean over this batch, or a share of the accumulation window."""
        if num_items_in_batch is None:
            return losses.mean()
        loss = losses.sum() / num_items_in_batch
        if self.args.average_tokens_across_devices and self.accelerator.num_processes > 1:
            # num_items_in_batch was summed over processes, and DDP averages gradients over them.
            loss = loss * self.accelerator.num_processes
        return loss

    def _track_group_loss(self, losses: torch.Tensor, groups: torch.Tensor) -> None:
        if self._group_loss_sum is None:  # sized once: the training vocabulary is fixed
            num_groups = self.group_vocab.groupings[self.group_vocab.train_grouping].num_train_groups
            self._group_loss_sum = torch.zeros(num_groups, device=losses.device)
            self._group_loss_count = torch.zeros(num_groups, device=losses.device)
        self._group_loss_sum.index_add_(0, groups, losses.float())
        self._group_loss_count.index_add_(0, groups, torch.ones_like(losses, dtype=torch.float))

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """Add the running per-group training loss (summed over processes) to training logs."""
        if "loss" in logs and self._group_loss_sum is not None:
            sums = self.accelerator.reduce(self._group_loss_sum, reduction="sum")
            counts = self.accelerator.reduce(self._group_loss_count, reduction="sum")
            grouping = self.group_vocab.train_grouping
            for name, s, n in zip(
                self.group_vocab.names(grouping), sums.tolist(), counts.tolist(), strict=False
            ):
                if n > 0:
                    logs[f"{grouping}/{name}/loss"] = s / n
            self._group_loss_sum.zero_()
            self._group_loss_count.zero_()
        super().log(logs, start_time)

    # ----- evaluation -------------------------------------------------------------------------------
    def prediction_step(
        self,
        model: nn.Module,
        inputs: dict[str, Any],
        prediction_loss_only: bool,
        ignore_keys: list[str] | None = None,
    ) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
        """Loss and logits as in ``Trainer``, plus an update of the streaming group statistics."""
        inputs = self._prepare_inputs(inputs)
        groups = {k: v for k, v in inputs.items() if k.startswith(GROUP_COLUMN_PREFIX)}
        labels = inputs.get("labels")
        with torch.no_grad(), self.compute_loss_context_manager():
            if labels is None:  # predict() on unlabeled data: no loss, no group metrics
                outputs = model(**{k: v for k, v in inputs.items() if k not in groups})
                return None, None if prediction_loss_only else logits_of(outputs).detach(), None
            loss, outputs = self.compute_loss(model, dict(inputs), return_outputs=True)
        logits = logits_of(outputs).detach()
        if self._eval_stats is not None and groups:
            self._update_eval_stats(logits, labels, groups)
        return loss.detach(), None if prediction_loss_only else logits, labels

    def _update_eval_stats(
        self, logits: torch.Tensor, labels: torch.Tensor, groups: dict[str, torch.Tensor]
    ) -> None:
        names = [c for c in self.group_columns if c in groups]
        stacked = torch.stack([groups[c] for c in names], dim=1)  # (N, K): one gather for all groupings
        # gather_for_metrics collects every process's batch and drops the duplicates accelerate pads the
        # last batch with, so each process holds identical, exact counts.
        logits, labels, stacked = self.accelerator.gather_for_metrics((logits.float(), labels, stacked))
        losses = self.per_sample_loss(logits, labels)
        self._eval_batches_seen += 1
        for k, col in enumerate(names):
            self._eval_stats[col].update(labels, stacked[:, k], logits=logits, losses=losses)

    def evaluation_loop(
        self,
        dataloader: Any,
        description: str,
        prediction_loss_only: bool | None = None,
        ignore_keys: list[str] | None = None,
        metric_key_prefix: str = "eval",
    ) -> Any:
        """Run ``Trainer.evaluation_loop`` and add per-group metrics and gaps for every grouping."""
        self._eval_stats = {
            group_column(name): GroupStats(
                self.num_labels,
                len(g.values),
                ece_bins=self.args.ece_bins,
                bootstrap_samples=self.args.bootstrap_samples,
                seed=self.args.seed,
            )
            for name, g in self.group_vocab.groupings.items()
        }
        self._eval_batches_seen = 0
        try:
            output = super().evaluation_loop(
                dataloader, description, prediction_loss_only, ignore_keys, metric_key_prefix
            )
            results = {}
            for name in self.group_vocab.groupings:
                if not self._eval_batches_seen:
                    break  # predict() on unlabeled data: nothing to report
                result = self._eval_stats[group_column(name)].compute(
                    self.group_vocab.names(name),
                    min_group_size=self.args.min_group_size,
                    confidence=self.args.confidence_level,
                )
                result["confidence"] = self.args.confidence_level
                for warning in result["warnings"]:
                    logger.warning("[%s %s] %s", metric_key_prefix, name, warning)
                results[name] = result
                output.metrics.update(flatten_metrics(result, f"{metric_key_prefix}_{name}"))
        finally:
            self._eval_stats = None
        loss_key = f"{metric_key_prefix}_loss"
        if results and loss_key in output.metrics:
            # Trainer averages per-batch means, so on several processes the padding duplicates of the last
            # batch leak into eval_loss; the per-sample sum in GroupStats excludes them exactly.
            output.metrics[loss_key] = float(results[self.group_vocab.train_grouping]["overall"]["loss"])
        if results:
            self.fairness_results[metric_key_prefix] = results
        return output

    def evaluate(
        self, eval_dataset: Any = None, ignore_keys: list[str] | None = None, metric_key_prefix: str = "eval"
    ) -> dict[str, float]:
        """``Trainer.evaluate``; a dataset passed here gets its attribute columns encoded first."""
        if eval_dataset is not None and not isinstance(eval_dataset, dict | str):
            eval_dataset = self._ensure_prepared(eval_dataset, metric_key_prefix)
        return super().evaluate(eval_dataset, ignore_keys, metric_key_prefix)

    def predict(
        self, test_dataset: Any, ignore_keys: list[str] | None = None, metric_key_prefix: str = "test"
    ) -> Any:
        """``Trainer.predict``; labeled data also gets the fairness metrics in ``.metrics``."""
        if "labels" in test_dataset.column_names or "label" in test_dataset.column_names:
            test_dataset = self._ensure_prepared(test_dataset, metric_key_prefix)
        return super().predict(test_dataset, ignore_keys, metric_key_prefix)

    def _ensure_prepared(self, dataset: Any, split: str) -> Any:
        if all(c in dataset.column_names for c in self.group_columns):
            return dataset
        return self.prepare_dataset(dataset, split)

    # ----- saving -----------------------------------------------------------------------------------
    def train(self, resume_from_checkpoint: str | bool | None = None, **kwargs: Any) -> Any:
        """``Trainer.train``, refusing to overwrite an earlier run in ``output_dir`` unless told to."""
        if not resume_from_checkpoint and not self._output_dir_checked and not self.args.overwrite_output_dir:
            check_output_dir(self.args.output_dir)
        self._output_dir_checked = True
        return super().train(resume_from_checkpoint=resume_from_checkpoint, **kwargs)

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        # The vocabulary travels with every checkpoint and the final model, so ids mean the same later.
        super()._save(output_dir, state_dict)
        self.group_vocab.save(output_dir or self.args.output_dir)


RUN_MARKERS = (
    "model.safetensors",
    "pytorch_model.bin",
    "adapter_model.safetensors",
    "trainer_state.json",
    "group_vocab.json",
)


def check_output_dir(path: str | None) -> None:
    """Raise if ``path`` holds checkpoints or a saved model from an earlier run."""
    if not path or not os.path.isdir(path):
        return
    found = sorted(name for name in os.listdir(path) if name.startswith("checkpoint-") or name in RUN_MARKERS)
    if found:
        raise FileExistsError(ERR_OUTPUT_DIR.format(path=path, found=", ".join(found[:5])))
