"""How every command reports a user's error: one line on stderr, ``zoo <command>: <message>``, exit status 2.

What counts as the user's error: ``ValueError`` (the library's convention for a bad argument),
:class:`zoo.errors.ZooError` (a bad file, flag or set-up), a file that cannot be opened (``OSError``), Lightning's
``MisconfigurationException``, and the parser's errors, which :func:`explain_parser_error` rewrites with the key at
fault first and a "did you mean" for a mistyped key or class path. Anything else is a bug and keeps its traceback.
``--verbose`` (anywhere on the command line) or ``ZOO_TRACEBACK=1`` prints the traceback of a user's error too.
"""

from __future__ import annotations

import argparse
import difflib
import functools
import importlib
import inspect
import os
import re
import sys
from collections.abc import Callable, Iterable

from zoo.errors import ZooError

TRACEBACK_ENV = "ZOO_TRACEBACK"
VERBOSE_FLAG = "--verbose"
# the packages whose classes a config names by class_path; "did you mean" looks through their public classes
CLASS_PACKAGES = ("zoo.nn", "zoo.objectives", "zoo.data", "zoo.optim", "zoo.training", "torch.optim",
                  "torch.optim.lr_scheduler")  # fmt: skip


class ParserError(ZooError):
    """A command line or config file the parser of ``zoo fit`` refuses, explained in one sentence."""


def user_errors() -> tuple[type[BaseException], ...]:
    """The exception types printed as one line (the rest are bugs, shown with their traceback)."""
    errors: list[type[BaseException]] = [ValueError, ZooError, OSError, argparse.ArgumentError]
    if "lightning" in sys.modules or "lightning.pytorch" in sys.modules:
        from lightning.fabric.utilities.exceptions import MisconfigurationException

        errors.append(MisconfigurationException)
    return tuple(errors)


def wants_traceback(argv: list[str]) -> tuple[bool, list[str]]:
    """Whether the user asked for tracebacks (``--verbose`` or ``ZOO_TRACEBACK=1``), and ``argv`` without the flag."""
    env = os.environ.get(TRACEBACK_ENV, "0") not in ("0", "", "false")
    return env or VERBOSE_FLAG in argv, [a for a in argv if a != VERBOSE_FLAG]


def one_line(err: BaseException) -> str:
    """The message of ``err`` on one line (a multi-line message's lines joined; whitespace runs collapsed)."""
    if isinstance(err, OSError) and err.strerror:  # without the "[Errno 2]" prefix
        text = err.strerror + (f": {err.filename}" if err.filename is not None else "")
    else:
        text = str(err) or type(err).__name__
    return " ".join(text.split())


def run_command(name: str, function: Callable[[list[str]], object], argv: list[str]) -> None:
    """Run ``function(argv)``, printing a user's error as ``zoo <name>: <message>`` and exiting with status 2."""
    verbose, argv = wants_traceback(argv)
    if verbose:
        os.environ[TRACEBACK_ENV] = "1"  # DDP's re-launched ranks read it, not the stripped flag
    try:
        function(argv)
    except user_errors() as err:
        if verbose:
            raise
        print(f"zoo {name}: {one_line(err)}", file=sys.stderr, flush=True)
        sys.exit(2)


def command(name: str) -> Callable[[Callable[[list[str]], object]], Callable[[list[str] | None], None]]:
    """Decorate a command's ``main(argv)`` so that it reports a user's error as :func:`run_command` does."""

    def decorate(function: Callable[[list[str]], object]) -> Callable[[list[str] | None], None]:
        @functools.wraps(function)
        def main(argv: list[str] | None = None) -> None:
            run_command(name, function, sys.argv[1:] if argv is None else list(argv))

        return main

    return decorate


# ---- the parser's messages ---------------------------------------------------------------------------------------

NOISE = ("Does not validate against any of", "Subtypes:", "Errors:", "Given value", "- Expected a <class 'NoneType'>")


