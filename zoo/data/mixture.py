"""``Mixture``: a weighted mixture of hub or local text datasets, streamed.

Every source, on the hub or on disk, goes through ``datasets.load_dataset(..., streaming=True)``, so a
recipe written against the hub runs unchanged on local copies of the same files::

    Source(path="HuggingFaceFW/fineweb-edu", name="sample-100BT", weight=0.55)       # hub (needs the network)
    Source(path="parquet", data_files="/data/fineweb-edu/*.parquet", weight=0.55)  # the same rows, offline
    Source(path="stdlib", name="code", weight=0.1)                                   # the embedded corpus

The validation stream is a fixed slice of each source (its first ``val_documents`` rows, never trained on),
or the source's own validation split when ``validation_split`` is given. A source whose length is known before
reading (local files, a hub split with recorded sizes) and that holds no more rows than that slice is refused
before training, naming its size and the fix.

Local files (``data_files`` with a ``json``/``text``/``csv``/``parquet`` builder) are read by
:func:`zoo.data.rows.local_rows`, still through ``datasets`` builders, so that a malformed line costs one row and
a damaged file the part after the damage (named in a warning).
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import string
from dataclasses import asdict, dataclass

import datasets

from zoo.data import hub
from zoo.data.base import TextDataModule
from zoo.data.rows import GOOD, SKIP, code, count_rows, local_rows, resolve

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
        check_weight(f"data source {self.label} weight", self.weight)
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

    def is_local(self) -> bool:
        """Whether the rows come from local files (read by :mod:`zoo.data.rows`) rather than the hub."""
        patterns = [self.data_files] if isinstance(self.data_files, str) else self.data_files or []
        local = self.path is None or self.path in LOCAL_BUILDERS.values()
        return bool(patterns) and local and not any("://" in p for p in patterns)

    def rows(self, split: str) -> datasets.IterableDataset:
        """The rows of the training (``split="train"``) or held-out (any other value) stream of this source; the
        training rows of a source too small for its validation slice are refused (:meth:`check_size`)."""
        if self.path == "stdlib":
            from zoo.data.stdlib import stdlib_dataset

            return stdlib_dataset(self.name or "code", split=split)
        if self.validation_split is not None:
            return self.load(self.split if split == "train" else self.validation_split)
        if split == "train":
            self.check_size()
        rows = self.load(self.split)
        return rows.skip(self.val_documents) if split == "train" else rows.take(self.val_documents)

    def known_rows(self) -> int | None:
        """The source's rows where that is cheap to know (``None`` otherwise), counted up to ``val_documents + 1``:
        local files by their lines (parquet: its footer), a hub split by the sizes its card records."""
        if not hasattr(self, "_known_rows"):
            self._known_rows = None
            if self.is_local():
                self._known_rows = count_rows(self.builder(), resolve(self.data_files), at_most=self.val_documents)
            elif self.data_files is None and self.path != "stdlib" and not hub.hub_offline() and hub.hub_reachable():
                try:  # the hub's recorded split sizes, when it has them (no rows are read)
                    splits = datasets.load_dataset_builder(self.path, self.name).info.splits
                    self._known_rows = splits[self.split].num_examples if splits and self.split in splits else None
                except Exception:  # offline, no card, no sizes: the run's stall check still stops an empty stream
                    self._known_rows = None
        return self._known_rows

    def check_size(self) -> None:
        """Refuse a source whose rows all go to its validation slice (the training stream would be empty)."""
        n = self.known_rows()
        given = self.data_files if isinstance(self.data_files, str) else repr(self.data_files)
        files = f"data_files={given}" if self.data_files is not None else f"path={self.path}"
        if n == 0 and self.is_local() and not resolve(self.data_files):
            raise ValueError(f"data source {files} matches no file: check the path (relative paths start from the "
                             "folder the command runs in)")  # fmt: skip
        if n == 0:
            where = f" in {', '.join(map(str, resolve(self.data_files)))}" if self.is_local() else ""
            raise ValueError(f"data source {files} is empty (no rows{where}): put documents in it, or remove this "
                             "source from data.sources")  # fmt: skip
        if n == 1:
            raise ValueError(
                f"data source {files} holds 1 row, which its validation slice (val_documents) takes, leaving none "
                "to train on: add documents to it, or remove this source from data.sources"
            )
        if n is not None and n <= self.val_documents:
            raise ValueError(
                f"data source {files} has {n} rows, but val_documents={self.val_documents} holds its first "
                f"{self.val_documents} out for validation, leaving none to train on: set val_documents below {n} "
                f"for this source (e.g. val_documents: {max(1, n // 10)})"
                + ("" if self.is_local() else ", or give a validation_split")
            )

    def load(self, split: str) -> datasets.IterableDataset:
        """The source's rows, streamed; raises a ``ValueError`` that says how to go offline if it is unreachable."""
        if self.is_local():
            if split != self.split:
                raise ValueError(
                    f"data source {self.label}: local data_files hold one split, so validation_split={split!r} "
                    "cannot be read from them: leave validation_split unset (val_documents holds rows out)"
                )
            return local_rows(self.builder(), resolve(self.data_files))
        if self.data_files is None and hub.hub_unreachable():
            raise ValueError(  # in seconds, rather than after the hub client's retries (offline mode: its own)
                f"data source path={self.path!r} name={self.name!r} split={split!r} is on the Hugging Face hub, "
                "which this machine cannot reach (no connection to huggingface.co). Download its files elsewhere "
                "and point the source at them, e.g. `path: parquet` and `data_files: /data/fineweb-edu/*.parquet`"
            )
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

    def text(self, row: dict) -> tuple[str | None, str | None]:
        """The document text of ``row`` and ``None``, or ``None`` and the reason the row is skipped (one of
        :data:`zoo.data.rows.REASONS`)."""
        if SKIP in row:  # a line the reader could not make a row of
            return None, row[SKIP]
        if self.template is None:
            return checked_text(row, self.text_field)
        for field in template_fields(self.template):  # an empty field may still leave text: the template decides
            text, reason = checked_text(row, field, need_str=False)
            if reason is not None and reason != "empty":
                return None, reason
        try:
            return checked_text({"text": self.template.format_map(row)}, "text")
        except (KeyError, IndexError, AttributeError, ValueError):  # e.g. {a[0]} on a value without items
            return None, "malformed"


