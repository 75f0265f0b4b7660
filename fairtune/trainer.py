"""``FairTrainer``: the Hugging Face ``Trainer`` with group-aware data, per-sample loss, group metrics.

The trainer owns the data path (group columns encoded and carried beside the model inputs), the loss hooks
and the evaluation wiring. Everything a mitigation method does (sample weights, extra loss terms, a sampler,
an optimizer group, training state) it asks of one ``Mitigations`` object.

Length: about 860 lines in one class on purpose: every ``Trainer`` hook FairTrainer overrides (data,
loss for both task kinds, logging, evaluation, checkpoints, post-processing) is visible in one place, each
a short method; splitting it into mixins would scatter the overrides a subclass author must see together.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch
import torch.nn.functional as F
from torch import nn
from transformers import (
    DataCollatorForLanguageModeling,
    DataCollatorWithPadding,
    PreTrainedTokenizerBase,
    Trainer,
    default_data_collator,
)
from transformers.trainer_callback import PrinterCallback, ProgressCallback
from transformers.trainer_utils import SaveStrategy

from fairtune.callbacks import (
    MITIGATION_STATE_FILE,
    CompactPrinterCallback,
    CompactProgressCallback,
    MitigationStateCallback,
)
from fairtune.config import FairTrainingArguments
from fairtune.data.collator import FairDataCollator
from fairtune.data.stratified import GroupStratifiedSampler, check_batch_sampling, stratum_ids
from fairtune.groups import (
    GROUP_COLUMN_PREFIX,
    PAIR_COLUMN,
    GroupVocabulary,
    check_columns,
    group_column,
    groupings_of,
)
from fairtune.metrics import GroupResult, GroupStats
from fairtune.mitigation import Mitigations, PenaltyBatch, TermLog
from fairtune.mitigation.combined import (
    ERR_POSTPROCESS_NO_VALIDATION,
    WARN_STATE_RESET,
    Reduce,
    identity_reduce,
)
from fairtune.mitigation.penalties import ProcessSync
from fairtune.mitigation.postprocess import GroupThresholds
from fairtune.selection import ModelSelection

logger = logging.getLogger(__name__)

__all__ = ["MITIGATION_STATE_FILE", "FairTrainer", "ScoredSplit", "check_output_dir", "logits_of"]

ERR_ARGS_TYPE = "FairTrainer needs FairTrainingArguments (with group_by set); got {kind}."
ERR_NO_GROUP_BY = (
    "FairTrainingArguments.group_by is not set: name the attribute column(s) to group by, e.g. "
    "group_by='sex' or group_by='sex+race'."
)
ERR_NO_MODEL = "FairTrainer needs a model (model_init is not supported)."
ERR_VOCAB_GROUPING = (
    "group_by is {group_by!r}, but the loaded group vocabulary was trained with group_by {trained!r}; use "
    "that grouping (eval_group_by may list others it has)."
)
ERR_VOCAB_MISSING_GROUPING = (
    "eval_group_by names {spec!r}, which the loaded group vocabulary does not have (it has {have})."
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
    "Cannot tell the number of classes: the model has no config.num_labels and no training data was given "
    "in memory (a stream is not read ahead); set FairTrainingArguments.num_labels."
)
ERR_OUTPUT_DIR = (
    "output_dir {path!r} already holds a run ({found}). Pass overwrite_output_dir=True to train into it, "
    "resume_from_checkpoint to continue it, or choose another output_dir."
)
ERR_TASK_MODEL = (
    "task is {task!r}, but the model {kind} {what}. Set task: {other} (or give a model for {task})."
)
ERR_PAIRS_MISSING = (
    "{method!r} compares counterfactual pairs, but the training data has no {column!r} column: build it with "
    "counterfactual augmentation and pair ids (fairtune.data.augment_counterfactual(..., pair_ids=True)) or "
    "fairtune.data.lm_corpus.cda_corpus."
)
ERR_POSTPROCESS_NONE = "No post-processing configured: set post_processing or pass a GroupThresholds."
# Streamed (iterable) datasets: fairtune.data.streaming.
ERR_STREAM_VOCAB = (
    "The training dataset is a stream (IterableDataset), which cannot fit the group vocabulary: pass a "
    "fitted group_vocab (fairtune.data.streaming.declared_vocabulary or counted_vocabulary)."
)
ERR_STREAM_TRAIN = "{what} needs the training rows by index, which a streamed training dataset does not have."
ERR_STREAM_REWEIGHTER = (
    "{method!r} fits its weights on training counts, which a streamed training dataset does not give: call "
    "its fit_counts((G, C) counts) first (fairtune.data.streaming.count_stream and cell_counts give them)."
)
ERR_LEAN_COMPUTE_METRICS = (
    "lean_evaluation=True keeps no predictions, but compute_metrics needs them: drop one of the two."
)


def _is_stream(dataset: Any) -> bool:
    """Whether ``dataset`` is read as a stream (a ``datasets`` or torch ``IterableDataset``)."""
    return isinstance(dataset, torch.utils.data.IterableDataset)


# FSDP and process groups: combinations that accelerate or torch would get wrong without a word.
ERR_FSDP_ON_CPU = (
    "FSDP was requested ({source}), but this run is on the CPU, where accelerate drops the FSDP settings "
    "without a word (it runs the processes as plain DDP, or under `accelerate launch` as unconnected "
    "single-process runs). Train on GPUs for FSDP, or launch with configs/accelerate_multi_gpu.yaml or "
    "torchrun for DDP on the CPU."
)
ERR_PROCESSES_NOT_CONNECTED = (
    "This process was launched as one of {launched} (WORLD_SIZE={launched}), but the training arguments set "
    "up no process group (world_size 1): each process would train alone on all the data and write to the "
    "same output_dir. On a machine without a GPU, transformers joins the processes only with use_cpu: true "
    "(--use_cpu true)."
)
ERR_FSDP_ADVERSARY_CHECKPOINTS = (
    "An adversary under FSDP cannot be checkpointed: its head trains in a parameter group of the model's "
    "optimizer but lives outside the FSDP-wrapped model, and torch's FSDP optimizer state dict fails on "
    "parameters it does not manage (KeyError). Set save_strategy='no', or train the adversary with DDP "
    "(configs/accelerate_multi_gpu.yaml)."
)
ERR_POSTPROCESS_NO_GROUP = (
    "post_processing {name!r} sets a threshold per group, and rows without a group (missing_group: ignore) "
    "would have none; use missing_group: unknown (their own group and threshold) or error."
)
ERR_TRAIN_GROUPS_NEEDED = (
    "The training data has none of the attribute columns ({attributes}), but {methods} train on groups. "
    "Without group labels in training, use reweighting: jtt (groups on validation only) or no method."
)


def model_task(model: nn.Module) -> str | None:
    """``causal_lm`` or ``classification`` for a transformers model (PEFT-wrapped too), None for others."""
    from transformers.models.auto import modeling_auto

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    name = type(base).__name__
    for task, mapping in (
        ("causal_lm", modeling_auto.MODEL_FOR_CAUSAL_LM_MAPPING_NAMES),
        ("classification", modeling_auto.MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES),
    ):
        names = {n for v in mapping.values() for n in ((v,) if isinstance(v, str) else v)}
        if name in names:
            return task
    return None


def _check_task_model(task: str, model: nn.Module) -> None:
    kind = model_task(model)
    if kind is not None and kind != task:
        what = "predicts the next token" if kind == "causal_lm" else "classifies sequences"
        raise ValueError(ERR_TASK_MODEL.format(task=task, kind=type(model).__name__, what=what, other=kind))


def sequence_nll(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean token NLL of each sequence over its labelled tokens: logits (N, T, V), labels (N, T) -> (N,).

    Position t predicts token t + 1 (labels are shifted here, as transformers' causal-LM loss does); a label
    of -100 (padding, a prompt) is not predicted. A sequence without any labelled token has loss 0. In
    float32, so bf16 logits do not lose the per-sequence differences weights and penalties act on.
    """
    shift_logits, shift_labels = logits[:, :-1].float(), labels[:, 1:]
    token = F.cross_entropy(
        shift_logits.reshape(-1, shift_logits.shape[-1]), shift_labels.reshape(-1), reduction="none"
    ).view(shift_labels.shape)  # ignore_index -100 gives 0 there
    mask = shift_labels.ne(-100)
    return (token * mask).sum(1) / mask.sum(1).clamp_min(1)


