"""Weights to and from Hugging Face transformers, for every family transformers ships that zoo's blocks express.

The family is read from the architecture (the classes of the blocks and modules), never from a name:

=====================  ===============================================================  ================
transformers class     zoo architecture                                                 block
=====================  ===============================================================  ================
GPT2LMHeadModel        LearnedPositions, LayerNorm, GeluMLP(tanh), MHA with biases, tied  PreNormBlock
GPTNeoXForCausalLM     Rotary (any fraction), LayerNorm, GeluMLP(erf), MHA               ParallelBlock
LlamaForCausalLM       Rotary, RMSNorm, SwiGLU                                           PreNormBlock
Qwen3ForCausalLM       as Llama, plus QK-norm (RMSNorm)                                  PreNormBlock
Gemma3ForCausalLM      (1 + w) RMSNorm, GeGLU, QK-norm, scale_embeddings                 SandwichBlock
MixtralForCausalLM     as Llama with a RoutedFFN (top-k renormalized), no attention bias  PreNormBlock
Qwen3MoeForCausalLM    as Qwen3 with a RoutedFFN                                         PreNormBlock
=====================  ===============================================================  ================

Every norm of a model must be of one kind with one ``eps`` (transformers configs have a single value).
Anything else has no stock transformers equivalent and raises a ``ValueError`` that names the module and the
reason: ``ExclusiveGroupedQueryAttention`` (its value-projection removal is not in any transformers family),
Canon layers (no transformers family has the short convolutions), bidirectional attention (the classes are
causal LMs), a Rotary fraction below 1 outside GPT-NeoX, blocks of different kinds, and any parameter the
family's table does not place.

Each family is one :class:`Mapping`: the same table of parameter names converts in both directions, and the
parity tests use it too. Layouts that differ: zoo fuses q/k/v in one matrix (rows: all query heads, then keys,
then values), GPT-NeoX interleaves them per head; zoo fuses gate/up (gate rows first) where Llama keeps two
matrices; GPT-2 stores ``Conv1D`` weights transposed. The import direction (a transformers config as zoo
block factories) is :mod:`zoo.interop.hf_config`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from zoo.interop.hf_config import backbone_from_config, transformer_kwargs
from zoo.nn import (
    Canon,
    ExclusiveGroupedQueryAttention,
    GatedFFN,
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


@dataclass
class Rule:
    """One zoo parameter and the transformers parameter(s) it corresponds to.

    ``kind``: ``copy``; ``cat`` (zoo's tensor is the transformers tensors stacked along dim 0, sizes ``sizes``:
    q/k/v or gate/up); ``t`` (transposed: GPT-2's Conv1D); ``neox_qkv`` (GPT-NeoX's per-head interleaved q/k/v,
    ``heads`` heads).
    """

    zoo: str
    hf: tuple[str, ...]
    kind: str = "copy"
    sizes: tuple[int, ...] = ()
    heads: int = 0


class Mapping:
    """How one transformers family names zoo's parameters, and how its config describes zoo's architecture."""

    hf_class: str  # the transformers model class, e.g. "LlamaForCausalLM"
    head_key = "lm_head.weight"  # transformers' name of the (possibly tied) output head

    def __init__(self, backbone: Transformer) -> None:
        self.backbone = backbone

    def rules(self) -> list[Rule]:
        raise NotImplementedError

    def config(self):
        """The transformers config of the backbone's architecture."""
        raise NotImplementedError

    def _covered(self, rules: list[Rule]) -> None:
        uncovered = set(self.backbone.state_dict()) - {rule.zoo for rule in rules}
        if self.backbone.tie_embeddings:
            uncovered.discard("head.weight")
        if uncovered:
            raise ValueError(
                f"zoo parameters {sorted(uncovered)} have no place in {self.hf_class}: the architecture has a "
                "module this transformers family lacks (keep the model in zoo's own checkpoint format)"
            )

    def to_hf(self) -> dict[str, Tensor]:
        """transformers state dict of the zoo backbone."""
        rules, state = self.rules(), self.backbone.state_dict()
        self._covered(rules)
        out: dict[str, Tensor] = {}
        for rule in rules:
            value = state[rule.zoo]
            if rule.kind == "copy":
                out[rule.hf[0]] = value
            elif rule.kind == "t":
                out[rule.hf[0]] = value.t().contiguous()
            elif rule.kind == "cat":
                for name, part in zip(rule.hf, value.split(rule.sizes, dim=0), strict=True):
                    out[name] = part.contiguous()
            elif rule.kind == "neox_qkv":  # (q heads | k heads | v heads) -> per head (q, k, v)
                three = value.unflatten(0, (3, rule.heads, -1))  # (3, H, D, ...)
                out[rule.hf[0]] = three.transpose(0, 1).reshape(value.shape).contiguous()
            else:  # pragma: no cover - the rule tables are fixed
                raise AssertionError(rule.kind)
        return out

    def load_hf(self, hf_state: dict[str, Tensor]) -> None:
        """Copy a transformers state dict into the zoo backbone; every tensor on either side must be placed."""
        rules = self.rules()
        self._covered(rules)
        used = {name for rule in rules for name in rule.hf} | {self.head_key}  # the head: tied or placed
        unused = [name for name in hf_state if name not in used]
        if unused:
            raise ValueError(f"{self.hf_class} tensors {unused} have no place in the zoo backbone")
        state = {}
        for rule in rules:
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
        self.backbone.load_state_dict(state, strict=not self.backbone.tie_embeddings)


