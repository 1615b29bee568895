"""Monte-Carlo ELBO of an answer given a prompt, for scoring masked-diffusion models (LLaDA, Nie et al. 2025).

A diffusion model has no exact ``log p(answer | prompt)``; this estimates a lower bound. Each sample masks
``l`` of the answer's ``L`` tokens (``l`` stratified over 1..L across the samples, positions uniform), and the
bound is ``−(L / l) · Σ_masked CE``, averaged over ``mc_num`` samples. The prompt is never masked. Multiple-choice
evaluation compares these bounds across the choices.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor


@torch.no_grad()
def elbo_loglikelihood(
    backbone: Callable[[Tensor], Tensor],
    prompt_ids: Tensor,  # (P,)
    answer_ids: Tensor,  # (L,)
    *,
    mask_id: int,
    mc_num: int = 128,
    batch_size: int = 32,
    shift: bool = False,
    generator: torch.Generator | None = None,
) -> float:
    """Lower bound on ``log p(answer | prompt)`` (nats); deterministic for a seeded ``generator``.

    Args:
        backbone: ``backbone(ids (B, S)) -> logits (B, S, V)``, bidirectional.
        mask_id: the model's mask token.
        mc_num: Monte-Carlo samples (LLaDA uses 128 for its benchmarks).
        batch_size: samples per forward pass.
        shift: the model predicts token ``i+1`` at position ``i`` (see ``MaskedDiffusionLM.shift``).
        generator: random source for the masks.
    """
    if answer_ids.numel() == 0:
        raise ValueError("elbo_loglikelihood needs a non-empty answer")
    if mc_num < 1 or batch_size < 1:
        raise ValueError(f"mc_num={mc_num} and batch_size={batch_size} must be ≥ 1")
    device = answer_ids.device
    P, L = prompt_ids.numel(), answer_ids.numel()
    sequence = torch.cat([prompt_ids, answer_ids])  # (S,)
    offset = torch.rand((), device=device, generator=generator)
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
        if shift:  # position i predicts token i + 1
            logits, targets, masked = logits[:, :-1], sequence[1:].expand(n, -1), masked[:, 1:]
        else:
            targets = sequence.expand(n, -1)
        ce = F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), reduction="none").view(n, -1)
        total += ((ce * masked).sum(dim=1) * (L / l)).sum().item()
    estimate = -total / mc_num
    assert math.isfinite(estimate)
    return estimate
