import copy
import functools
import math

import pytest
import torch

from tests.helpers import tiny_backbone
from zoo.optim import Constant, WarmupCosine, WarmupStableDecay, optimizer_groups, prefer_fused, weight_decay_groups


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


def _muon_model(tie_embeddings=False):
    from zoo.nn import GroupedQueryAttention
    from zoo.objectives import CausalLM
    from zoo.optim import MuonWithAdamW

    backbone = tiny_backbone(
        attention=lambda d: GroupedQueryAttention(d, n_heads=4, n_kv_heads=2, bias=True),
        tie_embeddings=tie_embeddings,
    )
    return CausalLM(backbone=backbone, optimizer=functools.partial(MuonWithAdamW, lr=0.02, adamw_lr=3e-3))


@pytest.mark.parametrize("tie_embeddings", [False, True])
def test_muon_groups_route_hidden_matrices_only(tie_embeddings):
    from zoo.optim import MuonWithAdamW, muon_groups

    model = _muon_model(tie_embeddings).backbone
    opt = MuonWithAdamW(muon_groups(model))
    muon_ids = {id(p) for g in opt.muon.param_groups for p in g["params"]}
    adamw_ids = {id(p) for g in opt.adamw.param_groups for p in g["params"]}
    attention, ffn = model.blocks[0].attention, model.blocks[0].ffn
    hidden = [attention.qkv.weight, attention.out.weight, *(m.weight for m in ffn.modules() if m is not ffn and
              isinstance(m, torch.nn.Linear))]  # fmt: skip
    assert {id(p) for p in hidden} <= muon_ids
    for p in (model.embed.weight, model.head.weight, attention.qkv.bias, model.norm.weight,
              model.blocks[0].attention_norm.weight):  # fmt: skip
        assert id(p) in adamw_ids and id(p) not in muon_ids
    assert len(muon_ids) + len(adamw_ids) == len(list(model.parameters()))  # every parameter once
    assert all(p.ndim == 2 for g in opt.muon.param_groups for p in g["params"])
    # the same group dicts: a scheduler multiplying the wrapper's lrs drives both optimizers
    assert opt.param_groups[0] is opt.muon.param_groups[0] and opt.param_groups[-1] is opt.adamw.param_groups[-1]
    assert {g["lr"] for g in opt.muon.param_groups} == {0.02} and {g["lr"] for g in opt.adamw.param_groups} == {3e-3}
    decay = {g["weight_decay"] for g in opt.adamw.param_groups if any(p is model.embed.weight for p in g["params"])}
    assert decay == {0.0}


def test_muon_needs_tagged_groups_and_matrices():
    from zoo.optim import MuonWithAdamW

    with pytest.raises(ValueError, match="use_muon"):
        MuonWithAdamW([torch.nn.Parameter(torch.zeros(2, 2))])
    with pytest.raises(ValueError, match="2-D matrices only"):
        MuonWithAdamW([{"params": [torch.nn.Parameter(torch.zeros(3))], "use_muon": True}])


def _steps(model, opt, sched, batch, n):
    losses = []
    for _ in range(n):
        loss = model.loss(batch)[0]
        loss.backward()
        opt.step()
        opt.zero_grad()
        sched.step()
        losses.append(loss.item())
    return losses


def test_muon_lowers_loss_keeps_lr_ratio_and_resumes_exactly():
    model = _muon_model()
    groups = optimizer_groups(model.backbone)
    assert any(g["use_muon"] for g in groups)  # the partial of MuonWithAdamW is recognised
    opt = model.optimizer_factory(groups)
    sched = WarmupCosine(warmup_steps=2, min_lr=0.0).build(opt, 20)
    batch = {"input_ids": torch.randint(0, 64, (2, 16))}
    batch["labels"] = batch["input_ids"]
    losses = _steps(model, opt, sched, batch, 6)
    assert losses[-1] < losses[0] - 0.1
    assert opt.muon.param_groups[0]["lr"] / opt.adamw.param_groups[0]["lr"] == pytest.approx(0.02 / 3e-3)

    saved = copy.deepcopy({"model": model.state_dict(), "opt": opt.state_dict(), "sched": sched.state_dict()})
    expected = _steps(model, opt, sched, batch, 3)

    clone = _muon_model()
    clone.load_state_dict(saved["model"])
    opt2 = clone.optimizer_factory(optimizer_groups(clone.backbone))
    sched2 = WarmupCosine(warmup_steps=2, min_lr=0.0).build(opt2, 20)
    opt2.load_state_dict(saved["opt"])
    sched2.load_state_dict(saved["sched"])
    assert opt2.param_groups[0] is opt2.muon.param_groups[0]  # rebound after the inner loads
    for p, state in list(opt2.state.items()):  # as Lightning moves the state to the device: written back
        opt2.state[p] = state
    assert len(opt2.muon.state) == len(opt.muon.state) and len(opt2.adamw.state) == len(opt.adamw.state)
    assert _steps(clone, opt2, sched2, batch, 3) == expected  # bit-exact resume


def test_newton_schulz_matches_torchs_and_orthogonalises():
    from zoo.optim.muon import newton_schulz

    coefficients = (3.4445, -4.775, 2.0315)
    grad = torch.randn(48, 16, generator=torch.Generator().manual_seed(0))
    theirs = newton_schulz(grad, coefficients, 5, 1e-7, dtype=torch.bfloat16).float()  # torch's Muon's dtype
    ours = newton_schulz(grad, coefficients, 5, 1e-7)
    assert ours.dtype == torch.float32 and ours.shape == grad.shape
    torch.testing.assert_close(ours, theirs, atol=0.02, rtol=0.05)  # bf16 against fp32 rounding
    singular = torch.linalg.svdvals(ours)
    assert singular.min() > 0.5 and singular.max() < 1.5  # the quintic's band around 1, not U Vᵀ exactly


