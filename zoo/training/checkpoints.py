"""Checkpoint files: atomic writes, reading with errors that name the file, and refusals that list what differs.

::

    crash (SIGKILL, OOM, node loss) ──▶ last.ckpt is the previous complete file (written to a temporary file,
                                         fsynced, then renamed over the old one); the torn temporary file is
                                         removed by the next run (remove_torn_files)
    full disk during a save ──▶ the previous file intact; CheckpointWriteError naming the path and the free space
    a checkpoint folder that cannot be written ──▶ CheckpointWriteError before training starts (check_writable)
    a truncated or foreign file ──▶ ValueError naming the file and the fix
    a file holding pickled Python objects ──▶ UntrustedCheckpointError (weights-only loading: nothing in a
                                         checkpoint is imported or called unless trusted, see trust_checkpoints)
    a class path that is not zoo's or torch's ──▶ ForeignClassPathError before anything is imported
                                         (zoo.training.class_paths)
    another architecture or vocabulary ──▶ CheckpointMismatchError listing the differing parameters
"""

from __future__ import annotations

import errno
import itertools
import os
import pickle
import re
import shutil
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO
from torch import Tensor

from zoo.errors import ZooError
from zoo.training.class_paths import check_class_paths


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

    Loading is weights-only (tensors, plain containers, strings, numbers: nothing in the file is imported or
    called), whatever ``weights_only`` Lightning passes, unless checkpoints are trusted (``trust``, else
    ``$ZOO_TRUST_CHECKPOINTS``; see :func:`trust_checkpoints`). A file that weights-only loading refuses raises
    :class:`UntrustedCheckpointError`; one that is truncated or not a checkpoint a ``ValueError`` naming the file
    and the fix.

    Args:
        trust: load files that hold pickled Python objects (old zoo checkpoints) by unpickling them, which runs
            whatever code they name; ``None`` = ``$ZOO_TRUST_CHECKPOINTS``.
    """

    def __init__(self, *, trust: bool | None = None) -> None:
        super().__init__()
        self.trust = trust

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        if storage_options is not None or not _is_local(path):
            return super().save_checkpoint(checkpoint, path, storage_options=storage_options)
        atomic_save(checkpoint, Path(str(path).removeprefix("file://")))

    def load_checkpoint(self, path, map_location: Any = None, weights_only: bool | None = None) -> dict[str, Any]:
        trusted = trust_checkpoints(self.trust)
        if _is_local(path) and os.path.isdir(str(path).removeprefix("file://")):
            raise not_a_file(path)
        try:
            checkpoint = super().load_checkpoint(path, map_location=map_location, weights_only=not trusted)
        except FileNotFoundError:
            raise
        except _UNREADABLE as err:
            raise unreadable(path, err) from err
        if not trusted:
            check_class_paths(checkpoint, source=f"checkpoint {path}")
        return checkpoint


def _is_local(path) -> bool:
    return "://" not in str(path) or str(path).startswith("file://")


class CheckpointWriteError(ZooError, OSError):
    """A checkpoint could not be written (full disk, read-only or missing folder); the previous file is intact."""


def atomic_save(obj: Any, path: Path) -> None:
    """``torch.save(obj, path)`` that never leaves a partial ``path`` behind (see :class:`AtomicCheckpointIO`).
    A full disk (also as ``torch.save`` reports it, wrapped in its zip writer's ``RuntimeError``) raises
    :class:`CheckpointWriteError` naming the path and the free space."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")  # same directory: the rename stays on one file system
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        tmp.unlink(missing_ok=True)
        full = _disk_full(err)
        if full is not None:
            free = shutil.disk_usage(path.parent).free
            kept = f"the previous {path.name} is intact" if path.exists() else f"no earlier {path.name} exists"
            raise CheckpointWriteError(
                full,
                f"could not write checkpoint {path}: no space left on the device ({_size(free)} free in "
                f"{path.parent}; {kept}). Free space or point checkpoint.dirpath at a larger disk, then resume "
                "with --ckpt_path last",
            ) from err
        raise
    if hasattr(os, "O_DIRECTORY"):  # make the rename itself durable (POSIX; Windows has no directory handles)
        fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _disk_full(err: BaseException) -> int | None:
    """``errno.ENOSPC`` or ``EDQUOT`` when ``err`` is a full disk or quota, else ``None``. ``torch.save`` writing to a
    file object turns the file's ``OSError`` into a ``RuntimeError`` of its zip writer (``[enforce fail at
    inline_container.cc:…] . unexpected pos …``) with the ``OSError`` as its context: the chain is searched."""
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
            return err.errno
        err = err.__cause__ or err.__context__
    return None


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError


