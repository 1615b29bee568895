"""Prompt formats of instruction-tuned models: how an instruction is wrapped before the model answers.

Each format renders the prompt text; the model's answer follows it. The SFT data and ``python -m zoo generate
--format`` use the same templates, so a model is sampled the way it was fine-tuned.
"""

from __future__ import annotations

ALPACA_WITH_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"
)
ALPACA = (
    "Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Response:\n"
)


class PromptFormat:
    """Plain text: the prompt as given."""

    def prompt(self, instruction: str, input: str = "") -> str:
        return instruction if not input else f"{instruction}\n{input}"


class Alpaca(PromptFormat):
    """The Stanford Alpaca templates, with and without an input (Supra-50M-Instruct)."""

    def prompt(self, instruction: str, input: str = "") -> str:
        if input:
            return ALPACA_WITH_INPUT.format(instruction=instruction, input=input)
        return ALPACA.format(instruction=instruction)


class UserAssistant(PromptFormat):
    """``User: …`` then ``Assistant:`` on the next line (SmallCoder)."""

    def prompt(self, instruction: str, input: str = "") -> str:
        text = instruction if not input else f"{instruction}\n{input}"
        return f"User: {text}\nAssistant:"


FORMATS: dict[str, PromptFormat] = {"none": PromptFormat(), "alpaca": Alpaca(), "user_assistant": UserAssistant()}