def _biases(prefix_zoo: str, prefix_hf: str, module: nn.Linear, kind: str = "copy", **extra) -> list[Rule]:
    """The weight rule of a Linear, plus its bias rule when it has one (biases are never transposed)."""
    weight = Rule(f"{prefix_zoo}.weight", (f"{prefix_hf}.weight",), kind, **extra)
    if module.bias is None:
        return [weight]
    return [weight, Rule(f"{prefix_zoo}.bias", (f"{prefix_hf}.bias",), "copy" if kind == "t" else kind, **extra)]


class LlamaMapping(Mapping):
    """Llama and its relatives sharing transformers' ``model.layers.N.self_attn/mlp`` names."""

    hf_class = "LlamaForCausalLM"
    qk_norm = False  # Qwen3: per-head RMSNorm on queries and keys
    sandwich = False  # Gemma 3: four norms per layer

    def layer_rules(self, i: int, block) -> list[Rule]:
        attn, p, a = block.attention, f"model.layers.{i}", f"blocks.{i}.attention"
        sizes = (attn.q_size, attn.kv_size, attn.kv_size)
        rules = [
            Rule(f"blocks.{i}.attention_norm.weight", (f"{p}.input_layernorm.weight",)),
            Rule(f"{a}.qkv.weight", tuple(f"{p}.self_attn.{x}_proj.weight" for x in "qkv"), "cat", sizes),
            *_biases(f"{a}.out", f"{p}.self_attn.o_proj", attn.out),
        ]
        if attn.qkv.bias is not None:
            rules.append(Rule(f"{a}.qkv.bias", tuple(f"{p}.self_attn.{x}_proj.bias" for x in "qkv"), "cat", sizes))
        if self.qk_norm:
            rules += [Rule(f"{a}.{x}_norm.weight", (f"{p}.self_attn.{x}_norm.weight",)) for x in "qk"]
        if self.sandwich:
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
            rules.append(Rule("head.weight", (self.head_key,)))
        for i, block in enumerate(b.blocks):
            rules += self.layer_rules(i, block)
        return rules

    def config_kwargs(self) -> dict:
        b = self.backbone
        attn, ffn = b.blocks[0].attention, b.blocks[0].ffn
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

        return transformers.LlamaConfig(**self.config_kwargs(), hidden_act="silu", mlp_bias=False)


class Qwen3Mapping(LlamaMapping):
    """Identical to :class:`LlamaMapping` except for the QK-norm weights (Qwen3)."""

    hf_class = "Qwen3ForCausalLM"
    qk_norm = True

    def config(self):
        import transformers

        return transformers.Qwen3Config(**self.config_kwargs(), hidden_act="silu", use_sliding_window=False)


