"""A model exported by zoo, as transformers remote code: ``ZooForCausalLM``. Imports only torch and transformers.

::

    input_ids (B, T) ─ embed [× sqrt(C)] [+ learned positions] ─ block × L ─ final norm ─ head ─▶ logits (B, T, V)

    pre_norm   x ─┬─ norm ─ [Canon-A] ─ attention ─(+)─┬─ norm ─ [Canon-C] ─ ffn ─(+)─▶
    parallel   x + attention(norm(x)) + ffn(norm(x))           (each branch with its own norm and Canon)
    sandwich   as pre_norm, each branch's output normalized again before it is added

Autoregressive models generate with transformers' ``generate`` (no KV cache: each step reads the whole sequence,
so Canon convolutions and exclusive attention need no decoding state). Masked-diffusion models (``mask_token_id``
set) replace ``generate`` with a diffusion sampler: LLaDA's semi-autoregressive low-confidence remasking over
``steps``, or threshold (parallel) decoding with ``threshold``; see :meth:`ZooForCausalLM.generate`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers import GenerationMixin, PreTrainedModel
from transformers.modeling_outputs import CausalLMOutputWithPast

from .configuration_zoo import ZooConfig
from .diffusion_zoo import diffusion_generate


def activation(spec: dict):
    """The gate activation: ``silu``, ``relu`` or ``gelu`` (``approximate``: ``none`` exact, ``tanh``)."""
    if spec["activation"] == "gelu":
        return lambda x: F.gelu(x, approximate=spec.get("approximate", "none"))
    return {"silu": F.silu, "relu": F.relu}[spec["activation"]]


# ---- leaf modules ------------------------------------------------------------------------------------------------
class Norm(nn.Module):
    """RMSNorm (``x / rms(x) · w``, or ``· (1 + w)`` with ``unit_offset``; computed in fp32) or LayerNorm."""

    def __init__(self, dim: int, spec: dict) -> None:
        super().__init__()
        self.kind, self.eps = spec["kind"], spec["eps"]
        self.unit_offset = spec.get("unit_offset", False)
        self.weight = nn.Parameter(torch.zeros(dim) if self.unit_offset else torch.ones(dim))
        self.bias = nn.Parameter(torch.zeros(dim)) if self.kind == "layer" and spec.get("bias", True) else None

    def forward(self, x: Tensor) -> Tensor:  # (..., C)
        if self.kind == "layer":
            return F.layer_norm(x, (x.shape[-1],), self.weight, self.bias, self.eps)
        weight = self.weight + 1.0 if self.unit_offset else self.weight
        return F.rms_norm(x.float(), (x.shape[-1],), weight.float(), self.eps).type_as(x)


class Canon(nn.Module):
    """Causal depthwise convolution over ``kernel_size`` positions, plus the input when ``residual``."""

    def __init__(self, channels: int, spec: dict) -> None:
        super().__init__()
        self.kernel_size, self.residual = spec["kernel_size"], spec["residual"]
        self.weight = nn.Parameter(torch.zeros(channels, 1, self.kernel_size))  # (C, 1, K)

    def forward(self, x: Tensor) -> Tensor:  # (B, T, C)
        h = F.pad(x.transpose(1, 2), (self.kernel_size - 1, 0))  # (B, C, K - 1 + T)
        y = F.conv1d(h, self.weight.to(h.dtype), groups=h.shape[1]).transpose(1, 2)
        return x + y if self.residual else y


def rotary_tables(positions: Tensor, spec: dict) -> tuple[Tensor, Tensor]:  # (T,) -> cos, sin: (T, R/2)
    rotary_dim = spec["rotary_dim"]
    exponents = torch.arange(0, rotary_dim, 2, dtype=torch.float64, device=positions.device) / rotary_dim
    inv_freq = (1.0 / spec["theta"] ** exponents).float()  # computed here, not a buffer: nothing to initialize
    angles = positions.float()[:, None] * inv_freq[None, :]
    return angles.cos(), angles.sin()


def apply_rotary(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate the first ``2 · R/2`` features of ``x`` (B, T, H, D) in the rotate-half layout; cos, sin: (T, 1, R/2)."""
    half = cos.shape[-1]
    x1, x2, rest = x.split((half, half, x.shape[-1] - 2 * half), dim=-1)
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin, rest), dim=-1)


