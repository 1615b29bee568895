"""Resuming: ``--ckpt_path last`` takes the newest checkpoint of the whole run folder that reads.

Lightning's own ``last`` looks only in the new, empty version folder of the resumed run and would start over.
"""

from __future__ import annotations

import glob
import os
from pathlib import Path

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities import rank_zero_warn

from zoo.training.checkpoints import read_checkpoint


def checkpoint_dirs(trainer: L.Trainer) -> list[Path]:
    """Where the runs of this run folder keep checkpoints: ``checkpoint.dirpath`` when set, else every
    ``<logger root>/version_*/checkpoints`` (each resumed run logs into a new version folder, so ``last`` has to look
    beyond the current one) and ``<default_root_dir>/checkpoints`` (runs without a logger)."""
    dirs = [Path(cb.dirpath) for cb in trainer.checkpoint_callbacks if getattr(cb, "dirpath", None)]
    if dirs:
        return dirs
    roots = {getattr(logger, "root_dir", None) for logger in trainer.loggers} - {None}
    for root in sorted(map(str, roots)):
        dirs += [Path(p) for p in sorted(glob.glob(os.path.join(glob.escape(root), "*", "checkpoints")))]
    return [*dirs, Path(trainer.default_root_dir) / "checkpoints"]


def newest_good_checkpoint(dirs: list[Path]) -> Path | None:
    """The most recently written ``*.ckpt`` in ``dirs`` that reads completely; newer unreadable files are skipped
    with a warning naming them. ``None`` when there is no checkpoint at all; ``ValueError`` when there are some but
    none reads."""
    files = sorted(
        {p for d in dirs if d.is_dir() for p in d.glob("*.ckpt") if p.is_file()},
        key=lambda p: p.stat().st_mtime,
        reverse=True,
    )
    bad = []
    for path in files:
        try:
            checkpoint = read_checkpoint(path, mmap=True)  # mapped: tensors are not read here
            if "state_dict" not in checkpoint:
                raise ValueError(f"checkpoint {path} has no state_dict")
        except ValueError as err:
            bad.append(path)
            rank_zero_warn(f"skipping checkpoint {path}, which does not read ({err}); trying an older one")
            continue
        return path
    if bad:
        raise ValueError(
            f"--ckpt_path last: no checkpoint under {[str(d) for d in dirs]} reads ({[str(p) for p in bad]} are "
            "truncated or not checkpoints): give a good file with --ckpt_path PATH, or drop --ckpt_path to start over"
        )
    return None


def last_good_checkpoint(trainer: L.Trainer) -> str | None:
    """The checkpoint this run wrote last (or resumed from), for messages; ``None`` when there is none."""
    paths = [trainer.ckpt_path] if trainer.ckpt_path else []
    for cb in trainer.checkpoint_callbacks:
        if isinstance(cb, ModelCheckpoint):
            paths += [cb.last_model_path, cb.best_model_path]
    existing = [p for p in paths if p and os.path.isfile(p)]
    return max(existing, key=os.path.getmtime) if existing else None


def run_checkpoint(path: str | os.PathLike, *, field: str = "init_from") -> Path:
    """The checkpoint a stage names as ``path``: a checkpoint file, the stable link a run keeps at
    ``<run folder>/last.ckpt`` (:mod:`zoo.training.links`), or a run folder (``runs/dhara-70m-ar``), whose newest
    checkpoint that reads is taken (:func:`newest_good_checkpoint`). ``field`` names the setting in errors."""
    path = Path(path)
    if path.is_file():
        return path
    if path.is_dir():
        # the files themselves, not the run's link to one (it would tie with its target on modification time)
        dirs = sorted({p.parent for p in path.rglob("*.ckpt") if p.is_file() and not p.is_symlink()})
        found = newest_good_checkpoint(dirs) if dirs else None
        if found is None:
            raise ValueError(f"{field}={path} is a folder without checkpoints: train the previous stage first (its "
                             "run writes <folder>/last.ckpt), or name a checkpoint file")  # fmt: skip
        return found
    hint = " (a link to a checkpoint that no longer exists)" if path.is_symlink() else ""
    raise ValueError(
        f"{field}={path} is not a file{hint} nor a run folder: train the previous stage first, or point {field} at "
        "its run folder (runs/<name>), the link runs/<name>/last.ckpt its run keeps, or a checkpoint file"
    )
