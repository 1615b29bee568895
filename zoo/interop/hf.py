"""Weights to and from Hugging Face transformers, for every family transformers ships that zoo's blocks express.

The family is read from the architecture, never from a name:

=====================  =========================================================================  ==============
transformers class     zoo architecture                                                           blocks
=====================  =========================================================================  ==============
GPT2LMHeadModel        LearnedPositions, LayerNorm, GeluMLP(tanh), attention biases, tied         PreNormBlock
GPTNeoXForCausalLM     partial Rotary, LayerNorm, GeluMLP(erf), biases, untied                    ParallelBlock
LlamaForCausalLM       Rotary, RMSNorm, SwiGLU                                                    PreNormBlock
Qwen3ForCausalLM       as Llama, plus QK-norm (RMSNorm)                                           PreNormBlock
Gemma3ForCausalLM      (1 + w) RMSNorm, GeGLU, QK-norm, √dim embedding scale                      SandwichBlock
MixtralForCausalLM     as Llama with a RoutedFFN (top-k renormalized)                             PreNormBlock
Qwen3MoeForCausalLM    as Qwen3 with a RoutedFFN                                                  PreNormBlock
=====================  =========================================================================  ==============

Anything else (exclusive attention, Canon layers, a Rotary fraction outside GPT-NeoX, …) has no stock
transformers equivalent and raises a ``ValueError`` naming the block. Each family is one :class:`Mapping`: the
same table of parameter names converts in both directions, and the parity tests use it too.

Layouts that differ: zoo fuses q/k/v in one matrix (rows: all query heads, then keys, then values), GPT-NeoX
interleaves them per head; zoo fuses gate/up (gate rows first); GPT-2 stores ``Conv1D`` weights transposed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from zoo.nn import (
    Canon,
    ExclusiveGroupedQueryAttention,
    GatedFFN,
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
    Transformer,
)


@dataclass
class Rule:
    """One zoo parameter and the transformers parameter(s) it corresponds to.

    ``kind``: ``copy``; ``cat`` (zoo's tensor is the hf tensors stacked along dim 0, e.g. q/k/v or gate/up);
    ``t`` (transposed: GPT-2's Conv1D); ``neox_qkv`` (GPT-NeoX's per-head interleaved q/k/v).
    """

    zoo: str
    hf: tuple[str, ...]
    kind: str = "copy"
    sizes: tuple[int, ...] = ()
    heads: int = 0


class Mapping:
    """How one transformers family names zoo's parameters, and how its config describes zoo's architecture."""

    hf_class: str

    def __init__(self, backbone: Transformer) -> None:
        self.backbone = backbone

    def rules(self) -> list[Rule]:
        raise NotImplementedError

    def config(self):
        raise NotImplementedError

    def to_hf(self) -> dict[str, Tensor]:
        """transformers state dict of the zoo backbone."""
        state = self.backbone.state_dict()
        out: dict[str, Tensor] = {}
        for rule in self.rules():
            value = state[rule.zoo]
            if rule.kind == "copy":
                out[rule.hf[0]] = value
            elif rule.kind == "t":
                out[rule.hf[0]] = value.t().contiguous()
            elif rule.kind == "cat":
                for name, part in zip(rule.hf, value.split(rule.sizes, dim=0)):
                    out[name] = part.contiguous()
            elif rule.kind == "neox_qkv":  # (q heads | k heads | v heads) -> per head (q, k, v)
                three = value.unflatten(0, (3, rule.heads, -1))  # (3, H, D, ...)
                out[rule.hf[0]] = three.transpose(0, 1).reshape(value.shape).contiguous()
            else:  # pragma: no cover - the rule tables are fixed
                raise AssertionError(rule.kind)
        return out

    def load_hf(self, hf_state: dict[str, Tensor]) -> None:
        """Copy a transformers state dict into the zoo backbone (every zoo parameter must be covered)."""
        state = {}
        for rule in self.rules():
            tensors = [hf_state[name] for name in rule.hf]
            if rule.kind == "copy":
                state[rule.zoo] = tensors[0]
            elif rule.kind == "t":
                state[rule.zoo] = tensors[0].t()
            elif rule.kind == "cat":
                state[rule.zoo] = torch.cat(tensors, dim=0)
            elif rule.kind == "neox_qkv":  # per head (q, k, v) -> (q heads | k heads | v heads)
                value = tensors[0]
                state[rule.zoo] = value.unflatten(0, (rule.heads, 3, -1)).transpose(0, 1).reshape(value.shape)
        missing = set(self.backbone.state_dict()) - set(state)
        if self.backbone.tie_embeddings:
            missing.discard("head.weight")
        assert not missing, f"conversion rules miss {sorted(missing)}"
        self.backbone.load_state_dict(state, strict=not self.backbone.tie_embeddings)


def _attention(block) -> GroupedQueryAttention:
    return block.attention


def _theta(config, layer_type: str = "full_attention") -> float:
    params = getattr(config, "rope_parameters", None) or {}
    if layer_type in params and isinstance(params[layer_type], dict):
        params = params[layer_type]
    theta = params.get("rope_theta", getattr(config, "rope_theta", None))
    if theta is None:
        raise ValueError(f"{type(config).__name__} has no rope_theta")
    return float(theta)


class LlamaMapping(Mapping):
    """Llama and its relatives sharing transformers' ``model.layers.N.self_attn/mlp`` names."""

    hf_class = "LlamaForCausalLM"
    qk_norm = False
    post_norms = False

    def layer_rules(self, i: int, block) -> list[Rule]:
        attn, p = _attention(block), f"model.layers.{i}"
        a = f"blocks.{i}.attention"
        rules = [
            Rule(f"blocks.{i}.attention_norm.weight", (f"{p}.input_layernorm.weight",)),
            Rule(f"{a}.qkv.weight", tuple(f"{p}.self_attn.{x}_proj.weight" for x in "qkv"), "cat",
                 (attn.q_size, attn.kv_size, attn.kv_size)),
            Rule(f"{a}.out.weight", (f"{p}.self_attn.o_proj.weight",)),
        ]  # fmt: skip
        if attn.qkv.bias is not None:
            rules.append(Rule(f"{a}.qkv.bias", tuple(f"{p}.self_attn.{x}_proj.bias" for x in "qkv"), "cat",
                              (attn.q_size, attn.kv_size, attn.kv_size)))  # fmt: skip
        if attn.out.bias is not None:
            rules.append(Rule(f"{a}.out.bias", (f"{p}.self_attn.o_proj.bias",)))
        if self.qk_norm:
            rules += [Rule(f"{a}.{x}_norm.weight", (f"{p}.self_attn.{x}_norm.weight",)) for x in "qk"]
        if self.post_norms:  # Gemma's four norms
            rules += [
                Rule(f"blocks.{i}.post_attention_norm.weight", (f"{p}.post_attention_layernorm.weight",)),
                Rule(f"blocks.{i}.ffn_norm.weight", (f"{p}.pre_feedforward_layernorm.weight",)),
                Rule(f"blocks.{i}.post_ffn_norm.weight", (f"{p}.post_feedforward_layernorm.weight",)),
            ]
        else:
            rules.append(Rule(f"blocks.{i}.ffn_norm.weight", (f"{p}.post_attention_layernorm.weight",)))
        return rules + self.ffn_rules(i, block)

    def ffn_rules(self, i: int, block) -> list[Rule]:
        f, p, h = f"blocks.{i}.ffn", f"model.layers.{i}.mlp", block.ffn.hidden_dim
        return [
            Rule(f"{f}.gate_up.weight", (f"{p}.gate_proj.weight", f"{p}.up_proj.weight"), "cat", (h, h)),
            Rule(f"{f}.down.weight", (f"{p}.down_proj.weight",)),
        ]

    def rules(self) -> list[Rule]:
        b = self.backbone
        rules = [Rule("embed.weight", ("model.embed_tokens.weight",)), Rule("norm.weight", ("model.norm.weight",))]
        if not b.tie_embeddings:
            rules.append(Rule("head.weight", ("lm_head.weight",)))
        for i, block in enumerate(b.blocks):
            rules += self.layer_rules(i, block)
        return rules

    def config_kwargs(self) -> dict:
        b = self.backbone
        attn, ffn = _attention(b.blocks[0]), b.blocks[0].ffn
        return {
            "vocab_size": b.vocab_size,
            "hidden_size": b.dim,
            "num_hidden_layers": b.n_layers,
            "num_attention_heads": attn.n_heads,
            "num_key_value_heads": attn.n_kv_heads,
            "head_dim": attn.head_dim,
            "intermediate_size": ffn.hidden_dim,
            "max_position_embeddings": b.max_seq_len,
            "rms_norm_eps": b.norm.eps,
            "tie_word_embeddings": b.tie_embeddings,
            "rope_parameters": {"rope_type": "default", "rope_theta": b.position.theta},
            "attention_bias": attn.qkv.bias is not None,
        }

    def config(self):
        import transformers

        config_class = getattr(transformers, self.hf_class.replace("ForCausalLM", "Config"))
        return config_class(**self.config_kwargs(), mlp_bias=False)


class Qwen3Mapping(LlamaMapping):
    hf_class = "Qwen3ForCausalLM"
    qk_norm = True

    def config(self):
        import transformers

        return transformers.Qwen3Config(**self.config_kwargs())


class Gemma3Mapping(LlamaMapping):
    hf_class = "Gemma3ForCausalLM"
    qk_norm = True
    post_norms = True

    def config(self):
        import transformers

        kwargs = self.config_kwargs()
        theta = kwargs.pop("rope_parameters")["rope_theta"]
        rope = {"rope_type": "default", "rope_theta": theta}
        return transformers.Gemma3TextConfig(
            **kwargs,
            hidden_activation="gelu_pytorch_tanh",
            query_pre_attn_scalar=kwargs["head_dim"],  # zoo scales scores by head_dim ** -0.5
            layer_types=["full_attention"] * kwargs["num_hidden_layers"],  # zoo has no sliding-window layers
            sliding_window=kwargs["max_position_embeddings"],
            rope_parameters={"full_attention": rope, "sliding_attention": dict(rope)},
        )


class MixtralMapping(LlamaMapping):
    hf_class = "MixtralForCausalLM"

    def ffn_rules(self, i: int, block) -> list[Rule]:
        f, p = f"blocks.{i}.ffn", f"model.layers.{i}.mlp"
        return [
            Rule(f"{f}.router.weight", (f"{p}.gate.weight",)),
            Rule(f"{f}.gate_up", (f"{p}.experts.gate_up_proj",)),
            Rule(f"{f}.down", (f"{p}.experts.down_proj",)),
        ]

    def config(self):
        import transformers

        ffn = self.backbone.blocks[0].ffn
        kwargs = self.config_kwargs()
        kwargs.update(num_local_experts=ffn.n_experts, num_experts_per_tok=ffn.top_k,
                      router_aux_loss_coef=ffn.aux_loss_coef)  # fmt: skip
        kwargs.pop("attention_bias")
        return transformers.MixtralConfig(**kwargs)


class Qwen3MoeMapping(MixtralMapping):
    hf_class = "Qwen3MoeForCausalLM"
    qk_norm = True

    def config(self):
        import transformers

        ffn = self.backbone.blocks[0].ffn
        kwargs = self.config_kwargs()
        kwargs.update(num_experts=ffn.n_experts, num_experts_per_tok=ffn.top_k, moe_intermediate_size=ffn.hidden_dim,
                      norm_topk_prob=ffn.normalize_top_k, router_aux_loss_coef=ffn.aux_loss_coef,
                      decoder_sparse_step=1, mlp_only_layers=[])  # fmt: skip
        return transformers.Qwen3MoeConfig(**kwargs)


class GPT2Mapping(Mapping):
    hf_class = "GPT2LMHeadModel"

    def rules(self) -> list[Rule]:
        rules = [
            Rule("embed.weight", ("transformer.wte.weight",)),
            Rule("position.weight", ("transformer.wpe.weight",)),
            Rule("norm.weight", ("transformer.ln_f.weight",)),
            Rule("norm.bias", ("transformer.ln_f.bias",)),
        ]
        for i in range(self.backbone.n_layers):
            z, p = f"blocks.{i}", f"transformer.h.{i}"
            for zoo_name, hf_name, kind in (
                ("attention_norm", "ln_1", "copy"), ("ffn_norm", "ln_2", "copy"), ("attention.qkv", "attn.c_attn", "t"),
                ("attention.out", "attn.c_proj", "t"), ("ffn.up", "mlp.c_fc", "t"), ("ffn.down", "mlp.c_proj", "t"),
            ):  # fmt: skip
                rules.append(Rule(f"{z}.{zoo_name}.weight", (f"{p}.{hf_name}.weight",), kind))
                rules.append(Rule(f"{z}.{zoo_name}.bias", (f"{p}.{hf_name}.bias",)))
        return rules

    def config(self):
        import transformers

        b = self.backbone
        return transformers.GPT2Config(
            vocab_size=b.vocab_size, n_embd=b.dim, n_layer=b.n_layers, n_head=_attention(b.blocks[0]).n_heads,
            n_positions=b.max_seq_len, n_inner=b.blocks[0].ffn.up.out_features, activation_function="gelu_new",
            layer_norm_epsilon=b.norm.eps, tie_word_embeddings=True,
        )  # fmt: skip


class GPTNeoXMapping(Mapping):
    hf_class = "GPTNeoXForCausalLM"

    def rules(self) -> list[Rule]:
        heads = _attention(self.backbone.blocks[0]).n_heads
        rules = [
            Rule("embed.weight", ("gpt_neox.embed_in.weight",)),
            Rule("head.weight", ("lm_head.weight",)),  # `embed_out` in checkpoints; transformers renames it on load
            Rule("norm.weight", ("gpt_neox.final_layer_norm.weight",)),
            Rule("norm.bias", ("gpt_neox.final_layer_norm.bias",)),
        ]
        for i in range(self.backbone.n_layers):
            z, p = f"blocks.{i}", f"gpt_neox.layers.{i}"
            for suffix in ("weight", "bias"):
                rules += [
                    Rule(f"{z}.attention_norm.{suffix}", (f"{p}.input_layernorm.{suffix}",)),
                    Rule(f"{z}.ffn_norm.{suffix}", (f"{p}.post_attention_layernorm.{suffix}",)),
                    Rule(f"{z}.attention.qkv.{suffix}", (f"{p}.attention.query_key_value.{suffix}",), "neox_qkv",
                         heads=heads),
                    Rule(f"{z}.attention.out.{suffix}", (f"{p}.attention.dense.{suffix}",)),
                    Rule(f"{z}.ffn.up.{suffix}", (f"{p}.mlp.dense_h_to_4h.{suffix}",)),
                    Rule(f"{z}.ffn.down.{suffix}", (f"{p}.mlp.dense_4h_to_h.{suffix}",)),
                ]  # fmt: skip
        return rules

    def config(self):
        import transformers

        b = self.backbone
        rope = {"rope_type": "default", "rope_theta": b.position.theta, "partial_rotary_factor": b.position.fraction}
        return transformers.GPTNeoXConfig(
            vocab_size=b.vocab_size, hidden_size=b.dim, num_hidden_layers=b.n_layers,
            num_attention_heads=_attention(b.blocks[0]).n_heads, intermediate_size=b.blocks[0].ffn.up.out_features,
            max_position_embeddings=b.max_seq_len, layer_norm_eps=b.norm.eps, use_parallel_residual=True,
            hidden_act="gelu", tie_word_embeddings=False, attention_bias=True, rope_parameters=rope,
        )  # fmt: skip


# ---- recognising the family ----------------------------------------------------------------------------------
def mapping_for(backbone: Transformer) -> Mapping:
    """The transformers family that expresses ``backbone`` exactly, or a ``ValueError`` naming what does not fit."""
    block, attn = backbone.blocks[0], _attention(backbone.blocks[0])
    for i, b in enumerate(backbone.blocks):
        for name, module in b.named_modules():
            if isinstance(module, ExclusiveGroupedQueryAttention):
                raise ValueError(
                    f"blocks.{i}.{name} is ExclusiveGroupedQueryAttention, which stock transformers has no "
                    "equivalent of: export needs GroupedQueryAttention (or keep the model in zoo's own format)"
                )
            if isinstance(module, Canon):
                raise ValueError(
                    f"blocks.{i}.{name} is a Canon layer, which stock transformers has no equivalent of: export "
                    "needs a model without Canon layers (or keep the model in zoo's own format)"
                )
        if type(b) is not type(block):
            raise ValueError(f"blocks.{i} is a {type(b).__name__} but block 0 is a {type(block).__name__}")
    if not attn.causal:
        raise ValueError("the attention is bidirectional; transformers' causal-LM classes need causal attention")
    norm, ffn, position = backbone.norm, block.ffn, backbone.position
    qk = attn.q_norm is not None

    def refuse(reason: str) -> ValueError:
        return ValueError(f"no transformers family matches this architecture: {reason}")

    if type(block) is ParallelBlock:
        if not (isinstance(norm, LayerNorm) and isinstance(ffn, GeluMLP) and isinstance(position, Rotary)):
            raise refuse("ParallelBlock maps to GPT-NeoX, which needs LayerNorm, GeluMLP and Rotary")
        if ffn.approximate != "none" or attn.n_kv_heads != attn.n_heads or attn.qkv.bias is None or qk:
            raise refuse("GPT-NeoX needs the exact GELU, MHA, attention biases and no QK-norm")
        if backbone.tie_embeddings:
            raise refuse("GPT-NeoX has an untied head: set tie_embeddings false")
        return GPTNeoXMapping(backbone)
    if type(block) is PreNormBlock and isinstance(position, LearnedPositions):
        if not (isinstance(norm, LayerNorm) and isinstance(ffn, GeluMLP) and ffn.approximate == "tanh"):
            raise refuse("learned positions map to GPT-2, which needs LayerNorm and GeluMLP(approximate='tanh')")
        if attn.n_kv_heads != attn.n_heads or attn.qkv.bias is None or qk or not backbone.tie_embeddings:
            raise refuse("GPT-2 needs MHA with biases, no QK-norm and tied embeddings")
        return GPT2Mapping(backbone)
    if not isinstance(position, Rotary) or position.fraction != 1.0:
        raise refuse("Llama-family models need Rotary on every head dimension (fraction 1.0)")
    if not isinstance(norm, RMSNorm) or (attn.q_norm is not None and not isinstance(attn.q_norm, RMSNorm)):
        raise refuse("Llama-family models need RMSNorm")
    if type(block) is SandwichBlock:
        gemma = norm.unit_offset and qk and backbone.scale_embeddings and getattr(ffn, "activation", "") == "gelu_tanh"
        if not gemma:
            raise refuse("SandwichBlock maps to Gemma 3: (1 + w) RMSNorm, QK-norm, GeGLU, scale_embeddings")
        return Gemma3Mapping(backbone)
    if type(block) is not PreNormBlock or norm.unit_offset or backbone.scale_embeddings:
        raise refuse(f"{type(block).__name__} with these norms has no transformers equivalent")
    if isinstance(ffn, RoutedFFN):
        if ffn.activation != "silu":
            raise refuse("routed experts must use SiLU (Mixtral, Qwen3-MoE)")
        if qk:
            return Qwen3MoeMapping(backbone)
        if not ffn.normalize_top_k:
            raise refuse("Mixtral renormalizes the top-k probabilities: set normalize_top_k true")
        return MixtralMapping(backbone)
    if not isinstance(ffn, GatedFFN) or ffn.activation != "silu" or ffn.gate_up.bias is not None:
        raise refuse("Llama and Qwen3 need a SwiGLU FFN without biases")
    if attn.out.bias is not None and attn.qkv.bias is None:
        raise refuse("an output-projection bias without q/k/v biases")
    return Qwen3Mapping(backbone) if qk else LlamaMapping(backbone)


# ---- the other direction: a zoo backbone from a transformers config -------------------------------------------
def _llama_like(config, *, block_cls, norm, qk_norm, ffn, position_theta, scale_embeddings=False) -> Transformer:
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    bias = bool(getattr(config, "attention_bias", False))

    def attention(d):
        return GroupedQueryAttention(
            d, n_heads=config.num_attention_heads, n_kv_heads=config.num_key_value_heads, head_dim=head_dim,
            bias=bias, qk_norm=qk_norm,
        )  # fmt: skip

    return Transformer(
        vocab_size=config.vocab_size, dim=config.hidden_size, n_layers=config.num_hidden_layers,
        max_seq_len=config.max_position_embeddings, norm=norm,
        position=lambda d, h, n: Rotary(d, h, n, theta=position_theta),
        block=lambda d: block_cls(d, attention=attention, ffn=ffn, norm=norm),
        tie_embeddings=bool(config.tie_word_embeddings), scale_embeddings=scale_embeddings,
    )  # fmt: skip


def backbone_from_config(config) -> Transformer:
    """An (uninitialized-by-checkpoint) zoo backbone with the architecture of a transformers config."""
    from zoo.nn import GeGLU, SwiGLU

    kind = config.model_type
    if kind in ("llama", "qwen3", "mixtral", "qwen3_moe"):
        eps = config.rms_norm_eps

        def norm(d):
            return RMSNorm(d, eps=eps)

        if getattr(config, "mlp_bias", False):
            raise ValueError(f"{kind} config has mlp_bias=True, which zoo's SwiGLU mapping does not cover")
        if kind in ("llama", "qwen3"):
            ffn = lambda d: SwiGLU(d, hidden_dim=config.intermediate_size)  # noqa: E731
        elif kind == "mixtral":
            ffn = lambda d: RoutedFFN(  # noqa: E731
                d, n_experts=config.num_local_experts, top_k=config.num_experts_per_tok,
                hidden_dim=config.intermediate_size, aux_loss_coef=config.router_aux_loss_coef,
            )  # fmt: skip
        else:
            if config.mlp_only_layers or config.decoder_sparse_step != 1:
                raise ValueError("Qwen3-MoE configs with dense layers (mlp_only_layers, decoder_sparse_step) differ")
            ffn = lambda d: RoutedFFN(  # noqa: E731
                d, n_experts=config.num_experts, top_k=config.num_experts_per_tok,
                hidden_dim=config.moe_intermediate_size, normalize_top_k=config.norm_topk_prob,
                aux_loss_coef=config.router_aux_loss_coef,
            )  # fmt: skip
        qk = norm if kind in ("qwen3", "qwen3_moe") else None
        theta = _theta(config)
        return _llama_like(config, block_cls=PreNormBlock, norm=norm, qk_norm=qk, ffn=ffn, position_theta=theta)
    if kind == "gemma3_text":
        sliding = any(t != "full_attention" for t in config.layer_types)
        if sliding and config.sliding_window < config.max_position_embeddings:
            raise ValueError(
                "this Gemma 3 config has sliding-window layers, which zoo does not implement: only configs with "
                "layer_types all 'full_attention' (or a window ≥ the context) import exactly"
            )
        softcap = config.final_logit_softcapping or config.attn_logit_softcapping
        if config.query_pre_attn_scalar != config.head_dim or softcap:
            raise ValueError("Gemma 3 configs with query_pre_attn_scalar ≠ head_dim or logit softcapping differ")
        eps = config.rms_norm_eps

        def norm(d):
            return RMSNorm(d, eps=eps, unit_offset=True)

        theta = {_theta(config, t) for t in set(config.layer_types)}
        if len(theta) != 1:
            raise ValueError(f"Gemma 3 config uses several RoPE thetas {sorted(theta)}; zoo has one per model")
        return _llama_like(
            config, block_cls=SandwichBlock, norm=norm, qk_norm=norm, position_theta=theta.pop(),
            ffn=lambda d: GeGLU(d, hidden_dim=config.intermediate_size), scale_embeddings=True,
        )  # fmt: skip
    if kind == "gpt2":
        eps, inner = config.layer_norm_epsilon, config.n_inner or 4 * config.n_embd
        if config.activation_function not in ("gelu_new", "gelu_pytorch_tanh"):
            raise ValueError(f"GPT-2 activation_function={config.activation_function!r}: zoo maps the tanh GELU only")
        return Transformer(
            vocab_size=config.vocab_size, dim=config.n_embd, n_layers=config.n_layer, max_seq_len=config.n_positions,
            norm=lambda d: LayerNorm(d, eps=eps), position=LearnedPositions, tie_embeddings=True,
            block=lambda d: PreNormBlock(
                d, attention=lambda d: GroupedQueryAttention(d, n_heads=config.n_head, bias=True),
                ffn=lambda d: GeluMLP(d, hidden_dim=inner, approximate="tanh"),
                norm=lambda d: LayerNorm(d, eps=eps),
            ),
        )  # fmt: skip
    if kind == "gpt_neox":
        if not config.use_parallel_residual or config.hidden_act != "gelu":
            raise ValueError("GPT-NeoX configs without the parallel residual or the exact GELU differ")
        eps = config.layer_norm_eps
        fraction = config.rope_parameters.get("partial_rotary_factor", 1.0)
        theta = _theta(config)
        return Transformer(
            vocab_size=config.vocab_size, dim=config.hidden_size, n_layers=config.num_hidden_layers,
            max_seq_len=config.max_position_embeddings, norm=lambda d: LayerNorm(d, eps=eps),
            position=lambda d, h, n: Rotary(d, h, n, theta=theta, fraction=fraction),
            tie_embeddings=bool(config.tie_word_embeddings),
            block=lambda d: ParallelBlock(
                d, attention=lambda d: GroupedQueryAttention(d, n_heads=config.num_attention_heads, bias=True),
                ffn=lambda d: GeluMLP(d, hidden_dim=config.intermediate_size, approximate="none"),
                norm=lambda d: LayerNorm(d, eps=eps),
            ),
        )  # fmt: skip
    raise ValueError(
        f"transformers model_type={kind!r} is not one zoo imports; supported: llama, qwen3, gemma3_text, mixtral, "
        "qwen3_moe, gpt2, gpt_neox"
    )


# ---- whole models ----------------------------------------------------------------------------------------------
def to_hf(backbone: Transformer, *, dtype: torch.dtype = torch.float32):
    """A transformers ``…ForCausalLM`` with the architecture and weights of ``backbone``."""
    import transformers

    mapping = mapping_for(backbone)
    model_class: Callable = getattr(transformers, mapping.hf_class)
    config = mapping.config()
    with torch.device("meta"):
        model = model_class(config)
    state = {k: v.detach().to(dtype) for k, v in mapping.to_hf().items()}
    model.load_state_dict(state, strict=False, assign=True)
    model.tie_weights()
    leftover = [name for name, p in model.named_parameters() if p.device.type == "meta"]
    if leftover:
        raise AssertionError(f"{mapping.hf_class} parameters the conversion did not set: {leftover}")
    if any(buffer.device.type == "meta" for buffer in model.buffers()):  # RoPE tables: built again on the CPU
        model = model_class(config).to(dtype)
        model.load_state_dict(state, strict=False)
        model.tie_weights()
    return model.eval()


def from_hf(model) -> Transformer:
    """A zoo backbone with the architecture and weights of a transformers causal-LM ``model``."""
    backbone = backbone_from_config(model.config)
    mapping = mapping_for(backbone)
    hf_state = {k: v.detach().float() for k, v in model.state_dict().items()}
    mapping.load_hf(hf_state)
    return backbone


def load_hf_pretrained(path: str) -> Transformer:
    """A zoo backbone from a local transformers checkpoint directory (``config.json`` + safetensors)."""
    import transformers

    try:
        model = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    except OSError as err:
        raise ValueError(f"cannot load a transformers checkpoint from {path!r}: {err}") from err
    return from_hf(model)


class HFPretrained(Transformer):
    """A zoo backbone initialized from a local transformers checkpoint directory, for YAML::

        model:
          class_path: zoo.objectives.CausalLM
          init_args:
            backbone: {class_path: zoo.interop.HFPretrained, init_args: {path: /models/SmolLM-135M}}

    The architecture comes from the directory's ``config.json``, the weights from its safetensors. A checkpoint
    of a run started this way reloads with the same ``path`` (the architecture is read again; the trained
    weights come from the checkpoint).

    Args:
        path: the transformers checkpoint directory.
    """

    def __init__(self, *, path: str) -> None:
        loaded = load_hf_pretrained(path)
        # Transformer's constructor takes factories, but here the architecture comes from config.json and is
        # built by backbone_from_config: adopt that instance's modules, parameters and settings as this one's.
        self.__dict__.update(loaded.__dict__)
        self.path = path
