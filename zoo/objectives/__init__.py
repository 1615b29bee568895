"""Training objectives (LightningModules) around one backbone; they differ only in the loss."""

from zoo.objectives.autoregressive import CausalLM
from zoo.objectives.base import LanguageModel

__all__ = ["CausalLM", "LanguageModel"]
