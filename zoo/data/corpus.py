"""The embedded default corpus: text that ships with every Python installation.

Two sources, read from the standard library of the interpreter that runs zoo (nothing is downloaded):

* ``prose``: English documentation: the ``pydoc_data`` topic pages (the language reference as ``help()``
  shows it) and the docstrings of stdlib modules, classes and functions (read with ``ast``, never imported).
* ``code``: the stdlib ``.py`` sources themselves, test suites and ``site-packages`` excluded.

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
    if kind not in SOURCES:
        raise ValueError(f"stdlib corpus source {kind!r} is unknown; choose one of {SOURCES}")
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
