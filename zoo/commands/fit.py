"""``python -m zoo fit`` (and ``validate``, ``test``, ``predict``): :class:`ZooCLI`, a ``LightningCLI``.

Every Trainer flag, ``--config`` (repeatable, later files override earlier ones), ``--print_config``, and
``class_path`` choices for the objective (``--model``), the data module (``--data``) and each block inside the
backbone.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from jsonargparse import Namespace
from lightning.pytorch.callbacks import (
    ModelSummary,
    RichModelSummary,
    RichProgressBar,
    TQDMProgressBar,
)
from lightning.pytorch.cli import LightningArgumentParser
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

from zoo import compat
from zoo.commands.errors import ParserError, explain_parser_error
from zoo.data.base import TextDataModule
from zoo.errors import ZooError
from zoo.objectives.base import LanguageModel
from zoo.training.checkpoints import (
    TRUST_ENV,
    AtomicCheckpointIO,
    check_writable,
    read_checkpoint,
    remove_torn_files,
)
from zoo.training.config_notes import SaveConfigWithNotes
from zoo.training.display import BackboneSummary, StepProgressBar, quiet_dependency_warnings
from zoo.training.exits import SaveOnExit
from zoo.training.links import LastCheckpointLink, remove_empty_run_folder
from zoo.training.lock import RunLock
from zoo.training.precision import install_precision, resolve_precision
from zoo.training.random_state import RandomState
from zoo.training.resume import checkpoint_dirs, newest_good_checkpoint
from zoo.training.run_config import add_run_arguments


class ZooHelpFormatter(compat.HelpTextFormatter):
    """jsonargparse's help, with a factory's "known subclasses" cut to zoo's own classes: for a block's
    ``Callable[[int], Module]`` arguments it lists every ``torch.nn.Module`` subclass Python has imported (a
    ``--model.backbone.block.help`` of 2,300 lines). Any other class is still accepted by its class path."""

    def help_text(self, text: str) -> str:
        def keep_zoo(match: re.Match) -> str:
            names = [n.strip() for n in match.group(1).split(",")]
            zoo = [n for n in names if n.startswith("zoo.")]
            if len(zoo) == len(names) or not zoo:
                return match.group(0)
            return f", zoo's classes: {', '.join(zoo)} (or any other class by its class_path)"

        return re.sub(r", known subclasses: ([^)]*)", keep_zoo, text)


class ZooArgumentParser(LightningArgumentParser):
    """Lightning's parser, whose errors are one sentence (:func:`zoo.commands.errors.explain_parser_error`) raised
    as :class:`zoo.commands.errors.ParserError` for the command layer to print, not 77 lines of usage; options are
    never abbreviated (``--trainer.max_step`` is refused, not taken as ``max_steps``)."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("allow_abbrev", False)
        kwargs.setdefault("formatter_class", ZooHelpFormatter)
        compat.replace_lists()  # a list given later replaces the earlier one, never merges into it item by item
        super().__init__(*args, **kwargs)

    def error(self, message: str, ex: Exception | None = None):
        if not self.exit_on_error:  # jsonargparse's inner parsers: it catches their errors while trying alternatives
            return super().error(message, ex)
        raise ParserError(explain_parser_error(message, compat.option_strings(self))) from ex


    def dump(self, cfg: Namespace, *args, **kwargs) -> str:
        # --print_config shows the precision the run will use (the automatic choice rather than null; bf16-mixed for
        # 16-mixed on a CPU) with the note why, as config.yaml records it (ZooCLI.before_instantiate_classes)
        trainer = cfg.get("trainer") if isinstance(cfg, Namespace) else None
        note = None
        if isinstance(trainer, Namespace) and "precision" in trainer:
            precision, note = resolve_precision(trainer.precision, trainer.get("accelerator", "auto"))
            if note is not None:
                cfg = cfg.clone()
                cfg["trainer.precision"] = precision
        text = super().dump(cfg, *args, **kwargs)
        json = kwargs.get("format", args[0] if args else "parser_mode") in ("json", "json_indented")
        return text if note is None or json else f"# {note}\n{text}"


