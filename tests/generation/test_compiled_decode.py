"""The compiled decoding step over a static KV cache: the tokens of eager decoding, refusals, the eager fallback."""

import pytest
import torch

from tests.helpers import tiny_backbone
from zoo.generation import compiled, generate
from zoo.nn import Canon, GroupedQueryAttention

V = 64
PROMPTS = [[5, 9, 2, 17, 3], [8, 1], [4, 4, 30]]  # different lengths: left-padded, masked


pytestmark = pytest.mark.usefixtures("fresh_compiled_steps")  # each test compiles on its own (tests/conftest.py)


def model():
    torch.manual_seed(0)
    attention = lambda d: GroupedQueryAttention(d, n_heads=4, n_kv_heads=2)  # noqa: E731
    return tiny_backbone(vocab_size=V, attention=attention).eval()


def both(backbone, prompts, **options):
    """(eager tokens, compiled tokens), sampled ones from generators of the same seed."""
    eager = generate(backbone, prompts, compile=False, generator=torch.Generator().manual_seed(3), **options)
    fast = generate(backbone, prompts, compile=True, generator=torch.Generator().manual_seed(3), **options)
    return eager.tokens, fast.tokens


@pytest.mark.parametrize("options", [{}, {"temperature": 1.0, "top_k": 20}], ids=["greedy", "sampled"])
def test_a_traced_step_over_the_static_cache_gives_the_eager_tokens(monkeypatch, options):
    """The whole step is one graph (fullgraph: a graph break would fall back with a warning, failing here) and the
    static cache, read whole under its mask, decodes what the growing cache does. aot_eager traces in seconds;
    inductor's code is checked in the slow test below."""
    monkeypatch.setattr(compiled, "BACKEND", "aot_eager")
    backbone = model()
    with torch.inference_mode():
        eager, fast = both(backbone, PROMPTS, max_new_tokens=12, **options)
    assert fast == eager and compiled.DECODE_STEP.failure is None
    assert len(set(map(tuple, eager))) > 1  # the rows differ: the check is not vacuous


def test_canon_tails_are_written_in_place_and_decode_as_eager(monkeypatch):
    monkeypatch.setattr(compiled, "BACKEND", "aot_eager")
    torch.manual_seed(0)
    backbone = tiny_backbone(vocab_size=V, canon_a=Canon, canon_c=Canon).eval()
    eager, fast = both(backbone, [[5, 9, 2, 17], [1, 2, 3, 4]], max_new_tokens=10)
    assert fast == eager and compiled.DECODE_STEP.failure is None


@pytest.mark.slow
def test_inductor_compiled_step_gives_the_eager_tokens():
    backbone = model()
    for options in ({}, {"temperature": 1.0, "top_p": 0.9}):  # greedy, then sampled with the same seed
        eager, fast = both(backbone, PROMPTS, max_new_tokens=12, **options)
        assert fast == eager
    assert compiled.DECODE_STEP.failure is None


def test_a_failing_compiler_falls_back_to_eager_with_one_warning(monkeypatch):
    def no_compiler(graph, example_inputs):
        raise RuntimeError("no C++ compiler in this test")

    monkeypatch.setattr(compiled, "BACKEND", no_compiler)
    backbone = model()
    eager = generate(backbone, PROMPTS, max_new_tokens=6, compile=False).tokens
    with pytest.warns(RuntimeWarning, match="runs eagerly: .*no C\\+\\+ compiler in this test") as caught:
        first = generate(backbone, PROMPTS, max_new_tokens=6, compile=True).tokens
        second = generate(backbone, PROMPTS, max_new_tokens=6, compile=True).tokens
    assert first == second == eager
    assert len([w for w in caught if issubclass(w.category, RuntimeWarning)]) == 1


def test_no_cxx_compiler_on_path_is_said_before_trying(monkeypatch):
    monkeypatch.setenv("PATH", "")
    backbone = model()
    with pytest.warns(RuntimeWarning, match="no C\\+\\+ compiler .* is on PATH"):
        out = generate(backbone, [[5, 9, 2]], max_new_tokens=4, compile="true").tokens
    assert out == generate(backbone, [[5, 9, 2]], max_new_tokens=4, compile="false").tokens


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"max_new_tokens": 8, "cache_length": 10}, r"needs 13 positions and the static cache holds cache_length=10"),
        ({"max_new_tokens": 8, "cache_length": 65}, r"cache_length=65 exceeds the model's max_seq_len=64"),
        ({"max_new_tokens": 60}, r"a prompt of 5 tokens \+ max_new_tokens=60 exceeds the model's max_seq_len=64"),
        ({"max_new_tokens": 4, "compile": "maybe"}, r"compile='maybe' is unknown; choose one of \['auto', 'true'"),
    ],
)
def test_a_request_longer_than_the_static_cache_is_refused_before_the_first_token(options, message):
    backbone = model()
    streamed = []
    with pytest.raises(ValueError, match=message):
        generate(backbone, [[5, 9, 2, 17, 3]], on_token=lambda *a: streamed.append(a), **{"compile": True, **options})
    assert streamed == [] and len(compiled.DECODE_STEP.compiled) == 0


def test_a_static_cache_of_fixed_length_serves_requests_of_any_shorter_length(monkeypatch):
    """``compile="auto"`` compiles when the caller fixes the cache length (a loop of requests), not for one request."""
    monkeypatch.setattr(compiled, "BACKEND", "aot_eager")
    backbone = model()
    generate(backbone, [[5, 9, 2]], max_new_tokens=5)
    assert len(compiled.DECODE_STEP.compiled) == 0
    for prompts in ([[5, 9, 2]], [[1, 2, 3, 4, 5, 6, 7]]):
        fast = generate(backbone, prompts, max_new_tokens=5, cache_length=32).tokens
        assert fast == generate(backbone, prompts, max_new_tokens=5, compile=False).tokens
    assert len(compiled.DECODE_STEP.compiled) == 1 and compiled.DECODE_STEP.failure is None


def test_each_backbone_gets_its_own_compiled_step(monkeypatch):
    """The step skips dynamo's guards on module attributes (they cost a fifth of a step): two backbones, one with
    Canon layers, used in turn, each decode their own eager tokens with a compiled step of their own."""
    monkeypatch.setattr(compiled, "BACKEND", "aot_eager")
    torch.manual_seed(0)
    plain = tiny_backbone(vocab_size=V).eval()
    torch.manual_seed(1)
    canon = tiny_backbone(vocab_size=V, canon_c=Canon).eval()
    for backbone in (plain, canon, plain):
        eager, fast = both(backbone, [[5, 9, 2, 17]], max_new_tokens=8)
        assert fast == eager
    assert len(compiled.DECODE_STEP.compiled) == 2 and compiled.DECODE_STEP.failure is None
