"""Samplers for masked-diffusion models: the answer starts as all mask tokens and is unmasked over steps.

``low_confidence_remasking`` (LLaDA, Nie et al. 2025): the answer is cut into blocks generated left to right
(semi-autoregressive); each block gets ``steps / n_blocks`` steps, and each step predicts every masked position
and keeps the most confident predictions of the current block, as many as the step's share of the block (the
block's length spread as evenly as possible over its steps, the remainder to the first ones); the others stay
masked ("remasked") for the next step::

    prompt [M][M][M][M] | [M][M][M][M]      block 1, step 1: keep the 2 most confident
    prompt  a [M] c [M] | [M][M][M][M]      block 1, step 2: the other 2
    prompt  a  b  c  d  | [M][M][M][M]      block 2 …

``confidence_threshold`` (Fast-dLLM's parallel decoding, Wu et al. 2025): each step keeps every masked position of
the current block whose top probability is at least ``threshold``, and at least the single most confident one, so
easy stretches are unmasked many tokens per forward pass and the number of passes adapts to the text.

Both take any ``backbone(ids (B, S)) -> logits (B, S, V)`` with bidirectional attention and the model's
``mask_id``, and return the ids and the number of forward passes.

These two run the whole sequence through the model at every step (no KV cache): with bidirectional attention the
prompt's keys and values depend on the still-masked positions after it and change at every step.
:func:`zoo.generation.fast_diffusion.diffusion_generate` adds Fast-dLLM's block-wise approximate KV cache, an exact
cache for block-causal models, and batches of prompts of different lengths.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

REMASKING = ("low_confidence", "random")


@dataclass
class DiffusionOutput:
    """``tokens`` (B, P + gen_length): the (left-padded) prompt followed by the answer; ``forward_passes``: backbone
    calls made; ``cache``: which KV cache the sampler used."""

    tokens: Tensor
    forward_passes: int
    prompt_length: int
    cache: str = "none"  # the KV cache used: none, prefix, dual (approximate) or exact (block-causal models)

    @property
    def answer(self) -> Tensor:  # (B, gen_length)
        return self.tokens[:, self.prompt_length :]


def _check(
    backbone: Callable[[Tensor], Tensor],
    prompt: Tensor,
    *,
    mask_id: int,
    vocab_size: int | None,
    gen_length: int,
    block_length: int,
    temperature: float,
    shift: bool,
) -> int:
    """Validate the arguments shared by both samplers; return the number of blocks."""
    vocab_size = vocab_size if vocab_size is not None else getattr(backbone, "vocab_size", None)
    if mask_id < 0 or (vocab_size is not None and mask_id >= vocab_size):
        raise ValueError(
            f"mask_id={mask_id} is outside the model's vocabulary [0, {vocab_size}): use the id the model was "
            "trained with (the checkpoint's hyper-parameter mask_id)"
        )
    if prompt.dim() != 2:
        raise ValueError(f"prompt must be (batch, length) token ids, got shape {tuple(prompt.shape)}")
    if shift and prompt.shape[1] == 0:
        raise ValueError("shift=True predicts each token from the position before it: give a non-empty prompt")
    if gen_length < 1 or block_length < 1:
        raise ValueError(f"gen_length={gen_length} and block_length={block_length} must be ≥ 1")
    if gen_length % block_length:
        raise ValueError(
            f"gen_length={gen_length} is not divisible by block_length={block_length}: choose a block length among "
            f"{[d for d in range(1, gen_length + 1) if gen_length % d == 0]}"
        )
    if not (math.isfinite(temperature) and temperature >= 0):  # NaN fails every comparison: asked the other way
        raise ValueError(f"temperature={temperature} must be a finite number ≥ 0 (0 = greedy)")
    return gen_length // block_length


def _predict(
    backbone: Callable[[Tensor], Tensor],
    x: Tensor,  # (B, S)
    lo: int,
    hi: int,
    *,
    mask_id: int,
    eos_id: int | None,
    temperature: float,
    shift: bool,
    generator: torch.Generator | None,
) -> tuple[Tensor, Tensor]:
    """One forward pass: the prediction at each position ``lo:hi`` (the current block) and its confidence (its
    softmax probability), (B, hi - lo) each; only the block is scored, as only it is unmasked.

    With ``temperature > 0`` the prediction is sampled by the Gumbel-max trick on ``logits / temperature`` in
    float64, as LLaDA does (low-precision Gumbel noise lowers the quality); the confidence is always the probability
    under the plain logits. The mask token is never predicted, unless it doubles as EOS (Dhara reuses GPT-2's
    end-of-text as its mask).
    """
    logits = backbone(x)  # (B, S, V)
    # with shift, the logits at i predict token i + 1: the block's tokens are scored one position earlier
    logits = logits[:, lo - 1 : hi - 1] if shift else logits[:, lo:hi]  # (B, L_block, V)
    return _choose(logits, mask_id=mask_id, eos_id=eos_id, temperature=temperature, generator=generator)


def _choose(
    logits: Tensor,  # (B, L, V): the scores of the positions to predict
    *,
    mask_id: int,
    eos_id: int | None,
    temperature: float,
    generator: torch.Generator | None,
) -> tuple[Tensor, Tensor]:
    """The prediction at each position and its confidence, (B, L) each (see :func:`_predict`)."""
    if not 0 <= mask_id < logits.shape[-1]:
        raise ValueError(f"mask_id={mask_id} is outside the model's vocabulary of {logits.shape[-1]}")
    logits = logits.double()
    if mask_id != eos_id:
        logits[..., mask_id] = float("-inf")
    if temperature > 0:
        u = torch.rand(logits.shape, dtype=logits.dtype, device=logits.device, generator=generator)
        gumbel = -torch.log(-torch.log(u.clamp_min(1e-300)))
        choice = (logits / temperature + gumbel).argmax(dim=-1)  # (B, L)
    else:
        choice = logits.argmax(dim=-1)  # (B, L)
    confidence = logits.softmax(dim=-1).gather(-1, choice[..., None]).squeeze(-1)  # (B, L)
    return choice, confidence


def _unmask(x: Tensor, masked: Tensor, lo: int, hi: int, choice: Tensor, keep: Tensor) -> None:
    """Write the kept predictions into the block, in place. choice, keep: (B, hi - lo)."""
    x[:, lo:hi] = torch.where(keep, choice, x[:, lo:hi])
    masked[:, lo:hi] &= ~keep


def _ended(answer: Tensor, masked: Tensor, eos_id: int) -> bool:
    """Every row has an unmasked EOS with no mask before it: the answer's end is decided."""
    is_eos = (answer == eos_id) & ~masked  # (B, L)
    if not is_eos.any(dim=1).all():
        return False
    first = is_eos.float().argmax(dim=1)  # (B,) first EOS
    before = torch.arange(answer.shape[1], device=answer.device)[None] < first[:, None]
    return not (masked & before).any()


