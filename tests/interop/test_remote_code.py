"""Remote-code exports (``trust_remote_code=True``): every architecture zoo builds leaves zoo as a self-contained
transformers directory. The loading side always runs in a subprocess where ``import zoo`` fails, offline: the
exported logits equal zoo's (fp32, CPU), and ``generate`` equals zoo's own samplers token for token."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from unittest.mock import patch

import pytest
import torch
from torch.testing import assert_close

from tests.helpers import load_without_zoo, tiny_backbone
from zoo.generation import confidence_threshold, generate, low_confidence_remasking
from zoo.interop.remote_code import save_remote_code, zoo_config
from zoo.nn import (
    Canon,
    ExclusiveGroupedQueryAttention,
    GatedFFN,
    GeGLU,
    GeluMLP,
    GroupedQueryAttention,
    LayerNorm,
    LearnedPositions,
    NoPositions,
    ParallelBlock,
    PreNormBlock,
    RMSNorm,
    Rotary,
    RoutedFFN,
    SandwichBlock,
    Transformer,
)

ROOT = Path(__file__).resolve().parents[2]

# ---- every block variant, on random weights ----------------------------------------------------------------------
def _backbone(*, block=PreNormBlock, attention=None, ffn=None, norm=RMSNorm, position=Rotary, canon_a=None,
              canon_c=None, **kwargs) -> Transformer:  # fmt: skip
    """A 2-layer, width-32 backbone of any block type; ``kwargs`` go to the Transformer."""
    attention = attention or (lambda d: GroupedQueryAttention(d, n_heads=4, n_kv_heads=2))
    ffn = ffn or (lambda d: GatedFFN(d, hidden_dim=64))
    return Transformer(vocab_size=64, dim=32, n_layers=2, max_seq_len=64, norm=norm, position=position,
                       block=lambda d: block(d, attention=attention, ffn=ffn, norm=norm, canon_a=canon_a,
                                             canon_c=canon_c), **kwargs)  # fmt: skip


def _unit_rms(d: int) -> RMSNorm:
    return RMSNorm(d, eps=1e-6, unit_offset=True)


VARIANTS = {
    "llama-forced": tiny_backbone,  # a stock family, exported as remote code on request
    "exclusive-gqa": lambda: tiny_backbone(attention=lambda d: ExclusiveGroupedQueryAttention(d, n_heads=4,
                                                                                              n_kv_heads=2)),
    "canon-a-c": lambda: tiny_backbone(canon_a=Canon, canon_c=Canon),
    "canon-b-d": lambda: _backbone(
        attention=lambda d: GroupedQueryAttention(d, n_heads=4, n_kv_heads=1, canon=lambda c: Canon(c, kernel_size=3)),
        ffn=lambda d: GatedFFN(d, hidden_dim=48, activation="relu", canon=lambda c: Canon(c, residual=False)),
    ),
    "qk-norm-bias-mha": lambda: _backbone(
        attention=lambda d: GroupedQueryAttention(d, n_heads=4, bias=True, qk_norm=RMSNorm, head_dim=12)
    ),
    "parallel-partial-rotary-layernorm": lambda: _backbone(
        block=ParallelBlock, norm=LayerNorm, position=lambda *a: Rotary(*a, fraction=0.5, theta=500.0),
        ffn=lambda d: GeluMLP(d, hidden_dim=64, approximate="none"),
    ),
    "sandwich-gemma-style": lambda: _backbone(
        block=SandwichBlock, norm=_unit_rms, scale_embeddings=True,
        attention=lambda d: GroupedQueryAttention(d, n_heads=2, n_kv_heads=1, qk_norm=_unit_rms),
        ffn=lambda d: GeGLU(d, hidden_dim=64, approximate="tanh"),
    ),
    "moe": lambda: _backbone(ffn=lambda d: RoutedFFN(d, n_experts=4, top_k=2, hidden_dim=16, normalize_top_k=False)),
    "learned-positions-untied": lambda: _backbone(
        position=LearnedPositions, norm=lambda d: LayerNorm(d, bias=False), tie_embeddings=False,
        ffn=lambda d: GeluMLP(d, hidden_dim=64, approximate="tanh", bias=False),
    ),
    "no-positions-canon-a": lambda: _backbone(position=NoPositions, canon_a=lambda d: Canon(d, kernel_size=2)),
}
DIFFUSION = {  # bidirectional backbones with the mask token's id (and the AR shift)
    "diffusion": (False, lambda: tiny_backbone(attention=lambda d: GroupedQueryAttention(d, n_heads=4, n_kv_heads=2,
                                                                                         causal=False))),
    "diffusion-shift-canon": (True, lambda: tiny_backbone(canon_a=Canon, canon_c=Canon, attention=lambda d: (
        ExclusiveGroupedQueryAttention(d, n_heads=4, n_kv_heads=2, causal=False)))),
}
MASK_ID, EOS_ID = 63, 5
DIFFUSION_RUNS = {  # name -> (zoo sampler, its arguments); the export's generate gets the same
    "low_confidence": (low_confidence_remasking, {"gen_length": 16, "block_length": 8, "steps": 8}),
    "threshold": (confidence_threshold, {"gen_length": 16, "block_length": 4, "threshold": 0.3}),
    "sampled": (low_confidence_remasking, {"gen_length": 8, "block_length": 8, "steps": 4, "temperature": 0.7,
                                           "remasking": "random", "seed": 3}),
}  # fmt: skip


def _diffusion_kwargs(kwargs: dict) -> dict:
    renamed = {"gen_length": "max_new_tokens"}
    return {renamed.get(k, k): v for k, v in kwargs.items()}


def _spread(backbone: Transformer) -> Transformer:
    """Re-initialised with std 0.5: at GPT-2's 0.02 a random model's predictions barely depend on the context, so
    greedy decoding repeats one token and threshold decoding never unmasks two at once; here they do."""
    backbone.init_std = 0.5
    backbone.init_weights()
    return backbone.eval()


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """Each variant built, exported and loaded without zoo (one subprocess for all)."""
    tmp = tmp_path_factory.mktemp("sweep")
    ids = torch.randint(0, 64, (2, 12), generator=torch.Generator().manual_seed(1))
    prompt = torch.randint(0, 62, (1, 5), generator=torch.Generator().manual_seed(2))
    backbones, jobs = {}, {}
    for name, build in VARIANTS.items():
        torch.manual_seed(0)
        backbones[name] = _spread(build())
        save_remote_code(backbones[name], tmp / name, eos_id=EOS_ID)
        jobs[name] = {"dir": str(tmp / name), "ids": ids, "prompt": prompt,
                      "generate": {"greedy": {"max_new_tokens": 10, "do_sample": False}}}  # fmt: skip
    for name, (shift, build) in DIFFUSION.items():
        torch.manual_seed(0)
        backbones[name] = _spread(build())
        save_remote_code(backbones[name], tmp / name, eos_id=EOS_ID, mask_id=MASK_ID, shift=shift)
        runs = {run: _diffusion_kwargs(kwargs) for run, (_, kwargs) in DIFFUSION_RUNS.items()}
        jobs[name] = {"dir": str(tmp / name), "ids": ids, "prompt": prompt, "generate": runs}
    return backbones, {"ids": ids, "prompt": prompt}, load_without_zoo(jobs, tmp)


@pytest.mark.parametrize("name", [*VARIANTS, *DIFFUSION])
def test_every_variant_gives_zoos_logits_without_zoo(sweep, name):
    backbones, inputs, results = sweep
    assert results[name]["class"] == "ZooForCausalLM" and results[name]["module"].startswith("transformers_modules")
    with torch.no_grad():
        assert_close(results[name]["logits"], backbones[name](inputs["ids"]))


@pytest.mark.parametrize("name", list(VARIANTS))
def test_greedy_generate_equals_zoos_decoding(sweep, name):
    backbones, inputs, results = sweep
    zoo_tokens = generate(backbones[name], inputs["prompt"].tolist(), max_new_tokens=10, eos_id=EOS_ID).tokens[0]
    exported = results[name]["greedy"][0, inputs["prompt"].shape[1] :].tolist()
    assert exported == zoo_tokens and len(zoo_tokens) >= 1


@pytest.mark.parametrize("run", list(DIFFUSION_RUNS))
@pytest.mark.parametrize("name", list(DIFFUSION))
def test_diffusion_generate_equals_zoos_sampler(sweep, name, run):
    backbones, inputs, results = sweep
    sampler, kwargs = DIFFUSION_RUNS[run]
    kwargs = dict(kwargs)
    seed = kwargs.pop("seed", None)
    generator = torch.Generator().manual_seed(seed) if seed is not None else None
    zoo_out = sampler(backbones[name], inputs["prompt"], mask_id=MASK_ID, eos_id=EOS_ID, shift=DIFFUSION[name][0],
                      generator=generator, **kwargs)  # fmt: skip
    assert torch.equal(results[name][run], zoo_out.tokens)
    assert not (zoo_out.answer == MASK_ID).any() and len(set(zoo_out.answer.flatten().tolist())) > 1
    if run == "threshold":  # parallel decoding unmasked several tokens in some pass
        assert zoo_out.forward_passes < zoo_out.answer.numel()


def test_a_block_the_format_does_not_know_is_refused_by_name():
    class ScaledBlock(PreNormBlock):
        def forward(self, x, *, rope, mask, cache):
            return 2 * super().forward(x, rope=rope, mask=mask, cache=cache)

    backbone = _backbone(block=ScaledBlock)
    with pytest.raises(ValueError, match="blocks.0 is a ScaledBlock, which the remote-code export cannot express"):
        zoo_config(backbone)
    class CenteredRMSNorm(RMSNorm):
        def forward(self, x):
            return super().forward(x - x.mean(dim=-1, keepdim=True))

    with pytest.raises(ValueError, match="blocks.0.attention_norm is a CenteredRMSNorm.*knows RMSNorm and LayerNorm"):
        zoo_config(tiny_backbone(norm=CenteredRMSNorm))


@pytest.mark.parametrize("path", sorted(p.name for p in (ROOT / "configs" / "models").glob("*.yaml")))
def test_every_model_config_is_expressible_with_its_parameter_count(path):
    """Shapes only (meta device): each published model's YAML is described by the format, and the exported class
    holds exactly the backbone's parameters under the same names."""
    from zoo.commands.info import build
    from zoo.interop.hub_code.configuration_zoo import ZooConfig
    from zoo.interop.hub_code.modeling_zoo import ZooForCausalLM

    backbone = build([ROOT / "configs" / "models" / path])
    with torch.device("meta"):
        exported = ZooForCausalLM(ZooConfig(**zoo_config(backbone)))
    names = set(exported.state_dict()) - ({"head.weight"} if backbone.tie_embeddings else set())
    assert names == set(backbone.state_dict()) - ({"head.weight"} if backbone.tie_embeddings else set())
    shapes = {name: tuple(value.shape) for name, value in exported.state_dict().items()}
    assert shapes == {name: tuple(value.shape) for name, value in backbone.state_dict().items()}


