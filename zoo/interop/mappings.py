"""The per-family tables: how each transformers family names zoo's parameters and describes its architecture.

Each family is one :class:`Mapping`; the same table of parameter names converts in both directions (and the
parity tests use it). Layouts that differ: zoo fuses q/k/v in one matrix (rows: all query heads, then keys, then
values), GPT-NeoX interleaves them per head; zoo fuses gate/up (gate rows first) where Llama keeps two matrices;
GPT-2 stores ``Conv1D`` weights transposed. Which family fits a backbone is decided in :mod:`zoo.interop.hf`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from zoo.nn import (
    Transformer,
)


@dataclass
class Rule:
    """One zoo parameter and the transformers parameter(s) it corresponds to.

    ``kind``: ``copy``; ``cat`` (zoo's tensor is the transformers tensors stacked along dim 0, sizes ``sizes``:
    q/k/v or gate/up); ``t`` (transposed: GPT-2's Conv1D); ``neox_qkv`` (GPT-NeoX's per-head interleaved q/k/v,
    ``heads`` heads).
    """

    zoo: str
    hf: tuple[str, ...]
    kind: str = "copy"
    sizes: tuple[int, ...] = ()
    heads: int = 0


class Mapping:
    """How one transformers family names zoo's parameters, and how its config describes zoo's architecture."""

    hf_class: str  # the transformers model class, e.g. "LlamaForCausalLM"
    head_key = "lm_head.weight"  # transformers' name of the (possibly tied) output head

    def __init__(self, backbone: Transformer) -> None:
        self.backbone = backbone

    def rules(self) -> list[Rule]:
        raise NotImplementedError

    def config(self):
        """The transformers config of the backbone's architecture."""
        raise NotImplementedError

    def _covered(self, rules: list[Rule]) -> None:
        uncovered = set(self.backbone.state_dict()) - {rule.zoo for rule in rules}
        if self.backbone.tie_embeddings:
            uncovered.discard("head.weight")
        if uncovered:
            raise ValueError(
                f"zoo parameters {sorted(uncovered)} have no place in {self.hf_class}: the architecture has a "
                "module this transformers family lacks (keep the model in zoo's own checkpoint format)"
            )

    def to_hf(self) -> dict[str, Tensor]:
        """transformers state dict of the zoo backbone."""
        rules, state = self.rules(), self.backbone.state_dict()
        self._covered(rules)
        out: dict[str, Tensor] = {}
        for rule in rules:
            value = state[rule.zoo]
            if rule.kind == "copy":
                out[rule.hf[0]] = value
            elif rule.kind == "t":
                out[rule.hf[0]] = value.t().contiguous()
            elif rule.kind == "cat":
                for name, part in zip(rule.hf, value.split(rule.sizes, dim=0), strict=True):
                    out[name] = part.contiguous()
            elif rule.kind == "neox_qkv":  # (q heads | k heads | v heads) -> per head (q, k, v)
                three = value.unflatten(0, (3, rule.heads, -1))  # (3, H, D, ...)
                out[rule.hf[0]] = three.transpose(0, 1).reshape(value.shape).contiguous()
            else:  # pragma: no cover - the rule tables are fixed
                raise AssertionError(rule.kind)
        return out

    def load_hf(self, hf_state: dict[str, Tensor]) -> None:
        """Copy a transformers state dict into the zoo backbone; every tensor on either side must be placed."""
        rules = self.rules()
        self._covered(rules)
        used = {name for rule in rules for name in rule.hf} | {self.head_key}  # the head: tied or placed
        unused = [name for name in hf_state if name not in used]
        if unused:
            raise ValueError(f"{self.hf_class} tensors {unused} have no place in the zoo backbone")
        state = {}
        for rule in rules:
            tensors = [hf_state[name] for name in rule.hf]
            if rule.kind == "copy":
                state[rule.zoo] = tensors[0]
            elif rule.kind == "t":
                state[rule.zoo] = tensors[0].t()
            elif rule.kind == "cat":
                state[rule.zoo] = torch.cat(tensors, dim=0)
            elif rule.kind == "neox_qkv":  # per head (q, k, v) -> (q heads | k heads | v heads)
                value = tensors[0]
                state[rule.zoo] = value.unflatten(0, (rule.heads, 3, -1)).transpose(0, 1).reshape(value.shape)
        self.backbone.load_state_dict(state, strict=not self.backbone.tie_embeddings)


