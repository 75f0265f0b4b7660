"""Counterfactual consistency: a penalty on how much a model's output changes when identity terms are swapped.

A training row and its counterfactual copy (``fairtune.data.counterfactual``, ``pair_ids=True``) share a
pair id; ``fairtune.data.pairs.PairSampler`` keeps both in one micro-batch, and this penalty compares their
outputs:

* classifiers (logits (N, C)): counterfactual logit pairing (Garg et al. 2019), the mean over pairs of the
  mean absolute difference of the two rows' logits, as TF Model Remediation's pairwise MAE loss;
* causal LMs (logits (N, T, V)): a divergence between the two rows' next-token distributions at aligned
  positions, averaged over those positions and then over pairs.

Alignment rule for causal LMs: the two sentences of a pair differ only in swapped words, so they end in a
shared suffix: the longest run of identical token ids at the end of both (real tokens, by the attention
mask; left or right padding). The positions compared are those whose next token lies in that suffix: for a
suffix of length L in sequences of real lengths n and n', position n - L - 1 + k of the first is aligned with
position n' - L - 1 + k of the second (k = 0 .. L - 1); each predicts the same next token, after a prefix that
differs only by the swap. A position before the first token does not exist, so when the suffix is the whole
shorter sequence its first token is skipped. Pairs with no shared suffix add nothing. Tokens that differ after
the last swapped word (e.g. a her -> his/him choice) end the suffix there: the rule is conservative.

Across processes (``PenaltyBatch.sync``), pairs stay within a micro-batch, but the mean is over the pairs of
all processes (the per-pair sum and the count are summed with autograd), so it equals the single-process value
on the global batch; gradient scaling as in ``fairtune.mitigation.penalties``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from fairtune.data.pairs import pair_index
from fairtune.mitigation.penalties import Penalty, PenaltyBatch
from fairtune.mitigation.registry import register

DIVERGENCES = ("js", "symmetric_kl")
ERR_DIVERGENCE = "divergence must be one of {valid}; got {value!r}."
ERR_NO_PAIRS = (
    "The counterfactual_consistency penalty compares a row with its counterfactual copy, but the batch has "
    "no pair ids: train on data with a 'pair_id' column (counterfactual augmentation with pair ids, or "
    "fairtune.data.lm_corpus.cda_corpus)."
)
ERR_LM_INPUTS = "For a causal LM the penalty needs input_ids and attention_mask in the batch."


@register("penalty", "counterfactual_consistency")
class CounterfactualConsistency(Penalty):
    """Penalty on the output change between each row and its counterfactual copy (see the module docstring).

    Args:
        weight, warmup_steps: as for every penalty.
        divergence: for causal LMs, ``js`` (Jensen-Shannon, bounded by log 2) or ``symmetric_kl``
            ((KL(p||q) + KL(q||p)) / 2).
    """

    name = "counterfactual_consistency"
    needs_labels = False
    needs_pairs = True
    tasks = ("classification", "causal_lm")

    def __init__(self, weight: float = 1.0, warmup_steps: int = 0, divergence: str = "js"):
        super().__init__(weight, warmup_steps)
        if divergence not in DIVERGENCES:
            raise ValueError(ERR_DIVERGENCE.format(valid=", ".join(DIVERGENCES), value=divergence))
        self.divergence = divergence

    def compute(self, batch: PenaltyBatch) -> Tensor:
        if batch.pair_ids is None:
            raise ValueError(ERR_NO_PAIRS)
        first, second = pair_index(batch.pair_ids)
        zero = batch.logits.sum() * 0.0  # keeps the graph connected when the batch holds no whole pair
        if batch.logits.dim() == 2:
            diff = (batch.logits[first].float() - batch.logits[second].float()).abs()  # (P, C)
            values = diff.mean(1)
        else:
            if first.numel() and (batch.input_ids is None or batch.attention_mask is None):
                raise ValueError(ERR_LM_INPUTS)
            pairs = zip(first.tolist(), second.tolist(), strict=True)
            found = [self._pair_divergence(batch, a, b) for a, b in pairs]
            found = [v for v in found if v is not None]
            values = torch.stack(found) if found else zero.float().new_zeros(0)
        if batch.sync is not None:
            # The mean over the pairs of all processes: their summed values over their summed count, so a
            # process with fewer (or no) pairs weighs as much as its pairs do. The count is connected to the
            # graph only so that both travel in one collective.
            local = torch.stack([values.sum() + zero.float(), zero.float() + values.numel()])
            total, count = batch.sync.sum(local).unbind(0)
            return total / count if bool(count > 0) else total * 0.0
        return values.mean() + zero if values.numel() else zero

    def _pair_divergence(self, batch: PenaltyBatch, a: int, b: int) -> Tensor | None:
        """Mean divergence over the aligned positions of rows ``a`` and ``b``, or None without any."""
        pos_a = torch.nonzero(batch.attention_mask[a]).flatten()  # real token positions, any padding side
        pos_b = torch.nonzero(batch.attention_mask[b]).flatten()
        ids_a, ids_b = batch.input_ids[a, pos_a], batch.input_ids[b, pos_b]
        n = min(len(ids_a), len(ids_b))
        same = (ids_a.flip(0)[:n] == ids_b.flip(0)[:n]).long()
        suffix = int(same.cumprod(0).sum())  # length of the shared suffix
        suffix = min(suffix, n - 1)  # the first token of a sequence has no predicting position
        if suffix <= 0:
            return None
        # Position t predicts token t + 1: the positions predicting the suffix's tokens.
        at_a = pos_a[len(ids_a) - suffix - 1 : len(ids_a) - 1]
        at_b = pos_b[len(ids_b) - suffix - 1 : len(ids_b) - 1]
        log_p = batch.logits[a, at_a].float().log_softmax(-1)  # (L, V)
        log_q = batch.logits[b, at_b].float().log_softmax(-1)
        if self.divergence == "symmetric_kl":
            kl_pq = (log_p.exp() * (log_p - log_q)).sum(-1)
            kl_qp = (log_q.exp() * (log_q - log_p)).sum(-1)
            return ((kl_pq + kl_qp) / 2).mean()
        log_m = torch.logsumexp(torch.stack([log_p, log_q]), 0) - torch.log(torch.tensor(2.0))
        js = 0.5 * (log_p.exp() * (log_p - log_m)).sum(-1) + 0.5 * (log_q.exp() * (log_q - log_m)).sum(-1)
        return js.mean()
