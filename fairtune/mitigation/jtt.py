"""Just Train Twice (JTT; Liu et al. 2021): up-weight the training rows a first ERM model gets wrong.

Algorithm (the paper's Algorithm 1):

1. *Identification*: train ERM for T epochs (``first_stage_epochs``, or ``first_stage_steps``) and predict
   the training set; the error set E is the rows it misclassifies.
2. *Up-weighting*: retrain from the pretrained initialisation on the training set with every row of E
   repeated ``upweight`` (lambda_up) times, i.e. ``upweight - 1`` extra copies, as the paper's code does
   (upsampling). An epoch of the second stage is therefore ``|E| * (upweight - 1)`` rows longer. SubpopBench
   implements the same weights as loss weights (lambda_up for a row of E, 1 otherwise) on a batch mean; over
   an epoch both give each row of E lambda_up times the gradient weight of the others; upsampling is the one
   offered here (it needs no per-row weight column in the batches).
3. *Model selection*: group labels are used only on validation, to choose the checkpoint of the second stage,
   e.g. ``metric_for_best_model: eval_<grouping>/worst_group_accuracy`` (the paper's choice), or bounds with
   ``selection_constraints`` (``fairtune.selection``).

Neither stage reads group labels of the training rows: the first stage is plain ERM (every other method
switched off), its errors are found without the group columns, and the second stage weighs rows by the error
set only. The training data may lack the attribute columns altogether (``FairTrainer`` then trains without
groups; pass ``group_vocab`` fitted on the validation set).

Use it from a config (``reweighting: jtt`` with ``reweighting_options: {upweight: 20, first_stage_epochs:
1}``; the pipeline runs both stages), or from Python with ``just_train_twice(make_trainer, train, args)``.
The ``JustTrainTwice`` method object in the second stage's ``Mitigations`` changes no batch; it records the
error set's size and refuses to train on data its first stage did not make, so that ``reweighting: jtt`` is
never silently plain ERM. The first stage's error set is saved to ``<output_dir>/jtt_error_set.json`` and
reused when the second stage resumes from a checkpoint.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from fairtune.mitigation.registry import construct, register

logger = logging.getLogger(__name__)

__all__ = [
    "ERROR_SET_FILE",
    "JTTResult",
    "JustTrainTwice",
    "error_set",
    "identification_args",
    "just_train_twice",
    "train_twice",
    "upsample",
]

ERROR_SET_FILE = "jtt_error_set.json"
IDENTIFICATION_DIR = "jtt_identification"

ERR_UPWEIGHT = "JTT upweight (lambda_up) must be a whole number >= 1; got {value!r}."
ERR_FIRST_STAGE = (
    "JTT first_stage_epochs must be a number > 0 and first_stage_steps None or a whole number > 0; got "
    "first_stage_epochs={epochs!r}, first_stage_steps={steps!r}."
)
ERR_MODE = (
    "reweighting 'jtt' up-weights its error set by repeating those rows (the paper's upsampling); "
    "reweighting_mode must be 'weights' (the default), not {mode!r}."
)
ERR_NOT_RUN = (
    "reweighting 'jtt' (Just Train Twice) trains two models: run it with "
    "fairtune.mitigation.jtt.just_train_twice(make_trainer, train_dataset, args) or a config run (fairtune "
    "train); FairTrainer.train() alone would train plain ERM on {rows} rows."
)
ERR_OTHER_REWEIGHTING = (
    "just_train_twice: args.reweighting is {name!r}; JTT takes the reweighting slot (pass other reweighters "
    "as objects through make_trainer)."
)
ERR_ERROR_SET_ROWS = "The error set has {got} rows but the training data has {rows}."


@register("reweighting", "jtt")
class JustTrainTwice:
    """Just Train Twice's settings and, in the second stage, the identified error set's size.

    Args:
        upweight: lambda_up, how many times each misclassified row appears in the second stage.
        first_stage_epochs: epochs T of the identification run.
        first_stage_steps: optimizer steps of the identification run instead (overrides the epochs).
        error_rows: rows in the error set; set by ``just_train_twice`` for the second stage.
        train_rows: rows of the original training set; set by ``just_train_twice`` for the second stage.
    """

    name = "jtt"
    mode = "weights"
    two_stage = True  # Mitigations keeps it apart from the per-batch methods
    needs_train_groups = False
    tasks = ("classification",)

    def __init__(
        self,
        upweight: int = 20,
        first_stage_epochs: float = 1.0,
        first_stage_steps: int | None = None,
        error_rows: int | None = None,
        train_rows: int | None = None,
    ):
        if isinstance(upweight, bool) or not isinstance(upweight, int | float) or upweight != int(upweight):
            raise ValueError(ERR_UPWEIGHT.format(value=upweight))
        if upweight < 1:
            raise ValueError(ERR_UPWEIGHT.format(value=upweight))
        bad_epochs = not isinstance(first_stage_epochs, int | float) or not first_stage_epochs > 0
        bad_steps = first_stage_steps is not None and (
            not isinstance(first_stage_steps, int) or first_stage_steps < 1
        )
        if bad_epochs or bad_steps or not math.isfinite(float(first_stage_epochs)):
            raise ValueError(ERR_FIRST_STAGE.format(epochs=first_stage_epochs, steps=first_stage_steps))
        self.upweight = int(upweight)
        self.first_stage_epochs = float(first_stage_epochs)
        self.first_stage_steps = first_stage_steps
        self.error_rows = error_rows
        self.train_rows = train_rows

    @classmethod
    def from_args(cls, args: Any) -> JustTrainTwice:
        """Build from ``FairTrainingArguments``: ``reweighting_options`` (``reweighting_mode``: weights)."""
        if args.reweighting_mode != "weights":
            raise ValueError(ERR_MODE.format(mode=args.reweighting_mode))
        return construct(cls, {}, getattr(args, "reweighting_options", None) or {}, "reweighting")

    def options(self) -> dict[str, Any]:
        """The ``reweighting_options`` that rebuild this object."""
        return {
            "upweight": self.upweight,
            "first_stage_epochs": self.first_stage_epochs,
            "first_stage_steps": self.first_stage_steps,
            "error_rows": self.error_rows,
            "train_rows": self.train_rows,
        }

    def second_stage_rows(self) -> int | None:
        """Rows of the upsampled training set, once the error set is known."""
        if self.error_rows is None or self.train_rows is None:
            return None
        return self.train_rows + self.error_rows * (self.upweight - 1)

    def check_ready(self, num_rows: int) -> None:
        """Raise unless ``num_rows`` is the size of the training set this object's first stage made."""
        if self.second_stage_rows() != num_rows:
            raise ValueError(ERR_NOT_RUN.format(rows=num_rows))

    def __repr__(self) -> str:
        stage = (
            f"first_stage_steps={self.first_stage_steps}"
            if self.first_stage_steps
            else f"first_stage_epochs={self.first_stage_epochs:g}"
        )
        errors = "" if self.error_rows is None else f", error_set={self.error_rows}/{self.train_rows}"
        return f"JustTrainTwice(upweight={self.upweight}, {stage}{errors})"


