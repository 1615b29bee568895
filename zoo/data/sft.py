"""Instruction data for supervised fine-tuning (SFT): prompt formats, prompt masking, padding or packing.

::

    source rows ─ SFTSource.example ─ format.pieces ─ tokenize each piece ─ truncate ─┬─ pad (one example a row)
    {"instruction", "input", "output"} or {"messages"}     prompt: labels −100         └─ pack (whole examples)

Each piece of an example (see :mod:`zoo.data.formats`) is tokenized on its own and the ids concatenated, so the
tokens after the prompt are the ones the model is asked to continue from when sampled with the same format.
Labels are ``-100`` on every token that is not trained (the prompt, the other roles of a chat, padding) and on
each example's first token, so no loss ever crosses from one example into the next. Batches carry
``document_ids`` (padding is ``-1``), and the objectives keep attention inside each example: a packed row is
several independent examples, and a bidirectional (masked-diffusion) model never attends to padding.
"""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Literal

import datasets
import torch

from zoo.data.base import TextDataModule
from zoo.data.formats import PromptFormat
from zoo.data.mixture import Source, check_weights, checked_text
from zoo.data.packing import PackedDataset, _PackerState, skip_counts
from zoo.data.rows import GOOD, SKIP, code

TRUNCATION = ("truncate", "drop")


@dataclass
class SFTSource(Source):
    """One instruction dataset: hub, local (``jsonl``, ``json``, ``parquet``) or embedded (``path: stdlib``,
    ``name: functions``). Everything of :class:`zoo.data.Source` applies (``val_documents`` counts examples);
    these say where the example's parts are.

    Args:
        instruction_field: column of the instruction (Alpaca: ``instruction``; SmallCoder-style: ``prompt``).
        input_field: column of the optional input/context (missing or empty = none).
        response_field: column of the answer (Alpaca: ``output``).
        messages_field: column of a conversation (a list of ``{"role", "content"}``), used when present; the
            ``chat`` format trains on its assistant turns.
    """

    instruction_field: str = "instruction"
    input_field: str = "input"
    response_field: str = "output"
    messages_field: str = "messages"

    def example(self, row: dict) -> tuple[dict | None, str | None]:
        """The row as an example ``{"instruction", "input", "response", "messages", ...row}`` and ``None``; or
        ``None`` and why the row is skipped (:data:`zoo.data.rows.REASONS`): no conversation, and no instruction
        or response that is a non-empty string."""
        if SKIP in row:
            return None, row[SKIP]
        messages = row.get(self.messages_field)
        if isinstance(messages, list) and messages:
            return {**row, "messages": messages, "instruction": None, "input": "", "response": None}, None
        if messages is not None and self.instruction_field not in row:  # a conversation that is none
            return None, "empty" if isinstance(messages, list) else "wrong_type"
        fields = {}
        for key, column in (("instruction", self.instruction_field), ("response", self.response_field)):
            fields[key], reason = checked_text(row, column)
            if reason is not None:
                return None, reason
        extra = row.get(self.input_field)
        fields["input"] = extra if isinstance(extra, str) else ""
        return {**row, **fields, "messages": None}, None


