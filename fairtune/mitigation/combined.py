"""``Mitigations``: every mitigation method of a training run, as the one object ``FairTrainer`` calls.

The trainer asks it, at fixed points of a training step, for what the methods add:

* ``sample_weights``: (N,) loss weights (static reweighters times GroupDRO's online weights);
* ``extra_loss``: penalties and the adversary's loss, one scalar;
* ``train_sampler``: a weighted sampler when a reweighter runs in ``sampler`` mode;
* ``param_groups`` / ``sync_gradients`` / ``zero_grad``: the adversary head's optimizer group and gradients;
* ``state_dict`` / ``load_state_dict``: training state saved in checkpoints (adversary head, GroupDRO,
  penalties' running statistics);
* ``post_processing``: the (unfitted) group thresholds, fitted after training.

Rows without a group (id -1, ``missing_group: ignore``) train on the task loss with weight 1 and are left out
of every group statistic: reweighters and GroupDRO give them weight 1 and do not count them, penalties and
the adversary see only the rows with a group, and ``TermLog`` does not count them in any group's loss.

Methods come from the arguments (``Mitigations.from_args``: each named method builds itself through the
registry) and from objects passed in code; they combine. ``TermLog`` keeps the running means of the logged
loss terms between two training logs.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from fairtune.mitigation.adversary import Adversary
from fairtune.mitigation.constraints import LagrangianConstraints
from fairtune.mitigation.penalties import Penalty, PenaltyBatch
from fairtune.mitigation.registry import build
from fairtune.mitigation.reweighting import GroupDRO, Reweighter, WeightedEpochSampler

logger = logging.getLogger(__name__)

# A cross-process reduction: (tensor, "sum" | "mean") -> tensor; the identity on one process.
Reduce = Callable[[Tensor, str], Tensor]

ERR_MITIGATION_TYPE = (
    "mitigations must be Penalty, Reweighter, GroupDRO, Adversary or LagrangianConstraints objects; got "
    "{kind}. Post-processing "
    "(GroupThresholds) is fitted after training, on validation predictions: name it in "
    "FairTrainingArguments.post_processing."
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
ERR_REWEIGHTER_UNFITTED = "{method!r} needs a train_dataset to fit its weights on."
ERR_TASK = (
    "{method!r} does not work for task {task!r} (it works for: {tasks}). For causal LMs use loss_parity, "
    "counterfactual_consistency, group_dro, balanced_group or a group adversary."
)
ERR_PAIRS_AND_SAMPLER = (
    "{method!r} needs counterfactual pairs in one micro-batch (a pair sampler), which a reweighter in "
    "sampler mode ({sampler!r}) would replace; use reweighting_mode: weights."
)
ERR_POSTPROCESS_NO_VALIDATION = (
    "post_processing {name!r} fits its thresholds on a validation set; pass eval_dataset (a single dataset) "
    "or a dataset to fit_thresholds()."
)
ERR_POSTPROCESS_BINARY = (
    "post_processing {name!r} sets thresholds on the positive-class score of a binary classifier; this "
    "task has {num_labels} classes."
)
ERR_CONSTRAINTS_UNSYNCED = (
    "constraints need penalty_sync: true: their multipliers are updated from statistics gathered across "
    "processes, which keeps them identical on every process."
)
WARN_STATE_RESET = (
    "Resuming from {checkpoint}, which holds no saved state for: {parts}. They start fresh, so the resumed "
    "run will not continue the interrupted one exactly."
)


def identity_reduce(tensor: Tensor, op: str) -> Tensor:
    """The reduction of a single process: nothing to add."""
    return tensor


class TermLog:
    """Running means of named scalar loss terms and of the per-group task loss between two training logs.

    Values stay on the device until ``pop``, so logging costs no host sync per step.
    """

    def __init__(self) -> None:
        self.sums: dict[str, Tensor] = {}
        self.counts: dict[str, int] = {}
        self.group_loss: Tensor | None = None  # (G, 2): [sum of losses, number of samples]

    def add(self, name: str, value: Tensor) -> None:
        """Add one micro-batch's value of a scalar term (detached)."""
        value = value.detach().float()
        self.sums[name] = self.sums.get(name, torch.zeros_like(value)) + value
        self.counts[name] = self.counts.get(name, 0) + 1

    def add_group_losses(self, losses: Tensor, groups: Tensor, num_groups: int) -> None:
        """Add per-sample losses (N,) of groups (N,) to the per-group running sums (id -1: not counted)."""
        if self.group_loss is None:
            self.group_loss = torch.zeros(num_groups, 2, device=losses.device)
        rows = torch.stack([losses.detach().float(), torch.ones_like(losses, dtype=torch.float)], 1)
        self.group_loss.index_add_(0, groups.clamp_min(0), rows * (groups >= 0)[:, None])

    def pop(self, reduce: Reduce, group_names: Sequence[str], grouping: str) -> dict[str, float]:
        """Means since the last pop (terms averaged over processes, group losses summed first), then reset.

        Every process must call it at the same step: it runs collective reductions.
        """
        logs: dict[str, float] = {}
        if self.group_loss is not None:
            sums = reduce(self.group_loss, "sum").tolist()
            for name, (total, count) in zip(group_names, sums, strict=False):
                if count > 0:
                    logs[f"{grouping}/{name}/loss"] = total / count
            self.group_loss.zero_()
        for name, total in self.sums.items():
            logs[name] = float(reduce(total / self.counts[name], "mean"))
        self.sums, self.counts = {}, {}
        return logs


