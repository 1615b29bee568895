"""Parity with Hugging Face transformers' own modeling code, on random weights, in both directions; export to
and import from transformers directories; refusals of what transformers cannot express."""

from pathlib import Path

import pytest
import torch

transformers = pytest.importorskip("transformers")

from tests.helpers import tiny_fit  # noqa: E402
from zoo.interop import backbone_from_config, from_hf, hf_config_for, mapping_for, to_hf  # noqa: E402
from zoo.interop.mappings import GPTNeoXMapping, LlamaMapping, Rule  # noqa: E402

SMALL = {"vocab_size": 100, "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
         "max_position_embeddings": 64}  # fmt: skip
ROOT = Path(__file__).resolve().parents[2]
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
    "gpt_neox-tied-nobias": lambda: transformers.GPTNeoXConfig(
        **SMALL, intermediate_size=128, attention_bias=False, tie_word_embeddings=True,
        rope_parameters={**ROPE, "partial_rotary_factor": 0.5},
    ),
}  # fmt: skip

HF_CLASS = {"llama": "LlamaForCausalLM", "llama-tied-bias": "LlamaForCausalLM", "qwen3": "Qwen3ForCausalLM",
            "gemma3": "Gemma3ForCausalLM", "mixtral": "MixtralForCausalLM", "qwen3_moe": "Qwen3MoeForCausalLM",
            "gpt2": "GPT2LMHeadModel", "gpt_neox": "GPTNeoXForCausalLM",
            "gpt_neox-tied-nobias": "GPTNeoXForCausalLM"}  # fmt: skip


def random_hf(name):
    config = CONFIGS[name]()
    config._attn_implementation = "eager"
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(config).float().eval()
    with torch.no_grad():
        for p in model.parameters():  # norms too, so a misplaced norm weight cannot pass
            p.normal_(0.0, 0.2)
    return model


def ids(vocab=100):
    return torch.randint(0, vocab, (2, 12), generator=torch.Generator().manual_seed(1))


