"""The training step under ``torch.compile``, with eager as the fallback (``model.compile: true | false | auto``).

    compile_for_training(backbone)     in place: state-dict keys unchanged (no ``_orig_mod.``), so checkpoints
         │                             resume, export and evaluate with or without compile
         ├─ no compiler for the device ───────────────────────────▶ eager, one warning naming the reason
         ▼
    each region: every block (scope ``blocks``, the default: blocks of one class share one graph, so the cold
         │       compile is one block's) or the whole backbone (scope ``model``); the rest runs eager
         ▼
    region(...) in training mode, gradients on
         ├─ first call: traced and compiled (forward and backward) ─ fails ─▶ every region eager, one warning
         ├─ same shapes and types as the compiled call ─────────────▶ the compiled graph
         └─ anything else (the last, shorter batch, ...) ────────────▶ eager for that call, never a recompile
    region(...) in eval mode or without gradients (validation, sampling) ──▶ eager, never a recompile

``auto`` compiles where the measured figures say it pays (:func:`resolve_compile`; the figures are in
``benchmarks/results/train-compiled-idle-cpu-2026-12-07.md``).
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

Scope = Literal["blocks", "model"]
CompileSetting = bool | Literal["auto", "blocks", "model"]

BACKEND: str | Callable = "inductor"  # what `compile: true` compiles with (tests swap in a failing backend)
SCOPE: Scope = "blocks"  # what `compile: true` compiles: each block (see compile_for_training)

# ``auto``: compile only where compiling won, and only when its compile time is repaid within the first
# PAYBACK_FRACTION of the run: trainer.max_steps × PAYBACK_FRACTION ≥ the steps that repay it (the cold compile time
# over the seconds saved per step), in the scope that repays soonest. Those steps were measured for every preset and
# seed shape on an idle 2-core AVX512-BF16 CPU (benchmarks/results/train-compiled-idle-cpu-2026-12-07.md); a model takes
# the figures of the measured shape nearest to it in non-embedding parameters (log scale). A scope left out:
# compiled in that scope was not faster there (below MIN_SPEEDUP); no scope: ``auto`` never compiles there.
PAYBACK_FRACTION = 0.10
MIN_SPEEDUP = 1.05  # compiled/eager tokens/s below this counted as no win (within the machine's drift)
PAYBACK_STEPS: dict[str, dict[str, tuple[int, dict[Scope, int]]]] = {  # precision: {shape: (parameters, steps)}
    "bf16": {"quickstart": (2_361_792, {"model": 2_307}), "gpt-s-5m": (4_372_032, {"model": 2_171}),
             "supra-50m": (35_402_240, {"blocks": 96, "model": 228}), "dhara-70m": (52_027_776, {}),
             "gpt2-124m": (84_953_856, {}), "smallcoder-303m": (264_278_784, {})},
    "fp32": {"quickstart": (2_361_792, {"model": 1_358}), "gpt-s-5m": (4_372_032, {"model": 809}),
             "supra-50m": (35_402_240, {}), "dhara-70m": (52_027_776, {}), "gpt2-124m": (84_953_856, {}),
             "smallcoder-303m": (264_278_784, {"blocks": 19, "model": 102})},
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
) -> tuple[Scope | None, str]:
    """What to compile (a scope, ``None`` for eager), and why (a phrase for the log). ``true`` compiles in
    :data:`SCOPE` (each block), ``blocks`` and ``model`` in that scope, ``false`` nothing; all may still fall back
    (see :func:`compile_for_training`). ``auto`` compiles a run on one device or data-parallel (not sharded:
    unmeasured) when the measured shape nearest to the model's ``parameters`` (non-embedding) won in the run's
    precision and ``trainer.max_steps`` is long enough to repay the compile time early (``PAYBACK_STEPS``), in
    the scope that repays it soonest."""
    if setting is True or setting in ("blocks", "model"):
        scope = SCOPE if setting is True else setting
        return scope, f"compile={setting}: compiling {'each block' if scope == 'blocks' else 'the whole backbone'}"
    if setting is False:
        return None, "compile=False"
    if setting != "auto":
        raise ValueError(f"model compile={setting!r} is not one of true, false, auto, blocks, model: pick one of them")
    scope, reason = _auto(trainer, parameters, sharded)
    rank_zero_info(reason)
    return scope, reason


def _auto(trainer, parameters: int | None, sharded: bool) -> tuple[Scope | None, str]:
    if sharded:
        return None, "compile=auto: a sharded strategy trains eager"
    device = getattr(getattr(trainer, "strategy", None), "root_device", torch.device("cpu"))
    if device.type != "cpu":  # the figures are a CPU's; elsewhere `compile: true` asks for it
        return None, f"compile=auto: compiling was measured on CPUs only, and this run trains on {device.type}"
    precision = _precision_name(trainer)
    measured = PAYBACK_STEPS.get(precision)
    if not measured or parameters is None:
        return None, f"compile=auto: compiling was not measured for {precision}"
    shape, (_, paybacks) = min(measured.items(), key=lambda item: abs(math.log(item[1][0] / max(parameters, 1))))
    if not paybacks:
        return None, f"compile=auto: compiling did not speed up {shape} in {precision}"
    scope, payback = min(paybacks.items(), key=lambda item: item[1])
    steps = getattr(trainer, "max_steps", -1)
    if steps is None or steps * PAYBACK_FRACTION < payback:
        return None, (f"compile=auto: max_steps={steps} is too short to repay compiling ({payback} steps at "
                      f"{shape} in {precision}, within the first {PAYBACK_FRACTION:.0%})")
    return scope, f"compile=auto: {payback} steps repay compiling {scope} at {shape} in {precision}"


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


class CompiledTraining:
    """What :func:`compile_for_training` installed on a model: one compiled training call per region (the whole
    module, or each of its blocks), sharing one fallback: when compiling any region fails, every region runs eager
    and one warning says why."""

    def __init__(self, regions: list[nn.Module], *, backend: str | Callable) -> None:
        self.calls = [_TrainingCall(region, self, backend=backend) for region in regions]
        self.failure: str | None = None  # why compiling failed, once it has
        for call in self.calls:
            # nn.Module.compile keeps its compiled call in this slot (so parameters keep their names); zoo puts
            # its own call there, which adds the fallback and the one-signature rule
            compat.compiled_call_slot(call.module, call)

    @property
    def regions(self) -> list[nn.Module]:
        """The modules compiled, each on its own."""
        return [call.module for call in self.calls]

    @property
    def signature(self) -> tuple | None:
        """The first region's compiled signature (``None`` before the first training call)."""
        return self.calls[0].signature

    @property
    def eager_calls(self) -> int:
        """Training calls of a region that did not match its compiled signature and ran eager (the most of any
        region: with one compiled call per block, one forward pass counts once)."""
        return max(call.eager_calls for call in self.calls)

    def fall_back(self, reason: str) -> None:
        if self.failure is None:
            self.failure = reason
            for region in self.regions:
                compat.compiled_call_slot(region, None)  # eager again
            warnings.warn(f"torch.compile could not compile the model, so training runs eager: {reason}",
                          stacklevel=4)


