"""``model.compile``: the training step compiled without graph breaks or recompiles, with eager as the fallback."""

from __future__ import annotations

import warnings
from pathlib import Path

import lightning as L
import pytest
import torch
import yaml
from torch._dynamo.testing import CompileCounter

from tests.helpers import tiny_backbone
from zoo import compat
from zoo.nn import (
    Canon,
    ExclusiveGroupedQueryAttention,
    GeGLU,
    GeluMLP,
    GroupedQueryAttention,
    LayerNorm,
    LearnedPositions,
    ParallelBlock,
    RMSNorm,
    Rotary,
    RoutedFFN,
    SandwichBlock,
    SwiGLU,
    Transformer,
)
from zoo.objectives import CausalLM
from zoo.training import compile as compile_module
from zoo.training.compile import compile_for_training, compiled_call, resolve_compile

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def _family(block=None, attention=None, ffn=None, norm=RMSNorm, position=None, canon=False) -> dict:
    return dict(block=block, attention=attention, ffn=ffn, norm=norm, position=position, canon=canon)


# every block family configs/models uses, at width 32 (the class paths each stands for are checked below)
FAMILIES = {
    "llama-gqa": _family(),
    "llama-canon": _family(canon=True),
    "gpt2-mha": _family(attention=lambda d: GroupedQueryAttention(d, n_heads=4, bias=True),
                        ffn=lambda d: GeluMLP(d, hidden_dim=64), norm=LayerNorm, position=LearnedPositions),
    "pythia-parallel": _family(block=ParallelBlock, attention=lambda d: GroupedQueryAttention(d, n_heads=4, bias=True),
                               ffn=lambda d: GeluMLP(d, hidden_dim=64, approximate="none"), norm=LayerNorm),
    "gemma3-sandwich": _family(block=SandwichBlock, ffn=lambda d: GeGLU(d, hidden_dim=64),
                               attention=lambda d: GroupedQueryAttention(d, n_heads=4, n_kv_heads=2, qk_norm=RMSNorm)),
    "exclusive-gqa": _family(attention=lambda d: ExclusiveGroupedQueryAttention(d, n_heads=4, n_kv_heads=2)),
    "moe": _family(ffn=lambda d: RoutedFFN(d, n_experts=4, top_k=2, hidden_dim=32)),
}
COVERED = {"Transformer", "PreNormBlock", "ParallelBlock", "SandwichBlock", "GroupedQueryAttention",
           "ExclusiveGroupedQueryAttention", "SwiGLU", "GeGLU", "GeluMLP", "RoutedFFN", "Canon", "RMSNorm",
           "LayerNorm", "Rotary", "LearnedPositions"}


def build(family: str) -> Transformer:
    spec = FAMILIES[family]
    if spec["block"] is None:
        return tiny_backbone(attention=spec["attention"], ffn=spec["ffn"], norm=spec["norm"],
                             position=spec["position"], canon_a=Canon if spec["canon"] else None,
                             canon_c=Canon if spec["canon"] else None)  # fmt: skip
    return Transformer(
        vocab_size=64, dim=32, n_layers=2, max_seq_len=64, tie_embeddings=True, norm=spec["norm"], position=Rotary,
        block=lambda d: spec["block"](d, attention=spec["attention"] or (lambda d: GroupedQueryAttention(d, n_heads=4)),
                                      ffn=spec["ffn"] or (lambda d: SwiGLU(d, hidden_dim=64)), norm=spec["norm"]),
    )


def test_the_families_cover_every_class_configs_models_use():
    used = set()
    for path in (CONFIGS / "models").rglob("*.yaml"):
        used |= {line.split("zoo.nn.")[1].strip() for line in path.read_text().splitlines() if "zoo.nn." in line}
    assert used <= COVERED, f"block classes without a graph-break test: {sorted(used - COVERED)}"


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_the_training_call_has_no_graph_break(family):
    torch._dynamo.reset()
    backbone = build(family).train()
    ids = torch.randint(0, 64, (2, 16))
    doc = torch.tensor([[0] * 8 + [1] * 8, [0] * 16])
    packed = (doc[:, :, None] == doc[:, None, :])[:, None]  # (B, 1, T, T): a packed batch's document mask
    for kwargs in ({"features_only": True}, {"mask": packed, "features_only": True}, {"mask": packed}):
        explained = torch._dynamo.explain(backbone)(ids, **kwargs)
        assert explained.graph_break_count == 0, (kwargs.keys(), explained.break_reasons)
        assert explained.graph_count == 1


