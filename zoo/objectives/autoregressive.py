"""``CausalLM``: next-token prediction."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from zoo.objectives.base import LanguageModel


class CausalLM(LanguageModel):
    """Identical to :class:`LanguageModel` except the loss: cross-entropy of token ``t+1`` given tokens
    ``≤ t``, on positions whose label is not ``-100``. The backbone's attention must be causal.
    """

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        if not all(getattr(block.attention, "causal", True) for block in self.backbone.blocks):
            raise ValueError(
                "CausalLM needs causal attention, but backbone.block.attention.causal=false: set it to true "
                "(bidirectional attention belongs to masked-diffusion objectives)"
            )

    def loss(self, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        input_ids, labels = batch["input_ids"], batch["labels"]  # (B, T) each
        logits = self.backbone(input_ids[:, :-1])  # (B, T-1, V): position t predicts label t+1
        targets = labels[:, 1:]  # (B, T-1)
        loss = F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), ignore_index=-100, reduction="sum")
        n_tokens = (targets != -100).sum()
        return loss / n_tokens.clamp(min=1), n_tokens
