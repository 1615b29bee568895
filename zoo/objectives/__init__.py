"""Training objectives (LightningModules) around one backbone; they differ only in the loss."""

from zoo.objectives.autoregressive import CausalLM
from zoo.objectives.base import LanguageModel
from zoo.objectives.conversion import AttentionAnnealing, BlockWarmupStableDecay, ConversionSchedule
from zoo.objectives.elbo import elbo_loglikelihood
from zoo.objectives.masked_diffusion import MaskedDiffusionLM

__all__ = [
    "AttentionAnnealing",
    "BlockWarmupStableDecay",
    "CausalLM",
    "ConversionSchedule",
    "LanguageModel",
    "MaskedDiffusionLM",
    "elbo_loglikelihood",
]