def check_writable(directory: Path) -> None:
    """Create ``directory`` if needed and write and remove a probe file in it, so that a run whose checkpoints
    could never be saved (a read-only mount, a path under a regular file, no permission) stops before training
    rather than at its first save; :class:`CheckpointWriteError` names the folder, the reason and the fix."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=directory, prefix=".write-check-", suffix=".tmp") as f:
            f.write(b"0")
            f.flush()
    except OSError as err:
        raise CheckpointWriteError(
            err.errno,
            f"checkpoint folder {directory} is not writable ({err.strerror or err}): no checkpoint of this run "
            "could be saved. Point --checkpoint.dirpath (or --trainer.default_root_dir) at a writable folder",
        ) from err


_TORN = re.compile(r"^\.(?P<name>.+\.ckpt)\.(?P<pid>\d+)\.tmp$")  # atomic_save's temporary files


def remove_torn_files(directory: Path) -> list[Path]:
    """Delete the temporary files :func:`atomic_save` left in ``directory`` when its process was killed while
    writing (their process is gone); returns them. Files of a process still running are left alone."""
    removed = []
    for path in directory.glob(".*.ckpt.*.tmp") if directory.is_dir() else ():
        match = _TORN.match(path.name)
        if match is None or process_alive(int(match["pid"])):
            continue
        path.unlink(missing_ok=True)
        removed.append(path)
    return removed


def process_alive(pid: int) -> bool:
    """Whether a process ``pid`` exists on this machine (its owner may be another user)."""
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process
    return True


# ---- reading -----------------------------------------------------------------------------------------------------

TRUST_ENV = "ZOO_TRUST_CHECKPOINTS"
TRUST_HELP = (  # the --trust-checkpoint flag of the subcommands that read checkpoints
    "load a checkpoint that holds pickled Python objects (written by an older zoo) by unpickling it, or that names "
    "classes other than zoo's and torch's by importing them, either of which runs any code the file names: only for "
    f"a file you trust (also: {TRUST_ENV}=1). Default: weights-only loading, zoo and torch classes only"
)


def trust_checkpoints(trust: bool | None = None) -> bool:
    """Whether checkpoint files may be unpickled in full (running any code a file names): ``trust`` when given (a
    ``--trust-checkpoint`` flag), else ``$ZOO_TRUST_CHECKPOINTS`` set to 1/true/yes. Off by default: zoo writes
    checkpoints that weights-only loading reads; only files written before that need trust, or
    ``python -m zoo checkpoint convert``."""
    if trust is not None:
        return trust
    return os.environ.get(TRUST_ENV, "").strip().lower() in ("1", "true", "yes", "on")


class UntrustedCheckpointError(ValueError):
    """A checkpoint that weights-only loading refuses: it holds pickled Python objects, whose loading imports and
    calls whatever the file names."""


def _is_refusal(err: BaseException) -> bool:
    return isinstance(err, pickle.UnpicklingError) and "weights only load failed" in str(err).lower()


def untrusted(path, err: BaseException) -> UntrustedCheckpointError:
    """The refusal of ``path`` by weights-only loading: the file, the Python objects it would import (torch's own
    scan of the pickle, or its error), how to convert it and how to trust it."""
    paragraphs = [p.strip() for p in str(err).split("\n\n")]  # torch's reason comes before "Check the documentation"
    reason = next((a for a, b in zip(paragraphs, paragraphs[1:]) if b.startswith("Check the doc")), paragraphs[-1])
    try:  # every offending global, from torch's own scan of the pickle (the error names the first one only)
        names = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except (ValueError, RuntimeError, OSError):  # a file-like object rather than a path: torch's reason alone
        names = []
    offending = f"{', '.join(names[:8])}{', …' if len(names) > 8 else ''}; " if names else ""
    return UntrustedCheckpointError(
        f"checkpoint {path} was refused: it holds pickled Python objects ({offending}torch: {reason[:300]}) that "
        "loading would import and call, which can run any code. zoo loads checkpoints weights-only (tensors, plain "
        "containers, "
        "strings, numbers). If the file is your own, written by an older zoo, convert it once with "
        f"`python -m zoo checkpoint convert {path} NEW.ckpt --i-trust-this-file`; or load it as it is with "
        f"--trust-checkpoint (fit: --trust_checkpoint true) or {TRUST_ENV}=1. Do either only for a file you trust"
    )


# the errors torch.load raises for a truncated file or one that is not a checkpoint
_UNREADABLE = (RuntimeError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile, ValueError, KeyError, OSError)


def unreadable(path, err: BaseException) -> BaseException:
    """The error for a checkpoint file that ``torch.load`` could not read: :class:`UntrustedCheckpointError` for a
    refusal by weights-only loading (a question of trust, not of damage); a file in torch's legacy format or a bare
    pickle named as such; a missing or forbidden file's error returned unchanged."""
    if _is_refusal(err) and zipfile.is_zipfile(path):  # a whole torch.save file: a question of trust, not damage
        return untrusted(path, err)
    if isinstance(err, (FileNotFoundError, PermissionError)):  # not the file's content
        return err
    if isinstance(err, IsADirectoryError) or os.path.isdir(path):
        return not_a_file(path)
    kind = _pickle_kind(path)
    if kind is not None:
        return ValueError(
            f"checkpoint {path} is {kind}, not a checkpoint zoo reads (a torch.save zip archive, loaded weights-only): "
            "loading it would unpickle it, which runs any code it names. If it is a file of your own, convert it "
            f"once with `python -m zoo checkpoint convert {path} NEW.ckpt --i-trust-this-file`"
        )
    return ValueError(
        f"checkpoint {path} is truncated or not a checkpoint ({type(err).__name__}: {str(err)[:200]}): it was cut "
        "short by a crash or a full disk, or is another kind of file. Resume from another checkpoint of the run "
        "(`--ckpt_path last` picks the newest one that reads) or delete this file"
    )


