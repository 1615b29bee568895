"""Canon layers (Allen-Zhu, *Physics of Language Models: Part 4.1*, 2025).

A Canon layer mixes each position with its few predecessors through a causal depthwise 1-D convolution and
adds the result back: ``y = x + conv(x)``. It has no bias and ``kernel_size * channels`` weights. The paper
places it at four points of a block: A (before attention), B (on the q/k/v projections), C (before the FFN)
and D (inside a gated FFN); see :class:`zoo.nn.PreNormBlock`, :class:`zoo.nn.GroupedQueryAttention` and
:class:`zoo.nn.GatedFFN` for the hooks.

During incremental decoding the layer keeps the last ``kernel_size - 1`` inputs in ``state`` so a step of
one token gives the same output as the full sequence.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class Canon(nn.Module):
    """Causal depthwise convolution with a residual connection.

    Args:
        channels: feature size (given by the block, attention or FFN that owns it).
        kernel_size: how many positions (the current one included) each output sees; the paper uses 4.
        residual: add the input back (the paper's default); ``False`` returns the convolution alone.
    """

    def __init__(self, channels: int, *, kernel_size: int = 4, residual: bool = True) -> None:
        super().__init__()
        if kernel_size < 1:
            raise ValueError(f"Canon kernel_size={kernel_size} must be ≥ 1 (the paper uses 4)")
        self.kernel_size, self.residual = kernel_size, residual
        self.weight = nn.Parameter(torch.empty(channels, 1, kernel_size))  # depthwise: (C, 1, K)
        self.init_weights(std=0.02, residual_std=0.02)

    @torch.no_grad()
    def init_weights(self, *, std: float, residual_std: float) -> None:
        """Filter taps ~ N(0, ``std``)."""
        nn.init.normal_(self.weight, std=std)

    def forward(self, x: Tensor, state: dict | None = None) -> Tensor:  # (B, T, C) -> (B, T, C)
        """``state`` is a dict owned by the caller's cache; ``None`` means a whole sequence from position 0."""
        k = self.kernel_size
        h = x.transpose(1, 2)  # (B, C, T)
        if state is None:
            h = F.pad(h, (k - 1, 0))
        else:  # decoding: prepend the last k-1 inputs seen so far (zeros at the start)
            past = state.get("canon")
            if past is None:
                past = h.new_zeros(h.shape[0], h.shape[1], k - 1)
            h = torch.cat((past, h), dim=2)
            state["canon"] = h[:, :, h.shape[2] - (k - 1) :] if k > 1 else h[:, :, :0]
        y = F.conv1d(h, self.weight.to(h.dtype), groups=h.shape[1]).transpose(1, 2)  # (B, T, C)
        return x + y if self.residual else y

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, kernel_size={self.kernel_size}, residual={self.residual}"
