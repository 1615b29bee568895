"""Masked-diffusion sampling for ``ZooForCausalLM`` (``modeling_zoo.py``): LLaDA's semi-autoregressive
low-confidence remasking and threshold (parallel) decoding, the same steps, choices and tie-breaks as zoo's own
samplers, so a fixed seed gives zoo's tokens. Imports only torch and transformers."""

from __future__ import annotations

import torch
from torch import Tensor, nn
from transformers import GenerationConfig

DEFAULTS = {"max_new_tokens": 64, "block_length": 32, "steps": 64, "threshold": None, "remasking": "low_confidence",
            "stop_at_eos": True}  # fmt: skip
IGNORED = {"use_cache", "pad_token_id", "bos_token_id", "return_dict_in_generate", "output_scores"}  # no effect here


@torch.no_grad()
def diffusion_generate(
    model: nn.Module,
    input_ids: Tensor,  # (B, P) prompts of one length
    attention_mask: Tensor | None = None,
    generation_config: GenerationConfig | None = None,
    generator: torch.Generator | None = None,
    **kwargs,
) -> Tensor:  # (B, P + max_new_tokens): the prompts followed by the answers
    """Sample a masked-diffusion model: the answer starts as ``max_new_tokens`` mask tokens, unmasked block by
    block (``block_length``, left to right). Each setting is taken from the keyword arguments, else from
    ``generation_config`` (default: the model's ``generation_config.json``):

    - ``max_new_tokens``: answer length, a multiple of ``block_length`` (a configured block longer than the
      answer shrinks to it).
    - ``steps``: LLaDA's low-confidence remasking: ``steps / n_blocks`` forward passes per block, each keeping
      the most confident predictions of the block (its length spread evenly over the steps, the remainder to
      the first ones); ``remasking="random"`` keeps random ones instead.
    - ``threshold``: when set, parallel decoding instead: each pass keeps every masked position of the block
      whose probability reaches it, and at least the most confident one.
    - ``temperature``: 0 = greedy; otherwise Gumbel-max sampling in float64 (with ``do_sample`` the
      config's ``temperature``, without it 0).
    - ``eos_token_id``: everything after an answer's first EOS becomes EOS; with ``stop_at_eos`` the remaining
      blocks are skipped once every answer has ended.
    - ``generator``: a ``torch.Generator`` for sampling and random remasking.
    """
    config = generation_config if generation_config is not None else model.generation_config
    given = {name: kwargs.pop(name) for name in DEFAULTS if name in kwargs}
    setting = {name: getattr(config, name, None) for name in DEFAULTS} | given
    setting = {name: DEFAULTS[name] if value is None and name != "threshold" else value
               for name, value in setting.items()}  # fmt: skip
    if "block_length" not in given and setting["block_length"] > setting["max_new_tokens"]:
        setting["block_length"] = setting["max_new_tokens"]  # a short answer: one block, not an error
    do_sample = kwargs.pop("do_sample", getattr(config, "do_sample", False))
    temperature = kwargs.pop("temperature", (getattr(config, "temperature", None) or 1.0) if do_sample else 0.0)
    eos = kwargs.pop("eos_token_id", getattr(config, "eos_token_id", None))
    eos_id = eos[0] if isinstance(eos, (list, tuple)) else eos
    unknown = sorted(set(kwargs) - IGNORED)
    if unknown:
        raise ValueError(
            f"this masked-diffusion model's generate does not take {unknown}: call model.generate(input_ids, "
            "max_new_tokens=..., steps=..., block_length=..., threshold=..., temperature=...) directly"
        )
    if input_ids is None or input_ids.dim() != 2:
        raise ValueError("generate needs input_ids of shape (batch, prompt length)")
    if attention_mask is not None and not bool(attention_mask.all()):
        raise ValueError(
            "masked-diffusion generate takes prompts of one length without padding: call model.generate on "
            "each prompt (or on prompts of equal length)"
        )
    gen_length, block_length = setting["max_new_tokens"], setting["block_length"]
    mask_id, shift = model.config.mask_token_id, model.config.diffusion_shift
    if shift and input_ids.shape[1] == 0:
        raise ValueError("this model predicts each token from the position before it: give a non-empty prompt")
    if gen_length < 1 or block_length < 1 or gen_length % block_length:
        raise ValueError(
            f"max_new_tokens={gen_length} must be a positive multiple of block_length={block_length}: choose a "
            f"block length among {[d for d in range(1, gen_length + 1) if gen_length % d == 0]}"
        )
    if input_ids.shape[1] + gen_length > model.config.max_position_embeddings:
        raise ValueError(
            f"a prompt of {input_ids.shape[1]} tokens + max_new_tokens={gen_length} exceeds the model's "
            f"max_position_embeddings={model.config.max_position_embeddings}: lower max_new_tokens"
        )
    if temperature < 0:
        raise ValueError(f"temperature={temperature} must be ≥ 0 (0 = greedy)")
    n_blocks = gen_length // block_length
    threshold, steps = setting["threshold"], setting["steps"]
    if threshold is not None and not 0 < threshold <= 1:
        raise ValueError(f"threshold={threshold} must be in (0, 1]: e.g. 0.9 (lower is faster, less accurate)")
    if threshold is None and (steps < n_blocks or steps % n_blocks):
        raise ValueError(
            f"steps={steps} is not a multiple of the {n_blocks} blocks (max_new_tokens={gen_length} / "
            f"block_length={block_length}): use e.g. steps={n_blocks * max(1, steps // n_blocks)}"
        )
    if setting["remasking"] not in ("low_confidence", "random"):
        raise ValueError(f"remasking={setting['remasking']!r} is unknown; choose low_confidence or random")

    B, P = input_ids.shape
    x = torch.cat([input_ids, input_ids.new_full((B, gen_length), mask_id)], dim=1)  # (B, P + L)
    masked = torch.zeros_like(x, dtype=torch.bool)
    masked[:, P:] = True

    def predict(lo: int, hi: int) -> tuple[Tensor, Tensor]:  # the block's predictions and their probabilities
        logits = model(input_ids=x).logits
        logits = (logits[:, lo - 1 : hi - 1] if shift else logits[:, lo:hi]).double()  # (B, L_block, V)
        if mask_id != eos_id:  # the mask is never predicted, unless it doubles as EOS
            logits[..., mask_id] = float("-inf")
        if temperature > 0:
            u = torch.rand(logits.shape, dtype=logits.dtype, device=logits.device, generator=generator)
            choice = (logits / temperature - torch.log(-torch.log(u.clamp_min(1e-300)))).argmax(dim=-1)
        else:
            choice = logits.argmax(dim=-1)
        return choice, logits.softmax(dim=-1).gather(-1, choice[..., None]).squeeze(-1)

    def unmask(lo: int, hi: int, choice: Tensor, keep: Tensor) -> None:
        x[:, lo:hi] = torch.where(keep, choice, x[:, lo:hi])
        masked[:, lo:hi] &= ~keep

    per_block = steps // n_blocks if threshold is None else 0
    quota = [block_length // per_block + (i < block_length % per_block) for i in range(per_block)]
    for block in range(n_blocks):
        lo, hi = P + block * block_length, P + (block + 1) * block_length
        if threshold is None:
            for k in quota:
                if k == 0:
                    continue
                choice, confidence = predict(lo, hi)
                if setting["remasking"] == "random":
                    confidence = torch.rand(confidence.shape, dtype=confidence.dtype, device=x.device,
                                            generator=generator)  # fmt: skip
                still = masked[:, lo:hi]
                picked = confidence.masked_fill(~still, -1.0).topk(k, dim=1).indices
                unmask(lo, hi, choice, torch.zeros_like(still).scatter_(1, picked, True) & still)
        else:
            while masked[:, lo:hi].any():
                choice, confidence = predict(lo, hi)
                still = masked[:, lo:hi]
                confidence = confidence.masked_fill(~still, -1.0)
                best = torch.zeros_like(still).scatter_(1, confidence.argmax(dim=1, keepdim=True), True)
                unmask(lo, hi, choice, ((confidence >= threshold) | best) & still)
        if setting["stop_at_eos"] and eos_id is not None and _ended(x[:, P:hi], masked[:, P:hi], eos_id):
            x[:, hi:], masked[:, hi:] = eos_id, False
            break
    if eos_id is not None:  # everything after an answer's first EOS becomes EOS
        answer = x[:, P:]
        answer[(answer == eos_id).cumsum(dim=1) > 0] = eos_id
    return x


def _ended(answer: Tensor, masked: Tensor, eos_id: int) -> bool:
    """Every row has an unmasked EOS with no mask before it. answer, masked: (B, L)."""
    is_eos = (answer == eos_id) & ~masked
    if not is_eos.any(dim=1).all():
        return False
    first = is_eos.float().argmax(dim=1)  # (B,)
    before = torch.arange(answer.shape[1], device=answer.device)[None] < first[:, None]
    return not bool((masked & before).any())
