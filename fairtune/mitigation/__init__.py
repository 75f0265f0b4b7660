"""Mitigation methods that plug into ``FairTrainer``.

* Penalties (loss wrappers): ``DemographicParity``, ``EqualOpportunity``, ``EqualizedOdds``, ``LossParity``,
  ``MinDiff``, or any subclass of ``Penalty`` (a rate penalty is a ``RatePenalty`` with a ``statistic``).
* Counterfactual consistency: ``CounterfactualConsistency`` (a row against its swapped copy; needs pair ids).
* Adversarial debiasing: ``Adversary`` (and ``EqualizedOddsAdversary``).
* Reweighting and sampling: ``KamiranCalders``, ``BalancedGroup``, ``BalancedLabel``,
  ``BalancedGroupLabel`` (as loss weights or as a sampler), and ``GroupDRO``.
* Constraints with stated bounds: ``LagrangianConstraints`` of ``Constraint`` objects (``constraints:``).
* Two stages: ``JustTrainTwice`` (``just_train_twice``: ERM, then its training errors up-weighted).
* Post-processing: ``GroupThresholds``.

Pass objects as ``FairTrainer(..., mitigations=[...])``, or name them in a config (``penalty:``,
``reweighting:``, ``adversary:``, ``post_processing:``); methods combine into one ``Mitigations`` object.
Importing this package registers the built-in methods (``registry`` itself imports none of them).
"""

from fairtune.mitigation.adversary import Adversary, EqualizedOddsAdversary, grad_reverse
from fairtune.mitigation.combined import Mitigations, TermLog
from fairtune.mitigation.consistency import CounterfactualConsistency
from fairtune.mitigation.constraints import Constraint, LagrangianConstraints, parse_constraints
from fairtune.mitigation.jtt import JustTrainTwice, just_train_twice
from fairtune.mitigation.penalties import (
    DemographicParity,
    EqualizedOdds,
    EqualOpportunity,
    LossParity,
    MinDiff,
    Penalty,
    PenaltyBatch,
    ProcessSync,
    RatePenalty,
    group_rates,
    group_sums,
    rates_from_sums,
    spread,
)
from fairtune.mitigation.postprocess import GroupThresholds
from fairtune.mitigation.registry import build, lookup, names, register
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
    "Constraint",
    "CounterfactualConsistency",
    "DemographicParity",
    "EqualOpportunity",
    "EqualizedOdds",
    "EqualizedOddsAdversary",
    "GroupDRO",
    "GroupThresholds",
    "JustTrainTwice",
    "KamiranCalders",
    "LagrangianConstraints",
    "LossParity",
    "MinDiff",
    "Mitigations",
    "Penalty",
    "PenaltyBatch",
    "ProcessSync",
    "RatePenalty",
    "Reweighter",
    "TermLog",
    "WeightedEpochSampler",
    "build",
    "grad_reverse",
    "just_train_twice",
    "group_rates",
    "group_sums",
    "lookup",
    "names",
    "parse_constraints",
    "rates_from_sums",
    "register",
    "spread",
]
