"""What an objective says about the model it trains, once: :class:`ModelDescription` (``model.description``).

Every part of zoo that must know "what kind of model is this" asks the description, never the objective's class,
a string or an attribute of the objective: ``zoo generate`` (which sampler, which options, which precision), the
harness model and the eval callback (which scorer), the exporters (GGUF's ``llada`` or ``llama``, the remote code's
mask token and shift) and the model card::

    objective ──▶ description ──▶ kind         AUTOREGRESSIVE | MASKED_DIFFUSION       (card, GGUF, remote code)
                                  mask_id, shift, block_size                          (the samplers, the exporters)
                                  sampler ──▶ SamplerFamily: options class, sample()  (zoo generate, harness, eval)
                                  scoring      LOG_LIKELIHOOD | ELBO                  (zoo eval, the harness)
                                  cpu_precision                                       (--precision auto)

A new objective that samples its own way brings a :class:`SamplerFamily` (a frozen dataclass of documented options
and a ``sample`` function) in its own file; ``zoo generate`` lists the options from that class and calls the function
(``tests/objectives/test_plugin.py`` adds one).
"""

from __future__ import annotations

import contextlib
import dataclasses
import enum
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol


class ModelKind(enum.Enum):
    """What the network predicts: the next token from the past (``AUTOREGRESSIVE``: causal attention, KV-cache
    decoding, exported as llama.cpp's ``llama``/``qwen3``) or masked tokens from both sides (``MASKED_DIFFUSION``:
    bidirectional attention, unmasked over steps, exported as ``llada``)."""

    AUTOREGRESSIVE = "autoregressive"
    MASKED_DIFFUSION = "masked-diffusion"


class Scoring(enum.Enum):
    """How the model scores a continuation: its exact log-likelihood (:class:`zoo.eval.CausalScorer`) or a
    Monte-Carlo ELBO lower bound (:class:`zoo.eval.ElboScorer`), for models without an exact likelihood."""

    LOG_LIKELIHOOD = "log-likelihood"
    ELBO = "elbo"


class SampleFunction(Protocol):
    """A sampler family's entry: continue each prompt (token ids) of ``backbone`` with ``options`` (an instance of
    the family's options class); the other arguments are the same for every family. Returns a
    :class:`zoo.generation.Generation` (new tokens, texts cut at the EOS and the first ``stop`` string, finish
    reasons, forward passes)."""

    def __call__(
        self,
        backbone,
        prompts: Sequence[Sequence[int]],
        options: Any,
        *,
        description: ModelDescription,
        temperature: float,
        eos_id: int | None,
        stop: Sequence[str],
        tokenizer,
        generator,
        on_token: Callable[[int, int, str], None] | None,
    ): ...


@dataclass(frozen=True)
class SamplerFamily:
    """A way of sampling, with its own options.

    Args:
        name: what the family is called in messages and in ``zoo generate --help`` (e.g. ``autoregressive``).
        options: a frozen dataclass whose fields are the family's options, each documented in its docstring (that
            text is the ``--help`` of the option; the field ``top_k`` is the flag ``--top-k``); the defaults are the
            family's defaults.
        sample: the :class:`SampleFunction`.
        length: the field of ``options`` that holds the answer length, which callers that know no family's options
            (``zoo eval``'s code tasks, the harness) set: ``model.sample(prompts, max_new_tokens=n)`` sets it.
        streams: whether ``sample`` calls ``on_token`` as tokens are decided (``zoo generate --stream``); a family
            that decides them all at once ignores it.
        context: a context manager factory ``context(backbone)`` entered once around many ``sample`` calls (e.g.
            AR decoding's weight layout); ``None``: nothing to enter.
        note: ``note(description, options)``: a line ``zoo generate`` prints on stderr after sampling (e.g. which
            KV cache ran), or ``None``.
    """

    name: str
    options: type
    sample: SampleFunction
    length: str
    streams: bool = False
    context: Callable[[Any], contextlib.AbstractContextManager] | None = None
    note: Callable[[ModelDescription, Any], str] | None = None

    def __post_init__(self) -> None:
        assert dataclasses.is_dataclass(self.options), f"{self.name}: options must be a dataclass"
        assert self.length in self.option_names(), f"{self.name}: length={self.length!r} is not an option"

    def option_names(self) -> list[str]:
        """The fields of the options class, in order."""
        return [f.name for f in dataclasses.fields(self.options)]

    def flags(self) -> list[str]:
        """The command-line spellings of the options (``--max-new-tokens``), in order."""
        return [flag(name) for name in self.option_names()]

    def make_options(self, **values):
        """The options class built from ``values`` (the others at their defaults); ``max_new_tokens`` stands for the
        family's ``length`` field. An unknown name is refused naming the family's options."""
        if "max_new_tokens" in values and self.length != "max_new_tokens":
            values[self.length] = values.pop("max_new_tokens")
        unknown = sorted(set(values) - set(self.option_names()))
        if unknown:
            raise ValueError(
                f"{', '.join(unknown)}: not options of {self.name} sampling; its options are "
                f"{', '.join(self.option_names())}"
            )
        return self.options(**values)


def flag(name: str) -> str:
    """The command-line flag of an option field: ``top_k`` → ``--top-k``."""
    return "--" + name.replace("_", "-")


@dataclass(frozen=True)
class ModelDescription:
    """What kind of model an objective trains, answered once (``model.description``).

    Args:
        kind: :class:`ModelKind`: autoregressive or masked diffusion.
        sampler: the :class:`SamplerFamily` that samples it.
        scoring: :class:`Scoring`: exact log-likelihoods or ELBO bounds.
        mask_id: the mask token of a masked-diffusion model (``None`` otherwise, or before a dedicated id is chosen).
        shift: the logits at position ``i`` predict token ``i + 1`` (autoregressive models, and diffusion models
            that kept the AR shift).
        block_size: the block size of a block-causal diffusion model (trained to its end with block diffusion,
            ``BlockWarmupStableDecay(decay_block=…)``), or ``None``.
        cpu_precision: the precision ``--precision auto`` samples at on a CPU (``32-true`` for AR decoding, whose
            one-position steps autocast only slows), or ``None`` for the CPU's fastest; other devices take theirs.
    """

    kind: ModelKind
    sampler: SamplerFamily
    scoring: Scoring
    mask_id: int | None = None
    shift: bool = False
    block_size: int | None = None
    cpu_precision: Literal["32-true", "bf16-mixed"] | None = None

    @property
    def diffusion(self) -> bool:
        """Whether this is a masked-diffusion model."""
        return self.kind is ModelKind.MASKED_DIFFUSION

    def preferred_precision(self, device_type: str) -> str | None:
        """The inference precision this model prefers on a device of ``device_type`` (``cpu``, ``cuda``), or
        ``None`` for the device's fastest."""
        return self.cpu_precision if device_type == "cpu" else None

    def sampling_context(self, backbone) -> contextlib.AbstractContextManager:
        """The sampler's context for many calls on ``backbone`` (:attr:`SamplerFamily.context`)."""
        return self.sampler.context(backbone) if self.sampler.context is not None else contextlib.nullcontext()
