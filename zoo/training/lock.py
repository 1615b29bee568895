"""One run per run folder: a lock file holding the running ``zoo fit``'s process id.

::

    zoo fit (PID 4242) ──▶ <run folder>/.zoo-fit.lock  "4242 host-a"   (removed when the run ends, however it ends)
    a second zoo fit in the same folder ──▶ RunFolderInUseError naming PID 4242 and the lock file
    a lock left by a process that is gone (SIGKILL, OOM) ──▶ taken over, with a warning

Two runs writing one folder (``logger: false`` with the same ``default_root_dir``, or the same
``checkpoint.dirpath``) would mix their files: the ``config.yaml`` of one next to the ``last.ckpt`` of the other.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

import lightning as L
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.utilities import rank_zero_warn

from zoo.errors import ZooError
from zoo.training.checkpoints import process_alive

LOCK_NAME = ".zoo-fit.lock"


class RunFolderInUseError(ZooError):
    """Another live ``zoo fit`` holds the lock of a folder this run would write to."""


def acquire(directory: Path) -> Path:
    """Create ``directory/.zoo-fit.lock`` holding this process's id and host name and return its path; a lock of a
    live process raises :class:`RunFolderInUseError`, a lock of a process that is gone is taken over with a
    warning. A lock this process holds already is kept (a second ``fit`` in the same Python process)."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / LOCK_NAME
    mine = f"{os.getpid()} {socket.gethostname()}\n"
    for _ in range(3):  # a stale lock removed under us by another starting run: try again
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            pid, host = _holder(path)
            if pid == os.getpid() and host == socket.gethostname():
                return path
            if pid is not None and (host != socket.gethostname() or process_alive(pid)):
                where = "" if host == socket.gethostname() else f" on host {host}"
                raise RunFolderInUseError(
                    f"run folder {directory} is in use by another zoo fit (PID {pid}{where}; lock file {path}): "
                    "give this run its own --trainer.default_root_dir (or --checkpoint.dirpath), or wait for that "
                    "run to end (if that process is no zoo run, delete the lock file)"
                ) from None
            rank_zero_warn(f"taking over the lock {path} of PID {pid}, which is no longer running (a run that "
                           "was killed); its files here are left as they are")  # fmt: skip
            path.unlink(missing_ok=True)
            continue
        with os.fdopen(fd, "w") as f:
            f.write(mine)
        return path
    raise RunFolderInUseError(f"run folder {directory}: the lock file {path} keeps changing: another run is starting")


def release(path: Path) -> None:
    """Remove a lock this process holds (a lock taken over by another process is left alone)."""
    pid, _ = _holder(path)
    if pid == os.getpid():
        path.unlink(missing_ok=True)


def _holder(path: Path) -> tuple[int | None, str | None]:
    try:
        pid, _, host = path.read_text().strip().partition(" ")
        return int(pid), host or socket.gethostname()
    except (OSError, ValueError):  # vanished, or half-written by a run starting this instant
        return None, None


class RunLock(Callback):
    """Holds the lock of every folder a ``fit`` writes (its log folder, where ``config.yaml`` goes, and each
    checkpoint callback's ``dirpath``) from setup to the end of the run, on global rank 0 (the rank that writes);
    taken before the config is saved, so a refused run writes nothing."""

    def __init__(self) -> None:
        self._held: list[Path] = []

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        log_dir = trainer.log_dir  # on every rank: Lightning broadcasts it from rank 0 (a collective)
        if not trainer.is_global_zero:
            return
        folders = [Path(log_dir or trainer.default_root_dir)]  # checkpoints without dirpath go below it
        folders += [Path(cb.dirpath) for cb in trainer.checkpoint_callbacks
                    if isinstance(cb, ModelCheckpoint) and cb.dirpath and "://" not in str(cb.dirpath)]  # fmt: skip
        for folder in dict.fromkeys(p.resolve() for p in folders):
            self._held.append(acquire(folder))

    def _release(self) -> None:
        for path in self._held:
            release(path)
        self._held = []

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._release()

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        self._release()
