"""Per-group classification metrics and fairness gaps, accumulated as counts.

`GroupStats` streams evaluation batches into count tensors (a per-group confusion tensor, calibration bins,
loss sums and, optionally, Poisson-bootstrap replicates of the confusion tensor). Counts add up across
batches and across processes, so streaming, one-shot and distributed evaluation give the same numbers;
averaging per-batch ratios would not.

All rates and gaps are derived from the counts by `rates_from_confusion` and `gaps_from_rates`, which work
on any leading (replicate) dimensions, so the point estimates and the bootstrap intervals share one code path.
The fairlearn-style functions at the end (`demographic_parity_difference`, ...) take plain arrays and run
through the same `GroupStats`.

Deliberate differences from fairlearn (0.15):

* A rate whose denominator is zero (e.g. the TPR of a group without positives, the precision of a group
  without predicted positives) is NaN and left out of the gaps; fairlearn, through scikit-learn, reports 0
  for it and takes it into the gap.
* A gap needs at least two groups on which its rate is defined, otherwise it is NaN.
* `equalized_odds_*` combine the TPR and FPR parts with NaN propagation; fairlearn takes Python's
  `min`/`max` (whose NaN handling depends on the argument order) or a pandas mean (which skips NaN).
"""

import math
from collections.abc import Sequence
from typing import Any, TypeAlias

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor

__all__ = [
    "GroupStats",
    "accuracy_difference",
    "demographic_parity_difference",
    "demographic_parity_ratio",
    "equal_opportunity_difference",
    "equalized_odds_difference",
    "equalized_odds_ratio",
    "flatten_metrics",
    "gaps_from_rates",
    "metric_frame",
    "rates_from_confusion",
    "tpr_gap_rms",
    "worst_group_accuracy",
]

# numpy array, torch tensor, pandas Series/DataFrame or (nested) list.
ArrayLike: TypeAlias = Any

ERR_NUM_CLASSES = "num_classes must be >= 2, got {num_classes}"
ERR_ECE_BINS = "ece_bins must be >= 1, got {ece_bins}"
ERR_BOOTSTRAP_SAMPLES = "bootstrap_samples must be >= 0, got {bootstrap_samples}"
ERR_CONFIDENCE = "confidence must lie in (0, 1), got {confidence}"
ERR_LOGITS_XOR_PREDS = "pass exactly one of logits= and preds="
ERR_NOT_1D = "{name} must have shape (N,), got {shape}"
ERR_LENGTH = "{name} has {got} entries, expected {expected} (one per sample)"
ERR_LOGITS_SHAPE = "logits must have shape (N, {num_classes}) with N = {num_samples}, got {shape}"
ERR_NOT_INTEGER = "{name} must hold integer ids, got dtype {dtype}"
ERR_CLASS_RANGE = "{name} must lie in [0, {num_classes}), got values in [{low}, {high}]"
ERR_NEGATIVE_GROUP = "group ids must be >= 0, got {low}"
ERR_UPDATE_AFTER_SYNC = "update() after sync(): call reset() before accumulating a new evaluation"
ERR_DUPLICATE_NAME = "group name {name!r} is used by group ids {first} and {second}"
ERR_GROUP_NAMED_OVERALL = "a group named 'overall' would collide with the overall stats in flat keys"
ERR_AGG = "agg must be one of {choices}, got {agg!r}"
ERR_NOT_BINARY = "{name} must hold binary labels 0/1 for this metric, got values {values}"
ERR_SENSITIVE_SHAPE = "sensitive_features must have shape (N,) or (N, K), got {shape}"
ERR_PROB_SHAPE = "y_prob must have shape (N,) or (N, C) with C >= 2 and N = {num_samples}, got {shape}"

WARN_SMALL_GROUP = "group {name!r} has {count} samples, fewer than min_group_size={min_group_size}"
WARN_FEW_GROUPS = "{present} group(s) with samples: gaps need at least 2 and are NaN"
WARN_UNDEFINED_RATES = "group {name!r}: {stats} undefined (zero denominator), left out of the gaps"

AGG_CHOICES = ("worst_case", "mean")

# Stats that are not rates over the confusion tensor, hence not part of the "undefined rate" warning.
_NON_RATE_STATS = ("count", "ece", "loss")


