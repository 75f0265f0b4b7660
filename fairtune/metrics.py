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
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from fairtune.curves import (
    ERR_NEGATIVE_GROUP,
    ERR_NOT_INTEGER,
    add_calibration,
    check_1d,
    ece_from_bins,
    unique_names,
)

__all__ = [
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

WARN_SMALL_GROUP = "group {name!r} has {count} samples, fewer than min_group_size={min_group_size}"
WARN_FEW_GROUPS = "{present} group(s) with samples: gaps need at least 2 and are NaN"
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
    """How a named state grows and reduces: ``group_dim`` indexes groups; ``reduction`` across processes."""

    group_dim: int
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

    def flat(self, prefix: str) -> dict[str, float]:
        """``prefix/...`` keys for Trainer logs, NaN values dropped (loggers such as TensorBoard reject it).

        Keys: prefix/<gap>, prefix/<gap>_ci_low, prefix/<gap>_ci_high, prefix/overall/<stat>,
        prefix/<group>/<stat>.
        """
        if "overall" in self.by_group:
            raise ValueError(ERR_GROUP_NAMED_OVERALL)
        flat = {f"{prefix}/{gap}": value for gap, value in self.gaps.items()}
        for gap, (low, high) in self.intervals.items():
            flat[f"{prefix}/{gap}_ci_low"] = low
            flat[f"{prefix}/{gap}_ci_high"] = high
        for section, stats in {"overall": self.overall, **self.by_group}.items():
            for stat, value in stats.items():
                flat[f"{prefix}/{section}/{stat}"] = value
        return {key: float(value) for key, value in flat.items() if not math.isnan(value)}

    def to_dict(self) -> dict[str, Any]:
        """The JSON layout of ``fairness_report.json``: num_classes, overall, by_group, gaps, intervals (only
        with bootstrap replicates) as [low, high], warnings, confidence. Grouping and class names are not in
        it: the report keys results by grouping, and the model's config holds the class names."""
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
        self._generator: torch.Generator | None = None
        self._synced = False

    def add_state(self, name: str, default: Tensor, *, group_dim: int, reduction: str = "sum") -> None:
        """Declare a count state: ``default`` its initial tensor, ``group_dim`` the dimension indexing groups
        (zero-padded when a larger group id arrives), ``reduction`` how `sync` combines processes."""
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
                name: _pad(t, self._specs[name].group_dim, extra) for name, t in self._states.items()
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

        labels (N,) int in [0, C); groups (N,) int >= 0; exactly one of logits (N, C) float (preds are the
        argmax, the softmax confidence feeds the ECE) or preds (N,) int, optionally with confidence (N,) in
        [0, 1], the probability given to the predicted class; losses (N,) optional per-sample loss.
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
        if group_low < 0:
            raise ValueError(ERR_NEGATIVE_GROUP.format(low=group_low))

        self._grow(group_high + 1)
        num_groups, c = self.num_groups, self.num_classes

        # Flat index into conf: one scatter-add for the whole batch.
        cell = (groups * c + labels) * c + preds
        self.conf.view(-1).index_add_(0, cell, torch.ones_like(cell))

        if self.bootstrap_samples:
            # Poisson bootstrap (Hanley & MacGibbon 2006; Chamandy et al. 2012, "Estimating uncertainty for
            # massive data streams"): every sample gets an independent Poisson(1) weight per replicate, which
            # approximates multinomial resampling without knowing N in advance and without keeping samples.
            # Drawn sample-major on CPU, so a sample's weights do not depend on how the data is batched.
            weights = torch.poisson(
                torch.ones(labels.shape[0], self.bootstrap_samples), generator=self._bootstrap_generator()
            )
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
    ) -> GroupResult:
        """Rates per group and overall, fairness gaps, bootstrap intervals and warnings.

        group_names[i] names group id i; other ids are named str(id). Groups without samples are left out.
        class_names[c] names class c in tables and warnings (default str(c)). ``intervals`` is filled only
        with bootstrap_samples > 0. Call `sync()` first when sharded over several processes.
        """
        if not 0.0 < confidence < 1.0:
            raise ValueError(ERR_CONFIDENCE.format(confidence=confidence))
        classes = _class_names(class_names, self.num_classes)
        counts = self.conf.sum((-2, -1)).tolist()
        present = [g for g, count in enumerate(counts) if count > 0]
        names = _name_groups(group_names, present)

        group_rates = rates_from_confusion(self.conf)
        group_stats = _stats(group_rates, ece_from_bins(self.calib), _mean_loss(self.loss_sums))
        overall_stats = _stats(
            rates_from_confusion(self.conf.sum(0, keepdim=True)),
            ece_from_bins(self.calib.sum(0, keepdim=True)),
            _mean_loss(self.loss_sums.sum(0, keepdim=True)),
        )
        gaps = gaps_from_rates(group_rates, self.num_classes)

        warnings = []
        if len(present) < 2:
            warnings.append(WARN_FEW_GROUPS.format(present=len(present)))
        for g in present:
            if counts[g] < min_group_size:
                warnings.append(
                    WARN_SMALL_GROUP.format(name=names[g], count=counts[g], min_group_size=min_group_size)
                )
            undefined = [k for k, v in group_stats.items() if k not in _NON_RATE_STATS and math.isnan(v[g])]
            if undefined:
                warnings.append(WARN_UNDEFINED_RATES.format(name=names[g], stats=", ".join(undefined)))
        predicted = self.conf.sum((0, 1)).tolist()  # (C,) samples per predicted class
        total = sum(predicted)
        if total > 1 and max(predicted) == total:
            name = classes[predicted.index(total)]
            warnings.append(WARN_CONSTANT_PREDICTIONS.format(count=total, name=name))

        intervals: dict[str, tuple[float, float]] = {}
        if self.bootstrap_samples:
            replicate_gaps = gaps_from_rates(rates_from_confusion(self.boot_conf), self.num_classes)
            alpha = (1.0 - confidence) / 2
            quantiles = torch.tensor([alpha, 1.0 - alpha], dtype=torch.float64, device=self.device)
            # Percentile interval; replicates where a gap is undefined (a group drew zero weight) are skipped.
            for gap, values in replicate_gaps.items():
                low, high = torch.nanquantile(values, quantiles).tolist()
                intervals[gap] = (low, high)
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
        )


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
