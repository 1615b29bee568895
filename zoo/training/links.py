"""A run's stable name for its newest checkpoint, ``<default_root_dir>/last.ckpt``, and what a run that fails before
its first step leaves behind (nothing), so that stages chain by run name, not by Lightning's version numbers::

    runs/dhara-70m-ar/
        last.ckpt -> lightning_logs/version_1/checkpoints/last.ckpt     (relative link, made at the run's first save)
        lightning_logs/version_0/    (a failed first attempt: removed, it held no checkpoint)
        lightning_logs/version_1/checkpoints/last.ckpt

The next stage names ``runs/dhara-70m-ar/last.ckpt`` (or the folder ``runs/dhara-70m-ar``) as its ``init_from``.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import lightning as L
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

LINK_NAME = "last.ckpt"


def point_link(link: Path, target: Path) -> None:
    """Make ``link`` a relative symbolic link to ``target``, replacing what was there in one step (a reader sees the
    old link or the new one, never none). Where links cannot be made (some Windows set-ups) ``target`` is copied."""
    link.parent.mkdir(parents=True, exist_ok=True)
    tmp = link.with_name(f".{link.name}.{os.getpid()}.link")
    try:
        tmp.unlink(missing_ok=True)
        os.symlink(os.path.relpath(target, link.parent), tmp)
    except OSError:
        shutil.copyfile(target, tmp)
    os.replace(tmp, link)


class LastCheckpointLink(Callback):
    """Keeps ``<default_root_dir>/last.ckpt`` pointing at the newest ``last.ckpt`` this run wrote: made once the
    run's first checkpoint exists (a run that saved nothing leaves an earlier run's link alone). A save marks the link
    due; the first batch end, validation end or end of the run after it (the file is written once the hook that
    announced it returns) makes it, so a step without a save costs one flag test. A link follows each later save of
    that file by itself; a copy (where links cannot be made) is refreshed when the file changes. Only rank 0 writes
    it."""

    def __init__(self) -> None:
        self._made: tuple[str, int] | None = None  # (target, its modification time) the link was last made for
        self._due = False  # a checkpoint was saved since the link was last checked

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        self._due = True

    def _update(self, trainer: L.Trainer) -> None:
        if not self._due or not trainer.is_global_zero:
            return
        paths = [cb.last_model_path for cb in trainer.checkpoint_callbacks if isinstance(cb, ModelCheckpoint)]
        target = next((Path(p) for p in paths if p and os.path.isfile(p)), None)
        if target is None:
            return  # announced, not yet written (or a checkpoint without a last file): checked again later
        self._due = False
        link = Path(trainer.default_root_dir) / LINK_NAME
        if link.resolve() == target.resolve() and link.is_symlink():
            return  # a link follows the file's later saves
        stamp = (str(target), target.stat().st_mtime_ns)
        if stamp == self._made and link.exists():
            return
        try:
            point_link(link, target)
            self._made = stamp
        except OSError as err:
            rank_zero_warn(f"could not point {link} at {target} ({err}); name the checkpoint itself in init_from")

    def on_train_batch_end(self, trainer: L.Trainer, *args) -> None:
        self._update(trainer)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._update(trainer)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._update(trainer)

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        self._update(trainer)

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._update(trainer)  # after ModelCheckpoint's own end-of-training save, which runs after this callback's


def remove_empty_run_folder(trainer: L.Trainer) -> Path | None:
    """After a run failed before its first optimizer step: remove the version folder it created (logs, config.yaml,
    an empty checkpoints/), so that the next attempt takes its number and nothing names a run that never trained.
    Kept when it holds any checkpoint. Returns the folder removed."""
    if not trainer.is_global_zero or trainer.global_step > 0 or trainer.logger is None:
        return None
    folder = getattr(trainer.logger, "log_dir", None)
    if folder is None or not Path(folder).is_dir() or not Path(folder).name.startswith("version_"):
        return None
    folder = Path(folder)
    if any(folder.rglob("*.ckpt")):
        return None
    shutil.rmtree(folder, ignore_errors=True)
    rank_zero_info(f"removed {folder}: the run stopped before its first step and saved nothing")
    return folder
