"""Feed-forward networks, each built by a factory ``Callable[[int], nn.Module]`` that receives the model width.

``GeluMLP``: ``down(gelu(up(x)))`` (GPT-2, Pythia).  ``GatedFFN``: ``down(act(gate(x)) * up(x))``
(Shazeer, 2020); ``SwiGLU`` (Llama) and ``GeGLU`` (Gemma, with ``approximate="tanh"``) fix its activation.
"""

from __future__ import annotations

from collections.abc import Callable

import torch.nn.functional as F
from torch import Tensor, nn


class GeluMLP(nn.Module):
    """Two linear layers with a GELU between them.

    Args:
        dim: model width (given by the block).
        hidden_dim: inner width (GPT-2: 4 × dim).
        bias: biases on both linear layers (GPT-2: yes).
        approximate: ``"tanh"`` for GPT-2's tanh approximation, ``"none"`` for the exact erf GELU (Pythia).
    """

    def __init__(self, dim: int, *, hidden_dim: int, bias: bool = True, approximate: str = "tanh") -> None:
        super().__init__()
        if approximate not in ("tanh", "none"):
            raise ValueError(f"GeluMLP approximate={approximate!r} must be 'tanh' or 'none'")
        self.approximate = approximate
        self.up = nn.Linear(dim, hidden_dim, bias=bias)
        self.down = nn.Linear(hidden_dim, dim, bias=bias)
        self.down.is_residual_projection = True  # scaled at init, see Transformer.reset_parameters

    def forward(self, x: Tensor) -> Tensor:  # (B, T, C) -> (B, T, C)
        return self.down(F.gelu(self.up(x), approximate=self.approximate))


_ACTIVATIONS: dict[str, Callable[[Tensor], Tensor]] = {
    "silu": F.silu,
    "gelu": F.gelu,
    "gelu_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "relu": F.relu,
}


class GatedFFN(nn.Module):
    """Gated linear unit FFN: ``down(act(gate(x)) * up(x))``.

    The gate and up projections are one matrix of ``2 * hidden_dim`` outputs (gate first), so one matmul
    computes both.

    Args:
        dim: model width (given by the block).
        hidden_dim: inner width (Llama: about 8/3 × dim rounded up).
        activation: ``silu`` (SwiGLU), ``gelu_tanh`` (GeGLU as in Gemma), ``gelu`` or ``relu``.
        bias: biases on the projections (Llama: no).
        canon: optional Canon-D factory applied to the gate/up output (``2 * hidden_dim`` channels).
    """

    def __init__(
        self,
        dim: int,
        *,
        hidden_dim: int,
        activation: str = "silu",
        bias: bool = False,
        canon: Callable[[int], nn.Module] | None = None,
    ) -> None:
        super().__init__()
        if activation not in _ACTIVATIONS:
            raise ValueError(f"GatedFFN activation={activation!r} is unknown; choose one of {sorted(_ACTIVATIONS)}")
        self.activation = activation
        self.hidden_dim = hidden_dim
        self.gate_up = nn.Linear(dim, 2 * hidden_dim, bias=bias)
        self.canon = canon(2 * hidden_dim) if canon is not None else None
        self.down = nn.Linear(hidden_dim, dim, bias=bias)
        self.down.is_residual_projection = True

    def forward(self, x: Tensor, cache: dict | None = None) -> Tensor:  # (B, T, C) -> (B, T, C)
        h = self.gate_up(x)  # (B, T, 2F)
        if self.canon is not None:
            h = self.canon(h, None if cache is None else cache.setdefault("canon_d", {}))
        gate, up = h.chunk(2, dim=-1)  # (B, T, F) each
        return self.down(_ACTIVATIONS[self.activation](gate) * up)


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
        approximate: str = "none",
        bias: bool = False,
        canon: Callable[[int], nn.Module] | None = None,
    ) -> None:
        if approximate not in ("none", "tanh"):
            raise ValueError(f"GeGLU approximate={approximate!r} must be 'none' (exact GELU) or 'tanh' (Gemma)")
        activation = "gelu_tanh" if approximate == "tanh" else "gelu"
        super().__init__(dim, hidden_dim=hidden_dim, activation=activation, bias=bias, canon=canon)
        self.approximate = approximate
