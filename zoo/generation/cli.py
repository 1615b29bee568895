"""``python -m zoo generate --ckpt CKPT --prompt TEXT``: sample from an autoregressive or a masked-diffusion checkpoint.

The objective recorded in the checkpoint decides the sampler: a causal LM decodes token by token with a KV cache;
a masked-diffusion LM unmasks its answer over ``--steps`` (or by ``--threshold``). The tokenizer comes from the
checkpoint. Examples::

    python -m zoo generate --ckpt runs/quickstart/.../last.ckpt --prompt "def read_config(" --temperature 0.8
    python -m zoo generate --ckpt runs/diffusion-quickstart/.../last.ckpt --prompt "import os" --steps 64
"""

from __future__ import annotations

import argparse
import sys
import time

import torch


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="zoo generate", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--ckpt", required=True, help="checkpoint written by `python -m zoo fit`")
    p.add_argument("--prompt", action="append", required=True, help="prompt text (repeat for several)")
    p.add_argument("--format", default="none", help="prompt template: none, alpaca or user_assistant")
    p.add_argument("--max-new-tokens", type=int, default=100, help="autoregressive: tokens to generate at most")
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    p.add_argument("--top-k", type=int, default=0, help="autoregressive: keep the k most likely tokens (0 = all)")
    p.add_argument("--top-p", type=float, default=1.0, help="autoregressive: nucleus probability (1 = all)")
    p.add_argument("--stop", action="append", default=[], help="autoregressive: stop string (repeatable)")
    p.add_argument("--gen-length", type=int, default=64, help="diffusion: answer length")
    p.add_argument("--block-length", type=int, default=32, help="diffusion: semi-autoregressive block length")
    p.add_argument("--steps", type=int, default=64, help="diffusion: forward passes (low-confidence remasking)")
    p.add_argument("--threshold", type=float, help="diffusion: confidence-threshold decoding instead of --steps")
    p.add_argument("--remasking", default="low_confidence", help="diffusion: low_confidence or random")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--no-stream", action="store_true", help="print each answer when complete")
    return p


def main(argv: list[str]) -> None:
    args = parser().parse_args(argv)
    try:
        run(args)
    except (ValueError, FileNotFoundError) as err:
        print(f"zoo generate: {err}", file=sys.stderr)
        sys.exit(2)


def run(args) -> None:
    from zoo.data.formats import FORMATS
    from zoo.data.tokenizer import tokenizer_from_checkpoint
    from zoo.generation.autoregressive import generate
    from zoo.generation.diffusion import confidence_threshold, low_confidence_remasking
    from zoo.objectives.base import LanguageModel
    from zoo.objectives.masked_diffusion import MaskedDiffusionLM

    if args.format not in FORMATS:
        raise ValueError(f"--format {args.format!r} is unknown; choose one of {sorted(FORMATS)}")
    model = LanguageModel.from_checkpoint(args.ckpt, map_location=args.device).eval()
    tokenizer, eos = tokenizer_from_checkpoint(args.ckpt)
    eos_id = tokenizer.token_to_id(eos)
    generator = torch.Generator(device=args.device).manual_seed(args.seed)
    for text in args.prompt:
        prompt_text = FORMATS[args.format].prompt(text)
        ids = tokenizer.encode(prompt_text, add_special_tokens=False).ids or [eos_id]
        start = time.perf_counter()
        print(prompt_text, end="", flush=True)
        if isinstance(model, MaskedDiffusionLM):
            prompt = torch.tensor([ids], device=args.device)
            common = {"mask_id": model.mask_id, "vocab_size": model.backbone.vocab_size, "gen_length": args.gen_length,
                      "block_length": args.block_length, "temperature": args.temperature, "eos_id": eos_id,
                      "shift": model.shift, "generator": generator}  # fmt: skip
            if args.threshold is not None:
                out = confidence_threshold(model.backbone, prompt, threshold=args.threshold, **common)
            else:
                out = low_confidence_remasking(model.backbone, prompt, steps=args.steps, remasking=args.remasking,
                                               **common)  # fmt: skip
            new = [t for t in out.tokens[0, len(ids) :].tolist() if t != eos_id]
            print(tokenizer.decode(new), flush=True)
            passes = out.forward_passes
        else:
            stream = {"ids": [], "printed": ""}

            def on_token(token: int, stream: dict = stream) -> None:
                if args.no_stream or token == eos_id:
                    return
                stream["ids"].append(token)
                text_so_far = tokenizer.decode(stream["ids"])
                print(text_so_far[len(stream["printed"]) :], end="", flush=True)
                stream["printed"] = text_so_far

            def stop(new: list[int]) -> bool:
                return bool(args.stop) and any(s in tokenizer.decode(new) for s in args.stop)

            out = generate(model.backbone, ids, max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                           top_k=args.top_k, top_p=args.top_p, eos_id=eos_id, stop=stop, on_token=on_token,
                           generator=generator)  # fmt: skip
            new = [t for t in out.tokens if t != eos_id]
            text_out = tokenizer.decode(new)
            for s in args.stop:  # the stop string ends the answer and is not part of it
                text_out = text_out.split(s)[0] if s in text_out else text_out
            print(text_out if args.no_stream else "", flush=True)
            passes = out.forward_passes
        seconds = time.perf_counter() - start
        print(f"[{len(new)} tokens, {passes} forward passes, {len(new) / seconds:.1f} tokens/s]", file=sys.stderr)
