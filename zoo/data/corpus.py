"""The embedded default corpus: text that ships with every Python installation.

Two text sources, read from the standard library of the interpreter that runs zoo (nothing is downloaded):

* ``prose``: English documentation: the ``pydoc_data`` topic pages (the language reference as ``help()``
  shows it) and the docstrings of stdlib modules, classes and functions (read with ``ast``, never imported).
* ``code``: the stdlib ``.py`` sources themselves, test suites and ``site-packages`` excluded.

and one instruction set for fine-tuning (SFT), built from the same files:

* ``functions``: for each documented top-level function, two examples: *write* it (instruction: its signature
  and the first paragraph of its docstring; response: its source) and *explain* it (input: its source without
  the docstring; response: that paragraph).

Each document carries a stable ``id`` (its path or topic name); :func:`is_validation` hashes it, so the
held-out split is the same on every machine with the same Python version, whatever the number of workers.
"""

from __future__ import annotations

import ast
import os
import sysconfig
import warnings
import zlib
from collections.abc import Iterator
from pathlib import Path

SOURCES = ("prose", "code")
INSTRUCTION_SOURCES = ("functions",)
_SKIP_DIRS = {"test", "tests", "idle_test", "site-packages", "__pycache__", "dist-packages"}


def stdlib_root() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def stdlib_files(limit: int | None = None) -> list[str]:
    """Sorted relative paths of the stdlib's non-test ``.py`` files (the first ``limit`` of them)."""
    root = stdlib_root()
    files = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in _SKIP_DIRS and not d.startswith("test"))
        for name in filenames:
            if name.endswith(".py") and not name.startswith("test_"):
                files.append(os.path.relpath(os.path.join(dirpath, name), root))
    files.sort()
    return files[:limit] if limit is not None else files


def is_validation(doc_id: str, fraction: float) -> bool:
    """Deterministic split: a document is held out when the CRC32 of its id falls in the first ``fraction``."""
    return (zlib.crc32(doc_id.encode()) % 10_000) < fraction * 10_000


def _read(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8")
    except (UnicodeDecodeError, OSError):
        return None  # a few stdlib files are latin-1 test fixtures or unreadable: skipped


def _parse(source: str) -> ast.Module | None:
    for attempt in range(3):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", SyntaxWarning)  # invalid escape sequences in old stdlib strings
                return ast.parse(source)
        except SyntaxError:
            return None
        except SystemError:  # CPython 3.11's spurious "AST constructor recursion depth mismatch" when threads
            if attempt == 2:  # (DataLoader workers) parse at once; the parse itself is fine: try again
                raise
    return None


def _docstrings(source: str) -> Iterator[str]:
    tree = _parse(source)
    if tree is None:
        return
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            doc = ast.get_docstring(node)
            if doc and len(doc) >= 40:  # one-liners like "Return x." carry little prose
                yield doc


TOPICS_SHARD = "pydoc_data/topics"  # a pseudo-file: the help() topic pages


def stdlib_shards(kind: str, limit: int | None = None) -> list[str]:
    """The shards (files) of one source; ``datasets`` spreads them over DataLoader workers."""
    if kind not in SOURCES + INSTRUCTION_SOURCES:
        raise ValueError(f"stdlib corpus source {kind!r} is unknown; choose one of {SOURCES + INSTRUCTION_SOURCES}")
    files = stdlib_files(limit)
    return [TOPICS_SHARD, *files] if kind == "prose" else files


def stdlib_documents(kind: str, shards: list[str]) -> Iterator[dict]:
    """Yield ``{"id", "text"}`` documents of one source from the given shards (see :func:`stdlib_shards`)."""
    root = stdlib_root()
    for rel in shards:
        if rel == TOPICS_SHARD:
            from pydoc_data.topics import topics

            for name in sorted(topics):
                yield {"id": f"topic:{name}", "text": topics[name]}
            continue
        text = _read(root / rel)
        if not text:
            continue
        if kind == "code":
            yield {"id": rel, "text": text}
        else:
            doc = "\n\n".join(_docstrings(text))
            if doc:
                yield {"id": f"doc:{rel}", "text": doc}


WRITE = "Write a Python function `{name}{signature}`: {summary}"
EXPLAIN = "Explain what this Python function does."


def stdlib_functions(shards: list[str], *, max_lines: int = 30) -> Iterator[dict]:
    """Yield instruction examples ``{"id", "instruction", "input", "output"}`` (Alpaca's columns) from the
    documented top-level functions (up to ``max_lines`` long) of the given stdlib files: a *write* and an
    *explain* example each.
    The ``id`` is the file's path, so :func:`is_validation` holds out whole files, as for the text sources."""
    root = stdlib_root()
    for rel in shards:
        source = _read(root / rel) if rel != TOPICS_SHARD else None
        tree = _parse(source) if source else None
        if tree is None:
            continue
        lines = source.splitlines()
        for node in tree.body:
            if not isinstance(node, ast.FunctionDef) or node.name.startswith("_"):
                continue
            doc = ast.get_docstring(node)
            if not doc or node.end_lineno - node.lineno >= max_lines or node.decorator_list:
                continue
            summary = doc.split("\n\n")[0].replace("\n", " ").strip()
            if len(summary) < 20:
                continue
            code = "\n".join(lines[node.lineno - 1 : node.end_lineno])
            body_start = node.body[1].lineno if len(node.body) > 1 else None
            if body_start is None:
                continue  # a docstring and nothing else
            header = "\n".join(lines[node.lineno - 1 : node.body[0].lineno - 1])
            bare = header + "\n" + "\n".join(lines[body_start - 1 : node.end_lineno])
            signature = f"({ast.unparse(node.args)})"
            if node.returns is not None:
                signature += f" -> {ast.unparse(node.returns)}"
            write = WRITE.format(name=node.name, signature=signature, summary=summary)
            yield {"id": rel, "instruction": write, "input": "", "output": code}
            yield {"id": rel, "instruction": EXPLAIN, "input": bare, "output": summary}