def explain_parser_error(message: str, options: Iterable[str] = ()) -> str:
    """jsonargparse's message (often a nested, multi-line report restating the whole value) as one sentence: the
    key at fault, the value, the reason, and a "did you mean" for a mistyped option, key or class path. ``options``
    are the parser's option strings (``--trainer.max_steps``), the candidates for a mistyped option."""
    options = sorted({o for o in options if o.startswith("--")})
    if m := re.search(r'Parser key "config": File does not exist: \'?([^\']+)\'?', message):
        return (f"--config {m.group(1)} does not exist: give the path of a YAML config file, e.g. "
                "configs/quickstart.yaml (paths are relative to the current folder)")  # fmt: skip
    if m := re.match(r"unrecognized arguments: (\S+)", message.strip()):
        given = m.group(1).split("=")[0]
        return f"{given} is not an option (options are never abbreviated){did_you_mean(given, options)}"
    if m := re.search(r"(?:Group|Subcommand) '([^']+)' does not accept option '([^']+)'", message):
        group, key = m.groups()
        full = key if message.lstrip().startswith("Subcommand") else f"{group}.{key}"
        return (f"{full} is not a setting of {full.rpartition('.')[0] or 'the command'}: remove it or correct its name"
                f"{did_you_mean('--' + full, options, strip='--')}")
    keys = re.findall(r'Parser key "([^"]+)"', message)
    classes = re.findall(r"Problem with given class_path '([^']+)'", message)
    reason, value = _innermost_reason(message)
    field = ".".join(keys) or "the config"
    if m := re.search(r"Option '([^']+)' is not accepted", reason):
        option = m.group(1)
        owner = classes[-1] if classes else None
        names = _parameters(owner) if owner else []
        where = f" of {owner}" if owner else ""
        return (f"{field}.{option} is not an argument{where}: remove it or correct its name"
                f"{did_you_mean(option, names)}" + (f" (its arguments: {', '.join(names)})" if names else ""))
    if m := re.search(r"module '([\w.]+)' has no attribute '(\w+)'", reason) or re.search(
        r"No module named '([\w.]+)'", reason
    ):
        given = ".".join(m.groups())  # the class path, or the part of it that fails to import
        named = re.search(r"(?:has no attribute '\w+'|No module named '[\w.]+')\. Got value: \w+\(class_path='([^']+)'",
                          message)  # fmt: skip
        given = named.group(1) if named else given
        return f"{field}: class_path {given} does not exist{did_you_mean(given, known_classes())}"
    if keys and value is not None and len(value) < 80:
        return f"{field}={value}{' ' if reason.startswith('must be') else ': '}{reason}"
    return f"{field}: {reason}" if keys else reason


def _innermost_reason(message: str) -> tuple[str, str | None]:
    """The deepest line of a nested jsonargparse report without its key prefixes, and the value it restates."""
    lines = [line.strip() for line in message.splitlines() if line.strip() and not line.strip().startswith(NOISE)]
    if not lines:
        return message.strip(), None
    reason = lines[-1].removeprefix("- ")
    reason = re.sub(r"(Parser key \"[^\"]+\":\s*|Problem with given class_path '[^']+':\s*)", "", reason)
    reason = re.sub(r"Type \S+(?:\[.*?\]\])? expects a function or a callable class:\s*", "", reason)
    reason = re.sub(r"Expected a <class '(?:builtins\.)?([\w.]+)'>", r"expected a value of type \1", reason)
    reason = re.sub(r"Expected a typing\.Literal\[(.*)\]\.", r"choose from \1.", reason)  # as argparse's choices
    reason, _, value = reason.partition(" Got value: ")
    value = re.split(r"\. Got value: ", value)[0].rstrip(".") if value else None
    reason = reason.strip().rstrip(".")
    if reason == "expected a value of type float" and value and value.lower().lstrip("+-") in ("nan", "inf"):
        reason = "must be a finite number"  # jsonargparse reads nan and inf as text, not as floats
    return reason, value


def did_you_mean(given: str, candidates: Iterable[str], *, strip: str = "") -> str:
    """``"; did you mean X?"`` for the closest of ``candidates`` to ``given`` (difflib), or ``""``."""
    candidates = list(candidates)
    close = difflib.get_close_matches(given, candidates, n=1, cutoff=0.6)
    if not close:  # a class path: compare the last parts too (zoo.nn.SwiGlu vs zoo.nn.SwiGLU)
        tails = {c.rsplit(".", 1)[-1].lower(): c for c in candidates}
        hit = difflib.get_close_matches(given.rsplit(".", 1)[-1].lower(), list(tails), n=1, cutoff=0.6)
        close = [tails[hit[0]]] if hit else []
    return f"; did you mean {close[0].removeprefix(strip) if strip else close[0]}?" if close else ""


def known_classes() -> list[str]:
    """The class paths a config can name from :data:`CLASS_PACKAGES` (their public classes)."""
    names = []
    for package in CLASS_PACKAGES:
        try:
            module = importlib.import_module(package)
        except ImportError:
            continue
        names += [f"{package}.{n}" for n, obj in vars(module).items() if inspect.isclass(obj) and not n.startswith("_")]
    return names


def _parameters(class_path: str) -> list[str]:
    """The keyword arguments of the class at ``class_path`` (its ``__init__``, and its bases' where it passes
    ``**kwargs`` on, as jsonargparse reads them), or ``[]`` when it does not import."""
    module, _, name = class_path.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module), name)
        names: list[str] = []
        for owner in cls.__mro__:
            if "__init__" not in vars(owner):
                continue
            params = inspect.signature(owner.__init__).parameters.values()
            names += [p.name for p in params if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD) and p.name != "self"
                      and p.name not in names]  # fmt: skip
            if not any(p.kind is p.VAR_KEYWORD for p in params):
                break
        return names
    except (ImportError, AttributeError, TypeError, ValueError):
        return []
