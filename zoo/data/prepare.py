"""``zoo data prepare``: every source of a data module tokenized once into token shards that training streams.

::

    source rows ── reader thread: PIECE_DOCUMENTS rows at a time ── encode_batch (all cores) ── doc EOS doc EOS …
        ── one raw token file per piece (uint16, or uint32 past 65,536 ids) ── committed: the file, then its stats

    DIR/
      manifest.json                        written last: the prepare is complete (tokenizer fingerprint, sources, …)
      prepare.json                         what is being prepared (a continued prepare must match it)
      tokenizer.json                       the tokenizer the shards were made with
      train/<source>/chunk-<piece>.bin     tokens of the piece's documents, an EOS after each (raw, no header)
      train/<source>/piece-<piece>.json    the piece's commit: rows read, documents, tokens, rows skipped by reason
      train/<source>/source.json           the source's totals (written when the source is complete)
      validation/<source>/…                the held-out slice, the same way

Pieces are fixed runs of source rows, so a prepare cut short (a kill, a full disk) continues after the last
committed piece and writes exactly the shards an uninterrupted prepare writes: a chunk file is renamed into place
complete, and a piece counts only once its stats file exists (written after it, also by rename); a chunk without
one is written again. A complete prepare (``manifest.json``) is reused as it is.

Tokenizing runs in ``tokenizers``' own thread pool (``encode_batch`` releases the GIL), on every core, while a
thread reads the next piece's rows.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import queue
import re
import shutil
import threading
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path

import numpy as np

from zoo.data.rows import REASONS

PIECE_DOCUMENTS = 4096  # source rows per piece (one chunk file): the unit a continued prepare resumes from
SPLITS = ("train", "validation")
MANIFEST, PLAN, TOKENIZER = "manifest.json", "prepare.json", "tokenizer.json"


class PrepareError(ValueError):
    """A prepare that cannot go on (a full disk, a folder holding another prepare); its message says what to do."""


def tokenizer_fingerprint(tokenizer) -> str:
    """sha256 of the tokenizer's JSON: two tokenizers with the same fingerprint give the same ids."""
    return hashlib.sha256(tokenizer.to_str().encode()).hexdigest()


def source_keys(datamodule) -> list[str]:
    """One stable key per training source (its folder name in the shards): for a :class:`zoo.data.Source` its
    settings without its weight (so weights may change between prepare and fit), else the source's label."""
    specs = getattr(datamodule, "source_specs", None)
    if specs is not None:
        return [source_key(spec) for spec in specs]
    return [_key(label, label) for label in datamodule.source_labels()]


def source_key(spec) -> str:
    """The key of one :class:`zoo.data.Source`: its label's tail and a hash of its settings but the weight."""
    return _key(spec.label, json.dumps({k: v for k, v in asdict(spec).items() if k != "weight"}, sort_keys=True))


def _key(label: str, identity: str) -> str:
    slug = re.sub(r"[^A-Za-z0-9]+", "-", label).strip("-")[-40:].strip("-") or "source"
    return f"{slug}-{hashlib.sha256(identity.encode()).hexdigest()[:8]}"


