"""Masked-diffusion sampling with a KV cache, parallel decoding and batches of prompts of different lengths.

:func:`diffusion_generate` is the sampler of :mod:`zoo.generation.diffusion` (LLaDA's semi-autoregressive blocks,
low-confidence remasking, Fast-dLLM's confidence threshold) with three additions:

* **Block-wise approximate KV cache** (Fast-dLLM, Wu et al. 2025). With bidirectional attention every position's
  keys and values change whenever any token is unmasked, but between two steps they change little. At the first
  step of each block one full pass *refreshes* the cache (every position's keys and values); the block's other
  steps run only a window through the model and read the rest from the cache::

      prompt │ done blocks │ current block │ masked suffix
      ───────┴─────────────┼───────────────┼──────────────     cache="prefix": the window is block + suffix
      read from the cache  │  re-encoded   │ re-encoded         cache="dual":   the window is the block alone,
                           │               │ (dual: cached)     the suffix is read from the cache too

  ``refresh="step"`` refreshes at every step instead: the same tokens as without a cache (a check of the caching,
  never faster).
* **Exact cache for block-causal models.** A model converted with ``BlockWarmupStableDecay`` ending at a small
  ``decay_block`` (LLaDA 2.0) was trained block-causal: a block sees itself and the blocks before it, never
  later ones. Sampled that way (``block_causal=True``: the prompt is one block, each block of ``block_length``
  the next), a finished block's keys and values never change, so the cache is exact: each block's first pass
  encodes the block just finished together with the new one, its other passes the new block alone. The output's
  ``cache`` says which cache ran (``exact`` here; ``prefix``/``dual`` are approximate).
* **Batches of prompts of different lengths**, left-padded; no token attends to a pad (each pad sees only itself),
  and rotary positions depend only on distances, so each row gets the tokens that prompt gets alone (greedy).
  Backbones for which padding is not exact (learned positions, Canon) are refused prompts of different lengths.

Steps and threshold combine: each step unmasks the positions whose confidence reaches ``threshold`` and at least the
step's share of the block (``steps``) or, without ``steps``, at least one; a block ends when nothing in it is masked.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch
from torch import Tensor

from zoo.generation import compiled
from zoo.generation.autoregressive import left_padding_is_exact
from zoo.generation.compiled import block_pass, cannot_compile, compile_choice
from zoo.generation.diffusion import REMASKING, DiffusionOutput, _after_eos, _check, _choose, _finish, _unmask
from zoo.nn.transformer import Transformer

log = logging.getLogger(__name__)

CACHES = ("none", "prefix", "dual")
REFRESH = ("block", "step")


def cache_used(cache: str, *, block_causal: bool, refresh: str = "block") -> str:
    """The KV cache :func:`diffusion_generate` runs for these options: ``none``, ``prefix``/``dual`` (approximate)
    or ``exact`` (a block-causal model; refreshing it every step would be a full pass per step, i.e. ``none``)."""
    if cache == "none" or (block_causal and refresh == "step"):
        return "none"
    return "exact" if block_causal else cache


def _left_pad(prompts: Sequence[Sequence[int]] | Tensor, pad_id: int, device) -> tuple[Tensor, Tensor]:
    """(B, P) left-padded ids and (B, P) bool, True at real tokens."""
    if isinstance(prompts, Tensor):
        if prompts.dim() != 2:
            raise ValueError(f"prompts must be (batch, length) token ids, got shape {tuple(prompts.shape)}")
        return prompts, torch.ones_like(prompts, dtype=torch.bool)
    rows = [list(p) for p in prompts]
    if not rows:
        raise ValueError("prompts is empty: give at least one prompt (a list of token ids)")
    P = max(len(r) for r in rows)
    ids = torch.full((len(rows), P), pad_id, dtype=torch.long, device=device)
    real = torch.zeros(len(rows), P, dtype=torch.bool, device=device)
    for b, row in enumerate(rows):
        if row:
            ids[b, P - len(row) :] = torch.tensor(row, dtype=torch.long, device=device)
            real[b, P - len(row) :] = True
    return ids, real


def _attention_mask(real: Tensor, prompt_length: int, block_length: int, *, block_causal: bool) -> Tensor | None:
    """(B, 1, S, S) bool, True = may attend, or ``None`` when every key is visible to every query. real: (B, S)."""
    S = real.shape[1]
    mask = None
    if not bool(real.all()):  # pads: no query reads them, each pad reads itself (no empty row)
        mask = real[:, None, None, :] | torch.eye(S, dtype=torch.bool, device=real.device)
    if block_causal:  # the prompt is block 0, generated block k is block k + 1
        gen = torch.arange(S - prompt_length, device=real.device) // block_length + 1
        ids = torch.cat([torch.zeros(prompt_length, dtype=torch.long, device=real.device), gen])
        allowed = (ids[None, :] <= ids[:, None])[None, None]  # (1, 1, S, S)
        mask = allowed if mask is None else mask & allowed
    return mask


@torch.no_grad()
def diffusion_generate(
    backbone,
    prompts: Sequence[Sequence[int]] | Tensor,
    *,
    mask_id: int,
    vocab_size: int | None = None,
    gen_length: int = 128,
    block_length: int = 32,
    steps: int | None = None,
    threshold: float | None = None,
    cache: str = "none",
    refresh: str = "block",
    block_causal: bool = False,
    temperature: float = 0.0,
    remasking: str = "low_confidence",
    eos_id: int | None = None,
    stop_at_eos: bool = True,
    shift: bool = False,
    pad_id: int | None = None,
    generator: torch.Generator | None = None,
    compile: bool | str = False,
) -> DiffusionOutput:
    """Generate ``gen_length`` tokens after each prompt with a masked-diffusion backbone.

    With ``cache="none"`` and prompts of one length this gives the tokens of
    :func:`~zoo.generation.diffusion.low_confidence_remasking` (``steps``) or
    :func:`~zoo.generation.diffusion.confidence_threshold` (``threshold``).

    Args:
        backbone: a :class:`zoo.nn.Transformer` with bidirectional attention (``new_cache``, ``features_only``,
            ``head``); with ``cache="none"`` any ``backbone(ids, mask=…) -> logits`` will do.
        prompts: token ids per prompt, lengths may differ (left-padded), or a (B, P) tensor of one length.
        mask_id: the model's mask token.
        vocab_size: checks ``mask_id`` before the first pass (default: ``backbone.vocab_size``).
        gen_length: tokens to generate; a multiple of ``block_length``.
        block_length: tokens per semi-autoregressive block; for a block-causal model, its ``decay_block``.
        steps: unmasking steps in total, a multiple of the number of blocks (each block gets ``steps / n_blocks``,
            its tokens spread evenly over them); ``None`` with ``threshold``: as many as the threshold needs.
        threshold: confidence in (0, 1] at which a position is unmasked whatever the step's share (parallel
            decoding); ``None``: the share alone (LLaDA).
        cache: ``none`` (a full pass per step), ``prefix`` or ``dual`` (block-wise approximate KV cache; exact
            for block-causal models).
        refresh: ``block`` (the cache is refreshed at each block's first step, Fast-dLLM) or ``step`` (every step).
        block_causal: sample block-causal (each block sees the prompt, earlier blocks and itself), as a model
            converted with ``BlockWarmupStableDecay(decay_block=…)`` was trained (its description's ``block_size``).
        temperature: 0 = greedy; else Gumbel-max sampling at this temperature.
        remasking: ``low_confidence`` or ``random`` (which positions a step's share keeps).
        eos_id: end-of-text id; everything after an answer's first EOS becomes EOS.
        stop_at_eos: skip the remaining blocks once every row's answer has ended.
        shift: the model predicts token ``i+1`` at position ``i`` (``MaskedDiffusionLM.shift``).
        pad_id: id written at pad positions (never attended to; default ``eos_id``, else 0).
        generator: random source (sampling and ``random`` remasking).
        compile: run each pass as a ``torch.compile``d graph (:mod:`zoo.generation.compiled`; ``"true"``,
            ``"false"`` or ``"auto"`` as strings too, ``auto`` being eager: one request does not repay a compile):
            the same tokens as eager; the first call compiles (about 20 s for the quickstart's model on a 2-core
            CPU), later calls and blocks reuse it; where the backend cannot compile, eager with one warning.
    """
    pad = pad_id if pad_id is not None else (eos_id if eos_id is not None else 0)
    device = backbone.head.weight.device if hasattr(backbone, "head") else None
    prompt, real = _left_pad(prompts, pad, device)
    vocab_size = vocab_size if vocab_size is not None else getattr(backbone, "vocab_size", None)
    n_blocks = _check(backbone, prompt, mask_id=mask_id, vocab_size=vocab_size, gen_length=gen_length,
                      block_length=block_length, temperature=temperature, shift=shift)  # fmt: skip
    if not bool(real.all()) and isinstance(backbone, Transformer) and not left_padding_is_exact(backbone):
        raise ValueError(
            "prompts of different lengths are left-padded, which changes the answers of a backbone with learned "
            "absolute positions or Canon layers: give prompts of one length (or one at a time)"
        )
    if shift and not bool(real[:, -1].all()):
        raise ValueError("shift=True predicts each token from the position before it: every prompt must be non-empty")
    _check_options(steps=steps, threshold=threshold, cache=cache, refresh=refresh, remasking=remasking,
                   n_blocks=n_blocks, gen_length=gen_length, block_length=block_length)  # fmt: skip
    if block_causal and shift:
        raise ValueError("block_causal=True with shift=True: block-diffusion models are trained without the AR shift")
    if cache != "none" and not backbone.new_cache(1, 1).rewindable:
        raise ValueError(f"cache={cache!r} cannot rewind a Canon layer's convolution state: use cache='none'")
    used = cache_used(cache, block_causal=block_causal, refresh=refresh)
    run = _compiled_pass(backbone, compile)
    B, P = prompt.shape
    S = P + gen_length
    x = torch.cat([prompt, prompt.new_full((B, gen_length), mask_id)], dim=1)  # (B, S)
    masked = torch.zeros_like(x, dtype=torch.bool)
    masked[:, P:] = True
    real = torch.cat([real, real.new_ones(B, gen_length)], dim=1)  # (B, S)
    mask = _attention_mask(real, P, block_length, block_causal=block_causal)  # (B or 1, 1, S, S) or None
    if steps is not None:
        base, extra = divmod(block_length, steps // n_blocks)
        quota = [base + (i < extra) for i in range(steps // n_blocks)]  # tokens to unmask at each step of a block
    else:
        quota = [1] * block_length
    kv = backbone.new_cache(B, S) if used != "none" else None
    choose = {"mask_id": mask_id, "eos_id": eos_id, "temperature": temperature, "generator": generator}
    passes = 0
    for block in range(n_blocks):
        lo, hi = P + block * block_length, P + (block + 1) * block_length
        first = True
        for k in quota:
            still = masked[:, lo:hi]  # (B, L_block)
            if not still.any():
                break
            if threshold is not None:
                k = max(k, 1)
            elif k == 0:
                continue
            if used == "none" and run is block_pass:
                logits = backbone(x, mask=mask) if mask is not None else backbone(x)  # (B, S, V)
                logits = logits[:, lo - 1 : hi - 1] if shift else logits[:, lo:hi]
            elif used == "none":  # compiled: the head runs on the block's rows only
                logits = run(backbone, x, None, mask, lo - shift, hi - shift)
            else:
                if used == "exact":
                    start = lo - block_length if (first and block > 0) else (0 if first else lo)
                    end = hi
                elif first or refresh == "step":
                    start, end = 0, S  # refresh: every position's keys and values
                else:
                    start, end = lo - shift, (S if used == "prefix" else hi)
                logits = _window_logits(run, backbone, x, kv, mask, start=start, end=end, lo=lo - shift,
                                        hi=hi - shift)
            choice, confidence = _choose(logits, **choose)  # (B, L_block) each
            passes += 1
            first = False
            if remasking == "random":
                confidence = torch.rand(confidence.shape, dtype=confidence.dtype, device=x.device, generator=generator)
            ranked = confidence.masked_fill(~still, -1.0)  # confidences are ≥ 0
            keep = torch.zeros_like(still).scatter_(1, ranked.topk(min(k, block_length), dim=1).indices, True)
            if threshold is not None:
                keep |= confidence >= threshold
            _unmask(x, masked, lo, hi, choice, keep & still)
        if _finish(x, masked, start=P, hi=hi, eos_id=eos_id, stop_at_eos=stop_at_eos):
            break
    assert not masked.any()
    log.info("masked-diffusion sampling: %d passes for %d × %d tokens, cache=%s", passes, B, gen_length, used)
    return DiffusionOutput(_after_eos(x, P, eos_id), passes, P, used)


def _window_logits(
    run, backbone, x: Tensor, kv, mask: Tensor | None, *, start: int, end: int, lo: int, hi: int
) -> Tensor:  # (B, hi - lo, V)
    """Run positions ``start:end`` through the backbone with ``run`` (see :func:`_compiled_pass`), reading every
    other position from the cache ``kv`` and rewriting the window's keys and values; return the
    logits at positions ``lo:hi`` (inside the window)."""
    kv.seek(start)
    keys = max(end, kv.filled)  # positions attention will read
    window = mask[:, :, start:end, :keys] if mask is not None else None  # (B or 1, 1, T, keys)
    return run(backbone, x[:, start:end], kv, window, lo - start, hi - start)


def _compiled_pass(backbone, choice: bool | str):
    """The sampler's pass ``run(backbone, tokens, cache, mask, lo, hi) -> logits of rows lo:hi``: compiled
    (:data:`zoo.generation.compiled.BLOCK_PASS`) or eager (:func:`zoo.generation.compiled.block_pass`)."""
    if compile_choice(choice) != "true":  # auto: eager, as one request does not repay a compile (tens of seconds)
        return block_pass
    if isinstance(backbone, Transformer):
        reason = cannot_compile(backbone.embed.weight.device)
        if reason is not None:
            compiled.BLOCK_PASS.fail(reason)
    return compiled.BLOCK_PASS


def _check_options(
    *, steps, threshold, cache, refresh, remasking, n_blocks: int, gen_length: int, block_length: int
) -> None:
    if steps is None and threshold is None:
        raise ValueError("give steps (LLaDA's schedule), threshold (parallel decoding) or both")
    if steps is not None and steps < n_blocks:
        raise ValueError(
            f"steps={steps} is fewer than the {n_blocks} blocks (gen_length={gen_length} / block_length="
            f"{block_length}): every block needs a step; use steps ≥ {n_blocks}, a multiple of {n_blocks}"
        )
    if steps is not None and steps % n_blocks:
        raise ValueError(
            f"steps={steps} is not a multiple of the {n_blocks} blocks (gen_length={gen_length} / "
            f"block_length={block_length}): use e.g. steps={n_blocks * max(1, steps // n_blocks)}"
        )
    if threshold is not None and not 0 < threshold <= 1:
        raise ValueError(f"threshold={threshold} must be in (0, 1]: e.g. 0.9 (lower is faster and less accurate)")
    for name, value, choices in (("cache", cache, CACHES), ("refresh", refresh, REFRESH),
                                 ("remasking", remasking, REMASKING)):  # fmt: skip
        if value not in choices:
            raise ValueError(f"{name}={value!r} is unknown; choose one of {list(choices)}")