class ZooCLI(compat.CLIHooks):
    """LightningCLI with a checkpoint, a throughput and a non-finite-loss callback in every run, configured under
    ``checkpoint:``, ``throughput:`` and ``nonfinite:`` in YAML (``--checkpoint.every_n_train_steps 500``,
    ``--nonfinite.policy stop``). Every run also writes its checkpoint files atomically
    (:class:`zoo.training.AtomicCheckpointIO`), saves its random state in them, and ``--ckpt_path last`` resumes from
    the newest checkpoint of the run folder that reads (:func:`zoo.training.newest_good_checkpoint`).

    Every checkpoint the run reads (``--ckpt_path``, ``model.init_from``, a ``CheckpointTokenizer``) is read
    weights-only; ``--trust_checkpoint true`` (or ``ZOO_TRUST_CHECKPOINTS=1``) unpickles files of an older zoo in
    full. Before training, the checkpoint folder must take a file (:func:`zoo.training.check_writable`), and
    temporary files of a save cut short by a kill are removed."""

    # LightningCLI would rebuild the model from a --ckpt_path file's hyperparameters, over the config: a checkpoint
    # of another shape would then train silently with its own shape, and jsonargparse would import the classes
    # the file names. zoo builds the model from the config for every --ckpt_path, as for `last`, and restoring
    # the weights refuses a checkpoint of another shape, listing the parameters (CheckpointMismatchError).
    reads_checkpoint_hyperparameters = False

    def __init__(self, args=None, **kwargs) -> None:
        quiet_dependency_warnings()
        defaults = dict(kwargs.pop("trainer_defaults", None) or {})
        extra = defaults.get("callbacks", [])
        # SaveOnExit before RunLock: a signal's save happens under the lock
        defaults["callbacks"] = [*(extra if isinstance(extra, list) else [extra]), RandomState(), SaveOnExit(),
                                 RunLock(), LastCheckpointLink()]  # fmt: skip
        super().__init__(
            LanguageModel,
            TextDataModule,
            subclass_mode_model=True,
            subclass_mode_data=True,
            save_config_callback=SaveConfigWithNotes,
            save_config_kwargs={"overwrite": True},
            trainer_defaults=defaults,
            parser_class=ZooArgumentParser,
            args=args,
            **kwargs,
        )

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        add_run_arguments(parser)  # checkpoint:, throughput:, nonfinite:, --trust_checkpoint

    def before_instantiate_classes(self) -> None:
        # trainer.precision unset (null, as the quickstart and the CPU preset leave it): the device's fastest;
        # 16-mixed on a CPU: bf16-mixed, which Lightning runs there. config.yaml records it, with the note on top.
        config = self.config[self.subcommand] if self.subcommand else self.config
        precision, note = resolve_precision(config.trainer.precision, config.trainer.accelerator)
        if note is not None:
            config.trainer.precision = precision
            rank_zero_info(note)
            self.save_config_kwargs["notes"] = [note]

    def instantiate_trainer(self, **kwargs):
        trainer = super().instantiate_trainer(**kwargs)
        # Lightning's default CheckpointIO becomes the atomic one; strategies with their own (XLA) or a user's plugin
        # are left alone. Set on the strategy, so every rank's strategy (DDP re-runs this CLI per rank) has it.
        if type(trainer.strategy.checkpoint_io) is TorchCheckpointIO:
            trainer.strategy.checkpoint_io = AtomicCheckpointIO()
        # zoo's precision plugin: clipping with fused optimizers; what the device cannot run refused before training
        install_precision(trainer, training=self.subcommand == "fit")
        # Lightning's default summary and progress bar (exactly those classes, plain or rich; a user's own choice is
        # kept) become zoo's: steps of max_steps, and the backbone's own size and FLOPs figures.
        swaps = {TQDMProgressBar: lambda cb: StepProgressBar(refresh_rate=cb.refresh_rate),
                 RichProgressBar: lambda cb: StepProgressBar(refresh_rate=cb.refresh_rate),
                 ModelSummary: lambda cb: BackboneSummary(max_depth=compat.summary_max_depth(cb)),
                 RichModelSummary: lambda cb: BackboneSummary(max_depth=compat.summary_max_depth(cb))}  # fmt: skip
        trainer.callbacks = [swaps[type(cb)](cb) if type(cb) in swaps else cb for cb in trainer.callbacks]
        return trainer

    def parse_arguments(self, parser: LightningArgumentParser, args) -> None:
        super().parse_arguments(parser, args)
        config = self.config.get(self.config.get("subcommand") or "", {})
        if config.get("trust_checkpoint"):
            # the flag covers every read of the run (init_from, CheckpointTokenizer, the trainer's checkpoint_io,
            # DDP's re-launched ranks), which all consult the environment variable
            os.environ[TRUST_ENV] = "1"
        # A --ckpt_path file that is missing, a directory, truncated, foreign, untrusted or names a class that is not
        # zoo's or torch's is named here, in one line, before anything is built or imported.
        ckpt_path = config.get("ckpt_path")
        if ckpt_path and ckpt_path not in ("last", "best", "hpc") and "://" not in str(ckpt_path):
            if not os.path.exists(ckpt_path):  # a directory or a foreign file: read_checkpoint names it
                raise ZooError(f"--ckpt_path {ckpt_path} is not a file: give a checkpoint written by `zoo fit`, "
                               "`last` to resume from the newest checkpoint of the run folder, or leave it out to "
                               "start over")  # fmt: skip
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
        self._finished = finished_already(config.get("ckpt_path"), self.trainer.max_steps)
        if self._finished:
            return  # nothing to train: no folder is checked or created
        if self.trainer.is_global_zero:  # rank 0 writes the checkpoints
            for directory in self._checkpoint_dirs():
                check_writable(directory)
            for directory in checkpoint_dirs(self.trainer):
                for path in remove_torn_files(directory):
                    rank_zero_warn(f"removed {path}: a checkpoint save cut short by a crash (the file before it is "
                                   "intact)")  # fmt: skip
        if config.get("ckpt_path") is not None and getattr(self.model, "init_from", None) is not None:
            # Lightning runs setup() (which applies init_from) before restoring the checkpoint: a resumed stage
            # needs neither the previous stage's weights nor that file to still exist.
            self.model.init_from = None

    def fit(self, **kwargs) -> None:
        """``trainer.fit``, unless the checkpoint resumed from already reached ``max_steps`` (said in one line); a
        run that fails before its first step removes the version folder it created (nothing names it later)."""
        if getattr(self, "_finished", None):
            rank_zero_info(self._finished)
            return
        try:
            self.trainer.fit(**kwargs)
        except BaseException:
            remove_empty_run_folder(self.trainer)
            raise

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


def finished_already(ckpt_path: str | None, max_steps: int) -> str | None:
    """The line saying there is nothing to train, when the checkpoint ``ckpt_path`` already reached ``max_steps``
    (a rerun of a finished run with ``--ckpt_path last``); ``None`` otherwise."""
    if not ckpt_path or max_steps is None or max_steps < 0 or not os.path.isfile(ckpt_path):
        return None
    step = read_checkpoint(ckpt_path, mmap=True).get("global_step", 0)
    if step < max_steps:
        return None
    return (f"nothing to train: {ckpt_path} is at step {step}, and trainer.max_steps={max_steps}; raise "
            "--trainer.max_steps to train further")
