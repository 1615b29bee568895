"""Prompt formats of instruction-tuned models: how an instruction is wrapped before the model answers.

A format renders two pieces of text, and a training example (or a sampled conversation) is their concatenation::

    prompt(instruction, input)  ─┬─  response(answer)  ─  [EOS]
    "### Response:\\n"             │   "The answer."
                                  └ the model starts writing here when sampled

The SFT data and ``python -m zoo generate --format`` use the same classes, so a model is sampled the way it was
fine-tuned. Tokenize the two pieces separately and concatenate the ids (as both do): a byte-level BPE merges
characters across the boundary otherwise, and the tokens the model saw after the prompt in training would differ
from the ones it is asked to continue from at sampling time.

These are data-side: no model or torch imports.
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
    """Base class: the prompt text the model continues, and the answer as it is written after it."""

    def prompt(self, instruction: str, input: str = "") -> str:
        """The text before the answer. ``input`` is optional context for the instruction."""
        raise NotImplementedError

    def response(self, text: str) -> str:
        """The answer ``text`` as it follows :meth:`prompt` in a training example (the EOS is the tokenizer's)."""
        return text


class NoFormat(PromptFormat):
    """Plain text: the instruction as given (and the input on the next line, if any); the answer as given.
    For base models, which continue text rather than follow instructions."""

    def prompt(self, instruction: str, input: str = "") -> str:
        return instruction if not input else f"{instruction}\n{input}"


class Alpaca(PromptFormat):
    """The Stanford Alpaca templates, with and without an input (used by Supra-50M-Instruct). The prompt ends with
    ``"### Response:\\n"``; the answer follows on that new line, unchanged."""

    def prompt(self, instruction: str, input: str = "") -> str:
        if input:
            return ALPACA_WITH_INPUT.format(instruction=instruction, input=input)
        return ALPACA.format(instruction=instruction)


class UserAssistant(PromptFormat):
    """A two-line chat (SmallCoder's SFT)::

        User: {instruction}
        Assistant: {answer}

    The prompt is ``"User: {instruction}\\nAssistant: "``: one space after each colon, and the prompt *ends with*
    that space, so the answer begins directly with its first character. :meth:`response` therefore strips the
    answer's leading spaces (``" 42"`` → ``"42"``), so prompt + response never carries two spaces. An input, if
    given, goes on the line after the instruction, inside the user turn.
    """

    def prompt(self, instruction: str, input: str = "") -> str:
        text = instruction if not input else f"{instruction}\n{input}"
        return f"User: {text}\nAssistant: "

    def response(self, text: str) -> str:
        return text.lstrip(" ")


FORMATS: dict[str, type[PromptFormat]] = {"none": NoFormat, "alpaca": Alpaca, "user_assistant": UserAssistant}
"""Formats by the name used on the command line (``--format``) and in data configs."""