class SFTDataModule(TextDataModule):
    """Instruction examples in a prompt format, with the prompt masked from the loss.

    Args:
        sources: instruction datasets and their weights (weighted interleaving as :class:`zoo.data.Mixture`).
        format: how an example becomes text: :class:`zoo.data.Alpaca`, :class:`zoo.data.UserAssistant`,
            :class:`zoo.data.Chat` (multi-turn, loss on assistant turns), :class:`zoo.data.Template` (YAML).
        pack: put several whole examples in each ``seq_len`` row (as many as fit, in stream order; the rest of
            the row is padding); ``False``: one example a row, padded to the longest in the batch.
        truncation: an example longer than ``seq_len``: ``truncate`` keeps at most ``max_prompt_tokens`` of its
            prompt (the end of it, nearest the answer) and then the start of the rest up to ``seq_len`` (the
            answer's end and its EOS may be cut); ``drop`` skips it (counted with the bad rows).
        max_prompt_tokens: with ``truncate``, the most prompt tokens kept (default: half of ``seq_len``); the
            "prompt" is everything before the first trained token.
        **kwargs: the options every data module takes, as :class:`zoo.data.TextDataModule`: ``tokenizer`` (the
            tokenizer of the model being fine-tuned, e.g. :class:`zoo.data.CheckpointTokenizer` from a ``zoo fit``
            checkpoint, or :class:`zoo.data.PretrainedTokenizer`), ``seq_len`` (the longest example, padded, or
            row, packed, in tokens), ``batch_size``, ... ``shuffle_buffer`` counts examples, ``max_row_chars`` the
            example's rendered pieces together. ``document_mask`` is always on: examples never attend to each other.
    """

    columns = ("text", "train")

    def __init__(
        self,
        *,
        sources: list[SFTSource],
        format: PromptFormat,
        pack: bool = False,
        truncation: Literal["truncate", "drop"] = "truncate",
        max_prompt_tokens: int | None = None,
        **kwargs,
    ) -> None:
        super().__init__(document_mask=True, **kwargs)
        seq_len = self.seq_len
        check_weights(sources, what="instruction source")
        if truncation not in TRUNCATION:
            raise ValueError(f"data truncation={truncation!r} is unknown: choose one of {TRUNCATION}")
        max_prompt_tokens = seq_len // 2 if max_prompt_tokens is None else max_prompt_tokens
        if not 0 < max_prompt_tokens < seq_len:
            raise ValueError(
                f"data max_prompt_tokens={max_prompt_tokens} must be in [1, seq_len={seq_len}), leaving room for "
                "the answer"
            )
        self.source_specs = [s for s in sources if s.weight > 0]
        self.format, self.pack, self.truncation = format, pack, truncation
        self.max_prompt_tokens = max_prompt_tokens

    # ---- sources: rows → rendered pieces --------------------------------------------------------------------
    def sources(self, split: str) -> list[tuple[datasets.IterableDataset, float]]:
        pairs = []
        for spec in self.source_specs:
            rows = spec.rows(split)
            render = functools.partial(_render, spec=spec, format=self.format)
            pairs.append((rows.map(render, remove_columns=rows.column_names), spec.weight))
        return pairs

    def source_labels(self) -> list[str]:
        return [spec.label for spec in self.source_specs]

    def describe_sources(self) -> list[str]:
        return [f"{spec.label} (val_documents={spec.val_documents})" for spec in self.source_specs]

    def tokenizer_texts(self) -> Iterator[str]:
        for dataset, _ in self.sources("train"):
            for row in dataset.take(10_000):
                if row["text"]:
                    yield "".join(row["text"])

    def fingerprint(self) -> str:
        spec = json.dumps([asdict(s) for s in self.source_specs], sort_keys=True)
        return "sft-" + hashlib.sha256(spec.encode()).hexdigest()[:16]

    # ---- tokenize, truncate, pack ---------------------------------------------------------------------------
    def _stream(self, split: str) -> datasets.IterableDataset:
        tokenizer, eos_id = self.load_tokenizer(), self.eos_id
        seq_len, keep_prompt, drop = self.seq_len, self.max_prompt_tokens, self.truncation == "drop"

        def tokenize(batch: dict) -> dict:
            out, reasons = [], list(batch["reason"])
            for i, (texts, train) in enumerate(zip(batch["text"], batch["train"])):
                ids = None if texts is None else encode(texts, train, tokenizer=tokenizer, eos_id=eos_id)
                if ids is not None and len(ids) > seq_len and drop:
                    ids, reasons[i] = None, code("too_long")
                elif ids is not None and len(ids) > seq_len:
                    ids = truncate(ids, seq_len=seq_len, max_prompt_tokens=keep_prompt)
                if ids is not None and not any(t >= 0 for t in ids):  # nothing to train on
                    ids, reasons[i] = None, code("empty")
                out.append(ids)  # None: a bad row, skipped and counted (with its reason) by the packer
            return {"input_ids": out, "reason": reasons}

        return self.mixed_text(split).map(tokenize, batched=True, batch_size=64, remove_columns=["text", "train"])

    def packer(self, documents, *, train: bool, seed: int) -> PackedDataset:
        return PackedExamples(
            documents,
            seq_len=self.seq_len,
            eos_id=self.eos_id,
            pack=self.pack,
            shuffle_buffer=self.shuffle_buffer if train else 0,
            seed=seed,
            sources=len(self.source_specs),
        )

    @property
    def collate(self):
        return functools.partial(pad_collate, pad_id=self.eos_id)


def _render(row: dict, *, spec: SFTSource, format: PromptFormat) -> dict:
    """A source row as the texts of its pieces and their kind (0 prompt, 1 trained, 2 trained + EOS after), and
    ``reason`` (0, or the code of why the row is skipped)."""
    example, reason = spec.example(row)
    if example is None:
        return {"text": None, "train": None, "reason": code(reason)}
    try:
        pieces = format.pieces(example)
    except (ValueError, KeyError, TypeError):  # a malformed conversation or a field the template lacks
        return {"text": None, "train": None, "reason": code("malformed")}
    texts, kinds = [p.text for p in pieces], [int(p.train) + int(p.train and p.eos) for p in pieces]
    return {"text": texts, "train": kinds, "reason": GOOD}


