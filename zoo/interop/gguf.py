"""A zoo backbone and its tokenizer as one GGUF file for llama.cpp, written with the ``gguf`` package.

llama.cpp's ``llama`` architecture computes exactly zoo's Llama-shaped causal model: pre-norm blocks, RMSNorm
(one ``eps``), rotary positions on every head dimension (any ``theta``), grouped-query or multi-head attention
(``head_dim`` free), a SwiGLU FFN without biases, a tied or untied head; with QK-norm (an RMSNorm per query and
key head before RoPE) the same model is llama.cpp's ``qwen3``. Everything else is refused by name before a byte
is written (:func:`check_llama`): exclusive attention, Canon layers, partial rotary, attention biases, parallel
or sandwich blocks, routed experts, LayerNorm, learned positions, bidirectional attention.

Layouts. The weights go through the transformers tables (:class:`zoo.interop.mappings.LlamaMapping`,
``Qwen3Mapping``), whose names ``gguf``'s own :class:`gguf.TensorNameMap` translates to llama.cpp's. zoo's
:class:`~zoo.nn.Rotary` pairs feature ``i`` with ``i + D/2`` of each head (the "rotate half" layout of
transformers, which llama.cpp's ``qwen3`` uses too); llama.cpp's ``llama`` architecture rotates adjacent pairs
``(2i, 2i + 1)``. For ``llama``, permuting the rows of each query and key head from ``[x_0 … x_{D/2-1} | y_0 …
y_{D/2-1}]`` to ``[x_0 y_0 x_1 y_1 …]`` makes the two equal: scores are a dot product over the head dimension,
so the same permutation of queries and keys leaves them unchanged (:func:`interleave_heads`).

Masked diffusion. A bidirectional Llama-shaped model trained by :class:`~zoo.objectives.MaskedDiffusionLM` is
llama.cpp's ``llada`` architecture (the ``llama`` layout with non-causal attention and no KV cache), with its
mask token and whether its logits keep the autoregressive shift (``diffusion.shift_logits``) in the metadata;
llama.cpp samples it with its diffusion tool (``llama-diffusion-cli``).

Tokenizer. zoo's byte-level BPE is written as llama.cpp's ``gpt2`` tokenizer model: the vocabulary in id order,
the merges in rank order, special tokens as control tokens, the end-of-text token as eos and bos with no bos
added, and the pre-tokenizer whose split llama.cpp reproduces (:data:`PRE_TOKENIZERS`; a tokenizer built
otherwise is refused, since llama.cpp would split its text into other tokens).
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np
import torch
from tokenizers import Tokenizer
from torch import Tensor

from zoo.nn import (
    Canon,
    ExclusiveGroupedQueryAttention,
    GatedFFN,
    GroupedQueryAttention,
    PreNormBlock,
    RMSNorm,
    Rotary,
    SwiGLU,
    Transformer,
)

OUTTYPES = ("f32", "f16", "q8_0")

# The pre-tokenizers of `tokenizers` that a llama.cpp pre-tokenizer type splits identically, as JSON -> name.
# "gpt-2": ByteLevel's own regex ('s|'t|...| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+), which zoo's
# TrainedBPE uses; "starcoder": single digits first, then the same byte-level split (StarCoder's tokenizer).
_BYTE_LEVEL = {"type": "ByteLevel", "add_prefix_space": False, "use_regex": True}
PRE_TOKENIZERS: dict[str, str] = {
    json.dumps(_BYTE_LEVEL, sort_keys=True): "gpt-2",
    json.dumps(
        {"type": "Sequence", "pretokenizers": [{"type": "Digits", "individual_digits": True}, _BYTE_LEVEL]},
        sort_keys=True,
    ): "starcoder",
}


def _refuse(where: str, what: str, fix: str) -> ValueError:
    return ValueError(f"GGUF export: {where} is {what}, which llama.cpp's llama architecture cannot express: {fix}")


def check_llama(backbone: Transformer, *, diffusion: bool = False) -> None:
    """Raise a ``ValueError`` naming the first module llama.cpp's ``llama`` architecture (``llada`` for a
    masked-diffusion model, ``diffusion=True``) would compute otherwise."""
    keep = "keep the model in zoo's checkpoint format, or export it with --format hf / remote-code"
    for i, block in enumerate(backbone.blocks):
        for name, module in block.named_modules():
            where = f"blocks.{i}.{name}" if name else f"blocks.{i}"
            if isinstance(module, ExclusiveGroupedQueryAttention):
                raise _refuse(where, "ExclusiveGroupedQueryAttention (each head's own value direction removed)", keep)
            if isinstance(module, Canon):
                raise _refuse(where, "a Canon layer (short causal convolution)", keep)
        if type(block) is not PreNormBlock:
            raise _refuse(f"blocks.{i}", f"a {type(block).__name__} (llama.cpp's llama blocks are pre-norm)", keep)
        attn, ffn = block.attention, block.ffn
        if type(attn) is not GroupedQueryAttention:
            raise _refuse(f"blocks.{i}.attention", type(attn).__name__, keep)
        if attn.causal == diffusion:
            what, fix = (
                ("causal", "a diffusion model attends both ways")
                if diffusion
                else (
                    "bidirectional (causal=False)",
                    "only causal LMs and MaskedDiffusionLM checkpoints export to GGUF",
                )
            )
            raise _refuse(f"blocks.{i}.attention", what, fix)
        if diffusion and attn.q_norm is not None:
            raise _refuse(f"blocks.{i}.attention", "QK-normed in a diffusion model", "llada has no QK-norm")
        if attn.q_norm is not None and not isinstance(attn.q_norm, RMSNorm):
            raise _refuse(f"blocks.{i}.attention", f"QK-normed by {type(attn.q_norm).__name__}", "use RMSNorm")
        if attn.qkv.bias is not None or attn.out.bias is not None:
            raise _refuse(f"blocks.{i}.attention", "biased (bias=True)", "train with attention bias false")
        if type(ffn) not in (SwiGLU, GatedFFN) or ffn.activation != "silu" or ffn.gate_up.bias is not None:
            raise _refuse(f"blocks.{i}.ffn", f"a {type(ffn).__name__}", "llama's FFN is SwiGLU without biases")
    position = backbone.position
    if not isinstance(position, Rotary):
        raise _refuse("position", type(position).__name__, "llama.cpp's llama architecture needs Rotary positions")
    if position.fraction != 1.0:
        raise _refuse("position", f"partial rotary (fraction={position.fraction})", "use fraction 1.0")
    if backbone.scale_embeddings:
        raise _refuse("the backbone", "scale_embeddings=True", "set scale_embeddings false")
    if any((b.attention.q_norm is None) != (backbone.blocks[0].attention.q_norm is None) for b in backbone.blocks):
        raise _refuse("the blocks", "QK-normed in some layers only", "use qk_norm in every block or in none")
    norms = {"norm": backbone.norm} | {
        f"blocks.{i}.{n}": getattr(b, n) for i, b in enumerate(backbone.blocks) for n in ("attention_norm", "ffn_norm")
    }
    norms |= {
        f"blocks.{i}.attention.{n}": getattr(b.attention, n)
        for i, b in enumerate(backbone.blocks)
        for n in ("q_norm", "k_norm")
        if getattr(b.attention, n) is not None
    }
    for where, norm in norms.items():
        if not isinstance(norm, RMSNorm) or norm.unit_offset:
            raise _refuse(where, f"{type(norm).__name__}", "llama.cpp's llama norms are RMSNorm(unit_offset=False)")
        if norm.eps != backbone.norm.eps:
            raise _refuse(where, f"RMSNorm(eps={norm.eps}) beside a final eps={backbone.norm.eps}", "use one eps")


def architecture(backbone: Transformer) -> str:
    """llama.cpp's name of the architecture a GGUF export of ``backbone`` declares (after :func:`check_llama`)."""
    attn = backbone.blocks[0].attention
    return "llada" if not attn.causal else "qwen3" if attn.q_norm is not None else "llama"