def prepare(datamodule, out: str | os.PathLike, *, progress: bool = True, piece_documents: int = PIECE_DOCUMENTS,
            threads: int | None = None) -> dict:  # fmt: skip
    """Tokenize every source of ``datamodule`` (a :class:`zoo.data.TextDataModule`) into token shards under ``out``
    and return the manifest; a complete prepare there is returned as it is, an interrupted one is continued.

    Args:
        datamodule: the run's data module (its sources, weights and tokenizer; a trained tokenizer is trained first).
        out: the folder of the shards (created).
        progress: show a progress bar with tokens/s.
        piece_documents: source rows per piece (chunk file).
        threads: tokenizer threads (``None``: every core).
    """
    out = Path(out)
    if (out / MANIFEST).is_file():
        return read_manifest(out)
    if threads is not None:  # tokenizers reads this once, when its thread pool starts
        os.environ["RAYON_NUM_THREADS"] = str(threads)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "true")
    from zoo.data.base import TextDataModule

    tokenizer = TextDataModule.load_tokenizer(datamodule)  # the run's own, also where it trains from shards later
    eos = datamodule.eos_id
    vocab = tokenizer.get_vocab_size()
    dtype = np.uint16 if vocab <= 1 << 16 else np.uint32
    keys, labels = source_keys(datamodule), datamodule.source_labels()
    streams = {split: datamodule.sources(split) for split in SPLITS}  # built once: each costs datasets' hashing
    weights = [w for _, w in streams["train"]]
    plan = {
        "tokenizer_fingerprint": tokenizer_fingerprint(tokenizer),
        "sources": keys,
        "data": datamodule.fingerprint(),
        "piece_documents": piece_documents,
    }
    out.mkdir(parents=True, exist_ok=True)
    _start(out, plan, tokenizer)
    bar = _bar(progress)
    sources = []
    try:
        for i, (key, label, weight) in enumerate(zip(keys, labels, weights)):
            entry = {"key": key, "label": label, "weight": weight}
            for split in SPLITS:
                dataset = streams[split][i][0]
                entry[split] = _prepare_source(dataset, out / split / key, tokenizer=tokenizer, eos=eos, dtype=dtype,
                                               piece_documents=piece_documents, bar=bar)  # fmt: skip
            sources.append(entry)
    except OSError as err:
        if err.errno in (errno.ENOSPC, errno.EDQUOT):
            raise PrepareError(
                f"the disk holding {out} is full ({err.strerror}): free space there or give another --out; run the "
                "same command again to continue where it stopped (the pieces written so far are kept, the one cut "
                "short is written again)"
            ) from err
        raise
    finally:
        if bar is not None:
            bar.close()
    from zoo import __version__

    manifest = {
        "format": 1,
        "zoo_version": __version__,
        "tokenizer_fingerprint": plan["tokenizer_fingerprint"],
        "tokenizer": _describe_tokenizer(datamodule.tokenizer_source),
        "vocab_size": vocab,
        "eos_id": eos,
        "eos_token": datamodule.tokenizer_source.eos_token,
        "dtype": np.dtype(dtype).name,
        "data": plan["data"],
        "sources": sources,
    }
    _write_json(out / MANIFEST, manifest)
    return manifest


def read_manifest(folder: str | os.PathLike) -> dict:
    return json.loads((Path(folder) / MANIFEST).read_text())


def _describe_tokenizer(source) -> dict:
    """The run's tokenizer setting, as the manifest records it (to compare a later run's with)."""
    return {"class": type(source).__name__, **{k: v for k, v in vars(source).items()
                                               if isinstance(v, (str, int, float, list)) and not k.startswith("_")}}


def _start(out: Path, plan: dict, tokenizer) -> None:
    """Record what is prepared in ``out``, or check that an interrupted prepare there prepared the same."""
    path = out / PLAN
    if path.is_file():
        before = json.loads(path.read_text())
        if before != plan:
            differs = [k for k in plan if before.get(k) != plan[k]]
            raise PrepareError(
                f"--out {out} holds an unfinished prepare of other data or another tokenizer ({', '.join(differs)} "
                f"differ): give another --out, or delete {out} to start this one there"
            )
        return
    if any(out.iterdir()):
        raise PrepareError(f"--out {out} is not empty and holds no prepare: give an empty or new folder")
    tokenizer.save(str(out / f"{TOKENIZER}.tmp"))
    os.replace(out / f"{TOKENIZER}.tmp", out / TOKENIZER)
    _write_json(path, plan)


def _prepare_source(dataset, folder: Path, *, tokenizer, eos: int, dtype, piece_documents: int, bar) -> dict:
    """One source of one split, continued after its last committed piece; its totals."""
    folder.mkdir(parents=True, exist_ok=True)
    if (folder / "source.json").is_file():
        return json.loads((folder / "source.json").read_text())
    pieces = _committed(folder)
    for stale in folder.iterdir():  # a chunk or temporary file whose piece was never committed: written again
        if not (stale.name.startswith("piece-") and stale.suffix == ".json") and _piece_of(stale) not in pieces:
            stale.unlink() if stale.is_file() else shutil.rmtree(stale)
    rows_done = sum(p["rows"] for p in pieces.values())
    piece = len(pieces)
    if rows_done:
        dataset = dataset.skip(rows_done)
    for rows in _read_ahead(_batches(dataset, piece_documents)):
        tokens, stats = _tokenize(rows, tokenizer=tokenizer, eos=eos, dtype=dtype)
        _write_piece(folder, piece, tokens, stats)
        piece += 1
        if bar is not None:
            bar.update(stats["tokens"])
    totals = _totals(folder)
    _write_json(folder / "source.json", totals)
    return totals


