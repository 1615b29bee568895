"""Sampling: :func:`sample` asks an objective for its own sampler: autoregressive with a KV cache, or the
masked-diffusion samplers (with a block-wise KV cache)."""

from zoo.generation.autoregressive import (
    Generation,
    banned_ngram_tokens,
    decoding_layout,
    generate,
    left_padding_is_exact,
    no_repeat_ngram_filter,
    repetition_penalty_filter,
    top_k_filter,
    top_p_filter,
)
from zoo.generation.diffusion import DiffusionOutput, confidence_threshold, low_confidence_remasking
from zoo.generation.fast_diffusion import diffusion_generate
from zoo.generation.sampling import answer_text, sample, sample_diffusion

__all__ = [
    "DiffusionOutput",
    "Generation",
    "answer_text",
    "banned_ngram_tokens",
    "confidence_threshold",
    "decoding_layout",
    "diffusion_generate",
    "generate",
    "left_padding_is_exact",
    "low_confidence_remasking",
    "no_repeat_ngram_filter",
    "repetition_penalty_filter",
    "sample",
    "sample_diffusion",
    "top_k_filter",
    "top_p_filter",
]
