"""``python -m zoo fit`` (and ``validate``, ``test``, ``predict``): :class:`ZooCLI`, a ``LightningCLI``.

Every Trainer flag, ``--config`` (repeatable, later files override earlier ones), ``--print_config``, and
``class_path`` choices for the objective (``--model``), the data module (``--data``) and each block inside the
backbone.
"""

from __future__ import annotations

import os
from pathlib import Path

from jsonargparse import Namespace
from lightning.pytorch.callbacks import (
    ModelCheckpoint,
    ModelSummary,
    RichModelSummary,
    RichProgressBar,
    TQDMProgressBar,
)
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

from zoo.data.base import TextDataModule
from zoo.objectives.base import LanguageModel
from zoo.training.checkpoints import (
    TRUST_ENV,
    AtomicCheckpointIO,
    check_writable,
    read_checkpoint,
    remove_torn_files,
    trust_checkpoints,
)
from zoo.training.display import BackboneSummary, StepProgressBar, quiet_dependency_warnings
from zoo.training.exits import SaveOnExit
from zoo.training.guards import NonFiniteGuard
from zoo.training.lock import RunLock
from zoo.training.precision import SaveConfigWithNotes, choose_precision
from zoo.training.random_state import RandomState
from zoo.training.resume import checkpoint_dirs, newest_good_checkpoint
from zoo.training.throughput import TokenThroughput


