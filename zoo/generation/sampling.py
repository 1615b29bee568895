"""One entry for sampling any zoo objective: :func:`sample`, which asks the objective for its own sampler.

::

    sample(model, prompts, max_new_tokens=…) ─▶ model.sample(…) ─▶ model.description.sampler
                                                                 ├▶ autoregressive: KV-cache decoding
                                                                 └▶ masked-diffusion: the diffusion samplers

Both return a :class:`zoo.generation.Generation`. Decoding an answer (cut at the first EOS, decoded, cut before
the first stop string) is written once, in :func:`answer_text`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from zoo.generation.autoregressive import Generation


def sample(model, prompts: Sequence[Sequence[int]], **options) -> Generation:
    """Continue each prompt (token ids) with ``model``'s own sampler (:meth:`zoo.objectives.LanguageModel.sample`:
    the sampler family its description names); ``options`` as that family's options class names them."""
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
    backbone,
    prompts: Sequence[Sequence[int]],
    *,
    mask_id: int,
    shift: bool = False,
    block_size: int | None = None,
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
    cache: str = "none",
    refresh: str = "block",
    compile: bool | str = False,
) -> Generation:
    """A masked-diffusion ``backbone``'s answers of ``max_new_tokens`` tokens to each prompt
    (:func:`zoo.generation.diffusion_generate`), with the model's ``mask_id``, ``shift`` and ``block_size`` (a
    block-causal model's blocks, else ``None``) as its :class:`~zoo.objectives.description.ModelDescription` gives
    them: LLaDA's low-confidence remasking over ``steps`` (default: one token per step), confidence-threshold
    parallel decoding when ``threshold`` is given (with ``steps`` too: at least each step's share), in
    semi-autoregressive blocks of ``block_length`` tokens (default: ``block_size``, else 32 where that divides
    ``max_new_tokens``, else one block), with a block-wise KV ``cache`` (``none``, ``prefix``, ``dual``; exact for a
    block-causal model), each pass compiled with ``compile``. Prompts of different lengths run as one left-padded batch
    (prompts of one length at a time where padding would change the answers). ``tokens`` holds each whole answer (after
    its first EOS everything is EOS); ``texts`` are cut at the EOS and the stop strings."""
    from zoo.generation.autoregressive import left_padding_is_exact
    from zoo.generation.fast_diffusion import diffusion_generate

    if block_length is None:
        block_length = block_size or (32 if max_new_tokens % 32 == 0 else max_new_tokens)
    if steps is None and threshold is None:
        steps = max_new_tokens
    common = {"mask_id": mask_id, "vocab_size": backbone.vocab_size, "gen_length": max_new_tokens,
              "block_length": block_length, "steps": steps, "threshold": threshold, "remasking": remasking,
              "cache": cache, "refresh": refresh, "block_causal": block_size is not None, "temperature": temperature,
              "eos_id": eos_id, "shift": shift, "generator": generator, "compile": compile}  # fmt: skip
    groups: dict[int, list[int]] = {}
    for i, ids in enumerate(prompts):  # one batch, or one per prompt length where padding is not exact
        groups.setdefault(0 if left_padding_is_exact(backbone) else len(ids), []).append(i)
    tokens: list[list[int] | None] = [None] * len(prompts)
    passes = 0
    for rows in groups.values():
        out = diffusion_generate(backbone, [list(prompts[i]) for i in rows], **common)
        passes += out.forward_passes
        for i, answer in zip(rows, out.answer.tolist()):
            tokens[i] = answer
    answers = [answer_text(tokenizer, t, eos_id=eos_id, stop=stop) for t in tokens]
    return Generation(tokens=tokens, texts=[a for a, _ in answers] if tokenizer is not None else None,
                      finish_reasons=[r for _, r in answers], forward_passes=passes)  # fmt: skip
