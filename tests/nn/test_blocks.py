"""Shapes, causality and numerics of every block."""

import functools

import pytest
import torch

from tests.helpers import tiny_backbone
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
    RMSNorm,
    Rotary,
    SwiGLU,
    apply_rotary,
    eager_attention,
    sdpa_attention,
)

B, T, C = 2, 10, 32

NORMS = [RMSNorm, functools.partial(RMSNorm, unit_offset=True), LayerNorm, functools.partial(LayerNorm, bias=False)]
FFNS = [
    functools.partial(GeluMLP, hidden_dim=64),
    functools.partial(GeluMLP, hidden_dim=64, approximate="none", bias=False),
    functools.partial(SwiGLU, hidden_dim=48),
    functools.partial(GeGLU, hidden_dim=48),
    functools.partial(GatedFFN, hidden_dim=48, activation="relu", canon=Canon),
]
ATTENTIONS = {
    "mha": dict(n_heads=4),
    "gqa": dict(n_heads=4, n_kv_heads=2),
    "mqa": dict(n_heads=4, n_kv_heads=1),
    "bias+qknorm": dict(n_heads=4, n_kv_heads=2, bias=True, qk_norm=RMSNorm),
    "canon_b": dict(n_heads=4, n_kv_heads=2, canon=Canon),
    "head_dim": dict(n_heads=2, head_dim=24),
}
POSITIONS = [Rotary, functools.partial(Rotary, theta=2500.0, fraction=0.25), LearnedPositions, NoPositions]


@pytest.mark.parametrize("norm", NORMS)
def test_norm_shape_and_scale(norm):
    x = torch.randn(B, T, C) * 5 + 3
    y = norm(C)(x)
    assert y.shape == x.shape
    assert torch.allclose(y.pow(2).mean(-1), torch.ones(B, T), atol=0.1)  # unit RMS at init


def test_rmsnorm_matches_formula():
    x = torch.randn(B, T, C)
    norm = RMSNorm(C, eps=1e-6)
    norm.weight.data.uniform_(0.5, 1.5)
    expected = x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * norm.weight
    torch.testing.assert_close(norm(x), expected)


@pytest.mark.parametrize("ffn", FFNS)
def test_ffn_shape(ffn):
    assert ffn(C)(torch.randn(B, T, C)).shape == (B, T, C)


@pytest.mark.parametrize("kind", ATTENTIONS)
@pytest.mark.parametrize("cls", [GroupedQueryAttention, ExclusiveGroupedQueryAttention])
def test_attention_shape(cls, kind):
    attn = cls(C, **ATTENTIONS[kind])
    assert attn(torch.randn(B, T, C)).shape == (B, T, C)


def _logits_change(model_kwargs, position_changed: int):
    model = tiny_backbone(**model_kwargs).eval()
    x = torch.randint(0, 64, (B, T))
    y = x.clone()
    y[:, position_changed] = (y[:, position_changed] + 1) % 64
    with torch.no_grad():
        return (model(x) - model(y)).abs().amax(dim=(0, 2))  # (T,) max change per position


CAUSAL_VARIANTS = {
    "gqa": {},
    "exclusive": dict(attention=lambda d: ExclusiveGroupedQueryAttention(d, n_heads=4, n_kv_heads=2)),
    "canon_abcd": dict(
        attention=lambda d: GroupedQueryAttention(d, n_heads=4, n_kv_heads=2, canon=Canon),
        ffn=lambda d: SwiGLU(d, hidden_dim=64, canon=Canon),
        canon_a=Canon,
        canon_c=Canon,
    ),
    "learned_positions": dict(position=LearnedPositions),
    "eager": dict(attention=lambda d: GroupedQueryAttention(d, n_heads=4, n_kv_heads=2, kernel="eager")),
}


@pytest.mark.parametrize("variant", CAUSAL_VARIANTS)
def test_future_token_never_changes_past_logits(variant):
    change = _logits_change(CAUSAL_VARIANTS[variant], position_changed=6)
    assert change[:6].max() == 0  # bit-identical: nothing leaks backwards
    assert change[6:].min() > 0  # and the change does propagate forwards


def test_bidirectional_attention_sees_future_tokens():
    change = _logits_change(
        dict(attention=lambda d: GroupedQueryAttention(d, n_heads=4, n_kv_heads=2, causal=False)), position_changed=6
    )
    assert change[:6].min() > 0


def test_canon_is_causal_depthwise_with_residual():
    canon = Canon(C, kernel_size=4)
    x = torch.randn(B, T, C)
    y = canon(x)
    x2 = x.clone()
    x2[:, 5] += 1.0
    diff = (canon(x2) - y).abs().amax(dim=(0, 2))
    assert diff[:5].max() == 0 and diff[5:9].min() > 0 and diff[9:].max() == 0  # sees exactly 3 predecessors
    # the formula: y_t = x_t + sum_k w[k] * x_{t-3+k}
    w = canon.weight[:, 0]  # (C, K)
    t = 7
    expected = x[:, t] + sum(w[:, k] * x[:, t - 3 + k] for k in range(4))
    torch.testing.assert_close(y[:, t], expected)
    assert sum(p.numel() for p in canon.parameters()) == 4 * C


