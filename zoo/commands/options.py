"""The parser of zoo's own subcommands (``eval``, ``export``, ``info``, ``tokenizer``, ``data``, ``checkpoint``):
jsonargparse, with the options taken from the signature of the function each command calls, so ``--help`` shows
the function's documented arguments, ``--config FILE`` (YAML with the same keys) sets them, and values are type
checked.

jsonargparse names an option after its parameter (``--max_new_tokens``); the spellings zoo has always documented
are kept as well: ``--max-new-tokens``, a true/false option given alone (``--overwrite``) meaning true, and a list
option repeated (``--task-file a=x.jsonl --task-file b=y.jsonl``) adding one item each time. A parse error is one
sentence (:func:`zoo.commands.errors.explain_parser_error`) raised as :class:`zoo.commands.errors.ParserError`,
which the command layer prints as one line with exit status 2.
"""

from __future__ import annotations

import argparse
import types
import typing
from collections.abc import Callable, Iterable

from jsonargparse import ActionConfigFile, ArgumentParser, DefaultHelpFormatter, Namespace

from zoo import compat
from zoo.commands.errors import ParserError, explain_parser_error

SPELLINGS = ("Options may also be written with dashes (--eos-token), a true/false option given alone means true "
             "(--overwrite), and a list option may be repeated, one item each time.")  # fmt: skip


class CommandParser(ArgumentParser):
    """jsonargparse's parser for one zoo subcommand: errors as :class:`ParserError` (one sentence), options never
    abbreviated, the module docstring as the description (kept as written), and the spellings of the module
    docstring above (:meth:`parse_args` rewrites them before parsing)."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("allow_abbrev", False)
        kwargs.setdefault("formatter_class", _Formatter)
        kwargs.setdefault("epilog", SPELLINGS)
        super().__init__(*args, **kwargs)

    def error(self, message: str, ex: Exception | None = None):
        if not self.exit_on_error:  # jsonargparse's inner parsers: it catches their errors while trying alternatives
            return super().error(message, ex)
        raise ParserError(explain_parser_error(message, self.option_names())) from ex

    def add_config_file(self, help: str = "a YAML file of these options (keys as in --help, e.g. max_new_tokens)"):
        """``--config FILE``: option values from a file; later options override it."""
        self.add_argument("--config", action=ActionConfigFile, help=help)

    def option_names(self, *, dashes: bool = True) -> list[str]:
        """Every option string (``dashes``: with the dash spelling of each)."""
        names = [o for action in self._actions for o in action.option_strings]
        return names + [o.replace("_", "-") for o in names if o.startswith("--")] if dashes else names

    def parse_args(self, args: Iterable[str] | None = None, *pargs, **kwargs) -> Namespace:
        self.add_dash_spellings()
        return super().parse_args(self.normalize(list(args or [])), *pargs, **kwargs)

    def format_help(self) -> str:
        self.add_dash_spellings()
        return super().format_help()

    def add_dash_spellings(self) -> None:
        """``--max-new-tokens`` beside each ``--max_new_tokens`` jsonargparse made, so ``--help`` shows the
        spelling the documentation uses (idempotent; options added later get theirs at the next call)."""
        for action in list(self._actions):
            for option in list(action.option_strings):
                dashed = "--" + option[2:].replace("_", "-")
                if option.startswith("--") and dashed != option and dashed not in self.option_names(dashes=False):
                    compat.add_option_string(self, action, dashed)

    def parse_known(self, argv: list[str]) -> tuple[Namespace, list[str]]:
        """Parse this parser's own options out of ``argv``; the others (with their values) are returned as they are,
        for the parser of ``zoo fit`` (``--model.…``, ``--data.…`` overrides)."""
        actions = {o for a in self._actions for o in a.option_strings}
        own, rest, target = [], [], None
        for token in argv:
            if token.startswith("-"):
                name = token.partition("=")[0]
                target = own if name in actions or "--" + name[2:].replace("-", "_") in actions else rest
            (target if target is not None else own).append(token)
        return self.parse_args(own), rest

    def normalize(self, argv: list[str]) -> list[str]:
        """``argv`` with the documented spellings rewritten into jsonargparse's: ``--a-b`` → ``--a_b`` (options of
        this parser only), a bare true/false option → ``--flag true``, a repeated list option → ``--item+ VALUE``;
        after a subcommand's name, with that subcommand's parser."""
        actions = {o: a for a in self._actions for o in a.option_strings}
        subcommands = compat.subcommand_parsers(self)
        out: list[str] = []
        for i, token in enumerate(argv):
            if token == "--":
                return out + argv[i:]
            if token in subcommands and isinstance(subcommands[token], CommandParser):
                return out + [token] + subcommands[token].normalize(argv[i + 1 :])
            name, sep, value = token.partition("=")
            if not name.startswith("--") or name in ("--help",):
                out.append(token)
                continue
            under = "--" + name[2:].replace("-", "_")
            action = actions.get(name) or actions.get(under)
            if action is None:
                out.append(token)
                continue
            name = action.option_strings[0]  # jsonargparse's own spelling (a `+` suffix appends to its lists)
            kind = _kind(action)
            if kind == "list":
                name += "+"
            nxt = argv[i + 1] if i + 1 < len(argv) else None
            if kind == "bool" and not sep and (nxt is None or nxt.startswith("--")):
                out += [name, "true"]
            else:
                out.append(f"{name}{sep}{value}" if sep else name)
        return out


def _kind(action: argparse.Action) -> str | None:
    """``"bool"`` for a true/false option, ``"list"`` for a list option, else ``None``."""
    hint = getattr(action, "_typehint", None)
    if hint is None:
        return None
    union = typing.get_origin(hint) in (typing.Union, types.UnionType)
    args = [a for a in typing.get_args(hint) if a is not type(None)] if union else []
    hint = args[0] if len(args) == 1 else hint
    if hint is bool:
        return "bool"
    return "list" if typing.get_origin(hint) is list else None


class _Formatter(DefaultHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """The module docstring as written (examples, tables), and each option's type and default."""


def add_trust_flag(parser: CommandParser) -> None:
    """``--trust_checkpoint`` (``--trust-checkpoint``): unpickle a checkpoint in full (runs the code it names)."""
    from zoo.training.checkpoints import TRUST_HELP

    parser.add_argument("--trust_checkpoint", type=bool | None, default=None, help=TRUST_HELP)


def command_parser(prog: str, description: str | None, function: Callable | None = None, *,
                   skip: set[str] | None = None) -> CommandParser:  # fmt: skip
    """A :class:`CommandParser` with ``--config`` and the keyword arguments of ``function`` (their types and the
    ``Args:`` of its docstring; ``skip``: arguments the command sets itself)."""
    parser = CommandParser(prog=prog, description=description)
    parser.add_config_file()
    if function is not None:
        parser.add_function_arguments(function, as_group=False, skip=skip)
    return parser
