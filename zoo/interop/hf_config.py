"""A transformers config read as zoo's architecture: the arguments of a :class:`zoo.nn.Transformer`.

This is the import direction of :mod:`zoo.interop.hf`. A transformers config names its family in
``model_type`` (that string is the only thing that says what ``config.json`` describes), so this module keeps
one builder per family in :data:`BUILDERS`; each builder turns the config into block factories and refuses,
with a ``ValueError`` naming the field, every setting zoo's blocks would compute differently (RoPE scaling,
sliding windows, logit soft-capping, other activations, …). Anything it accepts maps to zoo exactly.
"""

from __future__ import annotations

from collections.abc import Callable

from zoo.nn import (
    GeGLU,
    GeluMLP,
    GroupedQueryAttention,
    LayerNorm,
    LearnedPositions,
    ParallelBlock,
    PreNormBlock,
    RMSNorm,
    Rotary,
    RoutedFFN,
    SandwichBlock,
    SwiGLU,
    Transformer,
)


def _refuse(config, field: str, value, fix: str) -> ValueError:
    return ValueError(f"{type(config).__name__} {field}={value!r} has no exact zoo equivalent: {fix}")


def _rope(config, layer_type: str | None = None) -> tuple[float, float]:
    """(theta, rotated fraction) of the config's RoPE; only unscaled ('default') RoPE maps to zoo's Rotary."""
    params = dict(getattr(config, "rope_parameters", None) or {})
    if layer_type is not None and isinstance(params.get(layer_type), dict):  # Gemma 3: one entry per layer type
        params = params[layer_type]
    rope_type = params.get("rope_type", "default")
    if rope_type != "default":
        raise _refuse(config, "rope_parameters.rope_type", rope_type, "zoo's Rotary implements unscaled RoPE only")
    theta = params.get("rope_theta", getattr(config, "rope_theta", None))
    if theta is None:
        raise _refuse(config, "rope_parameters.rope_theta", None, "the config must give a RoPE base")
    fraction = params.get("partial_rotary_factor", getattr(config, "partial_rotary_factor", None)) or 1.0
    return float(theta), float(fraction)


def _full_attention_only(config) -> None:
    """Refuse sliding-window layers whose window is shorter than the context (zoo attends to the whole prefix)."""
    types = getattr(config, "layer_types", None)
    window = getattr(config, "sliding_window", None)
    sliding = any(t != "full_attention" for t in types) if types is not None else window is not None
    if sliding and window is not None and window < config.max_position_embeddings:
        raise _refuse(
            config, "sliding_window", window,
            "zoo has no sliding-window attention; only configs whose layers all use full attention (layer_types all "
            "'full_attention', or a window ≥ max_position_embeddings) import exactly",
        )  # fmt: skip


def _check(config, field: str, allowed: tuple) -> None:
    value = getattr(config, field, None)
    if value not in allowed:
        raise _refuse(config, field, value, f"zoo maps {' or '.join(map(repr, allowed))} only")


def _decoder(config, *, block, norm, ffn, qk_norm=None, theta: float, scale_embeddings: bool = False) -> dict:
    """Transformer arguments shared by the Llama-shaped families (Rotary on every head dimension)."""
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    bias = bool(getattr(config, "attention_bias", False))

    def attention(d: int) -> GroupedQueryAttention:
        return GroupedQueryAttention(
            d, n_heads=config.num_attention_heads, n_kv_heads=config.num_key_value_heads, head_dim=head_dim,
            bias=bias, qk_norm=qk_norm,
        )  # fmt: skip

    return {
        "vocab_size": config.vocab_size,
        "dim": config.hidden_size,
        "n_layers": config.num_hidden_layers,
        "max_seq_len": config.max_position_embeddings,
        "norm": norm,
        "position": lambda d, h, n: Rotary(d, h, n, theta=theta),
        "block": lambda d: block(d, attention=attention, ffn=ffn, norm=norm),
        "tie_embeddings": bool(config.tie_word_embeddings),
        "scale_embeddings": scale_embeddings,
    }


def _llama_shaped(config, ffn: Callable[[int], object], *, qk_norm: bool) -> dict:
    """Llama, Qwen3, Mixtral, Qwen3-MoE: pre-norm blocks, RMSNorm, full RoPE, SiLU experts or FFN."""
    _check(config, "hidden_act", ("silu",))
    if getattr(config, "mlp_bias", False):
        raise _refuse(config, "mlp_bias", True, "zoo's SwiGLU mapping has no FFN biases")
    _full_attention_only(config)
    theta, fraction = _rope(config)
    if fraction != 1.0:
        raise _refuse(config, "partial_rotary_factor", fraction, "Llama-shaped models rotate every head dimension")
    eps = config.rms_norm_eps

    def norm(d: int) -> RMSNorm:
        return RMSNorm(d, eps=eps)

    return _decoder(config, block=PreNormBlock, norm=norm, ffn=ffn, qk_norm=norm if qk_norm else None, theta=theta)


def _llama(config) -> dict:
    return _llama_shaped(config, lambda d: SwiGLU(d, hidden_dim=config.intermediate_size), qk_norm=False)


def _qwen3(config) -> dict:
    return _llama_shaped(config, lambda d: SwiGLU(d, hidden_dim=config.intermediate_size), qk_norm=True)


def _mixtral(config) -> dict:
    def ffn(d: int) -> RoutedFFN:
        return RoutedFFN(
            d, n_experts=config.num_local_experts, top_k=config.num_experts_per_tok,
            hidden_dim=config.intermediate_size, normalize_top_k=True, aux_loss_coef=config.router_aux_loss_coef,
        )  # fmt: skip

    return _llama_shaped(config, ffn, qk_norm=False)