@dataclass
class JTTResult:
    """What ``just_train_twice`` returns.

    Attributes:
        trainer: the trained second-stage trainer (best checkpoint loaded with ``load_best_model_at_end``).
        errors: (N,) bool, the first stage's misclassified training rows.
        first_stage_metrics: the identification run's training metrics ({} when the error set was reused).
    """

    trainer: Any
    errors: np.ndarray
    first_stage_metrics: dict[str, float]


def identification_args(args: Any, jtt: JustTrainTwice) -> Any:
    """The first stage's arguments: ``args`` as plain ERM for T epochs (or steps), no evaluation, no
    checkpoints, no other method, in ``<output_dir>/jtt_identification``."""
    return dataclasses.replace(
        args,
        output_dir=os.path.join(args.output_dir, IDENTIFICATION_DIR),
        num_train_epochs=jtt.first_stage_epochs,
        max_steps=jtt.first_stage_steps or -1,
        eval_strategy="no",
        save_strategy="no",
        load_best_model_at_end=False,
        metric_for_best_model=None,
        greater_is_better=None,
        selection_constraints=None,
        selection_use_interval=False,
        penalty=None,
        reweighting=None,
        reweighting_options={},
        adversary=None,
        post_processing=None,
        resume_from_checkpoint=None,
        report_to=[],
    )


def error_set(trainer: Any, dataset: Any) -> np.ndarray:
    """(N,) bool: the rows of ``dataset`` (with labels) that ``trainer``'s model misclassifies.

    The group columns are dropped first and ``transformers.Trainer.predict`` is called directly, so no group
    label of the training data is read, not even for metrics. Every process gets all N rows, in order.
    """
    from transformers import Trainer

    from fairtune.groups import GROUP_COLUMN_PREFIX

    dataset = dataset.remove_columns([c for c in dataset.column_names if c.startswith(GROUP_COLUMN_PREFIX)])
    output = Trainer.predict(trainer, dataset, metric_key_prefix="jtt_identification")
    predictions = np.asarray(output.predictions).argmax(-1)
    return predictions != np.asarray(output.label_ids)


def upsample(dataset: Any, errors: np.ndarray, upweight: int) -> Any:
    """``dataset`` with every row where ``errors`` (N,) is True repeated ``upweight`` times in all: the
    original rows in order, then ``upweight - 1`` copies of the error set (the sampler shuffles them)."""
    errors = np.asarray(errors, dtype=bool)
    if errors.shape != (len(dataset),):
        raise ValueError(ERR_ERROR_SET_ROWS.format(got=errors.shape[0], rows=len(dataset)))
    extra = np.tile(np.flatnonzero(errors), upweight - 1)
    return dataset.select(np.concatenate([np.arange(len(dataset)), extra]).tolist())


