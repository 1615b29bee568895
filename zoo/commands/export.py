"""``python -m zoo export --ckpt CKPT --out DIR [--format auto|hf|remote-code|gguf]``: a zoo checkpoint as a Hugging
Face transformers directory or a GGUF file for llama.cpp, with a model card; see :mod:`zoo.interop.export` for the
formats. Errors exit with status 2."""

from __future__ import annotations

import argparse
from pathlib import Path

from zoo.commands.errors import command
from zoo.errors import ZooError
from zoo.interop import export as library
from zoo.interop.export import DTYPES, FORMATS, export
from zoo.training.checkpoints import TRUST_HELP


@command("export")
def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m zoo export", description=library.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--ckpt", required=True, help="checkpoint written by `python -m zoo fit` (e.g. last.ckpt)")
    parser.add_argument("--out", required=True, help="directory to write (created if missing)")
    parser.add_argument(
        "--format", choices=["auto", *FORMATS], default="auto",
        help="auto (default): stock classes where they apply, else remote code; gguf for llama.cpp",
    )  # fmt: skip
    parser.add_argument(
        "--dtype", choices=sorted(DTYPES), default="float32", help="dtype of the exported weights (default float32)"
    )
    parser.add_argument("--overwrite", action="store_true", help="replace --out if it exists and is not empty")
    parser.add_argument("--trust-checkpoint", action="store_true", default=None, help=TRUST_HELP)
    parser.add_argument("--outtype", choices=["f32", "f16", "q8_0"], help="GGUF tensor type (default from --dtype)")
    parser.add_argument("--license", help="license id for the model card, e.g. apache-2.0")
    parser.add_argument("--eval-results", help="`zoo eval --output` JSON whose scores go into the model card")
    parser.add_argument("--tokenizer", help="tokenizer.json, for a checkpoint that carries none")
    parser.add_argument("--eos-token", help="the --tokenizer's end-of-text token (default <|endoftext|>)")
    args = parser.parse_args(argv)

    if not Path(args.ckpt).is_file():
        raise ZooError(f"--ckpt {args.ckpt} is not a file: give a checkpoint written by `python -m zoo fit`")
    # errors (ValueError, OSError, ZooError): one line, exit status 2, by zoo.commands.errors.run_command
    directory = export(args.ckpt, args.out, format=args.format, dtype=DTYPES[args.dtype],
                       overwrite=args.overwrite, outtype=args.outtype, license=args.license,
                       eval_results=args.eval_results, tokenizer=args.tokenizer,
                       eos_token=args.eos_token, trust=args.trust_checkpoint)  # fmt: skip
    if args.format == "gguf":
        print(f"wrote {directory}: load {next(directory.glob('*.gguf')).name} with llama.cpp (see its README.md)")
        return
    remote = (directory / "modeling_zoo.py").exists()
    call = f"from_pretrained({str(directory)!r}{', trust_remote_code=True' if remote else ''})"
    print(f"wrote {directory}: load it with transformers.AutoModelForCausalLM.{call}")
