"""Optimizers' parameter groups and learning-rate schedules."""

from zoo.optim.groups import weight_decay_groups
from zoo.optim.schedules import Constant, Schedule, WarmupCosine, WarmupStableDecay

__all__ = ["Constant", "Schedule", "WarmupCosine", "WarmupStableDecay", "weight_decay_groups"]