def _load_error_set(args: Any, jtt: JustTrainTwice, rows: int) -> np.ndarray | None:
    """The error set saved by an earlier run of the same first stage, when the second stage resumes."""
    path = os.path.join(args.output_dir, ERROR_SET_FILE)
    if not args.resume_from_checkpoint or not os.path.isfile(path):
        return None
    with open(path) as f:
        saved = json.load(f)
    same = saved.get("first_stage") == _first_stage_key(jtt) and saved.get("train_rows") == rows
    if not same:
        return None
    errors = np.zeros(rows, dtype=bool)
    errors[saved["error_rows"]] = True
    return errors


def _first_stage_key(jtt: JustTrainTwice) -> dict[str, Any]:
    return {"epochs": jtt.first_stage_epochs, "steps": jtt.first_stage_steps}


def just_train_twice(
    make_trainer: Callable[[Any, Any], Any],
    train_dataset: Any,
    args: Any,
    jtt: JustTrainTwice | None = None,
) -> JTTResult:
    """Run JTT: an ERM identification run, then the second stage on the upsampled training set.

    Args:
        make_trainer: ``(train_dataset, args) -> FairTrainer`` with a model freshly initialised from the
            pretrained weights (it is called once per stage); it passes ``args`` and the dataset on as they
            are, plus the validation set, tokenizer, and ``group_vocab`` when the training data has no
            attribute columns.
        train_dataset: the training rows (labels; attribute columns optional).
        args: the second stage's ``FairTrainingArguments`` (evaluation, model selection, ...).
        jtt: the settings; default: built from ``args`` (``reweighting: jtt`` and ``reweighting_options``).

    Returns:
        the trained second-stage trainer, the error set and the first stage's metrics.
    """
    if args.reweighting not in (None, "jtt"):
        raise ValueError(ERR_OTHER_REWEIGHTING.format(name=args.reweighting))
    jtt = jtt or JustTrainTwice.from_args(args)
    if not args.resume_from_checkpoint and not args.overwrite_output_dir:
        from fairtune.trainer import check_output_dir

        check_output_dir(args.output_dir)  # before the first stage spends its time
    rows = len(train_dataset)
    errors = _load_error_set(args, jtt, rows)
    first_metrics: dict[str, float] = {}
    if errors is None:
        first = make_trainer(train_dataset, identification_args(args, jtt))
        first_metrics = dict(first.train().metrics)
        errors = error_set(first, first.train_dataset)
        del first
    logger.info(
        "JTT: the identification run misclassifies %d of %d training rows; each is repeated %d times.",
        int(errors.sum()),
        rows,
        jtt.upweight,
    )
    second_options = jtt.options() | {"error_rows": int(errors.sum()), "train_rows": rows}
    second_args = dataclasses.replace(args, reweighting="jtt", reweighting_options=second_options)
    second = make_trainer(upsample(train_dataset, errors, jtt.upweight), second_args)
    if second.is_world_process_zero():
        os.makedirs(args.output_dir, exist_ok=True)
        with open(os.path.join(args.output_dir, ERROR_SET_FILE), "w") as f:
            saved = {"first_stage": _first_stage_key(jtt), "train_rows": rows, "upweight": jtt.upweight}
            json.dump(saved | {"error_rows": np.flatnonzero(errors).tolist()}, f)
    second.train(resume_from_checkpoint=args.resume_from_checkpoint)
    return JTTResult(second, errors, first_metrics)


def train_twice(trainer: Any) -> Any:
    """JTT for a built, untrained ``FairTrainer`` whose arguments name ``reweighting: jtt`` (the config
    pipeline): both stages start from copies of its model's initial weights and share its validation set,
    tokenizer, collator and group vocabulary. Returns the trained second-stage trainer."""
    import copy

    from fairtune.mitigation.combined import Mitigations
    from fairtune.trainer import FairTrainer

    initial = copy.deepcopy(trainer.model).cpu()

    def make_trainer(train_dataset: Any, args: Any) -> Any:
        return FairTrainer(
            model=copy.deepcopy(initial),
            args=args,
            data_collator=trainer.data_collator,
            train_dataset=train_dataset,
            eval_dataset=trainer.eval_dataset,
            processing_class=trainer.processing_class,
            group_vocab=trainer.group_vocab,
            mitigations=Mitigations.from_args(args),
            compute_metrics=trainer.compute_metrics,
        )

    return just_train_twice(make_trainer, trainer.train_dataset, trainer.args).trainer
