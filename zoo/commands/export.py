"""``python -m zoo export --ckpt CKPT --out DIR``: a zoo checkpoint as a Hugging Face transformers directory.

DIR gets ``config.json``, ``model.safetensors``, ``generation_config.json`` and the run's tokenizer
(``tokenizer.json`` with its end-of-text token as eos, bos and pad), so that
``transformers.AutoModelForCausalLM.from_pretrained(DIR)`` and ``transformers.pipeline("text-generation",
model=DIR)`` work with the stock library (no remote code). The model family follows from the architecture (see
:mod:`zoo.interop.hf`); blocks transformers cannot express (exclusive attention, Canon layers, ...) are refused
by name, with exit status 2.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from zoo.interop.export import DTYPES, export


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m zoo export", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--ckpt", required=True, help="checkpoint written by `python -m zoo fit` (e.g. last.ckpt)")
    parser.add_argument("--out", required=True, help="directory to write (created if missing)")
    parser.add_argument(
        "--dtype", choices=sorted(DTYPES), default="float32", help="dtype of the exported weights (default float32)"
    )
    args = parser.parse_args(argv)

    def fail(message: str) -> None:
        print(f"zoo export: error: {message}", file=sys.stderr)
        sys.exit(2)  # argparse's status for a bad command line

    if not Path(args.ckpt).is_file():
        fail(f"--ckpt {args.ckpt} is not a file: give the path of a checkpoint written by `python -m zoo fit`")
    try:
        directory = export(args.ckpt, args.out, dtype=DTYPES[args.dtype])
    except (ValueError, OSError) as err:
        fail(str(err))
    print(f"wrote {directory}: load it with transformers.AutoModelForCausalLM.from_pretrained({str(directory)!r})")
