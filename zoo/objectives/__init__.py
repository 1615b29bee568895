"""Training objectives (LightningModules) around one backbone; they differ only in the loss."""

from zoo.objectives.autoregressive import CausalLM
from zoo.objectives.base import LanguageModel
from zoo.objectives.conversion import AttentionAnnealing, BlockWarmupStableDecay, ConversionSchedule
from zoo.objectives.description import ModelDescription, ModelKind, SamplerFamily, Scoring
from zoo.objectives.elbo import elbo_loglikelihood
from zoo.objectives.masked_diffusion import MaskedDiffusionLM
from zoo.objectives.samplers import AUTOREGRESSIVE, MASKED_DIFFUSION, AutoregressiveOptions, DiffusionOptions

__all__ = [
    "AUTOREGRESSIVE",
    "MASKED_DIFFUSION",
    "AttentionAnnealing",
    "AutoregressiveOptions",
    "BlockWarmupStableDecay",
    "CausalLM",
    "ConversionSchedule",
    "DiffusionOptions",
    "LanguageModel",
    "MaskedDiffusionLM",
    "ModelDescription",
    "ModelKind",
    "SamplerFamily",
    "Scoring",
    "elbo_loglikelihood",
]
