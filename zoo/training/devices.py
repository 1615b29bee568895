"""What the hardware can do: whether a CPU or GPU has bf16 matrix units, which device a ``trainer.accelerator``
value resolves to, and the fastest dtype for matrix products on a device.

Training's precision choice (:mod:`zoo.training.precision`), inference autocast and Muon's Newton–Schulz dtype
(:class:`zoo.optim.MuonWithAdamW`) all ask these, so a device gets the same answer everywhere.
"""

from __future__ import annotations

import platform
from typing import Any

import torch

from zoo import compat


def cpu_bf16_units() -> str | None:
    """The name of this CPU's bf16 matrix units that torch's kernels use (``AMX``, ``AVX512-BF16``, ``Arm BF16``),
    or ``None`` without any: there bf16 arithmetic is emulated through fp32 and slower than fp32 itself."""
    if platform.machine().lower() in ("aarch64", "arm64"):
        # oneDNN's check on Arm is the BF16 extension itself (on x86 it also accepts plain AVX-512, which emulates)
        return "Arm BF16" if compat.onednn_bf16_supported() else None
    if compat.cpu_has_amx_tiles():
        return "AMX"
    if compat.cpu_has_avx512_bf16():
        return "AVX512-BF16"
    return None


def gpu_bf16_units() -> bool:
    """Whether the current CUDA GPU computes in bf16 natively (compute capability 8.0 and newer)."""
    return torch.cuda.is_bf16_supported(including_emulation=False)


def device_kind(accelerator: Any) -> str:
    """``cpu``, ``cuda`` or ``other`` for a ``trainer.accelerator`` value (``auto``, ``cpu``, ``gpu``, ``cuda``, ...
    or an accelerator given by ``class_path``), resolved as Lightning's ``auto`` does."""
    from lightning.pytorch.accelerators import CUDAAccelerator, MPSAccelerator, XLAAccelerator

    if not isinstance(accelerator, str):
        return "other"  # an accelerator object or class_path (e.g. zoo's XLA-on-CPU): no automatic choice
    name = accelerator.lower()
    if name == "auto":
        if XLAAccelerator.is_available() or MPSAccelerator.is_available():
            return "other"
        return "cuda" if CUDAAccelerator.is_available() else "cpu"
    if name == "gpu":
        return "cuda" if CUDAAccelerator.is_available() else "other"
    return {"cpu": "cpu", "cuda": "cuda"}.get(name, "other")


def fastest_matmul_dtype(device: torch.device | str) -> torch.dtype:
    """The dtype whose matrix products run fastest on ``device``: ``bfloat16`` on a CPU or CUDA GPU with bf16 units
    (on the 2-core AVX512-BF16 EPYC a 192 × 768 product runs about 2× faster than in fp32) and on other
    accelerators (TPUs multiply in bf16), ``float32`` on a CPU or GPU without them, where bf16 is emulated."""
    device = torch.device(device)
    if device.type == "cpu":
        return torch.bfloat16 if cpu_bf16_units() else torch.float32
    if device.type == "cuda":
        return torch.bfloat16 if gpu_bf16_units() else torch.float32
    return torch.bfloat16
