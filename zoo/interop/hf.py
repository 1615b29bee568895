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

Each family is one :class:`~zoo.interop.mappings.Mapping` in :mod:`zoo.interop.mappings`, with the layouts that
differ between zoo and transformers; this module recognises the family and converts whole models. The import
direction (a transformers config as zoo block factories) is :mod:`zoo.interop.hf_config`.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from zoo.interop.hf_config import backbone_from_config, transformer_kwargs
from zoo.interop.mappings import (
    Gemma3Mapping,
    GPT2Mapping,
    GPTNeoXMapping,
    LlamaMapping,
    Mapping,
    MixtralMapping,
    Qwen3Mapping,
    Qwen3MoeMapping,
)
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
        tanh_gelu = ffn.activation == "gelu" and ffn.approximate == "tanh"
        gemma = type(ffn) in (GatedFFN, GeGLU) and tanh_gelu and ffn.gate_up.bias is None
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