class GroupStats:
    """Streaming per-group classification counts, reducible across processes.

    State (G grows when a batch brings a larger group id; R = `bootstrap_samples`, B = `ece_bins`):

    * `conf` (G, C, C) int64: confusion counts indexed [group, true, pred].
    * `boot_conf` (R, G, C, C) int64: Poisson-bootstrap weighted confusion counts.
    * `calib` (G, B, 3) float64: per confidence bin, [count, sum of confidence, sum of correct].
    * `loss_sums` (G, 2) float64: [sum of per-sample loss, number of samples with a loss].

    Typical use: `reset()`, `update()` per batch on every rank, `sync()` once, `compute()`.
    """

    def __init__(
        self,
        num_classes: int,
        num_groups: int = 0,
        *,
        ece_bins: int = 10,
        bootstrap_samples: int = 0,
        seed: int = 0,
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
        # Without an explicit device the state follows the inputs of the first update (e.g. CUDA logits).
        self._device_fixed = device is not None
        device = torch.device(device if device is not None else "cpu")
        c, r, b = num_classes, bootstrap_samples, ece_bins
        self.conf = torch.zeros(num_groups, c, c, dtype=torch.long, device=device)
        self.boot_conf = torch.zeros(r, num_groups, c, c, dtype=torch.long, device=device)
        self.calib = torch.zeros(num_groups, b, 3, dtype=torch.float64, device=device)
        self.loss_sums = torch.zeros(num_groups, 2, dtype=torch.float64, device=device)
        self._generator: torch.Generator | None = None
        self._synced = False

    @property
    def num_groups(self) -> int:
        return self.conf.shape[0]

    @property
    def device(self) -> torch.device:
        return self.conf.device

    def _state(self) -> list[Tensor]:
        return [self.conf, self.boot_conf, self.calib, self.loss_sums]

    def _set_state(self, conf: Tensor, boot_conf: Tensor, calib: Tensor, loss_sums: Tensor) -> None:
        self.conf, self.boot_conf, self.calib, self.loss_sums = conf, boot_conf, calib, loss_sums

    def _to(self, device: torch.device) -> None:
        self._set_state(*(t.to(device) for t in self._state()))

    def _grow(self, num_groups: int) -> None:
        """Zero-pad the group dimension of every state tensor up to `num_groups`."""
        extra = num_groups - self.num_groups
        if extra > 0:
            group_dims = (0, 1, 0, 0)  # boot_conf carries the replicate dimension first
            self._set_state(*(_pad(t, dim, extra) for t, dim in zip(self._state(), group_dims, strict=True)))

    def reset(self) -> None:
        """Zero all counts, keeping the number of groups seen so far."""
        for t in self._state():
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
        losses: Tensor | None = None,
    ) -> None:
        """Accumulate one batch.

        labels (N,) int in [0, C); groups (N,) int >= 0; exactly one of logits (N, C) float (preds are the
        argmax, the softmax confidence feeds the ECE) or preds (N,) int; losses (N,) optional per-sample loss.
        """
        if (logits is None) == (preds is None):
            raise ValueError(ERR_LOGITS_XOR_PREDS)
        labels = _check_ids("labels", labels)
        num_samples = labels.shape[0]
        groups = _check_ids("groups", groups, num_samples)
        confidence = None
        if logits is not None:
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
        if losses is not None:
            _check_length("losses", losses, num_samples)
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
            confidence = confidence.to(device=device, dtype=torch.float64)
            # Right-closed bins (k/B, (k+1)/B] as in Guo et al. 2017; confidence 0 falls into the first bin.
            bins = (confidence * self.ece_bins).ceil().long().clamp_(1, self.ece_bins) - 1
            correct = (preds == labels).double()
            rows = torch.stack([torch.ones_like(correct), confidence, correct], 1)
            self.calib.view(-1, 3).index_add_(0, groups * self.ece_bins + bins, rows)

        if losses is not None:
            losses = losses.to(device=device, dtype=torch.float64)
            self.loss_sums.index_add_(0, groups, torch.stack([losses, torch.ones_like(losses)], 1))

    def _bootstrap_generator(self) -> torch.Generator:
        if self._generator is None:
            # Offset by rank: with one seed everywhere, sample i of every rank would share its weights and the
            # replicates would be correlated across ranks, understating the variance.
            rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
            self._generator = torch.Generator(device="cpu").manual_seed(self.seed + rank)
        return self._generator

    def sync(self) -> None:
        """Sum the counts over all processes of the default group (no-op when not distributed).

        Call once per evaluation on every rank, after the last update; later updates need a `reset()`.
        """
        if not self._synced and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            if dist.get_backend() == "nccl" and self.device.type != "cuda":
                # NCCL reduces CUDA tensors only; a rank that saw no batch still holds its state on the CPU.
                self._to(torch.device("cuda", torch.cuda.current_device()))
            # Ranks may have seen different group ids: agree on G before summing same-shaped tensors.
            size = torch.tensor([self.num_groups], device=self.device)
            dist.all_reduce(size, op=dist.ReduceOp.MAX)
            self._grow(int(size.item()))
            for t in self._state():
                if t.numel():  # same shapes on every rank now, so every rank skips the same tensors
                    dist.all_reduce(t, op=dist.ReduceOp.SUM)
        # A second sync would add the global counts again; mark the state as final instead.
        self._synced = True

    def compute(
        self, group_names: Sequence[str] | None = None, *, min_group_size: int = 30, confidence: float = 0.95
    ) -> dict:
        """Rates per group and overall, fairness gaps, bootstrap intervals and warnings as a plain dict.

        group_names[i] names group id i; other ids are named str(id). Groups without samples are left out.
        Layout: {"num_classes": C, "overall": {stat: v}, "by_group": {name: {stat: v}}, "gaps": {gap: v},
        "intervals": {gap: [low, high]} (only with bootstrap_samples > 0), "warnings": [str]}.
        Call `sync()` first when distributed.
        """
        if not 0.0 < confidence < 1.0:
            raise ValueError(ERR_CONFIDENCE.format(confidence=confidence))
        counts = self.conf.sum((-2, -1)).tolist()
        present = [g for g, count in enumerate(counts) if count > 0]
        names = _name_groups(group_names, present)

        group_rates = rates_from_confusion(self.conf)
        group_stats = _stats(group_rates, _ece_from_bins(self.calib), _mean_loss(self.loss_sums))
        overall_stats = _stats(
            rates_from_confusion(self.conf.sum(0, keepdim=True)),
            _ece_from_bins(self.calib.sum(0, keepdim=True)),
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

        result: dict = {
            "num_classes": self.num_classes,
            "overall": {stat: _scalar(stat, values[0]) for stat, values in overall_stats.items()},
            "by_group": {
                names[g]: {stat: _scalar(stat, values[g]) for stat, values in group_stats.items()}
                for g in present
            },
            "gaps": {gap: value.item() for gap, value in gaps.items()},
        }
        if self.bootstrap_samples:
            replicate_gaps = gaps_from_rates(rates_from_confusion(self.boot_conf), self.num_classes)
            alpha = (1.0 - confidence) / 2
            quantiles = torch.tensor([alpha, 1.0 - alpha], dtype=torch.float64, device=self.device)
            # Percentile interval; replicates where a gap is undefined (a group drew zero weight) are skipped.
            result["intervals"] = {
                gap: torch.nanquantile(values, quantiles).tolist() for gap, values in replicate_gaps.items()
            }
        result["warnings"] = warnings
        return result


def rates_from_confusion(conf: Tensor) -> dict[str, Tensor]:
    """Per-group rates from confusion counts.

    conf (..., G, C, C) indexed [..., group, true, pred]; leading dims are e.g. bootstrap replicates.
    Returns {stat: (..., G) float64}: count and accuracy; for C == 2 (positive class 1) also base_rate,
    selection_rate, tpr, fpr, fnr, precision; for C > 2 the per-class recall tpr_<c>.
    A rate with a zero denominator is NaN.
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
    return rates


def gaps_from_rates(rates: dict[str, Tensor], num_classes: int) -> dict[str, Tensor]:
    """Fairness gaps across groups from `rates_from_confusion` output.

    rates {stat: (..., G)} -> {gap: (...)}. Groups where a rate is NaN (no samples, zero denominator) are
    left out of that rate's gap; a gap over fewer than two groups is NaN. Ratios are min / max, NaN when
    max == 0 (as in fairlearn). Binary-only gaps are absent for C > 2.
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
        class_gaps = [high - low for low, high in (_spread(rates[f"tpr_{c}"]) for c in range(num_classes))]
    acc_low, acc_high = _spread(rates["accuracy"])
    gaps["accuracy_difference"] = acc_high - acc_low
    gaps["worst_group_accuracy"] = acc_low
    # TPR-GAP RMS (Ravfogel et al. 2020; fairlib's GAP): root mean square over classes of the per-class
    # recall spread. A class without a defined spread (held by fewer than two groups) is left out.
    gaps["tpr_gap_rms"] = torch.stack(class_gaps, -1).pow(2).nanmean(-1).sqrt()
    return gaps


def flatten_metrics(result: dict, prefix: str) -> dict[str, float]:
    """Flatten a `GroupStats.compute` result into `prefix/...` keys for Trainer logs, dropping NaN values.

    Keys: prefix/<gap>, prefix/<gap>_ci_low, prefix/<gap>_ci_high, prefix/overall/<stat>,
    prefix/<group>/<stat>. NaN is dropped because loggers such as TensorBoard reject it.
    """
    if "overall" in result["by_group"]:
        raise ValueError(ERR_GROUP_NAMED_OVERALL)
    flat = {f"{prefix}/{gap}": value for gap, value in result["gaps"].items()}
    for gap, (low, high) in result.get("intervals", {}).items():
        flat[f"{prefix}/{gap}_ci_low"] = low
        flat[f"{prefix}/{gap}_ci_high"] = high
    sections = {"overall": result["overall"], **result["by_group"]}
    for section, stats in sections.items():
        for stat, value in stats.items():
            flat[f"{prefix}/{section}/{stat}"] = value
    return {key: float(value) for key, value in flat.items() if not math.isnan(value)}


# fairlearn-style functions over arrays -----------------------------------------------------------------


def demographic_parity_difference(
    y_true: ArrayLike, y_pred: ArrayLike, *, sensitive_features: ArrayLike
) -> float:
    """Max - min selection rate across groups (binary labels)."""
    return _binary_gap("demographic_parity_difference", y_true, y_pred, sensitive_features)


def demographic_parity_ratio(y_true: ArrayLike, y_pred: ArrayLike, *, sensitive_features: ArrayLike) -> float:
    """Min / max selection rate across groups (binary labels); NaN when every rate is 0."""
    return _binary_gap("demographic_parity_ratio", y_true, y_pred, sensitive_features)


def equalized_odds_difference(
    y_true: ArrayLike, y_pred: ArrayLike, *, sensitive_features: ArrayLike, agg: str = "worst_case"
) -> float:
    """Larger ("worst_case") or mean ("mean") of the TPR and FPR differences across groups (binary labels)."""
    gap = "equalized_odds_difference" + _agg_suffix(agg)
    return _binary_gap(gap, y_true, y_pred, sensitive_features)


def equalized_odds_ratio(
    y_true: ArrayLike, y_pred: ArrayLike, *, sensitive_features: ArrayLike, agg: str = "worst_case"
) -> float:
    """Smaller ("worst_case") or mean ("mean") of the TPR and FPR min/max ratios across groups (binary)."""
    gap = "equalized_odds_ratio" + _agg_suffix(agg)
    return _binary_gap(gap, y_true, y_pred, sensitive_features)


def equal_opportunity_difference(
    y_true: ArrayLike, y_pred: ArrayLike, *, sensitive_features: ArrayLike
) -> float:
    """Max - min true positive rate across groups (binary labels)."""
    return _binary_gap("equal_opportunity_difference", y_true, y_pred, sensitive_features)


def accuracy_difference(y_true: ArrayLike, y_pred: ArrayLike, *, sensitive_features: ArrayLike) -> float:
    """Max - min accuracy across groups (any number of classes)."""
    return metric_frame(y_true, y_pred, sensitive_features=sensitive_features)["gaps"]["accuracy_difference"]


def worst_group_accuracy(y_true: ArrayLike, y_pred: ArrayLike, *, sensitive_features: ArrayLike) -> float:
    """Lowest accuracy of any group (any number of classes)."""
    return metric_frame(y_true, y_pred, sensitive_features=sensitive_features)["gaps"]["worst_group_accuracy"]


def tpr_gap_rms(y_true: ArrayLike, y_pred: ArrayLike, *, sensitive_features: ArrayLike) -> float:
    """Root mean square over classes of the across-group recall spread (any number of classes)."""
    return metric_frame(y_true, y_pred, sensitive_features=sensitive_features)["gaps"]["tpr_gap_rms"]


def metric_frame(
    y_true: ArrayLike, y_pred: ArrayLike, *, sensitive_features: ArrayLike, y_prob: ArrayLike | None = None
) -> dict:
    """`GroupStats.compute` result for arrays.

    y_true, y_pred (N,) integer class ids; sensitive_features (N,) or (N, K) hashable values (K columns are
    intersected, names joined with ","; groups in sorted order); y_prob (N,) probability of class 1 or
    (N, C) class probabilities, enables the ECE (with the confidence of the predicted class y_pred).
    C is y_prob's width, else max(2, largest label + 1).
    """
    labels = _class_ids("y_true", y_true)
    preds = _class_ids("y_pred", y_pred)
    num_samples = labels.shape[0]
    _check_length("y_pred", preds, num_samples)
    groups, names = _encode_groups(sensitive_features, num_samples)
    probs = None if y_prob is None else _probabilities(y_prob, num_samples)
    if probs is not None:
        num_classes = probs.shape[1]
    else:
        num_classes = max(2, int(max(labels.max(), preds.max())) + 1) if num_samples else 2
    stats = GroupStats(num_classes, len(names))
    confidence = None
    if probs is not None and num_samples:
        # Range-check before gather, which would fail with a less helpful error on an out-of-range pred.
        high = int(preds.max())
        if preds.min() < 0 or high >= num_classes:
            raise ValueError(
                ERR_CLASS_RANGE.format(name="preds", num_classes=num_classes, low=int(preds.min()), high=high)
            )
        confidence = probs.gather(1, preds[:, None]).squeeze(1)
    stats._update(labels, groups, preds, confidence, None)
    return stats.compute(names)


# helpers -----------------------------------------------------------------------------------------------


def _pad(t: Tensor, dim: int, extra: int) -> Tensor:
    shape = list(t.shape)
    shape[dim] = extra
    return torch.cat([t, t.new_zeros(shape)], dim)


def _check_length(name: str, t: Tensor, num_samples: int) -> None:
    if t.dim() != 1:
        raise ValueError(ERR_NOT_1D.format(name=name, shape=tuple(t.shape)))
    if t.shape[0] != num_samples:
        raise ValueError(ERR_LENGTH.format(name=name, got=t.shape[0], expected=num_samples))


def _check_ids(name: str, t: Tensor, num_samples: int | None = None) -> Tensor:
    """Validate an (N,) integer tensor of ids and return it as int64."""
    if t.dim() != 1:
        raise ValueError(ERR_NOT_1D.format(name=name, shape=tuple(t.shape)))
    if num_samples is not None:
        _check_length(name, t, num_samples)
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


def _min_over_max(low: Tensor, high: Tensor) -> Tensor:
    # fairlearn returns NaN (0 / 0) when the largest rate is 0; match it explicitly.
    return torch.where(high > 0, low / high, torch.nan)


def _ece_from_bins(calib: Tensor) -> Tensor:
    """calib (..., B, 3) [count, sum confidence, sum correct] -> top-label ECE (...); NaN without samples.

    sum_b (n_b / n) |conf_b - acc_b| = sum_b |sum conf_b - sum correct_b| / n.
    """
    return _ratio((calib[..., 1] - calib[..., 2]).abs().sum(-1), calib[..., 0].sum(-1))


def _mean_loss(loss_sums: Tensor) -> Tensor:
    return _ratio(loss_sums[..., 0], loss_sums[..., 1])


def _stats(rates: dict[str, Tensor], ece: Tensor, loss: Tensor) -> dict[str, list[float]]:
    """Per-group stat lists (G,) in reporting order: rates, then ece and loss."""
    return {stat: values.tolist() for stat, values in {**rates, "ece": ece, "loss": loss}.items()}


def _scalar(stat: str, value: float) -> int | float:
    return int(value) if stat == "count" else float(value)


def _name_groups(group_names: Sequence[str] | None, present: list[int]) -> dict[int, str]:
    names = list(group_names) if group_names is not None else []
    named: dict[int, str] = {}
    owner: dict[str, int] = {}
    for g in present:
        name = str(names[g]) if g < len(names) else str(g)
        if name in owner:
            raise ValueError(ERR_DUPLICATE_NAME.format(name=name, first=owner[name], second=g))
        named[g], owner[name] = name, g
    return named


def _agg_suffix(agg: str) -> str:
    if agg not in AGG_CHOICES:
        raise ValueError(ERR_AGG.format(choices=", ".join(repr(c) for c in AGG_CHOICES), agg=agg))
    return "" if agg == "worst_case" else "_mean"


def _binary_gap(gap: str, y_true: ArrayLike, y_pred: ArrayLike, sensitive_features: ArrayLike) -> float:
    for name, values in (("y_true", y_true), ("y_pred", y_pred)):
        unique = np.unique(_to_numpy(values))
        if not np.isin(unique, [0, 1]).all():
            raise ValueError(ERR_NOT_BINARY.format(name=name, values=unique.tolist()))
    result = metric_frame(y_true, y_pred, sensitive_features=sensitive_features)
    # C == 2 is forced even when one array holds a single class, so the binary gaps always exist.
    return result["gaps"][gap]


def _to_numpy(values: ArrayLike) -> np.ndarray:
    if isinstance(values, Tensor):
        return values.detach().cpu().numpy()
    if hasattr(values, "to_numpy"):  # pandas Series / DataFrame, without importing pandas
        return values.to_numpy()
    return np.asarray(values)


def _class_ids(name: str, values: ArrayLike) -> Tensor:
    """(N,) integer-valued array-like -> (N,) int64 tensor (floats such as 1.0 are accepted)."""
    array = _to_numpy(values)
    if array.ndim != 1:
        raise ValueError(ERR_NOT_1D.format(name=name, shape=array.shape))
    integral = array.dtype.kind in "biu" or (array.dtype.kind == "f" and np.all(np.mod(array, 1) == 0))
    if not integral:
        raise ValueError(ERR_NOT_INTEGER.format(name=name, dtype=array.dtype))
    return torch.from_numpy(array.astype(np.int64))


def _encode_groups(sensitive_features: ArrayLike, num_samples: int) -> tuple[Tensor, list[str]]:
    """(N,) or (N, K) hashable values -> group ids (N,) int64 and names, in sorted order like fairlearn."""
    values = _to_numpy(sensitive_features)
    if values.ndim == 1:
        values = values[:, None]
    if values.ndim != 2 or values.shape[0] != num_samples:
        raise ValueError(ERR_SENSITIVE_SHAPE.format(shape=values.shape))
    # Encode column by column (np.unique cannot sort object rows), then intersect the integer codes.
    columns = [np.unique(values[:, k], return_inverse=True) for k in range(values.shape[1])]
    codes = np.stack([inverse.reshape(-1) for _, inverse in columns], 1)
    keys, ids = np.unique(codes, axis=0, return_inverse=True)
    names = [",".join(str(columns[k][0][code]) for k, code in enumerate(key)) for key in keys]
    return torch.from_numpy(ids.reshape(-1).astype(np.int64)), names


def _probabilities(y_prob: ArrayLike, num_samples: int) -> Tensor:
    """(N,) probability of class 1 or (N, C) probabilities -> (N, C) float64."""
    probs = torch.as_tensor(_to_numpy(y_prob), dtype=torch.float64)
    if probs.dim() == 1:
        probs = torch.stack([1.0 - probs, probs], 1)
    if probs.dim() != 2 or probs.shape[0] != num_samples or probs.shape[1] < 2:
        raise ValueError(ERR_PROB_SHAPE.format(num_samples=num_samples, shape=tuple(probs.shape)))
    return probs
