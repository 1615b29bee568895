"""GGUF export checked by llama.cpp itself (through llama-cpp-python): equal logits and greedy tokens, the same
token ids for the same text, tied and untied heads, GQA and MHA; refusals of what llama.cpp cannot express."""

import numpy as np
import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from tests.helpers import llama_logits, tiny_backbone
from zoo import nn as znn
from zoo.data.corpus import stdlib_documents, stdlib_shards
from zoo.data.tokenizer import EOS, train_bpe
from zoo.generation import generate
from zoo.interop.gguf import (
    architecture,
    check_llama,
    interleave_heads,
    pre_tokenizer_name,
    read_gguf_metadata,
    tensor_types,
    write_gguf,
)
from zoo.nn.position import apply_rotary

try:
    import llama_cpp
except ImportError:  # the gguf extra: pip install -e ".[gguf]"; tests marked needs_llama_cpp skip without it
    llama_cpp = None

VOCAB = 320
TEXTS = [
    "def parse(text: str) -> list[int]:\n    return [int(x) for x in text.split(',')]\n",
    "The quick brown fox doesn't jump; it's 2026 and we've 3.14159 reasons.",
    "  leading spaces,\ttabs,\n\n\nnewlines   and trailing spaces   ",
    "naïve café, Straße, Ελληνικά, 日本語のテキスト, emoji 🙂🚀 and math ∑ x² ≤ 10¹⁰",
    "if x==1:return{'a':[1,2,3]}#comment\r\nelse: pass  # 12345678901234567890",
    "'s 't 're 've 'm 'll 'd — contractions alone, and ''' triple quotes \"\"\"",
]


@pytest.fixture(scope="module")
def corpus() -> list[str]:
    docs = stdlib_documents("code", stdlib_shards("code", limit=12))
    return [d["text"] for d in docs][:12] + TEXTS


@pytest.fixture(scope="module")
def tokenizer(corpus) -> Tokenizer:
    return train_bpe(corpus, vocab_size=VOCAB)


def _randomize(backbone: znn.Transformer) -> znn.Transformer:
    """Weights spread wider than at initialization, so the logits have clear maxima; norms too, so a misplaced
    norm weight cannot pass."""
    torch.manual_seed(0)
    with torch.no_grad():
        for p in backbone.parameters():
            p.uniform_(0.5, 1.5) if p.ndim == 1 else p.normal_(0.0, 0.3)
    return backbone.eval()


ARCHS = {
    "gqa-tied": lambda: tiny_backbone(vocab_size=VOCAB, dim=64, max_seq_len=128),
    "mha-untied": lambda: tiny_backbone(
        vocab_size=VOCAB, dim=64, max_seq_len=128, tie_embeddings=False,
        attention=lambda d: znn.GroupedQueryAttention(d, n_heads=4),
    ),
    "mqa-head32-theta2500": lambda: tiny_backbone(
        vocab_size=VOCAB, dim=64, max_seq_len=128, position=lambda d, h, n: znn.Rotary(d, h, n, theta=2500.0),
        attention=lambda d: znn.GroupedQueryAttention(d, n_heads=4, n_kv_heads=1, head_dim=32),
        norm=lambda d: znn.RMSNorm(d, eps=1e-6),
    ),
    "qwen3-qknorm-untied": lambda: tiny_backbone(
        vocab_size=VOCAB, dim=64, max_seq_len=128, tie_embeddings=False,
        attention=lambda d: znn.GroupedQueryAttention(d, n_heads=4, n_kv_heads=2, qk_norm=znn.RMSNorm),
    ),
}  # fmt: skip


def _llama(path, n_ctx: int = 128):
    """llama.cpp with an f32 KV cache (its default f16 cache rounds keys and values)."""
    f32 = llama_cpp.GGML_TYPE_F32
    return llama_cpp.Llama(model_path=str(path), n_ctx=n_ctx, n_threads=1, n_batch=n_ctx, logits_all=True,
                           type_k=f32, type_v=f32, verbose=False)  # fmt: skip


def _llama_greedy(llm, ids: list[int], n: int) -> list[int]:
    out = []
    for token in llm.generate(ids, temp=0.0, top_k=1, repeat_penalty=1.0, reset=True):
        out.append(token)
        if len(out) == n:
            return out
    return out


def _zoo_greedy(backbone, ids: list[int], n: int) -> list[int]:
    return generate(backbone, [ids], max_new_tokens=n, temperature=0.0).tokens[0]


