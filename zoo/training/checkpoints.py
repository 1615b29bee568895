"""Checkpoint files: atomic writes, reading with errors that name the file, and refusals that list what differs.

::

    crash (SIGKILL, OOM, node loss) ──▶ last.ckpt is the previous complete file (written to a temporary file,
                                         fsynced, then renamed over the old one)
    a truncated or foreign file ──▶ ValueError naming the file and the fix
    another architecture or vocabulary ──▶ CheckpointMismatchError listing the differing parameters
"""

from __future__ import annotations

import os
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO
from torch import Tensor


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's ``TorchCheckpointIO`` with crash-safe writes: the checkpoint goes to a temporary file in the
    target's own directory, is flushed to disk (``fsync``), then renamed over the target (``os.replace``, atomic on
    POSIX and Windows), and the directory entry is flushed too. A crash at any moment leaves either the previous
    complete file or the new complete file, never a truncated one.

    Why a ``CheckpointIO`` plugin rather than a ``ModelCheckpoint`` subclass: every checkpoint file goes through the
    strategy's ``checkpoint_io`` (the top-k files, ``last.ckpt``, on-exception checkpoints, a manual
    ``trainer.save_checkpoint``), and under DDP the strategy calls it on rank 0 only, after the ranks agreed to save;
    a ``ModelCheckpoint`` subclass would cover only its own files and would have to override private methods.
    Lightning's own ``TorchCheckpointIO`` serializes to memory and then writes through an ``fsspec`` transaction,
    whose local implementation writes a file in the system's temporary directory and *moves* it: across file
    systems (``/tmp`` on tmpfs, runs on a disk) that move is a copy into the final path, which a crash truncates,
    and nothing is fsynced. Remote paths (``s3://``…) keep Lightning's behaviour: object stores replace whole
    objects.

    Loading a file that is truncated or not a checkpoint raises a ``ValueError`` naming the file and the fix.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        if storage_options is not None or not _is_local(path):
            return super().save_checkpoint(checkpoint, path, storage_options=storage_options)
        atomic_save(checkpoint, Path(str(path).removeprefix("file://")))

    def load_checkpoint(self, path, map_location: Any = None, weights_only: bool | None = None) -> dict[str, Any]:
        try:
            return super().load_checkpoint(path, map_location=map_location, weights_only=weights_only)
        except FileNotFoundError:
            raise
        except _UNREADABLE as err:
            raise unreadable(path, err) from err


def _is_local(path) -> bool:
    return "://" not in str(path) or str(path).startswith("file://")


def atomic_save(obj: Any, path: Path) -> None:
    """``torch.save(obj, path)`` that never leaves a partial ``path`` behind (see :class:`AtomicCheckpointIO`)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")  # same directory: the rename stays on one file system
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if hasattr(os, "O_DIRECTORY"):  # make the rename itself durable (POSIX; Windows has no directory handles)
        fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


# the errors torch.load raises for a truncated file or one that is not a checkpoint
_UNREADABLE = (RuntimeError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile, ValueError, KeyError, OSError)


def unreadable(path, err: BaseException) -> BaseException:
    """The error for a checkpoint file that ``torch.load`` could not read; a refusal by ``weights_only`` loading
    of a complete file, or a missing or forbidden file, is returned unchanged."""
    if isinstance(err, pickle.UnpicklingError) and "weights_only" in str(err) and zipfile.is_zipfile(path):
        return err  # a whole file that weights_only loading refuses: a question of trust, not of damage
    if isinstance(err, (FileNotFoundError, PermissionError, IsADirectoryError)):  # not the file's content
        return err
    return ValueError(
        f"checkpoint {path} is truncated or not a checkpoint ({type(err).__name__}: {str(err)[:200]}): it was cut "
        "short by a crash or a full disk, or is another kind of file. Resume from another checkpoint of the run "
        "(`--ckpt_path last` picks the newest one that reads) or delete this file"
    )


def read_checkpoint(path, *, map_location: Any = "cpu", mmap: bool = False) -> dict:
    """``torch.load`` of a trusted checkpoint file (``weights_only=False``: zoo checkpoints hold their objective's
    class path and the data position), with a ``ValueError`` naming the file when it is missing, truncated or not a
    checkpoint. ``mmap``: map tensor storages instead of reading them (a cheap check that a file is complete)."""
    if not os.path.isfile(path):
        raise ValueError(
            f"checkpoint {path} does not exist: check the path (runs keep theirs in "
            "<default_root_dir>/lightning_logs/version_N/checkpoints/)"
        )
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=False, mmap=mmap)
    except _UNREADABLE as err:
        raise unreadable(path, err) from err
    if not isinstance(checkpoint, dict):
        raise ValueError(f"checkpoint {path} holds a {type(checkpoint).__name__}, not a checkpoint dictionary")
    return checkpoint


class CheckpointMismatchError(ValueError):
    """A checkpoint's parameter names or shapes differ from the model's."""


def check_state_dict_fits(
    model: dict[str, Tensor], checkpoint: dict[str, Tensor], *, source: str, strict: bool = True
) -> None:
    """Raise :class:`CheckpointMismatchError` listing every differing parameter (name: checkpoint shape vs model
    shape, and with ``strict`` missing and unexpected names) instead of torch's stack of ``size mismatch`` errors;
    ``source`` names the checkpoint in the message."""
    shapes = {}  # name -> (checkpoint shape, model shape)
    for k, v in model.items():
        theirs = tuple(getattr(checkpoint.get(k), "shape", ()))
        if k in checkpoint and theirs != tuple(v.shape):
            shapes[k] = (theirs, tuple(v.shape))
    missing = sorted(set(model) - set(checkpoint)) if strict else []
    unexpected = sorted(set(checkpoint) - set(model)) if strict else []
    if not (shapes or missing or unexpected):
        return
    lines = [f"  {k}: checkpoint {a} vs model {b}" for k, (a, b) in list(shapes.items())[:12]]
    if len(shapes) > 12:
        lines.append(f"  … {len(shapes) - 12} more shapes differ")
    if missing:
        lines.append(f"  in the model, not in the checkpoint ({len(missing)}): {', '.join(missing[:8])}")
    if unexpected:
        lines.append(f"  in the checkpoint, not in the model ({len(unexpected)}): {', '.join(unexpected[:8])}")
    vocab = [k for k in shapes if k.endswith(("embed.weight", "head.weight")) and shapes[k][0][1:] == shapes[k][1][1:]]
    if vocab and len(vocab) == len(shapes) and not missing and not unexpected:
        (ckpt_rows, *_), (model_rows, *_) = shapes[vocab[0]]
        why = (
            f"the vocabulary differs (checkpoint {ckpt_rows} tokens, model {model_rows}): set "
            f"model.backbone.vocab_size={ckpt_rows} and keep the run's tokenizer"
        )
    else:
        why = "the architecture differs: build the model the checkpoint was trained with"
    raise CheckpointMismatchError(
        f"{source} does not fit this model:\n" + "\n".join(lines) + f"\n{why} (its run folder's config.yaml has "
        "model.backbone), or start a new run from its backbone weights with model.init_from"
    )
