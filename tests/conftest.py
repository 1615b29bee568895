import pytest
import torch

from zoo.nn import GroupedQueryAttention, PreNormBlock, RMSNorm, Rotary, SwiGLU, Transformer


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def tiny_backbone(*, vocab_size=64, dim=32, n_layers=2, max_seq_len=64, attention=None, ffn=None, norm=None,
                  position=None, canon_a=None, canon_c=None, tie_embeddings=True) -> Transformer:
    """A 2-layer, width-32 Llama-style backbone; any component can be replaced by a factory."""
    attention = attention or (lambda d: GroupedQueryAttention(d, n_heads=4, n_kv_heads=2))
    return Transformer(
        vocab_size=vocab_size,
        dim=dim,
        n_layers=n_layers,
        max_seq_len=max_seq_len,
        block=lambda d: PreNormBlock(
            d,
            attention=attention,
            ffn=ffn or (lambda d: SwiGLU(d, hidden_dim=64)),
            norm=norm or RMSNorm,
            canon_a=canon_a,
            canon_c=canon_c,
        ),
        norm=norm or RMSNorm,
        position=position or Rotary,
        tie_embeddings=tie_embeddings,
    )
