"""Attention: one grouped-query module and swappable inner kernels.

``GroupedQueryAttention`` owns the projections, rotary embedding, QK-norm, Canon-B and the KV cache. The
inner computation ``softmax(q kᵀ · scale + mask) v`` is a *kernel*, a plain function with a fixed
signature, so SDPA, the eager reference or any future kernel can be swapped without touching the module::

    kernel(q, k, v, *, causal, mask, scale) -> out
        q: (B, H, T, D)   k, v: (B, Hkv, S, D)   mask: (B or 1, 1, T, S) bool, True = may attend, or None
        out: (B, H, T, D)

Query head ``h`` reads key/value head ``h // (H / Hkv)``: MHA is ``Hkv = H``, MQA is ``Hkv = 1``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from zoo.nn.cache import ModuleCache, new_cache_of
from zoo.nn.position import apply_rotary


class AttentionKernel(Protocol):
    def __call__(
        self, q: Tensor, k: Tensor, v: Tensor, *, causal: bool, mask: Tensor | None, scale: float
    ) -> Tensor: ...


def eager_attention(q: Tensor, k: Tensor, v: Tensor, *, causal: bool, mask: Tensor | None, scale: float) -> Tensor:
    """Reference kernel: materialises the score matrix in fp32. Slow; every other kernel is tested against it."""
    n_rep = q.shape[1] // k.shape[1]
    k = k.repeat_interleave(n_rep, dim=1)  # (B, H, S, D)
    v = v.repeat_interleave(n_rep, dim=1)
    scores = torch.einsum("bhtd,bhsd->bhts", q.float(), k.float()) * scale  # (B, H, T, S)
    T, S = scores.shape[-2:]
    if causal:  # query t sits at absolute position S - T + t and sees keys 0..S-T+t
        allowed = torch.ones(T, S, dtype=torch.bool, device=q.device).tril(diagonal=S - T)
        scores = scores.masked_fill(~allowed, float("-inf"))
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    probs = scores.softmax(dim=-1).nan_to_num(0.0)  # a fully masked row gives zeros, not NaN
    return torch.einsum("bhts,bhsd->bhtd", probs, v.float()).to(q.dtype)


def sdpa_attention(q: Tensor, k: Tensor, v: Tensor, *, causal: bool, mask: Tensor | None, scale: float) -> Tensor:
    """PyTorch's ``scaled_dot_product_attention`` (flash / memory-efficient / C++ kernels by device).

    Grouped K/V heads are read in place (``enable_gqa``), never copied to the query head count.
    """
    T, S = q.shape[-2], k.shape[-2]
    if causal and T != S:  # SDPA's is_causal aligns the mask top-left; with a cache it must align bottom-right
        allowed = torch.ones(T, S, dtype=torch.bool, device=q.device).tril(diagonal=S - T)
        mask = allowed if mask is None else mask & allowed
        causal = False
    if causal and mask is not None:
        mask = mask & torch.ones(T, S, dtype=torch.bool, device=q.device).tril()
        causal = False
    return F.scaled_dot_product_attention(
        q, k, v, attn_mask=mask, is_causal=causal, scale=scale, enable_gqa=k.shape[1] != q.shape[1]
    )


KERNELS: dict[str, AttentionKernel] = {"eager": eager_attention, "sdpa": sdpa_attention}


class KVCache(ModuleCache):
    """Keys and values of one attention layer, preallocated to ``max_len`` positions.

    ``length`` is where the next write starts; ``filled`` is how many positions hold keys and values. ``append``
    writes the new ones from ``length`` on and returns every filled position. Decoding left to right only appends
    (``filled == length``); :meth:`seek` moves the write position back so a pass re-encodes positions already
    cached (a masked-diffusion block whose tokens changed) while attending to all of them::

        cache  [ prefix | block | suffix ]    seek(start of block), pass over the block: the block's keys and
                          ^^^^^               values are rewritten, the prefix's and suffix's are read as cached

    **Static** (after :meth:`follow`: ``cursor`` is a 0-dim integer tensor shared by every layer, the position of
    the pass's first token): a pass writes at the cursor's positions and attention reads the whole buffer, the
    positions not yet written (or, causal, after each query) hidden by the mask the cache adds. Shapes are then the
    same at every decoding step and nothing is read back to Python, so a compiled step runs without recompiling;
    the backbone moves the cursor. A static cache is not rewound.
    """

    def __init__(self, batch_size: int, n_kv_heads: int, max_len: int, head_dim: int, *, device, dtype) -> None:
        self.k = torch.zeros(batch_size, n_kv_heads, max_len, head_dim, device=device, dtype=dtype)
        self.v = torch.zeros_like(self.k)
        self.length = 0
        self.filled = 0
        self.cursor: Tensor | None = None  # () int64, static caches only (:meth:`follow`)

    masked = True

    @property
    def rewindable(self) -> bool:
        return self.cursor is None

    def append(self, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:  # (B, Hkv, T, D) -> (B, Hkv, S, D)
        end = self.length + k.shape[2]
        if end > self.k.shape[2]:
            raise ValueError(f"KV cache holds {self.k.shape[2]} positions; writing up to {end} overflows it")
        self.k[:, :, self.length : end] = k
        self.v[:, :, self.length : end] = v
        self.length, self.filled = end, max(self.filled, end)
        return self.k[:, :, : self.filled], self.v[:, :, : self.filled]

    def update(
        self, k: Tensor, v: Tensor, *, mask: Tensor | None, causal: bool
    ) -> tuple[Tensor, Tensor, Tensor | None, bool]:
        """Store a pass's keys and values (B, Hkv, T, D); return what attention reads: keys and values
        (B, Hkv, S, D), the mask (B or 1, 1, T, S) or ``None``, and whether the kernel adds causality itself."""
        if self.cursor is None:
            k, v = self.append(k, v)
            return k, v, mask, causal
        T, S = k.shape[2], self.k.shape[2]
        positions = self.cursor + torch.arange(T, device=k.device)  # (T,)
        self.k[:, :, positions] = k.to(self.k.dtype)  # index_put_: written in place, also when compiled
        self.v[:, :, positions] = v.to(self.v.dtype)
        keys = torch.arange(S, device=k.device)
        last = positions[:, None] if causal else positions[-1:, None]  # (T or 1, 1): the last key each query reads
        visible = (keys[None, :] <= last)[None, None]  # (1, 1, T or 1, S)
        return self.k, self.v, visible if mask is None else mask & visible, False

    def follow(self, cursor: Tensor) -> None:
        self.cursor = cursor

    def seek(self, position: int) -> None:
        """Make the next :meth:`append` write from ``position`` (at most :attr:`filled`) on."""
        if self.cursor is not None:
            raise ValueError("a static KV cache is not rewound: build the cache with static=False to seek")
        if not 0 <= position <= self.filled:
            raise ValueError(f"KV cache seek to position {position}: only positions 0..{self.filled} are filled")
        self.length = position


@dataclass
class AttentionCache(ModuleCache):
    """Decoding state of :class:`GroupedQueryAttention`: its keys and values, and its Canon-B layer's tail."""

    kv: KVCache
    canon_b: ModuleCache | None = None


class GroupedQueryAttention(nn.Module):
    """Multi-head attention with grouped key/value heads (Ainslie et al., 2023); MHA and MQA are special cases.

    Args:
        dim: model width (given by the block).
        n_heads: query heads.
        n_kv_heads: key/value heads; must divide ``n_heads`` (``None`` = ``n_heads``, i.e. MHA; 1 = MQA).
        head_dim: size of each head (``None`` = ``dim // n_heads``).
        causal: mask future positions (autoregressive); ``False`` for bidirectional (masked diffusion).
        bias: biases on the q/k/v and output projections.
        qk_norm: optional norm factory applied to each query and key head (over ``head_dim``) before RoPE.
        canon: optional Canon-B factory applied to the concatenated q/k/v projection.
        kernel: ``sdpa`` (default) or ``eager`` (the reference); see :data:`KERNELS`.
    """

    def __init__(
        self,
        dim: int,
        *,
        n_heads: int,
        n_kv_heads: int | None = None,
        head_dim: int | None = None,
        causal: bool = True,
        bias: bool = False,
        qk_norm: Callable[[int], nn.Module] | None = None,
        canon: Callable[[int], nn.Module] | None = None,
        kernel: Literal["sdpa", "eager"] = "sdpa",
    ) -> None:
        super().__init__()
        n_kv_heads = n_heads if n_kv_heads is None else n_kv_heads
        if n_heads < 1 or n_kv_heads < 1:
            raise ValueError(f"n_heads={n_heads} and n_kv_heads={n_kv_heads} must be ≥ 1")
        if n_heads % n_kv_heads:
            raise ValueError(
                f"n_heads={n_heads} is not divisible by n_kv_heads={n_kv_heads}: "
                f"choose n_kv_heads among {[d for d in range(1, n_heads + 1) if n_heads % d == 0]}"
            )
        if head_dim is None:
            if dim % n_heads:
                raise ValueError(
                    f"dim={dim} is not divisible by n_heads={n_heads}: change one of them or set head_dim explicitly"
                )
            head_dim = dim // n_heads
        if kernel not in KERNELS:
            raise ValueError(f"attention kernel={kernel!r} is unknown; choose one of {sorted(KERNELS)}")
        self.n_heads, self.n_kv_heads, self.head_dim = n_heads, n_kv_heads, head_dim
        self.causal, self.kernel = causal, kernel
        self.q_size, self.kv_size = n_heads * head_dim, n_kv_heads * head_dim
        self.qkv = nn.Linear(dim, self.q_size + 2 * self.kv_size, bias=bias)  # one matmul for q, k and v
        self.out = nn.Linear(self.q_size, dim, bias=bias)
        self.q_norm = qk_norm(head_dim) if qk_norm is not None else None
        self.k_norm = qk_norm(head_dim) if qk_norm is not None else None
        self.canon = canon(self.q_size + 2 * self.kv_size) if canon is not None else None

    def forward(
        self,
        x: Tensor,  # (B, T, C)
        *,
        rope: tuple[Tensor, Tensor] | None = None,  # cos, sin: (T, R/2) at the absolute positions of x
        mask: Tensor | None = None,  # (B or 1, 1, T, S) bool, True = may attend; combined with `causal`
        cache: AttentionCache | None = None,  # decoding state (new_cache); None = whole sequence from position 0
    ) -> Tensor:  # (B, T, C)
        B, T, _ = x.shape
        H, Hkv = self.n_heads, self.n_kv_heads
        qkv = self.qkv(x)  # (B, T, (H + 2·Hkv)·D)
        if self.canon is not None:
            qkv = self.canon(qkv, None if cache is None else cache.canon_b)
        heads = qkv.view(B, T, H + 2 * Hkv, self.head_dim)  # query heads, then key heads, then value heads
        # split, not slicing: the gradient of a split is one concatenation, that of each slice a zero-filled
        # tensor of the whole input's size
        qk, v = heads.split((H + Hkv, Hkv), dim=2)  # (B, T, H + Hkv, D), (B, T, Hkv, D)
        if self.q_norm is not None:
            q, k = qk.split((H, Hkv), dim=2)
            qk = torch.cat((self.q_norm(q), self.k_norm(k)), dim=2)
        if rope is not None:  # queries and keys rotated together: one set of elementwise ops instead of two
            cos, sin = rope
            qk = apply_rotary(qk, cos[:, None], sin[:, None])  # tables (T, 1, R/2): the same angles for every head
        q, k = qk.split((H, Hkv), dim=2)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # (B, H, T, D), (B, Hkv, T, D) × 2
        own_v = v  # (B, Hkv, T, D): the queries' own values, wherever the cache writes them
        causal = self.causal
        if cache is not None:
            k, v, mask, causal = cache.kv.update(k, v, mask=mask, causal=causal)  # (B, Hkv, S, D) × 2
        y = KERNELS[self.kernel](q, k, v, causal=causal, mask=mask, scale=self.head_dim**-0.5)  # (B, H, T, D)
        y = self.combine_heads(y, own_v)
        return self.out(y.transpose(1, 2).reshape(B, T, self.q_size))

    def combine_heads(self, y: Tensor, v: Tensor) -> Tensor:
        """Hook between the kernel and the output projection; identity here. y: (B, H, T, D); v: (B, Hkv, T, D), the
        values at the queries' own positions."""
        return y

    @torch.no_grad()
    def init_weights(self, *, std: float, residual_std: float) -> None:
        """q/k/v ~ N(0, ``std``); the output projection writes into the residual stream: N(0, ``residual_std``);
        biases zero; QK-norms and Canon-B as they initialise themselves."""
        _normal_linear(self.qkv, std)
        _normal_linear(self.out, residual_std)
        for module in (self.q_norm, self.k_norm, self.canon):
            if module is not None:
                module.init_weights(std=std, residual_std=residual_std)

    def new_cache(self, batch_size: int, max_len: int, *, device, dtype) -> AttentionCache:
        """Empty decoding state: keys and values for ``max_len`` positions, and Canon-B's tail."""
        kv = KVCache(batch_size, self.n_kv_heads, max_len, self.head_dim, device=device, dtype=dtype)
        return AttentionCache(kv, new_cache_of(self.canon, batch_size, max_len, device=device, dtype=dtype))

    def extra_repr(self) -> str:
        return (
            f"n_heads={self.n_heads}, n_kv_heads={self.n_kv_heads}, head_dim={self.head_dim}, "
            f"causal={self.causal}, kernel={self.kernel!r}"
        )


class ExclusiveGroupedQueryAttention(GroupedQueryAttention):
    """Identical to :class:`GroupedQueryAttention` except: each head's output has its component along its own
    value vector removed before the output projection (exclusive self-attention, the "XGQA" of GPT-S-5M).

    With ``v̂ = v_t / ‖v_t‖`` the value of the query's own position, the head output becomes
    ``y − (y · v̂) v̂``, so attention carries only information *other* than the token's own value. It adds no
    parameters. Under grouping each query head uses the value head it reads from.
    """

    def combine_heads(self, y: Tensor, v: Tensor) -> Tensor:
        B, H, T, D = y.shape
        unit = F.normalize(v.float(), dim=-1).unsqueeze(2)  # (B, Hkv, 1, T, D), broadcast over the group
        y32 = y.float().view(B, self.n_kv_heads, H // self.n_kv_heads, T, D)  # (B, Hkv, H/Hkv, T, D)
        y32 = y32 - (y32 * unit).sum(-1, keepdim=True) * unit
        return y32.view(B, H, T, D).to(y.dtype)


def _normal_linear(linear: nn.Linear, std: float) -> None:
    nn.init.normal_(linear.weight, std=std)
    if linear.bias is not None:
        nn.init.zeros_(linear.bias)