def _biases(prefix_zoo: str, prefix_hf: str, module: nn.Linear, kind: str = "copy", **extra) -> list[Rule]:
    """The weight rule of a Linear, plus its bias rule when it has one (biases are never transposed)."""
    weight = Rule(f"{prefix_zoo}.weight", (f"{prefix_hf}.weight",), kind, **extra)
    if module.bias is None:
        return [weight]
    return [weight, Rule(f"{prefix_zoo}.bias", (f"{prefix_hf}.bias",), "copy" if kind == "t" else kind, **extra)]


class LlamaMapping(Mapping):
    """Llama and its relatives sharing transformers' ``model.layers.N.self_attn/mlp`` names."""

    hf_class = "LlamaForCausalLM"
    qk_norm = False  # Qwen3: per-head RMSNorm on queries and keys
    sandwich = False  # Gemma 3: four norms per layer

    def layer_rules(self, i: int, block) -> list[Rule]:
        attn, p, a = block.attention, f"model.layers.{i}", f"blocks.{i}.attention"
        sizes = (attn.q_size, attn.kv_size, attn.kv_size)
        rules = [
            Rule(f"blocks.{i}.attention_norm.weight", (f"{p}.input_layernorm.weight",)),
            Rule(f"{a}.qkv.weight", tuple(f"{p}.self_attn.{x}_proj.weight" for x in "qkv"), "cat", sizes),
            *_biases(f"{a}.out", f"{p}.self_attn.o_proj", attn.out),
        ]
        if attn.qkv.bias is not None:
            rules.append(Rule(f"{a}.qkv.bias", tuple(f"{p}.self_attn.{x}_proj.bias" for x in "qkv"), "cat", sizes))
        if self.qk_norm:
            rules += [Rule(f"{a}.{x}_norm.weight", (f"{p}.self_attn.{x}_norm.weight",)) for x in "qk"]
        if self.sandwich:
            rules += [
                Rule(f"blocks.{i}.post_attention_norm.weight", (f"{p}.post_attention_layernorm.weight",)),
                Rule(f"blocks.{i}.ffn_norm.weight", (f"{p}.pre_feedforward_layernorm.weight",)),
                Rule(f"blocks.{i}.post_ffn_norm.weight", (f"{p}.post_feedforward_layernorm.weight",)),
            ]
        else:
            rules.append(Rule(f"blocks.{i}.ffn_norm.weight", (f"{p}.post_attention_layernorm.weight",)))
        return rules + self.ffn_rules(i, block)

    def ffn_rules(self, i: int, block) -> list[Rule]:
        f, p, h = f"blocks.{i}.ffn", f"model.layers.{i}.mlp", block.ffn.hidden_dim
        return [
            Rule(f"{f}.gate_up.weight", (f"{p}.gate_proj.weight", f"{p}.up_proj.weight"), "cat", (h, h)),
            Rule(f"{f}.down.weight", (f"{p}.down_proj.weight",)),
        ]

    def rules(self) -> list[Rule]:
        b = self.backbone
        rules = [Rule("embed.weight", ("model.embed_tokens.weight",)), Rule("norm.weight", ("model.norm.weight",))]
        if not b.tie_embeddings:
            rules.append(Rule("head.weight", (self.head_key,)))
        for i, block in enumerate(b.blocks):
            rules += self.layer_rules(i, block)
        return rules

    def config_kwargs(self) -> dict:
        b = self.backbone
        attn, ffn = b.blocks[0].attention, b.blocks[0].ffn
        return {
            "vocab_size": b.vocab_size,
            "hidden_size": b.dim,
            "num_hidden_layers": b.n_layers,
            "num_attention_heads": attn.n_heads,
            "num_key_value_heads": attn.n_kv_heads,
            "head_dim": attn.head_dim,
            "intermediate_size": ffn.hidden_dim,
            "max_position_embeddings": b.max_seq_len,
            "rms_norm_eps": b.norm.eps,
            "tie_word_embeddings": b.tie_embeddings,
            "rope_parameters": {"rope_type": "default", "rope_theta": b.position.theta},
            "attention_bias": attn.qkv.bias is not None,
        }

    def config(self):
        import transformers

        return transformers.LlamaConfig(**self.config_kwargs(), hidden_act="silu", mlp_bias=False)


