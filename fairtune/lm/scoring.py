"""Log-likelihood scoring of text under a causal LM, in padded batches.

Every score here is ``sum_i log p(target_i | context, target_<i)`` over the target tokens of a
(context, target) pair, as lm-eval-harness's ``loglikelihood`` computes it:

* a whole sentence is the target of a one-token context, the tokenizer's BOS token, so its first token is
  scored too (lm-eval-harness's prefix token; bias-bench conditions GPT-2's first token on
  ``<|endoftext|>`` the same way). A tokenizer without BOS uses its EOS token, as lm-eval-harness does.
* a continuation is tokenized as lm-eval-harness does: ``context + continuation`` is encoded whole and the
  tokens after the context's own encoding are the target, so a token merged across the boundary is not
  split differently from how the model would see the text.

Padding is on the right and masked out; sequences are sorted by length so a batch carries little padding;
the device follows the model. Scores are float64 numpy arrays in the input order.

Inside :func:`sharded_scoring` on several processes, each process scores every W-th sequence of that
length order (the same number on every process, so FSDP's collective forward passes stay in step) and the
scores are all-gathered: every process returns all N scores, computed once.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

ERR_NO_PREFIX_TOKEN = (
    "the tokenizer has neither a BOS nor an EOS token, so the first token of a sentence cannot be scored; "
    "set tokenizer.bos_token."
)
ERR_EMPTY_TARGET = "text #{index} has no tokens to score: {text!r}."
ERR_LENGTHS = "got {contexts} contexts but {continuations} continuations; they must pair up one to one."

_SHARDED = contextvars.ContextVar("fairtune_sharded_scoring", default=False)


@contextlib.contextmanager
def sharded_scoring() -> Iterator[None]:
    """Within this block, :func:`score_pairs` splits its sequences across the initialised process group
    and gathers the scores. Every process must enter it and score the same pairs; one process: no effect."""
    token = _SHARDED.set(True)
    try:
        yield
    finally:
        _SHARDED.reset(token)


def _world() -> tuple[int, int]:
    """(world size, rank) when sharded scoring is on and a process group is running, else (1, 0)."""
    import torch.distributed as dist

    if _SHARDED.get() and dist.is_available() and dist.is_initialized():
        return dist.get_world_size(), dist.get_rank()
    return 1, 0


@dataclass(frozen=True)
class TokenScores:
    """Log-likelihoods of N targets.

    Attributes:
        sum: (N,) float64, summed natural-log probability of each target's tokens.
        n_tokens: (N,) int64, number of target tokens.
    """

    sum: np.ndarray
    n_tokens: np.ndarray

    @property
    def mean(self) -> np.ndarray:
        """(N,) mean token log-probability (the log of the geometric-mean token probability)."""
        return self.sum / self.n_tokens


def prefix_token_id(tokenizer: PreTrainedTokenizerBase) -> int:
    """The token that conditions a sentence's first token: BOS, or EOS when there is no BOS."""
    for token_id in (tokenizer.bos_token_id, tokenizer.eos_token_id):
        if token_id is not None:
            return int(token_id)
    raise ValueError(ERR_NO_PREFIX_TOKEN)


def _encode(tokenizer: PreTrainedTokenizerBase, texts: Sequence[str]) -> list[list[int]]:
    """Token ids of each text, without special tokens (the prefix is added explicitly)."""
    if not texts:
        return []
    return [list(ids) for ids in tokenizer(list(texts), add_special_tokens=False)["input_ids"]]


def sentence_pairs(
    tokenizer: PreTrainedTokenizerBase, texts: Sequence[str], max_length: int | None = None
) -> list[tuple[list[int], list[int]]]:
    """(context, target) token ids for whole sentences: context ``[BOS]``, target the sentence's tokens,
    cut to ``max_length - 1`` tokens when ``max_length`` is given."""
    prefix = [prefix_token_id(tokenizer)]
    pairs = []
    for i, ids in enumerate(_encode(tokenizer, texts)):
        if not ids:
            raise ValueError(ERR_EMPTY_TARGET.format(index=i, text=texts[i]))
        pairs.append((prefix, ids[: max_length - 1] if max_length else ids))
    return pairs


def continuation_pairs(
    tokenizer: PreTrainedTokenizerBase, contexts: Sequence[str], continuations: Sequence[str]
) -> list[tuple[list[int], list[int]]]:
    """(context, target) token ids for continuations of contexts, split as lm-eval-harness splits them.

    Trailing spaces of a context move to its continuation (``"Q: x A: " + "y"`` -> ``"Q: x A:" + " y"``),
    since BPE tokenizers attach a space to the word after it. An empty context is the prefix token.
    """
    if len(contexts) != len(continuations):
        raise ValueError(ERR_LENGTHS.format(contexts=len(contexts), continuations=len(continuations)))
    prefix = [prefix_token_id(tokenizer)]
    moved = [
        (c.rstrip(" "), " " * (len(c) - len(c.rstrip(" "))) + t)
        for c, t in zip(contexts, continuations, strict=True)
    ]
    wholes = _encode(tokenizer, [c + t for c, t in moved])
    heads = _encode(tokenizer, [c for c, _ in moved])
    pairs = []
    for i, (whole, head) in enumerate(zip(wholes, heads, strict=True)):
        target = whole[len(head) :]
        if not target:
            raise ValueError(ERR_EMPTY_TARGET.format(index=i, text=continuations[i]))
        pairs.append((head or prefix, target))
    return pairs


