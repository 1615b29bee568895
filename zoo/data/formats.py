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

from dataclasses import dataclass

ALPACA_WITH_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"
)
ALPACA = (
    "Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Response:\n"
)


@dataclass(frozen=True)
class Piece:
    """A stretch of a training example: its text, whether the loss covers it, and whether the tokenizer's EOS
    token follows it (ending an answer; covered by the loss when the piece is)."""

    text: str
    train: bool
    eos: bool = False


class PromptFormat:
    """Base class: the prompt text the model continues, and the answer as it is written after it.

    For training, :meth:`pieces` renders an example (a dict with ``instruction``, ``input``, ``response`` and,
    for chats, ``messages``) into :class:`Piece` s; the SFT data tokenizes each piece on its own and masks the
    pieces that are not trained (``-100``). A new single-turn format overrides :meth:`prompt` (and
    :meth:`response`); :class:`Template` does it from YAML.
    """

    def pieces(self, example: dict) -> list[Piece]:
        """Prompt (not trained), then the answer followed by EOS (trained)."""
        if example.get("response") is None:
            raise ValueError("the example has no response (needs `response`, or `messages` for the chat format)")
        return [
            Piece(self.prompt(example["instruction"], example.get("input") or ""), train=False),
            Piece(self.response(example["response"]), train=True, eos=True),
        ]

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


class Template(PromptFormat):
    """A single-turn format written in YAML: ``str.format`` templates over the example's fields
    (``instruction``, ``input``, ``response`` and every column of the source row)::

        format:
          class_path: zoo.data.Template
          init_args: {prompt: "Question: {instruction}\nAnswer:", response: " {response}"}

    Args:
        prompt: the text before the answer (not trained).
        response: the answer as written after the prompt (trained; the EOS token follows it).
    """

    def __init__(self, *, prompt: str, response: str = "{response}") -> None:
        for field, template in (("prompt", prompt), ("response", response)):
            try:
                template.format_map(_AnyFields())
            except (ValueError, IndexError) as err:
                raise ValueError(f"Template {field}={template!r} is not a valid str.format template ({err})") from err
        if "{" not in response:
            raise ValueError(f"Template response={response!r} names no field: include {{response}}")
        self.prompt_template, self.response_template = prompt, response

    def prompt(self, instruction: str, input: str = "") -> str:
        return self.prompt_template.format_map(_Fields(instruction=instruction, input=input))

    def pieces(self, example: dict) -> list[Piece]:
        fields = _Fields(example)
        fields.setdefault("input", "")
        return [
            Piece(self.prompt_template.format_map(fields), train=False),
            Piece(self.response_template.format_map(fields), train=True, eos=True),
        ]


class Chat(PromptFormat):
    """Multi-turn conversations: ``messages`` (a list of ``{"role", "content"}``), each rendered by its role's
    template; the loss covers the assistant turns only (their content and the EOS token that closes each one)::

        User: How do I sort a list?          ← user template          (not trained)
        Assistant: ▕Use sorted(xs).▏[EOS]    ← assistant template:    the head "Assistant: " is not trained,
        User: And in place?                                            the content and EOS are
        Assistant: ▕xs.sort()▏[EOS]

    A single-turn example (``instruction``/``input``/``response``) is a user turn and an assistant turn. The
    defaults continue :class:`UserAssistant` to many turns; ChatML-style roles are a YAML override.

    Args:
        system: template of a system message (``{content}``).
        user: template of a user message.
        assistant: template of an assistant message; the text before ``{content}`` is the prompt the model is
            sampled from, the text after it (if any) follows the EOS token.
    """

    def __init__(
        self,
        *,
        system: str = "System: {content}\n",
        user: str = "User: {content}\n",
        assistant: str = "Assistant: {content}",
    ) -> None:
        for role, template in (("system", system), ("user", user), ("assistant", assistant)):
            if template.count("{content}") != 1:
                raise ValueError(f"Chat {role}={template!r} must contain {{content}} exactly once")
        self.templates = {"system": system, "user": user}
        self.head, _, self.tail = assistant.partition("{content}")

    def prompt(self, instruction: str, input: str = "") -> str:
        text = instruction if not input else f"{instruction}\n{input}"
        return self.templates["user"].replace("{content}", text) + self.head

    def pieces(self, example: dict) -> list[Piece]:
        messages = example.get("messages")
        if not messages:
            return [
                Piece(self.prompt(example["instruction"], example.get("input") or ""), train=False),
                Piece(example["response"], train=True, eos=True),
            ]
        pieces = []
        for i, message in enumerate(messages):
            role, content = message.get("role"), message.get("content")
            if not isinstance(content, str):
                raise ValueError(f"message {i} has content {content!r}: expected a string")
            if role == "assistant":
                pieces += [Piece(self.head, train=False), Piece(content, train=True, eos=True)]
                if self.tail:
                    pieces.append(Piece(self.tail, train=False))
            elif role in self.templates:
                pieces.append(Piece(self.templates[role].replace("{content}", content), train=False))
            else:
                raise ValueError(f"message {i} has role {role!r}: expected system, user or assistant")
        if not any(p.train for p in pieces):
            raise ValueError("the conversation has no assistant message to train on")
        return pieces


class _Fields(dict):
    """Fields for ``str.format_map``; a missing one is an error that names it."""

    def __missing__(self, key: str) -> str:
        raise ValueError(f"the template names field {{{key}}}, which the example does not have (it has {list(self)})")


class _AnyFields(dict):
    def __missing__(self, key: str) -> str:
        return ""


FORMATS: dict[str, type[PromptFormat]] = {
    "none": NoFormat,
    "alpaca": Alpaca,
    "user_assistant": UserAssistant,
    "chat": Chat,
}
"""Formats by the name used on the command line (``--format``) and in data configs."""
