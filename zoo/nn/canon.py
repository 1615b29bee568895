"""Canon layers (Allen-Zhu, *Physics of Language Models: Part 4.1*, 2025).

A Canon layer mixes each position with its few predecessors through a causal depthwise 1-D convolution and
adds the result back: ``y = x + conv(x)``. It has no bias and ``kernel_size * channels`` weights. The paper
places it at four points of a block: A (before attention), B (on the q/k/v projections), C (before the FFN)
and D (inside a gated FFN); see :class:`zoo.nn.PreNormBlock`, :class:`zoo.nn.GroupedQueryAttention` and
:class:`zoo.nn.GatedFFN` for the hooks.

During incremental decoding the layer keeps the last ``kernel_size - 1`` inputs in its :class:`ConvTail` so a
step of one token gives the same output as the full sequence.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from zoo.nn.cache import ModuleCache


class ConvTail(ModuleCache):
    """A Canon layer's decoding state: its last ``kernel_size - 1`` inputs, ``tail`` (B, C, K-1), zeros before the
    first pass. Written in place, so a compiled decoding step sees the same tensor at every step. It cannot be
    rewound (the inputs before the tail are gone) and it reads its predecessors whatever attention's mask says.

    The tensor is allocated at the first pass, in the dtype of the layer's input there (under autocast that can
    differ from the weights').
    """

    def __init__(self, kernel_size: int) -> None:
        self.width = kernel_size - 1
        self.tail: Tensor | None = None  # (B, C, K-1)

    rewindable = False
    masked = False

    def seek(self, position: int) -> None:
        raise ValueError("a Canon convolution's state cannot be rewound: its inputs before the tail are gone")

    def extend(self, h: Tensor) -> Tensor:  # (B, C, T) -> (B, C, K-1+T): the tail, then h; the tail moves on
        if self.tail is None:
            self.tail = h.new_zeros(h.shape[0], h.shape[1], self.width)
        h = torch.cat((self.tail.to(h.dtype), h), dim=2)
        self.tail.copy_(h[:, :, h.shape[2] - self.width :])
        return h


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

    def forward(self, x: Tensor, state: ConvTail | None = None) -> Tensor:  # (B, T, C) -> (B, T, C)
        """``state``: this layer's decoding state (:meth:`new_cache`); ``None`` means a whole sequence from
        position 0."""
        h = x.transpose(1, 2)  # (B, C, T)
        if state is None:
            h = F.pad(h, (self.kernel_size - 1, 0))
        else:  # decoding: prepend the last k-1 inputs seen so far (zeros at the start)
            h = state.extend(h)
        y = F.conv1d(h, self.weight.to(h.dtype), groups=h.shape[1]).transpose(1, 2)  # (B, T, C)
        return x + y if self.residual else y

    def new_cache(self, batch_size: int, max_len: int, *, device, dtype) -> ConvTail:
        """Empty decoding state: the last ``kernel_size - 1`` inputs (zeros until written)."""
        return ConvTail(self.kernel_size)

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, kernel_size={self.kernel_size}, residual={self.residual}"
