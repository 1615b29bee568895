"""The training step under ``torch.compile``, with eager as the fallback (``model.compile: true | false | auto``).

    compile_for_training(backbone)     in place: state-dict keys unchanged (no ``_orig_mod.``), so checkpoints
         │                             resume, export and evaluate with or without compile
         ├─ no compiler for the device ───────────────────────────▶ eager, one warning naming the reason
         ▼
    backbone(...) in training mode, gradients on
         ├─ first call: traced and compiled (forward and backward) ─ fails ─▶ eager, one warning naming the reason
         ├─ same shapes and types as the compiled call ─────────────▶ the compiled graph
         └─ anything else (the last, shorter batch, ...) ────────────▶ eager for that call, never a recompile
    backbone(...) in eval mode or without gradients (validation, sampling) ─▶ eager, never a recompile

``auto`` compiles where the measured figures say it pays (:func:`resolve_compile`; the figures are in
``benchmarks/results/train-compiled-cpu-2026-12-07.md``).
"""

from __future__ import annotations

import math
import shutil
import warnings
from collections.abc import Callable
from typing import Literal

import torch
from lightning.pytorch.utilities import rank_zero_info
from torch import nn

from zoo import compat

CompileSetting = bool | Literal["auto"]

BACKEND: str | Callable = "inductor"  # what `compile: true` compiles with (tests swap in a failing backend)

# ``auto``: compile only where compiling won, and only when its compile time is repaid within the first
# PAYBACK_FRACTION of the run: trainer.max_steps × PAYBACK_FRACTION ≥ the steps that repay it (the cold compile time
# over the seconds saved per step). Those steps were measured for every preset on a 2-core AVX512-BF16 CPU
# (benchmarks/results/train-compiled-cpu-2026-12-07.md); a model takes the figure of the measured preset nearest
# to it in non-embedding parameters (log scale). ``None``: compiled was not faster there, so ``auto`` never compiles.
PAYBACK_FRACTION = 0.10
MIN_SPEEDUP = 1.05  # compiled/eager tokens/s below this counted as no win (within the machine's drift): None
PAYBACK_STEPS: dict[str, dict[str, tuple[int, int | None]]] = {  # precision: {preset: (parameters, steps)}
    "bf16": {"quickstart": (2_361_792, 350), "gpt-s-5m": (4_372_032, 1_971), "supra-50m": (35_402_240, None),
             "gpt2-124m": (84_953_856, 40)},
    "fp32": {"quickstart": (2_361_792, None), "gpt-s-5m": (4_372_032, None), "supra-50m": (35_402_240, None),
             "gpt2-124m": (84_953_856, None)},  # GPT-2 124M: 1.02×, below MIN_SPEEDUP
}


def compiler_missing(device: torch.device) -> str | None:
    """Why inductor cannot compile for ``device`` (a sentence), or ``None`` when it can."""
    if device.type == "cpu":
        compiler = compat.inductor_cpp_compiler()  # $CXX, else g++ (inductor's own choice)
        if shutil.which(compiler) is None:
            return (f"inductor compiles C++ for the CPU and no C++ compiler ({compiler!r}) is on PATH (set $CXX or "
                    "install g++)")  # fmt: skip
    elif device.type == "cuda" and not compat.triton_available():
        return "inductor needs Triton for CUDA and it is not installed (pip install triton)"
    return None


def _precision_name(trainer) -> str:
    precision = str(getattr(trainer, "precision", "32-true") if trainer is not None else "32-true")
    return "bf16" if "bf16" in precision else "fp16" if precision.startswith("16") else "fp32"


def resolve_compile(
    setting: CompileSetting, *, trainer=None, parameters: int | None = None, sharded: bool = False
) -> tuple[bool, str]:
    """Whether to compile, and why (a phrase for the log). ``True`` and ``False`` are kept as given (``True`` may
    still fall back, see :func:`compile_for_training`). ``auto`` compiles a run on one device or data-parallel (not
    sharded: unmeasured) when the measured preset nearest to the model's ``parameters`` (non-embedding) won in the
    run's precision and ``trainer.max_steps`` is long enough to repay the compile time early (``PAYBACK_STEPS``)."""
    if setting is True or setting is False:
        return setting, f"compile={setting}"
    if setting != "auto":
        raise ValueError(f"model compile={setting!r} is not one of true, false, auto: pick one of them")
    compile, reason = _auto(trainer, parameters, sharded)
    rank_zero_info(reason)
    return compile, reason