@functools.cache
def template_fields(template: str) -> tuple[str, ...]:
    """The top-level columns a ``str.format`` template names (``{a.b}`` and ``{a[0]}`` name ``a``)."""
    names = (f for _, f, _, _ in string.Formatter().parse(template) if f)
    return tuple(dict.fromkeys(f.replace("[", ".").split(".")[0] for f in names))


def checked_text(row: dict, field: str, *, need_str: bool = True) -> tuple[str | None, str | None]:
    """``(row[field], None)`` when it is usable text, else ``(None, reason)``: ``missing``, ``none``,
    ``undecodable`` (bytes not UTF-8), ``wrong_type`` (not a string; any value when ``need_str`` is False),
    ``empty`` (blank)."""
    if field not in row:
        return None, "missing"
    value = row[field]
    if value is None:
        return None, "none"
    if isinstance(value, bytes):
        try:
            value = value.decode("utf-8")
        except UnicodeDecodeError:
            return None, "undecodable"
    if not isinstance(value, str):
        return (None, "wrong_type") if need_str else (value, None)
    return (value, None) if value.strip() else (None, "empty")


def text_row(row: dict, *, spec: Source) -> dict:
    """A source row as the pipeline's ``{"text", "reason"}`` (``reason``: 0, or the code of why it is skipped)."""
    text, reason = spec.text(row)
    return {"text": text, "reason": GOOD if reason is None else code(reason)}


def check_weight(name: str, weight: float) -> None:
    """A sampling weight must be a finite number ≥ 0: ``.nan`` would silently drop its source (every comparison
    with NaN is false) and ``.inf`` turn every probability into NaN. ``name`` says where it was given."""
    if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not math.isfinite(weight) or weight < 0:
        raise ValueError(f"{name}={weight!r} must be a finite number ≥ 0 (0 leaves the source out), e.g. 0.5")


def check_weights(sources, *, what: str) -> None:
    """A data module's ``sources`` must hold at least one source of positive weight."""
    if not sources:
        raise ValueError(f"data sources=[] is empty: list at least one {what}")
    if sum(s.weight for s in sources) <= 0:
        raise ValueError("data sources all have weight 0: give at least one a positive weight")


