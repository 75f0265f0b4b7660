"""Sample reweighting: static weights per (group, label) cell, a sampler that draws by them, and GroupDRO.

Static weights are a (G, C) table fitted on the training data; ``FairTrainer`` multiplies each sample's task
loss by the weight of its cell, or (``mode="sampler"``) draws training samples with probability proportional
to it instead. GroupDRO keeps online weights over groups that follow the groups' losses.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import Sampler

from fairtune.mitigation.registry import construct, register

MODES = ("weights", "sampler")
ERR_MODE = "Reweighting mode must be one of {valid}; got {mode!r}."
ERR_NOT_FITTED = (
    "{name} has not been fitted to training data yet; call fit(groups, labels, num_groups, num_labels)."
)
ERR_FIT_SHAPES = "groups and labels must be (N,) tensors of the same length; got shapes {g} and {y}."
ERR_ETA = "GroupDRO step size eta must be a finite number > 0; got {eta}."
ERR_DRO_GROUPS = (
    "GroupDRO needs at least 2 training groups to weigh against each other; the grouping has {count}."
)
ERR_DRO_SAMPLER = "reweighting 'group_dro' adapts its weights during training; it has no sampler mode."
ERR_SAMPLER_WEIGHTS = "Sampler weights must be a 1-D tensor of finite values >= 0 with a positive sum."


def _cell_counts(groups: Tensor, labels: Tensor, num_groups: int, num_labels: int) -> Tensor:
    """(G, C) sample counts per (group, label) cell."""
    if groups.dim() != 1 or groups.shape != labels.shape:
        raise ValueError(ERR_FIT_SHAPES.format(g=tuple(groups.shape), y=tuple(labels.shape)))
    flat = groups.long() * num_labels + labels.long()
    return torch.bincount(flat, minlength=num_groups * num_labels).view(num_groups, num_labels).double()


class Reweighter:
    """Static per-(group, label) sample weights with mean 1 over the training data.

    Subclasses implement ``table(counts) -> (G, C)`` from the cell counts; cells without samples get 0.

    Args:
        mode: ``"weights"`` multiplies each sample's loss by its weight; ``"sampler"`` leaves the loss alone
            and draws training samples with replacement, with probability proportional to the weight.
    """

    name = "reweighter"
    tasks: tuple[str, ...] = ("classification",)  # weights per (group, class) cell need class labels

    def __init__(self, mode: str = "weights"):
        if mode not in MODES:
            raise ValueError(ERR_MODE.format(valid=", ".join(MODES), mode=mode))
        self.mode = mode
        self.weights: Tensor | None = None  # (G, C), float32

    @classmethod
    def from_args(cls, args: Any) -> Reweighter:
        """Build from ``FairTrainingArguments``: ``reweighting_mode`` and ``reweighting_options``."""
        options = getattr(args, "reweighting_options", None) or {}
        return construct(cls, {"mode": args.reweighting_mode}, options, "reweighting")

    def table(self, counts: Tensor) -> Tensor:
        raise NotImplementedError

    def fit(self, groups: Tensor, labels: Tensor, num_groups: int, num_labels: int) -> Reweighter:
        """Fit the (G, C) weight table from training group ids (N,) and labels (N,)."""
        return self.fit_counts(_cell_counts(groups, labels, num_groups, num_labels))

    def fit_counts(self, counts: Tensor) -> Reweighter:
        """Fit the (G, C) weight table from (G, C) cell counts or shares (streamed data)."""
        counts = counts.double()
        table = self.table(counts) * (counts > 0)
        # Normalised so the weights average 1 over the training samples: the loss keeps its scale.
        table = table * counts.sum() / (table * counts).sum()
        self.weights = table.float()
        return self

    def sample_weights(self, groups: Tensor, labels: Tensor) -> Tensor:
        """(N,) weight of each sample from its group id (N,) and label (N,)."""
        if self.weights is None:
            raise RuntimeError(ERR_NOT_FITTED.format(name=type(self).__name__))
        if self.weights.device != groups.device:
            self.weights = self.weights.to(groups.device)
        return self.weights[groups, labels]

    def __repr__(self) -> str:
        return f"{type(self).__name__}(mode={self.mode!r})"


@register("reweighting", "kamiran_calders")
class KamiranCalders(Reweighter):
    """Reweighing (Kamiran & Calders 2012): w(g, y) = P(g) P(y) / P(g, y).

    Under these weights group and label are independent in the training data.
    """

    name = "kamiran_calders"

    def table(self, counts: Tensor) -> Tensor:
        n = counts.sum()
        p_g, p_y = counts.sum(1, keepdim=True) / n, counts.sum(0, keepdim=True) / n
        return p_g * p_y / (counts / n).clamp_min(1e-300)


class _Balanced(Reweighter):
    """Balanced training (fairlib's BT): every stratum carries the same total weight."""

    by = "group_label"

    def table(self, counts: Tensor) -> Tensor:
        if self.by == "group":
            stratum = counts.sum(1, keepdim=True).expand_as(counts)
        elif self.by == "label":
            stratum = counts.sum(0, keepdim=True).expand_as(counts)
        else:
            stratum = counts
        return 1.0 / stratum.clamp_min(1e-300)


@register("reweighting", "balanced_group")
class BalancedGroup(_Balanced):
    """Each group carries the same total weight: w(g, y) = 1 / n_g (up to normalisation)."""

    name, by = "balanced_group", "group"
    tasks = ("classification", "causal_lm")  # by group only: a causal LM's rows count as one class


@register("reweighting", "balanced_label")
class BalancedLabel(_Balanced):
    """Each class carries the same total weight: w(g, y) = 1 / n_y."""

    name, by = "balanced_label", "label"


@register("reweighting", "balanced_group_label")
class BalancedGroupLabel(_Balanced):
    """Each (group, label) cell carries the same total weight: w(g, y) = 1 / n_{g,y}."""

    name, by = "balanced_group_label", "group_label"


class WeightedEpochSampler(Sampler[int]):
    """Draws ``num_samples`` indices with replacement, with probability proportional to ``weights``.

    The draw depends only on ``seed`` and the epoch, never on a global RNG, so every process of a
    distributed run draws the same sequence and accelerate's batch sharding splits it between them without
    overlap, exactly as it splits a shuffled ``RandomSampler``. ``set_epoch`` (called by Trainer every epoch)
    picks the epoch; without it each new iteration advances one epoch.

    Args:
        weights: (N,) non-negative sampling weights of the dataset's rows.
        num_samples: indices per epoch (default N: an epoch keeps its length).
        seed: base seed, e.g. ``TrainingArguments.seed``.
    """

    def __init__(self, weights: Tensor, num_samples: int | None = None, seed: int = 0):
        weights = torch.as_tensor(weights, dtype=torch.double)
        if (
            weights.dim() != 1
            or not torch.isfinite(weights).all()
            or (weights < 0).any()
            or weights.sum() <= 0
        ):
            raise ValueError(ERR_SAMPLER_WEIGHTS)
        self.weights = weights
        self.num_samples = int(num_samples if num_samples is not None else len(weights))
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.num_samples

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        self.epoch += 1
        draw = torch.multinomial(self.weights, self.num_samples, replacement=True, generator=generator)
        yield from draw.tolist()


@register("reweighting", "group_dro")
class GroupDRO:
    """Online group weights by exponentiated gradient (Sagawa et al. 2020, Algorithm 1).

    Every training batch first updates q_g <- q_g * exp(eta * L_g) for the groups in the batch (L_g their
    mean loss) and renormalises, then weighs the batch so its loss is sum_g q_g L_g: sample i of group g gets
    weight q_g * N / n_g. The state is log q, updated as log q <- log_softmax(log q + eta * L): q itself
    underflows once two groups' log-weights differ by more than ~87 (float32), after which a multiplicative
    update could no longer follow the paper's. The losses are summed over processes before the update, so
    all processes keep the same q; the trainer saves the state in every checkpoint and restores it on resume.

    Args:
        eta: step size of the exponentiated-gradient update.
    """

    name = "group_dro"
    mode = "weights"
    tasks = ("classification", "causal_lm")

    def __init__(self, eta: float = 0.01):
        if not (eta > 0 and math.isfinite(eta)):
            raise ValueError(ERR_ETA.format(eta=eta))
        self.eta = float(eta)
        self.log_q: Tensor | None = None  # (G,) float64

    @classmethod
    def from_args(cls, args: Any) -> GroupDRO:
        """Build from ``FairTrainingArguments``: ``group_dro_eta`` and ``reweighting_options``."""
        if args.reweighting_mode != "weights":
            raise ValueError(ERR_DRO_SAMPLER)
        options = getattr(args, "reweighting_options", None) or {}
        return construct(cls, {"eta": args.group_dro_eta}, options, "reweighting")

    @property
    def q(self) -> Tensor | None:
        """(G,) group weights, summing to 1."""
        return None if self.log_q is None else self.log_q.exp()

    def setup(self, num_groups: int, device: torch.device | str = "cpu") -> GroupDRO:
        if num_groups < 2:
            raise ValueError(ERR_DRO_GROUPS.format(count=num_groups))
        # A fresh start: a resumed run restores log q from its checkpoint afterwards.
        self.log_q = torch.full((num_groups,), -math.log(num_groups), dtype=torch.float64, device=device)
        return self

    def to(self, device: torch.device | str) -> GroupDRO:
        if self.log_q is not None:
            self.log_q = self.log_q.to(device)
        return self

    def update(self, loss_sums: Tensor, counts: Tensor) -> Tensor:
        """Update q from per-group loss sums (G,) and sample counts (G,) of a batch; returns (G,) weights.

        The returned factor per group is q_g * N / n_g (0 for absent groups), in the dtype of ``loss_sums``:
        multiply each sample's loss by it.
        """
        if self.log_q is None:
            raise RuntimeError(ERR_NOT_FITTED.format(name="GroupDRO"))
        present = counts > 0
        mean_loss = loss_sums.double() / counts.double().clamp_min(1)
        # An absent group keeps its log-weight until the renormalisation.
        self.log_q = torch.log_softmax(self.log_q + self.eta * mean_loss * present, dim=0)
        factor = self.log_q.exp() * counts.sum().double() / counts.double().clamp_min(1) * present
        return factor.to(loss_sums.dtype)

    def state_dict(self) -> dict[str, Tensor | None]:
        return {"log_q": None if self.log_q is None else self.log_q.detach().cpu()}

    def load_state_dict(self, state: dict[str, Tensor | None]) -> None:
        device = self.log_q.device if self.log_q is not None else "cpu"
        if "log_q" in state:
            log_q = state["log_q"]
        else:  # checkpoints written before the state moved to log space hold q itself
            log_q = None if state["q"] is None else state["q"].double().clamp_min(1e-300).log()
        self.log_q = None if log_q is None else log_q.to(device=device, dtype=torch.float64)

    def __repr__(self) -> str:
        return f"GroupDRO(eta={self.eta})"
