"""The models of ``train_throughput.py``'s sides at its shapes: zoo's Llama-style backbone (or a seed's own
config), HF transformers' ``LlamaForCausalLM`` and LitGPT's ``GPT``, each with its loss as its own training code
computes it. Imported by the benchmark's workers, LitGPT's in its own environment, so nothing heavy is imported
here at module level."""

from __future__ import annotations

import json
from pathlib import Path

# name: (layers, dim, q heads, kv heads, ffn hidden, vocab, rope theta)
SHAPES = {
    "gpt-s-5m": (9, 192, 6, 2, 672, 4096, 2500.0),
    "supra-50m": (12, 512, 8, 4, 1408, 32000, 10000.0),
    "gpt2-124m": (12, 768, 12, 12, 2048, 50257, 10000.0),
    "quickstart": (6, 192, 6, 2, 512, 4096, 10000.0),  # configs/quickstart.yaml (batch 8 × 256)
    "tiny": (2, 64, 4, 2, 128, 256, 10000.0),  # --smoke
}
# zoo's own blocks, built from the seed's backbone config as `zoo fit` builds it (Dhara-70M's Canon layers,
# SmallCoder-303M's untied head): zoo's sides only, as the peers have no such block. The tuple above is read from
# the config for the roofline's matrix products (a Canon layer's depthwise convolution is not one of them).
CONFIG_SHAPES = {"dhara-70m": "configs/models/dhara-70m.yaml", "smallcoder-303m": "configs/models/smallcoder-303m.yaml"}
ROOT = Path(__file__).resolve().parents[1]


def _config_shape(path: str) -> tuple:
    import yaml

    top = yaml.safe_load((ROOT / path).read_text())["init_args"]
    block = top["block"]["init_args"]
    attention, ffn = block["attention"]["init_args"], block["ffn"]["init_args"]
    theta = top["position"].get("init_args", {}).get("theta", 10000.0)
    return (top["n_layers"], top["dim"], attention["n_heads"], attention.get("n_kv_heads", attention["n_heads"]),
            ffn["hidden_dim"], top["vocab_size"], float(theta))


SHAPES.update({name: _config_shape(path) for name, path in CONFIG_SHAPES.items()})


def build_zoo(shape, seq_len, config: str | None = None):
    from zoo.nn import GroupedQueryAttention, PreNormBlock, RMSNorm, Rotary, SwiGLU, Transformer
    from zoo.objectives import CausalLM

    if config is not None:  # the seed's own backbone config, parsed and built as `zoo fit` builds it
        import yaml

        from zoo.training.run_config import instantiate_section, parse_run_config

        backbone = json.dumps(yaml.safe_load((ROOT / config).read_text()))
        parser, parsed = parse_run_config(
            ["--model.backbone", backbone, "--model.backbone.init_args.max_seq_len", str(seq_len)],
            defaults={"model": {"class_path": "zoo.objectives.CausalLM"}}, optional=("data",))
        model = instantiate_section(parser, parsed, "model")
        return model, lambda batch: model.loss(batch)[0]
    layers, dim, heads, kv, hidden, vocab, theta = shape
    backbone = Transformer(
        vocab_size=vocab, dim=dim, n_layers=layers, max_seq_len=seq_len,
        block=lambda d: PreNormBlock(
            d, attention=lambda d: GroupedQueryAttention(d, n_heads=heads, n_kv_heads=kv),
            ffn=lambda d: SwiGLU(d, hidden_dim=hidden), norm=lambda d: RMSNorm(d, eps=1e-5),
        ),
        norm=lambda d: RMSNorm(d, eps=1e-5), position=lambda *a: Rotary(*a, theta=theta), tie_embeddings=True,
    )
    model = CausalLM(backbone=backbone)
    return model, lambda batch: model.loss(batch)[0]


def build_hf(shape, seq_len):
    from transformers import LlamaConfig, LlamaForCausalLM

    layers, dim, heads, kv, hidden, vocab, theta = shape
    config = LlamaConfig(
        vocab_size=vocab, hidden_size=dim, intermediate_size=hidden, num_hidden_layers=layers,
        num_attention_heads=heads, num_key_value_heads=kv, max_position_embeddings=seq_len, rms_norm_eps=1e-5,
        rope_theta=theta, tie_word_embeddings=True, attention_bias=False, mlp_bias=False,
    )
    config._attn_implementation = "sdpa"
    model = LlamaForCausalLM(config)
    return model, lambda batch: model(input_ids=batch["input_ids"], labels=batch["labels"]).loss


def build_litgpt(shape, seq_len):
    from litgpt.config import Config
    from litgpt.model import GPT
    from litgpt.utils import chunked_cross_entropy

    layers, dim, heads, kv, hidden, vocab, theta = shape
    config = Config(
        block_size=seq_len, n_layer=layers, n_embd=dim, n_head=heads, n_query_groups=kv, head_size=dim // heads,
        vocab_size=vocab, padded_vocab_size=vocab, norm_class_name="RMSNorm", norm_eps=1e-5, bias=False,
        parallel_residual=False, mlp_class_name="LLaMAMLP", intermediate_size=hidden, rotary_percentage=1.0,
        rope_base=int(theta),
    )
    model = GPT(config)
    model.lm_head.weight = model.transformer.wte.weight  # tied, as on the other sides

    def loss(batch):
        ids = batch["input_ids"]
        return chunked_cross_entropy(model(ids[:, :-1]), ids[:, 1:])

    return model, loss
