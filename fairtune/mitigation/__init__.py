"""Mitigation methods that plug into ``FairTrainer``.

* Penalties (loss wrappers): ``DemographicParity``, ``EqualOpportunity``, ``EqualizedOdds``, ``LossParity``,
  ``MinDiff``, or any subclass of ``Penalty``.
* Adversarial debiasing: ``Adversary`` (and ``EqualizedOddsAdversary``).
* Reweighting and sampling: ``KamiranCalders``, ``BalancedGroup``, ``BalancedLabel``,
  ``BalancedGroupLabel`` (as loss weights or as a sampler), and ``GroupDRO``.
* Post-processing: ``GroupThresholds``.

Pass objects as ``FairTrainer(..., mitigations=[...])``, or name them in a config (``penalty:``,
``reweighting:``, ``adversary:``, ``post_processing:``); methods combine.
"""

from __future__ import annotations

import inspect
from typing import Any

from fairtune.mitigation.adversary import Adversary, EqualizedOddsAdversary, grad_reverse
from fairtune.mitigation.penalties import (
    DemographicParity,
    EqualizedOdds,
    EqualOpportunity,
    LossParity,
    MinDiff,
    Penalty,
    PenaltyBatch,
    group_rates,
    spread,
)
from fairtune.mitigation.registry import lookup, names, register
from fairtune.mitigation.reweighting import (
    BalancedGroup,
    BalancedGroupLabel,
    BalancedLabel,
    GroupDRO,
    KamiranCalders,
    Reweighter,
    WeightedEpochSampler,
)

__all__ = [
    "Adversary",
    "BalancedGroup",
    "BalancedGroupLabel",
    "BalancedLabel",
    "DemographicParity",
    "EqualOpportunity",
    "EqualizedOdds",
    "EqualizedOddsAdversary",
    "GroupDRO",
    "KamiranCalders",
    "LossParity",
    "MinDiff",
    "Penalty",
    "PenaltyBatch",
    "Reweighter",
    "WeightedEpochSampler",
    "from_args",
    "grad_reverse",
    "group_rates",
    "lookup",
    "names",
    "post_processing_from_args",
    "register",
    "spread",
]

ERR_DRO_SAMPLER = "reweighting 'group_dro' adapts its weights during training; it has no sampler mode."


def _construct(cls: Any, options: dict[str, Any]) -> Any:
    """Call ``cls`` with the options its signature accepts (custom methods need not take them all)."""
    params = inspect.signature(cls).parameters
    return cls(**{k: v for k, v in options.items() if k in params})


def from_args(args: Any) -> list[Any]:
    """The mitigation objects ``args`` (``FairTrainingArguments``) names: penalty, reweighting, adversary."""
    methods: list[Any] = []
    if args.penalty:
        options = {
            "weight": args.penalty_weight,
            "warmup_steps": args.penalty_warmup_steps,
            "spread": args.penalty_spread,
            "bandwidth": args.mindiff_bandwidth,
        }
        methods.append(_construct(lookup("penalty", args.penalty), options))
    if args.reweighting:
        cls = lookup("reweighting", args.reweighting)
        if cls is GroupDRO:
            if args.reweighting_mode != "weights":
                raise ValueError(ERR_DRO_SAMPLER)
            methods.append(GroupDRO(eta=args.group_dro_eta))
        else:
            methods.append(_construct(cls, {"mode": args.reweighting_mode}))
    if args.adversary:
        options = {
            "input": args.adversary_input,
            "weight": args.adversary_weight,
            "hidden_size": args.adversary_hidden_size,
            "learning_rate": args.adversary_learning_rate,
        }
        methods.append(_construct(lookup("adversary", args.adversary), options))
    return methods


def post_processing_from_args(args: Any) -> Any:
    """The (unfitted) post-processing object ``args.post_processing`` names, or None."""
    if not args.post_processing:
        return None
    return lookup("post_processing", args.post_processing)()