def score_pairs(
    model: PreTrainedModel,
    pairs: Sequence[tuple[Sequence[int], Sequence[int]]],
    pad_token_id: int,
    batch_size: int = 16,
    progress: bool = False,
    desc: str = "scoring",
) -> TokenScores:
    """Summed log-probability of each target given its context, in batches of ``batch_size`` sequences.

    Args:
        model: a causal LM returning ``logits`` (B, T, V); it is not switched to eval mode here.
        pairs: N (context ids, target ids); context non-empty.
        pad_token_id: id written into padding (masked, so its value does not matter).

    Returns:
        TokenScores with ``sum`` (N,) and ``n_tokens`` (N,).
    """
    import torch
    from tqdm.auto import tqdm

    device = next(model.parameters()).device
    n = len(pairs)
    sums = np.zeros(n, dtype=np.float64)
    counts = np.array([len(t) for _, t in pairs], dtype=np.int64)
    # Longest first: the first batch shows at once whether memory suffices, and batches carry little padding.
    order = sorted(range(n), key=lambda i: -(len(pairs[i][0]) + len(pairs[i][1])))
    world, rank = _world()
    if world > 1 and n:
        # Every process takes the same count (the last sequence repeated to fill), a stride of the length
        # order, so the shares are about equally long.
        order += order[-1:] * (-n % world)
    mine = order[rank::world]
    local = np.zeros(len(mine), dtype=np.float64)
    starts = range(0, len(mine), batch_size)
    with torch.inference_mode():
        for start in tqdm(starts, desc=desc, disable=not progress or len(starts) < 2, leave=False):
            rows = mine[start : start + batch_size]
            local[start : start + len(rows)] = _score_batch(
                model, [pairs[i] for i in rows], pad_token_id, device
            )
    if world == 1:
        sums[mine] = local
    elif n:
        import torch.distributed as dist

        share = torch.from_numpy(local).to(device)
        shares = [torch.empty_like(share) for _ in range(world)]
        dist.all_gather(shares, share)
        for r, scores in enumerate(shares):
            sums[order[r::world]] = scores.cpu().numpy()
    return TokenScores(sum=sums, n_tokens=counts)


def _score_batch(
    model: PreTrainedModel,
    pairs: Sequence[tuple[Sequence[int], Sequence[int]]],
    pad_token_id: int,
    device: Any,
) -> np.ndarray:
    """(B,) float64 summed target log-probabilities of one right-padded batch."""
    import torch

    seqs = [list(context) + list(target) for context, target in pairs]
    width = max(len(s) for s in seqs) - 1  # the last token is only ever a label
    inputs = torch.full((len(seqs), width), pad_token_id, dtype=torch.long)
    labels = torch.zeros((len(seqs), width), dtype=torch.long)
    scored = torch.zeros((len(seqs), width), dtype=torch.bool)
    for b, ((context, _), seq) in enumerate(zip(pairs, seqs, strict=True)):
        inputs[b, : len(seq) - 1] = torch.tensor(seq[:-1])
        labels[b, : len(seq) - 1] = torch.tensor(seq[1:])
        # Position p predicts token p + 1; the target starts at token len(context).
        scored[b, len(context) - 1 : len(seq) - 1] = True
    attention = (torch.arange(width)[None, :] < torch.tensor([len(s) - 1 for s in seqs])[:, None]).long()
    # use_cache=False: one pass per batch, so a key/value cache would only cost memory.
    logits = model(input_ids=inputs.to(device), attention_mask=attention.to(device), use_cache=False).logits
    logits = logits.float()  # (B, T, V); bf16 log-softmax would round the sums
    token_logp = logits.gather(-1, labels.to(device)[..., None])[..., 0] - logits.logsumexp(-1)
    token_logp = token_logp.masked_fill(~scored.to(device), 0.0)
    return token_logp.double().sum(-1).cpu().numpy()


def score_sentences(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    texts: Sequence[str],
    batch_size: int = 16,
    progress: bool = False,
    desc: str = "scoring sentences",
    max_length: int | None = None,
) -> TokenScores:
    """Log-likelihood of each whole text, its first token conditioned on BOS (EOS without BOS)."""
    pairs = sentence_pairs(tokenizer, texts, max_length)
    return score_pairs(model, pairs, _pad_id(tokenizer), batch_size, progress, desc)


def score_continuations(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    contexts: Sequence[str],
    continuations: Sequence[str],
    batch_size: int = 16,
    progress: bool = False,
    desc: str = "scoring continuations",
) -> TokenScores:
    """Log-likelihood of each continuation given its context (lm-eval-harness's ``loglikelihood``)."""
    pairs = continuation_pairs(tokenizer, contexts, continuations)
    return score_pairs(model, pairs, _pad_id(tokenizer), batch_size, progress, desc)


def _pad_id(tokenizer: PreTrainedTokenizerBase) -> int:
    """Any valid id serves as padding, which is masked: the pad token, else the prefix token."""
    return int(tokenizer.pad_token_id) if tokenizer.pad_token_id is not None else prefix_token_id(tokenizer)