class Mitigations:
    """The mitigation methods of one training run, sorted by family.

    Args:
        methods: ``Penalty``, ``Reweighter``, ``GroupDRO``, ``Adversary`` and ``LagrangianConstraints``
            objects, in any order. At most one adversary, one GroupDRO, one set of constraints and one
            sampler-mode reweighter; any number of penalties and loss-weight reweighters (their weights
            multiply).
        post_processing: unfitted ``GroupThresholds`` (or None), fitted by the trainer after training.
    """

    def __init__(self, methods: Sequence[Any] = (), post_processing: Any = None):
        self.methods = list(methods)
        self.post_processing = post_processing
        self.penalties: list[Penalty] = []
        reweighters: list[Reweighter] = []
        dro: list[GroupDRO] = []
        adversaries: list[Adversary] = []
        constraints: list[LagrangianConstraints] = []
        staged: list[Any] = []  # two-stage procedures around training (JTT, fairtune.mitigation.jtt)
        for method in self.methods:
            if isinstance(method, Penalty):
                self.penalties.append(method)
            elif isinstance(method, Reweighter):
                reweighters.append(method)
            elif isinstance(method, GroupDRO):
                dro.append(method)
            elif isinstance(method, Adversary):
                adversaries.append(method)
            elif isinstance(method, LagrangianConstraints):
                constraints.append(method)
            elif getattr(method, "two_stage", False):
                staged.append(method)
            else:
                raise TypeError(ERR_MITIGATION_TYPE.format(kind=type(method).__name__))
        samplers = [r for r in reweighters if r.mode == "sampler"]
        for what, items in (
            ("adversary", adversaries),
            ("GroupDRO", dro),
            ("sampler", samplers),
            ("LagrangianConstraints", constraints),
            ("JTT", staged),
        ):
            if len(items) > 1:
                raise ValueError(ERR_MITIGATION_TWICE.format(what=what, count=len(items), items=items))
        self.loss_reweighters = [r for r in reweighters if r.mode == "weights"]
        self.sampler_reweighter = samplers[0] if samplers else None
        self.group_dro = dro[0] if dro else None
        self.adversary = adversaries[0] if adversaries else None
        self.constraints = constraints[0] if constraints else None
        self.two_stage = staged[0] if staged else None
        self.penalty_keys = _unique_keys([f"penalty/{p.name}" for p in self.penalties])

    @classmethod
    def from_args(cls, args: Any, extra: Sequence[Any] = ()) -> Mitigations:
        """The methods ``args`` (``FairTrainingArguments``) names, each built by its class, then ``extra``.

        Raises before anything is trained on an unknown name or a bad option value.
        """
        methods = [
            build(kind, name, args)
            for kind, name in (
                ("penalty", args.penalty),
                ("reweighting", args.reweighting),
                ("adversary", args.adversary),
            )
            if name
        ]
        if getattr(args, "constraints", None):
            if not args.penalty_sync:
                raise ValueError(ERR_CONSTRAINTS_UNSYNCED)
            methods.append(LagrangianConstraints.from_args(args))
        post = build("post_processing", args.post_processing, args) if args.post_processing else None
        return cls([*methods, *extra], post_processing=post)

    def __iter__(self) -> Iterator[Any]:
        return iter(self.methods)

    def __len__(self) -> int:
        return len(self.methods)

    def __repr__(self) -> str:
        return f"Mitigations({self.methods!r}, post_processing={self.post_processing!r})"

    def describe(self) -> str:
        """One line for reports and model cards: the training-time methods, or ``none``."""
        return ", ".join(repr(m) for m in self.methods) or "none"

    # ----- checks and set-up ----------------------------------------------------------------------------
    @property
    def needs_pairs(self) -> bool:
        """Whether a method compares counterfactual pairs, which must then share their micro-batch."""
        return any(getattr(m, "needs_pairs", False) for m in self.methods)

    def check_task(self, num_labels: int, has_validation: bool, task: str = "classification") -> None:
        """Checks that need only the task, not the model: run them before a model is loaded."""
        for method in self.methods:
            tasks = getattr(method, "tasks", ("classification",))
            if task not in tasks:
                raise ValueError(ERR_TASK.format(method=method, task=task, tasks=", ".join(tasks)))
        pairing = next((m for m in self.methods if getattr(m, "needs_pairs", False)), None)
        if pairing is not None and self.sampler_reweighter is not None:
            raise ValueError(ERR_PAIRS_AND_SAMPLER.format(method=pairing, sampler=self.sampler_reweighter))
        if self.constraints is not None and task == "classification":
            self.constraints.check_num_labels(num_labels)
        post = self.post_processing
        if post is not None and task != "classification":
            raise ValueError(ERR_TASK.format(method=post, task=task, tasks="classification"))
        if post is not None:
            if num_labels != 2:
                raise ValueError(ERR_POSTPROCESS_BINARY.format(name=post.objective, num_labels=num_labels))
            if not has_validation:
                raise ValueError(ERR_POSTPROCESS_NO_VALIDATION.format(name=post.objective))

    def check_before_training(self, num_rows: int) -> None:
        """Refuse to train with a two-stage method (JTT) whose first stage did not make this training set
        (``num_rows`` rows): the method would otherwise be silently ignored."""
        if self.two_stage is not None:
            self.two_stage.check_ready(num_rows)

    def check_model(self, model: nn.Module, optimizers: Any = None) -> None:
        """Refuse methods that cannot work with ``model`` (or with an optimizer passed in)."""
        if getattr(getattr(model, "config", None), "num_labels", None) == 1:
            for method in self.methods:
                if getattr(method, "needs_labels", True):
                    raise ValueError(ERR_REGRESSION_HEAD.format(method=method))
        if self.adversary is not None and optimizers is not None and optimizers[0] is not None:
            raise ValueError(ERR_ADVERSARY_OPTIMIZER)

    def setup(
        self,
        model: nn.Module,
        num_groups: int,
        num_labels: int,
        train_groups: Tensor | None = None,
        train_labels: Tensor | None = None,
    ) -> None:
        """Fit static weights on the training group ids (N,) and labels (N,); fresh GroupDRO and adversary.

        Reweighters are refitted on every trainer's data, so an object reused with other data keeps no stale
        weights.
        """
        if train_groups is not None and train_labels is not None:
            # Rows without a group (id -1) do not count towards any group's weight.
            train_labels, train_groups = train_labels[train_groups >= 0], train_groups[train_groups >= 0]
        for reweighter in [*self.loss_reweighters, self.sampler_reweighter]:
            if reweighter is None:
                continue
            if train_groups is not None and train_labels is not None:
                reweighter.fit(train_groups, train_labels, num_groups, num_labels)
            elif reweighter.weights is None:
                raise ValueError(ERR_REWEIGHTER_UNFITTED.format(method=reweighter))
        if self.group_dro is not None:
            self.group_dro.setup(num_groups)
        if self.constraints is not None:
            self.constraints.setup()
        if self.adversary is not None:
            self.adversary.build(model, num_groups, num_labels)
        for penalty in self.penalties:  # running statistics start fresh, like GroupDRO
            penalty.reset_state()

    def to(self, device: torch.device | str) -> Mitigations:
        """Move the training state (adversary head, GroupDRO weights) to ``device``."""
        if self.adversary is not None and self.adversary.head is not None:
            self.adversary.head.to(device)
        if self.group_dro is not None:
            self.group_dro.to(device)
        if self.constraints is not None:
            self.constraints.to(device)
        return self

    @property
    def needs_hidden_states(self) -> bool:
        """Whether the forward pass must return hidden states (an adversary on the representation)."""
        return self.adversary is not None and self.adversary.input == "hidden"

    # ----- data and optimizer ---------------------------------------------------------------------------
    def train_sampler(self, groups: Tensor, labels: Tensor, seed: int) -> WeightedEpochSampler | None:
        """A sampler drawing rows (N,) by the sampler-mode reweighter's weights (1 for rows without a group,
        id -1), or None."""
        if self.sampler_reweighter is None:
            return None
        return WeightedEpochSampler(_group_weights(self.sampler_reweighter, groups, labels), seed=seed)

    def param_groups(self, learning_rate: float) -> list[dict[str, Any]]:
        """Optimizer parameter groups of the methods' own parameters: the adversary head, own lr, no decay."""
        if self.adversary is None or self.adversary.head is None:
            return []
        lr = self.adversary.learning_rate or learning_rate
        return [{"params": list(self.adversary.head.parameters()), "lr": lr, "weight_decay": 0.0}]

    def sync_gradients(self, reduce: Reduce) -> None:
        """Average the adversary head's gradients over processes: the head lives outside the DDP model."""
        if self.adversary is not None and self.adversary.head is not None:
            for p in self.adversary.head.parameters():
                if p.grad is not None:
                    p.grad = reduce(p.grad, "mean")

    def zero_grad(self) -> None:
        """Clear the head's gradients after an optimizer step (Trainer zeroes only the model's)."""
        if self.adversary is not None and self.adversary.head is not None:
            self.adversary.head.zero_grad(set_to_none=True)

    def broadcast_state(self) -> None:
        """Copy process 0's training state (adversary head, GroupDRO weights) to every process.

        DDP broadcasts the model's initial weights, not the head's, which lives outside it: a head drawn from
        a different random state on each process would stay different for the whole run, though its
        gradients are averaged. No-op on one process.
        """
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() < 2:
            return
        tensors = []
        if self.adversary is not None and self.adversary.head is not None:
            tensors += [*self.adversary.head.parameters(), *self.adversary.head.buffers()]
        if self.group_dro is not None and self.group_dro.log_q is not None:
            tensors.append(self.group_dro.log_q)
        with torch.no_grad():
            for tensor in tensors:
                dist.broadcast(tensor.data, src=0)

    # ----- the loss -------------------------------------------------------------------------------------
    def sample_weights(
        self, losses: Tensor, groups: Tensor, labels: Tensor, reduce: Reduce, log: TermLog
    ) -> Tensor:
        """(N,) loss weights of a training batch: static reweighting times GroupDRO's online weights.

        Args:
            losses: (N,) detached per-sample task losses; groups: (N,) ids (-1: no group, weight 1, not
                counted by GroupDRO); labels: (N,) class ids.
            reduce: sums GroupDRO's group losses over processes, so every process keeps the same q.
        """
        weights = torch.ones_like(losses)
        for reweighter in self.loss_reweighters:
            weights = weights * _group_weights(reweighter, groups, labels)
        if self.group_dro is not None:
            grouped = groups >= 0
            rows = torch.stack([losses.float(), torch.ones_like(losses, dtype=torch.float)], 1)
            sums = torch.zeros(self.group_dro.log_q.numel(), 2, device=losses.device).index_add_(
                0, groups.clamp_min(0), rows * grouped[:, None]
            )
            sums = reduce(sums, "sum")
            loss_sums, counts = sums[:, 0], sums[:, 1]
            factor = self.group_dro.update(loss_sums, counts)
            weights = weights * torch.where(grouped, factor[groups.clamp_min(0)], 1.0)
            present = counts > 0
            log.add("group_dro/worst_group_loss", (loss_sums / counts.clamp_min(1))[present].max())
        return weights

    def extra_loss(
        self,
        outputs: Any,
        batch: PenaltyBatch,
        step: int,
        log: TermLog,
        attention_mask: Tensor | None = None,
        without_group: bool = False,
    ) -> Tensor | None:
        """Weighted penalties, constraint terms and the adversary loss of one training micro-batch, or None.

        Args:
            outputs: the model outputs (hidden states for an adversary on the representation);
            batch: logits (N, C), labels, groups and unweighted losses (N,) of the micro-batch;
            step: the optimizer step, for penalty warm-up; attention_mask: (N, T), to pool hidden states.
            without_group: whether rows may have no group (id -1, ``missing_group: ignore``): penalties and
                the adversary then see only the rows with a group (one host sync per step, so only then).
        """
        terms = []
        full = batch
        keep = None
        if without_group:
            keep = batch.groups >= 0
            batch = _rows_with_group(batch, keep)
        for key, penalty in zip(self.penalty_keys, self.penalties, strict=True):
            value = penalty(batch)
            log.add(key, value)
            terms.append(penalty.weight_at(step) * value)
        if self.constraints is not None:
            term, logs = self.constraints.loss(batch, step)
            for key, value in logs.items():
                log.add(key, value)
            terms.append(term)
        if self.adversary is not None:
            representation = self.adversary.representation(outputs, full.logits, attention_mask)
            if keep is not None:
                representation = representation[keep]
            adv_losses, correct = self.adversary.loss(representation, batch.groups, batch.labels)
            if adv_losses.numel():
                log.add("adversary/loss", adv_losses.mean())
                log.add("adversary/accuracy", correct.float().mean())
            # A micro-batch without any row with a group adds 0 (a mean of nothing would be NaN).
            terms.append(adv_losses.mean() if adv_losses.numel() else adv_losses.sum())
        return torch.stack(terms).sum() if terms else None

    def state_logs(self, group_names: Sequence[str]) -> dict[str, float]:
        """Logged view of the online state: GroupDRO's weight of each group."""
        if self.group_dro is None or self.group_dro.log_q is None:
            return {}
        q = self.group_dro.q.tolist()
        return {f"group_dro/{name}/weight": w for name, w in zip(group_names, q, strict=False)}

    # ----- state ----------------------------------------------------------------------------------------
    def stateful_parts(self) -> list[str]:
        """Names of the parts with training state: ``adversary``, ``group_dro``, ``constraints`` and the log
        key of each penalty with running statistics (``penalty/<name>``) when present."""
        named = [("adversary", self.adversary), ("group_dro", self.group_dro)]
        named.append(("constraints", self.constraints))
        parts = [name for name, obj in named if obj]
        return parts + [key for key, p in zip(self.penalty_keys, self.penalties, strict=True) if p.stateful]

    def state_dict(self) -> dict[str, Any]:
        """Training state of every stateful part (``stateful_parts``), as saved in checkpoints."""
        state: dict[str, Any] = {}
        if self.adversary is not None and self.adversary.head is not None:
            state["adversary"] = self.adversary.head.state_dict()
        if self.group_dro is not None:
            state["group_dro"] = self.group_dro.state_dict()
        if self.constraints is not None:
            state["constraints"] = self.constraints.state_dict()
        for key, penalty in zip(self.penalty_keys, self.penalties, strict=True):
            if penalty.stateful:  # running statistics, under the penalty's log key
                state[key] = penalty.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> list[str]:
        """Restore saved state; returns the stateful parts ``state`` had nothing for (they stay fresh)."""
        if self.adversary is not None and self.adversary.head is not None and "adversary" in state:
            self.adversary.head.load_state_dict(state["adversary"])
        if self.group_dro is not None and "group_dro" in state:
            self.group_dro.load_state_dict(state["group_dro"])
        if self.constraints is not None and "constraints" in state:
            self.constraints.load_state_dict(state["constraints"])
        for key, penalty in zip(self.penalty_keys, self.penalties, strict=True):
            if penalty.stateful and key in state:
                penalty.load_state_dict(state[key])
        return [part for part in self.stateful_parts() if part not in state]


