"""Autoregressive sampling with a KV cache: the prompts are read once (prefill), then one token per forward pass.

A batch of prompts of different lengths is left-padded, and a mask keeps every real token from attending to the
pads (each pad attends only to itself, so no row of the score matrix is empty)::

    row 0   ·  ·  a  b  c │ d  e …        key j visible to row b  ⇔  j is not a pad of row b
    row 1   p  q  r  s  t │ u  v …        (and causal, as always)

With rotary (or no) position encoding attention depends only on the distance between tokens, so the shift the
padding adds to every absolute position of a row changes nothing (up to float rounding): a padded row decodes the
same tokens as that prompt alone. Learned absolute positions and Canon convolutions (which read the pads) do not
have that property; for such backbones prompts of different lengths are decoded in groups of equal length instead
(see :func:`left_padding_is_exact`).

Each step's logits go through, in order (as in transformers): repetition penalty, no-repeat n-gram ban, then, when
sampling, temperature, top-k and top-p. These filters are a few lines each and written here so that sampling needs
nothing beyond torch.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from tokenizers import Tokenizer
from tokenizers.decoders import DecodeStream
from torch import Tensor, nn

from zoo.generation import compiled
from zoo.generation.compiled import cannot_compile, compile_choice
from zoo.nn.transformer import Transformer


# ---- logits filters: (B, V) -> (B, V) ----------------------------------------------------------------------------
def top_k_filter(logits: Tensor, k: int) -> Tensor:
    """Keep the ``k`` largest logits of each row, set the rest to ``-inf`` (``k = 0`` or ``k ≥ V``: all kept).
    Ties with the k-th value are kept."""
    if k <= 0 or k >= logits.shape[-1]:
        return logits
    kth = logits.topk(k, dim=-1).values[..., -1:]  # (..., 1)
    return logits.masked_fill(logits < kth, float("-inf"))


def top_p_filter(logits: Tensor, p: float) -> Tensor:
    """Nucleus filter (Holtzman et al., 2020): keep the smallest set of most likely tokens whose probability
    reaches ``p``, set the rest to ``-inf``. The most likely token is always kept; ``p = 1``: all kept."""
    if p >= 1.0:
        return logits
    sorted_logits, order = logits.sort(dim=-1, descending=True)  # (..., V)
    probs = sorted_logits.float().softmax(dim=-1)
    before = probs.cumsum(dim=-1) - probs  # probability mass of the tokens ranked above each one
    drop = before >= p  # the set above it already reaches p
    return logits.masked_fill(drop.scatter(-1, order, drop), float("-inf"))


def repetition_penalty_filter(logits: Tensor, seen: Tensor, penalty: float) -> Tensor:
    """CTRL's repetition penalty (Keskar et al., 2019), as transformers applies it: the logit of every token already
    in the row's context (``seen``, (B, V) bool: prompt and generated tokens) is divided by ``penalty`` when
    positive and multiplied by it when negative, so ``penalty > 1`` always makes a repeat less likely."""
    if penalty == 1.0:
        return logits
    penalized = torch.where(logits < 0, logits * penalty, logits / penalty)
    return torch.where(seen, penalized, logits)


def banned_ngram_tokens(history: Sequence[int], n: int) -> list[int]:
    """Tokens that would complete an ``n``-gram already present in ``history`` (the row's prompt and generated
    tokens): those that followed an earlier occurrence of the last ``n - 1`` tokens. ``n = 1`` bans every token
    seen; ``n = 0`` nothing."""
    if n < 1 or len(history) + 1 < n:
        return []
    history = list(history)
    prefix = history[len(history) - n + 1 :] if n > 1 else []
    return sorted({history[i + n - 1] for i in range(len(history) - n + 1) if history[i : i + n - 1] == prefix})


def no_repeat_ngram_filter(logits: Tensor, histories: Sequence[Sequence[int]], n: int) -> Tensor:
    """Set to ``-inf`` the logits of :func:`banned_ngram_tokens` in each row (``histories[b]`` for row ``b``)."""
    if n < 1:
        return logits
    logits = logits.clone()
    for row, history in enumerate(histories):
        banned = banned_ngram_tokens(history, n)
        if banned:
            logits[row, banned] = float("-inf")
    return logits


# ---- the decoding loop ----------------------------------------------------------------------------------------
@dataclass
class Generation:
    """What :func:`generate` returns, one entry per prompt, in the order given.

    ``tokens``: the new tokens (the EOS included when it ended the row; all tokens, including those that completed
    a stop string). ``texts``: the decoded answers without the EOS and cut before the stop string (``None`` without
    a tokenizer). ``finish_reasons``: ``"eos"``, ``"stop"`` or ``"length"``. ``forward_passes``: backbone calls.
    """

    tokens: list[list[int]]
    texts: list[str] | None
    finish_reasons: list[str]
    forward_passes: int


@dataclass
class _Row:
    """Decoding state of one prompt: its tokens, its text decoded incrementally, what was streamed."""

    history: list[int]  # prompt + new tokens (for the n-gram ban)
    tokens: list[int] = field(default_factory=list)
    stream: DecodeStream | None = None
    text: str = ""
    streamed: int = 0  # characters of `text` already handed to the callback (final: no stop string inside)
    reason: str | None = None


def left_padding_is_exact(backbone: Transformer) -> bool:
    """Whether a left-padded row decodes like its prompt alone: positions must enter only through attention as
    relative offsets (rotary, or none) and nothing but the masked attention may mix positions (the decoding cache
    says so: every state it keeps is read through the mask). Learned absolute positions shift with the padding; a
    Canon convolution reads the pads."""
    probe = torch.zeros(1, dtype=torch.long, device=backbone.embed.weight.device)
    if backbone.position.absolute(probe) is not None:
        return False
    return backbone.new_cache(1, 1).masked


def compile_wanted(*, cache_length: int | None) -> bool:
    """What ``compile="auto"`` decides: compiled when the caller fixes ``cache_length`` (a loop of requests that
    share one compiled step), eager for a request on its own. On the 2-core CPU compiling the quickstart's step
    took 41–74 s and saved 2.7–4.2 ms per decoding step (benchmarks/results/decode-compiled-cpu-2026-12-07.md):
    paid back after some 10,000–27,000 steps, far more than one request makes."""
    return cache_length is not None


def _use_compiled_step(backbone: Transformer, choice: str, *, cache_length: int | None) -> bool:
    """Whether to decode with the compiled step; ``compile="true"`` where it cannot work warns once, runs eagerly."""
    if choice == "false" or (choice == "auto" and not compile_wanted(cache_length=cache_length)):
        return False
    reason = cannot_compile(backbone.embed.weight.device)
    if reason is not None:
        compiled.DECODE_STEP.fail(reason)
    return True  # the static cache also serves the eager fallback: the same tokens either way


@contextmanager
def decoding_layout(backbone: nn.Module) -> Iterator[None]:
    """While inside, every ``nn.Linear`` weight of ``backbone`` on the CPU is held column-major (the same values,
    stored as ``(in, out)``); on leaving, the original tensors are put back untouched. Other devices: no change.

    Why: a decoding step multiplies one row per sequence by every weight matrix, so at small batch its speed is the
    speed of reading the weights. ``F.linear`` computes ``x @ W.T``; with ``W`` row-major that is a BLAS product
    against a transposed operand, which on CPUs reads the weights markedly slower than the same product against a
    contiguous ``(in, out)`` matrix (figures: benchmarks/results/generation-vs-hf-cpu-2026-12-02.md). Training
    keeps the usual layout; decoding holds one extra copy of the
    Linear weights for the call. Weights that are not contiguous (already column-major, from an outer
    ``decoding_layout``) are left as they are, so nested uses copy nothing. A tied embedding and LM head are one
    parameter, copied once; the embedding lookup reads the column-major matrix as well.
    """
    swapped: dict[int, tuple[nn.Parameter, Tensor]] = {}
    with torch.no_grad():
        for module in backbone.modules():
            weight = module.weight if isinstance(module, nn.Linear) else None
            if weight is None or weight.device.type != "cpu" or id(weight) in swapped or not weight.is_contiguous():
                continue
            swapped[id(weight)] = (weight, weight.data)
            weight.data = weight.data.t().contiguous().t()
    try:
        yield
    finally:
        for weight, original in swapped.values():
            weight.data = original


@torch.inference_mode()  # not just no_grad: skips autograd's version counters, less overhead per small op
def generate(
    backbone: Transformer,
    prompts: Sequence[Sequence[int]],
    *,
    max_new_tokens: int = 100,
    temperature: float = 0.0,
    top_k: int = 0,
    top_p: float = 1.0,
    repetition_penalty: float = 1.0,
    no_repeat_ngram_size: int = 0,
    eos_id: int | None = None,
    stop: Sequence[str] = (),
    tokenizer: Tokenizer | None = None,
    on_token: Callable[[int, int, str], None] | None = None,
    generator: torch.Generator | None = None,
    compile: str | bool = "auto",
    cache_length: int | None = None,
) -> Generation:
    """Continue each prompt by up to ``max_new_tokens`` tokens, all prompts in one batch.

    Args:
        backbone: a causal :class:`zoo.nn.Transformer` (in eval mode).
        prompts: token ids, one list per prompt (each non-empty; start with the EOS id for an empty prompt).
        max_new_tokens: tokens to generate at most per prompt.
        temperature: 0 = greedy (argmax); else sample from ``softmax(logits / temperature)`` after the filters.
        top_k: when sampling, keep the k most likely tokens (0 = all).
        top_p: when sampling, keep the smallest set of tokens whose probability reaches p (1 = all).
        repetition_penalty: CTRL-style penalty on tokens already in the context (1 = none; 1.1–1.3 is usual).
        no_repeat_ngram_size: forbid repeating any n-gram of this size of the context (0 = off).
        eos_id: a row ends after producing this token.
        stop: stop strings: a row ends once its decoded text contains one (needs ``tokenizer``); the text returned
            and streamed ends before it.
        tokenizer: decodes the new tokens incrementally (``tokenizers.decoders.DecodeStream``), for ``stop``,
            ``texts`` and the text given to ``on_token``.
        on_token: called as ``on_token(row, token, text)`` for each new token of prompt ``row``, where ``text`` is
            the text that became final with it (possibly empty: a multi-byte character or a possible start of a
            stop string is held back until resolved); the pieces of a row join to exactly its ``texts`` entry.
        generator: random source for sampling; seeded, the same call gives the same tokens. (A prompt sampled in
            a batch draws different random numbers than alone, so only greedy results are batch-independent.)
        compile: ``true``: decode over a static KV cache with a ``torch.compile``d one-token step
            (:mod:`zoo.generation.compiled`; the same tokens as eager, greedy or sampled with the same seed; the
            first call compiles, which takes seconds to minutes, later calls of the same shapes reuse it; where the
            backend cannot compile, eager with one warning). ``false``: eager, a cache that grows with the text.
            ``auto`` (default): compiled when ``cache_length`` is given, else eager (:func:`compile_wanted`).
        cache_length: positions of the static cache (``compile``); default the request's, the longest prompt +
            ``max_new_tokens``. A loop of requests of different lengths (an evaluation) passes one length, e.g. the
            model's ``max_seq_len``, so every request reuses the step compiled for it.

    On the CPU the weights are read in :func:`decoding_layout` for the call; a caller that generates many times
    (an evaluation loop) can enter it once around the loop.
    """
    if not prompts or any(len(p) == 0 for p in prompts):
        raise ValueError("generate needs at least one prompt and no empty one (start with the EOS id for none)")
    longest = max(len(p) for p in prompts)
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens={max_new_tokens} must be ≥ 1")
    if longest + max_new_tokens > backbone.max_seq_len:
        raise ValueError(
            f"a prompt of {longest} tokens + max_new_tokens={max_new_tokens} exceeds the model's "
            f"max_seq_len={backbone.max_seq_len}: lower max_new_tokens or shorten the prompt"
        )
    if not (math.isfinite(temperature) and temperature >= 0):  # NaN fails every comparison: asked the other way
        raise ValueError(f"temperature={temperature} must be a finite number ≥ 0 (0 = greedy)")
    if top_k < 0:
        raise ValueError(f"top_k={top_k} must be ≥ 0 (0 = no top-k filter)")
    if not 0 < top_p <= 1:
        raise ValueError(f"top_p={top_p} must be a number in (0, 1] (1 = no nucleus filter)")
    if not (math.isfinite(repetition_penalty) and repetition_penalty > 0):
        raise ValueError(f"repetition_penalty={repetition_penalty} must be a finite number > 0 (1 = none)")
    if no_repeat_ngram_size < 0:
        raise ValueError(f"no_repeat_ngram_size={no_repeat_ngram_size} must be ≥ 0 (0 = off)")
    if stop and tokenizer is None:
        raise ValueError(f"stop={list(stop)} needs the tokenizer to decode the new tokens: pass tokenizer=")
    if any(not s for s in stop):
        raise ValueError("stop strings must be non-empty")
    if not backbone.causal:
        raise ValueError(
            "generate decodes causal models, but this backbone's attention has causal=False: sample masked-diffusion "
            "models with zoo.generation.diffusion"
        )
    static = _use_compiled_step(backbone, compile_choice(compile), cache_length=cache_length)
    if cache_length is not None:
        if cache_length > backbone.max_seq_len:
            raise ValueError(
                f"cache_length={cache_length} exceeds the model's max_seq_len={backbone.max_seq_len}: lower it"
            )
        if longest + max_new_tokens > cache_length:
            raise ValueError(
                f"a prompt of {longest} tokens + max_new_tokens={max_new_tokens} needs {longest + max_new_tokens} "
                f"positions and the static cache holds cache_length={cache_length}: raise cache_length (at most "
                f"max_seq_len={backbone.max_seq_len}) or lower max_new_tokens"
            )
    options = {
        "max_new_tokens": max_new_tokens, "temperature": temperature, "top_k": top_k, "top_p": top_p,
        "repetition_penalty": repetition_penalty, "no_repeat_ngram_size": no_repeat_ngram_size, "eos_id": eos_id,
        "stop": tuple(stop), "tokenizer": tokenizer, "generator": generator, "static": static,
        "cache_length": cache_length,
    }  # fmt: skip
    if len({len(p) for p in prompts}) == 1 or left_padding_is_exact(backbone):
        groups = [list(range(len(prompts)))]
    else:  # padding would change the result: one batch per prompt length
        by_length: dict[int, list[int]] = {}
        for i, p in enumerate(prompts):
            by_length.setdefault(len(p), []).append(i)
        groups = list(by_length.values())
    rows: list[_Row | None] = [None] * len(prompts)
    passes = 0
    with decoding_layout(backbone):
        for group in groups:
            callback = None
            if on_token is not None:

                def callback(row: int, token: int, text: str, group: list[int] = group) -> None:
                    on_token(group[row], token, text)

            done, n = _decode(backbone, [prompts[i] for i in group], on_token=callback, **options)
            passes += n
            for i, row in zip(group, done):
                rows[i] = row
    return Generation(
        tokens=[row.tokens for row in rows],
        texts=[row.text for row in rows] if tokenizer is not None else None,
        finish_reasons=[row.reason for row in rows],
        forward_passes=passes,
    )


def _decode(
    backbone: Transformer,
    prompts: list[Sequence[int]],
    *,
    max_new_tokens: int,
    temperature: float,
    top_k: int,
    top_p: float,
    repetition_penalty: float,
    no_repeat_ngram_size: int,
    eos_id: int | None,
    stop: tuple[str, ...],
    tokenizer: Tokenizer | None,
    on_token: Callable[[int, int, str], None] | None,
    generator: torch.Generator | None,
    static: bool,
    cache_length: int | None,
) -> tuple[list[_Row], int]:
    """One batch: left-pad, prefill, then one token per step until every row has finished. ``static``: the
    cache is preallocated to ``cache_length`` positions (default the request's) and each step is the compiled
    :data:`zoo.generation.compiled.DECODE_STEP`."""
    device = backbone.embed.weight.device
    B, P = len(prompts), max(len(p) for p in prompts)
    pad = eos_id if eos_id is not None else 0  # any id: pads are never attended to
    ids = torch.full((B, P), pad, dtype=torch.long, device=device)  # (B, P), left-padded
    S = cache_length if static and cache_length is not None else P + max_new_tokens  # cache positions
    valid = torch.zeros(B, S, dtype=torch.bool, device=device)  # (B, S): key positions to attend
    for b, p in enumerate(prompts):
        ids[b, P - len(p) :] = torch.tensor(list(p), dtype=torch.long, device=device)
        valid[b, P - len(p) :] = True
    padded = not bool(valid[:, :P].all())
    mask = None
    keys = S if static else P  # a static cache is read whole (what is not written yet is hidden by the cache)
    if padded:  # (B, 1, P, keys): real keys, plus each pad sees itself (so no query row is empty)
        mask = valid[:, None, None, :keys] | torch.eye(P, keys, dtype=torch.bool, device=device)
    seen = None  # (B, V): tokens in each row's context, kept only for the repetition penalty
    if repetition_penalty != 1.0:
        seen = torch.zeros(B, backbone.vocab_size, dtype=torch.bool, device=device)
        prompt_rows = torch.arange(B, device=device)[:, None].expand(B, P)
        seen[prompt_rows[valid[:, :P]], ids[valid[:, :P]]] = True
    batch_rows = torch.arange(B, device=device)
    rows = [_Row(history=list(p), stream=DecodeStream(skip_special_tokens=True) if tokenizer is not None else None)
            for p in prompts]  # fmt: skip

    cache = backbone.new_cache(B, S, static=static)
    # prefill (eager: run once); the LM head only at the last position, the one whose logits are used
    logits = backbone.head(backbone.features(ids, mask=mask, cache=cache)[:, -1]).float()  # (B, V)
    passes = 1
    for step in range(max_new_tokens):
        if seen is not None:
            logits = repetition_penalty_filter(logits, seen, repetition_penalty)
        logits = no_repeat_ngram_filter(logits, [row.history for row in rows], no_repeat_ngram_size)
        if temperature > 0:
            scores = top_p_filter(top_k_filter(logits / temperature, top_k), top_p)
            next_tokens = torch.multinomial(scores.softmax(dim=-1), 1, generator=generator)[:, 0]  # (B,)
        else:
            next_tokens = logits.argmax(dim=-1)  # (B,)
        if seen is not None:
            seen[batch_rows, next_tokens] = True
        for b, (row, token) in enumerate(zip(rows, next_tokens.tolist())):
            if row.reason is None:
                _advance(row, b, token, eos_id=eos_id, stop=stop, tokenizer=tokenizer, on_token=on_token,
                         last=step == max_new_tokens - 1)  # fmt: skip
        if all(row.reason is not None for row in rows):
            break
        if static:  # the same shapes at every step: (B, 1) tokens, the (B, 1, 1, S) mask, the cache's buffers
            step_mask = valid[:, None, None, :] if padded else None  # (B, 1, 1, S)
            logits = compiled.DECODE_STEP(backbone, cache, next_tokens[:, None], step_mask)
        else:
            keys = P + step + 1  # keys after this step's token is written to the cache
            step_mask = valid[:, None, None, :keys] if padded else None  # (B, 1, 1, keys)
            logits = backbone(next_tokens[:, None], mask=step_mask, cache=cache)[:, -1].float()
        passes += 1
    return rows, passes


def _advance(
    row: _Row,
    b: int,
    token: int,
    *,
    eos_id: int | None,
    stop: tuple[str, ...],
    tokenizer: Tokenizer | None,
    on_token: Callable[[int, int, str], None] | None,
    last: bool,
) -> None:
    """Record ``token`` for row ``b``: extend its text, decide whether it has finished, stream what became final."""
    row.tokens.append(token)
    row.history.append(token)
    if tokenizer is not None and token != eos_id:
        _extend(row, row.stream.step(tokenizer, token) or "", stop)
    if row.reason is None and (token == eos_id or last):
        row.reason = "eos" if token == eos_id else "length"
        if tokenizer is not None:  # flush what the stream still holds back: an incomplete character at the end
            full = tokenizer.decode([t for t in row.tokens if t != eos_id])
            if full.startswith(row.text):
                _extend(row, full[len(row.text) :], stop)
    final = len(row.text) if row.reason is not None else len(row.text) - _held_back(row.text, stop)
    piece = row.text[row.streamed : final]
    row.streamed = max(row.streamed, final)
    if on_token is not None:
        on_token(b, token, piece)


def _extend(row: _Row, piece: str, stop: tuple[str, ...]) -> None:
    """Append decoded text; on a stop string, cut the text before it and finish the row."""
    before = len(row.text)
    row.text += piece
    if stop and piece:
        start = max(0, before - max(len(s) for s in stop) + 1)  # a new match must end in the new characters
        hits = [i for i in (row.text.find(s, start) for s in stop) if i >= 0]
        if hits:
            row.text, row.reason = row.text[: min(hits)], "stop"


def _held_back(text: str, stop: tuple[str, ...]) -> int:
    """Length of the longest end of ``text`` that begins a stop string (it may still become one)."""
    for k in range(min(len(text), max((len(s) for s in stop), default=1) - 1), 0, -1):
        if any(s.startswith(text[-k:]) for s in stop):
            return k
    return 0