class ZooCLI(LightningCLI):
    """LightningCLI with a checkpoint, a throughput and a non-finite-loss callback in every run, configured under
    ``checkpoint:``, ``throughput:`` and ``nonfinite:`` in YAML (``--checkpoint.every_n_train_steps 500``,
    ``--nonfinite.policy stop``). Every run also writes its checkpoint files atomically
    (:class:`zoo.training.AtomicCheckpointIO`), saves its random state in them, and ``--ckpt_path last`` resumes from
    the newest checkpoint of the run folder that reads (:func:`zoo.training.newest_good_checkpoint`).

    Every checkpoint the run reads (``--ckpt_path``, ``model.init_from``, a ``CheckpointTokenizer``) is read
    weights-only; ``--trust_checkpoint true`` (or ``ZOO_TRUST_CHECKPOINTS=1``) unpickles files of an older zoo in
    full. Before training, the checkpoint folder must take a file (:func:`zoo.training.check_writable`), and
    temporary files of a save cut short by a kill are removed."""

    def __init__(self, args=None, **kwargs) -> None:
        quiet_dependency_warnings()
        defaults = dict(kwargs.pop("trainer_defaults", None) or {})
        extra = defaults.get("callbacks", [])
        defaults["callbacks"] = [*(extra if isinstance(extra, list) else [extra]), RandomState(), SaveOnExit(),
                                 RunLock()]  # SaveOnExit before RunLock: a signal's save happens under the lock
        super().__init__(
            LanguageModel,
            TextDataModule,
            subclass_mode_model=True,
            subclass_mode_data=True,
            save_config_callback=SaveConfigWithNotes,
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
        parser.add_argument(
            "--trust_checkpoint", type=bool, default=False,
            help="read checkpoints that hold pickled Python objects (written by an older zoo) by unpickling them, "
            f"which runs any code they name: only files you trust (also: {TRUST_ENV}=1). Default: weights-only",
        )  # fmt: skip

    def before_instantiate_classes(self) -> None:
        # trainer.precision unset (null, as the quickstart and the CPU preset leave it): the device's fastest
        config = self.config[self.subcommand] if self.subcommand else self.config
        if config.trainer.precision is None:
            choice = choose_precision(config.trainer.accelerator)
            config.trainer.precision = choice.precision  # what config.yaml records, with the note on top
            rank_zero_info(choice.note())
            self.save_config_kwargs["notes"] = [choice.note()]

    def instantiate_trainer(self, **kwargs):
        trainer = super().instantiate_trainer(**kwargs)
        # Lightning's default CheckpointIO becomes the atomic one; strategies with their own (XLA) or a user's plugin
        # are left alone. Set on the strategy, so every rank's strategy (DDP re-runs this CLI per rank) has it.
        if type(trainer.strategy.checkpoint_io) is TorchCheckpointIO:
            trainer.strategy.checkpoint_io = AtomicCheckpointIO()
        # Lightning's default summary and progress bar (exactly those classes, plain or rich; a user's own choice is
        # kept) become zoo's: steps of max_steps, and the backbone's own size and FLOPs figures.
        swaps = {TQDMProgressBar: lambda cb: StepProgressBar(refresh_rate=cb.refresh_rate),
                 RichProgressBar: lambda cb: StepProgressBar(refresh_rate=cb.refresh_rate),
                 ModelSummary: lambda cb: BackboneSummary(max_depth=cb._max_depth),
                 RichModelSummary: lambda cb: BackboneSummary(max_depth=cb._max_depth)}  # fmt: skip
        trainer.callbacks = [swaps[type(cb)](cb) if type(cb) in swaps else cb for cb in trainer.callbacks]
        return trainer

    def parse_arguments(self, parser: LightningArgumentParser, args) -> None:
        super().parse_arguments(parser, args)
        config = self.config.get(self.config.get("subcommand") or "", {})
        if config.get("trust_checkpoint"):
            # the flag covers every read of the run (init_from, CheckpointTokenizer, the trainer's checkpoint_io,
            # DDP's re-launched ranks), which all consult the environment variable
            os.environ[TRUST_ENV] = "1"
        # LightningCLI reads the hyperparameters of a --ckpt_path file right after parsing; a truncated, foreign or
        # untrusted file would fail there with torch's bare unpickling error, so it is named here first.
        ckpt_path = config.get("ckpt_path")
        if ckpt_path and ckpt_path not in ("last", "best", "hpc") and os.path.isfile(ckpt_path):
            read_checkpoint(ckpt_path, mmap=True)

    def _parse_ckpt_path(self) -> None:
        # LightningCLI's reading of the --ckpt_path file's hyperparameters (torch.load, weights-only). A trusted file
        # of an older zoo holds its hyperparameters as Python objects, which that read refuses; it is skipped for
        # such a file (the model comes from the config) with a warning. LightningCLI offers no public hook here.
        if not trust_checkpoints():
            return super()._parse_ckpt_path()
        ckpt_path = self.config.get(self.config.get("subcommand") or "", {}).get("ckpt_path")
        try:
            read_checkpoint(ckpt_path, mmap=True, trust=False) if ckpt_path and os.path.isfile(ckpt_path) else None
        except ValueError:
            rank_zero_warn(f"--ckpt_path {ckpt_path} is trusted but not weights-only: its hyperparameters are not "
                           "read, the model is built from the config")  # fmt: skip
            return None
        return super()._parse_ckpt_path()

    def before_fit(self) -> None:
        # Lightning's "last" looks only in this run's new version folder, which a resumed run has not written yet
        # (it would silently start over): look through the whole run folder, skipping unreadable files.
        config = self.config_init[self.subcommand]
        if self.trainer.is_global_zero:  # rank 0 writes the checkpoints
            for directory in self._checkpoint_dirs():
                check_writable(directory)
            for directory in checkpoint_dirs(self.trainer):
                for path in remove_torn_files(directory):
                    rank_zero_warn(f"removed {path}: a checkpoint save cut short by a crash (the file before it is "
                                   "intact)")  # fmt: skip
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

    def _checkpoint_dirs(self) -> list[Path]:
        """The folders this run's ModelCheckpoints will write to, as Lightning resolves them at setup: ``dirpath``,
        else ``<logger log_dir>/checkpoints`` (the first logger's), else ``<default_root_dir>/checkpoints``."""
        dirs = []
        for cb in self.trainer.checkpoint_callbacks:
            if getattr(cb, "save_top_k", None) == 0 and not getattr(cb, "save_last", True):
                continue  # writes nothing
            if getattr(cb, "dirpath", None):
                dirs.append(Path(cb.dirpath))
            elif self.trainer.loggers:  # as ModelCheckpoint resolves it
                logger = self.trainer.loggers[0]
                version = logger.version if isinstance(logger.version, str) else f"version_{logger.version}"
                root = Path(logger.save_dir or self.trainer.default_root_dir)
                dirs.append(root / str(logger.name) / version / "checkpoints")
            else:
                dirs.append(Path(self.trainer.default_root_dir) / "checkpoints")
        return dirs


class _ParseOnly(ZooCLI):
    """``ZooCLI`` that stops after parsing: the same parser, ``--config`` merging, relative-path resolution and
    checks as ``zoo fit``, with nothing built, seeded or read from a checkpoint."""

    def __init__(self, args: list[str], defaults: dict | None, optional: tuple[str, ...]) -> None:
        self._parse_defaults, self._optional = defaults or {}, optional
        super().__init__(args=args, run=False, parser_kwargs={"exit_on_error": False})

    def add_core_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        # LightningCLI's own sections (trainer, model, data), with the ones the command reads nothing from optional
        parser.add_lightning_class_args(self.trainer_class, "trainer")
        parser.set_defaults({f"trainer.{k}": v for k, v in self.trainer_defaults.items() if k != "callbacks"})
        for key, cls in (("model", self._model_class), ("data", self._datamodule_class)):
            parser.add_lightning_class_args(cls, key, subclass_mode=True, required=key not in self._optional)

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        super().add_arguments_to_parser(parser)
        parser.set_defaults(self._parse_defaults)

    def _parse_ckpt_path(self) -> None:
        return None

    def _set_seed(self) -> None:
        return None

    def before_instantiate_classes(self) -> None:
        return None

    def instantiate_classes(self) -> None:
        return None

    def parse_arguments(self, parser: LightningArgumentParser, args) -> None:
        self.config = parser.parse_args(args)  # no --ckpt_path to check, no environment to set


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


def config_error_text(err: Exception) -> str:
    """jsonargparse's message for a config that does not parse or build, without the lines that restate the whole
    value or the ``None`` alternative of an optional section (the reason and the key stay)."""
    noise = ("Given value", "Subtypes:", "- Expected a <class 'NoneType'>", "Does not validate against any of")
    lines = [line for line in str(err).splitlines() if not line.strip().startswith(noise)]
    return "\n".join(line for line in lines if line.strip() not in ("", "Errors:")) or str(err)