def test_interleaving_the_heads_turns_rotate_half_into_adjacent_pairs():
    """llama.cpp's llama RoPE rotates pairs (2i, 2i+1); zoo's rotates (i, i + D/2): with the rows permuted by
    interleave_heads, adjacent-pair rotation of the permuted projections gives the same attention scores."""
    heads, d, t = 3, 8, 5
    wq, wk, x = torch.randn(heads * d, 16), torch.randn(heads * d, 16), torch.randn(t, 16)
    cos, sin = znn.Rotary(16, d, 32).rotary(torch.arange(t))  # (T, D/2)

    def adjacent(v):  # (T, H, D): rotate pairs (2i, 2i+1)
        a, b = v[..., 0::2], v[..., 1::2]
        c, s = cos[:, None], sin[:, None]
        return torch.stack((a * c - b * s, b * c + a * s), dim=-1).flatten(-2)

    q, k = (x @ wq.T).view(t, heads, d), (x @ wk.T).view(t, heads, d)
    zoo_scores = apply_rotary(q, cos[:, None], sin[:, None]) @ apply_rotary(k, cos[:, None], sin[:, None]).mT
    q2 = (x @ interleave_heads(wq, heads).T).view(t, heads, d)
    k2 = (x @ interleave_heads(wk, heads).T).view(t, heads, d)
    torch.testing.assert_close(adjacent(q2) @ adjacent(k2).mT, zoo_scores)


@pytest.mark.needs_llama_cpp
@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_llama_cpp_computes_zoos_logits_and_greedy_tokens(arch, tokenizer, tmp_path):
    backbone = _randomize(ARCHS[arch]())
    path = write_gguf(backbone, tokenizer, tmp_path / "m.gguf", eos=EOS, outtype="f32")
    llm = _llama(path)
    prompts = [tokenizer.encode(t).ids[:24] for t in TEXTS[:3]]
    for ids in prompts:
        with torch.no_grad():
            expected = backbone(torch.tensor([ids]))[0].numpy()
        np.testing.assert_allclose(llama_logits(llm, ids), expected, atol=2e-3, rtol=1e-3)
        assert _llama_greedy(llm, ids, 16) == _zoo_greedy(backbone, ids, 16)
    assert ("output.weight" in tensor_types(path)) == (not backbone.tie_embeddings)
    assert read_gguf_metadata(path)["general.architecture"] == architecture(backbone)
    assert architecture(backbone) == ("qwen3" if arch.startswith("qwen3") else "llama")


@pytest.mark.needs_llama_cpp
@pytest.mark.parametrize("shift", [False, True])
def test_a_masked_diffusion_model_is_llama_cpps_llada_with_zoos_bidirectional_logits(shift, tokenizer, tmp_path):
    backbone = _randomize(tiny_backbone(
        vocab_size=VOCAB + 1, dim=64, max_seq_len=128,
        attention=lambda d: znn.GroupedQueryAttention(d, n_heads=4, n_kv_heads=2, causal=False),
    ))  # fmt: skip
    path = write_gguf(backbone, tokenizer, tmp_path / "m.gguf", eos=EOS, mask_id=VOCAB, shift=shift)
    meta = read_gguf_metadata(path)
    assert meta["general.architecture"] == "llada" and meta["tokenizer.ggml.mask_token_id"] == VOCAB
    assert meta["diffusion.shift_logits"] is shift
    llm = _llama(path)
    ids = tokenizer.encode(TEXTS[0]).ids[:12] + [VOCAB] * 8  # a prompt, then masked positions
    with torch.no_grad():
        expected = backbone(torch.tensor([ids]))[0].numpy()
    np.testing.assert_allclose(llama_logits(llm, ids), expected, atol=2e-3, rtol=1e-3)
    assert llm.detokenize([VOCAB], special=True) == b"<|mask|>"


@pytest.mark.needs_llama_cpp
@pytest.mark.parametrize(("outtype", "tensor_type"), [("f16", "F16"), ("q8_0", "Q8_0")])
def test_f16_and_q8_0_keep_the_greedy_tokens_of_most_steps(outtype, tensor_type, tokenizer, tmp_path):
    backbone = _randomize(ARCHS["gqa-tied"]())
    path = write_gguf(backbone, tokenizer, tmp_path / "m.gguf", eos=EOS, outtype=outtype)
    assert tensor_types(path)["blk.0.attn_q.weight"] == tensor_type
    assert tensor_types(path)["blk.0.attn_norm.weight"] == "F32"
    llm = _llama(path)
    agree = total = 0
    for text in TEXTS:
        ids = tokenizer.encode(text).ids[:40]
        with torch.no_grad():
            expected = backbone(torch.tensor([ids]))[0].argmax(-1).numpy()
        agree += int((llama_logits(llm, ids).argmax(-1) == expected).sum())
        total += len(ids)
    assert agree / total >= (0.97 if outtype == "f16" else 0.9), (agree, total)


