"""Tiny causal LMs and an offline word-level tokenizer for the LM benchmark tests, plus a hand computation
of log-probabilities (a plain loop over tokens and vocabulary, no batching, no padding, no torch softmax)."""

from __future__ import annotations

import math
import re
from collections.abc import Iterable

import torch
from tokenizers import Tokenizer
from tokenizers.models import WordLevel
from tokenizers.pre_tokenizers import Whitespace
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

SPECIAL = ["[PAD]", "[UNK]", "[BOS]", "[EOS]"]


def word_tokenizer(texts: Iterable[str], bos: bool = True) -> PreTrainedTokenizerFast:
    """A word-level tokenizer whose vocabulary is the words and punctuation of ``texts``."""
    words = sorted({w for t in texts for w in re.findall(r"\w+|[^\w\s]+", t)})
    vocab = {w: i for i, w in enumerate(SPECIAL + words)}
    core = Tokenizer(WordLevel(vocab, unk_token="[UNK]"))
    core.pre_tokenizer = Whitespace()
    tok = PreTrainedTokenizerFast(
        tokenizer_object=core,
        unk_token="[UNK]",
        bos_token="[BOS]" if bos else None,
        eos_token="[EOS]",
        pad_token="[PAD]",
    )
    return tok


def tiny_model(vocab_size: int, kind: str = "gpt2", seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    if kind == "gpt2":
        config = GPT2Config(vocab_size=vocab_size, n_positions=256, n_embd=16, n_layer=2, n_head=2)
        model = GPT2LMHeadModel(config)
    else:
        config = LlamaConfig(
            vocab_size=vocab_size,
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            num_key_value_heads=2,
            max_position_embeddings=256,
        )
        model = LlamaForCausalLM(config)
    return model.eval()


def hand_log_probs(model: torch.nn.Module, context: list[int], target: list[int]) -> list[float]:
    """log p(target_i | context, target_<i) for each target token, one unpadded forward pass and a manual
    log-softmax in float64 Python arithmetic."""
    ids = context + target
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids])).logits[0].double().tolist()
    out = []
    for k, token in enumerate(target):
        row = logits[len(context) + k - 1]  # the position before the token predicts it
        top = max(row)
        log_z = top + math.log(sum(math.exp(x - top) for x in row))
        out.append(row[token] - log_z)
    return out


def hand_sentence(model: torch.nn.Module, tok: PreTrainedTokenizerFast, text: str) -> list[float]:
    prefix = tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id
    return hand_log_probs(model, [prefix], tok.encode(text, add_special_tokens=False))


def hand_continuation(
    model: torch.nn.Module, tok: PreTrainedTokenizerFast, context: str, cont: str
) -> list[float]:
    head = tok.encode(context, add_special_tokens=False)
    whole = tok.encode(context + cont, add_special_tokens=False)
    assert whole[: len(head)] == head
    return hand_log_probs(model, head, whole[len(head) :])
