"""The sampler families of zoo's objectives: :data:`AUTOREGRESSIVE` (``CausalLM``) and :data:`MASKED_DIFFUSION`
(``MaskedDiffusionLM``), each an options class whose fields ``zoo generate`` lists and a function that hands them,
with what the model's :class:`~zoo.objectives.description.ModelDescription` says, to :mod:`zoo.generation`."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal

from zoo.generation.diffusion import REMASKING
from zoo.generation.fast_diffusion import CACHES, REFRESH
from zoo.objectives.description import ModelDescription, SamplerFamily


@dataclass(frozen=True)
class AutoregressiveOptions:
    """Autoregressive checkpoints: KV-cache decoding, one token per forward pass

    Args:
        max_new_tokens: tokens to generate at most
        top_k: keep the k most likely tokens (0 = all)
        top_p: nucleus probability (1 = all)
        repetition_penalty: CTRL-style penalty on tokens already in the context (1 = none)
        no_repeat_ngram_size: forbid repeated n-grams of this size (0 = off)
        compile: decode over a static KV cache with a torch.compile'd one-token step (true; the first call compiles,
            about a minute on a 2-core CPU), eagerly (false), or compiled only when cache_length is given (auto)
        cache_length: positions of the static cache, the same for every request so that one compiled step serves
            them all (default: the request's longest prompt + max_new_tokens)
    """

    max_new_tokens: int = 100
    top_k: int = 0
    top_p: float = 1.0
    repetition_penalty: float = 1.0
    no_repeat_ngram_size: int = 0
    compile: Literal["auto", "true", "false"] = "auto"
    cache_length: int | None = None


def sample_autoregressive(backbone, prompts, options: AutoregressiveOptions, *, description, temperature, eos_id,
                          stop, tokenizer, generator, on_token):  # fmt: skip
    """KV-cache decoding (:func:`zoo.generation.generate`)."""
    from zoo.generation.autoregressive import generate

    return generate(backbone, prompts, **dataclasses.asdict(options), temperature=temperature, eos_id=eos_id,
                    stop=stop, tokenizer=tokenizer, on_token=on_token, generator=generator)  # fmt: skip


def _decoding_layout(backbone):
    from zoo.generation.autoregressive import decoding_layout

    return decoding_layout(backbone)


AUTOREGRESSIVE = SamplerFamily(name="autoregressive", options=AutoregressiveOptions, sample=sample_autoregressive,
                               length="max_new_tokens", streams=True, context=_decoding_layout)  # fmt: skip


@dataclass(frozen=True)
class DiffusionOptions:
    """Masked-diffusion checkpoints: low-confidence remasking (LLaDA) and/or threshold decoding (Fast-dLLM)

    All prompts run in one left-padded batch.

    Args:
        gen_length: answer length in tokens
        block_length: semi-autoregressive block; divides gen_length (default: a block-causal model's block size,
            else 32 where that divides gen_length, else one block)
        steps: unmasking steps; a multiple of the number of blocks (default: gen_length, or none with threshold)
        threshold: parallel decoding: unmask every position at least this confident, in (0, 1]
        cache: KV cache: none, prefix or dual (block-wise; exact for block-causal models)
        refresh: when the cache is refreshed: at each block's first step (block) or every step
        remasking: which predictions a step keeps: the most confident (low_confidence) or random ones
        compile: run each pass as a torch.compile'd graph (true: the same tokens; the first call compiles, about
            20 s for the quickstart's model on a 2-core CPU, then about 1.2x faster) or eagerly (false, and auto: one
            request does not repay the compile)
    """

    gen_length: int = 64
    block_length: int | None = None
    steps: int | None = None
    threshold: float | None = None
    cache: Literal[CACHES] = "none"  # the choices the sampler defines, written once
    refresh: Literal[REFRESH] = "block"
    remasking: Literal[REMASKING] = "low_confidence"
    compile: Literal["auto", "true", "false"] = "auto"  # one flag with the autoregressive family's


def sample_masked_diffusion(backbone, prompts, options: DiffusionOptions, *, description: ModelDescription,
                            temperature, eos_id, stop, tokenizer, generator, on_token):  # fmt: skip
    """The diffusion samplers (:func:`zoo.generation.sample_diffusion`) with the model's mask token, shift and block
    size; answers are decided all at once, so ``on_token`` is not called."""
    from zoo.generation.sampling import sample_diffusion

    if description.mask_id is None:
        raise ValueError("masked-diffusion sampling needs the model's mask_id: set it (or train, which chooses it)")
    return sample_diffusion(backbone, prompts, mask_id=description.mask_id, shift=description.shift,
                            block_size=description.block_size, max_new_tokens=options.gen_length,
                            block_length=options.block_length, steps=options.steps, threshold=options.threshold,
                            cache=options.cache, refresh=options.refresh, remasking=options.remasking,
                            compile=options.compile, temperature=temperature, eos_id=eos_id, stop=stop,
                            tokenizer=tokenizer, generator=generator)  # fmt: skip


def diffusion_note(description: ModelDescription, options: DiffusionOptions) -> str:
    """Which KV cache the sampler ran, and why: ``[cache: exact (block-causal, blocks of 4 model)]``."""
    from zoo.generation.fast_diffusion import cache_used

    block = description.block_size
    kind = f"block-causal, blocks of {block}" if block is not None else "bidirectional"
    used = cache_used(options.cache, block_causal=block is not None, refresh=options.refresh)
    return f"[cache: {used} ({kind} model)]"


MASKED_DIFFUSION = SamplerFamily(name="masked-diffusion", options=DiffusionOptions, sample=sample_masked_diffusion,
                                 length="gen_length", note=diffusion_note)  # fmt: skip

FAMILIES: tuple[SamplerFamily, ...] = (AUTOREGRESSIVE, MASKED_DIFFUSION)
"""The sampler families of the objectives zoo ships (``zoo generate --help`` lists their options)."""