# ---- checkpoints: the seeds' shapes, `python -m zoo fit` → export → load without zoo ----------------------------
FIT = [
    "--trainer.max_steps", "2", "--trainer.limit_val_batches", "0", "--trainer.logger", "false",
    "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
    "--model.schedule.init_args.warmup_steps", "1", "--data.tokenizer.init_args.vocab_size", "300",
    "--data.seq_len", "32", "--data.batch_size", "2", "--data.limit_files", "30", "--data.val_fraction", "0.2",
]  # fmt: skip
MINI = ["--model.backbone.vocab_size", "300", "--model.backbone.dim", "48", "--model.backbone.n_layers", "2",
        "--model.backbone.max_seq_len", "64", "--model.backbone.block.init_args.ffn.init_args.hidden_dim", "64"]
SEEDS = {
    # GPT-S-5M: exclusive GQA 6/2 heads, RoPE θ 2500
    "gpt-s-5m": ["--config", "configs/quickstart.yaml", "--model.backbone", "configs/models/gpt-s-5m.yaml", *MINI],
    # Dhara-70M, stage 1: GQA 8/4 with Canon at A and C
    "dhara-70m-ar": ["--config", "configs/quickstart.yaml", "--model.backbone", "configs/models/dhara-70m.yaml",
                     *MINI],
    # Dhara-70M, stage 2: stage 1 converted to masked diffusion (attention annealed to bidirectional, no shift), the
    # mask token reusing the end-of-text id as Dhara does; the fixture adds --model.init_from and --model.mask_id
    "dhara-70m-diffusion": [
        "--config", "configs/diffusion-quickstart.yaml", "--model.backbone", "configs/models/dhara-70m.yaml", *MINI,
        "--model.conversion.init_args.anneal_steps", "1", "--model.shift", "false",
    ],
}  # fmt: skip
PROMPT = "def parse(text):\n    return"


