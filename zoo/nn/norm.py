"""Normalization layers.

Every norm is built by a factory ``Callable[[int], nn.Module]`` that receives the feature size, so a block
never names a concrete norm: YAML picks it with ``class_path: zoo.nn.RMSNorm`` (or ``zoo.nn.LayerNorm``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class RMSNorm(nn.Module):
    """Root-mean-square norm (Zhang & Sennrich, 2019), as in Llama.

    ``y = x / sqrt(mean(x**2) + eps) * weight``, computed in fp32 and cast back, so bf16 runs match fp32 ones.

    Args:
        dim: feature size (given by the block).
        eps: added to the mean square before the square root.
        unit_offset: scale by ``(1 + weight)`` with ``weight`` initialised to zero (Gemma's convention)
            instead of by ``weight`` initialised to one.
    """

    def __init__(self, dim: int, *, eps: float = 1e-5, unit_offset: bool = False) -> None:
        super().__init__()
        if eps <= 0:
            raise ValueError(f"RMSNorm eps={eps} must be > 0 (typical values: 1e-5 or 1e-6)")
        self.eps = eps
        self.unit_offset = unit_offset
        self.weight = nn.Parameter(torch.zeros(dim) if unit_offset else torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:  # (..., C) -> (..., C)
        weight = self.weight + 1.0 if self.unit_offset else self.weight
        if x.dtype == weight.dtype == torch.float32:  # nothing to cast: two fewer calls per norm when decoding
            return F.rms_norm(x, (x.shape[-1],), weight, self.eps)
        return F.rms_norm(x.float(), (x.shape[-1],), weight.float(), self.eps).type_as(x)

    @torch.no_grad()
    def init_weights(self, *, std: float, residual_std: float) -> None:
        """The identity scale (the standard deviations are not used)."""
        nn.init.zeros_(self.weight) if self.unit_offset else nn.init.ones_(self.weight)

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, eps={self.eps}, unit_offset={self.unit_offset}"


class LayerNorm(nn.LayerNorm):
    """Layer norm (Ba et al., 2016), as in GPT-2 and Pythia; identical to ``torch.nn.LayerNorm`` except the
    keyword-only signature that a norm factory needs.

    Args:
        dim: feature size (given by the block).
        eps: added to the variance.
        bias: learn an additive bias (GPT-2: yes; OLMo-style: no).
    """

    def __init__(self, dim: int, *, eps: float = 1e-5, bias: bool = True) -> None:
        if eps <= 0:
            raise ValueError(f"LayerNorm eps={eps} must be > 0 (typical value: 1e-5)")
        super().__init__(dim, eps=eps, bias=bias)

    @torch.no_grad()
    def init_weights(self, *, std: float, residual_std: float) -> None:
        """The identity (weight one, bias zero; the standard deviations are not used)."""
        self.reset_parameters()
