"""The embedded default data module: prose and code from the Python standard library (see :mod:`zoo.data.corpus`)."""

from __future__ import annotations

import sys

import datasets

from zoo.data.base import TextDataModule
from zoo.data.corpus import SOURCES, is_validation, stdlib_documents, stdlib_functions, stdlib_shards
from zoo.data.mixture import check_weight

_STRING = datasets.Value("string")
FEATURES = datasets.Features({"id": _STRING, "text": _STRING})
INSTRUCTION_FEATURES = datasets.Features(
    {"id": _STRING, "instruction": _STRING, "input": _STRING, "output": _STRING}
)


def stdlib_dataset(
    kind: str, *, split: str, val_fraction: float = 0.02, limit_files: int | None = None
) -> datasets.IterableDataset:
    """One embedded source as a streamed ``datasets.IterableDataset``: ``prose`` or ``code`` (rows ``{"id",
    "text"}``) or the instruction set ``functions`` (rows ``{"id", "instruction", "input", "output"}``).
    ``split="train"`` gives the documents not held out; any other split the held-out ``val_fraction``, by a hash
    of each document's id (the same on every machine). ``functions`` examples carry their file's path as id, as
    ``code`` documents do, so they are held out with the very files the ``code`` source holds out."""
    held_out = split != "train"
    shards = stdlib_shards(kind, limit_files)  # validates kind
    if kind in SOURCES:
        generator, features = stdlib_documents, FEATURES
        kwargs = {"kind": kind, "shards": shards}
    else:
        generator, features = stdlib_functions, INSTRUCTION_FEATURES
        kwargs = {"shards": shards}
    dataset = datasets.IterableDataset.from_generator(
        generator, gen_kwargs=kwargs, features=features  # declared, so datasets never reads ahead to infer them
    )
    return dataset.filter(lambda row: is_validation(row["id"], val_fraction) == held_out)


class StdlibCorpus(TextDataModule):
    """Weighted mixture of the stdlib's English documentation (``prose``) and its source code (``code``).

    A deterministic ``val_fraction`` of documents (by a hash of their path) is held out for validation.

    Args:
        prose_weight: sampling weight of the documentation source.
        code_weight: sampling weight of the source-code source.
        val_fraction: share of documents held out for validation.
        limit_files: read only the first N stdlib files (small corpora for tests).
        **kwargs: the options every data module takes (``tokenizer``, ``seq_len``, ``batch_size``, ...), as
            :class:`zoo.data.TextDataModule`.
    """

    def __init__(
        self,
        *,
        prose_weight: float = 0.5,
        code_weight: float = 0.5,
        val_fraction: float = 0.02,
        limit_files: int | None = None,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        for name, weight in (("prose_weight", prose_weight), ("code_weight", code_weight)):
            check_weight(f"data {name}", weight)
        if prose_weight + code_weight <= 0:
            raise ValueError("data prose_weight and code_weight are both 0: give at least one a positive weight")
        if not 0 < val_fraction < 1:
            raise ValueError(f"data val_fraction={val_fraction} must be in (0, 1), e.g. 0.02")
        if limit_files is not None and limit_files < 1:
            raise ValueError(f"data limit_files={limit_files} must be ≥ 1 or null (all files)")
        self.weights = {"prose": prose_weight, "code": code_weight}
        self.val_fraction, self.limit_files = val_fraction, limit_files

    def sources(self, split: str) -> list[tuple[datasets.IterableDataset, float]]:
        return [
            (stdlib_dataset(kind, split=split, val_fraction=self.val_fraction, limit_files=self.limit_files), weight)
            for kind, weight in self.weights.items()
            if weight > 0
        ]

    def source_labels(self) -> list[str]:
        return [f"stdlib {kind}" for kind, weight in self.weights.items() if weight > 0]

    def fingerprint(self) -> str:
        return f"stdlib-py{sys.version_info.major}.{sys.version_info.minor}-{self.limit_files}-{self.val_fraction}"
