"""``FairTrainer``: the Hugging Face ``Trainer`` with group-aware data, per-sample loss, group metrics."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch
import torch.nn.functional as F
from torch import nn
from transformers import DataCollatorWithPadding, PreTrainedTokenizerBase, Trainer, default_data_collator
from transformers.trainer_callback import PrinterCallback, ProgressCallback, TrainerCallback

from fairtune.config import FairTrainingArguments
from fairtune.data.collator import FairDataCollator
from fairtune.groups import GROUP_COLUMN_PREFIX, GroupVocabulary, check_columns, group_column
from fairtune.metrics import GroupResult, GroupStats
from fairtune.mitigation import (
    Adversary,
    GroupDRO,
    Penalty,
    PenaltyBatch,
    Reweighter,
    WeightedEpochSampler,
    from_args,
    post_processing_from_args,
)
from fairtune.mitigation.postprocess import GroupThresholds

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
ERR_MITIGATION_TYPE = (
    "mitigations must be Penalty, Reweighter, GroupDRO or Adversary objects; got {kind}. Post-processing "
    "(GroupThresholds) is fitted after training, on validation predictions."
)
ERR_MITIGATION_TWICE = "At most one {what} per trainer; got {count}: {items}."
ERR_REGRESSION_HEAD = (
    "{method} needs class labels, but the model has a regression head (num_labels=1); give it a "
    "classification head with num_labels >= 2."
)
ERR_ADVERSARY_OPTIMIZER = (
    "An adversary trains in a parameter group of the trainer's optimizer; with optimizers=(...) passed in, "
    "add its head's parameters yourself or let FairTrainer create the optimizer."
)
ERR_POSTPROCESS_NO_VALIDATION = (
    "post_processing {name!r} fits its thresholds on a validation set; pass eval_dataset (a single dataset) "
    "or a dataset to fit_thresholds()."
)
ERR_POSTPROCESS_BINARY = (
    "post_processing {name!r} sets thresholds on the positive-class score of a binary classifier; this "
    "model has {num_labels} classes."
)
ERR_POSTPROCESS_NONE = "No post-processing configured: set post_processing or pass a GroupThresholds."
MITIGATION_STATE_FILE = "mitigation_state.pt"


def logits_of(outputs: Any) -> torch.Tensor:
    """Logits (N, C) from a ``ModelOutput``, a dict, a tuple, or a bare tensor (plain ``nn.Module``)."""
    if isinstance(outputs, torch.Tensor):
        return outputs
    if isinstance(outputs, dict) or hasattr(outputs, "keys"):
        return outputs["logits"]
    return outputs[0]


def compact_logs(logs: dict[str, Any] | None) -> dict[str, Any]:
    """The keys of a log worth a terminal line: gaps and losses, not per-group stats or intervals."""
    return {
        k: v for k, v in (logs or {}).items() if k.count("/") < 2 and not k.endswith(("_ci_low", "_ci_high"))
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


@dataclass
class ScoredSplit:
    """One prediction pass of a binary model over a split (``FairTrainer.positive_scores``).

    Attributes:
        scores: (N,) positive-class probabilities.
        labels: (N,) class ids, or None for unlabeled data.
        dataset: the split with its ``group:<grouping>`` columns.
        metrics: the pass's metrics, fairness included.
    """

    scores: np.ndarray
    labels: np.ndarray | None
    dataset: Any
    metrics: dict[str, float]


class _ZeroHeadGrads(TrainerCallback):
    """Clears the adversary head's gradients after every optimizer step.

    Trainer zeroes only ``model``'s gradients; the head lives outside the model, and without this its
    gradients would pile up over the whole run.
    """

    def __init__(self, head: nn.Module):
        self.head = head

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.head.zero_grad(set_to_none=True)


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
        mitigations: list[Any] | None = None,
        **kwargs: Any,
    ):
        # Everything that can be wrong with the inputs is checked here, before Trainer starts anything.
        if not isinstance(args, FairTrainingArguments):
            raise TypeError(ERR_ARGS_TYPE.format(kind=type(args).__name__))
        if not args.group_by:
            raise ValueError(ERR_NO_GROUP_BY)
        if model is None:
            raise ValueError("FairTrainer needs a model (model_init is not supported).")
        self._sort_mitigations([*from_args(args), *(mitigations or [])], model)
        self.group_vocab = group_vocab or GroupVocabulary(args.group_by, args.eval_group_by)
        if (
            group_vocab is not None
            and GroupVocabulary(args.group_by).train_grouping != group_vocab.train_grouping
        ):
            raise ValueError(
                f"group_by is {args.group_by!r}, but the loaded group vocabulary was trained with group_by "
                f"{group_vocab.train_grouping!r}; use that grouping (eval_group_by may list others it has)."
            )
        for spec in args.eval_group_by or []:
            if spec not in self.group_vocab.groupings:  # a loaded vocabulary may lack a newly asked grouping
                raise ValueError(
                    f"eval_group_by names {spec!r}, which the loaded group vocabulary does not have "
                    f"(it has {list(self.group_vocab.groupings)})."
                )
        self.group_columns = [group_column(name) for name in self.group_vocab.groupings]
        self.train_group_column = group_column(self.group_vocab.train_grouping)
        if not self.group_vocab.fitted:
            if train_dataset is None:
                raise ValueError(ERR_NO_TRAIN_DATA)
            self._check_dataset(train_dataset, "training")
            self.group_vocab.fit(train_dataset)
        self.num_labels = self._resolve_num_labels(model, args, train_dataset)
        if train_dataset is not None:
            train_dataset = self.prepare_dataset(train_dataset, "training")
        self._setup_mitigations(model, train_dataset, kwargs.get("optimizers"))
        self.post_processing = post_processing_from_args(args)
        if self.post_processing is not None:
            name = args.post_processing
            if self.num_labels != 2:
                raise ValueError(ERR_POSTPROCESS_BINARY.format(name=name, num_labels=self.num_labels))
            if eval_dataset is None or isinstance(eval_dataset, dict):
                raise ValueError(ERR_POSTPROCESS_NO_VALIDATION.format(name=name))
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
        if self.pop_callback(PrinterCallback) is not None:
            self.add_callback(CompactPrinterCallback)
        if not self.label_names:  # a plain nn.Module's forward has no `labels` argument to infer it from
            self.label_names = ["labels"]
        # Running per-group loss between two training logs: sums and counts, shape (G,), on the device.
        self._group_loss_sum: torch.Tensor | None = None
        self._group_loss_count: torch.Tensor | None = None
        self._eval_stats: dict[str, GroupStats] | None = None
        self._eval_batches_seen = 0
        # Last fairness results: metric prefix ("eval", "test", ...) -> grouping -> result.
        self.fairness_results: dict[str, dict[str, GroupResult]] = {}
        self._output_dir_checked = False
        # Running sums of the loss terms between two training logs (task loss, each penalty, adversary).
        self._term_sums: dict[str, torch.Tensor] = {}
        self._term_steps = 0
        if self.adversary is not None:
            self.adversary.head.to(self.args.device)
            self.add_callback(_ZeroHeadGrads(self.adversary.head))
        if self.group_dro is not None:
            self.group_dro.q = self.group_dro.q.to(self.args.device)

    # ----- mitigation set-up -------------------------------------------------------------------------
    def _sort_mitigations(self, methods: list[Any], model: nn.Module) -> None:
        """Sort mitigation objects by family and check they fit the model, before anything is built."""
        self.penalties: list[Penalty] = []
        reweighters: list[Reweighter] = []
        dro: list[GroupDRO] = []
        adversaries: list[Adversary] = []
        for method in methods:
            if isinstance(method, Penalty):
                self.penalties.append(method)
            elif isinstance(method, Reweighter):
                reweighters.append(method)
            elif isinstance(method, GroupDRO):
                dro.append(method)
            elif isinstance(method, Adversary):
                adversaries.append(method)
            else:
                raise TypeError(ERR_MITIGATION_TYPE.format(kind=type(method).__name__))
        samplers = [r for r in reweighters if r.mode == "sampler"]
        for what, items in (("adversary", adversaries), ("GroupDRO", dro), ("sampler", samplers)):
            if len(items) > 1:
                raise ValueError(ERR_MITIGATION_TWICE.format(what=what, count=len(items), items=items))
        self.loss_reweighters = [r for r in reweighters if r.mode == "weights"]
        self.sampler_reweighter = samplers[0] if samplers else None
        self.group_dro = dro[0] if dro else None
        self.adversary = adversaries[0] if adversaries else None
        self.mitigations = methods
        if getattr(getattr(model, "config", None), "num_labels", None) == 1:
            for method in methods:
                if getattr(method, "needs_labels", True):
                    raise ValueError(ERR_REGRESSION_HEAD.format(method=method))

    def _setup_mitigations(self, model: nn.Module, train_dataset: Any, optimizers: Any) -> None:
        """Fit static weights on the training data and build the adversary head and GroupDRO state."""
        num_groups = self.group_vocab.groupings[self.group_vocab.train_grouping].num_train_groups
        for reweighter in [*self.loss_reweighters, self.sampler_reweighter]:
            if reweighter is None:
                continue
            if train_dataset is not None:  # refit: an object reused with other data must not keep old weights
                groups, labels = self._train_groups_and_labels(train_dataset)
                reweighter.fit(groups, labels, num_groups, self.num_labels)
            elif reweighter.weights is None:
                raise ValueError(f"{reweighter!r} needs a train_dataset to fit its weights on.")
        if self.group_dro is not None:
            self.group_dro.setup(num_groups)
        if self.adversary is not None:
            if optimizers is not None and optimizers[0] is not None:
                raise ValueError(ERR_ADVERSARY_OPTIMIZER)
            self.adversary.build(model, num_groups, self.num_labels)

    def _train_groups_and_labels(self, dataset: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """(N,) training group ids and (N,) labels, read from the arrow table without decoding rows."""
        table = dataset.with_format("arrow")
        groups = torch.tensor(table[self.train_group_column].to_numpy(), dtype=torch.long)
        labels = torch.tensor(table[self._label_column(dataset, "training")].to_numpy(), dtype=torch.long)
        return groups, labels

    def _get_train_sampler(self, train_dataset: Any = None) -> Any:
        """A weighted sampler when a reweighter runs in ``sampler`` mode, else Trainer's own."""
        if self.sampler_reweighter is None:
            return super()._get_train_sampler(train_dataset)
        dataset = train_dataset if train_dataset is not None else self.train_dataset
        groups, labels = self._train_groups_and_labels(dataset)
        weights = self.sampler_reweighter.sample_weights(groups, labels)
        return WeightedEpochSampler(weights, seed=self.args.data_seed or self.args.seed)

    def create_optimizer(self, model: nn.Module | None = None) -> torch.optim.Optimizer:
        """Trainer's optimizer, plus a parameter group for the adversary head (its own lr, no decay)."""
        optimizer = super().create_optimizer(model)
        if self.adversary is not None:
            params = list(self.adversary.head.parameters())
            known = {id(p) for group in optimizer.param_groups for p in group["params"]}
            if not any(id(p) in known for p in params):
                lr = self.adversary.learning_rate or self.args.learning_rate
                optimizer.add_param_group({"params": params, "lr": lr, "weight_decay": 0.0})
        return optimizer

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
        mitigate = model.training and self.train_group_column in groups
        hidden = mitigate and self.adversary is not None and self.adversary.input == "hidden"
        outputs = model(**inputs, output_hidden_states=True) if hidden else model(**inputs)
        logits = logits_of(outputs)
        if logits.dim() != 2 or logits.shape[-1] < 2:
            raise ValueError(ERR_NUM_LABELS.format(num_labels=logits.shape[-1] if logits.dim() else 1))
        losses = self.per_sample_loss(logits, labels)
        if not mitigate:
            loss = self.reduce_loss(losses, num_items_in_batch)
            return (loss, outputs) if return_outputs else loss

        group_ids = groups[self.train_group_column]
        self._track_group_loss(losses.detach(), group_ids)
        self._add_term("task_loss", losses.detach().mean())
        weighted = losses * self.sample_weights(losses.detach(), group_ids, labels)
        loss = self.reduce_loss(weighted, num_items_in_batch)
        # Penalty and adversary terms are per micro-batch; this share makes them average over the
        # accumulation window (and processes) the way the summed task loss does.
        share = 1.0
        if num_items_in_batch is not None:
            share = len(labels) / num_items_in_batch
            if self.args.average_tokens_across_devices and self.accelerator.num_processes > 1:
                share = share * self.accelerator.num_processes
        extra = self.mitigation_loss(outputs, logits, labels, group_ids, losses, inputs.get("attention_mask"))
        if extra is not None:
            loss = loss + share * extra
        return (loss, outputs) if return_outputs else loss

    def sample_weights(
        self, losses: torch.Tensor, groups: torch.Tensor, labels: torch.Tensor
    ) -> torch.Tensor:
        """(N,) loss weights of a training batch: static reweighting times GroupDRO's online weights.

        Args:
            losses: (N,) detached per-sample task losses; groups: (N,) ids; labels: (N,) class ids.
        """
        weights = torch.ones_like(losses)
        for reweighter in self.loss_reweighters:
            weights = weights * reweighter.sample_weights(groups, labels)
        if self.group_dro is not None:
            num_groups = self.group_dro.q.numel()
            sums = torch.zeros(num_groups, device=losses.device).index_add_(0, groups, losses.float())
            counts = torch.zeros(num_groups, device=losses.device).index_add_(
                0, groups, torch.ones_like(losses, dtype=torch.float)
            )
            if self.accelerator.num_processes > 1:  # every process must keep the same q
                sums = self.accelerator.reduce(sums, reduction="sum")
                counts = self.accelerator.reduce(counts, reduction="sum")
            factor = self.group_dro.update(sums, counts)
            weights = weights * factor[groups]
            present = counts > 0
            self._add_term("group_dro/worst_group_loss", (sums / counts.clamp_min(1))[present].max())
        return weights

    def mitigation_loss(
        self,
        outputs: Any,
        logits: torch.Tensor,
        labels: torch.Tensor,
        groups: torch.Tensor,
        losses: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
    ) -> torch.Tensor | None:
        """Weighted penalties plus the adversary's loss for one training batch (a scalar), or None.

        Args:
            outputs: the model outputs; logits: (N, C); labels, groups: (N,); losses: (N,) unweighted task
            losses; attention_mask: (N, T) if the inputs have one (to pool hidden states).
        """
        terms = []
        if self.penalties:
            num_groups = self.group_vocab.groupings[self.group_vocab.train_grouping].num_train_groups
            batch = PenaltyBatch(logits, labels, groups, num_groups, losses)
            for penalty in self.penalties:
                value = penalty(batch)
                self._add_term(f"penalty/{penalty.name}", value.detach())
                terms.append(penalty.weight_at(self.state.global_step) * value)
        if self.adversary is not None:
            representation = self.adversary.representation(outputs, logits, attention_mask)
            adv_losses, correct = self.adversary.loss(representation, groups, labels)
            self._add_term("adversary/loss", adv_losses.detach().mean())
            self._add_term("adversary/accuracy", correct.float().mean())
            terms.append(adv_losses.mean())
        return torch.stack(terms).sum() if terms else None

    def _add_term(self, name: str, value: torch.Tensor) -> None:
        value = value.detach().float()
        self._term_sums[name] = self._term_sums.get(name, torch.zeros_like(value)) + value
        if name == "task_loss":
            self._term_steps += 1

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
        grouping = self.group_vocab.train_grouping
        if "loss" in logs and self._group_loss_sum is not None:
            sums = self.accelerator.reduce(self._group_loss_sum, reduction="sum")
            counts = self.accelerator.reduce(self._group_loss_count, reduction="sum")
            for name, s, n in zip(
                self.group_vocab.names(grouping), sums.tolist(), counts.tolist(), strict=False
            ):
                if n > 0:
                    logs[f"{grouping}/{name}/loss"] = s / n
            self._group_loss_sum.zero_()
            self._group_loss_count.zero_()
        if "loss" in logs and self._term_steps:
            for name, total in self._term_sums.items():
                mean = self.accelerator.reduce(total / self._term_steps, reduction="mean")
                logs[name] = float(mean)
            if self.group_dro is not None:
                for name, q in zip(self.group_vocab.names(grouping), self.group_dro.q.tolist(), strict=False):
                    logs[f"group_dro/{name}/weight"] = q
            self._term_sums, self._term_steps = {}, 0
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

    def _new_group_stats(self) -> dict[str, GroupStats]:
        """Empty streaming statistics for every grouping, keyed by its ``group:<grouping>`` column.

        Not sharded: every process gathers every batch (``gather_for_metrics``), so every process seeds the
        bootstrap alike and reports the same intervals (and the same ``best_metric``).
        """
        return {
            group_column(name): GroupStats(
                self.num_labels,
                len(g.values),
                ece_bins=self.args.ece_bins,
                bootstrap_samples=self.args.bootstrap_samples,
                seed=self.args.seed,
                sharded=False,
            )
            for name, g in self.group_vocab.groupings.items()
        }

    def _class_names(self) -> list[str] | None:
        """Class names from the model's ``id2label`` (tables show them instead of class ids), if any."""
        config = getattr(self.model, "config", None)
        id2label = {int(k): str(v) for k, v in (getattr(config, "id2label", None) or {}).items()}
        if sorted(id2label) != list(range(self.num_labels)):
            return None
        return [id2label[c] for c in range(self.num_labels)]

    def _group_results(self, stats: dict[str, GroupStats]) -> dict[str, GroupResult]:
        """``GroupStats.compute()`` of every grouping (names, small-group warnings, intervals)."""
        class_names = self._class_names()
        return {
            name: stats[group_column(name)].compute(
                self.group_vocab.names(name),
                class_names,
                min_group_size=self.args.min_group_size,
                confidence=self.args.confidence_level,
                grouping=name,
            )
            for name in self.group_vocab.groupings
        }

    def evaluation_loop(
        self,
        dataloader: Any,
        description: str,
        prediction_loss_only: bool | None = None,
        ignore_keys: list[str] | None = None,
        metric_key_prefix: str = "eval",
    ) -> Any:
        """Run ``Trainer.evaluation_loop`` and add per-group metrics and gaps for every grouping."""
        self._eval_stats = self._new_group_stats()
        self._eval_batches_seen = 0
        try:
            output = super().evaluation_loop(
                dataloader, description, prediction_loss_only, ignore_keys, metric_key_prefix
            )
            # predict() on unlabeled data saw no labeled batch: nothing to report.
            results = self._group_results(self._eval_stats) if self._eval_batches_seen else {}
            for name, result in results.items():
                for warning in result.warnings:
                    logger.warning("[%s %s] %s", metric_key_prefix, name, warning)
                output.metrics.update(result.flat(f"{metric_key_prefix}_{name}"))
        finally:
            self._eval_stats = None
        loss_key = f"{metric_key_prefix}_loss"
        if results and loss_key in output.metrics:
            # Trainer averages per-batch means, so on several processes the padding duplicates of the last
            # batch leak into eval_loss; the per-sample sum in GroupStats excludes them exactly.
            output.metrics[loss_key] = float(results[self.group_vocab.train_grouping].overall["loss"])
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

    # ----- post-processing --------------------------------------------------------------------------
    def positive_scores(self, dataset: Any, split: str = "test") -> ScoredSplit:
        """One prediction pass of a binary model over ``dataset``: positive-class probabilities, labels, the
        dataset with its group columns, and the pass's metrics (fairness included, under prefix ``split``).

        Fitting thresholds and applying them both take a ``ScoredSplit``, so a split is predicted once.
        """
        if any(c in dataset.column_names for c in ("labels", "label")):
            dataset = self._ensure_prepared(dataset, split)
        elif not all(c in dataset.column_names for c in self.group_columns):
            dataset = self.group_vocab.encode(dataset, split=split)  # unlabeled: groups only
        output = self.predict(dataset, metric_key_prefix=split)
        scores = torch.as_tensor(output.predictions).float().softmax(-1)[:, 1].numpy()
        labels = None if output.label_ids is None else np.asarray(output.label_ids)
        return ScoredSplit(scores, labels, dataset, output.metrics)

    def fit_thresholds(
        self,
        thresholds: GroupThresholds | None = None,
        dataset: Any = None,
        scored: ScoredSplit | None = None,
    ) -> GroupThresholds:
        """Fit group-specific thresholds (default: ``args.post_processing``) for the training grouping on
        ``scored`` predictions, or on ``dataset`` (default: the validation set); returns them fitted."""
        thresholds = self._thresholds(thresholds)
        if scored is None:
            dataset = dataset if dataset is not None else self.eval_dataset
            if dataset is None or isinstance(dataset, dict):
                raise ValueError(ERR_POSTPROCESS_NO_VALIDATION.format(name=thresholds.objective))
            scored = self.positive_scores(dataset, "validation_scores")
        if scored.labels is None:
            raise ValueError("fit_thresholds needs a labeled dataset (a 'label' or 'labels' column).")
        groups = np.asarray(scored.dataset[self.train_group_column])
        names = self.group_vocab.names(self.group_vocab.train_grouping)
        return thresholds.fit(scored.scores, scored.labels, groups, group_names=names)

    def predict_with_thresholds(
        self,
        dataset: Any = None,
        thresholds: GroupThresholds | None = None,
        seed: int | None = None,
        scored: ScoredSplit | None = None,
    ) -> tuple[np.ndarray, dict[str, GroupResult]]:
        """Decisions (N,) of the model under fitted group thresholds, for ``dataset`` or for predictions
        already ``scored``, and their fairness results per grouping (as in ``fairness_results``) when the
        data has labels."""
        thresholds = self._thresholds(thresholds)
        scored = scored if scored is not None else self.positive_scores(dataset, "test_scores")
        groups = np.asarray(scored.dataset[self.train_group_column])
        preds = thresholds.predict(scored.scores, groups, seed=self.args.seed if seed is None else seed)
        if scored.labels is None:
            return preds, {}
        stats = self._new_group_stats()
        labels, pred_ids = torch.as_tensor(scored.labels), torch.as_tensor(preds)
        for column, group_stats in stats.items():
            group_stats.update(labels, torch.as_tensor(np.asarray(scored.dataset[column])), preds=pred_ids)
        return preds, self._group_results(stats)

    def _thresholds(self, thresholds: GroupThresholds | None) -> GroupThresholds:
        thresholds = thresholds if thresholds is not None else self.post_processing
        if thresholds is None:
            raise ValueError(ERR_POSTPROCESS_NONE)
        return thresholds

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

    def training_step(
        self, model: nn.Module, inputs: dict[str, Any], *args: Any, **kwargs: Any
    ) -> torch.Tensor:
        """``Trainer.training_step``; with several processes, also averages the adversary head's gradients.

        The head lives outside the DDP-wrapped model, so DDP does not average its gradients; done here
        once per optimizer step (when accelerate syncs gradients).
        """
        loss = super().training_step(model, inputs, *args, **kwargs)
        if (
            self.adversary is not None
            and self.accelerator.num_processes > 1
            and self.accelerator.sync_gradients
        ):
            for p in self.adversary.head.parameters():
                if p.grad is not None:
                    p.grad = self.accelerator.reduce(p.grad, reduction="mean")
        return loss

    def _save_checkpoint(self, model: nn.Module, trial: Any) -> None:
        # The adversary head and GroupDRO's weights are training state, like the optimizer: they go into
        # every checkpoint (not into the exported model) so that a resumed run continues exactly.
        super()._save_checkpoint(model, trial)
        state = self.mitigation_state()
        if state and self.args.should_save:
            folder = os.path.join(self._get_output_dir(trial=trial), f"checkpoint-{self.state.global_step}")
            torch.save(state, os.path.join(folder, MITIGATION_STATE_FILE))

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: nn.Module | None = None) -> None:
        super()._load_from_checkpoint(resume_from_checkpoint, model)
        path = os.path.join(resume_from_checkpoint, MITIGATION_STATE_FILE)
        if os.path.isfile(path):
            self.load_mitigation_state(torch.load(path, map_location=self.args.device))

    def mitigation_state(self) -> dict[str, Any]:
        """State of the adversary head and of GroupDRO, as saved in checkpoints."""
        state: dict[str, Any] = {}
        if self.adversary is not None:
            state["adversary"] = self.adversary.head.state_dict()
        if self.group_dro is not None:
            state["group_dro"] = self.group_dro.state_dict()
        return state

    def load_mitigation_state(self, state: dict[str, Any]) -> None:
        if self.adversary is not None and "adversary" in state:
            self.adversary.head.load_state_dict(state["adversary"])
        if self.group_dro is not None and "group_dro" in state:
            self.group_dro.load_state_dict(state["group_dro"])

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