def interleave_heads(weight: Tensor, heads: int) -> Tensor:
    """Rows of each head from the rotate-half layout to adjacent rotation pairs: (H·D, ...) -> (H·D, ...)."""
    half = weight.shape[0] // heads // 2
    return weight.unflatten(0, (heads, 2, half)).transpose(1, 2).reshape(weight.shape)  # (H, 2, D/2) -> (H, D/2, 2)


def pre_tokenizer_name(tokenizer: Tokenizer) -> str:
    """llama.cpp's ``tokenizer.ggml.pre`` that splits text as ``tokenizer`` does, or a ``ValueError``."""
    spec = json.loads(tokenizer.to_str())
    model, pre = spec["model"], spec.get("pre_tokenizer") or {}
    decoder = (spec.get("decoder") or {}).get("type")
    if model.get("type") != "BPE" or model.get("byte_fallback") or decoder != "ByteLevel":
        raise ValueError(
            f"GGUF export: the tokenizer is a {model.get('type')} model without a ByteLevel decoder; llama.cpp's gpt2 "
            "tokenizer needs a byte-level BPE (zoo.data.TrainedBPE)"
        )
    if spec.get("normalizer") is not None:
        raise ValueError(f"GGUF export: the tokenizer's normalizer {spec['normalizer']['type']} has no llama.cpp twin")
    key = json.dumps(_strip(pre), sort_keys=True)
    if key not in PRE_TOKENIZERS:
        raise ValueError(
            f"GGUF export: the tokenizer's pre-tokenizer {json.dumps(pre)} matches none llama.cpp knows "
            f"({', '.join(PRE_TOKENIZERS.values())}): llama.cpp would split text into other tokens"
        )
    return PRE_TOKENIZERS[key]


