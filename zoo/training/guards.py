"""Non-finite losses and gradients: skip the update or stop, and never write a checkpoint of non-finite weights."""

from __future__ import annotations

from typing import Any, Literal

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor

from zoo.errors import ZooError
from zoo.training.resume import last_good_checkpoint


class NonFiniteError(ZooError, RuntimeError):
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