class Gemma3Mapping(LlamaMapping):
    """Identical to :class:`Qwen3Mapping` except for the four norms per layer (Gemma 3 text)."""

    hf_class = "Gemma3ForCausalLM"
    qk_norm = True
    sandwich = True

    def config(self):
        import transformers

        kwargs = self.config_kwargs()
        rope = kwargs.pop("rope_parameters")
        return transformers.Gemma3TextConfig(
            **kwargs,
            hidden_activation="gelu_pytorch_tanh",
            query_pre_attn_scalar=kwargs["head_dim"],  # zoo scales scores by head_dim ** -0.5
            layer_types=["full_attention"] * kwargs["num_hidden_layers"],  # zoo has no sliding-window layers
            sliding_window=kwargs["max_position_embeddings"],  # unused by full-attention layers; ≥ context anyway
            final_logit_softcapping=None,
            attn_logit_softcapping=None,
            rope_parameters={"full_attention": rope, "sliding_attention": dict(rope)},
        )


class MixtralMapping(LlamaMapping):
    """Identical to :class:`LlamaMapping` except the FFN is routed experts (transformers 5 stacks them as
    ``experts.gate_up_proj`` (E, 2·hidden, C), gate rows first, and ``experts.down_proj`` (E, C, hidden), the
    layout of :class:`zoo.nn.RoutedFFN`)."""

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
        kwargs.pop("attention_bias")  # Mixtral has none; mapping_for refuses biased attention
        return transformers.MixtralConfig(
            **kwargs, hidden_act="silu", num_local_experts=ffn.n_experts, num_experts_per_tok=ffn.top_k,
            router_aux_loss_coef=ffn.aux_loss_coef, sliding_window=None,
        )  # fmt: skip


class Qwen3MoeMapping(MixtralMapping):
    """Identical to :class:`MixtralMapping` except for the QK-norm weights and the optional top-k
    renormalization (Qwen3-MoE)."""

    hf_class = "Qwen3MoeForCausalLM"
    qk_norm = True

    def config(self):
        import transformers

        ffn = self.backbone.blocks[0].ffn
        return transformers.Qwen3MoeConfig(
            **self.config_kwargs(), hidden_act="silu", num_experts=ffn.n_experts, num_experts_per_tok=ffn.top_k,
            moe_intermediate_size=ffn.hidden_dim, norm_topk_prob=ffn.normalize_top_k,
            router_aux_loss_coef=ffn.aux_loss_coef, decoder_sparse_step=1, mlp_only_layers=[], use_sliding_window=False,
        )  # fmt: skip


class GPT2Mapping(Mapping):
    """GPT-2: ``transformer.h.N`` names, ``Conv1D`` weights stored (in, out), q/k/v fused like zoo's."""

    hf_class = "GPT2LMHeadModel"

    def rules(self) -> list[Rule]:
        rules = [
            Rule("embed.weight", ("transformer.wte.weight",)),
            Rule("position.weight", ("transformer.wpe.weight",)),
            Rule("norm.weight", ("transformer.ln_f.weight",)),
            Rule("norm.bias", ("transformer.ln_f.bias",)),
        ]
        for i, block in enumerate(self.backbone.blocks):
            z, p = f"blocks.{i}", f"transformer.h.{i}"
            for zoo_name, hf_name, kind in (
                ("attention_norm", "ln_1", "copy"), ("ffn_norm", "ln_2", "copy"), ("attention.qkv", "attn.c_attn", "t"),
                ("attention.out", "attn.c_proj", "t"), ("ffn.up", "mlp.c_fc", "t"), ("ffn.down", "mlp.c_proj", "t"),
            ):  # fmt: skip
                rules += _biases(f"{z}.{zoo_name}", f"{p}.{hf_name}", block.get_submodule(zoo_name), kind)
        return rules

    def config(self):
        import transformers

        b = self.backbone
        return transformers.GPT2Config(
            vocab_size=b.vocab_size, n_embd=b.dim, n_layer=b.n_layers, n_head=b.blocks[0].attention.n_heads,
            n_positions=b.max_seq_len, n_inner=b.blocks[0].ffn.up.out_features, activation_function="gelu_new",
            layer_norm_epsilon=b.norm.eps, tie_word_embeddings=True, scale_attn_weights=True,
            scale_attn_by_inverse_layer_idx=False,
        )  # fmt: skip


