"""One entry for sampling any zoo objective: :func:`sample`, which asks the objective for its own sampler.

::

    sample(model, prompts, max_new_tokens=…) ─▶ model.sample(…) ─▶ CausalLM: KV-cache decoding (autoregressive)
                                                                 └▶ MaskedDiffusionLM: the diffusion samplers

Both return a :class:`zoo.generation.Generation`. Decoding an answer (cut at the first EOS, decoded, cut before
the first stop string) is written once, in :func:`answer_text`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from zoo.generation.autoregressive import Generation


def sample(model, prompts: Sequence[Sequence[int]], **options) -> Generation:
    """Continue each prompt (token ids) with ``model``'s own sampler; ``options`` as that sampler takes them
    (:meth:`zoo.objectives.CausalLM.sample`, :meth:`zoo.objectives.MaskedDiffusionLM.sample`)."""
    return model.sample(prompts, **options)


def answer_text(tokenizer, ids: Sequence[int], *, eos_id: int | None, stop: Sequence[str] = ()) -> tuple[str, str]:
    """The decoded answer of new tokens ``ids``: cut before the first EOS, decoded, and cut before the first of
    the ``stop`` strings; with the finish reason (``"eos"``, ``"stop"`` or ``"length"``)."""
    ids = list(ids)
    reason = "length"
    if eos_id is not None and eos_id in ids:
        ids, reason = ids[: ids.index(eos_id)], "eos"
    text = tokenizer.decode(ids) if tokenizer is not None else ""
    cut = cut_at_stop(text, stop)
    return cut, reason if len(cut) == len(text) else "stop"


def cut_at_stop(text: str, stop: Sequence[str]) -> str:
    """``text`` up to the first occurrence of any of the ``stop`` strings."""
    cut = min((i for i in (text.find(s) for s in stop) if i >= 0), default=len(text))
    return text[:cut]


def sample_diffusion(
    model,
    prompts: Sequence[Sequence[int]],
    *,
    max_new_tokens: int,
    temperature: float = 0.0,
    eos_id: int | None = None,
    stop: Sequence[str] = (),
    tokenizer=None,
    generator: torch.Generator | None = None,
    block_length: int | None = None,
    steps: int | None = None,
    threshold: float | None = None,
    remasking: str = "low_confidence",
) -> Generation:
    """A masked-diffusion objective's answers of ``max_new_tokens`` tokens to each prompt: LLaDA's low-confidence
    remasking over ``steps`` (default: one token per step), or confidence-threshold parallel decoding when
    ``threshold`` is given, in semi-autoregressive blocks of ``block_length`` tokens (default: 32 where that
    divides ``max_new_tokens``, else one block). Prompts of equal length run as one batch. ``tokens`` holds each
    whole answer (after its first EOS everything is EOS); ``texts`` are cut at the EOS and the stop strings."""
    from zoo.generation.diffusion import confidence_threshold, low_confidence_remasking

    device = model.backbone.embed.weight.device
    if block_length is None:
        block_length = 32 if max_new_tokens % 32 == 0 else max_new_tokens
    common = {"mask_id": model.mask_id, "vocab_size": model.backbone.vocab_size, "gen_length": max_new_tokens,
              "block_length": block_length, "temperature": temperature, "eos_id": eos_id, "shift": model.shift,
              "generator": generator}  # fmt: skip
    tokens: list[list[int] | None] = [None] * len(prompts)
    passes = 0
    by_length: dict[int, list[int]] = {}
    for i, ids in enumerate(prompts):
        by_length.setdefault(len(ids), []).append(i)
    for rows in by_length.values():  # the samplers take prompts of one length
        prompt = torch.tensor([list(prompts[i]) for i in rows], device=device)
        if threshold is not None:
            out = confidence_threshold(model.backbone, prompt, threshold=threshold, **common)
        else:
            out = low_confidence_remasking(model.backbone, prompt, steps=max_new_tokens if steps is None else steps,
                                           remasking=remasking, **common)  # fmt: skip
        passes += out.forward_passes
        for i, answer in zip(rows, out.answer.tolist()):
            tokens[i] = answer
    answers = [answer_text(tokenizer, t, eos_id=eos_id, stop=stop) for t in tokens]
    return Generation(tokens=tokens, texts=[a for a, _ in answers] if tokenizer is not None else None,
                      finish_reasons=[r for _, r in answers], forward_passes=passes)  # fmt: skip
