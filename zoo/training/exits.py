"""How a run ends: the last step is always saved, and SIGTERM / SIGINT save and stop with a non-zero status.

::

    max_steps / max_epochs reached, early stop    ──▶ last.ckpt holds the final step (unless it already does)
    SIGTERM (scheduler, preemption)               ──▶ the current step finishes, last.ckpt is written, exit 143
    SIGINT (Ctrl+C)                               ──▶ the same, exit 130; a second Ctrl+C stops at once, unsaved
    SIGTERM under SLURM with auto-requeue         ──▶ last.ckpt written; Lightning's requeue behaviour unchanged
    a crash (an exception, SIGKILL, OOM)          ──▶ nothing written: the previous checkpoint stays the newest

Lightning's ``ModelCheckpoint(save_last=True)`` writes ``last.ckpt`` only when it saves anyway (every
``every_n_train_steps``, at a validation): a run whose ``max_steps`` is not a multiple of that interval would lose
its final steps, the ones a WSD schedule's decay exists to produce. Lightning's signal connector turns SIGTERM into
a ``SIGTERMException`` (a ``SystemExit`` with status 0) at the next step boundary (under DDP, on every rank at once)
and saves nothing; SIGINT is Python's ``KeyboardInterrupt``, which lands in the middle of a step, and Lightning
exits with status 1. :class:`SaveOnExit` builds on the connector: SIGINT is routed to the SIGTERM handler Lightning
installed (so both stop at the same boundary, by the same code), and the stop is saved and given its status.
"""

from __future__ import annotations

import signal
from pathlib import Path

import lightning as L
import torch
from lightning.fabric.plugins.environments import SLURMEnvironment
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from lightning.pytorch.utilities.exceptions import SIGTERMException


def last_checkpoint_callbacks(callbacks) -> list[ModelCheckpoint]:
    """The checkpoint callbacks that keep a ``last.ckpt`` (``save_last`` true or ``"link"``): the ones whose last
    file a run's end is written to. Empty: the run's final state is not kept (``checkpoint.save_last: false``)."""
    return [cb for cb in callbacks if isinstance(cb, ModelCheckpoint) and cb.save_last]


class SaveOnExit(Callback):
    """Writes the run's final state to ``last.ckpt`` whenever ``fit`` ends for any reason but a crash, and turns
    SIGTERM and SIGINT into a saved, resumable stop with the conventional exit status (128 + the signal: 143, 130).

    Every ``python -m zoo fit`` run has it. The file is written through the trainer's checkpoint I/O (atomic, see
    :class:`zoo.training.AtomicCheckpointIO`), to the path of each checkpoint callback that keeps a last file, and
    only when no checkpoint was written at that step already. Resuming from a signal's ``last.ckpt`` with
    ``--ckpt_path last`` continues exactly as the uninterrupted run would have."""

    def __init__(self) -> None:
        self._saved_step: int | None = None  # the global step of the newest checkpoint written in this fit
        self._signal: int | None = None  # SIGINT (SIGTERM is Lightning's trainer.received_sigterm)
        self._previous_sigint = None

    # ---- SIGINT: stop at the next step boundary, through Lightning's SIGTERM path ------------------------------
    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # on_train_start: after Lightning registered its SIGTERM handler (and the checkpoint was restored)
        self._saved_step = trainer.global_step if trainer.ckpt_path else None
        self._signal = None
        try:
            self._previous_sigint = signal.signal(signal.SIGINT, self._on_sigint)
        except ValueError:  # not the main thread: Ctrl+C keeps Python's behaviour
            self._previous_sigint = None

    def _on_sigint(self, signum, frame) -> None:
        lightning_handler = signal.getsignal(signal.SIGTERM)
        if self._signal is not None or not callable(lightning_handler):  # a second Ctrl+C: stop at once, unsaved
            raise KeyboardInterrupt
        self._signal = signal.SIGINT
        print("received SIGINT: last.ckpt is written at the end of this step, then the run stops (press Ctrl+C "
              "again to stop at once, without saving)", flush=True)  # fmt: skip
        lightning_handler(signum, frame)  # Lightning's connector: trainer.received_sigterm, the ranks stop together

    def _restore_sigint(self) -> None:
        if self._previous_sigint is not None:
            try:
                signal.signal(signal.SIGINT, self._previous_sigint)
            except ValueError:
                pass
            self._previous_sigint = None

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._restore_sigint()

    # ---- saving --------------------------------------------------------------------------------------------------
    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        self._saved_step = trainer.global_step  # every rank dumps (and so sees) every checkpoint

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Lightning's ModelCheckpoint saves last itself at train end when it saved nothing in this fit; otherwise
        # its last file is from its last trigger, which this completes.
        if self._saved_step is not None and self._saved_step != trainer.global_step:
            self._save_last(trainer)

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        if not isinstance(exception, SIGTERMException) or trainer.state.fn != TrainerFn.FITTING:
            self._restore_sigint()  # a crash (the state may be half an update), or a signal outside fit
            return
        signum = self._signal or signal.SIGTERM
        name = signal.Signals(signum).name
        paths = [] if self._saved_step == trainer.global_step else self._save_last(trainer)
        saved = trainer.global_step if paths or self._saved_step == trainer.global_step else None
        where = ", ".join(map(str, paths)) or "the checkpoint written at this step"
        if saved is not None:
            rank_zero_info(f"{name}: saved step {saved} in {where}; resume with --ckpt_path last")
        if signum == signal.SIGTERM and _slurm_requeues(trainer):
            rank_zero_info(f"{name} under SLURM with auto-requeue: the job's requeue is left to Lightning")
        else:
            exception.code = 128 + signum  # SystemExit's status: 143 (SIGTERM), 130 (SIGINT), as shells report
        self._restore_sigint()

    def _save_last(self, trainer: L.Trainer) -> list[Path]:
        """Write the current state to every ``last`` path of the run's checkpoint callbacks; the paths written."""
        callbacks = last_checkpoint_callbacks(trainer.checkpoint_callbacks)
        if not callbacks:
            rank_zero_warn(f"step {trainer.global_step} is not saved: no checkpoint callback keeps a last.ckpt "
                           "(checkpoint.save_last is false)")  # fmt: skip
            return []
        metrics = {**trainer.callback_metrics, "epoch": torch.tensor(trainer.current_epoch),
                   "step": torch.tensor(trainer.global_step)}  # fmt: skip
        written = []
        for cb in callbacks:
            # the file this callback writes its last checkpoint to (set before saving: it is part of the state)
            path = cb.last_model_path or cb.format_checkpoint_name(metrics, cb.CHECKPOINT_NAME_LAST)
            cb.last_model_path = path
            trainer.save_checkpoint(path, weights_only=cb.save_weights_only)
            written.append(Path(path))
        return written


def _slurm_requeues(trainer: L.Trainer) -> bool:
    """Whether Lightning's SLURM environment requeues this job on its signal (then SIGTERM keeps its handling)."""
    environment = getattr(trainer.strategy, "cluster_environment", None)
    if environment is None and SLURMEnvironment.detect():
        environment = SLURMEnvironment()
    return isinstance(environment, SLURMEnvironment) and environment.auto_requeue