class _TrainingCall:
    """A region's call while compiled: the compiled graph for training calls of the first call's signature, eager
    for every other call, and eager for good (the whole model, one warning) when compiling fails."""

    def __init__(self, module: nn.Module, owner: CompiledTraining, *, backend: str | Callable) -> None:
        self.module, self.owner = module, owner
        # static shapes: no symbolic sizes in the kernels, and a differing call runs eager instead of a recompile
        self.compiled = torch.compile(compat.eager_call(module), backend=backend, dynamic=False)
        self.signature: tuple | None = None
        self.eager_calls = 0  # training calls that did not match the compiled signature

    def __call__(self, *args, **kwargs):
        module = self.module
        if not (module.training and torch.is_grad_enabled()):  # validation, sampling: no graph for them
            return compat.eager_call(module)(*args, **kwargs)
        signature = _signature(args, kwargs)
        if self.signature is not None:
            if signature != self.signature:
                self.eager_calls += 1
                return compat.eager_call(module)(*args, **kwargs)
            # compiled: the graph is only reused, never recompiled (a guard the signature misses, e.g. a changed
            # global flag, runs eager), and what it raises is the call's own (activation checkpointing stops a
            # recomputation by raising through it)
            with torch.compiler.set_stance("eager_on_recompile"):
                return self.compiled(*args, **kwargs)
        try:
            out = self.compiled(*args, **kwargs)
        except Exception as err:  # the compiler's failure, or the call's own error: eager tells them apart
            out = compat.eager_call(module)(*args, **kwargs)  # the call's own error is raised here, as without compile
            self.owner.fall_back(compile_failure(err))
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


def compile_for_training(
    module: nn.Module, *, backend: str | Callable | None = None, scope: Scope | None = None
) -> CompiledTraining | None:
    """Compile ``module``'s training calls in place (its parameter names unchanged); returns what was installed,
    or ``None`` when the module runs eager.

    ``scope``: ``blocks`` (default) compiles each of ``module.blocks`` on its own and runs the rest (embedding,
    final norm, the fused head and loss) eager: blocks of one class share one compiled graph, so the cold
    compile is about one block's rather than the whole depth's unrolled; ``model`` compiles ``module``'s whole
    call as one graph (a module without ``blocks`` is compiled whole either way). Both were measured in
    ``benchmarks/results/train-compiled-idle-cpu-2026-12-07.md``.

    Where the backend cannot compile (no C++ compiler for inductor on a CPU, no Triton on CUDA, an op it cannot
    lower, a backend that raises) the module runs eager and ONE warning names the reason; a run never stops for
    it. Compiling happens at the first training call, i.e. after a strategy (DDP, FSDP) has wrapped the model.
    Only calls with the first call's shapes use the compiled graph; others run eager (see the module's diagram)."""
    scope = SCOPE if scope is None else scope
    if scope not in ("model", "blocks"):
        raise ValueError(f"compile scope={scope!r} is not one of model, blocks: pick one of them")
    backend = BACKEND if backend is None else backend
    if backend == "inductor":
        reason = compiler_missing(_device(module))
        if reason is not None:
            warnings.warn(f"torch.compile is not available, so training runs eager: {reason}", stacklevel=2)
            return None
    blocks = getattr(module, "blocks", None)
    regions = list(blocks) if scope == "blocks" and isinstance(blocks, nn.ModuleList) and len(blocks) else [module]
    return CompiledTraining(regions, backend=backend)


def compiled_call(module: nn.Module) -> CompiledTraining | None:
    """What compiles ``module``'s training calls (its signature and ``eager_calls`` count), or ``None`` when the
    module runs eager."""
    for sub in module.modules():
        call = compat.compiled_call_slot(sub)
        if isinstance(call, _TrainingCall):
            return call.owner
    return None
