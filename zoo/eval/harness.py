"""zoo's models inside lm-evaluation-harness: :class:`ZooLM`, registered with the harness as ``model="zoo"``.

Importing this module registers the class, so every task of the harness's registry (and any task folder given
with ``include_path``) runs on a zoo checkpoint without converting it::

    import lm_eval, zoo.eval.harness
    lm_eval.simple_evaluate(model="zoo", model_args={"pretrained": "last.ckpt"}, tasks=["arc_easy", "gsm8k"])
    lm_eval.simple_evaluate(model=ZooLM(pretrained=live_model, tokenizer=tok, eos_token="<|endoftext|>"), ...)

The three request types go to zoo's own code:

- ``loglikelihood`` / ``loglikelihood_rolling``: :class:`zoo.eval.scoring.CausalScorer` (length-sorted batches,
  prefix sharing, shared-context KV caches, the LM head only at scored positions); tokens are split and truncated
  as the harness's ``TemplateLM`` does, so the figures are the harness's own (left truncation to the model's
  context, logged with the number of requests it touched). Masked-diffusion checkpoints get Monte-Carlo ELBO lower
  bounds (:class:`zoo.eval.scoring.ElboScorer`): ``mc_num`` samples per request, the number of masked answer tokens
  stratified over ``1..L`` across the samples, and every request drawn from the same seeded stream, so the choices
  of a question are compared under common random numbers (both reduce the variance of the comparison).
- ``generate_until``: the objective's own sampler through :func:`zoo.generation.sample`: KV-cache decoding
  (batched, left-padded) for causal models, the diffusion samplers for masked-diffusion ones; ``gen_kwargs`` are
  normalised by the harness's own helpers (``until``, ``max_gen_toks``, ``do_sample``, ``temperature``, ``top_k``,
  ``top_p``), the context is cut from the left to leave room for ``max_gen_toks``, and the answer ends before the
  first stop sequence, as the harness's HF model does.
- ``apply_chat_template``: the SFT prompt formats of :mod:`zoo.data.formats` (``alpaca``, ``user_assistant``,
  ``chat``), chosen with ``chat_format``, so ``--apply_chat_template`` renders the format the model was tuned on.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence

import torch
from lm_eval.api.model import LM
from lm_eval.api.registry import register_model
from lm_eval.models.utils import handle_stop_sequences, normalize_gen_kwargs, postprocess_generated_text
from tokenizers import Tokenizer

from zoo.data.formats import FORMATS, Chat, PromptFormat
from zoo.generation.sampling import sample

log = logging.getLogger(__name__)

SAMPLERS = ("low_confidence", "threshold")


@register_model("zoo")
class ZooLM(LM):
    """A zoo checkpoint (or a live ``LanguageModel``) as an ``lm_eval`` model.

    Args:
        pretrained: path of a ``python -m zoo fit`` checkpoint, or a live :class:`zoo.objectives.LanguageModel`.
        tokenizer: ``tokenizer.json`` path or a ``tokenizers.Tokenizer``; required for a live model or a
            checkpoint that carries none.
        eos_token: end-of-text token of ``tokenizer`` (default: the checkpoint's, else ``<|endoftext|>``).
        device: ``cpu`` or ``cuda`` (default: where the live model is, else cpu).
        batch_size: sequences per forward pass (an integer; the harness's ``auto`` means 32 here).
        max_batch_size: accepted for the harness's interface; unused.
        max_gen_toks: generation length when a task's ``gen_kwargs`` give none (default: the harness's 256, or half
            the model's context when that is shorter than 512 tokens, so that a prompt fits beside it).
        mc_num: Monte-Carlo samples per ELBO (masked-diffusion models).
        seed: seed of the ELBO masks and of sampled generation.
        sampler: masked-diffusion generation: ``low_confidence`` (LLaDA's remasking) or ``threshold``
            (confidence-threshold parallel decoding).
        block_length: masked-diffusion generation: tokens per semi-autoregressive block.
        steps: masked-diffusion generation with ``low_confidence``: steps per generated token (1 = one token per
            forward pass).
        threshold: masked-diffusion generation with ``threshold``: confidence to unmask a token.
        chat_format: the SFT prompt format ``apply_chat_template`` renders (one of :data:`zoo.data.formats.FORMATS`).
    """

    def __init__(
        self,
        pretrained=None,
        *,
        tokenizer: str | Tokenizer | None = None,
        eos_token: str | None = None,
        device: str | None = None,
        batch_size: int | str | None = 32,
        max_batch_size: int | None = None,
        max_gen_toks: int | None = None,
        mc_num: int = 128,
        seed: int = 0,
        sampler: str = "low_confidence",
        block_length: int = 32,
        steps: int = 1,
        threshold: float = 0.9,
        chat_format: str | None = None,
    ) -> None:
        super().__init__()
        from zoo.eval.checkpoint import load_model, make_scorer

        if pretrained is None:
            raise ValueError("ZooLM needs pretrained=: a checkpoint path or a live LanguageModel")
        batch_size = 32 if batch_size in (None, "auto") or str(batch_size).startswith("auto") else int(batch_size)
        if sampler not in SAMPLERS:
            raise ValueError(f"ZooLM sampler={sampler!r} is unknown; choose one of {list(SAMPLERS)}")
        if chat_format is not None and chat_format not in FORMATS:
            raise ValueError(f"ZooLM chat_format={chat_format!r} is unknown; choose one of {sorted(FORMATS)}")
        if isinstance(pretrained, str):
            model, tok, eos, _ = load_model(pretrained, device=device or "cpu",
                                            tokenizer_path=tokenizer if isinstance(tokenizer, str) else None,
                                            eos_token=eos_token)  # fmt: skip
            tok = tokenizer if isinstance(tokenizer, Tokenizer) else tok
        else:
            from zoo.data.tokenizer import EOS

            if tokenizer is None:
                raise ValueError("ZooLM with a live model needs tokenizer= (a tokenizers.Tokenizer or tokenizer.json)")
            model, eos = pretrained, eos_token or EOS
            tok = Tokenizer.from_file(tokenizer) if isinstance(tokenizer, str) else tokenizer
            if device is not None:
                model = model.to(device)
        if tok.token_to_id(eos) is None:
            raise ValueError(f"ZooLM: the tokenizer has no end-of-text token {eos!r}: pass eos_token=")
        self.model = model.eval()
        self.tokenizer, self.eos = tok, eos
        self.eos_id = tok.token_to_id(eos)
        self._device = next(model.parameters()).device
        self.batch_size, self.seed = batch_size, int(seed)
        self.max_gen_toks = int(max_gen_toks) if max_gen_toks is not None else min(256, self.max_length // 2)
        self.description = model.description
        self.diffusion = self.description.diffusion
        self.sampler, self.block_length, self.steps, self.threshold = sampler, block_length, steps, threshold
        self.scorer = make_scorer(model, tok, eos, batch_size=batch_size, mc_num=int(mc_num), seed=self.seed)
        self.format: PromptFormat | None = FORMATS[chat_format]() if chat_format else None
        self.format_name = chat_format

    @property
    def max_length(self) -> int:
        return self.model.backbone.max_seq_len

    @property
    def eot_token_id(self) -> int:
        return self.eos_id

    # ---- log-likelihoods ---------------------------------------------------------------------------------------
    def loglikelihood(self, requests, disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        pairs = [self.scorer.encode_pair(*req.args) for req in requests]
        cut = sum(len(ctx) + len(cont) > self.max_length + 1 for ctx, cont in pairs)
        if cut:
            log.warning("%d of %d requests are longer than the model's context of %d tokens: their inputs were "
                        "cut from the left to the last %d tokens, as the harness does (the continuation is kept "
                        "whole while it fits)", cut, len(pairs), self.max_length, self.max_length)  # fmt: skip
        scores = self.scorer.score_tokens(pairs)
        for req, score in zip(requests, scores):
            self.cache_hook.add_partial("loglikelihood", req.args, score)
        return [(float(ll), bool(greedy)) for ll, greedy in scores]

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        scores = self.scorer.loglikelihood_rolling([req.args[0] for req in requests])
        for req, score in zip(requests, scores):
            self.cache_hook.add_partial("loglikelihood_rolling", req.args, score)
        return [float(s) for s in scores]

    # ---- generation --------------------------------------------------------------------------------------------
    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        """Requests grouped by their ``gen_kwargs``; each group decoded longest prompt first, in batches."""
        out: list[str | None] = [None] * len(requests)
        groups: dict[str, list[int]] = {}
        for i, req in enumerate(requests):
            groups.setdefault(json.dumps(req.args[1], sort_keys=True, default=str), []).append(i)
        for members in groups.values():
            gen_kwargs = requests[members[0]].args[1]
            texts = self._generate_group([requests[i].args[0] for i in members], gen_kwargs)
            for i, text in zip(members, texts):
                out[i] = text
                self.cache_hook.add_partial("generate_until", requests[i].args, text)
        return out

    def _generate_group(self, contexts: Sequence[str], gen_kwargs: dict) -> list[str]:
        kwargs = dict(normalize_gen_kwargs(gen_kwargs, self.max_gen_toks))
        until = handle_stop_sequences(kwargs.pop("until", None), eos=self.eos)
        max_gen_toks = int(kwargs.pop("max_gen_toks"))
        if self.diffusion:  # a block count that covers max_gen_toks
            max_gen_toks = -(-max_gen_toks // min(self.block_length, max_gen_toks)) * min(self.block_length,
                                                                                          max_gen_toks)  # fmt: skip
        room = self.max_length - max_gen_toks
        if room < 1:
            raise ValueError(
                f"max_gen_toks={max_gen_toks} leaves no room for a prompt in the model's context of "
                f"{self.max_length} tokens: lower it (gen_kwargs max_gen_toks=..., or ZooLM max_gen_toks=...)"
            )
        prompts = [self.scorer.encode(c) or [self.eos_id] for c in contexts]
        cut = [len(p) - room for p in prompts if len(p) > room]
        if cut:
            log.warning("%d of %d prompts exceed the %d tokens left for them (context %d - max_gen_toks %d): cut "
                        "from the left, as the harness does (up to %d tokens dropped)", len(cut), len(prompts), room,
                        self.max_length, max_gen_toks, max(cut))  # fmt: skip
        prompts = [p[-room:] for p in prompts]
        generator = torch.Generator(device=self._device).manual_seed(self.seed)
        order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
        options = self._sample_options(max_gen_toks=max_gen_toks, until=until, kwargs=kwargs, generator=generator)
        texts: list[str] = [""] * len(prompts)
        with self.model.sampling_context():  # e.g. decoding's weight layout, entered once for all batches
            for start in range(0, len(order), self.batch_size):
                chunk = order[start : start + self.batch_size]
                answers = sample(self.model, [prompts[i] for i in chunk], **options).texts
                for i, text in zip(chunk, answers):
                    texts[i] = postprocess_generated_text(generation=text, stop=until, think_end_token=None)
        return texts

    def _sample_options(self, *, max_gen_toks: int, until: list[str], kwargs: dict, generator) -> dict:
        """The options of the objective's own sampler (:func:`zoo.generation.sample`) for these ``gen_kwargs``."""
        temperature = float(kwargs.get("temperature", 0.0)) if kwargs.get("do_sample") else 0.0
        options = {"max_new_tokens": max_gen_toks, "temperature": temperature, "eos_id": self.eos_id,
                   "stop": [s for s in until if s], "tokenizer": self.tokenizer, "generator": generator}  # fmt: skip
        if self.diffusion:
            threshold = self.threshold if self.sampler == "threshold" else None
            return {**options, "block_length": min(self.block_length, max_gen_toks), "threshold": threshold,
                    "steps": max_gen_toks * self.steps}  # fmt: skip
        # a gen_kwarg that names an option of the model's sampler family (top_k, top_p, ...) sets it, converted to
        # the type of the option's default; the others are named in a warning and ignored
        family = self.description.sampler
        defaults = family.options()
        names = set(family.option_names()) - {family.length}
        ignored = sorted(set(kwargs) - names - {"do_sample", "temperature"})
        if ignored:
            log.warning("gen_kwargs %s are not used by zoo's %s sampling and were ignored", ignored, family.name)
        return {**options, **{name: _as_default(kwargs[name], getattr(defaults, name))
                              for name in sorted(names & set(kwargs))}}  # fmt: skip

    # ---- chat templates ----------------------------------------------------------------------------------------
    @property
    def tokenizer_name(self) -> str:
        return f"zoo-{self.format_name or 'none'}"

    def chat_template(self, chat_template: bool | str = False) -> str | None:
        if not chat_template:
            return None
        if self.format is None:
            raise ValueError(
                f"apply_chat_template needs the SFT format the model was tuned on: pass chat_format= (model_args) or "
                f"--chat-format, one of {sorted(FORMATS)}"
            )
        return self.format_name

    def apply_chat_template(self, chat_history: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
        if self.format is None:
            self.chat_template(True)  # raises the message above
        return render_chat(self.format, chat_history, eos=self.eos, add_generation_prompt=add_generation_prompt)


def _as_default(value, default):
    """A gen_kwargs value as the type of the option's default (``top_k: "40"`` → 40); a missing one: the default."""
    if value is None or value == "":
        return default
    return type(default)(value) if isinstance(default, (bool, int, float, str)) else value


def render_chat(fmt: PromptFormat, messages: list[dict[str, str]], *, eos: str, add_generation_prompt: bool) -> str:
    """A conversation in zoo's prompt format ``fmt``: each assistant turn of the history ends with the EOS token
    (as in SFT training); the text ends where the model is to answer (``add_generation_prompt``), or inside the
    last assistant message (a prefilled answer). Single-turn formats render each user/assistant exchange with
    their prompt and response and concatenate them; a system message opens the text, followed by a blank line."""
    parts: list[str] = []
    pending_user: str | None = None
    for i, message in enumerate(messages):
        role, content = message.get("role"), message.get("content", "")
        last = i == len(messages) - 1
        if role == "system":
            parts.append(fmt.templates["system"].replace("{content}", content) if isinstance(fmt, Chat)
                         else f"{content}\n\n")  # fmt: skip
        elif role == "user":
            if pending_user is not None:  # two user turns in a row: the first one stands alone
                parts.append(fmt.prompt(pending_user))
            pending_user = content
        elif role == "assistant":
            prompt = fmt.prompt(pending_user) if pending_user is not None else getattr(fmt, "head", "")
            answer = content if isinstance(fmt, Chat) else fmt.response(content)
            closing = "" if last and not add_generation_prompt else eos + getattr(fmt, "tail", "")
            parts.append(prompt + answer + closing)
            pending_user = None
        else:
            raise ValueError(f"chat message {i} has role {role!r}: expected system, user or assistant")
    if pending_user is not None:
        parts.append(fmt.prompt(pending_user))
    return "".join(parts)
