"""Misconfigurations fail early with a message naming the field, the value and the fix."""

import pytest

from tests.helpers import tiny_backbone
from zoo.nn import Canon, GatedFFN, GroupedQueryAttention, RMSNorm, Rotary


@pytest.mark.parametrize(
    "build, match",
    [
        (lambda: GroupedQueryAttention(32, n_heads=6, n_kv_heads=4), "n_heads=6 is not divisible by n_kv_heads=4"),
        (lambda: GroupedQueryAttention(30, n_heads=4), "dim=30 is not divisible by n_heads=4"),
        (lambda: GroupedQueryAttention(32, n_heads=4, kernel="flash9"), "kernel='flash9' is unknown"),
        (lambda: Rotary(32, 8, 64, fraction=0.1), "fraction=0.1"),
        (lambda: Rotary(32, 8, 64, theta=-1), "theta=-1"),
        (lambda: RMSNorm(32, eps=0), "eps=0"),
        (lambda: GatedFFN(32, hidden_dim=64, activation="swish2"), "activation='swish2' is unknown"),
        (lambda: Canon(32, kernel_size=0), "kernel_size=0"),
        (lambda: tiny_backbone(vocab_size=0), "vocab_size=0"),
    ],
)
def test_bad_config_names_field_and_value(build, match):
    with pytest.raises(ValueError, match=match):
        build()


def test_sequence_longer_than_max_seq_len():
    import torch

    model = tiny_backbone(max_seq_len=8)
    with pytest.raises(ValueError, match="sequence of 9 tokens exceeds max_seq_len=8"):
        model(torch.zeros(1, 9, dtype=torch.long))