def test_activation_checkpointing_keeps_one_graph():
    backbone = tiny_backbone().train()
    backbone.activation_checkpointing = True
    explained = torch._dynamo.explain(backbone)(torch.randint(0, 64, (2, 16)), features_only=True)
    assert explained.graph_break_count == 0 and explained.graph_count == 1, explained.break_reasons


def test_a_diffusion_call_with_positions_has_no_graph_break():
    backbone = tiny_backbone().train()
    ids = torch.randint(0, 64, (2, 32))
    positions = torch.arange(16).repeat(2)  # block diffusion: [noisy; clean] share positions
    explained = torch._dynamo.explain(backbone)(ids, positions=positions)
    assert explained.graph_break_count == 0, explained.break_reasons


def test_the_compiled_moe_mixture_equals_the_routed_one():
    ffn = RoutedFFN(32, n_experts=4, top_k=2, hidden_dim=16)
    x = torch.randn(2, 8, 32)
    flat = x.reshape(16, 32)
    weights, experts = ffn.router(flat).float().softmax(-1).topk(2, dim=-1)
    dense = ffn._dense(flat, weights / weights.sum(-1, keepdim=True), experts)
    torch.testing.assert_close(dense.view(2, 8, 32), ffn(x), rtol=1e-5, atol=1e-6)


# ---- through Lightning: fallback, no recompiles, checkpoints -------------------------------------------------------
class _Data(L.LightningDataModule):
    """7 training rows in batches of 2 (the last one shorter) and 3 validation rows in one batch."""

    def __init__(self):
        super().__init__()
        self.vocab_size, self.seq_len, self.batch_size = 64, 16, 2

    def _rows(self, n):
        ids = torch.randint(0, 64, (n, self.seq_len))
        return [{"input_ids": r, "labels": r} for r in ids]

    def train_dataloader(self):
        return torch.utils.data.DataLoader(self._rows(7), batch_size=2)

    def val_dataloader(self):
        return torch.utils.data.DataLoader(self._rows(3), batch_size=3)


def _fit(model, tmp_path, *, max_steps=8, ckpt_path=None, **kwargs):
    trainer = L.Trainer(
        max_steps=max_steps, logger=False, enable_progress_bar=False, enable_model_summary=False,
        default_root_dir=tmp_path, val_check_interval=4, check_val_every_n_epoch=None, num_sanity_val_steps=1,
        **kwargs,
    )
    trainer.fit(model, datamodule=_Data(), ckpt_path=ckpt_path)
    return trainer


def _fit_warned(model, tmp_path, **kwargs):
    """:func:`_fit`, and the torch.compile warnings it raised."""
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        trainer = _fit(model, tmp_path, **kwargs)
    return trainer, [str(w.message) for w in record if "torch.compile" in str(w.message)]


@pytest.fixture(params=["blocks", "model"])
def scope(request, monkeypatch):
    """Each test using it runs with `compile: true` compiling each block, then the whole backbone."""
    monkeypatch.setattr(compile_module, "SCOPE", request.param)
    return request.param


def test_blocks_of_one_class_share_one_graph_and_the_rest_runs_eager():
    counter = CompileCounter()
    torch._dynamo.reset()
    backbone = tiny_backbone(n_layers=3).train()
    compiled = compile_for_training(backbone, backend=counter, scope="blocks")
    assert compiled.regions == list(backbone.blocks)
    assert compiled_call(backbone) is compiled and compat.compiled_call_slot(backbone) is None  # embedding, norm: eager
    eager = tiny_backbone(n_layers=3).train()
    eager.load_state_dict(backbone.state_dict())
    ids = torch.randint(0, 64, (2, 16))
    torch.testing.assert_close(backbone(ids), eager(ids))
    assert counter.frame_count == 1  # three blocks, one graph: the cold compile is one block's
    assert compiled.signature[0][0][0] == (2, 16, backbone.dim) and compiled.eager_calls == 0


@pytest.mark.parametrize("recompute", [False, True], ids=["stored", "activation-checkpointing"])
def test_compiled_blocks_give_eager_gradients(recompute):
    """aot_eager traces forward and backward as inductor does, without a C++ build; with activation checkpointing
    the compiled block runs again in the backward pass."""
    torch.manual_seed(0)
    compiled, eager = tiny_backbone(n_layers=3).train(), tiny_backbone(n_layers=3).train()
    eager.load_state_dict(compiled.state_dict())
    for backbone in (compiled, eager):
        backbone.activation_checkpointing = recompute
    compile_for_training(compiled, backend="aot_eager", scope="blocks")
    ids = torch.randint(0, 64, (2, 16))
    for backbone in (compiled, eager):
        backbone(ids).float().logsumexp(-1).mean().backward()
    assert compiled_call(compiled).failure is None and compiled_call(compiled).signature is not None
    for (name, a), b in zip(compiled.named_parameters(), eager.parameters()):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-5, atol=1e-6, msg=name)


