"""``CausalLM``: next-token prediction."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from zoo.nn.losses import linear_cross_entropy
from zoo.nn.masks import document_mask
from zoo.objectives.base import LanguageModel
from zoo.objectives.description import ModelDescription, ModelKind, Scoring
from zoo.objectives.samplers import AUTOREGRESSIVE


class CausalLM(LanguageModel):
    """Identical to :class:`LanguageModel` except the loss: cross-entropy of token ``t+1`` given tokens
    ``≤ t``, on positions whose label is not ``-100``. The backbone's attention must be causal.

    The LM head and the cross-entropy run together, a block of positions at a time
    (:func:`linear_cross_entropy`): the ``(B, T, V)`` logits are never held whole, in fp32 or otherwise.
    """

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        if not self.backbone.causal:
            raise ValueError(
                "CausalLM needs causal attention, but backbone.block.attention.causal=false: set it to true "
                "(bidirectional attention belongs to masked-diffusion objectives)"
            )

    @property
    def description(self) -> ModelDescription:
        """An autoregressive model: KV-cache decoding (fp32 on a CPU), exact log-likelihoods."""
        return ModelDescription(kind=ModelKind.AUTOREGRESSIVE, sampler=AUTOREGRESSIVE, scoring=Scoring.LOG_LIKELIHOOD,
                                shift=True, cpu_precision="32-true")  # fmt: skip

    def loss(self, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        input_ids, labels = batch["input_ids"], batch["labels"]  # (B, T) each
        mask = document_mask(batch, causal=True)  # packed examples never attend to each other
        # Every position runs, the last one too although it has no target: the matmuls then have B·T rows
        # (a multiple of the batch's power-of-two length) rather than B·(T-1), which BLAS and tensor-core
        # kernels run markedly slower per FLOP (on a 2-core EPYC, 1020 × 512 @ 512 × 2816 took 1.27× as long as
        # 1024 rows); the extra position costs 1/T of the compute, and causal attention keeps the others exact.
        features = self.backbone(input_ids, mask=mask, features_only=True)  # (B, T, C)
        targets = F.pad(labels[:, 1:], (0, 1), value=-100)  # (B, T): position t predicts label t+1; last: none
        # the head is applied inside the loss
        loss = linear_cross_entropy(features.flatten(0, 1), self.backbone.head.weight, targets.flatten())
        n_tokens = (targets != -100).sum()
        return loss / n_tokens.clamp(min=1), n_tokens