def encode(texts: list[str], kinds: list[int], *, tokenizer, eos_id: int) -> list[int]:
    """Tokenize each piece on its own and concatenate. Returned ids are *signed*: a trained token is its id, a
    masked one ``-1 - id``. (One flat list of ints per example, so the packer's shuffle buffer and its saved
    state stay plain integer tensors; :func:`split_signed` recovers ids and labels.)"""
    ids: list[int] = []
    for text, kind in zip(texts, kinds):
        piece = tokenizer.encode(text, add_special_tokens=False).ids if text else []
        if kind == 2:
            piece = [*piece, eos_id]
        ids += piece if kind else [-1 - t for t in piece]
    return ids


def truncate(ids: list[int], *, seq_len: int, max_prompt_tokens: int) -> list[int]:
    """Keep the last ``max_prompt_tokens`` of the prompt (the untrained tokens before the first trained one),
    then cut the whole to ``seq_len`` from the end."""
    first = next((i for i, t in enumerate(ids) if t >= 0), len(ids))
    if first > max_prompt_tokens:
        ids = ids[first - max_prompt_tokens :]
    return ids[:seq_len]


def split_signed(signed: list[int]) -> tuple[list[int], list[int]]:
    """Token ids and labels (``-100`` where masked) from :func:`encode`'s signed ids."""
    ids = [t if t >= 0 else -1 - t for t in signed]
    labels = [t if t >= 0 else -100 for t in signed]
    return ids, labels


class PackedExamples(PackedDataset):
    """Identical to :class:`zoo.data.PackedDataset` except that examples stay whole: each row is one example
    (``pack=False``, no padding yet) or as many whole examples as fit in ``seq_len`` (``pack=True``, padded to
    ``seq_len``); rows carry ``labels`` with the prompt masked and ``document_ids`` (padding ``-1``). Each
    example's first label is ``-100``: under a causal objective it would be predicted from the previous example.

    Args:
        pack: several examples a row.
        documents, seq_len, eos_id, shuffle_buffer, seed, sources: as :class:`zoo.data.PackedDataset`; documents are the
            signed ids of :func:`encode`, at most ``seq_len`` long. ``eos_id`` pads rows.
    """

    def __init__(self, documents, *, seq_len: int, eos_id: int, pack: bool, shuffle_buffer: int = 0, seed: int = 0,
                 sources: int = 1):  # fmt: skip
        super().__init__(documents, seq_len=seq_len, eos_id=eos_id, shuffle_buffer=shuffle_buffer, seed=seed,
                         sources=sources)  # fmt: skip
        self.pack = pack

    def _rows(self, live: _PackerState) -> Iterator[dict]:
        for example in self._shuffled(live):
            assert len(example) <= self.seq_len, "examples are truncated before packing"
            if not self.pack:
                yield self._example_row(example, [0] * len(example), live)
                continue
            full = self._flush(live) if len(live.carry) + len(example) > self.seq_len else None
            n = live.carry_docs[-1] + 1 if live.carry_docs else 0
            live.carry.extend(example)  # before yielding: the saved state must hold every example taken
            live.carry_docs.extend([n] * len(example))
            if full is not None:
                yield full
        if live.carry:  # a finite (validation) stream: its last partial row
            yield self._flush(live)

    def _flush(self, live: _PackerState) -> dict:
        signed, docs = live.carry, live.carry_docs
        live.carry, live.carry_docs = [], []
        pad = self.seq_len - len(signed)
        return self._example_row(signed + [-1 - self.eos_id] * pad, docs + [-1] * pad, live)

    def _example_row(self, signed: list[int], docs: list[int], live: _PackerState) -> dict:
        ids, labels = split_signed(signed)
        for i in range(len(docs)):
            if i == 0 or docs[i] != docs[i - 1]:
                labels[i] = -100  # an example's first token: never a target across the boundary
        return {
            "input_ids": torch.tensor(ids, dtype=torch.long),
            "labels": torch.tensor(labels, dtype=torch.long),
            "document_ids": torch.tensor(docs, dtype=torch.long),
            **skip_counts(live.pop_skipped()),
        }


def pad_collate(rows: list[dict], *, pad_id: int) -> dict:
    """Stack rows, padding the shorter ones at the end (``pad_id`` inputs, ``-100`` labels, document ``-1``)."""
    length = max(len(r["input_ids"]) for r in rows)
    fill = {"input_ids": pad_id, "labels": -100, "document_ids": -1}
    batch = {
        key: torch.stack([torch.nn.functional.pad(r[key], (0, length - len(r[key])), value=value) for r in rows])
        for key, value in fill.items()
    }
    for key in ("skipped", "skipped_by"):
        batch[key] = torch.stack([r[key] for r in rows])
    return batch