def _fit(root: Path, cache: Path, args: list[str]) -> Path:
    from zoo.commands.fit import ZooCLI

    run = ["fit", *args, *FIT, "--data.tokenizer.init_args.cache_dir", str(cache),
           "--trainer.default_root_dir", str(root)]  # fmt: skip
    with patch.object(sys, "argv", ["zoo"]):
        cwd = os.getcwd()
        os.chdir(ROOT)  # the configs' relative paths
        try:
            ZooCLI(args=run)
        finally:
            os.chdir(cwd)
    return next(root.rglob("last.ckpt"))


@pytest.fixture(scope="module")
def seeds(tmp_path_factory):
    """The three seed checkpoints at mini shape, exported (format auto), loaded in one process without zoo."""
    from zoo.commands.export import main

    tmp = tmp_path_factory.mktemp("seeds")
    cache = tmp / "tokenizer-cache"
    checkpoints, jobs = {}, {}
    for name, args in SEEDS.items():
        if name == "dhara-70m-diffusion":
            _, _, eos_id = _zoo(checkpoints["dhara-70m-ar"])
            args = [*args, "--model.init_from", str(checkpoints["dhara-70m-ar"]), "--model.mask_id", str(eos_id)]
        checkpoints[name] = _fit(tmp / name, cache, args)
        main(["--ckpt", str(checkpoints[name]), "--out", str(tmp / f"{name}-export")])
        ids = torch.randint(0, 300, (2, 20), generator=torch.Generator().manual_seed(0))
        job = {"dir": str(tmp / f"{name}-export"), "ids": ids, "text": PROMPT}
        if "diffusion" in name:
            job["generate"] = {"default": {}, "threshold": {"threshold": 0.5, "max_new_tokens": 16,
                                                            "block_length": 8}}  # fmt: skip
            job["bad_generate"] = {"num_beams": 2}
        else:
            job["generate"] = {"greedy": {"max_new_tokens": 12, "do_sample": False}}
        jobs[name] = job
    return checkpoints, jobs, load_without_zoo(_with_prompts(jobs, checkpoints), tmp)


