"""``python -m zoo``: Lightning's ``fit/validate/test/predict`` plus zoo's own subcommands.

``fit`` and friends go through :class:`ZooCLI` (a ``LightningCLI``): every Trainer flag, ``--config`` (repeatable,
later files override earlier ones), ``--print_config``, and ``class_path`` choices for the objective
(``--model``), the data module (``--data``) and each block inside the backbone.
"""

from __future__ import annotations

import importlib
import sys

from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from zoo.callbacks import TokenThroughput
from zoo.data.base import TextDataModule
from zoo.objectives.base import LanguageModel


class ZooCLI(LightningCLI):
    """LightningCLI with a checkpoint and a throughput callback in every run, configured under ``checkpoint:``
    and ``throughput:`` in YAML (``--checkpoint.every_n_train_steps 500``)."""

    def __init__(self, args=None, **kwargs) -> None:
        super().__init__(
            LanguageModel,
            TextDataModule,
            subclass_mode_model=True,
            subclass_mode_data=True,
            save_config_kwargs={"overwrite": True},
            args=args,
            **kwargs,
        )

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        parser.set_defaults({"checkpoint.save_last": True})
        parser.add_lightning_class_args(TokenThroughput, "throughput")


# zoo's own subcommands: name -> (one-line help, "module:function" taking argv). Imported only when called, so
# `python -m zoo fit` does not pay for transformers or the samplers. Lightning's subcommands go to ZooCLI.
COMMANDS: dict[str, tuple[str, str]] = {
    "info": ("architecture and parameter count of a model config, without allocating weights", "zoo.info:main"),
    "export": ("write a checkpoint as a Hugging Face transformers directory", "zoo.interop.export:main"),
    "generate": ("sample from an autoregressive or masked-diffusion checkpoint", "zoo.generation.cli:main"),
}

LIGHTNING_COMMANDS = ("fit", "validate", "test", "predict")


def main(argv: list[str] | None = None) -> None:
    args = argv  # None: LightningCLI reads sys.argv itself (and warns when given both)
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in COMMANDS:
        module_name, _, function = COMMANDS[argv[0]][1].partition(":")
        getattr(importlib.import_module(module_name), function)(argv[1:])
        return
    if argv and argv[0] not in LIGHTNING_COMMANDS and not argv[0].startswith("-"):
        known = ", ".join([*LIGHTNING_COMMANDS, *COMMANDS])
        sys.exit(f"zoo: unknown command {argv[0]!r}; choose one of: {known}")
    ZooCLI(args=args)
