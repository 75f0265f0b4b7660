"""Differentiable fairness penalties: loss wrappers added to the task loss of every training batch.

A penalty follows the split fairret uses: a *statistic* per group and a *spread* over groups.

* The statistic is a pair of (G, K) sums over the batch: a numerator (e.g. the summed probability of the
  positive class) and a denominator (the number of samples that count). ``RatePenalty.statistic`` gives the
  per-sample values and 0/1 selections, ``group_sums`` adds them up per group, ``rates_from_sums`` divides.
  Sums, not ratios, are what the batch provides, so they can be added across processes or micro-batches
  before any rate is taken.
* The spread (``spread``) penalises how far the groups' rates lie apart.

A new rate penalty is therefore only a statistic (see ``DemographicParity``). Soft statistics use predicted
probabilities instead of hard decisions, so the gradient reaches the logits. A group absent from the batch has
a zero denominator: it is masked out of the spread, never divided by, so no batch yields NaN or inf.

Binary tasks use the positive class only; with C > 2 classes every class is a column of the statistic (the
selection rate of class c, the recall of class c, ...), and the spread is taken over all of them.

Across processes (``PenaltyBatch.sync``, set by the trainer when ``penalty_sync`` is on and there are
several processes) a penalty is taken on the *global* micro-batch, the union of every process's micro-batch:
rate penalties add their (G, K) sums over processes with autograd before any rate is taken, MinDiff
concatenates the scores, counterfactual consistency adds its per-pair sum and count. Every process then holds
the same value, equal to the single-process value on the global batch (up to float rounding). A custom
``RatePenalty`` gets this for free; a custom ``compute`` must pass its own sums through ``batch.sync``.

Gradient scaling. The backward of the differentiable sum is again a sum over processes: process r receives
``sum_r' u_r'`` where ``u_r'`` is the upstream gradient on process r' (e.g. the loss factor ``s_r'`` times
dP/dS, the same dP/dS everywhere). With every ``s_r = 1`` the gradient on each process's logits is therefore W
times the single-process gradient of its rows, and DDP's average of parameter gradients over the W processes
divides it back: the parameter gradient is exactly that of the penalty on the global batch. In general the
parameter gradient is ``mean_r(s_r) * grad P(global batch)``, so a gathered penalty takes the same per-process
factor as a per-process one: the trainer's ``share`` (this micro-batch's rows over the accumulation window's
rows, times W when ``num_items_in_batch`` counts every process) averages over processes to the global
micro-batch's share of the window.

Gradient accumulation: the statistics of each micro-batch are gathered across processes, not across the
micro-batches of an optimizer step. A run on W processes with accumulation therefore equals a single-process
run whose micro-batch m is the union of the processes' micro-batches m, not one on the whole window (the
spread is not linear in the batch): exact for the former, an approximation of the latter. Spanning the
micro-batches of a step is not done.

Running statistics (``RatePenalty(running="ema" | "window")``, ``RunningSums``). With a small micro-batch
and many groups, a batch's per-group rates are noisy and most groups are absent. The penalty can instead take
its rates from the (G, K) sums of past batches combined with the current one::

    ema:     num_hat = m * num_past.detach() + num_batch  (den_hat alike); then num_past <- num_hat.detach()
    window:  num_hat = sum of the last ``window`` batches' num (detached) + num_batch  (den_hat alike)
    rate = num_hat / den_hat per (group, column)

Only the current batch's terms carry the gradient (past batches came from older parameters). The gradient of
a rate on the batch's sums is 1 / den_hat, smaller than the batch estimator's 1 / den_batch by about (1 - m),
so by default (``rescale=True``) each cell's gradient is multiplied by den_hat / den_batch (detached): the
value is the running estimate, the gradient has the per-sample scale of the batch estimator, and its
direction uses the running rates (a lower-variance outer derivative, as in stochastic compositional gradient
methods). The sums are updated from the sums *after* ``batch.sync``, so they are identical on every process.
They are updated once per call when gradients are enabled (training), i.e. once per micro-batch: under
gradient accumulation the micro-batches of one optimizer step enter the running sums one after another, which
is what the estimator wants (each is a new sample under the same parameters), and the EMA horizon counts
micro-batches, not optimizer steps. Under ``torch.no_grad`` (evaluation, prediction) the running sums are
read, never changed (the trainer calls penalties in training only anyway). The state is saved in checkpoints
(``Mitigations.state_dict``) and restored on resume.

Mixed precision. ``Penalty.__call__`` runs ``compute`` with autocast disabled and returns a float32 scalar:
under bf16/fp16 autocast a matmul of the group sums would otherwise run in half precision (8 bits of mantissa
for a sum over the batch). Statistics take float32 probabilities and losses whatever the logits' dtype.

Collectives: every process must run the same penalty computations in the same order (they do: the trainer
computes the same penalties on every process), and every branch taken after the sum depends on global sums
only, so that the backward collectives match. With ``sync`` None (one process, or ``penalty_sync: false``) no
collective runs and each process penalises its own micro-batch, as before.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor

from fairtune.mitigation.registry import construct, register

SPREADS = ("max_gap", "mean_abs_dev", "l2_dev")
ERR_SPREAD = "spread must be one of {valid}; got {spread!r}."
ERR_WEIGHT = "The weight of penalty {name!r} must be a finite number >= 0; got {weight}."
ERR_WARMUP = "warmup_steps of penalty {name!r} must be >= 0; got {warmup}."
ERR_BANDWIDTH = "MinDiff bandwidth must be > 0; got {bandwidth}."
RUNNING_MODES = ("none", "ema", "window")
ERR_RUNNING = (
    "running (the running group statistics of penalty {name!r}) must be one of {valid}; got {running!r}."
)
ERR_MOMENTUM = "momentum of penalty {name!r} must lie in [0, 1); got {momentum}."
ERR_WINDOW = "window of penalty {name!r} must be an int >= 1 (past batches kept); got {window!r}."
ERR_RUNNING_STATE = (
    "Saved running statistics of penalty {name!r} do not fit: {problem}. Was the checkpoint written with "
    "other penalty options?"
)
ERR_RUNNING_SHAPE = (
    "Running statistics of penalty {name!r} hold (G, K) = {have}, but this batch gives {got}: the number of "
    "groups or classes changed; call reset_state() before reusing the penalty on other data."
)
ERR_RUNNING_OPTION = "{option} of penalty {name!r} applies to running: {mode} only; got running: {running!r}."


class _SumAcrossProcesses(torch.autograd.Function):
    """All-reduce (sum) whose backward is again an all-reduce (sum): the adjoint of summing over processes.

    Written here rather than taken from ``torch.distributed.nn.functional`` (deprecated in torch 2.x, warning
    on every call); gloo supports all-reduce, which is all this needs (no reduce-scatter or all-to-all).
    """

    @staticmethod
    def forward(ctx: Any, tensor: Tensor, group: Any) -> Tensor:
        ctx.group = group
        out = tensor.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(out, op=dist.ReduceOp.SUM, group=group)
        return out

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        grad = grad.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(grad, op=dist.ReduceOp.SUM, group=ctx.group)
        return grad, None


class ProcessSync:
    """Differentiable sums and concatenations over the processes of a ``torch.distributed`` run.

    Every process must call the same methods in the same order with tensors of the same shape (except the
    first dimension for ``cat``). See the module docstring for the gradient scaling.

    Args:
        group: the process group (None: the default group, the one DDP uses).
    """

    def __init__(self, group: Any = None):
        self.group = group
        self.rank = dist.get_rank(group)
        self.world_size = dist.get_world_size(group)

    def sum(self, tensor: Tensor) -> Tensor:
        """The elementwise sum of ``tensor`` over processes (same shape), with autograd."""
        return _SumAcrossProcesses.apply(tensor, self.group)

    def cat(self, tensor: Tensor) -> Tensor:
        """(n_r, ...) rows of every process -> (sum_r n_r, ...) in rank order, with autograd.

        Built on ``sum``: each process puts its rows at its offset in a zero tensor, so the values are exact
        (x + 0 = x) and the backward hands each process the summed gradient of its own rows.
        """
        counts = torch.zeros(self.world_size, dtype=torch.long, device=tensor.device)
        counts[self.rank] = tensor.shape[0]
        dist.all_reduce(counts, op=dist.ReduceOp.SUM, group=self.group)
        before, after = int(counts[: self.rank].sum()), int(counts[self.rank + 1 :].sum())
        pad = tensor.shape[1:]
        full = torch.cat([tensor.new_zeros(before, *pad), tensor, tensor.new_zeros(after, *pad)])
        return self.sum(full)

    def __repr__(self) -> str:
        return f"ProcessSync(rank={self.rank}, world_size={self.world_size})"


@dataclass
class PenaltyBatch:
    """What a penalty sees of one training micro-batch.

    Attributes:
        logits: (N, C) model outputs (any dtype; statistics are taken in float32).
        labels: (N,) class ids in ``[0, C)``.
        groups: (N,) group ids in ``[0, num_groups)`` of the training grouping (``group_by``).
        num_groups: G, the number of groups in the training vocabulary; every statistic has G rows, also
            for groups absent from this batch (their denominators are 0).
        losses: (N,) per-sample task loss, before any sample weights, with its graph.
        pair_ids: (N,) counterfactual pair ids when the data has them (``pair_id`` column), else None.
        input_ids, attention_mask: (N, T) token inputs of text models, else None (a causal LM's consistency
            penalty aligns the pair's tokens with them).
        sync: the differentiable cross-process reduction the statistics go through before any ratio is taken
            (see the module docstring); None: this micro-batch only, with no collective call.

    For a causal LM, ``logits`` are (N, T, V) and ``labels`` (N, T) token ids (-100 where not predicted); the
    rate penalties need class probabilities and refuse such a task, while ``LossParity`` and
    ``CounterfactualConsistency`` work on both.

    Derived (computed once per batch and cached):
        probs: (N, C) softmax of the logits, float32.
        membership: (N, G) one-hot group membership, float32.
        class_columns(): (N, K) probabilities of the classes a statistic is taken over: K = 1 (the positive
            class) when C = 2, else K = C.
        label_columns(): (N, K) 0/1 indicator that the label is each column's class.
    """

    logits: Tensor
    labels: Tensor
    groups: Tensor
    num_groups: int
    losses: Tensor
    pair_ids: Tensor | None = None
    input_ids: Tensor | None = None
    attention_mask: Tensor | None = None
    sync: ProcessSync | None = None

    @cached_property
    def probs(self) -> Tensor:
        """(N, C) class probabilities in float32."""
        return self.logits.float().softmax(dim=-1)

    @cached_property
    def membership(self) -> Tensor:
        """(N, G) one-hot group membership, float32."""
        return F.one_hot(self.groups, self.num_groups).float()

    def class_columns(self) -> Tensor:
        """(N, K) probabilities of the classes a statistic is taken over: the positive class when C = 2."""
        return self.probs[:, 1:] if self.probs.shape[1] == 2 else self.probs

    def label_columns(self) -> Tensor:
        """(N, K) indicator that the label is the class of each column (same columns as ``class_columns``)."""
        onehot = F.one_hot(self.labels, self.probs.shape[1]).float()
        return onehot[:, 1:] if onehot.shape[1] == 2 else onehot


def group_sums(values: Tensor, select: Tensor, membership: Tensor) -> tuple[Tensor, Tensor]:
    """Per-group numerator and denominator of a rate: sums of ``values * select`` and of ``select``.

    Args:
        values: (N, K) per-sample values (e.g. probabilities).
        select: (N, K) 0/1 weights of which samples count for each column (all ones for a selection rate,
            the label indicator for a TPR).
        membership: (N, G) group membership.

    Returns:
        num (G, K), den (G, K).
    """
    return membership.T @ (values * select), membership.T @ select


def rates_from_sums(num: Tensor, den: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Rates from (G, K) sums -> rates (G, K) (0 where undefined), present (G, K) bool, overall (K,)."""
    present = den > 0
    rates = num / den.clamp_min(1e-12) * present
    overall = num.sum(0) / den.sum(0).clamp_min(1e-12)
    return rates, present, overall


def group_rates(values: Tensor, select: Tensor, membership: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Per-group means of ``values`` over the selected samples: ``rates_from_sums(*group_sums(...))``.

    Shapes as in ``group_sums``; returns rates (G, K), present (G, K) bool, overall (K,).
    """
    return rates_from_sums(*group_sums(values, select, membership))


def spread(rates: Tensor, present: Tensor, overall: Tensor, how: str = "max_gap") -> Tensor:
    """How far the groups' rates lie apart, over the groups where each column is defined.

    Args:
        rates: (G, K); present: (G, K) bool; overall: (K,).
        how: ``max_gap``: the largest max - min over columns (what ``*_difference`` metrics measure);
            ``mean_abs_dev``: mean |rate - overall| over defined cells; ``l2_dev``: per column the root mean
            square deviation from ``overall``, averaged over columns.

    A column defined for fewer than two groups contributes 0. Returns a scalar.
    """
    if how not in SPREADS:
        raise ValueError(ERR_SPREAD.format(valid=", ".join(SPREADS), spread=how))
    mask = present.float()
    usable = mask.sum(0) >= 2  # (K,)
    zero = rates.sum() * 0.0  # keeps the graph connected when nothing is usable
    if not bool(usable.any()):
        return zero
    if how == "max_gap":
        high = rates.masked_fill(~present, float("-inf")).amax(0)
        low = rates.masked_fill(~present, float("inf")).amin(0)
        return (high - low)[usable].max() + zero
    dev = (rates - overall) * mask
    if how == "mean_abs_dev":
        return dev.abs()[:, usable].sum() / mask[:, usable].sum()
    rms = ((dev**2).sum(0) / mask.sum(0).clamp_min(1) + 1e-12).sqrt()
    return rms[usable].mean()


class RunningSums:
    """Running sums of a statistic over past batches (detached), combined with the current batch's sums.

    The state is one tensor shape S of sums (a rate penalty uses S = (2, G, K): numerators and denominators),
    never a ratio, so it adds like the batch sums it is made of. ``combine(current)`` gives the estimate whose
    gradient flows through ``current`` only; ``update(current)`` adds the current sums to the past (call it
    with the sums every process agrees on, i.e. after any cross-process sum, and only in training).

    * ``ema``: ``combine = momentum * past + current``; ``update``: ``past <- momentum * past + current``.
    * ``window``: ``combine = sum of the last window updates + current``; ``update`` appends, dropping the
      oldest beyond ``window``.

    Reusable by anything that estimates ratios of sums over a stream of batches (a penalty, a constraint's
    violation). ``state_dict`` / ``load_state_dict`` carry it through checkpoints.

    Args:
        mode: ``ema`` or ``window``.
        momentum: EMA decay in [0, 1) (``ema``); 0 keeps no past.
        window: number of past batches kept (``window``), >= 1.
        name: owner named in error messages.
    """

    def __init__(self, mode: str = "ema", momentum: float = 0.9, window: int = 8, name: str = "running sums"):
        if mode not in RUNNING_MODES[1:]:
            raise ValueError(ERR_RUNNING.format(name=name, valid=", ".join(RUNNING_MODES[1:]), running=mode))
        if not (0.0 <= momentum < 1.0):  # also rejects NaN
            raise ValueError(ERR_MOMENTUM.format(name=name, momentum=momentum))
        if isinstance(window, bool) or not isinstance(window, int) or window < 1:
            raise ValueError(ERR_WINDOW.format(name=name, window=window))
        self.mode, self.momentum, self.window, self.name = mode, float(momentum), window, name
        self.past: Tensor | None = None  # ema: the discounted sum of past updates
        self.history: deque[Tensor] = deque(maxlen=window)  # window: the last `window` updates
        self.updates = 0

    def past_sum(self, like: Tensor) -> Tensor | None:
        """The detached contribution of past batches, on ``like``'s device (None before any update)."""
        if self.updates == 0:
            return None
        past = self.momentum * self.past if self.mode == "ema" else torch.stack(list(self.history)).sum(0)
        if past.shape != like.shape:
            raise ValueError(
                ERR_RUNNING_SHAPE.format(name=self.name, have=tuple(past.shape), got=tuple(like.shape))
            )
        return past.to(like.device)

    def combine(self, current: Tensor) -> Tensor:
        """``past + current`` (same shape as ``current``); only ``current`` carries a gradient."""
        past = self.past_sum(current)
        return current if past is None else past + current

    def update(self, current: Tensor) -> None:
        """Add this batch's sums (detached, float32) to the past."""
        current = current.detach().float()
        self.past_sum(current)  # shape check
        if self.mode == "ema":
            self.past = (
                current if self.past is None else self.momentum * self.past.to(current.device) + current
            )
        else:
            self.history.append(current)
        self.updates += 1

    def reset(self) -> None:
        """Forget the past (e.g. before training on other data)."""
        self.past, self.history, self.updates = None, deque(maxlen=self.window), 0

    def state_dict(self) -> dict[str, Any]:
        """The state as tensors and numbers (``torch.save``-able)."""
        history = torch.stack(list(self.history)) if self.history else None
        return {"mode": self.mode, "updates": self.updates, "past": self.past, "history": history}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a ``state_dict``; a state of another mode is an error (its past means something else)."""
        if state.get("mode") != self.mode:
            problem = f"saved with running: {state.get('mode')!r}, now {self.mode!r}"
            raise ValueError(ERR_RUNNING_STATE.format(name=self.name, problem=problem))
        self.reset()
        self.updates = int(state["updates"])
        self.past = state["past"]
        if state["history"] is not None:
            self.history.extend(state["history"].unbind(0))  # maxlen keeps the last `window`

    def __repr__(self) -> str:
        option = f"momentum={self.momentum}" if self.mode == "ema" else f"window={self.window}"
        return f"RunningSums({self.mode}, {option}, updates={self.updates})"


class Penalty:
    """Base class of a fairness penalty added to the task loss: ``weight * compute(batch)``.

    Subclasses set ``name`` and implement ``compute(batch) -> scalar``; a penalty on the spread of a per-group
    rate subclasses ``RatePenalty`` and implements only ``statistic``. ``needs_labels`` says the penalty uses
    class labels (checked against regression heads).

    Args:
        weight: multiplier of the penalty (lambda), >= 0.
        warmup_steps: the weight grows linearly from 0 to ``weight`` over this many optimizer steps.
    """

    name = "penalty"
    needs_labels = True
    # Task kinds the method works for; rate penalties need class probabilities, so classification only.
    tasks: tuple[str, ...] = ("classification",)

    def __init__(self, weight: float = 1.0, warmup_steps: int = 0):
        if not (weight >= 0 and math.isfinite(weight)):  # also rejects NaN
            raise ValueError(ERR_WEIGHT.format(name=self.name, weight=weight))
        if warmup_steps < 0:
            raise ValueError(ERR_WARMUP.format(name=self.name, warmup=warmup_steps))
        self.weight = float(weight)
        self.warmup_steps = int(warmup_steps)

    @classmethod
    def from_args(cls, args: Any) -> Penalty:
        """Build from ``FairTrainingArguments``: ``penalty_weight``, ``penalty_warmup_steps``,
        ``penalty_spread`` (if the class takes a spread) and the free-form ``penalty_options`` mapping."""
        standard = {
            "weight": args.penalty_weight,
            "warmup_steps": args.penalty_warmup_steps,
            "spread": args.penalty_spread,
        }
        return construct(cls, standard, getattr(args, "penalty_options", None) or {}, "penalty")

    def weight_at(self, step: int) -> float:
        """The weight at optimizer step ``step`` (after warm-up: ``weight``)."""
        if self.warmup_steps == 0:
            return self.weight
        return self.weight * min(1.0, step / self.warmup_steps)

    def compute(self, batch: PenaltyBatch) -> Tensor:
        raise NotImplementedError(f"{type(self).__name__} must implement compute(batch) -> scalar tensor")

    def __call__(self, batch: PenaltyBatch) -> Tensor:
        """``compute(batch)`` in float32: autocast is off inside, so statistics never run in bf16/fp16."""
        device = batch.logits.device.type
        if not torch.amp.is_autocast_available(device):
            return self.compute(batch).float()
        with torch.autocast(device, enabled=False):
            return self.compute(batch).float()

    # Training state (running statistics): none by default; saved in checkpoints by ``Mitigations``.
    @property
    def stateful(self) -> bool:
        """Whether the penalty keeps training state that checkpoints must carry."""
        return False

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        return None

    def reset_state(self) -> None:
        return None

    def __repr__(self) -> str:
        extra = {k: v for k, v in vars(self).items() if k not in ("weight", "warmup_steps")}
        return f"{type(self).__name__}(weight={self.weight}, warmup_steps={self.warmup_steps}, {extra})"


class RatePenalty(Penalty):
    """A penalty on the spread of one per-group rate: subclasses give the rate's per-sample ``statistic``.

    Args:
        spread: ``max_gap``, ``mean_abs_dev`` or ``l2_dev`` (see ``spread``).
        running: ``none`` (rates of this batch), ``ema`` or ``window``: rates of the running (G, K) sums of
            past batches (detached) plus this batch's (see the module docstring and ``RunningSums``).
        momentum: EMA decay of ``running: ema``, in [0, 1) (default 0.9).
        window: past batches kept by ``running: window``, >= 1 (default 8).
        rescale: scale each cell's gradient by den_hat / den_batch so the running estimate keeps the batch
            estimator's gradient scale (default); False: the plain gradient of num_hat / den_hat.
    """

    def __init__(
        self,
        weight: float = 1.0,
        warmup_steps: int = 0,
        spread: str = "max_gap",
        running: str = "none",
        momentum: float | None = None,
        window: int | None = None,
        rescale: bool = True,
    ):
        super().__init__(weight, warmup_steps)
        if spread not in SPREADS:
            raise ValueError(ERR_SPREAD.format(valid=", ".join(SPREADS), spread=spread))
        if running not in RUNNING_MODES:
            raise ValueError(
                ERR_RUNNING.format(name=self.name, valid=", ".join(RUNNING_MODES), running=running)
            )
        # An option of another mode would be accepted and ignored: refuse it.
        for option, value, mode in (("momentum", momentum, "ema"), ("window", window, "window")):
            if value is not None and running != mode:
                raise ValueError(
                    ERR_RUNNING_OPTION.format(option=option, name=self.name, mode=mode, running=running)
                )
        self.spread = spread
        self.rescale = bool(rescale)
        self.running: RunningSums | None = None
        if running != "none":
            self.running = RunningSums(
                running,
                momentum=0.9 if momentum is None else momentum,
                window=8 if window is None else window,
                name=self.name,
            )

    @property
    def stateful(self) -> bool:
        return self.running is not None

    def state_dict(self) -> dict[str, Any]:
        """``{"running": ...}`` with running statistics, else {}."""
        return {} if self.running is None else {"running": self.running.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.running is not None and "running" in state:
            self.running.load_state_dict(state["running"])

    def reset_state(self) -> None:
        if self.running is not None:
            self.running.reset()

    def statistic(self, batch: PenaltyBatch) -> tuple[Tensor, Tensor]:
        """Per-sample values (N, K) and 0/1 selections (N, K) whose per-group ratio of sums is the rate."""
        raise NotImplementedError(f"{type(self).__name__} must implement statistic(batch)")

    def compute(self, batch: PenaltyBatch) -> Tensor:
        num, den = group_sums(*self.statistic(batch), batch.membership)
        if batch.sync is not None:  # sums of the global batch: one collective for both
            num, den = batch.sync.sum(torch.stack([num, den])).unbind(0)
        if self.running is None:
            return spread(*rates_from_sums(num, den), self.spread)
        current = torch.stack([num, den])  # (2, G, K), identical on every process after the sync
        num_hat, den_hat = self.running.combine(current).unbind(0)
        rates, present, overall = rates_from_sums(num_hat, den_hat)
        if self.rescale:
            rates = _rescaled(rates, den_hat / den.clamp_min(1e-12) * (den > 0))
            overall = _rescaled(overall, den_hat.sum(0) / den.sum(0).clamp_min(1e-12) * (den.sum(0) > 0))
        if torch.is_grad_enabled():  # training; evaluation under no_grad reads the past without changing it
            self.running.update(current)
        return spread(rates, present, overall, self.spread)


def _rescaled(value: Tensor, scale: Tensor) -> Tensor:
    """``value`` with its gradient multiplied by ``scale`` (detached), elementwise."""
    value_ = value.detach()
    return value_ + (value - value_) * scale.detach()


@register("penalty", "demographic_parity")
class DemographicParity(RatePenalty):
    """Spread of the soft selection rate E[p(y=c)] across groups (Zemel et al. 2013; FFB's DiffDP)."""

    name = "demographic_parity"

    def statistic(self, batch: PenaltyBatch) -> tuple[Tensor, Tensor]:
        probs = batch.class_columns()
        return probs, torch.ones_like(probs)


@register("penalty", "equal_opportunity")
class EqualOpportunity(RatePenalty):
    """Spread of the soft TPR E[p(y=c) | y=c] across groups (Hardt et al. 2016's criterion, relaxed)."""

    name = "equal_opportunity"

    def statistic(self, batch: PenaltyBatch) -> tuple[Tensor, Tensor]:
        return batch.class_columns(), batch.label_columns()


@register("penalty", "equalized_odds")
class EqualizedOdds(RatePenalty):
    """Spread of the soft TPR and FPR E[p(y=c) | y != c] across groups, taken over both (FFB's DiffEOdd)."""

    name = "equalized_odds"

    def statistic(self, batch: PenaltyBatch) -> tuple[Tensor, Tensor]:
        probs, positive = batch.class_columns(), batch.label_columns()
        # Columns [TPR of each class | FPR of each class]: one spread over both, like the metric's max.
        return torch.cat([probs, probs], dim=1), torch.cat([positive, 1.0 - positive], dim=1)


@register("penalty", "loss_parity")
class LossParity(RatePenalty):
    """Spread of the mean task loss across groups: accuracy parity through its differentiable surrogate."""

    name = "loss_parity"
    tasks = ("classification", "causal_lm")  # any per-sample loss: cross-entropy or a sequence's mean NLL

    def statistic(self, batch: PenaltyBatch) -> tuple[Tensor, Tensor]:
        losses = batch.losses.float().unsqueeze(1)
        return losses, torch.ones_like(losses)


@register("penalty", "mindiff")
class MinDiff(Penalty):
    """Maximum mean discrepancy between each group's score distribution and the rest's (Prost et al. 2019).

    Scores are the positive-class probability (binary) or the probability vector (C > 2); the kernel is
    Gaussian, k(a, b) = exp(-||a - b||^2 / (2 bandwidth^2)). For every group g present next to at least one
    other sample, the biased (V-statistic) MMD^2 between g and the other samples is taken; the penalty is
    their mean. With ``labels`` set (e.g. ``[0]``, the negatives, as in the paper, for equal FPRs) only
    samples of those classes take part. Costs O(N^2) per batch in memory and time (N of the global batch when
    the batch is gathered across processes).
    """

    name = "mindiff"

    def __init__(
        self,
        weight: float = 1.0,
        warmup_steps: int = 0,
        bandwidth: float = 0.1,
        labels: list[int] | None = None,
    ):
        super().__init__(weight, warmup_steps)
        if not bandwidth > 0:
            raise ValueError(ERR_BANDWIDTH.format(bandwidth=bandwidth))
        self.bandwidth = float(bandwidth)
        self.labels = list(labels) if labels is not None else None

    @classmethod
    def from_args(cls, args: Any) -> Penalty:
        """As ``Penalty.from_args``, plus ``mindiff_bandwidth`` (``penalty_options`` may override it)."""
        options = {"bandwidth": args.mindiff_bandwidth} | dict(getattr(args, "penalty_options", None) or {})
        standard = {"weight": args.penalty_weight, "warmup_steps": args.penalty_warmup_steps}
        return construct(cls, standard, options, "penalty")

    def compute(self, batch: PenaltyBatch) -> Tensor:
        scores, member = batch.class_columns(), batch.membership
        zero = scores.sum() * 0.0
        if self.labels is not None:
            keep = torch.isin(batch.labels, torch.tensor(self.labels, device=batch.labels.device))
            scores, member = scores[keep], member[keep]
        if batch.sync is not None:
            # The kernel terms of the global batch: every process gathers all scores (O(N^2) of the global N).
            gathered = batch.sync.cat(torch.cat([scores, member], dim=1))
            scores, member = gathered[:, : scores.shape[1]], gathered[:, scores.shape[1] :]
            zero = scores.sum() * 0.0
        if scores.shape[0] < 2:
            return zero
        kernel = torch.exp(-torch.cdist(scores, scores).pow(2) / (2 * self.bandwidth**2))  # (N, N)
        inside = member.sum(0)  # (G,)
        outside = scores.shape[0] - inside
        usable = (inside > 0) & (outside > 0)
        if not bool(usable.any()):
            return zero
        a = member / inside.clamp_min(1)  # (N, G): mean over the group
        b = (1 - member) / outside.clamp_min(1)  # (N, G): mean over everyone else
        ka, kb = kernel @ a, kernel @ b
        mmd2 = (a * ka).sum(0) + (b * kb).sum(0) - 2 * (a * kb).sum(0)  # (G,)
        return mmd2[usable].clamp_min(0).mean() + zero