def _strip(pre: dict) -> dict:
    """The fields of a pre-tokenizer that decide how it splits (``trim_offsets`` only changes offsets)."""
    if pre.get("type") == "Sequence":
        return {"type": "Sequence", "pretokenizers": [_strip(p) for p in pre["pretokenizers"]]}
    return {k: v for k, v in pre.items() if k in ("type", "add_prefix_space", "use_regex", "individual_digits")}


def _add_tokenizer(writer, tokenizer: Tokenizer, eos: str, vocab_size: int, mask_id: int | None) -> None:
    import gguf

    eos_id = tokenizer.token_to_id(eos)
    if eos_id is None:
        raise ValueError(f"GGUF export: the tokenizer has no end-of-text token {eos!r}")
    vocab = tokenizer.get_vocab(with_added_tokens=True)  # token -> id
    if len(vocab) > vocab_size:
        raise ValueError(f"GGUF export: the tokenizer has {len(vocab)} tokens but the model's vocab_size={vocab_size}")
    special = {t.content for t in tokenizer.get_added_tokens_decoder().values() if t.special}
    by_id = {i: token for token, i in vocab.items()}
    tokens, types = [], []
    if mask_id is not None and mask_id not in by_id:  # a dedicated mask row after the tokenizer's tokens
        by_id[mask_id] = "<|mask|>"
        special.add("<|mask|>")
    for i in range(vocab_size):  # rows the tokenizer never produces stay in the file as unused tokens
        token = by_id.get(i)
        tokens.append(token if token is not None else f"[PAD{i}]")
        kind = "NORMAL" if token is not None and token not in special else "CONTROL" if token else "UNUSED"
        types.append(getattr(gguf.TokenType, kind))
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre_tokenizer_name(tokenizer))
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    with tempfile.TemporaryDirectory() as folder:  # gguf's SpecialVocab reads merges from a tokenizer.json
        tokenizer.save(str(Path(folder) / "tokenizer.json"))
        gguf.SpecialVocab(folder, load_merges=True, special_token_types=()).add_to_gguf(writer, quiet=True)
    writer.add_bos_token_id(eos_id)
    writer.add_eos_token_id(eos_id)
    writer.add_add_bos_token(False)  # zoo's prompts start with their first text token, as in training
    writer.add_add_eos_token(False)
    if mask_id is not None:
        writer.add_mask_token_id(mask_id)


