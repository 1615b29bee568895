"""Feed-forward networks, each built by a factory ``Callable[[int], nn.Module]`` that receives the model width.

``GeluMLP``: ``down(gelu(up(x)))`` (GPT-2, Pythia).  ``GatedFFN``: ``down(act(gate(x)) * up(x))``
(Shazeer, 2020); ``SwiGLU`` (Llama) and ``GeGLU`` (Gemma, with ``approximate="tanh"``) fix its activation.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from zoo.nn.cache import ModuleCache, new_cache_of

Activation = Literal["silu", "gelu", "relu"]
"""The gate activation of a gated FFN: ``silu`` (SwiGLU), ``gelu`` (GeGLU; see ``approximate``) or ``relu``."""

Approximate = Literal["none", "tanh"]
"""GELU's form: ``none`` is the exact erf GELU, ``tanh`` its tanh approximation (GPT-2's ``gelu_new``, Gemma's
``gelu_pytorch_tanh``). The one spelling of the tanh GELU everywhere in zoo."""


def activation_fn(activation: Activation, approximate: Approximate = "none") -> Callable[[Tensor], Tensor]:
    """The activation function; ``approximate`` applies to ``gelu`` only."""
    if activation not in ("silu", "gelu", "relu"):
        raise ValueError(f"activation={activation!r} is unknown; choose one of ['gelu', 'relu', 'silu']")
    if approximate not in ("none", "tanh"):
        raise ValueError(f"approximate={approximate!r} must be 'none' (exact GELU) or 'tanh' (its approximation)")
    if approximate == "tanh" and activation != "gelu":
        raise ValueError(f"approximate='tanh' is a form of GELU, not of activation={activation!r}: drop it")
    if activation == "gelu":
        return partial(F.gelu, approximate=approximate)
    return F.silu if activation == "silu" else F.relu


class GeluMLP(nn.Module):
    """Two linear layers with a GELU between them.

    Args:
        dim: model width (given by the block).
        hidden_dim: inner width (GPT-2: 4 × dim).
        bias: biases on both linear layers (GPT-2: yes).
        approximate: ``"tanh"`` for GPT-2's tanh approximation, ``"none"`` for the exact erf GELU (Pythia).
    """

    def __init__(self, dim: int, *, hidden_dim: int, bias: bool = True, approximate: Approximate = "tanh") -> None:
        super().__init__()
        self.act = activation_fn("gelu", approximate)
        self.approximate = approximate
        self.up = nn.Linear(dim, hidden_dim, bias=bias)
        self.down = nn.Linear(hidden_dim, dim, bias=bias)

    def forward(self, x: Tensor, cache: ModuleCache | None = None) -> Tensor:  # (B, T, C) -> (B, T, C)
        """``cache``: decoding state, none here (every FFN takes it, so blocks call all alike)."""
        return self.down(self.act(self.up(x)))

    @torch.no_grad()
    def init_weights(self, *, std: float, residual_std: float) -> None:
        """``up`` ~ N(0, ``std``); ``down`` writes into the residual stream: N(0, ``residual_std``); biases zero."""
        _normal_linear(self.up, std)
        _normal_linear(self.down, residual_std)


class GatedFFN(nn.Module):
    """Gated linear unit FFN: ``down(act(gate(x)) * up(x))``.

    The gate and up projections are one matrix of ``2 * hidden_dim`` outputs (gate first), so one matmul
    computes both.

    Args:
        dim: model width (given by the block).
        hidden_dim: inner width (Llama: about 8/3 × dim rounded up).
        activation: ``silu`` (SwiGLU), ``gelu`` (GeGLU) or ``relu``.
        approximate: with ``gelu``, ``none`` (exact) or ``tanh`` (Gemma).
        bias: biases on the projections (Llama: no).
        canon: optional Canon-D factory applied to the gate/up output (``2 * hidden_dim`` channels).
    """

    def __init__(
        self,
        dim: int,
        *,
        hidden_dim: int,
        activation: Activation = "silu",
        approximate: Approximate = "none",
        bias: bool = False,
        canon: Callable[[int], nn.Module] | None = None,
    ) -> None:
        super().__init__()
        self.act = activation_fn(activation, approximate)
        self.activation, self.approximate = activation, approximate
        self.hidden_dim = hidden_dim
        self.gate_up = nn.Linear(dim, 2 * hidden_dim, bias=bias)
        self.canon = canon(2 * hidden_dim) if canon is not None else None
        self.down = nn.Linear(hidden_dim, dim, bias=bias)

    def forward(self, x: Tensor, cache: ModuleCache | None = None) -> Tensor:  # (B, T, C) -> (B, T, C)
        """``cache``: this FFN's decoding state (:meth:`new_cache`: Canon-D's tail); ``None`` = whole sequence."""
        h = self.gate_up(x)  # (B, T, 2F)
        if self.canon is not None:
            h = self.canon(h, cache)
        gate, up = h.chunk(2, dim=-1)  # (B, T, F) each
        return self.down(self.act(gate) * up)

    def new_cache(self, batch_size: int, max_len: int, *, device, dtype) -> ModuleCache | None:
        """Empty decoding state: Canon-D's tail, or ``None`` without Canon-D."""
        return new_cache_of(self.canon, batch_size, max_len, device=device, dtype=dtype)

    @torch.no_grad()
    def init_weights(self, *, std: float, residual_std: float) -> None:
        """``gate_up`` ~ N(0, ``std``); ``down`` writes into the residual stream: N(0, ``residual_std``)."""
        _normal_linear(self.gate_up, std)
        _normal_linear(self.down, residual_std)
        if self.canon is not None:
            self.canon.init_weights(std=std, residual_std=residual_std)


class SwiGLU(GatedFFN):
    """Identical to :class:`GatedFFN` except the activation is fixed to SiLU (Llama, Supra, SmolLM)."""

    def __init__(
        self, dim: int, *, hidden_dim: int, bias: bool = False, canon: Callable[[int], nn.Module] | None = None
    ) -> None:
        super().__init__(dim, hidden_dim=hidden_dim, activation="silu", bias=bias, canon=canon)


class GeGLU(GatedFFN):
    """Identical to :class:`GatedFFN` except the activation is fixed to GELU (Shazeer, 2020; Gemma).

    Args: as :class:`GatedFFN`, and
        approximate: ``"none"`` for the exact erf GELU (the GLU-variants paper), ``"tanh"`` for its tanh
            approximation (Gemma's ``gelu_pytorch_tanh``).
    """

    def __init__(
        self,
        dim: int,
        *,
        hidden_dim: int,
        approximate: Approximate = "none",
        bias: bool = False,
        canon: Callable[[int], nn.Module] | None = None,
    ) -> None:
        super().__init__(dim, hidden_dim=hidden_dim, activation="gelu", approximate=approximate, bias=bias, canon=canon)


def _normal_linear(linear: nn.Linear, std: float) -> None:
    nn.init.normal_(linear.weight, std=std)
    if linear.bias is not None:
        nn.init.zeros_(linear.bias)
