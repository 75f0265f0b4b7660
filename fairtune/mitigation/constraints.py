"""Fairness constraints with stated bounds, trained with Lagrange multipliers.

A constraint says how large a gap may be, e.g. ``"demographic_parity_difference <= 0.05"``. Training solves

    min_theta  task_loss(theta)   subject to   gap_j(theta) <= bound_j   for every constraint j

as the two-player game of the proxy-Lagrangian (Cotter, Jiang and Sridharan 2019, the method of TensorFlow's
TFCO): the model minimises ``task_loss + sum_j lambda_j * soft_gap_j`` and every multiplier ``lambda_j >= 0``
follows projected gradient ascent on the constraint's violation ``v_j = hard_gap_j - bound_j``, once per
optimizer step:

    I_j <- max(0, I_j + multiplier_lr * v_j)          (gradient ascent, projected onto >= 0)
    lambda_j = max(0, I_j + proportional * v_j)

so it rises while the constraint is violated and decays towards 0 once it holds. ``I_j`` is the textbook
multiplier; the proportional term (the PI form of the Lagrangian method, Stooke, Achiam and Abbeel 2020)
reacts to the current violation at once and damps the oscillation of plain ascent, whose multiplier lags the
gap. On the planted-bias task of tests/test_constraints.py (validation gap 0.60 without mitigation), plain
ascent with bound 0.2 ended at a validation gap of 0.075 (step 0.5) or 0.234 (step 0.2); with the default
gain 2.0 and step 0.2 it ended at 0.186, and bound 0.05 at 0.055.
``proportional: 0`` gives plain ascent. The two players see different gaps, as in the proxy-Lagrangian:

* ``soft_gap_j`` (the model's player) is the spread (max - min over the training groups) of the *soft* rate,
  the same differentiable statistic as the matching penalty (``DemographicParity`` for demographic parity,
  ...): only it carries gradient.
* ``hard_gap_j`` (the multiplier's player) is the gap of the thresholded decisions, the quantity the bound is
  stated on (the evaluation metric of the same name), estimated from a running (EMA) sum of per-group counts
  over recent training batches: one batch of 8 rows cannot estimate a gap, and an EMA over ~1 / (1 -
  momentum) batches can.

Both are taken on the sums of the global micro-batch when several processes train (``PenaltyBatch.sync``), so
the multipliers are identical on every process without further communication; for that reason constraints
refuse ``penalty_sync: false``. Multipliers and running sums are saved in checkpoints and restored on resume
(``state_dict``).

What is bounded is the gap on *training* batches; the validation gap of the final model lands near the bound
(above it when the model generalises the gap worse than it fits it): a bound a little below the target
leaves room, and constrained model selection (``selection_constraints``) picks the checkpoint that meets it.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from fairtune.mitigation.penalties import (
    DemographicParity,
    EqualizedOdds,
    EqualOpportunity,
    PenaltyBatch,
    RatePenalty,
    RunningSums,
    group_sums,
    rates_from_sums,
    spread,
)

ERR_CONSTRAINT_SYNTAX = (
    "Constraint {text!r} is not of the form '<gap> <= <bound>', e.g. 'demographic_parity_difference <= 0.05'."
)
ERR_CONSTRAINT_METRIC = "Constraint on {metric!r}: constraints can bound {valid}."
ERR_CONSTRAINT_BOUND = "The bound of constraint {metric!r} must be a number in [0, 1); got {bound}."
ERR_CONSTRAINT_TWICE = "Two constraints bound {metric!r}; keep the tighter one."
ERR_MULTIPLIER_LR = "constraint_learning_rate must be a finite number > 0; got {lr}."
ERR_BINARY_ONLY = (
    "Constraint {metric!r} is defined for binary tasks (it is not among the metrics of a {num_labels}-class "
    "task); multi-class tasks can bound demographic_parity_difference and accuracy_difference."
)
ERR_RESUME_CONSTRAINTS = (
    "The checkpoint's constraints {saved} differ from this run's {ours}; resume with the same constraints or "
    "start a new run."
)
ERR_GAIN = "constraint option {name} must be a finite number >= 0; got {value}."
ERR_NO_CONSTRAINTS = "LagrangianConstraints needs at least one constraint."

_CONSTRAINT_RE = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_]*)\s*(<=|<)\s*([-+0-9.eE]+)\s*$")


class _AccuracyParity(RatePenalty):
    """The soft accuracy: the probability of the true class; its hard form is the 0/1 accuracy."""

    name = "accuracy_parity"

    def statistic(self, batch: PenaltyBatch) -> tuple[Tensor, Tensor]:
        hit = batch.probs.gather(1, batch.labels.long().unsqueeze(1))  # (N, 1)
        return hit, torch.ones_like(hit)


# The gap a constraint bounds -> the rate statistic whose max - min over groups it is. Every key is the name
# of the evaluation metric (``fairtune.metrics.gaps_from_rates``) the bound is stated on.
STATISTICS: dict[str, type[RatePenalty]] = {
    "demographic_parity_difference": DemographicParity,
    "equal_opportunity_difference": EqualOpportunity,
    "equalized_odds_difference": EqualizedOdds,
    "accuracy_difference": _AccuracyParity,
}
BINARY_ONLY = ("equal_opportunity_difference", "equalized_odds_difference")


@dataclass(frozen=True)
class Constraint:
    """An upper bound on a gap across the training groups: ``metric <= bound``.

    Args:
        metric: a key of ``STATISTICS`` (the evaluation metric's name).
        bound: the largest gap allowed, in [0, 1).
    """

    metric: str
    bound: float

    def __post_init__(self) -> None:
        if self.metric not in STATISTICS:
            raise ValueError(ERR_CONSTRAINT_METRIC.format(metric=self.metric, valid=", ".join(STATISTICS)))
        if not (isinstance(self.bound, int | float) and 0 <= self.bound < 1):
            raise ValueError(ERR_CONSTRAINT_BOUND.format(metric=self.metric, bound=self.bound))

    @classmethod
    def parse(cls, text: str | Constraint) -> Constraint:
        """Parse ``"demographic_parity_difference <= 0.05"`` (a ``Constraint`` is returned as it is)."""
        if isinstance(text, Constraint):
            return text
        match = _CONSTRAINT_RE.match(str(text))
        if match is None:
            raise ValueError(ERR_CONSTRAINT_SYNTAX.format(text=text))
        try:
            bound = float(match.group(3))
        except ValueError:
            raise ValueError(ERR_CONSTRAINT_SYNTAX.format(text=text)) from None
        return cls(match.group(1), bound)

    def __str__(self) -> str:
        return f"{self.metric} <= {self.bound:g}"


def parse_constraints(items: Sequence[str | Constraint]) -> list[Constraint]:
    """Parse every item; two bounds on one gap are an error (which one would hold is ambiguous)."""
    constraints = [Constraint.parse(item) for item in items]
    metrics = [c.metric for c in constraints]
    for metric in metrics:
        if metrics.count(metric) > 1:
            raise ValueError(ERR_CONSTRAINT_TWICE.format(metric=metric))
    return constraints


def _hard_batch(batch: PenaltyBatch) -> PenaltyBatch:
    """The same batch with its probabilities replaced by one-hot decisions (argmax), without a graph."""
    hard = dataclasses.replace(batch, logits=batch.logits.detach())
    decisions = batch.logits.detach().argmax(-1)
    # ``probs`` is a cached property: setting its cache makes every statistic read the decisions instead.
    hard.__dict__["probs"] = F.one_hot(decisions, batch.logits.shape[-1]).float()
    return hard


class LagrangianConstraints:
    """Bounded gaps, enforced by one Lagrange multiplier per constraint (see the module docstring).

    Args:
        constraints: ``Constraint`` objects or their text (``"equalized_odds_difference <= 0.03"``).
        multiplier_lr: step size of the multipliers' projected gradient ascent, per optimizer step, on the
            violation ``hard_gap - bound`` (a violation of 0.1 held for 50 steps at 0.2 adds 1.0 to lambda).
        momentum: decay of the running per-group counts behind the hard gap estimate (0: this batch only).
        initial_multiplier: lambda at step 0 (0: the task loss alone until a violation is seen).
        proportional: gain of the proportional term (0: plain gradient ascent).
    """

    name = "constraints"
    needs_labels = True
    tasks: tuple[str, ...] = ("classification",)

    def __init__(
        self,
        constraints: Sequence[str | Constraint],
        multiplier_lr: float = 0.2,
        momentum: float = 0.9,
        initial_multiplier: float = 0.0,
        proportional: float = 2.0,
    ):
        self.constraints = parse_constraints(constraints)
        if not self.constraints:
            raise ValueError(ERR_NO_CONSTRAINTS)
        if not (math.isfinite(multiplier_lr) and multiplier_lr > 0):
            raise ValueError(ERR_MULTIPLIER_LR.format(lr=multiplier_lr))
        for name, value in (("initial_multiplier", initial_multiplier), ("proportional", proportional)):
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(ERR_GAIN.format(name=name, value=value))
        self.multiplier_lr = float(multiplier_lr)
        self.momentum = float(momentum)
        self.initial_multiplier = float(initial_multiplier)
        self.proportional = float(proportional)
        self._statistics = [STATISTICS[c.metric]() for c in self.constraints]
        self.multipliers = torch.full((len(self.constraints),), self.initial_multiplier)
        self.integral = self.multipliers.clone()
        # Running (2, G, K) hard numerator and denominator sums per constraint.
        self.running = [RunningSums("ema", momentum, name=f"constraint {c}") for c in self.constraints]
        self.last_step = -1
        self.last_estimates = torch.full((len(self.constraints),), float("nan"))

    @classmethod
    def from_args(cls, args: Any) -> LagrangianConstraints:
        """Build from ``FairTrainingArguments``: ``constraints``, ``constraint_learning_rate`` and the
        ``constraint_options`` mapping (``momentum``, ``initial_multiplier``, ``proportional``)."""
        options = dict(getattr(args, "constraint_options", None) or {})
        return cls(args.constraints, multiplier_lr=args.constraint_learning_rate, **options)

    def check_num_labels(self, num_labels: int) -> None:
        """Refuse binary-only gaps on a multi-class task."""
        for constraint in self.constraints:
            if num_labels != 2 and constraint.metric in BINARY_ONLY:
                raise ValueError(ERR_BINARY_ONLY.format(metric=constraint.metric, num_labels=num_labels))

    def setup(self) -> None:
        """Fresh multipliers and running counts (a trainer's run starts here; a resume then loads state)."""
        self.multipliers = torch.full((len(self.constraints),), self.initial_multiplier)
        self.integral = self.multipliers.clone()
        for running in self.running:
            running.reset()
        self.last_step = -1
        self.last_estimates = torch.full((len(self.constraints),), float("nan"))

    def keys(self) -> list[str]:
        """Log key prefix of each constraint: ``constraint/<metric>``."""
        return [f"constraint/{c.metric}" for c in self.constraints]

    def _sums(self, statistic: RatePenalty, batch: PenaltyBatch) -> tuple[Tensor, Tensor]:
        """(G, K) numerator and denominator sums of the global micro-batch."""
        num, den = group_sums(*statistic.statistic(batch), batch.membership)
        if batch.sync is not None:
            num, den = batch.sync.sum(torch.stack([num, den])).unbind(0)
        return num, den

    def loss(self, batch: PenaltyBatch, step: int) -> tuple[Tensor, dict[str, Tensor]]:
        """The Lagrangian term ``sum_j lambda_j * soft_gap_j`` of one training micro-batch, and its log terms.

        Updates the running hard counts with this batch and, at the first micro-batch of a new optimizer
        step, the multipliers from the running estimate (so gradient accumulation does not speed them up).
        """
        if step != self.last_step and self.last_step >= 0:
            violation = torch.nan_to_num(self.last_estimates, nan=0.0) - self._bounds()
            self.integral = (self.integral + self.multiplier_lr * violation).clamp_min(0.0)
            self.multipliers = (self.integral + self.proportional * violation).clamp_min(0.0)
        self.last_step = step
        hard = _hard_batch(batch)
        terms, logs = [], {}
        for j, (statistic, key) in enumerate(zip(self._statistics, self.keys(), strict=True)):
            soft_gap = spread(*rates_from_sums(*self._sums(statistic, batch)), "max_gap")
            with torch.no_grad():
                sums = torch.stack(self._sums(statistic, hard))
                num, den = self.running[j].combine(sums).unbind(0)
                self.running[j].update(sums)
                rates, present, _ = rates_from_sums(num, den)
                estimate = _hard_gap(rates, present)
            self.last_estimates[j] = estimate
            lam = float(self.multipliers[j])
            terms.append(lam * soft_gap)
            logs[f"{key}/multiplier"] = soft_gap.new_tensor(lam)
            logs[f"{key}/gap_estimate"] = estimate
            logs[f"{key}/soft_gap"] = soft_gap.detach()
        return torch.stack(terms).sum(), logs

    def _bounds(self) -> Tensor:
        return torch.tensor([c.bound for c in self.constraints])

    def to(self, device: torch.device | str) -> LagrangianConstraints:
        """Nothing to move: running counts follow the batches' device, multipliers stay on the CPU."""
        return self

    def state_dict(self) -> dict[str, Any]:
        """Multipliers, running counts and the step they were last updated at, as saved in checkpoints."""
        return {
            "multipliers": self.multipliers.clone(),
            "integral": self.integral.clone(),
            "running": [r.state_dict() for r in self.running],
            "last_step": self.last_step,
            "last_estimates": self.last_estimates.clone(),
            "constraints": [str(c) for c in self.constraints],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore ``state_dict()`` output; the constraints must be the same (a bound changed on resume is
        an error, not a silent mix of two runs)."""
        saved, ours = list(state.get("constraints", [])), [str(c) for c in self.constraints]
        if saved != ours:
            raise ValueError(ERR_RESUME_CONSTRAINTS.format(saved=saved, ours=ours))
        self.multipliers = state["multipliers"].clone().float()
        self.integral = state["integral"].clone().float()
        for running, saved_running in zip(self.running, state["running"], strict=True):
            running.load_state_dict(saved_running)
        self.last_step = int(state["last_step"])
        self.last_estimates = state["last_estimates"].clone()

    def __repr__(self) -> str:
        return (
            f"LagrangianConstraints([{', '.join(str(c) for c in self.constraints)}], "
            f"multiplier_lr={self.multiplier_lr}, momentum={self.momentum})"
        )


def _hard_gap(rates: Tensor, present: Tensor) -> Tensor:
    """max - min over the groups where a column is defined, largest over columns; 0 when undefined."""
    return spread(rates, present, rates.new_zeros(rates.shape[1]), "max_gap").detach()
