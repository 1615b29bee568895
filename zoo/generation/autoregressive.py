"""Autoregressive sampling with a KV cache: the prompt is read once (prefill), then one token per forward pass.

The logits filters are a few lines each and written here so that sampling needs nothing beyond torch.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from zoo.nn.transformer import Transformer


def top_k_filter(logits: Tensor, k: int) -> Tensor:  # (..., V): all but the k largest set to -inf
    if k <= 0 or k >= logits.shape[-1]:
        return logits
    kth = logits.topk(k, dim=-1).values[..., -1:]
    return logits.masked_fill(logits < kth, float("-inf"))


def top_p_filter(logits: Tensor, p: float) -> Tensor:  # (..., V): keep the smallest set with probability ≥ p
    if p >= 1.0:
        return logits
    sorted_logits, order = logits.sort(dim=-1, descending=True)
    cumulative = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
    drop = cumulative - sorted_logits.softmax(dim=-1) >= p  # mass before this token already reaches p
    return logits.masked_fill(drop.scatter(-1, order, drop), float("-inf"))


@dataclass
class Generation:
    tokens: list[int]  # the new tokens (without the prompt)
    forward_passes: int


@torch.no_grad()
def generate(
    backbone: Transformer,
    prompt: list[int],
    *,
    max_new_tokens: int = 100,
    temperature: float = 0.0,
    top_k: int = 0,
    top_p: float = 1.0,
    eos_id: int | None = None,
    stop: Callable[[list[int]], bool] | None = None,
    on_token: Callable[[int], None] | None = None,
    generator: torch.Generator | None = None,
) -> Generation:
    """Sample up to ``max_new_tokens`` after ``prompt``.

    Args:
        backbone: a causal :class:`zoo.nn.Transformer`.
        prompt: token ids (at least one).
        temperature: 0 = greedy, else softmax sampling at this temperature after the filters.
        top_k: keep the k most likely tokens (0 = all).
        top_p: keep the smallest set of tokens whose probability reaches p (1 = all).
        eos_id: stop after this token.
        stop: called with the new tokens after each step; True stops (e.g. a stop string was produced).
        on_token: called with each new token as it is produced (streaming).
        generator: random source for sampling.
    """
    if not prompt:
        raise ValueError("generate needs a non-empty prompt (start with the end-of-text token for none)")
    if len(prompt) + max_new_tokens > backbone.max_seq_len:
        raise ValueError(
            f"prompt of {len(prompt)} tokens + max_new_tokens={max_new_tokens} exceeds the model's "
            f"max_seq_len={backbone.max_seq_len}: lower max_new_tokens or shorten the prompt"
        )
    device = backbone.embed.weight.device
    cache = backbone.new_cache(1, len(prompt) + max_new_tokens)
    logits = backbone(torch.tensor([prompt], device=device), cache=cache)[0, -1]  # prefill
    passes, new = 1, []
    for _ in range(max_new_tokens):
        if temperature > 0:
            scores = top_p_filter(top_k_filter(logits.float() / temperature, top_k), top_p)
            token = int(torch.multinomial(scores.softmax(-1), 1, generator=generator))
        else:
            token = int(logits.argmax())
        new.append(token)
        if on_token is not None:
            on_token(token)
        if token == eos_id or (stop is not None and stop(new)) or len(new) == max_new_tokens:
            break
        logits = backbone(torch.tensor([[token]], device=device), cache=cache)[0, -1]
        passes += 1
    return Generation(new, passes)