def _group_weights(reweighter: Reweighter, groups: Tensor, labels: Tensor) -> Tensor:
    """(N,) reweighter weights, 1 for rows without a group (id -1; indexing the table with -1 would silently
    give them the last group's weight)."""
    return torch.where(groups >= 0, reweighter.sample_weights(groups.clamp_min(0), labels), 1.0)


def _rows_with_group(batch: PenaltyBatch, keep: Tensor) -> PenaltyBatch:
    """The micro-batch restricted to rows with a group (``keep`` (N,) bool): every per-row field subset."""
    if bool(keep.all()):
        return batch
    rows = {
        f.name: getattr(batch, f.name)[keep]
        for f in dataclasses.fields(batch)
        if isinstance(getattr(batch, f.name), Tensor) and getattr(batch, f.name).shape[:1] == keep.shape
    }
    return dataclasses.replace(batch, **rows)


def _unique_keys(keys: list[str]) -> list[str]:
    """Number repeated log keys (``penalty/dp_1``, ``penalty/dp_2``) so two penalties never share a key."""
    repeated = {k for k in keys if keys.count(k) > 1}
    seen: dict[str, int] = {}
    out = []
    for key in keys:
        if key in repeated:
            seen[key] = seen.get(key, 0) + 1
            key = f"{key}_{seen[key]}"
        out.append(key)
    return out
