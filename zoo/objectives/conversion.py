"""Schedules that move an autoregressive model to masked diffusion, step by step (chosen in YAML by class_path).

``MaskedDiffusionLM`` asks its schedule for a :class:`Plan` at every training step: the attention mask to use and,
for block diffusion, the block size. The backbone's attention modules are bidirectional (``causal: false``); the
schedule supplies whatever causality remains through the backbone's ``mask=`` argument ((1, 1, T, S) bool, True =
may attend). Two recipes:

``AttentionAnnealing`` (DiffuLLaMA, Gong et al. 2024): the mask is causal ∪ Bernoulli(r), r rising linearly
from 0 to 1 over ``anneal_steps``, after which attention is fully bidirectional::

    r = 0          r = 0.5        r = 1
    ■ · · ·        ■ · ■ ·        ■ ■ ■ ■
    ■ ■ · ·        ■ ■ · ■        ■ ■ ■ ■        ■ may attend   · may not
    ■ ■ ■ ·        ■ ■ ■ ■        ■ ■ ■ ■
    ■ ■ ■ ■        ■ ■ ■ ■        ■ ■ ■ ■

``BlockWarmupStableDecay`` (LLaDA 2.0's warmup-stable-decay over block diffusion): the sequence is cut into
blocks, each noised with its own level t; a block is denoised seeing itself (bidirectionally) and the *clean*
earlier blocks — the block-causal mask (within a block bidirectional, earlier blocks visible). The noisy and clean
copies go through the model together, BD3-LM style, so one pass trains every block. The block size grows through
``warmup_blocks`` to the whole sequence (plain masked diffusion) for ``stable_steps``, then falls to
``decay_block``, the block size used when sampling. For blocks of 2 in a 4-token sequence::

    block_causal_mask         block_diffusion_mask:  keys = noisy 0 1 2 3 | clean 0 1 2 3
    ■ ■ · ·                   queries noisy 0,1             ■ ■ · ·       · · · ·
    ■ ■ · ·                           noisy 2,3             · · ■ ■       ■ ■ · ·
    ■ ■ ■ ■                           clean 0,1             · · · ·       ■ ■ · ·
    ■ ■ ■ ■                           clean 2,3             · · · ·       ■ ■ ■ ■
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from zoo.nn.masks import annealed_mask, block_diffusion_mask


@dataclass
class Plan:
    """What one training step uses.

    Attributes:
        mask: (1, 1, S, S) bool attention mask, True = may attend; ``None`` = every position sees every position.
        block_size: ``None`` for plain masked diffusion over the sequence; otherwise block diffusion: the input is
            the noisy sequence followed by the clean one (S = 2T), and each block draws its own noise level.
    """

    mask: Tensor | None
    block_size: int | None = None

    @property
    def clean_context(self) -> bool:
        return self.block_size is not None


class ConversionSchedule:
    """Base class: :meth:`plan` returns the step's :class:`Plan`, or ``None`` for plain bidirectional attention.

    ``block_diffusion`` tells the objective whether plans may cut the sequence into blocks (the AR shift is not
    supported there); ``final_block`` is the block size a model trained to the schedule's end is block-causal
    with, which its sampler keeps (``None``: bidirectional)."""

    block_diffusion: bool = False

    @property
    def final_block(self) -> int | None:
        return None

    def plan(self, step: int, seq_len: int, *, device, generator: torch.Generator | None = None) -> Plan | None:
        raise NotImplementedError


class AttentionAnnealing(ConversionSchedule):
    """Causal ∪ Bernoulli(r) attention with ``r = step / anneal_steps`` (one random mask per step, shared by the
    batch), then fully bidirectional (DiffuLLaMA's attention-mask annealing).

    Args:
        anneal_steps: optimizer steps over which r rises linearly from 0 to 1.
    """

    def __init__(self, *, anneal_steps: int) -> None:
        if anneal_steps < 1:
            raise ValueError(f"AttentionAnnealing anneal_steps={anneal_steps} must be ≥ 1")
        self.anneal_steps = anneal_steps

    def rate(self, step: int) -> float:
        return min(step / self.anneal_steps, 1.0)

    def plan(self, step: int, seq_len: int, *, device, generator: torch.Generator | None = None) -> Plan | None:
        r = self.rate(step)
        return None if r >= 1 else Plan(annealed_mask(seq_len, r, device=device, generator=generator))


class BlockWarmupStableDecay(ConversionSchedule):
    """Block diffusion whose block size warms up to the whole sequence, stays there, then decays (LLaDA 2.0).

    Args:
        warmup_blocks: block sizes of the warmup phase, in order, each for an equal share of ``warmup_steps``
            (LLaDA 2.0: 1, 4, 32, 64 before the full sequence; block 1 is next-token prediction).
        warmup_steps: steps of the warmup phase.
        stable_steps: steps of plain masked diffusion over the whole sequence.
        decay_block: block size after the stable phase (LLaDA 2.0: 32); ``None`` keeps the whole sequence.
    """

    block_diffusion = True

    def __init__(
        self, *, warmup_blocks: list[int], warmup_steps: int, stable_steps: int, decay_block: int | None = None
    ) -> None:
        if not warmup_blocks or any(b < 1 for b in warmup_blocks):
            raise ValueError(f"BlockWarmupStableDecay warmup_blocks={warmup_blocks} must be block sizes ≥ 1")
        if warmup_steps < 0 or stable_steps < 0:
            raise ValueError(
                f"BlockWarmupStableDecay warmup_steps={warmup_steps} and stable_steps={stable_steps} must be ≥ 0"
            )
        if decay_block is not None and decay_block < 1:
            raise ValueError(f"BlockWarmupStableDecay decay_block={decay_block} must be ≥ 1 or null")
        self.warmup_blocks, self.warmup_steps = list(warmup_blocks), warmup_steps
        self.stable_steps, self.decay_block = stable_steps, decay_block

    @property
    def final_block(self) -> int | None:
        return self.decay_block

    def block_size(self, step: int, seq_len: int) -> int:
        if step < self.warmup_steps:
            stage = step * len(self.warmup_blocks) // self.warmup_steps
            return min(self.warmup_blocks[stage], seq_len)
        if step < self.warmup_steps + self.stable_steps or self.decay_block is None:
            return seq_len
        return min(self.decay_block, seq_len)

    def plan(self, step: int, seq_len: int, *, device, generator: torch.Generator | None = None) -> Plan | None:
        size = self.block_size(step, seq_len)
        return None if size >= seq_len else Plan(block_diffusion_mask(seq_len, size, device=device), size)