def _batches(dataset, size: int) -> Iterator[list[dict]]:
    rows = []
    for row in dataset:
        rows.append(row)
        if len(rows) == size:
            yield rows
            rows = []
    if rows:
        yield rows


def _read_ahead(batches: Iterator[list[dict]]) -> Iterator[list[dict]]:
    """``batches``, read one ahead in a thread (reading overlaps tokenizing); the reader's errors are re-raised."""
    q: queue.Queue = queue.Queue(maxsize=2)
    done = object()

    def read() -> None:
        try:
            for batch in batches:
                q.put(batch)
            q.put(done)
        except BaseException as err:  # handed to the consumer
            q.put(err)

    threading.Thread(target=read, daemon=True, name="zoo-prepare-reader").start()
    while True:
        item = q.get()
        if item is done:
            return
        if isinstance(item, BaseException):
            raise item
        yield item


def _tokenize(rows: list[dict], *, tokenizer, eos: int, dtype) -> tuple[np.ndarray, dict]:
    """The tokens of ``rows``' documents, an EOS after each (1-D), and the piece's counts."""
    texts, skipped = [], dict.fromkeys(REASONS, 0)
    for row in rows:
        text, reason = row.get("text"), row.get("reason")
        if text and not reason:
            texts.append(text)
        else:
            why = REASONS[reason - 1] if reason else ("none" if text is None else "empty")
            skipped[why] += 1
    encoded = tokenizer.encode_batch(texts, add_special_tokens=False) if texts else []
    ids = [e.ids for e in encoded]
    empty = sum(not x for x in ids)
    skipped["empty"] += empty
    lengths = np.fromiter((len(x) + 1 for x in ids if x), dtype=np.int64, count=len(ids) - empty)
    tokens = np.empty(int(lengths.sum()), dtype=dtype)
    ends = np.cumsum(lengths)
    for x, end in zip((x for x in ids if x), ends):
        tokens[end - len(x) - 1 : end - 1] = x
    tokens[ends - 1] = eos
    stats = {"rows": len(rows), "documents": len(lengths), "tokens": int(tokens.size),
             "skipped": {k: v for k, v in skipped.items() if v}}  # fmt: skip
    return tokens, stats


def _piece_of(path: Path) -> int | None:
    match = re.match(r"(?:chunk|piece)-(\d+)", path.name)
    return int(match.group(1)) if match else None


def _committed(folder: Path) -> dict[int, dict]:
    """The committed pieces 0, 1, … (up to the first gap)."""
    pieces = {}
    while (folder / f"piece-{len(pieces):06d}.json").is_file():
        pieces[len(pieces)] = json.loads((folder / f"piece-{len(pieces):06d}.json").read_text())
    return pieces


def _write_piece(folder: Path, piece: int, tokens: np.ndarray, stats: dict) -> None:
    """One chunk file (written under a temporary name, synced, renamed into place), then its commit."""
    if tokens.size:
        name = f"chunk-{piece:06d}.bin"
        tmp = folder / f"{name}.tmp"
        with open(tmp, "wb") as f:
            tokens.tofile(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, folder / name)
        stats = {**stats, "chunk": name}
    _write_json(folder / f"piece-{piece:06d}.json", stats)


def _totals(folder: Path) -> dict:
    pieces = list(_committed(folder).values())
    skipped: dict[str, int] = {}
    for p in pieces:
        for reason, n in p["skipped"].items():
            skipped[reason] = skipped.get(reason, 0) + n
    return {
        "folder": folder.parent.name + "/" + folder.name,
        "rows": sum(p["rows"] for p in pieces),
        "documents": sum(p["documents"] for p in pieces),
        "tokens": sum(p["tokens"] for p in pieces),
        "skipped": skipped,
        "chunks": [[p["chunk"], p["tokens"]] for p in pieces if "chunk" in p],  # [file, tokens] in stream order
    }


def _write_json(path: Path, value: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        json.dump(value, f, indent=1)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _bar(progress: bool):
    if not progress:
        return None
    from tqdm import tqdm

    return tqdm(unit="tok", unit_scale=True, desc="tokens", smoothing=0.1, mininterval=0.5)


__all__ = ["PrepareError", "prepare", "read_manifest", "source_key", "source_keys", "tokenizer_fingerprint"]