def _qwen3_moe(config) -> dict:
    if config.mlp_only_layers or config.decoder_sparse_step != 1:
        raise _refuse(
            config, "mlp_only_layers/decoder_sparse_step", (config.mlp_only_layers, config.decoder_sparse_step),
            "zoo builds every layer alike; only configs with a routed FFN in every layer import",
        )  # fmt: skip

    def ffn(d: int) -> RoutedFFN:
        return RoutedFFN(
            d, n_experts=config.num_experts, top_k=config.num_experts_per_tok,
            hidden_dim=config.moe_intermediate_size, normalize_top_k=config.norm_topk_prob,
            aux_loss_coef=config.router_aux_loss_coef,
        )  # fmt: skip

    return _llama_shaped(config, ffn, qk_norm=True)


def _gemma3_text(config) -> dict:
    """Gemma 3 text: sandwich blocks, (1 + w) RMSNorm everywhere, QK-norm, GeGLU, √dim embedding scale."""
    _full_attention_only(config)
    _check(config, "hidden_activation", ("gelu_pytorch_tanh",))
    for field in ("final_logit_softcapping", "attn_logit_softcapping"):
        if getattr(config, field, None):
            raise _refuse(config, field, getattr(config, field), "zoo does not soft-cap logits; set it to None")
    if config.query_pre_attn_scalar != config.head_dim:
        raise _refuse(
            config, "query_pre_attn_scalar", config.query_pre_attn_scalar,
            f"zoo scales attention scores by head_dim ** -0.5; it must equal head_dim={config.head_dim}",
        )  # fmt: skip
    ropes = {_rope(config, t) for t in set(config.layer_types)}
    if len(ropes) != 1 or next(iter(ropes))[1] != 1.0:
        raise _refuse(config, "rope_parameters", config.rope_parameters, "zoo uses one full RoPE for every layer")
    eps = config.rms_norm_eps

    def norm(d: int) -> RMSNorm:
        return RMSNorm(d, eps=eps, unit_offset=True)

    return _decoder(
        config, block=SandwichBlock, norm=norm, qk_norm=norm, theta=ropes.pop()[0], scale_embeddings=True,
        ffn=lambda d: GeGLU(d, hidden_dim=config.intermediate_size, approximate="tanh"),
    )  # fmt: skip


def _gpt2(config) -> dict:
    """GPT-2: learned positions, LayerNorm, tanh-GELU MLP, biases everywhere, tied head."""
    _check(config, "activation_function", ("gelu_new", "gelu_pytorch_tanh"))
    _check(config, "scale_attn_weights", (True,))
    _check(config, "scale_attn_by_inverse_layer_idx", (False,))
    eps, inner = config.layer_norm_epsilon, config.n_inner or 4 * config.n_embd

    def norm(d: int) -> LayerNorm:
        return LayerNorm(d, eps=eps)

    def block(d: int) -> PreNormBlock:
        return PreNormBlock(
            d, attention=lambda d: GroupedQueryAttention(d, n_heads=config.n_head, bias=True),
            ffn=lambda d: GeluMLP(d, hidden_dim=inner, approximate="tanh"), norm=norm,
        )  # fmt: skip

    return {
        "vocab_size": config.vocab_size, "dim": config.n_embd, "n_layers": config.n_layer,
        "max_seq_len": config.n_positions, "norm": norm, "position": LearnedPositions, "block": block,
        "tie_embeddings": True,
    }  # fmt: skip


def _gpt_neox(config) -> dict:
    """GPT-NeoX (Pythia): parallel residual, LayerNorm, exact-GELU MLP, partial RoPE."""
    _check(config, "use_parallel_residual", (True,))
    _check(config, "hidden_act", ("gelu",))
    theta, fraction = _rope(config)
    eps, bias = config.layer_norm_eps, bool(config.attention_bias)

    def norm(d: int) -> LayerNorm:
        return LayerNorm(d, eps=eps)

    def block(d: int) -> ParallelBlock:
        return ParallelBlock(
            d, attention=lambda d: GroupedQueryAttention(d, n_heads=config.num_attention_heads, bias=bias),
            ffn=lambda d: GeluMLP(d, hidden_dim=config.intermediate_size, approximate="none"), norm=norm,
        )  # fmt: skip

    return {
        "vocab_size": config.vocab_size, "dim": config.hidden_size, "n_layers": config.num_hidden_layers,
        "max_seq_len": config.max_position_embeddings, "norm": norm, "block": block,
        "position": lambda d, h, n: Rotary(d, h, n, theta=theta, fraction=fraction),
        "tie_embeddings": bool(config.tie_word_embeddings),
    }  # fmt: skip


# transformers model_type -> builder of zoo Transformer arguments
BUILDERS: dict[str, Callable[[object], dict]] = {
    "llama": _llama,
    "qwen3": _qwen3,
    "mixtral": _mixtral,
    "qwen3_moe": _qwen3_moe,
    "gemma3_text": _gemma3_text,
    "gpt2": _gpt2,
    "gpt_neox": _gpt_neox,
}


def transformer_kwargs(config) -> dict:
    """Keyword arguments of :class:`zoo.nn.Transformer` (block factories included) for a transformers config."""
    builder = BUILDERS.get(config.model_type)
    if builder is None:
        raise ValueError(
            f"transformers model_type={config.model_type!r} is not one zoo imports; supported: {', '.join(BUILDERS)}"
        )
    return builder(config)


def backbone_from_config(config) -> Transformer:
    """A zoo backbone with the architecture of a transformers config (freshly initialized weights)."""
    return Transformer(**transformer_kwargs(config))