def test_a_backend_that_fails_falls_back_to_eager_with_one_warning(tmp_path, monkeypatch, scope):
    def broken(gm, example_inputs):
        raise RuntimeError("this backend cannot lower aten.fancy_op")

    torch._dynamo.reset()
    monkeypatch.setattr(compile_module, "BACKEND", broken)
    model = CausalLM(backbone=tiny_backbone(), compile=True)
    trainer, (message,) = _fit_warned(model, tmp_path, enable_checkpointing=False)
    assert trainer.global_step == 8  # the run went on, eager
    assert "training runs eager" in message and "aten.fancy_op" in message
    assert compiled_call(model.backbone) is None
    assert torch.isfinite(trainer.callback_metrics["train/loss"])


def test_no_cpp_compiler_falls_back_to_eager_with_one_warning(tmp_path):
    from torch._inductor import config

    model = CausalLM(backbone=tiny_backbone(), compile=True)
    with config.patch({"cpp.cxx": (None, "zoo-no-such-compiler")}):
        trainer, (message,) = _fit_warned(model, tmp_path, max_steps=2, enable_checkpointing=False)
    assert trainer.global_step == 2
    assert "C++ compiler" in message and "zoo-no-such-compiler" in message


def test_a_call_that_fails_on_its_own_raises_its_own_error(monkeypatch):
    backbone = tiny_backbone().train()
    compile_for_training(backbone, backend=CompileCounter())
    with pytest.raises(ValueError, match="exceeds max_seq_len=64"):  # eager's error, not a fallback warning
        backbone(torch.zeros(1, 65, dtype=torch.long))


def test_the_shorter_last_batch_and_validation_never_recompile(tmp_path, monkeypatch, scope):
    counter = CompileCounter()
    torch._dynamo.reset()
    monkeypatch.setattr(compile_module, "BACKEND", counter)
    model = CausalLM(backbone=tiny_backbone(), compile=True)
    trainer, messages = _fit_warned(model, tmp_path, enable_checkpointing=False)
    assert trainer.global_step == 8 and not messages
    assert counter.frame_count == 1  # one graph: no recompile for the batch of 1, none for validation's 3 rows
    assert compiled_call(model.backbone).eager_calls == 2  # the two epochs' last batches of one row
    rows = (2, 16) if scope == "model" else (2, 16, model.backbone.dim)  # the backbone's input, or a block's
    assert compiled_call(model.backbone).signature[0][0][0] == rows


def test_a_checkpoint_saved_compiled_loads_and_resumes_eager(tmp_path, monkeypatch, scope):
    torch._dynamo.reset()
    monkeypatch.setattr(compile_module, "BACKEND", CompileCounter())
    model = CausalLM(backbone=tiny_backbone(), compile=True)
    trainer = _fit(model, tmp_path / "a", max_steps=4)
    (path,) = (tmp_path / "a").rglob("*.ckpt")
    assert compiled_call(model.backbone) is not None
    saved = torch.load(path, weights_only=True)["state_dict"]
    assert not [k for k in saved if "_orig_mod" in k]
    assert set(saved) == set(CausalLM(backbone=tiny_backbone()).state_dict())
    eager = CausalLM.load_from_checkpoint(path, backbone=tiny_backbone(), compile=False)  # strict
    for name, value in model.state_dict().items():
        torch.testing.assert_close(eager.state_dict()[name], value)
    resumed = _fit(eager, tmp_path / "b", max_steps=6, ckpt_path=str(path), enable_checkpointing=False)
    assert resumed.global_step == 6 and compiled_call(eager.backbone) is None
    assert trainer.global_step == 4


@pytest.mark.slow
def test_inductor_trains_a_tiny_model_with_one_graph_and_eager_checkpoints(tmp_path):
    """The real compiler (a C++ build: tens of seconds): one graph, no recompile, the same losses as eager."""
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    torch.manual_seed(0)
    compiled = CausalLM(backbone=tiny_backbone(), compile=True)
    torch.manual_seed(0)
    eager = CausalLM(backbone=tiny_backbone())
    batch = {"input_ids": torch.randint(0, 64, (2, 16))}
    batch["labels"] = batch["input_ids"]
    compile_for_training(compiled.backbone)
    for model in (compiled, eager):
        model.train()
    for _ in range(3):
        losses = [model.loss(batch)[0] for model in (compiled, eager)]
        for loss in losses:
            loss.backward()
        torch.testing.assert_close(losses[0], losses[1], rtol=1e-4, atol=1e-4)
        for model in (compiled, eager):
            with torch.no_grad():
                for p in model.parameters():
                    p -= 0.1 * p.grad
                    p.grad = None
    short = {"input_ids": batch["input_ids"][:1], "labels": batch["labels"][:1]}
    compiled.loss(short)[0].backward()  # the last, shorter batch
    with torch.no_grad():
        compiled.eval()
        compiled.loss(batch)  # validation
    assert counters["stats"]["unique_graphs"] == 1 and not counters["recompiles"]
    assert compiled_call(compiled.backbone).eager_calls == 1
    assert set(compiled.state_dict()) == set(eager.state_dict())


