"""Configuration of a model exported by zoo as transformers remote code.

This file and ``modeling_zoo.py`` import only torch and transformers: a directory holding them loads with
``AutoModelForCausalLM.from_pretrained(path, trust_remote_code=True)`` without zoo installed.

The architecture is described component by component, each a small dict (``None`` = absent):

- ``block_type``: ``pre_norm`` (Llama), ``parallel`` (GPT-NeoX: attention and FFN read the same input) or
  ``sandwich`` (Gemma: each branch is normalized again before it joins the residual stream).
- ``norm`` (the blocks' norms, QK-norm excluded) and ``final_norm``: ``{"kind": "rms", "eps", "unit_offset"}``
  (``unit_offset``: scale by ``1 + weight``) or ``{"kind": "layer", "eps", "bias"}``.
- ``attention``: ``{"n_heads", "n_kv_heads", "head_dim", "bias", "causal", "exclusive", "qk_norm", "canon_b"}``;
  ``exclusive`` removes from each head's output its component along the token's own value vector; ``qk_norm`` is
  a norm dict applied per head to queries and keys; ``canon_b`` a Canon dict on the fused q/k/v projection.
- ``ffn``: ``{"kind": "mlp", "hidden_dim", "bias", "approximate"}`` (GELU MLP), ``{"kind": "gated", "hidden_dim",
  "activation", "approximate", "bias", "canon_d"}`` (``down(act(gate) * up)``; ``silu``, ``relu`` or ``gelu``, the
  latter exact or ``tanh``-approximated) or ``{"kind": "routed", "n_experts", "top_k", "hidden_dim", "activation",
  "approximate", "normalize_top_k"}`` (top-k mixture of gated experts).
- ``position``: ``{"kind": "rotary", "theta", "rotary_dim"}`` (rotate-half layout on the first ``rotary_dim``
  dimensions of each head), ``{"kind": "learned"}`` or ``{"kind": "none"}``.
- ``canon_a`` / ``canon_c``: ``{"kernel_size", "residual"}``: a causal depthwise convolution (with the input added
  back when ``residual``) before attention / before the FFN.
- ``scale_embeddings``: multiply the token embeddings by ``sqrt(hidden_size)``.
- ``mask_token_id``: set for masked-diffusion models (bidirectional attention, sampled by ``generate``'s
  low-confidence remasking); ``diffusion_shift``: the logits at position ``i`` predict token ``i + 1``.
"""

from __future__ import annotations

from transformers import PretrainedConfig


class ZooConfig(PretrainedConfig):
    model_type = "zoo"

    def __init__(
        self,
        *,
        vocab_size: int = 32000,
        hidden_size: int = 256,
        num_hidden_layers: int = 2,
        max_position_embeddings: int = 1024,
        block_type: str = "pre_norm",
        norm: dict | None = None,
        final_norm: dict | None = None,
        attention: dict | None = None,
        ffn: dict | None = None,
        position: dict | None = None,
        canon_a: dict | None = None,
        canon_c: dict | None = None,
        scale_embeddings: bool = False,
        mask_token_id: int | None = None,
        diffusion_shift: bool = False,
        tie_word_embeddings: bool = True,
        **kwargs,
    ) -> None:
        self.vocab_size, self.hidden_size = vocab_size, hidden_size
        self.num_hidden_layers, self.max_position_embeddings = num_hidden_layers, max_position_embeddings
        self.block_type = block_type
        self.norm = norm or {"kind": "rms", "eps": 1e-5, "unit_offset": False}
        self.final_norm = final_norm or dict(self.norm)
        self.attention = attention or {
            "n_heads": 4, "n_kv_heads": 4, "head_dim": hidden_size // 4, "bias": False, "causal": True,
            "exclusive": False, "qk_norm": None, "canon_b": None,
        }  # fmt: skip
        self.ffn = ffn or {"kind": "gated", "hidden_dim": 4 * hidden_size, "activation": "silu", "approximate": "none",
                           "bias": False, "canon_d": None}  # fmt: skip
        self.position = position or {"kind": "rotary", "theta": 10000.0, "rotary_dim": self.attention["head_dim"]}
        self.canon_a, self.canon_c = canon_a, canon_c
        self.scale_embeddings = scale_embeddings
        self.mask_token_id, self.diffusion_shift = mask_token_id, diffusion_shift
        # the usual names, for tools that read them
        self.num_attention_heads = self.attention["n_heads"]
        self.num_key_value_heads = self.attention["n_kv_heads"]
        self.head_dim = self.attention["head_dim"]
        super().__init__(tie_word_embeddings=tie_word_embeddings, **kwargs)