def _with_prompts(jobs: dict, checkpoints: dict) -> dict:
    from zoo.data.tokenizer import tokenizer_from_checkpoint

    for name, job in jobs.items():
        tokenizer, _ = tokenizer_from_checkpoint(str(checkpoints[name]))
        job["prompt"] = torch.tensor([tokenizer.encode(PROMPT, add_special_tokens=False).ids])
    return jobs


def _zoo(checkpoint: Path):
    from zoo.data.tokenizer import tokenizer_from_checkpoint
    from zoo.objectives import LanguageModel

    tokenizer, eos = tokenizer_from_checkpoint(str(checkpoint))
    model = LanguageModel.from_checkpoint(str(checkpoint), map_location="cpu").eval()
    return model, tokenizer, tokenizer.token_to_id(eos)


@pytest.mark.parametrize("name", list(SEEDS))
def test_seed_exports_load_without_zoo_with_zoos_logits_and_tokenizer(seeds, name):
    checkpoints, jobs, results = seeds
    model, tokenizer, _ = _zoo(checkpoints[name])
    directory = Path(jobs[name]["dir"])
    codes = ("configuration_zoo.py", "modeling_zoo.py", "diffusion_zoo.py")
    assert {"config.json", *codes, "model.safetensors", "tokenizer.json",
            "generation_config.json"} <= {p.name for p in directory.iterdir()}  # fmt: skip
    for code in codes:
        imports = [line.split()[1] for line in (directory / code).read_text().splitlines()
                   if line.startswith(("import ", "from "))]  # fmt: skip
        assert {name.split(".")[0] for name in imports} <= {"__future__", "torch", "transformers", ""}, imports
    with torch.no_grad():
        assert_close(results[name]["logits"], model.backbone(jobs[name]["ids"]))
    assert results[name]["encoded"] == tokenizer.encode(PROMPT, add_special_tokens=False).ids


@pytest.mark.parametrize("name", ["gpt-s-5m", "dhara-70m-ar"])
def test_seed_exports_generate_zoos_greedy_tokens_and_run_the_pipeline(seeds, name):
    checkpoints, jobs, results = seeds
    model, _, eos_id = _zoo(checkpoints[name])
    prompt = jobs[name]["prompt"]
    zoo_tokens = generate(model.backbone, prompt.tolist(), max_new_tokens=12, eos_id=eos_id).tokens[0]
    assert results[name]["greedy"][0, prompt.shape[1] :].tolist() == zoo_tokens
    assert results[name]["pipeline"].startswith(PROMPT) and len(results[name]["pipeline"]) > len(PROMPT)
    assert results[name]["pipeline"] == results[name]["generated_text"]


