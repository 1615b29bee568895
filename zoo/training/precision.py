"""Numeric precision of a run: the fastest one the hardware has, refusal of one it lacks, and gradient clipping that
works with every optimizer zoo builds, as Lightning's precision plugin zoo installs in every run.

::

    trainer.precision unset (null) ──▶ resolve_precision ──▶ choose_precision(accelerator): bf16-mixed where the
                                                             device has bf16 units (CPU: AMX, AVX512-BF16, Arm BF16;
                                                             GPU: sm80+), 32-true elsewhere; noted with its reason
    trainer.precision set          ──▶ kept as given (16-mixed on a CPU recorded as the bf16-mixed Lightning runs)
    the built trainer              ──▶ install_precision(trainer): refuses, before the first step, what the device or
                                       strategy cannot run (check_precision), and puts zoo's MixedPrecision plugin in
                                       place of Lightning's

Fused AdamW (zoo's default where the device has the kernel) unscales the gradients inside its own ``step``, so
Lightning's mixed-precision plugin neither unscales them for it nor lets them be clipped (it raises at the first
step). zoo's :class:`MixedPrecision` does both: with bf16 there is no gradient scaler, so there is nothing to
unscale and clipping is plain; with a scaler (``16-mixed``) it unscales them through torch's
``GradScaler.unscale_`` right after the backward pass, before any hook measures or clips them, and
``GradScaler.step`` then hands the fused kernel no second scale. Either way the norm that is logged and clipped is
the non-fused optimizer's.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import lightning as L
import torch
from lightning.pytorch.plugins import precision as lightning_precision
from lightning.pytorch.utilities import GradClipAlgorithmType
from lightning.pytorch.utilities.rank_zero import rank_zero_warn

from zoo.compat import unscales_in_step
from zoo.training.devices import cpu_bf16_units, device_kind, gpu_bf16_units

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
    from lightning.pytorch.accelerators import CPUAccelerator, CUDAAccelerator

    precision = str(trainer.precision)
    # the accelerator, not the strategy's root device, which an XLA strategy names only in its launched processes
    device = {CPUAccelerator: "cpu", CUDAAccelerator: "cuda"}.get(type(trainer.accelerator), "other")
    if precision in BF16 and device == "cuda" and not gpu_bf16_units():
        raise ValueError(
            f"trainer.precision={precision}: this GPU ({torch.cuda.get_device_name()}) has no bf16 units: "
            "use --trainer.precision 16-mixed (fp16 autocast with a gradient scaler) or 32-true"
        )
    if precision in BF16 and device == "cpu" and cpu_bf16_units() is None:
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


NORM = GradClipAlgorithmType.NORM


class MixedPrecision(lightning_precision.MixedPrecision):
    """Identical to Lightning's ``MixedPrecision`` (bf16 or fp16 autocast) except: an optimizer that unscales its
    gradients inside its step (torch's fused Adam/AdamW) is clipped like any other, where Lightning refuses it,
    and its gradients are unscaled as soon as the backward pass has made them (with a gradient scaler), so that
    ``on_before_optimizer_step`` hooks, the logged norm and clipping see their true sizes.

    Named as Lightning's class, whose name keys the gradient scaler's state in a checkpoint: checkpoints of either
    resume under the other."""

    def optimizer_step(self, optimizer, model: L.LightningModule, closure: Callable[[], Any], **kwargs: Any) -> Any:
        if self.scaler is None or not unscales_in_step(optimizer):
            return super().optimizer_step(optimizer, model=model, closure=closure, **kwargs)

        def closure_then_unscale() -> Any:
            result = closure()
            skipped = result is None and model.automatic_optimization  # no backward ran, no gradient to unscale
            if not skipped and any(p.grad is not None for g in optimizer.param_groups for p in g["params"]):
                self.scaler.unscale_(optimizer)  # GradScaler.step then passes the fused kernel no scale
            return result

        return super().optimizer_step(optimizer, model=model, closure=closure_then_unscale, **kwargs)

    def clip_gradients(
        self, optimizer, clip_val: float = 0.0, gradient_clip_algorithm: GradClipAlgorithmType = NORM
    ) -> None:
        if unscales_in_step(optimizer):
            # unscaled already (optimizer_step) or never scaled (bf16): Lightning's base plugin clips them as usual
            return lightning_precision.Precision.clip_gradients(self, optimizer, clip_val, gradient_clip_algorithm)
        return super().clip_gradients(optimizer, clip_val, gradient_clip_algorithm)


def install_precision(trainer: L.Trainer, *, training: bool = True) -> None:
    """Put zoo's precision handling into a built ``trainer``, as ``zoo fit`` does for every run: when ``training``,
    refuse before the first step what it cannot run (:func:`check_precision`); and run Lightning's mixed precision
    (exactly that plugin: a strategy's own, such as FSDP's, or a user's is kept) as zoo's :class:`MixedPrecision`,
    with the same autocast dtype, device and gradient scaler. Set on the strategy, so that every rank (DDP re-runs
    the CLI per rank) has it."""
    if training:
        check_precision(trainer)
    plugin = trainer.strategy.precision_plugin
    if type(plugin) is lightning_precision.MixedPrecision:
        trainer.strategy.precision_plugin = MixedPrecision(plugin.precision, plugin.device, plugin.scaler)
