"""Adversarial debiasing: a head predicts the group from the model, through a gradient-reversal layer.

The head learns to predict each sample's group; the reversed gradient (times ``weight``) pushes the model
to make that impossible (Beutel et al. 2017; Ganin & Lempitsky 2015 for the layer). With
``conditional=True`` the head also sees the true label, so only information about the group *beyond* the
label is removed: the equalized-odds variant of Zhang et al. (2018).

The head is trained together with the model, by the same optimizer in a parameter group of its own (its
own learning rate, no weight decay); ``FairTrainer`` saves its weights in every checkpoint and restores them
on resume. It never becomes part of the exported model.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fairtune.mitigation.registry import construct, register

INPUTS = ("hidden", "logits")
ERR_INPUT = "Adversary input must be one of {valid}; got {value!r}."
ERR_POSITIVE = "Adversary {name} must be > 0; got {value}."
ERR_WEIGHT = "Adversary weight must be a finite number >= 0; got {weight}."
ERR_NOT_BUILT = "The adversary head is not built yet; FairTrainer builds it from the model and the groups."
ERR_HIDDEN_NEEDS_TRANSFORMERS = (
    "adversary input 'hidden' needs a transformers model (one that returns hidden_states); {kind} is a "
    "plain module: use adversary input 'logits'."
)


class _GradientReversal(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: Tensor, scale: float) -> Tensor:
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        return -ctx.scale * grad, None


def grad_reverse(x: Tensor, scale: float = 1.0) -> Tensor:
    """Identity in the forward pass; multiplies the gradient by ``-scale`` in the backward pass."""
    return _GradientReversal.apply(x, scale)


def pool_hidden(hidden: Tensor, attention_mask: Tensor | None) -> Tensor:
    """Mean of the last hidden states (N, T, H) over real tokens -> (N, H).

    A mean rather than the first token, so encoders and decoders (whose summary token is the last) alike
    work without knowing the architecture.
    """
    if attention_mask is None:
        return hidden.mean(1)
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * mask).sum(1) / mask.sum(1).clamp_min(1)


@register("adversary", "group")
class Adversary:
    """A group-predicting head on the model's representation, trained through gradient reversal.

    Args:
        input: ``"hidden"``: the mean-pooled last hidden state (transformers models); ``"logits"``: the
            model's logits (any model).
        conditional: also feed the one-hot true label (equalized-odds variant, Zhang et al. 2018).
        weight: scale of the reversed gradient reaching the model (lambda); the head itself learns at full
            strength.
        hidden_size: width of the head's hidden layer; 0 makes it linear.
        learning_rate: the head's learning rate (default: the trainer's).
    """

    name = "adversary"
    needs_labels = True

    @property
    def tasks(self) -> tuple[str, ...]:
        # The conditional head sees the class label, which a causal LM does not have.
        return ("classification",) if self.conditional else ("classification", "causal_lm")

    def __init__(
        self,
        input: str = "hidden",
        conditional: bool = False,
        weight: float = 1.0,
        hidden_size: int = 64,
        learning_rate: float | None = None,
    ):
        if input not in INPUTS:
            raise ValueError(ERR_INPUT.format(valid=", ".join(INPUTS), value=input))
        if not (weight >= 0 and math.isfinite(weight)):
            raise ValueError(ERR_WEIGHT.format(weight=weight))
        if hidden_size < 0:
            raise ValueError(ERR_POSITIVE.format(name="hidden_size", value=hidden_size))
        if learning_rate is not None and not learning_rate > 0:
            raise ValueError(ERR_POSITIVE.format(name="learning_rate", value=learning_rate))
        self.input = input
        self.conditional = conditional
        self.weight = float(weight)
        self.hidden_size = int(hidden_size)
        self.learning_rate = learning_rate
        self.head: nn.Module | None = None
        self.num_labels = 0

    @classmethod
    def from_args(cls, args: Any) -> Adversary:
        """Build from ``FairTrainingArguments``: ``adversary_input``, ``adversary_weight``,
        ``adversary_hidden_size``, ``adversary_learning_rate`` and ``adversary_options``."""
        standard = {
            "input": args.adversary_input,
            "weight": args.adversary_weight,
            "hidden_size": args.adversary_hidden_size,
            "learning_rate": args.adversary_learning_rate,
        }
        return construct(cls, standard, getattr(args, "adversary_options", None) or {}, "adversary")

    def build(self, model: nn.Module, num_groups: int, num_labels: int) -> nn.Module:
        """Create the head for ``model``'s representation size; returns it (float32, on the CPU)."""
        if self.input == "hidden":
            config = getattr(model, "config", None)
            size = getattr(config, "hidden_size", None) or getattr(config, "d_model", None)
            if size is None:
                raise ValueError(ERR_HIDDEN_NEEDS_TRANSFORMERS.format(kind=type(model).__name__))
        else:
            size = num_labels
        self.num_labels = num_labels
        d_in = size + (num_labels if self.conditional else 0)
        if self.hidden_size:
            layers: list[nn.Module] = [
                nn.Linear(d_in, self.hidden_size),
                nn.ReLU(),
                nn.Linear(self.hidden_size, num_groups),
            ]
        else:
            layers = [nn.Linear(d_in, num_groups)]
        self.head = nn.Sequential(*layers)
        return self.head

    def representation(self, outputs: Any, logits: Tensor, attention_mask: Tensor | None) -> Tensor:
        """(N, D) input of the head, from the model outputs."""
        if self.input == "logits":
            return logits
        return pool_hidden(outputs["hidden_states"][-1], attention_mask)

    def loss(self, representation: Tensor, groups: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
        """Cross-entropy of the head's group prediction, with the gradient into the model reversed.

        Args:
            representation: (N, D); groups: (N,); labels: (N,).

        Returns:
            per-sample adversary loss (N,) and whether each prediction was right (N,) bool.
        """
        if self.head is None:
            raise RuntimeError(ERR_NOT_BUILT)
        x = grad_reverse(representation.float(), self.weight)
        if self.conditional:
            x = torch.cat([x, F.one_hot(labels, self.num_labels).float()], dim=1)
        logits = self.head(x)
        return F.cross_entropy(logits, groups, reduction="none"), logits.argmax(-1) == groups

    def __repr__(self) -> str:
        return (
            f"Adversary(input={self.input!r}, conditional={self.conditional}, weight={self.weight}, "
            f"hidden_size={self.hidden_size}, learning_rate={self.learning_rate})"
        )


@register("adversary", "equalized_odds")
class EqualizedOddsAdversary(Adversary):
    """The adversary that also sees the true label (Zhang et al. 2018)."""

    def __init__(
        self,
        input: str = "hidden",
        weight: float = 1.0,
        hidden_size: int = 64,
        learning_rate: float | None = None,
    ):
        super().__init__(input, True, weight, hidden_size, learning_rate)
