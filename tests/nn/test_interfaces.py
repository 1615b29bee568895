"""The interfaces between the backbone and what uses it: each module initialises itself, every FFN takes the same
call, and the backbone answers for its blocks (``causal``, caches, widths) so no caller names a block's mixer."""

import math

import pytest
import torch
from torch import nn

from tests.helpers import tiny_backbone
from zoo.nn import (
    Canon,
    GatedFFN,
    GeGLU,
    GeluMLP,
    GroupedQueryAttention,
    LayerNorm,
    LearnedPositions,
    RMSNorm,
    Rotary,
    RoutedFFN,
    SandwichBlock,
    SwiGLU,
    Transformer,
)
from zoo.nn.cache import new_cache_of
from zoo.objectives import CausalLM, MaskedDiffusionLM

FFNS = {
    "gelu_mlp": lambda d: GeluMLP(d, hidden_dim=64),
    "swiglu": lambda d: SwiGLU(d, hidden_dim=64),
    "geglu_tanh": lambda d: GeGLU(d, hidden_dim=64, approximate="tanh"),
    "canon_d": lambda d: SwiGLU(d, hidden_dim=64, canon=Canon),
    "routed": lambda d: RoutedFFN(d, n_experts=4, top_k=2, hidden_dim=32),
}


@pytest.mark.parametrize("name", sorted(FFNS))
def test_every_parameter_is_initialised_by_its_own_module(name):
    backbone = tiny_backbone(ffn=FFNS[name], canon_a=Canon, tie_embeddings=False, norm=RMSNorm)
    with torch.no_grad():
        for p in backbone.parameters():
            p.fill_(float("nan"))
    backbone.init_weights()
    bad = [n for n, p in backbone.named_parameters() if not torch.isfinite(p).all()]
    assert bad == []


def test_residual_projections_are_scaled_and_norms_are_the_identity():
    n_layers = 8
    backbone = Transformer(
        vocab_size=64, dim=256, n_layers=n_layers, max_seq_len=32,
        block=lambda d: SandwichBlock(d, attention=lambda d: GroupedQueryAttention(d, n_heads=4, bias=True),
                                      ffn=lambda d: GeluMLP(d, hidden_dim=1024), norm=LayerNorm),
        norm=lambda d: RMSNorm(d, unit_offset=True), position=LearnedPositions,
    )  # fmt: skip
    block = backbone.blocks[3]
    residual = 0.02 / math.sqrt(2 * n_layers)
    assert block.attention.out.weight.std().item() == pytest.approx(residual, rel=0.05)
    assert block.ffn.down.weight.std().item() == pytest.approx(residual, rel=0.05)
    assert block.attention.qkv.weight.std().item() == pytest.approx(0.02, rel=0.05)
    assert backbone.position.weight.std().item() == pytest.approx(0.02, rel=0.05)
    assert torch.equal(block.attention.qkv.bias, torch.zeros_like(block.attention.qkv.bias))
    assert torch.equal(block.post_ffn_norm.weight, torch.ones_like(block.post_ffn_norm.weight))
    assert torch.equal(backbone.norm.weight, torch.zeros_like(backbone.norm.weight))  # (1 + w) convention


@pytest.mark.parametrize("name", sorted(FFNS))
def test_every_ffn_takes_the_decoding_cache(name):
    ffn = FFNS[name](32)
    x = torch.randn(2, 5, 32)
    whole = ffn(x, None)
    state = new_cache_of(ffn, 2, 5, device="cpu", dtype=torch.float32)  # its own typed state, or None
    stepwise = torch.cat([ffn(x[:, t : t + 1], state) for t in range(5)], dim=1)
    torch.testing.assert_close(stepwise, whole)


def test_one_spelling_of_the_tanh_gelu():
    x = torch.randn(4, 16)
    gated = GatedFFN(16, hidden_dim=8, activation="gelu", approximate="tanh")
    geglu = GeGLU(16, hidden_dim=8, approximate="tanh")
    geglu.load_state_dict(gated.state_dict())
    torch.testing.assert_close(geglu(x[None]), gated(x[None]))
    with pytest.raises(ValueError, match="approximate='tanh' is a form of GELU"):
        GatedFFN(16, hidden_dim=8, activation="silu", approximate="tanh")
    with pytest.raises(ValueError, match="activation='gelu_tanh' is unknown"):
        GatedFFN(16, hidden_dim=8, activation="gelu_tanh")


class Mixer(nn.Module):
    """A block whose sequence mixer is not called ``attention``: a causal or bidirectional mean over positions."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.proj = nn.Linear(dim, dim)
        self.bidirectional = False

    def forward(self, x, *, rope, mask, cache):
        T = x.shape[1]
        weights = torch.ones(T, T) if self.bidirectional else torch.ones(T, T).tril()
        return self.proj((weights / weights.sum(-1, keepdim=True)) @ x)

    @property
    def causal(self) -> bool:
        return not self.bidirectional

    @causal.setter
    def causal(self, value: bool) -> None:
        self.bidirectional = not value

    head_dim = 8
    attention_width = 32

    def new_cache(self, batch_size, max_len, *, device, dtype):
        return {}

    def init_weights(self, *, std, residual_std):
        nn.init.normal_(self.proj.weight, std=residual_std)
        nn.init.zeros_(self.proj.bias)


def test_objectives_ask_the_backbone_not_a_block_attribute():
    def backbone():
        return Transformer(vocab_size=40, dim=32, n_layers=2, max_seq_len=16, block=Mixer, norm=RMSNorm,
                           position=Rotary)  # fmt: skip

    causal = CausalLM(backbone=backbone())
    assert causal.backbone.causal
    diffusion = MaskedDiffusionLM(backbone=backbone(), init_from="unused.ckpt")  # converting: switched off here
    assert not diffusion.backbone.causal and not any(b.causal for b in diffusion.backbone.blocks)
    x = torch.randint(0, 39, (2, 16))
    assert diffusion.backbone(x).shape == (2, 16, 40)
    with pytest.raises(ValueError, match="CausalLM needs causal attention"):
        b = backbone()
        b.causal = False
        CausalLM(backbone=b)
