"""Samplers for masked-diffusion models: the answer starts as all mask tokens and is unmasked over steps.

``low_confidence_remasking`` (LLaDA, Nie et al. 2025): the answer is cut into blocks generated left to right
(semi-autoregressive); each block gets ``steps / n_blocks`` steps, and each step predicts every masked
position and keeps the most confident predictions, as many as the step's share of the block::

    prompt [M][M][M][M] | [M][M][M][M]      block 1, step 1: keep the 2 most confident
    prompt  a [M] c [M] | [M][M][M][M]      block 1, step 2: the other 2
    prompt  a  b  c  d  | [M][M][M][M]      block 2 …

``confidence_threshold`` (Fast-dLLM style parallel decoding): each step keeps every masked position of the
current block whose top probability is at least ``threshold`` (and at least the single most confident one),
so easy stretches are unmasked many tokens per forward pass.

No prefix caching: with bidirectional attention the prompt's keys and values depend on the masked positions
after it, so a cached prefix would not be exact.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class DiffusionOutput:
    """``tokens`` (B, P + gen_length) with the prompt; ``forward_passes``: model calls made."""

    tokens: Tensor
    forward_passes: int


def _check(vocab_size: int, mask_id: int, gen_length: int, block_length: int) -> int:
    if not 0 <= mask_id < vocab_size:
        raise ValueError(
            f"mask_id={mask_id} is outside the model's vocabulary of {vocab_size}: use the id the model was trained "
            "with (its checkpoint's hyper-parameter mask_id)"
        )
    if gen_length < 1 or block_length < 1:
        raise ValueError(f"gen_length={gen_length} and block_length={block_length} must be ≥ 1")
    if gen_length % block_length:
        raise ValueError(
            f"gen_length={gen_length} is not divisible by block_length={block_length}: choose a block length among "
            f"{[d for d in range(1, gen_length + 1) if gen_length % d == 0]}"
        )
    return gen_length // block_length


def _scores(
    logits: Tensor, temperature: float, generator: torch.Generator | None, forbid: int | None
) -> tuple[Tensor, Tensor]:
    """Predicted tokens and their confidence (softmax probability of the prediction). With temperature > 0 the
    prediction is sampled by the Gumbel-max trick on ``logits / temperature``. ``forbid`` (the mask token, unless
    it doubles as EOS as in Dhara) is never predicted."""
    logits = logits.double()
    if forbid is not None:
        logits[..., forbid] = float("-inf")
    if temperature > 0:
        u = torch.rand(logits.shape, dtype=logits.dtype, device=logits.device, generator=generator)
        choice = (logits / temperature - torch.log(-torch.log(u.clamp_min(1e-20)))).argmax(dim=-1)
    else:
        choice = logits.argmax(dim=-1)
    confidence = logits.softmax(dim=-1).gather(-1, choice[..., None]).squeeze(-1)
    return choice, confidence


def _aligned(logits: Tensor, shift: bool) -> Tensor:  # (B, S, V): row i scores the token at position i
    return torch.cat([logits[:, :1], logits[:, :-1]], dim=1) if shift else logits


def _after_eos(tokens: Tensor, start: int, eos_id: int | None) -> Tensor:
    """Everything after the first generated EOS becomes EOS (the answer has ended)."""
    if eos_id is None:
        return tokens
    answer = tokens[:, start:]
    seen = (answer == eos_id).cumsum(dim=1) > 0
    answer[seen] = eos_id
    return tokens


@torch.no_grad()
def low_confidence_remasking(
    model: Callable[[Tensor], Tensor],
    prompt: Tensor,  # (B, P)
    *,
    mask_id: int,
    vocab_size: int,
    gen_length: int = 128,
    block_length: int = 32,
    steps: int = 128,
    temperature: float = 0.0,
    remasking: str = "low_confidence",
    eos_id: int | None = None,
    stop_at_eos: bool = True,
    shift: bool = False,
    generator: torch.Generator | None = None,
) -> DiffusionOutput:
    """LLaDA's semi-autoregressive sampler.

    Args:
        model: ``model(ids (B, S)) -> logits (B, S, V)``, bidirectional.
        prompt: prompt ids, the same length in every row.
        mask_id, vocab_size: the model's mask token and vocabulary size.
        gen_length: tokens to generate; a multiple of ``block_length``.
        block_length: tokens per semi-autoregressive block (``gen_length`` = one block, fully parallel).
        steps: forward passes in total; a multiple of the number of blocks.
        temperature: 0 = greedy; else Gumbel sampling at this temperature.
        remasking: ``low_confidence`` keeps the most probable predictions; ``random`` keeps random ones.
        eos_id: end-of-text id; the answer ends at its first EOS.
        stop_at_eos: stop after a block once every row has produced EOS and no mask precedes it.
        shift: the model predicts token ``i+1`` at position ``i`` (``MaskedDiffusionLM.shift``).
        generator: random source (sampling and ``random`` remasking).
    """
    n_blocks = _check(vocab_size, mask_id, gen_length, block_length)
    if steps < n_blocks or steps % n_blocks:
        raise ValueError(
            f"steps={steps} is not a multiple of the {n_blocks} blocks (gen_length={gen_length} / "
            f"block_length={block_length}): use e.g. steps={n_blocks * max(1, steps // n_blocks)}"
        )
    if remasking not in ("low_confidence", "random"):
        raise ValueError(f"remasking={remasking!r} must be 'low_confidence' or 'random'")
    B, P = prompt.shape
    x = torch.cat([prompt, torch.full((B, gen_length), mask_id, dtype=prompt.dtype, device=prompt.device)], dim=1)
    masked = torch.zeros_like(x, dtype=torch.bool)
    masked[:, P:] = True
    per_block = steps // n_blocks
    passes = 0
    for block in range(n_blocks):
        lo, hi = P + block * block_length, P + (block + 1) * block_length
        # tokens to unmask at each step of this block: as even as possible, the remainder first
        base, extra = divmod(block_length, per_block)
        quota = [base + (i < extra) for i in range(per_block)]
        for k in quota:
            if k == 0:
                continue
            logits = _aligned(model(x), shift)
            passes += 1
            choice, confidence = _scores(logits, temperature, generator, None if mask_id == eos_id else mask_id)
            if remasking == "random":
                confidence = torch.rand(confidence.shape, device=x.device, generator=generator, dtype=confidence.dtype)
            eligible = masked.clone()
            eligible[:, :lo] = False
            eligible[:, hi:] = False
            confidence = confidence.masked_fill(~eligible, -1.0)
            picked = confidence.topk(k, dim=1).indices  # (B, k)
            keep = torch.zeros_like(masked).scatter_(1, picked, True) & eligible
            x = torch.where(keep, choice, x)
            masked &= ~keep
        if stop_at_eos and eos_id is not None and _ended(x[:, P:hi], masked[:, P:hi], eos_id):
            x[:, hi:] = eos_id
            masked[:, hi:] = False
            break
    return DiffusionOutput(_after_eos(x, P, eos_id), passes)


def _ended(answer: Tensor, masked: Tensor, eos_id: int) -> bool:
    """Every row has an EOS with no mask before it."""
    is_eos = (answer == eos_id) & ~masked
    first = torch.where(is_eos.any(dim=1), is_eos.float().argmax(dim=1), torch.full_like(is_eos[:, 0], -1).long())
    if (first < 0).any():
        return False
    before = torch.arange(answer.shape[1], device=answer.device)[None] < first[:, None]
    return not (masked & before).any()


@torch.no_grad()
def confidence_threshold(
    model: Callable[[Tensor], Tensor],
    prompt: Tensor,  # (B, P)
    *,
    mask_id: int,
    vocab_size: int,
    gen_length: int = 128,
    block_length: int = 32,
    threshold: float = 0.9,
    temperature: float = 0.0,
    eos_id: int | None = None,
    stop_at_eos: bool = True,
    shift: bool = False,
    generator: torch.Generator | None = None,
) -> DiffusionOutput:
    """Parallel decoding: per step, unmask every position of the current block whose confidence ≥ ``threshold``
    (at least the most confident one per row). Arguments as :func:`low_confidence_remasking`."""
    n_blocks = _check(vocab_size, mask_id, gen_length, block_length)
    if not 0 < threshold <= 1:
        raise ValueError(f"threshold={threshold} must be in (0, 1], e.g. 0.9")
    B, P = prompt.shape
    x = torch.cat([prompt, torch.full((B, gen_length), mask_id, dtype=prompt.dtype, device=prompt.device)], dim=1)
    masked = torch.zeros_like(x, dtype=torch.bool)
    masked[:, P:] = True
    passes = 0
    for block in range(n_blocks):
        lo, hi = P + block * block_length, P + (block + 1) * block_length
        while masked[:, lo:hi].any():
            logits = _aligned(model(x), shift)
            passes += 1
            choice, confidence = _scores(logits, temperature, generator, None if mask_id == eos_id else mask_id)
            eligible = masked.clone()
            eligible[:, :lo] = False
            eligible[:, hi:] = False
            confidence = confidence.masked_fill(~eligible, -1.0)
            best = torch.zeros_like(masked).scatter_(1, confidence.argmax(dim=1, keepdim=True), True)
            keep = ((confidence >= threshold) | best) & eligible
            x = torch.where(keep, choice, x)
            masked &= ~keep
        if stop_at_eos and eos_id is not None and _ended(x[:, P:hi], masked[:, P:hi], eos_id):
            x[:, hi:] = eos_id
            masked[:, hi:] = False
            break
    return DiffusionOutput(_after_eos(x, P, eos_id), passes)
