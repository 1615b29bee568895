"""Activation checkpointing recomputes each block in the backward pass: same loss, same gradients, less memory."""

import pytest
import torch

from tests.helpers import tiny_backbone
from zoo.nn import GroupedQueryAttention


def _loss_and_grads(checkpointing: bool, **kwargs):
    torch.manual_seed(0)
    model = tiny_backbone(**kwargs)
    model.activation_checkpointing = checkpointing
    ids = torch.randint(0, 64, (2, 24))
    logits = model(ids[:, :-1])
    loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), ids[:, 1:].flatten())
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize(
    "attention", [None, lambda d: GroupedQueryAttention(d, n_heads=4, n_kv_heads=1, bias=True)], ids=["gqa", "mqa"]
)
def test_checkpointing_gives_the_same_loss_and_gradients(attention):
    loss, grads = _loss_and_grads(False, attention=attention)
    loss_ckpt, grads_ckpt = _loss_and_grads(True, attention=attention)
    torch.testing.assert_close(loss_ckpt, loss, rtol=0, atol=0)
    assert grads.keys() == grads_ckpt.keys()
    for name in grads:
        torch.testing.assert_close(grads_ckpt[name], grads[name], rtol=1e-6, atol=1e-7, msg=name)


def test_checkpointing_is_off_in_eval_and_with_a_cache():
    model = tiny_backbone()
    model.activation_checkpointing = True
    ids = torch.randint(0, 64, (1, 8))
    model.eval()
    with torch.no_grad():
        full = model(ids)
        cache = model.new_cache(1, 8)
        stepped = torch.cat([model(ids[:, :4], cache=cache), model(ids[:, 4:], cache=cache)], dim=1)
    torch.testing.assert_close(stepped, full, rtol=1e-5, atol=1e-5)


def test_checkpointing_saves_fewer_activations():
    """Count the bytes autograd keeps for the backward pass (saved-tensor hooks): with checkpointing only the
    blocks' inputs (and the weights every matmul saves anyway) are kept, so far less than without."""

    def saved_bytes(checkpointing: bool) -> int:
        torch.manual_seed(0)
        model = tiny_backbone(dim=64, n_layers=4, max_seq_len=128)
        model.activation_checkpointing = checkpointing
        total = 0

        def pack(t):
            nonlocal total
            total += t.numel() * t.element_size()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            model(torch.randint(0, 64, (4, 128))).sum()
        return total

    without, with_ = saved_bytes(False), saved_bytes(True)
    assert with_ < 0.6 * without, (with_, without)