def _finish(x: Tensor, masked: Tensor, *, start: int, hi: int, eos_id: int | None, stop_at_eos: bool) -> bool:
    """After a block: with ``stop_at_eos``, end early (the rest becomes EOS) once every answer has ended."""
    if not (stop_at_eos and eos_id is not None and _ended(x[:, start:hi], masked[:, start:hi], eos_id)):
        return False
    x[:, hi:] = eos_id
    masked[:, hi:] = False
    return True


def _after_eos(x: Tensor, start: int, eos_id: int | None) -> Tensor:
    """Everything after an answer's first EOS becomes EOS (the answer has ended)."""
    if eos_id is not None:
        answer = x[:, start:]
        answer[(answer == eos_id).cumsum(dim=1) > 0] = eos_id
    return x


def _start(prompt: Tensor, gen_length: int, mask_id: int) -> tuple[Tensor, Tensor]:
    B, P = prompt.shape
    x = torch.cat([prompt, prompt.new_full((B, gen_length), mask_id)], dim=1)  # (B, P + L)
    masked = torch.zeros_like(x, dtype=torch.bool)
    masked[:, P:] = True
    return x, masked


@torch.no_grad()
def low_confidence_remasking(
    backbone: Callable[[Tensor], Tensor],
    prompt: Tensor,  # (B, P)
    *,
    mask_id: int,
    vocab_size: int | None = None,
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
    """LLaDA's semi-autoregressive sampler with low-confidence (or random) remasking.

    Args:
        backbone: ``backbone(ids (B, S)) -> logits (B, S, V)`` with bidirectional attention.
        prompt: prompt ids, the same length in every row.
        mask_id: the model's mask token.
        vocab_size: checks ``mask_id`` before the first pass (default: ``backbone.vocab_size`` when it has one).
        gen_length: tokens to generate; a multiple of ``block_length``.
        block_length: tokens per semi-autoregressive block (``block_length = gen_length``: one fully parallel block).
        steps: unmasking steps in total, divided equally among the blocks; a multiple of the number of blocks. A
            step that would unmask nothing (more steps than tokens in a block) is skipped, so ``forward_passes`` ≤
            ``steps``.
        temperature: 0 = greedy; else Gumbel-max sampling at this temperature.
        remasking: ``low_confidence`` keeps the most probable predictions; ``random`` keeps random ones.
        eos_id: end-of-text id; everything after an answer's first EOS becomes EOS.
        stop_at_eos: skip the remaining blocks once every row's answer has ended (an EOS with no mask before it).
        shift: the model predicts token ``i+1`` at position ``i`` (``MaskedDiffusionLM.shift``).
        generator: random source (sampling and ``random`` remasking).
    """
    n_blocks = _check(backbone, prompt, mask_id=mask_id, vocab_size=vocab_size, gen_length=gen_length,
                      block_length=block_length, temperature=temperature, shift=shift)  # fmt: skip
    if steps < n_blocks or steps % n_blocks:
        raise ValueError(
            f"steps={steps} is not a multiple of the {n_blocks} blocks (gen_length={gen_length} / "
            f"block_length={block_length}): use e.g. steps={n_blocks * max(1, steps // n_blocks)}"
        )
    if remasking not in REMASKING:
        raise ValueError(f"remasking={remasking!r} is unknown; choose one of {list(REMASKING)}")
    P = prompt.shape[1]
    x, masked = _start(prompt, gen_length, mask_id)
    per_block = steps // n_blocks
    base, extra = divmod(block_length, per_block)
    quota = [base + (i < extra) for i in range(per_block)]  # tokens to unmask at each step of a block
    passes = 0
    for block in range(n_blocks):
        lo, hi = P + block * block_length, P + (block + 1) * block_length
        for k in quota:
            if k == 0:
                continue
            choice, confidence = _predict(backbone, x, lo, hi, mask_id=mask_id, eos_id=eos_id,
                                          temperature=temperature, shift=shift, generator=generator)  # fmt: skip
            passes += 1
            if remasking == "random":
                confidence = torch.rand(confidence.shape, dtype=confidence.dtype, device=x.device, generator=generator)
            still = masked[:, lo:hi]  # (B, L_block)
            picked = confidence.masked_fill(~still, -1.0).topk(k, dim=1).indices  # (B, k): confidences are ≥ 0
            _unmask(x, masked, lo, hi, choice, torch.zeros_like(still).scatter_(1, picked, True) & still)
        if _finish(x, masked, start=P, hi=hi, eos_id=eos_id, stop_at_eos=stop_at_eos):
            break
    assert not masked.any()
    return DiffusionOutput(_after_eos(x, P, eos_id), passes, P)


@torch.no_grad()
def confidence_threshold(
    backbone: Callable[[Tensor], Tensor],
    prompt: Tensor,  # (B, P)
    *,
    mask_id: int,
    vocab_size: int | None = None,
    gen_length: int = 128,
    block_length: int = 32,
    threshold: float = 0.9,
    temperature: float = 0.0,
    eos_id: int | None = None,
    stop_at_eos: bool = True,
    shift: bool = False,
    generator: torch.Generator | None = None,
) -> DiffusionOutput:
    """Parallel decoding: each step unmasks every masked position of the current block whose confidence is at
    least ``threshold``, and at least the most confident one per row, so a block takes between 1 and
    ``block_length`` passes. ``threshold`` in (0, 1]: near 0 a block per pass, 1 about one token per pass. Other
    arguments as :func:`low_confidence_remasking`."""
    n_blocks = _check(backbone, prompt, mask_id=mask_id, vocab_size=vocab_size, gen_length=gen_length,
                      block_length=block_length, temperature=temperature, shift=shift)  # fmt: skip
    if not 0 < threshold <= 1:
        raise ValueError(f"threshold={threshold} must be in (0, 1]: e.g. 0.9 (lower is faster and less accurate)")
    P = prompt.shape[1]
    x, masked = _start(prompt, gen_length, mask_id)
    passes = 0
    for block in range(n_blocks):
        lo, hi = P + block * block_length, P + (block + 1) * block_length
        while masked[:, lo:hi].any():
            choice, confidence = _predict(backbone, x, lo, hi, mask_id=mask_id, eos_id=eos_id,
                                          temperature=temperature, shift=shift, generator=generator)  # fmt: skip
            passes += 1
            still = masked[:, lo:hi]  # (B, L_block)
            confidence = confidence.masked_fill(~still, -1.0)
            best = torch.zeros_like(still).scatter_(1, confidence.argmax(dim=1, keepdim=True), True)
            _unmask(x, masked, lo, hi, choice, ((confidence >= threshold) | best) & still)
        if _finish(x, masked, start=P, hi=hi, eos_id=eos_id, stop_at_eos=stop_at_eos):
            break
    assert not masked.any()
    return DiffusionOutput(_after_eos(x, P, eos_id), passes, P)