class Attention(nn.Module):
    """Grouped-query attention with a fused q/k/v projection (query heads, then key heads, then value heads)."""

    def __init__(self, dim: int, spec: dict) -> None:
        super().__init__()
        self.n_heads, self.n_kv_heads, self.head_dim = spec["n_heads"], spec["n_kv_heads"], spec["head_dim"]
        self.causal, self.exclusive = spec["causal"], spec["exclusive"]
        self.q_size, self.kv_size = self.n_heads * self.head_dim, self.n_kv_heads * self.head_dim
        self.qkv = nn.Linear(dim, self.q_size + 2 * self.kv_size, bias=spec["bias"])
        self.out = nn.Linear(self.q_size, dim, bias=spec["bias"])
        qk_norm = spec.get("qk_norm")
        self.q_norm = Norm(self.head_dim, qk_norm) if qk_norm else None
        self.k_norm = Norm(self.head_dim, qk_norm) if qk_norm else None
        self.canon = Canon(self.q_size + 2 * self.kv_size, spec["canon_b"]) if spec.get("canon_b") else None

    def forward(self, x: Tensor, rope: tuple[Tensor, Tensor] | None, mask: Tensor | None) -> Tensor:  # (B, T, C)
        B, T, _ = x.shape
        H, Hkv, D = self.n_heads, self.n_kv_heads, self.head_dim
        qkv = self.qkv(x)
        if self.canon is not None:
            qkv = self.canon(qkv)
        q, k, v = qkv.view(B, T, H + 2 * Hkv, D).split((H, Hkv, Hkv), dim=2)  # (B, T, H|Hkv, D)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        if rope is not None:
            cos, sin = rope[0][:, None], rope[1][:, None]  # (T, 1, R/2)
            q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # (B, H|Hkv, T, D)
        group = H // Hkv
        keys, values = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)  # (B, H, T, D)
        if mask is None:
            y = F.scaled_dot_product_attention(q, keys, values, is_causal=self.causal, scale=D**-0.5)
        else:
            if self.causal:
                mask = mask & torch.ones(T, T, dtype=torch.bool, device=x.device).tril()
            mask = mask | torch.eye(T, dtype=torch.bool, device=x.device)  # a padding query sees itself: no empty row
            y = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask, scale=D**-0.5)  # (B, H, T, D)
        if self.exclusive:  # remove each head's component along its own token's (unit) value vector, in fp32
            unit = F.normalize(v.float(), dim=-1).unsqueeze(2)  # (B, Hkv, 1, T, D)
            y32 = y.float().view(B, Hkv, group, T, D)
            y = (y32 - (y32 * unit).sum(-1, keepdim=True) * unit).view(B, H, T, D).to(y.dtype)
        return self.out(y.transpose(1, 2).reshape(B, T, self.q_size))


class MLP(nn.Module):
    """``down(gelu(up(x)))``."""

    def __init__(self, dim: int, spec: dict) -> None:
        super().__init__()
        self.approximate = spec["approximate"]
        self.up = nn.Linear(dim, spec["hidden_dim"], bias=spec["bias"])
        self.down = nn.Linear(spec["hidden_dim"], dim, bias=spec["bias"])

    def forward(self, x: Tensor) -> Tensor:
        return self.down(F.gelu(self.up(x), approximate=self.approximate))


class GatedFFN(nn.Module):
    """``down(act(gate(x)) · up(x))`` with gate and up fused (gate rows first), optionally Canon-D on them."""

    def __init__(self, dim: int, spec: dict) -> None:
        super().__init__()
        self.activation = activation(spec)
        self.gate_up = nn.Linear(dim, 2 * spec["hidden_dim"], bias=spec["bias"])
        self.canon = Canon(2 * spec["hidden_dim"], spec["canon_d"]) if spec.get("canon_d") else None
        self.down = nn.Linear(spec["hidden_dim"], dim, bias=spec["bias"])

    def forward(self, x: Tensor) -> Tensor:
        h = self.gate_up(x)
        if self.canon is not None:
            h = self.canon(h)
        gate, up = h.chunk(2, dim=-1)
        return self.down(self.activation(gate) * up)


