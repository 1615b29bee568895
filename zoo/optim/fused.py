"""Fused Adam/AdamW kernels by default, on whichever device the parameters sit.

Configs name ``torch.optim.AdamW`` without ``fused`` so that one YAML trains on a CPU, a GPU or a TPU;
torch's own default (``fused=None``) then takes the multi-tensor (``foreach``) path. :func:`prefer_fused`
rebuilds such an optimizer, before its first step, with ``fused=True`` where torch has the fused kernel for
every parameter's device and dtype (CUDA, CPU, MPS, XPU in torch 2.13), one kernel per parameter group instead
of a dozen element-wise passes. An explicit ``fused`` or ``foreach`` in the config is kept as given.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterable

import torch
from torch.optim import Adam, AdamW, Optimizer

from zoo.compat import fused_adam_devices


def fused_supported(params: Iterable[torch.Tensor]) -> bool:
    """Whether the fused Adam/AdamW kernel takes every one of ``params`` (floating point, on a device that has
    the kernel); ``False`` for no parameters."""
    devices = set(fused_adam_devices())  # torch's own list of devices
    params = list(params)
    return bool(params) and all(p.device.type in devices and torch.is_floating_point(p) for p in params)


def prefer_fused(optimizer: Optimizer) -> Optimizer:
    """``optimizer`` rebuilt with ``fused=True`` when it is a plain ``Adam``/``AdamW`` that left ``fused`` and
    ``foreach`` unset, has taken no step, and every parameter can use the fused kernel; otherwise unchanged."""
    defaults = optimizer.defaults
    if (
        type(optimizer) not in (Adam, AdamW)
        or defaults.get("fused") is not None
        or defaults.get("foreach") is not None
        or defaults.get("differentiable")
        or optimizer.state
        or not fused_supported(p for g in optimizer.param_groups for p in g["params"])
    ):
        return optimizer
    # Each group holds every default; keep only what the caller set per group (e.g. weight_decay 0.0).
    groups = [
        {"params": g["params"], **{k: v for k, v in g.items() if k in defaults and v != defaults[k]}}
        for g in optimizer.param_groups
    ]
    accepted = inspect.signature(type(optimizer)).parameters  # AdamW keeps Adam's decoupled_weight_decay default
    return type(optimizer)(groups, **{k: v for k, v in defaults.items() if k in accepted and k != "fused"}, fused=True)
