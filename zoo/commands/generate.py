"""``python -m zoo generate --ckpt CKPT --prompt TEXT``: sample from an autoregressive or a masked-diffusion checkpoint.

The objective recorded in the checkpoint describes its sampler family, whose options this command takes: a causal
LM decodes token by token with a KV cache (all prompts in one left-padded batch, or one by one with ``--stream``); a
masked-diffusion LM unmasks a ``--gen-length`` answer over ``--steps`` (LLaDA's low-confidence remasking) and/or by
``--threshold`` (parallel decoding), all prompts in one left-padded batch, with a block-wise KV cache under
``--cache prefix|dual`` (approximate; exact for a block-causal model). The tokenizer comes from the checkpoint. Each
prompt is printed with its answer on stdout; the token count, forward passes, speed and the sampler's note (the
diffusion cache used) go to stderr. ``--ckpt CKPT --help`` lists that checkpoint's options. Examples::

    python -m zoo generate --ckpt runs/quickstart/.../last.ckpt --prompt "def read_config(" --temperature 0.8 \\
        --top-p 0.95 --stop "\\n\\n" --stream
    python -m zoo generate --ckpt runs/diffusion-quickstart/.../last.ckpt --prompt "import os" --steps 64
    python -m zoo generate --ckpt runs/diffusion-quickstart/.../last.ckpt --prompt "import os" --steps 16 \\
        --threshold 0.9 --cache dual
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from collections.abc import Sequence

import torch
from jsonargparse import Namespace

from zoo.commands.errors import command
from zoo.commands.options import CommandParser
from zoo.data.formats import FORMATS
from zoo.objectives.description import SamplerFamily, flag
from zoo.objectives.samplers import FAMILIES
from zoo.training.checkpoints import TRUST_HELP
from zoo.training.precision import INFERENCE_PRECISIONS, inference_autocast


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def parser(families: Sequence[SamplerFamily] = FAMILIES) -> CommandParser:
    """The command's options, and those of each sampler family in ``families`` (zoo's own by default; a checkpoint's
    family once it is known), each family's from the fields and docstring of its options class."""
    p = CommandParser(prog="zoo generate", description=__doc__)
    p.add_argument("--ckpt", type=str, required=True, help="checkpoint written by `python -m zoo fit`")
    p.add_argument("--trust-checkpoint", action="store_true", default=None, help=TRUST_HELP)
    p.add_argument("--prompt", action="append", required=True, help="prompt text (repeat for several)")
    p.add_argument("--input", type=str, default="", help="context for every prompt (the alpaca format's '### Input:')")
    p.add_argument("--format", default="none", choices=sorted(FORMATS), help="prompt template")
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    p.add_argument("--seed", type=int, default=0, help="seed of the sampling generator")
    p.add_argument("--stop", action="extend", nargs="+", default=[],
                   help="stop strings: the answer ends before the first one; backslash escapes such as \\n are "
                   "read as the character")  # fmt: skip
    p.add_argument("--device", type=str, default=default_device(), help="cpu or cuda (cuda when available)")
    p.add_argument("--precision", default="auto", choices=INFERENCE_PRECISIONS,
                   help="auto: bf16 autocast where the device has bf16 units (AMX, AVX512-BF16, sm80+), except where "
                   "the model prefers another (autoregressive decoding on a CPU: fp32 is faster there), else fp32; or "
                   "force 32-true / bf16-mixed")  # fmt: skip
    p.add_argument("--stream", action="store_true",
                   help="print tokens as they come, prompts one at a time (samplers that decide tokens one by one, "
                   "such as autoregressive decoding)")  # fmt: skip
    fields: dict[str, tuple] = {}  # option name: (type, default, family) of the family that added it
    for family in families:
        shared = set()
        for field in dataclasses.fields(family.options):
            if field.name in fields:  # one option of two families (``compile``): one flag, if they agree on it
                kind, default, first = fields[field.name]
                if (kind, default) != (field.type, field.default):
                    raise TypeError(f"option {field.name!r} of sampler family {family.name} is {field.type} = "
                                    f"{field.default!r} but {kind} = {default!r} in {first}: give them one type "
                                    "and default, or another name")  # fmt: skip
                shared.add(field.name)
            else:
                fields[field.name] = (field.type, field.default, family.name)
        add_family(p, family, skip=shared)
    return p


def add_family(p: CommandParser, family: SamplerFamily, *, skip: set[str] = frozenset()) -> None:
    """The options of ``family``, from its options class: type checks, defaults and ``--help`` from its fields and
    docstring, named after the fields (``--max_new_tokens``, also written ``--max-new-tokens``); ``skip``: options an
    earlier family added already."""
    p.add_class_arguments(family.options, as_group=True, instantiate=False, skip=set(skip))


