"""``python -m zoo generate --ckpt CKPT --prompt TEXT``: sample from an autoregressive or a masked-diffusion checkpoint.

The objective recorded in the checkpoint decides the sampler: a causal LM decodes token by token with a KV cache
(all prompts in one left-padded batch, or one by one with ``--stream``); a masked-diffusion LM unmasks a
``--gen-length`` answer over ``--steps`` (LLaDA's low-confidence remasking) and/or by ``--threshold`` (parallel
decoding), all prompts in one left-padded batch, with a block-wise KV cache under ``--cache prefix|dual``
(approximate; exact for a block-causal model). The tokenizer comes from the checkpoint. Each prompt is printed with
its answer on stdout; the token count, forward passes, speed and the diffusion cache used go to stderr. Examples::

    python -m zoo generate --ckpt runs/quickstart/.../last.ckpt --prompt "def read_config(" --temperature 0.8 \\
        --top-p 0.95 --stop "\\n\\n" --stream
    python -m zoo generate --ckpt runs/diffusion-quickstart/.../last.ckpt --prompt "import os" --steps 64
    python -m zoo generate --ckpt runs/diffusion-quickstart/.../last.ckpt --prompt "import os" --steps 16 \\
        --threshold 0.9 --cache dual
"""

from __future__ import annotations

import argparse
import sys
import time

import torch

from zoo.commands.errors import command
from zoo.data.formats import FORMATS
from zoo.generation.diffusion import REMASKING
from zoo.generation.fast_diffusion import CACHES, REFRESH
from zoo.training.checkpoints import TRUST_HELP
from zoo.training.precision import INFERENCE_PRECISIONS, inference_autocast


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="zoo generate", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--ckpt", required=True, help="checkpoint written by `python -m zoo fit`")
    p.add_argument("--trust-checkpoint", action="store_true", default=None, help=TRUST_HELP)
    p.add_argument("--prompt", action="append", required=True, help="prompt text (repeat for several)")
    p.add_argument("--input", default="", help="context for every prompt (the alpaca format's '### Input:')")
    p.add_argument("--format", default="none", choices=sorted(FORMATS), help="prompt template (default: none)")
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    p.add_argument("--seed", type=int, default=0, help="seed of the sampling generator")
    p.add_argument("--stop", action="extend", nargs="+", default=[],
                   help="stop strings: the answer ends before the first one; backslash escapes such as \\n are "
                   "read as the character")  # fmt: skip
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                   help="cpu or cuda (default: cuda when available)")  # fmt: skip
    p.add_argument("--precision", default="auto", choices=INFERENCE_PRECISIONS,
                   help="auto (default): bf16 autocast where the device has bf16 units (AMX, AVX512-BF16, sm80+), "
                   "except autoregressive decoding on a CPU (fp32 is faster there), else fp32; or force 32-true / "
                   "bf16-mixed")  # fmt: skip
    ar = p.add_argument_group("autoregressive models")
    ar.add_argument("--max-new-tokens", type=int, default=100, help="tokens to generate at most")
    ar.add_argument("--top-k", type=int, default=0, help="keep the k most likely tokens (0 = all)")
    ar.add_argument("--top-p", type=float, default=1.0, help="nucleus probability (1 = all)")
    ar.add_argument("--repetition-penalty", type=float, default=1.0, help="CTRL-style penalty (1 = none)")
    ar.add_argument("--no-repeat-ngram-size", type=int, default=0, help="forbid repeated n-grams (0 = off)")
    ar.add_argument("--stream", action="store_true", help="print tokens as they come (prompts one at a time)")
    dm = p.add_argument_group("masked-diffusion models")
    dm.add_argument("--gen-length", type=int, help="answer length in tokens (default: 64)")
    dm.add_argument("--block-length", type=int,
                    help="semi-autoregressive block; divides --gen-length (default: 32, or a block-causal model's "
                    "decay_block)")  # fmt: skip
    dm.add_argument(
        "--steps",
        type=int,
        help="unmasking steps; a multiple of the number of blocks (default: 64, or none with --threshold)",
    )
    dm.add_argument(
        "--threshold", type=float, help="parallel decoding: unmask every position at least this confident, in (0, 1]"
    )
    dm.add_argument("--cache", choices=CACHES, help="KV cache: none (default), prefix or dual (block-wise; exact "
                    "for block-causal models)")  # fmt: skip
    dm.add_argument("--refresh", choices=REFRESH, help="when the cache is refreshed: block (default) or step")
    dm.add_argument("--remasking", choices=REMASKING, help="which predictions a step keeps (default: low_confidence)")
    return p


