"""Training under faults: atomic checkpoint files, resuming from the newest good one, non-finite losses, and clear
errors for checkpoints that do not fit the model.

::

    crash (SIGKILL, OOM, node loss) ──▶ last.ckpt is the previous complete file (written to a temporary file,
                                         fsynced, then renamed over the old one)
    python -m zoo fit ... --ckpt_path last ──▶ newest checkpoint of the run folder that reads, corrupt ones skipped
    loss or gradient NaN/Inf ──▶ NonFiniteGuard: skip the update (policy "skip") or stop naming the step ("stop");
                                 a checkpoint with non-finite weights is never written
"""

from __future__ import annotations

import glob
import os
import pickle
import random
import zipfile
from pathlib import Path
from typing import Any, Literal

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor

# ---- atomic checkpoint files ------------------------------------------------------------------------------------


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


# ---- resuming from the newest good checkpoint -------------------------------------------------------------------


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


# ---- checkpoints that do not fit the model ----------------------------------------------------------------------


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


# ---- non-finite losses and gradients ----------------------------------------------------------------------------


class NonFiniteError(RuntimeError):
    """Training met a non-finite loss or gradient norm and stopped."""


class NonFiniteGuard(Callback):
    """Detects a non-finite (NaN/Inf) loss or gradient norm before the optimizer step, and never lets a checkpoint
    with non-finite weights be written.

    With ``policy: skip`` the step's update is dropped (gradients are set to ``None``, so the optimizer leaves
    weights and moments untouched; the step still counts towards ``max_steps`` and the learning-rate schedule
    advances), counted and logged as ``train/skipped_steps``; more than ``max_consecutive`` skipped steps in a row
    stop the run as ``stop`` does. With ``policy: stop`` the run stops with an error naming the step and the last
    good checkpoint. Under DDP the ranks agree (a skip on any rank is a skip on all), or they would hang.
    The check costs one host synchronization per optimizer step (and one tiny all-reduce under DDP).

    Args:
        policy: ``skip`` (drop the update and go on) or ``stop`` (raise an error).
        max_consecutive: with ``skip``, stop after this many skipped steps in a row.
        check_grad_norm: also check the gradients' total norm (before clipping), not only the loss. With ``16-mixed``
            precision the gradient scaler already skips overflowing steps, so only the loss is checked there.
    """

    def __init__(
        self, *, policy: Literal["skip", "stop"] = "skip", max_consecutive: int = 10, check_grad_norm: bool = True
    ) -> None:
        if policy not in ("skip", "stop"):
            raise ValueError(f"nonfinite.policy={policy!r} is not a policy: choose 'skip' or 'stop'")
        if max_consecutive < 0:
            raise ValueError(f"nonfinite.max_consecutive={max_consecutive} must be ≥ 0")
        self.policy, self.max_consecutive, self.check_grad_norm = policy, max_consecutive, check_grad_norm
        self.skipped = 0  # skipped steps in the whole run (saved in checkpoints)
        self.consecutive = 0
        self._loss_bad: Tensor | None = None  # any non-finite loss since the last optimizer step (accumulation)

    def on_before_backward(self, trainer: L.Trainer, pl_module: L.LightningModule, loss: Tensor) -> None:
        bad = ~torch.isfinite(loss.detach()).all()  # stays on the device: no synchronization here
        self._loss_bad = bad if self._loss_bad is None else self._loss_bad | bad

    def on_before_optimizer_step(self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer) -> None:
        loss_bad, self._loss_bad = self._loss_bad, None
        params = [p for group in optimizer.param_groups for p in group["params"]]
        grads = [p.grad for p in params if p.grad is not None]
        checks = [loss_bad] if loss_bad is not None else []
        if self.check_grad_norm and grads and getattr(trainer.precision_plugin, "scaler", None) is None:
            checks.append(~torch.isfinite(torch.nn.utils.get_total_norm(grads)))
        bad = bool(torch.stack([c.to(checks[0].device) for c in checks]).any()) if checks else False
        bad = trainer.strategy.reduce_boolean_decision(bad, all=False)  # any rank's NaN is every rank's
        if not bad:
            self.consecutive = 0
        else:
            self.skipped += 1
            self.consecutive += 1
            what = "loss or gradient norm" if self.check_grad_norm else "loss"
            if self.policy == "stop" or self.consecutive > self.max_consecutive:
                why = "nonfinite.policy=stop"
                if self.policy != "stop":
                    why = f"{self.consecutive} in a row, more than nonfinite.max_consecutive={self.max_consecutive}"
                last = last_good_checkpoint(trainer)
                raise NonFiniteError(
                    f"non-finite {what} at step {trainer.global_step} ({why}). The last good checkpoint is "
                    f"{last or '(none written yet)'}: lower the learning rate, raise trainer.gradient_clip_val or "
                    "check the data, then resume with --ckpt_path last"
                    + (" (or set --nonfinite.policy skip)" if self.policy == "stop" else "")
                )
            for p in params:  # optimizers skip parameters without gradients: weights and moments stay as they are
                p.grad = None
            rank_zero_warn(
                f"non-finite {what} at step {trainer.global_step}: update skipped "
                f"({self.skipped} skipped in all, {self.consecutive} in a row)"
            )
        pl_module.log("train/skipped_steps", float(self.skipped))

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        tensors = {
            k: v for k, v in checkpoint.get("state_dict", {}).items() if type(v) is Tensor and v.is_floating_point()
        }  # (sharded tensors are not checked)
        if not tensors:
            return
        finite = torch.stack([torch.isfinite(v).all() for v in tensors.values()]).cpu()
        if not bool(finite.all()):
            names = [k for k, ok in zip(tensors, finite.tolist()) if not ok]
            raise NonFiniteError(
                f"refusing to write a checkpoint at step {trainer.global_step}: non-finite weights in "
                f"{', '.join(names[:8])}{' …' if len(names) > 8 else ''}. The last good checkpoint is "
                f"{last_good_checkpoint(trainer) or '(none written yet)'}; resume from it with --ckpt_path last"
            )

    def state_dict(self) -> dict[str, Any]:
        return {"skipped": self.skipped, "consecutive": self.consecutive}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.skipped = state_dict.get("skipped", 0)
        self.consecutive = state_dict.get("consecutive", 0)