_LEGACY_MAGIC = b"\x8a\nl\xfc\x9cF\xf9 j\xa8P\x19"  # torch's legacy format: a pickled magic number comes first


def _pickle_kind(path) -> str | None:
    """``"in torch's legacy format ..."`` or ``"a bare pickle file"`` for a file that is a pickle stream rather than
    torch's zip archive, else ``None`` (read from its first bytes only)."""
    try:
        with open(path, "rb") as f:
            head = f.read(64)
    except OSError:
        return None
    if zipfile.is_zipfile(path) or not head.startswith(b"\x80"):  # pickle protocol 2 and later start with PROTO
        return None
    if _LEGACY_MAGIC in head:
        return "in torch's legacy format (torch < 1.6, or _use_new_zipfile_serialization=False) with Python objects"
    return "a bare pickle file (pickle.dump, not torch.save)"


def not_a_file(path) -> ValueError:
    """The error for a checkpoint path that is a directory: it names the checkpoint files inside, if any."""
    inside = [str(p) for p in itertools.islice(Path(path).glob("**/*.ckpt"), 4)]
    hint = f"one of the checkpoint files inside it: {', '.join(inside)}" if inside else "a .ckpt file"
    return ValueError(f"checkpoint {path} is a directory, not a checkpoint file: give {hint}")


def read_checkpoint(path, *, map_location: Any = "cpu", mmap: bool = False, trust: bool | None = None) -> dict:
    """Weights-only ``torch.load`` of a checkpoint file, with a ``ValueError`` naming the file when it is missing,
    truncated or not a checkpoint, :class:`UntrustedCheckpointError` when it holds pickled Python objects, and
    :class:`ForeignClassPathError` when it names a class that is not zoo's or torch's (nothing is imported).
    ``mmap``: map tensor storages instead of reading them (a cheap check that a file is complete). ``trust``:
    unpickle in full (see :func:`trust_checkpoints`; ``None`` = ``$ZOO_TRUST_CHECKPOINTS``)."""
    if os.path.isdir(path):
        raise not_a_file(path)
    if not os.path.isfile(path):
        raise ValueError(
            f"checkpoint {path} does not exist: check the path (runs keep theirs in "
            "<default_root_dir>/lightning_logs/version_N/checkpoints/)"
        )
    weights_only = not trust_checkpoints(trust)
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=weights_only, mmap=mmap)
    except _UNREADABLE as err:
        if not (mmap and "legacy" in (_pickle_kind(path) or "")):
            raise unreadable(path, err) from err
        try:  # torch maps only zip archives: a file in its legacy format is read whole
            checkpoint = torch.load(path, map_location=map_location, weights_only=weights_only)
        except _UNREADABLE as err2:
            raise unreadable(path, err2) from err2
    if not isinstance(checkpoint, dict):
        raise ValueError(f"checkpoint {path} holds a {type(checkpoint).__name__}, not a checkpoint dictionary")
    if not trust_checkpoints(trust):  # a class path names a module to import: zoo's and torch's only
        check_class_paths(checkpoint, source=f"checkpoint {path}")
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
