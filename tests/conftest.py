import functools
import importlib
import importlib.util
import os

import pytest
import torch

from zoo.nn import GroupedQueryAttention, PreNormBlock, RMSNorm, Rotary, SwiGLU, Transformer


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def tiny_backbone(*, vocab_size=64, dim=32, n_layers=2, max_seq_len=64, attention=None, ffn=None, norm=None,
                  position=None, canon_a=None, canon_c=None, tie_embeddings=True) -> Transformer:
    """A 2-layer, width-32 Llama-style backbone; any component can be replaced by a factory."""
    attention = attention or (lambda d: GroupedQueryAttention(d, n_heads=4, n_kv_heads=2))
    return Transformer(
        vocab_size=vocab_size,
        dim=dim,
        n_layers=n_layers,
        max_seq_len=max_seq_len,
        block=lambda d: PreNormBlock(
            d,
            attention=attention,
            ffn=ffn or (lambda d: SwiGLU(d, hidden_dim=64)),
            norm=norm or RMSNorm,
            canon_a=canon_a,
            canon_c=canon_c,
        ),
        norm=norm or RMSNorm,
        position=position or Rotary,
        tie_embeddings=tie_embeddings,
    )


# ---- groups the README's `python -m pytest -q` skips, each skip saying what runs it --------------------------------
# marker: (environment variable that makes the group run, and a missing requirement fail instead of skip; the
# requirement's check, or None; what the skip says). .ci/run sets every variable and selects every marker.
GROUPS = {
    "slow": ("ZOO_TEST_SLOW", None, "slow: ZOO_TEST_SLOW=1 runs it (CI does)"),
    "needs_llama_cpp": (
        "ZOO_TEST_LLAMA_CPP",
        lambda: importlib.util.find_spec("llama_cpp") is not None,
        'llama-cpp-python is not installed: pip install -e ".[gguf]" runs it (ZOO_TEST_LLAMA_CPP=1 requires it)',
    ),
    "needs_bwrap": (
        "ZOO_TEST_NAMESPACES",
        lambda: importlib.import_module("zoo.eval.sandbox").namespaces_available(),
        "the code sandbox cannot create namespaces here: apt-get install bubblewrap runs it (ZOO_TEST_NAMESPACES=1 "
        "requires it)",
    ),
}


def pytest_configure(config):
    for marker, (*_, reason) in GROUPS.items():
        config.addinivalue_line("markers", f"{marker}: skipped unless it can run ({reason})")


@functools.cache
def _available(marker: str) -> bool:
    return GROUPS[marker][1]()


def pytest_runtest_setup(item):
    for marker in item.iter_markers():
        if marker.name not in GROUPS:
            continue
        variable, check, reason = GROUPS[marker.name]
        required = os.environ.get(variable) == "1"
        if check is None:  # a group that only needs asking for
            if not required:
                pytest.skip(reason)
        elif not _available(marker.name):
            if required:
                pytest.fail(f"{variable}=1 but {reason.split(':')[0]}", pytrace=False)
            pytest.skip(reason)
