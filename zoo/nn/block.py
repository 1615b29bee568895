"""Transformer blocks: how attention, FFN, norms and Canon layers are wired around the residual stream.

A block is built by a factory ``Callable[[int], nn.Module]`` that receives the model width; its own
components are factories too, so YAML composes a block without code.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from zoo.nn.cache import ModuleCache, new_cache_of


@dataclass
class BlockCache(ModuleCache):
    """Decoding state of a block: its attention's (keys, values, Canon-B), Canon-A's and Canon-C's tails, and its
    FFN's (Canon-D of a gated FFN); ``None`` for a part that keeps none."""

    attention: ModuleCache | None
    canon_a: ModuleCache | None = None
    canon_c: ModuleCache | None = None
    ffn: ModuleCache | None = None


class PreNormBlock(nn.Module):
    """Pre-norm residual block (GPT-2, Llama)::

        x ──┬──────────────────────────────────────────(+)──┬──────────────────────────────────(+)──▶
            └─ norm ─ [Canon-A] ─ attention(rope, mask) ─┘   └─ norm ─ [Canon-C] ─ ffn ─────────┘

    Args:
        dim: model width (given by the backbone).
        attention: factory of the attention module, e.g. :class:`zoo.nn.GroupedQueryAttention`.
        ffn: factory of the feed-forward module, e.g. :class:`zoo.nn.SwiGLU`.
        norm: factory of the two norms, e.g. :class:`zoo.nn.RMSNorm`.
        canon_a: optional Canon layer factory before attention (after its norm).
        canon_c: optional Canon layer factory before the FFN (after its norm).
    """

    def __init__(
        self,
        dim: int,
        *,
        attention: Callable[[int], nn.Module],
        ffn: Callable[[int], nn.Module],
        norm: Callable[[int], nn.Module],
        canon_a: Callable[[int], nn.Module] | None = None,
        canon_c: Callable[[int], nn.Module] | None = None,
    ) -> None:
        super().__init__()
        self.attention_norm = norm(dim)
        self.canon_a = canon_a(dim) if canon_a is not None else None
        self.attention = attention(dim)
        self.ffn_norm = norm(dim)
        self.canon_c = canon_c(dim) if canon_c is not None else None
        self.ffn = ffn(dim)

    def forward(
        self, x: Tensor, *, rope: tuple[Tensor, Tensor] | None, mask: Tensor | None, cache: BlockCache | None
    ) -> Tensor:  # (B, T, C) -> (B, T, C)
        x = x + self.attention_branch(x, rope=rope, mask=mask, cache=cache)
        return x + self.ffn_branch(x, cache)

    def attention_branch(
        self, x: Tensor, *, rope: tuple[Tensor, Tensor] | None, mask: Tensor | None, cache: BlockCache | None
    ) -> Tensor:  # norm → [Canon-A] → attention: (B, T, C) -> (B, T, C), before it joins the stream
        h = self.attention_norm(x)
        if self.canon_a is not None:
            h = self.canon_a(h, None if cache is None else cache.canon_a)
        return self.attention(h, rope=rope, mask=mask, cache=None if cache is None else cache.attention)

    def ffn_branch(self, x: Tensor, cache: BlockCache | None) -> Tensor:  # norm → [Canon-C] → FFN: (B,T,C) -> (B,T,C)
        h = self.ffn_norm(x)
        if self.canon_c is not None:
            h = self.canon_c(h, None if cache is None else cache.canon_c)
        return self.ffn(h, None if cache is None else cache.ffn)

    # The block owns its mixer: the backbone, objectives and samplers ask the block, never its attention module.
    @property
    def causal(self) -> bool:
        """Whether the block's attention masks future positions; settable (masked diffusion sets it false)."""
        return self.attention.causal

    @causal.setter
    def causal(self, value: bool) -> None:
        self.attention.causal = value

    @property
    def head_dim(self) -> int:
        """Size of one attention head (the rotary tables are built for it)."""
        return self.attention.head_dim

    @property
    def attention_width(self) -> int:
        """Query heads × head size: the width of attention's scores and weighted sum, for FLOPs."""
        return self.attention.n_heads * self.attention.head_dim

    def new_cache(self, batch_size: int, max_len: int, *, device, dtype) -> BlockCache:
        """Empty decoding state of this layer (keys and values, Canon tails) for ``max_len`` positions."""
        args = (batch_size, max_len)
        return BlockCache(
            attention=new_cache_of(self.attention, *args, device=device, dtype=dtype),
            canon_a=new_cache_of(self.canon_a, *args, device=device, dtype=dtype),
            canon_c=new_cache_of(self.canon_c, *args, device=device, dtype=dtype),
            ffn=new_cache_of(self.ffn, *args, device=device, dtype=dtype),
        )

    @torch.no_grad()
    def init_weights(self, *, std: float, residual_std: float) -> None:
        """Each component initialises itself (norms to the identity, projections into the stream at
        ``residual_std``)."""
        for module in self.children():
            module.init_weights(std=std, residual_std=residual_std)


class ParallelBlock(PreNormBlock):
    """Identical to :class:`PreNormBlock` except attention and FFN read the same input and their outputs are
    added together (GPT-J, GPT-NeoX / Pythia "parallel residual")::

        x ──┬──────────────────────────────────────────────────────────(+)──▶
            ├─ attention_norm ─ [Canon-A] ─ attention(rope, mask) ─────(+)
            └─ ffn_norm ─ [Canon-C] ─ ffn ─────────────────────────────┘
    """

    def forward(
        self, x: Tensor, *, rope: tuple[Tensor, Tensor] | None, mask: Tensor | None, cache: BlockCache | None
    ) -> Tensor:  # (B, T, C) -> (B, T, C)
        return x + self.attention_branch(x, rope=rope, mask=mask, cache=cache) + self.ffn_branch(x, cache)


class SandwichBlock(PreNormBlock):
    """Identical to :class:`PreNormBlock` except each branch's output is normalized again before it joins the
    residual stream (Gemma 2/3; "sandwich" norm)::

        x ──┬────────────────────────────────────────────────────────────────(+)──┬─────── … ───────(+)──▶
            └─ attention_norm ─ [Canon-A] ─ attention ─ post_attention_norm ──┘   └─ ffn_norm ─ [Canon-C] ─ ffn
                                                                                     ─ post_ffn_norm ─┘

    Args: as :class:`PreNormBlock`; ``norm`` also builds the two post-norms.
    """

    def __init__(
        self,
        dim: int,
        *,
        attention: Callable[[int], nn.Module],
        ffn: Callable[[int], nn.Module],
        norm: Callable[[int], nn.Module],
        canon_a: Callable[[int], nn.Module] | None = None,
        canon_c: Callable[[int], nn.Module] | None = None,
    ) -> None:
        super().__init__(dim, attention=attention, ffn=ffn, norm=norm, canon_a=canon_a, canon_c=canon_c)
        self.post_attention_norm = norm(dim)
        self.post_ffn_norm = norm(dim)

    def forward(
        self, x: Tensor, *, rope: tuple[Tensor, Tensor] | None, mask: Tensor | None, cache: BlockCache | None
    ) -> Tensor:  # (B, T, C) -> (B, T, C)
        x = x + self.post_attention_norm(self.attention_branch(x, rope=rope, mask=mask, cache=cache))
        return x + self.post_ffn_norm(self.ffn_branch(x, cache))
