"""Routed mixture-of-experts feed-forward (Mixtral, Qwen3-MoE): each token goes through ``top_k`` of ``n_experts``
gated FFNs, mixed by the router's probabilities::

    x (N, C) ── router ── softmax ── top-k ──▶ (weights (N, k), experts (N, k))
       │
       └── for each expert e: tokens routed to e ── down_e(act(gate_e x) · up_e x) ── × weight ──▶ Σ  (N, C)

The router's load-balancing loss (Switch Transformer, Fedus et al. 2021) is kept in ``aux_loss`` during
training; :meth:`zoo.nn.Transformer.auxiliary_loss` sums it over layers and the objective adds it to the loss.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from zoo.nn.ffn import Activation, activation_fn


class RoutedFFN(nn.Module):
    """Top-k routed mixture of gated FFN experts.

    Expert weights are stacked: ``gate_up`` (E, 2·hidden, C) with the gate rows first (as in
    :class:`zoo.nn.GatedFFN`) and ``down`` (E, C, hidden).

    Args:
        dim: model width (given by the block).
        n_experts: experts E.
        top_k: experts per token.
        hidden_dim: inner width of each expert.
        activation: the experts' gate activation (``silu`` for Mixtral and Qwen3-MoE).
        normalize_top_k: rescale the k chosen probabilities to sum to 1 (Mixtral always; Qwen3-MoE's
            ``norm_topk_prob``); otherwise they keep their softmax-over-all-experts values.
        aux_loss_coef: weight of the load-balancing loss added to the training loss (0 disables it).
    """

    def __init__(
        self,
        dim: int,
        *,
        n_experts: int,
        top_k: int,
        hidden_dim: int,
        activation: Activation = "silu",
        normalize_top_k: bool = True,
        aux_loss_coef: float = 0.01,
    ) -> None:
        super().__init__()
        if n_experts < 1 or not 1 <= top_k <= n_experts:
            raise ValueError(f"RoutedFFN top_k={top_k} must be in [1, n_experts={n_experts}]")
        self.act = activation_fn(activation)
        if aux_loss_coef < 0:
            raise ValueError(f"RoutedFFN aux_loss_coef={aux_loss_coef} must be ≥ 0")
        self.n_experts, self.top_k, self.hidden_dim, self.activation = n_experts, top_k, hidden_dim, activation
        self.normalize_top_k, self.aux_loss_coef = normalize_top_k, aux_loss_coef
        self.router = nn.Linear(dim, n_experts, bias=False)
        self.gate_up = nn.Parameter(torch.empty(n_experts, 2 * hidden_dim, dim))
        self.down = nn.Parameter(torch.empty(n_experts, dim, hidden_dim))
        self.aux_loss: Tensor | None = None
        self.init_weights(std=0.02, residual_std=0.02)

    @torch.no_grad()
    def init_weights(self, *, std: float, residual_std: float) -> None:
        """The router and the experts' ``gate_up`` ~ N(0, ``std``); ``down`` writes into the residual stream:
        N(0, ``residual_std``)."""
        nn.init.normal_(self.router.weight, std=std)
        nn.init.normal_(self.gate_up, std=std)
        nn.init.normal_(self.down, std=residual_std)

    def inactive_parameters(self) -> int:
        """Expert weights a token does not use (for FLOPs per token: only ``top_k`` experts run)."""
        return (self.n_experts - self.top_k) * (self.gate_up[0].numel() + self.down[0].numel())

    def forward(self, x: Tensor, cache: object | None = None) -> Tensor:  # (B, T, C) -> (B, T, C)
        """``cache``: decoding state, none here (every FFN takes it, so blocks call all alike)."""
        B, T, C = x.shape
        flat = x.reshape(B * T, C)  # (N, C)
        logits = self.router(flat)  # (N, E)
        probs = logits.float().softmax(dim=-1)
        weights, experts = probs.topk(self.top_k, dim=-1)  # (N, k) each
        if self.normalize_top_k:
            weights = weights / weights.sum(dim=-1, keepdim=True)
        weights = weights.to(x.dtype)
        act = self.act
        if torch.compiler.is_compiling():  # the routed loop's shapes depend on the data: a graph break each
            out = self._dense(flat, weights, experts)
            self.aux_loss = self.aux_loss_coef * self.load_balancing_loss(probs, experts) if self.training else None
            return out.view(B, T, C)
        out = torch.zeros_like(flat)
        # One small matmul per expert over the tokens routed to it: exact and simple; grouped-GEMM kernels are
        # faster on GPUs but not in torch for every device, and MoE models here are small.
        for e in range(self.n_experts):
            tokens, slot = (experts == e).nonzero(as_tuple=True)  # (n_e,), (n_e,)
            if tokens.numel() == 0:
                continue
            gate, up = (flat[tokens] @ self.gate_up[e].T).chunk(2, dim=-1)  # (n_e, F) each
            y = (act(gate) * up) @ self.down[e].T  # (n_e, C)
            out.index_add_(0, tokens, y * weights[tokens, slot, None])
        self.aux_loss = self.aux_loss_coef * self.load_balancing_loss(probs, experts) if self.training else None
        return out.view(B, T, C)

    def _dense(self, flat: Tensor, weights: Tensor, experts: Tensor) -> Tensor:  # (N, C), (N, k), (N, k) -> (N, C)
        """The same mixture with static shapes, for ``torch.compile``: every expert runs on every token and is
        weighted 0 where the token is not routed to it (E / top_k times the experts' FLOPs)."""
        combine = torch.zeros(flat.shape[0], self.n_experts, dtype=weights.dtype, device=flat.device)
        combine = combine.scatter(1, experts, weights)  # (N, E): the router's weight, 0 where not chosen
        gate, up = torch.einsum("nc,efc->enf", flat, self.gate_up).chunk(2, dim=-1)  # (E, N, F) each
        y = torch.einsum("enf,ecf->enc", self.act(gate) * up, self.down)  # (E, N, C)
        return torch.einsum("enc,ne->nc", y, combine)

    def load_balancing_loss(self, probs: Tensor, experts: Tensor) -> Tensor:
        """``E · Σ_e f_e · P_e`` with ``f_e`` the share of routing slots given to expert ``e`` (averaged per
        top-k slot, as transformers' Mixtral does) and ``P_e`` its mean router probability; equals ``top_k`` when
        routing is perfectly balanced. Computed per layer (Switch Transformer); transformers pools the tokens of
        all layers before the product instead."""
        chosen = F.one_hot(experts, self.n_experts).float()  # (N, k, E)
        slots_per_expert = chosen.mean(dim=0)  # (k, E)
        prob_per_expert = probs.mean(dim=0)  # (E,)
        return self.n_experts * (slots_per_expert * prob_per_expert).sum()

    def extra_repr(self) -> str:
        return f"n_experts={self.n_experts}, top_k={self.top_k}, hidden_dim={self.hidden_dim}"