# ---- compile: auto --------------------------------------------------------------------------------------------------
class _Trainer:
    def __init__(self, max_steps, precision="bf16-mixed", device="cpu"):
        self.max_steps, self.precision = max_steps, precision
        self.strategy = type("Strategy", (), {"root_device": torch.device(device)})()


def test_auto_compiles_only_runs_long_enough_to_repay_it(monkeypatch):
    table = {"bf16": {"small": (1_000_000, {}), "large": (50_000_000, {"blocks": 300, "model": 200})}}
    monkeypatch.setattr(compile_module, "PAYBACK_STEPS", table)
    monkeypatch.setattr(compile_module, "PAYBACK_FRACTION", 0.1)
    large, small = 40_000_000, 2_000_000
    assert resolve_compile("auto", trainer=_Trainer(2000), parameters=large)[0] == "model"  # the sooner repaid
    assert resolve_compile("auto", trainer=_Trainer(1999), parameters=large)[0] is None  # repaid after 10% of the run
    assert resolve_compile("auto", trainer=_Trainer(-1), parameters=large)[0] is None  # no length: not known to repay
    assert resolve_compile("auto", trainer=_Trainer(10**6), parameters=small)[0] is None  # nearest shape: no gain
    assert resolve_compile("auto", trainer=_Trainer(10**6, "32-true"), parameters=large)[0] is None  # not measured
    assert resolve_compile("auto", trainer=_Trainer(10**6), parameters=large, sharded=True)[0] is None
    assert resolve_compile("auto", trainer=_Trainer(10**6, device="cuda"), parameters=large)[0] is None  # unmeasured
    table["bf16"]["large"] = (50_000_000, {"blocks": 150, "model": 200})
    assert resolve_compile("auto", trainer=_Trainer(2000), parameters=large)[0] == "blocks"
    assert resolve_compile(True, trainer=_Trainer(1))[0] == "blocks"  # the default scope: the shortest compile
    assert resolve_compile("model", trainer=_Trainer(1))[0] == "model"
    assert resolve_compile(False, trainer=_Trainer(10**9))[0] is None
    with pytest.raises(ValueError, match="compile='yes' is not one of true, false, auto, blocks, model"):
        resolve_compile("yes")


def test_the_payback_table_holds_only_wins():
    """Every scope in the table repaid its compile (a positive number of steps); a shape whose every scope fell
    below MIN_SPEEDUP has none, so `auto` trains it eager."""
    for precision, shapes in compile_module.PAYBACK_STEPS.items():
        for shape, (parameters, paybacks) in shapes.items():
            assert parameters > 0 and set(paybacks) <= {"blocks", "model"}, (precision, shape)
            assert all(steps > 0 for steps in paybacks.values()), (precision, shape)


def test_configs_default_to_auto():
    for path in [CONFIGS / "quickstart.yaml", *sorted((CONFIGS / "recipes").glob("*.yaml"))]:
        model = yaml.safe_load(path.read_text())["model"]
        assert model["init_args"].get("compile") == "auto", path.name


@pytest.mark.parametrize("name, scope", [("quickstart.yaml", None), ("recipes/gpt-s-5m.yaml", "model"),
                                         ("recipes/supra-50m.yaml", "blocks"), ("recipes/dhara-70m-ar.yaml", None),
                                         ("recipes/smallcoder-303m.yaml", None)])
def test_auto_decides_each_config_from_the_measured_table(name, scope):
    """The quickstart's 600 steps would not repay a compile early (its wall time stays eager's); GPT-S-5M's 95,367
    bf16 steps repay the whole-backbone compile, Supra-50M's 38,147 the per-block one; at Dhara-70M and
    SmallCoder-303M compiling did not speed the step up, so their recipes train eager."""
    from zoo.commands.info import build

    config = yaml.safe_load((CONFIGS / name).read_text())
    trainer = _Trainer(config["trainer"]["max_steps"], "bf16-mixed")
    parameters = build([CONFIGS / name]).num_parameters(embeddings=False)
    assert resolve_compile("auto", trainer=trainer, parameters=parameters)[0] == scope