def _tensor(weight: Tensor, outtype: str) -> tuple[np.ndarray, object]:
    """The array and GGML type of one tensor: 1-D tensors (norms) stay f32, as llama.cpp computes them."""
    import gguf

    array = weight.detach().float().cpu().numpy()
    if array.ndim == 1 or outtype == "f32":
        return array, gguf.GGMLQuantizationType.F32
    if outtype == "q8_0" and array.shape[-1] % gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType.Q8_0][0] == 0:
        return gguf.quants.quantize(array, gguf.GGMLQuantizationType.Q8_0), gguf.GGMLQuantizationType.Q8_0
    return array.astype(np.float16), gguf.GGMLQuantizationType.F16  # Q8_0 rows not a multiple of 32: f16


def write_gguf(
    backbone: Transformer,
    tokenizer: Tokenizer,
    path: str | Path,
    *,
    eos: str,
    outtype: str = "f32",
    name: str = "zoo",
    mask_id: int | None = None,
    shift: bool = False,
) -> Path:
    """Write ``backbone`` and ``tokenizer`` as the GGUF file ``path`` (llama.cpp's ``llama`` architecture, or
    ``qwen3`` for a QK-normed model).

    Args:
        backbone: a causal Llama-shaped zoo backbone (anything else is refused by :func:`check_llama`).
        tokenizer: the byte-level BPE it was trained with.
        path: the file to write.
        eos: the end-of-text token (written as eos and bos).
        outtype: ``f32``, ``f16`` (2-D weights; norms stay f32) or ``q8_0`` (2-D weights whose rows are a multiple
            of 32 values; others f16).
        name: ``general.name`` of the file.
        mask_id: a masked-diffusion model's mask token (its description's ``mask_id``): writes the ``llada``
            architecture; ``None`` for a causal LM.
        shift: the diffusion model's logits at position ``i`` predict token ``i + 1`` (its description's ``shift``).
    """
    import gguf

    from zoo.interop.mappings import LlamaMapping, Qwen3Mapping

    if outtype not in OUTTYPES:
        raise ValueError(f"GGUF outtype={outtype!r} is not one of {', '.join(OUTTYPES)}")
    check_llama(backbone, diffusion=mask_id is not None)
    pre_tokenizer_name(tokenizer)  # refuse a tokenizer llama.cpp would split otherwise, before writing
    attn, b = backbone.blocks[0].attention, backbone
    qwen3 = attn.q_norm is not None
    arch = {"llama": gguf.MODEL_ARCH.LLAMA, "qwen3": gguf.MODEL_ARCH.QWEN3, "llada": gguf.MODEL_ARCH.LLADA}[
        architecture(b)
    ]
    names = gguf.get_tensor_name_map(arch, b.n_layers)
    tensors: dict[str, Tensor] = {}
    for key, value in (Qwen3Mapping if qwen3 else LlamaMapping)(b).to_hf().items():
        if not qwen3 and key.endswith("q_proj.weight"):  # qwen3 rotates halves, as zoo does
            value = interleave_heads(value, attn.n_heads)
        elif not qwen3 and key.endswith("k_proj.weight"):
            value = interleave_heads(value, attn.n_kv_heads)
        target = names.get_name(key, try_suffixes=(".weight",))
        assert target is not None, key  # the tables name only tensors llama.cpp's llama / qwen3 architectures have
        tensors[target] = value
    path = Path(path)
    writer = gguf.GGUFWriter(str(path), gguf.MODEL_ARCH_NAMES[arch])
    file_type = {"f32": "ALL_F32", "f16": "MOSTLY_F16", "q8_0": "MOSTLY_Q8_0"}[outtype]
    writer.add_name(name)
    writer.add_file_type(getattr(gguf.LlamaFileType, file_type))
    writer.add_context_length(b.max_seq_len)
    writer.add_embedding_length(b.dim)
    writer.add_block_count(b.n_layers)
    writer.add_feed_forward_length(b.blocks[0].ffn.hidden_dim)
    writer.add_head_count(attn.n_heads)
    writer.add_head_count_kv(attn.n_kv_heads)
    writer.add_key_length(attn.head_dim)
    writer.add_value_length(attn.head_dim)
    writer.add_rope_dimension_count(b.position.rotary_dim)
    writer.add_rope_freq_base(float(b.position.theta))
    writer.add_layer_norm_rms_eps(float(b.norm.eps))
    writer.add_vocab_size(b.vocab_size)
    _add_tokenizer(writer, tokenizer, eos, b.vocab_size, mask_id)
    if mask_id is not None:
        writer.add_diffusion_shift_logits(shift)
    for target, value in tensors.items():
        array, kind = _tensor(value, outtype)
        writer.add_tensor(target, array, raw_dtype=kind)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def read_gguf_metadata(path: str | Path) -> dict[str, object]:
    """The scalar and string metadata of a GGUF file (arrays left out), for checks and model cards."""
    import gguf

    reader = gguf.GGUFReader(str(path))
    out: dict[str, object] = {}
    for key, field in reader.fields.items():
        if field.types and field.types[0] != gguf.GGUFValueType.ARRAY:
            out[key] = field.contents()
    return out


