"""The blocks behind GPT-NeoX, Gemma and mixture-of-experts models: parallel residual, sandwich norms, routed FFN."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from zoo.nn import (
    Canon,
    GeGLU,
    GeluMLP,
    GroupedQueryAttention,
    LayerNorm,
    ParallelBlock,
    PreNormBlock,
    RMSNorm,
    Rotary,
    RoutedFFN,
    SandwichBlock,
    SwiGLU,
    Transformer,
)

B, T, C = 2, 10, 32


def backbone(block_cls=PreNormBlock, ffn=None, norm=RMSNorm, block_kwargs=None, n_layers=2, **kwargs):
    return Transformer(
        vocab_size=64,
        dim=C,
        n_layers=n_layers,
        max_seq_len=32,
        block=lambda d: block_cls(
            d,
            attention=lambda d: GroupedQueryAttention(d, n_heads=4, n_kv_heads=2),
            ffn=ffn or (lambda d: SwiGLU(d, hidden_dim=64)),
            norm=norm,
            **(block_kwargs or {}),
        ),
        norm=norm,
        position=Rotary,
        **kwargs,
    )


VARIANTS = {
    "parallel": {"block_cls": ParallelBlock, "norm": LayerNorm, "ffn": lambda d: GeluMLP(d, hidden_dim=64)},
    "parallel_canon_ac": {"block_cls": ParallelBlock, "block_kwargs": {"canon_a": Canon, "canon_c": Canon}},
    "sandwich": {
        "block_cls": SandwichBlock,
        "ffn": lambda d: GeGLU(d, hidden_dim=64, approximate="tanh"),
        "scale_embeddings": True,
    },
    "sandwich_canon_ac": {"block_cls": SandwichBlock, "block_kwargs": {"canon_a": Canon, "canon_c": Canon}},
    "moe": {"ffn": lambda d: RoutedFFN(d, n_experts=4, top_k=2, hidden_dim=32)},
}


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_future_tokens_never_change_past_logits(variant):
    model = backbone(**VARIANTS[variant]).eval()
    x = torch.randint(0, 64, (B, T))
    y = x.clone()
    y[:, 6:] = torch.randint(0, 64, (B, T - 6))
    with torch.no_grad():
        torch.testing.assert_close(model(x)[:, :6], model(y)[:, :6])
        assert not torch.allclose(model(x)[:, 6:], model(y)[:, 6:])


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_kv_cache_decoding_equals_full_forward(variant):
    model = backbone(**VARIANTS[variant]).eval()
    x = torch.randint(0, 64, (B, 12))
    with torch.no_grad():
        full = model(x)
        cache = model.new_cache(B, max_len=16)
        steps = [model(x[:, :5], cache=cache)] + [model(x[:, t : t + 1], cache=cache) for t in range(5, 12)]
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=1e-5, rtol=1e-4)


def test_parallel_block_adds_both_branches_to_the_same_input():
    block = ParallelBlock(
        C,
        attention=lambda d: GroupedQueryAttention(d, n_heads=4),
        ffn=lambda d: GeluMLP(d, hidden_dim=64),
        norm=LayerNorm,
    )
    x = torch.randn(B, T, C)
    expected = x + block.attention(block.attention_norm(x)) + block.ffn(block.ffn_norm(x))
    torch.testing.assert_close(block(x, rope=None, mask=None, cache=None), expected)


def test_parallel_block_applies_canon_a_and_c_to_their_own_branch():
    block = ParallelBlock(
        C,
        attention=lambda d: GroupedQueryAttention(d, n_heads=4),
        ffn=lambda d: SwiGLU(d, hidden_dim=64),
        norm=RMSNorm,
        canon_a=Canon,
        canon_c=Canon,
    )
    x = torch.randn(B, T, C)
    attended = block.attention(block.canon_a(block.attention_norm(x)))
    expected = x + attended + block.ffn(block.canon_c(block.ffn_norm(x)))
    torch.testing.assert_close(block(x, rope=None, mask=None, cache=None), expected)


def test_sandwich_block_with_identity_post_norms_is_a_pre_norm_block():
    kwargs = {
        "attention": lambda d: GroupedQueryAttention(d, n_heads=4),
        "ffn": lambda d: SwiGLU(d, hidden_dim=64),
        "norm": RMSNorm,
    }
    sandwich, pre = SandwichBlock(C, **kwargs), PreNormBlock(C, **kwargs)
    pre.load_state_dict(sandwich.state_dict(), strict=False)
    x = torch.randn(B, T, C)
    assert not torch.allclose(sandwich(x, rope=None, mask=None, cache=None), pre(x, rope=None, mask=None, cache=None))
    sandwich.post_attention_norm, sandwich.post_ffn_norm = nn.Identity(), nn.Identity()
    torch.testing.assert_close(sandwich(x, rope=None, mask=None, cache=None), pre(x, rope=None, mask=None, cache=None))


def test_one_expert_routed_ffn_is_a_swiglu():
    moe, dense = RoutedFFN(C, n_experts=1, top_k=1, hidden_dim=48), SwiGLU(C, hidden_dim=48)
    with torch.no_grad():
        dense.gate_up.weight.copy_(moe.gate_up[0])
        dense.down.weight.copy_(moe.down[0])
    x = torch.randn(B, T, C)
    torch.testing.assert_close(moe(x), dense(x))


def test_routed_ffn_mixes_the_top_k_experts_by_renormalized_router_probabilities():
    moe = RoutedFFN(C, n_experts=4, top_k=2, hidden_dim=16).eval()
    x = torch.randn(1, 3, C)
    probs = moe.router(x[0]).softmax(-1)
    expected = torch.zeros(3, C)
    for n in range(3):
        weights, experts = probs[n].topk(2)
        for w, e in zip(weights / weights.sum(), experts):
            gate, up = (x[0, n] @ moe.gate_up[e].T).chunk(2)
            expected[n] += w * ((F.silu(gate) * up) @ moe.down[e].T)
    torch.testing.assert_close(moe(x)[0], expected, atol=1e-5, rtol=1e-4)


def test_load_balancing_loss_is_top_k_when_balanced_and_higher_when_not():
    moe = RoutedFFN(C, n_experts=4, top_k=2, hidden_dim=16)
    uniform = torch.full((8, 4), 0.25)
    balanced = torch.tensor([[0, 1], [2, 3]] * 4)
    assert moe.load_balancing_loss(uniform, balanced).item() == pytest.approx(2.0)
    skewed_probs = torch.tensor([[0.7, 0.2, 0.05, 0.05]] * 8)
    skewed = torch.tensor([[0, 1]] * 8)
    assert moe.load_balancing_loss(skewed_probs, skewed).item() == pytest.approx(4 * (0.5 * 0.7 + 0.5 * 0.2) * 2)


def test_load_balancing_loss_matches_transformers_mixtral():
    from transformers.models.mixtral.modeling_mixtral import load_balancing_loss_func

    torch.manual_seed(0)
    moe = RoutedFFN(C, n_experts=8, top_k=2, hidden_dim=16, aux_loss_coef=1.0).train()
    x = torch.randn(B, T, C)
    moe(x)
    logits = moe.router(x.reshape(-1, C))  # (N, E): what Mixtral's router returns for one layer
    expected = load_balancing_loss_func((logits,), num_experts=8, top_k=2)
    torch.testing.assert_close(moe.aux_loss, expected)


def test_top_1_load_balancing_loss_is_one_when_balanced_and_above_one_otherwise():
    moe = RoutedFFN(C, n_experts=4, top_k=1, hidden_dim=16)
    # Router probabilities that agree with the assignment (P_e = f_e): the loss is E · Σ f_e² ≥ 1,
    # with equality exactly when every expert gets the same share.
    balanced = torch.arange(8).remainder(4)[:, None]  # (N, 1)
    assert moe.load_balancing_loss(F.one_hot(balanced[:, 0], 4).float(), balanced).item() == pytest.approx(1.0)
    skewed = torch.tensor([0, 0, 0, 1, 1, 2, 3, 0])[:, None]
    f = torch.tensor([4, 2, 1, 1]) / 8
    loss = moe.load_balancing_loss(F.one_hot(skewed[:, 0], 4).float(), skewed).item()
    assert loss == pytest.approx(4 * (f**2).sum().item()) and loss > 1
    # Uniform router probabilities give exactly 1 whatever the assignment.
    assert moe.load_balancing_loss(torch.full((8, 4), 0.25), skewed).item() == pytest.approx(1.0)


def test_routed_output_gradient_reaches_the_router_and_every_chosen_expert():
    moe = RoutedFFN(C, n_experts=4, top_k=2, hidden_dim=16).eval()
    moe(torch.randn(B, T, C)).square().sum().backward()
    assert moe.aux_loss is None
    assert moe.router.weight.grad.abs().sum() > 0
    assert (moe.gate_up.grad.flatten(1).abs().sum(1) > 0).all()  # 20 tokens × 2 slots reach all 4 experts


def test_backbone_initializes_routed_experts_with_the_residual_scaling():
    torch.manual_seed(0)
    model = backbone(ffn=lambda d: RoutedFFN(d, n_experts=4, top_k=2, hidden_dim=64), n_layers=8)
    ffn = model.blocks[3].ffn
    assert ffn.gate_up.std().item() == pytest.approx(0.02, rel=0.05)
    assert ffn.down.std().item() == pytest.approx(0.02 / 4, rel=0.05)  # init_std / sqrt(2 · 8 layers)


@pytest.mark.parametrize("approximate", ["none", "tanh"])
def test_geglu_gelu_is_exact_or_tanh_approximated(approximate):
    ffn = GeGLU(C, hidden_dim=48, approximate=approximate)
    x = torch.randn(B, T, C)
    gate, up = ffn.gate_up(x).chunk(2, dim=-1)
    expected = ffn.down(F.gelu(gate, approximate=approximate) * up)
    torch.testing.assert_close(ffn(x), expected)
    other = "tanh" if approximate == "none" else "none"
    assert not torch.allclose(ffn(x), ffn.down(F.gelu(gate, approximate=other) * up))


def test_geglu_rejects_an_unknown_approximation():
    with pytest.raises(ValueError, match="approximate='erf'"):
        GeGLU(C, hidden_dim=48, approximate="erf")


def test_aux_loss_is_set_in_training_reaches_the_router_and_is_summed_by_the_backbone():
    model = backbone(**VARIANTS["moe"]).train()
    model(torch.randint(0, 64, (B, T)))
    aux = model.auxiliary_loss()
    assert aux is not None and aux.item() > 0
    aux.backward()
    assert model.blocks[0].ffn.router.weight.grad.abs().sum() > 0
    model.eval()
    model(torch.randint(0, 64, (B, T)))
    assert model.auxiliary_loss() is None


def test_moe_flops_count_only_the_active_experts():
    model = backbone(**VARIANTS["moe"])
    dense_equivalent = model.num_parameters(embeddings=False) - model.inactive_parameters()
    expert = 3 * C * 32
    assert model.inactive_parameters() == 2 * model.n_layers * expert
    assert model.flops_per_token(1) - 12 * 2 * 32 == pytest.approx(6 * (dense_equivalent + model.head.weight.numel()))


def test_scaled_embeddings_multiply_by_sqrt_width():
    plain, scaled = backbone(), backbone(scale_embeddings=True)
    scaled.load_state_dict(plain.state_dict())
    captured, ids = {}, torch.randint(0, 64, (1, 4))
    for name, model in (("plain", plain), ("scaled", scaled)):
        model.blocks[0].register_forward_pre_hook(lambda m, args, kwargs, name=name: captured.update({name: args[0]}),
                                                  with_kwargs=True)  # fmt: skip
        model(ids)
    torch.testing.assert_close(captured["scaled"], captured["plain"] * C**0.5)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"n_experts": 4, "top_k": 5}, "top_k=5"), ({"n_experts": 4, "top_k": 2, "activation": "tanh"}, "tanh")],
)
def test_routed_ffn_rejects_bad_settings(kwargs, message):
    with pytest.raises(ValueError, match=message):
        RoutedFFN(C, hidden_dim=16, **kwargs)
