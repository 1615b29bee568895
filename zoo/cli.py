"""``python -m zoo``: Lightning's ``fit/validate/test/predict`` plus zoo's own subcommands.

``fit`` and friends go through :class:`ZooCLI` (a ``LightningCLI``): every Trainer flag, ``--config`` (repeatable,
later files override earlier ones), ``--print_config``, and ``class_path`` choices for the objective
(``--model``), the data module (``--data``) and each block inside the backbone.
"""

from __future__ import annotations

import importlib
import os
import sys

from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.utilities import rank_zero_warn

from zoo.callbacks import TokenThroughput
from zoo.data.base import TextDataModule
from zoo.faults import (
    AtomicCheckpointIO,
    NonFiniteGuard,
    RandomState,
    checkpoint_dirs,
    newest_good_checkpoint,
    read_checkpoint,
)
from zoo.objectives.base import LanguageModel


class ZooCLI(LightningCLI):
    """LightningCLI with a checkpoint, a throughput and a non-finite-loss callback in every run, configured under
    ``checkpoint:``, ``throughput:`` and ``nonfinite:`` in YAML (``--checkpoint.every_n_train_steps 500``,
    ``--nonfinite.policy stop``). Every run also writes its checkpoint files atomically
    (:class:`zoo.faults.AtomicCheckpointIO`), saves its random state in them, and ``--ckpt_path last`` resumes from
    the newest checkpoint of the run folder that reads (:func:`zoo.faults.newest_good_checkpoint`)."""

    def __init__(self, args=None, **kwargs) -> None:
        defaults = dict(kwargs.pop("trainer_defaults", None) or {})
        extra = defaults.get("callbacks", [])
        defaults["callbacks"] = [*(extra if isinstance(extra, list) else [extra]), RandomState()]
        super().__init__(
            LanguageModel,
            TextDataModule,
            subclass_mode_model=True,
            subclass_mode_data=True,
            save_config_kwargs={"overwrite": True},
            trainer_defaults=defaults,
            args=args,
            **kwargs,
        )

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        parser.set_defaults({"checkpoint.save_last": True})
        parser.add_lightning_class_args(TokenThroughput, "throughput")
        parser.add_lightning_class_args(NonFiniteGuard, "nonfinite")

    def instantiate_trainer(self, **kwargs):
        trainer = super().instantiate_trainer(**kwargs)
        # Lightning's default CheckpointIO becomes the atomic one; strategies with their own (XLA) or a user's plugin
        # are left alone. Set on the strategy, so every rank's strategy (DDP re-runs this CLI per rank) has it.
        if type(trainer.strategy.checkpoint_io) is TorchCheckpointIO:
            trainer.strategy.checkpoint_io = AtomicCheckpointIO()
        return trainer

    def parse_arguments(self, parser: LightningArgumentParser, args) -> None:
        super().parse_arguments(parser, args)
        # LightningCLI reads the hyperparameters of a --ckpt_path file right after parsing; a truncated or foreign
        # file would fail there with torch's bare unpickling error, so it is named here first.
        ckpt_path = self.config.get(self.config.get("subcommand") or "", {}).get("ckpt_path")
        if ckpt_path and ckpt_path not in ("last", "best", "hpc") and os.path.isfile(ckpt_path):
            read_checkpoint(ckpt_path, mmap=True)

    def before_fit(self) -> None:
        # Lightning's "last" looks only in this run's new version folder, which a resumed run has not written yet
        # (it would silently start over): look through the whole run folder, skipping unreadable files.
        config = self.config_init[self.subcommand]
        if config.get("ckpt_path") == "last":
            dirs = checkpoint_dirs(self.trainer)
            found = newest_good_checkpoint(dirs)
            if found is None:
                rank_zero_warn(f"--ckpt_path last: no checkpoint under {[str(d) for d in dirs]}; training starts over")
            config["ckpt_path"] = None if found is None else str(found)
        if config.get("ckpt_path") is not None and getattr(self.model, "init_from", None) is not None:
            # Lightning runs setup() (which applies init_from) before restoring the checkpoint: a resumed stage
            # needs neither the previous stage's weights nor that file to still exist.
            self.model.init_from = None


# zoo's own subcommands: name -> (one-line help, "module:function" taking argv). Imported only when called, so
# `python -m zoo fit` does not pay for transformers or the samplers. Lightning's subcommands go to ZooCLI.
COMMANDS: dict[str, tuple[str, str]] = {
    "info": ("architecture and parameter count of a model config, without allocating weights", "zoo.info:main"),
    "export": ("write a checkpoint as a Hugging Face transformers directory", "zoo.interop.export:main"),
    "generate": ("sample from an autoregressive or masked-diffusion checkpoint", "zoo.generation.cli:main"),
    "eval": ("zero-shot task scores of a checkpoint, as lm-evaluation-harness computes them", "zoo.eval.cli:main"),
    "tokenizer": ("train a byte-level BPE tokenizer on a data config", "zoo.data.tokenizer_cli:main"),
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