def _auto(trainer, parameters: int | None, sharded: bool) -> tuple[bool, str]:
    if sharded:
        return False, "compile=auto: a sharded strategy trains eager"
    device = getattr(getattr(trainer, "strategy", None), "root_device", torch.device("cpu"))
    if device.type != "cpu":  # the figures are a CPU's; elsewhere `compile: true` asks for it
        return False, f"compile=auto: compiling was measured on CPUs only, and this run trains on {device.type}"
    precision = _precision_name(trainer)
    measured = PAYBACK_STEPS.get(precision)
    if not measured or parameters is None:
        return False, f"compile=auto: compiling was not measured for {precision}"
    preset, (_, payback) = min(measured.items(), key=lambda item: abs(math.log(item[1][0] / max(parameters, 1))))
    if payback is None:
        return False, f"compile=auto: compiling did not speed up {preset} in {precision}"
    steps = getattr(trainer, "max_steps", -1)
    if steps is None or steps * PAYBACK_FRACTION < payback:
        return False, (f"compile=auto: max_steps={steps} is too short to repay compiling ({payback} steps at "
                       f"{preset} in {precision}, within the first {PAYBACK_FRACTION:.0%})")
    return True, f"compile=auto: {payback} steps repay compiling at {preset} in {precision}"


def _device(module: nn.Module) -> torch.device:
    for tensor in module.parameters():
        return tensor.device
    return torch.device("cpu")


def _signature(args, kwargs) -> tuple:
    """What decides whether a call can reuse the compiled graph: each argument's type, and a tensor's shape,
    dtype and device."""

    def one(value):
        if isinstance(value, torch.Tensor):
            return (tuple(value.shape), value.dtype, value.device)
        return value if isinstance(value, (bool, int, float, str, type(None))) else type(value)

    return tuple(map(one, args)), tuple(sorted((k, one(v)) for k, v in kwargs.items()))


class _TrainingCall:
    """``module``'s call while compiled: the compiled graph for training calls of the first call's signature, eager
    for every other call, and eager for good (one warning) when compiling fails."""

    def __init__(self, module: nn.Module, *, backend: str | Callable) -> None:
        self.module = module
        # static shapes: no symbolic sizes in the kernels, and a differing call runs eager instead of a recompile
        self.compiled = torch.compile(compat.eager_call(module), backend=backend, dynamic=False)
        self.signature: tuple | None = None
        self.eager_calls = 0  # training calls that did not match the compiled signature

    def __call__(self, *args, **kwargs):
        module = self.module
        if not (module.training and torch.is_grad_enabled()):  # validation, sampling: no graph for them
            return compat.eager_call(module)(*args, **kwargs)
        signature = _signature(args, kwargs)
        if self.signature is not None and signature != self.signature:
            self.eager_calls += 1
            return compat.eager_call(module)(*args, **kwargs)
        try:
            # after the first call the graph is only reused, never recompiled (a guard the signature misses, e.g.
            # a changed global flag, runs eager)
            stance = "default" if self.signature is None else "eager_on_recompile"
            with torch.compiler.set_stance(stance):
                out = self.compiled(*args, **kwargs)
        except Exception as err:  # the compiler's failure, or the call's own error: eager tells them apart
            out = compat.eager_call(module)(*args, **kwargs)  # the call's own error is raised here, as without compile
            _fall_back(module, compile_failure(err))
            return out
        self.signature = signature
        return out


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0][:300] if text else '(no message)'}"


def compile_failure(err: BaseException) -> str:
    """Why compiling failed, for a warning: the error's first line, and its innermost cause's (a backend's failure
    arrives wrapped by dynamo)."""
    inner = err
    while (getattr(inner, "inner_exception", None) or inner.__cause__) is not None:
        inner = getattr(inner, "inner_exception", None) or inner.__cause__
    return _first_line(err) if inner is err else f"{_first_line(err)} {_first_line(inner)}"


def _fall_back(module: nn.Module, reason: str) -> None:
    compat.compiled_call_slot(module, None)  # eager again (see compile_for_training)
    warnings.warn(f"torch.compile could not compile the model, so training runs eager: {reason}", stacklevel=3)


def compile_for_training(module: nn.Module, *, backend: str | Callable | None = None) -> bool:
    """Compile ``module``'s training calls in place (its parameter names unchanged); returns whether it is compiled.

    Where the backend cannot compile (no C++ compiler for inductor on a CPU, no Triton on CUDA, an op it cannot
    lower, a backend that raises) the module runs eager and ONE warning names the reason; a run never stops for
    it. Compiling happens at the first training call, i.e. after a strategy (DDP, FSDP) has wrapped the model.
    Only calls with the first call's shapes use the compiled graph; others run eager (see the module's diagram)."""
    backend = BACKEND if backend is None else backend
    if backend == "inductor":
        reason = compiler_missing(_device(module))
        if reason is not None:
            warnings.warn(f"torch.compile is not available, so training runs eager: {reason}", stacklevel=2)
            return False
    # nn.Module.compile keeps its compiled call in this slot (so parameters keep their names); zoo puts its own
    # call there, which adds the fallback and the one-signature rule
    compat.compiled_call_slot(module, _TrainingCall(module, backend=backend))
    return True


def compiled_call(module: nn.Module) -> _TrainingCall | None:
    """The compiled training call of ``module`` (its signature and ``eager_calls`` count), or ``None`` when the
    module runs eager."""
    call = compat.compiled_call_slot(module)
    return call if isinstance(call, _TrainingCall) else None
