"""Training from token shards written by ``python -m zoo data prepare`` (see :mod:`zoo.data.prepare`).

::

    DIR or s3://bucket/DIR ── each source: its chunk files memory-mapped, one token stream (docs, EOS between)
        ── rows: seq_len-token windows of the stream, in a shuffled order per source and epoch
        ── reader slot s of S = ranks × workers takes every S-th row of that order (disjoint, by construction)
        ── each batch row from the source furthest below its weight ── ResumableDataLoader (batches as they are)
        ── {"input_ids": (B, T), "labels": (B, T)[, "document_ids": (B, T)]}

Why not litdata, Lightning's own streaming library, which was tried first and measured on these shards: its
``StreamingDataLoader`` over a weighted ``CombinedStreamingDataset`` does not resume exactly with 2 DataLoader
workers (litdata 0.2.76, 32-token rows, batch 4: a state saved after 2, 3, 4, 8 or 10 batches resumed with other
rows, some of them read twice; after 5, 6 or 7 it resumed exactly; with 0 or 1 worker always exactly), and its
chunk downloads (obstore) refuse an S3-compatible endpoint on plain http (MinIO on a private network, a test server
on loopback). Its read speed was not the problem (24M tokens/s from one worker, 128 × 512 rows). What is done
instead is what nanoGPT and OLMo-core do: raw uint16/uint32 token files, memory-mapped, with a sampler whose whole
position is a few integers per reader (rows taken from each source), saved in every checkpoint through
:class:`zoo.data.loader.ResumableDataLoader` (which also serves again the batch Lightning fetched ahead, and gathers
every rank's position under DDP).

Weights hold at token level up to one row at any point of the stream: every row is ``seq_len`` tokens of one
source, and the next row comes from the source whose share so far is furthest below its weight (a deterministic
interleave; the order inside each source is shuffled per epoch). ``document_ids`` follow
:class:`zoo.data.PackedDataset` (the EOS opens the next document), counted from the EOS tokens of each row.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import torch
from tokenizers import Tokenizer

from zoo.data.loader import ResumableDataLoader
from zoo.data.prepare import MANIFEST, TOKENIZER, read_manifest, source_key, tokenizer_fingerprint
from zoo.data.tokenizer import TrainedBPE, default_cache_dir


class PreparedShards:
    """A prepared folder (local or ``s3://``): its manifest, tokenizer and the loaders over its shards.

    Args:
        path: the ``--out`` folder of ``zoo data prepare``, or its copy in object storage (``s3://bucket/prefix``;
            credentials and endpoint as boto3 reads them, e.g. ``AWS_ENDPOINT_URL`` for an S3-compatible store).
    """

    def __init__(self, path: str) -> None:
        self.path = str(path).rstrip("/")
        self.remote = "://" in self.path
        try:
            self.manifest = json.loads(self._read(MANIFEST))
        except FileNotFoundError:
            raise ValueError(
                f"data.prepared={self.path!r} holds no {MANIFEST}: it is not a finished `python -m zoo data prepare "
                "--out` folder (an interrupted prepare finishes when the same command is run again)"
            ) from None
        self.by_key = {s["key"]: s for s in self.manifest["sources"]}

    # ---- reading the folder ----------------------------------------------------------------------------------
    def _read(self, name: str) -> str:
        if not self.remote:
            return (Path(self.path) / name).read_text()
        bucket, key = self._s3_split(f"{self.path}/{name}")
        try:
            return _s3().get_object(Bucket=bucket, Key=key)["Body"].read().decode()
        except _s3().exceptions.NoSuchKey:
            raise FileNotFoundError(name) from None

    @staticmethod
    def _s3_split(url: str) -> tuple[str, str]:
        scheme, _, rest = url.partition("://")
        if scheme != "s3":
            raise ValueError(f"data.prepared={url!r}: only local folders and s3:// URLs are read")
        bucket, _, key = rest.partition("/")
        return bucket, key

    def url(self, split: str, key: str) -> str:
        return f"{self.path}/{split}/{key}"

    def check_files(self) -> None:
        """Every chunk the manifest lists is there with its size; else the chunk is named with its source."""
        for source in self.manifest["sources"]:
            for split in ("train", "validation"):
                present = self._sizes(split, source["key"])
                for name, tokens in source[split]["chunks"]:
                    size = tokens * np.dtype(self.manifest["dtype"]).itemsize
                    if present.get(name) != size:
                        what = "missing" if name not in present else f"{present[name]} bytes, not {size}"
                        raise ValueError(
                            f"data.prepared={self.path!r}: shard {split}/{source['key']}/{name} of source "
                            f"{source['label']} is {what} (damaged or partly copied): copy the folder again, or "
                            "prepare again with `python -m zoo data prepare`"
                        )

    def _sizes(self, split: str, key: str) -> dict[str, int]:
        if not self.remote:
            folder = Path(self.path) / split / key
            return {p.name: p.stat().st_size for p in folder.glob("chunk-*.bin")} if folder.is_dir() else {}
        bucket, prefix = self._s3_split(self.url(split, key) + "/")
        sizes = {}
        for page in _s3().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            for obj in page.get("Contents", []):
                sizes[obj["Key"].rsplit("/", 1)[-1]] = obj["Size"]
        return sizes

    # ---- the run's tokenizer against the shards' ----------------------------------------------------------------
    def tokenizer(self, source) -> Tokenizer:
        """The shards' tokenizer, once the run's (``source``, a :class:`zoo.data.TokenizerSource`) is known to be
        the same; else a ``ValueError`` naming both fingerprints and the fix."""
        shards = Tokenizer.from_str(self._read(TOKENIZER))
        theirs = self.manifest["tokenizer_fingerprint"]
        if isinstance(source, TrainedBPE):  # trained on the corpus at prepare time: the settings must agree
            recorded = self.manifest["tokenizer"]
            mine = {"vocab_size": source.vocab_size, "min_frequency": source.min_frequency,
                    "special_tokens": list(source.special_tokens)}  # fmt: skip
            if recorded.get("class") != "TrainedBPE" or any(recorded.get(k) != v for k, v in mine.items()):
                self._refuse(f"a TrainedBPE with {mine}", f"{recorded}")
            return shards
        ours = tokenizer_fingerprint(source.load(lambda: iter(()), "prepared"))
        if ours != theirs:
            self._refuse(f"tokenizer sha256 {ours[:16]}", f"sha256 {theirs[:16]}")
        return shards

    def _refuse(self, ours: str, theirs: str) -> None:
        raise ValueError(
            f"data.prepared={self.path!r} was tokenized with another tokenizer ({theirs}) than data.tokenizer gives "
            f"({ours}): prepare this config again (`python -m zoo data prepare --config … --out NEW_DIR`), or set "
            f"data.tokenizer to the shards' own ({self.path}/{TOKENIZER}, as a zoo.data.PretrainedTokenizer)"
        )

    def weights(self, specs) -> list[tuple[str, float]]:
        """``(key, weight)`` of each of the run's sources (:class:`zoo.data.Source`), each found in the shards."""
        pairs = []
        for spec in specs:
            key = source_key(spec)
            if key not in self.by_key:
                held = ", ".join(s["label"] for s in self.manifest["sources"])
                raise ValueError(
                    f"data source {spec.label} (weight {spec.weight}) is not in data.prepared={self.path!r}, which "
                    f"holds {held}: prepare this config again, or give that source weight 0"
                )
            if self.by_key[key]["train"]["tokens"] == 0:
                skipped = self.by_key[key]["train"]["skipped"]
                raise ValueError(f"data source {spec.label} has no tokens in data.prepared={self.path!r} (all its "
                                 f"rows were skipped: {skipped}): check its fields")  # fmt: skip
            pairs.append((key, spec.weight))
        return pairs

    # ---- loaders -----------------------------------------------------------------------------------------------
    def chunk_path(self, split: str, key: str, name: str) -> Path:
        """A chunk file on this machine: the folder's own, or (``s3://``) its copy in ``$ZOO_CACHE/prepared``,
        downloaded on first use (under a temporary name, renamed when complete and of the manifest's size)."""
        if not self.remote:
            return Path(self.path) / split / key / name
        local = default_cache_dir() / "prepared" / hashlib.sha256(self.path.encode()).hexdigest()[:16] / split / key
        path = local / name
        if not path.is_file():
            local.mkdir(parents=True, exist_ok=True)
            bucket, remote = self._s3_split(self.url(split, key) + "/" + name)
            tmp = path.with_name(f"{name}.{os.getpid()}.tmp")
            _s3().download_file(bucket, remote, str(tmp))
            os.replace(tmp, path)
        return path

    def loader(self, pairs: list[tuple[str, float]], *, split: str, seq_len: int, batch_size: int, num_workers: int,
               seed: int, document_ids: bool, eos_id: int, rank: int = 0, world_size: int = 1,
               stall_timeout: float | None = None, describe=str) -> ResumableDataLoader:  # fmt: skip
        """The training (weighted, shuffled, endless) or validation (every held-out row once) loader of this rank."""
        train = split == "train"
        pairs = [(k, w) for k, w in pairs if train or self.by_key[k][split]["tokens"] >= seq_len]
        for key, _ in pairs:
            if self.by_key[key][split]["tokens"] < seq_len * world_size * max(num_workers, 1):
                raise ValueError(
                    f"data source {self.by_key[key]['label']} holds {self.by_key[key][split]['tokens']} tokens in "
                    f"data.prepared={self.path!r}, fewer than one row of seq_len={seq_len} for each of the "
                    f"{world_size * max(num_workers, 1)} readers (devices × data.num_workers)"
                )
        rows = ShardRows(self, split, [k for k, _ in pairs], [w for _, w in pairs], seq_len=seq_len,
                         batch_size=batch_size, seed=seed, rank=rank, world_size=world_size, train=train,
                         collate=Rows(eos_id=eos_id, document_ids=document_ids))  # fmt: skip
        kwargs = {"batch_size": None, "num_workers": num_workers, "pin_memory": torch.cuda.is_available()}
        if not train:
            return torch.utils.data.DataLoader(rows, **kwargs)
        return ResumableDataLoader(rows, world_size=world_size, persistent_workers=num_workers > 0,
                                   snapshot_every_n_steps=1, stall_timeout=stall_timeout, describe=describe,
                                   **kwargs)  # fmt: skip


class ShardRows(torch.utils.data.IterableDataset):
    """Batches of ``seq_len``-token rows from the shards of ``keys`` (see the module docstring), for one rank; each
    DataLoader worker is a reader slot of its own. The state (:meth:`state_dict`) is the rows taken from each
    source by this reader.

    Args:
        shards: the prepared folder.
        split: ``train`` (weighted, shuffled, endless) or ``validation`` (each source's rows in order, once).
        keys: the sources read; weights: their weights.
        seq_len, batch_size, seed: rows, batch and shuffle settings.
        rank, world_size: this process among the data-parallel processes.
        train: whether this is the training stream.
        collate: rows ``(B, T)`` → the batch.
    """

    def __init__(self, shards: PreparedShards, split: str, keys: list[str], weights: list[float], *, seq_len: int,
                 batch_size: int, seed: int, rank: int, world_size: int, train: bool,
                 collate: Rows) -> None:  # fmt: skip
        super().__init__()
        self.shards, self.split, self.keys = shards, split, keys
        self.weights = np.array(weights, dtype=np.float64) / sum(weights)
        self.seq_len, self.batch_size, self.seed, self.train, self.collate = seq_len, batch_size, seed, train, collate
        self.rank, self.world_size = rank, world_size
        self.taken = [0] * len(keys)  # rows taken from each source by this reader (the whole position)
        self._loaded: list[int] | None = None

    def state_dict(self) -> dict:
        return {"taken": list(self.taken)}

    def load_state_dict(self, state: dict) -> None:
        self._loaded = list(state["taken"])

    def _slot(self) -> tuple[int, int]:
        worker = torch.utils.data.get_worker_info()
        workers, index = (worker.num_workers, worker.id) if worker is not None else (1, 0)
        return self.rank * workers + index, self.world_size * workers

    def __iter__(self):
        slot, slots = self._slot()
        streams = [_Stream(self.shards, self.split, key) for key in self.keys]
        if self._loaded is not None:
            self.taken, self._loaded = self._loaded, None
        else:
            self.taken = [0] * len(self.keys)
        rows_per_slot = [s.rows(self.seq_len) // slots for s in streams]  # the rows one reader takes per epoch
        orders: dict[tuple[int, int], np.ndarray] = {}
        batch = np.empty((self.batch_size, self.seq_len), dtype=streams[0].dtype if streams else np.uint16)
        if not self.train:  # every source's rows in order, each reader every slots-th row
            plan = [(i, r) for i, n in enumerate(rows_per_slot) for r in range(n)]
            for start in range(0, len(plan) - self.batch_size + 1, self.batch_size):
                for b, (i, r) in enumerate(plan[start : start + self.batch_size]):
                    streams[i].read(slot + r * slots, self.seq_len, out=batch[b])
                yield self.collate(batch)
            return
        while True:
            for b in range(self.batch_size):
                i = self._next_source()
                epoch, r = divmod(self.taken[i], rows_per_slot[i])
                order = orders.get((i, epoch))
                if order is None:  # this source's row order in this epoch (the previous epoch's is dropped)
                    orders = {k: v for k, v in orders.items() if k[0] != i}
                    rng = np.random.default_rng([self.seed, i, epoch])
                    order = orders[(i, epoch)] = rng.permutation(rows_per_slot[i] * slots)
                streams[i].read(int(order[slot + r * slots]), self.seq_len, out=batch[b])
                self.taken[i] += 1
            yield self.collate(batch)

    def _next_source(self) -> int:
        """The source whose share of the rows taken so far is furthest below its weight (ties: the first)."""
        total = sum(self.taken) + 1
        return int(np.argmax(self.weights * total - np.array(self.taken)))


class _Stream:
    """One source's token stream in one split: its chunk files end to end, each memory-mapped when first read
    (from object storage: downloaded then, so a run starts without waiting for every chunk)."""

    def __init__(self, shards: PreparedShards, split: str, key: str) -> None:
        self.shards, self.split, self.key = shards, split, key
        self.names = [name for name, _ in shards.by_key[key][split]["chunks"]]
        self.starts = np.cumsum([0] + [n for _, n in shards.by_key[key][split]["chunks"]])  # token offset of each
        self.dtype = np.dtype(shards.manifest["dtype"])
        self.chunks: dict[int, np.memmap] = {}

    def rows(self, seq_len: int) -> int:
        return int(self.starts[-1]) // seq_len

    def chunk(self, c: int) -> np.memmap:
        if c not in self.chunks:
            path = self.shards.chunk_path(self.split, self.key, self.names[c])
            size = int(self.starts[c + 1] - self.starts[c])
            self.chunks[c] = np.memmap(path, dtype=self.dtype, mode="r", shape=(size,))
        return self.chunks[c]

    def read(self, row: int, seq_len: int, *, out: np.ndarray) -> None:
        """Row ``row`` (tokens ``row·seq_len`` … ``+ seq_len``) into ``out``, across chunk ends where it spans them."""
        start, filled = row * seq_len, 0
        c = int(np.searchsorted(self.starts, start, side="right")) - 1
        while filled < seq_len:
            chunk = self.chunk(c)
            offset = start + filled - int(self.starts[c])
            n = min(seq_len - filled, len(chunk) - offset)
            out[filled : filled + n] = chunk[offset : offset + n]
            filled, c = filled + n, c + 1


class Rows:
    """Collates token rows into the batch every objective reads: ``input_ids`` and ``labels`` ``(B, T)`` int64,
    and with ``document_ids`` the document of each token counted from the row's first (the EOS opens the next)."""

    def __init__(self, *, eos_id: int, document_ids: bool) -> None:
        self.eos_id, self.document_ids = eos_id, document_ids

    def __call__(self, rows) -> dict:
        ids = torch.from_numpy(np.asarray(rows, dtype=np.int64))  # (B, T)
        batch = {"input_ids": ids, "labels": ids.clone()}
        if self.document_ids:
            ends = torch.cumsum(ids == self.eos_id, dim=1)
            batch["document_ids"] = ends - ends[:, :1]
        return batch


def _s3():
    try:
        import boto3  # an optional dependency: only s3:// folders need it
    except ImportError:
        raise ValueError("data.prepared=s3://… is read with boto3, which is not installed: pip install boto3") from None
    return boto3.client("s3")


def is_prepared(path: str | os.PathLike) -> bool:
    return (Path(path) / MANIFEST).is_file()


__all__ = ["PreparedShards", "Rows", "ShardRows", "is_prepared", "read_manifest"]