class RoutedFFN(nn.Module):
    """Top-k mixture of gated experts: softmax router (fp32), the k largest probabilities (renormalized when
    ``normalize_top_k``) weight the chosen experts' outputs. Stacked weights: gate_up (E, 2F, C), down (E, C, F)."""

    def __init__(self, dim: int, spec: dict) -> None:
        super().__init__()
        self.n_experts, self.top_k, self.normalize = spec["n_experts"], spec["top_k"], spec["normalize_top_k"]
        self.activation = activation(spec)
        self.router = nn.Linear(dim, self.n_experts, bias=False)
        self.gate_up = nn.Parameter(torch.zeros(self.n_experts, 2 * spec["hidden_dim"], dim))
        self.down = nn.Parameter(torch.zeros(self.n_experts, dim, spec["hidden_dim"]))

    def forward(self, x: Tensor) -> Tensor:  # (B, T, C)
        B, T, C = x.shape
        flat = x.reshape(B * T, C)
        probs = self.router(flat).float().softmax(dim=-1)  # (N, E)
        weights, experts = probs.topk(self.top_k, dim=-1)  # (N, k)
        if self.normalize:
            weights = weights / weights.sum(dim=-1, keepdim=True)
        weights = weights.to(x.dtype)
        out = torch.zeros_like(flat)
        for e in range(self.n_experts):
            tokens, slot = (experts == e).nonzero(as_tuple=True)
            if tokens.numel():
                gate, up = (flat[tokens] @ self.gate_up[e].T).chunk(2, dim=-1)
                out.index_add_(0, tokens, ((self.activation(gate) * up) @ self.down[e].T) * weights[tokens, slot, None])
        return out.view(B, T, C)


FFNS = {"mlp": MLP, "gated": GatedFFN, "routed": RoutedFFN}


class Block(nn.Module):
    """One residual block: ``pre_norm``, ``parallel`` or ``sandwich`` (see the module's diagram)."""

    def __init__(self, config: ZooConfig) -> None:
        super().__init__()
        dim = config.hidden_size
        self.block_type = config.block_type
        self.attention_norm = Norm(dim, config.norm)
        self.canon_a = Canon(dim, config.canon_a) if config.canon_a else None
        self.attention = Attention(dim, config.attention)
        self.ffn_norm = Norm(dim, config.norm)
        self.canon_c = Canon(dim, config.canon_c) if config.canon_c else None
        self.ffn = FFNS[config.ffn["kind"]](dim, config.ffn)
        if self.block_type == "sandwich":
            self.post_attention_norm = Norm(dim, config.norm)
            self.post_ffn_norm = Norm(dim, config.norm)

    def forward(self, x: Tensor, rope: tuple[Tensor, Tensor] | None, mask: Tensor | None) -> Tensor:
        h = self.attention_norm(x)
        a = self.attention(self.canon_a(h) if self.canon_a is not None else h, rope, mask)
        if self.block_type == "parallel":
            return x + a + self.ffn_branch(x)
        if self.block_type == "sandwich":
            x = x + self.post_attention_norm(a)
            return x + self.post_ffn_norm(self.ffn_branch(x))
        x = x + a
        return x + self.ffn_branch(x)

    def ffn_branch(self, x: Tensor) -> Tensor:
        h = self.ffn_norm(x)
        return self.ffn(self.canon_c(h) if self.canon_c is not None else h)


class LearnedPositions(nn.Module):
    def __init__(self, config: ZooConfig) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(config.max_position_embeddings, config.hidden_size))


# ---- the model ---------------------------------------------------------------------------------------------------
class ZooPreTrainedModel(PreTrainedModel):
    config_class = ZooConfig
    base_model_prefix = "zoo"
    supports_gradient_checkpointing = False
    _no_split_modules = ["Block"]

    def _init_weights(self, module: nn.Module) -> None:  # a fresh model (from_config): GPT-2 style N(0, 0.02)
        if isinstance(module, (nn.Linear, nn.Embedding, LearnedPositions, Canon)):
            nn.init.normal_(module.weight, std=0.02)
            if getattr(module, "bias", None) is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, RoutedFFN):
            nn.init.normal_(module.gate_up, std=0.02)
            nn.init.normal_(module.down, std=0.02)
        elif isinstance(module, Norm):
            nn.init.zeros_(module.weight) if module.unit_offset else nn.init.ones_(module.weight)
            if module.bias is not None:
                nn.init.zeros_(module.bias)


