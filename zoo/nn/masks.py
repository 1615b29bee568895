"""Every attention-mask builder, as boolean tensors with True where a query may attend a key (combined with each
layer's own causality by the attention kernels).

- :func:`document_mask`: packed or padded examples never attend to each other.
- :func:`annealed_mask`: causal plus random extra links (attention annealing, AR → diffusion).
- :func:`block_causal_mask` / :func:`block_diffusion_mask`: block-wise causality (block diffusion).
"""

from __future__ import annotations

import torch
from torch import Tensor


def document_mask(batch: dict[str, Tensor], length: int | None = None, *, causal: bool = False) -> Tensor | None:
    """``(B, 1, T, T)`` bool, True where query and key belong to the same example, from the batch's
    ``document_ids`` (packed or padded SFT, packing with document boundaries; padding is ``-1``); ``None``
    when the batch has none. ``length`` keeps the first ``length`` positions. ``causal``: also ``None`` when
    no row holds a second example — trailing padding cannot reach earlier tokens under causal attention, and
    without a dense mask attention keeps its fastest kernels."""
    ids = batch.get("document_ids")
    if ids is None:
        return None
    ids = ids[:, :length]  # (B, T)
    if causal and not bool((ids[:, 1:] > ids[:, :-1]).any()):  # ids only rise where a new example starts
        return None
    return (ids[:, :, None] == ids[:, None, :])[:, None]  # (B, 1, T, T)


def annealed_mask(seq_len: int, rate: float, *, device=None, generator: torch.Generator | None = None) -> Tensor:
    """Causal ∪ Bernoulli(``rate``): (1, 1, T, T) bool; ``rate`` 0 is causal, 1 is all True."""
    causal = torch.ones(seq_len, seq_len, dtype=torch.bool, device=device).tril()
    extra = torch.rand(seq_len, seq_len, device=device, generator=generator) < rate
    return (causal | extra)[None, None]


def block_causal_mask(seq_len: int, block: int, *, device=None) -> Tensor:  # (T, T) bool
    """Query ``i`` may attend key ``j`` when ``j``'s block is not after ``i``'s: bidirectional within a block,
    earlier blocks visible (block 1 is causal, block ``seq_len`` is all True)."""
    ids = torch.arange(seq_len, device=device) // block  # block index of each position
    return ids[:, None] >= ids[None, :]


def block_diffusion_mask(seq_len: int, block: int, *, device=None) -> Tensor:  # (1, 1, 2T, 2T) bool
    """Attention over [noisy; clean]: a noisy block sees itself and the earlier clean blocks; clean blocks are
    block-causal among themselves and never see noisy ones."""
    ids = torch.arange(seq_len, device=device) // block
    same = ids[:, None] == ids[None, :]  # (T, T)
    upto = block_causal_mask(seq_len, block, device=device)
    earlier = upto & ~same
    top = torch.cat([same, earlier], dim=1)  # noisy queries: (T, 2T)
    bottom = torch.cat([torch.zeros_like(same), upto], dim=1)  # clean queries: (T, 2T)
    return torch.cat([top, bottom], dim=0)[None, None]
