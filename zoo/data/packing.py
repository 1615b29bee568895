"""Packing: concatenate tokenized documents, separated by the end-of-text token, and cut fixed-length rows.

::

    doc₁ EOS doc₂ EOS doc₃ …  ──▶  [ seq_len ][ seq_len ][ seq_len ] …   (the tail of a document carries over)

Written here because packing with carry-over across documents is a streaming operation that neither
``datasets`` nor Lightning provides for an iterable source.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import torch
from torch.utils.data import IterableDataset


class PackedDataset(IterableDataset):
    """Rows ``{"input_ids": (seq_len,), "labels": (seq_len,)}`` packed from a stream of tokenized documents.

    Labels equal the inputs (the objective shifts or masks them); ``drop_last`` drops a final partial row.
    """

    def __init__(self, documents: Iterable[dict], *, seq_len: int, eos_id: int, drop_last: bool = True) -> None:
        super().__init__()
        if seq_len < 2:
            raise ValueError(f"seq_len={seq_len} must be ≥ 2")
        self.documents, self.seq_len, self.eos_id, self.drop_last = documents, seq_len, eos_id, drop_last

    def __iter__(self) -> Iterator[dict]:
        buffer: list[int] = []
        for doc in self.documents:
            buffer.extend(doc["input_ids"])
            buffer.append(self.eos_id)
            while len(buffer) >= self.seq_len:
                row, buffer = buffer[: self.seq_len], buffer[self.seq_len :]
                yield _row(row)
        if buffer and not self.drop_last:
            yield _row(buffer)


def _row(ids: list[int]) -> dict:
    t = torch.tensor(ids, dtype=torch.long)
    return {"input_ids": t, "labels": t.clone()}
