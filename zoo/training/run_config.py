"""A run's config, parsed as ``python -m zoo fit`` parses it and built one section at a time, for the commands that
read a run config without training it (``zoo info`` builds its model, ``zoo tokenizer train`` and ``zoo data
prepare`` its data module).

:func:`add_run_arguments` declares the sections every run has beside ``trainer``, ``model`` and ``data``; both
``zoo fit`` (:class:`zoo.commands.fit.ZooCLI`) and :func:`parse_run_config` add them, so a config that one accepts
the other accepts too.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import yaml
from jsonargparse import Namespace
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from zoo import compat
from zoo.commands.errors import explain_parser_error
from zoo.data.base import TextDataModule
from zoo.errors import ZooError
from zoo.objectives.base import LanguageModel
from zoo.training.checkpoints import TRUST_ENV
from zoo.training.guards import NonFiniteGuard
from zoo.training.throughput import TokenThroughput


def add_run_arguments(parser: LightningArgumentParser) -> None:
    """The sections of a run config beside ``trainer``, ``model`` and ``data``: ``checkpoint:`` (the run's
    ``ModelCheckpoint``, ``save_last`` on), ``throughput:``, ``nonfinite:`` and ``--trust_checkpoint``."""
    parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
    parser.set_defaults({"checkpoint.save_last": True})
    parser.add_lightning_class_args(TokenThroughput, "throughput")
    parser.add_lightning_class_args(NonFiniteGuard, "nonfinite")
    parser.add_argument(
        "--trust_checkpoint", type=bool, default=False,
        help="read checkpoints that hold pickled Python objects (written by an older zoo) by unpickling them, or "
        "that name classes other than zoo's and torch's, which runs any code they name: only files you trust "
        f"(also: {TRUST_ENV}=1). Default: weights-only, zoo and torch classes only",
    )  # fmt: skip


class RunConfigParser(LightningArgumentParser):
    """Lightning's parser as ``zoo fit`` configures it: options are never abbreviated and a list given later
    replaces the earlier one (:func:`zoo.compat.replace_lists`)."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("allow_abbrev", False)
        compat.replace_lists()
        super().__init__(*args, **kwargs)


class _ParseOnly(LightningCLI):
    """``zoo fit``'s ``LightningCLI`` that stops after parsing: the same sections, ``--config`` merging,
    relative-path resolution and checks, with nothing built, seeded or read from a checkpoint."""

    def __init__(self, args: list[str], defaults: dict | None, optional: tuple[str, ...]) -> None:
        self._parse_defaults, self._optional = defaults or {}, optional
        super().__init__(LanguageModel, TextDataModule, subclass_mode_model=True, subclass_mode_data=True,
                         parser_class=RunConfigParser, args=args, run=False,
                         parser_kwargs={"exit_on_error": False})  # fmt: skip

    def add_core_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        # LightningCLI's own sections (trainer, model, data), with the ones the command reads nothing from optional
        parser.add_lightning_class_args(self.trainer_class, "trainer")
        for key, cls in (("model", self._model_class), ("data", self._datamodule_class)):
            parser.add_lightning_class_args(cls, key, subclass_mode=True, required=key not in self._optional)

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        add_run_arguments(parser)
        parser.set_defaults(self._parse_defaults)

    def parse_arguments(self, parser: LightningArgumentParser, args) -> None:
        self.config = parser.parse_args(args)
        # nothing is seeded: LightningCLI seeds when seed_everything is not false; the value is put back below
        self._seed, self.config["seed_everything"] = self.config.get("seed_everything"), False

    def before_instantiate_classes(self) -> None:
        self.config["seed_everything"] = self._seed

    def instantiate_classes(self) -> None:
        return None


def parse_run_config(
    args: list[str], *, defaults: dict | None = None, optional: tuple[str, ...] = ()
) -> tuple[LightningArgumentParser, Namespace]:
    """Parse ``args`` (``--config FILE`` repeatable, ``--model.…`` overrides) exactly as ``python -m zoo fit`` does,
    building nothing. ``defaults`` fills what a command does not ask the user for; ``optional`` names the sections
    (``model``, ``data``) a command reads nothing from, so a config may leave them out (``zoo info`` needs no
    data, ``zoo tokenizer train`` no model). Returns the parser and the parsed config; errors raise
    ``jsonargparse.ArgumentError``."""
    cli = _ParseOnly(args, defaults, optional)
    return cli.parser, cli.config


def instantiate_section(parser: LightningArgumentParser, config: Namespace, key: str):
    """Build one section (``model`` or ``data``) of a config parsed by :func:`parse_run_config`, as ``zoo fit``
    builds it, leaving the others (the trainer may need hardware this machine lacks) unbuilt."""
    return parser.instantiate_classes(Namespace({key: config[key]}), instantiate_groups=False)[key]


def build_data_module(configs: list[str], overrides: list[str] = ()):
    """The data module that run configs' ``data:`` sections (or one data-module config) describe, with ``--data.…``
    ``overrides``, parsed and built by the parser of ``python -m zoo fit`` (a run config's model section is parsed,
    not built, and may be left out), so relative paths, ``--config`` merging and errors are fit's. Raises
    :class:`ZooError` naming the config."""
    for config in configs:
        if not Path(config).is_file():
            raise ZooError(f"--config {config} does not exist: give a run config or a data-module config (YAML)")
    top = yaml.safe_load(Path(configs[0]).read_text()) if len(configs) == 1 else None
    flag = "--data" if isinstance(top, dict) and "class_path" in top else "--config"  # a data-module config
    try:
        parser, parsed = parse_run_config([a for c in configs for a in (flag, str(c))] + list(overrides),
                                          optional=("model",))  # fmt: skip
        if parsed.get("data") is None:
            raise ValueError("expected a `data:` section with a class_path (or a data-module config)")
        return instantiate_section(parser, parsed, "data")
    except Exception as err:  # parser and constructor errors alike, named without a traceback
        raise ZooError(f"--config {configs[-1]} does not describe a data module: {config_error_text(err)}") from None


def config_error_text(err: Exception) -> str:
    """jsonargparse's message for a config that does not parse or build, without the lines that restate the whole
    value or the ``None`` alternative of an optional section (the reason and the key stay)."""
    return explain_parser_error(str(err)) if isinstance(err, argparse.ArgumentError) else str(err)
