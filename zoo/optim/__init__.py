"""Optimizers' parameter groups, Muon with AdamW, fused-kernel defaults and learning-rate schedules."""

from zoo.optim.fused import fused_supported, prefer_fused
from zoo.optim.groups import weight_decay_groups
from zoo.optim.muon import MuonWithAdamW, muon_groups, optimizer_groups
from zoo.optim.schedules import Constant, Schedule, WarmupCosine, WarmupStableDecay

__all__ = [
    "Constant",
    "MuonWithAdamW",
    "Schedule",
    "WarmupCosine",
    "WarmupStableDecay",
    "fused_supported",
    "muon_groups",
    "optimizer_groups",
    "prefer_fused",
    "weight_decay_groups",
]
