"""The masked-diffusion sampler's passes compiled (``compile=True``): the eager tokens for every cache, shared graphs
across blocks, the eager fallback."""

import warnings

import pytest
import torch

from tests.helpers import tiny_backbone
from zoo.generation import compiled, diffusion_generate
from zoo.nn import GroupedQueryAttention

V, MASK = 64, 63
ROWS = [[1, 2, 3], [4, 5, 6, 7, 8, 9, 10], [11, 12, 13, 14, 15]]  # three prompt lengths: a left-padded batch


pytestmark = pytest.mark.usefixtures("fresh_compiled_steps")  # each test compiles on its own (tests/conftest.py)


def bidirectional():
    """Weights wide enough (std 0.5) that the answers depend on the prompt; float64, so rounding never decides
    between two predictions."""
    torch.manual_seed(0)
    attention = lambda d: GroupedQueryAttention(d, n_heads=4, n_kv_heads=2, causal=False)  # noqa: E731
    backbone = tiny_backbone(vocab_size=V, attention=attention)
    with torch.no_grad():
        for weight in backbone.parameters():
            if weight.dim() > 1:
                weight.normal_(std=0.5)
    return backbone.double().eval()


def both(backbone, prompts, **options):
    """(eager answers, compiled answers), sampled ones from generators of the same seed."""
    common = {"mask_id": MASK, "gen_length": 16, "block_length": 4, **options}
    eager = diffusion_generate(backbone, prompts, generator=torch.Generator().manual_seed(3), **common)
    fast = diffusion_generate(backbone, prompts, compile=True, generator=torch.Generator().manual_seed(3), **common)
    return eager.answer, fast.answer


@pytest.mark.parametrize("cache", ["none", "prefix", "dual"])
@pytest.mark.parametrize(
    "options", [{"steps": 16}, {"threshold": 0.2, "temperature": 1.0}, {"steps": 16, "shift": True}],
    ids=["llada", "sampled", "shifted"],
)
def test_compiled_passes_give_the_eager_tokens(monkeypatch, cache, options):
    """Every pass is one graph (fullgraph: a graph break would fall back with a warning, failing here); aot_eager
    traces in seconds, inductor's code is checked in the slow test below."""
    monkeypatch.setattr(compiled, "BACKEND", "aot_eager")
    backbone = bidirectional()
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # a fallback to eager would pass vacuously
        eager, fast = both(backbone, ROWS, cache=cache, **options)
    assert torch.equal(fast, eager) and compiled.BLOCK_PASS.failure is None
    assert len(compiled.BLOCK_PASS.compiled) == 1
    assert len(set(map(tuple, eager.tolist()))) > 1  # the rows differ: the check is not vacuous


def test_a_block_causal_model_compiles_its_exact_cache(monkeypatch):
    monkeypatch.setattr(compiled, "BACKEND", "aot_eager")
    eager, fast = both(bidirectional(), [[1, 2, 3, 4]] * 2, steps=16, cache="dual", block_causal=True)
    assert torch.equal(fast, eager) and compiled.BLOCK_PASS.failure is None


def test_the_blocks_share_their_graphs(monkeypatch):
    """The window's start moves with each block; dynamo makes it symbolic at its second value, so four blocks
    need no more graphs than two (a refresh pass and a window pass, each compiled at most twice)."""
    from torch._dynamo.testing import CompileCounter

    counter = CompileCounter()
    monkeypatch.setattr(compiled, "BACKEND", counter)
    backbone = bidirectional()
    diffusion_generate(backbone, [[1, 2, 3]], mask_id=MASK, gen_length=8, block_length=4, steps=8, cache="dual",
                       compile=True)  # fmt: skip
    two_blocks = counter.frame_count
    torch._dynamo.reset()
    counter.clear()
    monkeypatch.setattr(compiled, "BLOCK_PASS", compiled.BlockPass())
    diffusion_generate(backbone, [[1, 2, 3]], mask_id=MASK, gen_length=32, block_length=4, steps=32, cache="dual",
                       compile=True)  # fmt: skip
    assert counter.frame_count == two_blocks <= 4


def test_a_backend_that_fails_gives_the_eager_tokens_with_one_warning(monkeypatch):
    def broken(gm, example_inputs):
        raise RuntimeError("this backend cannot lower aten.fancy_op")

    monkeypatch.setattr(compiled, "BACKEND", broken)
    backbone = bidirectional()
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        eager, fast = both(backbone, ROWS, steps=16, cache="dual")
    assert torch.equal(fast, eager)
    (message,) = [str(w.message) for w in record if "compiled" in str(w.message)]
    assert "diffusion pass runs eagerly" in message and "aten.fancy_op" in message


def test_no_cpp_compiler_decodes_eagerly_with_one_warning():
    from torch._inductor import config

    backbone = bidirectional()
    with config.patch({"cpp.cxx": (None, "zoo-no-such-compiler")}), warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        eager, fast = both(backbone, ROWS, steps=16, cache="prefix")
    assert torch.equal(fast, eager) and len(compiled.BLOCK_PASS.compiled) == 0
    (message,) = [str(w.message) for w in record if "compiled" in str(w.message)]
    assert "zoo-no-such-compiler" in message


def test_auto_runs_eager_and_a_bad_choice_is_refused(monkeypatch):
    from torch._dynamo.testing import CompileCounter

    counter = CompileCounter()
    monkeypatch.setattr(compiled, "BACKEND", counter)
    diffusion_generate(bidirectional(), [[1, 2]], mask_id=MASK, gen_length=4, block_length=4, steps=4, cache="dual",
                       compile="auto")  # fmt: skip
    assert counter.frame_count == 0
    with pytest.raises(ValueError, match="compile='yes' is unknown"):
        diffusion_generate(bidirectional(), [[1, 2]], mask_id=MASK, gen_length=4, block_length=4, steps=4,
                           compile="yes")  # fmt: skip


@pytest.mark.slow
def test_inductor_compiles_the_passes_to_the_eager_tokens():
    """The real compiler (a C++ build: tens of seconds)."""
    backbone = bidirectional()
    eager, fast = both(backbone, ROWS, steps=16, cache="dual")
    assert torch.equal(fast, eager) and compiled.BLOCK_PASS.failure is None
