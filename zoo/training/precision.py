"""Numeric precision of a run: the fastest one the hardware has, refusal of one it lacks, and gradient clipping that
works with every optimizer zoo builds.

::

    trainer.precision unset (null) ──▶ choose_precision(accelerator) ──▶ bf16-mixed where the device has bf16 units
                                                                         (CPU: AMX, AVX512-BF16, Arm BF16; GPU: sm80+)
                                                                         32-true elsewhere; logged with its reason
    trainer.precision set          ──▶ kept as given; check_precision(trainer) refuses, before the first step, what the
                                       device cannot run, and names the alternative

Fused AdamW (zoo's default where the device has the kernel) unscales the gradients inside its own ``step``, so
Lightning's mixed-precision plugin neither unscales them for it nor lets them be clipped (it raises at the first
step). With bf16 there is no gradient scaler, so there is nothing to unscale and clipping is plain; with a scaler
(``16-mixed``) :func:`unscale_gradients` unscales them through torch's ``GradScaler.unscale_`` before they are
measured and clipped, and ``GradScaler.step`` then hands the fused kernel no second scale. Either way the norm that
is logged and clipped is the non-fused optimizer's.
"""

from __future__ import annotations

import contextlib
import platform
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.cli import SaveConfigCallback
from lightning.pytorch.plugins.precision import MixedPrecision, Precision
from lightning.pytorch.utilities import GradClipAlgorithmType
from lightning.pytorch.utilities.rank_zero import rank_zero_warn

BF16 = ("bf16-mixed", "bf16-true", "bf16")  # Lightning's names for bf16 autocast and bf16 weights


@dataclass(frozen=True)
class PrecisionChoice:
    """The precision :func:`choose_precision` picked and why, as the run's log and ``config.yaml`` state it."""

    precision: str
    reason: str

    def note(self) -> str:
        return (
            f"trainer.precision={self.precision}, chosen automatically because trainer.precision was not set: "
            f"{self.reason} (force one with --trainer.precision 32-true|bf16-mixed)"
        )


def cpu_bf16_units() -> str | None:
    """The name of this CPU's bf16 matrix units that torch's kernels use (``AMX``, ``AVX512-BF16``, ``Arm BF16``),
    or ``None`` without any: there bf16 arithmetic is emulated through fp32 and slower than fp32 itself."""
    if platform.machine().lower() in ("aarch64", "arm64"):
        # oneDNN's check on Arm is the BF16 extension itself (on x86 it also accepts plain AVX-512, which emulates)
        return "Arm BF16" if torch.ops.mkldnn._is_mkldnn_bf16_supported() else None
    if torch.cpu._is_amx_tile_supported():
        return "AMX"
    if torch.cpu._is_avx512_bf16_supported():
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


def choose_precision(accelerator: Any) -> PrecisionChoice:
    """The fastest precision of the device ``accelerator`` resolves to: bf16 autocast (``bf16-mixed``, fp32 weights
    and optimizer) where it has bf16 units, ``32-true`` elsewhere."""
    kind = device_kind(accelerator)
    if kind == "cpu":
        units = cpu_bf16_units()
        if units:
            return PrecisionChoice("bf16-mixed", f"this CPU has bf16 units ({units}), where bf16 autocast is faster")
        return PrecisionChoice(
            "32-true",
            f"this CPU ({torch.backends.cpu.get_cpu_capability()}) has no bf16 units (AMX, AVX512-BF16 or Arm BF16), "
            "so bf16 would be emulated and slower than fp32",
        )
    if kind == "cuda":
        name = torch.cuda.get_device_name()
        if gpu_bf16_units():
            return PrecisionChoice("bf16-mixed", f"this GPU ({name}) has bf16 units")
        return PrecisionChoice("32-true", f"this GPU ({name}) has no bf16 units (16-mixed, with a gradient scaler, "
                                          "is the faster alternative)")  # fmt: skip
    return PrecisionChoice("32-true", f"no automatic choice for accelerator {accelerator!r}")


FP16 = ("16-mixed", "16")  # Lightning's names for fp16 autocast, which it runs as bf16 autocast on a CPU


def resolve_precision(precision: Any, accelerator: Any) -> tuple[Any, str | None]:
    """The precision a run will actually use for ``trainer.precision`` on ``accelerator``, and the note that says
    why when it differs from what was given: unset (``None``) is :func:`choose_precision`'s choice; ``16-mixed`` on a
    CPU is what Lightning runs there, ``bf16-mixed`` (torch has no fp16 autocast on CPUs). ``config.yaml`` and
    ``--print_config`` record the result, so a rerun from them trains as this run did."""
    if precision is None:
        choice = choose_precision(accelerator)
        return choice.precision, choice.note()
    if str(precision) in FP16 and device_kind(accelerator) == "cpu":
        return "bf16-mixed", (
            f"trainer.precision=bf16-mixed, recorded for the {precision} given: on a CPU Lightning runs fp16 mixed "
            "precision as bf16 autocast (use a GPU for fp16, or --trainer.precision 32-true)"
        )
    return precision, None


INFERENCE_PRECISIONS = ("auto", "32-true", "bf16-mixed")


