"""``python -m zoo export --ckpt CKPT --out DIR [--format auto|hf|remote-code|gguf]``: a zoo checkpoint as a Hugging
Face transformers directory or a GGUF file for llama.cpp, with a model card; see :mod:`zoo.interop.export` for the
formats. The options are the arguments of :func:`zoo.interop.export.export`. Errors exit with status 2."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from zoo.commands.errors import command
from zoo.commands.options import add_trust_flag, command_parser
from zoo.errors import ZooError
from zoo.interop import export as library
from zoo.interop.export import DTYPES, export


def parser():
    p = command_parser("python -m zoo export", library.__doc__, export, skip={"dtype", "trust"})
    p.add_argument("--dtype", type=Literal[tuple(sorted(DTYPES))], default="float32",
                   help="dtype of the exported weights")  # fmt: skip
    add_trust_flag(p)
    return p


@command("export")
def main(argv: list[str]) -> None:
    args = parser().parse_args(argv)
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