DIFFUSION_OPTIONS = ("gen_length", "block_length", "steps", "threshold", "cache", "refresh", "remasking")
AR_OPTIONS = ("--max-new-tokens", "--top-k", "--top-p", "--repetition-penalty", "--no-repeat-ngram-size", "--stream")


@command("generate")
def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    args.stop = [unescape(s) for s in args.stop]
    run(args)  # a ValueError/OSError is printed as one line by zoo.commands.errors.run_command


def unescape(text: str) -> str:
    """``"\\n\\n"`` typed in a shell → two newlines; other characters (non-ASCII included) unchanged."""
    return text.encode("latin-1", "backslashreplace").decode("unicode_escape")


def run(args: argparse.Namespace) -> None:
    from zoo.data.tokenizer import tokenizer_from_checkpoint
    from zoo.generation.sampling import sample
    from zoo.objectives.base import LanguageModel

    model = LanguageModel.from_checkpoint(args.ckpt, map_location=args.device, trust=args.trust_checkpoint).eval()
    tokenizer, eos = tokenizer_from_checkpoint(args.ckpt, trust=args.trust_checkpoint)
    eos_id = tokenizer.token_to_id(eos)
    template = FORMATS[args.format]()
    texts = [template.prompt(text, args.input) for text in args.prompt]
    prompts = [tokenizer.encode(text, add_special_tokens=False).ids or [eos_id] for text in texts]
    common = {"temperature": args.temperature, "eos_id": eos_id, "stop": args.stop, "tokenizer": tokenizer,
              "generator": torch.Generator(device=args.device).manual_seed(args.seed)}  # fmt: skip
    given = [f"--{name.replace('_', '-')}" for name in DIFFUSION_OPTIONS if getattr(args, name) is not None]
    if given and model.sampler_kind != "diffusion":
        raise ValueError(
            f"{', '.join(given)}: options of masked-diffusion checkpoints, but {args.ckpt} holds an "
            f"autoregressive {type(model).__name__}; its options are {', '.join(AR_OPTIONS)}"
        )
    options = diffusion_options(args) if model.sampler_kind == "diffusion" else autoregressive_options(args)
    precision, autocast = inference_autocast(args.precision, args.device, sampler_kind=model.sampler_kind)
    start = time.perf_counter()
    n_tokens = passes = 0
    with autocast:
        if args.stream and model.sampler_kind == "autoregressive":  # one prompt at a time, tokens as they come
            for text, prompt in zip(texts, prompts):
                print(text, end="", flush=True)
                out = sample(model, [prompt], on_token=lambda row, token, piece: print(piece, end="", flush=True),
                             **common, **options)  # fmt: skip
                print(flush=True)
                n_tokens, passes = n_tokens + len(out.tokens[0]), passes + out.forward_passes
        else:
            out = sample(model, prompts, **common, **options)
            for text, answer in zip(texts, out.texts):
                print(text + answer, flush=True)
            n_tokens, passes = sum(len(t) for t in out.tokens), out.forward_passes
    seconds = time.perf_counter() - start
    print(f"[{n_tokens} tokens, {passes} forward passes, {n_tokens / seconds:.1f} tokens/s, {precision}]",
          file=sys.stderr)
    if model.sampler_kind == "diffusion":
        from zoo.generation.fast_diffusion import block_causal_size, cache_used

        block = block_causal_size(model)
        kind = f"block-causal, blocks of {block}" if block is not None else "bidirectional"
        used = cache_used(options.get("cache", "none"), block_causal=block is not None, refresh=args.refresh or "block")
        print(f"[cache: {used} ({kind} model)]", file=sys.stderr)


def autoregressive_options(args: argparse.Namespace) -> dict:
    return {"max_new_tokens": args.max_new_tokens, "top_k": args.top_k, "top_p": args.top_p,
            "repetition_penalty": args.repetition_penalty,
            "no_repeat_ngram_size": args.no_repeat_ngram_size}  # fmt: skip


def diffusion_options(args: argparse.Namespace) -> dict:
    """The diffusion options given on the command line (the sampler's defaults for the others)."""
    names = {"gen_length": "max_new_tokens", "block_length": "block_length", "steps": "steps",
             "threshold": "threshold", "cache": "cache", "refresh": "refresh", "remasking": "remasking"}  # fmt: skip
    options = {key: getattr(args, name) for name, key in names.items() if getattr(args, name) is not None}
    return {"max_new_tokens": 64, **options}