class ZooForCausalLM(ZooPreTrainedModel, GenerationMixin):
    """The exported backbone; its parameter names are zoo's (``embed``, ``blocks.N.attention.qkv``, ``head``...).

    ``forward(input_ids, attention_mask=None, labels=None)`` gives the logits (B, T, V); ``attention_mask`` (B, T)
    marks padding (0) that no real token attends to. Positions are always ``0 .. T-1``. With ``labels`` the loss is
    the next-token cross-entropy (causal models and shifted diffusion) or the same-position one (diffusion).
    """

    _tied_weights_keys = {"head.weight": "embed.weight"}

    def __init__(self, config: ZooConfig) -> None:
        super().__init__(config)
        self.embed = nn.Embedding(config.vocab_size, config.hidden_size)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.num_hidden_layers))
        if config.position["kind"] == "learned":
            self.position = LearnedPositions(config)
        self.norm = Norm(config.hidden_size, config.final_norm)
        self.head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embed

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.embed = value

    def get_output_embeddings(self) -> nn.Linear:
        return self.head

    def set_output_embeddings(self, value: nn.Linear) -> None:
        self.head = value

    @property
    def is_diffusion(self) -> bool:
        return self.config.mask_token_id is not None

    def forward(
        self,
        input_ids: Tensor,  # (B, T)
        attention_mask: Tensor | None = None,  # (B, T), 1 = token, 0 = padding
        labels: Tensor | None = None,  # (B, T), -100 = not scored
        return_dict: bool | None = None,
        **kwargs,  # what generation passes and this model does not use (use_cache, cache_position, ...)
    ) -> CausalLMOutputWithPast:
        B, T = input_ids.shape
        if T > self.config.max_position_embeddings:
            raise ValueError(
                f"a sequence of {T} tokens exceeds max_position_embeddings={self.config.max_position_embeddings}"
            )
        positions = torch.arange(T, device=input_ids.device)
        x = self.embed(input_ids)  # (B, T, C)
        if self.config.scale_embeddings:
            x = x * torch.tensor(self.config.hidden_size**0.5, dtype=x.dtype)
        if self.config.position["kind"] == "learned":
            x = x + self.position.weight[positions]
        rope = rotary_tables(positions, self.config.position) if self.config.position["kind"] == "rotary" else None
        mask = None
        if attention_mask is not None and not bool(attention_mask.all()):
            mask = attention_mask.bool()[:, None, None, :]  # (B, 1, 1, T): keys that may be attended to
        for block in self.blocks:
            x = block(x, rope, mask)
        logits = self.head(self.norm(x))  # (B, T, V)
        loss = None
        if labels is not None:
            shifted = not self.is_diffusion or self.config.diffusion_shift
            scores, targets = (logits[:, :-1], labels[:, 1:]) if shifted else (logits, labels)
            loss = F.cross_entropy(scores.flatten(0, 1).float(), targets.flatten(), ignore_index=-100)
        return CausalLMOutputWithPast(loss=loss, logits=logits)

    def prepare_inputs_for_generation(self, input_ids: Tensor, attention_mask: Tensor | None = None, **kwargs):
        return {"input_ids": input_ids, "attention_mask": attention_mask}  # no cache: the whole sequence each step

    def generate(self, input_ids: Tensor | None = None, **kwargs):
        """Autoregressive models: transformers' ``generate``. Masked-diffusion models: :meth:`diffusion_generate`."""
        if not self.is_diffusion:
            kwargs.setdefault("use_cache", False)
            return super().generate(input_ids, **kwargs)
        return self.diffusion_generate(input_ids, **kwargs)

    def diffusion_generate(self, input_ids: Tensor, **kwargs) -> Tensor:
        """Masked-diffusion sampling; see :func:`diffusion_zoo.diffusion_generate` for the settings."""
        return diffusion_generate(self, input_ids, **kwargs)


__all__ = ["ZooConfig", "ZooForCausalLM", "ZooPreTrainedModel"]
