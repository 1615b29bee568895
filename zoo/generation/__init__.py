"""Sampling: autoregressive with a KV cache, and masked-diffusion samplers."""

from zoo.generation.autoregressive import generate, top_k_filter, top_p_filter
from zoo.generation.diffusion import confidence_threshold, low_confidence_remasking

__all__ = ["confidence_threshold", "generate", "low_confidence_remasking", "top_k_filter", "top_p_filter"]
