"""The typed decoding cache: what each layer's state holds and what it can do, and the static cache's passes."""

import pytest
import torch

from tests.helpers import tiny_backbone
from zoo.nn import AttentionCache, BlockCache, Canon, ConvTail, KVCache, LearnedPositions


def test_each_layer_holds_typed_states_of_its_parts():
    backbone = tiny_backbone(canon_a=Canon, ffn=None)
    cache = backbone.new_cache(2, 16)
    layer = cache.layers[0]
    assert isinstance(layer, BlockCache) and isinstance(layer.attention, AttentionCache)
    assert isinstance(layer.attention.kv, KVCache) and layer.attention.kv.k.shape == (2, 2, 16, 8)
    assert isinstance(layer.canon_a, ConvTail) and layer.canon_c is None and layer.ffn is None
    assert not cache.rewindable and not cache.masked  # a convolution's tail: neither
    plain = tiny_backbone().new_cache(2, 16)
    assert plain.rewindable and plain.masked
    assert not tiny_backbone().new_cache(2, 16, static=True).rewindable  # a static cache is not rewound


@pytest.mark.parametrize("extra", [{}, {"canon_a": Canon, "position": LearnedPositions}], ids=["rope", "canon"])
def test_a_static_cache_decodes_the_logits_of_the_growing_one(extra):
    torch.manual_seed(0)
    model = tiny_backbone(**extra).eval()
    x = torch.randint(0, 64, (2, 12))
    with torch.no_grad():
        growing, static = model.new_cache(2, 16), model.new_cache(2, 16, static=True)
        for lo, hi in [(0, 5)] + [(t, t + 1) for t in range(5, 12)]:  # a prompt, then one token at a time
            torch.testing.assert_close(model(x[:, lo:hi], cache=static), model(x[:, lo:hi], cache=growing))
    assert static.length == growing.length == 12 and static.cursor.dim() == 0


def test_a_static_cache_longer_than_the_model_is_refused():
    with pytest.raises(ValueError, match="static cache of 65 positions exceeds the model's max_seq_len=64"):
        tiny_backbone().new_cache(1, 65, static=True)
    with pytest.raises(ValueError, match="static KV cache is not rewound"):
        tiny_backbone().new_cache(1, 8, static=True).layers[0].attention.kv.seek(0)
