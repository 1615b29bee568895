"""Building blocks in plain PyTorch: no Lightning here. Every class is chosen in YAML by its ``class_path``."""

from zoo.nn.attention import (
    KERNELS,
    AttentionCache,
    ExclusiveGroupedQueryAttention,
    GroupedQueryAttention,
    KVCache,
    eager_attention,
    sdpa_attention,
)
from zoo.nn.block import BlockCache, ParallelBlock, PreNormBlock, SandwichBlock
from zoo.nn.cache import ModuleCache
from zoo.nn.canon import Canon, ConvTail
from zoo.nn.ffn import GatedFFN, GeGLU, GeluMLP, SwiGLU
from zoo.nn.moe import RoutedFFN
from zoo.nn.norm import LayerNorm, RMSNorm
from zoo.nn.position import LearnedPositions, NoPositions, PositionEncoding, Rotary, apply_rotary
from zoo.nn.transformer import DecodingCache, Transformer

__all__ = [
    "KERNELS",
    "AttentionCache",
    "BlockCache",
    "Canon",
    "ConvTail",
    "DecodingCache",
    "ExclusiveGroupedQueryAttention",
    "GatedFFN",
    "GeGLU",
    "GeluMLP",
    "GroupedQueryAttention",
    "KVCache",
    "LayerNorm",
    "LearnedPositions",
    "ModuleCache",
    "NoPositions",
    "ParallelBlock",
    "PositionEncoding",
    "PreNormBlock",
    "RMSNorm",
    "Rotary",
    "RoutedFFN",
    "SandwichBlock",
    "SwiGLU",
    "Transformer",
    "apply_rotary",
    "eager_attention",
    "sdpa_attention",
]