class GPTNeoXMapping(Mapping):
    """GPT-NeoX (Pythia): ``gpt_neox.layers.N`` names, q/k/v fused but interleaved per head."""

    hf_class = "GPTNeoXForCausalLM"

    def rules(self) -> list[Rule]:
        b = self.backbone
        heads = b.blocks[0].attention.n_heads
        rules = [
            Rule("embed.weight", ("gpt_neox.embed_in.weight",)),
            Rule("norm.weight", ("gpt_neox.final_layer_norm.weight",)),
            Rule("norm.bias", ("gpt_neox.final_layer_norm.bias",)),
        ]
        if not b.tie_embeddings:  # `embed_out` in checkpoints; transformers renames it on load
            rules.append(Rule("head.weight", (self.head_key,)))
        for i, block in enumerate(b.blocks):
            z, p = f"blocks.{i}", f"gpt_neox.layers.{i}"
            rules += [
                *_biases(f"{z}.attention_norm", f"{p}.input_layernorm", block.attention_norm),
                *_biases(f"{z}.ffn_norm", f"{p}.post_attention_layernorm", block.ffn_norm),
                *_biases(f"{z}.attention.qkv", f"{p}.attention.query_key_value", block.attention.qkv, "neox_qkv",
                         heads=heads),
                *_biases(f"{z}.attention.out", f"{p}.attention.dense", block.attention.out),
                *_biases(f"{z}.ffn.up", f"{p}.mlp.dense_h_to_4h", block.ffn.up),
                *_biases(f"{z}.ffn.down", f"{p}.mlp.dense_4h_to_h", block.ffn.down),
            ]  # fmt: skip
        return rules

    def config(self):
        import transformers

        b = self.backbone
        attn, position = b.blocks[0].attention, b.position
        rope = {"rope_type": "default", "rope_theta": position.theta, "partial_rotary_factor": position.fraction}
        return transformers.GPTNeoXConfig(
            vocab_size=b.vocab_size, hidden_size=b.dim, num_hidden_layers=b.n_layers, num_attention_heads=attn.n_heads,
            intermediate_size=b.blocks[0].ffn.up.out_features, max_position_embeddings=b.max_seq_len,
            layer_norm_eps=b.norm.eps, use_parallel_residual=True, hidden_act="gelu",
            tie_word_embeddings=b.tie_embeddings, attention_bias=attn.qkv.bias is not None, rope_parameters=rope,
        )  # fmt: skip


# ---- recognising the family from the architecture -------------------------------------------------------------
def _refuse(reason: str) -> ValueError:
    return ValueError(f"no transformers family matches this architecture: {reason}")


def _named_norms(backbone: Transformer) -> dict[str, nn.Module]:
    norms = {"norm": backbone.norm}
    for i, block in enumerate(backbone.blocks):
        for name in ("attention_norm", "ffn_norm", "post_attention_norm", "post_ffn_norm"):
            if getattr(block, name, None) is not None:
                norms[f"blocks.{i}.{name}"] = getattr(block, name)
        for name in ("q_norm", "k_norm"):
            if getattr(block.attention, name, None) is not None:
                norms[f"blocks.{i}.attention.{name}"] = getattr(block.attention, name)
    return norms


def _norm_kind(norm: nn.Module) -> tuple:
    if isinstance(norm, RMSNorm):
        return ("RMSNorm", norm.eps, norm.unit_offset)
    if isinstance(norm, LayerNorm):
        return ("LayerNorm", norm.eps, norm.elementwise_affine, norm.bias is not None)
    return (type(norm).__name__,)


