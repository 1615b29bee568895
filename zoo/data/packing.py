"""Packing: concatenate tokenized documents, separated by the end-of-text token, and cut fixed-length rows.

::

    doc₁ EOS doc₂ EOS doc₃ …  ──▶  [ seq_len ][ seq_len ][ seq_len ] …   (the tail of a document carries over)

Written here because packing with carry-over across documents is a streaming operation that neither
``datasets`` nor Lightning provides for an iterable source, and because exact resumption needs the packer's
own state (the carried-over tokens, the shuffle buffer and its random state) saved next to the position of
the ``datasets`` stream.

Documents are shuffled here, in a buffer of ``shuffle_buffer`` documents, rather than by ``datasets``'
``shuffle``: ``datasets`` drops its shuffle buffer on resume (its documentation says so), which would skip
documents after a restart; this buffer is part of the saved state.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Iterator

import torch
from torch.utils.data import IterableDataset, get_worker_info

from zoo.data.rows import REASONS, code

MAX_BAD_IN_A_ROW = 10_000


class PackedDataset(IterableDataset):
    """Rows ``{"input_ids": (seq_len,), "labels": (seq_len,), "skipped": (), "skipped_by": (S, R)}`` packed from a
    stream of documents.

    Each document is a dict with ``input_ids`` (a list of ints) or ``None`` for a bad row, which is skipped; it
    may say which of ``sources`` it came from (``source``, default 0) and, when bad, why (``reason``, a code of
    :data:`zoo.data.rows.REASONS`; default ``empty``). ``skipped`` on a row counts the bad rows met since the
    previous row, ``skipped_by`` the same per source and reason (``S = sources``, ``R = len(REASONS)``), so the
    sums over batches are the bad rows seen. Labels equal the inputs (the objective shifts or masks them).

    The dataset is resumable: :meth:`state_dict` holds the stream's position (when the stream, like a
    ``datasets.IterableDataset``, has ``state_dict``), the carried-over tokens, the shuffle buffer and the
    random state, so :meth:`load_state_dict` continues with exactly the next row.

    Args:
        documents: the tokenized documents.
        seq_len: tokens per row.
        eos_id: token appended after every document.
        drop_last: drop a final partial row (finite streams).
        shuffle_buffer: documents held for shuffling (0: keep stream order).
        seed: shuffle seed; each DataLoader worker adds its id.
        document_ids: also give each row ``document_ids`` ``(seq_len,)``, the index of the document each token
            belongs to (counted from the row's first token), so the objective can keep attention inside
            documents. The EOS that separates two documents opens the second (it plays the part of a BOS): the
            first token of a document is predicted from that EOS alone, and each document still learns to end.
        sources: how many sources the documents come from (the first dimension of ``skipped_by``).
    """

    def __init__(
        self,
        documents: Iterable[dict],
        *,
        seq_len: int,
        eos_id: int,
        drop_last: bool = True,
        shuffle_buffer: int = 0,
        seed: int = 0,
        document_ids: bool = False,
        sources: int = 1,
    ) -> None:
        super().__init__()
        if seq_len < 2:
            raise ValueError(f"seq_len={seq_len} must be ≥ 2")
        if shuffle_buffer < 0:
            raise ValueError(f"shuffle_buffer={shuffle_buffer} must be ≥ 0")
        self.documents, self.seq_len, self.eos_id, self.drop_last = documents, seq_len, eos_id, drop_last
        self.shuffle_buffer, self.seed, self.document_ids, self.sources = shuffle_buffer, seed, document_ids, sources
        self._state: dict | None = None  # loaded, applied when iteration starts
        self._live: _PackerState | None = None

    def state_dict(self) -> dict:
        if self._live is None:
            return dict(self._state) if self._state is not None else {}
        live = self._live
        stream = self.documents.state_dict() if hasattr(self.documents, "state_dict") else None
        # Token lists are stored as int64 tensors: pickling millions of Python ints makes checkpoints slow to load.
        return {
            "stream": stream,
            "carry": torch.tensor(live.carry, dtype=torch.long),
            "carry_docs": torch.tensor(live.carry_docs, dtype=torch.long),
            "buffer": torch.tensor([t for doc in live.buffer for t in doc], dtype=torch.long),
            "buffer_lengths": torch.tensor([len(doc) for doc in live.buffer], dtype=torch.long),
            "rng": live.rng.getstate(),
            "skipped": live.skipped,
            "skipped_by": torch.tensor(live.skipped_by, dtype=torch.long),
        }

    def load_state_dict(self, state: dict) -> None:
        self._state = dict(state) if state else None

    def __iter__(self) -> Iterator[dict]:
        worker = get_worker_info()
        live = _PackerState(random.Random(self.seed + (worker.id if worker is not None else 0)), self.sources)
        state, self._state = self._state, None
        if state:
            if state.get("stream") is not None:
                self.documents.load_state_dict(state["stream"])
            live.carry, live.skipped = torch.as_tensor(state["carry"]).tolist(), state["skipped"]
            live.carry_docs = torch.as_tensor(state.get("carry_docs", [])).tolist()
            if "skipped_by" in state:
                live.skipped_by = torch.as_tensor(state["skipped_by"]).tolist()
            if "buffer_lengths" in state:
                flat = torch.as_tensor(state["buffer"]).tolist()
                bounds = [0, *torch.as_tensor(state["buffer_lengths"]).cumsum(0).tolist()]
                live.buffer = [flat[a:b] for a, b in zip(bounds, bounds[1:])]
            else:  # states written as lists of documents
                live.buffer = [list(doc) for doc in state["buffer"]]
            live.rng.setstate(_as_rng_state(state["rng"]))
        self._live = live
        yield from self._rows(live)

    def _rows(self, live: _PackerState) -> Iterator[dict]:
        """Concatenate the documents with EOS after each and cut ``seq_len`` rows (the tail carries over)."""
        for doc in self._shuffled(live):
            live.carry.extend(doc)
            live.carry.append(self.eos_id)
            if self.document_ids:  # the document's tokens, then its EOS, which belongs to the next document
                n = live.carry_docs[-1] if live.carry_docs else 0
                live.carry_docs.extend([n] * len(doc))
                live.carry_docs.append(n + 1)
            while len(live.carry) >= self.seq_len:
                yield self._emit(live, self.seq_len)
        if live.carry and not self.drop_last:
            yield self._emit(live, len(live.carry))

    def _emit(self, live: _PackerState, n: int) -> dict:
        row, live.carry = live.carry[:n], live.carry[n:]
        out = _row(row, live.pop_skipped())
        if self.document_ids:
            docs, live.carry_docs = live.carry_docs[:n], live.carry_docs[n:]
            out["document_ids"] = torch.tensor(docs, dtype=torch.long) - docs[0]
        return out

    def _shuffled(self, live: _PackerState) -> Iterator[list[int]]:
        bad_in_a_row, why = 0, [0] * len(REASONS)
        for doc in self.documents:
            ids = doc.get("input_ids")
            if not ids:
                reason = (doc.get("reason") or code("empty")) - 1
                live.skipped += 1
                live.skipped_by[doc.get("source") or 0][reason] += 1
                bad_in_a_row, why[reason] = bad_in_a_row + 1, why[reason] + 1
                if bad_in_a_row == MAX_BAD_IN_A_ROW:  # a misconfigured source, not a few bad rows: say so
                    reasons = ", ".join(f"{name} {n}" for name, n in zip(REASONS, why) if n)
                    raise ValueError(
                        f"the last {MAX_BAD_IN_A_ROW} rows of the data stream were all unusable ({reasons}): check "
                        "each source's fields (text_field / template; for instruction data instruction_field / "
                        "response_field / messages_field) against its columns"
                    )
                continue
            bad_in_a_row, why = 0, [0] * len(REASONS)
            if self.shuffle_buffer == 0:
                yield ids
                continue
            live.buffer.append(ids)
            if len(live.buffer) >= self.shuffle_buffer:  # swap a random document out, as a reservoir would
                i = live.rng.randrange(len(live.buffer))
                live.buffer[i], live.buffer[-1] = live.buffer[-1], live.buffer[i]
                yield live.buffer.pop()
        live.rng.shuffle(live.buffer)
        while live.buffer:
            yield live.buffer.pop()


class _PackerState:
    def __init__(self, rng: random.Random, sources: int = 1) -> None:
        self.rng = rng
        self.carry: list[int] = []
        self.carry_docs: list[int] = []  # with document_ids: the document of each carried token
        self.buffer: list[list[int]] = []
        self.skipped = 0
        self.skipped_by = [[0] * len(REASONS) for _ in range(sources)]  # (S, R), since the previous row

    def pop_skipped(self) -> tuple[int, list[list[int]]]:
        """The bad rows met since the previous row (in all, and per source and reason); the counts restart."""
        counts = (self.skipped, self.skipped_by)
        self.skipped, self.skipped_by = 0, [[0] * len(REASONS) for _ in self.skipped_by]
        return counts


def _as_rng_state(state) -> tuple:
    # random.Random.getstate() is (version, tuple, gauss); a checkpoint round trip may turn tuples into lists.
    version, internal, gauss = state
    return version, tuple(internal), gauss


def _row(ids: list[int], skipped: tuple[int, list[list[int]]]) -> dict:
    t = torch.tensor(ids, dtype=torch.long)
    return {"input_ids": t, "labels": t.clone(), **skip_counts(skipped)}


def skip_counts(skipped: tuple[int, list[list[int]]]) -> dict:
    """A row's ``skipped`` ``()`` and ``skipped_by`` ``(S, R)`` tensors from :meth:`_PackerState.pop_skipped`."""
    total, by = skipped
    return {"skipped": torch.tensor(total, dtype=torch.long), "skipped_by": torch.tensor(by, dtype=torch.long)}
