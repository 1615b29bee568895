"""Rows of local files that a bad line or a damaged file cannot stop, and the reasons a row is skipped.

::

    file₁ file₂ …  ──  one datasets builder per file ──  a row per line (JSON parsed here) ──  source.text(row)
    (one shard each)    (text builder for JSONL)          bad line: {SKIP: "malformed"}       bad: (None, reason)

Each bad row is skipped and counted with one of :data:`REASONS`; the count travels with the batches (see
:class:`zoo.data.PackedDataset`) to the data module, which logs ``data/skipped/<reason>`` and prints a summary.

Local JSON Lines are read with ``datasets``' ``text`` builder (one string per line, streamed) and each line is
parsed with :func:`json.loads` here: the ``json`` builder parses whole blocks with pyarrow, so one malformed line,
or a field whose type changes from one row to the next, stops the run (or the whole file) instead of one row.
The builder decodes the file as Latin-1, which maps every byte to one character (so no byte can fail the whole
file, and every character reaches pyarrow); each line's bytes are then decoded as UTF-8 here, so undecodable
bytes cost their own line only. Each file is its own shard, read by its builder inside a generator that catches
a damaged file (a truncated gzip, a parquet file whose row group or footer is unreadable): the rows read before
the damage are used and a warning names the file, the rows read and what was lost.
"""

from __future__ import annotations

import json
import warnings
import zlib

import datasets
import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
from datasets.data_files import DataFilesList

REASONS = ("malformed", "undecodable", "missing", "none", "wrong_type", "empty", "too_long")
"""Why a row was skipped: ``malformed`` (not JSON, not an object, a conversation or template it cannot fill),
``undecodable`` (bytes that are not UTF-8), ``missing`` (no such field), ``none`` (the field is null),
``wrong_type`` (not a string), ``empty`` (blank text, or no tokens), ``too_long`` (SFT ``truncation: drop``)."""
GOOD = 0  # a row's reason code when it is used; a skipped row's is REASONS.index(reason) + 1
SKIP = "_zoo_skip"  # the column of a row a reader could not make (its value: the reason)
DAMAGE = (EOFError, OSError, zlib.error, pa.ArrowException)  # a file ends early or is corrupt past some point


def code(reason: str) -> int:
    """The reason code carried by a skipped row (``0``: a good row)."""
    return REASONS.index(reason) + 1


def resolve(patterns: str | list[str]) -> list[str]:
    """Local files matching ``patterns`` (paths or globs), resolved by ``datasets`` as ``load_dataset`` would."""
    patterns = [patterns] if isinstance(patterns, str) else list(patterns)
    try:
        return list(DataFilesList.from_patterns(patterns))
    except FileNotFoundError as err:
        raise ValueError(f"data source data_files={patterns!r} matches no file ({err}): check the path") from err


def local_rows(builder: str, files: list[str]) -> datasets.IterableDataset:
    """The rows of local ``files`` with ``builder`` (``json``, ``text``, ``csv``, ``parquet``), streamed, one shard
    a file (the shard order is what ``datasets`` shuffles and splits across ranks and workers, as with
    ``load_dataset``). A bad JSON line is a row ``{SKIP: reason}``."""
    return datasets.IterableDataset.from_generator(_read, gen_kwargs={"files": files, "builder": builder})


def _read(files: list[str], builder: str):
    # Each file's dataset is read with .iter(), not a for loop: in a DataLoader worker, iterating a datasets
    # IterableDataset splits its shards across the workers again, and this generator already holds this worker's.
    for path in files:
        n = 0
        try:
            if builder in ("json", "text"):  # line by line (module docstring), decoded (and parsed) here
                # 64 KiB chunks (not 10 MB): a truncated compressed file loses at most its last chunk's lines
                lines = datasets.load_dataset("text", data_files=path, split="train", streaming=True,
                                              encoding="latin-1", chunksize=1 << 16)  # fmt: skip
                for batch in lines.iter(batch_size=128):
                    for line in batch["text"]:
                        n += 1
                        if builder == "text":
                            yield decode_line(line)
                        elif line.strip():  # a blank line is no row (as for the json builder)
                            yield parse_line(line)
            elif builder == "parquet":  # pyarrow, a row group at a time: datasets' parquet builder reads ahead, so
                # a corrupt row group would fail the rows before it too
                parquet = pq.ParquetFile(path)
                for group in range(parquet.num_row_groups):
                    for row in parquet.read_row_group(group).to_pylist():
                        n += 1
                        yield row
            else:
                rows = datasets.load_dataset(builder, data_files=path, split="train", streaming=True)
                for batch in rows.iter(batch_size=128):
                    for values in zip(*batch.values()):
                        n += 1
                        yield dict(zip(batch, values))
        except DAMAGE as err:
            warnings.warn(
                f"data file {path} is damaged after {n} {'lines' if builder in ('json', 'text') else 'rows'} "
                f"({type(err).__name__}: {str(err)[:200]}): the rows before are used, the rest of the file is lost",
                RuntimeWarning,
                stacklevel=2,
            )


def decode_line(line: str) -> dict:
    """A text file's row ``{"text"}`` from a line read as Latin-1; ``{SKIP: "undecodable"}`` if not UTF-8."""
    try:
        return {"text": line.encode("latin-1").decode("utf-8")}
    except UnicodeDecodeError:
        return {SKIP: "undecodable"}


def parse_line(line: str) -> dict:
    """One JSON Lines row from a line read as Latin-1; ``{SKIP: reason}`` for a line that is not UTF-8 or not a
    JSON object."""
    decoded = decode_line(line)
    if SKIP in decoded:
        return decoded
    try:
        row = json.loads(decoded["text"])
    except ValueError:
        return {SKIP: "malformed"}
    return row if isinstance(row, dict) else {SKIP: "malformed"}


def count_rows(builder: str, files: list[str], *, at_most: int) -> int | None:
    """Rows in local ``files``, counted only up to ``at_most + 1`` (enough to compare with a validation slice):
    parquet from its footer, line formats by their non-blank lines (an upper bound for CSV, whose header and
    quoted line breaks are lines too). ``None`` when a file is damaged (the reader names it)."""
    total = 0
    for path in files:
        try:
            if builder == "parquet":
                total += pq.ParquetFile(path).metadata.num_rows
            else:
                with fsspec.open(path, "rb", compression="infer") as f:
                    for line in f:
                        total += bool(line.strip())
                        if total > at_most:
                            break
        except DAMAGE:
            return None
        if total > at_most:
            break
    return total