def _check_expressible(backbone: Transformer) -> None:
    """Refuse what no transformers family has, whatever the rest of the architecture."""
    first = backbone.blocks[0]
    for i, block in enumerate(backbone.blocks):
        for name, module in block.named_modules():
            where = f"blocks.{i}.{name}"
            if isinstance(module, ExclusiveGroupedQueryAttention):
                raise ValueError(
                    f"{where} is ExclusiveGroupedQueryAttention, which stock transformers has no equivalent of (no "
                    "family removes each head's own value direction): export needs GroupedQueryAttention, or keep "
                    "the model in zoo's own checkpoint format"
                )
            if isinstance(module, Canon):
                raise ValueError(
                    f"{where} is a Canon layer, which stock transformers has no equivalent of (no family has its "
                    "short causal convolutions): export needs a model without Canon layers, or keep the model in "
                    "zoo's own checkpoint format"
                )
        if type(block) is not type(first):
            raise _refuse(f"blocks.{i} is a {type(block).__name__} but blocks.0 is a {type(first).__name__}")
        if type(block.attention) is not GroupedQueryAttention:  # a subclass is a variant that computes otherwise
            raise _refuse(f"blocks.{i}.attention is a {type(block.attention).__name__}, not GroupedQueryAttention")
    if not first.attention.causal:
        raise _refuse("the attention is bidirectional (causal=False); transformers' causal-LM classes are causal")
    norms = _named_norms(backbone)
    kinds = {name: _norm_kind(norm) for name, norm in norms.items()}
    for name, kind in kinds.items():
        if kind != kinds["norm"]:
            raise _refuse(
                f"{name} is {kind} but the final norm is {kinds['norm']}; transformers configs have one norm kind "
                "and one eps for the whole model"
            )
    if isinstance(backbone.norm, LayerNorm) and kinds["norm"][2:] != (True, True):
        raise _refuse("GPT-2 and GPT-NeoX LayerNorms have a weight and a bias: set LayerNorm bias true")


def mapping_for(backbone: Transformer) -> Mapping:
    """The transformers family that expresses ``backbone`` exactly, or a ``ValueError`` naming what does not fit."""
    _check_expressible(backbone)
    block = backbone.blocks[0]
    attn, ffn, norm, position = block.attention, block.ffn, backbone.norm, backbone.position
    qk, bias = attn.q_norm is not None, attn.qkv.bias is not None
    if bias != (attn.out.bias is not None):
        raise _refuse("the q/k/v and output projections must both have biases or both lack them")
    mha = attn.n_kv_heads == attn.n_heads and attn.head_dim * attn.n_heads == backbone.dim

    if type(block) is ParallelBlock:  # GPT-NeoX
        if not (isinstance(norm, LayerNorm) and type(ffn) is GeluMLP and isinstance(position, Rotary)):
            raise _refuse("ParallelBlock maps to GPT-NeoX, which needs LayerNorm, GeluMLP and Rotary")
        if ffn.approximate != "none" or ffn.up.bias is None:
            raise _refuse("GPT-NeoX's MLP is GeluMLP(approximate='none', bias=True)")
        if not mha or qk or backbone.scale_embeddings:
            raise _refuse("GPT-NeoX needs MHA with head_dim = dim / n_heads, no QK-norm and no scale_embeddings")
        return GPTNeoXMapping(backbone)

    if type(block) is PreNormBlock and isinstance(position, LearnedPositions):  # GPT-2
        if not (isinstance(norm, LayerNorm) and type(ffn) is GeluMLP and ffn.approximate == "tanh"):
            raise _refuse("learned positions map to GPT-2, which needs LayerNorm and GeluMLP(approximate='tanh')")
        if not (mha and bias and ffn.up.bias is not None) or qk or backbone.scale_embeddings:
            raise _refuse("GPT-2 needs MHA (head_dim = dim / n_heads) with biases, no QK-norm, no scale_embeddings")
        if not backbone.tie_embeddings:
            raise _refuse("GPT-2's head is tied to the embedding: set tie_embeddings true")
        return GPT2Mapping(backbone)

    # the Llama-shaped families
    if not isinstance(position, Rotary) or position.fraction != 1.0:
        raise _refuse(
            f"{type(position).__name__} positions: the Llama-shaped families need Rotary on every head dimension "
            "(fraction 1.0); partial rotary is GPT-NeoX's (ParallelBlock), learned positions GPT-2's"
        )
    if not isinstance(norm, RMSNorm):
        raise _refuse("the Llama-shaped families need RMSNorm")
    if type(block) is SandwichBlock:
        gemma = type(ffn) in (GatedFFN, GeGLU) and ffn.activation == "gelu_tanh" and ffn.gate_up.bias is None
        if not (gemma and norm.unit_offset and qk and backbone.scale_embeddings):
            raise _refuse(
                "SandwichBlock maps to Gemma 3, which needs RMSNorm(unit_offset=True), QK-norm, "
                "GeGLU(approximate='tanh') without biases and scale_embeddings true"
            )
        return Gemma3Mapping(backbone)
    if type(block) is not PreNormBlock:
        raise _refuse(f"{type(block).__name__} has no transformers equivalent")
    if norm.unit_offset or backbone.scale_embeddings:
        raise _refuse("(1 + w) norms and scaled embeddings come with Gemma's SandwichBlock only")
    if type(ffn) is RoutedFFN:
        if ffn.activation != "silu":
            raise _refuse("routed experts must use SiLU (Mixtral, Qwen3-MoE)")
        if qk:
            return Qwen3MoeMapping(backbone)
        if not ffn.normalize_top_k or bias:
            raise _refuse("Mixtral renormalizes the top-k probabilities and has no attention biases")
        return MixtralMapping(backbone)
    if type(ffn) not in (GatedFFN, SwiGLU) or ffn.activation != "silu" or ffn.gate_up.bias is not None:
        raise _refuse(f"Llama and Qwen3 need a SwiGLU FFN without biases, not {type(ffn).__name__}")
    return Qwen3Mapping(backbone) if qk else LlamaMapping(backbone)