def tensor_types(path: str | Path) -> dict[str, str]:
    """Tensor name -> GGML type name of a GGUF file."""
    import gguf

    return {t.name: t.tensor_type.name for t in gguf.GGUFReader(str(path)).tensors}


def export_gguf(
    model, tokenizer: Tokenizer, eos: str, directory: Path, *, dtype: torch.dtype, outtype: str | None
) -> dict:
    """``python -m zoo export --format gguf``: write ``model`` (a causal LM or masked-diffusion objective) into
    ``directory`` as ``model-<outtype>.gguf``; returns what its model card says (:mod:`zoo.interop.card`)."""
    if outtype is None:
        if dtype == torch.bfloat16:
            raise ValueError("--dtype bfloat16 has no GGUF export here: use --outtype f32, f16 or q8_0")
        outtype = "f16" if dtype == torch.float16 else "f32"
    description = model.description
    diffusion = description.diffusion
    path = write_gguf(model.backbone, tokenizer, directory / f"model-{outtype}.gguf", eos=eos, outtype=outtype,
                      name=directory.name, mask_id=description.mask_id if diffusion else None,
                      shift=diffusion and description.shift)  # fmt: skip
    n_ctx = model.backbone.max_seq_len
    if diffusion:  # llama-cpp-python has no diffusion sampler: one bidirectional pass fills every masked position
        shift = "logits = np.concatenate([logits[:1], logits[:-1]])  # position i predicts token i + 1\n"
        shift = shift if description.shift else ""
        usage = f"""
import llama_cpp  # pip install llama-cpp-python
import numpy as np

llm = llama_cpp.Llama(model_path="{path.name}", n_ctx={n_ctx}, n_batch={n_ctx}, n_ubatch={n_ctx}, verbose=False)
prompt = llm.tokenize(b"def parse(", add_bos=False)
ids = prompt + [{description.mask_id}] * 8  # the mask token, id {description.mask_id}
# one bidirectional pass over the whole sequence, with logits at every position (llama.cpp's C API)
batch = llama_cpp.llama_batch_init(len(ids), 0, 1)
for i, token in enumerate(ids):
    batch.token[i], batch.pos[i], batch.n_seq_id[i], batch.logits[i] = token, i, 1, True
    batch.seq_id[i][0] = 0
batch.n_tokens = len(ids)
assert llama_cpp.llama_decode(llm.ctx, batch) == 0
logits = np.ctypeslib.as_array(llama_cpp.llama_get_logits(llm.ctx), shape=(len(ids), llm.n_vocab())).copy()
llama_cpp.llama_batch_free(batch)
{shift}print(llm.detokenize(logits[len(prompt):].argmax(-1).tolist()).decode(errors="replace"))
"""
    else:
        usage = f"""
from llama_cpp import Llama  # pip install llama-cpp-python

llm = Llama(model_path="{path.name}", n_ctx={n_ctx}, verbose=False)
out = llm("def parse(", max_tokens=16, temperature=0.0)
print(out["choices"][0]["text"])
"""
    arch = architecture(model.backbone)
    files = (f"`{path.name}` is a GGUF file ({outtype}) of llama.cpp's `{arch}` architecture with the run's byte-level "
             "BPE tokenizer, for llama.cpp and the tools built on it"
             + (f" (sample it with `llama-diffusion-cli -m {path.name} -p PROMPT --diffusion-steps 64`)." if diffusion
                else "."))  # fmt: skip
    return {"library_name": "gguf", "usage": usage, "files": files, "tags": ["gguf", "llama.cpp", arch]}