@pytest.mark.parametrize(
    ("units", "auto"), [("AVX512-BF16", torch.bfloat16), ("AMX", torch.bfloat16), (None, torch.float32)]
)
def test_muon_newton_schulz_dtype_follows_the_cpus_bf16_units(monkeypatch, units, auto):
    from zoo.optim import MuonWithAdamW
    from zoo.training import devices

    monkeypatch.setattr(devices, "cpu_bf16_units", lambda: units)
    weight = torch.nn.Parameter(torch.randn(8, 4, generator=torch.Generator().manual_seed(1)))
    assert MuonWithAdamW([{"params": [weight], "use_muon": True}], ns_dtype="auto").muon.ns_dtype == auto
    for given in ("float32", "bfloat16"):  # a dtype given is kept, whatever the CPU
        assert MuonWithAdamW([{"params": [weight], "use_muon": True}], ns_dtype=given).muon.ns_dtype == getattr(
            torch, given
        )
    with pytest.raises(ValueError, match="ns_dtype='float16' must be"):
        MuonWithAdamW([{"params": [weight], "use_muon": True}], ns_dtype="float16")


def test_this_cpus_muon_orthogonalises_in_its_fastest_dtype():
    from zoo.optim import MuonWithAdamW
    from zoo.training.devices import cpu_bf16_units

    weight = torch.nn.Parameter(torch.randn(8, 4))
    expected = torch.bfloat16 if cpu_bf16_units() else torch.float32
    assert MuonWithAdamW([{"params": [weight], "use_muon": True}]).muon.ns_dtype == expected


def test_batched_newton_schulz_equals_one_matrix_at_a_time():
    from zoo.optim.muon import newton_schulz

    coefficients = (3.4445, -4.775, 2.0315)
    grads = torch.randn(5, 24, 40, generator=torch.Generator().manual_seed(3)) * torch.rand(5, 1, 1) * 10
    for dtype in (torch.float32, torch.bfloat16):
        batched = newton_schulz(grads, coefficients, 5, 1e-7, dtype=dtype)
        single = torch.stack([newton_schulz(g, coefficients, 5, 1e-7, dtype=dtype) for g in grads])
        assert batched.dtype == dtype and batched.shape == grads.shape
        torch.testing.assert_close(batched.float(), single.float(), atol=2e-2 if dtype == torch.bfloat16 else 1e-5,
                                   rtol=0)  # fmt: skip
    tall = grads.mT.contiguous()  # (5, 40, 24): the shorter side is squared, the result transposed back
    wide = newton_schulz(grads, coefficients, 5, 1e-7)
    torch.testing.assert_close(newton_schulz(tall, coefficients, 5, 1e-7), wide.mT)


@pytest.mark.parametrize("adjust_lr_fn", [None, "match_rms_adamw"])
def test_muon_step_equals_torchs_muon(adjust_lr_fn):
    """zoo's batched step over a model's mix of shapes (tall, wide, square, repeated) is torch's Muon step: exactly
    in bf16 (torch's dtype), to fp32-vs-bf16 rounding in fp32; and torch's Muon resumes from zoo's state dict."""
    from zoo.optim.muon import _Muon

    shapes = [(16, 16), (8, 16), (40, 16), (16, 40), (40, 16), (16, 16), (8, 16)]
    gen = torch.Generator().manual_seed(4)
    start = [torch.randn(*s, generator=gen) * 0.1 for s in shapes]
    grads = [[torch.randn(*s, generator=gen) for s in shapes] for _ in range(3)]

    def run(make):
        params = [torch.nn.Parameter(w.clone()) for w in start]
        opt = make(params)
        for step in grads:
            for p, g in zip(params, step):
                p.grad = g.clone()
            opt.step()
        return params, opt

    settings = {"lr": 0.02, "weight_decay": 0.1, "adjust_lr_fn": adjust_lr_fn}
    theirs, _ = run(lambda ps: torch.optim.Muon(ps, **settings))
    ours, opt = run(lambda ps: _Muon(ps, ns_dtype=torch.bfloat16, **settings))
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b, atol=0, rtol=0)
    ours32, _ = run(lambda ps: _Muon(ps, ns_dtype=torch.float32, **settings))
    for a, b in zip(ours32, theirs):
        torch.testing.assert_close(a, b, atol=2e-3, rtol=0)  # lr 0.02 × bf16 rounding, over 3 steps
    params = [torch.nn.Parameter(p.detach().clone()) for p in ours]
    torch_opt = torch.optim.Muon(params, **settings)
    torch_opt.load_state_dict(opt.state_dict())  # the same state layout: a checkpoint resumes under either step
    assert all(torch.equal(torch_opt.state[p]["momentum_buffer"], opt.state[q]["momentum_buffer"])
               for p, q in zip(params, ours))  # fmt: skip


def test_adamw_prefers_fused_kernel_unless_told():
    params = [torch.nn.Parameter(torch.randn(4, 4)), torch.nn.Parameter(torch.randn(4))]
    opt = prefer_fused(torch.optim.AdamW([{"params": params[:1]}, {"params": params[1:], "weight_decay": 0.0}], lr=0.1))
    assert opt.defaults["fused"] is True  # CPU has the fused kernel in torch ≥ 2.4
    assert [g["weight_decay"] for g in opt.param_groups] == [0.01, 0.0] and opt.param_groups[0]["lr"] == 0.1
    explicit = torch.optim.AdamW(params, foreach=False)
    assert prefer_fused(explicit) is explicit
    sgd = torch.optim.SGD(params, lr=0.1)
    assert prefer_fused(sgd) is sgd
