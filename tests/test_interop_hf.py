"""Parity with Hugging Face transformers' own modeling code, on random weights, in both directions."""

import pytest
import torch

transformers = pytest.importorskip("transformers")

from zoo.interop import from_hf, mapping_for, to_hf  # noqa: E402
from zoo.interop.hf import GPTNeoXMapping, Rule, backbone_from_config  # noqa: E402

SMALL = {"vocab_size": 100, "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
         "max_position_embeddings": 64}  # fmt: skip
ROPE = {"rope_type": "default", "rope_theta": 10000.0}

CONFIGS = {
    "llama": lambda: transformers.LlamaConfig(**SMALL, num_key_value_heads=2, intermediate_size=96,
                                              rope_parameters=ROPE, tie_word_embeddings=False),
    "llama-tied-bias": lambda: transformers.LlamaConfig(**SMALL, num_key_value_heads=1, intermediate_size=96,
                                                        rope_parameters=ROPE, tie_word_embeddings=True,
                                                        attention_bias=True),
    "qwen3": lambda: transformers.Qwen3Config(**SMALL, num_key_value_heads=2, head_dim=16, intermediate_size=96,
                                              rope_parameters={"rope_type": "default", "rope_theta": 1e6}),
    "gemma3": lambda: transformers.Gemma3TextConfig(
        **SMALL, num_key_value_heads=2, head_dim=16, intermediate_size=96, query_pre_attn_scalar=16,
        layer_types=["full_attention"] * 2, sliding_window=64,
        rope_parameters={"full_attention": dict(ROPE), "sliding_attention": dict(ROPE)},
    ),
    "mixtral": lambda: transformers.MixtralConfig(**SMALL, num_key_value_heads=2, intermediate_size=48,
                                                  num_local_experts=4, num_experts_per_tok=2, rope_parameters=ROPE),
    "qwen3_moe": lambda: transformers.Qwen3MoeConfig(
        **SMALL, num_key_value_heads=2, head_dim=16, intermediate_size=96, moe_intermediate_size=48,
        num_experts=4, num_experts_per_tok=2, norm_topk_prob=False, decoder_sparse_step=1, mlp_only_layers=[],
        rope_parameters=ROPE,
    ),
    "gpt2": lambda: transformers.GPT2Config(vocab_size=100, n_embd=64, n_layer=2, n_head=4, n_positions=64),
    "gpt_neox": lambda: transformers.GPTNeoXConfig(
        **SMALL, intermediate_size=256, rope_parameters={**ROPE, "partial_rotary_factor": 0.25},
    ),
}  # fmt: skip


def random_hf(name):
    config = CONFIGS[name]()
    config._attn_implementation = "eager"
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(config).float().eval()
    with torch.no_grad():
        for p in model.parameters():  # norms too, so a misplaced norm weight cannot pass
            p.normal_(0.0, 0.2)
    return model