def inference_autocast(
    precision: str, device: torch.device | str, *, preferred: str | None = None
) -> tuple[str, contextlib.AbstractContextManager]:
    """The precision a forward-only job (generation) runs at, and the context to run it in: ``bf16-mixed`` is bf16
    autocast (fp32 weights, bf16 matmuls), ``32-true`` plain fp32. ``auto`` is the device's fastest
    (:func:`choose_precision`), unless the model prefers another on this device (``preferred``, from its description's
    ``preferred_precision``): autoregressive decoding on a CPU stays fp32, as each step reads one
    position per row, so its time goes to per-call overheads that autocast's casts add to (the quickstart model at
    batch 8 decoded at 0.85× of fp32 under bf16 autocast on an AVX512-BF16 CPU, 0.57× at batch 1, while the
    diffusion sampler's passes over whole blocks ran 1.3–2× faster; ``benchmarks/results/``). Refuses bf16 on a GPU
    without bf16 units; on a CPU without them it runs, emulated."""
    if precision not in INFERENCE_PRECISIONS:
        raise ValueError(f"precision={precision!r} is unknown; choose one of {list(INFERENCE_PRECISIONS)}")
    device = torch.device(device)
    if precision == "auto":
        precision = preferred if preferred is not None else choose_precision(device.type).precision
    if precision == "32-true":
        return precision, contextlib.nullcontext()
    if device.type == "cuda" and not gpu_bf16_units():
        raise ValueError(f"precision=bf16-mixed: this GPU ({torch.cuda.get_device_name(device)}) has no bf16 units: "
                         "use 32-true")  # fmt: skip
    return precision, torch.autocast(device.type, dtype=torch.bfloat16)


def check_precision(trainer: L.Trainer) -> None:
    """Refuse, before the first step, a precision or clipping setting this trainer cannot run, naming the fix;
    warn where it runs but slowly."""
    precision = str(trainer.precision)
    device = trainer.strategy.root_device
    if precision in BF16 and device.type == "cuda" and not gpu_bf16_units():
        raise ValueError(
            f"trainer.precision={precision}: this GPU ({torch.cuda.get_device_name(device)}) has no bf16 units: "
            "use --trainer.precision 16-mixed (fp16 autocast with a gradient scaler) or 32-true"
        )
    if precision in BF16 and device.type == "cpu" and cpu_bf16_units() is None:
        rank_zero_warn(
            f"trainer.precision={precision} on a CPU without bf16 units ({torch.backends.cpu.get_cpu_capability()}): "
            "bf16 is emulated and slower than fp32 here; --trainer.precision 32-true trains faster"
        )
    algorithm = GradClipAlgorithmType(trainer.gradient_clip_algorithm or "norm")
    from lightning.pytorch.strategies import FSDPStrategy

    fsdp = isinstance(trainer.strategy, FSDPStrategy)
    if trainer.gradient_clip_val and algorithm == GradClipAlgorithmType.NORM and fsdp:
        # Lightning's FSDP plugin refuses norm clipping at the first step: it has no handle on the root FSDP module
        raise ValueError(
            f"trainer.gradient_clip_val={trainer.gradient_clip_val} with {type(trainer.strategy).__name__}: "
            "Lightning's FSDP cannot clip by norm; set --trainer.gradient_clip_algorithm value, or train with "
            "the ddp strategy (configs/trainer/ddp.yaml)"
        )


def unscales_in_step(optimizer: torch.optim.Optimizer) -> bool:
    """Whether ``optimizer`` unscales its gradients inside ``step`` (torch's fused Adam/AdamW), the attribute torch's
    ``GradScaler.step`` itself reads."""
    return bool(getattr(optimizer, "_step_supports_amp_scaling", False))


def unscale_gradients(trainer: L.Trainer, optimizer: torch.optim.Optimizer) -> None:
    """Unscale the gradients of an optimizer that unscales inside its step (which Lightning leaves scaled), so that
    they are measured and clipped at their true size. Call once per optimizer step, before reading them; a no-op
    without a gradient scaler (``32-true``, ``bf16-*``), for other optimizers, and when no gradient exists (a skipped
    step)."""
    scaler = getattr(trainer.precision_plugin, "scaler", None)
    if scaler is None or not unscales_in_step(optimizer):
        return
    if any(p.grad is not None for group in optimizer.param_groups for p in group["params"]):
        scaler.unscale_(optimizer)  # GradScaler.step then passes the fused kernel no scale (its stage is UNSCALED)


def clip_gradients(trainer: L.Trainer, optimizer: torch.optim.Optimizer, clip_val: float | None,
                   algorithm: str | None) -> bool:  # fmt: skip
    """Clip the gradients of an optimizer that unscales inside its step under a mixed-precision plugin, which
    Lightning refuses; they are unscaled already (:func:`unscale_gradients`) or were never scaled (bf16). Returns
    whether it clipped: ``False`` leaves every other case to Lightning."""
    plugin = trainer.precision_plugin
    if not clip_val or not isinstance(plugin, MixedPrecision) or not unscales_in_step(optimizer):
        return False
    # MixedPrecision's override only adds the refusal; its parent clips the optimizer's parameters as usual
    Precision.clip_gradients(plugin, optimizer, clip_val, GradClipAlgorithmType(algorithm or "norm"))
    return True


class SaveConfigWithNotes(SaveConfigCallback):
    """Lightning's ``config.yaml`` writer, with ``notes`` (e.g. why ``trainer.precision`` has its value) written
    as comment lines at the top of the file: visible to a reader, ignored by a rerun with ``--config config.yaml``.

    Args:
        notes: one line each, without the leading ``#``.
    """

    def __init__(self, *args: Any, notes: list[str] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.notes = list(notes or [])

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        # trainer.log_dir broadcasts from rank 0 under DDP, so every rank asks for it here; save_config runs on
        # rank 0 alone, where asking would leave the other ranks at a different collective (a hang)
        self._log_dir = trainer.log_dir if self.save_to_log_dir and not self.already_saved else None
        super().setup(trainer, pl_module, stage)

    def save_config(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if not (self.notes and self._log_dir):
            return
        path = Path(self._log_dir) / self.config_filename
        if path.is_file():
            path.write_text("".join(f"# {note}\n" for note in self.notes) + path.read_text())
