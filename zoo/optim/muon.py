"""Muon for the hidden weight matrices, AdamW for everything else, as one optimizer.

Muon (Jordan et al., 2024; ``torch.optim.Muon``) orthogonalises each 2-D update with Newton–Schulz
iterations. It is meant for the matrices *inside* the blocks: the token embedding and the LM head (2-D too)
are lookup tables / a classifier, and norms, biases and other 1-D or 3-D parameters are not matrices, so all
of those stay with AdamW::

    backbone parameters ──┬─ nn.Linear weights inside the blocks (not the head) ──▶ torch.optim.Muon
                          └─ embeddings, head, norms, biases, Canon kernels, stacked experts ──▶ torch.optim.AdamW

Lightning drives one optimizer per ``configure_optimizers`` simply (one ``step``, one scheduler, one state in
the checkpoint), and torch has no optimizer that chains two others, so :class:`MuonWithAdamW` wraps the two:
its ``param_groups`` *are* the two inner optimizers' group dicts (the same objects), so a learning-rate
scheduler multiplies Muon's and AdamW's peaks by the same factor at every step and their ratio is kept, and
its ``state_dict`` holds both inner state dicts for an exact resume.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, MutableMapping
from typing import Literal

import torch
from torch import Tensor, nn
from torch.optim import AdamW, Muon, Optimizer

from zoo.optim.fused import fused_supported
from zoo.optim.groups import weight_decay_groups
from zoo.training.devices import fastest_matmul_dtype


def muon_groups(module: nn.Module) -> list[dict]:
    """Split ``module``'s trainable parameters by module type for :class:`MuonWithAdamW`.

    Returns groups tagged ``"use_muon"``: the weights of every ``nn.Linear`` except the LM head (``head`` of
    :class:`zoo.nn.Transformer`, a child named ``head`` elsewhere) go to Muon; AdamW gets the other matrices
    (head, stacked experts, Canon kernels) with its weight decay, and embeddings, norms and biases without
    (as :func:`zoo.optim.weight_decay_groups`). A tied head shares the embedding's tensor and is listed once.
    """
    head = getattr(module, "head", None)
    head_ids = {id(head.weight)} if isinstance(head, nn.Linear) else set()
    hidden_ids = {
        id(sub.weight)
        for sub in module.modules()
        if isinstance(sub, nn.Linear) and sub is not head and sub.weight.ndim == 2 and id(sub.weight) not in head_ids
    }
    hidden_ids -= {id(sub.weight) for sub in module.modules() if isinstance(sub, nn.Embedding)}  # a tied input
    groups = []
    for group in weight_decay_groups(module):
        muon = [p for p in group["params"] if id(p) in hidden_ids]
        rest = [p for p in group["params"] if id(p) not in hidden_ids]
        extra = {k: v for k, v in group.items() if k != "params"}
        if muon:
            groups.append({"params": muon, "use_muon": True})  # Muon's own weight decay applies
        if rest:
            groups.append({"params": rest, "use_muon": False, **extra})
    return groups


def optimizer_groups(module: nn.Module) -> list[dict]:
    """The parameter groups every optimizer factory is called with: :func:`muon_groups`, the weight-decay groups
    split further by a ``use_muon`` tag. :class:`MuonWithAdamW` reads the tag; torch's optimizers keep it in
    their group dicts and ignore it, so their updates are those of :func:`zoo.optim.weight_decay_groups`."""
    return muon_groups(module)


class MuonWithAdamW(Optimizer):
    """``torch.optim.Muon`` on the groups tagged ``use_muon`` (see :func:`muon_groups`), ``torch.optim.AdamW``
    on the others, stepped together.

    Args:
        params: groups from :func:`muon_groups` (``LanguageModel.configure_optimizers`` builds them).
        lr: Muon's peak learning rate (the schedule multiplies both optimizers' peaks alike).
        momentum: Muon's momentum.
        nesterov: Nesterov momentum in Muon.
        ns_steps: Newton–Schulz iterations per Muon update.
        ns_dtype: the dtype of the Newton–Schulz iterations: ``bfloat16`` (torch's Muon), ``float32``, or ``auto``
            (the parameters' device's fastest, :func:`zoo.training.devices.fastest_matmul_dtype`: ``bfloat16``
            where it has bf16 units, as GPUs since sm80 and CPUs with AMX or AVX512-BF16 do, ``float32`` on one
            without, where bf16 products are emulated and several times slower).
        weight_decay: Muon's decoupled weight decay (``p ← p · (1 − lr · weight_decay)``, as AdamW's).
        adjust_lr_fn: Muon's per-matrix learning-rate scaling: ``original`` (``sqrt(max(1, rows / cols))``,
            use with ``lr`` ≈ 0.02) or ``match_rms_adamw`` (``0.2 · sqrt(max(rows, cols))``, so ``lr`` can be
            AdamW's).
        adamw_lr: AdamW's peak learning rate (embeddings, head, norms, biases).
        adamw_betas: AdamW's betas.
        adamw_eps: AdamW's epsilon.
        adamw_weight_decay: AdamW's weight decay on its matrices (the head when untied); embeddings, norms and
            biases get none.
        fused: AdamW's fused kernel (``None``: fused when every parameter is on a device that has it).
    """

    def __init__(
        self,
        params: Iterable[dict],
        *,
        lr: float = 0.02,
        momentum: float = 0.95,
        nesterov: bool = True,
        ns_steps: int = 5,
        ns_dtype: Literal["auto", "bfloat16", "float32"] = "auto",
        weight_decay: float = 0.0,
        adjust_lr_fn: Literal["original", "match_rms_adamw"] = "original",
        adamw_lr: float = 3e-3,
        adamw_betas: tuple[float, float] = (0.9, 0.95),
        adamw_eps: float = 1e-8,
        adamw_weight_decay: float = 0.0,
        fused: bool | None = None,
    ) -> None:
        groups = list(params)
        if not all(isinstance(g, dict) and "use_muon" in g for g in groups):
            raise ValueError(
                "MuonWithAdamW needs parameter groups tagged use_muon (zoo.optim.muon_groups(module)); "
                "plain parameters cannot be told apart into hidden matrices and the rest"
            )
        for name, value in (("lr", lr), ("adamw_lr", adamw_lr)):
            if value <= 0:
                raise ValueError(f"MuonWithAdamW {name}={value} must be > 0")
        if ns_dtype not in ("auto", "bfloat16", "float32"):
            raise ValueError(f"MuonWithAdamW ns_dtype={ns_dtype!r} must be 'auto', 'bfloat16' or 'float32'")
        if adjust_lr_fn not in ("original", "match_rms_adamw"):
            raise ValueError(f"MuonWithAdamW adjust_lr_fn={adjust_lr_fn!r} must be 'original' or 'match_rms_adamw'")
        muon = [{k: v for k, v in g.items() if k != "use_muon"} for g in groups if g["use_muon"]]
        adamw = [{k: v for k, v in g.items() if k != "use_muon"} for g in groups if not g["use_muon"]]
        for g in muon:
            bad = [tuple(p.shape) for p in g["params"] if p.ndim != 2]
            if bad:
                raise ValueError(f"Muon takes 2-D matrices only, got shapes {bad}: route them to AdamW (use_muon)")
        if fused is None:
            fused = fused_supported(p for g in adamw for p in g["params"])
        # An optimizer with no parameters is refused by torch, so either side may be absent.
        if ns_dtype == "auto":  # the matrices' device's fastest (they share one: a model trains on one device)
            device = next((p.device for g in muon for p in g["params"]), torch.device("cpu"))
            ns_dtype = str(fastest_matmul_dtype(device)).removeprefix("torch.")
        self.muon = (
            _Muon(muon, lr=lr, momentum=momentum, nesterov=nesterov, ns_steps=ns_steps, weight_decay=weight_decay,
                  adjust_lr_fn=adjust_lr_fn, ns_dtype=getattr(torch, ns_dtype))
            if muon else None
        )  # fmt: skip
        self.adamw = (
            AdamW(adamw, lr=adamw_lr, betas=adamw_betas, eps=adamw_eps, weight_decay=adamw_weight_decay, fused=fused)
            if adamw else None
        )  # fmt: skip
        inner = [o for o in (self.muon, self.adamw) if o is not None]
        super().__init__([p for o in inner for g in o.param_groups for p in g["params"]], {"lr": lr})
        # The wrapper's groups and state are the inner optimizers' own objects: schedulers, gradient clipping
        # and scalers that read or write them act on the optimizers that step.
        self.param_groups = [g for o in inner for g in o.param_groups]
        self.state = _JointState(inner)
        self.defaults = {"lr": lr, "adamw_lr": adamw_lr, "fused": fused, "foreach": None}

    @property
    def inner(self) -> list[Optimizer]:
        return [o for o in (self.muon, self.adamw) if o is not None]

    @torch.no_grad()
    def step(self, closure: Callable[[], torch.Tensor] | None = None) -> torch.Tensor | None:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for optimizer in self.inner:
            optimizer.step()
        return loss

    def state_dict(self) -> dict:
        return {"muon": self.muon and self.muon.state_dict(), "adamw": self.adamw and self.adamw.state_dict()}

    def load_state_dict(self, state_dict: dict) -> None:
        for name in ("muon", "adamw"):
            optimizer, saved = getattr(self, name), state_dict.get(name)
            if (optimizer is None) != (saved is None):
                raise ValueError(
                    f"optimizer state has {'no' if saved is None else 'a'} {name} part but this model "
                    f"{'has' if optimizer is not None else 'has no'} {name} parameters: resume with the optimizer "
                    "and model of the run that wrote the checkpoint"
                )
            if optimizer is not None:
                optimizer.load_state_dict(saved)
        self.param_groups = [g for o in self.inner for g in o.param_groups]  # load replaces the group dicts
        self.state = _JointState(self.inner)


class _Muon(Muon):
    """Identical to ``torch.optim.Muon`` (its arguments, checks, state and ``state_dict``) except: the Newton–Schulz
    iterations run in ``ns_dtype``, over every same-shaped update of a group at once.

    torch's step orthogonalises one matrix at a time, always in bfloat16, with no setting for either: on a CPU
    without bf16 units a bf16 product is several times slower than an fp32 one, and a model's dozens of small
    matrices each pay a chain of ten products' overheads. This step does what torch's does (momentum, Nesterov,
    decoupled weight decay, the per-matrix learning-rate scale) with the updates of one shape stacked into one
    batch, so a shape's ``ns_steps`` iterations are one chain of batched products (:func:`newton_schulz`)."""

    def __init__(self, params, *, ns_dtype: torch.dtype, **kwargs) -> None:
        super().__init__(params, **kwargs)
        self.ns_dtype = ns_dtype

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, momentum = float(group["lr"]), group["momentum"]
            by_shape: dict[tuple, list[tuple[Tensor, Tensor]]] = {}
            for param in group["params"]:
                if param.grad is None:
                    continue
                if param.grad.is_sparse or torch.is_complex(param):
                    raise RuntimeError("Muon takes dense real matrices only")
                state = self.state[param]
                if "momentum_buffer" not in state:  # torch's Muon's state key: checkpoints of either resume in both
                    state["momentum_buffer"] = torch.zeros_like(param.grad, memory_format=torch.preserve_format)
                buf = state["momentum_buffer"]
                buf.lerp_(param.grad, 1 - momentum)
                update = param.grad.lerp(buf, momentum) if group["nesterov"] else buf
                rows, cols = update.shape
                # one batch per shape once the longer side lies along the rows' product: (r, c) and (c, r) together
                key = (update.device, min(rows, cols), max(rows, cols))
                by_shape.setdefault(key, []).append((param, update if rows <= cols else update.T))
            for pairs in by_shape.values():
                stacked = torch.stack([u.to(self.ns_dtype) for _, u in pairs])  # (n, short, long)
                ortho = newton_schulz(stacked, group["ns_coefficients"], group["ns_steps"], group["eps"],
                                      dtype=self.ns_dtype)  # fmt: skip
                for (param, _), o in zip(pairs, ortho):
                    o = o if o.shape == param.shape else o.T
                    param.mul_(1 - lr * group["weight_decay"])
                    param.add_(o, alpha=-lr * _lr_scale(group["adjust_lr_fn"], param.shape))
        return loss


def _lr_scale(adjust_lr_fn: str | None, shape: torch.Size) -> float:
    """Muon's per-matrix learning-rate factor (``adjust_lr_fn`` of ``torch.optim.Muon``): ``original`` keeps an
    update's RMS the same across rectangular shapes, ``match_rms_adamw`` matches AdamW's update RMS."""
    rows, cols = shape[:2]
    if adjust_lr_fn == "match_rms_adamw":
        return 0.2 * math.sqrt(max(rows, cols))
    return math.sqrt(max(1.0, rows / cols))


def newton_schulz(grad: Tensor, ns_coefficients: tuple[float, float, float], ns_steps: int, eps: float, *,
                  dtype: torch.dtype = torch.float32) -> Tensor:  # fmt: skip
    """Approximate orthogonalisation ``U Vᵀ`` of each matrix ``grad = U S Vᵀ`` (shape ``(rows, cols)`` or a batch
    ``(n, rows, cols)``) by ``ns_steps`` quintic Newton–Schulz iterations ``X ← a X + (b A + c A²) X`` with
    ``A = X Xᵀ``, after scaling each ``X`` to spectral norm ≤ 1 (Jordan et al., 2024), computed in ``dtype``; the
    shorter side is the one squared. Returns ``dtype``."""
    a, b, c = ns_coefficients
    x = grad.to(dtype)
    single = x.ndim == 2
    if single:
        x = x.unsqueeze(0)
    wide = x.shape[-2] > x.shape[-1]
    if wide:
        x = x.mT  # (n, short, long)
    x = x / torch.linalg.matrix_norm(x, keepdim=True).clamp(min=eps)  # Frobenius norm ≥ spectral norm
    for _ in range(ns_steps):
        gram = x @ x.mT  # (n, short, short)
        x = torch.baddbmm(x, torch.baddbmm(gram, gram, gram, beta=b, alpha=c), x, beta=a)  # a X + (b A + c A²) X
    x = x.mT if wide else x
    return x[0] if single else x


class _JointState(MutableMapping):
    """The inner optimizers' ``state`` seen as one mapping (parameter → its state), as ``Optimizer.state`` is:
    a read finds the optimizer that holds the parameter and a write goes to it (Lightning moves each state to
    the device by writing it back), never to the wrong one."""

    def __init__(self, optimizers: list[Optimizer]) -> None:
        self.optimizers = optimizers

    def _owner(self, param: torch.Tensor) -> Optimizer:
        for optimizer in self.optimizers:
            if param in optimizer.state or any(p is param for g in optimizer.param_groups for p in g["params"]):
                return optimizer
        raise KeyError(param)

    def __getitem__(self, param: torch.Tensor) -> dict:
        return self._owner(param).state[param]

    def __setitem__(self, param: torch.Tensor, value: dict) -> None:
        self._owner(param).state[param] = value

    def __delitem__(self, param: torch.Tensor) -> None:
        del self._owner(param).state[param]

    def __iter__(self) -> Iterator[torch.Tensor]:
        return (p for optimizer in self.optimizers for p in optimizer.state)

    def __len__(self) -> int:
        return sum(len(optimizer.state) for optimizer in self.optimizers)