@pytest.mark.needs_llama_cpp
def test_llama_cpp_tokenizes_text_into_zoos_ids(tokenizer, corpus, tmp_path):
    path = write_gguf(_randomize(ARCHS["gqa-tied"]()), tokenizer, tmp_path / "m.gguf", eos=EOS)
    llm = llama_cpp.Llama(model_path=str(path), vocab_only=True, verbose=False)
    for text in [*TEXTS, *(doc[:2000] for doc in corpus[:6])]:
        ids = tokenizer.encode(text).ids
        assert llm.tokenize(text.encode(), add_bos=False, special=False) == ids, text[:60]
        assert llm.detokenize(ids).decode() == text
    assert llm.token_eos() == tokenizer.token_to_id(EOS) and llm.token_bos() == tokenizer.token_to_id(EOS)
    assert llm.tokenize(EOS.encode(), add_bos=False, special=True) == [tokenizer.token_to_id(EOS)]
    assert llm.n_vocab() == VOCAB


@pytest.mark.needs_llama_cpp
def test_a_starcoder_style_tokenizer_round_trips(corpus, tmp_path):
    """Single digits, then the byte-level split: llama.cpp's "starcoder" pre-tokenizer."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=VOCAB, special_tokens=[EOS], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())  # fmt: skip
    tokenizer.train_from_iterator(corpus, trainer=trainer)
    assert pre_tokenizer_name(tokenizer) == "starcoder"
    path = write_gguf(_randomize(ARCHS["gqa-tied"]()), tokenizer, tmp_path / "m.gguf", eos=EOS)
    llm = llama_cpp.Llama(model_path=str(path), vocab_only=True, verbose=False)
    for text in TEXTS:
        assert llm.tokenize(text.encode(), add_bos=False, special=False) == tokenizer.encode(text).ids


def test_a_pre_tokenizer_llama_cpp_lacks_is_refused(tokenizer):
    other = Tokenizer.from_str(tokenizer.to_str())
    other.pre_tokenizer = pre_tokenizers.Whitespace()
    with pytest.raises(ValueError, match="pre-tokenizer .*Whitespace.* matches none llama.cpp knows"):
        pre_tokenizer_name(other)
    prefixed = Tokenizer.from_str(tokenizer.to_str())
    prefixed.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    with pytest.raises(ValueError, match="add_prefix_space.*matches none"):
        pre_tokenizer_name(prefixed)


def _block(**kwargs):
    attention = kwargs.pop("attention", lambda d: znn.GroupedQueryAttention(d, n_heads=4, n_kv_heads=2))
    cls = kwargs.pop("cls", znn.PreNormBlock)
    return lambda d: cls(d, attention=attention, ffn=kwargs.pop("ffn", lambda d: znn.SwiGLU(d, hidden_dim=64)),
                         norm=kwargs.pop("norm", znn.RMSNorm), **kwargs)  # fmt: skip


def _refused(**kwargs) -> znn.Transformer:
    block = kwargs.pop("block", _block())
    return znn.Transformer(vocab_size=64, dim=32, n_layers=2, max_seq_len=32, block=block,
                           norm=kwargs.pop("norm", znn.RMSNorm), position=kwargs.pop("position", znn.Rotary),
                           **kwargs)  # fmt: skip


@pytest.mark.parametrize(
    ("backbone", "message"),
    [
        (lambda: _refused(block=_block(attention=lambda d: znn.ExclusiveGroupedQueryAttention(d, n_heads=4))),
         "blocks.0.attention is ExclusiveGroupedQueryAttention"),
        (lambda: _refused(block=_block(canon_a=znn.Canon)), "blocks.0.canon_a is a Canon layer"),
        (lambda: _refused(position=lambda d, h, n: znn.Rotary(d, h, n, fraction=0.5)), "partial rotary"),
        (lambda: _refused(block=_block(attention=lambda d: znn.GroupedQueryAttention(d, n_heads=4,
                                                                                      qk_norm=znn.LayerNorm))),
         "QK-normed by LayerNorm"),
        (lambda: _refused(block=_block(cls=znn.ParallelBlock)), "blocks.0 is a ParallelBlock"),
        (lambda: _refused(block=_block(attention=lambda d: znn.GroupedQueryAttention(d, n_heads=4, causal=False))),
         "bidirectional"),
        (lambda: _refused(block=_block(ffn=lambda d: znn.GeluMLP(d, hidden_dim=64))), "blocks.0.ffn is a GeluMLP"),
        (lambda: _refused(position=znn.LearnedPositions), "position is LearnedPositions"),
        (lambda: _refused(block=_block(norm=znn.LayerNorm), norm=znn.LayerNorm), "is LayerNorm"),
    ],
)  # fmt: skip
def test_what_llama_cpp_cannot_express_is_refused_by_name(backbone, message, tokenizer, tmp_path):
    model = backbone()
    with pytest.raises(ValueError, match=message):
        check_llama(model)
    with pytest.raises(ValueError, match=message):
        write_gguf(model, tokenizer, tmp_path / "m.gguf", eos=EOS)
    assert not (tmp_path / "m.gguf").exists()
