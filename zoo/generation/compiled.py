"""The decoding step under ``torch.compile``, with an eager fallback.

Autoregressive decoding runs one position per step through every layer; for a small model on a CPU most of a
step's time is the per-operation overhead of eager PyTorch (dispatch and one small kernel per op), which a
compiled step removes (the gpt-fast approach): a static KV cache preallocated to the request's length
(:class:`zoo.nn.DecodingCache` with ``static=True``), the position as a tensor, and one graph of fixed shapes
for the one-token step. Compiling takes seconds to minutes; a step compiled once is reused by every later call
with the same shapes (the same batch size and cache length; a second shape makes dynamo compile a shape-generic
graph).

The masked-diffusion sampler's passes (:func:`zoo.generation.diffusion_generate` with ``compile``) are compiled
the same way: each pass over a window of the sequence (a block, with or without the suffix, reading the rest from
the block-wise KV cache; or the whole sequence) is one graph; the window's start is a Python integer that dynamo
makes symbolic at its second value, so the passes of every block share a graph. Their products are real matrix
products (a block's rows, not one), which compiling leaves to the same BLAS: at the quickstart's shape the
sampler ran 1.2× faster compiled (``benchmarks/results/decode-compiled-cpu-2026-12-07.md``).

Where the backend cannot compile (no C++ compiler for inductor's CPU code, an unsupported operation), the step
runs eagerly with one warning that names the reason, never an error in the middle of decoding.
"""

from __future__ import annotations

import sys
import types
import warnings
import weakref
from collections.abc import Callable

import torch
from torch import Tensor

from zoo.training.compile import compile_failure, compiler_missing

COMPILE_CHOICES = ("auto", "true", "false")

# What torch.compile is asked for: inductor's default mode. On the 2-core CPU "max-autotune-no-cudagraphs" (with
# frozen, prepacked weights) took twice as long to compile (100 s against 47 s at batch 8) and decoded no faster
# (benchmarks/results/decode-compiled-cpu-2026-12-07.md).
MODE = "default"
BACKEND: str | Callable = "inductor"


def compile_choice(value: str | bool) -> str:
    """``compile`` as given by a user (``auto``, ``true``, ``false`` or a bool) as one of :data:`COMPILE_CHOICES`."""
    text = str(value).lower() if isinstance(value, (bool, str)) else None
    if text not in COMPILE_CHOICES:
        raise ValueError(f"compile={value!r} is unknown; choose one of {list(COMPILE_CHOICES)}")
    return text


def cannot_compile(device: torch.device) -> str | None:
    """Why ``torch.compile`` cannot work here, known before trying (``None``: it may)."""
    if sys.platform == "win32":
        return "torch.compile's inductor backend is not supported on Windows"
    return compiler_missing(device) if BACKEND == "inductor" else None


def _step(backbone, cache, tokens: Tensor, mask: Tensor | None) -> Tensor:  # (B, 1) -> logits (B, V), fp32
    return backbone(tokens, mask=mask, cache=cache)[:, -1].float()


def _guards(entries) -> list[bool]:
    """Which of dynamo's guards each call checks: all but those on the backbone's module attributes, whose checks
    took 0.6 ms of a 5 ms step at batch 1 (``torch.compiler.skip_guard_on_all_nn_modules_unsafe``, but keeping the
    parameters' tensor guards: their shapes, dtypes and strides). Safe here because each backbone gets a step of
    its own (:class:`DecodeStep`) and decoding changes no module attribute; changing one (a kernel, a flag) after
    the first compiled call is not seen by the compiled step."""
    return [not e.orig_guard.source.is_unspecialized_nn_module() or e.guard_type == "TENSOR_MATCH" for e in entries]


# inductor options of the step: matrix-vector products (one row per sequence) generated as fused reductions rather
# than a BLAS call each (+10% at batch 1 on the 2-core CPU)
OPTIONS = {"guard_filter_fn": _guards, "decompose_mem_bound_mm": True}


def block_pass(backbone, tokens: Tensor, cache, mask: Tensor | None, lo: int, hi: int) -> Tensor:
    """A masked-diffusion sampler's pass over a window of ``tokens`` (B, T), reading the rest from ``cache`` (or
    ``None``: the whole sequence); the logits (B, hi - lo, V) of window rows ``lo:hi``."""
    h = backbone(tokens, mask=mask, cache=cache, features_only=True)
    return backbone.head(h[:, lo:hi])


class CompiledStep:
    """``step(backbone, *args) -> Tensor``: ``function`` compiled on first use for each backbone, or eager after
    compiling failed (one warning naming the reason, then eager for the rest of the process). Each backbone gets its
    own compiled copy of the function's code, so dynamo keeps its graphs (and its recompile limit) apart."""

    def __init__(self, function: Callable, *, name: str, what: str) -> None:
        self.function, self.name, self.what = function, name, what
        self.compiled: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # backbone -> compiled step
        self.failure: str | None = None

    def __call__(self, backbone, *args) -> Tensor:
        if self.failure is None:
            step = self.compiled.get(backbone)
            if step is None:
                function = self.function
                own = types.FunctionType(function.__code__.replace(), function.__globals__, self.name)
                options = OPTIONS if BACKEND == "inductor" else {"guard_filter_fn": _guards}
                # fullgraph: one graph or an error (then eager), never a step half run compiled and half eager
                step = self.compiled[backbone] = torch.compile(
                    own, backend=BACKEND, mode=None if MODE == "default" else MODE, fullgraph=True, options=options
                )
            try:
                return step(backbone, *args)
            except Exception as error:  # compiling failed before anything ran: the cache is unchanged
                self.fail(compile_failure(error))
        return self.function(backbone, *args)

    def fail(self, reason: str) -> None:
        """Run eagerly from now on, saying why once."""
        if self.failure is None:
            self.failure = reason
            warnings.warn(f"the compiled {self.what} runs eagerly: {reason}", RuntimeWarning, stacklevel=3)


class DecodeStep(CompiledStep):
    """The autoregressive one-token step (:func:`zoo.generation.generate` with ``compile``)."""

    def __init__(self) -> None:
        super().__init__(_step, name="decode_step", what="decoding step")


class BlockPass(CompiledStep):
    """The masked-diffusion sampler's pass (:func:`zoo.generation.diffusion_generate` with ``compile``)."""

    def __init__(self) -> None:
        super().__init__(block_pass, name="block_pass", what="diffusion pass")


DECODE_STEP = DecodeStep()
BLOCK_PASS = BlockPass()