def test_diffusion_export_samples_as_zoo_does_with_its_generation_config(seeds):
    import json

    checkpoints, jobs, results = seeds
    model, _, eos_id = _zoo(checkpoints["dhara-70m-diffusion"])
    directory = Path(jobs["dhara-70m-diffusion"]["dir"])
    settings = json.loads((directory / "generation_config.json").read_text())
    assert (settings["steps"], settings["block_length"], settings["max_new_tokens"]) == (32, 32, 32)  # context 64
    assert json.loads((directory / "config.json").read_text())["mask_token_id"] == model.mask_id == eos_id
    prompt = jobs["dhara-70m-diffusion"]["prompt"]
    common = {"mask_id": model.mask_id, "eos_id": eos_id, "shift": model.shift}
    default = low_confidence_remasking(model.backbone, prompt, gen_length=32, block_length=32, steps=32, **common)
    assert torch.equal(results["dhara-70m-diffusion"]["default"], default.tokens)
    fast = confidence_threshold(model.backbone, prompt, gen_length=16, block_length=8, threshold=0.5, **common)
    assert torch.equal(results["dhara-70m-diffusion"]["threshold"], fast.tokens)
    # transformers' pipeline runs the diffusion sampler; options it has no use for are refused, naming generate
    outcome = results["dhara-70m-diffusion"]
    assert outcome["pipeline"].startswith(PROMPT) and outcome["pipeline"] == outcome["generated_text"]
    assert "does not take ['num_beams']" in outcome["bad_generate_error"]
    assert "call model.generate(input_ids" in outcome["bad_generate_error"]


# ---- bad input: a clear error, and nothing half-written -----------------------------------------------------------
def _export(capsys, *argv) -> tuple[int, str]:
    from zoo.commands.export import main

    with pytest.raises(SystemExit) as exit_info:
        main([str(a) for a in argv])
    return exit_info.value.code, capsys.readouterr().err


def _leftovers(parent: Path) -> list[str]:
    return [p.name for p in parent.iterdir() if ".partial-" in p.name or ".old-" in p.name]


def test_not_a_zoo_checkpoint_is_refused(tmp_path, capsys):
    torch.save({"weights": torch.zeros(2)}, tmp_path / "foreign.ckpt")
    (tmp_path / "garbage.ckpt").write_bytes(b"not a checkpoint at all")
    for name in ("foreign.ckpt", "garbage.ckpt"):
        code, err = _export(capsys, "--ckpt", tmp_path / name, "--out", tmp_path / "out", "--format", "remote-code")
        assert code == 2 and name in err and "checkpoint" in err
    assert not (tmp_path / "out").exists() and not _leftovers(tmp_path)


def test_missing_tokenizer_is_refused_and_nothing_is_written(seeds, tmp_path, capsys):
    checkpoints, _, _ = seeds
    state = torch.load(checkpoints["gpt-s-5m"], map_location="cpu", weights_only=False)
    for value in state.values():
        if isinstance(value, dict):
            value.pop("tokenizer", None)
    torch.save(state, tmp_path / "no-tokenizer.ckpt")
    code, err = _export(capsys, "--ckpt", tmp_path / "no-tokenizer.ckpt", "--out", tmp_path / "out")
    assert code == 2 and "carries no tokenizer" in err
    assert not (tmp_path / "out").exists() and not _leftovers(tmp_path)


def test_an_existing_directory_is_replaced_only_with_overwrite(seeds, tmp_path, capsys):
    checkpoints, _, _ = seeds
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    code, err = _export(capsys, "--ckpt", checkpoints["gpt-s-5m"], "--out", out)
    assert code == 2 and "exists and is not empty" in err and "--overwrite" in err
    assert [p.name for p in out.iterdir()] == ["notes.txt"]
    from zoo.interop.export import export

    export(str(checkpoints["gpt-s-5m"]), str(out), overwrite=True)
    assert (out / "modeling_zoo.py").exists() and not (out / "notes.txt").exists() and not _leftovers(tmp_path)


def test_an_unknown_block_in_a_checkpoint_is_refused_by_name_before_writing(seeds, tmp_path, capsys, monkeypatch):
    checkpoints, _, _ = seeds
    monkeypatch.setenv("ZOO_TRUSTED_MODULES", __name__)  # the user vouches for their own block's module
    state = torch.load(checkpoints["gpt-s-5m"], map_location="cpu", weights_only=True)
    state["hyper_parameters"]["backbone"]["init_args"]["block"]["class_path"] = f"{__name__}.Pre"
    torch.save(state, tmp_path / "custom.ckpt")
    code, err = _export(capsys, "--ckpt", tmp_path / "custom.ckpt", "--out", tmp_path / "out")
    assert code == 2 and "blocks.0 is a Pre, which the remote-code export cannot express" in err
    code, err = _export(capsys, "--ckpt", checkpoints["gpt-s-5m"], "--out", tmp_path / "out", "--format", "hf")
    assert code == 2 and "ExclusiveGroupedQueryAttention" in err
    assert not (tmp_path / "out").exists() and not _leftovers(tmp_path)


class Pre(PreNormBlock):
    """A user's own block (here it computes what PreNormBlock does, but the export cannot know that)."""