@command("generate")
def main(argv: list[str] | None = None) -> None:
    checkpoint = read_ahead(argv)
    if checkpoint.ckpt is None:  # no checkpoint named: the help of zoo's families, or the parser's error
        parser().parse_args(argv)
        return
    from zoo.training.loading import load_checkpoint

    # one read: the model (in eval mode, on the device), its tokenizer and end-of-text token
    loaded = load_checkpoint(checkpoint.ckpt, device=checkpoint.device, trust=checkpoint.trust_checkpoint)
    family = loaded.model.description.sampler
    refuse_other_families(argv, family, holder=f"{checkpoint.ckpt} holds a {type(loaded.model).__name__}")
    args = parser([family]).parse_args(argv)
    args.stop = [unescape(s) for s in args.stop]
    run(args, loaded.model, loaded.tokenizer, loaded.eos)  # a ValueError/OSError: one line (commands.errors)


def read_ahead(argv: list[str]) -> argparse.Namespace:
    """``--ckpt``, ``--trust-checkpoint`` and ``--device``, read before the rest: the checkpoint's sampler family
    decides which other options exist (the full parse follows, with every type check and error)."""
    ahead = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    ahead.add_argument("--ckpt")
    ahead.add_argument("--trust-checkpoint", action="store_true", default=None)
    ahead.add_argument("--device", default=default_device())
    return ahead.parse_known_args(argv)[0]


def refuse_other_families(argv: list[str], family: SamplerFamily, *, holder: str) -> None:
    """One sentence for options of zoo's other sampler families given to a checkpoint of ``family``, naming its
    own (an autoregressive checkpoint given ``--steps``)."""
    own = {*family.flags(), *(f"--{n}" for n in family.option_names())}
    given = {arg.split("=", 1)[0] for arg in argv if arg.startswith("--")}
    for other in FAMILIES:
        if other is family:
            continue
        foreign = [f for name in other.option_names() for f in (flag(name), f"--{name}") if f in given - own]
        if foreign:
            options = [*family.flags(), *(["--stream"] if family.streams else [])]
            raise ValueError(f"{', '.join(foreign)}: options of {other.name} checkpoints, but {holder} "
                             f"({family.name} sampling); its options are {', '.join(options)}")  # fmt: skip


def unescape(text: str) -> str:
    """``"\\n\\n"`` typed in a shell → two newlines; other characters (non-ASCII included) unchanged."""
    return text.encode("latin-1", "backslashreplace").decode("unicode_escape")


def run(args: Namespace, model, tokenizer, eos: str) -> None:
    from zoo.generation.sampling import sample

    description = model.description
    family = description.sampler
    options = family.options(**{name: args[name] for name in family.option_names()})
    eos_id = tokenizer.token_to_id(eos)
    template = FORMATS[args.format]()
    texts = [template.prompt(text, args.input) for text in args.prompt]
    prompts = [tokenizer.encode(text, add_special_tokens=False).ids or [eos_id] for text in texts]
    common = {"temperature": args.temperature, "eos_id": eos_id, "stop": args.stop, "tokenizer": tokenizer,
              "generator": torch.Generator(device=args.device).manual_seed(args.seed), "options": options}  # fmt: skip
    preferred = description.preferred_precision(torch.device(args.device).type)
    precision, autocast = inference_autocast(args.precision, args.device, preferred=preferred)
    start = time.perf_counter()
    n_tokens = passes = 0
    with autocast:
        if args.stream and family.streams:  # one prompt at a time, tokens as they come
            for text, prompt in zip(texts, prompts):
                print(text, end="", flush=True)
                out = sample(model, [prompt], on_token=lambda row, token, piece: print(piece, end="", flush=True),
                             **common)  # fmt: skip
                print(flush=True)
                n_tokens, passes = n_tokens + len(out.tokens[0]), passes + out.forward_passes
        else:
            out = sample(model, prompts, **common)
            for text, answer in zip(texts, out.texts):
                print(text + answer, flush=True)
            n_tokens, passes = sum(len(t) for t in out.tokens), out.forward_passes
    seconds = time.perf_counter() - start
    print(f"[{n_tokens} tokens, {passes} forward passes, {n_tokens / seconds:.1f} tokens/s, {precision}]",
          file=sys.stderr)
    if family.note is not None:
        print(family.note(description, options), file=sys.stderr)