def test_gqa_with_all_kv_heads_equals_handwritten_mha():
    attn = GroupedQueryAttention(C, n_heads=4, bias=True).eval()
    x = torch.randn(B, T, C)
    # hand-written multi-head attention from the same weights
    q, k, v = attn.qkv(x).split(C, dim=-1)
    heads = lambda t: t.view(B, T, 4, 8).transpose(1, 2)  # noqa: E731
    q, k, v = heads(q), heads(k), heads(v)
    scores = q @ k.transpose(-1, -2) / 8**0.5
    scores = scores.masked_fill(torch.ones(T, T, dtype=torch.bool).triu(1), float("-inf"))
    expected = attn.out((scores.softmax(-1) @ v).transpose(1, 2).reshape(B, T, C))
    torch.testing.assert_close(attn(x), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("n_kv", [4, 2, 1])
@pytest.mark.parametrize("with_mask", [False, True])
@pytest.mark.parametrize("prefix", [0, 5])
def test_sdpa_kernel_equals_eager(causal, n_kv, with_mask, prefix):
    q = torch.randn(B, 4, T, 8)
    k = torch.randn(B, n_kv, T + prefix, 8)
    v = torch.randn(B, n_kv, T + prefix, 8)
    mask = torch.rand(B, 1, T, T + prefix) > 0.3 if with_mask else None
    if mask is not None:
        mask[..., 0] = True  # every query keeps one key, so no row is fully masked
    kwargs = dict(causal=causal, mask=mask, scale=8**-0.5)
    torch.testing.assert_close(sdpa_attention(q, k, v, **kwargs), eager_attention(q, k, v, **kwargs))


@pytest.mark.parametrize("variant", CAUSAL_VARIANTS)
def test_kv_cache_decoding_equals_full_forward(variant):
    model = tiny_backbone(**CAUSAL_VARIANTS[variant]).eval()
    x = torch.randint(0, 64, (B, 12))
    with torch.no_grad():
        full = model(x)
        cache = model.new_cache(B, max_len=16)
        steps = [model(x[:, :5], cache=cache)]  # a prompt, then one token at a time
        steps += [model(x[:, t : t + 1], cache=cache) for t in range(5, 12)]
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=1e-5, rtol=1e-4)
    assert cache.length == 12


def test_rope_scores_depend_only_on_relative_position():
    rope = Rotary(C, 16, 128, theta=2500.0)
    q, k = torch.randn(1, 1, 1, 16), torch.randn(1, 1, 1, 16)

    def score(m, n):
        cos_m, sin_m = rope.rotary(torch.tensor([m]))
        cos_n, sin_n = rope.rotary(torch.tensor([n]))
        return (apply_rotary(q, cos_m, sin_m) * apply_rotary(k, cos_n, sin_n)).sum()

    torch.testing.assert_close(score(3, 1), score(50, 48))
    torch.testing.assert_close(score(10, 10), score(0, 0))
    assert not torch.allclose(score(3, 1), score(3, 2))


def test_partial_rotary_leaves_the_rest_unrotated():
    rope = Rotary(C, 16, 64, fraction=0.25)
    x = torch.randn(1, 1, 5, 16)
    y = apply_rotary(x, *rope.rotary(torch.arange(5)))
    torch.testing.assert_close(y[..., 4:], x[..., 4:])
    assert not torch.allclose(y[..., :4], x[..., :4])
    torch.testing.assert_close(y.norm(dim=-1), x.norm(dim=-1))  # a rotation keeps lengths


def test_exclusive_attention_output_is_orthogonal_to_own_value():
    attn = ExclusiveGroupedQueryAttention(C, n_heads=6, n_kv_heads=2, head_dim=8)
    x = torch.randn(B, T, C)
    captured = {}
    original = attn.combine_heads

    def spy(y, v):
        out = original(y, v)
        captured["y"], captured["v"] = out, v
        return out

    attn.combine_heads = spy
    attn(x)
    y, v = captured["y"], captured["v"]  # (B, 6, T, 8), (B, 2, T, 8)
    own = v.repeat_interleave(3, dim=1)  # query head h reads value head h // 3
    cosine = torch.nn.functional.cosine_similarity(y[:, :, 1:], own[:, :, 1:], dim=-1)
    assert cosine.abs().max() < 1e-5
    assert y[:, :, 1:].abs().mean() > 1e-3  # not trivially zero
    # the first position attends only to itself, so nothing is left after removing its own value
    assert y[:, :, 0].abs().max() < 1e-6
    plain = GroupedQueryAttention(C, n_heads=6, n_kv_heads=2, head_dim=8)
    assert sum(p.numel() for p in attn.parameters()) == sum(p.numel() for p in plain.parameters())


def test_positions_shapes():
    for position in POSITIONS:
        model = tiny_backbone(position=position)
        assert model(torch.randint(0, 64, (B, T))).shape == (B, T, 64)


def test_tied_and_untied_heads():
    tied, untied = tiny_backbone(), tiny_backbone(tie_embeddings=False)
    assert tied.head.weight is tied.embed.weight
    assert untied.num_parameters() - tied.num_parameters() == 64 * 32


def test_head_stays_tied_when_a_conversion_replaces_the_parameters():
    # torch_xla's device moves take this path of nn.Module._apply: a new Parameter for every module
    model = tiny_backbone()
    overwrite = torch.__future__.get_overwrite_module_params_on_conversion()
    torch.__future__.set_overwrite_module_params_on_conversion(True)
    try:
        before = model.embed.weight
        model.double()
    finally:
        torch.__future__.set_overwrite_module_params_on_conversion(overwrite)
    assert model.embed.weight is not before and model.embed.weight.dtype == torch.float64  # really replaced
    assert model.head.weight is model.embed.weight
    assert len(list(model.parameters())) == len(list(tiny_backbone().parameters()))


def test_residual_projections_get_scaled_init():
    model = tiny_backbone(dim=256, n_layers=8)
    out_std = model.blocks[0].attention.out.weight.std().item()
    qkv_std = model.blocks[0].attention.qkv.weight.std().item()
    assert abs(qkv_std - 0.02) < 0.002
    assert abs(out_std - 0.02 / 4) < 0.001  # 0.02 / sqrt(2 * 8)
