import math

import pytest
import torch

from tests.conftest import tiny_backbone
from zoo.optim import Constant, WarmupCosine, WarmupStableDecay, weight_decay_groups


def lrs(schedule, total=100, peak=1.0):
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=peak)
    sched = schedule.build(opt, total)
    out = []
    for _ in range(total):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


def test_warmup_cosine():
    lr = lrs(WarmupCosine(warmup_steps=10, min_lr=0.1))
    assert lr[0] == pytest.approx(0.1) and lr[9] == pytest.approx(1.0)  # linear warmup to the peak
    assert all(a >= b for a, b in zip(lr[10:], lr[11:]))  # then monotone decay
    assert lr[55] == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 45 / 90)))
    assert lr[-1] == pytest.approx(0.1, abs=1e-3)


@pytest.mark.parametrize("shape", ["linear", "1-sqrt"])
def test_wsd(shape):
    lr = lrs(WarmupStableDecay(warmup_steps=10, decay_start=0.7, decay_shape=shape, min_lr=0.0))
    assert lr[5] == pytest.approx(0.6)
    assert lr[10:70] == [pytest.approx(1.0)] * 60  # stable until 70% of the run
    assert lr[70] < 1.0 and lr[-1] == pytest.approx(0.0)  # min_lr at the last step
    mid = lr[85]  # 16 of 30 decay steps
    assert mid == pytest.approx(1 - 16 / 30 if shape == "linear" else 1 - math.sqrt(16 / 30))


def test_constant_and_bad_values():
    assert lrs(Constant(warmup_steps=0), total=5) == [1.0] * 5
    with pytest.raises(ValueError, match="decay_start=1.5"):
        WarmupStableDecay(decay_start=1.5)
    with pytest.raises(ValueError, match="decay_shape='cosine'"):
        WarmupStableDecay(decay_shape="cosine")
    with pytest.raises(ValueError, match="warmup_steps=100 is not below the run's 50 steps"):
        lrs(WarmupCosine(warmup_steps=100), total=50)


def test_weight_decay_groups_exclude_norms_biases_embeddings():
    from zoo.nn import GroupedQueryAttention, LearnedPositions

    model = tiny_backbone(
        attention=lambda d: GroupedQueryAttention(d, n_heads=4, bias=True), position=LearnedPositions
    )
    decay, no_decay = weight_decay_groups(model)
    assert "weight_decay" not in decay and no_decay["weight_decay"] == 0.0
    decay_ids = {id(p) for p in decay["params"]}
    assert id(model.embed.weight) not in decay_ids  # tied head included: one tensor
    assert id(model.position.weight) not in decay_ids
    assert id(model.blocks[0].attention.qkv.weight) in decay_ids
    assert id(model.blocks[0].attention.qkv.bias) not in decay_ids
    assert id(model.blocks[0].attention_norm.weight) not in decay_ids
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))
