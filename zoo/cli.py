"""``python -m zoo``: the table of subcommands and :func:`main`, nothing else.

Lightning's ``fit/validate/test/predict`` go to :class:`zoo.commands.fit.ZooCLI`; zoo's own subcommands each live
in one module of :mod:`zoo.commands` (parse the arguments, make one library call, print).
"""

from __future__ import annotations

import importlib
import sys

# zoo's own subcommands: name -> (one-line help, "module:function" taking argv). Imported only when called, so
# `python -m zoo fit` does not pay for transformers or the samplers. Lightning's subcommands go to ZooCLI.
COMMANDS: dict[str, tuple[str, str]] = {
    "info": ("architecture and parameter count of a model config, without allocating weights",
             "zoo.commands.info:main"),
    "export": ("write a checkpoint as a Hugging Face transformers directory", "zoo.commands.export:main"),
    "generate": ("sample from an autoregressive or masked-diffusion checkpoint", "zoo.commands.generate:main"),
    "eval": ("zero-shot task scores of a checkpoint, as lm-evaluation-harness computes them",
             "zoo.commands.eval:main"),
    "tokenizer": ("train a byte-level BPE tokenizer on a data config", "zoo.commands.tokenizer:main"),
    "data": ("tokenize a run's data once into token shards (zoo data prepare)", "zoo.commands.data:main"),
    "checkpoint": ("convert a checkpoint of an older zoo so that it loads weights-only",
                   "zoo.commands.checkpoint:main"),
}

LIGHTNING_COMMANDS = ("fit", "validate", "test", "predict")


def main(argv: list[str] | None = None) -> None:
    """Run the subcommand ``argv`` names (default: ``sys.argv``). A user's error (a bad value, file or option) is
    printed as one line, ``zoo <command>: <message>``, with exit status 2; ``--verbose`` or ``ZOO_TRACEBACK=1``
    shows its traceback (:mod:`zoo.commands.errors`)."""
    from zoo.commands.errors import run_command

    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] in COMMANDS:
        module_name, _, function = COMMANDS[argv[0]][1].partition(":")
        getattr(importlib.import_module(module_name), function)(argv[1:])  # each reports errors via run_command
        return
    if argv and argv[0] not in LIGHTNING_COMMANDS and not argv[0].startswith("-"):
        known = ", ".join([*LIGHTNING_COMMANDS, *COMMANDS])
        print(f"zoo: unknown command {argv[0]!r}; choose one of: {known}", file=sys.stderr)
        sys.exit(2)
    name = argv[0] if argv and argv[0] in LIGHTNING_COMMANDS else "fit"
    run_command(name, _lightning, argv)


def _lightning(argv: list[str]) -> None:
    from zoo.commands.fit import ZooCLI  # Lightning is imported only for its subcommands

    # LightningCLI reads sys.argv, which DDP also re-launches each rank with: it is given the arguments without
    # --verbose (ZOO_TRACEBACK carries that to the ranks) for the run, then restored
    saved, sys.argv = sys.argv, [sys.argv[0], *argv]
    try:
        ZooCLI()
    finally:
        sys.argv = saved
