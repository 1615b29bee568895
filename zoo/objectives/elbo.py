"""Monte-Carlo ELBO of an answer given a prompt, for scoring masked-diffusion models (LLaDA, Nie et al. 2025).

A diffusion model has no exact ``log p(answer | prompt)``; this estimates a lower bound. Each sample masks
``l`` of the answer's ``L`` tokens (``l`` stratified over 1..L across the samples, the positions uniform), and
the sample's bound is ``(L / l) · Σ_masked log p(token | noisy sequence)``; the estimate is their mean over
``mc_num`` samples. The prompt is never masked. Multiple-choice evaluation compares these bounds across choices::

    prompt (never masked)   answer, l = 2 of L = 4 masked      bound = (4 / 2) · (log p(x₁) + log p(x₃))
    Q  :  2  +  2  =        [M]  x₂  [M]  x₄
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn


@torch.no_grad()
def elbo_loglikelihood(
    model: nn.Module | Callable[[Tensor], Tensor],
    prompt_ids: Tensor,  # (P,)
    answer_ids: Tensor,  # (L,)
    *,
    mask_id: int | None = None,
    mc_num: int = 128,
    batch_size: int = 32,
    shift: bool | None = None,
    seed: int = 0,
    generator: torch.Generator | None = None,
) -> float:
    """Lower bound on ``log p(answer | prompt)`` in nats; the same value for the same seed (or generator state).

    Args:
        model: a :class:`~zoo.objectives.MaskedDiffusionLM` (its ``backbone``, ``mask_id`` and ``shift`` are used)
            or a bare bidirectional backbone ``backbone(ids (B, S)) -> logits (B, S, V)``.
        prompt_ids: the conditioning tokens, never masked.
        answer_ids: the scored tokens (at least one).
        mask_id: the mask token (default: ``model.mask_id``; required for a bare backbone).
        mc_num: Monte-Carlo samples (LLaDA uses 128 for its benchmarks).
        batch_size: samples per forward pass.
        shift: the model predicts token ``i+1`` at position ``i`` (default: ``model.shift``, else ``False``).
        seed: seeds a fresh generator when ``generator`` is not given.
        generator: random source for the masks (overrides ``seed``).
    """
    backbone = getattr(model, "backbone", model)
    mask_id = getattr(model, "mask_id", None) if mask_id is None else mask_id
    shift = bool(getattr(model, "shift", False)) if shift is None else shift
    if mask_id is None:
        raise ValueError("elbo_loglikelihood mask_id=None: pass the model's mask token id (mask_id=...)")
    if answer_ids.numel() == 0:
        raise ValueError("elbo_loglikelihood needs a non-empty answer_ids")
    if shift and prompt_ids.numel() == 0:
        raise ValueError("elbo_loglikelihood with shift=True needs ≥ 1 prompt token (e.g. BOS) to predict the first")
    if mc_num < 1 or batch_size < 1:
        raise ValueError(f"elbo_loglikelihood mc_num={mc_num} and batch_size={batch_size} must be ≥ 1")
    device = answer_ids.device
    if generator is None:
        generator = torch.Generator(device=device).manual_seed(seed)
    P, L = prompt_ids.numel(), answer_ids.numel()
    sequence = torch.cat([prompt_ids.to(answer_ids.dtype), answer_ids])  # (S,)
    offset = torch.rand((), device=device, generator=generator)  # stratified l: one per stratum of 1..L
    counts = torch.ceil((torch.arange(mc_num, device=device) + offset) / mc_num * L).clamp(1, L).long()  # (mc,)
    total = 0.0
    for start in range(0, mc_num, batch_size):
        l = counts[start : start + batch_size]  # noqa: E741  (l masked tokens per sample, as in the paper)
        n = l.numel()
        ranks = torch.rand(n, L, device=device, generator=generator).argsort(dim=1).argsort(dim=1)  # (n, L)
        masked_answer = ranks < l[:, None]  # l uniformly chosen answer positions per sample
        masked = torch.cat([torch.zeros(n, P, dtype=torch.bool, device=device), masked_answer], dim=1)  # (n, S)
        noisy = torch.where(masked, torch.full_like(masked, mask_id, dtype=sequence.dtype), sequence)
        logits = backbone(noisy)  # (n, S, V)
        targets = sequence.expand(n, -1)
        if shift:  # position i predicts token i + 1
            logits, targets, masked = logits[:, :-1], targets[:, 1:], masked[:, 1:]
        ce = F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), reduction="none").view(n, -1)
        total += ((ce * masked).sum(dim=1) * (L / l)).sum().item()
    estimate = -total / mc_num
    assert math.isfinite(estimate)
    return estimate
