"""Any zoo backbone as a self-contained transformers directory loaded with ``trust_remote_code=True``.

Stock transformers classes (:mod:`zoo.interop.hf`) cover the families transformers ships; everything else zoo
builds (exclusive attention, Canon layers A/B/C/D, partial rotary outside GPT-NeoX, QK-norm with any block,
parallel and sandwich blocks, mixtures of experts, learned or no positions, bidirectional masked-diffusion models)
is written here as::

    DIR/config.json              ZooConfig: each component as a small dict, auto_map → the two files below
    DIR/configuration_zoo.py     } zoo/interop/hub_code/: import only torch and transformers, never zoo
    DIR/modeling_zoo.py          }
    DIR/diffusion_zoo.py         }  (the masked-diffusion samplers, imported by modeling_zoo.py)
    DIR/model.safetensors        the backbone's own parameter names (embed, blocks.N.attention.qkv, ...)
    DIR/generation_config.json   eos/pad ids; for diffusion models the sampler's settings (steps, block_length, ...)
    DIR/tokenizer.json, tokenizer_config.json

The description is read from the modules' classes and settings; a module whose class this format does not know
(a user's own block, norm or attention subclass) is refused by name, since the modeling file could only guess
what it computes. Before anything is written, the exported model is built from the description, loaded with the
backbone's weights (every parameter must find its place) and run next to the backbone on a probe sequence: an
export whose logits differ from zoo's is refused.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from zoo.nn import (
    Canon,
    ExclusiveGroupedQueryAttention,
    GatedFFN,
    GeGLU,
    GeluMLP,
    GroupedQueryAttention,
    LayerNorm,
    LearnedPositions,
    NoPositions,
    ParallelBlock,
    PreNormBlock,
    RMSNorm,
    Rotary,
    RoutedFFN,
    SandwichBlock,
    SwiGLU,
    Transformer,
)

BLOCK_TYPES = {PreNormBlock: "pre_norm", ParallelBlock: "parallel", SandwichBlock: "sandwich"}


def diffusion_settings(max_seq_len: int) -> dict:
    """Generation settings of a masked-diffusion export (``generation_config.json``): ``python -m zoo generate``'s
    defaults (a 64-token answer in blocks of 32, one token per step), shortened to half the context if it is
    shorter."""
    gen_length = min(64, max(1, max_seq_len // 2))
    block_length = min(32, gen_length) if gen_length % min(32, gen_length) == 0 else gen_length
    return {"max_new_tokens": gen_length, "block_length": block_length, "steps": gen_length, "threshold": None,
            "remasking": "low_confidence", "stop_at_eos": True}  # fmt: skip


def _refuse(where: str, module: object, known: str) -> ValueError:
    return ValueError(
        f"{where} is a {type(module).__name__}, which the remote-code export cannot express (it knows {known}): "
        "build the model from zoo's own modules, or keep it in zoo's checkpoint format"
    )


def _norm(module: nn.Module, where: str) -> dict:
    if type(module) is RMSNorm:
        return {"kind": "rms", "eps": module.eps, "unit_offset": module.unit_offset}
    if type(module) is LayerNorm and module.elementwise_affine:
        return {"kind": "layer", "eps": module.eps, "bias": module.bias is not None}
    raise _refuse(where, module, "RMSNorm and LayerNorm")


def _canon(module: nn.Module | None, where: str) -> dict | None:
    if module is None:
        return None
    if type(module) is not Canon:
        raise _refuse(where, module, "Canon")
    return {"kernel_size": module.kernel_size, "residual": module.residual}


def _attention(module: nn.Module, where: str) -> dict:
    if type(module) not in (GroupedQueryAttention, ExclusiveGroupedQueryAttention):
        raise _refuse(where, module, "GroupedQueryAttention and ExclusiveGroupedQueryAttention")
    if (module.qkv.bias is None) != (module.out.bias is None):
        raise ValueError(f"{where}: the q/k/v and output projections must both have biases or both lack them")
    return {
        "n_heads": module.n_heads, "n_kv_heads": module.n_kv_heads, "head_dim": module.head_dim,
        "bias": module.qkv.bias is not None, "causal": module.causal,
        "exclusive": type(module) is ExclusiveGroupedQueryAttention,
        "qk_norm": _norm(module.q_norm, f"{where}.q_norm") if module.q_norm is not None else None,
        "canon_b": _canon(module.canon, f"{where}.canon"),
    }  # fmt: skip


def _ffn(module: nn.Module, where: str) -> dict:
    if type(module) is GeluMLP:
        return {"kind": "mlp", "hidden_dim": module.up.out_features, "bias": module.up.bias is not None,
                "approximate": module.approximate}  # fmt: skip
    if type(module) in (GatedFFN, SwiGLU, GeGLU):
        return {"kind": "gated", "hidden_dim": module.hidden_dim, "activation": module.activation,
                "approximate": module.approximate, "bias": module.gate_up.bias is not None,
                "canon_d": _canon(module.canon, f"{where}.canon")}  # fmt: skip
    if type(module) is RoutedFFN:
        return {"kind": "routed", "n_experts": module.n_experts, "top_k": module.top_k,
                "hidden_dim": module.hidden_dim, "activation": module.activation, "approximate": "none",
                "normalize_top_k": module.normalize_top_k}  # fmt: skip
    raise _refuse(where, module, "GeluMLP, GatedFFN, SwiGLU, GeGLU and RoutedFFN")


def _position(module: nn.Module) -> dict:
    if type(module) is Rotary:
        return {"kind": "rotary", "theta": module.theta, "rotary_dim": module.rotary_dim}
    if type(module) is LearnedPositions:
        return {"kind": "learned"}
    if type(module) is NoPositions:
        return {"kind": "none"}
    raise _refuse("position", module, "Rotary, LearnedPositions and NoPositions")


def _block(block: nn.Module, where: str) -> dict:
    if type(block) not in BLOCK_TYPES:
        raise _refuse(where, block, "PreNormBlock, ParallelBlock and SandwichBlock")
    return {
        "block_type": BLOCK_TYPES[type(block)],
        "norm": _norm(block.attention_norm, f"{where}.attention_norm"),
        "attention": _attention(block.attention, f"{where}.attention"),
        "ffn": _ffn(block.ffn, f"{where}.ffn"),
        "canon_a": _canon(block.canon_a, f"{where}.canon_a"),
        "canon_c": _canon(block.canon_c, f"{where}.canon_c"),
        "other_norms": [_norm(getattr(block, name), f"{where}.{name}")
                        for name in ("ffn_norm", "post_attention_norm", "post_ffn_norm") if hasattr(block, name)],
    }  # fmt: skip


def zoo_config(backbone: Transformer, *, mask_id: int | None = None, shift: bool = False) -> dict:
    """The ``ZooConfig`` fields that describe ``backbone``; ``mask_id`` (and ``shift``) for masked-diffusion models.
    Raises a ``ValueError`` naming the first module the format cannot express."""
    for method in ("forward", "features"):
        if getattr(type(backbone), method) is not getattr(Transformer, method):
            raise _refuse("the backbone", backbone, "zoo.nn.Transformer and subclasses that keep its forward pass")
    layers = [_block(block, f"blocks.{i}") for i, block in enumerate(backbone.blocks)]
    for i, layer in enumerate(layers):
        if layer != layers[0]:
            differing = sorted(k for k in layer if layer[k] != layers[0][k])
            raise ValueError(f"blocks.{i} differs from blocks.0 in {differing}: the remote-code export needs one block "
                             "configuration for every layer")  # fmt: skip
        if any(norm != layer["norm"] for norm in layer["other_norms"]):
            raise ValueError(f"blocks.{i}: the block's norms must all be of one kind and eps")
    layer = layers[0]
    del layer["other_norms"]
    return {
        "vocab_size": backbone.vocab_size, "hidden_size": backbone.dim, "num_hidden_layers": backbone.n_layers,
        "max_position_embeddings": backbone.max_seq_len, "tie_word_embeddings": backbone.tie_embeddings,
        "scale_embeddings": backbone.scale_embeddings, "final_norm": _norm(backbone.norm, "norm"),
        "position": _position(backbone.position), "mask_token_id": mask_id, "diffusion_shift": shift, **layer,
    }  # fmt: skip


def to_remote_code(backbone: Transformer, *, mask_id: int | None = None, shift: bool = False):
    """The backbone as the exported ``ZooForCausalLM`` (fp32, eval mode), checked to give the backbone's logits."""
    from zoo.interop.hub_code.configuration_zoo import ZooConfig
    from zoo.interop.hub_code.modeling_zoo import ZooForCausalLM

    config = ZooConfig(**zoo_config(backbone, mask_id=mask_id, shift=shift))
    with torch.device("meta"):
        model = ZooForCausalLM(config)
    state = {name: value.detach().float().clone() for name, value in backbone.state_dict().items()}
    result = model.load_state_dict(state, strict=False, assign=True)
    missing = [k for k in result.missing_keys if not (k == "head.weight" and backbone.tie_embeddings)]
    if missing or result.unexpected_keys:
        raise ValueError(f"the remote-code export has no place for {result.unexpected_keys} and no weights for "
                         f"{missing}: the backbone holds parameters its modules do not describe")  # fmt: skip
    if backbone.tie_embeddings:
        model.head.weight = model.embed.weight
    model.eval()
    _check_logits(backbone, model)
    return model