def assert_same_logits(zoo, hf, tokens=None):
    tokens = ids() if tokens is None else tokens
    with torch.no_grad():
        torch.testing.assert_close(zoo.eval()(tokens), hf.eval()(tokens).logits, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_hf_to_zoo_logits_match(name):
    hf = random_hf(name)
    zoo = from_hf(hf)
    assert type(mapping_for(zoo)).hf_class == HF_CLASS[name]  # recognised from the architecture alone
    assert_same_logits(zoo, hf)


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_zoo_to_hf_logits_match(name):
    zoo = backbone_from_config(CONFIGS[name]())
    with torch.no_grad():
        for p in zoo.parameters():
            p.normal_(0.0, 0.2)
    hf = to_hf(zoo)
    hf.config._attn_implementation = "eager"
    assert type(hf).__name__ == HF_CLASS[name]
    assert hf.config.model_type == CONFIGS[name]().model_type
    assert_same_logits(zoo, hf)


class InterleavedRopeLlama(LlamaMapping):
    """Wrong on purpose: reads q/k rows as if each head's rotation pairs were adjacent (Meta's original layout)."""

    def load_hf(self, hf_state):
        super().load_hf(hf_state)
        attn = self.backbone.blocks[0].attention
        D = attn.head_dim
        per_head = torch.stack([torch.arange(D // 2), torch.arange(D // 2) + D // 2], dim=-1).flatten()
        rows = attn.q_size + attn.kv_size  # q and k heads, not v
        order = (torch.arange(rows // D)[:, None] * D + per_head).flatten()
        with torch.no_grad():
            for block in self.backbone.blocks:
                block.attention.qkv.weight[:rows] = block.attention.qkv.weight[:rows][order].clone()


class NaiveNeoX(GPTNeoXMapping):
    """Wrong on purpose: reads GPT-NeoX's per-head interleaved q/k/v as if it were zoo's (q | k | v) layout."""

    def rules(self):
        return [Rule(r.zoo, r.hf, "copy") if r.kind == "neox_qkv" else r for r in super().rules()]


@pytest.mark.parametrize(("name", "wrong"), [("gpt_neox", NaiveNeoX), ("llama", InterleavedRopeLlama)])
def test_a_wrong_layout_is_caught(name, wrong):
    """Negative controls: the parity check above fails when a layout is read wrongly."""
    hf = random_hf(name)
    zoo = backbone_from_config(hf.config)
    wrong(zoo).load_hf(dict(hf.state_dict()))
    with pytest.raises(AssertionError):
        assert_same_logits(zoo, hf)


def _backbone(*, attention="GroupedQueryAttention", canon=False, causal=True, ffn_norm_eps=1e-5, moe_bias=False):
    from zoo import nn as znn

    def ffn(d):
        if moe_bias:
            return znn.RoutedFFN(d, n_experts=4, top_k=2, hidden_dim=32)
        return znn.SwiGLU(d, hidden_dim=64)

    def block(d):
        b = znn.PreNormBlock(
            d, attention=lambda d: getattr(znn, attention)(d, n_heads=4, causal=causal, bias=moe_bias), ffn=ffn,
            norm=znn.RMSNorm, canon_a=znn.Canon if canon else None,
        )  # fmt: skip
        b.ffn_norm.eps = ffn_norm_eps
        return b

    return znn.Transformer(vocab_size=100, dim=32, n_layers=2, max_seq_len=32, norm=znn.RMSNorm,
                           position=znn.Rotary, block=block)  # fmt: skip


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"attention": "ExclusiveGroupedQueryAttention"}, "blocks.0.attention is ExclusiveGroupedQueryAttention"),
        ({"canon": True}, "blocks.0.canon_a is a Canon layer"),
        ({"causal": False}, "bidirectional"),
        ({"ffn_norm_eps": 1e-6}, "blocks.0.ffn_norm is"),
        ({"moe_bias": True}, "Mixtral .* no attention biases"),
    ],
)
def test_architectures_transformers_cannot_express_are_named(kwargs, message):
    backbone = _backbone(**kwargs)
    for convert in (to_hf, hf_config_for):
        with pytest.raises(ValueError, match=message):
            convert(backbone)


@pytest.mark.parametrize(
    ("name", "change", "message"),
    [
        ("llama", {"rope_parameters": {"rope_type": "linear", "rope_theta": 1e4, "factor": 2.0}}, "rope_type='linear'"),
        ("gemma3", {"layer_types": ["sliding_attention", "full_attention"], "sliding_window": 8}, "sliding_window=8"),
        ("gemma3", {"final_logit_softcapping": 30.0}, "final_logit_softcapping=30.0"),
        ("gpt2", {"activation_function": "relu"}, "activation_function='relu'"),
    ],
)
def test_configs_zoo_would_compute_differently_are_refused(name, change, message):
    config = CONFIGS[name]()
    for key, value in change.items():
        setattr(config, key, value)
    with pytest.raises(ValueError, match=message):
        backbone_from_config(config)


def test_unknown_model_type_is_refused():
    with pytest.raises(ValueError, match="model_type='bert'.*supported: llama"):
        backbone_from_config(transformers.BertConfig())


# ---- export and import of whole checkpoints ---------------------------------------------------------------------
@pytest.fixture(scope="module")
def tokenizer_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("tok")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, tokenizer_cache):
    """A tiny Llama-style model trained for 2 steps."""
    return tiny_fit(tmp_path_factory.mktemp("fit"), tokenizer_cache)


def test_export_loads_in_transformers_with_equal_logits(checkpoint, tmp_path):
    from zoo.commands.export import main
    from zoo.objectives import LanguageModel

    main(["--ckpt", str(checkpoint), "--out", str(tmp_path / "hf")])
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf")
    zoo = LanguageModel.from_checkpoint(str(checkpoint), map_location="cpu").backbone
    assert type(hf).__name__ == "LlamaForCausalLM" and (tmp_path / "hf" / "model.safetensors").exists()
    assert_same_logits(zoo, hf, ids(300))


def test_exported_directory_runs_the_text_generation_pipeline(checkpoint, tmp_path):
    from zoo.interop.export import export

    directory = export(str(checkpoint), str(tmp_path / "hf"))
    tokenizer = transformers.AutoTokenizer.from_pretrained(directory)
    assert tokenizer.eos_token_id == transformers.GenerationConfig.from_pretrained(directory).eos_token_id
    generate = transformers.pipeline("text-generation", model=str(directory), device="cpu")
    out = generate("def parse(", max_new_tokens=8, do_sample=True, top_k=50)
    assert out[0]["generated_text"].startswith("def parse(") and len(out[0]["generated_text"]) > len("def parse(")



@pytest.mark.parametrize("format", ["hf", "remote-code"])
def test_export_files_are_ordinary_and_generation_has_a_length_limit(checkpoint, tmp_path, format):
    import json

    from zoo.interop.export import export
    from zoo.objectives import LanguageModel

    directory = export(str(checkpoint), str(tmp_path / format), format=format)
    modes = {p.name: p.stat().st_mode & 0o777 for p in directory.iterdir() if p.is_file()}
    assert modes["model.safetensors"] == modes["README.md"] and modes["README.md"] & 0o044  # readable by others
    assert len(set(modes.values())) == 1, modes
    limit = json.loads((directory / "generation_config.json").read_text()).get("max_length")
    assert limit == LanguageModel.from_checkpoint(str(checkpoint), map_location="cpu").backbone.max_seq_len

def test_export_writes_the_requested_dtype(checkpoint, tmp_path):
    from safetensors import safe_open

    from zoo.interop.export import export

    directory = export(str(checkpoint), str(tmp_path / "hf"), dtype=torch.bfloat16)
    with safe_open(directory / "model.safetensors", framework="pt") as weights:
        assert {weights.get_tensor(name).dtype for name in weights.keys()} == {torch.bfloat16}
    hf = transformers.AutoModelForCausalLM.from_pretrained(directory, dtype="auto")
    assert hf.dtype == torch.bfloat16


def test_export_refuses_a_block_transformers_lacks(checkpoint, tmp_path, capsys):
    from zoo.commands.export import main

    state = torch.load(checkpoint, map_location="cpu", weights_only=False)
    state["hyper_parameters"]["backbone"]["init_args"]["block"]["init_args"]["attention"]["class_path"] = (
        "zoo.nn.ExclusiveGroupedQueryAttention"
    )
    bad = tmp_path / "xgqa.ckpt"
    torch.save(state, bad)
    with pytest.raises(SystemExit) as exit_info:
        main(["--ckpt", str(bad), "--out", str(tmp_path / "out"), "--format", "hf"])
    assert exit_info.value.code == 2 and "ExclusiveGroupedQueryAttention" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()  # refused before anything is written


def test_export_without_a_checkpoint_exits_2(tmp_path, capsys):
    from zoo.commands.export import main

    with pytest.raises(SystemExit) as exit_info:
        main(["--ckpt", str(tmp_path / "missing.ckpt"), "--out", str(tmp_path / "out")])
    assert exit_info.value.code == 2 and "missing.ckpt is not a file" in capsys.readouterr().err


def test_import_from_a_transformers_directory_and_from_yaml(tmp_path):
    from jsonargparse import ArgumentParser

    from zoo.interop import HFPretrained, load_hf_pretrained
    from zoo.nn import Transformer

    hf = random_hf("qwen3")
    hf.save_pretrained(tmp_path / "qwen3")
    assert_same_logits(load_hf_pretrained(str(tmp_path / "qwen3")), hf)

    parser = ArgumentParser()
    parser.add_argument("--backbone", type=Transformer)
    config = parser.parse_args(["--backbone", "zoo.interop.HFPretrained", "--backbone.path", str(tmp_path / "qwen3")])
    built = parser.instantiate(config).backbone
    assert isinstance(built, HFPretrained)
    assert_same_logits(built, hf)


def test_a_run_started_from_a_transformers_directory_reloads(tmp_path, tokenizer_cache):
    """fit from `backbone: zoo.interop.HFPretrained`, then the checkpoint reloads with the trained weights."""
    from zoo.interop import HFPretrained
    from zoo.objectives import LanguageModel

    config = transformers.Qwen3Config(vocab_size=300, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                      num_key_value_heads=2, head_dim=8, intermediate_size=64,
                                      max_position_embeddings=64)  # fmt: skip
    torch.manual_seed(0)
    transformers.AutoModelForCausalLM.from_config(config).save_pretrained(tmp_path / "qwen3")
    start = HFPretrained(path=str(tmp_path / "qwen3"))
    ckpt = tiny_fit(tmp_path / "run", tokenizer_cache, "--model.backbone", "zoo.interop.HFPretrained",
                    "--model.backbone.path", str(tmp_path / "qwen3"))  # fmt: skip

    reloaded = LanguageModel.from_checkpoint(str(ckpt), map_location="cpu").backbone
    assert isinstance(reloaded, HFPretrained) and reloaded.dim == 32
    trained = torch.load(ckpt, map_location="cpu", weights_only=False)["state_dict"]
    for name, value in reloaded.state_dict().items():
        torch.testing.assert_close(value, trained[f"backbone.{name}"])
    assert not torch.equal(reloaded.blocks[0].attention.qkv.weight, start.blocks[0].attention.qkv.weight)


@pytest.mark.parametrize("path", sorted(p.name for p in (ROOT / "configs" / "models").glob("*.yaml")))
def test_every_model_config_exports_with_its_parameter_count_or_is_refused_by_name(path):
    """Shapes only (meta device): each published model's YAML maps to a transformers class of the same size, or
    names the block transformers lacks."""
    from zoo.commands.info import build

    backbone = build([ROOT / "configs" / "models" / path])
    try:
        mapping = mapping_for(backbone)
    except ValueError as err:
        assert "Canon layer" in str(err) or "ExclusiveGroupedQueryAttention" in str(err)
        return
    with torch.device("meta"):
        hf = getattr(transformers, mapping.hf_class)(mapping.config())
    assert sum(p.numel() for p in hf.parameters()) == sum(p.numel() for p in backbone.parameters())
    assert set(mapping.to_hf()) | {"lm_head.weight"} == set(hf.state_dict()) | {"lm_head.weight"}