class Qwen3Mapping(LlamaMapping):
    """Identical to :class:`LlamaMapping` except for the QK-norm weights (Qwen3)."""

    hf_class = "Qwen3ForCausalLM"
    qk_norm = True

    def config(self):
        import transformers

        return transformers.Qwen3Config(**self.config_kwargs(), hidden_act="silu", use_sliding_window=False)


class Gemma3Mapping(LlamaMapping):
    """Identical to :class:`Qwen3Mapping` except for the four norms per layer (Gemma 3 text)."""

    hf_class = "Gemma3ForCausalLM"
    qk_norm = True
    sandwich = True

    def config(self):
        import transformers

        kwargs = self.config_kwargs()
        rope = kwargs.pop("rope_parameters")
        return transformers.Gemma3TextConfig(
            **kwargs,
            hidden_activation="gelu_pytorch_tanh",
            query_pre_attn_scalar=kwargs["head_dim"],  # zoo scales scores by head_dim ** -0.5
            layer_types=["full_attention"] * kwargs["num_hidden_layers"],  # zoo has no sliding-window layers
            sliding_window=kwargs["max_position_embeddings"],  # unused by full-attention layers; ≥ context anyway
            final_logit_softcapping=None,
            attn_logit_softcapping=None,
            rope_parameters={"full_attention": rope, "sliding_attention": dict(rope)},
        )


class MixtralMapping(LlamaMapping):
    """Identical to :class:`LlamaMapping` except the FFN is routed experts (transformers 5 stacks them as
    ``experts.gate_up_proj`` (E, 2·hidden, C), gate rows first, and ``experts.down_proj`` (E, C, hidden), the
    layout of :class:`zoo.nn.RoutedFFN`)."""

    hf_class = "MixtralForCausalLM"

    def ffn_rules(self, i: int, block) -> list[Rule]:
        f, p = f"blocks.{i}.ffn", f"model.layers.{i}.mlp"
        return [
            Rule(f"{f}.router.weight", (f"{p}.gate.weight",)),
            Rule(f"{f}.gate_up", (f"{p}.experts.gate_up_proj",)),
            Rule(f"{f}.down", (f"{p}.experts.down_proj",)),
        ]

    def config(self):
        import transformers

        ffn = self.backbone.blocks[0].ffn
        kwargs = self.config_kwargs()
        kwargs.pop("attention_bias")  # Mixtral has none; mapping_for refuses biased attention
        return transformers.MixtralConfig(
            **kwargs, hidden_act="silu", num_local_experts=ffn.n_experts, num_experts_per_tok=ffn.top_k,
            router_aux_loss_coef=ffn.aux_loss_coef, sliding_window=None,
        )  # fmt: skip


class Qwen3MoeMapping(MixtralMapping):
    """Identical to :class:`MixtralMapping` except for the QK-norm weights and the optional top-k
    renormalization (Qwen3-MoE)."""

    hf_class = "Qwen3MoeForCausalLM"
    qk_norm = True

    def config(self):
        import transformers

        ffn = self.backbone.blocks[0].ffn
        return transformers.Qwen3MoeConfig(
            **self.config_kwargs(), hidden_act="silu", num_experts=ffn.n_experts, num_experts_per_tok=ffn.top_k,
            moe_intermediate_size=ffn.hidden_dim, norm_topk_prob=ffn.normalize_top_k,
            router_aux_loss_coef=ffn.aux_loss_coef, decoder_sparse_step=1, mlp_only_layers=[], use_sliding_window=False,
        )  # fmt: skip


