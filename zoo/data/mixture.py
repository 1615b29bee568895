"""``Mixture``: a weighted mixture of hub or local text datasets, streamed.

Every source, on the hub or on disk, goes through ``datasets.load_dataset(..., streaming=True)``, so a
recipe written against the hub runs unchanged on local copies of the same files::

    Source(path="HuggingFaceFW/fineweb-edu", name="sample-100BT", weight=0.55)       # hub (needs the network)
    Source(path="parquet", data_files="/data/fineweb-edu/*.parquet", weight=0.55)  # the same rows, offline
    Source(path="stdlib", name="code", weight=0.1)                                   # the embedded corpus

The validation stream is a fixed slice of each source (its first ``val_documents`` rows, never trained on),
or the source's own validation split when ``validation_split`` is given.
"""

from __future__ import annotations

import hashlib
import json
import string
from dataclasses import asdict, dataclass

import datasets

from zoo.data.base import TextDataModule
from zoo.data.tokenizer import TokenizerSource

LOCAL_BUILDERS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".txt": "text", ".csv": "csv"}


@dataclass
class Source:
    """One text source of a mixture.

    Args:
        path: a hub dataset id (``HuggingFaceFW/fineweb-edu``), or a ``datasets`` builder for local files
            (``json``, ``parquet``, ``text``, ``csv``); ``None`` infers the builder from ``data_files``;
            ``stdlib`` is the embedded corpus (:mod:`zoo.data.corpus`), whose ``name`` picks ``prose``, ``code``
            or (for instruction data) ``functions``, with its own held-out split.
        name: the dataset's configuration (hub subset), e.g. ``sample-100BT``.
        split: the split to train on.
        data_files: local files or globs (``/data/*.jsonl``); with a hub ``path``, a subset of its files.
        text_field: the column holding the document text.
        template: instead of ``text_field``, a ``str.format`` template over several columns, e.g.
            ``"{question}\\n{answer}"``.
        weight: sampling weight; weights are normalized over the mixture.
        validation_split: a split held out for validation (e.g. ``validation``); ``None`` holds out the
            first ``val_documents`` rows of ``split`` instead.
        val_documents: rows held out when ``validation_split`` is ``None``.
    """

    path: str | None = None
    name: str | None = None
    split: str = "train"
    data_files: str | list[str] | None = None
    text_field: str = "text"
    template: str | None = None
    weight: float = 1.0
    validation_split: str | None = None
    val_documents: int = 1000

    def __post_init__(self) -> None:
        if self.path is None and self.data_files is None:
            raise ValueError("data source has neither path nor data_files: give a hub id as path or local data_files")
        if self.weight < 0:
            raise ValueError(f"data source {self.label} weight={self.weight} must be ≥ 0")
        if self.val_documents < 1 and self.validation_split is None:
            raise ValueError(f"data source {self.label} val_documents={self.val_documents} must be ≥ 1")
        if self.template is not None:
            fields = [f for _, f, _, _ in string.Formatter().parse(self.template) if f]
            if not fields:
                raise ValueError(f"data source {self.label} template={self.template!r} names no field like {{text}}")

    @property
    def label(self) -> str:
        return self.path if self.path is not None else str(self.data_files)

    def builder(self) -> str:
        if self.path is not None:
            return self.path
        first = self.data_files if isinstance(self.data_files, str) else self.data_files[0]
        for suffix, builder in LOCAL_BUILDERS.items():
            if first.endswith(suffix) or first.endswith(suffix + ".gz") or first.endswith(suffix + ".zst"):
                return builder
        raise ValueError(
            f"data source data_files={self.data_files!r}: cannot tell the format from the extension; set path to "
            f"one of {sorted(set(LOCAL_BUILDERS.values()))}"
        )

    def rows(self, split: str) -> datasets.IterableDataset:
        """The rows of the training (``split="train"``) or held-out (any other value) stream of this source."""
        if self.path == "stdlib":
            from zoo.data.stdlib import stdlib_dataset

            return stdlib_dataset(self.name or "code", split=split)
        if self.validation_split is not None:
            return self.load(self.split if split == "train" else self.validation_split)
        rows = self.load(self.split)
        return rows.skip(self.val_documents) if split == "train" else rows.take(self.val_documents)

    def load(self, split: str) -> datasets.IterableDataset:
        """The source's rows, streamed; raises a ``ValueError`` that says how to go offline if it is unreachable."""
        try:
            return datasets.load_dataset(
                self.builder(), self.name, split=split, data_files=self.data_files, streaming=True
            )
        except ValueError:
            raise
        except Exception as err:  # the hub client raises many types (ConnectionError, HfHubHTTPError, …)
            raise ValueError(
                f"data source path={self.path!r} name={self.name!r} split={split!r} could not be opened ({err}). "
                "Without network access, download its files elsewhere and point the source at them, e.g. "
                "`path: parquet` and `data_files: /data/fineweb-edu/*.parquet`"
            ) from err

    def text(self, row: dict) -> str | None:
        """The document text of ``row``, or ``None`` for a bad row (missing field, None, empty, not a string)."""
        if self.template is not None:
            try:
                text = self.template.format_map(row)
            except (KeyError, IndexError, ValueError):
                return None
        else:
            text = row.get(self.text_field)
        if isinstance(text, bytes):
            try:
                text = text.decode("utf-8")
            except UnicodeDecodeError:
                return None
        return text if isinstance(text, str) and text.strip() else None


