"""Per-group classification metrics and fairness gaps, accumulated as counts, and their typed result.

`GroupStats` streams evaluation batches into named count states (a per-group confusion tensor, calibration
bins, loss sums and, optionally, Poisson-bootstrap replicates of the confusion tensor), each declared with
`add_state` and reduced by summation. Counts add up across batches and across processes, so streaming,
one-shot and distributed evaluation give the same numbers; averaging per-batch ratios would not.

All rates and gaps are derived from the counts by `rates_from_confusion` and `gaps_from_rates`, which work
on any leading (replicate) dimensions, so the point estimates and the bootstrap intervals share one code path.
`GroupStats.compute` returns a `GroupResult`, the one object that the trainer's logs, the report, the plots,
the model card and the fairness gate read. The fairlearn-style functions over arrays are in
`fairtune.functional`.

Deliberate differences from fairlearn (0.15):

* A rate whose denominator is zero (e.g. the TPR of a group without positives, the precision of a group
  without predicted positives) is NaN and left out of the gaps; fairlearn, through scikit-learn, reports 0
  for it and takes it into the gap.
* A gap needs at least two groups on which its rate is defined, otherwise it is NaN.
* `equalized_odds_*` combine the TPR and FPR parts with NaN propagation; fairlearn takes Python's
  `min`/`max` (whose NaN handling depends on the argument order) or a pandas mean (which skips NaN).
* For C > 2 classes, `demographic_parity_difference` is the largest over classes c of the across-group
  spread of P(yhat = c) (fairlearn defines it for binary labels only); the penalty of the same name
  measures the same spread.

Small groups (issue 12): a gap over a group of 5 rows measures mostly noise. The *headline* gaps (``gaps``,
what logs, the gate, the report and checkpoint selection read) span only the groups with at least
``min_group_size`` rows (``gaps_over="eligible"``, the default); smaller groups are still reported with their
rates, listed in ``GroupResult.small_groups`` and flagged in tables and plots. ``gaps_over="all"`` takes
every group into the gaps. Eligibility is fixed by the point counts, so bootstrap replicates span the same
groups as the estimate.

Rows without a group (id `NO_GROUP`, -1, under ``missing_group: ignore``) are counted
(``rows_without_group``) and enter the overall stats, but no group's rates or any gap.

Intervals (``interval_method``): ``basic`` (default), ``percentile`` or ``bca``, all from the same Poisson
bootstrap replicates. A max - min gap is biased upwards (the largest of noisy rates is noisier than the
truth), and its replicates, max - min of re-noised rates, are biased upwards again: the percentile interval
sits too high and can miss the true gap and its own point estimate. The basic (pivotal) interval,
[2 * estimate - q_high, 2 * estimate - q_low], reflects the replicates' bias about the estimate, which
removes most of it; BCa (Efron 1987: the median bias z0 from the share of replicates below the estimate and
the acceleration from the jackknife, exact and cheap here because leaving one row out changes one confusion
cell) corrects too little for a max - min. ``benchmarks/interval_coverage.py`` measures the three on data
with known rates (``benchmarks/results/interval_coverage.md``): basic's coverage was nearest nominal.
No bootstrap interval is guaranteed to contain its point estimate (basic and percentile both miss it when
the estimate lies outside the replicates' central range): `compute` then warns
(`WARN_INTERVAL_EXCLUDES_ESTIMATE`).

Selecting checkpoints by a gap alone can pick a model that predicts one class for everyone: every gap is then
0, which is not fairness. `compute` warns about constant predictions (`WARN_CONSTANT_PREDICTIONS`); to guard
checkpoint selection, select by a metric that such a model fails, e.g. ``metric_for_best_model:
eval_<grouping>/worst_group_accuracy`` (higher is better) or the accuracy, and read the gaps beside it.

Length: about 650 lines, kept in one file on purpose: the streaming state, the rate and gap formulas and the
result type are one definition of the numbers, read together, and share their private helpers.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from statistics import NormalDist
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from fairtune.curves import (
    ERR_NOT_INTEGER,
    add_calibration,
    check_1d,
    ece_from_bins,
    unique_names,
)

__all__ = [
    "GAPS_OVER",
    "bootstrap_interval",
    "INTERVAL_METHODS",
    "NO_GROUP",
    "GroupResult",
    "GroupStats",
    "gap_names",
    "gaps_from_rates",
    "rates_from_confusion",
    "stat_names",
]

ERR_NUM_CLASSES = "num_classes must be >= 2, got {num_classes}"
ERR_ECE_BINS = "ece_bins must be >= 1, got {ece_bins}"
ERR_BOOTSTRAP_SAMPLES = "bootstrap_samples must be >= 0, got {bootstrap_samples}"
ERR_CONFIDENCE = "confidence must lie in (0, 1), got {confidence}"
ERR_LOGITS_XOR_PREDS = "pass exactly one of logits= and preds="
ERR_CONFIDENCE_WITH_LOGITS = "confidence= goes with preds=; with logits= it is the softmax of the logits"
ERR_LOGITS_SHAPE = "logits must have shape (N, {num_classes}) with N = {num_samples}, got {shape}"
ERR_CLASS_RANGE = "{name} must lie in [0, {num_classes}), got values in [{low}, {high}]"
ERR_UPDATE_AFTER_SYNC = "update() after sync(): call reset() before accumulating a new evaluation"
ERR_SYNC_NOT_SHARDED = (
    "sync() on {world_size} processes with sharded=False would count every sample {world_size} times: "
    "build GroupStats(..., sharded=True) when each process updates with its own shard, or do not sync "
    "when every process already holds all samples (e.g. after gather_for_metrics)"
)
ERR_GROUP_NAMED_OVERALL = "a group named 'overall' would collide with the overall stats in flat keys"
ERR_REDUCTION = "state {name!r}: reduction must be one of {choices}, got {reduction!r}"
ERR_CLASS_NAMES = "class_names has {got} entries, expected one per class ({num_classes})"
ERR_GAPS_OVER = "gaps_over must be one of {choices}, got {gaps_over!r}"
ERR_INTERVAL_METHOD = "interval_method must be one of {choices}, got {method!r}"
ERR_MIN_GROUP_SIZE = "min_group_size must be >= 0, got {min_group_size}"
ERR_GROUP_BELOW_NO_GROUP = "groups must be >= -1 (-1: a row without a group), got values from {low}"

NO_GROUP = -1  # group id of a row without a group (fairtune.groups.NO_GROUP): counted, in no group's rates
GAPS_OVER = ("eligible", "all")
INTERVAL_METHODS = ("basic", "percentile", "bca")  # the first is the default

WARN_SMALL_GROUP = "group {name!r} has {count} samples, fewer than min_group_size={min_group_size}"
WARN_SMALL_GROUP_EXCLUDED = WARN_SMALL_GROUP + "; left out of the headline gaps (gaps_over: all includes it)"
WARN_FEW_GROUPS = "{present} group(s) with samples: gaps need at least 2 and are NaN"
WARN_FEW_ELIGIBLE = (
    "only {eligible} group(s) have at least min_group_size={min_group_size} samples: the headline gaps need "
    "2 and are NaN (lower min_group_size or set gaps_over: all to include the small groups)"
)
WARN_ROWS_WITHOUT_GROUP = "{count} row(s) have no group (missing attribute): counted, left out of every gap"
WARN_INTERVAL_EXCLUDES_ESTIMATE = (
    "{gap}: the {method} bootstrap interval [{low:.4f}, {high:.4f}] does not contain its point estimate "
    "{value:.4f} (nearly every replicate lies on one side; read the interval with care)"
)
WARN_UNDEFINED_RATES = "group {name!r}: {stats} undefined (zero denominator), left out of the gaps"
WARN_CONSTANT_PREDICTIONS = (
    "constant predictions: all {count} samples are predicted as class {name!r}. A gap of 0 from constant "
    "predictions is not fairness; do not select checkpoints by a gap alone"
)

# Sums are the only reduction: every state is a count or a sum, so it adds across batches and processes;
# a ratio would not (fairret's split: numerators and denominators cross processes, ratios do not).
REDUCTIONS = {"sum": dist.ReduceOp.SUM}

# Stats that are not rates over the confusion tensor, hence not part of the "undefined rate" warning.
_NON_RATE_STATS = ("count", "ece", "loss")


@dataclass(frozen=True)
class StateSpec:
    """How a named state grows and reduces: ``group_dim`` indexes groups (None: no group dim);
    ``reduction`` across processes."""

    group_dim: int | None
    reduction: str = "sum"


@dataclass
class GroupResult:
    """Per-group rates, gaps, bootstrap intervals and warnings of one grouping.

    Keys of the stat dicts: ``count``, ``accuracy``, ``ece``, ``loss``; for C == 2 also ``base_rate``,
    ``selection_rate``, ``tpr``, ``fpr``, ``fnr``, ``precision``; for C > 2 the per-class ``tpr_<c>`` and
    ``selection_rate_<c>``, keyed by class index c (a safe key for loggers whatever the class names; tables
    show ``class_names[c]``, see `stat_label`). A NaN value is undefined (zero denominator).
    """

    grouping: str
    num_classes: int
    class_names: list[str]
    overall: dict[str, float]
    by_group: dict[str, dict[str, float]]
    gaps: dict[str, float]
    intervals: dict[str, tuple[float, float]] = field(default_factory=dict)
    confidence: float = 0.95
    warnings: list[str] = field(default_factory=list)
    # Groups below min_group_size (in by_group, flagged); left out of the gaps when gaps_over == "eligible".
    small_groups: list[str] = field(default_factory=list)
    min_group_size: int = 0
    gaps_over: str = "eligible"
    rows_without_group: int = 0
    interval_method: str = "basic"

    @property
    def gap_groups(self) -> list[str]:
        """The groups the gaps span: every reported group but the small ones (with gaps_over "eligible")."""
        left_out = set(self.excluded_groups)
        return [name for name in self.by_group if name not in left_out]

    @property
    def excluded_groups(self) -> list[str]:
        """Reported groups left out of the headline gaps (the small ones, unless gaps_over is "all")."""
        return list(self.small_groups) if self.gaps_over == "eligible" else []

    def flat(self, prefix: str) -> dict[str, float]:
        """``prefix/...`` keys for Trainer logs, NaN values dropped (loggers such as TensorBoard reject it).

        Keys: prefix/<gap>, prefix/<gap>_ci_low, prefix/<gap>_ci_high, prefix/overall/<stat>,
        prefix/<group>/<stat>, prefix/rows_without_group.
        """
        if "overall" in self.by_group:
            raise ValueError(ERR_GROUP_NAMED_OVERALL)
        flat = {f"{prefix}/{gap}": value for gap, value in self.gaps.items()}
        flat[f"{prefix}/rows_without_group"] = self.rows_without_group
        for gap, (low, high) in self.intervals.items():
            flat[f"{prefix}/{gap}_ci_low"] = low
            flat[f"{prefix}/{gap}_ci_high"] = high
        for section, stats in {"overall": self.overall, **self.by_group}.items():
            for stat, value in stats.items():
                flat[f"{prefix}/{section}/{stat}"] = value
        return {key: float(value) for key, value in flat.items() if not math.isnan(value)}

    def to_dict(self) -> dict[str, Any]:
        """The JSON layout of ``fairness_report.json``: num_classes, overall, by_group, gaps, intervals (only
        with bootstrap replicates) as [low, high], warnings, confidence, small_groups, excluded_groups (left
        out of the gaps), min_group_size, gaps_over, rows_without_group, interval_method. Grouping and class
        names are not in it: the report keys results by grouping, and the model's config holds the class
        names."""
        out: dict[str, Any] = {
            "num_classes": self.num_classes,
            "overall": dict(self.overall),
            "by_group": {name: dict(stats) for name, stats in self.by_group.items()},
            "gaps": dict(self.gaps),
        }
        if self.intervals:
            out["intervals"] = {gap: [low, high] for gap, (low, high) in self.intervals.items()}
        out["warnings"] = list(self.warnings)
        out["confidence"] = self.confidence
        out["small_groups"] = list(self.small_groups)
        out["excluded_groups"] = self.excluded_groups
        out["min_group_size"] = self.min_group_size
        out["gaps_over"] = self.gaps_over
        out["rows_without_group"] = self.rows_without_group
        out["interval_method"] = self.interval_method
        return out

    @classmethod
    def from_dict(
        cls, data: dict[str, Any], grouping: str = "", class_names: Sequence[str] | None = None
    ) -> GroupResult:
        """Inverse of `to_dict`; null values (strict JSON writers) become NaN."""
        num_classes = int(data["num_classes"])
        return cls(
            grouping=grouping,
            num_classes=num_classes,
            class_names=_class_names(class_names, num_classes),
            overall=_floats(data["overall"]),
            by_group={name: _floats(stats) for name, stats in data["by_group"].items()},
            gaps=_floats(data["gaps"]),
            intervals={gap: (_float(lo), _float(hi)) for gap, (lo, hi) in data.get("intervals", {}).items()},
            confidence=float(data.get("confidence", 0.95)),
            warnings=list(data.get("warnings", [])),
            small_groups=list(data.get("small_groups", [])),
            min_group_size=int(data.get("min_group_size", 0)),
            gaps_over=str(data.get("gaps_over", "eligible")),
            rows_without_group=int(data.get("rows_without_group", 0)),
            # Reports written before the choice existed used the percentile interval.
            interval_method=str(data.get("interval_method", "percentile")),
        )

    def stat_label(self, stat: str) -> str:
        """Display name of a stat key: ``tpr_2`` -> ``tpr[<class_names[2]>]``; other keys unchanged."""
        head, _, index = stat.rpartition("_")
        if head in ("tpr", "selection_rate") and index.isdigit() and int(index) < len(self.class_names):
            return f"{head}[{self.class_names[int(index)]}]"
        return stat


class GroupStats:
    """Streaming per-group classification counts, reducible across processes.

    Named states (declared with `add_state`; G grows when a batch brings a larger group id; R =
    `bootstrap_samples`, B = `ece_bins`), read as attributes (``stats.conf``) or all at once (``states``):

    * ``conf`` (G, C, C) int64: confusion counts indexed [group, true, pred].
    * ``boot_conf`` (R, G, C, C) int64: Poisson-bootstrap weighted confusion counts.
    * ``calib`` (G, B, 3) float64: per confidence bin, [count, sum of confidence, sum of correct].
    * ``loss_sums`` (G, 2) float64: [sum of per-sample loss, number of samples with a loss].
    * ``no_group_conf`` (C, C), ``no_group_calib`` (B, 3), ``no_group_loss`` (2,): the same counts for rows
      without a group (id -1), which enter only the overall stats and ``rows_without_group``.

    Where the samples are decides the bootstrap seeding (``sharded``):

    * ``sharded=False`` (default): this object sees every sample, in one process or on every process alike
      (the trainer gathers each batch with ``gather_for_metrics``). The generator is seeded with ``seed``
      alone, so every process draws the same weights and reports identical intervals. `sync` is refused on
      several processes: it would count each sample once per process.
    * ``sharded=True``: each process updates with its own shard and `sync` sums the shards. The generator
      is seeded with ``seed + rank``, so the shards' weights are independent (one seed everywhere would give
      sample i of every rank the same weights and understate the variance).

    Typical use: `reset()`, `update()` per batch, `sync()` once when sharded, `compute()`.
    """

    def __init__(
        self,
        num_classes: int,
        num_groups: int = 0,
        *,
        ece_bins: int = 10,
        bootstrap_samples: int = 0,
        seed: int = 0,
        sharded: bool = False,
        device: torch.device | str | None = None,
    ) -> None:
        if num_classes < 2:
            raise ValueError(ERR_NUM_CLASSES.format(num_classes=num_classes))
        if ece_bins < 1:
            raise ValueError(ERR_ECE_BINS.format(ece_bins=ece_bins))
        if bootstrap_samples < 0:
            raise ValueError(ERR_BOOTSTRAP_SAMPLES.format(bootstrap_samples=bootstrap_samples))
        self.num_classes = num_classes
        self.ece_bins = ece_bins
        self.bootstrap_samples = bootstrap_samples
        self.seed = seed
        self.sharded = sharded
        # Without an explicit device the state follows the inputs of the first update (e.g. CUDA logits).
        self._device_fixed = device is not None
        self._states: dict[str, Tensor] = {}
        self._specs: dict[str, StateSpec] = {}
        device = torch.device(device if device is not None else "cpu")
        c, r, b, g = num_classes, bootstrap_samples, ece_bins, num_groups
        self.add_state("conf", torch.zeros(g, c, c, dtype=torch.long, device=device), group_dim=0)
        self.add_state("boot_conf", torch.zeros(r, g, c, c, dtype=torch.long, device=device), group_dim=1)
        self.add_state("calib", torch.zeros(g, b, 3, dtype=torch.float64, device=device), group_dim=0)
        self.add_state("loss_sums", torch.zeros(g, 2, dtype=torch.float64, device=device), group_dim=0)
        self.add_state("no_group_conf", torch.zeros(c, c, dtype=torch.long, device=device), group_dim=None)
        self.add_state(
            "no_group_calib", torch.zeros(b, 3, dtype=torch.float64, device=device), group_dim=None
        )
        self.add_state("no_group_loss", torch.zeros(2, dtype=torch.float64, device=device), group_dim=None)
        self._generator: torch.Generator | None = None
        self._synced = False

    def add_state(self, name: str, default: Tensor, *, group_dim: int | None, reduction: str = "sum") -> None:
        """Declare a count state: ``default`` its initial tensor, ``group_dim`` the dimension indexing groups
        (zero-padded when a larger group id arrives; None for a state without one), ``reduction`` how `sync`
        combines processes."""
        if reduction not in REDUCTIONS:
            choices = ", ".join(repr(k) for k in REDUCTIONS)
            raise ValueError(ERR_REDUCTION.format(name=name, choices=choices, reduction=reduction))
        self._states[name] = default
        self._specs[name] = StateSpec(group_dim, reduction)

    def __getattr__(self, name: str) -> Tensor:
        states = self.__dict__.get("_states", {})
        if name in states:
            return states[name]
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    @property
    def states(self) -> dict[str, Tensor]:
        """The named states (name -> tensor), in declaration order."""
        return dict(self._states)

    @property
    def num_groups(self) -> int:
        return self._states["conf"].shape[0]

    @property
    def device(self) -> torch.device:
        return self._states["conf"].device

    def _to(self, device: torch.device) -> None:
        self._states = {name: t.to(device) for name, t in self._states.items()}

    def _grow(self, num_groups: int) -> None:
        """Zero-pad the group dimension of every state up to `num_groups`."""
        extra = num_groups - self.num_groups
        if extra > 0:
            self._states = {
                name: t
                if self._specs[name].group_dim is None
                else _pad(t, self._specs[name].group_dim, extra)
                for name, t in self._states.items()
            }

    def reset(self) -> None:
        """Zero all counts, keeping the number of groups seen so far."""
        for t in self._states.values():
            t.zero_()
        # Re-seeding makes every evaluation's intervals a function of its own data only.
        self._generator = None
        self._synced = False

    def update(
        self,
        labels: Tensor,
        groups: Tensor,
        *,
        logits: Tensor | None = None,
        preds: Tensor | None = None,
        confidence: Tensor | None = None,
        losses: Tensor | None = None,
    ) -> None:
        """Accumulate one batch.

        labels (N,) int in [0, C); groups (N,) int >= -1 (-1: a row without a group); exactly one of logits
        (N, C) float (preds are the argmax, the softmax confidence feeds the ECE) or preds (N,) int,
        optionally with confidence (N,) in [0, 1], the probability given to the predicted class; losses
        (N,) optional per-sample loss.
        """
        if (logits is None) == (preds is None):
            raise ValueError(ERR_LOGITS_XOR_PREDS)
        labels = _check_ids("labels", labels)
        num_samples = labels.shape[0]
        groups = _check_ids("groups", groups, num_samples)
        if logits is not None:
            if confidence is not None:
                raise ValueError(ERR_CONFIDENCE_WITH_LOGITS)
            if logits.dim() != 2 or logits.shape != (num_samples, self.num_classes):
                raise ValueError(
                    ERR_LOGITS_SHAPE.format(
                        num_classes=self.num_classes, num_samples=num_samples, shape=tuple(logits.shape)
                    )
                )
            # float32 at least: half-precision softmax loses the confidence resolution the ECE bins need.
            confidence, preds = logits.detach().float().softmax(-1).max(-1)
        else:
            preds = _check_ids("preds", preds, num_samples)
            if confidence is not None:
                check_1d("confidence", confidence, num_samples)
                confidence = confidence.detach()
        if losses is not None:
            check_1d("losses", losses, num_samples)
            losses = losses.detach()
        self._update(labels, groups, preds, confidence, losses)

    def _update(
        self, labels: Tensor, groups: Tensor, preds: Tensor, confidence: Tensor | None, losses: Tensor | None
    ) -> None:
        """Range-check and accumulate validated (N,) tensors; confidence is that of the predicted class."""
        if self._synced:
            raise RuntimeError(ERR_UPDATE_AFTER_SYNC)
        if labels.numel() == 0:  # an empty shard is legal and must not reach min()/max()
            return
        if not self._device_fixed:
            self._to(labels.device)
            self._device_fixed = True
        device = self.device
        labels, groups, preds = labels.to(device), groups.to(device), preds.to(device)
        # One device-to-host transfer for all bounds instead of six.
        bounds = torch.stack(
            [labels.min(), labels.max(), preds.min(), preds.max(), groups.min(), groups.max()]
        )
        label_low, label_high, pred_low, pred_high, group_low, group_high = bounds.tolist()
        for name, low, high in (("labels", label_low, label_high), ("preds", pred_low, pred_high)):
            if low < 0 or high >= self.num_classes:
                raise ValueError(
                    ERR_CLASS_RANGE.format(name=name, num_classes=self.num_classes, low=low, high=high)
                )
        if group_low < NO_GROUP:
            raise ValueError(ERR_GROUP_BELOW_NO_GROUP.format(low=group_low))

        self._grow(group_high + 1)
        num_groups, c = self.num_groups, self.num_classes
        grouped = None
        if group_low == NO_GROUP:
            # Rows without a group: counted for the overall stats only, then dropped from the group states.
            grouped = groups != NO_GROUP
            alone = ~grouped
            pair = labels[alone] * c + preds[alone]
            self.no_group_conf.view(-1).index_add_(0, pair, torch.ones_like(pair))
            if confidence is not None:
                confidence = confidence.to(device)
                add_calibration(self.no_group_calib[None], confidence[alone], (preds == labels)[alone])
            if losses is not None:
                lost = losses.to(device=device, dtype=torch.float64)[alone]
                self.no_group_loss.add_(torch.stack([lost.sum(), lost.new_tensor(float(lost.numel()))]))
            labels, groups, preds = labels[grouped], groups[grouped], preds[grouped]
            confidence = None if confidence is None else confidence[grouped]
            losses = None if losses is None else losses.to(device)[grouped]

        # Flat index into conf: one scatter-add for the whole batch.
        cell = (groups * c + labels) * c + preds
        self.conf.view(-1).index_add_(0, cell, torch.ones_like(cell))

        if self.bootstrap_samples:
            # Poisson bootstrap (Hanley & MacGibbon 2006; Chamandy et al. 2012, "Estimating uncertainty for
            # massive data streams"): every sample gets an independent Poisson(1) weight per replicate, which
            # approximates multinomial resampling without knowing N in advance and without keeping samples.
            # Drawn sample-major on CPU, so a sample's weights do not depend on how the data is batched.
            # Rows without a group draw their weights too, so the others' weights do not depend on them.
            drawn = labels.shape[0] if grouped is None else grouped.shape[0]
            weights = torch.poisson(
                torch.ones(drawn, self.bootstrap_samples), generator=self._bootstrap_generator()
            )
            if grouped is not None:
                weights = weights[grouped.cpu()]
            weights = weights.to(device=device, dtype=torch.long).T  # (R, N)
            offsets = torch.arange(self.bootstrap_samples, device=device) * (num_groups * c * c)
            self.boot_conf.view(-1).index_add_(0, (offsets[:, None] + cell).reshape(-1), weights.reshape(-1))

        if confidence is not None:
            add_calibration(self.calib, confidence.to(device), (preds == labels), groups)

        if losses is not None:
            losses = losses.to(device=device, dtype=torch.float64)
            self.loss_sums.index_add_(0, groups, torch.stack([losses, torch.ones_like(losses)], 1))

    def _bootstrap_generator(self) -> torch.Generator:
        if self._generator is None:
            # Only shards get a per-rank seed (see the class docstring): with gathered data every rank must
            # draw the same weights, or each rank would report its own intervals.
            offset = _rank() if self.sharded else 0
            self._generator = torch.Generator(device="cpu").manual_seed(self.seed + offset)
        return self._generator

    def sync(self) -> None:
        """Reduce every state over all processes of the default group (no-op when not distributed).

        Only for ``sharded=True``. Call once per evaluation on every rank, after the last update; later
        updates need a `reset()`.
        """
        world_size = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
        if world_size > 1 and not self.sharded:
            raise RuntimeError(ERR_SYNC_NOT_SHARDED.format(world_size=world_size))
        if not self._synced and world_size > 1:
            if dist.get_backend() == "nccl" and self.device.type != "cuda":
                # NCCL reduces CUDA tensors only; a rank that saw no batch still holds its state on the CPU.
                self._to(torch.device("cuda", torch.cuda.current_device()))
            # Ranks may have seen different group ids: agree on G before reducing same-shaped tensors.
            size = torch.tensor([self.num_groups], device=self.device)
            dist.all_reduce(size, op=dist.ReduceOp.MAX)
            self._grow(int(size.item()))
            for name, t in self._states.items():
                if t.numel():  # same shapes on every rank now, so every rank skips the same tensors
                    dist.all_reduce(t, op=REDUCTIONS[self._specs[name].reduction])
        # A second sync would add the global counts again; mark the state as final instead.
        self._synced = True

    def compute(
        self,
        group_names: Sequence[str] | None = None,
        class_names: Sequence[str] | None = None,
        *,
        min_group_size: int = 30,
        confidence: float = 0.95,
        grouping: str = "",
        gaps_over: str = "eligible",
        interval_method: str = "basic",
    ) -> GroupResult:
        """Rates per group and overall, fairness gaps, bootstrap intervals and warnings.

        group_names[i] names group id i; other ids are named str(id). Groups without samples are left out.
        class_names[c] names class c in tables and warnings (default str(c)). Groups with fewer than
        ``min_group_size`` samples are reported, listed in ``small_groups`` and, with ``gaps_over="eligible"``
        (default), left out of the gaps; ``gaps_over="all"`` spans every group. ``intervals`` is filled only
        with bootstrap_samples > 0, by ``interval_method`` (``basic``, ``percentile`` or ``bca``; see the
        module docstring). Call `sync()` first when sharded over several processes.
        """
        if not 0.0 < confidence < 1.0:
            raise ValueError(ERR_CONFIDENCE.format(confidence=confidence))
        if min_group_size < 0:
            raise ValueError(ERR_MIN_GROUP_SIZE.format(min_group_size=min_group_size))
        if gaps_over not in GAPS_OVER:
            raise ValueError(ERR_GAPS_OVER.format(choices=", ".join(GAPS_OVER), gaps_over=gaps_over))
        if interval_method not in INTERVAL_METHODS:
            choices = ", ".join(INTERVAL_METHODS)
            raise ValueError(ERR_INTERVAL_METHOD.format(choices=choices, method=interval_method))
        classes = _class_names(class_names, self.num_classes)
        counts = self.conf.sum((-2, -1)).tolist()
        present = [g for g, count in enumerate(counts) if count > 0]
        names = _name_groups(group_names, present)
        small = [g for g in present if counts[g] < min_group_size]
        # Which groups the gaps span, fixed by the point counts (the replicates span the same ones).
        in_gaps = torch.tensor(
            [gaps_over == "all" or count >= min_group_size for count in counts],
            dtype=torch.bool,
            device=self.device,
        )

        group_rates = rates_from_confusion(self.conf)
        group_stats = _stats(group_rates, ece_from_bins(self.calib), _mean_loss(self.loss_sums))
        overall_stats = _stats(
            rates_from_confusion((self.conf.sum(0) + self.no_group_conf)[None]),
            ece_from_bins(self.calib.sum(0, keepdim=True) + self.no_group_calib[None]),
            _mean_loss(self.loss_sums.sum(0, keepdim=True) + self.no_group_loss[None]),
        )
        gaps = gaps_from_rates(_only(group_rates, in_gaps), self.num_classes)
        rows_without_group = int(self.no_group_conf.sum())

        warnings = []
        if len(present) < 2:
            warnings.append(WARN_FEW_GROUPS.format(present=len(present)))
        elif gaps_over == "eligible" and len(present) - len(small) < 2:
            warnings.append(
                WARN_FEW_ELIGIBLE.format(eligible=len(present) - len(small), min_group_size=min_group_size)
            )
        if rows_without_group:
            warnings.append(WARN_ROWS_WITHOUT_GROUP.format(count=rows_without_group))
        small_warning = WARN_SMALL_GROUP_EXCLUDED if gaps_over == "eligible" else WARN_SMALL_GROUP
        for g in present:
            if counts[g] < min_group_size:
                warnings.append(
                    small_warning.format(name=names[g], count=counts[g], min_group_size=min_group_size)
                )
            undefined = [k for k, v in group_stats.items() if k not in _NON_RATE_STATS and math.isnan(v[g])]
            if undefined:
                warnings.append(WARN_UNDEFINED_RATES.format(name=names[g], stats=", ".join(undefined)))
        predicted = (self.conf.sum((0, 1)) + self.no_group_conf.sum(0)).tolist()  # (C,) per predicted class
        total = sum(predicted)
        if total > 1 and max(predicted) == total:
            name = classes[predicted.index(total)]
            warnings.append(WARN_CONSTANT_PREDICTIONS.format(count=total, name=name))

        intervals: dict[str, tuple[float, float]] = {}
        if self.bootstrap_samples:
            replicate_gaps = gaps_from_rates(
                _only(rates_from_confusion(self.boot_conf), in_gaps), self.num_classes
            )
            jackknife = (
                _jackknife_gaps(self.conf, in_gaps, self.num_classes) if interval_method == "bca" else {}
            )
            for gap, values in replicate_gaps.items():
                point = gaps[gap].item()
                low, high = bootstrap_interval(values, point, confidence, interval_method, jackknife.get(gap))
                intervals[gap] = (low, high)
                # A NaN bound (no defined replicate) is no claim; a finite interval off its estimate is.
                if not math.isnan(point) and not low <= point <= high and not math.isnan(low + high):
                    warnings.append(
                        WARN_INTERVAL_EXCLUDES_ESTIMATE.format(
                            gap=gap, method=interval_method, low=low, high=high, value=point
                        )
                    )
        return GroupResult(
            grouping=grouping,
            num_classes=self.num_classes,
            class_names=classes,
            overall={stat: _scalar(stat, values[0]) for stat, values in overall_stats.items()},
            by_group={
                names[g]: {stat: _scalar(stat, values[g]) for stat, values in group_stats.items()}
                for g in present
            },
            gaps={gap: value.item() for gap, value in gaps.items()},
            intervals=intervals,
            confidence=confidence,
            warnings=warnings,
            small_groups=[names[g] for g in small],
            min_group_size=min_group_size,
            gaps_over=gaps_over,
            rows_without_group=rows_without_group,
            interval_method=interval_method,
        )


def bootstrap_interval(
    values: Tensor,
    point: float,
    confidence: float,
    method: str = "basic",
    jackknife: tuple[Tensor, Tensor] | None = None,
) -> tuple[float, float]:
    """A two-sided bootstrap interval of one statistic from its replicates.

    values (R,) replicate values (NaN ones, where the statistic was undefined, are skipped); point the
    estimate on the data. ``percentile``: the alpha/2 and 1 - alpha/2 quantiles. ``basic`` (pivotal):
    2 * point minus those quantiles, clipped to [0, 1] (every gap and rate lies there). ``bca``: the
    percentile interval at levels shifted by the median bias z0 = Phi^-1(share of replicates below the
    point, ties counted half) and the acceleration a from ``jackknife`` = (values (K,), weights (K,)) of
    leave-one-out estimates (a = 0 without it, i.e. the bias-corrected BC interval). NaN bounds when no
    replicate (or the point) is defined.
    """
    values = values[~values.isnan()].double()
    if values.numel() == 0 or (method != "percentile" and math.isnan(point)):
        return math.nan, math.nan
    alpha = (1.0 - confidence) / 2
    levels = [alpha, 1.0 - alpha]
    if method == "bca":
        normal = NormalDist()
        r = values.numel()
        below = float((values < point).sum()) + 0.5 * float((values == point).sum())
        # Clipped away from 0 and 1, where z0 would be infinite (every replicate on one side).
        z0 = normal.inv_cdf(min(max(below / r, 0.5 / r), 1.0 - 0.5 / r))
        a = _acceleration(*jackknife) if jackknife is not None else 0.0
        levels = []
        for z in (normal.inv_cdf(alpha), normal.inv_cdf(1.0 - alpha)):
            shifted = z0 + z
            levels.append(normal.cdf(z0 + shifted / max(1.0 - a * shifted, 1e-12)))
    low, high = torch.quantile(
        values, torch.tensor(levels, dtype=torch.float64, device=values.device)
    ).tolist()
    if method == "basic":
        low, high = min(max(2 * point - high, 0.0), 1.0), min(max(2 * point - low, 0.0), 1.0)
    return low, high


def rates_from_confusion(conf: Tensor) -> dict[str, Tensor]:
    """Per-group rates from confusion counts.

    conf (..., G, C, C) indexed [..., group, true, pred]; leading dims are e.g. bootstrap replicates.
    Returns {stat: (..., G) float64}: count and accuracy; for C == 2 (positive class 1) also base_rate,
    selection_rate, tpr, fpr, fnr, precision; for C > 2 the per-class recall tpr_<c> and selection rate
    selection_rate_<c>. A rate with a zero denominator is NaN.
    """
    conf = conf.double()
    num_classes = conf.shape[-1]
    count = conf.sum((-2, -1))
    true_counts = conf.sum(-1)  # (..., G, C) samples per true class
    pred_counts = conf.sum(-2)  # (..., G, C) samples per predicted class
    hits = conf.diagonal(dim1=-2, dim2=-1)  # (..., G, C)
    rates = {"count": count}
    if num_classes == 2:
        rates["base_rate"] = _ratio(true_counts[..., 1], count)
        rates["selection_rate"] = _ratio(pred_counts[..., 1], count)
        rates["accuracy"] = _ratio(hits.sum(-1), count)
        rates["tpr"] = _ratio(hits[..., 1], true_counts[..., 1])
        rates["fpr"] = _ratio(conf[..., 0, 1], true_counts[..., 0])
        rates["fnr"] = _ratio(conf[..., 1, 0], true_counts[..., 1])
        rates["precision"] = _ratio(hits[..., 1], pred_counts[..., 1])
    else:
        rates["accuracy"] = _ratio(hits.sum(-1), count)
        recall = _ratio(hits, true_counts)
        for c in range(num_classes):
            rates[f"tpr_{c}"] = recall[..., c]
        selection = _ratio(pred_counts, count[..., None])
        for c in range(num_classes):
            rates[f"selection_rate_{c}"] = selection[..., c]
    return rates


def gaps_from_rates(rates: dict[str, Tensor], num_classes: int) -> dict[str, Tensor]:
    """Fairness gaps across groups from `rates_from_confusion` output.

    rates {stat: (..., G)} -> {gap: (...)}. Groups where a rate is NaN (no samples, zero denominator) are
    left out of that rate's gap; a gap over fewer than two groups is NaN. Ratios are min / max, NaN when
    max == 0 (as in fairlearn). Binary-only gaps (ratios, equalized odds, equal opportunity) are absent for
    C > 2, where demographic_parity_difference is the largest per-class selection-rate spread.
    """
    gaps = {}
    if num_classes == 2:
        sel_low, sel_high = _spread(rates["selection_rate"])
        tpr_low, tpr_high = _spread(rates["tpr"])
        fpr_low, fpr_high = _spread(rates["fpr"])
        tpr_diff, fpr_diff = tpr_high - tpr_low, fpr_high - fpr_low
        tpr_ratio, fpr_ratio = _min_over_max(tpr_low, tpr_high), _min_over_max(fpr_low, fpr_high)
        gaps["demographic_parity_difference"] = sel_high - sel_low
        gaps["demographic_parity_ratio"] = _min_over_max(sel_low, sel_high)
        gaps["equalized_odds_difference"] = torch.maximum(tpr_diff, fpr_diff)
        gaps["equalized_odds_difference_mean"] = (tpr_diff + fpr_diff) / 2
        gaps["equalized_odds_ratio"] = torch.minimum(tpr_ratio, fpr_ratio)
        gaps["equalized_odds_ratio_mean"] = (tpr_ratio + fpr_ratio) / 2
        gaps["equal_opportunity_difference"] = tpr_diff
        # Recall of class 0 is 1 - FPR, whose spread across groups equals the FPR spread.
        class_gaps = [fpr_diff, tpr_diff]
    else:
        selection_gaps = [_width(rates[f"selection_rate_{c}"]) for c in range(num_classes)]
        gaps["demographic_parity_difference"] = _nanmax(torch.stack(selection_gaps, -1))
        class_gaps = [_width(rates[f"tpr_{c}"]) for c in range(num_classes)]
    acc_low, acc_high = _spread(rates["accuracy"])
    gaps["accuracy_difference"] = acc_high - acc_low
    gaps["worst_group_accuracy"] = acc_low
    # TPR-GAP RMS (Ravfogel et al. 2020; fairlib's GAP): root mean square over classes of the per-class
    # recall spread. A class without a defined spread (held by fewer than two groups) is left out.
    gaps["tpr_gap_rms"] = torch.stack(class_gaps, -1).pow(2).nanmean(-1).sqrt()
    return gaps


def stat_names(num_classes: int) -> list[str]:
    """The per-group and overall stat keys of a `GroupResult` for ``num_classes`` classes, in order."""
    return [*rates_from_confusion(torch.zeros(1, num_classes, num_classes)), "ece", "loss"]


def gap_names(num_classes: int) -> list[str]:
    """The gap keys of a `GroupResult` for ``num_classes`` classes, in order (known before evaluating)."""
    return list(gaps_from_rates(rates_from_confusion(torch.zeros(1, num_classes, num_classes)), num_classes))


# helpers -----------------------------------------------------------------------------------------------


def _only(rates: dict[str, Tensor], keep: Tensor) -> dict[str, Tensor]:
    """Rates (..., G) with the groups outside ``keep`` (G,) bool set to NaN, so the gaps skip them."""
    if bool(keep.all()):
        return rates
    return {stat: torch.where(keep, values, torch.nan) for stat, values in rates.items()}


def _jackknife_gaps(conf: Tensor, keep: Tensor, num_classes: int) -> dict[str, tuple[Tensor, Tensor]]:
    """Leave-one-out gaps of the point counts, for BCa's acceleration: {gap: (values (K,), weights (K,))}.

    Leaving one row out removes 1 from one confusion cell, so the N leave-one-out estimates take only K <=
    G * C * C distinct values, each weighted by its cell's count: exact and cheap, without the rows.
    """
    cells = conf.reshape(-1).nonzero().squeeze(1)
    weights = conf.reshape(-1)[cells].double()
    minus = conf.reshape(1, -1).repeat(cells.numel(), 1)
    minus[torch.arange(cells.numel(), device=conf.device), cells] -= 1
    gaps = gaps_from_rates(_only(rates_from_confusion(minus.view(-1, *conf.shape)), keep), num_classes)
    return {gap: (values, weights) for gap, values in gaps.items()}


def _acceleration(values: Tensor, weights: Tensor) -> float:
    """BCa's acceleration from weighted jackknife values: sum w u^3 / (6 (sum w u^2)^1.5), u = mean - value;
    0 when undefined (no spread, or an undefined leave-one-out value)."""
    defined = ~values.isnan()
    values, weights = values[defined].double(), weights[defined]
    if values.numel() == 0:
        return 0.0
    u = (weights * values).sum() / weights.sum() - values
    spread = float((weights * u**2).sum())
    if spread <= 0.0:
        return 0.0
    return float((weights * u**3).sum()) / (6.0 * spread**1.5)


def _rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def _pad(t: Tensor, dim: int, extra: int) -> Tensor:
    shape = list(t.shape)
    shape[dim] = extra
    return torch.cat([t, t.new_zeros(shape)], dim)


def _check_ids(name: str, t: Tensor, num_samples: int | None = None) -> Tensor:
    """Validate an (N,) integer tensor of ids and return it as int64 (floats are refused by dtype)."""
    check_1d(name, t, num_samples)
    if t.dtype.is_floating_point or t.dtype.is_complex:
        raise ValueError(ERR_NOT_INTEGER.format(name=name, dtype=t.dtype))
    return t.detach().long()


def _ratio(num: Tensor, den: Tensor) -> Tensor:
    return torch.where(den > 0, num / den, torch.nan)


def _spread(values: Tensor) -> tuple[Tensor, Tensor]:
    """(min, max) over the last (group) dim ignoring NaN; both NaN where fewer than two values are defined."""
    if values.shape[-1] == 0:
        empty = values.new_full(values.shape[:-1], torch.nan)
        return empty, empty
    defined = ~values.isnan()
    low = torch.where(defined, values, torch.inf).amin(-1)
    high = torch.where(defined, values, -torch.inf).amax(-1)
    enough = defined.sum(-1) >= 2
    return torch.where(enough, low, torch.nan), torch.where(enough, high, torch.nan)


def _width(values: Tensor) -> Tensor:
    low, high = _spread(values)
    return high - low


def _nanmax(values: Tensor) -> Tensor:
    """Max over the last dim ignoring NaN; NaN where every entry is NaN."""
    defined = ~values.isnan()
    high = torch.where(defined, values, -torch.inf).amax(-1)
    return torch.where(defined.any(-1), high, torch.nan)


def _min_over_max(low: Tensor, high: Tensor) -> Tensor:
    # fairlearn returns NaN (0 / 0) when the largest rate is 0; match it explicitly.
    return torch.where(high > 0, low / high, torch.nan)


def _mean_loss(loss_sums: Tensor) -> Tensor:
    return _ratio(loss_sums[..., 0], loss_sums[..., 1])


def _stats(rates: dict[str, Tensor], ece: Tensor, loss: Tensor) -> dict[str, list[float]]:
    """Per-group stat lists (G,) in reporting order: rates, then ece and loss."""
    return {stat: values.tolist() for stat, values in {**rates, "ece": ece, "loss": loss}.items()}


def _scalar(stat: str, value: float) -> int | float:
    return int(value) if stat == "count" else float(value)


def _float(value: Any) -> float:
    return math.nan if value is None else float(value)


def _floats(stats: dict[str, Any]) -> dict[str, float]:
    return {k: (int(v) if k == "count" and v is not None else _float(v)) for k, v in stats.items()}


def _class_names(class_names: Sequence[str] | None, num_classes: int) -> list[str]:
    if class_names is None:
        return [str(c) for c in range(num_classes)]
    if len(class_names) != num_classes:
        raise ValueError(ERR_CLASS_NAMES.format(got=len(class_names), num_classes=num_classes))
    return [str(n) for n in class_names]


def _name_groups(group_names: Sequence[str] | None, present: list[int]) -> dict[int, str]:
    """Name of each present group id: group_names[id], or str(id) beyond the names given."""
    names = list(group_names) if group_names is not None else []
    chosen = [names[g] if g < len(names) else g for g in present]
    return dict(zip(present, unique_names(chosen, present), strict=True))
