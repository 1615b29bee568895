"""Where evaluation documents come from besides the hub: readers of the benchmarks' original release files, the
processing the harness applies to some tasks' documents, and whether the hub can be reached.

Task files name these by import path (``local: {reader: "zoo.eval.datasets:read_piqa"}``,
``process_docs: zoo.eval.datasets:hellaswag_docs``); :mod:`zoo.eval.tasks` holds the definitions.
"""

from __future__ import annotations

import importlib
import json
import os
import re
from collections.abc import Callable
from pathlib import Path


def import_function(path: str) -> Callable:
    """``"package.module:function"`` → the function."""
    module, _, name = path.partition(":")
    if not name:
        raise ValueError(f"{path!r} is not an import path: write it as 'package.module:function'")
    return getattr(importlib.import_module(module), name)


# ---- local files in their original release formats ---------------------------------------------------------
def read_local(path: str, *, reader: str | None = None) -> list[dict]:
    """Rows of a local file: ``reader`` (``module:function`` taking the path) or by extension (.jsonl, .json,
    .csv, .parquet)."""
    if reader is not None:
        return import_function(reader)(path)
    if path.endswith(".jsonl"):
        # A few MB at most: read directly rather than through datasets' Arrow cache.
        with open(path, encoding="utf-8") as f:
            return [json.loads(line) for line in f if line.strip()]
    if path.endswith(".json"):
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
        return data if isinstance(data, list) else data["data"]
    suffix = Path(path).suffix.lstrip(".")
    if suffix in ("csv", "parquet"):
        import datasets

        return [dict(r) for r in datasets.load_dataset(suffix, data_files=path, split="train")]
    raise ValueError(f"local file {path}: unknown format; use .jsonl, .json, .csv or .parquet")


def read_piqa(path: str) -> list[dict]:
    """PIQA's release: ``valid.jsonl`` (goal, sol1, sol2) with the labels in ``valid-labels.lst`` beside it."""
    labels_path = re.sub(r"\.jsonl$", "-labels.lst", path)
    if not os.path.exists(labels_path):
        raise ValueError(f"PIQA file {path} needs its labels file {labels_path} (one 0/1 per line)")
    rows = read_local(path)
    with open(labels_path) as f:
        labels = [int(line) for line in f if line.strip()]
    if len(labels) != len(rows):
        raise ValueError(f"PIQA {path} has {len(rows)} rows but {labels_path} has {len(labels)} labels")
    return [{**row, "label": label} for row, label in zip(rows, labels)]


def read_truthfulqa_mc(path: str) -> list[dict]:
    """TruthfulQA's ``mc_task.json`` ({question, mc1_targets: {answer: 0/1}, mc2_targets}) in the hub's schema
    ({question, mc1_targets: {choices, labels}, …}); the answers keep the file's order."""
    with open(path, encoding="utf-8") as f:
        data = json.load(f)
    return [
        {
            "question": row["question"],
            **{k: {"choices": list(row[k]), "labels": list(row[k].values())} for k in ("mc1_targets", "mc2_targets")},
        }
        for row in data
    ]


def read_wikitext_raw(path: str) -> list[dict]:
    """``wiki.test.raw`` split into articles at top-level headings (`` = Title = ``), as the hub's
    document-level WikiText: ``{"page": article text}``."""
    with open(path, encoding="utf-8", newline="") as f:
        text = f.read().replace("\r\n", "\n")
    pages: list[list[str]] = []
    for line in text.splitlines(keepends=True):
        if re.fullmatch(r" = [^=].* = \n?", line):
            pages.append([])
        elif not pages:  # before the first heading: the original release's leading blank line
            if not line.strip():
                continue
            pages.append([])
        pages[-1].append(line)
    return [{"page": "".join(lines)} for lines in pages]


# ---- processing the harness applies to some tasks ----------------------------------------------------------
def _hellaswag_clean(text: str) -> str:
    text = text.strip().replace(" [title]", ". ")
    text = re.sub(r"\[.*?\]", "", text)  # WikiHow artefacts such as [header]
    return text.replace("  ", " ")


def hellaswag_docs(docs: list[dict]) -> list[dict]:
    """HellaSwag as the harness prompts it: ``query`` = "activity: ctx_a Ctx_b", cleaned ``choices``."""
    out = []
    for doc in docs:
        context = doc["ctx_a"] + " " + doc["ctx_b"].capitalize()
        query = _hellaswag_clean(doc["activity_label"] + ": " + context)
        out.append({**doc, "query": query, "choices": [_hellaswag_clean(e) for e in doc["endings"]],
                    "gold": int(doc["label"])})  # fmt: skip
    return out


def wikitext_detokenize(text: str) -> str:
    """Undo WikiText's tokenization spaces (the harness's detokenizer, rule for rule)."""
    text = text.replace("s '", "s'")
    text = re.sub(r"/' [0-9]/", r"/'[0-9]/", text)
    for a, b in ((" @-@ ", "-"), (" @,@ ", ","), (" @.@ ", "."), (" : ", ": "), (" ; ", "; "), (" . ", ". "),
                 (" ! ", "! "), (" ? ", "? "), (" , ", ", ")):  # fmt: skip
        text = text.replace(a, b)
    text = re.sub(r"\(\s*([^\)]*?)\s*\)", r"(\1)", text)
    text = re.sub(r"\[\s*([^\]]*?)\s*\]", r"[\1]", text)
    text = re.sub(r"{\s*([^}]*?)\s*}", r"{\1}", text)
    text = re.sub(r"\"\s*([^\"]*?)\s*\"", r'"\1"', text)
    text = re.sub(r"'\s*([^']*?)\s*'", r"'\1'", text)
    for a, b in (("= = = =", "===="), ("= = =", "==="), ("= =", "=="), (" \N{DEGREE SIGN} ", "\N{DEGREE SIGN}"),
                 (" \n", "\n"), ("\n ", "\n"), (" N ", " 1 "), (" 's", "'s")):  # fmt: skip
        text = text.replace(a, b)
    return text


def wikitext_docs(docs: list[dict]) -> list[dict]:
    return [{**doc, "detokenized": wikitext_detokenize(doc["page"])} for doc in docs]