def check_weights(sources, *, what: str) -> None:
    """A data module's ``sources`` must hold at least one source of positive weight."""
    if not sources:
        raise ValueError(f"data sources=[] is empty: list at least one {what}")
    if sum(s.weight for s in sources) <= 0:
        raise ValueError("data sources all have weight 0: give at least one a positive weight")


class Mixture(TextDataModule):
    """Weighted, streamed mixture of :class:`Source` s (hub or local), e.g. GPT-S-5M's 55/30/15 mix.

    Rows whose text is missing, ``None``, empty, not a string or undecodable are skipped and counted
    (``data/skipped_rows`` in TensorBoard).

    Args:
        sources: the mixture's sources with their weights.
        tokenizer: see :class:`zoo.data.TextDataModule`.
        seq_len: tokens per row.
        batch_size: rows per batch on each device.
        tokenizer_documents: documents per source a trained tokenizer learns from.
        num_workers: see :class:`zoo.data.TextDataModule`.
        seed: see :class:`zoo.data.TextDataModule`.
        shuffle_buffer: see :class:`zoo.data.TextDataModule`.
        document_mask: see :class:`zoo.data.TextDataModule`.
    """

    def __init__(
        self,
        *,
        sources: list[Source],
        tokenizer: TokenizerSource,
        seq_len: int,
        batch_size: int,
        tokenizer_documents: int = 100_000,
        num_workers: int = 0,
        seed: int = 0,
        shuffle_buffer: int = 1000,
        document_mask: bool = False,
    ) -> None:
        super().__init__(
            tokenizer=tokenizer,
            seq_len=seq_len,
            batch_size=batch_size,
            num_workers=num_workers,
            seed=seed,
            shuffle_buffer=shuffle_buffer,
            document_mask=document_mask,
        )
        check_weights(sources, what="source")
        self.source_specs = [s for s in sources if s.weight > 0]
        self.tokenizer_documents = tokenizer_documents

    def sources(self, split: str) -> list[tuple[datasets.IterableDataset, float]]:
        pairs = []
        for spec in self.source_specs:
            rows = spec.rows(split)
            texts = rows.map(lambda row, spec=spec: {"text": spec.text(row)}, remove_columns=rows.column_names)
            pairs.append((texts, spec.weight))  # bad rows keep text None: the packer skips and counts them
        return pairs

    def tokenizer_texts(self):
        for dataset, _ in self.sources("train"):
            for row in dataset.take(self.tokenizer_documents):
                if row["text"]:
                    yield row["text"]

    def fingerprint(self) -> str:
        spec = json.dumps([asdict(s) for s in self.source_specs], sort_keys=True)
        return "mixture-" + hashlib.sha256(f"{spec}-{self.tokenizer_documents}".encode()).hexdigest()[:16]