def logits_of(outputs: Any) -> torch.Tensor:
    """Logits (N, C) from a ``ModelOutput``, a dict, a tuple, or a bare tensor (plain ``nn.Module``)."""
    if isinstance(outputs, torch.Tensor):
        return outputs
    if isinstance(outputs, dict) or hasattr(outputs, "keys"):
        return outputs["logits"]
    return outputs[0]


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


class FairTrainer(Trainer):
    """A ``transformers.Trainer`` that knows which demographic group every sample belongs to.

    * Attribute columns of the datasets are encoded to ids (``group:<grouping>`` columns) with a vocabulary
      fixed from the training data; they pass the collator beside the model inputs and are popped before
      ``model.forward``.
    * The task loss is computed per sample (``per_sample_loss``), so weights and penalties can act on it,
      and normalised over the whole gradient-accumulation window.
    * Mitigation methods (from the arguments and from ``mitigations``) act through one ``Mitigations`` object
      (``self.mitigations``).
    * ``evaluate()`` adds per-group rates and fairness gaps (with bootstrap intervals) for every grouping in
      ``args.eval_group_by`` to its metrics, so they reach every ``report_to`` backend and can drive
      ``metric_for_best_model``; training logs carry the running loss of each group.

    Args:
        group_vocab: a saved ``GroupVocabulary`` (e.g. of a fine-tuned model being re-evaluated); default:
            fitted on ``train_dataset``.
        mitigations: method objects (``Penalty``, ``Reweighter``, ``GroupDRO``, ``Adversary``) added to those
            the arguments name; or a ``Mitigations`` object, used as it is (build it with
            ``Mitigations.from_args(args, [...])`` to include the arguments' methods).
        monitor: for a causal LM, an object with ``evaluate(model, tokenizer) -> dict[str, float]`` (e.g.
            ``fairtune.lm.StereotypeMonitor``) whose metrics join every evaluation as ``eval_<key>``.
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
        mitigations: Mitigations | list[Any] | None = None,
        monitor: Any = None,
        **kwargs: Any,
    ):
        # Everything that can be wrong with the inputs is checked here, before Trainer starts anything.
        if not isinstance(args, FairTrainingArguments):
            raise TypeError(ERR_ARGS_TYPE.format(kind=type(args).__name__))
        if not args.group_by:
            raise ValueError(ERR_NO_GROUP_BY)
        if model is None:
            raise ValueError(ERR_NO_MODEL)
        if not isinstance(mitigations, Mitigations):
            mitigations = Mitigations.from_args(args, mitigations or [])
        self.mitigations = mitigations
        self.mitigations.check_model(model, kwargs.get("optimizers"))
        check_fsdp(args, self.mitigations.adversary is not None)  # first: its message is the more specific
        check_processes(args)
        if args.missing_group == "ignore" and mitigations.post_processing is not None:
            raise ValueError(ERR_POSTPROCESS_NO_GROUP.format(name=mitigations.post_processing.objective))
        self.group_vocab = self._resolve_vocab(args, group_vocab, train_dataset)
        self.group_columns = [group_column(name) for name in self.group_vocab.groupings]
        self.train_group_column = group_column(self.group_vocab.train_grouping)
        self.task = args.task
        _check_task_model(self.task, model)
        # A causal LM's rows have no class: reweighters and adversaries see one class, 0, for every row.
        self.num_labels = self._resolve_num_labels(model, args, train_dataset) if self.is_classifier else 1
        has_validation = eval_dataset is not None and not isinstance(eval_dataset, dict)
        self.mitigations.check_task(self.num_labels, has_validation, self.task)
        check_batch_sampling(args, self.mitigations)  # a stratified order and another sampler conflict
        train_groups = train_labels = None
        if _is_stream(train_dataset):
            # Reweighters must be fitted already (Reweighter.fit_counts on counted or declared counts).
            for what in (
                "pair methods" if self.mitigations.needs_pairs else None,
                self.mitigations.sampler_reweighter,
            ):
                if what is not None:
                    raise ValueError(ERR_STREAM_TRAIN.format(what=what))
            for reweighter in self.mitigations.loss_reweighters:
                if reweighter.weights is None:
                    raise ValueError(ERR_STREAM_REWEIGHTER.format(method=reweighter))
            train_dataset = self.prepare_dataset(train_dataset, "training")
        elif train_dataset is not None:
            train_dataset = self._prepare_train_dataset(train_dataset)
            train_groups, train_labels = self._train_groups_and_labels(train_dataset)
            if self.mitigations.needs_pairs:
                self._check_pairs(train_dataset)
        self.mitigations.setup(model, self.num_train_groups, self.num_labels, train_groups, train_labels)
        if isinstance(eval_dataset, dict):
            eval_dataset = {k: self.prepare_dataset(v, f"evaluation ({k})") for k, v in eval_dataset.items()}
        elif eval_dataset is not None:
            eval_dataset = self.prepare_dataset(eval_dataset, "evaluation")
        # Checkpoint selection under bounds, never a constant-prediction model (fairtune.selection).
        self.model_selection = ModelSelection.for_run(
            args,
            self.group_vocab,
            self.num_labels,
            self.is_classifier,
            eval_dataset,
            open_ended=kwargs.get("compute_metrics") is not None or monitor is not None,
        )

        if data_collator is None:
            if not isinstance(processing_class, PreTrainedTokenizerBase):
                data_collator = default_data_collator
            elif self.is_classifier:
                data_collator = DataCollatorWithPadding(processing_class)
            else:  # labels are the input ids, padding masked with -100
                data_collator = DataCollatorForLanguageModeling(processing_class, mlm=False)
        if not isinstance(data_collator, FairDataCollator):
            data_collator = FairDataCollator(data_collator)
        if args.lean_evaluation and kwargs.get("compute_metrics") is not None:
            raise ValueError(ERR_LEAN_COMPUTE_METRICS)

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
        self.add_callback(MitigationStateCallback(self.mitigations))
        if not self.label_names:  # a plain nn.Module's forward has no `labels` argument to infer it from
            self.label_names = ["labels"]
        self.mitigations.to(self.args.device)
        # Running means of the loss terms and per-group losses between two training logs.
        self.term_log = TermLog()
        self._eval_stats: dict[str, GroupStats] | None = None
        self._eval_lean = False  # this evaluation keeps group statistics only (lean_evaluation)
        self._eval_losses: dict[str, torch.Tensor] | None = None  # causal LM: (G, 2) [loss sum, count]
        self.monitor = monitor
        self._eval_batches_seen = 0
        # Last fairness results: metric prefix ("eval", "test", ...) -> grouping -> result.
        self.fairness_results: dict[str, dict[str, GroupResult]] = {}
        self._output_dir_checked = False
        if self.model_selection is not None:
            self.add_callback(self.model_selection)

    @staticmethod
    def _resolve_vocab(
        args: FairTrainingArguments, group_vocab: GroupVocabulary | None, train_dataset: Any
    ) -> GroupVocabulary:
        """The loaded vocabulary (checked against the arguments' groupings) or one fitted on train_dataset."""
        if group_vocab is not None:
            trained = group_vocab.train_grouping
            if GroupVocabulary(args.group_by).train_grouping != trained:
                raise ValueError(ERR_VOCAB_GROUPING.format(group_by=args.group_by, trained=trained))
            for spec in groupings_of(args.group_by, args.eval_group_by):
                # A loaded vocabulary may lack a newly asked grouping.
                if spec not in group_vocab.groupings:
                    raise ValueError(
                        ERR_VOCAB_MISSING_GROUPING.format(spec=spec, have=list(group_vocab.groupings))
                    )
            # The missing-value policy is the run's, not the saved vocabulary's (see fairtune.groups).
            group_vocab.missing_group = args.missing_group
        vocab = group_vocab or GroupVocabulary(args.group_by, args.eval_group_by, args.missing_group)
        if not vocab.fitted:
            if train_dataset is None:
                raise ValueError(ERR_NO_TRAIN_DATA)
            if _is_stream(train_dataset):
                raise ValueError(ERR_STREAM_VOCAB)
            FairTrainer._check_dataset(train_dataset, "training")
            vocab.fit(train_dataset)
        return vocab

    @property
    def is_classifier(self) -> bool:
        """Whether the task is classification (else a causal LM)."""
        return self.task == "classification"

    @property
    def num_train_groups(self) -> int:
        """G: groups of the training grouping in the vocabulary (the rows of every training statistic)."""
        return self.group_vocab.groupings[self.group_vocab.train_grouping].num_train_groups

    @property
    def post_processing(self) -> GroupThresholds | None:
        """The unfitted group thresholds the arguments name, fitted after training, or None."""
        return self.mitigations.post_processing

    def _reduce(self) -> Reduce:
        """Cross-process sum/mean for the mitigations: accelerate's on several processes, else identity."""
        if self.accelerator.num_processes == 1:
            return identity_reduce
        return lambda tensor, op: self.accelerator.reduce(tensor, reduction=op)

    def _penalty_sync(self) -> ProcessSync | None:
        """The cross-process reduction of penalty statistics: None on one process or with penalty_sync off."""
        if not self.args.penalty_sync or self.accelerator.num_processes == 1:
            return None
        return ProcessSync()

    def _train_groups_and_labels(self, dataset: Any) -> tuple[torch.Tensor | None, torch.Tensor]:
        """(N,) training group ids (None for data without groups) and (N,) labels, read from the arrow table
        without decoding rows."""
        table = dataset.with_format("arrow")
        if self.train_group_column not in dataset.column_names:  # groups on validation only (JTT)
            label = self._label_column(dataset, "training") if self.is_classifier else None
            labels = table[label].to_numpy() if label else np.zeros(len(dataset))
            return None, torch.tensor(labels, dtype=torch.long)
        groups = torch.tensor(table[self.train_group_column].to_numpy(), dtype=torch.long)
        if not self.is_classifier:
            return groups, torch.zeros_like(groups)
        labels = torch.tensor(table[self._label_column(dataset, "training")].to_numpy(), dtype=torch.long)
        return groups, labels

    def _check_pairs(self, dataset: Any) -> None:
        """Refuse pair methods without pair ids, and broken pairs (an id on three rows, a lone copy)."""
        from fairtune.data.pairs import check_pairs

        method = next(m for m in self.mitigations if getattr(m, "needs_pairs", False))
        if PAIR_COLUMN not in dataset.column_names:
            raise ValueError(ERR_PAIRS_MISSING.format(method=method, column=PAIR_COLUMN))
        check_pairs(dataset)

    def _get_train_sampler(self, train_dataset: Any = None) -> Any:
        """A group-stratified sampler with ``batch_sampling`` other than random, a pair sampler when a method
        compares counterfactual pairs (both rows of a pair in one micro-batch), a weighted sampler when a
        reweighter runs in ``sampler`` mode, else Trainer's own."""
        dataset = train_dataset if train_dataset is not None else self.train_dataset
        if self.args.batch_sampling != "random":  # every group in every micro-batch, on every process
            groups, labels = self._train_groups_and_labels(dataset)
            return GroupStratifiedSampler(
                stratum_ids(groups, labels, self.num_labels, self.args.batch_sampling),
                self._train_batch_size,
                num_replicas=self.args.world_size,
                seed=self.args.data_seed or self.args.seed,
            )
        if self.mitigations.needs_pairs and PAIR_COLUMN in dataset.column_names:
            from fairtune.data.pairs import PairSampler

            seed = self.args.data_seed or self.args.seed
            return PairSampler(dataset[PAIR_COLUMN], self._train_batch_size, seed=seed)
        if self.mitigations.sampler_reweighter is None:
            return super()._get_train_sampler(train_dataset)
        groups, labels = self._train_groups_and_labels(dataset)
        return self.mitigations.train_sampler(groups, labels, seed=self.args.data_seed or self.args.seed)

    def create_optimizer(self, model: nn.Module | None = None) -> torch.optim.Optimizer:
        """Trainer's optimizer plus the mitigations' parameter groups (adversary head: own lr, no decay)."""
        optimizer = super().create_optimizer(model)
        known = {id(p) for group in optimizer.param_groups for p in group["params"]}
        for group in self.mitigations.param_groups(self.args.learning_rate):
            if not any(id(p) in known for p in group["params"]):
                optimizer.add_param_group(group)
        return optimizer

    # ----- data -------------------------------------------------------------------------------------
    @staticmethod
    def _check_dataset(dataset: Any, split: str) -> None:
        import datasets

        if isinstance(dataset, datasets.IterableDataset):
            return  # a stream's length is unknown; its rows are checked as they are read
        if not isinstance(dataset, datasets.Dataset):
            raise TypeError(ERR_DATASET_TYPE.format(split=split, kind=type(dataset).__name__))
        if len(dataset) == 0:
            raise ValueError(ERR_EMPTY_DATASET.format(split=split))

    def _resolve_num_labels(self, model: nn.Module, args: FairTrainingArguments, train_dataset: Any) -> int:
        config = getattr(model, "config", None)
        num_labels = getattr(config, "num_labels", None) or args.num_labels
        if num_labels is None and train_dataset is not None and not _is_stream(train_dataset):
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

    def prepare_dataset(self, dataset: Any, split: str = "evaluation", encode_groups: bool = True) -> Any:
        """Check labels and attribute columns, then add the ``group:<grouping>`` id columns.

        Raises before anything runs if a column is missing, holds missing/NaN values, or a label lies
        outside ``[0, num_labels)``. ``encode_groups=False``: labels only (training data without groups).
        """
        self._check_dataset(dataset, split)
        if _is_stream(dataset):
            return self._prepare_stream(dataset, split)
        encode = self.group_vocab.encode if encode_groups else lambda data, split: data
        if not self.is_classifier:  # a causal LM's labels are its input ids, made by the collator
            return encode(dataset, split=split)
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
        return encode(dataset, split=split)

    def _prepare_train_dataset(self, dataset: Any) -> Any:
        """``prepare_dataset`` for training data. Data with none of the attribute columns trains without
        groups (group labels on validation only, e.g. JTT) when no method needs them; else it is an error."""
        self._check_dataset(dataset, "training")
        if any(a in dataset.column_names for a in self.group_vocab.attributes):
            return self.prepare_dataset(dataset, "training")
        needing = [m for m in self.mitigations if getattr(m, "needs_train_groups", True)]
        if needing:
            raise ValueError(
                ERR_TRAIN_GROUPS_NEEDED.format(
                    methods=", ".join(map(repr, needing)), attributes=", ".join(self.group_vocab.attributes)
                )
            )
        return self.prepare_dataset(dataset, "training", encode_groups=False)

    def _prepare_stream(self, dataset: Any, split: str) -> Any:
        """A streamed dataset with lazily checked labels and ``group:<grouping>`` id columns.

        Labels and groups are checked per row as the stream is read (a row's error names the row): a label
        outside ``[0, num_labels)``, a missing value, or a group the vocabulary lacks stops the run.
        """
        from fairtune.data.streaming import encode_stream_groups, encode_stream_labels, known_columns

        dataset = known_columns(dataset)
        if self.is_classifier:
            label = self._label_column(dataset, split)
            dataset = encode_stream_labels(dataset, None, self.num_labels, split, column=label)
        return encode_stream_groups(dataset, self.group_vocab, split)

    def _set_signature_columns_if_needed(self) -> None:
        # Group id columns are not arguments of model.forward; without this, remove_unused_columns drops them.
        super()._set_signature_columns_if_needed()
        for col in [*self.group_columns, PAIR_COLUMN]:
            if col not in self._signature_columns:
                self._signature_columns.append(col)

    # ----- loss -------------------------------------------------------------------------------------
    def per_sample_loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Task loss per sample -> (N,).

        Classification: cross-entropy of logits (N, C) against class ids (N,). Causal LM: the mean token NLL
        of each sequence over its labelled tokens (``sequence_nll``; logits (N, T, V), labels (N, T)).
        Computed in float32 so that bf16/fp16 logits do not lose the small per-sample differences that
        weights and penalties act on.
        """
        if not self.is_classifier:
            return sequence_nll(logits, labels)
        return F.cross_entropy(logits.float(), labels, reduction="none")

    def _get_num_items_in_batch(self, batch_samples: list, device: torch.device) -> torch.Tensor | int | None:
        # Trainer counts a causal LM's labelled tokens; our per-sample loss is per sequence, so the items of
        # an accumulation window are its sequences with at least one labelled target token.
        if self.is_classifier or not batch_samples or "labels" not in batch_samples[0]:
            return super()._get_num_items_in_batch(batch_samples, device)
        rows = [
            {"labels": torch.where(b["labels"][..., 1:].ne(-100).any(-1), 0, -100)} for b in batch_samples
        ]
        shifts, self._loss_shifts_labels = self._loss_shifts_labels, False
        try:
            return super()._get_num_items_in_batch(rows, device)
        finally:
            self._loss_shifts_labels = shifts

    def compute_loss(
        self,
        model: nn.Module,
        inputs: dict[str, Any],
        return_outputs: bool = False,
        num_items_in_batch: torch.Tensor | int | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, Any]:
        """Forward without group columns or labels, then the per-sample task loss, weighted and normalised,
        plus the mitigations' extra loss terms (training only).

        ``num_items_in_batch`` counts the samples of the whole accumulation window (over all processes
        when ``average_tokens_across_devices``), so the loss of unequal micro-batches averages correctly.
        """
        groups = {k: inputs.pop(k) for k in list(inputs) if k.startswith(GROUP_COLUMN_PREFIX)}
        pair_ids = inputs.pop(PAIR_COLUMN, None)
        labels = inputs.pop("labels")
        mitigate = model.training and self.train_group_column in groups
        hidden = mitigate and self.mitigations.needs_hidden_states
        outputs = model(**inputs, output_hidden_states=True) if hidden else model(**inputs)
        logits = logits_of(outputs)
        if self.is_classifier and (logits.dim() != 2 or logits.shape[-1] < 2):
            raise ValueError(ERR_NUM_LABELS.format(num_labels=logits.shape[-1] if logits.dim() else 1))
        losses = self.per_sample_loss(logits, labels)
        if not mitigate:
            loss = self.reduce_loss(losses, num_items_in_batch)
            return (loss, outputs) if return_outputs else loss

        group_ids = groups[self.train_group_column]
        self.term_log.add_group_losses(losses, group_ids, self.num_train_groups)
        self.term_log.add("task_loss", losses.mean())
        # Reweighters see class ids; every row of a causal LM counts as class 0.
        row_labels = labels if self.is_classifier else torch.zeros_like(group_ids)
        weights = self.mitigations.sample_weights(
            losses.detach(), group_ids, row_labels, self._reduce(), self.term_log
        )
        loss = self.reduce_loss(losses * weights, num_items_in_batch)
        batch = PenaltyBatch(
            logits,
            labels,
            group_ids,
            self.num_train_groups,
            losses,
            pair_ids=pair_ids,
            input_ids=inputs.get("input_ids"),
            attention_mask=inputs.get("attention_mask"),
            sync=self._penalty_sync(),
        )
        extra = self.mitigations.extra_loss(
            outputs,
            batch,
            self.state.global_step,
            self.term_log,
            inputs.get("attention_mask"),
            without_group=self.args.missing_group == "ignore",
        )
        if extra is not None:
            # Penalty and adversary terms are per micro-batch; this share makes them average over the
            # accumulation window (and processes) the way the summed task loss does. The same factor is right
            # for penalties gathered across processes (penalty_sync): the backward of their cross-process sum
            # adds the W processes' upstream gradients (share_r * dP/dS each), and DDP divides by W, so the
            # parameter gradient is mean_r(share_r) * grad P(global micro-batch); mean_r(share_r) is the
            # global micro-batch's rows over the window's rows (exactly so when num_items_in_batch counts
            # every process's rows; for equal micro-batches otherwise), as on one process.
            share = 1.0
            if num_items_in_batch is not None:
                share = len(labels) / num_items_in_batch
                if self.args.average_tokens_across_devices and self.accelerator.num_processes > 1:
                    share = share * self.accelerator.num_processes
            loss = loss + share * extra
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

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """Add the running loss terms and per-group training loss (over all processes) to training logs."""
        if "loss" in logs:
            grouping = self.group_vocab.train_grouping
            names = self.group_vocab.names(grouping)
            logs.update(self.term_log.pop(self._reduce(), names, grouping))
            logs.update(self.mitigations.state_logs(names))
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
        if not self.is_classifier:
            # (N, T, V) logits are too large to collect: a causal LM's evaluation keeps per-group losses.
            if self._eval_losses is not None and groups:
                self._update_eval_losses(self.per_sample_loss(logits, labels), groups)
            return loss.detach(), None, None
        if self._eval_stats is not None and groups:
            self._update_eval_stats(logits, labels, groups)
            if self._eval_lean:  # Trainer's loop would keep every loss, logit and label: hand it none
                return None, None, None
        return loss.detach(), None if prediction_loss_only else logits, labels

    def _update_eval_losses(self, losses: torch.Tensor, groups: dict[str, torch.Tensor]) -> None:
        """Add per-sample losses (N,) to every grouping's (G, 2) [loss sum, count], over all processes."""
        names = [c for c in self.group_columns if c in groups]
        stacked = torch.stack([groups[c] for c in names], dim=1)  # (N, K)
        losses, stacked = self.accelerator.gather_for_metrics((losses.double(), stacked))
        rows = torch.stack([losses, torch.ones_like(losses)], 1)
        for k, col in enumerate(names):
            sums = self._eval_losses[col]
            extra = int(stacked[:, k].max()) + 1 - sums.shape[0]
            if extra > 0:  # a group first met at evaluation
                sums = torch.cat([sums, sums.new_zeros(extra, 2)])
            ids = stacked[:, k].to(sums.device)
            # A row without a group (id -1) counts in no group's loss.
            grouped = rows.to(sums.device) * (ids >= 0)[:, None]
            self._eval_losses[col] = sums.index_add_(0, ids.clamp_min(0), grouped)

    def _lm_group_metrics(self, prefix: str) -> dict[str, float]:
        """Per-group mean sequence NLL and perplexity, the loss gap and the worst group, per grouping."""
        metrics: dict[str, float] = {}
        for name in self.group_vocab.groupings:
            names = self.group_vocab.names(name)
            means = {}
            for group, (total, count) in zip(
                names, self._eval_losses[group_column(name)].tolist(), strict=False
            ):
                if count > 0:
                    means[group] = total / count
                    metrics[f"{prefix}_{name}/{group}/loss"] = means[group]
                    metrics[f"{prefix}_{name}/{group}/perplexity"] = math.exp(means[group])
                    metrics[f"{prefix}_{name}/{group}/count"] = count
            if len(means) >= 2:
                metrics[f"{prefix}_{name}/loss_difference"] = max(means.values()) - min(means.values())
                metrics[f"{prefix}_{name}/worst_group_loss"] = max(means.values())
        total, count = self._eval_losses[self.train_group_column].sum(0).tolist()
        if count:
            metrics[f"{prefix}_loss"] = total / count
            metrics[f"{prefix}_perplexity"] = math.exp(total / count)
        return metrics

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
                gaps_over=self.args.gaps_over,
                interval_method=self.args.interval_method,
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
        """Run ``Trainer.evaluation_loop`` and add per-group metrics and gaps for every grouping.

        For a causal LM: per-group mean sequence NLL and perplexity, and the monitor's stereotype metrics.
        """
        if not self.is_classifier:
            return self._lm_evaluation_loop(
                dataloader, description, prediction_loss_only, ignore_keys, metric_key_prefix
            )
        self._eval_stats = self._new_group_stats()
        self._eval_batches_seen = 0
        self._eval_lean = self._lean_evaluation(dataloader, description)
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
            lean, self._eval_lean = self._eval_lean, False
        loss_key = f"{metric_key_prefix}_loss"
        if results and (loss_key in output.metrics or lean):
            # Trainer averages per-batch means, so on several processes the padding duplicates of the last
            # batch leak into eval_loss; the per-sample sum in GroupStats excludes them exactly.
            output.metrics[loss_key] = float(results[self.group_vocab.train_grouping].overall["loss"])
        if results:
            self.fairness_results[metric_key_prefix] = results
        return output

    def _lean_evaluation(self, dataloader: Any, description: str) -> bool:
        """Whether this evaluation keeps only the group statistics (``args.lean_evaluation``): never for
        ``predict()`` (it returns the predictions) or with ``compute_metrics`` (it reads them); by default
        only for streamed evaluation data."""
        if (
            self.compute_metrics is not None
            or description == "Prediction"
            or self.args.lean_evaluation is False
        ):
            return False
        return bool(self.args.lean_evaluation) or _is_stream(getattr(dataloader, "dataset", None))

    def _lm_evaluation_loop(
        self,
        dataloader: Any,
        description: str,
        prediction_loss_only: bool | None,
        ignore_keys: list[str] | None,
        metric_key_prefix: str,
    ) -> Any:
        self._eval_losses = {
            group_column(name): torch.zeros(len(g.values), 2, dtype=torch.float64, device=self.args.device)
            for name, g in self.group_vocab.groupings.items()
        }
        try:
            output = super().evaluation_loop(dataloader, description, True, ignore_keys, metric_key_prefix)
            # Exact per-sequence means replace Trainer's mean of batch means (padding duplicates included).
            output.metrics.update(self._lm_group_metrics(metric_key_prefix))
        finally:
            self._eval_losses = None
        if self.monitor is not None:
            model = self.accelerator.unwrap_model(self.model)
            for key, value in self.monitor.evaluate(model, self.processing_class).items():
                output.metrics[f"{metric_key_prefix}_{key}"] = value
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
        if all(c in (dataset.column_names or []) for c in self.group_columns):  # a stream may not know them
            return dataset
        return self.prepare_dataset(dataset, split)

    # ----- training, checkpoints, saving ------------------------------------------------------------
    def train(self, resume_from_checkpoint: str | bool | None = None, **kwargs: Any) -> Any:
        """``Trainer.train``, refusing to overwrite an earlier run in ``output_dir`` unless told to."""
        if self.train_dataset is not None and self.mitigations.two_stage is not None:
            # JTT's second stage must train on its upsampled set (a stream is refused before this).
            self.mitigations.check_before_training(len(self.train_dataset))
        if not resume_from_checkpoint and not self._output_dir_checked and not self.args.overwrite_output_dir:
            check_output_dir(self.args.output_dir)
        self._output_dir_checked = True
        return super().train(resume_from_checkpoint=resume_from_checkpoint, **kwargs)

    def training_step(
        self, model: nn.Module, inputs: dict[str, Any], *args: Any, **kwargs: Any
    ) -> torch.Tensor:
        """``Trainer.training_step``; with several processes, also averages the mitigations' own gradients
        (the adversary head lives outside the DDP-wrapped model), once per optimizer step."""
        loss = super().training_step(model, inputs, *args, **kwargs)
        if self.accelerator.num_processes > 1 and self.accelerator.sync_gradients:
            self.mitigations.sync_gradients(self._reduce())
        return loss

    def _determine_best_metric(self, metrics: dict[str, float], trial: Any) -> bool:
        """Trainer's best-checkpoint rule, or ``self.model_selection`` (bounds; no constant model)."""
        if self.model_selection is None:
            return super()._determine_best_metric(metrics, trial)
        saves = self.args.save_strategy in (SaveStrategy.STEPS, SaveStrategy.EPOCH, SaveStrategy.BEST)
        return self.model_selection.update(metrics, self.state, saves)

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: nn.Module | None = None) -> None:
        super()._load_from_checkpoint(resume_from_checkpoint, model)
        if not self.mitigations.stateful_parts():
            return
        path = os.path.join(resume_from_checkpoint, MITIGATION_STATE_FILE)
        # Loaded on the CPU, then copied into the live state on its device: on several CPU processes
        # args.device is "cpu:<rank>", a location torch.load cannot map to.
        state = torch.load(path, map_location="cpu") if os.path.isfile(path) else {}
        reset = self.mitigations.load_state_dict(state)
        if reset:
            logger.warning(WARN_STATE_RESET.format(checkpoint=resume_from_checkpoint, parts=", ".join(reset)))

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