@torch.no_grad()
def _check_logits(backbone: Transformer, model: nn.Module) -> None:
    """The exported model on a probe sequence must give the backbone's logits (fp32)."""
    probe = torch.randint(0, backbone.vocab_size, (1, min(16, backbone.max_seq_len)),
                          generator=torch.Generator().manual_seed(0))  # fmt: skip
    was_training = backbone.training
    reference = backbone.float().eval()(probe.to(backbone.embed.weight.device)).cpu()
    backbone.train(was_training)
    exported = model(input_ids=probe).logits
    if not torch.allclose(exported, reference, rtol=1e-4, atol=1e-4):
        worst = (exported - reference).abs().max().item()
        raise ValueError(f"the remote-code export's logits differ from zoo's by up to {worst:.3g}: not written")


def save_remote_code(
    backbone: Transformer,
    directory: Path,
    *,
    dtype: torch.dtype = torch.float32,
    eos_id: int | None = None,
    mask_id: int | None = None,
    shift: bool = False,
) -> None:
    """Write ``backbone`` as remote code into ``directory``: config, the two code files, weights in ``dtype`` and
    the generation config (with :func:`diffusion_settings` when ``mask_id`` makes it a masked-diffusion model)."""
    from transformers import GenerationConfig

    exported = to_remote_code(backbone, mask_id=mask_id, shift=shift)
    ids = {"eos_token_id": eos_id, "bos_token_id": eos_id, "pad_token_id": eos_id}
    for name, value in ids.items():
        setattr(exported.config, name, value)
    exported.config.dtype = dtype
    # a length limit, so that transformers' generate/pipeline need no default of their own (and warn of none):
    # the diffusion sampler's answer length, or an autoregressive model's context
    length = diffusion_settings(backbone.max_seq_len) if mask_id is not None else {"max_length": backbone.max_seq_len}
    exported.generation_config = GenerationConfig(**ids, use_cache=False, **length)
    type(exported.config).register_for_auto_class()
    type(exported).register_for_auto_class("AutoModelForCausalLM")
    exported.to(dtype).save_pretrained(directory)  # copies the code files and writes auto_map


def write_remote_code(model, tokenizer, directory: Path, *, dtype: torch.dtype) -> None:
    """Write a checkpoint's ``LanguageModel`` (causal or masked diffusion) and its transformers tokenizer into
    ``directory`` (which exists)."""
    description = model.description
    diffusion = description.diffusion
    save_remote_code(model.backbone, directory, dtype=dtype, eos_id=tokenizer.eos_token_id,
                     mask_id=description.mask_id if diffusion else None,
                     shift=diffusion and description.shift)  # fmt: skip
    tokenizer.save_pretrained(directory)