# ---- random state --------------------------------------------------------------------------------------------


class RandomState(Callback):
    """Saves the global random generators (torch CPU and CUDA, Python, NumPy) in every checkpoint and restores
    them right before the first resumed training step, so objectives that draw random numbers while training
    (masked diffusion's noise levels and masks, dropout) continue exactly as the uninterrupted run would.
    Lightning saves no random state itself. Restoring happens at the first training batch rather than at load
    time because starting the data loader draws from the generator in between. The CUDA state saved is that of
    the process's own device. Under DDP every rank restores rank 0's states (its CPU generator's and its device's,
    into the rank's own device): every rank starts from the same ``seed_everything`` seed and draws the same
    amount, so rank 0's generators stand for every rank's."""

    def __init__(self) -> None:
        self._pending: dict | None = None

    def state_dict(self) -> dict[str, Any]:
        import numpy as np

        kind, keys, pos, has_gauss, gauss = np.random.get_state()  # as plain values: checkpoints load weights_only
        numpy_state = {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                       "has_gauss": int(has_gauss), "gauss": float(gauss)}  # fmt: skip
        state = {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": numpy_state}
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            state["cuda"] = torch.cuda.get_rng_state()  # the current device's: rank r draws on cuda:r
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._pending = state_dict or None

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        state, self._pending = self._pending, None
        if state is None:
            return
        import numpy as np

        torch.set_rng_state(state["torch"])
        version, internal, gauss = state["python"]  # a checkpoint round trip may turn tuples into lists
        random.setstate((version, tuple(internal), gauss))
        saved = state["numpy"]
        keys = saved["keys"].numpy().astype(np.uint32)
        np.random.set_state((saved["kind"], keys, saved["pos"], saved["has_gauss"], saved["gauss"]))
        if isinstance(state.get("cuda"), Tensor) and torch.cuda.is_available():
            torch.cuda.set_rng_state(state["cuda"])  # into the current device
