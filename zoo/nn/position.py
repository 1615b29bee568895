"""Position encodings, chosen once for the whole backbone.

A position encoding contributes in one of two places, so its interface has two hooks and each subclass
fills the one it uses::

    tokens ─ embed ─(+ absolute(positions))─▶ blocks            LearnedPositions
    q, k   ─────────(rotate by rotary(positions))─▶ scores      Rotary
                                                                 NoPositions: neither

The backbone builds it with ``position(dim, head_dim, max_seq_len)`` and computes the rotary tables once
per forward pass, then hands them to every attention layer (instead of each layer recomputing them).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class PositionEncoding(nn.Module):
    """Base class: contributes nothing. Subclasses override :meth:`absolute` or :meth:`rotary`."""

    def __init__(self, dim: int, head_dim: int, max_seq_len: int) -> None:
        super().__init__()
        self.max_seq_len = max_seq_len

    def absolute(self, positions: Tensor) -> Tensor | None:  # (T,) -> (T, C) added to the embeddings
        return None

    def init_weights(self, *, std: float, residual_std: float) -> None:
        """Nothing to initialise here (tables are computed, not learned); subclasses with weights override it."""

    def rotary(self, positions: Tensor) -> tuple[Tensor, Tensor] | None:  # (T,) -> cos, sin: (T, R/2)
        return None


class NoPositions(PositionEncoding):
    """No position information (NoPE): causal attention alone orders the tokens."""


class LearnedPositions(PositionEncoding):
    """A learned absolute position embedding added to the token embeddings (GPT-2)."""

    def __init__(self, dim: int, head_dim: int, max_seq_len: int) -> None:
        super().__init__(dim, head_dim, max_seq_len)
        self.weight = nn.Parameter(torch.empty(max_seq_len, dim))
        self.init_weights(std=0.02, residual_std=0.02)

    @torch.no_grad()
    def init_weights(self, *, std: float, residual_std: float) -> None:
        nn.init.normal_(self.weight, std=std)

    def absolute(self, positions: Tensor) -> Tensor:
        return self.weight[positions]


class Rotary(PositionEncoding):
    """Rotary position embedding (Su et al., 2021) on the first ``fraction`` of each head's dimensions.

    Rotation pairs are the two halves of the rotated slice (the "rotate_half" layout of GPT-NeoX, Llama
    and HF transformers), so weights move to and from transformers without permutation.

    Args:
        theta: base of the geometric frequency ladder (Llama 10000, GPT-S-5M 2500, Llama 3 500000).
        fraction: share of each head's dimensions that rotate (Pythia 0.25); the rest pass through.
    """

    def __init__(
        self, dim: int, head_dim: int, max_seq_len: int, *, theta: float = 10000.0, fraction: float = 1.0
    ) -> None:
        super().__init__(dim, head_dim, max_seq_len)
        if theta <= 0:
            raise ValueError(f"Rotary theta={theta} must be > 0 (Llama uses 10000)")
        if not 0 < fraction <= 1:
            raise ValueError(f"Rotary fraction={fraction} must be in (0, 1] (Pythia uses 0.25)")
        rotary_dim = int(head_dim * fraction)
        if rotary_dim < 2 or rotary_dim % 2:
            raise ValueError(
                f"Rotary fraction={fraction} of head_dim={head_dim} gives {rotary_dim} rotating dimensions; "
                "it must be an even number ≥ 2: change the fraction or the head size"
            )
        self.theta, self.fraction, self.rotary_dim = theta, fraction, rotary_dim
        inv_freq = 1.0 / theta ** (torch.arange(0, rotary_dim, 2, dtype=torch.float64) / rotary_dim)
        self.register_buffer("inv_freq", inv_freq.float(), persistent=False)  # (R/2,)

    def rotary(self, positions: Tensor) -> tuple[Tensor, Tensor]:
        angles = positions.float()[:, None] * self.inv_freq[None, :]  # (T, R/2)
        return angles.cos(), angles.sin()

    def extra_repr(self) -> str:
        return f"theta={self.theta}, fraction={self.fraction}, rotary_dim={self.rotary_dim}"


def apply_rotary(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate the first ``2 * cos.shape[-1]`` features of ``x`` by the angles in cos/sin, which broadcast against
    ``x[..., :R/2]``: (T, R/2) for ``x`` of shape (B, H, T, D), (T, 1, R/2) for (B, T, H, D)."""
    half = cos.shape[-1]
    x1, x2, rest = x.split((half, half, x.shape[-1] - 2 * half), dim=-1)  # split: one concatenation as gradient
    if cos.dtype != x.dtype:
        cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    rotated = torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)
    return torch.cat((rotated, rest), dim=-1) if rest.shape[-1] else rotated