class Mixture(TextDataModule):
    """Weighted, streamed mixture of :class:`Source` s (hub or local), e.g. GPT-S-5M's 55/30/15 mix.

    Rows that are malformed, undecodable, or whose text is missing, ``None``, not a string or empty are skipped and
    counted per source and reason (``data/skipped_rows`` and ``data/skipped/<reason>`` in TensorBoard, and a
    summary at the end of the run).

    Args:
        sources: the mixture's sources with their weights.
        tokenizer_documents: documents per source a trained tokenizer learns from.
        shuffle_buffer: as :class:`zoo.data.TextDataModule`'s, with a larger default.
        prepared: train from the token shards ``python -m zoo data prepare --config <this config> --out DIR`` wrote
            (``DIR`` or its copy at ``s3://bucket/prefix``) instead of tokenizing on the fly: the sources' weights
            still apply (each source must be in the shards), the tokenizer must be the shards' own. See
            :mod:`zoo.data.prepared`.
        **kwargs: the options every data module takes (``tokenizer``, ``seq_len``, ``batch_size``, ...), as
            :class:`zoo.data.TextDataModule`.
    """

    def __init__(
        self,
        *,
        sources: list[Source],
        tokenizer_documents: int = 100_000,
        shuffle_buffer: int = 1000,
        prepared: str | None = None,
        **kwargs,
    ) -> None:
        super().__init__(shuffle_buffer=shuffle_buffer, **kwargs)
        check_weights(sources, what="source")
        self.source_specs = [s for s in sources if s.weight > 0]
        self.tokenizer_documents = tokenizer_documents
        self.prepared = prepared
        self._shards = None

    # ---- from prepared token shards (zoo.data.prepared) --------------------------------------------------------
    def shards(self):
        if self._shards is None:
            from zoo.data.prepared import PreparedShards

            self._shards = PreparedShards(self.prepared)
            self._shards.weights(self.source_specs)  # every source is there (named if not)
            self._shards.check_files()
        return self._shards

    def load_tokenizer(self):
        if self.prepared is not None and self.tokenizer is None:
            self.tokenizer = self.shards().tokenizer(self.tokenizer_source)
        return super().load_tokenizer()

    def _loader(self, split: str):
        if self.prepared is None:
            return super()._loader(split)
        trainer = self.trainer
        return self.shards().loader(
            self.shards().weights(self.source_specs), split=split, seq_len=self.seq_len, batch_size=self.batch_size,
            num_workers=self.num_workers, seed=self.seed, document_ids=self.document_mask, eos_id=self.eos_id,
            rank=trainer.global_rank if trainer is not None else 0,
            world_size=trainer.world_size if trainer is not None else 1,
            stall_timeout=self.stall_timeout, describe=self.describe_stream,
        )

    def sources(self, split: str) -> list[tuple[datasets.IterableDataset, float]]:
        pairs = []
        for spec in self.source_specs:
            rows = spec.rows(split)
            texts = rows.map(functools.partial(text_row, spec=spec), remove_columns=rows.column_names)
            pairs.append((texts, spec.weight))  # bad rows keep text None: the packer skips and counts them
        return pairs

    def source_labels(self) -> list[str]:
        return [spec.label for spec in self.source_specs]

    def describe_sources(self) -> list[str]:
        return [f"{spec.label} ({_size(spec)}, val_documents={spec.val_documents})" for spec in self.source_specs]

    def tokenizer_texts(self):
        for dataset, _ in self.sources("train"):
            for row in dataset.take(self.tokenizer_documents):
                if row["text"]:
                    yield row["text"]

    def fingerprint(self) -> str:
        spec = json.dumps([asdict(s) for s in self.source_specs], sort_keys=True)
        return "mixture-" + hashlib.sha256(f"{spec}-{self.tokenizer_documents}".encode()).hexdigest()[:16]


def _size(spec: Source) -> str:
    n = spec.known_rows() if spec.validation_split is None else None
    if n is None:
        return "rows unknown"
    return f"{n} rows" if n <= spec.val_documents else f"more than {spec.val_documents} rows"