def check_processes(args: FairTrainingArguments) -> None:
    """Refuse processes started by a launcher (torchrun, accelerate launch) that would not be joined.

    Seen on a CPU-only machine without ``use_cpu``: every process ran alone, with one process's arguments.
    """
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    if launched > 1 and args.world_size == 1:
        raise ValueError(ERR_PROCESSES_NOT_CONNECTED.format(launched=launched))


def check_fsdp(args: FairTrainingArguments, has_adversary: bool) -> None:
    """Refuse FSDP where it would be ignored (CPU) or fail at the first checkpoint (with an adversary)."""
    from_env = os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true"  # accelerate launch
    if not (args.fsdp or from_env):
        return
    source = f"fsdp={args.fsdp!r}" if args.fsdp else "ACCELERATE_USE_FSDP=true from accelerate launch"
    if args.use_cpu or args.device.type == "cpu":
        raise ValueError(ERR_FSDP_ON_CPU.format(source=source))
    if has_adversary and args.save_strategy != "no":
        raise ValueError(ERR_FSDP_ADVERSARY_CHECKPOINTS)


def check_output_dir(path: str | None) -> None:
    """Raise if ``path`` holds checkpoints or a saved model from an earlier run."""
    if not path or not os.path.isdir(path):
        return
    found = sorted(name for name in os.listdir(path) if name.startswith("checkpoint-") or name in RUN_MARKERS)
    if found:
        raise FileExistsError(ERR_OUTPUT_DIR.format(path=path, found=", ".join(found[:5])))