def ids():
    return torch.randint(0, 100, (2, 12), generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_hf_to_zoo_logits_match(name):
    hf = random_hf(name)
    zoo = from_hf(hf).eval()
    with torch.no_grad():
        torch.testing.assert_close(zoo(ids()), hf(ids()).logits, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_zoo_to_hf_logits_match(name):
    zoo = backbone_from_config(CONFIGS[name]())
    with torch.no_grad():
        for p in zoo.parameters():
            p.normal_(0.0, 0.2)
    hf = to_hf(zoo)
    hf.config._attn_implementation = "eager"
    assert type(hf).__name__ == mapping_for(zoo).hf_class
    with torch.no_grad():
        torch.testing.assert_close(hf(ids()).logits, zoo.eval()(ids()), atol=1e-4, rtol=1e-4)


def test_a_wrong_qkv_layout_is_caught():
    """Negative control: reading GPT-NeoX's per-head interleaved q/k/v as if it were zoo's layout must fail."""

    class Naive(GPTNeoXMapping):
        def rules(self):
            return [Rule(r.zoo, r.hf, "copy") if r.kind == "neox_qkv" else r for r in super().rules()]

    hf = random_hf("gpt_neox")
    zoo = backbone_from_config(hf.config)
    Naive(zoo).load_hf(dict(hf.state_dict()))
    with torch.no_grad(), pytest.raises(AssertionError):
        torch.testing.assert_close(zoo.eval()(ids()), hf(ids()).logits, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize(
    ("swap", "message"),
    [
        ({"attention": "zoo.nn.ExclusiveGroupedQueryAttention"}, "ExclusiveGroupedQueryAttention"),
        ({"canon_a": "zoo.nn.Canon"}, "Canon layer"),
    ],
)
def test_blocks_transformers_cannot_express_are_named(swap, message):
    from zoo.nn import (
        Canon,
        ExclusiveGroupedQueryAttention,
        GroupedQueryAttention,
        PreNormBlock,
        RMSNorm,
        Rotary,
        SwiGLU,
        Transformer,
    )

    attention = ExclusiveGroupedQueryAttention if "attention" in swap else GroupedQueryAttention

    backbone = Transformer(
        vocab_size=100, dim=32, n_layers=2, max_seq_len=32, norm=RMSNorm, position=Rotary,
        block=lambda d: PreNormBlock(
            d, attention=lambda d: attention(d, n_heads=4),
            ffn=lambda d: SwiGLU(d, hidden_dim=64), norm=RMSNorm,
            canon_a=Canon if "canon_a" in swap else None,
        ),
    )  # fmt: skip
    with pytest.raises(ValueError, match=message):
        to_hf(backbone)


# ---- export and import of whole checkpoints ---------------------------------------------------------------------
@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A 2-step `python -m zoo fit` run of a tiny Llama-style model (in process)."""
    from tests.test_cli import TINY
    from zoo.cli import ZooCLI

    root = tmp_path_factory.mktemp("fit")
    swap = ["--data.tokenizer.init_args.cache_dir", str(root / "tok"), "--trainer.max_steps", "2"]
    ZooCLI(args=["fit", *TINY, *swap, "--trainer.default_root_dir", str(root), "--trainer.logger", "false"])
    return next(root.rglob("last.ckpt"))


def test_export_loads_in_transformers_with_equal_logits(checkpoint, tmp_path):
    from zoo.interop.export import export
    from zoo.objectives import LanguageModel

    directory = export(str(checkpoint), str(tmp_path / "hf"))
    hf = transformers.AutoModelForCausalLM.from_pretrained(directory).eval()
    zoo = LanguageModel.from_checkpoint(str(checkpoint), map_location="cpu").backbone.eval()
    tokens = torch.randint(0, 300, (2, 16), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        torch.testing.assert_close(hf(tokens).logits, zoo(tokens), atol=1e-4, rtol=1e-4)
    assert (directory / "model.safetensors").exists()


def test_exported_directory_runs_the_text_generation_pipeline(checkpoint, tmp_path):
    from zoo.interop.export import export

    directory = export(str(checkpoint), str(tmp_path / "hf"))
    generate = transformers.pipeline("text-generation", model=str(directory), device="cpu")
    out = generate("def parse(", max_new_tokens=8, do_sample=True, temperature=0.7, top_k=50, top_p=0.95)
    assert out[0]["generated_text"].startswith("def parse(") and len(out[0]["generated_text"]) > len("def parse(")


def test_export_refuses_a_block_transformers_lacks(checkpoint, tmp_path, capsys):
    from zoo.interop.export import main

    state = torch.load(checkpoint, map_location="cpu", weights_only=False)
    state["hyper_parameters"]["backbone"]["init_args"]["block"]["init_args"]["attention"]["class_path"] = (
        "zoo.nn.ExclusiveGroupedQueryAttention"
    )
    bad = tmp_path / "xgqa.ckpt"
    torch.save(state, bad)
    with pytest.raises(SystemExit) as exit_info:
        main(["--ckpt", str(bad), "--out", str(tmp_path / "out")])
    assert exit_info.value.code == 2 and "ExclusiveGroupedQueryAttention" in capsys.readouterr().err


def test_import_from_a_transformers_directory_and_from_yaml(tmp_path):
    from jsonargparse import ArgumentParser

    from zoo.interop import HFPretrained, load_hf_pretrained
    from zoo.nn import Transformer

    hf = random_hf("qwen3")
    hf.save_pretrained(tmp_path / "qwen3")
    zoo = load_hf_pretrained(str(tmp_path / "qwen3")).eval()
    with torch.no_grad():
        torch.testing.assert_close(zoo(ids()), hf(ids()).logits, atol=1e-4, rtol=1e-4)

    parser = ArgumentParser()
    parser.add_argument("--backbone", type=Transformer)
    config = parser.parse_args(["--backbone", "zoo.interop.HFPretrained", "--backbone.path", str(tmp_path / "qwen3")])
    built = parser.instantiate(config).backbone
    assert isinstance(built, HFPretrained)
    with torch.no_grad():
        torch.testing.assert_close(built.eval()(ids()), hf(ids()).logits, atol=1e-4, rtol=1e-4)