class GPT2Mapping(Mapping):
    """GPT-2: ``transformer.h.N`` names, ``Conv1D`` weights stored (in, out), q/k/v fused like zoo's."""

    hf_class = "GPT2LMHeadModel"

    def rules(self) -> list[Rule]:
        rules = [
            Rule("embed.weight", ("transformer.wte.weight",)),
            Rule("position.weight", ("transformer.wpe.weight",)),
            Rule("norm.weight", ("transformer.ln_f.weight",)),
            Rule("norm.bias", ("transformer.ln_f.bias",)),
        ]
        for i, block in enumerate(self.backbone.blocks):
            z, p = f"blocks.{i}", f"transformer.h.{i}"
            for zoo_name, hf_name, kind in (
                ("attention_norm", "ln_1", "copy"), ("ffn_norm", "ln_2", "copy"), ("attention.qkv", "attn.c_attn", "t"),
                ("attention.out", "attn.c_proj", "t"), ("ffn.up", "mlp.c_fc", "t"), ("ffn.down", "mlp.c_proj", "t"),
            ):  # fmt: skip
                rules += _biases(f"{z}.{zoo_name}", f"{p}.{hf_name}", block.get_submodule(zoo_name), kind)
        return rules

    def config(self):
        import transformers

        b = self.backbone
        return transformers.GPT2Config(
            vocab_size=b.vocab_size, n_embd=b.dim, n_layer=b.n_layers, n_head=b.blocks[0].attention.n_heads,
            n_positions=b.max_seq_len, n_inner=b.blocks[0].ffn.up.out_features, activation_function="gelu_new",
            layer_norm_epsilon=b.norm.eps, tie_word_embeddings=True, scale_attn_weights=True,
            scale_attn_by_inverse_layer_idx=False,
        )  # fmt: skip


class GPTNeoXMapping(Mapping):
    """GPT-NeoX (Pythia): ``gpt_neox.layers.N`` names, q/k/v fused but interleaved per head."""

    hf_class = "GPTNeoXForCausalLM"

    def rules(self) -> list[Rule]:
        b = self.backbone
        heads = b.blocks[0].attention.n_heads
        rules = [
            Rule("embed.weight", ("gpt_neox.embed_in.weight",)),
            Rule("norm.weight", ("gpt_neox.final_layer_norm.weight",)),
            Rule("norm.bias", ("gpt_neox.final_layer_norm.bias",)),
        ]
        if not b.tie_embeddings:  # `embed_out` in checkpoints; transformers renames it on load
            rules.append(Rule("head.weight", (self.head_key,)))
        for i, block in enumerate(b.blocks):
            z, p = f"blocks.{i}", f"gpt_neox.layers.{i}"
            rules += [
                *_biases(f"{z}.attention_norm", f"{p}.input_layernorm", block.attention_norm),
                *_biases(f"{z}.ffn_norm", f"{p}.post_attention_layernorm", block.ffn_norm),
                *_biases(f"{z}.attention.qkv", f"{p}.attention.query_key_value", block.attention.qkv, "neox_qkv",
                         heads=heads),
                *_biases(f"{z}.attention.out", f"{p}.attention.dense", block.attention.out),
                *_biases(f"{z}.ffn.up", f"{p}.mlp.dense_h_to_4h", block.ffn.up),
                *_biases(f"{z}.ffn.down", f"{p}.mlp.dense_4h_to_h", block.ffn.down),
            ]  # fmt: skip
        return rules

    def config(self):
        import transformers

        b = self.backbone
        attn, position = b.blocks[0].attention, b.position
        rope = {"rope_type": "default", "rope_theta": position.theta, "partial_rotary_factor": position.fraction}
        return transformers.GPTNeoXConfig(
            vocab_size=b.vocab_size, hidden_size=b.dim, num_hidden_layers=b.n_layers, num_attention_heads=attn.n_heads,
            intermediate_size=b.blocks[0].ffn.up.out_features, max_position_embeddings=b.max_seq_len,
            layer_norm_eps=b.norm.eps, use_parallel_residual=True, hidden_act="gelu",
            tie_word_embeddings=b.tie_embeddings, attention_bias=attn.qkv.bias is not None, rope_parameters=rope,
        )  # fmt: skip
