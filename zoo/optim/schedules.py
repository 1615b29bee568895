"""Per-step learning-rate schedules, as multipliers of each parameter group's peak learning rate.

::

    WarmupCosine        /‾‾‾‾‾‾‾‾‾‾‾‾‾‾‾‾‾‾‾‾‾‾‾‾‾--___
                       /                               ‾‾--__  min_lr
    WarmupStableDecay   /‾‾‾‾‾‾‾‾‾‾‾‾‾‾‾‾‾‾‾‾‾‾‾‾‾‾‾‾‾‾‾‾‾‾\\      (decay: linear or 1 − sqrt)
                       /                                     \\ min_lr
                      0   warmup                decay_start   total

Each schedule builds a ``torch.optim.lr_scheduler.LambdaLR`` stepped once per optimizer step; ``total_steps``
comes from the trainer (``max_steps``).
"""

from __future__ import annotations

import math
from typing import Literal

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR


class Schedule:
    """Base class: a linear warmup from 0 to the peak over ``warmup_steps``, then :meth:`after_warmup`
    in [0, 1] interpolates between ``min_lr`` (0) and the peak (1)."""

    def __init__(self, *, warmup_steps: int = 0, min_lr: float = 0.0) -> None:
        if warmup_steps < 0:
            raise ValueError(f"schedule warmup_steps={warmup_steps} must be ≥ 0")
        if min_lr < 0:
            raise ValueError(f"schedule min_lr={min_lr} must be ≥ 0")
        self.warmup_steps, self.min_lr = warmup_steps, min_lr

    def after_warmup(self, step: int, total_steps: int) -> float:
        raise NotImplementedError

    def multiplier(self, step: int, total_steps: int, floor: float = 0.0) -> float:
        """Learning rate at ``step`` as a fraction of the peak; ``floor`` = ``min_lr / peak``."""
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        return floor + (1.0 - floor) * self.after_warmup(step, total_steps)

    def build(self, optimizer: Optimizer, total_steps: int) -> LambdaLR:
        if total_steps <= self.warmup_steps:
            raise ValueError(
                f"schedule warmup_steps={self.warmup_steps} is not below the run's {total_steps} steps: "
                "lower warmup_steps or raise trainer.max_steps"
            )

        def for_group(peak: float):
            floor = min(self.min_lr / peak, 1.0) if peak > 0 else 0.0
            return lambda step: self.multiplier(step, total_steps, floor)

        return LambdaLR(optimizer, [for_group(group["lr"]) for group in optimizer.param_groups])


class Constant(Schedule):
    """Linear warmup, then the peak learning rate until the end."""

    def after_warmup(self, step: int, total_steps: int) -> float:
        return 1.0


class WarmupCosine(Schedule):
    """Linear warmup over ``warmup_steps``, then a half cosine from the peak down to ``min_lr`` at the last step.

    Args:
        warmup_steps: steps of linear warmup from 0.
        min_lr: learning rate at the end (absolute, not a ratio).
    """

    def after_warmup(self, step: int, total_steps: int) -> float:
        progress = min((step - self.warmup_steps) / max(total_steps - self.warmup_steps, 1), 1.0)
        return 0.5 * (1.0 + math.cos(math.pi * progress))


class WarmupStableDecay(Schedule):
    """Warmup-stable-decay (Hu et al., MiniCPM 2024): warmup, a constant peak, then a decay to ``min_lr``.

    Args:
        warmup_steps: steps of linear warmup from 0.
        decay_start: fraction of the run's steps at which the decay begins (GPT-S-5M: 0.7).
        decay_shape: ``linear``, or ``1-sqrt`` (Hägele et al., 2024: ``1 − sqrt(progress)``).
        min_lr: learning rate at the end (absolute, not a ratio).
    """

    def __init__(
        self,
        *,
        warmup_steps: int = 0,
        decay_start: float = 0.8,
        decay_shape: Literal["linear", "1-sqrt"] = "1-sqrt",
        min_lr: float = 0.0,
    ) -> None:
        super().__init__(warmup_steps=warmup_steps, min_lr=min_lr)
        if not 0 <= decay_start <= 1:
            raise ValueError(f"WarmupStableDecay decay_start={decay_start} must be a fraction in [0, 1], e.g. 0.7")
        if decay_shape not in ("linear", "1-sqrt"):
            raise ValueError(f"WarmupStableDecay decay_shape={decay_shape!r} must be 'linear' or '1-sqrt'")
        self.decay_start, self.decay_shape = decay_start, decay_shape

    def after_warmup(self, step: int, total_steps: int) -> float:
        start = max(int(self.decay_start * total_steps), self.warmup_steps)
        if step < start:
            return 1.0
        progress = min((step - start + 1) / max(total_steps - start, 1), 1.0)
        return 1.0 - progress if self.decay_shape == "linear" else 1.0 - math.sqrt(progress)