# ---- conversion --------------------------------------------------------------------------------------------------
def hf_config_for(backbone: Transformer):
    """The transformers config (a ``PretrainedConfig``) of ``backbone``'s architecture."""
    return mapping_for(backbone).config()


def to_hf_state_dict(backbone: Transformer) -> dict[str, Tensor]:
    """``backbone``'s weights under transformers' names and layouts."""
    return mapping_for(backbone).to_hf()


def from_hf_state_dict(backbone: Transformer, hf_state: dict[str, Tensor]) -> Transformer:
    """Load a transformers state dict into ``backbone`` (built e.g. by :func:`backbone_from_config`)."""
    mapping_for(backbone).load_hf({k: v.detach().float() for k, v in hf_state.items()})
    return backbone


def to_hf(backbone: Transformer, *, dtype: torch.dtype = torch.float32):
    """A transformers ``…ForCausalLM`` with the architecture and weights of ``backbone``, in eval mode."""
    import transformers

    mapping = mapping_for(backbone)
    config = mapping.config()
    config.dtype = dtype
    model = getattr(transformers, mapping.hf_class)(config).to(dtype)
    state = {k: v.detach().to(dtype) for k, v in mapping.to_hf().items()}
    result = model.load_state_dict(state, strict=False)
    missing = [k for k in result.missing_keys if not (k == mapping.head_key and backbone.tie_embeddings)]
    assert not missing and not result.unexpected_keys, (missing, result.unexpected_keys)  # the tables are complete
    model.tie_weights()
    return model.eval()


def from_hf(model) -> Transformer:
    """A zoo backbone with the architecture and weights of a transformers causal-LM ``model``."""
    return from_hf_state_dict(backbone_from_config(model.config), model.state_dict())


def _load_hf_model(path: str):
    import transformers

    try:
        return transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    except OSError as err:
        raise ValueError(f"path={path!r} is not a transformers checkpoint directory: {err}") from err


def load_hf_pretrained(path: str) -> Transformer:
    """A zoo backbone from a local transformers checkpoint directory (``config.json`` + safetensors)."""
    return from_hf(_load_hf_model(path))


class HFPretrained(Transformer):
    """Identical to :class:`zoo.nn.Transformer` except the architecture and the starting weights come from a
    local transformers checkpoint directory (``config.json`` + safetensors), so a run can start from it in YAML::

        model:
          class_path: zoo.objectives.CausalLM
          init_args:
            backbone: {class_path: zoo.interop.HFPretrained, init_args: {path: /models/SmolLM2-135M}}

    The tokenizer is the data module's: give it as many tokens as the model's ``vocab_size`` at most. A checkpoint
    of such a run reloads like any other (``LanguageModel.from_checkpoint``): it rebuilds the architecture from
    ``path`` (which must still hold ``config.json`` and the weights) and then takes the trained weights from the
    checkpoint.

    Args:
        path: the transformers checkpoint directory.
    """

    def __init__(self, *, path: str) -> None:
        hf = _load_hf_model(path)
        super().__init__(**transformer_kwargs(hf.config))
        self.path = path
        from_hf_state_dict(self, hf.state_dict())
